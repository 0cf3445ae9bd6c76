"""Hostile inputs for every reader in lra/: truncated, garbled, empty, oversized and wrongly typed files.

Every test first writes files in exactly the official formats (with the writers of tests/test_lra_*.py), then
mutates them with hypothesis and accepts exactly two outcomes:

- the reader succeeds and its output is well formed (some mutations leave a valid file, e.g. a changed pixel);
- it raises `LRADataError` whose message names the file, and the line or record when one is to blame.

Anything else fails the test: another exception type (an unrelated traceback from numpy, pickle, zlib, ...), a
hang (`guarded` arms a wall-clock alarm) or a large allocation (`guarded` watches the traced allocation peak,
which counts numpy's buffers and Python's bytes, even when the kernel would only reserve the pages). So a header
that declares gigabytes must be refused before anything that large is allocated.

Examples are derandomised (the same on every run) and bounded in number, so the module runs in seconds.
"""

from __future__ import annotations

import _codecs
import contextlib
import gzip
import io
import os
import pickle
import random
import shutil
import signal
import struct
import tempfile
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lra import cache, image, listops, retrieval, text
from lra import pathfinder as pf
from lra.errors import LRADataError
from tests.lra.test_lra_image import idx_bytes, make_cifar_batch, official_pickle
from tests.lra.test_lra_retrieval import ROWS as AAN_ROWS
from tests.lra.test_lra_retrieval import write_aan
from tests.lra.test_lra_text import TEST as IMDB_TEST
from tests.lra.test_lra_text import TRAIN as IMDB_TRAIN
from tests.lra.test_lra_text import write_aclimdb
from tests.lra.test_lra_text import write_tsv as write_imdb_tsv


def hostile(max_examples: int = 30):
    """Derandomised hypothesis settings: reproducible in CI, no example database, no deadline."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


TIME_LIMIT_S = 20.0
MEMORY_LIMIT = 48 << 20  # bytes; every fixture here is well under 1 MB


@contextlib.contextmanager
def guarded(memory: int = MEMORY_LIMIT, seconds: float = TIME_LIMIT_S):
    """Fail when the body runs longer than `seconds` or its traced allocation peak exceeds `memory` bytes."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"reader still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1]
        if not was_tracing:
            tracemalloc.stop()
    assert peak <= memory, f"allocated {peak / 2**20:.1f} MiB (limit {memory / 2**20:.0f} MiB)"


def outcome(call, *args, **kwargs):
    """(result, None) or (None, LRADataError) of call(*args, **kwargs), guarded; other exceptions propagate."""
    with guarded():
        try:
            return call(*args, **kwargs), None
        except LRADataError as error:
            return None, error


def count_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def check_names(error: LRADataError, paths, data: bytes | None = None) -> None:
    """The message names one of `paths`; a "<path>, line N" it gives lies inside the file's `data`."""
    message = str(error)
    paths = [paths] if isinstance(paths, str) else list(paths)
    assert any(path in message for path in paths), f"{message!r} names none of {paths}"
    if data is not None and ", line " in message:
        line = int(message.split(", line ", 1)[1].split(":", 1)[0])
        assert 1 <= line <= max(count_lines(data), 1), message


# ---------------------------------------------------------------------------------------------------------
# Byte-level mutations of a valid file.

MUTATIONS = ("truncate", "flip", "insert", "delete", "duplicate", "garbage", "empty")


@st.composite
def mutated(draw, data: bytes, head: int = 256) -> bytes:
    """`data` truncated at a random byte, with bytes flipped, inserted or deleted, a tail duplicated (oversized),
    replaced by garbage, or emptied. Positions favour the first `head` bytes, where headers live."""
    size = len(data)
    position = st.one_of(st.integers(0, max(0, min(size, head) - 1)), st.integers(0, max(0, size - 1)))
    kind = draw(st.sampled_from(MUTATIONS))
    if kind == "truncate":
        return data[: draw(st.integers(0, max(0, size - 1)))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(position)] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "insert":
        at = draw(position)
        return data[:at] + draw(st.binary(min_size=1, max_size=24)) + data[at:]
    if kind == "delete":
        start = draw(position)
        return data[:start] + data[start + draw(st.integers(1, 64)) :]
    if kind == "duplicate":
        return data + data[draw(position) :]
    if kind == "garbage":
        return draw(st.binary(max_size=96))
    return b""


def check_mutated_file(data, path: str, load, check, *, head: int = 256, text_lines: bool = True) -> None:
    """Overwrites `path` with a mutation of its bytes; then `load()` either succeeds, its result passing `check`,
    or raises LRADataError naming the file (and, for text files, a line inside the mutated content)."""
    content = data.draw(mutated(read_bytes(path), head=head))
    write_bytes(path, content)
    result, error = outcome(load)
    if error is None:
        check(result)
    else:
        check_names(error, path, content if text_lines else None)


def write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


# ---------------------------------------------------------------------------------------------------------
# ListOps TSV.


