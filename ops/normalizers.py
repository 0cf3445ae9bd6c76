"""Maps from scores to weights on the simplex: softmax and its alternatives, all masked.

Shape legend (shared by the package): B batch, L length, H heads, K key width. The normalisers act on the
last axis of any array (attention scores are (B, H, Lq, Lk)).

Every normaliser has the signature `normalizer(scores, mask=None) -> weights` with

  scores: (..., n) real; mask: bool broadcastable to scores, True = the entry takes part.
  weights: (..., n), non-negative, summing to 1 over the unmasked entries; exactly 0 at masked entries;
           a row with no unmasked entry gives all zeros (never NaN).

They compute in at least float32 (bfloat16/float16 scores are promoted, as the weights of long rows need the
precision) and return that dtype; callers cast.

* `masked_softmax`: exp(x - max) / sum.
* `sparsemax` (Martins & Astudillo 2016): the Euclidean projection onto the simplex, relu(x - tau).
  Sort-based, O(n log n) per row; exact. Custom JVP with the Jacobian diag(s) - s s^T / |S|, s the support
  indicator.
* `entmax15` (1.5-entmax, Peters et al. 2019): relu(x / 2 - tau)^2 with tau from sorted cumulative moments,
  O(n log n) per row; exact. Custom JVP with Jacobian (in x) diag(r) - r r^T / sum(r), r = sqrt(p).
* `taylor_softmax`: second-order Taylor softmax (1 + x + x^2 / 2) / sum; positive for every x (its minimum
  is 1/2 at x = -1) but, unlike softmax, not invariant to shifting x.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import jax
import jax.numpy as jnp

Normalizer = Callable[..., jax.Array]


def _compute_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def _prepare(scores: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Promoted scores and a full-shape bool mask."""
    x = scores.astype(_compute_dtype(scores))
    if mask is None:
        full_mask = jnp.ones(x.shape, bool)
    else:
        full_mask = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)
    return x, full_mask


