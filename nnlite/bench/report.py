"""Where results go: JSON lines (one self-contained record a line) and markdown.

Every record is the benchmark's own fields plus ``context``: the machine (CPU model, cores,
OpenBLAS core type), library versions, thread counts, dtype, device and the load average when
the record was written (:func:`nnlite.bench.machine.context`).
"""

from __future__ import annotations

import json
import os

from nnlite.bench import machine


class Writer:
    """Appends records to ``<out>/<part>.jsonl`` (the file is started afresh per run)."""

    def __init__(self, out: str, part: str, dtype: str = "float32", device: str = "cpu",
                 command: str | None = None, verbose: bool = True):
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, f"{part}.jsonl")
        self.part = part
        self.verbose = verbose
        self.base = machine.context(dtype, device)
        self.base["command"] = command
        self.records: list[dict] = []
        self._file = open(self.path, "w", encoding="utf-8")

    def emit(self, record: dict) -> None:
        """Write ``record`` with the context (fresh load average and thread counts)."""
        context = dict(self.base, load_average=machine.load_average(),
                       threads=machine.thread_counts())
        line = {"part": self.part, **record, "context": context}
        self.records.append(record)
        self._file.write(json.dumps(line, default=_json_default) + "\n")
        self._file.flush()
        if self.verbose and record.get("kind") == "note":
            print(f"nnlite bench: note: {record['note']}", flush=True)

    def close(self) -> None:
        self._file.close()


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def header(command: str, context: dict) -> str:
    """Markdown lines naming the machine, versions, threads and load for a report."""
    m, v, t = context["machine"], context["versions"], context["threads"]
    blas = ", ".join(" ".join(str(b[k]) for k in ("internal_api", "version", "architecture")
                              if b.get(k)) + f" ({b['num_threads']} threads)"
                     for b in m["blas"]) or "unknown"
    versions = ", ".join(f"{k} {v[k]}" for k in ("numpy", "numba", "torch", "tensorflow-cpu",
                                                   "tensorflow", "keras", "cupy-cuda12x")
                         if v.get(k))
    load = context.get("load_average")
    cores = m.get("logical_cores") or 1
    busy = []
    if load and load[0] > cores:
        busy = [f"- **busy machine**: load average {load[0]} on {cores} cores at the start; "
                "timings are inflated and noisy (each record keeps the load at its time)"]
    return "\n".join([
        f"Command: `{command}`",
        "",
        f"- machine: {m['cpu_model']}, {m['logical_cores']} logical / "
        f"{m['physical_cores']} physical cores, {m.get('memory_gb')} GB",
        f"- BLAS: {blas}",
        f"- versions: python {v['python']}, {versions}",
        f"- threads: nnlite --threads {t.get('nnlite_threads')}, BLAS {t.get('blas')}, "
        f"Numba {t.get('numba', '-')}",
        f"- dtype {context['dtype']}, device {context['device']}, load average at start "
        f"{load} (1/5/15 min)",
        *busy,
        "",
    ])
