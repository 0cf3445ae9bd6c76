"""The ListOps generator (docs/lra_data.md section 4): trees, their string form and value, seeded datasets.

An example is a nested expression over the digits 0-9 with the operators MIN, MAX, MED (median, truncated
to an int) and SM (sum modulo 10); the label is its value, 0-9. The generator follows LRA's
`lra_benchmarks/data/listops.py`: same operators, leaf probability, left-nested binary tuples, string form,
evaluation, strict length filter and de-duplication. Unlike LRA it is seeded, and its output depends only on
its parameters and the seed, not on the number of worker processes (see `generate_listops`). Writing the rows
to files is lra/listops/tsv.py's job; caching a generated dataset on disk is lra/listops/dataset.py's.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import sys
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from lra.progress import progress_bar

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUES = tuple(range(10))
VALUE_P = 0.25  # probability that a node above max_depth is an operator rather than a leaf

# Rows per generation chunk. Part of the output's definition (chunk c draws from a stream seeded by
# (seed, c)), so changing it changes every generated dataset: bump GENERATOR_VERSION with it.
CHUNK_SIZE = 256
GENERATOR_VERSION = 1

Tree = int | str | tuple["Tree", "Tree"]

_DELETE_PARENS = str.maketrans("", "", "()")


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

