"""Losses with Keras's names, each returning its value and its gradient.

All losses reduce as Keras's default ``"sum_over_batch_size"``: the per-sample losses are
averaged over the batch, so gradients carry a 1/N factor.

Called as ``loss(y_true, y_pred)`` they return the scalar value, as in Keras; the model calls
:meth:`Loss.value_and_grad` to get the gradient with respect to ``y_pred`` as well.

Softmax followed by a cross-entropy is fused: when the model's last layer is a softmax and the
loss a cross-entropy with ``from_logits=False``, the model calls :meth:`value_and_grad_logits`
with the pre-softmax logits, which gives the stable gradient ``(p − t)/N`` and finite values even
for logits of ±1e4. Keras on TensorFlow does the same (its softmax output remembers its logits).
"""

from __future__ import annotations

import numpy as np

from nnlite import config
from nnlite import functional as F

__all__ = [
    "Loss",
    "SparseCategoricalCrossentropy",
    "CategoricalCrossentropy",
    "MeanSquaredError",
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "mean_squared_error",
    "get",
]


class Loss:
    """Base class. Subclasses implement :meth:`value_and_grad`."""

    name = "loss"

    def __call__(self, y_true, y_pred):
        """Mean loss over the batch (a scalar of ``y_pred``'s dtype)."""
        return self.value_and_grad(y_true, y_pred)[0]

    def value_and_grad(self, y_true, y_pred, validate: bool = True):  # pragma: no cover
        """Return ``(loss, dloss/dy_pred)``.

        ``validate=False`` skips the checks of the target values (label range, whole numbers);
        the model's loops pass it after validating all targets once, before the first step.
        """
        raise NotImplementedError

    def check_target(self, y_true, y_pred) -> None:
        """Raise ValueError when the target cannot go with predictions of ``y_pred``'s shape."""

    def get_config(self) -> dict:
        """Constructor arguments, as Keras's ``get_config``."""
        return {"name": self.name}


def _check_labels(labels, num_classes: int):
    """Validate integer class labels against ``num_classes``; returns them flat, as int64."""
    xp = F.get_array_module(labels)
    labels = labels.reshape(-1)
    if labels.dtype.kind == "f":
        fractional = labels != xp.floor(labels)
        if bool(xp.any(fractional)):
            raise ValueError(
                "SparseCategoricalCrossentropy: labels must be whole numbers, received "
                f"{float(labels[fractional][0])!r}"
            )
    labels = labels.astype(xp.int64, copy=False)
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"SparseCategoricalCrossentropy: labels must lie in [0, {num_classes}) for "
                f"{num_classes} outputs, received labels from {low} to {high}"
            )
    return labels


class _Crossentropy(Loss):
    """Shared code of the two categorical cross-entropies (sparse and one-hot targets)."""

    sparse = False

    def __init__(self, from_logits: bool = False, name: str | None = None):
        self.from_logits = bool(from_logits)
        if name is not None:
            self.name = name

    def _rows(self, y_true, y_pred, validate: bool = True):
        """Predictions as rows (R, C) and the targets of those rows, checked (label values
        only when ``validate``; shapes always).

        Predictions of shape (N, ..., C) count every position as a sample, so the mean runs over
        all N·... rows, as Keras's "sum_over_batch_size" reduction does.
        """
        c = y_pred.shape[-1]
        rows = y_pred.reshape(-1, c)
        if self.sparse:
            shape = tuple(y_true.shape)
            if validate:
                labels = _check_labels(y_true, c)
            else:
                labels = y_true.reshape(-1).astype(F.get_array_module(y_true).int64, copy=False)
            if labels.shape[0] != rows.shape[0]:
                hint = " (use CategoricalCrossentropy for one-hot targets)" if (
                    shape == tuple(y_pred.shape)) else ""
                raise ValueError(
                    f"{type(self).__name__}: expected one integer label per prediction row, "
                    f"i.e. targets of shape {tuple(y_pred.shape[:-1])}, received shape {shape} "
                    f"for predictions of shape {tuple(y_pred.shape)}{hint}"
                )
            return labels, rows
        if y_true.shape[-1] != c or y_true.size != y_pred.size:
            raise ValueError(
                f"{type(self).__name__}: expected targets of shape {tuple(y_pred.shape)} "
                f"(one-hot, like the predictions), received {tuple(y_true.shape)}"
            )
        return y_true.reshape(-1, c).astype(y_pred.dtype, copy=False), rows

    def check_target(self, y_true, y_pred):
        self._rows(y_true, y_pred)

    def value_and_grad(self, y_true, y_pred, validate: bool = True):
        """Loss and gradient w.r.t. ``y_pred`` (logits if ``from_logits``, else probabilities)."""
        if self.from_logits:
            loss, grad = self.value_and_grad_logits(y_true, y_pred, validate)
        else:
            target, rows = self._rows(y_true, y_pred, validate)
            loss, grad = self._from_probabilities(target, rows)
        return loss, grad.reshape(y_pred.shape)

    def value_and_grad_logits(self, y_true, logits, validate: bool = True):
        """Fused, stable softmax cross-entropy from logits: ``(loss, (softmax(z) − t)/R)``.

        Returns the gradient as rows (R, C), R the number of prediction rows.
        """
        from nnlite.backend import get_backend

        target, rows = self._rows(y_true, logits, validate)
        return get_backend().softmax_cross_entropy(rows, target)

    def _from_probabilities(self, target, p):
        """Keras's cross-entropy of probabilities that did not come from a fused softmax.

        Math (ε = nnlite.config.epsilon(); the clip passes no gradient strictly outside
        [ε, 1 − ε]):
            one-hot t   q = p / Σ_c p      c = clip(q, ε, 1 − ε)     loss_n = −Σ_c t_c log c_c
                        dq = −t/c (masked)    dp = (dq − Σ_c dq·q) / Σ_c p
            labels y    c = clip(p, ε, 1 − ε)   z = log c   loss_n = logsumexp(z) − z_y
                        dz = softmax(z) − onehot(y)        dp = dz / c (masked)
        Keras renormalises the rows only in the one-hot case; with labels it feeds log(c) to
        its sparse logits kernel, whose logsumexp renormalises instead. Both are reproduced.
        """
        xp = F.get_array_module(p)
        n = p.shape[0]
        eps = p.dtype.type(config.epsilon())
        if target.ndim == 1:
            c = xp.clip(p, eps, 1 - eps)
            inside = (p >= eps) & (p <= 1 - eps)
            loss, dz = F.softmax_cross_entropy(xp.log(c), target)
            return loss, dz / c * inside
        total = p.sum(axis=-1, keepdims=True)
        q = p / total
        c = xp.clip(q, eps, 1 - eps)
        loss = -(target * xp.log(c)).sum() / n
        dq = -target / c * ((q >= eps) & (q <= 1 - eps))
        dp = (dq - (dq * q).sum(axis=-1, keepdims=True)) / total
        return loss, dp / n

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


