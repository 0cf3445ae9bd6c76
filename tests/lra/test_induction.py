"""Induction-heads generator (lra/induction.py): the trigger occurs exactly twice (once at 0..L-3, once last),
the final label is the token after the first trigger (an independent decoder), uniform targets, determinism,
any length (train short, test long), hostile settings."""

from __future__ import annotations

import numpy as np
import pytest

from lra import induction
from lra.errors import LRADataError
from lra.tasks import DataContext


def decode(inputs: np.ndarray) -> np.ndarray:
    """Labels from the inputs alone: the token after the first trigger, at the last position (a plain loop)."""
    labels = np.full(inputs.shape, -1, np.int64)
    for row, tokens in enumerate(inputs.tolist()):
        labels[row, -1] = tokens[tokens.index(induction.TRIGGER) + 1]
    return labels


@pytest.mark.parametrize("length", [4, 16, 256])
def test_layout_and_labels(length):
    split = induction.generate_induction(2000, length, seed=length)
    inputs, labels = split.inputs, split.labels
    assert inputs.shape == labels.shape == (2000, length) and inputs.dtype == np.int32
    assert ((inputs == induction.TRIGGER).sum(axis=1) == 2).all() and (inputs[:, -1] == induction.TRIGGER).all()
    assert inputs.min() >= 0 and inputs.max() <= induction.TRIGGER
    first = np.argmax(inputs == induction.TRIGGER, axis=1)
    assert first.max() <= length - 3 and (first.min() == 0 or length > 16)
    np.testing.assert_array_equal(labels, decode(inputs))
    counts = np.bincount(labels[:, -1], minlength=induction.NUM_TOKENS)
    assert counts.min() > 0.5 * counts.mean()  # targets uniform over the 16 tokens


def test_deterministic_by_seed():
    a, b = (induction.generate_induction(20, 32, seed=1) for _ in range(2))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.inputs, induction.generate_induction(20, 32, seed=2).inputs)
    splits = induction.load_induction(32, dict(num_train=10, num_val=4, num_test=4, generator_seed=0))
    assert [s.name for s in splits.values()] == ["train", "val", "test"]


def test_hostile_settings():
    with pytest.raises(LRADataError, match="sequence length must be at least 4"):
        induction.generate_induction(2, 3, seed=0)
    found = list(induction.check_config(dict(num_train=4), DataContext("generated", 3, 8)))
    assert [key for key, _ in found] == ["data.seq_len", "train.batch_size"]
