"""Training with Sequential: fit/evaluate/predict, callbacks in fit, seeds, bad input, float64."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

import nnlite
from nnlite import callbacks as cb
from nnlite.layers import Dense, Dropout, Input, Layer
from nnlite.models import NonFiniteLossWarning


def mlp(hidden=(64,), seed=0, dropout=None, last="softmax", inputs=784, outputs=10):
    layers = [Input((inputs,))]
    for h in hidden:
        layers.append(Dense(h, activation="relu"))
        if dropout:
            layers.append(Dropout(dropout))
    layers.append(Dense(outputs, activation=last))
    return nnlite.Sequential(layers, seed=seed)


def compiled(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=("accuracy",),
             **kwargs):
    model = mlp(**kwargs)
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
    return model


def assert_weights_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def manual_forward(model, x):
    """ReLU hidden layers and a softmax output, in float64, from get_weights()."""
    w = model.get_weights()
    h = np.asarray(x, np.float64)
    for i in range(0, len(w) - 2, 2):
        h = np.maximum(h @ w[i] + w[i + 1], 0)
    return softmax(h @ w[-2] + w[-1])


class BatchRecorder(Layer):
    """Identity layer that records the batch size of every forward pass."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sizes = []

    def forward(self, x, training=False):
        self.sizes.append(int(x.shape[0]))
        return x

    def backward(self, dy):
        return dy


def recorder_model(inputs=784):
    rec = BatchRecorder()
    model = nnlite.Sequential([Input((inputs,)), rec, Dense(10, activation="softmax")], seed=0)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, rec


# -- convergence -------------------------------------------------------------------------------


def test_fit_mnist_subset_converges(backend, mnist_small):
    (x, y), (xt, yt) = mnist_small
    model = compiled(seed=0)
    history = model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 5
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0]
    train_loss, train_acc = model.evaluate(x, y, batch_size=500, verbose=0)
    assert train_acc > 0.9
    assert train_loss < losses[0]
    _, test_acc = model.evaluate(xt, yt, batch_size=500, verbose=0)
    assert test_acc > 0.85


def test_history_keys_order_and_lengths(mnist_small):
    (x, y), _ = mnist_small
    model = compiled()
    history = model.fit(x[:500], y[:500], batch_size=50, epochs=3, validation_split=0.2,
                        verbose=0)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(len(v) == 3 for v in history.history.values())
    assert all(type(v) is float for vs in history.history.values() for v in vs)
    assert history.epoch == [0, 1, 2]
    assert model.history is history


def test_history_params_and_initial_epoch(mnist_small):
    (x, y), _ = mnist_small
    model = compiled()
    history = model.fit(x[:100], y[:100], batch_size=32, epochs=2, verbose=0)
    assert history.params == {"verbose": 0, "epochs": 2, "steps": 4}  # as Keras 3
    history = model.fit(x[:100], y[:100], batch_size=32, epochs=5, initial_epoch=3, verbose=0)
    assert history.epoch == [3, 4]
    assert len(history.history["loss"]) == 2


def test_history_without_validation_has_training_keys_only(mnist_small):
    (x, y), _ = mnist_small
    history = compiled().fit(x[:200], y[:200], epochs=2, verbose=0)
    assert list(history.history) == ["loss", "accuracy"]


