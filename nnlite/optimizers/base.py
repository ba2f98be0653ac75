"""The optimizer base class: slot state per parameter, in-place updates, Keras's step counter."""

from __future__ import annotations

import numpy as np

from nnlite.backend import get_backend


def keras_scalar(value: float, dtype) -> np.floating:
    """A hyperparameter as Keras on TensorFlow feeds it through ``ops.cast`` to a ``dtype`` update.

    ``ops.cast(python_float, "float64")`` calls ``tf.cast``, which converts the Python float to a
    float32 tensor first: β₁ = 0.9 arrives as 0.89999997615814209 even in float64 training. Keras
    does this to SGD's momentum and to Adam's β₁, β₂ inside the powers βᵗ; other hyperparameters
    enter through ``ops.multiply``/``ops.add`` (exact) and the learning rate lives in a floatx
    variable (exact in float64 runs). nnlite reproduces each case where it occurs, so float64
    runs agree with Keras to ~1e-15 instead of drifting by ~1e-6 after one step.
    """
    return np.dtype(dtype).type(np.float32(value))


class Optimizer:
    """Base class: ``apply_gradients(zip(grads, params))`` updates each array in place.

    State (``m``, ``v``, momenta) is created lazily on the parameter's device the first time a
    parameter is seen and is keyed by the parameter's identity, so raw arrays work as well as
    model weights: a learner can write the training step by hand.

    Args:
        learning_rate: a float, or a callable ``schedule(iterations) -> float`` such as
            the :mod:`nnlite.optimizers.schedules` classes.
        name: optimizer name.

    Attributes:
        iterations: number of completed ``apply_gradients`` calls (Keras's step counter);
            update formulas use ``t = iterations + 1``.
    """

    def __init__(self, learning_rate=0.001, name: str = "optimizer", **kwargs):
        unknown = sorted(set(kwargs) - {"clipnorm", "clipvalue", "global_clipnorm", "weight_decay"})
        if unknown:
            raise TypeError(f"{type(self).__name__}: unexpected keyword arguments {unknown}")
        for key, value in kwargs.items():
            if value is not None:
                raise ValueError(f"{type(self).__name__}: `{key}` is not supported by nnlite")
        if not callable(learning_rate) and not float(learning_rate) >= 0:
            raise ValueError(
                f"{type(self).__name__}: expected `learning_rate` >= 0, received {learning_rate!r}"
            )
        self.learning_rate = learning_rate
        self.name = name
        self.iterations = 0
        self._slots: dict[int, tuple] = {}

    # -- public API ----------------------------------------------------------------------------

    def apply_gradients(self, grads_and_vars) -> None:
        """Update every parameter in place from its gradient, then count one step.

        Args:
            grads_and_vars: iterable of ``(gradient, parameter)`` pairs; a None gradient skips
                its parameter.

        Raises:
            ValueError: when a gradient's shape differs from its parameter's.
        """
        pairs = [(g, p) for g, p in grads_and_vars if g is not None]
        for grad, param in pairs:
            if grad.shape != param.shape:
                raise ValueError(
                    f"{type(self).__name__}.apply_gradients: gradient shape {tuple(grad.shape)} "
                    f"differs from parameter shape {tuple(param.shape)}"
                )
        lr = self.current_learning_rate()
        for grad, param in pairs:
            self.update_step(grad, param, self._state(param), lr)
        self.iterations += 1

    def apply(self, grads, trainable_variables) -> None:
        """Keras 3's ``apply(grads, variables)``: same as ``apply_gradients(zip(...))``."""
        self.apply_gradients(zip(grads, trainable_variables))

    def current_learning_rate(self) -> float:
        """The learning rate for the coming step (a schedule is called with ``iterations``)."""
        return self._learning_rates(1)[0]

    def compiled_updates(self, param, steps: int):
        """The next ``steps`` updates of ``param`` in the form a compiled training loop runs them.

        Returns:
            ``(rule, state, scalars)``: the update rule's name (a key of
            ``numba_kernels.RULES``), the state arrays it updates in place (this parameter's
            slots) and a (steps, k) array of each step's scalars in ``param``'s dtype, the same
            values :meth:`update_step` would compute; or None when the optimizer has no such
            form. ``iterations`` is not advanced: the loop's caller adds the steps it ran.
        """
        return None

    def _learning_rates(self, steps: int) -> list:
        """The learning rates of the next ``steps`` steps (a schedule is called for each)."""
        lr = self.learning_rate
        if callable(lr):
            return [float(lr(self.iterations + s)) for s in range(steps)]
        return [float(lr)] * steps

    # -- for subclasses ------------------------------------------------------------------------

    def slot_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state arrays, each zero-initialised like the parameter."""
        return ()

    def update_step(self, grad, param, state: dict, lr: float) -> None:  # pragma: no cover
        """Update ``param`` in place from ``grad`` using and updating ``state``."""
        raise NotImplementedError

    def _state(self, param) -> dict:
        slot = self._slots.get(id(param))
        if slot is None or slot[0] is not param:
            xp = get_backend().xp
            # Keep a reference to the parameter so its id cannot be reused while state exists.
            slot = (param, {k: xp.zeros_like(param) for k in self.slot_names()})
            self._slots[id(param)] = slot
        return slot[1]

    def get_config(self) -> dict:
        """Constructor arguments."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "iterations"}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
