"""State-space sequence layers as pure functions: S4 (DPLR), S4D (diagonal), S5 (diagonal MIMO) and the
FFT convolutions they share.

Shape legend (shared by the package): B batch, L length, H channels, N state size, N2 = N / 2 (one
eigenvalue of each conjugate pair), P S5 state size (P2 = P / 2), F frequencies per chunk.

Conventions used by every function here:

* Discrete time: x_t = A_bar x_{t-1} + B_bar u_t, y_t = C x_t (+ D u_t outside), so the kernel is
  K_k = C A_bar^k B_bar with K_0 = C B_bar, and y = K * u (causal convolution, lag 0 included).
* Conjugate-pair halving: complex state parameters are stored for N2 = N / 2 states; each stands for itself
  and its complex conjugate partner (eigenvalue conj(Lambda_j), vectors conj(P_j), conj(B_j), conj(C_j)).
  The full system is then real. For diagonal systems this is the familiar K = 2 Re(sum over the half); for
  S4's DPLR system the rank-one term couples the halves, so every Cauchy sum adds the partner's term
  explicitly (w / d(Lambda) + conj(w) / d(conj(Lambda))), as the S4 code's "conj" Cauchy kernel does.
* Kernels are returned channels-first, (..., H, L); inputs and outputs are (B, L, H). `fft_causal_conv`
  takes the kernel as (H, L), as the kernel functions return it.
* Dtypes (mixed precision): inputs u may be bfloat16/float16. Kernels are computed in at least complex64, the
  FFT convolutions in at least float32 (returned in the promoted dtype of u and the kernel), and S5's scan
  accumulates in at least complex64 (ops.scan); nothing here accumulates in a 16-bit type.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ops import hippo
from ops.scan import linear_recurrence


class Discretization(enum.StrEnum):
    """Discretisations of the S4D and S5 systems: the `discretization` option of their mixers, `s5_discretize`.

    `s4d_kernel` also takes the Euler rules of `hippo.HippoDiscretization`; every rule here is one of those.
    """

    ZOH = "zoh"
    BILINEAR = "bilinear"


_DISCRETIZATIONS = tuple(d.value for d in Discretization)
_VALID_DISCRETIZATIONS = ", ".join(map(repr, _DISCRETIZATIONS))

# Largest number of complex elements of one (..., H, N2, F) Cauchy/Vandermonde intermediate when the chunk
# size is chosen automatically: 2^21 complex64 values = 16 MiB (32 MiB in complex128).
_CHUNK_BUDGET = 1 << 21


def _auto_chunk(per_position: int, positions: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}.")
        return min(chunk_size, positions)
    return max(1, min(positions, _CHUNK_BUDGET // max(per_position, 1)))


def _map_in_chunks(fn: Callable[[jax.Array], jax.Array], points: jax.Array, chunk: int, pad_value: complex
                   ) -> jax.Array:
    """Concatenates fn(points[i:i+chunk]) along the last axis; fn maps (F,) to (..., F).

    One chunk is evaluated at a time (lax.map), under jax.checkpoint so that the backward pass recomputes the
    (..., N2, F) intermediates of a chunk instead of storing them for all chunks: temporaries stay
    O(size of one chunk + size of the output) in the forward and the backward pass.
    """
    count = points.shape[0]
    if chunk >= count:
        return fn(points)
    num_chunks = -(-count // chunk)
    padded = jnp.pad(points, (0, num_chunks * chunk - count), constant_values=pad_value)
    out = lax.map(jax.checkpoint(fn), padded.reshape(num_chunks, chunk))  # (num_chunks, ..., F)
    out = jnp.moveaxis(out, 0, -2)
    return out.reshape(out.shape[:-2] + (num_chunks * chunk,))[..., :count]


def _complex_dtype(*arrays: jax.Array) -> jnp.dtype:
    return jnp.result_type(*arrays, jnp.complex64)


# ---------------------------------------------------------------------------------------------------------
# S4: DPLR kernel by the generating function at the roots of unity
# ---------------------------------------------------------------------------------------------------------


def s4_kernel(
    lam: jax.Array,
    p: jax.Array,
    b: jax.Array,
    c_tilde: jax.Array,
    step: jax.Array,
    length: int,
    *,
    chunk_size: int | None = None,
) -> jax.Array:
    """S4 convolution kernel K_k = C_bar A_bar^k B_bar, k < L, of the bilinear-discretised DPLR system.

    Continuous system (in the eigenbasis, conjugate-pair halved): A = diag(Lambda) - P P^*, B, and the
    learned C~ = C_bar (I - A_bar^L), all complex (H, N2) (C~ may carry leading axes, e.g. (2, H, N2) for
    the two directions of a bidirectional layer; Lambda, P, B may be (N2,) shared by all channels).
    step: (H,) positive step sizes.

    Method (docs/methods.md section 3): truncated generating function sum_{k<L} K_k z^k = C~ (I - z A_bar)^{-1} B_bar
    at z_l = exp(-2 pi i l / L) is the DFT of K. Written without the 2/(1+z) factor that is singular at
    z = -1:  G(z) = e C~ [(1 - z) I - (1 + z) (e/2) A]^{-1} B, and with A = Lambda - P P^* the Woodbury
    identity gives, with r = (1 + z) e / 2 and the Cauchy sums k_xy = sum_j x_j y_j / ((1 - z) - r Lambda_j)
    (over the kept states and their conjugate partners),
      G(z) = e [k_{C~,B} - r k_{C~,P} k_{P^*,B} / (1 + r k_{P^*,P})].
    The kernel is real, so only l = 0..L//2 are evaluated and an inverse real FFT returns K.

    Memory: frequencies are processed in chunks of F (chunk_size; automatic: the largest F whose stacked
    Cauchy terms, 4 numerators x 2 denominators x (leading) x H x N2 x F complex values, stay within 2^21),
    so temporaries are O(H N2 F + (leading) H L) rather than O(H N2 L); the backward pass recomputes each
    chunk (jax.checkpoint), so it stores no O(H N2 L) residuals either.
    Cost O(H N L) time, O(L log L) per channel for the FFT.

    Returns: K (..., H, L), real.
    """
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"s4_kernel: length must be a positive int; got {length!r}.")
    dtype = _complex_dtype(lam, p, b, c_tilde, step)
    lam, p, b, c_tilde = (jnp.asarray(v).astype(dtype) for v in (lam, p, b, c_tilde))
    step = jnp.asarray(step)
    half_step = (step / 2)[..., None]  # (H, 1)
    scaled_lam = half_step * lam  # (H, N2): (e/2) Lambda
    # The four numerators, stacked so one Cauchy sum serves them all: (4, ..., H, N2) after broadcasting.
    shape = jnp.broadcast_shapes(c_tilde.shape, lam.shape, p.shape, b.shape)
    numerators = jnp.stack([
        jnp.broadcast_to(c_tilde * b, shape),
        jnp.broadcast_to(c_tilde * p, shape),
        jnp.broadcast_to(jnp.conj(p) * b, shape),
        jnp.broadcast_to(jnp.conj(p) * p, shape),
    ])

    def generating_function(z: jax.Array) -> jax.Array:  # z (F,) -> G (..., H, F)
        one_minus, one_plus = 1 - z, 1 + z
        # Reciprocals once, shared by the four numerators: (H, N2, F) each.
        inv = 1 / (one_minus - one_plus * scaled_lam[..., None])
        inv_conj = 1 / (one_minus - one_plus * jnp.conj(scaled_lam)[..., None])
        w = numerators[..., None]
        sums = jnp.sum(w * inv + jnp.conj(w) * inv_conj, axis=-2)  # (4, ..., H, F)
        k_cb, k_cp, k_pb, k_pp = sums[0], sums[1], sums[2], sums[3]
        r = one_plus * half_step  # (H, F)
        return step[..., None] * (k_cb - r * k_cp * k_pb / (1 + r * k_pp))

    num_freqs = length // 2 + 1
    z = jnp.exp(-2j * math.pi * jnp.arange(num_freqs) / length).astype(dtype)
    per_freq = 4 * math.prod(shape) * 2  # numerators x (den, den_conj) per frequency
    chunk = _auto_chunk(per_freq, num_freqs, chunk_size)
    g = _map_in_chunks(generating_function, z, chunk, pad_value=0.0)  # pad z = 0: finite, discarded
    return jnp.fft.irfft(g, n=length, axis=-1)


def s4_recover_c_bar(c_tilde: jax.Array, a_bar_power: jax.Array) -> jax.Array:
    """C_bar = C~ (I - A_bar^L)^{-1}: the output vector of the recurrent form (row-vector convention y = C x).

    c_tilde: (..., N); a_bar_power: A_bar^L (..., N, N). Needs I - A_bar^L invertible (a stable A_bar).
    """
    a_bar_power = jnp.asarray(a_bar_power)
    n = a_bar_power.shape[-1]
    lhs = jnp.eye(n, dtype=a_bar_power.dtype) - a_bar_power
    return jnp.linalg.solve(jnp.swapaxes(lhs, -1, -2), jnp.asarray(c_tilde)[..., None])[..., 0]


def s4_recurrent_system(
    lam: jax.Array, p: jax.Array, b: jax.Array, c_tilde: jax.Array, step: jax.Array, length: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The dense discretised S4 system for step-by-step decoding: (A_bar (H, N, N), B_bar (H, N), C_bar).

    Arguments as in `s4_kernel`; the conjugate partners are unfolded (N = 2 N2 complex states),
    A = diag(Lambda) - P P^* is discretised by the bilinear rule and C_bar = C~ (I - A_bar^L)^{-1} with L
    the kernel length `length` (A_bar^L by repeated squaring). C_bar: (..., H, N). y_t = Re(C_bar x_t)
    (the imaginary part is rounding error). Cost O(H N^3 log L).
    """
    dtype = _complex_dtype(lam, p, b, c_tilde, step)
    unfold = hippo.unfold_conjugate_pairs
    lam, p, b, c_tilde = (unfold(jnp.asarray(v).astype(dtype)) for v in (lam, p, b, c_tilde))
    lam, p, b = jnp.broadcast_arrays(lam, p, b)
    a = jnp.vectorize(jnp.diag, signature="(n)->(n,n)")(lam) - p[..., :, None] * jnp.conj(p)[..., None, :]
    a_bar, b_bar = hippo.discretize(a, b, jnp.asarray(step), "bilinear")
    power = jnp.linalg.matrix_power(a_bar, length)
    return a_bar, b_bar, s4_recover_c_bar(c_tilde, power)


