"""Speed and memory benchmarks: the linear-recurrence op, every registered mixer in the encoder, and decoding.

    python -m experiments.bench --quick --out=/tmp/bench/quick.json
    python -m experiments.bench --suites=scan --scan_lengths=1024,4096,16384 --out=/tmp/bench/scan.json
    python -m experiments.bench --compile_only --out=/tmp/bench/plan.json   # each case's memory; nothing is run

Suites (`--suites`, comma separated):
  scan     `ops.scan.linear_recurrence` forward and forward+backward (grad of a scalar loss w.r.t. a and b)
           for each method, against two autodiff baselines written here -- `lax.associative_scan` with the
           standard binary operator (what the S5 and LRU reference code do) and a plain `lax.scan` -- and
           against the memory-bandwidth reference, a numpy copy of b's bytes. a is time-invariant (N,) or
           time-varying (B, L, N); b is (B, L, N) complex64.
  mixers   one training step (forward + backward + optimiser update, experiments/optim.py) of the same small
           encoder (models/encoder.py) for every registered mixer as L grows, against dense softmax attention
           ("softmax"): the LRA speed table on this hardware.
  decode   one decoding step (mixer.step) at context lengths L for every causal mixer with init_state / step,
           against softmax attention with a key-value cache of L entries.

Method. Every case is jitted and compiled first; its memory is XLA's compiled memory analysis (arguments,
outputs, donated aliases and temp_size_in_bytes, the scratch buffers beyond arguments and outputs;
deterministic). A case runs only if everything it holds at once fits in --max_memory_gb: its arguments +
outputs - donated aliases + temp, plus the host (numpy) arrays alive while it runs (the scan suite's copy
destination and the reference outputs kept for the correctness check); otherwise it is skipped with a note
giving each figure. The scan suite compiles on abstract shapes first and builds a size's inputs only if one of
its cases fits. The default budget is the smaller of DEFAULT_MAX_MEMORY_GB and half of this machine's memory
(experiments.memory.machine_memory: host RAM on CPU), so the default run of every suite fits a 24 GiB machine
with room for other processes. Then one warm-up call, after which
all cases of one size (methods and baselines together) are timed round-robin, `--repeats` rounds, to spread
machine drift over all of them; a repetition runs enough back-to-back calls (each blocked with
block_until_ready) to last --min_repeat_seconds, and the reported time per call is the median over repetitions
(min, max and the spread (max - min) / median are kept so noise is visible). Ratios are taken between medians
of the same process.

A mixer that fails to build, compile or run at some size is recorded as a row with status "error" and the
message; the run goes on. Rows have status "ok", "error", "skipped" (memory limit) or "not_applicable" (e.g.
decoding a mixer without a causal form). The JSON (--out) holds the environment, the flags, the rows of each
suite, and a `summary` (see SUMMARY_DEFINITIONS) whose every entry is {"value": number or null, "reason": null
or why, "lengths": the sequence lengths it was computed at}. The keys name the lengths of a full run (e.g.
mixer_speedup_vs_softmax_4k); a run that did not measure them, such as --quick, gets each figure at the lengths
it did run, and "lengths" says which (SUMMARY_LENGTHS_NOTE).
Plots: one PNG per suite next to --out (matplotlib, drawn on an Agg canvas: no display needed).
"""

from __future__ import annotations

import dataclasses
import faulthandler
import importlib
import json
import math
import os
import pkgutil
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from jax import lax

# Mixer options that are a sequence length; the benchmark sets each one a mixer has to the length it runs at
# (the trainer does the same with experiments.trainer.LENGTH_OPTIONS set to 0).
LENGTH_OPTIONS = ("l_max", "trunc_len", "max_decode_len")
SOFTMAX = "softmax"
SCAN_METHODS = ("sequential", "associative", "chunked", "auto")
SCAN_BASELINES = ("associative_scan_autodiff", "lax_scan_autodiff")
NUMPY_COPY = "numpy_copy"
A_KINDS = ("time_invariant", "time_varying")
SUITES = ("scan", "mixers", "decode")
SUMMARY_SCAN_LENGTH = 16384
GIB = 1024**3
# --max_memory_gb when not given: at most this, and at most half of the machine's memory (memory_budget_bytes).
DEFAULT_MAX_MEMORY_GB = 10.0

SUMMARY_DEFINITIONS = {
    "scan_fwd_speedup_vs_associative": (
        "per kind of a: median time of the lax.associative_scan autodiff baseline / linear_recurrence method "
        "'auto', forward, at L = 16384 (> 1: the library is faster)"
    ),
    "scan_fwdbwd_speedup_vs_associative": "the same for forward + backward (grad w.r.t. a and b)",
    "scan_fwdbwd_memory_ratio_vs_associative": (
        "per kind of a: XLA temp bytes of 'auto' forward + backward / those of the associative_scan autodiff "
        "baseline, at L = 16384 (< 1: the library needs less)"
    ),
    "scan_fwd_fraction_of_copy_bandwidth": (
        "per kind of a: time of np.copyto of b's bytes / time of 'auto' forward at L = 16384; the forward "
        "reads b and writes h (the copy's traffic, plus reading a when time-varying), so 1 = copy bandwidth"
    ),
    "mixer_time_growth_16k_over_1k": "per mixer: training-step time at L = 16384 / at L = 1024 (linear: 16)",
    "mixer_memory_ratio_vs_softmax_4k": "per mixer: training-step XLA temp bytes / softmax's, at L = 4096",
    "mixer_speedup_vs_softmax_4k": "per mixer: training-step time of 'softmax' / of the mixer, L = 4096",
    "mixer_speedup_vs_softmax_16k": "per mixer: the same at L = 16384",
    "decode_time_growth_16k_over_1k": (
        "per causal mixer: decode-step time with a context of 16384 / of 1024 (constant-size state: 1)"
    ),
}

