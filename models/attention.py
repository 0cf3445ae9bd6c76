"""Multi-head attention mixers: the shared base, and softmax attention (registered as "softmax", "blockwise").

The other attention mixers build on the base here: models/linear_attention.py ("linear", "performer") and
models/nystrom.py ("nystrom"). Parameters and wiring only; the math is in ops/attention.py,
ops/linear_attention.py, ops/performer.py, ops/nystrom.py and ops/position.py. Shapes: B batch, L length,
D = d_model, H = num_heads, Kh = D / H.

Every mixer projects x (B, L, D) to queries, keys and values (B, L, H, Kh) with separate Dense layers
("query", "key", "value"), attends per head and projects back with "out". bidirectional=True is full
attention with padded keys masked; bidirectional=False is causal (padded keys masked as well) and provides
`init_state(batch_size)` / `step(state, x_t)` for token-by-token decoding (Nystrom has no causal form).

Shared options (fields of every mixer):
  num_heads: H; d_model must be divisible by it.
  position: "none" (NoPE), "rope", "rope_bias" (RoPE of q + b_q and k + b_k with learnable biases b_q, b_k
    (H Kh,), initialised at zero, docs/methods.md section 8), "alibi" (softmax and blockwise only).
  rope_base: RoPE base (10000).
  rope_scaling: length extrapolation of RoPE (docs/methods.md section 14): "none", "ntk" (fixed NTK: base *
    s^(Kh/(Kh-2))), "ntk_mixed" (NTK-RoPE-mixed: theta_i / s^(((i+1)/(Kh/2))^0.75)), "yarn" (per-frequency
    ramp, q and k times 1 + 0.1 ln s); the softmax mixer also takes "rerope" (needs rerope_window) and
    "ntk_dynamic" (each query, and the keys it scores, at NTK scale max(1, (position + 1) / train_length):
    decoding token by token with re-rotated keys, computed in parallel).
  rope_scale: s = L_test / L_train for "ntk", "ntk_mixed" and "yarn" (1 = no change).
  train_length: L_train; needed by "yarn", "ntk_dynamic" and by logn_scaling.
  logn_scaling: multiply a query's scores by max(1, ln n / ln L_train), n = the number of keys it sees
    (causal: its position + 1; bidirectional: the number of real tokens) -- by scaling the query.
  init_scale: DeepNorm's beta, applied to the value and output projection initialisers only (never query and
    key); see `deepnorm_constants`.
  use_bias: biases on all four projections (the q/k biases of "rope_bias" are separate parameters).
  dtype / param_dtype: computation dtype of the projections (e.g. bfloat16) and parameter dtype (float32); the
    ops accumulate scores, softmax normalisers (max, sum of exp, log-sum-exp), prefix sums and landmark
    averages in float32 regardless, and the output has the input's dtype.

Initialisation: Xavier-uniform (the DeepNorm/torchscale convention), with gain init_scale for value and out.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from models.param_groups import DEFAULT, NO_DECAY
from models.registry import ActivationModel, Recipe, SequenceMixer, register_mixer
from ops import attention as attention_ops
from ops import position as position_ops
from ops.normalizers import NORMALIZERS, NormalizerName, get_normalizer

POSITIONS = ("none", "rope", "rope_bias", "alibi")
ROPE_SCALINGS = ("none", "ntk", "ntk_mixed", "yarn", "rerope", "ntk_dynamic")
_NEED_TRAIN_LENGTH = ("yarn", "ntk_dynamic")



def deepnorm_constants(num_layers: int) -> tuple[float, float]:
    """DeepNorm (alpha, beta) for an encoder-only (or decoder-only) stack of N layers (docs/methods.md section 10).

    alpha = (2N)^(1/4) up-weights the residual in x <- LN(alpha x + G(x)) (post-LN; the encoder applies it);
    beta = (8N)^(-1/4) is the Xavier gain of the value, output and MLP weights -- never of the query and key
    projections (softmax already keeps their gradients small). These are the paper's constants, not the
    blog's (2N)^(-1/4).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return (2.0 * num_layers) ** 0.25, (8.0 * num_layers) ** -0.25


def _xavier_uniform(gain: float) -> nn.initializers.Initializer:
    return nn.initializers.variance_scaling(gain * gain, "fan_avg", "uniform")


