"""The run directory (--workdir): where it is, whether it can be used, and the small files that describe the run.

    workdir = resolve("workdirs/default")    # -> "/home/me/lra-mixers/workdirs/default" (absolute, printed at start)
    workdir = resolve("gs://bucket/runs/a")  # kept as a URL; needs the [gcs] extra (gcsfs), else WorkdirError

A local workdir is made absolute at start: orbax refuses relative checkpoint paths, and a run resumed from another
directory must find the same files. A URL (gs://, s3://, az://) is read and written through etils.epath, which
reaches the object store through an fsspec backend (gcsfs for gs://). Without that backend installed, `resolve`
fails in one line naming the extra to install, and nothing is created anywhere (in particular no local "gs:"
directory, which is what os.makedirs would make of such a URL).

Files written here besides the checkpoints (experiments/trainer.py):
  config.json   the resolved config of the run (restarts compare against it)
  status.json   {"state": "running" | "stopped" | "failed" | "finished", "step", "pid", "host", "message", "time"}:
                what the run is doing or how it ended; experiments/report.py reads it
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import time
from typing import Any

from etils import epath

# URL schemes etils.epath routes to fsspec, with the fsspec backend package each needs and how to install it.
REMOTE_BACKENDS = {
    "gs": ("gcsfs", 'pip install -e ".[gcs]"'),
    "s3": ("s3fs", "pip install s3fs"),
    "az": ("adlfs", "pip install adlfs"),
}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

STATES = ("running", "stopped", "failed", "finished")


class WorkdirError(ValueError):
    """--workdir cannot be used (a user's mistake: reported in one line, with no traceback)."""


def scheme(workdir: str) -> str | None:
    match = _SCHEME.match(workdir)
    return match.group(1).lower() if match else None


def is_remote(workdir: str) -> bool:
    return scheme(workdir) is not None


def resolve(workdir: str) -> str:
    """An absolute local path, or a URL whose storage backend is installed; WorkdirError otherwise."""
    if not workdir or not workdir.strip():
        raise WorkdirError("--workdir is empty: give the directory for checkpoints, metrics and results")
    kind = scheme(workdir)
    if kind is None:
        return os.path.abspath(os.path.expanduser(workdir))
    if kind == "file":
        return resolve(workdir[len("file://"):])
    if kind not in REMOTE_BACKENDS:
        raise WorkdirError(f"--workdir={workdir}: the scheme {kind}:// is not supported; use a local path or one of "
                           f"{', '.join(s + '://' for s in REMOTE_BACKENDS)}")
    package, install = REMOTE_BACKENDS[kind]
    if importlib.util.find_spec(package) is None:
        raise WorkdirError(f"--workdir={workdir} needs the {package} package, which is not installed: run "
                           f"`{install}` (nothing was written)")
    return workdir.rstrip("/")


def path(workdir: str, *parts: str) -> epath.Path:
    """workdir/parts as an epath.Path (a local path or an object-store URL)."""
    return epath.Path(workdir).joinpath(*parts)


def nearest_existing(directory: str) -> str:
    """The directory itself if it exists, else its closest existing ancestor (local paths only)."""
    current = os.path.abspath(directory)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def read_json(workdir: str, name: str) -> Any | None:
    """workdir/name parsed, or None when it does not exist; WorkdirError (one line) when it is damaged."""
    target = path(workdir, name)
    if not target.exists():
        return None
    try:
        return json.loads(target.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WorkdirError(f"{target} is damaged ({type(error).__name__}: {error}); restore it from a copy, or move "
                           f"it away to let this run write a new one (config.json: only if the checkpoints in "
                           f"{workdir} were made with this command's config)") from None


def write_json(workdir: str, name: str, value: Any) -> None:
    """Writes workdir/name atomically where the file system allows it (a local rename; object stores are atomic)."""
    text = json.dumps(value, indent=2, sort_keys=True)
    if is_remote(workdir):
        path(workdir, name).write_text(text)
        return
    target = os.path.join(workdir, name)
    tmp = f"{target}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def write_status(workdir: str, state: str, step: int, message: str = "") -> None:
    """status.json: what the run is doing (running) or how it ended (stopped, failed, finished)."""
    if state not in STATES:
        raise ValueError(f"status {state!r}: expected one of {STATES}")
    write_json(workdir, "status.json", {"state": state, "step": int(step), "pid": os.getpid(),
                                        "host": socket.gethostname(), "message": message, "time": time.time()})


def checkpoint_steps(workdir: str, name: str = "checkpoints") -> list[int]:
    """The steps of the finished checkpoints under workdir/name (orbax names them by step), sorted."""
    directory = path(workdir, name)
    if not directory.is_dir():
        return []
    return sorted(int(child.name) for child in directory.iterdir() if child.name.isdigit() and child.is_dir())


# ------------------------------------------------------------------------------------------------------ lock


LOCK_NAME = "lock.json"
HEARTBEAT_SECONDS = 30.0       # the holder rewrites the lock this often
STALE_AFTER_SECONDS = 600.0    # a lock of another host not refreshed for this long is taken over


class WorkdirLockedError(WorkdirError):
    """Another live process trains in this workdir."""


def _alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class WorkdirLock:
    """An exclusive lock per workdir (workdir/lock.json: host, pid, time), so that two trainers never share one.

    Taken atomically (O_CREAT | O_EXCL) before the first write into the workdir; refreshed every HEARTBEAT_SECONDS
    by a daemon thread; removed when the run ends. A lock left by a dead process is stale and taken over: on this
    host when its pid no longer runs, for another host when its heartbeat is older than STALE_AFTER_SECONDS. The
    takeover renames the stale file first, so of two processes taking over at once only one succeeds. Local
    workdirs only: object stores have no atomic create (a remote workdir is not locked; a warning says so).
    """

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.file = os.path.join(workdir, LOCK_NAME)
        self.held = False
        self._stop = None

    def holder(self) -> dict | None:
        """The lock's record, or None when there is no lock (or it is unreadable, which counts as stale)."""
        try:
            with open(self.file, "rb") as f:
                record = json.loads(f.read().decode("utf-8"))
            return record if isinstance(record, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def stale_reason(self, record: dict) -> str | None:
        """Why a lock record belongs to no live process (None: its holder may be alive)."""
        host, pid, beat = record.get("host"), record.get("pid"), record.get("time")
        if not isinstance(pid, int) or not isinstance(beat, (int, float)):
            return "the lock file is unreadable"
        if host == socket.gethostname():
            return None if pid == os.getpid() or _alive(pid) else f"process {pid} on this host has ended"
        age = time.time() - beat
        return f"its heartbeat is {age:.0f} s old" if age > STALE_AFTER_SECONDS else None

    def check(self) -> None:
        """Fails when a live process holds the lock (called before the data are read, to fail fast)."""
        if is_remote(self.workdir) or not os.path.isdir(self.workdir):
            return
        record = self.holder()
        if record is not None and record.get("pid") != os.getpid() and self.stale_reason(record) is None:
            raise self._busy(record)

    def _busy(self, record: dict) -> WorkdirLockedError:
        return WorkdirLockedError(
            f"--workdir={self.workdir} is in use by process {record.get('pid')} on host {record.get('host')} "
            f"(lock {self.file}, started {time.ctime(record.get('started', record.get('time', 0)))}); wait for it to "
            f"end or stop it, or use another --workdir")

    def acquire(self) -> None:
        if is_remote(self.workdir):
            from absl import logging

            logging.warning("%s is an object store: it is not locked against a second trainer", self.workdir)
            return
        for _ in range(3):
            try:
                fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                record = self.holder()
                if record is None:
                    continue  # removed meanwhile: try again
                reason = self.stale_reason(record)
                if reason is None:
                    raise self._busy(record) from None
                from absl import logging

                logging.warning("taking over the stale lock %s of process %s on %s: %s", self.file,
                                record.get("pid"), record.get("host"), reason)
                try:
                    os.rename(self.file, f"{self.file}.stale.{os.getpid()}")
                    os.remove(f"{self.file}.stale.{os.getpid()}")
                except FileNotFoundError:
                    pass  # another process took it over first; it now holds a fresh lock or will
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._record(started=time.time())))
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            self._start_heartbeat()
            return
        record = self.holder() or {}
        raise self._busy(record)

    def _record(self, started: float) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "started": started}

    def _start_heartbeat(self) -> None:
        import threading

        record = self.holder() or {}
        started = record.get("started", time.time())
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                if (self.holder() or {}).get("pid") != os.getpid():
                    return  # taken over (this process was presumed dead): stop touching it
                tmp = f"{self.file}.tmp.{os.getpid()}"
                try:
                    with open(tmp, "w") as f:
                        f.write(json.dumps(self._record(started)))
                    os.replace(tmp, self.file)
                except OSError:
                    pass  # a full disk: the next beat tries again

        threading.Thread(target=beat, name="workdir-lock-heartbeat", daemon=True).start()

    def release(self) -> None:
        if not self.held:
            return
        if self._stop is not None:
            self._stop.set()
        if (self.holder() or {}).get("pid") == os.getpid():
            try:
                os.remove(self.file)
            except FileNotFoundError:
                pass
        self.held = False
