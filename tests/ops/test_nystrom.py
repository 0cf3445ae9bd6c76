"""Tests for ops/nystrom.py: landmarks, pseudo-inverse, Nystromformer attention and the CUR helper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import attention, nystrom


def _qkv(b=2, length=16, h=2, k=4, kv=3, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(b, length, h, k), (b, length, h, k), (b, length, h, kv)]
    return tuple(jnp.asarray(rng.normal(size=s)) for s in shapes)


def test_segment_means_match_a_loop(x64):
    x = np.random.default_rng(0).normal(size=(2, 10, 1, 3))
    mask = np.array([[1] * 10, [1, 0, 1, 1, 0, 1, 1, 1, 0, 0]], bool)
    means, valid = nystrom.segment_means(jnp.asarray(x), 4, jnp.asarray(mask))
    for b in range(2):
        real = np.nonzero(mask[b])[0]
        n = len(real)
        for m in range(4):
            members = [real[r] for r in range(n) if r * 4 // n == m]  # contiguous, sizes differ by <= 1
            assert bool(valid[b, m]) == bool(members)
            np.testing.assert_allclose(means[b, m], x[b, members].mean(0), atol=1e-12)


def test_iterative_pinv_converges_also_for_singular_matrices(x64):
    rng = np.random.default_rng(1)
    a = jax.nn.softmax(jnp.asarray(rng.normal(size=(6, 6))), axis=-1)
    np.testing.assert_allclose(nystrom.iterative_pinv(a, 40), np.linalg.pinv(np.asarray(a)), atol=1e-8)
    singular = a.at[2].set(0.0).at[:, 4].set(0.0)  # what empty landmarks produce
    np.testing.assert_allclose(
        nystrom.iterative_pinv(singular, 60), np.linalg.pinv(np.asarray(singular)), atol=1e-8
    )


@pytest.mark.parametrize("pinv,iterations", [("exact", 0), ("iterative", 40)])
def test_as_many_landmarks_as_tokens_is_exact(x64, pinv, iterations):
    q, k, v = _qkv()
    expected = attention.dot_product_attention(q, k, v)
    out = jax.jit(
        lambda q, k, v: nystrom.nystrom_attention(
            q, k, v, num_landmarks=16, pinv=pinv, pinv_iterations=iterations
        )
    )(q, k, v)
    np.testing.assert_allclose(out, expected, atol=1e-7)


def test_error_with_fewer_landmarks_is_reported(x64):
    """Relative error of Nystrom attention against softmax attention as landmarks grow (printed, -s)."""
    q, k, v = _qkv(length=24)
    q, k = q * 0.5, k * 0.5  # moderately peaked attention
    expected = attention.dot_product_attention(q, k, v)
    fn = jax.jit(nystrom.nystrom_attention, static_argnames=("num_landmarks", "pinv"))
    errors = {}
    for landmarks in (3, 8, 24):
        out = fn(q, k, v, num_landmarks=landmarks, pinv="exact")
        errors[landmarks] = float(jnp.linalg.norm(out - expected) / jnp.linalg.norm(expected))
    print(
        "nystrom relative error by number of landmarks (L = 24):", {m: round(e, 4) for m, e in errors.items()}
    )
    assert all(np.isfinite(e) for e in errors.values())
    assert errors[24] < 1e-8 and errors[24] < errors[3]


def test_padding_is_ignored_and_l_need_not_divide(x64):
    q, k, v = _qkv(length=14)
    real = 11  # 11 real tokens, 4 landmarks: segments of 3, 3, 2, 3
    mask = jnp.broadcast_to(jnp.arange(14)[None] < real, (2, 14))
    k_pad = k.at[:, real:].set(1e3)
    v_pad = v.at[:, real:].set(jnp.nan)
    fn = jax.jit(nystrom.nystrom_attention, static_argnames=("num_landmarks",))
    padded = fn(q, k_pad, v_pad, num_landmarks=4, mask=mask)[:, :real]
    unpadded = fn(q[:, :real], k[:, :real], v[:, :real], num_landmarks=4)
    np.testing.assert_allclose(padded, unpadded, atol=1e-10)


def test_fewer_real_tokens_than_landmarks_stays_finite(x64):
    q, k, v = _qkv(length=8)
    mask = jnp.broadcast_to(jnp.arange(8)[None] < 3, (2, 8))
    out = jax.jit(
        lambda q, k, v: nystrom.nystrom_attention(q, k, v, num_landmarks=5, mask=mask, pinv="exact")
    )(q, k, v)
    assert np.all(np.isfinite(out))
    # With at most one real token per landmark, every landmark is a token: exact attention over the 3 tokens.
    expected = attention.dot_product_attention(q[:, :3], k[:, :3], v[:, :3])
    np.testing.assert_allclose(out[:, :3], expected, atol=1e-8)


def test_cur_skeleton_recovers_low_rank_matrices(x64):
    rng = np.random.default_rng(3)
    low_rank = jnp.asarray(rng.normal(size=(9, 3)) @ rng.normal(size=(3, 7)))
    rows, cols = jnp.array([0, 4, 8]), jnp.array([1, 2, 6])
    c, u, r = nystrom.cur_decomposition(low_rank, rows, cols)
    np.testing.assert_allclose(c @ u @ r, low_rank, atol=1e-10)
    full = jnp.asarray(rng.normal(size=(9, 7)))
    c, u, r = nystrom.cur_decomposition(full, rows, cols, core="skeleton")
    skeleton = c @ u @ r
    np.testing.assert_allclose(skeleton[rows], full[rows], atol=1e-10)  # chosen rows and columns reproduced
    np.testing.assert_allclose(skeleton[:, cols], full[:, cols], atol=1e-10)
    c, u, r = nystrom.cur_decomposition(full, rows, cols, core="optimal")
    assert jnp.linalg.norm(c @ u @ r - full) <= jnp.linalg.norm(skeleton - full) + 1e-12


def test_bad_arguments_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="num_landmarks"):
        nystrom.nystrom_attention(q, k, v, num_landmarks=0)
    with pytest.raises(ValueError, match="pinv"):
        nystrom.nystrom_attention(q, k, v, num_landmarks=4, pinv="svd")
    with pytest.raises(ValueError, match="core"):
        nystrom.cur_decomposition(jnp.ones((3, 3)), jnp.array([0]), jnp.array([0]), core="best")
