"""Tests for experiments/report.py: collecting workdirs, run statuses, the markdown table, malformed metrics, the
plot (one row of panels per task, distinct colours), the CLI."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from experiments import report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_workdir(directory, *, task="listops", mixer="lru", d_model=16, n_layers=2, results=None,
                  metrics=(), extra_lines=()):
    """A workdir as experiments/train.py leaves it: config.json, metrics.jsonl, results.json when finished."""
    os.makedirs(directory, exist_ok=True)
    config = {"task": task, "seed": 0, "model": {"mixer": mixer, "d_model": d_model, "n_layers": n_layers}}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        for record in metrics:
            f.write(json.dumps(record) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    if results is not None:
        with open(os.path.join(directory, "results.json"), "w") as f:
            json.dump({"task": task, "mixer": mixer, **results}, f)
    return str(directory)


def write_status(directory, state, *, step=0, pid=None, host=None, message="", when=None):
    """workdir/status.json as the trainer writes it; by default from this (live) process on this host, now."""
    status = {"state": state, "step": step, "pid": os.getpid() if pid is None else pid,
              "host": socket.gethostname() if host is None else host, "message": message,
              "time": time.time() if when is None else when}
    with open(os.path.join(directory, "status.json"), "w") as f:
        json.dump(status, f)


def finished_results(steps, val, test, majority, wall):
    return {"steps": steps, "best_step": steps, "val_accuracy": val, "test_accuracy": test, "test_loss": 1.0,
            "test_majority_rate": majority, "num_params": 100, "wall_seconds": wall}


def train_record(step, loss):
    return {"step": step, "split": "train", "loss": loss, "accuracy": 0.5}


def val_record(step, accuracy):
    return {"step": step, "split": "val", "loss": 1.0, "accuracy": accuracy}


@pytest.fixture
def runs(tmp_path):
    """Two finished ListOps runs (S5 better than LRU), one finished Text run and one running ListOps run (its
    status.json names this test process, which is alive)."""
    root = tmp_path / "workdirs"
    test_record = {"step": 100, "split": "test", "loss": 1.7, "accuracy": 0.25}
    lru = write_workdir(root / "listops-lru", mixer="lru",
                        results=finished_results(100, 0.30, 0.25, 0.20, 61.4),
                        metrics=[train_record(50, 2.0), val_record(50, 0.2), train_record(100, 1.5),
                                 val_record(100, 0.3), test_record])
    s5 = write_workdir(root / "listops-s5", mixer="s5", d_model=32,
                       results=finished_results(80, 0.5, 0.40, 0.20, 99.6),
                       metrics=[train_record(80, 1.0), val_record(80, 0.5)])
    text = write_workdir(root / "nested" / "text-softmax", task="text", mixer="softmax",
                         results=finished_results(10, 0.6, 0.55, 0.5, 5.0), metrics=[train_record(10, 0.7)])
    running = write_workdir(root / "listops-rtf", mixer="rtf",
                            metrics=[train_record(10, 2.2), val_record(10, 0.15), train_record(20, 2.1),
                                     val_record(20, 0.18), train_record(30, 2.0)])
    write_status(running, "running", step=10)
    return root, {"lru": lru, "s5": s5, "text": text, "running": running}


def table_rows(table: str) -> list[list[str]]:
    lines = table.strip().splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_collect_orders_by_task_then_test_accuracy_with_running_runs_last(runs):
    _, dirs = runs
    rows = report.collect([dirs["running"], dirs["text"], dirs["lru"], dirs["s5"]])
    assert [(r["task"], r["mixer"], r["status"]) for r in rows] == [
        ("listops", "s5", "finished"), ("listops", "lru", "finished"), ("listops", "rtf", "running"),
        ("text", "softmax", "finished")]
    s5, lru = rows[0], rows[1]
    assert s5["steps"] == 80 and s5["d_model"] == 32 and s5["n_layers"] == 2
    assert s5["test_over_majority"] == pytest.approx(0.40 / 0.20)
    assert lru["val_accuracy"] == 0.30 and lru["wall_seconds"] == 61.4


def test_markdown_table_cells(runs):
    _, dirs = runs
    table = report.markdown_table(report.collect([dirs["lru"], dirs["s5"], dirs["running"], dirs["text"]]))
    header = table.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == list(report.COLUMNS)
    rows = table_rows(table)
    assert len(rows) == 4
    assert rows[0] == ["listops", "s5", "d_model=32 n_layers=2", "80", "50.00", "40.00", "20.00", "2.00",
                       "100", dirs["s5"]]
    assert rows[1][:9] == ["listops", "lru", "d_model=16 n_layers=2", "100", "30.00", "25.00", "20.00",
                           "1.25", "61"]
    assert rows[3][:6] == ["text", "softmax", "d_model=16 n_layers=2", "10", "60.00", "55.00"]


def test_unfinished_run_shows_running_with_last_step_and_best_validation_so_far(runs):
    _, dirs = runs
    (row,) = report.collect([dirs["running"]])
    assert row["status"] == "running" and row["steps"] == 30 and row["val_accuracy"] == 0.18
    assert row["test_accuracy"] is None and row["wall_seconds"] is None
    cells = table_rows(report.markdown_table([row]))[0]
    assert cells[3:9] == ["30", "18.00", "running", "-", "-", "-"]


def test_workdir_of_an_older_trainer_with_only_a_config_failed_at_start(tmp_path):
    directory = write_workdir(tmp_path / "fresh")
    os.remove(os.path.join(directory, "metrics.jsonl"))
    (row,) = report.collect([directory])
    assert row["status"] == "failed" and row["steps"] is None and "died at start" in row["message"]
    assert table_rows(report.markdown_table([row])) == []


def test_malformed_metric_lines_are_skipped_with_file_and_line_named(tmp_path):
    directory = write_workdir(
        tmp_path / "cut", mixer="s4",
        metrics=[train_record(1, 2.0), val_record(1, 0.1)],
        extra_lines=['{"step": 2, "split": "train", "loss": 1.9', "[1, 2]", json.dumps(train_record(3, 1.8)),
                     '{"split": "val", "accuracy": 0.9}'])
    path = os.path.join(directory, "metrics.jsonl")
    with pytest.warns(report.ReportWarning) as caught:
        records = report.read_metrics(path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3
    assert f"{path}, line 3: not valid JSON" in messages[0]
    assert f"{path}, line 4:" in messages[1] and f"{path}, line 6:" in messages[2]
    assert [r["step"] for r in records] == [1, 1, 3]
    with pytest.warns(report.ReportWarning):
        (row,) = report.collect([directory])
    assert row["status"] == "stopped" and row["steps"] == 3 and row["val_accuracy"] == 0.1  # not the bad 0.9


def test_malformed_results_json_is_reported_and_the_run_shown_as_stopped(tmp_path):
    directory = write_workdir(tmp_path / "broken", metrics=[train_record(5, 1.0)])
    with open(os.path.join(directory, "results.json"), "w") as f:
        f.write('{"task": "listops", "test_acc')
    with pytest.warns(report.ReportWarning, match="results.json: cannot be read as JSON"):
        (row,) = report.collect([directory])
    assert row["status"] == "stopped" and row["steps"] == 5


def test_training_curves_sort_steps_and_keep_the_last_record_of_a_step():
    records = [train_record(2, 1.5), val_record(2, 0.4), train_record(1, 2.0), train_record(2, 1.4),
               {"step": 3, "split": "test", "loss": 9.0, "accuracy": 0.9}]
    curves = report.training_curves(records)
    assert curves["train_loss"] == ([1, 2], [2.0, 1.4])
    assert curves["val_accuracy"] == ([2], [0.4])


def test_find_workdirs_scans_nested_directories_but_not_inside_a_workdir(runs):
    root, dirs = runs
    os.makedirs(os.path.join(dirs["lru"], "checkpoints", "100"))
    with open(os.path.join(dirs["lru"], "checkpoints", "100", "config.json"), "w") as f:
        f.write("{}")
    os.makedirs(root / "empty")
    assert report.find_workdirs(str(root)) == sorted(dirs.values())


def assert_png(path, width, height):
    """`path` is a PNG of the given size in pixels with real content (not a blank or truncated file)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (width, height)
    assert data[-8:-4] == b"IEND"  # complete, not cut short
    assert len(data) > 15_000, len(data)  # two labelled axes at least; a blank figure of this size is ~4.4 KB


