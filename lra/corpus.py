"""Byte-level corpora for causal language modelling, memory-mapped, cut into windows of the training length.

Formats (`CorpusFormat`), each read from `data_dir` into three uint8 arrays "train", "val", "test":

    enwik8    the official file `enwik8` (or `enwik8.zip` holding it) of exactly 100,000,000 bytes; the standard
              split: the first 90,000,000 bytes train, the next 5,000,000 validation, the last 5,000,000 test
    text8     `text8` (or `text8.zip`), 100,000,000 bytes, split the same way
    pg19      the PG-19 layout: `train/`, `validation/`, `test/` folders of `.txt` books (UTF-8), each split the
              concatenation of its books in name order
    textdir   any folder of UTF-8 `.txt` files (searched recursively): a file goes to train, validation or test by
              a seeded hash of its path (90 / 5 / 5 %); with fewer than 20 files, the concatenation of all files is
              split by bytes instead (90 / 5 / 5 %)
    stdlib    the `.py` files of the running interpreter's standard library (site-packages left out; the few that
              are not UTF-8 or are empty are skipped), split as textdir: a corpus every machine has, so the LM's
              main command needs no download (Python 3.11.7 here: 1,790 files, 31.5 MB)

Every file is opened through lra/files.py (regular files only); a non-UTF-8 text file, an empty one, an enwik8 of
the wrong size or a split shorter than one window is an `LRADataError` naming the file (and the byte offset).
Concatenations are cached once under `cache_dir/corpus-<key>/` (raw .bin per split, keyed by the files' names,
sizes and modification times and the options) and memory-mapped, so enwik8 costs no Python objects; the raw
enwik8 file itself is mapped in place.

`windows(data, length)` cuts a split into non-overlapping windows of length + 1 bytes, as strided views (no
copy): inputs are the first `length` bytes of each window, labels the `length` bytes after each input byte (the
next-byte targets). Batching (lra/batching.py) copies only the rows of a batch.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
import zipfile

import numpy as np

from lra.errors import LRADataError
from lra.files import check_regular, open_regular
from lra.tasks import DataContext, DataRequest, HeadKind, Split, TaskSpec, register_task

SPLITS = ("train", "val", "test")
ENWIK8_BYTES = 100_000_000
STANDARD_SPLIT = (90_000_000, 5_000_000, 5_000_000)  # enwik8 and text8: train / validation / test bytes
HASH_FRACTIONS = (0.90, 0.95)  # textdir and stdlib: a file's hash below 0.90 -> train, below 0.95 -> val, else test
MIN_FILES_FOR_FILE_SPLIT = 20  # fewer files: split the concatenation by bytes instead
MAX_TEXT_FILE_BYTES = 1 << 30  # one text file: 1 GiB at most (PG-19's largest book is about 30 MB)
CACHE_VERSION = 1


class CorpusFormat(enum.StrEnum):
    """The corpus formats `load_corpus` reads (see the module docstring)."""

    STDLIB = "stdlib"
    ENWIK8 = "enwik8"
    TEXT8 = "text8"
    PG19 = "pg19"
    TEXTDIR = "textdir"


def _download_hint(name: str, data_dir: str) -> str:
    from lra.download import download_hint  # here: `python -m lra.download` imports lra (and so this module) first

    return download_hint(name, data_dir)


def _standard_file(data_dir: str, name: str, cache_dir: str) -> np.ndarray:
    """enwik8 / text8: the raw file mapped in place, or the member of its .zip extracted once into the cache."""
    raw, packed = os.path.join(data_dir, name), os.path.join(data_dir, f"{name}.zip")
    if not os.path.lexists(raw) and os.path.lexists(packed):
        stamp = check_regular(packed, f"the official {name}.zip")
        key = hashlib.sha256(json.dumps([CACHE_VERSION, os.path.abspath(packed), stamp.st_size,
                                         stamp.st_mtime_ns]).encode()).hexdigest()[:12]
        raw = os.path.join(cache_dir, f"{name}-{key}", name)
        if not os.path.exists(raw):
            _extract(packed, name, raw)
    elif not os.path.lexists(raw):
        raise LRADataError(f"{data_dir}: expected the official file {name!r} or {name + '.zip'!r} in it; "
                           f"{_download_hint(name, data_dir)}")
    size = check_regular(raw, f"the official {name} file").st_size
    if size != ENWIK8_BYTES:
        raise LRADataError(f"{raw}: expected the official {name} file of {ENWIK8_BYTES:,} bytes, found {size:,} bytes "
                           "(truncated or another file)")
    return np.memmap(raw, dtype=np.uint8, mode="r")


def _extract(packed: str, member: str, target: str) -> None:
    """Streams `member` of the zip `packed` to `target` (atomically), refusing more than ENWIK8_BYTES."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        with open_regular(packed, "a .zip file") as handle, zipfile.ZipFile(handle) as archive:
            if member not in archive.namelist():
                raise LRADataError(f"{packed}: expected a member named {member!r}, found {archive.namelist()[:5]}")
            fd, temp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{member}.tmp-")
            with os.fdopen(fd, "wb") as out, archive.open(member) as source:
                written = 0
                while chunk := source.read(1 << 22):
                    written += len(chunk)
                    if written > ENWIK8_BYTES:
                        raise LRADataError(f"{packed}: member {member!r} holds more than {ENWIK8_BYTES:,} bytes")
                    out.write(chunk)
            os.replace(temp, target)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise LRADataError(f"{packed}: not a readable .zip archive ({type(error).__name__}: {error})") from None


