"""Keras 3 code runs unchanged with ``import nnlite as keras``.

The notebook snippets below are plain Keras 3 code (they were checked against Keras 3.15 by
replacing the first line with ``import keras``); the tests execute them as they are, with nnlite.
TensorFlow is never imported here.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

import nnlite
from nnlite import functional as F

SUBSET = 3000

# A typical Keras 3 MNIST notebook, trimmed to a subset of the training images.
NOTEBOOK = """
import numpy as np
import nnlite as keras

(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
x_train, y_train = x_train[:SUBSET], y_train[:SUBSET]
x_test, y_test = x_test[:1000], y_test[:1000]
x_train = x_train.astype("float32") / 255.0
x_test = x_test.astype("float32") / 255.0
print(x_train.shape, "train samples")

keras.utils.set_random_seed(1)
model = keras.Sequential([
    keras.Input(shape=(28, 28)),
    keras.layers.Flatten(),
    keras.layers.Dense(128, activation="relu"),
    keras.layers.Dropout(0.2),
    keras.layers.Dense(10, activation="softmax"),
])
model.summary()
model.compile(
    optimizer=keras.optimizers.Adam(learning_rate=1e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(),
    metrics=["accuracy"],
)
history = model.fit(
    x_train, y_train,
    batch_size=64,
    epochs=12,
    validation_split=0.1,
    callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=1,
                                             restore_best_weights=True)],
    verbose=2,
)
test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)
print(f"Test accuracy: {test_acc:.4f}")
predictions = model.predict(x_test[:100], verbose=0)
predicted_labels = np.argmax(predictions, axis=1)
"""

# The one-hot variant: to_categorical targets with categorical cross-entropy.
ONE_HOT = """
import numpy as np
import nnlite as keras

