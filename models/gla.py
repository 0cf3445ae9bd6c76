"""The GLA mixer (registered as "gla"): gated linear attention, with RetNet's fixed decay as an option.

Parameters and wiring only; the math is in ops/gla.py (docs/methods.md section 16.4). Shapes: B batch, L length,
D = d_model, H = num_heads, Kh = key_dim / H, Vh = value_dim / H.

The layer (fla's GatedLinearAttention, without the short convolution, which fla leaves off by default):
  q, k = W_q x, W_k x (H, Kh each), v = W_v x (H, Vh); the kernel scales q by Kh^-1/2;
  decay "gated": log alpha = logsigmoid(W_2 W_1 x + b) / 16 per key channel (W_1: D -> 16 without bias, W_2:
    16 -> key_dim with bias b); decay "retnet": log alpha = log gamma_h, gamma_h = 1 - 2^(-5-h), fixed per head
    (no gate parameters; RetNet's xPos rotation is left out: the decay already orders positions);
  o = GLA(q, k, v, alpha) (ops.gla.gla_chunked), then a per-head RMSNorm with a learned scale (Vh,) shared by
    the heads, then the Swish gate: o * swish(W_g x) (fla normalises first, then gates), then W_o.
Bidirectional form: the same projections run forward and over the reversed sequence, and the two attention
outputs are added before the norm (each direction counts the current token). Padded positions (mask False) get
zero input and zero log-decay, so with right padding they write nothing into either direction's state.
"""

from __future__ import annotations

import enum
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.param_groups import DEFAULT, NO_DECAY
from models.registry import ActivationModel, SequenceMixer, register_mixer
from ops import gla as gla_ops

GATE_RANK = 16  # fla's gate_low_rank_dim
GATE_NORMALIZER = 16.0  # fla's gate_logit_normalizer (tau): log alpha = logsigmoid(.) / tau


class GLADecay(enum.StrEnum):
    """How the GLA mixer decays its state: a data-dependent gate per key channel, or RetNet's fixed decay."""

    GATED = "gated"
    RETNET = "retnet"


