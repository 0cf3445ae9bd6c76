"""Checks a training config before anything is built, so a bad value fails in a second, not after compilation.

    from experiments.validation import ConfigError, validate_config
    validate_config(config)              # raises ConfigError naming every bad key, e.g.
    # config.train.batch_size: expected a positive int, got -3

What is checked (every message names the key as `config.<section>.<key>` and says what was expected; an unknown
key, option, task or mixer name and a value outside a closed set also get the closest valid names,
` (did you mean "d_model"?)`, from `did_you_mean`, which experiments/train.py uses for flag typos too):
  * keys and types against the schema: experiments/configs/base.py plus the task-specific keys that the task
    files in experiments/configs/ add (data.listops, data.pathfinder, data.val_size, ...). Unknown keys, missing
    base keys and wrong types are errors; ints are accepted where floats are expected; a placeholder of the base
    schema (model.bidirectional) may be None;
  * ranges and enumerations: every numeric key has a range, RANGES (the schema's keys) and OPTION_RANGES (the
    mixers' options, by name): positive sizes, steps and learning rates, 0 <= dropout < 1, b1 / b2 in [0, 1),
    and upper bounds far above every published setting that still catch a typo or a unit mistake (seed in
    [0, 2**32 - 1], the seeds jax.random.key tells apart; batch sizes <= 65,536; d_model <= 16,384; lengths
    <= 2**20; ...): `config.train.eval_batch_size: expected an int in [1, 65536], got 1000000000`. Whether a
    config within the ranges fits in memory is experiments/memory.py's check;
    a warmup shorter than the run (optim.warmup_steps < train.num_steps when both are > 0),
    norm / residual / pooling / input_encoding / dtype / nonfinite / data.source, the task name (lra task
    registry), the generator settings of ListOps and Pathfinder, a batch no larger than a generated train split;
  * the sequence length against the task: pixel tasks (TaskSpec.padded False) take only their own length (0 or
    TaskSpec.seq_len); generated ListOps needs seq_len >= the longest example it generates (max_length - 1);
  * the mixer section `model.<mixer>`: every option name against the mixer's fields (models/registry.py
    mixer_options), types against the fields' annotations, the direction (nystrom has no causal form), and
    ranges and relations the mixers require (num_heads dividing d_model, an even head width for RoPE, even S4
    state sizes, S5's state_size a multiple of blocks, 0 < dt_min <= dt_max, 0 <= r_min < r_max < 1, RTF's
    trunc_len > state_size, S4's l_max >= the sequence length, enumerations such as position or kernel);
  * with `trace=True`, as a last resort, the selected mixer is built and traced abstractly once
    (jax.eval_shape of its init on a (1, L, D) input: no compilation, about 0.1 s), so a check that only the
    mixer's own setup makes is reported under config.model.<mixer> too.

Not checked here: that data_dir exists (the data loaders say so, naming the flag) and that the batch divides by
the device count (the trainer's mesh does, experiments/trainer.py DataParallel.check_batch_size).

The checks run in two stages: the first needs no JAX (a bad training flag fails before JAX is imported); the
second imports the mixers (models/) for their option lists.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import math
import os
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections

import lra

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
NOT_TASK_FILES = ("__init__.py", "base.py", "common.py")

# The trainer's own tuples (experiments/trainer.py), repeated here so that the first stage needs no JAX;
# tests/experiments/test_validation.py checks that they agree.
INPUT_ENCODINGS = ("embed", "linear")
NONFINITE_POLICIES = ("stop", "skip")
LENGTH_OPTIONS = ("l_max", "trunc_len", "max_decode_len")  # mixer options where 0 means the task's length
# experiments/data.py: tasks that can be generated, and the resolution of the Pathfinder tasks.
GENERATED_TASKS = ("listops", "pathfinder", "pathx")
PATHFINDER_TASKS = ("pathfinder", "pathx")
DATA_SOURCES = ("generated", "files")

# Mixer fields that the encoder sets from model.* itself: a mixer section must not set them.
RESERVED_OPTIONS = {"d_model": "model.d_model", "bidirectional": "model.bidirectional", "dtype": "model.dtype"}


# ------------------------------------------------------------------------------------------------------ errors


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean "d_model"?)' naming the candidates closest to `name`, or "" when none is close.

    Names are compared with difflib, case-insensitively: those with a similarity ratio >= 0.6 and within 0.1 of
    the best one are named (at most three, best first), so "batchsize" suggests "batch_size", not also
    "eval_batch_size". Dotted keys are compared by their last component: first among the candidates with the same
    parent ("model.d_modl" suggests "model.d_model", or "d_model" when the candidates are plain names), then among
    all candidates (a key in the wrong section: "train.lr" suggests "optim.lr"), then as whole names. A name that
    is itself a candidate gets "". Needs no JAX: experiments/train.py calls it for flag typos before JAX is
    imported. models/registry.py repeats the rule for plain names (models/ does not import experiments/).
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


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad value: `key` is the dotted path below `config` (e.g. "train.batch_size")."""

    key: str
    message: str
    unknown_name: bool = False  # an unknown task, mixer or key (the error is then also a KeyError)

    def __str__(self) -> str:
        return f"config.{self.key}: {self.message}"


