"""The "vq" and "vq_soft" mixers: registry, parameter groups, causality, decoding, padding, sown losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models import param_groups
from models.registry import UnknownMixerError, make_mixer
from models.vq import SoftVQAttentionMixer, VQAttentionMixer
from ops import vq as vq_ops
from tests.models.prefill_checks import check_prefill

D_MODEL, LENGTH = 6, 7
SMALL = dict(d_model=D_MODEL, key_dim=3, value_dim=2, codebook_size=3, block_len=2)


def _x(seed, batch=2, length=LENGTH, dtype=jnp.float64):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, length, D_MODEL)), dtype)


def _init(mixer, x, mask=None, seed=0):
    """Unboxed params, with a non-zero positional bias so the tests see it."""
    # Parameter shapes do not depend on the length: initialise on two tokens (a smaller graph to compile).
    variables = jax.jit(lambda key: mixer.init(key, x[:, :2]))(jax.random.key(seed))
    params = param_groups.unbox(variables["params"])
    params["bias"] = jnp.asarray(np.random.default_rng(seed + 1).normal(size=params["bias"].shape), x.dtype)
    return params


def _mixer(name="vq", **options):
    dtypes = dict(dtype=jnp.float64, param_dtype=jnp.float64)
    return make_mixer(name, **SMALL, **dtypes, **options)


def test_registry_builds_both_mixers():
    assert isinstance(make_mixer("vq", d_model=8), VQAttentionMixer)
    assert isinstance(make_mixer("vq_soft", d_model=8, bidirectional=True), SoftVQAttentionMixer)
    with pytest.raises(UnknownMixerError, match="temperature"):
        make_mixer("vq", d_model=8, temperature=1.0)


def test_bad_options_raise():
    x = jnp.zeros((1, 4, 8))
    with pytest.raises(ValueError, match="quantizer"):
        jax.eval_shape(make_mixer("vq", d_model=8, quantizer="kmeans").init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="temperature"):
        jax.eval_shape(make_mixer("vq_soft", d_model=8, temperature=0.0).init, jax.random.key(0), x)
    mixer = make_mixer("vq", d_model=8, bidirectional=True, block_len=4, codebook_size=4)
    params = jax.eval_shape(mixer.init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="causal"):
        mixer.apply(params, 1, method=mixer.init_state)


def test_parameter_groups():
    x = jnp.zeros((1, 4, 8))

    def labels(name, **options):  # shapes only: eval_shape keeps the group boxes without running anything
        variables = jax.eval_shape(make_mixer(name, d_model=8, **options).init, jax.random.key(0), x)
        return param_groups.group_labels(variables["params"])

    vq_labels = labels("vq")
    assert vq_labels["c_sum"] == param_groups.CODEBOOK and vq_labels["c_count"] == param_groups.CODEBOOK
    assert vq_labels["query"]["kernel"] == param_groups.DEFAULT
    assert vq_labels["bias"] == param_groups.NO_DECAY
    simvq_labels = labels("vq", quantizer="simvq")
    assert simvq_labels["frozen_codes"] == param_groups.CODEBOOK
    assert simvq_labels["code_projection"] == param_groups.NO_DECAY
    assert labels("vq_soft")["codes"] == param_groups.NO_DECAY
    assert labels("vq_soft", learn_codebook=False)["codes"] == param_groups.CODEBOOK


@pytest.mark.parametrize("name,options", [("vq", {"quantizer": "rotation"}), ("vq_soft", {})])
def test_causal_jacobian_is_lower_triangular(x64, name, options):
    mixer = _mixer(name, **options)
    x = _x(0, batch=1)
    params = _init(mixer, x)
    jac = jax.jit(jax.jacrev(lambda a: mixer.apply({"params": params}, a)))(x)[0, :, :, 0]  # (L, D, L, D)
    blocks = np.abs(np.asarray(jac)).sum(axis=(1, 3))                                        # (t, s)
    t, s = np.meshgrid(np.arange(LENGTH), np.arange(LENGTH), indexing="ij")
    assert np.all(blocks[s > t] == 0.0)
    # The current and previous blocks matter; older blocks reach y_t only through the stop-gradiented cache.
    local = (s <= t) & (s // 2 >= t // 2 - 1)
    assert np.all(blocks[local] > 0.0)
    assert np.all(blocks[(s <= t) & ~local] == 0.0)


@pytest.mark.parametrize("name,options", [("vq", {"formulation": "serial"}), ("vq_soft", {}),
                                          pytest.param("vq", {"quantizer": "simvq"}, marks=pytest.mark.slow)])
def test_step_equals_the_sequence_call(x64, name, options):
    mixer = _mixer(name, **options)
    x = _x(1)
    params = {"params": _init(mixer, x)}
    expected = jax.jit(mixer.apply)(params, x)
    state = mixer.apply(params, 2, method=mixer.init_state)
    step = jax.jit(lambda s, x_t: mixer.apply(params, s, x_t, method=mixer.step))
    outputs = []
    for t in range(LENGTH):
        state, y_t = step(state, x[:, t])
        outputs.append(y_t)
    np.testing.assert_allclose(np.stack(outputs, axis=1), expected, atol=1e-12)
    # Prefill of 5 tokens (blocks of 2): block 0 in the per-code cache, blocks 1 and 2 in the buffer.
    check_prefill(mixer, params, x, expected, step, prompt=5, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", ["vq", "vq_soft"])
def test_padding_does_not_change_real_outputs(x64, name, bidirectional):
    mixer = _mixer(name, bidirectional=bidirectional)
    x = _x(3)
    mask = jnp.asarray(np.arange(LENGTH)[None] < np.array([[LENGTH], [4]]))
    params = {"params": _init(mixer, x, mask)}
    apply = jax.jit(lambda a: mixer.apply(params, a, mask=mask))
    y = apply(x)
    y_noisy = apply(jnp.where(mask[..., None], x, 50.0 * _x(4)))
    real = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(y_noisy)[real], np.asarray(y)[real], atol=1e-12)
    if bidirectional:  # the encoder form does look ahead: the last token changes the first output
        y_future = apply(x.at[0, -1].add(1.0))
        assert np.abs(np.asarray(y_future - y)[0, 0]).max() > 1e-6


def _keys_and_codes(mixer, params, x):
    @jax.jit
    def keys_and_codes(params, x):
        _, k, _, _ = mixer.apply(params, x, method=lambda m, a: m._project(a))
        codebook = mixer.apply(params, method=lambda m: m.codebook())
        return k, vq_ops.nearest_code(k, codebook)[0], codebook

    return tuple(np.asarray(a) for a in keys_and_codes(params, x))


def test_sown_losses_and_metrics_and_the_ema_step(x64):
    decay = 0.9
    mixer = _mixer(ema_decay=decay, commitment_weight=0.5, num_heads=2)
    x = _x(5)
    mask = jnp.asarray(np.arange(LENGTH)[None] < np.array([[LENGTH], [5]]))
    params = _init(mixer, x, mask)

    apply = jax.jit(lambda p: mixer.apply({"params": p}, x, mask=mask, mutable=["losses", "metrics"]))
    y, sown = apply(params)
    assert set(sown["losses"]) == {"vq_commit", "vq_codebook"}
    assert set(sown["metrics"]) == {"code_usage", "code_entropy", "dead_code_fraction", "quantization_error"}
    assert all(len(v) == 1 and jnp.shape(v[0]) == () for c in sown.values() for v in c.values())
    assert float(sown["losses"]["vq_codebook"][0]) == 0.0   # the EMA surrogate's value

    k, codes, codebook = _keys_and_codes(mixer, {"params": params}, x)
    real = np.asarray(mask)
    nearest = codebook[np.arange(2), codes]
    commit = np.sum((k - nearest) ** 2, axis=-1).sum(-1)[real].mean()
    np.testing.assert_allclose(sown["losses"]["vq_commit"][0], 0.5 * commit, rtol=1e-10)
    usage = np.stack([np.bincount(codes[..., h][real], minlength=3) for h in range(2)]) / real.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(usage > 0, usage * np.log(usage), 0.0), axis=-1)
    np.testing.assert_allclose(sown["metrics"]["code_entropy"][0], entropy.mean(), rtol=1e-6)
    np.testing.assert_allclose(sown["metrics"]["code_usage"][0], np.exp(entropy).mean() / 3, rtol=1e-6)
    np.testing.assert_allclose(sown["metrics"]["dead_code_fraction"][0], (usage == 0).mean(), rtol=1e-6)
    rel = (np.linalg.norm(k - nearest, axis=-1) / np.linalg.norm(k, axis=-1))[real].mean()
    np.testing.assert_allclose(sown["metrics"]["quantization_error"][0], rel, rtol=1e-6)

    # The task loss never reaches the codebook; the sown losses summed, then SGD(1) on the codebook group,
    # is exactly the EMA update.
    def total(p):
        out, aux = mixer.apply({"params": p}, x, mask=mask, mutable=["losses"])
        task = jnp.sum(jnp.sin(out))
        return task + sum(jnp.sum(v) for v in jax.tree.leaves(aux["losses"])), task

    both_grads = jax.jit(lambda p: (jax.grad(lambda q: total(q)[0])(p), jax.grad(lambda q: total(q)[1])(p)))
    grads, task_grads = both_grads(params)
    np.testing.assert_allclose(task_grads["c_sum"], 0.0)
    np.testing.assert_allclose(task_grads["c_count"], 0.0)
    optimizer = optax.sgd(1.0)
    codebook_params = {"c_sum": params["c_sum"], "c_count": params["c_count"]}
    codebook_grads = {"c_sum": grads["c_sum"], "c_count": grads["c_count"]}
    updates, _ = optimizer.update(codebook_grads, optimizer.init(codebook_params))
    new = optax.apply_updates(codebook_params, updates)
    batch_sum = np.zeros((2, 3, 3))
    batch_count = np.zeros((2, 3))
    for b, t in zip(*np.nonzero(real)):
        for h in range(2):
            batch_sum[h, codes[b, t, h]] += k[b, t, h]
            batch_count[h, codes[b, t, h]] += 1
    np.testing.assert_allclose(new["c_sum"], decay * np.asarray(params["c_sum"]) + (1 - decay) * batch_sum,
                               atol=1e-12)
    expected_count = decay * np.asarray(params["c_count"]) + (1 - decay) * batch_count
    np.testing.assert_allclose(new["c_count"], expected_count, atol=1e-12)


def test_nothing_is_sown_unless_mutable(x64):
    mixer = _mixer()
    x = _x(6)
    params = {"params": _init(mixer, x)}
    y = jax.jit(mixer.apply)(params, x)
    assert isinstance(y, jax.Array) and y.shape == x.shape


def test_simvq_trains_the_projection_not_the_frozen_codes(x64):
    mixer = _mixer(quantizer="simvq")
    x = _x(7)
    params = _init(mixer, x)

    def aux_loss(p):
        _, aux = mixer.apply({"params": p}, x, mutable=["losses"])
        return sum(jnp.sum(v) for v in jax.tree.leaves(aux["losses"]))

    grads = jax.jit(jax.grad(aux_loss))(params)
    np.testing.assert_allclose(grads["frozen_codes"], 0.0)
    assert np.abs(np.asarray(grads["code_projection"])).max() > 0
    # The SimVQ codebook loss is the masked mean ||sg(k) - c_z||^2, weighted.
    _, sown = jax.jit(lambda p: mixer.apply({"params": p}, x, mutable=["losses"]))(params)
    k, codes, codebook = _keys_and_codes(mixer, {"params": params}, x)
    expected = np.sum((k - codebook[np.arange(1), codes]) ** 2, axis=-1).sum(-1).mean()
    np.testing.assert_allclose(sown["losses"]["vq_codebook"][0], expected, rtol=1e-10)


def test_float32_jit_forward_and_gradient_are_finite():
    mixer = make_mixer("vq", d_model=16, num_heads=2, key_dim=8, codebook_size=8, block_len=4)
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 13, 16)), jnp.float32)
    mask = jnp.asarray(np.arange(13)[None] < np.array([[13], [9]]))
    variables = jax.jit(lambda key: mixer.init(key, x, mask=mask))(jax.random.key(0))
    params = param_groups.unbox(variables["params"])

    def loss(p):
        y, aux = mixer.apply({"params": p}, x, mask=mask, mutable=["losses"])
        return jnp.mean(y**2) + sum(jnp.sum(v) for v in jax.tree.leaves(aux["losses"]))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
