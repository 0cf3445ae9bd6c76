"""The state-space mixers ("s4", "s4d", "s5", "rtf") against the mixer contract: decoding step by step equals
the parallel call, and so does the parallel prefill (its state is the stepped one), causality (lower-triangular
Jacobian), padding never reaches real positions in bidirectional mode, parameters are real and carry their
optimiser groups."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import param_groups, registry
from models import rtf as rtf_mixer  # noqa: F401  (registers "rtf")
from models import ssm as ssm_mixers  # registers "s4", "s4d", "s5"
from tests.models.prefill_checks import check_prefill

D_MODEL = 3

# Small but non-trivial settings; larger steps than the defaults so that the kernels decay within the test
# lengths and every part of the system matters.
CONFIGS = {
    "s4": {"d_state": 8, "l_max": 16, "dt_min": 0.05, "dt_max": 0.5},
    "s4d": {"d_state": 8, "dt_min": 0.05, "dt_max": 0.5},
    "s4d-inv-bilinear": {"d_state": 8, "lambda_init": "inv", "discretization": "bilinear", "dt_min": 0.05,
                         "dt_max": 0.5},
    "s5": {"state_size": 8, "blocks": 2, "dt_min": 0.05, "dt_max": 0.5, "scan_method": "sequential"},
    "s5-bilinear-lecun-auto": {"state_size": 8, "discretization": "bilinear", "c_init": "lecun_normal",
                               "dt_min": 0.05, "dt_max": 0.5},
    "rtf": {"state_size": 4, "trunc_len": 16, "coefficient_init": "montel"},
}

# Which parameters belong to the "ssm" optimiser group, per mixer (everything else is default/no_decay).
SSM_PARAMS = {
    "s4": {"Lambda_log_neg_re", "Lambda_im", "P_re", "P_im", "B_re", "B_im", "log_step"},
    "s4d": {"Lambda_log_neg_re", "Lambda_im", "B_re", "B_im", "log_step"},
    "s5": {"Lambda_re", "Lambda_im", "B_re", "B_im", "log_step"},
    "rtf": {"a", "b", "a_bwd", "b_bwd"},
}


def _mixer_name(config_name):
    return config_name.split("-")[0]


def _build(config_name, bidirectional=False):
    return registry.make_mixer(_mixer_name(config_name), d_model=D_MODEL, bidirectional=bidirectional,
                               **CONFIGS[config_name])


@functools.cache
def _boxed_params(mixer):
    """Parameters only, once per mixer configuration (modules are hashable dataclasses). The mixers create
    their parameters in setup, so touching one attribute (D) is enough: the forward pass is not traced."""
    # The "rbg" generator compiles about twice as fast as threefry on CPU; the distributions are the same.
    return jax.jit(lambda key: mixer.init(key, method=lambda module: module.d))(jax.random.key(0, impl="rbg"))


def _init(mixer, dtype=jnp.float64):
    boxed = _boxed_params(mixer)
    return boxed, jax.tree.map(lambda v: v.astype(dtype), param_groups.unbox(boxed))


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_step_by_step_decoding_equals_the_parallel_call(x64, config_name):
    mixer = _build(config_name)
    x = jax.random.normal(jax.random.key(1), (2, 12, D_MODEL), jnp.float64)
    _, variables = _init(mixer)
    y = jax.jit(mixer.apply)(variables, x)
    assert y.shape == x.shape and y.dtype == jnp.float64
    state = mixer.apply(variables, x.shape[0], method="init_state")
    step = jax.jit(functools.partial(mixer.apply, method="step"))
    outputs = []
    for t in range(x.shape[1]):
        state, y_t = step(variables, state, x[:, t])
        outputs.append(y_t)
    np.testing.assert_allclose(np.stack(outputs, axis=1), np.asarray(y), rtol=1e-9, atol=1e-9)
    assert np.abs(np.asarray(y)).max() > 1e-3  # not a vacuous comparison
    check_prefill(mixer, variables, x, y, functools.partial(step, variables), prompt=7)


@pytest.mark.parametrize("config_name", ["s4", "s4d", "s5", "rtf"])
def test_causal_mixer_has_a_lower_triangular_jacobian(x64, config_name):
    mixer = _build(config_name)
    x = jax.random.normal(jax.random.key(2), (1, 8, D_MODEL), jnp.float64)
    _, variables = _init(mixer)
    jacobian = jax.jit(jax.jacrev(lambda inputs: mixer.apply(variables, inputs)))(x)
    jacobian = jacobian[0, :, :, 0]  # (L, D, L, D)
    jacobian = np.asarray(jacobian).transpose(0, 2, 1, 3)  # (t_out, t_in, D, D)
    future = np.triu(np.ones((8, 8), bool), k=1)
    assert np.abs(jacobian[future]).max() < 1e-12
    assert np.abs(jacobian[~future]).max() > 1e-2
    # SISO mixers mix no channels; S5 (MIMO) does.
    off_diagonal_channels = np.abs(jacobian * (1 - np.eye(D_MODEL))).max()
    assert (off_diagonal_channels > 1e-3) == (config_name == "s5")


@pytest.mark.parametrize("config_name", ["s4", "s4d", "s5", "rtf"])
def test_bidirectional_mixer_ignores_padding_and_sees_the_future(x64, config_name):
    mixer = _build(config_name, bidirectional=True)
    length, real = 10, 7
    x = jax.random.normal(jax.random.key(3), (2, length, D_MODEL), jnp.float64)
    _, variables = _init(mixer)
    mask = jnp.arange(length)[None, :] < jnp.asarray([[length], [real]])
    garbage = x.at[1, real:].set(1e3 * jax.random.normal(jax.random.key(4), (length - real, D_MODEL)))
    apply = jax.jit(lambda inputs, mask: mixer.apply(variables, inputs, mask=mask))
    y = np.asarray(apply(x, mask))
    y_garbage = np.asarray(apply(garbage, mask))
    np.testing.assert_allclose(y_garbage[1, :real], y[1, :real], atol=1e-10)
    assert np.abs(y_garbage[1, real:] - y[1, real:]).max() < 1e-10  # masked inputs are zeroed, not used
    # and the layer is bidirectional: the first output depends on the last input.
    y_nudged = np.asarray(apply(x.at[0, -1].add(1.0), mask))
    assert np.abs(y_nudged[0, 0] - y[0, 0]).max() > 1e-6


@pytest.mark.parametrize("config_name", ["s4", "s4d", "s5", "rtf"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_parameters_are_real_and_carry_their_groups(config_name, bidirectional):
    mixer = _build(config_name, bidirectional)
    boxed = jax.eval_shape(lambda key: mixer.init(key, method=lambda module: module.d), jax.random.key(0))
    params = param_groups.unbox(boxed)["params"]
    assert all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in jax.tree.leaves(params))
    labels = param_groups.group_labels(boxed)["params"]
    expected_ssm = SSM_PARAMS[_mixer_name(config_name)] & set(labels)
    assert expected_ssm and {k for k, v in labels.items() if v == param_groups.SSM} == expected_ssm
    assert labels["D"] == param_groups.NO_DECAY
    for name in labels:
        if name.startswith("C_"):
            assert labels[name] == param_groups.DEFAULT
    assert any(name.endswith("_bwd") for name in labels) == bidirectional


@pytest.mark.parametrize("config_name,system_keys", [("s4", ("A_bar", "B_bar", "C_bar")), ("rtf", ("c",))])
def test_decoding_state_carries_the_system_built_once_by_init_state(x64, config_name, system_keys):
    """S4 and RTF solve for their recurrent system (O(N^3 log L)) in init_state, not at every step: the step
    reads it from the state, so a state whose output row is zeroed decodes y = D x, and the system is passed on
    unchanged."""
    mixer = _build(config_name)
    _, variables = _init(mixer)
    x_t = jax.random.normal(jax.random.key(2), (2, D_MODEL), jnp.float64)
    state = mixer.apply(variables, 2, method="init_state")
    new_state, _ = mixer.apply(variables, state, x_t, method="step")
    for key in system_keys:
        np.testing.assert_array_equal(np.asarray(new_state[key]), np.asarray(state[key]))
    output_row = system_keys[-1]
    silenced = {**state, output_row: jnp.zeros_like(state[output_row])}
    _, y_t = mixer.apply(variables, silenced, x_t, method="step")
    np.testing.assert_allclose(np.asarray(y_t), np.asarray(variables["params"]["D"] * x_t), rtol=1e-12)


@pytest.mark.parametrize("config_name", ["s4", "s4d", "s5", "rtf"])
def test_float32_forward_pass(config_name):
    mixer = _build(config_name, bidirectional=True)
    _, variables = _init(mixer, jnp.float32)
    x = jax.random.normal(jax.random.key(6), (2, 16, D_MODEL), jnp.float32)
    y = jax.jit(mixer.apply)(variables, x)
    assert y.dtype == jnp.float32 and y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("config_name", ["s4", "s4d", "s5", "rtf"])
def test_decoding_a_bidirectional_mixer_raises(config_name):
    mixer = _build(config_name, bidirectional=True)
    _, variables = _init(mixer, jnp.float32)
    with pytest.raises(ValueError, match="bidirectional"):
        mixer.apply(variables, 1, method="init_state")
    with pytest.raises(ValueError, match="bidirectional"):
        mixer.apply(variables, jnp.zeros((1, D_MODEL)), jnp.ones((1, D_MODEL)), method="step")


def test_s4_initialisation_is_the_legs_nplr_form():
    mixer = _build("s4")
    _, variables = _init(mixer, jnp.float32)
    params = variables["params"]
    np.testing.assert_allclose(-np.exp(params["Lambda_log_neg_re"]), -0.5, rtol=1e-6)
    im = np.asarray(params["Lambda_im"])
    assert im.shape == (D_MODEL, 4) and np.all(im > 0) and np.all(im == im[0])
    steps = np.exp(np.asarray(params["log_step"]))
    assert np.all((steps >= 0.05) & (steps <= 0.5))


def test_s4d_initial_eigenvalues():
    from ops import hippo

    n = 8
    lam, b = ssm_mixers.s4d_eigenvalues("lin", n)
    np.testing.assert_allclose(lam, -0.5 + 1j * np.pi * np.arange(4))
    np.testing.assert_allclose(b, 1.0)
    lam, _ = ssm_mixers.s4d_eigenvalues("inv", n)
    np.testing.assert_allclose(lam.imag, n / np.pi * (n / (2 * np.arange(4) + 1) - 1))
    lam, b = ssm_mixers.s4d_eigenvalues("legs", n)
    half = hippo.conjugate_half(hippo.legs_nplr(n))
    np.testing.assert_allclose(lam, half.Lambda)
    np.testing.assert_allclose(b, half.B)
    with pytest.raises(ValueError, match="unknown init"):
        ssm_mixers.s4d_eigenvalues("legt", n)


def test_s5_initialisation_uses_the_blocks():
    mixer = _build("s5")  # P = 8, J = 2: two copies of the 4-state LegS normal eigenvalues, halved
    _, variables = _init(mixer, jnp.float32)
    im = np.asarray(variables["params"]["Lambda_im"])
    assert im.shape == (4,)
    np.testing.assert_allclose(im[:2], im[2:])
    params = variables["params"]
    assert params["B_re"].shape == (4, D_MODEL) and params["C_re"].shape == (D_MODEL, 4)


def test_bad_options_raise_clear_errors():
    x = jnp.ones((1, 20, D_MODEL))
    with pytest.raises(ValueError, match="l_max"):
        _build("s4").apply(_init(_build("s4"), jnp.float32)[1], x)  # l_max = 16 < 20
    def build_params(name, **options):
        mixer = registry.make_mixer(name, d_model=D_MODEL, **options)
        return mixer.init(jax.random.key(0), method=lambda module: module.d)

    with pytest.raises(ValueError, match="trunc_len"):
        build_params("rtf", state_size=8, trunc_len=8)
    with pytest.raises(ValueError, match="even"):
        build_params("s4d", d_state=5)
    with pytest.raises(ValueError, match="even block size"):
        build_params("s5", state_size=6, blocks=2)


def test_rtf_inputs_longer_than_trunc_len_see_a_truncated_kernel(x64):
    mixer = _build("rtf")  # trunc_len = 16
    x = jax.random.normal(jax.random.key(5), (1, 24, D_MODEL), jnp.float64)
    _, variables = _init(mixer)
    y = np.asarray(jax.jit(mixer.apply)(variables, x))
    a, b = variables["params"]["a"], variables["params"]["b"]
    from ops import rtf as rtf_ops

    kernel = np.asarray(rtf_ops.rtf_kernel(a, b, 16))
    d = np.asarray(variables["params"]["D"])
    u = np.asarray(x[0])
    expected = np.zeros((24, D_MODEL))
    for t in range(24):
        for k in range(min(t + 1, 16)):  # the kernel stops at lag trunc_len - 1
            expected[t] += kernel[:, k] * u[t - k]
    expected += d * u
    np.testing.assert_allclose(y[0], expected, atol=1e-10)


def test_registry_lists_the_state_space_mixers():
    assert {"s4", "s4d", "s5", "rtf"} <= set(registry.mixer_names())
    assert registry.mixer_options("s5")["blocks"] == 1
