"""A grid of training runs on one task (mixers x widths x lengths x pairs), their table and a Zoology-style figure.

    python -m experiments.sweep --task=mqar --mixers=softmax,linear,lru,s5 --d_model=32,64,128 \
        [--seq_len=64,128] [--num_pairs=4,8] [--num_steps=N] [--eval_lengths=2,4,8,16] \
        --workdir=DIR --out=FILE.json

Each cell is one run of the trainer (experiments/trainer.py `train_and_evaluate`) with the task's "<mixer>-cpu"
config and the cell's width (and length and number of pairs, when given), in its own sub-workdir
DIR/<mixer>-d<width>-L<length>[-n<pairs>]. The sweep is resumable: a cell whose results.json exists is read, not
trained again, and an interrupted cell resumes from its newest checkpoint (the trainer's own restart). Every
cell's config is validated before the first one trains, so a bad combination (e.g. more pairs than the length
holds) stops the sweep at once. A cell that fails is recorded with its error and the sweep goes on (exit status 1).
The outputs are rewritten after every cell; --collect_only trains nothing and writes them from the finished cells.

Output: FILE.json {"task", "cells": [{mixer, d_model, seq_len, num_pairs, accuracy, val_accuracy, state_size_bytes,
params, wall_seconds, steps, workdir, extrapolation}]}, FILE.md (the table) and FILE.png: accuracy against the
recurrent state size in bytes (log2 axis) and against d_model, one line per mixer, one row of panels per
(length, pairs); with --eval_lengths, a panel of accuracy against test length as well.

State size (`state_size_bytes`): the model's own decoding state, i.e. what `init_state` of the whole encoder holds
for one sequence at the cell's length (every block's mixer state: a recurrence's hidden state, attention's
key-value cache of the whole length, linear attention's running sums), counted in float32 bytes (a complex number
as two floats; integer counters left out). So a mixer added to the registry is counted without a table.

--eval_lengths (multiples of the training length; for tasks whose generator takes any length, e.g. induction):
each finished cell's best checkpoint is also scored on freshly generated test data at those lengths, the model
rebuilt at each length with the same parameters (length options l_max / trunc_len / max_decode_len follow).
Stored per cell in <cell>/extrapolation.json, so a rerun reuses it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import app, flags

PROGRAM = "experiments.sweep"
FLAGS = flags.FLAGS
MAX_WIDTH = 16_384
MAX_LENGTH = 1 << 20
LENGTH_OPTIONS = ("max_decode_len", "l_max", "trunc_len")


def define_flags() -> None:
    """The command's flags (only when it runs as a program)."""
    flags.DEFINE_string("task", "mqar", "A task with a config file experiments/configs/<task>.py.")
    flags.DEFINE_list("mixers", ["softmax", "linear", "lru", "s5"], "Causal mixers (registered names).")
    flags.DEFINE_list("d_model", ["32", "64", "128"], "Model widths.")
    flags.DEFINE_list("seq_len", [], "Sequence lengths (default: the task config's).")
    flags.DEFINE_list("num_pairs", [], "MQAR key-value pairs (default: the config's; --task=mqar only).")
    flags.DEFINE_integer("num_steps", 0, "Training steps per cell (0: the config's).")
    flags.DEFINE_list("eval_lengths", [], "Also test each cell at these multiples of its training length.")
    flags.DEFINE_integer("eval_examples", 500, "Test examples per extra length (--eval_lengths).")
    flags.DEFINE_bool("collect_only", False, "Train nothing: write the outputs from the cells finished so far.")
    flags.DEFINE_string("workdir", "workdirs/sweep", "Directory of the cells' sub-workdirs.")
    flags.DEFINE_string("out", "sweep.json", "Output JSON; the table (.md) and the figure (.png) go next to it.")


class SweepError(ValueError):
    """A flag the sweep cannot take (one line, exit status 2)."""


def _ints(name: str, values: Sequence[str], low: int, high: int) -> list[int]:
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        numbers = []
    if not numbers or any(not low <= n <= high for n in numbers):
        raise SweepError(f"--{name}={','.join(values)}: expected a comma-separated list of integers in "
                         f"[{low}, {high}]")
    return sorted(set(numbers), key=numbers.index)


