"""Gated linear attention (GLA): linear attention with a matrix state and a data-dependent decay per key channel.

docs/methods.md section 16.4. Shape legend: B batch, L length, H heads, K key width per head, V value width per
head, C chunk length, N = ceil(L / C) chunks. Per head, with row vectors q_t, k_t (K,), v_t (V,) and the state
S (K, V) (fla's layout, key dimension first):

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,        o_t = (scale q_t) S_t,        alpha_t = exp(log_decay_t)

`log_decay` (B, L, H, K) holds log alpha_t <= 0, one value per key channel (GLA: logsigmoid(...) / 16); a last
axis of size 1, (B, L, H, 1), is a scalar decay per step and head, and RetNet is the fixed case
log_decay = log(gamma_h), gamma_h = 1 - 2^(-5-h) (`retnet_log_decay`). `scale` multiplies the queries (default
K^-1/2, as fla's kernels).

Forms (both take an initial state (B, H, K, V) and return the final one):
  recurrent (`gla_recurrent`, `gla_step`): a `lax.scan` over L, O(B L H K V) time, the reference.
  chunked (`gla_chunked`): L padded to N C (k = v = q = 0 and log-decay 0 on the padding, so padded steps leave
    the state unchanged). Within a chunk, with G the cumulative sum of log-decays (all <= 0, float32):
      intra:  P_ij = sum_d q_id k_jd exp(G_id - G_jd) for j <= i (else 0), O_intra = P V;
      inter:  O_inter = (Q * exp(G)) S_in;
      state:  S_out = diag(exp(G_C)) S_in + (K * exp(G_C - G))^T V.
    Only differences G_i - G_j with i >= j are exponentiated, and the exponent is clamped to <= 0 before the
    exp (the upper triangle, masked anyway, would otherwise overflow and poison gradients): nothing overflows
    whatever the decays. P is formed in log space as a (C, C, K) tensor per chunk and head (O(B L H C K)
    memory; with a scalar decay it is (C, C)). The chunk-to-chunk recurrence of the states is a `lax.scan`
    over N. Time O(B L H C (K + V) + B L H K V).
Everything accumulates in float32 (float64 for float64 inputs); outputs take the dtype of v.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

DEFAULT_CHUNK = 16


def retnet_log_decay(num_heads: int, dtype=jnp.float32) -> jax.Array:
    """log gamma_h with RetNet's gamma_h = 1 - 2^(-5-h), h = 0..H-1 (counted from 0), shape (H,)."""
    heads = jnp.arange(num_heads, dtype=dtype)
    return jnp.log1p(-jnp.exp2(-5.0 - heads))


def _compute_dtype(*arrays: jax.Array) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _prepare(q, k, v, log_decay, initial_state, scale):
    batch, length, heads, key_dim = q.shape
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"gla: q {q.shape}, k {k.shape} and v {v.shape} must agree on (B, L, H) and q, k on K")
    if log_decay.ndim != 4 or log_decay.shape[:3] != q.shape[:3] or log_decay.shape[3] not in (1, key_dim):
        raise ValueError(f"gla: log_decay must be (B, L, H, K) or (B, L, H, 1), got {log_decay.shape} "
                         f"for q {q.shape}")
    dtype = _compute_dtype(q, k, v, log_decay)
    scale = key_dim**-0.5 if scale is None else scale
    q = q.astype(dtype) * scale
    k, v, log_decay = k.astype(dtype), v.astype(dtype), log_decay.astype(dtype)
    state_shape = (batch, heads, key_dim, v.shape[-1])
    if initial_state is None:
        state = jnp.zeros(state_shape, dtype)
    else:
        if initial_state.shape != state_shape:
            raise ValueError(f"gla: initial_state must be {state_shape}, got {initial_state.shape}")
        state = initial_state.astype(dtype)
    return q, k, v, log_decay, state


def gla_step(state: jax.Array, q_t: jax.Array, k_t: jax.Array, v_t: jax.Array, log_decay_t: jax.Array,
             *, scale: float | None = None) -> tuple[jax.Array, jax.Array]:
    """One recurrent step. state (B, H, K, V); q_t, k_t (B, H, K); v_t (B, H, V); log_decay_t (B, H, K) or
    (B, H, 1). Returns (new state, o_t (B, H, V)); state and output in the state's dtype."""
    dtype = state.dtype
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    decay = jnp.exp(log_decay_t.astype(dtype))
    state = decay[..., None] * state + k_t.astype(dtype)[..., :, None] * v_t.astype(dtype)[..., None, :]
    o_t = jnp.einsum("bhk,bhkv->bhv", q_t.astype(dtype) * scale, state)
    return state, o_t


