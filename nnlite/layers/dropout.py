"""Inverted dropout: zero a random fraction of inputs while training, identity at inference."""

from __future__ import annotations

from nnlite.layers.base import Layer
from nnlite.random import generator


class Dropout(Layer):
    """Randomly zero a fraction ``rate`` of the inputs during training (Srivastava et al., 2014).

    Args:
        rate: probability of dropping each entry, in [0, 1).
        seed: seed of a private generator for the masks (else the model's or the global one).

    Math (training; at inference y = x):
        mask[n, d] ~ Bernoulli(1 − rate)       s = mask / (1 − rate)
        forward   y = x ⊙ s                    backward  dx = dy ⊙ s
    Scaling by 1/(1 − rate) keeps E[y] = x, so nothing changes at inference ("inverted" dropout).
    """

    def __init__(self, rate: float, noise_shape=None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: expected `rate` in [0, 1), received {rate!r}")
        if noise_shape is not None:
            raise ValueError("Dropout: `noise_shape` is not supported; pass None")
        self.rate = float(rate)
        self.seed = seed
        if seed is not None:
            import numpy as np

            self._rng = np.random.default_rng(seed)

    def forward(self, x, training=False):
        if not training or self.rate == 0:
            self._cache = None
            return x
        keep = generator(self).random(x.shape) >= self.rate
        scale = keep.astype(x.dtype) / x.dtype.type(1 - self.rate)
        if type(x).__module__.startswith("cupy"):
            import cupy

            scale = cupy.asarray(scale)
        self._cache = scale
        return x * scale

    def backward(self, dy):
        return dy if self._cache is None else dy * self._cache

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
