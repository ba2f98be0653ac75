"""The layer contract every nnlite layer follows.

- ``build(input_shape)`` creates the parameters on first use (shapes include the batch axis as
  ``None``, as Keras: ``(None, 784)``).
- ``forward(x, training=False)`` returns ``y`` and keeps what ``backward`` needs in ``self._cache``
  (one slot, overwritten at each call).
- ``backward(dy)`` returns ``dx`` and assigns (never accumulates) ``self.grads[k]`` for every key
  ``k`` of ``self.params``; ``dy`` is never modified. When ``self.input_grad`` is False (the
  model sets it on layers with nothing trainable upstream) ``dx`` may be skipped and None returned.
- ``params`` and ``grads`` are dicts keyed by Keras's weight names (``kernel``, ``bias``...), in
  Keras's order, so ``get_weights()``/``set_weights()`` interoperate with Keras models.

Inside a model's training and evaluation loops ``reuse_buffers`` is True: layers then write their
outputs, gradients and ``grads[k]`` into preallocated arrays (so a step allocates nothing), and
what ``forward``/``backward`` return is only valid until the next call.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from nnlite import config
from nnlite.backend import get_backend
from nnlite.random import generator

_NAME_COUNTS: defaultdict[str, int] = defaultdict(int)


def unique_name(base: str) -> str:
    """Keras-style auto name: "dense", then "dense_1", "dense_2", ..."""
    n = _NAME_COUNTS[base]
    _NAME_COUNTS[base] += 1
    return base if n == 0 else f"{base}_{n}"


def _snake_case(name: str) -> str:
    """Keras's rule: "Dense" -> "dense", "ReLU" -> "re_lu", "LSTM" -> "lstm"."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def normalize_shape(shape) -> tuple:
    """``784`` -> ``(784,)``; a tuple/list stays a tuple."""
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(None if s is None else int(s) for s in shape)


class Layer:
    """Base class: parameters, gradients, naming, building and the weight accessors.

    Args:
        name: layer name (unique auto name from the class name when omitted).
        input_shape: shape of one sample (without the batch axis), accepted on the first layer of
            a ``Sequential`` as in Keras.
        dtype: parameter dtype; ``nnlite.config.floatx()`` when omitted.
        trainable: when False the optimizer leaves the parameters alone.
    """

    def __init__(self, name: str | None = None, input_shape=None, dtype=None,
                 trainable: bool = True, input_dim: int | None = None):
        self.name = name or unique_name(_snake_case(type(self).__name__))
        if input_dim is not None and input_shape is None:
            input_shape = (input_dim,)
        self._input_shape_arg = normalize_shape(input_shape) if input_shape is not None else None
        self.dtype = np.dtype(dtype or config.floatx())
        self.trainable = trainable
        self.params: dict = {}
        self.grads: dict = {}
        self.built = False
        self.input_shape: tuple | None = None
        self.output_shape: tuple | None = None
        self.input_grad = True
        self.reuse_buffers = False
        self._buffers: dict = {}
        self._cache = None
        self._rng = None

    # -- building ------------------------------------------------------------------------------

    def build(self, input_shape: tuple) -> None:
        """Create parameters for inputs of ``input_shape`` (batch axis included)."""
        self.input_shape = tuple(input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        self.built = True

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """Output shape for ``input_shape`` (identity unless overridden)."""
        return tuple(input_shape)

    def add_weight(self, name: str, shape, initializer) -> np.ndarray:
        """Create parameter ``name`` with ``initializer``, on the current backend."""
        value = initializer(shape, self.dtype, rng=generator(self))
        self.params[name] = get_backend().asarray(value)
        return self.params[name]

    def _buffer(self, key: str, shape: tuple, dtype):
        """A preallocated array for ``key`` when ``reuse_buffers`` is on, else None."""
        if not self.reuse_buffers:
            return None
        xp = get_backend().xp
        slot = (key, tuple(shape), np.dtype(dtype).str, xp.__name__)
        buf = self._buffers.get(slot)
        if buf is None:
            buf = self._buffers[slot] = xp.empty(shape, dtype=dtype)
        return buf

    def _grad_buffer(self, key: str):
        """``grads[key]`` to be overwritten in place, when buffers are reused and it exists."""
        grad = self.grads.get(key) if self.reuse_buffers else None
        return grad if grad is not None and grad.shape == self.params[key].shape else None

    def _ensure_built(self, x) -> None:
        if not self.built:
            self.build((None,) + tuple(x.shape[1:]))

    def __call__(self, x, training: bool = False):
        """Run :meth:`forward` (building on first call) on ``x``."""
        x = get_backend().asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(self.dtype)
        self._ensure_built(x)
        return self.forward(x, training=training)

    # -- computation ---------------------------------------------------------------------------

    def forward(self, x, training: bool = False):  # pragma: no cover - abstract
        """Return the layer output for ``x`` and cache what :meth:`backward` needs."""
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - abstract
        """Return ``dx`` for upstream gradient ``dy`` and assign ``self.grads``."""
        raise NotImplementedError

    # -- weights -------------------------------------------------------------------------------

    @property
    def weights(self) -> list:
        """Parameter arrays in Keras order."""
        return list(self.params.values())

    @property
    def trainable_weights(self) -> list:
        """Parameters the optimizer updates (empty when ``trainable`` is False)."""
        return self.weights if self.trainable else []

    def count_params(self) -> int:
        """Number of scalar parameters."""
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the parameters as NumPy arrays, in Keras order."""
        backend = get_backend()
        return [np.array(backend.to_numpy(p)) for p in self.params.values()]

    def set_weights(self, weights) -> None:
        """Assign parameters in place from a list in Keras order.

        Raises:
            ValueError: naming the layer, when the count or a shape differs.
        """
        weights = list(weights)
        if len(weights) != len(self.params):
            raise ValueError(
                f"Layer {self.name!r} expects {len(self.params)} weights "
                f"({', '.join(self.params) or 'none'}), received {len(weights)}"
            )
        for (key, param), value in zip(self.params.items(), weights):
            value = np.asarray(value)
            if value.shape != param.shape:
                raise ValueError(
                    f"Layer {self.name!r} weight {key!r}: expected shape {param.shape}, "
                    f"received {value.shape}"
                )
        backend = get_backend()
        for param, value in zip(self.params.values(), weights):
            param[...] = backend.asarray(value, dtype=param.dtype)

    def get_config(self) -> dict:
        """Constructor arguments (name, dtype and trainability; subclasses add theirs)."""
        return {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable}

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"
