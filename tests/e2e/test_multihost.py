"""Multi-host training on one machine: 2 local processes of experiments.train (CPU, gloo collectives).

The processes share one --workdir, as hosts of a cluster share storage: process 0 alone writes metrics and
results, all processes write their shards of every orbax checkpoint into the same directory. The 2-process run
must train exactly as the 1-process run does (same global batches, same loss).
"""

import json
import os
import signal
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import launch_local
from tests.e2e.test_train import run_train, tiny_overrides

TIMEOUT = 180  # seconds for any one launch: 3x what a loaded machine needs, and the test can never hang
STEPS = {"train.num_steps": 2, "train.eval_every": 2, "train.checkpoint_every": 1, "optim.warmup_steps": 1}


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _first_step_loss(workdir):
    return next(r["loss"] for r in _records(workdir) if r["split"] == "train" and r["step"] == 1)


def _flatten(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _launch_or_fail(args, log_dir, **options):
    """launch_local.launch of 2 processes; on a timeout, fails with the end of each process's log."""
    try:
        return launch_local.launch(args, 2, log_dir=str(log_dir), **options)
    except TimeoutError as error:
        tails = "\n".join(f"--- process {i}:\n" + (log_dir / f"process_{i}.err").read_text()[-2000:]
                          for i in range(2))
        pytest.fail(f"{error}\n{tails}")


def _launch(tmp_path, name, cache, devices_per_process, **overrides):
    """Runs 2 processes on workdir tmp_path/name; asserts they succeed and returns (workdir, stdout, stderr)."""
    workdir, logs = tmp_path / name, tmp_path / f"{name}_logs"
    args = [f"--workdir={workdir}", *tiny_overrides(cache, **{**STEPS, **overrides})]
    codes = _launch_or_fail(args, logs, devices_per_process=devices_per_process, timeout=TIMEOUT)
    out = [(logs / f"process_{i}.out").read_text() for i in range(2)]
    err = [(logs / f"process_{i}.err").read_text() for i in range(2)]
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(e[-3000:] for e in err)
    return workdir, out, err


def _restore_state(workdir, step, like=None):
    """The train state of a checkpoint, as arrays on this process's first device.

    A checkpoint written by another topology (2 processes) restores only onto a target tree saying where its
    arrays go; `like` (a state restored from a 1-process checkpoint) provides the shapes and dtypes.
    """
    checkpointer = ocp.StandardCheckpointer()
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    if like is None:
        return checkpointer.restore(path)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return checkpointer.restore(path, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like))


def _single_process_reference(tmp_path, cache):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    return run_train(tmp_path / "single", cache, env=env, **STEPS)


def _finish(proc):
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]


def _check_against_single(workdir, single, num_devices):
    results = json.loads((workdir / "results.json").read_text())
    expected = json.loads((single / "results.json").read_text())
    assert results["num_processes"] == 2 and results["num_devices"] == num_devices and results["steps"] == 2
    assert abs(_first_step_loss(workdir) - _first_step_loss(single)) < 1e-5
    # Evaluation (padded last batch, sums over the global batch) and the best-checkpoint restore agree too.
    assert abs(results["test_loss"] - expected["test_loss"]) < 1e-5
    assert results["test_accuracy"] == expected["test_accuracy"]
    # Checkpoints written by both processes into one directory are complete: every kept step restores (here,
    # in a third, single process) to the state (parameters, optimiser state, step) the 1-process run reached.
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert steps == [1, 2]
    reference_state = _restore_state(single, 2)
    reference, actual = _flatten(reference_state), _flatten(_restore_state(workdir, 2, like=reference_state))
    assert actual.keys() == reference.keys() and len(reference) > 20
    for name in reference:
        # Relative to the leaf's scale: Adam's second moments are ~1e-6, where a fixed atol would test nothing.
        # The 2-device gradient is a sum of two partial sums, so agreement is to rounding, not bitwise.
        scale = np.abs(reference[name]).max()
        assert np.abs(actual[name] - reference[name]).max() <= 1e-5 * scale, name


