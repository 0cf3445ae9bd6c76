"""Vector quantisation: nearest code, gradient estimators, codebook updates, FSQ and codebook health.

Shape legend (shared by the package): B batch, L length, H heads, K key (vector) width, S codebook size.
Codebooks are per head, (H, S, K), and the vectors they quantise are (..., H, K); a single codebook is the
case H = 1 (or pass an (S, K) codebook with (..., K) vectors where noted).

What is here (docs/methods.md sections 5 and 12):
  nearest_code          argmin_s ||x - c_s||^2 from ||x||^2 - 2 x.c + ||c||^2: never builds the (..., S, K)
                        difference tensor; at most (tokens x S) distances, optionally chunked over tokens.
  straight_through      x + sg(q - x): value q, gradient identity.
  rotation_trick        value q, Jacobian G = (|q| / |x|) R with R the rotation taking x/|x| to q/|q|
                        (Fifty et al.), matrix-free with every factor stop-gradiented.
  simvq_codebook        SimVQ: codebook = frozen random codes @ trainable W.
  EMA codebook          Transformer-VQ's parameterisation (c_sum (H, S, K), c_count (H, S)), its EMA targets,
                        and the surrogate loss whose plain-SGD step with learning rate 1 IS the EMA update.
  commitment_loss       masked mean over tokens of ||x - sg(q)||^2, summed over heads.
  codebook_loss         the same with the stop-gradient on x (SimVQ trains W through it).
  soft_assignments      p(s | x) = softmax_s(-||x - c_s||^2 / tau) (soft VQ, docs/methods.md section 6).
  kmeans                codebook initialisation by Lloyd iterations on a batch of vectors, seeded by uniformly
                        drawn vectors or by k-means++ (`kmeans_plusplus`).
  restart_dead_codes    replace codes whose EMA count fell below a share of the mean count by random current
                        vectors (dead-code restarts), as new EMA statistics.
  assign_surrogate_loss value 0, gradient p - target: one SGD(lr=1) step sets any parameter to its target.
  FSQ                   finite scalar quantisation (Mentzer et al.) with the paper's bound, its recommended
                        level sets, and the code <-> index bijection.
  health metrics        usage per code, entropy (in nats), dead-code share, relative quantisation error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

sg = jax.lax.stop_gradient

# Transformer-VQ: C = c_sum / max(c_count, MIN_CODE_COUNT), so a code that stops being used decays towards
# zero smoothly instead of dividing by zero.
MIN_CODE_COUNT = 0.01


# ------------------------------------------------------------------------------------------ nearest code


def _check_codebook(x: Array, codebook: Array) -> None:
    if codebook.ndim == 2:
        if x.shape[-1] != codebook.shape[-1]:
            raise ValueError(f"vectors have width {x.shape[-1]} but the codebook (S, K) = {codebook.shape} "
                             f"has width {codebook.shape[-1]}")
    elif codebook.ndim == 3:
        if x.ndim < 2 or x.shape[-2:] != (codebook.shape[0], codebook.shape[2]):
            raise ValueError(f"vectors (..., H, K) = {x.shape} do not match the per-head codebook "
                             f"(H, S, K) = {codebook.shape}")
    else:
        raise ValueError(f"codebook must be (S, K) or (H, S, K), got shape {codebook.shape}")


def squared_distances(x: Array, codebook: Array) -> Array:
    """||x - c_s||^2 for every code, clamped at 0 (the expanded form can round slightly below).

    x (..., K) with codebook (S, K) -> (..., S); or x (..., H, K) with codebook (H, S, K) -> (..., H, S).
    Cost O(N S K) time and O(N S) memory for N vectors.
    """
    _check_codebook(x, codebook)
    if codebook.ndim == 2:
        cross = jnp.einsum("...k,sk->...s", x, codebook)
    else:
        cross = jnp.einsum("...hk,hsk->...hs", x, codebook)
    x_sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    c_sq = jnp.sum(jnp.square(codebook), axis=-1)
    return jnp.maximum(x_sq - 2.0 * cross + c_sq, 0.0)


def nearest_code(x: Array, codebook: Array, *, chunk_size: int | None = None) -> tuple[Array, Array]:
    """Index of the nearest code and the squared distance to it.

    Args:
      x: (..., K) with codebook (S, K), or (..., H, K) with a per-head codebook (H, S, K).
      chunk_size: if given, the leading axis of x (the tokens) is processed in chunks of this many rows, so
        at most chunk_size x (...) x S distances exist at once.
    Returns:
      codes int32 and squared distances, both x.shape[:-1].
    """
    _check_codebook(x, codebook)

    def search(rows: Array) -> tuple[Array, Array]:
        dist = squared_distances(rows, codebook)
        return jnp.argmin(dist, axis=-1).astype(jnp.int32), jnp.min(dist, axis=-1)

    if chunk_size is None or x.ndim == 1 or x.shape[0] <= chunk_size:
        return search(x)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    n = x.shape[0]
    num_chunks = -(-n // chunk_size)
    padded = jnp.pad(x, [(0, num_chunks * chunk_size - n)] + [(0, 0)] * (x.ndim - 1))
    codes, dist = jax.lax.map(search, padded.reshape(num_chunks, chunk_size, *x.shape[1:]))
    return codes.reshape(-1, *codes.shape[2:])[:n], dist.reshape(-1, *dist.shape[2:])[:n]


def gather_codes(codes: Array, codebook: Array) -> Array:
    """Code vectors: codes (...) with codebook (S, K) -> (..., K); (..., H) with (H, S, K) -> (..., H, K)."""
    if codebook.ndim == 2:
        return jnp.take(codebook, codes, axis=0)
    if codebook.ndim != 3 or codes.shape[-1:] != codebook.shape[:1]:
        raise ValueError(f"codes (..., H) = {codes.shape} do not match the codebook (H, S, K) = "
                         f"{codebook.shape}")
    heads = jnp.arange(codebook.shape[0])
    return codebook[heads, codes]


# ------------------------------------------------------------------------------- gradient estimators


def straight_through(x: Array, quantized: Array) -> Array:
    """Straight-through estimator: the value of `quantized`, the gradient of the identity in x (none to q)."""
    return x + sg(quantized - x)


def rotation_trick(x: Array, quantized: Array, eps: float = 1e-12) -> Array:
    """Rotation trick (Fifty et al. 2024; docs/methods.md section 12): value q, Jacobian d out / d x = G.

    G = (|q| / |x|) R with R = I - 2 r r^T + 2 q_hat x_hat^T and r = (x_hat + q_hat) / |x_hat + q_hat|, which
    rotates x_hat onto q_hat, so G x = q. Computed matrix-free with every factor stop-gradiented:
        out = sg(|q| / |x|) [x - 2 (sg(r) . x) sg(r) + 2 (sg(x_hat) . x) sg(q_hat)] + sg(q - that),
    where the last term is exactly zero in exact arithmetic and only makes the forward value q to the last
    bit (also when eps guards x = 0 or q = -x). Gradient to x: G^T g; none to q. Vectors along the last axis.
    """
    x_norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    q_norm = jnp.linalg.norm(quantized, axis=-1, keepdims=True)
    x_hat = sg(x / jnp.maximum(x_norm, eps))
    q_hat = sg(quantized / jnp.maximum(q_norm, eps))
    r = x_hat + q_hat
    r = sg(r / jnp.maximum(jnp.linalg.norm(r, axis=-1, keepdims=True), eps))
    scale = sg(q_norm / jnp.maximum(x_norm, eps))
    rotated = x - 2.0 * jnp.sum(r * x, axis=-1, keepdims=True) * r \
        + 2.0 * jnp.sum(x_hat * x, axis=-1, keepdims=True) * q_hat
    out = scale * rotated
    return out + sg(quantized - out)


def simvq_codebook(frozen_codes: Array, projection: Array) -> Array:
    """SimVQ codebook e_s = q_s W: frozen codes (H, S, K') (stop-gradiented here), W (H, K', K) -> (H, S, K).

    Only W trains, through the codebook loss; every code moves with W, so unused codes do not die.
    """
    if frozen_codes.ndim != 3 or projection.ndim != 3 or frozen_codes.shape[::2] != projection.shape[:2]:
        raise ValueError(f"SimVQ needs frozen codes (H, S, K') and a projection (H, K', K); got "
                         f"{frozen_codes.shape} and {projection.shape}")
    return jnp.einsum("hsj,hjk->hsk", sg(frozen_codes), projection)


# --------------------------------------------------------------------------------------- EMA codebook


def codebook_from_ema(c_sum: Array, c_count: Array) -> Array:
    """Transformer-VQ codebook C = sg(c_sum / max(c_count, 0.01)) (H, S, K); c_sum (H, S, K), c_count (H, S).

    Stop-gradiented: the codebook moves only through `ema_surrogate_loss`, never through the task loss.
    """
    return sg(c_sum / jnp.maximum(c_count, MIN_CODE_COUNT)[..., None])


def _token_weights(shape: tuple[int, ...], mask: Array | None, dtype: jnp.dtype) -> Array:
    """Per-token weights (...) from an optional boolean mask (True = real token)."""
    if mask is None:
        return jnp.ones(shape, dtype)
    if mask.shape != shape:
        raise ValueError(f"mask has shape {mask.shape}, expected the token shape {shape}")
    return mask.astype(dtype)


def ema_targets(x: Array, codes: Array, c_sum: Array, c_count: Array, decay: float,
                mask: Array | None = None) -> tuple[Array, Array]:
    """EMA targets of Transformer-VQ for one update.

        c_sum_tgt   = decay * c_sum   + (1 - decay) * sum_t r_ts x_t
        c_count_tgt = decay * c_count + (1 - decay) * sum_t r_ts

    with r_ts = 1 if token t (real, per the mask) uses code s. Sums run over every token of the batch (all
    leading axes), so c_count tracks the number of tokens per code per update.

    Args:
      x: (..., H, K) vectors (stop-gradiented here); codes: (..., H) int; c_sum (H, S, K); c_count (H, S);
      mask: (...) bool or None.
    """
    if codes.shape != x.shape[:-1] or c_sum.shape[0] != x.shape[-2] or c_count.shape != c_sum.shape[:2]:
        raise ValueError(f"EMA targets need x (..., H, K), codes (..., H), c_sum (H, S, K), c_count (H, S); "
                         f"got {x.shape}, {codes.shape}, {c_sum.shape}, {c_count.shape}")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    weights = _token_weights(x.shape[:-2], mask, c_sum.dtype)
    onehot = jax.nn.one_hot(codes, c_sum.shape[1], dtype=c_sum.dtype) * weights[..., None, None]
    onehot = onehot.reshape(-1, *onehot.shape[-2:])
    batch_sum = jnp.einsum("nhs,nhk->hsk", onehot, sg(x).reshape(-1, *x.shape[-2:]).astype(c_sum.dtype))
    batch_count = jnp.sum(onehot, axis=0)
    return (decay * sg(c_sum) + (1.0 - decay) * batch_sum,
            decay * sg(c_count) + (1.0 - decay) * batch_count)


def assign_surrogate_loss(params: Any, targets: Any) -> Array:
    """sum sg(p - p_tgt) * (p - sg(p)) over the leaves of two matching pytrees: value 0, gradient p - p_tgt.

    One plain-SGD step with learning rate 1 on it moves p to p - (p - p_tgt) = p_tgt (to rounding; exactly for
    integer-valued floats below 2^24 in float32). This only holds if
      (a) p gets no other gradient (read it through stop-gradients only), and
      (b) the optimiser of p is exactly SGD(lr=1): no Adam, no clipping, no weight decay, no loss scaling or
          averaging of this term.
    """
    leaves, treedef = jax.tree.flatten(params)
    target_leaves = treedef.flatten_up_to(targets)
    total = jnp.zeros((), jnp.result_type(*leaves) if leaves else jnp.float32)
    for p, target in zip(leaves, target_leaves):
        total = total + jnp.sum(sg(p - target) * (p - sg(p)))
    return total


def ema_surrogate_loss(c_sum: Array, c_count: Array, c_sum_target: Array, c_count_target: Array) -> Array:
    """sum sg(c - c_tgt) * (c - sg(c)) over c in (c_sum, c_count): value 0, gradient c - c_tgt.

    One plain-SGD step with learning rate 1 on it moves c to c - (c - c_tgt) = c_tgt, the EMA update, under
    the conditions of `assign_surrogate_loss` (the codebook is read through `codebook_from_ema`, which is
    stop-gradiented, and its optimiser is SGD(lr=1) and nothing else).
    """
    return assign_surrogate_loss((c_sum, c_count), (c_sum_target, c_count_target))


# ---------------------------------------------------------------------------------------------- losses


def _masked_token_mean(per_token: Array, mask: Array | None) -> Array:
    """Mean over real tokens of per_token (..., H), summed over heads (0 if there are no real tokens)."""
    weights = _token_weights(per_token.shape[:-1], mask, per_token.dtype)
    total = jnp.sum(per_token * weights[..., None])
    return total / jnp.maximum(jnp.sum(weights), 1.0)


def commitment_loss(x: Array, quantized: Array, mask: Array | None = None) -> Array:
    """Commitment loss: masked mean over tokens of ||x - sg(q)||^2, summed over heads (unweighted).

    x, quantized (..., H, K); mask (...) bool or None. Transformer-VQ divides by all B*L tokens including
    padding; here the mean is over real tokens. The caller multiplies by the weight (1e-4 there).
    """
    return _masked_token_mean(jnp.sum(jnp.square(x - sg(quantized)), axis=-1), mask)


def codebook_loss(x: Array, quantized: Array, mask: Array | None = None) -> Array:
    """Codebook loss: masked mean over tokens of ||sg(x) - q||^2, summed over heads (VQ-VAE / SimVQ)."""
    return _masked_token_mean(jnp.sum(jnp.square(sg(x) - quantized), axis=-1), mask)


def soft_assignments(x: Array, codebook: Array, temperature: float) -> Array:
    """p(s | x) = softmax_s(-||x - c_s||^2 / temperature), differentiable in x and the codebook.

    Shapes as `squared_distances`: (..., H, K) with (H, S, K) -> (..., H, S).
    """
    if temperature <= 0:
        raise ValueError(f"soft-VQ temperature must be positive, got {temperature}")
    return jax.nn.softmax(-squared_distances(x, codebook) / temperature, axis=-1)


# ----------------------------------------------------------------------------------------------- k-means


KMEANS_INITS = ("random", "kmeans++")


def sample_vectors(key: Array, weights: Array, num: int) -> Array:
    """Indices (num,) int32 of vectors drawn uniformly among those with weight > 0; deterministic given `key`.

    Without replacement (Gumbel top-k) when num <= N = weights.shape[0], with replacement otherwise. If no
    weight is positive the indices are arbitrary (but valid): callers check that there is a real vector.
    """
    if weights.ndim != 1 or num < 1:
        raise ValueError(f"sample_vectors needs weights (N,) and num >= 1, got {weights.shape} and {num}")
    log_w = jnp.where(weights > 0, 0.0, -jnp.inf)
    if num <= weights.shape[0]:
        _, idx = jax.lax.top_k(jax.random.gumbel(key, weights.shape, jnp.float32) + log_w, num)
        return idx.astype(jnp.int32)
    return jax.random.categorical(key, log_w, shape=(num,)).astype(jnp.int32)


def kmeans_plusplus(x: Array, num_codes: int, key: Array, mask: Array | None = None) -> Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): (S, K) centroids drawn from the real vectors x (N, K).

    The first centroid is a uniformly drawn real vector; each next one is drawn with probability proportional
    to its squared distance to the nearest centroid chosen so far. When every real vector already coincides
    with a centroid (fewer distinct vectors than codes) the draw falls back to uniform, so centroids repeat.
    Deterministic given `key`; any N >= 1 (also N < S). Cost O(N S K), S sequential draws.
    """
    if x.ndim != 2 or num_codes < 1:
        raise ValueError(f"k-means++ takes vectors (N, K) and num_codes >= 1, got {x.shape} and {num_codes}")
    weights = _token_weights(x.shape[:1], mask, x.dtype)
    uniform = jnp.where(weights > 0, 0.0, -jnp.inf)
    keys = jax.random.split(key, num_codes)
    first = x[jax.random.categorical(keys[0], uniform)]
    centroids = jnp.zeros((num_codes, x.shape[1]), x.dtype).at[0].set(first)
    dist = weights * jnp.sum(jnp.square(x - first), axis=-1)

    def draw(i: int, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        centroids, dist = carry
        logits = jnp.where(dist > 0, jnp.log(jnp.where(dist > 0, dist, 1.0)), -jnp.inf)
        logits = jnp.where(jnp.any(dist > 0), logits, uniform)
        chosen = x[jax.random.categorical(keys[i], logits)]
        return (centroids.at[i].set(chosen),
                jnp.minimum(dist, weights * jnp.sum(jnp.square(x - chosen), axis=-1)))

    centroids, _ = jax.lax.fori_loop(1, num_codes, draw, (centroids, dist))
    return centroids


def kmeans(x: Array, num_codes: int, key: Array, *, num_iters: int = 10, mask: Array | None = None,
           init: str = "random") -> Array:
    """A codebook (S, K) from Lloyd's k-means on the vectors x (N, K); deterministic given `key`.

    init="random": the initial centroids are S distinct real vectors drawn uniformly (without replacement;
    needs S <= N; if there are fewer than S real vectors, some initial centroids are padded vectors).
    init="kmeans++": `kmeans_plusplus` seeding (any N). Each iteration assigns every real vector to its
    nearest centroid and moves each centroid to the mean of its vectors (a centroid with no vectors stays
    where it is). The quantisation error never increases from one iteration to the next. Cost
    O(num_iters N S K).
    """
    if x.ndim != 2:
        raise ValueError(f"k-means takes vectors (N, K), got shape {x.shape}")
    if init not in KMEANS_INITS:
        raise ValueError(f"unknown k-means init {init!r}; expected one of {KMEANS_INITS}")
    if init == "random" and not 1 <= num_codes <= x.shape[0]:
        raise ValueError(f"k-means needs 1 <= num_codes <= N = {x.shape[0]}, got num_codes={num_codes}")
    weights = _token_weights(x.shape[:1], mask, x.dtype)
    if init == "kmeans++":
        centroids = kmeans_plusplus(x, num_codes, key, mask)
    else:
        # Gumbel top-k over log-weights: uniform sampling without replacement among the real vectors.
        gumbel = jax.random.gumbel(key, x.shape[:1], x.dtype)
        scores = jnp.where(weights > 0, gumbel, -jnp.inf)
        _, first = jax.lax.top_k(scores, num_codes)
        centroids = x[first]

    def lloyd(_: int, centroids: Array) -> Array:
        codes, _ = nearest_code(x, centroids)
        onehot = jax.nn.one_hot(codes, num_codes, dtype=x.dtype) * weights[:, None]
        counts = jnp.sum(onehot, axis=0)
        sums = onehot.T @ x
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)

    return jax.lax.fori_loop(0, num_iters, lloyd, centroids)


