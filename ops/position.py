"""Position information for attention: RoPE (with optional q/k bias), ALiBi, NoPE, length extrapolation.

Shape legend (shared by the package): B batch, L length, H heads, K key (head) width.

RoPE rotates consecutive pairs (x[2i], x[2i+1]) of a query or key at position p by the angle p * theta_i,
theta_i = base^(-2i/K), i < K/2 (interleaved pairs, as in RoFormer and docs/methods.md section 8). Then
<R_m q, R_n k> = q^T R_{n-m} k depends on positions only through n - m.

* RoPE + bias (docs/methods.md section 8): rotate (q + a) and (k + b) instead of q and k. The term a^T R_{n-m} b
  acts as a relative bias that decays with |n - m|; without the rotation a key bias would cancel in softmax.
* NoPE: no position encoding at all (`no_position` is the identity; the mixers' position="none").
* ALiBi: an additive bias -slope_h * |i - j| on the scores, slopes 2^(-8/H), 2^(-16/H), ... .

Length extrapolation (docs/methods.md section 14), s = L_test / L_train the scale factor:

* NTK-aware scaling ("fixed" NTK): base' = base * s^(K / (K - 2)).
* Dynamic NTK: the same base change with the scale of the current length, s(p) = max(1, (p + 1) / L_train) for
  a query at position p, applied to that query and to every key it scores (`ntk_dynamic_frequencies`,
  `rope_logits_per_query`): what decoding token by token with an unrotated key cache computes. Within the
  training length it is plain RoPE; scaling once per forward by the window length would equal fixed NTK.
* Mixed NTK (NTK-RoPE-mixed): theta_i' = theta_i / s^(((i + 1) / (K/2))^b), b = 0.75: a per-frequency factor
  that grows with i, near 1 for the highest frequency and exactly s for the lowest (`ntk_mixed_frequencies`).
* YaRN: theta_i' = (gamma_i + (1 - gamma_i) / s) theta_i with a ramp gamma_i in the number of rotations
  r_i = theta_i L_train / (2 pi) (gamma = 0 below beta_slow rotations, 1 above beta_fast), and the scores
  multiplied by (1 + 0.1 ln s)^2, i.e. q and k each multiplied by `yarn_attention_factor(s)` = 1 + 0.1 ln s.
* log-n scaling: scores of a query that sees n keys multiplied by max(1, ln n / ln L_train).
* ReRoPE / leaky ReRoPE: the relative position d = i - j is replaced by d inside the window |d| < w and by
  sign(d) (w + (|d| - w) / k) outside it (ReRoPE: k = infinity, i.e. clamped to w). No additive term: only
  the position indices change. Since the positions are no longer of the form (i) - (j), one score matrix
  per linear piece is needed (two for causal attention, three for bidirectional); `rerope_logits` builds
  them densely (O(L^2) memory: the dense path only).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _check_head_dim(head_dim: int) -> None:
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"RoPE needs an even, positive head width K; got K={head_dim}")


def rope_frequencies(head_dim: int, base: float = 10000.0) -> jax.Array:
    """theta_i = base^(-2i/K) for i < K/2, float32 (K/2,)."""
    _check_head_dim(head_dim)
    if base <= 1.0:
        raise ValueError(f"RoPE base must be > 1, got {base}")
    exponents = jnp.arange(0, head_dim // 2, dtype=jnp.float32) * (2.0 / head_dim)
    return base ** (-exponents)


def ntk_scaled_base(base: float, scale: float, head_dim: int) -> float:
    """NTK-aware base: base * s^(K / (K - 2)); s = L_test / L_train (s <= 1 returns base)."""
    _check_head_dim(head_dim)
    if head_dim <= 2:
        raise ValueError(f"NTK scaling needs K > 2, got K={head_dim}")
    if scale <= 1.0:
        return float(base)
    return float(base) * scale ** (head_dim / (head_dim - 2))


def ntk_mixed_frequencies(head_dim: int, scale: float, base: float = 10000.0, exponent: float = 0.75) -> jax.Array:
    """NTK-RoPE-mixed frequencies (K/2,): theta_i / lambda_i with lambda_i = s^(((i + 1) / (K/2))^b).

    docs/methods.md section 14. In the post's 1-based digit index m = i + 1, lambda_m = exp(a m^b) with
    a = ln(s) / (K/2)^b, so the lowest frequency (m = K/2) is interpolated by exactly s (as fixed NTK does) and
    the factor falls towards 1 for the high frequencies (lambda_1 = s^((2/K)^b), not exactly 1). b = exponent
    (0.75 in the author's patch; b = 1 gives a geometric ramp). s <= 1 returns plain RoPE.
    """
    if not exponent > 0:
        raise ValueError(f"NTK-mixed exponent b must be > 0, got {exponent}")
    theta = rope_frequencies(head_dim, base)
    if scale <= 1.0:
        return theta
    digits = jnp.arange(1, head_dim // 2 + 1, dtype=jnp.float32) / (head_dim // 2)  # m / (K/2), in (0, 1]
    return theta * jnp.exp(-math.log(scale) * digits**exponent)


def ntk_dynamic_frequencies(
    head_dim: int, positions: jax.Array, train_length: int, base: float = 10000.0
) -> jax.Array:
    """Dynamic NTK frequencies (..., K/2) for queries at `positions` (...,): NTK-aware RoPE at s(p).

    s(p) = max(1, (p + 1) / L_train) is the scale of the length seen so far, and theta_i(p) = base'(p)^(-2i/K)
    with base'(p) = base * s(p)^(K / (K - 2)), i.e. theta_i * s(p)^(-2i / (K - 2)). Positions p < L_train get
    plain RoPE. Use the row of a query for it *and* for every key it scores (`rope_logits_per_query`): keys
    rotated once with their own position's frequencies would break the relative-position property.
    """
    _check_head_dim(head_dim)
    if head_dim <= 2:
        raise ValueError(f"NTK scaling needs K > 2, got K={head_dim}")
    if train_length <= 0:
        raise ValueError(f"dynamic NTK needs the training length (> 0), got {train_length}")
    theta = rope_frequencies(head_dim, base)
    compute = jnp.promote_types(jnp.asarray(positions).dtype, jnp.float32)
    p = jnp.asarray(positions).astype(compute)
    scale = jnp.maximum(1.0, (p + 1.0) / train_length)[..., None]
    exponents = jnp.arange(0, head_dim // 2, dtype=compute) * (2.0 / (head_dim - 2))
    return theta.astype(compute) * scale ** (-exponents)


def yarn_frequencies(
    head_dim: int,
    *,
    scale: float,
    train_length: int,
    base: float = 10000.0,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
) -> jax.Array:
    """YaRN frequencies (K/2,): interpolate low frequencies by 1/s, keep high ones, ramp in between.

    gamma_i = clip((r_i - beta_slow) / (beta_fast - beta_slow), 0, 1) with r_i = theta_i L_train / (2 pi)
    rotations over the training length; theta_i' = (gamma_i + (1 - gamma_i) / s) theta_i. At s = 1 this is
    plain RoPE. The logit factor is separate: `yarn_attention_factor`.
    """
    if train_length <= 0:
        raise ValueError(f"YaRN needs the training length (> 0), got {train_length}")
    if not beta_fast > beta_slow:
        raise ValueError(f"YaRN ramp needs beta_fast > beta_slow, got {beta_fast} <= {beta_slow}")
    theta = rope_frequencies(head_dim, base)
    scale = max(float(scale), 1.0)
    rotations = theta * train_length / (2.0 * math.pi)
    gamma = jnp.clip((rotations - beta_slow) / (beta_fast - beta_slow), 0.0, 1.0)
    return (gamma + (1.0 - gamma) / scale) * theta


def yarn_attention_factor(scale: float) -> float:
    """1 + 0.1 ln s (1 for s <= 1): multiply q and k by it, so scores scale by its square."""
    return 1.0 + 0.1 * math.log(scale) if scale > 1.0 else 1.0


def log_n_scale(num_keys: jax.Array, train_length: int) -> jax.Array:
    """max(1, ln n / ln L_train): the log-n (entropy-invariance) factor for a query seeing n keys."""
    if train_length <= 1:
        raise ValueError(f"log-n scaling needs the training length (> 1), got {train_length}")
    n = jnp.maximum(jnp.asarray(num_keys, jnp.float32), 1.0)
    return jnp.maximum(1.0, jnp.log(n) / math.log(train_length))


def apply_rope(
    x: jax.Array, positions: jax.Array, frequencies: jax.Array, bias: jax.Array | None = None
) -> jax.Array:
    """Rotates pairs (x[2i], x[2i+1]) of (x + bias) by positions * theta_i.

    Args:
      x: (B, L, H, K) queries or keys.
      positions: (L,) or (B, L), integer or real (real positions serve position interpolation and ReRoPE).
      frequencies: (K/2,) theta_i.
      bias: None, (K,) or (H, K): added before the rotation (RoPE + bias, docs/methods.md section 8).
    Returns (B, L, H, K) in x's dtype; the rotation is computed in float32 (or float64 for float64 input).
    Cost O(B L H K).
    """
    if x.ndim != 4:
        raise ValueError(f"apply_rope expects x of shape (B, L, H, K), got {x.shape}")
    head_dim = x.shape[-1]
    _check_head_dim(head_dim)
    if frequencies.shape != (head_dim // 2,):
        raise ValueError(f"frequencies must have shape (K/2,) = ({head_dim // 2},), got {frequencies.shape}")
    compute = jnp.promote_types(x.dtype, jnp.float32)
    xc = x.astype(compute)
    if bias is not None:
        if bias.shape not in ((head_dim,), (x.shape[2], head_dim)):
            raise ValueError(
                f"RoPE bias must have shape (K,) or (H, K) = ({x.shape[2]}, {head_dim}), got {bias.shape}"
            )
        xc = xc + bias.astype(compute)
    positions = jnp.asarray(positions)
    if positions.ndim == 1:
        positions = positions[None]
    if positions.shape[-1] != x.shape[1]:
        raise ValueError(f"positions must have length L={x.shape[1]}, got shape {positions.shape}")
    angles = positions.astype(compute)[:, :, None, None] * frequencies.astype(compute)  # (B|1, L, 1, K/2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    pairs = xc.reshape(xc.shape[:-1] + (head_dim // 2, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(xc.shape).astype(x.dtype)


def rope_logits_per_query(
    q: jax.Array,
    k: jax.Array,
    frequencies: jax.Array,
    *,
    q_positions: jax.Array | None = None,
    k_positions: jax.Array | None = None,
    q_bias: jax.Array | None = None,
    k_bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Scores (B, H, Lq, Lk) of RoPE whose frequencies belong to the query: row i uses frequencies[i] for q_i and
    for every key, <R_i(theta(i)) q_i, R_j(theta(i)) k_j> = q_i^T R_{j-i}(theta(i)) k_j (dynamic NTK).

    Per pair p and with phi = (j - i) theta_p(i) (interleaved pairs e = x[2p], o = x[2p+1], as in `apply_rope`):
    (q_e k_e + q_o k_o) cos phi + (q_o k_e - q_e k_o) sin phi, summed over p. With the same frequencies in every
    row this equals ordinary RoPE scores. Computed pair by pair (a scan over K/2) on (B, H, Lq, Lk) arrays:
    O(B H Lq Lk K) time, O(B H Lq Lk) memory (the dense path only).

    Args:
      q: (B, Lq, H, K), k: (B, Lk, H, K); frequencies: (Lq, K/2); positions default to arange; q_bias/k_bias as
      in `apply_rope` (added before the rotation); scale multiplies the scores (default 1/sqrt(K)).
    Returns float32 (or float64) scores.
    """
    lq, lk, head_dim = q.shape[1], k.shape[1], q.shape[-1]
    _check_head_dim(head_dim)
    if frequencies.shape != (lq, head_dim // 2):
        raise ValueError(f"frequencies must have shape (Lq, K/2) = ({lq}, {head_dim // 2}), got {frequencies.shape}")
    compute = jnp.promote_types(q.dtype, jnp.float32)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    q_pos = jnp.arange(lq) if q_positions is None else jnp.asarray(q_positions)
    k_pos = jnp.arange(lk) if k_positions is None else jnp.asarray(k_positions)
    qc, kc = q.astype(compute), k.astype(compute)
    if q_bias is not None:
        qc = qc + q_bias.astype(compute)
    if k_bias is not None:
        kc = kc + k_bias.astype(compute)
    # (K/2, B, H, L) per pair, so that the scan runs over the pairs
    qe, qo = (jnp.transpose(qc[..., c::2], (3, 0, 2, 1)) for c in (0, 1))
    ke, ko = (jnp.transpose(kc[..., c::2], (3, 0, 2, 1)) for c in (0, 1))
    distance = (k_pos[None, :] - q_pos[:, None]).astype(compute)  # (Lq, Lk): j - i
    theta = jnp.moveaxis(frequencies.astype(compute), 1, 0)  # (K/2, Lq)

    def outer(a: jax.Array, b: jax.Array) -> jax.Array:  # (B, H, Lq), (B, H, Lk) -> (B, H, Lq, Lk)
        return a[..., :, None] * b[..., None, :]

    def add_pair(total, pair):
        q_e, q_o, k_e, k_o, theta_p = pair
        phi = distance * theta_p[:, None]
        aligned = outer(q_e, k_e) + outer(q_o, k_o)
        crossed = outer(q_o, k_e) - outer(q_e, k_o)
        return total + aligned * jnp.cos(phi) + crossed * jnp.sin(phi), None

    zeros = jnp.zeros((q.shape[0], q.shape[2], lq, lk), compute)
    total, _ = jax.lax.scan(add_pair, zeros, (qe, qo, ke, ko, theta))
    return total * scale


def no_position(x: jax.Array) -> jax.Array:
    """NoPE: the identity (causal attention can infer position from the variance of its state)."""
    return x


# ------------------------------------------------------------------------------------------------ ALiBi


def alibi_slopes(num_heads: int) -> jax.Array:
    """ALiBi head slopes (H,), float32: 2^(-8/H * h) for h = 1..H when H is a power of two.

    Otherwise (as in the ALiBi paper's code) the slopes of the nearest smaller power of two P, followed by
    every other slope of 2P until H slopes.
    """
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")

    def power_of_two_slopes(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    lower = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two_slopes(lower)
    if lower != num_heads:
        slopes += power_of_two_slopes(2 * lower)[0::2][: num_heads - lower]
    return jnp.asarray(slopes, jnp.float32)


def alibi_bias(slopes: jax.Array, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """Additive score bias (1, H, Lq, Lk) = -slope_h * |i - j| (symmetric, so it serves both directions)."""
    distance = jnp.abs(jnp.asarray(q_positions)[:, None] - jnp.asarray(k_positions)[None, :])
    return -slopes[None, :, None, None] * distance.astype(slopes.dtype)[None, None]


# --------------------------------------------------------------------------------------------- ReRoPE


def leaky_rerope_relative_position(distance: jax.Array, window: int, leak: float | None = None) -> jax.Array:
    """The relative position ReRoPE uses for d = i - j: d if |d| < w, else sign(d) (w + (|d| - w) / k).

    leak=None is ReRoPE (k = infinity: |d| clamped to w).
    """
    d = jnp.asarray(distance)
    outside = (jnp.abs(d) - window) / leak if leak is not None else 0.0
    far = jnp.sign(d) * (window + outside)
    return jnp.where(jnp.abs(d) < window, d, far)


def rerope_logits(
    q: jax.Array,
    k: jax.Array,
    frequencies: jax.Array,
    *,
    window: int,
    leak: float | None = None,
    q_positions: jax.Array | None = None,
    k_positions: jax.Array | None = None,
    q_bias: jax.Array | None = None,
    k_bias: jax.Array | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    """Scores (B, H, Lq, Lk) of (leaky) ReRoPE: RoPE at relative position `leaky_rerope_relative_position`.

    Each linear piece of the position map is ordinary RoPE with rescaled, shifted indices:
      |d| < w:  q at i, k at j                                  -> relative position i - j
      d >= w:   q at i/k + w (1 - 1/k), k at j/k                 -> w + (d - w) / k
      d <= -w:  q at i/k - w (1 - 1/k), k at j/k                 -> -w + (d + w) / k
    (ReRoPE, k = infinity: q at +-w, k at 0.) With causal=True only the first two are built (d >= 0 for the
    unmasked entries). Costs 2 or 3 dense score matrices: O(B H Lq Lk K) time and O(B H Lq Lk) memory.

    Args:
      q: (B, Lq, H, K), k: (B, Lk, H, K); positions default to arange; q_bias/k_bias as in `apply_rope`.
      scale: multiplies the scores; default 1/sqrt(K).
    Returns float32 (or float64) scores.
    """
    if window < 1:
        raise ValueError(f"ReRoPE window must be >= 1, got {window}")
    if leak is not None and leak <= 1.0:
        raise ValueError(f"leaky ReRoPE factor k must be > 1 (None for ReRoPE), got {leak}")
    lq, lk, head_dim = q.shape[1], k.shape[1], q.shape[-1]
    q_pos = jnp.arange(lq) if q_positions is None else jnp.asarray(q_positions)
    k_pos = jnp.arange(lk) if k_positions is None else jnp.asarray(k_positions)
    compute = jnp.promote_types(q.dtype, jnp.float32)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    q_pos_f, k_pos_f = q_pos.astype(compute), k_pos.astype(compute)

    def scores(q_at: jax.Array, k_at: jax.Array) -> jax.Array:
        qr = apply_rope(q.astype(compute), q_at, frequencies, q_bias)
        kr = apply_rope(k.astype(compute), k_at, frequencies, k_bias)
        return jnp.einsum("bqhk,bjhk->bhqj", qr, kr) * scale

    inv = 0.0 if leak is None else 1.0 / leak
    near = scores(q_pos_f, k_pos_f)
    ahead = scores(q_pos_f * inv + window * (1.0 - inv), k_pos_f * inv)
    distance = (q_pos[:, None] - k_pos[None, :])[None, None]
    out = jnp.where(distance >= window, ahead, near)
    if not causal:
        behind = scores(q_pos_f * inv - window * (1.0 - inv), k_pos_f * inv)
        out = jnp.where(distance <= -window, behind, out)
    return out
