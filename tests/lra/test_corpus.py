"""Byte-level corpora (lra/corpus.py): the standard enwik8 / text8 split offsets on official-size files, PG-19 and
text-folder layouts, the windows and their next-byte labels, the order-0 baseline, the cache, and hostile inputs
(wrong sizes, non-UTF-8, empty files, a FIFO, a split shorter than one window)."""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np
import pytest

from lra import corpus
from lra.errors import LRADataError

MARKS = {0: 1, 89_999_999: 2, 90_000_000: 3, 94_999_999: 4, 95_000_000: 5, 99_999_999: 6}


def write_official(path, size=corpus.ENWIK8_BYTES):
    """A sparse file of `size` bytes (zeros, no disk) with marker bytes at the split boundaries."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, value in MARKS.items():
            if offset < size:
                f.seek(offset)
                f.write(bytes([value]))


@pytest.mark.parametrize("name", ["enwik8", "text8"])
def test_the_standard_split_is_90_5_5_million_bytes(tmp_path, name):
    write_official(tmp_path / name)
    splits = corpus.load_corpus(name, str(tmp_path), str(tmp_path / "cache"))
    assert [len(splits[s]) for s in corpus.SPLITS] == [90_000_000, 5_000_000, 5_000_000]
    assert (splits["train"][0], splits["train"][-1]) == (1, 2)
    assert (splits["val"][0], splits["val"][-1]) == (3, 4)
    assert (splits["test"][0], splits["test"][-1]) == (5, 6)
    assert isinstance(splits["train"].base, np.memmap) or isinstance(splits["train"], np.memmap)  # mapped in place
    assert not (tmp_path / "cache").exists()


def test_enwik8_zip_is_extracted_once_into_the_cache(tmp_path):
    write_official(tmp_path / "raw")
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.write(tmp_path / "raw", "enwik8")
    (tmp_path / "raw").unlink()
    data_dir = tmp_path
    splits = corpus.load_corpus("enwik8", str(data_dir), str(tmp_path / "cache"))
    assert (splits["val"][0], splits["test"][-1]) == (3, 6)
    extracted = list((tmp_path / "cache").glob("enwik8-*/enwik8"))
    assert len(extracted) == 1
    stamp = extracted[0].stat().st_mtime_ns
    corpus.load_corpus("enwik8", str(data_dir), str(tmp_path / "cache"))
    assert extracted[0].stat().st_mtime_ns == stamp


def test_an_enwik8_of_the_wrong_size_is_refused_naming_file_and_sizes(tmp_path):
    write_official(tmp_path / "enwik8", size=1_000_000)
    with pytest.raises(LRADataError, match=r"enwik8: expected the official enwik8 file of 100,000,000 bytes, found "
                                           r"1,000,000 bytes"):
        corpus.load_corpus("enwik8", str(tmp_path), str(tmp_path / "cache"))


def test_a_missing_enwik8_names_the_download_command(tmp_path):
    with pytest.raises(LRADataError, match="python -m lra.download enwik8"):
        corpus.load_corpus("enwik8", str(tmp_path), str(tmp_path / "cache"))


def write_textdir(root, count, seed=0):
    rng = np.random.default_rng(seed)
    texts = {}
    for i in range(count):
        path = root / f"part{i % 3}" / f"doc{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = f"document {i}: " + "".join(rng.choice(list("abcdé xyz\n"), 50 + i))
        path.write_text(text, encoding="utf-8")
        texts[os.path.relpath(path, root)] = text.encode()
    return texts


def expected_split(texts, seed):
    """The reference: each file's split from its own sha256, written out here, in sorted path order."""
    import hashlib

    out = {s: b"" for s in corpus.SPLITS}
    for name in sorted(texts):
        fraction = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") / 2**64
        out["train" if fraction < 0.9 else "val" if fraction < 0.95 else "test"] += texts[name]
    return out


def test_a_text_folder_is_split_by_a_seeded_hash_of_file_names(tmp_path):
    texts = write_textdir(tmp_path / "docs", 60)
    for seed in (0, 7):
        expected = expected_split(texts, seed)
        if not all(expected.values()):
            continue
        splits = corpus.load_corpus("textdir", str(tmp_path / "docs"), str(tmp_path / "cache"), split_seed=seed)
        for name in corpus.SPLITS:
            assert bytes(splits[name]) == expected[name], (seed, name)
    assert expected_split(texts, 0) != expected_split(texts, 7)