# ------------------------------------------------------------------------------------ dead-code restarts


def restart_dead_codes(c_sum: Array, c_count: Array, x: Array, key: Array, threshold: float,
                       mask: Array | None = None) -> tuple[Array, Array, Array]:
    """Dead-code restarts for the EMA codebook: new (c_sum, c_count) and the restarted codes (H, S) bool.

    A code of head h is dead when c_count[h, s] < threshold * mean_s c_count[h, s] (its EMA usage is below
    `threshold` times the uniform share). Each dead code is moved to a real vector x_t of the current batch
    drawn uniformly (without replacement while there are enough tokens; one draw of token positions shared by
    the heads, each head taking its own key vector there), with count n = max(threshold * mean count,
    MIN_CODE_COUNT) and c_sum = n x_t, so the code equals x_t and stays alive only if at least about
    threshold * (uniform share) tokens per update keep choosing it. With no real token nothing is restarted.

    Args:
      c_sum (H, S, K), c_count (H, S): the EMA statistics (usually the targets of `ema_targets`).
      x (..., H, K): the batch's vectors (stop-gradiented here); mask (...) bool or None.
      threshold: in (0, 1]; 0 would restart nothing.
    """
    if c_sum.ndim != 3 or c_count.shape != c_sum.shape[:2] or x.shape[-2:] != (c_sum.shape[0], c_sum.shape[2]):
        raise ValueError(f"restarts need c_sum (H, S, K), c_count (H, S) and x (..., H, K); got {c_sum.shape}, "
                         f"{c_count.shape}, {x.shape}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"dead-code threshold must be in (0, 1], got {threshold}")
    heads, num_codes, width = c_sum.shape
    weights = _token_weights(x.shape[:-2], mask, jnp.float32).reshape(-1)
    vectors = sg(x).reshape(-1, heads, width).astype(c_sum.dtype)
    level = threshold * jnp.mean(c_count, axis=-1, keepdims=True)                  # (H, 1)
    dead = (c_count < level) & jnp.any(weights > 0)
    new = jnp.swapaxes(vectors[sample_vectors(key, weights, num_codes)], 0, 1)      # (H, S, K)
    count = jnp.broadcast_to(jnp.maximum(level, MIN_CODE_COUNT), c_count.shape)
    return (jnp.where(dead[..., None], new * count[..., None], c_sum), jnp.where(dead, count, c_count), dead)


# --------------------------------------------------------------------------------------------------- FSQ

# Mentzer et al. 2023, Table 1: target codebook size -> levels per dimension (products are close to, not
# equal to, the targets: 240, 1000, 4375, 15360, 64000). Rule of thumb: every level >= 5.
FSQ_RECOMMENDED_LEVELS: dict[int, tuple[int, ...]] = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}


