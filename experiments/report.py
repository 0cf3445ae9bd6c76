r"""Gathers training workdirs into one markdown results table, plus training curves (one panel row per task).

    python -m experiments.report --workdirs=workdirs/listops-lru,workdirs/listops-s5
    python -m experiments.report --root=workdirs --out=results.md --plot=curves.png

A workdir is what experiments/train.py writes: config.json (the resolved config), metrics.jsonl (one JSON
record per line: {"step", "split": "train" | "val" | "test", "loss", "accuracy", ...}), checkpoints/ and best/,
status.json ({"state", "step", "pid", "host", "message", "time"}, rewritten when the run starts, stops, fails or
finishes) and, once the run has finished, results.json. Lines of metrics.jsonl that are not JSON objects with an
integer "step" and a "split" (e.g. a line cut short by a killed process) are skipped with a warning naming the
file and line.

Every run gets a status (`run_status`):

  finished  results.json exists, and no status.json written after it says otherwise;
  running   status.json says "running" and its process (pid) is alive on this host;
  stopped   status.json says "stopped" (a signal), or says "running" but its process is gone or on another host,
            or (workdirs without status.json, from older trainers) metrics or checkpoints but no results.json;
  failed    status.json says "failed" (its message is the error), or (no status.json) a config.json but neither
            metrics nor checkpoints: a start that died.

The table holds finished, running and stopped runs; an unfinished run shows "running" or "stopped" in the test
column, its last step and its best validation accuracy so far. Failed runs are not in the table, the plot or the
counts: they are listed under the table with their messages, as are the reasons of stopped runs.

From Python:

    from experiments import report
    rows = report.collect(["workdirs/a", "workdirs/b"])   # one dict per workdir, ordered as in the table
    print(report.markdown_table(rows))                   # failed rows are left out
    print(report.notes(rows))                            # counts, stopped and failed runs ("" if all finished)

Rows are ordered by task, then finished runs by test accuracy (best first), then running, stopped and failed
runs, ties broken by mixer and workdir. `plot_curves` draws with matplotlib's Agg canvas directly (no pyplot, no
display, and the backend of a notebook that imports this module is left alone).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import warnings
from collections.abc import Sequence
from typing import Any

from absl import app, flags

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
CHECKPOINT_DIRS = ("checkpoints", "best")
WORKDIR_MARKERS = (RESULTS_FILE, CONFIG_FILE, METRICS_FILE, STATUS_FILE)

FINISHED, RUNNING, STOPPED, FAILED = "finished", "running", "stopped", "failed"
STATES = (FINISHED, RUNNING, STOPPED, FAILED)

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


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_status(workdir: str) -> dict[str, Any] | None:
    """workdir/status.json with its fields checked, or None when it is missing or unusable (with a ReportWarning).

    Returns {"state", "step", "pid", "host", "message", "time"}; a field that is absent or of the wrong type is
    None (the message ""). A file without a known "state" is unusable.
    """
    path = os.path.join(workdir, STATUS_FILE)
    content = _read_json_object(path)
    if content is None:
        return None
    state = content.get("state")
    if state not in STATES:
        warnings.warn(f"{path}: 'state' is {state!r}, expected one of {', '.join(STATES)}; ignored",
                      ReportWarning, stacklevel=2)
        return None
    message = content.get("message")
    host = content.get("host")
    return {"state": state, "step": _integer(content.get("step")), "pid": _integer(content.get("pid")),
            "host": host if isinstance(host, str) else None,
            "message": message.strip() if isinstance(message, str) else "",
            "time": _number(content.get("time"))}


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def process_alive(pid: int, started_by: float | None = None) -> bool:
    """Whether process `pid` of this host is alive (and, when known, the one that was alive at `started_by`).

    A zombie (exited, not yet reaped) counts as dead. With `started_by` (unix seconds at which the process is
    known to have run, e.g. the time it wrote status.json), a process that started later is another one that
    reuses the pid, and counts as dead. The last two checks read /proc and are skipped where it is missing.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, but belongs to another user
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return True  # no /proc (not Linux) or the process just exited: trust kill()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (command) ": state is fields[0]
    if not fields or fields[0] in ("Z", "X"):
        return False
    boot = _boot_time()
    if started_by is not None and boot is not None and len(fields) > 19:
        try:
            start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5): start time
        except (ValueError, OSError):
            return True
        if start > started_by + 2.0:  # /proc/stat's boot time is whole seconds
            return False
    return True


def _has_checkpoint(workdir: str) -> bool:
    """Whether checkpoints/ or best/ holds a complete orbax step directory (named by its step)."""
    for name in CHECKPOINT_DIRS:
        directory = os.path.join(workdir, name)
        if os.path.isdir(directory) and any(entry.isdigit() for entry in os.listdir(directory)):
            return True
    return False


