"""Learning-rate schedules with Keras 3's names, arguments and arithmetic.

A schedule is a callable ``schedule(step) -> learning rate`` that an optimizer takes as its
``learning_rate``; the optimizer calls it with its step count (``iterations``, 0 for the first
update) before every update::

    lr = ExponentialDecay(1e-2, decay_steps=1000, decay_rate=0.9)
    model.compile(optimizer=nnlite.optimizers.SGD(learning_rate=lr), ...)

Keras-exact: Keras evaluates every schedule in float32, whatever floatx is (it turns the
Python numbers into float32 tensors), so these do the same arithmetic in NumPy float32, step by
step as Keras writes it, and return the float32 result as a Python float.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay",
           "PolynomialDecay", "InverseTimeDecay", "CosineDecay"]

_f32 = np.float32


class LearningRateSchedule:
    """Base class: subclasses define ``__call__(step)`` and ``get_config()``."""

    def __call__(self, step) -> float:  # pragma: no cover - abstract
        """The learning rate for the update after ``step`` updates (float32, as a float)."""
        raise NotImplementedError

    def get_config(self) -> dict:  # pragma: no cover - abstract
        """Constructor arguments, as Keras's ``get_config``."""
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _positive_steps(cls: str, decay_steps) -> None:
    if not decay_steps > 0:
        raise ValueError(f"{cls}: expected `decay_steps` > 0, received {decay_steps!r}")


class _RatioDecay(LearningRateSchedule):
    """Shared by the two decays of ``p = step / decay_steps`` (its floor with ``staircase``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name=None):
        _positive_steps(type(self).__name__, decay_steps)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name or type(self).__name__

    def _ratio(self, step):
        p = _f32(step) / _f32(self.decay_steps)
        return np.floor(p) if self.staircase else p

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class ExponentialDecay(_RatioDecay):
    """``lr = initial_learning_rate · decay_rate ^ p``, ``p = step / decay_steps`` (its floor
    with ``staircase``)."""

    def __call__(self, step) -> float:
        return float(_f32(self.initial_learning_rate)
                     * np.power(_f32(self.decay_rate), self._ratio(step)))


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step ≤ boundaries[0]``, ``values[i + 1]`` while
    ``boundaries[i] < step ≤ boundaries[i + 1]``, ``values[-1]`` after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "PiecewiseConstantDecay: the length of boundaries should be 1 less than the "
                f"length of values. Received: boundaries={boundaries} of length "
                f"{len(boundaries)}, and values={values} of length {len(values)}.")
        self.boundaries = list(boundaries)
        self.values = list(values)
        self.name = name

    def __call__(self, step) -> float:
        # Keras casts the boundaries to the step's integer type (a float boundary truncates).
        bounds = [int(b) if isinstance(b, (int, np.integer)) else int(_f32(b))
                  for b in self.boundaries]
        index = sum(step > b for b in bounds)
        return float(_f32(self.values[index]))

    def get_config(self) -> dict:
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """``lr = (initial − end) · (1 − step / decay_steps) ^ power + end``, the step held at
    ``decay_steps``; with ``cycle`` the decay restarts, ``decay_steps`` stretched to the next
    multiple of itself above the step."""

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0,
                 cycle=False, name="PolynomialDecay"):
        _positive_steps("PolynomialDecay", decay_steps)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = name

    def __call__(self, step) -> float:
        initial, end = _f32(self.initial_learning_rate), _f32(self.end_learning_rate)
        global_step, decay_steps = _f32(step), _f32(self.decay_steps)
        if self.cycle:
            multiplier = _f32(1) if global_step == 0 else np.ceil(global_step / decay_steps)
            decay_steps = decay_steps * multiplier
        else:
            global_step = min(global_step, decay_steps)
        p = global_step / decay_steps
        return float((initial - end) * np.power(_f32(1) - p, _f32(self.power)) + end)

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "end_learning_rate": self.end_learning_rate,
                "power": self.power, "cycle": self.cycle, "name": self.name}


class InverseTimeDecay(_RatioDecay):
    """``lr = initial_learning_rate / (1 + decay_rate · p)``, ``p = step / decay_steps`` (its
    floor with ``staircase``)."""

    def __call__(self, step) -> float:
        return float(_f32(self.initial_learning_rate)
                     / (_f32(1) + _f32(self.decay_rate) * self._ratio(step)))


class CosineDecay(LearningRateSchedule):
    """Cosine decay from ``initial_learning_rate`` (or, after a linear warmup of
    ``warmup_steps`` to ``warmup_target``, from that) down to ``alpha`` times it over
    ``decay_steps``: ``lr = from · ((1 − alpha) · ½(1 + cos(π · t / decay_steps)) + alpha)``,
    t held at ``decay_steps``."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        _positive_steps("CosineDecay", decay_steps)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_target = warmup_target
        self.warmup_steps = warmup_steps

    def _decay(self, step, decay_steps, decay_from):
        cosine = _f32(0.5) * (_f32(1) + np.cos(_f32(math.pi) * (step / decay_steps)))
        return decay_from * (_f32(1 - self.alpha) * cosine + _f32(self.alpha))

    def __call__(self, step) -> float:
        initial = _f32(self.initial_learning_rate)
        decay_steps, global_step = _f32(self.decay_steps), _f32(step)
        if self.warmup_target is None:
            return float(self._decay(min(global_step, decay_steps), decay_steps, initial))
        target, warmup_steps = _f32(self.warmup_target), _f32(self.warmup_steps)
        global_step = min(global_step, decay_steps + warmup_steps)
        if global_step < warmup_steps:
            return float((target - initial) * (global_step / warmup_steps) + initial)
        return float(self._decay(global_step - warmup_steps, decay_steps, target))

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}