def _fsq_levels(levels: Sequence[int], width: int | None = None) -> Array:
    levels = tuple(int(level) for level in levels)
    if not levels or min(levels) < 2:
        raise ValueError(f"FSQ levels must be a non-empty sequence of integers >= 2, got {levels}")
    if width is not None and width != len(levels):
        raise ValueError(f"FSQ input has {width} channels but {len(levels)} levels were given: {levels}")
    return jnp.asarray(levels)


def fsq_bound(z: Array, levels: Sequence[int], eps: float = 1e-3) -> Array:
    """The paper's bound: tanh(z + shift) * half_l - offset, per channel of z (..., d).

    half_l = (L - 1)(1 - eps) / 2; offset = 0.5 for even L (0 for odd); shift = tan(offset / half_l), as in
    the paper's code. (atanh would centre bound(0) exactly but is undefined for L = 2, where
    offset / half_l > 1; with tan, |bound(0)| < 1e-3 for L >= 3 and 0.043 for L = 2: it rounds to 0 always.)
    Rounding the result gives the integers {-(L//2), ..., L - 1 - L//2}: L values, symmetric for odd L and
    with the extra value on the negative side for even L.
    """
    lv = _fsq_levels(levels, z.shape[-1]).astype(z.dtype)
    half_l = (lv - 1) * (1 - eps) / 2
    offset = jnp.where(lv % 2 == 0, 0.5, 0.0).astype(z.dtype)
    shift = jnp.tan(offset / half_l)
    return jnp.tanh(z + shift) * half_l - offset


