"""Kernelised linear attention: softmax(q . k) replaced by phi(q) . phi(k) for a positive feature map phi.

Shape legend (shared by the package): B batch, L length, H heads, K key width, Kv value width,
F number of features, C chunk length.

    out_i = phi(q_i)^T S_i / max(phi(q_i)^T z_i, eps),    S_i = sum_j phi(k_j) v_j^T,  z_i = sum_j phi(k_j),

with the sums over all real keys (bidirectional) or over real keys j <= i (causal). Padded keys (mask
False) contribute nothing: their features and values are zeroed before any sum.

The normaliser: phi(q)^T z is positive for strictly positive maps (elu + 1, Performer's softmax map) and can
be 0 for maps with zeros (relu) or when a query sees no real key; dividing by max(den, eps) turns those
cases into output 0 (or a small multiple of the numerator) instead of NaN, and leaves every den >= eps
untouched. eps defaults to 1e-6 (features of order 1); pass a smaller one for maps whose features are
tiny by construction. The division has its own derivative, d(n / d) = (dn - out dd) / d: autodiff's
default forms d^-2, which overflows float32 for any d < ~1e-19 (e.g. eps = 1e-30 on the zero rows that
pad the last chunk), and inf times a zero cotangent is NaN.

Per-key log scales (optional `key_log_scale` c, (B, L, H)): the key features are phi(k_j) exp(c_j). Keys of
very different magnitudes (e.g. `ops.performer.softmax_key_features`) are passed as phi(k_j) of order 1 plus
c_j, and every sum is formed relative to the largest c among the keys in it: causal forms use the running
max r_i = max_{j <= i} c_j (never looking ahead), weighting key j by exp(c_j - r_i) <= 1 and rescaling
carried sums by exp(r_old - r_new) when the max grows (as in online softmax); the bidirectional form uses the
max over all real keys. The scales cancel between numerator and denominator up to rounding. Features of one
key far below its own largest can still underflow, which is why Performer's attention uses the per-feature
log-feature forms below instead.

All sums accumulate in float32 (float64 for float64 inputs) whatever the input dtype, so bfloat16/float16
activations cannot overflow the state sums (an LRA defect: docs/anchors.md section 5).

Evaluation forms:
  bidirectional:   S = phi(K)^T V once: O(B H L F Kv) time, O(B H F Kv) state.
  causal "prefix": cumulative sums of phi(k_j) v_j^T: O(B L H F Kv) memory. The simple reference. With
                   per-key log scales, an associative scan of the rescaled recurrence (same costs).
  causal "chunked": quadratic (masked) attention inside chunks of C, the state (S, z) carried across chunks
                   by `lax.scan`: O(B H L (C + F) Kv) time, O(B H (L C + (L / C) F Kv)) memory for autodiff.
  recurrent:       `linear_attention_step` on a `LinearAttentionState` (S, z): O(H F Kv) per token.

Log features (`linear_attention_from_log_features`, for features exp(l) whose values span more than float32's
range, like Performer's at large norms): everything is stabilised per feature. A key's feature f is stored
as exp(l_jf - m_f), m_f a max of feature f over keys the query may see, and query i is weighted by
exp(l_if + m_f - c_i) with c_i = max_f (l_if + R_if), R_if = max_{j <= i} l_jf (over all real keys when
bidirectional). Every factor is <= 1, the (feature, key) pair that sets c_i contributes exactly exp(0) = 1,
so each denominator is >= 1 whatever the norms, and all the stabilisers cancel exactly (stop-gradient).
  bidirectional:   m_f = max over all real keys, as above.
  causal "prefix": m = R_i (per feature, via `lax.cummax`), the rescaled recurrence by associative scan.
  causal "chunked": across chunks, sums stored at the running per-feature max of the earlier chunks (rescaled
                   by exp(m_old - m_new) as it grows, like online softmax). Inside a chunk, pairs j < i are
                   split into dyadic block pairs (keys [2 m b, (2 m + 1) b), queries the next b positions),
                   each a product with m_f = the max over its key block, which precedes all its queries: no
                   query's weights ever depend on a later key, so the form is causal in floating point too.
                   The chunk is padded to a power of two P; O(B H L (P (F + Kv) + F (Kv + log P))) time,
                   the FLOPs of the masked quadratic chunk in log2 P smaller products, and L F log P exps;
                   the chunk body is rematerialised under autodiff (memory O(B H L (F + Kv) + (L / C) F Kv)).
  recurrent:       `log_feature_step` on a `LogFeatureState` (S, z, m): O(H F Kv) per token.

A feature map is a callable `feature_map(x, *, is_query, mask) -> features` taking x (B, L, H, K), whether x
are queries, and the key padding mask (B, L) (None for none); it returns (B, L, H, F). The simple maps here
ignore the last two; Performer's (ops/performer.py) needs them for its stabilisers. A map may also carry an
attribute `log_features`, a callable x -> (B, L, H, F) giving log phi(x) up to an additive constant:
`linear_attention` then uses `linear_attention_from_log_features` (Performer's softmax map does).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

FeatureMap = Callable[..., jax.Array]


class FeatureMapName(enum.StrEnum):
    """The feature maps `linear_attention` accepts by name (`FEATURE_MAPS`)."""

    ELU = "elu"
    RELU = "relu"


class CausalMethod(enum.StrEnum):
    """How causal linear attention is evaluated; see the module docstring for costs."""

    CHUNKED = "chunked"
    PREFIX = "prefix"


_VALID_METHODS = ", ".join(repr(m.value) for m in CausalMethod)

DEFAULT_EPS = 1e-6


def elu_plus_one(x: jax.Array, *, is_query: bool = True, mask: jax.Array | None = None) -> jax.Array:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020); F = K."""
    del is_query, mask
    return jax.nn.elu(x) + 1.0


