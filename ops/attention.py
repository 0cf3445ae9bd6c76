"""Softmax attention: the dense reference, blockwise (memory-lean) attention, and attention as an RNN.

Shape legend (shared by the package): B batch, L length (Lq queries, Lk keys), H heads, K key width
(Kv value width), C block length.

Conventions for every function here:
  q (B, Lq, H, K), k (B, Lk, H, K), v (B, Lk, H, Kv) -> output (B, Lq, H, Kv) in v's dtype.
  mask: (B, Lk) bool key padding mask, True = real token. Padded keys get zero weight (and padded values,
    whatever they hold, are never read: they are replaced by 0 before the weighted sum). Outputs at padded
    query positions are computed like any other (over the real keys); callers ignore them.
  causal: query i sees keys j <= i + (Lk - Lq) (the queries are the *last* Lq positions of the keys, which
    is the usual self-attention case Lq = Lk and the decoding case Lq = 1).
  bias: additive score bias broadcastable to (B, H, Lq, Lk): (B or 1, H or 1, Lq, Lk).
  scale: multiplies q . k; default 1 / sqrt(K).
  Scores, normalisation and the weighted sum run in float32 even for bfloat16 inputs (float64 stays float64).
  A query row whose keys are all masked gets output 0, never NaN.

Functions:
  dot_product_attention   dense reference; O(B H Lq Lk) memory; any normaliser of ops/normalizers.py.
  blockwise_attention     online softmax over key blocks inside query blocks, custom VJP recomputing each
                          block in the backward pass (flash-attention style: the residuals are q, k, v, the
                          output and the log-sum-exp), so forward and backward memory are O(B H L C), not
                          O(L^2). ALiBi is supported by slopes (the bias is built per block).
  AttentionRNNState and attention_rnn_{init,absorb,merge,output}: attention as an RNN over keys
                          (docs/methods.md section 7): state (running max m, normaliser l, accumulator acc);
                          `attention_rnn_merge` is associative, so prefix states come from an associative
                          scan (`causal_attention_rnn`).
  decode_step             one query against a key/value cache (incremental decoding).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ops.normalizers import Normalizer, NormalizerName, get_normalizer


def _compute_dtype(*arrays: jax.Array) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _check_qkv(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention expects q, k, v of rank 4 (B, L, H, K); got shapes {q.shape}, {k.shape}, {v.shape}"
        )
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {q.shape} and k {k.shape} must agree in batch, heads and key width")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k {k.shape} and v {v.shape} must agree in batch, length and heads")


def _check_mask(mask: jax.Array | None, batch: int, length: int) -> None:
    if mask is not None and mask.shape != (batch, length):
        raise ValueError(f"padding mask must have shape (B, Lk) = ({batch}, {length}), got {mask.shape}")


def attention_mask(mask: jax.Array | None, causal: bool, q_len: int, k_len: int) -> jax.Array | None:
    """The combined boolean mask (B or 1, 1, Lq, Lk) of key padding and causality, or None if neither."""
    combined = None
    if mask is not None:
        combined = mask[:, None, None, :]
    if causal:
        offset = k_len - q_len
        allowed = jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None] + offset
        combined = allowed[None, None] if combined is None else combined & allowed[None, None]
    return combined


def attention_logits(q: jax.Array, k: jax.Array, scale: float | None = None) -> jax.Array:
    """Scores (B, H, Lq, Lk) = scale * q . k in float32 (float64 for float64 inputs)."""
    compute = _compute_dtype(q, k)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return jnp.einsum("bqhk,bjhk->bhqj", q.astype(compute), k.astype(compute)) * scale


def attend(
    logits: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    causal: bool = False,
    bias: jax.Array | None = None,
    normalizer: NormalizerName | str | Normalizer = NormalizerName.SOFTMAX,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Normalises precomputed scores (B, H, Lq, Lk) under the masks and applies them to v (B, Lk, H, Kv).

    The shared second half of dense attention (`dot_product_attention`, ReRoPE's `rerope_logits` path and
    cached decoding use it). Returns (B, Lq, H, Kv) in v's dtype, and the weights (B, H, Lq, Lk) if asked.
    """
    batch, _, q_len, k_len = logits.shape
    _check_mask(mask, batch, k_len)
    if bias is not None:
        logits = logits + bias.astype(logits.dtype)
    combined = attention_mask(mask, causal, q_len, k_len)
    weights = get_normalizer(normalizer)(logits, combined)
    if mask is not None:  # zero weight times a non-finite padded value would still be NaN
        v = jnp.where(mask[:, :, None, None], v, jnp.zeros((), v.dtype))
    out = jnp.einsum("bhqj,bjhv->bqhv", weights, v.astype(weights.dtype)).astype(v.dtype)
    return (out, weights) if return_weights else out


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    causal: bool = False,
    bias: jax.Array | None = None,
    scale: float | None = None,
    normalizer: NormalizerName | str | Normalizer = NormalizerName.SOFTMAX,
) -> jax.Array:
    """Dense attention normalizer(scale q k^T + bias, masked) v: the reference every other form is tested by.

    normalizer: "softmax" (default), "sparsemax", "entmax15", "taylor2" or a callable (scores, mask) ->
    weights (see ops/normalizers.py). Cost O(B H Lq Lk (K + Kv)) time, O(B H Lq Lk) memory (also kept for
    the backward pass).
    """
    _check_qkv(q, k, v)
    return attend(
        attention_logits(q, k, scale), v, mask=mask, causal=causal, bias=bias, normalizer=normalizer
    )


