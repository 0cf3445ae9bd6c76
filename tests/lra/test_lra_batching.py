"""Tests for lra/batching.py, and for the task registry and Split container of lra/tasks.py."""

from __future__ import annotations

import numpy as np
import pytest

from lra import tasks
from lra.batching import BatchSchedule, eval_batches, num_eval_batches
from lra.tasks import Split, TaskSpec, UnknownTaskError, get_task, majority_rate, register_task, task_names


def indexed_split(num_examples: int, seq_len: int = 3, dual: bool = False) -> Split:
    """A split whose row i holds i in every input cell and i % 10 as label, so batches reveal their indices."""
    shape = (num_examples, 2, seq_len) if dual else (num_examples, seq_len)
    inputs = np.broadcast_to(np.arange(num_examples).reshape((-1,) + (1,) * (len(shape) - 1)), shape)
    return Split(
        inputs=inputs.astype(np.int32), labels=(np.arange(num_examples) % 10).astype(np.int32), name="t"
    )


# -------------------------------------------------------------------------------------------- training


def test_same_seed_and_step_give_the_same_batch_on_fresh_schedules():
    first, second = BatchSchedule(103, 8, seed=7), BatchSchedule(103, 8, seed=7)
    for step in (0, 5, 12, 13, 40):
        np.testing.assert_array_equal(first.global_indices(step), second.global_indices(step))
    assert not np.array_equal(BatchSchedule(103, 8, seed=8).global_indices(0), first.global_indices(0))


def test_epoch_permutation_is_numpy_default_rng_of_seed_and_epoch():
    schedule = BatchSchedule(50, 10, seed=3)
    for epoch in (0, 1, 4):
        expected = np.random.default_rng([3, epoch]).permutation(50)
        np.testing.assert_array_equal(schedule.epoch_permutation(epoch), expected)
    assert not np.array_equal(schedule.epoch_permutation(0), schedule.epoch_permutation(1))


@pytest.mark.parametrize(("num_examples", "batch_size"), [(96, 8), (103, 8), (10, 10)])
def test_each_epoch_visits_examples_at_most_once_and_all_when_divisible(num_examples, batch_size):
    schedule = BatchSchedule(num_examples, batch_size, seed=1)
    assert schedule.steps_per_epoch == num_examples // batch_size
    for epoch in range(3):
        steps = range(epoch * schedule.steps_per_epoch, (epoch + 1) * schedule.steps_per_epoch)
        seen = np.concatenate([schedule.global_indices(step) for step in steps])
        assert len(seen) == len(set(seen.tolist())) == schedule.steps_per_epoch * batch_size
        np.testing.assert_array_equal(seen, schedule.epoch_permutation(epoch)[: len(seen)])
        if num_examples % batch_size == 0:
            assert sorted(seen.tolist()) == list(range(num_examples))


def test_without_shuffle_every_epoch_is_in_order():
    schedule = BatchSchedule(20, 5, seed=0, shuffle=False)
    np.testing.assert_array_equal(schedule.global_indices(1), [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(schedule.global_indices(5), [5, 6, 7, 8, 9])  # epoch 1, step 1


def test_process_shards_are_contiguous_and_cover_the_global_batch():
    split = indexed_split(64)
    schedules = [BatchSchedule(64, 12, seed=2, process_index=p, process_count=3) for p in range(3)]
    for step in (0, 3, 6, 11):
        global_indices = schedules[0].global_indices(step)
        shards = [schedule.local_indices(step) for schedule in schedules]
        assert all(len(shard) == 4 for shard in shards)
        np.testing.assert_array_equal(np.concatenate(shards), global_indices)
        batches = [schedule.batch(split, step) for schedule in schedules]
        np.testing.assert_array_equal(np.concatenate([b["inputs"][:, 0] for b in batches]), global_indices)
        np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches]), global_indices % 10)


def test_batch_gathers_the_right_rows_for_dual_inputs():
    split = indexed_split(30, seq_len=4, dual=True)
    schedule = BatchSchedule(30, 6, seed=9)
    batch = schedule.batch(split, 7)
    assert batch["inputs"].shape == (6, 2, 4) and batch["inputs"].dtype == np.int32
    np.testing.assert_array_equal(batch["inputs"][:, 1, 2], schedule.local_indices(7))


