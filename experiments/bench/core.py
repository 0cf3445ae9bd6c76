"""What every suite of the benchmark shares: the settings, the case compiler with its memory guard, and the
interleaved timer.

A suite builds rows (`_new_row`), turns each into a `Case` with `compile_case` (jit, compile, XLA's memory
analysis, the --max_memory_gb guard) and times the runnable cases of one size together with `time_interleaved`.
The underscored helpers (`_error_text`, `_jsonable`, `_median`, `_temp`, `_ratio`, `_gib`, `_describe`) are
shared inside the package only. The method is described in the package docstring (experiments/bench/__init__.py).
"""

from __future__ import annotations

import dataclasses
import faulthandler
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from models import BASELINE_MIXER

# The dense-attention reference every mixer's ratios are taken against (named by the registry); the rows' and
# the summary's keys call it softmax (speedup_vs_softmax, softmax_baseline).
SOFTMAX = BASELINE_MIXER
SCAN_METHODS = ("sequential", "associative", "chunked", "auto")
SCAN_BASELINES = ("associative_scan_autodiff", "lax_scan_autodiff")
NUMPY_COPY = "numpy_copy"
A_KINDS = ("time_invariant", "time_varying")
SUITES = ("scan", "mixers", "decode")
GIB = 1024**3
# --max_memory_gb when not given: at most this, and at most half of the machine's memory (memory_budget_bytes).
DEFAULT_MAX_MEMORY_GB = 10.0


