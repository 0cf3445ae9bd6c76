"""Tests for ops/performer.py: random projections, FAVOR+ accuracy, stabilisers, causal form and decoding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import attention, linear_attention, performer


def _projection(num_features, dim, seed=0):
    """A test projection drawn with numpy (cheaper than compiling the JAX sampler in every test)."""
    rng = np.random.default_rng(seed)
    blocks = [np.linalg.qr(rng.normal(size=(dim, dim)))[0].T for _ in range(-(-num_features // dim))]
    rows = np.concatenate(blocks)[:num_features]
    return jnp.asarray(rows * np.linalg.norm(rng.normal(size=(num_features, dim)), axis=1)[:, None])


def _qkv(b=1, length=24, h=2, k=8, kv=4, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(b, length, h, k), (b, length, h, k), (b, length, h, kv)]
    q, key, v = (rng.normal(size=s) for s in shapes)
    return jnp.asarray(q * scale), jnp.asarray(key * scale), jnp.asarray(v)


def _favor_exponent(x, w):
    """log(sqrt(F) phi(x)) = w . x' - |x'|^2 / 2 with x' = x / K^(1/4) (docs/methods.md section 6), written out
    here (not ops.performer's) so that the references below share no code with the op: (..., K) -> (..., F)."""
    scaled = x * x.shape[-1] ** -0.25
    return scaled @ w.T - 0.5 * (scaled * scaled).sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("scaling", ["chi", "sqrt_dim"])
def test_orthogonal_blocks_and_row_norms(x64, scaling):
    k, f = 8, 20
    w = np.asarray(
        performer.gaussian_orthogonal_matrix(jax.random.PRNGKey(0), f, k, scaling=scaling, dtype=jnp.float64)
    )
    assert w.shape == (f, k)
    norms = np.linalg.norm(w, axis=1)
    if scaling == "sqrt_dim":
        np.testing.assert_allclose(norms, math.sqrt(k), rtol=1e-6)
    else:
        assert np.std(norms) > 0.05  # chi-distributed, not constant
    for start in range(0, f, k):  # rows within one block are orthogonal
        block = w[start : start + k] / norms[start : start + k, None]
        np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-6)
    same = performer.gaussian_orthogonal_matrix(
        jax.random.PRNGKey(0), f, k, scaling=scaling, dtype=jnp.float64
    )
    other = performer.gaussian_orthogonal_matrix(
        jax.random.PRNGKey(1), f, k, scaling=scaling, dtype=jnp.float64
    )
    np.testing.assert_array_equal(same, w)
    assert not np.allclose(other, w)


