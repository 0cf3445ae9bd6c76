"""The run's orbax checkpoints: the last `keep_checkpoints` under workdir/checkpoints, the best by validation
accuracy under workdir/best, each with a small meta record (checked_meta, META_DEFAULTS). Saves run in the
background and are checked; a non-finite state is never saved; restores fall back to older checkpoints and move
damaged ones aside. Re-exported by experiments.trainer.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from experiments import workdir as workdir_lib
from experiments.errors import NonFiniteError
from experiments.steps import State


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    """One flag: every leaf of `tree` is finite (integers always are)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [jnp.array(True)]))


META_DEFAULTS = {"best_val_accuracy": -1.0, "best_step": -1, "wall_seconds": 0.0}


def checked_meta(meta: Any, where: str) -> dict:
    """A checkpoint's meta record with its keys filled in (a warning for each missing one); CheckpointError when it
    is not a record of numbers (the checkpoint is then treated as damaged)."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: its meta item is {type(meta).__name__}, not a record")
    out = dict(META_DEFAULTS)
    for key, default in META_DEFAULTS.items():
        if key not in meta:
            logging.warning("%s: its meta item lacks %r; using %r", where, key, default)
            continue
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(f"{where}: its meta item has {key}={value!r}, not a finite number")
        out[key] = value
    out["best_step"] = int(out["best_step"])
    return out


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the run stops at once, keeping the last good checkpoint."""