def listops_rows(seed: int, count: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        tree, _ = listops.generate_tree(rng, 1, 3, 3)
        rows.append((listops.to_string(tree), listops.to_value(tree)))
    return rows


def write_listops(directory: str) -> dict[str, list[tuple[str, int]]]:
    splits = {split: listops_rows(index, 6) for index, split in enumerate(listops.SPLITS)}
    listops.write_dataset(directory, splits)
    return splits


def check_listops_splits(splits) -> None:
    for split in splits.values():
        assert split.inputs.dtype == np.int32 and split.inputs.shape[1] == 40
        assert split.inputs.min() >= 0 and split.inputs.max() < listops.VOCAB_SIZE
        assert split.labels.dtype == np.int32 and set(split.labels.tolist()) <= set(range(10))


@hostile(40)
@given(data=st.data(), split=st.sampled_from(listops.SPLITS))
def test_listops_mutated_files_fail_cleanly(data, split):
    with tempfile.TemporaryDirectory() as directory:
        write_listops(directory)
        check_mutated_file(data, listops.split_path(directory, split),
                           lambda: listops.load_listops(directory, seq_len=40, use_cache=False),
                           check_listops_splits)


LISTOPS_FAULTS = {
    "three columns": (lambda source, target: f"{source}\t{target}\t{target}".encode(), "2 tab-separated columns"),
    "one column": (lambda source, target: source.encode(), "2 tab-separated columns"),
    "blank line": (lambda source, target: b"", "2 tab-separated columns"),
    "target out of range": (lambda source, target: f"{source}\t{target + 10}".encode(), "integer 0..9"),
    "float target": (lambda source, target: f"{source}\t{target}.0".encode(), "integer 0..9"),
    "not UTF-8": (lambda source, target: source.encode()[:4] + b"\xff\xfe" + f"\t{target}".encode(), "not UTF-8"),
    "unknown symbol": (lambda source, target: f"{source} [AVG\t{target}".encode(), "unknown ListOps symbol"),
    "empty source": (lambda source, target: f"( )\t{target}".encode(), "empty ListOps expression"),
}


@hostile(30)
@given(fault=st.sampled_from(sorted(LISTOPS_FAULTS)), row=st.integers(0, 5), split=st.sampled_from(listops.SPLITS))
def test_listops_malformed_rows_name_file_and_line(fault, row, split):
    make_line, fragment = LISTOPS_FAULTS[fault]
    with tempfile.TemporaryDirectory() as directory:
        rows = write_listops(directory)[split]
        path = listops.split_path(directory, split)
        lines = read_bytes(path).split(b"\r\n")
        lines[row + 1] = make_line(*rows[row])  # line 1 is the header
        write_bytes(path, b"\r\n".join(lines))
        _, error = outcome(listops.load_listops, directory, seq_len=40, use_cache=False)
        assert error is not None and f"{path}, line {row + 2}: " in str(error) and fragment in str(error), error


def test_listops_header_only_and_empty_files_are_errors(tmp_path):
    write_listops(str(tmp_path))
    path = listops.split_path(str(tmp_path), "val")
    for content, fragment in ((b"Source\tTarget\r\n", "no rows"), (b"", "empty file")):
        write_bytes(path, content)
        with pytest.raises(LRADataError, match=fragment) as error:
            listops.load_listops(str(tmp_path), seq_len=40, use_cache=False)
        assert path in str(error.value)


# ---------------------------------------------------------------------------------------------------------
# The token caches (lra/cache.py), shared by ListOps, IMDB and AAN: a damaged cache is rebuilt, never trusted.


def assert_same_splits(first, second) -> None:
    for name in first:
        np.testing.assert_array_equal(first[name].inputs, second[name].inputs)
        np.testing.assert_array_equal(first[name].labels, second[name].labels)
        assert first[name].num_truncated == second[name].num_truncated


@hostile(30)
@given(data=st.data())
def test_damaged_cache_is_rebuilt_and_gives_the_same_splits(data):
    with tempfile.TemporaryDirectory() as directory:
        write_listops(directory)
        expected = listops.load_listops(directory, seq_len=40, use_cache=False)
        listops.load_listops(directory, seq_len=40)  # writes the cache
        cache_path = os.path.join(directory, "basic_tokens.cache.npz")
        write_bytes(cache_path, data.draw(mutated(read_bytes(cache_path), head=4096)))
        splits, error = outcome(listops.load_listops, directory, seq_len=40)
        assert error is None, error
        assert_same_splits(expected, splits)


def npy_member(header: dict, payload: bytes) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + payload


@hostile(12)
@given(shape=st.tuples(st.integers(1 << 31, 1 << 40)), descr=st.sampled_from(["|u1", "<i8", "<U100"]))
def test_cache_members_declaring_huge_arrays_are_not_allocated(shape, descr):
    """A cache whose key matches but whose member header declares a huge array is a miss, not an allocation."""
    with tempfile.TemporaryDirectory() as directory:
        check_huge_cache_member(directory, shape, descr)


def check_huge_cache_member(directory: str, shape: tuple[int, ...], descr: str) -> None:
    key = cache.cache_key("test", 1)
    path = os.path.join(directory, "x.npz")
    cache.write_cache(path, key, {"flat": np.arange(10, dtype=np.uint8)})
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("key.npy", npy_member_of(np.asarray(key)))
        archive.writestr("flat.npy", npy_member(header, b"\x00" * 64))
    result, error = outcome(cache.read_cache, path, key, ("flat",))
    assert result is None and error is None


def npy_member_of(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array)
    return out.getvalue()


def test_cache_without_an_expected_array_is_a_miss(tmp_path):
    key = cache.cache_key("test", 2)
    path = str(tmp_path / "x.npz")
    cache.write_cache(path, key, {"flat": np.arange(3, dtype=np.uint8)})
    assert cache.read_cache(path, key, ("flat",))["flat"].tolist() == [0, 1, 2]
    assert cache.read_cache(path, key, ("flat", "lengths")) is None
    assert cache.read_cache(path, "other key", ("flat",)) is None


# ---------------------------------------------------------------------------------------------------------
# AAN TSV (retrieval).


def check_retrieval_splits(splits) -> None:
    for split in splits.values():
        assert split.inputs.dtype == np.int32 and split.inputs.shape[1:] == (2, 16)
        assert split.inputs.min() >= 0 and split.inputs.max() <= 256
        assert set(split.labels.tolist()) <= {0, 1}


@hostile(40)
@given(data=st.data(), name=st.sampled_from(sorted(retrieval.SPLIT_FILES.values())))
def test_aan_mutated_files_fail_cleanly(data, name):
    with tempfile.TemporaryDirectory() as directory:
        write_aan(directory)
        check_mutated_file(data, os.path.join(directory, name),
                           lambda: retrieval.load_retrieval(directory, seq_len=16, use_cache=False),
                           check_retrieval_splits)


@hostile(30)
@given(
    columns=st.integers(0, 9).filter(lambda n: n != 5),
    label=st.binary(max_size=8).filter(lambda b: b.strip() not in (b"0", b"1", b"0.0", b"1.0")),
    fault=st.sampled_from(["columns", "label"]),
    row=st.integers(0, 2),
)
def test_aan_malformed_rows_name_file_and_line(columns, label, fault, row):
    with tempfile.TemporaryDirectory() as directory:
        rows = {split: list(rows) for split, rows in AAN_ROWS.items()}
        if fault == "columns":
            rows["train"][row] = tuple(b"x" for _ in range(columns)) if columns else (b"",)
        else:
            rows["train"][row] = (label.replace(b"\t", b" ").replace(b"\n", b" "),) + rows["train"][row][1:]
        write_aan(directory, rows)
        path = os.path.join(directory, retrieval.SPLIT_FILES["train"])
        splits, error = outcome(retrieval.load_retrieval, directory, seq_len=16, use_cache=False)
        if error is None:  # a label such as b"+1" or b"1e0" is a number equal to 1, as TF parses it
            assert fault == "label" and float(label) in (0.0, 1.0)
            return
        assert f"{path}, line {row + 1}: " in str(error), error


@hostile(20)
@given(
    texts=st.lists(
        st.binary(max_size=40).map(lambda b: b.replace(b"\t", b"").replace(b"\n", b"")), min_size=2, max_size=2
    )
)
def test_aan_documents_of_arbitrary_bytes_are_tokenised_byte_for_byte(texts):
    """Non-UTF-8 bytes, NULs and lone '\\r' are valid document content, not errors."""
    with tempfile.TemporaryDirectory() as directory:
        rows = dict(AAN_ROWS, val=[(b"1", b"a", b"b", texts[0], texts[1])])
        write_aan(directory, rows)
        splits, error = outcome(retrieval.load_retrieval, directory, seq_len=48, use_cache=False)
        assert error is None, error
        for column, document in enumerate(texts):
            if column == 1 and document.endswith(b"\r"):
                document = document[:-1]  # the line's '\r\n' ending, as documented
            expected = [b + 1 for b in document] + [0] * (48 - len(document))
            assert splits["val"].inputs[0, column].tolist() == expected


# ---------------------------------------------------------------------------------------------------------
# IMDB: the TSV export and the aclImdb tree.


def write_imdb_tsv_dir(directory: str) -> None:
    write_imdb_tsv(os.path.join(directory, "train.tsv"), IMDB_TRAIN, header=True)
    write_imdb_tsv(os.path.join(directory, "test.tsv"), IMDB_TEST)


def check_text_splits(splits) -> None:
    for split in splits.values():
        assert split.inputs.dtype == np.int32 and split.inputs.shape[1] == 32 and len(split) >= 1
        assert split.inputs.min() >= 0 and split.inputs.max() <= 256
        assert set(split.labels.tolist()) <= {0, 1}


@hostile(40)
@given(data=st.data(), name=st.sampled_from(["train.tsv", "test.tsv"]))
def test_imdb_tsv_mutated_files_fail_cleanly(data, name):
    with tempfile.TemporaryDirectory() as directory:
        write_imdb_tsv_dir(directory)
        check_mutated_file(data, os.path.join(directory, name),
                           lambda: text.load_text(directory, seq_len=32, use_cache=False), check_text_splits)


IMDB_FAULTS = {
    "no tab": (b"1 good film", "found no tab"),
    "label 2": (b"2\tgood film", "label must be 0 (neg) or 1 (pos)"),
    "label text": (b"pos\tgood film", "label must be 0 (neg) or 1 (pos)"),
    "empty text": (b"0\t  \t ", "empty text"),
    "blank line": (b"", "found no tab"),
}


@hostile(20)
@given(fault=st.sampled_from(sorted(IMDB_FAULTS)), row=st.integers(0, 3))
def test_imdb_tsv_malformed_rows_name_file_and_line(fault, row):
    line, fragment = IMDB_FAULTS[fault]
    with tempfile.TemporaryDirectory() as directory:
        write_imdb_tsv_dir(directory)
        path = os.path.join(directory, "test.tsv")
        lines = read_bytes(path).split(b"\n")
        lines[row] = line
        write_bytes(path, b"\n".join(lines))
        _, error = outcome(text.load_text, directory, seq_len=32, use_cache=False)
        assert error is not None and f"{path}, line {row + 1}: " in str(error) and fragment in str(error), error


def test_imdb_too_few_training_reviews_is_a_data_error(tmp_path):
    write_imdb_tsv_dir(str(tmp_path))
    write_bytes(str(tmp_path / "train.tsv"), b"1\tthe only review\n")
    with pytest.raises(LRADataError, match=r"train\.tsv: too few training examples.*of 1 training examples"):
        text.load_text(str(tmp_path), seq_len=32, use_cache=False)


@hostile(30)
@given(
    data=st.data(),
    where=st.sampled_from([("train", "neg"), ("train", "pos"), ("test", "neg"), ("test", "pos")]),
    as_directory=st.booleans(),
)
def test_aclimdb_damaged_review_files_fail_cleanly(data, where, as_directory):
    with tempfile.TemporaryDirectory() as directory:
        root = write_aclimdb(os.path.join(directory, "aclImdb"))
        folder = os.path.join(root, *where)
        path = os.path.join(folder, sorted(os.listdir(folder))[0])
        if as_directory:  # a directory whose name ends in .txt, where a review file belongs
            os.remove(path)
            os.makedirs(path)
            content = b""
        else:
            content = data.draw(mutated(read_bytes(path)))
            write_bytes(path, content)
        splits, error = outcome(text.load_text, directory, seq_len=32, use_cache=False)
        if error is None:
            assert not as_directory and content.strip()
            check_text_splits(splits)
        else:
            check_names(error, path)
            assert as_directory or not content.strip() or "empty" not in str(error)


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10 python pickles.


def cifar_batch(seed: int, count: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    return make_cifar_batch(images, rng.integers(0, 10, size=count))


def write_cifar_dir(directory: str) -> str:
    folder = os.path.join(directory, image.CIFAR_DIR)
    os.makedirs(folder)
    for index, name in enumerate((*image.CIFAR_TRAIN_BATCHES, image.CIFAR_TEST_BATCH)):
        write_bytes(os.path.join(folder, name), official_pickle(cifar_batch(index)))
    return folder


def check_cifar_batch(result) -> None:
    data, labels = result
    assert isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape == (len(labels), 3072)
    assert labels.dtype == np.int32 and set(labels.tolist()) <= set(range(10))


@hostile(40)
@given(data=st.data())
def test_cifar_mutated_pickles_fail_cleanly(tmp_path, data):
    path = str(tmp_path / "data_batch_1")
    content = data.draw(mutated(official_pickle(cifar_batch(0)), head=400))
    write_bytes(path, content)
    result, error = outcome(image.read_cifar_batch, path)
    if error is None:
        check_cifar_batch(result)
    else:
        check_names(error, path)


def test_cifar_mutated_batch_fails_cleanly_through_the_loader(tmp_path):
    folder = write_cifar_dir(str(tmp_path))
    path = os.path.join(folder, "data_batch_4")
    write_bytes(path, read_bytes(path)[:-40])
    splits, error = outcome(image.load_cifar10, str(tmp_path), val_size=2)
    assert splits is None and path in str(error)


def nested(value, depth: int):
    for _ in range(depth):
        value = [value]
    return value


GOOD = cifar_batch(7)
# (replacement of b"data" or b"labels", valid?)
CIFAR_DATA = {
    "nested list": (GOOD[b"data"].tolist(), False),
    "int64": (GOOD[b"data"].astype(np.int64), False),
    "float32": (GOOD[b"data"].astype(np.float32), False),
    "object": (GOOD[b"data"].astype(object), False),
    "3071 columns": (GOOD[b"data"][:, :3071].copy(), False),
    "1-D": (GOOD[b"data"].reshape(-1), False),
    "3-D": (GOOD[b"data"].reshape(3, 3, 1024), False),
    "bytes": (GOOD[b"data"].tobytes(), False),
    "None": (None, False),
    "no images": (np.zeros((0, 3072), np.uint8), False),
    "Fortran order": (np.asfortranarray(GOOD[b"data"]), True),
}


CIFAR_LABELS = {
    "floats": ([0.5, 1.0, 2.0], False),
    "strings": (["1", "2", "3"], False),
    "bytes": (b"\x01\x02\x03", False),
    "huge int": ([0, 2**70, 1], False),
    "negative": ([0, -1, 1], False),
    "ten": ([0, 1, 10], False),
    "nested": ([[0, 1, 2]], False),
    "deeply nested": ([nested(0, 200), 1, 2], False),
    "None": (None, False),
    "dict": ({0: 1, 1: 2, 2: 3}, False),
    "bools": ([True, False, True], False),
    "too few": ([1, 2], False),
    "too many": ([1, 2, 3, 4], False),
    "int64 array": (np.array([3, 4, 5]), True),
    "uint8 array": (np.array([3, 4, 5], np.uint8), True),
    "float array": (np.array([3.0, 4.0, 5.0]), False),
    "tuple": ((3, 4, 5), True),
}


CIFAR_FIELD_CASES = [("data", case) for case in sorted(CIFAR_DATA)] + [
    ("labels", case) for case in sorted(CIFAR_LABELS)
]


@pytest.mark.parametrize(("field", "case"), CIFAR_FIELD_CASES)
@pytest.mark.parametrize(("protocol", "str_keys"), [(2, False), (5, True)])
def test_cifar_wrongly_typed_fields_fail_cleanly(tmp_path, field, case, protocol, str_keys):
    """Every wrong type or shape of b"data" / b"labels", pickled the Python 2 way and the Python 3 way."""
    batch = dict(GOOD)
    batch[field.encode()], valid = (CIFAR_DATA if field == "data" else CIFAR_LABELS)[case]
    if str_keys:  # a Python 3 re-pickle may use str keys: accepted
        batch = {key.decode(): value for key, value in batch.items()}
    path = str(tmp_path / "test_batch")
    write_bytes(path, pickle.dumps(batch, protocol=protocol))
    result, error = outcome(image.read_cifar_batch, path)
    if valid:
        assert error is None, error
        check_cifar_batch(result)
        np.testing.assert_array_equal(result[0], GOOD[b"data"])
        np.testing.assert_array_equal(result[1], np.asarray(batch["labels" if str_keys else b"labels"]))
    else:
        assert error is not None, case
        check_names(error, path)
        if field == "labels" and case in ("negative", "ten", "floats", "huge int", "bools", "strings"):
            assert f"{path}, record " in str(error), error


class Call:
    """Pickles as `function(*args)`, then `__setstate__(state)` if given: hostile REDUCE / BUILD opcodes."""

    def __init__(self, function, *args, state=None):
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return (self.function, self.args) if self.state is None else (self.function, self.args, self.state)


_reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
_frombuffer = np.zeros(1).__reduce_ex__(5)[0]


def hostile_pickles() -> dict[str, bytes]:
    def batch(data, protocol=2):
        return pickle.dumps({b"data": data, b"labels": [0]}, protocol=protocol)

    return {
        "BINBYTES8 of 1 TiB": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc",
        "BINUNICODE8 of 1 TiB": b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b"abc",
        "BINSTRING of 2 GiB": b"\x80\x02T" + struct.pack("<i", (1 << 31) - 1) + b"abc",
        "BINBYTES of 4 GiB": b"\x80\x03B" + struct.pack("<I", (1 << 32) - 1) + b"abc",
        "LONG4 of 2 GiB": b"\x80\x02\x8b" + struct.pack("<i", (1 << 31) - 1) + b"abc",
        "FRAME of 1 PiB": b"\x80\x04\x95" + struct.pack("<Q", 1 << 50) + b"}.",
        "reconstruct 10 GB": batch(Call(_reconstruct, np.ndarray, (10**10,), b"b")),
        "reconstruct huge dtype": batch(Call(_reconstruct, np.ndarray, (2,), np.dtype((np.uint8, (10**9,))))),
        "object array state of 10**10": batch(
            Call(_reconstruct, np.ndarray, (0,), b"b", state=(1, (10**10,), np.dtype(object), False, [1, 2]))
        ),
        "array state of 10**10 bytes, 2 given": batch(
            Call(_reconstruct, np.ndarray, (0,), b"b", state=(1, (10**10,), np.dtype(np.uint8), False, b"ab"))
        ),
        "ndarray called directly": batch(Call(np.ndarray, (10**10,), np.dtype(np.uint8))),
        "frombuffer wrong shape": batch(Call(_frombuffer, b"abc", np.dtype(np.uint8), (10**10,), "C"), 5),
        "unknown codec": batch(Call(_codecs.encode, "x", "no-such-codec")),
        "os.system": batch(Call(os.system, "true")),
        "builtins.eval": batch(Call(eval, "1")),
        "deep nesting": b"\x80\x02" + b"]" * 20_000 + b"a" * 19_999 + b".",
        "200k marks": b"\x80\x02" + b"(" * 200_000 + b".",
        "STOP only": b".",
        "unknown opcode": b"\x80\x02\xff.",
    }


@pytest.mark.parametrize("case", sorted(hostile_pickles()))
def test_hostile_pickles_are_refused_without_large_allocations(tmp_path, case):
    path = str(tmp_path / "data_batch_2")
    write_bytes(path, hostile_pickles()[case])
    result, error = outcome(image.read_cifar_batch, path)
    assert result is None and path in str(error), case
    assert os.path.exists(path)  # nothing ran: os.system / eval were refused


# ---------------------------------------------------------------------------------------------------------
# MNIST-family IDX files, plain and gzipped.


def write_idx_dir(directory: str, *, gzipped: bool) -> dict[str, str]:
    rng = np.random.default_rng(4)
    arrays = {
        "train_images": rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=10).astype(np.uint8),
        "test_images": rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8),
        "test_labels": np.array([7, 0, 9], np.uint8),
    }
    paths = {}
    for key, array in arrays.items():
        content, name = idx_bytes(array), image.IDX_FILES[key]
        if gzipped:
            content, name = gzip.compress(content, mtime=0), name + ".gz"
        paths[key] = os.path.join(directory, name)
        write_bytes(paths[key], content)
    return paths


