"""Sequential structure: construction, building, shapes, summary, weights, pop, save/load."""

from __future__ import annotations

import os

import numpy as np
import pytest

import nnlite
from nnlite.layers import Dense, Dropout, Flatten, Input


def mlp(hidden=(50, 50), seed=0, **kwargs):
    """784-hidden...-10 ReLU/softmax MLP with an Input first."""
    layers = [Input((784,))] + [Dense(h, activation="relu") for h in hidden]
    return nnlite.Sequential(layers + [Dense(10, activation="softmax")], seed=seed, **kwargs)


def weight_shapes(model):
    return [w.shape for w in model.get_weights()]


# -- construction ------------------------------------------------------------------------------


def test_list_and_add_construction_give_the_same_structure():
    listed = mlp()
    added = nnlite.Sequential(seed=0)
    added.add(Input((784,)))
    added.add(Dense(50, activation="relu"))
    added.add(Dense(50, activation="relu"))
    added.add(Dense(10, activation="softmax"))
    assert len(listed.layers) == len(added.layers) == 3
    assert all(isinstance(layer, Dense) for layer in added.layers)
    assert weight_shapes(listed) == weight_shapes(added)
    assert listed.input_shape == added.input_shape == (None, 784)
    assert listed.output_shape == added.output_shape == (None, 10)
    # Same seed, same layers: same initial weights.
    for a, b in zip(listed.get_weights(), added.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_input_first_builds_at_once_and_is_not_a_layer():
    model = nnlite.Sequential([Input(shape=(784,)), Dense(5)])
    assert model.built
    assert len(model.layers) == 1  # the Input is not kept as a layer, as in Keras 3
    assert model.layers[0].params["kernel"].shape == (784, 5)


def test_input_shape_on_first_layer_builds_the_model():
    model = nnlite.Sequential([Dense(50, activation="relu", input_shape=(784,)), Dense(10)])
    assert model.built
    assert model.input_shape == (None, 784)
    assert model.output_shape == (None, 10)
    assert weight_shapes(model) == [(784, 50), (50,), (50, 10), (10,)]


def test_model_without_input_shape_builds_on_first_data():
    model = nnlite.Sequential([Dense(4), Dense(3)])
    assert not model.built
    assert model.output_shape is None
    assert model.input_shape is None
    out = model.predict(np.zeros((2, 7), np.float32), verbose=0)
    assert model.built
    assert model.input_shape == (None, 7)
    assert out.shape == (2, 3)
    assert weight_shapes(model) == [(7, 4), (4,), (4, 3), (3,)]


def test_explicit_build_with_batch_axis():
    model = nnlite.Sequential([Dense(4), Dense(2)])
    model.build((None, 6))
    assert model.built
    assert model.input_shape == (None, 6)
    assert model.output_shape == (None, 2)


def test_build_without_input_shape_raises():
    with pytest.raises(ValueError, match="input shape is unknown"):
        nnlite.Sequential([Dense(4)]).build()


def test_input_must_come_first():
    model = nnlite.Sequential([Dense(3)])
    with pytest.raises(ValueError, match="Input can only be the first"):
        model.add(Input((4,)))


def test_add_rejects_non_layers():
    model = nnlite.Sequential()
    with pytest.raises(TypeError, match="expected an nnlite layer, received str"):
        model.add("dense")


def test_output_shape_through_flatten_and_dropout():
    model = nnlite.Sequential([Input((28, 28)), Flatten(), Dense(32, activation="relu"),
                               Dropout(0.5), Dense(10, activation="softmax")])
    assert model.input_shape == (None, 28, 28)
    assert [layer.output_shape for layer in model.layers] == [
        (None, 784), (None, 32), (None, 32), (None, 10)]
    assert model.output_shape == (None, 10)
    assert model.count_params() == 784 * 32 + 32 + 32 * 10 + 10


# -- counting and summary ----------------------------------------------------------------------


def test_count_params_784_50_50_10():
    model = mlp()
    assert model.count_params() == 42310 == 784 * 50 + 50 + 50 * 50 + 50 + 50 * 10 + 10
    assert sum(w.size for w in model.get_weights()) == 42310


def test_summary_lists_layers_shapes_and_total():
    model = mlp(name="mnist_mlp")
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert 'Model: "mnist_mlp"' in text
    for layer, params in zip(model.layers, ("39,250", "2,550", "510")):
        row = next(line for line in lines if line.startswith(layer.name + " "))
        assert "(Dense)" in row
        assert str(layer.output_shape) in row
        assert row.rstrip().endswith(params)
    assert "Total params: 42,310" in text
    assert "Trainable params: 42,310" in text
    assert "Non-trainable params: 0" in text


def test_summary_prints_to_stdout_by_default(capsys):
    mlp().summary()
    out = capsys.readouterr().out
    assert "Total params: 42,310" in out


# -- get_weights / set_weights -----------------------------------------------------------------


def test_get_weights_order_is_kernel_then_bias_per_layer():
    model = mlp()
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(784, 50), (50,), (50, 50), (50,), (50, 10), (10,)]
    expected = [layer.params[key] for layer in model.layers for key in ("kernel", "bias")]
    for got, param in zip(weights, expected):
        np.testing.assert_array_equal(got, param)
        assert got.dtype == np.float32
        assert type(got) is np.ndarray