class ConfigError(ValueError):
    """The config has bad values; `problems` lists them and `keys` names their keys ("train.batch_size")."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self._message())

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.problems]

    @property
    def key(self) -> str:
        return self.problems[0].key

    def _message(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        return f"{len(self.problems)} problems in the config:\n" + "\n".join(f"  {p}" for p in self.problems)

    def __str__(self) -> str:
        return self._message()


class UnknownNameError(ConfigError, KeyError):
    """Every problem is an unknown task, mixer or key; also a KeyError, as lra.get_task and make_mixer raise."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self._message()


# ------------------------------------------------------------------------------------------------------ schema


@dataclasses.dataclass(frozen=True)
class FieldType:
    """What a leaf may hold: one of `types` (int accepted for float, bool never for int), or None if nullable."""

    types: tuple[type, ...]
    nullable: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool):
            return bool in self.types
        if isinstance(value, int) and float in self.types:
            return True
        return isinstance(value, tuple(t for t in self.types if t is not bool))

    def describe(self) -> str:
        names = [{int: "an int", float: "a number", bool: "a bool", str: "a string"}.get(t, t.__name__)
                 for t in self.types]
        return " or ".join(names + (["None"] if self.nullable else []))


Schema = dict[str, Any]  # key -> FieldType, or a nested Schema for a section


def _is_section(value: Any) -> bool:
    return isinstance(value, ml_collections.ConfigDict)


def _schema_of(config: ml_collections.ConfigDict) -> Schema:
    schema: Schema = {}
    for key in config.keys():
        value = config[key]
        if _is_section(value):
            schema[key] = _schema_of(value)
        elif value is None:  # a placeholder: its declared type, or None
            schema[key] = FieldType((config.get_type(key),), nullable=True)
        else:
            schema[key] = FieldType((type(value),))
    return schema


def _merge(into: Schema, extra: Schema) -> None:
    for key, value in extra.items():
        if key not in into:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _merge(into[key], value)


def task_config_modules() -> list[str]:
    """Module names of the task config files, e.g. "experiments.configs.listops"."""
    return [f"experiments.configs.{name[:-3]}" for name in sorted(os.listdir(CONFIG_DIR))
            if name.endswith(".py") and name not in NOT_TASK_FILES]


@functools.cache
def base_schema() -> Schema:
    """experiments/configs/base.py's schema."""
    from experiments.configs.base import base_config

    return _schema_of(base_config())


@functools.cache
def full_schema() -> Schema:
    """The base schema plus the keys the task files add (their default variants): data.listops, data.val_size..."""
    schema = _copy(base_schema())
    for module in task_config_modules():
        _merge(schema, _schema_of(importlib.import_module(module).get_config()))
    return schema


def _copy(schema: Schema) -> Schema:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in schema.items()}


def _schema_paths(schema: Schema, prefix: str = "") -> list[str]:
    """Every dotted key of `schema`, sections included ("model", "model.d_model", ...)."""
    paths = []
    for key, value in schema.items():
        paths.append(prefix + key)
        if isinstance(value, dict):
            paths.extend(_schema_paths(value, f"{prefix}{key}."))
    return paths


def _suggest_value(value: Any, choices: Iterable[Any]) -> str:
    """did_you_mean for a string value outside a closed set of strings ("" for other values)."""
    if not isinstance(value, str):
        return ""
    return did_you_mean(value, [c for c in choices if isinstance(c, str)])


# ------------------------------------------------------------------------------------------------------ ranges

# Upper bounds. Each lies far above every published setting (experiments/configs/common.py: widths <= 512, 8
# layers, batches <= 512, 500,000 steps, Path-X's 16,384 tokens, state sizes <= 384) and far below what a typo
# or a unit mistake gives (a batch of 1e9, a seed of 2**64, d_model = 1e6): such a value is refused here in a
# second, not at compilation or by the kernel's OOM killer. Whether a config that passes fits in memory is
# experiments/memory.py's question.
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


def _bound_text(value: float, integer: bool) -> str:
    """A bound as written in messages: exact (a bound printed rounded could itself be out of range)."""
    if integer:
        return str(int(value))
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


