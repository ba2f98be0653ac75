"""Plots of nnlite runs: sample digits, training curves, confusion matrices, sweeps, weights.

matplotlib is imported inside each function, so ``import nnlite`` stays NumPy-only; install it
with ``pip install "nnlite[plot]"``. Every function draws on ``ax`` when one is given (and then
leaves the figure's layout alone), otherwise on a new figure, and returns the figure.

Headless-safe: a new figure is a ``matplotlib.figure.Figure`` attached to an Agg canvas, made
without pyplot, so nothing global changes (no ``matplotlib.use``) and no display is needed. When
the caller has already imported pyplot and there is somewhere to show figures (a display, or a
notebook backend), new figures come from pyplot instead, so ``plt.show()`` shows them.

Example:
    >>> from nnlite import plot
    >>> fig = plot.training_curves({"adam": history_adam, "sgd": history_sgd})
    >>> plot.save(fig, "out/curves.png")        # atomic: temporary file, then os.replace
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from nnlite._files import atomic_write

__all__ = [
    "new_figure",
    "save",
    "digits_grid",
    "training_curves",
    "confusion_matrix",
    "sweep_heatmap",
    "first_layer_weights",
]


# ----------------------------------------------------------------------------------------------
# Figures and saving
# ----------------------------------------------------------------------------------------------


def _can_show() -> bool:
    """True when pyplot figures could be shown: a display, or a notebook/GUI backend chosen."""
    if os.environ.get("MPLBACKEND", "").startswith("module://"):
        return True  # ipykernel sets the inline backend this way
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def new_figure(figsize=None, nrows: int = 1, ncols: int = 1):
    """A new figure and its axes (an Axes, or an array of them when nrows·ncols > 1).

    Uses pyplot only when the caller imported it already and figures can be shown; otherwise a
    bare ``Figure`` on an Agg canvas (no global state, no display needed).
    """
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and _can_show():
        fig = plt.figure(figsize=figsize, layout="constrained")
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def _figure_and_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    return new_figure(figsize)


def save(fig, path, dpi: int = 100, **kwargs) -> str:
    """Write ``fig`` to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace``, so a reader never sees a half-written image. Creates missing folders.

    Args:
        fig: a matplotlib figure.
        path: destination; its extension picks the format (``.png`` when there is none).
        dpi: resolution; further keyword arguments go to ``fig.savefig``.

    Returns:
        ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fmt = kwargs.pop("format", None) or os.path.splitext(path)[1][1:].lower() or "png"
    with atomic_write(path, "wb", suffix=f".{fmt}.tmp") as f:
        fig.savefig(f, format=fmt, dpi=dpi, **kwargs)
    return path


# ----------------------------------------------------------------------------------------------
# Image mosaics (digits, weights)
# ----------------------------------------------------------------------------------------------


def _as_images(images, image_shape=None) -> np.ndarray:
    """(n, h, w) float array from (n, h, w) or flat (n, h·w) rows (square when no shape given)."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 3:
        return images
    if images.ndim != 2:
        raise ValueError(f"expected images of shape (n, h, w) or (n, h*w), received {images.shape}")
    if image_shape is None:
        side = math.isqrt(images.shape[1])
        if side * side != images.shape[1]:
            raise ValueError(
                f"cannot guess the image shape of rows of length {images.shape[1]}: "
                "pass image_shape=(h, w)"
            )
        image_shape = (side, side)
    return images.reshape((images.shape[0],) + tuple(image_shape))


def _mosaic(images: np.ndarray, ncols: int, pad: int = 1, header: int = 0) -> np.ndarray:
    """Tile (n, h, w) images into one array, row-major; gaps (and ``header`` rows above each
    tile, room for a caption) are NaN, drawn in the colormap's "bad" colour."""
    n, h, w = images.shape
    nrows = max(1, math.ceil(n / ncols))
    cell_h, cell_w = h + header + pad, w + pad
    out = np.full((nrows * cell_h + pad, ncols * cell_w + pad), np.nan)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        top, left = r * cell_h + pad + header, c * cell_w + pad
        out[top:top + h, left:left + w] = image
    return out


def _tile_centre(i: int, ncols: int, h: int, w: int, pad: int, header: int) -> tuple:
    r, c = divmod(i, ncols)
    x = c * (w + pad) + pad + (w - 1) / 2
    y = r * (h + header + pad) + pad + (header - 1) / 2
    return x, y


