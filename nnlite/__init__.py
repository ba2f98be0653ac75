"""nnlite: a dense neural-network engine in NumPy with hand-written backprop.

Keras-compatible: code written for Keras 3 runs with ``import nnlite as keras``::

    import nnlite as keras
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    model = keras.Sequential([
        keras.Input(shape=(28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(50, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train / 255.0, y_train, batch_size=100, epochs=5, validation_split=0.1)

Importing nnlite needs NumPy only.
"""

from nnlite._cpu import prefer_avx512_blas

# Must run before NumPy loads OpenBLAS: see nnlite/_cpu.py.
prefer_avx512_blas()

from nnlite import (  # noqa: E402
    activations,
    callbacks,
    config,
    datasets,
    functional,
    gradcheck,
    initializers,
    layers,
    losses,
    metrics,
    models,
    optimizers,
    utils,
)
from nnlite.backend import get_backend, set_backend  # noqa: E402
from nnlite.layers import Input  # noqa: E402
from nnlite.models import Sequential, saving  # noqa: E402  (saving: keras.saving.load_model)

__version__ = "0.1.0"

__all__ = [
    "Sequential",
    "Input",
    "activations",
    "callbacks",
    "config",
    "datasets",
    "functional",
    "gradcheck",
    "initializers",
    "layers",
    "losses",
    "metrics",
    "models",
    "optimizers",
    "saving",
    "utils",
    "get_backend",
    "set_backend",
]
