"""Built-in datasets, shaped like ``keras.datasets``.

Each dataset is a submodule with a ``load_data()`` function that returns NumPy arrays in the same
layout as its Keras namesake. The data ship inside the package, so loading never touches the
network.

Example:
    >>> from nnlite.datasets import mnist
    >>> (x_train, y_train), (x_test, y_test) = mnist.load_data()
"""

from nnlite.datasets import mnist

__all__ = ["mnist"]
