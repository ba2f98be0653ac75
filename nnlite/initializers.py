"""Weight initializers with Keras 3's names, defaults and formulas.

An initializer is called as ``init(shape, dtype=None, rng=None)`` and returns a NumPy array.
Random ones draw from ``rng`` (the model's or the global generator, see :mod:`nnlite.random`),
or from a private generator when built with ``seed=``.

Fans of a 2-D kernel (D_in, D_out): ``fan_in = D_in``, ``fan_out = D_out``.

Variance scaling (Glorot, He):
    uniform          limit  = √(3·scale / n)                x ~ U(−limit, limit)
    truncated normal stddev = √(scale / n) / 0.8796...      x ~ N(0, stddev²) cut at ±2·stddev
    n = fan_in (He), (fan_in + fan_out) / 2 (Glorot); scale = 2 (He), 1 (Glorot).
The constant 0.87962566103423978 is the standard deviation of a unit normal truncated to ±2,
so the truncated draw keeps the intended variance (Glorot & Bengio 2010; He et al. 2015).
"""

from __future__ import annotations

import math

import numpy as np

from nnlite import config
from nnlite.random import global_generator

__all__ = [
    "Initializer",
    "Zeros",
    "Ones",
    "Constant",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "VarianceScaling",
    "GlorotUniform",
    "GlorotNormal",
    "HeNormal",
    "HeUniform",
    "Orthogonal",
    "get",
]

_TRUNCATED_STDDEV = 0.87962566103423978


def _fans(shape) -> tuple[float, float]:
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


class Initializer:
    """Base class: subclasses implement :meth:`sample` in float64; ``__call__`` casts."""

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None, rng: np.random.Generator | None = None) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype or config.floatx())
        if self.seed is not None:
            rng = np.random.default_rng(self.seed)
        elif rng is None:
            rng = global_generator()
        # C order always: Orthogonal's transposed Q would otherwise give a strided array, which
        # in-place code (flat views, finite differences) cannot treat as one vector.
        return np.ascontiguousarray(self.sample(shape, rng), dtype=dtype)

    def sample(self, shape, rng):  # pragma: no cover - abstract
        """Values of ``shape`` (float64, any layout) drawn with the NumPy Generator ``rng``;
        ``__call__`` casts them to the parameter's dtype."""
        raise NotImplementedError

    def get_config(self) -> dict:
        """Constructor arguments, as Keras's ``get_config``."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    """All zeros."""

    def __init__(self):
        super().__init__()

    def sample(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    """All ones."""

    def __init__(self):
        super().__init__()

    def sample(self, shape, rng):
        return np.ones(shape)


class Constant(Initializer):
    """Every entry equal to ``value`` (default 0.0)."""

    def __init__(self, value: float = 0.0):
        super().__init__()
        self.value = value

    def sample(self, shape, rng):
        return np.full(shape, self.value, dtype=np.float64)


class RandomNormal(Initializer):
    """Normal distribution ``N(mean, stddev²)``; Keras defaults mean 0.0, stddev 0.05."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        self.mean, self.stddev = mean, stddev

    def sample(self, shape, rng):
        return rng.normal(self.mean, self.stddev, size=shape)


