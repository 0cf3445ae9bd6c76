"""FAVOR+ (Performer): random features whose inner products estimate the softmax kernel exp(q . k / sqrt(K)).

Shape legend (shared by the package): B batch, L length, H heads, K key width, Kv value width, F number of
random features.

Positive random features (Choromanski et al. 2021; methods.md section 6): with x' = x / K^(1/4),
    exp(q' . k') = E_w[ exp(w . q' - |q'|^2 / 2) exp(w . k' - |k'|^2 / 2) ],   w ~ N(0, I_K),
so phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(F) with the F rows of W as samples. The rows are drawn in
orthogonal blocks (`gaussian_orthogonal_matrix`), which lowers the variance.

Stabilisers (why the outputs stay finite): exp overflows or underflows for large-norm inputs, so a constant
is subtracted from each exponent before exp, chosen such that it cancels exactly in
out = phi(q)^T S / phi(q)^T z:
  queries: c = max over the F exponents of that query (one row's numerator and denominator share it);
  keys (`favor_attention`): each key's own max over its F exponents, m_j, with phi(k_j) computed as
           exp(exponent - m_j) (max feature 1 / sqrt(F)) and m_j handed to the linear attention as the
           key's log scale. The sums then carry the scale of the largest m among their keys: the running
           max over the keys seen so far in the causal forms (rescaling the carried state when it grows, like
           online softmax and like `favor_step`). The bidirectional form stabilises per feature (below).
           Padded keys are excluded.
All stabilisers are stop-gradient (they cancel, so their exact gradient is zero anyway). Why the causal
form needs the running max: with one max over the whole sequence, an early query's denominator is scaled by
exp(m_early - m_max), which can underflow float32 (the output then collapses to 0) or, squared in the
derivative of the division, overflow it.
`softmax_kernel_features` (the `FeatureMap` interface) keeps one key max per sequence, so linear attention
with `favor_feature_map` has exactly that limitation when causal: use `favor_attention` for causal models.
A query whose largest features meet none of the keys' large ones (large-norm inputs in unrelated directions)
gets a denominator of exp(-100) or less under these per-query / per-key maxima, although the estimator itself
is a proper weighted mean there: below eps its output is shrunk towards 0. The bidirectional form of
`favor_attention` therefore stabilises keys per feature instead (`_bidirectional_softmax_features`: the
denominator is then >= 1 / F); the causal forms and `favor_step` keep the per-key running max and this
limitation (a per-feature running max would need (C, C, F) work inside each chunk), measured in
tests/test_numerical_guards.py: 5-20% of causal outputs off (by up to 2) for norms 30-100 in random
directions, none when the directions cluster.

ReLU kernel: phi(x) = relu(W x) / sqrt(F) (the generalised-attention variant; no stabiliser needed).

Causal form: the chunked causal linear attention of ops/linear_attention.py (quadratic inside chunks of C,
the (S, z) state carried by `lax.scan`), not a custom VJP: its autodiff memory is O(B H (L C + (L / C) F Kv)),
linear in L. Feature redraw: every random draw takes an explicit PRNG key (`gaussian_orthogonal_matrix`);
nothing is seeded from the data and nothing is stored in hidden state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ops.linear_attention import (
    FeatureMap,
    LinearAttentionState,
    linear_attention_from_features,
    linear_attention_step,
)

ORTHOGONAL_SCALINGS = ("chi", "sqrt_dim", "iid")
KERNELS = ("softmax", "relu")

# Denominators of the softmax features can be legitimately tiny (each feature is <= 1/sqrt(F) after the
# stabilisers, and a query's largest features need not meet any key's): only true zeros are guarded.
DEFAULT_EPS = 1e-30


def gaussian_orthogonal_matrix(
    key: jax.Array, num_features: int, dim: int, *, scaling: str = "chi", dtype: jnp.dtype = jnp.float32
) -> jax.Array:
    """Random projection W (F, K) for FAVOR+.

    scaling="chi": ceil(F / K) independent blocks of K orthonormal rows (QR of a Gaussian K x K matrix, with
      the signs of R's diagonal folded into Q so the blocks are Haar-distributed), each row rescaled by an
      independent chi(K)-distributed norm (the norm of a Gaussian K-vector): rows are marginally N(0, I_K).
    scaling="sqrt_dim": the same orthonormal rows, each rescaled by sqrt(K) (the paper's deterministic
      option).
    scaling="iid": unstructured i.i.d. N(0, 1) entries (no orthogonality), for comparison.
    Cost O(ceil(F / K) K^3).
    """
    if num_features < 1 or dim < 1:
        raise ValueError(f"need num_features >= 1 and dim >= 1, got {num_features} and {dim}")
    if scaling not in ORTHOGONAL_SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; expected one of {ORTHOGONAL_SCALINGS}")
    if scaling == "iid":
        return jax.random.normal(key, (num_features, dim), dtype)
    num_blocks = -(-num_features // dim)
    # One Gaussian draw serves the blocks and the chi norms (one sampler to compile instead of several).
    gaussians = jax.random.normal(key, (num_blocks * dim * dim + num_features * dim,), jnp.float32)
    blocks = gaussians[: num_blocks * dim * dim].reshape(num_blocks, dim, dim)
    q, r = jnp.linalg.qr(blocks)
    q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]  # Haar: fix the signs of QR
    rows = jnp.swapaxes(q, -1, -2).reshape(num_blocks * dim, dim)[:num_features]
    if scaling == "chi":
        norms = jnp.linalg.norm(gaussians[num_blocks * dim * dim :].reshape(num_features, dim), axis=-1)
    else:
        norms = jnp.full((num_features,), math.sqrt(dim), jnp.float32)
    return (rows * norms[:, None]).astype(dtype)


def _check_projection(x: jax.Array, projection: jax.Array) -> None:
    if projection.ndim != 2 or projection.shape[1] != x.shape[-1]:
        raise ValueError(f"projection must have shape (F, K) with K = {x.shape[-1]}, got {projection.shape}")


def _softmax_exponent(x: jax.Array, projection: jax.Array) -> jax.Array:
    """w . x' - |x'|^2 / 2 with x' = x / K^(1/4): (B, L, H, F) (or (B, H, F) for one token)."""
    compute = jnp.promote_types(jnp.result_type(x, projection), jnp.float32)
    x = x.astype(compute) * x.shape[-1] ** -0.25
    projected = jnp.einsum("...k,fk->...f", x, projection.astype(compute))
    return projected - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)


