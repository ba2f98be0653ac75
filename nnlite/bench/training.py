"""Training benchmark: each workload on each system, in fresh subprocesses, runs alternated.

Order of work:

1. each nnlite backend other than NumPy is checked against the NumPy backend on every selected
   workload: two ``train_on_batch`` steps from the same initial weights must give the same
   losses and weights (float32 tolerance); this also fills Numba's on-disk cache, so timed runs
   start with a warm cache;
2. for each repetition, for each workload, every system runs once in its own subprocess
   (:mod:`nnlite.bench.worker`), the systems' order rotated each repetition;
3. per workload and system:

       s/epoch      median of all epochs after the first, over repetitions
       first epoch  median over repetitions of the first epoch (upload, compile, tracing)
       samples/s    training samples / s/epoch
       GFLOP/s      needed FLOPs per epoch (see nnlite.bench.workloads) / s/epoch
       % peak       GFLOP/s / the measured GEMM peak (nnlite.bench.kernels.measure_peak):
                    the larger of the peak measured before the runs and again after them, so
                    that a peak measured in a busy moment cannot flatter the fraction
       peak RSS     largest ru_maxrss over repetitions (one fresh process per run)
       nnlite ÷ peer   peer s/epoch / nnlite s/epoch (> 1: nnlite is faster)

and the targets of issue 5 are evaluated (reported, never asserted).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np

from nnlite.bench import systems as S
from nnlite.bench.worker import MARKER
from nnlite.bench.workloads import Workload

LOSS_TOL = 1e-4
WEIGHT_TOL = 1e-4


# -- which systems ------------------------------------------------------------------------------


def _torch_cuda() -> bool:
    """Whether torch sees a CUDA device (asked in a subprocess: importing torch is heavy)."""
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def expand_systems(names: list[str]) -> tuple[list[str], list[str]]:
    """Systems to run and notes on those skipped. "keras" means both jit_compile settings;
    "torch" adds "torch-cuda" when a GPU is usable."""
    from nnlite.bench.kernels import cupy_usable

    out, notes = [], []
    for name in names:
        if name == "keras":
            candidates = ["keras", "keras-xla"]
        elif name == "torch":
            candidates = ["torch"]
            if S.installed("torch")[0] and _torch_cuda():
                candidates.append("torch-cuda")
        else:
            candidates = [name]
        for system in candidates:
            if system not in S.ALL:
                raise ValueError(f"unknown system {system!r}; expected some of "
                                 f"{', '.join(S.NNLITE + ('torch', 'keras'))}")
            ok, why = S.installed(system)
            if ok and system == "cupy":
                ok, why = cupy_usable()
            if not ok:
                notes.append(f"{system} skipped: {why}")
            elif system not in out:
                out.append(system)
    return out, notes


# -- correctness check --------------------------------------------------------------------------


def _two_steps(backend: str, wl: Workload, x, y, seed: int):
    import nnlite

    nnlite.set_backend(backend)
    model = S.build_nnlite(wl, seed)
    model.compile(optimizer=S.nnlite_optimizer(wl), loss="sparse_categorical_crossentropy")
    losses = [float(model.train_on_batch(x, y)) for _ in range(2)]
    return losses, [np.asarray(nnlite.get_backend().to_numpy(w), np.float64)
                    for w in model.get_weights()]


def check_backend(system: str, wl: Workload, x, y, seed: int = 0) -> dict:
    """Two training steps on ``system`` against the NumPy backend, from the same weights."""
    import nnlite

    b = min(wl.batch_size, len(x))
    xb, yb = np.ascontiguousarray(x[:b]), np.asarray(y[:b])
    try:
        ref_losses, ref_w = _two_steps("numpy", wl, xb, yb, seed)
        losses, weights = _two_steps(system, wl, xb, yb, seed)
    finally:
        nnlite.set_backend("numpy")
    loss_err = max(abs(a - r) / max(1.0, abs(r)) for a, r in zip(losses, ref_losses))
    num = math.sqrt(sum(float(np.sum((w - r) ** 2)) for w, r in zip(weights, ref_w)))
    den = math.sqrt(sum(float(np.sum(r ** 2)) for r in ref_w))
    weight_err = num / max(den, 1e-300)
    return {"kind": "check", "workload": wl.name, "system": system, "batch": b,
            "losses": losses, "reference_losses": ref_losses, "loss_rel_err": loss_err,
            "weight_rel_err": weight_err,
            "ok": loss_err <= LOSS_TOL and weight_err <= WEIGHT_TOL}


# -- subprocess runs ----------------------------------------------------------------------------


def worker_env() -> dict:
    """The environment of a worker: this one, with this nnlite first on the path."""
    import nnlite

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(nnlite.__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


# A fresh interpreter forks once before importing anything and the child does the work. On
# Linux a process's ru_maxrss starts from its parent's resident set at exec time (the kernel
# carries the old address space's high-water mark across execve), so a worker exec'd straight
# from this process would report at least this process's memory; the forked child of a fresh
# 10 MB interpreter reports its own.
_LAUNCH = """
import os, sys
if hasattr(os, "fork"):
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
import runpy
sys.argv = ["nnlite.bench.worker"] + sys.argv[1:]
runpy.run_module("nnlite.bench.worker", run_name="__main__", alter_sys=True)
"""


def run_worker(spec: dict, timeout: float) -> dict:
    """Run one spec in a fresh interpreter; returns its result (or an ``error`` record)."""
    cmd = [sys.executable, "-c", _LAUNCH, json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=worker_env())
    except subprocess.TimeoutExpired:
        return {"system": spec["system"], "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    tail = (proc.stderr or proc.stdout)[-2000:]
    return {"system": spec["system"], "error": f"worker exited {proc.returncode}: {tail}"}


def spec_for(system, wl: Workload, epochs, options, data_dir, repeat=0, profile=None) -> dict:
    import dataclasses

    return {"system": system, "workload": dataclasses.asdict(wl), "epochs": epochs,
            "seed": options.seed, "threads": options.threads, "data_dir": data_dir,
            "repeat": repeat, "profile": profile}


# -- aggregation and targets --------------------------------------------------------------------


def aggregate(wl: Workload, system: str, runs: list[dict], peak: float) -> dict:
    """One table row from a system's runs of a workload."""
    ok = [r for r in runs if "error" not in r]
    row = {"kind": "summary", "workload": wl.name, "system": system, "runs": len(ok),
           "errors": [r["error"] for r in runs if "error" in r]}
    if not ok:
        return row
    firsts = [r["epoch_seconds"][0] for r in ok]
    later = [t for r in ok for t in r["epoch_seconds"][1:]]
    seconds = statistics.median(later) if later else statistics.median(firsts)
    gflops = wl.flops_per_epoch() / seconds / 1e9
    row.update({
        "seconds_per_epoch": seconds, "first_epoch_seconds": statistics.median(firsts),
        "first_minus_later": statistics.median(firsts) - seconds,
        "epochs_timed": len(later), "samples_per_second": wl.samples / seconds,
        "gflops": gflops, "fraction_of_peak": gflops / peak, "peak_gflops": peak,
        "test_accuracy": statistics.median(r["test_accuracy"] for r in ok),
        "val_accuracy": statistics.median(r["val_accuracy"] for r in ok),
        "final_loss": statistics.median(r["final_loss"] for r in ok),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        "device": ok[0].get("device"), "details": ok[0].get("details"),
        "load_averages": [r.get("load_average") for r in ok],
    })
    return row


