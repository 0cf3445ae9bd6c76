"""The benchmark's summary (the headline figures of SUMMARY_DEFINITIONS, from the suites' rows) and its plots."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from experiments.bench.core import A_KINDS, NUMPY_COPY, SOFTMAX, _error_text, _median, _ratio, _temp

# The scan figures are defined at this L (a run without it uses the lengths it ran; SUMMARY_LENGTHS_NOTE).
SUMMARY_SCAN_LENGTH = 16384

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


def _entry(value: float | None, reason: str | None = None, lengths: Sequence[int] | None = None) -> dict[str, Any]:
    """A summary entry {"value", "reason", "lengths"}; a missing value always has a reason."""
    if value is None and reason is None:
        reason = "not available"
    return {"value": value, "reason": None if value is not None else reason,
            "lengths": None if lengths is None else [int(n) for n in lengths]}


def _why_missing(row: dict[str, Any] | None, what: str, flag: str) -> str:
    """Why the row described by `what` gives no number: not run (see `flag`), failed or skipped, or unmeasured."""
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
