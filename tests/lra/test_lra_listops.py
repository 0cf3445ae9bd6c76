"""Tests for lra/listops/: trees, values, generation, the TSV format, the tokeniser, loading and caching."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from lra import listops
from lra.errors import LRADataError

# Monkeypatches target the module that looks the name up: ensure_generated calls generate_listops in dataset.py,
# generate_listops calls progress_bar in generate.py.
from lra.listops import dataset as listops_dataset
from lra.listops import generate as listops_generate
from lra.tasks import get_task


def make(operator, *args):
    """Left-nested tuple form of `operator(args)`, built here independently of the library."""
    tree = (operator, args[0])
    for arg in args[1:]:
        tree = (tree, arg)
    return (tree, "]")


def reference_generate_tree(rng, depth, max_depth, max_args):
    """docs/lra_data.md section 4 transcribed line by line (LRA's generate_tree, with an explicit rng)."""
    r = rng.random() if depth < max_depth else 1
    if r > 0.25:
        return rng.choice(range(10)), 1
    length = 2
    num_values = rng.randint(2, max_args)
    values = []
    for _ in range(num_values):
        sub_tree, sub_length = reference_generate_tree(rng, depth + 1, max_depth, max_args)
        values.append(sub_tree)
        length += sub_length
    op = rng.choice(["[MIN", "[MAX", "[MED", "[SM"])
    tree = (op, values[0])
    for value in values[1:]:
        tree = (tree, value)
    return (tree, "]"), length


def reference_to_string(tree):
    """The recursive definition of docs/lra_data.md section 4."""
    if isinstance(tree, int):
        return str(tree)
    if isinstance(tree, str):
        return tree
    return "( " + reference_to_string(tree[0]) + " " + reference_to_string(tree[1]) + " )"


def reference_evaluate(source):
    """Recursive-descent evaluation of the text with numpy's median: an evaluator independent of the library."""
    symbols = source.replace("(", " ").replace(")", " ").split()

    def parse(position):
        symbol = symbols[position]
        if symbol.isdigit():
            return int(symbol), position + 1
        args, position = [], position + 1
        while symbols[position] != "]":
            value, position = parse(position)
            args.append(value)
        functions = {
            "[MIN": min,
            "[MAX": max,
            "[MED": lambda a: int(np.median(a)),
            "[SM": lambda a: sum(a) % 10,
        }
        return functions[symbol](args), position + 1

    value, end = parse(0)
    assert end == len(symbols)
    return value


def random_trees(seed, count, max_depth=6, max_args=5):
    rng = random.Random(seed)
    return [listops.generate_tree(rng, 1, max_depth, max_args) for _ in range(count)]


# ----------------------------------------------------------------------------------------------- trees


def test_to_string_matches_the_documented_examples():
    assert listops.to_string(make("[SM", 2, 6, 5)) == "( ( ( ( [SM 2 ) 6 ) 5 ) ] )"
    nested = make("[MAX", 2, make("[MIN", 9, 4))
    assert listops.to_string(nested) == "( ( ( [MAX 2 ) ( ( ( [MIN 9 ) 4 ) ] ) ) ] )"
    assert listops.to_value(nested) == 4


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (make("[MIN", 7, 3, 9), 3),
        (make("[MAX", 7, 3, 9), 9),
        (make("[MED", 3, 1, 2), 2),  # odd count: the middle value
        (make("[MED", 1, 2), 1),  # even count: mean 1.5 truncated
        (make("[MED", 9, 8), 8),  # 8.5 -> 8
        (make("[MED", 1, 9, 6, 4), 5),  # (4 + 6) / 2
        (make("[MED", 1, 9, 5, 4), 4),  # 4.5 -> 4
        (make("[MED", 0, 1, 9), 1),  # the median, not the truncated mean (10 / 3 -> 3)
        (make("[MED", 9, 0, 2, 1), 1),  # (1 + 2) / 2 = 1.5 -> 1; the mean 3 would give 3
        (make("[MED", 8, 9, 0), 8),  # the middle of the sorted values, not of the arguments as given (9)
        (make("[SM", 7, 8, 9), 4),  # 24 % 10
        (make("[SM", 2, 6, 5), 3),
        (make("[SM", make("[MAX", 2, 8), make("[MED", 0, 5), 9), 9),  # 8 + 2 + 9 = 19
        (7, 7),
    ],
)
def test_to_value_on_hand_computed_examples(tree, expected):
    assert listops.to_value(tree) == expected
    assert listops.evaluate_source(listops.to_string(tree)) == expected


