"""The delta rule (DeltaNet): linear attention whose state is corrected towards each new value, not added to.

docs/methods.md section 16.5. Shape legend: B batch, L length, H heads, K key width per head, V value width per
head, C chunk length, N = ceil(L / C) chunks. Per head, with row vectors q_t, k_t (K,), v_t (V,), a write
strength beta_t in (0, 1) and the state S (K, V) (fla's layout, key dimension first):

    S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}),        o_t = (scale q_t) S_t

i.e. S_t = (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t: the value the state predicts for k_t moves a
fraction beta_t of the way to v_t. With ||k_t|| = 1 and beta_t in (0, 1) the transition is a contraction along
k_t; the layer L2-normalises keys for that reason. `scale` multiplies the queries (default K^-1/2, as fla).

Forms (both take an initial state (B, H, K, V) and return the final one):
  recurrent (`delta_rule_recurrent`, `delta_rule_step`): a `lax.scan` over L, O(B L H K V), the reference.
  chunked (`delta_rule_chunked`), the WY / UT form: L padded to N C with k = v = q = 0 and beta = 0 (padded
    steps are the identity on the state). Per chunk, with K, V, Q its (C, K), (C, V), (C, K) blocks:
      A = StrictLower(diag(beta) K K^T)                          (diagonal excluded)
      T = (I + A)^{-1} diag(beta)                                 (a unit-lower-triangular solve, float32 at least)
      W = T K,  U = T V                                           (all chunks at once)
      U' = U - W S_in,  O = Q S_in + (Q K^T * M) U',  S_out = S_in + K^T U'
    with M lower triangular *including* the diagonal; the recurrence of S over chunks is a `lax.scan`.
    Time O(B L H (C (K + V) + K V)) plus the solves, O(B N H C^2 (C + K + V)).
Everything accumulates in float32 (float64 for float64 inputs); outputs take the dtype of v.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

DEFAULT_CHUNK = 32


def _prepare(q, k, v, beta, initial_state, scale):
    batch, length, heads, key_dim = q.shape
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"delta rule: q {q.shape}, k {k.shape} and v {v.shape} must agree on (B, L, H) and q, k "
                         "on K")
    if beta.shape != q.shape[:3]:
        raise ValueError(f"delta rule: beta must be (B, L, H) = {q.shape[:3]}, got {beta.shape}")
    dtype = jnp.promote_types(jnp.result_type(q, k, v, beta), jnp.float32)
    scale = key_dim**-0.5 if scale is None else scale
    q = q.astype(dtype) * scale
    k, v, beta = k.astype(dtype), v.astype(dtype), beta.astype(dtype)
    state_shape = (batch, heads, key_dim, v.shape[-1])
    if initial_state is None:
        state = jnp.zeros(state_shape, dtype)
    else:
        if initial_state.shape != state_shape:
            raise ValueError(f"delta rule: initial_state must be {state_shape}, got {initial_state.shape}")
        state = initial_state.astype(dtype)
    return q, k, v, beta, state


def delta_rule_step(state: jax.Array, q_t: jax.Array, k_t: jax.Array, v_t: jax.Array, beta_t: jax.Array,
                    *, scale: float | None = None) -> tuple[jax.Array, jax.Array]:
    """One step. state (B, H, K, V); q_t, k_t (B, H, K); v_t (B, H, V); beta_t (B, H). Returns (new state,
    o_t (B, H, V)) in the state's dtype."""
    dtype = state.dtype
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    k_t, v_t, beta_t = k_t.astype(dtype), v_t.astype(dtype), beta_t.astype(dtype)
    error = v_t - jnp.einsum("bhk,bhkv->bhv", k_t, state)  # v_t minus what the state recalls for k_t
    state = state + k_t[..., :, None] * (beta_t[..., None] * error)[..., None, :]
    return state, jnp.einsum("bhk,bhkv->bhv", q_t.astype(dtype) * scale, state)


