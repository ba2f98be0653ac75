"""The TensorFlow 1 two-layer network written out by hand: 784-1024-10, full-batch descent.

As in the TF1 notebook: weights drawn from a normal truncated at two standard deviations
(``tf.truncated_normal(stddev=0.1)``, here ``nnlite.initializers.TruncatedNormal``), zero biases,
one hidden ReLU layer of 1024 units, softmax cross-entropy, and plain gradient descent on the
whole training set at every step (``GradientDescentOptimizer(0.5).minimize(loss)``); the loss
and the training and test accuracy are printed every 100 steps.

Nothing is hidden in a model object: the forward and backward passes are the functions of
``nnlite.functional``, and the update is ``nnlite.optimizers.SGD.apply_gradients`` on the raw
arrays, the way the notebook's ``session.run(optimizer)`` updates its ``tf.Variable``s:

    z1 = x·W1 + b1     h = relu(z1)     z2 = h·W2 + b2     loss = CE(softmax(z2), labels)
    dz2 = (softmax(z2) − onehot) / N
    dW2 = hᵀ·dz2   db2 = Σ dz2   dh = dz2·W2ᵀ   dz1 = dh ⊙ [z1 > 0]   dW1 = xᵀ·dz1   db1 = Σ dz1
    W ← W − 0.5·dW   (for all four arrays)

Run:  python examples/tf1_two_layer_gd.py [--quick] [--steps 101] [--out DIR]

One step on all 60,000 images costs about 200 GFLOP (two 60000×784×1024 matrix products), about
2 s on two cores, so the default 101 steps take 3-4 minutes; ``--steps 801`` is the notebook's
run, ``--train-size 10000`` its ``train_subset`` (6× faster per step). The curves are sampled
every 10 steps (``--plot-every``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import nnlite
from nnlite import functional as F
from nnlite.sweep import markdown_table


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="seconds: 1,000 training and 1,000 test images, 21 steps, a log every 10")
    p.add_argument("--out", default="out", help="folder for the PNG (default: out)")
    p.add_argument("--steps", type=int, default=101, help="gradient steps (default: 101)")
    p.add_argument("--log-every", type=int, default=100, help="table rows (default: 100)")
    p.add_argument("--plot-every", type=int, default=10, help="curve points (default: 10)")
    p.add_argument("--lr", type=float, default=0.5, help="learning rate (default: 0.5)")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--train-size", type=int, default=None,
                   help="use the first N training images (default: all 60,000)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def accuracy(logits, labels) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.steps, args.log_every, args.plot_every, args.train_size = 21, 10, 5, 1000
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = nnlite.datasets.mnist.load_data()
    if args.train_size:
        x_train, y_train = x_train[:args.train_size], y_train[:args.train_size]
    if args.quick:
        x_test, y_test = x_test[:1000], y_test[:1000]
    x = x_train.reshape(len(x_train), -1).astype(np.float32) / np.float32(255)
    x_test = x_test.reshape(len(x_test), -1).astype(np.float32) / np.float32(255)

    # Variables, as tf.Variable(tf.truncated_normal([784, 1024], stddev=0.1)) and tf.zeros.
    rng = np.random.default_rng(args.seed)
    init = nnlite.initializers.TruncatedNormal(stddev=0.1)
    w1 = init((784, args.hidden), dtype="float32", rng=rng)
    b1 = np.zeros(args.hidden, dtype=np.float32)
    w2 = init((args.hidden, 10), dtype="float32", rng=rng)
    b2 = np.zeros(10, dtype=np.float32)
    params = [w1, b1, w2, b2]
    optimizer = nnlite.optimizers.SGD(learning_rate=args.lr)

    def predict(images):
        return F.dense_forward(F.relu(F.dense_forward(images, w1, b1)), w2, b2)

    print(f"784-{args.hidden}-10, truncated normal(0.1) weights, zero biases, gradient descent "
          f"lr={args.lr:g} on all {len(x)} training images per step")
    log = {"loss": [], "accuracy": [], "test_accuracy": []}
    rows = []
    train_start = time.perf_counter()
    for step in range(args.steps):
        # Forward: keep z1 and h, the backward pass needs them.
        z1 = F.dense_forward(x, w1, b1)
        h = F.relu(z1)
        z2 = F.dense_forward(h, w2, b2)
        loss, dz2 = F.softmax_cross_entropy(z2, y_train)  # dz2 = (softmax(z2) - onehot) / N
        plotted, shown = step % args.plot_every == 0, step % args.log_every == 0
        if plotted or shown:
            # As in the notebook, the accuracy is that of this step's forward pass (before the
            # update); the test accuracy is measured with the same weights.
            train_acc, test_acc = accuracy(z2, y_train), accuracy(predict(x_test), y_test)
        if plotted:
            log["loss"].append(float(loss))
            log["accuracy"].append(train_acc)
            log["test_accuracy"].append(test_acc)
        if shown:
            rows.append([step, f"{float(loss):.4f}", f"{train_acc:.4f}", f"{test_acc:.4f}",
                         f"{time.perf_counter() - train_start:.1f}"])
            print(f"step {step:4d}  loss {float(loss):8.4f}  train accuracy {train_acc:.4f}  "
                  f"test accuracy {test_acc:.4f}", flush=True)
        # Backward: the chain rule, layer by layer, from the loss down to W1.
        dh, dw2, db2 = F.dense_backward(dz2, h, w2)
        dz1 = F.relu_backward(dh, z1)
        _, dw1, db1 = F.dense_backward(dz1, x, w1, need_dx=False)
        optimizer.apply_gradients(zip([dw1, db1, dw2, db2], params))  # in place
    seconds = time.perf_counter() - train_start
    final_test = accuracy(predict(x_test), y_test)
    print(f"{args.steps} steps in {seconds:.1f} s ({seconds / args.steps:.2f} s/step); "
          f"test accuracy after the last step {final_test:.4f}; "
          f"wall time {time.perf_counter() - start:.1f} s")
    print()
    print(markdown_table(["step", "loss", "train accuracy", "test accuracy", "seconds"], rows))

    try:
        from nnlite import plot
    except ImportError:  # pragma: no cover - matplotlib missing
        return 0
    fig = plot.training_curves({"full-batch GD": {"loss": log["loss"],
                                                  "accuracy": log["accuracy"],
                                                  "val_accuracy": log["test_accuracy"]}},
                               xlabel="step", x_start=0, x_step=args.plot_every,
                               title="784-1024-10, gradient descent (dashed: test accuracy)")
    path = plot.save(fig, os.path.join(args.out, "tf1_two_layer_gd_curves.png"))
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
