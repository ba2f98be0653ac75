"""Backend registry: which array module and kernels run the math.

``set_backend("numpy")`` (the default) selects the reference :class:`Backend`. Layers and
optimizers ask :func:`get_backend` for the current one and never test which it is.
"""

from __future__ import annotations

import os

from nnlite.backend.numpy_backend import Backend

__all__ = ["Backend", "get_backend", "set_backend", "available_backends"]

_FACTORIES = {"numpy": Backend}
_CURRENT: Backend | None = None


def available_backends() -> list[str]:
    """Names accepted by :func:`set_backend`."""
    return list(_FACTORIES)


def set_backend(name: str) -> Backend:
    """Select the backend by name and return it.

    Args:
        name: one of :func:`available_backends`.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    global _CURRENT
    key = str(name).lower()
    if key not in _FACTORIES:
        raise ValueError(
            f"set_backend: expected `name` to be one of {available_backends()}, received {name!r}"
        )
    _CURRENT = _FACTORIES[key]()
    return _CURRENT


def get_backend() -> Backend:
    """Return the current backend (chosen from ``NNLITE_BACKEND`` on first use, else NumPy)."""
    if _CURRENT is None:
        return set_backend(os.environ.get("NNLITE_BACKEND", "numpy"))
    return _CURRENT
