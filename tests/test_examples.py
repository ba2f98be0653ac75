"""Every script in examples/ runs in --quick mode, prints a markdown table and writes non-blank
PNGs to --out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES = {
    "tf1_two_layer_gd.py": ["tf1_two_layer_gd_curves.png"],
    "keras_exercises.py": ["keras_exercises_curves.png"],
    "sgd_vs_adam.py": ["sgd_vs_adam_curves.png", "sgd_vs_adam_confusion.png"],
    "mnist_98_5.py": ["mnist_98_5_curves.png", "mnist_98_5_confusion.png",
                      "mnist_98_5_errors.png", "mnist_98_5_weights.png"],
    "backprop_walkthrough.py": ["backprop_digits.png", "backprop_w1.png"],
    "lstm_grid.py": ["sweep_heatmap.png", "lstm_grid_test_accuracy.png"],
}


def assert_png_drawn(path: Path) -> None:
    """Larger than a blank figure's PNG of the same size, and pixels that vary."""
    import matplotlib.image
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    blank = Figure(figsize=(width / 100, height / 100))
    FigureCanvasAgg(blank)
    blank_path = path.with_name(".blank.png")
    blank.savefig(blank_path, dpi=100)
    assert path.stat().st_size > blank_path.stat().st_size, path.name
    blank_path.unlink()
    assert float(pixels[..., :3].var()) > 1e-3, path.name


def run_example(script: str, out: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(out),
                           *args], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CASES)


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_quick_run(script, tmp_path):
    stdout = run_example(script, tmp_path)
    lines = stdout.splitlines()
    assert any(line.startswith("|") and set(line) <= set("|:- ") for line in lines), stdout
    for name in CASES[script]:
        assert_png_drawn(tmp_path / name)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers
    if script == "mnist_98_5.py":
        assert "Wall time:" in stdout and "Test accuracy:" in stdout
    if script == "backprop_walkthrough.py":  # exits 1 on a mismatch, too
        assert "MISMATCH" not in stdout
        for name in ("dz2", "dh", "dW2", "db2", "dW1", "db1"):
            assert f"| {name} " in stdout