def _peer_for(system: str, rows: dict, family: str):
    """The peer row to compare ``system`` with: same device; Keras: the faster variant."""
    gpu = system == "cupy"
    if family == "torch":
        names = ["torch-cuda"] if gpu else ["torch"]
    else:
        names = ["keras", "keras-xla"]
    found = [rows[n] for n in names if n in rows and "seconds_per_epoch" in rows[n]]
    return min(found, key=lambda r: r["seconds_per_epoch"]) if found else None


#: workload -> (description, peer family or None, threshold); the W3 target is a peak fraction.
SPEED_TARGETS = {
    "W1": ("≥ 3x PyTorch samples/s", "torch", 3.0),
    "W3": ("≥ 55% of GEMM peak", None, 0.55),
    "W4": ("≥ 5x PyTorch samples/s", "torch", 5.0),
    "W5": ("≥ 1.5x Keras samples/s", "keras", 1.5),
    "W6": ("≥ 1.2x PyTorch samples/s", "torch", 1.2),
}
MEMORY_TARGET_MB = 300.0
FIRST_EPOCH_TARGET_S = 1.0


def target_cell(row: dict, rows: dict) -> dict | None:
    """The workload's speed target evaluated for one nnlite row, or None."""
    target = SPEED_TARGETS.get(row["workload"])
    if target is None or "seconds_per_epoch" not in row:
        return None
    text, family, threshold = target
    if family is None:
        value = row["fraction_of_peak"]
        return {"target": text, "value": value, "shown": f"{100 * value:.0f}% of peak",
                "pass": value >= threshold}
    peer = _peer_for(row["system"], rows, family)
    if peer is None:
        return {"target": text, "value": None, "shown": f"no {family} run", "pass": None}
    value = peer["seconds_per_epoch"] / row["seconds_per_epoch"]
    return {"target": text, "value": value, "shown": f"{value:.2f}x {peer['system']}",
            "pass": value >= threshold}