def test_verbose2_printed_figures_equal_history(mnist_small, capsys):
    (x, y), _ = mnist_small
    model = compiled()
    history = model.fit(x[:600], y[:600], batch_size=50, epochs=3, validation_split=0.25,
                        verbose=2)
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("Epoch ")] == [
        "Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    epoch_lines = [line for line in out.splitlines() if " - loss: " in line]
    assert len(epoch_lines) == 3
    for i, line in enumerate(epoch_lines):
        assert line.startswith("9/9 - ")  # 450 training samples / 50
        printed = dict(re.findall(r" - (\w+): ([-+.\deE]+)", line))
        assert list(printed) == ["loss", "accuracy", "val_loss", "val_accuracy"]
        for key, text in printed.items():
            assert text == f"{history.history[key][i]:.4f}", (key, line)


def test_verbose0_prints_nothing(mnist_small, capsys):
    (x, y), _ = mnist_small
    model = compiled()
    model.fit(x[:100], y[:100], epochs=2, verbose=0)
    model.evaluate(x[:100], y[:100], verbose=0)
    model.predict(x[:100], verbose=0)
    assert capsys.readouterr().out == ""


# -- validation --------------------------------------------------------------------------------


def test_validation_split_takes_the_last_fraction_zero_lr(backend, mnist_small):
    (x, y), _ = mnist_small
    x, y = x[:1000], y[:1000]
    model = compiled(optimizer=nnlite.optimizers.SGD(learning_rate=0.0))
    before = model.get_weights()
    history = model.fit(x, y, batch_size=50, epochs=1, validation_split=0.2, shuffle=False,
                        verbose=0)
    assert_weights_equal(model.get_weights(), before)
    tail = model.evaluate(x[800:], y[800:], batch_size=50, verbose=0, return_dict=True)
    head = model.evaluate(x[:200], y[:200], batch_size=50, verbose=0, return_dict=True)
    train = model.evaluate(x[:800], y[:800], batch_size=50, verbose=0, return_dict=True)
    assert history.history["val_loss"] == [tail["loss"]]
    assert history.history["val_accuracy"] == [tail["accuracy"]]
    assert head["loss"] != tail["loss"]
    # The training figures come from the first 80% only (same batches, same order).
    assert history.history["loss"] == [train["loss"]]
    assert history.history["accuracy"] == [train["accuracy"]]


def test_validation_split_is_taken_before_shuffling(mnist_small):
    (x, y), _ = mnist_small
    x, y = x[:500], y[:500]
    model = compiled()
    history = model.fit(x, y, batch_size=40, epochs=2, validation_split=0.3, verbose=0)
    tail = model.evaluate(x[350:], y[350:], batch_size=40, verbose=0)
    assert history.history["val_loss"][-1] == tail[0]
    assert history.history["val_accuracy"][-1] == tail[1]


def test_validation_data(backend, mnist_small):
    (x, y), (xt, yt) = mnist_small
    model = compiled()
    history = model.fit(x[:400], y[:400], batch_size=40, epochs=2,
                        validation_data=(xt[:100], yt[:100]), verbose=0)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    loss, acc = model.evaluate(xt[:100], yt[:100], batch_size=40, verbose=0)
    assert history.history["val_loss"][-1] == loss
    assert history.history["val_accuracy"][-1] == acc


def test_validation_data_overrides_validation_split(mnist_small):
    (x, y), (xt, yt) = mnist_small
    model, rec = recorder_model()
    model.fit(x[:100], y[:100], batch_size=100, epochs=1, validation_split=0.5,
              validation_data=(xt[:10], yt[:10]), verbose=0)
    assert rec.sizes == [100, 10]  # all 100 samples trained on, 10 validated


# -- batching and shuffling --------------------------------------------------------------------


def test_batch_size_none_means_32(mnist_small):
    (x, y), _ = mnist_small
    model, rec = recorder_model()
    steps = []
    counter = cb.LambdaCallback(on_train_batch_begin=lambda batch, logs=None: steps.append(batch))
    model.fit(x[:100], y[:100], epochs=1, verbose=0, callbacks=[counter])
    assert steps == [0, 1, 2, 3]
    assert rec.sizes == [32, 32, 32, 4]
    rec.sizes.clear()
    model.evaluate(x[:70], y[:70], verbose=0)
    assert rec.sizes == [32, 32, 6]
    rec.sizes.clear()
    model.predict(x[:33], verbose=0)
    assert rec.sizes == [32, 1]


def test_batch_size_larger_than_data(mnist_small):
    (x, y), _ = mnist_small
    model, rec = recorder_model()
    history = model.fit(x[:50], y[:50], batch_size=1000, epochs=2, verbose=0)
    assert rec.sizes == [50, 50]
    assert len(history.history["loss"]) == 2
    rec.sizes.clear()
    assert model.predict(x[:50], batch_size=1000, verbose=0).shape == (50, 10)
    assert rec.sizes == [50]


def test_full_batch_reads_the_data_in_place(backend, float64, mnist_small, monkeypatch):
    """One batch of every sample: no gather (x itself is the batch), and shuffling changes
    nothing but the rounding (the mean gradient does not depend on the sample order)."""
    (x, y), _ = mnist_small
    x = x[:300].astype(np.float64)
    gathers = []
    original = type(backend).gather
    monkeypatch.setattr(type(backend), "gather",
                        lambda self, *a, **k: gathers.append(1) or original(self, *a, **k))
    runs = []
    for shuffle in (True, False):
        model = compiled(seed=5)
        history = model.fit(x, y[:300], batch_size=300, epochs=3, shuffle=shuffle, verbose=0)
        runs.append((history.history["loss"], model.get_weights()))
    assert not gathers
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-12)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    model = compiled(seed=5)
    model.fit(x[:299].astype(np.float32), y[:299], batch_size=300, epochs=1, verbose=0)
    assert gathers  # a cast to floatx still goes through the gather