def _frame_tiles(ax, n: int, ncols: int, h: int, w: int, pad: int = 1, header: int = 0):
    """A thin grey frame around each tile, so blank pixels at an image's edge still show
    where the image ends."""
    from matplotlib.patches import Rectangle

    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = r * (h + header + pad) + pad + header, c * (w + pad) + pad
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), w, h, fill=False, edgecolor="0.8",
                               linewidth=0.5))


def _plain_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def digits_grid(images, labels=None, class_names=None, predictions=None, ncols: int = 10,
                image_shape=None, ax=None, title: str | None = None, cmap: str = "gray_r"):
    """A grid of digit images, each captioned with its class name.

    Args:
        images: (n, h, w) or flat (n, h·w) pixels (any scale: uint8 or [0, 1]).
        labels: n true labels; the caption is ``class_names[label]`` (or the label itself).
        class_names: names indexed by label, e.g. ``["zero", "one", ...]``.
        predictions: n predicted labels; captions become "true→predicted", in red when wrong.
        ncols: tiles per row.
        image_shape: (h, w) for flat rows that are not square.
        ax: draw here instead of on a new figure.

    Returns:
        the figure.
    """
    from matplotlib import colormaps

    images = _as_images(images, image_shape)
    n, h, w = images.shape
    if n == 0:
        raise ValueError("digits_grid: expected at least one image, received 0")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values is not None and len(values) != n:
            raise ValueError(f"digits_grid: expected {n} {name}, received {len(values)}")
    ncols = max(1, min(ncols, n))
    captioned = labels is not None or predictions is not None
    header = max(6, h // 3) if captioned else 0
    pad = 1
    nrows = math.ceil(n / ncols)
    fig, ax = _figure_and_axes(ax, (0.85 * ncols + 0.3, (0.85 + 0.3 * captioned) * nrows + 0.4))
    cmap = colormaps[cmap].with_extremes(bad="white")
    ax.imshow(_mosaic(images, ncols, pad, header), cmap=cmap, vmin=float(np.nanmin(images)),
              vmax=float(np.nanmax(images)), interpolation="nearest")

    def name(label):
        label = int(label)
        return str(class_names[label]) if class_names is not None else str(label)

    _frame_tiles(ax, n, ncols, h, w, pad, header)
    if captioned:
        for i in range(n):
            x, y = _tile_centre(i, ncols, h, w, pad, header)
            color = "black"
            if predictions is not None and labels is not None:
                text = f"{name(labels[i])}→{name(predictions[i])}"
                color = "black" if int(labels[i]) == int(predictions[i]) else "red"
            else:
                text = name(labels[i] if labels is not None else predictions[i])
            ax.text(x, y, text, ha="center", va="center", fontsize=7, color=color)
    _plain_axes(ax)
    if title:
        ax.set_title(title)
    return fig


def first_layer_weights(weights, max_units: int = 64, ncols: int | None = None,
                        image_shape=None, ax=None, title: str | None = None,
                        cmap: str = "RdBu_r"):
    """The first layer's weights, one image per hidden unit (28×28 for MNIST).

    Column j of the kernel (D, M) holds the weights unit j gives each input pixel; it is shown
    as an (h, w) image scaled by its own largest |weight|, red positive and blue negative.

    Args:
        weights: a kernel array (D, M), a layer with ``params["kernel"]``, or a model whose
            first layer with a kernel is used.
        max_units: show the first ``max_units`` units at most.
        ncols: tiles per row (about √units when omitted).
        image_shape: (h, w) with h·w = D; square when omitted.

    Returns:
        the figure.
    """
    from matplotlib import colormaps

    kernel = _first_kernel(weights)
    units = min(kernel.shape[1], max_units)
    images = _as_images(kernel[:, :units].T, image_shape)
    scale = np.abs(images).max(axis=(1, 2), keepdims=True)
    images = images / np.where(scale > 0, scale, 1)
    ncols = ncols or max(1, math.ceil(math.sqrt(units)))
    nrows = math.ceil(units / ncols)
    fig, ax = _figure_and_axes(ax, (max(4.8, 0.75 * ncols + 1.6), max(2.8, 0.75 * nrows + 0.9)))
    cmap = colormaps[cmap].with_extremes(bad="white")
    image = ax.imshow(_mosaic(images, ncols), cmap=cmap, vmin=-1, vmax=1,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="weight / max |weight|")
    _plain_axes(ax)
    ax.set_title(title or f"First-layer weights ({units} of {kernel.shape[1]} units)")
    return fig


def _first_kernel(weights) -> np.ndarray:
    layers = getattr(weights, "layers", None)
    if layers is not None:
        for layer in layers:
            if "kernel" in getattr(layer, "params", {}):
                weights = layer
                break
        else:
            raise ValueError("first_layer_weights: the model has no layer with a kernel")
    params = getattr(weights, "params", None)
    if params is not None:
        weights = params["kernel"]
    if hasattr(weights, "get"):  # a CuPy array: bring it to the host
        weights = weights.get()
    kernel = np.asarray(weights, dtype=np.float64)
    if kernel.ndim != 2:
        raise ValueError(f"first_layer_weights: expected a kernel (D, M), received {kernel.shape}")
    return kernel


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------


def _history_dict(obj) -> dict | None:
    """The per-epoch dict of a History (or of a dict of lists); None for anything else."""
    history = getattr(obj, "history", obj)
    if isinstance(history, Mapping) and all(
        isinstance(v, (list, tuple, np.ndarray)) for v in history.values()
    ):
        return dict(history)
    return None


def _runs(histories, labels) -> list[tuple[str, dict]]:
    single = _history_dict(histories)
    if single:
        runs = [(None, single)]
    elif isinstance(histories, Mapping):
        runs = [(str(k), _history_dict(v)) for k, v in histories.items()]
    elif isinstance(histories, Sequence):
        runs = [(None, _history_dict(v)) for v in histories]
    else:
        runs = [(None, None)]
    if not runs or any(h is None for _, h in runs):
        raise TypeError(
            "training_curves: expected a History, a dict of per-epoch lists, or a list or dict "
            f"of those, received {type(histories).__name__}"
        )
    if labels is not None:
        if len(labels) != len(runs):
            raise ValueError(
                f"training_curves: expected {len(runs)} labels, received {len(labels)}"
            )
        runs = [(str(label), h) for label, (_, h) in zip(labels, runs)]
    return [(name if name is not None else (f"run {i + 1}" if len(runs) > 1 else ""), h)
            for i, (name, h) in enumerate(runs)]


def _early_stops(early_stop, runs) -> list:
    """One (stop_epoch, best_epoch) pair per run, 0-based, None where unknown."""
    if early_stop is None:
        items = [None] * len(runs)
    elif isinstance(early_stop, Mapping):
        items = [early_stop.get(name) for name, _ in runs]
    elif isinstance(early_stop, (list, tuple)):
        if len(early_stop) != len(runs):
            raise ValueError(
                f"training_curves: expected {len(runs)} early_stop entries, "
                f"received {len(early_stop)}"
            )
        items = list(early_stop)
    else:
        items = [early_stop] * len(runs)
    marks = []
    for item in items:
        if item is None:
            marks.append((None, None))
        elif isinstance(item, (int, np.integer)):
            marks.append((int(item), None))
        else:  # an EarlyStopping callback after fit
            stopped = getattr(item, "stopped_epoch", 0)
            restored = getattr(item, "restore_best_weights", False)
            best = getattr(item, "best_epoch", None) if restored else None
            marks.append((stopped if stopped > 0 else None, best))
    return marks


def training_curves(histories, metrics=("loss", "accuracy"), labels=None, early_stop=None,
                    ax=None, title: str | None = None, xlabel: str = "epoch",
                    x_start: float = 1, x_step: float = 1, log_loss: bool = False):
    """Loss and accuracy per epoch, train (solid) and validation (dashed), runs overlaid.

    Args:
        histories: a ``History`` (what ``fit`` returns), a dict of per-epoch lists
            (``history.history``), or a list or ``{name: history}`` dict of those to compare.
        metrics: one panel per metric; ``"val_" + metric`` is drawn too when recorded.
        labels: run names (for a list of histories).
        early_stop: the epoch where a run stopped early (0-based int, as Keras's
            ``EarlyStopping.stopped_epoch``), or the ``EarlyStopping`` callback itself (its
            ``best_epoch`` is marked too when it restored the best weights); one value, a list
            (one per run) or a dict by run name. Marked with a dotted vertical line.
        ax: one Axes per metric (a single Axes when there is one metric).
        xlabel, x_start, x_step: the x axis; point i is at ``x_start + i·x_step`` (epochs
            1, 2, ... by default; use ``xlabel="step", x_start=0, x_step=100`` for a log taken
            every 100 steps).
        log_loss: logarithmic y axis for the loss panel.

    Returns:
        the figure.
    """
    runs = _runs(histories, labels)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    for metric in metrics:
        if not any(metric in h or f"val_{metric}" in h for _, h in runs):
            keys = sorted({k for _, h in runs for k in h})
            raise ValueError(f"training_curves: no run recorded {metric!r}; recorded: {keys}")
    if ax is None:
        fig, axes = new_figure((5.0 * len(metrics), 3.6), 1, len(metrics))
        axes = np.atleast_1d(axes)
    else:
        axes = np.atleast_1d(np.asarray(ax, dtype=object))
        if axes.size != len(metrics):
            raise ValueError(
                f"training_curves: expected {len(metrics)} Axes (one per metric), "
                f"received {axes.size}"
            )
        fig = axes[0].figure
    marks = _early_stops(early_stop, runs)
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter

    palette = [f"C{i}" for i in range(10)]
    if len(runs) > 10:  # tab20's ten dark hues first, then their light twins
        palette = list(colormaps["tab20"].colors[0::2] + colormaps["tab20"].colors[1::2])
    styles = {}  # legend entries for line styles: what solid, dashed, dotted and stars mean
    for panel, metric in zip(axes, metrics):
        for i, (name, history) in enumerate(runs):
            color = palette[i % len(palette)]
            for key, style, part in ((metric, "-", "train"), (f"val_{metric}", "--", "validation")):
                values = np.asarray(history.get(key, []), dtype=np.float64)
                if values.size == 0:
                    continue
                x = x_start + x_step * np.arange(values.size)
                # Markers make short runs (one or two epochs) visible.
                panel.plot(x, values, style, color=color, linewidth=1.3,
                           marker="o" if values.size <= 30 else None, markersize=3)
                styles[part] = Line2D([], [], color="0.2", linestyle=style)
            stop, best = marks[i]
            if stop is not None:
                panel.axvline(x_start + x_step * stop, color=color, linestyle=":", linewidth=1.3)
                styles["stopped early"] = Line2D([], [], color="0.2", linestyle=":")
            val = np.asarray(history.get(f"val_{metric}", []), dtype=np.float64)
            if best is not None and best < val.size:
                panel.plot(x_start + x_step * best, val[best], "*", color=color, markersize=11)
                styles["best (restored)"] = Line2D([], [], color="0.2", marker="*",
                                                   linestyle="none", markersize=9)
        panel.set_xlabel(xlabel)
        panel.set_ylabel(metric)
        if log_loss and metric == "loss":
            panel.set_yscale("log")
            panel.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            panel.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        panel.grid(True, alpha=0.3)
    single_panel = len(axes) == 1
    legend = axes[0].legend(list(styles.values()), list(styles), fontsize=7,
                            loc="upper right" if single_panel else "best")
    named = [(name, palette[i % len(palette)]) for i, (name, _) in enumerate(runs) if name]
    if named:
        if single_panel:
            axes[0].add_artist(legend)  # keep it: the next legend() call would replace it
        axes[-1].legend([Line2D([], [], color=c, linewidth=2) for _, c in named],
                        [n for n, _ in named], fontsize=7,
                        loc="lower left" if single_panel else "best")
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------------
# Annotated matrices: confusion matrix, sweep heatmap
# ----------------------------------------------------------------------------------------------


def _text_color(image, value: float) -> str:
    """White text on dark cells, black on light ones (luminance of the cell's colour)."""
    r, g, b, _ = image.cmap(image.norm(value))
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def confusion_matrix(y_true=None, y_pred=None, *, counts=None, class_names=None, ax=None,
                     title: str | None = None, cmap: str = "Blues"):
    """The confusion matrix as a heatmap, every cell annotated with its count.

    Rows are the true classes, columns the predicted ones; the diagonal holds the correct
    predictions. The title gives the accuracy, trace / total.

    Args:
        y_true, y_pred: labels (N,) or scores/one-hot (N, C); counted with
            ``nnlite.metrics.confusion_matrix``.
        counts: a ready (C, C) matrix of counts, instead of ``y_true`` and ``y_pred``.
        class_names: C tick labels.

    Returns:
        the figure.
    """
    from nnlite.metrics import confusion_matrix as count

    if counts is None:
        if y_true is None or y_pred is None:
            raise ValueError("confusion_matrix: expected y_true and y_pred, or counts=")
        counts = count(y_true, y_pred,
                       num_classes=len(class_names) if class_names is not None else None)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion_matrix: expected a square matrix, received {counts.shape}")
    k = counts.shape[0]
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"confusion_matrix: expected {k} class names, received {len(names)}")
    size = 1.2 + 0.5 * k
    fig, ax = _figure_and_axes(ax, (size + 1.0, size))
    vmax = float(counts.max()) if counts.size else 1.0
    image = ax.imshow(counts, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="count")
    fontsize = 8 if k <= 12 else 6
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=fontsize,
                    color=_text_color(image, counts[i, j]))
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = counts.sum()
    accuracy = np.trace(counts) / total if total else float("nan")
    ax.set_title(title or f"Confusion matrix (accuracy {accuracy:.4f}, n={int(total)})")
    return fig