class SparseCategoricalCrossentropy(_Crossentropy):
    """Cross-entropy against integer labels, as ``keras.losses.SparseCategoricalCrossentropy``.

    Shapes:
        y_true: (N,) integers in [0, C)    y_pred: (N, C) probabilities, or logits if from_logits

    Math:
        loss = −(1/N) Σ_n log p[n, y_n]        (from logits: p = softmax(z), dz = (p − onehot)/N)
    """

    name = "sparse_categorical_crossentropy"
    sparse = True


class CategoricalCrossentropy(_Crossentropy):
    """Cross-entropy against one-hot (or soft) targets, as ``keras.losses.CategoricalCrossentropy``.

    Shapes:
        y_true: (N, C)    y_pred: (N, C) probabilities, or logits if from_logits

    Math:
        loss = −(1/N) Σ_n Σ_c t[n, c] log p[n, c]     (from logits: dz = (softmax(z) − t)/N)
    """

    name = "categorical_crossentropy"


class MeanSquaredError(Loss):
    """Mean squared error, as ``keras.losses.MeanSquaredError``.

    Math:
        loss = (1/N) Σ_n (1/D) Σ_d (y_pred − y_true)²      dy_pred = 2 (y_pred − y_true)/(N·D)
    """

    name = "mean_squared_error"

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name

    def check_target(self, y_true, y_pred):
        if tuple(y_true.shape) != tuple(y_pred.shape):
            raise ValueError(
                f"MeanSquaredError: expected targets of shape {tuple(y_pred.shape)}, "
                f"received {tuple(y_true.shape)}"
            )

    def value_and_grad(self, y_true, y_pred, validate: bool = True):
        self.check_target(y_true, y_pred)
        return F.mean_squared_error(y_pred, y_true.astype(y_pred.dtype, copy=False))


def sparse_categorical_crossentropy(y_true, y_pred, from_logits: bool = False):
    """Functional form of :class:`SparseCategoricalCrossentropy` (batch mean)."""
    return SparseCategoricalCrossentropy(from_logits)(np.asarray(y_true), y_pred)


def categorical_crossentropy(y_true, y_pred, from_logits: bool = False):
    """Functional form of :class:`CategoricalCrossentropy` (batch mean)."""
    return CategoricalCrossentropy(from_logits)(np.asarray(y_true), y_pred)


def mean_squared_error(y_true, y_pred):
    """Functional form of :class:`MeanSquaredError` (batch mean)."""
    return MeanSquaredError()(np.asarray(y_true), y_pred)


_ALIASES = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}
_CLASS_NAMES = {cls.__name__: cls for cls in _ALIASES.values()}


def get(identifier) -> Loss:
    """Resolve a name, a loss class or instance, or a functional loss.

    Raises:
        ValueError: for an unknown identifier, listing the valid names.
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    functional = {
        sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
        categorical_crossentropy: CategoricalCrossentropy,
        mean_squared_error: MeanSquaredError,
    }
    if callable(identifier) and identifier in functional:
        return functional[identifier]()
    if isinstance(identifier, str):
        cls = _ALIASES.get(identifier) or _CLASS_NAMES.get(identifier)
        if cls is not None:
            return cls()
    raise ValueError(
        f"Unknown loss {identifier!r}: expected one of {sorted(_ALIASES)} or an nnlite.losses.Loss"
    )
