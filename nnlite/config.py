"""Global settings, named as in ``keras.config``: the default float type and the fuzz factor.

Example:
    >>> import nnlite
    >>> nnlite.config.set_floatx("float64")
    >>> nnlite.config.floatx()
    'float64'
    >>> nnlite.config.set_floatx("float32")
"""

from __future__ import annotations

import contextlib

_FLOATX = "float32"
_EPSILON = 1e-7
_VALID_FLOATX = ("float32", "float64")
_THREADS: int | None = None
_BLAS_LIMITER = None


def floatx() -> str:
    """Return the default float type of new parameters and of model inputs ("float32")."""
    return _FLOATX


def set_floatx(value: str) -> None:
    """Set the default float type.

    Args:
        value: "float32" (the default) or "float64" (for gradient checks and exact comparisons).

    Raises:
        ValueError: for any other value.
    """
    global _FLOATX
    value = str(value)
    if value not in _VALID_FLOATX:
        raise ValueError(
            f"set_floatx: expected `value` to be one of {list(_VALID_FLOATX)}, received {value!r}"
        )
    _FLOATX = value


def epsilon() -> float:
    """Return the fuzz factor used to clip probabilities in cross-entropies (1e-7, as Keras)."""
    return _EPSILON


def set_epsilon(value: float) -> None:
    """Set the fuzz factor returned by :func:`epsilon`."""
    global _EPSILON
    _EPSILON = float(value)


def threads() -> int | None:
    """The thread count set by :func:`set_threads` (None: the libraries' own defaults)."""
    return _THREADS


def set_threads(count: int | None) -> None:
    """Set how many threads BLAS and Numba kernels use.

    On a small machine shared with other work, one thread per library is often fastest for
    small models: BLAS threads spin while they wait and compete with Numba's. ``None`` restores
    the libraries' defaults.

    Args:
        count: a positive thread count, or None.

    Raises:
        ValueError: for a count below 1.
    """
    global _THREADS, _BLAS_LIMITER
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ValueError(f"set_threads: expected a positive int or None, received {count!r}")
    _THREADS = count
    from threadpoolctl import threadpool_limits

    if _BLAS_LIMITER is not None:
        _BLAS_LIMITER.restore_original_limits()
        _BLAS_LIMITER = None
    if count is not None:
        _BLAS_LIMITER = threadpool_limits(limits=count, user_api="blas")
    apply_numba_threads()


def apply_numba_threads() -> None:
    """Apply the :func:`set_threads` count to Numba, when Numba is loaded."""
    import sys

    numba = sys.modules.get("numba")
    if numba is None:
        return
    limit = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(limit if _THREADS is None else min(_THREADS, limit))


# Below this many floating-point operations per training step, BLAS runs on one thread during
# ``fit`` unless :func:`set_threads` was called: splitting a small GEMM costs more than it saves,
# and spinning BLAS threads collapse when other work shares the cores (measured here: a
# 100x784x50 GEMM took 8 ms on 2 threads under load against 0.07 ms on 1).
SMALL_STEP_FLOPS = 100e6


_ONE_THREAD_DEPTH = 0  # how many auto_threads one-thread limits are active
_SERIAL_KERNELS_DEPTH = 0  # how many auto_threads serial-kernel periods are active


def auto_threads(step_flops: float):
    """Context manager ``fit``, ``evaluate`` and ``predict`` enter around their loops.

    Small steps (under SMALL_STEP_FLOPS, threads unset): BLAS on one thread. Otherwise, while
    BLAS runs its GEMMs on several threads, Numba's element-wise kernels stay serial
    (:func:`parallel_kernels`): Numba's OpenMP threads spin after each parallel kernel and take
    the cores BLAS's threads need next (W3 measured 0.92 s a quarter epoch with serial kernels,
    1.58 s with parallel ones). A loop that splits its own GEMMs over Numba's threads (the
    Numba backend's wide Dense stacks) holds BLAS to one thread itself (:func:`one_blas_thread`).
    """
    if _THREADS is None and step_flops < SMALL_STEP_FLOPS:
        return one_blas_thread()
    if _THREADS == 1:
        return contextlib.nullcontext()
    return _serial_kernels()


@contextlib.contextmanager
def _serial_kernels():
    global _SERIAL_KERNELS_DEPTH
    _SERIAL_KERNELS_DEPTH += 1
    try:
        yield
    finally:
        _SERIAL_KERNELS_DEPTH -= 1


def parallel_kernels() -> bool:
    """Whether Numba kernels may run their parallel bindings (not inside a loop whose GEMMs run
    on several BLAS threads; see :func:`auto_threads`)."""
    return _SERIAL_KERNELS_DEPTH == 0


@contextlib.contextmanager
def one_blas_thread():
    """BLAS on one thread for the duration, recorded for :func:`blas_single_threaded`: for
    kernels that split their GEMMs over their own threads."""
    global _ONE_THREAD_DEPTH
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        _ONE_THREAD_DEPTH += 1
        try:
            yield
        finally:
            _ONE_THREAD_DEPTH -= 1


def blas_single_threaded() -> bool:
    """Whether BLAS runs on one thread by nnlite's settings: ``set_threads(1)`` or inside the
    one-thread policy of ``fit``/``evaluate``/``predict``. Kernels that run several BLAS calls
    at once on their own threads (the Numba LSTM's row blocks) do so only then."""
    return _THREADS == 1 or _ONE_THREAD_DEPTH > 0
