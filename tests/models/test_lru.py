"""LRU: initialisation statistics, the layer against a float64 Python loop, and the mixer's decoding contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import param_groups
from models.lru import LRUMixer
from ops import lru as lru_ops
from tests.models.prefill_checks import check_prefill


def test_ring_init_is_uniform_in_r_squared_and_phase():
    r_min, r_max, max_phase = 0.4, 0.9, math.pi
    nu_log, theta_log = lru_ops.ring_init(jax.random.key(0), 20_000, r_min, r_max, max_phase)
    lam = np.asarray(lru_ops.eigenvalues(nu_log, theta_log))
    r2, phase = np.abs(lam) ** 2, np.angle(lam) % (2 * np.pi)
    assert r2.min() >= r_min**2 - 1e-6 and r2.max() <= r_max**2 + 1e-6
    assert phase.max() <= max_phase + 1e-5
    # Uniform in r^2 (not in r): each decile of [r_min^2, r_max^2] holds ~10% of the samples.
    counts = np.histogram(r2, bins=10, range=(r_min**2, r_max**2))[0] / len(r2)
    np.testing.assert_allclose(counts, 0.1, atol=0.012)
    counts = np.histogram(phase, bins=10, range=(0, max_phase))[0] / len(phase)
    np.testing.assert_allclose(counts, 0.1, atol=0.012)


def test_ring_init_rejects_bad_ring():
    with pytest.raises(ValueError, match="r_min < r_max"):
        lru_ops.ring_init(jax.random.key(0), 4, 0.9, 0.5)


def test_gamma_normalises_the_state_variance(x64):
    nu_log, theta_log = lru_ops.ring_init(jax.random.key(1), 8, 0.9, 0.999)
    lam = lru_ops.eigenvalues(nu_log.astype(jnp.float64), theta_log.astype(jnp.float64))
    gamma = jnp.exp(lru_ops.gamma_log_init(nu_log.astype(jnp.float64), theta_log.astype(jnp.float64)))
    np.testing.assert_allclose(gamma**2, 1 - jnp.abs(lam) ** 2, rtol=1e-12)
    # Stationary variance of h_t = lam h_{t-1} + gamma u_t for white u is gamma^2 / (1 - |lam|^2) = 1.
    np.testing.assert_allclose(gamma**2 / (1 - jnp.abs(lam) ** 2), 1.0, rtol=1e-12)


def _random_lru_params(key, n, h, dtype):
    keys = jax.random.split(key, 8)
    nu_log, theta_log = lru_ops.ring_init(keys[0], n, 0.5, 0.95)
    params = dict(
        nu_log=nu_log, theta_log=theta_log, gamma_log=lru_ops.gamma_log_init(nu_log, theta_log),
        b_re=jax.random.normal(keys[1], (n, h)), b_im=jax.random.normal(keys[2], (n, h)),
        c_re=jax.random.normal(keys[3], (h, n)), c_im=jax.random.normal(keys[4], (h, n)),
        d=jax.random.normal(keys[5], (h,)))
    return {k: v.astype(dtype) for k, v in params.items()}


def _reference_lru(u, p, reverse=False):
    """Python loop in numpy float64/complex128, straight from the equations."""
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    gamma = np.exp(p["gamma_log"])
    b = p["b_re"] + 1j * p["b_im"]
    c = p["c_re"] + 1j * p["c_im"]
    batch, length, _ = u.shape
    y = np.zeros(u.shape)
    for i in range(batch):
        h = np.zeros(len(lam), complex)
        order = range(length - 1, -1, -1) if reverse else range(length)
        for t in order:
            h = lam * h + gamma * (b @ u[i, t])
            y[i, t] = (c @ h).real + p["d"] * u[i, t]
    return y


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("method", ["sequential", "associative", "chunked"])
def test_lru_layer_equals_python_loop(x64, reverse, method):
    p = _random_lru_params(jax.random.key(2), n=5, h=3, dtype=jnp.float64)
    u = jax.random.normal(jax.random.key(3), (2, 11, 3), jnp.float64)
    y, _ = lru_ops.lru(u, *p.values(), reverse=reverse, method=method)
    expected = _reference_lru(np.asarray(u), {k: np.asarray(v) for k, v in p.items()}, reverse=reverse)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-10, atol=1e-10)


def _init_mixer(mixer, length=9, d=4, dtype=jnp.float64):
    x = jax.random.normal(jax.random.key(4), (2, length, d), dtype)
    variables = mixer.init(jax.random.key(5), x)
    variables = jax.tree.map(lambda v: v.astype(dtype), param_groups.unbox(variables))
    return variables, x


def test_mixer_step_by_step_equals_parallel(x64):
    mixer = LRUMixer(d_model=4, d_state=6, r_min=0.5, r_max=0.99)
    variables, x = _init_mixer(mixer)
    y = mixer.apply(variables, x)
    state = mixer.apply(variables, x.shape[0], method=LRUMixer.init_state)
    steps = []
    for t in range(x.shape[1]):
        state, y_t = mixer.apply(variables, state, x[:, t], method=LRUMixer.step)
        steps.append(y_t)
    np.testing.assert_allclose(np.stack(steps, axis=1), y, rtol=1e-10, atol=1e-10)
    step = jax.jit(lambda state, x_t: mixer.apply(variables, state, x_t, method=LRUMixer.step))
    check_prefill(mixer, variables, x, y, step, prompt=6, atol=1e-10)


def test_causal_mixer_jacobian_is_lower_triangular(x64):
    mixer = LRUMixer(d_model=3, d_state=4)
    variables, x = _init_mixer(mixer, length=7, d=3)
    jac = jax.jacrev(lambda inp: mixer.apply(variables, inp))(x[:1])  # (1, L, D, 1, L, D)
    per_time = np.abs(np.asarray(jac[0, :, :, 0])).sum(axis=(1, 3))  # (L_out, L_in)
    assert np.all(np.triu(per_time, k=1) == 0.0)
    assert np.all(np.diag(per_time) > 0) and np.all(np.tril(per_time, k=-1)[1:, :-1].diagonal() > 0)


def test_bidirectional_mixer_sees_the_future_and_ignores_padding(x64):
    mixer = LRUMixer(d_model=3, d_state=4, bidirectional=True)
    variables, x = _init_mixer(mixer, length=8, d=3)
    jac = jax.jacrev(lambda inp: mixer.apply(variables, inp))(x[:1])
    assert np.abs(np.asarray(jac[0, 0, :, 0, -1])).sum() > 0  # output 0 depends on the last input
    mask = jnp.arange(8)[None, :] < jnp.array([[5], [8]])
    y = mixer.apply(variables, x, mask=mask)
    garbage = x.at[0, 5:].set(100.0)
    y_garbage = mixer.apply(variables, garbage, mask=mask)
    np.testing.assert_allclose(y_garbage[0, :5], y[0, :5], rtol=1e-12)
    # ... and equals running on the unpadded prefix alone.
    y_prefix = mixer.apply(variables, x[:1, :5])
    np.testing.assert_allclose(y[0, :5], y_prefix[0], rtol=1e-10, atol=1e-12)


def test_bidirectional_mixer_refuses_to_decode():
    mixer = LRUMixer(d_model=3, d_state=4, bidirectional=True)
    variables = mixer.init(jax.random.key(0), jnp.ones((1, 4, 3)))
    with pytest.raises(ValueError, match="causal"):
        mixer.apply(variables, 1, method=LRUMixer.init_state)


def test_recurrence_parameters_are_in_the_ssm_group():
    mixer = LRUMixer(d_model=3, d_state=4)
    variables = mixer.init(jax.random.key(0), jnp.ones((1, 4, 3)))
    labels = param_groups.group_labels(variables["params"])
    for name in ("nu_log", "theta_log", "gamma_log", "B_re", "B_im"):
        assert labels[name] == param_groups.SSM, name
    assert labels["C_re"] == param_groups.DEFAULT and labels["D"] == param_groups.NO_DECAY


def test_initial_gamma_matches_initial_eigenvalues():
    mixer = LRUMixer(d_model=3, d_state=16, r_min=0.9, r_max=0.999)
    p = param_groups.unbox(mixer.init(jax.random.key(0), jnp.ones((1, 4, 3))))["params"]
    lam = lru_ops.eigenvalues(p["nu_log"], p["theta_log"])
    np.testing.assert_allclose(jnp.exp(2 * p["gamma_log"]), 1 - jnp.abs(lam) ** 2, rtol=1e-4)
    assert float(jnp.abs(lam).min()) >= 0.9 - 1e-5 and float(jnp.abs(lam).max()) <= 0.999 + 1e-5
