"""Layers with Keras's names; each states its forward and backward math in its docstring."""

from nnlite.layers.activation import Activation, ReLU, Softmax
from nnlite.layers.base import Layer
from nnlite.layers.core import Dense, Input, InputLayer
from nnlite.layers.dropout import Dropout
from nnlite.layers.lstm import LSTM
from nnlite.layers.reshaping import Flatten, Reshape

__all__ = [
    "Layer",
    "Dense",
    "Input",
    "InputLayer",
    "Activation",
    "ReLU",
    "Softmax",
    "Dropout",
    "Flatten",
    "Reshape",
    "LSTM",
]