def test_get_weights_returns_copies():
    model = mlp()
    weights = model.get_weights()
    weights[0][...] = 123.0
    assert not np.any(model.get_weights()[0] == 123.0)


def test_set_weights_round_trip_changes_predictions():
    model = mlp()
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    before = model.predict(x, verbose=0)
    rng = np.random.default_rng(1)
    new = [rng.standard_normal(w.shape).astype(np.float32) * 0.1 for w in model.get_weights()]
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, want)
    after = model.predict(x, verbose=0)
    assert not np.allclose(before, after)
    other = mlp(seed=7)
    other.set_weights(model.get_weights())
    np.testing.assert_array_equal(other.predict(x, verbose=0), after)


def test_set_weights_keeps_the_parameter_dtype_and_identity():
    model = mlp()
    kernel = model.layers[0].params["kernel"]
    model.set_weights([w.astype(np.float64) for w in model.get_weights()])
    assert model.layers[0].params["kernel"] is kernel  # assigned in place
    assert all(w.dtype == np.float32 for w in model.get_weights())


def test_set_weights_wrong_count_raises_and_assigns_nothing():
    model = mlp()
    before = model.get_weights()
    zeros = [np.zeros_like(w) for w in before]
    with pytest.raises(ValueError) as info:
        model.set_weights(zeros[:-1])
    message = str(info.value)
    assert model.name in message and "6" in message and "5" in message
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_set_weights_wrong_shape_names_layer_and_shapes_and_assigns_nothing():
    model = mlp()
    before = model.get_weights()
    bad = [np.zeros_like(w) for w in before]
    bad[-2] = np.zeros((50, 11), np.float32)  # last layer's kernel; earlier arrays are fine
    with pytest.raises(ValueError) as info:
        model.set_weights(bad)
    message = str(info.value)
    last = model.layers[-1].name
    assert repr(last) in message
    assert "(50, 10)" in message and "(50, 11)" in message
    # Nothing assigned, not even the valid arrays of the earlier layers.
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


# -- pop ---------------------------------------------------------------------------------------


