"""ListOps as the trainer gets it: `load_listops` (the official files -> padded int32 splits, through a token
cache), `ensure_generated` (a generated dataset cached on disk in the official layout), and the contract of the
config section config.data.listops (`GENERATOR_RANGES`, `check_generator_config`; the listops TaskSpec in
lra/tasks.py carries both).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from lra import cache
from lra.errors import LRADataError
from lra.listops.generate import CHUNK_SIZE, GENERATOR_VERSION, _check_generation_parameters, generate_listops
from lra.listops.tsv import SPLITS, TOKENIZER_VERSION, pad_ragged, read_tsv, split_path, tokenize_ragged, write_dataset
from lra.tasks import Split

# ---------------------------------------------------------------------------------------------------------
# The config section's contract.

# The generator section of a config (config.data.listops): int ranges, and the relations `check_generator_config`
# reports before anything is built (the TaskSpec in lra/tasks.py carries both).
GENERATOR_RANGES = {
    "num_train": (1, 10_000_000), "num_val": (1, 10_000_000), "num_test": (1, 10_000_000),
    "min_length": (0, 2**20), "max_length": (1, 2**20), "max_depth": (1, 100), "max_args": (2, 100),
    "generator_seed": (0, 2**32 - 1),
}


def _download_hint(data_dir: str) -> str:
    from lra.download import download_hint  # lazily: lra.download imports the task registry, which imports this package

    return download_hint("listops", data_dir)


def check_generator_config(section: Any, context: Any) -> Iterator[tuple[str, str]]:
    """The relations of config.data.listops for a generated run: settings that can generate trees, a sequence
    length that holds the longest example, a train split that holds a batch (lra.tasks.DataCheck)."""
    if context.source != "generated":
        return
    if section is None:
        yield "data.listops", ("missing; generated ListOps needs its generator settings (see "
                               "experiments/configs/listops.py)")
        return
    window = ("min_length", "max_length", "max_depth", "max_args")
    if all(key in section for key in window):
        values = {key: section[key] for key in window}
        try:
            _check_generation_parameters((1, 1, 1), seed=0, **values)
        except ValueError as error:
            yield "data.listops.min_length", (f"{error} (data.listops.min_length, max_length, max_depth and "
                                              "max_args)")
        longest = values["max_length"] - 1  # lengths are < max_length
        if context.seq_len is not None and context.seq_len < longest:
            yield "data.seq_len", (f"{context.seq_len} is shorter than the longest generated ListOps example "
                                   f"(data.listops.max_length - 1 = {longest}): truncated expressions have wrong "
                                   "labels; raise data.seq_len or lower max_length")
    if "num_train" in section and context.batch_size is not None and context.batch_size > section["num_train"]:
        yield "train.batch_size", (f"{context.batch_size} is larger than the generated train split "
                                   f"(data.listops.num_train = {section['num_train']})")


# ---------------------------------------------------------------------------------------------------------
# Loading with a token cache.


def load_listops(
    data_dir: str, seq_len: int = 2000, *, task: str = "basic", use_cache: bool = True
) -> dict[str, Split]:
    """Read `<data_dir>/<task>_{train,val,test}.tsv` into int32 splits zero-padded to seq_len.

    Returns:
      {"train", "val", "test"} -> Split with inputs (n, seq_len) int32 (ids as in lra/listops/tsv.py) and
      labels (n,) int32. Rows longer than seq_len are truncated; `Split.num_truncated` counts them and a
      warning is issued when any were.
    Cache: the unpadded token ids go to `<data_dir>/<task>_tokens.cache.npz`, valid while the three files keep
    their sizes and mtimes (and TOKENIZER_VERSION holds). It does not depend on seq_len, since padding is
    redone on every load (fast). An unwritable directory just means no cache.
    """
    paths = [split_path(data_dir, split, task) for split in SPLITS]
    missing = [path for path in paths if not os.path.lexists(path)]
    if missing:
        raise LRADataError(
            f"ListOps files not found: {missing}; expected {task}_{{train,val,test}}.tsv in {data_dir}; "
            + _download_hint(data_dir)
        )
    cache_path = os.path.join(data_dir, f"{task}_tokens.cache.npz")
    key = cache.cache_key("listops", TOKENIZER_VERSION, cache.file_stamps(paths, what="the ListOps TSV file"))
    names = [f"{split}_{name}" for split in SPLITS for name in ("flat", "lengths", "labels")]
    arrays = cache.read_cache(cache_path, key, names) if use_cache else None
    if arrays is None:
        arrays = {}
        for split, path in zip(SPLITS, paths):
            sources, targets = read_tsv(path)
            flat, lengths = tokenize_ragged(sources, where=path)
            arrays.update({f"{split}_flat": flat, f"{split}_lengths": lengths, f"{split}_labels": targets})
        if use_cache:
            cache.write_cache(cache_path, key, arrays)
    result = {}
    for split in SPLITS:
        inputs, num_truncated = pad_ragged(arrays[f"{split}_flat"], arrays[f"{split}_lengths"], seq_len)
        if num_truncated:
            warnings.warn(
                f"ListOps {split}: {num_truncated} of {len(inputs)} sequences are longer than seq_len={seq_len} "
                "and were truncated",
                stacklevel=2,
            )
        labels = np.asarray(arrays[f"{split}_labels"], dtype=np.int32)
        result[split] = Split(inputs=inputs, labels=labels, name=split, num_truncated=num_truncated)
    return result


# ---------------------------------------------------------------------------------------------------------
# A generated dataset cached on disk.


def generation_parameters(
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    seed: int,
) -> dict[str, int]:
    """Everything that determines a generated dataset (num_workers does not), as a JSON-able dict."""
    return {
        "generator_version": GENERATOR_VERSION,
        "chunk_size": CHUNK_SIZE,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "num_test": int(num_test),
        "min_length": int(min_length),
        "max_length": int(max_length),
        "max_depth": int(max_depth),
        "max_args": int(max_args),
        "seed": int(seed),
    }


def ensure_generated(
    cache_root: str,
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    seed: int,
    num_workers: int | None = None,
    progress: bool = True,
) -> str:
    """Generate a ListOps dataset under `cache_root` unless it is already there; return its directory.

    The directory is `<cache_root>/listops-<first 12 hex digits of sha256(parameters)>/` and holds
    basic_{train,val,test}.tsv plus params.json. It is written to a temporary sibling and renamed into place,
    so it either exists complete or not at all (a killed run leaves only a hidden `.listops-*.tmp-*` dir).
    Concurrent callers may both generate; one rename wins and the other discards its copy. While generating,
    a progress bar goes to stderr unless `progress` is False (see `generate_listops`).
    """
    params = generation_parameters(
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        min_length=min_length,
        max_length=max_length,
        max_depth=max_depth,
        max_args=max_args,
        seed=seed,
    )
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    name = f"listops-{digest}"
    final_dir = os.path.join(cache_root, name)
    if os.path.isdir(final_dir):
        return final_dir
    os.makedirs(cache_root, exist_ok=True)
    splits = generate_listops(
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        min_length=min_length,
        max_length=max_length,
        max_depth=max_depth,
        max_args=max_args,
        seed=seed,
        num_workers=num_workers,
        progress=progress,
    )
    temp_dir = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_root)
    try:
        write_dataset(temp_dir, splits)
        with open(os.path.join(temp_dir, "params.json"), "w") as handle:
            json.dump(params, handle, indent=2, sort_keys=True)
        try:
            # Atomic. It fails when final_dir exists non-empty, i.e. a concurrent caller finished first.
            os.rename(temp_dir, final_dir)
        except OSError:
            if not os.path.isdir(final_dir):
                raise
            shutil.rmtree(temp_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return final_dir

