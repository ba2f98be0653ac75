"""The CuPy backend: parameters, optimizer state and the dataset live on a CUDA GPU.

The math is the base class's ``xp`` code running on CuPy arrays (cuBLAS GEMMs, CuPy reductions);
this class overrides what gains from fusion, each one ``ElementwiseKernel`` built on first use
and memoised:

- Dense forward: bias + activation (relu, sigmoid, tanh) after the cuBLAS GEMM; Dense
  backward: that activation's gradient before the GEMMs;
- SGD / momentum / Adam / RMSprop (without momentum or centering): one pass over a parameter;
- one LSTM time step: forward (gates + h·recurrent_kernel, the four gate activations written
  back into ``gates``, c, φ(c) and h) in one kernel, backward (dh + dy, the four gate gradients
  and dc_t → dc_{t−1} in place) in another; one thread per cell element (n, j) reads its four
  gate columns. Activations tanh, sigmoid, relu and linear, float32 and float64.

The training set is uploaded once per ``fit`` (:meth:`CupyBackend.to_device`), batches
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

# The LSTM cell's activations as expressions of a plain variable ``{x}``, and their gradients
# ``dy · f'`` taken from the output ``{y}`` as the base class takes them (σ' = y(1 − y),
# tanh' = 1 − y², relu' = [y > 0], linear' = 1). Constants are (T)1 so float32 stays float32.
_LSTM_ACTIVATION = {
    "linear": "{x}",
    "relu": "({x} <= (T)0 ? (T)0 : {x})",  # NaN passes, as np.maximum(x, 0) lets it
    "sigmoid": "((T)1 / ((T)1 + exp(-{x})))",  # exp overflows to inf for x ≪ 0: exactly 0
    "tanh": "tanh({x})",
}
_LSTM_GRADIENT = {
    "linear": "{dy}",
    "relu": "{dy} * ({y} > (T)0 ? (T)1 : (T)0)",
    "sigmoid": "{dy} * {y} * ((T)1 - {y})",
    "tanh": "{dy} * ((T)1 - {y} * {y})",
}
_LSTM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# One thread per element i of the (N, U) cell: row n = i / U, column j = i − n·U. Gate k
# (0 i, 1 f, 2 g, 3 o; Keras's order) of that element is gates[n·4U + k·U + j] = gates[at + k·u].
_LSTM_INDEX = "const ptrdiff_t row = i / u; const ptrdiff_t at = row * 4 * u + (i - row * u);"


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


def _lstm_fn(name: str, x: str) -> str:
    """CUDA expression of activation ``name`` at the variable ``x``."""
    return _LSTM_ACTIVATION[name].format(x=x)


def _lstm_grad(name: str, dy: str, y: str) -> str:
    """CUDA expression of ``dy · f'`` for activation ``name``, from its output variable ``y``."""
    return "(" + _LSTM_GRADIENT[name].format(dy=f"({dy})", y=y) + ")"


@functools.lru_cache(maxsize=None)
def _lstm_kernel(direction: str, activation: str, recurrent_activation: str):
    """Build (once) the LSTM cell kernel ``direction`` ("forward" or "backward") for φ, σ.

    ``gates`` (forward) and ``dz`` (backward) are (N, 4U) and ``raw``: indexed by hand, see
    ``_LSTM_INDEX``; the other arrays are the (N, U) cell elements the kernel runs over.
    """
    act, rec = activation, recurrent_activation
    name = f"nnlite_lstm_{direction}_{act}_{rec}"
    if direction == "forward":
        # z (pre-activations) is read, gates (their activations) written: both (N, 4U), raw.
        body = (
            _LSTM_INDEX
            + " const T zi = z[at];"
            " const T zf = z[at + u];"
            " const T zg = z[at + 2 * u];"
            " const T zo = z[at + 3 * u];"
            f" const T gi = {_lstm_fn(rec, 'zi')};"
            f" const T gf = {_lstm_fn(rec, 'zf')};"
            f" const T gg = {_lstm_fn(act, 'zg')};"
            f" const T go = {_lstm_fn(rec, 'zo')};"
            " gates[at] = gi; gates[at + u] = gf; gates[at + 2 * u] = gg; gates[at + 3 * u] = go;"
            " const T cell = gf * c_prev + gi * gg;"
            f" const T act_cell = {_lstm_fn(act, 'cell')};"
            " c = cell; act_c = act_cell; h = go * act_cell;"
        )
        return cupy.ElementwiseKernel("raw T z, T c_prev, int64 u",
                                      "raw T gates, T c, T act_c, T h", body, name)
    if direction == "backward":
        # dc is read (∂L/∂c_t) and overwritten (∂L/∂c_{t−1}): an output.
        body = (
            _LSTM_INDEX
            + " const T gi = gates[at];"
            " const T gf = gates[at + u];"
            " const T gg = gates[at + 2 * u];"
            " const T go = gates[at + 3 * u];"
            " const T d = has_dy ? dh + dy : dh;"
            f" const T dct = dc + {_lstm_grad(act, 'd * go', 'act_c')};"
            f" dz[at] = {_lstm_grad(rec, 'dct * gg', 'gi')};"
            f" dz[at + u] = {_lstm_grad(rec, 'dct * c_prev', 'gf')};"
            f" dz[at + 2 * u] = {_lstm_grad(act, 'dct * gi', 'gg')};"
            f" dz[at + 3 * u] = {_lstm_grad(rec, 'd * act_c', 'go')};"
            " dc = dct * gf;"
        )
        return cupy.ElementwiseKernel(
            "T dh, T dy, bool has_dy, raw T gates, T c_prev, T act_c, int64 u",
            "T dc, raw T dz", body, name)
    raise KeyError(direction)


