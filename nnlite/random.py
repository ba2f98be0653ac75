"""Random number generators: one global stream, and private streams for seeded models.

Everything random in nnlite (initial weights, shuffling, dropout masks) draws from a NumPy
``Generator``. :func:`set_seed` (exported as ``nnlite.utils.set_random_seed``) reseeds the global
stream, which makes a whole run bit-identical; a model built with ``seed=`` owns a private stream
and is reproducible whatever else the program draws.
"""

from __future__ import annotations

import random as _pyrandom

import numpy as np

_GLOBAL = np.random.default_rng()


def set_seed(seed: int) -> None:
    """Reseed the global generator (and Python's and NumPy's legacy ones, as Keras does).

    Args:
        seed: a non-negative integer.
    """
    global _GLOBAL
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(
            f"set_random_seed: expected `seed` to be a non-negative int, received {seed!r}"
        )
    _GLOBAL = np.random.default_rng(int(seed))
    _pyrandom.seed(int(seed))
    np.random.seed(int(seed) % 2**32)


def global_generator() -> np.random.Generator:
    """Return the global generator (replaced by each :func:`set_seed`)."""
    return _GLOBAL


def generator(owner: object = None) -> np.random.Generator:
    """Return ``owner``'s private generator when it has one, else the global generator."""
    rng = getattr(owner, "_rng", None)
    return rng if rng is not None else _GLOBAL
