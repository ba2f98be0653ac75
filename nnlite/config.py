"""Global settings, named as in ``keras.config``: the default float type and the fuzz factor.

Example:
    >>> import nnlite
    >>> nnlite.config.set_floatx("float64")
    >>> nnlite.config.floatx()
    'float64'
    >>> nnlite.config.set_floatx("float32")
"""

from __future__ import annotations

_FLOATX = "float32"
_EPSILON = 1e-7
_VALID_FLOATX = ("float32", "float64")


def floatx() -> str:
    """Return the default float type of new parameters and of model inputs ("float32")."""
    return _FLOATX


def set_floatx(value: str) -> None:
    """Set the default float type.

    Args:
        value: "float32" (the default) or "float64" (for gradient checks and exact comparisons).

    Raises:
        ValueError: for any other value.
    """
    global _FLOATX
    value = str(value)
    if value not in _VALID_FLOATX:
        raise ValueError(
            f"set_floatx: expected `value` to be one of {list(_VALID_FLOATX)}, received {value!r}"
        )
    _FLOATX = value


def epsilon() -> float:
    """Return the fuzz factor used to clip probabilities in cross-entropies (1e-7, as Keras)."""
    return _EPSILON


def set_epsilon(value: float) -> None:
    """Set the fuzz factor returned by :func:`epsilon`."""
    global _EPSILON
    _EPSILON = float(value)
