"""RTF: rational-transfer-function state-space kernels (state-free training, companion-form decoding).

Shape legend (shared by the package): B batch, L length, H channels, N state size (the order d of the
rational function), T the fixed truncation length `trunc_len`.

Coefficient convention (docs/methods.md section 4, the blog's, chosen because it makes the two forms agree exactly):

    G_T(z) = (b_0 + b_1 z + ... + b_{N-1} z^{N-1}) / (1 + a_1 z + ... + a_N z^N),

with a = (a_1..a_N) and b = (b_0..b_{N-1}). The numerator starts at index 0, so there is no aliasing of a
t = T term into lag 0 (docs/methods.md section 4, pitfall 2, which the official code's b at indices 1..N has); the
feed-through h_0 of the official code is the mixer's separate D u term, outside the kernel.

* Convolutional form: K = IFFT_T(FFT_T(b) / FFT_T(1, a)), cut to the input length. Both polynomials have
  degree < T, so their length-T DFTs are their values at the T-th roots of unity, and K_k (k < T) is exactly
  the kernel of the companion system below with output row c solving c (I - A^T) = b (docs/methods.md section 4: b is
  C~ = C (I - A^T) of that system). The FFT length is always T, never the input length (pitfall 1: the c
  implied by b depends on T). Inputs longer than T see a kernel that is zero beyond lag T - 1 (as the
  official code); decoding matches the convolution for sequences of length <= T.
* Recurrent form: the companion matrix A = [[-a_1 .. -a_N], [I_{N-1}, 0]] and B = e_1 give a shift register:
  x_t = (u_t - <a, x_{t-1}>, x_{t-1,0}, ..., x_{t-1,N-2}), y_t = <c, x_t>, O(N) per step.
"""

from __future__ import annotations

import enum
import math

import jax
import jax.numpy as jnp


class RTFInit(enum.StrEnum):
    """Initialisations of the a and b coefficients (`rtf_init`), after the official RTF options."""

    ZEROS = "zeros"
    MONTEL = "montel"
    XAVIER = "xavier"


# The values as plain strings, under their former name (models/ and experiments/ check against it).
RTF_INITS = tuple(i.value for i in RTFInit)
_VALID_INITS = ", ".join(map(repr, RTF_INITS))


def _check_trunc_len(trunc_len: int, state_size: int, where: str) -> None:
    if not isinstance(trunc_len, int) or trunc_len <= state_size:
        raise ValueError(
            f"{where}: trunc_len must be an int larger than the state size N={state_size} (the FFT of the "
            f"denominator (1, a_1..a_N) needs more than N points); got trunc_len={trunc_len!r}."
        )


def rtf_init(key: jax.Array, shape: tuple[int, ...], kind: RTFInit | str = RTFInit.ZEROS,
             dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Initial a or b coefficients (..., N), following the official RTF options.

    "zeros" (official default): all zero, a rolling buffer of the last N inputs with a zero output map.
    "montel": U(-1/N, 1/N), so sum |a_i| < 1 and every pole lies inside the unit disk (stable).
    "xavier": U(-1/sqrt(N), 1/sqrt(N)); can initialise an unstable system.
    """
    if kind not in RTF_INITS:
        raise ValueError(f"rtf_init: unknown initialisation {kind!r}; expected one of {_VALID_INITS}.")
    n = shape[-1]
    if kind == RTFInit.ZEROS:
        return jnp.zeros(shape, dtype)
    bound = 1.0 / n if kind == RTFInit.MONTEL else 1.0 / math.sqrt(n)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def rtf_kernel(a: jax.Array, b: jax.Array, trunc_len: int) -> jax.Array:
    """The length-T kernel K = irfft(rfft(b, T) / rfft((1, a), T)): (..., N) coefficients -> (..., T) real.

    a, b: (..., N) real (broadcast against each other). Cost O(T log T) per channel, independent of N
    (besides reading the coefficients). Raises ValueError unless T > N. Computed and returned in at least
    float32 (FFTs of 16-bit coefficients would lose the kernel's tail).
    """
    dtype = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
    a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"rtf_kernel: a and b need the same state size N; got {a.shape} and {b.shape}.")
    _check_trunc_len(trunc_len, a.shape[-1], "rtf_kernel")
    monic = jnp.concatenate([jnp.ones(a.shape[:-1] + (1,), a.dtype), a], axis=-1)
    transfer = jnp.fft.rfft(b, n=trunc_len, axis=-1) / jnp.fft.rfft(monic, n=trunc_len, axis=-1)
    return jnp.fft.irfft(transfer, n=trunc_len, axis=-1)


def rtf_companion(a: jax.Array) -> jax.Array:
    """The companion matrix A (..., N, N): first row -a, ones on the subdiagonal (the shift)."""
    a = jnp.asarray(a)
    n = a.shape[-1]
    shift = jnp.broadcast_to(jnp.eye(n, k=-1, dtype=a.dtype), a.shape[:-1] + (n, n))
    return shift.at[..., 0, :].set(-a)


def rtf_output_coefficients(a: jax.Array, b: jax.Array, trunc_len: int) -> jax.Array:
    """c (..., N) solving c (I - A^T) = b, the output row of the recurrent form whose kernel is `rtf_kernel`.

    A^T by repeated squaring: O(N^3 log T) per channel. Needs I - A^T invertible, i.e. no pole of the
    system on the T-th roots of unity (true for a stable system).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_trunc_len(trunc_len, a.shape[-1], "rtf_output_coefficients")
    companion = rtf_companion(a)
    n = a.shape[-1]
    lhs = jnp.eye(n, dtype=companion.dtype) - jnp.linalg.matrix_power(companion, trunc_len)
    b = jnp.broadcast_to(b, jnp.broadcast_shapes(a.shape, b.shape)).astype(companion.dtype)
    return jnp.linalg.solve(jnp.swapaxes(lhs, -1, -2), b[..., None])[..., 0]


def rtf_step(state: jax.Array, u_t: jax.Array, a: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One companion-form step (no feed-through): state (..., N), u_t (...) -> (state, y_t (...)). O(N).

    x_t = (u_t - <a, x_{t-1}>, x_{t-1}[0 : N-1]),  y_t = <c, x_t>.
    """
    head = u_t - jnp.sum(a * state, axis=-1)
    state = jnp.concatenate([head[..., None], state[..., :-1]], axis=-1)
    return state, jnp.sum(c * state, axis=-1)