def test_pop_removes_the_last_layer_and_allows_a_new_head():
    model = mlp()
    last = model.layers[-1]
    popped = model.pop()
    assert popped is last
    assert len(model.layers) == 2
    assert model.output_shape == (None, 50)
    assert model.count_params() == 42310 - 510
    model.add(Dense(3, activation="softmax"))
    assert model.output_shape == (None, 3)
    assert model.count_params() == 42310 - 510 + 50 * 3 + 3
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((6, 784), dtype=np.float32)
    out = model.predict(x, verbose=0)
    assert out.shape == (6, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    model.fit(x, np.array([0, 1, 2, 0, 1, 2]), epochs=1, verbose=0)


def test_pop_on_empty_model_raises():
    with pytest.raises(ValueError, match="no layers"):
        nnlite.Sequential().pop()


# -- save_weights / load_weights ---------------------------------------------------------------


def test_save_load_weights_round_trip(tmp_path):
    model = mlp(seed=1)
    x = np.random.default_rng(0).random((8, 784), dtype=np.float32)
    path = tmp_path / "weights.npz"
    model.save_weights(path)
    assert path.exists()
    other = mlp(seed=2)
    assert not np.allclose(other.predict(x, verbose=0), model.predict(x, verbose=0))
    other.load_weights(path)
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    for a, b in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_save_load_round_trip_with_parameterless_layers(tmp_path):
    def build(seed):
        return nnlite.Sequential([Input((28, 28)), Flatten(), Dense(16, activation="relu"),
                                  Dropout(0.2), Dense(10, activation="softmax")], seed=seed)

    model, other = build(1), build(2)
    path = tmp_path / "notebook.npz"
    model.save_weights(path)
    other.load_weights(path)
    x = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))


def test_load_weights_float32_file_into_float64_model(tmp_path, float64):
    nnlite.config.set_floatx("float32")
    model = mlp(hidden=(8,), seed=1)
    path = tmp_path / "w.npz"
    model.save_weights(path)
    nnlite.config.set_floatx("float64")
    other = mlp(hidden=(8,), seed=2)
    other.load_weights(path)
    for got, want in zip(other.get_weights(), model.get_weights()):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want.astype(np.float64))


def test_save_weights_writes_every_parameter(tmp_path):
    model = mlp(seed=1)
    path = tmp_path / "weights.npz"
    model.save_weights(str(path))
    with np.load(path) as data:
        stored = {tuple(data[k].shape) for k in data.files}
        assert len(data.files) == 6
        total = sum(data[k].size for k in data.files)
    assert stored == {(784, 50), (50,), (50, 50), (50, 10), (10,)}
    assert total == model.count_params()


def test_load_weights_into_other_shape_raises_and_assigns_nothing(tmp_path):
    path = tmp_path / "w.npz"
    mlp(hidden=(50,)).save_weights(path)
    other = mlp(hidden=(30,))
    before = other.get_weights()
    with pytest.raises(ValueError, match=repr(other.layers[0].name)):
        other.load_weights(path)
    for got, want in zip(other.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_load_weights_into_other_shape_names_both_kernel_shapes(tmp_path):
    path = tmp_path / "w.npz"
    mlp(hidden=(50,)).save_weights(path)
    other = mlp(hidden=(30,))
    with pytest.raises(ValueError) as info:
        other.load_weights(path)
    message = str(info.value)
    assert repr(other.layers[0].name) in message
    assert "(784, 30)" in message and "(784, 50)" in message


def test_load_weights_with_other_layer_count_raises(tmp_path):
    path = tmp_path / "w.npz"
    mlp(hidden=(50,)).save_weights(path)
    other = mlp(hidden=(50, 50))
    before = other.get_weights()
    with pytest.raises(ValueError, match="6 arrays, received 4"):
        other.load_weights(path)
    for got, want in zip(other.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_save_weights_without_overwrite_refuses_existing_file(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        mlp().save_weights(path, overwrite=False)
    assert path.read_bytes() == b"keep me"


def test_save_weights_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    path.write_bytes(b"previous weights")
    calls = []

    def failing_savez(file, *args, **kwargs):
        calls.append(sorted(kwargs))
        file.write(b"PK\x03\x04 half-written archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        mlp().save_weights(path)
    assert len(calls) == 1 and len(calls[0]) == 6  # it did get as far as writing
    assert os.listdir(tmp_path) == ["w.npz"]  # no temporary file left behind
    assert path.read_bytes() == b"previous weights"


def test_save_weights_failure_leaves_no_file_when_none_existed(tmp_path, monkeypatch):
    def failing_savez(file, *args, **kwargs):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(KeyboardInterrupt):
        mlp().save_weights(tmp_path / "w.npz")
    assert os.listdir(tmp_path) == []


def test_save_weights_overwrites_atomically(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"old")
    model = mlp()
    model.save_weights(path)
    assert os.listdir(tmp_path) == ["w.npz"]
    with np.load(path) as data:
        assert len(data.files) == 6