@dataclasses.dataclass(frozen=True)
class Range:
    """Where a numeric key's value must lie: [low, high] (either end open), an int or any finite number.

    A value below `low` (or of the wrong kind) is described by `phrase` ("a positive int", as the messages
    have always said), a value above `high` by the interval; `note` follows either ("expected an int in
    [0, 1048576] (0 = the task's length), got 2000000").
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


def _positive_int(high: int, note: str = "") -> Range:
    return Range(1, high, True, phrase="a positive int", note=note)


def _int_from_zero(high: int, note: str = "") -> Range:
    return Range(0, high, True, phrase="an int >= 0", note=note)


def _positive_number(high: float, note: str = "") -> Range:
    return Range(0.0, high, False, low_open=True, phrase="a positive number", note=note)


def _number_from_zero(high: float, note: str = "") -> Range:
    return Range(0.0, high, False, phrase="a number >= 0", note=note)


def _unit_interval(*, high_open: bool = True, low_open: bool = False) -> Range:
    return Range(0.0, 1.0, False, low_open=low_open, high_open=high_open)


_LENGTH_NOTE = " (0 = the task's length)"

# Every numeric key of the schema (base.py and the task files' keys); tests/experiments/test_validation.py checks that none
# is missing.
RANGES: dict[str, Range] = {
    "seed": _int_from_zero(MAX_SEED, " (jax.random.key uses 32 bits)"),
    "data.seq_len": _int_from_zero(MAX_LENGTH, _LENGTH_NOTE),
    "data.split_seed": _int_from_zero(MAX_SEED),
    "data.permutation_seed": _int_from_zero(MAX_SEED),
    "data.val_size": _positive_int(MAX_EXAMPLES),
    "data.val_fraction": _unit_interval(low_open=True),
    "data.listops.num_train": _positive_int(MAX_EXAMPLES),
    "data.listops.num_val": _positive_int(MAX_EXAMPLES),
    "data.listops.num_test": _positive_int(MAX_EXAMPLES),
    "data.listops.min_length": _int_from_zero(MAX_LENGTH),
    "data.listops.max_length": _positive_int(MAX_LENGTH),
    "data.listops.max_depth": _positive_int(100),
    "data.listops.max_args": Range(2, 100, True, phrase="an int >= 2",
                                   note=" (an operator has 2 or more arguments)"),
    "data.listops.generator_seed": _int_from_zero(MAX_SEED),
    "data.pathfinder.num_examples": _positive_int(MAX_EXAMPLES),
    "data.pathfinder.generator_seed": _int_from_zero(MAX_SEED),
    "model.d_model": _positive_int(MAX_WIDTH),
    "model.n_layers": _positive_int(MAX_LAYERS),
    "model.dropout": _unit_interval(),
    "optim.lr": _positive_number(1.0),
    "optim.ssm_lr": _positive_number(1.0),
    "optim.weight_decay": _number_from_zero(10.0),
    "optim.warmup_steps": _int_from_zero(MAX_STEPS),
    "optim.end_lr_fraction": _unit_interval(high_open=False),
    "optim.b1": _unit_interval(),
    "optim.b2": _unit_interval(),
    "optim.clip_norm": _number_from_zero(1e6, " (0 = no clipping)"),
    "train.batch_size": _positive_int(MAX_BATCH),
    "train.eval_batch_size": _positive_int(MAX_BATCH),
    "train.num_steps": _int_from_zero(MAX_STEPS),
    "train.eval_every": _positive_int(MAX_STEPS),
    "train.checkpoint_every": _positive_int(MAX_STEPS),
    "train.log_every": _positive_int(MAX_STEPS),
    "train.keep_checkpoints": _positive_int(MAX_CHECKPOINTS),
    "train.max_consecutive_skips": _positive_int(MAX_STEPS),  # with nonfinite="skip": stop after this many
}

# Every numeric option of every registered mixer, by option name (the same name means the same thing in every
# mixer); tests/experiments/test_validation.py checks that none is missing. None values (value_dim, chunk_size: "derived")
# are allowed where the option's annotation allows None.
OPTION_RANGES: dict[str, Range] = {
    # sizes
    "d_state": _positive_int(MAX_STATE),
    "state_size": _positive_int(MAX_STATE),
    "blocks": _positive_int(MAX_STATE),
    "num_heads": _positive_int(MAX_HEADS),
    "key_dim": _positive_int(MAX_WIDTH),
    "value_dim": _positive_int(MAX_WIDTH),
    "num_features": _positive_int(65_536),
    "num_landmarks": _positive_int(MAX_LENGTH),
    "codebook_size": _positive_int(65_536),
    "block_size": _positive_int(MAX_LENGTH),
    "block_len": _positive_int(MAX_LENGTH),
    "chunk_size": _positive_int(MAX_LENGTH),
    "pinv_iterations": _positive_int(100),
    "kmeans_iters": _int_from_zero(1_000),
    # lengths
    "l_max": _int_from_zero(MAX_LENGTH, _LENGTH_NOTE),
    "trunc_len": _int_from_zero(MAX_LENGTH, _LENGTH_NOTE),
    "max_decode_len": _int_from_zero(MAX_LENGTH, _LENGTH_NOTE),
    "train_length": _int_from_zero(MAX_LENGTH),
    "rerope_window": _int_from_zero(MAX_LENGTH),
    "value_conv_kernel": _int_from_zero(MAX_LENGTH),
    # numbers
    "dt_min": _positive_number(10.0),
    "dt_max": _positive_number(10.0),
    "max_phase": _positive_number(2 * math.pi),
    "temperature": _positive_number(1e6),
    "rope_base": _positive_number(1e9),
    "rope_scale": Range(1.0, float(MAX_LENGTH), False, phrase="a number >= 1", note=" (L_test / L_train)"),
    "expansion": _positive_number(64.0),
    "eps": _positive_number(1.0),
    "commitment_weight": _number_from_zero(1e3),
    "simvq_codebook_weight": _number_from_zero(1e3),
    "rerope_leak": _number_from_zero(1e6),
    "init_scale": _number_from_zero(1e3),
    "dead_code_threshold": _unit_interval(high_open=False),
    "attention_dropout": _unit_interval(),
    "ema_decay": _unit_interval(),
    "r_min": _unit_interval(),
    "r_max": _unit_interval(),
}


# ------------------------------------------------------------------------------------------------------ checker


class _Checker:
    """Collects problems; each check skips keys that already have one (a wrong type is not also out of range)."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        self.config = config
        self.problems: list[Problem] = []

    def fail(self, key: str, message: str, *, unknown_name: bool = False) -> None:
        if not self.has_problem(key):
            self.problems.append(Problem(key, message, unknown_name))

    def has_problem(self, key: str) -> bool:
        return any(p.key == key or p.key.startswith(key + ".") or key.startswith(p.key + ".")
                   for p in self.problems)

    def raise_if_any(self) -> None:
        if self.problems:
            cls = UnknownNameError if all(p.unknown_name for p in self.problems) else ConfigError
            raise cls(self.problems)

    def has(self, key: str) -> bool:
        node: Any = self.config
        for part in key.split("."):
            if not _is_section(node) or part not in node:
                return False
            node = node[part]
        return True

    def get(self, key: str, default: Any = None) -> Any:
        if not self.has(key):
            return default
        node: Any = self.config
        for part in key.split("."):
            node = node[part]
        return node

    def usable(self, key: str) -> bool:
        """The key exists and has no problem yet."""
        return self.has(key) and not self.has_problem(key)

    # ---------------------------------------------------------------------------------------- typed checks

    def in_range(self, key: str, allowed: Range | None = None) -> None:
        """The value at `key` is a number of the right kind inside `allowed` (default: RANGES[key])."""
        if self.usable(key):
            message = (allowed or RANGES[key]).problem(self.get(key))
            if message:
                self.fail(key, message)

    def choice(self, key: str, choices: Iterable[Any]) -> None:
        if self.usable(key):
            choices = tuple(choices)
            value = self.get(key)
            if value not in choices:
                self.fail(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}"
                               f"{_suggest_value(value, choices)}")

    # --------------------------------------------------------------------------------------------- schema

    def check_schema(self, schema: Schema, required: Schema, node: ml_collections.ConfigDict, prefix: str,
                     skip: Callable[[str], bool]) -> None:
        """Unknown keys, missing base keys and wrong types below `node` (`skip(key)`: checked elsewhere)."""
        for key in node.keys():
            path = f"{prefix}{key}"
            if skip(path):
                continue
            value = node[key]
            if key not in schema:
                hint = did_you_mean(key, schema) or did_you_mean(path, _schema_paths(full_schema()))
                self.fail(path, f"unknown key{hint}; {'config.' + prefix[:-1] if prefix else 'config'} has "
                                f"{', '.join(sorted(schema))}", unknown_name=True)
            elif isinstance(schema[key], dict):
                if not _is_section(value):
                    self.fail(path, f"expected a section (ConfigDict) of keys {', '.join(sorted(schema[key]))}, "
                                    f"got {value!r}")
                else:
                    self.check_schema(schema[key], required.get(key) or {}, value, path + ".", skip)
            elif _is_section(value):
                self.fail(path, f"expected {schema[key].describe()}, got a section")
            elif not schema[key].accepts(value):
                self.fail(path, f"expected {schema[key].describe()}, got {value!r} ({type(value).__name__})")
        for key in required:
            path = f"{prefix}{key}"
            if key not in node and not skip(path):
                self.fail(path, "missing; every config needs it (experiments/configs/base.py)")


