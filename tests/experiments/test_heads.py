"""The trainer's heads by task contract: a per-position task gets (B, L, C) logits, its loss and accuracy count
only the positions with a target (label >= 0), and a causal per-position model is causal end to end."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lra
from experiments import trainer
from experiments.configs.base import base_config

pytestmark = pytest.mark.usefixtures("fast_compilation")

SPEC = lra.TaskSpec(name="per_position_test", seq_len=12, vocab_size=7, num_classes=5,
                    head=lra.HeadKind.PER_POSITION, causal=True)


def _model_and_state():
    config = base_config()
    config.model.update(mixer="lru", d_model=8, n_layers=1, norm="layer")
    config.model.lru.d_state = 4
    model = trainer.build_model(config, SPEC)
    state, _, _ = trainer.create_state(model, config, SPEC)
    prepare = functools.partial(trainer.model_inputs, spec=SPEC, input_encoding="embed")
    return model, state, prepare


def _batch(rng):
    inputs = rng.integers(1, 7, (3, 12)).astype(np.int32)
    labels = rng.integers(0, 5, (3, 12)).astype(np.int32)
    labels[:, 0] = -1
    labels[1, 5:] = -1
    return inputs, labels


def test_per_position_logits_and_scores_count_only_positions_with_a_target():
    model, state, prepare = _model_and_state()
    inputs, labels = _batch(np.random.default_rng(0))
    weights = np.array([1.0, 1.0, 0.0], np.float32)  # the last row is evaluation padding
    logits = np.asarray(model.apply({"params": state["params"], **state["collections"]}, *prepare(inputs)))
    assert logits.shape == (3, 12, 5)

    out = jax.jit(trainer.make_eval_step(model, prepare))(state, {"inputs": inputs, "labels": labels,
                                                                   "weights": weights})
    valid = (labels >= 0) & (weights[:, None] > 0)
    assert float(out["count"]) == valid.sum() == 11 + 4
    predicted = logits.argmax(-1)
    assert float(out["correct"]) == ((predicted == labels) & valid).sum()
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, np.maximum(labels, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(out["loss"]), (nll * valid).sum(), rtol=1e-5)

    # The training objective: the mean over the targets of the batch (every row counts in training).
    train_valid = labels >= 0
    np.testing.assert_allclose(float(trainer._mean_loss(jnp.asarray(logits), jnp.asarray(labels))),
                               (nll * train_valid).sum() / train_valid.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(trainer._accuracy(jnp.asarray(logits), jnp.asarray(labels))),
                               ((predicted == labels) & train_valid).sum() / train_valid.sum(), rtol=1e-6)


def test_a_causal_per_position_model_does_not_see_the_future():
    model, state, prepare = _model_and_state()
    inputs, _ = _batch(np.random.default_rng(1))
    changed = inputs.copy()
    changed[:, 7:] = (changed[:, 7:] % 6) + 1  # other tokens from position 7 on
    variables = {"params": state["params"], **state["collections"]}
    before = np.asarray(model.apply(variables, *prepare(inputs)))
    after = np.asarray(model.apply(variables, *prepare(changed)))
    np.testing.assert_array_equal(before[:, :7], after[:, :7])
    assert not np.allclose(before[:, 7:], after[:, 7:])


def test_majority_rate_ignores_positions_without_a_target():
    train = np.array([[-1, 2, 2, 3], [-1, 2, 1, 1]])
    evaluation = np.array([[-1, 2, 0, -1]])
    assert lra.majority_rate(train, evaluation) == 0.5  # the mode 2 is right on one of the two targets
