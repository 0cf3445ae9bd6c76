"""NBCE generation (models/nbce.py; docs/methods.md section 15) on tiny causal models.

One chunk with beta = 0 is ordinary generation from chunk + question; every token equals a reference written here
that re-runs the parallel model on each row (chunk + question + the answer so far, and the question alone with
the answer so far) and combines the rows' last logits with ops/nbce.combine (tested on its own in
tests/ops/test_nbce.py). An LRU (a recurrence) and softmax attention (a key-value cache, whose rows here have
two lengths) are the two kinds of state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import generation, param_groups, registry
from models.encoder import PerPositionClassifier, SequenceEncoder
from models.nbce import NBCE, chunk_starts, nbce_generate, split_context
from ops import nbce as nbce_ops

pytestmark = pytest.mark.usefixtures("fast_compilation")  # tiny shapes: XLA's optimisation passes cost more

VOCAB, D_MODEL, LENGTH = 11, 8, 12
OPTIONS = {"lru": dict(d_state=4), "softmax": dict(num_heads=2)}
CHUNK, QUESTION, NEW = 5, 3, 4  # rows of 5 + 3 tokens, then 4 new ones: 11 steps <= LENGTH


@functools.cache
def model_and_variables(mixer: str) -> tuple[PerPositionClassifier, dict]:
    resolved = registry.resolve_mixer(mixer, OPTIONS[mixer], length=LENGTH)
    encoder = SequenceEncoder(vocab_size=VOCAB, d_model=D_MODEL, n_layers=1, mixer=mixer,
                              mixer_options=resolved.as_dict(), bidirectional=False, norm="layer")
    model = PerPositionClassifier(encoder=encoder, num_classes=VOCAB)
    x = jnp.zeros((1, LENGTH), jnp.int32)
    boxed = jax.jit(lambda key: model.init(key, x, jnp.ones(x.shape, bool)))(jax.random.key(3))
    return model, param_groups.unbox(boxed)


def _data(batch: int, n: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (jax.random.randint(k1, (batch, n, CHUNK), 0, VOCAB),
            jax.random.randint(k2, (batch, QUESTION), 0, VOCAB))


def _reference(model, variables, chunks, question, settings: NBCE) -> tuple[np.ndarray, np.ndarray]:
    """Greedy NBCE by re-running the parallel model on every row after each token (rows padded at the end to one
    length, so one compilation: a causal model's logit at a position ignores what follows)."""
    forward = jax.jit(lambda x: model.apply(variables, x, jnp.ones(x.shape, bool)))
    combine = jax.jit(jax.vmap(functools.partial(nbce_ops.combine, beta=settings.beta, pooling=settings.pooling,
                                                 top_k=settings.top_k, top_p=settings.top_p, eta=settings.eta)))
    chunks, question = np.asarray(chunks), np.asarray(question)
    batch, n, _ = chunks.shape
    rows = np.zeros((batch, n, CHUNK + QUESTION + NEW), np.int32)
    rows[:, :, :CHUNK], rows[:, :, CHUNK:CHUNK + QUESTION] = chunks, question[:, None]
    alone = np.zeros((batch, QUESTION + NEW), np.int32)
    alone[:, :QUESTION] = question
    tokens, selected, previous = [], [], np.full(batch, -1)
    for t in range(NEW):
        context_logits = forward(rows.reshape(batch * n, -1))[:, CHUNK + QUESTION + t - 1].reshape(batch, n, -1)
        prior_logits = forward(alone)[:, QUESTION + t - 1]
        log_probs, previous = combine(context_logits, prior_logits, previous=jnp.asarray(previous))
        token = np.asarray(jnp.argmax(log_probs, axis=-1))
        rows[:, :, CHUNK + QUESTION + t], alone[:, QUESTION + t] = token[:, None], token
        tokens.append(token)
        selected.append(np.asarray(previous))
    return np.stack(tokens, 1), np.stack(selected, 1)


# The test budget: a key-value cache (softmax, rows of two lengths) in the default run; a recurrence (LRU), sampling
# and mean pooling (tested at the op level by tests/ops/test_nbce.py) in the slow suite.
@pytest.mark.parametrize("mixer, greedy", [pytest.param("lru", False, marks=pytest.mark.slow), ("softmax", True)])
def test_one_chunk_beta_zero_is_ordinary_generation(mixer, greedy):
    model, variables = model_and_variables(mixer)
    chunks, question = _data(2, 1)
    prompt = jnp.concatenate([chunks[:, 0], question], axis=1)
    settings = NBCE(beta=0.0, pooling="mean", greedy=greedy, temperature=0.7)
    tokens, selected = nbce_generate(model, variables, chunks, question, NEW, settings, seed=4)
    expected = generation.generate(model, variables, prompt, NEW, greedy=greedy, temperature=0.7, seed=4)
    np.testing.assert_array_equal(tokens, expected[:, prompt.shape[1]:])
    assert np.all(np.asarray(selected) == -1)


@pytest.mark.parametrize("mixer, settings", [
    pytest.param("lru", NBCE(beta=0.5, pooling="min_entropy", eta=0.05), marks=pytest.mark.slow),
    pytest.param("softmax", NBCE(beta=2.0, pooling="mean", top_k=6), marks=pytest.mark.slow),
    ("softmax", NBCE(beta=0.25, pooling="min_entropy", top_p=0.8, eta=10.0))],  # eta: never switches
    ids=["lru-min_entropy", "softmax-mean", "softmax-min_entropy"])
def test_combined_steps_equal_the_op_on_the_rows_logits(mixer, settings):
    model, variables = model_and_variables(mixer)
    chunks, question = _data(2, 3, seed=1)
    tokens, selected = nbce_generate(model, variables, chunks, question, NEW, settings)
    expected_tokens, expected_selected = _reference(model, variables, chunks, question, settings)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_array_equal(selected, expected_selected)
    if settings.pooling == "min_entropy":
        assert np.all((np.asarray(selected) >= 0) & (np.asarray(selected) < 3))
    if settings.eta > 5:  # a penalty above every entropy gap: each example keeps its first choice
        np.testing.assert_array_equal(selected, np.repeat(np.asarray(selected)[:, :1], NEW, axis=1))


def test_chunk_starts():
    np.testing.assert_array_equal(chunk_starts(10, 16), [0])  # fits: one chunk
    np.testing.assert_array_equal(chunk_starts(12, 4), [0, 4, 8])  # exact
    np.testing.assert_array_equal(chunk_starts(13, 4), [0, 3, 6, 9])  # 4 chunks, spread to end at 13
    np.testing.assert_array_equal(chunk_starts(12, 4, overlap=2), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(split_context(np.arange(7), 3), [[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    np.testing.assert_array_equal(split_context(np.arange(2), 3), [[0, 1]])
    for length, size, overlap in ((100, 7, 0), (100, 7, 3), (37, 36, 35)):
        starts = chunk_starts(length, size, overlap)
        assert starts[0] == 0 and starts[-1] + size == length
        assert np.all(np.diff(starts) <= size - overlap)  # every token covered, neighbours share >= overlap


def test_bad_settings_and_arrays():
    model, variables = model_and_variables("softmax")
    chunks, question = _data(1, 2)
    for settings, match in ((NBCE(pooling="max"), "nbce_pooling"), (NBCE(beta=-2.0), "nbce_beta"),
                            (NBCE(eta=-1.0), "nbce_eta"), (NBCE(top_p=0.0), "top_p")):
        with pytest.raises(ValueError, match=match):
            nbce_generate(model, variables, chunks, question, NEW, settings)
    with pytest.raises(ValueError, match="max_decode_len"):  # 5 + 3 + 5 - 1 = 12 steps fit; 6 new tokens do not
        nbce_generate(model, variables, chunks, question, LENGTH - CHUNK - QUESTION + 2)
    with pytest.raises(ValueError, match=r"\(B, n, C\)"):
        nbce_generate(model, variables, chunks[0], question, NEW)
    with pytest.raises(ValueError, match="nbce_chunk_length"):
        chunk_starts(10, 0)
    with pytest.raises(ValueError, match="nbce_overlap"):
        chunk_starts(10, 4, overlap=4)