# ---------------------------------------------------------------------------------------------------------
# S4D: diagonal kernel by a Vandermonde product
# ---------------------------------------------------------------------------------------------------------


def s4d_kernel(
    lam: jax.Array,
    b: jax.Array,
    c: jax.Array,
    step: jax.Array,
    length: int,
    *,
    discretization: Discretization | hippo.HippoDiscretization | str = Discretization.ZOH,
    chunk_size: int | None = None,
) -> jax.Array:
    """S4D kernel K_k = 2 Re sum_n C_n B_bar_n A_bar_n^k, k < L, of a diagonal conjugate-pair-halved system.

    lam, b: (H, N2) complex (or (N2,)); c: (..., H, N2) complex; step: (H,). discretization: "zoh" or
    "bilinear" (or the Euler rules of `hippo.discretize_diagonal`). A_bar^k = exp(k log A_bar) (for ZOH
    log A_bar = step * Lambda exactly). Positions k are processed in chunks (see `s4_kernel`), so temporaries
    are O(H N2 F + H L). Cost O(H N L). Returns K (..., H, L), real.
    """
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"s4d_kernel: length must be a positive int; got {length!r}.")
    dtype = _complex_dtype(lam, b, c, step)
    lam, b, c = (jnp.asarray(v).astype(dtype) for v in (lam, b, c))
    step = jnp.asarray(step)[..., None]
    lam_bar, scale = hippo.discretize_diagonal(lam, step, discretization)
    log_lam_bar = step * lam if discretization == Discretization.ZOH else jnp.log(lam_bar)
    weights = c * b * scale  # (..., H, N2)

    def vandermonde(k: jax.Array) -> jax.Array:  # k (F,) -> (..., H, F)
        powers = jnp.exp(log_lam_bar[..., None] * k)  # (H, N2, F)
        return 2 * jnp.sum(weights[..., None] * powers, axis=-2).real

    positions = jnp.arange(length, dtype=jnp.finfo(dtype).dtype)
    chunk = _auto_chunk(math.prod(jnp.broadcast_shapes(weights.shape, log_lam_bar.shape)), length, chunk_size)
    return _map_in_chunks(vandermonde, positions, chunk, pad_value=0.0)


