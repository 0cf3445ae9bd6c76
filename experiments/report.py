r"""Gathers finished and running training workdirs into one markdown results table, plus training curves.

    python -m experiments.report --workdirs=workdirs/listops-lru,workdirs/listops-s5
    python -m experiments.report --root=workdirs --out=results.md --plot=curves.png

A workdir is what experiments/train.py writes: config.json (the resolved config), metrics.jsonl (one JSON
record per line: {"step", "split": "train" | "val" | "test", "loss", "accuracy", ...}) and, once the run has
finished, results.json. A workdir without results.json is shown as "running" with the last step found in
metrics.jsonl and the best validation accuracy seen so far. Lines of metrics.jsonl that are not JSON objects
with an integer "step" and a "split" (e.g. a line cut short by a killed process) are skipped with a warning
naming the file and line.

From Python:

    from experiments import report
    rows = report.collect(["workdirs/a", "workdirs/b"])   # one dict per workdir, ordered as in the table
    print(report.markdown_table(rows))

Rows are ordered by task, then finished runs by test accuracy (best first), then running runs, ties broken by
mixer and workdir. `plot_curves` draws with matplotlib's Agg canvas directly (no pyplot, no display, and the
backend of a notebook that imports this module is left alone).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

from absl import app, flags

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
WORKDIR_MARKERS = (RESULTS_FILE, CONFIG_FILE, METRICS_FILE)

FINISHED, RUNNING, NO_METRICS = "finished", "running", "no metrics"

COLUMNS = ("task", "mixer", "config", "steps", "val acc", "test acc", "test majority", "test/majority",
           "wall seconds", "workdir")


class ReportWarning(UserWarning):
    """A file of a workdir could not be read completely; the report goes on without the unreadable part."""


# ------------------------------------------------------------------------------------------------- reading


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in file order; malformed lines are skipped with a ReportWarning.

    A record must be a JSON object with an integer "step" and a string "split". Returns [] when the file does
    not exist. Cost O(file size).
    """
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                warnings.warn(f"{path}, line {line_number}: not valid JSON ({error.msg}); line skipped",
                              ReportWarning, stacklevel=2)
                continue
            if not (isinstance(record, dict) and isinstance(record.get("step"), int)
                    and isinstance(record.get("split"), str)):
                warnings.warn(f"{path}, line {line_number}: expected an object with an integer 'step' and a "
                              f"string 'split', got {line.strip()[:80]!r}; line skipped", ReportWarning,
                              stacklevel=2)
                continue
            records.append(record)
    return records


def _read_json_object(path: str) -> dict[str, Any] | None:
    """The JSON object in `path`; None (with a ReportWarning) when it is missing, malformed or no object."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError) as error:
        warnings.warn(f"{path}: cannot be read as JSON ({error}); ignored", ReportWarning, stacklevel=3)
        return None
    if not isinstance(content, dict):
        warnings.warn(f"{path}: expected a JSON object, got {type(content).__name__}; ignored", ReportWarning,
                      stacklevel=3)
        return None
    return content


def _number(value: Any) -> float | None:
    """`value` as a finite float, or None when it is absent or not a number (so a damaged file shows '-')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def collect_one(workdir: str) -> dict[str, Any]:
    """One table row for `workdir` (see `collect` for the keys)."""
    if not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} is not a directory; expected a directory written by "
                         "experiments/train.py (config.json, metrics.jsonl, results.json)")
    config = _read_json_object(os.path.join(workdir, CONFIG_FILE)) or {}
    results = _read_json_object(os.path.join(workdir, RESULTS_FILE))
    records = read_metrics(os.path.join(workdir, METRICS_FILE))
    model = config.get("model") if isinstance(config.get("model"), dict) else {}

    val_accuracies = [acc for r in records
                      if r["split"] == "val" and (acc := _number(r.get("accuracy"))) is not None]
    row: dict[str, Any] = {
        "workdir": workdir,
        "task": config.get("task"),
        "mixer": model.get("mixer"),
        "variant": config.get("variant"),
        "d_model": model.get("d_model"),
        "n_layers": model.get("n_layers"),
        "steps": max((r["step"] for r in records), default=None),
        "val_accuracy": max(val_accuracies, default=None),
        "test_accuracy": None,
        "test_majority_rate": None,
        "test_over_majority": None,
        "wall_seconds": None,
    }
    if results is None:
        row["status"] = RUNNING if records else NO_METRICS
        return row
    row["status"] = FINISHED
    # results.json is the record of a finished run: its values take precedence over the config and metrics.
    row["task"] = results.get("task", row["task"])
    row["mixer"] = results.get("mixer", row["mixer"])
    if isinstance(results.get("steps"), int):
        row["steps"] = results["steps"]
    for key in ("val_accuracy", "test_accuracy", "test_majority_rate", "wall_seconds"):
        value = _number(results.get(key))
        if value is not None:
            row[key] = value
    if row["test_accuracy"] is not None and row["test_majority_rate"]:
        row["test_over_majority"] = row["test_accuracy"] / row["test_majority_rate"]
    return row


