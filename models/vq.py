"""Transformer-VQ mixers (registered as "vq" and "vq_soft"): parameters and wiring; the math is in ops/vq.py
and ops/vq_attention.py.

Shapes: B batch, L length, D = d_model, H = num_heads, K = key_dim, V = value_dim (per head), S codebook
size, C block length.

GAU-style projections of the official implementation (docs/methods.md section 5):
    q = W_q x;  [k, v, g] = W_kvg x;  v = silu(v);  g = silu(g);  y = W_o(attn(q, k, v) * g),
with q and k normalised without gain or bias and scaled by K^(-1/4) (`ops.vq_attention.normalize_qk`; RMS form
as in the official code unless qk_norm_center=True), keys quantised per head, and a learned per-distance bias
(H, 2C) (causal; bidirectional: (H, 2C - 1)), initialised at zero, in the no-weight-decay group. No projection
has a bias term.

"vq" quantisers (option `quantizer`):
  "ema"       Transformer-VQ: straight-through keys; codebook C = sg(c_sum / max(c_count, 0.01)) with c_sum
              (H, S, K) and c_count (H, S) in the "codebook" optimiser group, moved by the EMA surrogate loss.
  "rotation"  as "ema" but the keys' gradient is the rotation trick's (docs/methods.md section 12).
  "simvq"     straight-through keys; codebook = frozen random codes (H, S, K) (stored in the "codebook" group,
              stop-gradiented, so SGD leaves them unchanged) @ W (H, K, K) (initialised to the identity, in
              the no-weight-decay group), trained by the codebook loss.
Codebook health options of the EMA quantisers (VQAttentionMixer): data-dependent initialisation from the first
update's keys (codebook_init "keys" / "kmeans") and dead-code restarts (dead_code_threshold); off by default
(Transformer-VQ's random codes, no restarts). Note that a first-layer mixer reading token embeddings without
positions sees at most vocabulary-size distinct keys, so at most that many codes can be in use.
"vq_soft": soft VQ (docs/methods.md section 6): p(s | k) = softmax_s(-||k - c_s||^2 / temperature), differentiable,
  no straight-through and no auxiliary losses; the codebook (H, S, K) is learned by backpropagation
  (no-weight-decay group), or frozen random codes if learn_codebook=False (a Performer-like soft VQ).

What the mixers sow (collections are written only when the caller makes them mutable, never by `init`; sow
appends to a tuple, so each value below appears as a 1-tuple per mixer instance):
  "losses"/"vq_commit"    scalar = commitment_weight * (mean over real tokens of ||k - sg(c_z)||^2,
                          summed over heads). ADD to the loss as it is. ("vq" only.)
  "losses"/"vq_codebook"  scalar. quantizer "ema"/"rotation": the EMA surrogate
                          sum sg(c - c_tgt) * (c - sg(c)) over c_sum and c_count, whose VALUE IS 0 and whose
                          gradient is c - c_tgt: ADD it to the loss unscaled, and let the "codebook" group be
                          plain SGD with learning rate 1 and nothing else (no clipping, decay or averaging
                          of those gradients), so that the step sets c to c_tgt = 0.99 c + 0.01 (batch
                          statistics). The batch statistics are SUMS over all real tokens of the batch (per
                          code: key sum and count). With codebook_init != "random" or dead_code_threshold > 0
                          the same surrogate also carries the data initialisation and the restarts (they are
                          part of the targets) and increments the `codebook_updates` counter.
                          quantizer "simvq": simvq_codebook_weight * (mean over real tokens of
                          ||sg(k) - c_z||^2, summed over heads); it trains W. ("vq" only.)
  "metrics"/"code_usage"          exp(code entropy) / S: the effective fraction of the codebook in use in this
                                  batch, in [1/S, 1], mean over heads.
  "metrics"/"code_entropy"        entropy of the batch's code-usage distribution in NATS, mean over heads.
  "metrics"/"dead_code_fraction"  share of codes no real token of the batch used, mean over heads.
  "metrics"/"quantization_error"  mean over real tokens and heads of ||k - q|| / ||k|| (q = nearest code for
                                  "vq", the soft reconstruction sum_s p_s c_s for "vq_soft").
  "metrics"/"restarted_code_fraction"  share of the codes restarted by this update, mean over heads ("vq" with
                                  dead_code_threshold > 0, and only when "losses" is mutable too).
All metrics are stop-gradiented scalars. Nothing is sown by `step`.
"""

