"""Tests for ops/rglru.py: the RG-LRU against float64 Python loops that do not call the op (docs/methods.md
section 16.3), resets, final states, the one-step form, the capped sqrt derivative and the ring initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import rglru as ops

B, L, D = 2, 7, 3
EPS = 1.0 / (4 * 1000.0**2)  # the floor of 1 - a^2 in the sqrt's backward pass


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference(x, gate_a, gate_x, a_param, c=8.0, reset=None, h0=None, reverse=False):
    """h_t = a_t h_{t-1} + sqrt(1 - a_t^2) i_t x_t, replaced by i_t x_t at a reset; numpy float64 loop."""
    x, gate_a, gate_x = (np.asarray(v, np.float64) for v in (x, gate_a, gate_x))
    a_param = np.asarray(a_param, np.float64)
    batch, length, _ = x.shape
    if reset is None:
        reset = np.zeros((batch, length), bool)
        if h0 is None:
            reset[:, -1 if reverse else 0] = True
    h = np.zeros((batch, x.shape[2])) if h0 is None else np.array(h0, np.float64)
    out = np.zeros_like(x)
    for t in reversed(range(length)) if reverse else range(length):
        for b in range(batch):
            base = 1.0 / (1.0 + np.exp(a_param))  # exp(-softplus(a_param))
            a = base ** (c * _sigmoid(gate_a[b, t]))
            ix = _sigmoid(gate_x[b, t]) * x[b, t]
            h[b] = ix if reset[b, t] else a * h[b] + np.sqrt(1.0 - a * a) * ix
            out[b, t] = h[b]
    return out, h


def random_inputs(seed, batch=B, length=L, width=D):
    rng = np.random.default_rng(seed)
    x, gate_a, gate_x = (rng.normal(size=(batch, length, width)) for _ in range(3))
    a_param = rng.normal(size=width) - 2.0
    return x, gate_a, gate_x, a_param


@pytest.mark.parametrize("method,reverse", [
    ("sequential", False), ("sequential", True), ("associative", False),
    *(pytest.param(m, r, marks=pytest.mark.slow) for m, r in [("associative", True), ("chunked", False),
                                                               ("chunked", True)])])
def test_parallel_form_equals_the_loop(x64, method, reverse):
    x, ga, gx, ap = random_inputs(0)
    h, last = ops.rglru(jnp.asarray(x), jnp.asarray(ga), jnp.asarray(gx), jnp.asarray(ap), reverse=reverse,
                        method=method)
    want, want_last = reference(x, ga, gx, ap, reverse=reverse)
    assert h.dtype == jnp.float64
    np.testing.assert_allclose(h, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last, want_last, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last, h[:, 0 if reverse else -1], rtol=0, atol=0)


@pytest.mark.parametrize("method", ["sequential", pytest.param("associative", marks=pytest.mark.slow)])
def test_resets_inside_a_sequence_and_an_initial_state(x64, method):
    x, ga, gx, ap = random_inputs(1)
    reset = np.zeros((B, L), bool)
    reset[0, 3] = reset[1, 0] = reset[1, 5] = True
    h0 = np.random.default_rng(2).normal(size=(B, D))
    h, last = ops.rglru(*map(jnp.asarray, (x, ga, gx, ap)), reset=jnp.asarray(reset), h0=jnp.asarray(h0),
                        c=5.0, method=method)
    want, want_last = reference(x, ga, gx, ap, c=5.0, reset=reset, h0=h0)
    np.testing.assert_allclose(h, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last, want_last, rtol=1e-12, atol=1e-12)
    # A reset forgets everything before it: sequence 1's states from t = 5 on ignore its first five tokens.
    x2 = x.copy()
    x2[1, :5] += 10.0
    h2, _ = ops.rglru(*map(jnp.asarray, (x2, ga, gx, ap)), reset=jnp.asarray(reset), h0=jnp.asarray(h0), c=5.0,
                      method=method)
    np.testing.assert_allclose(h2[1, 5:], h[1, 5:], rtol=1e-12, atol=1e-12)


def test_continuing_from_the_final_state_equals_one_run(x64):
    """No h0: a reset at t = 0; with h0: none, so two halves chained through the final state give one run."""
    x, ga, gx, ap = map(jnp.asarray, random_inputs(3))
    whole, whole_last = ops.rglru(x, ga, gx, ap)
    first, mid = ops.rglru(x[:, :4], ga[:, :4], gx[:, :4], ap)
    second, last = ops.rglru(x[:, 4:], ga[:, 4:], gx[:, 4:], ap, h0=mid)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(last, whole_last, rtol=1e-13, atol=1e-13)


def test_step_equals_the_loop(x64):
    x, ga, gx, ap = random_inputs(4)
    want, _ = reference(x, ga, gx, ap)
    h = jnp.zeros((B, D))
    for t in range(L):
        h = ops.rglru_step(h, *(jnp.asarray(v[:, t]) for v in (x, ga, gx)), jnp.asarray(ap), reset=t == 0)
        np.testing.assert_allclose(h, want[:, t], rtol=1e-12, atol=1e-12)


def test_sqrt_bound_derivative_caps_the_gradient(x64):
    u = jnp.array([0.0, 1e-9, EPS / 2, EPS, 2 * EPS, 1e-3, 0.25, 1.0])
    value, vjp = jax.vjp(lambda v: ops.sqrt_bound_derivative(v, 1000.0), u)
    np.testing.assert_allclose(value, np.sqrt(u), rtol=1e-15)
    (grad,) = vjp(jnp.full_like(u, 3.0))
    np.testing.assert_allclose(grad, 3.0 * 0.5 / np.sqrt(np.maximum(u, EPS)), rtol=1e-14)
    assert float(grad.max()) == pytest.approx(3.0 * 1000.0)


def _capped_sqrt(u):
    """sqrt(u) whose derivative is 1 / (2 sqrt(max(u, EPS))), written without the op's custom VJP."""
    slope = jax.lax.stop_gradient(0.5 / jnp.sqrt(jnp.maximum(u, EPS)))
    return jax.lax.stop_gradient(jnp.sqrt(u)) + (u - jax.lax.stop_gradient(u)) * slope


