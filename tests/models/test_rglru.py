"""The RG-LRU mixer (models/rglru.py): Griffin's recurrent block against a float64 numpy loop, step == parallel,
prefill, causality, padding invariance, initial values, optimiser groups and the option checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import param_groups
from models.registry import MixerContext
from models.rglru import RGLRUMixer

D_MODEL, LENGTH = 4, 9
pytestmark = pytest.mark.usefixtures("fast_compilation")  # tiny shapes: XLA's optimisation passes cost more


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _gelu_tanh(v):
    return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def _block_diagonal(v, w, b):
    """v (..., H*i) through blocks w (H, i, o) + b (H, o), block by block."""
    heads, block_in, _ = w.shape
    return np.concatenate([v[..., h * block_in:(h + 1) * block_in] @ w[h] + b[h] for h in range(heads)], -1)


def _conv(v, w, bias, anti_causal=False):
    """Depthwise conv, loop over taps: causal y_t = b + sum_k w[k] v_{t-K+1+k}; anti-causal reads v_{t+K-1-k}."""
    width, length = w.shape[0], v.shape[1]
    out = np.zeros_like(v) + bias
    for t in range(length):
        for k in range(width):
            s = t + (width - 1 - k) if anti_causal else t - (width - 1 - k)
            if 0 <= s < length:
                out[:, t] += w[k] * v[:, s]
    return out


def _recurrence(u, p, c, reset, reverse):
    gate_a, gate_x = (_block_diagonal(u, p[f"gate_{g}_w"], p[f"gate_{g}_b"]) for g in "ax")
    base = 1.0 / (1.0 + np.exp(p["a_param"]))  # exp(-softplus(a_param))
    h = np.zeros_like(u)
    for b in range(u.shape[0]):
        state = np.zeros(u.shape[2])
        for t in reversed(range(u.shape[1])) if reverse else range(u.shape[1]):
            a = base ** (c * _sigmoid(gate_a[b, t]))
            ix = _sigmoid(gate_x[b, t]) * u[b, t]
            state = ix if reset[b, t] else a * state + np.sqrt(1 - a * a) * ix
            h[b, t] = state
    return h


def reference_block(x, params, mask, c=8.0, bidirectional=False):
    """Griffin's recurrent block in float64 numpy, from the mixer's parameters."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    x = np.asarray(x, np.float64) * mask[..., None]
    dense = lambda v, name: v @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    g = _gelu_tanh(dense(x, "linear_y"))
    v = dense(x, "linear_x") * mask[..., None]
    first = np.zeros(mask.shape, bool)
    first[:, 0] = True
    h = _recurrence(_conv(v, p["conv_w"], p["conv_b"]), p, c, first, reverse=False)
    if bidirectional:
        last_real = np.zeros(mask.shape, bool)
        for b in range(mask.shape[0]):
            last_real[b, np.flatnonzero(mask[b])[-1]] = True
        h = h + _recurrence(_conv(v, p["conv_w_bwd"], p["conv_b_bwd"], anti_causal=True), p, c, last_real,
                            reverse=True)
    return dense(h * g, "linear_out")


def _init(mixer, length=LENGTH, d=D_MODEL, dtype=jnp.float64):
    x = jax.random.normal(jax.random.key(4), (2, length, d), dtype)
    variables = param_groups.unbox(mixer.init(jax.random.key(5), x))
    # Larger biases than the zero init, so that the reference checks where they enter.
    variables = jax.tree.map(lambda v: v.astype(dtype), variables)
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(6), len(leaves))
    leaves = [leaf + 0.3 * jax.random.normal(k, leaf.shape, dtype) for leaf, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, leaves), x


@pytest.mark.parametrize("bidirectional", [False, True])
def test_block_equals_the_numpy_loop(x64, bidirectional):
    mixer = RGLRUMixer(d_model=D_MODEL, num_heads=2, expansion=1.5, c=6.0, bidirectional=bidirectional)
    variables, x = _init(mixer)
    mask = np.arange(LENGTH)[None, :] < np.array([[LENGTH], [LENGTH - 3]])
    y = jax.jit(mixer.apply)(variables, x, mask=jnp.asarray(mask))
    want = reference_block(x, variables["params"], mask, c=6.0, bidirectional=bidirectional)
    np.testing.assert_allclose(np.asarray(y)[mask], want[mask], rtol=1e-10, atol=1e-12)


def test_step_by_step_and_prefill_equal_the_parallel_call(x64):
    mixer = RGLRUMixer(d_model=D_MODEL, num_heads=2, conv_width=3)
    variables, x = _init(mixer)
    y = jax.jit(mixer.apply)(variables, x)
    state = mixer.apply(variables, x.shape[0], method=RGLRUMixer.init_state)
    step = jax.jit(lambda state, x_t: mixer.apply(variables, state, x_t, method=RGLRUMixer.step))
    steps = []
    for t in range(LENGTH):
        state, y_t = step(state, x[:, t])
        steps.append(y_t)
    np.testing.assert_allclose(np.stack(steps, axis=1), y, rtol=1e-10, atol=1e-12)
    # Prefill of the first 5 tokens, then steps: the same outputs and the same final state.
    pre_state, y_pre = mixer.apply(variables, x[:, :5], method=RGLRUMixer.prefill)
    np.testing.assert_allclose(y_pre, y[:, :5], rtol=1e-10, atol=1e-12)
    for t in range(5, LENGTH):
        pre_state, y_t = step(pre_state, x[:, t])
        np.testing.assert_allclose(y_t, y[:, t], rtol=1e-10, atol=1e-12)
    for key in ("conv", "h"):
        np.testing.assert_allclose(pre_state[key], state[key], rtol=1e-10, atol=1e-12)


