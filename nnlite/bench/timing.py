"""Timing a call: warm-up left out, enough calls per sample to beat the clock, several samples.

    sample = (time of n back-to-back calls, then a synchronize) / n
    n is grown until one sample takes at least ``min_time``; ``repeat`` samples are taken
    result: median and best (minimum) seconds per call

On a machine shared with other work the best sample is the closest to what the hardware can do
and the median to what a user gets; both are recorded.
"""

from __future__ import annotations

import statistics
import time


def measure(fn, *, min_time: float = 0.05, repeat: int = 5, warmup: bool = True,
            sync=None) -> dict:
    """Seconds per call of ``fn()``.

    Args:
        fn: the call to time (no arguments).
        min_time: grow the calls per sample until a sample takes this long (seconds).
        repeat: samples to take.
        warmup: call once untimed first (compilation, first-touch allocation, caches).
        sync: called after each sample's calls and before reading the clock (GPU work).

    Returns:
        ``{"seconds": median, "best": minimum, "calls": calls per sample, "samples": repeat}``.
    """
    sync = sync or (lambda: None)
    if warmup:
        fn()
        sync()
    calls, samples = 1, []
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or calls >= 1 << 20:
            samples.append(elapsed / calls)
            break
        # Aim a little past min_time so the next try usually suffices.
        calls = max(calls * 2, int(calls * 1.3 * min_time / max(elapsed, 1e-9)))
    while len(samples) < repeat:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        samples.append((time.perf_counter() - start) / calls)
    return {"seconds": statistics.median(samples), "best": min(samples), "calls": calls,
            "samples": len(samples)}