def _lstm_fusable(activation, recurrent_activation, arrays) -> bool:
    """Whether the fused cell kernels run: activations they know, one float dtype, all arrays
    C-contiguous (the base class's ``xp`` code takes everything else)."""
    if activation.name not in _LSTM_ACTIVATION or recurrent_activation.name not in _LSTM_ACTIVATION:
        return False
    dtype = arrays[0].dtype
    return dtype in _LSTM_DTYPES and all(a.dtype == dtype and a.flags.c_contiguous
                                         for a in arrays)


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

    # -- LSTM ----------------------------------------------------------------------------------

    def lstm_cell_forward(self, z, c_prev, activation, recurrent_activation, out=None):
        """One kernel launch: the gate activations of ``z`` into ``gates``, c, φ(c), h.

        Math as :meth:`Backend.lstm_cell_forward`; ``z`` is only read. ``out`` entries that
        are None are allocated, as the base class does.
        """
        shape = c_prev.shape
        outs = out if out is not None else (None, None, None, None)
        if (len(shape) != 2 or z.shape != (shape[0], 4 * shape[1])
                or (outs[0] is not None and outs[0].shape != z.shape)
                or any(o is not None and o.shape != shape for o in outs[1:])
                or not _lstm_fusable(activation, recurrent_activation,
                                     (z, c_prev) + tuple(o for o in outs if o is not None))):
            return super().lstm_cell_forward(z, c_prev, activation, recurrent_activation, out)
        gates, c, act_c, h = (o if o is not None else cupy.empty_like(like)
                              for o, like in zip(outs, (z, c_prev, c_prev, c_prev)))
        _lstm_kernel("forward", activation.name, recurrent_activation.name)(
            z, c_prev, shape[1], gates, c, act_c, h)
        return gates, c, act_c, h

    def lstm_cell_backward(self, dh, dy, dc, gates, c_prev, act_c, activation,
                           recurrent_activation, out=None):
        """One kernel launch: dz for the four gates, and ``dc`` from dc_t to dc_{t−1} in place.

        Math as :meth:`Backend.lstm_cell_backward`; ``dh`` and ``dy`` are only read.
        """
        if dy is not None:
            dy = cupy.asarray(dy, dtype=dh.dtype)
        shape = dc.shape
        cells = (dh, dc, c_prev, act_c) + (() if dy is None else (dy,))
        given = () if out is None else (out,)
        if (len(shape) != 2 or gates.shape != (shape[0], 4 * shape[1])
                or any(a.shape != shape for a in cells)
                or any(o.shape != gates.shape for o in given)
                or not _lstm_fusable(activation, recurrent_activation,
                                     cells + (gates,) + given)):
            return super().lstm_cell_backward(dh, dy, dc, gates, c_prev, act_c, activation,
                                              recurrent_activation, out)
        dz = out if out is not None else cupy.empty_like(gates)
        # Without dy the kernel reads dh in its place and adds nothing (has_dy is false).
        _lstm_kernel("backward", activation.name, recurrent_activation.name)(
            dh, dh if dy is None else dy, dy is not None, gates, c_prev, act_c, shape[1], dc, dz)
        return dz
