"""Vector quantisation ops against explicit float64 references and their analytic gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ops import vq


def _rng_arrays(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=shape)) for shape in shapes]


# ------------------------------------------------------------------------------------------- nearest code


def test_nearest_code_matches_brute_force(x64):
    x, codebook = _rng_arrays(0, (10, 4), (6, 4))
    diffs = np.asarray(x)[:, None, :] - np.asarray(codebook)[None, :, :]
    dist = np.sum(diffs**2, axis=-1)
    codes, sq = vq.nearest_code(x, codebook)
    np.testing.assert_array_equal(codes, dist.argmin(-1))
    np.testing.assert_allclose(sq, dist.min(-1), rtol=1e-12)
    np.testing.assert_allclose(vq.squared_distances(x, codebook), dist, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(vq.gather_codes(codes, codebook), np.asarray(codebook)[dist.argmin(-1)])


def test_nearest_code_per_head_and_chunked(x64):
    x, codebook = _rng_arrays(1, (11, 3, 4), (3, 5, 4))
    codes, sq = vq.nearest_code(x, codebook)
    for h in range(3):  # brute force per head: head h of x against codebook h only
        dist = np.sum((np.asarray(x)[:, h, None, :] - np.asarray(codebook)[h][None]) ** 2, axis=-1)
        np.testing.assert_array_equal(codes[:, h], dist.argmin(-1))
        np.testing.assert_allclose(sq[:, h], dist.min(-1), rtol=1e-12)
    chunked_codes, chunked_sq = vq.nearest_code(x, codebook, chunk_size=4)  # 11 = 4 + 4 + 3 (padded)
    np.testing.assert_array_equal(chunked_codes, codes)
    np.testing.assert_allclose(chunked_sq, sq, rtol=1e-12)
    gathered = vq.gather_codes(codes, codebook)
    np.testing.assert_allclose(gathered, np.asarray(codebook)[np.arange(3), np.asarray(codes)])


def test_nearest_code_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="codebook"):
        vq.nearest_code(jnp.zeros((4, 3)), jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match="per-head"):
        vq.nearest_code(jnp.zeros((4, 2, 3)), jnp.zeros((3, 5, 3)))


# ------------------------------------------------------------------------------------ gradient estimators


def test_straight_through_value_and_gradient(x64):
    x, q = _rng_arrays(2, (5,), (5,))
    np.testing.assert_allclose(vq.straight_through(x, q), q, rtol=1e-15)
    jac_x, jac_q = jax.jacobian(vq.straight_through, argnums=(0, 1))(x, q)
    np.testing.assert_allclose(jac_x, np.eye(5))
    np.testing.assert_allclose(jac_q, 0.0)


def test_rotation_trick_value_and_jacobian(x64):
    x, q = _rng_arrays(3, (4,), (4,))
    x, q = np.asarray(x), 2.5 * np.asarray(q)
    out = vq.rotation_trick(jnp.asarray(x), jnp.asarray(q))
    np.testing.assert_allclose(out, q, rtol=1e-12)
    # Analytic G = (|q| / |x|) (I - 2 r r^T + 2 q_hat x_hat^T), r = (x_hat + q_hat) / |x_hat + q_hat|.
    x_hat, q_hat = x / np.linalg.norm(x), q / np.linalg.norm(q)
    r = (x_hat + q_hat) / np.linalg.norm(x_hat + q_hat)
    rotation = np.eye(4) - 2 * np.outer(r, r) + 2 * np.outer(q_hat, x_hat)
    gain = np.linalg.norm(q) / np.linalg.norm(x)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(4), atol=1e-12)  # a rotation ...
    np.testing.assert_allclose(rotation @ x_hat, q_hat, atol=1e-12)         # ... taking x_hat to q_hat
    jac_x, jac_q = jax.jacobian(vq.rotation_trick, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(q))
    np.testing.assert_allclose(jac_x, gain * rotation, atol=1e-12)
    np.testing.assert_allclose(jac_q, 0.0)
    # A loss gradient is G^T g.
    g = np.arange(4.0)
    grad = jax.grad(lambda z: jnp.dot(vq.rotation_trick(z, jnp.asarray(q)), g))(jnp.asarray(x))
    np.testing.assert_allclose(grad, gain * rotation.T @ g, atol=1e-12)


def test_rotation_trick_batched_and_degenerate(x64):
    x, q = _rng_arrays(4, (3, 2, 5), (3, 2, 5))
    np.testing.assert_allclose(vq.rotation_trick(x, q), q, rtol=1e-12)
    # q = -x (r undefined) and x = 0: finite, value still q.
    for z, target in ((x[0, 0], -x[0, 0]), (jnp.zeros(5), q[0, 0])):
        out = vq.rotation_trick(z, target)
        grad = jax.grad(lambda a: jnp.sum(vq.rotation_trick(a, target)))(z)
        np.testing.assert_allclose(out, target, rtol=1e-12)
        assert np.all(np.isfinite(np.asarray(grad)))


def test_simvq_codebook_trains_only_the_projection(x64):
    frozen, w, x = _rng_arrays(5, (2, 6, 3), (2, 3, 3), (7, 2, 3))
    codebook = vq.simvq_codebook(frozen, w)
    np.testing.assert_allclose(codebook, np.einsum("hsj,hjk->hsk", frozen, w), rtol=1e-12)

    def loss(frozen, w):
        cb = vq.simvq_codebook(frozen, w)
        codes, _ = vq.nearest_code(x, jax.lax.stop_gradient(cb))
        return vq.codebook_loss(x, vq.gather_codes(codes, cb))

    grad_frozen, grad_w = jax.grad(loss, argnums=(0, 1))(frozen, w)
    np.testing.assert_allclose(grad_frozen, 0.0)
    assert np.abs(np.asarray(grad_w)).max() > 1e-3
    with pytest.raises(ValueError, match="SimVQ"):
        vq.simvq_codebook(frozen, w[:1])


# ------------------------------------------------------------------------------------------ EMA codebook


def test_sgd_step_on_the_surrogate_is_the_ema_update(x64):
    heads, codes_n, width, decay = 2, 4, 3, 0.9
    x, c_sum = _rng_arrays(6, (3, 5, heads, width), (heads, codes_n, width))
    rng = np.random.default_rng(6)
    c_count = jnp.asarray(rng.uniform(0.0, 3.0, (heads, codes_n)))
    codes = jnp.asarray(rng.integers(0, codes_n, (3, 5, heads)))
    mask = jnp.asarray(rng.uniform(size=(3, 5)) > 0.3)

    # Reference EMA update, token by token.
    batch_sum = np.zeros((heads, codes_n, width))
    batch_count = np.zeros((heads, codes_n))
    for b in range(3):
        for t in range(5):
            if not mask[b, t]:
                continue
            for h in range(heads):
                batch_sum[h, codes[b, t, h]] += np.asarray(x)[b, t, h]
                batch_count[h, codes[b, t, h]] += 1
    expected_sum = decay * np.asarray(c_sum) + (1 - decay) * batch_sum
    expected_count = decay * np.asarray(c_count) + (1 - decay) * batch_count

    def loss(params):
        targets = vq.ema_targets(x, codes, params["c_sum"], params["c_count"], decay, mask)
        return vq.ema_surrogate_loss(params["c_sum"], params["c_count"], *targets)

    params = {"c_sum": c_sum, "c_count": c_count}
    value, grads = jax.value_and_grad(loss)(params)
    assert float(value) == 0.0
    optimizer = optax.sgd(1.0)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["c_sum"], expected_sum, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new["c_count"], expected_count, rtol=1e-12, atol=1e-12)
    # Codes nobody used decay towards zero; the codebook divides with a floor of 0.01.
    codebook = vq.codebook_from_ema(new["c_sum"], new["c_count"])
    np.testing.assert_allclose(codebook, expected_sum / np.maximum(expected_count, 0.01)[..., None],
                               rtol=1e-12)


def test_codebook_from_ema_has_no_gradient(x64):
    c_sum, c_count = _rng_arrays(7, (1, 3, 2), (1, 3))
    grads = jax.grad(lambda s, c: jnp.sum(vq.codebook_from_ema(s, c) ** 2), argnums=(0, 1))(c_sum, c_count)
    for g in grads:
        np.testing.assert_allclose(g, 0.0)


def test_ema_targets_reject_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        vq.ema_targets(jnp.zeros((2, 1, 3)), jnp.zeros((2, 1), int), jnp.zeros((1, 4, 3)), jnp.zeros((1, 4)),
                       1.0)


# ---------------------------------------------------------------------------------------------- losses


def test_commitment_and_codebook_losses(x64):
    x, q = _rng_arrays(8, (2, 4, 3, 5), (2, 4, 3, 5))
    mask = jnp.asarray([[True, True, False, True], [True, False, False, False]])
    per_token = np.sum((np.asarray(x) - np.asarray(q)) ** 2, axis=-1).sum(-1)  # summed over heads
    expected = per_token[np.asarray(mask)].mean()
    np.testing.assert_allclose(vq.commitment_loss(x, q, mask), expected, rtol=1e-12)
    np.testing.assert_allclose(vq.codebook_loss(x, q, mask), expected, rtol=1e-12)
    np.testing.assert_allclose(vq.commitment_loss(x, q), per_token.mean(), rtol=1e-12)
    gx, gq = jax.grad(vq.commitment_loss, argnums=(0, 1))(x, q, mask)
    np.testing.assert_allclose(gq, 0.0)
    expected_grad = 2 * (np.asarray(x) - np.asarray(q)) * np.asarray(mask)[..., None, None] / 4  # 4 real
    np.testing.assert_allclose(gx, expected_grad, rtol=1e-12)
    gx, gq = jax.grad(vq.codebook_loss, argnums=(0, 1))(x, q, mask)
    np.testing.assert_allclose(gx, 0.0)
    assert np.abs(np.asarray(gq)).max() > 0


def test_soft_assignments(x64):
    x, codebook = _rng_arrays(9, (6, 2, 3), (2, 4, 3))
    dist = np.sum((np.asarray(x)[:, :, None, :] - np.asarray(codebook)[None]) ** 2, -1)
    for tau in (0.5, 2.0):
        logits = -dist / tau
        expected = np.exp(logits - logits.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(vq.soft_assignments(x, codebook, tau), expected, rtol=1e-10)
    # A vanishing temperature gives the hard nearest code.
    hard = vq.soft_assignments(x, codebook, 1e-6)
    np.testing.assert_allclose(hard, np.eye(4)[dist.argmin(-1)], atol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        vq.soft_assignments(x, codebook, 0.0)


# ---------------------------------------------------------------------------------------------- k-means


def _quantization_error(x, codebook):
    return float(np.mean(vq.nearest_code(x, codebook)[1]))


def test_kmeans_is_deterministic_and_reduces_the_error(x64):
    rng = np.random.default_rng(10)
    centres = rng.normal(size=(5, 3)) * 4
    x = jnp.asarray(centres[rng.integers(0, 5, 200)] + 0.3 * rng.normal(size=(200, 3)))
    key = jax.random.key(0)
    codebooks = [vq.kmeans(x, 5, key, num_iters=n) for n in (0, 1, 2, 6)]
    np.testing.assert_array_equal(vq.kmeans(x, 5, key, num_iters=6), codebooks[-1])  # deterministic given key
    first = codebooks[0]
    errors = [_quantization_error(x, codebook) for codebook in codebooks]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] < 0.8 * errors[0]
    random_codebook = jnp.asarray(rng.normal(size=(5, 3)))
    assert errors[-1] < _quantization_error(x, random_codebook)
    # The initial centroids are data points (sampled without replacement).
    assert all(np.min(np.abs(np.asarray(x) - c).sum(-1)) == 0 for c in np.asarray(first))
    assert len({tuple(c) for c in np.asarray(first)}) == 5


def test_kmeans_ignores_masked_vectors(x64):
    rng = np.random.default_rng(11)
    real = rng.normal(size=(40, 2))
    x = jnp.asarray(np.concatenate([real, np.full((10, 2), 1e3)]))
    mask = jnp.asarray(np.arange(50) < 40)
    codebook = np.asarray(vq.kmeans(x, 4, jax.random.key(1), num_iters=8, mask=mask))
    assert np.abs(codebook).max() < 10  # no centroid was pulled to (or started at) the masked outliers
    # At convergence each centroid with members is the mean of its REAL members.
    refined = np.asarray(vq.kmeans(x, 4, jax.random.key(1), num_iters=30, mask=mask))
    codes = np.asarray(vq.nearest_code(jnp.asarray(real), jnp.asarray(refined))[0])
    for s in set(codes.tolist()):
        np.testing.assert_allclose(refined[s], real[codes == s].mean(0), atol=1e-9)


# --------------------------------------------------------------------------------------------------- FSQ


@pytest.mark.parametrize("levels", [(3,), (4,), (8, 6, 5), (7, 5, 5, 5, 5), (2, 4)])
def test_fsq_index_is_a_bijection(levels):
    size = vq.fsq_codebook_size(levels)
    indices = jnp.arange(size)
    codes = vq.fsq_indices_to_codes(indices, levels)
    assert codes.shape == (size, len(levels))
    assert len({tuple(c) for c in np.asarray(codes).tolist()}) == size  # distinct codes
    np.testing.assert_array_equal(vq.fsq_codes_to_indices(codes, levels), indices)
    # Every code lies on the per-channel grid {-(L//2), ..., L - 1 - L//2} / (L//2).
    for channel, level in enumerate(levels):
        grid = np.arange(-(level // 2), level - level // 2) / (level // 2)
        np.testing.assert_allclose(np.unique(np.asarray(codes)[:, channel]), grid, atol=1e-7)


def _fsq_bound_reference(z, levels, eps=1e-3):
    """The FSQ paper's bound, per channel (docs/methods.md section 12): half_l = (L - 1)(1 - eps) / 2,
    offset = 0.5 for even L (0 for odd), shift = tan(offset / half_l); bound(z) = tanh(z + shift) half_l - offset."""
    out = np.empty_like(z)
    for i, level in enumerate(levels):
        half_l = (level - 1) * (1 - eps) / 2
        offset = 0.5 if level % 2 == 0 else 0.0
        out[..., i] = np.tanh(z[..., i] + np.tan(offset / half_l)) * half_l - offset
    return out


@pytest.mark.parametrize("level", [2, 3, 4, 5, 6, 7, 8])
def test_fsq_bound_rounds_onto_exactly_level_values(x64, level):
    z = jnp.linspace(-20.0, 20.0, 20001)[:, None]
    rounded = np.unique(np.round(np.asarray(vq.fsq_bound(z, (level,)))))
    np.testing.assert_array_equal(rounded, np.arange(-(level // 2), level - level // 2))
    # The even-level offset keeps the origin on a grid point: bound(0) ~ 0 (tan shift: 0.043 off for L = 2).
    at_zero = float(vq.fsq_bound(jnp.zeros((1,)), (level,))[0])
    assert round(at_zero) == 0 and abs(at_zero) < (0.05 if level == 2 else 1e-3)


def test_fsq_quantize_values_indices_and_straight_through_gradient(x64):
    levels = (8, 5, 4)
    z = jnp.asarray(np.random.default_rng(12).normal(size=(50, 3)) * 2)
    half_width = np.array([4, 2, 2])  # L // 2
    bounded = _fsq_bound_reference(np.asarray(z), levels)
    np.testing.assert_allclose(vq.fsq_bound(z, levels), bounded, rtol=1e-12, atol=1e-12)
    codes = vq.fsq_quantize(z, levels)
    np.testing.assert_allclose(codes, np.round(bounded) / half_width, atol=1e-12)
    assert len(np.unique(np.round(bounded), axis=0)) > 20  # many distinct codes, not only the centre
    # index = sum_i (code_i (L_i // 2) + L_i // 2) basis_i, basis = (1, L_1, L_1 L_2)
    indices = vq.fsq_codes_to_indices(codes, levels)
    digits = np.round(bounded) + half_width  # 0 .. L_i - 1
    np.testing.assert_array_equal(indices, digits @ np.array([1, 8, 8 * 5]))
    np.testing.assert_allclose(vq.fsq_indices_to_codes(indices, levels, jnp.float64), codes, atol=1e-12)
    # Straight-through: d code / d z = bound'(z) / (L // 2) = (1 - tanh^2(z + shift)) half_l / (L // 2).
    grad = jax.grad(lambda a: jnp.sum(vq.fsq_quantize(a, levels)))(z)
    half_l = (np.array(levels) - 1) * (1 - 1e-3) / 2
    shift = np.tan(np.where(np.array(levels) % 2 == 0, 0.5, 0.0) / half_l)
    expected_grad = (1 - np.tanh(np.asarray(z) + shift) ** 2) * half_l / half_width
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-14)  # 1 - tanh^2 cancels near 0


def test_fsq_recommended_levels_table():
    for target, levels in vq.FSQ_RECOMMENDED_LEVELS.items():
        assert min(levels) >= 5
        assert abs(math.prod(levels) / target - 1) < 0.1
    assert vq.FSQ_RECOMMENDED_LEVELS[2**8] == (8, 6, 5)


def test_fsq_rejects_bad_levels():
    with pytest.raises(ValueError, match="levels"):
        vq.fsq_bound(jnp.zeros((2, 3)), (5, 5))
    with pytest.raises(ValueError, match="levels"):
        vq.fsq_quantize(jnp.zeros((2, 1)), (1,))


# ---------------------------------------------------------------------------------------- health metrics


def test_health_metrics_on_hand_made_assignments():
    # Two heads, S = 4, five tokens of which the last is padding (its codes must not count).
    codes = jnp.asarray([[0, 3], [0, 3], [1, 3], [1, 3], [2, 0]])
    mask = jnp.asarray([True, True, True, True, False])
    usage = vq.code_usage(codes, 4, mask)
    np.testing.assert_allclose(usage, [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(vq.code_entropy(usage), [math.log(2), 0.0], atol=1e-7)
    np.testing.assert_allclose(vq.dead_code_fraction(usage), [0.5, 0.75])
    uniform = vq.code_usage(jnp.arange(4)[:, None], 4)
    np.testing.assert_allclose(vq.code_entropy(uniform), [math.log(4)], rtol=1e-6)
    np.testing.assert_allclose(vq.dead_code_fraction(uniform), [0.0])


def test_relative_quantization_error():
    x = jnp.asarray([[[3.0, 4.0]], [[1.0, 0.0]], [[0.0, 2.0]]])   # (tokens, H=1, K=2)
    q = jnp.asarray([[[3.0, 4.0]], [[0.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(vq.relative_quantization_error(x, q), (0.0 + 1.0 + 0.5) / 3, rtol=1e-6)
    mask = jnp.asarray([True, False, True])
    np.testing.assert_allclose(vq.relative_quantization_error(x, q, mask), 0.25, rtol=1e-6)
