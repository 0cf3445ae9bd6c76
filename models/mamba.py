"""The Mamba block (registered as "mamba", docs/methods.md section 16.1) and the Mamba-2 block ("mamba2", section
16.2): parameters and wiring; the math is in ops/selective.py, ops/ssd.py and ops/short_conv.py.

Mamba (S6), inner width I = expansion * d_model, state N, conv width K, dt rank R:

    [x, z] = u W_in;  x <- SiLU(causal_conv(x));  [dt, B, C] = x W_x;  delta = softplus(dt W_dt + b_dt)
    y = selective_scan(x, delta, A = -exp(A_log), B, C) + D x;  out = (y * SiLU(z)) W_out

Bidirectional form (not in the paper; as in Vision Mamba): a second branch runs on the reversed sequence with
its own conv, x_proj, dt_proj, A_log and D, and its output, flipped back, is added to the forward branch's
before the SiLU(z) gate; in_proj, the gate and out_proj are shared.

Padding (mask False): the inputs are zeroed as in every mixer, and so are the scan's input x and its step delta
after the conv, which makes a padded step the identity on the state (decay exp(0) = 1, input 0). Without that,
the conv bias would write padded positions into the state, which the reversed branch carries to real tokens.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.param_groups import DEFAULT, NO_DECAY, SSM, grouped
from models.registry import ActivationModel, SequenceMixer, register_mixer
from ops import selective as selective_ops
from ops import short_conv
from ops.scan import ScanMethod

Array = jax.Array


def _uniform(bound: float):
    """U(-bound, bound): PyTorch's default for Linear (bound = fan_in^-1/2) and Conv1d weights and biases."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _constant(value: np.ndarray):
    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jnp.broadcast_to(jnp.asarray(value, dtype), shape)

    return init


