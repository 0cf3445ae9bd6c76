"""The scan suite: `linear_recurrence` (through models/kernels.py) against autodiff baselines and a memory copy.

For each kind of a (time-invariant (N,) or time-varying (B, L, N)) and each L, every method of
`linear_recurrence` forward and forward+backward (grad of sum |h|^2 w.r.t. a and b), the two baselines written
here (`lax.associative_scan` with the standard binary operator, as the S5 and LRU reference code do, and a plain
`lax.scan`), both differentiated by autodiff, and the bandwidth reference: a numpy copy of b's bytes. b is
(B, L, N) complex64. Every candidate's warm-up output is checked against the first one of the same mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

from experiments.bench.core import (
    GIB,
    NUMPY_COPY,
    SCAN_BASELINES,
    Case,
    Settings,
    _gib,
    _median,
    _new_row,
    _ratio,
    _temp,
    compile_case,
    memory_budget_bytes,
    time_interleaved,
)


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
    from models.kernels import linear_recurrence

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


def _auto_method() -> str:
    """What method "auto" stands for on this backend (models.kernels.scan_method_for_backend)."""
    from models.kernels import scan_method_for_backend

    return str(scan_method_for_backend(jax.default_backend()).value)


def _output_bytes(function: Callable[..., Any], *args: Any) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(function, *args))))


def scan_suite(settings: Settings, checkpoint: Callable[[], None], results: dict[str, Any]) -> None:
    """Runs the scan suite into `results` ("auto_method", "rows"), calling `checkpoint()` after every size.

    Cases are compiled on abstract shapes first; a size's inputs are built only when one of its cases fits the
    memory budget (and never with settings.compile_only)."""
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