# ------------------------------------------------------------------------------------------------- entry point


def validate_config(config: ml_collections.ConfigDict, *, trace: bool = False) -> None:
    """Raises ConfigError (a ValueError) naming every bad key of `config`; returns None for a good config.

    trace: also build and abstractly trace the selected mixer (jax.eval_shape of its init; needs JAX, no
      compilation): catches what only the mixer's own setup checks. Call it after jax.distributed.initialize.
    """
    checker = _Checker(config)
    spec = _check_general(checker)
    checker.raise_if_any()
    _check_model(checker, spec)
    checker.raise_if_any()
    if trace:
        _trace_mixer(checker, spec)
        checker.raise_if_any()


def task_length(config: ml_collections.ConfigDict, spec: lra.TaskSpec) -> int:
    """The sequence length a run uses: data.seq_len, or the task's own when 0 (as experiments/data.py)."""
    return int(config.data.seq_len) or spec.seq_len


# ---------------------------------------------------------------------------------------- stage 1 (no JAX)


def _in_mixer_section(path: str, config: ml_collections.ConfigDict) -> bool:
    """model.<section>[.<key>]: a mixer's options, checked against the mixer in stage 2 (and optional)."""
    parts = path.split(".")
    if len(parts) < 2 or parts[0] != "model":
        return False
    in_config = "model" in config and _is_section(config.model) and parts[1] in config.model \
        and _is_section(config.model[parts[1]])
    return in_config or isinstance(base_schema()["model"].get(parts[1]), dict)


