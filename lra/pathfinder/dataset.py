"""Pathfinder datasets: loading one difficulty into splits, and writing generated datasets in the official layout.

Tokens: pixel values 0..255 are the ids (vocab 256), image flattened row-major to H*W. Images have NO padding:
every position is real, and a 0 is a black pixel, not padding (do not build a mask from `inputs > 0`).

Splits: LRA's positional split of ONE difficulty: examples ordered by (numeric batch id, row in the metadata
file), then [:80%] train, [80%:90%] val, [90%:] test, with boundaries floor(0.8 n) and floor(0.9 n). (LRA's
TFDS shuffled examples by key hash before slicing; examples are i.i.d., so any fixed order gives the same
distribution. S4/S5 instead split randomly with seed 42; not reproduced.)

Generated datasets (`write_pathfinder_dataset`, `ensure_generated_pathfinder`) are written in the official
layout (lra/pathfinder/reader.py) with the generator of lra/pathfinder/generate.py, and read back like the
official files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings

import numpy as np

from lra.errors import LRADataError
from lra.listops import _default_num_workers, _worker_context
from lra.pathfinder.cache import _cache_key, _open_cache, build_cache
from lra.pathfinder.generate import (
    GENERATOR_VERSION,
    RESOLUTIONS,
    PathfinderParams,
    difficulty_dir,
    example_rng,
    generate_example,
    pathfinder_params,
)
from lra.pathfinder.png import write_png
from lra.pathfinder.reader import find_dataset_dir, metadata_row, read_pathfinder_examples
from lra.progress import progress_bar
from lra.tasks import Split

SPLITS = ("train", "val", "test")
VOCAB_SIZE = 256

# Images per `imgs/<batch>` directory and metadata file. Image i's content does not depend on it.
IMAGES_PER_BATCH = 200
# Images per unit of parallel work (a part of one batch); the progress bar moves as each part completes
# (Path-X: ~4 s of one core per part). The files do not depend on it.
IMAGES_PER_TASK = 25


def split_positions(num_examples: int) -> dict[str, tuple[int, int]]:
    """LRA's positional split: train [0, floor(.8n)), val [floor(.8n), floor(.9n)), test [floor(.9n), n)."""
    first, second = num_examples * 8 // 10, num_examples * 9 // 10
    return {"train": (0, first), "val": (first, second), "test": (second, num_examples)}


def _splits(inputs: np.ndarray, labels: np.ndarray) -> dict[str, Split]:
    return {
        name: Split(inputs=inputs[start:stop], labels=np.asarray(labels[start:stop], np.int32), name=name)
        for name, (start, stop) in split_positions(len(labels)).items()
    }


def load_pathfinder(
    data_dir: str,
    resolution: int = 32,
    difficulty: str = "hard",
    cache_dir: str | None = None,
    *,
    use_cache: bool = True,
    num_workers: int | None = None,
) -> dict[str, Split]:
    """Read one difficulty of Pathfinder (Path-X: resolution 128, "hard") into train/val/test splits.

    Args:
      data_dir: a `pathfinder<res>` directory holding `<curv_dir>/`, or the `lra_release` root above it.
      cache_dir: where the uint8 cache goes (a subdirectory `pathfinder<res>-<curv_dir>-<digest>`); default
        `<data_dir>/<curv_dir>/cache`. When it cannot be written, or use_cache=False, everything is read into
        memory instead (n * H*W bytes).
      num_workers: processes decoding PNGs (default: all CPUs; 1 = in this process).
    Returns:
      {"train", "val", "test"} -> Split with inputs (n, H*W) uint8 (read-only memmap views when cached: pass
      batches through lra.batching, which converts to int32) and labels (n,) int32. Ids are pixels 0..255; no
      padding. Split sizes follow `split_positions`.
    The cache is valid while the dataset directory and its metadata files keep their paths, sizes and mtimes
    (images replaced in place without touching the metadata are not noticed: delete the cache then). A cache
    made stale that way is left on disk, not deleted. A damaged cache (unreadable info.json, arrays whose
    headers or sizes disagree with it) is rebuilt.
    Raises LRADataError naming the file for malformed metadata or images, and when no example is listed or
    every image is skipped (empty or all black).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unsupported Pathfinder resolution {resolution!r}; expected one of {RESOLUTIONS}")
    dataset_dir = find_dataset_dir(data_dir, resolution, difficulty)
    if use_cache:
        key = _cache_key(dataset_dir, resolution)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        root = cache_dir if cache_dir is not None else os.path.join(dataset_dir, "cache")
        cache_path = os.path.join(root, f"pathfinder{resolution}-{difficulty_dir(difficulty)}-{digest}")
        cached = _open_cache(cache_path, key, resolution)
        if cached is None:  # missing, stale or damaged: (re)build it
            try:
                build_cache(dataset_dir, resolution, cache_path, num_workers=num_workers)
            except OSError as error:
                warnings.warn(
                    f"Pathfinder: cannot write the cache in {root} ({error}); reading into memory",
                    stacklevel=2,
                )
            else:
                cached = _open_cache(cache_path, key, resolution)
                if cached is None:
                    raise LRADataError(f"{cache_path}: the cache just built cannot be read back")
        if cached is not None:
            return _splits(*cached)
    inputs, labels = read_pathfinder_examples(dataset_dir, resolution, num_workers=num_workers)
    return _splits(inputs, labels)


# ---------------------------------------------------------------------------------------------------------
# Generating the official layout.


def _generate_images(
    task: tuple[str, PathfinderParams, int, int, int, int, int],
) -> tuple[int, int, list[str], list[int]]:
    """Write imgs/<batch>/sample_<i>.png for the global examples [start, stop) of one batch whose first example
    is `first`; return (batch, start, metadata lines, labels) for the parent to assemble the batch's metadata."""
    dataset_dir, params, seed, batch, first, start, stop = task
    image_dir = os.path.join(dataset_dir, "imgs", str(batch))
    os.makedirs(image_dir, exist_ok=True)
    lines, labels = [], []
    for global_index in range(start, stop):
        index = global_index - first
        image, label, debug = generate_example(
            params, example_rng(params, seed, global_index), return_debug=True
        )
        write_png(os.path.join(image_dir, f"sample_{index}.png"), image)
        lines.append(metadata_row(batch, index, label, params, debug["margin"]) + "\n")
        labels.append(label)
    return batch, start, lines, labels


