"""Every mixer end to end, causal and bidirectional, against a float64 reference written from its parameters.

The recurrent mixers (lru, s4, s4d, s5, rtf) are checked against a Python loop over their recurrence in numpy
complex128, with the discretisation written out from the continuous parameters (docs/methods.md sections 1 to 4), never
through ops/: a mixer that shared a bug with its op (Euler for ZOH, a wrong C~ recovery) fails here even when
step == parallel. Bidirectional layers are checked against the forward loop plus the loop over the reversed
sequence, combined as each mixer's docstring defines it:

  lru, s5:        both scans include lag 0 and have their own C (C_bwd); the outputs are summed; D u once.
  s4, s4d, rtf:   the backward kernel starts at lag 1 (ops.ssm.fft_bidirectional_conv, as the S4 code), so
                  y_bwd_t = C_bwd x_bwd_{t+1} with x_bwd the reverse recurrence; D u once. s4 and s4d share
                  A, B and the step with the forward half; rtf has its own denominator and numerator (a_bwd, b_bwd).

The bidirectional attention mixers (softmax, blockwise, linear, nystrom) are checked against full attention
written out in numpy float64 from the projection weights (padded keys masked; outputs at real positions).
Padding: every mixer zeroes masked inputs, so the references run on x * mask.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import param_groups, registry

pytestmark = pytest.mark.usefixtures("fast_compilation")  # tiny shapes: XLA's optimisation passes cost more

D_MODEL = 3
LENGTH = 10

# Steps larger than the defaults so that every part of the system matters within LENGTH steps.
RECURRENT_CONFIGS = {
    "lru": {"d_state": 4, "r_min": 0.5, "r_max": 0.95, "scan_method": "sequential"},
    "s4": {"d_state": 6, "l_max": 14, "dt_min": 0.05, "dt_max": 0.5},
    "s4d": {"d_state": 6, "dt_min": 0.05, "dt_max": 0.5},
    "s4d-bilinear": {"d_state": 6, "discretization": "bilinear", "lambda_init": "inv", "dt_min": 0.05,
                     "dt_max": 0.5},
    "s5": {"state_size": 8, "blocks": 2, "dt_min": 0.05, "dt_max": 0.5, "scan_method": "sequential"},
    "s5-bilinear": {"state_size": 6, "discretization": "bilinear", "dt_min": 0.05, "dt_max": 0.5},
    "rtf": {"state_size": 4, "trunc_len": 16, "coefficient_init": "montel"},
}


@functools.cache
def _variables(name, bidirectional):
    """float64 parameters of one mixer (drawn in float32, then cast). The mixers create their parameters in
    setup, so touching one attribute (D) is enough: the forward pass is not traced for init."""
    options = RECURRENT_CONFIGS[name]
    mixer = registry.make_mixer(name.split("-")[0], d_model=D_MODEL, bidirectional=bidirectional, **options)
    boxed = jax.jit(lambda key: mixer.init(key, method=lambda module: module.d))(jax.random.key(7, impl="rbg"))
    params = param_groups.unbox(boxed)["params"]
    if "b" in params:  # rtf: random numerators too ("montel" initialises both a and b), D ~ N(0, 1)
        keys = jax.random.split(jax.random.key(8), 2)
        numerators = [part for part in ("b", "b_bwd") if part in params]
        params = {**params, **{part: 0.3 * jax.random.normal(key, params[part].shape)
                               for key, part in zip(keys, numerators)}}
    return mixer, {name: np.asarray(value, np.float64) for name, value in params.items()}


def _inputs(seed=3):
    """(2, L, D) float64 inputs and a mask padding the second sequence after 7 tokens."""
    x = np.random.default_rng(seed).normal(size=(2, LENGTH, D_MODEL))
    mask = np.arange(LENGTH)[None, :] < np.array([[LENGTH], [7]])
    return x, mask


def _loop(step, state, u, reverse):
    """Runs `state, y_t = step(state, u_t)` over u (L, ...) forwards or backwards; returns the outputs (L, ...)."""
    out = [None] * len(u)
    for t in (range(len(u) - 1, -1, -1) if reverse else range(len(u))):
        state, out[t] = step(state, u[t])
    return np.stack(out)


def _shifted(y_bwd):
    """y_bwd_{t+1} (zero at the last position): the lag-1 start of the S4-style backward kernel."""
    return np.concatenate([y_bwd[1:], np.zeros_like(y_bwd[:1])])


# --------------------------------------------------------------------------------------------- references


def _lru_reference(p, u, bidirectional):
    """h_t = lambda h_{t-1} + gamma (B u_t), y_t = Re(C h_t) + D u_t (docs/methods.md section 1)."""
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    gamma = np.exp(p["gamma_log"])
    b = p["B_re"] + 1j * p["B_im"]

    def direction(c, reverse):
        return _loop(lambda h, u_t: (lam * h + gamma * (b @ u_t),) * 2, np.zeros(len(lam), complex), u,
                     reverse) @ c.T

    y = direction(p["C_re"] + 1j * p["C_im"], False).real
    if bidirectional:
        y = y + direction(p["C_re_bwd"] + 1j * p["C_im_bwd"], True).real
    return y + p["D"] * u


def _s4_reference(p, u, bidirectional, l_max):
    """Per channel: A = diag(Lambda) - P P^* over the kept states and their conjugates, bilinear
    A_bar = (I - e/2 A)^{-1} (I + e/2 A), B_bar = e (I - e/2 A)^{-1} B, and C_bar = C~ (I - A_bar^l_max)^{-1}
    (docs/methods.md section 3: the learned C~ is C_bar (I - A_bar^L));
    x_t = A_bar x_{t-1} + B_bar u_t, y_t = C_bar x_t."""
    unfold = lambda half: np.concatenate([half, half.conj()], axis=-1)
    lam = unfold(-np.exp(p["Lambda_log_neg_re"]) + 1j * p["Lambda_im"])
    pp, b = unfold(p["P_re"] + 1j * p["P_im"]), unfold(p["B_re"] + 1j * p["B_im"])
    directions = [("C_re", "C_im")] + ([("C_re_bwd", "C_im_bwd")] if bidirectional else [])
    y = p["D"] * u
    for h in range(u.shape[1]):
        e, n = np.exp(p["log_step"][h]), lam.shape[1]
        a = np.diag(lam[h]) - np.outer(pp[h], pp[h].conj())
        left = np.linalg.inv(np.eye(n) - e / 2 * a)
        a_bar, b_bar = left @ (np.eye(n) + e / 2 * a), e * left @ b[h]
        states = _loop(lambda x, u_t: (a_bar @ x + b_bar * u_t,) * 2, np.zeros(n, complex), u[:, h], False)
        states_bwd = _loop(lambda x, u_t: (a_bar @ x + b_bar * u_t,) * 2, np.zeros(n, complex), u[:, h], True)
        for index, (re, im) in enumerate(directions):
            c_bar = unfold(p[re][h] + 1j * p[im][h]) @ np.linalg.inv(
                np.eye(n) - np.linalg.matrix_power(a_bar, l_max))
            y[:, h] += (states @ c_bar).real if index == 0 else _shifted((states_bwd @ c_bar).real)
    return y


def _diagonal_discretisation(lam, step, method):
    """ZOH: exp(e l), (exp(e l) - 1) / l; bilinear: (1 + e l/2) / (1 - e l/2), e / (1 - e l/2)
    (docs/methods.md section 2)."""
    if method == "zoh":
        return np.exp(step * lam), (np.exp(step * lam) - 1) / lam
    return (1 + step * lam / 2) / (1 - step * lam / 2), step / (1 - step * lam / 2)


def _s4d_reference(p, u, bidirectional, discretization):
    """Per channel, diagonal and conjugate-pair halved: x_t = Lambda_bar x_{t-1} + B_bar u_t,
    y_t = 2 Re(C x_t) (C is C_bar itself)."""
    lam = -np.exp(p["Lambda_log_neg_re"]) + 1j * p["Lambda_im"]
    lam_bar, scale = _diagonal_discretisation(lam, np.exp(p["log_step"])[:, None], discretization)
    b_bar = scale * (p["B_re"] + 1j * p["B_im"])  # (H, N2)
    states = {reverse: _loop(lambda x, u_t: (lam_bar * x + b_bar * u_t[:, None],) * 2,
                             np.zeros(lam.shape, complex), u, reverse) for reverse in (False, True)}
    y = 2 * np.sum((p["C_re"] + 1j * p["C_im"]) * states[False], axis=-1).real
    if bidirectional:
        c_bwd = p["C_re_bwd"] + 1j * p["C_im_bwd"]
        y = y + _shifted(2 * np.sum(c_bwd * states[True], axis=-1).real)
    return y + p["D"] * u


def _s5_reference(p, u, bidirectional, discretization):
    """One MIMO system, per-state steps: x_t = Lambda_bar x_{t-1} + B_bar u_t, y_t = 2 Re(C x_t) (conj_sym);
    the backward scan includes lag 0 (as S5)."""
    lam = p["Lambda_re"] + 1j * p["Lambda_im"]
    lam_bar, scale = _diagonal_discretisation(lam, np.exp(p["log_step"]), discretization)
    b_bar = scale[:, None] * (p["B_re"] + 1j * p["B_im"])  # (P', H)

    def direction(c, reverse):
        states = _loop(lambda x, u_t: (lam_bar * x + b_bar @ u_t,) * 2, np.zeros(lam.shape, complex), u, reverse)
        return 2 * (states @ c.T).real

    y = direction(p["C_re"] + 1j * p["C_im"], False)
    if bidirectional:
        y = y + direction(p["C_re_bwd"] + 1j * p["C_im_bwd"], True)
    return y + p["D"] * u


def _rtf_reference(p, u, bidirectional, trunc_len):
    """Per channel, the companion system of 1 / (1 + a_1 z + ... + a_N z^N): the shift register
    x_t = (u_t - <a, x_{t-1}>, x_{t-1,0}, ..., x_{t-1,N-2}), y_t = <c, x_t> with c (I - A^T) = b for the
    truncation length T (docs/methods.md section 4); the backward direction has its own a_bwd, b_bwd."""
    y = p["D"] * u
    suffixes = [""] + (["_bwd"] if bidirectional else [])
    for h in range(u.shape[1]):
        for suffix in suffixes:
            a, b = p["a" + suffix][h], p["b" + suffix][h]
            n = len(a)
            companion = np.eye(n, k=-1)
            companion[0] = -a
            c = b @ np.linalg.inv(np.eye(n) - np.linalg.matrix_power(companion, trunc_len))

            def step(x, u_t, a=a, c=c):
                x = np.concatenate([[u_t - a @ x], x[:-1]])
                return x, c @ x

            if suffix:
                y[:, h] += _shifted(_loop(step, np.zeros(n), u[:, h], True))
            else:
                y[:, h] += _loop(step, np.zeros(n), u[:, h], False)
    return y


def _reference(name, p, u, bidirectional):
    options = RECURRENT_CONFIGS[name]
    kind = name.split("-")[0]
    if kind == "lru":
        return _lru_reference(p, u, bidirectional)
    if kind == "s4":
        return _s4_reference(p, u, bidirectional, options["l_max"])
    if kind == "s4d":
        return _s4d_reference(p, u, bidirectional, options.get("discretization", "zoh"))
    if kind == "s5":
        return _s5_reference(p, u, bidirectional, options.get("discretization", "zoh"))
    return _rtf_reference(p, u, bidirectional, options["trunc_len"])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", sorted(RECURRENT_CONFIGS))
def test_recurrent_mixer_equals_its_float64_loop(x64, name, bidirectional):
    mixer, p = _variables(name, bidirectional)
    x, mask = _inputs()
    y = np.asarray(jax.jit(mixer.apply)({"params": p}, jnp.asarray(x), mask=jnp.asarray(mask)))
    u = x * mask[..., None]
    expected = np.stack([_reference(name, p, u[i], bidirectional) for i in range(len(u))])
    np.testing.assert_allclose(y, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    # Not vacuous: the state-space part is of the order of the feed-through D u.
    assert np.abs(expected - p["D"] * u).max() > 0.1 * np.abs(p["D"] * u).max()
    if bidirectional:  # and the backward half matters (the future reaches the first position)
        assert np.abs(expected[0, 0] - _reference(name, p, u[0, :1], True)[0]).max() > 1e-3


# ------------------------------------------------------------------------------------------------ attention

HEADS = 2
ATTENTION_D = 4
ATTENTION_CONFIGS = {
    "softmax": {},
    "blockwise": {"block_size": 4},  # 4 does not divide LENGTH: a padded last block
    "linear": {"feature_map": "elu"},
    "nystrom": {"num_landmarks": 3, "value_conv_kernel": 3},
}


def _attention_heads(x, params, name):
    """x (L, D) @ kernel -> (L, H, Kh): the head h takes columns h Kh .. (h + 1) Kh - 1."""
    return (x @ params[name]["kernel"]).reshape(len(x), HEADS, -1)


def _softmax_rows(scores, valid):
    scores = np.where(valid, scores, -np.inf)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _newton_pinv(a, iterations):
    """Nystromformer's iteration Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4, Z0 = A^T / (|A|_1 |A|_inf)."""
    identity = np.eye(len(a))
    z = a.T / (np.abs(a).sum(axis=0).max() * np.abs(a).sum(axis=1).max())
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity - az)))
    return z


