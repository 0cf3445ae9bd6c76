"""Ranges of numeric settings, the mixer options every mixer reads the same way, and `did_you_mean` (stdlib
only: no JAX).

`Range` says where a number must lie and writes the one-line message when it does not. The mixers' contracts
(models/registry.py `MixerContract.ranges`) are built from `OPTION_RANGES`, whose entries hold across mixers (an
option of the same name means the same thing in every mixer), and experiments/validation.py checks the config's
own keys with the same class. This module imports nothing but the standard library, so the first stage of
config validation (before JAX is imported) can use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable
from typing import Any

# Upper bounds. Each lies far above every published setting (widths <= 512, 8 layers, batches <= 512, 500,000
# steps, Path-X's 16,384 tokens, state sizes <= 384) and far below what a typo or a unit mistake gives (a batch
# of 1e9, a seed of 2**64, d_model = 1e6).
MAX_SEED = 2**32 - 1        # jax.random.key keeps 32 bits of a seed (x64 off): key(2**32) == key(0)
MAX_LENGTH = 2**20          # sequence lengths and mixers' length options (1,048,576 tokens)
MAX_WIDTH = 16_384          # model.d_model, key and value widths
MAX_LAYERS = 256
MAX_STATE = 4_096           # state sizes (d_state, state_size) and S5 blocks
MAX_HEADS = 1_024
MAX_BATCH = 65_536          # train.batch_size, train.eval_batch_size
MAX_STEPS = 100_000_000     # num_steps, warmup and the every-N-steps intervals
MAX_EXAMPLES = 10_000_000   # generated examples and held-out sizes (the published sets have <= 200,000)
MAX_CHECKPOINTS = 1_000

# Mixer options where 0 means "the task's sequence length" (resolve_mixer fills them in).
LENGTH_OPTIONS = ("l_max", "trunc_len", "max_decode_len")
# Mixer fields that the encoder sets from config.model itself: a mixer section must not set them.
RESERVED_OPTIONS = {"d_model": "model.d_model", "bidirectional": "model.bidirectional", "dtype": "model.dtype"}


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean "d_model"?)' naming the candidates closest to `name`, or "" when none is close.

    Names are compared with difflib, case-insensitively: those with a similarity ratio >= 0.6 and within 0.1 of
    the best one are named (at most three, best first), so "batchsize" suggests "batch_size", not also
    "eval_batch_size". Dotted keys are compared by their last component: first among the candidates with the same
    parent ("model.d_modl" suggests "model.d_model", or "d_model" when the candidates are plain names), then among
    all candidates (a key in the wrong section: "train.lr" suggests "optim.lr"), then as whole names. A name that
    is itself a candidate gets "". Needs no JAX: experiments/train.py calls it for flag typos before JAX is
    imported.
    """
    name = str(name)
    pool = list(dict.fromkeys(str(c) for c in candidates))
    if not name or name in pool:
        return ""
    parent, _, leaf = name.rpartition(".")
    matches: list[str] = []
    dotted = any("." in c for c in pool)  # plain candidates are all "same parent"
    for group in ([c for c in pool if c.rpartition(".")[0] == parent] if dotted else pool, pool):
        by_leaf: dict[str, list[str]] = {}
        for candidate in group:
            by_leaf.setdefault(candidate.rpartition(".")[2], []).append(candidate)
        matches = [c for found in _close_names(leaf, list(by_leaf)) for c in by_leaf[found]][:3]
        if matches:
            break
    matches = matches or _close_names(name, pool)
    if not matches:
        return ""
    quoted = [f'"{m}"' for m in matches]
    return f" (did you mean {', '.join(quoted[:-1]) + ' or ' if len(quoted) > 1 else ''}{quoted[-1]}?)"


def _close_names(name: str, pool: list[str]) -> list[str]:
    """Up to three names of `pool` similar to `name` (difflib ratio >= 0.6, case-insensitive) and within 0.1 of
    the best, best first."""
    scored = sorted(((difflib.SequenceMatcher(None, name.lower(), c.lower()).ratio(), c) for c in pool),
                    key=lambda pair: -pair[0])
    scored = [(ratio, c) for ratio, c in scored if ratio >= 0.6]
    return [c for ratio, c in scored if ratio >= scored[0][0] - 0.1][:3]


def _bound_text(value: float, integer: bool) -> str:
    """A bound as written in messages: exact (a bound printed rounded could itself be out of range)."""
    if integer:
        return str(int(value))
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


