"""RMSprop (Tieleman & Hinton, 2012, lecture 6.5) in Keras 3's formulation."""

from __future__ import annotations

import numpy as np

from nnlite.backend import get_backend
from nnlite.optimizers.base import Optimizer


class RMSprop(Optimizer):
    """Divide the gradient by a running RMS of its magnitude, as ``keras.optimizers.RMSprop``.

    Args:
        learning_rate: default 0.001.
        rho: decay of the squared-gradient average (0.9).
        momentum: μ ≥ 0 (0).
        epsilon: ε, added to the average *inside* the square root, as Keras does (1e-7).
        centered: subtract the squared mean gradient (Graves, 2013).

    Math:
        v ← ρ·v + (1 − ρ)·g²                d = v  (centered: ḡ ← ρ·ḡ + (1 − ρ)·g;  d = v − ḡ²)
        step = lr · g / √(d + ε)
        p ← p − step                        (momentum: u ← μ·u + step;  p ← p − u)

    Keras-exact: every hyperparameter is used exactly in the parameters' dtype, as Keras does.
    nnlite divides by √(d + ε) as eager Keras does (bitwise equal); inside ``fit`` and
    ``train_on_batch`` TensorFlow's graph optimizer rewrites this as ``lr·g · rsqrt(d + ε)``,
    which differs by an ulp in float64 and by ~1e-7 in float32 (approximate ``Rsqrt``).
    """

    def __init__(self, learning_rate=0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, centered: bool = False, name: str = "rmsprop", **kwargs):
        super().__init__(learning_rate, name, **kwargs)
        if not 0 <= rho < 1:
            raise ValueError(f"RMSprop: expected `rho` in [0, 1), received {rho!r}")
        if momentum < 0:
            raise ValueError(f"RMSprop: expected `momentum` >= 0, received {momentum!r}")
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered = bool(centered)

    def slot_names(self):
        names = ("velocity",)
        if self.momentum > 0:
            names += ("momentum",)
        if self.centered:
            names += ("average_gradient",)
        return names

    def compiled_updates(self, param, steps):
        if self.momentum > 0 and self.centered:  # three state arrays: the loops take two
            return None
        rows = [(lr, self.rho, 1 - self.rho, self.epsilon, self.momentum)
                for lr in self._learning_rates(steps)]
        state = self._state(param)
        if self.momentum > 0:
            rule, states = "rmsprop_momentum", (state["velocity"], state["momentum"])
        elif self.centered:
            rule, states = "rmsprop_centered", (state["velocity"], state["average_gradient"])
        else:
            rule, states = "rmsprop", (state["velocity"],)
        return rule, states, np.array(rows, dtype=param.dtype).reshape(steps, 5)

    def update_step(self, grad, param, state, lr):
        t = param.dtype.type
        get_backend().rmsprop_update(
            param, grad, state["velocity"], t(lr), t(self.rho),
            t(1 - self.rho), t(self.epsilon),
            momentum=t(self.momentum) if self.momentum > 0 else None,
            velocity=state.get("momentum"), mean_grad=state.get("average_gradient"),
        )