def _format_time(seconds: float | None) -> str:
    if seconds is None:
        return "at an unknown time"
    try:
        return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "at an unknown time"


def run_status(workdir: str, *, has_results: bool | None = None, has_metrics: bool | None = None,
               status: dict[str, Any] | None = None) -> tuple[str, str]:
    """(state, message) of the run in `workdir`: state is "finished", "running", "stopped" or "failed".

    The message says why, for anything but a plain finished run ("" then). `has_results`, `has_metrics` and
    `status` (from `read_status`) may be passed when already known; otherwise they are read from the workdir.
    """
    results_path = os.path.join(workdir, RESULTS_FILE)
    if has_results is None:
        has_results = _read_json_object(results_path) is not None
    if has_metrics is None:
        has_metrics = bool(read_metrics(os.path.join(workdir, METRICS_FILE)))
    if status is None:
        status = read_status(workdir)

    if status is not None and has_results and status["state"] != FINISHED:
        # results.json wins unless the status was written after it (a restart, or a run trained further).
        try:
            results_time = os.path.getmtime(results_path)
        except OSError:
            results_time = math.inf
        if status["time"] is None or status["time"] <= results_time:
            status = None
    if status is None:
        if has_results:
            return FINISHED, ""
        if not has_metrics and not _has_checkpoint(workdir):
            if os.path.exists(os.path.join(workdir, CONFIG_FILE)):
                return FAILED, ("no status.json, metrics, checkpoints or results.json: the run died at start "
                                "(before its first logged step)")
            return FAILED, "no config.json, status.json, metrics, checkpoints or results.json"
        return STOPPED, ("no results.json, so it did not finish; no status.json (written by newer trainers), so "
                         "whether its process is still alive is unknown")

    state, step = status["state"], status["step"]
    at_step = f" at step {step}" if step is not None and step >= 0 else ""
    if state == FINISHED:
        return FINISHED, "" if has_results else "status.json says finished, but results.json is missing"
    if state == FAILED:
        return FAILED, status["message"] or f"status.json says failed{at_step}, without a message"
    if state == STOPPED:
        return STOPPED, status["message"] or f"stopped{at_step}"
    # "running": believe it only if its process is alive here.
    pid, host, written = status["pid"], status["host"], _format_time(status["time"])
    who = f"pid {pid if pid is not None else '?'} on host {host or '?'}"
    if host is None or pid is None:
        return STOPPED, f"status.json says running{at_step} ({written}) but names no pid and host to check"
    if host != socket.gethostname():
        return STOPPED, (f"status.json says running{at_step} ({who}, {written}); that host is not this one "
                         f"({socket.gethostname()}), so whether it is alive cannot be checked")
    if not process_alive(pid, status["time"]):
        return STOPPED, (f"the process died: status.json says running{at_step} ({who}, {written}), but no such "
                         "process is alive")
    return RUNNING, f"{who}"


def collect_one(workdir: str) -> dict[str, Any]:
    """One table row for `workdir` (see `collect` for the keys)."""
    if not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} is not a directory; expected a directory written by "
                         "experiments/train.py (config.json, metrics.jsonl, results.json)")
    config = _read_json_object(os.path.join(workdir, CONFIG_FILE)) or {}
    results = _read_json_object(os.path.join(workdir, RESULTS_FILE))
    records = read_metrics(os.path.join(workdir, METRICS_FILE))
    status = read_status(workdir)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}

    val_accuracies = [acc for r in records
                      if r["split"] == "val" and (acc := _number(r.get("accuracy"))) is not None]
    steps = [r["step"] for r in records]
    if status is not None and status["step"] is not None and status["step"] >= 0:  # a failed start writes -1
        steps.append(status["step"])
    state, message = run_status(workdir, has_results=results is not None, has_metrics=bool(records),
                                status=status)
    row: dict[str, Any] = {
        "workdir": workdir,
        "status": state,
        "message": message,
        "task": config.get("task"),
        "mixer": model.get("mixer"),
        "variant": config.get("variant"),
        "d_model": model.get("d_model"),
        "n_layers": model.get("n_layers"),
        "steps": max(steps, default=None),
        "val_accuracy": max(val_accuracies, default=None),
        "test_accuracy": None,
        "test_majority_rate": None,
        "test_over_majority": None,
        "wall_seconds": None,
    }
    if state != FINISHED or results is None:
        return row
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
    test = row["test_accuracy"] if row["test_accuracy"] is not None else -1.0
    return (str(row["task"] or ""), STATES.index(row["status"]), -test, str(row["mixer"] or ""), row["workdir"])