def head_rms_norm(o: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis (one head's channels) of o (..., Vh), times scale (Vh,); float32 inside."""
    dtype = jnp.promote_types(o.dtype, jnp.float32)
    o = o.astype(dtype)
    return o * jax.lax.rsqrt(jnp.mean(o * o, axis=-1, keepdims=True) + eps) * scale.astype(dtype)


def xavier() -> nn.initializers.Initializer:
    return nn.initializers.xavier_uniform()


def widths(d_model: int, key_dim: int | None, value_dim: int | None, key_fraction: float) -> tuple[int, int]:
    """(key_dim, value_dim) with the defaults filled in: key_dim = key_fraction * d_model, value_dim = d_model."""
    return (int(d_model * key_fraction) if key_dim is None else key_dim,
            d_model if value_dim is None else value_dim)


def check_heads(values, context, ok, key_fraction: float):
    """num_heads dividing the key and value widths (the defaults derived from d_model)."""
    if not ok("num_heads"):
        return
    heads = values["num_heads"]
    key_dim, value_dim = widths(context.d_model, values.get("key_dim"), values.get("value_dim"), key_fraction)
    for option, width in (("key_dim", key_dim), ("value_dim", value_dim)):
        if values.get(option) is not None and not ok(option):
            continue
        derived = "" if values.get(option) is not None else f" (derived from config.model.d_model = {context.d_model})"
        if width < heads or width % heads:
            yield "num_heads", f"{heads} heads do not divide {option} = {width}{derived}"
            return


def _check_gla(values, context, ok):
    yield from check_heads(values, context, ok, 0.5)


def _gla_per_token(options, d: int) -> float:
    number = ActivationModel.number
    key_dim = number(options, "key_dim", d / 2)
    chunk = number(options, "chunk_size", gla_ops.DEFAULT_CHUNK)
    return 20 * d + 2 * chunk * key_dim


@register_mixer(
    "gla", param_groups=(DEFAULT, NO_DECAY), check=_check_gla,
    config_options=dict(num_heads=4, decay="gated", chunk_size=gla_ops.DEFAULT_CHUNK),
    cpu_options=dict(num_heads=2),
    memory=ActivationModel(per_token=_gla_per_token))
class GLAMixer(SequenceMixer):
    """Gated linear attention (GLA), or RetNet's retention with decay="retnet" (see the module docstring).

    Attributes:
      num_heads: H; it must divide key_dim and value_dim.
      key_dim, value_dim: total key and value widths over the heads (None: d_model / 2 and d_model, fla's
        expand_k = 0.5 and expand_v = 1).
      decay: "gated" (GLA) or "retnet" (fixed gamma_h = 1 - 2^(-5-h)).
      chunk_size: C of the chunked form (the intra-chunk log-space tensor costs L C Kh floats per head).
      eps: the output RMSNorm's epsilon.
      dtype: output dtype (None: the input's). The layer computes in float32 whatever it is (projections,
        state, norm), as the LRU mixer does; parameters are float32.
    Decoding state: {"S": (B, H, Kh, Vh)}, constant size.
    """

    num_heads: int = 4
    key_dim: int | None = None
    value_dim: int | None = None
    decay: GLADecay = GLADecay.GATED
    chunk_size: int = gla_ops.DEFAULT_CHUNK
    eps: float = 1e-5
    dtype: Any = None

    @property
    def _widths(self) -> tuple[int, int]:
        return widths(self.d_model, self.key_dim, self.value_dim, 0.5)

    def setup(self) -> None:
        key_dim, value_dim = self._widths
        if self.decay not in tuple(GLADecay):
            raise ValueError(f"GLAMixer: decay must be one of {[d.value for d in GLADecay]}, got {self.decay!r}")
        for name, width in (("key_dim", key_dim), ("value_dim", value_dim)):
            if self.num_heads < 1 or width < self.num_heads or width % self.num_heads:
                raise ValueError(f"GLAMixer: num_heads={self.num_heads} must divide {name}={width}")
        dense = lambda features, name, **kw: nn.Dense(  # noqa: E731
            features, use_bias=kw.pop("use_bias", False), kernel_init=xavier(), name=name, **kw)
        self.q_proj = dense(key_dim, "q_proj")
        self.k_proj = dense(key_dim, "k_proj")
        self.v_proj = dense(value_dim, "v_proj")
        self.g_proj = dense(value_dim, "g_proj")
        if self.decay == GLADecay.GATED:
            self.gate_down = dense(GATE_RANK, "gate_down")
            self.gate_up = dense(key_dim, "gate_up", use_bias=True)
        self.norm_scale = self.param("norm_scale", nn.initializers.ones, (value_dim // self.num_heads,))
        self.o_proj = dense(self.d_model, "o_proj")

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def _features(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """q, k (B, L, H, Kh), v (B, L, H, Vh), log-decay (B, L, H, Kh) or (H, 1) for retnet, from x (B, L, D)."""
        q, k, v = (self._heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.decay == GLADecay.GATED:
            log_decay = self._heads(jax.nn.log_sigmoid(self.gate_up(self.gate_down(x))) / GATE_NORMALIZER)
        else:
            log_decay = jnp.broadcast_to(gla_ops.retnet_log_decay(self.num_heads, x.dtype)[:, None],
                                         (*x.shape[:2], self.num_heads, 1))
        return q, k, v, log_decay

    def _output(self, o: jax.Array, x: jax.Array, out_dtype: Any) -> jax.Array:
        o = head_rms_norm(o, self.norm_scale, self.eps)
        o = o.reshape(*o.shape[:-2], -1) * nn.swish(self.g_proj(x))
        return self.o_proj(o).astype(out_dtype)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        out_dtype = x.dtype if self.dtype is None else self.dtype
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if mask is not None:
            x = x * mask[..., None].astype(x.dtype)
        q, k, v, log_decay = self._features(x)
        if mask is not None:
            log_decay = log_decay * mask[:, :, None, None].astype(log_decay.dtype)
        o, _ = gla_ops.gla_chunked(q, k, v, log_decay, chunk_size=self.chunk_size)
        if self.bidirectional:
            flip = lambda a: jnp.flip(a, axis=1)  # noqa: E731
            o_bwd, _ = gla_ops.gla_chunked(*map(flip, (q, k, v, log_decay)), chunk_size=self.chunk_size)
            o = o + flip(o_bwd)
        return self._output(o, x, out_dtype)

    def init_state(self, batch_size: int) -> dict[str, jax.Array]:
        self._check_causal_for_decoding()
        key_dim, value_dim = self._widths
        heads = self.num_heads
        dtype = jnp.promote_types(self.dtype or jnp.float32, jnp.float32)  # float32 (a float64 layer: float64)
        return {"S": jnp.zeros((batch_size, heads, key_dim // heads, value_dim // heads), dtype)}

    def step(self, state: dict[str, jax.Array], x_t: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        self._check_causal_for_decoding()
        out_dtype = x_t.dtype if self.dtype is None else self.dtype
        x_t = x_t.astype(jnp.promote_types(x_t.dtype, jnp.float32))[:, None]
        q, k, v, log_decay = self._features(x_t)
        s, o_t = gla_ops.gla_step(state["S"].astype(q.dtype), q[:, 0], k[:, 0], v[:, 0], log_decay[:, 0])
        return {"S": s}, self._output(o_t[:, None], x_t, out_dtype)[:, 0]
