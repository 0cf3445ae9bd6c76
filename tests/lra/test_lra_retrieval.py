"""Tests for lra/retrieval.py: the AAN TSV format, LRA's byte encoding of both documents, caching and errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lra import retrieval
from lra.errors import LRADataError
from lra.tasks import get_task

# (label as written, id1, id2, text1, text2). Quotes, a lone quote, non-UTF-8 bytes, an empty document.
ROWS = {
    "train": [
        (b"1.0", b"P05-1001", b"W04-1013", b'He said "hello" to "them"', b"'single' and \"unbalanced"),
        (b"0.0", b"J93-2004", b"P02-1040", b"plain text", b"\xff\xfe\x00 raw bytes"),
        (b"1", b"A00-1001", b"A00-1002", b"x" * 30, b""),
    ],
    "val": [(b"0", b"E06-1002", b"N03-1017", b'"quoted"', b"tab-free text")],
    "test": [
        (b"1.0", b"C04-1001", b"C04-1002", b"abc", b"defgh"),
        (b"0.0", b"D07-1001", b"D07-1002", b'"\'"', b"z"),
    ],
}


def reference_encode(document: bytes, seq_len: int) -> list[int]:
    """LRA: ByteTextEncoder.encode(s[:10000])[:seq_len], zero-padded; written out without the library."""
    ids = [b + 1 for b in document[:10000]][:seq_len]
    return ids + [0] * (seq_len - len(ids))


def write_aan(directory, rows=ROWS, newline=b"\n"):
    os.makedirs(directory, exist_ok=True)
    for split, name in retrieval.SPLIT_FILES.items():
        with open(os.path.join(directory, name), "wb") as handle:
            for row in rows[split]:
                handle.write(b"\t".join(row) + newline)
    return str(directory)


@pytest.fixture
def aan_dir(tmp_path):
    return write_aan(tmp_path / "aan")


def test_tokens_shapes_and_labels_follow_lra(aan_dir):
    splits = retrieval.load_retrieval(aan_dir, seq_len=12, use_cache=False)
    spec = get_task("retrieval")
    assert spec.dual_input and spec.vocab_size == 257
    for split, rows in ROWS.items():
        inputs = splits[split].inputs
        assert inputs.dtype == np.int32 and inputs.shape == (len(rows), 2, 12)
        expected = [[reference_encode(row[3], 12), reference_encode(row[4], 12)] for row in rows]
        assert inputs.tolist() == expected
        assert splits[split].labels.tolist() == [int(float(row[0])) for row in rows]
    # Quotes are ordinary characters: nothing was unquoted or merged.
    assert splits["train"].inputs[0, 0, :4].tolist() == [b + 1 for b in b"He s"]
    assert splits["val"].inputs[0, 0, :8].tolist() == [b + 1 for b in b'"quoted"']
    # An empty document is an all-padding row; a NUL byte is id 1, not padding.
    assert not splits["train"].inputs[2, 1].any()
    assert splits["train"].inputs[1, 1, 2] == 1


def test_truncation_is_counted_per_example(aan_dir):
    splits = retrieval.load_retrieval(aan_dir, seq_len=6, use_cache=False)
    for split, rows in ROWS.items():
        expected = sum(len(row[3]) > 6 or len(row[4]) > 6 for row in rows)
        assert splits[split].num_truncated == expected
    assert splits["test"].num_truncated == 0 and splits["train"].num_truncated == 3


def test_raw_documents_are_cut_to_10000_bytes_first(tmp_path):
    long_document = bytes(b for b in range(256) if b not in b"\t\n\r") * 45  # 11385 bytes, no separators
    rows = {split: [(b"1", b"a", b"b", long_document, b"short")] for split in retrieval.SPLIT_FILES}
    directory = write_aan(tmp_path, rows)
    splits = retrieval.load_retrieval(directory, seq_len=10100, use_cache=False)
    first = splits["train"].inputs[0, 0]
    assert first.tolist() == reference_encode(long_document, 10100)
    assert int(np.count_nonzero(first)) == 10000 and not first[10000:].any()
    assert splits["train"].num_truncated == 1  # lost bytes to LRA's 10,000-byte cut


def test_windows_newlines_and_the_tsv_data_subdirectory(tmp_path):
    plain = retrieval.load_retrieval(write_aan(tmp_path / "a"), seq_len=10, use_cache=False)
    write_aan(tmp_path / "b" / "tsv_data", newline=b"\r\n")
    nested = retrieval.load_retrieval(str(tmp_path / "b"), seq_len=10, use_cache=False)
    for split in ROWS:
        np.testing.assert_array_equal(plain[split].inputs, nested[split].inputs)
        np.testing.assert_array_equal(plain[split].labels, nested[split].labels)


def test_cache_is_used_until_a_file_changes_and_is_kept_per_byte_limit(aan_dir, monkeypatch):
    first = retrieval.load_retrieval(aan_dir, seq_len=8)
    assert os.path.isfile(os.path.join(aan_dir, "new_aan_pairs.bytes8.cache.npz"))

    def fail(*args, **kwargs):
        raise AssertionError("read a TSV despite a valid cache")

    monkeypatch.setattr(retrieval, "read_aan_tsv", fail)
    cached = retrieval.load_retrieval(aan_dir, seq_len=8)
    for split in ROWS:
        np.testing.assert_array_equal(first[split].inputs, cached[split].inputs)
        assert first[split].num_truncated == cached[split].num_truncated
    with pytest.raises(AssertionError, match="despite"):
        retrieval.load_retrieval(aan_dir, seq_len=9)  # another byte limit: another cache
    monkeypatch.undo()
    rows = dict(ROWS, test=[(b"0", b"a", b"b", b"new", b"text")])
    write_aan(aan_dir, rows)
    changed = retrieval.load_retrieval(aan_dir, seq_len=8)
    assert changed["test"].inputs.tolist() == [[reference_encode(b"new", 8), reference_encode(b"text", 8)]]


@pytest.mark.parametrize(
    "bad_line, fragment",
    [
        (b"1\ta\tb\tonly four", "expected 5 tab-separated columns .* got 4"),
        (b"1\ta\tb\ttext\twith\ttab", ".*got 6"),
        (b"", ".*got 1"),
        (b"2\ta\tb\tx\ty", "label must be 0 or 1, got 2.0"),
        (b"0.5\ta\tb\tx\ty", "label must be 0 or 1"),
        (b"yes\ta\tb\tx\ty", "label must be a number"),
        (b"nan\ta\tb\tx\ty", "label must be 0 or 1"),
        (b"\xff\ta\tb\tx\ty", "label must be a number"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, bad_line, fragment):
    directory = write_aan(tmp_path)
    path = os.path.join(directory, "new_aan_pairs.eval.tsv")
    with open(path, "ab") as handle:
        handle.write(bad_line + b"\n")
    with pytest.raises(LRADataError, match=rf"new_aan_pairs\.eval\.tsv, line 2: {fragment}"):
        retrieval.load_retrieval(directory, seq_len=8, use_cache=False)


def test_missing_and_empty_files_are_errors(tmp_path):
    directory = write_aan(tmp_path)
    open(os.path.join(directory, "new_aan_pairs.test.tsv"), "wb").close()
    with pytest.raises(LRADataError, match=r"new_aan_pairs\.test\.tsv: no examples"):
        retrieval.load_retrieval(directory, use_cache=False)
    os.remove(os.path.join(directory, "new_aan_pairs.train.tsv"))
    with pytest.raises(LRADataError, match=r"new_aan_pairs\.train\.tsv"):
        retrieval.load_retrieval(directory, use_cache=False)
    with pytest.raises(ValueError, match="seq_len"):
        retrieval.load_retrieval(write_aan(tmp_path / "ok"), seq_len=0)
