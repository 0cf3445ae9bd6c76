"""Numerical guards (issue 8): float32 results in the regimes where rounding, overflow or underflow bite.

* LRU and S5 at L = 65,536 with eigenvalues within 1e-4 (down to 1e-6) of the unit circle, various phases:
  outputs (and, for the LRU, gradients) against float64 references computed independently (scipy's lfilter,
  a float64 `lax.scan` of the equations), and step-by-step decoding at the end of the sequence against the
  parallel call.
* Performer (positive softmax features) with query/key norms 30-100, where every raw feature underflows:
  `favor_attention` (causal and bidirectional), `linear_attention` with the FAVOR feature map (default eps)
  and step-by-step decoding, against the same FAVOR+ estimator evaluated in float64 in log space (exact, no
  stabiliser needed).
* S4 / S4D kernels at L = 16K with the largest initial step and eigenvalues at Re = -1e-4; RTF kernels at
  trunc_len 65,536 with poles 1e-4 outside the unit circle.
* Dense and blockwise attention with logits of order 1e4 and fully masked rows (defined to give output 0).

Float32 inputs are created outside x64 mode; the float64 references run under `jax.enable_x64` (or numpy) on
the same float32-rounded values cast to float64, so every error below is the float32 arithmetic's own.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from scipy.signal import lfilter

from models import param_groups
from models.lru import LRUMixer
from models.ssm import S5Mixer
from ops import attention, hippo, linear_attention, performer, rtf, ssm
from ops import lru as lru_ops

LENGTH = 65_536
EPS32 = float(np.finfo(np.float32).eps)


def _states(lam: np.ndarray, bu: np.ndarray) -> np.ndarray:
    """h_t = lam h_{t-1} + bu_t in complex128, state by state with scipy's lfilter: bu (L, N) -> (L, N)."""
    return np.stack([lfilter([1.0], [1.0, -lam[n]], bu[:, n]) for n in range(len(lam))], axis=1)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.abs(x) ** 2)))


def _max_error(got: np.ndarray, want: np.ndarray) -> float:
    """Worst absolute error relative to the rms of the reference."""
    return float(np.abs(np.asarray(got, np.float64) - want).max() / _rms(want))


def _eigenvalue_tolerance(lam32: np.ndarray, lam64: np.ndarray, length: int) -> float:
    """Error bound caused by rounding the eigenvalues to complex64 (no float32 algorithm can avoid it).

    Perturbing lambda by d changes h_t = sum_k lambda^k b_{t-k} by sum_k k lambda^(k-1) d b_{t-k}: relative to
    the rms of h, about |d| * min(L, 1 / (1 - |lambda|)) (the memory, capped by the length). The worst error
    over t is a few times its rms (it grows along the sequence and fluctuates): measured 0.5x to 1.1x that
    figure per state and 1.7x for the S5 output below; the tolerance allows 5x.
    """
    memory = np.minimum(length, 1.0 / (1.0 - np.abs(lam64)))
    return float(5.0 * np.max(np.abs(lam32 - lam64) * memory))


# The scan's own rounding, with the eigenvalues fixed at their complex64 values: errors of order
# sqrt(memory) * eps accumulate (test_scan.py measures 6e-6..3e-5 for |a| = 0.9999). Measured here (mixer
# outputs): LRU 2.5e-5 sequential, 4.5e-5 chunked, 1e-4 associative (its tree multiplies long products of
# lambda); S5 2e-5.
SCAN_TOLERANCE = {"sequential": 1.5e-4, "chunked": 1.5e-4, "associative": 1e-3}


