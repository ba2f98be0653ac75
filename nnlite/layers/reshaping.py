"""Flatten and Reshape: change the view of each sample; gradients flow back reshaped."""

from __future__ import annotations

import math

from nnlite.layers.base import Layer, normalize_shape


class Flatten(Layer):
    """Flatten each sample to one axis: (N, d1, d2, ...) -> (N, d1·d2·...).

    Math:
        forward   y = reshape(x, (N, −1))        backward  dx = reshape(dy, x.shape)
    """

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        size = None if any(s is None for s in rest) else math.prod(rest)
        return (input_shape[0], size)

    def forward(self, x, training=False):
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._cache)


class Reshape(Layer):
    """Reshape each sample to ``target_shape`` (one entry may be −1), as ``keras.layers.Reshape``.

    Math:
        forward   y = reshape(x, (N,) + target_shape)        backward  dx = reshape(dy, x.shape)

    Example:
        ``Reshape((28, 28))`` turns flat MNIST rows (N, 784) into sequences (N, 28, 28).
    """

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = normalize_shape(target_shape)
        if sum(1 for s in self.target_shape if s == -1) > 1:
            raise ValueError(
                f"Reshape: at most one -1 is allowed in `target_shape`, received {target_shape}"
            )

    def compute_output_shape(self, input_shape):
        size = math.prod(input_shape[1:])
        known = math.prod(s for s in self.target_shape if s != -1)
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(self._mismatch(input_shape))
            shape = tuple(size // known if s == -1 else s for s in self.target_shape)
        else:
            shape = self.target_shape
        if math.prod(shape) != size:
            raise ValueError(self._mismatch(input_shape))
        return (input_shape[0],) + shape

    def _mismatch(self, input_shape):
        return (
            f"Layer {self.name!r} (Reshape) cannot reshape inputs of shape {tuple(input_shape)} "
            f"to target_shape {self.target_shape}"
        )

    def forward(self, x, training=False):
        self._cache = x.shape
        return x.reshape((x.shape[0],) + self.output_shape[1:])

    def backward(self, dy):
        return dy.reshape(self._cache)

    def get_config(self):
        return {**super().get_config(), "target_shape": self.target_shape}
