"""ListOps: the generator, the official TSV format, the tokeniser and the loader (docs/lra_data.md sections 3.1, 4).

An example is a nested expression over the digits 0-9 with the operators MIN, MAX, MED (median, truncated
to an int) and SM (sum modulo 10); the label is its value, 0-9. The generator follows LRA's
`lra_benchmarks/data/listops.py`: same operators, leaf probability, left-nested binary tuples, string form,
evaluation, strict length filter and de-duplication. Unlike LRA it is seeded, and its output depends only on
its parameters and the seed, not on the number of worker processes (see `generate_listops`).

Files follow the official layout `<dir>/basic_{train,val,test}.tsv`: tab-separated, header `Source\\tTarget`,
rows written by `csv.writer` (so lines end in '\\r\\n').

Tokenisation (fixed, unlike LRA's set-ordered vocabulary): parentheses are deleted, the rest is split on
whitespace, and each symbol maps to a fixed id; 0 is padding, and there is no OOV id (an unknown symbol is an
error). Sequences longer than `seq_len` are cut to their first `seq_len` tokens, as LRA does, and counted.

    id   0    1..10     11     12     13     14    15
    sym  pad  '0'..'9'  [MIN   [MAX   [MED   [SM   ]      (LRA renames ']' to 'X'; same role)

Command line (mirrors LRA's flags; writes the official files):
    python -m lra.listops --output_dir=/tmp/listops --num_train_samples=96000 --seed=0
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from lra import cache
from lra.errors import LRADataError, located
from lra.files import bounded_lines, open_regular
from lra.progress import progress_bar
from lra.tasks import Split

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUES = tuple(range(10))
VALUE_P = 0.25  # probability that a node above max_depth is an operator rather than a leaf

SPLITS = ("train", "val", "test")
PAD_ID = 0
VOCAB: dict[str, int] = {str(digit): digit + 1 for digit in VALUES}
VOCAB.update({"[MIN": 11, "[MAX": 12, "[MED": 13, "[SM": 14, END: 15})
VOCAB_SIZE = 16  # padding + 15 symbols
ID_TO_SYMBOL: dict[int, str] = {token_id: symbol for symbol, token_id in VOCAB.items()}

# Rows per generation chunk. Part of the output's definition (chunk c draws from a stream seeded by
# (seed, c)), so changing it changes every generated dataset: bump GENERATOR_VERSION with it.
CHUNK_SIZE = 256
GENERATOR_VERSION = 1
# Bumped when tokenisation changes, which invalidates the token caches written by `load_listops`.
TOKENIZER_VERSION = 1

Tree = int | str | tuple["Tree", "Tree"]

_DELETE_PARENS = str.maketrans("", "", "()")
_TARGETS = {str(value): value for value in VALUES}  # the exact spellings a Target column may hold
# The longest TSV line read (lra/files.py). LRA's rows have under 2,000 tokens (a few KB); 1 MiB allows rows of
# ~200,000 tokens while a file without line breaks cannot exhaust memory.
MAX_LINE_BYTES = 1 << 20


# ---------------------------------------------------------------------------------------------------------
# Trees: generation, string form, value.


def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> tuple[Tree, int]:
    """One random expression tree and its length, exactly as LRA's `generate_tree`.

    A node at `depth < max_depth` is an operator with probability VALUE_P (a leaf otherwise); at max_depth
    it is always a leaf. An operator draws 2..max_args children, then its operator, and is stored as
    left-nested pairs `((((op, c0), c1), ...), END)`. The random calls happen in LRA's order.

    Returns:
      (tree, length) where length counts tokens without parentheses: 1 per leaf, 2 per operator ([OP and ]).
    Cost: O(size of the tree); recursion depth is at most max_depth.
    """
    if depth < max_depth and rng.random() <= VALUE_P:
        num_args = rng.randint(2, max_args)
        children = []
        length = 2
        for _ in range(num_args):
            child, child_length = generate_tree(rng, depth + 1, max_depth, max_args)
            children.append(child)
            length += child_length
        tree: Tree = (rng.choice(OPERATORS), children[0])
        for child in children[1:]:
            tree = (tree, child)
        return (tree, END), length
    # LRA draws r = random.random() only when depth < max_depth and makes a leaf iff r > VALUE_P.
    return rng.choice(VALUES), 1


def _collect_tokens(tree: Tree, out: list[str]) -> None:
    if isinstance(tree, tuple):
        out.append("(")
        _collect_tokens(tree[0], out)
        _collect_tokens(tree[1], out)
        out.append(")")
    else:
        out.append(str(tree))


def to_string(tree: Tree) -> str:
    """LRA's string form: a leaf is `str(v)`, an operator as is, a pair `(a, b)` is `'( ' + a + ' ' + b + ' )'`.

    Example: SM(2, 6, 5) gives `( ( ( ( [SM 2 ) 6 ) 5 ) ] )`. Built as a token list joined by single spaces,
    which equals the recursive definition in O(size) instead of O(size * depth).
    """
    tokens: list[str] = []
    _collect_tokens(tree, tokens)
    return " ".join(tokens)


def apply_operator(operator: str, args: Sequence[int]) -> int:
    """Value of `operator` on `args`: MIN, MAX, MED = int(np.median(args)), SM = sum(args) % 10.

    For an even count MED is the mean of the two middle values truncated toward zero; the arguments are
    non-negative, so that is floor division.
    """
    if not args:
        raise ValueError(f"operator {operator!r} needs at least one argument")
    if operator == "[MIN":
        return min(args)
    if operator == "[MAX":
        return max(args)
    if operator == "[MED":
        ordered = sorted(args)
        middle = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[middle]
        return (ordered[middle - 1] + ordered[middle]) // 2
    if operator == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {operator!r}; expected one of {OPERATORS}")


def _fold(tree: Tree) -> int | str | tuple[str, list[int]]:
    """Fold left-nested pairs into an int (complete node), an operator, or (operator, args so far)."""
    if not isinstance(tree, tuple):
        return tree
    left = _fold(tree[0])
    right = _fold(tree[1])
    if isinstance(right, (str, tuple)) and right != END:
        raise ValueError(
            f"malformed ListOps tree: the right element of a pair must be a value or ']', got {right!r}"
        )
    if isinstance(left, str):
        if left not in OPERATORS:
            raise ValueError(f"malformed ListOps tree: expected an operator on the left, got {left!r}")
        if right == END:
            raise ValueError(f"malformed ListOps tree: operator {left} closed without arguments")
        return (left, [right])
    if isinstance(left, tuple):
        operator, args = left
        if right == END:
            return apply_operator(operator, args)
        return (operator, args + [right])
    raise ValueError(f"malformed ListOps tree: a pair cannot start with the value {left!r}")


def to_value(tree: Tree) -> int:
    """The value (0-9) of a tree in LRA's left-nested form."""
    value = _fold(tree)
    if isinstance(value, int):
        return value
    raise ValueError(f"malformed ListOps tree: it does not close every operator (folded to {value!r})")