def _orthogonal_reference(key, num_features, dim, dtype):
    """The "chi" projection rebuilt in numpy float64 from the same Gaussian draw (jax.random.normal in `dtype`):
    QR of each K x K block with the signs of R's diagonal folded into Q, rows scaled by chi norms."""
    blocks = -(-num_features // dim)
    gaussians = np.asarray(jax.random.normal(key, (blocks * dim * dim + num_features * dim,), dtype), np.float64)
    rows = []
    for block in gaussians[: blocks * dim * dim].reshape(blocks, dim, dim):
        q, r = np.linalg.qr(block)
        rows.append((q * np.sign(np.diag(r))[None, :]).T)
    norms = np.linalg.norm(gaussians[blocks * dim * dim :].reshape(num_features, dim), axis=1)
    return np.concatenate(rows)[:num_features] * norms[:, None]


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
def test_projection_is_drawn_and_orthogonalised_in_the_requested_dtype(x64, dtype, tolerance):
    """float64: the Gaussians, QR and norms are float64 (they were drawn and orthogonalised in float32 and then
    cast, orthogonal only to ~1e-7), and FAVOR+ with that projection equals the float64 estimator built from
    the numpy reference projection to float64 precision. float32: the same draw as before."""
    key, f, k = jax.random.PRNGKey(3), 20, 8
    w = performer.gaussian_orthogonal_matrix(key, f, k, dtype=dtype)
    assert w.dtype == dtype
    reference = _orthogonal_reference(key, f, k, dtype)
    np.testing.assert_allclose(np.asarray(w, np.float64), reference, atol=tolerance * np.abs(reference).max())
    unit = np.asarray(w, np.float64) / np.linalg.norm(np.asarray(w, np.float64), axis=1, keepdims=True)
    for start in range(0, f, k):
        block = unit[start : start + k]
        np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=tolerance)
    if dtype != jnp.float64:
        return
    q, key_, v = _qkv(length=12, seed=4)
    for causal in (False, True):
        got = performer.favor_attention(q, key_, v, w, causal=causal, chunk_size=4)
        assert got.dtype == jnp.float64
        want = _dense_favor_reference(q, key_, v, jnp.asarray(reference), jnp.ones((1, 12), bool), causal)
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_kernel_estimate_is_unbiased(x64):
    """Average of phi(q) . phi(k) over independent projections -> exp(q . k / sqrt(K))."""
    k = 4
    rng = np.random.default_rng(0)
    q, key = (jnp.asarray(rng.normal(size=(1, 1, 1, k)) * 0.7) for _ in range(2))
    exact = float(jnp.exp(jnp.sum(q * key) / math.sqrt(k)))

    @jax.jit
    def estimate(draw_key):
        w = performer.gaussian_orthogonal_matrix(draw_key, 64, k, dtype=jnp.float64)
        # Without stabilisers: the raw estimator phi(q) . phi(k) (the stabilisers rescale it).
        return jnp.sum(jnp.exp(_favor_exponent(q, w) + _favor_exponent(key, w))) / 64

    estimates = jax.vmap(estimate)(jax.random.split(jax.random.PRNGKey(1), 256))
    assert float(jnp.mean(estimates)) == pytest.approx(exact, rel=0.03)


def test_error_falls_with_the_number_of_features(x64):
    """Mean relative error (4 seeds) against exact softmax attention; fixed q, k, v, |q| ~ |k| ~ sqrt(K)/2."""
    q, k, v = _qkv(scale=0.5)
    exact = attention.dot_product_attention(q, k, v)
    # The first F rows of a 256-row draw are a draw with F rows (F a multiple of K: whole orthogonal blocks).
    draws = jax.jit(
        jax.vmap(lambda key: performer.gaussian_orthogonal_matrix(key, 256, 8, dtype=jnp.float64))
    )(jax.random.split(jax.random.PRNGKey(0), 4))

    def relative_error(w):
        return jnp.linalg.norm(performer.favor_attention(q, k, v, w) - exact) / jnp.linalg.norm(exact)

    errors = {f: float(jnp.mean(jax.jit(jax.vmap(relative_error))(draws[:, :f]))) for f in (16, 64, 256)}
    assert errors[16] > errors[64] > errors[256], errors
    assert errors[256] < 0.6 * errors[16], errors  # ~1/sqrt(F) would give 0.25
    assert errors[256] < 0.3, errors


def test_hand_computed_tiny_causal_case(x64):
    """L = 3, K = 2, F = 2 with a fixed projection, against the formula written out by hand."""
    w = np.array([[1.0, 0.0], [0.5, -1.5]])
    q = np.array([[0.3, -0.2], [1.0, 0.5], [-0.7, 0.1]])
    k = np.array([[0.1, 0.4], [-0.5, 0.2], [0.6, -0.3]])
    v = np.array([[1.0], [2.0], [-3.0]])

    def phi(x):
        x = x / 2**0.25
        return np.exp(w @ x - x @ x / 2) / math.sqrt(2)

    expected = np.zeros((3, 1))
    for i in range(3):
        weights = np.array([phi(q[i]) @ phi(k[j]) for j in range(i + 1)])
        expected[i] = (weights[:, None] * v[: i + 1]).sum(0) / weights.sum()
    shape = lambda x: jnp.asarray(x)[None, :, None, :]  # noqa: E731
    for method in ("chunked", "prefix"):
        out = performer.favor_attention(
            shape(q), shape(k), shape(v), jnp.asarray(w), causal=True, method=method, chunk_size=2
        )
        np.testing.assert_allclose(np.asarray(out)[0, :, 0], expected, atol=1e-12)


