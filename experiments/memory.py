"""Will a run fit in memory? An analytic estimate before compilation, and XLA's own figure after it.

    from experiments import memory
    estimate = memory.check_fits(config, spec)          # before compiling: raises MemoryBudgetError
    compiled = jax.jit(train_step, ...).lower(state, batch).compile()
    memory.check_compiled(compiled)                     # XLA's figure for the step: raises MemoryBudgetError

Two checks, because each misses what the other sees:
  * `estimate(config, spec)` / `check_fits` cost well under a second and need no compilation (which, for a
    config that cannot fit, may itself take minutes or be killed): the state's bytes are exact (jax.eval_shape
    of the trainer's create_state: parameters, batch statistics, optimiser state), the rest is a formula --
    3 x the parameter bytes for the gradients and the optimiser's temporaries, and the activations a training
    step keeps for its backward pass, sequences x length x (layers x a per-mixer width + 6 d_model) floats, plus
    heads x length^2 per sequence and layer for dense attention. The per-mixer widths (each mixer's
    ActivationModel, part of its contract in models/registry.py) were fitted to XLA's compiled memory analysis
    of the trainer's step on CPU and rounded down, so the estimate errs low (0.72-1.01 x the compiled figure for
    the listops cpu configs of every mixer, 0.8-1.0 at other sizes; tests/experiments/test_memory.py): it refuses
    only configs that clearly cannot fit. The
    evaluation step (forward only, at train.eval_batch_size) is estimated too (0.5-1.05 x), and the larger of
    the two counts.
  * `check_compiled(compiled)` reads XLA's compiled memory analysis of the jitted step (arguments + outputs -
    donated aliases + temporaries): exact for what XLA allocates, available only after compilation.

Memory is per device: the state is replicated on every device and the batch split over all of them
(experiments/steps.py DataParallel). The machine's memory (`machine_memory()`) is the device's memory where
the backend reports one (`jax.devices()[0].memory_stats()["bytes_limit"]`, GPUs and TPUs), else host RAM
(/proc/meminfo's MemTotal, or the cgroup's limit when lower; os.sysconf elsewhere), shared by every local
device of the CPU backend. A run is refused when its need exceeds that total, not the memory free at the moment
(MemAvailable changes with every other process; the message reports it). Not counted: the dataset in host
memory (the Path-X cache is memory-mapped), JAX's runtime (a few hundred MB) and XLA's compiler.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import ml_collections

import lra
from experiments.validation import ConfigError, Problem, task_length

GIB = 1024**3
MIB = 1024**2

# What a run's memory is changed by: the keys a MemoryBudgetError names.
LEVERS = ("train.batch_size", "data.seq_len", "model.d_model", "model.n_layers")

# Gradients plus the optimiser's temporaries (AdamW moments' updates, clipping), as a multiple of the parameter
# bytes: XLA's temp memory for steps dominated by parameters is 3.5x them (CPU, jax 0.10.2).
UPDATE_FACTOR = 3.0
# Per token, outside the blocks: the embedding's output, the final norm, the pooling and their gradients.
ENCODER_FLOATS_PER_D = 6.0
# LayerNorm keeps more for its backward pass than BatchNorm does (per token and layer).
LAYER_NORM_FLOATS_PER_D = 3.0
# bfloat16 activations: XLA on CPU computes most of them in float32 anyway (no saving measured), accelerators
# keep about half; the estimate takes a saving it can count on everywhere it errs low.
BFLOAT16_FACTOR = 0.6
# The evaluation step keeps nothing for a backward pass: less than one block's training activations.
EVAL_FRACTION = 0.75


# Each mixer's activation floats per token and layer (and per sequence, and per layer) are part of its contract
# (models/registry.py ActivationModel): fitted to XLA's compiled memory analysis of experiments/steps.py's train step
# (CPU, jax 0.10.2; B = 8, L = 512 and 1,024, D = 64 and 128, 2 and 4 layers, the state sizes, heads and features
# varied) and rounded down. A mixer that registers none gets 16 floats per d per token.


# ------------------------------------------------------------------------------------------------ the machine


@dataclasses.dataclass(frozen=True)
class MachineMemory:
    """The memory one device of this process may use.

    total_bytes: a device's memory (bytes_limit) or host RAM (MemTotal, or the cgroup's limit when lower).
    available_bytes: free now (bytes_limit - bytes_in_use, MemAvailable), for messages; None if unknown.
    what: "host RAM" or "memory of device cuda:0" ...
    devices_sharing: local devices whose memory this is (host RAM: every local CPU device; a GPU's: 1).
    """

    total_bytes: int
    available_bytes: int | None
    what: str
    devices_sharing: int = 1

    def describe(self) -> str:
        """'31.2 GiB of host RAM (20.1 GiB free now), shared by 2 devices': the figures on one line."""
        free = f" ({format_bytes(self.available_bytes)} free now)" if self.available_bytes is not None else ""
        shared = f", shared by {self.devices_sharing} devices" if self.devices_sharing > 1 else ""
        return f"{format_bytes(self.total_bytes)} of {self.what}{free}{shared}"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def host_memory(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> tuple[int, int | None]:
    """(total, available) bytes of host RAM: /proc/meminfo (MemTotal, MemAvailable), capped by a cgroup memory
    limit (v2 memory.max, v1 memory/memory.limit_in_bytes) when one is set; os.sysconf where there is no /proc."""
    total = available = None
    try:
        with open(meminfo) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    value = int(rest.split()[0]) * 1024
                    total, available = (value, available) if name == "MemTotal" else (total, value)
    except (OSError, ValueError, IndexError):
        pass
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 0
    for limit_name, usage_name in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit_path, usage_path = os.path.join(cgroup, limit_name), os.path.join(cgroup, usage_name)
        limit = _read_int(limit_path)
        if limit is not None and 0 < limit < total:
            total = limit
            usage = _read_int(usage_path)
            if usage is not None:
                available = max(0, min(available if available is not None else limit, limit - usage))
            break
    return int(total), available


def machine_memory(device: Any = None) -> MachineMemory:
    """What one device may use: its own memory where the backend reports it, else host RAM (see the module)."""
    device = device if device is not None else jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 -- backends without memory statistics (CPU) raise or return None
        stats = None
    if stats and stats.get("bytes_limit"):
        limit = int(stats["bytes_limit"])
        in_use = stats.get("bytes_in_use")
        return MachineMemory(limit, limit - int(in_use) if in_use is not None else None,
                             f"memory of device {device}")
    total, available = host_memory()
    sharing = sum(1 for d in jax.local_devices() if d.platform == device.platform) if device.platform == "cpu" else 1
    return MachineMemory(total, available, "host RAM", max(1, sharing))


def format_bytes(n: float | None) -> str:
    """`n` bytes as '1.5 GiB', '12 MiB' or '4 KiB' (binary units); 'unknown' for None."""
    if n is None:
        return "unknown"
    if abs(n) >= GIB:
        return f"{n / GIB:.1f} GiB"
    if abs(n) >= MIB:
        return f"{n / MIB:.0f} MiB"
    return f"{n / 1024:.0f} KiB"


# ------------------------------------------------------------------------------------------------- errors


class MemoryBudgetError(ConfigError):
    """The run cannot fit in this machine's memory. One line: the figure, how it was obtained, the memory.

    A ConfigError (a ValueError), so the command line prints it as one `error:` line. `need_bytes`,
    `available_bytes` and `source` ("estimate" or "compiled") hold the figures; `keys` names the levers.
    """

    def __init__(self, message: str, need_bytes: int, available_bytes: int, source: str) -> None:
        self.message = message
        self.need_bytes = need_bytes
        self.available_bytes = available_bytes
        self.source = source
        super().__init__([Problem(key, "the run does not fit in memory") for key in LEVERS])

    def _message(self) -> str:
        return self.message


def _budget(available_bytes: int | None) -> tuple[int, str, int]:
    """(bytes one device may use, how to name them, devices sharing them)."""
    if available_bytes is not None:
        return int(available_bytes), f"{format_bytes(available_bytes)} available (available_bytes)", 1
    machine = machine_memory()
    return machine.total_bytes, machine.describe(), machine.devices_sharing


# ---------------------------------------------------------------------------------------------- the estimate


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes one device needs for a training step and an evaluation step (see the module docstring).

    state_bytes = param_bytes + optimizer_bytes + other_state_bytes (exact, from the abstract state);
    update_bytes, activation_bytes, eval_activation_bytes: analytic.
    """

    param_bytes: int
    optimizer_bytes: int
    other_state_bytes: int  # batch statistics, constant buffers, the step counter
    batch_bytes: int  # one training batch's share (inputs and labels)
    update_bytes: int  # gradients and the optimiser's temporaries
    activation_bytes: int  # kept by the training step for its backward pass
    eval_batch_bytes: int
    eval_activation_bytes: int
    batch_per_device: int
    eval_batch_per_device: int
    length: int
    devices: int
    mixer: str

    @property
    def state_bytes(self) -> int:
        """The train state: parameters, optimiser state and the other collections (exact)."""
        return self.param_bytes + self.optimizer_bytes + self.other_state_bytes

    @property
    def train_bytes(self) -> int:
        """The training step: the state, a batch, gradients and update temporaries, activations."""
        return self.state_bytes + self.batch_bytes + self.update_bytes + self.activation_bytes

    @property
    def eval_bytes(self) -> int:
        """The evaluation step: the state, an eval batch and its activations."""
        return self.state_bytes + self.eval_batch_bytes + self.eval_activation_bytes

    @property
    def total_bytes(self) -> int:
        """What one device needs: the larger of the training and the evaluation step."""
        return max(self.train_bytes, self.eval_bytes)

    def describe(self) -> str:
        """'about 3.2 GiB per device (...)': the figure and where it comes from, on one line."""
        per_device = f"per device, {self.devices} devices" if self.devices > 1 else "per device"
        parts = (f"parameters {format_bytes(self.param_bytes)}, optimiser state {format_bytes(self.optimizer_bytes)}"
                 f", gradients and update {format_bytes(self.update_bytes)}")
        if self.eval_bytes > self.train_bytes:
            where = (f"the evaluation step at train.eval_batch_size: {format_bytes(self.eval_activation_bytes)} of "
                     f"activations for {self.eval_batch_per_device} x length {self.length:,}")
        else:
            where = (f"the training step: {format_bytes(self.activation_bytes)} of activations for batch "
                     f"{self.batch_per_device} x length {self.length:,}")
        return f"about {format_bytes(self.total_bytes)} {per_device} for {where} of {self.mixer!r}; {parts}"


def _mixer(config: ml_collections.ConfigDict, length: int) -> Any:
    """The configured mixer, resolved through its contract (models/registry.py)."""
    from models.registry import resolve_mixer

    section = config.model.get(config.model.mixer)
    return resolve_mixer(config.model.mixer, section.to_dict() if section is not None else {}, length=length)


def _abstract_state(config: ml_collections.ConfigDict, spec: lra.TaskSpec) -> Any:
    from experiments import trainer

    model = trainer.build_model(config, spec)
    return jax.eval_shape(lambda: trainer.create_state(model, config, spec)[0])


def _nbytes(tree: Any) -> int:
    return int(sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def activation_floats(config: ml_collections.ConfigDict, spec: lra.TaskSpec, sequences: int, *,
                      training: bool = True) -> float:
    """Floats of activations a step keeps for `sequences` sequences of the config's length (see the module)."""
    length = task_length(config, spec)
    d = int(config.model.d_model)
    layers = int(config.model.n_layers)
    mixer = _mixer(config, length)
    options, model = mixer.as_dict(), mixer.contract.memory
    per_token = model.per_token(options, d)
    if config.model.get("norm", "batch") == "layer":
        per_token += LAYER_NORM_FLOATS_PER_D * d
    per_sequence = model.per_sequence(options, length, training) if model.per_sequence else 0.0
    fixed = model.per_layer(options, d, length) if model.per_layer else 0.0
    if training:
        floats = (sequences * length * (layers * per_token + ENCODER_FLOATS_PER_D * d)
                  + layers * (sequences * per_sequence + fixed))
    else:  # one block at a time, nothing kept for a backward pass
        floats = sequences * length * EVAL_FRACTION * per_token + sequences * per_sequence + fixed
    if config.model.get("dtype", "float32") == "bfloat16":
        floats *= BFLOAT16_FACTOR
    return floats


def estimate(config: ml_collections.ConfigDict, spec: lra.TaskSpec | None = None, *,
             abstract_state: Any = None, num_devices: int | None = None) -> Estimate:
    """Bytes per device of the config's training and evaluation steps, without compiling anything.

    Args:
      config: a validated config (experiments.validation.validate_config).
      spec: its task (experiments.data.task_spec(config)); derived from the config when None.
      abstract_state: the trainer's state as shapes (jax.eval_shape of create_state), if already at hand;
        computed here otherwise (about 0.1-1 s: an abstract trace of the model's init, no compilation).
      num_devices: devices the batch is split over (default: jax.device_count(), the trainer's mesh).
    """
    if spec is None:
        from experiments import data as data_lib

        spec = data_lib.task_spec(config)
    if abstract_state is None:
        abstract_state = _abstract_state(config, spec)
    devices = int(num_devices or jax.device_count())
    length = task_length(config, spec)
    params = _nbytes(abstract_state["params"])
    optimizer = _nbytes(abstract_state.get("opt_state", {}))
    other = _nbytes(abstract_state) - params - optimizer
    per_sequence = 2 if spec.dual_input else 1
    batch = -(-int(config.train.batch_size) // devices)
    eval_batch = -(-int(config.train.eval_batch_size) // devices)
    return Estimate(
        param_bytes=params,
        optimizer_bytes=optimizer,
        other_state_bytes=other,
        batch_bytes=batch * (per_sequence * length + 1) * 4,
        update_bytes=int(UPDATE_FACTOR * params),
        activation_bytes=int(4 * activation_floats(config, spec, batch * per_sequence)),
        eval_batch_bytes=eval_batch * (per_sequence * length + 2) * 4,
        eval_activation_bytes=int(4 * activation_floats(config, spec, eval_batch * per_sequence, training=False)),
        batch_per_device=batch,
        eval_batch_per_device=eval_batch,
        length=length,
        devices=devices,
        mixer=str(config.model.mixer),
    )


def check_fits(config: ml_collections.ConfigDict, spec: lra.TaskSpec | None = None,
               available_bytes: int | None = None, *, abstract_state: Any = None,
               num_devices: int | None = None) -> Estimate:
    """Refuses a config whose estimated need exceeds the machine's memory; returns the Estimate otherwise.

    Call it after validate_config and before compiling (and before reading or generating data, which can take
    long). `available_bytes` overrides the memory one device may use (default: machine_memory()). Raises
    MemoryBudgetError (a ConfigError: one line naming the estimate, the memory and the keys to lower).
    """
    found = estimate(config, spec, abstract_state=abstract_state, num_devices=num_devices)
    budget, what, sharing = _budget(available_bytes)
    need = found.total_bytes * sharing
    if need > budget:
        shared = f" x {sharing} local devices = {format_bytes(need)}" if sharing > 1 else ""
        raise MemoryBudgetError(
            f"memory: the run needs {found.describe()}{shared} (estimated before compilation), more than this "
            f"machine's {what}; lower {', '.join(LEVERS)} or train.eval_batch_size", need, budget, "estimate")
    return found


# ----------------------------------------------------------------------------------------- the compiled step


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """XLA's compiled memory analysis of one program, per device (bytes).

    total_bytes = arguments + outputs - aliases (donated arguments reused as outputs) + temporaries: what the
    program holds at once while it runs (generated code is not counted; host-side figures are added when the
    backend reports them).
    """

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    host_bytes: int = 0  # arguments, outputs and temporaries XLA places in host memory (offloading)

    @classmethod
    def of(cls, compiled: Any) -> CompiledMemory | None:
        """From `jax.jit(f).lower(...).compile()`; None where the backend has no memory analysis."""
        try:
            analysis = compiled.memory_analysis()
        except Exception:  # noqa: BLE001 -- not implemented on every backend
            return None
        if analysis is None:
            return None

        def get(name: str) -> int:
            value = getattr(analysis, name, 0)
            return int(value) if isinstance(value, int) else 0

        host = (get("host_argument_size_in_bytes") + get("host_output_size_in_bytes")
                - get("host_alias_size_in_bytes") + get("host_temp_size_in_bytes"))
        return cls(get("argument_size_in_bytes"), get("output_size_in_bytes"), get("alias_size_in_bytes"),
                   get("temp_size_in_bytes"), max(host, 0))

    @property
    def total_bytes(self) -> int:
        """Bytes per device: arguments + outputs - donated (aliased) + temporaries + host-side buffers."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.host_bytes

    def describe(self) -> str:
        """The total and its parts (arguments, outputs, donated, temporaries) on one line."""
        return (f"{format_bytes(self.total_bytes)} per device (XLA's compiled memory analysis: arguments "
                f"{format_bytes(self.argument_bytes)} + outputs {format_bytes(self.output_bytes)} - donated "
                f"{format_bytes(self.alias_bytes)} + temporaries {format_bytes(self.temp_bytes)})")


def check_compiled(compiled: Any, available_bytes: int | None = None, *, what: str = "the training step",
                   estimate: Estimate | None = None) -> CompiledMemory | None:
    """Refuses a compiled program that cannot fit; returns its CompiledMemory (None: no analysis here).

    Call it with the jitted step's compiled object, `jax.jit(step, ...).lower(state, batch).compile()` (the
    arguments may be jax.ShapeDtypeStruct), before the first call: compiling is not running, so a step that
    cannot fit is refused before it allocates. Calling the Compiled object itself (`compiled(state, batch)`)
    then reuses that compilation. `estimate`: the analytic Estimate, quoted in the message for comparison.
    Raises MemoryBudgetError naming XLA's figures and the machine's memory.
    """
    found = CompiledMemory.of(compiled)
    if found is None:
        return None
    budget, machine, sharing = _budget(available_bytes)
    need = found.total_bytes * sharing
    if need > budget:
        shared = f" x {sharing} local devices = {format_bytes(need)}" if sharing > 1 else ""
        compared = f"; the estimate before compilation was {format_bytes(estimate.total_bytes)}" if estimate else ""
        raise MemoryBudgetError(
            f"memory: {what} needs {found.describe()}{shared}, more than this machine's {machine}{compared}; "
            f"lower {', '.join(LEVERS)} or train.eval_batch_size", need, budget, "compiled")
    return found


def compile_train_step(config: ml_collections.ConfigDict, spec: lra.TaskSpec | None = None) -> Any:
    """The trainer's training step for `config`, compiled on abstract arguments (nothing is allocated or run):
    what check_compiled reads. For tests and for comparing the estimate with XLA's figure; the trainer
    compiles its own step (with its shardings) and passes that to check_compiled."""
    return _compile_step(config, spec, training=True)


def compile_eval_step(config: ml_collections.ConfigDict, spec: lra.TaskSpec | None = None) -> Any:
    """The trainer's evaluation step at train.eval_batch_size, compiled on abstract arguments."""
    return _compile_step(config, spec, training=False)


def _compile_step(config: ml_collections.ConfigDict, spec: lra.TaskSpec | None, training: bool) -> Any:
    import functools

    import jax.numpy as jnp

    from experiments import data as data_lib
    from experiments import trainer
    from experiments.optim import make_optimizer
    from models import param_groups

    spec = spec if spec is not None else data_lib.task_spec(config)
    model = trainer.build_model(config, spec)
    state = jax.eval_shape(lambda: trainer.create_state(model, config, spec)[0])
    prepare = functools.partial(trainer.model_inputs, spec=spec, input_encoding=config.model.input_encoding)
    batch_size = int(config.train.batch_size if training else config.train.eval_batch_size)
    length = task_length(config, spec)
    shape = (batch_size, 2, length) if spec.dual_input else (batch_size, length)
    batch = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
             "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    if training:
        variables = jax.eval_shape(lambda: trainer.init_variables(model, config, spec))
        tx = make_optimizer(config.optim, param_groups.group_labels(variables["params"]), config.train.num_steps)
        step = jax.jit(trainer.make_train_step(model, tx, config.seed, prepare), donate_argnums=(0,))
    else:
        batch["weights"] = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
        step = jax.jit(trainer.make_eval_step(model, prepare))
    return step.lower(state, batch).compile()
