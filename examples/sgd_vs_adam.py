"""Initialisation and optimizer, compared: 784-128-10 from a constant 0.01 or a normal(0, 0.1)
start, trained by SGD or by Adam, at the same seed, with full-batch steps.

Four runs, each on all 54,000 training images per step (``batch_size`` = the training set, so an
"epoch" is one gradient step), 10% of the training set held out for validation, and Keras's
``EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)`` to stop once the
validation loss has risen (not improved) for 10 steps:

    init           optimizer
    constant 0.01  SGD(0.1), Adam(0.01)
    normal(0,0.1)  SGD(0.1), Adam(0.01)

The learning rates suit full-batch steps: SGD at 0.1 descends smoothly (at 0.5 it oscillates
on this net); Adam at 0.01, ten times Keras's default, fits the training set fast enough for
its validation loss to turn within 200 steps (at 1e-3 it is still falling).

What to look for: from a constant start every hidden unit computes the same function and
receives the same gradient, so the units never differ (the symmetry is never broken) and the
network is no better than one with a single hidden unit, whatever the optimizer; a random start
breaks the symmetry. Adam's per-weight step sizes make far more progress per full-batch step
than SGD's single global one.

Run:  python examples/sgd_vs_adam.py [--quick] [--steps 200] [--out DIR]

Writes DIR/sgd_vs_adam_curves.png (loss and accuracy per step, early stops marked) and
DIR/sgd_vs_adam_confusion.png (the test confusion matrix of each run), prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import nnlite as keras
from nnlite.sweep import markdown_table


def build(init: str, seed: int):
    """784-128-10, ReLU and softmax; both kernels from ``init``, biases zero (Keras default)."""
    def kernel():
        if init == "constant":
            return keras.initializers.Constant(0.01)
        return keras.initializers.RandomNormal(mean=0.0, stddev=0.1)

    return keras.Sequential([
        keras.Input(shape=(784,)),
        keras.layers.Dense(128, activation="relu", kernel_initializer=kernel()),
        keras.layers.Dense(10, activation="softmax", kernel_initializer=kernel()),
    ], seed=seed)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds: 2,000 images, 10 steps")
    p.add_argument("--out", default="out", help="folder for the PNGs (default: out)")
    p.add_argument("--steps", type=int, default=200, help="full-batch steps at most")
    p.add_argument("--sgd-lr", type=float, default=0.1)
    p.add_argument("--adam-lr", type=float, default=0.01)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    if args.quick:
        args.steps = 10
        x_train, y_train, x_test, y_test = x_train[:2000], y_train[:2000], x_test[:1000], \
            y_test[:1000]
    x_train = x_train.reshape(len(x_train), -1).astype("float32") / 255.0
    x_test = x_test.reshape(len(x_test), -1).astype("float32") / 255.0

    runs = [(init, opt) for init in ("constant", "normal") for opt in ("SGD", "Adam")]
    names = {"constant": "constant 0.01", "normal": "normal(0, 0.1)"}
    rows, histories, stops, predictions = [], {}, {}, {}
    for init, opt in runs:
        label = f"{names[init]}, {opt}"
        keras.utils.set_random_seed(args.seed)
        model = build(init, args.seed)
        optimizer = (keras.optimizers.SGD(learning_rate=args.sgd_lr) if opt == "SGD"
                     else keras.optimizers.Adam(learning_rate=args.adam_lr))
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=args.patience,
                                             restore_best_weights=True)
        t = time.perf_counter()
        history = model.fit(x_train, y_train, batch_size=len(x_train), epochs=args.steps,
                            validation_split=0.1, callbacks=[stop], verbose=0)
        seconds = time.perf_counter() - t
        steps_run = len(history.history["loss"])
        scores = model.predict(x_test, batch_size=1000, verbose=0)
        predictions[label] = scores.argmax(axis=1)
        test_accuracy = float((predictions[label] == y_test).mean())
        kernel = model.layers[0].get_weights()[0]
        distinct = len(np.unique(kernel.round(6), axis=1).T)  # identical columns = same unit
        best = stop.best_epoch
        rows.append([names[init], opt, steps_run,
                     f"{stop.stopped_epoch + 1}" if stop.stopped_epoch else "—",
                     f"{history.history['val_loss'][best]:.4f}",
                     f"{history.history['val_accuracy'][best]:.4f}", f"{test_accuracy:.4f}",
                     distinct, f"{seconds / steps_run:.3f}"])
        histories[label], stops[label] = history, stop
        print(f"{label:24s} {steps_run:4d} steps, best val_loss "
              f"{history.history['val_loss'][best]:.4f} at step {best + 1}, test accuracy "
              f"{test_accuracy:.4f}, {distinct} distinct hidden units, "
              f"{seconds / steps_run:.3f} s/step", flush=True)
    print(f"Wall time: {time.perf_counter() - start:.1f} s")
    print()
    print(markdown_table(["init", "optimizer", "steps", "early stop", "best val loss",
                          "val accuracy", "test accuracy", "distinct units", "s/step"], rows,
                         align=["l", "l", "r", "r", "r", "r", "r", "r", "r"]))

    try:
        from nnlite import plot
    except ImportError:  # pragma: no cover - matplotlib missing
        return 0
    fig = plot.training_curves(histories, early_stop=stops, xlabel="full-batch step",
                               title="784-128-10: init × optimizer, same seed")
    fig.set_size_inches(12, 4.5)
    paths = [plot.save(fig, os.path.join(args.out, "sgd_vs_adam_curves.png"))]
    fig, axes = plot.new_figure((13, 11), 2, 2)
    for ax, (label, predicted) in zip(axes.flat, predictions.items()):
        accuracy = float((predicted == y_test).mean())
        plot.confusion_matrix(y_test, predicted, class_names=list(range(10)), ax=ax,
                              title=f"{label}: test accuracy {accuracy:.4f}")
    paths.append(plot.save(fig, os.path.join(args.out, "sgd_vs_adam_confusion.png")))
    print("Wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