def _check_general(c: _Checker) -> lra.TaskSpec | None:
    """Everything but the mixer: schema, task, data, model shape, optimiser, training loop. Returns the spec."""
    c.check_schema(full_schema(), base_schema(), c.config, "", lambda path: _in_mixer_section(path, c.config))

    spec = None
    if c.usable("task"):
        task = c.get("task")
        if task not in lra.task_names():
            c.fail("task", f"unknown task {task!r}{_suggest_value(task, lra.task_names())}; registered tasks: "
                           f"{', '.join(lra.task_names())}", unknown_name=True)
        else:
            spec = lra.get_task(task)
    c.in_range("seed")

    # data
    c.choice("data.source", DATA_SOURCES)
    if spec is not None and c.usable("data.source"):
        allowed = DATA_SOURCES if spec.name in GENERATED_TASKS else ("files",)
        if c.get("data.source") not in allowed:
            c.fail("data.source", f"task {spec.name!r} accepts {', '.join(map(repr, allowed))}, "
                                  f"got {c.get('data.source')!r}{_suggest_value(c.get('data.source'), allowed)}")
    c.in_range("data.seq_len")
    if spec is not None and c.usable("data.seq_len"):
        _check_length(c, spec)
    for key in ("data.split_seed", "data.permutation_seed"):
        c.in_range(key)
    c.in_range("data.val_size")
    c.in_range("data.val_fraction")
    # model (the mixer and the encoder's enumerations: stage 2)
    for key in ("model.d_model", "model.n_layers", "model.dropout"):
        c.in_range(key)
    c.choice("model.input_encoding", INPUT_ENCODINGS)
    if spec is not None and c.usable("model.input_encoding") and c.get("model.input_encoding") == "linear" \
            and spec.padded:
        c.fail("model.input_encoding", f"'linear' reads pixel values and needs a pixel task; {spec.name!r} has "
                                       "token ids (use 'embed')")

    # optimiser
    for key in RANGES:
        if key.startswith("optim."):
            c.in_range(key)

    # training loop
    for key in RANGES:
        if key.startswith("train."):
            c.in_range(key)
    c.choice("train.nonfinite", NONFINITE_POLICIES)
    _check_warmup(c)
    if spec is not None:  # after the batch size's own range: the generated splits must hold a batch
        _check_generator(c, spec)
    return spec


def _check_warmup(c: _Checker) -> None:
    """A warmup as long as the run leaves no decay: the rate would peak on the last step (or never arrive)."""
    if not (c.usable("optim.warmup_steps") and c.usable("train.num_steps")):
        return
    warmup, steps = c.get("optim.warmup_steps"), c.get("train.num_steps")
    if steps > 0 and warmup > 0 and warmup >= steps:
        c.fail("optim.warmup_steps", f"{warmup} is not below config.train.num_steps = {steps}: the run would end "
                                     f"during its learning-rate warmup; lower warmup_steps (e.g. to {steps // 10}) "
                                     "or raise num_steps")


def _check_length(c: _Checker, spec: lra.TaskSpec) -> None:
    seq_len = c.get("data.seq_len")
    if not spec.padded and seq_len not in (0, spec.seq_len):
        c.fail("data.seq_len", f"task {spec.name!r} has a fixed length of {spec.seq_len} (its pixels are never "
                               f"padded or cut): expected 0 or {spec.seq_len}, got {seq_len}")