def evaluate_source(source: str) -> int:
    """Value of an expression given as text (parentheses ignored), with an explicit stack.

    An independent second evaluator: it reads the token stream `[OP a b ... ]` rather than the tree.
    """
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for symbol in source.translate(_DELETE_PARENS).split():
        if symbol in OPERATORS:
            stack.append((symbol, []))
            continue
        if symbol == END:
            if not stack:
                raise ValueError(f"unbalanced ']' in ListOps source {source[:80]!r}")
            operator, args = stack.pop()
            value = apply_operator(operator, args)
        elif symbol.isdigit() and len(symbol) == 1:
            value = int(symbol)
        else:
            raise ValueError(f"unknown ListOps symbol {symbol!r}")
        if stack:
            stack[-1][1].append(value)
        elif result is None:
            result = value
        else:
            raise ValueError(f"ListOps source holds more than one expression: {source[:80]!r}")
    if stack or result is None:
        raise ValueError(f"incomplete ListOps source {source[:80]!r}")
    return result


def max_tree_length(max_depth: int, max_args: int) -> int:
    """Largest possible length: every node above max_depth an operator with max_args children."""
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


# ---------------------------------------------------------------------------------------------------------
# Generation of a dataset.


def _chunk_seed(seed: int, chunk_index: int) -> int:
    """A 128-bit seed for chunk `chunk_index`, derived from (seed, chunk_index) by numpy's SeedSequence."""
    words = np.random.SeedSequence([seed, chunk_index]).generate_state(4, dtype=np.uint32)
    return int.from_bytes(words.tobytes(), "little")