def _random_params(mixer, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The mixer's parameter names and shapes (from an abstract init: nothing is computed) filled with
    N(0, 1 / fan) draws; the tests then set the eigenvalue parameters themselves."""
    shapes = jax.eval_shape(mixer.init, jax.random.key(0), jnp.asarray(x[:, :8]))
    params = param_groups.unbox(shapes)["params"]
    return {name: rng.normal(size=p.shape) / math.sqrt(p.shape[-1]) for name, p in params.items()}


# ------------------------------------------------------------------------------------------------------ LRU

LRU_GAPS = np.array([1e-4, 1e-4, 3e-5, 1e-5, 1e-6, 1e-4])  # 1 - |lambda|
LRU_PHASES = np.array([1e-6, np.pi, 1e-3, 0.7, 2.5, 3.0])
LRU_WIDTH = 4


@pytest.fixture(scope="module")
def lru_case():
    """An LRUMixer (D = 4, N = 6) whose eigenvalues sit at LRU_GAPS / LRU_PHASES; float32 params and input."""
    rng = np.random.default_rng(0)
    mixer = LRUMixer(d_model=LRU_WIDTH, d_state=len(LRU_GAPS))
    x = rng.normal(size=(1, LENGTH, LRU_WIDTH)).astype(np.float32)
    params = _random_params(mixer, x, rng)
    nu = -np.log1p(-LRU_GAPS)  # |lambda| = exp(-nu)
    params.update(nu_log=np.log(nu), theta_log=np.log(LRU_PHASES), gamma_log=0.5 * np.log(-np.expm1(-2 * nu)))
    params = {name: np.asarray(value, np.float32) for name, value in params.items()}
    return mixer, params, x


def _lru_reference(params: dict, x: np.ndarray, lam: np.ndarray | None = None) -> np.ndarray:
    """The LRU equations in float64 (lambda from the float32 parameters unless given): (L, D)."""
    p = {name: value.astype(np.float64) for name, value in params.items()}
    if lam is None:
        lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    bu = np.exp(p["gamma_log"]) * (x[0].astype(np.float64) @ (p["B_re"] + 1j * p["B_im"]).T)
    h = _states(lam, bu)
    return (h @ (p["C_re"] + 1j * p["C_im"]).T).real + p["D"] * x[0]


def test_lru_gamma_init_is_accurate_near_the_unit_circle():
    """gamma = sqrt(1 - |lambda|^2) from float32 nu_log: 1 - exp(-2 nu) lost digits (0.7% at 1 - |lambda| =
    1e-6, 4e-5 at 1e-4); -expm1(-2 nu) keeps them."""
    nu_log = np.log(-np.log1p(-np.array([1e-3, 1e-4, 1e-5, 1e-6, 1e-7]))).astype(np.float32)
    gamma = np.exp(np.asarray(lru_ops.gamma_log_init(jnp.asarray(nu_log), jnp.zeros(5)), np.float64))
    expected = np.sqrt(-np.expm1(-2 * np.exp(nu_log.astype(np.float64))))
    np.testing.assert_allclose(gamma, expected, rtol=1e-6)


# "associative" compiles a 16-level tree (~1.2 s idle, 10 s on a loaded machine); test_scan.py covers it at
# this length already.
@pytest.mark.parametrize("method", ["sequential", "chunked", pytest.param("associative", marks=pytest.mark.slow)])
def test_lru_long_sequence_near_the_unit_circle_matches_float64(lru_case, method):
    mixer, params, x = lru_case
    lam32 = np.asarray(lru_ops.eigenvalues(params["nu_log"], params["theta_log"])).astype(np.complex128)
    lam64 = np.exp(-np.exp(params["nu_log"].astype(np.float64)) + 1j * np.exp(params["theta_log"].astype(float)))
    np.testing.assert_allclose(1 - np.abs(lam64), LRU_GAPS, rtol=1e-2)  # the setting is what it claims

    apply = jax.jit(lambda p, x: mixer.clone(scan_method=method).apply({"params": p}, x))
    y = np.asarray(apply(params, jnp.asarray(x)))[0]
    assert y.dtype == np.float32 and np.isfinite(y).all()
    # Against float64 with the same complex64 eigenvalues: the scan's own rounding.
    assert _max_error(y, _lru_reference(params, x, lam32)) < SCAN_TOLERANCE[method]
    # Against float64 throughout: plus the unavoidable effect of rounding lambda (measured 2.3e-3; the
    # tolerance comes to 3.6e-2).
    tolerance = _eigenvalue_tolerance(lam32, lam64, LENGTH) + SCAN_TOLERANCE[method]
    assert tolerance < 5e-2
    assert _max_error(y, _lru_reference(params, x)) < tolerance


def test_lru_gradients_near_the_unit_circle_match_float64(lru_case):
    """d/d(input, every parameter) of <y, g> against autodiff of a float64 `lax.scan` of the equations."""
    mixer, params, x = lru_case
    cotangent = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)

    def loss32(p, x):
        return jnp.sum(mixer.apply({"params": p}, x) * cotangent)

    def loss64(p, x):
        lam = jnp.exp(-jnp.exp(p["nu_log"]) + 1j * jnp.exp(p["theta_log"]))
        bu = jnp.exp(p["gamma_log"]) * jnp.einsum("lh,nh->ln", x[0], p["B_re"] + 1j * p["B_im"])

        def step(h, b_t):
            h = lam * h + b_t
            return h, h

        _, h = lax.scan(step, jnp.zeros_like(lam), bu)
        y = jnp.einsum("ln,hn->lh", h, p["C_re"] + 1j * p["C_im"]).real + p["D"] * x[0]
        return jnp.sum(y * cotangent[0])

    got = jax.jit(jax.grad(loss32, argnums=(0, 1)))(params, jnp.asarray(x))
    with jax.enable_x64(True):
        as64 = lambda a: jnp.asarray(np.asarray(a, np.float64))  # noqa: E731
        want = jax.jit(jax.grad(loss64, argnums=(0, 1)))({k: as64(v) for k, v in params.items()}, as64(x))
        want = jax.tree.map(np.asarray, want)
    # Tolerance: the gradients go through the same recurrences (forward and adjoint), so the eigenvalue
    # rounding bound above applies, a few 1e-2 for these eigenvalues (5 max |d lambda| L). Measured worst
    # |error| / max |gradient| per array: 7e-5 (input) to 1e-3 (nu_log, theta_log); elementwise errors of
    # small entries are larger (cancellation), hence the norm-wise comparison.
    pairs = [("input", got[1], want[1])] + [(name, got[0][name], want[0][name]) for name in params]
    for name, g32, g64 in pairs:
        g32 = np.asarray(g32)
        assert g32.dtype == np.float32 and np.isfinite(g32).all(), name
        assert np.linalg.norm(g32 - g64) <= 1e-2 * np.linalg.norm(g64), name


def _decode(mixer, variables, x: np.ndarray) -> np.ndarray:
    """Step-by-step outputs (L, D) of a causal mixer, one `step` per token, compiled as one lax.scan."""

    @jax.jit
    def run(variables, x):
        def one(state, x_t):
            state, y_t = mixer.apply(variables, state, x_t[None], method=type(mixer).step)
            return state, y_t[0]

        state = mixer.apply(variables, 1, method=type(mixer).init_state)
        return lax.scan(one, state, x[0])[1]

    return np.asarray(run(variables, jnp.asarray(x)))


# Decoding and the parallel call run the same float32 recurrence with differently rounded inputs (the step
# projects one token at a time): they drift apart by the scan's rounding, measured 7e-6 (LRU) and 3e-7 (S5)
# over the last 256 positions.
DECODE_TOLERANCE = 1e-4


def test_lru_decoding_at_the_end_of_a_long_sequence_equals_the_parallel_call(lru_case):
    mixer, params, x = lru_case
    y = np.asarray(jax.jit(lambda p, x: mixer.apply({"params": p}, x))(params, jnp.asarray(x)))[0]
    steps = _decode(mixer, {"params": params}, x)
    assert np.isfinite(steps).all()
    assert _max_error(steps[-256:], y[-256:].astype(np.float64)) < DECODE_TOLERANCE


# ------------------------------------------------------------------------------------------------------- S5

S5_GAPS = np.array([1e-4, 1e-5, 1e-6, 3e-5])  # 1 - |Lambda_bar| of the discretised system (ZOH)
S5_PHASES = np.array([0.0, 0.3, np.pi - 0.01, 2.0])  # arg Lambda_bar
S5_LAMBDA_RE = np.array([-0.5, -0.5, -1e-4, -2.0])


@pytest.fixture(scope="module")
def s5_case():
    """An S5Mixer (H = 4, P = 8, so 4 complex states) whose discretised eigenvalues are at S5_GAPS / S5_PHASES:
    steps exp(log_step) = log(1 - gap) / Re Lambda, then Im Lambda = phase / step."""
    rng = np.random.default_rng(2)
    mixer = S5Mixer(d_model=4, state_size=8)
    x = rng.normal(size=(1, LENGTH, 4)).astype(np.float32)
    params = _random_params(mixer, x, rng)
    step = np.log1p(-S5_GAPS) / S5_LAMBDA_RE
    params.update(Lambda_re=S5_LAMBDA_RE, Lambda_im=S5_PHASES / step, log_step=np.log(step))
    params = {name: np.asarray(value, np.float32) for name, value in params.items()}
    return mixer, params, x


def _s5_reference(params: dict, x: np.ndarray, lam_bar: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """S5 with ZOH in float64: (y (L, H), Lambda_bar); Lambda_bar from the parameters unless given."""
    p = {name: value.astype(np.float64) for name, value in params.items()}
    lam, step = p["Lambda_re"] + 1j * p["Lambda_im"], np.exp(p["log_step"])
    b_bar = (np.expm1(step * lam) / lam)[:, None] * (p["B_re"] + 1j * p["B_im"])
    lam_bar = np.exp(step * lam) if lam_bar is None else lam_bar
    h = _states(lam_bar, x[0].astype(np.float64) @ b_bar.T)
    return 2 * (h @ (p["C_re"] + 1j * p["C_im"]).T).real + p["D"] * x[0], lam_bar


def test_s5_long_sequence_near_the_unit_circle_matches_float64_and_decodes(s5_case):
    mixer, params, x = s5_case
    variables = {"params": params}
    want, lam64 = _s5_reference(params, x)
    np.testing.assert_allclose(1 - np.abs(lam64), S5_GAPS, rtol=1e-2)
    np.testing.assert_allclose(np.angle(lam64), S5_PHASES, atol=1e-5)
    discrete = jax.jit(lambda v: mixer.apply(v, method=lambda m: m._discrete_system()[0]))
    lam32 = np.asarray(discrete(variables)).astype(np.complex128)

    y = np.asarray(jax.jit(mixer.apply)(variables, jnp.asarray(x)))[0]
    assert y.dtype == np.float32 and np.isfinite(y).all()
    scan_method = "sequential" if jax.default_backend() == "cpu" else "associative"  # what "auto" runs
    assert _max_error(y, _s5_reference(params, x, lam32)[0]) < SCAN_TOLERANCE[scan_method]
    # Measured 4e-3 against a tolerance of 8e-3 (ZOH in float32: exp and expm1 of step * Lambda are accurate
    # to ~1 ulp; the gap 1e-6 state remembers the whole sequence, so its rounding counts L times).
    assert _max_error(y, want) < _eigenvalue_tolerance(lam32, lam64, LENGTH) + SCAN_TOLERANCE[scan_method]

    steps = _decode(mixer, variables, x)
    assert np.isfinite(steps).all()
    assert _max_error(steps[-256:], y[-256:].astype(np.float64)) < DECODE_TOLERANCE


# ------------------------------------------------------------------------------------------------ Performer

PERF_SHAPE = dict(batch=1, length=48, heads=2, key_dim=8, value_dim=4, features=128)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _large_norm_qkv(seed: int, spread: float | None):
    """q, k with norms uniform in [30, 100] (float32), v ~ N(0, 1). spread None: independent random
    directions; otherwise directions = a common one (per head) plus `spread` times Gaussian noise."""
    s = PERF_SHAPE
    rng = np.random.default_rng(seed)
    shape = (s["batch"], s["length"], s["heads"], s["key_dim"])

    def directions():
        if spread is None:
            return _unit(rng.normal(size=shape))
        return _unit(common + spread * rng.normal(size=shape))

    common = _unit(rng.normal(size=(s["batch"], 1, s["heads"], s["key_dim"])))
    q = directions() * rng.uniform(30, 100, size=shape[:3] + (1,))
    k = directions() * rng.uniform(30, 100, size=shape[:3] + (1,))
    v = rng.normal(size=shape[:3] + (s["value_dim"],))
    w = performer.gaussian_orthogonal_matrix(jax.random.key(seed), s["features"], s["key_dim"])
    return tuple(np.asarray(a, np.float32) for a in (q, k, v, w))


def _favor_exponents(x, w):
    """log of the unnormalised positive features, w . x' - |x'|^2 / 2 with x' = x / K^(1/4): (..., F)."""
    x = x / x.shape[-1] ** 0.25
    return x @ w.T - 0.5 * (x * x).sum(axis=-1, keepdims=True)  # numpy or jax arrays


def _favor_log_space(q, k, v, w, mask, causal):
    """The FAVOR+ estimate softmax_j(log sum_f exp(e_q[i, f] + e_k[j, f])) v: the same estimator as
    phi(q_i) . phi(k_j) normalised over j, evaluated in log space (exact for any norm)."""
    log_kernel = jax.nn.logsumexp(_favor_exponents(q, w)[:, :, None] + _favor_exponents(k, w)[:, None], axis=-1)
    length = k.shape[1]
    allowed = jnp.broadcast_to(mask[:, None, :, None], log_kernel.shape)  # (B, Lq, Lk, H)
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((length, length), bool))[None, :, :, None]
    weights = jax.nn.softmax(jnp.where(allowed, log_kernel, -jnp.inf), axis=2)
    return jnp.einsum("bqjh,bjhv->bqhv", weights, v)


