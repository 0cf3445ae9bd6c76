"""The error raised for bad Long Range Arena data.

`LRADataError` subclasses `ValueError`, so callers that catch `ValueError` still catch it. Its message
names the file, the line or record number, and what was expected, e.g.
``/data/listops-1000/basic_val.tsv, line 17: expected 2 tab-separated columns (Source, Target), got 3``.

What every reader in lra/ promises for a hostile file (truncated, garbled, empty, oversized, wrongly typed; see
tests/lra/test_hostile_inputs.py): it either returns well-formed splits or raises LRADataError naming the file and,
where one is to blame, the line or record; never another exception from deep inside numpy, pickle, zlib or gzip,
never a hang, and never an allocation larger than the data actually present (sizes declared in IDX, PNG, .npy
and pickle headers are checked against the file first). Files are opened through lra/files.py: only regular
files (links to them followed, wherever they point), checked before opening, so a FIFO, a device, a socket, a
directory or a dangling link where a file belongs is an LRADataError too, and so is a file or line over the
bound its format allows (tests/lra/test_hostile_files.py). Documented exceptions: damaged caches are rebuilt
silently (lra/cache.py, the Pathfinder cache), and empty or all-black Pathfinder images are skipped with a
warning. Pickles (CIFAR-10) remain unsafe to load from an untrusted source; see lra/image.py.
"""

from __future__ import annotations


class LRADataError(ValueError):
    """Malformed or unexpected content in an LRA data file (or in data passed in directly)."""


def located(where: str | None, message: str) -> str:
    """Prefix `message` with a location such as ``'<file>, line 12'`` when one is known."""
    return f"{where}: {message}" if where else message
