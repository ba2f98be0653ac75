"""Pick OpenBLAS's AVX-512 kernels on AMD CPUs that have AVX-512 (Zen 4, Zen 5).

OpenBLAS's runtime CPU detection does not recognise recent AMD cores and falls back to its
Haswell (AVX2) kernels, which reach about half of the machine's float32 GEMM peak there
(measured on a Zen 5 EPYC: ~230 against ~460 GFLOP/s). Its SkylakeX kernels need exactly the
AVX-512 subsets these cores have (F, CD, BW, DQ, VL). The choice is read once, when NumPy loads
OpenBLAS, from the ``OPENBLAS_CORETYPE`` environment variable, so it must be set before NumPy is
imported: nnlite sets it on import when NumPy is not loaded yet, the CPU qualifies and the user
has not set it. If you import NumPy before nnlite, export ``OPENBLAS_CORETYPE=SkylakeX`` in the
shell instead (``nnlite bench`` reports which kernels OpenBLAS uses).
"""

from __future__ import annotations

import os
import sys

_AVX512_FLAGS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read(1 << 16)
    except OSError:
        return "", set()
    vendor, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if vendor and flags:
            break
    return vendor, flags


def prefer_avx512_blas() -> str | None:
    """Set ``OPENBLAS_CORETYPE=SkylakeX`` when it helps and is safe; return what was set."""
    if "numpy" in sys.modules or "OPENBLAS_CORETYPE" in os.environ:
        return None
    if not sys.platform.startswith("linux"):
        return None
    vendor, flags = _cpuinfo()
    if vendor == "AuthenticAMD" and _AVX512_FLAGS <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
        return "SkylakeX"
    return None