# --------------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass
class Settings:
    """Everything a run depends on (the flags, as one value that tests can build directly)."""

    suites: Sequence[str] = SUITES
    out: str = "/tmp/bench/bench.json"
    plots: bool = True
    scan_lengths: Sequence[int] = (1024, 4096, 16384, 65536)
    scan_batch: int = 16
    scan_state: int = 256
    scan_methods: Sequence[str] = SCAN_METHODS
    scan_a_kinds: Sequence[str] = A_KINDS
    mixers: Sequence[str] = ()  # empty = every registered mixer
    mixer_lengths: Sequence[int] = (1024, 2048, 4096, 8192, 16384)
    mixer_batch: int = 4
    d_model: int = 64
    n_layers: int = 2
    vocab_size: int = 256
    bidirectional: bool = True
    decode_lengths: Sequence[int] = (1024, 4096, 16384)
    decode_batch: int = 4
    decode_model_length: int = 1024
    repeats: int = 5
    min_repeat_seconds: float = 0.05
    case_budget_seconds: float = 60.0
    max_memory_gb: float | None = None  # None: min(DEFAULT_MAX_MEMORY_GB, half the machine's memory)
    hang_seconds: float = 1800.0
    import_all_model_modules: bool = True
    seed: int = 0
    mixer_overrides: Sequence[str] = ()  # "NAME.OPTION=VALUE" (Python literal), e.g. "softmax.num_heads=1"
    compile_only: bool = False  # compile every case and record its memory and skip decision; time nothing

    def validate(self) -> None:
        """Raises ValueError naming the first flag whose value cannot run (unknown suite, method or kind of a,
        a non-positive length or size, a non-positive budget)."""
        unknown = sorted(set(self.suites) - set(SUITES))
        if unknown:
            raise ValueError(f"--suites: unknown suite(s) {unknown}; expected a subset of {list(SUITES)}")
        bad_methods = sorted(set(self.scan_methods) - set(SCAN_METHODS))
        if bad_methods:
            raise ValueError(
                f"--scan_methods: unknown {bad_methods}; expected a subset of {list(SCAN_METHODS)}"
            )
        bad_kinds = sorted(set(self.scan_a_kinds) - set(A_KINDS))
        if bad_kinds:
            raise ValueError(f"--scan_a_kinds: unknown {bad_kinds}; expected a subset of {list(A_KINDS)}")
        for name in ("scan_lengths", "mixer_lengths", "decode_lengths"):
            if any(int(n) < 1 for n in getattr(self, name)):
                raise ValueError(f"--{name}: lengths must be positive, got {list(getattr(self, name))}")
        for name in (
            "scan_batch",
            "scan_state",
            "mixer_batch",
            "d_model",
            "n_layers",
            "vocab_size",
            "decode_batch",
            "decode_model_length",
            "repeats",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if ((self.max_memory_gb is not None and self.max_memory_gb <= 0) or self.min_repeat_seconds < 0
                or self.case_budget_seconds <= 0 or self.hang_seconds <= 0):
            raise ValueError(
                "--max_memory_gb, --case_budget_seconds and --hang_seconds must be > 0; "
                "--min_repeat_seconds must be >= 0"
            )


# Sizes of --quick (applied to every size flag not given explicitly on the command line): about 1-2 minutes on
# 2 CPU cores, most of it compilation (one encoder layer halves the mixers suite's). Two lengths per suite, so
# that every summary figure, growths included, has a value (at these lengths, which each entry names).
QUICK = dict(
    scan_lengths=(256, 1024),
    scan_batch=2,
    scan_state=32,
    mixer_lengths=(256, 512),
    mixer_batch=2,
    d_model=32,
    n_layers=1,
    decode_lengths=(256, 1024),
    decode_batch=2,
    decode_model_length=256,
    repeats=3,
    min_repeat_seconds=0.01,
    case_budget_seconds=10.0,
)



# ------------------------------------------------------------------------------------------------ measurement


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 1500 else text[:1500] + " ..."


def memory_stats(compiled: Any) -> dict[str, int | None]:
    """XLA's compiled memory analysis, in bytes (None where the backend does not report it)."""
    analysis = compiled.memory_analysis()
    fields = {
        "temp_bytes": "temp_size_in_bytes",
        "argument_bytes": "argument_size_in_bytes",
        "output_bytes": "output_size_in_bytes",
        "alias_bytes": "alias_size_in_bytes",
        "peak_bytes": "peak_memory_in_bytes",
    }
    stats: dict[str, int | None] = {}
    for key, attribute in fields.items():
        value = getattr(analysis, attribute, None) if analysis is not None else None
        stats[key] = int(value) if isinstance(value, int | np.integer) else None
    return stats


def case_bytes(stats: dict[str, int | None], host_bytes: int = 0) -> int | None:
    """What a case holds at once: arguments + outputs - donated aliases + temp + host arrays (None: unknown)."""
    parts = [stats.get(k) for k in ("argument_bytes", "output_bytes", "temp_bytes")]
    if any(p is None for p in parts):
        return None
    return int(sum(parts)) - int(stats.get("alias_bytes") or 0) + int(host_bytes)


def memory_budget_bytes(settings: Settings) -> float:
    """--max_memory_gb in bytes; when not given, min(DEFAULT_MAX_MEMORY_GB, half of the machine's memory)."""
    if settings.max_memory_gb is not None:
        return settings.max_memory_gb * GIB
    from experiments.memory import machine_memory

    return min(DEFAULT_MAX_MEMORY_GB * GIB, machine_memory().total_bytes / 2)


def _gib(n: float | None) -> str:
    return "?" if n is None else f"{n / GIB:.2f}"


@dataclasses.dataclass
class Case:
    """One thing to time: a compiled function and its arguments (or a plain callable for host baselines).

    `row` is the JSON record it fills; status "ok" until something fails. A case compiled on abstract
    arguments (jax.ShapeDtypeStruct) gets its `call` from `bind(args)` once the arrays exist.
    """

    name: str
    row: dict[str, Any]
    call: Callable[[], Any] | None = None
    check: Callable[[Any], None] | None = None  # called with the warm-up output (e.g. compare to a reference)
    compiled: Any = None
    donate_argnums: tuple[int, ...] = ()

    @property
    def runnable(self) -> bool:
        """Compiled, and neither skipped nor failed."""
        return self.compiled is not None and self.row.get("status", "ok") == "ok"

    def bind(self, args: Sequence[Any]) -> None:
        """Sets `call` to run the compiled function on `args` (arrays of the shapes it was compiled for)."""
        if not self.runnable:
            return
        compiled, donate_argnums = self.compiled, self.donate_argnums
        if donate_argnums:
            # Donated buffers are consumed by a call: each call's first outputs become the next call's donated
            # arguments (the function returns them first, in the order of donate_argnums).
            state = {"args": list(args)}

            def call() -> Any:
                outputs = compiled(*state["args"])
                for position, value in zip(donate_argnums, outputs[: len(donate_argnums)]):
                    state["args"][position] = value
                return outputs
        else:
            fixed = tuple(args)

            def call() -> Any:
                return compiled(*fixed)

        self.call = call


def compile_case(
    row: dict[str, Any],
    function: Callable[..., Any],
    args: Sequence[Any],
    max_bytes: float,
    donate_argnums: tuple[int, ...] = (),
    host_bytes: int = 0,
) -> Case:
    """Jits and compiles `function(*args)`, fills row["memory"] and row["compile_seconds"], and returns the
    case.

    Status "skipped" when what the case holds at once (case_bytes: arguments + outputs - donated + temp, plus
    `host_bytes` of host arrays alive while it runs) exceeds `max_bytes`; "error" when anything fails. `args`
    may be jax.ShapeDtypeStruct: the case is then compiled but not callable until `case.bind(arrays)`."""
    case = Case(row["name"], row, donate_argnums=tuple(donate_argnums))
    logging.info("compiling %s", _describe(row))
    try:
        start = time.perf_counter()
        compiled = jax.jit(function, donate_argnums=donate_argnums).lower(*args).compile()
        row["compile_seconds"] = time.perf_counter() - start
        row["memory"] = memory_stats(compiled)
    except Exception as exc:  # noqa: BLE001 -- any failure of one case is recorded, never fatal
        row.update(status="error", reason=f"compile: {_error_text(exc)}")
        return case
    stats = row["memory"]
    stats["host_bytes"] = int(host_bytes)
    total = stats["total_bytes"] = case_bytes(stats, host_bytes)
    if total is not None and total > max_bytes:
        row.update(
            status="skipped",
            reason=f"needs {_gib(total)} GiB at once (arguments {_gib(stats['argument_bytes'])} + outputs "
            f"{_gib(stats['output_bytes'])} - donated {_gib(stats['alias_bytes'] or 0)} + temp "
            f"{_gib(stats['temp_bytes'])} + host arrays {_gib(host_bytes)} GiB), more than --max_memory_gb="
            f"{max_bytes / GIB:g}; not run",
        )
        return case
    case.compiled = compiled
    if not any(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(args)):
        case.bind(args)
    return case


def _describe(row: dict[str, Any]) -> str:
    sizes = ", ".join(f"{k}={row[k]}" for k in ("a_kind", "length", "context") if k in row)
    return f"{row['name']} ({sizes})"


def _timed_call(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    output = jax.block_until_ready(call())
    return time.perf_counter() - start, output


def time_interleaved(
    cases: Sequence[Case],
    repeats: int,
    min_repeat_seconds: float,
    budget_seconds: float,
    hang_seconds: float = 1800.0,
) -> None:
    """Times every runnable case round-robin and writes row["time"] (seconds per call) into each.

    Warm-up: one call per case (its output goes to case.check and is then dropped). Calls per repetition:
    enough to last `min_repeat_seconds` by the warm-up time. Repetitions: `repeats`, fewer for a case whose
    repetitions would exceed `budget_seconds` (at least 1). A failure marks that case "error" and drops it
    from later rounds. A warm-up or repetition that does not return within `hang_seconds` is taken for a hang
    of the runtime: every thread's stack is printed and the process exits (the JSON keeps earlier sizes).
    """
    runnable = [c for c in cases if c.call is not None and c.row.get("status", "ok") == "ok"]
    plan: dict[str, tuple[int, int]] = {}
    for case in runnable:
        logging.info("warm-up %s", _describe(case.row))
        faulthandler.dump_traceback_later(hang_seconds, exit=True)
        try:
            warm_seconds, output = _timed_call(case.call)
            if case.check is not None:
                case.check(output)
            del output
        except Exception as exc:  # noqa: BLE001
            case.row.update(status="error", reason=f"run: {_error_text(exc)}")
            continue
        calls = max(1, math.ceil(min_repeat_seconds / max(warm_seconds, 1e-9)))
        rounds = max(1, min(repeats, int(budget_seconds // max(warm_seconds * calls, 1e-9))))
        plan[case.name] = (calls, rounds)
        case.row["warmup_seconds"] = warm_seconds
        case.row["_times"] = []
    for round_index in range(max((r for _, r in plan.values()), default=0)):
        logging.info("timing round %d of %d cases", round_index + 1, len(plan))
        for case in runnable:
            if case.name not in plan or case.row.get("status") != "ok" or round_index >= plan[case.name][1]:
                continue
            calls = plan[case.name][0]
            faulthandler.dump_traceback_later(hang_seconds, exit=True)
            try:
                start = time.perf_counter()
                for _ in range(calls):
                    jax.block_until_ready(case.call())
                case.row["_times"].append((time.perf_counter() - start) / calls)
            except Exception as exc:  # noqa: BLE001
                case.row.update(status="error", reason=f"run: {_error_text(exc)}")
    faulthandler.cancel_dump_traceback_later()
    for case in runnable:
        times = case.row.pop("_times", None)
        if case.row.get("status") == "ok" and times:
            median = statistics.median(times)
            case.row["time"] = {
                "median_seconds": median,
                "min_seconds": min(times),
                "max_seconds": max(times),
                "spread": (max(times) - min(times)) / median if median > 0 else None,
                "repeats": len(times),
                "calls_per_repeat": plan[case.name][0],
                "seconds_per_call": times,
            }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator) / float(denominator)


def _median(row: dict[str, Any] | None) -> float | None:
    if row is None or row.get("status") != "ok" or "time" not in row:
        return None
    return row["time"]["median_seconds"]


def _temp(row: dict[str, Any] | None) -> int | None:
    if row is None or row.get("status") not in ("ok", "skipped") or not row.get("memory"):
        return None
    return row["memory"]["temp_bytes"]


def _new_row(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, **fields, "status": "ok", "reason": None}


def _jsonable(value: Any) -> Any:
    """`value` with tuples as lists, numpy scalars as numbers and anything else unknown as its repr."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.integer | np.floating):
        return value.item()
    return repr(value)
