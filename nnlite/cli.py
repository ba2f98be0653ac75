"""Command line: ``nnlite train``, ``nnlite evaluate`` and ``nnlite sweep`` (also
``python -m nnlite ...``).

``nnlite train`` trains the seed baseline on the MNIST files shipped with the package:
784-50-50-10 (ReLU, softmax), Adam 1e-3, batch 100, 5 epochs, the last 10% of the training set
held out for validation; it prints Keras-style epoch lines and the test loss and accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ACTIVATIONS = ("relu", "sigmoid", "tanh", "linear")
OPTIMIZERS = ("adam", "sgd", "rmsprop")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 50,50, received {text!r}"
        ) from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive widths, received {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 1e-3,1e-2, received {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, received {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden", type=_int_list, default=[50, 50],
                   help="hidden layer widths, comma-separated (default: 50,50)")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                   help="hidden activation (default: relu)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float type of parameters and data (default: float32)")
    p.add_argument("--batch-size", type=_positive_int, default=100,
                   help="samples per step (default: 100)")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="use only the first N training and N test images (quick runs)")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "numpy", "numba", "cupy"), default="auto",
                   help="compute backend; auto picks CuPy with a working GPU, else Numba, "
                   "else NumPy (default: auto)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for BLAS and Numba kernels (default: the libraries' own)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nnlite`` command."""
    parser = argparse.ArgumentParser(
        prog="nnlite", description="Train and evaluate MNIST networks with nnlite."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an MLP on MNIST and print the test accuracy",
                           description="Train an MLP on the MNIST data shipped with nnlite.")
    _add_model_args(train)
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                       help="optimizer (default: adam)")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    train.add_argument("--epochs", type=_positive_int, default=5, help="epochs (default: 5)")
    train.add_argument("--validation-split", type=float, default=0.1,
                       help="fraction of the training set held out, from its end (default: 0.1)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                       help="0 silent, 1 progress bar, 2 one line per epoch (default: 2)")
    train.add_argument("--save", metavar="PATH", default=None,
                       help="write the trained model to PATH: the whole model when PATH ends "
                       "in .keras (read by nnlite.models.load_model and `evaluate --model`), "
                       "else its weights (.npz, read by `evaluate --weights`)")
    _add_runtime_args(train)

    evaluate = sub.add_parser("evaluate", help="evaluate a saved model on the MNIST test set",
                              description="Evaluate a model or weights written by `nnlite "
                              "train --save`; the layer widths are read from the file.")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="PATH",
                        help="weights file (.npz) written by `nnlite train --save`")
    source.add_argument("--model", metavar="PATH",
                        help="whole model written by `nnlite train --save PATH.keras` or "
                        "model.save")
    evaluate.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                          help="hidden activation the weights were trained with (default: relu)")
    evaluate.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    evaluate.add_argument("--batch-size", type=_positive_int, default=100)
    evaluate.add_argument("--limit", type=_positive_int, default=None,
                          help="use only the first N test images")
    _add_runtime_args(evaluate)

    sweep = sub.add_parser("sweep", help="train every hidden size x learning rate combination",
                           description="Train every combination of --hidden and --lr in "
                           "parallel worker processes; write sweep.csv, sweep.md and "
                           "sweep_heatmap.png to --out. Failed configurations are recorded "
                           "with their reason and the sweep goes on.")
    sweep.add_argument("--hidden", type=_int_list, default=[16, 32, 64],
                       help="hidden sizes to try, comma-separated (default: 16,32,64)")
    sweep.add_argument("--lr", type=_float_list, default=[1e-3, 1e-2],
                       help="learning rates to try, comma-separated (default: 1e-3,1e-2)")
    sweep.add_argument("--depth", type=_positive_int, default=1,
                       help="hidden layers of each MLP (default: 1)")
    sweep.add_argument("--builder", default="mlp",
                       help="model builder: mlp, debug_raise, debug_oom or module:function "
                       "(default: mlp)")
    sweep.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    sweep.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    sweep.add_argument("--epochs", type=_positive_int, default=3, help="epochs (default: 3)")
    sweep.add_argument("--batch-size", type=_positive_int, default=100)
    sweep.add_argument("--validation-split", type=float, default=0.1)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    sweep.add_argument("--limit", type=_positive_int, default=None,
                       help="use only the first N training and N test images (quick runs)")
    sweep.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: min(2, cpu count); 0: in this process)")
    sweep.add_argument("--out", metavar="DIR", default="out",
                       help="folder for sweep.csv, sweep.md, sweep_heatmap.png (default: out)")
    _add_runtime_args(sweep)

    from nnlite.bench.cli import add_arguments as add_bench_arguments

    bench = sub.add_parser("bench", help="benchmark kernels, training and scaling against "
                           "PyTorch and Keras", description="Benchmark nnlite (see "
                           "benchmarks/README.md): kernels, training, scaling; all by default.")
    add_bench_arguments(bench)
    return parser


def _load_mnist(limit: int | None, dtype: str):
    from nnlite.datasets import mnist

    return mnist.load_scaled(limit, dtype, flatten=True)


def build_mlp(hidden, activation: str, seed: int | None = None):
    """784-hidden...-10 MLP with a softmax output, as ``nnlite train`` trains it."""
    import nnlite

    layers = [nnlite.Input(shape=(784,))]
    layers += [nnlite.layers.Dense(units, activation=activation) for units in hidden]
    layers.append(nnlite.layers.Dense(10, activation="softmax"))
    return nnlite.Sequential(layers, seed=seed)


