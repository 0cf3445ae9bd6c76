"""The selective scan of Mamba (S6): a diagonal linear recurrence whose step, input and output maps depend on the
input (docs/methods.md section 16.1).

Per channel d and state index n:

    h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[n] x_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] x_t[d]

A is discretised by zero-order hold (exp(delta A)) but B by Euler (delta B), as the official code does (the
paper writes ZOH for both). B_t and C_t have no channel axis: one (N,) vector per token, shared by all D
channels. delta > 0 is taken as given (the mixer applies softplus).

Shapes: x, delta (B, L, D); A (D, N), real and negative; B, C (B, L, N); D (D,); states (B, D, N).

Evaluation: the recurrence runs on `ops.scan.linear_recurrence` with a time-varying decay. Done in one piece,
that materialises the decays and inputs (B, L, D, N) several times over, which is D*N = 2,048 floats per token at
d_model 64. With `chunk_size` = Q the sequence is cut into chunks of Q tokens: a `lax.scan` over chunks carries
the (B, D, N) state, and each chunk (rematerialised in the backward pass by `jax.checkpoint`) builds its
(B, Q, D, N) decays and inputs, runs the recurrence from the carried state and contracts with C at once. Memory:
O(B L (D + N) + B (L / Q) D N + B Q D N); work O(B L D N) either way. L need not be a multiple of Q: the padding
has delta = 0, i.e. decay 1 and input 0, so it leaves the state unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ops.scan import ScanMethod, linear_recurrence

Array = jax.Array


def _compute_dtype(*arrays: Array | None) -> jnp.dtype:
    """At least float32 (bfloat16 / float16 inputs are computed in float32), float64 under x64."""
    return jnp.promote_types(jnp.result_type(*[a for a in arrays if a is not None]), jnp.float32)


def _scan_piece(h0: Array, x: Array, delta: Array, A: Array, B: Array, C: Array, method: str | ScanMethod
                ) -> tuple[Array, Array]:
    """One piece of the scan without the D skip: (y (B, Q, D), state after it (B, D, N)) from h0 (B, D, N)."""
    decay = jnp.exp(delta[..., None] * A)                       # (B, Q, D, N): ZOH for A
    inputs = (delta * x)[..., None] * B[:, :, None, :]           # (B, Q, D, N): Euler for B
    h, h_last = linear_recurrence(decay, inputs, h0, method=method)
    return jnp.einsum("bldn,bln->bld", h, C), h_last


def selective_scan(x: Array, delta: Array, A: Array, B: Array, C: Array, D: Array | None = None,
                   h0: Array | None = None, *, chunk_size: int | None = None,
                   method: str | ScanMethod = ScanMethod.AUTO) -> tuple[Array, Array]:
    """y (B, L, D) and the last state (B, D, N) of the selective scan (see the module docstring).

    Args:
      x: (B, L, D) inputs; delta: (B, L, D) positive steps; A: (D, N) the continuous-time diagonal (negative);
      B, C: (B, L, N) the input and output maps of each token; D: (D,) skip weights (None: no skip);
      h0: (B, D, N) the state before the first token (None: zeros).
      chunk_size: Q, tokens per chunk of the memory-light evaluation (None or >= L: one piece).
      method: the `ops.scan.linear_recurrence` method inside a piece.

    Returns (y, h_last), computed and returned in at least float32 (float64 inputs stay float64).
    """
    if x.ndim != 3 or delta.shape != x.shape or A.ndim != 2 or A.shape[0] != x.shape[2]:
        raise ValueError(f"selective_scan: expected x, delta (B, L, D) and A (D, N); got x {x.shape}, "
                         f"delta {delta.shape}, A {A.shape}")
    batch, length, channels = x.shape
    n = A.shape[1]
    if B.shape != (batch, length, n) or C.shape != (batch, length, n):
        raise ValueError(f"selective_scan: expected B and C of shape (B, L, N) = {(batch, length, n)}; got "
                         f"B {B.shape}, C {C.shape}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"selective_scan: chunk_size must be a positive int or None; got {chunk_size!r}")
    dtype = _compute_dtype(x, delta, A, B, C, D, h0)
    x, delta, A, B, C = (v.astype(dtype) for v in (x, delta, A, B, C))
    h0 = jnp.zeros((batch, channels, n), dtype) if h0 is None else jnp.broadcast_to(h0.astype(dtype),
                                                                                     (batch, channels, n))
    if chunk_size is None or chunk_size >= length:
        y, h_last = _scan_piece(h0, x, delta, A, B, C, method)
    else:
        chunks = -(-length // chunk_size)
        pad = chunks * chunk_size - length

        def split(v: Array) -> Array:  # (B, L, ...) -> (chunks, B, Q, ...), zero-padded
            v = jnp.pad(v, ((0, 0), (0, pad)) + ((0, 0),) * (v.ndim - 2))
            return jnp.moveaxis(v.reshape(batch, chunks, chunk_size, *v.shape[2:]), 1, 0)

        @jax.checkpoint
        def body(h, piece):
            x_c, delta_c, b_c, c_c = piece
            y_c, h = _scan_piece(h, x_c, delta_c, A, b_c, c_c, method)
            return h, y_c

        h_last, y = lax.scan(body, h0, (split(x), split(delta), split(B), split(C)))
        y = jnp.moveaxis(y, 0, 1).reshape(batch, chunks * chunk_size, channels)[:, :length]
    if D is not None:
        y = y + D.astype(dtype) * x
    return y, h_last


def selective_step(h: Array, x_t: Array, delta_t: Array, A: Array, B_t: Array, C_t: Array,
                   D: Array | None = None) -> tuple[Array, Array]:
    """One token: (new state (B, D, N), y_t (B, D)) from h (B, D, N), x_t, delta_t (B, D), B_t, C_t (B, N)."""
    dtype = _compute_dtype(h, x_t, delta_t, A, B_t, C_t, D)
    h, x_t, delta_t, A, B_t, C_t = (v.astype(dtype) for v in (h, x_t, delta_t, A, B_t, C_t))
    h = jnp.exp(delta_t[..., None] * A) * h + (delta_t * x_t)[..., None] * B_t[:, None, :]
    y = jnp.einsum("bdn,bn->bd", h, C_t)
    if D is not None:
        y = y + D.astype(dtype) * x_t
    return h, y
