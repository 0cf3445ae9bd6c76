"""Tests for lra/text.py and lra/bytes.py: IMDB byte-level loading from the aclImdb tree and the TSV export."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lra import bytes as byte_tokens
from lra import text
from lra.errors import LRADataError
from lra.tasks import get_task

# file name -> raw content, per split and label. Contents exercise stripping, <br />, quotes, tabs, non-UTF-8.
TRAIN = {
    "neg": {f"{i}_{i % 4 + 1}.txt": f"  bad film number {i}<br />\n".encode() for i in range(10)},
    "pos": {f"{i}_{i % 4 + 7}.txt": f'good "film" {i}\t!'.encode() for i in range(10)},
}
TEST = {
    "neg": {"2_3.txt": b"\xff\xfe caf\xc3\xa9 \x00 bad", "10_1.txt": b"awful\r\n"},
    "pos": {"1_10.txt": b"great", "0_8.txt": "\u00e9l\u00e9gant".encode("utf-8")},
}


def reference_ids(raw: bytes, seq_len: int) -> list[int]:
    """LRA's ByteTextEncoder on TFDS's stripped bytes, cut and zero-padded: written out without the library."""
    ids = [b + 1 for b in raw.strip()][:seq_len]
    return ids + [0] * (seq_len - len(ids))


def write_aclimdb(root, splits=(("train", TRAIN), ("test", TEST))):
    for split, reviews in splits:
        for label_name, files in reviews.items():
            directory = os.path.join(root, split, label_name)
            os.makedirs(directory, exist_ok=True)
            for name, content in files.items():
                with open(os.path.join(directory, name), "wb") as handle:
                    handle.write(content)
    # Files of the official archive that the reader must ignore.
    os.makedirs(os.path.join(root, "train", "unsup"), exist_ok=True)
    with open(os.path.join(root, "train", "unsup", "0_0.txt"), "wb") as handle:
        handle.write(b"unlabelled")
    for name in ("train/labeledBow.feat", "train/urls_pos.txt", "imdb.vocab", "README"):
        with open(os.path.join(root, name), "wb") as handle:
            handle.write(b"0 1:1\n")
    return str(root)


def ordered(reviews):
    """(raw texts, labels) in the documented order: neg then pos, file names sorted as strings."""
    texts, labels = [], []
    for label_name, label in (("neg", 0), ("pos", 1)):
        for name in sorted(reviews[label_name]):
            texts.append(reviews[label_name][name])
            labels.append(label)
    return texts, labels


def write_tsv(path, reviews, *, header=False, newline=b"\n"):
    texts, labels = ordered(reviews)
    with open(path, "wb") as handle:
        if header:
            handle.write(b"label\ttext" + newline)
        for raw, label in zip(texts, labels):
            handle.write(str(label).encode() + b"\t" + raw.strip() + newline)


@pytest.fixture
def imdb_dir(tmp_path):
    write_aclimdb(tmp_path / "aclImdb")
    return str(tmp_path)


def test_byte_tokeniser_matches_lra_and_round_trips():
    raw = bytes(range(256))
    ids = byte_tokens.encode_bytes(raw)
    assert ids.dtype == np.int32 and ids.tolist() == list(range(1, 257))
    assert byte_tokens.decode_ids(np.concatenate([ids, [0, 0]])) == raw
    assert byte_tokens.VOCAB_SIZE == 257 == get_task("text").vocab_size == get_task("retrieval").vocab_size
    assert byte_tokens.PAD_ID == get_task("text").pad_id == 0
    with pytest.raises(ValueError):
        byte_tokens.decode_ids([257])


def test_pad_documents_matches_a_reference_and_counts_truncations():
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() for n in (0, 1, 5, 7, 12, 3)]
    flat, lengths = byte_tokens.pack_documents(documents)
    inputs, num_truncated = byte_tokens.pad_documents(flat, lengths, 7)
    assert inputs.dtype == np.int32 and inputs.shape == (6, 7)
    expected = [([b + 1 for b in document] + [0] * 7)[:7] for document in documents]  # no stripping here
    assert inputs.tolist() == expected
    assert num_truncated == 1  # only the 12-byte document
    sub_flat, sub_lengths = byte_tokens.select_documents(flat, lengths, np.array([4, 1]))
    assert sub_flat.tobytes() == documents[4] + documents[1] and sub_lengths.tolist() == [12, 1]
    with pytest.raises(ValueError, match="seq_len"):
        byte_tokens.pad_documents(flat, lengths, 0)


def test_aclimdb_tokens_labels_and_order(imdb_dir):
    splits = text.load_text(imdb_dir, seq_len=24, use_cache=False)
    test_texts, test_labels = ordered(TEST)
    assert splits["test"].inputs.shape == (4, 24) and splits["test"].inputs.dtype == np.int32
    assert splits["test"].inputs.tolist() == [reference_ids(raw, 24) for raw in test_texts]
    assert splits["test"].labels.tolist() == test_labels == [0, 0, 1, 1]
    # String order: "10_1.txt" < "2_3.txt".
    assert splits["test"].inputs[0, :5].tolist() == [b + 1 for b in b"awful"]


def test_raw_bytes_are_tokenised_without_decoding(imdb_dir):
    splits = text.load_text(imdb_dir, seq_len=16, use_cache=False)
    invalid_utf8 = splits["test"].inputs[1]  # "2_3.txt": 0xff 0xfe, UTF-8 é and a NUL byte
    assert invalid_utf8[:2].tolist() == [0xFF + 1, 0xFE + 1]
    assert invalid_utf8[6:8].tolist() == [0xC3 + 1, 0xA9 + 1]
    assert invalid_utf8[9] == 1  # NUL is byte 0 -> id 1, distinct from padding
    assert invalid_utf8[13] == ord("d") + 1 and invalid_utf8[14:].tolist() == [0, 0]  # 14 bytes, then padding


def test_data_dir_may_point_at_aclimdb_itself(imdb_dir):
    outer = text.load_text(imdb_dir, seq_len=32, use_cache=False)
    inner = text.load_text(os.path.join(imdb_dir, "aclImdb"), seq_len=32, use_cache=False)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(outer[split].inputs, inner[split].inputs)
        np.testing.assert_array_equal(outer[split].labels, inner[split].labels)


@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_tsv_export_gives_the_same_splits_as_the_tree(imdb_dir, tmp_path, header, newline):
    tsv_dir = tmp_path / "tsv"
    tsv_dir.mkdir()
    write_tsv(tsv_dir / "train.tsv", TRAIN, header=header, newline=newline)
    write_tsv(tsv_dir / "test.tsv", TEST, header=header, newline=newline)
    from_tree = text.load_text(imdb_dir, seq_len=40, use_cache=False)
    from_tsv = text.load_text(str(tsv_dir), seq_len=40, use_cache=False)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(from_tree[split].inputs, from_tsv[split].inputs)
        np.testing.assert_array_equal(from_tree[split].labels, from_tsv[split].labels)
    # Tabs and quotes inside the text are kept literally.
    pos = from_tsv["train"].inputs[from_tsv["train"].labels == 1][0]
    assert byte_tokens.decode_ids(pos).startswith(b'good "film" ') and b"\t!" in byte_tokens.decode_ids(pos)


def test_truncation_keeps_the_first_bytes_and_is_counted(imdb_dir):
    splits = text.load_text(imdb_dir, seq_len=5, use_cache=False)
    test_texts, _ = ordered(TEST)
    assert splits["test"].inputs.tolist() == [reference_ids(raw, 5) for raw in test_texts]
    assert splits["test"].num_truncated == sum(len(raw.strip()) > 5 for raw in test_texts) == 2
    assert text.load_text(imdb_dir, seq_len=64, use_cache=False)["test"].num_truncated == 0


def test_validation_is_carved_from_train_deterministically(imdb_dir):
    train_texts, train_labels = ordered(TRAIN)
    all_rows = {(tuple(reference_ids(raw, 48)), label) for raw, label in zip(train_texts, train_labels)}
    first = text.load_text(imdb_dir, seq_len=48, val_fraction=0.25, seed=3, use_cache=False)
    again = text.load_text(imdb_dir, seq_len=48, val_fraction=0.25, seed=3, use_cache=False)
    other = text.load_text(imdb_dir, seq_len=48, val_fraction=0.25, seed=4, use_cache=False)
    assert len(first["val"]) == 5 and len(first["train"]) == 15 and len(first["test"]) == 4
    np.testing.assert_array_equal(first["val"].inputs, again["val"].inputs)
    assert not np.array_equal(first["val"].inputs, other["val"].inputs)
    rows = lambda split: {(tuple(x), int(y)) for x, y in zip(split.inputs.tolist(), split.labels)}
    assert rows(first["train"]) | rows(first["val"]) == all_rows
    assert not rows(first["train"]) & rows(first["val"])
    # The test set is never touched by the carving.
    np.testing.assert_array_equal(first["test"].inputs, other["test"].inputs)


def test_split_validation_follows_its_documented_rule():
    train_rows, val_rows = text.split_validation(25000, 0.1, 0)
    expected = np.random.default_rng(0).permutation(25000)
    assert val_rows.tolist() == sorted(expected[:2500].tolist())
    assert train_rows.tolist() == sorted(expected[2500:].tolist())
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="val_fraction"):
            text.split_validation(100, fraction, 0)
    with pytest.raises(ValueError, match="validation"):
        text.split_validation(3, 0.01, 0)  # rounds to 0 validation examples


def test_cache_is_used_until_a_file_changes(imdb_dir, monkeypatch):
    first = text.load_text(imdb_dir, seq_len=20)
    assert os.path.isfile(os.path.join(imdb_dir, "aclImdb", text.CACHE_NAME))

    def fail(path):
        raise AssertionError(f"read {path} despite a valid cache")

    monkeypatch.setattr(text, "read_review", fail)
    cached = text.load_text(imdb_dir, seq_len=20)
    np.testing.assert_array_equal(first["test"].inputs, cached["test"].inputs)
    # A different seq_len reuses the same cache (it stores unpadded bytes).
    assert text.load_text(imdb_dir, seq_len=8)["test"].inputs.shape == (4, 8)
    monkeypatch.undo()
    path = os.path.join(imdb_dir, "aclImdb", "test", "pos", "1_10.txt")
    with open(path, "wb") as handle:
        handle.write(b"changed review")
    changed = text.load_text(imdb_dir, seq_len=20)
    assert byte_tokens.decode_ids(changed["test"].inputs[3]) == b"changed review"


def test_missing_directories_and_empty_splits_name_the_path(tmp_path):
    with pytest.raises(LRADataError, match="not found"):
        text.load_text(str(tmp_path / "nowhere"))
    with pytest.raises(LRADataError, match="no IMDB data found"):
        text.load_text(str(tmp_path))
    root = tmp_path / "aclImdb"
    write_aclimdb(root, splits=(("train", TRAIN),))
    with pytest.raises(LRADataError, match=r"test[/\\]neg: directory not found"):
        text.load_text(str(tmp_path), use_cache=False)
    write_aclimdb(root, splits=(("test", {"neg": TEST["neg"], "pos": {}}),))
    with pytest.raises(LRADataError, match=r"test[/\\]pos: no review files"):
        text.load_text(str(tmp_path), use_cache=False)


def test_an_empty_review_file_is_an_error(tmp_path):
    root = tmp_path / "aclImdb"
    write_aclimdb(root)
    (root / "test" / "pos" / "5_9.txt").write_bytes(b" \n")
    with pytest.raises(LRADataError, match=r"5_9\.txt: empty review"):
        text.load_text(str(tmp_path), use_cache=False)


@pytest.mark.parametrize(
    "content, line, fragment",
    [
        (b"0\tfine\n2\tbad label\n", 2, "label must be 0"),
        (b"label\ttext\n1\tok\nneg\tword label\n", 3, "label must be 0"),
        (b"1\tok\n\n0\tafter a blank line\n", 2, "no tab"),
        (b"1 no tab at all\n", 1, "no tab"),
        (b"1\tok\n0\t   \n", 2, "empty text"),
    ],
)
def test_tsv_errors_name_file_and_line(tmp_path, content, line, fragment):
    (tmp_path / "train.tsv").write_bytes(content)
    (tmp_path / "test.tsv").write_bytes(b"0\tx\n")
    with pytest.raises(LRADataError, match=rf"train\.tsv, line {line}: .*{fragment}"):
        text.load_text(str(tmp_path), use_cache=False)


def test_tsv_empty_or_missing_files_are_errors(tmp_path):
    (tmp_path / "train.tsv").write_bytes(b"label\ttext\n")
    (tmp_path / "test.tsv").write_bytes(b"0\tx\n")
    with pytest.raises(LRADataError, match=r"train\.tsv: no examples"):
        text.load_text(str(tmp_path), use_cache=False)
    os.remove(tmp_path / "test.tsv")
    with pytest.raises(LRADataError, match=r"test\.tsv"):
        text.load_text(str(tmp_path), use_cache=False)