def cmd_train(args) -> int:
    """``nnlite train``: train an MLP on MNIST, print the test loss and accuracy, save it on
    request; returns the exit status."""
    import nnlite

    if not 0 <= args.validation_split < 1:
        raise SystemExit(f"nnlite train: --validation-split must lie in [0, 1), "
                         f"received {args.validation_split}")
    nnlite.config.set_floatx(args.dtype)
    nnlite.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = _load_mnist(args.limit, args.dtype)
    model = build_mlp(args.hidden, args.activation)
    optimizer_class = type(nnlite.optimizers.get(args.optimizer))
    try:
        optimizer = optimizer_class(learning_rate=args.lr)
    except ValueError as exc:
        raise SystemExit(f"nnlite train: --lr: {exc}") from None
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    widths = "-".join(str(w) for w in [784, *args.hidden, 10])
    print(f"nnlite {nnlite.__version__}: MLP {widths} ({args.activation}, softmax), "
          f"{args.optimizer} lr={args.lr:g}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.dtype}, backend {nnlite.get_backend().name}")
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_split=args.validation_split, verbose=args.verbose)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    print(f"Training time: {seconds:.1f} s ({seconds / args.epochs:.2f} s/epoch)")
    print(f"Test loss: {loss:.4f} - Test accuracy: {accuracy:.4f}")
    if args.save:
        if args.save.endswith(".keras"):
            model.save(args.save)
            print(f"Model saved to {args.save}")
        else:
            model.save_weights(args.save)
            print(f"Weights saved to {args.save}")
    return 0


def cmd_evaluate(args) -> int:
    """``nnlite evaluate``: score a saved model or saved weights on the MNIST test set; returns the
    exit status."""
    import nnlite

    nnlite.config.set_floatx(args.dtype)
    model = _saved_model(args.model) if args.model else _mlp_from_weights(args)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _, (x_test, y_test) = _load_mnist(args.limit, args.dtype)
    x_test = x_test.reshape((-1,) + model.input_shape[1:])
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    print(f"Test loss: {loss:.4f} - Test accuracy: {accuracy:.4f}")
    return 0


def _saved_model(path: str):
    """The model ``model.save`` wrote to ``path``, checked to map MNIST images to 10 classes."""
    import nnlite

    try:
        model = nnlite.models.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"nnlite evaluate: cannot read model {path!r}: {exc}") from None
    if model.input_shape[1:] not in ((784,), (28, 28)) or model.output_shape[1:] != (10,):
        raise SystemExit(f"nnlite evaluate: {path!r} does not map MNIST images to 10 classes "
                         f"(input {model.input_shape}, output {model.output_shape})")
    return model


def _mlp_from_weights(args):
    """The 784-...-10 MLP whose weights ``save_weights`` wrote to ``args.weights``."""
    try:
        with np.load(args.weights) as data:
            kernels = [data[k].shape for k in sorted(data.files) if k.endswith("/kernel")]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"nnlite evaluate: cannot read weights {args.weights!r}: {exc}") from None
    if not kernels or kernels[0][0] != 784 or kernels[-1][1] != 10:
        raise SystemExit(f"nnlite evaluate: {args.weights!r} does not hold a 784-...-10 MLP "
                         f"(kernel shapes {kernels})")
    model = build_mlp([shape[1] for shape in kernels[:-1]], args.activation)
    model.load_weights(args.weights)
    return model


def cmd_sweep(args) -> int:
    """``nnlite sweep``: train every hidden size × learning rate, write the tables and the heatmap;
    returns the exit status."""
    from nnlite.sweep import run_sweep, sweep_markdown

    if not 0 <= args.validation_split < 1:
        raise SystemExit(f"nnlite sweep: --validation-split must lie in [0, 1), "
                         f"received {args.validation_split}")
    try:
        results = run_sweep(args.hidden, args.lr, builder=args.builder, depth=args.depth,
                            activation=args.activation, optimizer=args.optimizer,
                            epochs=args.epochs, batch_size=args.batch_size,
                            validation_split=args.validation_split, limit=args.limit,
                            seed=args.seed, dtype=args.dtype, workers=args.workers,
                            out=args.out)
    except ValueError as exc:
        raise SystemExit(f"nnlite sweep: {exc}") from None
    print(sweep_markdown(results))
    return 0 if any(r["status"] == "ok" for r in results) else 1


def cmd_bench(args) -> int:
    """``nnlite bench``: run the benchmark harness (:mod:`nnlite.bench`); returns its status."""
    from nnlite.bench.cli import run

    return run(args)


def main(argv=None) -> int:
    """Entry point of the ``nnlite`` command."""
    args = build_parser().parse_args(argv)
    if getattr(args, "backend", None) is not None:
        import nnlite
        from nnlite.backend import BackendUnavailable

        try:
            chosen = nnlite.set_backend(args.backend)
        except BackendUnavailable as exc:
            raise SystemExit(f"nnlite {args.command}: {exc}") from None
        # Worker processes (nnlite sweep) read the choice from the environment.
        os.environ["NNLITE_BACKEND"] = chosen.name
        if args.threads is not None:
            nnlite.config.set_threads(args.threads)
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "sweep": cmd_sweep,
                "bench": cmd_bench}
    return handlers[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
