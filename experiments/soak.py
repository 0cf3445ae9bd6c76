r"""Soak test of checkpointing and resume: kill the trainer at random moments, restart it, compare with a clean run.

    python -m experiments.soak --workdir=/tmp/soak --wall_seconds=1800          # half an hour of kills
    python -m experiments.soak --workdir=/tmp/soak --wall_seconds=60 --max_kills=5 --num_steps=60

First an uninterrupted reference run of a tiny ListOps config (experiments.train as a subprocess, in
<workdir>/reference). Then, until --wall_seconds have passed, cycles: each cycle trains the same config in a
fresh <workdir>/cycle_<i>, launching `python -m experiments.train` again and again and stopping each launch in
one of three ways (chosen at random, --seed):

  sigkill_random      SIGKILL at a random moment: during start-up (15%: imports, data, compilation, restore;
                      uniform over the last launch's start-up time) or once a random step of the steps left has
                      been logged, plus a random part of a checkpoint period;
  sigkill_checkpoint  SIGKILL the moment an orbax temporary directory (`*.orbax-checkpoint-tmp*`, a checkpoint
                      being written) appears in checkpoints/ or best/; the k-th write after the launch is aimed
                      at, k random over the writes left, so a cycle still progresses;
  sigterm             SIGTERM at a random moment as for sigkill_random (a preemption): the trainer should save
                      the current step and exit with 128 + 15 within --sigterm_timeout seconds;
  sigkill_rewrite     SIGKILL the moment the trainer's temporary metrics file (`metrics.jsonl.tmp.*`, the
                      rewrite that drops records after the checkpointed step on resume) appears; if none
                      appears before the first step, at a random moment as for sigkill_random.

Besides the kills, faults are injected between launches (--fault_fraction of the launches, one at random):
  torn_line           a partial record appended to metrics.jsonl (a write cut short by a full disk): the next
                      launch must drop it with a warning;
  damaged_checkpoint  the newest complete checkpoint loses its arrays (only when an older one exists): the next
                      launch must move it aside (<step>.damaged) and resume from the older one;
  contention          two launches started at once on the same workdir (a double submission): exactly one must
                      train on, the other must exit non-zero naming the lock's holder.
Every SIGKILL also leaves the workdir's lock behind, which the next launch must take over as stale.

Restarts load the executables the reference run compiled from JAX's persistent compilation cache
(<workdir>/jax_cache; --nocompilation_cache to compile every time), so a restart takes seconds.

A launch is restarted until one finishes (exit 0); the cycle's final state (parameters, BatchNorm statistics,
optimiser state, step), its metrics.jsonl (timings aside) and results.json (wall time aside) are then compared
bitwise with the reference. After the deadline the current cycle is finished without further kills.

A SIGKILL "hit a checkpoint write" when the launch left a temporary directory behind (the write was cut short:
the evidence, not the intent, is counted; orbax creates the directory in its background thread, so a kill
between the start of a save and the directory's creation is not counted). Failures (FAILURE_KINDS): a launch
that exits non-zero by itself or trains from step 0 beside a checkpoint (a failure to resume), a SIGTERM not
honoured with a checkpoint of the stopping step, a launch that does not exit in time, a checkpoint that
restore had to skip as damaged (writes are meant to be atomic), temporary directories left after a cycle, and
a cycle that cannot finish; plus any mismatch with the reference. The report goes to stdout and, as JSON, to
--report (default <workdir>/soak_report.json); the exit status is 0 when there was no failure and every cycle
matched. Launch logs: <workdir>/logs/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_MARKER = ".orbax-checkpoint-tmp"
CHECKPOINT_DIRS = ("checkpoints", "best")
TIMING_KEYS = ("steps_per_second", "wall_seconds")  # the only values allowed to differ from the reference
KINDS = ("sigkill_random", "sigkill_checkpoint", "sigterm", "sigkill_rewrite")
INJECTED = ("torn_line", "damaged_checkpoint", "contention")
# resume: a launch exited non-zero without being stopped, or trained from step 0 beside a checkpoint; sigterm: a
# SIGTERM in the training loop without a checkpoint of the stopping step; hang: a launch did not exit in time;
# damaged_checkpoint: restore skipped an unreadable checkpoint; leftover_tmp: orbax temporary directories left
# after a finished cycle; unfinished: 3 failed launches in a row.
FAILURE_KINDS = ("resume", "sigterm", "hang", "damaged_checkpoint", "leftover_tmp", "unfinished", "torn_line",
                 "lock")
_RESUMED = re.compile(r"resumed from the checkpoint at step (\d+)")
_STOPPED = re.compile(r"stopped by SIGTERM at step (\d+)")
_STEP = re.compile(r"step (\d+)/\d+ loss")
_DAMAGED = re.compile(r"checkpoint at step (\d+) in \S*?checkpoints cannot be restored")
_MOVED = re.compile(r"moved the damaged checkpoint \S*/checkpoints/(\d+) aside")
_TORN = "dropping the damaged last line"
_STALE = "taking over the stale lock"
_BUSY = "is in use by process"
REWRITE_MARKER = "metrics.jsonl.tmp."
STARTUP_SHARE = 0.15  # of the random stops: during start-up (imports, data, compilation, restore)
POLL_SECONDS = 0.005


@dataclasses.dataclass
class SoakOptions:
    """What experiments.soak's flags set (see the module docstring)."""

    workdir: str
    wall_seconds: float = 600.0
    num_steps: int = 200
    checkpoint_every: int = 2
    eval_every: int = 25
    seed: int = 0
    sigterm_fraction: float = 0.25  # of the stops: SIGTERM; the rest are SIGKILLs
    aimed_fraction: float = 0.5  # of the SIGKILLs: aimed at a checkpoint write
    rewrite_fraction: float = 0.2  # of the SIGKILLs not aimed at a checkpoint write: aimed at the metrics rewrite
    fault_fraction: float = 0.3  # of the launches: preceded by an injected fault (INJECTED, one at random)
    max_kills: int = 0  # 0: no limit (the wall time decides)
    max_launches_per_cycle: int = 200  # after that, the cycle's next launch is left to finish
    sigterm_timeout: float = 60.0
    launch_timeout: float = 900.0  # a launch left to finish must do so within this many seconds
    fast_compile: bool = False  # children run with XLA's optimisations off (JAX_DISABLE_MOST_OPTIMIZATIONS)
    compilation_cache: bool = True  # JAX's persistent compilation cache in <workdir>/jax_cache: fast restarts
    extra_flags: tuple[str, ...] = ()  # more --config.* flags for every launch
    report: str = ""