def test_med_equals_int_of_numpy_median():
    rng = np.random.default_rng(0)
    for _ in range(500):
        args = rng.integers(0, 10, size=rng.integers(1, 11)).tolist()
        assert listops.apply_operator("[MED", args) == int(np.median(args)), args


def test_generate_tree_reproduces_the_spec_pseudocode_draw_for_draw():
    rng_library, rng_reference = random.Random(123), random.Random(123)
    for _ in range(300):
        assert listops.generate_tree(rng_library, 1, 10, 10) == reference_generate_tree(
            rng_reference, 1, 10, 10
        )
    assert rng_library.random() == rng_reference.random()  # same number of draws consumed


def test_random_trees_string_value_and_length_agree_with_references():
    checked = 0
    for tree, length in random_trees(seed=1, count=400):
        source = listops.to_string(tree)
        assert source == reference_to_string(tree)
        assert listops.to_value(tree) == reference_evaluate(source) == listops.evaluate_source(source)
        # Length counts tokens without parentheses: [OP and ] per operator, 1 per leaf.
        non_paren = [s for s in source.split() if s not in "()"]
        assert length == len(non_paren) == len(listops.tokenize(source))
        checked += isinstance(tree, tuple)
    assert checked > 50  # the sample really contains operator trees


def test_generate_tree_respects_depth_and_argument_limits():
    for tree, _ in random_trees(seed=2, count=300, max_depth=4, max_args=3):
        depth = deepest = 0
        args_stack = []
        for symbol in listops.to_string(tree).replace("(", " ").replace(")", " ").split():
            if symbol in listops.OPERATORS:
                if args_stack:
                    args_stack[-1] += 1
                args_stack.append(0)
                depth += 1
                deepest = max(deepest, depth)
            elif symbol == "]":
                assert 2 <= args_stack.pop() <= 3
                depth -= 1
            elif args_stack:
                args_stack[-1] += 1
        assert deepest <= 3  # operators only at depths 1..max_depth-1


# ------------------------------------------------------------------------------------------ generation


def generate(num_train=150, num_val=20, num_test=30, min_length=20, max_length=60, seed=0, **overrides):
    params = {
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "min_length": min_length,
        "max_length": max_length,
        "max_depth": 6,
        "max_args": 5,
        "seed": seed,
        "num_workers": 1,
    }
    params.update(overrides)
    return listops.generate_listops(**params)


def test_generated_rows_respect_the_strict_length_window_and_labels():
    splits = generate()
    assert [len(splits[s]) for s in listops.SPLITS] == [150, 20, 30]
    for rows in splits.values():
        for source, target in rows:
            assert 20 < len(listops.tokenize(source)) < 60
            assert target == reference_evaluate(source)


def test_length_window_is_strict_at_both_ends():
    # 3 < length < 5 admits only length 4: one operator over two leaves.
    rows = generate(num_train=40, num_val=0, num_test=0, min_length=3, max_length=5)["train"]
    assert {len(listops.tokenize(source)) for source, _ in rows} == {4}


def test_rows_are_distinct_and_the_window_is_exhausted_exactly():
    # Length 4 holds exactly 4 operators x 10 x 10 leaves = 400 distinct trees: all must appear once.
    rows = generate(num_train=400, num_val=0, num_test=0, min_length=3, max_length=5)["train"]
    sources = [source for source, _ in rows]
    assert len(set(sources)) == 400
    expected = {
        f"( ( ( {op} {a} ) {b} ) ] )" for op in listops.OPERATORS for a in range(10) for b in range(10)
    }
    assert set(sources) == expected


def test_too_few_distinct_trees_raises():
    # 0 < length < 2 admits only the ten leaves.
    assert sorted(generate(num_train=10, num_val=0, num_test=0, min_length=0, max_length=2)["train"]) == [
        (str(v), v) for v in range(10)
    ]
    with pytest.raises(ValueError, match="distinct"):
        generate(num_train=11, num_val=0, num_test=0, min_length=0, max_length=2)


@pytest.mark.parametrize(
    "overrides",
    [
        {"min_length": 10, "max_length": 11},  # empty window
        {"min_length": 50, "max_length": 100, "max_depth": 2, "max_args": 5},  # longest tree has length 7
        {"num_train": -1},
        {"num_train": 0, "num_val": 0, "num_test": 0},
        {"max_args": 1},
    ],
)
def test_impossible_parameters_raise(overrides):
    with pytest.raises(ValueError, match="ListOps generation"):
        generate(**overrides)


