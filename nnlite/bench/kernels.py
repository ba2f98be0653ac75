"""Kernel benchmark: GEMMs (BLAS, the Numba blocked kernel, cuBLAS) and the fused kernels.

GEMM, float32, ``(M, K) · (K, N)`` at every shape a selected workload's step runs (transposed
operands passed as the engine passes them: ``xᵀ`` and ``Wᵀ`` are views) and at 4096³:

    GFLOP/s = 2·M·K·N / seconds / 1e9          fraction of peak = GFLOP/s / peak
    peak    = the best float32 BLAS GEMM GFLOP/s at 2048³ and 4096³ with all threads

BLAS and the blocked kernel run on all threads. Where the Numba backend multiplies on its
packed kernel (:func:`nnlite.backend.numba_kernels.gemm_packed`, see :func:`packed_shape`), the
table also times ``numba-packed``: one call on one thread, its right factor packed beforehand
(the LSTM walks pack their weights once for all T steps, the column-split Dense loop keeps its
kernels packed; the one-thread Dense step packs each kernel at each step, which this leaves
out), so against BLAS's column it compares one core with all of them.

Each result is checked once against a float64 product (norm-wise relative error).

Fused kernels (the Numba backend's, and the CuPy backend's with a GPU) against their unfused
NumPy form, at the workloads' shapes: bias + activation forward, activation backward + bias
gradient, softmax cross-entropy, the Adam update, and one LSTM cell step forward and backward.
The bandwidth column counts each array read or written once (the least traffic possible).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from nnlite.bench.timing import measure
from nnlite.bench.workloads import Workload

PEAK_SIZES = (2048, 4096)
QUICK_PEAK_SIZES = (256,)
LARGE = 4096
QUICK_LARGE = 256


def _rng(seed=0):
    return np.random.default_rng(seed)


def measure_peak(quick: bool = False) -> dict:
    """The machine's float32 GEMM peak: best BLAS GFLOP/s over large square sizes.

    Measured with every core (whatever ``--threads`` says) and, as a guard for a machine busy
    with other work (where threads that wait for a descheduled sibling can make a threaded GEMM
    far slower than a serial one), with one thread; the peak is the best of all samples and the
    record keeps both (``all_threads_gflops``, ``one_thread_gflops``).
    """
    from threadpoolctl import threadpool_limits

    best = {"gflops": 0.0}
    per_threads = {}
    counts = (os.cpu_count() or 1, 1) if (os.cpu_count() or 1) > 1 else (1,)
    for threads in counts:
        with threadpool_limits(limits=threads, user_api="blas"):
            for n in (QUICK_PEAK_SIZES if quick else PEAK_SIZES):
                a = _rng(1).random((n, n), dtype=np.float32)
                b = _rng(2).random((n, n), dtype=np.float32)
                out = np.empty((n, n), np.float32)
                t = measure(lambda: np.matmul(a, b, out=out), min_time=0.02 if quick else 0.2,
                            repeat=2 if quick else 5)
                gflops = 2 * n**3 / t["best"] / 1e9
                per_threads[threads] = max(per_threads.get(threads, 0.0), gflops)
                if gflops > best["gflops"]:
                    best = {"gflops": gflops, "size": n, "seconds": t["best"], "impl": "blas",
                            "threads": threads}
    best["all_threads_gflops"] = per_threads[counts[0]]
    best["one_thread_gflops"] = per_threads[1]
    return best


def cupy_usable() -> tuple[bool, str]:
    """(True, device name) when CuPy imports and a CUDA device works, else (False, why)."""
    if importlib.util.find_spec("cupy") is None:
        return False, "CuPy is not installed"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False, "CuPy found no CUDA device"
        float((cupy.arange(4) * 2).sum())
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return True, name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # CUDA errors come in many types
        return False, f"CuPy has no working CUDA device ({type(exc).__name__}: {exc})"


def measure_gpu_peak(quick: bool = False) -> dict:
    """The GPU's float32 cuBLAS peak (as :func:`measure_peak`), synchronized before timing."""
    import cupy

    best = {"gflops": 0.0}
    sync = cupy.cuda.Device().synchronize
    for n in ((512,) if quick else (4096, 8192)):
        a = cupy.random.random((n, n), dtype=cupy.float32)
        b = cupy.random.random((n, n), dtype=cupy.float32)
        out = cupy.empty((n, n), cupy.float32)
        t = measure(lambda: cupy.matmul(a, b, out=out), min_time=0.05, repeat=3, sync=sync)
        gflops = 2 * n**3 / t["best"] / 1e9
        if gflops > best["gflops"]:
            best = {"gflops": gflops, "size": n, "seconds": t["best"], "impl": "cublas"}
    return best


