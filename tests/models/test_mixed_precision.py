"""Mixed precision (model.dtype = "bfloat16"): bfloat16 activations, float32 parameters, float32 accumulation.

Every registered mixer in bfloat16 against its float32 forward; accumulations at L = 4096 (linear recurrence,
softmax over many keys, linear-attention prefix sums) against float64 references computed from the same
bfloat16-rounded inputs, with naive bfloat16 accumulation as the contrast that fails; the encoder's dtypes;
a tiny bfloat16 training run through the trainer.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lra
import models
from experiments import trainer
from models import param_groups
from models.encoder import Classifier, SequenceEncoder
from ops import attention as attention_ops
from ops import linear_attention as linear_ops
from ops.scan import linear_recurrence
from tests.e2e.test_train import tiny_config

BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)  # 2^-7: spacing of bfloat16 numbers at 1
OUTPUT_ROUNDING = BF16_EPS / 2  # 2^-8: relative error bound of rounding a result to bfloat16 (2^-9, doubled)

D_MODEL, LENGTH = 16, 32
SMALL = {
    "lru": dict(d_state=8),
    "s4": dict(d_state=8, l_max=LENGTH),
    "s4d": dict(d_state=8),
    "s5": dict(state_size=8),
    "rtf": dict(state_size=8, trunc_len=LENGTH),
    "softmax": dict(num_heads=2),
    "blockwise": dict(num_heads=2, block_size=16),
    "linear": dict(num_heads=2, chunk_size=16),
    "performer": dict(num_heads=2, num_features=16, chunk_size=16),
    "nystrom": dict(num_heads=2, num_landmarks=8),
    "vq": dict(key_dim=8, codebook_size=16, block_len=16),
    "vq_soft": dict(key_dim=8, codebook_size=16, block_len=16),
    "mamba": dict(d_state=4, chunk_size=8),
    "mamba2": dict(d_state=4, head_dim=8, chunk_size=8),
    "rglru": dict(num_heads=2),
    "gla": dict(num_heads=2, chunk_size=8),
    "deltanet": dict(num_heads=2, chunk_size=8),
}


def _relative_error(y, reference):
    y, reference = np.asarray(y, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(y - reference) / np.linalg.norm(reference))


def test_every_registered_mixer_has_small_test_options():
    assert set(models.mixer_names()) == set(SMALL), "add the new mixer to SMALL so that it is tested below"


# The test budget: one mixer per family (and every gated mixer) by default; the variants of a family (s4 of s4d,
# blockwise of softmax, vq_soft of vq, ...) share its numerics and run in the slow suite.
FAMILY_VARIANTS = ("s4", "rtf", "blockwise", "performer", "nystrom", "vq_soft", "mamba2")
BF16_CASES = [pytest.param(n, marks=pytest.mark.slow) if n in FAMILY_VARIANTS else n for n in sorted(SMALL)]


@pytest.mark.parametrize("name", BF16_CASES)
def test_bfloat16_mixer_keeps_float32_parameters_and_is_close_to_float32(name):
    bidirectional = not models.mixer_class(name).has_causal_form
    make = lambda dtype: models.make_mixer(  # noqa: E731
        name, d_model=D_MODEL, bidirectional=bidirectional, dtype=dtype, **SMALL[name])
    mixer32, mixer16 = make(jnp.float32), make(jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, LENGTH, D_MODEL))
    mask = jnp.arange(LENGTH)[None, :] < jnp.array([[LENGTH], [LENGTH - 7]])

    @jax.jit  # one compilation for init and both forwards
    def run(key, x):
        variables = param_groups.unbox(mixer16.init(key, x.astype(jnp.bfloat16), mask=mask))
        return (variables, mixer32.apply(variables, x, mask=mask),
                mixer16.apply(variables, x.astype(jnp.bfloat16), mask=mask))

    variables, y32, y16 = run(jax.random.key(1), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert y16.dtype == jnp.bfloat16 and y32.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y16.astype(jnp.float32))))
    error = _relative_error(y16[mask], y32[mask])
    # Rounding of the input, of the projections' operands (attention / VQ) and of the output: a few bfloat16
    # roundings, never an accumulation over L. Nonzero: the bfloat16 path really ran in bfloat16.
    assert 1e-5 < error < 2 * BF16_EPS, (name, error)


def _naive_bfloat16_recurrence(a, b):
    """h_t = a h_{t-1} + b_t with a bfloat16 carry (what float32 accumulation avoids)."""

    def step(h, b_t):
        h = a * h + b_t
        return h, h

    _, h = jax.lax.scan(step, jnp.zeros((b.shape[0],) + b.shape[2:], b.dtype), jnp.moveaxis(b, 1, 0))
    return jnp.moveaxis(h, 0, 1)


def test_linear_recurrence_accumulates_bfloat16_inputs_in_float32():
    batch, length, n = 2, 4096, 8
    rng = np.random.default_rng(0)
    a = jnp.asarray(1 - np.geomspace(1e-3, 1e-2, n), jnp.bfloat16)  # |a| close to 1: memory of 100-1000 steps
    b = jnp.asarray(rng.normal(size=(batch, length, n)), jnp.bfloat16)
    h, h_last = jax.jit(linear_recurrence)(a, b)
    assert h.dtype == jnp.bfloat16 and h_last.dtype == jnp.bfloat16
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)  # the same rounded inputs, in float64
    reference, state = np.zeros((batch, length, n)), np.zeros((batch, n))
    for t in range(length):
        state = a64 * state + b64[:, t]
        reference[:, t] = state
    naive = _naive_bfloat16_recurrence(a, b)
    for window in (slice(0, 256), slice(length - 256, length)):
        # Only the final rounding of h to bfloat16 remains, at the start as after 4096 steps.
        assert _relative_error(h[:, window], reference[:, window]) < OUTPUT_ROUNDING
        # Accumulating in bfloat16 loses ~10x more: the test would catch it.
        assert _relative_error(naive[:, window], reference[:, window]) > 10 * OUTPUT_ROUNDING


def test_lru_mixer_in_bfloat16_does_not_lose_precision_over_4096_steps(x64):
    length = 4096
    make = lambda dtype: models.make_mixer(  # noqa: E731
        "lru", d_model=8, d_state=16, r_min=0.99, r_max=0.999, dtype=dtype)
    x = jax.random.normal(jax.random.key(0), (1, length, 8), jnp.float32).astype(jnp.bfloat16)
    variables = param_groups.unbox(make(jnp.bfloat16).init(jax.random.key(1), x))
    variables = jax.tree.map(lambda v: v.astype(jnp.float32), variables)  # x64 mode initialises in float64
    y16 = jax.jit(make(jnp.bfloat16).apply)(variables, x)
    variables64 = jax.tree.map(lambda v: v.astype(jnp.float64), variables)
    y64 = jax.jit(make(None).apply)(variables64, x.astype(jnp.float64))  # float64 reference, same input
    assert y16.dtype == jnp.bfloat16 and y64.dtype == jnp.float64
    first, last = (_relative_error(y16[:, w], y64[:, w]) for w in (slice(0, 256), slice(length - 256, length)))
    assert first < OUTPUT_ROUNDING and last < OUTPUT_ROUNDING, (first, last)


def _naive_bfloat16_attention_rnn(q, k, v):
    """Softmax attention as an RNN over the keys (ops.attention) with its max / sum / accumulator in bfloat16."""
    scores = jnp.einsum("bqhk,bjhk->bjhq", q, k) * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    state = attention_ops.attention_rnn_init(scores.shape[:1] + scores.shape[2:], v.shape[-1], jnp.bfloat16)

    def step(state, args):
        score, value = args
        return attention_ops.attention_rnn_absorb(state, score, value[:, :, None, :]), None

    state, _ = jax.lax.scan(step, state, (jnp.moveaxis(scores, 1, 0), jnp.moveaxis(v, 1, 0)))
    return jnp.moveaxis(attention_ops.attention_rnn_output(state), 2, 1)


def test_softmax_over_4096_keys_normalises_in_float32():
    rng = np.random.default_rng(1)
    num_queries, num_keys, heads, width = 16, 4096, 2, 16
    q = jnp.asarray(rng.normal(size=(1, num_queries, heads, width)), jnp.bfloat16)
    k = jnp.asarray(rng.normal(size=(1, num_keys, heads, width)), jnp.bfloat16)
    v = jnp.asarray(rng.normal(size=(1, num_keys, heads, width)) + 1.0, jnp.bfloat16)
    q64, k64, v64 = (np.asarray(t, np.float64) for t in (q, k, v))

    def reference(num_real):
        scores = np.einsum("bqhk,bjhk->bhqj", q64, k64[:, :num_real]) / np.sqrt(width)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        return np.einsum("bhqj,bjhv->bqhv", weights / weights.sum(-1, keepdims=True), v64[:, :num_real])

    for num_real in (128, num_keys):  # the error does not grow with the number of keys
        mask = jnp.arange(num_keys)[None, :] < num_real
        dense = attention_ops.dot_product_attention(q, k, v, mask=mask)
        blockwise = attention_ops.blockwise_attention(q, k, v, mask=mask, block_q=16, block_k=128)
        assert dense.dtype == blockwise.dtype == jnp.bfloat16
        assert _relative_error(dense, reference(num_real)) < OUTPUT_ROUNDING, num_real
        assert _relative_error(blockwise, reference(num_real)) < OUTPUT_ROUNDING, num_real
    naive = jax.jit(_naive_bfloat16_attention_rnn)(q, k, v)
    assert _relative_error(naive, reference(num_keys)) > 10 * OUTPUT_ROUNDING


def test_causal_linear_attention_prefix_sums_accumulate_in_float32():
    rng = np.random.default_rng(2)
    length, width = 4096, 8
    q, k, v = (jnp.asarray(rng.normal(size=(1, length, 1, width)), jnp.bfloat16) for _ in range(3))
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))  # noqa: E731  elu + 1
    phi_q, phi_k, v64 = phi(np.asarray(q, np.float64)), phi(np.asarray(k, np.float64)), np.asarray(v, np.float64)
    kv_sums = np.cumsum(phi_k[0, :, 0, :, None] * v64[0, :, 0, None, :], axis=0)  # (L, K, Kv)
    key_sums = np.cumsum(phi_k[0, :, 0], axis=0)
    reference = (np.einsum("lk,lkv->lv", phi_q[0, :, 0], kv_sums)
                 / np.einsum("lk,lk->l", phi_q[0, :, 0], key_sums)[:, None])
    for method in ("chunked", "prefix"):
        y = linear_ops.linear_attention(q, k, v, causal=True, method=method, chunk_size=64)[0, :, 0]
        assert y.dtype == jnp.bfloat16
        for window in (slice(0, 256), slice(length - 256, length)):
            assert _relative_error(y[window], reference[window]) < OUTPUT_ROUNDING, (method, window)


def test_bfloat16_encoder_runs_blocks_in_bfloat16_and_returns_float32_logits():
    encoder = SequenceEncoder(vocab_size=10, d_model=8, n_layers=2, mixer="s5", mixer_options={"state_size": 4},
                              norm="batch", dtype=jnp.bfloat16)
    model = Classifier(encoder=encoder, num_classes=3)
    model32 = Classifier(encoder=encoder.clone(dtype=jnp.float32), num_classes=3)
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 1, 10).at[0, 9:].set(0)

    @jax.jit
    def run(key):
        variables = model.init(key, tokens, tokens > 0)
        logits, updates = model.apply(variables, tokens, tokens > 0, train=True,
                                      mutable=["batch_stats", "intermediates"], capture_intermediates=True)
        return (variables, logits, updates, model.apply(variables, tokens, tokens > 0),
                model32.apply(variables, tokens, tokens > 0))

    variables, logits, updates, eval16, eval32 = run(jax.random.key(1))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    captured = updates["intermediates"]["encoder"]
    assert logits.dtype == jnp.float32
    for i in range(2):
        block = captured[f"block_{i}"]
        assert block["__call__"][0].dtype == jnp.bfloat16  # the residual stream between blocks
        assert block["norm"]["__call__"][0].dtype == jnp.float32  # BatchNorm itself in float32
        assert block["glu_value"]["__call__"][0].dtype == jnp.bfloat16
    assert captured["final_norm"]["__call__"][0].dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(updates["batch_stats"])} == {jnp.dtype(jnp.float32)}
    assert eval16.dtype == jnp.float32
    assert 0 < _relative_error(eval16, eval32) < 8 * BF16_EPS


def test_build_model_rejects_an_unknown_dtype(tmp_path):
    config = tiny_config(str(tmp_path / "cache"))
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match=r"--config.model.dtype='float16': expected one of"):
        trainer.build_model(config, lra.get_task("listops"))
    config.model.dtype = "bfloat16"
    model = trainer.build_model(config, lra.get_task("listops"))
    assert model.encoder.dtype == jnp.bfloat16 and isinstance(model, nn.Module)


def test_bfloat16_training_loss_is_finite_and_decreases(tmp_path):
    config = tiny_config(str(tmp_path / "cache"), **{
        "model.dtype": "bfloat16", "train.batch_size": 16, "train.num_steps": 40, "train.eval_every": 40,
        "train.checkpoint_every": 40})
    results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        losses = [json.loads(line)["loss"] for line in f if json.loads(line)["split"] == "train"]
    assert len(losses) == 40 and np.all(np.isfinite(losses)) and np.isfinite(results["test_loss"])
    start, end = np.mean(losses[:5]), np.mean(losses[-10:])
    assert end < start - 0.05, (start, end)
