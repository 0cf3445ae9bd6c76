"""One benchmark run: the environment record, the selected suites in order, the JSON written after every size,
the summary and the plots (`run`)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from typing import Any

import jax
import numpy as np

from experiments.bench.core import SUITES, Settings, _error_text, _jsonable, memory_budget_bytes
from experiments.bench.decode import decode_suite
from experiments.bench.mixers import import_model_modules, mixers_suite
from experiments.bench.scan import scan_suite
from experiments.bench.summary import SUMMARY_DEFINITIONS, SUMMARY_LENGTHS_NOTE, summarize, write_plots


def environment() -> dict[str, Any]:
    """Where the numbers come from: versions, backend and devices, CPUs, platform, git commit, XLA_FLAGS, load."""
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