def collect(workdirs: Sequence[str]) -> list[dict[str, Any]]:
    """One row per workdir, in table order (task; finished by test accuracy, best first; running; stopped; failed).

    Keys of a row: workdir, status ("finished", "running", "stopped" or "failed", see `run_status`), message
    (why a run is not plainly finished; "" otherwise), task, mixer, variant (None unless the config records
    one), d_model, n_layers, steps (of an unfinished run: the last step logged), val_accuracy (of an unfinished
    run: the best so far), test_accuracy, test_majority_rate, test_over_majority, wall_seconds; values not known
    are None. Raises ValueError for a path that is not a directory.
    """
    return sorted((collect_one(workdir) for workdir in workdirs), key=_sort_key)


def find_workdirs(root: str) -> list[str]:
    """Every directory at or below `root` holding config.json, metrics.jsonl, status.json or results.json, sorted.

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


def _escape(cell: str) -> str:
    # A "|" inside a cell (e.g. in a path) would split the markdown column; a newline would end the row.
    return " ".join(cell.split("\n")).replace("|", "\\|")


def _cells(row: dict[str, Any]) -> list[str]:
    steps = "-" if row["steps"] is None else str(row["steps"])
    if row["status"] != FINISHED:
        test, majority, ratio, wall = row["status"], "-", "-", "-"
    else:
        test = _format_accuracy(row["test_accuracy"])
        majority = _format_accuracy(row["test_majority_rate"])
        ratio = "-" if row["test_over_majority"] is None else f"{row['test_over_majority']:.2f}"
        wall = "-" if row["wall_seconds"] is None else f"{row['wall_seconds']:.0f}"
    cells = [str(row["task"] or "?"), str(row["mixer"] or "?"), _format_config(row), steps,
             _format_accuracy(row["val_accuracy"]), test, majority, ratio, wall, row["workdir"]]
    return [_escape(cell) for cell in cells]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured markdown table of `rows` (from `collect`), in the given order; accuracies in %.

    Failed runs are left out (see `notes`). Running and stopped runs show "running" or "stopped" in the test
    column, their last logged step in the steps column and their best validation accuracy so far.
    """
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows if row["status"] != FAILED]
    return "\n".join(lines) + "\n"


def _describe(row: dict[str, Any]) -> str:
    what = f"{row['task'] or '?'} / {row['mixer'] or '?'}"
    if row["steps"] is not None:
        what += f", step {row['steps']}"
    return f"- {row['workdir']} ({what}): {' '.join(row['message'].split())}"


def notes(rows: Sequence[dict[str, Any]]) -> str:
    """What the table does not say, as markdown: "" when every run finished.

    Otherwise the counts of the runs in the table by status, then one line per running and stopped run with
    its reason (e.g. that its process died), then the failed runs, which the table and the counts leave out,
    with their error messages.
    """
    by_state = {state: [row for row in rows if row["status"] == state] for state in STATES}
    if len(by_state[FINISHED]) == len(rows):
        return ""
    in_table = len(rows) - len(by_state[FAILED])
    counts = ", ".join(f"{len(by_state[state])} {state}" for state in (FINISHED, RUNNING, STOPPED))
    lines = [f"Runs in the table: {in_table} ({counts})."]
    unfinished = by_state[RUNNING] + by_state[STOPPED]
    if unfinished:
        lines += ["", "Not finished:", ""]
        lines += [_describe(row).replace("- ", f"- {row['status']}: ", 1) for row in unfinished]
    if by_state[FAILED]:
        lines += ["", f"Failed runs ({len(by_state[FAILED])}, not in the table, the counts or the plot):", ""]
        lines += [_describe(row) for row in by_state[FAILED]]
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


LINE_STYLES = ("-", "--", ":", "-.")


