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
from ops import ssd as ssd_ops
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
    """b_dt = softplus^-1(dt0), dt0 = exp(U[ln dt_min, ln dt_max]) clamped at >= floor (docs/methods.md section
    16.1).

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


def _mamba_memory_per_token(o, d):
    # Floats a training step keeps per token and layer, fitted to XLA's compiled figure (listops mamba-cpu, batch
    # 32, lengths 200 and 800): ~21 floats per inner channel I = expansion * d (projections, conv, delta, gate).
    return 21 * ActivationModel.number(o, "expansion", 2.0) * d


def _mamba_memory_per_sequence(o, length, training):
    # The chunk being scanned (and rematerialised in the backward pass): ~5 arrays of (Q, I, N) per sequence,
    # fitted at Q = 32, 64 and N = 8, 16 (d = 64); without a backward pass, fewer (not measured: 2, to err low).
    # The mixer's d is not passed here: I is taken as expansion * 64 (the cpu width), the chunked term's size.
    q = min(ActivationModel.number(o, "chunk_size", 64), length)
    inner = ActivationModel.number(o, "expansion", 2.0) * 64
    return (5 if training else 2) * q * inner * ActivationModel.number(o, "d_state", 16)


@register_mixer(
    "mamba", param_groups=(DEFAULT, NO_DECAY, SSM), check=_check_mamba,
    config_options=dict(d_state=16, expansion=2.0, conv_width=4, dt_rank=0, dt_min=1e-3, dt_max=1e-1,
                        dt_init_floor=1e-4, chunk_size=64),
    cpu_options=dict(d_state=16), memory=ActivationModel(per_token=_mamba_memory_per_token,
                                                         per_sequence=_mamba_memory_per_sequence))
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


# ------------------------------------------------------------------------------------------------- Mamba-2


def _a_log_uniform(low: float, high: float):
    """A_log with A = exp(A_log) ~ U[low, high] per head (Mamba-2's init; A = -exp(A_log) in the recurrence)."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jnp.log(jax.random.uniform(key, shape, jnp.float32, low, high)).astype(dtype)

    return init


def _check_mamba2(values, context, ok):
    yield from _check_mamba(values, context, ok)
    if ok("expansion", "head_dim"):
        inner = _inner_width(values["expansion"], context.d_model)
        if inner % values["head_dim"]:
            yield "head_dim", (f"expected a divisor of the inner width round(expansion * d_model) = {inner}, got "
                               f"{values['head_dim']}")


def _mamba2_memory(o, d):
    # Floats a training step keeps per token and layer, fitted to XLA's compiled figure (listops mamba2-cpu,
    # batch 32, lengths 200 and 800, chunks of 32 and 64) and rounded down: ~22 per inner channel and the
    # chunk's decay matrices, Q per head (~3 copies).
    inner = ActivationModel.number(o, "expansion", 2.0) * d
    heads = max(1.0, inner / ActivationModel.number(o, "head_dim", 64))
    return 22 * inner + 3 * ActivationModel.number(o, "chunk_size", 64) * heads


@register_mixer(
    "mamba2", param_groups=(DEFAULT, NO_DECAY, SSM), check=_check_mamba2,
    config_options=dict(d_state=64, head_dim=64, expansion=2.0, conv_width=4, dt_min=1e-3, dt_max=1e-1,
                        dt_init_floor=1e-4, chunk_size=64, eps=1e-5),
    cpu_options=dict(d_state=16, head_dim=16), memory=ActivationModel(per_token=_mamba2_memory))
class Mamba2Mixer(SequenceMixer):
    """The Mamba-2 block: a scalar decay per head, the SSD (ops/ssd.py) and a gated RMSNorm (docs/methods.md
    section 16.2).

        [z, x, B, C, dt] = u W_in;  [x, B, C] <- SiLU(causal_conv([x, B, C]));  delta = softplus(dt + b_dt)
        y = SSD(x, delta, A = -exp(A_log), B, C) + D x;  out = RMSNorm(y * SiLU(z)) W_out

    with H = I / P heads of P channels, I = expansion * d_model, one group (B, C (N,) shared by all heads), and
    the RMSNorm over all I channels at once, gating first and normalising second.

    Attributes:
      d_state: N (128 in the code's defaults; 64 here, 16 on the cpu budget).
      head_dim: P, channels per head (64); must divide the inner width.
      expansion, conv_width, dt_min, dt_max, dt_init_floor: as in "mamba".
      chunk_size: Q of the chunked SSD (the code's default is 256).
      eps: the RMSNorm's epsilon (1e-5).
      dtype: dtype of the output (None: the input's); the layer computes in float32, parameters are float32.

    Parameters: in_proj (D, 2I + 2N + H), out_proj (I, D), conv_w (K, I + 2N): "default"; conv_b, norm (I,) = 1:
    "no_decay"; A_log (H,) = ln U[1, 16], dt_bias (H,) = softplus^-1(dt0): "ssm"; D (H,) = 1: "no_decay". The
    bidirectional form (as for "mamba"): a reversed branch with its own conv, dt_bias, A_log and D ("_bwd"),
    added before the gated norm; padded steps are identities (x and delta zeroed after the conv).
    """

    d_state: int = 64
    head_dim: int = 64
    expansion: float = 2.0
    conv_width: int = 4
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    chunk_size: int = 64
    eps: float = 1e-5
    dtype: Any = None

    @property
    def inner(self) -> int:
        return _inner_width(self.expansion, self.d_model)

    @property
    def heads(self) -> int:
        if self.inner % self.head_dim:
            raise ValueError(f"mamba2: head_dim={self.head_dim} does not divide the inner width {self.inner}")
        return self.inner // self.head_dim

    def setup(self) -> None:
        inner, n, heads, width = self.inner, self.d_state, self.heads, self.conv_width
        self.in_proj = self.param("in_proj", _uniform(self.d_model ** -0.5), (self.d_model, 2 * inner + 2 * n + heads))
        self.out_proj = self.param("out_proj", _uniform(inner ** -0.5), (inner, self.d_model))
        self.norm = self.param("norm", grouped(_constant(np.ones(inner, np.float32)), NO_DECAY), (inner,))
        self.branches = [self._branch_params(suffix, inner + 2 * n, heads, width)
                         for suffix in (("", "_bwd") if self.bidirectional else ("",))]

    def _branch_params(self, suffix: str, channels: int, heads: int, width: int) -> dict[str, Array]:
        return dict(
            conv_w=self.param("conv_w" + suffix, _uniform(width ** -0.5), (width, channels)),
            conv_b=self.param("conv_b" + suffix, grouped(_uniform(width ** -0.5), NO_DECAY), (channels,)),
            dt_bias=self.param("dt_bias" + suffix, grouped(
                dt_bias_init(self.dt_min, self.dt_max, self.dt_init_floor), SSM), (heads,)),
            A_log=self.param("A_log" + suffix, grouped(_a_log_uniform(1.0, 16.0), SSM), (heads,)),
            D=self.param("D" + suffix, grouped(_constant(np.ones(heads, np.float32)), NO_DECAY), (heads,)),
        )

    def _split(self, projected: Array) -> tuple[Array, Array, Array]:
        """in_proj's output (..., 2I + 2N + H) -> (z (..., I), xBC (..., I + 2N), dt (..., H))."""
        inner, n = self.inner, self.d_state
        return jnp.split(projected, [inner, 2 * inner + 2 * n], axis=-1)

    def _ssm_inputs(self, xbc: Array, dt: Array, p: dict[str, Array]) -> tuple[Array, ...]:
        """(x (..., H, P), delta (..., H), A (H,), B, C (..., N)) from the conv output and dt."""
        inner, n = self.inner, self.d_state
        x, b, c = jnp.split(xbc, [inner, inner + n], axis=-1)
        x = x.reshape(*x.shape[:-1], self.heads, self.head_dim)
        return x, jax.nn.softplus(dt + p["dt_bias"]), -jnp.exp(p["A_log"]), b, c

    def _branch(self, xbc: Array, dt: Array, mask: Array | None, p: dict[str, Array]) -> tuple[Array, Array]:
        """(y (B, L, I) before the gated norm, the last state (B, H, P, N)) of one direction's branch."""
        u = jax.nn.silu(short_conv.causal_conv1d(xbc, p["conv_w"], p["conv_b"]))
        x, delta, a, b, c = self._ssm_inputs(u, dt, p)
        if mask is not None:  # padded steps: decay 1, input 0
            x, delta = x * mask[..., None, None], delta * mask[..., None]
        y, h = ssd_ops.ssd(x, delta, a, b, c, p["D"], chunk_size=self.chunk_size)
        return y.reshape(*y.shape[:2], self.inner), h

    def _gated_norm(self, y: Array, z: Array) -> Array:
        """RMSNorm(y * SiLU(z)) * norm, over all I channels (gate first, then normalise)."""
        gated = y * jax.nn.silu(z)
        return gated * jax.lax.rsqrt(jnp.mean(gated**2, axis=-1, keepdims=True) + self.eps) * self.norm

    def __call__(self, x: Array, *, mask: Array | None = None, deterministic: bool = True) -> Array:
        out_dtype = x.dtype if self.dtype is None else self.dtype
        x = _at_least_float32(x)
        if mask is not None:
            mask = mask.astype(x.dtype)
            x = x * mask[..., None]
        z, xbc, dt = self._split(x @ self.in_proj)
        y, _ = self._branch(xbc, dt, mask, self.branches[0])
        if self.bidirectional:
            flipped = None if mask is None else mask[:, ::-1]
            y = y + self._branch(xbc[:, ::-1], dt[:, ::-1], flipped, self.branches[1])[0][:, ::-1]
        return (self._gated_norm(y, z) @ self.out_proj).astype(out_dtype)

    def prefill(self, x: Array) -> tuple[dict[str, Array], Array]:
        """A prompt x (B, P, D) in one parallel call -> (the decoding state after it, y (B, P, D))."""
        self._check_causal_for_decoding()
        out_dtype = x.dtype if self.dtype is None else self.dtype
        z, xbc, dt = self._split(_at_least_float32(x) @ self.in_proj)
        y, h = self._branch(xbc, dt, None, self.branches[0])
        state = self.init_state(x.shape[0])
        state = dict(conv=short_conv.conv_cache_after(xbc, self.conv_width).astype(state["conv"].dtype),
                     ssm=h.astype(state["ssm"].dtype))
        return state, (self._gated_norm(y, z) @ self.out_proj).astype(out_dtype)

    def init_state(self, batch_size: int) -> dict[str, Array]:
        """{"conv": (B, K-1, I + 2N) the last raw conv inputs, "ssm": (B, H, P, N)}, zeros."""
        self._check_causal_for_decoding()
        dtype = jnp.promote_types(self.in_proj.dtype, jnp.result_type(float))  # float64 under x64
        return dict(conv=short_conv.conv_cache_init(batch_size, self.conv_width, self.inner + 2 * self.d_state,
                                                    dtype),
                    ssm=jnp.zeros((batch_size, self.heads, self.head_dim, self.d_state), dtype))

    def step(self, state: dict[str, Array], x_t: Array) -> tuple[dict[str, Array], Array]:
        self._check_causal_for_decoding()
        out_dtype = x_t.dtype if self.dtype is None else self.dtype
        p = self.branches[0]
        z, xbc, dt = self._split(_at_least_float32(x_t) @ self.in_proj)
        conv, u = short_conv.conv_step(state["conv"], xbc, p["conv_w"], p["conv_b"])
        x, delta, a, b, c = self._ssm_inputs(jax.nn.silu(u), dt, p)
        h, y = ssd_ops.ssd_step(state["ssm"], x, delta, a, b, c, p["D"])
        y = y.reshape(y.shape[0], self.inner)
        return dict(conv=conv, ssm=h), (self._gated_norm(y, z) @ self.out_proj).astype(out_dtype)