def fsq_quantize(z: Array, levels: Sequence[int], eps: float = 1e-3) -> Array:
    """FSQ codes in [-1, 1]: round(bound(z)) / (L // 2), with a straight-through round (gradient of bound)."""
    bounded = fsq_bound(z, levels, eps)
    rounded = bounded + sg(jnp.round(bounded) - bounded)
    half_width = (_fsq_levels(levels) // 2).astype(z.dtype)
    return rounded / half_width


def fsq_codes_to_indices(codes: Array, levels: Sequence[int]) -> Array:
    """Index sum_i (code_i (L_i // 2) + L_i // 2) basis_i, basis = cumprod([1, L_1, ...]): (..., d) -> (...).

    A bijection from the prod(L) FSQ codes onto 0 .. prod(L) - 1 (inverse: `fsq_indices_to_codes`).
    """
    lv = _fsq_levels(levels, codes.shape[-1])
    half_width = lv // 2
    digits = jnp.round(codes * half_width + half_width).astype(jnp.int32)
    basis = jnp.cumprod(jnp.concatenate([jnp.ones(1, jnp.int32), lv[:-1].astype(jnp.int32)]))
    return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)


def fsq_indices_to_codes(indices: Array, levels: Sequence[int], dtype: jnp.dtype = jnp.float32) -> Array:
    """Inverse of `fsq_codes_to_indices`: int (...) -> codes (..., d) in [-1, 1]."""
    lv = _fsq_levels(levels)
    basis = jnp.cumprod(jnp.concatenate([jnp.ones(1, jnp.int32), lv[:-1].astype(jnp.int32)]))
    digits = (indices[..., None] // basis) % lv
    half_width = lv // 2
    return ((digits - half_width) / half_width).astype(dtype)


def fsq_codebook_size(levels: Sequence[int]) -> int:
    """prod(levels), the number of FSQ codes."""
    return math.prod(int(level) for level in levels)


# ---------------------------------------------------------------------------------------- health metrics


def code_usage(codes: Array, num_codes: int, mask: Array | None = None) -> Array:
    """Share of the (real) tokens assigned to each code: codes (..., H) int -> (H, S), rows summing to 1.

    Rows are all zero when there are no real tokens.
    """
    weights = _token_weights(codes.shape[:-1], mask, jnp.float32)
    onehot = jax.nn.one_hot(codes, num_codes, dtype=jnp.float32) * weights[..., None, None]
    counts = jnp.sum(onehot.reshape(-1, *onehot.shape[-2:]), axis=0)
    return counts / jnp.maximum(jnp.sum(counts, axis=-1, keepdims=True), 1e-30)


def code_entropy(usage: Array) -> Array:
    """Entropy in NATS of the usage distribution (..., S) -> (...); log(S) at uniform use, 0 for one code.

    Divide by log(2) for bits; exp(entropy) is the perplexity (effective number of codes in use).
    """
    return -jnp.sum(jnp.where(usage > 0, usage * jnp.log(jnp.where(usage > 0, usage, 1.0)), 0.0), axis=-1)


def dead_code_fraction(usage: Array) -> Array:
    """Share of codes that no token used: usage (..., S) -> (...)."""
    return jnp.mean((usage <= 0).astype(jnp.float32), axis=-1)


def relative_quantization_error(x: Array, quantized: Array, mask: Array | None = None,
                                eps: float = 1e-12) -> Array:
    """Mean over real tokens and heads of ||x - q|| / ||x||: x, quantized (..., H, K) -> scalar."""
    ratio = jnp.linalg.norm(x - quantized, axis=-1) / jnp.maximum(jnp.linalg.norm(x, axis=-1), eps)
    weights = _token_weights(x.shape[:-2], mask, ratio.dtype)
    return jnp.sum(ratio * weights[..., None]) / jnp.maximum(jnp.sum(weights) * x.shape[-2], 1.0)