def write_pathfinder_dataset(
    root: str,
    params: PathfinderParams,
    num_examples: int,
    seed: int,
    *,
    curv_dir: str = "curv_contour_length_14",
    num_workers: int | None = None,
    images_per_batch: int = IMAGES_PER_BATCH,
    progress: bool = True,
) -> np.ndarray:
    """Generate `num_examples` images into `<root>/<curv_dir>/{imgs,metadata}` (the official layout).

    Example i (0-based, in split order) lands in batch i // images_per_batch as sample_<i % images_per_batch>
    and is drawn from `example_rng(params, seed, i)`, so the files do not depend on num_workers. Parts of
    batches (IMAGES_PER_TASK images) are generated in parallel (forked workers, or spawned once jax is
    imported); a batch's metadata file is written when its last part is done. Returns the labels (n,) int32.

    progress: a progress bar on stderr (images done / total, rate, time left; lra/progress.py), updated as
    each part completes. TQDM_DISABLE=1 in the environment turns it off too.
    """
    if num_examples < 1 or images_per_batch < 1:
        raise ValueError(
            f"expected num_examples >= 1 and images_per_batch >= 1, got {num_examples}, {images_per_batch}"
        )
    dataset_dir = os.path.join(root, curv_dir)
    os.makedirs(os.path.join(dataset_dir, "metadata"), exist_ok=True)
    batch_sizes = {}
    tasks = []
    for batch, first in enumerate(range(0, num_examples, images_per_batch)):
        stop = min(first + images_per_batch, num_examples)
        batch_sizes[batch] = stop - first
        for start in range(first, stop, IMAGES_PER_TASK):
            tasks.append((dataset_dir, params, int(seed), batch, first, start, min(start + IMAGES_PER_TASK, stop)))
    workers = min(_default_num_workers() if num_workers is None else num_workers, len(tasks))
    if workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")

    parts: dict[int, dict[int, tuple[list[str], list[int]]]] = {batch: {} for batch in batch_sizes}
    labels_by_batch: dict[int, list[int]] = {}

    def collect(results) -> None:
        with progress_bar(num_examples, f"Pathfinder-{params.window_size} {curv_dir}", "img",
                          enabled=progress) as bar:
            for batch, start, lines, labels in results:
                parts[batch][start] = (lines, labels)
                bar.update(len(labels))
                if sum(len(part[1]) for part in parts[batch].values()) < batch_sizes[batch]:
                    continue
                done = parts.pop(batch)
                ordered = [done[key] for key in sorted(done)]
                path = os.path.join(dataset_dir, "metadata", f"{batch}.npy")
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write("".join(line for lines, _ in ordered for line in lines))
                labels_by_batch[batch] = [label for _, labels in ordered for label in labels]

    if workers == 1:
        collect(map(_generate_images, tasks))
    else:
        with _worker_context().Pool(workers) as pool:
            # Unordered: the bar moves as soon as any part is done; the metadata are assembled in order.
            collect(pool.imap_unordered(_generate_images, tasks, chunksize=1))
    return np.asarray([label for batch in sorted(labels_by_batch) for label in labels_by_batch[batch]],
                      dtype=np.int32)


def ensure_generated_pathfinder(
    cache_root: str,
    resolution: int,
    difficulty: str,
    num_examples: int,
    seed: int,
    num_workers: int | None = None,
    progress: bool = True,
) -> str:
    """Generate Pathfinder under `cache_root` unless it is there; return the root for `load_pathfinder`.

    The root is `<cache_root>/pathfinder<res>-<12 hex of sha256(parameters)>/` holding `<curv_dir>/imgs`,
    `<curv_dir>/metadata` and params.json. It is built under a hidden temporary name and renamed into place,
    so it exists complete or not at all; a concurrent caller that loses the rename discards its copy.
    While generating, a progress bar goes to stderr unless `progress` is False (see write_pathfinder_dataset).
    """
    params = pathfinder_params(resolution, difficulty)
    description = {
        "generator_version": GENERATOR_VERSION,
        "images_per_batch": IMAGES_PER_BATCH,
        "params": dataclasses.asdict(params),
        "difficulty": difficulty_dir(difficulty),
        "num_examples": int(num_examples),
        "seed": int(seed),
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]
    name = f"pathfinder{resolution}-{digest}"
    final_dir = os.path.join(cache_root, name)
    if os.path.isdir(final_dir):
        return final_dir
    os.makedirs(cache_root, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_root)
    try:
        write_pathfinder_dataset(
            temp_dir, params, num_examples, seed, curv_dir=difficulty_dir(difficulty), num_workers=num_workers,
            progress=progress,
        )
        with open(os.path.join(temp_dir, "params.json"), "w") as handle:
            json.dump(description, handle, indent=2, sort_keys=True)
        try:
            os.rename(temp_dir, final_dir)
        except OSError:
            if not os.path.isdir(final_dir):
                raise
            shutil.rmtree(temp_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return final_dir