def masked_softmax(scores: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Softmax over the last axis, restricted to mask; rows with nothing unmasked give zeros.

    The max is subtracted before exponentiating (stop-gradient: it cancels exactly).
    """
    x, full_mask = _prepare(scores, mask)
    x = jnp.where(full_mask, x, -jnp.inf)
    row_max = jnp.max(x, axis=-1, keepdims=True)
    # A fully masked row has max -inf; shifting by 0 instead keeps exp(-inf - 0) = 0 and avoids inf - inf.
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    e = jnp.exp(x - row_max)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return jnp.where(total > 0, e / jnp.where(total > 0, total, 1.0), 0.0)


def _sorted_descending(z: jax.Array) -> jax.Array:
    return -jnp.sort(-z, axis=-1)


# ----------------------------------------------------------------------------------------------- sparsemax


def _sparsemax_threshold(z: jax.Array) -> jax.Array:
    """tau (..., 1) of sparsemax for rows z whose excluded entries are -inf."""
    z_sorted = _sorted_descending(z)
    finite = jnp.isfinite(z_sorted)
    cumulative = jnp.cumsum(jnp.where(finite, z_sorted, 0.0), axis=-1)
    k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    # The entries kept are a prefix of the sorted row: the k with 1 + k z_(k) > sum_{i<=k} z_(i).
    in_support = finite & (1.0 + k * jnp.where(finite, z_sorted, 0.0) > cumulative)
    support_size = jnp.sum(in_support, axis=-1, keepdims=True)
    size_safe = jnp.maximum(support_size, 1)
    tau = (jnp.take_along_axis(cumulative, size_safe - 1, axis=-1) - 1.0) / size_safe.astype(z.dtype)
    return tau


@jax.custom_jvp
def _sparsemax_rows(z: jax.Array) -> jax.Array:
    tau = _sparsemax_threshold(z)
    return jnp.where(jnp.isfinite(z), jnp.maximum(z - tau, 0.0), 0.0)


@_sparsemax_rows.defjvp
def _sparsemax_rows_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (z,), (dz,) = primals, tangents
    p = _sparsemax_rows(z)
    support = p > 0
    dz = jnp.where(support, dz, 0.0)
    size = jnp.maximum(jnp.sum(support, axis=-1, keepdims=True), 1).astype(p.dtype)
    dp = jnp.where(support, dz - jnp.sum(dz, axis=-1, keepdims=True) / size, 0.0)
    return p, dp


def sparsemax(scores: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Sparsemax over the last axis: argmin_{p in simplex} ||p - x||^2 = relu(x - tau).

    Sort the unmasked entries descending; tau = (sum_{i<=k} x_(i) - 1) / k for the largest k with
    x_(k) > tau_k (the support is a prefix of the sorted row). Cost O(n log n) per row.
    """
    x, full_mask = _prepare(scores, mask)
    return _sparsemax_rows(jnp.where(full_mask, x, -jnp.inf))


# ------------------------------------------------------------------------------------------------ entmax-1.5


def _entmax15_threshold(z: jax.Array) -> jax.Array:
    """tau (..., 1) with sum relu(z - tau)^2 = 1, for rows z whose excluded entries are -inf.

    For a support of the k largest entries, sum_{i<=k} (z_(i) - tau)^2 = 1 gives
    tau_k = mean_k - sqrt(1/k - var_k) (mean and variance of the k largest). The right k is the one with
    z_(k) >= tau_k >= z_(k+1): this is *not* always the largest k with z_(k) >= tau_k (docs/methods.md section 11),
    so every k is scored by how far it violates the two inequalities and the best is taken (robust to
    rounding at ties, where two k give the same tau).
    """
    n = z.shape[-1]
    z_sorted = _sorted_descending(z)
    finite = jnp.isfinite(z_sorted)
    z0 = jnp.where(finite, z_sorted, 0.0)
    k = jnp.arange(1, n + 1, dtype=z.dtype)
    mean = jnp.cumsum(z0, axis=-1) / k
    mean_sq = jnp.cumsum(z0 * z0, axis=-1) / k
    discriminant = 1.0 / k - (mean_sq - mean * mean)
    tau = mean - jnp.sqrt(jnp.maximum(discriminant, 0.0))
    z_next = jnp.concatenate([z_sorted[..., 1:], jnp.full(z.shape[:-1] + (1,), -jnp.inf, z.dtype)], axis=-1)
    violation = jnp.maximum(jnp.maximum(tau - z0, jnp.where(jnp.isfinite(z_next), z_next - tau, 0.0)), 0.0)
    invalid = (~finite) | (discriminant < 0)
    violation = jnp.where(invalid, jnp.inf, violation)
    best = jnp.argmin(violation, axis=-1, keepdims=True)
    return jnp.take_along_axis(tau, best, axis=-1)


@jax.custom_jvp
def _entmax15_rows(z: jax.Array) -> jax.Array:
    # Entmax is shift-invariant; shifting the row max to 0 keeps mean_sq - mean^2 free of cancellation.
    row_max = jnp.max(z, axis=-1, keepdims=True)
    z = z - jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    tau = _entmax15_threshold(z)
    return jnp.where(jnp.isfinite(z), jnp.maximum(z - tau, 0.0) ** 2, 0.0)


@_entmax15_rows.defjvp
def _entmax15_rows_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (z,), (dz,) = primals, tangents
    p = _entmax15_rows(z)
    r = jnp.sqrt(p)  # p^(2 - alpha) on the support, 0 off it
    dz = jnp.where(p > 0, dz, 0.0)
    r_total = jnp.sum(r, axis=-1, keepdims=True)
    r_dot = jnp.sum(r * dz, axis=-1, keepdims=True)
    # p = (z - tau)^2 on the support, so dp = 2 r (dz - dtau) with dtau fixed by sum dp = 0. (In terms of
    # the scores x = 2 z this is the paper's diag(r) - r r^T / sum(r).)
    dp = 2.0 * (r * dz - r * (r_dot / jnp.where(r_total > 0, r_total, 1.0)))
    return p, dp


def entmax15(scores: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """1.5-entmax over the last axis: relu(x / 2 - tau)^2 with tau such that the weights sum to 1.

    Exact, sort-based (O(n log n) per row); see `_entmax15_threshold` for the support rule.
    """
    x, full_mask = _prepare(scores, mask)
    return _entmax15_rows(jnp.where(full_mask, x / 2.0, -jnp.inf))


# ------------------------------------------------------------------------------------------ Taylor softmax


def taylor_softmax(scores: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Second-order Taylor softmax: f(x) / sum f, f(x) = 1 + x + x^2 / 2 >= 1/2.

    No max is subtracted: f is not shift-invariant, so shifting would change the result.
    """
    x, full_mask = _prepare(scores, mask)
    f = jnp.where(full_mask, 1.0 + x + 0.5 * x * x, 0.0)
    total = jnp.sum(f, axis=-1, keepdims=True)
    return jnp.where(total > 0, f / jnp.where(total > 0, total, 1.0), 0.0)


class NormalizerName(enum.StrEnum):
    """The attention normalisers `get_normalizer` accepts by name (`NORMALIZERS`)."""

    SOFTMAX = "softmax"
    SPARSEMAX = "sparsemax"
    ENTMAX15 = "entmax15"
    TAYLOR2 = "taylor2"


# Keyed by the values of NormalizerName (plain strings, so the keys print as 'softmax', ... wherever they are
# listed); a NormalizerName looks up the same entry as its string.
NORMALIZERS: dict[str, Normalizer] = {
    NormalizerName.SOFTMAX.value: masked_softmax,
    NormalizerName.SPARSEMAX.value: sparsemax,
    NormalizerName.ENTMAX15.value: entmax15,
    NormalizerName.TAYLOR2.value: taylor_softmax,
}
_VALID_NORMALIZERS = ", ".join(map(repr, NORMALIZERS))


def get_normalizer(normalizer: NormalizerName | str | Normalizer) -> Normalizer:
    """The normaliser named `normalizer` (one of NORMALIZERS), or `normalizer` itself if callable."""
    if callable(normalizer):
        return normalizer
    if normalizer not in NORMALIZERS:
        raise ValueError(
            f"unknown attention normalizer {normalizer!r}; expected one of {_VALID_NORMALIZERS} "
            "or a callable (scores, mask) -> weights"
        )
    return NORMALIZERS[normalizer]
