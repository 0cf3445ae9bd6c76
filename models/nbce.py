"""NBCE generation: a causal per-position model answers a question about a context longer than its window
(docs/methods.md section 15; the combination itself is ops/nbce.py).

    starts = chunk_starts(len(context), chunk_length, overlap)              # where each piece begins
    chunks = np.stack([context[s:s + chunk_length] for s in starts])        # (n, C)
    tokens, selected = nbce_generate(model, variables, chunks[None], question[None], 10, NBCE(beta=0.25))

Every example's n chunks, each followed by the question, run as n rows of one batch; the question alone (the
empty context) runs as one more row, in a batch of its own (its rows are shorter, and a key-value cache holds
one position for the whole batch). Both are prefilled with models/generation.py's prefill (token by token
through the model's `step`, so every decoding mixer works). At each step the n + 1 next-token distributions
are combined by `ops.nbce.combine` into one, a token is chosen from it (greedy or sampled at a temperature,
with the seeded keys of models/generation.py) and appended to every row of the example.

The truncation of NBCE (top-k / top-p) is applied to each of the n + 1 distributions before combining (the
post's first fix), so it is a setting of `NBCE`, not of the final sampling: the combined distribution is sampled
with the temperature only. With one chunk, beta = 0 and no truncation this is ordinary generation from
chunk + question (tests/models/test_nbce.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from models import generation
from ops import nbce as nbce_ops

POOLINGS = nbce_ops.POOLINGS


@dataclasses.dataclass(frozen=True)
class NBCE:
    """The combination's settings (docs/methods.md section 15): beta, pooling, truncation and switching penalty;
    and the final choice: greedy, or sampled at `temperature`."""

    beta: float = 0.25
    pooling: str = "min_entropy"
    top_k: int = 0
    top_p: float = 1.0
    eta: float = 0.0
    greedy: bool = True
    temperature: float = 1.0

    def check(self, num_classes: int | None = None) -> None:
        """ValueError naming the first setting out of range."""
        if self.pooling not in POOLINGS:
            raise ValueError(f"nbce_pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not (math.isfinite(self.beta) and self.beta >= -1):
            raise ValueError(f"nbce_beta must be a number >= -1 (0: the pooled context alone; n - 1 with mean "
                             f"pooling: naive Bayes), got {self.beta}")
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"nbce_eta (the switching penalty) must be >= 0, got {self.eta}")
        generation.Sampling(self.temperature, self.top_k, self.top_p, self.greedy).check(num_classes)

    @property
    def sampling(self) -> generation.Sampling:
        """The final choice from the combined distribution (the truncation went into the combination)."""
        return generation.Sampling(self.temperature, 0, 1.0, self.greedy)


def chunk_starts(length: int, chunk_length: int, overlap: int = 0) -> np.ndarray:
    """The start of each chunk of `chunk_length` tokens covering a context of `length` tokens, consecutive chunks
    sharing at least `overlap` tokens: n = ceil((length - overlap) / (chunk_length - overlap)) chunks (1 when the
    context fits), starts spread evenly from 0 to length - chunk_length (so every chunk is full and the pieces
    overlap a little more where the division is not exact). ValueError for bad sizes."""
    if chunk_length < 1:
        raise ValueError(f"nbce_chunk_length must be >= 1, got {chunk_length}")
    if not 0 <= overlap < chunk_length:
        raise ValueError(f"nbce_overlap must be in [0, chunk length {chunk_length}), got {overlap}")
    if length <= chunk_length:
        return np.zeros(1, np.int64)
    n = -(-(length - overlap) // (chunk_length - overlap))
    return np.round(np.linspace(0, length - chunk_length, n)).astype(np.int64)


def split_context(context: Any, chunk_length: int, overlap: int = 0) -> np.ndarray:
    """A context (P,) int cut into chunks (n, min(P, chunk_length)) by `chunk_starts`."""
    context = np.asarray(context)
    if context.ndim != 1 or context.size == 0:
        raise ValueError(f"the context must be a non-empty 1-D sequence of token ids, got shape {context.shape}")
    size = min(len(context), chunk_length)
    return np.stack([context[s:s + size] for s in chunk_starts(len(context), chunk_length, overlap)])


def _choose(settings: NBCE, key: jax.Array, context_logits: jax.Array, prior_logits: jax.Array,
            previous: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, n, V) and (B, V) logits, previous choice (B,) -> next tokens (B,) int32 and chosen contexts (B,)."""
    log_probs, selected = combined_step(settings, context_logits, prior_logits, previous)
    return generation.sample(key, log_probs, settings.sampling), selected


