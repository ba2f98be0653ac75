"""What a benchmark ran on: CPU, cores, BLAS kernels, library versions, threads, load.

Every JSON line the benchmarks write starts from :func:`context`, so a number can always be read
together with the machine, the versions and how busy the machine was (``load_average``: the
1, 5 and 15 minute load averages from ``os.getloadavg``; on a 2-core machine anything above 2
means other work competed for the cores).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

#: Distributions whose versions are recorded (read from package metadata: nothing is imported).
PACKAGES = ("nnlite", "numpy", "numba", "torch", "tensorflow", "tensorflow-cpu", "keras",
            "cupy-cuda12x", "cupy", "threadpoolctl", "matplotlib")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in ``/proc/cpuinfo``; None when unknown."""
    cores, phys = set(), None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    cores.add((phys, value.strip()))
    except OSError:
        return None
    return len(cores) or None


def versions() -> dict:
    """Installed versions of the libraries that matter here (None: not installed)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def blas_info() -> list[dict]:
    """The BLAS/OpenMP pools NumPy (and anything else loaded) uses, via threadpoolctl.

    ``architecture`` is OpenBLAS's core type: which kernels it runs (e.g. SkylakeX, Haswell).
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "version", "architecture", "num_threads", "prefix")
    return [{k: info.get(k) for k in keys} for info in threadpool_info()]


def thread_counts() -> dict:
    """Thread counts of the pools loaded in this process (and the nnlite setting)."""
    from nnlite import config

    out = {"nnlite_threads": config.threads(), "cpu_count": os.cpu_count()}
    try:
        out["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        out["affinity"] = None
    out["blas"] = [info["num_threads"] for info in blas_info() if info["user_api"] == "blas"]
    numba = sys.modules.get("numba")
    if numba is not None:
        out["numba"] = numba.get_num_threads()
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.get_num_threads()
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        out["tf_intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        out["tf_inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    return out


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, rounded; None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    """CPU model, cores, memory and BLAS kernels of this machine."""
    info = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "platform": platform.platform(),
        "blas": blas_info(),
        "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE"),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gb"] = None
    return info


def context(dtype: str = "float32", device: str = "cpu") -> dict:
    """The fields every benchmark record starts from."""
    return {
        "machine": machine(),
        "versions": versions(),
        "threads": thread_counts(),
        "dtype": dtype,
        "device": device,
        "load_average": load_average(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (``ru_maxrss``)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def hwm_mb() -> float | None:
    """Peak resident set of this address space (``VmHWM`` in /proc/self/status), in MB."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None
