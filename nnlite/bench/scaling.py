"""Scaling benchmark: seconds per epoch against batch size and against hidden width.

    batch sweep   784-50-50-10 relu, Adam 1e-3, batch 1 ... 54,000
    width sweep   784-W-W-10 relu, Adam 1e-3, batch 128, W = 16 ... 4096

Each system (every selected nnlite backend, and PyTorch when selected and installed; Keras is
left out: its per-epoch overhead would dominate the small points) runs both sweeps in one fresh
subprocess. A point trains 2 to 4 epochs and keeps the median of the epochs after the first.

Small batches and wide layers would take minutes per epoch, so those points train on a subset
of the 54,000 samples and the epoch time is **extrapolated**: seconds per sample on the subset
× 54,000. Such points are flagged ``extrapolated`` in the JSON, drawn hollow in the plots and
marked "(extrap.)" in the table.
"""

from __future__ import annotations

import dataclasses
import os
import statistics

from nnlite.bench import systems as S
from nnlite.bench.workloads import QUICK_TRAIN, TRAIN, Workload

BATCHES = (1, 4, 16, 64, 256, 1024, 4096, 16384, TRAIN)
QUICK_BATCHES = (1, 16, 128, QUICK_TRAIN)
WIDTHS = (16, 64, 256, 1024, 4096)
QUICK_WIDTHS = (16, 64)
#: FLOPs one width point trains per epoch at most (the subset is chosen to fit).
WIDTH_BUDGET_FLOPS = 1e11


def _epochs(samples: int, batch: int) -> int:
    return 2 if samples // batch >= 50 else 4


def batch_points(quick: bool) -> list[Workload]:
    points = []
    for b in (QUICK_BATCHES if quick else BATCHES):
        samples = QUICK_TRAIN if quick else min(TRAIN, max(5000, 200 * b))
        if samples < TRAIN and not quick:
            samples -= samples % b  # whole batches only on a subset
        points.append(Workload(f"batch {b}", "batch sweep", hidden=(50, 50), batch_size=b,
                               samples=samples, epochs=_epochs(samples, b)))
    return points


def width_points(quick: bool) -> list[Workload]:
    points = []
    for w in (QUICK_WIDTHS if quick else WIDTHS):
        wl = Workload(f"width {w}", "width sweep", hidden=(w, w), batch_size=128)
        if quick:
            samples = QUICK_TRAIN
        else:
            samples = int(WIDTH_BUDGET_FLOPS / wl.flops_per_sample())
            samples = min(TRAIN, max(2048, samples - samples % 128))
        points.append(dataclasses.replace(wl, samples=samples,
                                          epochs=_epochs(samples, wl.batch_size)))
    return points


def run(options, emit) -> dict:
    """Both sweeps for every selected system; returns the records."""
    from nnlite.bench import workloads
    from nnlite.bench.training import run_worker

    data_dir = workloads.prepare_data(options.data_dir, options.quick)
    selected = []
    for name in options.system_list():
        if name in ("keras", "keras-xla"):
            emit({"kind": "note", "note": "scaling: Keras left out (per-epoch overhead)"})
            continue
        if name not in S.NNLITE + ("torch",):
            continue
        ok, why = S.installed(name)
        if ok and name == "cupy":
            from nnlite.bench.kernels import cupy_usable

            ok, why = cupy_usable()
        if ok:
            selected.append(name)
        else:
            emit({"kind": "note", "note": f"scaling: {name} skipped: {why}"})
    reference = QUICK_TRAIN if options.quick else TRAIN
    records = []
    points = [("batch", p) for p in batch_points(options.quick)]
    points += [("width", p) for p in width_points(options.quick)]
    by_label = {p.name: (axis, p) for axis, p in points}
    for system in selected:
        spec = {"system": system, "points": [dataclasses.asdict(p) for _, p in points],
                "data_dir": data_dir, "seed": options.seed, "threads": options.threads}
        result = run_worker(spec, 600 if options.quick else 3600)
        if "error" in result:
            emit({"kind": "note", "note": f"scaling {system}: {result['error']}"})
            continue
        for point in result["points"]:
            axis, wl = by_label[point["label"]]
            rec = {"kind": "scaling", "axis": axis, "system": system,
                   "value": wl.batch_size if axis == "batch" else wl.hidden[0],
                   "samples": wl.samples, "batch_size": wl.batch_size,
                   "hidden": list(wl.hidden), "extrapolated": wl.samples < reference}
            if "error" in point:
                rec["error"] = point["error"]
            else:
                later = point["epoch_seconds"][1:] or point["epoch_seconds"]
                measured = statistics.median(later)
                rec.update({
                    "seconds_measured": measured,
                    "seconds_per_epoch": measured * reference / wl.samples,
                    "samples_per_second": wl.samples / measured,
                    "gflops": wl.flops_per_epoch() / measured / 1e9,
                })
            emit(rec)
            records.append(rec)
        if not options.silent:
            print(f"nnlite bench: scaling {system} done", flush=True)
    plots = plot(records, options.out, options.quick)
    for path in plots:
        emit({"kind": "plot", "path": path})
    return {"records": records, "plots": plots, "reference": reference}


def plot(records: list[dict], out: str, quick: bool = False) -> list[str]:
    """``scaling_batch.png`` and ``scaling_width.png`` under ``out`` (matplotlib, lazily)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    reference = QUICK_TRAIN if quick else TRAIN
    titles = {"batch": ("batch size", "784-50-50-10, Adam"),
              "width": ("hidden width W", "784-W-W-10, Adam, batch 128")}
    for axis, (xlabel, arch) in titles.items():
        recs = [r for r in records if r["axis"] == axis and "seconds_per_epoch" in r]
        if not recs:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
        for i, system in enumerate(dict.fromkeys(r["system"] for r in recs)):
            pts = sorted((r["value"], r["seconds_per_epoch"], r["extrapolated"])
                         for r in recs if r["system"] == system)
            color = f"C{i}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=color, label=system)
            for x, y, extra in pts:
                ax.plot([x], [y], "o", color=color, markerfacecolor="white" if extra else color)
        ax.set_xscale("log", base=2 if axis == "width" else 10)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"seconds per epoch ({reference:,} samples)")
        ax.set_title(f"nnlite scaling: {arch}\nhollow: extrapolated from a subset", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out, f"scaling_{axis}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def markdown(result: dict) -> str:
    """One table per axis: s/epoch per system at each point."""
    lines = []
    for axis, name in (("batch", "batch size"), ("width", "hidden width")):
        recs = [r for r in result["records"] if r["axis"] == axis]
        if not recs:
            continue
        systems = list(dict.fromkeys(r["system"] for r in recs))
        values = sorted(dict.fromkeys(r["value"] for r in recs))
        lines += [f"Seconds per epoch ({result['reference']:,} samples) against {name}:", "",
                  f"| {name} | " + " | ".join(systems) + " |",
                  "|---|" + "---|" * len(systems)]
        for v in values:
            cells = []
            for s in systems:
                r = next((r for r in recs if r["system"] == s and r["value"] == v), None)
                if r is None or "seconds_per_epoch" not in r:
                    cells.append("–")
                else:
                    mark = " (extrap.)" if r["extrapolated"] else ""
                    cells.append(f"{r['seconds_per_epoch']:.3g}{mark}")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    for path in result.get("plots", []):
        name = os.path.basename(path)
        lines.append(f"![{name[:-4].replace('_', ' ')}]({name})")
    return "\n".join(lines) + "\n"
