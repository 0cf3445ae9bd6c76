"""What a new user meets, through the real entry points (subprocesses where exit codes and output are the point).

The main command from any directory with a relative workdir, checkpoint-save failures, failed starts that must
not block the corrected retry, remote workdirs without their extra, packaged config names, --list and --help,
one-line errors for every kind of flag mistake, experiments.evaluate, extending a finished run, and progress
when the trainer is called from Python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments import trainer
from tests.e2e.test_train import tiny_config, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ERROR_LINE = re.compile(r"^(Traceback|E\d{4} |F\d{4} )", re.MULTILINE)


def train_cmd(*args):
    return [sys.executable, "-m", "experiments.train", *args]


def run(cmd, cwd, timeout=300, **popen):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **popen)


def assert_one_line_error(proc, *fragments, returncode=None, stderr=None, library_log_allowed=False):
    """The process failed (with `returncode` if given) and printed exactly one "error: ..." line holding each of
    `fragments`, and no traceback (unless a library logged one while reporting the fault itself)."""
    stderr = proc.stderr if stderr is None else stderr
    assert proc.returncode != 0 if returncode is None else proc.returncode == returncode, (proc.returncode,
                                                                                          stderr[-2000:])
    if not library_log_allowed:
        assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


# ------------------------------------------------------------------------------------------- the main command


@pytest.mark.slow  # the 10-minute test budget: CI runs the README's main command, whose default workdir is relative
def test_relative_workdir_from_another_directory_is_made_absolute_and_the_run_finishes(tmp_path, cache):
    """The README's main command failed on a fresh clone: orbax refused the relative default workdir."""
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    proc = run(train_cmd("--workdir=runs/first", *tiny_overrides(cache)), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    workdir = elsewhere / "runs" / "first"
    assert f"workdir {workdir}" in proc.stdout  # printed, absolute
    assert not ERROR_LINE.search(proc.stderr), ERROR_LINE.search(proc.stderr)
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == 12 and sorted(os.listdir(workdir / "checkpoints")) == ["12", "9"]
    assert json.loads((workdir / "status.json").read_text())["state"] == "finished"
    saved = json.loads((workdir / "config.json").read_text())  # the resolved config is saved
    assert saved["train"]["num_steps"] == 12 and saved["model"]["mixer"] == "lru"
    assert "config (saved as config.json there)" in proc.stderr and "num_steps: 12" in proc.stderr  # and logged


def test_a_failing_checkpoint_save_stops_the_run_at_once_and_keeps_the_last_good_one(tmp_path, cache):
    """The workdir's checkpoints/ becomes unwritable mid-run (chattr +i: even root cannot write there)."""
    if shutil.which("chattr") is None:
        pytest.fail("chattr (e2fsprogs) is needed to make a directory unwritable for root")
    workdir = tmp_path / "run"
    steps = {"train.num_steps": 200, "train.checkpoint_every": 40, "train.eval_every": 40, "train.log_every": 10}
    proc = subprocess.Popen(train_cmd(f"--workdir={workdir}", *tiny_overrides(cache, **steps)), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = workdir / "checkpoints"
    try:
        deadline = time.time() + 240
        while not (checkpoints / "40").is_dir():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGSTOP)
        locked = subprocess.run(["chattr", "+i", str(checkpoints)], capture_output=True, text=True)
        proc.send_signal(signal.SIGCONT)
        if locked.returncode != 0:
            pytest.fail(f"chattr +i failed here ({locked.stderr.strip()}); the test needs root on ext4")
        _, err = proc.communicate(timeout=240)
    finally:
        subprocess.run(["chattr", "-i", str(checkpoints)], capture_output=True)
        if proc.poll() is None:
            proc.kill()
    # orbax logs the PermissionError it met (with its traceback); the run adds one line and stops. The lock
    # lands after the save of step 40 at the earliest (later if the process was quick), so read which it was.
    kept = sorted(int(name) for name in os.listdir(checkpoints))
    assert kept and all(name.isdigit() for name in os.listdir(checkpoints))  # nothing half-written left behind
    last = kept[-1]
    assert_one_line_error(proc, f"saving the checkpoint of step {last + 40}",
                          f"the last good checkpoint (step {last}) is kept", stderr=err, library_log_allowed=True)
    assert "PermissionError" in err
    assert not (workdir / "results.json").exists()
    assert json.loads((workdir / "status.json").read_text())["state"] == "failed"
    train_steps = [json.loads(r)["step"] for r in open(workdir / "metrics.jsonl") if '"train"' in r]
    assert max(train_steps) < last + 80, "the run went on after the failed save"
    # The same command resumes from the kept checkpoint and finishes.
    again = run(train_cmd(f"--workdir={workdir}", *tiny_overrides(cache, **steps)), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from the checkpoint at step {last}" in again.stderr


# --------------------------------------------------------------------------------------------- failed starts


def test_a_data_error_fails_before_anything_is_written_and_the_fix_then_runs(tmp_path, cache):
    workdir = tmp_path / "run"
    missing = tmp_path / "no_such_dir"
    proc = run(train_cmd(f"--workdir={workdir}", *tiny_overrides(cache, **{"data.source": "files",
                                                                         "data.data_dir": str(missing)})),
               cwd=tmp_path)
    assert_one_line_error(proc, str(missing), "lra.download")
    assert not workdir.exists(), "a failed start wrote into the workdir"
    fixed = run(train_cmd(f"--workdir={workdir}", *tiny_overrides(cache)), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-3000:]


def test_a_config_json_without_checkpoints_is_replaced_by_the_new_config(tmp_path, cache, caplog):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"task": "listops", "model": {"d_model": 999}}))
    with caplog.at_level("INFO"):
        trainer.check_and_save_config(tiny_config(cache), str(workdir))
    assert "saved no checkpoint; this run's config replaces it" in caplog.text
    assert json.loads((workdir / "config.json").read_text())["model"]["d_model"] == 16
    # With a checkpoint, a different model is still refused, naming the key.
    (workdir / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(trainer.ConfigMismatchError, match=r"model\.d_model: saved 16, now 24"):
        trainer.check_and_save_config(tiny_config(cache, **{"model.d_model": 24}), str(workdir))


def test_a_remote_workdir_without_its_extra_is_one_line_and_creates_nothing(tmp_path):
    import importlib.util

    scheme = "gs" if importlib.util.find_spec("gcsfs") is None else "s3"
    if importlib.util.find_spec({"gs": "gcsfs", "s3": "s3fs"}[scheme]) is not None:
        pytest.fail("both gcsfs and s3fs are installed: no backend is missing to test this with")
    proc = run(train_cmd(f"--workdir={scheme}://bucket/runs/a"), cwd=tmp_path)
    assert_one_line_error(proc, f"--workdir={scheme}://bucket/runs/a", "pip install", returncode=2)
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # no local "gs:" directory


# ------------------------------------------------------------------------------------------------- discovery


def test_list_prints_tasks_mixers_and_variants_and_help_mentions_it(tmp_path):
    listing = run(train_cmd("--list"), cwd=tmp_path, timeout=120)
    assert listing.returncode == 0, listing.stderr[-2000:]
    for name in ("listops", "pathx", "text", "lru", "s5", "softmax", "listops:s5-cpu"):
        assert name in listing.stdout, name
    assert "MISSING" not in listing.stdout and "object at 0x" not in listing.stdout
    helped = run(train_cmd("--help"), cwd=tmp_path, timeout=120)
    assert "--list" in helped.stdout + helped.stderr


def test_packaged_config_names_and_repository_paths_resolve_from_any_directory(tmp_path):
    # The bare name picks the packaged file: its s5 section exists, so the typo below is found in it.
    proc = run(train_cmd("--config=listops:s5-cpu", "--config.model.s5.state_sise=8"), cwd=tmp_path)
    assert_one_line_error(proc, "state_sise", 'did you mean "state_size"', returncode=2)
    # A repository-relative path works from another directory too.
    proc = run(train_cmd("--config=experiments/configs/listops.py:s5-cpu", "--config.model.s5.state_sise=8"),
               cwd=tmp_path)
    assert_one_line_error(proc, 'did you mean "state_size"', returncode=2)
    proc = run(train_cmd("--config=listop"), cwd=tmp_path)
    assert_one_line_error(proc, "--config=listop", 'did you mean "listops"', returncode=2)
    # A mixer without a published recipe has no accelerator variant (it used to get the Transformer's silently).
    proc = run(train_cmd("--config=listops:nosuch"), cwd=tmp_path)
    assert_one_line_error(proc, "'nosuch' has no published settings", "'nosuch-cpu'", returncode=2)


@pytest.mark.parametrize("flag, fragments", [
    ("--config.model.d_modl=32", ("d_modl", 'did you mean "d_model"')),
    ("--config.model.lru.r_maxx=0.9", ("r_maxx", 'did you mean "r_max"')),
    ("--config.model.mixer=lruu", ("lruu", 'did you mean "lru"')),
    ("--config.model.norm=batc", ("batc", 'did you mean "batch"')),
    ("--config.train.num_steps=abc", ("num_steps", "abc")),
    ("--config.optim.warmup_steps=5000", ("warmup_steps", "num_steps")),
    ("--num_processes=0", ("num_processes",)),
    ("--process_id=3", ("process_id",)),
    ("--coordinator_address=nohostport", ("coordinator_address", "host:port")),
    ("--workdir=", ("--workdir",)),
    ("--workdir=ftp://x/y", ("ftp://",)),
    ("--no_such_flag=1", ("no_such_flag",)),
])
def test_every_flag_mistake_is_one_line_without_a_traceback(tmp_path, flag, fragments):
    proc = run(train_cmd(flag), cwd=tmp_path, timeout=120)
    assert_one_line_error(proc, *fragments, returncode=2)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------- run lifecycle


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("finished") / "run"
    results = trainer.train_and_evaluate(tiny_config(cache), str(workdir), progress=False)
    return workdir, results


def evaluate_cmd(*args):
    return [sys.executable, "-m", "experiments.evaluate", *args]


def test_evaluate_prints_the_results_of_the_best_checkpoint(finished, tmp_path):
    workdir, results = finished
    proc = run(evaluate_cmd(f"--workdir={workdir}"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["split"] == "test" and metrics["checkpoint"] == "best"
    assert metrics["step"] == results["best_step"]
    assert metrics["accuracy"] == results["test_accuracy"] and metrics["loss"] == pytest.approx(results["test_loss"])
    val = json.loads(run(evaluate_cmd(f"--workdir={workdir}", "--split=validation"), cwd=tmp_path).stdout)
    assert val["accuracy"] == results["val_accuracy"]
    step9 = run(evaluate_cmd(f"--workdir={workdir}", "--checkpoint=9", "--split=validation"), cwd=tmp_path)
    assert json.loads(step9.stdout)["step"] == 9
    missing = run(evaluate_cmd(f"--workdir={workdir}", "--checkpoint=4"), cwd=tmp_path)
    assert_one_line_error(missing, "no checkpoint of step 4", "[9, 12]")
    nothing = run(evaluate_cmd(f"--workdir={tmp_path / 'nothing'}"), cwd=tmp_path)
    assert_one_line_error(nothing, "holds no config.json")
    bad_split = run(evaluate_cmd(f"--workdir={workdir}", "--split=tset"), cwd=tmp_path)
    assert_one_line_error(bad_split, "--split=tset", "test|validation|train", returncode=2)
    bad_checkpoint = run(evaluate_cmd(f"--workdir={workdir}", "--checkpoint=bets"), cwd=tmp_path)
    assert_one_line_error(bad_checkpoint, "--checkpoint=bets", "best, latest or a step number")


def test_raising_num_steps_extends_a_finished_run_and_lowering_it_is_refused(finished, tmp_path, cache):
    workdir, results = finished
    extended = tmp_path / "extended"
    shutil.copytree(workdir, extended)
    more = trainer.train_and_evaluate(tiny_config(cache, **{"train.num_steps": 18}), str(extended), progress=False)
    assert more["steps"] == 18
    records = [json.loads(line) for line in open(extended / "metrics.jsonl")]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == list(range(1, 19))  # 1-12 from the first run, 13-18 from the extension
    with pytest.raises(trainer.ConfigMismatchError, match="below the newest checkpoint"):
        trainer.train_and_evaluate(tiny_config(cache, **{"train.num_steps": 6}), str(extended), progress=False)


def test_training_from_python_shows_progress_without_absl(tmp_path, cache, capfd):
    trainer.train_and_evaluate(tiny_config(cache), str(tmp_path / "run"))
    err = capfd.readouterr().err
    assert re.search(r"train: 100%.*12/12.*(step/s|s/step)", err), err[-2000:]  # tqdm inverts slow rates
    assert "validation: accuracy" in err and "test accuracy" in err