def targets(summary: dict) -> list[dict]:
    """Every target of issue 5, evaluated on the fastest CPU nnlite backend of each workload
    (memory and first epoch: per backend)."""
    out = []
    for name, (text, _, _) in SPEED_TARGETS.items():
        rows = summary.get(name, {})
        cpu = [r for s, r in rows.items() if s in ("numpy", "numba") and "seconds_per_epoch" in r]
        if not cpu:
            continue
        best = min(cpu, key=lambda r: r["seconds_per_epoch"])
        cell = target_cell(best, rows)
        out.append({"kind": "target", "workload": name, "system": best["system"], **cell})
    for system in ("numpy", "numba"):
        row = summary.get("W1", {}).get(system)
        if row and "peak_rss_mb" in row:
            out.append({"kind": "target", "workload": "W1", "system": system,
                        "target": f"peak RSS ≤ {MEMORY_TARGET_MB:.0f} MB",
                        "value": row["peak_rss_mb"], "shown": f"{row['peak_rss_mb']:.0f} MB",
                        "pass": row["peak_rss_mb"] <= MEMORY_TARGET_MB})
    numba = [rows["numba"] for rows in summary.values()
             if "numba" in rows and "first_minus_later" in rows["numba"]]
    if numba:
        worst = max(numba, key=lambda r: r["first_minus_later"])
        out.append({"kind": "target", "workload": "all", "system": "numba",
                    "target": f"first epoch ≤ later + {FIRST_EPOCH_TARGET_S:g} s (warm cache)",
                    "value": worst["first_minus_later"],
                    "shown": f"worst {worst['workload']}: +{worst['first_minus_later']:.2f} s",
                    "pass": worst["first_minus_later"] <= FIRST_EPOCH_TARGET_S})
    return out


def _mark(passed) -> str:
    return "–" if passed is None else ("✅ pass" if passed else "❌ miss")


# -- the part -----------------------------------------------------------------------------------


def run(options, emit, peak: float | None = None) -> dict:
    """The training part; ``emit(record)`` writes each record. Returns the summary.

    ``peak``: the GEMM peak the kernels part measured (measured here when None); it is
    measured again after the runs, and "% peak" divides by the larger of the two.
    """
    from nnlite.bench import kernels, workloads

    data_dir = workloads.prepare_data(options.data_dir, options.quick)
    if peak is None:
        peak_rec = kernels.measure_peak(options.quick)
        emit({"kind": "peak", **peak_rec})
        peak = peak_rec["gflops"]
    gpu_peak = None
    selected, notes = expand_systems(options.system_list())
    for note in notes:
        emit({"kind": "note", "note": note})
    if "cupy" in selected or "torch-cuda" in selected:
        gpu_peak = kernels.measure_gpu_peak(options.quick)["gflops"]
    wls = []
    for wl in options.workload_list():
        if wl.lstm and options.skip_lstm:
            emit({"kind": "note", "note": f"{wl.name} skipped: nnlite.layers.LSTM is missing"})
            continue
        wls.append(wl.quick() if options.quick else wl)
    x_train, y_train = workloads.load(data_dir, "x_train", "y_train", mmap=True)
    checks = {}
    for wl in wls:
        for system in selected:
            if system in ("numba", "cupy"):
                rec = check_backend(system, wl, x_train, y_train, options.seed)
                checks[(wl.name, system)] = rec
                emit(rec)
                _say(options, f"check {wl.name} {system}: "
                     f"{'ok' if rec['ok'] else 'FAILED'} (loss err {rec['loss_rel_err']:.1e}, "
                     f"weight err {rec['weight_rel_err']:.1e})")
    del x_train, y_train
    runs: dict = {}
    timeout = 300 if options.quick else 3600
    for rep in range(options.repeat):
        for wl in wls:
            epochs = options.epochs or wl.epochs
            shift = rep % len(selected)
            for system in selected[shift:] + selected[:shift]:
                result = run_worker(spec_for(system, wl, epochs, options, data_dir, rep),
                                    timeout)
                result.setdefault("workload", wl.name)
                emit({"kind": "run", **{k: v for k, v in result.items() if k != "traceback"}})
                runs.setdefault((wl.name, system), []).append(result)
                _say(options, _run_line(wl, system, rep, result))
    after = kernels.measure_peak(options.quick)
    emit({"kind": "peak", "when": "after training", **after})
    peaks = (peak, after["gflops"])
    peak = max(peaks)
    summary: dict = {}
    for wl in wls:
        for system in selected:
            p = gpu_peak if (system in ("cupy", "torch-cuda") and gpu_peak) else peak
            row = aggregate(wl, system, runs.get((wl.name, system), []), p)
            row["check"] = checks.get((wl.name, system), {}).get("ok")
            summary.setdefault(wl.name, {})[system] = row
    for wl in wls:
        rows = summary[wl.name]
        for system, row in rows.items():
            if system in S.NNLITE and "seconds_per_epoch" in row:
                row["vs_peers"] = {
                    p: prow["seconds_per_epoch"] / row["seconds_per_epoch"]
                    for p, prow in rows.items()
                    if p in S.PEERS and "seconds_per_epoch" in prow}
                row["target"] = target_cell(row, rows)
            emit(row)
    target_rows = targets(summary)
    for rec in target_rows:
        emit(rec)
    if options.profile:
        profile_runs(options, wls, selected, data_dir, emit)
    return {"summary": summary, "targets": target_rows, "workloads": wls, "peak": peak,
            "peaks": peaks, "notes": notes}