def test_shuffle_false_is_deterministic(backend, mnist_small):
    (x, y), _ = mnist_small
    a = compiled(seed=3)
    b = compiled(seed=4)
    b.set_weights(a.get_weights())
    ha = a.fit(x[:500], y[:500], batch_size=50, epochs=2, shuffle=False, verbose=0)
    nnlite.random.global_generator().random(1000)  # global draws must not matter
    np.random.random(1000)
    hb = b.fit(x[:500], y[:500], batch_size=50, epochs=2, shuffle=False, verbose=0)
    assert ha.history == hb.history
    assert_weights_equal(a.get_weights(), b.get_weights())


def test_shuffle_true_changes_the_batches(mnist_small):
    (x, y), _ = mnist_small
    a = compiled(seed=3)
    b = compiled(seed=4)
    b.set_weights(a.get_weights())
    a.fit(x[:500], y[:500], batch_size=50, epochs=1, shuffle=False, verbose=0)
    b.fit(x[:500], y[:500], batch_size=50, epochs=1, shuffle=True, verbose=0)
    assert not np.array_equal(a.get_weights()[0], b.get_weights()[0])


# -- evaluate / predict / on-batch -------------------------------------------------------------


def test_evaluate_return_forms(backend, mnist_small):
    (x, y), _ = mnist_small
    x, y = x[:300], y[:300]
    model = compiled()
    result = model.evaluate(x, y, verbose=0)
    assert isinstance(result, list) and len(result) == 2
    assert all(isinstance(v, float) for v in result)
    as_dict = model.evaluate(x, y, verbose=0, return_dict=True)
    assert list(as_dict) == ["loss", "accuracy"]
    assert [as_dict["loss"], as_dict["accuracy"]] == result
    # The figures are the mean cross-entropy and accuracy of the predictions.
    p = manual_forward(model, x)
    assert result[0] == pytest.approx(-np.mean(np.log(p[np.arange(300), y])), rel=1e-5)
    assert result[1] == pytest.approx(np.mean(p.argmax(axis=1) == y), rel=1e-6)  # float32 sums

    no_metrics = mlp()
    no_metrics.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    loss = no_metrics.evaluate(x, y, verbose=0)
    assert isinstance(loss, float)
    assert no_metrics.evaluate(x, y, verbose=0, return_dict=True) == {"loss": loss}


def test_evaluate_verbose_prints_a_bar(mnist_small, capsys):
    (x, y), _ = mnist_small
    loss, acc = compiled().evaluate(x[:64], y[:64], batch_size=32, verbose=2)
    out = capsys.readouterr().out
    assert f"loss: {loss:.4f}" in out and f"accuracy: {acc:.4f}" in out


def test_predict_shape_dtype_type_and_values(backend, mnist_small):
    (x, y), _ = mnist_small
    model = compiled(hidden=(32, 16))
    out = model.predict(x[:77], verbose=0)
    assert type(out) is np.ndarray
    assert out.shape == (77, 10)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, manual_forward(model, x[:77]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model.predict(x[:77], batch_size=10, verbose=0), out,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.predict_on_batch(x[:77]), out, rtol=1e-5, atol=1e-7)


