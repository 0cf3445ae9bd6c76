"""Text classification on IMDB at the byte level (LRA "text"; docs/lra_data.md sections 2 and 3.2).

Sources, tried in this order (the first that exists is used; its missing parts are then errors):

1. The Stanford `aclImdb` tree: `<data_dir>/aclImdb/{train,test}/{neg,pos}/*.txt`, or the same with
   `data_dir` pointing at `aclImdb` itself. Only `*.txt` files directly inside `neg/` and `pos/` are read
   (`unsup/`, `*.feat`, `urls_*.txt` and the vocabulary files are ignored). Within a split the examples are
   ordered neg then pos, each directory's files sorted by name (plain string order).
2. A two-column TSV export: `<data_dir>/train.tsv` and `<data_dir>/test.tsv`. Exact format:
   - lines end in '\\n' (a '\\r' before it is dropped); every line is one example `label<TAB>text`;
   - `label` is exactly `0` (neg) or `1` (pos);
   - `text` is everything after the FIRST tab, raw bytes: no quoting, no escapes, so it may contain tabs and
     quote characters but no newline (IMDB reviews have none; their line breaks are written `<br />`);
   - an optional header: a first line exactly `label<TAB>text` is skipped; no other line is special.

Each text is read as raw bytes and stripped of leading and trailing ASCII whitespace, as TFDS's
`imdb_reviews` builder does (`f.read().strip()`); there is no other cleaning (no lowercasing, `<br />` kept).
Nothing is decoded, so invalid UTF-8 needs no handling: it is tokenised byte for byte (see lra/bytes.py), exactly
what LRA's ByteTextEncoder does with TFDS's byte strings.

Tokens: id = byte + 1, padding 0, vocabulary 257, no EOS; each review is cut to its first `seq_len` bytes
(truncation is part of the task: counted in `Split.num_truncated`, not warned about). Labels: 0 = neg, 1 = pos.

Splits: IMDB has no validation split (LRA validates on the test set). Here "val" is carved from TRAIN with a
fixed seed (`split_validation`), so model selection never looks at the test set; "train" is the rest of
TRAIN and "test" is the whole test set, both in file order.
"""

from __future__ import annotations

import os

import numpy as np

from lra import bytes as byte_tokens
from lra import cache
from lra.download import download_hint
from lra.errors import LRADataError, located
from lra.files import bounded_lines, open_regular, read_bounded
from lra.tasks import Split

DISK_SPLITS = ("train", "test")
LABELS = {"neg": 0, "pos": 1}
TSV_HEADER = b"label\ttext"
TSV_LABELS = {b"0": 0, b"1": 1}
CACHE_NAME = "lra_text_bytes.cache.npz"
# Bounds on what is read (lra/files.py): IMDB reviews are a few KB (tens at most), so a review file or TSV line
# of over a MiB is not a review (and a FIFO, a device or a directory is refused before it is opened).
REVIEW_MAX_BYTES = 1 << 20
TSV_MAX_LINE = REVIEW_MAX_BYTES + 64  # label, tab, the review, line ending


# ---------------------------------------------------------------------------------------------------------
# Finding and reading the sources.


def find_source(data_dir: str) -> tuple[str, str]:
    """("aclimdb", root) or ("tsv", data_dir) for the first layout found (module docstring, "Sources")."""
    if not os.path.isdir(data_dir):
        raise LRADataError(f"{data_dir}: IMDB data directory not found; {download_hint('text', data_dir)}")
    nested = os.path.join(data_dir, "aclImdb")
    if os.path.isdir(nested):
        return "aclimdb", nested
    if any(os.path.isdir(os.path.join(data_dir, split)) for split in DISK_SPLITS):
        return "aclimdb", data_dir
    if any(os.path.lexists(os.path.join(data_dir, f"{split}.tsv")) for split in DISK_SPLITS):
        return "tsv", data_dir
    raise LRADataError(
        f"{data_dir}: no IMDB data found; expected aclImdb/{{train,test}}/{{neg,pos}}/*.txt, "
        "{train,test}/{neg,pos}/*.txt, or train.tsv and test.tsv; " + download_hint("text", data_dir)
    )