class Checkpoints:
    """The latest `keep` checkpoints under workdir/checkpoints and the best one under workdir/best.

    Each checkpoint holds the train state and a small JSON record (best validation accuracy so far, its step,
    the wall time used). Writes are atomic (orbax writes to a temporary directory and renames it), so a
    run killed while writing leaves the previous checkpoint intact. Saves run in the background; `poll()` (called
    every step) and `wait()` check that each one finished, and any failure -- raised when the save starts or
    found when it ends -- stops the run with a CheckpointError naming the step and the last good checkpoint.
    """

    def __init__(self, workdir: str, keep: int, read_only: bool = False) -> None:
        def manager(name: str, max_to_keep: int) -> ocp.CheckpointManager:
            # Orbax names its cross-process barriers by step only ("_async_commit_complete.2"): without a prefix
            # per manager, "checkpoints" and "best" saving the same step at once collide in a multi-host run.
            multiprocessing = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
            if read_only:  # evaluation: nothing created, cleaned up or deleted
                options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                       multiprocessing_options=multiprocessing)
            else:
                options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                       cleanup_tmp_directories=True,
                                                       multiprocessing_options=multiprocessing)
            return ocp.CheckpointManager(workdir_lib.path(workdir, name), options=options,
                                         item_names=("state", "meta"))

        self.workdir = workdir
        self.read_only = read_only
        self.latest = manager("checkpoints", keep)
        self.best = manager("best", 1)
        self._pending: list[tuple[ocp.CheckpointManager, int]] = []  # saves started, not yet checked

    def _last_good(self) -> str:
        steps = [s for s in workdir_lib.checkpoint_steps(self.workdir) if (self.latest, s) not in self._pending]
        return f"the last good checkpoint (step {max(steps)}) is kept" if steps else "no earlier checkpoint exists"

    def _save(self, manager: ocp.CheckpointManager, step: int, state: State, meta: dict) -> None:
        self.poll()
        if not bool(_all_finite(state)):
            raise NonFiniteError(f"refusing to save the checkpoint of step {step} in {manager.directory}: the state "
                                 f"holds non-finite values; {self._last_good()}")
        try:
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as error:
            raise CheckpointError(f"saving the checkpoint of step {step} in {manager.directory} failed "
                                  f"({type(error).__name__}: {error}); {self._last_good()}") from error
        self._pending.append((manager, step))

    def _check(self, manager: ocp.CheckpointManager, step: int) -> None:
        """A finished background save left a complete checkpoint directory (orbax logs, then drops, failures)."""
        try:
            manager.check_for_errors()
            complete = (epath.Path(manager.directory) / str(step)).is_dir()
        except Exception as error:
            raise CheckpointError(f"saving the checkpoint of step {step} in {manager.directory} failed "
                                  f"({type(error).__name__}: {error}); {self._last_good()}") from error
        if not complete:
            raise CheckpointError(f"saving the checkpoint of step {step} in {manager.directory} failed (no "
                                  f"complete checkpoint was written; see the error logged above); {self._last_good()}")
        self._pending.remove((manager, step))

    def poll(self) -> None:
        """Checks the background saves that have finished; raises CheckpointError for a failed one.

        Orbax runs one save per manager at a time (a new save first waits for the previous one), so every pending
        save but a manager's newest is known to have finished; the newest has once the manager is idle.
        """
        for manager in (self.latest, self.best):
            steps = [step for m, step in self._pending if m is manager]
            finished = steps if not manager.is_saving_in_progress() else steps[:-1]
            for step in finished:
                self._check(manager, step)

    def save(self, step: int, state: State, meta: dict) -> None:
        """Starts saving the checkpoint of `step` (replacing a damaged one of that step that restore skipped)."""
        if step in self.latest.all_steps():  # a damaged checkpoint that restore skipped: replace it
            self.latest.delete(step)
        self._save(self.latest, step, state, meta)

    def save_best(self, step: int, state: State, meta: dict) -> None:
        # A resumed run that re-validates a step already saved here reproduces the same state: keep the old one.
        """Starts saving `state` as the best checkpoint (kept: 1), unless this step is already saved there."""
        if step not in self.best.all_steps():
            self._save(self.best, step, state, meta)

    @staticmethod
    def _restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[State, dict]:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        where = f"checkpoint {epath.Path(manager.directory) / str(step)}"
        return restored["state"], checked_meta(restored["meta"], where)

    def _move_aside(self, manager: ocp.CheckpointManager, steps: list[int]) -> None:
        """Renames damaged checkpoints to <step>.damaged (kept for inspection; orbax no longer sees them)."""
        if jax.process_index() == 0:
            for step in steps:
                source = epath.Path(manager.directory) / str(step)
                target = epath.Path(manager.directory) / f"{step}.damaged"
                if target.exists():
                    target = epath.Path(manager.directory) / f"{step}.damaged.{int(time.time())}"
                source.rename(target)
                logging.warning("moved the damaged checkpoint %s aside to %s", source, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"move_aside_{manager.directory}")
        manager.reload()

    def _restore_newest(self, manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[State, dict] | None:
        """The newest readable checkpoint of `manager`; damaged newer ones are moved aside once an older one has
        been read (so a wrong abstract state, which fails every step, deletes or moves nothing). CheckpointError
        naming each step's error when none can be read."""
        damaged: list[tuple[int, str]] = []
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                restored = self._restore(manager, step, abstract_state)
            except Exception as error:  # a damaged checkpoint: say so and try the previous one
                logging.warning("checkpoint at step %d in %s cannot be restored (%s: %s); trying an older one",
                                step, manager.directory, type(error).__name__, str(error)[:500])
                damaged.append((step, f"{type(error).__name__}: {str(error)[:200]}"))
                continue
            if damaged and not self.read_only:
                self._move_aside(manager, [s for s, _ in damaged])
            return restored
        if damaged:
            raise CheckpointError(
                f"no checkpoint in {manager.directory} can be restored (" +
                "; ".join(f"step {s}: {e}" for s, e in damaged) + "); nothing was moved or deleted. If they were "
                "written by another model or config, use another --workdir")
        return None

    def restore_latest(self, abstract_state: Any) -> tuple[State, dict] | None:
        """The newest readable checkpoint (state, meta), or None when there is none (see _restore_newest)."""
        return self._restore_newest(self.latest, abstract_state)

    def restore_step(self, step: int, abstract_state: Any) -> tuple[State, dict]:
        """The checkpoint of `step` (state, meta); CheckpointError naming the kept steps when there is none."""
        if step not in self.latest.all_steps():
            raise CheckpointError(f"{self.latest.directory} holds no checkpoint of step {step}; it holds steps "
                                  f"{sorted(self.latest.all_steps())}")
        return self._restore(self.latest, step, abstract_state)

    def restore_best(self, abstract_state: Any) -> tuple[State, dict] | None:
        """The best checkpoint, or None when there is none; CheckpointError when it cannot be read."""
        return self._restore_newest(self.best, abstract_state)

    def wait(self) -> None:
        """Waits for every save in flight and checks each one finished (CheckpointError otherwise)."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        for manager, step in list(self._pending):
            self._check(manager, step)

    def close(self) -> None:
        """Releases the resources; call once, after wait()."""
        self.latest.close()
        self.best.close()

    def abort(self) -> None:
        """After an error: lets the saves still running finish (or fail) and stops orbax's threads, so the process
        can exit; errors of these saves were or will be reported by the caller's exception."""
        for manager in (self.latest, self.best):
            with contextlib.suppress(Exception):
                manager.wait_until_finished()
            with contextlib.suppress(Exception):
                manager.close()


def check_checkpoint_argument(workdir: str, checkpoint: str) -> None:
    """`--checkpoint` is "best", "latest" or a step number, and the workdir holds a checkpoint at all (raises
    ConfigValueError or CheckpointError with one line naming what exists)."""
    from experiments.errors import ConfigValueError

    if checkpoint not in ("best", "latest") and not checkpoint.isdigit():
        raise ConfigValueError(f"--checkpoint={checkpoint}: expected best, latest or a step number (steps in "
                               f"{workdir}: {workdir_lib.checkpoint_steps(workdir)})")
    if not workdir_lib.checkpoint_steps(workdir) and not workdir_lib.checkpoint_steps(workdir, "best"):
        raise CheckpointError(f"--workdir={workdir} holds no checkpoint yet (the run saved none before it stopped)")


def restore_selected(workdir: str, keep: int, abstract_state: Any, checkpoint: str) -> Any:
    """The state of a finished (or stopped) run's checkpoint `checkpoint` ("best", "latest" or a step number),
    restored read-only into `abstract_state`'s shapes and shardings; CheckpointError naming what to use instead."""
    checkpoints = Checkpoints(workdir, keep, read_only=True)
    try:
        if checkpoint == "best":
            try:
                restored = checkpoints.restore_best(abstract_state)
            except CheckpointError as error:
                raise CheckpointError(f"{error}; --checkpoint=latest reads the newest checkpoint instead") from None
            if restored is None:
                raise CheckpointError(f"{workdir} holds no best checkpoint (no validation ran); use "
                                      "--checkpoint=latest")
        elif checkpoint == "latest":
            restored = checkpoints.restore_latest(abstract_state)
            if restored is None:
                raise CheckpointError(f"no checkpoint in {workdir}/checkpoints could be restored")
        else:
            restored = checkpoints.restore_step(int(checkpoint), abstract_state)
    finally:
        checkpoints.close()
    return restored[0]