def relu_features(x: jax.Array, *, is_query: bool = True, mask: jax.Array | None = None) -> jax.Array:
    """phi(x) = relu(x) >= 0; F = K. Rows can be all zero: the eps of the normaliser matters here."""
    del is_query, mask
    return jax.nn.relu(x)


# Keyed by the values of FeatureMapName (plain strings, so the keys print as 'elu', 'relu' wherever they are
# listed); a FeatureMapName looks up the same entry as its string.
FEATURE_MAPS: dict[str, FeatureMap] = {
    FeatureMapName.ELU.value: elu_plus_one,
    FeatureMapName.RELU.value: relu_features,
}
_VALID_FEATURE_MAPS = ", ".join(map(repr, FEATURE_MAPS))


def _compute_dtype(*arrays: jax.Array) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _check_inputs(
    phi_q: jax.Array,
    phi_k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    key_log_scale: jax.Array | None = None,
) -> None:
    if phi_q.ndim != 4 or phi_k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"linear attention expects rank-4 (B, L, H, F) features and (B, L, H, Kv) values; got "
            f"{phi_q.shape}, {phi_k.shape}, {v.shape}"
        )
    if phi_q.shape[0] != phi_k.shape[0] or phi_q.shape[2:] != phi_k.shape[2:]:
        raise ValueError(
            f"query features {phi_q.shape} and key features {phi_k.shape} must agree in batch, heads "
            "and number of features"
        )
    if phi_k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"key features {phi_k.shape} and values {v.shape} must agree in batch, length and heads"
        )
    if mask is not None and mask.shape != phi_k.shape[:2]:
        raise ValueError(f"padding mask must have shape (B, L) = {phi_k.shape[:2]}, got {mask.shape}")
    if key_log_scale is not None and key_log_scale.shape != phi_k.shape[:3]:
        raise ValueError(
            f"key_log_scale must have shape (B, L, H) = {phi_k.shape[:3]}, got {key_log_scale.shape}"
        )


@jax.custom_jvp
def _divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    return numerator / denominator[..., None]


@_divide.defjvp
def _divide_jvp(primals, tangents):
    # (dn - out dd) / d instead of dn / d - n dd / d^2: no d^2 to underflow (see the module docstring).
    numerator, denominator = primals
    d_numerator, d_denominator = tangents
    out = numerator / denominator[..., None]
    return out, (d_numerator - out * d_denominator[..., None]) / denominator[..., None]


def _normalise(numerator: jax.Array, denominator: jax.Array, eps: float) -> jax.Array:
    return _divide(numerator, jnp.maximum(denominator, eps))


def _finite_or_zero(x: jax.Array) -> jax.Array:
    return jnp.where(jnp.isfinite(x), x, 0.0)


