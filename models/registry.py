"""The mixer registry: every sequence mixer is built by name, and carries its contract.

A mixer is a Flax linen module with the interface of `SequenceMixer`:

    __call__(x, *, mask=None, deterministic=True) -> y        x, y: (B, L, D); mask: (B, L) bool, True = real token
    init_state(batch_size) -> state                            causal mixers with a recurrent step
    step(state, x_t) -> (state, y_t)                           x_t, y_t: (B, D)
    prefill(x) -> (state, y)                                   x, y: (B, P, D); the state after the P positions

Registering a mixer (the `register_mixer` decorator on its class, in its own module, plus the module's name in
models/__init__.py MIXER_MODULES) records a `MixerContract`: its options (a frozen dataclass with defaults,
ranges and allowed values), whether it has a causal and a bidirectional form and a recurrent step, the optimiser
groups its parameters use, its own option checks, the option values the configs start from, its published
recipe per task and its activation-memory model. Everything outside the mixer's module reads these through
`resolve_mixer(name, options, length=...)`, so the encoder, the trainer, validation, the memory estimate, the
configs and the benchmarks never name a mixer.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.options import LENGTH_OPTIONS, OPTION_RANGES, RESERVED_OPTIONS, Range, did_you_mean

_CONTRACTS: dict[str, MixerContract] = {}


class SequenceMixer(nn.Module):
    """Base class documenting the mixer interface.

    Attributes:
      d_model: width D of the inputs and outputs.
      bidirectional: if False the mixer is causal (output t depends on inputs <= t only) and provides
        `init_state` / `step` for recurrent decoding; if True it sees the whole sequence.
    """

    d_model: int
    bidirectional: bool = False

    # False for mixers that only exist in bidirectional form (e.g. Nystrom's landmarks average over the whole
    # sequence); the trainer then builds them bidirectional when the config leaves the direction open.
    has_causal_form: ClassVar[bool] = True

    def init_state(self, batch_size: int) -> Any:
        raise NotImplementedError(f"mixer {type(self).__name__} has no recurrent decoding state")

    def step(self, state: Any, x_t: Any) -> tuple[Any, Any]:
        raise NotImplementedError(f"mixer {type(self).__name__} has no recurrent decoding step")

    def prefill(self, x: Any) -> tuple[Any, Any]:
        """A prompt x (B, P, D), every position real, in one call -> (state, y): y (B, P, D) the outputs of the
        causal call (deterministic) and `state` the decoding state after position P - 1, the one `step` would
        have reached from `init_state` (so decoding continues with `step`; docs/methods.md section 18).

        This default steps the prompt token by token (a lax.scan of `step`: P sequential steps), so every mixer
        with a step has a prefill; mixers with a parallel form override it to compute the state from their
        parallel pass (the final state of a scan, a key-value cache filled at once, running sums).
        """
        state = self.init_state(x.shape[0])

        def body(state: Any, x_t: Any) -> tuple[Any, Any]:
            new_state, y_t = self.step(state, x_t)  # the carry keeps its dtypes (a float64 input, float32 state)
            return jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state), y_t

        state, y = jax.lax.scan(body, state, jnp.swapaxes(x, 0, 1))
        return state, jnp.swapaxes(y, 0, 1)

    def _check_causal_for_decoding(self) -> None:
        if self.bidirectional:
            raise ValueError(
                f"{type(self).__name__}: step-by-step decoding needs a causal mixer, "
                "but this one was built with bidirectional=True"
            )


class UnknownMixerError(KeyError):
    """Raised for a mixer name that is not registered or an option a mixer does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class _Required:
    """The default of an option that has none (the caller must pass it, e.g. d_model); repr `<required>`."""

    _instance: _Required | None = None

    def __new__(cls) -> _Required:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<required>"

    def __reduce__(self) -> str:  # pickles (and deep-copies) as the module-level singleton
        return "REQUIRED"


REQUIRED = _Required()


# ------------------------------------------------------------------------------------------------ contracts


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixerContext:
    """What a mixer's option check sees besides the options: the width and the sequence length (None: unknown)."""

    d_model: int
    length: int | None = None


# check(values, context, ok) -> [(option, message)]: the relations between a mixer's options that their ranges
# cannot express. `values` holds every option (the given ones over the defaults); `ok(*names)` is True when those
# options exist, are not None and have no problem so far (a relation is not also reported for a bad value).
OptionCheck = Callable[[Mapping[str, Any], MixerContext, Callable[..., bool]], Iterable[tuple[str, str]]]