def list_review_files(root: str, split: str) -> list[tuple[str, int]]:
    """[(path, label), ...] of `<root>/<split>/{neg,pos}/*.txt`: neg then pos, names sorted.

    Raises LRADataError naming the directory when it is missing or holds no `*.txt` file.
    """
    files = []
    for label_name, label in LABELS.items():
        directory = os.path.join(root, split, label_name)
        if not os.path.isdir(directory):
            raise LRADataError(
                f"{directory}: directory not found; expected the aclImdb layout <root>/{split}/{{neg,pos}}/*.txt; "
                + download_hint("text", root)
            )
        names = sorted(name for name in os.listdir(directory) if name.endswith(".txt"))
        if not names:
            raise LRADataError(f"{directory}: no review files (*.txt); an empty split cannot be used")
        files.extend((os.path.join(directory, name), label) for name in names)
    return files


def read_review(path: str) -> bytes:
    """The raw bytes of one review file, stripped of surrounding ASCII whitespace.

    Raises LRADataError naming the file when it is empty (or only whitespace), larger than REVIEW_MAX_BYTES, or
    not a regular file (a directory named `*.txt`, a FIFO, a device, a dangling link; see lra/files.py).
    """
    try:
        text = read_bounded(path, "the review file", REVIEW_MAX_BYTES).strip()
    except OSError as error:
        raise LRADataError(f"{path}: cannot read the review file ({error.strerror or error})") from None
    if not text:
        raise LRADataError(f"{path}: empty review (a truncated download or extraction?)")
    return text


def read_tsv(path: str) -> tuple[list[bytes], np.ndarray]:
    """Read one TSV export (module docstring, "Sources" 2).

    Returns:
      (texts, labels): the stripped raw texts and an (n,) int32 array of labels; row i sits on line i + 1,
      or i + 2 after a header.
    Raises:
      LRADataError naming the file and line: a line without a tab (blank lines included), a label other than
      `0`/`1`, an empty text, a line over TSV_MAX_LINE bytes; or naming the file when it holds no example or is
      not a regular file (lra/files.py).
    """
    texts: list[bytes] = []
    labels: list[int] = []
    with open_regular(path, "the IMDB TSV file") as handle:
        for line_number, raw_line in bounded_lines(handle, path, TSV_MAX_LINE, "an IMDB TSV row"):
            line = raw_line.rstrip(b"\n")
            if line.endswith(b"\r"):
                line = line[:-1]
            if line_number == 1 and line == TSV_HEADER:
                continue
            where = f"{path}, line {line_number}"
            label_text, tab, text = line.partition(b"\t")
            if not tab:
                raise LRADataError(located(where, "expected 'label<TAB>text', found no tab"))
            if label_text not in TSV_LABELS:
                raise LRADataError(located(where, f"label must be 0 (neg) or 1 (pos), got {label_text[:40]!r}"))
            text = text.strip()
            if not text:
                raise LRADataError(located(where, "empty text"))
            texts.append(text)
            labels.append(TSV_LABELS[label_text])
    if not texts:
        raise LRADataError(f"{path}: no examples; an empty split cannot be used")
    return texts, np.asarray(labels, dtype=np.int32)


def _read_split(kind: str, root: str, split: str) -> tuple[list[bytes], np.ndarray]:
    if kind == "tsv":
        return read_tsv(os.path.join(root, f"{split}.tsv"))
    files = list_review_files(root, split)
    texts = [read_review(path) for path, _ in files]
    return texts, np.asarray([label for _, label in files], dtype=np.int32)


def _source_paths(kind: str, root: str) -> list[str]:
    if kind == "tsv":
        paths = [os.path.join(root, f"{split}.tsv") for split in DISK_SPLITS]
        missing = [path for path in paths if not os.path.lexists(path)]
        if missing:
            raise LRADataError(
                f"IMDB TSV files not found: {missing}; expected train.tsv and test.tsv in {root} (or the aclImdb "
                f"tree: {download_hint('text')})"
            )
        return paths
    return [path for split in DISK_SPLITS for path, _ in list_review_files(root, split)]


