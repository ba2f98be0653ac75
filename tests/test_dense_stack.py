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


class _EveryBatch(nnlite.callbacks.Callback):
    """A callback with a per-batch hook: ``fit`` must then step in Python."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


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
    # A per-batch callback: one step at a time (the compiled loop is compared with this below).
    history = model.fit(x, y, batch_size=batch_size, epochs=3, verbose=0,
                        callbacks=[_EveryBatch()])
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


@pytest.mark.parametrize("kernel, run, calls_expected", [
    # 3 epochs of 5 steps: each step one compiled call (a per-batch callback) ...
    ("dense_stack_step", lambda backend: _train("sparse", backend, True, 5, "float64"), 15),
    # ... or each epoch one compiled loop (no such callback; _fit_loop is defined below)
    ("dense_stack_train", lambda backend: _fit_loop(backend, "adam"), 3),
])
def test_numba_stack_matches_numpy_stack(float64, monkeypatch, kernel, run, calls_expected):
    pytest.importorskip("numba")
    from nnlite.backend import numba_kernels

    calls = []
    compiled = getattr(numba_kernels, kernel)
    bound = isinstance(compiled, numba_kernels.Bound)
    targets = [(compiled, "serial"), (compiled, "parallel")] if bound else [(numba_kernels, kernel)]
    for owner, name in targets:
        function = getattr(owner, name)
        monkeypatch.setattr(owner, name,
                            lambda *args, function=function: calls.append(1) or function(*args))
    numba_run = run("numba")
    assert len(calls) == calls_expected
    numpy_run = run("numpy")
    np.testing.assert_allclose(numba_run[0]["loss"], numpy_run[0]["loss"], rtol=1e-12)
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


# -- many steps in one call (DenseStack.train, backend.dense_stack_train) ----------------------


LOOP_OPTIMIZERS = {
    "adam": lambda: optimizers.Adam(0.01),
    "adam-schedule": lambda: optimizers.Adam(lambda step: 0.02 / (1 + step)),
    "sgd": lambda: optimizers.SGD(0.1),
    "momentum": lambda: optimizers.SGD(0.1, momentum=0.9),
    "nesterov": lambda: optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "rmsprop": lambda: optimizers.RMSprop(0.01),
    "rmsprop-momentum": lambda: optimizers.RMSprop(0.01, rho=0.8, momentum=0.5),
    "rmsprop-centered": lambda: optimizers.RMSprop(0.01, centered=True),
}


def _fit_loop(backend_name, optimizer, case="sparse", batch_size=5, dtype="float64",
              callbacks=(), lr_scale=1.0, epochs=3, metrics=(), verbose=0):
    """Train; returns (history, weights, iterations, backend loop calls, model)."""
    nnlite.set_backend(backend_name)
    backend = nnlite.backend.get_backend()
    spec = dict(CASES[case])
    loss = spec.pop("loss", "sparse_categorical_crossentropy")
    spec.pop("optimizer", None)
    if spec.pop("flatten", False):
        spec["input_layers"] = [nnlite.Input((3, 4)), layers.Flatten()]
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(23, 12)) * lr_scale).astype(dtype)
    if case == "flatten":
        x = x.reshape(23, 3, 4)
    labels = rng.integers(0, 5, 23)
    y = np.eye(5, dtype=dtype)[labels] if loss == "categorical_crossentropy" else labels
    model = _model(**spec)
    make = LOOP_OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer
    model.compile(optimizer=make(), loss=loss, metrics=list(metrics))
    calls = []
    original = type(backend).dense_stack_train
    type(backend).dense_stack_train = lambda self, *args: calls.append(1) or original(self, *args)
    try:
        history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                            callbacks=list(callbacks))
    finally:
        type(backend).dense_stack_train = original
    return history.history, model.get_weights(), model.optimizer.iterations, len(calls), model


@pytest.mark.parametrize("optimizer", sorted(LOOP_OPTIMIZERS))
@pytest.mark.parametrize("case", ["sparse", "onehot", "logits", "flatten"])
@pytest.mark.parametrize("batch_size", [1, 5, 10])
def test_compiled_loop_trains_as_python_steps(backend, float64, optimizer, case, batch_size):
    """23 samples: batch 5 and 10 leave a partial last batch, which takes a Python step."""
    looped = _fit_loop(backend.name, optimizer, case, batch_size)
    stepped = _fit_loop(backend.name, optimizer, case, batch_size, callbacks=[_EveryBatch()])
    assert looped[3] == 3 and stepped[3] == 0  # one loop call per epoch; none with the hook
    assert looped[2] == stepped[2] == 3 * -(-23 // batch_size)
    assert looped[0] == stepped[0]
    for a, b in zip(looped[1], stepped[1]):
        np.testing.assert_array_equal(a, b)  # the same kernels in the same order


@pytest.mark.parametrize("optimizer", ["adam", "nesterov", "rmsprop-momentum"])
def test_compiled_loop_float32(backend, optimizer):
    looped = _fit_loop(backend.name, optimizer, dtype="float32")
    stepped = _fit_loop(backend.name, optimizer, dtype="float32", callbacks=[_EveryBatch()])
    assert looped[3] == 3
    assert looped[0] == stepped[0]
    for a, b in zip(looped[1], stepped[1]):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_compiled_loop_stops_at_a_non_finite_loss(backend, float64):
    runs = []
    for callbacks in ((), (_EveryBatch(),)):
        with np.errstate(all="ignore"), \
                pytest.warns(nnlite.models.sequential.NonFiniteLossWarning) as record:
            run = _fit_loop(backend.name, lambda: optimizers.SGD(1e308),
                            case="linear-hidden-no-bias", lr_scale=1e10, callbacks=callbacks)
        messages = [str(w.message) for w in record
                    if w.category is nnlite.models.sequential.NonFiniteLossWarning]
        runs.append(run + (messages,))
    looped, stepped = runs
    assert looped[3] == 1 and stepped[3] == 0
    assert looped[2] == stepped[2] == 2  # the second step's loss is NaN: stop after it
    assert looped[-1] == stepped[-1] and len(looped[-1]) == 1  # the same step named
    assert np.isnan(looped[0]["loss"]).all() and len(looped[0]["loss"]) == 1


def test_what_keeps_fit_stepping_in_python(backend):
    """Per-batch callbacks, metrics and optimizers without a compiled form; EarlyStopping and
    a one-line-per-epoch log do not."""
    assert _fit_loop(backend.name, "adam", callbacks=[_EveryBatch()])[3] == 0
    per_batch = nnlite.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: None)
    assert _fit_loop(backend.name, "adam", callbacks=[per_batch])[3] == 0
    per_epoch = nnlite.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None)
    early = nnlite.callbacks.EarlyStopping(monitor="loss", patience=5)
    assert _fit_loop(backend.name, "adam", callbacks=[early, per_epoch])[3] == 3
    nnlite.set_backend(backend.name)
    model = _compiled(_model())
    model.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=[nnlite.metrics.MeanMetricWrapper(lambda t, p: p[:, 0], "first")])
    x, y = np.zeros((20, 12), config.floatx()), np.zeros(20, np.int64)
    model.fit(x, y, batch_size=5, verbose=0)
    assert model._stack.plan(5).x is None  # no loop ran: its input buffer was never made
    # RMSprop with both momentum and centering has three state arrays; the loops take two.
    model.compile(optimizer=optimizers.RMSprop(0.01, momentum=0.5, centered=True),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=5, verbose=0)
    assert model._stack.plan(5).x is None
    model.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=5, verbose=2)
    assert model._stack.plan(5).x is not None


@pytest.mark.parametrize("case, metrics", [
    ("sparse", ["accuracy"]),
    ("sparse", ["acc", nnlite.metrics.SparseCategoricalAccuracy()]),
    ("onehot", ["accuracy", "categorical_accuracy"]),
    ("logits", ["accuracy"]),  # accuracy of the logits, as Keras computes it
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_loop_counts_accuracy(backend, case, metrics, dtype):
    looped = _fit_loop(backend.name, "adam", case, batch_size=4, dtype=dtype, metrics=metrics)
    stepped = _fit_loop(backend.name, "adam", case, batch_size=4, dtype=dtype, metrics=metrics,
                        callbacks=[_EveryBatch()])
    assert looped[3] == 3 and stepped[3] == 0
    assert looped[0] == stepped[0]  # the loss and every accuracy, epoch by epoch
    assert len(looped[0]) == 1 + len(metrics)


def test_keras_argmax_matches_the_metrics():
    """The compiled loop's argmax ranks as nnlite.metrics (Keras on TF): -0.0 below +0.0,
    the first maximum wins, NaN first of all."""
    pytest.importorskip("numba")
    from nnlite import metrics
    from nnlite.backend import numba_kernels

    rows = np.array([[-0.0, 0.0, -1.0], [0.0, -0.0, 0.0], [2.0, 2.0, 1.0], [-3.0, -0.0, -0.0],
                     [1.0, np.nan, np.nan], [np.nan, 5.0, 1.0], [-2.0, -1.0, -3.0],
                     [-0.0, -0.0, -0.0]])
    for dtype in (np.float32, np.float64):
        scores = rows.astype(dtype)
        expected = metrics._argmax(scores)
        got = [numba_kernels.keras_argmax(row) for row in scores]
        np.testing.assert_array_equal(got, expected)
        labels = np.array([1, 0, 0, 1, 1, 0, 1, 0])
        assert numba_kernels.count_correct(scores, labels) == int((expected == labels).sum())
        onehot = np.eye(3, dtype=dtype)[labels]
        assert numba_kernels.count_correct(scores, onehot) == int((expected == labels).sum())


@pytest.mark.parametrize("seconds, calls, updates", [(0.0, 3 * 4, [0, 1, 2, 3, 4] * 3),
                                                     (60.0, 3 * 2, [0, 3, 4] * 3)])
def test_a_live_progress_bar_is_redrawn_between_compiled_runs(backend, float64, monkeypatch,
                                                               capsys, seconds, calls, updates):
    """verbose=1: a first step alone, then runs of about PROGRESS_SECONDS each, the bar updated
    after each run. 0 s: one step per run (4 full batches of 5, then the partial one in
    Python); 60 s: the first step, then the other three in one run."""
    from nnlite.models import sequential

    monkeypatch.setattr(sequential, "PROGRESS_SECONDS", seconds)
    seen = []
    original = nnlite.callbacks.ProgbarLogger.on_train_batch_end
    monkeypatch.setattr(nnlite.callbacks.ProgbarLogger, "on_train_batch_end",
                        lambda self, batch, logs=None: seen.append(batch) or
                        original(self, batch, logs))
    live = _fit_loop(backend.name, "adam", metrics=["accuracy"], verbose=1)
    assert live[3] == calls
    assert seen == updates  # the batch indices the bar was given, epoch after epoch
    assert "5/5" in capsys.readouterr().out
    stepped = _fit_loop(backend.name, "adam", metrics=["accuracy"], callbacks=[_EveryBatch()])
    assert live[0] == stepped[0]
    for a, b in zip(live[1], stepped[1]):
        np.testing.assert_array_equal(a, b)


def test_a_progress_bar_subclass_with_its_own_batch_hook_keeps_python_steps(backend):
    class Counting(nnlite.callbacks.ProgbarLogger):
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)

    assert _fit_loop(backend.name, "adam", callbacks=[Counting()])[3] == 0


def test_compiled_loop_leaves_the_last_batch_in_the_caches(backend, float64):
    looped = _fit_loop(backend.name, "adam", batch_size=23, epochs=1)  # one step: no loop
    assert looped[3] == 0
    looped = _fit_loop(backend.name, "adam", batch_size=10, epochs=1)[-1]
    stepped = _fit_loop(backend.name, "adam", batch_size=10, epochs=1,
                        callbacks=[_EveryBatch()])[-1]
    for a, b in zip(looped.layers, stepped.layers):
        np.testing.assert_array_equal(backend.to_numpy(a._cache[1]),
                                      backend.to_numpy(b._cache[1]))


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
@pytest.mark.parametrize("batch_size", [4, 7])
def test_row_blocks_sum_to_the_same_step(float64, monkeypatch, optimizer, batch_size):
    """The Numba loop splits a batch into row blocks, one per thread, while BLAS runs on one
    thread: the same arithmetic summed in another order. Blocks of 2 rows here (batch 7: three
    blocks of 2, 2, 3 rows on three threads, two on two)."""
    numba = pytest.importorskip("numba")
    from nnlite.backend import numba_backend, numba_kernels

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one Numba thread: no row blocks")
    whole = _fit_loop("numba", optimizer, batch_size=batch_size, metrics=["accuracy"])
    calls = []
    parallel = numba_kernels.dense_stack_train.parallel
    monkeypatch.setattr(numba_kernels.dense_stack_train, "parallel",
                        lambda *args: calls.append(args[8].shape[0]) or parallel(*args))
    monkeypatch.setattr(numba_backend, "MIN_BLOCK_ROWS", 2)
    blocks = _fit_loop("numba", optimizer, batch_size=batch_size, metrics=["accuracy"])
    assert calls and all(count > 1 for count in calls)  # the layouts: one per block
    assert blocks[2] == whole[2]
    np.testing.assert_allclose(blocks[0]["loss"], whole[0]["loss"], rtol=1e-13)
    assert blocks[0]["accuracy"] == whole[0]["accuracy"]  # each block counts its rows
    for a, b in zip(blocks[1], whole[1]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    # The layers' caches hold the whole last batch, as without blocks.
    np.testing.assert_allclose(blocks[-1].layers[-1]._cache[1], whole[-1].layers[-1]._cache[1],
                               rtol=1e-11, atol=1e-13)


def test_row_blocks_float32(monkeypatch):
    numba = pytest.importorskip("numba")
    from nnlite.backend import numba_backend

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one Numba thread: no row blocks")
    whole = _fit_loop("numba", "adam", batch_size=8, dtype="float32")
    monkeypatch.setattr(numba_backend, "MIN_BLOCK_ROWS", 2)
    blocks = _fit_loop("numba", "adam", batch_size=8, dtype="float32")
    np.testing.assert_allclose(blocks[0]["loss"], whole[0]["loss"], rtol=1e-5)
    for a, b in zip(blocks[1], whole[1]):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_loop_refuses_an_unknown_update_rule():
    from nnlite.backend import Backend

    model = _compiled(_model())
    stack = _stack_of(model)
    plan = stack.plan(2)
    plan.x = np.empty((2, 12), plan.params.dtype)
    with pytest.raises(ValueError, match="unknown update rule 'adamw'"):
        Backend().dense_stack_train(np.zeros((2, 12), np.float32), np.zeros(2, np.int64),
                                    np.arange(2), plan, ("adamw", (), np.zeros((1, 1))),
                                    np.zeros(1, np.float32))
