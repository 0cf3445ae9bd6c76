"""Preprocessed-array caches shared by the readers: one .npz per source, valid while the source files keep their
sizes and modification times (and CACHE_VERSION holds). Writes are atomic; an unwritable directory means no cache.
A damaged cache file (truncated, garbled, or with headers that do not match its contents) is never an error and
never trusted: `read_cache` reports a miss and the reader rebuilds it from the source files. So is anything but
a regular file at the cache's path (a FIFO, a link to a device, a directory): it is never opened (lra/files.py),
and `write_cache` replaces it, or only warns when it cannot (a directory).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterable

import numpy as np

from lra.files import check_regular, open_regular

CACHE_VERSION = 1


def file_stamps(paths: Iterable[str], *, relative_to: str | None = None, what: str = "a data file") -> list[list]:
    """[[name, size, mtime_ns], ...] for `paths` (names relative to `relative_to`, or base names).

    Every path must be a regular file (links followed): anything else is an LRADataError naming it and `what`.
    """
    stamps = []
    for path in paths:
        stat = check_regular(path, what)
        name = os.path.relpath(path, relative_to) if relative_to else os.path.basename(path)
        stamps.append([name, stat.st_size, stat.st_mtime_ns])
    return stamps


def cache_key(*parts: object) -> str:
    """A short key for a cache: sha256 of the JSON of CACHE_VERSION and `parts` (file stamps, options)."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_cache(cache_path: str, key: str, names: Iterable[str] = ()) -> dict[str, np.ndarray] | None:
    """The arrays stored at `cache_path` if its key equals `key` and it holds every array in `names`.

    None (rebuild the cache) when the file is missing, stale, lacks an expected array, or is damaged in any way:
    a cache is only an optimisation, so no error is raised from here. The file is read defensively, as
    `write_cache` writes it (an uncompressed zip of .npy members): a member whose .npy header declares more
    bytes than the member holds, or an object (pickled) array, is refused before anything is allocated.
    """
    try:
        with open_regular(cache_path, "a cache") as handle, zipfile.ZipFile(handle) as archive:
            file_size = os.fstat(handle.fileno()).st_size
            arrays = {}
            for info in archive.infolist():
                stored = info.compress_type == zipfile.ZIP_STORED and info.compress_size == info.file_size
                if not stored or info.file_size > file_size or not info.filename.endswith(".npy"):
                    return None
                with archive.open(info) as member:
                    arrays[info.filename[: -len(".npy")]] = _read_member(member, info.file_size)
    except Exception:  # any damage (zip structure, .npy header, CRC, memory, not a regular file) means: rebuild
        return None
    if "key" not in arrays or str(arrays["key"]) != key or any(name not in arrays for name in names):
        return None
    return arrays


_READ_CHUNK = 1 << 24  # bytes copied at a time from a cache member into its array


def _read_member(member, member_size: int) -> np.ndarray:
    """One .npy member of a cache, its header checked against the member's size before anything is allocated."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f".npy version {version} is never written by write_cache")
    if dtype.hasobject:
        raise ValueError("object arrays are never cached")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != member_size - member.tell():
        raise ValueError(f"the .npy header declares {shape} {dtype}, the member holds {member_size} bytes")
    array = np.empty(shape[::-1] if fortran_order else shape, dtype=dtype)
    if nbytes:
        flat = array.reshape(-1).view(np.uint8)
        for start in range(0, nbytes, _READ_CHUNK):
            piece = member.read(min(_READ_CHUNK, nbytes - start))
            if not piece:
                raise ValueError("cache member ends early")
            flat[start : start + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
    return array.T if fortran_order else array


def write_cache(cache_path: str, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Store `arrays` and `key` at `cache_path` atomically (temporary file + rename).

    Readers see either the old cache or the whole new one. An unwritable directory only warns: no cache.
    """
    directory = os.path.dirname(cache_path) or "."
    try:
        handle, temp_path = tempfile.mkstemp(prefix=".lra-cache-", suffix=".npz", dir=directory)
    except OSError as error:
        warnings.warn(f"not caching tokens, cannot write in {directory}: {error}", stacklevel=3)
        return
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, key=np.asarray(key), **arrays)
        try:
            os.replace(temp_path, cache_path)
        except OSError as error:  # e.g. a directory where the cache belongs
            os.unlink(temp_path)
            warnings.warn(f"not caching tokens, cannot replace {cache_path}: {error}", stacklevel=3)
    except BaseException:
        if os.path.lexists(temp_path):
            os.unlink(temp_path)
        raise