def test_generation_is_deterministic_and_seed_dependent():
    first, again, other = generate(seed=5), generate(seed=5), generate(seed=6)
    assert first == again
    assert first["train"] != other["train"]


def test_splits_are_consecutive_slices_of_one_stream():
    splits = generate(num_train=100, num_val=30, num_test=20)
    whole = generate(num_train=150, num_val=0, num_test=0)["train"]
    assert splits["train"] + splits["val"] + splits["test"] == whole


def test_generation_does_not_depend_on_the_number_of_workers():
    total = 2 * listops.CHUNK_SIZE + 50  # several chunks, so the pool really splits the work
    one = generate(num_train=total - 40, num_val=20, num_test=20, num_workers=1)
    two = generate(num_train=total - 40, num_val=20, num_test=20, num_workers=2)
    assert one == two


# ----------------------------------------------------------------------------------------- TSV format


def test_writer_reader_round_trip_is_exact(tmp_path):
    rows = generate(num_train=50, num_val=0, num_test=0)["train"]
    path = str(tmp_path / "basic_train.tsv")
    listops.write_tsv(path, rows)
    with open(path, "rb") as handle:
        raw = handle.read()
    assert raw.startswith(b"Source\tTarget\r\n")
    assert raw.count(b"\r\n") == len(rows) + 1 and raw.endswith(b"\r\n")
    sources, targets = listops.read_tsv(path)
    assert list(zip(sources, targets.tolist())) == rows
    assert targets.dtype == np.int32


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ("", None, "empty file"),
        ("Input\tTarget\r\n( ( [MIN 1 ) ] )\t1\r\n", 1, "header"),
        ("Source\tTarget\r\n( ( [MIN 1 ) ] )\t1\r\n( ( [MIN 2 ) ] )\t2\t7\r\n", 3, "2 tab-separated columns"),
        ("Source\tTarget\r\n( ( [MIN 1 ) ] )\r\n", 2, "2 tab-separated columns"),
        ("Source\tTarget\r\n( ( [MIN 1 ) ] )\t1\r\n\r\n", 3, "2 tab-separated columns"),
        ("Source\tTarget\r\n( ( [MIN 1 ) ] )\tone\r\n", 2, "integer 0..9"),
        ("Source\tTarget\r\n( ( [MIN 1 ) ] )\t10\r\n", 2, "integer 0..9"),
        ("Source\tTarget\r\n( ( [MIN 1 ) ] )\t-1\r\n", 2, "integer 0..9"),
        ("Source\tTarget\r\n( ( [MIN 1 ) ] )\t 1\r\n", 2, "integer 0..9"),
        ("Source\tTarget\r\n( ( [MIN 1 ) ] )\t1\r\n( ( [MIN \udcff ) ] )\t1\r\n", 3, "not UTF-8"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path, content, line, fragment):
    path = tmp_path / "basic_val.tsv"
    path.write_bytes(content.encode("utf-8", errors="surrogateescape"))
    with pytest.raises(LRADataError, match=fragment) as error:
        listops.read_tsv(str(path))
    assert str(path) in str(error.value)
    if line is not None:
        assert f"line {line}:" in str(error.value)


# ------------------------------------------------------------------------------------------- tokeniser


def test_vocabulary_is_fixed_and_matches_the_task_spec():
    assert sorted(listops.VOCAB.values()) == list(range(1, 16))
    assert [listops.VOCAB[str(d)] for d in range(10)] == list(range(1, 11))
    assert [listops.VOCAB[s] for s in ("[MIN", "[MAX", "[MED", "[SM", "]")] == [11, 12, 13, 14, 15]
    assert listops.PAD_ID == 0 and listops.VOCAB_SIZE == get_task("listops").vocab_size == 16


def test_tokenize_drops_parentheses_and_maps_symbols():
    assert listops.tokenize("( ( ( ( [SM 2 ) 6 ) 5 ) ] )") == [14, 3, 7, 6, 15]
    assert listops.tokenize("( ( ( [MAX 2 ) ( ( ( [MIN 9 ) 4 ) ] ) ) ] )") == [12, 3, 11, 10, 5, 15, 15]
    assert listops.detokenize([14, 3, 7, 6, 15, 0, 0]) == "[SM 2 6 5 ]"


@pytest.mark.parametrize("source", ["( ( [MIN 1 ) X )", "( ( [AVG 1 ) ] )", "( ( [MIN 12 ) ] )", "( )"])
def test_tokenize_rejects_unknown_symbols_and_empty_sources(source):
    with pytest.raises(LRADataError, match="somefile.tsv, line 9"):
        listops.tokenize(source, where="somefile.tsv, line 9")