def _generate_chunk(task: tuple[int, int, int, int, int, int, int]) -> list[tuple[str, int]]:
    """CHUNK_SIZE accepted rows (string, value) of chunk `chunk_index`, in generation order, not de-duplicated."""
    seed, chunk_index, chunk_size, min_length, max_length, max_depth, max_args = task
    rng = random.Random(_chunk_seed(seed, chunk_index))
    rows: list[tuple[str, int]] = []
    # Guard against a length window the tree distribution (almost) never hits: the parameters are checked
    # for feasibility up front, but an acceptance rate of 1e-9 would still hang.
    max_attempts = 10_000 * chunk_size + 1_000_000
    for _ in range(max_attempts):
        tree, length = generate_tree(rng, 1, max_depth, max_args)
        if min_length < length < max_length:
            rows.append((to_string(tree), to_value(tree)))
            if len(rows) == chunk_size:
                return rows
    raise ValueError(
        f"ListOps generation: fewer than {chunk_size} of {max_attempts} random trees had "
        f"{min_length} < length < {max_length} (max_depth={max_depth}, max_args={max_args}); widen the window"
    )


def _default_num_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_context() -> multiprocessing.context.BaseContext:
    """Fork workers (fast, and needs no importable __main__) unless a threaded runtime is loaded.

    Forking a process that runs jax's (or torch's, tensorflow's) threads can deadlock the child, so then the
    workers are spawned; spawn re-imports the caller's __main__, which must guard its entry point with
    `if __name__ == "__main__":` (absl and pytest entry points do).
    """
    threaded = any(name in sys.modules for name in ("jax", "jaxlib", "torch", "tensorflow"))
    return multiprocessing.get_context("spawn" if threaded else "fork")


# The generator section of a config (config.data.listops): int ranges, and the relations `check_generator_config`
# reports before anything is built (the TaskSpec in lra/tasks.py carries both).
GENERATOR_RANGES = {
    "num_train": (1, 10_000_000), "num_val": (1, 10_000_000), "num_test": (1, 10_000_000),
    "min_length": (0, 2**20), "max_length": (1, 2**20), "max_depth": (1, 100), "max_args": (2, 100),
    "generator_seed": (0, 2**32 - 1),
}


def _download_hint(data_dir: str) -> str:
    from lra.download import download_hint  # lazily: lra.download imports the task registry, which imports this

    return download_hint("listops", data_dir)


def check_generator_config(section: Any, context: Any) -> Iterator[tuple[str, str]]:
    """The relations of config.data.listops for a generated run: settings that can generate trees, a sequence
    length that holds the longest example, a train split that holds a batch (lra.tasks.DataCheck)."""
    if context.source != "generated":
        return
    if section is None:
        yield "data.listops", ("missing; generated ListOps needs its generator settings (see "
                               "experiments/configs/listops.py)")
        return
    window = ("min_length", "max_length", "max_depth", "max_args")
    if all(key in section for key in window):
        values = {key: section[key] for key in window}
        try:
            _check_generation_parameters((1, 1, 1), seed=0, **values)
        except ValueError as error:
            yield "data.listops.min_length", (f"{error} (data.listops.min_length, max_length, max_depth and "
                                              "max_args)")
        longest = values["max_length"] - 1  # lengths are < max_length
        if context.seq_len is not None and context.seq_len < longest:
            yield "data.seq_len", (f"{context.seq_len} is shorter than the longest generated ListOps example "
                                   f"(data.listops.max_length - 1 = {longest}): truncated expressions have wrong "
                                   "labels; raise data.seq_len or lower max_length")
    if "num_train" in section and context.batch_size is not None and context.batch_size > section["num_train"]:
        yield "train.batch_size", (f"{context.batch_size} is larger than the generated train split "
                                   f"(data.listops.num_train = {section['num_train']})")


