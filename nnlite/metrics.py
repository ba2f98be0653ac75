"""Metrics: per-sample accuracy functions (as Keras's), metric objects for ``compile``, and the
evaluation helpers ``accuracy_score`` and ``confusion_matrix``.

``compile(metrics=["accuracy"])`` resolves "accuracy" the way Keras 3 does, from the shapes of
the targets and predictions: integer labels against (N, C) scores use sparse categorical
accuracy, one-hot targets categorical accuracy, and a single output column binary accuracy.
The History key is the name that was given ("accuracy", "acc", ...).
"""

from __future__ import annotations

import numpy as np

from nnlite.functional import get_array_module

__all__ = [
    "Metric",
    "MeanMetricWrapper",
    "Accuracy",
    "SparseCategoricalAccuracy",
    "CategoricalAccuracy",
    "BinaryAccuracy",
    "sparse_categorical_accuracy",
    "categorical_accuracy",
    "binary_accuracy",
    "accuracy_score",
    "confusion_matrix",
    "get",
]


def _argmax(y):
    """Index of the largest entry along the last axis, as Keras 3 on TensorFlow ranks them: the
    first maximum wins, and -0.0 counts as smaller than +0.0."""
    xp = get_array_module(y)
    if y.dtype.kind == "f":
        # Keras's TF argmax replaces -0.0 by -tiny before tf.argmax (a flush-to-zero guard), so
        # argmax([-0.0, 0.0]) is 1 there while NumPy, which sees equal values, returns 0.
        y = xp.where((y == 0) & xp.signbit(y), -np.finfo(y.dtype).tiny, y)
    return xp.argmax(y, axis=-1)


def sparse_categorical_accuracy(y_true, y_pred):
    """Per-sample 1.0 where ``argmax(y_pred) == y_true`` (first maximum wins), else 0.0."""
    y_true = y_true.reshape(-1) if y_true.ndim > 1 else y_true
    return (_argmax(y_pred) == y_true).astype(y_pred.dtype)


def categorical_accuracy(y_true, y_pred):
    """Per-sample 1.0 where ``argmax(y_pred) == argmax(y_true)``, else 0.0."""
    return (_argmax(y_pred) == _argmax(y_true)).astype(y_pred.dtype)


def binary_accuracy(y_true, y_pred, threshold: float = 0.5):
    """Per-sample mean of ``(y_pred > threshold) == y_true`` over the last axis."""
    return ((y_pred > threshold) == (y_true > 0.5)).astype(y_pred.dtype).mean(axis=-1)


class Metric:
    """A named per-sample metric, averaged over samples by the training loop."""

    name = "metric"

    def values(self, y_true, y_pred):  # pragma: no cover - abstract
        """Per-sample values, shape (N,)."""
        raise NotImplementedError

    def __call__(self, y_true, y_pred) -> float:
        """Mean of :meth:`values` over the batch."""
        return float(self.values(np.asarray(y_true), np.asarray(y_pred)).mean())

    def get_config(self) -> dict:
        """Constructor arguments, as Keras's ``get_config``."""
        return {"name": self.name}


class MeanMetricWrapper(Metric):
    """Wrap a per-sample function ``fn(y_true, y_pred)`` under ``name``."""

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name

    def values(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


class SparseCategoricalAccuracy(MeanMetricWrapper):
    """Accuracy against integer labels."""

    def __init__(self, name: str = "sparse_categorical_accuracy"):
        super().__init__(sparse_categorical_accuracy, name)


class CategoricalAccuracy(MeanMetricWrapper):
    """Accuracy against one-hot targets."""

    def __init__(self, name: str = "categorical_accuracy"):
        super().__init__(categorical_accuracy, name)


class BinaryAccuracy(MeanMetricWrapper):
    """Accuracy of thresholded single outputs."""

    def __init__(self, name: str = "binary_accuracy", threshold: float = 0.5):
        super().__init__(lambda t, p: binary_accuracy(t, p, threshold), name)
        self.threshold = threshold

    def get_config(self) -> dict:
        """Constructor arguments, as Keras's ``get_config``."""
        return {"name": self.name, "threshold": self.threshold}


class Accuracy(Metric):
    """Keras's "accuracy" string: picks sparse, categorical or binary from the shapes."""

    def __init__(self, name: str = "accuracy"):
        self.name = name

    def values(self, y_true, y_pred):
        if y_pred.ndim >= 2 and y_pred.shape[-1] == 1:
            return binary_accuracy(y_true.reshape(y_pred.shape), y_pred)
        if y_true.ndim == y_pred.ndim and y_true.shape[-1] == y_pred.shape[-1]:
            return categorical_accuracy(y_true, y_pred)
        return sparse_categorical_accuracy(y_true, y_pred)


_ALIASES = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
}


def get(identifier) -> Metric:
    """Resolve a metric name or object; the metric keeps the given name for History keys.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str) and identifier in _ALIASES:
        return _ALIASES[identifier](name=identifier)
    raise ValueError(
        f"Unknown metric {identifier!r}: expected one of {sorted(_ALIASES)} or an "
        "nnlite.metrics.Metric"
    )


def _labels(y):
    """Class labels from labels, one-hot rows, scores, or single-column probabilities."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1)
    y = y.reshape(-1)
    if y.dtype.kind == "f" and np.any(y != np.floor(y)):
        # Single-column scores (a sigmoid output): class 1 above 0.5, as binary accuracy.
        return (y > 0.5).astype(np.int64)
    return y.astype(np.int64)


def accuracy_score(y_true, y_pred) -> float:
    """Fraction of matching labels. Either argument may be labels (N,) or scores/one-hot (N, C).

    Example:
        >>> accuracy_score([0, 1, 2, 2], [0, 2, 2, 2])
        0.75
    """
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(
            f"accuracy_score: expected y_true and y_pred with the same number of samples, "
            f"received {t.shape[0]} and {p.shape[0]}"
        )
    return float((t == p).mean()) if t.size else 0.0


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts ``C[i, j]`` of samples of true class i predicted as class j.

    Args:
        y_true, y_pred: labels (N,) or scores/one-hot (N, C).
        num_classes: matrix size; 1 + the largest label when omitted.

    Returns:
        int64 array (num_classes, num_classes); rows sum to the class counts, the trace is the
        number of correct predictions.
    """
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(
            f"confusion_matrix: expected y_true and y_pred with the same number of samples, "
            f"received {t.shape[0]} and {p.shape[0]}"
        )
    k = int(max(t.max(initial=-1), p.max(initial=-1)) + 1) if num_classes is None else num_classes
    both = np.concatenate([t, p])
    bad = both[(both < 0) | (both >= k)]
    if bad.size:
        raise ValueError(f"confusion_matrix: labels must lie in [0, {k}), received {int(bad[0])}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)
