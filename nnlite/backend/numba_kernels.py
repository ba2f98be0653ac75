"""Numba kernels for the CPU hot loop, each a plain Python loop bound twice: serial and parallel.

Every kernel here is first written as an ordinary Python function over NumPy arrays, so it can be
read (and tested through ``.py_func``) as plain code; :func:`bind` compiles it with ``njit`` once
serially and once with ``parallel=True``, where ``prange`` splits the outer loop over threads.
Small problems run the serial binding (a parallel launch costs microseconds), large ones the
parallel one. All kernels write into preallocated ``out`` arrays and allocate nothing.

Constants are typed from the arrays (``zero = z.dtype.type(0)``): a bare ``0`` or ``1`` would
make Numba promote float32 arithmetic to float64, which is slower (no float32 SIMD) and not
the float32 arithmetic the NumPy reference does.

Activation codes (shared with :mod:`nnlite.backend.numba_backend`):
    0 linear   1 relu   2 sigmoid   3 tanh   4 softmax

Importing this module imports Numba; nnlite imports it only when the Numba backend is selected.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

LINEAR, RELU, SIGMOID, TANH, SOFTMAX = 0, 1, 2, 3, 4
CODES = {"linear": LINEAR, "relu": RELU, "sigmoid": SIGMOID, "tanh": TANH, "softmax": SOFTMAX}

# Below this many elements the serial binding is used. These kernels are memory-bound: under
# ~1M elements a serial pass takes well under a millisecond, less than waking threads that may
# be competing with BLAS's own (spinning) threads for the same cores.
PARALLEL_THRESHOLD = 1 << 20


class Bound:
    """A kernel compiled serially and in parallel; ``__call__`` picks by problem size."""

    def __init__(self, fn, parallel: bool = True, cache: bool = True):
        self.py_func = fn
        # error_model="numpy": division by zero gives inf/nan as in NumPy instead of raising;
        # Python's model adds a check per division that keeps LLVM from vectorising the loop.
        options = {"cache": cache, "error_model": "numpy"}
        self.serial = numba.njit(**options)(fn)
        self.parallel = numba.njit(parallel=True, **options)(fn) if parallel else self.serial
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __call__(self, size, *args):
        kernel = self.parallel if size >= PARALLEL_THRESHOLD else self.serial
        return kernel(*args)


def bind(parallel: bool = True):
    """Decorator: turn a plain loop into a :class:`Bound` kernel."""

    def wrap(fn):
        return Bound(fn, parallel=parallel)

    return wrap


# ----------------------------------------------------------------------------------------------
# Dense: fused bias + activation, fused activation backward + bias gradient
# ----------------------------------------------------------------------------------------------


@bind()
def bias_activation_forward(z, bias, has_bias, code, y):
    """In place ``z += bias`` then ``y = f(z)``, one pass over each row.

    Shapes:
        z, y: (N, M)   bias: (M,) (ignored when has_bias is False)
    Math:
        z[n, m] ← z[n, m] + bias[m]       y[n, m] = f(z[n, m])   (softmax: along m)
    """
    n, m = z.shape
    zero, one = z.dtype.type(0), z.dtype.type(1)
    for i in prange(n):
        if code == SOFTMAX:
            top = -np.inf
            for j in range(m):
                if has_bias:
                    z[i, j] += bias[j]
                if z[i, j] > top:
                    top = z[i, j]
            total = zero
            for j in range(m):
                # Shift by the row maximum so exp cannot overflow.
                e = math.exp(z[i, j] - top)
                y[i, j] = e
                total += e
            for j in range(m):
                y[i, j] = y[i, j] / total
        else:
            for j in range(m):
                v = z[i, j] + bias[j] if has_bias else z[i, j]
                z[i, j] = v
                if code == RELU:
                    # Written so that NaN passes through, as np.maximum(z, 0) does.
                    y[i, j] = zero if v <= zero else v
                elif code == SIGMOID:
                    # exp(-v) overflows to inf for very negative v; 1/(1+inf) is then exactly 0.
                    y[i, j] = one / (one + math.exp(-v))
                elif code == TANH:
                    y[i, j] = math.tanh(v)
                else:
                    y[i, j] = v


@bind(parallel=False)
def activation_backward_bias(dy, z, y, code, dz, dbias, has_bias):
    """``dz = f'(z) ⊙ dy`` and ``dbias = Σ_n dz[n]`` in one pass.

    Shapes:
        dy, z, y, dz: (N, M)   dbias: (M,)
    Math:
        relu dz = dy·[z > 0]    sigmoid dz = dy·y(1−y)    tanh dz = dy·(1−y²)
        softmax dz = y·(dy − Σ_m dy·y)    linear dz = dy
    Serial: the bias reduction runs down the rows; the inner loop over m vectorises.
    """
    n, m = dy.shape
    zero, one = dy.dtype.type(0), dy.dtype.type(1)
    if has_bias:
        for j in range(m):
            dbias[j] = zero
    for i in range(n):
        if code == SOFTMAX:
            s = zero
            for j in range(m):
                s += dy[i, j] * y[i, j]
            for j in range(m):
                dz[i, j] = y[i, j] * (dy[i, j] - s)
        elif code == RELU:
            for j in range(m):
                dz[i, j] = dy[i, j] if z[i, j] > zero else zero
        elif code == SIGMOID:
            for j in range(m):
                dz[i, j] = dy[i, j] * y[i, j] * (one - y[i, j])
        elif code == TANH:
            for j in range(m):
                dz[i, j] = dy[i, j] * (one - y[i, j] * y[i, j])
        else:
            for j in range(m):
                dz[i, j] = dy[i, j]
        if has_bias:
            for j in range(m):
                dbias[j] += dz[i, j]


# ----------------------------------------------------------------------------------------------
# Softmax cross-entropy: loss and dlogits in one pass
# ----------------------------------------------------------------------------------------------


@bind()
def softmax_xent_sparse(logits, labels, dlogits):
    """Mean cross-entropy of softmax(logits) against integer labels, and ``(p − onehot)/N``.

    Shapes:
        logits, dlogits: (N, C)   labels: (N,) integers   ->  loss (float64 scalar)
    Math:
        lse_n = max_n + log Σ_c exp(z[n, c] − max_n)     loss = (1/N) Σ_n (lse_n − z[n, y_n])
        dlogits[n, c] = (exp(z[n, c] − lse_n) − [c = y_n]) / N
    """
    n, c = logits.shape
    total = 0.0
    for i in prange(n):
        top = logits[i, 0]
        for j in range(1, c):
            if logits[i, j] > top:
                top = logits[i, j]
        s = 0.0
        for j in range(c):
            s += math.exp(logits[i, j] - top)
        log_s = math.log(s)
        label = labels[i]
        total += log_s - (logits[i, label] - top)
        for j in range(c):
            p = math.exp(logits[i, j] - top - log_s)
            if j == label:
                p -= 1
            dlogits[i, j] = p / n
    return total / n


@bind()
def softmax_xent_dense(logits, target, dlogits):
    """As :func:`softmax_xent_sparse` with one-hot (or soft) targets ``t`` of shape (N, C).

    Math:
        loss = (1/N) Σ_n Σ_c t[n, c] (lse_n − z[n, c])     dlogits = (softmax(z) − t) / N
    """
    n, c = logits.shape
    total = 0.0
    for i in prange(n):
        top = logits[i, 0]
        for j in range(1, c):
            if logits[i, j] > top:
                top = logits[i, j]
        s = 0.0
        for j in range(c):
            s += math.exp(logits[i, j] - top)
        log_s = math.log(s)
        row = 0.0
        for j in range(c):
            shifted = logits[i, j] - top - log_s
            row -= target[i, j] * shifted
            dlogits[i, j] = (math.exp(shifted) - target[i, j]) / n
        total += row
    return total / n


# ----------------------------------------------------------------------------------------------
# Optimizer updates: element-wise, in place, over a whole (flat) parameter vector
#
# State that decays geometrically (momenta, Adam's m and v) drifts into the subnormal range for
# inputs that are rarely active (border pixels at batch size 1); x86 arithmetic on subnormals is
# ~100x slower (measured here: 12 ms instead of 77 µs for one Adam pass over 42k parameters).
# The kernels flush state below ``tiny`` (the dtype's smallest normal number) to zero, as
# TensorFlow's flush-to-zero CPU threads do; the parameter updates are unaffected (a subnormal
# moment moves a parameter by far less than one ulp).
# ----------------------------------------------------------------------------------------------


@bind()
def sgd_update(p, g, lr):
    """``p ← p − lr·g``."""
    for i in prange(p.size):
        p[i] -= g[i] * lr


@bind()
def sgd_momentum_update(p, g, v, lr, momentum, nesterov, tiny):
    """``v ← μ·v − lr·g``;  ``p ← p + v`` (Nesterov: ``p ← p + μ·v − lr·g``)."""
    for i in prange(p.size):
        step = g[i] * lr
        vi = v[i] * momentum - step
        if abs(vi) < tiny:
            vi = tiny - tiny
        v[i] = vi
        if nesterov:
            p[i] += vi * momentum - step
        else:
            p[i] += vi


@bind()
def adam_update(p, g, m, v, alpha, c1, c2, eps, tiny):
    """``m ← m + (g − m)c₁``, ``v ← v + (g² − v)c₂``, ``p ← p − alpha·m / (√v + ε̂)``."""
    for i in prange(p.size):
        gi = g[i]
        mi = m[i] + (gi - m[i]) * c1
        vi = v[i] + (gi * gi - v[i]) * c2
        if abs(mi) < tiny:
            mi = tiny - tiny
        if vi < tiny:
            vi = tiny - tiny
        m[i] = mi
        v[i] = vi
        p[i] -= (mi * alpha) / (math.sqrt(vi) + eps)


@bind()
def rmsprop_update(p, g, v, lr, rho, c, eps, momentum, u, use_momentum, mg, centered, tiny):
    """``v ← ρv + (1−ρ)g²``; ``step = lr·g / √(d + ε)`` with d = v (centered: v − ḡ²);
    ``p ← p − step`` (momentum: ``u ← μu + step``, ``p ← p − u``)."""
    for i in prange(p.size):
        gi = g[i]
        vi = v[i] * rho + c * (gi * gi)
        if vi < tiny:
            vi = tiny - tiny
        v[i] = vi
        d = vi
        if centered:
            mgi = mg[i] * rho + c * gi
            if abs(mgi) < tiny:
                mgi = tiny - tiny
            mg[i] = mgi
            d = vi - mgi * mgi
        step = (lr * gi) / math.sqrt(d + eps)
        if use_momentum:
            ui = u[i] * momentum + step
            if abs(ui) < tiny:
                ui = tiny - tiny
            u[i] = ui
            p[i] -= ui
        else:
            p[i] -= step


# ----------------------------------------------------------------------------------------------
# Data: batch gather; a blocked matmul for teaching and the kernel benchmark
# ----------------------------------------------------------------------------------------------


@bind()
def gather_rows(data, index, out):
    """``out[b, :] = data[index[b], :]`` with a cast to out's dtype (e.g. uint8 -> float32)."""
    d = data.shape[1]
    for b in prange(index.size):
        row = index[b]
        for j in range(d):
            out[b, j] = data[row, j]


@bind()
def matmul_blocked(a, b, out):
    """``out = a · b`` with cache blocking: a readable GEMM, not a BLAS replacement.

    Shapes:
        a: (N, K)   b: (K, M)   out: (N, M)
    The (i, k, j) loop order walks ``b`` and ``out`` along contiguous rows so the inner loop
    vectorises; 64x256 tiles of ``a`` and ``b`` stay in L1/L2 while they are reused; the row
    blocks are shared among threads. Accumulates in out's dtype.
    """
    n, k = a.shape
    m = b.shape[1]
    bi, bk = 64, 256
    nblocks = (n + bi - 1) // bi
    zero = out.dtype.type(0)
    for blk in prange(nblocks):
        i0 = blk * bi
        i1 = min(i0 + bi, n)
        for i in range(i0, i1):
            for j in range(m):
                out[i, j] = zero
        for k0 in range(0, k, bk):
            k1 = min(k0 + bk, k)
            for i in range(i0, i1):
                for kk in range(k0, k1):
                    aik = a[i, kk]
                    for j in range(m):
                        out[i, j] += aik * b[kk, j]
