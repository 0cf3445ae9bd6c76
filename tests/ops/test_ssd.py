"""ops/ssd.py: Mamba-2's SSD, chunked == recurrent == a float64 Python loop (values, final state, gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops.ssd import segsum, ssd, ssd_chunked, ssd_recurrent, ssd_step

BATCH, LENGTH, HEADS, HEAD_DIM, STATE = 2, 11, 2, 3, 4

# XLA's optimisation passes cost more than running these tiny programs (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compilation")


def reference_ssd(x, delta, A, B, C, D, h0):
    """S_t = exp(delta_t A) S_{t-1} + (delta_t x_t) B_t^T, y_t = S_t C_t + D x_t: numpy loops over b, h, t, p, n."""
    x, delta, A, B, C, D, h0 = (np.asarray(v, np.float64) for v in (x, delta, A, B, C, D, h0))
    batch, length, heads, p = x.shape
    n = B.shape[-1]
    y, last = np.zeros(x.shape), np.zeros((batch, heads, p, n))
    for i in range(batch):
        for h in range(heads):
            state = h0[i, h].copy()
            for t in range(length):
                for j in range(p):
                    for k in range(n):
                        state[j, k] = (np.exp(delta[i, t, h] * A[h]) * state[j, k]
                                       + delta[i, t, h] * x[i, t, h, j] * B[i, t, k])
                    y[i, t, h, j] = sum(state[j, k] * C[i, t, k] for k in range(n)) + D[h] * x[i, t, h, j]
            last[i, h] = state
    return y, last


@jax.jit
def differentiable_reference(x, delta, A, B, C, D, h0):
    """The same recurrence as a jnp loop over t (vectorised over the rest), for autodiff."""
    state, ys = h0, []
    for t in range(x.shape[1]):
        state = (jnp.exp(delta[:, t] * A)[..., None, None] * state
                 + (delta[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :])
        ys.append(jnp.einsum("bhpn,bn->bhp", state, C[:, t]) + D[:, None] * x[:, t])
    return jnp.stack(ys, axis=1), state


def random_inputs(seed, length=LENGTH):
    rng = np.random.default_rng(seed)
    return dict(
        x=rng.normal(size=(BATCH, length, HEADS, HEAD_DIM)),
        delta=np.log1p(np.exp(rng.normal(size=(BATCH, length, HEADS)) - 1.0)),
        A=-rng.uniform(1, 16, size=HEADS) * 0.1,
        B=rng.normal(size=(BATCH, length, STATE)), C=rng.normal(size=(BATCH, length, STATE)),
        D=rng.normal(size=HEADS), h0=rng.normal(size=(BATCH, HEADS, HEAD_DIM, STATE)))


def test_segsum_is_the_sum_over_the_segment(x64):
    a = np.random.default_rng(0).normal(size=(2, 5))
    found = np.asarray(segsum(jnp.asarray(a)))
    for i in range(5):
        for j in range(5):
            expected = a[:, j + 1:i + 1].sum(axis=-1) if i >= j else np.full(2, -np.inf)
            np.testing.assert_allclose(found[:, i, j], expected, rtol=1e-14, atol=1e-14)


# 4: 11 = 2 * 4 + 3, a padded last chunk; 16 > L: one chunk; None: the recurrence.
@pytest.mark.parametrize("chunk_size", [4, 16, None])
def test_ssd_equals_python_loop_with_initial_and_final_state(x64, chunk_size):
    p = random_inputs(0)
    expected_y, expected_last = reference_ssd(**p)
    y, last = ssd(*(jnp.asarray(v) for v in p.values()), chunk_size=chunk_size)
    assert y.dtype == jnp.float64 and last.shape == (BATCH, HEADS, HEAD_DIM, STATE)
    np.testing.assert_allclose(np.asarray(y), expected_y, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.asarray(last), expected_last, rtol=1e-11, atol=1e-11)


def test_ssd_gradients_equal_the_loops(x64):
    p = {k: jnp.asarray(v) for k, v in random_inputs(1, length=6).items()}
    weights = jax.random.normal(jax.random.key(0), p["x"].shape, jnp.float64)

    def loss(fn, args):
        y, last = fn(**args)
        return jnp.sum(y * weights) + jnp.sum(last**2)

    expected = jax.grad(lambda a: loss(differentiable_reference, a))(p)
    found = jax.jit(jax.grad(lambda a: loss(lambda **k: ssd(**k, chunk_size=4), a)))(p)
    for name in p:
        np.testing.assert_allclose(np.asarray(found[name]), np.asarray(expected[name]), rtol=1e-10, atol=1e-10,
                                   err_msg=name)


def test_ssd_step_runs_the_recurrence_token_by_token(x64):
    p = {k: jnp.asarray(v) for k, v in random_inputs(2).items()}
    y, last = ssd(**p, chunk_size=4)
    h = p["h0"]
    for t in range(LENGTH):
        h, y_t = ssd_step(h, p["x"][:, t], p["delta"][:, t], p["A"], p["B"][:, t], p["C"][:, t], p["D"])
        np.testing.assert_allclose(np.asarray(y_t), np.asarray(y[:, t]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(h), np.asarray(last), rtol=1e-12, atol=1e-12)


def test_strong_decays_stay_accurate_in_float32_values_and_gradients():
    """Log-decays of -10,000 at a few steps (one inside a chunk) among small ones: cumulative sums reach -20,000,
    so the shortcut exp(cumsum_i - cumsum_j) would lose every digit of the small segments in float32 (spacing
    0.002 there); the stable segment sums match the recurrence, and no gradient is NaN."""
    p = {k: jnp.asarray(v, jnp.float32) for k, v in random_inputs(3, length=32).items()}
    X = p["x"] * p["delta"][..., None]
    a = (-p["delta"] * 0.1).at[:, jnp.array([0, 5, 16])].set(-1e4)

    @jax.jit
    def run(a):
        chunked = ssd_chunked(X, a, p["B"], p["C"], 16, p["h0"])
        return chunked, ssd_recurrent(X, a, p["B"], p["C"], p["h0"]), jax.grad(
            lambda a: jnp.sum(ssd_chunked(X, a, p["B"], p["C"], 16)[0]))(a)

    (y, last), (y_rec, last_rec), grads = run(a)
    np.testing.assert_allclose(y, y_rec, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(last, last_rec, rtol=1e-4, atol=1e-4)
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_ssd_rejects_bad_shapes():
    p = {k: jnp.asarray(v) for k, v in random_inputs(4).items()}
    with pytest.raises(ValueError, match=r"expected x \(B, L, H, P\), a \(B, L, H\), B and C \(B, L, N\)"):
        ssd_chunked(p["x"], p["delta"], p["B"][:, :3], p["C"], 4)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ssd_chunked(p["x"], p["delta"], p["B"], p["C"], 0)
