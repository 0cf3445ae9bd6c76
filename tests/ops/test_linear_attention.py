"""Tests for ops/linear_attention.py against the quadratic form phi(Q) phi(K)^T (masked, normalised)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import linear_attention as la


def _qkv(b=2, length=11, h=2, k=4, kv=3, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(
        rng.normal(size=shape) for shape in [(b, length, h, k), (b, length, h, k), (b, length, h, kv)]
    )


def _quadratic_reference(phi_q, phi_k, v, mask, causal, eps):
    """out_i = sum_j A_ij v_j / max(sum_j A_ij, eps), A = phi(q_i) . phi(k_j) over allowed j (numpy)."""
    scores = np.einsum("bqhf,bkhf->bhqk", phi_q, phi_k)
    length = phi_k.shape[1]
    allowed = np.broadcast_to(mask[:, None, None, :], scores.shape).copy()
    if causal:
        allowed &= np.tril(np.ones((phi_q.shape[1], length), bool))
    scores = np.where(allowed, scores, 0.0)
    numerator = np.einsum("bhqk,bkhv->bqhv", scores, v)
    denominator = np.moveaxis(scores.sum(-1), 1, 2)
    return numerator / np.maximum(denominator, eps)[..., None]


_NUMPY_MAPS = {"elu": lambda x: np.where(x > 0, x + 1.0, np.exp(x)), "relu": lambda x: np.maximum(x, 0.0)}


@pytest.mark.parametrize(
    "feature_map,causal,method,chunk",
    [
        ("elu", False, "chunked", 4),
        ("relu", False, "chunked", 4),
        ("elu", True, "prefix", 4),
        ("relu", True, "prefix", 4),
        ("elu", True, "chunked", 4),  # chunk does not divide L = 11
        ("relu", True, "chunked", 3),
        ("elu", True, "chunked", 11),  # one chunk
    ],
)
def test_linear_attention_equals_quadratic_form(x64, feature_map, causal, method, chunk):
    q, k, v = _qkv()
    mask = np.arange(11)[None, :] < np.array([[8], [11]])
    fn = jax.jit(
        lambda q, k, v: la.linear_attention(
            q,
            k,
            v,
            feature_map=feature_map,
            mask=jnp.asarray(mask),
            causal=causal,
            method=method,
            chunk_size=chunk,
        )
    )
    out = fn(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    phi = _NUMPY_MAPS[feature_map]
    expected = _quadratic_reference(phi(q), phi(k), v, mask, causal, la.DEFAULT_EPS)
    np.testing.assert_allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_does_not_change_real_positions(x64, causal):
    q, k, v = _qkv(length=12)
    real = 9
    q_pad, k_pad, v_pad = q.copy(), k.copy(), v.copy()
    k_pad[:, real:] = 1e3  # huge padded keys and non-finite padded values must not leak in
    v_pad[:, real:] = np.inf
    mask = jnp.asarray(np.arange(12)[None, :] < real).repeat(2, axis=0)

    def run(q, k, v, mask):
        return la.linear_attention(
            jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=mask, causal=causal, chunk_size=5
        )

    padded = run(q_pad, k_pad, v_pad, mask)[:, :real]
    unpadded = run(q[:, :real], k[:, :real], v[:, :real], None)
    np.testing.assert_allclose(padded, unpadded, atol=1e-12)


def test_recurrent_step_equals_causal(x64):
    q, k, v = map(jnp.asarray, _qkv())
    expected = la.linear_attention(q, k, v, causal=True)
    phi_q, phi_k = la.elu_plus_one(q), la.elu_plus_one(k)
    state = la.linear_attention_init_state(2, 2, 4, 3, jnp.float64)
    step = jax.jit(la.linear_attention_step)
    for t in range(q.shape[1]):
        state, out = step(state, phi_q[:, t], phi_k[:, t], v[:, t])
        np.testing.assert_allclose(out, expected[:, t], atol=1e-12)


def test_low_precision_inputs_accumulate_in_float32():
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 4096, 1, 4)) * 3, jnp.float16) for _ in range(3))
    out = la.linear_attention(q, k, v, causal=True, chunk_size=512)
    assert out.dtype == jnp.float16 and np.all(np.isfinite(out))
    reference = la.linear_attention(
        q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), causal=True, chunk_size=512
    )
    np.testing.assert_allclose(np.asarray(out, np.float32), reference, atol=1e-2)


def test_all_zero_features_give_zero_not_nan():
    q = -jnp.ones((1, 3, 1, 2))  # relu features of q are all zero
    out = la.linear_attention(q, jnp.ones((1, 3, 1, 2)), jnp.ones((1, 3, 1, 2)), feature_map="relu")
    assert np.all(np.asarray(out) == 0)


def test_bad_arguments_raise():
    q, k, v = map(jnp.asarray, _qkv())
    with pytest.raises(ValueError, match="unknown feature map"):
        la.linear_attention(q, k, v, feature_map="tanh")
    with pytest.raises(ValueError, match="method"):
        la.linear_attention(q, k, v, causal=True, method="fft")
    with pytest.raises(ValueError, match="padding mask"):
        la.linear_attention(q, k, v, mask=jnp.ones((2, 3), bool))


# ---------------------------------------------------------------------------------------- log features

def _log_features(length=13, f=6, spread=3.0, seed=4):
    """Log features with a spread of exponents (l ~ N(0, spread^2)), values and a mask padding 3 keys of
    batch 0 (their log features huge, their values inf: neither may leak)."""
    rng = np.random.default_rng(seed)
    log_q, log_k = (rng.normal(size=(2, length, 2, f)) * spread for _ in range(2))
    v = rng.normal(size=(2, length, 2, 3))
    mask = np.arange(length)[None, :] < np.array([[length - 3], [length]])
    log_k[0, length - 3 :], v[0, length - 3 :] = 1e4, np.inf
    return log_q, log_k, v, mask


def _log_space_reference(log_q, log_k, v, mask, causal):
    """softmax_j(log sum_f exp(l_if + l_jf)) v_j over the allowed keys: the log-feature attention, evaluated
    in log space (exact for any magnitudes). jax, so that it runs in float64 under x64 and differentiates."""
    log_kernel = jax.nn.logsumexp(log_q[:, :, None] + log_k[:, None], axis=-1)  # (B, Lq, L, H)
    allowed = jnp.broadcast_to(jnp.asarray(mask)[:, None, :, None], log_kernel.shape)
    if causal:
        length = log_k.shape[1]
        allowed = allowed & jnp.tril(jnp.ones((length, length), bool))[None, :, :, None]
    weights = jax.nn.softmax(jnp.where(allowed, log_kernel, -jnp.inf), axis=2)
    return jnp.einsum("bqjh,bjhv->bqhv", weights, jnp.where(jnp.asarray(mask)[..., None, None], v, 0.0))


LOG_FORMS = [(False, "chunked", 4), (True, "prefix", 4), (True, "chunked", 4), (True, "chunked", 5),
             (True, "chunked", 13), (True, "chunked", 1)]  # 5: neither divides L nor is a power of two


@pytest.mark.parametrize("causal,method,chunk", LOG_FORMS)
def test_log_features_equal_the_quadratic_form_with_gradients(x64, causal, method, chunk):
    """Values and d/d(log features, v) against autodiff of the log-space quadratic form, in float64."""
    log_q, log_k, v, mask = _log_features()
    real = np.asarray(mask)[..., None, None]
    cotangent = np.random.default_rng(5).normal(size=v.shape) * real

    def loss(fn):
        return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=(0, 1, 2)))

    def fast(log_q, log_k, v):
        return la.linear_attention_from_log_features(
            log_q, log_k, v, mask=jnp.asarray(mask), causal=causal, method=method, chunk_size=chunk
        )

    def slow(log_q, log_k, v):
        return _log_space_reference(log_q, log_k, v, mask, causal)

    out = jax.jit(fast)(log_q, log_k, v)
    np.testing.assert_allclose(np.where(real, out, 0.0), np.where(real, slow(log_q, log_k, v), 0.0), atol=1e-12)
    # Gradients: padded keys get none (their inf values are replaced by a finite stand-in for the reference).
    v_finite = np.where(real, v, 0.0)
    (_, got), (_, want) = loss(fast)(log_q, log_k, v), loss(slow)(log_q, log_k, v_finite)
    for name, g, w in zip(("d log_q", "d log_k", "dv"), got, want):
        assert np.all(np.isfinite(g)), name
        np.testing.assert_allclose(np.where(real, g, 0.0), w, atol=1e-11, err_msg=name)
        assert np.all(np.asarray(g)[0, -3:] == 0) or name == "d log_q", name


def test_log_feature_step_equals_the_causal_forms(x64):
    """Decoding one token at a time equals the chunked and prefix forms, with a large spread of exponents."""
    log_q, log_k, v, _ = _log_features(spread=30.0)
    chunked, prefix = jax.jit(lambda *a: [
        la.linear_attention_from_log_features(*a, causal=True, method=method, chunk_size=4)
        for method in ("chunked", "prefix")
    ])(log_q, log_k, v)
    np.testing.assert_allclose(prefix, chunked, atol=1e-12)
    state = la.log_feature_init_state(2, 2, 6, 3, jnp.float64)
    step = jax.jit(la.log_feature_step)
    for t in range(log_q.shape[1]):
        state, out = step(state, log_q[:, t], log_k[:, t], v[:, t])
        np.testing.assert_allclose(out, chunked[:, t], atol=1e-12, err_msg=f"step {t}")


def test_log_features_with_exponents_beyond_float32_match_float64():
    """Exponents ~N(0, 500^2) (exp over- and underflows float32 for nearly all of them, and every query's
    kernel sum is dominated by a few (feature, key) pairs): every float32 form, and decoding, stay within
    float32 rounding of the float64 log-space reference. Rounding an exponent of size |l| ~ 1e3 moves it by
    ~1e-4, hence the tolerance."""
    log_q, log_k, v, mask = (np.asarray(a, np.float32) if a.dtype != bool else a
                             for a in _log_features(length=40, f=16, spread=500.0))
    assert np.mean(np.abs(log_k) > 88) > 0.8, "the exponents must leave float32's range"
    with jax.enable_x64(True):
        want = {causal: np.asarray(_log_space_reference(*(np.asarray(a, np.float64) for a in (log_q, log_k, v)),
                                                        mask, causal)) for causal in (False, True)}
    real = np.asarray(mask)[..., None, None]
    forms = jax.jit(lambda *a: [la.linear_attention_from_log_features(
        *a, mask=jnp.asarray(mask), causal=causal, method=method, chunk_size=chunk)
        for causal, method, chunk in LOG_FORMS])(log_q, log_k, v)
    for (causal, method, _), got in zip(LOG_FORMS, forms):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.where(real, got, 0.0), np.where(real, want[causal], 0.0), atol=1e-3,
                                   err_msg=(causal, method))
    state = la.log_feature_init_state(2, 2, 16, 3)
    step = jax.jit(la.log_feature_step)
    for t in range(30):  # batch 1 has no padding
        state, out = step(state, log_q[:, t], log_k[:, t], v[:, t])
        np.testing.assert_allclose(out[1], want[True][1, t], atol=1e-3, err_msg=f"step {t}")


def test_causal_log_features_never_look_ahead_in_floating_point():
    """Past outputs are bitwise unchanged when later keys become huge (exponents +1e3 above all others):
    inside a chunk, no query's weights depend on a later key's stabiliser."""
    log_q, log_k, v, _ = (np.asarray(a, np.float32) if a.dtype != bool else a
                          for a in _log_features(length=16, spread=20.0))
    changed = log_k.copy()
    changed[:, 9:] += 1e3
    for method in ("chunked", "prefix"):
        fn = jax.jit(lambda lk: la.linear_attention_from_log_features(
            log_q, lk, v, causal=True, method=method, chunk_size=16))
        np.testing.assert_array_equal(np.asarray(fn(changed))[:, :9], np.asarray(fn(log_k))[:, :9])
