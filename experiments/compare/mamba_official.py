"""Compare ops/selective.py and ops/ssd.py with the official PyTorch references of state-spaces/mamba (not a test).

    python -m experiments.compare.mamba_official --mamba=/tmp/mamba_src --torch_python=/work/refvenv/bin/python

`--mamba` is a checkout (or any directory holding the two files at their repository paths; nothing of them is
copied here), e.g. from the fetched bare repository:

    for f in mamba_ssm/ops/selective_scan_interface.py mamba_ssm/modules/ssd_minimal.py; do
        mkdir -p /tmp/mamba_src/$(dirname $f); git --git-dir=REPO show HEAD:$f > /tmp/mamba_src/$f; done

Both files import CUDA / Triton extensions at the top, so the torch side does not import them: it parses each
file with `ast`, takes the named functions' definitions only, and runs them with torch, F and einops in scope.
`--torch_python` is an interpreter with torch, numpy and einops (this script runs itself there with
`--torch_side`, exchanging inputs and outputs as .npz files; JAX runs in the calling interpreter, in float64).
What it compares on identical random inputs (docs/methods.md sections 16.1 and 16.2):

  1. `selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, return_last_state=True)`
     (layout (B, D, L), B and C (B, N, L)) against `ops.selective.selective_scan` (one piece, and chunked with
     L not a multiple of the chunk) on softplus(delta + bias), times SiLU(z), and its final state;
  2. `ssd_minimal_discrete(X * dt, A * dt, B, C, block_len, initial_states)` (B and C per head: the shared
     (B, L, N) repeated over heads; L a multiple of block_len, as it requires) against `ops.ssd.ssd_chunked`
     (another chunk length, L not a multiple of it) and `ssd_recurrent`, with an initial state and the final
     state.

`selective_scan_ref` casts with `.float()` (float32); on the torch side `.float()` is made to keep float64
tensors as they are, so the reference loops run in float64. Prints the largest absolute difference of each and
exits 1 when one exceeds 1e-10.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile

import numpy as np

B, L, D, N = 2, 45, 6, 5           # selective scan: L = 45, chunks of 16 leave a remainder
H, P, BLOCK = 3, 4, 16             # SSD: L_SSD = 48, a multiple of the official block (16); ours uses 10
L_SSD = 48
TOLERANCE = 1e-10


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return dict(
        u=rng.normal(size=(B, L, D)), delta=rng.normal(size=(B, L, D)) - 1.0, delta_bias=rng.normal(size=D) * 0.5,
        A=-np.exp(rng.normal(size=(D, N))), B=rng.normal(size=(B, L, N)), C=rng.normal(size=(B, L, N)),
        D=rng.normal(size=D), z=rng.normal(size=(B, L, D)),
        x=rng.normal(size=(B, L_SSD, H, P)), dt=np.log1p(np.exp(rng.normal(size=(B, L_SSD, H)) - 1.0)),
        A_heads=-rng.uniform(1, 16, size=H) * 0.2, B_ssd=rng.normal(size=(B, L_SSD, N)),
        C_ssd=rng.normal(size=(B, L_SSD, N)), h0=rng.normal(size=(B, H, P, N)),
    )


# ------------------------------------------------------------------------------------------------ torch side


def _functions(path: str, names: tuple[str, ...], scope: dict) -> dict:
    """The top-level functions `names` of the Python file `path`, defined in `scope` (nothing else is run)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    nodes = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {node.name for node in nodes}
    if missing:
        raise SystemExit(f"{path}: no function(s) {', '.join(sorted(missing))}")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), scope)  # noqa: S102
    return {name: scope[name] for name in names}


def torch_side(mamba_dir: str, inputs_path: str, outputs_path: str) -> None:
    import torch
    import torch.nn.functional as F
    from einops import rearrange, repeat

    original_float = torch.Tensor.float
    torch.Tensor.float = lambda self: self if self.dtype == torch.float64 else original_float(self)
    scope = dict(torch=torch, F=F, rearrange=rearrange, repeat=repeat)
    ref = _functions(os.path.join(mamba_dir, "mamba_ssm/ops/selective_scan_interface.py"), ("selective_scan_ref",),
                     dict(scope))["selective_scan_ref"]
    ssd = _functions(os.path.join(mamba_dir, "mamba_ssm/modules/ssd_minimal.py"),
                     ("segsum", "ssd_minimal_discrete"), dict(scope))["ssd_minimal_discrete"]
    x = {name: torch.from_numpy(value) for name, value in np.load(inputs_path).items()}
    bdl = lambda a: a.transpose(1, 2).contiguous()  # noqa: E731  (B, L, D) -> (B, D, L)
    y, last = ref(bdl(x["u"]), bdl(x["delta"]), x["A"], bdl(x["B"]), bdl(x["C"]), D=x["D"], z=bdl(x["z"]),
                  delta_bias=x["delta_bias"], delta_softplus=True, return_last_state=True)
    per_head = lambda a: a[:, :, None, :].expand(-1, -1, H, -1).contiguous()  # noqa: E731  G = 1 -> every head
    y_ssd, last_ssd = ssd(x["x"] * x["dt"][..., None], x["A_heads"] * x["dt"], per_head(x["B_ssd"]),
                          per_head(x["C_ssd"]), BLOCK, initial_states=x["h0"][:, None])
    np.savez(outputs_path, selective_y=bdl(y).numpy(), selective_last=last.numpy(), ssd_y=y_ssd.numpy(),
             ssd_last=last_ssd.numpy())


# -------------------------------------------------------------------------------------------------- JAX side


def jax_side(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from ops.selective import selective_scan
    from ops.ssd import ssd_chunked, ssd_recurrent

    x = {name: jnp.asarray(value) for name, value in inputs.items()}
    delta = jax.nn.softplus(x["delta"] + x["delta_bias"])
    out = {}
    for name, chunk in (("selective", None), ("selective_chunked", 16)):
        y, last = selective_scan(x["u"], delta, x["A"], x["B"], x["C"], x["D"], chunk_size=chunk)
        out[f"{name}_y"], out[f"{name}_last"] = y * jax.nn.silu(x["z"]), last
    X, a = x["x"] * x["dt"][..., None], x["A_heads"] * x["dt"]
    out["ssd_y"], out["ssd_last"] = ssd_chunked(X, a, x["B_ssd"], x["C_ssd"], 10, x["h0"])
    out["ssd_recurrent_y"], out["ssd_recurrent_last"] = ssd_recurrent(X, a, x["B_ssd"], x["C_ssd"], x["h0"])
    return {name: np.asarray(value) for name, value in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mamba", required=True, help="a checkout of state-spaces/mamba (see the docstring)")
    parser.add_argument("--torch_python", default=sys.executable, help="an interpreter with torch and einops")
    parser.add_argument("--torch_side", nargs=2, metavar=("INPUTS", "OUTPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_side:
        torch_side(args.mamba, *args.torch_side)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        inputs_path, outputs_path = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "outputs.npz")
        inputs = _inputs()
        np.savez(inputs_path, **inputs)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        subprocess.run([args.torch_python, os.path.abspath(__file__), "--mamba", args.mamba, "--torch_side",
                        inputs_path, outputs_path], check=True, cwd=root)
        official = dict(np.load(outputs_path))
    ours = jax_side(inputs)
    failed = False
    for name, value in ours.items():
        reference = official[name.replace("_chunked", "").replace("_recurrent", "")]
        error = float(np.max(np.abs(value - reference)))
        failed |= not error <= TOLERANCE
        print(f"{name:28s} max |ours - official| = {error:.2e}  (max |official| = {np.max(np.abs(reference)):.2f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
