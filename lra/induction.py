"""Induction heads (docs/methods.md section 17.3): the "induction" task, generated and seeded.

One example of length L >= 4 (vocabulary 16 plus one trigger id):

    every position        a token drawn uniformly from 0..15
    position p            the trigger TRIGGER = 16, with p uniform in 0 .. L-3
    position p + 1        the target: an ordinary token (uniform in 0..15)
    position L - 1        the trigger again (it occurs exactly twice)

Only the last position is scored: its label is the target (after reading the second trigger the model must
output the token that followed the first one); every other label is -1. Chance is 1/16. The layout does not depend
on the training length, so a model trained at length T is tested at longer lengths by generating at those
lengths (python -m experiments.sweep --task=induction --eval_lengths=2,4,8,16).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lra.errors import LRADataError
from lra.tasks import DataContext, DataRequest, HeadKind, Split, TaskSpec, register_task

NUM_TOKENS = 16  # ordinary tokens 0..15 (also the classes)
TRIGGER = NUM_TOKENS  # the trigger id
DEFAULT_LENGTH = 64
MIN_LENGTH = 4
SPLIT_NAMES = ("train", "val", "test")

RANGES = {"num_train": (1, 10_000_000), "num_val": (1, 10_000_000), "num_test": (1, 10_000_000),
          "generator_seed": (0, 2**32 - 1)}


def generate_induction(num_examples: int, length: int, seed: int) -> Split:
    """`num_examples` examples (see the module docstring): inputs and labels (num_examples, length) int32.
    Deterministic in `seed`; LRADataError when length < 4."""
    if length < MIN_LENGTH:
        raise LRADataError(f"induction: the sequence length must be at least {MIN_LENGTH} (a trigger, its target, "
                           f"one more token and the final trigger), got {length}")
    if num_examples < 1:
        raise LRADataError(f"induction: num_examples must be at least 1, got {num_examples}")
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, NUM_TOKENS, size=(num_examples, length)).astype(np.int32)
    first = rng.integers(0, length - 2, size=num_examples)  # 0 .. L-3
    rows = np.arange(num_examples)
    inputs[rows, first] = TRIGGER
    inputs[:, -1] = TRIGGER
    labels = np.full((num_examples, length), -1, np.int32)
    labels[:, -1] = inputs[rows, first + 1]
    return Split(inputs, labels, "")


def split_seed(seed: int, split: str) -> int:
    """The generator seed of one split (independent streams for train, val and test)."""
    return int(np.random.SeedSequence([seed, SPLIT_NAMES.index(split)]).generate_state(1)[0])


def load_induction(length: int, options: Mapping[str, Any]) -> dict[str, Split]:
    """The three splits from config.data.induction's settings."""
    splits = {}
    for name in SPLIT_NAMES:
        split = generate_induction(options[f"num_{name}"], length, split_seed(options["generator_seed"], name))
        split.name = name
        splits[name] = split
    return splits


def _generated(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
    return load_induction(spec.seq_len, request.options["induction"])


def check_config(section: Mapping[str, Any] | None, context: DataContext) -> Iterable[tuple[str, str]]:
    """config.data.induction's relations: a length of at least 4, and a train split that holds a batch."""
    if section is None:
        yield "data.induction", ("missing; the task needs num_train, num_val, num_test and generator_seed "
                                 "(experiments/configs/induction.py)")
        return
    if context.seq_len is not None and context.seq_len < MIN_LENGTH:
        yield "data.seq_len", f"the induction task needs at least {MIN_LENGTH} tokens, got {context.seq_len}"
    if "num_train" in section and context.batch_size is not None and context.batch_size > section["num_train"]:
        yield "train.batch_size", (f"{context.batch_size} is larger than the generated train split "
                                   f"(data.induction.num_train = {section['num_train']})")


register_task(TaskSpec(
    name="induction", seq_len=DEFAULT_LENGTH, vocab_size=NUM_TOKENS + 1, num_classes=NUM_TOKENS,
    head=HeadKind.PER_POSITION, causal=True, padded=False, fixed_length=False, train_size=20_000,
    loaders={"generated": _generated}, data_section="induction", data_ranges=RANGES, check_data=check_config,
    description="induction heads: after the trigger's second occurrence, recall the token that followed its first "
                "(lra.induction)"))
