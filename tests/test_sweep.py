"""nnlite.sweep and ``nnlite sweep``: every combination trains in worker processes; a failing
configuration (divergence, MemoryError, any exception, a dead worker) is recorded with its reason
and the sweep goes on; CSV, markdown and heatmap are written."""

from __future__ import annotations

import csv
import os

import pytest

from nnlite import cli
from nnlite.sweep import build_mlp, markdown_table, resolve_builder, run_sweep


def oom_for_16(hidden, **kwargs):
    """A pluggable builder (resolved by "module:function" in the worker): MemoryError for
    hidden == 16, the normal MLP otherwise."""
    if hidden == 16:
        raise MemoryError(f"cannot allocate a {hidden}-unit layer")
    return build_mlp(hidden=hidden, **kwargs)


def exit_for_16(hidden, **kwargs):
    """Kills its worker process outright for hidden == 16, as the kernel's OOM killer would."""
    if hidden == 16:
        os._exit(3)
    return build_mlp(hidden=hidden, **kwargs)


def assert_png_drawn(path) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert os.path.getsize(path) > 10_000 and float(pixels[..., :3].var()) > 1e-3


def test_sweep_in_worker_processes_records_divergence_and_goes_on(tmp_path):
    # A linear network under SGD has no dead units to stall in: lr=1e10 overflows within a few
    # steps and the loss turns NaN (ReLU nets may instead die and keep a huge finite loss).
    results = run_sweep(hidden=[8, 16], lr=[0.1, 1e10], optimizer="sgd", activation="linear",
                        epochs=1, limit=1000, workers=2, out=tmp_path, verbose=False)
    assert [(r["hidden"], r["lr"]) for r in results] == [(8, 0.1), (8, 1e10), (16, 0.1),
                                                          (16, 1e10)]
    ok = [r for r in results if r["status"] == "ok"]
    failed = [r for r in results if r["status"] == "failed"]
    assert [r["lr"] for r in ok] == [0.1, 0.1] and [r["lr"] for r in failed] == [1e10, 1e10]
    for r in ok:
        assert 0.3 < r["val_accuracy"] <= 1 and 0.3 < r["test_accuracy"] <= 1
        assert r["seconds_per_epoch"] > 0 and r["epochs_run"] == 1
    for r in failed:
        assert r["reason"].startswith("diverged: loss ")
        assert "NonFiniteLossWarning" in r["reason"]
    with open(tmp_path / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["status"] for row in rows] == ["ok", "failed", "ok", "failed"]
    assert rows[1]["reason"].startswith("diverged")
    table = (tmp_path / "sweep.md").read_text()
    assert table.count("\n") == 2 + 4 and "failed: diverged" in table
    assert_png_drawn(tmp_path / "sweep_heatmap.png")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".nnlite-")]


def test_pluggable_builder_memory_error_in_a_worker(tmp_path):
    results = run_sweep(hidden=[8, 16], lr=[0.01], builder=f"{__name__}:oom_for_16", epochs=1,
                        limit=600, workers=1, verbose=False)
    assert [r["status"] for r in results] == ["ok", "failed"]
    assert results[1]["reason"] == "MemoryError: cannot allocate a 16-unit layer"


def test_dead_worker_is_retried_alone_then_recorded(tmp_path):
    results = run_sweep(hidden=[8, 16], lr=[0.01], builder=f"{__name__}:exit_for_16",
                        epochs=1, limit=600, workers=2, verbose=False)
    assert results[0]["status"] == "ok"  # its pool broke too, but its retry succeeded
    assert results[1]["status"] == "failed"
    assert "worker process died" in results[1]["reason"]


def test_in_process_sweep_with_test_builders():
    for builder, reason in (("debug_raise", "RuntimeError: forced failure"),
                            ("debug_oom", "MemoryError: forced out-of-memory")):
        results = run_sweep(hidden=[4, 5], lr=[0.01], builder=builder, limit=300, epochs=1,
                            workers=0, verbose=False)
        assert [r["status"] for r in results] == ["failed", "failed"]
        assert all(r["reason"].startswith(reason) for r in results)


def test_unknown_builder_fails_fast():
    with pytest.raises(ValueError, match="Unknown builder 'cnn'.*'mlp'"):
        run_sweep(builder="cnn", workers=0)
    with pytest.raises(ValueError, match="does not resolve"):
        resolve_builder("nnlite.sweep:no_such_builder")


def test_cli_sweep(tmp_path, capsys):
    rc = cli.main(["sweep", "--hidden", "8", "--lr", "1e-2,1e10", "--optimizer", "sgd",
                   "--activation", "linear", "--epochs", "1", "--limit", "500",
                   "--workers", "0", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| hidden |" in out and "failed: diverged" in out
    assert {"sweep.csv", "sweep.md", "sweep_heatmap.png"} <= set(os.listdir(tmp_path))
    rc = cli.main(["sweep", "--builder", "debug_raise", "--hidden", "8", "--lr", "0.1",
                   "--workers", "0", "--out", str(tmp_path / "all-failed")])
    assert rc == 1
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--lr", "fast"])


def test_markdown_table_aligns_numbers_right():
    table = markdown_table(["model", "accuracy"], [["mlp", "0.97"], ["lstm", "0.985"]])
    assert table.splitlines() == [
        "| model | accuracy |",
        "|:------|---------:|",
        "| mlp   |     0.97 |",
        "| lstm  |    0.985 |",
    ]
    with pytest.raises(ValueError, match="rows of 2 cells"):
        markdown_table(["a", "b"], [["1"]])
