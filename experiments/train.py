r"""Trains a mixer on an LRA task, evaluates it, and writes everything under --workdir.

    python -m experiments.train                                      # LRU on a small generated ListOps (CPU)
    python -m experiments.train --workdir=/tmp/run --config.model.mixer=lru --config.train.num_steps=3000
    python -m experiments.train --config=experiments/configs/listops.py:lru --workdir=gs://...   # paper settings

Restarting the same command resumes from the newest checkpoint in --workdir. Multi-host: start the same command
on every host with --coordinator_address, --num_processes and --process_id (or let jax.distributed detect the
cluster on TPU / SLURM with --distributed).
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "listops.py")

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Config file (optionally path:variant).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/default", "Directory for checkpoints, metrics and results.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (auto-detected cluster, e.g. TPU pods or SLURM).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Number of processes (hosts) in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in a multi-host run.")


def _quiet_library_logs() -> None:
    """Orbax reports every read and write at INFO through absl; keep its warnings and errors only."""
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    _quiet_library_logs()
    from experiments.validation import ConfigError, validate_config

    try:  # before JAX starts: a bad flag fails here in about a second, naming the key
        validate_config(_CONFIG.value)
    except ConfigError as error:
        sys.exit(f"invalid --config: {error}")
    import jax

    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    from experiments.trainer import Preempted, train_and_evaluate

    logging.info("JAX %s: process %d of %d, %d local / %d global devices (%s)", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.default_backend())
    try:
        results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Preempted as stopped:
        logging.warning("%s", stopped)
        sys.exit(128 + stopped.signum)  # non-zero: the job did not finish and should be restarted
    if jax.process_index() == 0:
        print(json.dumps(results, indent=2))
        print(f"validation accuracy {results['val_accuracy']:.4f} | test accuracy {results['test_accuracy']:.4f} "
              f"(majority rate {results['test_majority_rate']:.4f}) | results in "
              f"{os.path.join(_WORKDIR.value, 'results.json')}")


if __name__ == "__main__":
    app.run(main)
