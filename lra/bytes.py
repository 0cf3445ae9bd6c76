"""Byte-level tokenisation shared by the text (IMDB) and retrieval (AAN) tasks, and their token caches.

The tokeniser is LRA's `tfds.deprecated.text.ByteTextEncoder()` (docs/lra_data.md sections 3.2, 3.3):

    id = byte + 1   for every byte 0..255      0 = padding      vocabulary 257      no BOS, EOS or OOV id

Documents are handled as raw `bytes` from start to end: nothing is ever decoded, so text that is not valid
UTF-8 (or any stray byte, NUL included) is tokenised byte for byte instead of failing or being replaced.
LRA does the same: TFDS keeps IMDB texts as bytes and `ByteTextEncoder.encode` applies `bytearray` to them.

Storage: the documents of a split are kept "ragged", as one flat uint8 array of raw bytes (row after row) plus
(n,) lengths; `pad_documents` turns them into (n, L) int32 ids. The caches below store that ragged form, so
they do not depend on L.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PAD_ID = 0
BYTE_OFFSET = 1  # id of byte b is b + BYTE_OFFSET: 0 stays free for padding
VOCAB_SIZE = 256 + BYTE_OFFSET
# Bumped whenever what the caches hold changes (tokenisation, stripping, file order), which invalidates them.


def encode_bytes(document: bytes) -> np.ndarray:
    """(len(document),) int32 ids of a raw byte string: byte + 1. Cost O(len)."""
    return np.frombuffer(bytes(document), dtype=np.uint8).astype(np.int32) + BYTE_OFFSET


def decode_ids(ids: Iterable[int]) -> bytes:
    """The bytes behind `ids`, padding (0) dropped: the inverse of `encode_bytes` (for inspection)."""
    values = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64).ravel()
    values = values[values != PAD_ID]
    if values.size and (values.min() < BYTE_OFFSET or values.max() >= VOCAB_SIZE):
        raise ValueError(f"byte ids must lie in [{BYTE_OFFSET}, {VOCAB_SIZE}) or be padding 0")
    return (values - BYTE_OFFSET).astype(np.uint8).tobytes()


def pack_documents(documents: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents into (flat (sum of lengths,) uint8 raw bytes, lengths (n,) int64)."""
    lengths = np.fromiter((len(document) for document in documents), dtype=np.int64, count=len(documents))
    flat = np.frombuffer(b"".join(documents), dtype=np.uint8)
    return flat, lengths


def pad_documents(flat: np.ndarray, lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
    """Byte ids of every document cut to its first `seq_len` bytes and zero-padded.

    Args:
      flat: (sum of lengths,) uint8 raw bytes, document after document. lengths: (n,) document lengths.
    Returns:
      (inputs, num_truncated): inputs (n, seq_len) int32 with ids byte + 1 and padding 0; num_truncated is the
      number of documents longer than seq_len.
    Cost: O(n * seq_len) time; one Python step per document, so no index array as large as the corpus is built
    (AAN's training split holds ~300k documents of up to 4000 kept bytes).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if int(lengths.sum()) != len(flat):
        raise ValueError(f"lengths sum to {int(lengths.sum())} but flat holds {len(flat)} bytes")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    kept = np.minimum(lengths, seq_len)
    inputs = np.zeros((len(lengths), seq_len), dtype=np.int32)
    for row, (start, count) in enumerate(zip(starts.tolist(), kept.tolist())):
        inputs[row, :count] = flat[start : start + count]
        inputs[row, :count] += BYTE_OFFSET
    return inputs, int(np.sum(lengths > seq_len))


def select_documents(flat: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ragged sub-collection of documents `rows` (in that order): (flat uint8, lengths int64)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    pieces = [flat[starts[row] : starts[row] + lengths[row]] for row in np.asarray(rows, dtype=np.int64)]
    sub_flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint8)
    return sub_flat.astype(np.uint8, copy=False), lengths[np.asarray(rows, dtype=np.int64)]
