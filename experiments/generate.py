r"""Generates text with a trained byte-level language model (the "lm" task), from a run's workdir.

    python -m experiments.generate --workdir=workdirs/lm --prompt="def " --num_tokens=200
    python -m experiments.generate --workdir=workdirs/lm --prompt="import " --greedy --checkpoint=latest
    python -m experiments.generate --workdir=workdirs/lm --prompt="class " --temperature=0.8 --top_p=0.95 --seed=3
    python -m experiments.generate --workdir=W --context_file=LONG.txt --prompt="?" --num_tokens=3 --greedy \
        --nbce_pooling=min_entropy --nbce_beta=0.25            # NBCE: a context longer than the window

Reads the run's own config.json and restores a checkpoint read-only, as experiments.evaluate does (nothing in
the workdir is changed). The prompt is encoded as UTF-8 bytes (the lm task's token ids are the raw bytes 0..255),
read by the model in one parallel pass (the prefill, models/generation.py), then `--num_tokens` bytes are sampled
(greedy, or temperature / top-k / top-p with a seed). Prints the prompt and its continuation (decoded as UTF-8,
undecodable bytes as U+FFFD), then one line with the decoding speed and the prefill's in tokens per second
(compilation not included).

NBCE (--context_file; models/nbce.py, docs/methods.md section 15): the file's text is cut into chunks of
--nbce_chunk_length bytes (default: what fits in the training window with the prompt and the answer), each
followed by the prompt (the question), and decoded with the combined distribution of the chunks and of the prompt
alone (--nbce_pooling, --nbce_beta, --nbce_eta). There --top_k / --top_p truncate each of those distributions
before they are combined, and --temperature / --greedy choose from the combination.

A user's mistake (no run in the workdir, a run whose task has no per-position head, a bidirectional model or a
mixer without a recurrent step, an empty prompt, sampling settings out of range) is one `error:` line, exit 2.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from absl import app, flags

from experiments.runs import BYTE_VOCABULARY, GenerateError, load_run  # noqa: F401  (re-exported)

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory (as given to experiments.train).", required=True)
_PROMPT = flags.DEFINE_string("prompt", None, "The text to continue (encoded as UTF-8 bytes).", required=True)
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 200, "How many bytes to generate.", lower_bound=1,
                                   upper_bound=1_000_000)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Divides the logits before sampling (> 0).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely bytes only (0: all).", lower_bound=0)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample within the nucleus of probability top_p (1.0: no cut).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampling.", lower_bound=0, upper_bound=2**32 - 1)
_GREEDY = flags.DEFINE_bool("greedy", False, "Take the most likely byte each time (ignores the sampling flags).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best (by validation accuracy), latest, or a step number.")
_CONTEXT_FILE = flags.DEFINE_string("context_file", None, "NBCE: a UTF-8 text file read as chunks, each with the "
                                    "prompt (the question); see the module docstring.")
_NBCE_CHUNK = flags.DEFINE_integer("nbce_chunk_length", 0, "NBCE: bytes per chunk (0: the training length minus "
                                   "the prompt and num_tokens - 1).")
_NBCE_OVERLAP = flags.DEFINE_integer("nbce_overlap", 0, "NBCE: bytes that consecutive chunks share at least.")
_NBCE_BETA = flags.DEFINE_float("nbce_beta", 0.25, "NBCE: the prior's weight beta (>= -1; 0: the pooled context "
                                "alone; n - 1 with mean pooling: naive Bayes).")
_NBCE_POOLING = flags.DEFINE_string("nbce_pooling", "min_entropy", "NBCE: min_entropy or mean.")
_NBCE_ETA = flags.DEFINE_float("nbce_eta", 0.0, "NBCE: switching penalty of min_entropy pooling (>= 0).")
MAX_CONTEXT_BYTES = 1 << 26  # 64 MiB: half a million chunks of a 128-byte window
NBCE_FLAGS = ("nbce_chunk_length", "nbce_overlap", "nbce_beta", "nbce_pooling", "nbce_eta")

PROGRAM = "experiments.generate"


def _check_request() -> tuple[bytes, Any]:
    """The prompt's bytes and the sampling settings, checked before JAX starts (GenerateError)."""
    from models.generation import Sampling

    prompt = _PROMPT.value.encode("utf-8")
    if not prompt:
        raise GenerateError("--prompt is empty: generation continues a text of at least one byte")
    sampling = Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value, _GREEDY.value)
    try:
        sampling.check(BYTE_VOCABULARY)
    except ValueError as error:
        raise GenerateError(f"--{error}") from None
    return prompt, sampling


