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
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import flags, logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import lra
from experiments import data as data_lib
from experiments import memory
from experiments import workdir as workdir_lib
from experiments.configs.base import base_config
from experiments.optim import make_optimizer
from experiments.optim import schedule as schedule_fn
from experiments.validation import validate_config
from lra.batching import BatchSchedule, eval_batches
from models import param_groups
from models.registry import resolve_mixer
from models.encoder import DTYPES, Classifier, DualClassifier, PerPositionClassifier, SequenceEncoder

State = dict[str, Any]
Prepare = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


class ConfigMismatchError(ValueError):
    """A restarted run's config differs from the one saved in its workdir."""


class ConfigValueError(ValueError):
    """A config value that cannot run here (e.g. a batch that does not divide over the devices)."""


class NonFiniteError(FloatingPointError):
    """The loss or the gradients became NaN or infinite (train.nonfinite = "stop")."""


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint of the current step was saved first."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; a checkpoint of this step was "
                         "saved and the same command resumes from it")
        self.signum = signum
        self.step = step


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


# ----------------------------------------------------------------------------------------------- model + state


INPUT_ENCODINGS = ("embed", "linear")


def build_model(config: ml_collections.ConfigDict, spec: lra.TaskSpec) -> nn.Module:
    """The task's model for a config: the shared SequenceEncoder with the configured mixer (resolved through its
    contract, length options set to 0 taking the task's length), under a Classifier (or a DualClassifier for
    dual-input tasks). Raises ConfigValueError for an input encoding or dtype the task cannot take."""
    model_cfg = config.model
    section = model_cfg.get(model_cfg.mixer)
    mixer = resolve_mixer(model_cfg.mixer, section.to_dict() if section is not None else {}, length=spec.seq_len)
    mixer_options = mixer.as_dict()
    bidirectional = mixer.direction(model_cfg.bidirectional)
    if model_cfg.input_encoding not in INPUT_ENCODINGS:
        raise ConfigValueError(f"--config.model.input_encoding={model_cfg.input_encoding!r}: expected one of "
                         f"{INPUT_ENCODINGS}")
    if model_cfg.input_encoding == "linear" and spec.padded:
        raise ConfigValueError(f"--config.model.input_encoding='linear' needs a pixel task; {spec.name!r} has tokens")
    dtype = model_cfg.get("dtype", "float32")  # activations; parameters, norms and logits stay float32
    if dtype not in DTYPES:
        raise ConfigValueError(f"--config.model.dtype={dtype!r}: expected one of {DTYPES}")
    encoder = SequenceEncoder(
        vocab_size=spec.vocab_size if model_cfg.input_encoding == "embed" else None, d_model=model_cfg.d_model,
        n_layers=model_cfg.n_layers, mixer=model_cfg.mixer,
        mixer_options=mixer_options, bidirectional=bidirectional, norm=model_cfg.norm,
        residual=model_cfg.residual, dropout=model_cfg.dropout, pooling=model_cfg.pooling, dtype=jnp.dtype(dtype))
    heads = {lra.HeadKind.POOLED: Classifier, lra.HeadKind.DUAL: DualClassifier,
             lra.HeadKind.PER_POSITION: PerPositionClassifier}
    return heads[spec.head](encoder=encoder, num_classes=spec.num_classes)


def model_inputs(inputs: jax.Array, spec: lra.TaskSpec, input_encoding: str) -> tuple[jax.Array, jax.Array]:
    """Token ids of a batch -> (what the model reads, mask of real positions).

    Padded tasks mask their padding id; pixel tasks have no padding, so every position is real (a black pixel
    is not padding). With input_encoding "linear", pixels 0..255 become values in [-1, 1] with a feature axis.
    """
    mask = inputs != spec.pad_id if spec.padded else jnp.ones(inputs.shape, bool)
    if input_encoding == "linear":
        inputs = (inputs.astype(jnp.float32) / 127.5 - 1.0)[..., None]
    return inputs, mask


def init_variables(model: nn.Module, config: ml_collections.ConfigDict, spec: lra.TaskSpec) -> dict:
    """Initial (boxed) variables, from the config's seed only."""
    tokens = jnp.ones((2, 2, spec.seq_len) if spec.dual_input else (2, spec.seq_len), jnp.int32)
    inputs, mask = model_inputs(tokens, spec, config.model.input_encoding)
    key = jax.random.key(config.seed)
    # Jitted: eager initialisation would run every op of the model one by one.
    return jax.jit(lambda k: model.init({"params": k, "dropout": k}, inputs, mask, train=False))(key)


