"""MQAR generator (lra/mqar.py): layout, ranges, distinctness, each key queried once, the query-slot distribution
(against the exact probabilities of drawing without replacement), label correctness by an independent decoder,
determinism, and hostile settings (one-line errors naming the setting or config key)."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from lra import mqar
from lra.errors import LRADataError
from lra.tasks import DataContext


def decode(inputs: np.ndarray, num_pairs: int) -> np.ndarray:
    """Labels read back from the inputs alone, by a plain loop: the context's pairs, then each later non-zero token
    is a query whose label is its value (every other label -1)."""
    labels = np.full(inputs.shape, -1, np.int64)
    for row, tokens in enumerate(inputs.tolist()):
        pairs = {tokens[2 * i]: tokens[2 * i + 1] for i in range(num_pairs)}
        for t in range(2 * num_pairs, len(tokens)):
            if tokens[t] != 0:
                labels[row, t] = pairs[tokens[t]]
    return labels


def test_layout_ranges_and_labels():
    n, length, vocab = 6, 64, 128
    split = mqar.generate_mqar(400, length, vocab, n, seed=3)
    inputs, labels = split.inputs, split.labels
    assert inputs.shape == labels.shape == (400, length) and inputs.dtype == labels.dtype == np.int32
    keys, values = inputs[:, 0:2 * n:2], inputs[:, 1:2 * n:2]
    assert keys.min() >= 1 and keys.max() < vocab // 2
    assert values.min() >= vocab // 2 and values.max() < vocab
    for row in range(len(inputs)):
        assert len(set(keys[row])) == n and len(set(values[row])) == n
        queries = inputs[row, 2 * n:]
        asked = queries[queries != 0]
        assert sorted(asked) == sorted(keys[row])  # each key queried exactly once, nothing else but filler
        offsets = np.flatnonzero(queries)
        assert (offsets % 2 == 0).all() and offsets.max() <= length - 2 * n - 2
    np.testing.assert_array_equal(labels, decode(inputs, n))
    assert (labels >= 0).sum() == 400 * n


def test_key_and_value_use_is_uniform():
    split = mqar.generate_mqar(3000, 32, 64, 4, seed=0)
    keys = split.inputs[:, 0:8:2].ravel()
    counts = np.bincount(keys, minlength=32)[1:32]
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


def exact_second_slot(p: np.ndarray) -> np.ndarray:
    """P(second slot drawn = j) when drawing without replacement with weights p (a plain double loop)."""
    out = np.zeros(len(p))
    for i in range(len(p)):
        for j in range(len(p)):
            if i != j:
                out[j] += p[i] * p[j] / (1.0 - p[i])
    return out


def test_query_slots_follow_the_power_law_without_replacement():
    n, length, count = 3, 32, 20_000
    split = mqar.generate_mqar(count, length, 64, n, seed=1)
    slots = (length - 2 * n) // 2
    p = mqar.query_slot_weights(slots)
    np.testing.assert_allclose(p, (np.arange(slots) + 1.0) ** (mqar.POWER_A - 1) /
                               ((np.arange(slots) + 1.0) ** (mqar.POWER_A - 1)).sum())
    where = {}
    for k in range(2):  # key k's slot is the k-th one drawn
        key = split.inputs[:, 2 * k][:, None]
        offsets = np.argmax(split.inputs[:, 2 * n:] == key, axis=1)
        where[k] = offsets // 2
    for k, expected in ((0, p), (1, exact_second_slot(p))):
        observed = np.bincount(where[k], minlength=slots) / count
        np.testing.assert_allclose(observed, expected, atol=4 * np.sqrt(expected.max() / count))
    assert p[0] > 3 * p[-1]  # skewed towards the context (a = 0.01)


def test_deterministic_by_seed():
    a = mqar.generate_mqar(50, 32, 64, 4, seed=7)
    b = mqar.generate_mqar(50, 32, 64, 4, seed=7)
    c = mqar.generate_mqar(50, 32, 64, 4, seed=8)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.inputs, c.inputs)
    options = dict(vocab_size=64, num_pairs=4, num_train=20, num_val=5, num_test=5, generator_seed=2)
    splits = mqar.load_mqar(32, options)
    assert [s.name for s in splits.values()] == ["train", "val", "test"]
    assert not np.array_equal(splits["val"].inputs, splits["test"].inputs)
    np.testing.assert_array_equal(mqar.load_mqar(32, options)["train"].inputs, splits["train"].inputs)


@pytest.mark.parametrize("length, vocab, pairs, needle, key", [
    (63, 128, 4, "seq_len 63 must be even", "data.seq_len"),
    (64, 64, 4, "vocab_size 64 must exceed the sequence length 64", "data.mqar.vocab_size"),
    (64, 128, 17, "num_pairs 17 pairs need a sequence of at least 4 x 17 = 68", "data.mqar.num_pairs"),
])
def test_hostile_settings(length, vocab, pairs, needle, key):
    with pytest.raises(LRADataError, match=needle):
        mqar.generate_mqar(4, length, vocab, pairs, seed=0)
    section = dict(vocab_size=vocab, num_pairs=pairs, num_train=10)
    found = list(mqar.check_config(section, DataContext("generated", length, 8)))
    assert len(found) == 1 and "\n" not in found[0][1]
    assert found[0][0] == key


def test_config_errors_name_the_key():
    from experiments.configs.mqar import get_config
    from experiments.validation import ConfigError, validate_config

    config = get_config("cpu")
    validate_config(config)
    for key, value, needle in (("data.mqar.num_pairs", 17, "data.mqar.num_pairs"),
                               ("data.mqar.vocab_size", 5000, "data.mqar.vocab_size"),
                               ("data.seq_len", 65, "data.seq_len"), ("train.batch_size", 30_000, "num_train")):
        bad = ml_collections.ConfigDict(config.to_dict())
        section, name = key.rsplit(".", 1)
        node = bad
        for part in section.split("."):
            node = node[part]
        node[name] = value
        with pytest.raises(ConfigError, match=needle):
            validate_config(bad)