def _sort_key(value):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _label(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def sweep_heatmap(results, rows: str = "hidden", cols: str = "lr", value: str = "val_accuracy",
                  ax=None, title: str | None = None, fmt: str = "{:.4f}",
                  cmap: str = "viridis"):
    """A heatmap of a sweep: ``value`` for every (rows, cols) cell, annotated; failed cells
    hatched grey with the start of their reason; combinations not run are left blank.

    Args:
        results: list of dicts, as ``nnlite.sweep.run_sweep`` returns them: keys ``rows``,
            ``cols``, ``value``, ``"status"`` ("ok" or "failed") and ``"reason"``.
        rows, cols: the keys of the two axes (e.g. hidden size × learning rate).
        value: the key shown in each cell. When several results share a cell (other settings
            varied), the best (largest) successful value is shown.
        fmt: format of the annotations.

    Returns:
        the figure.
    """
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    results = list(results)
    if not results:
        raise ValueError("sweep_heatmap: expected at least one result, received none")
    row_values = sorted({r[rows] for r in results}, key=_sort_key)
    col_values = sorted({r[cols] for r in results}, key=_sort_key)
    grid = np.full((len(row_values), len(col_values)), np.nan)
    failed: dict[tuple, str] = {}
    seen = set()
    for r in results:
        cell = (row_values.index(r[rows]), col_values.index(r[cols]))
        seen.add(cell)
        v = r.get(value)
        ok = r.get("status", "ok") == "ok" and v is not None and math.isfinite(float(v))
        if ok:
            grid[cell] = float(v) if np.isnan(grid[cell]) else max(grid[cell], float(v))
        else:
            failed.setdefault(cell, str(r.get("reason") or "failed"))
    for cell in zip(*np.nonzero(~np.isnan(grid))):
        failed.pop(tuple(int(c) for c in cell), None)  # a cell with any success is not failed
    fig, ax = _figure_and_axes(
        ax, (1.6 + 1.3 * len(col_values), 1.2 + 0.75 * len(row_values))
    )
    cmap = colormaps[cmap].with_extremes(bad="white")
    finite = grid[np.isfinite(grid)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5e-3, vmax + 0.5e-3
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax,
                      aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=value)
    for i in range(len(row_values)):
        for j in range(len(col_values)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, fmt.format(grid[i, j]), ha="center", va="center", fontsize=9,
                        color=_text_color(image, grid[i, j]))
            elif (i, j) in failed:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.85",
                                       edgecolor="0.4", hatch="xx", linewidth=0.5))
                reason = failed[(i, j)].split(":")[0][:18]
                ax.text(j, i, f"FAILED\n{reason}", ha="center", va="center", fontsize=8,
                        color="darkred", fontweight="bold",
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
            elif (i, j) not in seen:
                ax.text(j, i, "not run", ha="center", va="center", fontsize=7, color="0.5")
    ax.set_xticks(range(len(col_values)), [_label(v) for v in col_values])
    ax.set_yticks(range(len(row_values)), [_label(v) for v in row_values])
    ax.set_xlabel(cols)
    ax.set_ylabel(rows)
    ax.set_title(title or f"Sweep: {value} ({len(failed)} failed)")
    return fig