@dataclasses.dataclass(frozen=True)
class Range:
    """Where a numeric value must lie: [low, high] (either end open), an int or any finite number.

    A value below `low` (or of the wrong kind) is described by `phrase` ("a positive int"), a value above `high`
    by the interval; `note` follows either ("expected an int in [0, 1048576] (0 = the task's length), got
    2000000").
    """

    low: float
    high: float
    integer: bool
    low_open: bool = False
    high_open: bool = False
    phrase: str = ""  # "" = the interval
    note: str = ""

    def interval(self) -> str:
        kind = "an int" if self.integer else "a number"
        return (f"{kind} in {'(' if self.low_open else '['}{_bound_text(self.low, self.integer)}, "
                f"{_bound_text(self.high, self.integer)}{')' if self.high_open else ']'}")

    def problem(self, value: Any) -> str | None:
        """None when `value` lies in the range, else what to say after "config.<key>: "."""
        is_int = isinstance(value, int) and not isinstance(value, bool)
        is_float = isinstance(value, float) and math.isfinite(value)
        if not (is_int or (is_float and not self.integer)):
            return f"expected {self.phrase or self.interval()}{self.note}, got {value!r}"
        if value < self.low or (self.low_open and value == self.low):
            return f"expected {self.phrase or self.interval()}{self.note}, got {value!r}"
        if value > self.high or (self.high_open and value == self.high):
            return f"expected {self.interval()}{self.note}, got {value!r}"
        return None


def positive_int(high: int, note: str = "") -> Range:
    return Range(1, high, True, phrase="a positive int", note=note)


def int_from_zero(high: int, note: str = "") -> Range:
    return Range(0, high, True, phrase="an int >= 0", note=note)


def int_from(low: int, high: int, note: str = "") -> Range:
    """[low, high] ints; positive_int / int_from_zero for low 1 / 0 (their phrases)."""
    if low == 1:
        return positive_int(high, note)
    if low == 0:
        return int_from_zero(high, note)
    return Range(low, high, True, phrase=f"an int >= {low}", note=note)


def positive_number(high: float, note: str = "") -> Range:
    return Range(0.0, high, False, low_open=True, phrase="a positive number", note=note)


def number_from_zero(high: float, note: str = "") -> Range:
    return Range(0.0, high, False, phrase="a number >= 0", note=note)


def unit_interval(*, high_open: bool = True, low_open: bool = False) -> Range:
    return Range(0.0, 1.0, False, low_open=low_open, high_open=high_open)


LENGTH_NOTE = " (0 = the task's length)"

# Every numeric option of the registered mixers, by name. A mixer's contract takes the entries of its own
# options from here (and may override one); tests/models/test_contracts.py checks that every numeric option of
# every registered mixer has a range. None values (value_dim, chunk_size: "derived") are allowed where the
# option's annotation allows None.
OPTION_RANGES: dict[str, Range] = {
    # sizes
    "d_state": positive_int(MAX_STATE),
    "state_size": positive_int(MAX_STATE),
    "blocks": positive_int(MAX_STATE),
    "num_heads": positive_int(MAX_HEADS),
    "key_dim": positive_int(MAX_WIDTH),
    "value_dim": positive_int(MAX_WIDTH),
    "num_features": positive_int(65_536),
    "num_landmarks": positive_int(MAX_LENGTH),
    "codebook_size": positive_int(65_536),
    "block_size": positive_int(MAX_LENGTH),
    "block_len": positive_int(MAX_LENGTH),
    "chunk_size": positive_int(MAX_LENGTH),
    "pinv_iterations": positive_int(100),
    "kmeans_iters": int_from_zero(1_000),
    "conv_width": positive_int(64),
    "dt_rank": int_from_zero(MAX_WIDTH, " (0 = ceil(d_model / 16))"),
    "head_dim": positive_int(MAX_WIDTH),
    # lengths
    "l_max": int_from_zero(MAX_LENGTH, LENGTH_NOTE),
    "trunc_len": int_from_zero(MAX_LENGTH, LENGTH_NOTE),
    "max_decode_len": int_from_zero(MAX_LENGTH, LENGTH_NOTE),
    "train_length": int_from_zero(MAX_LENGTH),
    "rerope_window": int_from_zero(MAX_LENGTH),
    "value_conv_kernel": int_from_zero(MAX_LENGTH),
    # numbers
    "dt_min": positive_number(10.0),
    "dt_max": positive_number(10.0),
    "dt_init_floor": positive_number(10.0),
    "max_phase": positive_number(2 * math.pi),
    "c": positive_number(1e3),  # RG-LRU: log a_t = -c r_t softplus(a_param)
    "out_variance_scale": positive_number(1e3),
    "temperature": positive_number(1e6),
    "rope_base": positive_number(1e9),
    "rope_scale": Range(1.0, float(MAX_LENGTH), False, phrase="a number >= 1", note=" (L_test / L_train)"),
    "expansion": positive_number(64.0),
    "eps": positive_number(1.0),
    "commitment_weight": number_from_zero(1e3),
    "simvq_codebook_weight": number_from_zero(1e3),
    "rerope_leak": number_from_zero(1e6),
    "init_scale": number_from_zero(1e3),
    "dead_code_threshold": unit_interval(high_open=False),
    "attention_dropout": unit_interval(),
    "ema_decay": unit_interval(),
    "r_min": unit_interval(),
    "r_max": unit_interval(),
}
