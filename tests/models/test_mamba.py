"""The Mamba and Mamba-2 mixers (models/mamba.py): the block against a float64 numpy loop, step == parallel,
prefill, causality, padding invariance, initial values and optimiser groups."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import param_groups
from models.mamba import Mamba2Mixer, MambaMixer, dt_bias_init
from tests.models.prefill_checks import check_prefill

D_MODEL, LENGTH = 8, 11

# XLA's optimisation passes cost more than running these tiny programs (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compilation")


def _softplus(v):
    return np.log1p(np.exp(v))


def _silu(v):
    return v / (1 + np.exp(-v))


def reference_mamba_branch(xs, p, suffix, n, rank):
    """One direction of the Mamba block from its conv input xs (B, L, I): loops over b, t, d, n, k in numpy."""
    w, bias = p["conv_w" + suffix], p["conv_b" + suffix]
    width = w.shape[0]
    batch, length, inner = xs.shape
    u = np.zeros(xs.shape)
    for i in range(batch):
        for t in range(length):
            for d in range(inner):
                u[i, t, d] = bias[d] + sum(w[k, d] * xs[i, t - width + 1 + k, d] for k in range(width)
                                           if t - width + 1 + k >= 0)
    u = _silu(u)
    proj = u @ p["x_proj" + suffix]
    dt, b, c = proj[..., :rank], proj[..., rank:rank + n], proj[..., rank + n:]
    delta = _softplus(dt @ p["dt_proj" + suffix] + p["dt_bias" + suffix])
    a = -np.exp(p["A_log" + suffix])
    y = np.zeros(xs.shape)
    for i in range(batch):
        for d in range(inner):
            h = np.zeros(n)
            for t in range(length):
                for k in range(n):
                    h[k] = np.exp(delta[i, t, d] * a[d, k]) * h[k] + delta[i, t, d] * b[i, t, k] * u[i, t, d]
                y[i, t, d] = h @ c[i, t] + p["D" + suffix][d] * u[i, t, d]
    return y


def reference_mamba(x, p, n, rank, bidirectional):
    """The whole block in float64: in_proj, the branch (and the reversed branch), the SiLU(z) gate, out_proj."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    xz = np.asarray(x, np.float64) @ p["in_proj"]
    inner = xz.shape[-1] // 2
    xs, z = xz[..., :inner], xz[..., inner:]
    y = reference_mamba_branch(xs, p, "", n, rank)
    if bidirectional:
        y = y + reference_mamba_branch(xs[:, ::-1], p, "_bwd", n, rank)[:, ::-1]
    return (y * _silu(z)) @ p["out_proj"]


OPTIONS = dict(d_model=D_MODEL, d_state=3, conv_width=3, chunk_size=4)  # dt_rank "auto": ceil(8 / 16) = 1


def _mamba(bidirectional=False):
    return MambaMixer(bidirectional=bidirectional, **OPTIONS)


@pytest.fixture(scope="module")
def boxed_params():
    """The bidirectional mixer's initial parameters (boxed); the causal mixer takes those without "_bwd"."""
    x = jnp.zeros((1, LENGTH, D_MODEL))
    return jax.jit(_mamba(True).init)(jax.random.key(1), x)["params"]


def _variables(boxed_params, bidirectional):
    params = param_groups.unbox(boxed_params)
    return {"params": {k: v for k, v in params.items() if bidirectional or not k.endswith("_bwd")}}


def _apply(mixer, variables, x, mask=None):
    return jax.jit(mixer.apply)(variables, x, mask=mask)


# Bidirectional: the forward branch (the causal layer's whole computation) plus the reversed one.
@pytest.mark.parametrize("bidirectional", [True])
def test_mamba_block_equals_numpy_loop(x64, boxed_params, bidirectional):
    mixer = _mamba(bidirectional)
    x = jax.random.normal(jax.random.key(0), (2, LENGTH, D_MODEL), jnp.float64)
    params = _variables(boxed_params, bidirectional)["params"]
    # Random values everywhere (not the structured init), so that every parameter is exercised.
    keys = iter(jax.random.split(jax.random.key(2), 32))
    params = {k: v + 0.3 * jax.random.normal(next(keys), v.shape) for k, v in params.items()}
    y = _apply(mixer, {"params": params}, x)
    expected = reference_mamba(x, params, n=3, rank=1, bidirectional=bidirectional)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-9, atol=1e-9)