# docs/anchors.md section 4: the LRA Transformer baseline (google-research/long-range-arena configs), the recipe
# of every attention mixer here and of the VQ mixers.
#  task: (batch, lr, warmup, steps, layers, heads, emb, mlp, pooling)
TRANSFORMER_ANCHORS = {
    "listops": (32, 0.05, 1000, 5_000, 4, 8, 512, 1024, "cls"),
    "text": (32, 0.05, 8000, 20_000, 4, 4, 256, 1024, "cls"),
    "retrieval": (32, 0.05, 8000, 5_000, 4, 4, 128, 512, "cls"),
    "image": (256, 5e-4, 0, 35_000, 1, 8, 128, 128, "cls"),
    "pathfinder": (512, 1e-3, 0, 62_400, 4, 4, 32, 32, "mean"),
    "pathx": (64, 1e-3, 0, 500_000, 1, 2, 32, 32, "mean"),
}


def transformer_recipes(*, with_position: bool = True) -> dict[str, Recipe]:
    """The LRA Transformer's settings per task, for a mixer with num_heads (and `position`, set to RoPE)."""
    recipes = {}
    for task, (batch, lr, warmup, steps, layers, heads, emb, _mlp, pooling) in TRANSFORMER_ANCHORS.items():
        model = dict(n_layers=layers, d_model=emb, bidirectional=True, norm="layer", residual="prenorm")
        if pooling == "mean":  # CLS pooling: the configured pooling (mean) is used instead
            model["pooling"] = "mean"
        options: dict = dict(num_heads=heads)
        if with_position:
            # Assumed: RoPE where LRA added learned absolute position embeddings (the encoder has none); without
            # any position these bidirectional layers would see a bag of tokens.
            options["position"] = "rope"
        # LRA's "rsqrt_normalized_decay" multiplies lr by min(1, t / warmup) / sqrt(max(t, warmup)), so its peak
        # is lr / sqrt(warmup); we keep that peak and decay with a cosine instead of the inverse square root.
        peak = lr / math.sqrt(warmup) if warmup else lr
        # LRA's Retrieval warms up for 8,000 of its 5,000 steps (its rate never reaches the peak); a warmup as long
        # as the run is refused (experiments/validation.py), so, assumed: such a warmup is capped at 10% of the run.
        fraction = (warmup / steps if warmup < steps else 0.1) if warmup else 0.05
        recipes[task] = Recipe(model=model, options=options,
                               optim=dict(lr=peak, ssm_lr=peak, weight_decay=0.0, b2=0.98), batch_size=batch,
                               num_steps=steps, warmup_fraction=fraction,
                               source="docs/anchors.md section 4 (LRA Transformer configs)")
    return recipes


