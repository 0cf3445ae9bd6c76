"""Faults a preemptible cluster job meets, on the real trainer: two trainers on one workdir, torn and damaged
metrics, a metrics rewrite interrupted, checkpoints of another model, damaged checkpoints and meta records,
non-finite states, a damaged config.json, and a finished run started again. Subprocesses where the exit code and
the printed line are the behaviour; otherwise in-process on copies of one finished tiny run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import metrics as metrics_lib
from experiments import trainer
from experiments import workdir as workdir_lib
from tests.e2e.test_newcomer import assert_one_line_error
from tests.e2e.test_train import final_params, tiny_config, tiny_overrides

pytestmark = pytest.mark.usefixtures("fast_compilation")


def train_cmd(workdir, cache, **overrides):
    return [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *tiny_overrides(cache, **overrides)]


def run(cmd, cwd, timeout=300):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
    """A finished tiny run (12 steps, checkpoints 9 and 12, best by validation), copied by each test."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    results = trainer.train_and_evaluate(tiny_config(cache), str(workdir), progress=False)
    return workdir, results


@pytest.fixture
def copy(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    return workdir


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------------------- 1: the workdir lock


def test_a_second_trainer_on_a_locked_workdir_exits_at_once_naming_the_holder(tmp_path, cache):
    workdir = tmp_path / "run"
    steps = {"train.num_steps": 400, "train.checkpoint_every": 100, "train.eval_every": 200, "train.log_every": 50}
    first = subprocess.Popen(train_cmd(workdir, cache, **steps), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (workdir / "lock.json").exists():
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.02)
        started = time.time()
        second = run(train_cmd(workdir, cache, **steps), cwd=tmp_path)
        assert first.poll() is None, "the first trainer ended before the second one was refused: proves nothing"
    finally:
        first.kill()
        first.communicate()
    assert_one_line_error(second, f"--workdir={workdir} is in use", f"process {first.pid}",
                          f"host {socket.gethostname()}")
    assert time.time() - started < 60
    # Nothing of the first run's was touched by the second: its metrics have no duplicate records.
    if (workdir / "metrics.jsonl").exists():
        steps_logged = [(r["step"], r["split"]) for r in records(workdir)]
        assert len(steps_logged) == len(set(steps_logged))


def test_a_stale_lock_of_a_dead_process_is_taken_over(copy, cache, caplog):
    lock = {"host": socket.gethostname(), "pid": dead_pid(), "time": time.time(), "started": time.time()}
    (copy / "lock.json").write_text(json.dumps(lock))
    with caplog.at_level("WARNING"):
        results = trainer.train_and_evaluate(tiny_config(cache, **{"train.num_steps": 15}), str(copy),
                                             progress=False)
    assert results["steps"] == 15 and "taking over the stale lock" in caplog.text
    assert workdir_lib.WorkdirLock(str(copy)).holder() is None  # released at the end (the record is cleared)


def test_of_several_processes_taking_the_lock_at_the_same_moment_exactly_one_wins(tmp_path):
    """The soak found two trainers running at once: one read the other's lock file before its content was written
    and took it for stale. Now the flock decides."""
    start = time.time() + 3.0
    code = ("import sys, time; from experiments.workdir import WorkdirLock, WorkdirLockedError\n"
            f"lock = WorkdirLock({str(tmp_path)!r}); time.sleep(max({start} - time.time(), 0))\n"
            "try:\n    lock.acquire()\nexcept WorkdirLockedError:\n    print('busy'); sys.exit(0)\n"
            "print('won'); sys.stdout.flush(); time.sleep(2.0); lock.release()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["busy"] * 5 + ["won"], outcomes


def test_a_lock_of_another_host_is_stale_only_when_its_heartbeat_is_old(copy, cache):
    lock = workdir_lib.WorkdirLock(str(copy))
    fresh = {"host": "elsewhere", "pid": 12345, "time": time.time(), "started": time.time()}
    assert lock.stale_reason(fresh) is None
    old = {**fresh, "time": time.time() - workdir_lib.STALE_AFTER_SECONDS - 5}
    assert "heartbeat" in lock.stale_reason(old)
    (copy / "lock.json").write_text(json.dumps(fresh))
    with pytest.raises(workdir_lib.WorkdirLockedError, match="process 12345 on host elsewhere"):
        trainer.train_and_evaluate(tiny_config(cache, **{"train.num_steps": 15}), str(copy), progress=False)
    assert json.loads((copy / "lock.json").read_text()) == fresh  # the other host's lock is left alone


# ------------------------------------------------------------------------------------- 2, 3, 6: metrics.jsonl


def test_a_torn_last_metrics_line_is_dropped_with_its_offset_and_the_run_goes_on(copy, cache, caplog):
    path = copy / "metrics.jsonl"
    size = path.stat().st_size
    with open(path, "a") as f:
        f.write('{"step": 13, "split": "tra')  # a full disk cut this write short
    with caplog.at_level("WARNING"):
        trainer.train_and_evaluate(tiny_config(cache, **{"train.num_steps": 15}), str(copy), progress=False)
    assert f"metrics.jsonl: dropping the damaged last line (byte offset {size}," in caplog.text
    train = [r["step"] for r in records(copy) if r["split"] == "train"]
    assert train == list(range(1, 16))  # every record once, the torn one gone
    assert [r["split"] for r in records(copy)].count("test") == 1


def test_damage_before_the_last_metrics_line_is_one_line_naming_file_and_line(copy, cache):
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    lines[3] = "\x00\x00garbage"
    (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    proc = run(train_cmd(copy, cache, **{"train.num_steps": 15}), cwd=copy.parent)
    assert_one_line_error(proc, "metrics.jsonl, line 4", "damaged")
    assert (copy / "metrics.jsonl").read_text().splitlines()[3] == "\x00\x00garbage"  # left for a person to see


def test_records_of_unknown_shape_are_skipped_with_a_warning(copy, cache, caplog):
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    lines.insert(2, "[1, 2, 3]")
    lines.insert(5, '{"no_step": true}')
    (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        trainer.train_and_evaluate(tiny_config(cache, **{"train.num_steps": 15}), str(copy), progress=False)
    assert caplog.text.count("skipping a record of unknown shape") == 2
    assert all(isinstance(r, dict) and "step" in r for r in records(copy))


def test_the_metrics_rewrite_replaces_the_file_and_never_writes_it_in_place(copy, monkeypatch):
    path = copy / "metrics.jsonl"
    before = path.read_bytes()
    os.link(path, copy / "old_inode")  # the file as it was: a rewrite in place would change it too
    writer = trainer.MetricWriter(str(copy), resume_step=6, enabled=True)
    writer.close()
    assert (copy / "old_inode").read_bytes() == before
    assert all(r["step"] <= 6 and r["split"] != "test" for r in records(copy))
    # A kill just before the rename (the worst moment) leaves the complete old file.
    os.remove(path)
    os.link(copy / "old_inode", path)

    def killed(*args):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(metrics_lib.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.MetricWriter(str(copy), resume_step=6, enabled=True)
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------- 4, 5, 6, 12: checkpoints


def test_checkpoints_without_a_config_json_are_refused_and_left_untouched(copy, cache):
    (copy / "config.json").unlink()
    listing = sorted((p.relative_to(copy), p.stat().st_mtime_ns) for p in copy.rglob("*"))
    proc = run(train_cmd(copy, cache), cwd=copy.parent)
    assert_one_line_error(proc, str(copy), "holds checkpoints", "no config.json")
    assert sorted((p.relative_to(copy), p.stat().st_mtime_ns) for p in copy.rglob("*")) == listing


def test_an_unreadable_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous(copy, cache, caplog):
    shutil.rmtree(copy / "checkpoints" / "12" / "state")
    with caplog.at_level("WARNING"):
        results = trainer.train_and_evaluate(tiny_config(cache, **{"train.num_steps": 15}), str(copy),
                                             progress=False)
    assert results["steps"] == 15 and "moved the damaged checkpoint" in caplog.text
    assert (copy / "checkpoints" / "12.damaged").is_dir()
    assert sorted(os.listdir(copy / "checkpoints")) == ["12", "12.damaged", "15"]  # 12 rerun from 9


def test_when_no_checkpoint_is_readable_the_error_is_clear_and_nothing_is_deleted(copy, cache):
    for step in ("9", "12"):
        shutil.rmtree(copy / "checkpoints" / step / "state")
    before = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    proc = run(train_cmd(copy, cache, **{"train.num_steps": 15}), cwd=copy.parent)
    assert_one_line_error(proc, "no checkpoint in", "can be restored", "step 12", "step 9",
                          "nothing was moved or deleted")
    after = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    assert [p for p in before if p not in after] == []


def test_a_meta_record_without_keys_is_filled_with_a_warning(copy, cache, caplog):
    (copy / "checkpoints" / "12" / "meta" / "metadata").write_text("{}")
    with caplog.at_level("WARNING"):
        results = trainer.train_and_evaluate(tiny_config(cache, **{"train.num_steps": 15}), str(copy),
                                             progress=False)
    assert "lacks 'wall_seconds'" in caplog.text and results["steps"] == 15


def test_a_meta_record_of_the_wrong_type_makes_the_checkpoint_damaged(copy, cache, caplog):
    (copy / "checkpoints" / "12" / "meta" / "metadata").write_text('{"wall_seconds": "soon"}')
    with caplog.at_level("WARNING"):
        trainer.train_and_evaluate(tiny_config(cache, **{"train.num_steps": 15}), str(copy), progress=False)
    assert (copy / "checkpoints" / "12.damaged").is_dir()


def test_a_damaged_best_checkpoint_fails_evaluation_clearly_and_latest_still_works(copy):
    best = copy / "best"
    step = next(p for p in os.listdir(best) if p.isdigit())
    shutil.rmtree(best / step / "state")
    evaluate = [sys.executable, "-m", "experiments.evaluate", f"--workdir={copy}"]
    proc = run(evaluate, cwd=copy.parent)
    assert_one_line_error(proc, f"no checkpoint in {best} can be restored", "--checkpoint=latest")
    assert (best / step).is_dir()  # evaluation changes nothing
    latest = run([*evaluate, "--checkpoint=latest"], cwd=copy.parent)
    assert latest.returncode == 0 and json.loads(latest.stdout)["step"] == 12


# ------------------------------------------------------------------------------------------- 7: non-finite


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e39 -> inf, on purpose
def test_an_update_that_makes_parameters_non_finite_is_caught_in_the_step_and_not_applied(cache):
    """Loss and gradients finite, the update not (a learning rate too large for float32): validation now refuses
    such a learning rate, so the step is built by hand with one."""
    import jax
    import optax

    from experiments import data as data_lib

    config = tiny_config(cache)
    spec = data_lib.task_spec(config)
    model = trainer.build_model(config, spec)
    state, _, labels = trainer.create_state(model, config, spec)
    tx = optax.sgd(1e39)  # inf in float32: every updated parameter becomes inf or NaN
    state["opt_state"] = tx.init(state["params"])
    prepare = lambda tokens: trainer.model_inputs(tokens, spec, "embed")  # noqa: E731
    step = jax.jit(trainer.make_train_step(model, tx, config.seed, prepare))
    split = data_lib.load_splits(config)["train"]
    batch = {"inputs": split.inputs[:8], "labels": split.labels[:8]}
    before = jax.tree.map(np.asarray, state["params"])
    new_state, metrics = step(state, batch)
    flags_ = np.asarray(metrics["leaf_finite"])
    names = [f"{jax.tree_util.keystr(p)} (group {g!r})" for p, g in jax.tree_util.tree_flatten_with_path(labels)[0]]
    n = len(names)
    assert flags_[0] and flags_[1:1 + n].all() and not flags_[1 + n:1 + 2 * n].all()  # loss, grads ok; params not
    assert "the update made parameter" in trainer.describe_nonfinite(flags_, names)
    assert int(new_state["step"]) == 1 and float(metrics["skipped"]) == 1.0
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(new_state["params"])):
        assert np.array_equal(old, np.asarray(new))  # not applied


def _corrupt_from(monkeypatch, first_bad_step):
    """From global step `first_bad_step` on, every batch carries an out-of-vocabulary token (a NaN embedding)."""
    from lra.batching import BatchSchedule

    original = BatchSchedule.batch

    def batch(self, split, step):
        out = original(self, split, step)
        if step >= first_bad_step:
            out = {**out, "inputs": out["inputs"].copy()}
            out["inputs"][0, 0] = 1000
        return out

    monkeypatch.setattr(BatchSchedule, "batch", batch)


def test_skip_mode_stops_after_too_many_skips_in_a_row(tmp_path, cache, monkeypatch):
    _corrupt_from(monkeypatch, 4)  # steps 5, 6, 7, ... are non-finite
    config = tiny_config(cache, **{"train.nonfinite": "skip", "train.max_consecutive_skips": 3})
    with pytest.raises(trainer.NonFiniteError, match="step 7: 3 steps in a row were skipped"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"
    for step in os.listdir(tmp_path / "run" / "checkpoints"):
        assert all(np.isfinite(np.asarray(v)).all() for v in _leaves(final_params(tmp_path / "run", int(step))))


def test_a_non_finite_test_metric_is_an_error_not_a_result(tmp_path, cache, monkeypatch):
    from experiments import data as data_lib

    original = data_lib.load_splits

    def poisoned(config):
        splits = original(config)
        splits["test"].inputs[0, 0] = 1000  # a NaN embedding: the test loss is NaN
        return splits

    monkeypatch.setattr(data_lib, "load_splits", poisoned)
    config = tiny_config(cache, **{"train.nonfinite": "skip"})
    with pytest.raises(trainer.NonFiniteError, match="the test of step .* gave non-finite metrics"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "results.json").exists()


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree


def test_a_state_with_a_non_finite_leaf_is_never_saved(copy):
    checkpoints = trainer.Checkpoints(str(copy), keep=2)
    state = {"step": np.int32(20), "params": {"w": np.array([1.0, np.nan], np.float32)}}
    with pytest.raises(trainer.NonFiniteError, match="refusing to save the checkpoint of step 20"):
        checkpoints.save(20, state, dict(trainer.META_DEFAULTS))
    checkpoints.close()
    assert not (copy / "checkpoints" / "20").exists()


# ------------------------------------------------------------------------------- 9, 11: config.json, reruns


def test_a_damaged_config_json_is_one_line_naming_it(copy, cache):
    (copy / "config.json").write_bytes(b"\xff\xfe garbage \x00")
    proc = run(train_cmd(copy, cache), cwd=copy.parent)
    assert_one_line_error(proc, str(copy / "config.json"), "is damaged", "UnicodeDecodeError")


def test_a_finished_run_started_again_prints_its_results_and_duplicates_nothing(copy, finished, cache):
    before = (copy / "metrics.jsonl").read_bytes()
    proc = run(train_cmd(copy, cache), cwd=copy.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (copy / "metrics.jsonl").read_bytes() == before  # no second test record
    results = json.loads((copy / "results.json").read_text())
    assert results == finished[1]  # the same wall time too
    assert f"test accuracy {finished[1]['test_accuracy']:.4f}" in proc.stdout


# ----------------------------------------------------------------------------------------- 10: absurd values


@pytest.mark.parametrize("overrides, fragments, returncode", [
    ({"seed": 2**64}, ("config.seed", "[0, 4294967295]"), 2),
    ({"train.eval_batch_size": 10**9}, ("config.train.eval_batch_size", "65536"), 2),
    ({"model.d_model": 10**6}, ("config.model.d_model",), 2),
    # Within every range, but far beyond this machine: refused by the estimate before anything is compiled.
    ({"model.d_model": 8192, "model.n_layers": 64, "train.batch_size": 256, "train.eval_batch_size": 256,
      "data.listops.num_train": 4096},
     ("memory: the run needs about", "GiB", "train.batch_size"), 1),
])
def test_absurd_values_are_refused_in_one_line_before_compilation(tmp_path, cache, overrides, fragments, returncode):
    workdir = tmp_path / "run"
    started = time.time()
    proc = run(train_cmd(workdir, cache, **overrides), cwd=tmp_path)
    assert_one_line_error(proc, *fragments, returncode=returncode)
    assert time.time() - started < 120 and not workdir.exists()