def _values_and_grads(fn, q, k, v, cotangent):
    out, pullback = jax.vjp(fn, q, k, v)
    return (out, *pullback(cotangent.astype(out.dtype)))


def _favor_against_float64(q, k, v, w, mask, causal, chunk_size=16, attend=None):
    """(float32 favor_attention, float64 log-space reference): outputs and d/d(q, k, v), as numpy lists.
    attend(q, k, v, w) replaces favor_attention if given."""
    cotangent = np.random.default_rng(3).normal(size=v.shape) * np.asarray(mask)[:, :, None, None]
    if attend is None:
        def attend(q, k, v, w):
            return performer.favor_attention(q, k, v, w, mask=mask, causal=causal, chunk_size=chunk_size)
    fast = jax.jit(lambda q, k, v, w: _values_and_grads(lambda q, k, v: attend(q, k, v, w), q, k, v, cotangent))
    got = [np.asarray(a) for a in fast(q, k, v, w)]
    with jax.enable_x64(True):
        exact = jax.jit(lambda q, k, v, w, mask: _values_and_grads(
            lambda q, k, v: _favor_log_space(q, k, v, w, mask, causal), q, k, v, cotangent))
        want = [np.asarray(a) for a in exact(*(jnp.asarray(a, jnp.float64) for a in (q, k, v, w)), mask)]
    return got, want


