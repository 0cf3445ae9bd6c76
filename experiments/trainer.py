"""Training and evaluation of any registered mixer on any LRA task: the loop behind experiments/train.py.

`train_and_evaluate(config, workdir)` is the whole job:
  * the resolved config is written to workdir/config.json; a restart whose config differs stops and names the keys;
  * the batch is sharded over a 1-D device mesh ("data") spanning every device of every host and the parameters
    are replicated, so one code path runs on 1 CPU, 8 GPUs or a pod slice (multi-host via jax.distributed);
  * the order of examples is a function of (seed, epoch) and dropout keys of (seed, step), so a run restarted from a
    checkpoint at step k continues exactly as the uninterrupted run would (bitwise on CPU);
  * orbax checkpoints every `checkpoint_every` steps (last `keep_checkpoints` kept) plus the best-by-validation one;
    a restart resumes from the newest complete checkpoint, falling back to older ones if the newest cannot be read;
  * validation every `eval_every` steps; at the end the best checkpoint is evaluated on the test split;
  * metrics go to workdir/metrics.jsonl and TensorBoard event files (workdir/tensorboard); results.json at the end.

The pieces live in modules of one job each, and every public name of theirs is re-exported here (so
`trainer.build_model`, `trainer.Checkpoints`, ... keep working):
  experiments/errors.py       ConfigMismatchError, ConfigValueError, NonFiniteError, Preempted
  experiments/steps.py        build_model, model_inputs, init_variables, create_state, the train and eval steps,
                              DataParallel
  experiments/checkpoints.py  Checkpoints, CheckpointError, checked_meta, META_DEFAULTS
  experiments/metrics.py      MetricWriter, Progress
  experiments/run_checks.py   the workdir checks of the start and config.json (check_and_save_config)
This module keeps the loop: StopRequest (SIGTERM / SIGINT), train_and_evaluate, evaluate and evaluate_run.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

import lra
from experiments import data as data_lib
from experiments import memory
from experiments import workdir as workdir_lib
from experiments.checkpoints import (
    META_DEFAULTS,
    CheckpointError,
    Checkpoints,
    check_checkpoint_argument,
    checked_meta,
    restore_selected,
)
from experiments.errors import ConfigMismatchError, ConfigValueError, NonFiniteError, Preempted
from experiments.metrics import MetricWriter, Progress
from experiments.optim import schedule as schedule_fn
from experiments.run_checks import (
    RESUMABLE_KEYS,
    check_and_save_config,
    check_checkpoint_space,
    check_workdir,
    check_workdir_contents,
    prepare_workdir,
)
from experiments.steps import (
    AUX_LOSSES,
    AUX_METRICS,
    INPUT_ENCODINGS,
    MUTABLE,
    DataParallel,
    Prepare,
    State,
    _accuracy,  # noqa: F401 (private, but tests reach it as trainer._accuracy)
    _mean_loss,  # noqa: F401 (likewise)
    build_model,
    create_state,
    describe_nonfinite,
    init_variables,
    make_eval_step,
    make_train_step,
    model_inputs,
    sown_metrics,
)
from experiments.validation import validate_config
from lra.batching import BatchSchedule, eval_batches
from models import param_groups

__all__ = [  # the names of the modules above, re-exported, and this module's own
    "AUX_LOSSES", "AUX_METRICS", "INPUT_ENCODINGS", "META_DEFAULTS", "MUTABLE", "NONFINITE_POLICIES",
    "RESUMABLE_KEYS", "SPLITS", "CheckpointError", "Checkpoints", "ConfigMismatchError", "ConfigValueError",
    "DataParallel", "MetricWriter", "NonFiniteError", "Preempted", "Prepare", "Progress", "State", "StopRequest",
    "build_model", "check_and_save_config", "check_checkpoint_space", "check_workdir", "check_workdir_contents",
    "checked_meta", "create_state", "describe_nonfinite", "evaluate", "evaluate_run", "init_variables",
    "make_eval_step", "make_train_step", "model_inputs", "prepare_workdir", "sown_metrics", "train_and_evaluate",
]

NONFINITE_POLICIES = ("stop", "skip")


class StopRequest:
    """Turns SIGTERM / SIGINT into a request the training loop honours after the current step.

    A second signal of the same kind while the first is being handled falls back to the default behaviour
    (immediate exit), so an impatient Ctrl-C twice still stops at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.signum = signum
        logging.warning("%s received: saving a checkpoint after this step, then stopping",
                        signal.Signals(signum).name)

    def agreed(self) -> int | None:
        """The signal any process received, seen by every process (None if none did).

        Hosts receive SIGTERM at slightly different moments; all must stop after the same step, or those still
        training wait forever in a collective for those saving the preemption checkpoint (and vice versa).
        """
        if jax.process_count() == 1:
            return self.signum
        return int(multihost_utils.process_allgather(np.int32(self.signum or 0)).max()) or None

    @contextlib.contextmanager
    def installed(self):
        """Installs the handlers for the duration of the block (main thread only) and restores the previous ones."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be installed from the main thread
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------------- driver


def evaluate(eval_step: Callable, state: State, split: lra.Split, config: ml_collections.ConfigDict,
             parallel: DataParallel) -> dict[str, float]:
    """Accuracy and mean loss of `state` on a whole split (exact: padding examples of the last batch carry weight
    0)."""
    totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
    for batch in eval_batches(split, config.train.eval_batch_size, process_index=jax.process_index(),
                              process_count=jax.process_count()):
        out = eval_step(state, parallel.put_batch(batch))
        for key in totals:
            totals[key] += float(out[key])
    count = max(totals["count"], 1.0)
    return {"accuracy": totals["correct"] / count, "loss": totals["loss"] / count}


def _count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _abstract_state(model: nn.Module, config: ml_collections.ConfigDict, spec: lra.TaskSpec) -> Any:
    """Shapes and dtypes of the train state, without computing it (no compilation, no parameters)."""
    return jax.eval_shape(lambda: create_state(model, config, spec)[0])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, progress: bool | None = None
                       ) -> dict[str, Any]:
    """Trains, validates, checkpoints and tests; returns the contents of results.json.

    Args:
      config: a config of experiments/configs (validated here first).
      workdir: a local directory (made absolute) or an object-store URL (gs://..., with the [gcs] extra).
      progress: show a progress bar (None: where a terminal or notebook is attached, or when called from Python
        rather than through experiments/train.py).

    The start is ordered so that a mistake is found before anything is written: the config is validated, the
    model built (abstractly), the workdir's writability and free space checked, the data resolved and read, and
    only then is the workdir created and config.json written. Raising train.num_steps on a finished or stopped run
    extends it: training resumes from the newest checkpoint, and the warmup + cosine schedule is that of the new
    total, so the learning rate at the resumed step jumps from the old schedule's value to the new one's (up, for
    a cosine that had decayed) and decays to the end of the new total.
    """
    start_time = time.time()
    workdir = workdir_lib.resolve(workdir)
    validate_config(config, trace=True)  # every key, range and mixer option, before anything is built
    if config.train.nonfinite not in NONFINITE_POLICIES:
        raise ConfigValueError(f"--config.train.nonfinite={config.train.nonfinite!r}: expected one of "
                               f"{NONFINITE_POLICIES}")
    is_writer = jax.process_index() == 0

    parallel = DataParallel()
    parallel.check_batch_size(config.train.batch_size, "train.batch_size")
    parallel.check_batch_size(config.train.eval_batch_size, "train.eval_batch_size")

    spec = data_lib.task_spec(config)
    model = build_model(config, spec)
    abstract_state = _abstract_state(model, config, spec)
    # Before anything is compiled or read: a config that cannot fit fails in a second, with the estimate.
    memory.check_fits(config, spec, abstract_state=abstract_state, num_devices=parallel.num_devices)
    check_workdir(workdir)
    if is_writer:  # before the data are read or generated (Path-X: an hour), not at the first checkpoint
        workdir_lib.WorkdirLock(workdir).check()  # another live trainer: fail now, not after reading the data
        check_workdir_contents(workdir)  # a damaged config.json, or checkpoints of an unknown model
        check_checkpoint_space(workdir, abstract_state, config.train.keep_checkpoints)

    splits = data_lib.load_splits(config)  # every data error surfaces here, before compilation
    train_split = splits["train"]
    batches = BatchSchedule(len(train_split), config.train.batch_size, config.seed,
                             process_index=jax.process_index(), process_count=jax.process_count())

    prepare_workdir(workdir)
    lock = workdir_lib.WorkdirLock(workdir)
    if is_writer:  # the first write into the workdir; held until the run ends
        lock.acquire()
    try:
        return _start_and_train(config, workdir, spec, model, splits, batches, parallel, progress, start_time)
    finally:
        if is_writer:
            lock.release()


def _start_and_train(config: ml_collections.ConfigDict, workdir: str, spec: lra.TaskSpec, model: nn.Module,
                     splits: dict[str, lra.Split], batches: BatchSchedule, parallel: DataParallel,
                     progress: bool | None, start_time: float) -> dict[str, Any]:
    """train_and_evaluate once the workdir is locked: config.json, state, restore, the loop, results.json."""
    is_writer = jax.process_index() == 0
    train_split = splits["train"]
    check_and_save_config(config, workdir)
    state, tx, labels = create_state(model, config, spec)
    state = parallel.replicate(state)
    abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    logging.info("model: %s mixer, %d parameters; groups: %s", config.model.mixer, _count_params(state["params"]),
                 {g: sum(1 for x in jax.tree.leaves(labels) if x == g) for g in param_groups.GROUPS})
    logging.info("task %s: train/val/test %d/%d/%d examples, length %d, %d steps per epoch",
                 spec.name, len(train_split), len(splits["val"]), len(splits["test"]),
                 spec.seq_len, batches.steps_per_epoch)

    checkpoints = Checkpoints(workdir, config.train.keep_checkpoints)
    meta = dict(META_DEFAULTS)
    try:
        restored = checkpoints.restore_latest(abstract_state)
    except BaseException:
        checkpoints.abort()
        raise
    if restored is not None:
        state, meta = restored
    start_step = int(state["step"])
    num_steps = config.train.num_steps
    if start_step >= num_steps:  # a finished run started again: its results, without a second test or wall time
        saved = workdir_lib.read_json(workdir, "results.json")
        if isinstance(saved, dict) and saved.get("steps") == start_step:
            checkpoints.close()
            logging.info("the run in %s finished at step %d; its results.json is printed again (raise "
                         "--config.train.num_steps to extend it)", workdir, start_step)
            if is_writer:
                workdir_lib.write_status(workdir, "finished", start_step)
            return saved
    show = Progress(start_step, num_steps, progress)
    show.say("workdir %s: %s", workdir, f"resumed from the checkpoint at step {start_step}" if restored is not None
             else "a new run")
    if is_writer:
        workdir_lib.write_status(workdir, "running", start_step)
    writer = None
    try:
        writer = MetricWriter(workdir, start_step, enabled=is_writer)
        results = _train(config, workdir, spec, model, tx, labels, state, meta, splits, batches, checkpoints,
                         writer, parallel, show, start_time)
    except Preempted as stopped:
        if is_writer:
            workdir_lib.write_status(workdir, "stopped", stopped.step, str(stopped))
        raise
    except BaseException as error:
        checkpoints.abort()  # let running saves end and orbax's threads stop, so that the process can exit
        if writer is not None:
            writer.close()
        if is_writer:
            with contextlib.suppress(Exception):
                workdir_lib.write_status(workdir, "failed", -1, f"{type(error).__name__}: {error}")
        raise
    finally:
        show.close()
    if is_writer:
        workdir_lib.write_json(workdir, "results.json", results)
        workdir_lib.write_status(workdir, "finished", results["steps"])
    return results


def _train(config: ml_collections.ConfigDict, workdir: str, spec: lra.TaskSpec, model: nn.Module,
           tx: optax.GradientTransformation, labels: Any, state: State, meta: dict, splits: dict[str, lra.Split],
           batches: BatchSchedule, checkpoints: Checkpoints, writer: MetricWriter, parallel: DataParallel,
           show: Progress, start_time: float) -> dict[str, Any]:
    """The loop of train_and_evaluate, from a restored or initial state to the test of the best checkpoint."""
    train_split = splits["train"]
    start_step = int(state["step"])
    wall_before = float(meta["wall_seconds"])
    abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    prepare = functools.partial(model_inputs, spec=spec, input_encoding=config.model.input_encoding)
    train_step = jax.jit(make_train_step(model, tx, config.seed, prepare),
                         in_shardings=(parallel.replicated, parallel.batch),
                         out_shardings=(parallel.replicated, parallel.replicated), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(model, prepare), in_shardings=(parallel.replicated, parallel.batch),
                        out_shardings=parallel.replicated)
    if start_step < config.train.num_steps:
        # Compiled once, ahead of the first step, so that XLA's own memory figure is checked before training;
        # the compiled executable is the step (shapes and shardings of every train batch are the same).
        example = parallel.put_batch(batches.batch(train_split, start_step))
        train_step = train_step.lower(state, example).compile()
        memory.check_compiled(train_step)

    num_steps = config.train.num_steps
    window: list[dict] = []
    window_start = time.time()
    shown: dict[str, float] = {}

    def run_validation(step: int) -> None:
        val = evaluate(eval_step, state, splits["val"], config, parallel)
        writer.write(step, "val", val)
        show.say("step %d validation: accuracy %.4f loss %.4f", step, val["accuracy"], val["loss"])
        shown["val_acc"] = val["accuracy"]
        if val["accuracy"] > meta["best_val_accuracy"]:
            meta["best_val_accuracy"], meta["best_step"] = val["accuracy"], step
            checkpoints.save_best(step, state, _meta_now())

    def _meta_now() -> dict:
        return {**meta, "wall_seconds": wall_before + time.time() - start_time}

    lr_schedule = schedule_fn(config.optim.lr, config.optim, num_steps)
    param_names = [f"{jax.tree_util.keystr(path)} (group {group!r})"
                   for path, group in jax.tree_util.tree_flatten_with_path(labels)[0]]
    skipped = in_a_row = 0
    max_in_a_row = config.train.get("max_consecutive_skips", 10)
    stop = StopRequest()
    with stop.installed():
        for step in range(start_step + 1, num_steps + 1):
            state, metrics = train_step(state, parallel.put_batch(batches.batch(train_split, step - 1)))
            leaf_finite = np.asarray(metrics.pop("leaf_finite"))
            if not leaf_finite.all():
                what = describe_nonfinite(leaf_finite, param_names)
                if config.train.nonfinite == "stop":
                    checkpoints.wait()
                    raise NonFiniteError(
                        f"step {step}: {what}. The update was not applied and the checkpoints in {workdir} hold "
                        "finite values; --config.train.nonfinite=skip skips such steps instead")
                skipped += 1
                in_a_row += 1
                logging.warning("step %d skipped (%s); %d skipped so far, %d in a row", step, what, skipped, in_a_row)
                if in_a_row >= max_in_a_row:
                    checkpoints.wait()
                    raise NonFiniteError(
                        f"step {step}: {in_a_row} steps in a row were skipped as non-finite (the last: {what}); "
                        f"stopping (train.max_consecutive_skips={max_in_a_row}). The checkpoints in {workdir} hold "
                        "finite values; lower the learning rate or check the data")
            else:
                in_a_row = 0
            window.append(metrics)
            if step % config.train.log_every == 0 or step == num_steps:
                means = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
                rate = len(window) / max(time.time() - window_start, 1e-9)
                means["steps_per_second"] = rate
                means["learning_rate"] = float(lr_schedule(step - 1))
                writer.write(step, "train", means)
                logging.info("step %d/%d loss %.4f accuracy %.4f grad_norm %.3f | %.2f steps/s, ETA %s", step,
                             num_steps, means["loss"], means["accuracy"], means["grad_norm"], rate,
                             _format_seconds((num_steps - step) / max(rate, 1e-9)))
                shown.update(loss=means["loss"], acc=means["accuracy"])
                window, window_start = [], time.time()
            if step % config.train.eval_every == 0 or step == num_steps:
                run_validation(step)
            stop_signum = stop.agreed()
            if step % config.train.checkpoint_every == 0 or step == num_steps or stop_signum is not None:
                checkpoints.save(step, state, _meta_now())
            else:
                checkpoints.poll()
            show.step(**shown)
            if stop_signum is not None:
                checkpoints.wait()
                checkpoints.close()
                writer.close()
                raise Preempted(stop_signum, step)

    checkpoints.wait()
    final_step = int(state["step"])
    if meta["best_step"] < 0:  # no validation happened (num_steps == 0)
        run_validation(final_step)
        checkpoints.wait()
    try:
        best = checkpoints.restore_best(abstract_state)
    except CheckpointError as error:  # the run itself is intact: test its final state rather than nothing
        logging.warning("%s; testing the final state (step %d) instead of the best one", error, final_step)
        best = None
    tested_step = int(best[0]["step"]) if best is not None else final_step
    best_state = best[0] if best is not None else state
    test = evaluate(eval_step, best_state, splits["test"], config, parallel)
    if not all(math.isfinite(v) for v in test.values()):
        raise NonFiniteError(f"the test of step {tested_step} gave non-finite metrics {test}: the model's outputs "
                             f"are not finite (the checkpoints in {workdir} hold finite values; lower the learning "
                             "rate or check the data)")
    writer.write(final_step, "test", test)
    checkpoints.close()
    writer.close()
    show.say("step %d: test accuracy %.4f loss %.4f (best checkpoint, step %d)", final_step, test["accuracy"],
             test["loss"], int(meta["best_step"]))

    results = {
        "task": config.task,
        "mixer": config.model.mixer,
        "steps": final_step,
        "best_step": int(meta["best_step"]),
        "tested_step": tested_step,
        "val_accuracy": float(meta["best_val_accuracy"]),
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "test_majority_rate": lra.majority_rate(train_split.labels, splits["test"].labels),
        "num_params": _count_params(state["params"]),
        "num_devices": parallel.num_devices,
        "num_processes": jax.process_count(),
        "wall_seconds": wall_before + time.time() - start_time,
    }
    if "bpb" in spec.metrics:  # byte-level language modelling: bits per byte, and the order-0 baseline
        val = evaluate(eval_step, best_state, splits["val"], config, parallel)
        results.update(train_length=spec.seq_len, val_bpb=float(val["loss"]) / math.log(2),
                       test_bpb=float(test["loss"]) / math.log(2),
                       unigram_bpb=lra.corpus.unigram_bpb(train_split.labels.reshape(-1),
                                                          splits["test"].labels.reshape(-1)))
        show.say("test %.3f bits per byte (order-0 baseline %.3f)", results["test_bpb"], results["unigram_bpb"])
    return results


SPLITS = {"test": "test", "validation": "val", "val": "val", "train": "train"}


def evaluate_run(workdir: str, split: str = "test", checkpoint: str = "best") -> dict[str, Any]:
    """Evaluates a run's checkpoint on one split, with the config saved in its workdir.

    Args:
      workdir: the run directory (local or an object-store URL).
      split: "test", "validation" (or "val") or "train".
      checkpoint: "best" (by validation accuracy, as results.json's test figures), "latest", or a step number.

    Returns {"workdir", "split", "checkpoint", "step", "accuracy", "loss", "examples"}. The best checkpoint's test
    accuracy equals results.json's test_accuracy (the same evaluation code on the same examples).
    """
    workdir = workdir_lib.resolve(workdir)
    if split not in SPLITS:
        raise ConfigValueError(f"--split={split}: expected one of test, validation, train")
    saved = workdir_lib.read_json(workdir, "config.json") if workdir_lib.path(workdir).is_dir() else None
    if saved is None:
        raise workdir_lib.WorkdirError(f"--workdir={workdir} holds no config.json: it is not a training run's "
                                       "directory (python -m experiments.train --workdir=... makes one)")
    config = ml_collections.ConfigDict(saved)
    validate_config(config)
    parallel = DataParallel()
    parallel.check_batch_size(config.train.eval_batch_size, "train.eval_batch_size")
    spec = data_lib.task_spec(config)
    model = build_model(config, spec)
    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated),
                                  _abstract_state(model, config, spec))
    check_checkpoint_argument(workdir, checkpoint)
    splits = data_lib.load_splits(config)
    state = restore_selected(workdir, config.train.keep_checkpoints, abstract_state, checkpoint)
    prepare = functools.partial(model_inputs, spec=spec, input_encoding=config.model.input_encoding)
    eval_step = jax.jit(make_eval_step(model, prepare), in_shardings=(parallel.replicated, parallel.batch),
                        out_shardings=parallel.replicated)
    chosen = splits[SPLITS[split]]
    metrics = evaluate(eval_step, state, chosen, config, parallel)
    return {"workdir": workdir, "split": "validation" if SPLITS[split] == "val" else split, "checkpoint": checkpoint,
            "step": int(state["step"]), "accuracy": metrics["accuracy"], "loss": metrics["loss"],
            "examples": len(chosen)}


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
