"""MQAR, multi-query associative recall (docs/methods.md section 17.1): the "mqar" task, generated and seeded.

One example of length L with vocabulary V and n key-value pairs (Zoology's layout):

    positions 0 .. 2n-1          k_1 v_1 k_2 v_2 ... k_n v_n   (n distinct keys from [1, V/2), n distinct values
                                                                from [V/2, V), uniformly, in random order)
    positions 2n .. L-1          filler 0, except that key k_i is written again at position 2n + 2 g_i (a query)

The slots g_1..g_n are n distinct numbers of 0 .. s-1, s = (L - 2n) / 2, drawn one after the other without
replacement with weights P(g) proportional to (g + 1)^(a - 1), a = POWER_A = 0.01 (so most queries come just after
the context); key i goes to the i-th slot drawn, so every key is queried exactly once and the order of the queries
is random. Labels follow the per-position convention of the lm task (lra/corpus.py): the label at position t is
what the model must output after reading token t, so the label at a query position is the queried key's value and
every other label is -1 (no target). Accuracy is the share of correct query positions.

The generator needs L even, V > L and 4n <= L (Zoology asserts the same); otherwise LRADataError, and the task's
config check (`check_config`) reports the same conditions as one-line errors naming the config key.

The model's vocabulary is fixed when the task is registered (TaskSpec.vocab_size = VOCAB_SIZE, also the number of
classes); data.mqar.vocab_size may choose a smaller V for the generator (the unused ids are never seen).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lra.errors import LRADataError
from lra.tasks import DataContext, DataRequest, HeadKind, Split, TaskSpec, register_task

POWER_A = 0.01  # Zoology's power_a: query slot g is drawn with weight (g + 1)^(a - 1)
VOCAB_SIZE = 256  # the model's vocabulary and classes; the generator's V is data.mqar.vocab_size <= this
DEFAULT_LENGTH = 64
SPLIT_NAMES = ("train", "val", "test")
_CHUNK = 8192  # examples per vectorised block (bounds the (chunk, V/2) random matrix)

RANGES = {"vocab_size": (4, VOCAB_SIZE), "num_pairs": (1, 1 << 18), "num_train": (1, 10_000_000),
          "num_val": (1, 10_000_000), "num_test": (1, 10_000_000), "generator_seed": (0, 2**32 - 1)}


def problems(length: int, vocab_size: int, num_pairs: int) -> list[tuple[str, str]]:
    """The settings' violations of Zoology's conditions, as (what, message) pairs ("" what: no problem)."""
    found = []
    if length % 2:
        found.append(("seq_len", f"{length} must be even (queries sit at even offsets after the context)"))
    if vocab_size <= length:
        found.append(("vocab_size", f"{vocab_size} must exceed the sequence length {length} (Zoology: V > L)"))
    if 4 * num_pairs > length:
        found.append(("num_pairs", f"{num_pairs} pairs need a sequence of at least 4 x {num_pairs} = "
                                   f"{4 * num_pairs} tokens (context 2n plus n query slots of 2), got {length}"))
    return found


def query_slot_weights(num_slots: int, power_a: float = POWER_A) -> np.ndarray:
    """P(g) for g = 0 .. num_slots-1, proportional to (g + 1)^(power_a - 1), summing to 1."""
    weights = np.arange(1, num_slots + 1, dtype=np.float64) ** (power_a - 1.0)
    return weights / weights.sum()


def _distinct_rows(rng: np.random.Generator, count: int, low: int, high: int, size: int) -> np.ndarray:
    """(count, size) int: each row `size` distinct integers of [low, high), a uniformly random ordered sample."""
    out = np.empty((count, size), np.int64)
    for start in range(0, count, _CHUNK):
        rows = min(_CHUNK, count - start)
        order = np.argsort(rng.random((rows, high - low), dtype=np.float32), axis=1)
        out[start:start + rows] = order[:, :size] + low
    return out


def generate_mqar(num_examples: int, length: int, vocab_size: int, num_pairs: int, seed: int, *,
                  power_a: float = POWER_A) -> Split:
    """`num_examples` MQAR examples (see the module docstring): inputs and labels (num_examples, length) int32.

    Deterministic in `seed`. Raises LRADataError naming the setting when L is odd, V <= L or 4n > L.
    """
    bad = problems(length, vocab_size, num_pairs)
    if bad:
        raise LRADataError("MQAR: " + "; ".join(f"{what} {message}" for what, message in bad))
    if num_examples < 1:
        raise LRADataError(f"MQAR: num_examples must be at least 1, got {num_examples}")
    rng = np.random.default_rng(seed)
    half = vocab_size // 2
    n, context = num_pairs, 2 * num_pairs
    keys = _distinct_rows(rng, num_examples, 1, half, n)
    values = _distinct_rows(rng, num_examples, half, vocab_size, n)
    slots = (length - context) // 2
    # Drawing n slots one after the other without replacement, with weights p, is the Gumbel top-n of log p:
    # the i-th largest perturbed log-weight is the i-th slot drawn.
    log_p = np.log(query_slot_weights(slots, power_a))
    gumbel = rng.gumbel(size=(num_examples, slots))
    gaps = np.argsort(-(log_p + gumbel), axis=1, kind="stable")[:, :n]
    inputs = np.zeros((num_examples, length), np.int32)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    query_positions = context + 2 * gaps
    np.put_along_axis(inputs, query_positions, keys.astype(np.int32), axis=1)
    labels = np.full((num_examples, length), -1, np.int32)
    np.put_along_axis(labels, query_positions, values.astype(np.int32), axis=1)
    return Split(inputs, labels, "")


def split_seed(seed: int, split: str) -> int:
    """The generator seed of one split: independent streams for train, val and test from one config seed."""
    return int(np.random.SeedSequence([seed, SPLIT_NAMES.index(split)]).generate_state(1)[0])


def load_mqar(length: int, options: Mapping[str, Any]) -> dict[str, Split]:
    """The three splits from config.data.mqar's settings (vocab_size, num_pairs, num_*, generator_seed)."""
    splits = {}
    for name in SPLIT_NAMES:
        split = generate_mqar(options[f"num_{name}"], length, options["vocab_size"], options["num_pairs"],
                              split_seed(options["generator_seed"], name))
        split.name = name
        splits[name] = split
    return splits