def _check_generator(c: _Checker, spec: lra.TaskSpec) -> None:
    """The generator sections of generated tasks (and Pathfinder's difficulty, which files use too)."""
    generated = c.get("data.source") == "generated" and not c.has_problem("data.source")
    if spec.name == "listops" and generated:
        section = "data.listops"
        if not c.has(section):
            c.fail(section, "missing; generated ListOps needs its generator settings (see "
                            "experiments/configs/listops.py)")
            return
        for key in ("num_train", "num_val", "num_test", "min_length", "max_length", "max_depth", "max_args",
                    "generator_seed"):
            c.in_range(f"{section}.{key}")
        window = ("min_length", "max_length", "max_depth", "max_args")
        if all(c.usable(f"{section}.{k}") for k in window):
            from lra import listops

            values = {k: c.get(f"{section}.{k}") for k in window}
            try:
                listops._check_generation_parameters((1, 1, 1), seed=0, **values)
            except ValueError as error:
                c.fail(f"{section}.min_length", f"{error} (data.listops.min_length, max_length, max_depth and "
                                                "max_args)")
            if c.usable("data.seq_len"):
                longest = values["max_length"] - 1  # lengths are < max_length
                length = task_length(c.config, spec)
                if length < longest:
                    c.fail("data.seq_len", f"{length} is shorter than the longest generated ListOps example "
                                           f"(data.listops.max_length - 1 = {longest}): truncated expressions "
                                           "have wrong labels; raise data.seq_len or lower max_length")
        if c.usable(f"{section}.num_train") and c.usable("train.batch_size") \
                and c.get("train.batch_size") > c.get(f"{section}.num_train"):
            c.fail("train.batch_size", f"{c.get('train.batch_size')} is larger than the generated train split "
                                       f"(data.listops.num_train = {c.get(f'{section}.num_train')})")
    if spec.name in PATHFINDER_TASKS:
        section = "data.pathfinder"
        if not c.has(section):
            c.fail(section, f"missing; task {spec.name!r} needs difficulty (and, when generated, num_examples and "
                            f"generator_seed): see experiments/configs/{spec.name}.py")
            return
        from lra.pathfinder import DIFFICULTIES

        difficulties = list(DIFFICULTIES) + [directory for directory, _ in DIFFICULTIES.values()]
        c.choice(f"{section}.difficulty", difficulties)
        if generated:
            c.in_range(f"{section}.num_examples")
            c.in_range(f"{section}.generator_seed")
            examples = f"{section}.num_examples"
            if c.usable(examples) and c.usable("train.batch_size"):
                num_train = c.get(examples) * 8 // 10  # lra.pathfinder.split_positions: 80 / 10 / 10 %
                if c.get("train.batch_size") > num_train:
                    c.fail("train.batch_size", f"{c.get('train.batch_size')} is larger than the generated train "
                                               f"split ({num_train} = 80% of data.pathfinder.num_examples)")


# --------------------------------------------------------------------------------------- stage 2 (mixers)


def _option_types(cls: type) -> dict[str, FieldType | None]:
    """Field name -> accepted types from its annotation (None: not checked, e.g. Any or a callable)."""
    simple = {"int": int, "float": float, "bool": bool, "str": str}
    out: dict[str, FieldType | None] = {}
    for field in dataclasses.fields(cls):
        annotation = field.type
        if isinstance(annotation, type):
            parts = [annotation.__name__]
        elif isinstance(annotation, types.UnionType):
            parts = [getattr(a, "__name__", str(a)) for a in annotation.__args__]
        else:  # a string (postponed annotations), e.g. "int", "int | None", "Any"
            text = str(annotation).strip()
            if text.startswith("Optional[") and text.endswith("]"):
                text = text[len("Optional["):-1] + " | None"
            parts = [p.strip() for p in text.split("|")]
        nullable = "None" in parts or "NoneType" in parts
        kinds = [p for p in parts if p not in ("None", "NoneType")]
        out[field.name] = (FieldType(tuple(simple[p] for p in kinds), nullable)
                           if kinds and all(p in simple for p in kinds) else None)
    return out


def _option_choices(mixer: str, cls: type) -> dict[str, tuple[Any, ...]]:
    """Enumerated options -> allowed values (by option name, from the constants the mixers check against)."""
    from models import ssm as ssm_models
    from models import vq as vq_models
    from ops import linear_attention, normalizers, performer, rtf, scan, vq_attention
    from ops import ssm as ssm_ops

    choices: dict[str, tuple[Any, ...]] = {
        "scan_method": tuple(m.value for m in scan.ScanMethod),
        "discretization": ("zoh", "bilinear"),
        "lambda_init": tuple(ssm_models.S4D_INITS),
        "c_init": tuple(ssm_ops.S5_C_INITS),
        "coefficient_init": tuple(rtf.RTF_INITS),
        "feature_map": tuple(sorted(linear_attention.FEATURE_MAPS)),
        "kernel": tuple(performer.KERNELS),
        "orthogonal_scaling": tuple(performer.ORTHOGONAL_SCALINGS),
        "normalizer": tuple(sorted(normalizers.NORMALIZERS)),
        "quantizer": tuple(vq_models.QUANTIZERS),
        "formulation": tuple(vq_attention.FORMULATIONS),
        "codebook_init": tuple(vq_models.CODEBOOK_INITS),
    }
    for option, attribute in (("position", "supported_positions"), ("rope_scaling", "supported_rope_scalings")):
        if hasattr(cls, attribute):
            choices[option] = tuple(getattr(cls, attribute))
    if mixer in ("linear", "performer"):
        choices["method"] = ("chunked", "prefix")  # causal evaluation (ops.linear_attention.linear_attention)
    return choices


