"""Hyperparameter sweeps: train every hidden size × learning rate combination, in parallel.

    >>> from nnlite.sweep import run_sweep
    >>> results = run_sweep(hidden=[16, 32, 64], lr=[1e-3, 1e-2], epochs=3, out="out")

or, from the shell, ``nnlite sweep --hidden 16,32,64 --lr 1e-3,1e-2 --epochs 3 --out out``.

Each configuration trains in a worker process of a ``ProcessPoolExecutor`` started with the
"spawn" method (a fresh interpreter: no forked BLAS threads or locks; the workers load MNIST
themselves). Each worker's BLAS gets ``cpu_count // workers`` threads so the workers do not
oversubscribe the cores. A configuration that fails is recorded with its reason and the sweep
goes on:

    out of memory     MemoryError raised while building or training
    divergence        a non-finite final training loss (``fit`` warns with
                      ``NonFiniteLossWarning`` and stops)
    any exception     its type and message
    a worker killed   (e.g. by the kernel's OOM killer) the configuration is retried alone once,
                      then recorded as failed

Outputs (when ``out`` is given): ``sweep.csv`` and ``sweep.md`` (validation and test accuracy,
seconds per epoch, status and reason for every configuration) and ``sweep_heatmap.png``
(validation accuracy, hidden size × learning rate, failed cells marked; needs matplotlib).

Builders are pluggable: ``builder`` names an entry of :data:`BUILDERS` or is a
``"module:function"`` path, resolved inside the worker. A builder is called as

    builder(hidden=..., lr=..., depth=..., activation=..., optimizer=..., seed=...,
            input_shape=(28, 28))

and returns a compiled nnlite model whose input is one 28×28 image and output 10 softmax
probabilities; it should accept ``**kwargs`` to ignore settings it has no use for. The
"debug_raise" and "debug_oom" builders always fail (RuntimeError, MemoryError); tests use them,
and a learning rate so large that training diverges (a linear MLP under SGD with lr=1e10: the
weights overflow within a few steps; a ReLU net may instead lose every unit and keep a huge but
finite loss, which counts as a success).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import itertools
import math
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from nnlite._files import atomic_write

__all__ = [
    "BUILDERS",
    "COLUMNS",
    "build_mlp",
    "markdown_table",
    "resolve_builder",
    "run_sweep",
    "train_config",
    "write_outputs",
]

#: Builder names and their "module:function" paths (the LSTM builder will be added here).
BUILDERS = {
    "mlp": "nnlite.sweep:build_mlp",
    "debug_raise": "nnlite.sweep:_build_raise",
    "debug_oom": "nnlite.sweep:_build_oom",
}

#: Columns of ``sweep.csv``, in order.
COLUMNS = (
    "builder", "hidden", "depth", "lr", "optimizer", "activation", "epochs", "batch_size",
    "status", "val_accuracy", "test_accuracy", "seconds_per_epoch", "epochs_run", "final_loss",
    "reason",
)

_BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def build_mlp(hidden, lr: float, depth: int = 1, activation: str = "relu",
              optimizer: str = "adam", seed: int | None = 0, input_shape=(28, 28), **kwargs):
    """The "mlp" builder: Flatten, ``depth`` Dense layers of ``hidden`` units, softmax output.

    Args:
        hidden: width of each hidden layer (an int), or the list of widths.
        lr: learning rate of the optimizer.
        depth: number of hidden layers when ``hidden`` is an int.
        optimizer: "adam", "sgd" or "rmsprop".

    Returns:
        a compiled ``Sequential`` (sparse categorical cross-entropy, accuracy).
    """
    import nnlite

    if isinstance(hidden, (list, tuple, np.ndarray)):
        widths = [int(h) for h in hidden]
    else:
        widths = [int(hidden)] * int(depth)
    layers = [nnlite.Input(shape=tuple(input_shape)), nnlite.layers.Flatten()]
    layers += [nnlite.layers.Dense(w, activation=activation) for w in widths]
    layers.append(nnlite.layers.Dense(10, activation="softmax"))
    model = nnlite.Sequential(layers, seed=seed)
    opt = nnlite.optimizers.get(optimizer)
    opt.learning_rate = float(lr)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _build_raise(**kwargs):
    """Test builder: always raises RuntimeError."""
    raise RuntimeError("forced failure (builder 'debug_raise')")


def _build_oom(**kwargs):
    """Test builder: always raises MemoryError, as an allocation too large would."""
    raise MemoryError("forced out-of-memory (builder 'debug_oom')")


def resolve_builder(builder):
    """The builder function for a name in :data:`BUILDERS`, a "module:function" path, or a
    callable (returned as is).

    Raises:
        ValueError: for an unknown name or a path that does not resolve.
    """
    if callable(builder):
        return builder
    path = BUILDERS.get(builder, builder)
    module_name, _, attribute = str(path).partition(":")
    if not attribute:
        raise ValueError(
            f"Unknown builder {builder!r}: expected one of {sorted(BUILDERS)} or a "
            "'module:function' path"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"Builder {builder!r} does not resolve: {exc}") from None
    if not callable(fn):
        raise ValueError(f"Builder {builder!r} resolves to a non-callable {type(fn).__name__}")
    return fn


# ----------------------------------------------------------------------------------------------
# One configuration (runs in a worker)
# ----------------------------------------------------------------------------------------------

_DATA_CACHE: dict = {}


def _load_data(limit, validation_split: float, dtype: str):
    """MNIST as (N, 28, 28) pixels in [0, 1]; the last ``validation_split`` of the (limited)
    training set is the validation set, as Keras's ``validation_split`` takes it. Cached per
    process, so a worker loads it once."""
    key = (limit, validation_split, dtype)
    if key not in _DATA_CACHE:
        from nnlite.datasets import mnist

        (x, y), (x_test, y_test) = mnist.load_scaled(limit, dtype)
        split = int(math.floor(len(x) * (1.0 - validation_split)))
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = ((x[:split], y[:split]), (x[split:], y[split:]), (x_test, y_test))
    return _DATA_CACHE[key]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Diverged(ArithmeticError):
    """The training loss ended non-finite."""


def train_config(config: dict) -> dict:
    """Train and evaluate one configuration; never raises (failures are returned).

    Args:
        config: ``builder``, ``hidden``, ``depth``, ``lr``, ``optimizer``, ``activation``,
            ``epochs``, ``batch_size``, ``seed``, ``limit``, ``validation_split``, ``dtype``.

    Returns:
        ``config``'s entries plus ``status`` ("ok" or "failed"), ``reason``,
        ``val_accuracy``, ``test_accuracy``, ``seconds_per_epoch``, ``epochs_run``,
        ``final_loss`` and ``seconds`` (the worker's wall time for this configuration).
    """
    from nnlite import config as nnlite_config
    from nnlite.models import NonFiniteLossWarning

    result = dict(config)
    result.update(status="ok", reason="", val_accuracy=float("nan"),
                  test_accuracy=float("nan"), seconds_per_epoch=float("nan"), epochs_run=0,
                  final_loss=float("nan"))
    start = time.perf_counter()
    previous_floatx = nnlite_config.floatx()
    try:
        nnlite_config.set_floatx(config.get("dtype", "float32"))
        with warnings.catch_warnings(record=True) as caught, \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            warnings.simplefilter("always", NonFiniteLossWarning)
            # Overflow on the way to a NaN loss is expected in a diverging run: not news.
            warnings.simplefilter("ignore", RuntimeWarning)
            train, val, test = _load_data(config.get("limit"), config["validation_split"],
                                          config.get("dtype", "float32"))
            builder = resolve_builder(config["builder"])
            model = builder(hidden=config["hidden"], lr=config["lr"],
                            depth=config.get("depth", 1),
                            activation=config.get("activation", "relu"),
                            optimizer=config.get("optimizer", "adam"),
                            seed=config.get("seed", 0), input_shape=train[0].shape[1:])
            fit_start = time.perf_counter()
            history = model.fit(train[0], train[1], batch_size=config["batch_size"],
                                epochs=config["epochs"], verbose=0)
            fit_seconds = time.perf_counter() - fit_start
            losses = history.history.get("loss", [])
            result["epochs_run"] = len(losses)
            result["seconds_per_epoch"] = fit_seconds / max(len(losses), 1)
            final = float(losses[-1]) if losses else float("nan")
            result["final_loss"] = final
            if not math.isfinite(final):
                warned = any(issubclass(w.category, NonFiniteLossWarning) for w in caught)
                raise _Diverged(
                    f"loss {final} in epoch {len(losses)}"
                    + (" (NonFiniteLossWarning: training stopped)" if warned else "")
                )
            batch = max(config["batch_size"], 500)
            if len(val[0]):
                result["val_accuracy"] = float(
                    model.evaluate(val[0], val[1], batch_size=batch, return_dict=True,
                                   verbose=0)["accuracy"])
            result["test_accuracy"] = float(
                model.evaluate(test[0], test[1], batch_size=batch, return_dict=True,
                               verbose=0)["accuracy"])
    except _Diverged as exc:
        result.update(status="failed", reason=f"diverged: {exc}")
    except Exception as exc:  # MemoryError is an Exception too: record it, go on
        result.update(status="failed", reason=_reason(exc))
    finally:
        nnlite_config.set_floatx(previous_floatx)
    result["seconds"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _blas_threads(threads: int):
    """Set the BLAS thread-count variables (unless the user set them) while workers start:
    a spawned worker reads them when it loads NumPy. Restored afterwards."""
    saved = {k: os.environ.get(k) for k in _BLAS_VARIABLES}
    for key in _BLAS_VARIABLES:
        if saved[key] is None:
            os.environ[key] = str(threads)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


def _default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def _run_in_pool(configs: dict, workers: int, context, report) -> tuple[dict, list]:
    """Run ``{index: config}`` in a pool; returns ``({index: result}, [indices whose worker
    died])``."""
    done, broken = {}, []
    threads = max(1, (os.cpu_count() or 1) // workers)
    with _blas_threads(threads), ProcessPoolExecutor(max_workers=workers,
                                                     mp_context=context) as pool:
        futures = {pool.submit(train_config, config): i for i, config in configs.items()}
        for future in as_completed(futures):
            index = futures[future]
            try:
                done[index] = future.result()
            except BrokenProcessPool:
                broken.append(index)
                continue
            except Exception as exc:  # e.g. a result that could not be pickled
                done[index] = {**configs[index], "status": "failed", "reason": _reason(exc)}
            report(done[index])
    return done, broken


def run_sweep(hidden=(16, 32, 64), lr=(1e-3, 1e-2), *, builder="mlp", depth: int = 1,
              activation: str = "relu", optimizer: str = "adam", epochs: int = 3,
              batch_size: int = 100, validation_split: float = 0.1, limit: int | None = None,
              seed: int = 0, dtype: str = "float32", workers: int | None = None,
              start_method: str = "spawn", out=None, verbose: bool = True) -> list[dict]:
    """Train every (hidden, lr) combination and collect validation and test accuracy.

    Args:
        hidden: hidden sizes to try: ints (``depth`` layers of that width each) or tuples of
            widths, one per configuration.
        lr: learning rates to try.
        builder: a name in :data:`BUILDERS` ("mlp"), a "module:function" path, or a picklable
            module-level function (see the module docstring for its signature).
        epochs, batch_size, validation_split, seed, dtype: as for ``nnlite train``; every
            configuration uses the same seed, so they differ only in the swept settings.
        limit: use only the first ``limit`` training and test images (quick runs).
        workers: worker processes (default ``min(2, cpu count)``); 0 trains in this process,
            one configuration after another (for debugging).
        start_method: "spawn" (default) or "forkserver".
        out: folder for ``sweep.csv``, ``sweep.md`` and ``sweep_heatmap.png``; None writes
            nothing.
        verbose: print one line per finished configuration.

    Returns:
        one result dict per configuration (see :func:`train_config`), in grid order
        (hidden-major), failed ones included.
    """
    # A hidden size is an int (``depth`` layers of it) or a tuple of widths, e.g. (256, 128).
    hidden = list(hidden) if isinstance(hidden, (list, tuple, np.ndarray)) else [hidden]
    hidden = [tuple(int(w) for w in h) if isinstance(h, (list, tuple, np.ndarray)) else int(h)
              for h in hidden]
    lr = [float(v) for v in np.atleast_1d(lr)]
    if not hidden or not lr:
        raise ValueError("run_sweep: expected at least one hidden size and one learning rate")
    if start_method not in ("spawn", "forkserver"):
        raise ValueError(
            f"run_sweep: expected start_method 'spawn' or 'forkserver', received {start_method!r}"
        )
    if not callable(builder):
        resolve_builder(builder)  # fail fast on a typo, before starting any worker
    workers = _default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"run_sweep: expected workers >= 0, received {workers}")
    configs = {
        i: {"builder": builder, "hidden": h, "depth": depth, "lr": rate, "optimizer": optimizer,
            "activation": activation, "epochs": epochs, "batch_size": batch_size,
            "validation_split": validation_split, "limit": limit, "seed": seed, "dtype": dtype}
        for i, (h, rate) in enumerate(itertools.product(hidden, lr))
    }
    finished = [0]

    def report(result):
        finished[0] += 1
        if verbose:
            print(f"[{finished[0]}/{len(configs)}] {_describe(result)}", flush=True)

    start = time.perf_counter()
    if workers == 0:
        results = {}
        for i, config in configs.items():
            results[i] = train_config(config)
            report(results[i])
    else:
        context = multiprocessing.get_context(start_method)
        results, broken = _run_in_pool(configs, min(workers, len(configs)), context, report)
        for index in broken:  # a worker died: retry each such configuration alone, once
            retried, again = _run_in_pool({index: configs[index]}, 1, context, report)
            results.update(retried)
            for i in again:
                results[i] = {**configs[i], "status": "failed",
                              "reason": "worker process died (killed, e.g. out of memory)"}
                report(results[i])
    ordered = [results[i] for i in sorted(configs)]
    for result in ordered:
        if not callable(result["builder"]):
            continue
        result["builder"] = f"{result['builder'].__module__}:{result['builder'].__qualname__}"
    if verbose:
        failed = sum(r["status"] != "ok" for r in ordered)
        print(f"Sweep of {len(ordered)} configurations: {failed} failed, "
              f"{time.perf_counter() - start:.1f} s wall time with "
              f"{workers or 'no'} worker process{'es' if workers != 1 else ''}")
    if out is not None:
        paths = write_outputs(ordered, out)
        if verbose:
            print("Wrote " + ", ".join(paths))
    return ordered


def _describe(result: dict) -> str:
    head = (f"hidden={result['hidden']} lr={result['lr']:g}")
    if result["status"] == "ok":
        return (f"{head}: val {result['val_accuracy']:.4f}, test {result['test_accuracy']:.4f} "
                f"({result['seconds_per_epoch']:.2f} s/epoch)")
    return f"{head}: FAILED ({result['reason']})"


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


def markdown_table(headers, rows, align=None) -> str:
    """A GitHub markdown table; numbers right-aligned unless ``align`` ("l"/"r" per column).

    Example:
        >>> print(markdown_table(["model", "accuracy"], [["mlp", "0.97"]]))
        | model | accuracy |
        |:------|---------:|
        | mlp   |     0.97 |
    """
    headers = [str(h) for h in headers]
    rows = [[str(c) for c in row] for row in rows]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(
                f"markdown_table: expected rows of {len(headers)} cells, received {len(row)}"
            )
    if align is None:
        align = ["r" if rows and all(_is_number(row[j]) for row in rows) else "l"
                 for j in range(len(headers))]
    widths = [max([len(h)] + [len(row[j]) for row in rows]) for j, h in enumerate(headers)]

    def line(cells):
        padded = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1))
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), rule] + [line(row) for row in rows])


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return text in ("", "—", "-")
    return True


def _cell(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def sweep_markdown(results) -> str:
    """The markdown table of a sweep: one row per configuration."""
    headers = ["hidden", "lr", "val accuracy", "test accuracy", "s/epoch", "status"]
    rows = []
    for r in results:
        status = "ok" if r["status"] == "ok" else f"failed: {r['reason']}".replace("|", "/")
        rows.append([r["hidden"], f"{r['lr']:g}", _cell(r.get("val_accuracy", float("nan"))),
                     _cell(r.get("test_accuracy", float("nan"))),
                     _cell(r.get("seconds_per_epoch", float("nan")), 2), status])
    return markdown_table(headers, rows, align=["r", "r", "r", "r", "r", "l"])


def _write_text(path: str, text: str) -> None:
    """Write ``text`` atomically (temporary file in the same folder, then os.replace)."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_outputs(results, out) -> list[str]:
    """Write ``sweep.csv``, ``sweep.md`` and (with matplotlib) ``sweep_heatmap.png`` to the
    folder ``out``; returns the paths written."""
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow({k: r.get(k, "") for k in COLUMNS})
    paths = [os.path.join(out, "sweep.csv"), os.path.join(out, "sweep.md")]
    _write_text(paths[0], buffer.getvalue())
    _write_text(paths[1], sweep_markdown(results) + "\n")
    try:
        from nnlite import plot

        fig = plot.sweep_heatmap(results, rows="hidden", cols="lr", value="val_accuracy")
    except ImportError:
        print("matplotlib is not installed: no heatmap (pip install 'nnlite[plot]')")
        return paths
    paths.append(plot.save(fig, os.path.join(out, "sweep_heatmap.png")))
    return paths