from __future__ import annotations

import enum
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import transformer_recipes
from models.param_groups import CODEBOOK, DEFAULT, NO_DECAY, grouped
from models.registry import ActivationModel, Recipe, SequenceMixer, register_mixer
from ops import vq as vq_ops
from ops import vq_attention as vqa
from ops.vq_attention import Formulation


class Quantizer(enum.StrEnum):
    """How the VQ mixer's codebook learns: EMA k-means, the rotation trick, or SimVQ's linear reparameterisation."""

    EMA = "ema"
    ROTATION = "rotation"
    SIMVQ = "simvq"


class CodebookInit(enum.StrEnum):
    """Where the EMA quantisers' codes start: random normal, the first batch's keys, or k-means of them."""

    RANDOM = "random"
    KEYS = "keys"
    KMEANS = "kmeans"


QUANTIZERS = tuple(q.value for q in Quantizer)
CODEBOOK_INITS = tuple(c.value for c in CodebookInit)
LOSSES = "losses"
METRICS = "metrics"

sg = jax.lax.stop_gradient


def _scaled_normal(stddev: float):
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return stddev * jax.random.normal(key, shape, dtype)

    return init


class _VQMixerBase(SequenceMixer):
    """Projections, bias, decoding and diagnostics shared by the hard and soft VQ mixers.

    Attributes:
      num_heads: H.
      key_dim: K per head (queries, keys and codes).
      value_dim: V per head; None = int(expansion * d_model) // num_heads.
      expansion: value width relative to d_model when value_dim is None (official: d_v = 2 d_model).
      codebook_size: S (official 512; the default 64 suits LRA-sized CPU runs).
      block_len: C.
      positional_bias: learn the per-distance additive bias of the local window.
      grad_through_cache: let gradients reach the cached per-code counts / mean values.
      formulation: "parallel" (associative scan over blocks) or "serial" (lax.scan), causal only.
      qk_norm_center: subtract the mean in the q/k normalisation (LayerNorm) instead of the RMS form.
      dtype, param_dtype: computation (at least float32 inside the ops) and parameter dtypes.
    """

    num_heads: int = 1
    key_dim: int = 32
    value_dim: int | None = None
    expansion: float = 2.0
    codebook_size: int = 64
    block_len: int = 32
    positional_bias: bool = True
    grad_through_cache: bool = False
    formulation: Formulation = Formulation.PARALLEL
    qk_norm_center: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def head_value_dim(self) -> int:
        if self.value_dim is not None:
            return self.value_dim
        return max(int(self.expansion * self.d_model) // self.num_heads, 1)

    def _check_options(self) -> None:
        name = type(self).__name__
        for field in ("num_heads", "key_dim", "codebook_size", "block_len"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}: {field} must be a positive integer, got {getattr(self, field)}")
        if self.value_dim is not None and self.value_dim < 1:
            raise ValueError(f"{name}: value_dim must be a positive integer or None, got {self.value_dim}")
        if self.formulation not in vqa.FORMULATIONS:
            raise ValueError(f"{name}: unknown formulation {self.formulation!r}; expected one of "
                             f"{vqa.FORMULATIONS}")

    def _setup_common(self) -> None:
        h, k, v = self.num_heads, self.key_dim, self.head_value_dim
        dense = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        self.query = nn.Dense(h * k, name="query", **dense)
        self.key_value_gate = nn.Dense(h * k + 2 * h * v, name="key_value_gate", **dense)
        self.out = nn.Dense(self.d_model, name="out", **dense)
        if self.positional_bias:
            width = 2 * self.block_len - 1 if self.bidirectional else 2 * self.block_len
            # A positional table, not a weight matrix: no weight decay.
            self.bias = self.param("bias", grouped(nn.initializers.zeros, NO_DECAY), (h, width),
                                   self.param_dtype)
        else:
            self.bias = None

    def _project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """x (B, L, D) -> q, k (B, L, H, K) normalised and scaled; v, g (B, L, H, V) after silu."""
        h, k, v = self.num_heads, self.key_dim, self.head_value_dim
        lead = x.shape[:-1]
        q = self.query(x).reshape(*lead, h, k)
        key, value, gate = jnp.split(self.key_value_gate(x), [h * k, h * k + h * v], axis=-1)
        q = vqa.normalize_qk(q, center=self.qk_norm_center)
        key = vqa.normalize_qk(key.reshape(*lead, h, k), center=self.qk_norm_center)
        value = jax.nn.silu(value.reshape(*lead, h, v))
        gate = jax.nn.silu(gate.reshape(*lead, h, v))
        return q, key, value, gate

    def _output(self, attn: jax.Array, gate: jax.Array) -> jax.Array:
        mixed = (attn * gate).astype(self.dtype)
        return self.out(mixed.reshape(*mixed.shape[:-2], -1))

    def _check_input(self, x: jax.Array, mask: jax.Array | None) -> None:
        name = type(self).__name__
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{name}: expected x of shape (B, L, {self.d_model}), got {x.shape}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"{name}: mask must be (B, L) = {x.shape[:2]}, got {mask.shape}")

    # Subclasses: codes / assignments for the keys, the codebook the attention sees, and their losses.
    # `update` is True when the call will sow its losses (a training step that moves the codebook).
    def _quantize(self, k: jax.Array, mask: jax.Array | None = None, update: bool = False
                  ) -> dict[str, jax.Array]:
        raise NotImplementedError

    def _sow_losses(self, k: jax.Array, quantized: dict[str, jax.Array], mask: jax.Array | None) -> None:
        pass

    def _sow_metrics(self, k: jax.Array, codes: jax.Array, reconstruction: jax.Array,
                     mask: jax.Array | None) -> None:
        k, reconstruction = sg(k), sg(reconstruction)
        usage = vq_ops.code_usage(codes, self.codebook_size, mask)
        entropy = vq_ops.code_entropy(usage)
        self.sow(METRICS, "code_usage", jnp.mean(jnp.exp(entropy)) / self.codebook_size)
        self.sow(METRICS, "code_entropy", jnp.mean(entropy))
        self.sow(METRICS, "dead_code_fraction", jnp.mean(vq_ops.dead_code_fraction(usage)))
        self.sow(METRICS, "quantization_error", vq_ops.relative_quantization_error(k, reconstruction, mask))

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
                 ) -> jax.Array:
        self._check_input(x, mask)
        q, k, v, g = self._project(x)
        # Initialisation creates parameters only: nothing is sown and no codebook update is prepared then.
        sow = not self.is_initializing()
        quantized = self._quantize(k, mask, update=sow and self.is_mutable_collection(LOSSES))
        attn = vqa.vq_attention(
            q, v, quantized["attention_codebook"], quantized["assignments"], block_len=self.block_len,
            quantized_keys=quantized.get("quantized_keys"), bias=self.bias, mask=mask,
            causal=not self.bidirectional, formulation=self.formulation,
            grad_through_cache=self.grad_through_cache)
        if sow and self.is_mutable_collection(LOSSES):
            self._sow_losses(k, quantized, mask)
        if sow and self.is_mutable_collection(METRICS):
            self._sow_metrics(k, quantized["codes"], quantized["reconstruction"], mask)
        return self._output(attn, g).astype(x.dtype)

    def init_state(self, batch_size: int) -> vqa.VQDecodeState:
        self._check_causal_for_decoding()
        dtype = jnp.promote_types(self.dtype, jnp.float32)
        return vqa.init_decode_state(batch_size, self.num_heads, self.key_dim, self.head_value_dim,
                                     self.codebook_size, self.block_len, dtype)

    def step(self, state: vqa.VQDecodeState, x_t: jax.Array) -> tuple[vqa.VQDecodeState, jax.Array]:
        self._check_causal_for_decoding()
        if x_t.ndim != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__}: step expects x_t of shape (B, {self.d_model}), "
                             f"got {x_t.shape}")
        q, k, v, g = (y[:, 0] for y in self._project(x_t[:, None]))
        quantized = self._quantize(k)
        keys = quantized.get("quantized_keys")
        state, attn = vqa.decode_step(state, q, v, quantized["assignments"], quantized["attention_codebook"],
                                      quantized_key_t=keys, bias=self.bias)
        return state, self._output(attn, g).astype(x_t.dtype)

    def prefill(self, x: jax.Array) -> tuple[vqa.VQDecodeState, jax.Array]:
        """The parallel call on a prompt (B, P, D) and its decoding state from the same projections
        (docs/methods.md section 18). With n the block of the last prompt token (P - 1) // C: the per-code cache
        holds the counts and mean values of blocks <= n - 2 (positions < (n - 1) C), the 2C-slot buffer holds
        blocks n - 1 and n (the quantised keys, or zeros for soft VQ, the values and the assignments; zeros
        before position 0 and from P on), and the position is P: the state `step` reaches after P tokens."""
        self._check_causal_for_decoding()
        self._check_input(x, None)
        state = self.init_state(x.shape[0])
        length, block = x.shape[1], self.block_len
        q, k, v, _ = self._project(x)
        quantized = self._quantize(k)
        keys = quantized.get("quantized_keys")
        keys = jnp.zeros_like(q) if keys is None else keys
        dtype = state.means.dtype
        assignments = quantized["assignments"].astype(dtype)
        last_block = (length - 1) // block
        cached = max(last_block - 1, 0) * block  # positions in the per-code cache
        counts = jnp.sum(assignments[:, :cached], axis=1)  # (B, H, S)
        sums = jnp.einsum("blhs,blhv->bhsv", assignments[:, :cached], v[:, :cached].astype(dtype))
        means = sums / jnp.where(counts > 0, counts, 1.0)[..., None]

        def buffer(values: jax.Array) -> jax.Array:  # positions (n - 1) C .. (n + 1) C - 1 -> slots 0 .. 2C - 1
            padded = jnp.pad(values, [(0, 0), (block, (last_block + 1) * block - length), (0, 0), (0, 0)])
            return padded[:, last_block * block:(last_block + 2) * block].astype(dtype)

        state = vqa.VQDecodeState(counts, means, buffer(keys), buffer(v), buffer(assignments),
                                  jnp.full_like(state.position, length))
        return state, self(x)


