"""End-to-end checks of experiments/train.py: results, resume after SIGKILL, multi-device, config guards."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import run_checks, trainer
from experiments.configs import listops as listops_config
from lra.batching import BatchSchedule

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_overrides(cache_dir, **extra):
    """Command-line overrides for a model and dataset small enough to train in seconds."""
    flags = {
        "data.cache_dir": cache_dir, "data.listops.num_train": 256, "data.listops.num_val": 64,
        "data.listops.num_test": 64, "data.listops.max_length": 32, "data.listops.max_depth": 3,
        "data.seq_len": 32, "model.d_model": 16, "model.n_layers": 1, "model.lru.d_state": 8,
        "train.batch_size": 8, "train.eval_batch_size": 16, "train.num_steps": 12, "train.eval_every": 6,
        "train.checkpoint_every": 3, "train.log_every": 1, "optim.warmup_steps": 2,
    }
    flags.update(extra)
    return [f"--config.{k}={v}" for k, v in flags.items()]


def tiny_config(cache_dir, **extra):
    config = listops_config.get_config()
    for flag in tiny_overrides(cache_dir, **extra):
        key, value = flag[len("--config."):].split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = type(node[leaf])(value)
    return config


def run_train(workdir, cache_dir, *extra_flags, env=None, **overrides):
    cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
           *tiny_overrides(cache_dir, **overrides), *extra_flags]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def final_params(workdir, step):
    import orbax.checkpoint as ocp

    restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return restored["params"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny training run shared by the tests that inspect a finished workdir."""
    root = tmp_path_factory.mktemp("finished")
    config = tiny_config(str(root / "cache"))
    results = trainer.train_and_evaluate(config, str(root / "run"))
    return config, root / "run", results


def test_train_writes_results_metrics_and_checkpoints(finished_run):
    config, workdir, results = finished_run
    for key in ("task", "mixer", "steps", "val_accuracy", "test_accuracy", "test_majority_rate", "wall_seconds"):
        assert key in results
    assert results["steps"] == 12 and results["task"] == "listops" and results["mixer"] == "lru"
    assert 0.0 <= results["test_accuracy"] <= 1.0 and 0.0 < results["test_majority_rate"] <= 1.0
    with open(workdir / "results.json") as f:
        assert json.load(f) == results
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 13))
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert all(np.isfinite(r["loss"]) for r in records)
    assert any(name.startswith("events") for name in os.listdir(workdir / "tensorboard"))
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [9, 12]


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path, caplog):
    config, finished, first = finished_run
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    # Starting again on a finished run trains nothing and reproduces the results.
    assert trainer.train_and_evaluate(config, str(workdir))["test_accuracy"] == first["test_accuracy"]
    shutil.rmtree(workdir / "checkpoints" / "12" / "state")  # the newest checkpoint loses its arrays
    with caplog.at_level("WARNING"):
        again = trainer.train_and_evaluate(config, str(workdir))
    assert "checkpoint at step 12" in caplog.text and "cannot be restored" in caplog.text
    assert again["steps"] == 12 and again["test_accuracy"] == first["test_accuracy"]
    # Steps 10-12 rerun exactly: the same batches in the same order give bitwise the parameters of the
    # undamaged run (a test accuracy on 64 examples would not notice a skipped or repeated batch).
    expected, actual = _flatten(final_params(finished, 12)), _flatten(final_params(workdir, 12))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert np.array_equal(expected[name], actual[name]), name  # bitwise


def test_restart_with_a_different_config_names_the_keys(tmp_path):
    cache = str(tmp_path / "cache")
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    trainer.check_and_save_config(tiny_config(cache), workdir)
    os.makedirs(os.path.join(workdir, "checkpoints", "3"))  # without a checkpoint, a new config replaces the old
    with pytest.raises(trainer.ConfigMismatchError, match=r"model\.d_model: saved 16, now 24"):
        trainer.check_and_save_config(tiny_config(cache, **{"model.d_model": 24}), workdir)


def _wait_for_checkpoint(proc, workdir, step, timeout=240):
    deadline = time.time() + timeout
    while not (workdir / "checkpoints" / str(step)).is_dir():
        assert proc.poll() is None, "the run ended before it could be stopped: " + proc.stderr.read()[-3000:]
        assert time.time() < deadline, f"no checkpoint at step {step} appeared"
        time.sleep(0.02)