def _check_generation_parameters(
    counts: Sequence[int], min_length: int, max_length: int, max_depth: int, max_args: int, seed: int
) -> None:
    values = dict(zip(("num_train", "num_val", "num_test"), counts))
    values.update(
        min_length=min_length, max_length=max_length, max_depth=max_depth, max_args=max_args, seed=seed
    )
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"ListOps generation: {name} must be a non-negative int, got {value!r}")
    if sum(counts) == 0:
        raise ValueError("ListOps generation: num_train + num_val + num_test must be positive")
    if max_depth < 1 or max_args < 2:
        raise ValueError(
            f"ListOps generation: expected max_depth >= 1 and max_args >= 2, got {max_depth}, {max_args}"
        )
    longest = max_tree_length(max_depth, max_args)
    # Lengths that occur: 1 (a leaf) and, when max_depth >= 2, 4..longest (an operator node: 2 + its
    # children's lengths). The window keeps min_length < length < max_length.
    shortest_operator = max(min_length + 1, 4)
    leaf_fits = min_length < 1 < max_length
    operator_fits = max_depth >= 2 and shortest_operator < max_length and shortest_operator <= longest
    if not (leaf_fits or operator_fits):
        raise ValueError(
            f"ListOps generation: no tree can have {min_length} < length < {max_length}; with "
            f"max_depth={max_depth}, max_args={max_args} lengths are 1 or 4..{longest}"
        )


def generate_listops(
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    seed: int,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, list[tuple[str, int]]]:
    """Generate distinct ListOps examples `(source, target)` with min_length < length < max_length.

    Determinism: candidates are drawn in chunks of CHUNK_SIZE accepted rows; chunk c uses its own
    `random.Random` seeded from (seed, c). Workers compute whole chunks; the parent merges them in chunk
    order, drops rows whose string was already seen, and stops at num_train + num_val + num_test rows. So the
    result is a function of the parameters and the seed only, whatever `num_workers` is. The first num_train
    rows are train, the next num_val val, the last num_test test (as LRA, whose order came from a set).

    Args:
      num_workers: processes to use (default: CPUs available to this process). Workers are forked, or
        spawned once jax is imported (see `_worker_context`).
      progress: a progress bar on stderr (distinct examples found / total, rate, time left; lra/progress.py),
        updated as chunks complete. TQDM_DISABLE=1 in the environment turns it off too.
    Cost: about 1.5 ms of one core per accepted row at LRA's settings (min 500, max 2000, depth 10, args 10),
    so LRA's 100,000 examples take about 150 CPU-seconds (minutes on 2 cores).
    """
    counts = (num_train, num_val, num_test)
    _check_generation_parameters(counts, min_length, max_length, max_depth, max_args, seed)
    total = sum(counts)
    workers = _default_num_workers() if num_workers is None else num_workers
    if workers < 1:
        raise ValueError(f"ListOps generation: num_workers must be >= 1, got {workers}")
    # Generous bound for the chunk count: reached only when the window holds too few distinct trees.
    max_chunks = 20 * math.ceil(total / CHUNK_SIZE) + 20

    def tasks(start: int, stop: int) -> list[tuple[int, int, int, int, int, int, int]]:
        return [
            (int(seed), index, CHUNK_SIZE, int(min_length), int(max_length), int(max_depth), int(max_args))
            for index in range(start, stop)
        ]

    rows: list[tuple[str, int]] = []
    seen: set[str] = set()
    bar = progress_bar(total, "ListOps", "ex", enabled=progress)

    def run(map_chunks: Callable[[list], Iterable[list[tuple[str, int]]]]) -> None:
        next_chunk = 0
        while len(rows) < total:
            if next_chunk >= max_chunks:
                raise ValueError(
                    f"ListOps generation: found only {len(rows)} distinct examples of {total} requested in "
                    f"{max_chunks} chunks; the length window {min_length} < length < {max_length} holds too "
                    "few distinct trees"
                )
            # One wave: the chunks still needed if no duplicates turn up, at least one per worker.
            wave = max(math.ceil((total - len(rows)) / CHUNK_SIZE), workers)
            wave = min(wave, max_chunks - next_chunk)
            for chunk in map_chunks(tasks(next_chunk, next_chunk + wave)):
                before = len(rows)
                for source, target in chunk:
                    if source not in seen:
                        seen.add(source)
                        rows.append((source, target))
                        if len(rows) == total:
                            break
                bar.update(len(rows) - before)
                if len(rows) == total:
                    return
            next_chunk += wave

    with bar:
        if workers == 1 or total <= CHUNK_SIZE:
            run(lambda chunk_tasks: map(_generate_chunk, chunk_tasks))
        else:
            with _worker_context().Pool(workers) as pool:
                # imap yields in task order; leaving the `with` block terminates chunks no longer needed.
                run(lambda chunk_tasks: pool.imap(_generate_chunk, chunk_tasks, chunksize=1))

    return {
        "train": rows[:num_train],
        "val": rows[num_train : num_train + num_val],
        "test": rows[num_train + num_val :],
    }


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


