"""The benchmark harness (``nnlite bench``): smoke runs in --quick mode, FLOP counts, targets.

No test asserts a timing: the machine may be busy. The smoke test runs every part (kernels,
training on the NumPy and Numba backends with the correctness check, scaling) on tiny sizes and
checks what they write: JSON lines with their context, markdown tables and the plots.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from nnlite import cli
from nnlite.bench import cli as bench_cli
from nnlite.bench import systems, training, workloads
from nnlite.bench.workloads import WORKLOADS

HAS_NUMBA = importlib.util.find_spec("numba") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``nnlite bench --quick`` over every part (numpy and numba; W1, W5, W6)."""
    out = tmp_path_factory.mktemp("bench")
    backends = "numpy,numba" if HAS_NUMBA else "numpy"
    status = cli.main(["bench", "--quick", "--out", str(out), "--systems", backends,
                       "--workloads", "W1,W5,W6"])
    return status, out


def test_quick_run_succeeds_and_writes_every_file(quick_run):
    status, out = quick_run
    assert status == 0
    for part in ("kernels", "training", "scaling"):
        assert (out / f"{part}.jsonl").stat().st_size > 0
        assert (out / f"{part}.md").stat().st_size > 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## kernels" in report and "## training" in report and "## scaling" in report
    assert "Command: `nnlite bench --workloads W1,W5,W6 --systems numpy" in report
    assert "--quick`" in report
    if HAS_MPL:
        for axis in ("batch", "width"):
            png = out / f"scaling_{axis}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_records_carry_their_context(quick_run):
    _, out = quick_run
    for part in ("kernels", "training", "scaling"):
        for rec in read_jsonl(out / f"{part}.jsonl"):
            ctx = rec["context"]
            assert ctx["machine"]["cpu_model"] and ctx["machine"]["logical_cores"] >= 1
            assert ctx["versions"]["numpy"] == np.__version__
            assert ctx["dtype"] == "float32" and ctx["device"]
            assert "blas" in ctx["threads"] and "load_average" in ctx
            assert isinstance(ctx["machine"]["blas"], list)


def test_kernels_part_checks_every_result(quick_run):
    _, out = quick_run
    recs = read_jsonl(out / "kernels.jsonl")
    peak = [r for r in recs if r["kind"] == "peak"]
    assert peak and peak[0]["gflops"] > 0
    gemms = [r for r in recs if r["kind"] == "gemm"]
    impls = {r["impl"] for r in gemms}
    assert "blas" in impls and ("numba-blocked" in impls) == HAS_NUMBA
    # The packed kernel, at the shapes the engine runs it only: W6's step and dh products, and
    # the Dense forward products of 32 to 256 rows into at least 32 columns.
    packed = {r["label"] for r in gemms if r["impl"] == "numba-packed"}
    if HAS_NUMBA:
        lstm = {r["label"] for r in gemms if "LSTM step" in r["label"] or "LSTM dh" in r["label"]}
        dense = {r["label"] for r in gemms if "fwd x·W" in r["label"] and 32 <= r["m"] <= 256
                 and r["n"] >= 32}
        assert {label.split(" ", 1)[1] for label in lstm} == {"LSTM step xh·θ", "LSTM dh dz·Rᵀ"}
        assert dense and packed == lstm | dense
    else:
        assert packed == set()
    assert any(r["label"].startswith("square") for r in gemms)
    assert all(r["ok"] and r["gflops"] > 0 and r["fraction_of_peak"] > 0 for r in gemms)
    fused = [r for r in recs if r["kind"] == "fused"]
    if HAS_NUMBA:
        kernels = {r["kernel"] for r in fused}
        assert {"bias+relu forward", "relu backward+bias", "softmax xent",
                "adam update", "lstm cell forward", "lstm cell backward"} <= kernels
        assert any(k.startswith("dense stack step W") for k in kernels)
        assert all(r["ok"] for r in fused), [r for r in fused if not r["ok"]]