def gemm_shapes(workloads: list[Workload], quick: bool) -> list[tuple[str, int, int, int]]:
    """Unique GEMM shapes of the workloads' steps, plus the large square one."""
    seen, shapes = set(), []
    for wl in workloads:
        for label, m, k, n in wl.gemm_shapes():
            key = (m, k, n, "ᵀ" in label and label.split()[-1])
            if key not in seen:
                seen.add(key)
                shapes.append((label, m, k, n))
    size = QUICK_LARGE if quick else LARGE
    shapes.append((f"square {size}³", size, size, size))
    return shapes


def _operands(label, m, k, n, xp=np):
    """``a (M, K)`` and ``b (K, N)`` laid out as the engine passes them (transposes are views)."""
    rng = _rng(m * 31 + k * 7 + n)
    a = rng.random((k, m), dtype=np.float32).T if "xᵀ" in label or "hᵀ" in label else \
        rng.random((m, k), dtype=np.float32)
    b = rng.random((n, k), dtype=np.float32).T if "Wᵀ" in label else \
        rng.random((k, n), dtype=np.float32)
    return a, b


def _rel_err(actual, expected) -> float:
    actual = np.asarray(actual, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-300))


def run_gemms(shapes, peak: dict, quick: bool, gpu: tuple[bool, str], gpu_peak=None) -> list:
    """Time every GEMM shape with every implementation; returns records."""
    records = []
    blocked = packed = None
    if importlib.util.find_spec("numba") is not None:
        from nnlite.backend.numba_backend import NumbaBackend

        blocked = NumbaBackend(gemm="blocked")
        tiny = np.ones((2, 2), np.float32)
        blocked.matmul(tiny, tiny)  # compile (or load from the disk cache) outside the timing
        packed = _packed_gemm()
    for label, m, k, n in shapes:
        a, b = _operands(label, m, k, n)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        flops = 2.0 * m * k * n
        impls = [("blas", lambda a, b, out: np.matmul(a, b, out=out), None)]
        if blocked is not None:
            impls.append(("numba-blocked", lambda a, b, out: blocked.matmul(a, b, out=out), None))
        if packed is not None and packed_shape(label, m, n):
            impls.append(("numba-packed", packed(b), None))
        for impl, fn, _ in impls:
            out = np.empty((m, n), np.float32)
            big = flops > 2e10 and impl == "numba-blocked"
            fn(a, b, out)  # warm-up and the result to check
            err = _rel_err(out, ref)
            t = measure(lambda: fn(a, b, out), min_time=0.005 if quick else 0.05,
                        repeat=1 if big else (2 if quick else 5), warmup=False)
            records.append(_gemm_record(label, m, k, n, impl, t, flops, peak, err))
        if gpu[0]:
            import cupy

            ga, gb = cupy.asarray(a), cupy.asarray(b)
            gout = cupy.empty((m, n), cupy.float32)
            cupy.matmul(ga, gb, out=gout)
            err = _rel_err(cupy.asnumpy(gout), ref)
            t = measure(lambda: cupy.matmul(ga, gb, out=gout), min_time=0.02, repeat=3,
                        sync=cupy.cuda.Device().synchronize)
            rec = _gemm_record(label, m, k, n, "cublas", t, flops, gpu_peak or peak, err)
            rec["device"] = gpu[1]
            records.append(rec)
    return records