# ---------------------------------------------------------------------------------------------------------
# FFT convolutions
# ---------------------------------------------------------------------------------------------------------


def _check_conv_shapes(u: jax.Array, kernels: tuple[jax.Array, ...], where: str) -> None:
    if u.ndim != 3:
        raise ValueError(f"{where}: u must be (B, L, H); got {u.shape}.")
    for k in kernels:
        if k.ndim != 2 or k.shape[0] != u.shape[2]:
            raise ValueError(f"{where}: kernels must be (H, L_k) with H={u.shape[2]}; got {k.shape}.")


def _fft_precision(*arrays: jax.Array) -> list[jax.Array]:
    """Casts to the promoted dtype, at least float32 (FFTs of bfloat16/float16 lose too much precision)."""
    dtype = jnp.promote_types(jnp.result_type(*arrays), jnp.float32)
    return [a.astype(dtype) for a in arrays]


def fft_causal_conv(u: jax.Array, k: jax.Array) -> jax.Array:
    """Causal convolution y_t = sum_{s <= t} k[t - s] u_s per channel, by FFT: O(B H L log L).

    u: (B, L, H); k: (H, L_k) real (a kernel longer than L is cut to L; a shorter one is zero beyond L_k).
    Both are zero-padded to L + L_k >= the full linear-convolution length, so the product of the FFTs is a
    linear (not circular) convolution. Computed in at least float32. Returns (B, L, H) real, in the promoted
    dtype of (u, k).
    """
    u, k = jnp.asarray(u), jnp.asarray(k)
    _check_conv_shapes(u, (k,), "fft_causal_conv")
    out_dtype = jnp.result_type(u, k)
    u, k = _fft_precision(u, k)
    length = u.shape[1]
    k = k[:, :length]
    n = length + k.shape[1]
    u_f = jnp.fft.rfft(u, n=n, axis=1)
    k_f = jnp.fft.rfft(k, n=n, axis=-1).T  # (n//2+1, H)
    return jnp.fft.irfft(u_f * k_f, n=n, axis=1)[:, :length].astype(out_dtype)


