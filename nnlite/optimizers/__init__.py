"""Optimizers with Keras's names, defaults and formulas; all update parameters in place."""

from __future__ import annotations

from nnlite.optimizers import schedules
from nnlite.optimizers.adam import Adam
from nnlite.optimizers.base import Optimizer
from nnlite.optimizers.rmsprop import RMSprop
from nnlite.optimizers.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get", "schedules"]

_ALIASES = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get(identifier) -> Optimizer:
    """Resolve "sgd", "adam", "rmsprop" (any case), an optimizer class or an instance.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    if isinstance(identifier, str) and identifier.lower() in _ALIASES:
        return _ALIASES[identifier.lower()]()
    raise ValueError(
        f"Unknown optimizer {identifier!r}: expected one of {sorted(_ALIASES)} "
        "or an nnlite.optimizers.Optimizer"
    )