# Float32 rounding of exponents of size |x'|^2 / 2 ~ 1.8e3 is ~1e-4 absolute, which moves the weights by ~1e-4
# relative; measured worst |error| / max |reference|: outputs 3e-6..3e-5, gradients 4e-6..5e-5.
FAVOR_TOLERANCE = 2e-3


def _check_close(got, want, real_queries):
    for name, g32, g64 in zip(("out", "dq", "dk", "dv"), got, want):
        assert g32.dtype == np.float32 and np.isfinite(g32).all(), name
        if name == "out":
            g32, g64 = g32[:, :real_queries], g64[:, :real_queries]
        np.testing.assert_allclose(g32, g64, atol=FAVOR_TOLERANCE * np.abs(g64).max(), err_msg=name)


def test_performer_inputs_underflow_without_stabilisers():
    """Precondition of the tests below: every raw feature exp(exponent) of these inputs is 0 in float32 (the
    exponents are below -104), so the outputs would be 0 / 0 without the stabilisers."""
    for seed, spread in ((4, None), (5, 0.2)):
        q, k, _, w = _large_norm_qkv(seed=seed, spread=spread)
        assert np.max(_favor_exponents(np.concatenate([q, k]), w)) < -104


def test_performer_bidirectional_large_norms_match_the_float64_estimator():
    """Random directions: for some queries every (feature, key) product is far below the query's own largest
    feature times the keys' largest, so with per-query and per-key maxima (what favor_attention used before,
    still `softmax_kernel_features` / `softmax_key_features`) their denominators underflow float32 and the
    outputs fall towards 0 (3% of the queries here, off by up to 1.3). Per-feature key maxima
    (ops/performer.py) bound every denominator below by 1 / F."""
    q, k, v, w = _large_norm_qkv(seed=4, spread=None)
    length = PERF_SHAPE["length"]
    mask = jnp.asarray(np.arange(length)[None] < length - 3)  # 3 padded keys
    got, want = _favor_against_float64(q, k, v, w, mask, causal=False)
    _check_close(got, want, length)

    phi_k, log_scale = performer.softmax_key_features(jnp.asarray(k), jnp.asarray(w), mask=mask)
    per_key = linear_attention.linear_attention_from_features(
        performer.softmax_kernel_features(jnp.asarray(q), jnp.asarray(w), is_query=True), phi_k, jnp.asarray(v),
        mask=mask, eps=performer.DEFAULT_EPS, key_log_scale=log_scale)
    assert np.abs(np.asarray(per_key) - want[0]).max() > 0.5, "inputs must defeat per-key stabilisers"