def fft_bidirectional_conv(u: jax.Array, k_fwd: jax.Array, k_bwd: jax.Array) -> jax.Array:
    """y_t = sum_{s <= t} k_fwd[t - s] u_s + sum_{s > t} k_bwd[s - t - 1] u_s, by one circular FFT of size 2L.

    Equivalently y = k_fwd * u + flip(shift(k_bwd * flip(u))): the backward kernel starts at lag 1, so lag 0
    is counted once (by k_fwd), as in the S4 code. The two kernels are laid out as one circular kernel of
    length 2L: k_fwd at lags 0..L-1 and flip(k_bwd) at lags -L..-1; since |t - s| <= L - 1 < L, nothing wraps.
    u: (B, L, H); k_fwd, k_bwd: (H, L_k) (cut or zero-padded to L). Returns (B, L, H). Cost O(B H L log L).
    """
    u, k_fwd, k_bwd = jnp.asarray(u), jnp.asarray(k_fwd), jnp.asarray(k_bwd)
    _check_conv_shapes(u, (k_fwd, k_bwd), "fft_bidirectional_conv")
    out_dtype = jnp.result_type(u, k_fwd, k_bwd)
    u, k_fwd, k_bwd = _fft_precision(u, k_fwd, k_bwd)
    length = u.shape[1]

    def fit(k: jax.Array) -> jax.Array:
        k = k[:, :length]
        return jnp.pad(k, ((0, 0), (0, length - k.shape[1])))

    circular = jnp.concatenate([fit(k_fwd), jnp.flip(fit(k_bwd), axis=-1)], axis=-1)  # (H, 2L)
    u_f = jnp.fft.rfft(u, n=2 * length, axis=1)
    k_f = jnp.fft.rfft(circular, axis=-1).T
    return jnp.fft.irfft(u_f * k_f, n=2 * length, axis=1)[:, :length].astype(out_dtype)


