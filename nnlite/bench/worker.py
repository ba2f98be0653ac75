"""One measured run in a fresh process: ``python -m nnlite.bench.worker SPEC_JSON``.

The training benchmark starts one of these per system, workload and repetition, so that each
run's peak RSS (``ru_maxrss``) holds only that system: its imports, the data, its model and its
working memory. The run:

1. loads the training and validation arrays (float32, in memory);
2. trains (:func:`nnlite.bench.systems.train`), timing each epoch;
3. computes the validation accuracy, frees the training arrays, loads the test set and computes
   the test accuracy;
4. prints one line ``NNLITE-BENCH-RESULT {json}`` with the timings, accuracies, peak RSS (after
   the imports and data, after training, at the end), thread counts and the load average.

With ``"profile": PATH`` in the spec, training runs under cProfile and the statistics (sorted by
own time and by cumulative time) are written to PATH; such a run's timings are not used.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import traceback

MARKER = "NNLITE-BENCH-RESULT "


def _workload(fields: dict):
    from nnlite.bench.workloads import Workload

    return Workload(**{**fields, "hidden": tuple(fields["hidden"])})


def run_points(spec: dict) -> dict:
    """Scaling: train each workload in ``spec["points"]`` in turn (one system, one process)."""
    from nnlite.bench import machine, systems, workloads

    x_train, y_train = workloads.load(spec["data_dir"], "x_train", "y_train")
    data = {"x_train": x_train, "y_train": y_train}
    points = []
    for fields in spec["points"]:
        wl = _workload(fields)
        try:
            result, _ = systems.train(spec["system"], wl, data, fields["epochs"],
                                      spec.get("seed", 0), spec.get("threads"))
            points.append({"label": wl.name, "epoch_seconds": result["epoch_seconds"]})
        except Exception as exc:  # e.g. out of memory at one size: record it and go on
            points.append({"label": wl.name, "error": f"{type(exc).__name__}: {exc}"})
    return {"system": spec["system"], "points": points, "peak_rss_mb": machine.peak_rss_mb(),
            "threads": machine.thread_counts(), "load_average": machine.load_average()}


def run(spec: dict) -> dict:
    from nnlite.bench import machine, systems, workloads

    if "points" in spec:
        return run_points(spec)
    wl = _workload(spec["workload"])
    t0 = time.perf_counter()
    x_train, y_train, x_val, y_val = workloads.load(spec["data_dir"], "x_train", "y_train",
                                                    "x_val", "y_val")
    data = {"x_train": x_train, "y_train": y_train}
    del x_train, y_train
    rss_data = machine.peak_rss_mb()
    load_seconds = time.perf_counter() - t0
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    result, predict = systems.train(spec["system"], wl, data, spec["epochs"], spec.get("seed", 0),
                                    spec.get("threads"))
    if profiler is not None:
        profiler.disable()
        _write_profile(profiler, spec["profile"])
    rss_train = machine.peak_rss_mb()
    result["val_accuracy"] = systems.accuracy(predict(x_val), y_val)
    data.clear()
    del x_val, y_val
    gc.collect()
    x_test, y_test = workloads.load(spec["data_dir"], "x_test", "y_test")
    result["test_accuracy"] = systems.accuracy(predict(x_test), y_test)
    result.update({
        "system": spec["system"], "workload": wl.name, "samples": wl.samples,
        "batch_size": wl.batch_size, "epochs": spec["epochs"], "repeat": spec.get("repeat", 0),
        "data_load_seconds": load_seconds,
        "rss_after_data_mb": rss_data, "rss_after_training_mb": rss_train,
        "peak_rss_mb": machine.peak_rss_mb(), "vm_hwm_mb": machine.hwm_mb(),
        "threads": machine.thread_counts(), "load_average": machine.load_average(),
    })
    return result


def _write_profile(profiler, path: str) -> None:
    import io
    import pstats

    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(35)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.getvalue())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    try:
        result = run(spec)
    except Exception as exc:  # reported to the parent, which records the failure and goes on
        result = {"system": spec.get("system"), "workload": spec.get("workload", {}).get("name"),
                  "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    print(MARKER + json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