def _option_number(options: Mapping[str, Any], name: str, default: float) -> float:
    value = options.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value else default


@dataclasses.dataclass(frozen=True, kw_only=True)
class ActivationModel:
    """Floats (4 bytes) a training step keeps, for experiments/memory.py's estimate before compilation.

    per_token(options, d): per token and layer; per_sequence(options, length, training): per sequence and layer
    beyond the per-token ones (e.g. dense attention's (H, L, L) scores); per_layer(options, d, length): per
    layer, independent of the batch (e.g. S4D's Vandermonde kernel). Fitted to XLA's compiled memory analysis
    of the trainer's step and rounded down (experiments/memory.py says how).
    """

    per_token: Callable[[Mapping[str, Any], int], float] = lambda o, d: 16 * d
    per_sequence: Callable[[Mapping[str, Any], int, bool], float] | None = None
    per_layer: Callable[[Mapping[str, Any], int, int], float] | None = None

    number = staticmethod(_option_number)  # options.get(name) as a float, `default` when unset, None or 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """A mixer's published settings on one task (docs/anchors.md), as plain values.

    model: config.model keys (n_layers, d_model, dropout, bidirectional, norm, residual, pooling);
    options: the mixer's own options; optim: config.optim keys; batch_size; the length of the run, either
    num_steps or epochs (turned into steps with the task's training-set size); warmup_fraction of the run;
    data: config.data keys the recipe fixes (e.g. the training length and corpus of a language model; nested
    dicts update the nested sections); source: where the numbers come from.
    """

    model: Mapping[str, Any]
    options: Mapping[str, Any]
    optim: Mapping[str, Any]
    batch_size: int
    num_steps: int | None = None
    epochs: int | None = None
    warmup_fraction: float | None = 0.1  # None: one epoch
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""

    def steps(self, train_size: int) -> int:
        """The run's length in steps: num_steps, or epochs of a training set of `train_size` examples."""
        if self.num_steps is not None:
            return self.num_steps
        return self.epochs * train_size // self.batch_size

    def warmup(self, train_size: int) -> float:
        """The warmup as a fraction of the run: `warmup_fraction`, or one epoch when it is None."""
        return self.warmup_fraction if self.warmup_fraction is not None else 1.0 / self.epochs


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return REQUIRED


def _module_options(cls: type[nn.Module]) -> dict[str, Any]:
    """A mixer class's option fields and their defaults (REQUIRED when none); d_model and bidirectional included."""
    return {f.name: _field_default(f) for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}


def _choices_of(annotation: Any) -> tuple[str, ...] | None:
    """The values of a StrEnum annotation (also inside `X | None`), else None."""
    for candidate in typing.get_args(annotation) or (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, str) and hasattr(candidate, "__members__"):
            return tuple(member.value for member in candidate)
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixerContract:
    """Everything the rest of the code may know about one registered mixer (see the module docstring).

    Attributes:
      name, module: the registry name and the Flax class.
      options: a frozen dataclass of the mixer's options (not d_model / bidirectional / dtype, which the encoder
        sets), with their defaults; each field's metadata holds its "range" (a models.options.Range, numeric
        options) and "choices" (the allowed values of a closed set, from a StrEnum annotation or the class's
        `supported_<option>s`).
      causal, bidirectional: whether the mixer has a causal form (output t sees inputs <= t) and a bidirectional
        one. step: whether its causal form decodes step by step (init_state / step).
      param_groups: the optimiser groups (models/param_groups.py) its parameters are created in.
      check: its option relations (OptionCheck), beyond ranges and choices.
      config_options: the options the configs expose under config.model.<name>, with the values they start
        from; cpu_options: what the small CPU budget changes among them.
      recipes: task -> Recipe, its published settings where it has them.
      memory: its ActivationModel.
    """

    name: str
    module: type[nn.Module]
    options: type
    causal: bool
    bidirectional: bool
    step: bool
    param_groups: tuple[str, ...]
    check: OptionCheck | None = None
    config_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cpu_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    recipes: Mapping[str, Recipe] = dataclasses.field(default_factory=dict)
    memory: ActivationModel = ActivationModel()

    def defaults(self) -> dict[str, Any]:
        """Every option with its default."""
        return {f.name: f.default for f in dataclasses.fields(self.options)}

    def ranges(self) -> dict[str, Range]:
        return {f.name: f.metadata["range"] for f in dataclasses.fields(self.options) if "range" in f.metadata}

    def choices(self) -> dict[str, tuple[Any, ...]]:
        return {f.name: f.metadata["choices"] for f in dataclasses.fields(self.options) if "choices" in f.metadata}

    def accepts(self, option: str) -> bool:
        """Whether the mixer's class has the field `option` (the reserved ones included)."""
        return option in _module_options(self.module)

    def check_options(self, given: Mapping[str, Any], context: MixerContext) -> list[tuple[str, str]]:
        """Problems of the options `given` (names known good), as (option, message): ranges and choices of the
        given values, then the mixer's relations on all values (given over defaults), with 0-valued length
        options read as context.length."""
        problems: list[tuple[str, str]] = []
        ranges, choices = self.ranges(), self.choices()
        for name, value in given.items():
            if name in ranges and value is not None:
                message = ranges[name].problem(value)
                if message:
                    problems.append((name, message))
            elif name in choices and value not in choices[name]:
                problems.append((name, f"expected one of {', '.join(map(repr, choices[name]))}, got {value!r}"
                                       f"{did_you_mean(str(value), choices[name]) if isinstance(value, str) else ''}"))
        if self.check is None:
            return problems
        values = {**self.defaults(), **given}
        bad = {name for name, _ in problems}

        def ok(*names: str) -> bool:
            return all(n in values and values[n] is not None and n not in bad for n in names)

        for name, message in self.check(values, context, ok):
            if name not in bad:
                problems.append((name, message))
                bad.add(name)
        return problems


def _options_dataclass(cls: type[nn.Module]) -> type:
    """The frozen options dataclass of a mixer class: its fields minus the reserved ones, with ranges/choices."""
    hints = typing.get_type_hints(cls)
    fields = []
    for option, default in _module_options(cls).items():
        if option in RESERVED_OPTIONS or option == "param_dtype":
            continue
        metadata: dict[str, Any] = {}
        supported = getattr(cls, f"supported_{option}s", None)
        choices = tuple(supported) if supported is not None else _choices_of(hints.get(option))
        if choices is not None:
            metadata["choices"] = choices
        if option in OPTION_RANGES:
            metadata["range"] = OPTION_RANGES[option]
        if isinstance(default, enum.Enum):  # a StrEnum member: its plain value (configs and JSON hold strings)
            default = default.value
        fields.append((option, hints.get(option, Any), dataclasses.field(default=default, metadata=metadata)))
    options = dataclasses.make_dataclass(f"{cls.__name__}Options", fields, frozen=True, kw_only=True)
    options.__module__ = cls.__module__
    return options


def _overrides(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(SequenceMixer, method)


def make_contract(name: str, cls: type[nn.Module], *, param_groups: Iterable[str] = (),
                  check: OptionCheck | None = None, config_options: Mapping[str, Any] | None = None,
                  cpu_options: Mapping[str, Any] | None = None, recipes: Mapping[str, Recipe] | None = None,
                  memory: ActivationModel | None = None) -> MixerContract:
    """The contract of mixer class `cls` registered as `name` (see MixerContract's attributes; the options, the
    directions and the step are read off the class)."""
    options = _options_dataclass(cls)
    known = {f.name for f in dataclasses.fields(options)}
    for what, given in (("config_options", config_options or {}), ("cpu_options", cpu_options or {})):
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"mixer {name!r}: {what} names option(s) it does not have: {', '.join(unknown)}")
    return MixerContract(
        name=name, module=cls, options=options, causal=bool(getattr(cls, "has_causal_form", True)),
        bidirectional=True, step=_overrides(cls, "step") and _overrides(cls, "init_state"),
        param_groups=tuple(param_groups), check=check, config_options=dict(config_options or {}),
        cpu_options=dict(cpu_options or {}), recipes=dict(recipes or {}), memory=memory or ActivationModel())


def register_mixer(name: str, **contract: Any) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a mixer under `name` with its contract (the keyword arguments of
    `make_contract`: param_groups, check, config_options, cpu_options, recipes, memory)."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _CONTRACTS and _CONTRACTS[name].module is not cls:
            raise ValueError(f"mixer name {name!r} is already registered to {_CONTRACTS[name].module.__name__}")
        _CONTRACTS[name] = make_contract(name, cls, **contract)
        return cls

    return decorator


def unregister_mixer(name: str) -> None:
    """Removes a registration (for tests that register a throwaway mixer)."""
    _CONTRACTS.pop(name, None)


def load_mixers() -> None:
    """Imports the built-in mixer modules (models/__init__.py MIXER_MODULES), which registers them."""
    from models import MIXER_MODULES

    for module in MIXER_MODULES:
        importlib.import_module(module)


def mixer_contract(name: str) -> MixerContract:
    """The contract of the mixer registered as `name`; UnknownMixerError (with a suggestion) for another name."""
    load_mixers()
    if name not in _CONTRACTS:
        raise UnknownMixerError(
            f"unknown mixer {name!r}{did_you_mean(name, _CONTRACTS)}; registered mixers are: {', '.join(mixer_names())}"
        )
    return _CONTRACTS[name]


@dataclasses.dataclass(frozen=True)
class ResolvedMixer:
    """A mixer name with checked option names: its contract and its options (the frozen dataclass)."""

    contract: MixerContract
    options: Any

    @property
    def name(self) -> str:
        return self.contract.name

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict (every option, defaults included)."""
        return {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}

    def direction(self, bidirectional: bool | None) -> bool:
        """The direction a config asks for, with None (unset) meaning causal where the mixer has a causal form."""
        return (not self.contract.causal) if bidirectional is None else bool(bidirectional)

    def build(self, d_model: int, *, bidirectional: bool | None = None, dtype: Any = None,
              init_scale: float | None = None) -> nn.Module:
        """The Flax module. dtype and init_scale (DeepNorm's beta) are passed only to mixers that take them."""
        kwargs = self.as_dict()
        if dtype is not None and self.contract.accepts("dtype"):
            kwargs["dtype"] = dtype
        if init_scale is not None and "init_scale" in kwargs:
            kwargs["init_scale"] = init_scale
        return self.contract.module(d_model=d_model, bidirectional=self.direction(bidirectional), **kwargs)


def resolve_mixer(name: str, options: Mapping[str, Any] | None = None, *, length: int | None = None
                  ) -> ResolvedMixer:
    """The mixer `name` with `options` over its defaults; length options set to 0 become `length` when given.

    Raises UnknownMixerError for an unknown name or option (with a suggestion), ValueError for an option the
    encoder sets itself (d_model, bidirectional, dtype). Values are not range-checked here: see
    MixerContract.check_options (experiments/validation.py reports its problems under the config's keys).
    """
    contract = mixer_contract(name)
    given = dict(options or {})
    reserved = sorted(set(given) & set(RESERVED_OPTIONS))
    if reserved:
        raise ValueError(f"mixer {name!r}: option(s) {', '.join(reserved)} are set by the encoder "
                         f"({', '.join('config.' + RESERVED_OPTIONS[r] for r in reserved)})")
    known = contract.defaults()
    unknown = sorted(set(given) - set(known))
    if unknown:
        named = ", ".join(f"{option!r}{did_you_mean(option, known)}" for option in unknown)
        raise UnknownMixerError(f"mixer {name!r} has no option(s) {named}; its options are: {', '.join(sorted(known))}")
    if length is not None:
        for option in LENGTH_OPTIONS:
            if given.get(option, known.get(option)) == 0 and option in known:
                given[option] = int(length)
    return ResolvedMixer(contract, contract.options(**given))


def mixer_names() -> list[str]:
    """Names of all registered mixers, sorted."""
    load_mixers()
    return sorted(_CONTRACTS)


def mixer_class(name: str) -> type[nn.Module]:
    """The Flax class of the mixer registered as `name`."""
    return mixer_contract(name).module


def mixer_options(name: str) -> dict[str, Any]:
    """The fields a mixer's class accepts, with their defaults (`REQUIRED`, shown as <required>, when it has
    none): d_model and bidirectional included."""
    return _module_options(mixer_class(name))


def make_mixer(name: str, **options: Any) -> nn.Module:
    """Builds the mixer registered as `name` with the given fields (e.g. d_model=128, bidirectional=True)."""
    cls = mixer_class(name)
    known = mixer_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        named = ", ".join(f"{option!r}{did_you_mean(option, known)}" for option in unknown)
        raise UnknownMixerError(f"mixer {name!r} has no option(s) {named}; its options are: {', '.join(sorted(known))}")
    return cls(**options)
