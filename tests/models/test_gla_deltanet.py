"""The gla and deltanet mixers: a float64 loop reference of each layer, step == parallel, causality, padding,
the bidirectional form, parameter groups and option checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import param_groups
from models.registry import MixerContext

D = 8
CASES = {  # id: (mixer, options)
    "gla": ("gla", dict(num_heads=2, chunk_size=4)),
    "retnet": ("gla", dict(num_heads=2, chunk_size=4, decay="retnet")),
    "deltanet": ("deltanet", dict(num_heads=2, chunk_size=4)),
}


def _make(case, bidirectional=False):
    name, options = CASES[case]
    return models.make_mixer(name, d_model=D, bidirectional=bidirectional, **options)


def _init(mixer, length=9, dtype=jnp.float64):
    x = jax.random.normal(jax.random.key(4), (2, length, D), dtype)
    variables = param_groups.unbox(jax.jit(mixer.init)(jax.random.key(5), x))
    # Perturb the zero-initialised biases and unit norm scales so that they are exercised too.
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(6), len(leaves))
    leaves = [(v + 0.3 * jax.random.normal(k, v.shape)).astype(dtype) for v, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, leaves), x


def _forward(mixer):
    """The parallel call, jitted (one compilation instead of one per op)."""
    return jax.jit(lambda variables, x, mask=None: mixer.apply(variables, x, mask=mask))


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _rms(o, scale, eps=1e-5):
    return o / np.sqrt(np.mean(o * o, axis=-1, keepdims=True) + eps) * scale


def _gla_layer_reference(p, x, heads, retnet):
    """fla's GatedLinearAttention layer, written from the equations, in numpy float64 (one sequence)."""
    length = x.shape[0]
    q, k, v = (x @ p[name]["kernel"] for name in ("q_proj", "k_proj", "v_proj"))
    if retnet:
        gamma = 1 - 2.0 ** (-5.0 - np.arange(heads))
        log_decay = np.repeat(np.log(gamma), q.shape[1] // heads)[None].repeat(length, 0)
    else:
        logits = x @ p["gate_down"]["kernel"] @ p["gate_up"]["kernel"] + p["gate_up"]["bias"]
        log_decay = -np.logaddexp(0.0, -logits) / 16.0  # logsigmoid / tau
    kh, vh = q.shape[1] // heads, v.shape[1] // heads
    out = np.zeros((length, v.shape[1]))
    for h in range(heads):
        s = np.zeros((kh, vh))
        ks, vs = slice(h * kh, (h + 1) * kh), slice(h * vh, (h + 1) * vh)
        for t in range(length):
            s = np.exp(log_decay[t, ks])[:, None] * s + np.outer(k[t, ks], v[t, vs])
            out[t, vs] = _rms((q[t, ks] / np.sqrt(kh)) @ s, p["norm_scale"])  # normalise, then gate
    g = x @ p["g_proj"]["kernel"]
    return (out * g / (1 + np.exp(-g))) @ p["o_proj"]["kernel"]


def _deltanet_layer_reference(p, x, heads):
    """fla's DeltaNet layer (short convs, SiLU, L2 norms, sigmoid beta, delta rule, RMSNorm), numpy float64."""
    length = x.shape[0]

    def conv_silu(u, taps):  # causal depthwise: output t = sum_j taps[j] u[t - 3 + j]
        padded = np.concatenate([np.zeros((3, u.shape[1])), u])
        y = sum(taps[j] * padded[j:j + length] for j in range(4))
        return y / (1 + np.exp(-y))

    q, k, v = (conv_silu(x @ p[f"{n}_proj"]["kernel"], p[f"{n}_conv"]) for n in ("q", "k", "v"))
    beta = 1 / (1 + np.exp(-(x @ p["b_proj"]["kernel"])))
    kh, vh = q.shape[1] // heads, v.shape[1] // heads
    out = np.zeros((length, v.shape[1]))
    for h in range(heads):
        s = np.zeros((kh, vh))
        ks, vs = slice(h * kh, (h + 1) * kh), slice(h * vh, (h + 1) * vh)
        for t in range(length):
            qt, kt = (a[t, ks] / np.sqrt(np.sum(a[t, ks] ** 2) + 1e-6) for a in (q, k))
            s = s + beta[t, h] * np.outer(kt, v[t, vs] - kt @ s)
            out[t, vs] = _rms((qt / np.sqrt(kh)) @ s, p["norm_scale"])
    return out @ p["o_proj"]["kernel"]


# The retnet case shares its code paths with gla but for the decay: its wiring checks beyond the loop reference and
# step == parallel run in the slow suite (the test budget).
WIRING_CASES = ["deltanet", "gla", pytest.param("retnet", marks=pytest.mark.slow)]

REFERENCES = {
    "deltanet": lambda p, x: _deltanet_layer_reference(p, x, 2),
    "gla": lambda p, x: _gla_layer_reference(p, x, 2, retnet=False),
    "retnet": lambda p, x: _gla_layer_reference(p, x, 2, retnet=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_equals_a_float64_loop(x64, case):
    mixer = _make(case)
    variables, x = _init(mixer)
    y = _forward(mixer)(variables, x)
    for b in range(x.shape[0]):
        expected = REFERENCES[case](_np(variables["params"]), np.asarray(x[b]))
        np.testing.assert_allclose(y[b], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_by_step_equals_parallel(x64, case):
    mixer = _make(case)
    variables, x = _init(mixer)
    y = _forward(mixer)(variables, x)
    state = mixer.apply(variables, x.shape[0], method="init_state")
    step = jax.jit(lambda variables, state, x_t: mixer.apply(variables, state, x_t, method="step"))
    steps = []
    for t in range(x.shape[1]):
        state, y_t = step(variables, state, x[:, t])
        steps.append(y_t)
    np.testing.assert_allclose(np.stack(steps, axis=1), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", WIRING_CASES)
def test_causal_and_bidirectional_dependence(x64, case):
    for bidirectional in (False, True):
        mixer = _make(case, bidirectional)
        variables, x = _init(mixer, length=7)
        forward = _forward(mixer)
        y = forward(variables, x)
        y_changed = forward(variables, x.at[:, 4].add(1.0))  # change the input at position 4
        changed = np.abs(np.asarray(y_changed - y)).max(axis=(0, 2)) > 1e-9  # per output position
        assert changed[4:].all()
        assert changed[:4].all() if bidirectional else not changed[:4].any()


@pytest.mark.parametrize("case", WIRING_CASES)
def test_padding_is_ignored_in_both_directions(x64, case):
    for bidirectional in (False, True):
        mixer = _make(case, bidirectional)
        variables, x = _init(mixer, length=10)
        mask = jnp.arange(10)[None, :] < jnp.array([[6], [10]])
        forward = _forward(mixer)
        y = forward(variables, x, mask)
        y_garbage = forward(variables, x.at[0, 6:].set(100.0), mask)
        np.testing.assert_allclose(y_garbage[0, :6], y[0, :6], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y[0, :6], forward(variables, x[:1, :6])[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", WIRING_CASES)
def test_bidirectional_mixer_refuses_to_decode(case):
    mixer = _make(case, bidirectional=True)
    variables = jax.jit(mixer.init)(jax.random.key(0), jnp.ones((1, 4, D)))
    with pytest.raises(ValueError, match="causal"):
        mixer.apply(variables, 1, method="init_state")


@pytest.mark.parametrize("case", WIRING_CASES)
def test_parameter_groups(case):
    mixer = _make(case)
    labels = param_groups.group_labels(jax.jit(mixer.init)(jax.random.key(0), jnp.ones((1, 4, D)))["params"])
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): label
            for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]}
    for path, label in flat.items():
        expected = param_groups.NO_DECAY if path.endswith(("bias", "norm_scale")) else param_groups.DEFAULT
        assert label == expected, (path, label)
    assert set(flat.values()) <= set(models.mixer_contract(CASES[case][0]).param_groups)


def test_options_are_checked_before_building():
    contract = models.mixer_contract("gla")
    problems = contract.check_options({"num_heads": 3}, MixerContext(d_model=8))
    assert problems and problems[0][0] == "num_heads" and "key_dim = 4" in problems[0][1]
    problems = contract.check_options({"decay": "retnt"}, MixerContext(d_model=8))
    assert problems[0][0] == "decay" and '"retnet"' in problems[0][1]
    assert contract.check_options({"num_heads": 2, "key_dim": 6}, MixerContext(d_model=8)) == []