def _check_nbce() -> tuple[bytes, Any] | None:
    """The NBCE context's bytes and settings (None without --context_file), checked before JAX (GenerateError)."""
    from models.nbce import NBCE

    if _CONTEXT_FILE.value is None:
        given = [name for name in NBCE_FLAGS if flags.FLAGS[name].present]
        if given:
            raise GenerateError(f"--{given[0]} is a setting of NBCE, which reads a long context: give it with "
                                "--context_file=FILE")
        return None
    from lra.errors import LRADataError
    from lra.files import read_bounded

    try:  # a regular file only (a FIFO would block), of at most MAX_CONTEXT_BYTES
        context = read_bounded(_CONTEXT_FILE.value, "the NBCE context", MAX_CONTEXT_BYTES)
    except (LRADataError, OSError) as error:
        raise GenerateError(f"--context_file: {error}") from None
    if not context:
        raise GenerateError(f"--context_file={_CONTEXT_FILE.value} is empty")
    if _NBCE_CHUNK.value < 0:
        raise GenerateError(f"--nbce_chunk_length must be >= 0 (0: what fits in the window), got {_NBCE_CHUNK.value}")
    if _NBCE_CHUNK.value and not 0 <= _NBCE_OVERLAP.value < _NBCE_CHUNK.value:
        raise GenerateError(f"--nbce_overlap must be in [0, --nbce_chunk_length={_NBCE_CHUNK.value}), got "
                            f"{_NBCE_OVERLAP.value}")
    settings = NBCE(_NBCE_BETA.value, _NBCE_POOLING.value, _TOP_K.value, _TOP_P.value, _NBCE_ETA.value,
                    _GREEDY.value, _TEMPERATURE.value)
    try:
        settings.check(BYTE_VOCABULARY)
    except ValueError as error:
        raise GenerateError(f"--{error}") from None
    return context, settings