def test_predict_accepts_lists_and_integer_arrays():
    model = mlp(inputs=3, hidden=(4,), outputs=2)
    from_list = model.predict([[0, 1, 2], [3, 4, 5]], verbose=0)
    from_int = model.predict(np.array([[0, 1, 2], [3, 4, 5]], np.int64), verbose=0)
    assert from_list.dtype == np.float32 and from_list.shape == (2, 2)
    np.testing.assert_array_equal(from_list, from_int)


def test_train_on_batch_returns_pre_update_loss_and_updates(backend, mnist_small):
    (x, y), _ = mnist_small
    xb, yb = x[:64], y[:64]
    model = compiled()
    before = model.get_weights()
    loss0, acc0 = model.test_on_batch(xb, yb)
    assert_weights_equal(model.get_weights(), before)  # test_on_batch changes nothing
    assert model.evaluate(xb, yb, batch_size=64, verbose=0) == pytest.approx([loss0, acc0])
    loss, acc = model.train_on_batch(xb, yb)
    assert loss == pytest.approx(loss0, rel=1e-6)
    assert acc == acc0
    after = model.get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    loss1, _ = model.test_on_batch(xb, yb)
    assert loss1 < loss0
    logs = model.train_on_batch(xb, yb, return_dict=True)
    assert list(logs) == ["loss", "accuracy"]
    assert logs["loss"] == pytest.approx(loss1, rel=1e-6)


def test_on_batch_without_metrics_returns_a_float(mnist_small):
    (x, y), _ = mnist_small
    model = compiled(metrics=())
    assert isinstance(model.train_on_batch(x[:10], y[:10]), float)
    assert isinstance(model.test_on_batch(x[:10], y[:10]), float)


# -- other losses ------------------------------------------------------------------------------


def test_one_hot_labels_with_categorical_crossentropy(backend, mnist_small):
    (x, y), _ = mnist_small
    onehot = nnlite.utils.to_categorical(y, 10)
    model = compiled(loss="categorical_crossentropy")
    history = model.fit(x, onehot, batch_size=50, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    loss, acc = model.evaluate(x, onehot, batch_size=500, verbose=0)
    assert acc > 0.9
    p = model.predict(x, verbose=0)
    assert acc == pytest.approx(np.mean(p.argmax(1) == y), rel=1e-6)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), rel=1e-4)


def test_mse_regression_trains(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 5)).astype(np.float32)
    w = rng.standard_normal((5, 2))
    y = (np.tanh(x @ w) + 0.01 * rng.standard_normal((512, 2))).astype(np.float32)
    model = nnlite.Sequential([Input((5,)), Dense(32, activation="tanh"), Dense(2)], seed=0)
    model.compile(optimizer=nnlite.optimizers.Adam(learning_rate=0.01), loss="mse")
    initial = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=32, epochs=20, verbose=0)
    assert list(history.history) == ["loss"]
    final = model.evaluate(x, y, verbose=0)
    assert final < 0.1 * initial
    assert final == pytest.approx(np.mean((model.predict(x, verbose=0) - y) ** 2), rel=1e-4)


def test_from_logits_with_linear_last_layer(backend, mnist_small):
    (x, y), _ = mnist_small
    model = mlp(last=None)
    loss_fn = nnlite.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss=loss_fn, metrics=["accuracy"])
    model.fit(x, y, batch_size=50, epochs=4, verbose=0)
    loss, acc = model.evaluate(x, y, batch_size=500, verbose=0)
    assert acc > 0.9
    logits = model.predict(x, verbose=0)
    assert not np.allclose(logits.sum(axis=1), 1.0)  # logits, not probabilities
    p = softmax(logits.astype(np.float64))
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), rel=1e-4)