def softmax_kernel_features(
    x: jax.Array, projection: jax.Array, *, is_query: bool, mask: jax.Array | None = None
) -> jax.Array:
    """Positive random features phi(x) (B, L, H, F) of x (B, L, H, K) for the softmax kernel, stabilised.

    Queries: per-row max subtracted; keys: one max per (batch, head) over all real keys (mask (B, L)).
    For causal attention prefer `softmax_key_features` (see the module docstring).
    """
    _check_projection(x, projection)
    exponent = _softmax_exponent(x, projection)
    if is_query:
        stabiliser = jnp.max(exponent, axis=-1, keepdims=True)
    else:
        candidates = exponent if mask is None else jnp.where(mask[:, :, None, None], exponent, -jnp.inf)
        stabiliser = jnp.max(candidates, axis=(1, 3), keepdims=True)  # (B, 1, H, 1)
        stabiliser = jnp.where(jnp.isfinite(stabiliser), stabiliser, 0.0)
    num_features = projection.shape[0]
    return jnp.exp(exponent - jax.lax.stop_gradient(stabiliser)) / math.sqrt(num_features)


def softmax_key_features(
    k: jax.Array, projection: jax.Array, *, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Key features stabilised per key: (phi (B, L, H, F), log_scale (B, L, H)) of k (B, L, H, K).

    phi = exp(exponent - m) / sqrt(F) with m the key's own max exponent (stop-gradient), returned as
    log_scale, so that the true features are phi * exp(log_scale) (the `key_log_scale` of
    `ops.linear_attention.linear_attention_from_features`). mask (B, L): padded keys get log_scale -inf.
    O(B L H F K).
    """
    _check_projection(k, projection)
    exponent = _softmax_exponent(k, projection)
    log_scale = jax.lax.stop_gradient(jnp.max(exponent, axis=-1))
    features = jnp.exp(exponent - log_scale[..., None]) / math.sqrt(projection.shape[0])
    if mask is not None:
        log_scale = jnp.where(mask[:, :, None], log_scale, -jnp.inf)
    return features, log_scale


def relu_kernel_features(
    x: jax.Array, projection: jax.Array, *, is_query: bool = True, mask: jax.Array | None = None
) -> jax.Array:
    """phi(x) = relu(W x) / sqrt(F): (B, L, H, F) (the ReLU-kernel Performer)."""
    del is_query, mask
    _check_projection(x, projection)
    compute = jnp.promote_types(jnp.result_type(x, projection), jnp.float32)
    projected = jnp.einsum("...k,fk->...f", x.astype(compute), projection.astype(compute))
    return jax.nn.relu(projected) / math.sqrt(projection.shape[0])


def favor_feature_map(projection: jax.Array, kernel: str = "softmax") -> FeatureMap:
    """A feature map for `ops.linear_attention.linear_attention` using the projection W (F, K)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown FAVOR kernel {kernel!r}; expected one of {KERNELS}")
    features = softmax_kernel_features if kernel == "softmax" else relu_kernel_features

    def feature_map(x: jax.Array, *, is_query: bool, mask: jax.Array | None = None) -> jax.Array:
        return features(x, projection, is_query=is_query, mask=mask)

    return feature_map


def _bidirectional_softmax_features(
    q: jax.Array, k: jax.Array, projection: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(phi(q) (B, Lq, H, F), phi(k) (B, L, H, F)) for the bidirectional form, stabilised per feature.

    Keys: exp(e_jf - M_f) / sqrt(F), with M_f the max of feature f's exponent over the real keys (per batch
    and head), so no feature of a key is lost below that key's own largest one. Queries: exp(e_if + M_f - c_i)
    / sqrt(F), with c_i = max_f (e_if + M_f). M_f cancels in phi(q) . phi(k) and c_i between numerator and
    denominator (both stop-gradient); the best (f, j) pair contributes exactly 1 / F, so the denominator is
    at least 1 / F whatever the norms (per-key and per-query maxima alone can leave it at exp(-100) or less
    for large-norm inputs: tests/test_numerical_guards.py). Padded keys get exp(-inf) = 0.
    """
    _check_projection(q, projection)
    _check_projection(k, projection)
    q_exponent = _softmax_exponent(q, projection)
    k_exponent = _softmax_exponent(k, projection)
    if mask is not None:
        k_exponent = jnp.where(mask[:, :, None, None], k_exponent, -jnp.inf)
    feature_max = jnp.max(k_exponent, axis=1, keepdims=True)  # (B, 1, H, F)
    feature_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(feature_max), feature_max, 0.0))
    shifted = q_exponent + feature_max
    query_max = jax.lax.stop_gradient(jnp.max(shifted, axis=-1, keepdims=True))
    scale = 1.0 / math.sqrt(projection.shape[0])
    return jnp.exp(shifted - query_max) * scale, jnp.exp(k_exponent - feature_max) * scale


def favor_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    projection: jax.Array,
    *,
    kernel: str = "softmax",
    mask: jax.Array | None = None,
    causal: bool = False,
    method: str = "chunked",
    chunk_size: int = 64,
    eps: float = DEFAULT_EPS,
) -> jax.Array:
    """FAVOR+ attention: a drop-in estimate of softmax attention (scale 1/sqrt(K) built in).

    q (B, Lq, H, K), k (B, L, H, K), v (B, L, H, Kv), projection W (F, K) -> (B, Lq, H, Kv) in v's dtype.
    mask (B, L) key padding (padded keys contribute nothing and are excluded from the key stabiliser).
    Cost O(B H L F (K + Kv)) time; causal uses the chunked form with the running key stabiliser (see the
    module docstring). Dtypes: q, k, v may be bfloat16; the exponents, stabilisers, features and the (prefix)
    sums of ops/linear_attention.py are computed in at least float32, and only the output is cast to v's dtype.
    """
    feature_map = favor_feature_map(projection, kernel)
    if kernel == "softmax" and not causal:
        (phi_q, phi_k), key_log_scale = _bidirectional_softmax_features(q, k, projection, mask), None
    else:
        phi_q = feature_map(q, is_query=True)
        if kernel == "softmax":
            phi_k, key_log_scale = softmax_key_features(k, projection, mask=mask)
        else:
            phi_k, key_log_scale = feature_map(k, is_query=False, mask=mask), None
    return linear_attention_from_features(
        phi_q,
        phi_k,
        v,
        mask=mask,
        causal=causal,
        method=method,
        chunk_size=chunk_size,
        eps=eps,
        key_log_scale=key_log_scale,
    )


class FavorState(NamedTuple):
    """Recurrent state of causal FAVOR+: the linear-attention sums, scaled by exp(-key_max).

    kv_sum (B, H, F, Kv), key_sum (B, H, F); key_max (B, H): running max of the key exponents seen so far
    (-inf before the first key; stays 0 for the ReLU kernel).
    """

    kv_sum: jax.Array
    key_sum: jax.Array
    key_max: jax.Array


def favor_init_state(
    batch_size: int, heads: int, num_features: int, value_dim: int, dtype: jnp.dtype = jnp.float32
) -> FavorState:
    """The state of an empty prefix."""
    return FavorState(
        jnp.zeros((batch_size, heads, num_features, value_dim), dtype),
        jnp.zeros((batch_size, heads, num_features), dtype),
        jnp.full((batch_size, heads), -jnp.inf, dtype),
    )


def favor_step(
    state: FavorState,
    q_t: jax.Array,
    k_t: jax.Array,
    v_t: jax.Array,
    projection: jax.Array,
    *,
    kernel: str = "softmax",
    eps: float = DEFAULT_EPS,
) -> tuple[FavorState, jax.Array]:
    """One decoding step of causal FAVOR+: q_t, k_t (B, H, K), v_t (B, H, Kv) -> (state, out_t (B, H, Kv)).

    Softmax kernel: the key stabiliser is the running max of the key exponents; when it grows from m to m',
    the state is multiplied by exp(m - m') first, so all keys in the sums share one scale (which cancels).
    O(B H F (K + Kv)) per token.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown FAVOR kernel {kernel!r}; expected one of {KERNELS}")
    if q_t.ndim != 3 or k_t.shape != q_t.shape:
        raise ValueError(
            f"favor_step expects q_t and k_t of shape (B, H, K), got {q_t.shape} and {k_t.shape}"
        )
    num_features = projection.shape[0]
    if kernel == "relu":
        phi_q = relu_kernel_features(q_t, projection)
        phi_k = relu_kernel_features(k_t, projection)
        inner, out = linear_attention_step(
            LinearAttentionState(state.kv_sum, state.key_sum), phi_q, phi_k, v_t, eps=eps
        )
        return FavorState(inner.kv_sum, inner.key_sum, jnp.zeros_like(state.key_max)), out
    q_exponent = _softmax_exponent(q_t, projection)
    phi_q = jnp.exp(q_exponent - jax.lax.stop_gradient(jnp.max(q_exponent, axis=-1, keepdims=True)))
    phi_q = phi_q / math.sqrt(num_features)
    k_exponent = _softmax_exponent(k_t, projection).astype(state.kv_sum.dtype)
    new_max = jax.lax.stop_gradient(jnp.maximum(state.key_max, jnp.max(k_exponent, axis=-1)))
    rescale = jnp.exp(state.key_max - new_max)  # 0 before the first key (the sums are 0 then anyway)
    phi_k = jnp.exp(k_exponent - new_max[..., None]) / math.sqrt(num_features)
    rescaled = LinearAttentionState(
        state.kv_sum * rescale[..., None, None], state.key_sum * rescale[..., None]
    )
    inner, out = linear_attention_step(rescaled, phi_q, phi_k, v_t, eps=eps)
    return FavorState(inner.kv_sum, inner.key_sum, new_max), out