def test_resuming_at_any_step_reproduces_the_uninterrupted_sequence():
    split = indexed_split(37)
    uninterrupted = BatchSchedule(37, 4, seed=11)
    reference = [uninterrupted.batch(split, step)["inputs"] for step in range(30)]
    for resume_step in (0, 9, 17):
        resumed = BatchSchedule(37, 4, seed=11)  # a fresh object, as after a restart
        for step in range(resume_step, 30):
            np.testing.assert_array_equal(resumed.batch(split, step)["inputs"], reference[step])
    # Jumping backwards (evaluation of an old step) does not disturb the cached permutation.
    np.testing.assert_array_equal(uninterrupted.batch(split, 2)["inputs"], reference[2])


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((10, 6, 0), {"process_count": 4}, "divisible by process_count"),
        ((10, 4, 0), {"process_index": 2, "process_count": 2}, "process_index"),
        ((5, 8, 0), {}, "global_batch_size <= num_examples"),
        ((10, 0, 0), {}, "global_batch_size"),
        ((10, 2, -1), {}, "seed"),
    ],
)
def test_schedule_rejects_bad_layouts(args, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        BatchSchedule(*args, **kwargs)


def test_schedule_rejects_negative_steps_and_mismatched_splits():
    schedule = BatchSchedule(10, 2, seed=0)
    with pytest.raises(ValueError, match="step"):
        schedule.global_indices(-1)
    with pytest.raises(ValueError, match="11 examples"):
        schedule.batch(indexed_split(11), 0)


# ------------------------------------------------------------------------------------------ evaluation


@pytest.mark.parametrize(
    ("num_examples", "batch_size", "process_count"), [(23, 8, 1), (23, 8, 2), (16, 8, 4), (5, 12, 3)]
)
def test_eval_batches_cover_every_example_once_with_exact_weights(num_examples, batch_size, process_count):
    split = indexed_split(num_examples)
    per_process = [
        list(eval_batches(split, batch_size, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    expected_batches = -(-num_examples // batch_size)
    assert num_eval_batches(num_examples, batch_size) == expected_batches
    assert all(len(batches) == expected_batches for batches in per_process)
    real_rows = []
    for batch_index in range(expected_batches):
        # Rows of one global batch: process 0's slice, then process 1's, ... in split order.
        batches = [per_process[p][batch_index] for p in range(process_count)]
        for batch in batches:
            assert batch["inputs"].shape == (batch_size // process_count, 3)
            assert batch["weights"].dtype == np.float32
            assert set(np.unique(batch["weights"]).tolist()) <= {0.0, 1.0}
            real = batch["weights"] == 1
            real_rows.extend(batch["inputs"][real, 0].tolist())
            np.testing.assert_array_equal(batch["labels"][real], batch["inputs"][real, 0] % 10)
            np.testing.assert_array_equal(batch["inputs"][~real], split.inputs[np.zeros((~real).sum(), int)])
    assert real_rows == list(range(num_examples))


def test_weighted_accuracy_from_eval_batches_is_exact():
    split = indexed_split(29)
    predictions = np.where(np.arange(29) % 3 == 0, np.arange(29) % 10, -1)  # right on every third example
    correct = weight = 0.0
    start = 0
    for batch in eval_batches(split, 8):
        rows = np.arange(start, start + 8)
        predicted = np.where(rows < 29, predictions[np.minimum(rows, 28)], 0)
        correct += float(np.sum(batch["weights"] * (predicted == batch["labels"])))
        weight += float(np.sum(batch["weights"]))
        start += 8
    assert weight == 29 and correct / weight == pytest.approx(np.mean(np.arange(29) % 3 == 0))


def test_eval_batches_reject_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        next(eval_batches(indexed_split(10), 5, process_count=2))
    with pytest.raises(ValueError, match="batch_size"):
        next(eval_batches(indexed_split(10), 0))


# ------------------------------------------------------------------------------- tasks: specs, splits


def test_registered_specs_follow_lra_data_section_2():
    listops = get_task("listops")
    assert (listops.seq_len, listops.vocab_size, listops.num_classes, listops.dual_input) == (
        2000,
        16,
        10,
        False,
    )
    assert get_task("retrieval").dual_input and get_task("retrieval").seq_len == 4000
    assert (get_task("pathx").seq_len, get_task("image").num_classes, get_task("text").vocab_size) == (
        16384,
        10,
        257,
    )
    assert {"image", "listops", "pathfinder", "pathx", "retrieval", "text"} <= set(task_names())
    assert task_names() == sorted(task_names())


def test_unknown_task_error_lists_the_registered_tasks():
    with pytest.raises(KeyError) as error:
        get_task("listopz")
    assert isinstance(error.value, UnknownTaskError)
    message = str(error.value)
    assert message.startswith("unknown LRA task 'listopz'") and ", ".join(task_names()) in message


def test_register_task_refuses_silent_replacement(monkeypatch):
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))  # keep the global registry untouched
    spec = TaskSpec(name="toy", seq_len=8, vocab_size=4, num_classes=2)
    assert register_task(spec) is spec and register_task(spec) is spec  # identical: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_task(TaskSpec(name="toy", seq_len=16, vocab_size=4, num_classes=2))
    register_task(TaskSpec(name="toy", seq_len=16, vocab_size=4, num_classes=2), overwrite=True)
    assert get_task("toy").seq_len == 16


def test_task_spec_validates_its_fields():
    with pytest.raises(ValueError, match="seq_len"):
        TaskSpec(name="bad", seq_len=0, vocab_size=4, num_classes=2)
    with pytest.raises(ValueError, match="pad_id"):
        TaskSpec(name="bad", seq_len=8, vocab_size=4, num_classes=2, pad_id=4)


def test_split_validates_shapes_and_dtypes():
    assert len(indexed_split(7)) == 7
    with pytest.raises(ValueError, match="int32"):
        Split(inputs=np.zeros((3, 4), np.int64), labels=np.zeros(3, np.int32), name="x")
    with pytest.raises(ValueError, match="labels"):
        Split(inputs=np.zeros((3, 4), np.int32), labels=np.zeros(2, np.int32), name="x")


def test_majority_rate_uses_the_train_mode():
    train = np.array([1, 2, 2, 3, 2, 1])
    assert majority_rate(train, np.array([2, 2, 0, 1])) == 0.5  # train mode 2
    assert majority_rate(np.array([4, 3, 4, 3]), np.array([3, 3, 4])) == pytest.approx(2 / 3)  # tie -> 3
    with pytest.raises(ValueError, match="non-empty"):
        majority_rate(np.array([]), np.array([1]))