def test_dropout_model_trains_and_predicts_deterministically(backend, mnist_small):
    (x, y), _ = mnist_small
    model = compiled(dropout=0.3)
    model.fit(x, y, batch_size=50, epochs=4, verbose=0)
    _, acc = model.evaluate(x, y, batch_size=500, verbose=0)
    assert acc > 0.9
    p1 = model.predict(x[:100], verbose=0)
    p2 = model.predict(x[:100], verbose=0)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_allclose(p1, manual_forward(model, x[:100]), rtol=1e-4, atol=1e-6)
    t1 = nnlite.get_backend().to_numpy(model(x[:100], training=True))
    t2 = nnlite.get_backend().to_numpy(model(x[:100], training=True))
    assert not np.array_equal(t1, t2)  # dropout is active in training mode


# -- callbacks inside fit ----------------------------------------------------------------------


def expected_early_stop_epochs(values, patience):
    """Epochs that Keras 3's EarlyStopping (mode min, no baseline) lets run, given `values`."""
    best, wait = None, 0
    for epoch, value in enumerate(values):
        wait += 1
        if best is None or value < best:
            best, wait = value, 0
            continue
        if wait >= patience and epoch > 0:
            return epoch + 1
    return len(values)


def overfitting_run(mnist_small, patience, restore, epochs=30):
    (x, y), (xt, yt) = mnist_small
    nnlite.utils.set_random_seed(0)
    model = compiled(hidden=(128,), optimizer=nnlite.optimizers.Adam(learning_rate=0.01))
    snapshots = []
    snap = cb.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights()))
    stop = cb.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=restore)
    history = model.fit(x[:150], y[:150], batch_size=50, epochs=epochs,
                        validation_data=(xt[:200], yt[:200]), callbacks=[snap, stop], verbose=0)
    return model, history, snapshots, stop


def test_early_stopping_stops_after_patience(mnist_small):
    model, history, snapshots, stop = overfitting_run(mnist_small, patience=2, restore=False)
    val = history.history["val_loss"]
    ran = len(val)
    assert ran < 30, "the run should overfit and stop early"
    assert ran == expected_early_stop_epochs(val, 2)
    assert ran == len(snapshots)
    assert stop.stopped_epoch == ran - 1
    best = int(np.argmin(val))
    assert stop.best_epoch == best and stop.best == val[best]
    assert ran - 1 - best == 2  # stopped exactly `patience` epochs after the best one
    assert_weights_equal(model.get_weights(), snapshots[-1])  # no restore asked


def test_early_stopping_restores_best_weights(backend, mnist_small):
    model, history, snapshots, stop = overfitting_run(mnist_small, patience=3, restore=True)
    val = history.history["val_loss"]
    best = int(np.argmin(val))
    assert len(val) == best + 4 < 30
    assert stop.best_epoch == best
    assert_weights_equal(model.get_weights(), snapshots[best])
    assert not np.array_equal(model.get_weights()[0], snapshots[-1][0])


def test_early_stopping_patience_zero_stops_at_first_non_improvement(mnist_small):
    _, history, _, _ = overfitting_run(mnist_small, patience=0, restore=False)
    val = history.history["val_loss"]
    assert all(b < a for a, b in zip(val[:-1], val[1:-1])), val
    assert val[-1] >= min(val[:-1])


def test_stop_training_set_by_a_callback_ends_fit_after_the_epoch(mnist_small):
    (x, y), _ = mnist_small
    model = compiled()
    batches = []

    def on_batch(batch, logs=None):
        batches.append(batch)

    def on_epoch_end(epoch, logs):
        if epoch == 1:
            model.stop_training = True

    history = model.fit(x[:200], y[:200], batch_size=50, epochs=10, verbose=0,
                        callbacks=[cb.LambdaCallback(on_train_batch_end=on_batch,
                                                     on_epoch_end=on_epoch_end)])
    assert len(history.history["loss"]) == 2
    assert batches == [0, 1, 2, 3] * 2
    # A new fit starts again (stop_training is reset).
    history = model.fit(x[:200], y[:200], batch_size=50, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1


def huge_lr_model():
    model = compiled(optimizer=nnlite.optimizers.SGD(learning_rate=1e6))
    return model


def test_nan_guard_stops_fit_with_a_warning(backend, mnist_small):
    (x, y), _ = mnist_small
    model = huge_lr_model()
    steps = []
    counter = cb.LambdaCallback(on_train_batch_end=lambda batch, logs=None: steps.append(batch))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x * 255, y, batch_size=100, epochs=5, verbose=0,
                            callbacks=[counter])
    guard = [w for w in caught if issubclass(w.category, NonFiniteLossWarning)]
    assert len(guard) == 1
    assert "smaller learning rate" in str(guard[0].message)
    assert len(history.history["loss"]) == 1  # stopped in the first epoch
    assert len(steps) < 20  # 2000 samples / 100 per step: stopped before the end of the epoch
    assert not math.isfinite(history.history["loss"][0])
    assert issubclass(NonFiniteLossWarning, UserWarning)
    assert nnlite.models.NonFiniteLossWarning is NonFiniteLossWarning


