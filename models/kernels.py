"""The ops that code outside models/ may call directly: the linear-recurrence scan, for its benchmark.

experiments/ reaches the numerical ops only through models/ (the mixers, and this module), so that the layers
stay ops/ <- models/ <- experiments/. Everything here is a re-export of ops/scan.py; see its docstrings.
"""

from __future__ import annotations

import jax

from ops.scan import ScanMethod, _resolve_auto, linear_recurrence

__all__ = ["ScanMethod", "linear_recurrence", "scan_method_for_backend"]


def scan_method_for_backend(backend: str | None = None) -> ScanMethod:
    """The method `linear_recurrence(..., method="auto")` uses on `backend` (default: JAX's default backend)."""
    return _resolve_auto(backend or jax.default_backend())