def _check_model(c: _Checker, spec: lra.TaskSpec | None) -> None:
    from models import encoder as encoder_lib
    from models.registry import mixer_class, mixer_names, mixer_options

    c.choice("model.norm", encoder_lib.NORMS)
    c.choice("model.residual", encoder_lib.RESIDUALS)
    c.choice("model.pooling", encoder_lib.POOLINGS)
    if c.has("model.dtype"):
        c.choice("model.dtype", getattr(encoder_lib, "DTYPES", ("float32",)))

    # Every mixer section: option names and types (only the selected one is used, but a typo is a typo).
    for key in c.config.model.keys():
        if not _is_section(c.config.model[key]):
            continue
        if key not in mixer_names():
            hint = did_you_mean(key, mixer_names() + sorted(base_schema()["model"]))
            c.fail(f"model.{key}", f"unknown key{hint}: not a registered mixer ({', '.join(mixer_names())}) nor "
                                   f"a key of config.model", unknown_name=True)
            continue
        _check_option_names(c, key, mixer_options(key), _option_types(mixer_class(key)))

    if not c.usable("model.mixer"):
        return
    mixer = c.get("model.mixer")
    if mixer not in mixer_names():
        c.fail("model.mixer", f"unknown mixer {mixer!r}{_suggest_value(mixer, mixer_names())}; registered mixers "
                              f"are: {', '.join(mixer_names())}", unknown_name=True)
        return
    cls = mixer_class(mixer)
    if c.get("model.bidirectional") is False and not getattr(cls, "has_causal_form", True):
        c.fail("model.bidirectional", f"mixer {mixer!r} has no causal form: set it to True or leave it unset "
                                      "(None)")
    if not c.has_problem(f"model.{mixer}"):
        _check_mixer_values(c, mixer, cls, spec)


def _check_option_names(c: _Checker, mixer: str, known: dict[str, Any], kinds: dict[str, FieldType | None]
                        ) -> None:
    section = c.config.model[mixer]
    options = sorted(k for k in known if k not in RESERVED_OPTIONS)
    for key in section.keys():
        path = f"model.{mixer}.{key}"
        value = section[key]
        if key in RESERVED_OPTIONS:
            c.fail(path, f"set by config.{RESERVED_OPTIONS[key]}; remove it from config.model.{mixer}")
        elif key not in known:
            c.fail(path, f"mixer {mixer!r} has no option {key!r}{did_you_mean(key, options)}; its options are: "
                         f"{', '.join(options)}", unknown_name=True)
        elif kinds.get(key) is not None and not kinds[key].accepts(value):
            c.fail(path, f"expected {kinds[key].describe()}, got {value!r} ({type(value).__name__})")


