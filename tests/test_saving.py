"""Whole-model saving: ``model.save`` / ``nnlite.models.load_model`` round trips, training that
resumes bit for bit, every layer type, dtypes, errors and atomic writes."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import nnlite
from nnlite.callbacks import ModelCheckpoint
from nnlite.models import load_model, saving

L = nnlite.layers


def _data(n=300, d=20, classes=3, seed=0):
    r = np.random.default_rng(seed)
    return (r.standard_normal((n, d)).astype(nnlite.config.floatx()),
            r.integers(0, classes, n))


def _mlp(optimizer, seed=1):
    model = nnlite.Sequential([nnlite.Input((20,)), L.Dense(16, activation="relu"),
                               L.Dense(3, activation="softmax")], seed=seed)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _same_weights(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("optimizer", [
    nnlite.optimizers.Adam(0.01),
    nnlite.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    nnlite.optimizers.RMSprop(0.01, momentum=0.5, centered=True),
], ids=["adam", "nesterov", "rmsprop-centered"])
def test_training_resumes_bit_for_bit(backend, tmp_path, optimizer):
    """Save after two epochs, load, train both two more: identical History and weights (the
    optimizer's step count and moments came back too)."""
    x, y = _data()
    config = optimizer.get_config()
    model = _mlp(type(optimizer)(**config))
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_model(path)
    assert type(loaded.optimizer) is type(optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.iterations == model.optimizer.iterations == 20
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    first = model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    second = loaded.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    assert first.history == second.history
    assert _same_weights(model, loaded)


def test_resuming_without_the_optimizer_state_differs(tmp_path):
    """The test above can fail: the same run with the moments dropped parts ways."""
    x, y = _data()
    model = _mlp(nnlite.optimizers.Adam(0.01))
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    model.save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        files = {n: archive.read(n) for n in archive.namelist() if n != "optimizer.npz"}
    with zipfile.ZipFile(tmp_path / "stateless.keras", "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    loaded = load_model(tmp_path / "stateless.keras")
    assert loaded.optimizer.iterations == 0
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert not _same_weights(model, loaded)


def test_saved_before_training_starts_from_zero_state(tmp_path):
    x, y = _data()
    model = _mlp("adam")
    model.save(tmp_path / "fresh.keras")
    loaded = load_model(tmp_path / "fresh.keras")
    model.fit(x, y, batch_size=50, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=50, epochs=1, shuffle=False, verbose=0)
    assert _same_weights(model, loaded)


def test_every_layer_type_round_trips(backend, tmp_path):
    r = np.random.default_rng(2)
    x = r.standard_normal((12, 28, 28)).astype(np.float32)
    model = nnlite.Sequential([
        nnlite.Input((28, 28)), L.LSTM(6, return_sequences=True), L.LSTM(5),
        L.Dense(12, use_bias=False), L.Reshape((3, 4)), L.Flatten(), L.Activation("tanh"),
        L.ReLU(max_value=0.5, negative_slope=0.1), L.Dropout(0.25, seed=3),
        L.Dense(4), L.Softmax(),
    ], name="everything")
    model.compile(optimizer="rmsprop", loss=nnlite.losses.CategoricalCrossentropy(),
                  metrics=["categorical_accuracy", nnlite.metrics.BinaryAccuracy(threshold=0.3)])
    model.save(tmp_path / "everything.keras")
    loaded = load_model(tmp_path / "everything.keras")
    assert loaded.name == "everything" and loaded.input_shape == (None, 28, 28)
    assert [layer.get_config() for layer in loaded.layers] == [
        layer.get_config() for layer in model.layers]
    assert [type(m).__name__ for m in loaded.metrics] == ["CategoricalAccuracy",
                                                          "BinaryAccuracy"]
    assert loaded.metrics[1].threshold == 0.3
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_dtype_and_uncompiled_models(tmp_path, float64):
    model = nnlite.Sequential([nnlite.Input((4,)), L.Dense(2, activation="sigmoid")])
    model.save(tmp_path / "plain.keras")  # never compiled: no compile config, no optimizer
    nnlite.config.set_floatx("float32")
    loaded = load_model(tmp_path / "plain.keras")
    assert not loaded.compiled
    assert loaded.layers[0].dtype == np.float64  # the layer's own dtype, not today's floatx
    assert _same_weights(model, loaded)
    with zipfile.ZipFile(tmp_path / "plain.keras") as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json",
                                              "model.weights.npz"]
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["format"] == "nnlite-model" and metadata["floatx"] == "float64"


def test_load_without_compiling(tmp_path):
    model = _mlp("adam")
    nnlite.saving.save_model(model, tmp_path / "m.keras")  # Keras 3's keras.saving names too
    assert not nnlite.saving.load_model(tmp_path / "m.keras", compile=False).compiled


def test_a_schedule_object_is_saved_and_training_resumes_on_it(tmp_path):
    x, y = _data()
    schedule = nnlite.optimizers.schedules.ExponentialDecay(0.05, decay_steps=7, decay_rate=0.5)
    model = _mlp(nnlite.optimizers.SGD(learning_rate=schedule, momentum=0.9))
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert repr(loaded.optimizer.learning_rate) == repr(schedule)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert _same_weights(model, loaded)


def test_a_learning_rate_schedule_is_saved_as_its_current_value(tmp_path):
    """A plain callable (not a schedule object) cannot be saved: its current value is."""
    model = _mlp(nnlite.optimizers.SGD(learning_rate=lambda step: 0.1 / (step + 1)))
    with pytest.warns(UserWarning, match=r"schedule \(a callable\).*current value 0\.1"):
        model.save(tmp_path / "m.keras")
    assert load_model(tmp_path / "m.keras").optimizer.learning_rate == 0.1


def test_errors(tmp_path):
    unbuilt = nnlite.Sequential([L.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        unbuilt.save(tmp_path / "u.keras")
    assert not (tmp_path / "u.keras").exists()
    model = _mlp("adam")
    model.save(tmp_path / "m.keras")
    with pytest.raises(FileExistsError, match="exists"):
        model.save(tmp_path / "m.keras", overwrite=False)
    (tmp_path / "text.keras").write_text("not a zip")
    with pytest.raises(ValueError, match=r"'.*text.keras' is not an nnlite model archive"):
        load_model(tmp_path / "text.keras")
    model.save_weights(tmp_path / "w.npz")  # an .npz is a zip too, without the metadata
    with pytest.raises(ValueError, match=r"not an nnlite model archive.*TensorFlow Keras"):
        load_model(tmp_path / "w.npz")
    custom = _mlp("adam")
    custom.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                   metrics=[nnlite.metrics.MeanMetricWrapper(lambda t, p: p[:, 0], "first")])
    with pytest.raises(ValueError, match="metric 'first'"):
        custom.save(tmp_path / "c.keras")


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    model = _mlp("adam")
    model.save(tmp_path / "m.keras")
    before = (tmp_path / "m.keras").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(saving.zipfile.ZipFile, "writestr", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "m.keras")
    assert (tmp_path / "m.keras").read_bytes() == before
    assert os.listdir(tmp_path) == ["m.keras"]


def test_model_checkpoint_saves_the_whole_model(tmp_path):
    x, y = _data()
    model = _mlp(nnlite.optimizers.Adam(0.01))
    stop = nnlite.callbacks.EarlyStopping(patience=100, restore_best_weights=True)
    model.fit(x[:240], y[:240], validation_data=(x[240:], y[240:]), batch_size=32, epochs=8,
              verbose=0, callbacks=[ModelCheckpoint(tmp_path / "best.keras",
                                                    save_best_only=True), stop])
    best = load_model(tmp_path / "best.keras")
    assert best.optimizer.iterations == 8 * (stop.best_epoch + 1)
    assert _same_weights(best, model)  # EarlyStopping restored the same epoch's weights