# ----------------------------------------------------------------------------------- blockwise attention


class _BlockConfig(NamedTuple):
    scale: float
    causal: bool
    block_q: int
    block_k: int
    q_offset: int  # causal and ALiBi position of query row 0 (Lk - Lq: queries are the last positions)
    use_alibi: bool


def _to_blocks(x: jax.Array, block: int) -> jax.Array:
    """(B, n * C, ...) -> (n, B, C, ...)."""
    b, length = x.shape[:2]
    x = x.reshape((b, length // block, block) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _from_blocks(x: jax.Array) -> jax.Array:
    """(n, B, C, ...) -> (B, n * C, ...)."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def _pad_length(x: jax.Array, length: int, value: float | bool = 0) -> jax.Array:
    extra = length - x.shape[1]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _block_scores(
    cfg: _BlockConfig,
    q_block: jax.Array,
    k_block: jax.Array,
    key_valid: jax.Array,
    slopes: jax.Array,
    q_index: jax.Array,
    k_index: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Scores (B, H, Cq, Ck) of one block pair and which of them are allowed (B, 1|H, Cq, Ck)."""
    s = jnp.einsum("bqhk,bjhk->bhqj", q_block, k_block) * cfg.scale
    q_pos = q_index * cfg.block_q + jnp.arange(cfg.block_q) + cfg.q_offset
    k_pos = k_index * cfg.block_k + jnp.arange(cfg.block_k)
    if cfg.use_alibi:
        distance = jnp.abs(q_pos[:, None] - k_pos[None, :]).astype(s.dtype)
        s = s - slopes[None, :, None, None] * distance
    allowed = key_valid[:, None, None, :]
    if cfg.causal:
        allowed = allowed & (k_pos[None, :] <= q_pos[:, None])[None, None]
    return s, allowed


def _block_needed(cfg: _BlockConfig, q_index: jax.Array, k_index: jax.Array) -> jax.Array:
    """False when causality masks the whole block pair (its first key is after the last query)."""
    last_query = q_index * cfg.block_q + cfg.block_q - 1 + cfg.q_offset
    return k_index * cfg.block_k <= last_query


def _blockwise_forward(
    cfg: _BlockConfig, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, slopes: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Output (B, Lq, H, Kv) and log-sum-exp (B, H, Lq) (-inf for rows without keys); padded lengths."""
    q_blocks, k_blocks, v_blocks = (
        _to_blocks(q, cfg.block_q),
        _to_blocks(k, cfg.block_k),
        _to_blocks(v, cfg.block_k),
    )
    valid_blocks = _to_blocks(key_valid, cfg.block_k)
    batch, heads, value_dim = q.shape[0], q.shape[2], v.shape[-1]

    def one_query_block(args: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        q_block, q_index = args

        def absorb_key_block(carry, key_args):
            k_block, v_block, valid, k_index = key_args

            def update(state):
                running_max, total, acc = state
                s, allowed = _block_scores(cfg, q_block, k_block, valid, slopes, q_index, k_index)
                s = jnp.where(allowed, s, -jnp.inf)
                new_max = jnp.maximum(running_max, jnp.max(s, axis=-1))
                # Rows with no allowed key so far keep max -inf; shift them by 0 so exp gives 0, not NaN.
                shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
                p = jnp.exp(s - shift[..., None])
                correction = jnp.exp(running_max - shift)
                total = total * correction + jnp.sum(p, axis=-1)
                acc = acc * correction[..., None] + jnp.einsum("bhqj,bjhv->bhqv", p, v_block)
                return new_max, total, acc

            if cfg.causal:
                carry = lax.cond(_block_needed(cfg, q_index, k_index), update, lambda state: state, carry)
            else:
                carry = update(carry)
            return carry, None

        init = (
            jnp.full((batch, heads, cfg.block_q), -jnp.inf, q.dtype),
            jnp.zeros((batch, heads, cfg.block_q), q.dtype),
            jnp.zeros((batch, heads, cfg.block_q, value_dim), q.dtype),
        )
        k_indices = jnp.arange(k_blocks.shape[0])
        (running_max, total, acc), _ = lax.scan(
            absorb_key_block, init, (k_blocks, v_blocks, valid_blocks, k_indices)
        )
        has_keys = total > 0
        safe_total = jnp.where(has_keys, total, 1.0)
        out = jnp.where(has_keys[..., None], acc / safe_total[..., None], 0.0)
        lse = jnp.where(has_keys, running_max + jnp.log(safe_total), -jnp.inf)
        return jnp.moveaxis(out, 1, 2), lse  # (B, Cq, H, Kv), (B, H, Cq)

    out_blocks, lse_blocks = lax.map(one_query_block, (q_blocks, jnp.arange(q_blocks.shape[0])))
    out = _from_blocks(out_blocks)
    lse = jnp.moveaxis(_from_blocks(jnp.moveaxis(lse_blocks, 3, 2)), 2, 1)  # (n, B, H, Cq) -> (B, H, Lq)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blockwise_core(
    cfg: _BlockConfig, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, slopes: jax.Array
) -> jax.Array:
    return _blockwise_forward(cfg, q, k, v, key_valid, slopes)[0]


def _blockwise_core_fwd(cfg, q, k, v, key_valid, slopes):
    out, lse = _blockwise_forward(cfg, q, k, v, key_valid, slopes)
    return out, (q, k, v, key_valid, slopes, out, lse)


def _blockwise_core_bwd(cfg, residuals, d_out):
    """Flash-attention backward: for each key block, scan the query blocks, recomputing p = exp(s - lse).

    dv_j = sum_i p_ij^T do_i; ds = p * (do v^T - D) with D_i = do_i . o_i; dq_i = scale ds k; dk_j = scale
    ds^T q. dk, dv of the current key block are the inner carry; dq (O(L K)) is the outer carry.
    """
    q, k, v, key_valid, slopes, out, lse = residuals
    d_out = d_out.astype(out.dtype)
    delta = jnp.moveaxis(jnp.sum(d_out * out, axis=-1), 1, 2)  # (B, H, Lq)
    finite_lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
    q_blocks, do_blocks = _to_blocks(q, cfg.block_q), _to_blocks(d_out, cfg.block_q)
    lse_blocks = jnp.moveaxis(_to_blocks(jnp.moveaxis(finite_lse, 1, 2), cfg.block_q), 3, 2)  # (n, B, H, Cq)
    delta_blocks = jnp.moveaxis(_to_blocks(jnp.moveaxis(delta, 1, 2), cfg.block_q), 3, 2)
    k_blocks, v_blocks = _to_blocks(k, cfg.block_k), _to_blocks(v, cfg.block_k)
    valid_blocks = _to_blocks(key_valid, cfg.block_k)
    q_indices = jnp.arange(q_blocks.shape[0])

    def one_key_block(dq_acc, key_args):
        k_block, v_block, valid, k_index = key_args

        def one_query_block(carry, query_args):
            q_block, do_block, lse_block, delta_block, q_index = query_args

            def gradients(dk_dv):
                dk, dv = dk_dv
                s, allowed = _block_scores(cfg, q_block, k_block, valid, slopes, q_index, k_index)
                p = jnp.where(allowed, jnp.exp(s - lse_block[..., None]), 0.0)
                dv = dv + jnp.einsum("bhqj,bqhv->bjhv", p, do_block)
                dp = jnp.einsum("bqhv,bjhv->bhqj", do_block, v_block)
                ds = p * (dp - delta_block[..., None]) * cfg.scale
                dk = dk + jnp.einsum("bhqj,bqhk->bjhk", ds, q_block)
                dq_block = jnp.einsum("bhqj,bjhk->bqhk", ds, k_block)
                return (dk, dv), dq_block

            if cfg.causal:
                return lax.cond(
                    _block_needed(cfg, q_index, k_index),
                    gradients,
                    lambda dk_dv: (dk_dv, jnp.zeros_like(q_block)),
                    carry,
                )
            return gradients(carry)

        init = (jnp.zeros_like(k_block), jnp.zeros_like(v_block))
        (dk, dv), dq_blocks = lax.scan(
            one_query_block, init, (q_blocks, do_blocks, lse_blocks, delta_blocks, q_indices)
        )
        return dq_acc + dq_blocks, (dk, dv)

    k_indices = jnp.arange(k_blocks.shape[0])
    dq_blocks, (dk_blocks, dv_blocks) = lax.scan(
        one_key_block, jnp.zeros_like(q_blocks), (k_blocks, v_blocks, valid_blocks, k_indices)
    )
    # Boolean key_valid gets no cotangent; the slopes are constants (the public wrapper stops their gradient).
    return (
        _from_blocks(dq_blocks),
        _from_blocks(dk_blocks),
        _from_blocks(dv_blocks),
        None,
        jnp.zeros_like(slopes),
    )


_blockwise_core.defvjp(_blockwise_core_fwd, _blockwise_core_bwd)


def blockwise_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    alibi_slopes: jax.Array | None = None,
    block_q: int = 128,
    block_k: int = 128,
) -> jax.Array:
    """Softmax attention computed block by block with an online softmax; equal to `dot_product_attention`.

    Query blocks (Cq) are mapped over; inside each, a scan over key blocks (Ck) keeps the running max,
    normaliser and accumulator. Lengths that are not multiples of the blocks are padded (padded keys
    masked, padded queries dropped). With causal=True, key blocks entirely after a query block are skipped.

    Memory: forward and backward O(B H (Lq + Lk) (K + Kv) + B H Cq Ck), independent of Lq * Lk; the custom VJP
    recomputes the block scores from q, k, v, the output and the log-sum-exp. Time as dense attention
    (about 2x for the backward, which recomputes the scores).

    Args:
      alibi_slopes: optional (H,) ALiBi slopes; the bias -slope |i - j| is built per block. Treated as
        constants (no gradient flows into them).
      block_q, block_k: block lengths (clipped to the sequence lengths).
    """
    _check_qkv(q, k, v)
    batch, q_len, heads, key_dim = q.shape
    k_len = k.shape[1]
    _check_mask(mask, batch, k_len)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block lengths must be >= 1, got block_q={block_q}, block_k={block_k}")
    if alibi_slopes is not None and alibi_slopes.shape != (heads,):
        raise ValueError(f"alibi_slopes must have shape (H,) = ({heads},), got {alibi_slopes.shape}")
    block_q, block_k = min(block_q, q_len), min(block_k, k_len)
    q_pad, k_pad = -(-q_len // block_q) * block_q, -(-k_len // block_k) * block_k
    compute = _compute_dtype(q, k, v)
    key_valid = jnp.ones((batch, k_len), bool) if mask is None else mask.astype(bool)
    v = jnp.where(key_valid[:, :, None, None], v, jnp.zeros((), v.dtype))  # padded values may be non-finite
    use_alibi = alibi_slopes is not None
    slopes = jnp.zeros((heads,), compute) if alibi_slopes is None else alibi_slopes.astype(compute)
    cfg = _BlockConfig(
        scale=float(1.0 / math.sqrt(key_dim) if scale is None else scale),
        causal=causal,
        block_q=block_q,
        block_k=block_k,
        q_offset=k_len - q_len,
        use_alibi=use_alibi,
    )
    out = _blockwise_core(
        cfg,
        _pad_length(q.astype(compute), q_pad),
        _pad_length(k.astype(compute), k_pad),
        _pad_length(v.astype(compute), k_pad),
        _pad_length(key_valid, k_pad, False),
        lax.stop_gradient(slopes),
    )
    return out[:, :q_len].astype(v.dtype)


# --------------------------------------------------------------------------------------- attention as an RNN


class AttentionRNNState(NamedTuple):
    """Softmax attention over a set of keys, summarised for one query (docs/methods.md section 7).

    running_max (...): max score m seen so far (-inf for the empty set);
    normalizer (...): l = sum_j exp(s_j - m);  accumulator (..., Kv): acc = sum_j exp(s_j - m) v_j.
    The attention output is acc / l.
    """

    running_max: jax.Array
    normalizer: jax.Array
    accumulator: jax.Array


def attention_rnn_init(
    batch_shape: tuple[int, ...], value_dim: int, dtype: jnp.dtype = jnp.float32
) -> AttentionRNNState:
    """The empty state (identity of `attention_rnn_merge`)."""
    return AttentionRNNState(
        jnp.full(batch_shape, -jnp.inf, dtype),
        jnp.zeros(batch_shape, dtype),
        jnp.zeros(batch_shape + (value_dim,), dtype),
    )


def attention_rnn_merge(a: AttentionRNNState, b: AttentionRNNState) -> AttentionRNNState:
    """State of the union of two disjoint key sets. Associative and commutative; the empty state is its
    identity. Works elementwise over any leading axes (as `lax.associative_scan` needs)."""
    new_max = jnp.maximum(a.running_max, b.running_max)
    shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    scale_a, scale_b = jnp.exp(a.running_max - shift), jnp.exp(b.running_max - shift)
    return AttentionRNNState(
        new_max,
        a.normalizer * scale_a + b.normalizer * scale_b,
        a.accumulator * scale_a[..., None] + b.accumulator * scale_b[..., None],
    )


def attention_rnn_absorb(
    state: AttentionRNNState, score: jax.Array, value: jax.Array, valid: jax.Array | bool = True
) -> AttentionRNNState:
    """One RNN step: add a key with score (...) and value (..., Kv) (skipped where valid is False)."""
    score = jnp.where(valid, score, -jnp.inf)
    single = AttentionRNNState(score, jnp.ones_like(score), jnp.broadcast_to(value, state.accumulator.shape))
    return attention_rnn_merge(state, single)


def attention_rnn_output(state: AttentionRNNState) -> jax.Array:
    """acc / l, and 0 for the empty state."""
    has_keys = state.normalizer > 0
    safe = jnp.where(has_keys, state.normalizer, 1.0)
    return jnp.where(has_keys[..., None], state.accumulator / safe[..., None], 0.0)


def causal_attention_rnn(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    scale: float | None = None,
    method: str = "associative",
) -> jax.Array:
    """Causal softmax attention (Lq = Lk) evaluated as an RNN over the keys, for checking the RNN form.

    method="associative": element (i, j) is the single-key state of key j for query i; an associative scan
      over j with `attention_rnn_merge` gives the prefix states, and query i reads the prefix at j = i (so
      no causal mask is applied: causality comes from the prefix). O(B H L^2 Kv) memory: a reference only.
    method="sequential": `lax.scan` over keys with `attention_rnn_absorb`, all queries at once, each
      reading its state at its own step. O(L^2) time, O(B H L Kv) state.
    """
    _check_qkv(q, k, v)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"causal_attention_rnn needs Lq = Lk, got {q.shape[1]} and {k.shape[1]}")
    batch, length, heads, _ = q.shape
    _check_mask(mask, batch, length)
    scores = attention_logits(q, k, scale)  # (B, H, Lq, Lk)
    compute = scores.dtype
    values = jnp.moveaxis(v.astype(compute), 1, 2)  # (B, H, Lk, Kv)
    valid = jnp.ones((batch, 1, 1, length), bool) if mask is None else mask[:, None, None, :]
    scores = jnp.where(valid, scores, -jnp.inf)
    if method == "associative":
        elements = AttentionRNNState(
            scores,
            jnp.ones_like(scores),
            jnp.broadcast_to(values[:, :, None], scores.shape + (values.shape[-1],)),
        )
        prefix = lax.associative_scan(attention_rnn_merge, elements, axis=3)
        diagonal = jax.tree.map(lambda x: jnp.diagonal(x, axis1=2, axis2=3), prefix)
        diagonal = diagonal._replace(accumulator=jnp.moveaxis(diagonal.accumulator, -2, -1))
        out = attention_rnn_output(diagonal)  # (B, H, L, Kv)
    elif method == "sequential":

        def absorb(state, args):
            score_column, value, j = args  # (B, H, Lq), (B, H, Kv)
            state = attention_rnn_absorb(state, score_column, value[:, :, None, :])
            out_j = attention_rnn_output(jax.tree.map(lambda x: x[:, :, j], state))  # query j reads step j
            return state, out_j

        init = attention_rnn_init((batch, heads, length), values.shape[-1], compute)
        _, outs = lax.scan(
            absorb, init, (jnp.moveaxis(scores, 3, 0), jnp.moveaxis(values, 2, 0), jnp.arange(length))
        )
        out = jnp.moveaxis(outs, 0, 2)  # (L, B, H, Kv) -> (B, H, L, Kv)
    else:
        raise ValueError(f"unknown method {method!r}; expected 'associative' or 'sequential'")
    return jnp.moveaxis(out, 1, 2).astype(v.dtype)


def decode_step(
    q_t: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    length: jax.Array | int,
    *,
    scale: float | None = None,
    alibi_slopes: jax.Array | None = None,
) -> jax.Array:
    """Attention of the newest token's query over the first `length` cache entries.

    Args:
      q_t: (B, H, K) query of the token at position length - 1.
      k_cache, v_cache: (B, Lmax, H, K), (B, Lmax, H, Kv); entries at positions >= length are ignored (the
        caller has already written this token's key and value at position length - 1).
      length: scalar or (B,) number of valid entries.
      alibi_slopes: optional (H,): bias -slope (length - 1 - j).
    Returns (B, H, Kv) in v_cache's dtype. Cost O(B H Lmax (K + Kv)) per token.
    """
    if q_t.ndim != 3:
        raise ValueError(f"decode_step expects q_t of shape (B, H, K), got {q_t.shape}")
    _check_qkv(q_t[:, None], k_cache, v_cache)
    max_len = k_cache.shape[1]
    length = jnp.broadcast_to(jnp.asarray(length), (q_t.shape[0],))
    logits = attention_logits(q_t[:, None], k_cache, scale)  # (B, H, 1, Lmax)
    positions = jnp.arange(max_len)
    if alibi_slopes is not None:
        distance = (length[:, None] - 1 - positions[None, :]).astype(logits.dtype)  # (B, Lmax)
        logits = logits - alibi_slopes.astype(logits.dtype)[None, :, None, None] * distance[:, None, None, :]
    valid = positions[None, :] < length[:, None]
    return attend(logits, v_cache, mask=valid)[:, 0]
