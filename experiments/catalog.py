"""A plain-text catalog of what can be trained: the tasks, the mixers and the config variants.

    from experiments.catalog import listing
    print(listing())          # what `python -m experiments.train --list` shows

Everything is read from the registries (lra/tasks.py, models/registry.py) and the config files
(experiments/configs/), so a new task, mixer or config file appears here without changes to this module.
Importing it is light; `listing()` imports the mixers (JAX) for their options, without building or tracing any.
"""

from __future__ import annotations

import importlib
import math
import textwrap
from typing import Any

import numpy as np

import lra
from experiments import validation

WIDTH = 100  # characters per line
INDENT = "    "
LENGTH_NOTE = "0 = the task's length"


def listing() -> str:
    """The catalog as plain text: about 130 lines of at most WIDTH characters, no trailing newline."""
    for module in validation.task_config_modules():  # a config file registers its task (e.g. the recall tasks)
        importlib.import_module(module)
    return "\n".join(_task_lines() + [""] + _mixer_lines() + [""] + _config_lines())


def variants(task: str | None = None) -> list[str]:
    """The variants a task config file accepts (experiments/configs/common.py parse_variant): "cpu", then
    "<mixer>-cpu" for each registered mixer the task can use (a causal task: the mixers with a causal form), then
    "<mixer>" for each mixer whose contract has a published recipe for the task. Without a task: every mixer."""
    from models.registry import mixer_contract, mixer_names

    if task is None:
        return ["cpu"] + [f"{m}-cpu" for m in mixer_names()] + mixer_names()
    importlib.import_module(f"experiments.configs.{task}")  # a config file registers its task's module
    spec = lra.get_task(task)
    usable = [m for m in mixer_names() if mixer_contract(m).causal or not spec.causal]
    return ["cpu"] + [f"{m}-cpu" for m in usable] + [m for m in usable if task in mixer_contract(m).recipes]


def config_files() -> list[str]:
    """Task names that have a config file, e.g. "listops" for experiments/configs/listops.py."""
    return [module.rsplit(".", 1)[1] for module in validation.task_config_modules()]


