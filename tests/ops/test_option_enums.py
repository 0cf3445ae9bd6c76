"""The closed option sets of ops/ as StrEnums: their values, the former names (plain-string tuples and dict
keys), and errors for a bad value that list the allowed ones."""

import enum
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import hippo, linear_attention, normalizers, performer, rtf, ssm, vq_attention

ENUMS = [
    # (enum, its values in order, the former public name holding them or None)
    (performer.Kernel, ("softmax", "relu"), performer.KERNELS),
    (performer.OrthogonalScaling, ("chi", "sqrt_dim", "iid"), performer.ORTHOGONAL_SCALINGS),
    (rtf.RTFInit, ("zeros", "montel", "xavier"), rtf.RTF_INITS),
    (ssm.S5CInit, ("trunc_standard_normal", "lecun_normal", "complex_normal"), ssm.S5_C_INITS),
    (ssm.Discretization, ("zoh", "bilinear"), None),
    (vq_attention.Formulation, ("parallel", "serial"), vq_attention.FORMULATIONS),
    (linear_attention.FeatureMapName, ("elu", "relu"), tuple(linear_attention.FEATURE_MAPS)),
    (linear_attention.CausalMethod, ("chunked", "prefix"), None),
    (normalizers.NormalizerName, ("softmax", "sparsemax", "entmax15", "taylor2"), tuple(normalizers.NORMALIZERS)),
    (hippo.HippoDiscretization, ("forward_euler", "backward_euler", "bilinear", "zoh"), hippo.DISCRETIZATIONS),
]


@pytest.mark.parametrize("cls,values,former", ENUMS, ids=[cls.__name__ for cls, _, _ in ENUMS])
def test_enum_values_and_former_names(cls, values, former):
    assert issubclass(cls, enum.StrEnum)
    assert tuple(m.value for m in cls) == values
    for member, value in zip(cls, values, strict=True):
        assert member == value and isinstance(member, str) and str(member) == value
        assert cls(value) is member
    if former is not None:
        # Plain strings (they print as 'softmax', not <Kernel.SOFTMAX: 'softmax'>); members are found in them.
        assert former == values and all(type(v) is str for v in former)
        assert all(member in former for member in cls)


def test_every_s4d_s5_discretization_is_a_hippo_rule():
    assert set(ssm.Discretization) <= set(hippo.HippoDiscretization)


def _vq(formulation):
    q = jnp.ones((1, 4, 1, 2))
    assignments = jax.nn.one_hot(jnp.zeros((1, 4, 1), int), 2)
    return vq_attention.vq_attention(q, q, jnp.ones((1, 2, 2)), assignments, block_len=2, formulation=formulation)


