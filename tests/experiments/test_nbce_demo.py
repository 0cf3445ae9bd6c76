"""experiments/nbce_demo.py's data: the passkey corpus and the long-context questions (no training here; the
demo's results are docs/results/nbce.md)."""

from __future__ import annotations

import re

import numpy as np

from experiments import nbce_demo as demo

PASSKEY = rb"[A-J][K-T][0-9]"


def test_the_corpus_asks_for_the_passkey_in_view():
    text = demo.corpus_text(np.random.default_rng(0), 200)
    assert re.fullmatch(rb"[a-z \n#?A-T0-9]*", text)
    lines = text.split(b"\n")
    current = None
    asked = orphans = 0
    for line in lines:
        if re.fullmatch(b"#" + PASSKEY, line):
            current = line[1:]
        elif line.startswith(b"?"):
            assert re.fullmatch(rb"\?" + PASSKEY, line)
            asked += line[1:] == current
            orphans += line[1:] != current
    assert asked > 2 * orphans > 0  # 2 questions per passkey, a quarter of the segments without one


def test_each_question_has_its_passkey_inside_one_chunk_not_the_last():
    for item in demo.examples(np.random.default_rng(1), 50, 6):
        context = item["context"]
        assert len(context) == 6 * demo.CHUNK
        assert context.count(b"#") == 1 and not re.search(PASSKEY, context.replace(b"#" + item["answer"], b""))
        start = context.index(b"#" + item["answer"] + b"\n")
        assert start // demo.CHUNK == item["chunk"] == (start + 4) // demo.CHUNK < 5