def test_causal_jacobian_is_lower_triangular(x64):
    mixer = RGLRUMixer(d_model=3, num_heads=1)
    variables, x = _init(mixer, length=7, d=3)
    jac = jax.jit(jax.jacrev(lambda inp: mixer.apply(variables, inp)))(x[:1])  # (1, L, D, 1, L, D)
    per_time = np.abs(np.asarray(jac[0, :, :, 0])).sum(axis=(1, 3))  # (L_out, L_in)
    assert np.all(np.triu(per_time, k=1) == 0.0)
    assert np.all(np.diag(per_time) > 0) and np.all(per_time[-1, :] > 0)  # the last output sees every input


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_is_invisible(x64, bidirectional):
    mixer = RGLRUMixer(d_model=3, num_heads=1, bidirectional=bidirectional)
    variables, x = _init(mixer, length=8, d=3)
    mask = jnp.arange(8)[None, :] < jnp.array([[5], [8]])
    apply = jax.jit(lambda x, mask=None: mixer.apply(variables, x, mask=mask))
    y = apply(x, mask)
    y_garbage = apply(x.at[0, 5:].set(100.0), mask)
    np.testing.assert_allclose(y_garbage[0, :5], y[0, :5], rtol=1e-12)
    np.testing.assert_allclose(y[0, :5], apply(x[:1, :5])[0], rtol=1e-10, atol=1e-12)
    if bidirectional:  # while output 0 does see the last input when it is real
        np.testing.assert_array_less(1e-6, np.abs(np.asarray(apply(x.at[1, -1].add(1.0), mask) - y)[1, 0]))


def test_initialisation_follows_the_official_code():
    d, heads, layers_scale = 64, 4, 0.25
    mixer = RGLRUMixer(d_model=d, num_heads=heads, out_variance_scale=layers_scale, bidirectional=True)
    params = param_groups.unbox(jax.jit(mixer.init)(jax.random.key(0), jnp.ones((1, 4, d))))["params"]
    r = np.asarray(jnp.exp(-jax.nn.softplus(params["a_param"])))
    assert 0.9 - 1e-6 <= r.min() and r.max() <= 0.999 + 1e-6  # the base decay on the ring, not a^8
    std = lambda name: float(np.std(np.asarray(params[name])))  # noqa: E731
    assert std("conv_w") == pytest.approx(math.sqrt(0.01 / 4), rel=0.1)
    assert std("conv_w_bwd") == pytest.approx(math.sqrt(0.01 / 4), rel=0.1)
    assert std("gate_a_w") == pytest.approx(1 / math.sqrt(d), rel=0.1)  # fan-in of (H, W/H, W/H) is W
    assert float(np.std(params["linear_x"]["kernel"])) == pytest.approx(1 / math.sqrt(d), rel=0.1)
    assert float(np.std(params["linear_out"]["kernel"])) == pytest.approx(math.sqrt(layers_scale / d), rel=0.1)
    for name in ("conv_b", "gate_a_b", "gate_x_b"):
        assert not np.any(params[name])


def test_parameter_groups():
    mixer = RGLRUMixer(d_model=4, num_heads=2)
    labels = param_groups.group_labels(jax.eval_shape(mixer.init, jax.random.key(0), jnp.ones((1, 4, 4)))["params"])
    assert labels["a_param"] == param_groups.SSM
    assert labels["gate_a_b"] == labels["gate_x_b"] == labels["conv_b"] == param_groups.NO_DECAY
    assert labels["linear_x"]["bias"] == param_groups.NO_DECAY
    assert labels["gate_a_w"] == labels["conv_w"] == labels["linear_out"]["kernel"] == param_groups.DEFAULT
    contract = models.mixer_contract("rglru")
    assert set(jax.tree.leaves(labels)) <= set(contract.param_groups)
    assert contract.causal and contract.step and contract.bidirectional


@pytest.mark.parametrize("options,option,message", [
    (dict(num_heads=3), "num_heads", "expected a divisor of the recurrence width round(expansion * d_model) = 8"),
    (dict(r_min=0.99, r_max=0.9), "r_min", "expected r_min < r_max"),
    (dict(c=0.0), "c", "expected a positive number"),
    (dict(conv_width=0), "conv_width", "expected a positive int"),
])
def test_bad_options_are_named(options, option, message):
    problems = models.mixer_contract("rglru").check_options(options, MixerContext(d_model=8))
    assert problems and problems[0][0] == option and message in problems[0][1], problems


def test_bidirectional_mixer_refuses_to_decode():
    mixer = RGLRUMixer(d_model=4, num_heads=2, bidirectional=True)
    shapes = jax.eval_shape(mixer.init, jax.random.key(0), jnp.ones((1, 4, 4)))  # traced, not compiled
    with pytest.raises(ValueError, match="causal"):
        jax.eval_shape(lambda v: mixer.apply(v, 1, method=RGLRUMixer.init_state), shapes)
