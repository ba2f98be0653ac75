"""Small utilities with Keras's names: seeding and label encoding."""

from __future__ import annotations

import numpy as np

from nnlite.random import set_seed as set_random_seed

__all__ = ["set_random_seed", "to_categorical"]


def to_categorical(x, num_classes: int | None = None) -> np.ndarray:
    """Convert integer class labels to one-hot rows, as ``keras.utils.to_categorical``.

    Args:
        x: integer labels of any shape (a trailing axis of size 1 is dropped).
        num_classes: number of classes; ``max(x) + 1`` when omitted.

    Returns:
        float32 array of shape ``x.shape + (num_classes,)``.

    Example:
        >>> to_categorical([0, 2], 3)
        array([[1., 0., 0.],
               [0., 0., 1.]], dtype=float32)
    """
    x = np.asarray(x)
    if x.ndim > 1 and x.shape[-1] == 1:
        x = x.reshape(x.shape[:-1])
    if x.size and not np.all(np.equal(np.mod(x, 1), 0)):
        raise ValueError("to_categorical: expected integer labels in `x`")
    x = x.astype(np.int64)
    if num_classes is None:
        num_classes = int(x.max()) + 1 if x.size else 0
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(
            f"to_categorical: labels must lie in [0, {num_classes}), "
            f"received min {x.min()} and max {x.max()}"
        )
    out = np.zeros(x.shape + (num_classes,), dtype=np.float32)
    np.put_along_axis(out, x[..., None], 1.0, axis=-1)
    return out