def test_a_few_files_are_split_by_bytes(tmp_path):
    texts = write_textdir(tmp_path / "docs", 4)
    whole = b"".join(texts[name] for name in sorted(texts))
    splits = corpus.load_corpus("textdir", str(tmp_path / "docs"), str(tmp_path / "cache"))
    first, second = int(len(whole) * 0.9), int(len(whole) * 0.95)
    assert bytes(splits["train"]) == whole[:first]
    assert bytes(splits["val"]) == whole[first:second] and bytes(splits["test"]) == whole[second:]


def test_the_cache_is_reused_and_a_damaged_one_rebuilt(tmp_path):
    write_textdir(tmp_path / "docs", 30)
    first = {k: bytes(v) for k, v in corpus.load_corpus("textdir", str(tmp_path / "docs"), str(tmp_path / "c")).items()}
    (cache,) = list((tmp_path / "c").glob("corpus-textdir-*"))
    stamp = (cache / "train.bin").stat().st_mtime_ns
    corpus.load_corpus("textdir", str(tmp_path / "docs"), str(tmp_path / "c"))
    assert (cache / "train.bin").stat().st_mtime_ns == stamp
    with open(cache / "train.bin", "r+b") as f:
        f.truncate(3)
    again = corpus.load_corpus("textdir", str(tmp_path / "docs"), str(tmp_path / "c"))
    assert {k: bytes(v) for k, v in again.items()} == first


def test_pg19_layout_concatenates_each_split_in_name_order(tmp_path):
    for folder, books in (("train", ["b.txt", "a.txt"]), ("validation", ["v.txt"]), ("test", ["t.txt"])):
        (tmp_path / folder).mkdir()
        for book in books:
            (tmp_path / folder / book).write_text(f"<{folder}/{book}>")
    splits = corpus.load_corpus("pg19", str(tmp_path), str(tmp_path / "cache"))
    assert bytes(splits["train"]) == b"<train/a.txt><train/b.txt>"
    assert bytes(splits["val"]) == b"<validation/v.txt>" and bytes(splits["test"]) == b"<test/t.txt>"
    (tmp_path / "test" / "t.txt").unlink()
    (tmp_path / "test").rmdir()
    with pytest.raises(LRADataError, match="test/ is missing"):
        corpus.load_corpus("pg19", str(tmp_path), str(tmp_path / "cache"))


@pytest.mark.parametrize("content, message", [
    (b"fine text \xff\xfe broken", r"bad\.txt: not UTF-8 text \(byte offset 10"),
    (b"", r"bad\.txt: empty file"),
])
def test_a_hostile_text_file_is_named(tmp_path, content, message):
    write_textdir(tmp_path / "docs", 25)
    (tmp_path / "docs" / "bad.txt").write_bytes(content)
    with pytest.raises(LRADataError, match=message):
        corpus.load_corpus("textdir", str(tmp_path / "docs"), str(tmp_path / "cache"))


def test_a_fifo_where_a_text_file_belongs_is_named_and_never_opened(tmp_path):
    write_textdir(tmp_path / "docs", 25)
    os.mkfifo(tmp_path / "docs" / "pipe.txt")
    with pytest.raises(LRADataError, match=r"pipe\.txt.*FIFO"):
        corpus.load_corpus("textdir", str(tmp_path / "docs"), str(tmp_path / "cache"))


def test_windows_hold_inputs_and_their_next_bytes_without_copying():
    data = np.arange(23, dtype=np.uint8)
    split = corpus.windows(data, 5, "train")
    assert split.inputs.shape == split.labels.shape == (4, 5)  # (23 - 1) // 5 windows
    for i in range(4):
        np.testing.assert_array_equal(split.inputs[i], data[5 * i:5 * i + 5])
        np.testing.assert_array_equal(split.labels[i], data[5 * i + 1:5 * i + 6])
    assert np.shares_memory(split.inputs, data)
    kept = corpus.windows(data, 5, "val", max_windows=2)
    np.testing.assert_array_equal(kept.inputs, split.inputs[[0, 3]])
    with pytest.raises(LRADataError, match="the test split holds 5 bytes, fewer than one window of 6"):
        corpus.windows(data[:5], 5, "test")


def test_unigram_bpb_is_the_cross_entropy_of_smoothed_train_frequencies():
    train = np.array([0, 0, 0, 1], np.uint8)
    test = np.array([0, 1], np.uint8)
    total = 4 + 256
    expected = -(math.log2(4 / total) + math.log2(2 / total)) / 2
    assert corpus.unigram_bpb(train, test) == pytest.approx(expected, rel=1e-12)


def test_the_builtin_corpus_is_the_standard_library(tmp_path):
    splits = corpus.load_corpus("stdlib", "", str(tmp_path))
    assert all(len(splits[s]) > 100_000 for s in corpus.SPLITS)
    assert b"def " in bytes(splits["train"][:200_000])
