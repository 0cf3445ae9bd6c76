"""Nystromformer attention and the CUR / skeleton low-rank approximation it is an instance of.

Shape legend (shared by the package): B batch, L length, H heads, K key width, Kv value width,
M number of landmarks.

Nystromformer (Xiong et al. 2021; docs/methods.md section 13, "CUR / Nystrom"): with S = softmax(q k^T / sqrt(K))
the L x L attention matrix, landmarks q~ and k~ (M each, segment means of q and k) give

    S ~ F A^+ Bm,   F = softmax(q k~^T / sqrt(K)) (L, M),  A = softmax(q~ k~^T / sqrt(K)) (M, M),
                    Bm = softmax(q~ k^T / sqrt(K)) (M, L),

and out = F (A^+ (Bm v)), O(B H L M (K + Kv) + B H M^3) time and O(B H L M) memory. It is the skeleton form
C U R with U = A^+ of the CUR decomposition (`cur_decomposition`), applied to the softmax matrix with
segment-mean rows and columns in place of selected ones. With M = L the landmarks are q and k themselves
and the product is exactly S (S S^+ S = S).

Segments: the real tokens of each sequence (mask True), in order, are split into M contiguous segments by
rank: real token r (0-based) of n goes to segment floor(r M / n). So L (or n) need not be a multiple of M:
segment sizes differ by at most one, and padding takes no part (a padded sequence gives exactly the output
of the same sequence unpadded). If n < M, some segments are empty: those landmarks are masked out of
every softmax and their rows/columns of A are zero, which the pseudo-inverse leaves at zero.

Pseudo-inverse: `iterative_pinv` (the Newton-type iteration Nystromformer uses:
Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4 from Z0 = A^T / (||A||_1 ||A||_inf)), or the exact SVD
pinv (pinv="exact"). The initial scale is computed per matrix (per batch element and head), not over the
whole batch as in the reference implementation, so sequences do not influence each other.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ops.normalizers import masked_softmax


def iterative_pinv(a: jax.Array, num_iterations: int = 6) -> jax.Array:
    """Approximate Moore-Penrose pseudo-inverse of square matrices a (..., M, M) by iteration.

    Converges to a^+ for any a (also singular, e.g. with zero rows/columns); the error after n iterations
    depends on the condition number of a (6 is Nystromformer's default). Cost O(n M^3).
    """
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"iterative_pinv expects square matrices (..., M, M), got {a.shape}")
    identity = jnp.eye(a.shape[-1], dtype=a.dtype)
    col_norm = jnp.max(jnp.sum(jnp.abs(a), axis=-2), axis=-1)[..., None, None]  # ||a||_1
    row_norm = jnp.max(jnp.sum(jnp.abs(a), axis=-1), axis=-1)[..., None, None]  # ||a||_inf
    scale = col_norm * row_norm
    z = jnp.swapaxes(a, -1, -2) / jnp.where(scale > 0, scale, 1.0)

    def iterate(z: jax.Array, _) -> tuple[jax.Array, None]:
        az = a @ z
        z = 0.25 * z @ (13.0 * identity - az @ (15.0 * identity - az @ (7.0 * identity - az)))
        return z, None

    z, _ = jax.lax.scan(iterate, z, None, length=num_iterations)
    return z


def segment_means(
    x: jax.Array, num_segments: int, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Means of x (B, L, H, K) over M contiguous segments of the real tokens (see the module docstring).

    Returns the means (B, M, H, K) (0 for empty segments) and which segments are non-empty (B, M) bool.
    Cost O(B L M H K) (a one-hot matrix product).
    """
    batch, length = x.shape[:2]
    real = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
    rank = jnp.cumsum(real, axis=1) - 1  # rank among real tokens
    count = jnp.sum(real, axis=1, keepdims=True)
    segment = (rank * num_segments) // jnp.maximum(count, 1)
    one_hot = (segment[..., None] == jnp.arange(num_segments)) & real[..., None]  # (B, L, M)
    sizes = jnp.sum(one_hot, axis=1)  # (B, M)
    compute = jnp.promote_types(x.dtype, jnp.float32)
    weights = one_hot.astype(compute) / jnp.maximum(sizes, 1)[:, None, :].astype(compute)
    return jnp.einsum("blm,blhk->bmhk", weights, x.astype(compute)), sizes > 0


def nystrom_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    num_landmarks: int,
    mask: jax.Array | None = None,
    scale: float | None = None,
    pinv: str = "iterative",
    pinv_iterations: int = 6,
) -> jax.Array:
    """Nystromformer attention (bidirectional only): q, k (B, L, H, K), v (B, L, H, Kv) -> (B, L, H, Kv).

    mask (B, L) key padding mask; pinv "iterative" (default, `iterative_pinv`) or "exact" (SVD). Computed
    in float32 (float64 for float64 inputs).
    """
    if q.ndim != 4 or q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"nystrom_attention expects q, k (B, L, H, K) and v (B, L, H, Kv) of one length; got "
            f"{q.shape}, {k.shape}, {v.shape}"
        )
    batch, length = q.shape[:2]
    if mask is not None and mask.shape != (batch, length):
        raise ValueError(f"padding mask must have shape (B, L) = ({batch}, {length}), got {mask.shape}")
    if num_landmarks < 1:
        raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}")
    if pinv not in ("iterative", "exact"):
        raise ValueError(f"unknown pinv {pinv!r}; expected 'iterative' or 'exact'")
    compute = jnp.promote_types(jnp.result_type(q, k, v), jnp.float32)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, vc = q.astype(compute) * scale, k.astype(compute), v.astype(compute)
    if mask is not None:  # padded entries may hold anything (even NaN); 0 * NaN would leak through the sums
        keep = mask[:, :, None, None]
        q, k, vc = jnp.where(keep, q, 0.0), jnp.where(keep, k, 0.0), jnp.where(keep, vc, 0.0)
    q_landmarks, landmark_valid = segment_means(q, num_landmarks, mask)
    k_landmarks, _ = segment_means(k, num_landmarks, mask)
    key_valid = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)

    def scores(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.einsum("bqhk,bjhk->bhqj", a, b)

    rows_valid = landmark_valid[:, None, :, None]  # landmark queries (B, 1, M, 1)
    kernel_f = masked_softmax(scores(q, k_landmarks), landmark_valid[:, None, None, :])  # (B, H, L, M)
    kernel_a = masked_softmax(scores(q_landmarks, k_landmarks), landmark_valid[:, None, None, :] & rows_valid)
    kernel_b = masked_softmax(
        scores(q_landmarks, k), key_valid[:, None, None, :] & rows_valid
    )  # (B, H, M, L)
    if pinv == "exact":
        a_inverse = jnp.linalg.pinv(kernel_a)
    else:
        a_inverse = iterative_pinv(kernel_a, pinv_iterations)
    landmark_values = jnp.einsum("bhmj,bjhv->bhmv", kernel_b, vc)
    out = jnp.einsum("bhqm,bhmv->bqhv", kernel_f, a_inverse @ landmark_values)
    return out.astype(v.dtype)


def cur_decomposition(
    matrix: jax.Array, row_indices: jax.Array, col_indices: jax.Array, *, core: str = "skeleton"
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """CUR approximation matrix ~ C U R from chosen rows and columns (docs/methods.md section 13).

    Args:
      matrix: (m, n); row_indices (r,), col_indices (c,) integer.
      core: "skeleton" (Nystrom): U = pinv(matrix[rows][:, cols]): reproduces the chosen rows and columns
        exactly, and the whole matrix when its rank equals rank(matrix[rows][:, cols]);
        "optimal": U = pinv(C) matrix pinv(R), the Frobenius-optimal core for these C and R (needs all of
        the matrix: O(m n (r + c)) instead of O(r c min(r, c))).
    Returns C (m, c) = matrix[:, cols], U (c, r), R (r, n) = matrix[rows].
    """
    if matrix.ndim != 2:
        raise ValueError(f"cur_decomposition expects a matrix (m, n), got shape {matrix.shape}")
    c = matrix[:, col_indices]
    r = matrix[row_indices, :]
    if core == "skeleton":
        u = jnp.linalg.pinv(matrix[row_indices][:, col_indices])
    elif core == "optimal":
        u = jnp.linalg.pinv(c) @ matrix @ jnp.linalg.pinv(r)
    else:
        raise ValueError(f"unknown CUR core {core!r}; expected 'skeleton' or 'optimal'")
    return c, u, r