def test_pad_ragged_matches_a_loop_and_counts_truncations():
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 16, size=rng.integers(1, 12)).tolist() for _ in range(40)]
    flat = np.array([i for row in rows for i in row], dtype=np.uint8)
    lengths = np.array([len(row) for row in rows])
    for seq_len in (1, 6, 11, 20):
        inputs, truncated = listops.pad_ragged(flat, lengths, seq_len)
        expected = np.zeros((len(rows), seq_len), dtype=np.int32)
        for i, row in enumerate(rows):
            kept = row[:seq_len]
            expected[i, : len(kept)] = kept
        np.testing.assert_array_equal(inputs, expected)
        assert inputs.dtype == np.int32
        assert truncated == sum(len(row) > seq_len for row in rows)


# ------------------------------------------------------------------------------------ loading, caching


@pytest.fixture
def dataset_dir(tmp_path):
    splits = generate(num_train=60, num_val=10, num_test=12)
    listops.write_dataset(str(tmp_path), splits)
    return str(tmp_path), splits


def test_load_listops_tokenises_pads_and_labels(dataset_dir):
    directory, splits = dataset_dir
    loaded = listops.load_listops(directory, seq_len=64)
    for name in listops.SPLITS:
        split = loaded[name]
        assert split.name == name and len(split) == len(splits[name])
        assert split.inputs.shape == (len(splits[name]), 64) and split.inputs.dtype == np.int32
        assert split.num_truncated == 0
        for row, (source, _target) in zip(split.inputs, splits[name]):
            ids = listops.tokenize(source)
            assert row[: len(ids)].tolist() == ids and not row[len(ids) :].any()
        np.testing.assert_array_equal(split.labels, [target for _, target in splits[name]])


def test_load_listops_truncates_and_reports(dataset_dir):
    directory, splits = dataset_dir
    with pytest.warns(UserWarning, match="truncated"):
        loaded = listops.load_listops(directory, seq_len=30)
    longer = sum(len(listops.tokenize(source)) > 30 for source, _ in splits["train"])
    assert loaded["train"].num_truncated == longer > 0
    first_ids = listops.tokenize(splits["train"][0][0])[:30]
    assert loaded["train"].inputs[0, : len(first_ids)].tolist() == first_ids


def test_load_listops_uses_its_cache_until_a_file_changes(dataset_dir, monkeypatch):
    directory, splits = dataset_dir
    first = listops.load_listops(directory, seq_len=64)
    assert os.path.isfile(os.path.join(directory, "basic_tokens.cache.npz"))

    def fail(path):
        raise AssertionError(f"re-read {path} despite a valid cache")

    with monkeypatch.context() as patch:
        patch.setattr(listops, "read_tsv", fail)
        with pytest.warns(UserWarning, match="truncated"):
            cached = listops.load_listops(directory, seq_len=48)  # another seq_len reuses the same cache
    np.testing.assert_array_equal(cached["val"].inputs, first["val"].inputs[:, :48])

    listops.write_tsv(listops.split_path(directory, "val"), splits["val"][:4])  # a new size: stale cache
    assert len(listops.load_listops(directory, seq_len=64)["val"]) == 4


def test_load_listops_names_file_and_line_of_an_unknown_symbol(dataset_dir):
    directory, splits = dataset_dir
    rows = list(splits["test"])
    rows[2] = ("( ( [MIN 3 ) [AVG )", 3)
    path = listops.split_path(directory, "test")
    listops.write_tsv(path, rows)
    with pytest.raises(LRADataError, match=r"basic_test\.tsv, line 4: unknown ListOps symbol '\[AVG'"):
        listops.load_listops(directory, seq_len=64)


def test_load_listops_reports_missing_files(tmp_path):
    with pytest.raises(LRADataError, match="basic_train.tsv"):
        listops.load_listops(str(tmp_path), seq_len=64)


GENERATION = {
    "num_train": 40,
    "num_val": 8,
    "num_test": 8,
    "min_length": 10,
    "max_length": 40,
    "max_depth": 5,
    "max_args": 4,
    "seed": 3,
}


