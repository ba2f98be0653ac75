"""Stochastic gradient descent with optional (Nesterov) momentum, Keras 3's formulation."""

from __future__ import annotations

import numpy as np

from nnlite.backend import get_backend
from nnlite.optimizers.base import Optimizer, keras_scalar


class SGD(Optimizer):
    """Gradient descent, as ``keras.optimizers.SGD``.

    Args:
        learning_rate: step size (default 0.01).
        momentum: μ ≥ 0 (default 0: plain gradient descent).
        nesterov: use Nesterov momentum (Sutskever et al., 2013).

    Math (per parameter p with gradient g):
        μ = 0       p ← p − lr·g
        momentum    v ← μ·v − lr·g;   p ← p + v
        nesterov    v ← μ·v − lr·g;   p ← p + μ·v − lr·g

    Keras-exact: μ is rounded to float32 before use, as Keras's ``ops.cast`` does
    (``keras_scalar``); lr is exact in the parameters' dtype.
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, nesterov: bool = False,
                 name: str = "SGD", **kwargs):
        super().__init__(learning_rate, name, **kwargs)
        if not 0 <= momentum:
            raise ValueError(f"SGD: expected `momentum` >= 0, received {momentum!r}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def slot_names(self):
        return ("momentum",) if self.momentum != 0 else ()

    def update_step(self, grad, param, state, lr):
        dtype = param.dtype
        lr = dtype.type(lr)
        if self.momentum == 0:
            get_backend().sgd_update(param, grad, lr)
        else:
            get_backend().sgd_update(param, grad, lr, keras_scalar(self.momentum, dtype),
                                     state["momentum"], self.nesterov)

    def compiled_updates(self, param, steps):
        dtype = param.dtype
        lrs = self._learning_rates(steps)
        if self.momentum == 0:
            return "sgd", (), np.array(lrs, dtype=dtype).reshape(steps, 1)
        rows = [(lr, keras_scalar(self.momentum, dtype)) for lr in lrs]
        return ("nesterov" if self.nesterov else "momentum", (self._state(param)["momentum"],),
                np.array(rows, dtype=dtype).reshape(steps, 2))