def check_idx_splits(splits) -> None:
    for split in splits.values():
        assert split.inputs.dtype == np.int32 and split.inputs.ndim == 2 and split.inputs.shape[1] >= 1
        assert split.inputs.min() >= 0 and split.inputs.max() <= 255
        assert set(split.labels.tolist()) <= set(range(10))


@hostile(40)
@given(data=st.data(), key=st.sampled_from(sorted(image.IDX_FILES)), gzipped=st.booleans())
def test_idx_mutated_files_fail_cleanly(data, key, gzipped):
    with tempfile.TemporaryDirectory() as directory:
        paths = write_idx_dir(directory, gzipped=gzipped)
        check_mutated_file(data, paths[key], lambda: image.load_idx_images(directory, val_size=3),
                           check_idx_splits, head=32, text_lines=False)


@hostile(40)
@given(
    dims=st.tuples(*[st.integers(0, (1 << 32) - 1)] * 3),
    payload=st.integers(0, 4096),
    gzipped=st.booleans(),
)
@example(dims=(1 << 31, 1 << 31, 4), payload=0, gzipped=False)  # product 2**64: wraps to 0 in int64
@example(dims=(1 << 16, 1 << 16, 1 << 16), payload=0, gzipped=True)
@example(dims=(0, 28, 28), payload=0, gzipped=False)
@example(dims=(5, 0, 28), payload=0, gzipped=False)
def test_idx_huge_or_empty_declared_sizes_are_refused_before_allocating(tmp_path, dims, payload, gzipped):
    content = struct.pack(">IIII", image.IDX_IMAGES_MAGIC, *dims) + bytes(payload)
    if gzipped:
        content = gzip.compress(content, mtime=0)
    path = str(tmp_path / ("images.gz" if gzipped else "images"))
    write_bytes(path, content)
    result, error = outcome(image.read_idx, path, image.IDX_IMAGES_MAGIC)
    if error is None:  # only an exact, non-empty match is an image array
        assert result.shape == dims and 0 not in dims and int(np.prod(dims)) == payload
    else:
        check_names(error, path)


