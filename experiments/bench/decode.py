"""The decode suite: one decoding step (mixer.step) at context lengths L for every causal mixer.

Every mixer with init_state / step, against softmax attention with a key-value cache of L entries. Recurrent
mixers carry a state whose size does not depend on the context; key-value-cache mixers attend over all L.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
    compile_case,
    memory_budget_bytes,
    time_interleaved,
)
from experiments.bench.mixers import _selected_mixers, resolve_for_bench

if TYPE_CHECKING:
    from models.registry import MixerContract


def _has_decoding(contract: MixerContract) -> tuple[bool, str | None]:
    """(True, None) when the mixer's contract says it can decode (a causal form with a recurrent step:
    init_state / step), else (False, why)."""
    if not contract.causal:
        return False, "no causal form (its contract has causal = False)"
    if not contract.step:
        return False, "does not implement init_state / step (its contract has step = False)"
    return True, None


def _decode_case(
    name: str, context: int, settings: Settings, row: dict[str, Any], variables_cache: dict[str, Any]
) -> Case:
    """Compiles one mixer.step on a state that stands for `context` tokens.

    Key-value-cache mixers (those with a max_decode_len option) get a cache of `context` entries filled with
    random keys / values and every integer counter (the cache index) at context - 1: the timed step writes
    token `context` and attends over all `context`; the counter is put back after each step so every call sees
    the same context. Recurrent mixers have a state whose size does not depend on the context: the step is
    timed from init_state, feeding each call's state into the next.

    Parameters do not depend on max_decode_len, so they are initialised once per mixer and set of other
    options and kept in `variables_cache` (each initialisation compiles the mixer's parallel form).
    """
    from models import param_groups

    # The model's own length options (S4's l_max, RTF's trunc_len) stay at --decode_model_length, the length
    # it would have been trained at: only the key-value cache follows the context.
    resolved = resolve_for_bench(name, settings.decode_model_length, cache_length=context,
                                 overrides=settings.mixer_overrides)
    options = resolved.as_dict()
    row["options"] = _jsonable(options)
    mixer = resolved.build(settings.d_model, bidirectional=False)
    batch = settings.decode_batch
    kv_cache = "max_decode_len" in resolved.contract.defaults()
    row["state_kind"] = "key_value_cache" if kv_cache else "constant_size"
    rng = np.random.default_rng(settings.seed)
    x_init = jnp.asarray(rng.standard_normal((batch, min(context, 128), settings.d_model), np.float32))
    x_t = jnp.asarray(rng.standard_normal((batch, settings.d_model), np.float32))

    def is_counter(leaf: jax.Array) -> bool:
        return jnp.issubdtype(leaf.dtype, jnp.integer) and leaf.ndim == 0

    other_options = {k: v for k, v in options.items() if k != "max_decode_len"}
    cache_key = json.dumps(_jsonable({"name": name, **other_options}), sort_keys=True)
    if cache_key not in variables_cache:
        init = jax.jit(lambda key: param_groups.unbox(mixer.init(key, x_init)))
        variables_cache[cache_key] = init(jax.random.key(settings.seed))
    variables = variables_cache[cache_key]
    state = mixer.apply(variables, batch, method="init_state")
    if kv_cache:
        # Random keys / values from numpy (no compilation), the counters at context - 1.
        state = jax.tree.map(
            lambda leaf: jnp.full_like(leaf, context - 1)
            if is_counter(leaf)
            else jnp.asarray(rng.standard_normal(leaf.shape, np.float32)).astype(leaf.dtype)
            if jnp.issubdtype(leaf.dtype, jnp.inexact)
            else leaf,
            state,
        )
    row["state_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(state)))

    def decode_step(state, variables, x_t):
        new_state, y_t = mixer.apply(variables, state, x_t, method="step")
        if kv_cache:  # hold the context length fixed: restore the integer counters
            new_state = jax.tree.map(lambda new, old: old if is_counter(old) else new, new_state, state)
        return new_state, y_t

    return compile_case(
        row,
        decode_step,
        (state, variables, x_t),
        memory_budget_bytes(settings),
        # Donated (updated in place) only for key-value caches, where copying the cache every step would
        # distort the measurement. Not for the small constant-size states: with the S4 step, feeding a
        # donated state back hangs the XLA CPU runtime after a few to a few dozen calls (jax 0.10.2;
        # the same loop without donation runs).
        donate_argnums=(0,) if kv_cache else (),
    )


def decode_suite(settings: Settings, checkpoint: Callable[[], None], results: dict[str, Any]) -> None:
    """Runs the decode suite into `results` ("causal_mixers", "rows"): one decoding step per selected mixer and
    context, constant-size states and key-value caches timed in separate groups; `checkpoint()` after every
    context. Mixers that cannot decode get "not_applicable" rows."""
    from models.registry import mixer_contract

    names = _selected_mixers(settings)
    rows: list[dict[str, Any]] = results.setdefault("rows", [])
    decoding = {name: _has_decoding(mixer_contract(name)) for name in names}
    results["causal_mixers"] = [n for n in names if decoding[n][0]]
    if not decoding.get(SOFTMAX, (False,))[0]:
        results["note"] = f"baseline {SOFTMAX!r} with a key-value cache is not registered (or cannot decode)"
    variables_cache: dict[str, Any] = {}
    for context in settings.decode_lengths:
        cases = []
        for name in names:
            row = _new_row(
                name, mixer=name, context=context, batch=settings.decode_batch, d_model=settings.d_model
            )
            can_decode, why_not = decoding[name]
            if not can_decode:
                row.update(status="not_applicable", reason=why_not)
            else:
                try:
                    cases.append(_decode_case(name, context, settings, row, variables_cache))
                except Exception as exc:  # noqa: BLE001
                    row.update(status="error", reason=f"build: {_error_text(exc)}")
            rows.append(row)
        # Constant-size states and key-value caches are timed in separate interleaved groups: a 16K cache
        # (tens of MB) run between two calls of a small recurrent step evicts that step's state from the CPU
        # caches, which made the recurrent steps look slower at long contexts although they run the same program.
        for kind in ("constant_size", "key_value_cache"):
            time_interleaved(
                [c for c in cases if c.row.get("state_kind") == kind and not settings.compile_only],
                settings.repeats,
                settings.min_repeat_seconds,
                settings.case_budget_seconds,
                settings.hang_seconds,
            )
        context_rows = [r for r in rows if r["context"] == context]
        softmax = next((r for r in context_rows if r["mixer"] == SOFTMAX), None)
        for row in context_rows:
            row["speedup_vs_softmax"] = _ratio(_median(softmax), _median(row))
        del cases
        checkpoint()
