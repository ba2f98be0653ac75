"""LSTM: a long short-term memory layer with backpropagation through time written by hand.

The layer walks the sequence (the backend's ``lstm_forward_sequence``): per step one GEMM gives
every gate pre-activation, ``[h_{t−1}, x_t, 1] · [recurrent_kernel; kernel; bias]``, and one fused
cell kernel (``lstm_cell_forward``) the gates, c_t and h_t; backward (``lstm_backward_sequence``)
walks it in reverse with ``lstm_cell_backward`` and one GEMM per step, and forms all three weight
gradients with one GEMM over all steps. The NumPy backend loops in Python; the Numba backend runs
each walk as one compiled function.

It also estimates the memory training needs (:func:`memory_estimate`) and refuses, before
allocating, a configuration that cannot fit (:class:`InsufficientMemoryError`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from nnlite import activations, config, initializers
from nnlite.backend import get_backend
from nnlite.layers.base import Layer

__all__ = [
    "LSTM",
    "InsufficientMemoryError",
    "MemoryEstimate",
    "memory_estimate",
    "check_memory",
    "available_memory",
]

_ALLOWED_ACTIVATIONS = ("tanh", "sigmoid", "relu", "linear")


class InsufficientMemoryError(MemoryError):
    """Training would need more memory than is available; raised before anything is allocated.

    Attributes:
        estimate: the :class:`MemoryEstimate` that did not fit.
        available: bytes available when it was checked.
        suggested_batch_size: the largest batch size that fits (0 when none does).
    """

    def __init__(self, message: str, estimate=None, available: int = 0,
                 suggested_batch_size: int = 0):
        super().__init__(message)
        self.estimate = estimate
        self.available = available
        self.suggested_batch_size = suggested_batch_size


class LSTM(Layer):
    """Long short-term memory layer, as ``keras.layers.LSTM`` (Hochreiter & Schmidhuber, 1997,
    with the forget gate of Gers, Schmidhuber & Cummins, 2000).

    Args:
        units: U, the size of the hidden and cell states (and of the output).
        activation: φ, for the candidate g, and for the cell state on its way out (default tanh).
        recurrent_activation: σ, for the input, forget and output gates (default sigmoid).
        return_sequences: return h for every step (N, T, U) instead of the last one (N, U).
        kernel_initializer: for ``kernel`` (D, 4U); glorot_uniform uses fan_in = D,
            fan_out = 4U, as Keras.
        recurrent_initializer: for ``recurrent_kernel`` (U, 4U); orthogonal by default.
        bias_initializer: for ``bias`` (4U,).
        unit_forget_bias: add 1 to the forget gate's bias at initialization (Jozefowicz et al.,
            2015): the bias is ``[b_init(U), ones(U), b_init(2U)]``, as Keras builds it.
        use_bias: whether the layer has ``bias``.

    Activations may be "tanh", "sigmoid", "relu" or "linear" (names or the nnlite.activations
    functions). The initial states h_0 and c_0 are zeros; there is no masking, dropout or
    ``return_state``.

    Shapes:
        x: (N, T, D)   kernel: (D, 4U)   recurrent_kernel: (U, 4U)   bias: (4U,)
        y: (N, U), or (N, T, U) with return_sequences
        Columns of the three weights are the gates in Keras's order i, f, c (called g below), o,
        so ``set_weights(keras_lstm.get_weights())`` gives the same outputs.

    Math (σ = recurrent_activation, φ = activation, ⊙ elementwise, h_0 = c_0 = 0):
        forward, for t = 1..T:
            z_t = x_t · kernel + h_{t−1} · recurrent_kernel + bias        z_t: (N, 4U)
                = xh_t · theta, one GEMM, with xh_t = [h_{t−1}, x_t, 1]       (N, U+D+1)
                  and theta = [recurrent_kernel; kernel; bias]               (U+D+1, 4U)
            [z_i z_f z_g z_o] = z_t                                       each (N, U)
            i = σ(z_i)   f = σ(z_f)   g = φ(z_g)   o = σ(z_o)
            c_t = f ⊙ c_{t−1} + i ⊙ g
            h_t = o ⊙ φ(c_t)                          y = h_T  (or [h_1 .. h_T])
        backward, for t = T..1, with dh_T^rec = dc_T^rec = 0:
            dh_t = dy_t + dh_t^rec                    (dy_t = 0 except at T without sequences)
            do   = dh_t ⊙ φ(c_t)
            dc_t = dc_t^rec + dh_t ⊙ o ⊙ φ'(c_t)
            di = dc_t ⊙ g    df = dc_t ⊙ c_{t−1}    dg = dc_t ⊙ i
            dz_t = [di ⊙ σ'(z_i)  df ⊙ σ'(z_f)  dg ⊙ φ'(z_g)  do ⊙ σ'(z_o)]    (N, 4U)
            dc_{t−1}^rec = dc_t ⊙ f           dh_{t−1}^rec = dz_t · recurrent_kernelᵀ
        then, summing over steps (one GEMM over the N·T rows of xh gives all three:
        [drecurrent_kernel; dkernel; dbias] = Σ_t xh_tᵀ · dz_t):
            dkernel = Σ_t x_tᵀ · dz_t                     (D, 4U)
            drecurrent_kernel = Σ_t h_{t−1}ᵀ · dz_t       (U, 4U)
            dbias = Σ_t Σ_n dz_t[n]                       (4U,)
            dx_t = dz_t · kernelᵀ                         (N, D)
        Derivatives come from the activations' outputs: σ'(z) = s(1 − s) for s = σ(z),
        tanh' = 1 − y², relu' = [y > 0], linear' = 1.

    Memory: forward keeps, time-major, xh (T, N, U+D+1), the gates' activations (T, N, 4U),
    c (T+1, N, U), h and φ(c) (T, N, U) for backward; see :func:`memory_estimate`. The
    first forward with a new batch shape checks the estimate against available memory and raises
    :class:`InsufficientMemoryError` (suggesting a batch size that fits) before allocating.

    Example:
        >>> model = nnlite.Sequential([nnlite.Input((784,)), nnlite.layers.Reshape((28, 28)),
        ...                            nnlite.layers.LSTM(128),
        ...                            nnlite.layers.Dense(10, activation="softmax")])
    """

    def __init__(self, units: int, activation="tanh", recurrent_activation="sigmoid",
                 return_sequences: bool = False, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias: bool = True, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"LSTM: expected `units` to be a positive int, received {units!r}")
        self.units = int(units)
        self.activation = _lstm_activation(activation, "activation")
        self.recurrent_activation = _lstm_activation(recurrent_activation,
                                                     "recurrent_activation")
        self.return_sequences = bool(return_sequences)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.use_bias = bool(use_bias)
        self._checked_shapes: set = set()

    # -- building ------------------------------------------------------------------------------

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                f"Layer {self.name!r} (LSTM) expects inputs of shape (batch, timesteps, "
                f"features), received {tuple(input_shape)}"
            )
        d, u = int(input_shape[-1]), self.units
        # Refuse before the parameters are allocated when even one sample cannot fit.
        if input_shape[1] is not None:
            check_memory(self, batch_size=1, seq_len=int(input_shape[1]), input_dim=d,
                         allocated=0)
        self.add_weight("kernel", (d, 4 * u), self.kernel_initializer)
        self.add_weight("recurrent_kernel", (u, 4 * u), self.recurrent_initializer)
        if self.use_bias:
            self.add_weight("bias", (4 * u,), self._bias_initializer)
        super().build(input_shape)

    def _bias_initializer(self, shape, dtype=None, rng=None):
        """Keras's bias: ``[b_init(U), ones(U), b_init(2U)]`` with unit_forget_bias."""
        if not self.unit_forget_bias:
            return self.bias_initializer(shape, dtype, rng=rng)
        u = self.units
        return np.concatenate([
            self.bias_initializer((u,), dtype, rng=rng),
            np.ones((u,), dtype=dtype or config.floatx()),
            self.bias_initializer((2 * u,), dtype, rng=rng),
        ])

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], input_shape[1], self.units)
        return (input_shape[0], self.units)

    # -- computation ---------------------------------------------------------------------------

    def _array(self, key, shape, dtype):
        """A reused buffer in the model's loops, a fresh array otherwise."""
        buf = self._buffer(key, shape, dtype)
        return buf if buf is not None else get_backend().xp.empty(shape, dtype=dtype)

    def _xh_width(self, d):
        """Columns of xh_t = [h_{t−1}, x_t, 1] (no column of ones without a bias)."""
        return self.units + d + int(self.use_bias)

    def forward(self, x, training=False):
        kernel = self.params["kernel"]
        if x.ndim != 3 or x.shape[-1] != kernel.shape[0]:
            raise ValueError(
                f"Layer {self.name!r} (LSTM) expects inputs of shape (batch, timesteps, "
                f"{kernel.shape[0]}), received shape {tuple(x.shape)}"
            )
        n, t, d = (int(s) for s in x.shape)
        if t < 1:
            raise ValueError(f"Layer {self.name!r} (LSTM) needs at least one time step, "
                             f"received shape {tuple(x.shape)}")
        if (n, t) not in self._checked_shapes:
            check_memory(self, batch_size=n, seq_len=t, input_dim=d)
            self._checked_shapes.add((n, t))
        backend = get_backend()
        u, dtype = self.units, kernel.dtype
        width = self._xh_width(d)
        # One GEMM per step computes every gate pre-activation: with xh_t = [h_{t−1}, x_t, 1]
        # and theta = [recurrent_kernel; kernel; bias], z_t = xh_t · theta. Time-major, so each
        # step reads and writes contiguous (N, ·) blocks; the walk writes h_t into xh_{t+1}.
        theta = self._array("theta", (width, 4 * u), dtype)
        theta[:u] = self.params["recurrent_kernel"]
        theta[u:u + d] = kernel
        if self.use_bias:
            theta[u + d] = self.params["bias"]
        xh = self._array("xh", (t, n, width), dtype)
        xh[0, :, :u] = 0  # h_0
        xh[:, :, u:u + d] = x.transpose(1, 0, 2)
        if self.use_bias:
            xh[:, :, u + d] = 1
        gates = self._array("gates", (t, n, 4 * u), dtype)
        c = self._array("c", (t + 1, n, u), dtype)
        # h_1..h_T, contiguous for the cell kernels and the output; the walk also copies h_t
        # into xh_{t+1}, where the next step's GEMM reads it.
        h = self._array("h", (t, n, u), dtype)
        act_c = self._array("act_c", (t, n, u), dtype)
        hz = self._array("hz", (n, 4 * u), dtype)
        c[0] = 0
        # Per step t = 1..T: z_t = xh_t · theta into hz, then the fused cell, which writes the
        # gates' activations [i f g o] into gates[t−1], and c_t, φ(c_t), h_t.
        backend.lstm_forward_sequence(xh, theta, gates, c, h, act_c, hz, self.activation,
                                      self.recurrent_activation)
        self._cache = (xh, gates, c, act_c)
        if not self.return_sequences:
            return h[t - 1]
        y = self._array("y", (n, t, u), dtype)
        y[...] = h.transpose(1, 0, 2)
        return y

    def backward(self, dy):
        xh, gates, c, act_c = self._cache
        t, n, width = xh.shape
        u = self.units
        d = width - u - int(self.use_bias)
        backend = get_backend()
        dtype = gates.dtype
        dz = self._array("dz", (t, n, 4 * u), dtype)
        dh = self._array("dh", (n, u), dtype)
        dc = self._array("dc", (n, u), dtype)
        if self.return_sequences:
            dy_tm = self._array("dy_tm", (t, n, u), dtype)
            dy_tm[...] = dy.transpose(1, 0, 2)
        else:
            dy_tm = dy[None]  # only h_T is an output: ∂L/∂h of the last step alone
        # Per step t = T..1: dz_t from the cell backward (dc_t^rec → dc_{t−1}^rec in place), then
        # dh_{t−1}^rec = dz_t·recurrent_kernelᵀ (not past t = 1: h_0 is a constant).
        backend.lstm_backward_sequence(dy_tm, gates, self.params["recurrent_kernel"], c, act_c,
                                       dh, dc, dz, self.activation, self.recurrent_activation)
        dz2 = dz.reshape(t * n, 4 * u)
        # Every weight gradient in one GEMM over the T·N rows of forward's xh:
        # Σ_t xh_tᵀ·dz_t = [drecurrent_kernel; dkernel; dbias], (U+D+1, 4U).
        wgrad = backend.matmul(xh.reshape(t * n, width).T, dz2,
                               out=self._array("wgrad", (width, 4 * u), dtype))
        for key, rows in (("recurrent_kernel", wgrad[:u]), ("kernel", wgrad[u:u + d]),
                          ("bias", wgrad[u + d:].reshape(-1))):
            if key in self.params:
                grad = self._grad_buffer(key)
                if grad is None:
                    self.grads[key] = rows.copy()
                else:
                    grad[...] = rows
        if not self.input_grad:
            return None
        # dx_t = dz_t·kernelᵀ, for a layer below.
        dx2 = backend.matmul(dz2, self.params["kernel"].T,
                             out=self._array("dx_tm", (t * n, d), dtype))
        dx = self._array("dx", (n, t, d), dtype)
        dx[...] = dx2.reshape(t, n, d).transpose(1, 0, 2)
        return dx

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation.name,
            "recurrent_activation": self.recurrent_activation.name,
            "return_sequences": self.return_sequences,
            "unit_forget_bias": self.unit_forget_bias,
            "use_bias": self.use_bias,
        }