num_classes = 10
(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
x_train = x_train[:SUBSET].reshape(-1, 784).astype("float32") / 255
x_test = x_test[:1000].reshape(-1, 784).astype("float32") / 255
y_train = keras.utils.to_categorical(y_train[:SUBSET], num_classes)
y_test = keras.utils.to_categorical(y_test[:1000], num_classes)

keras.utils.set_random_seed(2)
model = keras.Sequential()
model.add(keras.layers.Dense(64, activation="relu", input_shape=(784,)))
model.add(keras.layers.Dense(num_classes, activation="softmax"))
model.compile(loss="categorical_crossentropy", optimizer="rmsprop", metrics=["accuracy"])
history = model.fit(x_train, y_train, batch_size=128, epochs=5, verbose=0,
                    validation_data=(x_test, y_test))
score = model.evaluate(x_test, y_test, verbose=0)
"""


def run_snippet(source):
    namespace = {"SUBSET": SUBSET}
    exec(compile(source, "<notebook>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def notebook():
    """The MNIST notebook, run once: (its namespace, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        namespace = run_snippet(NOTEBOOK)
    return namespace, out.getvalue()


def test_mnist_notebook_runs_unchanged(notebook):
    ns, out = notebook
    assert "(3000, 28, 28) train samples" in out
    assert "Total params: 101,770" in out  # 784*128 + 128 + 128*10 + 10
    assert "Epoch 1/12" in out
    model, history = ns["model"], ns["history"]
    assert isinstance(model, nnlite.Sequential)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert 2 <= len(history.history["loss"]) <= 12
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert ns["test_acc"] > 0.87  # Keras 3.15 on TensorFlow: 0.885 for this snippet
    assert ns["test_loss"] < 0.4
    assert f"Test accuracy: {ns['test_acc']:.4f}" in out
    predictions = ns["predictions"]
    assert predictions.shape == (100, 10) and predictions.dtype == np.float32
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)
    labels = ns["predicted_labels"]
    assert labels.shape == (100,)
    assert np.mean(labels == ns["y_test"][:100]) > 0.85
    # evaluate's accuracy is the argmax accuracy of predict.
    full = model.predict(ns["x_test"], verbose=0)
    assert ns["test_acc"] == pytest.approx(np.mean(full.argmax(1) == ns["y_test"]), rel=1e-6)


def test_notebook_early_stopping_restored_the_best_epoch(notebook):
    ns, out = notebook
    model, history = ns["model"], ns["history"]
    val_loss = history.history["val_loss"]
    best = int(np.argmin(val_loss))
    assert len(val_loss) < 12 and best == len(val_loss) - 2  # stopped one epoch after the best
    assert f"Epoch {len(val_loss)}/12" in out and f"Epoch {len(val_loss) + 1}/12" not in out
    # With the weights restored, evaluating the held-out tail gives the best val_loss again.
    x_val, y_val = ns["x_train"][2700:], ns["y_train"][2700:]  # the last 10%
    restored = model.evaluate(x_val, y_val, batch_size=64, verbose=0)[0]
    assert restored == pytest.approx(val_loss[best], rel=1e-6)
    assert restored != pytest.approx(val_loss[-1], rel=1e-6)


def test_one_hot_notebook_runs_unchanged():
    ns = run_snippet(ONE_HOT)
    loss, acc = ns["score"]
    assert acc > 0.83  # Keras 3.15 on TensorFlow: 0.882
    assert ns["history"].history["val_accuracy"][-1] == acc
    assert ns["y_train"].shape == (SUBSET, 10) and ns["y_train"].dtype == np.float32
    np.testing.assert_array_equal(ns["y_train"].sum(axis=1), 1.0)


def test_keras_names_are_exported():
    import nnlite as keras

    for name in ("Sequential", "Input", "layers", "optimizers", "losses", "metrics",
                 "callbacks", "utils", "datasets", "initializers", "activations"):
        assert hasattr(keras, name), name
    for name in ("Dense", "Dropout", "Flatten", "Reshape", "Activation", "ReLU", "Softmax"):
        assert hasattr(keras.layers, name), name
    for name in ("SGD", "Adam", "RMSprop"):
        assert hasattr(keras.optimizers, name), name
    for name in ("EarlyStopping", "TerminateOnNaN", "LambdaCallback", "History", "Callback"):
        assert hasattr(keras.callbacks, name), name
    assert keras.optimizers.Adam().learning_rate == pytest.approx(1e-3)
    assert keras.optimizers.SGD().learning_rate == pytest.approx(1e-2)


def test_build_with_a_concrete_batch_axis():
    import nnlite as keras

    model = keras.Sequential([keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.build((32, 5))
    assert model.input_shape == (None, 5)
    assert [w.shape for w in model.get_weights()] == [(5, 8), (8,), (8, 3), (3,)]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((10, 5), np.float32), np.zeros(10, np.int64), verbose=0)


# -- a training loop written by hand with the functional API -----------------------------------


def glorot(rng, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


def test_custom_training_loop_with_functional_api(mnist_small):
    (x, y), (xt, yt) = mnist_small
    rng = np.random.default_rng(0)
    w1, b1 = glorot(rng, 784, 64), np.zeros(64, np.float32)
    w2, b2 = glorot(rng, 64, 10), np.zeros(10, np.float32)
    params = [w1, b1, w2, b2]
    optimizer = nnlite.optimizers.SGD(learning_rate=0.1)

    def forward(xb):
        z1 = F.dense_forward(xb, w1, b1)
        h = F.relu(z1)
        return z1, h, F.dense_forward(h, w2, b2)

    losses = []
    for epoch in range(5):
        order = rng.permutation(len(x))
        epoch_loss = 0.0
        for start in range(0, len(x), 32):
            idx = order[start:start + 32]
            xb, yb = x[idx], y[idx]
            z1, h, z2 = forward(xb)
            loss, dz2 = F.softmax_cross_entropy(z2, yb)
            dh, dw2, db2 = F.dense_backward(dz2, h, w2)
            dz1 = F.relu_backward(dh, z1)
            _, dw1, db1 = F.dense_backward(dz1, xb, w1, need_dx=False)
            grads = [dw1, db1, dw2, db2]
            optimizer.apply_gradients(zip(grads, params))
            epoch_loss += float(loss) * len(idx)
        losses.append(epoch_loss / len(x))
    assert optimizer.iterations == 5 * 63
    assert all(p.dtype == np.float32 for p in params)  # updated in place, dtype kept
    assert params[0] is w1
    assert losses[-1] < 0.5 * losses[0]
    _, _, logits = forward(xt)
    test_acc = np.mean(logits.argmax(axis=1) == yt)
    _, _, train_logits = forward(x)
    assert np.mean(train_logits.argmax(axis=1) == y) > 0.9
    assert test_acc > 0.85


def test_custom_loop_matches_the_model(mnist_small):
    """The hand-written step and Sequential.train_on_batch give the same parameters."""
    (x, y), _ = mnist_small
    xb, yb = x[:64], y[:64]
    model = nnlite.Sequential([nnlite.Input((784,)),
                               nnlite.layers.Dense(32, activation="relu"),
                               nnlite.layers.Dense(10, activation="softmax")], seed=3)
    model.compile(optimizer=nnlite.optimizers.SGD(learning_rate=0.1),
                  loss="sparse_categorical_crossentropy")
    params = [p.copy() for p in model.get_weights()]
    w1, b1, w2, b2 = params
    optimizer = nnlite.optimizers.SGD(learning_rate=0.1)
    for _ in range(3):
        z1 = F.dense_forward(xb, w1, b1)
        h = F.relu(z1)
        loss, dz2 = F.softmax_cross_entropy(F.dense_forward(h, w2, b2), yb)
        dh, dw2, db2 = F.dense_backward(dz2, h, w2)
        _, dw1, db1 = F.dense_backward(F.relu_backward(dh, z1), xb, w1, need_dx=False)
        optimizer.apply_gradients(zip([dw1, db1, dw2, db2], params))
        model_loss = model.train_on_batch(xb, yb)
        assert model_loss == pytest.approx(float(loss), rel=1e-5)
    for got, want in zip(model.get_weights(), params):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_readme_keras_example_runs(tmp_path, monkeypatch, capsys):
    """README.md's Keras-style example, verbatim but for one epoch instead of five: it trains,
    evaluates, saves and loads the model, which then scores the same accuracy."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python\nimport nnlite as keras\n") + len("```python\n")
    code = readme[start:readme.index("```", start)]
    assert "epochs=5" in code and "load_model" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace("epochs=5", "epochs=1"), "README.md", "exec"), namespace)
    capsys.readouterr()
    assert namespace["accuracy"] > 0.9
    x_test, y_test = namespace["x_test"], namespace["y_test"]
    assert namespace["model"].evaluate(x_test, y_test, verbose=0)[1] == namespace["accuracy"]
    assert (tmp_path / "mnist.keras").exists()