def test_stabilisers_keep_large_norm_inputs_finite_in_float32():
    q, k, v = (x.astype(jnp.float32) for x in _qkv(scale=40.0))
    w = performer.gaussian_orthogonal_matrix(jax.random.PRNGKey(0), 64, 8)
    # exp(w . x' - |x'|^2 / 2) <= exp(|w|^2 / 2) cannot overflow, but for large |x| it underflows: without the
    # stabiliser every feature of these queries would be 0 (0 / 0 in the normaliser).
    raw_features = np.exp(_favor_exponent(np.asarray(q), np.asarray(w)))  # float32, as the op's inputs
    assert np.all(np.all(raw_features == 0, axis=-1)), "test inputs must underflow without the stabiliser"
    for causal in (False, True):
        out = jax.jit(performer.favor_attention, static_argnames="causal")(q, k, v, w, causal=causal)
        assert np.all(np.isfinite(out))
        assert np.max(np.abs(out)) <= np.max(np.abs(v)) + 1e-4  # a convex combination of values


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_decoding_steps_equal_causal_form(x64, kernel):
    q, k, v = _qkv(length=10, seed=1)
    k = k * jnp.linspace(0.2, 3.0, 10)[None, :, None, None]  # growing key norms: the running max moves
    w = _projection(16, 8, seed=2)
    expected = performer.favor_attention(q, k, v, w, kernel=kernel, causal=True, chunk_size=4)
    state = performer.favor_init_state(1, 2, 16, 4, jnp.float64)
    step = jax.jit(lambda state, q_t, k_t, v_t: performer.favor_step(state, q_t, k_t, v_t, w, kernel=kernel))
    for t in range(10):
        state, out = step(state, q[:, t], k[:, t], v[:, t])
        np.testing.assert_allclose(out, expected[:, t], atol=1e-11)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_is_ignored_including_the_key_stabiliser(x64, causal):
    q, k, v = _qkv(length=12)
    real = 8
    k_pad = k.at[:, real:].set(50.0)  # padded keys with huge exponents must not rescale the real ones
    mask = jnp.broadcast_to(jnp.arange(12)[None] < real, (1, 12))
    w = _projection(32, 8)
    fn = jax.jit(performer.favor_attention, static_argnames="causal")
    padded = fn(q, k_pad, v, w, mask=mask, causal=causal)[:, :real]
    unpadded = fn(q[:, :real], k[:, :real], v[:, :real], w, causal=causal)
    np.testing.assert_allclose(padded, unpadded, atol=1e-12)


def test_relu_kernel_and_feature_map_as_function(x64):
    q, k, v = _qkv(length=9)
    w = _projection(16, 8)
    out = linear_attention.linear_attention(q, k, v, feature_map=performer.favor_feature_map(w, "relu"))
    phi = lambda x: np.maximum(np.einsum("blhk,fk->blhf", np.asarray(x), np.asarray(w)), 0)  # noqa: E731
    scores = np.einsum("bqhf,bkhf->bhqk", phi(q), phi(k))
    expected = (
        np.einsum("bhqk,bkhv->bqhv", scores, np.asarray(v)) / np.moveaxis(scores.sum(-1), 1, 2)[..., None]
    )
    np.testing.assert_allclose(out, expected, atol=1e-12)
    # The softmax map runs on its log features: the same computation as favor_attention, with any eps whose
    # size is below the stabilised denominators (>= 1), e.g. linear_attention's default.
    for causal in (False, True):
        softmax_map = linear_attention.linear_attention(
            q, k, v, feature_map=performer.favor_feature_map(w), causal=causal, chunk_size=4
        )
        favor = performer.favor_attention(q, k, v, w, causal=causal, chunk_size=4)
        np.testing.assert_allclose(softmax_map, favor, atol=1e-14)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="scaling"):
        performer.gaussian_orthogonal_matrix(jax.random.PRNGKey(0), 4, 4, scaling="uniform")
    with pytest.raises(ValueError, match="kernel"):
        performer.favor_feature_map(jnp.ones((4, 4)), "cosine")
    with pytest.raises(ValueError, match="projection"):
        performer.softmax_kernel_features(jnp.ones((1, 2, 1, 4)), jnp.ones((4, 3)), is_query=True)



