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
    """workdir/name parsed, or None when it does not exist."""
    target = path(workdir, name)
    if not target.exists():
        return None
    return json.loads(target.read_text())


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
