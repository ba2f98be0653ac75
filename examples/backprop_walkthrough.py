"""One step of backprop, small enough to follow by eye: a 16-4-3 network on four digits.

Four training digits (classes 0, 1 and 2) are shrunk from 28×28 to 4×4 by averaging 7×7
blocks, giving 16 inputs each. The network is

    z1 = x·W1 + b1    h = relu(z1)    z2 = h·W2 + b2    p = softmax(z2)    L = −mean log p[label]
    x:(4,16)  W1:(16,4)  b1:(4,)  h:(4,4)  W2:(4,3)  b2:(3,)  z2, p:(4,3)

in float64, written with the pure functions of ``nnlite.functional``. For each layer the script
prints the forward values, the upstream gradient that arrives from above, the parameter
gradients the chain rule gives, and a finite-difference check of each gradient
(``nnlite.gradcheck.numerical_gradient``: (L(θ + h) − L(θ − h)) / 2h, one entry at a time).
Then it checks ``nnlite.layers.Dense`` itself with ``nnlite.gradcheck.check_layer``, takes one
gradient-descent step and shows the loss going down.

Run:  python examples/backprop_walkthrough.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import nnlite
from nnlite import functional as F
from nnlite.gradcheck import check_layer, numerical_gradient, relative_error
from nnlite.sweep import markdown_table


def show(name: str, array, note: str = "") -> None:
    """Print a named array with its shape, compactly."""
    array = np.asarray(array) + 0.0  # + 0.0 turns −0.0 (from masking negatives) into 0.0
    text = np.array2string(array, precision=4, suppress_small=True, max_line_width=140)
    head = f"{name} {array.shape}" + (f"   {note}" if note else "")
    if array.ndim == 0:
        print(f"{head}: {float(array):.6f}")
    else:
        print(head)
        print("    " + text.replace("\n", "\n    "))


def downsample(images: np.ndarray, factor: int = 7) -> np.ndarray:
    """Average non-overlapping factor×factor blocks: (N, 28, 28) -> (N, 28/f, 28/f)."""
    n, h, w = images.shape
    return images.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def pick_digits(images, labels, classes=(0, 1, 2, 0)):
    """The first training image of each requested class (repeats take the next one)."""
    chosen, used = [], set()
    for c in classes:
        index = next(i for i in np.flatnonzero(labels == c) if i not in used)
        used.add(index)
        chosen.append(index)
    return images[chosen], labels[chosen]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the same (it takes a second anyway)")
    p.add_argument("--out", default="out", help="folder for the PNGs (default: out)")
    p.add_argument("--lr", type=float, default=0.5, help="step size of the one update")
    p.add_argument("--seed", type=int, default=3)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    (x_train, y_train), _ = nnlite.datasets.mnist.load_data()
    digits, labels = pick_digits(x_train, y_train)
    small = downsample(digits.astype(np.float64) / 255.0)
    x = small.reshape(len(small), -1)  # (4, 16)

    rng = np.random.default_rng(args.seed)
    init = nnlite.initializers.GlorotUniform()
    w1 = init((16, 4), dtype="float64", rng=rng)
    b1 = np.zeros(4)
    w2 = init((4, 3), dtype="float64", rng=rng)
    b2 = np.zeros(3)

    def loss_of(x=x, w1=w1, b1=b1, w2=w2, b2=b2):
        """The whole network as one function of its arrays (for finite differences)."""
        z2 = F.dense_forward(F.relu(F.dense_forward(x, w1, b1)), w2, b2)
        return F.softmax_cross_entropy(z2, labels)[0]

    np.set_printoptions(precision=4, suppress=True)
    print(f"Labels: {labels.tolist()}  (4 digits, 4×4 pixels each, float64)\n")
    print("=" * 30 + " forward " + "=" * 30)
    show("x", x, "the inputs, one digit per row")
    print("\nLayer 1: Dense 16 -> 4, ReLU")
    show("W1", w1)
    z1 = F.dense_forward(x, w1, b1)
    show("z1 = x·W1 + b1", z1)
    h = F.relu(z1)
    show("h = relu(z1)", h, "negative pre-activations are cut to 0")
    print("\nLayer 2: Dense 4 -> 3, softmax")
    show("W2", w2)
    z2 = F.dense_forward(h, w2, b2)
    show("z2 = h·W2 + b2", z2, "the logits")
    p = F.softmax(z2)
    show("p = softmax(z2)", p, "each row sums to 1")
    loss, dz2 = F.softmax_cross_entropy(z2, labels)
    show("L = −mean log p[n, label[n]]", loss)

    print("\n" + "=" * 30 + " backward " + "=" * 29)
    print("Layer 2 (fused softmax + cross-entropy):")
    show("dz2 = (p − onehot) / N", dz2, "upstream gradient into layer 2's logits")
    dh, dw2, db2 = F.dense_backward(dz2, h, w2)
    show("dW2 = hᵀ·dz2", dw2)
    show("db2 = Σn dz2", db2)
    show("dh = dz2·W2ᵀ", dh, "upstream gradient into layer 1's output")
    print("\nLayer 1:")
    dz1 = F.relu_backward(dh, z1)
    show("dz1 = dh ⊙ [z1 > 0]", dz1, "ReLU passes the gradient only where z1 > 0")
    _, dw1, db1 = F.dense_backward(dz1, x, w1, need_dx=False)
    show("dW1 = xᵀ·dz1", dw1)
    show("db1 = Σn dz1", db1)

    print("\n" + "=" * 22 + " finite-difference check " + "=" * 22)
    margin = float(np.abs(z1).min())
    print(f"(smallest |z1| = {margin:.2e}: the ±1e-6 nudges never cross ReLU's kink at 0)")
    # Each numeric gradient nudges one entry of one array and recomputes the loss.
    z2_var, h_var = z2.copy(), h.copy()
    numeric = {
        "dz2": numerical_gradient(lambda: F.softmax_cross_entropy(z2_var, labels)[0], z2_var),
        "dh": numerical_gradient(
            lambda: F.softmax_cross_entropy(F.dense_forward(h_var, w2, b2), labels)[0], h_var),
        "dW2": numerical_gradient(loss_of, w2),
        "db2": numerical_gradient(loss_of, b2),
        "dW1": numerical_gradient(loss_of, w1),
        "db1": numerical_gradient(loss_of, b1),
    }
    analytic = {"dz2": dz2, "dh": dh, "dW2": dw2, "db2": db2, "dW1": dw1, "db1": db1}
    show("numerical dW2", numeric["dW2"], "compare with dW2 above")
    show("numerical db1", numeric["db1"], "compare with db1 above")
    rows = []
    for name, grad in analytic.items():
        error = relative_error(grad, numeric[name])
        rows.append([name, "×".join(map(str, grad.shape)), f"{np.linalg.norm(grad):.6f}",
                     f"{np.linalg.norm(numeric[name]):.6f}", f"{error:.1e}",
                     "ok" if error < 1e-6 else "MISMATCH"])
    worst = max(float(r[4]) for r in rows)

    print("\nThe same check on nnlite's own layers (gradcheck.check_layer, random upstream dy):")
    for activation in ("relu", "softmax"):
        layer = nnlite.layers.Dense(4 if activation == "relu" else 3, activation=activation,
                                    dtype="float64")
        inputs = x if activation == "relu" else h + 0.1
        errors = check_layer(layer, inputs, seed=args.seed)
        print(f"  Dense(..., activation={activation!r}): "
              + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
        worst = max(worst, *errors.values())

    print("\n" + "=" * 26 + " one update " + "=" * 27)
    optimizer = nnlite.optimizers.SGD(learning_rate=args.lr)
    optimizer.apply_gradients(zip([dw1, db1, dw2, db2], [w1, b1, w2, b2]))  # in place
    after = loss_of()
    print(f"W ← W − {args.lr:g}·dW for all four arrays: loss {float(loss):.6f} -> "
          f"{float(after):.6f}")
    print()
    print(markdown_table(["gradient", "shape", "‖analytic‖", "‖finite differences‖",
                          "relative error", "check"], rows,
                         align=["l", "r", "r", "r", "r", "l"]))
    print(f"\nLoss before the step {float(loss):.6f}, after {float(after):.6f}; "
          f"largest relative error {worst:.1e}")

    try:
        from nnlite import plot
    except ImportError:  # pragma: no cover - matplotlib missing
        return 0 if worst < 1e-6 else 1
    fig, axes = plot.new_figure((7, 2.6), 1, 2)
    plot.digits_grid(digits, labels=labels, ncols=4, ax=axes[0], title="the digits (28×28)")
    plot.digits_grid(small, labels=labels, ncols=4, ax=axes[1], title="the inputs (4×4)")
    paths = [plot.save(fig, os.path.join(args.out, "backprop_digits.png"))]
    fig = plot.first_layer_weights(w1, ncols=4, image_shape=(4, 4),
                                   title="W1 after the step (4×4 per unit)")
    paths.append(plot.save(fig, os.path.join(args.out, "backprop_w1.png")))
    print("Wrote " + ", ".join(paths))
    return 0 if worst < 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
