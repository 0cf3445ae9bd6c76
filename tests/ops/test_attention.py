"""Tests for ops/attention.py: dense reference, blockwise attention (values, gradients, memory), RNN form,
decoding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import attention, normalizers, position

pytestmark = pytest.mark.usefixtures("full_optimization")  # compiled memory figures / timings: optimised XLA


def _qkv(b=2, lq=13, lk=13, h=2, k=4, kv=3, seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    shapes = [(b, lq, h, k), (b, lk, h, k), (b, lk, h, kv)]
    return tuple(jnp.asarray(rng.normal(size=shape), dtype) for shape in shapes)


def _padding(lengths, total):
    return jnp.arange(total)[None, :] < jnp.asarray(lengths)[:, None]


def _loop_attention(q, k, v, mask, causal, bias):
    """Per-query, per-head numpy softmax attention."""
    q, k, v = map(np.asarray, (q, k, v))
    b, lq, h, kd = q.shape
    lk = k.shape[1]
    out = np.zeros((b, lq, h, v.shape[-1]))
    for bi in range(b):
        for i in range(lq):
            for hi in range(h):
                allowed = [j for j in range(lk) if mask[bi, j] and (not causal or j <= i + lk - lq)]
                if not allowed:
                    continue
                s = np.array(
                    [q[bi, i, hi] @ k[bi, j, hi] / math.sqrt(kd) + bias[0, hi, i, j] for j in allowed]
                )
                w = np.exp(s - s.max())
                w /= w.sum()
                out[bi, i, hi] = sum(wj * v[bi, j, hi] for wj, j in zip(w, allowed))
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_dense_matches_loop_reference(x64, causal):
    q, k, v = _qkv(lq=5, lk=7)
    mask = np.asarray(_padding([6, 7], 7))
    bias = np.random.default_rng(0).normal(size=(1, 2, 5, 7))
    out = attention.dot_product_attention(
        q, k, v, mask=jnp.asarray(mask), causal=causal, bias=jnp.asarray(bias)
    )
    np.testing.assert_allclose(out, _loop_attention(q, k, v, mask, causal, bias), atol=1e-12)


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = _qkv(dtype=jnp.float32, lq=4, lk=4)
    mask = jnp.array([[False] * 4, [False, True, True, True]])  # all padding; left padding with causal
    for fn in (
        attention.dot_product_attention,
        lambda *a, **kw: attention.blockwise_attention(*a, block_q=2, block_k=2, **kw),
    ):

        def loss(q, k, v):
            out = fn(q, k, v, mask=mask, causal=True)
            return jnp.sum(out**2), out

        grads, out = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
        assert np.all(np.isfinite(out))
        assert np.all(np.asarray(out[0]) == 0) and np.all(np.asarray(out[1, 0]) == 0)
        assert all(np.all(np.isfinite(g)) for g in grads)


def test_bfloat16_inputs_softmax_in_float32():
    q, k, v = _qkv(dtype=jnp.float32, lq=16, lk=16)
    reference = attention.dot_product_attention(q, k, v)
    low = jax.jit(attention.dot_product_attention)(
        q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16)
    )
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), reference, atol=0.05)


def test_dense_accepts_other_normalizers(x64):
    q, k, v = _qkv(lq=6, lk=6)
    mask = _padding([4, 6], 6)

    @jax.jit
    def both(q, k, v):
        out = attention.dot_product_attention(q, k, v, mask=mask, normalizer="sparsemax")
        weights = normalizers.sparsemax(jnp.einsum("bqhk,bjhk->bhqj", q, k) / 2.0, mask[:, None, None, :])
        return out, jnp.einsum("bhqj,bjhv->bqhv", weights, v)

    out, expected = both(q, k, v)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    with pytest.raises(ValueError, match="unknown attention normalizer"):
        attention.dot_product_attention(q, k, v, normalizer="nope")


@pytest.mark.parametrize(
    "causal,lq,lk,block_q,block_k",
    [
        (True, 13, 13, 4, 5),
        (
            True,
            6,
            11,
            4,
            3,
        ),  # L not a multiple of the blocks; fewer queries than keys (end-aligned causal mask)
        (False, 13, 13, 5, 4),
    ],
)
def test_blockwise_equals_dense_values_and_gradients(x64, causal, lq, lk, block_q, block_k):
    q, k, v = _qkv(lq=lq, lk=lk)
    mask = _padding([lk - 3, lk], lk)
    slopes = position.alibi_slopes(2).astype(jnp.float64)
    bias = position.alibi_bias(slopes, jnp.arange(lq) + lk - lq, jnp.arange(lk))
    cotangent = jnp.asarray(np.random.default_rng(7).normal(size=(2, lq, 2, 3)))

    def dense(q, k, v):
        return attention.dot_product_attention(q, k, v, mask=mask, causal=causal, bias=bias)

    def blockwise(q, k, v):
        return attention.blockwise_attention(
            q, k, v, mask=mask, causal=causal, alibi_slopes=slopes, block_q=block_q, block_k=block_k
        )

    def value_and_grads(fn):
        loss = lambda *a: jnp.sum(fn(*a) * cotangent)  # noqa: E731
        return jax.jit(lambda *a: (fn(*a), jax.grad(loss, (0, 1, 2))(*a)))(q, k, v)

    out_block, grads_block = value_and_grads(blockwise)
    out_dense, grads_dense = value_and_grads(dense)
    np.testing.assert_allclose(out_block, out_dense, atol=1e-12)
    for g_block, g_dense in zip(grads_block, grads_dense):
        np.testing.assert_allclose(g_block, g_dense, atol=1e-11)


def test_blockwise_is_causal_by_jacobian(x64):
    q, k, v = _qkv(b=1, lq=7, lk=7, h=1, k=2, kv=1)
    jac = jax.jit(
        jax.jacrev(lambda v: attention.blockwise_attention(q, k, v, causal=True, block_q=2, block_k=3))
    )(v)
    jac = np.asarray(jac)[0, :, 0, 0, 0, :, 0, 0]  # d out_i / d v_j
    assert np.all(jac[np.triu_indices(7, 1)] == 0)
    assert np.all(jac[np.tril_indices(7)] != 0)


def _temp_bytes(fn, length):
    x = jnp.ones((1, length, 1, 8), jnp.float32)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), (0, 1, 2)))
    return grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes


def test_blockwise_memory_grows_linearly_dense_quadratically():
    def blockwise(q, k, v):
        return attention.blockwise_attention(q, k, v, causal=True, block_q=64, block_k=64)

    def dense(q, k, v):
        return attention.dot_product_attention(q, k, v, causal=True)

    block_small, block_large = _temp_bytes(blockwise, 256), _temp_bytes(blockwise, 512)
    dense_small, dense_large = _temp_bytes(dense, 256), _temp_bytes(dense, 512)
    assert dense_large / dense_small > 3.5, (dense_small, dense_large)
    assert block_large / block_small < 2.2, (block_small, block_large)
    assert block_large < dense_large / 8


@pytest.mark.parametrize("method", ["associative", "sequential"])
def test_rnn_form_equals_causal_dense(x64, method):
    q, k, v = _qkv(h=1, lq=7, lk=7)
    mask = _padding([5, 7], 7)
    expected = attention.dot_product_attention(q, k, v, mask=mask, causal=True)
    rnn = jax.jit(lambda q, k, v: attention.causal_attention_rnn(q, k, v, mask=mask, method=method))
    np.testing.assert_allclose(rnn(q, k, v), expected, atol=1e-12)


def test_rnn_merge_is_associative_with_empty_identity(x64):
    rng = np.random.default_rng(0)

    def random_state(shift):
        return attention.AttentionRNNState(
            jnp.asarray(rng.normal(size=3) * 5 + shift),
            jnp.asarray(rng.uniform(0.5, 2, size=3)),
            jnp.asarray(rng.normal(size=(3, 2))),
        )

    a, b, c = random_state(0), random_state(30), random_state(-30)
    left = attention.attention_rnn_merge(attention.attention_rnn_merge(a, b), c)
    right = attention.attention_rnn_merge(a, attention.attention_rnn_merge(b, c))
    for x, y in zip(left, right):
        np.testing.assert_allclose(x, y, rtol=1e-12)
    empty = attention.attention_rnn_init((3,), 2, jnp.float64)
    for x, y in zip(attention.attention_rnn_merge(empty, a), a):
        np.testing.assert_allclose(x, y, rtol=1e-14)
    assert np.all(attention.attention_rnn_output(empty) == 0)


def test_decode_step_equals_causal_dense(x64):
    length, max_len = 7, 10
    q, k, v = _qkv(lq=length, lk=length)
    slopes = position.alibi_slopes(2).astype(jnp.float64)
    bias = position.alibi_bias(slopes, jnp.arange(length), jnp.arange(length))
    expected = attention.dot_product_attention(q, k, v, causal=True, bias=bias)
    k_cache = jnp.zeros((2, max_len, 2, 4), jnp.float64).at[:, :length].set(k)
    # Entries past `length` hold garbage that must be ignored.
    v_cache = jnp.full((2, max_len, 2, 3), 1e6, jnp.float64).at[:, :length].set(v)
    step = jax.jit(
        lambda q_t, length: attention.decode_step(q_t, k_cache, v_cache, length, alibi_slopes=slopes)
    )
    for t in range(length):
        out = step(q[:, t], t + 1)
        np.testing.assert_allclose(out, expected[:, t], atol=1e-12)


def test_bad_shapes_raise():
    q, k, v = _qkv(dtype=jnp.float32)
    with pytest.raises(ValueError, match="padding mask"):
        attention.dot_product_attention(q, k, v, mask=jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="rank 4"):
        attention.blockwise_attention(q[0], k, v)
    with pytest.raises(ValueError, match="alibi_slopes"):
        attention.blockwise_attention(q, k, v, alibi_slopes=jnp.ones(3))