def test_terminate_on_nan_in_fit(mnist_small, capsys):
    (x, y), _ = mnist_small
    model = huge_lr_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x * 255, y, batch_size=100, epochs=5, verbose=0,
                            callbacks=[cb.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1
    assert "Invalid loss, terminating training" in capsys.readouterr().out
    assert any(issubclass(w.category, NonFiniteLossWarning) for w in caught)


def test_terminate_on_nan_raise_error(mnist_small):
    (x, y), _ = mnist_small
    model = huge_lr_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="NaN or Inf loss"):
            model.fit(x * 255, y, batch_size=100, epochs=5, verbose=0,
                      callbacks=[cb.TerminateOnNaN(raise_error=True)])


# -- seeds -------------------------------------------------------------------------------------


def seeded_global_run(mnist_small, seed):
    (x, y), _ = mnist_small
    nnlite.utils.set_random_seed(seed)
    model = mlp(hidden=(32,), seed=None, dropout=0.3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x[:600], y[:600], batch_size=50, epochs=2, validation_split=0.1,
                        shuffle=True, verbose=0)
    return history.history, model.get_weights()


def test_set_random_seed_makes_runs_bit_identical(backend, mnist_small):
    h1, w1 = seeded_global_run(mnist_small, 42)
    h2, w2 = seeded_global_run(mnist_small, 42)
    assert h1 == h2
    assert_weights_equal(w1, w2)
    h3, w3 = seeded_global_run(mnist_small, 43)
    assert h3 != h1
    assert not np.array_equal(w3[0], w1[0])


def seeded_model_run(mnist_small, seed):
    (x, y), _ = mnist_small
    model = mlp(hidden=(32,), seed=seed, dropout=0.3)
    initial = model.get_weights()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x[:600], y[:600], batch_size=50, epochs=2, shuffle=True, verbose=0)
    return initial, history.history, model.get_weights()


def test_model_seed_is_reproducible_whatever_the_global_draws(mnist_small):
    i1, h1, w1 = seeded_model_run(mnist_small, 5)
    nnlite.random.global_generator().random(12345)
    np.random.random(777)
    nnlite.utils.set_random_seed(99)
    i2, h2, w2 = seeded_model_run(mnist_small, 5)
    assert_weights_equal(i1, i2)
    assert h1 == h2
    assert_weights_equal(w1, w2)
    i3, h3, w3 = seeded_model_run(mnist_small, 6)
    assert not np.array_equal(i3[0], i1[0])
    assert h3 != h1


def test_set_random_seed_rejects_bad_seeds():
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(ValueError, match="non-negative int"):
            nnlite.utils.set_random_seed(bad)


# -- bad input ---------------------------------------------------------------------------------


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    x = rng.random((40, 784), dtype=np.float32)
    y = rng.integers(0, 10, 40)
    model = compiled(hidden=(8,))
    return model, x, y


def test_input_shape_mismatch_names_both_shapes(small):
    model, x, y = small
    before = model.get_weights()
    for call in (lambda: model.fit(x[:, :100], y, verbose=0),
                 lambda: model.evaluate(x[:, :100], y, verbose=0),
                 lambda: model.predict(x[:, :100], verbose=0)):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "(None, 784)" in message and "(None, 100)" in message
    assert_weights_equal(model.get_weights(), before)


