"""The checks of a run's start that need JAX (experiments/workdir.py stays importable without it): the workdir is
writable (check_workdir) and has room for the checkpoints (check_checkpoint_space), its contents belong to this
run (check_workdir_contents), and config.json is written or compared with the saved one (check_and_save_config,
RESUMABLE_KEYS); prepare_workdir creates it. Re-exported by experiments.trainer.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from experiments import workdir as workdir_lib
from experiments.configs.base import base_config
from experiments.errors import ConfigMismatchError

# Keys that may differ when a run resumes: they change how long it trains and how often it reports, not what it
# trains. Raising train.num_steps extends a finished or stopped run (see train_and_evaluate for the schedule).
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                  "train.keep_checkpoints")


def check_workdir(workdir: str, probe_bytes: int = 1 << 20) -> None:
    """Fails at start, not hours later, when the workdir cannot be created or written (read-only, disk full).

    Nothing is left behind: a missing workdir is not created here (its closest existing ancestor is probed
    instead), so a run that fails later in its start leaves no trace. Object-store URLs are not probed.
    """
    if workdir_lib.is_remote(workdir):
        return
    existing = workdir_lib.nearest_existing(workdir)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, f"{existing} is a file, not a directory")
        probe = os.path.join(existing, f".write_probe.{socket.gethostname()}.{jax.process_index()}.{os.getpid()}")
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * probe_bytes)
                f.flush()
                os.fsync(f.fileno())
        finally:
            if os.path.exists(probe):
                os.remove(probe)
    except OSError as error:
        raise OSError(f"--workdir={workdir} is not usable: {error.strerror or error} ({type(error).__name__}); "
                      "checkpoints, metrics and results are written there, so it must be a writable directory "
                      "with free space") from error


def check_checkpoint_space(workdir: str, state: Any, keep: int, free_bytes: int | None = None) -> None:
    """Fails at start when the workdir's disk cannot hold the checkpoints this run will keep.

    Needed: the state's bytes times (keep + 2): the last `keep` checkpoints, the best one and one being written.
    `free_bytes` defaults to the free space of the workdir's file system (shutil.disk_usage); `state` may be
    abstract (shapes and dtypes only).
    """
    if free_bytes is None and workdir_lib.is_remote(workdir):
        return
    state_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    needed = state_bytes * (keep + 2)
    if free_bytes is None:
        free_bytes = shutil.disk_usage(workdir_lib.nearest_existing(workdir)).free
    if free_bytes < needed:
        raise OSError(f"--workdir={workdir} is not usable: {free_bytes / 2**20:.1f} MiB free, but the checkpoints "
                      f"of this run need about {needed / 2**20:.1f} MiB ({keep} kept + best + one being written, "
                      f"{state_bytes / 2**20:.1f} MiB each); free space or choose another workdir")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def check_workdir_contents(workdir: str) -> dict | None:
    """The saved config.json of an existing workdir (None for a new one), read before anything is written:
    WorkdirError when it is damaged, ConfigMismatchError when checkpoints lie there without one (nothing then
    says which model they belong to)."""
    if not workdir_lib.path(workdir).is_dir():
        return None
    saved = workdir_lib.read_json(workdir, "config.json")
    if saved is None:
        steps = workdir_lib.checkpoint_steps(workdir) + workdir_lib.checkpoint_steps(workdir, "best")
        if steps:
            raise ConfigMismatchError(
                f"{workdir} holds checkpoints (steps {sorted(set(steps))}) but no config.json, so nothing says which "
                "model they belong to; nothing was touched. Use another --workdir, or restore its config.json")
    return saved


def check_and_save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes workdir/config.json, or, on a restart, checks the config against the saved one.

    * equal: nothing to do;
    * the workdir holds no checkpoint (an earlier start failed before its first save): the new config replaces
      the saved one, with an INFO line, so a corrected command is not refused;
    * only RESUMABLE_KEYS differ: the new values are saved (raising train.num_steps extends the run; lowering it
      below the newest checkpoint is refused);
    * anything else differs: ConfigMismatchError naming every differing key with both values.
    """
    current = json.loads(config.to_json())
    saved = check_workdir_contents(workdir)
    if saved is not None:
        old, new = _flatten(saved), _flatten(current)
        # A key that a newer version of the schema added, at its default value, changes nothing.
        defaults = _flatten(json.loads(base_config().to_json()))
        differing = sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>")
                           and not (k not in old and k in defaults and new.get(k) == defaults[k]))
        if not differing:
            return
        details = "; ".join(f"{k}: saved {old.get(k, '<absent>')!r}, now {new.get(k, '<absent>')!r}"
                            for k in differing)
        steps = workdir_lib.checkpoint_steps(workdir) + workdir_lib.checkpoint_steps(workdir, "best")
        config_path = workdir_lib.path(workdir, "config.json")
        if not steps:
            logging.info("%s belongs to a start that saved no checkpoint; this run's config replaces it (%s)",
                         config_path, details)
        elif set(differing) <= set(RESUMABLE_KEYS):
            newest = max(steps)
            if config.train.num_steps < newest:
                raise ConfigMismatchError(
                    f"--config.train.num_steps={config.train.num_steps} is below the newest checkpoint in {workdir} "
                    f"(step {newest}); a run cannot be shortened: use a new --workdir, or evaluate the finished run "
                    f"with python -m experiments.evaluate --workdir={workdir}")
            if new.get("train.num_steps") != old.get("train.num_steps"):
                logging.info("extending the run in %s from %s to %s steps: it resumes at step %d, and the learning "
                             "rate follows the schedule of the new total from there", workdir,
                             old.get("train.num_steps"), new["train.num_steps"], newest)
            logging.info("saving the changed keys to %s (%s)", config_path, details)
        else:
            raise ConfigMismatchError(
                f"the config differs from the one saved in {config_path}, so this run cannot resume there: {details}. "
                f"Use a new --workdir, or restore the saved values (only {', '.join(RESUMABLE_KEYS)} may change "
                "on a resume)")
    if jax.process_index() == 0:
        workdir_lib.write_json(workdir, "config.json", current)


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir (once the config, data and model are known to be good) and checks it is writable."""
    if jax.process_index() == 0 or not workdir_lib.is_remote(workdir):
        workdir_lib.path(workdir).mkdir(parents=True, exist_ok=True)
    check_workdir(workdir)