def _dense_favor_reference(q, k, v, w, mask, causal):
    """Quadratic FAVOR+ with unstabilised features (exact enough in float64 for exponents > -700)."""
    features = lambda x: jnp.exp(_favor_exponent(x, w)) / math.sqrt(w.shape[0])  # noqa: E731
    scores = jnp.einsum("bqhf,bkhf->bhqk", features(q), features(k))
    allowed = mask[:, None, None, :]
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
    scores = jnp.where(allowed, scores, 0.0)
    return jnp.einsum("bhqk,bkhv->bqhv", scores, v) / jnp.moveaxis(scores.sum(-1), 1, 2)[..., None]


@pytest.mark.parametrize("method", ["chunked", pytest.param("prefix", marks=pytest.mark.slow)])
def test_float32_matches_float64_dense_form_for_a_large_spread_of_key_norms(method):
    """Early keys of large norm have exponents ~110 below the later keys' max. With one key max per sequence
    the early causal denominators underflowed float32 (outputs off by ~80%, NaN gradients; what
    `linear_attention` with `favor_feature_map` still did, its default eps 1e-6 shrinking them too); with the
    running per-feature stabiliser and the normaliser's own derivative, the float32 causal values and
    d/d(q, k, v) stay within float32 rounding of the exact (float64, quadratic, unstabilised) FAVOR+ estimate;
    so do the bidirectional values, and both forms through `linear_attention` with the FAVOR map. "prefix" is
    slow (its associative scan takes ~3 s to compile with the gradient)."""
    length, real = 45, 43  # the chunk 16 does not divide 45: the last chunk is padded; 2 padded keys
    with jax.enable_x64(True):  # float64 numpy inputs (jnp arrays made outside x64 would be float32)
        q, k, v = (np.asarray(x) for x in _qkv(length=length, seed=7))
        w = np.asarray(_projection(32, 8, seed=8))
    k = k * np.geomspace(8.0, 0.3, length)[None, :, None, None]
    mask = jnp.asarray(np.arange(length)[None] < real)
    cotangent = np.random.default_rng(9).normal(size=v.shape) * np.asarray(mask)[..., None, None]

    def values_and_grads(fn, q, k, v):
        out, pullback = jax.vjp(fn, q, k, v)
        return (out, *pullback(cotangent.astype(out.dtype)))

    @jax.jit
    def fast(q, k, v, w):
        def attend(q, k, v, causal=True):
            return performer.favor_attention(q, k, v, w, mask=mask, causal=causal, method=method, chunk_size=16)

        def feature_map_form(causal):  # linear_attention with the FAVOR map and its default eps (1e-6)
            return linear_attention.linear_attention(
                q, k, v, feature_map=performer.favor_feature_map(w), mask=mask, causal=causal, method=method,
                chunk_size=16,
            )

        return values_and_grads(attend, q, k, v), attend(q, k, v, causal=False), [
            feature_map_form(causal) for causal in (True, False)
        ]

    @jax.jit
    def dense(q, k, v, w):
        causal_form = values_and_grads(lambda *x: _dense_favor_reference(*x, w, mask, True), q, k, v)
        return causal_form, _dense_favor_reference(q, k, v, w, mask, False)

    with jax.enable_x64(True):
        expected, expected_bidirectional = dense(*(jnp.asarray(x) for x in (q, k, v, w)))
        exponents = _favor_exponent(k, w).max(axis=-1)
        assert expected_bidirectional.dtype == jnp.float64
    assert exponents.max() - exponents.min() > 100, "test inputs must span a large range of key scales"
    causal, bidirectional, (map_causal, map_bidirectional) = fast(*(jnp.asarray(x, jnp.float32) for x in (q, k, v, w)))
    checks = [
        ("out", causal[0][:, :real], expected[0][:, :real]),
        ("dq", causal[1], expected[1]),
        ("dk", causal[2], expected[2]),
        ("dv", causal[3], expected[3]),
        ("bidirectional out", bidirectional, expected_bidirectional),
        ("feature map, causal", map_causal[:, :real], expected[0][:, :real]),
        ("feature map, bidirectional", map_bidirectional, expected_bidirectional),
    ]
    for name, got, want in checks:
        assert got.dtype == jnp.float32 and np.all(np.isfinite(got)), name
        np.testing.assert_allclose(got, want, atol=1e-4 * np.max(np.abs(want)), err_msg=name)


