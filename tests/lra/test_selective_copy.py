"""Selective copying generator (lra/selective_copy.py): noise, data tokens and markers where they belong, targets
read back by an independent decoder, the classic (fixed-position) variant, determinism, hostile settings."""

from __future__ import annotations

import numpy as np
import pytest

from lra import selective_copy as sc
from lra.errors import LRADataError
from lra.tasks import DataContext


def decode(inputs: np.ndarray, num_tokens: int) -> np.ndarray:
    """Labels from the inputs alone, by a plain loop: the non-noise tokens before the markers, in order, at the
    marker positions."""
    labels = np.full(inputs.shape, -1, np.int64)
    for row, tokens in enumerate(inputs.tolist()):
        data = [t for t in tokens[:len(tokens) - num_tokens] if t != sc.NOISE]
        for j, t in enumerate(range(len(tokens) - num_tokens, len(tokens))):
            labels[row, t] = data[j]
    return labels


def test_layout_and_labels():
    m, length = 5, 40
    split = sc.generate_selective_copy(500, length, m, seed=2)
    inputs, labels = split.inputs, split.labels
    assert inputs.shape == labels.shape == (500, length) and inputs.dtype == np.int32
    region = inputs[:, :length - m]
    assert ((region == sc.NOISE) | ((region >= 1) & (region <= 14))).all()
    assert ((region != sc.NOISE).sum(axis=1) == m).all()  # M distinct positions
    assert (inputs[:, length - m:] == sc.MARKER).all()
    np.testing.assert_array_equal(labels, decode(inputs, m))
    assert set(np.unique(labels[:, length - m:])) == set(range(1, 15))
    positions = np.nonzero(region)[1]
    assert abs(positions.mean() - (length - m - 1) / 2) < 0.5  # uniform over the noise region


def test_classic_copying_puts_the_tokens_first():
    split = sc.generate_selective_copy(20, 24, 4, seed=0, variable=False)
    assert (split.inputs[:, :4] != sc.NOISE).all() and (split.inputs[:, 4:20] == sc.NOISE).all()
    np.testing.assert_array_equal(split.labels[:, 20:], split.inputs[:, :4])


def test_deterministic_by_seed():
    a, b = (sc.generate_selective_copy(30, 32, 4, seed=5) for _ in range(2))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.inputs, sc.generate_selective_copy(30, 32, 4, seed=6).inputs)
    options = dict(num_tokens=4, variable=True, num_train=10, num_val=3, num_test=3, generator_seed=1)
    splits = sc.load_selective_copy(32, options)
    assert [s.name for s in splits.values()] == ["train", "val", "test"]
    assert not np.array_equal(splits["val"].inputs, splits["test"].inputs)


def test_hostile_settings():
    with pytest.raises(LRADataError, match="num_tokens 9 data tokens and as many markers need a sequence of at least"
                                           " 18 tokens, got 16"):
        sc.generate_selective_copy(2, 16, 9, seed=0)
    with pytest.raises(LRADataError, match="num_tokens must be at least 1"):
        sc.generate_selective_copy(2, 16, 0, seed=0)
    found = list(sc.check_config(dict(num_tokens=9, num_train=4), DataContext("generated", 16, 8)))
    assert [key for key, _ in found] == ["data.selective_copy.num_tokens", "train.batch_size"]
    assert [key for key, _ in sc.check_config(None, DataContext("generated", 16, 8))] == ["data.selective_copy"]
