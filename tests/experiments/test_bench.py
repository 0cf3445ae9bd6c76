"""Smoke test of experiments/bench/: every suite at toy sizes, the JSON schema, error rows, the summary.

Timings are not checked (a timed test is noise); what is checked is that each suite produces the rows and
numbers it promises, that the baselines compute the same recurrence as the library, that a broken mixer
becomes an error row instead of a crash, that the memory limit skips instead of running, and that the summary
ratios are the ratios of the rows they name.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench
from models import registry

pytestmark = pytest.mark.usefixtures("full_optimization")  # compiled memory figures / timings: optimised XLA

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROKEN = "broken_for_bench_test"


class _BrokenMixer(registry.SequenceMixer):
    """A mixer that fails when called, to check that the benchmark records the failure and goes on."""

    @nn.compact
    def __call__(self, x, *, mask=None, deterministic=True):
        raise RuntimeError("this mixer is broken on purpose")

    def init_state(self, batch_size):
        return jnp.zeros((batch_size, self.d_model))

    def step(self, state, x_t):
        raise RuntimeError("this mixer is broken on purpose")


def _toy_settings(out: str, mixers: tuple[str, ...]) -> bench.Settings:
    return bench.Settings(
        out=out,
        scan_lengths=(8,),
        scan_batch=2,
        scan_state=4,
        scan_methods=("sequential",),
        scan_a_kinds=("time_varying",),
        mixers=mixers,
        mixer_lengths=(16,),
        mixer_batch=2,
        d_model=8,
        n_layers=1,
        vocab_size=8,
        decode_lengths=(8, 16),
        decode_batch=1,
        decode_model_length=16,
        repeats=2,
        min_repeat_seconds=0.0,
        case_budget_seconds=1.0,
    )


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """One run of all three suites at toy sizes, with a broken mixer registered for the duration."""
    bench.import_model_modules()
    mixers = tuple(m for m in ("lru", bench.SOFTMAX) if m in registry.mixer_names()) + (BROKEN,)
    out = str(tmp_path_factory.mktemp("bench") / "toy.json")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._CONTRACTS, BROKEN, registry.make_contract(BROKEN, _BrokenMixer))
        results = bench.run(_toy_settings(out, mixers))
    with open(out) as f:
        written = json.load(f)
    return results, written, mixers


def _is_entry(entry) -> bool:
    """A summary entry: a positive number without a reason, or null with a reason; and the lengths used."""
    if set(entry) != {"value", "reason", "lengths"}:
        return False
    if entry["lengths"] is not None and not all(isinstance(n, int) and n > 0 for n in entry["lengths"]):
        return False
    if entry["value"] is None:
        return isinstance(entry["reason"], str) and entry["reason"] != ""
    return entry["reason"] is None and math.isfinite(entry["value"]) and entry["value"] > 0


def test_json_has_environment_settings_and_every_summary_key(toy_run):
    results, written, mixers = toy_run
    assert written["summary"] == json.loads(json.dumps(bench._jsonable(results["summary"])))
    env = written["environment"]
    for key in ("jax_version", "backend", "device_count", "cpu_count"):
        assert env[key] is not None, key
    assert env["jax_version"] == jax.__version__
    assert written["settings"]["scan_lengths"] == [8]
    assert set(written["summary"]) == set(bench.SUMMARY_DEFINITIONS)
    summary = written["summary"]
    for key in ("scan_fwd_speedup_vs_associative", "scan_fwdbwd_speedup_vs_associative",
                "scan_fwdbwd_memory_ratio_vs_associative", "scan_fwd_fraction_of_copy_bandwidth"):
        assert set(summary[key]) == set(bench.A_KINDS)
    for key in ("mixer_time_growth_16k_over_1k", "mixer_memory_ratio_vs_softmax_4k",
                "mixer_speedup_vs_softmax_4k", "mixer_speedup_vs_softmax_16k"):
        assert set(summary[key]) == set(mixers)
    for group in summary.values():
        for entry in group.values():
            assert _is_entry(entry), entry
    # Toy lengths: nothing at 16K was run, so the figures are taken at the lengths that were, and say which.
    varying = summary["scan_fwd_speedup_vs_associative"]["time_varying"]
    assert varying["lengths"] == [8]  # the toy run's methods do not include 'auto', which the summary needs
    assert "scan auto fwd (time_varying, L=8) was not run" in varying["reason"]
    assert "not run" in summary["scan_fwd_speedup_vs_associative"]["time_invariant"]["reason"]  # a kind not run
    assert summary["mixer_speedup_vs_softmax_16k"]["lru"]["lengths"] == [16]
    assert "needs two lengths" in summary["mixer_time_growth_16k_over_1k"]["lru"]["reason"]  # one length run
    assert summary["decode_time_growth_16k_over_1k"]["lru"]["lengths"] == [16, 8]
    assert "broken on purpose" in summary["mixer_speedup_vs_softmax_4k"][BROKEN]["reason"]
    assert written["summary_lengths"] == bench.SUMMARY_LENGTHS_NOTE
    assert "plots" in written


def test_scan_rows_agree_with_the_reference_and_have_ratios(toy_run):
    _, written, _ = toy_run
    rows = written["scan"]["rows"]
    expected = {(c, m) for c in ("sequential", *bench.SCAN_BASELINES) for m in ("fwd", "fwdbwd")}
    assert {(r["candidate"], r["mode"]) for r in rows if r["mode"] != "copy"} == expected
    for row in rows:
        assert row["status"] == "ok", row
        assert row["time"]["median_seconds"] > 0
        assert row["time"]["min_seconds"] <= row["time"]["median_seconds"] <= row["time"]["max_seconds"]
        if row["mode"] == "copy":
            assert row["copied_bytes"] == 2 * 8 * 4 * 8  # B L N complex64
            continue
        # The baselines and every method compute the same h (forward) and the same gradients (fwdbwd).
        assert row["reference"] == "sequential"
        assert row["max_relative_error_vs_reference"] < 1e-4, row
        assert row["memory"]["temp_bytes"] >= 0
        assert row["speedup_vs_associative_scan_autodiff"] > 0
        if row["mode"] == "fwd":
            assert row["fraction_of_copy_bandwidth"] > 0


def test_mixer_rows_record_the_broken_mixer_as_an_error(toy_run):
    _, written, mixers = toy_run
    rows = {r["mixer"]: r for r in written["mixers"]["rows"]}
    assert set(rows) == set(mixers)
    assert rows[BROKEN]["status"] == "error"
    assert "broken on purpose" in rows[BROKEN]["reason"]
    assert rows["lru"]["status"] == "ok"
    assert rows["lru"]["time"]["median_seconds"] > 0 and rows["lru"]["memory"]["temp_bytes"] > 0
    if bench.SOFTMAX in rows:
        assert rows[bench.SOFTMAX]["speedup_vs_softmax"] == pytest.approx(1.0)
        assert rows["lru"]["memory_ratio_vs_softmax"] == pytest.approx(
            rows["lru"]["memory"]["temp_bytes"] / rows[bench.SOFTMAX]["memory"]["temp_bytes"])


def test_decode_rows_cover_each_context_and_the_kv_cache_grows(toy_run):
    _, written, mixers = toy_run
    rows = written["decode"]["rows"]
    by_key = {(r["mixer"], r["context"]): r for r in rows}
    assert set(by_key) == {(m, c) for m in mixers for c in (8, 16)}
    assert by_key[("lru", 8)]["status"] == "ok" and by_key[("lru", 8)]["state_kind"] == "constant_size"
    assert by_key[("lru", 8)]["state_bytes"] == by_key[("lru", 16)]["state_bytes"]
    assert by_key[(BROKEN, 16)]["status"] == "error"
    if bench.SOFTMAX in mixers:
        small, large = by_key[(bench.SOFTMAX, 8)], by_key[(bench.SOFTMAX, 16)]
        assert small["status"] == "ok" and small["state_kind"] == "key_value_cache"
        assert large["state_bytes"] > small["state_bytes"]  # the cache holds `context` entries


def test_memory_limit_skips_instead_of_running(tmp_path):
    settings = bench.Settings(out=str(tmp_path / "skip.json"), suites=("decode",), mixers=("lru",),
                              decode_lengths=(8,), decode_batch=1, d_model=4, max_memory_gb=1e-12,
                              plots=False)
    results = bench.run(settings)
    (row,) = results["decode"]["rows"]
    assert row["status"] == "skipped" and "max_memory_gb" in row["reason"]
    assert "time" not in row
    entry = results["summary"]["decode_time_growth_16k_over_1k"]["lru"]
    assert entry["value"] is None and "only context 8 was run" in entry["reason"]


def _timed(median: float, temp: int | None = 100) -> dict:
    return {"status": "ok", "reason": None, "time": {"median_seconds": median},
            "memory": {"temp_bytes": temp}}


def test_summary_ratios_are_the_ratios_of_the_named_rows():
    scan_rows = []
    for candidate, mode, median, temp in (("auto", "fwd", 2.0, 10),
                                          ("associative_scan_autodiff", "fwd", 6.0, 30),
                                          ("auto", "fwdbwd", 4.0, 50),
                                          ("associative_scan_autodiff", "fwdbwd", 5.0, 200),
                                          (bench.NUMPY_COPY, "copy", 0.5, None)):
        scan_rows.append(dict(_timed(median, temp), a_kind="time_invariant", length=16384,
                              candidate=candidate, mode=mode))
    mixer_rows = [dict(_timed(t, m), mixer=name, length=length) for name, length, t, m in (
        ("lru", 1024, 1.0, 10), ("lru", 4096, 3.0, 40), ("lru", 16384, 12.0, 160),
        (bench.SOFTMAX, 1024, 2.0, 100), (bench.SOFTMAX, 4096, 24.0, 1600))]
    mixer_rows.append({"status": "skipped", "reason": "too big", "memory": {"temp_bytes": 10**12},
                       "mixer": bench.SOFTMAX, "length": 16384})
    decode_rows = [dict(_timed(t), mixer="lru", context=c) for c, t in ((1024, 1e-3), (16384, 2e-3))]
    results = {"scan": {"rows": scan_rows},
               "mixers": {"mixers": ["lru", bench.SOFTMAX], "rows": mixer_rows},
               "decode": {"causal_mixers": ["lru"], "rows": decode_rows}}
    summary = bench.summarize(results)
    assert summary["scan_fwd_speedup_vs_associative"]["time_invariant"]["value"] == pytest.approx(3.0)
    assert summary["scan_fwdbwd_speedup_vs_associative"]["time_invariant"]["value"] == pytest.approx(1.25)
    memory_ratio = summary["scan_fwdbwd_memory_ratio_vs_associative"]["time_invariant"]["value"]
    assert memory_ratio == pytest.approx(0.25)
    assert summary["scan_fwd_fraction_of_copy_bandwidth"]["time_invariant"]["value"] == pytest.approx(0.25)
    assert summary["scan_fwd_speedup_vs_associative"]["time_varying"]["value"] is None
    assert summary["scan_fwd_speedup_vs_associative"]["time_invariant"]["lengths"] == [16384]
    assert summary["mixer_time_growth_16k_over_1k"]["lru"]["value"] == pytest.approx(12.0)
    assert summary["mixer_time_growth_16k_over_1k"]["lru"]["lengths"] == [16384, 1024]
    assert summary["mixer_speedup_vs_softmax_4k"]["lru"]["lengths"] == [4096]
    assert summary["mixer_memory_ratio_vs_softmax_4k"]["lru"]["value"] == pytest.approx(40 / 1600)
    assert summary["mixer_speedup_vs_softmax_4k"]["lru"]["value"] == pytest.approx(8.0)
    sixteen = summary["mixer_speedup_vs_softmax_16k"]["lru"]
    assert sixteen["value"] is None and "too big" in sixteen["reason"]
    assert summary["mixer_time_growth_16k_over_1k"][bench.SOFTMAX]["value"] is None
    assert summary["decode_time_growth_16k_over_1k"]["lru"]["value"] == pytest.approx(2.0)


def test_summary_lengths_fall_back_to_the_lengths_that_were_run():
    assert bench.summary_length(4096, [1024, 4096, 16384]) == 4096
    assert bench.summary_length(4096, [256, 512]) == 512
    assert bench.summary_length(4096, [1024, 8192]) == 1024  # the longest below, not the nearest
    assert bench.summary_length(4096, [8192, 16384]) == 8192  # nothing below: the shortest
    assert bench.summary_growth_lengths(16384, 1024, [1024, 4096, 16384]) == (16384, 1024)
    assert bench.summary_growth_lengths(16384, 1024, [256, 1024]) == (1024, 256)
    assert bench.summary_growth_lengths(16384, 1024, [512]) is None
    # Rows at the --quick lengths only: every figure is computed there, and names its lengths.
    scan_rows = [dict(_timed(median * length, temp and temp * length), a_kind=kind, length=length, candidate=candidate,
                      mode=mode)
                 for kind in bench.A_KINDS for length in bench.QUICK["scan_lengths"]
                 for candidate, mode, median, temp in (("auto", "fwd", 1.0, 1), ("auto", "fwdbwd", 2.0, 1),
                                                       ("associative_scan_autodiff", "fwd", 3.0, 2),
                                                       ("associative_scan_autodiff", "fwdbwd", 8.0, 4),
                                                       (bench.NUMPY_COPY, "copy", 0.5, None))]
    mixer_rows = [dict(_timed(t * length, m * length), mixer=name, length=length)
                  for length in bench.QUICK["mixer_lengths"]
                  for name, t, m in (("lru", 1.0, 1), (bench.SOFTMAX, 5.0, 10))]
    decode_rows = [dict(_timed(1e-3), mixer="lru", context=c) for c in bench.QUICK["decode_lengths"]]
    summary = bench.summarize({"scan": {"rows": scan_rows},
                               "mixers": {"mixers": ["lru", bench.SOFTMAX], "rows": mixer_rows},
                               "decode": {"causal_mixers": ["lru"], "rows": decode_rows}})
    longest_scan = max(bench.QUICK["scan_lengths"])
    short, long = min(bench.QUICK["mixer_lengths"]), max(bench.QUICK["mixer_lengths"])
    assert summary["scan_fwdbwd_speedup_vs_associative"]["time_varying"] == {
        "value": pytest.approx(4.0), "reason": None, "lengths": [longest_scan]}
    assert summary["scan_fwdbwd_memory_ratio_vs_associative"]["time_invariant"]["value"] == pytest.approx(0.25)
    assert summary["mixer_time_growth_16k_over_1k"]["lru"] == {
        "value": pytest.approx(long / short), "reason": None, "lengths": [long, short]}
    assert summary["mixer_speedup_vs_softmax_4k"]["lru"] == {"value": pytest.approx(5.0), "reason": None,
                                                           "lengths": [long]}
    assert summary["mixer_memory_ratio_vs_softmax_4k"]["lru"]["value"] == pytest.approx(0.1)
    decode_lengths = bench.QUICK["decode_lengths"]
    assert summary["decode_time_growth_16k_over_1k"]["lru"]["lengths"] == [max(decode_lengths), min(decode_lengths)]
    assert all(entry["value"] is not None for group in summary.values() for entry in group.values()), summary


def test_summary_without_softmax_says_the_baseline_is_missing():
    results = {"mixers": {"mixers": ["lru"], "rows": [dict(_timed(1.0), mixer="lru", length=4096)]}}
    entry = bench.summarize(results)["mixer_speedup_vs_softmax_4k"]["lru"]
    assert entry["value"] is None and "not registered" in entry["reason"]


def test_baselines_match_a_python_loop(x64):
    rng = np.random.default_rng(0)
    b = rng.standard_normal((2, 5, 3)) + 1j * rng.standard_normal((2, 5, 3))
    for a in (rng.uniform(0.5, 1.0, (3,)) * np.exp(1j * rng.uniform(0, 6, (3,))),
              rng.uniform(0.5, 1.0, (2, 5, 3)) * np.exp(1j * rng.uniform(0, 6, (2, 5, 3)))):
        expected = np.zeros_like(b)
        h = np.zeros((2, 3), complex)
        for t in range(5):
            h = (a[:, t] if a.ndim == 3 else a) * h + b[:, t]
            expected[:, t] = h
        for baseline in (bench.associative_scan_autodiff, bench.lax_scan_autodiff):
            np.testing.assert_allclose(baseline(jnp.asarray(a), jnp.asarray(b)), expected, rtol=1e-12)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown suite"):
        bench.Settings(suites=("scan", "nope")).validate()
    with pytest.raises(ValueError, match="scan_methods"):
        bench.Settings(scan_methods=("fast",)).validate()
    with pytest.raises(ValueError, match="mixer_batch"):
        bench.Settings(mixer_batch=0).validate()


def _assert_png(path: str, min_bytes: int) -> None:
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", (path, data[:16])
    assert data[-8:-4] == b"IEND", path  # complete
    assert len(data) > min_bytes, (path, len(data))


def test_the_run_draws_one_png_per_suite(toy_run):
    _, written, _ = toy_run
    stem = os.path.splitext(written["settings"]["out"])[0]
    assert written["plots"] == {suite: f"{stem}_{suite}.png" for suite in ("scan", "mixers", "decode")}
    for suite, path in written["plots"].items():
        # 120 dpi, 5 x 4 inches per panel: scan has fwd and fwdbwd for the one a kind run, mixers time and
        # memory, decode time.
        panels = {"scan": 2, "mixers": 2, "decode": 1}[suite]
        with open(path, "rb") as f:
            header = f.read(24)
        assert struct.unpack(">II", header[16:24]) == (600 * panels, 480), (suite, header)
        _assert_png(path, 12_000 * panels)  # titles, legends, lines; an empty panel with ticks is ~9 KB


def test_a_plot_that_fails_becomes_an_error_entry(toy_run, tmp_path):
    _, written, _ = toy_run
    paths = bench.write_plots({"decode": written["decode"]}, str(tmp_path / "missing_dir" / "x.json"))
    assert set(paths) == {"decode"}
    assert "No such file or directory" in paths["decode"]["error"], paths  # the directory does not exist


def test_mixer_option_overrides_one_mixer_and_rejects_unknown_options():
    assert bench.parse_mixer_overrides(["softmax.num_heads=1", "softmax.position='rope'", "lru.r_max=0.9"]) == {
        "softmax": {"num_heads": 1, "position": "rope"}, "lru": {"r_max": 0.9}}
    base = bench.mixer_options_for("softmax", 64)
    options = bench.mixer_options_for("softmax", 64, overrides=["softmax.num_heads=1", "lru.r_max=0.9"])
    assert options["num_heads"] == 1 and base["num_heads"] != 1
    assert {k: v for k, v in options.items() if k != "num_heads"} == {
        k: v for k, v in base.items() if k != "num_heads"}
    with pytest.raises(ValueError, match="softmax.bogus"):
        bench.mixer_options_for("softmax", 64, overrides=["softmax.bogus=1"])
    with pytest.raises(ValueError, match="NAME.OPTION=VALUE"):
        bench.parse_mixer_overrides(["num_heads=1"])


@pytest.mark.slow  # the 10-minute test budget: the toy run above covers every suite and summary key in process
def test_quick_run_prints_a_summary_without_nulls(tmp_path):
    """`--quick` as a user runs it (the CLI, its sizes), restricted to two mixers and the 'auto' scan method
    (the ones the summary needs) to stay short: every printed summary figure is a number, at the quick lengths."""
    out = tmp_path / "quick" / "quick.json"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.bench", "--quick", f"--out={out}", "--mixers=lru,softmax",
         "--scan_methods=auto", "--noplots"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    summary = printed["summary"]
    assert set(summary) == set(bench.SUMMARY_DEFINITIONS)
    nulls = [(key, name, entry["reason"]) for key, group in summary.items() for name, entry in group.items()
             if entry["value"] is None]
    assert nulls == []
    assert set(summary["scan_fwd_speedup_vs_associative"]) == set(bench.A_KINDS)
    assert set(summary["mixer_speedup_vs_softmax_4k"]) == {"lru", bench.SOFTMAX}
    assert {"lru", bench.SOFTMAX} <= set(summary["decode_time_growth_16k_over_1k"])
    for group in summary.values():
        for entry in group.values():
            assert _is_entry(entry), entry
    quick = bench.QUICK
    assert summary["scan_fwd_fraction_of_copy_bandwidth"]["time_varying"]["lengths"] == [max(quick["scan_lengths"])]
    assert summary["mixer_time_growth_16k_over_1k"]["lru"]["lengths"] == [max(quick["mixer_lengths"]),
                                                                         min(quick["mixer_lengths"])]
    assert summary["mixer_speedup_vs_softmax_4k"][bench.SOFTMAX]["value"] == pytest.approx(1.0)
    assert summary["decode_time_growth_16k_over_1k"]["lru"]["lengths"] == [max(quick["decode_lengths"]),
                                                                          min(quick["decode_lengths"])]
    with open(out) as f:
        written = json.load(f)
    assert written["settings"]["n_layers"] == quick["n_layers"] and written["summary"] == summary


# ------------------------------------------------------------------------------------------------ memory guard


def test_a_case_whose_arguments_and_outputs_exceed_the_budget_is_skipped():
    """The guard counts arguments + outputs + temp + host arrays, not temp alone: doubling a 16 MiB array needs
    no temp memory but holds 32 MiB at once."""
    mib = 1024**2
    x = jax.ShapeDtypeStruct((4 * mib,), jnp.float32)  # 16 MiB
    row = bench._new_row("double")
    case = bench.compile_case(row, lambda v: v * 2.0, (x,), max_bytes=24 * mib)
    stats = row["memory"]
    assert stats["temp_bytes"] < 24 * mib  # a guard on temp memory alone would have run it
    assert stats["argument_bytes"] == stats["output_bytes"] == 16 * mib
    assert stats["total_bytes"] == 32 * mib - stats["alias_bytes"] + stats["temp_bytes"]
    assert row["status"] == "skipped" and not case.runnable and case.call is None
    assert row["reason"].startswith("needs 0.03 GiB at once (arguments 0.02 + outputs 0.02 - donated 0.00 + temp ")
    assert "more than --max_memory_gb=0.0234375; not run" in row["reason"]

    row = bench._new_row("double")
    case = bench.compile_case(row, lambda v: v * 2.0, (x,), max_bytes=40 * mib, host_bytes=10 * mib)
    assert row["status"] == "skipped" and "host arrays 0.01 GiB" in row["reason"]  # 32 + 10 > 40

    row = bench._new_row("double")
    case = bench.compile_case(row, lambda v: v * 2.0, (x,), max_bytes=40 * mib)
    assert row["status"] == "ok" and case.runnable and case.call is None  # abstract arguments: not bound yet
    case.bind((jnp.ones(x.shape, x.dtype),))
    assert float(case.call()[0]) == 2.0


# B = 2, L = 64, N = 4, time-varying a: a and b are 4 KiB each; the host arrays are the copy's destination (4 KiB)
# and the references (h, grad a and grad b: 12 KiB), so the numpy copy holds 24 KiB and every compiled case more.
@pytest.mark.parametrize("budget_bytes", [1024, 24 * 1024 + 1], ids=["nothing-fits", "only-the-copy-would-fit"])
def test_the_scan_suite_builds_no_inputs_for_a_size_that_cannot_fit(tmp_path, monkeypatch, budget_bytes):
    def refuse(*args, **kwargs):
        raise AssertionError("inputs built for a size whose cases were all skipped")

    monkeypatch.setattr("experiments.bench.scan._scan_inputs", refuse)
    settings = bench.Settings(out=str(tmp_path / "scan.json"), suites=("scan",), scan_lengths=(64,), scan_batch=2,
                              scan_state=4, scan_methods=("sequential",), scan_a_kinds=("time_varying",),
                              max_memory_gb=budget_bytes / bench.GIB, plots=False)
    results = bench.run(settings)
    assert "error" not in results["scan"], results["scan"]
    rows = results["scan"]["rows"]
    assert len(rows) == 2 * (1 + len(bench.SCAN_BASELINES)) + 1  # both modes, and the numpy copy
    for row in rows:
        assert row["status"] == "skipped" and "max_memory_gb" in row["reason"] and "time" not in row, row
        assert row["memory"]["host_bytes"] == 16 * 1024  # copy destination + h + (grad a, grad b)
    (copy,) = [row for row in rows if row["mode"] == "copy"]
    assert copy["memory"]["total_bytes"] == 24 * 1024
    if budget_bytes > 24 * 1024:
        assert "the bandwidth reference is not run alone" in copy["reason"]


def test_the_default_budget_is_at_most_half_the_machine():
    from experiments.memory import machine_memory

    half = machine_memory().total_bytes / 2
    assert bench.memory_budget_bytes(bench.Settings()) == min(bench.DEFAULT_MAX_MEMORY_GB * bench.GIB, half)
    assert bench.memory_budget_bytes(bench.Settings(max_memory_gb=14)) == 14 * bench.GIB
    with pytest.raises(ValueError, match="max_memory_gb"):
        bench.Settings(max_memory_gb=0).validate()
