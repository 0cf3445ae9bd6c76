"""LRU: the Linear Recurrent Unit (Orvieto et al., 2023), as pure functions.

Per channel n of the state:  h_t = lambda_n h_{t-1} + gamma_n (B u_t)_n,   y_t = Re(C h_t) + D * u_t,
with lambda = exp(-exp(nu_log) + i exp(theta_log)), so |lambda| = exp(-exp(nu_log)) lies in (0, 1) for any
real nu_log (no clipping, no saturation), and gamma = exp(gamma_log) initialised to sqrt(1 - |lambda|^2),
which keeps E|h_t|^2 equal to E|Bu|^2 however close |lambda| is to 1.

Shapes: u (B, L, H) real; lambda, gamma (N,); B (N, H) complex; C (H, N) complex; D (H,) real.
The recurrence runs on `ops.scan.linear_recurrence` (never as lambda^t * cumsum(lambda^-k u_k), which
overflows). Cost: O(B L N H) for the projections, O(B L N) for the scan; decoding state O(B N).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ops.scan import linear_recurrence

Array = jax.Array


def ring_init(key: Array, n: int, r_min: float, r_max: float, max_phase: float = 2 * math.pi
              ) -> tuple[Array, Array]:
    """Samples (nu_log, theta_log), each (N,), for eigenvalues uniform on the ring r_min <= |lambda| <= r_max.

    Uniform on the ring's area means r^2 ~ U[r_min^2, r_max^2] (dx dy = r dr dtheta = d(r^2) dtheta / 2) and
    theta ~ U[0, max_phase]. With r = exp(-nu): nu = -log(r^2) / 2, stored as nu_log = log(nu).
    """
    if not 0.0 <= r_min < r_max < 1.0:
        raise ValueError(f"LRU ring needs 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
    if max_phase <= 0:
        raise ValueError(f"LRU max_phase must be positive, got {max_phase}")
    k_r, k_theta = jax.random.split(key)
    u_r = jax.random.uniform(k_r, (n,))
    u_theta = jax.random.uniform(k_theta, (n,))
    r_squared = u_r * (r_max**2 - r_min**2) + r_min**2
    nu_log = jnp.log(-0.5 * jnp.log(r_squared))
    theta_log = jnp.log(max_phase * u_theta)
    return nu_log, theta_log


def eigenvalues(nu_log: Array, theta_log: Array) -> Array:
    """lambda = exp(-exp(nu_log) + i exp(theta_log)), complex (N,)."""
    return jnp.exp(-jnp.exp(nu_log) + 1j * jnp.exp(theta_log))


def gamma_log_init(nu_log: Array, theta_log: Array) -> Array:
    """log sqrt(1 - |lambda|^2), the normaliser that makes the state's variance independent of |lambda|.

    1 - |lambda|^2 = -expm1(-2 nu) with nu = exp(nu_log): exact to rounding even for |lambda| within 1e-6 of 1,
    where 1 - exp(-2 nu) in float32 would lose most digits (0.7% error in gamma at nu = 1e-6).
    """
    return 0.5 * jnp.log(-jnp.expm1(-2.0 * jnp.exp(nu_log)))


def input_projection(u: Array, b_re: Array, b_im: Array, gamma: Array) -> Array:
    """gamma * (B u): u (..., H) real, B (N, H) as real and imaginary parts -> (..., N) complex."""
    bu = jnp.einsum("...h,nh->...n", u, b_re) + 1j * jnp.einsum("...h,nh->...n", u, b_im)
    return bu * gamma


def output_projection(h: Array, c_re: Array, c_im: Array) -> Array:
    """Re(C h): h (..., N) complex, C (H, N) as real and imaginary parts -> (..., H) real."""
    return jnp.einsum("...n,hn->...h", h.real, c_re) - jnp.einsum("...n,hn->...h", h.imag, c_im)


def lru(u: Array, nu_log: Array, theta_log: Array, gamma_log: Array, b_re: Array, b_im: Array,
        c_re: Array, c_im: Array, d: Array, *, h0: Array | None = None, reverse: bool = False,
        method: str = "auto") -> tuple[Array, Array]:
    """The LRU layer over a whole sequence.

    Args:
      u: (B, L, H) real inputs.
      nu_log, theta_log, gamma_log: (N,) real.
      b_re, b_im: (N, H); c_re, c_im: (H, N); d: (H,).
      h0: optional (B, N) complex initial state.
      reverse: run the recurrence from the end (the backward half of a bidirectional layer).
      method: the `linear_recurrence` method.
    Returns:
      y (B, L, H) real and the last state (B, N) complex.
    Dtypes: u may be bfloat16/float16 (mixed precision): it is promoted, so the projections, the recurrence (state
    at least complex64, accumulated by `linear_recurrence`) and y are in at least float32; the caller casts y.
    """
    u = u.astype(jnp.promote_types(jnp.result_type(u, nu_log, b_re, c_re, d), jnp.float32))
    lam = eigenvalues(nu_log, theta_log)
    bu = input_projection(u, b_re, b_im, jnp.exp(gamma_log))
    h, h_last = linear_recurrence(lam, bu, h0, reverse=reverse, method=method)
    return output_projection(h, c_re, c_im) + d * u, h_last


def lru_step(h: Array, u_t: Array, nu_log: Array, theta_log: Array, gamma_log: Array, b_re: Array,
             b_im: Array, c_re: Array, c_im: Array, d: Array) -> tuple[Array, Array]:
    """One recurrent step: h (B, N) complex, u_t (B, H) -> (new h, y_t (B, H)). O(N H) per example."""
    lam = eigenvalues(nu_log, theta_log)
    h = lam * h + input_projection(u_t, b_re, b_im, jnp.exp(gamma_log))
    return h, output_projection(h, c_re, c_im) + d * u_t
