"""The sweep runner (experiments/sweep.py): two tiny cells through the trainer, the JSON / table / figure, state
sizes from the models, train-short-test-long, a second run that skips the finished cells, --collect_only, and
one-line flag errors naming the flag."""

from __future__ import annotations

import json
import os

import pytest

from experiments import sweep

pytestmark = pytest.mark.usefixtures("fast_compilation")


def test_two_cells_then_resume_skips_them(tmp_path, monkeypatch):
    grid = sweep.parse_grid("induction", ["lru", "softmax"], ["8"], ["8"], [], ["2"])
    out = tmp_path / "out" / "induction.json"
    rows = sweep.run_sweep(grid, str(tmp_path / "cells"), str(out), num_steps=2, eval_examples=8, log=lambda m: None)
    assert [(r["mixer"], r["d_model"], r["seq_len"], r["steps"]) for r in rows] == [("lru", 8, 8, 2),
                                                                                     ("softmax", 8, 8, 2)]
    saved = json.loads(out.read_text())
    assert saved["task"] == "induction" and len(saved["cells"]) == 2
    for row in saved["cells"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["params"] > 0 and set(row["extrapolation"]) == {"8", "16"}
        assert os.path.exists(os.path.join(row["workdir"], "results.json"))
    softmax = rows[1]
    assert softmax["state_size_bytes"] == 2 * 2 * 8 * 8 * 4  # layers x (K, V) x d_model x L x float32
    assert 0 < rows[0]["state_size_bytes"] < softmax["state_size_bytes"]
    assert (tmp_path / "out" / "induction.png").stat().st_size > 0
    assert "| lru | 8 | 8 |" in (tmp_path / "out" / "induction.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr("experiments.trainer.train_and_evaluate", no_training)
    messages = []
    again = sweep.run_sweep(grid, str(tmp_path / "cells"), str(out), num_steps=2, eval_examples=8,
                            log=messages.append)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    assert sum("skipped" in m for m in messages) == 2
    wider = sweep.parse_grid("induction", ["lru", "softmax"], ["8", "16"], ["8"], [])
    collected = sweep.run_sweep(wider, str(tmp_path / "cells"), str(out), num_steps=2, collect_only=True,
                                log=messages.append)
    assert [(r["mixer"], r["d_model"]) for r in collected] == [("lru", 8), ("softmax", 8)]


@pytest.mark.parametrize("args, needle", [
    (("mqar", ["sofmax"], ["8"], [], []), 'unknown mixer \'sofmax\'.*did you mean "softmax"'),
    (("mqar", ["nystrom"], ["8"], [], []), "--mixers: 'nystrom' has no causal form"),
    (("mqar", ["lru"], ["0"], [], []), r"--d_model=0: expected a comma-separated list of integers in \[1, 16384\]"),
    (("mqar", ["lru"], ["wide"], [], []), "--d_model=wide"),
    (("mqar", ["lru"], ["8"], ["-4"], []), "--seq_len=-4"),
    (("induction", ["lru"], ["8"], [], ["4"]), "--num_pairs: only --task=mqar"),
    (("mqa", ["lru"], ["8"], [], []), '--task=mqa: .*did you mean "mqar"'),
    (("mqar", ["lru", "lru"], ["8"], [], []), "listed twice"),
])
def test_flag_errors_name_the_flag(args, needle):
    with pytest.raises(sweep.SweepError, match=needle) as caught:
        sweep.parse_grid(*args)
    assert "\n" not in str(caught.value)


def test_a_bad_cell_is_refused_before_any_training():
    grid = sweep.parse_grid("mqar", ["lru"], ["8"], ["32"], ["4", "9"])
    with pytest.raises(sweep.SweepError, match="num_pairs=9: .*data.mqar.num_pairs"):
        sweep.cells(grid, 2)