# Written next to SUMMARY_DEFINITIONS in the JSON: the lengths named in the keys are those of a full run.
SUMMARY_LENGTHS_NOTE = (
    "every entry is {value, reason, lengths}: 'lengths' lists the sequence lengths (contexts for decode) the "
    "value was computed at, [L] or [numerator L, denominator L]. A full run uses the lengths named in the key; "
    "when the suite did not run them (e.g. --quick), an 'at L' figure uses the longest length run below L "
    "(else the shortest), and an 'L1 over L0' growth the longest over the shortest length run"
)


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


# ------------------------------------------------------------------------------------------------- scan suite


def associative_scan_autodiff(a: jax.Array, b: jax.Array) -> jax.Array:
    """Baseline: h_t = a_t h_{t-1} + b_t (h_0 = 0) by `lax.associative_scan` with the binary operator
    (a_i, b_i) o (a_j, b_j) = (a_j a_i, a_j b_i + b_j), differentiated by autodiff, as the S5 / LRU reference
    code does. a: (N,) or (B, L, N), broadcast to b's (B, L, N) first; returns h (B, L, N)."""
    a_full = jnp.broadcast_to(a, b.shape)

    def binary_operator(earlier, later):
        a_earlier, b_earlier = earlier
        a_later, b_later = later
        return a_later * a_earlier, a_later * b_earlier + b_later

    _, h = lax.associative_scan(binary_operator, (a_full, b), axis=1)
    return h


def lax_scan_autodiff(a: jax.Array, b: jax.Array) -> jax.Array:
    """Baseline: the same recurrence as a plain `lax.scan` over time-major inputs (the transposes included),
    differentiated by autodiff (which stores the carry of every step). a: (N,) or (B, L, N); b: (B, L, N)."""
    time_varying = a.ndim == b.ndim
    b_time_major = jnp.moveaxis(b, 1, 0)

    def step(h, inputs):
        a_t, b_t = inputs if time_varying else (a, inputs)
        h = a_t * h + b_t
        return h, h

    xs = (jnp.moveaxis(a, 1, 0), b_time_major) if time_varying else b_time_major
    _, h = lax.scan(step, jnp.zeros(b.shape[:1] + b.shape[2:], b.dtype), xs)
    return jnp.moveaxis(h, 0, 1)


def _scan_function(candidate: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    if candidate == "associative_scan_autodiff":
        return associative_scan_autodiff
    if candidate == "lax_scan_autodiff":
        return lax_scan_autodiff
    from ops.scan import linear_recurrence

    return lambda a, b: linear_recurrence(a, b, method=candidate)[0]


def _forward_backward(function: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable[..., Any]:
    """Gradient w.r.t. (a, b) of the scalar loss sum |h|^2 (its cotangent depends on h, as a real loss's
    does)."""

    def loss(a, b):
        h = function(a, b)
        return jnp.sum(h.real**2 + h.imag**2)

    return jax.grad(loss, argnums=(0, 1))


def _scan_inputs(
    a_kind: str, batch: int, length: int, state: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """a with |a| in [0.9, 0.999] and any phase, b ~ CN(0, 1), complex64 (numpy)."""
    rng = np.random.default_rng(seed)
    a_shape = (state,) if a_kind == "time_invariant" else (batch, length, state)
    radius = rng.uniform(0.9, 0.999, a_shape).astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi, a_shape).astype(np.float32)
    a = (radius * np.exp(1j * phase)).astype(np.complex64)
    b = np.empty((batch, length, state), np.complex64)
    b.real = rng.standard_normal(b.shape, np.float32)
    b.imag = rng.standard_normal(b.shape, np.float32)
    return a, b


def _max_relative_error(output: Any, reference: Any) -> float:
    """max |x - y| / max |y| over every leaf, one slice of the leading axis at a time (no full-size temporary:
    at L = 64K a leaf is gigabytes)."""
    errors = []
    for x, y in zip(jax.tree.leaves(output), jax.tree.leaves(reference)):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 2:
            x, y = x[None], y[None]
        difference = max(float(np.max(np.abs(xi - yi), initial=0.0)) for xi, yi in zip(x, y))
        scale = max(float(np.max(np.abs(yi), initial=0.0)) for yi in y)
        errors.append(difference / max(scale, 1e-30))
    return max(errors)


def _auto_method() -> str | None:
    """What method "auto" stands for on this backend (best effort: reads ops.scan's private rule)."""
    try:
        from ops import scan

        return str(scan._resolve_auto(jax.default_backend()).value)
    except Exception:  # noqa: BLE001
        return None


def _output_bytes(function: Callable[..., Any], *args: Any) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(function, *args))))