def format_value(value: Any) -> str:
    """A default as a person reads it: 0.001 (not float noise), 'rope', float32 (not a class repr), <required>."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = repr(value)
        return text if len(text) <= 10 else f"{value:.6g}"  # 0.30000000000000004 -> 0.3
    if isinstance(value, int | str):
        return repr(value)
    if isinstance(value, np.dtype):
        return value.name
    name = getattr(value, "__name__", None)  # a dtype given as a class (jnp.float32) or a function
    if isinstance(name, str):
        return name
    text = repr(value)
    if " object at 0x" in text:  # a sentinel or object without a readable repr: name its type
        return f"<{type(value).__name__}>"
    return text


# ------------------------------------------------------------------------------------------------------- tasks


def _input_kind(spec: lra.TaskSpec) -> str:
    pixels = not spec.padded and not spec.causal  # a causal task's windows are unpadded tokens (bytes)
    kind = f"pixels 0..{spec.vocab_size - 1}" if pixels else f"tokens, vocab {spec.vocab_size}"
    return kind + (", dual input" if spec.dual_input else "")


def _data_source(name: str) -> list[str]:
    """The data column, and for file tasks the download command on a line of its own."""
    spec = lra.get_task(name)
    files = "files" in spec.sources
    if "generated" in spec.sources or "builtin" in spec.sources:
        first = ("generated" if "generated" in spec.sources else "built-in") + (", or data.source=files" if files
                                                                                 else "")
    else:
        first = "official files"
    more = [f"download: python -m lra.download {spec.download} --data_dir=DIR"] if spec.download else []
    if files and not spec.download and spec.reads:
        more.append(f"files: {spec.reads}")
    return [first] + more


def _task_lines() -> list[str]:
    names = lra.task_names()
    width = max(len(n) for n in names) + 2
    lines = ["TASKS (--config.task=NAME; lra/tasks.py)",
             f"  {'name':<{width}}{'length':>6}  {'classes':>7}  {'input':<30}data"]
    for name in names:
        spec = lra.get_task(name)
        data, *more = _data_source(name)
        lines.append(f"  {name:<{width}}{spec.seq_len:>6}  {spec.num_classes:>7}  {_input_kind(spec):<30}{data}")
        lines += [wrapped for line in more for wrapped in _wrap(line, INDENT + "  ")]
    lines += _wrap("Files are read from --config.data.data_dir=DIR (layouts: WORKSPACE.md, Data). Generated data "
                   "are cached under --config.data.cache_dir (default ~/.cache/lra-mixers). Pixel tasks are "
                   "never padded.", "  ")
    return lines


# ------------------------------------------------------------------------------------------------------ mixers


def mixer_defaults(name: str) -> dict[str, Any]:
    """The options of mixer `name` a config sets, with the defaults a run starts from: the section
    config.model.<name> of experiments/configs/base.py, else the mixer's own default. The options set from
    config.model (d_model, bidirectional, dtype) are left out."""
    from models.registry import mixer_contract

    contract = mixer_contract(name)
    given = dict(contract.config_options)
    return {option: given.get(option, default) for option, default in contract.defaults().items()}


def mixer_traits(name: str) -> dict[str, bool]:
    """causal / bidirectional: the mixer has that form; step: it decodes step by step (causal form, `step`
    implemented); kv_cache: its step attends over a key-value cache rather than carrying a constant-size state."""
    from models.registry import mixer_contract

    contract = mixer_contract(name)
    step = contract.causal and contract.step
    return {"causal": contract.causal, "bidirectional": contract.bidirectional, "step": step,
            "kv_cache": step and "max_decode_len" in contract.defaults()}


def _mixer_header(name: str) -> str:
    from models.registry import mixer_class

    traits = mixer_traits(name)
    if traits["causal"] and traits["bidirectional"]:
        direction = "causal or bidirectional"
    else:
        direction = "causal only" if traits["causal"] else "bidirectional only (no causal form)"
    if not traits["step"]:
        step = "no decoding step"
    else:
        step = "decoding step over a key-value cache" if traits["kv_cache"] else "recurrent step (fixed-size state)"
    module = mixer_class(name).__module__.replace(".", "/") + ".py"
    return f"  {name}: {direction}; {step} ({module})"


def _mixer_lines() -> list[str]:
    from models.registry import mixer_names

    lines = ["MIXERS (--config.model.mixer=NAME; options: --config.model.NAME.OPTION=VALUE)"]
    lines += _wrap("Defaults as experiments/configs/base.py sets them (else the mixer's own); variants change "
                   "some. d_model, bidirectional and dtype are config.model's; model.bidirectional unset = causal "
                   f"where the mixer has a causal form. Length options (l_max, trunc_len, max_decode_len): "
                   f"{LENGTH_NOTE}.", "  ")
    for name in mixer_names():
        lines.append(_mixer_header(name))
        options = [f"{option}={format_value(value)}" for option, value in mixer_defaults(name).items()]
        lines += _wrap("  ".join(options), INDENT)
    return lines


# ----------------------------------------------------------------------------------------------------- configs


def _cpu_summary(task: str) -> str:
    config = importlib.import_module(f"experiments.configs.{task}").get_config("cpu")
    length = config.data.seq_len or lra.get_task(config.task).seq_len
    return (f"{config.model.mixer}, width {config.model.d_model} x {config.model.n_layers} layers, "
            f"{config.train.num_steps} steps of batch {config.train.batch_size}, length {length}, "
            f"{DATA_SOURCE_WORDS.get(config.data.source, config.data.source)}")


DATA_SOURCE_WORDS = {"generated": "generated data", "files": "official files", "builtin": "built-in corpus"}


def _config_lines() -> list[str]:
    lines = ["CONFIGS (experiments/configs/TASK.py; python -m experiments.train --config=TASK:VARIANT ...)"]
    lines += _wrap("cpu (the default): a small budget for 2 CPU cores; MIXER-cpu: the same budget with another "
                   "mixer; MIXER: the published settings for accelerators (experiments/configs/common.py). Any "
                   "key can still be overridden: --config.train.num_steps=500.", "  ")
    for task in config_files():
        cpu_variants = [v for v in variants(task) if v.endswith("-cpu")]
        accelerator_variants = [v for v in variants(task) if v != "cpu" and not v.endswith("-cpu")]
        lines.append(f"  {task}: cpu = {_cpu_summary(task)}")
        lines.append(f"{INDENT}--config={task}  --config={task}:cpu")
        for group in (cpu_variants, accelerator_variants):
            lines += _wrap("  ".join(f"--config={task}:{v}" for v in group), INDENT)
    extra = [name for name in lra.task_names() if name not in config_files()]
    if extra:
        lines += _wrap(f"{', '.join(extra)}: any variant of image with --config.task=NAME, e.g. "
                       f"--config=image:cpu --config.task={extra[0]}", "  ")
    return lines


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)