def test_performer_causal_large_norms_match_the_float64_estimator_when_directions_cluster():
    """Norms 30-100, directions near a common one (the usual shape of large-logit attention): the running key
    stabiliser of the causal chunked form keeps float32 within rounding of the exact estimate."""
    q, k, v, w = _large_norm_qkv(seed=5, spread=0.2)
    length = PERF_SHAPE["length"]
    mask = jnp.asarray(np.arange(length)[None] < length - 3)
    got, want = _favor_against_float64(q, k, v, w, mask, causal=True)
    _check_close(got, want, length - 3)


@functools.cache
def _causal_random_directions():
    """(inputs, float32 results, float64 results) of the causal form on random large-norm directions."""
    q, k, v, w = _large_norm_qkv(seed=4, spread=None)
    mask = jnp.ones((1, PERF_SHAPE["length"]), bool)
    return (q, k, v, w), *_favor_against_float64(q, k, v, w, mask, causal=True)


def test_performer_causal_large_norms_random_directions_stay_finite():
    (_, _, v, _), got, _ = _causal_random_directions()
    for name, g in zip(("out", "dq", "dk", "dv"), got):
        assert np.isfinite(g).all(), name
    assert np.abs(got[0]).max() <= np.abs(v).max() * (1 + 1e-5)  # a convex combination of the values


def test_performer_causal_large_norms_random_directions_match_the_float64_estimator():
    """Random directions, causal: with a per-key running max (what the causal forms used before, still
    `softmax_key_features`) 5% of these outputs (20% with L = 64, F = 256) were off by up to 1.7, a key's
    features far below its own max underflowing. The per-feature stabiliser of the causal chunked form
    (running max across chunks, dyadic key blocks inside them) keeps values and gradients within rounding."""
    (q, k, v, w), got, want = _causal_random_directions()
    _check_close(got, want, PERF_SHAPE["length"])
    phi_k, log_scale = performer.softmax_key_features(jnp.asarray(k), jnp.asarray(w))
    per_key = linear_attention.linear_attention_from_features(
        performer.softmax_kernel_features(jnp.asarray(q), jnp.asarray(w), is_query=True), phi_k, jnp.asarray(v),
        causal=True, chunk_size=16, eps=performer.DEFAULT_EPS, key_log_scale=log_scale)
    assert np.abs(np.asarray(per_key) - want[0]).max() > 0.5, "inputs must defeat per-key stabilisers"


