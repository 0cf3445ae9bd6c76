"""RG-LRU: the Real-Gated Linear Recurrent Unit of Griffin / RecurrentGemma (De et al., 2024), as pure functions.

Per channel (docs/methods.md section 16.3), with the gate pre-activations computed by the caller from the input x:

    r_t = sigmoid(gate_a_t),  i_t = sigmoid(gate_x_t)                 recurrence and input gates
    log a_t = -c r_t softplus(a_param)                                c = 8; a_param stores Lambda' = -Lambda
    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)

so a_t = r^(c r_t) with the base decay r = exp(-softplus(a_param)) = sigmoid(-a_param). At a reset (the first
token of a sequence) the state is replaced: a_t = 0 and the multiplier is 1, h_t = i_t x_t. The square root has
a custom VJP whose backward pass reads max(1 - a^2, 1 / (4 m^2)) with m = 1000, so its derivative never exceeds
m (the official code's guard against NaNs in low precision).

Numerics: log a_t is formed in float32 (or float64) and only exponentiated, never inverted; 1 - a_t^2 is
-expm1(2 log a_t), exact to rounding when a_t is close to 1 (where 1 - exp(.) in float32 loses digits).
The recurrence runs on `ops.scan.linear_recurrence` (time-varying a, float32 accumulation).

Shapes: x, gate_a, gate_x (B, L, D); a_param (D,); state (B, D); reset (B, L) bool. Cost O(B L D); the
block-diagonal gate projections cost O(B L D^2 / H) for H blocks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ops.scan import linear_recurrence

Array = jax.Array

C_DEFAULT = 8.0           # the constant c of log a_t = -c r_t softplus(a_param)
MAX_SQRT_GRADIENT = 1000.0  # the cap on d sqrt(u) / du in the backward pass


# ------------------------------------------------------------------------------------------------ the sqrt


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sqrt_bound_derivative(u: Array, max_gradient: float = MAX_SQRT_GRADIENT) -> Array:
    """sqrt(u), whose backward pass uses max(u, 1 / (4 max_gradient^2)) in place of u.

    d sqrt(u) / du = 1 / (2 sqrt(u)) is then at most max_gradient: at u = 0 (a_t = 1) the true derivative is
    infinite. The forward value is the exact sqrt.
    """
    return jnp.sqrt(u)


def _sqrt_fwd(u: Array, max_gradient: float) -> tuple[Array, Array]:
    return jnp.sqrt(u), u


def _sqrt_bwd(max_gradient: float, u: Array, g: Array) -> tuple[Array]:
    floored = jnp.maximum(u, 1.0 / (4.0 * max_gradient**2))
    return (g * 0.5 / jnp.sqrt(floored),)


sqrt_bound_derivative.defvjp(_sqrt_fwd, _sqrt_bwd)


# ------------------------------------------------------------------------------------------------ init


def a_param_init(key: Array, shape: Sequence[int], r_min: float = 0.9, r_max: float = 0.999,
                 dtype: jnp.dtype = jnp.float32) -> Array:
    """a_param such that the base decay r = exp(-softplus(a_param)) is uniform on the ring r_min <= r <= r_max.

    Uniform in r^2 (the area of the ring), as the official initialiser: r^2 = U (r_max^2 - r_min^2) + r_min^2
    (+ 1e-8, which keeps r_min = 0 finite), then a_param = softplus^-1(-ln r) = ln(e^{-ln r} - 1) = ln(1/r - 1).
    At r_t = 1 the decay is a = r^c, e.g. r^8 in [0.43, 0.992] for the default ring [0.9, 0.999].
    """
    if not 0.0 <= r_min < r_max < 1.0:
        raise ValueError(f"RG-LRU ring needs 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
    u = jax.random.uniform(key, tuple(shape), jnp.float32)
    log_r = 0.5 * jnp.log(u * (r_max**2 - r_min**2) + r_min**2 + 1e-8)
    return jnp.log(jnp.expm1(-log_r)).astype(dtype)


def base_decay(a_param: Array) -> Array:
    """r = exp(-softplus(a_param)) = sigmoid(-a_param), the decay at r_t = 1 / c (a_t = r^(c r_t))."""
    return jnp.exp(-jax.nn.softplus(a_param))


# ------------------------------------------------------------------------------------------------ gates


def block_diagonal_linear(x: Array, w: Array, b: Array) -> Array:
    """x (..., D) times a block-diagonal matrix with H blocks w (H, D/H, E/H), plus b (H, E/H) -> (..., E).

    Block h maps the h-th slice of D/H input channels to the h-th slice of E/H outputs.
    """
    heads, block_in, block_out = w.shape
    if x.shape[-1] != heads * block_in:
        raise ValueError(f"block_diagonal_linear: x has {x.shape[-1]} channels, w expects {heads} x {block_in}")
    blocks = x.reshape(*x.shape[:-1], heads, block_in)
    y = jnp.einsum("...hi,hij->...hj", blocks, w) + b
    return y.reshape(*x.shape[:-1], heads * block_out)


def log_decay(gate_a: Array, a_param: Array, c: float = C_DEFAULT) -> Array:
    """log a_t = -c sigmoid(gate_a) softplus(a_param), in the dtype of the inputs (at least float32): <= 0."""
    return -c * jax.nn.sigmoid(gate_a) * jax.nn.softplus(a_param)


def _coefficients(x: Array, gate_a: Array, gate_x: Array, a_param: Array, c: float, reset: Array | None
                  ) -> tuple[Array, Array]:
    """(a_t, the normalised input sqrt(1 - a_t^2) i_t x_t), with a_t = 0 and multiplier 1 where reset."""
    log_a = log_decay(gate_a, a_param, c)
    a = jnp.exp(log_a)
    multiplier = sqrt_bound_derivative(-jnp.expm1(2.0 * log_a), MAX_SQRT_GRADIENT)
    if reset is not None:
        reset = reset[..., None]
        a = jnp.where(reset, 0.0, a)
        multiplier = jnp.where(reset, 1.0, multiplier)
    return a, multiplier * (jax.nn.sigmoid(gate_x) * x)


def _promote(*arrays: Array) -> list[Array]:
    dtype = jnp.promote_types(jnp.result_type(*arrays), jnp.float32)
    return [jnp.asarray(a).astype(dtype) for a in arrays]


# ------------------------------------------------------------------------------------------------ forms


def rglru(x: Array, gate_a: Array, gate_x: Array, a_param: Array, *, c: float = C_DEFAULT,
          reset: Array | None = None, h0: Array | None = None, reverse: bool = False, method: str = "auto"
          ) -> tuple[Array, Array]:
    """The RG-LRU over a whole sequence (the parallel form).

    Args:
      x: (B, L, D) inputs of the recurrence (in Griffin: the output of the temporal convolution).
      gate_a, gate_x: (B, L, D) pre-activations of the recurrence gate r_t and the input gate i_t.
      a_param: (D,) the stored Lambda'; the base decay is exp(-softplus(a_param)).
      c: the constant of log a_t = -c r_t softplus(a_param).
      reset: (B, L) bool, True where a sequence (segment) starts: there a_t = 0 and the input is not scaled by
        sqrt(1 - a_t^2). None: a reset at the first position in scan order (t = 0, or t = L-1 with reverse)
        when h0 is None, no reset when h0 is given (the sequence continues from h0).
      h0: optional (B, D) state before the first step.
      reverse: run from the end, h_t = a_t h_{t+1} + ...
      method: the `ops.scan.linear_recurrence` method.
    Returns:
      h (B, L, D), the states (the layer's output), and the last state in scan order (B, D).
    Dtypes: computed in at least float32 (bfloat16 inputs are promoted) and returned in that dtype.
    """
    x, gate_a, gate_x, a_param = _promote(x, gate_a, gate_x, a_param)
    if reset is None and h0 is None:
        position = jnp.arange(x.shape[1]) == (x.shape[1] - 1 if reverse else 0)
        reset = jnp.broadcast_to(position, x.shape[:2])
    a, b = _coefficients(x, gate_a, gate_x, a_param, c, reset)
    return linear_recurrence(a, b, h0, reverse=reverse, method=method)


def rglru_step(h: Array, x_t: Array, gate_a_t: Array, gate_x_t: Array, a_param: Array, *, c: float = C_DEFAULT,
               reset: Array | None = None) -> Array:
    """One step: the new state (B, D) from h (B, D) and x_t, gate_a_t, gate_x_t (B, D).

    reset: (B,) bool (or a scalar), True on the first token of a sequence; None means False. The output of the
    step is the new state. Computed in at least float32.
    """
    h, x_t, gate_a_t, gate_x_t, a_param = _promote(h, x_t, gate_a_t, gate_x_t, a_param)
    if reset is not None:
        reset = jnp.broadcast_to(jnp.asarray(reset, bool), x_t.shape[:1])
    a, b = _coefficients(x_t, gate_a_t, gate_x_t, a_param, c, reset)
    return a * h + b
