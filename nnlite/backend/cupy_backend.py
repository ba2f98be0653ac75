"""The CuPy backend: parameters, optimizer state and the dataset live on a CUDA GPU.

The math is the base class's ``xp`` code running on CuPy arrays (cuBLAS GEMMs, CuPy reductions);
this class overrides what gains from fusion: bias + activation forward, the activation
gradient, and the optimizer updates, each one ``ElementwiseKernel`` built on first use and
memoised. The training set is uploaded once per ``fit`` (:meth:`CupyBackend.to_device`), batches
are gathered on the device, and the loss and metrics accumulate on the device, so an epoch
synchronises with the host only for the progress display.

Selecting it checks that a CUDA device really works (a tiny allocation and kernel), and turns
CUDA out-of-memory errors into :class:`nnlite.backend.OutOfDeviceMemory`.
"""

from __future__ import annotations

import functools

import cupy
import numpy as np

from nnlite.backend import BackendUnavailable
from nnlite.backend.numpy_backend import Backend

_FORWARD = {
    "relu": "y = z > 0 ? z : (T)0",
    "sigmoid": "y = (T)1 / ((T)1 + exp(-z))",
    "tanh": "y = tanh(z)",
}
_BACKWARD = {
    "relu": "dz = z > 0 ? dy : (T)0",
    "sigmoid": "dz = dy * y * ((T)1 - y)",
    "tanh": "dz = dy * ((T)1 - y * y)",
}


@functools.lru_cache(maxsize=None)
def _kernel(name: str):
    """Build (once) the element-wise kernel ``name``."""
    E = cupy.ElementwiseKernel
    if name.startswith("forward_"):
        body = _FORWARD[name[len("forward_"):]]
        return E("raw T bias, int64 m, bool has_bias", "T z, T y",
                 f"if (has_bias) z = z + bias[i % m]; {body};", f"nnlite_{name}")
    if name.startswith("backward_"):
        body = _BACKWARD[name[len("backward_"):]]
        return E("T dy, T z, T y", "T dz", f"{body};", f"nnlite_{name}")
    if name == "sgd":
        return E("T g, T lr", "T p", "p -= g * lr;", "nnlite_sgd")
    if name == "sgd_momentum":
        return E("T g, T lr, T mu, bool nesterov", "T p, T v",
                 "T step = g * lr; v = v * mu - step; p += nesterov ? v * mu - step : v;",
                 "nnlite_sgd_momentum")
    if name == "adam":
        return E("T g, T alpha, T c1, T c2, T eps", "T p, T m, T v",
                 "m = m + (g - m) * c1; v = v + (g * g - v) * c2;"
                 "p -= (m * alpha) / (sqrt(v) + eps);", "nnlite_adam")
    if name == "rmsprop":
        return E("T g, T lr, T rho, T c, T eps", "T p, T v",
                 "v = v * rho + c * (g * g); p -= (lr * g) / sqrt(v + eps);", "nnlite_rmsprop")
    raise KeyError(name)


class CupyBackend(Backend):
    """GPU backend on CuPy (``pip install nnlite[gpu]``)."""

    name = "cupy"
    memory_errors = (MemoryError, cupy.cuda.memory.OutOfMemoryError)

    def __init__(self):
        super().__init__()
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise BackendUnavailable("the 'cupy' backend found no CUDA device")
            probe = cupy.arange(8, dtype=cupy.float32)
            if float((probe * 2).sum()) != 56.0:
                raise BackendUnavailable("the 'cupy' backend's test kernel gave a wrong result")
        except BackendUnavailable:
            raise
        except Exception as exc:  # CUDA driver/runtime errors have many types
            raise BackendUnavailable(f"the 'cupy' backend found no working CUDA device: {exc}")
        self.xp = cupy

    def asarray(self, x, dtype=None):
        return cupy.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        return cupy.asnumpy(x) if isinstance(x, cupy.ndarray) else np.asarray(x)

    def synchronize(self) -> None:
        cupy.cuda.Device().synchronize()

    def to_device(self, data):
        """Upload a whole dataset once (``fit`` calls this before the first epoch)."""
        return cupy.asarray(data)

    def gather(self, data, index, dtype, out=None):
        if not isinstance(data, cupy.ndarray):
            data = cupy.asarray(data)
        rows = cupy.take(data, cupy.asarray(index), axis=0)
        if out is None:
            return rows.astype(dtype, copy=False)
        out[...] = rows
        return out

    def dense_forward(self, x, kernel, bias, activation, out=None):
        if activation.name not in _FORWARD:
            return super().dense_forward(x, kernel, bias, activation, out)
        z_out, y_out = out if out is not None else (None, None)
        z = self.matmul(x, kernel, out=z_out)
        y = y_out if y_out is not None else cupy.empty_like(z)
        has_bias = bias is not None
        _kernel("forward_" + activation.name)(bias if has_bias else z, z.shape[1], has_bias,
                                              z, y)
        return z, y

    def dense_backward(self, dy, x, kernel, z, y, activation, need_dx=True, out=None):
        if activation.name not in _BACKWARD:
            return super().dense_backward(dy, x, kernel, z, y, activation, need_dx, out)
        dkernel_out, dbias_out, dx_out, dz_out = out or (None, None, None, None)
        dz = dz_out if dz_out is not None else cupy.empty_like(dy)
        _kernel("backward_" + activation.name)(dy, z, y, dz)
        dkernel = self.matmul(x.T, dz, out=dkernel_out)
        dbias = dz.sum(axis=0, out=dbias_out)
        dx = self.matmul(dz, kernel.T, out=dx_out) if need_dx else None
        return dx, dkernel, dbias

    def sgd_update(self, param, grad, lr, momentum=None, velocity=None, nesterov=False):
        if velocity is None:
            _kernel("sgd")(grad, lr, param)
        else:
            _kernel("sgd_momentum")(grad, lr, momentum, bool(nesterov), param, velocity)

    def adam_update(self, param, grad, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
        _kernel("adam")(grad, alpha, one_minus_beta_1, one_minus_beta_2, epsilon, param, m, v)

    def rmsprop_update(self, param, grad, v, lr, rho, one_minus_rho, epsilon,
                       momentum=None, velocity=None, mean_grad=None):
        if momentum is not None or mean_grad is not None:
            return super().rmsprop_update(param, grad, v, lr, rho, one_minus_rho, epsilon,
                                          momentum, velocity, mean_grad)
        _kernel("rmsprop")(grad, lr, rho, one_minus_rho, epsilon, param, v)
