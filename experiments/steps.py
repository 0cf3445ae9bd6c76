"""What the trainer runs on the devices: the model and its train state, the train and eval steps, the data-parallel
mesh.

  * build_model / model_inputs / init_variables / create_state: a config and a task -> the model, what it reads and
    its initial state {step, params, collections, opt_state} (from the config's seed only);
  * make_train_step / make_eval_step: the (unjitted) steps; describe_nonfinite names what a train step found
    non-finite; sown_metrics flattens the diagnostics mixers sow;
  * DataParallel: a 1-D mesh ("data") over every device of every host, batches sharded, state replicated.

Re-exported by experiments.trainer (experiments/memory.py and experiments/bench/ use them from there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import lra
from experiments.errors import ConfigValueError
from experiments.optim import make_optimizer
from models import param_groups
from models.encoder import DTYPES, Classifier, DualClassifier, PerPositionClassifier, SequenceEncoder
from models.registry import resolve_mixer

State = dict[str, Any]
Prepare = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


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
