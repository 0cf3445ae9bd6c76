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

Step-by-step decoding (causal encoders whose mixer has a recurrent step): `init_state(batch_size)` and
`step(state, token_t)` on SequenceEncoder (features (B, D) after the final norm), ResidualBlock and
PerPositionClassifier (logits (B, C)) compute position t of the parallel call with train=False, one token at a
time: LayerNorm is per token, BatchNorm uses its running averages, the mixer steps its own state. The submodules
are made in `setup` under the names the compact form gave them, so both paths share one parameter tree
(models/generation.py samples with it; tests/models/test_generation.py checks the tree and step == parallel).
`prefill(tokens)` on the same three runs a prompt in one parallel pass and returns the decoding state after it
with the outputs of every position: each block's mixer computes its state from its parallel form (SequenceMixer
.prefill; docs/methods.md section 18), so decoding continues with `step` as if the prompt had been stepped.

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
    """One residual block (see the module docstring), in parallel (`__call__`) or one token at a time (`step`).

    The submodules are made in `setup` under the names the block has always given them (`norm`, the mixer's
    automatic name such as `LRUMixer_0`, `glu_value`, `glu_gate`, `Dropout_0`, `Dropout_1`), so `__call__` and
    `step` share one parameter tree, and parameters, initialisation and dropout masks are those of the former
    compact form.
    """

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

    def setup(self) -> None:
        if self.norm == "batch":
            self.norm_layer = nn.BatchNorm(momentum=0.9, name="norm")
        else:
            self.norm_layer = nn.LayerNorm(name="norm")
        glu_init = nn.initializers.lecun_normal()
        init_scale = None
        if self.residual == "deepnorm":
            glu_init = nn.initializers.variance_scaling(self.deepnorm_beta**2, "fan_avg", "normal")
            init_scale = self.deepnorm_beta  # taken by the mixers that have the option
        mixer = resolve_mixer(self.mixer, self.mixer_options).build(
            self.d_model, bidirectional=self.bidirectional, dtype=self.dtype, init_scale=init_scale)
        # The name the compact form gave it automatically (the block's first module of its class).
        self.mixer_layer = mixer.clone(parent=self, name=f"{type(mixer).__name__}_0")
        self.mixer_dropout = nn.Dropout(self.dropout, name="Dropout_0")
        self.glu_value = nn.Dense(self.d_model, kernel_init=glu_init, dtype=self.dtype, name="glu_value")
        self.glu_gate = nn.Dense(self.d_model, kernel_init=glu_init, dtype=self.dtype, name="glu_gate")
        self.glu_dropout = nn.Dropout(self.dropout, name="Dropout_1")

    def _norm(self, x: jax.Array, mask: jax.Array | None, train: bool) -> jax.Array:
        """The norm, computed in float32 (statistics and normalisation), returned in self.dtype. Works on (B, L, D)
        and on one token (B, D): LayerNorm is per token, and BatchNorm outside training uses its running
        averages (mask None: every token is real)."""
        x = _at_least_float32(x)
        if self.norm == "batch":
            y = self.norm_layer(x, use_running_average=not train, mask=None if mask is None else mask[..., None])
        else:
            y = self.norm_layer(x)
        return y.astype(self.dtype)

    def _skip(self, x: jax.Array) -> jax.Array:
        if self.residual == "deepnorm":
            return (self.deepnorm_alpha * x).astype(x.dtype)
        return x

    def _glu(self, x: jax.Array, deterministic: bool) -> jax.Array:
        """Dropout(GLU(Dropout(GELU(x)))) on the mixer's output, (..., D)."""
        x = self.mixer_dropout(nn.gelu(x), deterministic=deterministic)
        x = self.glu_value(x) * jax.nn.sigmoid(self.glu_gate(x))
        return self.glu_dropout(x, deterministic=deterministic)

    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        skip = self._skip(x)
        if self.residual == "prenorm":
            x = self._norm(x, mask, train)
        x = self.mixer_layer(x, mask=mask, deterministic=not train).astype(self.dtype)
        x = skip + self._glu(x, deterministic=not train)
        if self.residual != "prenorm":
            x = self._norm(x, mask, train)
        return x

    def init_state(self, batch_size: int) -> Any:
        """The mixer's decoding state for `batch_size` sequences (the block keeps no state of its own)."""
        return self.mixer_layer.init_state(batch_size)

    def step(self, state: Any, x_t: jax.Array) -> tuple[Any, jax.Array]:
        """One token (B, D) through the block as `__call__` computes it with train=False: (state, y_t (B, D))."""
        skip = self._skip(x_t)
        if self.residual == "prenorm":
            x_t = self._norm(x_t, None, train=False)
        state, y_t = self.mixer_layer.step(state, x_t)
        y_t = skip + self._glu(y_t.astype(self.dtype), deterministic=True)
        if self.residual != "prenorm":
            y_t = self._norm(y_t, None, train=False)
        return state, y_t

    def prefill(self, x: jax.Array) -> tuple[Any, jax.Array]:
        """A prompt (B, P, D) through the block as `__call__` computes it with train=False and every position
        real, with the mixer's `prefill`: (the mixer's state after the prompt, y (B, P, D))."""
        skip = self._skip(x)
        if self.residual == "prenorm":
            x = self._norm(x, None, train=False)
        state, y = self.mixer_layer.prefill(x)
        y = skip + self._glu(y.astype(self.dtype), deterministic=True)
        if self.residual != "prenorm":
            y = self._norm(y, None, train=False)
        return state, y


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

    def setup(self) -> None:
        if self.vocab_size is None:
            self.input_layer = nn.Dense(self.d_model, dtype=self.dtype, name="input_projection")
        else:
            self.input_layer = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype, name="embedding")
        alpha, beta = deepnorm_constants(self.n_layers)
        self.blocks = [
            ResidualBlock(self.d_model, self.mixer, self.mixer_options or {}, self.bidirectional, self.norm,
                          self.residual, self.dropout, alpha, beta, self.dtype, name=f"block_{i}")
            for i in range(self.n_layers)]
        if self.residual == "prenorm":
            self.final_norm = nn.LayerNorm(name="final_norm")

    def _check_settings(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if self.residual not in RESIDUALS:
            raise ValueError(f"unknown residual {self.residual!r}; expected one of {RESIDUALS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")

    def _output_norm(self, x: jax.Array) -> jax.Array:
        x = _at_least_float32(x)  # final norm and pooling (a sum over L) in float32
        if self.residual == "prenorm":
            x = self.final_norm(x)
        return x

    def __call__(self, inputs: jax.Array, mask: jax.Array, *, train: bool = False, pool: bool = True) -> jax.Array:
        """(B, L) tokens (or (B, L, F) values) and their (B, L) mask -> (B, D) pooled float32 features, or the
        (B, L, D) float32 features of every position when pool is False (per-position heads)."""
        self._check_settings()
        # The boundary of every model: token ids (B, L) (values (B, L, F) without a vocabulary) and a bool mask.
        chex.assert_rank(inputs, 2 if self.vocab_size is not None else 3)
        chex.assert_rank(mask, 2)
        chex.assert_type(mask, bool)
        chex.assert_equal_shape_prefix((inputs, mask), 2)
        x = self.input_layer(inputs)
        x = x * mask[..., None].astype(x.dtype)
        for block in self.blocks:
            x = block(x, mask, train)
        x = self._output_norm(x)
        return masked_pool(x, mask, self.pooling) if pool else x

    def _check_decodable(self) -> None:
        self._check_settings()
        if self.bidirectional:
            raise ValueError("step-by-step decoding needs a causal encoder (bidirectional=False); this one is "
                             f"bidirectional (mixer {self.mixer!r}): every position sees the whole sequence")
        if not resolve_mixer(self.mixer, self.mixer_options or {}).contract.step:
            raise ValueError(f"mixer {self.mixer!r} has no recurrent step (init_state / step): the encoder cannot "
                             "decode step by step")

    def init_state(self, batch_size: int) -> tuple[Any, ...]:
        """The decoding state of `batch_size` sequences before their first token: one mixer state per block.
        ValueError for a bidirectional encoder or a mixer without a step."""
        self._check_decodable()
        return tuple(block.init_state(batch_size) for block in self.blocks)

    def step(self, state: tuple[Any, ...], token_t: jax.Array) -> tuple[tuple[Any, ...], jax.Array]:
        """The next token of every sequence, (B,) ids (or (B, F) values without a vocabulary), -> (state,
        features_t (B, D) float32 after the final norm): position t of `__call__(..., pool=False)` with
        train=False and every position real, given the state after positions < t."""
        self._check_decodable()
        chex.assert_rank(token_t, 1 if self.vocab_size is not None else 2)
        if len(state) != len(self.blocks):
            raise ValueError(f"expected a state of {len(self.blocks)} blocks (init_state), got {len(state)}")
        x = self.input_layer(token_t)
        new_state = []
        for block, block_state in zip(self.blocks, state):
            block_state, x = block.step(block_state, x)
            new_state.append(block_state)
        return tuple(new_state), self._output_norm(x)

    def prefill(self, inputs: jax.Array) -> tuple[tuple[Any, ...], jax.Array]:
        """A prompt (B, P) of ids (or (B, P, F) values without a vocabulary), every position real, in one parallel
        pass -> (state, features (B, P, D) float32 after the final norm): the features of `__call__(...,
        pool=False)` with train=False, and the state `step` reaches after the P tokens from `init_state`
        (each block's mixer returns it from its `prefill`; docs/methods.md section 18). ValueError for a
        bidirectional encoder or a mixer without a step."""
        self._check_decodable()
        chex.assert_rank(inputs, 2 if self.vocab_size is not None else 3)
        x = self.input_layer(inputs)
        state = []
        for block in self.blocks:
            block_state, x = block.prefill(x)
            state.append(block_state)
        return tuple(state), self._output_norm(x)


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

    def setup(self) -> None:
        self.head = nn.Dense(self.num_classes, dtype=jnp.float32, name="head")

    def __call__(self, inputs: jax.Array, mask: jax.Array, *, train: bool = False) -> jax.Array:
        features = self.encoder(inputs, mask, train=train, pool=False)
        logits = self.head(features)
        chex.assert_shape(logits, (*inputs.shape[:2], self.num_classes))
        return logits

    def init_state(self, batch_size: int) -> tuple[Any, ...]:
        """The encoder's decoding state (SequenceEncoder.init_state); ValueError for a bidirectional encoder."""
        return self.encoder.init_state(batch_size)

    def step(self, state: tuple[Any, ...], token_t: jax.Array) -> tuple[tuple[Any, ...], jax.Array]:
        """The next token (B,) -> (state, logits_t (B, num_classes) float32): position t of `__call__` (train
        False, every position real), one token at a time (models/generation.py decodes with it)."""
        state, features = self.encoder.step(state, token_t)
        logits = self.head(features)
        chex.assert_shape(logits, (token_t.shape[0], self.num_classes))
        return state, logits

    def prefill(self, inputs: jax.Array) -> tuple[tuple[Any, ...], jax.Array]:
        """A prompt (B, P) -> (state, logits (B, P, num_classes) float32): `__call__` (train False, every position
        real) in one parallel pass, with the decoding state after the prompt (SequenceEncoder.prefill), from
        which `step` continues (models/generation.py)."""
        state, features = self.encoder.prefill(inputs)
        logits = self.head(features)
        chex.assert_shape(logits, (*inputs.shape[:2], self.num_classes))
        return state, logits


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