def test_training_part_checks_backends_and_summarises(quick_run):
    _, out = quick_run
    recs = read_jsonl(out / "training.jsonl")
    checks = [r for r in recs if r["kind"] == "check"]
    if HAS_NUMBA:
        assert {r["workload"] for r in checks} == {"W1", "W5", "W6"}
        assert all(r["ok"] and r["system"] == "numba" for r in checks)
    runs = [r for r in recs if r["kind"] == "run"]
    assert runs and all("error" not in r for r in runs), [r.get("error") for r in runs]
    for r in runs:
        assert len(r["epoch_seconds"]) == 2 and all(t > 0 for t in r["epoch_seconds"])
        assert 0 <= r["test_accuracy"] <= 1 and r["peak_rss_mb"] > 0
        # Each run is its own fresh process: far below this test process's memory.
        assert r["peak_rss_mb"] < 1000
    rows = [r for r in recs if r["kind"] == "summary"]
    assert {(r["workload"], r["system"]) for r in rows} >= {("W1", "numpy"), ("W6", "numpy")}
    for r in rows:
        assert r["samples_per_second"] > 0 and r["gflops"] > 0 and r["first_epoch_seconds"] > 0
    targets = [r for r in recs if r["kind"] == "target"]
    assert any(t["target"].startswith("peak RSS") for t in targets)
    table = (out / "training.md").read_text(encoding="utf-8")
    assert "| target |" in table and "W6 LSTM" in table
    # "% peak" divides by the larger of the kernels part's peak and one measured after the runs.
    before = next(r for r in read_jsonl(out / "kernels.jsonl")
                  if r["kind"] == "peak" and "device" not in r)
    after = [r for r in recs if r["kind"] == "peak" and r.get("when") == "after training"]
    assert len(after) == 1 and after[0]["gflops"] > 0
    used = max(before["gflops"], after[0]["gflops"])
    assert rows and all(r["peak_gflops"] == used for r in rows)
    assert f"of {used:.0f} GFLOP/s" in table


def test_scaling_part_covers_both_axes(quick_run):
    _, out = quick_run
    recs = [r for r in read_jsonl(out / "scaling.jsonl") if r["kind"] == "scaling"]
    assert {r["axis"] for r in recs} == {"batch", "width"}
    assert all("error" not in r and r["seconds_per_epoch"] > 0 for r in recs)
    assert not any(r["extrapolated"] for r in recs)  # quick mode trains every point fully


# -- pieces, without subprocesses ---------------------------------------------------------------


def test_flop_counts_follow_the_issue():
    # W1: forward 2·(784·50 + 50·50 + 50·10), dW the same, dX without the first layer's.
    fwd = 2 * (784 * 50 + 50 * 50 + 50 * 10)
    assert WORKLOADS["W1"].flops_per_sample() == fwd + fwd + 2 * (50 * 50 + 50 * 10)
    fwd3 = 2 * (784 * 1024 + 1024 * 1024 + 1024 * 10)
    assert WORKLOADS["W3"].flops_per_sample() == 2 * fwd3 + 2 * (1024 * 1024 + 1024 * 10)
    assert WORKLOADS["W3"].flops_per_epoch() == 54_000 * WORKLOADS["W3"].flops_per_sample()
    u, t, d = 128, 28, 28
    lstm = 2 * t * 2 * d * 4 * u + 3 * (t - 1) * 2 * u * 4 * u + 3 * 2 * u * 10
    assert WORKLOADS["W6"].flops_per_sample() == lstm
    assert WORKLOADS["W4"].samples == 5_000 and WORKLOADS["W5"].batch_size == 54_000


def test_quick_workloads_are_tiny():
    for wl in WORKLOADS.values():
        q = wl.quick()
        assert q.samples <= workloads.QUICK_TRAIN and max(q.hidden, default=0) <= 32
        assert q.batch_size <= q.samples and q.lstm <= 8


def test_gemm_shapes_name_the_transposes():
    labels = [s[0] for s in WORKLOADS["W1"].gemm_shapes()]
    assert labels[0] == "W1 L1 fwd x·W" and "W1 L1 dX dz·Wᵀ" not in labels
    assert "W1 L2 dX dz·Wᵀ" in labels