def profile_runs(options, wls, selected, data_dir, emit) -> None:
    """One extra cProfile'd run per workload and nnlite backend (timings not used)."""
    for wl in wls:
        for system in selected:
            if system not in S.NNLITE:
                continue
            path = os.path.abspath(os.path.join(options.out, f"profile_{wl.name}_{system}.txt"))
            epochs = min(options.epochs or wl.epochs, 2)
            result = run_worker(spec_for(system, wl, epochs, options, data_dir,
                                         profile=path), 3600)
            emit({"kind": "profile", "workload": wl.name, "system": system, "path": path,
                  "error": result.get("error")})


def _say(options, text: str) -> None:
    if not options.silent:
        print(f"nnlite bench: {text}", flush=True)


def _run_line(wl, system, rep, result) -> str:
    if "error" in result:
        return f"{wl.name} {system} (rep {rep + 1}): ERROR {result['error'][:300]}"
    times = ", ".join(f"{t:.3f}" for t in result["epoch_seconds"])
    return (f"{wl.name} {system} (rep {rep + 1}): epochs [{times}] s, test acc "
            f"{result['test_accuracy']:.4f}, peak RSS {result['peak_rss_mb']:.0f} MB")


def _fmt(value, spec, missing="–"):
    return missing if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The training table, then the targets table."""
    before, after = result["peaks"]
    lines = [
        f"% peak: of {result['peak']:.0f} GFLOP/s, the larger of the float32 GEMM peak measured "
        f"before the runs ({before:.0f}) and after them ({after:.0f}).",
        "",
        "| workload | system | s/epoch | first epoch s | samples/s | GFLOP/s | % peak | "
        "test acc | peak RSS MB | check | nnlite ÷ peer (speed) | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for wl in result["workloads"]:
        rows = result["summary"][wl.name]
        for i, (system, row) in enumerate(rows.items()):
            label = f"{wl.name} {wl.title}<br>{wl.describe()}" if i == 0 else ""
            if "seconds_per_epoch" not in row:
                why = "; ".join(row.get("errors", []))[:120] or "no run"
                lines.append(f"| {label} | {system} | error: {why} |" + " |" * 9)
                continue
            check = {True: "ok", False: "FAIL", None: "ref" if system == "numpy" else "–"}[
                row.get("check")]
            peers = " · ".join(f"{p} {v:.2f}x" for p, v in row.get("vs_peers", {}).items())
            cell = row.get("target")
            target = f"{cell['target']}: {cell['shown']} {_mark(cell['pass'])}" if cell else ""
            lines.append(
                f"| {label} | {system} | {row['seconds_per_epoch']:.3f} | "
                f"{row['first_epoch_seconds']:.3f} | {row['samples_per_second']:,.0f} | "
                f"{row['gflops']:.1f} | {100 * row['fraction_of_peak']:.1f} | "
                f"{row['test_accuracy']:.4f} | {row['peak_rss_mb']:.0f} | {check} | "
                f"{peers} | {target} |")
    lines += ["", "| target | workload | nnlite backend | measured | result |",
              "|---|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['workload']} | {t['system']} | {t['shown']} | "
                     f"{_mark(t['pass'])} |")
    if result.get("notes"):
        lines += [""] + [f"- note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"
