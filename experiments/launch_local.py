r"""Runs a multi-process ("multi-host") training on this machine: P local processes of experiments.train.

    python -m experiments.launch_local --num_processes=2 -- --workdir=/tmp/run --config.train.num_steps=300
    python -m experiments.launch_local --num_processes=2 --devices_per_process=2 --logs=/tmp/run/logs \
        -- --workdir=/tmp/run                                     # 4 global CPU devices over 2 processes

Everything after `--` is passed to every process unchanged. Process i also gets
`--coordinator_address=127.0.0.1:<free port> --num_processes=P --process_id=i`, and the environment
JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process>. This exercises the
multi-host code paths of the trainer -- the global batch assembled from every process's rows, cross-process
collectives (gloo, JAX's default on CPU), writes by process 0 only, orbax checkpoints written by all processes
into one shared --workdir -- without a cluster. It is a test rig, not a fast way to train: the processes share
this machine's cores.

Logs: with --logs=DIR (log_dir= in launch()), process i writes to DIR/process_<i>.out and .err; otherwise
to this terminal.
Failures never hang: when one process fails, the others get --grace seconds to exit, then are killed (they could
otherwise wait in a collective forever), and all of them are killed after --timeout seconds. SIGTERM / SIGINT
sent to the launcher are forwarded to every process (the trainer then saves a checkpoint and stops; the same
command resumes). Exit status: 0 when every process succeeded, else the first error exit code, else 128 + s for
a process killed by signal s, and 124 after --timeout.

The free port is found by binding port 0 and releasing it; another program could take it in between, in which
case process 0 fails to start its coordinator and the launch fails (rerun it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_POLL_SECONDS = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def process_env(devices_per_process: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one process: CPU backend with `devices_per_process` devices, other settings kept."""
    env = dict(os.environ if base is None else base)
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join([*kept, f"{_DEVICE_COUNT_FLAG}={devices_per_process}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _kill(procs: Sequence[subprocess.Popen]) -> None:
    """SIGKILL each process we started that is still running, with everything it started (its own session)."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()


@contextlib.contextmanager
def _forward_signals(procs: list[subprocess.Popen]):
    """While the processes run, SIGTERM / SIGINT to this process are passed on to them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launch(train_args: Sequence[str], num_processes: int, *, devices_per_process: int = 1,
           timeout: float | None = None, grace: float = 10.0, log_dir: str | None = None,
           env: Mapping[str, str] | None = None, module: str = "experiments.train") -> list[int]:
    """Starts `num_processes` local processes of `python -m module`, waits for them and returns their exit codes.

    Args:
      train_args: flags given to every process (e.g. --workdir and --config.* overrides); the multi-host flags
        --coordinator_address, --num_processes and --process_id are added here and must not be in it.
      num_processes: P >= 1.
      devices_per_process: CPU devices of each process (P * devices_per_process global devices).
      timeout: seconds after which every process still running is killed and TimeoutError raised; None waits.
      grace: once a process has exited non-zero, seconds the others get to exit by themselves (e.g. all stopping
        after a SIGTERM, exit code 143) before they are killed.
      log_dir: where process i writes process_<i>.out / .err (created); None inherits this process's streams.
      env: the environment to start from (default os.environ); JAX_PLATFORMS and XLA_FLAGS are set on top.
      module: the entry point to run (anything taking the three multi-host flags).

    Returns:
      exit codes in process order (negative -s for a process killed by signal s, as subprocess reports it).
      `grace` seconds after one process exits non-zero the others are killed, so their codes are then -9.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes}: expected a positive number of processes")
    if devices_per_process < 1:
        raise ValueError(f"devices_per_process={devices_per_process}: expected a positive number of devices")
    reserved = [a for a in train_args
                if a.split("=", 1)[0].lstrip("-") in ("coordinator_address", "num_processes", "process_id")]
    if reserved:
        raise ValueError(f"train_args must not contain the multi-host flags {reserved}: launch() sets them")
    address = f"127.0.0.1:{free_port()}"
    child_env = process_env(devices_per_process, env)
    if log_dir is not None:
        os.makedirs(log_dir, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    kill_at = None  # set when a process fails
    procs: list[subprocess.Popen] = []
    with contextlib.ExitStack() as files, _forward_signals(procs):
        try:
            for index in range(num_processes):
                streams = {}
                if log_dir is not None:
                    stem = os.path.join(log_dir, f"process_{index}")
                    streams = {"stdout": files.enter_context(open(stem + ".out", "w")),
                               "stderr": files.enter_context(open(stem + ".err", "w"))}
                cmd = [sys.executable, "-m", module, *train_args, f"--coordinator_address={address}",
                       f"--num_processes={num_processes}", f"--process_id={index}"]
                # A session of its own, so that killing it also kills anything it started (data workers).
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=child_env, start_new_session=True, **streams))
            while True:
                codes = [p.poll() for p in procs]  # a list, not a generator: every process must be polled
                if all(code is not None for code in codes):
                    break
                if kill_at is None and any(code not in (None, 0) for code in codes):
                    kill_at = time.monotonic() + grace  # the others may wait for it in a collective forever
                if kill_at is not None and time.monotonic() > kill_at:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{num_processes} processes of {module} still running after {timeout} s; killed them"
                        + (f" (logs in {log_dir})" if log_dir else ""))
                time.sleep(_POLL_SECONDS)
        finally:
            _kill(procs)
    return [p.returncode for p in procs]


def exit_status(codes: Sequence[int]) -> int:
    """Shell exit status of a launch: 0 if every code is 0, else the first positive code (an error exit), else
    128 + s for the first process killed by signal s (the launcher kills the survivors of a failure with SIGKILL,
    so an error exit is the cause and is preferred)."""
    for code in codes:
        if code > 0:
            return code
    return next((128 - code for code in codes if code < 0), 0)


def main(argv: list[str]) -> None:
    """The entry point: launches the processes and exits with their combined status."""
    values = flags.FLAGS
    try:
        codes = launch(argv[1:], values.num_processes, devices_per_process=values.devices_per_process,
                       timeout=values.timeout, grace=values.grace, log_dir=values.logs)
    except TimeoutError as error:
        print(error, file=sys.stderr)
        sys.exit(124)  # as timeout(1) does
    print(f"exit codes: {codes}", file=sys.stderr)
    sys.exit(exit_status(codes))


if __name__ == "__main__":
    # Defined here, not at import: experiments.train defines --num_processes too, and tests import this module.
    flags.DEFINE_integer("num_processes", 2, "Number of local processes.")
    flags.DEFINE_integer("devices_per_process", 1, "CPU devices per process.")
    flags.DEFINE_float("timeout", None, "Kill every process after this many seconds.")
    flags.DEFINE_float("grace", 10.0, "Seconds the other processes get to exit after one failed.")
    flags.DEFINE_string("logs", None, "Write process_<i>.out / .err into this directory instead of the terminal.")
    app.run(main)
