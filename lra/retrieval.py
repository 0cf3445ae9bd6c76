"""Document retrieval on the ACL Anthology Network (LRA "retrieval"; docs/lra_data.md sections 2 and 3.3).

Files: `new_aan_pairs.train.tsv`, `new_aan_pairs.eval.tsv` (our "val") and `new_aan_pairs.test.tsv`, either
directly in `data_dir` or in `<data_dir>/tsv_data/` (the layout of `lra_release/lra_release/`).

Format, as LRA reads it (`make_csv_dataset(field_delim='\\t', use_quote_delim=False, header=False)`):
  - no header; lines end in '\\n' (a '\\r' before it is dropped); every line is one example;
  - exactly 5 tab-separated columns `label id1 id2 text1 text2`;
  - `label` is a number equal to 0 or 1, possibly written as a float ("1.0", "0.0"); 1 = the two papers are
    linked by a citation;
  - quote characters are ordinary characters (LRA disables quote handling): they are kept literally, so
    this reader splits on tabs only and never uses the csv module.
The ids are not used. The texts are raw bytes and are never decoded (see lra/bytes.py).

Encoding: LRA computes `ByteTextEncoder.encode(s.numpy()[:10000])[:max_length]` on the tf.string (bytes),
i.e. the first min(10000, seq_len) bytes of each document, id = byte + 1, zero-padded. Both documents go
through the same encoder. An empty document is allowed (TF accepts it) and becomes an all-padding row.

Shapes: Split.inputs is (n, 2, seq_len) int32, [:, 0] = text1 and [:, 1] = text2, for a dual encoder;
labels (n,) int32. `Split.num_truncated` counts the examples with at least one document cut to seq_len.
"""

from __future__ import annotations

import math
import os

import numpy as np

from lra import bytes as byte_tokens
from lra import cache
from lra.download import download_hint
from lra.errors import LRADataError, located
from lra.files import bounded_lines, open_regular
from lra.tasks import Split

SPLIT_FILES = {
    "train": "new_aan_pairs.train.tsv",
    "val": "new_aan_pairs.eval.tsv",
    "test": "new_aan_pairs.test.tsv",
}
NUM_COLUMNS = 5  # label, id1, id2, text1, text2
RAW_BYTE_LIMIT = 10000  # LRA cuts every raw document to its first 10,000 bytes before encoding
# The longest line read (lra/files.py): two whole papers' text with label and ids. A paper's text is typically
# tens of KB; 16 MiB leaves ample room while a file without line breaks cannot exhaust memory.
MAX_LINE_BYTES = 16 << 20


def find_aan_dir(data_dir: str) -> str:
    """`data_dir` or `<data_dir>/tsv_data`, whichever holds all three AAN files; else LRADataError."""
    for directory in (data_dir, os.path.join(data_dir, "tsv_data")):
        if all(os.path.lexists(os.path.join(directory, name)) for name in SPLIT_FILES.values()):
            return directory
    missing = [
        os.path.join(data_dir, name)
        for name in SPLIT_FILES.values()
        if not os.path.lexists(os.path.join(data_dir, name))
    ]
    raise LRADataError(
        f"AAN files not found: {missing}; expected new_aan_pairs.{{train,eval,test}}.tsv in {data_dir} "
        f"or in {os.path.join(data_dir, 'tsv_data')}; {download_hint('retrieval', data_dir)}"
    )


