"""Mamba-2's state-space duality (SSD): a linear recurrence with one scalar decay per head and a matrix state,
evaluated chunk by chunk with matrix products (docs/methods.md section 16.2).

Per head h, with the discretised inputs X = delta * x and log-decays a = delta * A (A < 0, so a <= 0):

    S_t = exp(a_t) S_{t-1} + X_t B_t^T          S_t: (P, N);  X_t: (P,);  B_t, C_t: (N,)
    y_t = S_t C_t                               (+ D x_t in `ssd`: D multiplies x, not delta * x)

which is masked attention y = M X with M[i, j] = (C_i . B_j) exp(a_{j+1} + ... + a_i) for i >= j ("the dual
form"). B and C are shared by all heads (one group).

Two evaluations, equal in float64 (tests/ops/test_ssd.py):
  * `ssd_recurrent`: the recurrence on `ops.scan.linear_recurrence` (the reference; it materialises the states
    (B, L, H, P, N)).
  * `ssd_chunked`: chunks of Q tokens. Inside a chunk, the dual form with the decay matrix exp(segsum(a)), Q x Q
    per head; each chunk's own end state; a `lax.scan` over chunks carries the state in; and the carried-in
    state's contribution to each output, exp(cumsum a) (C . S_in). Work O(B L Q (H P + N) + B L H P N),
    memory O(B L Q H + B (L / Q) H P N). L is padded to a multiple of Q with X = 0 and a = 0 (decay 1, input 0),
    so the padding leaves the state unchanged and the final state is that after the last real token.

Stable segment sums: segsum(a)[i, j] = a_{j+1} + ... + a_i is built by zeroing the entries k <= j of a broadcast
copy and summing down the rows, then -inf above the diagonal; never as cumsum_i - cumsum_j, which cancels
catastrophically when the cumulative sums are large. Only differences of cumulative sums over at most one chunk,
which are <= 0, are exponentiated, in float32 at least.

Shapes: x (B, L, H, P); delta (B, L, H); A (H,); B, C (B, L, N); D (H,); states (B, H, P, N).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ops.scan import ScanMethod, linear_recurrence

Array = jax.Array


def _compute_dtype(*arrays: Array | None) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(*[a for a in arrays if a is not None]), jnp.float32)


def segsum(a: Array) -> Array:
    """(..., T) -> (..., T, T): out[..., i, j] = sum_{k=j+1}^{i} a[..., k] for i >= j (0 on the diagonal), -inf
    above it. Stable: masked before the cumulative sum, no difference of two cumulative sums."""
    length = a.shape[-1]
    rows = jnp.broadcast_to(a[..., :, None], (*a.shape, length))          # rows[..., k, j] = a_k
    strictly_lower = jnp.tril(jnp.ones((length, length), bool), -1)        # k > j
    sums = jnp.cumsum(jnp.where(strictly_lower, rows, 0), axis=-2)         # sum over k <= i of a_k [k > j]
    return jnp.where(jnp.tril(jnp.ones((length, length), bool)), sums, -jnp.inf)


def _check(x: Array, a: Array, B: Array, C: Array, what: str) -> None:
    if x.ndim != 4 or a.shape != x.shape[:3] or B.ndim != 3 or B.shape[:2] != x.shape[:2] or C.shape != B.shape:
        raise ValueError(f"{what}: expected x (B, L, H, P), a (B, L, H), B and C (B, L, N); got x {x.shape}, "
                         f"a {a.shape}, B {B.shape}, C {C.shape}")


def ssd_chunked(X: Array, a: Array, B: Array, C: Array, chunk_size: int, h0: Array | None = None
                ) -> tuple[Array, Array]:
    """The chunked SSD on discretised inputs: (y (B, L, H, P), final state (B, H, P, N)).

    X: (B, L, H, P) = delta * x; a: (B, L, H) = delta * A (log-decays, <= 0); B, C: (B, L, N);
    h0: (B, H, P, N) the state before the first token (None: zeros); chunk_size: Q (L need not divide by it).
    """
    _check(X, a, B, C, "ssd_chunked")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"ssd_chunked: chunk_size must be a positive int; got {chunk_size!r}")
    batch, length, heads, p = X.shape
    n = B.shape[-1]
    dtype = _compute_dtype(X, a, B, C, h0)
    X, a, B, C = (v.astype(dtype) for v in (X, a, B, C))
    h0 = jnp.zeros((batch, heads, p, n), dtype) if h0 is None else jnp.broadcast_to(h0.astype(dtype),
                                                                                    (batch, heads, p, n))
    q = min(chunk_size, max(length, 1))
    chunks = -(-length // q)
    pad = chunks * q - length

    def split(v: Array) -> Array:  # (B, L, ...) -> (B, chunks, Q, ...), zero-padded
        v = jnp.pad(v, ((0, 0), (0, pad)) + ((0, 0),) * (v.ndim - 2))
        return v.reshape(batch, chunks, q, *v.shape[2:])

    X, B, C = split(X), split(B), split(C)
    a = jnp.moveaxis(split(a), 3, 1)                                       # (B, H, chunks, Q)
    a_cs = jnp.cumsum(a, axis=-1)                                          # within-chunk cumulative sums

    # 1. Inside each chunk: the dual form with the decay matrix exp(segsum).
    segments = segsum(a)                                                   # (B, H, chunks, Q, Q)
    y_diag = jnp.einsum("bcln,bcsn,bhcls,bcshp->bclhp", C, B, jnp.exp(segments), X)
    # 2. Each chunk's own end state (from zero): sum_j exp(a_{j+1} + ... + a_Q) X_j B_j^T, the decays from the
    #    last row of the segment sums (exp(cs_Q - cs_j) would cancel after a large a_k, k <= j).
    to_end = jnp.exp(segments[..., -1, :])                                 # (B, H, chunks, Q)
    own = jnp.einsum("bcln,bhcl,bclhp->bchpn", B, to_end, X)
    # 3. The states between chunks: S_in[c + 1] = exp(cs_Q[c]) S_in[c] + own[c], from h0.
    chunk_decay = jnp.exp(a_cs[..., -1])                                   # (B, H, chunks)

    def carry(state, inputs):
        decay_c, own_c = inputs
        return decay_c[..., None, None] * state + own_c, state

    final, states_in = lax.scan(carry, h0, (jnp.moveaxis(chunk_decay, 2, 0), jnp.moveaxis(own, 1, 0)))
    # 4. The carried-in state's contribution: exp(cs_i) S_in C_i.
    y_off = jnp.einsum("bcln,cbhpn,bhcl->bclhp", C, states_in, jnp.exp(a_cs))
    y = (y_diag + y_off).reshape(batch, chunks * q, heads, p)[:, :length]
    return y, final


def ssd_recurrent(X: Array, a: Array, B: Array, C: Array, h0: Array | None = None, *,
                  method: str | ScanMethod = ScanMethod.AUTO) -> tuple[Array, Array]:
    """The same as `ssd_chunked`, as the recurrence S_t = exp(a_t) S_{t-1} + X_t B_t^T on `linear_recurrence`
    (materialises the (B, L, H, P, N) states): (y (B, L, H, P), final state (B, H, P, N))."""
    _check(X, a, B, C, "ssd_recurrent")
    dtype = _compute_dtype(X, a, B, C, h0)
    X, a, B, C = (v.astype(dtype) for v in (X, a, B, C))
    decay = jnp.exp(a)[..., None, None]                                    # (B, L, H, 1, 1)
    inputs = X[..., None] * B[:, :, None, None, :]                         # (B, L, H, P, N)
    states, final = linear_recurrence(decay, inputs, h0, method=method)
    return jnp.einsum("blhpn,bln->blhp", states, C), final


def ssd(x: Array, delta: Array, A: Array, B: Array, C: Array, D: Array | None = None, h0: Array | None = None,
        *, chunk_size: int | None = 64, method: str | ScanMethod = ScanMethod.AUTO) -> tuple[Array, Array]:
    """Mamba-2's SSD from continuous-time parameters: X = delta x, a = delta A, then y + D x.

    x: (B, L, H, P); delta: (B, L, H) positive steps; A: (H,) negative; B, C: (B, L, N); D: (H,) or None;
    h0: (B, H, P, N) or None. chunk_size: Q of `ssd_chunked`, or None for `ssd_recurrent` (with `method`).
    Returns (y (B, L, H, P), final state (B, H, P, N)), in at least float32.
    """
    dtype = _compute_dtype(x, delta, A, B, C, D, h0)
    x, delta = x.astype(dtype), delta.astype(dtype)
    X, a = x * delta[..., None], delta * A.astype(dtype)
    if chunk_size is None:
        y, final = ssd_recurrent(X, a, B, C, h0, method=method)
    else:
        y, final = ssd_chunked(X, a, B, C, chunk_size, h0)
    if D is not None:
        y = y + D.astype(dtype)[:, None] * x
    return y, final


def ssd_step(h: Array, x_t: Array, delta_t: Array, A: Array, B_t: Array, C_t: Array, D: Array | None = None
             ) -> tuple[Array, Array]:
    """One token: (new state (B, H, P, N), y_t (B, H, P)) from h (B, H, P, N), x_t (B, H, P), delta_t (B, H),
    B_t, C_t (B, N)."""
    dtype = _compute_dtype(h, x_t, delta_t, A, B_t, C_t, D)
    h, x_t, delta_t, A, B_t, C_t = (v.astype(dtype) for v in (h, x_t, delta_t, A, B_t, C_t))
    h = (jnp.exp(delta_t * A)[..., None, None] * h
         + (delta_t[..., None] * x_t)[..., None] * B_t[:, None, None, :])
    y = jnp.einsum("bhpn,bn->bhp", h, C_t)
    if D is not None:
        y = y + D.astype(dtype)[:, None] * x_t
    return h, y
