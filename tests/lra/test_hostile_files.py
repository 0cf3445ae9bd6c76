"""Hostile FILES for every reader in lra/: something other than a regular file of sane size where a data file belongs.

For each reader (ListOps TSV, IMDB aclImdb review and TSV, AAN TSV, CIFAR-10 pickle, IDX plain and gzip,
Pathfinder PNG and metadata, text and .npy), one data file is replaced by a FIFO, a link to /dev/zero, a link
to /dev/null, a directory, a dangling link, an over-long file (over the format's bound) or a truncated file:
each must end in a one-line `LRADataError` naming the file. A link to a regular file outside the data directory
must read exactly like the file itself. The caches (lra/cache.py, the Pathfinder memmap cache) must treat the
same things at their paths as a miss and rebuild.

Every read runs in a forked child with a timeout and a cap on the address space it may add (`isolated`), so a
regression (a FIFO opened for reading blocks forever; /dev/zero read to its end never ends) fails its test
within seconds instead of hanging CI or exhausting the machine's memory. Over-long files are sparse: they
occupy no disk and must be refused from their size, before anything is read.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import resource
import select
import shutil
import signal
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from lra import files, image, listops, retrieval, text
from lra import pathfinder as pf
from lra.errors import LRADataError
from tests.lra.test_hostile_inputs import write_cifar_dir, write_idx_dir, write_imdb_tsv_dir, write_listops
from tests.lra.test_lra_retrieval import write_aan
from tests.lra.test_lra_text import write_aclimdb

TIMEOUT_S = 10.0  # per read; a good one takes milliseconds
CHILD_MEMORY = 512 << 20  # address space a child may add to what it inherits


# ---------------------------------------------------------------------------------------------------------
# Running a read in a forked child with a timeout.


def _limit_address_space() -> None:
    try:
        with open("/proc/self/statm") as handle:
            current = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + CHILD_MEMORY
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def isolated(call: Callable[[], object], timeout: float = TIMEOUT_S) -> tuple[str, object]:
    """("ok", call()) | ("LRADataError", message) | (exception type name, traceback), `call` run in a forked child.

    Fails the test when the child gives no answer within `timeout` seconds (it is then killed).
    """
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX warns about forking; the child only runs numpy code
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            _limit_address_space()
            try:
                answer = ("ok", call())
            except LRADataError as error:
                answer = ("LRADataError", str(error))
            except BaseException as error:  # reported to the parent
                answer = (type(error).__name__, traceback.format_exc())
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(pickle.dumps(answer))
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    chunks, finished = [], False
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_end], [], [], remaining)[0]:
                break
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                finished = True
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        if not finished:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if not finished:
        pytest.fail(f"no answer after {timeout} s: the reader hangs")
    if not chunks:
        pytest.fail("the child died without an answer (killed for memory?)")
    return pickle.loads(b"".join(chunks))


# ---------------------------------------------------------------------------------------------------------
# The readers: a valid dataset, one file of it to replace, how to truncate it detectably, how big is too big.


def summary(splits) -> dict:
    """A small, comparable digest of {name: Split} (a child sends it back through a pipe)."""
    return {
        name: (split.inputs.shape, hashlib.sha256(np.ascontiguousarray(split.inputs).tobytes()).hexdigest(),
               np.asarray(split.labels).tolist())
        for name, split in splits.items()
    }


def cut_last_tab(content: bytes) -> bytes:
    """The file cut just before its last tab: the last row loses its last column(s)."""
    return content[: content.rfind(b"\t")]


def cut_last_row(content: bytes) -> bytes:
    """A metadata file cut inside its last image name: the last row has 2 fields."""
    return content[: content.rfind(b".png")]


def write_pathfinder(root: str) -> str:
    """8 random 32x32 images in the official layout (metadata/0.npy and 1.npy, text, 4 rows each)."""
    rng = np.random.default_rng(3)
    dataset_dir = os.path.join(root, "curv_contour_length_14")
    os.makedirs(os.path.join(dataset_dir, "metadata"))
    for batch in range(2):
        os.makedirs(os.path.join(dataset_dir, "imgs", str(batch)))
        lines = []
        for index in range(4):
            name = f"sample_{index}.png"
            pf.write_png(os.path.join(dataset_dir, "imgs", str(batch), name),
                         rng.integers(1, 256, size=(32, 32), dtype=np.uint8))
            lines.append(f"imgs/{batch} {name} {index} {index % 2} 1.8 14 4 2 1 1 1\n")
        with open(os.path.join(dataset_dir, "metadata", f"{batch}.npy"), "w") as handle:
            handle.writelines(lines)
    return dataset_dir


def write_pathfinder_binary(root: str) -> str:
    """As `write_pathfinder`, with metadata/1.npy a real binary .npy (a 2-D string array)."""
    dataset_dir = write_pathfinder(root)
    path = os.path.join(dataset_dir, "metadata", "1.npy")
    with open(path) as handle:
        rows = [line.split() for line in handle.read().splitlines()]
    with open(path, "wb") as handle:
        np.save(handle, np.array(rows))
    return dataset_dir


@dataclass(frozen=True)
class Reader:
    setup: Callable[[str], str]  # writes a valid dataset under a directory; returns the file to replace
    load: Callable[[str], object]  # reads the dataset under that directory; returns a picklable summary
    truncate: Callable[[bytes], bytes]  # a detectably truncated copy of the file's content
    too_long: Callable[[int], int]  # the file's size -> a size over the format's bound (the file is extended)
    too_long_says: str  # a fragment of the over-long file's message


# Over-long files are extended by at least this many zeros (sparse: no disk used). More than a child may allocate,
# so a reader that read such a file (or such a line) to its end instead of refusing it fails with MemoryError.
HUGE = 1 << 30
BOUND = "can be (at most"  # the message of a file refused from its size, before reading


def _first(directory: str) -> str:
    return os.path.join(directory, sorted(os.listdir(directory))[0])


READERS = {
    "listops tsv": Reader(
        setup=lambda d: (write_listops(d), listops.split_path(d, "val"))[1],
        load=lambda d: summary(listops.load_listops(d, seq_len=40, use_cache=False)),
        truncate=cut_last_tab,
        too_long=lambda size: size + HUGE,  # a last line of 1 GiB of zeros
        too_long_says="longer than",
    ),
    "imdb review": Reader(
        setup=lambda d: _first(os.path.join(write_aclimdb(os.path.join(d, "aclImdb")), "test", "pos")),
        load=lambda d: summary(text.load_text(d, seq_len=32, use_cache=False)),
        truncate=lambda content: b"",  # a review cut short is still a review; cut to nothing it is an error
        too_long=lambda size: text.REVIEW_MAX_BYTES + HUGE,
        too_long_says=BOUND,
    ),
    "imdb tsv": Reader(
        setup=lambda d: (write_imdb_tsv_dir(d), os.path.join(d, "test.tsv"))[1],
        load=lambda d: summary(text.load_text(d, seq_len=32, use_cache=False)),
        truncate=cut_last_tab,
        too_long=lambda size: size + HUGE,
        too_long_says="longer than",
    ),
    "aan tsv": Reader(
        setup=lambda d: os.path.join(write_aan(d), retrieval.SPLIT_FILES["val"]),
        load=lambda d: summary(retrieval.load_retrieval(d, seq_len=16, use_cache=False)),
        truncate=cut_last_tab,
        too_long=lambda size: size + HUGE,
        too_long_says="longer than",
    ),
    "cifar pickle": Reader(
        setup=lambda d: os.path.join(write_cifar_dir(d), "data_batch_2"),
        load=lambda d: summary(image.load_cifar10(d, val_size=2)),
        truncate=lambda content: content[: len(content) // 2],
        too_long=lambda size: image.CIFAR_BATCH_MAX_BYTES + HUGE,
        too_long_says=BOUND,
    ),
    "idx plain": Reader(
        setup=lambda d: write_idx_dir(d, gzipped=False)["train_labels"],
        load=lambda d: summary(image.load_idx_images(d, val_size=3)),
        truncate=lambda content: content[:-5],
        too_long=lambda size: size + HUGE,  # 1 GiB more than the header says
        too_long_says="need 10 data bytes, found 1073741834",
    ),
    "idx gzip": Reader(
        setup=lambda d: write_idx_dir(d, gzipped=True)["train_images"],
        load=lambda d: summary(image.load_idx_images(d, val_size=3)),
        truncate=lambda content: content[:-12],
        too_long=lambda size: size + HUGE,
        too_long_says="larger than IDX dimensions",
    ),
    "pathfinder png": Reader(
        setup=lambda d: os.path.join(write_pathfinder(d), "imgs", "1", "sample_2.png"),
        load=lambda d: summary(pf.load_pathfinder(d, 32, "hard", use_cache=False, num_workers=1)),
        truncate=lambda content: content[: len(content) // 2],
        too_long=lambda size: pf.png_max_bytes(32, 32) + HUGE,
        too_long_says=BOUND,
    ),
    "pathfinder text metadata": Reader(
        setup=lambda d: os.path.join(write_pathfinder(d), "metadata", "1.npy"),
        load=lambda d: summary(pf.load_pathfinder(d, 32, "hard", use_cache=False, num_workers=1)),
        truncate=cut_last_row,
        too_long=lambda size: pf.METADATA_MAX_BYTES + HUGE,
        too_long_says=BOUND,
    ),
    "pathfinder npy metadata": Reader(
        setup=lambda d: os.path.join(write_pathfinder_binary(d), "metadata", "1.npy"),
        load=lambda d: summary(pf.load_pathfinder(d, 32, "hard", use_cache=False, num_workers=1)),
        truncate=lambda content: content[:-7],
        too_long=lambda size: pf.METADATA_MAX_BYTES + HUGE,
        too_long_says=BOUND,
    ),
}


# ---------------------------------------------------------------------------------------------------------
# What replaces the file.


def make_fifo(path: str, elsewhere: str) -> None:
    os.mkfifo(path)


def link_to(target: str):
    def replace(path: str, elsewhere: str) -> None:
        os.symlink(target, path)

    return replace


def make_directory(path: str, elsewhere: str) -> None:
    os.makedirs(path)


def make_dangling_link(path: str, elsewhere: str) -> None:
    os.symlink(os.path.join(elsewhere, "no-such-file"), path)


HOSTILE = {  # name -> (replace the (removed) file, fragment of the message)
    "fifo": (make_fifo, "found a FIFO"),
    "link to /dev/zero": (link_to("/dev/zero"), "found a character device (a link to /dev/zero)"),
    "link to /dev/null": (link_to("/dev/null"), "found a character device (a link to /dev/null)"),
    "directory": (make_directory, "found a directory"),
    "dangling link": (make_dangling_link, "which does not exist"),
}


def check_error(answer: tuple[str, object], path: str, fragment: str = "") -> None:
    kind, message = answer
    assert kind == "LRADataError", f"expected LRADataError naming {path}, got {kind}: {message}"
    assert path in message and fragment in message, message
    assert "\n" not in message, message


@pytest.fixture
def dataset(tmp_path, request):
    """(reader, data directory, the file to replace, a directory outside the data directory)."""
    reader = READERS[request.param]
    data_dir, elsewhere = str(tmp_path / "data"), str(tmp_path / "elsewhere")
    os.makedirs(data_dir)
    os.makedirs(elsewhere)
    return reader, data_dir, reader.setup(data_dir), elsewhere


ALL_READERS = pytest.mark.parametrize("dataset", sorted(READERS), indirect=True)


@ALL_READERS
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_special_file_in_place_of_a_data_file_is_a_data_error(dataset, case):
    reader, data_dir, path, elsewhere = dataset
    replace, fragment = HOSTILE[case]
    os.remove(path)
    replace(path, elsewhere)
    check_error(isolated(lambda: reader.load(data_dir)), path, fragment)


@ALL_READERS
def test_a_link_to_a_regular_file_outside_the_data_directory_reads_like_the_file(dataset):
    reader, data_dir, path, elsewhere = dataset
    expected = isolated(lambda: reader.load(data_dir))
    assert expected[0] == "ok", expected
    target = os.path.join(elsewhere, "linked-in")
    shutil.move(path, target)
    os.symlink(target, path)
    assert isolated(lambda: reader.load(data_dir)) == expected


@ALL_READERS
def test_an_over_long_file_is_refused(dataset):
    reader, data_dir, path, _ = dataset
    os.truncate(path, reader.too_long(os.path.getsize(path)))  # sparse: zeros that take no disk
    check_error(isolated(lambda: reader.load(data_dir)), path, reader.too_long_says)


@ALL_READERS
def test_a_truncated_file_is_a_data_error(dataset):
    reader, data_dir, path, _ = dataset
    with open(path, "rb") as handle:
        content = handle.read()
    with open(path, "wb") as handle:
        handle.write(reader.truncate(content))
    check_error(isolated(lambda: reader.load(data_dir)), path)


def test_an_over_long_metadata_line_names_its_line(tmp_path):
    dataset_dir = write_pathfinder(str(tmp_path))
    path = os.path.join(dataset_dir, "metadata", "0.npy")
    with open(path, "ab") as handle:
        handle.write(b"imgs/0 sample_0.png 0 1 " + b"x" * pf.METADATA_MAX_LINE + b"\n")
    answer = isolated(lambda: pf.read_metadata(path))
    check_error(answer, f"{path}, line 5", "longer than")


# ---------------------------------------------------------------------------------------------------------
# lra/files.py itself: a FIFO that appears between the check and the open still cannot block.


def test_open_regular_does_not_block_on_a_fifo_that_slips_past_the_first_check(tmp_path, monkeypatch):
    path = str(tmp_path / "swapped")
    os.mkfifo(path)
    monkeypatch.setattr(files, "check_regular", lambda *args, **kwargs: None)  # as if it had been a file then
    check_error(isolated(lambda: files.read_bounded(path, "the test file", 100)), path, "found a FIFO")


def test_read_bounded_reads_a_regular_file_and_refuses_one_over_the_bound(tmp_path):
    path = str(tmp_path / "f")
    with open(path, "wb") as handle:
        handle.write(b"0123456789")
    assert files.read_bounded(path, "the test file", 10) == b"0123456789"
    with pytest.raises(LRADataError, match=r"10 bytes, larger than the test file can be \(at most 9 bytes\)"):
        files.read_bounded(path, "the test file", 9)


# ---------------------------------------------------------------------------------------------------------
# Caches: a special file where a cache belongs is a miss; the reader rebuilds it and returns the same splits.

CACHE_CASES = {
    "fifo": make_fifo,
    "link to /dev/zero": link_to("/dev/zero"),
    "directory": make_directory,
    "dangling link": make_dangling_link,
}


@pytest.mark.parametrize("case", sorted(CACHE_CASES))
def test_a_special_file_where_the_token_cache_belongs_is_rebuilt_around(tmp_path, case):
    data_dir, elsewhere = str(tmp_path / "data"), str(tmp_path / "elsewhere")
    os.makedirs(elsewhere)
    write_listops(data_dir)
    expected = summary(listops.load_listops(data_dir, seq_len=40, use_cache=False))
    CACHE_CASES[case](os.path.join(data_dir, "basic_tokens.cache.npz"), elsewhere)

    def load_twice():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a directory cannot be replaced: "not caching"
            return [summary(listops.load_listops(data_dir, seq_len=40)) for _ in range(2)]

    answer = isolated(load_twice)
    assert answer == ("ok", [expected, expected]), answer


@pytest.mark.parametrize("member", ["info.json", "inputs.npy", "labels.npy"])
@pytest.mark.parametrize("case", ["fifo", "link to /dev/zero"])
def test_a_special_file_in_the_pathfinder_cache_is_rebuilt_around(tmp_path, member, case):
    data_dir, elsewhere = str(tmp_path / "data"), str(tmp_path / "elsewhere")
    os.makedirs(elsewhere)
    write_pathfinder(data_dir)
    cache_dir = str(tmp_path / "cache")
    expected = summary(pf.load_pathfinder(data_dir, 32, "hard", cache_dir=cache_dir, num_workers=1))
    (entry,) = os.listdir(cache_dir)
    path = os.path.join(cache_dir, entry, member)
    os.remove(path)
    CACHE_CASES[case](path, elsewhere)
    answer = isolated(lambda: summary(pf.load_pathfinder(data_dir, 32, "hard", cache_dir=cache_dir, num_workers=1)))
    assert answer == ("ok", expected), answer
