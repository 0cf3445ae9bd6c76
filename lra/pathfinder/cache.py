"""The Pathfinder array cache: a difficulty's images decoded once into memory-mapped uint8 arrays.

`<cache_path>/inputs.npy` (n, H*W) uint8, `labels.npy` (n,) int32 and `info.json` (the key it was built for, the
skipped images), built atomically (`build_cache`) and opened read-only as memory maps (`_open_cache`). The key
(`_cache_key`) is the dataset directory's real path and the names, sizes and mtimes of its metadata files;
`lra.pathfinder.load_pathfinder` chooses the cache path and rebuilds a missing, stale or damaged cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from lra.files import check_regular, read_bounded
from lra.pathfinder import reader
from lra.pathfinder.reader import METADATA_MAX_BYTES, metadata_files, read_index

# Bumped when the cache format or the reading rules change.
CACHE_VERSION = 1
# The largest cache info.json read (it lists the skipped images).
CACHE_INFO_MAX_BYTES = 64 << 20


def _cache_key(dataset_dir: str, resolution: int) -> dict[str, Any]:
    files = []
    for path in metadata_files(dataset_dir):
        stat = check_regular(path, "the metadata file", METADATA_MAX_BYTES)
        files.append([os.path.basename(path), stat.st_size, stat.st_mtime_ns])
    return {
        "cache_version": CACHE_VERSION,
        "resolution": resolution,
        "dataset_dir": os.path.realpath(dataset_dir),
        "metadata": files,
    }


def build_cache(
    dataset_dir: str, resolution: int, cache_path: str, *, num_workers: int | None = None
) -> None:
    """Write `<cache_path>/inputs.npy` (n, H*W) uint8, `labels.npy` (n,) int32 and `info.json`, atomically.

    Pixels stream block by block into an np.lib.format.open_memmap file, so memory stays at a few blocks
    whatever n is (Path-X: 200,000 x 16,384 = 3.3 GB on disk). Skipped images leave the file one copy pass
    shorter at the end. The directory is built under a temporary name and renamed into place.
    """
    key = _cache_key(dataset_dir, resolution)
    paths, labels = read_index(dataset_dir)
    parent = os.path.dirname(os.path.abspath(cache_path))
    os.makedirs(parent, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(cache_path)}.tmp-", dir=parent)
    try:
        full_path = os.path.join(temp_dir, "inputs.full.npy")
        inputs = np.lib.format.open_memmap(
            full_path, mode="w+", dtype=np.uint8, shape=(len(paths), resolution * resolution)
        )
        keep_all = np.zeros(len(paths), dtype=bool)
        written = 0
        for start, pixels, keep in reader._iterate_blocks(paths, resolution, num_workers):
            kept = pixels[keep]
            inputs[written : written + len(kept)] = kept
            keep_all[start : start + len(keep)] = keep
            written += len(kept)
        inputs.flush()
        del inputs
        final_inputs = os.path.join(temp_dir, "inputs.npy")
        if written == len(paths):
            os.rename(full_path, final_inputs)
        else:
            source = np.load(full_path, mmap_mode="r")
            target = np.lib.format.open_memmap(
                final_inputs, mode="w+", dtype=np.uint8, shape=(written, resolution * resolution)
            )
            step = reader._block_rows(resolution)
            for start in range(0, written, step):
                stop = min(start + step, written)
                target[start:stop] = source[start:stop]
            target.flush()
            del source, target
            os.unlink(full_path)
        np.save(os.path.join(temp_dir, "labels.npy"), labels[keep_all])
        skipped = [p for p, k in zip(paths, keep_all) if not k]
        with open(os.path.join(temp_dir, "info.json"), "w") as handle:
            json.dump({"key": key, "num_examples": written, "skipped": skipped}, handle, indent=1)
        reader._warn_skipped(skipped, len(paths))
        if os.path.isdir(cache_path):
            shutil.rmtree(cache_path, ignore_errors=True)  # a stale cache under the same name
        try:
            os.rename(temp_dir, cache_path)
        except OSError:
            if not os.path.isdir(cache_path):
                raise
            shutil.rmtree(temp_dir, ignore_errors=True)  # a concurrent builder finished first
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _open_cache(cache_path: str, key: dict[str, Any], resolution: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(inputs memmap, labels) of a cache built for `key`; None when it is missing, stale or damaged in any way.

    Both arrays are opened as memory maps first, so a damaged .npy header cannot make this allocate: a shape that
    the file does not hold fails to map. Only then are the shapes compared with info.json and the labels copied.
    Anything but a regular file among the three (a FIFO, a link to a device) is never opened (lra/files.py).
    """
    try:
        info = json.loads(read_bounded(os.path.join(cache_path, "info.json"), "a cache index", CACHE_INFO_MAX_BYTES))
        if not isinstance(info, dict) or info.get("key") != json.loads(json.dumps(key)):
            return None
        count = info["num_examples"]
        for name in ("inputs.npy", "labels.npy"):
            check_regular(os.path.join(cache_path, name), "a cache array")
        inputs = np.load(os.path.join(cache_path, "inputs.npy"), mmap_mode="r", allow_pickle=False)
        labels = np.load(os.path.join(cache_path, "labels.npy"), mmap_mode="r", allow_pickle=False)
        if (
            not isinstance(count, int)
            or inputs.shape != (count, resolution * resolution)
            or inputs.dtype != np.uint8
            or labels.shape != (count,)
            or labels.dtype != np.int32
            or not np.isin(labels, (0, 1)).all()
        ):
            return None
        return inputs, np.array(labels)
    except (OSError, ValueError, KeyError, TypeError, EOFError, RecursionError):
        return None
