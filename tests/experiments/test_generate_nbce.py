"""experiments/generate.py's NBCE mode (--context_file, --nbce_*): the flag checks, one line each, and the text
and report of `nbce_text` on a tiny model (the decoding itself: tests/models/test_nbce.py)."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import generate
from experiments.runs import GenerateError
from models.nbce import NBCE, split_context
from tests.models.test_nbce import VOCAB, model_and_variables

pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.fixture
def parsed_flags():
    """The command's flags parsed at their defaults for one test (as_parsed sets some of them on top)."""
    was_parsed = flags.FLAGS.is_parsed()
    flags.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver():
        yield
    if not was_parsed:
        flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("given, expected", [
    ({"nbce_beta": "0.5"}, "--nbce_beta is a setting of NBCE, which reads a long context: give it with "
                           "--context_file=FILE"),
    ({"context_file": "{missing}"}, "missing.txt: cannot read the NBCE context"),
    ({"context_file": "{directory}"}, "(a regular file), found a directory"),
    ({"context_file": "{empty}"}, "is empty"),
    ({"context_file": "{text}", "nbce_beta": "-2"}, "--nbce_beta must be a number >= -1"),
    ({"context_file": "{text}", "nbce_pooling": "max"}, "--nbce_pooling must be one of mean, min_entropy"),
    ({"context_file": "{text}", "nbce_eta": "-0.5"}, "--nbce_eta (the switching penalty) must be >= 0"),
    ({"context_file": "{text}", "nbce_chunk_length": "-1"}, "--nbce_chunk_length must be >= 0"),
    ({"context_file": "{text}", "nbce_chunk_length": "8", "nbce_overlap": "8"}, "--nbce_overlap must be in [0, "),
    ({"context_file": "{text}", "top_p": "0"}, "--top_p must be in (0, 1]"),
])
def test_a_bad_nbce_flag_is_one_line(parsed_flags, tmp_path, given, expected):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "text.txt").write_bytes(b"some context")
    paths = {"missing": tmp_path / "missing.txt", "empty": tmp_path / "empty.txt", "text": tmp_path / "text.txt",
             "directory": tmp_path}
    with flagsaver.as_parsed(**{k: v.format(**paths) for k, v in given.items()}):
        with pytest.raises(GenerateError) as error:
            generate._check_nbce()
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_no_context_file_is_ordinary_generation(parsed_flags):
    assert generate._check_nbce() is None


def test_nbce_text(parsed_flags):
    model, variables = model_and_variables("lru")
    run = {"model": model, "variables": variables, "step": 7,
           "config": ml_collections.ConfigDict({"model": {"mixer": "lru"}})}
    context = bytes([i % VOCAB for i in range(13)])  # tokens of the tiny model's vocabulary
    settings = NBCE(beta=0.5, pooling="min_entropy")
    text, report = generate.nbce_text(run, context, bytes([1, 2]), 3, settings, chunk_length=5, overlap=1, seed=0)
    assert split_context(np.frombuffer(context, np.uint8), 5, 1).shape == (3, 5)
    new = text.encode("utf-8")
    assert new[:2] == bytes([1, 2]) and len(new) == 5 and max(new) < VOCAB
    assert report.startswith("NBCE: 3 chunks of 5 bytes from 13 bytes of context, min_entropy pooling, beta 0.5; "
                             "chunk read per token: [")
    assert "3 tokens in " in report and report.endswith("lru, checkpoint of step 7)")
