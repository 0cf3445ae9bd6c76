"""The DeltaNet mixer (registered as "deltanet"): linear attention with the delta-rule state update.

Parameters and wiring only; the math is in ops/deltanet.py and ops/short_conv.py (docs/methods.md section 16.5).
Shapes: B batch, L length, D = d_model, H = num_heads, Kh = key_dim / H, Vh = value_dim / H.

The layer (fla's DeltaNet with its defaults: short convolutions on, SiLU, L2-normalised q and k, no output gate):
  q, k, v = SiLU(conv4(W_q x)), SiLU(conv4(W_k x)), SiLU(conv4(W_v x)), each conv a causal depthwise convolution
    of width 4 without bias; q and k L2-normalised per head (the kernel then scales q by Kh^-1/2);
  beta = sigmoid(W_beta x), one write strength per head;
  o = the delta rule (ops.deltanet.delta_rule_chunked), a per-head RMSNorm with a learned scale (Vh,) shared by
    the heads, then W_o.
Bidirectional form: the same layer also runs over the reversed sequence (its convolutions then look ahead), and
the two delta-rule outputs are added before the norm. Padded positions (mask False) get zero input, so their
keys and values are exactly 0 (no conv bias) and beta is zeroed: with right padding they write nothing into
either direction's state.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.gla import check_heads, head_rms_norm, widths, xavier
from models.param_groups import DEFAULT, NO_DECAY
from models.registry import ActivationModel, SequenceMixer, register_mixer
from ops import deltanet as delta_ops
from ops import short_conv

CONV_WIDTH = 4  # fla's conv_size
L2_EPS = 1e-6  # fla's l2norm: x / sqrt(sum x^2 + eps)


def l2_normalize(x: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + L2_EPS)


def _check_deltanet(values, context, ok):
    yield from check_heads(values, context, ok, 1.0)


def _deltanet_per_token(options, d: int) -> float:
    number = ActivationModel.number
    chunk = number(options, "chunk_size", delta_ops.DEFAULT_CHUNK)
    heads = number(options, "num_heads", 4)
    return 30 * d + 4 * chunk * heads


@register_mixer(
    "deltanet", param_groups=(DEFAULT, NO_DECAY), check=_check_deltanet,
    config_options=dict(num_heads=4, chunk_size=delta_ops.DEFAULT_CHUNK), cpu_options=dict(num_heads=2),
    memory=ActivationModel(per_token=_deltanet_per_token))
class DeltaNetMixer(SequenceMixer):
    """DeltaNet: S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}), o_t = q_t S_t (see the module docstring).

    Attributes:
      num_heads: H; it must divide key_dim and value_dim.
      key_dim, value_dim: total key and value widths over the heads (None: d_model, fla's expand 1).
      chunk_size: C of the chunked (WY / UT) form.
      eps: the output RMSNorm's epsilon.
      dtype: output dtype (None: the input's); the layer computes in float32 whatever it is.
    Parameters: q_proj, k_proj, v_proj, b_proj (D, H), o_proj kernels and the conv taps q_conv, k_conv, v_conv
    (4, width), U(+-1/2) as PyTorch's Conv1d: "default"; norm_scale (Vh,): "no_decay".
    Decoding state: {"S": (B, H, Kh, Vh), "conv_q", "conv_k" (B, 3, key_dim), "conv_v" (B, 3, value_dim)}.
    """

    num_heads: int = 4
    key_dim: int | None = None
    value_dim: int | None = None
    chunk_size: int = delta_ops.DEFAULT_CHUNK
    eps: float = 1e-5
    dtype: Any = None

    @property
    def _widths(self) -> tuple[int, int]:
        return widths(self.d_model, self.key_dim, self.value_dim, 1.0)

    def setup(self) -> None:
        key_dim, value_dim = self._widths
        for name, width in (("key_dim", key_dim), ("value_dim", value_dim)):
            if self.num_heads < 1 or width < self.num_heads or width % self.num_heads:
                raise ValueError(f"DeltaNetMixer: num_heads={self.num_heads} must divide {name}={width}")
        dense = lambda features, name: nn.Dense(features, use_bias=False, kernel_init=xavier(), name=name)  # noqa: E731
        self.q_proj, self.k_proj = dense(key_dim, "q_proj"), dense(key_dim, "k_proj")
        self.v_proj = dense(value_dim, "v_proj")
        self.b_proj = dense(self.num_heads, "b_proj")
        conv_init = nn.initializers.uniform(1.0)  # U[0, 1), shifted below to U[-1/2, 1/2): PyTorch's 1/sqrt(K)
        taps = lambda name, width: self.param(  # noqa: E731
            name, lambda key, shape: conv_init(key, shape) - 0.5, (CONV_WIDTH, width))
        self.q_conv, self.k_conv = taps("q_conv", key_dim), taps("k_conv", key_dim)
        self.v_conv = taps("v_conv", value_dim)
        self.norm_scale = self.param("norm_scale", nn.initializers.ones, (value_dim // self.num_heads,))
        self.o_proj = dense(self.d_model, "o_proj")

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def _finish(self, q, k, v, x):
        """Heads, L2 norms and beta from the activated conv outputs; x (B, L, D) for beta."""
        q, k = l2_normalize(self._heads(q)), l2_normalize(self._heads(k))
        return q, k, self._heads(v), jax.nn.sigmoid(self.b_proj(x))

    def _features(self, x: jax.Array) -> tuple[jax.Array, ...]:
        convs = ((self.q_proj, self.q_conv), (self.k_proj, self.k_conv), (self.v_proj, self.v_conv))
        q, k, v = (jax.nn.silu(short_conv.causal_conv1d(proj(x), taps)) for proj, taps in convs)
        return self._finish(q, k, v, x)

    def _output(self, o: jax.Array, out_dtype: Any) -> jax.Array:
        o = head_rms_norm(o, self.norm_scale, self.eps)
        return self.o_proj(o.reshape(*o.shape[:-2], -1)).astype(out_dtype)

    def _delta(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        q, k, v, beta = self._features(x)
        if mask is not None:
            beta = beta * mask[..., None].astype(beta.dtype)
        o, _ = delta_ops.delta_rule_chunked(q, k, v, beta, chunk_size=self.chunk_size)
        return o

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        out_dtype = x.dtype if self.dtype is None else self.dtype
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if mask is not None:
            x = x * mask[..., None].astype(x.dtype)
        o = self._delta(x, mask)
        if self.bidirectional:
            flip = lambda a: None if a is None else jnp.flip(a, axis=1)  # noqa: E731
            o = o + flip(self._delta(flip(x), flip(mask)))
        return self._output(o, out_dtype)

    def init_state(self, batch_size: int) -> dict[str, jax.Array]:
        self._check_causal_for_decoding()
        key_dim, value_dim = self._widths
        heads = self.num_heads
        dtype = jnp.promote_types(self.dtype or jnp.float32, jnp.float32)  # float32 (a float64 layer: float64)
        return {"S": jnp.zeros((batch_size, heads, key_dim // heads, value_dim // heads), dtype),
                "conv_q": short_conv.conv_cache_init(batch_size, CONV_WIDTH, key_dim, dtype),
                "conv_k": short_conv.conv_cache_init(batch_size, CONV_WIDTH, key_dim, dtype),
                "conv_v": short_conv.conv_cache_init(batch_size, CONV_WIDTH, value_dim, dtype)}

    def step(self, state: dict[str, jax.Array], x_t: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        self._check_causal_for_decoding()
        out_dtype = x_t.dtype if self.dtype is None else self.dtype
        x_t = x_t.astype(jnp.promote_types(x_t.dtype, jnp.float32))
        new_state, activated = {}, []
        for name, proj, taps in (("q", self.q_proj, self.q_conv), ("k", self.k_proj, self.k_conv),
                                 ("v", self.v_proj, self.v_conv)):
            new_state["conv_" + name], y = short_conv.conv_step(state["conv_" + name].astype(x_t.dtype),
                                                                proj(x_t), taps)
            activated.append(jax.nn.silu(y))
        q, k, v, beta = self._finish(*activated, x_t)
        new_state["S"], o_t = delta_ops.delta_rule_step(state["S"].astype(q.dtype), q, k, v, beta)
        return new_state, self._output(o_t[:, None], out_dtype)[:, 0]