def check_attention(values, context, ok):
    """The relations of the multi-head options: heads dividing d_model, RoPE's even head width, what the RoPE
    scalings and log-n scaling need."""
    if ok("num_heads"):
        heads = values["num_heads"]
        if context.d_model % heads:
            yield "num_heads", f"{heads} does not divide config.model.d_model = {context.d_model}"
        elif ok("position") and values["position"] in ("rope", "rope_bias") and (context.d_model // heads) % 2:
            yield "position", f"RoPE needs an even head width; d_model / num_heads = {context.d_model // heads}"
    if ok("rope_scaling", "position") and values["rope_scaling"] != "none":
        if values["position"] not in ("rope", "rope_bias"):
            yield "rope_scaling", (f"{values['rope_scaling']!r} needs position 'rope' or 'rope_bias', got "
                                   f"{values['position']!r}")
        elif values["rope_scaling"] == "rerope" and ok("rerope_window") and values["rerope_window"] < 1:
            yield "rerope_window", "rope_scaling='rerope' needs rerope_window >= 1"
    if ok("rerope_leak") and values["rerope_leak"] != 0 and values["rerope_leak"] <= 1:
        yield "rerope_leak", f"expected 0 (ReRoPE) or a number > 1 (leaky ReRoPE), got {values['rerope_leak']}"
    if ok("train_length") and values["train_length"] <= 1:
        needs = [f"rope_scaling={values.get('rope_scaling')!r}"] * (values.get("rope_scaling") in _NEED_TRAIN_LENGTH)
        needs += ["logn_scaling"] * bool(values.get("logn_scaling"))
        if needs:
            yield "train_length", (f"{' and '.join(needs)} need{'s' * (len(needs) == 1)} train_length > 1 (the "
                                   f"training length), got {values['train_length']}")
    if ok("value_conv_kernel") and values["value_conv_kernel"] and values["value_conv_kernel"] % 2 == 0:
        yield "value_conv_kernel", f"expected 0 (off) or an odd int, got {values['value_conv_kernel']}"


_GROUPS = (DEFAULT, NO_DECAY)
_number = ActivationModel.number


class _MultiHeadMixer(SequenceMixer):
    """Projections, position handling and option checks shared by the attention mixers."""

    num_heads: int = 4
    position: str = "none"
    rope_base: float = 10000.0
    rope_scaling: str = "none"
    rope_scale: float = 1.0
    train_length: int = 0
    logn_scaling: bool = False
    init_scale: float = 1.0
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    supported_positions: ClassVar[tuple[str, ...]] = ("none", "rope", "rope_bias")
    supported_rope_scalings: ClassVar[tuple[str, ...]] = ("none", "ntk", "ntk_mixed", "yarn")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def causal(self) -> bool:
        return not self.bidirectional

    def _check_options(self) -> None:
        name = type(self).__name__
        if self.num_heads < 1 or self.d_model % self.num_heads:
            raise ValueError(
                f"{name}: d_model={self.d_model} must be a positive multiple of num_heads={self.num_heads}"
            )
        if self.position not in self.supported_positions:
            raise ValueError(
                f"{name}: position={self.position!r} is not supported; expected one of "
                f"{self.supported_positions}"
            )
        if self.rope_scaling not in self.supported_rope_scalings:
            raise ValueError(
                f"{name}: rope_scaling={self.rope_scaling!r} is not supported; expected one of "
                f"{self.supported_rope_scalings}"
            )
        uses_rope = self.position in ("rope", "rope_bias")
        if self.rope_scaling != "none" and not uses_rope:
            raise ValueError(
                f"{name}: rope_scaling={self.rope_scaling!r} needs position 'rope' or 'rope_bias', "
                f"got position={self.position!r}"
            )
        if uses_rope and self.head_dim % 2:
            raise ValueError(
                f"{name}: RoPE needs an even head width, got d_model / num_heads = {self.head_dim}"
            )
        if self.rope_scale < 1.0:
            raise ValueError(f"{name}: rope_scale (L_test / L_train) must be >= 1, got {self.rope_scale}")
        if (self.rope_scaling in _NEED_TRAIN_LENGTH or self.logn_scaling) and self.train_length <= 1:
            raise ValueError(
                f"{name}: rope_scaling={self.rope_scaling!r} / logn_scaling need train_length > 1, got "
                f"{self.train_length}"
            )

    def _setup_projections(self) -> None:
        self._check_options()
        width = self.num_heads * self.head_dim

        def dense(features: int, gain: float, name: str) -> nn.Dense:
            return nn.Dense(
                features,
                use_bias=self.use_bias,
                kernel_init=_xavier_uniform(gain),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        self.query = dense(width, 1.0, "query")
        self.key = dense(width, 1.0, "key")
        self.value = dense(width, self.init_scale, "value")
        self.out = dense(self.d_model, self.init_scale, "out")
        if self.position == "rope_bias":
            self.rope_bias_q = self.param("rope_bias_q", nn.initializers.zeros, (width,), self.param_dtype)
            self.rope_bias_k = self.param("rope_bias_k", nn.initializers.zeros, (width,), self.param_dtype)

    # --- pieces used by __call__ and step

    def _project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q, k, v (B, L, H, Kh) of x (B, L, D)."""
        shape = x.shape[:2] + (self.num_heads, self.head_dim)
        return self.query(x).reshape(shape), self.key(x).reshape(shape), self.value(x).reshape(shape)

    def _output(self, y: jax.Array, dtype: Any) -> jax.Array:
        """(B, L, H, Kh) -> (B, L, D)."""
        return self.out(y.reshape(y.shape[:2] + (self.d_model,)).astype(self.dtype)).astype(dtype)

    def _rope_frequencies(self) -> jax.Array:
        if self.rope_scaling == "ntk":
            base = position_ops.ntk_scaled_base(self.rope_base, self.rope_scale, self.head_dim)
            return position_ops.rope_frequencies(self.head_dim, base)
        if self.rope_scaling == "ntk_mixed":
            return position_ops.ntk_mixed_frequencies(self.head_dim, self.rope_scale, self.rope_base)
        if self.rope_scaling == "yarn":
            return position_ops.yarn_frequencies(
                self.head_dim, scale=self.rope_scale, train_length=self.train_length, base=self.rope_base
            )
        return position_ops.rope_frequencies(self.head_dim, self.rope_base)

    def _rope_biases(self) -> tuple[jax.Array | None, jax.Array | None]:
        if self.position != "rope_bias":
            return None, None
        shape = (self.num_heads, self.head_dim)
        return self.rope_bias_q.reshape(shape), self.rope_bias_k.reshape(shape)

    def _position_qk(
        self, q: jax.Array, k: jax.Array, q_positions: jax.Array, k_positions: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """RoPE (with bias and NTK/YaRN frequencies, and YaRN's q/k factor) applied to q and k."""
        if self.position not in ("rope", "rope_bias"):
            return q, k
        frequencies = self._rope_frequencies()
        q_bias, k_bias = self._rope_biases()
        q = position_ops.apply_rope(q, q_positions, frequencies, q_bias)
        k = position_ops.apply_rope(k, k_positions, frequencies, k_bias)
        if self.rope_scaling == "yarn":
            factor = position_ops.yarn_attention_factor(self.rope_scale)
            q, k = q * factor, k * factor
        return q, k

    def _logn_query_scale(self, q: jax.Array, num_keys: jax.Array) -> jax.Array:
        """q times max(1, ln n / ln L_train); num_keys broadcastable to (B, L)."""
        if not self.logn_scaling:
            return q
        factor = position_ops.log_n_scale(num_keys, self.train_length)
        factor = jnp.broadcast_to(factor, q.shape[:2])
        return (q * factor[:, :, None, None].astype(q.dtype)).astype(q.dtype)

    def _num_keys(self, length: int, mask: jax.Array | None) -> jax.Array:
        """Keys each query sees, for log-n scaling: (1, L) causal, (B, 1) or (1, 1) bidirectional."""
        if self.causal:
            return jnp.arange(1, length + 1)[None, :]
        if mask is None:
            return jnp.full((1, 1), length)
        return jnp.sum(mask, axis=1, keepdims=True)

    def _check_input(self, x: jax.Array, mask: jax.Array | None) -> None:
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__}: expected x of shape (B, L, D={self.d_model}), got {x.shape}"
            )
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(
                f"{type(self).__name__}: mask must have shape (B, L) = {x.shape[:2]}, got {mask.shape}"
            )

    def _check_step_input(self, x_t: jax.Array) -> None:
        if x_t.ndim != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__}.step: expected x_t of shape (B, D={self.d_model}), got {x_t.shape}"
            )


