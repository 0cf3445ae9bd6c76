"""Sampling from a causal per-position model (PerPositionClassifier) one token at a time.

    state, logits = prefill(model, variables, prompt)                      # prompt (B, P) int32
    tokens = generate(model, variables, prompt, 100, temperature=0.8, top_p=0.95, seed=1)   # (B, P + 100)

`prefill` reads the prompt in one parallel pass (`model.prefill`, models/encoder.py): every block's mixer runs its
parallel form (scans, FFT convolutions, chunked or dense attention) and returns its decoding state after the
prompt (docs/methods.md section 18): the last state of LRU's and S5's recurrences, S4D's by a Vandermonde
contraction, S4's and RTF's as the prompt contracted with their state kernel A^k B (by doubling), the key-value
caches of softmax and blockwise attention filled at once, the running sums of linear attention and Performer,
Transformer-VQ's per-code cache and block buffer. A mixer without a parallel prefill (SequenceMixer's default)
steps its own part of the prompt in a lax.scan; so do S4 beyond l_max and RTF beyond trunc_len, where the
parallel kernel no longer equals the recurrence. `method="step"` instead runs the whole model token by token
(a lax.scan of the encoder's `step` over the P prompt tokens): the reference the parallel prefill is tested
against (tests/models/test_generation.py), and a fallback. Both return the state after the prompt with the
logits of its last position, equal to float32 rounding.

`generate` then samples the next token from those logits and loops (a jitted `lax.scan` of `step` and sampling)
until it has `num_tokens` new tokens. The logits of every step equal those of the parallel call at the same
position, so greedy decoding equals re-running the whole model on the growing sequence.

Sampling (`sample`): greedy takes the argmax; otherwise the logits are divided by `temperature`, cut to the
`top_k` largest (0: no cut) and to the nucleus of `top_p` (the smallest set of the most likely tokens whose
probability reaches top_p; 1.0: no cut), and a token is drawn with `jax.random.categorical` from keys split off
`jax.random.key(seed)`, so a seed gives the same tokens every time. Ties at the cut keep every tied token.

Key-value cache mixers (softmax, blockwise attention) hold `max_decode_len` positions: P + num_tokens - 1 steps
must fit, which `generate` checks (the mixer cannot inside jit).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CACHE_LENGTH_OPTION = "max_decode_len"  # the mixer option that bounds a key-value cache (models/attention.py)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits (see the module docstring)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def check(self, num_classes: int | None = None) -> None:
        """ValueError naming the first setting out of range."""
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (or use greedy decoding), got {self.temperature}")
        if self.top_k < 0 or (num_classes is not None and self.top_k > num_classes):
            raise ValueError(f"top_k must be in [0, {num_classes or 'vocabulary size'}] (0: no cut), got "
                             f"{self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1: no cut), got {self.top_p}")


def sample(key: jax.Array, logits: jax.Array, sampling: Sampling) -> jax.Array:
    """Next tokens (B,) int32 from logits (B, C) (float32 arithmetic)."""
    logits = logits.astype(jnp.float32)
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability of the more likely tokens
        kept = before < sampling.top_p  # the first token always (before = 0)
        threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def check_prompt(prompt: Any) -> jax.Array:
    """The prompt as (B, P) int32; ValueError when it is not 2-D integer ids or is empty."""
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be (B, P) integer token ids, got {prompt.dtype} {prompt.shape}")
    if prompt.shape[1] < 1:
        raise ValueError("the prompt is empty: decoding starts from the logits of its last token")
    return prompt.astype(jnp.int32)


def _cache_limit(model: nn.Module) -> int | None:
    encoder = getattr(model, "encoder", None)
    options = getattr(encoder, "mixer_options", None) or {}
    limit = options.get(CACHE_LENGTH_OPTION)
    return int(limit) if limit else None


PREFILL_METHODS = ("parallel", "step")


def _check_method(method: str) -> None:
    if method not in PREFILL_METHODS:
        raise ValueError(f"prefill method must be one of {PREFILL_METHODS}, got {method!r}")


def _parallel_prefill(model: nn.Module, variables: Any, prompt: jax.Array) -> tuple[Any, jax.Array]:
    state, logits = model.apply(variables, prompt, method="prefill")
    return state, logits[:, -1]


def _prefill(model: nn.Module, variables: Any, prompt: jax.Array) -> tuple[Any, jax.Array]:
    state = model.apply(variables, prompt.shape[0], method="init_state")

    def body(state: Any, token_t: jax.Array) -> tuple[Any, jax.Array]:
        return model.apply(variables, state, token_t, method="step")

    state, logits = lax.scan(body, state, prompt.T)
    return state, logits[-1]


def _decode(model: nn.Module, variables: Any, state: Any, logits: jax.Array, key: jax.Array, num_tokens: int,
            sampling: Sampling) -> jax.Array:
    keys = jax.random.split(key, num_tokens)
    first = sample(keys[0], logits, sampling)

    def body(carry: tuple[Any, jax.Array], key_t: jax.Array) -> tuple[tuple[Any, jax.Array], jax.Array]:
        state, token = carry
        state, logits = model.apply(variables, state, token, method="step")
        token = sample(key_t, logits, sampling)
        return (state, token), token

    _, rest = lax.scan(body, (state, first), keys[1:])  # num_tokens - 1 steps: the last token is not stepped
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def prefill_fn(model: nn.Module, method: str = "parallel") -> Any:
    """The jitted prefill of `model`: (variables, prompt (B, P) int32) -> (state, last logits (B, C)); method
    "parallel" (`model.prefill`) or "step" (token by token)."""
    _check_method(method)
    run = _parallel_prefill if method == "parallel" else _prefill
    return jax.jit(lambda variables, prompt: run(model, variables, prompt))


def decode_fn(model: nn.Module, num_tokens: int, sampling: Sampling) -> Any:
    """The jitted decode loop of `model`: (variables, state, logits (B, C), key) -> (B, num_tokens) int32 tokens,
    the first sampled from `logits`, each next one from the step on the previous (num_tokens >= 1)."""
    return jax.jit(lambda variables, state, logits, key: _decode(model, variables, state, logits, key, num_tokens,
                                                                  sampling))


def prefill(model: nn.Module, variables: Any, prompt: Any, *, method: str = "parallel") -> tuple[Any, jax.Array]:
    """The decoding state after `prompt` (B, P) int32 and the logits of its last position (B, C) float32.

    method "parallel" (default): one parallel pass of the model over the prompt, each mixer returning its state
    (see the module docstring); "step": the model stepped token by token (a jitted `lax.scan` of `model.step`, P
    sequential steps), the reference and fallback. ValueError for an empty prompt, an unknown method, or a
    model that cannot decode step by step (bidirectional, or a mixer without a step).
    """
    return prefill_fn(model, method)(variables, check_prompt(prompt))


def check_request(model: nn.Module, prompt: Any, num_tokens: int, sampling: Sampling) -> jax.Array:
    """The prompt as (B, P) int32, after checking the request: ValueError for an empty or malformed prompt, a
    negative num_tokens, sampling settings out of range, or a key-value cache shorter than P + num_tokens - 1."""
    prompt = check_prompt(prompt)
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    sampling.check(getattr(model, "num_classes", None))
    limit = _cache_limit(model)
    steps = prompt.shape[1] + num_tokens - 1
    if limit is not None and steps > limit:
        raise ValueError(f"the mixer's key-value cache holds {CACHE_LENGTH_OPTION}={limit} positions, but a prompt "
                         f"of {prompt.shape[1]} tokens and {num_tokens} new ones take {steps} steps")
    return prompt


def generate(model: nn.Module, variables: Any, prompt: Any, num_tokens: int, *, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, greedy: bool = False,
             prefill_method: str = "parallel") -> jax.Array:
    """The prompt (B, P) followed by `num_tokens` sampled tokens: (B, P + num_tokens) int32.

    `model` is a causal per-position model with `init_state` / `step` (models/encoder.py PerPositionClassifier),
    `variables` its variables ({"params": ..., and the other collections, e.g. "batch_stats"}). The prompt is
    prefilled in one parallel pass (see `prefill`; prefill_method="step" steps it token by token), then a jitted
    `lax.scan` samples each token from the last logits and steps the model on it. Sampling settings: see the
    module docstring; `seed` makes it reproducible. ValueError for settings out of range, an empty prompt, a
    model that cannot decode, an unknown prefill method, or a key-value cache shorter than P + num_tokens - 1
    steps.
    """
    sampling = Sampling(float(temperature), int(top_k), float(top_p), bool(greedy))
    _check_method(prefill_method)
    prompt = check_request(model, prompt, num_tokens, sampling)
    state, logits = prefill_fn(model, prefill_method)(variables, prompt)
    if num_tokens == 0:
        return prompt
    tokens = decode_fn(model, num_tokens, sampling)(variables, state, logits, jax.random.key(seed))
    return jnp.concatenate([prompt, tokens], axis=1)