class RandomUniform(Initializer):
    """Uniform distribution on ``[minval, maxval)``; Keras defaults −0.05, 0.05."""

    def __init__(self, minval: float = -0.05, maxval: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        self.minval, self.maxval = minval, maxval

    def sample(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, size=shape)


def _truncated_normal(shape, mean, stddev, rng):
    """Normal draws, each one beyond 2 standard deviations redrawn until it falls inside."""
    x = rng.standard_normal(size=shape)
    bad = np.abs(x) > 2
    while bad.any():
        x[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(x) > 2
    return mean + stddev * x


class TruncatedNormal(Initializer):
    """Normal ``N(mean, stddev²)`` with values beyond 2 stddev redrawn; defaults 0.0, 0.05."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        self.mean, self.stddev = mean, stddev

    def sample(self, shape, rng):
        return _truncated_normal(shape, self.mean, self.stddev, rng)


class VarianceScaling(Initializer):
    """Scale-aware random init (the family behind Glorot and He), as Keras's VarianceScaling.

    Args:
        scale: variance multiplier (> 0).
        mode: "fan_in", "fan_out" or "fan_avg".
        distribution: "truncated_normal", "untruncated_normal" or "uniform".
    """

    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale: float = 1.0, mode: str = "fan_in",
                 distribution: str = "truncated_normal", seed: int | None = None):
        super().__init__(seed)
        if scale <= 0:
            raise ValueError(f"VarianceScaling: expected `scale` > 0, received {scale!r}")
        if mode not in self._MODES:
            raise ValueError(
                f"VarianceScaling: expected `mode` in {list(self._MODES)}, received {mode!r}"
            )
        if distribution not in self._DISTRIBUTIONS:
            raise ValueError(
                f"VarianceScaling: expected `distribution` in {list(self._DISTRIBUTIONS)}, "
                f"received {distribution!r}"
            )
        self.scale, self.mode, self.distribution = scale, mode, distribution

    def sample(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, n)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, size=shape)
        if self.distribution == "untruncated_normal":
            return rng.normal(0.0, math.sqrt(variance), size=shape)
        return _truncated_normal(shape, 0.0, math.sqrt(variance) / _TRUNCATED_STDDEV, rng)


class GlorotUniform(VarianceScaling):
    """Glorot (Xavier) uniform: ``U(±√(6 / (fan_in + fan_out)))`` (Glorot & Bengio, 2010)."""

    def __init__(self, seed: int | None = None):
        super().__init__(1.0, "fan_avg", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class GlorotNormal(VarianceScaling):
    """Glorot normal: truncated normal, stddev ``√(2 / (fan_in + fan_out)) / 0.8796...``."""

    def __init__(self, seed: int | None = None):
        super().__init__(1.0, "fan_avg", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


class HeNormal(VarianceScaling):
    """He normal: truncated normal, stddev ``√(2 / fan_in) / 0.8796...`` (He et al., 2015)."""

    def __init__(self, seed: int | None = None):
        super().__init__(2.0, "fan_in", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


class HeUniform(VarianceScaling):
    """He uniform: ``U(±√(6 / fan_in))`` (He et al., 2015)."""

    def __init__(self, seed: int | None = None):
        super().__init__(2.0, "fan_in", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class Orthogonal(Initializer):
    """Random orthogonal matrix times ``gain`` (Saxe et al., 2014), as Keras's Orthogonal.

    A normal matrix of shape (max(r, c), min(r, c)) is QR-factorised; Q's columns are made
    sign-definite by multiplying with sign(diag(R)), and Q is transposed when r < c, so the result
    has orthonormal rows or columns, whichever are fewer. Shapes beyond 2-D flatten the leading
    axes into rows.
    """

    def __init__(self, gain: float = 1.0, seed: int | None = None):
        super().__init__(seed)
        self.gain = gain

    def sample(self, shape, rng):
        if len(shape) < 2:
            raise ValueError(
                f"Orthogonal: expected a shape with at least 2 dimensions, received {shape}"
            )
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = rng.standard_normal(size=(max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)


_ALIASES = {
    "zeros": Zeros,
    "ones": Ones,
    "constant": Constant,
    "random_normal": RandomNormal,
    "random_uniform": RandomUniform,
    "truncated_normal": TruncatedNormal,
    "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal,
    "he_normal": HeNormal,
    "he_uniform": HeUniform,
    "orthogonal": Orthogonal,
}


def get(identifier) -> Initializer:
    """Resolve a name ("glorot_uniform", "GlorotUniform", ...), a class or an instance.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Initializer):
        return identifier()
    if isinstance(identifier, str):
        key = identifier if identifier in _ALIASES else _snake(identifier)
        if key in _ALIASES:
            return _ALIASES[key]()
    raise ValueError(
        f"Unknown initializer {identifier!r}: expected one of {sorted(_ALIASES)} "
        "or an nnlite.initializers.Initializer"
    )


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
