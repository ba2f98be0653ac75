"""The reference backend: every hot kernel written once in plain array code (``xp``).

Other backends subclass :class:`Backend` and override only the kernels they speed up; the math
here is the specification they are tested against.
"""

from __future__ import annotations

import numpy

from nnlite import functional as F


class Backend:
    """Array module plus one method per hot kernel, implemented with ``self.xp``.

    Attributes:
        name: registry name ("numpy").
        xp: the array module (``numpy`` here, ``cupy`` on the GPU backend).
    """

    name = "numpy"
    #: Exceptions meaning "the device ran out of memory" (the CuPy backend adds CUDA's).
    memory_errors: tuple = (MemoryError,)

    def __init__(self):
        self.xp = numpy

    # -- arrays --------------------------------------------------------------------------------

    def asarray(self, x, dtype=None):
        """Return ``x`` as an array of this backend (no copy when it already is one)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        """Return ``x`` as a NumPy array (a device-to-host copy on GPU backends)."""
        return numpy.asarray(x)

    def synchronize(self) -> None:
        """Wait for queued work to finish (a no-op on the CPU)."""

    def to_device(self, data):
        """Where a dataset lives during ``fit``: unchanged on the CPU, uploaded once on a GPU."""
        return data

    def gather(self, data, index, dtype, out=None):
        """Rows ``data[index]`` cast to ``dtype``: the batch a training step reads.

        Shapes:
            data: (N, ...)   index: (B,) integers   ->  (B, ...)   (written to ``out`` if given)
        """
        rows = data[index]
        if out is None:
            return self.asarray(rows.astype(dtype, copy=False))
        out[...] = self.asarray(rows)
        return out

    def matmul(self, a, b, out=None):
        """``a · b`` (BLAS on the CPU, cuBLAS on the GPU), into ``out`` when given."""
        return self.xp.matmul(a, b, out=out)

    # -- layers --------------------------------------------------------------------------------

    def dense_forward(self, x, kernel, bias, activation, out=None):
        """Fused Dense forward: ``z = x · kernel + bias``, ``y = activation(z)``.

        Args:
            out: optional preallocated ``(z, y)`` buffers of shape (N, M).

        Returns:
            ``(z, y)``; for a linear activation ``y`` is ``z``.
        """
        z = self.matmul(x, kernel, out=None if out is None else out[0])
        if bias is not None:
            z += bias
        return z, activation.forward(z)

    def dense_backward(self, dy, x, kernel, z, y, activation, need_dx=True, out=None):
        """Fused Dense backward: ``dz = f'(z) ⊙ dy``, then the affine gradients.

        Math:
            dkernel = xᵀ · dz      dbias = Σ_n dz[n]      dx = dz · kernelᵀ

        Args:
            need_dx: skip ``dx`` (returned as None) when False.
            out: optional preallocated ``(dkernel, dbias, dx, dz)``; entries may be None.

        Returns:
            ``(dx, dkernel, dbias)``.
        """
        dkernel_out, dbias_out, dx_out, _ = out or (None, None, None, None)
        dz = activation.backward(dy, z, y)
        dkernel = self.matmul(x.T, dz, out=dkernel_out)
        dbias = dz.sum(axis=0, out=dbias_out)
        dx = self.matmul(dz, kernel.T, out=dx_out) if need_dx else None
        return dx, dkernel, dbias

    def softmax_cross_entropy(self, logits, target):
        """Fused softmax cross-entropy: returns ``(mean loss, dlogits = (p − t) / N)``.

        ``target`` holds integer labels (N,) or one-hot rows (N, C).
        """
        return F.softmax_cross_entropy(logits, target)

    # -- optimizers (all in place) -------------------------------------------------------------

    def sgd_update(self, param, grad, lr, momentum=None, velocity=None, nesterov=False):
        """SGD in place, with Keras's momentum form.

        Math:
            plain      p ← p − lr·g
            momentum   v ← μ·v − lr·g;  p ← p + v            (nesterov: p ← p + μ·v − lr·g)
        """
        if velocity is None:
            param -= grad * lr
            return
        velocity *= momentum
        velocity -= grad * lr
        if nesterov:
            param += velocity * momentum - grad * lr
        else:
            param += velocity

    def adam_update(self, param, grad, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
        """Adam in place, epsilon-hat form (bias correction folded into ``alpha``).

        Math:
            m ← m + (g − m)(1 − β₁)      v ← v + (g² − v)(1 − β₂)
            p ← p − alpha · m / (√v + ε̂)      alpha = lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ)
        """
        m += (grad - m) * one_minus_beta_1
        v += (grad * grad - v) * one_minus_beta_2
        param -= (m * alpha) / (self.xp.sqrt(v) + epsilon)

    def rmsprop_update(self, param, grad, v, lr, rho, one_minus_rho, epsilon,
                       momentum=None, velocity=None, mean_grad=None):
        """RMSprop in place, Keras's form (epsilon inside the square root).

        Math:
            v ← ρ·v + (1 − ρ)·g²            (centered: ḡ ← ρ·ḡ + (1 − ρ)·g;  d = v − ḡ²)
            step = lr · g / √(d + ε)        with d = v when not centered
            p ← p − step                     (momentum: u ← μ·u + step;  p ← p − u)
        """
        v *= rho
        v += one_minus_rho * (grad * grad)
        denominator = v
        if mean_grad is not None:
            mean_grad *= rho
            mean_grad += one_minus_rho * grad
            denominator = v - mean_grad * mean_grad
        step = (lr * grad) / self.xp.sqrt(denominator + epsilon)
        if velocity is None:
            param -= step
        else:
            velocity *= momentum
            velocity += step
            param -= velocity
