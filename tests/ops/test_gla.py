"""GLA (ops/gla.py): chunked == recurrent == a float64 Python loop; RetNet's decay against its parallel form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import gla


def _inputs(rng, batch=2, length=11, heads=2, key_dim=3, value_dim=4, scalar=False, strength=1.0):
    q, k = (rng.normal(size=(batch, length, heads, key_dim)) for _ in range(2))
    v = rng.normal(size=(batch, length, heads, value_dim))
    log_decay = -strength * rng.uniform(0.0, 1.0, size=(batch, length, heads, 1 if scalar else key_dim))
    state = rng.normal(size=(batch, heads, key_dim, value_dim))
    return q, k, v, log_decay, state


def _loop_reference(q, k, v, log_decay, state):
    """S_t = diag(exp(log_decay_t)) S_{t-1} + k_t^T v_t, o_t = q_t S_t / sqrt(K), in numpy float64."""
    batch, length, heads, key_dim = q.shape
    out = np.zeros(v.shape)
    final = np.array(state, np.float64)
    for b in range(batch):
        for h in range(heads):
            s = np.array(state[b, h], np.float64)
            for t in range(length):
                alpha = np.exp(log_decay[b, t, h]) * np.ones(key_dim)
                s = alpha[:, None] * s + np.outer(k[b, t, h], v[b, t, h])
                out[b, t, h] = (q[b, t, h] / np.sqrt(key_dim)) @ s
            final[b, h] = s
    return out, final


@pytest.mark.parametrize("scalar", [False, True])
@pytest.mark.parametrize("chunk_size", [pytest.param(1, marks=pytest.mark.slow), 4,
                                        pytest.param(16, marks=pytest.mark.slow)])  # the test budget
def test_chunked_and_recurrent_equal_the_loop(x64, scalar, chunk_size):
    q, k, v, log_decay, state = _inputs(np.random.default_rng(0), scalar=scalar)  # L = 11: not a multiple of 4
    expected, expected_final = _loop_reference(q, k, v, log_decay, state)
    for form in (gla.gla_recurrent, lambda *a, **kw: gla.gla_chunked(*a, chunk_size=chunk_size, **kw)):
        o, final = form(*map(jnp.asarray, (q, k, v, log_decay)), initial_state=jnp.asarray(state))
        assert o.dtype == jnp.float64
        np.testing.assert_allclose(o, expected, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(final, expected_final, rtol=1e-11, atol=1e-11)


def test_zero_initial_state_is_the_default(x64):
    q, k, v, log_decay, _ = _inputs(np.random.default_rng(1))
    o, final = gla.gla_chunked(*map(jnp.asarray, (q, k, v, log_decay)), chunk_size=4)
    expected, expected_final = _loop_reference(q, k, v, log_decay, np.zeros((2, 2, 3, 4)))
    np.testing.assert_allclose(o, expected, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(final, expected_final, rtol=1e-11, atol=1e-11)


def test_strong_decays_stay_finite_in_float32_and_agree():
    # log-decays down to -60 per step: over a chunk of 16 the cumulative sum reaches ~-500, so exp(-G) would be
    # inf in float32 (exp(88.7) overflows); only clamped differences are exponentiated.
    q, k, v, log_decay, state = _inputs(np.random.default_rng(2), length=37, strength=60.0)
    args = [jnp.asarray(a, jnp.float32) for a in (q, k, v, log_decay)]
    chunked = jax.jit(lambda *a: gla.gla_chunked(*a, chunk_size=16, initial_state=jnp.asarray(state, jnp.float32)))
    o, final = chunked(*args)
    assert bool(jnp.all(jnp.isfinite(o))) and bool(jnp.all(jnp.isfinite(final)))
    grads = jax.grad(lambda *a: chunked(*a)[0].sum(), argnums=(0, 1, 2, 3))(*args)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    expected, expected_final = _loop_reference(q, k, v, log_decay, state)
    np.testing.assert_allclose(o, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(final, expected_final, rtol=1e-4, atol=1e-4)


def test_retnet_decay_values():
    np.testing.assert_allclose(np.exp(gla.retnet_log_decay(3)), [1 - 2.0**-5, 1 - 2.0**-6, 1 - 2.0**-7], rtol=1e-6)


def test_retnet_case_equals_the_parallel_retention_form(x64):
    """O = (Q K^T * D) V with D_nm = gamma_h^(n - m) for n >= m (RetNet's parallel form), per head."""
    rng = np.random.default_rng(3)
    heads, length, key_dim = 3, 13, 4
    q, k, v, _, _ = _inputs(rng, length=length, heads=heads, key_dim=key_dim)
    gamma = 1 - 2.0 ** (-5.0 - np.arange(heads))
    n = np.arange(length)
    decay = np.where(n[:, None] >= n[None, :], gamma[:, None, None] ** (n[:, None] - n[None, :]), 0.0)  # (H, L, L)
    scores = np.einsum("bnhk,bmhk->bhnm", q / np.sqrt(key_dim), k) * decay
    expected = np.einsum("bhnm,bmhv->bnhv", scores, v)
    log_decay = jnp.broadcast_to(gla.retnet_log_decay(heads, jnp.float64)[:, None], (2, length, heads, 1))
    for chunk_size in (4, 16):
        o, _ = gla.gla_chunked(*map(jnp.asarray, (q, k, v)), log_decay, chunk_size=chunk_size)
        np.testing.assert_allclose(o, expected, rtol=1e-11, atol=1e-11)
    o, _ = gla.gla_recurrent(*map(jnp.asarray, (q, k, v)), log_decay)
    np.testing.assert_allclose(o, expected, rtol=1e-11, atol=1e-11)


def test_bad_shapes_are_named():
    q = jnp.zeros((1, 4, 2, 3))
    with pytest.raises(ValueError, match="log_decay"):
        gla.gla_chunked(q, q, q, jnp.zeros((1, 4, 2, 2)))
    with pytest.raises(ValueError, match="initial_state"):
        gla.gla_recurrent(q, q, q, jnp.zeros((1, 4, 2, 3)), initial_state=jnp.zeros((1, 2, 3)))