_QKV = (jnp.ones((1, 3, 1, 2)),) * 3
_LOG_QKV = (jnp.zeros((1, 3, 1, 2)),) * 3
_QKV_T = (jnp.ones((1, 1, 2)),) * 3  # one token (B, H, K)
_BAD_VALUES = {
    "favor_feature_map kernel": (lambda: performer.favor_feature_map(jnp.ones((4, 2)), "sofmax"),
                                 "sofmax", performer.Kernel),
    "favor_attention kernel": (lambda: performer.favor_attention(*_QKV, jnp.ones((4, 2)), kernel="sofmax"),
                               "sofmax", performer.Kernel),
    "favor_step kernel": (lambda: performer.favor_step(performer.favor_init_state(1, 1, 4, 2), *_QKV_T,
                                                       jnp.ones((4, 2)), kernel="sofmax"),
                          "sofmax", performer.Kernel),
    "orthogonal scaling": (lambda: performer.gaussian_orthogonal_matrix(jax.random.PRNGKey(0), 4, 2, scaling="qr"),
                           "qr", performer.OrthogonalScaling),
    "rtf_init": (lambda: rtf.rtf_init(jax.random.PRNGKey(0), (2, 3), "glorot"), "glorot", rtf.RTFInit),
    "s5_c_init": (lambda: ssm.s5_c_init(jax.random.PRNGKey(0), "glorot", 2, np.eye(2)), "glorot", ssm.S5CInit),
    "s5_discretize": (lambda: ssm.s5_discretize(-jnp.ones(2), jnp.ones((2, 1)), jnp.zeros(2), "forward_euler"),
                      "forward_euler", ssm.Discretization),
    "vq_attention formulation": (lambda: _vq("scan"), "scan", vq_attention.Formulation),
    "linear_attention feature map": (lambda: linear_attention.linear_attention(*_QKV, feature_map="tanh"),
                                     "tanh", linear_attention.FeatureMapName),
    "linear_attention method": (lambda: linear_attention.linear_attention(*_QKV, causal=True, method="fft"),
                                "fft", linear_attention.CausalMethod),
    "log features method": (lambda: linear_attention.linear_attention_from_log_features(*_LOG_QKV, causal=True,
                                                                                        method="fft"),
                            "fft", linear_attention.CausalMethod),
    "get_normalizer": (lambda: normalizers.get_normalizer("softermax"), "softermax", normalizers.NormalizerName),
    "hippo discretize": (lambda: hippo.discretize(jnp.eye(2), jnp.ones(2), 0.1, "euler"), "euler",
                         hippo.HippoDiscretization),
    "hippo discretize_diagonal": (lambda: hippo.discretize_diagonal(-jnp.ones(2), 0.1, "euler"), "euler",
                                  hippo.HippoDiscretization),
}


@pytest.mark.parametrize("call,bad,cls", _BAD_VALUES.values(), ids=list(_BAD_VALUES))
def test_a_bad_value_names_the_allowed_ones(call, bad, cls):
    allowed = ", ".join(repr(m.value) for m in cls)  # e.g. 'softmax', 'relu'
    with pytest.raises(ValueError, match=re.escape(f"{bad!r}; expected one of {allowed}")) as info:
        call()
    assert "<" not in str(info.value)  # values, not enum reprs


@pytest.mark.slow  # the test budget: the ops' string arguments are checked per option by the tests above
def test_members_and_strings_give_the_same_results():
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(rtf.rtf_init(key, (2, 3), rtf.RTFInit.MONTEL), rtf.rtf_init(key, (2, 3), "montel"))
    v = np.eye(4)[:, :2]
    np.testing.assert_array_equal(ssm.s5_c_init(key, ssm.S5CInit.LECUN_NORMAL, 3, v),
                                  ssm.s5_c_init(key, "lecun_normal", 3, v))
    lam, step = jnp.array([-1.0 + 2j, -0.5 + 0j]), jnp.array([0.1, 0.2])
    for rule in hippo.HippoDiscretization:
        for got, want in zip(hippo.discretize_diagonal(lam, step, rule),
                             hippo.discretize_diagonal(lam, step, rule.value), strict=True):
            np.testing.assert_array_equal(got, want)
    w = performer.gaussian_orthogonal_matrix(key, 4, 2, scaling=performer.OrthogonalScaling.SQRT_DIM)
    np.testing.assert_array_equal(w, performer.gaussian_orthogonal_matrix(key, 4, 2, scaling="sqrt_dim"))
    q = jax.random.normal(key, (1, 5, 1, 2))
    for kernel in performer.Kernel:
        for method in linear_attention.CausalMethod:
            np.testing.assert_array_equal(
                performer.favor_attention(q, q, q, w, kernel=kernel, causal=True, method=method, chunk_size=2),
                performer.favor_attention(q, q, q, w, kernel=kernel.value, causal=True, method=method.value,
                                          chunk_size=2),
            )
    assert linear_attention.FEATURE_MAPS[linear_attention.FeatureMapName.ELU] is linear_attention.elu_plus_one
    assert normalizers.get_normalizer(normalizers.NormalizerName.ENTMAX15) is normalizers.entmax15
