"""FAVOR+ (Performer): random features whose inner products estimate the softmax kernel exp(q . k / sqrt(K)).

Shape legend (shared by the package): B batch, L length, H heads, K key width, Kv value width, F number of
random features.

Positive random features (Choromanski et al. 2021; docs/methods.md section 6): with x' = x / K^(1/4),
    exp(q' . k') = E_w[ exp(w . q' - |q'|^2 / 2) exp(w . k' - |k'|^2 / 2) ],   w ~ N(0, I_K),
so phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(F) with the F rows of W as samples. The rows are drawn in
orthogonal blocks (`gaussian_orthogonal_matrix`), which lowers the variance.

Stabilisers (why the outputs stay finite and accurate): exp over- or underflows for large-norm inputs (the
exponents reach -|x'|^2 / 2, thousands at norms ~100), so the softmax kernel is evaluated in log space:
`softmax_log_features` gives the exponents, and ops/linear_attention.py's `linear_attention_from_log_features`
stabilises them per feature, with constants that cancel exactly between the numerator and the denominator of
out = phi(q)^T S / phi(q)^T z (all stop-gradient, so their exact gradient, zero, is kept):
  keys:    feature f of key j is stored as exp(e_jf - m_f), m_f the max of feature f over keys the query may
           see: all real keys (bidirectional), the running max (causal; the carried sums are rescaled by
           exp(m_old - m_new) when it grows, like online softmax, and the same in `favor_step`), or, inside a
           causal chunk, the max over a block of keys that all precede the queries using it;
  queries: exp(e_if + m_f - c_i), c_i = max_f (e_if + R_if), R_if the max of feature f over the keys query i
           sees.
Every factor is <= 1 and the (feature, key) pair that sets c_i contributes exactly 1, so a query's denominator
is >= 1 whatever the norms or directions: no output is shrunk by eps, and float32 stays within rounding of
the float64 estimator (tests/models/test_numerical_guards.py, norms 30-100 in random directions). Padded keys are
excluded. Per-query and per-key maxima alone (`softmax_kernel_features`, `softmax_key_features`, kept as
features for other uses) are not enough: a query whose largest features meet none of the keys' large ones
(large norms in unrelated directions) gets a denominator of exp(-100) or less, and with one key max per
sequence an early causal query's denominator is scaled by exp(m_early - m_max) (underflow).

ReLU kernel: phi(x) = relu(W x) / sqrt(F) (the generalised-attention variant; no stabiliser needed).

Causal form: the chunked causal form of ops/linear_attention.py (dyadic block products inside chunks of C,
the (S, z, m) state carried by `lax.scan`, the chunk body rematerialised), not a custom VJP: its autodiff
memory is O(B H (L (F + Kv) + (L / C) F Kv)), linear in L. Feature redraw: every random draw takes an
explicit PRNG key (`gaussian_orthogonal_matrix`); nothing is seeded from the data and nothing is stored in
hidden state.
"""

from __future__ import annotations

import enum
import math

import jax
import jax.numpy as jnp

from ops.linear_attention import (
    CausalMethod,
    FeatureMap,
    LinearAttentionState,
    LogFeatureState,
    linear_attention_from_features,
    linear_attention_from_log_features,
    linear_attention_step,
    log_feature_init_state,
    log_feature_step,
)


class OrthogonalScaling(enum.StrEnum):
    """How `gaussian_orthogonal_matrix` scales its rows (see there)."""

    CHI = "chi"
    SQRT_DIM = "sqrt_dim"
    IID = "iid"


class Kernel(enum.StrEnum):
    """The FAVOR kernel: positive softmax features or ReLU features (see the module docstring)."""

    SOFTMAX = "softmax"
    RELU = "relu"


# The values as plain strings, under their former names (models/ and experiments/ check against them).
ORTHOGONAL_SCALINGS = tuple(s.value for s in OrthogonalScaling)
KERNELS = tuple(k.value for k in Kernel)
_VALID_SCALINGS = ", ".join(map(repr, ORTHOGONAL_SCALINGS))
_VALID_KERNELS = ", ".join(map(repr, KERNELS))

# Denominators of the softmax features can be legitimately tiny (each feature is <= 1/sqrt(F) after the
# stabilisers, and a query's largest features need not meet any key's): only true zeros are guarded.
DEFAULT_EPS = 1e-30


