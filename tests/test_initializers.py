"""Tests for nnlite.initializers: shapes, dtypes, Keras's formulas checked statistically.

Initializers return host NumPy arrays on every backend (layers move them to the device), so these
tests do not take the ``backend`` fixture. Large draws (1000 x 1000, a million values) make the
sample moments accurate to ~0.3% (std) and ~0.1% (variance of a uniform), well inside the
tolerances below; every draw is seeded, so the tests are deterministic.
"""

import math

import numpy as np
import pytest

from nnlite import initializers
from nnlite.initializers import (
    Constant,
    GlorotNormal,
    GlorotUniform,
    HeNormal,
    HeUniform,
    Ones,
    Orthogonal,
    RandomNormal,
    RandomUniform,
    TruncatedNormal,
    VarianceScaling,
    Zeros,
)

TRUNC = 0.87962566103423978  # std of a unit normal truncated to ±2


def _rng(seed=0):
    return np.random.default_rng(seed)


ALL = [Zeros, Ones, Constant, RandomNormal, RandomUniform, TruncatedNormal, VarianceScaling,
       GlorotUniform, GlorotNormal, HeNormal, HeUniform, Orthogonal]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shape_and_dtype(cls, dtype):
    x = cls()((7, 5), dtype=dtype, rng=_rng())
    assert isinstance(x, np.ndarray)
    assert x.shape == (7, 5)
    assert x.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_default_dtype_is_floatx(cls, float64):
    assert cls()((3, 4), rng=_rng()).dtype == np.float64


def test_default_dtype_float32():
    assert GlorotUniform()((3, 4)).dtype == np.float32


@pytest.mark.parametrize("shape", [(10,), (3, 4, 5), (2, 3, 4, 6)])
def test_other_ranks(shape):
    assert GlorotUniform()(shape, rng=_rng()).shape == shape
    assert HeNormal()(shape, rng=_rng()).shape == shape