def parse_grid(task: str, mixers: Sequence[str], widths: Sequence[str], lengths: Sequence[str],
               pairs: Sequence[str], eval_lengths: Sequence[str] = ()) -> dict[str, Any]:
    """The flags as a grid {"task", "mixers", "d_model", "seq_len", "num_pairs", "eval_lengths"}; SweepError naming
    the flag for an unknown task or mixer, a mixer without a causal form (on a causal task), bad integers."""
    import importlib

    import lra
    from models.options import did_you_mean
    from models.registry import mixer_contract, mixer_names

    configs = os.path.join(os.path.dirname(__file__), "configs")
    tasks = sorted(n[:-3] for n in os.listdir(configs) if n.endswith(".py") and n not in
                   ("__init__.py", "base.py", "common.py"))
    if task not in tasks:
        raise SweepError(f"--task={task}: expected a task with a config file, one of {', '.join(tasks)}"
                         f"{did_you_mean(task, tasks)}")
    importlib.import_module(f"experiments.configs.{task}")  # registers the task
    spec = lra.get_task(task)
    if not mixers or any(not m for m in mixers):
        raise SweepError("--mixers: expected a comma-separated list of mixer names")
    for name in mixers:
        if name not in mixer_names():
            raise SweepError(f"--mixers: unknown mixer {name!r}; registered: {', '.join(mixer_names())}"
                             f"{did_you_mean(name, mixer_names())}")
        if spec.causal and not mixer_contract(name).causal:
            causal = [m for m in mixer_names() if mixer_contract(m).causal]
            raise SweepError(f"--mixers: {name!r} has no causal form, and task {task!r} is causal; causal mixers: "
                             f"{', '.join(causal)}")
    if len(set(mixers)) != len(mixers):
        raise SweepError(f"--mixers={','.join(mixers)}: a mixer is listed twice")
    grid = {"task": task, "mixers": list(mixers), "d_model": _ints("d_model", widths, 1, MAX_WIDTH),
            "seq_len": _ints("seq_len", lengths, 1, MAX_LENGTH) if lengths else [None],
            "num_pairs": [None], "eval_lengths": _ints("eval_lengths", eval_lengths, 1, 4096) if eval_lengths else []}
    if pairs:
        if task != "mqar":
            raise SweepError(f"--num_pairs: only --task=mqar has key-value pairs (got --task={task})")
        grid["num_pairs"] = _ints("num_pairs", pairs, 1, 1 << 18)
    return grid


def cell_name(mixer: str, d_model: int, seq_len: int, num_pairs: int | None) -> str:
    """The cell's sub-workdir name, e.g. "softmax-d64-L64-n4"."""
    return f"{mixer}-d{d_model}-L{seq_len}" + (f"-n{num_pairs}" if num_pairs is not None else "")