def line_style(index: int) -> dict[str, Any]:
    """Colour and line style of the `index`-th run of a panel: a distinct colour for each of the first 20.

    The colours are tab20's dark half (= tab10, matplotlib's default cycle C0-C9), then its light half; the
    light ones are dashed, so that a light colour is not mistaken for its dark partner. Past 20 runs the colours
    repeat with dotted, then dash-dotted lines: every (colour, style) pair is unique up to 40 runs per panel.
    """
    from matplotlib import colormaps

    tab20 = colormaps["tab20"].colors
    colour = tab20[2 * (index % 10) + (index // 10) % 2]
    return {"color": colour, "linestyle": LINE_STYLES[index // 10 % len(LINE_STYLES)]}


def _label(row: dict[str, Any]) -> str:
    name = os.path.basename(os.path.normpath(row["workdir"]))
    label = f"{row['mixer'] or '?'} ({name})" if row["mixer"] and row["mixer"] != name else name
    return label if row["status"] == FINISHED else f"{label} [{row['status']}]"


def curves_figure(rows: Sequence[dict[str, Any]]):
    """The training-curves figure of `rows` (from `collect`): one row of two panels per task, in table order.

    Left: train loss, right: validation accuracy, against step. Within a task's panels every run has its own
    colour (`line_style`); the legend, right of the validation panel, names mixer and workdir and marks running
    and stopped runs. Failed runs are not drawn. A `matplotlib.figure.Figure` on an Agg canvas of its own (no
    pyplot): it needs no display and changes no global matplotlib state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] != FAILED:
            tasks.setdefault(str(row["task"] or "?"), []).append(row)
    # Each row of panels is tall enough for its legend (about 0.19 inch per entry at this font size).
    heights = [max(4.5, 0.19 * len(task_rows) + 1.0) for task_rows in tasks.values()] or [4.5]
    figure = Figure(figsize=(15, sum(heights)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(heights), 2, squeeze=False, gridspec_kw={"height_ratios": heights})
    for (task, task_rows), (loss_axis, accuracy_axis) in zip(tasks.items(), axes):
        for index, row in enumerate(task_rows):
            style = line_style(index)
            curves = training_curves(read_metrics(os.path.join(row["workdir"], METRICS_FILE)))
            label = _label(row)
            # A run with a single logged step would draw an invisible line of one point: mark the point instead.
            loss_axis.plot(*curves["train_loss"], marker="o" if len(curves["train_loss"][0]) == 1 else None,
                           markersize=3, label=label, **style)
            accuracy_axis.plot(*curves["val_accuracy"], marker="o", markersize=3, label=label, **style)
        loss_axis.set_title(f"{task}: training loss")
        accuracy_axis.set_title(f"{task}: validation accuracy")
        # outside the axes, where it hides no curve
        accuracy_axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                             title=f"{task} ({len(task_rows)} run{'s' if len(task_rows) != 1 else ''})",
                             title_fontsize="small")
    if not tasks:
        axes[0][0].set_title("Training loss (no runs)")
        axes[0][1].set_title("Validation accuracy (no runs)")
    for loss_axis, accuracy_axis in axes:
        loss_axis.set(xlabel="step", ylabel="train loss")
        accuracy_axis.set(xlabel="step", ylabel="validation accuracy")
        for axis in (loss_axis, accuracy_axis):
            axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_curves(rows: Sequence[dict[str, Any]], path: str) -> str:
    """Writes `curves_figure(rows)` to the PNG `path` (15 inches wide at 120 dpi; 4.5 inches or more of height
    per task), creating its parent directories. Returns `path`."""
    figure = curves_figure(rows)
    _make_parent(path)
    figure.savefig(path, dpi=120, format="png")
    return path


# -------------------------------------------------------------------------------------------- command line


def _make_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def report(workdirs: Sequence[str] = (), root: str = "", out: str = "", plot: str = "") -> str:
    """The command line as a function: collects and returns the table followed by its `notes`, and writes
    that text to `out` and the curves to `plot` when given (creating their parent directories)."""
    paths = list(workdirs)
    if root:
        paths += find_workdirs(root)
    paths = list(dict.fromkeys(os.path.normpath(p) for p in paths))  # each workdir once, in first-seen order
    if not paths:
        raise ValueError("no workdirs: give --workdirs=a,b or --root=DIR with workdirs (directories holding "
                         "config.json, metrics.jsonl, status.json or results.json) below it")
    rows = collect(paths)
    text = markdown_table(rows)
    if extra := notes(rows):
        text += "\n" + extra
    if out:
        _make_parent(out)
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(text)
    if plot:
        plot_curves(rows, plot)
    return text


def define_flags() -> None:
    """Command-line flags, defined only when this module runs as the program, so that importing it (tests,
    notebooks, other entry points such as python -m experiments.bench, which also has --out) defines none."""
    flags.DEFINE_list("workdirs", [], "Comma-separated workdirs of experiments/train.py.")
    flags.DEFINE_string("root", "", "Directory searched (recursively) for workdirs.")
    flags.DEFINE_string("out", "", "Also write the markdown table to this file (parent directories are created).")
    flags.DEFINE_string("plot", "", "Also write the training curves to this PNG (parent directories are created).")


def main(argv: list[str]) -> None:
    """The entry point: prints the table and writes --out and --plot."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    values = flags.FLAGS
    try:
        text = report(values.workdirs, values.root, values.out, values.plot)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    except OSError as error:  # e.g. --out names a directory, or a parent cannot be created
        raise SystemExit(f"experiments.report: cannot write the output: {error}") from error
    print(text, end="")


if __name__ == "__main__":
    define_flags()
    app.run(main)