def gla_recurrent(q: jax.Array, k: jax.Array, v: jax.Array, log_decay: jax.Array, *,
                  initial_state: jax.Array | None = None, scale: float | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """GLA step by step. q, k (B, L, H, K); v (B, L, H, V); log_decay (B, L, H, K) or (B, L, H, 1).
    Returns (o (B, L, H, V) in v's dtype, final state (B, H, K, V) in the compute dtype)."""
    out_dtype = v.dtype
    q, k, v, log_decay, state = _prepare(q, k, v, log_decay, initial_state, scale)

    def body(state, inputs):
        return gla_step(state, *inputs, scale=1.0)

    moved = [jnp.moveaxis(a, 1, 0) for a in (q, k, v, log_decay)]
    state, o = lax.scan(body, state, moved)
    return jnp.moveaxis(o, 0, 1).astype(out_dtype), state


def _pad_to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """(B, L, ...) -> (B, N, C, ...), zero-padded at the end of L."""
    length = x.shape[1]
    padded = -(-length // chunk) * chunk
    x = jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
    return x.reshape(x.shape[0], padded // chunk, chunk, *x.shape[2:])


def gla_chunked(q: jax.Array, k: jax.Array, v: jax.Array, log_decay: jax.Array, *, chunk_size: int = DEFAULT_CHUNK,
                initial_state: jax.Array | None = None, scale: float | None = None
                ) -> tuple[jax.Array, jax.Array]:
    """GLA in chunks of `chunk_size` (see the module docstring); same arguments and results as `gla_recurrent`."""
    if chunk_size < 1:
        raise ValueError(f"gla_chunked: chunk_size must be >= 1, got {chunk_size}")
    out_dtype = v.dtype
    length = q.shape[1]
    q, k, v, log_decay, state = _prepare(q, k, v, log_decay, initial_state, scale)
    # (B, N, C, H, X): padding is q = k = v = 0 and log-decay 0 (padded steps neither decay nor write).
    qc, kc, vc, gc = (_pad_to_chunks(a, chunk_size) for a in (q, k, v, log_decay))
    g = jnp.cumsum(gc, axis=2)  # G, within-chunk cumulative log-decay, <= 0
    g_last = g[:, :, -1:]  # G_C, (B, N, 1, H, X)
    causal = jnp.tril(jnp.ones((chunk_size, chunk_size), bool))  # j <= i
    if log_decay.shape[-1] == 1:  # scalar decay: (C, C) log-space weights
        diff = g[:, :, :, None, :, 0] - g[:, :, None, :, :, 0]  # (B, N, Ci, Cj, H)
        weights = jnp.where(causal[:, :, None], jnp.exp(jnp.minimum(diff, 0.0)), 0.0)
        scores = jnp.einsum("bnihk,bnjhk->bnijh", qc, kc) * weights
    else:  # per key channel: the (C, C, K) log-space tensor
        diff = g[:, :, :, None] - g[:, :, None, :]  # (B, N, Ci, Cj, H, K)
        weights = jnp.where(causal[:, :, None, None], jnp.exp(jnp.minimum(diff, 0.0)), 0.0)
        scores = jnp.einsum("bnihk,bnjhk,bnijhk->bnijh", qc, kc, weights)
    o_intra = jnp.einsum("bnijh,bnjhv->bnihv", scores, vc)
    # Each chunk's own contribution to the state and its total decay, then the recurrence over chunks.
    written = jnp.einsum("bnjhk,bnjhv->bnhkv", kc * jnp.exp(g_last - g), vc)  # (B, N, H, K, V)
    chunk_decay = jnp.exp(g_last[:, :, 0])  # (B, N, H, X)

    def body(state, inputs):
        decay, write = inputs
        return decay[..., None] * state + write, state  # emit the state entering the chunk

    final, entering = lax.scan(body, state, (jnp.moveaxis(chunk_decay, 1, 0), jnp.moveaxis(written, 1, 0)))
    entering = jnp.moveaxis(entering, 0, 1)  # (B, N, H, K, V)
    o_inter = jnp.einsum("bnihk,bnhkv->bnihv", qc * jnp.exp(g), entering)
    o = (o_intra + o_inter).reshape(q.shape[0], -1, *o_intra.shape[3:])[:, :length]
    return o.astype(out_dtype), final
