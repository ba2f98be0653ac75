"""Finite-difference gradient checks: does a layer's hand-written backward match its forward?

The check follows Chainer's recipe: draw a random upstream gradient ``dy``, define the scalar
``L = Σ y ⊙ dy`` (whose gradient with respect to ``y`` is exactly ``dy``), and compare what
``backward(dy)`` returns with central differences ``(L(θ + h) − L(θ − h)) / 2h`` for the input
and every parameter. Run it in float64: in float32 the differences are mostly rounding noise.

Example:
    >>> import numpy as np, nnlite
    >>> layer = nnlite.layers.Dense(3, activation="tanh", dtype="float64")
    >>> errors = check_layer(layer, np.random.default_rng(0).normal(size=(4, 5)))
    >>> max(errors.values()) < 1e-6
    True
"""

from __future__ import annotations

import numpy as np

__all__ = ["numerical_gradient", "relative_error", "check_layer", "layer_gradients"]


def numerical_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar function ``f()`` with respect to array ``x``.

    ``x`` is perturbed in place, one entry at a time, and restored.

    Math:
        ∂f/∂x_i ≈ (f(x + h·e_i) − f(x − h·e_i)) / 2h        (error O(h²))
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = float(f())
        flat[i] = old - h
        minus = float(f())
        flat[i] = old
        grad.reshape(-1)[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(a, b) -> float:
    """``‖a − b‖ / max(‖a‖ + ‖b‖, tiny)``: 0 for equal arrays, ~1 for unrelated ones."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


def layer_gradients(layer, x, dy, training: bool = False) -> dict:
    """Analytic gradients from one forward and backward pass: ``{"input": dx, name: dparam}``."""
    saved = layer.input_grad
    layer.input_grad = True
    try:
        layer(x, training=training)
        dx = layer.backward(dy)
    finally:
        layer.input_grad = saved
    return {"input": dx, **{k: np.array(v) for k, v in layer.grads.items()}}


def check_layer(layer, x, dy=None, h: float = 1e-6, seed: int = 0) -> dict:
    """Relative error between backward and central differences, for the input and each parameter.

    Args:
        layer: an nnlite layer (built on first call); use float64 parameters.
        x: float64 input batch.
        dy: upstream gradient; a seeded standard normal when omitted.
        h: finite-difference step.

    Returns:
        ``{"input": err, "kernel": err, ...}``.
    """
    x = np.array(x, dtype=np.float64)
    y = layer(x)
    if dy is None:
        dy = np.random.default_rng(seed).standard_normal(y.shape)

    def loss():
        return np.sum(layer(x) * dy)

    analytic = layer_gradients(layer, x, dy)
    errors = {"input": relative_error(analytic["input"], numerical_gradient(loss, x, h))}
    for key, param in layer.params.items():
        errors[key] = relative_error(analytic[key], numerical_gradient(loss, param, h))
    return errors
