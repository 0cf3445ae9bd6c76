"""From a config to the task's splits: a call to the loader its TaskSpec carries for the configured source.

Each task's spec (lra/tasks.py) maps its data sources ("generated", "files") to loaders and says what the files
loader reads from data.data_dir and which `python -m lra.download` target fetches it; `python -m experiments.train
--list` prints the table. Generated data and preprocessed arrays are cached under `cache_root(config)`.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

import lra


def cache_root(config: ml_collections.ConfigDict) -> str:
    """Where generated data and preprocessed arrays are cached: data.cache_dir, else $LRA_MIXERS_CACHE, else
    ~/.cache/lra-mixers (absolute)."""
    root = config.data.cache_dir or os.environ.get("LRA_MIXERS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "lra-mixers")
    return os.path.abspath(root)


def task_spec(config: ml_collections.ConfigDict) -> lra.TaskSpec:
    """The task's spec, with the configured sequence length when one is set."""
    spec = lra.get_task(config.task)
    if config.data.seq_len:
        spec = dataclasses.replace(spec, seq_len=int(config.data.seq_len))
    return spec


def load_splits(config: ml_collections.ConfigDict) -> dict[str, lra.Split]:
    """Returns {"train", "val", "test"} splits for the configured task, from its spec's loader."""
    spec = task_spec(config)
    request = lra.DataRequest(source=config.data.source, data_dir=config.data.data_dir, cache_dir=cache_root(config),
                              seq_len=spec.seq_len, options=config.data.to_dict())
    return spec.load(request)