def gzip_bomb(declared: tuple[int, ...], zeros: int) -> bytes:
    """A gzip stream of an IDX header declaring `declared` followed by `zeros` zero bytes, built in pieces."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [compressor.compress(struct.pack(">I", image.IDX_IMAGES_MAGIC) + struct.pack(">3I", *declared))]
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        out.append(compressor.compress(block))
    return b"".join(out) + compressor.flush()


@pytest.mark.parametrize(
    ("declared", "fragment"),
    [((4, 28, 28), "trailing"), ((100_000, 1000, 1000), "gzip")],
)
def test_idx_gzip_bombs_are_refused_without_inflating_them(tmp_path, declared, fragment):
    path = str(tmp_path / "train-images-idx3-ubyte.gz")
    write_bytes(path, gzip_bomb(declared, 128 << 20))  # 128 MiB of zeros in ~130 KB
    result, error = outcome(image.read_idx, path, image.IDX_IMAGES_MAGIC)
    assert result is None and path in str(error) and fragment in str(error), error


def test_idx_labels_out_of_range_name_the_record(tmp_path):
    paths = write_idx_dir(str(tmp_path), gzipped=True)
    labels = np.array([1, 2, 3, 4, 5, 6, 200, 8, 9, 0], np.uint8)
    write_bytes(paths["train_labels"], gzip.compress(idx_bytes(labels)))
    with pytest.raises(LRADataError, match=r"train-labels-idx1-ubyte\.gz, record 6: label must be 0..9, got 200"):
        image.load_idx_images(str(tmp_path), val_size=3)


def test_idx_too_few_images_for_the_validation_split_names_the_file(tmp_path):
    paths = write_idx_dir(str(tmp_path), gzipped=False)
    with pytest.raises(LRADataError, match="train-images-idx3-ubyte.*10 training images"):
        image.load_idx_images(str(tmp_path), val_size=10)
    with pytest.raises(ValueError, match="val_size"):
        image.load_idx_images(str(tmp_path), val_size=0)
    assert os.path.isfile(paths["train_images"])


# ---------------------------------------------------------------------------------------------------------
# Pathfinder: PNG images and metadata.

RES = 32


@pytest.fixture(scope="module")
def pathfinder_root(tmp_path_factory):
    """8 generated images (resolution 32, hard) in the official layout: metadata/0.npy and 1.npy, 4 rows each."""
    root = str(tmp_path_factory.mktemp("pf_hostile"))
    params = pf.pathfinder_params(RES, "hard")
    pf.write_pathfinder_dataset(root, params, 8, seed=5, num_workers=1, images_per_batch=4)
    dataset_dir = os.path.join(root, "curv_contour_length_14")
    expected = pf.read_pathfinder_examples(dataset_dir, RES, num_workers=1)
    return dataset_dir, expected


def copy_dataset(dataset_dir: str, directory: str) -> str:
    target = os.path.join(directory, "curv_contour_length_14")
    shutil.copytree(dataset_dir, target, ignore=shutil.ignore_patterns("cache"))
    return target


@hostile(40)
@given(data=st.data())
def test_png_mutations_fail_cleanly(pathfinder_root, data):
    dataset_dir, _ = pathfinder_root
    good = read_bytes(os.path.join(dataset_dir, "imgs", "0", "sample_1.png"))
    content = data.draw(mutated(good, head=64))
    decoded, error = outcome(pf.decode_png, content, "imgs/0/sample_1.png")
    if error is None:
        assert decoded.dtype == np.uint8 and decoded.ndim == 2 and 0 not in decoded.shape
    else:
        check_names(error, "imgs/0/sample_1.png")


@hostile(25)
@given(data=st.data(), index=st.integers(0, 7))
def test_pathfinder_mutated_image_fails_cleanly_or_is_skipped(pathfinder_root, data, index):
    dataset_dir, (inputs, labels) = pathfinder_root
    with tempfile.TemporaryDirectory() as directory:
        copy = copy_dataset(dataset_dir, directory)
        path = os.path.join(copy, "imgs", str(index // 4), f"sample_{index % 4}.png")
        content = data.draw(mutated(read_bytes(path), head=64))
        write_bytes(path, content)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result, error = outcome(pf.read_pathfinder_examples, copy, RES, num_workers=1)
        if error is not None:
            check_names(error, path)
            return
        read_inputs, read_labels = result
        if caught:  # the documented handling: an empty file or an all-black image is skipped
            assert not content or not pf.decode_png(content).any()
            assert "skipped 1 of 8" in str(caught[0].message) and path in str(caught[0].message)
            keep = [i for i in range(8) if i != index]
            np.testing.assert_array_equal(read_labels, labels[keep])
        else:
            assert read_inputs.shape == inputs.shape
            np.testing.assert_array_equal(read_labels, labels)
            np.testing.assert_array_equal(np.delete(read_inputs, index, 0), np.delete(inputs, index, 0))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return pf.PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@hostile(30)
@given(width=st.integers(1, (1 << 32) - 1), height=st.integers(1, (1 << 32) - 1), pixels=st.integers(0, 4096))
@example(width=(1 << 32) - 1, height=(1 << 32) - 1, pixels=0)
@example(width=1 << 20, height=1 << 20, pixels=4096)
def test_png_headers_declaring_huge_images_are_refused_before_allocating(width, height, pixels):
    content = png(width, height, zlib.compress(bytes(pixels)))
    decoded, error = outcome(pf.decode_png, content, "big.png")
    if error is None:
        assert decoded.shape == (height, width) and height * (width + 1) <= pixels
    else:
        check_names(error, "big.png")


def test_png_zlib_bomb_is_not_inflated_beyond_the_image(tmp_path):
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    idat = b"".join(compressor.compress(block) for _ in range(128)) + compressor.flush()  # 128 MiB of zeros
    decoded, error = outcome(pf.decode_png, png(RES, RES, idat), "bomb.png")
    assert decoded is None and "bomb.png" in str(error) and "more" in str(error), error
    path = str(tmp_path / "sample_0.png")
    write_bytes(path, png(4096, 4096, idat))  # a plausible 4096x4096 header, but not the expected 32x32
    block_result, error = outcome(pf.reader._read_block, ([path], RES))
    assert block_result is None and "image is 4096x4096, expected 32x32" in str(error), error


@hostile(30)
@given(data=st.data(), batch=st.integers(0, 1))
def test_pathfinder_mutated_text_metadata_fails_cleanly(pathfinder_root, data, batch):
    dataset_dir, (inputs, labels) = pathfinder_root
    with tempfile.TemporaryDirectory() as directory:
        copy = copy_dataset(dataset_dir, directory)
        path = os.path.join(copy, "metadata", f"{batch}.npy")
        content = data.draw(mutated(read_bytes(path)))
        write_bytes(path, content)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an image listed twice or a row dropped is not an error
            result, error = outcome(pf.read_pathfinder_examples, copy, RES, num_workers=1)
        if error is None:
            read_inputs, read_labels = result
            assert read_inputs.dtype == np.uint8 and read_inputs.shape[1] == RES * RES
            assert set(read_labels.tolist()) <= {0, 1} and len(read_labels) >= 1
        else:  # the metadata file and line, or the image file a row points to
            message = str(error)
            assert path in message or os.path.join(copy, "imgs") in message, message
            check_names(error, [path, copy], content if path in message else None)


METADATA_FAULTS = {
    "parent directory": ("imgs/../../etc sample_0.png 0 1", "imgs/<batch>"),
    "absolute subdir": ("/imgs/0 sample_0.png 0 1", "imgs/<batch>"),
    "empty batch": ("imgs/ sample_0.png 0 1", "imgs/<batch>"),
    "dot batch": ("imgs/. sample_0.png 0 1", "imgs/<batch>"),
    "NUL in name": ("imgs/0 sample\x00_0.png 0 1", "imgs/<batch>"),
    "label 2": ("imgs/0 sample_0.png 0 2", "must be 0 or 1"),
    "three fields": ("imgs/0 sample_0.png 0", ">= 4 space-separated fields"),
    "tab separated": ("imgs/0\tsample_0.png\t0\t1", ">= 4 space-separated fields"),
}


@hostile(24)
@given(fault=st.sampled_from(sorted(METADATA_FAULTS)), row=st.integers(0, 3))
def test_pathfinder_malformed_metadata_rows_name_file_and_line(pathfinder_root, fault, row):
    dataset_dir, _ = pathfinder_root
    line, fragment = METADATA_FAULTS[fault]
    with tempfile.TemporaryDirectory() as directory:
        copy = copy_dataset(dataset_dir, directory)
        path = os.path.join(copy, "metadata", "1.npy")
        lines = read_bytes(path).split(b"\n")
        lines[row] = line.encode()
        write_bytes(path, b"\n".join(lines))
        _, error = outcome(pf.read_pathfinder_examples, copy, RES, num_workers=1)
        assert error is not None and f"{path}, line {row + 1}: " in str(error) and fragment in str(error), error


def binary_metadata_cases() -> dict[str, bytes]:
    rows = [["imgs/0", f"sample_{i}.png", str(i), str(i % 2), "1.0"] for i in range(4)]

    def saved(array) -> bytes:
        out = io.BytesIO()
        np.save(out, array, allow_pickle=True)
        return out.getvalue()

    good = saved(np.array(rows))
    return {
        "unicode (valid)": good,
        "bytes (valid)": saved(np.array(rows, dtype="S")),
        "non-UTF-8 bytes": saved(np.array([[b"imgs/0", b"sample_\xff.png", b"0", b"1"]], dtype="S")),
        "1-D": saved(np.array(["imgs/0 sample_0.png 0 1"])),
        "3-D": saved(np.array([rows])),
        "integers": saved(np.arange(8).reshape(2, 4)),
        "object (pickled)": saved(np.array(rows, dtype=object)),
        "huge shape": npy_member({"descr": "<U100", "fortran_order": False, "shape": (1 << 30, 5)}, b"\x00" * 400),
        "huge itemsize": npy_member({"descr": "<U1000000000", "fortran_order": False, "shape": (4, 5)}, b""),
        "truncated": good[: len(good) - 7],
        "header only": good[:128],
        "trailing bytes": good + b"\x00" * 40,
        "fortran order": saved(np.asfortranarray(np.array(rows))),
        "bad header": b"\x93NUMPY\x01\x00\x10\x00{'descr': ((((((  \n",
        "magic only": b"\x93NUMPY",
    }


@pytest.mark.parametrize("case", sorted(binary_metadata_cases()))
def test_binary_metadata_is_read_only_when_well_formed(tmp_path, case):
    path = str(tmp_path / "0.npy")
    write_bytes(path, binary_metadata_cases()[case])
    rows, error = outcome(pf.read_metadata, path)
    if case in ("unicode (valid)", "bytes (valid)", "fortran order"):
        assert error is None, error
        assert rows == [("imgs/0", f"sample_{i}.png", i % 2) for i in range(4)]
    else:
        assert rows is None and path in str(error), case


def test_pathfinder_with_no_usable_example_is_an_error(pathfinder_root, tmp_path):
    dataset_dir, _ = pathfinder_root
    copy = copy_dataset(dataset_dir, str(tmp_path))
    for name in os.listdir(os.path.join(copy, "metadata")):
        write_bytes(os.path.join(copy, "metadata", name), b"")
    with pytest.raises(LRADataError, match="no examples"):
        pf.read_pathfinder_examples(copy, RES, num_workers=1)
    with pytest.raises(LRADataError, match="no examples"):
        pf.load_pathfinder(str(tmp_path), RES, "hard", cache_dir=str(tmp_path / "cache"), num_workers=1)


@hostile(20)
@given(data=st.data(), member=st.sampled_from(["info.json", "inputs.npy", "labels.npy"]))
def test_damaged_pathfinder_cache_is_rebuilt(pathfinder_root, data, member):
    dataset_dir, (inputs, labels) = pathfinder_root
    with tempfile.TemporaryDirectory() as directory:
        copy_dataset(dataset_dir, directory)
        cache_dir = os.path.join(directory, "cache")
        pf.load_pathfinder(directory, RES, "hard", cache_dir=cache_dir, num_workers=1)
        (entry,) = os.listdir(cache_dir)
        path = os.path.join(cache_dir, entry, member)
        write_bytes(path, data.draw(mutated(read_bytes(path))))
        splits, error = outcome(pf.load_pathfinder, directory, RES, "hard", cache_dir=cache_dir, num_workers=1)
        assert error is None, error
        np.testing.assert_array_equal(np.concatenate([splits[s].inputs for s in pf.SPLITS]), inputs)
        np.testing.assert_array_equal(np.concatenate([splits[s].labels for s in pf.SPLITS]), labels)