def _mask_keys(phi_k: jax.Array, v: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    if mask is None:
        return phi_k, v
    keep = mask[:, :, None, None]
    # where, not multiply: padded values may hold anything (even inf), and 0 * inf is NaN.
    return jnp.where(keep, phi_k, 0.0), jnp.where(keep, v, 0.0)


def linear_attention_from_features(
    phi_q: jax.Array,
    phi_k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    causal: bool = False,
    method: CausalMethod | str = CausalMethod.CHUNKED,
    chunk_size: int = 64,
    eps: float = DEFAULT_EPS,
    key_log_scale: jax.Array | None = None,
) -> jax.Array:
    """Linear attention given the features phi(q) (B, Lq, H, F) and phi(k) (B, L, H, F); v (B, L, H, Kv).

    causal=True needs Lq = L and uses `method` "chunked" (default) or "prefix" (see the module docstring).
    key_log_scale (B, L, H): optional per-key log scales c, the key features being phi(k) exp(c) (see the
    module docstring); gradients flow through c as through phi(k). Returns (B, Lq, H, Kv) in v's dtype.
    """
    _check_inputs(phi_q, phi_k, v, mask, key_log_scale)
    out_dtype, compute = v.dtype, _compute_dtype(phi_q, phi_k, v)
    phi_q, phi_k, v = phi_q.astype(compute), phi_k.astype(compute), v.astype(compute)
    phi_k, v = _mask_keys(phi_k, v, mask)
    if key_log_scale is not None:
        key_log_scale = key_log_scale.astype(compute)
        if mask is not None:  # padded keys: weight exp(-inf) = 0, and never the running max
            key_log_scale = jnp.where(mask[:, :, None], key_log_scale, -jnp.inf)
    if not causal:
        if key_log_scale is not None:
            top = _finite_or_zero(lax.stop_gradient(jnp.max(key_log_scale, axis=1, keepdims=True)))
            phi_k = phi_k * jnp.exp(key_log_scale - top)[..., None]
        state = jnp.einsum("blhf,blhv->bhfv", phi_k, v)
        total = jnp.sum(phi_k, axis=1)  # (B, H, F)
        out = _normalise(
            jnp.einsum("bqhf,bhfv->bqhv", phi_q, state), jnp.einsum("bqhf,bhf->bqh", phi_q, total), eps
        )
        return out.astype(out_dtype)
    if phi_q.shape[1] != phi_k.shape[1]:
        raise ValueError(
            f"causal linear attention needs as many queries as keys, got {phi_q.shape[1]} and "
            f"{phi_k.shape[1]}"
        )
    if method == CausalMethod.PREFIX:
        if key_log_scale is None:
            states = jnp.cumsum(jnp.einsum("blhf,blhv->blhfv", phi_k, v), axis=1)
            totals = jnp.cumsum(phi_k, axis=1)
        else:
            states, totals = _scaled_prefix_sums(phi_k, v, key_log_scale)
        numerator = jnp.einsum("blhf,blhfv->blhv", phi_q, states)
        out = _normalise(numerator, jnp.einsum("blhf,blhf->blh", phi_q, totals), eps)
    elif method == CausalMethod.CHUNKED:
        out = _causal_chunked(phi_q, phi_k, v, key_log_scale, chunk_size, eps)
    else:
        raise ValueError(f"unknown causal linear attention method {method!r}; expected one of {_VALID_METHODS}")
    return out.astype(out_dtype)


def _scaled_prefix_sums(
    phi_k: jax.Array, v: jax.Array, log_scale: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Prefix sums S_i (B, L, H, F, Kv), z_i (B, L, H, F) of phi(k_j) exp(c_j - r_i), r_i = max_{j <= i} c_j.

    The linear recurrence S_i = exp(r_{i-1} - r_i) S_{i-1} + exp(c_i - r_i) phi(k_i) v_i^T (all factors
    <= 1) by `lax.associative_scan`: O(B L H F Kv) time and memory.
    """
    running = lax.stop_gradient(lax.cummax(log_scale, axis=1))  # the scales cancel: no gradient
    reference = _finite_or_zero(running)  # -inf: no real key yet (every weight is then exp(-inf) = 0)
    before = jnp.pad(running[:, :-1], [(0, 0), (1, 0), (0, 0)], constant_values=-jnp.inf)
    carry_over = jnp.exp(before - reference)  # (B, L, H)
    keys = phi_k * jnp.exp(log_scale - reference)[..., None]
    pairs = jnp.einsum("blhf,blhv->blhfv", keys, v)

    def combine(earlier, later):
        decay_a, pairs_a, keys_a = earlier
        decay_b, pairs_b, keys_b = later
        return (
            decay_a * decay_b,
            pairs_a * decay_b[..., None, None] + pairs_b,
            keys_a * decay_b[..., None] + keys_b,
        )

    _, states, totals = lax.associative_scan(combine, (carry_over, pairs, keys), axis=1)
    return states, totals


def _chunk_weights(
    log_scale: jax.Array | None, carried_max: jax.Array, within_chunk: jax.Array
) -> tuple[jax.Array | None, jax.Array, jax.Array, jax.Array, jax.Array]:
    """The weights that put one chunk's sums on the running scale (see the module docstring).

    log_scale (B, C, H) of the chunk's keys (-inf for padded keys) or None (no scales); carried_max (B, H):
    the scale the carried sums are stored at (-inf while they are empty). Returns
      pair (B, H, C, C):   exp(c_j - r_i) for keys j <= i of the chunk, 0 above the diagonal (None if
                           log_scale is None);
      carried (B, C, H):   exp(carried_max - r_i), the weight of the carried sums for query i;
      key (B, C, H):       exp(c_j - r_last), the weight of key j in the sums carried to the next chunk;
      decay (B, H):        exp(carried_max - r_last), the rescaling of the carried sums;
      new carried_max (B, H) = r_last.
    Every weight is <= 1 (r is a running max), so nothing overflows.
    """
    if log_scale is None:
        one = jnp.ones_like(carried_max)
        return None, one[:, None], one[:, None], one, carried_max
    log_scale = jnp.moveaxis(log_scale, 1, 2)  # (B, H, C)
    running = lax.stop_gradient(jnp.maximum(carried_max[..., None], lax.cummax(log_scale, axis=2)))
    reference = _finite_or_zero(running)
    # Mask before exp: above the diagonal c_j - r_i can be large, and exp's derivative there would be inf.
    pair = jnp.exp(jnp.where(within_chunk, log_scale[..., None, :] - reference[..., :, None], -jnp.inf))
    carried = jnp.moveaxis(jnp.exp(carried_max[..., None] - reference), 1, 2)
    key = jnp.moveaxis(jnp.exp(log_scale - reference[..., -1:]), 1, 2)
    decay = jnp.exp(carried_max - reference[..., -1])
    return pair, carried, key, decay, running[..., -1]


def _causal_chunked(
    phi_q: jax.Array,
    phi_k: jax.Array,
    v: jax.Array,
    key_log_scale: jax.Array | None,
    chunk_size: int,
    eps: float,
) -> jax.Array:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, length, heads, features = phi_q.shape
    chunk = min(chunk_size, length)
    padded = -(-length // chunk) * chunk

    def blocks(x: jax.Array, fill: float = 0.0) -> jax.Array:  # (B, L, ...) -> (L / C, B, C, ...), padded
        x = jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return jnp.moveaxis(x.reshape((batch, padded // chunk, chunk) + x.shape[2:]), 1, 0)

    within_chunk = jnp.tril(jnp.ones((chunk, chunk), bool))

    def one_chunk(carry, args):
        # Sums over the keys of all earlier chunks, stored times exp(-carried_max).
        state, total, carried_max = carry  # (B, H, F, Kv), (B, H, F), (B, H)
        fq, fk, vc, log_scale = args
        pair, carried, key, decay, carried_max = _chunk_weights(log_scale, carried_max, within_chunk)
        scores = jnp.where(within_chunk, jnp.einsum("bqhf,bkhf->bhqk", fq, fk), 0.0)
        if pair is not None:
            scores = scores * pair
        numerator = jnp.einsum("bhqk,bkhv->bqhv", scores, vc) + carried[..., None] * jnp.einsum(
            "bqhf,bhfv->bqhv", fq, state
        )
        denominator = jnp.moveaxis(jnp.sum(scores, axis=-1), 1, 2) + carried * jnp.einsum(
            "bqhf,bhf->bqh", fq, total
        )
        weighted_keys = fk * key[..., None]
        state = decay[..., None, None] * state + jnp.einsum("bkhf,bkhv->bhfv", weighted_keys, vc)
        total = decay[..., None] * total + jnp.sum(weighted_keys, axis=1)
        return (state, total, carried_max), _normalise(numerator, denominator, eps)

    init = (
        jnp.zeros((batch, heads, features, v.shape[-1]), v.dtype),
        jnp.zeros((batch, heads, features), v.dtype),
        jnp.full((batch, heads), -jnp.inf, v.dtype),
    )
    log_scales = None if key_log_scale is None else blocks(key_log_scale, -jnp.inf)
    _, outs = lax.scan(one_chunk, init, (blocks(phi_q), blocks(phi_k), blocks(v), log_scales))
    outs = jnp.moveaxis(outs, 0, 1)
    return outs.reshape((batch, padded) + outs.shape[3:])[:, :length]


def linear_attention_from_log_features(
    log_phi_q: jax.Array,
    log_phi_k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    causal: bool = False,
    method: CausalMethod | str = CausalMethod.CHUNKED,
    chunk_size: int = 64,
    eps: float = DEFAULT_EPS,
) -> jax.Array:
    """Linear attention given log features: phi(q) = exp(log_phi_q) (B, Lq, H, F), phi(k) = exp(log_phi_k)
    (B, L, H, F); v (B, L, H, Kv) -> (B, Lq, H, Kv) in v's dtype.

    For features whose values span more than float32's range (Performer's exp features at large norms).
    Stabilised per feature (see the module docstring): every stored feature is exp(log_phi - m) <= 1 with m
    a max over keys the query may see, and every query's denominator is >= 1 (its largest term is exp(0))
    whenever it sees a real key, so eps only decides the output of a query that sees none (0). Adding a
    constant to all query or all key log features changes nothing. causal=True needs Lq = L; `method`
    "chunked" (default) or "prefix". Log features must be finite; padded keys (mask False) are excluded.
    """
    _check_inputs(log_phi_q, log_phi_k, v, mask)
    out_dtype, compute = v.dtype, _compute_dtype(log_phi_q, log_phi_k, v)
    log_q, log_k, v = log_phi_q.astype(compute), log_phi_k.astype(compute), v.astype(compute)
    if mask is not None:  # where, not multiply: padded values may hold anything (even inf)
        keep = mask[:, :, None, None]
        log_k, v = jnp.where(keep, log_k, -jnp.inf), jnp.where(keep, v, 0.0)
    if not causal:
        # M_f = max of feature f over the real keys; keys exp(l_jf - M_f), queries exp(l_if + M_f - c_i).
        feature_max = lax.stop_gradient(_finite_or_zero(jnp.max(log_k, axis=1, keepdims=True)))  # (B, 1, H, F)
        shifted = log_q + feature_max
        query_max = lax.stop_gradient(jnp.max(shifted, axis=-1, keepdims=True))
        return linear_attention_from_features(
            jnp.exp(shifted - query_max), jnp.exp(log_k - feature_max), v, eps=eps
        ).astype(out_dtype)
    if log_q.shape[1] != log_k.shape[1]:
        raise ValueError(
            f"causal linear attention needs as many queries as keys, got {log_q.shape[1]} and {log_k.shape[1]}"
        )
    if method == CausalMethod.PREFIX:
        out = _log_features_prefix(log_q, log_k, v, eps)
    elif method == CausalMethod.CHUNKED:
        out = _log_features_chunked(log_q, log_k, v, chunk_size, eps)
    else:
        raise ValueError(f"unknown causal linear attention method {method!r}; expected one of {_VALID_METHODS}")
    return out.astype(out_dtype)


def _exp_below(log_x: jax.Array, reference: jax.Array) -> jax.Array:
    """exp(log_x - reference) with exp(-inf) = 0 where the reference is -inf (no real key in it yet)."""
    return jnp.exp(jnp.where(jnp.isfinite(reference), log_x - reference, -jnp.inf))


def _query_weights(log_q: jax.Array, reference: jax.Array, query_max: jax.Array) -> jax.Array:
    """exp(l_if + reference_f - c_i): <= 1 whenever reference_f <= R_if (keys the query may see); 0 for
    reference -inf. query_max c (..., Q) broadcast over F."""
    return jnp.exp(log_q + reference - query_max[..., None])


def _log_features_prefix(log_q: jax.Array, log_k: jax.Array, v: jax.Array, eps: float) -> jax.Array:
    """The causal "prefix" form of `linear_attention_from_log_features`: (B, L, H, F) x2, (B, L, H, Kv).

    R_i = max_{j <= i} l_j per feature (`lax.cummax`); the sums S_i = sum_{j <= i} exp(l_j - R_i) v_j^T follow
    S_i = exp(R_{i-1} - R_i) S_{i-1} + exp(l_i - R_i) v_i^T (factors <= 1), by `lax.associative_scan`.
    O(B L H F Kv) time and memory.
    """
    running = lax.stop_gradient(lax.cummax(log_k, axis=1))  # R (B, L, H, F)
    before = jnp.pad(running[:, :-1], [(0, 0), (1, 0), (0, 0), (0, 0)], constant_values=-jnp.inf)
    decay = _exp_below(before, running)  # 0 while no real key (the sums are 0 then anyway)
    keys = _exp_below(log_k, running)
    pairs = keys[..., None] * v[..., None, :]  # (B, L, H, F, Kv)

    def combine(earlier, later):
        decay_a, pairs_a, keys_a = earlier
        decay_b, pairs_b, keys_b = later
        return decay_a * decay_b, pairs_a * decay_b[..., None] + pairs_b, keys_a * decay_b + keys_b

    _, states, totals = lax.associative_scan(combine, (decay, pairs, keys), axis=1)
    query_max = lax.stop_gradient(_finite_or_zero(jnp.max(log_q + running, axis=-1)))  # c (B, L, H)
    weights = _query_weights(log_q, running, query_max)
    numerator = jnp.einsum("blhf,blhfv->blhv", weights, states)
    return _normalise(numerator, jnp.einsum("blhf,blhf->blh", weights, totals), eps)


def _earlier_in_chunk(
    log_q: jax.Array, log_k: jax.Array, v: jax.Array, query_max: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """sum_{j < i} sum_f exp(l_if + l_jf - c_i) (v_j, 1) within a chunk, by dyadic blocks.

    log_q, log_k (B, H, P, F) with P a power of two, v (B, H, P, Kv), query_max c (B, H, P) ->
    (numerator (B, H, P, Kv), denominator (B, H, P)). Every pair j < i lies in exactly one block pair
    (keys [2 m b, (2 m + 1) b), queries [(2 m + 1) b, (2 m + 2) b)) for one b in 1, 2, ..., P / 2 (the
    highest bit where i and j differ). The keys of a block pair all precede its queries, so their per-feature
    max G_f is a max over keys every query there may see: keys exp(l_jf - G_f) <= 1, queries
    exp(l_if + G_f - c_i) <= 1, and a key that sets a running max gets exactly 1. O(P F (log P + P) +
    P^2 Kv) per chunk: the FLOPs of the masked (P, P) product, in log2(P) smaller products.
    """
    batch, heads, size = log_q.shape[:3]
    numerator = jnp.zeros(v.shape, v.dtype)
    denominator = jnp.zeros(query_max.shape, v.dtype)
    block = 1
    while block < size:
        pairs = size // (2 * block)

        def split(x: jax.Array) -> jax.Array:  # (B, H, P, ...) -> (B, H, pairs, 2, block, ...)
            return x.reshape((batch, heads, pairs, 2, block) + x.shape[3:])

        keys, values = split(log_k)[:, :, :, 0], split(v)[:, :, :, 0]
        queries, tops = split(log_q)[:, :, :, 1], split(query_max)[:, :, :, 1]
        key_max = lax.stop_gradient(jnp.max(keys, axis=3, keepdims=True))  # G (B, H, pairs, 1, F)
        scores = jnp.einsum(
            "bhnqf,bhnkf->bhnqk", _query_weights(queries, key_max, tops), _exp_below(keys, key_max)
        )
        upper = jnp.einsum("bhnqk,bhnkv->bhnqv", scores, values)
        numerator = numerator + jnp.stack([jnp.zeros_like(upper), upper], axis=3).reshape(numerator.shape)
        upper_sum = jnp.sum(scores, axis=-1)
        denominator = denominator + jnp.stack([jnp.zeros_like(upper_sum), upper_sum], axis=3).reshape(
            denominator.shape
        )
        block *= 2
    return numerator, denominator


def _log_features_chunked(
    log_q: jax.Array, log_k: jax.Array, v: jax.Array, chunk_size: int, eps: float
) -> jax.Array:
    """The causal "chunked" form of `linear_attention_from_log_features` (see the module docstring)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, length, heads, features = log_q.shape
    chunk = min(chunk_size, length)
    padded = -(-length // chunk) * chunk
    size = 1 << (chunk - 1).bit_length()  # each chunk padded to a power of two for `_earlier_in_chunk`

    def blocks(x: jax.Array, fill: float) -> jax.Array:  # (B, L, H, .) -> (L / C, B, H, P, .), padded
        x = jnp.pad(x, [(0, 0), (0, padded - length), (0, 0), (0, 0)], constant_values=fill)
        x = jnp.moveaxis(x.reshape((batch, padded // chunk, chunk) + x.shape[2:]), 1, 0)
        x = jnp.pad(x, [(0, 0), (0, 0), (0, size - chunk), (0, 0), (0, 0)], constant_values=fill)
        return jnp.moveaxis(x, 3, 2)

    @jax.checkpoint  # autodiff keeps each chunk's inputs and carry, not its O(P F log P) intermediates
    def one_chunk(carry, args):
        # Sums over the keys of earlier chunks, feature f stored times exp(-key_max_f).
        state, total, key_max = carry  # (B, H, F, Kv), (B, H, F), (B, H, F)
        lq, lk, vc = args  # (B, H, P, F), (B, H, P, F), (B, H, P, Kv)
        running = lax.stop_gradient(jnp.maximum(key_max[:, :, None], lax.cummax(lk, axis=2)))  # R
        query_max = lax.stop_gradient(_finite_or_zero(jnp.max(lq + running, axis=-1)))  # c (B, H, P)
        carried = _query_weights(lq, key_max[:, :, None], query_max)
        own = jnp.sum(jnp.exp(lq + lk - query_max[..., None]), axis=-1)  # j = i
        earlier, earlier_sum = _earlier_in_chunk(lq, lk, vc, query_max)
        numerator = jnp.einsum("bhqf,bhfv->bhqv", carried, state) + own[..., None] * vc + earlier
        denominator = jnp.einsum("bhqf,bhf->bhq", carried, total) + own + earlier_sum
        new_max = running[:, :, -1]
        decay = _exp_below(key_max, new_max)
        weights = _exp_below(lk, new_max[:, :, None])
        state = decay[..., None] * state + jnp.einsum("bhkf,bhkv->bhfv", weights, vc)
        total = decay * total + jnp.sum(weights, axis=2)
        return (state, total, new_max), _normalise(numerator, denominator, eps)

    init = (
        jnp.zeros((batch, heads, features, v.shape[-1]), v.dtype),
        jnp.zeros((batch, heads, features), v.dtype),
        jnp.full((batch, heads, features), -jnp.inf, v.dtype),
    )
    _, outs = lax.scan(one_chunk, init, (blocks(log_q, 0.0), blocks(log_k, -jnp.inf), blocks(v, 0.0)))
    outs = jnp.moveaxis(outs[:, :, :, :chunk], 0, 1)  # (B, L / C, H, C, Kv)
    outs = jnp.moveaxis(outs, 2, 3).reshape((batch, padded, heads, v.shape[-1]))
    return outs[:, :length]


def linear_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    feature_map: FeatureMap | FeatureMapName | str = elu_plus_one,
    mask: jax.Array | None = None,
    causal: bool = False,
    method: CausalMethod | str = CausalMethod.CHUNKED,
    chunk_size: int = 64,
    eps: float = DEFAULT_EPS,
) -> jax.Array:
    """Linear attention with phi = feature_map applied to q (B, Lq, H, K) and k (B, L, H, K); v (B, L, H, Kv).

    feature_map: a callable (see the module docstring) or "elu" / "relu". No 1/sqrt(K) scale is applied:
    that belongs to maps approximating softmax, which apply their own. A map with `log_features` (Performer's
    softmax map) is evaluated in log space, stabilised per feature.
    """
    if isinstance(feature_map, str):
        if feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"unknown feature map {feature_map!r}; expected one of {_VALID_FEATURE_MAPS} or a callable"
            )
        feature_map = FEATURE_MAPS[feature_map]
    log_features = getattr(feature_map, "log_features", None)
    if log_features is not None:  # stabilised per feature (see the module docstring)
        return linear_attention_from_log_features(
            log_features(q), log_features(k), v, mask=mask, causal=causal, method=method,
            chunk_size=chunk_size, eps=eps,
        )
    phi_q = feature_map(q, is_query=True, mask=None)
    phi_k = feature_map(k, is_query=False, mask=mask)
    return linear_attention_from_features(
        phi_q, phi_k, v, mask=mask, causal=causal, method=method, chunk_size=chunk_size, eps=eps
    )


class LinearAttentionState(NamedTuple):
    """Recurrent state of causal linear attention: S = sum_j phi(k_j) v_j^T (B, H, F, Kv), z = sum_j phi(k_j)
    (B, H, F), both float32 (or float64)."""

    kv_sum: jax.Array
    key_sum: jax.Array


def linear_attention_init_state(
    batch_size: int, heads: int, features: int, value_dim: int, dtype: jnp.dtype = jnp.float32
) -> LinearAttentionState:
    """The state of an empty prefix."""
    return LinearAttentionState(
        jnp.zeros((batch_size, heads, features, value_dim), dtype),
        jnp.zeros((batch_size, heads, features), dtype),
    )


def linear_attention_step(
    state: LinearAttentionState,
    phi_q_t: jax.Array,
    phi_k_t: jax.Array,
    v_t: jax.Array,
    *,
    eps: float = DEFAULT_EPS,
) -> tuple[LinearAttentionState, jax.Array]:
    """Absorbs key t, then reads query t.

    phi_q_t, phi_k_t (B, H, F), v_t (B, H, Kv) -> (state, out_t (B, H, Kv)).

    Output in v_t's dtype; O(B H F Kv) time and constant memory per token.
    """
    compute = state.kv_sum.dtype
    phi_q_t, phi_k_t, v_c = phi_q_t.astype(compute), phi_k_t.astype(compute), v_t.astype(compute)
    kv_sum = state.kv_sum + jnp.einsum("bhf,bhv->bhfv", phi_k_t, v_c)
    key_sum = state.key_sum + phi_k_t
    out = _normalise(
        jnp.einsum("bhf,bhfv->bhv", phi_q_t, kv_sum), jnp.einsum("bhf,bhf->bh", phi_q_t, key_sum), eps
    )
    return LinearAttentionState(kv_sum, key_sum), out.astype(v_t.dtype)


class LogFeatureState(NamedTuple):
    """Recurrent state of causal linear attention on log features (`linear_attention_from_log_features`):
    kv_sum (B, H, F, Kv) and key_sum (B, H, F), feature f stored times exp(-key_max_f), with key_max (B, H, F)
    the running max of each key log feature (-inf before the first key)."""

    kv_sum: jax.Array
    key_sum: jax.Array
    key_max: jax.Array


def log_feature_init_state(
    batch_size: int, heads: int, features: int, value_dim: int, dtype: jnp.dtype = jnp.float32
) -> LogFeatureState:
    """The state of an empty prefix."""
    return LogFeatureState(
        jnp.zeros((batch_size, heads, features, value_dim), dtype),
        jnp.zeros((batch_size, heads, features), dtype),
        jnp.full((batch_size, heads, features), -jnp.inf, dtype),
    )


def log_feature_step(
    state: LogFeatureState,
    log_phi_q_t: jax.Array,
    log_phi_k_t: jax.Array,
    v_t: jax.Array,
    *,
    eps: float = DEFAULT_EPS,
) -> tuple[LogFeatureState, jax.Array]:
    """Absorbs key t, then reads query t, stabilised per feature like the causal forms.

    log_phi_q_t, log_phi_k_t (B, H, F), v_t (B, H, Kv) -> (state, out_t (B, H, Kv) in v_t's dtype). When the
    running max of feature f grows from m to m', that feature's sums are multiplied by exp(m - m') first.
    O(B H F Kv) per token.
    """
    compute = state.kv_sum.dtype
    log_q, log_k, v_c = (x.astype(compute) for x in (log_phi_q_t, log_phi_k_t, v_t))
    key_max = lax.stop_gradient(jnp.maximum(state.key_max, log_k))
    decay = _exp_below(state.key_max, key_max)  # 0 before the first key (the sums are 0 then anyway)
    weights = jnp.exp(log_k - key_max)
    kv_sum = decay[..., None] * state.kv_sum + weights[..., None] * v_c[..., None, :]
    key_sum = decay * state.key_sum + weights
    query_max = lax.stop_gradient(jnp.max(log_q + key_max, axis=-1))
    phi_q = _query_weights(log_q, key_max, query_max)
    out = _normalise(
        jnp.einsum("bhf,bhfv->bhv", phi_q, kv_sum), jnp.einsum("bhf,bhf->bh", phi_q, key_sum), eps
    )
    return LogFeatureState(kv_sum, key_sum, key_max), out.astype(v_t.dtype)