def _check_mixer_values(c: _Checker, mixer: str, cls: type, spec: lra.TaskSpec | None) -> None:
    """Ranges and relations of the selected mixer's options (their names and types are known good by now).

    Ranges are checked on the options the section sets; relations on the values the mixer will get (the
    section's, else the field defaults), and are reported under the key to change.
    """
    from models.registry import mixer_options

    section = f"model.{mixer}"
    given = {k: c.get(f"{section}.{k}") for k in (c.config.model[mixer].keys() if c.has(section) else ())}
    values = {**mixer_options(mixer), **given}
    key = lambda name: f"{section}.{name}"  # noqa: E731

    for name, value in given.items():
        if name in OPTION_RANGES and value is not None:  # None: only where the annotation allows it (checked)
            c.in_range(key(name), OPTION_RANGES[name])
    for name, allowed in _option_choices(mixer, cls).items():
        if name in given:
            c.choice(key(name), allowed)

    def ok(*names: str) -> bool:
        """The options exist, have no problem so far and are not None."""
        return all(name in values and values[name] is not None and not c.has_problem(key(name)) for name in names)

    d_model = c.get("model.d_model")
    length = task_length(c.config, spec) if spec is not None else None
    resolved = {name: (length if values[name] == 0 else values[name]) for name in LENGTH_OPTIONS if name in values}

    if hasattr(cls, "head_dim") and ok("num_heads"):  # multi-head attention: heads of width d_model / num_heads
        heads = values["num_heads"]
        if d_model % heads:
            c.fail(key("num_heads"), f"{heads} does not divide config.model.d_model = {d_model}")
        elif ok("position") and values["position"] in ("rope", "rope_bias") and (d_model // heads) % 2:
            c.fail(key("position"), f"RoPE needs an even head width; d_model / num_heads = {d_model // heads}")
    if ok("rope_scaling", "position") and values["rope_scaling"] != "none":
        if values["position"] not in ("rope", "rope_bias"):
            c.fail(key("rope_scaling"), f"{values['rope_scaling']!r} needs position 'rope' or 'rope_bias', got "
                                        f"{values['position']!r}")
        elif values["rope_scaling"] == "rerope" and ok("rerope_window") and values["rerope_window"] < 1:
            c.fail(key("rerope_window"), "rope_scaling='rerope' needs rerope_window >= 1")
    if ok("rerope_leak") and values["rerope_leak"] != 0 and values["rerope_leak"] <= 1:
        c.fail(key("rerope_leak"), f"expected 0 (ReRoPE) or a number > 1 (leaky ReRoPE), got {values['rerope_leak']}")
    if ok("train_length") and (values.get("rope_scaling") == "yarn" or values.get("logn_scaling")) \
            and values["train_length"] <= 1:
        c.fail(key("train_length"), "rope_scaling='yarn' and logn_scaling need train_length > 1 (the training "
                                    "length)")
    if mixer == "linear" and values.get("logn_scaling"):
        c.fail(key("logn_scaling"), "linear attention has no softmax scores to scale; set it to False")
    if ok("value_conv_kernel") and values["value_conv_kernel"] and values["value_conv_kernel"] % 2 == 0:
        c.fail(key("value_conv_kernel"), f"expected 0 (off) or an odd int, got {values['value_conv_kernel']}")
    if ok("dt_min", "dt_max") and values["dt_min"] > values["dt_max"]:
        c.fail(key("dt_min"), f"expected dt_min <= dt_max, got dt_min={values['dt_min']}, dt_max={values['dt_max']}")
    if ok("r_min", "r_max") and values["r_min"] >= values["r_max"]:
        c.fail(key("r_min"), f"expected r_min < r_max, got r_min={values['r_min']}, r_max={values['r_max']}")
    if mixer in ("s4", "s4d") and ok("d_state") and values["d_state"] % 2:
        c.fail(key("d_state"), f"expected an even int >= 2 (conjugate pairs), got {values['d_state']}")
    if mixer == "s5" and ok("state_size", "blocks"):
        size, blocks = values["state_size"], values["blocks"]
        if size % blocks:
            c.fail(key("blocks"), f"{blocks} does not divide state_size = {size}")
        elif values.get("conj_sym", True) and (size // blocks) % 2:
            c.fail(key("blocks"), f"conj_sym needs an even block size state_size / blocks, got {size} / {blocks} "
                                  f"= {size // blocks}")
    if ok("trunc_len", "state_size") and resolved.get("trunc_len") is not None \
            and resolved["trunc_len"] <= values["state_size"]:
        what = "the sequence length" if values["trunc_len"] == 0 else "trunc_len"
        c.fail(key("trunc_len"), f"must exceed state_size = {values['state_size']}; {what} is {resolved['trunc_len']}")
    if ok("l_max") and length is not None and resolved["l_max"] < length:
        c.fail(key("l_max"), f"{values['l_max']} is shorter than the sequence length {length}: the kernel is "
                             "defined up to l_max (0 takes the task's length)")


def _trace_mixer(c: _Checker, spec: lra.TaskSpec | None) -> None:
    """Builds the selected mixer as the encoder does and traces its init abstractly (no compilation)."""
    if spec is None:
        return
    import jax
    import jax.numpy as jnp

    from models.registry import make_mixer, mixer_class, mixer_options

    mixer = c.get("model.mixer")
    section = c.get(f"model.{mixer}")
    options = section.to_dict() if section is not None else {}
    length = task_length(c.config, spec)
    for name in LENGTH_OPTIONS:
        if options.get(name) == 0:
            options[name] = length
    bidirectional = c.get("model.bidirectional")
    if bidirectional is None:
        bidirectional = not getattr(mixer_class(mixer), "has_causal_form", True)
    d_model = c.get("model.d_model")
    dtype = jnp.dtype(c.get("model.dtype") or "float32")  # as the encoder builds its mixers
    if "dtype" in mixer_options(mixer):
        options["dtype"] = dtype
    try:
        module = make_mixer(mixer, d_model=d_model, bidirectional=bidirectional, **options)

        def init(x: jax.Array, mask: jax.Array) -> Any:
            key = jax.random.key(0)
            return module.init({"params": key, "dropout": key}, x, mask=mask)

        jax.eval_shape(init, jax.ShapeDtypeStruct((1, length, d_model), dtype),
                       jax.ShapeDtypeStruct((1, length), jnp.bool_))
    except (ValueError, TypeError, KeyError, NotImplementedError) as error:
        c.fail(f"model.{mixer}", f"mixer {mixer!r} cannot be built with these options (d_model={d_model}, "
                                 f"bidirectional={bidirectional}, length {length}): {type(error).__name__}: {error}")
