"""Activation layers: ``Activation(name)``, ``ReLU`` and ``Softmax``, each without parameters."""

from __future__ import annotations

from nnlite import activations
from nnlite import functional as F
from nnlite.layers.base import Layer


class Activation(Layer):
    """Apply an activation element-wise (softmax along the last axis).

    Args:
        activation: a name ("relu", "sigmoid", "tanh", "softmax", "linear") or function.

    Math:
        forward   y = f(x)           backward  dx = f'(x) ⊙ dy   (softmax: y ⊙ (dy − Σ dy·y))
    """

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def forward(self, x, training=False):
        y = self.activation.forward(x)
        self._cache = (x, y)
        return y

    @property
    def logits(self):
        """The input of the last forward pass (the logits, when this is a softmax)."""
        return self._cache[0]

    def backward(self, dy):
        x, y = self._cache
        return self.activation.backward(dy, x, y)

    def backward_from_logits(self, dz):
        """Pass through a gradient already taken w.r.t. the input (fused softmax + CE)."""
        return dz

    def get_config(self):
        return {**super().get_config(), "activation": self.activation.name}


class Softmax(Activation):
    """Softmax over the last axis, as ``keras.layers.Softmax()``.

    Math:
        forward   y = exp(x − max x) / Σ exp(x − max x)
        backward  dx = y ⊙ (dy − Σ_k dy_k y_k)
    """

    def __init__(self, axis: int = -1, **kwargs):
        if axis != -1:
            raise ValueError(f"Softmax: only `axis=-1` is supported, received {axis!r}")
        super().__init__("softmax", **kwargs)
        self.axis = axis

    def get_config(self):
        config = {**super().get_config(), "axis": self.axis}
        del config["activation"]  # always softmax: not a constructor argument
        return config


class ReLU(Layer):
    """Rectified linear unit with Keras's options.

    Args:
        max_value: upper saturation (None: unbounded).
        negative_slope: slope for x < threshold (0: plain ReLU).
        threshold: where the linear part starts.

    Math:
        forward   y = max_value           if x ≥ max_value
                  y = x                   if threshold < x < max_value (x ≥ threshold when slope=0)
                  y = slope·(x − threshold) otherwise
        backward  dx = dy · (1 on the linear part, slope below threshold, 0 at saturation)
    """

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0,
                 threshold: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if max_value is not None and max_value < 0:
            raise ValueError(f"ReLU: expected `max_value` >= 0, received {max_value!r}")
        if negative_slope < 0:
            raise ValueError(f"ReLU: expected `negative_slope` >= 0, received {negative_slope!r}")
        if threshold < 0:
            raise ValueError(f"ReLU: expected `threshold` >= 0, received {threshold!r}")
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def _plain(self):
        return self.max_value is None and self.negative_slope == 0 and self.threshold == 0

    def forward(self, x, training=False):
        self._cache = x
        if self._plain():
            return F.relu(x)
        xp = F.get_array_module(x)
        above = x > self.threshold
        y = xp.where(above, x, x.dtype.type(self.negative_slope) * (x - self.threshold))
        if self.max_value is not None:
            y = xp.minimum(y, x.dtype.type(self.max_value))
        return y.astype(x.dtype, copy=False)

    def backward(self, dy):
        x = self._cache
        if self._plain():
            return F.relu_backward(dy, x)
        slope = (x > self.threshold) + (x <= self.threshold) * x.dtype.type(self.negative_slope)
        if self.max_value is not None:
            slope = slope * (x < self.max_value)
        return (dy * slope).astype(dy.dtype, copy=False)

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value,
                "negative_slope": self.negative_slope, "threshold": self.threshold}