def _generated(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
    return load_mqar(spec.seq_len, request.options["mqar"])


def check_config(section: Mapping[str, Any] | None, context: DataContext) -> Iterable[tuple[str, str]]:
    """config.data.mqar's relations: Zoology's conditions on L, V and n, and a train split that holds a batch."""
    if section is None:
        yield "data.mqar", ("missing; the task needs vocab_size, num_pairs, num_train, num_val, num_test and "
                            "generator_seed (experiments/configs/mqar.py)")
        return
    length = context.seq_len
    if length is not None and "vocab_size" in section and "num_pairs" in section:
        keys = {"seq_len": "data.seq_len", "vocab_size": "data.mqar.vocab_size", "num_pairs": "data.mqar.num_pairs"}
        for what, message in problems(length, section["vocab_size"], section["num_pairs"]):
            yield keys[what], message
    if "num_train" in section and context.batch_size is not None and context.batch_size > section["num_train"]:
        yield "train.batch_size", (f"{context.batch_size} is larger than the generated train split "
                                   f"(data.mqar.num_train = {section['num_train']})")


register_task(TaskSpec(
    name="mqar", seq_len=DEFAULT_LENGTH, vocab_size=VOCAB_SIZE, num_classes=VOCAB_SIZE, head=HeadKind.PER_POSITION,
    causal=True, padded=False, fixed_length=False, train_size=20_000, loaders={"generated": _generated},
    data_section="mqar", data_ranges=RANGES, check_data=check_config,
    description="multi-query associative recall (Zoology): recall each queried key's value (lra.mqar)"))
