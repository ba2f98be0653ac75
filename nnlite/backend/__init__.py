"""Backend registry: which array module and kernels run the math.

Backends by name:

- ``"numpy"``: the reference, plain array code (the default in the library);
- ``"numba"``: NumPy arrays with fused Numba kernels for the hot loop (CPU);
- ``"cupy"``: CuPy arrays on a CUDA GPU with fused CUDA kernels;
- ``"auto"``: CuPy when it imports and a CUDA device works, else Numba, else NumPy.

Select with :func:`set_backend`, the environment variable ``NNLITE_BACKEND`` (read on first use)
or ``nnlite train --backend``. Layers and optimizers ask :func:`get_backend` for the current one
and never test which it is. Importing nnlite imports neither Numba nor CuPy: each backend module
loads when it is selected.
"""

from __future__ import annotations

import importlib
import os
import sys

from nnlite.backend.numpy_backend import Backend

__all__ = [
    "Backend",
    "get_backend",
    "set_backend",
    "available_backends",
    "BackendUnavailable",
    "OutOfDeviceMemory",
]


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (package missing or no working GPU)."""


class OutOfDeviceMemory(MemoryError):
    """Training ran out of (device) memory; the message says what was asked and what to try."""


def _lazy(name: str, module: str, cls: str, hint: str):
    """A factory that imports the backend's module only when the backend is selected."""

    def factory(**options):
        try:
            backend_class = getattr(importlib.import_module(module), cls)
        except ImportError as exc:
            raise BackendUnavailable(f"the {name!r} backend needs {hint} ({exc})") from exc
        return backend_class(**options)

    return factory


_FACTORIES = {
    "numpy": lambda **options: Backend(**options),
    "numba": _lazy("numba", "nnlite.backend.numba_backend", "NumbaBackend",
                   "Numba and SciPy (for BLAS in compiled code): `pip install numba scipy`"),
    "cupy": _lazy("cupy", "nnlite.backend.cupy_backend", "CupyBackend",
                  "CuPy: install nnlite[gpu] on a CUDA machine"),
}
_CURRENT: Backend | None = None


def available_backends() -> list[str]:
    """Names accepted by :func:`set_backend` (whether or not their packages are installed)."""
    return list(_FACTORIES) + ["auto"]


def _auto() -> Backend:
    """CuPy if a CUDA device works, else Numba, else NumPy; says which and why on stderr."""
    reasons = []
    for name in ("cupy", "numba"):
        try:
            backend = _FACTORIES[name]()
        except BackendUnavailable as exc:
            reasons.append(f"{name}: {exc}")
            continue
        print(f"nnlite: backend 'auto' chose {name!r}"
              + (f" ({'; '.join(reasons)})" if reasons else ""), file=sys.stderr)
        return backend
    print(f"nnlite: backend 'auto' chose 'numpy' ({'; '.join(reasons)})", file=sys.stderr)
    return Backend()


def set_backend(name: str, **options) -> Backend:
    """Select the backend by name and return it.

    Args:
        name: "numpy", "numba", "cupy" or "auto".
        **options: backend options, e.g. ``gemm="blocked"`` for Numba.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
        BackendUnavailable: when the backend's package is missing or (CuPy) no GPU works.
    """
    global _CURRENT
    key = str(name).lower()
    if key == "auto":
        _CURRENT = _auto()
    elif key in _FACTORIES:
        _CURRENT = _FACTORIES[key](**options)
    else:
        raise ValueError(
            f"set_backend: expected `name` to be one of {available_backends()}, received {name!r}"
        )
    return _CURRENT


def get_backend() -> Backend:
    """Return the current backend (chosen from ``NNLITE_BACKEND`` on first use, else NumPy)."""
    if _CURRENT is None:
        return set_backend(os.environ.get("NNLITE_BACKEND", "numpy"))
    return _CURRENT
