"""Speed and memory benchmarks: the linear-recurrence op, every registered mixer in the encoder, and decoding.

    python -m experiments.bench --quick --out=/tmp/bench/quick.json
    python -m experiments.bench --suites=scan --scan_lengths=1024,4096,16384 --out=/tmp/bench/scan.json
    python -m experiments.bench --compile_only --out=/tmp/bench/plan.json   # each case's memory; nothing is run

Suites (`--suites`, comma separated):
  scan     `linear_recurrence` (ops/scan.py, reached through models/kernels.py) forward and forward+backward
           (grad of a scalar loss w.r.t. a and b) for each method, against two autodiff baselines written here
           -- `lax.associative_scan` with the standard binary operator (what the S5 and LRU reference code do)
           and a plain `lax.scan` -- and against the memory-bandwidth reference, a numpy copy of b's bytes. a is
           time-invariant (N,) or time-varying (B, L, N); b is (B, L, N) complex64.
  mixers   one training step of the trainer (experiments.trainer.make_train_step: forward + backward +
           optimiser update + non-finite checks) of the same small encoder (build_model, create_state) for every
           registered mixer as L grows, against dense softmax attention (models.BASELINE_MIXER): the LRA speed
           table on this hardware.
  decode   one decoding step (mixer.step) at context lengths L for every causal mixer with init_state / step,
           against softmax attention with a key-value cache of L entries. Mixers are read only through their
           registry contracts (models.registry.resolve_mixer / mixer_contract): the options the configs start
           from, the causal form, the recurrent step.

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

Modules: core (Settings, Case, compile_case, time_interleaved, the memory guard), scan, mixers (also the mixer
options of both mixer suites, from the registry's contracts: resolve_for_bench, mixer_options_for), decode,
summary (summarize, write_plots), runner (environment, run) and __main__ (the flags). Everything public is
re-exported here: `from experiments import bench; bench.run(bench.Settings(...))`.
"""

from __future__ import annotations

from experiments.bench.core import (
    A_KINDS,
    DEFAULT_MAX_MEMORY_GB,
    GIB,
    NUMPY_COPY,
    QUICK,
    SCAN_BASELINES,
    SCAN_METHODS,
    SOFTMAX,
    SUITES,
    Case,
    Settings,
    case_bytes,
    compile_case,
    memory_budget_bytes,
    memory_stats,
    time_interleaved,
)
from experiments.bench.core import _jsonable as _jsonable  # package-internal helpers that the tests use
from experiments.bench.core import _new_row as _new_row
from experiments.bench.decode import decode_suite
from experiments.bench.mixers import (
    import_model_modules,
    mixer_options_for,
    mixers_suite,
    parse_mixer_overrides,
    resolve_for_bench,
    trainer_config,
)
from experiments.bench.runner import environment, run
from experiments.bench.scan import associative_scan_autodiff, lax_scan_autodiff, scan_suite
from experiments.bench.summary import (
    SUMMARY_DEFINITIONS,
    SUMMARY_LENGTHS_NOTE,
    SUMMARY_SCAN_LENGTH,
    summarize,
    summary_growth_lengths,
    summary_length,
    write_plots,
)

__all__ = [
    "A_KINDS",
    "DEFAULT_MAX_MEMORY_GB",
    "GIB",
    "NUMPY_COPY",
    "QUICK",
    "SCAN_BASELINES",
    "SCAN_METHODS",
    "SOFTMAX",
    "SUITES",
    "SUMMARY_DEFINITIONS",
    "SUMMARY_LENGTHS_NOTE",
    "SUMMARY_SCAN_LENGTH",
    "Case",
    "Settings",
    "associative_scan_autodiff",
    "case_bytes",
    "compile_case",
    "decode_suite",
    "environment",
    "import_model_modules",
    "lax_scan_autodiff",
    "memory_budget_bytes",
    "memory_stats",
    "mixer_options_for",
    "mixers_suite",
    "parse_mixer_overrides",
    "resolve_for_bench",
    "run",
    "scan_suite",
    "summarize",
    "summary_growth_lengths",
    "summary_length",
    "time_interleaved",
    "trainer_config",
    "write_plots",
]
