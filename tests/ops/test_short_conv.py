"""ops/short_conv.py: the causal depthwise convolution and its decoding step against a float64 Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops.short_conv import causal_conv1d, conv_cache_after, conv_cache_init, conv_step

# XLA's optimisation passes cost more than running these tiny programs (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compilation")


def reference_conv(x, w, b):
    """y[t, d] = b[d] + sum_k w[k, d] x[t - (K-1) + k, d], zero before t = 0: a loop over b, t, d, k."""
    batch, length, channels = x.shape
    width = w.shape[0]
    y = np.zeros(x.shape)
    for i in range(batch):
        for t in range(length):
            for d in range(channels):
                total = 0.0 if b is None else b[d]
                for k in range(width):
                    s = t - (width - 1) + k
                    if s >= 0:
                        total += w[k, d] * x[i, s, d]
                y[i, t, d] = total
    return y


@pytest.mark.parametrize("width,with_bias", [(1, True), (4, True), (4, False), (9, True)])
def test_causal_conv1d_equals_python_loop_and_steps(x64, width, with_bias):
    rng = np.random.default_rng(width)
    x, w, b = rng.normal(size=(2, 7, 3)), rng.normal(size=(width, 3)), rng.normal(size=3)
    b = b if with_bias else None
    expected = reference_conv(x, w, b)
    y = causal_conv1d(jnp.asarray(x), jnp.asarray(w), None if b is None else jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)

    cache = conv_cache_init(2, width, 3, jnp.float64)
    for t in range(7):
        cache, y_t = conv_step(cache, jnp.asarray(x[:, t]), jnp.asarray(w), None if b is None else jnp.asarray(b))
        np.testing.assert_allclose(np.asarray(y_t), expected[:, t], rtol=1e-12, atol=1e-12)
        # The cache after t+1 inputs is what conv_cache_after gives for the prefix (raw inputs, zero-padded).
        np.testing.assert_array_equal(np.asarray(cache), np.asarray(conv_cache_after(jnp.asarray(x[:, :t + 1]),
                                                                                     width)))


def test_causal_conv1d_is_causal():
    x = jax.random.normal(jax.random.key(0), (1, 10, 2))
    w = jax.random.normal(jax.random.key(1), (4, 2))
    changed = x.at[:, 6:].add(1.0)
    np.testing.assert_array_equal(causal_conv1d(x, w)[:, :6], causal_conv1d(changed, w)[:, :6])
    assert not np.allclose(causal_conv1d(x, w)[:, 6], causal_conv1d(changed, w)[:, 6])


def test_causal_conv1d_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"expected x \(B, L, D\) and w \(K, D\)"):
        causal_conv1d(jnp.zeros((1, 4, 3)), jnp.zeros((4, 2)))