def combined_step(settings: NBCE, context_logits: jax.Array, prior_logits: jax.Array,
                  previous: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One decoding step's combination: the rows' logits (B, n, V), the empty context's (B, V) and the contexts
    chosen at the previous step (B,) (-1: none) -> log-probabilities (B, V) and the chosen contexts (B,)."""
    return jax.vmap(lambda c, p, k: nbce_ops.combine(
        c.astype(jnp.float32), p.astype(jnp.float32), beta=settings.beta, pooling=settings.pooling,
        top_k=settings.top_k, top_p=settings.top_p, eta=settings.eta, previous=k))(context_logits, prior_logits,
                                                                                     previous)


def _generate(model: nn.Module, variables: Any, chunks: jax.Array, question: jax.Array, key: jax.Array,
              num_tokens: int, settings: NBCE) -> tuple[jax.Array, jax.Array]:
    batch, n, _ = chunks.shape
    prefill = generation.prefill_fn(model)
    rows = jnp.concatenate([chunks, jnp.broadcast_to(question[:, None], (batch, n, question.shape[1]))], axis=2)
    context_state, context_logits = prefill(variables, rows.reshape(batch * n, -1))
    prior_state, prior_logits = prefill(variables, question)
    keys = jax.random.split(key, num_tokens)
    first, selected = _choose(settings, keys[0], context_logits.reshape(batch, n, -1), prior_logits,
                              jnp.full((batch,), -1, jnp.int32))

    def body(carry: tuple[Any, Any, jax.Array, jax.Array], key_t: jax.Array) -> tuple[Any, tuple[jax.Array, ...]]:
        context_state, prior_state, token, previous = carry
        context_state, context_logits = model.apply(variables, context_state, jnp.repeat(token, n), method="step")
        prior_state, prior_logits = model.apply(variables, prior_state, token, method="step")
        token, selected = _choose(settings, key_t, context_logits.reshape(batch, n, -1), prior_logits, previous)
        return (context_state, prior_state, token, selected), (token, selected)

    _, (rest, rest_selected) = lax.scan(body, (context_state, prior_state, first, selected), keys[1:])
    return (jnp.concatenate([first[:, None], rest.T], axis=1),
            jnp.concatenate([selected[:, None], rest_selected.T], axis=1))


def generate_fn(model: nn.Module, num_tokens: int, settings: NBCE) -> Any:
    """The jitted NBCE generation: (variables, chunks (B, n, C), question (B, Q), key) -> (tokens (B, num_tokens)
    int32, selected (B, num_tokens) int32: the context each token was read from, -1 with mean pooling)."""
    return jax.jit(lambda variables, chunks, question, key: _generate(model, variables, chunks, question, key,
                                                                      num_tokens, settings))


def check_request(model: nn.Module, chunks: Any, question: Any, num_tokens: int, settings: NBCE
                  ) -> tuple[jax.Array, jax.Array]:
    """Chunks (B, n, C) and question (B, Q) as int32, after checking them: ValueError for malformed arrays,
    num_tokens < 1, settings out of range, or a key-value cache shorter than C + Q + num_tokens - 1 steps."""
    chunks, question = jnp.asarray(chunks), jnp.asarray(question)
    if chunks.ndim != 3 or not jnp.issubdtype(chunks.dtype, jnp.integer) or chunks.shape[1] < 1:
        raise ValueError(f"chunks must be (B, n, C) integer token ids with n >= 1, got {chunks.dtype} "
                         f"{chunks.shape}")
    question = generation.check_prompt(question)
    if question.shape[0] != chunks.shape[0]:
        raise ValueError(f"chunks and question hold {chunks.shape[0]} and {question.shape[0]} examples")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    settings.check(getattr(model, "num_classes", None))
    rows = jnp.zeros((1, chunks.shape[2] + question.shape[1]), jnp.int32)
    generation.check_request(model, rows, num_tokens, settings.sampling)  # the cache holds the longest row
    return chunks.astype(jnp.int32), question


def nbce_generate(model: nn.Module, variables: Any, chunks: Any, question: Any, num_tokens: int,
                  settings: NBCE = NBCE(), *, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """`num_tokens` tokens answering `question` (B, Q) from the contexts `chunks` (B, n, C) by NBCE.

    `model` is a causal per-position model with `init_state` / `step` (as for models/generation.py), `variables`
    its variables. Returns (tokens (B, num_tokens) int32, selected (B, num_tokens) int32: the chunk each token
    was read from with min_entropy pooling, -1 with mean). ValueError for bad arrays or settings.
    """
    chunks, question = check_request(model, chunks, question, num_tokens, settings)
    return generate_fn(model, num_tokens, settings)(variables, chunks, question, jax.random.key(seed))