def _jnp_reference(x, gate_a, gate_x, a_param, h0, c=8.0):
    """The same loop in jax.numpy (no reset at t = 0 since h0 is given), for autodiff."""
    a = jnp.exp(-c * jax.nn.sigmoid(gate_a) * jnp.log1p(jnp.exp(a_param)))
    b = _capped_sqrt(1.0 - a * a) * jax.nn.sigmoid(gate_x) * x
    h, out = h0, []
    for t in range(x.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return jnp.stack(out, 1)


@pytest.mark.parametrize("method", ["sequential", pytest.param("associative", marks=pytest.mark.slow),
                                    pytest.param("chunked", marks=pytest.mark.slow)])
def test_gradients_equal_the_capped_formula(x64, method):
    """Channel 0 has a_t within 1e-9 of 1, where the true d sqrt(1 - a^2) is ~10x the cap of 1000."""
    x, ga, gx, ap = map(jnp.asarray, random_inputs(5))
    ap = ap.at[0].set(-21.0)  # softplus = 7.6e-10: 1 - a^2 < 1.3e-8 < EPS = 2.5e-7
    h0 = jnp.asarray(np.random.default_rng(6).normal(size=(B, D)))
    weights = jnp.asarray(np.random.default_rng(7).normal(size=(B, L, D)))

    def loss(fn):
        return lambda *args: jnp.sum(weights * fn(*args))

    op = loss(lambda *args: ops.rglru(*args[:4], h0=args[4], method=method)[0])
    got = jax.jit(jax.grad(op, argnums=range(5)))(x, ga, gx, ap, h0)
    want = jax.jit(jax.grad(loss(_jnp_reference), argnums=range(5)))(x, ga, gx, ap, h0)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)
    # The cap is active: the uncapped derivative differs (sanity check of the test itself).
    uncapped = jax.jit(jax.grad(loss(_jnp_reference_uncapped), argnums=3))(x, ga, gx, ap, h0)
    assert abs(float(uncapped[0]) - float(got[3][0])) > 1e-3 * abs(float(got[3][0]))


def _jnp_reference_uncapped(x, gate_a, gate_x, a_param, h0, c=8.0):
    a = jnp.exp(-c * jax.nn.sigmoid(gate_a) * jnp.log1p(jnp.exp(a_param)))
    b = jnp.sqrt(1.0 - a * a) * jax.nn.sigmoid(gate_x) * x
    h, out = h0, []
    for t in range(x.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return jnp.stack(out, 1)


def test_a_param_init_is_uniform_on_the_ring_in_r_squared(x64):
    r_min, r_max = 0.9, 0.999
    ap = ops.a_param_init(jax.random.key(0), (20_000,), r_min, r_max)
    r = np.asarray(ops.base_decay(ap), np.float64)
    assert r.min() >= r_min - 1e-6 and r.max() <= r_max + 1e-6
    # r^2 ~ U[r_min^2, r_max^2]: its quartiles, on a wide ring where r uniform would put them far off (the
    # median r^2 would be 0.25 instead of 0.41).
    wide = np.asarray(ops.base_decay(ops.a_param_init(jax.random.key(1), (20_000,), 0.1, 0.9)), np.float64)
    quartiles = np.quantile(wide**2, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(quartiles, 0.01 + np.array([0.25, 0.5, 0.75]) * (0.81 - 0.01), atol=0.01)
    # The stored value is softplus^-1(-ln r) = ln(1 / r - 1).
    np.testing.assert_allclose(np.asarray(ap, np.float64), np.log(1.0 / r - 1.0), rtol=1e-4)
    with pytest.raises(ValueError, match="r_min < r_max"):
        ops.a_param_init(jax.random.key(0), (3,), 0.9, 0.5)


def test_block_diagonal_linear_equals_the_dense_block_matrix(x64):
    rng = np.random.default_rng(8)
    heads, block_in, block_out = 3, 2, 4
    x = rng.normal(size=(2, 5, heads * block_in))
    w = rng.normal(size=(heads, block_in, block_out))
    b = rng.normal(size=(heads, block_out))
    dense = np.zeros((heads * block_in, heads * block_out))
    for h in range(heads):
        dense[h * block_in:(h + 1) * block_in, h * block_out:(h + 1) * block_out] = w[h]
    want = x @ dense + b.reshape(-1)
    np.testing.assert_allclose(ops.block_diagonal_linear(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b)), want,
                               rtol=1e-13)


def test_low_precision_inputs_are_computed_in_float32():
    x, ga, gx, ap = (jnp.asarray(v, jnp.bfloat16) for v in random_inputs(9))
    h, last = ops.rglru(x, ga, gx, ap.astype(jnp.float32))
    assert h.dtype == jnp.float32 and last.dtype == jnp.float32
    want, _ = reference(*(np.asarray(v, np.float64) for v in (x, ga, gx, ap)))
    np.testing.assert_allclose(h, want, rtol=1e-5, atol=1e-5)
