"""Transformer-VQ attention against dense softmax attention over the quantised keys (float64 references).

The dense references are written here (not imported from ops/attention.py): an explicit weight/bias matrix
built with Python loops straight from the definition, then a masked softmax.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops import vq_attention as vqa

DIVISORS_OF_12 = (1, 2, 3, 4, 6, 12)


# ------------------------------------------------------------------------------------------------ references


def causal_bias_matrix(bias, length, block_len):
    """(H, L, L) additive scores and (L, L) visibility, by the definition.

    Key j is visible to query i iff j <= i; it gets bias[i - j] iff block(j) >= block(i) - 1.
    """
    heads = 1 if bias is None else bias.shape[0]
    extra = np.zeros((heads, length, length))
    visible = np.zeros((length, length), bool)
    for i in range(length):
        for j in range(i + 1):
            visible[i, j] = True
            if bias is not None and j // block_len >= i // block_len - 1:
                extra[:, i, j] = bias[:, i - j]
    return extra, visible


def bidirectional_bias_matrix(bias, length, block_len):
    """(H, L, L) additive scores: bias[i - j + C - 1] inside the window |i - j| < C, else 0; all visible."""
    heads = 1 if bias is None else bias.shape[0]
    extra = np.zeros((heads, length, length))
    for i in range(length):
        for j in range(length):
            if bias is not None and abs(i - j) < block_len:
                extra[:, i, j] = bias[:, i - j + block_len - 1]
    return extra, np.ones((length, length), bool)


@jax.jit
def dense_reference(q, v, codebook, assignments, keys, extra, visible, mask):
    """Dense attention with scores q . k (hard) or log sum_s a_js exp(q . c_s) (soft), plus `extra`."""
    if keys is not None:
        scores = jnp.einsum("blhk,bmhk->bhlm", q, keys)
    else:
        code_scores = jnp.einsum("blhk,hsk->bhls", q, codebook)
        scores = jax.scipy.special.logsumexp(code_scores[:, :, :, None, :], axis=-1,
                                             b=jnp.moveaxis(assignments, 1, 2)[:, :, None, :, :])
    scores = scores + extra[None]
    ok = visible[None, None] & mask[:, None, None, :]
    scores = jnp.where(ok, scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = jnp.where(ok, weights, 0.0)
    return jnp.einsum("bhlm,bmhv->blhv", weights, v)


def make_inputs(seed, batch=2, length=12, heads=2, key_dim=3, value_dim=2, num_codes=3, block_len=4,
                soft=False, bidirectional=False, scale=1.0, dtype=jnp.float64):
    # numpy draws: no per-shape compilation of random ops.
    rng = np.random.default_rng(seed)
    q = scale * rng.normal(size=(batch, length, heads, key_dim))
    v = rng.normal(size=(batch, length, heads, value_dim))
    codebook = rng.normal(size=(heads, num_codes, key_dim))
    if soft:
        logits = 2 * rng.normal(size=(batch, length, heads, num_codes))
        assignments = np.exp(logits - logits.max(-1, keepdims=True))
        assignments /= assignments.sum(-1, keepdims=True)
        k_hat = None
    else:
        # Few codes, many keys: every code repeats, so the cache's log-count term matters.
        codes = rng.integers(0, num_codes, (batch, length, heads))
        assignments = np.eye(num_codes)[codes]
        k_hat = codebook[np.arange(heads), codes]
    width = 2 * block_len - 1 if bidirectional else 2 * block_len
    bias = rng.normal(size=(heads, width))
    # Sequence 0 all real; sequence 1 with a hole in the middle and right padding.
    mask = np.ones((batch, length), bool)
    if batch > 1:
        mask[1, length // 3] = False
        mask[1, -2:] = False
    arrays = dict(q=q, v=v, codebook=codebook, assignments=assignments, quantized_keys=k_hat, bias=bias)
    inputs = {name: None if x is None else jnp.asarray(x, dtype) for name, x in arrays.items()}
    return dict(inputs, mask=jnp.asarray(mask))


def reference_for(inputs, block_len, causal):
    builder = causal_bias_matrix if causal else bidirectional_bias_matrix
    extra, visible = builder(np.asarray(inputs["bias"]) if inputs["bias"] is not None else None,
                             inputs["q"].shape[1], block_len)
    return dense_reference(inputs["q"], inputs["v"], inputs["codebook"], inputs["assignments"],
                           inputs["quantized_keys"], jnp.asarray(extra), jnp.asarray(visible), inputs["mask"])


_vq_attention = jax.jit(vqa.vq_attention, static_argnames=("block_len", "causal", "formulation",
                                                          "grad_through_cache"))


def run(inputs, block_len, **kwargs):
    return _vq_attention(inputs["q"], inputs["v"], inputs["codebook"], inputs["assignments"],
                            block_len=block_len, quantized_keys=inputs["quantized_keys"], bias=inputs["bias"],
                            mask=inputs["mask"], **kwargs)


def assert_close_at_real(actual, expected, mask, atol=1e-12):
    real = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(actual)[real], np.asarray(expected)[real], atol=atol, rtol=atol)


# ---------------------------------------------------------------------------------------------- causal


def test_bias_window_definition_is_block_aligned():
    # C = 2, L = 6: query 4 (block 2) sees keys 2, 3 (block 1) and 4 with bias; keys 0, 1 without.
    bias = np.arange(4.0)[None] + 1.0
    extra, visible = causal_bias_matrix(bias, 6, 2)
    np.testing.assert_array_equal(extra[0, 4], [0, 0, 3, 2, 1, 0])
    np.testing.assert_array_equal(extra[0, 5], [0, 0, 4, 3, 2, 1])
    assert visible[4].tolist() == [True] * 5 + [False]


# Every compile costs ~1 s of CPU, so the default run covers each block length once and the exhaustive
# sweeps of the other combinations are marked slow.
def _sweep(default, extra):
    return list(default) + [pytest.param(*(p if isinstance(p, tuple) else (p,)), marks=pytest.mark.slow)
                            for p in extra]


@pytest.mark.parametrize("block_len", DIVISORS_OF_12)  # with and without cached blocks (C = 6, 12: none)
def test_causal_hard_parallel_equals_dense(x64, block_len):
    inputs = make_inputs(0, block_len=block_len)
    out = run(inputs, block_len, formulation="parallel")
    assert_close_at_real(out, reference_for(inputs, block_len, causal=True), inputs["mask"])


@pytest.mark.parametrize("block_len", _sweep([1, 4], [2, 3, 6, 12]))
def test_causal_hard_serial_equals_dense(x64, block_len):
    inputs = make_inputs(0, block_len=block_len)
    out = run(inputs, block_len, formulation="serial")
    assert_close_at_real(out, reference_for(inputs, block_len, causal=True), inputs["mask"])


@pytest.mark.parametrize("block_len,formulation",
                         _sweep([(3, "parallel"), (3, "serial")], [(1, "parallel"), (4, "serial")]))
def test_causal_soft_equals_dense(x64, block_len, formulation):
    inputs = make_inputs(1, block_len=block_len, soft=True)
    out = run(inputs, block_len, formulation=formulation)
    assert_close_at_real(out, reference_for(inputs, block_len, causal=True), inputs["mask"])


@pytest.mark.parametrize("formulation", _sweep(["parallel"], ["serial"]))
def test_causal_length_not_a_multiple_of_the_block(x64, formulation):
    inputs = make_inputs(2, length=10, block_len=4)
    out = run(inputs, 4, formulation=formulation)
    assert out.shape == (2, 10, 2, 2)
    assert_close_at_real(out, reference_for(inputs, 4, causal=True), inputs["mask"])


def test_causal_without_bias_equals_dense(x64):
    inputs = make_inputs(3, block_len=2)
    inputs["bias"] = None
    assert_close_at_real(run(inputs, 2), reference_for(inputs, 2, causal=True), inputs["mask"])


def test_cache_is_needed_and_counted_with_log_counts(x64):
    # A wrong cache (sums instead of count * mean, no log-count term, block i-1 cached) would not match.
    inputs = make_inputs(4, block_len=2, num_codes=2)
    reference = reference_for(inputs, 2, causal=True)
    out = run(inputs, 2)
    assert_close_at_real(out, reference, inputs["mask"])
    # Dropping the codes from the cache changes the answer: the cache is really in use.
    no_cache = dict(inputs, assignments=jnp.zeros_like(inputs["assignments"]))
    assert np.abs(np.asarray(run(no_cache, 2) - reference)[:, 4:]).max() > 1e-3


def test_serial_equals_parallel_with_gradients(x64):
    inputs = make_inputs(5, block_len=4)

    def loss(q, k_hat, v, bias, formulation):
        out = vqa.vq_attention(q, v, inputs["codebook"], inputs["assignments"], block_len=4,
                               quantized_keys=k_hat, bias=bias, mask=inputs["mask"], formulation=formulation)
        return jnp.sum(jnp.sin(out) * inputs["mask"][..., None, None])

    args = (inputs["q"], inputs["quantized_keys"], inputs["v"], inputs["bias"])
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), static_argnums=4)
    value_parallel, grads_parallel = value_and_grad(*args, "parallel")
    value_serial, grads_serial = value_and_grad(*args, "serial")
    np.testing.assert_allclose(value_parallel, value_serial, rtol=1e-12)
    for gp, gs in zip(grads_parallel, grads_serial):
        np.testing.assert_allclose(gp, gs, atol=1e-12)


@pytest.mark.parametrize("grad_through_cache", [False, True])
def test_gradients_local_exact_cache_stopped(x64, grad_through_cache):
    block_len, length = 2, 8
    inputs = make_inputs(6, batch=1, length=length, heads=1, block_len=block_len)
    inputs["mask"] = jnp.ones((1, length), bool)
    extra, visible = causal_bias_matrix(np.asarray(inputs["bias"]), length, block_len)

    def block(q, k_hat, v):
        return vqa.vq_attention(q, v, inputs["codebook"], inputs["assignments"], block_len=block_len,
                                quantized_keys=k_hat, bias=inputs["bias"], mask=inputs["mask"],
                                grad_through_cache=grad_through_cache)[0, :, 0, 0]

    def dense(q, k_hat, v):
        return dense_reference(q, v, inputs["codebook"], inputs["assignments"], k_hat, jnp.asarray(extra),
                               jnp.asarray(visible), inputs["mask"])[0, :, 0, 0]

    args = (inputs["q"], inputs["quantized_keys"], inputs["v"])
    jac_block = jax.jit(jax.jacrev(block, argnums=(0, 1, 2)))(*args)
    jac_dense = jax.jit(jax.jacrev(dense, argnums=(0, 1, 2)))(*args)
    i, j = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
    local = (j // block_len >= i // block_len - 1)  # (query i, key j) pairs attended exactly
    # Queries: exact everywhere (q . c_s of the cache equals q . k_hat_j).
    np.testing.assert_allclose(jac_block[0], jac_dense[0], atol=1e-12)
    # Keys: exact for the local blocks; the cache holds codes, so no gradient to older k_hat.
    jk_block, jk_dense = jac_block[1][:, 0, :, 0], jac_dense[1][:, 0, :, 0]
    np.testing.assert_allclose(jk_block, np.where(local[..., None], jk_dense, 0.0), atol=1e-12)
    # Values: exact for the local blocks; older ones through the cache only with grad_through_cache.
    jv_block, jv_dense = jac_block[2][:, 0, :, 0, 0], jac_dense[2][:, 0, :, 0, 0]
    expected = jv_dense if grad_through_cache else np.where(local, jv_dense, 0.0)
    np.testing.assert_allclose(jv_block, expected, atol=1e-12)
    assert np.abs(jv_dense[~local]).max() > 1e-6  # the old blocks do matter in the dense form


def test_one_shared_max_is_stable_in_float32():
    # Scores of order 100: exp overflows float32 unless one maximum shared by the cache and the local part
    # is subtracted. Compared with the float64 dense reference.
    inputs = make_inputs(7, block_len=2, scale=40.0, dtype=jnp.float32)
    out = run(inputs, 2)
    assert np.all(np.isfinite(np.asarray(out)))
    with jax.enable_x64(True):
        inputs64 = {name: None if x is None else jnp.asarray(np.asarray(x), bool if x.dtype == bool else "f8")
                    for name, x in inputs.items()}
        reference = reference_for(inputs64, 2, causal=True)
    assert_close_at_real(out, reference, inputs["mask"], atol=2e-4)


def test_padding_does_not_change_real_outputs(x64):
    inputs = make_inputs(8, block_len=3)
    pad = ~np.asarray(inputs["mask"])[..., None, None]
    noisy = dict(inputs)
    for name in ("q", "v", "quantized_keys"):
        noisy[name] = inputs[name] + 100.0 * pad
    noisy["assignments"] = jnp.where(pad, jnp.roll(inputs["assignments"], 1, axis=-1), inputs["assignments"])
    for causal in (True, False):
        inputs_bias = inputs if causal else dict(inputs, bias=inputs["bias"][:, :-1])
        noisy_bias = noisy if causal else dict(noisy, bias=noisy["bias"][:, :-1])
        assert_close_at_real(run(noisy_bias, 3, causal=causal), run(inputs_bias, 3, causal=causal),
                             inputs["mask"])


@pytest.mark.parametrize("block_len,soft",
                         _sweep([(1, False), (4, False), (3, True)], [(3, False), (4, True)]))
def test_decode_step_equals_parallel(x64, block_len, soft):
    inputs = make_inputs(9, length=10, block_len=block_len, soft=soft)
    inputs["mask"] = jnp.ones(inputs["mask"].shape, bool)
    expected = run(inputs, block_len)
    batch, length, heads, key_dim = inputs["q"].shape
    state = vqa.init_decode_state(batch, heads, key_dim, inputs["v"].shape[-1], inputs["codebook"].shape[1],
                                  block_len, jnp.float64)
    step = jax.jit(vqa.decode_step)
    outs = []
    for t in range(length):
        keys_t = None if soft else inputs["quantized_keys"][:, t]
        state, out_t = step(state, inputs["q"][:, t], inputs["v"][:, t], inputs["assignments"][:, t],
                            inputs["codebook"], quantized_key_t=keys_t, bias=inputs["bias"])
        outs.append(out_t)
    np.testing.assert_allclose(np.stack(outs, axis=1), expected, atol=1e-12)
    assert int(state.position) == length


# ---------------------------------------------------------------------------------------------- bidirectional


@pytest.mark.parametrize("block_len,soft",
                         _sweep([(2, False), (3, False), (12, False), (4, True)],
                                [(1, False), (4, False), (6, False), (1, True), (2, True), (3, True),
                                 (6, True), (12, True)]))
def test_bidirectional_equals_dense(x64, block_len, soft):
    inputs = make_inputs(10, block_len=block_len, soft=soft, bidirectional=True)
    out = run(inputs, block_len, causal=False)
    assert_close_at_real(out, reference_for(inputs, block_len, causal=False), inputs["mask"])


def test_bidirectional_length_not_a_multiple_of_the_block(x64):
    inputs = make_inputs(11, length=11, block_len=4, bidirectional=True)
    assert_close_at_real(run(inputs, 4, causal=False), reference_for(inputs, 4, causal=False), inputs["mask"])


def test_bidirectional_gradients_window_exact_aggregate_stopped(x64):
    block_len, length = 2, 9
    inputs = make_inputs(12, batch=1, length=length, heads=1, block_len=block_len, bidirectional=True)
    inputs["mask"] = jnp.ones((1, length), bool)
    extra, visible = bidirectional_bias_matrix(np.asarray(inputs["bias"]), length, block_len)

    def block(q, k_hat, v):
        out = vqa.vq_attention(q, v, inputs["codebook"], inputs["assignments"], block_len=block_len,
                               quantized_keys=k_hat, bias=inputs["bias"], mask=inputs["mask"], causal=False)
        return out[0, :, 0, 0]

    def dense(q, k_hat, v):
        return dense_reference(q, v, inputs["codebook"], inputs["assignments"], k_hat, jnp.asarray(extra),
                               jnp.asarray(visible), inputs["mask"])[0, :, 0, 0]

    args = (inputs["q"], inputs["quantized_keys"], inputs["v"])
    jac_block = jax.jit(jax.jacrev(block, argnums=(0, 1, 2)))(*args)
    jac_dense = jax.jit(jax.jacrev(dense, argnums=(0, 1, 2)))(*args)
    i, j = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
    window = np.abs(i - j) < block_len
    np.testing.assert_allclose(jac_block[0], jac_dense[0], atol=1e-12)
    jk_block, jk_dense = jac_block[1][:, 0, :, 0], jac_dense[1][:, 0, :, 0]
    np.testing.assert_allclose(jk_block, np.where(window[..., None], jk_dense, 0.0), atol=1e-12)
    jv_block, jv_dense = jac_block[2][:, 0, :, 0, 0], jac_dense[2][:, 0, :, 0, 0]
    np.testing.assert_allclose(jv_block, np.where(window, jv_dense, 0.0), atol=1e-12)
    assert np.abs(jv_dense[~window]).max() > 1e-6  # keys outside the window do matter in the dense form


# ---------------------------------------------------------------------------------------------- small pieces


def test_merge_of_count_weighted_means_is_associative(x64):
    rng = np.random.default_rng(0)
    parts = [(jnp.asarray(rng.integers(0, 3, (4,)).astype(float)), jnp.asarray(rng.normal(size=(4, 2))))
             for _ in range(3)]
    left = vqa._merge_stats(vqa._merge_stats(parts[0], parts[1]), parts[2])
    right = vqa._merge_stats(parts[0], vqa._merge_stats(parts[1], parts[2]))
    counts = sum(p[0] for p in parts)
    sums = sum(p[0][:, None] * p[1] for p in parts)
    for merged in (left, right):
        np.testing.assert_allclose(merged[0], counts)
        means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0)
        np.testing.assert_allclose(merged[1], means, atol=1e-12)


def test_normalize_qk_scale(x64):
    x = jax.random.normal(jax.random.key(0), (5, 16), jnp.float64) * 3 + 1
    for center in (False, True):
        y = np.asarray(vqa.normalize_qk(x, center=center, eps=0.0))
        centred = np.asarray(x) - (np.asarray(x).mean(-1, keepdims=True) if center else 0)
        expected = centred / np.sqrt(np.mean(centred**2, -1, keepdims=True)) * 16**-0.25
        np.testing.assert_allclose(y, expected, rtol=1e-12)
        np.testing.assert_allclose(np.sum(y * y, -1), 16**0.5, rtol=1e-12)  # so q . k = LN q . LN k / sqrt(K)


@pytest.mark.parametrize("case", ["bias", "codebook", "formulation", "assignments", "mask"])
def test_bad_inputs_raise(case):
    inputs = make_inputs(13, dtype=jnp.float32)
    kwargs = dict(block_len=4)
    if case == "bias":
        inputs["bias"] = inputs["bias"][:, :-1]
    elif case == "codebook":
        inputs["codebook"] = inputs["codebook"][:, :, :-1]
    elif case == "formulation":
        kwargs["formulation"] = "fast"
    elif case == "assignments":
        inputs["assignments"] = inputs["assignments"][..., :-1]
    else:
        inputs["mask"] = inputs["mask"][:, :-1]
    with pytest.raises(ValueError, match=case if case != "assignments" else "assignments"):
        run(inputs, **kwargs)


@pytest.mark.parametrize("causal", [True, False])
def test_soft_far_codes_do_not_swamp_the_used_ones(x64, causal):
    # Codes 1, 2 are 300x farther out and (as softmax(-d^2) gives) used by no key: q . c_s is huge for them, and a
    # per-query shift of max_s q . c_s would underflow every local key. The result must stay the dense one.
    inputs = make_inputs(13, soft=True, bidirectional=not causal, block_len=4)
    codebook = np.asarray(inputs["codebook"]).copy()
    codebook[:, 1:] *= 300.0
    keys = codebook[:, 0] + 0.1 * np.random.default_rng(13).normal(size=inputs["q"].shape)
    dist = np.sum((keys[..., None, :] - codebook) ** 2, axis=-1)
    assignments = np.exp(-(dist - dist.min(-1, keepdims=True)))
    inputs.update(codebook=jnp.asarray(codebook), assignments=jnp.asarray(assignments / assignments.sum(-1)[..., None]))
    assert_close_at_real(run(inputs, 4, causal=causal), reference_for(inputs, 4, causal=causal), inputs["mask"])