def _sort_key(row: dict[str, Any]) -> tuple:
    finished = row["status"] == FINISHED
    test = row["test_accuracy"] if row["test_accuracy"] is not None else -1.0
    return (str(row["task"] or ""), not finished, -test, str(row["mixer"] or ""), row["workdir"])


def collect(workdirs: Sequence[str]) -> list[dict[str, Any]]:
    """One row per workdir, in table order (task; finished by test accuracy, best first; then running).

    Keys of a row: workdir, status ("finished", "running" or "no metrics"), task, mixer, variant (None unless
    the config records one), d_model, n_layers, steps (of a running run: the last step in metrics.jsonl),
    val_accuracy (of a running run: the best so far), test_accuracy, test_majority_rate, test_over_majority,
    wall_seconds; values not known are None. Raises ValueError for a path that is not a directory.
    """
    return sorted((collect_one(workdir) for workdir in workdirs), key=_sort_key)


def find_workdirs(root: str) -> list[str]:
    """Every directory at or below `root` holding config.json, metrics.jsonl or results.json, sorted.

    The search does not descend into a workdir (its checkpoints and TensorBoard files are not runs).
    """
    if not os.path.isdir(root):
        raise ValueError(f"--root={root!r} is not a directory; expected a directory whose subdirectories are "
                         "workdirs of experiments/train.py")
    found = []
    for directory, subdirectories, files in os.walk(root):
        if any(marker in files for marker in WORKDIR_MARKERS):
            found.append(directory)
            subdirectories.clear()
        else:
            subdirectories.sort()
    return sorted(found)


# ------------------------------------------------------------------------------------------------------ table