def _lstm_activation(identifier, argument):
    activation = activations.get(identifier)
    if activation.name not in _ALLOWED_ACTIVATIONS:
        raise ValueError(
            f"LSTM: expected `{argument}` to be one of {list(_ALLOWED_ACTIVATIONS)}, "
            f"received {identifier!r}"
        )
    return activation


# ----------------------------------------------------------------------------------------------
# Memory estimate
# ----------------------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Bytes a training run needs, by kind.

    Attributes:
        parameters, gradients, optimizer_slots: fixed, whatever the batch size.
        activations: what forward keeps for backpropagation through time plus backward's
            work arrays, at ``batch_size``; it grows linearly with the batch.
        batch_size, dtype: what the estimate was made for.
    """

    parameters: int
    gradients: int
    optimizer_slots: int
    activations: int
    batch_size: int
    dtype: str

    @property
    def fixed(self) -> int:
        """Bytes independent of the batch size."""
        return self.parameters + self.gradients + self.optimizer_slots

    @property
    def per_sample(self) -> float:
        """Activation bytes per sample of the batch."""
        return self.activations / max(self.batch_size, 1)

    @property
    def total(self) -> int:
        """All bytes."""
        return self.fixed + self.activations

    def max_batch_size(self, available: int) -> int:
        """Largest batch size whose estimate fits in ``available`` bytes (0 if none does)."""
        room = available - self.fixed
        if room <= 0 or self.per_sample <= 0:
            return 0
        return int(room // self.per_sample)

    def __add__(self, other: "MemoryEstimate") -> "MemoryEstimate":
        return MemoryEstimate(self.parameters + other.parameters,
                              self.gradients + other.gradients,
                              self.optimizer_slots + other.optimizer_slots,
                              self.activations + other.activations, self.batch_size, self.dtype)

    def __str__(self):
        return (f"{_gib(self.total)} (parameters {_gib(self.parameters)}, gradients "
                f"{_gib(self.gradients)}, optimizer slots {_gib(self.optimizer_slots)}, "
                f"activations kept for backprop {_gib(self.activations)} at batch size "
                f"{self.batch_size}, {self.dtype})")


def _gib(n: float) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


def _lstm_elements(units, input_dim, seq_len, batch_size, return_sequences, input_grad=True):
    """Parameter count and activation elements of one LSTM layer (as :class:`LSTM` allocates).

    Forward keeps xh = [h, x, 1] (T,N,U+D+1), the gates (T,N,4U), c (T+1,N,U), h and φ(c)
    (T,N,U), the step's pre-activations (N,4U) and, with sequences, y (N,T,U); backward adds
    dz (T,N,4U), dh and dc (N,U), dy (T,N,U) with sequences, and dx twice (T,N,D) when it is
    needed. (theta and the weight gradients, (U+D+1,4U) each, do not grow with the batch and
    are not counted.)
    """
    u, d, t, n = units, input_dim, seq_len, batch_size
    params = 4 * u * (d + u + 1)
    forward = t * n * (u + d + 1) + t * n * 4 * u + (t + 1) * n * u + 2 * t * n * u + n * 4 * u
    backward = t * n * 4 * u + 2 * n * u
    if return_sequences:
        forward += n * t * u
        backward += t * n * u
    if input_grad:
        backward += 2 * t * n * d
    return params, forward + backward


def memory_estimate(obj, batch_size: int, seq_len: int | None = None, dtype=None,
                    optimizer_slots: int | None = None,
                    input_dim: int | None = None) -> MemoryEstimate:
    """Estimate the memory training needs, before anything is allocated.

    Args:
        obj: an :class:`LSTM` (built or not), a dict with the LSTM's config (``units``,
            optional ``input_dim``, ``seq_len``, ``return_sequences``), or a ``Sequential``
            (every layer counted: LSTMs exactly, others as parameters plus three arrays the size
            of their output: output, pre-activation, gradient).
        batch_size: samples per step.
        seq_len, input_dim: T and D, when ``obj`` does not know them (unbuilt layer or config).
        dtype: parameter and activation dtype (default: the layer's, else floatx).
        optimizer_slots: state arrays per parameter: 2 for Adam, 1 for SGD with momentum or
            RMSprop, 0 for plain SGD. Default: the compiled model's optimizer's, else 2.

    Returns:
        a :class:`MemoryEstimate` (bytes); ``str()`` gives a readable breakdown.

    Example:
        >>> print(memory_estimate({"units": 4096, "input_dim": 28, "seq_len": 28}, 100))
    """
    if hasattr(obj, "layers") and not isinstance(obj, (dict, Layer)):
        return _model_estimate(obj, batch_size, dtype, optimizer_slots)
    if isinstance(obj, LSTM):
        cfg = {"units": obj.units, "return_sequences": obj.return_sequences,
               "input_grad": obj.input_grad}
        if obj.input_shape is not None:
            cfg["seq_len"], cfg["input_dim"] = obj.input_shape[1], obj.input_shape[2]
        dtype = dtype or obj.dtype
    elif isinstance(obj, dict):
        cfg = dict(obj)
    else:
        raise TypeError(
            f"memory_estimate: expected an LSTM, a dict of its config or a Sequential, "
            f"received {type(obj).__name__}"
        )
    seq_len = seq_len if seq_len is not None else cfg.get("seq_len")
    input_dim = input_dim if input_dim is not None else cfg.get("input_dim")
    if seq_len is None or input_dim is None:
        raise ValueError("memory_estimate: `seq_len` and `input_dim` are needed for an LSTM "
                         "whose input shape is unknown")
    slots = 2 if optimizer_slots is None else int(optimizer_slots)
    itemsize = np.dtype(dtype or config.floatx()).itemsize
    params, acts = _lstm_elements(int(cfg["units"]), int(input_dim), int(seq_len),
                                  int(batch_size), bool(cfg.get("return_sequences", False)),
                                  bool(cfg.get("input_grad", True)))
    return MemoryEstimate(params * itemsize, params * itemsize, slots * params * itemsize,
                          acts * itemsize, int(batch_size), np.dtype(dtype or config.floatx()).name)


def _model_estimate(model, batch_size, dtype, optimizer_slots) -> MemoryEstimate:
    """:func:`memory_estimate` of a whole ``Sequential``: the sum over its layers."""
    if optimizer_slots is None:
        optimizer = getattr(model, "optimizer", None)
        optimizer_slots = len(optimizer.slot_names()) if optimizer is not None else 2
    dtype = np.dtype(dtype or config.floatx())
    if not model.built:
        model.build()
    shape = model.input_shape
    n = int(batch_size)
    total = MemoryEstimate(0, 0, 0, n * math.prod(shape[1:]) * dtype.itemsize, n, dtype.name)
    for layer in model.layers:
        if isinstance(layer, LSTM):
            total = total + memory_estimate(layer, n, dtype=dtype, optimizer_slots=optimizer_slots)
        else:
            p = layer.count_params() * dtype.itemsize
            acts = 3 * n * math.prod(s for s in layer.output_shape[1:]) * dtype.itemsize
            total = total + MemoryEstimate(p, p, optimizer_slots * p, acts, n, dtype.name)
    return total


def available_memory() -> int:
    """Bytes of host memory available now: MemAvailable from /proc/meminfo (Linux), else the
    physical memory size (``os.sysconf``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 1 << 62  # unknown: do not refuse


def check_memory(obj, batch_size: int, seq_len: int | None = None, dtype=None,
                 optimizer_slots: int | None = None, input_dim: int | None = None,
                 available: int | None = None, allocated: int | None = None) -> MemoryEstimate:
    """Raise :class:`InsufficientMemoryError` when training ``obj`` cannot fit in memory.

    Args:
        obj, batch_size, seq_len, dtype, optimizer_slots, input_dim: as :func:`memory_estimate`.
        available: bytes available (default :func:`available_memory`).
        allocated: bytes of the estimate already allocated (and so no longer available); by
            default the parameters of a built layer or model.

    Returns:
        the estimate, when it fits.

    Raises:
        InsufficientMemoryError: saying how much is needed and available, and the largest batch
            size that fits (or that none does, suggesting fewer units).
    """
    estimate = memory_estimate(obj, batch_size, seq_len, dtype, optimizer_slots, input_dim)
    if available is None:
        available = available_memory()
    if allocated is None:
        allocated = estimate.parameters if getattr(obj, "built", False) else 0
    free = available + allocated
    if estimate.total <= free:
        return estimate
    fits = estimate.max_batch_size(free)
    name = getattr(obj, "name", None) or "LSTM"
    advice = (f"try batch_size={fits} or smaller" if fits >= 1 else
              "no batch size fits: reduce the number of units")
    raise InsufficientMemoryError(
        f"{name!r}: training with batch_size={batch_size} needs about {estimate}, but only "
        f"{_gib(free)} is available; {advice}.",
        estimate=estimate, available=free, suggested_batch_size=fits,
    )
