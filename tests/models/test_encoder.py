"""SequenceEncoder, heads, the mixer registry and parameter groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import param_groups
from models.attention import deepnorm_constants
from models.encoder import Classifier, DualClassifier, SequenceEncoder, masked_pool


def test_masked_mean_pool_ignores_padding(x64):
    x = jax.random.normal(jax.random.key(0), (2, 5, 3), jnp.float64)
    mask = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    pooled = masked_pool(x, mask, "mean")
    np.testing.assert_allclose(pooled[0], x[0, :2].mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled[1], x[1].mean(0), rtol=1e-12)
    np.testing.assert_allclose(masked_pool(x, mask, "last")[0], x[0, 1], rtol=1e-12)


@pytest.mark.parametrize("norm", ["batch", "layer"])
@pytest.mark.parametrize("residual", ["prenorm", "postnorm", "deepnorm"])
def test_padding_never_changes_the_logits(norm, residual):
    encoder = SequenceEncoder(vocab_size=10, d_model=8, n_layers=2, mixer="lru", mixer_options={"d_state": 4},
                              bidirectional=True, norm=norm, residual=residual)
    model = Classifier(encoder=encoder, num_classes=3)
    tokens = jax.random.randint(jax.random.key(1), (3, 12), 1, 10)
    tokens = tokens.at[0, 7:].set(0)
    variables = model.init(jax.random.key(2), tokens, tokens > 0)
    logits = model.apply(variables, tokens, tokens > 0)
    # Different content in the padding and a longer pad: same logits (also for BatchNorm in training mode,
    # whose statistics are taken over real tokens only).
    other = tokens.at[0, 7:].set(5)
    np.testing.assert_allclose(model.apply(variables, other, tokens > 0), logits, rtol=1e-5, atol=1e-6)
    padded = jnp.concatenate([tokens, jnp.zeros((3, 4), tokens.dtype)], axis=1)
    np.testing.assert_allclose(model.apply(variables, padded, padded > 0), logits, rtol=1e-5, atol=1e-6)
    train_a, _ = model.apply(variables, tokens, tokens > 0, train=True, mutable=["batch_stats"])
    train_b, _ = model.apply(variables, other, tokens > 0, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(train_a, train_b, rtol=1e-5, atol=1e-6)


def test_deepnorm_scales_residual_and_initialisation():
    alpha, beta = deepnorm_constants(6)
    assert alpha == pytest.approx(12**0.25) and beta == pytest.approx(48**-0.25)
    kwargs = dict(vocab_size=10, d_model=32, n_layers=6, mixer="softmax", mixer_options={"num_heads": 2},
                  norm="layer")
    tokens = jnp.ones((2, 8), jnp.int32)
    deep = SequenceEncoder(residual="deepnorm", **kwargs).init(jax.random.key(0), tokens, tokens > 0)["params"]
    post = SequenceEncoder(residual="postnorm", **kwargs).init(jax.random.key(0), tokens, tokens > 0)["params"]
    block_deep, block_post = deep["block_0"], post["block_0"]
    mixer = next(k for k in block_deep if k.startswith("SoftmaxAttention"))
    ratio = lambda a, b: float(jnp.std(a) / jnp.std(b))  # noqa: E731
    # beta on the value/output projections and the GLU, never on query and key.
    assert ratio(block_deep[mixer]["value"]["kernel"], block_post[mixer]["value"]["kernel"]) == pytest.approx(
        beta, rel=0.01)
    assert ratio(block_deep[mixer]["query"]["kernel"], block_post[mixer]["query"]["kernel"]) == pytest.approx(1.0)
    glu_ratio = ratio(block_deep["glu_value"]["kernel"], block_post["glu_value"]["kernel"])
    assert glu_ratio < 0.6  # Xavier gain beta (~0.38) vs LeCun: smaller by construction


def test_dual_classifier_shares_one_encoder_and_sees_both_documents():
    encoder = SequenceEncoder(vocab_size=10, d_model=8, n_layers=1, mixer="lru", mixer_options={"d_state": 4},
                              norm="layer")
    model = DualClassifier(encoder=encoder, num_classes=2)
    docs = jax.random.randint(jax.random.key(0), (2, 2, 9), 1, 10)
    variables = model.init(jax.random.key(1), docs, docs > 0)
    assert set(variables["params"]) == {"encoder", "mlp", "head"}  # one encoder, not two
    logits = model.apply(variables, docs, docs > 0)
    assert logits.shape == (2, 2)
    changed = docs.at[:, 1, 0].set(docs[:, 1, 0] % 9 + 1)
    assert not np.allclose(model.apply(variables, changed, changed > 0), logits)


def test_registry_names_unknown_mixers_and_options():
    assert {"lru", "s4", "s4d", "s5", "rtf", "softmax", "blockwise", "linear", "performer", "nystrom"} <= set(
        models.mixer_names())
    with pytest.raises(models.UnknownMixerError, match="unknown mixer 'lruu'.*; registered mixers are: .*lru"):
        models.make_mixer("lruu", d_model=4)
    with pytest.raises(models.UnknownMixerError, match="mixer 'lru' has no option\\(s\\) 'd_stat'.*d_state"):
        models.make_mixer("lru", d_model=4, d_stat=3)
    with pytest.raises(models.UnknownMixerError, match="unknown mixer 'nonesuch'; registered mixers are: .*lru"):
        models.mixer_class("nonesuch")  # nothing close: no suggestion


def test_registry_errors_suggest_the_closest_name_on_one_line():
    with pytest.raises(models.UnknownMixerError) as info:
        models.make_mixer("lruu", d_model=4)
    assert str(info.value).startswith('unknown mixer \'lruu\' (did you mean "lru"?); registered mixers are: ')
    with pytest.raises(models.UnknownMixerError) as info:
        models.mixer_options("Softmax")
    assert 'unknown mixer \'Softmax\' (did you mean "softmax"?)' in str(info.value)
    with pytest.raises(models.UnknownMixerError) as info:
        models.make_mixer("lru", d_model=4, d_stat=3, r_mn=0.1, nonesuch=1)
    message = str(info.value)
    assert message.startswith("mixer 'lru' has no option(s) 'd_stat' (did you mean \"d_state\"?), 'nonesuch', "
                              "'r_mn' (did you mean \"r_min\"?); its options are: "), message
    assert "\n" not in message


def test_group_labels_read_the_boxes_and_default_by_rank():
    encoder = SequenceEncoder(vocab_size=10, d_model=8, n_layers=1, mixer="lru", mixer_options={"d_state": 4})
    params = encoder.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), bool))["params"]
    labels = param_groups.group_labels(params)
    lru = labels["block_0"]["LRUMixer_0"]
    assert lru["nu_log"] == param_groups.SSM and lru["C_re"] == param_groups.DEFAULT
    assert labels["embedding"]["embedding"] == param_groups.DEFAULT
    assert labels["block_0"]["glu_value"]["bias"] == param_groups.NO_DECAY
    unboxed = param_groups.unbox(params)
    assert jax.tree.structure(unboxed) == jax.tree.structure(labels)


def test_the_encoder_boundary_refuses_wrong_shapes_and_mask_types():
    encoder = SequenceEncoder(vocab_size=10, d_model=8, n_layers=1, mixer="lru", mixer_options={"d_state": 4})
    tokens = jnp.ones((2, 6), jnp.int32)
    encoder.init(jax.random.key(0), tokens, tokens > 0)  # the good case
    with pytest.raises(AssertionError, match="rank"):
        encoder.init(jax.random.key(0), tokens[0], tokens[0] > 0)  # no batch axis
    with pytest.raises(AssertionError):
        encoder.init(jax.random.key(0), tokens, jnp.ones((2, 6), jnp.float32))  # a float mask
    with pytest.raises(AssertionError):
        encoder.init(jax.random.key(0), tokens, jnp.ones((2, 5), bool))  # a mask of another length