def test_constant_zeros_ones():
    np.testing.assert_array_equal(Zeros()((2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(Ones()((4,)), np.ones(4))
    np.testing.assert_array_equal(Constant(2.5)((2, 2), dtype="float64"), np.full((2, 2), 2.5))
    np.testing.assert_array_equal(Constant()((3,)), np.zeros(3))
    assert Constant(-1.0)((2,), dtype="float32").dtype == np.float32


# ----------------------------------------------------------------------------------------------
# Statistics against Keras's formulas
# ----------------------------------------------------------------------------------------------


def test_glorot_uniform_bounds_and_variance():
    fan_in, fan_out = 1000, 1000
    x = GlorotUniform()((fan_in, fan_out), dtype="float64", rng=_rng(1))
    limit = math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(x).max() <= limit
    assert np.abs(x).max() > 0.999 * limit  # the whole interval is used
    # Var(U(−l, l)) = l²/3 = 2/(fan_in + fan_out)
    assert x.var() == pytest.approx(2 / (fan_in + fan_out), rel=0.01)
    assert abs(x.mean()) < 5 * math.sqrt(x.var() / x.size)


def test_glorot_uniform_uses_both_fans():
    x = GlorotUniform()((200, 800), dtype="float64", rng=_rng(2))
    limit = math.sqrt(6 / (200 + 800))
    assert limit * 0.99 < np.abs(x).max() <= limit


@pytest.mark.parametrize("cls, n_of, scale", [
    (GlorotNormal, lambda fi, fo: (fi + fo) / 2, 1.0),
    (HeNormal, lambda fi, fo: fi, 2.0),
])
def test_truncated_normal_variance_scaling(cls, n_of, scale):
    fan_in, fan_out = 1000, 500
    x = cls()((fan_in, fan_out), dtype="float64", rng=_rng(3))
    target_std = math.sqrt(scale / n_of(fan_in, fan_out))
    stddev_param = target_std / TRUNC
    # the 0.8796 correction makes the truncated draw keep the intended variance
    assert x.std() == pytest.approx(target_std, rel=0.01)
    assert np.abs(x).max() <= 2 * stddev_param
    assert np.abs(x).max() > 1.95 * stddev_param
    assert abs(x.mean()) < 5 * target_std / math.sqrt(x.size)


def test_he_uniform_bounds_and_variance():
    fan_in = 1000
    x = HeUniform()((fan_in, 1000), dtype="float64", rng=_rng(4))
    limit = math.sqrt(6 / fan_in)
    assert limit * 0.999 < np.abs(x).max() <= limit
    assert x.var() == pytest.approx(2 / fan_in, rel=0.01)


def test_variance_scaling_modes_and_distributions():
    shape = (400, 1000)
    fans = {"fan_in": 400, "fan_out": 1000, "fan_avg": 700}
    for mode, n in fans.items():
        x = VarianceScaling(3.0, mode, "untruncated_normal")(shape, "float64", rng=_rng(5))
        assert x.std() == pytest.approx(math.sqrt(3.0 / n), rel=0.01)
        x = VarianceScaling(3.0, mode, "uniform")(shape, "float64", rng=_rng(6))
        assert np.abs(x).max() <= math.sqrt(9.0 / n)
        assert x.var() == pytest.approx(3.0 / n, rel=0.01)


def test_variance_scaling_receptive_field_fans():
    # (3, 3, 16, 32): fan_in = 3·3·16 = 144, fan_out = 3·3·32 = 288
    x = VarianceScaling(1.0, "fan_out", "uniform")((3, 3, 16, 32), "float64", rng=_rng(7))
    assert math.sqrt(3 / 288) * 0.99 < np.abs(x).max() <= math.sqrt(3 / 288)


def test_variance_scaling_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"scale.*0"):
        VarianceScaling(0.0)
    with pytest.raises(ValueError, match=r"mode.*'fan_avgg'"):
        VarianceScaling(mode="fan_avgg")
    with pytest.raises(ValueError, match=r"distribution.*'normal'"):
        VarianceScaling(distribution="normal")


def test_truncated_normal_never_beyond_two_stddev():
    x = TruncatedNormal(mean=1.0, stddev=0.5)((1000, 1000), "float64", rng=_rng(8))
    assert np.abs(x - 1.0).max() <= 2 * 0.5
    assert x.mean() == pytest.approx(1.0, abs=5 * 0.5 / 1000)
    assert x.std() == pytest.approx(0.5 * TRUNC, rel=0.01)


def test_truncated_normal_defaults():
    init = TruncatedNormal()
    assert (init.mean, init.stddev) == (0.0, 0.05)
    x = init((1000, 1000), "float64", rng=_rng(9))
    assert np.abs(x).max() <= 0.1


def test_random_normal_defaults():
    init = RandomNormal()
    assert (init.mean, init.stddev) == (0.0, 0.05)
    x = init((1000, 1000), "float64", rng=_rng(10))
    assert x.std() == pytest.approx(0.05, rel=0.01)
    assert abs(x.mean()) < 5 * 0.05 / 1000
    assert np.abs(x).max() > 4 * 0.05  # untruncated: tails are present
    x = RandomNormal(mean=3.0, stddev=2.0)((500, 500), "float64", rng=_rng(11))
    assert x.mean() == pytest.approx(3.0, abs=0.03) and x.std() == pytest.approx(2.0, rel=0.01)


def test_random_uniform_defaults():
    init = RandomUniform()
    assert (init.minval, init.maxval) == (-0.05, 0.05)
    x = init((1000, 1000), "float64", rng=_rng(12))
    assert x.min() >= -0.05 and x.max() < 0.05
    assert x.min() < -0.0499 and x.max() > 0.0499
    assert x.var() == pytest.approx(0.1**2 / 12, rel=0.01)
    x = RandomUniform(2.0, 3.0)((100, 100), "float64", rng=_rng(13))
    assert 2.0 <= x.min() and x.max() < 3.0


# ----------------------------------------------------------------------------------------------
# Orthogonal
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 64), (100, 30), (30, 100)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal(shape, gain):
    q = Orthogonal(gain=gain)(shape, "float64", rng=_rng(14))
    assert q.shape == shape
    rows, cols = shape
    if rows >= cols:
        np.testing.assert_allclose(q.T @ q, gain**2 * np.eye(cols), atol=1e-12)
    else:
        np.testing.assert_allclose(q @ q.T, gain**2 * np.eye(rows), atol=1e-12)


def test_orthogonal_higher_rank_flattens_leading_axes():
    q = Orthogonal()((3, 4, 5), "float64", rng=_rng(15)).reshape(12, 5)
    np.testing.assert_allclose(q.T @ q, np.eye(5), atol=1e-12)


def test_orthogonal_float32():
    q = Orthogonal()((50, 50), "float32", rng=_rng(16))
    assert q.dtype == np.float32
    np.testing.assert_allclose(q.T @ q, np.eye(50), atol=1e-5)


def test_orthogonal_is_random():
    a = Orthogonal()((8, 8), rng=_rng(17))
    b = Orthogonal()((8, 8), rng=_rng(18))
    assert not np.allclose(a, b)
    assert not np.allclose(np.abs(a), np.eye(8))


def test_orthogonal_rank1_error():
    with pytest.raises(ValueError, match=r"at least 2 dimensions.*\(5,\)"):
        Orthogonal()((5,))


# ----------------------------------------------------------------------------------------------
# Seeds and generators
# ----------------------------------------------------------------------------------------------


SEEDED = [RandomNormal, RandomUniform, TruncatedNormal, GlorotUniform, GlorotNormal, HeNormal,
          HeUniform, Orthogonal]


@pytest.mark.parametrize("cls", SEEDED, ids=lambda c: c.__name__)
def test_seed_gives_identical_draws(cls):
    a = cls(seed=42)((20, 10))
    b = cls(seed=42)((20, 10))
    again = cls(seed=42)((20, 10))
    other = cls(seed=43)((20, 10))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, other)