def scan_suite(settings: Settings, checkpoint: Callable[[], None], results: dict[str, Any]) -> None:
    results["auto_method"] = _auto_method()
    rows: list[dict[str, Any]] = results.setdefault("rows", [])
    max_bytes = memory_budget_bytes(settings)
    candidates = [(m, "method") for m in settings.scan_methods] + [(b, "baseline") for b in SCAN_BASELINES]
    on_cpu = jax.default_backend() == "cpu"
    for a_kind in settings.scan_a_kinds:
        for length in settings.scan_lengths:
            batch, state = settings.scan_batch, settings.scan_state
            a_shape = (state,) if a_kind == "time_invariant" else (batch, length, state)
            a_spec = jax.ShapeDtypeStruct(a_shape, jnp.complex64)
            b_spec = jax.ShapeDtypeStruct((batch, length, state), jnp.complex64)
            input_bytes = {"a": math.prod(a_shape) * 8, "b": batch * length * state * 8}
            common = dict(
                a_kind=a_kind,
                length=length,
                batch=batch,
                state_size=state,
                dtype="complex64",
                array_mib=input_bytes["b"] / 2**20,
            )
            # Host arrays alive while any case of this size runs: the copy baseline's destination (and, off
            # the CPU, its host copy of b; on the CPU np.asarray(b) is a view) and the reference outputs of both
            # modes kept for the correctness check (views of the first outputs on the CPU, copies elsewhere).
            sequential = _scan_function("sequential")
            reference_bytes = _output_bytes(sequential, a_spec, b_spec) + _output_bytes(
                _forward_backward(sequential), a_spec, b_spec)
            host_bytes = input_bytes["b"] * (1 if on_cpu else 2) + reference_bytes
            # The reference for the correctness check of every candidate: the first one that runs (the
            # sequential method when selected). A benchmark of a wrong baseline would be meaningless.
            references: dict[str, Any] = {}
            cases: list[Case] = []
            for mode in ("fwd", "fwdbwd"):
                for candidate, kind in candidates:
                    row = _new_row(f"{candidate}/{mode}", candidate=candidate, kind=kind, mode=mode, **common)
                    function = _scan_function(candidate)
                    case = compile_case(
                        row, function if mode == "fwd" else _forward_backward(function), (a_spec, b_spec),
                        max_bytes, host_bytes=host_bytes,
                    )
                    case.check = _make_reference_check(row, mode, references)
                    cases.append(case)
                    rows.append(row)
            copy_row = _new_row(
                NUMPY_COPY,
                candidate=NUMPY_COPY,
                kind="bandwidth_reference",
                mode="copy",
                copied_bytes=input_bytes["b"],
                **common,
            )
            # The copy holds the device inputs (a view of b is its source) and the same host arrays.
            copy_memory = {"argument_bytes": input_bytes["a"] + input_bytes["b"], "output_bytes": 0,
                           "alias_bytes": 0, "temp_bytes": None, "host_bytes": host_bytes}
            copy_memory["total_bytes"] = input_bytes["a"] + input_bytes["b"] + host_bytes
            copy_row["memory"] = copy_memory
            if copy_memory["total_bytes"] > max_bytes:
                copy_row.update(status="skipped", reason=f"needs {_gib(copy_memory['total_bytes'])} GiB at once "
                                f"(inputs and host arrays), more than --max_memory_gb={max_bytes / GIB:g}; not run")
            elif not any(c.runnable for c in cases):
                copy_row.update(status="skipped", reason="no scan case of this size fits --max_memory_gb="
                                f"{max_bytes / GIB:g}; the bandwidth reference is not run alone")
            rows.append(copy_row)
            if settings.compile_only or not any(c.runnable for c in cases):
                logging.info("scan: nothing fits --max_memory_gb at %s, L=%d: inputs not built", a_kind, length)
                del references, cases
                checkpoint()
                continue
            # Built only now, when some case fits; the host copies go once on the device. (Building them peaks
            # below what any case that fits holds: 2 x (a + b) against arguments a + b, outputs >= b and host
            # arrays >= a + 3b.)
            a_host, b_host = _scan_inputs(a_kind, batch, length, state, settings.seed)
            a, b = jnp.asarray(a_host), jnp.asarray(b_host)
            del a_host, b_host
            for case in cases:
                case.bind((a, b))
            if copy_row["status"] == "ok":
                source = np.asarray(b)
                destination = np.empty_like(source)
                cases.append(Case(NUMPY_COPY, copy_row, call=lambda d=destination, s=source: np.copyto(d, s)))
            time_interleaved(
                cases,
                settings.repeats,
                settings.min_repeat_seconds,
                settings.case_budget_seconds,
                settings.hang_seconds,
            )
            _scan_ratios([c.row for c in cases])
            del a, b, references, cases
            source = destination = None
            checkpoint()


def _make_reference_check(
    row: dict[str, Any], mode: str, references: dict[str, Any]
) -> Callable[[Any], None]:
    """Compares a case's warm-up output with the first output of the same mode (kept in `references`)."""

    def check(output: Any) -> None:
        if mode not in references:
            references[mode] = (row["candidate"], jax.tree.map(np.asarray, output))
        reference_name, reference = references[mode]
        row["reference"] = reference_name
        row["max_relative_error_vs_reference"] = _max_relative_error(output, reference)

    return check