def test_mamba_step_and_prefill_equal_the_parallel_call(x64, boxed_params):
    mixer, variables = _mamba(), _variables(boxed_params, False)
    x = jax.random.normal(jax.random.key(0), (2, LENGTH, D_MODEL), jnp.float64)
    y = _apply(mixer, variables, x)
    state = mixer.apply(variables, 2, method=MambaMixer.init_state)
    step = jax.jit(lambda state, x_t: mixer.apply(variables, state, x_t, method=MambaMixer.step))
    for t in range(LENGTH):
        state, y_t = step(state, x[:, t])
        np.testing.assert_allclose(np.asarray(y_t), np.asarray(y[:, t]), rtol=1e-10, atol=1e-10)
    check_prefill(mixer, variables, x, y, step, prompt=5)  # the parallel prefill's state, then stepping on


@pytest.mark.parametrize("bidirectional", [False, True])
def test_mamba_is_causal_and_ignores_padding(boxed_params, bidirectional):
    x = jax.random.normal(jax.random.key(0), (2, LENGTH, D_MODEL))
    mask = jnp.arange(LENGTH)[None, :] < jnp.array([[LENGTH], [6]])
    changed = x.at[:, 6:].set(jax.random.normal(jax.random.key(5), (2, LENGTH - 6, D_MODEL)))
    mixer, variables = _mamba(bidirectional), _variables(boxed_params, bidirectional)
    run = jax.jit(mixer.apply)
    everything = jnp.ones((2, LENGTH), bool)  # one program (a mask) for every call at this length
    y, y_changed = run(variables, x, mask=everything), run(variables, changed, mask=everything)
    if not bidirectional:  # causal: the outputs before position 6 ignore the change from 6 on
        np.testing.assert_allclose(y[:, :6], y_changed[:, :6], rtol=1e-6, atol=1e-6)
    assert np.allclose(y[:, 5], y_changed[:, 5]) != bidirectional
    # Sequence 1 has 6 real tokens: its outputs equal those of the same 6 tokens followed by other padding.
    padded = run(variables, changed, mask=mask)
    other = run(variables, x.at[1, 6:].set(3.0), mask=mask)
    np.testing.assert_allclose(padded[1, :6], other[1, :6], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(padded[0], y_changed[0], rtol=1e-5, atol=1e-5)
    # ... and those of the 6 tokens alone, unpadded (in the reversed branch, the padding comes first).
    np.testing.assert_allclose(padded[1, :6], _apply(mixer, variables, x[1:, :6])[0], rtol=1e-5, atol=1e-5)


def test_mamba_initial_values_and_groups(boxed_params):
    params = param_groups.unbox(boxed_params)
    inner, n, rank = 2 * D_MODEL, 3, 1  # expansion 2; dt_rank "auto": ceil(8 / 16)
    for suffix in ("", "_bwd"):
        np.testing.assert_allclose(params["A_log" + suffix], np.log(np.broadcast_to(np.arange(1, n + 1),
                                                                                     (inner, n))), rtol=1e-6)
        np.testing.assert_array_equal(params["D" + suffix], np.ones(inner))
        assert params["dt_proj" + suffix].shape == (rank, inner)
        assert np.abs(params["dt_proj" + suffix]).max() <= rank ** -0.5
    # dt_bias is the inverse softplus of dt0 = exp(U[ln 1e-3, ln 1e-1]), clamped at >= 1e-4.
    dt_bias = np.asarray(dt_bias_init(1e-3, 1e-1, 1e-4)(jax.random.key(0), (4096,)))
    dt = np.log1p(np.exp(dt_bias.astype(np.float64)))
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert dt_bias.min() >= -6.91 and dt_bias.max() <= -2.25
    counts = np.histogram(np.log(dt), bins=4, range=(np.log(1e-3), np.log(1e-1)))[0] / len(dt)
    np.testing.assert_allclose(counts, 0.25, atol=0.04)  # log-uniform
    floored = np.log1p(np.exp(np.asarray(dt_bias_init(1e-5, 2e-5, 1e-4)(jax.random.key(0), (16,)), np.float64)))
    np.testing.assert_allclose(floored, 1e-4, rtol=1e-4)  # clamped at the floor
    mixer_dt = np.log1p(np.exp(np.asarray(params["dt_bias"], np.float64)))
    assert mixer_dt.min() >= 1e-3 * (1 - 1e-5) and mixer_dt.max() <= 1e-1 * (1 + 1e-5)
    labels = param_groups.group_labels(boxed_params)
    assert {k for k, g in labels.items() if g == "ssm"} == {"A_log", "dt_bias", "A_log_bwd", "dt_bias_bwd"}
    assert labels["D"] == labels["conv_b"] == "no_decay" and labels["in_proj"] == "default"
    assert set(labels.values()) <= set(models.mixer_contract("mamba").param_groups)


def test_mamba_contract_and_option_checks():
    contract = models.mixer_contract("mamba")
    assert contract.causal and contract.step and contract.bidirectional
    resolved = models.resolve_mixer("mamba", dict(dt_min=0.1, dt_max=0.01))
    problems = contract.check_options(dict(dt_min=0.1, dt_max=0.01), models.registry.MixerContext(d_model=8))
    assert problems == [("dt_min", "expected dt_min < dt_max, got dt_min=0.1, dt_max=0.01")], problems
    assert resolved.options.d_state == 16
    problems = contract.check_options(dict(conv_width=0), models.registry.MixerContext(d_model=8))
    assert problems == [("conv_width", "expected a positive int, got 0")], problems
    assert math.ceil(8 / 16) == MambaMixer(d_model=8).rank


# ------------------------------------------------------------------------------------------------- Mamba-2

OPTIONS2 = dict(d_model=D_MODEL, d_state=3, head_dim=4, conv_width=3, chunk_size=4)  # I = 16: 4 heads of 4


def _mamba2(bidirectional=False):
    return Mamba2Mixer(bidirectional=bidirectional, **OPTIONS2)


@pytest.fixture(scope="module")
def boxed_params2():
    x = jnp.zeros((1, LENGTH, D_MODEL))
    return jax.jit(_mamba2(True).init)(jax.random.key(1), x)["params"]


def reference_mamba2_branch(xbc, dt, p, suffix, inner, n, head_dim):
    """One direction of the Mamba-2 block from its conv input xbc (B, L, I + 2N) and dt (B, L, H): numpy loops."""
    w, bias = p["conv_w" + suffix], p["conv_b" + suffix]
    width = w.shape[0]
    batch, length, channels = xbc.shape
    u = np.zeros(xbc.shape)
    for i in range(batch):
        for t in range(length):
            for d in range(channels):
                u[i, t, d] = bias[d] + sum(w[k, d] * xbc[i, t - width + 1 + k, d] for k in range(width)
                                           if t - width + 1 + k >= 0)
    u = _silu(u)
    x, b, c = u[..., :inner], u[..., inner:inner + n], u[..., inner + n:]
    delta = _softplus(dt + p["dt_bias" + suffix])
    a = -np.exp(p["A_log" + suffix])
    y = np.zeros(x.shape)
    for i in range(batch):
        for h in range(len(a)):
            channels_h = range(h * head_dim, (h + 1) * head_dim)
            state = np.zeros((head_dim, n))
            for t in range(length):
                state = np.exp(delta[i, t, h] * a[h]) * state + delta[i, t, h] * np.outer(x[i, t, channels_h],
                                                                                          b[i, t])
                y[i, t, channels_h] = state @ c[i, t] + p["D" + suffix][h] * x[i, t, channels_h]
    return y


def reference_mamba2(x, p, n, head_dim, bidirectional, eps=1e-5):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    projected = np.asarray(x, np.float64) @ p["in_proj"]
    inner = p["out_proj"].shape[0]
    z, xbc, dt = projected[..., :inner], projected[..., inner:2 * inner + 2 * n], projected[..., 2 * inner + 2 * n:]
    y = reference_mamba2_branch(xbc, dt, p, "", inner, n, head_dim)
    if bidirectional:
        y = y + reference_mamba2_branch(xbc[:, ::-1], dt[:, ::-1], p, "_bwd", inner, n, head_dim)[:, ::-1]
    gated = y * _silu(z)
    normed = gated / np.sqrt(np.mean(gated**2, axis=-1, keepdims=True) + eps) * p["norm"]
    return normed @ p["out_proj"]


# Bidirectional: the forward branch (the causal layer's whole computation) plus the reversed one.
@pytest.mark.parametrize("bidirectional", [True])
def test_mamba2_block_equals_numpy_loop(x64, boxed_params2, bidirectional):
    params = _variables(boxed_params2, bidirectional)["params"]
    keys = iter(jax.random.split(jax.random.key(2), 32))
    params = {k: v + 0.3 * jax.random.normal(next(keys), v.shape) for k, v in params.items()}
    x = jax.random.normal(jax.random.key(0), (2, LENGTH, D_MODEL), jnp.float64)
    y = _apply(_mamba2(bidirectional), {"params": params}, x)
    expected = reference_mamba2(x, params, n=3, head_dim=4, bidirectional=bidirectional)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-9, atol=1e-9)