def main(argv: list[str]) -> None:
    """The entry point after flag parsing: loads the run, generates, prints the text and the speed."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from experiments import cli
    from experiments.trainer import ConfigValueError
    from experiments.validation import ConfigError
    from experiments.workdir import WorkdirError

    cli.quiet_library_logs()
    try:
        prompt, sampling = _check_request()
        nbce = _check_nbce()
        if nbce is None:
            decode_length = len(prompt) + _NUM_TOKENS.value - 1
        else:  # rows of chunk + prompt; the default chunk length fills the training window exactly
            decode_length = _NBCE_CHUNK.value and _NBCE_CHUNK.value + len(prompt) + _NUM_TOKENS.value - 1
        run = load_run(_WORKDIR.value, _CHECKPOINT.value, decode_length=decode_length)
        chunk_length = _nbce_chunk_length(run, len(prompt)) if nbce is not None else 0
    except (GenerateError, WorkdirError, ConfigError, ConfigValueError) as error:
        cli.usage_exit(str(error), PROGRAM)
    except cli.user_errors() as error:  # a damaged checkpoint, an unreadable file
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if nbce is None:
        text, report = generate_text(run, prompt, _NUM_TOKENS.value, sampling, _SEED.value)
    else:
        text, report = nbce_text(run, nbce[0], prompt, _NUM_TOKENS.value, nbce[1], chunk_length,
                                 _NBCE_OVERLAP.value, _SEED.value)
    sys.stdout.write(text + "\n")
    print(report, flush=True)


def _nbce_chunk_length(run: dict[str, Any], prompt_length: int) -> int:
    """--nbce_chunk_length, or what fits in the training window with the prompt and the answer (GenerateError
    when nothing does)."""
    if _NBCE_CHUNK.value:
        return _NBCE_CHUNK.value
    length = run["spec"].seq_len - prompt_length - _NUM_TOKENS.value + 1
    if length < 1 or _NBCE_OVERLAP.value >= length:
        raise GenerateError(f"a prompt of {prompt_length} bytes and --num_tokens={_NUM_TOKENS.value} leave "
                            f"{max(length, 0)} bytes of the training window ({run['spec'].seq_len}) for each chunk "
                            f"(--nbce_overlap={_NBCE_OVERLAP.value}): shorten them or set --nbce_chunk_length")
    return length


def nbce_text(run: dict[str, Any], context: bytes, prompt: bytes, num_tokens: int, settings: Any,
              chunk_length: int, overlap: int, seed: int) -> tuple[str, str]:
    """The prompt and its NBCE continuation from `context` as text, and a line reporting the chunks, the chunk
    each token was read from (min_entropy pooling) and the speed (compilation included)."""
    import numpy as np

    from models import nbce

    chunks = nbce.split_context(np.frombuffer(context, np.uint8), chunk_length, overlap).astype(np.int32)
    question = np.frombuffer(prompt, np.uint8)[None].astype(np.int32)
    start = time.perf_counter()
    tokens, selected = nbce.nbce_generate(run["model"], run["variables"], chunks[None], question, num_tokens,
                                          settings, seed=seed)
    tokens, selected = np.asarray(tokens)[0], np.asarray(selected)[0]
    seconds = time.perf_counter() - start
    text = bytes(np.concatenate([question[0], tokens]).astype(np.uint8)).decode("utf-8", errors="replace")
    chosen = "" if settings.pooling == "mean" else f"; chunk read per token: {selected.tolist()}"
    report = (f"NBCE: {len(chunks)} chunks of {chunks.shape[1]} bytes from {len(context)} bytes of context, "
              f"{settings.pooling} pooling, beta {settings.beta}{chosen}; {num_tokens} tokens in {seconds:.2f} s "
              f"(compilation included; {run['config'].model.mixer}, checkpoint of step {run['step']})")
    return text, report


def generate_text(run: dict[str, Any], prompt: bytes, num_tokens: int, sampling: Any, seed: int
                  ) -> tuple[str, str]:
    """The prompt and its continuation as text, and a line reporting the speed (compilation timed apart)."""
    import jax
    import numpy as np

    from models import generation

    model, variables = run["model"], run["variables"]
    tokens = generation.check_request(model, np.frombuffer(prompt, np.uint8)[None].astype(np.int32), num_tokens,
                                      sampling)
    key = jax.random.key(seed)
    start = time.perf_counter()
    prefill = generation.prefill_fn(model).lower(variables, tokens).compile()
    state_shape, logits_shape = jax.eval_shape(generation.prefill_fn(model), variables, tokens)
    decode = generation.decode_fn(model, num_tokens, sampling).lower(variables, state_shape, logits_shape,
                                                                      key).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    state, logits = jax.block_until_ready(prefill(variables, tokens))
    prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    new = np.asarray(jax.block_until_ready(decode(variables, state, logits, key)))
    decode_seconds = time.perf_counter() - start
    text = bytes(np.concatenate([np.asarray(tokens)[0], new[0]]).astype(np.uint8)).decode("utf-8", errors="replace")
    prefill_rate = len(prompt) / max(prefill_seconds, 1e-9)
    report = (f"{num_tokens} tokens in {decode_seconds:.3f} s: {num_tokens / decode_seconds:,.1f} tokens/s "
              f"(parallel prefill of {len(prompt)} tokens in {prefill_seconds:.3f} s: {prefill_rate:,.1f} tokens/s; "
              f"compilation {compile_seconds:.1f} s; {run['config'].model.mixer}, checkpoint of step {run['step']})")
    return text, report


if __name__ == "__main__":
    from experiments import cli

    app.run(main, flags_parser=cli.flags_parser(PROGRAM))
