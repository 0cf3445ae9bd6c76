"""Tests for models/attention.py: decoding equals the parallel call, causality, padding, options, DeepNorm."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import attention as mixers  # registers the attention mixers
from models import linear_attention as linear_mixers
from models import param_groups
from models.registry import UnknownMixerError, make_mixer, mixer_names
from tests.models.prefill_checks import check_prefill

B, L, D = 2, 9, 8
F64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}


def _inputs(batch=B, length=L, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, length, D)))


# (name, options, whether to also check causality by the Jacobian). The Jacobian is the expensive part: it is
# checked for blockwise (custom VJP) and performer (running key stabiliser, stop-gradient); the dense
# and linear causal masks are checked against references in tests/ops/test_attention.py and
# tests/ops/test_linear_attention.py, and decoding equal to the parallel call implies causality at these inputs.
CAUSAL_CONFIGS = [
    (
        "softmax",
        {
            "position": "rope_bias",
            "rope_scaling": "rerope",
            "rerope_window": 3,
            "rerope_leak": 4.0,
            "logn_scaling": True,
            "train_length": 4,
            "normalizer": "entmax15",
        },
        False,
    ),
    ("softmax", {"position": "alibi"}, False),
    (
        "blockwise",
        {
            "position": "rope",
            "rope_scaling": "yarn",
            "rope_scale": 2.0,
            "train_length": 8,
            "logn_scaling": True,
            "block_size": 4,
        },
        True,
    ),
    ("linear", {"position": "rope", "feature_map": "relu", "chunk_size": 4}, False),
    ("performer", {"num_features": 16, "chunk_size": 4}, True),
]


def _build(name, options, bidirectional):
    extra = {"max_decode_len": L} if name in ("softmax", "blockwise") and not bidirectional else {}
    return make_mixer(name, d_model=D, bidirectional=bidirectional, num_heads=2, **F64, **extra, **options)


@pytest.mark.parametrize(
    "name,options,check_jacobian",
    CAUSAL_CONFIGS,
    ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CAUSAL_CONFIGS)],
)
def test_causal_decoding_equals_parallel_and_is_causal(x64, name, options, check_jacobian):
    mixer = _build(name, options, bidirectional=False)
    x = _inputs()
    parallel, variables = jax.jit(mixer.init_with_output)(jax.random.PRNGKey(1), x)
    step = jax.jit(lambda state, x_t: mixer.apply(variables, state, x_t, method="step"))
    state = mixer.init_state(B)
    for t in range(L):
        state, y_t = step(state, x[:, t])
        np.testing.assert_allclose(y_t, parallel[:, t], atol=1e-10, err_msg=f"step {t}")
    check_prefill(mixer, variables, x, parallel, step, prompt=6, atol=1e-10)
    if not check_jacobian:
        return
    # Causality: d y_t / d x_s = 0 for s > t (and not for s <= t).
    jac = jax.jit(jax.jacrev(lambda x: mixer.apply(variables, x)))(x[:1])  # (1, L, D, 1, L, D)
    influence = np.abs(np.asarray(jac)[0, :, :, 0]).sum(axis=(1, 3))  # (L out, L in)
    assert np.all(influence[np.triu_indices(L, 1)] == 0)
    assert np.all(np.diag(influence) > 0)


BIDIRECTIONAL_CONFIGS = [
    ("softmax", {"position": "rope", "logn_scaling": True, "train_length": 4}),
    ("blockwise", {"position": "alibi", "block_size": 4}),
    ("linear", {}),
    ("performer", {"num_features": 16, "position": "rope_bias"}),
    ("nystrom", {"num_landmarks": 3, "value_conv_kernel": 3, "position": "rope_bias"}),
]


@pytest.mark.parametrize("name,options", BIDIRECTIONAL_CONFIGS, ids=[n for n, _ in BIDIRECTIONAL_CONFIGS])
def test_padding_does_not_change_real_positions(x64, name, options):
    mixer = _build(name, options, bidirectional=True)
    real = 6
    x = _inputs()
    x_padded = x.at[:, real:].set(100.0 * _inputs(seed=1)[:, real:])  # large garbage in the padding
    mask = jnp.broadcast_to(jnp.arange(L)[None] < real, (B, L))
    variables = jax.jit(mixer.init)(jax.random.PRNGKey(2), x)
    padded, unpadded = jax.jit(
        lambda x_padded, x: (
            mixer.apply(variables, x_padded, mask=mask)[:, :real],
            mixer.apply(variables, x[:, :real]),
        )
    )(x_padded, x)
    np.testing.assert_allclose(padded, unpadded, atol=1e-10)


def test_registry_and_option_errors():
    assert {"softmax", "blockwise", "linear", "performer", "nystrom"} <= set(mixer_names())
    x = jnp.ones((1, 4, D))
    with pytest.raises(ValueError, match="no causal form"):
        make_mixer("nystrom", d_model=D, bidirectional=False).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="position='alibi' is not supported"):
        make_mixer("linear", d_model=D, position="alibi").init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        make_mixer("softmax", d_model=D, num_heads=3).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="needs position 'rope'"):
        make_mixer("softmax", d_model=D, rope_scaling="ntk", rope_scale=2.0).init(jax.random.PRNGKey(0), x)
    with pytest.raises(UnknownMixerError, match="no option"):
        make_mixer("performer", d_model=D, num_landmarks=4)
    with pytest.raises(ValueError, match="max_decode_len"):
        make_mixer("softmax", d_model=D).init_state(1)
    with pytest.raises(ValueError, match="bidirectional=True"):
        make_mixer("linear", d_model=D, bidirectional=True).init_state(1)


def test_deepnorm_constants_and_init_scale():
    alpha, beta = mixers.deepnorm_constants(6)
    assert alpha == pytest.approx(12**0.25) and beta == pytest.approx(48**-0.25)
    x = jnp.ones((1, 4, D))
    plain = jax.jit(make_mixer("softmax", d_model=D).init)(jax.random.PRNGKey(0), x)["params"]
    scaled = jax.jit(make_mixer("softmax", d_model=D, init_scale=beta).init)(jax.random.PRNGKey(0), x)[
        "params"
    ]
    for name in ("query", "key"):  # never scaled
        np.testing.assert_array_equal(scaled[name]["kernel"], plain[name]["kernel"])
    for name in ("value", "out"):
        np.testing.assert_allclose(scaled[name]["kernel"], beta * plain[name]["kernel"], rtol=1e-6)


def test_performer_projection_is_a_redrawable_constant():
    mixer = make_mixer("performer", d_model=D, num_heads=2, num_features=8, bidirectional=True)
    x = _inputs().astype(jnp.float32)
    variables = jax.jit(mixer.init)(jax.random.PRNGKey(0), x)
    assert "favor_projection" not in flax.traverse_util.flatten_dict(variables["params"], sep="/")
    projection = variables[linear_mixers.PERFORMER_COLLECTION][linear_mixers.PERFORMER_PROJECTION]
    assert projection.shape == (8, D // 2)
    with pytest.raises(ValueError, match="random projection is missing"):
        mixer.apply({"params": variables["params"]}, x)
    redraw_one = jax.jit(
        lambda key: mixer.apply(
            variables, key, method="redraw_features", mutable=[linear_mixers.PERFORMER_COLLECTION]
        )[1]
    )
    redrawn = redraw_one(jax.random.PRNGKey(5))
    new_projection = redrawn[linear_mixers.PERFORMER_COLLECTION][linear_mixers.PERFORMER_PROJECTION]
    assert not np.allclose(new_projection, projection)
    redraw_all = jax.jit(linear_mixers.redraw_performer_features)
    tree = redraw_all(variables[linear_mixers.PERFORMER_COLLECTION], jax.random.PRNGKey(5))
    again = redraw_all(variables[linear_mixers.PERFORMER_COLLECTION], jax.random.PRNGKey(5))
    np.testing.assert_array_equal(tree[linear_mixers.PERFORMER_PROJECTION], again[linear_mixers.PERFORMER_PROJECTION])
    assert not np.allclose(tree[linear_mixers.PERFORMER_PROJECTION], projection)
    y = jax.jit(mixer.apply)({**variables, **redrawn}, x)
    assert y.shape == x.shape and np.all(np.isfinite(y))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_float64_performer_draws_float64_features_and_matches_a_float64_estimator(x64, bidirectional):
    """dtype = param_dtype = float64: the projection is drawn and orthogonalised in float64 (it used to be
    drawn in float32 and cast: rows orthogonal to ~1e-7 only), and the mixer equals the FAVOR+ estimator
    written out in numpy float64 (unstabilised features, quadratic form) to float64 precision."""
    mixer = make_mixer("performer", d_model=D, num_heads=2, num_features=12, bidirectional=bidirectional, **F64)
    x = _inputs()
    y, variables = jax.jit(mixer.init_with_output)(jax.random.PRNGKey(3), x)
    w = np.asarray(variables[linear_mixers.PERFORMER_COLLECTION][linear_mixers.PERFORMER_PROJECTION])
    assert w.dtype == np.float64 and y.dtype == jnp.float64
    head = D // 2
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    for start in range(0, len(w), head):  # rows within one block are orthogonal
        block = unit[start : start + head]
        np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-13)

    params = {name: np.asarray(p["kernel"]) for name, p in variables["params"].items()}
    x_np = np.asarray(x)
    q, k, v = (
        (x_np @ params[name]).reshape(B, L, 2, head) for name in ("query", "key", "value")
    )

    def features(z):  # exp(w . z' - |z'|^2 / 2) / sqrt(F), z' = z / K^(1/4)
        z = z / head**0.25
        return np.exp(z @ w.T - 0.5 * np.sum(z * z, axis=-1, keepdims=True)) / np.sqrt(len(w))

    scores = np.einsum("bqhf,bkhf->bhqk", features(q), features(k))
    if not bidirectional:
        scores = scores * np.tril(np.ones((L, L)))
    heads = np.einsum("bhqk,bkhv->bqhv", scores, v) / np.moveaxis(scores.sum(-1), 1, 2)[..., None]
    want = heads.reshape(B, L, D) @ params["out"]
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize(
    "length,d_model,heads,features,chunk",
    [
        (200, 64, 4, 64, 64),  # the reported case
        (1024, 16, 2, 16, 100),  # long, small model; 100 does not divide 1024 either
    ],
)
def test_causal_performer_gradients_are_finite_in_float32(length, d_model, heads, features, chunk):
    """Regression: when the chunk did not divide L, the zero rows padding the last chunk had denominator
    max(0, eps = 1e-30), autodiff's d(n / d) formed d^-2 = inf in float32, and 0 * inf = NaN reached every key
    through the carried sums (the key projection's gradient was NaN)."""
    mixer = make_mixer(
        "performer",
        d_model=d_model,
        bidirectional=False,
        num_heads=heads,
        num_features=features,
        chunk_size=chunk,
    )
    x = jax.random.normal(jax.random.key(0), (4 if length == 200 else 2, length, d_model))

    @jax.jit  # init and gradient in one compile (test time)
    def loss_and_grads(key, x):
        variables = param_groups.unbox(mixer.init(key, x))
        loss_fn = lambda params: jnp.mean(mixer.apply({**variables, "params": params}, x) ** 2)  # noqa: E731
        return jax.value_and_grad(loss_fn)(variables["params"])

    loss, grads = loss_and_grads(jax.random.key(1), x)
    assert np.isfinite(loss)
    for name, grad in flax.traverse_util.flatten_dict(grads, sep="/").items():
        assert grad.dtype == jnp.float32, name
        assert np.all(np.isfinite(grad)), name
        assert np.any(grad != 0), name
