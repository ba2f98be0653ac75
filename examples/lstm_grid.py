"""The seed's LSTM grid on MNIST: hidden size × learning rate, Adam, batch 100.

Each image is read as a sequence of 28 rows of 28 pixels: Input((28, 28)) → LSTM(hidden) →
Dense(10, softmax), trained with Adam at each learning rate, through the sweep runner
(:func:`nnlite.sweep.run_sweep`, one configuration per worker process). Configurations that
cannot fit in memory fail fast (the LSTM checks its memory estimate before allocating) and are
recorded with the reason, as are diverging ones; the sweep goes on.

    python examples/lstm_grid.py --quick            # 2×2 grid on 1,000 images: seconds
    python examples/lstm_grid.py                    # the seed's 9×6 grid, 1 epoch each
    python examples/lstm_grid.py --hidden 32,128 --lr 1e-3,1e-2 --epochs 3 --limit 10000

Writes to ``--out`` (default ``out/lstm_grid``): ``sweep.csv``, ``sweep.md`` (one row per
configuration), ``lstm_grid.md`` (test accuracy and seconds per epoch, hidden × lr) and, with
matplotlib, ``sweep_heatmap.png`` (validation accuracy) and ``lstm_grid_test_accuracy.png``.

Cost: one training step does about 3·T·(2·N·U·4U) + 3·(2·N·T·D·4U) flops for T = 28 steps and
N = 100, so hidden 4096 is ~1 Tflop per step, hours per epoch on a few CPU cores; the full grid
is for a big machine (or use ``--limit``). The memory estimate for any configuration:
``nnlite.layers.lstm.memory_estimate({"units": 4096, "input_dim": 28, "seq_len": 28}, 100)``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HIDDEN = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
LEARNING_RATES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def build_lstm(hidden, lr: float, optimizer: str = "adam", seed: int | None = 0,
               input_shape=(28, 28), **kwargs):
    """Sweep builder: Input((28, 28)) → LSTM(hidden) → Dense(10, softmax), compiled.

    Runs inside a worker process (it must stay a module-level function to be picklable).
    """
    import nnlite

    _warm_up(tuple(input_shape))
    model = nnlite.Sequential([
        nnlite.Input(shape=tuple(input_shape)),
        nnlite.layers.LSTM(int(hidden)),
        nnlite.layers.Dense(10, activation="softmax"),
    ], seed=seed)
    opt = nnlite.optimizers.get(optimizer)
    opt.learning_rate = float(lr)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


_WARM = set()


def _warm_up(input_shape) -> None:
    """One step of a throwaway 2-unit model, once per worker: loads (or compiles) the backend's
    kernels, so the first configuration's seconds per epoch do not include it."""
    import numpy as np

    import nnlite

    key = (nnlite.backend.get_backend().name, nnlite.config.floatx())
    if key in _WARM:
        return
    tiny = nnlite.Sequential([nnlite.Input(shape=input_shape), nnlite.layers.LSTM(2),
                              nnlite.layers.Dense(10, activation="softmax")], seed=0)
    tiny.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    tiny.train_on_batch(np.zeros((2,) + input_shape, nnlite.config.floatx()), np.zeros(2, int))
    _WARM.add(key)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2x2 grid (hidden 16,32 x lr 1e-3,1e-2) on 1,000 images, 1 epoch")
    parser.add_argument("--hidden", type=_ints, default=list(HIDDEN),
                        help="comma-separated hidden sizes (default: 16,...,4096)")
    parser.add_argument("--lr", type=_floats, default=list(LEARNING_RATES),
                        help="comma-separated learning rates (default: 1e-5,...,1.0)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N training and test images")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: min(2, cores)); 0 runs in-process")
    parser.add_argument("--backend", default=os.environ.get("NNLITE_BACKEND", "numba"),
                        help="nnlite backend for the workers (default: numba)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("out", "lstm_grid"))
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.lr, args.epochs = [16, 32], [1e-3, 1e-2], 1
        args.limit = args.limit or 1000
    return args


def grid_markdown(results, hidden, lrs) -> str:
    """Test accuracy and seconds per epoch as a hidden × lr table (markdown)."""
    from nnlite.sweep import markdown_table

    cells = {(r["hidden"], r["lr"]): r for r in results}
    rows = []
    for h in hidden:
        row = [str(h)]
        for lr in lrs:
            r = cells.get((h, lr))
            if r is None:
                row.append("not run")
            elif r["status"] != "ok":
                row.append("failed: " + str(r["reason"]).split(":")[0].replace("|", "/"))
            else:
                row.append(f"{r['test_accuracy']:.4f} ({r['seconds_per_epoch']:.1f} s)")
        rows.append(row)
    headers = ["hidden \\ lr"] + [f"{lr:g}" for lr in lrs]
    return ("Test accuracy (seconds per epoch)\n\n"
            + markdown_table(headers, rows, align=["r"] * len(headers)))


def main(argv=None) -> int:
    args = parse_args(argv)
    # Workers are fresh interpreters: they pick the backend up from the environment.
    os.environ["NNLITE_BACKEND"] = args.backend
    from nnlite.sweep import run_sweep

    start = time.perf_counter()
    results = run_sweep(
        hidden=args.hidden, lr=args.lr, builder=build_lstm, epochs=args.epochs,
        batch_size=args.batch_size, limit=args.limit, seed=args.seed, dtype=args.dtype,
        workers=args.workers, out=args.out,
    )
    table = grid_markdown(results, args.hidden, args.lr)
    print()
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "lstm_grid.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    try:
        from nnlite import plot

        fig = plot.sweep_heatmap(results, rows="hidden", cols="lr", value="test_accuracy",
                                 title="LSTM on MNIST rows: test accuracy")
        print("Wrote " + plot.save(fig, os.path.join(args.out, "lstm_grid_test_accuracy.png")))
    except ImportError:
        print("matplotlib is not installed: no heatmap (pip install matplotlib)")
    print(f"{len(results)} configurations in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