def test_options_are_validated(capsys):
    with pytest.raises(SystemExit):
        bench_cli.build_parser().parse_args(["--workloads", "W9"])
    with pytest.raises(SystemExit):
        bench_cli.build_parser().parse_args(["--systems", "jax"])
    args = bench_cli.build_parser().parse_args(["training", "--workloads", "W1,W3",
                                                "--systems", "numba,torch", "--threads", "1"])
    assert args.parts == ["training"] and args.workloads == ["W1", "W3"]
    assert args.systems == ["numba", "torch"] and args.threads == 1
    with pytest.raises(SystemExit):
        bench_cli.main(["nonsense", "--out", "/nonexistent/never"])


def test_missing_peers_are_skipped_with_a_note(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "tensorflow") else
                        real(name, *a))
    selected, notes = training.expand_systems(["numpy", "torch", "keras"])
    assert selected == ["numpy"]
    assert any(n.startswith("torch skipped") for n in notes)
    assert any(n.startswith("keras skipped") for n in notes)
    assert any(n.startswith("keras-xla skipped") for n in notes)


def _row(wl, system, seconds, frac=0.1, rss=100.0, first=None):
    return {"workload": wl, "system": system, "seconds_per_epoch": seconds,
            "fraction_of_peak": frac, "peak_rss_mb": rss,
            "first_minus_later": (first or seconds) - seconds}


def test_targets_pass_and_miss():
    summary = {
        "W1": {"numpy": _row("W1", "numpy", 2.0, rss=250), "numba": _row("W1", "numba", 1.0,
                                                                           rss=350, first=1.5),
               "torch": _row("W1", "torch", 4.0)},
        "W3": {"numba": _row("W3", "numba", 1.0, frac=0.6)},
        "W5": {"numba": _row("W5", "numba", 1.0), "keras": _row("W5", "keras", 3.0),
               "keras-xla": _row("W5", "keras-xla", 1.2)},
    }
    got = {(t["workload"], t["system"], t["target"].split()[0]): t
           for t in training.targets(summary)}
    w1 = got[("W1", "numba", "≥")]
    assert w1["value"] == pytest.approx(4.0) and w1["pass"]
    assert got[("W3", "numba", "≥")]["pass"]
    # Keras: compared with its faster variant (1.2 s), so 1.2x < 1.5x misses.
    w5 = got[("W5", "numba", "≥")]
    assert w5["value"] == pytest.approx(1.2) and not w5["pass"]
    assert got[("W1", "numpy", "peak")]["pass"] and not got[("W1", "numba", "peak")]["pass"]
    assert got[("all", "numba", "first")]["pass"]


def test_check_backend_compares_with_numpy(mnist_small):
    if not HAS_NUMBA:
        pytest.skip("numba is not installed")
    (x, y), _ = mnist_small
    rec = training.check_backend("numba", WORKLOADS["W1"].quick(), x, y.astype(np.int64))
    assert rec["ok"] and rec["loss_rel_err"] <= training.LOSS_TOL
    assert rec["losses"][1] != rec["losses"][0]  # the second step saw the first's update


def test_torch_peer_trains_when_installed(mnist_small):
    pytest.importorskip("torch")
    (x, y), _ = mnist_small
    wl = WORKLOADS["W1"].quick()
    result, predict = systems.train("torch", wl, {"x_train": x, "y_train": y.astype(np.int64)},
                                    epochs=2)
    assert len(result["epoch_seconds"]) == 2 and np.isfinite(result["final_loss"])
    probs = predict(x[:50])
    assert probs.shape == (50, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_keras_peer_trains_when_installed(mnist_small):
    pytest.importorskip("tensorflow")
    (x, y), _ = mnist_small
    wl = WORKLOADS["W1"].quick()
    for system in ("keras", "keras-xla"):
        result, predict = systems.train(system, wl, {"x_train": x,
                                                     "y_train": y.astype(np.int64)}, epochs=2)
        assert len(result["epoch_seconds"]) == 2
        assert predict(x[:10]).shape == (10, 10)
