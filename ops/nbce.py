"""NBCE, naive-Bayes context extension: one next-token distribution from n contexts read separately
(docs/methods.md section 15).

A context too long for the model's window is cut into pieces S_1..S_n, each read with the question; the model
gives log p(T|S_k) for every piece and log p(T) with no context. `combine` merges them into

    log p(T|S_1..S_n) = (beta + 1) * Pool_k[log p(T|S_k)] - beta * log p(T)          (then normalised over T)

with two poolings:

    "mean"         Pool = the mean over k. With beta = n - 1 this is naive Bayes: prod_k p(T|S_k) / p(T)^(n-1).
    "min_entropy"  Pool = log p(T|S_k*) of the context of least entropy, k* = argmin_k H_k,
                   H_k = -sum_T p(T|S_k) log p(T|S_k); with a switching penalty eta > 0, the entropy of the
                   context chosen at the previous step is lowered by eta before the argmin.

and the post's fixes:

    truncation     every distribution (the n contexts and the prior) is cut to its top-k tokens and to its
                   top-p nucleus (the smallest set of the most likely tokens whose probability reaches top_p;
                   ties at the cut are all kept) and renormalised before anything else, entropies included:
                   a model's tail is unreliable and -beta * log p(T) would amplify it.
    -inf rule      where log p(T) = -inf (the prior truncated T away), the output is Pool alone, so that
                   (-inf) - (-inf) never makes a NaN; where Pool = -inf the output is -inf.

One case the formula leaves open: with mean pooling, a token is possible only if every truncated context allows
it, and the contexts' supports may share no token. Then the output falls back to the mixture
log(mean_k p(T|S_k)) (every token some context allows), so the result is always a distribution.

Shapes: n contexts, V the vocabulary. Pure and jittable (pooling is static; beta, eta, previous may be traced;
top_k is static, top_p may be traced). vmap it over a batch of questions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

POOLINGS = ("mean", "min_entropy")


def truncate(logits: jax.Array, top_k: int = 0, top_p: float | jax.Array = 1.0) -> jax.Array:
    """Normalised log-probabilities (..., V) of `logits` (or log-probs) cut to the top_k most likely tokens
    (0: no cut) and to the top_p nucleus (1.0: no cut), renormalised; removed tokens are -inf."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    if top_k:
        kth = lax.top_k(logp, top_k)[0][..., -1:]
        logp = jnp.where(logp < kth, -jnp.inf, logp)
    if not (isinstance(top_p, float | int) and top_p >= 1.0):  # a traced top_p: always (1.0 cuts nothing)
        ordered = jnp.sort(logp, axis=-1)[..., ::-1]
        probs = jnp.exp(ordered - jax.nn.logsumexp(ordered, axis=-1, keepdims=True))
        before = jnp.cumsum(probs, axis=-1) - probs  # the mass of the more likely tokens
        kept = (before < top_p) | (top_p >= 1.0)  # the most likely token always (before = 0)
        threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
        logp = jnp.where(logp < threshold, -jnp.inf, logp)
    return jax.nn.log_softmax(logp, axis=-1)


def entropy(logp: jax.Array) -> jax.Array:
    """Entropy in nats of normalised log-probabilities (..., V) -> (...); tokens at -inf contribute 0."""
    finite = jnp.isfinite(logp)
    return -jnp.sum(jnp.where(finite, jnp.exp(logp) * jnp.where(finite, logp, 0.0), 0.0), axis=-1)


def combine(context_logits: jax.Array, prior_logits: jax.Array, *, beta: float | jax.Array,
            pooling: str = "min_entropy", top_k: int = 0, top_p: float | jax.Array = 1.0,
            eta: float | jax.Array = 0.0, previous: int | jax.Array = -1) -> tuple[jax.Array, jax.Array]:
    """The NBCE distribution of the next token (see the module docstring).

    Args:
      context_logits: (n, V) next-token logits or log-probs of each context read with the question.
      prior_logits: (V,) next-token logits or log-probs of the question read with no context.
      beta: the weight of the prior (>= -1; 0: the pooled term alone; n - 1 with "mean": naive Bayes).
      pooling: "mean" or "min_entropy".
      top_k, top_p: the truncation applied to each of the n + 1 distributions first (0 / 1.0: none).
      eta: the switching penalty of "min_entropy" (subtracted from the entropy of context `previous`).
      previous: the context chosen at the previous step (-1: none, the first step).

    Returns:
      (log_probs (V,) normalised, -inf for impossible tokens; selected () int32, the context chosen by
      "min_entropy", -1 with "mean").
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    if context_logits.ndim != 2 or prior_logits.shape != context_logits.shape[1:]:
        raise ValueError(f"expected context logits (n, V) and prior logits (V,), got {context_logits.shape} and "
                         f"{prior_logits.shape}")
    contexts = truncate(context_logits, top_k, top_p)
    prior = truncate(prior_logits, top_k, top_p)
    n = contexts.shape[0]
    if pooling == "mean":
        pooled = jnp.mean(contexts, axis=0)  # -inf where any context excludes the token
        selected = jnp.array(-1, jnp.int32)
    else:
        scores = entropy(contexts)
        scores = scores - jnp.where((jnp.arange(n) == previous) & (previous >= 0), eta, 0.0)
        selected = jnp.argmin(scores).astype(jnp.int32)
        pooled = contexts[selected]
    pooled_finite = jnp.isfinite(pooled)
    prior_finite = jnp.isfinite(prior)
    full = (beta + 1) * jnp.where(pooled_finite, pooled, 0.0) - beta * jnp.where(prior_finite, prior, 0.0)
    combined = jnp.where(~pooled_finite, -jnp.inf, jnp.where(prior_finite, full, pooled))
    if pooling == "mean":  # supports that share no token: the mixture of the contexts instead
        mixture = jax.nn.logsumexp(contexts, axis=0) - jnp.log(n)
        combined = jnp.where(jnp.any(jnp.isfinite(combined)), combined, mixture)
    return jax.nn.log_softmax(combined), selected
