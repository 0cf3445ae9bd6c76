"""Tests for ops/normalizers.py against brute-force float64 references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ops import normalizers


def _brute_force_sparsemax(x: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the simplex by trying every support set S: p_S = x_S - tau, 0 elsewhere,
    tau fixed by sum p = 1; keep the feasible (p >= 0) candidate nearest to x."""
    n = len(x)
    best, best_dist = None, np.inf
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            support = list(support)
            tau = (x[support].sum() - 1.0) / size
            p = np.zeros(n)
            p[support] = x[support] - tau
            if np.all(p >= -1e-12):
                dist = np.sum((p - x) ** 2)
                if dist < best_dist:
                    best, best_dist = p, dist
    return best


def _bisection_entmax15(x: np.ndarray) -> np.ndarray:
    """1.5-entmax by bisection on tau: sum relu(x/2 - tau)^2 = 1."""
    z = x / 2.0
    lo, hi = z.max() - 1.0, z.max()  # sum at lo >= 1, at hi = 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.sum(np.maximum(z - mid, 0.0) ** 2) >= 1.0:
            lo = mid
        else:
            hi = mid
    return np.maximum(z - 0.5 * (lo + hi), 0.0) ** 2


def _rows(seed: int, shape=(12, 6), scale=2.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) * scale


def test_sparsemax_matches_brute_force(x64):
    x = _rows(0)
    p = np.asarray(normalizers.sparsemax(jnp.asarray(x)))
    for row, p_row in zip(x, p):
        np.testing.assert_allclose(p_row, _brute_force_sparsemax(row), atol=1e-12)
    assert np.all(p >= 0) and np.allclose(p.sum(-1), 1.0)
    assert np.any(p == 0), "with spread-out scores some weights must be exactly zero"


def test_entmax15_matches_bisection_and_is_on_simplex(x64):
    for scale in (0.3, 2.0, 10.0):
        x = _rows(1, scale=scale)
        p = np.asarray(normalizers.entmax15(jnp.asarray(x)))
        for row, p_row in zip(x, p):
            np.testing.assert_allclose(p_row, _bisection_entmax15(row), atol=1e-10)
        assert np.all(p >= 0)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)


def test_entmax15_ties_and_one_hot(x64):
    x = jnp.array([[1.0, 1.0, 1.0, 1.0], [100.0, 0.0, 0.0, -3.0]])
    p = np.asarray(normalizers.entmax15(x))
    np.testing.assert_allclose(p[0], 0.25, atol=1e-12)
    np.testing.assert_allclose(p[1], [1.0, 0.0, 0.0, 0.0], atol=1e-12)


def _numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _numpy_taylor(x: np.ndarray) -> np.ndarray:
    f = 1 + x + x**2 / 2
    return f / f.sum()


_REFERENCES = {
    "softmax": _numpy_softmax,
    "sparsemax": _brute_force_sparsemax,
    "entmax15": _bisection_entmax15,
    "taylor2": _numpy_taylor,
}


@pytest.mark.parametrize("name", ["softmax", "sparsemax", "entmax15", "taylor2"])
def test_mask_equals_normalising_the_subset(x64, name):
    x = _rows(2, shape=(3, 7))
    mask = np.array([[1, 0, 1, 1, 0, 1, 1], [1] * 7, [0, 0, 0, 1, 0, 0, 0]], bool)
    p = np.asarray(normalizers.get_normalizer(name)(jnp.asarray(x), jnp.asarray(mask)))
    for row in range(3):
        keep = mask[row]
        np.testing.assert_allclose(p[row, keep], _REFERENCES[name](x[row, keep]), atol=1e-10)
        assert np.all(p[row, ~keep] == 0)


@pytest.mark.parametrize("name", ["softmax", "sparsemax", "entmax15", "taylor2"])
def test_fully_masked_rows_give_zeros(name):
    fn = normalizers.get_normalizer(name)
    x = jnp.ones((2, 5), jnp.bfloat16)
    mask = jnp.array([[False] * 5, [True] * 5])
    p = jax.jit(fn)(x, mask)
    assert p.dtype == jnp.float32
    assert np.all(np.isfinite(p)) and np.all(np.asarray(p[0]) == 0)
    np.testing.assert_allclose(np.asarray(p[1]), 0.2, rtol=1e-6)
    grad = jax.jit(jax.grad(lambda s: jnp.sum(fn(s, mask) * jnp.arange(5.0))))(x.astype(jnp.float32))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "taylor2", "softmax"])
def test_gradients_match_finite_differences(x64, name):
    fn = normalizers.get_normalizer(name)
    x = jnp.asarray(_rows(3, shape=(4, 6), scale=1.5))
    mask = jnp.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]], bool)
    weights = jnp.asarray(np.random.default_rng(4).normal(size=(4, 6)))
    check_grads(
        jax.jit(lambda s: jnp.sum(fn(s, mask) * weights)),
        (x,),
        order=1,
        modes=["fwd", "rev"],
        eps=1e-6,
        atol=1e-6,
        rtol=1e-6,
    )


def test_sparsemax_jacobian_formula(x64):
    x = jnp.array([0.9, 0.8, 0.1, -1.0, 0.75])
    p = normalizers.sparsemax(x)
    support = np.asarray(p > 0)
    jac = np.asarray(jax.jacfwd(normalizers.sparsemax)(x))
    expected = np.diag(support.astype(float)) - np.outer(support, support) / support.sum()
    np.testing.assert_allclose(jac, expected, atol=1e-12)


def test_taylor_softmax_positive_and_normalised(x64):
    x = jnp.asarray(_rows(5, scale=3.0))
    p = np.asarray(normalizers.taylor_softmax(x))
    f = 1 + np.asarray(x) + np.asarray(x) ** 2 / 2
    np.testing.assert_allclose(p, f / f.sum(-1, keepdims=True), atol=1e-14)
    assert np.all(p > 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-14)


def test_unknown_normalizer_raises():
    with pytest.raises(ValueError, match="unknown attention normalizer"):
        normalizers.get_normalizer("softermax")
