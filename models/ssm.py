"""State-space mixers "s4", "s4d" and "s5": parameters and wiring; the math is in ops/ssm.py and ops/hippo.py.

Each mixer returns the linear SSM output y = SSM(u) + D * u with u = x (B, L, D) (the encoder block adds
the norm, nonlinearity/GLU, dropout and residual). S4 and S4D run D = d_model independent SISO systems
(one per channel); S5 runs one MIMO system with P states across all channels.

Parameters are real arrays (complex ones as separate real and imaginary parts). The state-space
parameters (eigenvalues, step sizes, B, and S4's low-rank P) are marked with the "ssm" optimiser group
(lower lr, no weight decay, docs/anchors.md section 3); C stays in the default group and D, a vector, in "no_decay".

Mixed precision: every mixer has a `dtype` option, the dtype of its output (None: the input's), e.g. bfloat16
in a mixed-precision encoder. Whatever it is, the mixers compute in float32 (complex64): inputs are promoted,
kernels, FFT convolutions (ops.ssm) and scans (ops.scan) accumulate in float32, and only the output is cast.
Parameters are float32.

Padding: positions with mask False get zero input, so with right padding they never reach real positions,
in either direction. Bidirectional layers share the eigenvalues, step sizes and B between the two directions
and have their own output map C (the S4 code and S5 do the same).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.param_groups import DEFAULT, NO_DECAY, SSM, grouped
from models.registry import ActivationModel, Recipe, SequenceMixer, register_mixer
from ops import hippo
from ops import ssm as ssm_ops
from ops.scan import ScanMethod
from ops.ssm import Discretization, S5CInit

Init = Callable[..., jax.Array]


def _constant(value: np.ndarray) -> Init:
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jnp.broadcast_to(jnp.asarray(value, dtype), shape)

    return init


def _normal(stddev: float) -> Init:
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return stddev * jax.random.normal(key, shape, dtype)

    return init


def _log_step_init(dt_min: float, dt_max: float) -> Init:
    """log step ~ U[log dt_min, log dt_max] (docs/anchors.md section 3: [1e-3, 1e-1])."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, math.log(dt_min), math.log(dt_max))

    return init


def _check_step_range(module: str, dt_min: float, dt_max: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"{module}: need 0 < dt_min <= dt_max; got dt_min={dt_min}, dt_max={dt_max}.")


def _check_even_state(module: str, name: str, n: int) -> None:
    if not isinstance(n, int) or n < 2 or n % 2:
        raise ValueError(f"{module}: {name} must be an even int >= 2 (conjugate pairs); got {n!r}.")


