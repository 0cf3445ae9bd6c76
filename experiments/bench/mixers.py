"""The mixers suite: the trainer's training step for every registered mixer as L grows, against softmax.

One step of experiments.trainer (forward, backward, AdamW update, non-finite checks; `make_train_step`) of the
same small encoder for every mixer, built by the trainer's own functions (`build_model`, `create_state`) from a
config made here (`trainer_config`), against dense softmax attention (models.BASELINE_MIXER): the LRA speed
table on this hardware. Also the benchmark's mixer options (`mixer_options_for`, --mixer_option), which the
decode suite uses too: read from the mixer's registry contract (models.registry.resolve_mixer), like the
trainer's.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.core import (
    SOFTMAX,
    Case,
    Settings,
    _error_text,
    _jsonable,
    _median,
    _new_row,
    _ratio,
    _temp,
    compile_case,
    memory_budget_bytes,
    time_interleaved,
)

if TYPE_CHECKING:
    import ml_collections

    import lra
    from models.registry import ResolvedMixer

# The classifier's classes, the longest prefix the parameters are initialised on (see _train_step_case) and the
# schedule length given to the optimiser (train.num_steps of the config).
NUM_CLASSES = 10
INIT_LENGTH = 256
OPTIMIZER_STEPS = 1000


def import_model_modules() -> dict[str, str]:
    """Imports `models` and every module in the package, so each mixer registers itself (also mixers whose
    module is not yet imported by models/__init__.py). Returns {module: error} for modules that failed."""
    import models

    failures = {}
    for module in pkgutil.iter_modules(models.__path__):
        try:
            importlib.import_module(f"models.{module.name}")
        except Exception as exc:  # noqa: BLE001 -- a half-written module must not stop the benchmark
            failures[f"models.{module.name}"] = _error_text(exc)
    return failures


def parse_mixer_overrides(overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{NAME: {OPTION: VALUE}} from ["NAME.OPTION=VALUE", ...]; values are Python literals (else strings).

    Raises ValueError naming the --mixer_option entry that is not NAME.OPTION=VALUE."""
    import ast

    parsed: dict[str, dict[str, Any]] = {}
    for entry in overrides:
        key, sep, text = entry.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not name or not option:
            raise ValueError(f"--mixer_option={entry!r}: expected NAME.OPTION=VALUE, e.g. softmax.num_heads=1")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        parsed.setdefault(name, {})[option] = value
    return parsed


def resolve_for_bench(
    name: str, length: int, cache_length: int | None = None, overrides: Sequence[str] = ()
) -> ResolvedMixer:
    """Mixer `name` as the benchmark builds it (models.registry.resolve_mixer): the options its contract says
    the configs start from (`config_options`, what experiments/configs/base.py holds under config.model.<name>),
    then `overrides` (--mixer_option entries for `name`; the others are ignored), over the mixer's defaults. A
    length option (models.options.LENGTH_OPTIONS) left at 0 takes `length`, except max_decode_len, which takes
    `cache_length` when given; one set to a positive value (by an override) keeps it.

    Raises ValueError naming the --mixer_option entries of an option the mixer does not have (with the
    registry's suggestion), of an option the encoder sets itself (d_model, bidirectional, dtype), or of a mixer
    that is not registered; models.registry.UnknownMixerError (a KeyError) for an unregistered `name` without
    overrides."""
    from models.registry import UnknownMixerError, mixer_contract, resolve_mixer

    given = parse_mixer_overrides(overrides).get(name, {})
    contract = None
    try:
        contract = mixer_contract(name)
        options = {**contract.config_options, **given}
        defaults = contract.defaults()
        if cache_length is not None and "max_decode_len" in defaults \
                and options.get("max_decode_len", defaults["max_decode_len"]) == 0:
            options["max_decode_len"] = cache_length
        return resolve_mixer(name, options, length=length)
    except (UnknownMixerError, ValueError) as error:
        if not given:
            raise
        known = contract.defaults() if contract is not None else {}
        bad = [option for option in given if option not in known] or list(given)
        flags = ", ".join(f"--mixer_option={name}.{option}" for option in bad)
        raise ValueError(f"{flags}: {error}") from None