@pytest.mark.parametrize("causal,method", [(False, "chunked"), (True, "chunked"), (True, "prefix")])
def test_linear_attention_with_the_favor_map_at_large_norms_matches_the_float64_estimator(causal, method):
    """`linear_attention` with `favor_feature_map` and its default eps (1e-6), norms 30-100 in random
    directions, 3 padded keys. It used per-query features and one key max per sequence: the denominators fell
    far below eps and the outputs towards 0 (89% of the queries bidirectional, 94% causal, off by up to 2.7).
    Now it evaluates the map's log features, stabilised per feature like `favor_attention`: measured worst
    |error| / max |reference| 2e-5 (outputs), 7e-5 (gradients)."""
    q, k, v, w = _large_norm_qkv(seed=4, spread=None)
    length = PERF_SHAPE["length"]
    mask = jnp.asarray(np.arange(length)[None] < length - 3)

    def attend(q, k, v, w):
        return linear_attention.linear_attention(q, k, v, feature_map=performer.favor_feature_map(w), mask=mask,
                                                 causal=causal, method=method, chunk_size=16)

    got, want = _favor_against_float64(q, k, v, w, mask, causal, attend=attend)
    _check_close(got, want, length - 3)


def test_performer_decoding_at_large_norms_equals_the_parallel_call_and_float64():
    """`favor_step`, one token at a time, on the random-direction inputs: equal to the causal chunked form up
    to rounding, and to the float64 estimator within FAVOR_TOLERANCE."""
    (q, k, v, w), got, want = _causal_random_directions()
    s = PERF_SHAPE

    @jax.jit
    def decode(q, k, v, w):
        def one(state, qkv_t):
            return performer.favor_step(state, *qkv_t, w)

        state = performer.favor_init_state(s["batch"], s["heads"], s["features"], s["value_dim"])
        moved = (jnp.moveaxis(a, 1, 0) for a in (q, k, v))
        return jnp.moveaxis(lax.scan(one, state, tuple(moved))[1], 0, 1)

    steps = np.asarray(decode(q, k, v, w))
    assert steps.dtype == np.float32 and np.isfinite(steps).all()
    np.testing.assert_allclose(steps, got[0], atol=FAVOR_TOLERANCE * np.abs(want[0]).max())
    np.testing.assert_allclose(steps, want[0], atol=FAVOR_TOLERANCE * np.abs(want[0]).max())


# ------------------------------------------------------------------------------------ S4, S4D and RTF kernels

KERNEL_LENGTH = 16_384
DT_MAX = 0.1  # the largest initial step of the S4 / S4D mixers (dt_max)


def _float64_run(fn, *arrays):
    with jax.enable_x64(True):
        promote = lambda a: jnp.asarray(np.asarray(a), jnp.result_type(np.asarray(a).dtype, np.float64))  # noqa: E731
        return np.asarray(jax.jit(fn)(*(promote(a) for a in arrays)))


def _kernel_loss(kernel_fn, cotangent):
    return lambda *args: jnp.sum(kernel_fn(*args) * cotangent)


