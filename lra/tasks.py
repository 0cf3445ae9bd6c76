"""Task specifications for Long Range Arena, and the uniform container for one data split.

Loaders: `lra.listops.load_listops`, `lra.text.load_text`, `lra.retrieval.load_retrieval`,
`lra.image.load_cifar10`, `lra.image.load_idx_images` (mnist, pmnist, fashion_mnist) and
`lra.pathfinder.load_pathfinder` (pathfinder, pathx). The specs follow docs/lra_data.md section 2 (LRA's byte/pixel
tokenisations). Pixel tasks are never padded: pixel 0 is black, not padding, so their mask is all-True
(`TaskSpec.padded` is False).

Shapes: `Split.inputs` is (n, L) int32 for single-input tasks and (n, 2, L) int32 for dual-input tasks
(retrieval: two documents per example); `Split.labels` is (n,) int32.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np


class HeadKind(enum.StrEnum):
    """What the model predicts: one label per sequence (pooled), one per pair of sequences (dual: retrieval's
    two documents through one shared encoder), or one per position (language modelling, recall diagnostics)."""

    POOLED = "pooled"
    DUAL = "dual"
    PER_POSITION = "per_position"


class DataSource(enum.StrEnum):
    """Where a task's examples come from: generated here (seeded, cached), read from the official files in
    data_dir, or built in (data every machine has, e.g. the Python standard library's source as a corpus)."""

    GENERATED = "generated"
    FILES = "files"
    BUILTIN = "builtin"


@dataclasses.dataclass(frozen=True)
class DataRequest:
    """What a loader is asked for: the source, the official files' directory (source "files"), the cache root
    for generated data and preprocessed arrays, the sequence length, and the config's data section as a dict
    (the task's own keys: e.g. data.listops, data.pathfinder, data.val_size)."""

    source: str
    data_dir: str
    cache_dir: str
    seq_len: int
    options: Mapping[str, Any]


Loader = Callable[["TaskSpec", DataRequest], "dict[str, Split]"]


@dataclasses.dataclass(frozen=True)
class DataContext:
    """What a task's config check sees besides its data section: the source, the run's sequence length and
    train batch size (None where the config's own value is bad, already reported)."""

    source: str | None
    seq_len: int | None
    batch_size: int | None


# check(section, context) -> [(config key, message)]: the relations of a task's data section (config.data.<section>,
# None when the config has none; only keys whose values passed their ranges), e.g. generator settings that
# cannot produce a dataset, or a batch larger than the generated train split. Keys are dotted config keys
# ("data.listops.min_length", "train.batch_size").
DataCheck = Callable[[Mapping[str, Any] | None, DataContext], Iterable[tuple[str, str]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """Static description of one task, and its contract: how its data are loaded and what the model predicts.

    Attributes:
      name: registry key, e.g. "listops".
      seq_len: tokens per input sequence (per document for dual-input tasks).
      vocab_size: number of input ids including the padding id (ids are 0..vocab_size-1).
      num_classes: number of output classes.
      head: HeadKind (default pooled; dual when `dual_input`).
      causal: a per-position task whose targets must be predicted from the past (language modelling, recall):
        validation then refuses mixers without a causal form, bidirectional=True and BatchNorm.
      dual_input: True when each example holds two sequences (retrieval); the same as head == DUAL.
      pad_id: id used for padding.
      padded: whether sequences can be padded (the input kind: tokens). False for pixel tasks, whose every
        position is real (pixel 0 is black, not padding: LRA's `inputs > 0` mask is a known quirk not copied here).
      fixed_length: the length cannot change (default: for tasks that are never padded, whose pixels are neither
        padded nor cut); False for a corpus cut into windows of any length.
      description: one line for humans.
      train_size: examples in the official training split (turns a recipe's epochs into steps).
      metrics: what evaluation reports besides the loss.
      loaders: source ("generated" / "files") -> Loader(spec, request) -> {"train", "val", "test"} splits.
      reads: what the "files" loader reads from data_dir (named when the directory is missing).
      download: the `python -m lra.download` target that fetches the official files (None: none).
      data_section: the task's own section of config.data (its generator settings), or None.
      data_ranges: key of that section -> (low, high), the inclusive range of an int setting; data_choices: key ->
        the allowed values of a closed set.
      check_data: DataCheck, the section's relations (validation reports them before anything is built).
    """

    name: str
    seq_len: int
    vocab_size: int
    num_classes: int
    head: HeadKind | None = None
    dual_input: bool = False
    causal: bool = False
    pad_id: int = 0
    description: str = ""
    padded: bool = True
    fixed_length: bool | None = None
    train_size: int = 0
    metrics: tuple[str, ...] = ("accuracy",)
    loaders: Mapping[str, Loader] = dataclasses.field(default_factory=dict, compare=False)
    reads: str = ""
    download: str | None = None
    data_section: str | None = None
    data_ranges: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict, compare=False)
    data_choices: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict, compare=False)
    check_data: DataCheck | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        for field in ("seq_len", "vocab_size", "num_classes"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TaskSpec {self.name!r}: {field} must be a positive int, got {value!r}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(
                f"TaskSpec {self.name!r}: pad_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_id}"
            )
        head = HeadKind(self.head) if self.head is not None else (HeadKind.DUAL if self.dual_input else HeadKind.POOLED)
        if self.dual_input != (head == HeadKind.DUAL):
            raise ValueError(f"TaskSpec {self.name!r}: dual_input={self.dual_input} contradicts head={head.value!r}")
        object.__setattr__(self, "head", head)
        if self.fixed_length is None:
            object.__setattr__(self, "fixed_length", not self.padded)
        unknown = sorted(set(self.loaders) - {s.value for s in DataSource})
        if unknown:
            raise ValueError(f"TaskSpec {self.name!r}: unknown data source(s) {unknown}; expected "
                             f"{', '.join(repr(s.value) for s in DataSource)}")

    @property
    def sources(self) -> tuple[str, ...]:
        """The data sources this task accepts, generated first."""
        return tuple(s.value for s in DataSource if s.value in self.loaders)

    def load(self, request: DataRequest) -> dict[str, Split]:
        """The task's {"train", "val", "test"} splits from `request.source` (ValueError for a source the task does
        not have; FileNotFoundError naming the flag and the download command for a missing data_dir)."""
        if request.source not in self.loaders:
            raise ValueError(f"--config.data.source={request.source!r}: task {self.name!r} accepts {self.sources}")
        if request.source == DataSource.FILES and not (request.data_dir and os.path.isdir(request.data_dir)):
            from lra.download import download_hint

            hint = download_hint(self.download or self.name, request.data_dir) or \
                "see WORKSPACE.md (Data) for where the official files come from"
            raise FileNotFoundError(
                f"--config.data.data_dir={request.data_dir!r} is not a directory; task {self.name!r} reads "
                f"{self.reads or 'its files'} from it; {hint}")
        return self.loaders[request.source](self, request)


class UnknownTaskError(KeyError):
    """`get_task` was asked for a name that is not registered."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Add `spec` to the registry under `spec.name` and return it.

    Re-registering an identical spec is a no-op; registering a different spec under a taken name raises
    ValueError unless `overwrite=True`.
    """
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing != spec and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered as {existing}; pass overwrite=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered spec called `name`; raises UnknownTaskError listing the registered names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(f"unknown LRA task {name!r}; registered tasks: {', '.join(task_names())}") from None


def task_names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


@dataclasses.dataclass
class Split:
    """One split of a task, fully in memory.

    Attributes:
      inputs: (n, L) int32, or (n, 2, L) int32 for dual-input tasks; padded with the task's pad_id. May be
        uint8 (ids < 256, e.g. a read-only memmap of pixels); lra.batching returns int32 batches either way.
      labels: (n,) int32, or (n, L) int32 for per-position tasks (-1 where a position has no target).
      name: "train", "val" or "test".
      num_truncated: how many examples were longer than L and were cut to L when building `inputs`.
    """

    inputs: np.ndarray
    labels: np.ndarray
    name: str
    num_truncated: int = 0

    def __post_init__(self) -> None:
        # uint8 inputs are ids held compactly (a memory-mapped image cache, a corpus's bytes); uint8 labels are the
        # next bytes of a corpus (lra/corpus.py). Batches come out int32 either way.
        if self.inputs.dtype not in (np.int32, np.uint8) or self.labels.dtype not in (np.int32, np.uint8):
            raise ValueError(
                f"Split {self.name!r}: inputs and labels must be int32 or uint8, got {self.inputs.dtype} "
                f"and {self.labels.dtype}"
            )
        per_position = self.labels.ndim == 2 and self.inputs.ndim == 2 and self.labels.shape == self.inputs.shape
        if not (self.labels.ndim == 1 or per_position) or self.inputs.ndim not in (2, 3) \
                or len(self.inputs) != len(self.labels):
            raise ValueError(
                f"Split {self.name!r}: expected inputs (n, L) or (n, 2, L) and labels (n,), or inputs and labels "
                f"(n, L) (a target per position, -1 where there is none), got {self.inputs.shape} and "
                f"{self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.labels)


def majority_rate(labels_train: np.ndarray, labels_eval: np.ndarray) -> float:
    """Accuracy on `labels_eval` of always predicting the most frequent TRAIN label.

    This is the baseline a classifier must beat: predicting the train-set mode without looking at the
    inputs. Ties between equally frequent train labels go to the smallest label. Cost O(n_train + n_eval).
    """
    labels_train = np.asarray(labels_train)
    labels_eval = np.asarray(labels_eval)
    if labels_train.size == 0 or labels_eval.size == 0:
        raise ValueError(
            f"majority_rate needs non-empty label arrays, got sizes {labels_train.size} and {labels_eval.size}"
        )
    labels_train, labels_eval = labels_train[labels_train >= 0], labels_eval[labels_eval >= 0]  # -1: no target
    if labels_train.size == 0 or labels_eval.size == 0:
        raise ValueError("majority_rate needs at least one target (label >= 0) in each array")
    values, counts = np.unique(labels_train, return_counts=True)
    mode = values[np.argmax(counts)]  # np.unique sorts, argmax takes the first maximum: smallest label wins
    return float(np.mean(labels_eval == mode))


# ------------------------------------------------------------------------------------------------ loaders
# (at the end of the module: the task modules import Split from here)

from lra import listops  # noqa: E402

# One per task and source: a request -> the splits, through the task module's reader or generator.


def _listops_generated(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
    from lra import listops

    options = dict(request.options["listops"])
    options["seed"] = options.pop("generator_seed")
    return listops.load_listops(listops.ensure_generated(request.cache_dir, **options), spec.seq_len)


def _listops_files(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
    from lra import listops

    return listops.load_listops(request.data_dir, spec.seq_len)


def _text_files(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
    from lra import text

    return text.load_text(request.data_dir, spec.seq_len, val_fraction=request.options.get("val_fraction", 0.1),
                          seed=request.options.get("split_seed", 0))


def _retrieval_files(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
    from lra import retrieval

    return retrieval.load_retrieval(request.data_dir, spec.seq_len)


def _cifar_files(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
    from lra import image

    return image.load_cifar10(request.data_dir, val_size=request.options.get("val_size", 5000))


def _idx_files(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
    from lra import image

    return image.load_idx_images(request.data_dir, permuted=spec.name == "pmnist",
                                 permutation_seed=request.options.get("permutation_seed", 0),
                                 val_size=request.options.get("val_size", 6000))


def _pathfinder_loader(resolution: int, generated: bool) -> Loader:
    def load(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
        from lra import pathfinder

        options = request.options["pathfinder"]
        directory = request.data_dir
        if generated:
            directory = pathfinder.ensure_generated_pathfinder(
                request.cache_dir, resolution, options["difficulty"], options["num_examples"],
                options["generator_seed"])
        return pathfinder.load_pathfinder(directory, resolution, options["difficulty"],
                                          cache_dir=os.path.join(request.cache_dir, "pathfinder-arrays"))

    return load


PATHFINDER_RANGES = {"num_examples": (1, 10_000_000), "generator_seed": (0, 2**32 - 1)}


def _check_pathfinder(section: Mapping[str, Any] | None, context: DataContext) -> Iterable[tuple[str, str]]:
    from lra.pathfinder import split_positions

    if section is None:
        yield "data.pathfinder", ("missing; the task needs difficulty (and, when generated, num_examples and "
                                  "generator_seed): see experiments/configs/pathfinder.py")
        return
    if context.source == DataSource.GENERATED and "num_examples" in section and context.batch_size is not None:
        start, stop = split_positions(section["num_examples"])["train"]
        if context.batch_size > stop - start:
            yield "train.batch_size", (f"{context.batch_size} is larger than the generated train split "
                                       f"({stop - start} = 80% of data.pathfinder.num_examples)")


def _pathfinder_spec(**fields: Any) -> TaskSpec:
    from lra.pathfinder import DIFFICULTIES

    resolution = int(math.isqrt(fields["seq_len"]))
    difficulties = tuple(DIFFICULTIES) + tuple(directory for directory, _ in DIFFICULTIES.values())
    return TaskSpec(vocab_size=256, num_classes=2, padded=False, train_size=160_000, data_section="pathfinder",
                    loaders={"generated": _pathfinder_loader(resolution, True),
                             "files": _pathfinder_loader(resolution, False)},
                    reads=f"the pathfinder{resolution} layout (curv_*/imgs, curv_*/metadata)",
                    data_ranges=PATHFINDER_RANGES, data_choices={"difficulty": difficulties},
                    check_data=_check_pathfinder, **fields)


# Vocabulary sizes follow LRA's own tokenisation (docs/lra_data.md section 2): ListOps uses our fixed
# 15-symbol vocabulary plus padding (no OOV id: unknown symbols are an error); text and retrieval use
# ByteTextEncoder (byte + 1, pad 0); image and pathfinder use the raw pixel value 0..255 as the id.
register_task(TaskSpec(
    name="listops", seq_len=2000, vocab_size=16, num_classes=10, train_size=96_000,
    loaders={"generated": _listops_generated, "files": _listops_files}, reads="basic_{train,val,test}.tsv",
    download="listops", data_section="listops", data_ranges=listops.GENERATOR_RANGES,
    check_data=listops.check_generator_config, description="ListOps: evaluate nested MIN/MAX/MED/SM"))
register_task(TaskSpec(
    name="text", seq_len=4096, vocab_size=257, num_classes=2, train_size=22_500, loaders={"files": _text_files},
    reads="the aclImdb tree or train.tsv/test.tsv", download="text",
    description="IMDB sentiment on raw bytes, id byte+1, pad 0 (lra.text)"))
register_task(TaskSpec(
    name="retrieval", seq_len=4000, vocab_size=257, num_classes=2, head=HeadKind.DUAL, dual_input=True,
    train_size=147_086, loaders={"files": _retrieval_files}, reads="new_aan_pairs.{train,eval,test}.tsv",
    download="retrieval",
    description="AAN citation link between two byte documents, id byte+1, pad 0 (lra.retrieval)"))
register_task(TaskSpec(
    name="image", seq_len=1024, vocab_size=256, num_classes=10, padded=False, train_size=45_000,
    loaders={"files": _cifar_files}, reads="cifar-10-batches-py", download="image",
    description="CIFAR-10 grayscale pixels 0..255, never padded (lra.image)"))
register_task(_pathfinder_spec(name="pathfinder", seq_len=1024, download="pathfinder",
                               description="Pathfinder 32x32 pixels 0..255, never padded (lra.pathfinder)"))
register_task(_pathfinder_spec(name="pathx", seq_len=16384, download="pathx",
                               description="Path-X 128x128 pixels 0..255, never padded (lra.pathfinder)"))
# Extra pixel tasks (not in LRA): 28x28 IDX images as 784 pixels 0..255, never padded (lra.image).
for _name, _what in (("mnist", "sequential MNIST pixels"), ("pmnist", "MNIST pixels in a fixed permuted order"),
                     ("fashion_mnist", "sequential Fashion-MNIST")):
    register_task(TaskSpec(name=_name, seq_len=784, vocab_size=256, num_classes=10, padded=False,
                           loaders={"files": _idx_files}, reads="the IDX image and label files", download=_name,
                           description=f"{_what} (lra.image)"))