def _scan_ratios(rows: list[dict[str, Any]]) -> None:
    by_key = {(r["candidate"], r["mode"]): r for r in rows}
    copy_time = _median(by_key.get((NUMPY_COPY, "copy")))
    for row in rows:
        if row["mode"] == "copy":
            continue
        baseline_assoc = by_key.get(("associative_scan_autodiff", row["mode"]))
        baseline_scan = by_key.get(("lax_scan_autodiff", row["mode"]))
        row["speedup_vs_associative_scan_autodiff"] = _ratio(_median(baseline_assoc), _median(row))
        row["speedup_vs_lax_scan_autodiff"] = _ratio(_median(baseline_scan), _median(row))
        row["memory_ratio_vs_associative_scan_autodiff"] = _ratio(_temp(row), _temp(baseline_assoc))
        if row["mode"] == "fwd":
            row["fraction_of_copy_bandwidth"] = _ratio(copy_time, _median(row))


# ----------------------------------------------------------------------------------------------- mixer suites


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
    """{"softmax": {"num_heads": 1}} from ["softmax.num_heads=1"]; values are Python literals (else strings).

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


def mixer_options_for(
    name: str, length: int, cache_length: int | None = None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The options the benchmark builds `name` with: the mixer's section of the base config when there is one
    (what the trainer would use), then `overrides` (--mixer_option), with every length option the mixer has
    set to `length`, except max_decode_len, set to `cache_length` when given. An override of an option the
    mixer does not have raises ValueError naming it."""
    from models import mixer_options

    options: dict[str, Any] = {}
    try:
        from experiments.configs.base import base_config

        section = base_config().model.get(name)
        if section is not None:
            options = section.to_dict()
    except Exception:  # noqa: BLE001 -- the config is a convenience; the class defaults are the fallback
        options = {}
    known = mixer_options(name)
    options = {k: v for k, v in options.items() if k in known}
    for option, value in parse_mixer_overrides(overrides).get(name, {}).items():
        if option not in known:
            raise ValueError(f"--mixer_option={name}.{option}: mixer {name!r} has no option {option!r}; "
                             f"it has {sorted(known)}")
        options[option] = value
    for key in LENGTH_OPTIONS:
        if key in known:
            options[key] = cache_length if key == "max_decode_len" and cache_length is not None else length
    return options


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.integer | np.floating):
        return value.item()
    return repr(value)


def _optimizer_config():
    from experiments.configs.base import base_config

    return base_config().optim