def cell_config(task: str, mixer: str, d_model: int, seq_len: int | None, num_pairs: int | None, num_steps: int):
    """The task's "<mixer>-cpu" config with the cell's settings."""
    import importlib

    config = importlib.import_module(f"experiments.configs.{task}").get_config(f"{mixer}-cpu")
    config.model.d_model = d_model
    if seq_len is not None:
        config.data.seq_len = seq_len
    if num_pairs is not None:
        config.data.mqar.num_pairs = num_pairs
    if num_steps:
        config.train.num_steps = num_steps
        config.optim.warmup_steps = min(config.optim.warmup_steps, max(num_steps // 10, 0))
        every = max(min(config.train.eval_every, num_steps), 1)
        config.train.eval_every = config.train.checkpoint_every = every
        config.train.log_every = max(min(config.train.log_every, num_steps), 1)
    return config


def cells(grid: dict[str, Any], num_steps: int) -> list[dict[str, Any]]:
    """Every cell of the grid with its validated config (ConfigError names the cell and the key)."""
    from experiments import data as data_lib
    from experiments.validation import validate_config

    found = []
    for seq_len in grid["seq_len"]:
        for num_pairs in grid["num_pairs"]:
            for mixer in grid["mixers"]:
                for d_model in grid["d_model"]:
                    config = cell_config(grid["task"], mixer, d_model, seq_len, num_pairs, num_steps)
                    try:
                        validate_config(config)
                    except ValueError as error:
                        raise SweepError(f"cell mixer={mixer} d_model={d_model} seq_len={seq_len} "
                                         f"num_pairs={num_pairs}: {error}") from None
                    length = data_lib.task_spec(config).seq_len
                    pairs = config.data.mqar.num_pairs if grid["task"] == "mqar" else None
                    found.append({"mixer": mixer, "d_model": d_model, "seq_len": length, "num_pairs": pairs,
                                  "name": cell_name(mixer, d_model, length, pairs), "config": config})
    return found


def state_size_bytes(config) -> int:
    """Float32 bytes of the model's decoding state for one sequence at the config's length (see the module
    docstring); 0 for a model without a recurrent step."""
    import jax
    import numpy as np

    from experiments import data as data_lib
    from experiments.steps import build_model, init_variables
    from models import param_groups

    spec = data_lib.task_spec(config)
    model = build_model(config, spec)
    variables = jax.eval_shape(lambda: param_groups.unbox(init_variables(model, config, spec)))
    try:
        state = jax.eval_shape(lambda v: model.apply(v, 1, method="init_state"), variables)
    except ValueError:  # a bidirectional encoder or a mixer without a step
        return 0
    total = 0
    for leaf in jax.tree.leaves(state):
        dtype = np.dtype(leaf.dtype)
        if np.issubdtype(dtype, np.complexfloating):
            total += 8 * math.prod(leaf.shape)
        elif np.issubdtype(dtype, np.floating):
            total += 4 * math.prod(leaf.shape)
    return int(total)


def extrapolate_cell(config, workdir: str, multiples: Sequence[int], examples: int) -> dict[str, float]:
    """Test accuracy of the cell's best checkpoint at each multiple of its training length, on test data generated
    at that length ({length: accuracy}, keys as strings)."""
    import functools

    import jax
    import ml_collections
    import numpy as np

    from experiments import data as data_lib
    from experiments.checkpoints import restore_selected
    from experiments.steps import DataParallel, build_model, create_state, make_eval_step, model_inputs

    spec = data_lib.task_spec(config)
    parallel = DataParallel()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated),
                            jax.eval_shape(lambda: create_state(build_model(config, spec), config, spec)[0]))
    state = restore_selected(workdir, config.train.keep_checkpoints, abstract, "best")
    state = {"params": state["params"], "collections": state["collections"]}
    results = {}
    for multiple in multiples:
        length = multiple * spec.seq_len
        test_config = ml_collections.ConfigDict(config.to_dict())
        test_config.data.seq_len = length
        section = test_config.data.get(spec.data_section) if spec.data_section else None
        if section is not None:
            section.update({k: v for k, v in (("num_train", 1), ("num_val", 1), ("num_test", examples))
                            if k in section})
        mixer = test_config.model[config.model.mixer]
        for name in LENGTH_OPTIONS:
            if name in mixer and mixer[name]:
                mixer[name] = max(mixer[name], length)
        test_spec = data_lib.task_spec(test_config)
        model = build_model(test_config, test_spec)
        prepare = functools.partial(model_inputs, spec=test_spec, input_encoding=config.model.input_encoding)
        step = jax.jit(make_eval_step(model, prepare))
        split = data_lib.load_splits(test_config)["test"]
        batch = max(1, min(config.train.eval_batch_size, 16_384 // length))
        totals = {"correct": 0.0, "count": 0.0}
        for start in range(0, len(split), batch):
            inputs = np.asarray(split.inputs[start:start + batch], np.int32)
            out = step(state, {"inputs": inputs, "labels": np.asarray(split.labels[start:start + batch], np.int32),
                               "weights": np.ones(len(inputs), np.float32)})
            totals["correct"] += float(out["correct"])
            totals["count"] += float(out["count"])
        results[str(length)] = totals["correct"] / max(totals["count"], 1.0)
    return results


def run_cell(cell: dict[str, Any], root: str, eval_lengths: Sequence[int], eval_examples: int,
             log=print, *, collect_only: bool = False) -> dict[str, Any] | None:
    """Trains (or reads, or resumes) one cell; its row for the JSON (None: not finished, with collect_only)."""
    from experiments import workdir as workdir_lib
    from experiments.trainer import train_and_evaluate

    workdir = os.path.join(root, cell["name"])
    config = cell["config"]
    results = workdir_lib.read_json(workdir, "results.json") if os.path.isdir(workdir) else None
    if isinstance(results, dict) and results.get("steps") == config.train.num_steps:
        log(f"{cell['name']}: finished before (results.json), skipped")
    elif collect_only:
        log(f"{cell['name']}: not finished, left out (--collect_only)")
        return None
    else:
        log(f"{cell['name']}: training")
        results = train_and_evaluate(config, workdir, progress=False)
    row = {k: cell[k] for k in ("mixer", "d_model", "seq_len", "num_pairs")}
    row.update(accuracy=results["test_accuracy"], val_accuracy=results["val_accuracy"],
               state_size_bytes=state_size_bytes(config), params=results["num_params"],
               wall_seconds=round(results["wall_seconds"], 1), steps=results["steps"], workdir=workdir)
    if eval_lengths:
        saved = workdir_lib.read_json(workdir, "extrapolation.json") or {}
        wanted = [m for m in eval_lengths if str(m * cell["seq_len"]) not in saved]
        if wanted:
            saved.update(extrapolate_cell(config, workdir, wanted, eval_examples))
            workdir_lib.write_json(workdir, "extrapolation.json", saved)
        row["extrapolation"] = {str(m * cell["seq_len"]): saved[str(m * cell["seq_len"])]
                                for m in [1, *eval_lengths] if str(m * cell["seq_len"]) in saved}
        row["extrapolation"].setdefault(str(cell["seq_len"]), row["accuracy"])
    log(f"{cell['name']}: test accuracy {row['accuracy']:.4f}, state {row['state_size_bytes']:,} bytes, "
        f"{row['params']:,} parameters, {row['wall_seconds']:.0f} s"
        + (f", by length {row['extrapolation']}" if eval_lengths else ""))
    return row


def markdown_table(task: str, rows: list[dict[str, Any]]) -> str:
    """The cells as a markdown table (accuracy in %)."""
    lengths = sorted({int(k) for r in rows for k in r.get("extrapolation", {})})
    head = ["mixer", "d_model", "seq_len", "num_pairs", "test acc %", "state bytes", "params", "wall s"]
    head += [f"acc % at {n}" for n in lengths]
    lines = [f"Task {task}.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mixer']} | {r['d_model']} | {r['seq_len']} | {r['num_pairs'] or ''} | failed: "
                         f"{r['error']} |")
            continue
        values = [r["mixer"], r["d_model"], r["seq_len"], r["num_pairs"] if r["num_pairs"] is not None else "",
                  f"{100 * r['accuracy']:.1f}", f"{r['state_size_bytes']:,}", f"{r['params']:,}",
                  f"{r['wall_seconds']:.0f}"]
        values += [f"{100 * r['extrapolation'][str(n)]:.1f}" if str(n) in r.get("extrapolation", {}) else ""
                   for n in lengths]
        lines.append("| " + " | ".join(map(str, values)) + " |")
    return "\n".join(lines) + "\n"


def plot(task: str, rows: list[dict[str, Any]], path: str) -> None:
    """Accuracy against state bytes (log2) and against d_model, one line per mixer; one row of panels per
    (seq_len, num_pairs); a third panel of accuracy against test length when rows carry extrapolation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "error" not in r]
    groups = list(dict.fromkeys((r["seq_len"], r["num_pairs"]) for r in rows))
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    extra = any(len(r.get("extrapolation", {})) > 1 for r in rows)
    columns = 3 if extra else 2
    colours = plt.cm.tab10.colors
    fig, axes = plt.subplots(max(len(groups), 1), columns, figsize=(5.2 * columns, 4.2 * max(len(groups), 1)),
                             squeeze=False)
    for i, (seq_len, num_pairs) in enumerate(groups):
        title = f"{task}, L={seq_len}" + (f", {num_pairs} pairs" if num_pairs is not None else "")
        for n, mixer in enumerate(mixers):
            own = sorted((r for r in rows if r["mixer"] == mixer and (r["seq_len"], r["num_pairs"]) ==
                          (seq_len, num_pairs)), key=lambda r: r["d_model"])
            if not own:
                continue
            style = dict(marker="o", color=colours[n % len(colours)], label=mixer)
            by_state = sorted(own, key=lambda r: r["state_size_bytes"])
            axes[i][0].plot([r["state_size_bytes"] for r in by_state], [r["accuracy"] for r in by_state], **style)
            axes[i][1].plot([r["d_model"] for r in own], [r["accuracy"] for r in own], **style)
            if extra:
                for k, r in enumerate(own):
                    points = sorted((int(x), y) for x, y in r.get("extrapolation", {}).items())
                    axes[i][2].plot([p[0] for p in points], [p[1] for p in points], marker="o",
                                    color=colours[n % len(colours)], linestyle=("-", "--", ":", "-.")[k % 4],
                                    label=f"{mixer} d={r['d_model']}")
        axes[i][0].set_xscale("log", base=2)
        axes[i][0].set_xlabel("recurrent state size (bytes, float32)")
        axes[i][1].set_xscale("log", base=2)
        axes[i][1].set_xlabel("model width d_model")
        for ax in axes[i][:2]:
            ax.set_ylabel("test accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(title)
            ax.grid(alpha=0.3)
        if extra:
            axes[i][2].set_xscale("log", base=2)
            axes[i][2].set_xlabel("test length (trained at the first point)")
            axes[i][2].set_ylabel("test accuracy")
            axes[i][2].set_ylim(-0.02, 1.02)
            axes[i][2].set_title(f"{task}: train short, test long")
            axes[i][2].grid(alpha=0.3)
            axes[i][2].legend(fontsize=7)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(task: str, grid: dict[str, Any], rows: list[dict[str, Any]], out: str) -> str:
    """FILE.json, FILE.md and FILE.png from the rows so far; returns the stem."""
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"task": task, "grid": {k: v for k, v in grid.items() if k != "task"}, "cells": rows}, f,
                  indent=1)
    stem = os.path.splitext(out)[0]
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(task, rows))
    plot(task, rows, stem + ".png")
    return stem


def run_sweep(grid: dict[str, Any], root: str, out: str, *, num_steps: int = 0, eval_examples: int = 500,
              collect_only: bool = False, log=print) -> list[dict[str, Any]]:
    """Runs (or reads) every cell, writing the outputs (.json, .md, .png) after each; returns the rows."""
    from experiments import cli

    todo = cells(grid, num_steps)
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    rows: list[dict[str, Any]] = []
    start = time.time()
    for cell in todo:
        try:
            row = run_cell(cell, root, grid["eval_lengths"], eval_examples, log=log, collect_only=collect_only)
        except cli.user_errors() as error:
            log(f"{cell['name']}: failed: {error}")
            row = {k: cell[k] for k in ("mixer", "d_model", "seq_len", "num_pairs")} | {
                "error": f"{type(error).__name__}: {error}", "workdir": os.path.join(root, cell["name"])}
        if row is not None:
            rows.append(row)
            write_outputs(grid["task"], grid, rows, out)
    stem = write_outputs(grid["task"], grid, rows, out)
    log(f"{len(rows)} cells in {time.time() - start:.0f} s: {stem}.json, {stem}.md, {stem}.png")
    return rows


def main(argv: Sequence[str]) -> None:
    """The command (see the module docstring)."""
    from experiments import cli

    if len(argv) > 1:
        cli.usage_exit(f"unexpected arguments {' '.join(argv[1:])!r}", PROGRAM)
    if FLAGS.num_steps < 0:
        cli.usage_exit(f"--num_steps={FLAGS.num_steps}: expected 0 (the config's) or a positive number", PROGRAM)
    if FLAGS.eval_examples < 1:
        cli.usage_exit(f"--eval_examples={FLAGS.eval_examples}: expected a positive number", PROGRAM)
    if not FLAGS.workdir or not FLAGS.out:
        cli.usage_exit("--workdir and --out: expected a directory and a JSON file name", PROGRAM)
    try:
        grid = parse_grid(FLAGS.task, FLAGS.mixers, FLAGS.d_model, FLAGS.seq_len, FLAGS.num_pairs,
                          FLAGS.eval_lengths)
        cli.quiet_library_logs()
        rows = run_sweep(grid, FLAGS.workdir, FLAGS.out, num_steps=FLAGS.num_steps,
                         eval_examples=FLAGS.eval_examples, collect_only=FLAGS.collect_only)
    except SweepError as error:
        cli.usage_exit(str(error), PROGRAM)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    from experiments import cli

    define_flags()
    app.run(main, flags_parser=cli.flags_parser(PROGRAM))