@pytest.mark.parametrize("cls", SEEDED, ids=lambda c: c.__name__)
def test_seed_ignores_the_passed_generator(cls):
    a = cls(seed=7)((6, 6), rng=_rng(1))
    b = cls(seed=7)((6, 6), rng=_rng(2))
    np.testing.assert_array_equal(a, b)


def test_rng_argument_is_used():
    a = GlorotUniform()((5, 5), rng=_rng(3))
    b = GlorotUniform()((5, 5), rng=_rng(3))
    c = GlorotUniform()((5, 5), rng=_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_global_seed_makes_draws_reproducible():
    from nnlite.utils import set_random_seed

    set_random_seed(123)
    a = HeNormal()((10, 10))
    set_random_seed(123)
    b = HeNormal()((10, 10))
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# get
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [
    ("zeros", Zeros), ("ones", Ones), ("constant", Constant),
    ("random_normal", RandomNormal), ("random_uniform", RandomUniform),
    ("truncated_normal", TruncatedNormal), ("variance_scaling", VarianceScaling),
    ("glorot_uniform", GlorotUniform), ("glorot_normal", GlorotNormal),
    ("he_normal", HeNormal), ("he_uniform", HeUniform), ("orthogonal", Orthogonal),
    ("Zeros", Zeros), ("Ones", Ones), ("Constant", Constant), ("RandomNormal", RandomNormal),
    ("RandomUniform", RandomUniform), ("TruncatedNormal", TruncatedNormal),
    ("VarianceScaling", VarianceScaling), ("GlorotUniform", GlorotUniform),
    ("GlorotNormal", GlorotNormal), ("HeNormal", HeNormal), ("HeUniform", HeUniform),
    ("Orthogonal", Orthogonal),
])
def test_get_by_name(name, cls):
    assert type(initializers.get(name)) is cls


def test_get_class_and_instance():
    init = RandomNormal(stddev=3.0)
    assert initializers.get(init) is init
    assert type(initializers.get(HeNormal)) is HeNormal


@pytest.mark.parametrize("bad", ["xavier", "glorot", "GlorotUniformm", 3])
def test_get_unknown_lists_choices(bad):
    with pytest.raises(ValueError) as info:
        initializers.get(bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in ("glorot_uniform", "he_normal", "zeros", "orthogonal"):
        assert name in message


def test_get_config():
    assert RandomNormal(1.0, 2.0, seed=3).get_config() == {"mean": 1.0, "stddev": 2.0, "seed": 3}
    assert GlorotUniform(seed=5).get_config() == {"seed": 5}
    assert Constant(2.0).get_config()["value"] == 2.0


# ----------------------------------------------------------------------------------------------
# nnlite.config: the default dtype the initializers use
# ----------------------------------------------------------------------------------------------


def test_set_floatx_round_trip():
    from nnlite import config

    assert config.floatx() == "float32"
    config.set_floatx("float64")
    assert config.floatx() == "float64"
    assert Ones()((2,)).dtype == np.float64
    config.set_floatx("float32")  # the autouse fixture restores it too
    assert Ones()((2,)).dtype == np.float32


@pytest.mark.parametrize("bad", ["float16", "double", "int32", None])
def test_set_floatx_bad_value(bad):
    from nnlite import config

    with pytest.raises(ValueError) as info:
        config.set_floatx(bad)
    message = str(info.value)
    assert repr(str(bad)) in message or repr(bad) in message
    assert "float32" in message and "float64" in message
    assert config.floatx() == "float32"  # unchanged
