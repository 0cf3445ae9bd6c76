"""A short causal depthwise convolution along the time axis, and its one-token decoding step.

Used in front of the selective and gated recurrences (Mamba, Mamba-2; docs/methods.md section 16): each channel
d has its own K taps, and output t sees inputs t-K+1 .. t only:

    y[b, t, d] = bias[d] + sum_{k=0}^{K-1} w[k, d] * x[b, t - (K-1) + k, d]      (x = 0 before t = 0)

so w[K-1] multiplies the current input. This is what PyTorch's depthwise `nn.Conv1d(D, D, K, groups=D,
padding=K-1)` computes when the first L outputs are kept (its weight (D, 1, K) is w.T here): cross-correlation,
left padding only (symmetric padding would let output t see the future).

Shapes: x (B, L, D); w (K, D); bias (D,); the decoding cache (B, K-1, D) holds the last K-1 raw (pre-conv)
inputs, oldest first. Cost: O(B L D K); no FFT (K is small, 2..8 in practice).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def causal_conv1d(x: Array, w: Array, b: Array | None = None) -> Array:
    """The causal depthwise convolution y (B, L, D) of x (B, L, D) with taps w (K, D) and an optional bias (D,).

    Computed as K shifted multiply-adds in the promoted dtype of (x, w, b); the output has that dtype.
    """
    if x.ndim != 3 or w.ndim != 2 or w.shape[1] != x.shape[2]:
        raise ValueError(f"causal_conv1d: expected x (B, L, D) and w (K, D); got x {x.shape}, w {w.shape}")
    width, length = w.shape[0], x.shape[1]
    dtype = jnp.result_type(x, w, *([] if b is None else [b]))
    x = x.astype(dtype)
    padded = jnp.pad(x, ((0, 0), (width - 1, 0), (0, 0)))
    y = sum(padded[:, k:k + length] * w[k].astype(dtype) for k in range(width))
    if b is not None:
        y = y + b.astype(dtype)
    return y


def conv_cache_init(batch_size: int, width: int, channels: int, dtype=jnp.float32) -> Array:
    """The cache before the first token: (B, K-1, D) zeros (the zero padding of `causal_conv1d`)."""
    return jnp.zeros((batch_size, width - 1, channels), dtype)


def conv_cache_after(x: Array, width: int) -> Array:
    """The cache after the inputs x (B, L, D) have been consumed: their last K-1 rows, left-padded with zeros."""
    padded = jnp.pad(x, ((0, 0), (max(width - 1 - x.shape[1], 0), 0), (0, 0)))
    return padded[:, padded.shape[1] - (width - 1):]


def conv_step(cache: Array, x_t: Array, w: Array, b: Array | None = None) -> tuple[Array, Array]:
    """One token of `causal_conv1d`: (new cache (B, K-1, D), y_t (B, D)) from the cache (B, K-1, D) and x_t (B, D).

    The window is [cache, x_t] (K rows, oldest first); the new cache drops its oldest row and keeps x_t raw.
    """
    window = jnp.concatenate([cache.astype(x_t.dtype), x_t[:, None]], axis=1)  # (B, K, D)
    dtype = jnp.result_type(window, w, *([] if b is None else [b]))
    y = jnp.einsum("bkd,kd->bd", window.astype(dtype), w.astype(dtype))
    if b is not None:
        y = y + b.astype(dtype)
    return window[:, 1:].astype(cache.dtype), y
