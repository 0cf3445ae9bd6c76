r"""NBCE against truncation on a question whose answer sits in one chunk of a long context (issue 17, section 4;
docs/methods.md section 15).

    python -m experiments.nbce_demo                         # corpus, training (~5 min on one core), evaluation
    python -m experiments.nbce_demo --num_examples=500 --context_windows=16      # evaluation only, once trained

1. A synthetic byte corpus (a textdir folder under --workdir): filler lines of random lowercase words, and
   passkeys: a line "#CN7" (a letter of A-J, a letter of K-T, a digit: 1,000 passkeys, from alphabets the filler
   never uses) followed, 0..118 bytes of filler later (any distance a window holds), by the question line "?CN7"
   that repeats it, and a second question soon after; a quarter of the questions have no passkey before them (a
   random answer: the model learns to be unsure when no passkey is in view).
2. A small causal softmax-attention LM (RoPE, 2 layers of width 64) trained on it at a window of T = 128 bytes
   with the project's trainer: `python -m experiments.train --config=lm:softmax-cpu` with the corpus as
   `--config.data.lm.format=textdir` (skipped when --workdir already holds the finished run).
3. Evaluation on long contexts: --context_windows chunks of C = T - 8 bytes of filler (960 bytes by default:
   several windows), with one passkey line inside one chunk, never the last one, then the question "?". The
   model must answer the passkey's three bytes (greedy, exact match). Methods:
     truncation     the last C bytes of the context and the question (what fits in the window)
     nbce_*         the context cut into its chunks, each read with the question, combined by ops/nbce.py
                    (models/nbce.py): min-entropy pooling (beta 0.25, the post's final form) and naive Bayes
                    (mean pooling, beta = n - 1)
     oracle_chunk   the chunk holding the passkey alone with the question (the model's in-window accuracy)
     no_context     the question alone (chance: 1 in 1,000)
   Writes {out}.json (settings, accuracies, training time) and {out}.md.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command's flags, only when it runs as a program (experiments.generate, imported in the same
    process by tests, defines a --workdir of its own)."""
    flags.DEFINE_string("workdir", "workdirs/nbce_demo", "Where the corpus and the training run go.")
    flags.DEFINE_string("out", "docs/results/nbce", "Results path without extension (.json and .md).")
    flags.DEFINE_integer("num_examples", 200, "Long-context questions to evaluate.", lower_bound=1)
    flags.DEFINE_integer("context_windows", 8, "Chunks of the long context.", lower_bound=2)
    flags.DEFINE_integer("num_steps", 1500, "Training steps.", lower_bound=1)
    flags.DEFINE_integer("eval_batch", 50, "Questions per decoding batch.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of the evaluation questions.", lower_bound=0)


PROGRAM = "experiments.nbce_demo"
WINDOW = 128  # the training length T
CHUNK = WINDOW - 8  # a chunk, the question and the answer fit in the window
QUESTION, ANSWER_LENGTH = b"?", 3
TOP_P = 0.9  # the truncation of the *_top_p variants (fix 1 of docs/methods.md section 15)
ETA = 1.0  # the switching penalty of the *_eta variant, in nats (fix 3)
LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
PASSKEY_ALPHABETS = (ord("A"), ord("K"), ord("0"))  # ten bytes each: A-J, K-T, 0-9
CORPUS_FILES, SEGMENTS_PER_FILE = 4, 9000
MAX_GAP = WINDOW - 10  # filler between a passkey and its first question: any distance a chunk can hold


# ----------------------------------------------------------------------------------------------- the corpus

def filler(rng: np.random.Generator, size: int) -> bytes:
    """`size` bytes of random lowercase words (2-7 letters) separated by spaces, ending with a newline (size 0:
    nothing)."""
    if size <= 0:
        return b""
    words, total = [], 0
    while total < size:
        word = bytes(rng.choice(LETTERS, int(rng.integers(2, 8))))
        words.append(word)
        total += len(word) + 1
    return (b" ".join(words) + b"\n")[-size:]


def passkey(rng: np.random.Generator) -> bytes:
    """A passkey: a letter of A-J, a letter of K-T and a digit (1,000 passkeys). Each of its bytes comes from an
    alphabet of its own that the filler never uses, so one attention layer can find each byte by its content."""
    return bytes(base + int(rng.integers(0, 10)) for base in PASSKEY_ALPHABETS)


def corpus_text(rng: np.random.Generator, segments: int) -> bytes:
    """Training text: per segment, a passkey and its question 0..MAX_GAP bytes of filler later, which a second
    question follows closely (0.75); or a question with no passkey before it (0.25)."""
    parts = []
    for _ in range(segments):
        if rng.random() < 0.75:
            key = passkey(rng)
            parts += [filler(rng, int(rng.integers(0, 20))), b"#" + key + b"\n",
                      filler(rng, int(rng.integers(0, MAX_GAP + 1))), QUESTION + key + b"\n",
                      filler(rng, int(rng.integers(0, 20))), QUESTION + key + b"\n"]
        else:
            parts += [filler(rng, int(rng.integers(20, 160))), QUESTION + passkey(rng) + b"\n"]
    return b"".join(parts)