def _train_step_case(name: str, length: int, settings: Settings, row: dict[str, Any]) -> Case:
    """Builds and compiles one training step of Classifier(SequenceEncoder(mixer=name)) on (B, L) tokens."""
    import optax

    from experiments.optim import make_optimizer
    from models import param_groups
    from models.encoder import Classifier, SequenceEncoder

    options = mixer_options_for(name, length, overrides=settings.mixer_overrides)
    row["options"] = _jsonable(options)
    encoder = SequenceEncoder(
        vocab_size=settings.vocab_size,
        d_model=settings.d_model,
        n_layers=settings.n_layers,
        mixer=name,
        mixer_options=options,
        bidirectional=settings.bidirectional,
    )
    model = Classifier(encoder=encoder, num_classes=10)
    # Inputs from numpy: eager jax.random calls would each compile a small program.
    rng = np.random.default_rng(settings.seed)
    tokens = jnp.asarray(rng.integers(1, settings.vocab_size, (settings.mixer_batch, length), dtype=np.int32))
    mask = jnp.ones(tokens.shape, bool)
    labels = jnp.asarray(rng.integers(0, 10, (settings.mixer_batch,), dtype=np.int32))
    init_key = jax.random.key(settings.seed)

    def init(k, x, m):
        return model.init({"params": k, "dropout": k}, x, m, train=False)

    # Initialise on a short prefix: parameters must not depend on L (checked against the abstract full-length
    # init), and a full-length init of dense attention would itself need the (B, H, L, L) scores.
    init_length = min(length, 256)
    variables = jax.jit(init)(init_key, tokens[:, :init_length], mask[:, :init_length])
    full_shapes = variables if init_length == length else jax.eval_shape(init, init_key, tokens, mask)
    if jax.tree.map(lambda x: (x.shape, x.dtype), full_shapes) != jax.tree.map(
        lambda x: (x.shape, x.dtype), variables
    ):
        raise ValueError(
            f"mixer {name!r}: variable shapes depend on the input length; the benchmark initialises "
            f"on {init_length} tokens and cannot reuse them at {length}"
        )
    labels_tree = param_groups.group_labels(variables["params"])
    variables = param_groups.unbox(variables)
    params = variables["params"]
    others = {k: v for k, v in variables.items() if k != "params"}
    tx = make_optimizer(_optimizer_config(), labels_tree, num_steps=1000)
    opt_state = tx.init(params)
    dropout_key = jax.random.key(settings.seed + 1)
    mutable = sorted(set(others) | {"batch_stats", "losses", "metrics"})

    def train_step(params, others, opt_state, tokens, mask, labels):
        def loss_fn(params):
            logits, updates = model.apply(
                {**others, "params": params},
                tokens,
                mask,
                train=True,
                rngs={"dropout": dropout_key},
                mutable=mutable,
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
            # Mixers sow extra objective terms (e.g. VQ commitment losses) into "losses", as in the trainer.
            aux = sum((jnp.sum(x) for x in jax.tree.leaves(updates.get("losses", {}))), jnp.zeros(()))
            return loss + aux, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        param_updates, opt_state = tx.update(grads, opt_state, params)
        others = {k: updates.get(k, v) for k, v in others.items()}
        return optax.apply_updates(params, param_updates), others, opt_state, loss

    row["parameters"] = int(sum(x.size for x in jax.tree.leaves(params)))
    # Not donated: every call restarts from the same state, so all repetitions time the same step.
    return compile_case(
        row, train_step, (params, others, opt_state, tokens, mask, labels), memory_budget_bytes(settings)
    )


def _selected_mixers(settings: Settings) -> list[str]:
    from models import mixer_names

    registered = mixer_names()
    if not settings.mixers:
        return registered
    unknown = [m for m in settings.mixers if m not in registered]
    if unknown:
        raise ValueError(f"--mixers: {unknown} not registered; registered mixers are {registered}")
    return list(settings.mixers)


def mixers_suite(settings: Settings, checkpoint: Callable[[], None], results: dict[str, Any]) -> None:
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
    softmax = next((r for r in rows if r["mixer"] == SOFTMAX), None)
    for row in rows:
        row["speedup_vs_softmax"] = _ratio(_median(softmax), _median(row))
        row["memory_ratio_vs_softmax"] = _ratio(_temp(row), _temp(softmax))


def _has_decoding(cls: type) -> tuple[bool, str | None]:
    from models.registry import SequenceMixer

    if not getattr(cls, "has_causal_form", True):
        return False, "no causal form (has_causal_form = False)"
    if cls.init_state is SequenceMixer.init_state or cls.step is SequenceMixer.step:
        return False, "does not implement init_state / step"
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
    from models import make_mixer, mixer_options, param_groups

    # The model's own length options (S4's l_max, RTF's trunc_len) stay at --decode_model_length, the length
    # it would have been trained at: only the key-value cache follows the context.
    options = mixer_options_for(name, settings.decode_model_length, cache_length=context,
                                overrides=settings.mixer_overrides)
    row["options"] = _jsonable(options)
    mixer = make_mixer(name, d_model=settings.d_model, bidirectional=False, **options)
    batch = settings.decode_batch
    kv_cache = "max_decode_len" in mixer_options(name)
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
    from models import mixer_class

    names = _selected_mixers(settings)
    rows: list[dict[str, Any]] = results.setdefault("rows", [])
    decoding = {}
    for name in names:
        decoding[name] = _has_decoding(mixer_class(name))
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


# ---------------------------------------------------------------------------------------------------- summary


def _entry(value: float | None, reason: str | None = None, lengths: Sequence[int] | None = None) -> dict[str, Any]:
    if value is None and reason is None:
        reason = "not available"
    return {"value": value, "reason": None if value is not None else reason,
            "lengths": None if lengths is None else [int(n) for n in lengths]}


def _why_missing(row: dict[str, Any] | None, what: str, flag: str) -> str:
    if row is None:
        return f"{what} was not run (not in {flag}, or the suite was not selected)"
    if row.get("status") != "ok":
        return f"{what}: {row.get('status')}: {row.get('reason')}"
    return f"{what}: no measurement"


def _ratio_entry(
    numerator: tuple[dict | None, str, str],
    denominator: tuple[dict | None, str, str],
    measure: Callable[[dict | None], float | None],
    lengths: Sequence[int] | None = None,
) -> dict[str, Any]:
    """numerator / denominator of `measure` on two rows, each given as (row, description, flag)."""
    for row, what, flag in (numerator, denominator):
        if measure(row) is None:
            return _entry(None, _why_missing(row, what, flag), lengths)
    return _entry(_ratio(measure(numerator[0]), measure(denominator[0])), lengths=lengths)


def summary_length(nominal: int, run: Sequence[int]) -> int:
    """The length at which a figure defined "at `nominal`" is taken: `nominal` when it was run, else the
    longest length run below it, else the shortest length run. `run` must not be empty."""
    if nominal in run:
        return nominal
    below = [n for n in run if n < nominal]
    return max(below) if below else min(run)


def summary_growth_lengths(longer: int, shorter: int, run: Sequence[int]) -> tuple[int, int] | None:
    """(numerator, denominator) lengths of a growth defined as "`longer` over `shorter`": those two when both
    were run, else the longest and the shortest length run; None when fewer than two lengths were run."""
    if longer in run and shorter in run:
        return longer, shorter
    if len(set(run)) < 2:
        return None
    return max(run), min(run)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers (SUMMARY_DEFINITIONS) from the suites' rows; each entry {"value", "reason",
    "lengths"}, computed at the lengths named in the key or, when a suite did not run those, at the lengths it
    ran (see SUMMARY_LENGTHS_NOTE)."""
    summary: dict[str, Any] = {}
    scan_rows = results.get("scan", {}).get("rows", [])
    flag = "--scan_lengths"

    def scan_row(a_kind: str, length: int, candidate: str, mode: str) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in scan_rows
                if r["a_kind"] == a_kind
                and r["length"] == length
                and r["candidate"] == candidate
                and r["mode"] == mode
            ),
            None,
        )

    for key in (
        "scan_fwd_speedup_vs_associative",
        "scan_fwdbwd_speedup_vs_associative",
        "scan_fwdbwd_memory_ratio_vs_associative",
        "scan_fwd_fraction_of_copy_bandwidth",
    ):
        summary[key] = {}
    for a_kind in A_KINDS:
        scan_lengths = sorted({r["length"] for r in scan_rows if r["a_kind"] == a_kind})
        length = summary_length(SUMMARY_SCAN_LENGTH, scan_lengths) if scan_lengths else SUMMARY_SCAN_LENGTH

        def described(candidate: str, mode: str, a_kind: str = a_kind, length: int = length):
            return (scan_row(a_kind, length, candidate, mode), f"scan {candidate} {mode} ({a_kind}, L={length})",
                    flag)

        at = [length]
        summary["scan_fwd_speedup_vs_associative"][a_kind] = _ratio_entry(
            described("associative_scan_autodiff", "fwd"), described("auto", "fwd"), _median, at
        )
        summary["scan_fwdbwd_speedup_vs_associative"][a_kind] = _ratio_entry(
            described("associative_scan_autodiff", "fwdbwd"), described("auto", "fwdbwd"), _median, at
        )
        summary["scan_fwdbwd_memory_ratio_vs_associative"][a_kind] = _ratio_entry(
            described("auto", "fwdbwd"), described("associative_scan_autodiff", "fwdbwd"), _temp, at
        )
        summary["scan_fwd_fraction_of_copy_bandwidth"][a_kind] = _ratio_entry(
            described(NUMPY_COPY, "copy"), described("auto", "fwd"), _median, at
        )

    mixers = results.get("mixers", {})
    mixer_rows = mixers.get("rows", [])
    mixer_lengths = sorted({r["length"] for r in mixer_rows})

    def mixer_row(name: str, at: int) -> tuple[dict | None, str, str]:
        row = next((r for r in mixer_rows if r["mixer"] == name and r["length"] == at), None)
        return row, f"mixer {name!r} at L={at}", "--mixer_lengths"

    def growth_entry(row_at: Callable[[int], tuple[dict | None, str, str]], lengths: Sequence[int], what: str,
                     flag: str) -> dict[str, Any]:
        pair = summary_growth_lengths(16384, 1024, lengths)
        if pair is None:
            ran = f"only {what} {lengths[0]} was run" if lengths else "nothing was run"
            return _entry(None, f"a growth needs two lengths, but {ran} (see {flag})")
        return _ratio_entry(row_at(pair[0]), row_at(pair[1]), _median, pair)

    summary["mixer_time_growth_16k_over_1k"] = {}
    summary["mixer_memory_ratio_vs_softmax_4k"] = {}
    summary["mixer_speedup_vs_softmax_4k"] = {}
    summary["mixer_speedup_vs_softmax_16k"] = {}
    softmax_missing = (
        None
        if SOFTMAX in mixers.get("mixers", [])
        else f"baseline {SOFTMAX!r} is not registered (or not selected)"
    )
    for name in mixers.get("mixers", []):
        summary["mixer_time_growth_16k_over_1k"][name] = growth_entry(
            lambda at, name=name: mixer_row(name, at), mixer_lengths, "L =", "--mixer_lengths"
        )
        for key, nominal, measure, flip in (
            ("mixer_memory_ratio_vs_softmax_4k", 4096, _temp, False),
            ("mixer_speedup_vs_softmax_4k", 4096, _median, True),
            ("mixer_speedup_vs_softmax_16k", 16384, _median, True),
        ):
            at = summary_length(nominal, mixer_lengths) if mixer_lengths else nominal
            if softmax_missing:
                summary[key][name] = _entry(None, softmax_missing, [at])
                continue
            pair = (mixer_row(SOFTMAX, at), mixer_row(name, at))
            summary[key][name] = _ratio_entry(*(pair if flip else pair[::-1]), measure, [at])

    decode = results.get("decode", {})
    decode_rows = decode.get("rows", [])
    decode_lengths = sorted({r["context"] for r in decode_rows})
    summary["decode_time_growth_16k_over_1k"] = {}
    for name in decode.get("causal_mixers", []):

        def decode_row(at: int, name: str = name) -> tuple[dict | None, str, str]:
            row = next((r for r in decode_rows if r["mixer"] == name and r["context"] == at), None)
            return row, f"decode {name!r} at context {at}", "--decode_lengths"

        summary["decode_time_growth_16k_over_1k"][name] = growth_entry(
            decode_row, decode_lengths, "context", "--decode_lengths"
        )
    return summary


# ------------------------------------------------------------------------------------------------------ plots


def write_plots(results: dict[str, Any], out: str) -> dict[str, Any]:
    """One PNG per suite next to `out` (stem_suite.png); returns {suite: path or {"error": message}}.

    Each figure gets its own Agg canvas (no pyplot): no display is needed and no global backend is changed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stem = os.path.splitext(out)[0]
    written: dict[str, Any] = {}

    def series(rows, group_key, x_key, y_of):
        lines: dict[str, list[tuple[float, float]]] = {}
        for row in rows:
            y = y_of(row)
            if y is not None:
                lines.setdefault(row[group_key], []).append((row[x_key], y))
        return {k: sorted(v) for k, v in lines.items()}

    def draw(axis, lines, title, ylabel):
        for label, points in sorted(lines.items()):
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("L")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=6)

    panels: dict[str, list[tuple[list[dict], str, str, Callable]]] = {}
    scan_rows = results.get("scan", {}).get("rows", [])
    for a_kind in A_KINDS:
        for mode in ("fwd", "fwdbwd"):
            rows = [r for r in scan_rows if r["a_kind"] == a_kind and r["mode"] in (mode, "copy")]
            if rows:
                panels.setdefault("scan", []).append((rows, f"scan {mode}, a {a_kind}", "seconds", _median))
    mixer_rows = results.get("mixers", {}).get("rows", [])
    if mixer_rows:
        panels["mixers"] = [
            (mixer_rows, "training step time", "seconds", _median),
            (mixer_rows, "training step XLA temp memory", "bytes", _temp),
        ]
    decode_rows = [dict(r, length=r["context"]) for r in results.get("decode", {}).get("rows", [])]
    if decode_rows:
        panels["decode"] = [(decode_rows, "decode step time vs context", "seconds", _median)]
    for suite, suite_panels in panels.items():
        try:
            figure = Figure(figsize=(5 * len(suite_panels), 4))
            FigureCanvasAgg(figure)
            axes = figure.subplots(1, len(suite_panels), squeeze=False)
            group_key = "candidate" if suite == "scan" else "mixer"
            for axis, (rows, title, ylabel, measure) in zip(axes[0], suite_panels):
                draw(axis, series(rows, group_key, "length", measure), title, ylabel)
            figure.tight_layout()
            path = f"{stem}_{suite}.png"
            figure.savefig(path, dpi=120, format="png")
            written[suite] = path
        except Exception as exc:  # noqa: BLE001 -- a plot must never cost the numbers
            written[suite] = {"error": _error_text(exc)}
    return written