def test_s4_and_s4d_kernels_near_the_imaginary_axis_at_16k():
    """Re Lambda = -1e-4 (|A_bar| = 1 - 1e-5 at dt = 0.1): the Cauchy denominators of S4's generating function
    come within ~1e-5 of 0 and S4D's Vandermonde phases reach k dt Im Lambda ~ 3e4 rad. Kernels, their FFT
    convolution and gradients stay finite; kernels stay within 1e-2 of float64 (relative to their max).
    Why 1e-2: S4D's phase k * fl(dt Lambda) is off by up to k eps |dt Lambda| ~ 2e-3 rad at k = 16K; S4's
    denominators of size ~1e-5 absorb rounding of the roots of unity (eps ~ 6e-8) at ~1% relative near the
    resonances. Measured: S4 (LegS P) 6e-7, S4 (P = 0) 1.3e-3, S4D ZOH 8e-4, bilinear 1e-3."""
    n, h = 16, 2
    rng = np.random.default_rng(6)
    legs = hippo.conjugate_half(hippo.legs_nplr(n))
    c = ((rng.normal(size=(h, n // 2)) + 1j * rng.normal(size=(h, n // 2))) * math.sqrt(0.5)).astype(np.complex64)
    step = np.full(h, DT_MAX, np.float32)
    lam_s4 = (-1e-4 + 1j * legs.Lambda.imag).astype(np.complex64)
    lam_s4d = (-1e-4 + 1j * np.pi * np.arange(n // 2)).astype(np.complex64)  # S4D-Lin imaginary parts
    u = jnp.asarray(rng.normal(size=(1, KERNEL_LENGTH, h)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(h, KERNEL_LENGTH)), jnp.float32)

    cases = {
        "s4 legs": (lambda lam, p, b, c, e: ssm.s4_kernel(lam, p, b, c, e, KERNEL_LENGTH),
                    (lam_s4, legs.P.astype(np.complex64), legs.B.astype(np.complex64), c, step)),
        "s4 diagonal": (lambda lam, p, b, c, e: ssm.s4_kernel(lam, p, b, c, e, KERNEL_LENGTH),
                        (lam_s4, np.zeros(n // 2, np.complex64), legs.B.astype(np.complex64), c, step)),
        "s4d zoh": (lambda lam, b, c, e: ssm.s4d_kernel(lam, b, c, e, KERNEL_LENGTH),
                    (lam_s4d, np.ones(n // 2, np.complex64), c, step)),
        "s4d bilinear": (lambda lam, b, c, e: ssm.s4d_kernel(lam, b, c, e, KERNEL_LENGTH, discretization="bilinear"),
                         (lam_s4d, np.ones(n // 2, np.complex64), c, step)),
    }
    for name, (kernel_fn, args) in cases.items():
        kernel = np.asarray(jax.jit(kernel_fn)(*args))
        assert kernel.dtype == np.float32 and np.isfinite(kernel).all(), name
        want = _float64_run(kernel_fn, *args)
        assert np.abs(kernel - want).max() < 1e-2 * np.abs(want).max(), name
        assert np.isfinite(np.asarray(ssm.fft_causal_conv(u, jnp.asarray(kernel)))).all(), name
        if name in ("s4 diagonal", "s4d zoh"):  # gradients w.r.t. Lambda and the step
            grads = jax.jit(jax.grad(_kernel_loss(kernel_fn, cotangent), argnums=(0, len(args) - 1)))(*args)
            assert all(np.isfinite(np.asarray(g)).all() for g in grads), name


RTF_TRUNC_LEN = 65_536


def _polynomial_from_roots(roots: np.ndarray) -> np.ndarray:
    """Coefficients (1, a_1, ..., a_N) of prod_r (1 - z / r), real for conjugate-closed roots."""
    coefficients = np.poly(roots)[::-1]  # prod (z - r), constant term first; divided by prod (-r) below
    return (coefficients / coefficients[0]).real


def test_rtf_kernel_at_long_trunc_len_with_poles_near_the_unit_circle():
    """Poles 1e-4 and 1e-3 outside the unit circle (a decay of 1e-4 per step: the kernel is still 1.5e-3 of
    its size at T = 65,536, so the length-T FFT aliases the tail). Float32 kernel against the aliased impulse
    response of the recurrence computed by lfilter in float64 (sum_m h[t + m T], 8 T steps, where the tail is
    below exp(-50)); rounding the denominator to float32 moves poles this close to the circle by
    ~eps / 1e-4 ~ 1e-3 relative, measured 1e-4. Also finite: kernels of the "montel" and "xavier"
    initialisations, and the decoding output row c (A^T by repeated squaring)."""
    roots = np.array([1 + 1e-4, 1 + 1e-3])[:, None] * np.exp(1j * np.array([[0.3, -0.3], [2.0, -2.0]]))
    denominator = _polynomial_from_roots(roots.ravel())  # N = 4
    rng = np.random.default_rng(7)
    a = denominator[1:][None].astype(np.float32)
    b = rng.normal(size=(1, 4)).astype(np.float32)

    kernel = np.asarray(jax.jit(lambda a, b: rtf.rtf_kernel(a, b, RTF_TRUNC_LEN))(a, b))[0]
    impulse = np.zeros(8 * RTF_TRUNC_LEN)
    impulse[0] = 1.0
    response = lfilter(b[0].astype(np.float64), np.concatenate([[1.0], a[0].astype(np.float64)]), impulse)
    want = response.reshape(8, RTF_TRUNC_LEN).sum(axis=0)
    assert np.isfinite(kernel).all()
    assert np.abs(kernel - want).max() < 1e-2 * np.abs(want).max()
    assert np.isfinite(np.asarray(rtf.rtf_output_coefficients(a, b, RTF_TRUNC_LEN))).all()

    for kind in ("montel", "xavier"):
        a, b = (rtf.rtf_init(key, (4, 8), kind) for key in jax.random.split(jax.random.key(8)))
        assert np.isfinite(np.asarray(jax.jit(lambda a, b: rtf.rtf_kernel(a, b, RTF_TRUNC_LEN))(a, b))).all()
        # Decoding needs a stable system: for a pole inside the unit circle A^T overflows (in float64 too) and
        # the recurrence itself diverges, so c is only required to be finite for the stable channels ("montel"
        # is always stable; "xavier" draws both kinds here).
        c = np.asarray(rtf.rtf_output_coefficients(a, b, RTF_TRUNC_LEN))
        stable = [np.abs(np.roots(np.concatenate([[1.0], row])[::-1])).min() > 1 for row in np.asarray(a, float)]
        assert all(stable) if kind == "montel" else 0 < sum(stable) < len(stable), kind
        assert np.isfinite(c[np.array(stable)]).all(), kind


# ---------------------------------------------------------------------------------------------------- attention

ATTENTION_FORMS = {
    "dense": attention.dot_product_attention,
    "blockwise": lambda *a, **kw: attention.blockwise_attention(*a, block_q=8, block_k=8, **kw),
}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("form", sorted(ATTENTION_FORMS))
def test_attention_with_huge_logits_and_fully_masked_rows(form, causal):
    """Logits scale * q . k with scale = 1e4 (|logits| up to ~1e5) and rows with no visible key.

    A fully masked row (every key padded, or with causal and left padding every key it may see padded) is
    defined to return 0, with no gradient flowing from it. Otherwise the float32 output must equal a float64
    softmax: the top two logits of every row differ by > 100, so the weights are one-hot to float32 precision
    (float32 rounding of the logits, ~eps * 1e5 ~ 1e-2, cannot change that), the output is the value of the
    argmax key, d/dv routes the cotangent there and d/dq, d/dk vanish (up to the blockwise recomputation's
    rounding, below)."""
    rng = np.random.default_rng(9)
    batch, length, heads, dim = 3, 21, 2, 8  # 21: blocks of 8 leave a padded last block
    q, k, v = (rng.normal(size=(batch, length, heads, dim)).astype(np.float32) for _ in range(3))
    padded = np.array([0, length, 5])  # batch 1: all keys padded; batch 2: the first 5 keys padded
    mask = np.arange(length)[None] >= padded[:, None]
    scale = 1e4

    logits = np.einsum("bqhk,bjhk->bhqj", q.astype(np.float64), k.astype(np.float64)) * scale
    allowed = np.broadcast_to(mask[:, None, None, :], logits.shape)
    if causal:
        allowed = allowed & np.tril(np.ones((length, length), bool))
    rows = allowed.any(-1)  # (B, H, Lq): rows with at least one visible key
    top2 = np.sort(np.where(allowed, logits, -np.inf), axis=-1)[..., -2:]
    has_two = allowed.sum(-1) >= 2
    assert np.all(top2[..., 1][has_two] - top2[..., 0][has_two] > 100), "precondition: one-hot weights"
    weights = np.where(allowed & (logits == np.max(np.where(allowed, logits, -np.inf), -1, keepdims=True)), 1.0, 0.0)
    assert (~rows).sum() > 0 and rows.sum() > 0
    want = np.einsum("bhqj,bjhv->bqhv", weights, v.astype(np.float64))
    cotangent = rng.normal(size=v.shape).astype(np.float32)
    want_dv = np.einsum("bhqj,bqhv->bjhv", weights, cotangent.astype(np.float64))

    fn = ATTENTION_FORMS[form]

    def loss(q, k, v, cotangent):
        out = fn(q, k, v, mask=jnp.asarray(mask), causal=causal, scale=scale)
        return jnp.sum(out * cotangent), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v, cotangent)
    out, (dq, dk, dv) = np.asarray(out), (np.asarray(g) for g in grads)
    assert out.dtype == np.float32 and all(np.isfinite(a).all() for a in (out, dq, dk, dv))
    empty_rows = ~np.moveaxis(rows, 1, 2)  # (B, Lq, H)
    assert np.all(out[empty_rows] == 0), "a fully masked row returns 0"
    np.testing.assert_allclose(out, want, atol=1e-6)
    if form == "dense":  # autodiff reuses the forward's one-hot weights: exact
        dv_tolerance, dqk_tolerance = 1e-5, 1e-6
    else:
        # The blockwise backward recomputes p = exp(s - lse) from scores recomputed in another compiled loop;
        # they agree with the forward's only to ~1 ulp, and an ulp of |s| ~ 1e5 is 0.008, so p = 1 +- 2 eps |s|
        # (measured: 2e-3 relative error in d/dv). d/dq, d/dk keep a rounding residue of p (dp - delta) times
        # the scale: measured 0.02, against 4e5 for scale * max|k| * max|g . v|, the size of an unsaturated one.
        dv_tolerance = 2 * EPS32 * np.abs(np.where(allowed, logits, 0.0)).max() * np.abs(want_dv).max()
        dqk_tolerance = 1e-6 * scale * np.abs(k).max() * np.abs(np.einsum("bqhv,bjhv->bhqj", cotangent, v)).max()
    np.testing.assert_allclose(dv, want_dv, atol=dv_tolerance)
    np.testing.assert_allclose(dq, 0.0, atol=dqk_tolerance)
    np.testing.assert_allclose(dk, 0.0, atol=dqk_tolerance)
    # The cotangent of the empty rows must not reach anything.
    zeroed = np.where(empty_rows[..., None], 0.0, cotangent).astype(np.float32)
    grads_zeroed = jax.jit(jax.grad(lambda *a: loss(*a)[0], argnums=(0, 1, 2)))(q, k, v, zeroed)
    for g, g0 in zip((dq, dk, dv), grads_zeroed):
        np.testing.assert_array_equal(g, np.asarray(g0))
