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
the device count (the trainer's mesh does, experiments/steps.py DataParallel.check_batch_size).

The checks run in two stages: the first needs no JAX (a bad training flag fails before JAX is imported); the
second imports the mixers (models/) for their option lists.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections

import lra
from models.options import (  # noqa: F401  (LENGTH_OPTIONS, OPTION_RANGES: re-exported for the tests)
    LENGTH_NOTE,
    LENGTH_OPTIONS,
    MAX_BATCH,
    MAX_CHECKPOINTS,
    MAX_EXAMPLES,
    MAX_LAYERS,
    MAX_LENGTH,
    MAX_SEED,
    MAX_STEPS,
    MAX_WIDTH,
    OPTION_RANGES,
    RESERVED_OPTIONS,
    Range,
    did_you_mean,
    int_from,
    int_from_zero,
    number_from_zero,
    positive_int,
    positive_number,
    unit_interval,
)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
NOT_TASK_FILES = ("__init__.py", "base.py", "common.py")

# The trainer's own tuples (experiments/trainer.py), repeated here so that the first stage needs no JAX;
# tests/experiments/test_validation.py checks that they agree.
INPUT_ENCODINGS = ("embed", "linear")
NONFINITE_POLICIES = ("stop", "skip")
DATA_SOURCES = tuple(source.value for source in lra.DataSource)



# ------------------------------------------------------------------------------------------------------ errors


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
        """The keys of every problem, in order ("train.batch_size", ...)."""
        return [p.key for p in self.problems]

    @property
    def key(self) -> str:
        """The key of the first problem."""
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
        """Whether a leaf may hold `value` (see the class docstring for int, float and bool)."""
        if value is None:
            return self.nullable
        if isinstance(value, bool):
            return bool in self.types
        if isinstance(value, int) and float in self.types:
            return True
        return isinstance(value, tuple(t for t in self.types if t is not bool))

    def describe(self) -> str:
        """The accepted types in words, for messages: 'an int or None'."""
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


# Every numeric key of the schema (base.py and the task files' keys); tests/experiments/test_validation.py checks
# that none is missing.
RANGES: dict[str, Range] = {
    "seed": int_from_zero(MAX_SEED, " (jax.random.key uses 32 bits)"),
    "data.seq_len": int_from_zero(MAX_LENGTH, LENGTH_NOTE),
    "data.split_seed": int_from_zero(MAX_SEED),
    "data.permutation_seed": int_from_zero(MAX_SEED),
    "data.val_size": positive_int(MAX_EXAMPLES),
    "data.val_fraction": unit_interval(low_open=True),
    "model.d_model": positive_int(MAX_WIDTH),
    "model.n_layers": positive_int(MAX_LAYERS),
    "model.dropout": unit_interval(),
    "optim.lr": positive_number(1.0),
    "optim.ssm_lr": positive_number(1.0),
    "optim.weight_decay": number_from_zero(10.0),
    "optim.warmup_steps": int_from_zero(MAX_STEPS),
    "optim.end_lr_fraction": unit_interval(high_open=False),
    "optim.b1": unit_interval(),
    "optim.b2": unit_interval(),
    "optim.clip_norm": number_from_zero(1e6, " (0 = no clipping)"),
    "train.batch_size": positive_int(MAX_BATCH),
    "train.eval_batch_size": positive_int(MAX_BATCH),
    "train.num_steps": int_from_zero(MAX_STEPS),
    "train.eval_every": positive_int(MAX_STEPS),
    "train.checkpoint_every": positive_int(MAX_STEPS),
    "train.log_every": positive_int(MAX_STEPS),
    "train.keep_checkpoints": positive_int(MAX_CHECKPOINTS),
    "train.max_consecutive_skips": positive_int(MAX_STEPS),  # with nonfinite="skip": stop after this many
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
        allowed = spec.sources
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
        _check_task_data(c, spec)
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
    if spec.fixed_length and seq_len not in (0, spec.seq_len):
        c.fail("data.seq_len", f"task {spec.name!r} has a fixed length of {spec.seq_len} (its pixels are never "
                               f"padded or cut): expected 0 or {spec.seq_len}, got {seq_len}")


def _check_task_data(c: _Checker, spec: lra.TaskSpec) -> None:
    """The task's own data section (config.data.<spec.data_section>), from its contract (lra/tasks.py TaskSpec):
    int ranges and closed sets of the keys it sets, then the task's relations (its generator settings, a batch no
    larger than a generated train split, a sequence length that holds the longest example)."""
    if spec.data_section is None:
        return
    section = f"data.{spec.data_section}"
    for key, (low, high) in spec.data_ranges.items():
        if c.has(f"{section}.{key}"):
            c.in_range(f"{section}.{key}", int_from(low, high))
    for key, allowed in spec.data_choices.items():
        c.choice(f"{section}.{key}", allowed)
    values = None
    if c.has(section) and _is_section(c.get(section)):
        values = {k: c.get(f"{section}.{k}") for k in c.get(section).keys() if c.usable(f"{section}.{k}")}
    context = lra.DataContext(
        source=c.get("data.source") if c.usable("data.source") else None,
        seq_len=task_length(c.config, spec) if c.usable("data.seq_len") else None,
        batch_size=c.get("train.batch_size") if c.usable("train.batch_size") else None)
    for key, message in spec.check_data(values, context) if spec.check_data else ():
        c.fail(key, message)


# --------------------------------------------------------------------------------------- stage 2 (mixers)


def _option_types(cls: type, choices: Any = ()) -> dict[str, FieldType | None]:
    """Field name -> accepted types from its annotation (None: not checked, e.g. Any or a callable); an option
    with a closed set of string values (`choices`, e.g. a StrEnum annotation) takes a string."""
    simple = {"int": int, "float": float, "bool": bool, "str": str}
    out: dict[str, FieldType | None] = {}
    for field in dataclasses.fields(cls):
        if field.name in choices and all(isinstance(v, str) for v in choices[field.name]):
            out[field.name] = FieldType((str,))
            continue
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


def _check_model(c: _Checker, spec: lra.TaskSpec | None) -> None:
    from models import encoder as encoder_lib
    from models.registry import mixer_contract, mixer_names, mixer_options

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
        contract = mixer_contract(key)
        _check_option_names(c, key, mixer_options(key), _option_types(contract.module, contract.choices()))

    if not c.usable("model.mixer"):
        return
    mixer = c.get("model.mixer")
    if mixer not in mixer_names():
        c.fail("model.mixer", f"unknown mixer {mixer!r}{_suggest_value(mixer, mixer_names())}; registered mixers "
                              f"are: {', '.join(mixer_names())}", unknown_name=True)
        return
    contract = mixer_contract(mixer)
    if c.get("model.bidirectional") is False and not contract.causal:
        c.fail("model.bidirectional", f"mixer {mixer!r} has no causal form: set it to True or leave it unset "
                                      "(None)")
    if spec is not None and spec.causal:  # targets predicted from the past: nothing may see the future
        if not contract.causal:
            c.fail("model.mixer", f"task {spec.name!r} predicts each position from the past, and mixer {mixer!r} has "
                                  "no causal form")
        elif c.get("model.bidirectional") is True:
            c.fail("model.bidirectional", f"task {spec.name!r} predicts each position from the past: set it to "
                                          "False or leave it unset (None)")
        if c.usable("model.norm") and c.get("model.norm") == "batch":
            c.fail("model.norm", f"task {spec.name!r} predicts each position from the past, and BatchNorm's "
                                 "training statistics span the whole sequence (the future too): use 'layer'")
    if not c.has_problem(f"model.{mixer}"):
        _check_mixer_values(c, contract, spec)


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


def _check_mixer_values(c: _Checker, contract: Any, spec: lra.TaskSpec | None) -> None:
    """Ranges, allowed values and relations of the selected mixer's options (their names and types are known
    good by now), from its contract (models/registry.py MixerContract.check_options): ranges and allowed values
    on the options the section sets, relations on the values the mixer will get; each problem is reported under
    the key to change."""
    from models.registry import MixerContext

    section = f"model.{contract.name}"
    given = {k: c.get(f"{section}.{k}") for k in (c.config.model[contract.name].keys() if c.has(section) else ())}
    length = task_length(c.config, spec) if spec is not None else None
    context = MixerContext(d_model=c.get("model.d_model"), length=length)
    for option, message in contract.check_options(given, context):
        c.fail(f"{section}.{option}", message)


def _trace_mixer(c: _Checker, spec: lra.TaskSpec | None) -> None:
    """Builds the selected mixer as the encoder does and traces its init abstractly (no compilation)."""
    if spec is None:
        return
    import jax
    import jax.numpy as jnp

    from models.registry import resolve_mixer

    mixer = c.get("model.mixer")
    section = c.get(f"model.{mixer}")
    length = task_length(c.config, spec)
    d_model = c.get("model.d_model")
    dtype = jnp.dtype(c.get("model.dtype") or "float32")  # as the encoder builds its mixers
    bidirectional = c.get("model.bidirectional")
    try:
        resolved = resolve_mixer(mixer, section.to_dict() if section is not None else {}, length=length)
        bidirectional = resolved.direction(bidirectional)
        module = resolved.build(d_model, bidirectional=bidirectional, dtype=dtype)

        def init(x: jax.Array, mask: jax.Array) -> Any:
            key = jax.random.key(0)
            return module.init({"params": key, "dropout": key}, x, mask=mask)

        jax.eval_shape(init, jax.ShapeDtypeStruct((1, length, d_model), dtype),
                       jax.ShapeDtypeStruct((1, length), jnp.bool_))
    except (ValueError, TypeError, KeyError, NotImplementedError) as error:
        c.fail(f"model.{mixer}", f"mixer {mixer!r} cannot be built with these options (d_model={d_model}, "
                                 f"bidirectional={bidirectional}, length {length}): {type(error).__name__}: {error}")