# ---------------------------------------------------------------------------------------------------------
# Loading with a token cache.


def load_listops(
    data_dir: str, seq_len: int = 2000, *, task: str = "basic", use_cache: bool = True
) -> dict[str, Split]:
    """Read `<data_dir>/<task>_{train,val,test}.tsv` into int32 splits zero-padded to seq_len.

    Returns:
      {"train", "val", "test"} -> Split with inputs (n, seq_len) int32 (ids as in the module docstring) and
      labels (n,) int32. Rows longer than seq_len are truncated; `Split.num_truncated` counts them and a
      warning is issued when any were.
    Cache: the unpadded token ids go to `<data_dir>/<task>_tokens.cache.npz`, valid while the three files keep
    their sizes and mtimes (and TOKENIZER_VERSION holds). It does not depend on seq_len, since padding is
    redone on every load (fast). An unwritable directory just means no cache.
    """
    paths = [split_path(data_dir, split, task) for split in SPLITS]
    missing = [path for path in paths if not os.path.lexists(path)]
    if missing:
        raise LRADataError(
            f"ListOps files not found: {missing}; expected {task}_{{train,val,test}}.tsv in {data_dir}; "
            + _download_hint(data_dir)
        )
    cache_path = os.path.join(data_dir, f"{task}_tokens.cache.npz")
    key = cache.cache_key("listops", TOKENIZER_VERSION, cache.file_stamps(paths, what="the ListOps TSV file"))
    names = [f"{split}_{name}" for split in SPLITS for name in ("flat", "lengths", "labels")]
    arrays = cache.read_cache(cache_path, key, names) if use_cache else None
    if arrays is None:
        arrays = {}
        for split, path in zip(SPLITS, paths):
            sources, targets = read_tsv(path)
            flat, lengths = tokenize_ragged(sources, where=path)
            arrays.update({f"{split}_flat": flat, f"{split}_lengths": lengths, f"{split}_labels": targets})
        if use_cache:
            cache.write_cache(cache_path, key, arrays)
    result = {}
    for split in SPLITS:
        inputs, num_truncated = pad_ragged(arrays[f"{split}_flat"], arrays[f"{split}_lengths"], seq_len)
        if num_truncated:
            warnings.warn(
                f"ListOps {split}: {num_truncated} of {len(inputs)} sequences are longer than seq_len={seq_len} "
                "and were truncated",
                stacklevel=2,
            )
        labels = np.asarray(arrays[f"{split}_labels"], dtype=np.int32)
        result[split] = Split(inputs=inputs, labels=labels, name=split, num_truncated=num_truncated)
    return result