# ---------------------------------------------------------------------------------------------------------
# S5: block-diagonal HiPPO-N initialisation and the diagonal MIMO system
# ---------------------------------------------------------------------------------------------------------


class S5CInit(enum.StrEnum):
    """Initialisations of S5's C~ (`s5_c_init`), S5's three options."""

    TRUNC_STANDARD_NORMAL = "trunc_standard_normal"
    LECUN_NORMAL = "lecun_normal"
    COMPLEX_NORMAL = "complex_normal"


# The values as plain strings, under their former name (models/ and experiments/ check against it).
S5_C_INITS = tuple(i.value for i in S5CInit)
_VALID_C_INITS = ", ".join(map(repr, S5_C_INITS))


def s5_hippo_init(state_size: int, blocks: int = 1, conj_sym: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """S5's block-diagonal HiPPO-N initialisation: (Lambda (P'), V (P, P')), complex128 numpy arrays.

    The normal part of LegS (the diagonal of its NPLR form: eigenvalues -1/2 + i w) is built for blocks of
    size P / J and repeated J times; V is the block-diagonal matrix of their eigenvectors (unitary columns,
    so V^* is its left inverse). With conj_sym, one eigenvalue of each pair is kept: P' = P / 2.
    """
    if state_size < 1 or blocks < 1 or state_size % blocks:
        raise ValueError(f"s5_hippo_init: state_size P={state_size} must be a positive multiple of blocks "
                         f"J={blocks}.")
    block_size = state_size // blocks
    if conj_sym and block_size % 2:
        raise ValueError(f"s5_hippo_init: conj_sym needs an even block size P/J; got {block_size} "
                         f"(P={state_size}, J={blocks}).")
    nplr = hippo.legs_nplr(block_size)
    if conj_sym:
        nplr = hippo.conjugate_half(nplr)
    return np.tile(nplr.Lambda, blocks), np.kron(np.eye(blocks), nplr.V)


def s5_c_init(key: jax.Array, kind: S5CInit | str, channels: int, v: np.ndarray, dtype: jnp.dtype = jnp.float32
              ) -> jax.Array:
    """C~ (H, P') complex for S5, in the eigenbasis. Mirrors S5's three options:

      "trunc_standard_normal": per output row, real and imaginary parts truncated normal with variance 1/P
        (S5: lecun_normal on each (1, P, 2) row) in the HiPPO basis, then C~ = C V.
      "lecun_normal": the same with variance 1/(P H) (lecun_normal over the whole (H, P, 2) array), then C V.
      "complex_normal": C~ drawn directly, real and imaginary parts N(0, 1/2).
    v: (P, P') from `s5_hippo_init`.
    """
    if kind not in S5_C_INITS:
        raise ValueError(f"s5_c_init: unknown C initialisation {kind!r}; expected one of {_VALID_C_INITS}.")
    p_full, p_kept = v.shape
    if kind == S5CInit.COMPLEX_NORMAL:
        parts = jax.random.normal(key, (2, channels, p_kept), dtype) * math.sqrt(0.5)
        return parts[0] + 1j * parts[1]
    fan_in = p_full if kind == S5CInit.TRUNC_STANDARD_NORMAL else p_full * channels
    # Truncated at +-2 std and rescaled so the variance is exactly 1 / fan_in (flax/jax lecun_normal).
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    parts = std * jax.random.truncated_normal(key, -2.0, 2.0, (2, channels, p_full), dtype)
    return (parts[0] + 1j * parts[1]) @ jnp.asarray(v, _complex_dtype(parts))


def s5_b_init(key: jax.Array, channels: int, v: np.ndarray, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """B~ = V^* B (P', H) complex, B (P, H) real lecun-normal (variance 1/P) in the HiPPO basis, as S5."""
    p_full = v.shape[0]
    std = math.sqrt(1.0 / p_full) / 0.87962566103423978
    b = std * jax.random.truncated_normal(key, -2.0, 2.0, (p_full, channels), dtype)
    return jnp.asarray(v.conj().T, _complex_dtype(b)) @ b


def s5_discretize(lam: jax.Array, b_tilde: jax.Array, log_step: jax.Array,
                  method: Discretization | str = Discretization.ZOH) -> tuple[jax.Array, jax.Array]:
    """(Lambda_bar (P'), B_bar (P', H)) for per-state steps exp(log_step) (P'); "zoh" or "bilinear"."""
    if method not in _DISCRETIZATIONS:
        raise ValueError(
            f"s5_discretize: unknown discretization {method!r}; expected one of {_VALID_DISCRETIZATIONS}."
        )
    lam_bar, scale = hippo.discretize_diagonal(lam, jnp.exp(log_step), method)
    return lam_bar, scale[:, None] * b_tilde


def s5_ssm(
    lam_bar: jax.Array,
    b_bar: jax.Array,
    c_tilde: jax.Array,
    u: jax.Array,
    *,
    conj_sym: bool = True,
    reverse: bool = False,
    method: str = "auto",
) -> jax.Array:
    """S5's linear MIMO SSM without feed-through: x_t = Lambda_bar x_{t-1} + B_bar u_t, y_t = Re(C~ x_t).

    lam_bar: (P'); b_bar: (P', H); c_tilde: (H, P'); u: (B, L, H) real. With conj_sym the kept half stands
    for the conjugate pairs and y = 2 Re(C~ x). reverse=True runs the recurrence from the end (the backward
    half of a bidirectional layer; its lag 0 is included, as in S5). Uses ops.scan.linear_recurrence.
    Cost O(B L (P H)). Returns (B, L, H) real.
    """
    bu = jnp.einsum("blh,ph->blp", u.astype(b_bar.dtype), b_bar)
    states, _ = linear_recurrence(lam_bar, bu, reverse=reverse, method=method)
    y = jnp.einsum("hp,blp->blh", c_tilde, states).real
    return 2 * y if conj_sym else y


def s5_step(state: jax.Array, u_t: jax.Array, lam_bar: jax.Array, b_bar: jax.Array, c_tilde: jax.Array,
            *, conj_sym: bool = True) -> tuple[jax.Array, jax.Array]:
    """One step of `s5_ssm`: state (B, P') complex, u_t (B, H) -> (state, y_t (B, H)). Cost O(B P H)."""
    state = lam_bar * state + u_t.astype(b_bar.dtype) @ b_bar.T
    y = (state @ c_tilde.T).real
    return state, 2 * y if conj_sym else y