# Transformer-VQ's enwik8 run (its scripts/lm_enwik8.sh and config_enwik8.py; docs/anchors.md): 24 "layers" of
# two single-head GAU-style VQ attention sublayers each (48 of this encoder's blocks), d_model 768, d_k 128,
# d_v 1536 (expansion 2), 512 codes, blocks of 512, AdamW lr 4e-4 with weight decay 2e-4, global-norm clip 0.1,
# 10k warmup steps of 125k, batch 128 of 2,048-token updates; the paper reports 0.99 bpb on enwik8. Assumed
# here: the official run reads 8,192-token sequences in four 2,048-token updates carrying its cache; this
# trainer trains on independent 2,048-byte windows. Its residual dropout 0.5 maps to config.model.dropout (its
# layer drop 0.3 and position-embedding dropout 0.2 have no counterpart here); the encoder keeps its GLU after
# each mixer where the official blocks have none (d_ff=0).
TRANSFORMER_VQ_ENWIK8 = Recipe(
    model=dict(n_layers=48, d_model=768, dropout=0.5, bidirectional=False, norm="layer", residual="prenorm"),
    options=dict(num_heads=1, key_dim=128, expansion=2.0, codebook_size=512, block_len=512, quantizer="ema",
                 commitment_weight=1e-4, ema_decay=0.99),
    optim=dict(lr=4e-4, ssm_lr=4e-4, weight_decay=2e-4, clip_norm=0.1), batch_size=128, num_steps=125_000,
    warmup_fraction=10_000 / 125_000, data=dict(source="files", seq_len=2048, lm=dict(format="enwik8")),
    source="Transformer-VQ scripts/lm_enwik8.sh (0.99 bpb on enwik8)")