# Slow (the 10-minute test budget): tests/e2e/test_soak.py's CI soak kills (SIGKILL, SIGTERM) and resumes bitwise.
@pytest.mark.slow
def test_sigkill_and_sigterm_then_restart_match_the_uninterrupted_run(tmp_path):
    cache = str(tmp_path / "cache")
    steps = {"train.num_steps": 60, "train.checkpoint_every": 3, "train.eval_every": 30, "train.log_every": 10}
    reference = run_train(tmp_path / "reference", cache, **steps)
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    workdir = tmp_path / "interrupted"
    victim = run_train(workdir, cache, **steps)
    _wait_for_checkpoint(victim, workdir, 6)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert not (workdir / "results.json").exists(), "the run finished before SIGKILL: the test proves nothing"

    # Restart, then preempt politely: SIGTERM saves the current step and exits with 128 + 15.
    resumed = run_train(workdir, cache, **steps)
    _wait_for_checkpoint(resumed, workdir, 24)
    sent = time.time()
    resumed.send_signal(signal.SIGTERM)
    _, err = resumed.communicate(timeout=60)
    assert time.time() - sent < 30
    assert resumed.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "resumed from the checkpoint at step" in err
    stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert 24 <= stopped_at < 60 and (workdir / "checkpoints" / str(stopped_at)).is_dir()

    finished = run_train(workdir, cache, **steps)
    out, err = finished.communicate(timeout=300)
    assert finished.returncode == 0, err[-3000:]
    assert f"resumed from the checkpoint at step {stopped_at}" in err

    expected, actual = final_params(tmp_path / "reference", 60), final_params(workdir, 60)
    flat_expected, flat_actual = _flatten(expected), _flatten(actual)
    assert flat_expected.keys() == flat_actual.keys()
    for name in flat_expected:
        assert np.array_equal(flat_expected[name], flat_actual[name]), name  # bitwise


def _corrupt_step(monkeypatch, bad_step):
    """From global step `bad_step` on, batches carry an out-of-vocabulary token, whose embedding is NaN."""
    original = BatchSchedule.batch

    def batch(self, split, step):
        out = original(self, split, step)
        if step == bad_step:
            out = {**out, "inputs": out["inputs"].copy()}
            out["inputs"][0, 0] = 1000
        return out

    monkeypatch.setattr(BatchSchedule, "batch", batch)


def test_nonfinite_step_stops_with_the_step_and_parameter_named(tmp_path, monkeypatch):
    _corrupt_step(monkeypatch, bad_step=7)  # the 8th step
    config = tiny_config(str(tmp_path / "cache"))
    with pytest.raises(trainer.NonFiniteError, match=r"step 8: non-finite loss, first non-finite gradient: .*group"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    # The newest checkpoint (step 6) holds finite values only.
    params = _flatten(final_params(tmp_path / "run", 6))
    assert all(np.isfinite(v).all() for v in params.values())


def test_nonfinite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    _corrupt_step(monkeypatch, bad_step=4)
    config = tiny_config(str(tmp_path / "cache"), **{"train.nonfinite": "skip"})
    results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["steps"] == 12 and np.isfinite(results["test_loss"])
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        skipped = {r["step"]: r["skipped"] for r in map(json.loads, f) if r["split"] == "train"}
    assert skipped[5] == 1.0 and sum(skipped.values()) == 1.0
    assert all(np.isfinite(v).all() for v in _flatten(final_params(tmp_path / "run", 12)).values())


def test_unwritable_workdir_fails_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match=r"--workdir=.*is not usable"):
        trainer.train_and_evaluate(tiny_config(str(tmp_path / "cache")), str(blocker / "run"))


def test_full_disk_fails_at_start_naming_the_space_needed(tmp_path, monkeypatch):
    state = {"params": {"w": np.zeros((256, 256), np.float32)}, "step": np.zeros((), np.int32)}
    trainer.check_checkpoint_space(str(tmp_path), state, keep=3, free_bytes=6 * 2**20)  # needs 5 x 0.25 MiB
    with pytest.raises(OSError, match=r"--workdir=.*0\.9 MiB free.*need about 1\.3 MiB"):
        trainer.check_checkpoint_space(str(tmp_path), state, keep=3, free_bytes=int(0.9 * 2**20))
    # In a run: a file system reporting 1 KiB free stops it before data are read or anything is written.
    usage = run_checks.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_checks.shutil, "disk_usage", lambda path: usage._replace(free=1024))
    with pytest.raises(OSError, match=r"--workdir=.*MiB free"):
        trainer.train_and_evaluate(tiny_config(str(tmp_path / "cache")), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "cache").exists()


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
        return out
    return {prefix: np.asarray(tree)}


def _first_step_loss(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return next(r["loss"] for r in map(json.loads, f) if r["split"] == "train" and r["step"] == 1)


def test_four_devices_give_the_same_loss_as_one(tmp_path):
    cache = str(tmp_path / "cache")
    losses = {}
    for devices in (1, 4):
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
        proc = run_train(tmp_path / f"devices{devices}", cache, env=env,
                         **{"train.num_steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2,
                            "optim.warmup_steps": 1})
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(open(tmp_path / f"devices{devices}" / "results.json").read())["num_devices"] == devices
        losses[devices] = _first_step_loss(tmp_path / f"devices{devices}")
    assert abs(losses[1] - losses[4]) < 1e-5, losses


def test_unknown_mixer_and_task_fail_with_a_clear_message(tmp_path):
    with pytest.raises(KeyError, match="unknown mixer 'nonesuch'; registered mixers are: .*lru"):
        trainer.train_and_evaluate(tiny_config(str(tmp_path / "cache"), **{"model.mixer": "nonesuch"}),
                                   str(tmp_path / "a"))
    with pytest.raises(KeyError, match="nonesuch.*listops"):
        trainer.train_and_evaluate(tiny_config(str(tmp_path / "cache"), task="nonesuch"), str(tmp_path / "b"))


def test_unknown_config_key_fails_on_the_command_line(tmp_path):
    proc = run_train(tmp_path / "run", str(tmp_path / "cache"), "--config.model.lru.nonesuch_option=1")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "nonesuch_option" in err, err[-2000:]