def test_gradients_of_every_form_equal_the_dense_reference(x64):
    """d/d(q, k, v) of the causal chunked and prefix forms and of the bidirectional form in float64 against
    autodiff of the quadratic form, padded keys included. One compilation for all (~2.5 s of CPU), so it runs
    by default: the float32 test above checks the gradients of the causal chunked form only."""
    q, k, v = _qkv(length=11, seed=3)
    k = k * jnp.linspace(2.0, 0.3, 11)[None, :, None, None]
    w = _projection(16, 8, seed=4)
    mask = jnp.asarray(np.arange(11)[None] < 9)
    cotangent = jnp.asarray(np.random.default_rng(5).normal(size=v.shape)) * mask[..., None, None]
    forms = {"causal chunked": (True, "chunked"), "causal prefix": (True, "prefix"),
             "bidirectional": (False, "chunked")}

    @jax.jit
    def fast_and_slow(q, k, v):
        def grads(fn):
            return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent), argnums=(0, 1, 2))(q, k, v)

        def form(causal, method):
            fast = grads(lambda q, k, v: performer.favor_attention(
                q, k, v, w, mask=mask, causal=causal, method=method, chunk_size=4  # 4 does not divide 11
            ))
            return fast, grads(lambda q, k, v: _dense_favor_reference(q, k, v, w, mask, causal))

        return {name: form(*options) for name, options in forms.items()}

    # XLA's optimisation passes cost more than they save at these sizes (compile time ~4 s -> ~2.5 s).
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        results = fast_and_slow(q, k, v)
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    for form, (fast, slow) in results.items():
        for name, got, expected in zip(("dq", "dk", "dv"), fast, slow):
            assert np.abs(np.asarray(expected)).max() > 1e-3, (form, name)
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, err_msg=f"{form}: {name}")


def test_key_log_scale_equals_scaled_features(x64):
    """linear_attention_from_features(phi_k, key_log_scale=c) equals the quadratic form with features
    phi_k * exp(c), and its gradient w.r.t. c is that of the quadratic form (causal chunked form)."""
    rng = np.random.default_rng(6)
    phi_q, phi_k = (jnp.asarray(rng.uniform(0.1, 1.0, size=(2, 10, 2, 5))) for _ in range(2))
    v = jnp.asarray(rng.normal(size=(2, 10, 2, 3)))
    log_scale = jnp.asarray(rng.normal(size=(2, 10, 2)) * 3.0)
    mask = jnp.asarray(np.arange(10)[None] < np.array([[7], [10]]))

    def fast(log_scale):
        return linear_attention.linear_attention_from_features(
            phi_q, phi_k, v, mask=mask, causal=True, chunk_size=4, key_log_scale=log_scale
        )

    def quadratic(log_scale):
        scores = jnp.einsum("bqhf,bkhf->bhqk", phi_q, phi_k * jnp.exp(log_scale)[..., None])
        allowed = mask[:, None, None, :] & jnp.tril(jnp.ones((10, 10), bool))
        scores = jnp.where(allowed, scores, 0.0)
        return jnp.einsum("bhqk,bkhv->bqhv", scores, v) / jnp.moveaxis(scores.sum(-1), 1, 2)[..., None]

    def value_and_grad(fn):
        return jax.jit(jax.value_and_grad(lambda c: jnp.sum(jnp.sin(fn(c)))))(log_scale)

    (fast_loss, fast_grad), (slow_loss, slow_grad) = value_and_grad(fast), value_and_grad(quadratic)
    assert float(fast_loss) == pytest.approx(float(slow_loss), rel=1e-12)
    np.testing.assert_allclose(fast_grad, slow_grad, rtol=1e-10, atol=1e-13)
    assert np.all(np.asarray(fast_grad)[0, 7:] == 0)  # padded keys do not matter
    with pytest.raises(ValueError, match="key_log_scale"):
        linear_attention.linear_attention_from_features(phi_q, phi_k, v, key_log_scale=log_scale[:, :, 0])
