"""ops/nbce.py against hand-computed toy distributions and a float64 Python loop (docs/methods.md section 15)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import nbce

pytestmark = pytest.mark.usefixtures("fast_compilation")  # tiny shapes: XLA's optimisation passes cost more

# Jitted once per shape and static argument (eagerly, every primitive would compile apart: several times slower).
COMBINE = jax.jit(nbce.combine, static_argnames=("pooling", "top_k"))
TRUNCATE = jax.jit(nbce.truncate, static_argnames=("top_k",))
ENTROPY = jax.jit(nbce.entropy)

# Toy distributions over 4 tokens, small enough to check by hand.
P1 = [0.5, 0.3, 0.1, 0.1]  # entropy 1.1683 nats: the confident context
P2 = [0.25, 0.25, 0.25, 0.25]  # entropy ln 4 = 1.3863
PRIOR = [0.4, 0.4, 0.1, 0.1]


def _log(p):
    return jnp.log(jnp.asarray(p, jnp.float64))


# ------------------------------------------------------------------------------------- the slow reference

def _ref_truncate(logits, top_k, top_p):
    """A Python loop: softmax, keep the top_k (ties kept) and the top_p nucleus (ties kept), renormalise."""
    logits = [float(x) for x in logits]
    peak = max(logits)
    probs = [math.exp(x - peak) for x in logits]
    total = sum(probs)
    probs = [p / total for p in probs]
    keep = [True] * len(probs)
    if top_k:
        kth = sorted(probs, reverse=True)[top_k - 1]
        keep = [k and p >= kth for k, p in zip(keep, probs)]
    if top_p < 1.0:
        kept = [p for k, p in zip(keep, probs) if k]
        total = sum(kept)
        mass, threshold = 0.0, None
        for p in sorted(kept, reverse=True):
            if mass >= top_p * total:  # the more likely tokens already reach top_p (of the mass kept by top_k)
                break
            threshold = p
            mass += p
        keep = [k and p >= threshold for k, p in zip(keep, probs)]
    total = sum(p for k, p in zip(keep, probs) if k)
    return [math.log(p / total) if k else -math.inf for k, p in zip(keep, probs)]


def _ref_entropy(logp):
    return -sum(math.exp(x) * x for x in logp if x > -math.inf)


def _ref_combine(contexts, prior, beta, pooling, top_k=0, top_p=1.0, eta=0.0, previous=-1):
    contexts = [_ref_truncate(c, top_k, top_p) for c in contexts]
    prior = _ref_truncate(prior, top_k, top_p)
    n, size = len(contexts), len(prior)
    if pooling == "mean":
        pooled = [sum(c[t] for c in contexts) / n for t in range(size)]
        selected = -1
    else:
        scores = [_ref_entropy(c) - (eta if i == previous else 0.0) for i, c in enumerate(contexts)]
        selected = min(range(n), key=lambda i: scores[i])
        pooled = contexts[selected]
    out = []
    for t in range(size):
        if pooled[t] == -math.inf:
            out.append(-math.inf)
        elif prior[t] == -math.inf:
            out.append(pooled[t])
        else:
            out.append((beta + 1) * pooled[t] - beta * prior[t])
    if all(x == -math.inf for x in out):  # mean pooling, disjoint supports: the mixture
        mixture = [sum(math.exp(c[t]) for c in contexts) / n for t in range(size)]
        out = [math.log(p) if p > 0 else -math.inf for p in mixture]
    total = math.log(sum(math.exp(x) for x in out if x > -math.inf))
    return [x - total for x in out], selected


def _close(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected, np.float64)
    assert np.all(np.isneginf(actual) == np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------- tests

def test_min_entropy_on_the_toy_distribution(x64):
    # H(P1) = 1.168 < H(P2) = ln 4, so context 0 is chosen; beta = 1: p1^2 / prior = [0.625, 0.225, 0.1, 0.1],
    # which sums to 1.05.
    logp, selected = COMBINE(_log([P1, P2]), _log(PRIOR), beta=1.0, pooling="min_entropy")
    assert int(selected) == 0
    np.testing.assert_allclose(np.exp(logp), np.array([0.625, 0.225, 0.1, 0.1]) / 1.05, rtol=1e-12)
    np.testing.assert_allclose(ENTROPY(_log([P1, P2])), [1.1682824501765625, math.log(4)], rtol=1e-12)


def test_naive_bayes_is_mean_pooling_with_beta_n_minus_1(x64):
    # p1 * p2 / prior = [0.3125, 0.1875, 0.25, 0.25]: already normalised.
    logp, selected = COMBINE(_log([P1, P2]), _log(PRIOR), beta=1.0, pooling="mean")
    assert int(selected) == -1
    np.testing.assert_allclose(np.exp(logp), [0.3125, 0.1875, 0.25, 0.25], rtol=1e-12)
    rng = np.random.default_rng(0)
    for n in (1, 3):
        contexts, prior = rng.dirichlet(np.ones(7), size=n), rng.dirichlet(np.ones(7))
        product = np.prod(contexts, axis=0) / prior ** (n - 1)
        logp, _ = COMBINE(jnp.log(contexts), jnp.log(prior), beta=n - 1.0, pooling="mean")
        np.testing.assert_allclose(np.exp(logp), product / product.sum(), rtol=1e-10)


def test_switching_penalty(x64):
    sharp, flat = _log([0.6, 0.2, 0.1, 0.1]), _log([0.5, 0.3, 0.1, 0.1])  # entropies 1.0889 < 1.1683
    contexts = jnp.stack([sharp, flat])
    gap = float(ENTROPY(flat) - ENTROPY(sharp))
    assert int(COMBINE(contexts, _log(PRIOR), beta=0.0)[1]) == 0
    assert int(COMBINE(contexts, _log(PRIOR), beta=0.0, eta=gap + 1e-3, previous=1)[1]) == 1  # stays
    assert int(COMBINE(contexts, _log(PRIOR), beta=0.0, eta=gap - 1e-3, previous=1)[1]) == 0  # switches
    assert int(COMBINE(contexts, _log(PRIOR), beta=0.0, eta=10.0, previous=-1)[1]) == 0  # first step
    logp, _ = COMBINE(contexts, _log(PRIOR), beta=0.0, eta=gap + 1e-3, previous=1)
    np.testing.assert_allclose(logp, flat, rtol=1e-12)  # beta 0: the chosen context itself


def test_truncation(x64):
    # top_k = 2 keeps 0.5 and 0.3 (renormalised to 0.625, 0.375); top_p = 0.7 keeps them too (0.5 < 0.7 before
    # the second); top_p = 0.4 keeps the first only; ties at the cut are kept.
    expected = [math.log(0.625), math.log(0.375), -math.inf, -math.inf]
    _close(TRUNCATE(_log(P1), top_k=2), expected)
    _close(TRUNCATE(_log(P1), top_p=0.7), expected)
    _close(TRUNCATE(_log(P1), top_p=0.4), [0.0, -math.inf, -math.inf, -math.inf])
    _close(TRUNCATE(_log(PRIOR), top_k=1), [math.log(0.5), math.log(0.5), -math.inf, -math.inf])
    _close(TRUNCATE(_log(P2), top_p=0.3), np.log([0.25] * 4))
    rng = np.random.default_rng(1)
    for top_k, top_p in ((0, 0.5), (3, 1.0), (3, 0.8), (0, 0.95)):
        logits = rng.normal(size=(4, 9)) * 2
        for row in logits:
            _close(TRUNCATE(jnp.asarray(row), top_k, top_p), _ref_truncate(row, top_k, top_p))


def test_minus_inf_rule(x64):
    # The prior truncated to its top token (top_p 0.6 of [0.7, 0.1, 0.1, 0.1]); the context keeps 0.5 and 0.3
    # (0.625, 0.375). beta = 1: token 0 gets 2 ln 0.625 - ln 1, token 1 (prior -inf) gets ln 0.375 alone.
    prior = _log([0.7, 0.1, 0.1, 0.1])
    logp, _ = COMBINE(_log([P1]), prior, beta=1.0, top_p=0.6)
    _close(np.exp(np.asarray(logp))[:2], np.array([0.390625, 0.375]) / 0.765625)
    assert np.all(np.isneginf(logp[2:]))
    for beta in (-1.0, -0.5, 0.0, 0.25, 3.0):
        for pooling in nbce.POOLINGS:
            logp, _ = COMBINE(_log([P1, P2]), prior, beta=beta, pooling=pooling, top_p=0.6)
            assert not np.any(np.isnan(logp)) and not np.any(np.isposinf(logp))
            np.testing.assert_allclose(np.exp(logp).sum(), 1.0, rtol=1e-12)
    # mean pooling of contexts whose truncated supports are disjoint: the mixture, not NaN.
    logp, _ = COMBINE(_log([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]]), _log([0.3, 0.3, 0.4]), beta=1.0,
                           pooling="mean", top_k=1)
    _close(logp, [math.log(0.5), -math.inf, math.log(0.5)])


def test_beta_zero_one_context_is_that_context(x64):
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(1, 11)))
    for pooling in nbce.POOLINGS:
        logp, _ = COMBINE(logits, jnp.zeros(11), beta=0.0, pooling=pooling)
        np.testing.assert_allclose(logp, jax.nn.log_softmax(logits[0]), rtol=1e-12)


@pytest.mark.parametrize("pooling", nbce.POOLINGS)
def test_against_the_loop(x64, pooling):
    rng = np.random.default_rng(3)
    for top_k, top_p, beta, eta, previous in ((0, 1.0, 0.25, 0.0, -1), (2, 0.9, 2.0, 0.1, 2),
                                              (0, 0.7, -0.5, 0.5, 0), (2, 1.0, 4.0, 0.0, 1)):
        contexts, prior = rng.normal(size=(3, 10)) * 2, rng.normal(size=10) * 2
        logp, selected = COMBINE(jnp.asarray(contexts), jnp.asarray(prior), beta=beta, pooling=pooling,
                                 top_k=top_k, top_p=top_p, eta=eta, previous=previous)
        expected, expected_selected = _ref_combine(contexts, prior, beta, pooling, top_k, top_p, eta, previous)
        _close(logp, expected)
        assert int(selected) == expected_selected


def test_bad_arguments():
    with pytest.raises(ValueError, match="pooling"):
        COMBINE(jnp.zeros((2, 3)), jnp.zeros(3), beta=0.0, pooling="max")
    with pytest.raises(ValueError, match="prior logits"):
        COMBINE(jnp.zeros((2, 3)), jnp.zeros(4), beta=0.0)