def tiny_flags(options: SoakOptions) -> list[str]:
    """The config of every launch: a 1-layer width-16 LRU on a tiny generated ListOps (as tests/e2e/test_train.py)."""
    overrides = {
        "data.cache_dir": os.path.join(options.workdir, "cache"), "data.listops.num_train": 256,
        "data.listops.num_val": 64, "data.listops.num_test": 64, "data.listops.max_length": 32,
        "data.listops.max_depth": 3, "data.seq_len": 32, "model.d_model": 16, "model.n_layers": 1,
        "model.lru.d_state": 8, "train.batch_size": 8, "train.eval_batch_size": 16,
        "train.num_steps": options.num_steps, "train.eval_every": options.eval_every,
        "train.checkpoint_every": options.checkpoint_every, "train.log_every": 1, "optim.warmup_steps": 2,
    }
    return [f"--config.{k}={v}" for k, v in overrides.items()] + list(options.extra_flags)


def tmp_dirs(workdir: str) -> set[str]:
    """Orbax temporary directories (checkpoints being written, or left by a cut write) under the workdir."""
    found = set()
    for name in CHECKPOINT_DIRS:
        directory = os.path.join(workdir, name)
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        found.update(os.path.join(name, e) for e in entries if TMP_MARKER in e)
    return found


def complete_steps(workdir: str) -> list[int]:
    """The steps of the complete checkpoints in workdir/checkpoints, sorted."""
    directory = os.path.join(workdir, "checkpoints")
    try:
        return sorted(int(e) for e in os.listdir(directory) if e.isdigit())
    except OSError:
        return []