def _masked(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return x
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask must be (B, L) = {x.shape[:2]}; got {mask.shape}.")
    return x * mask[..., None].astype(x.dtype)


def _at_least_float32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _complex_dtype(real: jax.Array) -> jnp.dtype:
    return jnp.result_type(real.dtype, jnp.complex64)


# ---- parallel prefill (docs/methods.md section 18): the state after a prompt u_0 .. u_{P-1} of a linear system
# x_t = A x_{t-1} + B u_t from x_{-1} = 0 is x_{P-1} = sum_k A^k B u_{P-1-k}, a contraction of the reversed
# prompt with the "state kernel" A^k B, k < P. No sequential loop over the prompt.


def diagonal_powers(lam_bar: jax.Array, length: int) -> jax.Array:
    """lam_bar^(P-1-t) for t < P = length: (P, ...) of a diagonal lam_bar (...) complex, as exp(k log lam_bar)
    (the exponent 0 gives exactly 1). Row t weighs input t in the final state."""
    exponents = jnp.arange(length - 1, -1, -1, dtype=jnp.finfo(lam_bar.dtype).dtype)
    exponents = exponents.reshape((length,) + (1,) * lam_bar.ndim)
    powers = jnp.exp(exponents * jnp.log(lam_bar))
    return jnp.where(exponents == 0, jnp.ones_like(powers), powers)


def dense_state_kernel(a: jax.Array, b: jax.Array, length: int) -> jax.Array:
    """A^k B for k < length: (..., length, N) of a dense A (..., N, N) and B (..., N), by doubling: the first m
    columns times A^m give the next m, and A^m is squared (ceil(log2 length) rounds). Cost O(N^2 length +
    N^3 log length) per system, log-depth instead of length sequential steps."""
    kernel = b[..., None, :]
    power = a
    while kernel.shape[-2] < length:
        kernel = jnp.concatenate([kernel, jnp.einsum("...ij,...kj->...ki", power, kernel)], axis=-2)
        if kernel.shape[-2] < length:
            power = power @ power
    return kernel[..., :length, :]


def dense_final_state(a: jax.Array, b: jax.Array, u: jax.Array) -> jax.Array:
    """The state x_{P-1} (B, H, N) of x_t = A x_{t-1} + B u_t (x_{-1} = 0) after u (B, P, H): A (H, N, N),
    B (H, N) (one SISO system per channel), from the state kernel (`dense_state_kernel`). O(B P H N) for the
    contraction."""
    kernel = dense_state_kernel(a, b, u.shape[1])  # (H, P, N): k = lag
    return jnp.einsum("bkh,hkn->bhn", u[:, ::-1].astype(kernel.dtype), kernel)


class _SISOConvMixer(SequenceMixer):
    """Shared wiring of the convolutional SISO mixers: kernels (directions, H, L) -> y = K * u + D u."""

    dtype: Any = None

    def _kernels(self, length: int) -> jax.Array:  # (1 or 2, H, L)
        raise NotImplementedError

    def _apply_kernels(self, x: jax.Array, mask: jax.Array | None, d: jax.Array) -> jax.Array:
        u = _masked(_at_least_float32(x), mask)
        kernels = self._kernels(u.shape[1])
        if self.bidirectional:
            y = ssm_ops.fft_bidirectional_conv(u, kernels[0], kernels[1])
        else:
            y = ssm_ops.fft_causal_conv(u, kernels[0])
        return (y + d * u).astype(x.dtype if self.dtype is None else self.dtype)


# docs/anchors.md section 3: S4 (state-spaces/s4 LRA configs; 6 layers, BatchNorm, bidirectional, wd 0.05, SSM lr 1e-3).
#  task: (d_model, N, prenorm, dropout, lr, batch, epochs)
S4_ANCHORS = {
    "listops": (256, 4, False, 0.0, 0.01, 32, 40),
    "text": (256, 4, True, 0.0, 0.01, 16, 32),
    "retrieval": (256, 4, True, 0.0, 0.01, 64, 20),
    "image": (512, 64, False, 0.1, 0.01, 50, 200),
    "pathfinder": (256, 64, True, 0.0, 0.004, 64, 200),
    "pathx": (256, 64, True, 0.0, 0.001, 16, 50),
}


def s4_recipes(state_option: str, *, min_state: int = 0, with_dt: bool = True) -> dict[str, Recipe]:
    """S4's LRA settings per task (S4_ANCHORS), with its state size N set as `state_option` (at least
    `min_state`) and, when `with_dt`, the step range's dt_min (1e-4 on Path-X, else 1e-3). S4D and RTF use
    them too."""
    recipes = {}
    for task, (d_model, n, prenorm, dropout, lr, batch, epochs) in S4_ANCHORS.items():
        options = {state_option: max(n, min_state)}
        if with_dt:
            options["dt_min"] = 1e-4 if task == "pathx" else 1e-3
        recipes[task] = Recipe(
            model=dict(n_layers=6, d_model=d_model, dropout=dropout, bidirectional=True, norm="batch",
                       residual="prenorm" if prenorm else "postnorm"),
            options=options, optim=dict(lr=lr, ssm_lr=1e-3, weight_decay=0.05), batch_size=batch, epochs=epochs,
            source="docs/anchors.md section 3 (state-spaces/s4 LRA configs)")
    return recipes


# docs/anchors.md section 3: S5 official run scripts (bidirectional, pre-norm BatchNorm, ZOH, conjugate symmetry).
#  task: (depth, H, P, J, batch, epochs, ssm_lr, lr, weight_decay, dropout)
S5_ANCHORS = {
    "listops": (8, 128, 16, 8, 50, 40, 1e-3, 3e-3, 0.04, 0.0),
    "text": (6, 256, 192, 12, 50, 35, 1e-3, 4e-3, 0.07, 0.1),
    "retrieval": (6, 128, 256, 16, 32, 20, 1e-3, 2e-3, 0.05, 0.0),
    "image": (6, 512, 384, 3, 50, 250, 1e-3, 4.5e-3, 0.07, 0.1),
    "pathfinder": (6, 192, 256, 8, 64, 200, 9e-4, 4.5e-3, 0.03, 0.05),
    "pathx": (6, 128, 256, 16, 32, 75, 6e-4, 1.8e-3, 0.06, 0.0),
}


def _s5_recipe(task: str, depth, h, p, j, batch, epochs, ssm_lr, lr, wd, dropout) -> Recipe:
    return Recipe(model=dict(n_layers=depth, d_model=h, dropout=dropout, bidirectional=True, norm="batch",
                             residual="prenorm"),
                  options=dict(state_size=p, blocks=j, dt_min=1e-4 if task == "pathx" else 1e-3),
                  optim=dict(lr=lr, ssm_lr=ssm_lr, weight_decay=wd), batch_size=batch, epochs=epochs,
                  warmup_fraction=None, source="docs/anchors.md section 3 (S5 run scripts; warmup one epoch)")


def check_step_range(values, context, ok):
    """0 < dt_min <= dt_max (the step-size options of the state-space mixers)."""
    if ok("dt_min", "dt_max") and values["dt_min"] > values["dt_max"]:
        yield "dt_min", f"expected dt_min <= dt_max, got dt_min={values['dt_min']}, dt_max={values['dt_max']}"


def _check_s4(values, context, ok):
    yield from check_step_range(values, context, ok)
    if ok("d_state") and values["d_state"] % 2:
        yield "d_state", f"expected an even int >= 2 (conjugate pairs), got {values['d_state']}"
    if ok("l_max") and context.length is not None:
        l_max = values["l_max"] or context.length
        if l_max < context.length:
            yield "l_max", (f"{values['l_max']} is shorter than the sequence length {context.length}: the kernel is "
                            "defined up to l_max (0 takes the task's length)")


def _check_s5(values, context, ok):
    yield from check_step_range(values, context, ok)
    if ok("state_size", "blocks"):
        size, blocks = values["state_size"], values["blocks"]
        if size % blocks:
            yield "blocks", f"{blocks} does not divide state_size = {size}"
        elif values.get("conj_sym", True) and (size // blocks) % 2:
            yield "blocks", (f"conj_sym needs an even block size state_size / blocks, got {size} / {blocks} "
                             f"= {size // blocks}")


_SSM_GROUPS = (DEFAULT, NO_DECAY, SSM)
_STEP_RANGE = dict(dt_min=1e-3, dt_max=1e-1)


@register_mixer(
    "s4", param_groups=_SSM_GROUPS, check=_check_s4, config_options=dict(d_state=64, l_max=0, **_STEP_RANGE),
    cpu_options=dict(d_state=32), recipes=s4_recipes("d_state"), memory=ActivationModel(per_token=lambda o, d: 10 * d))
class S4Mixer(_SISOConvMixer):
    """S4 with the DPLR (normal plus low-rank) LegS parameterisation and the bilinear discretisation.

    Attributes:
      d_state: N, the state size of each channel's SISO system (N/2 complex conjugate-pair states stored).
      l_max: L_max, the kernel length. The learned C~ = C_bar (I - A_bar^L_max) is tied to it, so the kernel
        is always computed at L_max and cut to the input length (docs/methods.md section 4, pitfall 1, holds for S4);
        inputs longer than l_max raise ValueError. Set it to the longest sequence of the task.
      dt_min, dt_max: the step size of each channel is initialised log-uniform in [dt_min, dt_max].
      chunk_size: frequencies per chunk of the kernel computation (None: automatic; see ops.ssm.s4_kernel).

    Parameters (per channel, (H, N/2) unless noted): Lambda_log_neg_re, Lambda_im (Lambda = -exp(.) + i .),
    P_re, P_im, B_re, B_im, log_step (H,): "ssm" group, initialised from the NPLR form of LegS
    (ops.hippo.legs_nplr, B_n = sqrt(2n+1)) identically in every channel; C_re, C_im: C~, complex normal
    (E|C~|^2 = 1), default group; C_re_bwd, C_im_bwd for the backward direction; D (H,) ~ N(0, 1).

    Decoding unfolds the conjugate pairs into N complex states and uses the dense discretised system with
    C_bar = C~ (I - A_bar^L_max)^{-1} (ops.ssm.s4_recurrent_system). `init_state` computes that system once,
    O(H N^3 log L_max), and carries it in the state next to the hidden state, so each `step` costs only the
    O(B H N^2) update: the state is {"h": (B, H, N), "A_bar": (H, N, N), "B_bar": (H, N), "C_bar": (H, N)}.
    A state is tied to the parameters it was made with: decode with the variables given to `init_state`.
    """

    d_state: int = 64
    l_max: int = 2048
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    chunk_size: int | None = None

    def setup(self) -> None:
        _check_even_state("S4Mixer", "d_state", self.d_state)
        _check_step_range("S4Mixer", self.dt_min, self.dt_max)
        if not isinstance(self.l_max, int) or self.l_max < 1:
            raise ValueError(f"S4Mixer: l_max must be a positive int; got {self.l_max!r}.")
        h, n2 = self.d_model, self.d_state // 2
        half = hippo.conjugate_half(hippo.legs_nplr(self.d_state))

        def ssm_param(name: str, value: np.ndarray) -> jax.Array:
            return self.param(name, grouped(_constant(value), SSM), (h, n2))

        self.lambda_log_neg_re = ssm_param("Lambda_log_neg_re", np.log(-half.Lambda.real))
        self.lambda_im = ssm_param("Lambda_im", half.Lambda.imag)
        self.p_re = ssm_param("P_re", half.P.real)
        self.p_im = ssm_param("P_im", half.P.imag)
        self.b_re = ssm_param("B_re", half.B.real)
        self.b_im = ssm_param("B_im", half.B.imag)
        self.log_step = self.param("log_step", grouped(_log_step_init(self.dt_min, self.dt_max), SSM), (h,))
        c_std = math.sqrt(0.5)
        directions = ["", "_bwd"] if self.bidirectional else [""]
        self.c_parts = [
            (self.param(f"C_re{suffix}", _normal(c_std), (h, n2)),
             self.param(f"C_im{suffix}", _normal(c_std), (h, n2)))
            for suffix in directions
        ]
        self.d = self.param("D", _normal(1.0), (h,))

    def _system(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        lam = -jnp.exp(self.lambda_log_neg_re) + 1j * self.lambda_im
        c_tilde = jnp.stack([re + 1j * im for re, im in self.c_parts])  # (directions, H, N2)
        return lam, self.p_re + 1j * self.p_im, self.b_re + 1j * self.b_im, c_tilde, jnp.exp(self.log_step)

    def _kernels(self, length: int) -> jax.Array:
        if length > self.l_max:
            raise ValueError(
                f"S4Mixer: input length {length} exceeds l_max={self.l_max}; the kernel (and the meaning of "
                f"C~) is defined at l_max, so build the mixer with l_max >= the longest sequence."
            )
        kernels = ssm_ops.s4_kernel(*self._system(), self.l_max, chunk_size=self.chunk_size)
        return kernels[..., :length]

    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        return self._apply_kernels(x, mask, self.d)

    def init_state(self, batch_size: int) -> dict[str, jax.Array]:
        """Hidden state zeros (B, H, N) complex plus the discretised system, computed once here."""
        self._check_causal_for_decoding()
        lam, p, b, c_tilde, step = self._system()
        a_bar, b_bar, c_bar = ssm_ops.s4_recurrent_system(lam, p, b, c_tilde[0], step, self.l_max)
        h = jnp.zeros((batch_size, self.d_model, self.d_state), a_bar.dtype)
        return {"h": h, "A_bar": a_bar, "B_bar": b_bar, "C_bar": c_bar}

    def step(self, state: dict[str, jax.Array], x_t: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        self._check_causal_for_decoding()
        a_bar, b_bar, c_bar = state["A_bar"], state["B_bar"], state["C_bar"]
        out_dtype = x_t.dtype if self.dtype is None else self.dtype
        x_t = _at_least_float32(x_t)
        h = jnp.einsum("hij,bhj->bhi", a_bar, state["h"]) + b_bar * x_t[..., None].astype(b_bar.dtype)
        y = jnp.einsum("hn,bhn->bh", c_bar, h).real + self.d * x_t
        return {**state, "h": h}, y.astype(out_dtype)

    def prefill(self, x: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        """The parallel call (the FFT convolution) on a prompt (B, P, D) and its decoding state: h after the
        prompt as the reversed prompt contracted with the state kernel A_bar^k B_bar (k < P, by doubling:
        `dense_state_kernel`), O(H N^2 P + B H N P), no loop over the prompt (docs/methods.md section 18).
        A prompt longer than l_max (where the kernel is not defined) is stepped token by token instead."""
        self._check_causal_for_decoding()
        if x.shape[1] > self.l_max:
            return super().prefill(x)
        state = self.init_state(x.shape[0])
        h = dense_final_state(state["A_bar"], state["B_bar"], _at_least_float32(x))
        return {**state, "h": h.astype(state["h"].dtype)}, self(x)


class S4DInit(enum.StrEnum):
    """S4D's eigenvalue initialisations (see `s4d_eigenvalues`)."""

    LIN = "lin"
    INV = "inv"
    LEGS = "legs"


S4D_INITS = tuple(S4DInit)


def s4d_eigenvalues(init: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(Lambda (N/2,), B (N/2,)) complex initial values of S4D.

    "lin" (S4D-Lin): Lambda_n = -1/2 + i pi n, B = 1.
    "inv" (S4D-Inv): Lambda_n = -1/2 + i (N/pi)(N/(2n+1) - 1), B = 1.
    "legs" (S4D-LegS): the diagonal of the NPLR form of LegS (its low-rank term dropped) and the projected
    B = V^* sqrt(2n+1), from ops.hippo.legs_nplr.
    """
    if init not in S4D_INITS:
        raise ValueError(f"s4d_eigenvalues: unknown init {init!r}; expected one of {S4D_INITS}.")
    q = np.arange(n // 2)
    if init == "lin":
        return -0.5 + 1j * np.pi * q, np.ones(n // 2, complex)
    if init == "inv":
        return -0.5 + 1j * (n / np.pi) * (n / (2 * q + 1) - 1), np.ones(n // 2, complex)
    half = hippo.conjugate_half(hippo.legs_nplr(n))
    return half.Lambda, half.B


@register_mixer(
    "s4d", param_groups=_SSM_GROUPS, check=_check_s4,
    config_options=dict(d_state=64, lambda_init="lin", discretization="zoh", **_STEP_RANGE),
    cpu_options=dict(d_state=32), recipes=s4_recipes("d_state"),
    memory=ActivationModel(per_token=lambda o, d: 8 * d,
                           # the Vandermonde kernel (D, N, L), complex
                           per_layer=lambda o, d, length: 1.5 * d * ActivationModel.number(o, "d_state", 64) * length))
class S4DMixer(_SISOConvMixer):
    """S4D: diagonal SSM per channel, kernel by a Vandermonde product (ops.ssm.s4d_kernel).

    Attributes:
      d_state: N (N/2 complex conjugate-pair states stored per channel).
      lambda_init: "lin" (S4D-Lin, default, as the S4D reference code), "inv" (S4D-Inv) or "legs" (S4D-LegS);
        see `s4d_eigenvalues`.
      discretization: "zoh" (default) or "bilinear".
      dt_min, dt_max: log step of each channel ~ U[log dt_min, log dt_max].
      chunk_size: kernel positions per chunk (None: automatic).

    Parameters: Lambda_log_neg_re, Lambda_im, B_re, B_im (H, N/2), log_step (H,): "ssm" group; C_re, C_im
    (H, N/2) complex normal (E|C|^2 = 1), plus C_re_bwd, C_im_bwd when bidirectional; D (H,) ~ N(0, 1).
    The kernel has no fixed length (C is C_bar itself), so it is computed at the input length.
    Decoding state: (B, H, N/2) complex; y = 2 Re(C x) + D u.
    """

    d_state: int = 64
    lambda_init: S4DInit = S4DInit.LIN
    discretization: Discretization = Discretization.ZOH
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    chunk_size: int | None = None

    def setup(self) -> None:
        _check_even_state("S4DMixer", "d_state", self.d_state)
        _check_step_range("S4DMixer", self.dt_min, self.dt_max)
        if self.discretization not in ("zoh", "bilinear"):
            raise ValueError(
                f"S4DMixer: discretization must be 'zoh' or 'bilinear'; got {self.discretization!r}."
            )
        h, n2 = self.d_model, self.d_state // 2
        lam, b = s4d_eigenvalues(self.lambda_init, self.d_state)

        def ssm_param(name: str, value: np.ndarray) -> jax.Array:
            return self.param(name, grouped(_constant(value), SSM), (h, n2))

        self.lambda_log_neg_re = ssm_param("Lambda_log_neg_re", np.log(-lam.real))
        self.lambda_im = ssm_param("Lambda_im", lam.imag)
        self.b_re = ssm_param("B_re", b.real)
        self.b_im = ssm_param("B_im", b.imag)
        self.log_step = self.param("log_step", grouped(_log_step_init(self.dt_min, self.dt_max), SSM), (h,))
        c_std = math.sqrt(0.5)
        directions = ["", "_bwd"] if self.bidirectional else [""]
        self.c_parts = [
            (self.param(f"C_re{suffix}", _normal(c_std), (h, n2)),
             self.param(f"C_im{suffix}", _normal(c_std), (h, n2)))
            for suffix in directions
        ]
        self.d = self.param("D", _normal(1.0), (h,))

    def _system(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        lam = -jnp.exp(self.lambda_log_neg_re) + 1j * self.lambda_im
        c = jnp.stack([re + 1j * im for re, im in self.c_parts])
        return lam, self.b_re + 1j * self.b_im, c, jnp.exp(self.log_step)

    def _kernels(self, length: int) -> jax.Array:
        return ssm_ops.s4d_kernel(*self._system(), length, discretization=self.discretization,
                                  chunk_size=self.chunk_size)

    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        return self._apply_kernels(x, mask, self.d)

    def init_state(self, batch_size: int) -> jax.Array:
        self._check_causal_for_decoding()
        return jnp.zeros((batch_size, self.d_model, self.d_state // 2), _complex_dtype(self.lambda_im))

    def step(self, state: jax.Array, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._check_causal_for_decoding()
        lam, b, c, step = self._system()
        lam_bar, scale = hippo.discretize_diagonal(lam, step[:, None], self.discretization)
        out_dtype = x_t.dtype if self.dtype is None else self.dtype
        x_t = _at_least_float32(x_t)
        state = lam_bar * state + (scale * b) * x_t[..., None].astype(lam_bar.dtype)
        y = 2 * jnp.sum(c[0] * state, axis=-1).real + self.d * x_t
        return state, y.astype(out_dtype)

    def prefill(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The parallel call (the FFT convolution) on a prompt (B, P, D) and its decoding state, the diagonal
        recurrence's last state sum_t Lambda_bar^(P-1-t) B_bar u_t (B, H, N/2) as one Vandermonde contraction
        (O(B H N P), no loop over the prompt; docs/methods.md section 18)."""
        self._check_causal_for_decoding()
        lam, b, _, step = self._system()
        lam_bar, scale = hippo.discretize_diagonal(lam, step[:, None], self.discretization)
        u = _at_least_float32(x)
        powers = diagonal_powers(lam_bar, x.shape[1])  # (P, H, N/2)
        state = jnp.einsum("bth,thn->bhn", u.astype(powers.dtype), powers) * (scale * b)
        return state.astype(_complex_dtype(self.lambda_im)), self(x)


@register_mixer(
    "s5", param_groups=_SSM_GROUPS, check=_check_s5,
    config_options=dict(state_size=64, blocks=4, discretization="zoh", **_STEP_RANGE,
                        c_init="trunc_standard_normal", conj_sym=True),
    cpu_options=dict(state_size=32, blocks=4),
    recipes={task: _s5_recipe(task, *row) for task, row in S5_ANCHORS.items()},
    memory=ActivationModel(per_token=lambda o, d: 10 * d + 2 * ActivationModel.number(o, "state_size", 64)))
class S5Mixer(SequenceMixer):
    """S5: one diagonal MIMO SSM over all channels, run by ops.scan.linear_recurrence.

    Attributes:
      state_size: P, the number of (real-system) states; with conj_sym, P/2 complex states are stored.
      blocks: J, the number of HiPPO-N blocks (block size P/J, even when conj_sym); per task: docs/anchors.md section 3.
      discretization: "zoh" (default, as S5's LRA runs) or "bilinear".
      dt_min, dt_max: one log step per state ~ U[log dt_min, log dt_max].
      c_init: "trunc_standard_normal" (default), "lecun_normal" or "complex_normal"; see ops.ssm.s5_c_init.
      conj_sym: keep one eigenvalue per conjugate pair and output 2 Re(C x) (default True, as S5).
      clip_eigs: clip Re(Lambda) to <= -1e-4 in the forward pass (S5's option; keeps the system stable).
      scan_method: method of linear_recurrence ("auto", "sequential", "associative", "chunked").

    Parameters: Lambda_re, Lambda_im (P'), B_re, B_im (P', H) (B~ = V^* B, B lecun-normal in the HiPPO
    basis), log_step (P'): "ssm" group; C_re, C_im (H, P') (+ _bwd): default group; D (H,) ~ N(0, 1).
    Bidirectional (as S5): a second, reverse scan with its own C; the outputs are summed (S5 concatenates
    the two state sequences and applies [C_fwd, C_bwd], which is the same sum). Both scans include lag 0,
    as in S5.
    """

    state_size: int = 64
    blocks: int = 1
    discretization: Discretization = Discretization.ZOH
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    c_init: S5CInit = S5CInit.TRUNC_STANDARD_NORMAL
    conj_sym: bool = True
    clip_eigs: bool = False
    scan_method: ScanMethod = ScanMethod.AUTO
    dtype: Any = None

    def setup(self) -> None:
        _check_step_range("S5Mixer", self.dt_min, self.dt_max)
        if self.discretization not in ("zoh", "bilinear"):
            raise ValueError(
                f"S5Mixer: discretization must be 'zoh' or 'bilinear'; got {self.discretization!r}."
            )
        if self.c_init not in ssm_ops.S5_C_INITS:
            raise ValueError(
                f"S5Mixer: unknown c_init {self.c_init!r}; expected one of {ssm_ops.S5_C_INITS}."
            )
        lam, v = ssm_ops.s5_hippo_init(self.state_size, self.blocks, self.conj_sym)
        h, p_kept = self.d_model, lam.shape[0]
        # B~ and C~ are complex draws whose real and imaginary parts are stored as two parameters; both parts
        # must come from one draw, so the draws use keys taken here once, at initialisation only.
        directions = 2 if self.bidirectional else 1
        if self.is_initializing():
            b_key, c_key = jax.random.split(self.make_rng("params"))
            b_tilde = ssm_ops.s5_b_init(b_key, h, v)
            c_tilde = [ssm_ops.s5_c_init(k, self.c_init, h, v) for k in jax.random.split(c_key, directions)]
        else:  # the parameters exist; Flax only checks the initialisers' shapes (eval_shape), so zeros do
            b_tilde = jnp.zeros((p_kept, h), jnp.complex64)
            c_tilde = [jnp.zeros((h, p_kept), jnp.complex64)] * directions

        def ssm_param(name: str, init: Init, shape: tuple[int, ...]) -> jax.Array:
            return self.param(name, grouped(init, SSM), shape)

        def part(value_fn: Callable[[], jax.Array]) -> Init:
            return lambda key, shape, dtype=jnp.float32: value_fn().astype(dtype)

        self.lambda_re = ssm_param("Lambda_re", _constant(lam.real), (p_kept,))
        self.lambda_im = ssm_param("Lambda_im", _constant(lam.imag), (p_kept,))
        self.b_re = ssm_param("B_re", part(lambda: b_tilde.real), (p_kept, h))
        self.b_im = ssm_param("B_im", part(lambda: b_tilde.imag), (p_kept, h))
        self.log_step = ssm_param("log_step", _log_step_init(self.dt_min, self.dt_max), (p_kept,))
        suffixes = ["", "_bwd"] if self.bidirectional else [""]
        self.c_parts = [
            (self.param(f"C_re{suffix}", part(lambda i=i: c_tilde[i].real), (h, p_kept)),
             self.param(f"C_im{suffix}", part(lambda i=i: c_tilde[i].imag), (h, p_kept)))
            for i, suffix in enumerate(suffixes)
        ]
        self.d = self.param("D", _normal(1.0), (h,))

    def _discrete_system(self) -> tuple[jax.Array, jax.Array]:
        lam_re = jnp.minimum(self.lambda_re, -1e-4) if self.clip_eigs else self.lambda_re
        lam = lam_re + 1j * self.lambda_im
        return ssm_ops.s5_discretize(lam, self.b_re + 1j * self.b_im, self.log_step, self.discretization)

    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        u = _masked(_at_least_float32(x), mask)
        lam_bar, b_bar = self._discrete_system()
        y = jnp.zeros(u.shape, jnp.result_type(u, self.d))
        for direction, (c_re, c_im) in enumerate(self.c_parts):
            y = y + ssm_ops.s5_ssm(lam_bar, b_bar, c_re + 1j * c_im, u, conj_sym=self.conj_sym,
                                   reverse=direction == 1, method=self.scan_method)
        return (y + self.d * u).astype(x.dtype if self.dtype is None else self.dtype)

    def init_state(self, batch_size: int) -> jax.Array:
        self._check_causal_for_decoding()
        return jnp.zeros((batch_size, self.lambda_re.shape[0]), _complex_dtype(self.lambda_re))

    def step(self, state: jax.Array, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._check_causal_for_decoding()
        lam_bar, b_bar = self._discrete_system()
        c_re, c_im = self.c_parts[0]
        out_dtype = x_t.dtype if self.dtype is None else self.dtype
        x_t = _at_least_float32(x_t)
        state, y = ssm_ops.s5_step(state, x_t, lam_bar, b_bar, c_re + 1j * c_im, conj_sym=self.conj_sym)
        return state, (y + self.d * x_t).astype(out_dtype)

    def prefill(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The parallel call on a prompt (B, P, D) and its decoding state, the scan's last state
        sum_t Lambda_bar^(P-1-t) B_bar u_t (B, P') as one Vandermonde contraction of B_bar u (the scan's
        inputs), O(B P P' H) as the scan itself (docs/methods.md section 18)."""
        self._check_causal_for_decoding()
        lam_bar, b_bar = self._discrete_system()
        u = _at_least_float32(x)
        powers = diagonal_powers(lam_bar, x.shape[1])  # (P, P')
        state = jnp.einsum("bth,ph,tp->bp", u.astype(b_bar.dtype), b_bar, powers)
        return state.astype(_complex_dtype(self.lambda_re)), self(x)
