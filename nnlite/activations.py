"""Activation functions as forward/backward pairs, looked up by Keras's names.

``nnlite.activations.relu`` etc. are the plain functions (as ``keras.activations.relu``);
:func:`get` turns a name or one of those functions into an :class:`ActivationFn` that also knows
its gradient, which is what ``Dense(..., activation=...)`` and the ``Activation`` layer hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nnlite import functional as F
from nnlite.functional import linear, relu, sigmoid, softmax, tanh

__all__ = ["ActivationFn", "get", "serialize", "linear", "relu", "sigmoid", "tanh", "softmax"]


@dataclass(frozen=True)
class ActivationFn:
    """An activation with its gradient.

    Attributes:
        name: Keras's name ("relu", "sigmoid", "tanh", "softmax", "linear").
        forward: ``y = forward(x)``.
        backward: ``dx = backward(dy, x, y)``; each uses whichever of x and y is cheaper
            (ReLU the input, sigmoid/tanh/softmax the output).
    """

    name: str
    forward: Callable
    backward: Callable

    def __call__(self, x):
        return self.forward(x)


_REGISTRY = {
    "linear": ActivationFn("linear", F.linear, F.linear_backward),
    "relu": ActivationFn("relu", F.relu, F.relu_backward),
    "sigmoid": ActivationFn("sigmoid", F.sigmoid, F.sigmoid_backward),
    "tanh": ActivationFn("tanh", F.tanh, F.tanh_backward),
    "softmax": ActivationFn("softmax", F.softmax, F.softmax_backward),
}
_BY_FUNCTION = {fn.forward: fn for fn in _REGISTRY.values()}


def get(identifier) -> ActivationFn:
    """Resolve ``None``, a name, an ``nnlite.activations`` function or an ActivationFn.

    Raises:
        ValueError: for an unknown name or a function whose gradient nnlite does not know; the
            message lists the valid names.
    """
    if identifier is None:
        return _REGISTRY["linear"]
    if isinstance(identifier, ActivationFn):
        return identifier
    if isinstance(identifier, str):
        if identifier in _REGISTRY:
            return _REGISTRY[identifier]
    elif callable(identifier) and identifier in _BY_FUNCTION:
        return _BY_FUNCTION[identifier]
    raise ValueError(
        f"Unknown activation {identifier!r}: expected one of {sorted(_REGISTRY)} "
        "(a name or the matching nnlite.activations function)"
    )


def serialize(activation) -> str:
    """Return the Keras name of an activation."""
    return get(activation).name