def gaussian_orthogonal_matrix(
    key: jax.Array,
    num_features: int,
    dim: int,
    *,
    scaling: OrthogonalScaling | str = OrthogonalScaling.CHI,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Random projection W (F, K) for FAVOR+.

    scaling="chi": ceil(F / K) independent blocks of K orthonormal rows (QR of a Gaussian K x K matrix, with
      the signs of R's diagonal folded into Q so the blocks are Haar-distributed), each row rescaled by an
      independent chi(K)-distributed norm (the norm of a Gaussian K-vector): rows are marginally N(0, I_K).
    scaling="sqrt_dim": the same orthonormal rows, each rescaled by sqrt(K) (the paper's deterministic
      option).
    scaling="iid": unstructured i.i.d. N(0, 1) entries (no orthogonality), for comparison.
    Cost O(ceil(F / K) K^3).

    Precision: the Gaussians, the QR and the norms are computed in `dtype` promoted to at least float32
    (float64 when float64 is asked for and enabled, so the rows are orthogonal to float64 precision; the
    float64 draw is a different sample from the float32 one for the same key), then cast to `dtype`.
    """
    if num_features < 1 or dim < 1:
        raise ValueError(f"need num_features >= 1 and dim >= 1, got {num_features} and {dim}")
    if scaling not in ORTHOGONAL_SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; expected one of {_VALID_SCALINGS}")
    if scaling == OrthogonalScaling.IID:
        return jax.random.normal(key, (num_features, dim), dtype)
    compute = jax.dtypes.canonicalize_dtype(jnp.promote_types(dtype, jnp.float32))  # QR needs >= float32
    num_blocks = -(-num_features // dim)
    # One Gaussian draw serves the blocks and the chi norms (one sampler to compile instead of several).
    gaussians = jax.random.normal(key, (num_blocks * dim * dim + num_features * dim,), compute)
    blocks = gaussians[: num_blocks * dim * dim].reshape(num_blocks, dim, dim)
    q, r = jnp.linalg.qr(blocks)
    q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]  # Haar: fix the signs of QR
    rows = jnp.swapaxes(q, -1, -2).reshape(num_blocks * dim, dim)[:num_features]
    if scaling == OrthogonalScaling.CHI:
        norms = jnp.linalg.norm(gaussians[num_blocks * dim * dim :].reshape(num_features, dim), axis=-1)
    else:
        norms = jnp.full((num_features,), math.sqrt(dim), compute)
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


def softmax_log_features(x: jax.Array, projection: jax.Array) -> jax.Array:
    """log phi(x) + log(sqrt(F)) = w . x' - |x'|^2 / 2 (B, L, H, F) of x (B, L, H, K): the positive features
    in log space, unstabilised, for `ops.linear_attention.linear_attention_from_log_features` (which
    stabilises them per feature; the constant log(sqrt(F)) cancels there). Computed in at least float32."""
    _check_projection(x, projection)
    return _softmax_exponent(x, projection)


def softmax_kernel_features(
    x: jax.Array, projection: jax.Array, *, is_query: bool, mask: jax.Array | None = None
) -> jax.Array:
    """Positive random features phi(x) (B, L, H, F) of x (B, L, H, K) for the softmax kernel, stabilised.

    Queries: per-row max subtracted; keys: one max per (batch, head) over all real keys (mask (B, L)).
    These features can underflow for large norms (see the module docstring): attention uses
    `softmax_log_features` instead (`favor_attention`, and `linear_attention` with `favor_feature_map`).
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


def favor_feature_map(projection: jax.Array, kernel: Kernel | str = Kernel.SOFTMAX) -> FeatureMap:
    """A feature map for `ops.linear_attention.linear_attention` using the projection W (F, K).

    The softmax map also carries `log_features` (`softmax_log_features`), so `linear_attention` evaluates it
    stabilised per feature, exactly as `favor_attention` does, in both its bidirectional and causal forms.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown FAVOR kernel {kernel!r}; expected one of {_VALID_KERNELS}")
    features = softmax_kernel_features if kernel == Kernel.SOFTMAX else relu_kernel_features

    def feature_map(x: jax.Array, *, is_query: bool, mask: jax.Array | None = None) -> jax.Array:
        return features(x, projection, is_query=is_query, mask=mask)

    if kernel == Kernel.SOFTMAX:
        feature_map.log_features = lambda x: softmax_log_features(x, projection)
    return feature_map


def favor_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    projection: jax.Array,
    *,
    kernel: Kernel | str = Kernel.SOFTMAX,
    mask: jax.Array | None = None,
    causal: bool = False,
    method: CausalMethod | str = CausalMethod.CHUNKED,
    chunk_size: int = 64,
    eps: float = DEFAULT_EPS,
) -> jax.Array:
    """FAVOR+ attention: a drop-in estimate of softmax attention (scale 1/sqrt(K) built in).

    q (B, Lq, H, K), k (B, L, H, K), v (B, L, H, Kv), projection W (F, K) -> (B, Lq, H, Kv) in v's dtype.
    mask (B, L) key padding (padded keys contribute nothing and are excluded from the stabilisers).
    Cost O(B H L F (K + Kv)) time (causal chunked: see ops/linear_attention.py). The softmax kernel runs on
    `softmax_log_features`, stabilised per feature (see the module docstring). Dtypes: q, k, v may be
    bfloat16; the exponents, stabilisers, features and the (prefix) sums of ops/linear_attention.py are
    computed in at least float32 (float64 for a float64 projection or inputs), and only the output is cast
    to v's dtype.
    """
    options = dict(mask=mask, causal=causal, method=method, chunk_size=chunk_size, eps=eps)
    if kernel == Kernel.SOFTMAX:
        log_q, log_k = softmax_log_features(q, projection), softmax_log_features(k, projection)
        return linear_attention_from_log_features(log_q, log_k, v, **options)
    feature_map = favor_feature_map(projection, kernel)
    return linear_attention_from_features(
        feature_map(q, is_query=True), feature_map(k, is_query=False, mask=mask), v, **options
    )


# The recurrent state of causal FAVOR+ is that of causal linear attention on log features: the sums
# kv_sum (B, H, F, Kv) and key_sum (B, H, F), feature f scaled by exp(-key_max_f), with key_max (B, H, F) the running
# max of each key exponent seen so far (-inf before the first key; stays 0 for the ReLU kernel).
FavorState = LogFeatureState


def favor_init_state(
    batch_size: int, heads: int, num_features: int, value_dim: int, dtype: jnp.dtype = jnp.float32
) -> FavorState:
    """The state of an empty prefix (ops.linear_attention.log_feature_init_state)."""
    return log_feature_init_state(batch_size, heads, num_features, value_dim, dtype)


def favor_step(
    state: FavorState,
    q_t: jax.Array,
    k_t: jax.Array,
    v_t: jax.Array,
    projection: jax.Array,
    *,
    kernel: Kernel | str = Kernel.SOFTMAX,
    eps: float = DEFAULT_EPS,
) -> tuple[FavorState, jax.Array]:
    """One decoding step of causal FAVOR+: q_t, k_t (B, H, K), v_t (B, H, Kv) -> (state, out_t (B, H, Kv)).

    Softmax kernel: `ops.linear_attention.log_feature_step` on `softmax_log_features`: the key stabiliser
    is the running max of each key exponent; when feature f's grows from m to m', that feature's sums are
    multiplied by exp(m - m') first (the scales cancel). Equal to the causal forms of `favor_attention` up
    to rounding. O(B H F (K + Kv)) per token.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown FAVOR kernel {kernel!r}; expected one of {_VALID_KERNELS}")
    if q_t.ndim != 3 or k_t.shape != q_t.shape:
        raise ValueError(
            f"favor_step expects q_t and k_t of shape (B, H, K), got {q_t.shape} and {k_t.shape}"
        )
    if kernel == Kernel.RELU:
        phi_q = relu_kernel_features(q_t, projection)
        phi_k = relu_kernel_features(k_t, projection)
        inner, out = linear_attention_step(
            LinearAttentionState(state.kv_sum, state.key_sum), phi_q, phi_k, v_t, eps=eps
        )
        return FavorState(inner.kv_sum, inner.key_sum, jnp.zeros_like(state.key_max)), out
    inner, out = log_feature_step(
        LogFeatureState(*state),
        softmax_log_features(q_t, projection),
        softmax_log_features(k_t, projection),
        v_t,
        eps=eps,
    )
    return FavorState(*inner), out
