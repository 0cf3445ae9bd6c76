"""Deterministic batching: the order of examples is a function of (seed, epoch) only.

Training batches: global step s belongs to epoch s // steps_per_epoch and takes the (s % steps_per_epoch)-th
block of `global_batch_size` indices of that epoch's permutation, `np.random.default_rng([seed, epoch])`.
No iterator state exists, so a run restarted at any step sees exactly the batches it would have seen, and
each process reads only its contiguous slice of every global batch (multi-host data parallelism).

Evaluation batches walk a split in order with a fixed batch size; the last batch is padded and carries
`weights` (1 real, 0 padding) so that weighted sums give exact metrics.

Shapes: a batch holds inputs (b, L) or (b, 2, L) int32, labels (b,) int32 and, for evaluation,
weights (b,) float32, where b is the per-process batch size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lra.tasks import Split


def _check_process(process_index: int, process_count: int, batch_size: int, what: str) -> int:
    """Validate the process layout and return the per-process batch size."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"expected 0 <= process_index < process_count, got process_index={process_index}, "
            f"process_count={process_count}"
        )
    if batch_size % process_count:
        raise ValueError(
            f"{what}={batch_size} must be divisible by process_count={process_count} so that every process "
            "gets the same number of rows"
        )
    return batch_size // process_count


class BatchSchedule:
    """Which examples form training batch `step`, for every step of every epoch.

    Args:
      num_examples: size n of the training split.
      global_batch_size: rows per step summed over all processes.
      seed: non-negative int; epoch e uses the permutation `np.random.default_rng([seed, e]).permutation(n)`.
      process_index, process_count: this process's rank and the number of processes. Process p reads rows
        [p*b/P, (p+1)*b/P) of each global batch of size b.
      shuffle: False keeps the identity order in every epoch.

    Each epoch has n // global_batch_size steps; the n % global_batch_size examples left at the end of the
    epoch's permutation are skipped in that epoch (a different subset each epoch when shuffling).
    """

    def __init__(
        self,
        num_examples: int,
        global_batch_size: int,
        seed: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
    ) -> None:
        if global_batch_size < 1 or num_examples < global_batch_size:
            raise ValueError(
                f"expected 1 <= global_batch_size <= num_examples, got global_batch_size={global_batch_size}, "
                f"num_examples={num_examples}"
            )
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        self.local_batch_size = _check_process(
            process_index, process_count, global_batch_size, "global_batch_size"
        )
        self.num_examples = int(num_examples)
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.shuffle = bool(shuffle)
        self._cached_epoch: int | None = None
        self._cached_permutation: np.ndarray | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the incomplete last batch is dropped)."""
        return self.num_examples // self.global_batch_size

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """(n,) int64 order of the examples in `epoch`. Cost O(n); the latest epoch's order is cached."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self._cached_epoch != epoch:
            if self.shuffle:
                permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            else:
                permutation = np.arange(self.num_examples)
            permutation.setflags(write=False)  # shared by every call for this epoch
            self._cached_epoch, self._cached_permutation = epoch, permutation
        return self._cached_permutation

    def global_indices(self, step: int) -> np.ndarray:
        """(global_batch_size,) indices of all rows of global step `step` (over every process)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.global_batch_size
        return self.epoch_permutation(epoch)[start : start + self.global_batch_size]

    def local_indices(self, step: int) -> np.ndarray:
        """(local_batch_size,) indices read by this process at `step`: its contiguous slice of the global batch."""
        start = self.process_index * self.local_batch_size
        return self.global_indices(step)[start : start + self.local_batch_size]

    def batch(self, split: Split, step: int) -> dict[str, np.ndarray]:
        """This process's rows of step `step`: {"inputs": (b, ...) int32, "labels": (b,) int32}."""
        if len(split) != self.num_examples:
            raise ValueError(
                f"split {split.name!r} has {len(split)} examples but this schedule was built for {self.num_examples}"
            )
        indices = self.local_indices(step)
        return {"inputs": np.asarray(split.inputs[indices], dtype=np.int32),
                "labels": np.asarray(split.labels[indices], dtype=np.int32)}


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    """Batches `eval_batches` yields: ceil(num_examples / batch_size), the same on every process."""
    return -(-num_examples // batch_size)


def eval_batches(
    split: Split, batch_size: int, *, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Walk `split` in order in global batches of `batch_size`; yield this process's slice of each.

    Every process yields the same number of batches, num_eval_batches(len(split), batch_size), each of
    batch_size / process_count rows. Rows past the end of the split are padding: copies of example 0 (a real
    input, so masked pooling never sees an all-padding row) with weight 0. Real rows have weight 1, so
    sum(weights * correct) / sum(weights) over all batches and processes is the exact accuracy.

    Yields:
      {"inputs": (b, ...) int32, "labels": (b,) int32, "weights": (b,) float32}, b = batch_size / process_count.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    local_batch_size = _check_process(process_index, process_count, batch_size, "batch_size")
    num_examples = len(split)
    if num_examples == 0:
        raise ValueError(f"split {split.name!r} is empty; nothing to evaluate")
    for batch_index in range(num_eval_batches(num_examples, batch_size)):
        start = batch_index * batch_size + process_index * local_batch_size
        positions = np.arange(start, start + local_batch_size)
        real = positions < num_examples
        indices = np.where(real, positions, 0)
        yield {
            "inputs": np.asarray(split.inputs[indices], dtype=np.int32),  # uint8 splits widen here
            "labels": np.asarray(split.labels[indices], dtype=np.int32),
            "weights": real.astype(np.float32),
        }
