"""The delta rule (ops/deltanet.py): chunked (WY / UT form) == recurrent == a float64 Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import deltanet


def _inputs(rng, batch=2, length=11, heads=2, key_dim=3, value_dim=4, normalise=True):
    q, k = (rng.normal(size=(batch, length, heads, key_dim)) for _ in range(2))
    if normalise:
        k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.normal(size=(batch, length, heads, value_dim))
    beta = rng.uniform(0.05, 0.95, size=(batch, length, heads))
    state = rng.normal(size=(batch, heads, key_dim, value_dim))
    return q, k, v, beta, state


def _loop_reference(q, k, v, beta, state):
    """S_t = (I - beta k k^T) S_{t-1} + beta k v^T (column k), o_t = S_t^T q_t / sqrt(K), numpy float64."""
    batch, length, heads, key_dim = q.shape
    out = np.zeros(v.shape)
    final = np.array(state, np.float64)
    for b in range(batch):
        for h in range(heads):
            s = np.array(state[b, h], np.float64)
            for t in range(length):
                kt = k[b, t, h][:, None]
                s = (np.eye(key_dim) - beta[b, t, h] * kt @ kt.T) @ s + beta[b, t, h] * kt @ v[b, t, h][None]
                out[b, t, h] = s.T @ q[b, t, h] / np.sqrt(key_dim)
            final[b, h] = s
    return out, final


@pytest.mark.parametrize("chunk_size", [pytest.param(1, marks=pytest.mark.slow), 4,
                                        pytest.param(16, marks=pytest.mark.slow)])  # the test budget
def test_chunked_and_recurrent_equal_the_loop(x64, chunk_size):
    q, k, v, beta, state = _inputs(np.random.default_rng(0))  # L = 11: not a multiple of 4
    expected, expected_final = _loop_reference(q, k, v, beta, state)
    for form in (deltanet.delta_rule_recurrent,
                 lambda *a, **kw: deltanet.delta_rule_chunked(*a, chunk_size=chunk_size, **kw)):
        o, final = form(*map(jnp.asarray, (q, k, v, beta)), initial_state=jnp.asarray(state))
        assert o.dtype == jnp.float64
        np.testing.assert_allclose(o, expected, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(final, expected_final, rtol=1e-10, atol=1e-10)


def test_unnormalised_keys_and_zero_initial_state(x64):
    # The op itself does not normalise: any keys follow the rule (the layer normalises them).
    q, k, v, beta, _ = _inputs(np.random.default_rng(1), length=9, normalise=False)
    expected, expected_final = _loop_reference(q, k, v, 0.2 * beta, np.zeros((2, 2, 3, 4)))
    o, final = deltanet.delta_rule_chunked(*map(jnp.asarray, (q, k, v, 0.2 * beta)), chunk_size=4)
    np.testing.assert_allclose(o, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(final, expected_final, rtol=1e-9, atol=1e-9)


def test_a_key_written_with_beta_one_is_recalled_exactly(x64):
    rng = np.random.default_rng(2)
    k = np.zeros((1, 3, 1, 4))
    k[0, :, 0, :3] = np.eye(3)  # orthonormal keys
    v = rng.normal(size=(1, 3, 1, 2))
    _, state = deltanet.delta_rule_chunked(jnp.zeros((1, 3, 1, 4)), jnp.asarray(k), jnp.asarray(v),
                                           jnp.ones((1, 3, 1)), chunk_size=2,
                                           initial_state=jnp.asarray(rng.normal(size=(1, 1, 4, 2))))
    np.testing.assert_allclose(np.asarray(state)[0, 0, :3], v[0, :, 0], atol=1e-12)  # overwritten, not added


def test_float32_chunked_is_finite_and_close():
    q, k, v, beta, state = _inputs(np.random.default_rng(3), length=70, key_dim=8, value_dim=8)
    args = [jnp.asarray(a, jnp.float32) for a in (q, k, v, beta)]
    o, final = jax.jit(lambda *a: deltanet.delta_rule_chunked(*a, chunk_size=32,
                                                              initial_state=jnp.asarray(state, jnp.float32)))(*args)
    expected, expected_final = _loop_reference(q, k, v, beta, state)
    np.testing.assert_allclose(o, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(final, expected_final, rtol=1e-4, atol=1e-4)


def test_bad_shapes_are_named():
    q = jnp.zeros((1, 4, 2, 3))
    with pytest.raises(ValueError, match="beta"):
        deltanet.delta_rule_chunked(q, q, q, jnp.zeros((1, 4, 2, 1)))
    with pytest.raises(ValueError, match="initial_state"):
        deltanet.delta_rule_recurrent(q, q, q, jnp.zeros((1, 4, 2)), initial_state=jnp.zeros((1, 2, 3)))
