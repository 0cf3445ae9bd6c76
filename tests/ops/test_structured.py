"""Tests for ops/structured.py (Monarch matrices) against explicit block-diagonal and permutation matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import structured


def _block_diagonal(blocks: np.ndarray) -> np.ndarray:
    count, size, _ = blocks.shape
    out = np.zeros((count * size, count * size))
    for i in range(count):
        out[i * size : (i + 1) * size, i * size : (i + 1) * size] = blocks[i]
    return out


def _view_transpose(p: int, q: int) -> np.ndarray:
    """Permutation matrix taking x viewed as p x q (row-major) to its transpose q x p (row-major)."""
    perm = np.zeros((p * q, p * q))
    for a in range(p):
        for b in range(q):
            perm[b * p + a, a * q + b] = 1.0
    return perm


def _random_factors(p, q, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(q, p, p)), rng.normal(size=(p, q, q))


@pytest.mark.parametrize("p,q", [(3, 3), (2, 5), (4, 2)])
def test_matmul_and_dense_match_explicit_factors(x64, p, q):
    left, right = _random_factors(p, q)
    forward = _view_transpose(p, q)
    expected = forward.T @ _block_diagonal(left) @ forward @ _block_diagonal(right)
    dense = np.asarray(structured.monarch_to_dense(jnp.asarray(left), jnp.asarray(right)))
    np.testing.assert_allclose(dense, expected, atol=1e-12)
    x = np.random.default_rng(1).normal(size=(4, p * q))
    np.testing.assert_allclose(
        structured.monarch_matmul(jnp.asarray(x), jnp.asarray(left), jnp.asarray(right)),
        x @ expected.T,
        atol=1e-12,
    )
    assert left.size + right.size == p * q * (p + q)


def test_square_case_is_p_l_p_r(x64):
    m = 3
    left, right = _random_factors(m, m, seed=2)
    perm = _view_transpose(m, m)
    np.testing.assert_array_equal(perm, perm.T)  # P = P^T = P^-1
    np.testing.assert_array_equal(perm @ perm, np.eye(m * m))
    x = np.arange(m * m, dtype=float)
    np.testing.assert_array_equal(perm @ x, x.reshape(m, m).T.reshape(-1))
    expected = perm @ _block_diagonal(left) @ perm @ _block_diagonal(right)
    np.testing.assert_allclose(
        structured.monarch_to_dense(jnp.asarray(left), jnp.asarray(right)), expected, atol=1e-12
    )


@pytest.mark.parametrize("p,q", [(4, 4), (2, 3), (3, 2)])
def test_projection_recovers_monarch_matrices_exactly(x64, p, q):
    left, right = _random_factors(p, q, seed=3)
    dense = structured.monarch_to_dense(jnp.asarray(left), jnp.asarray(right))
    left_hat, right_hat = structured.project_to_monarch(dense, p, q)
    np.testing.assert_allclose(structured.monarch_to_dense(left_hat, right_hat), dense, atol=1e-10)


def test_projection_error_is_the_discarded_singular_values(x64):
    """The Frobenius error of the projection equals sqrt(sum of all but the top singular value^2) of each
    rank-1 block, i.e. it is the best Monarch approximation."""
    p, q = 3, 2
    a = np.random.default_rng(4).normal(size=(p * q, p * q))
    left, right = structured.project_to_monarch(jnp.asarray(a), p, q)
    error = np.linalg.norm(np.asarray(structured.monarch_to_dense(left, right)) - a)
    blocks = a.reshape(p, q, p, q).transpose(1, 2, 0, 3).reshape(q * p, p, q)
    discarded = sum(np.sum(np.linalg.svd(block, compute_uv=False)[1:] ** 2) for block in blocks)
    assert error == pytest.approx(np.sqrt(discarded), rel=1e-10)


def test_monarch_init_preserves_norm_on_average():
    left, right = structured.monarch_init(jax.random.PRNGKey(0), 4, 8)
    assert left.shape == (8, 4, 4) and right.shape == (4, 8, 8)
    x = np.random.default_rng(5).normal(size=(2000, 32)).astype(np.float32)
    y = structured.monarch_matmul(jnp.asarray(x), left, right)
    ratio = float(jnp.mean(jnp.sum(y**2, -1)) / np.mean(np.sum(x**2, -1)))
    assert 0.6 < ratio < 1.6  # one random draw: E ratio = 1 over draws


def test_bad_shapes_raise():
    left, right = _random_factors(2, 3)
    with pytest.raises(ValueError, match="left must have shape"):
        structured.monarch_to_dense(jnp.asarray(right), jnp.asarray(right))
    with pytest.raises(ValueError, match="last axis"):
        structured.monarch_matmul(jnp.ones((5,)), jnp.asarray(left), jnp.asarray(right))
    with pytest.raises(ValueError, match="n x n"):
        structured.project_to_monarch(jnp.ones((5, 5)), 2)
