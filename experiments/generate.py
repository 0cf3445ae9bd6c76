r"""Generates text with a trained byte-level language model (the "lm" task), from a run's workdir.

    python -m experiments.generate --workdir=workdirs/lm --prompt="def " --num_tokens=200
    python -m experiments.generate --workdir=workdirs/lm --prompt="import " --greedy --checkpoint=latest
    python -m experiments.generate --workdir=workdirs/lm --prompt="class " --temperature=0.8 --top_p=0.95 --seed=3

Reads the run's own config.json and restores a checkpoint read-only, as experiments.evaluate does (nothing in
the workdir is changed). The prompt is encoded as UTF-8 bytes (the lm task's token ids are the raw bytes 0..255),
run through the model token by token (the prefill, models/generation.py), then `--num_tokens` bytes are sampled
(greedy, or temperature / top-k / top-p with a seed). Prints the prompt and its continuation (decoded as UTF-8,
undecodable bytes as U+FFFD), then one line with the decoding speed in tokens per second (compilation not
included).

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
        run = load_run(_WORKDIR.value, _CHECKPOINT.value, decode_length=len(prompt) + _NUM_TOKENS.value - 1)
    except (GenerateError, WorkdirError, ConfigError, ConfigValueError) as error:
        cli.usage_exit(str(error), PROGRAM)
    except cli.user_errors() as error:  # a damaged checkpoint, an unreadable file
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    text, report = generate_text(run, prompt, _NUM_TOKENS.value, sampling, _SEED.value)
    sys.stdout.write(text + "\n")
    print(report, flush=True)


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
    report = (f"{num_tokens} tokens in {decode_seconds:.3f} s: {num_tokens / decode_seconds:,.1f} tokens/s "
              f"(prefill of {len(prompt)} tokens {prefill_seconds:.3f} s, compilation {compile_seconds:.1f} s; "
              f"{run['config'].model.mixer}, checkpoint of step {run['step']})")
    return text, report


if __name__ == "__main__":
    from experiments import cli

    app.run(main, flags_parser=cli.flags_parser(PROGRAM))