def test_mamba2_step_and_prefill_equal_the_parallel_call(x64, boxed_params2):
    mixer, variables = _mamba2(), _variables(boxed_params2, False)
    x = jax.random.normal(jax.random.key(0), (2, LENGTH, D_MODEL), jnp.float64)
    y = _apply(mixer, variables, x)
    state = mixer.apply(variables, 2, method=Mamba2Mixer.init_state)
    step = jax.jit(lambda state, x_t: mixer.apply(variables, state, x_t, method=Mamba2Mixer.step))
    for t in range(LENGTH):
        state, y_t = step(state, x[:, t])
        np.testing.assert_allclose(np.asarray(y_t), np.asarray(y[:, t]), rtol=1e-10, atol=1e-10)
    check_prefill(mixer, variables, x, y, step, prompt=5)  # the parallel prefill's state, then stepping on


@pytest.mark.parametrize("bidirectional", [False, True])
def test_mamba2_is_causal_and_ignores_padding(boxed_params2, bidirectional):
    x = jax.random.normal(jax.random.key(0), (2, LENGTH, D_MODEL))
    mask = jnp.arange(LENGTH)[None, :] < jnp.array([[LENGTH], [6]])
    changed = x.at[:, 6:].set(jax.random.normal(jax.random.key(5), (2, LENGTH - 6, D_MODEL)))
    mixer, variables = _mamba2(bidirectional), _variables(boxed_params2, bidirectional)
    run = jax.jit(mixer.apply)
    everything = jnp.ones((2, LENGTH), bool)  # one program (a mask) for every call at this length
    y, y_changed = run(variables, x, mask=everything), run(variables, changed, mask=everything)
    if not bidirectional:
        np.testing.assert_allclose(y[:, :6], y_changed[:, :6], rtol=1e-6, atol=1e-6)
    assert np.allclose(y[:, 5], y_changed[:, 5]) != bidirectional
    padded = run(variables, changed, mask=mask)
    np.testing.assert_allclose(padded[0], y_changed[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(padded[1, :6], _apply(mixer, variables, x[1:, :6])[0], rtol=1e-5, atol=1e-5)


def test_mamba2_initial_values_groups_and_checks(boxed_params2):
    params = param_groups.unbox(boxed_params2)
    heads = 4
    for suffix in ("", "_bwd"):
        a = np.exp(np.asarray(params["A_log" + suffix]))
        assert a.shape == (heads,) and a.min() >= 1.0 and a.max() <= 16.0 and np.ptp(a) > 0
        np.testing.assert_array_equal(params["D" + suffix], np.ones(heads))
        dt = np.log1p(np.exp(np.asarray(params["dt_bias" + suffix], np.float64)))
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    np.testing.assert_array_equal(params["norm"], np.ones(2 * D_MODEL))
    assert params["in_proj"].shape == (D_MODEL, 2 * 16 + 2 * 3 + heads)
    labels = param_groups.group_labels(boxed_params2)
    assert {k for k, g in labels.items() if g == "ssm"} == {"A_log", "dt_bias", "A_log_bwd", "dt_bias_bwd"}
    assert labels["D"] == labels["norm"] == "no_decay" and labels["in_proj"] == "default"
    contract = models.mixer_contract("mamba2")
    assert contract.causal and contract.step and set(labels.values()) <= set(contract.param_groups)
    problems = contract.check_options(dict(head_dim=5), models.registry.MixerContext(d_model=8))
    assert problems == [("head_dim", "expected a divisor of the inner width round(expansion * d_model) = 16, "
                                     "got 5")], problems
