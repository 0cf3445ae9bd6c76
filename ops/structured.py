"""Monarch matrices: products of two block-diagonal factors and permutations (docs/methods.md section 13).

Shape legend: n = p q the matrix size; p, q the two factor sizes (p = q = sqrt(n) in the square case).

A Monarch matrix of size n = p q is M = P^T L P R with (x viewed as a p x q array, row-major)
  R: p blocks of q x q, `right` (p, q, q): block a acts on x[a, :];
  P: the transpose of the p x q view into a q x p view (for p = q, P = P^T = P^{-1} is
     `x.reshape(m, m).T.reshape(n)`, the M = P L P R of docs/methods.md section 13);
  L: q blocks of p x p, `left` (q, p, p): block b acts on the b-th row of the q x p view;
  then the result is transposed back to the p x q view.
Entry by entry, with output index (a', b') and input index (a, b) (flattened as a' q + b' and a q + b):

    M[(a', b'), (a, b)] = left[b', a', a] * right[a, b', b],

so for each pair (b', a) the p x q sub-matrix M[(:, b'), (a, :)] is the rank-1 product
left[b', :, a] right[a, b', :]
(for p = q this is M_{i,j,k,l} = L_{j,i,k} R_{k,j,l} of docs/methods.md section 13).
Parameters: q p^2 + p q^2 = n (p + q), 2 n^1.5 in the square case; M x costs O(n (p + q)).

The nearest Monarch matrix in Frobenius norm (`project_to_monarch`) follows from that: reshape A into its
q p sub-matrices of size p x q and keep each one's top singular pair (O(n^2 min(p, q)) in all).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _check_factors(left: jax.Array, right: jax.Array) -> tuple[int, int]:
    if (
        right.ndim != 3
        or right.shape[1] != right.shape[2]
        or left.ndim != 3
        or left.shape[1] != left.shape[2]
    ):
        raise ValueError(
            f"Monarch factors must be stacks of square blocks: right (p, q, q) and left (q, p, p); "
            f"got right {right.shape}, left {left.shape}"
        )
    p, q = right.shape[0], right.shape[1]
    if left.shape != (q, p, p):
        raise ValueError(
            f"with right of shape (p, q, q) = {right.shape}, left must have shape (q, p, p) = "
            f"({q}, {p}, {p}); got {left.shape}"
        )
    return p, q


def monarch_matmul(x: jax.Array, left: jax.Array, right: jax.Array) -> jax.Array:
    """M x for a batch of vectors x (..., n), n = p q, M given by its factors left (q, p, p), right (p, q, q).

    Cost O(n (p + q)) per vector instead of O(n^2).
    """
    p, q = _check_factors(left, right)
    if x.shape[-1] != p * q:
        raise ValueError(f"x must have last axis n = p q = {p * q}, got {x.shape}")
    grid = x.reshape(x.shape[:-1] + (p, q))
    grid = jnp.einsum("aij,...aj->...ai", right, grid)  # R: block a on row a of the p x q view
    grid = jnp.swapaxes(grid, -1, -2)  # P: the q x p view
    grid = jnp.einsum("bij,...bj->...bi", left, grid)  # L: block b on row b of the q x p view
    return jnp.swapaxes(grid, -1, -2).reshape(x.shape)  # back to the p x q view


def monarch_to_dense(left: jax.Array, right: jax.Array) -> jax.Array:
    """The dense n x n matrix (n = p q): M[(a', b'), (a, b)] = left[b', a', a] right[a, b', b]."""
    p, q = _check_factors(left, right)
    dense = jnp.einsum("yxa,ayb->xyab", left, right)  # (a', b', a, b)
    return dense.reshape(p * q, p * q)


def project_to_monarch(matrix: jax.Array, p: int, q: int | None = None) -> tuple[jax.Array, jax.Array]:
    """The Monarch matrix nearest to `matrix` (n x n, n = p q) in Frobenius norm, as factors (left, right).

    A[(a', b'), (a, b)] reshaped to (b', a) -> p x q blocks; each block's best rank-1 approximation
    s u v^T gives left[b', :, a] = sqrt(s) u and right[a, b', :] = sqrt(s) v. Exact (up to rounding) when
    `matrix` is a Monarch matrix. q defaults to p (the square case n = p^2).
    """
    q = p if q is None else q
    n = p * q
    if matrix.shape != (n, n):
        raise ValueError(f"matrix must be n x n with n = p q = {n}, got {matrix.shape}")
    blocks = matrix.reshape(p, q, p, q).transpose(1, 2, 0, 3)  # (b', a, a', b): q p blocks of p x q
    u, s, vt = jnp.linalg.svd(blocks, full_matrices=False)
    root = jnp.sqrt(s[..., 0])  # (q, p)
    left = (u[..., :, 0] * root[..., None]).transpose(0, 2, 1)  # (b', a, a') -> (b', a', a)
    right = (vt[..., 0, :] * root[..., None]).transpose(1, 0, 2)  # (b', a, b) -> (a, b', b)
    return left, right


def monarch_init(
    key: jax.Array, p: int, q: int | None = None, *, dtype: jnp.dtype = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Random factors (left (q, p, p), right (p, q, q)) with entries N(0, 1/block size).

    Each block then preserves the mean squared norm of its input, so E|M x|^2 = |x|^2 (like a
    LeCun-normal dense layer: each output is a sum of p q products with variance 1/(p q)).
    """
    q = p if q is None else q
    if p < 1 or q < 1:
        raise ValueError(f"Monarch factor sizes must be >= 1, got p={p}, q={q}")
    left_key, right_key = jax.random.split(key)
    left = jax.random.normal(left_key, (q, p, p), dtype) / math.sqrt(p)
    right = jax.random.normal(right_key, (p, q, q), dtype) / math.sqrt(q)
    return left, right
