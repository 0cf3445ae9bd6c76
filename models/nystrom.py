"""The Nystrom attention mixer (registered as "nystrom"), bidirectional only, on the multi-head base of
models/attention.py (see there for the shared options); the math is in ops/nystrom.py.
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import _GROUPS, _MultiHeadMixer, _number, check_attention, transformer_recipes
from models.registry import ActivationModel, register_mixer
from ops import nystrom as nystrom_ops


# Nystrom exists only bidirectionally, and bidirectional attention without positions sees a bag of tokens (a causal
# mask at least tells a token how many came before it): RoPE by default in the configs. On the cpu ListOps budget
# it lifted validation accuracy from 0.26 (NoPE) to WORKSPACE.md's figure.
@register_mixer(
    "nystrom", param_groups=_GROUPS, check=check_attention,
    config_options=dict(num_heads=4, num_landmarks=32, position="rope"), recipes=transformer_recipes(),
    # the iterative pseudo-inverse keeps (H, m, m) matrices per iteration for the backward pass (one iteration's
    # at a time without it)
    memory=ActivationModel(
        per_token=lambda o, d: 12 * d + 4 * _number(o, "num_heads", 4) * _number(o, "num_landmarks", 64),
        per_sequence=lambda o, length, training: 6 * _number(o, "num_heads", 4) * _number(o, "num_landmarks", 64)
        ** 2 * (_number(o, "pinv_iterations", 6) if training else 1)))
class NystromAttention(_MultiHeadMixer):
    """Nystromformer attention (ops/nystrom.py), bidirectional only (a causal form does not exist: the
    landmarks average over the whole sequence).

    Attributes:
      num_landmarks: M segment-mean landmarks (L need not be a multiple of M).
      pinv_iterations: iterations of the pseudo-inverse.
      value_conv_kernel: if > 0, Nystromformer's depthwise convolution of the values along the sequence
        (one kernel of this odd length per head, zero-padded, padded tokens zeroed first) added to the output.
    Positions: none, rope, rope_bias.
    """

    num_landmarks: int = 64
    pinv_iterations: int = 6
    value_conv_kernel: int = 0

    has_causal_form: ClassVar[bool] = False

    def setup(self) -> None:
        if not self.bidirectional:
            raise ValueError("NystromAttention has no causal form: build it with bidirectional=True")
        if self.num_landmarks < 1:
            raise ValueError(f"NystromAttention: num_landmarks must be >= 1, got {self.num_landmarks}")
        if self.value_conv_kernel < 0 or (self.value_conv_kernel and self.value_conv_kernel % 2 == 0):
            raise ValueError(
                f"NystromAttention: value_conv_kernel must be 0 (off) or odd, got {self.value_conv_kernel}"
            )
        self._setup_projections()
        if self.value_conv_kernel:
            std = 1.0 / math.sqrt(self.value_conv_kernel)
            self.value_conv = self.param(
                "value_conv",
                nn.initializers.normal(std),
                (self.value_conv_kernel, self.num_heads),
                self.param_dtype,
            )

    def _value_convolution(self, v: jax.Array, mask: jax.Array | None) -> jax.Array:
        v = v.astype(jnp.promote_types(v.dtype, jnp.float32))  # the tap sum in float32 (bfloat16 activations)
        if mask is not None:
            v = jnp.where(mask[:, :, None, None], v, 0.0)
        half = self.value_conv_kernel // 2
        length = v.shape[1]
        padded = jnp.pad(v, [(0, 0), (half, half), (0, 0), (0, 0)])
        kernel = self.value_conv.astype(v.dtype)
        return sum(
            kernel[tap][None, None, :, None] * padded[:, tap : tap + length]
            for tap in range(self.value_conv_kernel)
        )

    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        self._check_input(x, mask)
        length = x.shape[1]
        q, k, v = self._project(x)
        positions = jnp.arange(length)
        q, k = self._position_qk(q, k, positions, positions)
        q = self._logn_query_scale(q, self._num_keys(length, mask))
        y = nystrom_ops.nystrom_attention(
            q, k, v, num_landmarks=self.num_landmarks, mask=mask, pinv_iterations=self.pinv_iterations
        )
        if self.value_conv_kernel:
            y = y + self._value_convolution(v, mask).astype(y.dtype)
        return self._output(y, x.dtype)
