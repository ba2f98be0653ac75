"""Shared fixtures: the backend each test body runs on, float64 mode, MNIST subsets."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import nnlite
from nnlite import config


def _installed_backends() -> list:
    params = [pytest.param("numpy", id="numpy")]
    numba_marks = []
    if importlib.util.find_spec("numba") is None:
        numba_marks.append(pytest.mark.skip(reason="numba is not installed"))
    params.append(pytest.param("numba", id="numba", marks=numba_marks))
    params.append(pytest.param("cupy", id="cupy", marks=[pytest.mark.gpu]))
    return params


@pytest.fixture(params=_installed_backends())
def backend(request):
    """Run the test body once per backend; skips backends not installed (or without a GPU)."""
    name = request.param
    if name not in nnlite.backend.available_backends():
        pytest.skip(f"backend {name!r} is not available in this nnlite")
    try:
        selected = nnlite.set_backend(name)
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"backend {name!r} unusable here: {exc}")
    yield selected
    nnlite.set_backend("numpy")


@pytest.fixture
def float64():
    """Use float64 as floatx for the test (gradient checks, exact comparisons)."""
    previous = config.floatx()
    config.set_floatx("float64")
    yield
    config.set_floatx(previous)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Every test starts from float32 and the NumPy backend, whatever the previous one did."""
    yield
    config.set_floatx("float32")
    nnlite.set_backend("numpy")


@pytest.fixture(scope="session")
def mnist_small():
    """The first 2,000 training and 500 test images, flattened and scaled to [0, 1] (float32)."""
    (x, y), (xt, yt) = nnlite.datasets.mnist.load_data()
    x = x[:2000].reshape(2000, -1).astype(np.float32) / 255
    xt = xt[:500].reshape(500, -1).astype(np.float32) / 255
    return (x, y[:2000]), (xt, yt[:500])
