"""The mixer registry: every sequence mixer is built by name.

A mixer is a Flax linen module with the interface of `SequenceMixer`:

    __call__(x, *, mask=None, deterministic=True) -> y        x, y: (B, L, D); mask: (B, L) bool, True = real token
    init_state(batch_size) -> state                            causal mixers only
    step(state, x_t) -> (state, y_t)                           x_t, y_t: (B, D); causal mixers only

Register a new mixer with the `register_mixer` decorator; the encoder and the trainer find it by name,
so neither needs to change. `make_mixer(name, d_model=..., **options)` checks the options against the
mixer's fields and names any that it does not know.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import flax.linen as nn

_MIXERS: dict[str, type[nn.Module]] = {}


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


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean "x"?)' naming the candidates closest to `name`, or "": difflib ratio >= 0.6 and within
    0.1 of the best (at most three, best first), case-insensitive.

    The same rule as experiments.validation.did_you_mean (which also matches dotted keys by their last
    component), repeated so that models/ never imports experiments/ (and validation's first stage no JAX).
    """
    candidates = [str(c) for c in candidates]
    if name in candidates:
        return ""
    scored = sorted(((difflib.SequenceMatcher(None, str(name).lower(), c.lower()).ratio(), c) for c in candidates),
                    key=lambda pair: -pair[0])
    matches = [c for ratio, c in scored if ratio >= max(0.6, scored[0][0] - 0.1)][:3] if scored else []
    if not matches:
        return ""
    quoted = [f'"{m}"' for m in matches]
    return f" (did you mean {', '.join(quoted[:-1]) + ' or ' if len(quoted) > 1 else ''}{quoted[-1]}?)"


def register_mixer(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a mixer under `name`."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MIXERS and _MIXERS[name] is not cls:
            raise ValueError(f"mixer name {name!r} is already registered to {_MIXERS[name].__name__}")
        _MIXERS[name] = cls
        return cls

    return decorator


def mixer_names() -> list[str]:
    """Names of all registered mixers, sorted."""
    return sorted(_MIXERS)


def mixer_class(name: str) -> type[nn.Module]:
    if name not in _MIXERS:
        raise UnknownMixerError(
            f"unknown mixer {name!r}{did_you_mean(name, _MIXERS)}; registered mixers are: {', '.join(mixer_names())}"
        )
    return _MIXERS[name]


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return REQUIRED


def mixer_options(name: str) -> dict[str, Any]:
    """The options a mixer accepts, with their defaults (`REQUIRED`, shown as <required>, when it has none)."""
    cls = mixer_class(name)
    skip = {"parent", "name"}
    return {f.name: _default(f) for f in dataclasses.fields(cls) if f.name not in skip}


def make_mixer(name: str, **options: Any) -> nn.Module:
    """Builds the mixer registered as `name` with the given options (e.g. d_model=128, bidirectional=True)."""
    cls = mixer_class(name)
    known = mixer_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        named = ", ".join(f"{option!r}{did_you_mean(option, known)}" for option in unknown)
        raise UnknownMixerError(f"mixer {name!r} has no option(s) {named}; its options are: {', '.join(sorted(known))}")
    return cls(**options)