def test_validation_data_shape_mismatch(small):
    model, x, y = small
    with pytest.raises(ValueError, match=r"\(None, 784\).*\(None, 700\)"):
        model.fit(x, y, validation_data=(x[:, :700], y), verbose=0)


def test_labels_out_of_range_name_range_and_values(small):
    model, x, y = small
    before = model.get_weights()
    y_high = y.copy()
    y_high[3] = 10
    with pytest.raises(ValueError) as info:
        model.fit(x, y_high, verbose=0)
    assert "[0, 10)" in str(info.value) and "10" in str(info.value).split("received")[-1]
    y_low = y.copy()
    y_low[0] = -2
    with pytest.raises(ValueError, match=r"\[0, 10\).*-2"):
        model.evaluate(x, y_low, verbose=0)
    with pytest.raises(ValueError, match="whole numbers"):
        model.fit(x, y + 0.5, verbose=0)
    assert_weights_equal(model.get_weights(), before)


def test_one_hot_labels_with_sparse_loss_are_rejected(small):
    model, x, y = small
    with pytest.raises(ValueError, match="CategoricalCrossentropy"):
        model.fit(x, nnlite.utils.to_categorical(y, 10), verbose=0)


def test_nan_and_inf_in_x_are_rejected(small):
    model, x, y = small
    for bad_value in (np.nan, np.inf, -np.inf):
        bad = x.copy()
        bad[5, 17] = bad_value
        with pytest.raises(ValueError, match="NaN or infinite"):
            model.fit(bad, y, verbose=0)
        with pytest.raises(ValueError, match="NaN or infinite"):
            model.predict(bad, verbose=0)


def test_nan_in_regression_targets_is_rejected():
    model = nnlite.Sequential([Input((3,)), Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="`y` contains NaN"):
        model.fit(np.zeros((4, 3)), np.array([[0.0], [np.nan], [1.0], [2.0]]), verbose=0)


def test_non_numeric_x_raises_type_error(small):
    model, x, y = small
    for bad in (x.astype(str), x.astype(object), [["a"] * 784] * 40):
        with pytest.raises(TypeError, match="numeric"):
            model.fit(bad, y, verbose=0)
    with pytest.raises(TypeError, match="numeric"):
        model.predict(x.astype(object), verbose=0)
    with pytest.raises(TypeError, match="numeric"):
        model.fit(x, y.astype(str), verbose=0)


def test_x_y_length_mismatch(small):
    model, x, y = small
    with pytest.raises(ValueError, match="40 samples but `y` has 39"):
        model.fit(x, y[:-1], verbose=0)
    with pytest.raises(ValueError, match="40 samples but `y` has 39"):
        model.evaluate(x, y[:-1], verbose=0)


def test_x_without_batch_axis(small):
    model, x, _ = small
    with pytest.raises(ValueError, match=r"batch axis.*\(784,\)"):
        model.predict(x[0], verbose=0)


@pytest.mark.parametrize("kind, make, valid", [
    ("optimizer", lambda: mlp().compile(optimizer="adamw", loss="mse"), ["adam", "rmsprop", "sgd"]),
    ("loss", lambda: mlp().compile(optimizer="adam", loss="crossentropy"),
     ["categorical_crossentropy", "mean_squared_error", "sparse_categorical_crossentropy"]),
    ("metric", lambda: mlp().compile(optimizer="adam", loss="mse", metrics=["acuracy"]),
     ["accuracy", "categorical_accuracy"]),
    ("activation", lambda: Dense(3, activation="relux"), ["linear", "relu", "softmax", "tanh"]),
    ("initializer", lambda: Dense(3, kernel_initializer="glorot"),
     ["glorot_uniform", "he_normal", "zeros"]),
])
def test_unknown_names_list_the_valid_choices(kind, make, valid):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert message.lower().startswith(f"unknown {kind}")
    for name in valid:
        assert repr(name) in message


def test_failed_compile_leaves_the_model_unchanged(small):
    model, x, y = small
    optimizer, loss = model.optimizer, model.loss
    with pytest.raises(ValueError, match="Unknown metric"):
        model.compile(optimizer="sgd", loss="mse", metrics=["acuracy"])
    assert model.optimizer is optimizer and model.loss is loss
    model.fit(x, y, epochs=1, verbose=0)


def test_fit_evaluate_before_compile_raise_runtime_error(small):
    _, x, y = small
    model = mlp()
    for call in (lambda: model.fit(x, y, verbose=0), lambda: model.evaluate(x, y, verbose=0),
                 lambda: model.train_on_batch(x, y), lambda: model.test_on_batch(x, y)):
        with pytest.raises(RuntimeError, match="compile"):
            call()
    assert model.predict(x, verbose=0).shape == (40, 10)  # predict needs no compile, as Keras


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, "32", 1e9])
def test_bad_batch_size(small, batch_size):
    model, x, y = small
    for call in (lambda: model.fit(x, y, batch_size=batch_size, verbose=0),
                 lambda: model.evaluate(x, y, batch_size=batch_size, verbose=0),
                 lambda: model.predict(x, batch_size=batch_size, verbose=0)):
        with pytest.raises(ValueError, match="batch_size"):
            call()