def test_two_processes_train_like_one(tmp_path):
    cache = str(tmp_path / "cache")
    # The 1-process reference runs alongside the 2-process run: the test takes the time of the slower one.
    single = _single_process_reference(tmp_path, cache)
    try:
        workdir, out, err = _launch(tmp_path, "two", cache, devices_per_process=1)
    finally:
        _finish(single)
    assert "process 0 of 2, 1 local / 2 global devices" in err[0]
    assert "process 1 of 2, 1 local / 2 global devices" in err[1]
    _check_against_single(workdir, tmp_path / "single", num_devices=2)
    # Only process 0 writes: one record per step in metrics.jsonl, one results.json, results printed once.
    records = _records(workdir)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    assert [r["split"] for r in records if r["split"] != "train"] == ["val", "test"]
    assert "results in" in out[0] and "results in" not in out[1]
    assert sorted(name for name in os.listdir(workdir) if "result" in name) == ["results.json"]


@pytest.mark.slow
def test_two_processes_of_two_devices_train_like_one_and_resume(tmp_path):
    cache = str(tmp_path / "cache")
    single = _single_process_reference(tmp_path, cache)
    try:
        workdir, _, err = _launch(tmp_path, "four", cache, devices_per_process=2)
    finally:
        _finish(single)
    assert "process 1 of 2, 2 local / 4 global devices" in err[1]
    _check_against_single(workdir, tmp_path / "single", num_devices=4)
    # Restarting the finished run restores the shared checkpoint in both processes and trains no further.
    before = json.loads((workdir / "results.json").read_text())
    _, _, err = _launch(tmp_path, "four", cache, devices_per_process=2)
    assert all("resumed from the checkpoint at step 2" in e for e in err)
    after = json.loads((workdir / "results.json").read_text())
    assert after["test_loss"] == before["test_loss"] and after["steps"] == 2


def _pid_of(workdir, process_id):
    """The pid of the launched process `process_id` training in `workdir` (found by its command line)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if f"--workdir={workdir}" in argv and f"--process_id={process_id}" in argv:
                return int(entry)
    raise AssertionError(f"no process {process_id} training in {workdir}")


@pytest.mark.slow
def test_sigterm_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    """Hosts of a cluster get SIGTERM at different moments; all must stop after one step, or they deadlock."""
    cache, workdir, logs = str(tmp_path / "cache"), tmp_path / "run", tmp_path / "logs"
    steps = {"train.num_steps": 100000, "train.checkpoint_every": 50, "train.eval_every": 100000,
             "train.log_every": 50}
    args = [f"--workdir={workdir}", *tiny_overrides(cache, **steps)]
    outcome = {}

    def run():
        try:
            outcome["codes"] = launch_local.launch(args, 2, timeout=TIMEOUT, log_dir=str(logs))
        except TimeoutError as error:  # the processes deadlocked and were killed
            outcome["codes"] = str(error)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (workdir / "checkpoints" / "50").is_dir():
            assert runner.is_alive() and time.monotonic() < deadline, "no checkpoint at step 50"
            time.sleep(0.05)
        os.kill(_pid_of(workdir, 1), signal.SIGTERM)  # process 0 gets no signal at all
    finally:
        runner.join()  # launch() kills both processes at its timeout at the latest
    err = [(logs / f"process_{i}.err").read_text() for i in range(2)]
    assert outcome.get("codes") == [128 + signal.SIGTERM] * 2, "\n".join(e[-3000:] for e in err)
    stopped = [int(e.split("stopped by SIGTERM at step ")[1].split(";")[0]) for e in err]
    assert stopped[0] == stopped[1] and (workdir / "checkpoints" / str(stopped[0])).is_dir()


CHECKPOINT_STRESS = """
import os, sys
import jax
import numpy as np
flag = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
jax.distributed.initialize(flag["coordinator_address"], int(flag["num_processes"]), int(flag["process_id"]))
from experiments import trainer
state = trainer.DataParallel().replicate({"step": np.int32(0), "params": {"w": np.ones((64, 64), np.float32)}})
checkpoints = trainer.Checkpoints(os.environ["STRESS_WORKDIR"], keep=3)
for step in range(1, 11):
    checkpoints.save_best(step, state, {"step": step})
    checkpoints.save(step, state, {"step": step})