# -------------------------------------------------------------------------------------------------------- run


def environment() -> dict[str, Any]:
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=os.path.dirname(os.path.abspath(__file__)),
            ).stdout.strip()
            or None
        )
    except Exception:  # noqa: BLE001
        commit = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "python": sys.version.split()[0],
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "git_commit": commit,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run(settings: Settings) -> dict[str, Any]:
    """Runs the selected suites; writes the JSON after every size (a stopped run keeps what it measured)."""
    settings.validate()
    results: dict[str, Any] = {
        "environment": environment(),
        "settings": _jsonable(dataclasses.asdict(settings)),
        "summary_definitions": SUMMARY_DEFINITIONS,
        "summary_lengths": SUMMARY_LENGTHS_NOTE,
        "max_memory_bytes": memory_budget_bytes(settings),
        "compile_only": settings.compile_only,
    }
    if settings.import_all_model_modules and {"mixers", "decode"} & set(settings.suites):
        results["model_import_errors"] = import_model_modules()
    if {"mixers", "decode"} & set(settings.suites):
        from models import mixer_names

        results["registered_mixers"] = mixer_names()
    out_dir = os.path.dirname(os.path.abspath(settings.out))
    os.makedirs(out_dir, exist_ok=True)

    def checkpoint() -> None:
        results["summary"] = summarize(results)
        temporary = settings.out + ".tmp"
        with open(temporary, "w") as f:
            json.dump(_jsonable(results), f, indent=1, allow_nan=True)
        os.replace(temporary, settings.out)

    suites = {"scan": scan_suite, "mixers": mixers_suite, "decode": decode_suite}
    for suite in SUITES:
        if suite not in settings.suites:
            continue
        start = time.perf_counter()
        results[suite] = {}
        try:
            suites[suite](settings, checkpoint, results[suite])
        except Exception as exc:  # noqa: BLE001 -- keep the other suites' numbers
            results[suite]["error"] = _error_text(exc)
            results[suite]["traceback"] = traceback.format_exc()
        results[suite]["seconds"] = time.perf_counter() - start
        checkpoint()
    results["environment"]["load_average_at_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    results["plots"] = write_plots(results, settings.out) if settings.plots else {"skipped": "--noplots"}
    checkpoint()
    return results


# ------------------------------------------------------------------------------------------------------ flags

_SUITES = flags.DEFINE_list("suites", list(SUITES), f"Suites to run, a subset of {list(SUITES)}.")
_OUT = flags.DEFINE_string("out", Settings.out, "Output JSON; plots go next to it as <stem>_<suite>.png.")
_PLOTS = flags.DEFINE_bool(
    "plots", True, "Draw one PNG plot per suite next to --out."
)
_QUICK = flags.DEFINE_bool(
    "quick", False, f"Small sizes for a quick run (for size flags not given): {QUICK}."
)
_SCAN_LENGTHS = flags.DEFINE_list(
    "scan_lengths", [str(n) for n in Settings.scan_lengths], "scan suite: L values."
)
_SCAN_BATCH = flags.DEFINE_integer("scan_batch", Settings.scan_batch, "scan suite: batch B.")
_SCAN_STATE = flags.DEFINE_integer("scan_state", Settings.scan_state, "scan suite: state size N (complex64).")
_SCAN_METHODS = flags.DEFINE_list(
    "scan_methods", list(SCAN_METHODS), "scan suite: linear_recurrence methods."
)
_SCAN_A_KINDS = flags.DEFINE_list(
    "scan_a_kinds", list(A_KINDS), f"scan suite: kinds of a, subset of {A_KINDS}."
)
_MIXERS = flags.DEFINE_list(
    "mixers", [], "mixers / decode suites: mixer names (default: every registered one)."
)
_MIXER_LENGTHS = flags.DEFINE_list(
    "mixer_lengths", [str(n) for n in Settings.mixer_lengths], "mixers suite: L values."
)
_MIXER_BATCH = flags.DEFINE_integer("mixer_batch", Settings.mixer_batch, "mixers suite: batch B.")
_D_MODEL = flags.DEFINE_integer("d_model", Settings.d_model, "mixers / decode suites: width D.")
_N_LAYERS = flags.DEFINE_integer("n_layers", Settings.n_layers, "mixers suite: encoder depth.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", Settings.vocab_size, "mixers suite: token vocabulary.")
_BIDIRECTIONAL = flags.DEFINE_bool(
    "bidirectional", Settings.bidirectional, "mixers suite: bidirectional mixers (the LRA encoder setting)."
)
_DECODE_LENGTHS = flags.DEFINE_list(
    "decode_lengths", [str(n) for n in Settings.decode_lengths], "decode suite: context lengths."
)
_DECODE_BATCH = flags.DEFINE_integer("decode_batch", Settings.decode_batch, "decode suite: batch B.")
_DECODE_MODEL_LENGTH = flags.DEFINE_integer(
    "decode_model_length",
    Settings.decode_model_length,
    "decode suite: the mixers' own length options (l_max, trunc_len); max_decode_len follows the context.",
)
_REPEATS = flags.DEFINE_integer("repeats", Settings.repeats, "Timed repetitions per case (median reported).")
_MIN_REPEAT_SECONDS = flags.DEFINE_float(
    "min_repeat_seconds",
    Settings.min_repeat_seconds,
    "Back-to-back calls per repetition until it lasts this long.",
)
_CASE_BUDGET_SECONDS = flags.DEFINE_float(
    "case_budget_seconds",
    Settings.case_budget_seconds,
    "Fewer repetitions (>= 1) for a case that would take longer.",
)
_MAX_MEMORY_GB = flags.DEFINE_float(
    "max_memory_gb",
    Settings.max_memory_gb,
    "Skip (with a note) cases that hold more than this at once: arguments + outputs - donated + temp (XLA's "
    "compiled memory analysis) + the host arrays alive while they run. Default: the smaller of "
    f"{DEFAULT_MAX_MEMORY_GB:g} and half of this machine's memory.",
)
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Compile every case and record its memory (XLA's analysis) and whether the budget "
    "skips it; build no scan inputs and time nothing (to check a run's memory before making it)."
)
_HANG_SECONDS = flags.DEFINE_float(
    "hang_seconds",
    Settings.hang_seconds,
    "A warm-up or repetition taking longer is a hang: print all stacks and exit (earlier sizes are saved).",
)
_IMPORT_ALL = flags.DEFINE_bool(
    "import_all_model_modules", True, "Import every module under models/ so that all mixers register."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the inputs and parameters.")
_MIXER_OPTION = flags.DEFINE_multi_string(
    "mixer_option", [], "mixers / decode suites: NAME.OPTION=VALUE overriding one mixer's option, e.g. "
    "--mixer_option=softmax.num_heads=1 (repeatable; recorded in each row's options)."
)


def settings_from_flags() -> Settings:
    def ints(values: list[str], flag: str) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in values)
        except ValueError:
            raise ValueError(
                f"--{flag}: expected comma-separated integers, got {','.join(values)!r}"
            ) from None

    settings = Settings(
        suites=tuple(_SUITES.value),
        out=_OUT.value,
        plots=_PLOTS.value,
        scan_lengths=ints(_SCAN_LENGTHS.value, "scan_lengths"),
        scan_batch=_SCAN_BATCH.value,
        scan_state=_SCAN_STATE.value,
        scan_methods=tuple(_SCAN_METHODS.value),
        scan_a_kinds=tuple(_SCAN_A_KINDS.value),
        mixers=tuple(_MIXERS.value),
        mixer_lengths=ints(_MIXER_LENGTHS.value, "mixer_lengths"),
        mixer_batch=_MIXER_BATCH.value,
        d_model=_D_MODEL.value,
        n_layers=_N_LAYERS.value,
        vocab_size=_VOCAB_SIZE.value,
        bidirectional=_BIDIRECTIONAL.value,
        decode_lengths=ints(_DECODE_LENGTHS.value, "decode_lengths"),
        decode_batch=_DECODE_BATCH.value,
        decode_model_length=_DECODE_MODEL_LENGTH.value,
        repeats=_REPEATS.value,
        min_repeat_seconds=_MIN_REPEAT_SECONDS.value,
        case_budget_seconds=_CASE_BUDGET_SECONDS.value,
        max_memory_gb=_MAX_MEMORY_GB.value,
        hang_seconds=_HANG_SECONDS.value,
        import_all_model_modules=_IMPORT_ALL.value,
        seed=_SEED.value,
        mixer_overrides=tuple(_MIXER_OPTION.value),
        compile_only=_COMPILE_ONLY.value,
    )
    if _QUICK.value:
        explicit = {name for name in QUICK if flags.FLAGS[name].present}
        settings = dataclasses.replace(settings, **{k: v for k, v in QUICK.items() if k not in explicit})
    return settings


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # `kill -USR1 <pid>` prints every thread's Python stack to stderr (to see where a long run is).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    settings = settings_from_flags()
    try:  # a malformed --mixer_option fails here, not after other suites have run
        for name, options in parse_mixer_overrides(settings.mixer_overrides).items():
            mixer_options_for(name, 1, overrides=[f"{name}.{k}={v!r}" for k, v in options.items()])
    except (ValueError, KeyError) as error:
        raise app.UsageError(str(error)) from None
    results = run(settings)
    print(
        json.dumps(
            _jsonable({"out": settings.out, "plots": results["plots"], "summary": results["summary"],
                       "summary_lengths": SUMMARY_LENGTHS_NOTE}),
            indent=1,
        )
    )


if __name__ == "__main__":
    app.run(main)
