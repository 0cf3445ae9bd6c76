"""The LRU mixer (registered as "lru"): parameters and wiring; the math is in ops/lru.py."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from models.param_groups import DEFAULT, NO_DECAY, SSM, grouped
from models.registry import ActivationModel, Recipe, SequenceMixer, register_mixer
from ops import lru as lru_ops
from ops.scan import ScanMethod


def _normal(stddev: float):
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return stddev * jax.random.normal(key, shape, dtype)

    return init


# docs/anchors.md section 3: LRU paper Table 9 (6 layers, pre-norm BatchNorm, AdamW wd 0.05, 10% warmup + cosine).
#  task: (H, N, steps, batch, lr_factor, dropout, r_min, r_max, max_phase, bidirectional)
LRU_ANCHORS = {
    "image": (512, 384, 180_000, 50, 0.25, 0.1, 0.9, 0.999, 2 * math.pi, False),
    "listops": (128, 256, 80_000, 32, 0.5, 0.0, 0.0, 0.99, 2 * math.pi, False),
    "text": (256, 192, 50_000, 32, 0.1, 0.1, 0.5, 0.9, 2 * math.pi, False),
    "retrieval": (128, 256, 100_000, 64, 0.5, 0.1, 0.5, 0.9, 2 * math.pi, False),
    "pathfinder": (192, 256, 500_000, 64, 0.25, 0.0, 0.9, 0.999, 2 * math.pi, True),
    "pathx": (128, 256, 250_000, 32, 0.25, 0.0, 0.999, 0.9999, math.pi / 10, True),
}
LRU_BASE_LR = 1e-3  # assumed: Table 9 gives the factor for the recurrence parameters, not this base rate


def _lru_recipe(h, n, steps, batch, factor, dropout, r_min, r_max, phase, bidirectional) -> Recipe:
    return Recipe(model=dict(n_layers=6, d_model=h, dropout=dropout, bidirectional=bidirectional, norm="batch",
                             residual="prenorm"),
                  options=dict(d_state=n, r_min=r_min, r_max=r_max, max_phase=phase),
                  optim=dict(lr=LRU_BASE_LR, ssm_lr=LRU_BASE_LR * factor, weight_decay=0.05), batch_size=batch,
                  num_steps=steps, source="docs/anchors.md section 3 (LRU paper, Table 9)")


def _check_lru(values, context, ok):
    if ok("r_min", "r_max") and values["r_min"] >= values["r_max"]:
        yield "r_min", f"expected r_min < r_max, got r_min={values['r_min']}, r_max={values['r_max']}"


@register_mixer(
    "lru", param_groups=(DEFAULT, NO_DECAY, SSM), check=_check_lru,
    config_options=dict(d_state=64, r_min=0.0, r_max=0.99, max_phase=2 * math.pi), cpu_options=dict(d_state=32),
    recipes={task: _lru_recipe(*row) for task, row in LRU_ANCHORS.items()},
    memory=ActivationModel(per_token=lambda o, d: 9 * d + 8 * ActivationModel.number(o, "d_state", 64)))
class LRUMixer(SequenceMixer):
    """Linear Recurrent Unit, unidirectional (causal) or bidirectional.

    Attributes:
      d_state: N, the number of complex state channels.
      r_min, r_max: the ring |lambda| is initialised on (uniform in r^2); per task: docs/anchors.md section 3.
      max_phase: eigenvalue phases are initialised uniform in [0, max_phase].
      scan_method: method of `ops.scan.linear_recurrence`.
      dtype: dtype of the output (None: the input's), e.g. bfloat16 in a mixed-precision encoder. Whatever it
        is, the layer computes in float32 (complex64 state): inputs are promoted, the projections and the scan
        accumulate in float32, and only the output is cast to dtype. Parameters are float32.

    Parameters (all real; complex ones as separate real and imaginary arrays):
      nu_log, theta_log, gamma_log (N,), B_re, B_im (N, D): the "ssm" optimiser group (lower lr, no weight
      decay), as in the LRU paper; C_re, C_im (D, N), D (D,): default groups. Bidirectional layers run a
      second, reverse recurrence that shares lambda, gamma and B and has its own C (C_re_bwd, C_im_bwd); the
      two outputs are added. Padded positions (mask False) get zero input, so with right padding they never
      reach real positions in either direction.
    """

    d_state: int = 64
    r_min: float = 0.0
    r_max: float = 0.99
    max_phase: float = 2 * math.pi
    scan_method: ScanMethod = ScanMethod.AUTO
    dtype: Any = None

    def setup(self) -> None:
        n, h = self.d_state, self.d_model
        ring = lambda key: lru_ops.ring_init(key, n, self.r_min, self.r_max, self.max_phase)  # noqa: E731
        self.nu_log = self.param("nu_log", grouped(lambda key: ring(key)[0], SSM))
        self.theta_log = self.param("theta_log", grouped(lambda key: ring(key)[1], SSM))
        # Flax gives nu_log and theta_log keys of their own (r and theta are independent anyway); gamma is
        # derived from the sampled eigenvalues, so it always starts at sqrt(1 - |lambda|^2).
        self.gamma_log = self.param(
            "gamma_log", grouped(lambda key: lru_ops.gamma_log_init(self.nu_log, self.theta_log), SSM)
        )
        b_std = 1.0 / math.sqrt(2 * h)
        self.b_re = self.param("B_re", grouped(_normal(b_std), SSM), (n, h))
        self.b_im = self.param("B_im", grouped(_normal(b_std), SSM), (n, h))
        c_std = 1.0 / math.sqrt(n)
        self.c_re = self.param("C_re", _normal(c_std), (h, n))
        self.c_im = self.param("C_im", _normal(c_std), (h, n))
        if self.bidirectional:
            self.c_re_bwd = self.param("C_re_bwd", _normal(c_std), (h, n))
            self.c_im_bwd = self.param("C_im_bwd", _normal(c_std), (h, n))
        self.d = self.param("D", _normal(1.0), (h,))

    def _recurrence_params(self) -> tuple[jax.Array, ...]:
        return self.nu_log, self.theta_log, self.gamma_log, self.b_re, self.b_im

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
                 ) -> jax.Array:
        out_dtype = x.dtype if self.dtype is None else self.dtype
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if mask is not None:
            x = x * mask[..., None].astype(x.dtype)
        y, _ = lru_ops.lru(x, *self._recurrence_params(), self.c_re, self.c_im, self.d,
                           method=self.scan_method)
        if self.bidirectional:
            zero_d = jnp.zeros_like(self.d)  # D u is counted once, in the forward half
            y_bwd, _ = lru_ops.lru(x, *self._recurrence_params(), self.c_re_bwd, self.c_im_bwd, zero_d,
                                   reverse=True, method=self.scan_method)
            y = y + y_bwd
        return y.astype(out_dtype)

    def init_state(self, batch_size: int) -> jax.Array:
        self._check_causal_for_decoding()
        return jnp.zeros((batch_size, self.d_state), jnp.result_type(self.nu_log.dtype, jnp.complex64))

    def prefill(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The parallel call on a prompt (B, P, D) and its decoding state: the last state h_{P-1} (B, N) of the
        same linear-recurrence scan (docs/methods.md section 18)."""
        self._check_causal_for_decoding()
        out_dtype = x.dtype if self.dtype is None else self.dtype
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        y, state = lru_ops.lru(x, *self._recurrence_params(), self.c_re, self.c_im, self.d,
                               method=self.scan_method)
        return state, y.astype(out_dtype)

    def step(self, state: jax.Array, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._check_causal_for_decoding()
        out_dtype = x_t.dtype if self.dtype is None else self.dtype
        x_t = x_t.astype(jnp.promote_types(x_t.dtype, jnp.float32))
        state, y_t = lru_ops.lru_step(state, x_t, *self._recurrence_params(), self.c_re, self.c_im, self.d)
        return state, y_t.astype(out_dtype)