def line_pixels(path, color):
    """How many pixels of the PNG at `path` have the RGB colour `color` (a matplotlib colour spec)."""
    rgb = matplotlib.image.imread(str(path))[..., :3]
    return int(np.all(np.abs(rgb - np.asarray(matplotlib.colors.to_rgb(color))) < 0.02, axis=-1).sum())


def test_report_function_writes_the_table_and_the_plot(runs, tmp_path):
    root, _ = runs
    out, plot = tmp_path / "results.md", tmp_path / "curves.png"
    table = report.report(root=str(root), out=str(out), plot=str(plot))
    assert out.read_text() == table
    assert len(table_rows(table.split("\n\n")[0])) == 4
    assert_png(plot, 15 * 120, 2 * int(4.5 * 120))  # two tasks: two rows of panels


def test_plot_draws_one_curve_per_workdir(runs, tmp_path):
    _, dirs = runs
    rows = report.collect([dirs["lru"], dirs["s5"], dirs["running"]])  # table order: s5, lru, rtf -> C0, C1, C2
    path = tmp_path / "curves.png"
    assert report.plot_curves(rows, str(path)) == str(path)
    assert_png(path, 1800, 540)
    # s5 logged one step (a marker on each plot); lru and the running rtf have lines. A legend entry alone is
    # ~44 pixels of its colour, the two markers ~40 more, lru's lines ~1,000, rtf's ~350.
    counts = {color: line_pixels(path, color) for color in ("C0", "C1", "C2", "C3")}
    assert counts["C0"] > 70 and counts["C1"] > 500 and counts["C2"] > 200, counts
    assert counts["C3"] == 0, counts  # no fourth workdir
    empty = tmp_path / "empty.png"
    report.plot_curves([], str(empty))
    assert line_pixels(empty, "C1") == 0


