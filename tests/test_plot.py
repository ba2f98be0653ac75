"""nnlite.plot: every plot draws something (PNG larger than a blank one, pixels that vary), takes
an ``ax``, stays headless (no pyplot), and ``save`` writes atomically."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import nnlite

matplotlib = pytest.importorskip("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nnlite import plot  # noqa: E402


def assert_png_drawn(path, min_variance: float = 1e-3) -> None:
    """The PNG exists, is larger than a blank figure of the same pixel size saved the same
    way, and its pixels vary (not one flat colour)."""
    import matplotlib.image

    assert os.path.getsize(path) > 0
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    blank = Figure(figsize=(width / 100, height / 100))
    FigureCanvasAgg(blank)
    blank_path = os.path.join(os.path.dirname(path), ".blank-reference.png")
    blank.savefig(blank_path, dpi=100)
    try:
        assert os.path.getsize(path) > os.path.getsize(blank_path)
    finally:
        os.unlink(blank_path)
    assert float(pixels[..., :3].var()) > min_variance


@pytest.fixture
def history_dicts():
    epochs = np.arange(1, 9)
    a = {"loss": list(1 / epochs), "accuracy": list(1 - 0.5 / epochs),
         "val_loss": list(1.2 / epochs + 0.01 * epochs), "val_accuracy": list(0.9 - 0.4 / epochs)}
    b = {k: [v * 1.1 for v in values[:5]] for k, values in a.items()}
    return a, b


def test_digits_grid_captions_with_class_names(tmp_path):
    (x, y), _ = nnlite.datasets.mnist.load_data()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    fig = plot.digits_grid(x[:20], labels=y[:20], class_names=names, ncols=5)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [names[label] for label in y[:20]]
    assert_png_drawn(plot.save(fig, tmp_path / "digits.png"))


def test_digits_grid_marks_wrong_predictions_in_red():
    images = np.random.default_rng(0).random((3, 784))
    fig = plot.digits_grid(images, labels=[1, 2, 3], predictions=[1, 5, 3])
    texts = fig.axes[0].texts
    assert [t.get_text() for t in texts] == ["1→1", "2→5", "3→3"]
    assert [t.get_color() for t in texts] == ["black", "red", "black"]


def test_training_curves_overlays_runs_and_marks_early_stop(tmp_path, history_dicts):
    a, b = history_dicts
    fig = plot.training_curves({"adam": a, "sgd": b}, early_stop={"sgd": 3})
    loss_ax, acc_ax = fig.axes[:2]
    assert loss_ax.get_ylabel() == "loss" and acc_ax.get_ylabel() == "accuracy"
    # train + val for each of the two runs, plus one vertical early-stop line.
    lines = loss_ax.get_lines()
    assert sum(len(line.get_xdata()) == 8 for line in lines) == 2
    assert sum(len(line.get_xdata()) == 5 for line in lines) == 2
    vertical = [line for line in lines if np.ptp(np.asarray(line.get_xdata(), float)) == 0
                and len(line.get_xdata()) == 2]
    assert len(vertical) == 1 and vertical[0].get_xdata()[0] == 4  # 0-based epoch 3 -> x = 4
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["adam", "sgd"]
    assert_png_drawn(plot.save(fig, tmp_path / "curves.png"))


def test_training_curves_from_real_history_and_early_stopping(tmp_path):
    (x, y), _ = nnlite.datasets.mnist.load_data()
    x = x[:500].reshape(500, -1).astype(np.float32) / 255
    model = nnlite.Sequential([nnlite.Input(shape=(784,)), nnlite.layers.Dense(10,
                               activation="softmax")], seed=0)
    model.compile(optimizer=nnlite.optimizers.Adam(0.3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    stop = nnlite.callbacks.EarlyStopping(monitor="val_loss", patience=1,
                                          restore_best_weights=True)
    history = model.fit(x[:500], y[:500], batch_size=50, epochs=30, validation_split=0.2,
                        callbacks=[stop], verbose=0)
    assert stop.stopped_epoch > 0  # a large learning rate: the validation loss soon rises
    fig = plot.training_curves(history, early_stop=stop)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["train", "validation", "stopped early", "best (restored)"]
    assert_png_drawn(plot.save(fig, tmp_path / "history.png"))


def test_training_curves_rejects_unknown_metric_and_wrong_axes(history_dicts):
    a, _ = history_dicts
    with pytest.raises(ValueError, match="'top5'"):
        plot.training_curves(a, metrics=("top5",))
    fig, ax = plot.new_figure()
    with pytest.raises(ValueError, match="expected 2 Axes"):
        plot.training_curves(a, ax=ax)
    assert plot.training_curves(a, metrics=("loss",), ax=ax) is fig


def test_confusion_matrix_plot_counts_on_known_case(tmp_path):
    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 2, 0]
    fig = plot.confusion_matrix(y_true, y_pred, class_names=["a", "b", "c"])
    ax = fig.axes[0]
    counts = np.asarray(ax.images[0].get_array())
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert counts.sum() == 6 and np.trace(counts) == 4
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["1", "1", "0", "0", "1", "0", "1", "0", "2"]
    assert "0.6667" in ax.get_title() and "n=6" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert_png_drawn(plot.save(fig, tmp_path / "cm.png"))


def test_confusion_matrix_on_given_axes_from_counts():
    fig, axes = plot.new_figure((8, 4), 1, 2)
    assert plot.confusion_matrix(counts=np.eye(3, dtype=int) * 5, ax=axes[1]) is fig
    assert [t.get_text() for t in axes[1].texts].count("5") == 3
    with pytest.raises(ValueError, match="y_true and y_pred"):
        plot.confusion_matrix([0, 1])


def test_sweep_heatmap_annotates_cells_and_marks_failures(tmp_path):
    results = [
        {"hidden": 16, "lr": 1e-3, "status": "ok", "val_accuracy": 0.91, "reason": ""},
        {"hidden": 16, "lr": 1e-2, "status": "ok", "val_accuracy": 0.93, "reason": ""},
        {"hidden": 32, "lr": 1e-3, "status": "ok", "val_accuracy": 0.94, "reason": ""},
        {"hidden": 32, "lr": 1e-2, "status": "failed", "val_accuracy": float("nan"),
         "reason": "diverged: loss nan in epoch 1"},
        {"hidden": 64, "lr": 1e-3, "status": "failed", "reason": "MemoryError: too big"},
    ]
    fig = plot.sweep_heatmap(results)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert {"0.9100", "0.9300", "0.9400"} <= set(texts)
    assert "FAILED\ndiverged" in texts and "FAILED\nMemoryError" in texts
    assert "not run" in texts  # (64, 1e-2) was never tried
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.001", "0.01"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["16", "32", "64"]
    assert "2 failed" in ax.get_title()
    assert_png_drawn(plot.save(fig, tmp_path / "heatmap.png"))


def test_first_layer_weights_from_kernel_and_model(tmp_path):
    model = nnlite.Sequential([nnlite.Input(shape=(28, 28)), nnlite.layers.Flatten(),
                               nnlite.layers.Dense(12, activation="relu"),
                               nnlite.layers.Dense(10, activation="softmax")], seed=0)
    fig = plot.first_layer_weights(model, max_units=9)
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    assert mosaic.shape == (3 * 29 + 1, 3 * 29 + 1)  # 3×3 tiles of 28 pixels, 1-pixel gaps
    assert np.nanmax(np.abs(mosaic)) == pytest.approx(1.0)
    assert_png_drawn(plot.save(fig, tmp_path / "weights.png"))
    kernel = model.layers[1].get_weights()[0]
    fig2 = plot.first_layer_weights(kernel[:, :4], ncols=4)
    assert "4 of 4" in fig2.axes[0].get_title()
    with pytest.raises(ValueError, match="image_shape"):
        plot.first_layer_weights(np.zeros((10, 3)))


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    fig = plot.confusion_matrix(counts=[[3, 1], [0, 4]])
    target = tmp_path / "sub" / "cm.png"
    plot.save(fig, target)
    first = target.read_bytes()
    assert first.startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        plot.save(fig, target, format="no-such-format")
    assert target.read_bytes() == first  # the old file is untouched by a failed save
    assert sorted(p.name for p in target.parent.iterdir()) == ["cm.png"]
    plot.save(fig, tmp_path / "sub" / "cm.svg")
    assert (tmp_path / "sub" / "cm.svg").read_text().lstrip().startswith("<?xml")


def test_import_stays_numpy_only_and_plots_stay_headless(tmp_path):
    code = (
        "import sys, nnlite, nnlite.plot, nnlite.sweep\n"
        "assert 'matplotlib' not in sys.modules, 'import nnlite pulled in matplotlib'\n"
        "from nnlite import plot\n"
        f"plot.save(plot.confusion_matrix([0, 1], [1, 1]), {str(tmp_path / 'x.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'plotting imported pyplot'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.png").stat().st_size > 0
