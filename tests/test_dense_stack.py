"""The whole-step path for plain Dense stacks (nnlite/models/dense_stack.py) against the
layer-by-layer path: which models take it, and the same training on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import nnlite
from nnlite import config, layers, losses, optimizers
from nnlite.models.dense_stack import DenseStack


def _model(hidden=(("relu", True), ("tanh", True)), last="softmax", input_layers=None, seed=3,
           d_in=12, classes=5):
    stack = list(input_layers) if input_layers is not None else [nnlite.Input((d_in,))]
    for units, (activation, use_bias) in zip((9, 7, 6), hidden):
        stack.append(layers.Dense(units, activation=activation, use_bias=use_bias))
    stack.append(layers.Dense(classes, activation=last))
    return nnlite.Sequential(stack, seed=seed)


def _stack_of(model):
    model._pack_parameters()
    return DenseStack.of(model)


def _compiled(model, loss="sparse_categorical_crossentropy", optimizer=None):
    model.compile(optimizer=optimizer or optimizers.Adam(0.01), loss=loss, metrics=["accuracy"])
    return model


# -- which models take the path ----------------------------------------------------------------


@pytest.mark.parametrize("build, loss", [
    (lambda: _model(), "sparse_categorical_crossentropy"),
    (lambda: _model(), "categorical_crossentropy"),
    (lambda: _model(hidden=(("linear", False), ("sigmoid", True))),
     "sparse_categorical_crossentropy"),
    (lambda: _model(last="linear"), losses.SparseCategoricalCrossentropy(from_logits=True)),
    (lambda: _model(input_layers=[nnlite.Input((3, 4)), layers.Flatten()]),
     "sparse_categorical_crossentropy"),
])
def test_plain_stacks_take_the_path(build, loss):
    model = _compiled(build(), loss)
    assert _stack_of(model) is not None


@pytest.mark.parametrize("build, loss", [
    (lambda: _model(last="sigmoid"), "mean_squared_error"),
    (lambda: _model(), "mean_squared_error"),
    (lambda: _model(last="linear"), "sparse_categorical_crossentropy"),  # probabilities expected
    (lambda: nnlite.Sequential([nnlite.Input((12,)), layers.Dense(9, activation="relu"),
                                layers.Dropout(0.5), layers.Dense(5, activation="softmax")]),
     "sparse_categorical_crossentropy"),
    (lambda: nnlite.Sequential([nnlite.Input((12,)), layers.Dense(9),
                                layers.Activation("relu"), layers.Dense(5, activation="softmax")]),
     "sparse_categorical_crossentropy"),
    (lambda: nnlite.Sequential([nnlite.Input((3, 4)), layers.Dense(5, activation="softmax")]),
     "sparse_categorical_crossentropy"),  # Dense over the last axis of a 3-D input
])
def test_other_models_take_the_layer_path(build, loss):
    model = _compiled(build(), loss)
    assert _stack_of(model) is None


def test_a_frozen_layer_takes_the_layer_path():
    model = _compiled(_model())
    model.layers[1].trainable = False
    assert _stack_of(model) is None


# -- same numbers as the layer path ------------------------------------------------------------


CASES = {
    "sparse": dict(),
    "onehot": dict(loss="categorical_crossentropy"),
    "logits": dict(last="linear", loss=losses.SparseCategoricalCrossentropy(from_logits=True)),
    "linear-hidden-no-bias": dict(hidden=(("linear", False), ("sigmoid", True), ("relu", True))),
    "flatten": dict(flatten=True),
    "sgd-momentum": dict(optimizer=lambda: optimizers.SGD(0.1, momentum=0.9, nesterov=True)),
}


def _train(case, backend_name, use_stack, batch_size, dtype):
    nnlite.set_backend(backend_name)
    spec = dict(CASES[case])
    loss = spec.pop("loss", "sparse_categorical_crossentropy")
    make_optimizer = spec.pop("optimizer", lambda: optimizers.Adam(0.01))
    flatten = spec.pop("flatten", False)
    if flatten:
        spec["input_layers"] = [nnlite.Input((3, 4)), layers.Flatten()]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 12)).astype(dtype)
    if flatten:
        x = x.reshape(23, 3, 4)
    labels = rng.integers(0, 5, 23)
    y = np.eye(5, dtype=dtype)[labels] if "categorical_crossentropy" == loss else labels
    model = _compiled(_model(**spec), loss, make_optimizer())
    model._use_stack = use_stack
    history = model.fit(x, y, batch_size=batch_size, epochs=3, verbose=0)
    assert (model._stack is not None) == use_stack
    return history.history, model.get_weights()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch_size", [1, 5, 23])
def test_stack_path_trains_as_the_layer_path(backend, float64, case, batch_size):
    stacked = _train(case, backend.name, True, batch_size, "float64")
    layered = _train(case, backend.name, False, batch_size, "float64")
    for key in layered[0]:
        np.testing.assert_allclose(stacked[0][key], layered[0][key], rtol=1e-12, err_msg=key)
    for a, b in zip(stacked[1], layered[1]):
        if backend.name == "numpy":  # the same kernels in the same order: bit for bit
            np.testing.assert_array_equal(a, b)
        else:  # Numba's np.dot calls SciPy's BLAS, NumPy's matmul its own
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", ["sparse", "onehot"])
def test_stack_path_float32(backend, case):
    stacked = _train(case, backend.name, True, 5, "float32")
    layered = _train(case, backend.name, False, 5, "float32")
    assert stacked[0]["loss"][-1] == pytest.approx(layered[0]["loss"][-1], rel=1e-5)
    for a, b in zip(stacked[1], layered[1]):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_numba_stack_matches_numpy_stack(float64, monkeypatch):
    pytest.importorskip("numba")
    from nnlite.backend import numba_kernels

    calls = []
    compiled = numba_kernels.dense_stack_step
    monkeypatch.setattr(numba_kernels, "dense_stack_step",
                        lambda *args: calls.append(1) or compiled(*args))
    numba_run = _train("sparse", "numba", True, 5, "float64")
    assert len(calls) == 15  # 3 epochs of 5 steps, each one compiled call
    numpy_run = _train("sparse", "numpy", True, 5, "float64")
    for a, b in zip(numba_run[1], numpy_run[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_large_numba_steps_take_the_per_layer_kernels(float64, monkeypatch):
    """Above the parallel threshold the compiled (serial) step hands over to the per-layer
    kernels, which run in parallel: same numbers."""
    pytest.importorskip("numba")
    from nnlite.backend import numba_kernels

    reference = _train("sparse", "numba", True, 5, "float64")
    calls = []
    compiled = numba_kernels.dense_stack_step
    monkeypatch.setattr(numba_kernels, "PARALLEL_THRESHOLD", 8)
    monkeypatch.setattr(numba_kernels, "dense_stack_step",
                        lambda *args: calls.append(1) or compiled(*args))
    run = _train("sparse", "numba", True, 5, "float64")
    assert not calls
    for a, b in zip(run[1], reference[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# -- the layer contract holds after a stack step -----------------------------------------------


def test_layers_keep_grads_and_caches(backend, float64):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 12)), rng.integers(0, 5, 6)
    models = []
    for use_stack in (True, False):
        model = _compiled(_model(seed=7), optimizer=optimizers.SGD(0.0))
        model._use_stack = use_stack
        model.train_on_batch(x, y)
        models.append(model)
    stacked, layered = models
    assert stacked._stack is not None and layered._stack is None
    for a, b in zip(stacked.layers, layered.layers):
        for key in b.grads:
            np.testing.assert_allclose(backend.to_numpy(a.grads[key]),
                                       backend.to_numpy(b.grads[key]), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(backend.to_numpy(a.logits), backend.to_numpy(b.logits),
                                   rtol=1e-12)
        assert a.grads["kernel"].shape == a.params["kernel"].shape


def test_stack_follows_a_change_of_loss():
    config.set_floatx("float32")
    model = _compiled(_model())
    x, y = np.zeros((4, 12), np.float32), np.zeros(4, np.int64)
    model.fit(x, y, verbose=0)
    assert model._stack is not None
    model.compile(optimizer="sgd", loss="mean_squared_error")
    model.fit(x, np.zeros((4, 5), np.float32), verbose=0)
    assert model._stack is None


def test_plans_are_kept_for_a_few_batch_sizes():
    from nnlite.models import dense_stack

    model = _compiled(_model())
    rng = np.random.default_rng(0)
    model._use_stack = True
    for n in range(1, 12):
        model.train_on_batch(rng.normal(size=(n, 12)).astype(np.float32),
                             rng.integers(0, 5, n))
    assert model._stack is not None
    assert len(model._stack._plans) == dense_stack.MAX_PLANS
    assert sorted(model._stack._plans) == list(range(12 - dense_stack.MAX_PLANS, 12))
