"""python -m experiments.bench: the command line of the benchmark (flags -> Settings -> run; the summary on stdout).

The flags are defined here, in the module that runs as the program only, so that importing experiments.bench
(tests, notebooks, other entry points) defines none. See experiments/bench/__init__.py for the suites and the
method.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import signal
from collections.abc import Sequence

from absl import app, flags

from experiments import bench
from experiments.bench.core import A_KINDS, DEFAULT_MAX_MEMORY_GB, QUICK, SCAN_METHODS, SUITES, Settings, _jsonable
from experiments.bench.mixers import mixer_options_for, parse_mixer_overrides
from experiments.bench.runner import run
from experiments.bench.summary import SUMMARY_LENGTHS_NOTE

# absl prints the program's docstring as the usage text of --help: the package's, which describes the suites and
# the method (as it did when the benchmark was one module).
__doc__ = bench.__doc__

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
    """The Settings of the command line; with --quick, QUICK's sizes for every size flag not given explicitly."""
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
    """Checks --mixer_option, runs the benchmark and prints {out, plots, summary, summary_lengths} as JSON."""
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
