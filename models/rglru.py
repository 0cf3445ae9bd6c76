"""The RG-LRU mixer (registered as "rglru"): Griffin's recurrent temporal block (docs/methods.md section 16.3);
parameters and wiring, the math is in ops/rglru.py and ops/short_conv.py.

With the recurrence width W = round(expansion * d_model) and H gate blocks:

    branch 1:  g = GeLU(x W_y + b_y)                                  (tanh approximation, jax.nn.gelu's default)
    branch 2:  u = causal_conv(x W_x + b_x)  (depthwise, K taps, bias, no activation)
               h = RG-LRU(u; gates r = sigmoid(BlockDiag_a(u)), i = sigmoid(BlockDiag_x(u)), a_param)
    output:    (h * g) W_out + b_out

The first token of a sequence is a reset (its state is i_0 u_0, not normalised by sqrt(1 - a^2)).

Bidirectional form (this codebase's own, not Griffin's): a second temporal branch runs right to left (an
anti-causal conv with its own taps and bias, then the RG-LRU in reverse with the same gates and a_param, reset at
each sequence's last real token); its states are added to the forward branch's before the GeLU gate.

Padding (mask False): inputs are zeroed, and so are the conv's inputs (x W_x + b_x would otherwise carry the
bias). Right padding then never reaches a real position: forward, padding comes after; backward, the reset at the
last real token drops whatever state the padded steps built.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.param_groups import DEFAULT, NO_DECAY, SSM, grouped
from models.registry import ActivationModel, SequenceMixer, register_mixer
from ops import rglru as rglru_ops
from ops import short_conv
from ops.scan import ScanMethod

Array = jax.Array


def _variance_scaling(scale: float):
    """Normal with variance scale / fan_in (Flax's fan-in rule; not truncated), as the official initialisers."""
    return nn.initializers.variance_scaling(scale, "fan_in", "normal")


def _width(expansion: float, d_model: int) -> int:
    return max(1, round(expansion * d_model))


def _check_rglru(values, context, ok):
    if ok("r_min", "r_max") and values["r_min"] >= values["r_max"]:
        yield "r_min", f"expected r_min < r_max, got r_min={values['r_min']}, r_max={values['r_max']}"
    if ok("expansion", "num_heads"):
        width = _width(values["expansion"], context.d_model)
        if width % values["num_heads"]:
            yield "num_heads", (f"expected a divisor of the recurrence width round(expansion * d_model) = {width} "
                                f"(expansion={values['expansion']}, d_model={context.d_model}), got "
                                f"{values['num_heads']}")


def _rglru_memory(o, d):
    # Floats a training step keeps per token and layer: the width-W tensors of both branches, the conv, the two
    # gates and their sigmoids, log a, a, the multiplier, the normalised input, the states and the product, with
    # their cotangents, plus the block's input and output. Fitted in experiments/memory.py's way (listops
    # rglru-cpu, W = d = 64: estimate / XLA's compiled training step = 0.95).
    width = ActivationModel.number(o, "expansion", 1.0) * d
    return 24 * width + 4 * d


@register_mixer(
    "rglru", param_groups=(DEFAULT, NO_DECAY, SSM), check=_check_rglru,
    config_options=dict(expansion=1.0, num_heads=4, conv_width=4, r_min=0.9, r_max=0.999, c=8.0,
                        out_variance_scale=0.5),
    cpu_options=dict(num_heads=2, out_variance_scale=1.0),
    memory=ActivationModel(per_token=_rglru_memory))
class RGLRUMixer(SequenceMixer):
    """Griffin's recurrent block around the RG-LRU; see the module docstring.

    Attributes:
      expansion: the recurrence width W = round(expansion * d_model) (RecurrentGemma: 1; Griffin: 4/3).
      num_heads: H, the blocks of the block-diagonal gate projections; must divide W.
      conv_width: K, the taps of the causal depthwise conv (4).
      r_min, r_max: the ring the base decay r = exp(-softplus(a_param)) is initialised on, uniform in r^2
        (official: [0.9, 0.999]); at r_t = 1 the decay is r^c.
      c: the constant of log a_t = -c r_t softplus(a_param) (8).
      out_variance_scale: variance scale (/ fan-in) of W_out's initialiser. Griffin uses 2 / n_layers; the
        mixer does not see n_layers, so the configs set it: 0.5 for the default 4 layers, 1.0 for the cpu
        budget's 2.
      scan_method: method of `ops.scan.linear_recurrence`.
      dtype: dtype of the output (None: the input's). The layer computes in float32 whatever it is.

    Parameters: linear_x / linear_y kernels (D, W) and linear_out (W, D) normal with variance 1 / fan-in
    (out: out_variance_scale / W), gate_a_w, gate_x_w (H, W/H, W/H) normal with variance 1 / W (Flax's fan-in of
    that shape, as the official BlockDiagonalLinear) and conv_w (K, W) with variance 0.01 / K: "default"; the
    biases (zero, conv_b included): "no_decay"; a_param (W,): "ssm" (no weight decay, the recurrence learning
    rate, as the LRU's nu_log). Bidirectional layers add conv_w_bwd, conv_b_bwd.
    """

    expansion: float = 1.0
    num_heads: int = 4
    conv_width: int = 4
    r_min: float = 0.9
    r_max: float = 0.999
    c: float = rglru_ops.C_DEFAULT
    out_variance_scale: float = 0.5
    scan_method: ScanMethod = ScanMethod.AUTO
    dtype: Any = None

    @property
    def width(self) -> int:
        return _width(self.expansion, self.d_model)

    def setup(self) -> None:
        width, heads, k = self.width, self.num_heads, self.conv_width
        if width % heads:
            raise ValueError(f"rglru: num_heads={heads} must divide the recurrence width {width}")
        zeros = nn.initializers.zeros_init()  # the biases: one axis, so "no_decay" (models/param_groups.py)
        self.linear_x = nn.Dense(width, kernel_init=_variance_scaling(1.0), name="linear_x")
        self.linear_y = nn.Dense(width, kernel_init=_variance_scaling(1.0), name="linear_y")
        self.linear_out = nn.Dense(self.d_model, kernel_init=_variance_scaling(self.out_variance_scale),
                                   name="linear_out")
        self.conv_w = self.param("conv_w", _variance_scaling(0.01), (k, width))
        self.conv_b = self.param("conv_b", zeros, (width,))
        if self.bidirectional:
            self.conv_w_bwd = self.param("conv_w_bwd", _variance_scaling(0.01), (k, width))
            self.conv_b_bwd = self.param("conv_b_bwd", zeros, (width,))
        block = width // heads
        self.gate_a_w = self.param("gate_a_w", _variance_scaling(1.0), (heads, block, block))
        no_decay_zeros = grouped(zeros, NO_DECAY)  # (H, W/H) biases: two axes, so marked
        self.gate_a_b = self.param("gate_a_b", no_decay_zeros, (heads, block))
        self.gate_x_w = self.param("gate_x_w", _variance_scaling(1.0), (heads, block, block))
        self.gate_x_b = self.param("gate_x_b", no_decay_zeros, (heads, block))
        self.a_param = self.param(
            "a_param", grouped(lambda key, shape: rglru_ops.a_param_init(key, shape, self.r_min, self.r_max), SSM),
            (width,))

    def _gates(self, u: Array) -> tuple[Array, Array]:
        return (rglru_ops.block_diagonal_linear(u, self.gate_a_w, self.gate_a_b),
                rglru_ops.block_diagonal_linear(u, self.gate_x_w, self.gate_x_b))

    def _branches(self, x: Array, mask: Array | None) -> tuple[Array, Array]:
        """(GeLU branch g, the conv's input v), both (B, L, W) in float32; v zeroed at padded positions."""
        g = jax.nn.gelu(self.linear_y(x))
        v = self.linear_x(x)
        if mask is not None:
            v = v * mask[..., None].astype(v.dtype)
        return g, v

    def _forward_states(self, v: Array, h0: Array | None = None) -> tuple[Array, Array]:
        u = short_conv.causal_conv1d(v, self.conv_w, self.conv_b)
        gate_a, gate_x = self._gates(u)
        return rglru_ops.rglru(u, gate_a, gate_x, self.a_param, c=self.c, h0=h0, method=self.scan_method)

    def _backward_states(self, v: Array, mask: Array | None) -> Array:
        # The anti-causal conv is the causal one on the time-reversed input.
        u = short_conv.causal_conv1d(v[:, ::-1], self.conv_w_bwd, self.conv_b_bwd)[:, ::-1]
        gate_a, gate_x = self._gates(u)
        length = v.shape[1]
        if mask is None:
            reset = jnp.broadcast_to(jnp.arange(length) == length - 1, v.shape[:2])
        else:  # the last real token of each sequence: real, and followed by padding or the end
            following = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
            reset = mask & ~following
        h, _ = rglru_ops.rglru(u, gate_a, gate_x, self.a_param, c=self.c, reset=reset, reverse=True,
                               method=self.scan_method)
        return h

    @staticmethod
    def _input(x: Array, mask: Array | None = None) -> Array:
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        return x if mask is None else x * mask[..., None].astype(x.dtype)

    def __call__(self, x: Array, *, mask: Array | None = None, deterministic: bool = True) -> Array:
        out_dtype = x.dtype if self.dtype is None else self.dtype
        x = self._input(x, mask)
        g, v = self._branches(x, mask)
        h, _ = self._forward_states(v)
        if self.bidirectional:
            h = h + self._backward_states(v, mask)
        return self.linear_out(h * g).astype(out_dtype)

    def init_state(self, batch_size: int) -> dict[str, Array]:
        """{"conv": (B, K-1, W) the last raw conv inputs, "h": (B, W) the RG-LRU state, "start": (B,) True
        until the first token (a reset)}."""
        self._check_causal_for_decoding()
        dtype = jnp.promote_types(self.a_param.dtype, jnp.float32)  # float32 (float64 parameters: float64)
        return dict(conv=short_conv.conv_cache_init(batch_size, self.conv_width, self.width, dtype),
                    h=jnp.zeros((batch_size, self.width), dtype), start=jnp.ones((batch_size,), bool))

    def prefill(self, x: Array) -> tuple[dict[str, Array], Array]:
        """A prompt x (B, P, D) in one parallel call -> (the decoding state after it, y (B, P, D))."""
        self._check_causal_for_decoding()
        out_dtype = x.dtype if self.dtype is None else self.dtype
        x = self._input(x)
        g, v = self._branches(x, None)
        h, h_last = self._forward_states(v)
        dtype = jnp.promote_types(self.a_param.dtype, jnp.float32)  # as init_state's
        state = dict(conv=short_conv.conv_cache_after(v, self.conv_width).astype(dtype), h=h_last.astype(dtype),
                     start=jnp.zeros((x.shape[0],), bool))
        return state, self.linear_out(h * g).astype(out_dtype)

    def step(self, state: dict[str, Array], x_t: Array) -> tuple[dict[str, Array], Array]:
        self._check_causal_for_decoding()
        out_dtype = x_t.dtype if self.dtype is None else self.dtype
        x_t = self._input(x_t)
        g, v = self._branches(x_t, None)
        conv, u = short_conv.conv_step(state["conv"], v, self.conv_w, self.conv_b)
        gate_a, gate_x = self._gates(u)
        h = rglru_ops.rglru_step(state["h"], u, gate_a, gate_x, self.a_param, c=self.c, reset=state["start"])
        new_state = dict(conv=conv.astype(state["conv"].dtype), h=h.astype(state["h"].dtype),
                         start=jnp.zeros_like(state["start"]))
        return new_state, self.linear_out(h * g).astype(out_dtype)