def mixer_options_for(
    name: str, length: int, cache_length: int | None = None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The options the benchmark builds `name` with, every one (defaults included) as a plain dict
    (`ResolvedMixer.as_dict()`): see `resolve_for_bench` for where they come from and the errors."""
    return resolve_for_bench(name, length, cache_length, overrides).as_dict()


def trainer_config(name: str, length: int, settings: Settings) -> tuple[ml_collections.ConfigDict, lra.TaskSpec]:
    """The trainer's config and task for one case of the mixers suite.

    The config is `experiments.configs.base.base_config()` with the benchmark's seed and model: mixer `name`
    with the options of `mixer_options_for(name, length, overrides=settings.mixer_overrides)` (every option,
    the length options at 0 set to `length`), `settings.d_model`, `settings.n_layers` and
    `settings.bidirectional`; everything else (norm, residual, dropout, pooling, dtype, the optimiser) is the
    base config's. The task is a token task made
    for the benchmark (not an LRA task): `length` tokens of `settings.vocab_size` ids (0 = padding) and
    NUM_CLASSES classes."""
    import ml_collections

    import lra
    from experiments.configs.base import base_config

    options = mixer_options_for(name, length, overrides=settings.mixer_overrides)
    config = base_config()
    config.seed = settings.seed
    config.model.mixer = name
    config.model.d_model = settings.d_model
    config.model.n_layers = settings.n_layers
    config.model.bidirectional = settings.bidirectional
    config.model[name] = ml_collections.ConfigDict(options)
    config.train.batch_size = settings.mixer_batch
    config.train.num_steps = OPTIMIZER_STEPS
    spec = lra.TaskSpec(name="bench", seq_len=length, vocab_size=settings.vocab_size, num_classes=NUM_CLASSES,
                        dual_input=False, description="random tokens for experiments.bench")
    return config, spec


def _train_step_case(name: str, length: int, settings: Settings, row: dict[str, Any]) -> Case:
    """Compiles the trainer's own training step for mixer `name` on a batch of (settings.mixer_batch, length)
    random tokens: the model of `experiments.trainer.build_model`, the state of `create_state` and the step of
    `make_train_step` (loss, gradients, AdamW update, the non-finite checks and the step's metrics), for the
    config and task of `trainer_config`."""
    from experiments import trainer

    config, spec = trainer_config(name, length, settings)
    row["options"] = _jsonable(config.model[name].to_dict())
    model = trainer.build_model(config, spec)
    # Initialise on a short prefix: parameters must not depend on L (checked against the abstract full-length
    # init), and a full-length init of dense attention would itself need the (B, H, L, L) scores.
    init_spec = dataclasses.replace(spec, seq_len=min(length, INIT_LENGTH))
    if init_spec.seq_len != length:
        shapes = [
            jax.tree.map(lambda x: (x.shape, x.dtype),
                         jax.eval_shape(lambda s=s: trainer.init_variables(model, config, s)))
            for s in (init_spec, spec)
        ]
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"mixer {name!r}: variable shapes depend on the input length; the benchmark initialises "
                f"on {init_spec.seq_len} tokens and cannot reuse them at {length}"
            )
    state, tx, _ = trainer.create_state(model, config, init_spec)
    # Inputs from numpy: eager jax.random calls would each compile a small program. Ids from 1: no padding.
    rng = np.random.default_rng(settings.seed)
    batch = {
        "inputs": jnp.asarray(rng.integers(1, settings.vocab_size, (settings.mixer_batch, length), dtype=np.int32)),
        "labels": jnp.asarray(rng.integers(0, NUM_CLASSES, (settings.mixer_batch,), dtype=np.int32)),
    }
    prepare = functools.partial(trainer.model_inputs, spec=spec, input_encoding=config.model.input_encoding)
    train_step = trainer.make_train_step(model, tx, config.seed, prepare)
    row["parameters"] = int(sum(x.size for x in jax.tree.leaves(state["params"])))
    # Not donated (the trainer jits this step with donate_argnums=(0,)): every call restarts from the same state,
    # so all repetitions time the same step (make_train_step returns the unjitted step; donation is the caller's).
    return compile_case(row, train_step, (state, batch), memory_budget_bytes(settings))


def _selected_mixers(settings: Settings) -> list[str]:
    """--mixers, or every registered mixer when it is empty; ValueError naming mixers that are not registered."""
    from models import mixer_names

    registered = mixer_names()
    if not settings.mixers:
        return registered
    unknown = [m for m in settings.mixers if m not in registered]
    if unknown:
        raise ValueError(f"--mixers: {unknown} not registered; registered mixers are {registered}")
    return list(settings.mixers)


def mixers_suite(settings: Settings, checkpoint: Callable[[], None], results: dict[str, Any]) -> None:
    """Runs the mixers suite into `results` ("mixers", "softmax_baseline", "rows"): one training step per
    selected mixer and length, the mixers of one length timed together; `checkpoint()` after every length."""
    names = _selected_mixers(settings)
    results["mixers"] = names
    results["softmax_baseline"] = SOFTMAX if SOFTMAX in names else None
    if SOFTMAX not in names:
        results["note"] = (
            f"baseline mixer {SOFTMAX!r} is not registered (or not selected): no ratios vs softmax"
        )
    rows: list[dict[str, Any]] = results.setdefault("rows", [])
    for length in settings.mixer_lengths:
        cases = []
        for name in names:
            row = _new_row(
                name,
                mixer=name,
                length=length,
                batch=settings.mixer_batch,
                d_model=settings.d_model,
                n_layers=settings.n_layers,
                bidirectional=settings.bidirectional,
            )
            try:
                cases.append(_train_step_case(name, length, settings, row))
            except Exception as exc:  # noqa: BLE001
                row.update(status="error", reason=f"build: {_error_text(exc)}")
            rows.append(row)
        time_interleaved(
            cases if not settings.compile_only else [],
            settings.repeats,
            settings.min_repeat_seconds,
            settings.case_budget_seconds,
            settings.hang_seconds,
        )
        _versus_softmax([r for r in rows if r["length"] == length])
        del cases
        checkpoint()


def _versus_softmax(rows: list[dict[str, Any]]) -> None:
    """Adds speedup_vs_softmax and memory_ratio_vs_softmax to the rows of one length."""
    softmax = next((r for r in rows if r["mixer"] == SOFTMAX), None)
    for row in rows:
        row["speedup_vs_softmax"] = _ratio(_median(softmax), _median(row))
        row["memory_ratio_vs_softmax"] = _ratio(_temp(row), _temp(softmax))