def _standard_splits(data: np.ndarray) -> dict[str, np.ndarray]:
    train, val, _ = STANDARD_SPLIT
    return {"train": data[:train], "val": data[train:train + val], "test": data[train + val:]}


def _text_files(root: str, suffix: str) -> list[str]:
    """Every `suffix` file below `root`, sorted by relative path (site-packages left out)."""
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "__pycache__"))
        found += [os.path.join(directory, n) for n in names if n.endswith(suffix)]
    return sorted(found, key=lambda path: os.path.relpath(path, root))


def _read_text(path: str, strict: bool = True) -> bytes:
    """A text file's bytes, checked to be non-empty UTF-8 (LRADataError naming the file and the offset). With
    strict False (the stdlib corpus, whose tests hold a few files in other encodings on purpose) such a file
    is left out: b""."""
    with open_regular(path, "a UTF-8 text file", MAX_TEXT_FILE_BYTES) as handle:
        data = handle.read(MAX_TEXT_FILE_BYTES + 1)
    if not data:
        if not strict:
            return b""
        raise LRADataError(f"{path}: empty file (expected UTF-8 text)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        if not strict:
            return b""
        raise LRADataError(f"{path}: not UTF-8 text (byte offset {error.start}: {error.reason})") from None
    return data


def _hash_fraction(name: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _assign_files(files: list[str], root: str, seed: int) -> dict[str, list[str]] | None:
    """Files per split by a seeded hash of their relative paths; None when too few files for a split by file."""
    if len(files) < MIN_FILES_FOR_FILE_SPLIT:
        return None
    assigned: dict[str, list[str]] = {name: [] for name in SPLITS}
    for path in files:
        fraction = _hash_fraction(os.path.relpath(path, root), seed)
        assigned["train" if fraction < HASH_FRACTIONS[0] else "val" if fraction < HASH_FRACTIONS[1] else "test"].append(
            path)
    return assigned if all(assigned.values()) else None


def _cached_concatenation(cache_dir: str, what: str, groups: dict[str, list[str]] | list[str], root: str,
                          options: dict, *, strict: bool = True) -> dict[str, np.ndarray]:
    """The splits' concatenated files, built once under cache_dir and memory-mapped. `groups` maps each split to
    its files, or is one list of files whose concatenation is split by bytes (90 / 5 / 5 %)."""
    files = sorted({p for g in (groups.values() if isinstance(groups, dict) else [groups]) for p in g})
    stamps = [[os.path.relpath(p, root), check_regular(p, "a UTF-8 text file").st_size,
               os.stat(p).st_mtime_ns] for p in files]
    key = hashlib.sha256(json.dumps([CACHE_VERSION, what, os.path.abspath(root), stamps, options],
                                    sort_keys=True).encode()).hexdigest()
    directory = os.path.join(cache_dir, f"corpus-{what}-{key[:12]}")
    cached = _open_cached(directory, key)
    if cached is not None:
        return cached
    os.makedirs(cache_dir, exist_ok=True)
    temp = tempfile.mkdtemp(prefix=f".corpus-{what}.tmp-", dir=cache_dir)
    try:
        sizes = {}
        if isinstance(groups, dict):
            for split, paths in groups.items():
                with open(os.path.join(temp, f"{split}.bin"), "wb") as out:
                    sizes[split] = sum(out.write(_read_text(p, strict)) for p in paths)
        else:
            whole = b"".join(_read_text(p, strict) for p in groups)
            first, second = int(len(whole) * HASH_FRACTIONS[0]), int(len(whole) * HASH_FRACTIONS[1])
            for split, part in zip(SPLITS, (whole[:first], whole[first:second], whole[second:])):
                with open(os.path.join(temp, f"{split}.bin"), "wb") as out:
                    sizes[split] = out.write(part)
        with open(os.path.join(temp, "key.json"), "w") as out:
            json.dump({"key": key, "sizes": sizes}, out)
        if os.path.lexists(directory):
            shutil.rmtree(directory, ignore_errors=True)
        os.replace(temp, directory)
    finally:
        if os.path.exists(temp):
            shutil.rmtree(temp, ignore_errors=True)
    cached = _open_cached(directory, key)
    if cached is None:
        raise LRADataError(f"{directory}: the corpus cache just written cannot be read back")
    return cached


def _open_cached(directory: str, key: str) -> dict[str, np.ndarray] | None:
    """The cached splits, or None (rebuild) when missing, stale or damaged (a size differs from key.json)."""
    try:
        with open(os.path.join(directory, "key.json")) as f:
            record = json.load(f)
        if record["key"] != key:
            return None
        splits = {}
        for split in SPLITS:
            path = os.path.join(directory, f"{split}.bin")
            if check_regular(path, "a corpus cache file").st_size != record["sizes"][split]:
                return None
            splits[split] = (np.memmap(path, dtype=np.uint8, mode="r") if record["sizes"][split]
                             else np.zeros(0, np.uint8))
        return splits
    except (OSError, ValueError, KeyError, TypeError, LRADataError):
        return None


def stdlib_root() -> str:
    """The running interpreter's standard-library directory (the `stdlib` corpus)."""
    return sysconfig.get_paths()["stdlib"]


def load_corpus(corpus_format: str, data_dir: str, cache_dir: str, *, split_seed: int = 0) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: uint8 arrays (memory-mapped) of the corpus's bytes (see the module docstring)."""
    if corpus_format not in tuple(CorpusFormat):
        raise ValueError(f"unknown corpus format {corpus_format!r}; expected one of "
                         f"{', '.join(repr(f.value) for f in CorpusFormat)}")
    if corpus_format in (CorpusFormat.ENWIK8, CorpusFormat.TEXT8):
        return _standard_splits(_standard_file(data_dir, str(corpus_format), cache_dir))
    if corpus_format == CorpusFormat.PG19:
        groups = {}
        for split, folder in zip(SPLITS, ("train", "validation", "test")):
            path = os.path.join(data_dir, folder)
            if not os.path.isdir(path):
                raise LRADataError(f"{data_dir}: expected the PG-19 layout (train/, validation/, test/ folders of .txt "
                                   f"books); {folder}/ is missing; {_download_hint('pg19', data_dir)}")
            groups[split] = _text_files(path, ".txt")
            if not groups[split]:
                raise LRADataError(f"{path}: no .txt books in it")
        return _cached_concatenation(cache_dir, "pg19", groups, data_dir, {})
    root, suffix = (stdlib_root(), ".py") if corpus_format == CorpusFormat.STDLIB else (data_dir, ".txt")
    files = _text_files(root, suffix)
    if not files:
        raise LRADataError(f"{root}: no {suffix} files in it (searched recursively)")
    assigned = _assign_files(files, root, split_seed)
    return _cached_concatenation(cache_dir, str(corpus_format), assigned if assigned is not None else files, root,
                                 {"split_seed": split_seed}, strict=corpus_format != CorpusFormat.STDLIB)


def windows(data: np.ndarray, length: int, name: str, *, max_windows: int = 0, where: str = "") -> Split:
    """`data` cut into non-overlapping windows of length + 1 bytes (strided views, no copy): inputs (n, L) uint8,
    the first L bytes of each window; labels (n, L) uint8, the next byte after each input byte. max_windows > 0
    keeps that many, evenly spaced (a bounded evaluation)."""
    count = (len(data) - 1) // length
    if count < 1:
        raise LRADataError(f"{where or 'the corpus'}: the {name} split holds {len(data):,} bytes, fewer than one "
                           f"window of {length + 1:,} (the training length + 1)")
    data = np.asarray(data)
    step = data.strides[0]
    inputs = np.lib.stride_tricks.as_strided(data, shape=(count, length), strides=(length * step, step),
                                             writeable=False)
    labels = np.lib.stride_tricks.as_strided(data[1:], shape=(count, length), strides=(length * step, step),
                                             writeable=False)
    if 0 < max_windows < count:
        keep = np.linspace(0, count - 1, max_windows).round().astype(np.int64)
        inputs, labels = inputs[keep], labels[keep]
    return Split(inputs, labels, name)


def unigram_bpb(train: np.ndarray, test: np.ndarray) -> float:
    """Bits per byte of `test` under the byte frequencies of `train` (add-one smoothed): the order-0 baseline."""
    counts = np.bincount(np.asarray(train, np.uint8).reshape(-1), minlength=256).astype(np.float64) + 1.0
    log_probs = np.log2(counts / counts.sum())
    test_counts = np.bincount(np.asarray(test, np.uint8).reshape(-1), minlength=256).astype(np.float64)
    return float(-(test_counts * log_probs).sum() / max(test_counts.sum(), 1.0))


# ------------------------------------------------------------------------------------------------- the LM task

LM_TRAIN_LENGTH = 256  # the default training length (config.data.seq_len overrides it)


def _load_lm(spec: TaskSpec, request: DataRequest) -> dict[str, Split]:
    options = request.options["lm"]
    corpus = load_corpus(options["format"], request.data_dir, request.cache_dir, split_seed=options["split_seed"])
    where = request.data_dir if options["format"] != CorpusFormat.STDLIB else stdlib_root()
    return {name: windows(corpus[name], spec.seq_len, name, where=where,
                          max_windows=0 if name == "train" else options["max_eval_windows"])
            for name in SPLITS}


def _check_lm(section, context: DataContext):
    if section is None:
        yield "data.lm", ("missing; the LM task needs format, split_seed and max_eval_windows "
                          "(experiments/configs/lm.py)")
        return
    corpus_format = section.get("format")
    if context.source == "builtin" and corpus_format not in (None, CorpusFormat.STDLIB):
        yield "data.lm.format", (f"{corpus_format!r} is read from files: set --config.data.source=files and "
                                 "--config.data.data_dir=DIR (the built-in corpus is 'stdlib')")
    elif context.source == "files" and corpus_format == CorpusFormat.STDLIB:
        yield "data.lm.format", ("'stdlib' is built in: set --config.data.source=builtin, or a format read from "
                                 "data_dir ('enwik8', 'text8', 'pg19', 'textdir')")


register_task(TaskSpec(
    name="lm", seq_len=LM_TRAIN_LENGTH, vocab_size=256, num_classes=256, head=HeadKind.PER_POSITION, causal=True,
    padded=False, fixed_length=False, loaders={"builtin": _load_lm, "files": _load_lm}, metrics=("accuracy", "bpb"),
    reads="the corpus of data.lm.format (enwik8 / text8 file, PG-19 folders, or .txt files; "
          "python -m lra.download enwik8|text8|pg19)", data_section="lm",
    data_ranges={"split_seed": (0, 2**32 - 1), "max_eval_windows": (0, 10_000_000)},
    data_choices={"format": tuple(f.value for f in CorpusFormat)}, check_data=_check_lm,
    description="byte-level causal language modelling: next-byte prediction on a corpus (lra.corpus)"))