checkpoints.wait()
checkpoints.close()
print("saved", flush=True)
"""


def test_checkpoint_managers_save_the_same_step_at_once_in_two_processes(tmp_path):
    """The best and latest managers both save step s whenever validation at s improves (in the runs above: s=2).

    Orbax names its cross-process barriers by step, so two managers without distinct barrier prefixes collide
    ("Barrier _async_commit_complete.2 is already ongoing") and the processes hang; here, without a model to
    compile, the collision is near certain in 10 steps.
    """
    (tmp_path / "checkpoint_stress.py").write_text(CHECKPOINT_STRESS)
    env = {**os.environ, "STRESS_WORKDIR": str(tmp_path / "run"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    logs = tmp_path / "logs"
    codes = _launch_or_fail([], logs, timeout=90, env=env, module="checkpoint_stress")
    err = [(logs / f"process_{i}.err").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(e[-3000:] for e in err)
    assert all("saved" in (logs / f"process_{i}.out").read_text() for i in range(2))
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["10", "8", "9"]
    assert os.listdir(tmp_path / "run" / "best") == ["10"]


STAND_IN = """
import os, sys, time
flag = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
index, count = int(flag["process_id"]), int(flag["num_processes"])
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, f"pid_{index}.tmp"), "w") as f:
    f.write(str(os.getpid()))
os.replace(os.path.join(here, f"pid_{index}.tmp"), os.path.join(here, f"pid_{index}"))
if index == int(os.environ["FAIL_INDEX"]):
    # Fail only once every process has started, so that the test knows all the pids to check.
    while not all(os.path.exists(os.path.join(here, f"pid_{i}")) for i in range(count)):
        time.sleep(0.01)
    sys.exit(3)
time.sleep(600)
"""


def _stand_in(tmp_path, fail_index):
    """A fake trainer module: process `fail_index` exits with code 3, the others sleep (as in a collective)."""
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    return {**os.environ, "FAIL_INDEX": str(fail_index),
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def _assert_gone(tmp_path, num_processes):
    for index in range(num_processes):
        pid = int((tmp_path / f"pid_{index}").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_failing_process_does_not_leave_the_others_waiting(tmp_path):
    env = _stand_in(tmp_path, fail_index=1)
    start = time.monotonic()
    codes = launch_local.launch([], 3, timeout=TIMEOUT, grace=1.0, env=env, module="stand_in")
    assert time.monotonic() - start < 30
    assert codes == [-signal.SIGKILL, 3, -signal.SIGKILL]
    assert launch_local.exit_status(codes) == 3
    _assert_gone(tmp_path, 3)


def test_launcher_times_out_and_kills_every_process(tmp_path):
    env = _stand_in(tmp_path, fail_index=-1)
    with pytest.raises(TimeoutError, match="still running after 5"):  # long enough for both to start
        launch_local.launch([], 2, timeout=5.0, env=env, module="stand_in")
    _assert_gone(tmp_path, 2)


def test_launcher_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_processes=0"):
        launch_local.launch([], 0)
    with pytest.raises(ValueError, match="multi-host flags"):
        launch_local.launch(["--process_id=3"], 2)
    assert launch_local.exit_status([0, 0]) == 0 and launch_local.exit_status([-9, 2, -9]) == 2
    assert launch_local.exit_status([0, -15]) == 128 + 15


def test_process_env_sets_the_device_count_once():
    env = launch_local.process_env(3, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1"})
    assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=3"]
    assert env["JAX_PLATFORMS"] == "cpu"