def create_state(model: nn.Module, config: ml_collections.ConfigDict, spec: lra.TaskSpec
                 ) -> tuple[State, optax.GradientTransformation, Any]:
    """The initial train state {step, params, collections, opt_state}, the optimiser and the parameter-group
    labels."""
    variables = init_variables(model, config, spec)
    labels = param_groups.group_labels(variables["params"])
    variables = param_groups.unbox(variables)
    tx = make_optimizer(config.optim, labels, config.train.num_steps)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": variables["params"],
        # Every other collection the model keeps: "batch_stats" (updated by training steps), "constants" (fixed
        # buffers such as the Performer's random features). Sown losses and metrics are per-step, not state.
        "collections": {k: v for k, v in variables.items() if k not in ("params", AUX_LOSSES, AUX_METRICS)},
        "opt_state": tx.init(variables["params"]),
    }
    return state, tx, labels


def _variables(state: State) -> dict:
    return {"params": state["params"], **state["collections"]}


MUTABLE = ("batch_stats",)  # collections a training step updates (other non-parameter collections are constant)
AUX_LOSSES = "losses"    # collection of scalar terms that mixers add to the training objective
AUX_METRICS = "metrics"  # collection of scalar diagnostics that mixers report (e.g. codebook usage)


def sown_metrics(collection: Any) -> dict[str, jax.Array]:
    """Flattens sown diagnostics to {"block_0/mixer/code_usage": mean value, ...}."""
    flat = jax.tree_util.tree_flatten_with_path(collection)[0]
    return {"/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)): jnp.mean(value)
            for path, value in flat}


