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

import contextlib
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
    """The URL scheme of a workdir ("gs", "s3", ...), or None for a local path."""
    match = _SCHEME.match(workdir)
    return match.group(1).lower() if match else None


def is_remote(workdir: str) -> bool:
    """Whether the workdir is an object-store URL rather than a local path."""
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


def write_text_atomic(workdir: str, name: str, text: str) -> None:
    """Replaces workdir/name with `text` so that a kill at any moment leaves the old file or the new one: locally
    a temporary file `<name>.tmp.<pid>` in the same directory, synced, renamed over the old one, and the directory
    synced; an object store replaces an object atomically by itself."""
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
    directory = os.open(os.path.dirname(target), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_json(workdir: str, name: str, value: Any) -> None:
    """Writes workdir/name as JSON, atomically (write_text_atomic)."""
    write_text_atomic(workdir, name, json.dumps(value, indent=2, sort_keys=True))


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
    """An exclusive lock per workdir, so that two trainers never share one (a double submission, a requeue while
    the old job still runs).

    The lock is an flock(2) on workdir/lock.json, taken before the first write into the workdir and held until the
    run ends; the file names the holder (host, pid, start, heartbeat every HEARTBEAT_SECONDS) for the refusal
    message. The kernel releases an flock when its process dies, so the lock of a killed trainer is free at once:
    the next trainer takes it over (with a warning naming the dead holder). As a second guard, for file systems
    that do not carry flocks between hosts, a record of a live process on this host, or of another host with a
    heartbeat younger than STALE_AFTER_SECONDS, also counts as held. Where flock is not supported at all the
    lock falls back to an atomic create of the file (O_EXCL through a hard link, so the file is never seen
    half-written) with the same staleness rules. Object-store workdirs are not locked (a warning says so).
    """

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.file = os.path.join(workdir, LOCK_NAME)
        self.held = False
        self._fd: int | None = None
        self._stop = None
        self._started = time.time()

    # -- the record

    def holder(self) -> dict | None:
        """The lock file's record: None when there is no file or it is empty (free), {} when unreadable."""
        for attempt in range(5):  # the holder may be rewriting its heartbeat this instant
            try:
                with open(self.file, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            except OSError:
                return {}
            if not data.strip():
                return None
            try:
                record = json.loads(data.decode("utf-8"))
                return record if isinstance(record, dict) else {}
            except ValueError:
                time.sleep(0.01 * (attempt + 1))
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

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
                           "started": self._started}).encode()

    def _busy(self, record: dict | None) -> WorkdirLockedError:
        record = record or {}
        started = record.get("started", record.get("time"))
        when = f", started {time.ctime(started)}" if isinstance(started, (int, float)) else ""
        return WorkdirLockedError(
            f"--workdir={self.workdir} is in use by process {record.get('pid', '?')} on host "
            f"{record.get('host', '?')} (lock {self.file}{when}); wait for it to end or stop it, or use another "
            "--workdir")

    def _held_by_record(self, record: dict | None) -> bool:
        """A live holder by the record alone (the second guard)."""
        return bool(record) and record.get("pid") != os.getpid() and self.stale_reason(record) is None

    # -- taking and releasing

    def check(self) -> None:
        """Fails when another live process holds the lock (called before the data are read, to fail fast)."""
        if is_remote(self.workdir) or not os.path.isdir(self.workdir) or not os.path.exists(self.file):
            return
        import fcntl

        fd = os.open(self.file, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(self.holder()) from None
            except OSError:
                pass  # no flock here: the record decides
            record = self.holder()
            if self._held_by_record(record):
                raise self._busy(record)
        finally:
            os.close(fd)  # also drops the shared flock

    def acquire(self) -> None:
        """Takes the lock or raises WorkdirLockedError naming the holder (see the class docstring)."""
        if is_remote(self.workdir):
            from absl import logging

            logging.warning("%s is an object store: it is not locked against a second trainer", self.workdir)
            return
        import fcntl

        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy(self.holder()) from None
        except OSError:  # flock not supported by this file system
            os.close(fd)
            self._acquire_by_create()
            return
        record = self.holder()
        if self._held_by_record(record):
            os.close(fd)
            raise self._busy(record)
        if record:
            self._warn_takeover(record)
        self._fd = fd
        self._write_fd()
        self.held = True
        self._start_heartbeat()

    def _warn_takeover(self, record: dict) -> None:
        from absl import logging

        logging.warning("taking over the stale lock %s of process %s on %s: %s", self.file, record.get("pid"),
                        record.get("host"), self.stale_reason(record) or "it no longer holds the lock")

    def _write_fd(self) -> None:
        data = self._record()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def _acquire_by_create(self) -> None:
        """Fallback without flock: the lock file is created complete (written to a temporary file, then hard-
        linked into place, which fails if the lock exists); a stale one is renamed away first."""
        tmp = f"{self.file}.new.{os.getpid()}"
        for _ in range(3):
            with open(tmp, "wb") as f:
                f.write(self._record())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.file)
            except FileExistsError:
                record = self.holder()
                if record is None:
                    continue
                if self.stale_reason(record) is None:
                    raise self._busy(record) from None
                self._warn_takeover(record)
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.file, f"{self.file}.stale.{os.getpid()}")
                    os.remove(f"{self.file}.stale.{os.getpid()}")
                continue
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
            self.held = True
            self._start_heartbeat()
            return
        raise self._busy(self.holder())

    def _start_heartbeat(self) -> None:
        import threading

        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    if self._fd is not None:
                        self._write_fd()
                    elif (self.holder() or {}).get("pid") == os.getpid():
                        tmp = f"{self.file}.tmp.{os.getpid()}"
                        with open(tmp, "wb") as f:
                            f.write(self._record())
                        os.replace(tmp, self.file)
                    else:
                        return  # taken over (this process was presumed dead): stop touching it
                except OSError:
                    pass  # a full disk: the next beat tries again

        self._thread = threading.Thread(target=beat, name="workdir-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Frees the lock: the record is cleared (the file stays, so no other process can flock a stale inode)."""
        if not self.held:
            return
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=10)  # no heartbeat may write through a closed (and reused) descriptor
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # drops the flock
            self._fd = None
        elif (self.holder() or {}).get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.file)
        self.held = False