def packed_shape(label: str, m: int, n: int) -> bool:
    """Whether the Numba backend runs this GEMM on its packed kernel: an LSTM walk's step and
    dh products, and a Dense forward x·W of ``PACKED_MIN_ROWS`` to ``PACKED_MAX_K`` batch rows
    into at least a panel's columns (float32: 32). (The column-split loop of a wide stack
    also packs for fewer rows; no workload has such a batch.)"""
    from nnlite.backend import numba_kernels as K

    if "LSTM step" in label or "LSTM dh" in label:
        return True
    return ("fwd x·W" in label and K.PACKED_MIN_ROWS <= m <= K.PACKED_MAX_K
            and n >= K.panel_width(np.float32))


def _packed_gemm():
    """``prepare(b)`` → ``fn(a, b, out)``: :func:`numba_kernels.gemm_packed` on ``b`` packed
    once by ``prepare`` (outside the timing, as the LSTM walks pack their weights)."""
    import numba

    from nnlite.backend import numba_kernels as K

    @numba.njit
    def product(a, panels, out):
        K.gemm_packed(a, panels, out)

    def prepare(b):
        panels = np.empty(K.panel_shape(*b.shape, b.dtype), b.dtype)
        K.pack_panels(b, panels)
        return lambda a, _b, out: product(a, panels, out)

    return prepare


def _gemm_record(label, m, k, n, impl, t, flops, peak, err) -> dict:
    gflops = flops / t["seconds"] / 1e9
    return {
        "kind": "gemm", "label": label, "m": m, "k": k, "n": n, "impl": impl,
        "seconds": t["seconds"], "best_seconds": t["best"], "calls": t["calls"],
        "gflops": gflops, "best_gflops": flops / t["best"] / 1e9,
        "fraction_of_peak": gflops / peak["gflops"], "peak_gflops": peak["gflops"],
        "rel_err_vs_float64": err, "ok": err < 1e-4,
    }


# -- fused kernels ------------------------------------------------------------------------------


def fused_shapes(workloads: list[Workload]):
    """(activation shapes (N, M), logits shapes (N, 10), Adam sizes, LSTM (N, U)) to time."""
    acts, logits, sizes, lstm = [], [], [], []
    for wl in workloads:
        if wl.lstm:
            lstm.append((wl.batch_size, wl.lstm))
            sizes.append(4 * wl.lstm * (28 + wl.lstm + 1) + wl.lstm * 10 + 10)
        else:
            acts.extend((wl.batch_size, w) for w in wl.hidden)
            dims = [784, *wl.hidden, 10]
            sizes.append(sum(i * o + o for i, o in zip(dims[:-1], dims[1:])))
        logits.append((wl.batch_size, 10))

    def unique(items):
        return list(dict.fromkeys(items))

    return unique(acts), unique(logits), unique(sizes), unique(lstm)


def _pair(name, shape, fused, unfused, outputs, nbytes, quick, sync=None, to_numpy=np.asarray):
    """Check ``fused`` against ``unfused`` once (their outputs), then time both."""
    got, want = fused(), unfused()
    err = max(_rel_err(to_numpy(g), np.asarray(to_numpy(w), np.float64))
              for g, w in zip(outputs(got), outputs(want)))
    opts = {"min_time": 0.005 if quick else 0.05, "repeat": 2 if quick else 5, "sync": sync}
    tf, tu = measure(fused, **opts), measure(unfused, **opts)
    return {
        "kind": "fused", "kernel": name, "shape": list(shape),
        "fused_seconds": tf["seconds"], "unfused_seconds": tu["seconds"],
        "fused_best": tf["best"], "unfused_best": tu["best"],
        "speedup": tu["seconds"] / tf["seconds"],
        "fused_gbps": nbytes / tf["seconds"] / 1e9, "unfused_gbps": nbytes / tu["seconds"] / 1e9,
        "bytes": nbytes, "rel_err": err, "ok": err < 1e-5,
    }


