"""HiPPO matrices against what they promise (online function approximation), the NPLR split of LegS, and
the discretisations against closed forms. float64 references throughout (x64 fixture)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from numpy.polynomial import laguerre

from ops import hippo

# Jitted once per shape: much cheaper than running the ops eagerly, op by op.
discretize = jax.jit(hippo.discretize, static_argnums=3)
discretize_diagonal = jax.jit(hippo.discretize_diagonal, static_argnums=2)
legs_online = jax.jit(hippo.legs_online, static_argnums=3)


def _smooth(t):
    return np.sin(3 * t) + 0.5 * np.cos(7 * t) + 0.3 * t


def _run(a, b, u_samples, step, method):
    """Runs x_k = A_bar x_{k-1} + B_bar u_k in numpy from discretisation matrices computed by the op."""
    a_bar, b_bar = (np.asarray(v) for v in discretize(jnp.asarray(a), jnp.asarray(b), step, method))
    x = np.zeros(a.shape[0], dtype=a_bar.dtype)
    for u_k in u_samples:
        x = a_bar @ x + b_bar * u_k
    return x


@pytest.mark.parametrize("scaling", hippo.LEGT_SCALINGS)
def test_legt_reconstructs_the_last_window(x64, scaling):
    n, window, step, length = 24, 1.0, 1e-3, 3000
    a, b = hippo.legt(n, window, scaling)
    midpoints = (np.arange(length) + 0.5) * step
    x = _run(a, b, _smooth(midpoints), step, "bilinear")
    c = hippo.legt_scale(n, scaling) * x  # back to orthonormal coefficients
    s = np.linspace(-1, 1, 201)
    end = length * step
    error = np.abs(hippo.legendre_basis(n, s) @ c - _smooth(end - window + (s + 1) * window / 2))
    assert error.max() < 1e-4  # docs/methods.md section 2 [V]: 2e-4 at N = 24


def test_legt_scalings_have_the_documented_forms():
    n, w = 10, 2.0
    q = np.arange(n)
    a_lmu, b_lmu = hippo.legt(n, w, "lmu")
    row, col = np.meshgrid(q, q, indexing="ij")
    expected = -(2 * row + 1) / w * np.where(col < row, 1.0, (-1.0) ** (row - col))
    np.testing.assert_allclose(a_lmu, expected, rtol=1e-12)
    np.testing.assert_allclose(b_lmu, (2 * q + 1) / w, rtol=1e-12)
    # "paper" and "orthonormal": the same A (a constant rescaling of c cancels in A), written out entry by entry
    # from docs/methods.md section 2; B_n = sqrt(2n + 1) / w and sqrt(2 (2n + 1)) / w.
    expected = np.array([[-np.sqrt((2 * i + 1) * (2 * j + 1)) / w * (1.0 if j < i else (-1.0) ** (i - j))
                          for j in range(n)] for i in range(n)])
    for scaling, b_expected in (("paper", np.sqrt(2 * q + 1) / w), ("orthonormal", np.sqrt(2 * (2 * q + 1)) / w)):
        a, b = hippo.legt(n, w, scaling)
        np.testing.assert_allclose(a, expected, rtol=1e-12, err_msg=scaling)
        np.testing.assert_allclose(b, b_expected, rtol=1e-12, err_msg=scaling)


def test_legt_with_the_two_cases_swapped_fails(x64):
    """The test above can fail: swapping the k < n and k >= n cases of A ruins the reconstruction."""
    n, step, length = 24, 1e-3, 3000
    _, b = hippo.legt(n)
    q = np.arange(n)
    r = np.sqrt(2 * q + 1)
    row, col = np.meshgrid(q, q, indexing="ij")
    swapped = -(r[:, None] * r[None, :]) * np.where(col >= row, 1.0, (-1.0) ** (row - col))
    x = _run(swapped, b, _smooth((np.arange(length) + 0.5) * step), step, "bilinear")
    s = np.linspace(-1, 1, 201)
    error = np.abs(hippo.legendre_basis(n, s) @ x - _smooth(length * step - 1 + (s + 1) / 2))
    assert error.max() > 0.1


def _legs_reconstruction_error(scaling, rule, length, n=24):
    a, b = hippo.legs(n, scaling)
    s = np.linspace(-1, 1, 401)
    signal = lambda t: np.sin(3 * t) + 0.5 * np.cos(7 * t)
    u = signal((np.arange(length) + 0.5) / length)  # horizon [0, 1]
    states = np.asarray(legs_online(jnp.asarray(u), jnp.asarray(a), jnp.asarray(b), rule))
    c = hippo.legs_scale(n, scaling) * states[-1]
    error = np.abs(hippo.legendre_basis(n, s) @ c - signal((s + 1) / 2))
    return error[20:-20].max()  # interior


def test_legs_online_reconstructs_the_whole_history(x64):
    trapezoid = _legs_reconstruction_error("paper", "trapezoid", 1000)
    assert trapezoid < 1e-4
    assert _legs_reconstruction_error("orthonormal", "trapezoid", 4000) < trapezoid / 8  # second order
    # The blog's 1/k input weight is first order and much worse (docs/methods.md section 2 quotes ~6e-4 on its signal).
    assert _legs_reconstruction_error("orthonormal", "blog", 1000) > 10 * trapezoid


@pytest.mark.parametrize("rule", hippo.LEGS_ONLINE_RULES)
def test_legs_online_keeps_a_constant_at_its_projection(x64, rule):
    a, b = hippo.legs(8, "orthonormal")
    states = np.asarray(legs_online(jnp.full((5,), 2.0), jnp.asarray(a), jnp.asarray(b), rule))
    expected = np.zeros(8)
    expected[0] = 2.0 * np.sqrt(2.0)  # int_{-1}^{1} 2 g_0(s) ds with g_0 = 1/sqrt(2)
    np.testing.assert_allclose(states[0], expected, atol=1e-12)
    if rule == "trapezoid":
        np.testing.assert_allclose(states, np.broadcast_to(expected, states.shape), atol=1e-12)
    else:  # the inconsistency of the 1/k weight: the constant drifts after the first step
        assert np.abs(states[1] - expected).max() > 0.1


def test_legs_structure_and_eigenvalues():
    n = 16
    a, b = hippo.legs(n)
    assert np.allclose(a, np.tril(a))
    np.testing.assert_allclose(np.sort(np.linalg.eigvals(a).real), -np.arange(n, 0, -1.0), atol=1e-9)
    np.testing.assert_allclose(b, np.sqrt(2 * np.arange(n) + 1))
    np.testing.assert_allclose(hippo.legs(n, "orthonormal")[1], np.sqrt(2 * (2 * np.arange(n) + 1)))


def test_lagt_state_is_the_laguerre_projection(x64):
    n, step, length = 12, 2e-3, 4000
    a, b = hippo.lagt(n)
    x = _run(a, b, _smooth((np.arange(length) + 0.5) * step), step, "bilinear")
    end = length * step
    lag = np.linspace(0, end, 200001)
    basis = np.stack([laguerre.lagval(lag, np.eye(n)[k]) for k in range(n)], axis=1)
    weights = (_smooth(end - lag) * np.exp(-lag))[:, None] * basis
    projection = np.trapezoid(weights, lag, axis=0)
    np.testing.assert_allclose(x, projection, atol=1e-5)


def test_fout_tracks_the_fourier_projection_and_converges(x64):
    step, length = 1e-3, 1500
    s = np.linspace(0, 1, 20001)
    end = length * step
    samples = _smooth((np.arange(length) + 0.5) * step)
    errors = {}
    for n in (25, 65):
        a, b = hippo.fout(n)
        projection = np.trapezoid(_smooth(end - 1 + s)[:, None] * hippo.fourier_basis(n, s), s, axis=0)
        x = _run(a, b, samples, step, "bilinear")
        errors[n] = np.linalg.norm(x - projection) / np.linalg.norm(projection)
        if n == 25:
            # Without the endpoint-average correction (A = D - e e^T, B = e) the state does not track it.
            e = b / 2
            plain = _run(a + np.outer(e, e), e, samples, step, "bilinear")
            assert np.linalg.norm(plain - projection) / np.linalg.norm(projection) > 0.2
    assert errors[25] < 0.03
    assert errors[65] < errors[25] / 2


def test_legs_nplr_normal_part_is_skew_and_reconstructs_a(x64):
    for n in (8, 16, 64):
        a, b = hippo.legs(n)
        p = np.sqrt(np.arange(n) + 0.5)
        s = a + np.outer(p, p) + 0.5 * np.eye(n)
        np.testing.assert_allclose(s, -s.T, atol=1e-12)
        nplr = hippo.legs_nplr(n)
        v = nplr.V
        np.testing.assert_allclose(v.conj().T @ v, np.eye(n), atol=1e-12)
        np.testing.assert_allclose(nplr.Lambda.real, -0.5, atol=1e-12)
        rebuilt = v @ (np.diag(nplr.Lambda) - np.outer(nplr.P, nplr.P.conj())) @ v.conj().T
        np.testing.assert_allclose(rebuilt, a, atol=1e-11 * n)
        np.testing.assert_allclose(v @ nplr.B, b, atol=1e-12 * n)
        # Conjugate halving keeps N/2 eigenvalues; the partners rebuild the same real A and B.
        half = hippo.conjugate_half(nplr)
        assert half.Lambda.shape == (n // 2,) and np.all(half.Lambda.imag > 0)
        unfold = lambda x: np.asarray(hippo.unfold_conjugate_pairs(jnp.asarray(x)))
        v_full = np.concatenate([half.V, half.V.conj()], axis=1)
        p_full, lam_full = unfold(half.P), unfold(half.Lambda)
        rebuilt = v_full @ (np.diag(lam_full) - np.outer(p_full, p_full.conj())) @ v_full.conj().T
        np.testing.assert_allclose(rebuilt, a, atol=1e-11 * n)
        np.testing.assert_allclose(v_full @ unfold(half.B), b, atol=1e-12 * n)


def test_conjugate_half_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even state size"):
        hippo.conjugate_half(hippo.legs_nplr(5))


@pytest.mark.parametrize("method", hippo.DISCRETIZATIONS)
def test_discretizations_match_their_formulas(x64, method):
    rng = np.random.default_rng(0)
    n, eps = 5, 0.3
    a = rng.normal(size=(n, n)) - 2 * np.eye(n)
    b = rng.normal(size=(n, 2))
    a_bar, b_bar = (np.asarray(v) for v in discretize(jnp.asarray(a), jnp.asarray(b), eps, method))
    eye = np.eye(n)
    if method == "forward_euler":
        expected = eye + eps * a, eps * b
    elif method == "backward_euler":
        inv = np.linalg.inv(eye - eps * a)
        expected = inv, eps * inv @ b
    elif method == "bilinear":
        inv = np.linalg.inv(eye - eps * a / 2)
        expected = inv @ (eye + eps * a / 2), eps * inv @ b
    else:
        expm = scipy.linalg.expm(eps * a)
        expected = expm, np.linalg.solve(a, (expm - eye) @ b)
    np.testing.assert_allclose(a_bar, expected[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b_bar, expected[1], rtol=1e-10, atol=1e-12)
    # The diagonal version agrees with dense 1x1 systems, state by state, with per-state step sizes.
    lam = -np.exp(rng.normal(size=n)) + 1j * rng.normal(size=n)
    steps = np.exp(rng.normal(size=n)) * 0.1
    diagonal = discretize_diagonal(jnp.asarray(lam), jnp.asarray(steps), method)
    lam_bar, scale = (np.asarray(v) for v in diagonal)
    for j in range(n):
        dense_a, dense_b = discretize(jnp.asarray([[lam[j]]]), jnp.asarray([1 + 0j]), steps[j], method)
        np.testing.assert_allclose(lam_bar[j], np.asarray(dense_a)[0, 0], rtol=1e-10)
        np.testing.assert_allclose(scale[j], np.asarray(dense_b)[0], rtol=1e-10)


def test_zoh_handles_a_singular_matrix_and_batches(x64):
    eps = 0.5
    a = np.array([[0.0, 1.0], [0.0, 0.0]])  # nilpotent: exp(eA) = I + eA, int_0^e exp(sA) ds B exactly
    b = np.array([0.0, 1.0])
    # A batch of (A, e) and (2A, e/2): the same eA, so the same A_bar; B_bar scales with 1/2 in the second.
    a_bar, b_bar = discretize(jnp.asarray(np.stack([a, 2 * a])), jnp.asarray(np.stack([b, b])),
                                    jnp.asarray([eps, eps / 2]), "zoh")
    np.testing.assert_allclose(np.asarray(a_bar), np.stack([np.eye(2) + eps * a] * 2), atol=1e-14)
    np.testing.assert_allclose(np.asarray(b_bar), [[eps**2 / 2, eps], [eps**2 / 4, eps / 2]], atol=1e-14)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="discretization"):
        discretize(jnp.eye(2), jnp.ones(2), 0.1, "euler")
    with pytest.raises(ValueError, match="scaling"):
        hippo.legt(4, scaling="unit")
    with pytest.raises(ValueError, match="state size"):
        hippo.legs(0)
