"""Benchmarks of nnlite against its own reference backend and against PyTorch and Keras.

Three parts, each runnable alone (``nnlite bench kernels|training|scaling``, or the thin scripts in
``benchmarks/``), each writing JSON lines (``<part>.jsonl``) and a markdown table (``<part>.md``)
to ``--out`` (default ``out/bench``):

- ``kernels`` (:mod:`nnlite.bench.kernels`): float32 GEMM at the workloads' shapes and at 4096³
  (NumPy's BLAS, the Numba blocked kernel, cuBLAS when CuPy has a GPU) in GFLOP/s and as a
  fraction of the measured GEMM peak; each fused Numba kernel against its unfused NumPy form;
- ``training`` (:mod:`nnlite.bench.training`): the workloads W1-W6 (:mod:`nnlite.bench.workloads`)
  on every installed nnlite backend and on PyTorch and Keras when installed, each run in a fresh
  subprocess (:mod:`nnlite.bench.worker`) so its peak RSS is comparable, runs alternated;
- ``scaling`` (:mod:`nnlite.bench.scaling`): seconds per epoch against batch size and hidden
  width, per backend, with PNG plots.

Every record carries the machine, library versions, thread counts, dtype, device and the load
average (:mod:`nnlite.bench.machine`). Nothing here is imported by ``import nnlite``; PyTorch,
TensorFlow, Numba, CuPy and matplotlib are imported only by the part that needs them.
"""

from __future__ import annotations

__all__ = ["main", "PARTS"]

PARTS = ("kernels", "training", "scaling")


def main(argv=None) -> int:
    """Run ``nnlite bench`` with ``argv`` (see :func:`nnlite.bench.cli.build_parser`)."""
    from nnlite.bench.cli import main as _main

    return _main(argv)