def run_fused(workloads: list[Workload], quick: bool) -> list:
    """Each Numba fused kernel against the reference backend's unfused NumPy code."""
    if importlib.util.find_spec("numba") is None:
        return []
    from nnlite import activations
    from nnlite.backend import Backend
    from nnlite.backend import numba_kernels as K
    from nnlite.backend.numba_backend import NumbaBackend

    nb, ref = NumbaBackend(), Backend()
    relu = activations.get("relu")
    acts, logits_shapes, sizes, lstm_shapes = fused_shapes(workloads)
    records = []
    f32 = np.float32
    for n, m in acts:
        rng = _rng(n + m)
        z0 = rng.standard_normal((n, m), dtype=f32)
        bias = rng.standard_normal(m, dtype=f32)
        z, y = z0.copy(), np.empty_like(z0)

        def fused():
            # z is reset from z0 (as the GEMM would write it): the copy is in both timings.
            np.copyto(z, z0)
            K.bias_activation_forward(z.size, z, bias, True, K.RELU, y)
            return y

        def unfused():
            np.copyto(z, z0)
            z.__iadd__(bias)
            return relu.forward(z)

        records.append(_pair("bias+relu forward", (n, m), fused, unfused, lambda r: [r],
                             3 * z.nbytes, quick))
        dy = rng.standard_normal((n, m), dtype=f32)
        zz = z0 + bias
        yy = np.maximum(zz, 0)
        dz, dbias = np.empty_like(dy), np.empty(m, f32)

        def fused_b():
            K.activation_backward_bias(dy.size, dy, zz, yy, K.RELU, dz, dbias, True)
            return dz, dbias

        def unfused_b():
            d = relu.backward(dy, zz, yy)
            return d, d.sum(axis=0)

        records.append(_pair("relu backward+bias", (n, m), fused_b, unfused_b, lambda r: r,
                             3 * dy.nbytes, quick))
    for n, c in logits_shapes:
        rng = _rng(n * 10 + c)
        logits = rng.standard_normal((n, c), dtype=f32) * 3
        labels = rng.integers(0, c, n)
        records.append(_pair(
            "softmax xent", (n, c), lambda: nb.softmax_cross_entropy(logits, labels),
            lambda: ref.softmax_cross_entropy(logits, labels),
            lambda r: [np.atleast_1d(r[0]), r[1]], 2 * logits.nbytes, quick))
    for size in sizes:
        rng = _rng(size)
        p0, g = rng.standard_normal(size, dtype=f32), rng.standard_normal(size, dtype=f32)
        m0, v0 = rng.standard_normal(size, dtype=f32), rng.random(size, dtype=f32)
        state = {}

        def adam(backend, key):
            arrays = state.setdefault(key, [p0.copy(), m0.copy(), v0.copy()])
            p, m, v = arrays
            backend.adam_update(p, g, m, v, f32(1e-3), f32(0.1), f32(1e-3), f32(1e-7))
            return arrays

        # Re-run from fresh copies for the check, so both start from the same state.
        check_f = lambda: adam(nb, "f")  # noqa: E731
        check_u = lambda: adam(ref, "u")  # noqa: E731
        records.append(_pair("adam update", (size,), check_f, check_u, lambda r: r,
                             7 * p0.nbytes, quick))
    for n, u in lstm_shapes:
        rng = _rng(n + u)
        sig, tanh = activations.get("sigmoid"), activations.get("tanh")
        z = rng.standard_normal((n, 4 * u), dtype=f32)
        c_prev = rng.standard_normal((n, u), dtype=f32)
        outs = {key: (np.empty_like(z),) + tuple(np.empty_like(c_prev) for _ in range(3))
                for key in ("f", "u")}

        def cell(backend, key):
            # z and c_prev are only read; gates, c, φ(c) and h are written.
            return backend.lstm_cell_forward(z, c_prev, tanh, sig, out=outs[key])

        records.append(_pair("lstm cell forward", (n, u), lambda: cell(nb, "f"),
                             lambda: cell(ref, "u"), lambda r: r,
                             3 * z.nbytes, quick))  # z in, gates out, four (N, U) arrays
        gates = 1 / (1 + np.exp(-z))
        act_c = np.tanh(c_prev)
        dh0 = rng.standard_normal((n, u), dtype=f32)
        dc0 = rng.standard_normal((n, u), dtype=f32)
        dcs = {"f": (dc0.copy(), dh0.copy()), "u": (dc0.copy(), dh0.copy())}

        def cell_b(backend, key):
            dc, dh = dcs[key]
            np.copyto(dc, dc0)
            np.copyto(dh, dh0)
            dz = backend.lstm_cell_backward(dh, None, dc, gates, c_prev, act_c, tanh, sig)
            return dz, dc

        records.append(_pair("lstm cell backward", (n, u), lambda: cell_b(nb, "f"),
                             lambda: cell_b(ref, "u"), lambda r: r,
                             13 * z.nbytes // 4, quick))  # gates, dz; five (N, U) arrays
    records += _stack_steps(workloads, nb, ref, quick)
    return records


def _stack_steps(workloads: list[Workload], nb, ref, quick: bool) -> list:
    """The whole compiled Dense-stack step (forward, softmax cross-entropy, backward) against the
    reference backend's per-layer kernels at each MLP workload's size (W5: a quarter batch)."""
    import nnlite
    from nnlite.models.dense_stack import DenseStack

    records = []
    for wl in workloads:
        if wl.lstm:
            continue
        n = min(wl.batch_size, 2048 if quick else 13500)
        rng = _rng(n)
        x = rng.random((n, 784), dtype=np.float32)
        labels = rng.integers(0, 10, n)
        plans = []
        for _ in range(2):  # one model per backend, from the same seed
            model = nnlite.Sequential(
                [nnlite.Input((784,))]
                + [nnlite.layers.Dense(w, activation="relu") for w in wl.hidden]
                + [nnlite.layers.Dense(10, activation="softmax")], seed=0)
            model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
            model._pack_parameters()
            plans.append(DenseStack.of(model).plan(n))

        def step(backend, plan):
            loss, _ = backend.dense_stack_step(x, labels, plan)
            return np.atleast_1d(loss), plan.grads

        records.append(_pair(f"dense stack step {wl.name}", (n, wl.arch),
                             lambda: step(nb, plans[0]), lambda: step(ref, plans[1]),
                             lambda r: r, x.nbytes + 2 * plans[0].params.nbytes, quick))
    return records


def run_fused_gpu(workloads: list[Workload], quick: bool) -> list:
    """The CuPy backend's fused element-wise kernels against unfused CuPy array code."""
    import cupy

    from nnlite import activations
    from nnlite.backend import Backend
    from nnlite.backend.cupy_backend import CupyBackend, _kernel

    gpu = CupyBackend()
    sync = gpu.synchronize
    relu = activations.get("relu")
    acts, _, sizes, _ = fused_shapes(workloads)
    records = []
    for n, m in acts:
        z = cupy.random.standard_normal((n, m), dtype=cupy.float32)
        bias = cupy.random.standard_normal(m, dtype=cupy.float32)
        y = cupy.empty_like(z)

        def fused():
            zz = z.copy()
            _kernel("forward_relu")(bias, m, True, zz, y)
            return y

        def unfused():
            zz = z + bias
            return relu.forward(zz)

        records.append(_pair("bias+relu forward (cupy)", (n, m), fused, unfused, lambda r: [r],
                             3 * z.nbytes, quick, sync, cupy.asnumpy))
    for size in sizes:
        p0 = cupy.random.standard_normal(size, dtype=cupy.float32)
        g = cupy.random.standard_normal(size, dtype=cupy.float32)
        state = {}
        f32 = np.float32

        def adam(fn, key):
            arrays = state.setdefault(key, [p0.copy(), p0.copy() * 0, p0.copy() * 0 + 1])
            fn(arrays[0], g, arrays[1], arrays[2], f32(1e-3), f32(0.1), f32(1e-3), f32(1e-7))
            return arrays

        records.append(_pair(
            "adam update (cupy)", (size,), lambda: adam(gpu.adam_update, "f"),
            lambda: adam(lambda *a: Backend.adam_update(gpu, *a), "u"), lambda r: r,
            7 * p0.nbytes, quick, sync, cupy.asnumpy))
    return records


def run(options, emit) -> dict:
    """The kernels part: peak, GEMMs, fused kernels. ``emit(record)`` writes each record."""
    from nnlite import config

    workloads = [w.quick() if options.quick else w for w in options.workload_list()
                 if not (w.lstm and options.skip_lstm)]
    peak = measure_peak(options.quick)
    emit({"kind": "peak", **peak})
    gpu = cupy_usable()
    gpu_peak = None
    if gpu[0]:
        gpu_peak = measure_gpu_peak(options.quick)
        emit({"kind": "peak", "device": gpu[1], **gpu_peak})
    else:
        emit({"kind": "note", "note": f"cuBLAS skipped: {gpu[1]}"})
    if options.threads is not None:
        config.set_threads(options.threads)  # measure_peak's limits were lifted on exit
    records = run_gemms(gemm_shapes(workloads, options.quick), peak, options.quick, gpu,
                        gpu_peak)
    records += run_fused(workloads, options.quick)
    if gpu[0]:
        records += run_fused_gpu(workloads, options.quick)
    if importlib.util.find_spec("numba") is None:
        emit({"kind": "note", "note": "Numba is not installed: blocked GEMM and fused kernels "
                                      "skipped"})
    for rec in records:
        emit(rec)
    return {"peak": peak, "gpu_peak": gpu_peak, "records": records}


def markdown(result: dict) -> str:
    """GEMM and fused-kernel tables."""
    peak = result["peak"]
    lines = [f"Measured float32 GEMM peak: **{peak['gflops']:.0f} GFLOP/s** "
             f"(BLAS, {peak['size']}³, {peak.get('threads')} thread(s), best of the samples; "
             f"all cores {peak['all_threads_gflops']:.0f}, one thread "
             f"{peak['one_thread_gflops']:.0f} GFLOP/s)."]
    if result.get("gpu_peak"):
        lines.append(f"GPU peak (cuBLAS): {result['gpu_peak']['gflops']:.0f} GFLOP/s.")
    gemms = [r for r in result["records"] if r["kind"] == "gemm"]
    impls = list(dict.fromkeys(r["impl"] for r in gemms))
    lines += ["", "| GEMM | M×K×N | " + " | ".join(f"{i} GFLOP/s (% peak)" for i in impls)
              + " | check |", "|---|---|" + "---|" * len(impls) + "---|"]
    by_shape: dict = {}
    for r in gemms:
        by_shape.setdefault((r["label"], r["m"], r["k"], r["n"]), {})[r["impl"]] = r
    for (label, m, k, n), row in by_shape.items():
        cells = []
        for impl in impls:
            r = row.get(impl)
            cells.append("–" if r is None else
                         f"{r['gflops']:.1f} ({100 * r['fraction_of_peak']:.0f}%)")
        ok = all(r["ok"] for r in row.values())
        worst = max(r["rel_err_vs_float64"] for r in row.values())
        lines.append(f"| {label} | {m}×{k}×{n} | " + " | ".join(cells)
                     + f" | {'ok' if ok else 'FAIL'} ({worst:.0e}) |")
    fused = [r for r in result["records"] if r["kind"] == "fused"]
    if fused:
        lines += ["", "| fused kernel | shape | fused µs | unfused NumPy µs | speedup | "
                  "fused GB/s | check |", "|---|---|---|---|---|---|---|"]
        for r in fused:
            shape = "×".join(str(s) for s in r["shape"])
            lines.append(
                f"| {r['kernel']} | {shape} | {1e6 * r['fused_seconds']:.1f} | "
                f"{1e6 * r['unfused_seconds']:.1f} | {r['speedup']:.2f}x | "
                f"{r['fused_gbps']:.1f} | {'ok' if r['ok'] else 'FAIL'} ({r['rel_err']:.0e}) |")
    return "\n".join(lines) + "\n"