class _KeyValueCacheMixer(_MultiHeadMixer):
    """Decoding with a key-value cache of max_decode_len entries (softmax and blockwise attention).

    State: {"key", "value": (B, max_decode_len, H, Kh), "index": int32 scalar = tokens seen}. Stepping past
    max_decode_len is not checked inside jit (the cache writes would clamp to the last slot): keep the number
    of steps <= max_decode_len.
    """

    max_decode_len: int = 0

    def init_state(self, batch_size: int) -> dict[str, jax.Array]:
        self._check_causal_for_decoding()
        if self.max_decode_len < 1:
            raise ValueError(
                f"{type(self).__name__}: set max_decode_len (> 0) to decode with a key-value cache"
            )
        shape = (batch_size, self.max_decode_len, self.num_heads, self.d_model // self.num_heads)
        return {
            "key": jnp.zeros(shape, self.dtype),
            "value": jnp.zeros(shape, self.dtype),
            "index": jnp.zeros((), jnp.int32),
        }

    def _write_cache(
        self, state: dict[str, jax.Array], k_t: jax.Array, v_t: jax.Array
    ) -> dict[str, jax.Array]:
        index = state["index"]
        zero = jnp.zeros((), index.dtype)
        start = (zero, index, zero, zero)
        return {
            "key": lax.dynamic_update_slice(state["key"], k_t.astype(state["key"].dtype), start),
            "value": lax.dynamic_update_slice(state["value"], v_t.astype(state["value"].dtype), start),
            "index": index + 1,
        }

    def _cache_keys(self, k: jax.Array, positions: jax.Array) -> jax.Array:
        """The keys (B, L, H, Kh) at `positions` as `step` stores them in the cache (here: unrotated)."""
        return k

    def prefill(self, x: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        """The parallel call on a prompt (B, P, D) and its key-value cache: the prompt's keys and values projected
        at once into slots 0 .. P-1 (as `step` would have stored them) and the index at P (docs/methods.md
        section 18). ValueError when P exceeds max_decode_len."""
        self._check_causal_for_decoding()
        self._check_input(x, None)
        length = x.shape[1]
        state = self.init_state(x.shape[0])
        if length > self.max_decode_len:
            raise ValueError(f"{type(self).__name__}: a prompt of {length} tokens does not fit the key-value cache "
                             f"(max_decode_len={self.max_decode_len})")
        _, k, v = self._project(x)
        k = self._cache_keys(k, jnp.arange(length))
        state = {
            "key": state["key"].at[:, :length].set(k.astype(state["key"].dtype)),
            "value": state["value"].at[:, :length].set(v.astype(state["value"].dtype)),
            "index": jnp.full_like(state["index"], length),
        }
        return state, self(x)


@register_mixer(
    "softmax", param_groups=_GROUPS, check=check_attention,
    config_options=dict(num_heads=4, position="none", max_decode_len=0), recipes=transformer_recipes(),
    # + the (H, L, L) probabilities and their gradient's workspace, about 2 copies per layer
    memory=ActivationModel(per_token=lambda o, d: 7 * d,
                           per_sequence=lambda o, length, training: 2 * _number(o, "num_heads", 4) * length**2))
class SoftmaxAttention(_KeyValueCacheMixer):
    """Dense multi-head attention (O(L^2) memory), the reference mixer.

    Attributes (besides the shared ones, see the module docstring):
      normalizer: "softmax", "sparsemax", "entmax15" or "taylor2" (ops/normalizers.py).
      attention_dropout: dropout rate on the attention weights (training only; needs a "dropout" rng).
      max_decode_len: key-value cache length for `step`.
      rerope_window, rerope_leak: with rope_scaling="rerope": window w (> 0) and leak factor k (0 = ReRoPE,
        relative positions clamped at w; > 1 = leaky ReRoPE). The cache keeps unrotated keys, and every step
        scores them at their positions, so any position scheme decodes exactly as the parallel call.
    """

    normalizer: NormalizerName = NormalizerName.SOFTMAX
    attention_dropout: float = 0.0
    rerope_window: int = 0
    rerope_leak: float = 0.0

    supported_positions: ClassVar[tuple[str, ...]] = POSITIONS
    supported_rope_scalings: ClassVar[tuple[str, ...]] = ROPE_SCALINGS

    def setup(self) -> None:
        if self.normalizer not in NORMALIZERS:
            raise ValueError(
                f"SoftmaxAttention: unknown normalizer {self.normalizer!r}; expected one of "
                f"{sorted(NORMALIZERS)}"
            )
        if self.rope_scaling == "rerope":
            if self.rerope_window < 1:
                raise ValueError(
                    f"SoftmaxAttention: rope_scaling='rerope' needs rerope_window >= 1, got "
                    f"{self.rerope_window}"
                )
            if self.rerope_leak != 0 and self.rerope_leak <= 1:
                raise ValueError(
                    f"SoftmaxAttention: rerope_leak must be 0 (ReRoPE) or > 1 (leaky), got {self.rerope_leak}"
                )
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(
                f"SoftmaxAttention: attention_dropout must be in [0, 1), got {self.attention_dropout}"
            )
        self._setup_projections()
        self.dropout = nn.Dropout(self.attention_dropout)

    def _logits(
        self, q: jax.Array, k: jax.Array, q_positions: jax.Array, k_positions: jax.Array
    ) -> jax.Array:
        """Scores (B, H, Lq, Lk) of unrotated q (B, Lq, H, Kh) and k (B, Lk, H, Kh) at the given positions."""
        if self.rope_scaling == "ntk_dynamic":  # each query's own frequencies, for it and every key it scores
            q_bias, k_bias = self._rope_biases()
            frequencies = position_ops.ntk_dynamic_frequencies(
                self.head_dim, q_positions, self.train_length, self.rope_base
            )
            logits = position_ops.rope_logits_per_query(
                q, k, frequencies, q_positions=q_positions, k_positions=k_positions, q_bias=q_bias, k_bias=k_bias
            )
        elif self.rope_scaling == "rerope":
            q_bias, k_bias = self._rope_biases()
            logits = position_ops.rerope_logits(
                q,
                k,
                self._rope_frequencies(),
                window=self.rerope_window,
                leak=self.rerope_leak if self.rerope_leak > 0 else None,
                q_positions=q_positions,
                k_positions=k_positions,
                q_bias=q_bias,
                k_bias=k_bias,
                causal=self.causal,
            )
        else:
            q, k = self._position_qk(q, k, q_positions, k_positions)
            logits = attention_ops.attention_logits(q, k)
        if self.position == "alibi":
            slopes = position_ops.alibi_slopes(self.num_heads).astype(logits.dtype)
            logits = logits + position_ops.alibi_bias(slopes, q_positions, k_positions)
        return logits

    def _attend(
        self, logits: jax.Array, v: jax.Array, combined_mask: jax.Array | None, deterministic: bool
    ) -> jax.Array:
        weights = get_normalizer(self.normalizer)(logits, combined_mask)
        if self.attention_dropout > 0:
            weights = self.dropout(weights, deterministic=deterministic)
        return jnp.einsum("bhqj,bjhv->bqhv", weights, v.astype(weights.dtype))

    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        self._check_input(x, mask)
        length = x.shape[1]
        q, k, v = self._project(x)
        q = self._logn_query_scale(q, self._num_keys(length, mask))
        positions = jnp.arange(length)
        logits = self._logits(q, k, positions, positions)
        combined = attention_ops.attention_mask(mask, self.causal, length, length)
        return self._output(self._attend(logits, v, combined, deterministic), x.dtype)

    def step(self, state: dict[str, jax.Array], x_t: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        self._check_causal_for_decoding()
        self._check_step_input(x_t)
        q, k, v = self._project(x_t[:, None])
        index = state["index"]
        state = self._write_cache(state, k, v)
        q = self._logn_query_scale(q, index + 1)
        cache_positions = jnp.arange(state["key"].shape[1])
        logits = self._logits(q, state["key"], index[None], cache_positions)  # (B, H, 1, Lmax)
        seen = (cache_positions <= index)[None, None, None, :]
        y = self._attend(logits, state["value"], seen, deterministic=True)
        return state, self._output(y, x_t.dtype)[:, 0]


@register_mixer(
    "blockwise", param_groups=_GROUPS, check=check_attention,
    config_options=dict(num_heads=4, position="none", block_size=128, max_decode_len=0),
    recipes=transformer_recipes(), memory=ActivationModel(per_token=lambda o, d: 16 * d))
class BlockwiseAttention(_KeyValueCacheMixer):
    """Softmax attention computed block by block (ops.attention.blockwise_attention): O(L block) memory in
    the forward and backward passes; same outputs as "softmax".

    Attributes: block_size (query and key block length), max_decode_len (cache for `step`).
    Positions: none, rope, rope_bias, alibi (built per block from the slopes); rope_scaling none/ntk/ntk_mixed/yarn.
    """

    block_size: int = 128

    supported_positions: ClassVar[tuple[str, ...]] = POSITIONS

    def setup(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"BlockwiseAttention: block_size must be >= 1, got {self.block_size}")
        self._setup_projections()

    def _slopes(self) -> jax.Array | None:
        return position_ops.alibi_slopes(self.num_heads) if self.position == "alibi" else None

    def _cache_keys(self, k: jax.Array, positions: jax.Array) -> jax.Array:
        """Blockwise decoding caches rotated keys (RoPE at their positions, as `step` stores them)."""
        return self._position_qk(k, k, positions, positions)[1]

    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        self._check_input(x, mask)
        length = x.shape[1]
        q, k, v = self._project(x)
        positions = jnp.arange(length)
        q, k = self._position_qk(q, k, positions, positions)
        q = self._logn_query_scale(q, self._num_keys(length, mask))
        y = attention_ops.blockwise_attention(
            q,
            k,
            v,
            mask=mask,
            causal=self.causal,
            alibi_slopes=self._slopes(),
            block_q=self.block_size,
            block_k=self.block_size,
        )
        return self._output(y, x.dtype)

    def step(self, state: dict[str, jax.Array], x_t: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        self._check_causal_for_decoding()
        self._check_step_input(x_t)
        q, k, v = self._project(x_t[:, None])
        index = state["index"]
        q, k = self._position_qk(q, k, index[None], index[None])  # the cache holds rotated keys
        q = self._logn_query_scale(q, index + 1)
        state = self._write_cache(state, k, v)
        y = attention_ops.decode_step(
            q[:, 0], state["key"], state["value"], state["index"], alibi_slopes=self._slopes()
        )
        return state, self._output(y[:, None], x_t.dtype)[:, 0]