def _attention_reference(name, options, params, x):
    """Full (bidirectional) attention of the real tokens x (n, D), per head, then the output projection."""
    q, k, v = (_attention_heads(x, params, part) for part in ("query", "key", "value"))
    n, head_dim = len(x), q.shape[-1]
    out = np.zeros_like(v)
    for h in range(HEADS):
        qh, kh, vh = q[:, h], k[:, h], v[:, h]
        if name in ("softmax", "blockwise"):
            out[:, h] = _softmax_rows(qh @ kh.T / np.sqrt(head_dim), True) @ vh
        elif name == "linear":
            phi = lambda z: np.where(z > 0, z + 1, np.exp(z))  # elu + 1
            out[:, h] = (phi(qh) @ (phi(kh).T @ vh)) / (phi(qh) @ phi(kh).sum(axis=0))[:, None]
        else:  # nystrom: landmarks are the means of M contiguous segments (token r of n in floor(r M / n))
            m = options["num_landmarks"]
            segment = np.arange(n) * m // n
            q_land = np.stack([qh[segment == s].mean(axis=0) for s in range(m)])
            k_land = np.stack([kh[segment == s].mean(axis=0) for s in range(m)])
            scale = 1 / np.sqrt(head_dim)
            kernel_f = _softmax_rows(qh @ k_land.T * scale, True)
            kernel_a = _softmax_rows(q_land @ k_land.T * scale, True)
            kernel_b = _softmax_rows(q_land @ kh.T * scale, True)
            out[:, h] = kernel_f @ _newton_pinv(kernel_a, 6) @ (kernel_b @ vh)
            taps = params["value_conv"][:, h]  # a centred depthwise convolution of the values, zero-padded
            half = len(taps) // 2
            padded = np.concatenate([np.zeros((half, head_dim)), vh, np.zeros((half, head_dim))])
            out[:, h] += sum(taps[j] * padded[j : j + n] for j in range(len(taps)))
    return out.reshape(n, -1) @ params["out"]["kernel"]


@pytest.mark.parametrize("name", sorted(ATTENTION_CONFIGS))
def test_bidirectional_attention_equals_full_attention_in_float64(x64, name):
    options = ATTENTION_CONFIGS[name]
    mixer = registry.make_mixer(name, d_model=ATTENTION_D, bidirectional=True, num_heads=HEADS,
                                dtype=jnp.float64, param_dtype=jnp.float64, **options)
    x = np.random.default_rng(5).normal(size=(2, LENGTH, ATTENTION_D))
    mask = np.arange(LENGTH)[None, :] < np.array([[LENGTH], [7]])
    y, variables = jax.jit(lambda key, x, mask: mixer.init_with_output(key, x, mask=mask))(
        jax.random.key(2), jnp.asarray(x), jnp.asarray(mask))
    params = jax.tree.map(np.asarray, param_groups.unbox(variables)["params"])
    for i, real in enumerate(mask.sum(axis=1)):
        expected = _attention_reference(name, options, params, x[i, :real])
        np.testing.assert_allclose(np.asarray(y)[i, :real], expected, rtol=1e-10, atol=1e-10)
