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

import numpy as np


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Static description of one LRA task.

    Attributes:
      name: registry key, e.g. "listops".
      seq_len: tokens per input sequence (per document for dual-input tasks).
      vocab_size: number of input ids including the padding id (ids are 0..vocab_size-1).
      num_classes: number of output classes.
      dual_input: True when each example holds two sequences (retrieval).
      pad_id: id used for padding.
      padded: whether sequences can be padded. False for pixel tasks, whose every position is real (pixel 0
        is black, not padding: LRA's `inputs > 0` mask is a known quirk not copied here).
      description: one line for humans.
    """

    name: str
    seq_len: int
    vocab_size: int
    num_classes: int
    dual_input: bool
    pad_id: int = 0
    description: str = ""
    padded: bool = True
    train_size: int = 0  # examples in the official training split (turns a recipe's epochs into steps)

    def __post_init__(self) -> None:
        for field in ("seq_len", "vocab_size", "num_classes"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TaskSpec {self.name!r}: {field} must be a positive int, got {value!r}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(
                f"TaskSpec {self.name!r}: pad_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_id}"
            )


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


# Vocabulary sizes follow LRA's own tokenisation (docs/lra_data.md section 2): ListOps uses our fixed
# 15-symbol vocabulary plus padding (no OOV id: unknown symbols are an error); text and retrieval use
# ByteTextEncoder (byte + 1, pad 0); image and pathfinder use the raw pixel value 0..255 as the id.
register_task(TaskSpec("listops", 2000, 16, 10, False, train_size=96_000,
                       description="ListOps: evaluate nested MIN/MAX/MED/SM"))
register_task(
    TaskSpec("text", 4096, 257, 2, False, train_size=22_500, description="IMDB sentiment on raw bytes, id byte+1, pad 0 (lra.text)")
)
register_task(
    TaskSpec(
        "retrieval",
        4000,
        257,
        2,
        True,
        train_size=147_086,
        description="AAN citation link between two byte documents, id byte+1, pad 0 (lra.retrieval)",
    )
)
register_task(
    TaskSpec(
        "image",
        1024,
        256,
        10,
        False,
        padded=False,
        train_size=45_000,
        description="CIFAR-10 grayscale pixels 0..255, never padded (lra.image)",
    )
)
register_task(
    TaskSpec(
        "pathfinder",
        1024,
        256,
        2,
        False,
        padded=False,
        train_size=160_000,
        description="Pathfinder 32x32 pixels 0..255, never padded (lra.pathfinder)",
    )
)
register_task(
    TaskSpec(
        "pathx",
        16384,
        256,
        2,
        False,
        padded=False,
        train_size=160_000,
        description="Path-X 128x128 pixels 0..255, never padded (lra.pathfinder)",
    )
)
# Extra pixel tasks (not in LRA): 28x28 IDX images as 784 pixels 0..255, never padded (lra.image).
register_task(TaskSpec("mnist", 784, 256, 10, False, padded=False, description="sequential MNIST pixels (lra.image)"))
register_task(
    TaskSpec(
        "pmnist", 784, 256, 10, False, padded=False, description="MNIST pixels in a fixed permuted order (lra.image)"
    )
)
register_task(
    TaskSpec("fashion_mnist", 784, 256, 10, False, padded=False, description="sequential Fashion-MNIST (lra.image)")
)


@dataclasses.dataclass
class Split:
    """One split of a task, fully in memory.

    Attributes:
      inputs: (n, L) int32, or (n, 2, L) int32 for dual-input tasks; padded with the task's pad_id. May be
        uint8 (ids < 256, e.g. a read-only memmap of pixels); lra.batching returns int32 batches either way.
      labels: (n,) int32.
      name: "train", "val" or "test".
      num_truncated: how many examples were longer than L and were cut to L when building `inputs`.
    """

    inputs: np.ndarray
    labels: np.ndarray
    name: str
    num_truncated: int = 0

    def __post_init__(self) -> None:
        # uint8 inputs are pixel ids held compactly (e.g. a memory-mapped image cache); batches come out int32.
        if self.inputs.dtype not in (np.int32, np.uint8) or self.labels.dtype != np.int32:
            raise ValueError(
                f"Split {self.name!r}: inputs must be int32 or uint8 and labels int32, got {self.inputs.dtype} "
                f"and {self.labels.dtype}"
            )
        if self.labels.ndim != 1 or self.inputs.ndim not in (2, 3) or len(self.inputs) != len(self.labels):
            raise ValueError(
                f"Split {self.name!r}: expected inputs (n, L) or (n, 2, L) and labels (n,), "
                f"got {self.inputs.shape} and {self.labels.shape}"
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
    values, counts = np.unique(labels_train, return_counts=True)
    mode = values[np.argmax(counts)]  # np.unique sorts, argmax takes the first maximum: smallest label wins
    return float(np.mean(labels_eval == mode))
