"""ops/selective.py: the selective scan (one piece and chunked) and its step against a float64 Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops.selective import selective_scan, selective_step

BATCH, LENGTH, CHANNELS, STATE = 2, 11, 3, 4

# XLA's optimisation passes cost more than running these tiny programs (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compilation")


def reference_selective(x, delta, A, B, C, D, h0):
    """h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[n] x_t[d]; y_t[d] = sum_n C_t[n] h_t[d, n]
    + D[d] x_t[d]: numpy float64 loops over batch, channel, time and state index."""
    x, delta, A, B, C, D, h0 = (np.asarray(v, np.float64) for v in (x, delta, A, B, C, D, h0))
    batch, length, channels = x.shape
    n = A.shape[1]
    y, last = np.zeros(x.shape), np.zeros((batch, channels, n))
    for i in range(batch):
        for d in range(channels):
            h = h0[i, d].copy()
            for t in range(length):
                y[i, t, d] = D[d] * x[i, t, d]
                for k in range(n):
                    h[k] = np.exp(delta[i, t, d] * A[d, k]) * h[k] + delta[i, t, d] * B[i, t, k] * x[i, t, d]
                    y[i, t, d] += C[i, t, k] * h[k]
            last[i, d] = h
    return y, last


@jax.jit
def differentiable_reference(x, delta, A, B, C, D, h0):
    """The same recurrence as a jnp loop over t (vectorised over batch, channel and state), for autodiff."""
    h, ys = h0, []
    for t in range(x.shape[1]):
        h = jnp.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append(jnp.sum(h * C[:, t, None, :], axis=-1) + D * x[:, t])
    return jnp.stack(ys, axis=1), h


def random_inputs(seed, batch=BATCH, length=LENGTH, channels=CHANNELS, n=STATE):
    rng = np.random.default_rng(seed)
    return dict(
        x=rng.normal(size=(batch, length, channels)),
        delta=np.log1p(np.exp(rng.normal(size=(batch, length, channels)) - 1.0)),  # softplus: positive
        A=-np.exp(rng.normal(size=(channels, n))),
        B=rng.normal(size=(batch, length, n)), C=rng.normal(size=(batch, length, n)),
        D=rng.normal(size=channels), h0=rng.normal(size=(batch, channels, n)))


# 4: 11 = 2 * 4 + 3, a padded last chunk; 16 > L: one piece.
@pytest.mark.parametrize("method,chunk_size", [("sequential", None), ("sequential", 4), ("associative", 4),
                                               ("sequential", 16)])
def test_selective_scan_equals_python_loop_with_initial_and_final_state(x64, chunk_size, method):
    p = random_inputs(0)
    expected_y, expected_last = reference_selective(**p)
    y, last = selective_scan(*(jnp.asarray(v) for v in p.values()), chunk_size=chunk_size, method=method)
    assert y.dtype == jnp.float64 and y.shape == (BATCH, LENGTH, CHANNELS) and last.shape == (BATCH, CHANNELS, STATE)
    np.testing.assert_allclose(np.asarray(y), expected_y, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.asarray(last), expected_last, rtol=1e-11, atol=1e-11)


def test_selective_scan_gradients_equal_the_loops(x64):
    p = {k: jnp.asarray(v) for k, v in random_inputs(1, batch=1, length=5, channels=2, n=3).items()}
    weights = jax.random.normal(jax.random.key(0), (1, 5, 2), jnp.float64)

    def loss(fn, args):
        y, last = fn(**args)
        return jnp.sum(y * weights) + jnp.sum(last**2)

    expected = jax.grad(lambda a: loss(differentiable_reference, a))(p)
    # Chunked (5 = 2 * 2 + 1): the checkpointed chunks, the carried state and the padding; the one-piece path is
    # linear_recurrence's own VJP (tests/ops/test_scan.py).
    found = jax.jit(jax.grad(lambda a: loss(lambda **k: selective_scan(**k, chunk_size=2), a)))(p)
    for name in p:
        np.testing.assert_allclose(np.asarray(found[name]), np.asarray(expected[name]), rtol=1e-10, atol=1e-10,
                                   err_msg=name)


def test_selective_step_runs_the_scan_token_by_token(x64):
    p = {k: jnp.asarray(v) for k, v in random_inputs(2).items()}
    y, last = selective_scan(**p)
    h = p["h0"]
    for t in range(LENGTH):
        h, y_t = selective_step(h, p["x"][:, t], p["delta"][:, t], p["A"], p["B"][:, t], p["C"][:, t], p["D"])
        np.testing.assert_allclose(np.asarray(y_t), np.asarray(y[:, t]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(h), np.asarray(last), rtol=1e-12, atol=1e-12)


def test_selective_scan_float32_and_bad_shapes():
    p = {k: jnp.asarray(v, jnp.bfloat16) for k, v in random_inputs(3).items()}
    y, last = selective_scan(**p, chunk_size=4)
    assert y.dtype == jnp.float32 and last.dtype == jnp.float32  # computed (and returned) in float32
    with pytest.raises(ValueError, match=r"expected B and C of shape \(B, L, N\)"):
        selective_scan(p["x"], p["delta"], p["A"], p["B"][:, :, :2], p["C"])
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        selective_scan(p["x"], p["delta"], p["A"], p["B"], p["C"], chunk_size=0)
