"""Tests for experiments/report.py: collecting workdirs, the markdown table, malformed metrics, the CLI."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from experiments import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def finished_results(steps, val, test, majority, wall):
    return {"steps": steps, "best_step": steps, "val_accuracy": val, "test_accuracy": test, "test_loss": 1.0,
            "test_majority_rate": majority, "num_params": 100, "wall_seconds": wall}


def train_record(step, loss):
    return {"step": step, "split": "train", "loss": loss, "accuracy": 0.5}


def val_record(step, accuracy):
    return {"step": step, "split": "val", "loss": 1.0, "accuracy": accuracy}


@pytest.fixture
def runs(tmp_path):
    """Two finished ListOps runs (S5 better than LRU), one finished Text run and one running ListOps run."""
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


def test_workdir_with_only_a_config_has_no_metrics(tmp_path):
    directory = write_workdir(tmp_path / "fresh")
    os.remove(os.path.join(directory, "metrics.jsonl"))
    (row,) = report.collect([directory])
    assert row["status"] == "no metrics" and row["steps"] is None
    assert table_rows(report.markdown_table([row]))[0][3:6] == ["-", "-", "no metrics"]


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
    assert row["status"] == "running" and row["steps"] == 3 and row["val_accuracy"] == 0.1  # not the bad 0.9


def test_malformed_results_json_is_reported_and_the_run_shown_as_running(tmp_path):
    directory = write_workdir(tmp_path / "broken", metrics=[train_record(5, 1.0)])
    with open(os.path.join(directory, "results.json"), "w") as f:
        f.write('{"task": "listops", "test_acc')
    with pytest.warns(report.ReportWarning, match="results.json: cannot be read as JSON"):
        (row,) = report.collect([directory])
    assert row["status"] == "running" and row["steps"] == 5


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
    assert out.read_text() == table and len(table_rows(table)) == 4
    assert_png(plot, 15 * 120, int(4.5 * 120))


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
    rows = table_rows(result.stdout)
    assert [r[1] for r in rows] == ["s5", "rtf"] and rows[1][5] == "running"
    assert out.read_text() == result.stdout
    assert_png(plot, 1800, 540)
    failed = subprocess.run([sys.executable, "-m", "experiments.report", f"--root={tmp_path / 'nothing'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "is not a directory" in failed.stderr
