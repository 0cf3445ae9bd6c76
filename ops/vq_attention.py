"""Transformer-VQ attention: softmax attention over vector-quantised keys in linear time
(docs/methods.md sections 5, 6).

Shape legend (shared by the package): B batch, L length, H heads, K key width, V value width, S codebook
size, C block length. Queries and keys are (B, L, H, K), values (B, L, H, V), the codebook (H, S, K).

The function computed (causal). With keys quantised to codes, k_hat_j = c_{z_j}, and a learned per-distance
bias b[h, d] for d = 0 .. 2C-1, query i (in block n = i // C) attends to key j <= i with weight

    w_ij = exp(q_i . k_hat_j + b[i - j])   if j is in block n or block n - 1   (exact, with the bias)
    w_ij = exp(q_i . k_hat_j)              if j is in a block <= n - 2         (no bias)

out_i = sum_j w_ij v_j / sum_j w_ij. The bias window is block-aligned (2 blocks), not a distance: a key at
distance C + 1 gets the bias if it lies in the previous block and none if it lies two blocks back. Keys of
blocks <= n - 2 enter through a per-code cache: with n_s = #{j in blocks <= n-2 : z_j = s} and m_s the MEAN
of their values,
    sum_{j old} exp(q_i . k_hat_j) v_j = sum_s exp(q_i . c_s + log n_s) m_s,
which is exact (keys with the same code share the score), so the block algorithm equals dense attention over
the quantised keys with the two-block bias. One maximum, shared by the local and cache scores and
stop-gradiented, is subtracted before exp; weights are divided by the normaliser before they meet the values.
Cost O(L (2C + S)(K + V)) per head; memory O(L (2C + S)) for the parallel form, O(C (2C + S)) per step for
the serial one.

Formulations (equal to each other): "serial" runs a lax.scan over blocks carrying the cache and the previous
block; "parallel" computes per-block code statistics (counts, mean values), merges them with an associative
scan of count-weighted means, and shifts by two blocks so block n sees blocks <= n - 2.

Gradients: through the local (current and previous) blocks fully (q, k_hat -- which carries the quantiser's
STE / rotation gradient -- and v); through the cache only to q (via q . c_s). The cache statistics (counts and
means) are stop-gradiented (Transformer-XL style) unless grad_through_cache=True. The codebook enters the
cache scores as given: Transformer-VQ passes a stop-gradiented codebook.

Soft VQ (docs/methods.md section 6). Pass soft assignments a_js = p(s | k_j) and no quantised keys: the cache
holds soft counts sum_j a_js and the a-weighted mean values, and a local key's score is
log sum_s a_js exp(q . c_s) (+ bias), so the block algorithm again equals the dense form
w_ij = exp(b_ij) sum_s a_js exp(q_i . c_s); one-hot a gives back hard VQ.

Bidirectional form (an extension: the published Transformer-VQ is causal only). Query i attends to every
real key j with weight
    w_ij = exp(q_i . k_hat_j + b[i - j + C - 1])   if |i - j| < C   (exact window, bias table (H, 2C - 1))
    w_ij = exp(q_i . k_hat_j)                      otherwise        (the code aggregate)
so every key outside the window enters through its code (count and mean value) and every key inside it is
attended exactly and is excluded from the aggregate: no key is counted twice. Computation: blocks of C;
query block n sees blocks n-1, n, n+1 directly (the window lies inside them) and blocks <= n-2 and >= n+2
through prefix and suffix caches merged by count-weighted means. Keys of blocks n +- 1 that are outside the
window belong to the aggregate: they are computed directly (same value as the cache form) but with the
aggregate's gradients (no gradient to k_hat; assignments and values stop-gradiented unless
grad_through_cache).

Padding: mask (B, L) True = real token. Padded keys get no weight anywhere (local scores masked, assignments
zeroed before the cache statistics). Outputs at padded query positions are not meaningful (0 if no key is
visible). A length that is not a multiple of C is padded internally with masked positions.

Decoding: `init_decode_state` / `decode_step` keep a constant-size state: the per-code cache (counts, means),
a 2C-slot buffer with the previous and current blocks' quantised keys, values and assignments, and the
position. Stepping token by token equals the causal call.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

sg = jax.lax.stop_gradient



class Formulation(enum.StrEnum):
    """How causal `vq_attention` runs over the blocks (see "Formulations" in the module docstring)."""

    PARALLEL = "parallel"
    SERIAL = "serial"


# The values as plain strings, under their former name (models/ and experiments/ check against it).
FORMULATIONS = tuple(f.value for f in Formulation)
_VALID_FORMULATIONS = ", ".join(map(repr, FORMULATIONS))

# Score of an empty code or a masked key (as in Transformer-VQ): exp(_NEG - max) underflows to exactly 0,
# and weights are additionally masked explicitly so an all-masked row gives 0, never a uniform average.
_NEG = -1e30


def normalize_qk(x: Array, *, center: bool = False, eps: float = 1e-6) -> Array:
    """Normalises queries or keys over the last axis without gain or bias, then scales by K^(-1/4).

    center=False is the RMS form of the official Transformer-VQ code (its LayerNorm class defaults to
    center=False); center=True subtracts the mean first (a plain LayerNorm). Either way q . k is then
    LN(q) . LN(k) / sqrt(K). Computed in at least float32.
    """
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    x = x.astype(dtype)
    if center:
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    return x * x.shape[-1] ** -0.25


# ------------------------------------------------------------------------------------------ building blocks


def _safe_positive(x: Array) -> Array:
    return jnp.where(x > 0, x, 1.0)


def _log_or_neg(x: Array) -> Array:
    """log x where x > 0, _NEG where x == 0 (safe for gradients: no log(0) anywhere)."""
    return jnp.where(x > 0, jnp.log(_safe_positive(x)), _NEG)


def _block_stats(assignments: Array, values: Array) -> tuple[Array, Array]:
    """Per-code counts (..., H, S) and mean values (..., H, S, V) of a block.

    Assignments a (..., C, H, S), values v (..., C, H, V); mean values of empty codes are 0.
    """
    counts = jnp.sum(assignments, axis=-3)
    sums = jnp.einsum("...chs,...chv->...hsv", assignments, values)
    return counts, sums / _safe_positive(counts)[..., None]


def _merge_stats(first: tuple[Array, Array], second: tuple[Array, Array]) -> tuple[Array, Array]:
    """Count-weighted merge of (counts, means) pairs: associative, with (0, anything) as the identity."""
    n1, m1 = first
    n2, m2 = second
    n = n1 + n2
    safe = _safe_positive(n)
    return n, (n1 / safe)[..., None] * m1 + (n2 / safe)[..., None] * m2


def _local_scores(q: Array, keys: Array, assignments: Array, codebook: Array, hard: bool) -> Array:
    """Scores of queries (..., C, H, K) against local keys (..., M, H, K) -> (..., H, C, M).

    Hard VQ: q . k_hat. Soft VQ: log sum_s a_ms exp(q . c_s), computed as
        shift + log sum_s exp(q . c_s + beta_s - shift) (a_ms / e^beta_s),
    with beta_s = log max_m a_ms (stop-gradiented; codes no local key uses are left out) and the per-query
    shift = max_s (q . c_s + beta_s): both factors are in [0, 1], so nothing overflows, and the key and code
    attaining the maximum give a sum >= 1. A code far from every key (huge q . c_s, assignments ~ 0) therefore
    cannot swamp the codes the keys do use (a shift of max_s q . c_s alone would underflow every local key).
    """
    if hard:
        return jnp.einsum("...chk,...mhk->...hcm", q, keys)
    # Rematerialised in the backward pass: the (..., H, C, S) intermediates of the stabilised mixture would
    # otherwise all be kept for it (they are cheap to recompute and are the largest temporaries of soft VQ).
    return _soft_local_scores(q, assignments, codebook)


@jax.checkpoint
def _soft_local_scores(q: Array, assignments: Array, codebook: Array) -> Array:
    code_scores = jnp.einsum("...chk,hsk->...hcs", q, codebook)
    top = sg(jnp.max(assignments, axis=-3))[..., None, :]                      # (..., H, 1, S)
    used = top > 0
    lifted = code_scores + _log_or_neg(top)
    shift = sg(jnp.max(jnp.where(used, lifted, _NEG), axis=-1, keepdims=True))
    shift = jnp.where(shift > _NEG / 2, shift, 0.0)                            # no local key uses any code
    scale = jnp.where(used, jnp.exp(jnp.minimum(jnp.where(used, lifted, 0.0) - shift, 0.0)), 0.0)
    relative = assignments / _safe_positive(jnp.swapaxes(top, -2, -3))         # a_ms / max_m a_ms
    mix = jnp.einsum("...hcs,...mhs->...hcm", scale, relative)
    return _log_or_neg(mix) + shift


def _cache_scores(q: Array, codebook: Array, counts: Array) -> Array:
    """q . c_s + log n_s: q (..., C, H, K), counts (..., H, S) -> (..., H, C, S) (_NEG for empty codes)."""
    return jnp.einsum("...chk,hsk->...hcs", q, codebook) + _log_or_neg(counts)[..., None, :]


def _attend(groups: list[tuple[Array, Array, Array]]) -> Array:
    """Softmax over the union of score groups with ONE shared, stop-gradiented maximum.

    Each group is (scores (..., H, C, M), valid (broadcastable to scores), values (..., H, M, V)); local keys
    and per-code cache entries are both groups. Returns (..., C, H, V).
    """
    masked = [jnp.where(valid, scores, _NEG) for scores, valid, _ in groups]
    row_max = masked[0].max(axis=-1)
    for scores in masked[1:]:
        row_max = jnp.maximum(row_max, scores.max(axis=-1))
    row_max = sg(row_max)[..., None]
    weights = [jnp.where(valid, jnp.exp(scores - row_max), 0.0)
               for scores, (_, valid, _) in zip(masked, groups)]
    denominator = sum(w.sum(axis=-1, keepdims=True) for w in weights)
    denominator = _safe_positive(denominator)
    out = sum(jnp.einsum("...hcm,...hmv->...chv", w / denominator, values)
              for w, (_, _, values) in zip(weights, groups))
    return out


def _heads_first(x: Array) -> Array:
    """(..., M, H, V) -> (..., H, M, V)."""
    return jnp.swapaxes(x, -2, -3)


def _causal_local_bias(bias: Array | None, block_len: int, dtype: jnp.dtype) -> tuple[Array, Array]:
    """Bias (H, C, 2C) (or 0) and causal mask (C, 2C) for a block's queries against [previous, current] keys.

    Query offset a, key slot m (0..C-1 previous block, C..2C-1 current block): distance a + C - m.
    """
    offset = jnp.arange(block_len)[:, None] + block_len - jnp.arange(2 * block_len)[None, :]
    causal = offset >= 0
    if bias is None:
        return jnp.zeros((), dtype), causal
    return bias.astype(dtype)[:, jnp.clip(offset, 0, 2 * block_len - 1)], causal


def _check_inputs(q: Array, v: Array, codebook: Array, assignments: Array, keys: Array | None,
                  mask: Array | None, block_len: int) -> None:
    if q.ndim != 4 or v.ndim != 4 or q.shape[:3] != v.shape[:3]:
        raise ValueError(f"VQ attention needs q (B, L, H, K) and v (B, L, H, V) with equal B, L, H; got "
                         f"{q.shape} and {v.shape}")
    batch, length, heads, key_dim = q.shape
    if codebook.ndim != 3 or codebook.shape[0] != heads or codebook.shape[2] != key_dim:
        raise ValueError(f"codebook must be (H, S, K) = ({heads}, S, {key_dim}), got {codebook.shape}")
    if assignments.shape != (batch, length, heads, codebook.shape[1]):
        expected = (batch, length, heads, codebook.shape[1])
        raise ValueError(f"assignments must be (B, L, H, S) = {expected}, got {assignments.shape}")
    if keys is not None and keys.shape != q.shape:
        raise ValueError(f"quantized keys must have the shape of q {q.shape}, got {keys.shape}")
    if mask is not None and mask.shape != (batch, length):
        raise ValueError(f"mask must be (B, L) = {(batch, length)}, got {mask.shape}")
    if block_len < 1:
        raise ValueError(f"block_len must be a positive integer, got {block_len}")


def _check_bias(bias: Array | None, heads: int, width: int, what: str) -> None:
    if bias is not None and bias.shape != (heads, width):
        raise ValueError(f"{what} bias must be (H, {width}) per-distance values, got {bias.shape}")


# ----------------------------------------------------------------------------------------------- causal


def vq_attention(q: Array, v: Array, codebook: Array, assignments: Array, *, block_len: int,
                 quantized_keys: Array | None = None, bias: Array | None = None, mask: Array | None = None,
                 causal: bool = True, formulation: Formulation | str = Formulation.PARALLEL,
                 grad_through_cache: bool = False) -> Array:
    """Transformer-VQ attention (hard or soft), causal or bidirectional; see the module docstring.

    Args:
      q: (B, L, H, K) queries, already normalised and scaled (`normalize_qk`).
      v: (B, L, H, V) values.
      codebook: (H, S, K); pass it stop-gradiented for Transformer-VQ (its own update is the EMA surrogate).
      assignments: (B, L, H, S): one-hot codes for hard VQ, p(s | k) for soft VQ.
      block_len: C.
      quantized_keys: (B, L, H, K) k_hat for hard VQ (value c_{z_j}, carrying the estimator's gradient); None
        for soft VQ (local scores then come from the assignments and the codebook).
      bias: per-distance additive bias: (H, 2C) for causal (distance i - j = 0 .. 2C-1, inside the current and
        previous block only); (H, 2C - 1) for bidirectional (index i - j + C - 1 for |i - j| < C). None = 0.
      mask: (B, L) bool, True = real token; padded keys are excluded everywhere.
      causal: the causal block recurrence, or the bidirectional encoder form.
      formulation: "parallel" or "serial" (causal only; the bidirectional form is parallel).
      grad_through_cache: let gradients flow into the cached counts / mean values (default: stopped).
    Returns:
      (B, L, H, V) outputs, in at least float32.
    """
    _check_inputs(q, v, codebook, assignments, quantized_keys, mask, block_len)
    if formulation not in FORMULATIONS:
        raise ValueError(f"unknown formulation {formulation!r}; expected one of {_VALID_FORMULATIONS}")
    batch, length, heads, _ = q.shape
    _check_bias(bias, heads, 2 * block_len if causal else 2 * block_len - 1,
                "causal" if causal else "bidirectional")
    dtype = jnp.promote_types(jnp.result_type(q, v, codebook, assignments), jnp.float32)
    hard = quantized_keys is not None
    keys = quantized_keys if hard else jnp.zeros((*q.shape[:3], 0), dtype)
    valid = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
    assignments = assignments.astype(dtype) * valid[..., None, None]

    # Pad L to a multiple of C with masked positions; then split into blocks (B, N, C, ...).
    num_blocks = -(-length // block_len)
    pad = num_blocks * block_len - length

    def blocks(x: Array) -> Array:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(batch, num_blocks, block_len, *x.shape[2:])

    q_b, k_b, v_b, a_b, valid_b = (blocks(x) for x in (q.astype(dtype), keys.astype(dtype), v.astype(dtype),
                                                        assignments, valid))
    codebook = codebook.astype(dtype)
    if causal and formulation == Formulation.SERIAL:
        out = _causal_serial(q_b, k_b, v_b, a_b, valid_b, codebook, bias, hard, grad_through_cache)
    elif causal:
        out = _causal_parallel(q_b, k_b, v_b, a_b, valid_b, codebook, bias, hard, grad_through_cache)
    else:
        out = _bidirectional(q_b, k_b, v_b, a_b, valid_b, codebook, bias, hard, grad_through_cache)
    return out.reshape(batch, num_blocks * block_len, heads, -1)[:, :length]


def _shift_blocks(x: Array, by: int) -> Array:
    """Shifts along the block axis (1): by > 0 moves block n to n + by (zeros enter); by < 0 the other way."""
    if by == 0:
        return x
    pad = [(0, 0)] * x.ndim
    if by > 0:
        pad[1] = (by, 0)
        return jnp.pad(x, pad)[:, : x.shape[1]]
    pad[1] = (0, -by)
    return jnp.pad(x, pad)[:, -by:]


def _maybe_stop(stats: tuple[Array, Array], grad_through_cache: bool) -> tuple[Array, Array]:
    return stats if grad_through_cache else (sg(stats[0]), sg(stats[1]))


def _causal_parallel(q: Array, k: Array, v: Array, a: Array, valid: Array, codebook: Array,
                     bias: Array | None, hard: bool, grad_through_cache: bool) -> Array:
    """All blocks at once. Inputs (B, N, C, ...); returns (B, N, C, H, V)."""
    block_len = q.shape[2]
    local_k = jnp.concatenate([_shift_blocks(k, 1), k], axis=2)          # (B, N, 2C, H, K)
    local_v = jnp.concatenate([_shift_blocks(v, 1), v], axis=2)
    local_a = jnp.concatenate([_shift_blocks(a, 1), a], axis=2)
    local_valid = jnp.concatenate([_shift_blocks(valid, 1), valid], axis=2)  # (B, N, 2C)
    local_bias, causal_mask = _causal_local_bias(bias, block_len, q.dtype)
    scores = _local_scores(q, local_k, local_a, codebook, hard) + local_bias
    local_ok = causal_mask & local_valid[:, :, None, None, :]

    # Cache of block n = merge of the statistics of blocks <= n - 2.
    stats = _maybe_stop(_block_stats(a, v), grad_through_cache)          # (B, N, H, S), (B, N, H, S, V)
    prefix = jax.lax.associative_scan(_merge_stats, stats, axis=1)
    counts, means = (_shift_blocks(x, 2) for x in prefix)
    cache = _cache_scores(q, codebook, counts)
    return _attend([(scores, local_ok, _heads_first(local_v)),
                    (cache, (counts > 0)[..., None, :], means)])


def _causal_serial(q: Array, k: Array, v: Array, a: Array, valid: Array, codebook: Array,
                   bias: Array | None, hard: bool, grad_through_cache: bool) -> Array:
    """lax.scan over blocks carrying (cache counts, cache means, previous block). Returns (B, N, C, H, V)."""
    batch, _, block_len, heads, _ = q.shape
    local_bias, causal_mask = _causal_local_bias(bias, block_len, q.dtype)
    num_codes = a.shape[-1]

    def step(carry: tuple, block: tuple) -> tuple[tuple, Array]:
        counts, means, prev_k, prev_v, prev_a, prev_valid = carry
        q_n, k_n, v_n, a_n, valid_n = block
        local_k = jnp.concatenate([prev_k, k_n], axis=1)
        local_v = jnp.concatenate([prev_v, v_n], axis=1)
        local_a = jnp.concatenate([prev_a, a_n], axis=1)
        local_valid = jnp.concatenate([prev_valid, valid_n], axis=1)
        scores = _local_scores(q_n, local_k, local_a, codebook, hard) + local_bias
        local_ok = causal_mask & local_valid[:, None, None, :]
        cache = _cache_scores(q_n, codebook, counts)
        out = _attend([(scores, local_ok, _heads_first(local_v)),
                       (cache, (counts > 0)[..., None, :], means)])
        # The previous block joins the cache only now, after block n has attended to it exactly.
        counts, means = _merge_stats((counts, means),
                                     _maybe_stop(_block_stats(prev_a, prev_v), grad_through_cache))
        return (counts, means, k_n, v_n, a_n, valid_n), out

    init = (jnp.zeros((batch, heads, num_codes), q.dtype),
            jnp.zeros((batch, heads, num_codes, v.shape[-1]), q.dtype),
            jnp.zeros_like(k[:, 0]), jnp.zeros_like(v[:, 0]), jnp.zeros_like(a[:, 0]),
            jnp.zeros_like(valid[:, 0]))
    _, out = jax.lax.scan(step, init, tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, a, valid)))
    return jnp.moveaxis(out, 0, 1)


# ------------------------------------------------------------------------------------------ bidirectional


def _bidirectional(q: Array, k: Array, v: Array, a: Array, valid: Array, codebook: Array,
                   bias: Array | None, hard: bool, grad_through_cache: bool) -> Array:
    """Exact window |i - j| < C plus the code aggregate of every other key. Returns (B, N, C, H, V)."""
    block_len = q.shape[2]
    neighbours = (1, 0, -1)  # previous, current, next block
    local_k = jnp.concatenate([_shift_blocks(k, s) for s in neighbours], axis=2)   # (B, N, 3C, H, K)
    local_v = jnp.concatenate([_shift_blocks(v, s) for s in neighbours], axis=2)
    local_a = jnp.concatenate([_shift_blocks(a, s) for s in neighbours], axis=2)
    local_valid = jnp.concatenate([_shift_blocks(valid, s) for s in neighbours], axis=2)[:, :, None, None, :]
    # Signed distance i - j for query offset c and key slot m of [previous, current, next].
    offset = jnp.arange(block_len)[:, None] + block_len - jnp.arange(3 * block_len)[None, :]
    window = jnp.abs(offset) < block_len                                           # (C, 3C)
    window_scores = _local_scores(q, local_k, local_a, codebook, hard)
    if bias is not None:
        window_scores = window_scores + bias.astype(q.dtype)[:, jnp.clip(offset + block_len - 1, 0,
                                                                          2 * block_len - 2)]
    # Keys of the neighbouring blocks outside the window are members of the aggregate: same value as their
    # cache form, with the aggregate's gradients.
    agg_a, agg_v = (local_a, local_v) if grad_through_cache else (sg(local_a), sg(local_v))
    outside_scores = _local_scores(q, sg(local_k), agg_a, codebook, hard)

    stats = _maybe_stop(_block_stats(a, v), grad_through_cache)
    prefix = jax.lax.associative_scan(_merge_stats, stats, axis=1)
    suffix = jax.lax.associative_scan(_merge_stats, stats, axis=1, reverse=True)
    counts, means = _merge_stats(tuple(_shift_blocks(x, 2) for x in prefix),
                                 tuple(_shift_blocks(x, -2) for x in suffix))
    cache = _cache_scores(q, codebook, counts)
    return _attend([(window_scores, window & local_valid, _heads_first(local_v)),
                    (outside_scores, ~window & local_valid, _heads_first(agg_v)),
                    (cache, (counts > 0)[..., None, :], means)])


# ---------------------------------------------------------------------------------------------- decoding


class VQDecodeState(NamedTuple):
    """Constant-size decoding state of causal VQ attention.

    counts (B, H, S), means (B, H, S, V): the per-code cache of all blocks before the previous one.
    keys (B, 2C, H, K), values (B, 2C, H, V), assignments (B, 2C, H, S): the previous block (slots 0..C-1)
      and the current block (slots C..2C-1); slots not yet written are zero.
    position: () int32, the number of tokens seen.
    """

    counts: Array
    means: Array
    keys: Array
    values: Array
    assignments: Array
    position: Array


def init_decode_state(batch_size: int, num_heads: int, key_dim: int, value_dim: int, num_codes: int,
                      block_len: int, dtype: jnp.dtype = jnp.float32) -> VQDecodeState:
    """The empty decoding state (nothing seen)."""
    b, h, c = batch_size, num_heads, block_len
    return VQDecodeState(
        counts=jnp.zeros((b, h, num_codes), dtype), means=jnp.zeros((b, h, num_codes, value_dim), dtype),
        keys=jnp.zeros((b, 2 * c, h, key_dim), dtype), values=jnp.zeros((b, 2 * c, h, value_dim), dtype),
        assignments=jnp.zeros((b, 2 * c, h, num_codes), dtype), position=jnp.zeros((), jnp.int32))


def decode_step(state: VQDecodeState, q_t: Array, v_t: Array, assignment_t: Array, codebook: Array, *,
                quantized_key_t: Array | None = None, bias: Array | None = None
                ) -> tuple[VQDecodeState, Array]:
    """One token of causal VQ attention: q_t (B, H, K), v_t (B, H, V), assignment_t (B, H, S) -> (B, H, V).

    quantized_key_t (B, H, K) for hard VQ, None for soft VQ; bias (H, 2C) or None, as in `vq_attention`.
    O(H (2C + S)(K + V)) per token. At the first token of a new block the previous block joins the cache.
    """
    block_len = state.keys.shape[1] // 2
    heads = state.keys.shape[2]
    _check_bias(bias, heads, 2 * block_len, "causal")
    hard = quantized_key_t is not None
    dtype = state.means.dtype
    t = state.position
    offset = t % block_len

    rollover = (offset == 0) & (t > 0)
    absorbed = _merge_stats((state.counts, state.means),
                            _block_stats(state.assignments[:, :block_len], state.values[:, :block_len]))
    counts = jnp.where(rollover, absorbed[0], state.counts)
    means = jnp.where(rollover, absorbed[1], state.means)

    def advance(buffer: Array, new: Array) -> Array:
        shifted = jnp.concatenate([buffer[:, block_len:], jnp.zeros_like(buffer[:, :block_len])], axis=1)
        buffer = jnp.where(rollover, shifted, buffer)
        return jax.lax.dynamic_update_slice_in_dim(buffer, new[:, None].astype(buffer.dtype),
                                                   block_len + offset, axis=1)

    key_t = quantized_key_t if hard else jnp.zeros_like(q_t)
    keys = advance(state.keys, key_t)
    values = advance(state.values, v_t)
    assignments = advance(state.assignments, assignment_t)

    slots = jnp.arange(2 * block_len)
    distance = block_len + offset - slots
    local_ok = (distance >= 0) & ((slots >= block_len) | (t >= block_len))          # (2C,)
    q = q_t.astype(dtype)[:, None]                                                    # (B, 1, H, K)
    codebook = codebook.astype(dtype)
    scores = _local_scores(q, keys, assignments, codebook, hard)                      # (B, H, 1, 2C)
    if bias is not None:
        scores = scores + bias.astype(dtype)[:, jnp.clip(distance, 0, 2 * block_len - 1)][:, None, :]
    cache = _cache_scores(q, codebook, counts)
    out = _attend([(scores, local_ok, _heads_first(values)), (cache, (counts > 0)[..., None, :], means)])
    new_state = VQDecodeState(counts, means, keys, values, assignments, t + 1)
    return new_state, out[:, 0]