# Codebook health of the EMA quantisers in the configs: codebook_init "random" (Transformer-VQ), "keys" or "kmeans"
# (from the first training batch's keys); dead_code_threshold > 0 restarts codes whose EMA count falls below that
# share of the mean count at random current keys.
@register_mixer(
    "vq", param_groups=(DEFAULT, NO_DECAY, CODEBOOK),
    config_options=dict(num_heads=1, key_dim=32, codebook_size=64, block_len=32, quantizer="ema",
                        commitment_weight=1e-4, ema_decay=0.99, codebook_init="random", kmeans_iters=10,
                        dead_code_threshold=0.0),
    recipes=transformer_recipes(with_position=False) | {"lm": TRANSFORMER_VQ_ENWIK8},
    memory=ActivationModel(per_token=lambda o, d: 31 * d + 8 * ActivationModel.number(o, "num_heads", 1)
                           * ActivationModel.number(o, "codebook_size", 64)))
class VQAttentionMixer(_VQMixerBase):
    """Transformer-VQ attention with a hard codebook; see the module docstring for options and sown values.

    Attributes (besides those of the base):
      quantizer: "ema" (default), "rotation" or "simvq".
      commitment_weight: beta of the commitment loss (Transformer-VQ: 1e-4).
      ema_decay: gamma of the EMA codebook (0.99).
      simvq_codebook_weight: weight of the SimVQ codebook loss.
      codebook_init: EMA quantisers only. "random" (Transformer-VQ: normal codes, count 1); "keys": at the
        first update, the codes become distinct real keys of that batch drawn uniformly; "kmeans": at the first
        update, k-means++ seeding then `kmeans_iters` Lloyd iterations on that batch's real keys (per head).
        Data-initialised codes get count 1, as random ones; the first update's EMA step then applies.
      kmeans_iters: Lloyd iterations of codebook_init="kmeans".
      dead_code_threshold: EMA quantisers only. 0 = no restarts (Transformer-VQ). Otherwise, at every update a
        code whose EMA count (after the EMA step) is below this share of the head's mean count is moved to a
        random real key of the batch, with that count (ops.vq.restart_dead_codes).

    Data initialisation and restarts are functional: they are part of the EMA targets that the surrogate's
    SGD(1) step writes into c_sum / c_count. Their state is two more "codebook"-group parameters (so it is
    checkpointed and resumes bitwise): `codebook_updates`, the number of updates applied (0 = the data
    initialisation is still pending; incremented by the same surrogate), and `codebook_seed`, an integer
    drawn at init from the "params" RNG; the random draws of an update use key(seed) folded with the update
    number, so they are deterministic and independent of the devices the batch is split over.
    """

    quantizer: Quantizer = Quantizer.EMA
    commitment_weight: float = 1e-4
    ema_decay: float = 0.99
    simvq_codebook_weight: float = 1.0
    codebook_init: CodebookInit = CodebookInit.RANDOM
    kmeans_iters: int = 10
    dead_code_threshold: float = 0.0

    @property
    def _has_codebook_state(self) -> bool:
        return self.codebook_init != "random" or self.dead_code_threshold > 0

    def setup(self) -> None:
        self._check_options()
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"VQAttentionMixer: unknown quantizer {self.quantizer!r}; expected one of "
                             f"{QUANTIZERS}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"VQAttentionMixer: ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.codebook_init not in CODEBOOK_INITS:
            raise ValueError(f"VQAttentionMixer: unknown codebook_init {self.codebook_init!r}; expected one of "
                             f"{CODEBOOK_INITS}")
        if not 0.0 <= self.dead_code_threshold <= 1.0:
            raise ValueError(f"VQAttentionMixer: dead_code_threshold must be in [0, 1] (a share of the mean "
                             f"code count; 0 = no restarts), got {self.dead_code_threshold}")
        if self.kmeans_iters < 0:
            raise ValueError(f"VQAttentionMixer: kmeans_iters must be >= 0, got {self.kmeans_iters}")
        if self.quantizer == "simvq" and self._has_codebook_state:
            raise ValueError("VQAttentionMixer: codebook_init and dead_code_threshold apply to the EMA codebook "
                             "(quantizer 'ema' or 'rotation'), not to 'simvq'")
        self._setup_common()
        h, s, k = self.num_heads, self.codebook_size, self.key_dim
        # Normalised keys have components of scale K^(-1/4); codes start at the same scale.
        code_init = _scaled_normal(k**-0.25)
        if self.quantizer == "simvq":
            self.frozen_codes = self.param("frozen_codes", grouped(code_init, CODEBOOK), (h, s, k),
                                           self.param_dtype)
            eye = lambda key, shape, dtype: jnp.broadcast_to(jnp.eye(k, dtype=dtype), shape)  # noqa: E731
            self.code_projection = self.param("code_projection", grouped(eye, NO_DECAY), (h, k, k),
                                              self.param_dtype)
        else:
            self.c_sum = self.param("c_sum", grouped(code_init, CODEBOOK), (h, s, k), self.param_dtype)
            self.c_count = self.param("c_count", grouped(nn.initializers.ones, CODEBOOK), (h, s),
                                      self.param_dtype)
        if self._has_codebook_state:
            # Integer-valued float32 scalars (exact below 2^24), set only through the SGD(1) surrogate.
            seed_init = lambda key, shape: jax.random.randint(key, shape, 0, 2**24).astype(jnp.float32)  # noqa: E731
            self.codebook_updates = self.param("codebook_updates", grouped(nn.initializers.zeros, CODEBOOK), (),
                                               jnp.float32)
            self.codebook_seed = self.param("codebook_seed", grouped(seed_init, CODEBOOK), ())

    def codebook(self) -> jax.Array:
        """The codebook (H, S, K); differentiable in W for SimVQ, stop-gradiented for the EMA quantisers."""
        if self.quantizer == "simvq":
            return vq_ops.simvq_codebook(self.frozen_codes, self.code_projection)
        return vq_ops.codebook_from_ema(self.c_sum, self.c_count)

    def _update_key(self, purpose: int) -> jax.Array:
        """The PRNG key of this update: key(seed) folded with the update number and the purpose."""
        key = jax.random.key(sg(self.codebook_seed).astype(jnp.uint32))
        return jax.random.fold_in(jax.random.fold_in(key, sg(self.codebook_updates).astype(jnp.uint32)), purpose)

    def _data_codebook(self, k: jax.Array, mask: jax.Array | None) -> jax.Array:
        """Codebook (H, S, K) from the real keys k (B, L, H, K) of this batch (codebook_init "keys"/"kmeans")."""
        h, s, width = self.num_heads, self.codebook_size, self.key_dim
        vectors = sg(k).reshape(-1, h, width).astype(self.c_sum.dtype)
        flat_mask = None if mask is None else mask.reshape(-1)
        key = self._update_key(0)
        if self.codebook_init == "keys":
            weights = jnp.ones(vectors.shape[:1]) if flat_mask is None else flat_mask.astype(jnp.float32)
            return jnp.swapaxes(vectors[vq_ops.sample_vectors(key, weights, s)], 0, 1)
        run = lambda x, key: vq_ops.kmeans(x, s, key, num_iters=self.kmeans_iters, mask=flat_mask,  # noqa: E731
                                           init="kmeans++")
        return jax.vmap(run, in_axes=(1, 0))(vectors, jax.random.split(key, h))

    def _ema_statistics(self, k: jax.Array, mask: jax.Array | None, update: bool) -> tuple[jax.Array, jax.Array]:
        """(c_sum, c_count) this call quantises with: the stored ones, or at the first update (while
        codebook_updates == 0 and the batch has a real token) the data initialisation (codes, count 1)."""
        if not update or self.codebook_init == "random":
            return self.c_sum, self.c_count
        has_real = jnp.asarray(True) if mask is None else jnp.any(mask)
        pending = (sg(self.codebook_updates) == 0) & has_real
        return jax.lax.cond(pending, lambda: (self._data_codebook(k, mask), jnp.ones_like(self.c_count)),
                            lambda: (sg(self.c_sum), sg(self.c_count)))

    def _quantize(self, k: jax.Array, mask: jax.Array | None = None, update: bool = False
                  ) -> dict[str, jax.Array]:
        ema = None
        if self.quantizer == "simvq":
            codebook = self.codebook()
        else:
            ema = self._ema_statistics(k, mask, update)
            codebook = vq_ops.codebook_from_ema(*ema)
        fixed = sg(codebook)
        codes, _ = vq_ops.nearest_code(k, fixed)
        nearest = vq_ops.gather_codes(codes, fixed)
        if self.quantizer == "rotation":
            k_hat = vq_ops.rotation_trick(k, nearest)
        else:
            k_hat = vq_ops.straight_through(k, nearest)
        out = dict(codes=codes, reconstruction=nearest, quantized_keys=k_hat, attention_codebook=fixed,
                   assignments=jax.nn.one_hot(codes, self.codebook_size, dtype=k.dtype), codebook=codebook)
        if ema is not None:
            out["ema_statistics"] = ema
        return out

    def _sow_losses(self, k: jax.Array, quantized: dict[str, jax.Array], mask: jax.Array | None) -> None:
        codes = quantized["codes"]
        self.sow(LOSSES, "vq_commit",
                 self.commitment_weight * vq_ops.commitment_loss(k, quantized["reconstruction"], mask))
        if self.quantizer == "simvq":
            trainable = vq_ops.gather_codes(codes, quantized["codebook"])
            self.sow(LOSSES, "vq_codebook",
                     self.simvq_codebook_weight * vq_ops.codebook_loss(k, trainable, mask))
        else:
            c_sum, c_count = quantized["ema_statistics"]
            targets = vq_ops.ema_targets(k, codes, c_sum, c_count, self.ema_decay, mask)
            params, target_values = [self.c_sum, self.c_count], list(targets)
            if self.dead_code_threshold > 0:
                *restarted, dead = vq_ops.restart_dead_codes(*targets, k, self._update_key(1),
                                                             self.dead_code_threshold, mask)
                target_values = restarted
                if self.is_mutable_collection(METRICS):
                    self.sow(METRICS, "restarted_code_fraction", jnp.mean(dead.astype(jnp.float32)))
            if self._has_codebook_state:
                params.append(self.codebook_updates)
                target_values.append(sg(self.codebook_updates) + 1.0)
            self.sow(LOSSES, "vq_codebook", vq_ops.assign_surrogate_loss(params, target_values))