@pytest.mark.parametrize("split", [1.0, 1.5, -0.1])
def test_bad_validation_split(small, split):
    model, x, y = small
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"validation_split.*\[0, 1\)"):
        model.fit(x, y, validation_split=split, verbose=0)
    assert_weights_equal(model.get_weights(), before)


def test_bad_validation_data_length(small):
    model, x, y = small
    with pytest.raises(ValueError, match="validation_data"):
        model.fit(x, y, validation_data=(x, y, None), verbose=0)


# -- float64 -----------------------------------------------------------------------------------


def test_float64_mode(backend, float64, mnist_small):
    (x, y), _ = mnist_small
    model = compiled(hidden=(32,))
    assert all(w.dtype == np.float64 for w in model.get_weights())
    assert all(p.dtype == np.float64 for layer in model.layers for p in layer.params.values())
    history = model.fit(x[:500], y[:500], batch_size=50, epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    out = model.predict(x[:20], verbose=0)  # float32 input, float64 model
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, manual_forward(model, x[:20]), rtol=1e-12, atol=1e-15)
    assert all(w.dtype == np.float64 for w in model.get_weights())
    assert nnlite.get_backend().to_numpy(model(x[:3])).dtype == np.float64


def test_float32_is_the_default(mnist_small):
    (x, _), _ = mnist_small
    model = compiled()
    assert nnlite.config.floatx() == "float32"
    assert model.predict(x[:4].astype(np.float64), verbose=0).dtype == np.float32
    assert all(w.dtype == np.float32 for w in model.get_weights())


@pytest.mark.parametrize("width, limited", [(16, True), (2048, False)])
def test_small_steps_run_blas_on_one_thread(width, limited, mnist_small):
    """fit, evaluate and predict run BLAS on one thread when a step is small (unless
    config.set_threads was called) and leave the libraries' own count for large steps."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    (x, y), _ = mnist_small
    seen = {}

    def blas_threads():
        return max(info["num_threads"] for info in threadpoolctl.threadpool_info()
                   if info["user_api"] == "blas")

    def state():  # BLAS threads, and whether Numba kernels may run in parallel
        return blas_threads(), nnlite.config.parallel_kernels()

    class Probe(cb.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen["fit"] = state()

        def on_test_batch_end(self, batch, logs=None):
            seen["evaluate"] = state()

        def on_predict_batch_end(self, batch, logs=None):
            seen["predict"] = state()

    outside = state()
    assert outside[1]
    model = compiled(hidden=(width,))
    model.fit(x[:64], y[:64], batch_size=32, verbose=0, callbacks=[Probe()])
    model.evaluate(x[:64], y[:64], batch_size=32, verbose=0, callbacks=[Probe()])
    model.predict(x[:64], batch_size=32, verbose=0, callbacks=[Probe()])
    # Large steps keep BLAS's threads, and the element-wise kernels then stay serial (their
    # parallel threads would spin on the cores BLAS needs).
    expected = (1, True) if limited else (outside[0], False)
    assert seen == {"fit": expected, "evaluate": expected, "predict": expected}
    assert state() == outside