def parse_label(text: bytes, where: str) -> int:
    """0 or 1 from a label column such as b"1", b"0.0"; anything else -> LRADataError naming `where`."""
    try:
        value = float(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise LRADataError(located(where, f"label must be a number (0 or 1), got {text[:40]!r}")) from None
    if value not in (0.0, 1.0):
        shown = value if math.isfinite(value) else text[:40]
        raise LRADataError(located(where, f"label must be 0 or 1, got {shown!r}"))
    return int(value)


def read_aan_tsv(path: str, byte_limit: int = RAW_BYTE_LIMIT) -> dict[str, np.ndarray]:
    """Read one AAN file, keeping the first `byte_limit` bytes of every document.

    Returns:
      {"flat": (sum,) uint8 kept bytes of text1_0, text2_0, text1_1, text2_1, ... (interleaved),
       "lengths": (2n,) int64 kept lengths, "full_lengths": (2n,) int64 lengths before the cut,
       "labels": (n,) int32}. Row i sits on line i + 1.
    Raises:
      LRADataError naming the file and line for a line without exactly 5 tab-separated columns (blank lines
      included), a bad label or a line over MAX_LINE_BYTES; naming the file when it holds no example or is not a
      regular file (lra/files.py).
    Cost: O(file size) time, O(n * byte_limit) memory.
    """
    if byte_limit < 1:
        raise ValueError(f"byte_limit must be >= 1, got {byte_limit}")
    kept = bytearray()  # grown in place: no list of documents plus a joined copy at the peak
    lengths: list[int] = []
    full_lengths: list[int] = []
    labels: list[int] = []
    with open_regular(path, "the AAN TSV file") as handle:
        for line_number, raw_line in bounded_lines(handle, path, MAX_LINE_BYTES, "an AAN row"):
            where = f"{path}, line {line_number}"
            line = raw_line.rstrip(b"\n")
            if line.endswith(b"\r"):
                line = line[:-1]
            columns = line.split(b"\t")
            if len(columns) != NUM_COLUMNS:
                raise LRADataError(
                    located(
                        where,
                        f"expected {NUM_COLUMNS} tab-separated columns (label, id1, id2, text1, text2), "
                        f"got {len(columns)}",
                    )
                )
            labels.append(parse_label(columns[0], where))
            for text in columns[3:]:
                kept += text[:byte_limit]
                lengths.append(min(len(text), byte_limit))
                full_lengths.append(len(text))
    if not labels:
        raise LRADataError(f"{path}: no examples; an empty split cannot be used")
    return {
        "flat": np.frombuffer(kept, dtype=np.uint8),
        "lengths": np.asarray(lengths, dtype=np.int64),
        "full_lengths": np.asarray(full_lengths, dtype=np.int64),
        "labels": np.asarray(labels, dtype=np.int32),
    }


def load_retrieval(data_dir: str, seq_len: int = 4000, *, use_cache: bool = True) -> dict[str, Split]:
    """Read the three AAN files into dual-input byte-level splits.

    Returns:
      {"train", "val", "test"} -> Split with inputs (n, 2, seq_len) int32 (byte + 1 of the first
      min(seq_len, 10000) bytes, padding 0) and labels (n,) int32. "val" is `new_aan_pairs.eval.tsv`.
    Cache: the kept bytes go to `<dir>/new_aan_pairs.bytes<K>.cache.npz`, K = min(seq_len, 10000), valid while
      the three files keep their sizes and mtimes (one cache per K, so the cache never holds more than is used).
    Raises:
      LRADataError naming file and line (module docstring); ValueError for seq_len < 1.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    directory = find_aan_dir(data_dir)
    paths = {split: os.path.join(directory, name) for split, name in SPLIT_FILES.items()}
    byte_limit = min(seq_len, RAW_BYTE_LIMIT)
    key = cache.cache_key("retrieval", byte_limit, cache.file_stamps(paths.values(), what="the AAN TSV file"))
    cache_path = os.path.join(directory, f"new_aan_pairs.bytes{byte_limit}.cache.npz")
    names = [f"{split}_{name}" for split in SPLIT_FILES for name in ("flat", "lengths", "full_lengths", "labels")]
    arrays = cache.read_cache(cache_path, key, names) if use_cache else None
    if arrays is None:
        arrays = {}
        for split, path in paths.items():
            arrays.update({f"{split}_{name}": value for name, value in read_aan_tsv(path, byte_limit).items()})
        if use_cache:
            cache.write_cache(cache_path, key, arrays)

    result = {}
    for split in SPLIT_FILES:
        documents, _ = byte_tokens.pad_documents(arrays[f"{split}_flat"], arrays[f"{split}_lengths"], seq_len)
        inputs = documents.reshape(-1, 2, seq_len)  # rows were interleaved text1, text2
        # A document is cut when it loses bytes to LRA's s[:10000] or to [:seq_len], i.e. to byte_limit.
        cut = arrays[f"{split}_full_lengths"].reshape(-1, 2) > byte_limit
        num_truncated = int(np.sum(cut.any(axis=1)))
        labels = np.asarray(arrays[f"{split}_labels"], dtype=np.int32)
        result[split] = Split(inputs=inputs, labels=labels, name=split, num_truncated=num_truncated)
    return result