# ---------------------------------------------------------------------------------------------------------
# A generated dataset cached on disk.


def generation_parameters(
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    seed: int,
) -> dict[str, int]:
    """Everything that determines a generated dataset (num_workers does not), as a JSON-able dict."""
    return {
        "generator_version": GENERATOR_VERSION,
        "chunk_size": CHUNK_SIZE,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "num_test": int(num_test),
        "min_length": int(min_length),
        "max_length": int(max_length),
        "max_depth": int(max_depth),
        "max_args": int(max_args),
        "seed": int(seed),
    }


def ensure_generated(
    cache_root: str,
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    seed: int,
    num_workers: int | None = None,
    progress: bool = True,
) -> str:
    """Generate a ListOps dataset under `cache_root` unless it is already there; return its directory.

    The directory is `<cache_root>/listops-<first 12 hex digits of sha256(parameters)>/` and holds
    basic_{train,val,test}.tsv plus params.json. It is written to a temporary sibling and renamed into place,
    so it either exists complete or not at all (a killed run leaves only a hidden `.listops-*.tmp-*` dir).
    Concurrent callers may both generate; one rename wins and the other discards its copy. While generating,
    a progress bar goes to stderr unless `progress` is False (see `generate_listops`).
    """
    params = generation_parameters(
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        min_length=min_length,
        max_length=max_length,
        max_depth=max_depth,
        max_args=max_args,
        seed=seed,
    )
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    name = f"listops-{digest}"
    final_dir = os.path.join(cache_root, name)
    if os.path.isdir(final_dir):
        return final_dir
    os.makedirs(cache_root, exist_ok=True)
    splits = generate_listops(
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        min_length=min_length,
        max_length=max_length,
        max_depth=max_depth,
        max_args=max_args,
        seed=seed,
        num_workers=num_workers,
        progress=progress,
    )
    temp_dir = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_root)
    try:
        write_dataset(temp_dir, splits)
        with open(os.path.join(temp_dir, "params.json"), "w") as handle:
            json.dump(params, handle, indent=2, sort_keys=True)
        try:
            # Atomic. It fails when final_dir exists non-empty, i.e. a concurrent caller finished first.
            os.rename(temp_dir, final_dir)
        except OSError:
            if not os.path.isdir(final_dir):
                raise
            shutil.rmtree(temp_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return final_dir


# ---------------------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str] | None = None) -> int:
    """Generate ListOps files in the official format; flags mirror LRA's `listops.py` (plus seed/workers)."""
    parser = argparse.ArgumentParser(prog="python -m lra.listops", description=main.__doc__)
    parser.add_argument("--output_dir", required=True, help="directory for <task>_{train,val,test}.tsv")
    parser.add_argument("--task", default="basic", help="file name prefix")
    parser.add_argument("--num_train_samples", "--num_train", dest="num_train", type=int, default=96000)
    parser.add_argument("--num_valid_samples", "--num_val", dest="num_val", type=int, default=2000)
    parser.add_argument("--num_test_samples", "--num_test", dest="num_test", type=int, default=2000)
    parser.add_argument("--max_depth", type=int, default=10)
    parser.add_argument("--max_args", type=int, default=10)
    parser.add_argument("--min_length", type=int, default=500, help="keep trees with min_length < length")
    parser.add_argument("--max_length", type=int, default=2000, help="keep trees with length < max_length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=None, help="default: all available CPUs")
    args = parser.parse_args(argv)
    splits = generate_listops(
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        min_length=args.min_length,
        max_length=args.max_length,
        max_depth=args.max_depth,
        max_args=args.max_args,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    write_dataset(args.output_dir, splits, task=args.task)
    for split in SPLITS:
        print(f"{split_path(args.output_dir, split, args.task)}: {len(splits[split])} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