def delta_rule_recurrent(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array, *,
                         initial_state: jax.Array | None = None, scale: float | None = None
                         ) -> tuple[jax.Array, jax.Array]:
    """The delta rule step by step. q, k (B, L, H, K); v (B, L, H, V); beta (B, L, H).
    Returns (o (B, L, H, V) in v's dtype, final state (B, H, K, V) in the compute dtype)."""
    out_dtype = v.dtype
    q, k, v, beta, state = _prepare(q, k, v, beta, initial_state, scale)

    def body(state, inputs):
        return delta_rule_step(state, *inputs, scale=1.0)

    state, o = lax.scan(body, state, [jnp.moveaxis(a, 1, 0) for a in (q, k, v, beta)])
    return jnp.moveaxis(o, 0, 1).astype(out_dtype), state


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
    """(B, L, H, ...) -> (B, N, H, C, ...), zero-padded at the end of L."""
    length = x.shape[1]
    padded = -(-length // chunk) * chunk
    x = jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape(x.shape[0], padded // chunk, chunk, *x.shape[2:])
    return jnp.moveaxis(x, 2, 3)


def delta_rule_chunked(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array, *,
                       chunk_size: int = DEFAULT_CHUNK, initial_state: jax.Array | None = None,
                       scale: float | None = None) -> tuple[jax.Array, jax.Array]:
    """The delta rule in chunks (the WY / UT form of the module docstring); arguments and results as
    `delta_rule_recurrent`."""
    if chunk_size < 1:
        raise ValueError(f"delta_rule_chunked: chunk_size must be >= 1, got {chunk_size}")
    out_dtype = v.dtype
    length = q.shape[1]
    q, k, v, beta, state = _prepare(q, k, v, beta, initial_state, scale)
    qc, kc, vc, bc = (_chunks(a, chunk_size) for a in (q, k, v, beta))  # (B, N, H, C, X); beta (B, N, H, C)
    strict = jnp.tril(jnp.ones((chunk_size, chunk_size), bool), k=-1)
    lower = jnp.tril(jnp.ones((chunk_size, chunk_size), bool))
    # I + StrictLower(diag(beta) K K^T); solve_triangular with unit_diagonal never reads the diagonal.
    a = jnp.where(strict, bc[..., :, None] * jnp.einsum("bnhik,bnhjk->bnhij", kc, kc), 0.0)
    system = a + jnp.eye(chunk_size, dtype=a.dtype)
    # T K and T V with T = (I + A)^{-1} diag(beta): one solve with both right-hand sides.
    rhs = bc[..., None] * jnp.concatenate([kc, vc], axis=-1)
    wu = solve_triangular(system, rhs, lower=True, unit_diagonal=True)
    w, u = wu[..., : kc.shape[-1]], wu[..., kc.shape[-1]:]

    def body(state, inputs):
        w_n, u_n, k_n = inputs
        corrected = u_n - jnp.einsum("bhck,bhkv->bhcv", w_n, state)  # U' = U - W S_in
        return state + jnp.einsum("bhck,bhcv->bhkv", k_n, corrected), (state, corrected)

    final, (entering, corrected) = lax.scan(body, state, [jnp.moveaxis(x, 1, 0) for x in (w, u, kc)])
    entering, corrected = jnp.moveaxis(entering, 0, 1), jnp.moveaxis(corrected, 0, 1)
    scores = jnp.where(lower, jnp.einsum("bnhik,bnhjk->bnhij", qc, kc), 0.0)  # Q K^T * M, diagonal included
    o = jnp.einsum("bnhck,bnhkv->bnhcv", qc, entering) + jnp.einsum("bnhij,bnhjv->bnhiv", scores, corrected)
    o = jnp.moveaxis(o, 3, 2).reshape(q.shape[0], -1, *o.shape[2:3], o.shape[-1])[:, :length]
    return o.astype(out_dtype), final
