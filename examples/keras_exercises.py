"""The ten Keras MNIST exercises, run with nnlite in place of Keras (``import nnlite as keras``).

The classic exercise list changes one thing at a time in the baseline notebook model
(784-50-50-10, ReLU, softmax, Adam 1e-3, batch 100, 5 epochs, 10% of the training set held out
for validation) and asks what happens:

     1  width: hidden layers of 200 units
     2  depth: a third hidden layer
     3  width and depth: 5 hidden layers of 200 units
     4  sigmoid in both hidden layers
     5  ReLU in the first hidden layer, tanh in the second
     6  batch size 10,000 (6 steps per epoch)
     7  batch size 1 (plain SGD on single samples; 54,000 steps per epoch, so 1 epoch by
        default: --batch1-epochs 5 runs the full exercise, a few minutes more)
     8  Adam learning rate 1e-4
     9  Adam learning rate 0.02
    10  all combined, aiming at 98.5% validation accuracy: 784-500-500-10 ReLU, Adam 1e-3
        decaying, batch 100, up to 15 epochs with EarlyStopping(patience=3) on val_accuracy

Run:  python examples/keras_exercises.py [--quick] [--out DIR]

Prints a markdown table of validation accuracy, test accuracy and time per epoch for every
exercise, and writes the overlaid training curves to DIR/keras_exercises_curves.png.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import nnlite as keras
from nnlite.sweep import markdown_table

BASE = {"hidden": (50, 50), "activation": ("relu", "relu"), "batch_size": 100,
        "learning_rate": 1e-3, "epochs": 5, "early_stopping": False}


def exercises(batch1_epochs: int) -> list[tuple[str, str, dict]]:
    """(name, what changed, settings) for the baseline and the ten exercises."""
    return [
        ("0", "baseline 784-50-50-10", {}),
        ("1", "width 200", {"hidden": (200, 200)}),
        ("2", "depth: 3 hidden layers", {"hidden": (50, 50, 50),
                                         "activation": ("relu",) * 3}),
        ("3", "width and depth: 5 × 200", {"hidden": (200,) * 5, "activation": ("relu",) * 5}),
        ("4", "sigmoid, sigmoid", {"activation": ("sigmoid", "sigmoid")}),
        ("5", "relu, tanh", {"activation": ("relu", "tanh")}),
        ("6", "batch size 10,000", {"batch_size": 10000}),
        ("7", "batch size 1", {"batch_size": 1, "epochs": batch1_epochs}),
        ("8", "Adam lr 1e-4", {"learning_rate": 1e-4}),
        ("9", "Adam lr 0.02", {"learning_rate": 0.02}),
        ("10", "combined: 784-500-500-10, lr decay, early stop",
         {"hidden": (500, 500), "epochs": 15, "early_stopping": True, "decay": True}),
    ]


def build(hidden, activation, seed: int):
    """The notebook's model, Keras-style."""
    model = keras.Sequential([keras.Input(shape=(28, 28)), keras.layers.Flatten()], seed=seed)
    for units, act in zip(hidden, activation):
        model.add(keras.layers.Dense(units, activation=act))
    model.add(keras.layers.Dense(10, activation="softmax"))
    return model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="seconds: 1,000 training and 500 test images, 1 epoch each")
    p.add_argument("--out", default="out", help="folder for the PNG (default: out)")
    p.add_argument("--batch1-epochs", type=int, default=1,
                   help="epochs of exercise 7 (batch size 1); the exercise says 5")
    p.add_argument("--only", default=None,
                   help="comma-separated exercise numbers to run (default: all)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    if args.quick:
        x_train, y_train, x_test, y_test = x_train[:1000], y_train[:1000], x_test[:500], \
            y_test[:500]
    x_train = x_train.astype("float32") / 255.0
    x_test = x_test.astype("float32") / 255.0

    chosen = set(args.only.split(",")) if args.only else None
    rows, histories = [], {}
    for name, change, settings in exercises(args.batch1_epochs):
        if chosen is not None and name not in chosen:
            continue
        s = {**BASE, **settings}
        epochs = 1 if args.quick else s["epochs"]
        keras.utils.set_random_seed(args.seed)
        model = build(s["hidden"], s["activation"], seed=args.seed)
        learning_rate = s["learning_rate"]
        steps_per_epoch = -(-math.floor(len(x_train) * 0.9) // s["batch_size"])
        if s.get("decay"):
            # Halve the learning rate every 3 epochs: a schedule of the optimizer's step count.
            def learning_rate(step, lr=s["learning_rate"], every=3 * steps_per_epoch):
                return lr * 0.5 ** (step // every)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        callbacks = []
        if s["early_stopping"]:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_accuracy", patience=3, restore_best_weights=True))
        t = time.perf_counter()
        history = model.fit(x_train, y_train, batch_size=s["batch_size"], epochs=epochs,
                            validation_split=0.1, callbacks=callbacks, verbose=0)
        seconds = time.perf_counter() - t
        epochs_run = len(history.history["loss"])
        split = math.floor(len(x_train) * (1.0 - 0.1))  # where validation_split cuts
        val_loss, val_accuracy = model.evaluate(x_train[split:], y_train[split:],
                                                batch_size=1000, verbose=0)
        test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
        rows.append([name, change, epochs_run, f"{val_accuracy:.4f}", f"{test_accuracy:.4f}",
                     f"{seconds / epochs_run:.2f}"])
        histories[f"{name}: {change}"] = history
        print(f"exercise {name:>2} ({change}): {epochs_run} epochs, val accuracy "
              f"{val_accuracy:.4f}, test accuracy {test_accuracy:.4f}, "
              f"{seconds / epochs_run:.2f} s/epoch", flush=True)
    print(f"Wall time: {time.perf_counter() - start:.1f} s")
    print()
    print(markdown_table(["#", "change from the baseline", "epochs", "val accuracy",
                          "test accuracy", "s/epoch"], rows,
                         align=["r", "l", "r", "r", "r", "r"]))

    try:
        from nnlite import plot
    except ImportError:  # pragma: no cover - matplotlib missing
        return 0
    fig = plot.training_curves(histories, title="Keras exercises (solid: train, dashed: val)")
    fig.set_size_inches(13, 5.5)
    path = plot.save(fig, os.path.join(args.out, "keras_exercises_curves.png"))
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