# ---------------------------------------------------------------------------------------------------------
# Validation split and loading.


def split_validation(num_examples: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of TRAIN kept for training and rows moved to validation.

    n_val = floor(val_fraction * n + 1/2); the validation rows are the first n_val entries of
    `np.random.default_rng(seed).permutation(n)`. Both index arrays are returned sorted (file order kept).
    Returns (train_rows, val_rows), int64, disjoint, covering 0..n-1.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    num_val = int(np.floor(val_fraction * num_examples + 0.5))
    if not 1 <= num_val <= num_examples - 1:
        raise ValueError(
            f"val_fraction={val_fraction} of {num_examples} training examples gives {num_val} validation "
            "examples; need at least 1 for validation and 1 for training"
        )
    order = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def load_text(
    data_dir: str, seq_len: int = 4096, *, val_fraction: float = 0.1, seed: int = 0, use_cache: bool = True
) -> dict[str, Split]:
    """Read IMDB from `data_dir` (aclImdb tree or TSV export) into byte-level splits.

    Returns:
      {"train", "val", "test"} -> Split with inputs (n, seq_len) int32 (byte + 1, padding 0) and labels (n,)
      int32 (0 = neg, 1 = pos). "val" holds round(val_fraction * 25000) TRAIN reviews chosen by `seed`.
    Cache: the stripped raw bytes go to `<root>/lra_text_bytes.cache.npz` (root = the aclImdb directory or
      the TSV directory), valid while every source file keeps its size and mtime. It does not depend on
      seq_len, val_fraction or seed. An unwritable directory just means no cache.
    Raises:
      LRADataError naming the path: missing directory or file, empty split, empty or unreadable review,
      malformed TSV line, too few training examples for a validation split; ValueError for bad arguments.
    Cost: O(total bytes) to read (IMDB: ~65 MB, 50k files), O(n * seq_len) to pad.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    kind, root = find_source(data_dir)
    paths = _source_paths(kind, root)
    what = "the IMDB TSV file" if kind == "tsv" else "the review file"
    key = cache.cache_key("text", kind, cache.file_stamps(paths, relative_to=root, what=what))
    cache_path = os.path.join(root, CACHE_NAME)
    names = [f"{split}_{name}" for split in DISK_SPLITS for name in ("flat", "lengths", "labels")]
    arrays = cache.read_cache(cache_path, key, names) if use_cache else None
    if arrays is None:
        arrays = {}
        for split in DISK_SPLITS:
            texts, labels = _read_split(kind, root, split)
            flat, lengths = byte_tokens.pack_documents(texts)
            arrays.update({f"{split}_flat": flat, f"{split}_lengths": lengths, f"{split}_labels": labels})
        if use_cache:
            cache.write_cache(cache_path, key, arrays)

    num_train = len(arrays["train_labels"])
    try:
        train_rows, val_rows = split_validation(num_train, val_fraction, seed)
    except ValueError as error:
        if not 0.0 < val_fraction < 1.0:
            raise  # a bad argument, not bad data
        source = paths[0] if kind == "tsv" else os.path.join(root, "train")
        raise LRADataError(f"{source}: too few training examples to carve a validation split: {error}") from None
    selections = {
        "train": ("train", train_rows),
        "val": ("train", val_rows),
        "test": ("test", None),
    }
    result = {}
    for name, (source, rows) in selections.items():
        flat, lengths = arrays[f"{source}_flat"], arrays[f"{source}_lengths"]
        labels = np.asarray(arrays[f"{source}_labels"], dtype=np.int32)
        if rows is not None:
            flat, lengths = byte_tokens.select_documents(flat, lengths, rows)
            labels = labels[rows]
        inputs, num_truncated = byte_tokens.pad_documents(flat, lengths, seq_len)
        result[name] = Split(inputs=inputs, labels=labels, name=name, num_truncated=num_truncated)
    return result
