"""Dense and Input: the affine layer and the placeholder that fixes a model's input shape."""

from __future__ import annotations

from nnlite import activations, initializers
from nnlite.backend import get_backend
from nnlite.layers.base import Layer, normalize_shape


class Dense(Layer):
    """Fully connected layer ``y = activation(x · kernel + bias)``, as ``keras.layers.Dense``.

    Args:
        units: output width M.
        activation: name or ``nnlite.activations`` function; None means linear.
        use_bias: whether to add ``bias``.
        kernel_initializer, bias_initializer: names or initializer objects.

    Shapes:
        x: (N, D)   kernel: (D, M)   bias: (M,)   z, y: (N, M)
        (inputs of rank > 2 are mapped along their last axis: (N, ..., D) -> (N, ..., M))

    Math:
        forward   z = x · kernel + bias          y = f(z)
        backward  dz = f'(z) ⊙ dy  (softmax: dz = y ⊙ (dy − Σ_m dy·y))
                  dkernel = xᵀ · dz   dbias = Σ_n dz[n]   dx = dz · kernelᵀ

    Example:
        >>> layer = Dense(10, activation="softmax")
        >>> y = layer(np.zeros((2, 784)))      # builds kernel (784, 10) and bias (10,)
    """

    def __init__(self, units: int, activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"Dense: expected `units` to be a positive int, received {units!r}")
        self.units = units
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                f"Layer {self.name!r} (Dense) expects inputs of shape (batch, features), "
                f"received {input_shape}"
            )
        self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x, training=False):
        if x.shape[-1] != self.params["kernel"].shape[0]:
            raise ValueError(
                f"Layer {self.name!r} (Dense) expects inputs with last dimension "
                f"{self.params['kernel'].shape[0]}, received shape {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        shape = (x2.shape[0], self.units)
        out = None
        if self.reuse_buffers:
            y_buf = None if self.activation.name == "linear" else self._buffer("y", shape, x.dtype)
            out = (self._buffer("z", shape, x.dtype), y_buf)
        z, y = get_backend().dense_forward(
            x2, self.params["kernel"], self.params.get("bias"), self.activation, out=out
        )
        self._cache = (x2, z, y, lead)
        return y.reshape(lead + (self.units,))

    @property
    def logits(self):
        """The pre-activation ``z`` of the last forward pass, shape (N, M)."""
        return self._cache[1]

    def backward(self, dy):
        x2, z, y, lead = self._cache
        return self._backward(dy.reshape(-1, self.units), z, y, self.activation)

    def backward_from_logits(self, dz):
        """Backward from the gradient w.r.t. the pre-activation ``z`` (skips f'): used by the
        fused softmax + cross-entropy, whose gradient ``(p − t) / N`` is already ``dz``."""
        return self._backward(dz, None, None, activations.get("linear"))

    def _backward(self, dy2, z, y, activation):
        x2, _, _, lead = self._cache
        out = None
        if self.reuse_buffers:
            dx_buf = self._buffer("dx", x2.shape, x2.dtype) if self.input_grad else None
            out = (self._grad_buffer("kernel"), self._grad_buffer("bias") if self.use_bias
                   else None, dx_buf, self._buffer("dz", dy2.shape, dy2.dtype))
        dx, dkernel, dbias = get_backend().dense_backward(
            dy2, x2, self.params["kernel"], z, y, activation, need_dx=self.input_grad, out=out,
        )
        return self._store_grads(dx, dkernel, dbias, lead)

    def _store_grads(self, dx, dkernel, dbias, lead):
        self.grads["kernel"] = dkernel
        if self.use_bias:
            self.grads["bias"] = dbias
        return None if dx is None else dx.reshape(lead + (dx.shape[-1],))

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation.name,
            "use_bias": self.use_bias,
        }


class InputLayer(Layer):
    """Marks the shape of one input sample; what ``nnlite.Input(shape)`` returns.

    Args:
        shape: shape of one sample, without the batch axis (``(784,)`` or ``(28, 28)``).
    """

    def __init__(self, shape=None, batch_size=None, name=None, dtype=None, **kwargs):
        if shape is None:
            shape = kwargs.pop("input_shape", None)
        if shape is None:
            raise ValueError("Input: expected a `shape` such as (784,), received None")
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.shape = normalize_shape(shape)
        self.batch_size = batch_size
        self.build((batch_size,) + self.shape)

    def forward(self, x, training=False):
        return x

    def backward(self, dy):
        return dy


def Input(shape=None, batch_size=None, name=None, dtype=None, **kwargs) -> InputLayer:
    """Declare the input shape of a model, as ``keras.Input(shape=(784,))``.

    In nnlite this returns an :class:`InputLayer`, which a ``Sequential`` takes as its first
    element: ``Sequential([Input((784,)), Dense(10)])``.
    """
    return InputLayer(shape=shape, batch_size=batch_size, name=name, dtype=dtype, **kwargs)