def _mean_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy over the batch's targets: one per example (labels (B,)), or one per position with a
    target (labels (B, L), where a label < 0 marks a position without one)."""
    if labels.ndim == 1:
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
    valid = (labels >= 0).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.maximum(labels, 0))
    return (loss * valid).sum() / jnp.maximum(valid.sum(), 1.0)


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Share of the batch's targets predicted right (see _mean_loss for the two label layouts)."""
    if labels.ndim == 1:
        return (logits.argmax(-1) == labels).mean()
    valid = (labels >= 0).astype(jnp.float32)
    return ((logits.argmax(-1) == labels) * valid).sum() / jnp.maximum(valid.sum(), 1.0)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, seed: int, prepare: Prepare
                    ) -> Callable[[State, dict], tuple[State, dict]]:
    """The (unjitted) train step: loss, gradients, the optimiser update, non-finite checks (see the comment inside)
    and per-step metrics; dropout keys are a function of (seed, step)."""
    base_key = jax.random.key(seed)

    def train_step(state: State, batch: dict) -> tuple[State, dict]:
        inputs, mask = prepare(batch["inputs"])
        labels = batch["labels"]
        dropout_key = jax.random.fold_in(jax.random.fold_in(base_key, 1), state["step"])

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any]]:
            variables = _variables({**state, "params": params})
            logits, updates = model.apply(variables, inputs, mask, train=True, rngs={"dropout": dropout_key},
                                          mutable=[*MUTABLE, AUX_LOSSES, AUX_METRICS])
            task_loss = _mean_loss(logits, labels)
            # Mixers add terms to the objective by sowing them into the "losses" collection (e.g. VQ commitment
            # and codebook surrogate losses); each sown value is summed in as it is.
            aux_loss = sum((jnp.sum(x) for x in jax.tree.leaves(updates.get(AUX_LOSSES, {}))), jnp.zeros(()))
            return task_loss + aux_loss, (task_loss, logits, updates)

        (loss, (task_loss, logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        param_updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        updated = {
            "params": optax.apply_updates(state["params"], param_updates),
            "collections": {**state["collections"], **{k: v for k, v in updates.items() if k in MUTABLE}},
            "opt_state": opt_state,
        }
        # A step whose loss, gradients or new state (parameters, optimiser state, batch statistics) are not finite
        # changes nothing but the step counter (the data moves on), so the state stays finite and a non-finite
        # state is never checkpointed. A huge learning rate makes the new parameters non-finite while loss and
        # gradients are finite, so all three are checked. One vector of flags, fetched with the metrics: no extra
        # host synchronisation. Layout: [loss, gradient per parameter leaf, new value per parameter leaf, the rest
        # of the new state].
        def all_finite(tree: Any) -> list[jax.Array]:
            return [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]

        rest = {"collections": updated["collections"], "opt_state": updated["opt_state"]}
        leaf_finite = jnp.stack([jnp.isfinite(loss), *all_finite(grads), *all_finite(updated["params"]),
                                 jnp.all(jnp.stack(all_finite(rest) or [jnp.array(True)]))])
        finite = jnp.all(leaf_finite)
        new_state = {"step": state["step"] + 1,
                     **jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated,
                                    {k: state[k] for k in updated})}
        metrics = {
            "leaf_finite": leaf_finite,
            "skipped": 1.0 - finite.astype(jnp.float32),
            "loss": task_loss,
            "total_loss": loss,
            "accuracy": _accuracy(logits, labels),
            "grad_norm": optax.tree.norm(grads),
            **sown_metrics(updates.get(AUX_METRICS, {})),
        }
        return new_state, metrics

    return train_step


def describe_nonfinite(leaf_finite: np.ndarray, param_names: list[str]) -> str:
    """Names what a train step found non-finite, from its `leaf_finite` flags (layout in make_train_step)."""
    n = len(param_names)
    loss_ok, grads_ok, params_ok, rest_ok = leaf_finite[0], leaf_finite[1:1 + n], leaf_finite[1 + n:1 + 2 * n], \
        leaf_finite[1 + 2 * n]
    if not loss_ok or not grads_ok.all():
        bad = [name for name, ok in zip(param_names, grads_ok) if not ok]
        return (f"{'non-finite' if not loss_ok else 'finite'} loss, first non-finite gradient: "
                f"{bad[0] if bad else 'none'}")
    bad = [name for name, ok in zip(param_names, params_ok) if not ok]
    if bad:
        return (f"finite loss and gradients, but the update made parameter {bad[0]} non-finite (a learning rate "
                "too large for the parameters' dtype?)")
    if not rest_ok:
        return "finite loss, gradients and parameters, but the new optimiser state or batch statistics are not"
    return "all finite"


def make_eval_step(model: nn.Module, prepare: Prepare) -> Callable[[State, dict], dict]:
    """The (unjitted) eval step: weighted sums of correct predictions, loss and the count of real examples of a
    batch."""
    def eval_step(state: State, batch: dict) -> dict:
        inputs, mask = prepare(batch["inputs"])
        labels, weights = batch["labels"], batch["weights"]
        logits = model.apply(_variables(state), inputs, mask, train=False)
        if labels.ndim == 2:  # per position: positions without a target (label < 0) weigh nothing
            weights = weights[:, None] * (labels >= 0)
            labels = jnp.maximum(labels, 0)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return {
            "correct": ((logits.argmax(-1) == labels) * weights).sum(),
            "loss": (loss * weights).sum(),
            "count": weights.sum(),
        }

    return eval_step


# ------------------------------------------------------------------------------------------------- sharding


class DataParallel:
    """A 1-D mesh over every device of every host: batches sharded on their first axis, state replicated."""

    def __init__(self) -> None:
        self.mesh = Mesh(np.asarray(jax.devices()), ("data",))
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def num_devices(self) -> int:
        """The number of devices of the mesh (all processes)."""
        return self.mesh.size

    def check_batch_size(self, batch_size: int, flag: str) -> None:
        """Raises ConfigValueError unless `batch_size` divides over the devices and the processes."""
        if batch_size % self.num_devices or batch_size % jax.process_count():
            raise ConfigValueError(f"--config.{flag}={batch_size} must be divisible by the number of devices "
                             f"({self.num_devices}) and of processes ({jax.process_count()})")

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assembles the global batch from this process's rows."""
        return {k: jax.make_array_from_process_local_data(self.batch, np.asarray(v))
                for k, v in local_batch.items()}

    def replicate(self, tree: Any) -> Any:
        """Places a pytree on every device, replicated."""
        return jax.device_put(tree, self.replicated)


# ----------------------------------------------------------------------------------------------- checkpoints


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


# ------------------------------------------------------------------------------------------------- logging


class MetricWriter:
    """Metrics as JSON lines (workdir/metrics.jsonl) and TensorBoard event files (workdir/tensorboard).

    On a local disk records are appended; on an object store (which cannot append) the file is rewritten whole at
    every write, from the records kept in memory.
    """

    def __init__(self, workdir: str, resume_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.workdir = workdir
        self.remote = workdir_lib.is_remote(workdir)
        self.path = workdir_lib.path(workdir, "metrics.jsonl")
        self.lines: list[str] = []
        if not enabled:
            return
        self._drop_records_after(resume_step)
        from tensorboardX import SummaryWriter  # imported here: only the writing process needs it

        self.tensorboard = SummaryWriter(str(workdir_lib.path(workdir, "tensorboard")), purge_step=resume_step or None)

    def _drop_records_after(self, step: int) -> None:
        """On resume, records written after the restored checkpoint (and any test record, which the rerun writes
        again at its end) are replaced by the rerun's.

        The file is read as bytes and repaired: a torn last line (a kill or a full disk mid-write) is dropped with
        a warning naming the byte offset; a record of unknown shape is dropped with a warning; damage before the
        last line stops the run (WorkdirError naming the file and line), since records would be lost. The kept
        records are written to a temporary file in the same directory, synced, and renamed over the old one, so a
        kill at any moment leaves either the old file or the new one, never less than every record up to `step`.
        """
        if not self.remote:  # temporary files of rewrites that a kill cut short (this process holds the lock)
            directory = os.path.dirname(str(self.path))
            for name in os.listdir(directory):
                if name.startswith("metrics.jsonl.tmp."):
                    logging.warning("removing %s, left by an interrupted rewrite", os.path.join(directory, name))
                    os.remove(os.path.join(directory, name))
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        raw_lines = data.split(b"\n")
        kept: list[str] = []
        changed = False
        offset = 0
        for number, raw in enumerate(raw_lines, start=1):
            line_offset, offset = offset, offset + len(raw) + 1
            is_last = number == len(raw_lines) or (number == len(raw_lines) - 1 and raw_lines[-1] == b"")
            if not raw.strip():
                changed |= bool(raw)
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                if is_last:  # an interrupted write (a kill, a full disk)
                    logging.warning("%s: dropping the damaged last line (byte offset %d, %d bytes: %s)", self.path,
                                    line_offset, len(raw), error)
                    changed = True
                    continue
                raise workdir_lib.WorkdirError(
                    f"{self.path}, line {number} (byte offset {line_offset}) is damaged ({type(error).__name__}); "
                    "records after it would be lost: repair or remove that line, then restart") from None
            if not (isinstance(record, dict) and isinstance(record.get("step"), int)
                    and isinstance(record.get("split"), str)):
                logging.warning("%s, line %d: skipping a record of unknown shape: %.200s", self.path, number,
                                raw.decode("utf-8", "replace"))
                changed = True
                continue
            if record["step"] > step or record["split"] == "test":
                changed = True
                continue
            kept.append(raw.decode("utf-8") + "\n")
        if data and not data.endswith(b"\n"):
            changed = True
        if changed:
            workdir_lib.write_text_atomic(self.workdir, "metrics.jsonl", "".join(kept))
        self.lines = kept if self.remote else []


    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Appends one record {step, split, **metrics} to metrics.jsonl and the TensorBoard events."""
        if not self.enabled:
            return
        line = json.dumps({"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}) + "\n"
        if self.remote:
            self.lines.append(line)
            self.path.write_text("".join(self.lines))
        else:
            with open(self.path, "a") as f:
                f.write(line)
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"{split}/{name}", float(value), step)
        self.tensorboard.flush()

    def close(self) -> None:
        """Releases the resources; call once, after wait()."""
        if self.enabled:
            self.tensorboard.close()


# ---------------------------------------------------------------------------------------------------- config


NONFINITE_POLICIES = ("stop", "skip")
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


# ---------------------------------------------------------------------------------------------------- progress


class Progress:
    """Progress of the training loop: steps/s, ETA and the latest metrics.

    A tqdm bar (on stderr) where a person watches: a terminal, a notebook, or any call from Python that did not
    go through absl's app.run (whose INFO log lines are then invisible, so the key lines are also printed above
    the bar). Under app.run with stderr redirected (cluster jobs, CI) only the absl log lines are written.
    """

    def __init__(self, start: int, total: int, enabled: bool | None = None) -> None:
        absl_run = flags.FLAGS.is_parsed()
        if enabled is None:
            enabled = not absl_run or sys.stderr.isatty() or "ipykernel" in sys.modules
        self.echo = not absl_run and jax.process_index() == 0
        self.bar = None
        if enabled and jax.process_index() == 0:
            from lra.progress import progress_bar

            self.bar = progress_bar(total, "train", "step", initial=start)

    def say(self, message: str, *args: Any) -> None:
        """An INFO line; also printed (above the bar) when absl's log is not shown."""
        logging.info(message, *args)
        if self.echo:
            text = message % args if args else message
            if self.bar is not None:
                self.bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr)

    def step(self, **metrics: float) -> None:
        """Advances the bar by one step, showing the latest metrics."""
        if self.bar is not None:
            if metrics:
                self.bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()}, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        """Releases the resources; call once, after wait()."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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

    return {
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
    steps = workdir_lib.checkpoint_steps(workdir)
    best_steps = workdir_lib.checkpoint_steps(workdir, "best")
    if checkpoint not in ("best", "latest") and not checkpoint.isdigit():
        raise ConfigValueError(f"--checkpoint={checkpoint}: expected best, latest or a step number (steps in "
                               f"{workdir}: {steps})")
    if not steps and not best_steps:
        raise CheckpointError(f"--workdir={workdir} holds no checkpoint yet (the run saved none before it stopped)")
    splits = data_lib.load_splits(config)
    checkpoints = Checkpoints(workdir, config.train.keep_checkpoints, read_only=True)
    try:
        if checkpoint == "best":
            try:
                restored = checkpoints.restore_best(abstract_state)
            except CheckpointError as error:
                raise CheckpointError(f"{error}; --checkpoint=latest evaluates the newest checkpoint instead") from None
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
    state = restored[0]
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