class Launch:
    """One `python -m experiments.train` subprocess with its stdout and stderr in log files.

    `progress()` reads the stderr log as it grows and returns the newest training step logged (0 before the
    first one); `first_step_seconds` is the time from the launch to its first logged step (start-up: imports,
    data, compilation or the compilation cache, restore).
    """

    def __init__(self, workdir: str, flags_: list[str], log_stem: str, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.err_path = log_stem + ".err"
        self.started = time.time()
        self.first_step_seconds: float | None = None
        self._step = 0
        self._offset = 0
        self._partial = ""
        with open(log_stem + ".out", "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *flags_],
                                         cwd=REPO, env=env, stdout=out, stderr=err)

    def alive(self) -> bool:
        """Whether the subprocess is still running."""
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Sends `signum` to the subprocess if it is still running."""
        if self.alive():
            self.proc.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code once the subprocess ends, or None if it still runs after `timeout` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def progress(self) -> int:
        """The newest training step logged so far (see the class docstring)."""
        with open(self.err_path, errors="replace") as f:
            f.seek(self._offset)
            text = f.read()
            self._offset = f.tell()
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            match = _STEP.search(line)
            if match:
                self._step = int(match.group(1))
                if self.first_step_seconds is None:
                    self.first_step_seconds = time.time() - self.started
        return self._step

    def stderr(self) -> str:
        """The whole stderr log so far."""
        with open(self.err_path, errors="replace") as f:
            return f.read()


def child_env(options: SoakOptions) -> dict[str, str]:
    """The environment of every launch: CPU, optionally fast compilation and the shared compilation cache."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    if options.fast_compile:
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
    if options.compilation_cache:  # the reference run compiles; the restarts load its executables
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(options.workdir, "jax_cache")
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


# ---------------------------------------------------------------------------------------------- comparison


def _state_leaves(workdir: str, step: int) -> dict[str, bytes]:
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return {jax.tree_util.keystr(path): np.asarray(leaf).dtype.str + ":" + np.asarray(leaf).tobytes().hex()
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f if line.strip()]


def _results(workdir: str) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return {k: v for k, v in json.load(f).items() if k not in TIMING_KEYS}


def compare(reference: str, workdir: str, step: int) -> dict[str, Any]:
    """Bitwise comparison of the final state, and exact comparison of metrics and results, with the reference."""
    out: dict[str, Any] = {}
    try:
        expected, actual = _state_leaves(reference, step), _state_leaves(workdir, step)
        out["params_match"] = all(actual.get(k) == v for k, v in expected.items() if k.startswith("['params']"))
        out["state_match"] = expected == actual
        out["differing_leaves"] = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    except Exception as error:  # a missing or unreadable final checkpoint is a failure, reported as such
        out.update(params_match=False, state_match=False, error=f"{type(error).__name__}: {error}")
    try:
        out["metrics_match"] = _metrics(reference) == _metrics(workdir)
        out["results_match"] = _results(reference) == _results(workdir)
    except (OSError, ValueError) as error:
        out.update(metrics_match=False, results_match=False, error=f"{type(error).__name__}: {error}")
    return out


# ---------------------------------------------------------------------------------------------------- soak


@dataclasses.dataclass
class Cycle:
    """One cycle: a fresh workdir trained to the end through kills and injected faults, and what happened."""
    workdir: str
    launches: int = 0
    kills: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    hit_checkpoint_write: int = 0
    sigterm_saved: int = 0  # SIGTERMs honoured: checkpoint of the current step, exit 128 + 15
    sigterm_before_handler: int = 0  # SIGTERM during start-up or the final test evaluation: default action
    resumed_from: list[int] = dataclasses.field(default_factory=list)
    failures: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {"kind": FAILURE_KINDS, "message"}

    def fail(self, kind: str, message: str) -> None:
        """Records a failure of this cycle (`kind`: one of FAILURE_KINDS)."""
        self.failures.append({"kind": kind, "message": message})
    damaged_checkpoints_skipped: int = 0
    injected: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(INJECTED, 0))
    hit_metrics_rewrite: int = 0  # sigkill_rewrite kills that landed while the temporary metrics file existed
    torn_lines_dropped: int = 0
    damaged_moved_aside: int = 0
    stale_locks_taken_over: int = 0
    contention_refused: int = 0  # the second of two simultaneous launches exited naming the lock's holder
    pending_damage: list[int] = dataclasses.field(default_factory=list)  # injected, not yet moved aside
    pending_torn: int = 0
    finished: bool = False
    comparison: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    # One record per launch: stop kind (None: left to run), last step logged, exit code, seconds, write cut.
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class Soak:
    """The soak driver: the reference run, then cycles until the wall time is used (see the module docstring)."""
    def __init__(self, options: SoakOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.env = child_env(options)
        self.flags = tiny_flags(options)
        self.logs = os.path.join(options.workdir, "logs")
        self.reference = os.path.join(options.workdir, "reference")
        self.reference_seconds = 0.0
        self.startup_seconds = 0.0  # launch to first logged step: updated from every launch that gets there
        self.step_seconds = 0.0
        self.cycles: list[Cycle] = []
        self.launch_count = 0
        self.deadline = 0.0

    def log(self, message: str) -> None:
        """Prints a timestamped progress line on stdout."""
        print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def _launch(self, workdir: str) -> Launch:
        self.launch_count += 1
        stem = os.path.join(self.logs, f"{self.launch_count:04d}_{os.path.basename(workdir)}")
        return Launch(workdir, self.flags, stem, self.env)

    @property
    def total_kills(self) -> int:
        """Kills of every kind over all cycles so far."""
        return sum(sum(c.kills.values()) for c in self.cycles)

    def may_kill(self) -> bool:
        """Whether another kill is allowed: wall time left and --max_kills (0: no limit) not reached."""
        if time.time() >= self.deadline:
            return False
        return not self.options.max_kills or self.total_kills < self.options.max_kills

    def run_reference(self) -> None:
        """Runs the uninterrupted reference and measures start-up and step times for aiming the kills."""
        start = time.time()
        launch = self._launch(self.reference)
        while launch.alive() and time.time() - start < self.options.launch_timeout:
            launch.progress()
            time.sleep(0.01)
        code = launch.wait(max(self.options.launch_timeout - (time.time() - start), 1.0))
        if code != 0:
            launch.signal(signal.SIGKILL)
            raise RuntimeError(f"the reference run failed (exit {code}); see {launch.err_path}:\n"
                               f"{launch.stderr()[-3000:]}")
        self.reference_seconds = time.time() - start
        launch.progress()
        startup = launch.first_step_seconds or self.reference_seconds
        self.startup_seconds = startup
        self.step_seconds = max(self.reference_seconds - startup, 0.0) / max(self.options.num_steps, 1)
        self.log(f"reference run: {self.reference_seconds:.1f} s ({startup:.1f} s to the first step, then "
                 f"{1e3 * self.step_seconds:.0f} ms per step with checkpoints and validation)")

    def run(self) -> dict[str, Any]:
        """Runs the reference and the cycles; returns the report (also written as JSON)."""
        options = self.options
        # A previous soak's runs and logs go (its compilation cache and generated data stay).
        for stale in [self.reference, self.logs] + [os.path.join(options.workdir, d)
                                                    for d in os.listdir(options.workdir) if d.startswith("cycle_")]:
            shutil.rmtree(stale, ignore_errors=True)
        os.makedirs(self.logs)
        started = time.time()
        self.run_reference()
        self.deadline = started + options.wall_seconds
        while self.may_kill():
            self.run_cycle(os.path.join(options.workdir, f"cycle_{len(self.cycles)}"))
        report = self.report(time.time() - started)
        path = options.report or os.path.join(options.workdir, "soak_report.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
        report["report_path"] = path
        return report

    def run_cycle(self, workdir: str) -> None:
        """Trains one fresh workdir to the end through kills and faults, then compares it with the reference."""
        cycle = Cycle(workdir)
        self.cycles.append(cycle)
        start = time.time()
        consecutive_failures = 0
        while not cycle.finished and consecutive_failures < 3:
            kill = self.may_kill() and cycle.launches < self.options.max_launches_per_cycle
            failed = self.one_launch(cycle, kill)
            consecutive_failures = consecutive_failures + 1 if failed else 0
        leftovers = tmp_dirs(workdir)
        if leftovers:
            cycle.fail("leftover_tmp", f"temporary directories left after the cycle: {sorted(leftovers)}")
        if cycle.finished:
            cycle.comparison = compare(self.reference, workdir, self.options.num_steps)
        else:
            cycle.fail("unfinished", "the cycle did not finish (3 launches in a row failed)")
        cycle.seconds = time.time() - start
        match = cycle.comparison.get("state_match") and cycle.comparison.get("metrics_match")
        self.log(f"{os.path.basename(workdir)}: {cycle.launches} launches, kills {cycle.kills}, "
                 f"{cycle.hit_checkpoint_write} hit a checkpoint write, resumed from {cycle.resumed_from}; "
                 f"{'MATCHES' if match else 'DIFFERS FROM'} the reference"
                 + (f"; failures: {cycle.failures}" if cycle.failures else ""))

    def _stop_at_random_moment(self, launch: Launch, cycle: Cycle, signum: int) -> bool:
        """Sends `signum` during start-up (STARTUP_SHARE of the time, at a uniform moment of it) or once a random
        step of the steps left has been logged, plus a random part of a checkpoint period. True if sent."""
        resume = (complete_steps(cycle.workdir) or [0])[-1]
        if self.rng.random() < STARTUP_SHARE or resume >= self.options.num_steps:
            if launch.wait(self.rng.uniform(0.0, self.startup_seconds)) is None:
                launch.signal(signum)
                return True
            return False
        target = self.rng.randint(resume + 1, self.options.num_steps)
        extra = self.rng.uniform(0.0, self.step_seconds * self.options.checkpoint_every)
        deadline = time.time() + self.options.launch_timeout
        while launch.alive() and time.time() < deadline:
            if launch.progress() >= target:
                if launch.wait(extra) is None:
                    launch.signal(signum)
                    return True
                return False
            time.sleep(POLL_SECONDS)
        return False

    def _kill_during_checkpoint_write(self, launch: Launch, cycle: Cycle, before_tmp: set[str]) -> bool:
        """SIGKILL as soon as the k-th new orbax temporary directory of this launch appears (k uniform over the
        checkpoint writes left, so that a cycle still progresses). True if sent."""
        resume = (complete_steps(cycle.workdir) or [0])[-1]
        remaining = max(1, (self.options.num_steps - resume) // self.options.checkpoint_every)
        target, seen, count = self.rng.randint(1, remaining), set(before_tmp), 0
        deadline = time.time() + self.options.launch_timeout
        while launch.alive() and time.time() < deadline:
            new = tmp_dirs(cycle.workdir) - seen
            if new:
                count += len(new)
                seen |= new
                if count >= target:
                    launch.signal(signal.SIGKILL)
                    return True
            launch.progress()
            time.sleep(0.001)
        return False

    def _kill_during_rewrite(self, launch: Launch, cycle: Cycle) -> tuple[bool, bool]:
        """SIGKILL the moment a temporary metrics file appears (the rewrite on resume); failing that, at a random
        moment. Returns (sent, hit the rewrite)."""
        deadline = time.time() + self.options.launch_timeout
        while launch.alive() and time.time() < deadline:
            try:
                names = os.listdir(cycle.workdir)
            except OSError:
                names = []
            if any(REWRITE_MARKER in name for name in names):
                launch.signal(signal.SIGKILL)
                return True, True
            if launch.progress() > 0:  # the start-up is over without a rewrite
                return self._stop_at_random_moment(launch, cycle, signal.SIGKILL), False
            time.sleep(0.0005)
        return False, False

    def _inject(self, cycle: Cycle) -> str | None:
        """Before a launch: a torn metrics line or a damaged newest checkpoint (see the module docstring)."""
        choices = []
        metrics = os.path.join(cycle.workdir, "metrics.jsonl")
        if os.path.exists(metrics):
            choices.append("torn_line")
        steps = complete_steps(cycle.workdir)
        if len(steps) >= 2:
            choices.append("damaged_checkpoint")
        choices.append("contention")
        kind = self.rng.choice(choices)
        if kind == "torn_line":
            with open(metrics, "a") as f:
                f.write('{"step": 99999, "split": "train", "loss": 0.12')  # no newline: cut short
            cycle.pending_torn += 1
        elif kind == "damaged_checkpoint":
            shutil.rmtree(os.path.join(cycle.workdir, "checkpoints", str(steps[-1]), "state"), ignore_errors=True)
            cycle.pending_damage.append(steps[-1])
        cycle.injected[kind] += 1
        return kind

    def _contention(self, cycle: Cycle) -> bool:
        """Two launches at once on one workdir: one must train on and finish, the other exit naming the holder.
        Returns True when the cycle failed to progress."""
        first, second = self._launch(cycle.workdir), self._launch(cycle.workdir)
        cycle.launches += 2
        codes = [launch.wait(self.options.launch_timeout) for launch in (first, second)]
        for launch, code in zip((first, second), codes):
            if code is None:
                launch.signal(signal.SIGKILL)
                cycle.fail("hang", f"launch {self.launch_count}: a contention launch did not finish "
                                   f"({launch.err_path})")
                return True
        errs = [first.stderr(), second.stderr()]
        for err in errs:
            self._account(cycle, err)
        busy = [code != 0 and _BUSY in err for code, err in zip(codes, errs)]
        if codes.count(0) == 1 and busy.count(True) == 1:
            cycle.contention_refused += 1
            cycle.finished = True
            return False
        if codes.count(0) == 2 and any("finished at step" in err for err in errs):
            cycle.finished = True  # the run had finished already: the second found it finished (no contention)
            return False
        cycle.fail("lock", f"launches {self.launch_count - 1} and {self.launch_count} on one workdir exited "
                           f"{codes}; expected one 0 and one refusal naming the lock's holder "
                           f"({first.err_path}, {second.err_path})")
        return True

    def _account(self, cycle: Cycle, err: str) -> int:
        """Counts the repairs a launch reports (injected faults handled, stale locks); returns the number of
        damaged checkpoints it skipped that were NOT injected (a failure: writes are meant to be atomic)."""
        moved = [int(step) for step in _MOVED.findall(err)]
        for step in moved:
            if step in cycle.pending_damage:
                cycle.pending_damage.remove(step)
                cycle.damaged_moved_aside += 1
        skipped = [int(step) for step in _DAMAGED.findall(err)]
        cycle.damaged_checkpoints_skipped += len(skipped)
        unexpected = [step for step in skipped if step not in moved and step not in cycle.pending_damage]
        torn = err.count(_TORN)
        if torn and cycle.pending_torn:
            cycle.torn_lines_dropped += min(torn, cycle.pending_torn)
            cycle.pending_torn = 0
        cycle.stale_locks_taken_over += err.count(_STALE)
        return len(unexpected)

    def one_launch(self, cycle: Cycle, kill: bool) -> bool:
        """Launches once and stops the launch (if `kill`); returns True when the launch failed by itself."""
        options = self.options
        if kill and self.rng.random() < options.fault_fraction:
            if self._inject(cycle) == "contention":
                return self._contention(cycle)
        before_tmp = tmp_dirs(cycle.workdir)
        had_checkpoint = bool(complete_steps(cycle.workdir))
        launch = self._launch(cycle.workdir)
        cycle.launches += 1
        kind = None
        if kill:
            roll = self.rng.random()
            if roll < options.sigterm_fraction:
                kind = "sigterm"
            elif self.rng.random() < options.aimed_fraction:
                kind = "sigkill_checkpoint"
            else:
                kind = "sigkill_rewrite" if self.rng.random() < options.rewrite_fraction else "sigkill_random"
        sent = hit_rewrite = False
        if kind in ("sigkill_random", "sigterm"):
            sent = self._stop_at_random_moment(launch, cycle,
                                               signal.SIGKILL if kind == "sigkill_random" else signal.SIGTERM)
        elif kind == "sigkill_checkpoint":
            sent = self._kill_during_checkpoint_write(launch, cycle, before_tmp)
        elif kind == "sigkill_rewrite":
            sent, hit_rewrite = self._kill_during_rewrite(launch, cycle)
        if launch.first_step_seconds is not None:
            self.startup_seconds = launch.first_step_seconds
        timeout = options.sigterm_timeout if kind == "sigterm" and sent else options.launch_timeout
        code = launch.wait(timeout)
        if code is None:
            what = "SIGTERM not honoured" if kind == "sigterm" else "launch did not finish"
            cycle.fail("hang", f"launch {self.launch_count}: {what} within {timeout:.0f} s; killed ({launch.err_path})")
            launch.signal(signal.SIGKILL)
            code = launch.wait()
        err = launch.stderr()
        hit = sent and kind not in ("sigterm", "sigkill_rewrite") and bool(tmp_dirs(cycle.workdir) - before_tmp)
        resumed = [int(s) for s in _RESUMED.findall(err)]
        cycle.events.append({"launch": self.launch_count, "stop": kind if sent else None, "resumed_from": resumed,
                             "last_step": launch.progress(), "exit": code,
                             "seconds": round(time.time() - launch.started, 2), "cut_checkpoint_write": hit,
                             "cut_metrics_rewrite": hit_rewrite})
        cycle.resumed_from += resumed
        unexpected = self._account(cycle, err)
        if unexpected:
            cycle.fail("damaged_checkpoint", f"launch {self.launch_count}: restore skipped {unexpected} damaged "
                                             f"checkpoint(s) that no fault had damaged ({launch.err_path})")
        if had_checkpoint and _STEP.search(err) and not _RESUMED.search(err):
            cycle.fail("resume", f"launch {self.launch_count}: trained from scratch although the workdir held "
                                 f"checkpoints {complete_steps(cycle.workdir)} ({launch.err_path})")
        if code == 0:
            cycle.finished = True
            if cycle.pending_torn:
                cycle.fail("torn_line", f"launch {self.launch_count}: an injected torn metrics line was not "
                                        f"reported as dropped ({launch.err_path})")
            return False
        if sent:
            cycle.kills[kind] += 1
            if kind == "sigterm":
                stopped = _STOPPED.search(err)
                if code == 128 + signal.SIGTERM and stopped and int(stopped.group(1)) in complete_steps(cycle.workdir):
                    cycle.sigterm_saved += 1
                elif code == -signal.SIGTERM:
                    cycle.sigterm_before_handler += 1
                else:
                    cycle.fail("sigterm", f"launch {self.launch_count}: SIGTERM gave exit {code} without a "
                                          f"checkpoint of the stopping step ({launch.err_path})")
                    return True
            elif hit:
                cycle.hit_checkpoint_write += 1
            elif hit_rewrite:
                cycle.hit_metrics_rewrite += 1
            return False
        last_line = err.strip().splitlines()[-1] if err.strip() else ""
        cycle.fail("resume", f"launch {self.launch_count}: exit {code} without being stopped: {last_line} "
                             f"({launch.err_path})")
        return True

    def report(self, seconds: float) -> dict[str, Any]:
        """The report: totals over the cycles and each cycle's events."""
        cycles = [dataclasses.asdict(c) for c in self.cycles]
        kills = {kind: sum(c.kills[kind] for c in self.cycles) for kind in KINDS}
        finished = [c for c in self.cycles if c.finished]
        totals = {
            "cycles": len(self.cycles),
            "cycles_finished": len(finished),
            "kills": sum(kills.values()),
            "kills_by_kind": kills,
            "sigkills": kills["sigkill_random"] + kills["sigkill_checkpoint"],
            "sigterms": kills["sigterm"],
            "hit_checkpoint_write": sum(c.hit_checkpoint_write for c in self.cycles),
            "sigterm_saved_and_exited": sum(c.sigterm_saved for c in self.cycles),
            "sigterm_before_handler": sum(c.sigterm_before_handler for c in self.cycles),
            "launches": sum(c.launches for c in self.cycles),
            "restarts": sum(max(c.launches - 1, 0) for c in self.cycles),
            "resumes": sum(len(c.resumed_from) for c in self.cycles),
            "damaged_checkpoints_skipped": sum(c.damaged_checkpoints_skipped for c in self.cycles),
            "injected": {kind: sum(c.injected[kind] for c in self.cycles) for kind in INJECTED},
            "hit_metrics_rewrite": sum(c.hit_metrics_rewrite for c in self.cycles),
            "torn_lines_dropped": sum(c.torn_lines_dropped for c in self.cycles),
            "damaged_moved_aside": sum(c.damaged_moved_aside for c in self.cycles),
            "stale_locks_taken_over": sum(c.stale_locks_taken_over for c in self.cycles),
            "contention_refused": sum(c.contention_refused for c in self.cycles),
            "failures": sum(len(c.failures) for c in self.cycles),
            "failures_by_kind": {kind: sum(f["kind"] == kind for c in self.cycles for f in c.failures)
                                 for kind in FAILURE_KINDS},
            "resume_failures": sum(f["kind"] == "resume" for c in self.cycles for f in c.failures),
            "params_match": bool(finished) and all(c.comparison.get("params_match") for c in finished),
            "state_match": bool(finished) and all(c.comparison.get("state_match") for c in finished),
            "metrics_match": bool(finished) and all(c.comparison.get("metrics_match") for c in finished),
            "results_match": bool(finished) and all(c.comparison.get("results_match") for c in finished),
        }
        ok = (totals["failures"] == 0 and totals["cycles_finished"] == totals["cycles"] > 0
              and totals["state_match"] and totals["metrics_match"] and totals["results_match"])
        return {"ok": ok, "seconds": seconds, "reference_seconds": self.reference_seconds,
                "options": dataclasses.asdict(self.options), "totals": totals, "cycles": cycles}


def run_soak(options: SoakOptions) -> dict[str, Any]:
    """Runs the soak (see the module docstring) and returns its report (also written to options.report)."""
    os.makedirs(options.workdir, exist_ok=True)
    return Soak(options).run()


def summary(report: dict[str, Any]) -> str:
    """A human-readable summary of a soak report."""
    t = report["totals"]
    lines = [
        f"soak {'PASSED' if report['ok'] else 'FAILED'} after {report['seconds']:.0f} s "
        f"(reference run {report['reference_seconds']:.1f} s)",
        f"  cycles: {t['cycles']} ({t['cycles_finished']} finished); launches {t['launches']}, restarts "
        f"{t['restarts']}, resumes from a checkpoint {t['resumes']}",
        f"  kills: {t['kills']} = {t['kills_by_kind']['sigkill_random']} SIGKILL at random + "
        f"{t['kills_by_kind']['sigkill_checkpoint']} SIGKILL aimed at a checkpoint write + {t['sigterms']} SIGTERM",
        f"  SIGKILLs that cut a checkpoint write short: {t['hit_checkpoint_write']}; that landed in the metrics "
        f"rewrite: {t['hit_metrics_rewrite']} (of {t['kills_by_kind']['sigkill_rewrite']} aimed at it)",
        f"  injected: {t['injected']}; repaired: torn lines dropped {t['torn_lines_dropped']}, damaged "
        f"checkpoints moved aside {t['damaged_moved_aside']}, double launches refused {t['contention_refused']}, "
        f"stale locks taken over {t['stale_locks_taken_over']}",
        f"  SIGTERMs: {t['sigterm_saved_and_exited']} saved the step and exited 143, {t['sigterm_before_handler']} "
        "arrived outside the training loop (default action)",
        f"  damaged checkpoints skipped on restore: {t['damaged_checkpoints_skipped']}; failures to resume: "
        f"{t['resume_failures']}; failures of any kind: {t['failures']}",
        f"  final state vs the uninterrupted run: params {'equal' if t['params_match'] else 'DIFFER'}, whole state "
        f"{'equal' if t['state_match'] else 'DIFFERS'}, metrics {'equal' if t['metrics_match'] else 'DIFFER'}, "
        f"results {'equal' if t['results_match'] else 'DIFFER'} (bitwise / exact)",
    ]
    for cycle in report["cycles"]:
        for failure in cycle["failures"]:
            lines.append(f"  FAILURE ({failure['kind']}) in {os.path.basename(cycle['workdir'])}: "
                         f"{failure['message']}")
    lines.append(f"  report: {report.get('report_path', '')}")
    return "\n".join(lines)


def define_flags() -> None:
    """Command-line flags, defined only when this module runs as the program, so that importing it (tests,
    other entry points that also define --seed or --workdir) defines none."""
    flags.DEFINE_string("workdir", "workdirs/soak", "Root of the reference run, the cycles and the logs.")
    flags.DEFINE_float("wall_seconds", SoakOptions.wall_seconds, "Kill for this long (then finish the cycle).")
    flags.DEFINE_integer("num_steps", SoakOptions.num_steps, "Training steps of the tiny run.")
    flags.DEFINE_integer("checkpoint_every", SoakOptions.checkpoint_every, "Checkpoint period in steps.")
    flags.DEFINE_integer("eval_every", SoakOptions.eval_every, "Validation period in steps.")
    flags.DEFINE_integer("seed", SoakOptions.seed, "Seed of the kill schedule.")
    flags.DEFINE_float("sigterm_fraction", SoakOptions.sigterm_fraction, "Share of stops that are SIGTERM.")
    flags.DEFINE_float("aimed_fraction", SoakOptions.aimed_fraction,
                      "Share of SIGKILLs aimed at a checkpoint write.")
    flags.DEFINE_float("rewrite_fraction", SoakOptions.rewrite_fraction,
                      "Share of the other SIGKILLs aimed at the metrics rewrite on resume.")
    flags.DEFINE_float("fault_fraction", SoakOptions.fault_fraction,
                      "Share of launches preceded by an injected fault (torn line, damaged checkpoint, contention).")
    flags.DEFINE_integer("max_kills", 0, "Stop killing after this many kills (0: only the wall time).")
    flags.DEFINE_bool("fast_compile", False, "Run the trainer with XLA's optimisations off.")
    flags.DEFINE_bool("compilation_cache", True, "Share JAX's persistent compilation cache between launches "
                      "(<workdir>/jax_cache): restarts skip compilation.")
    flags.DEFINE_string("report", "", "JSON report path (default <workdir>/soak_report.json).")
    flags.DEFINE_multi_string("extra_flag", [], "More --config.*=... flags for every launch.")


def main(argv: list[str]) -> None:
    """The entry point: runs the soak from the flags, prints the summary, exits 0 only when it passed."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every read of the final checkpoints at INFO
    f = flags.FLAGS
    options = SoakOptions(
        workdir=os.path.abspath(f.workdir), wall_seconds=f.wall_seconds, num_steps=f.num_steps,
        checkpoint_every=f.checkpoint_every, eval_every=f.eval_every, seed=f.seed,
        sigterm_fraction=f.sigterm_fraction, aimed_fraction=f.aimed_fraction, max_kills=f.max_kills,
        rewrite_fraction=f.rewrite_fraction, fault_fraction=f.fault_fraction,
        fast_compile=f.fast_compile, compilation_cache=f.compilation_cache, report=f.report,
        extra_flags=tuple(f.extra_flag))
    report = run_soak(options)
    print(summary(report))
    print(json.dumps(report["totals"], indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
