"""Adam (Kingma & Ba, 2015) in Keras's epsilon-hat form."""

from __future__ import annotations

import numpy as np

from nnlite.backend import get_backend
from nnlite.optimizers.base import Optimizer, keras_scalar


class Adam(Optimizer):
    """Adaptive moment estimation, as ``keras.optimizers.Adam``.

    Args:
        learning_rate: default 0.001.
        beta_1, beta_2: decay rates of the first and second moment estimates (0.9, 0.999).
        epsilon: ε̂, added to √v after bias correction is folded into the step (1e-7).

    Math (t = iterations + 1, "Algorithm 1" with the efficient ordering of section 2):
        m ← m + (g − m)(1 − β₁)         v ← v + (g² − v)(1 − β₂)
        alpha = lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ)
        p ← p − alpha · m / (√v + ε̂)

    Keras-exact: β₁ and β₂ inside the powers βᵗ are rounded to float32, as Keras's ``ops.cast``
    does (``keras_scalar``); lr, the (1 − β) factors (computed in double) and ε̂ are exact.
    """

    def __init__(self, learning_rate=0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, amsgrad: bool = False, name: str = "adam", **kwargs):
        super().__init__(learning_rate, name, **kwargs)
        for key, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0 <= value < 1:
                raise ValueError(f"Adam: expected `{key}` in [0, 1), received {value!r}")
        if amsgrad:
            raise ValueError("Adam: `amsgrad=True` is not supported by nnlite")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self._cached = (None, None)

    def slot_names(self):
        return ("m", "v")

    def update_step(self, grad, param, state, lr):
        dtype = param.dtype
        _, _, c1, c2, eps = self._constants(dtype)
        get_backend().adam_update(param, grad, state["m"], state["v"],
                                  self._alpha(dtype, self.iterations, lr), c1, c2, eps)

    def compiled_updates(self, param, steps):
        dtype = param.dtype
        _, _, c1, c2, eps = self._constants(dtype)
        rows = [(self._alpha(dtype, self.iterations + s, lr), c1, c2, eps)
                for s, lr in enumerate(self._learning_rates(steps))]
        state = self._state(param)
        return "adam", (state["m"], state["v"]), np.array(rows, dtype=dtype).reshape(steps, 4)

    def _alpha(self, dtype, iterations: int, lr: float):
        """The step size after ``iterations`` steps, in ``dtype`` and Keras's order:
        (lr · √(1 − β₂ᵗ)) / (1 − β₁ᵗ) with t = iterations + 1."""
        b1, b2 = self._constants(dtype)[:2]
        t = dtype.type(iterations + 1)
        return dtype.type(dtype.type(lr) * np.sqrt(1 - b2**t) / (1 - b1**t))

    def _constants(self, dtype) -> tuple:
        """β₁, β₂ as Keras casts them, and 1 − β₁, 1 − β₂, ε̂ in ``dtype`` (computed once)."""
        key = (dtype, self.beta_1, self.beta_2, self.epsilon)
        if self._cached[0] != key:
            self._cached = (key, (
                keras_scalar(self.beta_1, dtype), keras_scalar(self.beta_2, dtype),
                dtype.type(1 - self.beta_1), dtype.type(1 - self.beta_2),
                dtype.type(self.epsilon),
            ))
        return self._cached[1]
