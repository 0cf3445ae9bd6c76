"""Linear-attention mixers (registered as "linear" and "performer") on the multi-head base of models/attention.py.

See models/attention.py for the options every attention mixer shares; the math is in ops/linear_attention.py and
ops/performer.py.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from models.attention import _GROUPS, _MultiHeadMixer, _number, check_attention, transformer_recipes
from models.registry import ActivationModel, register_mixer
from ops import linear_attention as linear_ops
from ops import performer as performer_ops
from ops.linear_attention import CausalMethod, FeatureMapName
from ops.performer import Kernel, OrthogonalScaling

# Performer's random projections live in this non-trainable collection (never in "params").
PERFORMER_COLLECTION = "constants"
PERFORMER_PROJECTION = "favor_projection"


def _check_linear(values, context, ok):
    yield from check_attention(values, context, ok)
    if values.get("logn_scaling"):
        yield "logn_scaling", "linear attention has no softmax scores to scale; set it to False"


@register_mixer(
    "linear", param_groups=_GROUPS, check=_check_linear,
    config_options=dict(num_heads=4, feature_map="elu", chunk_size=64, position="none"),
    recipes=transformer_recipes(), memory=ActivationModel(per_token=lambda o, d: 21 * d))
class LinearAttention(_MultiHeadMixer):
    """Kernelised linear attention phi(q) (phi(k)^T v) / phi(q) . sum phi(k) (ops/linear_attention.py).

    Attributes:
      feature_map: "elu" (elu + 1) or "relu".
      method, chunk_size: causal evaluation ("chunked" or "prefix").
      eps: the normaliser's floor (ops/linear_attention.py).
    Positions: none, rope, rope_bias (RoPE is applied to q and k before the feature map). State for `step`:
    {"kv_sum" (B, H, Kh, Kh), "key_sum" (B, H, Kh), "index"}: constant size.
    """

    feature_map: FeatureMapName = FeatureMapName.ELU
    method: CausalMethod = CausalMethod.CHUNKED
    chunk_size: int = 64
    eps: float = linear_ops.DEFAULT_EPS

    def setup(self) -> None:
        if self.feature_map not in linear_ops.FEATURE_MAPS:
            raise ValueError(
                f"LinearAttention: unknown feature_map {self.feature_map!r}; expected one of "
                f"{sorted(linear_ops.FEATURE_MAPS)}"
            )
        if self.logn_scaling:
            raise ValueError("LinearAttention: logn_scaling scales softmax scores; linear attention has none")
        self._setup_projections()

    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        self._check_input(x, mask)
        q, k, v = self._project(x)
        positions = jnp.arange(x.shape[1])
        q, k = self._position_qk(q, k, positions, positions)
        y = linear_ops.linear_attention(
            q,
            k,
            v,
            feature_map=self.feature_map,
            mask=mask,
            causal=self.causal,
            method=self.method,
            chunk_size=self.chunk_size,
            eps=self.eps,
        )
        return self._output(y, x.dtype)

    def init_state(self, batch_size: int) -> dict[str, Any]:
        self._check_causal_for_decoding()
        head_dim = self.d_model // self.num_heads
        inner = linear_ops.linear_attention_init_state(
            batch_size, self.num_heads, head_dim, head_dim, jnp.promote_types(self.dtype, jnp.float32)
        )
        return {"kv_sum": inner.kv_sum, "key_sum": inner.key_sum, "index": jnp.zeros((), jnp.int32)}

    def step(self, state: dict[str, Any], x_t: jax.Array) -> tuple[dict[str, Any], jax.Array]:
        self._check_causal_for_decoding()
        self._check_step_input(x_t)
        q, k, v = self._project(x_t[:, None])
        index = state["index"]
        q, k = self._position_qk(q, k, index[None], index[None])
        feature_map = linear_ops.FEATURE_MAPS[self.feature_map]
        inner = linear_ops.LinearAttentionState(state["kv_sum"], state["key_sum"])
        inner, y = linear_ops.linear_attention_step(
            inner, feature_map(q[:, 0]), feature_map(k[:, 0]), v[:, 0], eps=self.eps
        )
        new_state = {"kv_sum": inner.kv_sum, "key_sum": inner.key_sum, "index": index + 1}
        return new_state, self._output(y[:, None], x_t.dtype)[:, 0]

    def prefill(self, x: jax.Array) -> tuple[dict[str, Any], jax.Array]:
        """The parallel call on a prompt (B, P, D) and its decoding state: the running sums over the whole
        prompt, sum_t phi(k_t) v_t^T and sum_t phi(k_t), in one contraction (docs/methods.md section 18)."""
        self._check_causal_for_decoding()
        self._check_input(x, None)
        state = self.init_state(x.shape[0])
        _, k, v = self._project(x)
        positions = jnp.arange(x.shape[1])
        _, k = self._position_qk(k, k, positions, positions)
        dtype = state["kv_sum"].dtype
        phi_k = linear_ops.FEATURE_MAPS[self.feature_map](k, is_query=False).astype(dtype)
        state = {"kv_sum": jnp.einsum("blhf,blhv->bhfv", phi_k, v.astype(dtype)),
                 "key_sum": jnp.sum(phi_k, axis=1), "index": jnp.full_like(state["index"], x.shape[1])}
        return state, self(x)


@register_mixer(
    "performer", param_groups=_GROUPS, check=check_attention,
    config_options=dict(num_heads=4, num_features=64, kernel="softmax", chunk_size=64, position="none"),
    recipes=transformer_recipes(),
    memory=ActivationModel(per_token=lambda o, d: 16 * d + 7 * _number(o, "num_heads", 4)
                           * _number(o, "num_features", 256)))
class PerformerAttention(_MultiHeadMixer):
    """FAVOR+ attention (ops/performer.py): an unbiased random-feature estimate of softmax attention.

    Attributes:
      num_features: F random features per head (one projection (F, Kh) shared by the heads of the layer).
      kernel: "softmax" (positive random features) or "relu".
      orthogonal_scaling: "chi", "sqrt_dim" or "iid" (see ops.performer.gaussian_orthogonal_matrix).
      method, chunk_size: causal evaluation, as in LinearAttention.

    The projection is drawn once at init from the "params" rng and stored as the non-trainable variable
    `favor_projection` in the collection PERFORMER_COLLECTION ("constants"): pass that collection to
    `apply` (it is not in "params", so the optimiser never sees it). Redraw it explicitly with a key:
    `mixer.apply(variables, key, method="redraw_features", mutable=[PERFORMER_COLLECTION])` for one module, or
    `redraw_performer_features(variables[PERFORMER_COLLECTION], key)` for a whole model.
    Decoding state: {"kv_sum", "key_sum", "key_max", "index"} (ops.performer.FavorState; constant size).
    """

    num_features: int = 256
    kernel: Kernel = Kernel.SOFTMAX
    orthogonal_scaling: OrthogonalScaling = OrthogonalScaling.CHI
    method: CausalMethod = CausalMethod.CHUNKED
    chunk_size: int = 64
    eps: float = performer_ops.DEFAULT_EPS

    def setup(self) -> None:
        if self.kernel not in performer_ops.KERNELS:
            raise ValueError(
                f"PerformerAttention: unknown kernel {self.kernel!r}; expected one of {performer_ops.KERNELS}"
            )
        if self.orthogonal_scaling not in performer_ops.ORTHOGONAL_SCALINGS:
            raise ValueError(
                f"PerformerAttention: unknown orthogonal_scaling {self.orthogonal_scaling!r}; expected "
                f"one of {performer_ops.ORTHOGONAL_SCALINGS}"
            )
        if self.num_features < 1:
            raise ValueError(f"PerformerAttention: num_features must be >= 1, got {self.num_features}")
        self._setup_projections()
        if not self.is_initializing() and not self.has_variable(PERFORMER_COLLECTION, PERFORMER_PROJECTION):
            raise ValueError(
                f"PerformerAttention: the random projection is missing; pass the "
                f"{PERFORMER_COLLECTION!r} collection from init to apply (variables = "
                f"{{'params': ..., {PERFORMER_COLLECTION!r}: ...}})"
            )
        self.projection = self.variable(
            PERFORMER_COLLECTION,
            PERFORMER_PROJECTION,
            self._draw_projection,
            self.make_rng("params") if self.is_initializing() else None,
        )

    def _draw_projection(self, key: jax.Array) -> jax.Array:
        return performer_ops.gaussian_orthogonal_matrix(
            key, self.num_features, self.head_dim, scaling=self.orthogonal_scaling, dtype=self.param_dtype
        )

    def redraw_features(self, key: jax.Array) -> None:
        """Replaces the projection by a fresh draw from `key` (apply with mutable=[PERFORMER_COLLECTION])."""
        self.projection.value = self._draw_projection(key)

    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        self._check_input(x, mask)
        length = x.shape[1]
        q, k, v = self._project(x)
        positions = jnp.arange(length)
        q, k = self._position_qk(q, k, positions, positions)
        q = self._logn_query_scale(q, self._num_keys(length, mask))
        y = performer_ops.favor_attention(
            q,
            k,
            v,
            self.projection.value,
            kernel=self.kernel,
            mask=mask,
            causal=self.causal,
            method=self.method,
            chunk_size=self.chunk_size,
            eps=self.eps,
        )
        return self._output(y, x.dtype)

    def init_state(self, batch_size: int) -> dict[str, Any]:
        self._check_causal_for_decoding()
        head_dim = self.d_model // self.num_heads
        inner = performer_ops.favor_init_state(
            batch_size,
            self.num_heads,
            self.num_features,
            head_dim,
            jnp.promote_types(self.dtype, jnp.float32),
        )
        return {**inner._asdict(), "index": jnp.zeros((), jnp.int32)}

    def step(self, state: dict[str, Any], x_t: jax.Array) -> tuple[dict[str, Any], jax.Array]:
        self._check_causal_for_decoding()
        self._check_step_input(x_t)
        q, k, v = self._project(x_t[:, None])
        index = state["index"]
        q, k = self._position_qk(q, k, index[None], index[None])
        q = self._logn_query_scale(q, index + 1)
        inner = performer_ops.FavorState(state["kv_sum"], state["key_sum"], state["key_max"])
        inner, y = performer_ops.favor_step(
            inner, q[:, 0], k[:, 0], v[:, 0], self.projection.value, kernel=self.kernel, eps=self.eps
        )
        return {**inner._asdict(), "index": index + 1}, self._output(y[:, None], x_t.dtype)[:, 0]

    def prefill(self, x: jax.Array) -> tuple[dict[str, Any], jax.Array]:
        """The parallel call on a prompt (B, P, D) and its decoding state in one pass (docs/methods.md section 18):
        softmax kernel: key_max = the maximum of each key log-feature over the prompt, and the sums
        sum_t exp(l_t - key_max) v_t^T, sum_t exp(l_t - key_max) (the stabilised sums `step` keeps); ReLU
        kernel: the plain sums of the features, key_max 0."""
        self._check_causal_for_decoding()
        self._check_input(x, None)
        state = self.init_state(x.shape[0])
        _, k, v = self._project(x)
        positions = jnp.arange(x.shape[1])
        _, k = self._position_qk(k, k, positions, positions)
        dtype = state["kv_sum"].dtype
        if self.kernel == Kernel.RELU:
            weights = performer_ops.relu_kernel_features(k, self.projection.value).astype(dtype)
            key_max = jnp.zeros_like(state["key_max"])
        else:
            log_k = performer_ops.softmax_log_features(k, self.projection.value).astype(dtype)  # (B, P, H, F)
            key_max = jax.lax.stop_gradient(jnp.max(log_k, axis=1))
            weights = jnp.exp(log_k - key_max[:, None])
        state = {"kv_sum": jnp.einsum("blhf,blhv->bhfv", weights, v.astype(dtype)),
                 "key_sum": jnp.sum(weights, axis=1), "key_max": key_max,
                 "index": jnp.full_like(state["index"], x.shape[1])}
        return state, self(x)


def redraw_performer_features(constants: Any, key: jax.Array, *, orthogonal_scaling: str = "chi") -> Any:
    """Every Performer projection in a model's PERFORMER_COLLECTION tree, redrawn from `key`.

    The i-th projection (in the tree's flattening order) is drawn with jax.random.fold_in(key, i) at its
    current shape and dtype; other leaves are returned unchanged. Pure: returns a new tree.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(constants)
    redrawn, count = [], 0
    for path, leaf in leaves:
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        if name == PERFORMER_PROJECTION:
            features, head_dim = leaf.shape
            leaf = performer_ops.gaussian_orthogonal_matrix(
                jax.random.fold_in(key, count),
                features,
                head_dim,
                scaling=orthogonal_scaling,
                dtype=leaf.dtype,
            )
            count += 1
        redrawn.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, redrawn)