def write_corpus(directory: str) -> None:
    """The training corpus as CORPUS_FILES text files (seeded; rewritten only when missing)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(1234)
    for i in range(CORPUS_FILES):
        path = os.path.join(directory, f"passkeys-{i}.txt")
        text = corpus_text(rng, SEGMENTS_PER_FILE)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(text)


def examples(rng: np.random.Generator, count: int, windows: int) -> list[dict[str, Any]]:
    """Long contexts of `windows` chunks of CHUNK bytes, one passkey line inside a chunk that is not the last."""
    out = []
    for _ in range(count):
        key = passkey(rng)
        chunk = int(rng.integers(0, windows - 1))
        line = b"#" + key + b"\n"
        offset = chunk * CHUNK + int(rng.integers(0, CHUNK - len(line) + 1))
        before = filler(rng, offset)
        after = filler(rng, windows * CHUNK - offset - len(line))
        context = before + line + after
        assert len(context) == windows * CHUNK
        out.append({"context": context, "answer": key, "chunk": chunk})
    return out


# -------------------------------------------------------------------------------------------------- training

def train(workdir: str, run: str, steps: int) -> dict[str, float] | None:
    """Trains the LM with experiments.train (skipped when `run` is finished); its wall and CPU seconds (those
    measured when it was trained, None if unknown)."""
    status, timing = os.path.join(run, "status.json"), os.path.join(workdir, "training_time.json")
    if os.path.exists(status) and json.load(open(status)).get("state") == "finished":
        return json.load(open(timing)) if os.path.exists(timing) else None
    command = [sys.executable, "-m", "experiments.train", "--config=lm:softmax-cpu", f"--workdir={run}",
               "--config.data.source=files", "--config.data.lm.format=textdir",
               f"--config.data.data_dir={os.path.join(workdir, 'corpus')}", f"--config.data.seq_len={WINDOW}",
               "--config.model.softmax.position=rope", "--config.model.n_layers=2", "--config.model.d_model=64",
               "--config.train.batch_size=32", f"--config.train.num_steps={steps}", "--config.optim.lr=3e-3",
               "--config.data.lm.max_eval_windows=128"]
    print(" ".join(command[1:]), flush=True)
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = {"wall_seconds": time.perf_counter() - start,
               "cpu_seconds": used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime}
    with open(timing, "w") as f:  # for later evaluations of the same run
        json.dump(seconds, f)
    return seconds


# ------------------------------------------------------------------------------------------------ evaluation

def _ids(rows: list[bytes]) -> np.ndarray:
    return np.stack([np.frombuffer(r, np.uint8) for r in rows]).astype(np.int32)


def evaluate(run: dict[str, Any], items: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """Exact-match accuracy of the answer for each method (see the module docstring)."""
    from models import generation
    from models.nbce import NBCE, nbce_generate, split_context

    model, variables = run["model"], run["variables"]
    windows = len(items[0]["context"]) // CHUNK
    methods = {"nbce_min_entropy": NBCE(beta=0.25, pooling="min_entropy"),
               "nbce_min_entropy_top_p": NBCE(beta=0.25, pooling="min_entropy", top_p=TOP_P),
               "nbce_min_entropy_top_p_eta": NBCE(beta=0.25, pooling="min_entropy", top_p=TOP_P, eta=ETA),
               "nbce_naive_bayes": NBCE(beta=windows - 1.0, pooling="mean"),
               "nbce_naive_bayes_top_p": NBCE(beta=windows - 1.0, pooling="mean", top_p=TOP_P)}
    answers = _ids([item["answer"] for item in items])
    results: dict[str, Any] = {}

    def score(name: str, predicted: np.ndarray, extra: dict[str, Any] | None = None) -> None:
        results[name] = {"accuracy": float(np.mean(np.all(predicted == answers, axis=1))),
                         "byte_accuracy": float(np.mean(predicted == answers)), **(extra or {})}

    def plain(rows: list[bytes]) -> np.ndarray:
        out = []
        for i in range(0, len(rows), batch):
            prompt = _ids(rows[i:i + batch])
            out.append(np.asarray(generation.generate(model, variables, prompt, ANSWER_LENGTH,
                                                      greedy=True))[:, prompt.shape[1]:])
        return np.concatenate(out)

    score("truncation", plain([item["context"][-CHUNK:] + QUESTION for item in items]))
    score("oracle_chunk", plain([item["context"][item["chunk"] * CHUNK:(item["chunk"] + 1) * CHUNK] + QUESTION
                                 for item in items]))
    score("no_context", plain([QUESTION for _ in items]))
    for name, settings in methods.items():
        tokens, chosen = [], []
        for i in range(0, len(items), batch):
            part = items[i:i + batch]
            chunks = np.stack([split_context(np.frombuffer(item["context"], np.uint8), CHUNK) for item in part])
            question = _ids([QUESTION] * len(part))
            t, s = nbce_generate(model, variables, chunks.astype(np.int32), question, ANSWER_LENGTH, settings)
            tokens.append(np.asarray(t))
            chosen.append(np.asarray(s))
        extra = {"pooling": settings.pooling, "beta": settings.beta, "top_p": settings.top_p, "eta": settings.eta}
        if settings.pooling == "min_entropy":
            right = np.concatenate(chosen) == np.array([item["chunk"] for item in items])[:, None]
            extra["passkey_chunk_chosen"] = float(np.mean(right[:, 0]))  # for the first byte
            extra["passkey_chunk_every_byte"] = float(np.mean(np.all(right, axis=1)))
        score(name, np.concatenate(tokens), extra)
    return results


def markdown(report: dict[str, Any]) -> str:
    """The results as a markdown table with its settings."""
    s = report["settings"]
    lines = [f"NBCE vs truncation: passkey retrieval from {s['context_bytes']}-byte contexts ({s['chunks']} chunks "
             f"of {s['chunk_bytes']} bytes; the model's window is {s['window']} bytes), {s['num_examples']} "
             "questions, greedy, exact match of the passkey's 3 bytes.", "",
             "| method | accuracy | byte accuracy | passkey chunk chosen (first byte / every byte) |",
             "|---|---|---|---|"]
    for name, row in report["results"].items():
        chosen = ("" if "passkey_chunk_chosen" not in row else
                  f"{row['passkey_chunk_chosen']:.3f} / {row['passkey_chunk_every_byte']:.3f}")
        lines.append(f"| {name} | {row['accuracy']:.3f} | {row['byte_accuracy']:.3f} | {chosen} |")
    train = report["training"]
    lines += ["", "nbce_*: the context's chunks, each with the question, and the question alone, combined per byte "
              "(docs/methods.md section 15): min_entropy = the chunk of least entropy, beta 0.25; naive_bayes = mean "
              f"pooling, beta = n - 1 = {s['chunks'] - 1}; _top_p: every distribution truncated to its top-p "
              f"nucleus (p = {TOP_P}) first; _eta: switching penalty {ETA} nats. oracle_chunk: the passkey's chunk "
              "alone with the question; truncation: the last chunk with the question."]
    lines += ["", f"Model: softmax attention, RoPE, 2 layers of width 64, trained {train['steps']} steps at "
              f"{s['window']} bytes (test bpb {train.get('test_bpb', float('nan')):.3f}; the corpus's unigram bpb "
              f"{train.get('unigram_bpb', float('nan')):.3f}); training {train['wall_seconds']:.0f} s wall, "
              f"{train['cpu_seconds']:.0f} s CPU (2 shared cores). Command: `python -m {PROGRAM}`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """Corpus, training, evaluation, results."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from experiments import cli
    from experiments.runs import load_run

    cli.quiet_library_logs()
    workdir = os.path.abspath(FLAGS.workdir)
    run_dir = os.path.join(workdir, "run")
    write_corpus(os.path.join(workdir, "corpus"))
    timing = train(workdir, run_dir, FLAGS.num_steps)
    results = json.load(open(os.path.join(run_dir, "results.json")))
    if timing is None:  # trained earlier, time not recorded: the trainer's own wall time
        timing = {"wall_seconds": results.get("wall_seconds", float("nan")), "cpu_seconds": float("nan")}
    run = load_run(run_dir, "best")
    items = examples(np.random.default_rng(FLAGS.seed), FLAGS.num_examples, FLAGS.context_windows)
    start = time.perf_counter()
    scores = evaluate(run, items, FLAGS.eval_batch)
    report = {"settings": {"window": WINDOW, "chunk_bytes": CHUNK, "chunks": FLAGS.context_windows,
                           "context_bytes": FLAGS.context_windows * CHUNK, "num_examples": FLAGS.num_examples,
                           "seed": FLAGS.seed, "question": QUESTION.decode(), "answer_bytes": ANSWER_LENGTH},
              "training": {"steps": results.get("steps"), **timing,
                           "test_bpb": results.get("test_bpb"), "unigram_bpb": results.get("unigram_bpb")},
              "evaluation_seconds": time.perf_counter() - start, "results": scores}
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(FLAGS.out + ".md", "w") as f:
        f.write(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    from experiments import cli

    define_flags()
    app.run(main, flags_parser=cli.flags_parser(PROGRAM))
