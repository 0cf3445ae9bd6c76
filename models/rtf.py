"""The RTF mixer (registered as "rtf"): parameters and wiring; the math is in ops/rtf.py."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from models.param_groups import DEFAULT, NO_DECAY, SSM, grouped
from models.registry import ActivationModel, SequenceMixer, register_mixer
from models.ssm import dense_final_state, s4_recipes
from ops import rtf as rtf_ops
from ops import ssm as ssm_ops
from ops.rtf import RTFInit


def _coefficient_init(kind: str):
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return rtf_ops.rtf_init(key, shape, kind, dtype)

    return init


def _normal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.normal(key, shape, dtype)


def _check_rtf(values, context, ok):
    if ok("trunc_len", "state_size"):
        trunc_len = values["trunc_len"] or context.length  # 0: the task's length
        if trunc_len is not None and trunc_len <= values["state_size"]:
            what = "the sequence length" if values["trunc_len"] == 0 else "trunc_len"
            yield "trunc_len", f"must exceed state_size = {values['state_size']}; {what} is {trunc_len}"


# RTF's LRA recipe: S4's settings (assumed: RTF's LRA runs use a larger state than S4's N, at least 64).
@register_mixer(
    "rtf", param_groups=(DEFAULT, NO_DECAY, SSM), check=_check_rtf,
    config_options=dict(state_size=64, trunc_len=0, coefficient_init="zeros"), cpu_options=dict(state_size=32),
    recipes=s4_recipes("state_size", min_state=64, with_dt=False),
    memory=ActivationModel(per_token=lambda o, d: 10 * d))
class RTFMixer(SequenceMixer):
    """Rational transfer function SSM, one SISO system of order N per channel (state-free training).

    y = K * u + D u with the kernel K = irfft(rfft(b, T) / rfft((1, a), T)) at the fixed truncation length
    T = trunc_len, cut to the input length (docs/methods.md section 4, pitfall 1: the FFT size is never the input's).
    Inputs longer than T see a kernel that is zero beyond lag T - 1 (the official code does the same); step-
    by-step decoding reproduces the parallel call exactly for sequences of length <= T.

    Attributes:
      state_size: N, the order of numerator and denominator (2N parameters per channel and direction).
      trunc_len: T, must exceed N (ValueError otherwise). Set it to the task's sequence length.
      coefficient_init: "zeros" (official default: a = b = 0, so the layer starts as D u), "montel"
        (U(+-1/N): stable) or "xavier" (U(+-1/sqrt(N)): may be unstable); applied to both a and b.
      dtype: dtype of the output (None: the input's), e.g. bfloat16 in a mixed-precision encoder. The kernel
        and the FFT convolution always compute in float32 (inputs are promoted); only the output is cast.

    Parameters: a, b (H, N) ("ssm" group), a_bwd, b_bwd for the backward direction of a bidirectional layer
    (its kernel starts at lag 1: ops.ssm.fft_bidirectional_conv), D (H,) ~ N(0, 1) (the official h_0,
    kept outside the kernel so that no aliasing reaches lag 0: docs/methods.md section 4, pitfall 2).
    Decoding: the companion-form shift register, state (B, H, N) real, with output row c solving
    c (I - A^T) = b (recomputed at each call: O(H N^3 log T); the update itself is O(B H N)).
    Not implemented from the official module: shared denominators (num_a) and kernel dropout.
    """

    state_size: int = 64
    trunc_len: int = 2048
    coefficient_init: RTFInit = RTFInit.ZEROS
    dtype: Any = None

    def setup(self) -> None:
        if not isinstance(self.state_size, int) or self.state_size < 1:
            raise ValueError(f"RTFMixer: state_size must be a positive int; got {self.state_size!r}.")
        if not isinstance(self.trunc_len, int) or self.trunc_len <= self.state_size:
            raise ValueError(
                f"RTFMixer: trunc_len must be an int larger than state_size={self.state_size}; "
                f"got {self.trunc_len!r}."
            )
        if self.coefficient_init not in rtf_ops.RTF_INITS:
            raise ValueError(
                f"RTFMixer: unknown coefficient_init {self.coefficient_init!r}; "
                f"expected one of {rtf_ops.RTF_INITS}."
            )
        shape = (self.d_model, self.state_size)
        coefficient = grouped(_coefficient_init(self.coefficient_init), SSM)
        suffixes = ["", "_bwd"] if self.bidirectional else [""]
        self.coefficients = [
            (self.param(f"a{suffix}", coefficient, shape), self.param(f"b{suffix}", coefficient, shape))
            for suffix in suffixes
        ]
        self.d = self.param("D", _normal, (self.d_model,))

    def __call__(
        self, x: jax.Array, *, mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        out_dtype = x.dtype if self.dtype is None else self.dtype
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"RTFMixer: mask must be (B, L) = {x.shape[:2]}; got {mask.shape}.")
            x_in = x * mask[..., None].astype(x.dtype)
        else:
            x_in = x
        length = x_in.shape[1]
        kernels = [rtf_ops.rtf_kernel(a, b, self.trunc_len)[:, :length] for a, b in self.coefficients]
        if self.bidirectional:
            y = ssm_ops.fft_bidirectional_conv(x_in, kernels[0], kernels[1])
        else:
            y = ssm_ops.fft_causal_conv(x_in, kernels[0])
        return (y + self.d * x_in).astype(out_dtype)

    def init_state(self, batch_size: int) -> dict[str, jax.Array]:
        """{"x": zeros (B, H, N), the shift register of the last N values of the denominator's recursion;
        "c": (H, N) output coefficients of the recurrent form, solved once here (O(H N^3 log T)) so that each
        step costs O(B H N)}. A state is tied to the parameters it was made with."""
        self._check_causal_for_decoding()
        a, b = self.coefficients[0]
        c = rtf_ops.rtf_output_coefficients(a, b, self.trunc_len)
        return {"x": jnp.zeros((batch_size, self.d_model, self.state_size), c.dtype), "c": c}

    def step(self, state: dict[str, jax.Array], x_t: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        self._check_causal_for_decoding()
        a, _ = self.coefficients[0]
        out_dtype = x_t.dtype if self.dtype is None else self.dtype
        x_t = x_t.astype(jnp.promote_types(x_t.dtype, state["x"].dtype))
        x, y = rtf_ops.rtf_step(state["x"], x_t, a, state["c"])
        return {**state, "x": x}, (y + self.d * x_t).astype(out_dtype)

    def prefill(self, x: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        """The parallel call (the FFT convolution) on a prompt (B, P, D) and its decoding state: the shift
        register after the prompt is the state of the companion system x_t = A x_{t-1} + e_1 u_t, the reversed
        prompt contracted with its state kernel A^k e_1 (k < P, by doubling: models.ssm.dense_state_kernel),
        O(H N^2 P + B H N P), no loop over the prompt (docs/methods.md section 18). A prompt longer than
        trunc_len, where the parallel kernel is cut and no longer equals the recurrence, is stepped instead."""
        self._check_causal_for_decoding()
        if x.shape[1] > self.trunc_len:
            return super().prefill(x)
        state = self.init_state(x.shape[0])
        a, _ = self.coefficients[0]
        companion = rtf_ops.rtf_companion(a.astype(state["x"].dtype))
        first = jnp.zeros(a.shape, companion.dtype).at[:, 0].set(1)  # B = e_1
        u = x.astype(jnp.promote_types(x.dtype, state["x"].dtype))
        register = dense_final_state(companion, first, u)
        return {**state, "x": register.astype(state["x"].dtype)}, self(x)

