"""The pure math nnlite is built from: forward and backward functions, one pair per operation.

Every layer, loss and backend kernel in nnlite is assembled from these functions, so a learner can
write a training loop by hand (as the TF1 and GradientTape notebooks do) with exactly the numbers
the layers compute. Each function works on NumPy or CuPy arrays alike and keeps the input dtype.

Conventions: ``x`` is a layer input of shape (N, D) (N samples in rows, as Keras), ``y`` its output,
``dy`` the gradient of the loss with respect to ``y`` (the upstream gradient) and ``dx`` the one
returned downstream. A ``*_backward`` function takes ``dy`` first and never modifies it.

Example (one step of a 784-1024-10 network, written out):
    >>> z1 = dense_forward(x, w1, b1); h = relu(z1)
    >>> z2 = dense_forward(h, w2, b2)
    >>> loss, dz2 = softmax_cross_entropy(z2, labels)
    >>> dh, dw2, db2 = dense_backward(dz2, h, w2)
    >>> dz1 = relu_backward(dh, z1)
    >>> _, dw1, db1 = dense_backward(dz1, x, w1, need_dx=False)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "get_array_module",
    "dense_forward",
    "dense_backward",
    "linear",
    "linear_backward",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "tanh",
    "tanh_backward",
    "softmax",
    "softmax_backward",
    "log_softmax",
    "softmax_cross_entropy",
    "mean_squared_error",
]


def get_array_module(*arrays):
    """Return the array module (``numpy`` or ``cupy``) that ``arrays`` belong to."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return np


# ----------------------------------------------------------------------------------------------
# Dense: an affine map
# ----------------------------------------------------------------------------------------------


def dense_forward(x, kernel, bias=None, out=None):
    """Affine map ``y = x · kernel + bias``.

    Shapes:
        x: (N, D)   kernel: (D, M)   bias: (M,) or None   y: (N, M)

    Math:
        y[n, m] = Σ_d x[n, d] · kernel[d, m] + bias[m]
    """
    xp = get_array_module(x)
    y = xp.matmul(x, kernel, out=out)
    if bias is not None:
        y += bias
    return y


def dense_backward(dy, x, kernel, need_dx=True):
    """Gradients of the affine map, given the upstream gradient ``dy``.

    Shapes:
        dy: (N, M)   x: (N, D)   kernel: (D, M)  ->  dx: (N, D)   dkernel: (D, M)   dbias: (M,)

    Math:
        dkernel = xᵀ · dy      dbias = Σ_n dy[n]      dx = dy · kernelᵀ

    Args:
        need_dx: when False, ``dx`` is returned as None and its GEMM is skipped (the first layer
            of a network does not need the gradient with respect to the data).

    Returns:
        ``(dx, dkernel, dbias)``.
    """
    dkernel = x.T @ dy
    dbias = dy.sum(axis=0)
    dx = dy @ kernel.T if need_dx else None
    return dx, dkernel, dbias


# ----------------------------------------------------------------------------------------------
# Activations: fn(x) -> y and fn_backward(dy, x or y) -> dx
# ----------------------------------------------------------------------------------------------


def linear(x):
    """Identity activation ``y = x``."""
    return x


def linear_backward(dy, x=None, y=None):
    """Gradient of the identity: ``dx = dy``."""
    return dy


def relu(x):
    """Rectified linear unit ``y = max(x, 0)``."""
    xp = get_array_module(x)
    return xp.maximum(x, 0)


def relu_backward(dy, x, y=None):
    """Gradient of ReLU: ``dx = dy · [x > 0]`` (the subgradient 0 is taken at x = 0, as TF does)."""
    # Multiplying by the boolean mask keeps dy's dtype (bool promotes to any float type).
    return dy * (x > 0)


def sigmoid(x):
    """Logistic function ``y = 1 / (1 + exp(-x))``."""
    # TensorFlow computes e / (1 + e) with e = exp(x) (Eigen's logistic) in float64 and a rational
    # approximation in float32: they differ from this by ≤ 4e-16 and ≤ 5e-7 (tests/reference).
    xp = get_array_module(x)
    # exp(-x) overflows to inf for x < -88 (float32) and the quotient is then exactly 0: silence it.
    with np.errstate(over="ignore"):
        return 1 / (1 + xp.exp(-x))


def sigmoid_backward(dy, x=None, y=None):
    """Gradient of the logistic function from its output: ``dx = dy · y · (1 - y)``."""
    return dy * y * (1 - y)


def tanh(x):
    """Hyperbolic tangent ``y = tanh(x)``."""
    xp = get_array_module(x)
    return xp.tanh(x)


def tanh_backward(dy, x=None, y=None):
    """Gradient of tanh from its output: ``dx = dy · (1 - y²)``."""
    return dy * (1 - y * y)


def softmax(x, axis=-1):
    """Softmax along ``axis``: ``y_k = exp(x_k - max x) / Σ_j exp(x_j - max x)``.

    Subtracting the row maximum leaves the result unchanged and keeps exp from overflowing.
    """
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def softmax_backward(dy, x=None, y=None, axis=-1):
    """Gradient of softmax from its output (a Jacobian-vector product, no Jacobian built).

    Math:
        ∂y_k/∂x_j = y_k (δ_kj − y_j)   so   dx_j = y_j · (dy_j − Σ_k dy_k y_k)
    """
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    """Stable ``log softmax(x) = x − max x − log Σ exp(x − max x)``."""
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


# ----------------------------------------------------------------------------------------------
# Losses: value and gradient together
# ----------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, target):
    """Mean cross-entropy of softmax(logits) against ``target`` and its gradient, fused and stable.

    Shapes:
        logits: (N, C)   target: (N,) integer labels or (N, C) probabilities (one-hot)
        -> loss: scalar   dlogits: (N, C)

    Math:
        p = softmax(z)      loss = −(1/N) Σ_n Σ_c t[n, c] · log p[n, c]
        dlogits = (p − t) / N

    Stable: the row maximum is subtracted before the exponentials, so logits of ±1e4 give a
    finite loss and gradient; the softmax Jacobian is never formed. The exponentials are taken
    in the logits' dtype, their row sums and everything after them in float64, as the Numba
    kernel does (:func:`nnlite.backend.numba_kernels.softmax_xent_sparse`): for a saturated row
    (the true class's p within an ulp of 1) ``p − 1`` in float32 would be mostly rounding error,
    which Adam's normalised step then magnifies, while in float64 it keeps its float32 digits.
    """
    xp = get_array_module(logits)
    n = logits.shape[0]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = xp.exp(shifted)
    s = e.sum(axis=-1, keepdims=True, dtype=xp.float64)
    logp = shifted - xp.log(s)  # float64
    p = e / s
    if target.ndim == logits.ndim:
        loss = -(target * logp).sum() / n
        p -= target
    else:
        rows = xp.arange(n)
        loss = -logp[rows, target].sum() / n
        p[rows, target] -= 1
    p /= n
    return loss.astype(logits.dtype), p.astype(logits.dtype)


def mean_squared_error(y_pred, y_true):
    """Mean squared error averaged over features then over the batch, and its gradient.

    Shapes:
        y_pred, y_true: (N, D)   ->  loss: scalar   dy_pred: (N, D)

    Math:
        loss = (1/N) Σ_n (1/D) Σ_d (y_pred − y_true)²      dy_pred = 2 (y_pred − y_true) / (N·D)
    """
    diff = y_pred - y_true
    loss = (diff * diff).mean()
    return loss, diff * (2 / diff.size)
