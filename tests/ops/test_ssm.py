"""S4 / S4D kernels against dense discretised systems (numpy matrix powers), the FFT convolutions against
direct sums, S5 against a Python loop, and the memory growth of the chunked S4 kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import hippo, ssm

pytestmark = pytest.mark.usefixtures("full_optimization")  # compiled memory figures / timings: optimised XLA

# Jitted once per shape: much cheaper than running the ops eagerly, op by op, in these small tests.
s4_kernel = jax.jit(ssm.s4_kernel, static_argnums=5, static_argnames="chunk_size")
s4d_kernel = jax.jit(ssm.s4d_kernel, static_argnums=4, static_argnames=("discretization", "chunk_size"))
s4_recurrent_system = jax.jit(ssm.s4_recurrent_system, static_argnums=5)
fft_causal_conv = jax.jit(ssm.fft_causal_conv)
fft_bidirectional_conv = jax.jit(ssm.fft_bidirectional_conv)
s5_ssm = jax.jit(ssm.s5_ssm, static_argnames=("conj_sym", "reverse", "method"))
s5_step = jax.jit(ssm.s5_step, static_argnames="conj_sym")


def _complex_normal(rng, *shape):
    return rng.normal(size=shape) + 1j * rng.normal(size=shape)


def _unfold(x):
    return np.concatenate([x, np.conj(x)], axis=-1)


def _random_dplr(rng, h=3, n2=4, directions=2):
    lam = -np.exp(rng.normal(size=(h, n2))) + 3j * rng.normal(size=(h, n2))
    p = 0.5 * _complex_normal(rng, h, n2)
    b = _complex_normal(rng, h, n2)
    c_tilde = _complex_normal(rng, directions, h, n2)
    step = np.exp(rng.uniform(np.log(1e-2), np.log(0.5), size=h))
    return lam, p, b, c_tilde, step


def _dense_bilinear(a, b, step):
    eye = np.eye(a.shape[0])
    lhs = eye - step / 2 * a
    return np.linalg.solve(lhs, eye + step / 2 * a), step * np.linalg.solve(lhs, b)


def _dense_kernel(c_bar, a_bar, b_bar, length):
    out, x = [], b_bar
    for _ in range(length):
        out.append(c_bar @ x)
        x = a_bar @ x
    return np.asarray(out)


def _s4_dense_reference(lam, p, b, c_tilde, step, length):
    """K_k = C_bar A_bar^k B_bar with C_bar = C~ (I - A_bar^L)^{-1}, from the unfolded (N = 2 N2) system."""
    directions, h, n2 = c_tilde.shape
    kernel = np.zeros((directions, h, length), complex)
    for j in range(h):
        lf, pf, bf = _unfold(lam[j]), _unfold(p[j]), _unfold(b[j])
        a_bar, b_bar = _dense_bilinear(np.diag(lf) - np.outer(pf, pf.conj()), bf, step[j])
        lhs = np.eye(2 * n2) - np.linalg.matrix_power(a_bar, length)
        for d in range(directions):
            c_bar = np.linalg.solve(lhs.T, _unfold(c_tilde[d, j]))
            kernel[d, j] = _dense_kernel(c_bar, a_bar, b_bar, length)
    return kernel


@pytest.mark.parametrize("length,chunk_size", [(16, None), (16, 3), (15, 4), (1, None)])
def test_s4_kernel_equals_the_dense_system(x64, length, chunk_size):
    rng = np.random.default_rng(0)
    params = _random_dplr(rng)
    expected = _s4_dense_reference(*params, length)
    assert np.abs(expected.imag).max() < 1e-12  # conjugate pairs make the unfolded system real
    kernel = s4_kernel(*params, length, chunk_size=chunk_size)
    assert kernel.shape == (2, 3, length)
    np.testing.assert_allclose(np.asarray(kernel), expected.real, atol=1e-12)


def test_s4_kernel_from_the_hippo_init_matches_the_real_legs_system(x64):
    """The whole pipeline: LegS -> NPLR -> conjugate halving -> kernel, against the real LegS matrix."""
    rng = np.random.default_rng(1)
    n, length, step = 8, 32, 0.1
    a, b = hippo.legs(n)
    half = hippo.conjugate_half(hippo.legs_nplr(n))
    c_tilde_real = rng.normal(size=n)  # C~ in the original (real) basis
    c_tilde = c_tilde_real @ half.V  # row vector: y = C x = (C V) x~
    kernel = s4_kernel(half.Lambda, half.P, half.B, c_tilde[None], np.array([step]), length)
    a_bar, b_bar = _dense_bilinear(a, b, step)
    c_bar = np.linalg.solve((np.eye(n) - np.linalg.matrix_power(a_bar, length)).T, c_tilde_real)
    np.testing.assert_allclose(np.asarray(kernel)[0], _dense_kernel(c_bar, a_bar, b_bar, length), atol=1e-12)


def test_s4_recurrent_system_reproduces_the_convolution(x64):
    rng = np.random.default_rng(2)
    lam, p, b, c_tilde, step = _random_dplr(rng, directions=1)
    length = 12
    kernel = np.asarray(s4_kernel(lam, p, b, c_tilde[0], step, length))
    system = s4_recurrent_system(lam, p, b, c_tilde[0], step, length)
    a_bar, b_bar, c_bar = (np.asarray(v) for v in system)
    assert a_bar.shape == (3, 8, 8) and b_bar.shape == (3, 8) and c_bar.shape == (3, 8)
    u = rng.normal(size=(length, 3))
    x = np.zeros((3, 8), complex)
    outputs = []
    for t in range(length):
        x = np.einsum("hij,hj->hi", a_bar, x) + b_bar * u[t][:, None]
        outputs.append(np.einsum("hn,hn->h", c_bar, x))
    outputs = np.asarray(outputs)
    assert np.abs(outputs.imag).max() < 1e-12
    direct = np.stack([[kernel[:, : t + 1][j] @ u[t::-1, j] for j in range(3)] for t in range(length)])
    np.testing.assert_allclose(outputs.real, direct, atol=1e-11)


def test_s4_recover_c_bar_inverts_the_definition(x64):
    rng = np.random.default_rng(3)
    a_power = 0.3 * rng.normal(size=(2, 5, 5))
    c_bar = _complex_normal(rng, 2, 5)
    c_tilde = np.einsum("hi,hij->hj", c_bar, np.eye(5) - a_power)
    np.testing.assert_allclose(np.asarray(ssm.s4_recover_c_bar(c_tilde, a_power)), c_bar, atol=1e-12)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_s4d_kernel_equals_the_dense_system(x64, discretization, chunk_size):
    rng = np.random.default_rng(4)
    h, n2, length = 3, 4, 16
    lam = -np.exp(rng.normal(size=(h, n2))) + 3j * rng.normal(size=(h, n2))
    b = _complex_normal(rng, h, n2)
    c = _complex_normal(rng, 2, h, n2)
    step = np.exp(rng.uniform(np.log(1e-2), np.log(0.5), size=h))
    kernel = np.asarray(s4d_kernel(lam, b, c, step, length, discretization=discretization,
                                       chunk_size=chunk_size))
    for j in range(h):
        a = np.diag(_unfold(lam[j]))
        if discretization == "zoh":
            a_bar = np.diag(np.exp(step[j] * np.diag(a)))
            b_bar = (np.diag(a_bar) - 1) / np.diag(a) * _unfold(b[j])
        else:
            a_bar, b_bar = _dense_bilinear(a, _unfold(b[j]), step[j])
        for d in range(2):
            expected = _dense_kernel(_unfold(c[d, j]), a_bar, b_bar, length)
            assert np.abs(expected.imag).max() < 1e-12
            np.testing.assert_allclose(kernel[d, j], expected.real, atol=1e-12)


def _direct_causal(u, k):
    length = u.shape[1]
    y = np.zeros_like(u)
    for t in range(length):
        for s in range(t + 1):
            if t - s < k.shape[1]:
                y[:, t] += k[:, t - s] * u[:, s]
    return y


@pytest.mark.parametrize("kernel_length", [10, 4, 25])
def test_fft_causal_conv_is_the_direct_causal_convolution(x64, kernel_length):
    rng = np.random.default_rng(5)
    u = rng.normal(size=(2, 10, 3))
    k = rng.normal(size=(3, kernel_length))
    y = np.asarray(fft_causal_conv(jnp.asarray(u), jnp.asarray(k)))
    np.testing.assert_allclose(y, _direct_causal(u, k), atol=1e-12)


def test_fft_causal_conv_equals_the_recurrence(x64):
    """The kernel of a diagonal SSM convolved by FFT equals running the SSM step by step."""
    rng = np.random.default_rng(6)
    h, n2, length = 2, 3, 20
    lam = -np.exp(rng.normal(size=(h, n2))) + 2j * rng.normal(size=(h, n2))
    b, c = _complex_normal(rng, h, n2), _complex_normal(rng, h, n2)
    step = np.full(h, 0.2)
    kernel = s4d_kernel(lam, b, c, step, length)
    u = rng.normal(size=(1, length, h))
    y = np.asarray(fft_causal_conv(jnp.asarray(u), kernel))[0]
    lam_bar, scale = np.exp(step[:, None] * lam), np.expm1(step[:, None] * lam) / lam
    x = np.zeros((h, n2), complex)
    for t in range(length):
        x = lam_bar * x + scale * b * u[0, t][:, None]
        np.testing.assert_allclose(y[t], 2 * np.sum(c * x, axis=-1).real, atol=1e-12)


@pytest.mark.parametrize("kernel_length", [8, 5])
def test_fft_bidirectional_conv_is_the_explicit_sum(x64, kernel_length):
    rng = np.random.default_rng(7)
    u = rng.normal(size=(2, 8, 3))
    k_fwd, k_bwd = rng.normal(size=(3, kernel_length)), rng.normal(size=(3, kernel_length))
    y = np.asarray(fft_bidirectional_conv(jnp.asarray(u), jnp.asarray(k_fwd), jnp.asarray(k_bwd)))
    expected = np.zeros_like(u)
    for t in range(8):
        for s in range(8):
            if s <= t and t - s < kernel_length:
                expected[:, t] += k_fwd[:, t - s] * u[:, s]
            elif s > t and s - t - 1 < kernel_length:
                expected[:, t] += k_bwd[:, s - t - 1] * u[:, s]  # lag 0 only in the forward kernel
    np.testing.assert_allclose(y, expected, atol=1e-12)
    # the same as forward conv + flipped, shifted backward conv
    backward = np.asarray(fft_causal_conv(jnp.asarray(u[:, ::-1]), jnp.asarray(k_bwd)))
    shifted = np.concatenate([np.zeros_like(backward[:, :1]), backward[:, :-1]], axis=1)
    forward = np.asarray(fft_causal_conv(jnp.asarray(u), jnp.asarray(k_fwd)))
    np.testing.assert_allclose(y, forward + shifted[:, ::-1], atol=1e-12)


def test_conv_shape_errors():
    with pytest.raises(ValueError, match=r"\(H, L_k\)"):
        fft_causal_conv(jnp.ones((1, 4, 3)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\(B, L, H\)"):
        fft_causal_conv(jnp.ones((4, 3)), jnp.ones((3, 4)))


def test_s5_hippo_init_is_block_diagonal_normal_legs(x64):
    p, blocks = 16, 4
    lam, v = ssm.s5_hippo_init(p, blocks)
    assert lam.shape == (8,) and v.shape == (16, 8)
    np.testing.assert_allclose(v.conj().T @ v, np.eye(8), atol=1e-12)
    block = p // blocks
    a, _ = hippo.legs(block)
    q = np.sqrt(np.arange(block) + 0.5)
    normal = a + np.outer(q, q)  # the normal part S - I/2
    v_full = np.concatenate([v, v.conj()], axis=1)
    rebuilt = v_full @ np.diag(_unfold(lam)) @ v_full.conj().T
    np.testing.assert_allclose(rebuilt, np.kron(np.eye(blocks), normal), atol=1e-12)
    lam_full, v_full = ssm.s5_hippo_init(p, blocks, conj_sym=False)
    assert lam_full.shape == (16,) and v_full.shape == (16, 16)
    with pytest.raises(ValueError, match="even block size"):
        ssm.s5_hippo_init(12, 4)
    with pytest.raises(ValueError, match="multiple of blocks"):
        ssm.s5_hippo_init(10, 4)


def test_s5_initialisers_have_the_documented_scales():
    _, v = ssm.s5_hippo_init(64, 2)
    key = jax.random.key(0, impl="rbg")  # compiles faster than threefry on CPU
    b = ssm.s5_b_init(key, 256, v)
    assert b.shape == (32, 256) and jnp.iscomplexobj(b)
    # V^* has orthonormal rows, so each entry of B~ has variance about the same 1/P as B's entries.
    assert 0.7 / 64 < float(jnp.mean(jnp.abs(b) ** 2)) < 1.3 / 64
    scales = {"trunc_standard_normal": 2 / 64, "lecun_normal": 2 / (64 * 256), "complex_normal": 1.0}
    for kind, second_moment in scales.items():
        c = ssm.s5_c_init(key, kind, 256, v)
        assert c.shape == (256, 32)
        assert 0.8 * second_moment < float(jnp.mean(jnp.abs(c) ** 2)) < 1.2 * second_moment, kind
    with pytest.raises(ValueError, match="C initialisation"):
        ssm.s5_c_init(key, "glorot", 4, v)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
@pytest.mark.parametrize("reverse", [False, True])
def test_s5_ssm_equals_a_python_loop(x64, method, reverse):
    rng = np.random.default_rng(8)
    p2, h, length = 4, 3, 9
    lam = -np.exp(rng.normal(size=p2)) + 2j * rng.normal(size=p2)
    b_tilde, c_tilde = _complex_normal(rng, p2, h), _complex_normal(rng, h, p2)
    log_step = rng.uniform(np.log(1e-2), np.log(0.5), size=p2)
    u = rng.normal(size=(2, length, h))
    lam_bar, b_bar = ssm.s5_discretize(jnp.asarray(lam), jnp.asarray(b_tilde), jnp.asarray(log_step), method)
    y = np.asarray(s5_ssm(lam_bar, b_bar, jnp.asarray(c_tilde), jnp.asarray(u), reverse=reverse,
                              method="sequential"))
    step = np.exp(log_step)
    if method == "zoh":
        lam_ref, b_ref = np.exp(step * lam), (np.expm1(step * lam) / lam)[:, None] * b_tilde
    else:
        lam_ref = (1 + step * lam / 2) / (1 - step * lam / 2)
        b_ref = (step / (1 - step * lam / 2))[:, None] * b_tilde
    x = np.zeros((2, p2), complex)
    order = range(length - 1, -1, -1) if reverse else range(length)
    expected = np.zeros_like(u)
    for t in order:
        x = lam_ref * x + u[:, t] @ b_ref.T
        expected[:, t] = 2 * (x @ c_tilde.T).real
    np.testing.assert_allclose(y, expected, atol=1e-12)
    if not reverse:  # the decoding step reproduces the parallel scan
        state = jnp.zeros((2, p2), complex)
        for t in range(length):
            state, y_t = s5_step(state, jnp.asarray(u[:, t]), lam_bar, b_bar, jnp.asarray(c_tilde))
            np.testing.assert_allclose(np.asarray(y_t), expected[:, t], atol=1e-12)


def test_s4_kernel_memory_grows_like_h_l_not_h_n_l():
    """Chunked over frequencies, the kernel's temporaries grow by O(H L) (a few (H, L) arrays) when L doubles,
    not by O(H N L): measured with XLA's compiled memory analysis, for the kernel and for its gradient."""
    h, n2, chunk = 4, 64, 16
    lam = jnp.full((h, n2), -0.5 + 1j, jnp.complex64)
    vec = jnp.ones((h, n2), jnp.complex64)
    step = jnp.full((h,), 0.01, jnp.float32)

    def temp_bytes(length, chunk_size, grad):
        def kernel(c_re):
            c_tilde = c_re.astype(jnp.complex64)
            return ssm.s4_kernel(lam, vec, vec, c_tilde, step, length, chunk_size=chunk_size)

        fn = jax.grad(lambda c: jnp.sum(kernel(c) ** 2)) if grad else kernel
        compiled = jax.jit(fn).lower(jnp.ones((h, n2), jnp.float32)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    length = 256
    h_l_budget = 64 * h * length  # 8 complex64 (H, L) arrays' worth per doubling
    for grad in (False, True):
        growth = temp_bytes(2 * length, chunk, grad) - temp_bytes(length, chunk, grad)
        assert growth <= h_l_budget, (grad, growth)
    # The test can fail: without chunking the temporaries hold at least one complex64 (H, N2, L) array.
    assert temp_bytes(2 * length, 10**9, False) >= 8 * h * n2 * (2 * length) > 8 * h_l_budget
