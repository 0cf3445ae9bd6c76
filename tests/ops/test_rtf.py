"""RTF: the FFT kernel against the companion system's impulse response, the convolution against the
companion recurrence (exact in float64), the fixed-truncation pitfall, aliasing, and the initialisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import rtf, ssm

# Jitted once per shape: much cheaper than running the ops eagerly, op by op.
rtf_kernel = jax.jit(rtf.rtf_kernel, static_argnums=2)
rtf_output_coefficients = jax.jit(rtf.rtf_output_coefficients, static_argnums=2)
rtf_step = jax.jit(rtf.rtf_step)
fft_causal_conv = jax.jit(ssm.fft_causal_conv)


def _stable_coefficients(rng, h, n):
    a = rng.uniform(-1.0 / n, 1.0 / n, size=(h, n))  # sum |a_i| < 1: all poles inside the unit disk
    b = rng.normal(size=(h, n))
    return a, b


def _companion_impulse_response(a, c, length):
    """c A^k e_1 for k < length, with numpy matrix powers."""
    n = a.shape[0]
    companion = np.eye(n, k=-1)
    companion[0] = -a
    return np.asarray([c @ np.linalg.matrix_power(companion, k)[:, 0] for k in range(length)])


def test_kernel_is_the_impulse_response_of_the_companion_system(x64):
    rng = np.random.default_rng(0)
    h, n, trunc_len = 3, 6, 32
    a, b = _stable_coefficients(rng, h, n)
    kernel = np.asarray(rtf_kernel(jnp.asarray(a), jnp.asarray(b), trunc_len))
    c = np.asarray(rtf_output_coefficients(jnp.asarray(a), jnp.asarray(b), trunc_len))
    for j in range(h):
        companion = np.eye(n, k=-1)
        companion[0] = -a[j]
        # c solves c (I - A^T) = b
        np.testing.assert_allclose(c[j] @ (np.eye(n) - np.linalg.matrix_power(companion, trunc_len)), b[j],
                                   atol=1e-12)
        np.testing.assert_allclose(kernel[j], _companion_impulse_response(a[j], c[j], trunc_len), atol=1e-12)


@pytest.mark.parametrize("length", [20, 32])
def test_convolution_equals_the_companion_recurrence_exactly(x64, length):
    rng = np.random.default_rng(1)
    h, n, trunc_len = 3, 6, 32
    a, b = _stable_coefficients(rng, h, n)
    u = rng.normal(size=(2, length, h))
    kernel = rtf_kernel(jnp.asarray(a), jnp.asarray(b), trunc_len)[:, :length]  # cut, never recomputed
    y_conv = np.asarray(fft_causal_conv(jnp.asarray(u), kernel))
    c = rtf_output_coefficients(jnp.asarray(a), jnp.asarray(b), trunc_len)
    state = jnp.zeros((2, h, n))
    outputs = []
    for t in range(length):
        state, y_t = rtf_step(state, jnp.asarray(u[:, t]), jnp.asarray(a), c)
        outputs.append(y_t)
    np.testing.assert_allclose(np.stack(outputs, axis=1), y_conv, atol=1e-10)
    # and the shift register does what it says: a direct numpy loop of the same recurrence
    x = np.zeros((2, h, n))
    for t in range(length):
        head = u[:, t] - np.sum(a * x, axis=-1)
        x = np.concatenate([head[..., None], x[..., :-1]], axis=-1)
    np.testing.assert_allclose(np.asarray(state), x, atol=1e-12)


def test_pitfall_the_kernel_depends_on_the_truncation_length(x64):
    """docs/methods.md section 4, pitfall 1: computing the kernel with FFT size l (the input length) instead of the
    training trunc_len T gives a different kernel; only the length-T kernel cut to l matches the
    recurrence."""
    rng = np.random.default_rng(2)
    h, n, trunc_len, length = 2, 6, 32, 20
    a, b = _stable_coefficients(rng, h, n)
    at_trunc_len = np.asarray(rtf_kernel(jnp.asarray(a), jnp.asarray(b), trunc_len))[:, :length]
    at_length = np.asarray(rtf_kernel(jnp.asarray(a), jnp.asarray(b), length))
    assert np.abs(at_trunc_len - at_length).max() > 1e-3  # docs/methods.md section 4 quotes 0.016
    c = np.asarray(rtf_output_coefficients(jnp.asarray(a), jnp.asarray(b), trunc_len))
    for j in range(h):
        expected = _companion_impulse_response(a[j], c[j], length)
        np.testing.assert_allclose(at_trunc_len[j], expected, atol=1e-12)


def test_pitfall_the_official_index_convention_aliases_into_lag_zero(x64):
    """docs/methods.md section 4, pitfall 2: with b at indices 1..N (the official layout, a strictly proper system whose
    true lag-0 response is 0) the length-T inverse DFT returns the circularly aliased response
    sum_m r[k + m T], so index 0 holds r[T] + r[2T] + ... instead of 0. With b at indices 0..N-1 the numerator
    has degree N - 1 and `rtf_kernel` is the exact truncated kernel of the recurrent form (tests above)."""
    rng = np.random.default_rng(3)
    n, trunc_len = 4, 16
    a, b = _stable_coefficients(rng, 1, n)
    a = 2.5 * a  # slower decay, so that the aliased terms are clearly visible
    monic = np.concatenate([[1.0], a[0]])
    shifted = np.concatenate([[0.0], b[0]])
    aliased = np.fft.irfft(np.fft.rfft(shifted, trunc_len) / np.fft.rfft(monic, trunc_len), trunc_len)
    # the infinite impulse response of shifted(z) / monic(z), by long division
    response = np.zeros(8 * trunc_len)
    for t in range(response.size):
        numerator = shifted[t] if t <= n else 0.0
        response[t] = numerator - sum(monic[i] * response[t - i] for i in range(1, min(t, n) + 1))
    assert response[0] == 0.0 and abs(aliased[0]) > 1e-6
    np.testing.assert_allclose(aliased, response.reshape(8, trunc_len).sum(axis=0), atol=1e-12)


def test_trunc_len_must_exceed_the_state_size():
    a = jnp.zeros((2, 8))
    with pytest.raises(ValueError, match="trunc_len must be an int larger than the state size N=8"):
        rtf_kernel(a, a, 8)
    with pytest.raises(ValueError, match="trunc_len"):
        rtf_output_coefficients(a, a, 4)
    with pytest.raises(ValueError, match="same state size"):
        rtf_kernel(a, jnp.zeros((2, 7)), 16)


def test_initialisers():
    key = jax.random.key(0, impl="rbg")
    n = 16
    assert not np.any(np.asarray(rtf.rtf_init(key, (4, n), "zeros")))
    montel = np.asarray(rtf.rtf_init(key, (64, n), "montel"))
    assert np.all(np.abs(montel) <= 1.0 / n) and np.all(np.sum(np.abs(montel), axis=-1) < 1)
    for row in montel[:8]:  # sum |a_i| < 1 puts every root of z^N + a_1 z^(N-1) + ... inside the unit disk
        assert np.abs(np.roots(np.concatenate([[1.0], row]))).max() < 1
    xavier = np.asarray(rtf.rtf_init(key, (64, n), "xavier"))
    assert np.all(np.abs(xavier) <= 1.0 / np.sqrt(n)) and np.abs(xavier).max() > 1.0 / n
    with pytest.raises(ValueError, match="unknown initialisation"):
        rtf.rtf_init(key, (2, 3), "glorot")


def test_zero_denominator_is_a_rolling_buffer(x64):
    """a = 0: the kernel is b itself (an FIR filter over the last N inputs) and c = b."""
    b = jnp.asarray(np.random.default_rng(4).normal(size=(2, 5)))
    a = jnp.zeros((2, 5))
    kernel = np.asarray(rtf_kernel(a, b, 12))
    np.testing.assert_allclose(kernel[:, :5], np.asarray(b), atol=1e-14)
    np.testing.assert_allclose(kernel[:, 5:], 0.0, atol=1e-14)
    np.testing.assert_allclose(np.asarray(rtf_output_coefficients(a, b, 12)), np.asarray(b), atol=1e-14)
