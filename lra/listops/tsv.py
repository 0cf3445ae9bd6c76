"""The official ListOps files and the tokeniser (docs/lra_data.md section 3.1).

Files follow the official layout `<dir>/basic_{train,val,test}.tsv`: tab-separated, header `Source\\tTarget`,
rows written by `csv.writer` (so lines end in '\\r\\n').

Tokenisation (fixed, unlike LRA's set-ordered vocabulary): parentheses are deleted, the rest is split on
whitespace, and each symbol maps to a fixed id; 0 is padding, and there is no OOV id (an unknown symbol is an
error). Sequences longer than `seq_len` are cut to their first `seq_len` tokens, as LRA does, and counted.

    id   0    1..10     11     12     13     14    15
    sym  pad  '0'..'9'  [MIN   [MAX   [MED   [SM   ]      (LRA renames ']' to 'X'; same role)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence

import numpy as np

from lra.errors import LRADataError, located
from lra.files import bounded_lines, open_regular
from lra.listops.generate import _DELETE_PARENS, END, VALUES

SPLITS = ("train", "val", "test")
PAD_ID = 0
VOCAB: dict[str, int] = {str(digit): digit + 1 for digit in VALUES}
VOCAB.update({"[MIN": 11, "[MAX": 12, "[MED": 13, "[SM": 14, END: 15})
VOCAB_SIZE = 16  # padding + 15 symbols
ID_TO_SYMBOL: dict[int, str] = {token_id: symbol for symbol, token_id in VOCAB.items()}

# Bumped when tokenisation changes, which invalidates the token caches written by `load_listops`
# (lra/listops/dataset.py).
TOKENIZER_VERSION = 1

_TARGETS = {str(value): value for value in VALUES}  # the exact spellings a Target column may hold
# The longest TSV line read (lra/files.py). LRA's rows have under 2,000 tokens (a few KB); 1 MiB allows rows of
# ~200,000 tokens while a file without line breaks cannot exhaust memory.
MAX_LINE_BYTES = 1 << 20


# ---------------------------------------------------------------------------------------------------------
# The official TSV files.


def split_path(data_dir: str, split: str, task: str = "basic") -> str:
    """`<data_dir>/<task>_<split>.tsv`, the official name (`basic_train.tsv`, ...)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return os.path.join(data_dir, f"{task}_{split}.tsv")


