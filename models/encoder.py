"""The sequence encoder shared by every mixer and task, and the classification heads.

SequenceEncoder: token embedding (or a linear map of real-valued inputs) -> N residual blocks -> final norm
-> masked pooling. A block is

    prenorm:  x + Dropout(GLU(Dropout(GELU(Mixer(Norm(x))))))
    postnorm: Norm(x + Dropout(GLU(Dropout(GELU(Mixer(x))))))
    deepnorm: Norm(alpha * x + Dropout(GLU(Dropout(GELU(Mixer(x)))))), with alpha = (2N)^(1/4) and the GLU and the
              mixer's value/output projections initialised with Xavier gain beta = (8N)^(-1/4) (docs/methods.md
              section 10; mixers that have no `init_scale` option keep their own initialisation)

with GLU(z) = W1 z * sigmoid(W2 z). The mixer is built by name from the registry, so a new mixer runs here
without changes. Norms are BatchNorm (statistics over real tokens only: padding is masked out) or LayerNorm.
Pooling is the mean over real tokens (never padding) or the last real token.

Mixed precision (`dtype`, config key model.dtype): parameters are always float32; the embedding, the residual
stream, the mixers (built with dtype=dtype) and the GLU run in `dtype` (e.g. bfloat16). Norms (their statistics
and the normalisation), the final norm, the pooling and the heads compute in float32 (norm outputs are cast back
to `dtype`), so the logits are float32. Each mixer keeps its own float32 accumulations (scans, FFT convolutions,
softmax normalisers, prefix sums; see the mixers' docstrings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import deepnorm_constants
from models.registry import resolve_mixer

NORMS = ("batch", "layer")
POOLINGS = ("mean", "last")
RESIDUALS = ("prenorm", "postnorm", "deepnorm")
DTYPES = ("float32", "bfloat16")  # model.dtype values the trainer accepts


def _at_least_float32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class ResidualBlock(nn.Module):
    d_model: int
    mixer: str
    mixer_options: Mapping[str, Any]
    bidirectional: bool
    norm: str = "batch"
    residual: str = "prenorm"
    dropout: float = 0.0
    deepnorm_alpha: float = 1.0
    deepnorm_beta: float = 1.0
    dtype: Any = jnp.float32

    def _norm(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        """The norm, computed in float32 (statistics and normalisation), returned in self.dtype."""
        x = _at_least_float32(x)
        if self.norm == "batch":
            y = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(x, mask=mask[..., None])
        else:
            y = nn.LayerNorm(name="norm")(x)
        return y.astype(self.dtype)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        skip = x
        if self.residual == "prenorm":
            x = self._norm(x, mask, train)
        glu_init = nn.initializers.lecun_normal()
        init_scale = None
        if self.residual == "deepnorm":
            glu_init = nn.initializers.variance_scaling(self.deepnorm_beta**2, "fan_avg", "normal")
            init_scale = self.deepnorm_beta  # taken by the mixers that have the option
            skip = (self.deepnorm_alpha * skip).astype(skip.dtype)
        mixer = resolve_mixer(self.mixer, self.mixer_options).build(
            self.d_model, bidirectional=self.bidirectional, dtype=self.dtype, init_scale=init_scale)
        x = mixer(x, mask=mask, deterministic=not train).astype(self.dtype)
        x = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(x))
        value = nn.Dense(self.d_model, kernel_init=glu_init, dtype=self.dtype, name="glu_value")(x)
        gate = nn.Dense(self.d_model, kernel_init=glu_init, dtype=self.dtype, name="glu_gate")(x)
        x = value * jax.nn.sigmoid(gate)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = skip + x
        if self.residual != "prenorm":
            x = self._norm(x, mask, train)
        return x


def masked_pool(x: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
    """Pools (B, L, D) over the real tokens (mask (B, L) True) -> (B, D)."""
    if pooling == "mean":
        weights = mask.astype(x.dtype)[..., None]
        return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
    if pooling == "last":
        last = jnp.maximum(mask.sum(axis=1) - 1, 0)
        return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


class SequenceEncoder(nn.Module):
    """Embeds tokens (B, L) int (or values (B, L, F) float when vocab_size is None), mixes, pools -> (B, D).

    Attributes:
      vocab_size: number of token ids (0 is padding); None for real-valued inputs.
      d_model, n_layers: width and depth.
      mixer, mixer_options: the registry name and its options (d_model and bidirectional are passed here).
      bidirectional: mixers see the whole sequence (True) or only the past (False).
      norm: "batch" or "layer"; residual: "prenorm", "postnorm" or "deepnorm" (see the module docstring).
      dropout: rate inside the blocks; pooling: "mean" or "last".
      dtype: activation dtype (float32 or bfloat16); see "Mixed precision" in the module docstring. The pooled
        output (B, D) is float32 whatever the dtype.
    """

    vocab_size: int | None
    d_model: int = 128
    n_layers: int = 4
    mixer: str = "lru"
    mixer_options: Mapping[str, Any] | None = None
    bidirectional: bool = False
    norm: str = "batch"
    residual: str = "prenorm"
    dropout: float = 0.0
    pooling: str = "mean"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array, *, train: bool = False, pool: bool = True) -> jax.Array:
        """(B, L) tokens (or (B, L, F) values) and their (B, L) mask -> (B, D) pooled float32 features, or the
        (B, L, D) float32 features of every position when pool is False (per-position heads)."""
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if self.residual not in RESIDUALS:
            raise ValueError(f"unknown residual {self.residual!r}; expected one of {RESIDUALS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
        # The boundary of every model: token ids (B, L) (values (B, L, F) without a vocabulary) and a bool mask.
        chex.assert_rank(inputs, 2 if self.vocab_size is not None else 3)
        chex.assert_rank(mask, 2)
        chex.assert_type(mask, bool)
        chex.assert_equal_shape_prefix((inputs, mask), 2)
        if self.vocab_size is None:
            x = nn.Dense(self.d_model, dtype=self.dtype, name="input_projection")(inputs)
        else:
            x = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype, name="embedding")(inputs)
        x = x * mask[..., None].astype(x.dtype)
        alpha, beta = deepnorm_constants(self.n_layers)
        for i in range(self.n_layers):
            x = ResidualBlock(self.d_model, self.mixer, self.mixer_options or {}, self.bidirectional, self.norm,
                              self.residual, self.dropout, alpha, beta, self.dtype, name=f"block_{i}")(
                x, mask, train)
        x = _at_least_float32(x)  # final norm and pooling (a sum over L) in float32
        if self.residual == "prenorm":
            x = nn.LayerNorm(name="final_norm")(x)
        return masked_pool(x, mask, self.pooling) if pool else x


class Classifier(nn.Module):
    """SequenceEncoder followed by a linear classification head: (B, L) tokens -> (B, num_classes) logits.

    The head computes in float32 (the encoder's pooled output is float32), so the logits are float32 whatever
    the encoder's dtype.
    """

    encoder: SequenceEncoder
    num_classes: int

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array, *, train: bool = False) -> jax.Array:
        pooled = self.encoder(inputs, mask, train=train)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(pooled)
        chex.assert_shape(logits, (inputs.shape[0], self.num_classes))
        return logits


class PerPositionClassifier(nn.Module):
    """SequenceEncoder without pooling, then a linear head at every position: (B, L) tokens -> (B, L, num_classes)
    logits (float32), for tasks with a target per position (language modelling, recall diagnostics). Whether a
    position sees the future is the encoder's direction: per-position tasks that predict from the past build
    causal mixers with LayerNorm (experiments/validation.py refuses BatchNorm, whose statistics span the future)."""

    encoder: SequenceEncoder
    num_classes: int

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array, *, train: bool = False) -> jax.Array:
        features = self.encoder(inputs, mask, train=train, pool=False)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(features)
        chex.assert_shape(logits, (*inputs.shape[:2], self.num_classes))
        return logits


class DualClassifier(nn.Module):
    """The dual encoder for pairs (retrieval): one shared encoder on both sequences, then an MLP on
    [u, v, u * v, u - v] -> (B, num_classes) logits. inputs and mask are (B, 2, L[, F]).

    Both documents go through the encoder as one batch of 2B sequences, so the two share every parameter
    (and BatchNorm statistics are taken over both). The MLP and the head compute in float32.
    """

    encoder: SequenceEncoder
    num_classes: int
    hidden: int = 0  # MLP width; 0 = d_model

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array, *, train: bool = False) -> jax.Array:
        if inputs.shape[1] != 2:
            raise ValueError(f"DualClassifier expects inputs shaped (B, 2, L), got {inputs.shape}")
        batch = inputs.shape[0]
        both = jnp.concatenate([inputs[:, 0], inputs[:, 1]], axis=0)
        pooled = self.encoder(both, jnp.concatenate([mask[:, 0], mask[:, 1]], axis=0), train=train)
        u, v = pooled[:batch], pooled[batch:]
        features = jnp.concatenate([u, v, u * v, u - v], axis=-1)
        hidden = nn.gelu(nn.Dense(self.hidden or pooled.shape[-1], dtype=jnp.float32, name="mlp")(features))
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(hidden)