def _format_accuracy(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _format_config(row: dict[str, Any]) -> str:
    parts = []
    if row.get("d_model") is not None:
        parts.append(f"d_model={row['d_model']}")
    if row.get("n_layers") is not None:
        parts.append(f"n_layers={row['n_layers']}")
    settings = " ".join(parts)
    if row.get("variant"):
        return f"{row['variant']} ({settings})" if settings else str(row["variant"])
    return settings or "-"


def _cells(row: dict[str, Any]) -> list[str]:
    running = row["status"] != FINISHED
    steps = "-" if row["steps"] is None else str(row["steps"])
    if running:
        test = "running" if row["status"] == RUNNING else "no metrics"
        majority = ratio = wall = "-"
    else:
        test = _format_accuracy(row["test_accuracy"])
        majority = _format_accuracy(row["test_majority_rate"])
        ratio = "-" if row["test_over_majority"] is None else f"{row['test_over_majority']:.2f}"
        wall = "-" if row["wall_seconds"] is None else f"{row['wall_seconds']:.0f}"
    cells = [str(row["task"] or "?"), str(row["mixer"] or "?"), _format_config(row), steps,
             _format_accuracy(row["val_accuracy"]), test, majority, ratio, wall, row["workdir"]]
    # A "|" inside a cell (e.g. in a path) would split the markdown column.
    return [cell.replace("|", "\\|") for cell in cells]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured markdown table of `rows` (from `collect`), in the given order; accuracies in %.

    Running runs show "running" in the test column and their last logged step in the steps column.
    """
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ plots


def training_curves(records: Sequence[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, values) of the train loss and the validation accuracy, in step order, from metrics records.

    A resumed run may log a step twice; the last record of a step wins, as in the trainer's own metrics file.
    """
    curves: dict[str, dict[int, float]] = {"train_loss": {}, "val_accuracy": {}}
    for record in records:
        if record["split"] == "train" and (loss := _number(record.get("loss"))) is not None:
            curves["train_loss"][record["step"]] = loss
        elif record["split"] == "val" and (acc := _number(record.get("accuracy"))) is not None:
            curves["val_accuracy"][record["step"]] = acc
    return {name: (sorted(points), [points[s] for s in sorted(points)]) for name, points in curves.items()}


def plot_curves(rows: Sequence[dict[str, Any]], path: str) -> str:
    """Writes train loss and validation accuracy against step, one line per workdir, to the PNG `path`.

    Returns `path`. The figure is drawn on an Agg canvas of its own rather than through pyplot, so it needs no
    display and changes no global matplotlib state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.5))
    FigureCanvasAgg(figure)
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    for index, row in enumerate(rows):
        # The default cycle has 10 colours: later runs change line style so that no two look alike.
        style = {"color": f"C{index % 10}", "linestyle": ("-", "--", ":", "-.")[index // 10 % 4]}
        curves = training_curves(read_metrics(os.path.join(row["workdir"], METRICS_FILE)))
        name = os.path.basename(os.path.normpath(row["workdir"]))
        label = f"{row['task'] or '?'} / {row['mixer'] or '?'} ({name})"
        # A run with a single logged step would draw an invisible line of one point: mark the point instead.
        loss_axis.plot(*curves["train_loss"], marker="o" if len(curves["train_loss"][0]) == 1 else None,
                       markersize=3, label=label, **style)
        accuracy_axis.plot(*curves["val_accuracy"], marker="o", markersize=3, label=label, **style)
    loss_axis.set(xlabel="step", ylabel="train loss", title="Training loss")
    accuracy_axis.set(xlabel="step", ylabel="validation accuracy", title="Validation accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
    if rows:  # outside the axes, where it hides no curve
        accuracy_axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    return path


# -------------------------------------------------------------------------------------------- command line


def report(workdirs: Sequence[str] = (), root: str = "", out: str = "", plot: str = "") -> str:
    """The command line as a function: collects, returns the table, and writes `out` / `plot` when given."""
    paths = list(workdirs)
    if root:
        paths += find_workdirs(root)
    paths = list(dict.fromkeys(os.path.normpath(p) for p in paths))  # each workdir once, in first-seen order
    if not paths:
        raise ValueError("no workdirs: give --workdirs=a,b or --root=DIR with workdirs (directories holding "
                         "config.json, metrics.jsonl or results.json) below it")
    rows = collect(paths)
    table = markdown_table(rows)
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(table)
    if plot:
        plot_curves(rows, plot)
    return table


def define_flags() -> None:
    """Command-line flags, defined only when this module runs as the program, so that importing it (tests,
    notebooks, other entry points such as experiments/bench.py, which also has --out) defines none."""
    flags.DEFINE_list("workdirs", [], "Comma-separated workdirs of experiments/train.py.")
    flags.DEFINE_string("root", "", "Directory searched (recursively) for workdirs.")
    flags.DEFINE_string("out", "", "Also write the markdown table to this file.")
    flags.DEFINE_string("plot", "", "Also write the training curves to this PNG.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    values = flags.FLAGS
    try:
        table = report(values.workdirs, values.root, values.out, values.plot)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    print(table, end="")


if __name__ == "__main__":
    define_flags()
    app.run(main)
