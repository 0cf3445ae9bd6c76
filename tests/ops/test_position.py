"""Tests for ops/position.py: RoPE (+bias), ALiBi, NTK (fixed, dynamic, mixed) / YaRN / log-n scaling, ReRoPE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import position


def _rotation_matrix(angle_per_pair: np.ndarray) -> np.ndarray:
    """Block-diagonal rotation for interleaved pairs (2i, 2i+1)."""
    k = 2 * len(angle_per_pair)
    rot = np.zeros((k, k))
    for i, a in enumerate(angle_per_pair):
        rot[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return rot


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def test_apply_rope_matches_rotation_matrices(x64):
    b, length, h, k = 2, 5, 3, 8
    x = _random((b, length, h, k))
    bias = _random((h, k), seed=1)
    theta = np.asarray(position.rope_frequencies(k, 100.0), np.float64)
    positions = np.array([0, 3, 7, 2, 11])
    out = np.asarray(
        position.apply_rope(jnp.asarray(x), jnp.asarray(positions), jnp.asarray(theta), jnp.asarray(bias))
    )
    for t in range(length):
        rot = _rotation_matrix(positions[t] * theta)
        expected = np.einsum("ij,bhj->bhi", rot, x[:, t] + bias)
        np.testing.assert_allclose(out[:, t], expected, atol=1e-12)
    np.testing.assert_allclose(theta, 100.0 ** (-np.arange(0, k, 2) / k), rtol=1e-6)


@pytest.mark.parametrize("with_bias", [False, True])
def test_rope_scores_depend_on_relative_position_only(x64, with_bias):
    k = 8
    q, key = jnp.asarray(_random((1, 1, 1, k))), jnp.asarray(_random((1, 1, 1, k), seed=1))
    theta = position.rope_frequencies(k)
    q_bias = jnp.asarray(_random((k,), seed=2)) if with_bias else None
    k_bias = jnp.asarray(_random((k,), seed=3)) if with_bias else None

    def score(m, n):
        qr = position.apply_rope(q, jnp.array([m]), theta, q_bias)
        kr = position.apply_rope(key, jnp.array([n]), theta, k_bias)
        return float(jnp.sum(qr * kr))

    for m, n in [(0, 0), (3, 1), (1, 3), (10, 4)]:
        for shift in (1, 5, 100):
            assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-9)
    assert score(3, 1) != pytest.approx(score(1, 3), abs=1e-6)  # direction matters


def test_key_bias_cancels_in_softmax_without_rope_but_not_with_it(x64):
    """docs/methods.md section 8: a key bias b adds q . b to all scores of a query (cancels); with RoPE it does not
    cancel."""
    k, length = 8, 6
    q, keys = jnp.asarray(_random((1, 1, 1, k))), jnp.asarray(_random((1, length, 1, k), seed=1))
    b = jnp.asarray(_random((k,), seed=2))
    theta = position.rope_frequencies(k)

    def weights(key_vectors, rotate):
        qr, kr = q, key_vectors
        if rotate:
            qr = position.apply_rope(q, jnp.array([length - 1]), theta)
            kr = position.apply_rope(key_vectors, jnp.arange(length), theta)
        return jax.nn.softmax(jnp.einsum("bqhk,bjhk->bhqj", qr, kr), axis=-1)

    np.testing.assert_allclose(weights(keys + b, False), weights(keys, False), atol=1e-12)
    assert not np.allclose(weights(keys + b, True), weights(keys, True), atol=1e-3)


def test_ntk_and_yarn_reduce_to_rope_at_scale_one(x64):
    k = 16
    plain = position.rope_frequencies(k, 10000.0)
    assert position.ntk_scaled_base(10000.0, 1.0, k) == 10000.0
    np.testing.assert_allclose(position.yarn_frequencies(k, scale=1.0, train_length=64), plain, rtol=1e-7)
    assert position.yarn_attention_factor(1.0) == 1.0


def test_ntk_base_and_yarn_ramp(x64):
    k, s, train = 16, 4.0, 512
    assert position.ntk_scaled_base(10000.0, s, k) == pytest.approx(10000.0 * s ** (k / (k - 2)))
    plain = np.asarray(position.rope_frequencies(k))
    yarn = np.asarray(position.yarn_frequencies(k, scale=s, train_length=train, beta_fast=32, beta_slow=1))
    rotations = plain * train / (2 * math.pi)
    fast, slow = rotations > 32, rotations < 1
    assert fast.any() and slow.any()
    np.testing.assert_allclose(yarn[fast], plain[fast], rtol=1e-6)  # high frequencies extrapolate
    np.testing.assert_allclose(yarn[slow], plain[slow] / s, rtol=1e-6)  # low frequencies interpolate
    middle = ~fast & ~slow
    assert np.all(yarn[middle] < plain[middle]) and np.all(yarn[middle] > plain[middle] / s)
    assert position.yarn_attention_factor(s) == pytest.approx(1 + 0.1 * math.log(s))


@pytest.mark.parametrize("k, s, b", [(8, 4.0, 0.75), (16, 3.0, 1.0)])
def test_ntk_mixed_frequencies_match_the_formula(x64, k, s, b):
    """docs/methods.md section 14: theta_m / exp(a m^b), m = 1..K/2, a = ln s / (K/2)^b."""
    got = np.asarray(position.ntk_mixed_frequencies(k, s, 500.0, exponent=b))
    a = math.log(s) / (k / 2) ** b
    expected = [500.0 ** (-2 * (m - 1) / k) / math.exp(a * m**b) for m in range(1, k // 2 + 1)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    plain = 500.0 ** (-np.arange(0, k, 2) / k)
    assert got[-1] == pytest.approx(plain[-1] / s, rel=1e-6)  # the lowest frequency is interpolated by s
    ratios = plain / got
    assert np.all(np.diff(ratios) > 0) and 1.0 < ratios[0] < ratios[-1]  # the factor grows from ~1 to s


def test_ntk_dynamic_frequencies_match_the_formula(x64):
    k, train, base = 8, 16, 10000.0
    positions = np.array([0, 5, 15, 16, 31, 63, 200])
    got = np.asarray(position.ntk_dynamic_frequencies(k, jnp.asarray(positions), train, base))
    assert got.shape == (len(positions), k // 2)
    for row, p in zip(got, positions, strict=True):
        s = max(1.0, (p + 1) / train)
        scaled_base = base * s ** (k / (k - 2))
        np.testing.assert_allclose(row, [scaled_base ** (-2 * i / k) for i in range(k // 2)], rtol=1e-6)


def test_ntk_variants_reduce_to_rope_within_the_training_length(x64):
    k, train = 16, 32
    plain = 10000.0 ** (-np.arange(0, k, 2) / k)
    for s in (0.25, 1.0):
        np.testing.assert_allclose(position.ntk_mixed_frequencies(k, s), plain, rtol=1e-6)
    dynamic = np.asarray(position.ntk_dynamic_frequencies(k, jnp.arange(train), train))
    np.testing.assert_allclose(dynamic, np.broadcast_to(plain, (train, k // 2)), rtol=1e-6)
    assert not np.allclose(position.ntk_dynamic_frequencies(k, jnp.array([train]), train)[0], plain, rtol=1e-6)


@pytest.mark.parametrize("with_bias", [False, True])
def test_rope_logits_per_query_rotate_q_and_every_key_with_the_query_frequencies(x64, with_bias):
    b, lq, lk, h, k = 2, 4, 6, 2, 8
    q, key = _random((b, lq, h, k)), _random((b, lk, h, k), seed=1)
    q_bias = _random((h, k), seed=2) if with_bias else np.zeros((h, k))
    k_bias = _random((h, k), seed=3) if with_bias else np.zeros((h, k))
    frequencies = np.abs(_random((lq, k // 2), seed=4))  # any per-query frequencies
    q_pos, k_pos = np.array([2, 3, 7, 9]), np.array([0, 1, 2, 5, 7, 8])
    logits = np.asarray(position.rope_logits_per_query(
        jnp.asarray(q), jnp.asarray(key), jnp.asarray(frequencies), q_positions=jnp.asarray(q_pos),
        k_positions=jnp.asarray(k_pos), q_bias=jnp.asarray(q_bias) if with_bias else None,
        k_bias=jnp.asarray(k_bias) if with_bias else None, scale=0.5))
    assert logits.shape == (b, h, lq, lk)
    for i in range(lq):
        for j in range(lk):
            q_rot = np.einsum("ij,bhj->bhi", _rotation_matrix(q_pos[i] * frequencies[i]), q[:, i] + q_bias)
            k_rot = np.einsum("ij,bhj->bhi", _rotation_matrix(k_pos[j] * frequencies[i]), key[:, j] + k_bias)
            np.testing.assert_allclose(logits[:, :, i, j], 0.5 * np.sum(q_rot * k_rot, -1), atol=1e-12)
    if not with_bias:  # the same frequencies in every row: ordinary RoPE scores (same shapes: no new compilation)
        theta = position.rope_frequencies(k)
        rope = jnp.einsum("bqhk,bjhk->bhqj", position.apply_rope(jnp.asarray(q), jnp.asarray(q_pos), theta),
                          position.apply_rope(jnp.asarray(key), jnp.asarray(k_pos), theta)) / math.sqrt(k)
        rows = jnp.broadcast_to(theta, (lq, k // 2)).astype(jnp.float64)
        got = position.rope_logits_per_query(jnp.asarray(q), jnp.asarray(key), rows, q_positions=jnp.asarray(q_pos),
                                             k_positions=jnp.asarray(k_pos))
        np.testing.assert_allclose(got, rope, atol=1e-12)


def test_log_n_scale():
    scale = np.asarray(position.log_n_scale(jnp.array([1, 64, 128, 4096]), 128))
    np.testing.assert_allclose(scale, [1.0, 1.0, 1.0, math.log(4096) / math.log(128)], rtol=1e-6)


def test_alibi_slopes():
    np.testing.assert_allclose(position.alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-7)
    # Non power of two (ALiBi's rule): the 4-head slopes, then every other slope of the 8-head set.
    six = np.asarray(position.alibi_slopes(6))
    expected = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    np.testing.assert_allclose(six, expected, rtol=1e-7)
    bias = np.asarray(position.alibi_bias(position.alibi_slopes(2), jnp.arange(3), jnp.arange(4)))
    assert bias.shape == (1, 2, 3, 4)
    np.testing.assert_allclose(bias[0, 0], -(2.0**-4) * np.abs(np.arange(3)[:, None] - np.arange(4)[None]))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("leak", [None, 3.0])
def test_rerope_logits_match_clipped_relative_positions(x64, causal, leak):
    b, length, h, k, window = 1, 9, 2, 8, 3
    q, key = _random((b, length, h, k)), _random((b, length, h, k), seed=1)
    q_bias, k_bias = _random((h, k), seed=2), _random((h, k), seed=3)
    theta = np.asarray(position.rope_frequencies(k), np.float64)
    logits = np.asarray(
        position.rerope_logits(
            jnp.asarray(q),
            jnp.asarray(key),
            jnp.asarray(theta),
            window=window,
            leak=leak,
            q_bias=jnp.asarray(q_bias),
            k_bias=jnp.asarray(k_bias),
            causal=causal,
        )
    )
    scale = 1 / math.sqrt(k)
    for i in range(length):
        for j in range(length):
            if causal and j > i:
                continue
            d = i - j
            rel = (
                d if abs(d) < window else np.sign(d) * (window + ((abs(d) - window) / leak if leak else 0.0))
            )
            rot = _rotation_matrix(rel * theta)  # q rotated to the relative position, k at 0
            expected = (
                np.einsum("hi,hi->h", np.einsum("ij,hj->hi", rot, q[0, i] + q_bias), key[0, j] + k_bias)
                * scale
            )
            np.testing.assert_allclose(logits[0, :, i, j], expected, atol=1e-10)


def test_rerope_equals_rope_inside_a_window_covering_everything(x64):
    length, k = 6, 8
    q, key = jnp.asarray(_random((2, length, 2, k))), jnp.asarray(_random((2, length, 2, k), seed=1))
    theta = position.rope_frequencies(k)
    rope = jnp.einsum(
        "bqhk,bjhk->bhqj",
        position.apply_rope(q, jnp.arange(length), theta),
        position.apply_rope(key, jnp.arange(length), theta),
    ) / math.sqrt(k)
    np.testing.assert_allclose(position.rerope_logits(q, key, theta, window=length), rope, atol=1e-12)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="even"):
        position.rope_frequencies(7)
    with pytest.raises(ValueError, match="shape"):
        position.apply_rope(jnp.zeros((1, 3, 1, 4)), jnp.arange(3), jnp.ones(3))
    with pytest.raises(ValueError, match="training length"):
        position.yarn_frequencies(8, scale=2.0, train_length=0)
    with pytest.raises(ValueError, match="training length"):
        position.ntk_dynamic_frequencies(8, jnp.arange(3), 0)
    with pytest.raises(ValueError, match="exponent"):
        position.ntk_mixed_frequencies(8, 2.0, exponent=0.0)
    with pytest.raises(ValueError, match=r"\(Lq, K/2\)"):
        position.rope_logits_per_query(jnp.zeros((1, 3, 1, 4)), jnp.zeros((1, 3, 1, 4)), jnp.ones((3, 3)))