@register_mixer(
    "vq_soft", param_groups=(DEFAULT, NO_DECAY, CODEBOOK),
    config_options=dict(num_heads=1, key_dim=32, codebook_size=64, block_len=32, temperature=1.0),
    recipes=transformer_recipes(with_position=False),
    memory=ActivationModel(per_token=lambda o, d: 31 * d + 19 * ActivationModel.number(o, "num_heads", 1)
                           * ActivationModel.number(o, "codebook_size", 64)))
class SoftVQAttentionMixer(_VQMixerBase):
    """Soft VQ attention (Performer as a soft Transformer-VQ, docs/methods.md section 6).

    Attributes (besides those of the base):
      temperature: tau of p(s | k) = softmax_s(-||k - c_s||^2 / tau).
      learn_codebook: train the codebook by backpropagation (True) or keep it frozen at its random init.
    """

    temperature: float = 1.0
    learn_codebook: bool = True

    def setup(self) -> None:
        self._check_options()
        if self.temperature <= 0:
            raise ValueError(f"SoftVQAttentionMixer: temperature must be positive, got {self.temperature}")
        self._setup_common()
        group = NO_DECAY if self.learn_codebook else CODEBOOK
        self.codes = self.param("codes", grouped(_scaled_normal(self.key_dim**-0.25), group),
                                (self.num_heads, self.codebook_size, self.key_dim), self.param_dtype)

    def _quantize(self, k: jax.Array, mask: jax.Array | None = None, update: bool = False
                  ) -> dict[str, jax.Array]:
        codebook = self.codes if self.learn_codebook else sg(self.codes)
        assignments = vq_ops.soft_assignments(k, codebook.astype(k.dtype), self.temperature)
        return dict(codes=jnp.argmax(assignments, axis=-1), assignments=assignments,
                    attention_codebook=codebook,
                    reconstruction=jnp.einsum("...hs,hsk->...hk", assignments, codebook))