def test_ensure_generated_writes_once_and_reuses(tmp_path, monkeypatch):
    root = str(tmp_path / "cache")
    directory = listops.ensure_generated(root, num_workers=1, **GENERATION)
    assert os.path.basename(directory).startswith("listops-")
    assert sorted(os.listdir(directory)) == [
        "basic_test.tsv",
        "basic_train.tsv",
        "basic_val.tsv",
        "params.json",
    ]
    assert os.listdir(root) == [os.path.basename(directory)]  # no temporary directory left behind
    expected = listops.generate_listops(num_workers=1, **GENERATION)
    for split in listops.SPLITS:
        sources, targets = listops.read_tsv(listops.split_path(directory, split))
        assert list(zip(sources, targets.tolist())) == expected[split]

    def fail(**kwargs):
        raise AssertionError("regenerated a dataset that already exists")

    monkeypatch.setattr(listops_dataset, "generate_listops", fail)
    assert listops.ensure_generated(root, num_workers=2, **GENERATION) == directory  # workers not in the key
    with pytest.raises(AssertionError, match="regenerated"):
        listops.ensure_generated(root, **{**GENERATION, "seed": 4})


def test_ensure_generated_survives_losing_the_rename_race(tmp_path, monkeypatch):
    root = str(tmp_path)
    real_generate = listops.generate_listops
    winner = {}

    def generate_while_another_process_finishes(**kwargs):
        # Simulate a concurrent caller completing the same dataset while this one generates.
        with monkeypatch.context() as patch:
            patch.setattr(listops_dataset, "generate_listops", real_generate)
            winner["dir"] = listops.ensure_generated(root, **GENERATION)
        with open(os.path.join(winner["dir"], "marker"), "w") as handle:
            handle.write("winner")
        return real_generate(**kwargs)

    monkeypatch.setattr(listops_dataset, "generate_listops", generate_while_another_process_finishes)
    directory = listops.ensure_generated(root, num_workers=1, **GENERATION)
    assert directory == winner["dir"]
    assert os.path.isfile(os.path.join(directory, "marker"))  # the winner's copy was kept
    assert os.listdir(root) == [os.path.basename(directory)]  # the loser's copy was removed


def test_command_line_writes_the_official_files(tmp_path, capsys):
    output = str(tmp_path / "out")
    flags = ["--num_train_samples=30", "--num_valid_samples=5", "--num_test=6", "--min_length=10"]
    flags += ["--max_length=40", "--max_depth=5", "--max_args=4", "--seed=1", "--num_workers=1"]
    assert listops.main([f"--output_dir={output}", *flags]) == 0
    counts = [len(listops.read_tsv(listops.split_path(output, split))[0]) for split in listops.SPLITS]
    assert counts == [30, 5, 6]
    assert "basic_train.tsv: 30 rows" in capsys.readouterr().out


@pytest.mark.slow
def test_official_size_generation(tmp_path):
    """LRA's settings: 100,000 rows, 500 < length < 2000 (a few minutes on 2 cores)."""
    splits = listops.generate_listops(
        num_train=96000,
        num_val=2000,
        num_test=2000,
        min_length=500,
        max_length=2000,
        max_depth=10,
        max_args=10,
        seed=0,
        num_workers=2,
    )
    rows = splits["train"] + splits["val"] + splits["test"]
    assert len({source for source, _ in rows}) == 100000
    assert all(500 < len(listops.tokenize(source)) < 2000 for source, _ in rows[:2000])


def test_generation_reports_progress_on_stderr_with_the_total(tmp_path, capsys, monkeypatch):
    updates: list[int] = []
    real = listops_generate.progress_bar

    def recording(*args, **kwargs):
        bar = real(*args, **kwargs)
        update = bar.update
        bar.update = lambda n=1: (updates.append(n), update(n))[1]
        return bar

    monkeypatch.setattr(listops_generate, "progress_bar", recording)
    capsys.readouterr()
    sizes = {"num_train": 600, "num_val": 50, "num_test": 50}
    splits = generate(num_workers=2, **sizes)
    err = capsys.readouterr().err
    assert "ListOps" in err and "700/700" in err and "ex/s" in err, err
    assert sum(updates) == 700 and len(updates) >= 3  # one update per chunk of 256 candidates
    assert splits == generate(num_workers=1, progress=False, **sizes)  # the rows do not depend on it
    assert capsys.readouterr().err == ""  # progress=False prints nothing
    directory = listops.ensure_generated(str(tmp_path), num_workers=1, **GENERATION)
    assert "56/56" in capsys.readouterr().err
    assert listops.ensure_generated(str(tmp_path), **GENERATION) == directory
    assert capsys.readouterr().err == ""  # already generated
    flags = ["--num_train_samples=30", "--num_valid_samples=5", "--num_test=6", "--min_length=10",
             "--max_length=40", "--max_depth=5", "--max_args=4", "--num_workers=1"]
    assert listops.main([f"--output_dir={tmp_path / 'cli'}", *flags]) == 0
    assert "41/41" in capsys.readouterr().err
