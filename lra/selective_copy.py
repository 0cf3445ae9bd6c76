"""Selective copying (docs/methods.md section 17.2): the "selective_copy" task, generated and seeded.

One example of length L with M data tokens (the Mamba paper's task, vocabulary 16):

    positions 0 .. L-M-1      noise token 0, except M data tokens drawn uniformly from 1..14 at M distinct
                              positions chosen uniformly at random (variable=True, selective copying) or at the first
                              M positions (variable=False, the classic copying task)
    positions L-M .. L-1      the marker token 15, M times

The label at the j-th marker position is the j-th data token (in order of position): after reading the j-th
marker the model must output the j-th token it saw, so it must have kept the tokens and skipped the noise. Every
other label is -1 (no target). L counts the markers: the noise region holds L - M positions. Chance is 1/14.

The generator needs 1 <= M and 2M <= L (LRADataError otherwise; the task's config check says the same, naming
data.selective_copy.num_tokens and data.seq_len).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lra.errors import LRADataError
from lra.tasks import DataContext, DataRequest, HeadKind, Split, TaskSpec, register_task

VOCAB_SIZE = 16  # 0 noise, 1..14 data, 15 marker
NOISE, MARKER = 0, VOCAB_SIZE - 1
DEFAULT_LENGTH = 128
SPLIT_NAMES = ("train", "val", "test")
_CHUNK = 8192

RANGES = {"num_tokens": (1, 1 << 18), "num_train": (1, 10_000_000), "num_val": (1, 10_000_000),
          "num_test": (1, 10_000_000), "generator_seed": (0, 2**32 - 1)}
CHOICES = {"variable": (True, False)}


def problems(length: int, num_tokens: int) -> list[tuple[str, str]]:
    """Violations of 2M <= L, as (what, message) pairs."""
    if 2 * num_tokens > length:
        return [("num_tokens", f"{num_tokens} data tokens and as many markers need a sequence of at least "
                               f"{2 * num_tokens} tokens, got {length}")]
    return []


def generate_selective_copy(num_examples: int, length: int, num_tokens: int, seed: int, *,
                            variable: bool = True) -> Split:
    """`num_examples` examples (see the module docstring): inputs and labels (num_examples, length) int32.
    Deterministic in `seed`; LRADataError when 2M > L or M < 1."""
    if num_tokens < 1:
        raise LRADataError(f"selective copying: num_tokens must be at least 1, got {num_tokens}")
    bad = problems(length, num_tokens)
    if bad:
        raise LRADataError("selective copying: " + "; ".join(f"{what} {message}" for what, message in bad))
    if num_examples < 1:
        raise LRADataError(f"selective copying: num_examples must be at least 1, got {num_examples}")
    rng = np.random.default_rng(seed)
    m, region = num_tokens, length - num_tokens
    tokens = rng.integers(1, MARKER, size=(num_examples, m)).astype(np.int32)
    if variable:
        positions = np.empty((num_examples, m), np.int64)
        for start in range(0, num_examples, _CHUNK):
            rows = min(_CHUNK, num_examples - start)
            order = np.argsort(rng.random((rows, region), dtype=np.float32), axis=1)[:, :m]
            positions[start:start + rows] = np.sort(order, axis=1)
    else:
        positions = np.broadcast_to(np.arange(m), (num_examples, m))
    inputs = np.full((num_examples, length), NOISE, np.int32)
    np.put_along_axis(inputs, positions, tokens, axis=1)
    inputs[:, region:] = MARKER
    labels = np.full((num_examples, length), -1, np.int32)
    labels[:, region:] = tokens
    return Split(inputs, labels, "")


def split_seed(seed: int, split: str) -> int:
    """The generator seed of one split (independent streams for train, val and test)."""
    return int(np.random.SeedSequence([seed, SPLIT_NAMES.index(split)]).generate_state(1)[0])


def load_selective_copy(length: int, options: Mapping[str, Any]) -> dict[str, Split]:
    """The three splits from config.data.selective_copy's settings."""
    splits = {}
    for name in SPLIT_NAMES:
        split = generate_selective_copy(options[f"num_{name}"], length, options["num_tokens"],
                                        split_seed(options["generator_seed"], name),
                                        variable=bool(options["variable"]))
        split.name = name
        splits[name] = split
    return splits


def _generated(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
    return load_selective_copy(spec.seq_len, request.options["selective_copy"])


def check_config(section: Mapping[str, Any] | None, context: DataContext) -> Iterable[tuple[str, str]]:
    """config.data.selective_copy's relations: 2M <= L, and a train split that holds a batch."""
    if section is None:
        yield "data.selective_copy", ("missing; the task needs num_tokens, variable, num_train, num_val, num_test "
                                      "and generator_seed (experiments/configs/selective_copy.py)")
        return
    if context.seq_len is not None and "num_tokens" in section:
        for _, message in problems(context.seq_len, section["num_tokens"]):
            yield "data.selective_copy.num_tokens", message
    if "num_train" in section and context.batch_size is not None and context.batch_size > section["num_train"]:
        yield "train.batch_size", (f"{context.batch_size} is larger than the generated train split "
                                   f"(data.selective_copy.num_train = {section['num_train']})")


register_task(TaskSpec(
    name="selective_copy", seq_len=DEFAULT_LENGTH, vocab_size=VOCAB_SIZE, num_classes=VOCAB_SIZE,
    head=HeadKind.PER_POSITION, causal=True, padded=False, fixed_length=False, train_size=20_000,
    loaders={"generated": _generated}, data_section="selective_copy", data_ranges=RANGES, data_choices=CHOICES,
    check_data=check_config,
    description="selective copying (Mamba): reproduce the data tokens scattered among noise (lra.selective_copy)"))
