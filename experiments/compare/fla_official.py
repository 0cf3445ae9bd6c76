"""Compare ops/gla.py and ops/deltanet.py with the naive PyTorch references of fla-org/flash-linear-attention (not
a test).

    python -m experiments.compare.fla_official --fla=/tmp/fla_src --torch_python=/work/refvenv/bin/python

`--fla` is a directory holding fla's naive files at their repository paths (nothing of them is copied here), e.g.
from the fetched bare repository:

    for f in fla/ops/gla/naive.py fla/ops/retention/naive.py fla/ops/delta_rule/naive.py; do
        mkdir -p /tmp/fla_src/$(dirname $f); git --git-dir=REPO show HEAD:$f > /tmp/fla_src/$f; done

`--torch_python` is an interpreter with torch, numpy and einops (this script runs itself there with
`--torch_side`, exchanging inputs and outputs as .npz files; JAX runs in the calling interpreter, in float64).
What it compares on identical random inputs (docs/methods.md sections 16.4 and 16.5):

  1. `naive_recurrent_gla` (layout (B, T, H, K), per-channel log-decay gk, initial state, final state) against
     `ops.gla.gla_chunked` and `gla_recurrent`;
  2. `naive_retention` (layout (B, H, T, K), gamma_h = 1 - 2^(-5-h)) against `gla_chunked` with
     `retnet_log_decay`;
  3. `delta_rule_recurrence` (layout (B, H, T, K), initial and final state) and `delta_rule_chunkwise` (no
     initial state, T a multiple of its chunk of 32) against `ops.deltanet.delta_rule_chunked` and
     `delta_rule_recurrent`, with L2-normalised keys.

fla's naive functions cast their inputs with `.float()` (float32); on the torch side `.float()` is made to keep
float64 tensors as they are, and every input is a float32 number, so fla's loops run in float64 too.
`naive_retention` builds its decay table in float32 by explicit dtype, so that comparison is at float32 level.
Prints the largest absolute difference of each and exits 1 when one exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np

B, T, H, K, V = 2, 70, 3, 8, 6  # T = 70: not a multiple of the chunks (16, 32), except for the chunkwise rule
T_CHUNKWISE = 64


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    k_delta = rng.normal(size=(B, T, H, K))
    inputs = dict(
        q=rng.normal(size=(B, T, H, K)), k=rng.normal(size=(B, T, H, K)), v=rng.normal(size=(B, T, H, V)),
        gk=np.log(1 / (1 + np.exp(-rng.normal(size=(B, T, H, K)) - 2))) / 4,  # logsigmoid-like log-decays
        h0=rng.normal(size=(B, H, K, V)),
        k_delta=k_delta / np.linalg.norm(k_delta, axis=-1, keepdims=True),
        beta=rng.uniform(0.05, 0.95, size=(B, T, H)),
    )
    return {name: f32(value) for name, value in inputs.items()}


# ------------------------------------------------------------------------------------------------ torch side


def _load(fla_dir: str, path: str):
    spec = importlib.util.spec_from_file_location(path.replace("/", "_"), os.path.join(fla_dir, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_side(fla_dir: str, inputs_path: str, outputs_path: str) -> None:
    import torch

    original_float = torch.Tensor.float
    torch.Tensor.float = lambda self: self if self.dtype == torch.float64 else original_float(self)
    gla = _load(fla_dir, "fla/ops/gla/naive.py")
    retention = _load(fla_dir, "fla/ops/retention/naive.py")
    delta = _load(fla_dir, "fla/ops/delta_rule/naive.py")
    x = {name: torch.from_numpy(value) for name, value in np.load(inputs_path).items()}
    bhtd = lambda a: a.transpose(1, 2).contiguous()  # noqa: E731  (B, T, H, D) -> (B, H, T, D)
    out = {}
    o, h = gla.naive_recurrent_gla(x["q"], x["k"], x["v"], x["gk"], initial_state=x["h0"], output_final_state=True)
    out["gla_o"], out["gla_h"] = o, h
    out["retention_o"] = bhtd(retention.naive_retention(bhtd(x["q"]), bhtd(x["k"]), bhtd(x["v"])))
    q, k, v, beta = bhtd(x["q"]), bhtd(x["k_delta"]), bhtd(x["v"]), x["beta"].transpose(1, 2).contiguous()
    o, s = delta.delta_rule_recurrence(q, k, v, beta, initial_state=x["h0"], output_final_state=True)
    out["delta_o"], out["delta_s"] = bhtd(o), s
    t = T_CHUNKWISE
    o, s = delta.delta_rule_chunkwise(q[:, :, :t], k[:, :, :t], v[:, :, :t], beta[:, :, :t], chunk_size=32)
    out["delta_chunkwise_o"], out["delta_chunkwise_s"] = bhtd(o), s
    np.savez(outputs_path, **{name: value.detach().numpy() for name, value in out.items()})


# -------------------------------------------------------------------------------------------------- JAX side


def compare(fla_dir: str, torch_python: str) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from ops import deltanet, gla

    x = _inputs()
    with tempfile.TemporaryDirectory() as tmp:
        inputs_path, outputs_path = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "outputs.npz")
        np.savez(inputs_path, **x)
        subprocess.run([torch_python, os.path.abspath(__file__), "--torch_side", f"--fla={fla_dir}",
                        f"--inputs={inputs_path}", f"--outputs={outputs_path}"], check=True)
        ref = dict(np.load(outputs_path))
    j = {name: jnp.asarray(value) for name, value in x.items()}
    rows = []  # (what, max abs difference, tolerance)

    def row(what, ours, theirs, tolerance=1e-12):
        rows.append((what, float(np.max(np.abs(np.asarray(ours) - theirs))), tolerance))

    for form, run in (("chunked C=16", lambda *a, **kw: gla.gla_chunked(*a, chunk_size=16, **kw)),
                      ("recurrent", gla.gla_recurrent)):
        o, h = run(j["q"], j["k"], j["v"], j["gk"], initial_state=j["h0"])
        row(f"GLA {form}: output vs naive_recurrent_gla", o, ref["gla_o"])
        row(f"GLA {form}: final state vs naive_recurrent_gla", h, ref["gla_h"])
    retnet = jnp.broadcast_to(gla.retnet_log_decay(H, jnp.float64)[:, None], (B, T, H, 1))
    o, _ = gla.gla_chunked(j["q"], j["k"], j["v"], retnet, chunk_size=16)
    row("RetNet (gla_chunked, retnet_log_decay) vs naive_retention (float32 decay table)", o, ref["retention_o"],
        1e-5)
    for form, run in (("chunked C=32", lambda *a, **kw: deltanet.delta_rule_chunked(*a, chunk_size=32, **kw)),
                      ("recurrent", deltanet.delta_rule_recurrent)):
        o, s = run(j["q"], j["k_delta"], j["v"], j["beta"], initial_state=j["h0"])
        row(f"DeltaNet {form}: output vs delta_rule_recurrence", o, ref["delta_o"])
        row(f"DeltaNet {form}: final state vs delta_rule_recurrence", s, ref["delta_s"])
        t = T_CHUNKWISE
        o, s = run(j["q"][:, :t], j["k_delta"][:, :t], j["v"][:, :t], j["beta"][:, :t])
        row(f"DeltaNet {form}: output vs delta_rule_chunkwise", o, ref["delta_chunkwise_o"])
        row(f"DeltaNet {form}: final state vs delta_rule_chunkwise", s, ref["delta_chunkwise_s"])
    failed = 0
    print(f"inputs: B={B} T={T} H={H} K={K} V={V} (chunkwise T={T_CHUNKWISE}), float64")
    for what, difference, tolerance in rows:
        ok = difference <= tolerance
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} max |diff| {difference:.2e} (tol {tolerance:.0e})  {what}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fla", required=True, help="directory holding fla/ops/{gla,retention,delta_rule}/naive.py")
    parser.add_argument("--torch_python", default=sys.executable, help="an interpreter with torch and einops")
    parser.add_argument("--torch_side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--outputs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_side:
        torch_side(args.fla, args.inputs, args.outputs)
        return 0
    return compare(args.fla, args.torch_python)


if __name__ == "__main__":
    sys.exit(main())