def dt_bias_init(dt_min: float, dt_max: float, floor: float):
    """b_dt = softplus^-1(dt0), dt0 = exp(U[ln dt_min, ln dt_max]) clamped at >= floor (docs/methods.md 16.1).

    softplus^-1(y) = y + log(-expm1(-y)), so that softplus(b_dt) = dt0 at initialisation; b_dt is a parameter of
    its own (never a Dense bias), so no generic re-initialisation of biases can zero it.
    """

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        dt = jnp.exp(jax.random.uniform(key, shape, jnp.float32, math.log(dt_min), math.log(dt_max)))
        dt = jnp.maximum(dt, floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init


def s4d_real_a_log(channels: int, n: int) -> np.ndarray:
    """A_log (channels, N) with A = -exp(A_log) = -(1, 2, ..., N) in every channel (S4D-real)."""
    return np.broadcast_to(np.log(np.arange(1, n + 1, dtype=np.float64)), (channels, n)).astype(np.float32)


def _check_dt(values, context, ok):
    if ok("dt_min", "dt_max") and values["dt_min"] >= values["dt_max"]:
        yield "dt_min", f"expected dt_min < dt_max, got dt_min={values['dt_min']}, dt_max={values['dt_max']}"


def _inner_width(expansion: float, d_model: int) -> int:
    return max(1, int(round(expansion * d_model)))


def _check_mamba(values, context, ok):
    yield from _check_dt(values, context, ok)
    if ok("expansion") and values["expansion"] * context.d_model < 0.5:
        yield "expansion", (f"expected expansion * d_model >= 1 (the inner width), got {values['expansion']} * "
                            f"{context.d_model}")


def _at_least_float32(x: Array) -> Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mamba_memory(o, d):
    # Floats a training step keeps per token and layer: the inner activations (x, z, the conv output, delta,
    # the gate: ~ 8 I with I = 2 d) and the scan's chunk states are the bulk; fitted in experiments/memory.py's
    # way (see WORKSPACE.md, the mamba row).
    inner = ActivationModel.number(o, "expansion", 2.0) * d
    n = ActivationModel.number(o, "d_state", 16)
    return 12 * inner + 4 * n + 4 * d


@register_mixer(
    "mamba", param_groups=(DEFAULT, NO_DECAY, SSM), check=_check_mamba,
    config_options=dict(d_state=16, expansion=2.0, conv_width=4, dt_rank=0, dt_min=1e-3, dt_max=1e-1,
                        dt_init_floor=1e-4, chunk_size=64),
    cpu_options=dict(d_state=16), memory=ActivationModel(per_token=_mamba_memory))
class MambaMixer(SequenceMixer):
    """The Mamba block (S6 selective scan between a short causal conv and a SiLU gate); see the module docstring.

    Attributes:
      d_state: N, the state size per inner channel (16 in the paper and code).
      expansion: E, the inner width I = round(E * d_model) (2).
      conv_width: K, the taps of the causal depthwise conv (4).
      dt_rank: R, the rank of the delta projection; 0: ceil(d_model / 16), the official "auto".
      dt_min, dt_max, dt_init_floor: delta's initial values, exp(U[ln dt_min, ln dt_max]) clamped at >= the floor.
      chunk_size: Q, tokens per chunk of the memory-light scan (ops/selective.py).
      scan_method: method of `ops.scan.linear_recurrence` inside a chunk.
      dtype: dtype of the output (None: the input's). The layer computes in float32; parameters are float32.

    Parameters: in_proj (D, 2I), out_proj (I, D), x_proj (I, R + 2N), dt_proj (R, I) U(+-R^-1/2) and conv_w
    (K, I): "default"; conv_b (I,): "no_decay"; A_log (I, N) = ln n, dt_bias (I,) = softplus^-1(dt0): "ssm"
    (their own learning rate, no weight decay); D (I,) = 1: "no_decay". Bidirectional layers add the same
    per-direction parameters with the suffix "_bwd". Projections are U(+-fan_in^-1/2) (PyTorch's Linear), the
    conv U(+-K^-1/2).
    """

    d_state: int = 16
    expansion: float = 2.0
    conv_width: int = 4
    dt_rank: int = 0
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    chunk_size: int = 64
    scan_method: ScanMethod = ScanMethod.AUTO
    dtype: Any = None

    @property
    def inner(self) -> int:
        return _inner_width(self.expansion, self.d_model)

    @property
    def rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)

    def setup(self) -> None:
        inner, n, rank, width = self.inner, self.d_state, self.rank, self.conv_width
        self.in_proj = self.param("in_proj", _uniform(self.d_model ** -0.5), (self.d_model, 2 * inner))
        self.out_proj = self.param("out_proj", _uniform(inner ** -0.5), (inner, self.d_model))
        self.branches = [self._branch_params(suffix, inner, n, rank, width)
                         for suffix in (("", "_bwd") if self.bidirectional else ("",))]

    def _branch_params(self, suffix: str, inner: int, n: int, rank: int, width: int) -> dict[str, Array]:
        return dict(
            conv_w=self.param("conv_w" + suffix, _uniform(width ** -0.5), (width, inner)),
            conv_b=self.param("conv_b" + suffix, grouped(_uniform(width ** -0.5), NO_DECAY), (inner,)),
            x_proj=self.param("x_proj" + suffix, _uniform(inner ** -0.5), (inner, rank + 2 * n)),
            dt_proj=self.param("dt_proj" + suffix, _uniform(rank ** -0.5), (rank, inner)),
            dt_bias=self.param("dt_bias" + suffix, grouped(
                dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor), SSM), (inner,)),
            A_log=self.param("A_log" + suffix, grouped(_constant(s4d_real_a_log(inner, n)), SSM), (inner, n)),
            D=self.param("D" + suffix, grouped(_constant(np.ones(inner, np.float32)), NO_DECAY), (inner,)),
        )

    def _ssm_inputs(self, u: Array, p: dict[str, Array]) -> tuple[Array, Array, Array, Array]:
        """(delta, A, B, C) from the conv output u (..., I)."""
        dt, b, c = jnp.split(u @ p["x_proj"], [self.rank, self.rank + self.d_state], axis=-1)
        delta = jax.nn.softplus(dt @ p["dt_proj"] + p["dt_bias"])  # the bias once, inside the softplus
        return delta, -jnp.exp(p["A_log"]), b, c

    def _branch(self, x: Array, mask: Array | None, p: dict[str, Array]) -> tuple[Array, Array]:
        """(y (B, L, I) before the gate, the scan's last state (B, I, N)) of one direction's branch on x (B, L, I)."""
        u = jax.nn.silu(short_conv.causal_conv1d(x, p["conv_w"], p["conv_b"]))
        delta, a, b, c = self._ssm_inputs(u, p)
        if mask is not None:  # padded steps: decay 1, input 0 (the module docstring)
            u, delta = u * mask[..., None], delta * mask[..., None]
        return selective_ops.selective_scan(u, delta, a, b, c, p["D"], chunk_size=self.chunk_size,
                                            method=self.scan_method)

    def __call__(self, x: Array, *, mask: Array | None = None, deterministic: bool = True) -> Array:
        out_dtype = x.dtype if self.dtype is None else self.dtype
        x = _at_least_float32(x)
        if mask is not None:
            mask = mask.astype(x.dtype)
            x = x * mask[..., None]
        xs, z = jnp.split(x @ self.in_proj, 2, axis=-1)
        y, _ = self._branch(xs, mask, self.branches[0])
        if self.bidirectional:
            flipped = None if mask is None else mask[:, ::-1]
            y = y + self._branch(xs[:, ::-1], flipped, self.branches[1])[0][:, ::-1]
        return ((y * jax.nn.silu(z)) @ self.out_proj).astype(out_dtype)

    def prefill(self, x: Array) -> tuple[dict[str, Array], Array]:
        """A prompt x (B, P, D) in one parallel call -> (the decoding state after it, y (B, P, D)): the conv cache
        is the last K-1 raw conv inputs, the SSM state the scan's final state."""
        self._check_causal_for_decoding()
        out_dtype = x.dtype if self.dtype is None else self.dtype
        xs, z = jnp.split(_at_least_float32(x) @ self.in_proj, 2, axis=-1)
        y, h = self._branch(xs, None, self.branches[0])
        state = self.init_state(x.shape[0])
        state = dict(conv=short_conv.conv_cache_after(xs, self.conv_width).astype(state["conv"].dtype),
                     ssm=h.astype(state["ssm"].dtype))
        return state, ((y * jax.nn.silu(z)) @ self.out_proj).astype(out_dtype)

    def init_state(self, batch_size: int) -> dict[str, Array]:
        """{"conv": (B, K-1, I) the last raw conv inputs, "ssm": (B, I, N)}, zeros."""
        self._check_causal_for_decoding()
        dtype = jnp.promote_types(self.in_proj.dtype, jnp.result_type(float))  # float64 under x64
        return dict(conv=short_conv.conv_cache_init(batch_size, self.conv_width, self.inner, dtype),
                    ssm=jnp.zeros((batch_size, self.inner, self.d_state), dtype))

    def step(self, state: dict[str, Array], x_t: Array) -> tuple[dict[str, Array], Array]:
        self._check_causal_for_decoding()
        out_dtype = x_t.dtype if self.dtype is None else self.dtype
        p = self.branches[0]
        xs, z = jnp.split(_at_least_float32(x_t) @ self.in_proj, 2, axis=-1)
        conv, u = short_conv.conv_step(state["conv"], xs, p["conv_w"], p["conv_b"])
        u = jax.nn.silu(u)
        delta, a, b, c = self._ssm_inputs(u, p)
        h, y = selective_ops.selective_step(state["ssm"], u, delta, a, b, c, p["D"])
        return dict(conv=conv, ssm=h), ((y * jax.nn.silu(z)) @ self.out_proj).astype(out_dtype)
