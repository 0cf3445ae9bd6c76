"""From a config to the task's splits: which files to read or what to generate, and where to cache it.

    task            data.source    reads
    listops         generated      lra.listops generator (config.data.listops), cached under data.cache_dir
                    files          data_dir/basic_{train,val,test}.tsv (lra_release/listops-1000)
    text            files          data_dir = aclImdb tree (train|test/pos|neg/*.txt) or train.tsv / test.tsv
    retrieval       files          data_dir/new_aan_pairs.{train,eval,test}.tsv (lra_release/tsv_data)
    image           files          data_dir/cifar-10-batches-py (python pickle batches)
    mnist, pmnist,  files          data_dir/*-images-idx3-ubyte(.gz) and *-labels-idx1-ubyte(.gz)
    fashion_mnist
    pathfinder,     generated      lra.pathfinder generator (config.data.pathfinder), cached under data.cache_dir
    pathx           files          data_dir = the official root (e.g. lra_release/lra_release/pathfinder32)
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

import lra
from lra import image, listops, pathfinder, retrieval, text
from lra.download import download_hint

GENERATED_TASKS = ("listops", "pathfinder", "pathx")
PATHFINDER_RESOLUTION = {"pathfinder": 32, "pathx": 128}


def cache_root(config: ml_collections.ConfigDict) -> str:
    """Where generated data and preprocessed arrays are cached: data.cache_dir, else $LRA_MIXERS_CACHE, else
    ~/.cache/lra-mixers (absolute)."""
    root = config.data.cache_dir or os.environ.get("LRA_MIXERS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "lra-mixers")
    return os.path.abspath(root)


def task_spec(config: ml_collections.ConfigDict) -> lra.TaskSpec:
    """The task's spec, with the configured sequence length when one is set."""
    spec = lra.get_task(config.task)
    if config.data.seq_len:
        spec = dataclasses.replace(spec, seq_len=int(config.data.seq_len))
    return spec


def _data_dir(config: ml_collections.ConfigDict, expected: str) -> str:
    directory = config.data.data_dir
    if not directory or not os.path.isdir(directory):
        hint = download_hint(config.task, directory) or "see WORKSPACE.md (Data) for where the official files come from"
        raise FileNotFoundError(
            f"--config.data.data_dir={directory!r} is not a directory; task {config.task!r} reads {expected} from it; "
            f"{hint}")
    return directory


def load_splits(config: ml_collections.ConfigDict) -> dict[str, lra.Split]:
    """Returns {"train", "val", "test"} splits for the configured task."""
    spec = task_spec(config)
    task, source = config.task, config.data.source
    allowed = ("generated", "files") if task in GENERATED_TASKS else ("files",)
    if source not in allowed:
        raise ValueError(f"--config.data.source={source!r}: task {task!r} accepts {allowed}")
    if task == "listops":
        if source == "files":
            directory = _data_dir(config, "basic_{train,val,test}.tsv")
        else:
            options = dict(config.data.listops)
            options["seed"] = options.pop("generator_seed")
            directory = listops.ensure_generated(cache_root(config), **options)
        return listops.load_listops(directory, spec.seq_len)
    if task in PATHFINDER_RESOLUTION:
        resolution = PATHFINDER_RESOLUTION[task]
        options = config.data.pathfinder
        if source == "files":
            directory = _data_dir(config, f"the pathfinder{resolution} layout (curv_*/imgs, curv_*/metadata)")
        else:
            directory = pathfinder.ensure_generated_pathfinder(
                cache_root(config), resolution, options.difficulty, options.num_examples, options.generator_seed)
        return pathfinder.load_pathfinder(directory, resolution, options.difficulty,
                                          cache_dir=os.path.join(cache_root(config), "pathfinder-arrays"))
    if task == "text":
        return text.load_text(_data_dir(config, "the aclImdb tree or train.tsv/test.tsv"), spec.seq_len,
                              val_fraction=config.data.get("val_fraction", 0.1), seed=config.data.get("split_seed", 0))
    if task == "retrieval":
        return retrieval.load_retrieval(_data_dir(config, "new_aan_pairs.{train,eval,test}.tsv"), spec.seq_len)
    if task == "image":
        return image.load_cifar10(_data_dir(config, "cifar-10-batches-py"), val_size=config.data.get("val_size", 5000))
    if task in ("mnist", "pmnist", "fashion_mnist"):
        return image.load_idx_images(_data_dir(config, "the IDX image and label files"), permuted=task == "pmnist",
                                     permutation_seed=config.data.get("permutation_seed", 0),
                                     val_size=config.data.get("val_size", 6000))
    raise ValueError(f"task {task!r} has no data loader; tasks with loaders: {', '.join(lra.task_names())}")