def test_plotting_leaves_the_pyplot_backend_alone(runs, tmp_path):
    """A notebook's (inline) backend must survive a call: plot_curves draws on its own Agg canvas."""
    _, dirs = runs
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's backend: anything but Agg
    try:
        report.plot_curves(report.collect([dirs["lru"]]), str(tmp_path / "curves.png"))
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert_png(tmp_path / "curves.png", 1800, 540)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        report.collect([str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="no workdirs"):
        report.report(root=str(tmp_path))


def test_command_line(runs, tmp_path):
    root, dirs = runs
    out, plot = tmp_path / "table.md", tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "-m", "experiments.report",
                             f"--workdirs={dirs['s5']},{dirs['running']}", f"--out={out}", f"--plot={plot}"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout.split("\n\n")[0])
    assert [r[1] for r in rows] == ["s5", "rtf"] and rows[1][5] == "running"  # the pid is this test's process
    assert out.read_text() == result.stdout
    assert_png(plot, 1800, 540)
    failed = subprocess.run([sys.executable, "-m", "experiments.report", f"--root={tmp_path / 'nothing'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "is not a directory" in failed.stderr


# ------------------------------------------------------------------------------------------- run statuses


def dead_pid():
    """The pid of a process of this host that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def age(path, seconds):
    """Sets the modification time of `path` `seconds` into the past."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_status_json_decides_running_stopped_and_failed(tmp_path):
    metrics = [train_record(10, 2.0), val_record(10, 0.2)]
    running = write_workdir(tmp_path / "running", metrics=metrics)
    write_status(running, "running", step=10)
    died = write_workdir(tmp_path / "died", metrics=metrics)
    write_status(died, "running", step=10, pid=dead_pid())
    elsewhere = write_workdir(tmp_path / "elsewhere", metrics=metrics)
    write_status(elsewhere, "running", step=10, host=socket.gethostname() + "-other")
    reused = write_workdir(tmp_path / "reused", metrics=metrics)  # our pid, but we started after the status
    write_status(reused, "running", step=10, when=time.time() - 10 * 365 * 86400)
    signalled = write_workdir(tmp_path / "signalled", metrics=metrics)
    write_status(signalled, "stopped", step=40, message="SIGTERM at step 40: checkpoint saved")
    failed = write_workdir(tmp_path / "failed", metrics=metrics)
    write_status(failed, "failed", step=0, message="ValueError: batch_size 30 does not divide by 4 devices")
    rows = {os.path.basename(r["workdir"]): r for r in report.collect(
        [running, died, elsewhere, reused, signalled, failed])}
    status = {name: row["status"] for name, row in rows.items()}
    assert status == {"running": "running", "died": "stopped", "elsewhere": "stopped", "reused": "stopped",
                      "signalled": "stopped", "failed": "failed"}
    assert "the process died" in rows["died"]["message"] and "no such process is alive" in rows["died"]["message"]
    assert "cannot be checked" in rows["elsewhere"]["message"]
    assert "the process died" in rows["reused"]["message"]
    assert rows["signalled"]["message"] == "SIGTERM at step 40: checkpoint saved"
    assert rows["signalled"]["steps"] == 40  # the status's step is later than the last metrics record
    assert rows["failed"]["message"].startswith("ValueError: batch_size 30")


def test_a_zombie_process_is_not_alive(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # exited, not reaped: os.kill(pid, 0) still succeeds
            with open(f"/proc/{child.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        assert not report.process_alive(child.pid)
    finally:
        child.wait()
    assert report.process_alive(os.getpid(), time.time())
    assert not report.process_alive(dead_pid())


def test_results_json_means_finished_unless_a_newer_status_says_otherwise(tmp_path):
    finished = finished_results(100, 0.3, 0.25, 0.2, 10.0)
    plain = write_workdir(tmp_path / "plain", results=finished, metrics=[train_record(100, 1.0)])
    stale = write_workdir(tmp_path / "stale", results=finished, metrics=[train_record(100, 1.0)])
    write_status(stale, "running", step=0, pid=dead_pid(), when=time.time() - 60)  # from before the results
    restarted = write_workdir(tmp_path / "restarted", results=finished, metrics=[train_record(120, 1.0)])
    age(os.path.join(restarted, "results.json"), 60)
    write_status(restarted, "running", step=100)  # trained further after finishing: running now
    interrupted = write_workdir(tmp_path / "interrupted", results=finished, metrics=[train_record(120, 1.0)])
    age(os.path.join(interrupted, "results.json"), 60)
    write_status(interrupted, "stopped", step=120, message="SIGINT")
    confirmed = write_workdir(tmp_path / "confirmed", results=finished, metrics=[train_record(100, 1.0)])
    write_status(confirmed, "finished", step=100, pid=dead_pid())
    rows = {os.path.basename(r["workdir"]): r for r in report.collect(
        [plain, stale, restarted, interrupted, confirmed])}
    assert {name: row["status"] for name, row in rows.items()} == {
        "plain": "finished", "stale": "finished", "restarted": "running", "interrupted": "stopped",
        "confirmed": "finished"}
    assert rows["stale"]["test_accuracy"] == 0.25 and rows["stale"]["message"] == ""
    assert rows["restarted"]["test_accuracy"] is None and rows["restarted"]["steps"] == 120


def test_workdirs_of_older_trainers_without_status_json(tmp_path):
    """No status.json: a config alone is a start that died; metrics or checkpoints without results: stopped."""
    config_only = write_workdir(tmp_path / "config_only")
    os.remove(os.path.join(config_only, "metrics.jsonl"))
    empty_metrics = write_workdir(tmp_path / "empty_metrics")  # metrics.jsonl created, nothing logged
    with_checkpoint = write_workdir(tmp_path / "with_checkpoint")
    os.makedirs(os.path.join(with_checkpoint, "checkpoints", "50"))
    unsaved = write_workdir(tmp_path / "unsaved")  # orbax made the directory, or a write was cut short
    os.makedirs(os.path.join(unsaved, "checkpoints", "50.orbax-checkpoint-tmp-123"))
    with_metrics = write_workdir(tmp_path / "with_metrics", metrics=[train_record(5, 2.0)])
    rows = {os.path.basename(r["workdir"]): r for r in report.collect(
        [config_only, empty_metrics, with_checkpoint, unsaved, with_metrics])}
    assert {name: row["status"] for name, row in rows.items()} == {
        "config_only": "failed", "empty_metrics": "failed", "with_checkpoint": "stopped", "unsaved": "failed",
        "with_metrics": "stopped"}
    assert "no status.json" in rows["with_metrics"]["message"]


def test_a_malformed_status_json_is_reported_and_ignored(tmp_path):
    directory = write_workdir(tmp_path / "odd", metrics=[train_record(5, 2.0)])
    write_status(directory, "paused")
    with pytest.warns(report.ReportWarning, match="status.json: 'state' is 'paused'"):
        (row,) = report.collect([directory])
    assert row["status"] == "stopped"
    with open(os.path.join(directory, "status.json"), "w") as f:
        f.write('{"state": "runn')
    with pytest.warns(report.ReportWarning, match="status.json: cannot be read as JSON"):
        (row,) = report.collect([directory])
    assert row["status"] == "stopped"


def test_failed_runs_are_listed_apart_from_the_table_and_the_counts(runs, tmp_path):
    root, dirs = runs
    stopped = write_workdir(root / "listops-s4", mixer="s4", metrics=[train_record(10, 2.0), val_record(10, 0.2)])
    write_status(stopped, "running", step=10, pid=dead_pid())
    failed = write_workdir(root / "listops-s4d", mixer="s4d", metrics=[])
    write_status(failed, "failed", step=-1, message="FloatingPointError: step 3: loss is nan\nsecond line")
    never = write_workdir(root / "listops-old", mixer="lru")
    os.remove(os.path.join(never, "metrics.jsonl"))
    text = report.report(root=str(root))
    table, notes = text.split("\n\n", 1)
    rows = table_rows(table)
    assert [(r[1], r[5]) for r in rows] == [("s5", "40.00"), ("lru", "25.00"), ("rtf", "running"),
                                          ("s4", "stopped"), ("softmax", "55.00")]
    assert rows[3][3:5] == ["10", "20.00"]
    assert "Runs in the table: 5 (3 finished, 1 running, 1 stopped)." in notes
    assert f"- stopped: {stopped} (listops / s4, step 10): the process died" in notes
    assert f"- running: {dirs['running']} (listops / rtf, step 30): pid {os.getpid()}" in notes
    failed_part = notes.split("Failed runs (2, not in the table, the counts or the plot):")[1]
    assert f"- {failed} (listops / s4d): FloatingPointError: step 3: loss is nan second line" in failed_part
    assert f"- {never} (listops / lru): no status.json" in failed_part
    assert "s4d" not in table and "listops-old" not in table
    assert report.notes(report.collect([dirs["lru"], dirs["s5"]])) == ""  # all finished: nothing to add


# ------------------------------------------------------------------------------------------------- the plot


def legend_labels(axis):
    return [text.get_text() for text in axis.get_legend().get_texts()]


def test_plot_has_a_row_of_panels_per_task_with_a_distinct_colour_per_run(tmp_path):
    listops = [write_workdir(tmp_path / f"listops-{i:02d}", mixer=f"m{i:02d}",
                             results=finished_results(20, 0.3, 0.5 - i / 100, 0.1, 1.0),
                             metrics=[train_record(10, 2.0 - i / 50), train_record(20, 1.9 - i / 50),
                                      val_record(20, 0.3)])
               for i in range(23)]
    text = write_workdir(tmp_path / "text-lru", task="text", results=finished_results(20, 0.6, 0.6, 0.5, 1.0),
                         metrics=[train_record(10, 0.7), train_record(20, 0.6), val_record(20, 0.6)])
    stopped = write_workdir(tmp_path / "text-s5", task="text", mixer="s5", metrics=[train_record(10, 0.8)])
    failed = write_workdir(tmp_path / "text-s4", task="text", mixer="s4", metrics=[])
    write_status(failed, "failed", message="boom")
    rows = report.collect(listops + [text, stopped, failed])
    figure = report.curves_figure(rows)
    axes = figure.get_axes()
    assert [axis.get_title() for axis in axes] == [
        "listops: training loss", "listops: validation accuracy", "text: training loss",
        "text: validation accuracy"]
    for loss_axis, accuracy_axis, n in ((axes[0], axes[1], 23), (axes[2], axes[3], 2)):
        styles = [(matplotlib.colors.to_hex(line.get_color()), line.get_linestyle())
                  for line in loss_axis.get_lines()]
        assert len(styles) == n and len(set(styles)) == n  # no two runs of a panel look alike
        colours = [colour for colour, _ in styles]
        assert len(set(colours)) == min(n, 20)  # a colour of its own for each of the first 20 runs
        assert colours[:2] == [matplotlib.colors.to_hex(c) for c in ("C0", "C1")]  # each task starts afresh
        assert len(legend_labels(accuracy_axis)) == n
    assert legend_labels(axes[1])[:2] == ["m00 (listops-00)", "m01 (listops-01)"]  # table order
    assert legend_labels(axes[3]) == ["lru (text-lru)", "s5 (text-s5) [stopped]"]  # the failed s4 is not drawn
    assert axes[1].get_legend().get_title().get_text() == "listops (23 runs)"
    height_listops, height_text = (axis.get_position().height for axis in (axes[0], axes[2]))
    assert height_listops > height_text  # the row with the longer legend is taller
    path = tmp_path / "sub" / "dir" / "curves.png"  # parents are created
    report.plot_curves(rows, str(path))
    assert_png(path, 1800, int(120 * (0.19 * 23 + 1.0 + 4.5)))


def test_out_and_plot_in_missing_directories_are_created(runs, tmp_path):
    root, _ = runs
    out, plot = tmp_path / "new" / "a" / "table.md", tmp_path / "new" / "b" / "curves.png"
    result = subprocess.run([sys.executable, "-m", "experiments.report", f"--root={root}", f"--out={out}",
                             f"--plot={plot}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == result.stdout
    assert_png(plot, 1800, 2 * 540)
    blocked = subprocess.run([sys.executable, "-m", "experiments.report", f"--root={root}", f"--out={out.parent}"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert blocked.returncode != 0 and "cannot write the output" in blocked.stderr
    assert "Traceback" not in blocked.stderr