def write_tsv(path: str, rows: Iterable[tuple[str, int]]) -> None:
    """Write rows in the official format: csv.writer with tab delimiter, header `Source\\tTarget`, '\\r\\n'."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["Source", "Target"])
        for source, target in rows:
            writer.writerow([source, target])


def read_tsv(path: str) -> tuple[list[str], np.ndarray]:
    """Read an official ListOps TSV: header `Source\\tTarget`, then one `source\\ttarget` row per line.

    Returns:
      (sources, targets): the source strings and an (n,) int32 array of targets; row i sits on line i + 2.
    Raises:
      LRADataError naming the file and line: empty file, wrong header, a line that is not UTF-8, a row
      without exactly two tab-separated columns (blank lines included), a target other than '0'..'9', or a
      line over MAX_LINE_BYTES; naming the file when it holds no row after the header or is not a regular file
      (a FIFO, a device, a directory, a dangling link: refused before opening, see lra/files.py).
    """
    sources: list[str] = []
    targets: list[int] = []
    line_number = 0
    # Binary lines decoded one by one, so that even a decoding error names its line.
    with open_regular(path, "the ListOps TSV file") as handle:
        for line_number, raw_line in bounded_lines(handle, path, MAX_LINE_BYTES, "a ListOps row"):
            where = f"{path}, line {line_number}"
            try:
                line = raw_line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise LRADataError(
                    located(where, f"not UTF-8 text ({error.reason} at byte {error.start})")
                ) from None
            columns = line.split("\t")
            if line_number == 1:
                if columns != ["Source", "Target"]:
                    raise LRADataError(
                        located(where, f"expected the header 'Source<TAB>Target', got {line[:80]!r}")
                    )
                continue
            if len(columns) != 2:
                raise LRADataError(
                    located(where, f"expected 2 tab-separated columns (Source, Target), got {len(columns)}")
                )
            source, target_text = columns
            if target_text not in _TARGETS:
                raise LRADataError(
                    located(where, f"Target must be an integer 0..9, got {target_text[:40]!r}")
                )
            sources.append(source)
            targets.append(_TARGETS[target_text])
    if line_number == 0:
        raise LRADataError(f"{path}: empty file; expected a header line 'Source<TAB>Target' and rows")
    if not sources:
        raise LRADataError(f"{path}: no rows after the header; an empty split cannot be used")
    return sources, np.asarray(targets, dtype=np.int32)


def write_dataset(output_dir: str, splits: dict[str, list[tuple[str, int]]], task: str = "basic") -> None:
    """Write `<output_dir>/<task>_{train,val,test}.tsv` (creating the directory)."""
    os.makedirs(output_dir, exist_ok=True)
    for split in SPLITS:
        write_tsv(split_path(output_dir, split, task), splits[split])


# ---------------------------------------------------------------------------------------------------------
# Tokenisation.


def tokenize(source: str, *, where: str | None = None) -> list[int]:
    """Ids (1..15, no padding) of one source: delete '(' and ')', split on whitespace, map with VOCAB.

    Raises LRADataError naming the symbol (and `where`, e.g. "<file>, line 12") for a symbol outside the
    vocabulary, or for a source with no symbols at all. Cost O(len(source)).
    """
    symbols = source.translate(_DELETE_PARENS).split()
    try:
        ids = [VOCAB[symbol] for symbol in symbols]
    except KeyError as error:
        raise LRADataError(
            located(where, f"unknown ListOps symbol {error.args[0][:40]!r}; expected one of {list(VOCAB)}")
        ) from None
    if not ids:
        raise LRADataError(located(where, f"empty ListOps expression {source[:40]!r}"))
    return ids


def detokenize(ids: Iterable[int]) -> str:
    """Symbols of `ids` joined by spaces, padding dropped (for inspection; parentheses are not restored)."""
    return " ".join(ID_TO_SYMBOL[int(i)] for i in ids if int(i) != PAD_ID)


def tokenize_ragged(sources: Sequence[str], *, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise many sources into one flat array.

    Returns:
      (flat, lengths): flat (sum of lengths,) uint8 ids, row after row; lengths (n,) int64.
    Errors name `where` plus the line `i + 2` of row i (the official files' layout: one header line).
    """
    pieces = []
    lengths = np.empty(len(sources), dtype=np.int64)
    for i, source in enumerate(sources):
        ids = tokenize(source, where=f"{where}, line {i + 2}" if where else f"row {i}")
        pieces.append(bytes(ids))  # ids < 256
        lengths[i] = len(ids)
    flat = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    return flat, lengths


def pad_ragged(flat: np.ndarray, lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
    """Cut each row to its first `seq_len` ids and zero-pad it to seq_len.

    Args:
      flat: (sum of lengths,) ids, row after row. lengths: (n,) row lengths.
    Returns:
      (inputs, num_truncated): inputs (n, seq_len) int32; num_truncated = rows longer than seq_len.
    Cost: O(n * seq_len), vectorised.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    lengths = np.asarray(lengths, dtype=np.int64)
    kept = np.minimum(lengths, seq_len)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
    # Index of every kept id in `flat`, row-major, which is the order of True cells in `mask`.
    row_offsets = np.repeat(starts, kept)
    position_in_row = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
    inputs = np.zeros((len(lengths), seq_len), dtype=np.int32)
    mask = np.arange(seq_len)[None, :] < kept[:, None]
    inputs[mask] = flat[row_offsets + position_in_row]
    return inputs, int(np.sum(lengths > seq_len))

