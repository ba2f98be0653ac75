"""Numba kernels for the CPU hot loop, each a plain Python loop bound twice: serial and parallel.

Every kernel here is first written as an ordinary Python function over NumPy arrays, so it can be
read (and tested through ``.py_func``) as plain code; :func:`bind` compiles it with ``njit`` once
serially and once with ``parallel=True``, where ``prange`` splits the outer loop over threads.
Small problems run the serial binding (a parallel launch costs microseconds), large ones the
parallel one, except inside a training loop whose GEMMs run on several BLAS threads
(``config.parallel_kernels``). All kernels write into preallocated ``out`` arrays and allocate
nothing (the training loop, :func:`dense_stack_train`, allocates its few small buffers once per
call, before its first step).

Constants are typed from the arrays (``zero = z.dtype.type(0)``): a bare ``0`` or ``1`` would
make Numba promote float32 arithmetic to float64, which is slower (no float32 SIMD) and not
the float32 arithmetic the NumPy reference does.

Activation codes (shared with :mod:`nnlite.backend.numba_backend`):
    0 linear   1 relu   2 sigmoid   3 tanh   4 softmax

Importing this module imports Numba; nnlite imports it only when the Numba backend is selected.
"""

from __future__ import annotations

import math
import types

import numba
import numpy as np
from numba import prange

from nnlite import config

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
        self.parallel = (numba.njit(parallel=True, **options)(_twin(fn, "parallel")) if parallel
                         else self.serial)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __call__(self, size, *args):
        parallel = size >= PARALLEL_THRESHOLD and config.parallel_kernels()
        return (self.parallel if parallel else self.serial)(*args)


def _twin(fn, suffix: str):
    """``fn`` under another qualified name.

    Numba's disk cache keys a function by module, qualified name and signature, not by compile
    options: without this, the serial and the parallel binding of one loop would share cache
    entries, and whichever was compiled first would be loaded for both.
    """
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = f"{fn.__qualname__}.{suffix}"
    twin.__doc__ = fn.__doc__
    return twin


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


@numba.njit(cache=True, error_model="numpy")
def _row_exp(row, out):
    """``out = exp(row − max(row))``, one exp per element; returns ``(max, Σ out)`` (the sum in
    float64). Then logsumexp(row) = max + log Σ and softmax(row) = out / Σ."""
    top = row[0]
    for j in range(1, row.size):
        if row[j] > top:
            top = row[j]
    s = 0.0
    for j in range(row.size):
        # Shift by the row maximum so exp cannot overflow.
        e = math.exp(row[j] - top)
        out[j] = e
        s += e
    return top, s


@bind()
def softmax_xent_sparse(logits, labels, dlogits):
    """Mean cross-entropy of softmax(logits) against integer labels, and ``(p − onehot)/N``.

    Shapes:
        logits, dlogits: (N, C)   labels: (N,) integers   ->  loss (float64 scalar)
    Math (e = exp(z − max_n), s_n = Σ_c e[n, c]; one exp per element):
        loss = (1/N) Σ_n (log s_n − (z[n, y_n] − max_n))
        dlogits[n, c] = (e[n, c] / s_n − [c = y_n]) / N
    """
    n, c = logits.shape
    total = 0.0
    for i in prange(n):
        out = dlogits[i]
        top, s = _row_exp(logits[i], out)
        label = labels[i]
        total += math.log(s) - (logits[i, label] - top)
        e_label = out[label]
        for j in range(c):
            out[j] = out[j] / s / n
        # p − 1 before dividing by N: when p ≈ 1, p/N − 1/N would cancel catastrophically.
        out[label] = (e_label / s - 1) / n
    return total / n


@bind()
def softmax_xent_dense(logits, target, dlogits):
    """As :func:`softmax_xent_sparse` with one-hot (or soft) targets ``t`` of shape (N, C).

    Math:
        loss = (1/N) Σ_n Σ_c t[n, c] (log s_n − (z[n, c] − max_n))
        dlogits = (e / s − t) / N
    """
    n, c = logits.shape
    total = 0.0
    for i in prange(n):
        out = dlogits[i]
        top, s = _row_exp(logits[i], out)
        log_s = math.log(s)
        row = 0.0
        for j in range(c):
            row -= target[i, j] * (logits[i, j] - top - log_s)
            out[j] = (out[j] / s - target[i, j]) / n
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


def softmax_xent(logits, target, dlogits):
    """:func:`softmax_xent_sparse` or :func:`softmax_xent_dense`, chosen by ``target.ndim``
    (in compiled code the choice is made once, when the caller is typed)."""
    kernel = softmax_xent_sparse if target.ndim == 1 else softmax_xent_dense
    return kernel.py_func(logits, target, dlogits)


@numba.extending.overload(softmax_xent, jit_options={"error_model": "numpy"})
def _softmax_xent_numba(logits, target, dlogits):
    kernel = softmax_xent_sparse.serial if target.ndim == 1 else softmax_xent_dense.serial

    def impl(logits, target, dlogits):
        return kernel(logits, target, dlogits)

    return impl


# ----------------------------------------------------------------------------------------------
# A whole training step of a stack of Dense layers: forward, loss, backward in one call
#
# For small layers a step is dominated by Python: per layer a dispatch, buffer look-ups and a
# few NumPy calls of ~1-5 µs each, against a few µs of arithmetic at batch size 1. Here the
# whole step is one compiled function: the GEMMs go to BLAS through ``np.dot`` (Numba calls
# the BLAS ``gemm`` directly), the element-wise work runs the serial kernels above.
#
# Every array lives in one of three flat vectors, so the call is the same whatever the depth:
# ``params`` and ``grads`` (the model's packed parameters and gradients) and ``work`` (z, y, dz
# and dx of every layer for one batch size). ``layout[l]`` holds layer l's offsets (-1: absent):
#     0 D_in   1 D_out   2 kernel   3 bias   4 z   5 y   6 dz   7 dx
# ----------------------------------------------------------------------------------------------

D_IN, D_OUT, KERNEL, BIAS, Z, Y, DZ, DX = range(8)


@numba.njit(cache=True, error_model="numpy")
def _matrix(flat, offset, rows, cols):
    """The (rows, cols) C-ordered view of ``flat`` starting at ``offset``."""
    return flat[offset:offset + rows * cols].reshape(rows, cols)


#: Largest batch (K of the weight gradient a_prevᵀ · dz) for which the compiled step packs dz
#: and uses :func:`gemm_packed`: a panel is then at most 32 KB and stays in L1 while every
#: row tile of dW reads it; past that BLAS's own blocking of K does better.
PACKED_MAX_K = 256
#: Fewest batch rows (up to PACKED_MAX_K) for which the compiled step also packs a layer's
#: kernel for its forward GEMM, when the layer is at least a panel wide: packing d_in × d_out
#: elements pays off over this many rows of the product (measured at 784×50 on one core: 32
#: rows 25 against BLAS's 31 µs, 16 rows 17 against 13).
PACKED_MIN_ROWS = 32


@numba.njit(cache=True)
def step_scratch_size(n, layout):
    """Elements of the scratch :func:`dense_stack_step` needs for a batch of n rows: the
    largest of the packed dz and (from PACKED_MIN_ROWS rows) packed kernels it forms; 0 when
    the batch is too large to be packed."""
    if n > PACKED_MAX_K:
        return 0
    width = PANEL_BYTES // 4  # float32 panels: the most columns (float64's hold half)
    widest = 0
    rows = n
    for layer in range(layout.shape[0]):
        widest = max(widest, layout[layer, D_OUT])
        if n >= PACKED_MIN_ROWS:
            rows = max(rows, layout[layer, D_IN])
    return (widest + width - 1) // width * rows * width


@numba.njit(cache=True, error_model="numpy")
def _panels(flat, k, n):
    """A whole-array view of ``flat`` with :func:`panel_shape` (k, n): panels for a (k, n)
    right factor."""
    width = PANEL_BYTES // flat.itemsize
    count = (n + width - 1) // width
    return flat[:count * k * width].reshape(count, k, width)


def dense_stack_step(x, target, params, grads, work, layout, codes, scratch):
    """Forward, fused softmax cross-entropy and backward of a Dense stack; returns the loss.

    Shapes:
        x: (N, D_in of layer 0), C-ordered   target: (N,) labels or (N, C) one-hot
        params, grads, work: flat vectors    layout: (L, 8) int64 offsets   codes: (L,) int64
        scratch: flat, at least ``step_scratch_size(N, layout)`` elements
    Math (a₀ = x, layers l = 1 … L, f_L = softmax or linear; the loss reads z_L as logits):
        forward   z_l = a_{l−1} · W_l + b_l      a_l = f_l(z_l)
        loss      (1/N) Σ_n Σ_c t[n, c] (logsumexp(z_L[n]) − z_L[n, c])   (t: one-hot labels)
        backward  dz_L = (softmax(z_L) − t) / N
                  dW_l = a_{l−1}ᵀ · dz_l     db_l = Σ_n dz_l[n]
                  dz_{l−1} = f'_{l−1}(z_{l−1}) ⊙ (dz_l · W_lᵀ)
    Writes z, a (y) and dz of every layer into ``work`` and dW, db into ``grads``. For a batch of
    at most PACKED_MAX_K rows, dW is :func:`gemm_packed` on dz packed into ``scratch`` (the same
    sums as BLAS's product, in the same order), and from PACKED_MIN_ROWS rows z is too, on the
    layer's kernel packed there, for layers at least a panel wide: W1 (784-50-50-10, row blocks
    of 50) took 3-5% less time an epoch with the first, 8-10% less again with the second.
    """
    n = x.shape[0]
    last = layout.shape[0] - 1
    a = x
    packed_forward = PACKED_MIN_ROWS <= n <= PACKED_MAX_K
    for layer in range(last + 1):
        d_in, d_out = layout[layer, D_IN], layout[layer, D_OUT]
        z = _matrix(work, layout[layer, Z], n, d_out)
        kernel = _matrix(params, layout[layer, KERNEL], d_in, d_out)
        if packed_forward and d_out * x.itemsize >= PANEL_BYTES:
            panels = _panels(scratch, d_in, d_out)
            pack_panels(kernel, panels)
            gemm_packed(a, panels, z)
        else:
            np.dot(a, kernel, z)
        has_bias = layout[layer, BIAS] >= 0
        bias = params[max(layout[layer, BIAS], 0):][:d_out]
        y = _matrix(work, layout[layer, Y], n, d_out)
        bias_activation_forward_serial(z, bias, has_bias, codes[layer], y)
        a = y
    z_last = _matrix(work, layout[last, Z], n, layout[last, D_OUT])
    dy = _matrix(work, layout[last, DZ], n, layout[last, D_OUT])
    loss = softmax_xent(z_last, target, dy)
    for layer in range(last, -1, -1):
        d_in, d_out = layout[layer, D_IN], layout[layer, D_OUT]
        # The last layer's dy is already dz (the fused loss differentiates w.r.t. the logits).
        code = LINEAR if layer == last else codes[layer]
        dz = _matrix(work, layout[layer, DZ], n, d_out)
        has_bias = layout[layer, BIAS] >= 0
        dbias = grads[max(layout[layer, BIAS], 0):][:d_out]
        activation_backward_bias_serial(dy, _matrix(work, layout[layer, Z], n, d_out),
                                        _matrix(work, layout[layer, Y], n, d_out), code, dz,
                                        dbias, has_bias)
        a_prev = x if layer == 0 else _matrix(work, layout[layer - 1, Y], n, d_in)
        dkernel = _matrix(grads, layout[layer, KERNEL], d_in, d_out)
        if n <= PACKED_MAX_K:
            panels = _panels(scratch, n, d_out)
            pack_panels(dz, panels)
            gemm_packed(a_prev.T, panels, dkernel)
        else:
            np.dot(a_prev.T, dz, dkernel)
        if layer > 0:
            dy = _matrix(work, layout[layer, DX], n, d_in)
            np.dot(dz, _matrix(params, layout[layer, KERNEL], d_in, d_out).T, dy)
    return loss


bias_activation_forward_serial = bias_activation_forward.serial
activation_backward_bias_serial = activation_backward_bias.serial
dense_stack_step = numba.njit(cache=True, error_model="numpy")(dense_stack_step)


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


# Many steps in one call. At W1's size (784-50-50-10, batch 100) a step's arithmetic takes
# ~300 µs and the Python around it (batch gather and dispatch, optimizer call, loss check)
# another ~100 µs, so ``fit`` hands whole runs of full batches to one compiled loop when
# nothing needs Python between two steps (no per-batch callback, no metric but accuracy).

#: Update rules the compiled loop knows; ``scalars[s]`` holds step s's values, in this order:
#:     sgd (lr)   momentum, nesterov (lr, μ)   adam (alpha_t, 1 − β₁, 1 − β₂, ε̂)
#:     rmsprop, rmsprop_momentum, rmsprop_centered (lr, ρ, 1 − ρ, ε, μ)
SGD, MOMENTUM, NESTEROV, ADAM, RMSPROP, RMSPROP_MOMENTUM, RMSPROP_CENTERED = range(7)
RULES = {"sgd": SGD, "momentum": MOMENTUM, "nesterov": NESTEROV, "adam": ADAM,
         "rmsprop": RMSPROP, "rmsprop_momentum": RMSPROP_MOMENTUM,
         "rmsprop_centered": RMSPROP_CENTERED}

gather_rows_serial = gather_rows.serial
sgd_update_serial = sgd_update.serial
sgd_momentum_update_serial = sgd_momentum_update.serial
adam_update_serial = adam_update.serial
rmsprop_update_serial = rmsprop_update.serial


@bind()
def dense_stack_train(data, targets, order, xb, tb, params, grads, work, layouts, codes,
                      rule, state1, state2, scalars, tiny, losses, part_grads, correct):
    """Steps s = 0, 1, … of a Dense stack, each one batch plus its optimizer update.

    Shapes:
        data: (N, D_in)   targets: (N,) labels or (N, C) one-hot   order: (S·B,) row indices
        xb: (B, D_in) and tb: (B,) or (B, C) batch buffers   scalars: (S, k)   losses: (S,)
        layouts: (P, L, 8)   part_grads: (P, len(params))   correct: (S,) or (0,)
    Step s trains on rows ``order[s·B:(s+1)·B]`` (gathered into xb, tb with a cast to their
    dtypes), runs :func:`dense_stack_step`, writes its loss to ``losses[s]`` (and, when
    ``correct`` is not empty, how many of the batch's predictions were right to ``correct[s]``,
    as :func:`count_correct`), and updates ``params`` by ``rule`` (:data:`RULES`) with the
    state vectors and ``scalars[s]``. Stops after the first step whose loss is not finite, as
    ``fit`` does; returns the number of steps run.

    Row blocks (the parallel binding, P > 1): block h, rows r_h … r_{h+1} of the batch (n_h of
    them), runs its own forward and backward on its own thread, with ``layouts[h]`` (the batch's
    layout moved to its rows, so z and y of the whole batch land in ``work`` as without blocks)
    and its own gradient vector ``part_grads[h]``; then each thread takes a slice of the
    parameters:  g = Σ_h (n_h / B) · part_grads[h]  and the update. The loss is Σ_h (n_h / B) ·
    loss_h. With P = 1, ``part_grads[0]`` is ``grads`` and nothing is combined.
    """
    batch = xb.shape[0]
    parts = layouts.shape[0]
    size = params.size
    part_loss = np.zeros(parts)
    part_correct = np.zeros(parts, np.int64)
    last = layouts.shape[1] - 1
    scratch_size = 0  # the largest block's (blocks differ by a row, maybe across a threshold)
    for h in range(parts):
        rows = (h + 1) * batch // parts - h * batch // parts
        scratch_size = max(scratch_size, step_scratch_size(rows, layouts[0]))
    scratch = np.empty((parts, scratch_size), params.dtype)
    for s in range(losses.size):
        index = order[s * batch:(s + 1) * batch]
        for h in prange(parts):
            r0, r1 = h * batch // parts, (h + 1) * batch // parts
            _gather_batch(data, targets, index, xb, tb, r0, r1)
            part_loss[h] = dense_stack_step(xb[r0:r1], tb[r0:r1], params, part_grads[h], work,
                                            layouts[h], codes, scratch[h])
            if correct.size:
                scores = _matrix(work, layouts[h, last, Y], r1 - r0, layouts[h, last, D_OUT])
                part_correct[h] = count_correct(scores, tb[r0:r1])
        loss = part_loss[0]
        if parts > 1:
            loss = 0.0
            for h in range(parts):
                loss += part_loss[h] * ((h + 1) * batch // parts - h * batch // parts) / batch
        losses[s] = loss
        if correct.size:
            correct[s] = part_correct.sum()
        k = scalars[s]
        for c in prange(parts):
            lo, hi = c * size // parts, (c + 1) * size // parts
            if parts > 1:
                _combine(part_grads, batch, grads, lo, hi)
            _update(rule, params, grads, state1, state2, k, tiny, lo, hi)
        if not np.isfinite(losses[s]):
            return s + 1
    return losses.size


@numba.njit(cache=True, error_model="numpy")
def _gather_batch(data, targets, index, xb, tb, r0, r1):
    """Rows r0 … r1 − 1 of a batch: ``xb[b] = data[index[b]]`` (cast), ``tb[b] = targets[…]``."""
    gather_rows_serial(data, index[r0:r1], xb[r0:r1])
    for b in range(r0, r1):
        tb[b] = targets[index[b]]


@numba.njit(cache=True, error_model="numpy")
def _update(rule, params, grads, state1, state2, k, tiny, lo, hi):
    """The update ``rule`` (:data:`RULES`) of elements lo … hi − 1 with the step's scalars k
    (SGD: lr; momentum, Nesterov: lr, μ; Adam: alpha, 1 − β₁, 1 − β₂, ε̂; RMSprop: lr, ρ,
    1 − ρ, ε, μ; the state: Adam's m, v, RMSprop's velocity and its momentum or its average
    gradient)."""
    p, g = params[lo:hi], grads[lo:hi]
    if rule == ADAM:
        adam_update_serial(p, g, state1[lo:hi], state2[lo:hi], k[0], k[1], k[2], k[3], tiny)
    elif rule >= RMSPROP:
        # state2 is the momentum (RMSPROP_MOMENTUM) or the average gradient (RMSPROP_CENTERED).
        rmsprop_update_serial(p, g, state1[lo:hi], k[0], k[1], k[2], k[3], k[4], state2[lo:hi],
                              rule == RMSPROP_MOMENTUM, state2[lo:hi], rule == RMSPROP_CENTERED,
                              tiny)
    elif rule == SGD:
        sgd_update_serial(p, g, k[0])
    else:
        sgd_momentum_update_serial(p, g, state1[lo:hi], k[0], k[1], rule == NESTEROV, tiny)


# ----------------------------------------------------------------------------------------------
# Wide stacks: each layer split by columns over Numba's threads, BLAS on one thread
#
# A wide layer's step (W3: 784-1024-1024-10, batch 128) is GEMMs that BLAS splits over its own
# threads, then the optimizer's pass over every parameter (1.86 M at W3, ~1 ms, memory-bound),
# which runs on one core: BLAS's threads spin while they wait for the next GEMM, and Numba's
# threads woken beside them fight them for the cores (measured: twice as slow). So here Numba's
# threads run everything, BLAS on one thread: each GEMM as one BLAS call per block of output
# columns (on strided views, no copies), the element-wise passes by batch rows (contiguous, so
# they vectorise), and the weight gradient by blocks of the kernel's rows, each thread updating
# the rows it has just differentiated. For batches of at most PACKED_MAX_K rows the forward
# GEMMs run on the packed kernel instead (below), on copies of the kernels packed once per call
# and kept current by the update. Each element is summed in the same order as in the one-thread
# step, which multiplies batches of PACKED_MIN_ROWS to PACKED_MAX_K rows by packed kernels too;
# only BLAS may round a narrow block differently from the whole product (at W3's shapes the
# results are the same bits), and under PACKED_MIN_ROWS rows the forward products round apart
# (packed here, BLAS there).
# ----------------------------------------------------------------------------------------------

#: Fewest columns (of a GEMM's output or of its kernel's rows) a thread takes, and fewest batch
#: rows for the element-wise work: narrower splits run whole, on one thread.
MIN_COLUMNS = 64
MIN_ROWS = 32


def gemm(trans_a, trans_b, a, b, out):
    """``out = op(a) · op(b)`` into ``out``, where op(x) is xᵀ when its flag is set.

    Shapes: op(a) (M, K), op(b) (K, N), out (M, N); each a 2-d view (of a C-ordered array)
    whose rows may be strided but whose elements within a row are contiguous, so a block of
    columns of a larger matrix is a valid argument. Compiled, one BLAS ``gemm`` call on the
    views as they are (no copy); the calling thread's BLAS threads do the work.
    """
    out[...] = np.dot(a.T if trans_a else a, b.T if trans_b else b)


@numba.extending.intrinsic
def _pointer(typingctx, array):
    """The address of ``array``'s first element, as a ``void*``."""

    def codegen(context, builder, signature, args):
        data = context.make_array(array)(context, builder, args[0]).data
        return builder.bitcast(data, context.get_value_type(numba.types.voidptr))

    return numba.types.voidptr(array), codegen


@numba.extending.intrinsic
def _pointer_to(typingctx, value):
    """The address of a copy of scalar ``value`` on the caller's stack, as a ``void*``."""

    def codegen(context, builder, signature, args):
        from numba.core import cgutils

        slot = cgutils.alloca_once_value(builder, args[0])
        return builder.bitcast(slot, context.get_value_type(numba.types.voidptr))

    return numba.types.voidptr(value), codegen


# Numba's own BLAS entry point (what its np.dot calls): SciPy's ?gemm for kind 's' or 'd'.
_xxgemm = numba.types.ExternalFunction("numba_xxgemm", numba.types.intc(
    numba.types.char, numba.types.char, numba.types.char, numba.types.intp, numba.types.intp,
    numba.types.intp, numba.types.voidptr, numba.types.voidptr, numba.types.intp,
    numba.types.voidptr, numba.types.intp, numba.types.voidptr, numba.types.voidptr,
    numba.types.intp))


@numba.extending.overload(gemm, jit_options={"error_model": "numpy"})
def _gemm_numba(trans_a, trans_b, a, b, out):
    from numba.np.linalg import ensure_blas

    ensure_blas()
    kind = ord("s") if out.dtype == numba.types.float32 else ord("d")
    no, yes = ord("N"), ord("T")

    def impl(trans_a, trans_b, a, b, out):
        # BLAS is column-major: a C-ordered (M, N) view with row stride ld is, to BLAS, the
        # (N, M) matrix outᵀ with leading dimension ld. So it computes outᵀ = op(b)ᵀ·op(a)ᵀ,
        # with b first and each flag passed on unchanged.
        m, n = out.shape
        k = a.shape[0] if trans_a else a.shape[1]
        if m == 0 or n == 0 or k == 0:  # BLAS rejects a leading dimension of 0
            out[:, :] = 0
            return
        size = out.itemsize
        one, zero = out.dtype.type(1), out.dtype.type(0)
        _xxgemm(kind, yes if trans_b else no, yes if trans_a else no, n, m, k,
                _pointer_to(one), _pointer(b), b.strides[0] // size, _pointer(a),
                a.strides[0] // size, _pointer_to(zero), _pointer(out), out.strides[0] // size)

    return impl


@numba.njit(cache=True)
def split(size, smallest, threads):
    """How many of ``threads`` threads share ``size`` rows or columns, each taking ≥ smallest."""
    return max(1, min(threads, size // smallest))


def dense_stack_train_columns(data, targets, order, xb, tb, params, grads, work, layout, codes,
                              rule, state1, state2, scalars, tiny, losses, correct, threads,
                              panels):
    """:func:`dense_stack_train` with one batch (no row blocks) whose GEMMs are split over
    ``threads`` threads; the same arguments (``layout``: (L, 8), the batch's own), and
    ``panels``, scratch of :func:`columns_panels_size` elements.

    Per step, with thread k taking rows R of the batch, columns J of a layer's output or rows
    I of its kernel (each a contiguous range; the GEMMs write strided blocks in place):
        forward   z_l[:, J] = a_{l−1} · W_l[:, J]
                  z_l[R] += b_l      a_l[R] = f_l(z_l[R])
        backward  dz_l[R] = f'_l(z_l[R]) ⊙ dy_l[R]
                  dy_{l−1}[:, I] = dz_l · W_l[I, :]ᵀ           (I: columns of the input)
                  dW_l[I] = a_{l−1}[:, I]ᵀ · dz_l, then the update of W_l[I]
                  db_l[J] = Σ_n dz_l[n, J], then the update of b_l[J]
    A layer's weights are updated after its input gradient has read them, as one update after
    the whole backward pass would: the step is :func:`dense_stack_step` plus the rule, and the
    element-wise work and bias sums run in the same order as there.

    The forward GEMM of a layer at least a panel wide (as in :func:`dense_stack_step`) runs on
    :func:`gemm_packed`, J a whole number of panels: each such kernel is packed into
    ``panels`` when the call starts, and each thread's update repacks the rows I it has just
    changed, so the copy stays current without a packing pass per step (W3, 784-1024-1024-10
    at batch 128: BLAS 1.9 ms a step for these GEMMs against 1.5 ms, and the repacking costs
    ~0.2 ms).
    """
    batch = xb.shape[0]
    last = layout.shape[0] - 1
    rows = split(batch, MIN_ROWS, threads)
    width = PANEL_BYTES // params.itemsize
    starts = np.zeros(last + 2, np.int64)  # layer l's panels: panels[starts[l]:starts[l + 1]]
    for layer in range(last + 1):
        d_in, d_out = layout[layer, D_IN], layout[layer, D_OUT]
        starts[layer + 1] = starts[layer] + _kernel_panels_size(batch, d_in, d_out, width)
        if starts[layer + 1] > starts[layer]:
            kernel = _matrix(params, layout[layer, KERNEL], d_in, d_out)
            inputs = split(d_in, MIN_COLUMNS, threads)
            for k in prange(inputs):
                pack_rows(kernel, _panels(panels[starts[layer]:], d_in, d_out),
                          k * d_in // inputs, (k + 1) * d_in // inputs)
    for s in range(losses.size):
        index = order[s * batch:(s + 1) * batch]
        for h in prange(rows):
            _gather_batch(data, targets, index, xb, tb, h * batch // rows,
                          (h + 1) * batch // rows)
        a = xb
        for layer in range(last + 1):
            d_in, d_out = layout[layer, D_IN], layout[layer, D_OUT]
            kernel = _matrix(params, layout[layer, KERNEL], d_in, d_out)
            z = _matrix(work, layout[layer, Z], batch, d_out)
            y = _matrix(work, layout[layer, Y], batch, d_out)
            bias = params[max(layout[layer, BIAS], 0):][:d_out]
            parts = split(d_out, MIN_COLUMNS, threads)
            if starts[layer + 1] > starts[layer]:
                count = (d_out + width - 1) // width
                for k in prange(parts):
                    p0, p1 = k * count // parts, (k + 1) * count // parts
                    j0, j1 = p0 * width, min(p1 * width, d_out)
                    gemm_packed(a, _panels(panels[starts[layer] + p0 * width * d_in:], d_in,
                                           j1 - j0), z[:, j0:j1])
            else:
                for k in prange(parts):
                    j0, j1 = k * d_out // parts, (k + 1) * d_out // parts
                    gemm(False, False, a, kernel[:, j0:j1], z[:, j0:j1])
            for h in prange(rows):
                r0, r1 = h * batch // rows, (h + 1) * batch // rows
                bias_activation_forward_serial(z[r0:r1], bias, layout[layer, BIAS] >= 0,
                                               codes[layer], y[r0:r1])
            a = y
        z_last = _matrix(work, layout[last, Z], batch, layout[last, D_OUT])
        dy = _matrix(work, layout[last, DZ], batch, layout[last, D_OUT])
        losses[s] = softmax_xent(z_last, tb, dy)
        if correct.size:
            correct[s] = count_correct(_matrix(work, layout[last, Y], batch,
                                               layout[last, D_OUT]), tb)
        k_s = scalars[s]
        for layer in range(last, -1, -1):
            d_in, d_out = layout[layer, D_IN], layout[layer, D_OUT]
            # The last layer's dy is already dz (the fused loss differentiates the logits).
            code = LINEAR if layer == last else codes[layer]
            kernel = _matrix(params, layout[layer, KERNEL], d_in, d_out)
            dkernel = _matrix(grads, layout[layer, KERNEL], d_in, d_out)
            z = _matrix(work, layout[layer, Z], batch, d_out)
            y = _matrix(work, layout[layer, Y], batch, d_out)
            dz = _matrix(work, layout[layer, DZ], batch, d_out)
            a_prev = xb if layer == 0 else _matrix(work, layout[layer - 1, Y], batch, d_in)
            for h in prange(rows):
                r0, r1 = h * batch // rows, (h + 1) * batch // rows
                activation_backward_bias_serial(dy[r0:r1], z[r0:r1], y[r0:r1], code,
                                                dz[r0:r1], grads[:0], False)
            inputs = split(d_in, MIN_COLUMNS, threads)
            if layer > 0:
                dy = _matrix(work, layout[layer, DX], batch, d_in)
                for k in prange(inputs):
                    i0, i1 = k * d_in // inputs, (k + 1) * d_in // inputs
                    gemm(False, True, dz, kernel[i0:i1], dy[:, i0:i1])
            for k in prange(inputs):
                i0, i1 = k * d_in // inputs, (k + 1) * d_in // inputs
                gemm(True, False, a_prev[:, i0:i1], dz, dkernel[i0:i1])
                at = layout[layer, KERNEL]
                _update(rule, params, grads, state1, state2, k_s, tiny, at + i0 * d_out,
                        at + i1 * d_out)
                if starts[layer + 1] > starts[layer]:
                    pack_rows(kernel, _panels(panels[starts[layer]:], d_in, d_out), i0, i1)
                at = layout[layer, BIAS]
                if at >= 0:
                    j0, j1 = k * d_out // inputs, (k + 1) * d_out // inputs
                    _column_sums(dz, j0, j1, grads[at:at + d_out])
                    _update(rule, params, grads, state1, state2, k_s, tiny, at + j0, at + j1)
        if not np.isfinite(losses[s]):
            return s + 1
    return losses.size


@numba.njit(cache=True)
def _kernel_panels_size(batch, d_in, d_out, width):
    """Elements of a (d_in, d_out) kernel's panels of ``width`` columns in the column-split
    loop; 0 where its forward GEMM stays in BLAS: a kernel narrower than a panel, or a batch
    of more than PACKED_MAX_K rows (one core, 784-1024 kernel: the packed kernel is 2x BLAS
    at 32 rows, 1.2x at 128, even at 512 and 0.9x at 2048)."""
    if d_out < width or batch > PACKED_MAX_K:
        return 0
    return (d_out + width - 1) // width * width * d_in


@numba.njit(cache=True)
def columns_panels_size(batch, layout, itemsize):
    """Elements of the ``panels`` scratch :func:`dense_stack_train_columns` needs for batches
    of ``batch`` rows through a stack of ``layout`` in a dtype of ``itemsize`` bytes: a packed
    copy of each kernel whose forward GEMM runs on the packed kernel."""
    size = 0
    for layer in range(layout.shape[0]):
        size += _kernel_panels_size(batch, layout[layer, D_IN], layout[layer, D_OUT],
                                    PANEL_BYTES // itemsize)
    return size


@numba.njit(cache=True, error_model="numpy")
def _column_sums(x, j0, j1, out):
    """``out[j] = Σ_n x[n, j]`` for j0 ≤ j < j1, summed down the rows in order (x C-ordered)."""
    for j in range(j0, j1):
        out[j] = x.dtype.type(0)
    for n in range(x.shape[0]):
        row = x[n]
        for j in range(j0, j1):
            out[j] += row[j]


dense_stack_train_columns = numba.njit(parallel=True, cache=True, error_model="numpy")(
    dense_stack_train_columns)


@numba.njit(cache=True, error_model="numpy")
def keras_argmax(row):
    """Index of the largest entry of ``row`` as Keras on TensorFlow ranks them (see
    ``nnlite.metrics._argmax``): -0.0 counts as smaller than +0.0, the first maximum wins, and
    as NumPy's argmax, the first NaN wins over everything."""
    tiny = np.finfo(row.dtype).tiny
    best, top = 0, row[0]
    if top == 0 and np.signbit(top):
        top = -tiny
    for j in range(1, row.size):
        if top != top:  # NaN
            break
        v = row[j]
        if v == 0 and np.signbit(v):
            v = -tiny
        if v > top or v != v:
            best, top = j, v
    return best


@numba.njit(cache=True, error_model="numpy")
def _correct_labels(scores, labels):
    count = 0
    for b in range(scores.shape[0]):
        count += keras_argmax(scores[b]) == labels[b]
    return count


@numba.njit(cache=True, error_model="numpy")
def _correct_onehot(scores, target):
    count = 0
    for b in range(scores.shape[0]):
        count += keras_argmax(scores[b]) == keras_argmax(target[b])
    return count


def count_correct(scores, target):
    """Rows whose :func:`keras_argmax` is the label (``target`` (N,)) or the one-hot row's
    (``target`` (N, C)): the sum of Keras's sparse or categorical accuracy over the batch.
    (In compiled code the choice is made once, when the caller is typed.)"""
    kernel = _correct_labels if target.ndim == 1 else _correct_onehot
    return kernel.py_func(scores, target)


@numba.extending.overload(count_correct, jit_options={"error_model": "numpy"})
def _count_correct_numba(scores, target):
    kernel = _correct_labels if target.ndim == 1 else _correct_onehot

    def impl(scores, target):
        return kernel(scores, target)

    return impl


@numba.njit(cache=True, error_model="numpy")
def _combine(part_grads, batch, grads, lo, hi):
    """``grads[lo:hi] = Σ_h (n_h / B) · part_grads[h, lo:hi]`` for P equal-as-can-be blocks."""
    parts = part_grads.shape[0]
    for h in range(parts):
        weight = grads.dtype.type(((h + 1) * batch // parts - h * batch // parts) / batch)
        for i in range(lo, hi):
            if h == 0:
                grads[i] = part_grads[0, i] * weight
            else:
                grads[i] += part_grads[h, i] * weight


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


# ----------------------------------------------------------------------------------------------
# A GEMM whose right factor is packed once and reused: the LSTM's per-step products
#
# An LSTM walk multiplies a thin block of batch rows by the same weights at every step: θ,
# (U+D+1) × 4U, forward, and Rᵀ, 4U × U, backward. BLAS repacks its operands into its own
# layout on every call, and at such thin shapes it reaches 105 GFLOP/s on one core (50×157×512:
# 75 µs), against ~180 for large products. Here the weights are packed once per walk into
# panels of w columns (:func:`panel_width`: two 64-byte vectors),
# ``panels[p, k, :] = B[k, p·w:(p+1)·w]`` (zeros past the last column), and a micro-kernel
# computes each TILE_ROWS × w block of the output in registers (the Dense loops use it too,
# for batches of at most PACKED_MAX_K rows: the compiled step for its weight gradients on dz
# packed, and from PACKED_MIN_ROWS rows its forward GEMMs on each kernel packed at the step;
# the column-split loop for its forward GEMMs on kernels it keeps packed):
#
#     for k in 0..K−1:  acc[i, :] += a[i, k] · panels[p, k, :]     (i < TILE_ROWS)
#
# one vector load of the panel's row, one broadcast of a[i, k] and one fused multiply-add per
# output vector, each output written once at the end (50×157×512: 48 µs, 165 GFLOP/s). Each
# element is its K terms summed in order, k = 0, 1, …, K−1.
#
# The micro-kernel is LLVM IR written through a Numba intrinsic: its vectors are 64 bytes
# (16 float32 or 8 float64), so a CPU with AVX-512 uses all of its width (LLVM's own loop
# vectoriser prefers 32-byte vectors on such CPUs); elsewhere LLVM splits them. ``llvm.fmuladd``
# is one FMA instruction where the CPU has one, a multiply and an add where it has not.
# ----------------------------------------------------------------------------------------------

#: Rows of the output one micro-kernel call computes (2·TILE_ROWS vector accumulators).
TILE_ROWS = 8
#: Bytes of one row of a panel: two 64-byte vectors (32 float32 or 16 float64 columns).
PANEL_BYTES = 128


def panel_width(dtype) -> int:
    """Columns of a panel: PANEL_BYTES of ``dtype`` (32 float32 or 16 float64)."""
    return PANEL_BYTES // np.dtype(dtype).itemsize


def panel_shape(k: int, n: int, dtype) -> tuple:
    """Shape of the panels holding a (k, n) right factor: (⌈n / width⌉, k, width)."""
    width = panel_width(dtype)
    return (-(-n // width), k, width)


def _tile_kernel(rows):
    """The micro-kernel for ``rows`` output rows, as a Numba intrinsic:

        tile(a, row, panels, p, out, col, cols)
        out[row + i, col + j] = Σ_k a[row + i, k] · panels[p, k, j]    i < rows, j < cols

    ``a`` is a 2-d view with any strides, ``out`` one whose rows are contiguous (each row's
    vectors are stored whole); K is ``panels.shape[1]`` (at least 1) and ``cols`` ≤ the
    panel's width (masked stores beyond it). It reads and writes only those elements, and
    checks no bound: the caller does.
    """

    @numba.extending.intrinsic
    def tile(typingctx, a, row, panels, p, out, col, cols):
        arrays = (a, panels, out)
        if not all(isinstance(x, numba.types.Array) and x.dtype == a.dtype for x in arrays):
            return None
        if a.dtype not in (numba.types.float32, numba.types.float64) or panels.layout != "C":
            return None  # (panel p's offset is computed from the shape: a whole C array only)
        sig = numba.types.void(a, row, panels, p, out, col, cols)

        def codegen(context, builder, signature, args):
            from llvmlite import ir
            from numba.core import cgutils

            a_arr, p_arr, o_arr = (context.make_array(signature.args[i])(context, builder,
                                                                         args[i])
                                   for i in (0, 2, 4))
            row_v, p_v, col_v, cols_v = (
                context.cast(builder, args[i], signature.args[i], numba.types.int64)
                for i in (1, 3, 5, 6))
            scalar = context.get_value_type(signature.args[0].dtype)
            size = context.get_abi_sizeof(scalar)
            lanes = PANEL_BYTES // 2 // size  # a vector: half a panel's row
            vec = ir.VectorType(scalar, lanes)
            i32, i64 = ir.IntType(32), ir.IntType(64)
            mask_type = ir.VectorType(ir.IntType(1), lanes)
            suffix = f"v{lanes}f{8 * size}"

            def intrinsic(name, result, *operands):
                return cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(result, operands), f"llvm.{name}")

            fmuladd = intrinsic(f"fmuladd.{suffix}", vec, vec, vec, vec)
            store = intrinsic(f"masked.store.{suffix}.p0", ir.VoidType(), vec,
                              vec.as_pointer(), i32, mask_type)

            def const(v):
                return ir.Constant(i64, v)

            def elements(strides):  # byte strides → element strides
                return [builder.sdiv(s, const(size)) for s in cgutils.unpack_tuple(builder,
                                                                                   strides, 2)]

            a_row, a_col = elements(a_arr.strides)
            o_row = elements(o_arr.strides)[0]
            k_v = cgutils.unpack_tuple(builder, p_arr.shape, 3)[1]
            a_rows = [builder.gep(a_arr.data, [builder.mul(builder.add(row_v, const(i)), a_row)])
                      for i in range(rows)]
            b_base = builder.gep(p_arr.data,
                                 [builder.mul(builder.mul(p_v, k_v), const(2 * lanes))])
            # out's 2·rows vectors, and which of their lanes lie before column col + cols
            splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
            undef = ir.Constant(vec, ir.Undefined)
            limit = builder.shuffle_vector(
                builder.insert_element(ir.Constant(ir.VectorType(i64, lanes), ir.Undefined),
                                       cols_v, ir.Constant(i32, 0)),
                ir.Constant(ir.VectorType(i64, lanes), ir.Undefined), splat)
            masks = [builder.icmp_signed("<", ir.Constant(ir.VectorType(i64, lanes),
                                                          [lanes * j + v for v in range(lanes)]),
                                         limit) for j in range(2)]
            targets = [builder.bitcast(builder.gep(o_arr.data, [builder.add(
                builder.mul(builder.add(row_v, const(i)), o_row),
                builder.add(col_v, const(lanes * j)))]), vec.as_pointer())
                for i in range(rows) for j in range(2)]
            zero = ir.Constant(vec, None)
            alignment = ir.Constant(i32, size)
            start = builder.basic_block
            loop = builder.append_basic_block("tile.loop")
            done = builder.append_basic_block("tile.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(const(0), start)
            acc = [builder.phi(vec) for _ in range(2 * rows)]
            for phi in acc:
                phi.add_incoming(zero, start)
            b_row = builder.gep(b_base, [builder.mul(k, const(2 * lanes))])
            b = [builder.load(builder.bitcast(builder.gep(b_row, [const(lanes * j)]),
                                              vec.as_pointer()), align=size) for j in range(2)]
            new = []
            for i in range(rows):
                a_ik = builder.load(builder.gep(a_rows[i], [builder.mul(k, a_col)]))
                a_vec = builder.shuffle_vector(
                    builder.insert_element(undef, a_ik, ir.Constant(i32, 0)), undef, splat)
                new += [builder.call(fmuladd, [a_vec, b[j], acc[2 * i + j]]) for j in range(2)]
            k_next = builder.add(k, const(1))
            k.add_incoming(k_next, builder.basic_block)
            for phi, value in zip(acc, new):
                phi.add_incoming(value, builder.basic_block)
            builder.cbranch(builder.icmp_signed("<", k_next, k_v), loop, done)
            builder.position_at_end(done)
            for n, (value, target) in enumerate(zip(new, targets)):
                builder.call(store, [value, target, alignment, masks[n % 2]])
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile1, _tile2, _tile4, _tile8 = (_tile_kernel(rows) for rows in (1, 2, 4, TILE_ROWS))


def pack_panels(b, panels):
    """Pack ``b`` (K, N), any 2-d view (a transposed one too), into ``panels`` of shape
    :func:`panel_shape` ``(K, N, dtype)``: ``panels[p, k, j] = b[k, p·width + j]``, zero past
    column N."""
    pack_rows(b, panels, 0, b.shape[0])


def pack_rows(b, panels, r0, r1):
    """Rows r0 … r1 − 1 of ``b`` into its ``panels``, as :func:`pack_panels` packs every row
    (to keep panels current where only some rows of ``b`` changed)."""
    width = panels.shape[2]
    n = b.shape[1]
    zero = panels.dtype.type(0)
    for k in range(r0, r1):
        for p in range(panels.shape[0]):
            line = panels[p, k]
            for j in range(width):
                col = p * width + j
                line[j] = b[k, col] if col < n else zero


def gemm_packed(a, panels, out):
    """``out = a · B``, where ``panels`` (a whole C-ordered array of :func:`panel_shape`, not a
    view into one) hold B (K, N) as :func:`pack_panels` wrote them.

    Shapes: a (M, K), any 2-d view (a transposed one too); out (M, N), a 2-d view whose rows
    are contiguous (a block of columns of a C-ordered matrix will do; a ValueError otherwise);
    all of one dtype. Compiled, the micro-kernel runs over tiles of TILE_ROWS rows by one panel
    (the last rows in smaller tiles, the last panel's missing columns masked); no BLAS, no
    allocation.
    """
    if out.shape[1] > 1 and out.strides[1] != out.itemsize:
        raise ValueError("gemm_packed: expected `out` with contiguous rows, received strides "
                         f"{out.strides}")
    count, k, width = panels.shape
    b = panels.transpose(1, 0, 2).reshape(k, count * width)
    out[...] = np.dot(a, b[:, :out.shape[1]])


@numba.extending.overload(gemm_packed, jit_options={"error_model": "numpy"})
def _gemm_packed_numba(a, panels, out):
    def impl(a, panels, out):
        m, n = out.shape
        width = panels.shape[2]
        if n > 1 and out.strides[1] != out.itemsize:
            raise ValueError("gemm_packed: expected `out` with contiguous rows")
        if panels.shape[1] == 0:  # an empty sum
            out[:, :] = 0
            return
        for p in range(panels.shape[0]):
            col = p * width
            cols = min(width, n - col)
            row = 0
            while row + TILE_ROWS <= m:
                _tile8(a, row, panels, p, out, col, cols)
                row += TILE_ROWS
            if m - row >= 4:  # the last m mod 8 rows: 4 + 2 + 1 at most
                _tile4(a, row, panels, p, out, col, cols)
                row += 4
            if m - row >= 2:
                _tile2(a, row, panels, p, out, col, cols)
                row += 2
            if m - row == 1:
                _tile1(a, row, panels, p, out, col, cols)

    return impl


pack_rows = numba.njit(cache=True, error_model="numpy")(pack_rows)
pack_panels = numba.njit(cache=True, error_model="numpy")(pack_panels)


# ----------------------------------------------------------------------------------------------
# LSTM: one time step, the four gates fused per batch row (the step's GEMM comes before)
#
# Numba's math.exp/math.tanh are scalar libm calls (no vector math library here): ~7 and ~35 ns
# per float32 element against ~1 ns for NumPy's SIMD loops. So the kernels compute exp with a
# short polynomial that LLVM vectorises (range reduction x = k·ln2 + r, |r| ≤ ln2/2, then
# eʳ by Horner and 2ᵏ by writing the exponent bits), and sigmoid and tanh from it, each
# multiply-add one FMA instruction (fastmath "contract": 0.54 → 0.33 ns a float32 sigmoid).
# Measured accuracy: exp 8e-8 relative in float32 (NumPy's np.exp: 2e-7), 3e-16 in float64;
# sigmoid and tanh within 2e-7 (float32) and 5e-16 (float64) absolute. Each helper is a plain
# Python function (what ``.py_func`` runs) with a Numba overload typed by the argument, so
# float32 stays float32 inside the loops.
# ----------------------------------------------------------------------------------------------


@numba.extending.intrinsic
def _bits_to_float32(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of integer ``bits`` (no conversion)."""

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())

    return numba.types.float32(bits), codegen


@numba.extending.intrinsic
def _bits_to_float64(typingctx, bits):
    """The float64 whose bit pattern is the 64-bit integer ``bits`` (no conversion)."""

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        return builder.bitcast(args[0], ir.DoubleType())

    return numba.types.float64(bits), codegen


def lstm_exp(x):
    """``exp(x)``; in Numba a vectorisable polynomial, its input clamped to ±87 (float32) or
    ±708 (float64) so that it and 1/(1 + it) stay normal numbers."""
    return math.exp(x)


def lstm_sigmoid(x):
    """``1 / (1 + exp(−x))``."""
    return 0.5 * (1 + math.tanh(0.5 * x))  # the same function, without exp overflow in Python


def lstm_tanh(x):
    """``tanh(x)``; in Numba ``1 − 2 / (exp(2x) + 1)``, with a Taylor polynomial for |x| < 1/16
    where that difference would cancel."""
    return math.tanh(x)


_F32 = np.float32

# fastmath "contract": a multiply and the add that uses it may become one FMA (one rounding
# instead of two), so each Horner step is one instruction; no other fast-math liberty.
_MATH_OPTIONS = {"error_model": "numpy", "fastmath": {"contract"}}


@numba.extending.overload(lstm_exp, jit_options=_MATH_OPTIONS)
def _lstm_exp_numba(x):
    if isinstance(x, numba.types.Float) and x.bitwidth == 32:

        def exp32(x):
            # Clamp to ±87, where exp and 1/(1 + exp) are still normal numbers: subnormals
            # are slow on x86. So sigmoid(x ≪ 0) is ~1e-38 instead of 0; tanh(±large) = ±1.
            xc = min(max(x, _F32(-87.0)), _F32(87.0))
            k = np.floor(xc * _F32(1.4426950408889634) + _F32(0.5))
            # ln2 split in two (Cody & Waite) so k·ln2 is subtracted without rounding error.
            r = xc - k * _F32(0.693359375) - k * _F32(-2.12194440e-4)
            p = _F32(1 / 5040)
            p = p * r + _F32(1 / 720)
            p = p * r + _F32(1 / 120)
            p = p * r + _F32(1 / 24)
            p = p * r + _F32(1 / 6)
            p = p * r + _F32(0.5)
            p = p * r + _F32(1)
            p = p * r + _F32(1)
            # k to int32 (not int64): a cheaper vector conversion, and LLVM narrows the
            # integer arithmetic before the truncation to 32 bits.
            return p * _bits_to_float32((np.int32(k) + 127) << 23)

        return exp32

    def exp64(x):
        xc = min(max(x, -708.0), 708.0)  # as above: results stay normal numbers
        k = np.floor(xc * 1.4426950408889634 + 0.5)
        r = xc - k * 0.6931471803691238 - k * 1.9082149292705877e-10
        p = 1 / 6227020800
        p = p * r + 1 / 479001600
        p = p * r + 1 / 39916800
        p = p * r + 1 / 3628800
        p = p * r + 1 / 362880
        p = p * r + 1 / 40320
        p = p * r + 1 / 5040
        p = p * r + 1 / 720
        p = p * r + 1 / 120
        p = p * r + 1 / 24
        p = p * r + 1 / 6
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        return p * _bits_to_float64((np.int64(k) + 1023) << 52)

    return exp64


def _constants(x, *values):
    """``values`` in the float type of ``x`` (float32 constants keep float32 loops in float32)."""
    cast = _F32 if isinstance(x, numba.types.Float) and x.bitwidth == 32 else np.float64
    return tuple(cast(v) for v in values)


@numba.extending.overload(lstm_sigmoid, jit_options=_MATH_OPTIONS)
def _lstm_sigmoid_numba(x):
    one, = _constants(x, 1)

    def sigmoid(x):
        return one / (one + lstm_exp(-x))

    return sigmoid


@numba.extending.overload(lstm_tanh, jit_options=_MATH_OPTIONS)
def _lstm_tanh_numba(x):
    one, two, small, c3, c5, c7, c9 = _constants(
        x, 1, 2, 0.0625, -1 / 3, 2 / 15, -17 / 315, 62 / 2835)

    def tanh(x):
        large = one - two / (lstm_exp(two * x) + one)
        x2 = x * x
        series = x * (one + x2 * (c3 + x2 * (c5 + x2 * (c7 + x2 * c9))))
        return series if abs(x) < small else large

    return tanh


def lstm_flush(x):
    """``x``, or 0 when ``|x|`` is below √tiny (1e-19 in float32, 1e-154 in float64; tiny is
    the dtype's smallest normal number).

    Saturated gates (σ(z) → 0 after a too-large learning rate) give values so small that their
    products, here and in the BLAS GEMMs that read h and dz, are subnormal, and x86 arithmetic
    that makes or reads subnormals is tens of times slower: an epoch at lr = 1 took 10x longer.
    Below √tiny any product of two values is exactly 0 instead. Next to the O(1) values of an
    LSTM (and Adam's ε = 1e-7) such values carry nothing; TensorFlow's CPU threads flush
    subnormals to zero for the same reason.
    """
    return x if abs(x) >= np.sqrt(np.finfo(type(x)).tiny) else 0 * x


@numba.extending.overload(lstm_flush, jit_options={"error_model": "numpy"})
def _lstm_flush_numba(x):
    dtype = _F32 if x == numba.types.float32 else np.float64
    zero, small = _constants(x, 0, np.sqrt(np.finfo(dtype).tiny))

    def flush(x):
        return x if abs(x) >= small else zero

    return flush


@numba.njit(cache=True, error_model="numpy")
def _lstm_activate_row(z, out, code):
    """``out[j] = f(z[j])`` along one row; one branch per row, so each loop vectorises.
    (error_model="numpy": no zero-division check on ``1 / (1 + e)``, which would stop LLVM
    from vectorising the loop; e ≥ 0 so the divisor is never 0.)"""
    if code == SIGMOID:
        for j in range(z.size):
            out[j] = lstm_flush(lstm_sigmoid(z[j]))
    elif code == TANH:
        for j in range(z.size):
            out[j] = lstm_tanh(z[j])
    elif code == RELU:
        zero = z.dtype.type(0)
        for j in range(z.size):
            # NaN passes through, as np.maximum(z, 0) lets it.
            out[j] = zero if z[j] <= zero else z[j]
    else:
        for j in range(z.size):
            out[j] = z[j]


@numba.njit(cache=True, error_model="numpy")
def _lstm_grad_row(y, out, code):
    """``out[j] *= f'`` from the output ``y[j] = f(z[j])``: y(1−y), 1−y², [y > 0] or 1."""
    # Written without literal constants (y − y², o − o·y²) so float32 stays float32.
    if code == SIGMOID:
        for j in range(y.size):
            out[j] = lstm_flush(out[j] * (y[j] - y[j] * y[j]))
    elif code == TANH:
        for j in range(y.size):
            out[j] = lstm_flush(out[j] - out[j] * y[j] * y[j])
    elif code == RELU:
        zero = y.dtype.type(0)
        for j in range(y.size):
            out[j] = lstm_flush(out[j]) if y[j] > zero else zero
    else:
        for j in range(y.size):
            out[j] = lstm_flush(out[j])


@bind()
def lstm_cell_forward(z, c_prev, act_code, rec_code, gates, c, act_c, h):
    """One LSTM step: gate pre-activations to gates, cell and hidden state, row by row.

    Shapes:
        z: (N, 4U) pre-activations (only read)    gates: (N, 4U) out: [i f g o]
        c_prev, c, act_c, h: (N, U)
    Math:
        i = σ(z_i)   f = σ(z_f)   g = φ(z_g)   o = σ(z_o)
        c = f·c_{t−1} + i·g     act_c = φ(c)     h = o·act_c
    A row (4U values) stays in L1 through its passes; ``prange`` splits the batch. Sigmoid
    gates, c and h are flushed to zero below √tiny (see :func:`lstm_flush`).
    """
    n = z.shape[0]
    u = c_prev.shape[1]
    for b in prange(n):
        # From one array into another: LLVM vectorises these loops (in place, its overlap
        # check would pick the scalar loop).
        s = z[b]
        g = gates[b]
        _lstm_activate_row(s[:2 * u], g[:2 * u], rec_code)
        _lstm_activate_row(s[2 * u:3 * u], g[2 * u:3 * u], act_code)
        _lstm_activate_row(s[3 * u:], g[3 * u:], rec_code)
        for j in range(u):
            c[b, j] = lstm_flush(g[u + j] * c_prev[b, j] + g[j] * g[2 * u + j])
        _lstm_activate_row(c[b], act_c[b], act_code)
        for j in range(u):
            h[b, j] = lstm_flush(g[3 * u + j] * act_c[b, j])


@bind()
def lstm_cell_backward(dh, dy, has_dy, dc, gates, c_prev, act_c, act_code, rec_code, dz):
    """Backward through one LSTM step; ``dc`` goes from ∂L/∂c_t to ∂L/∂c_{t−1} in place.

    Shapes:
        dh, dy, dc, c_prev, act_c: (N, U)   gates, dz: (N, 4U)   (dy ignored unless has_dy)
    Math:
        d = dh + dy              dc_t = dc + d·o·φ'(c_t)
        dz_i = dc_t·g·σ'(i)      dz_f = dc_t·c_{t−1}·σ'(f)
        dz_g = dc_t·i·φ'(g)      dz_o = d·φ(c_t)·σ'(o)          dc_{t−1} = dc_t·f
    The row of dz serves as scratch: dz_g first holds d·o, scaled by φ'(c_t) into dc_t. dz and
    dc are flushed to zero below √tiny (see :func:`lstm_flush`).
    """
    n = gates.shape[0]
    u = dc.shape[1]
    for b in prange(n):
        # Row views, one per gate: these loops vectorise better than over 2-d indices
        # (measured: 23 → 21 µs a step of 50 rows × 128 units).
        row, grad = gates[b], dz[b]
        i, f, g, o = row[:u], row[u:2 * u], row[2 * u:3 * u], row[3 * u:]
        dz_i, dz_f, dz_g, dz_o = grad[:u], grad[u:2 * u], grad[2 * u:3 * u], grad[3 * u:]
        dh_b, dy_b, dc_b, c_old, act = dh[b], dy[b], dc[b], c_prev[b], act_c[b]
        for j in range(u):
            d = dh_b[j] + dy_b[j] if has_dy else dh_b[j]
            dz_o[j] = d * act[j]
            dz_g[j] = d * o[j]
        _lstm_grad_row(act, dz_g, act_code)
        for j in range(u):
            dct = dc_b[j] + dz_g[j]
            dz_i[j] = dct * g[j]
            dz_f[j] = dct * c_old[j]
            dz_g[j] = dct * i[j]
            dc_b[j] = lstm_flush(dct * f[j])
        _lstm_grad_row(row[:2 * u], grad[:2 * u], rec_code)  # i and f
        _lstm_grad_row(g, dz_g, act_code)
        _lstm_grad_row(o, dz_o, rec_code)


# ----------------------------------------------------------------------------------------------
# LSTM: the walk through time in one compiled function
#
# Per step the layer does one small GEMM (N x (U+D+1) x 4U) and one cell kernel; from Python
# each step also paid for two dispatches and argument checks. Here the loop, the GEMMs (on
# weights packed once per walk, :func:`gemm_packed`) and the serial cell kernels run without
# leaving compiled code, over the batch rows r0:r1. The rows of a batch never mix in the
# recurrence, so the backend can walk disjoint row blocks on several threads at once
# (``nogil``): one synchronisation per walk, where a threaded BLAS would synchronise at every
# step's small GEMM.
# ----------------------------------------------------------------------------------------------


def lstm_forward_sequence(xh, panels, gates, c, h, act_c, hz, act_code, rec_code, r0, r1):
    """Forward through all T steps for batch rows r0:r1: ``hz = xh_s · theta``, the cell,
    and h_t into the next step's xh.

    Shapes (W = U + D + 1, or U + D without a bias):
        xh: (T, N, W), row block s = [h_s, x_{s+1}, 1]; h columns of steps 1..T−1 written
        panels: theta (W, 4U) = [recurrent_kernel; kernel; bias], as :func:`pack_panels`
            packed it
        gates: (T, N, 4U) written: [i f g o] of every step      hz: (N, 4U) scratch
        c: (T+1, N, U), c[0] read, 1..T written      h, act_c: (T, N, U) written (h_1..h_T)
    Math, for s = 0..T−1 (each array restricted to rows r0:r1):
        hz = xh[s] · theta            (= h_s·recurrent_kernel + x_{s+1}·kernel + bias)
        gates[s] = [σ(z_i) σ(z_f) φ(z_g) σ(z_o)] of hz     c[s+1] = f·c[s] + i·g
        act_c[s] = φ(c[s+1])          h[s] = o·act_c[s]     (see lstm_cell_forward)
        xh[s+1][:, :U] = h[s]         (s < T−1)
    All arrays C-contiguous and of one dtype; only rows r0:r1 are read or written.
    """
    t = gates.shape[0]
    u = c.shape[2]
    for s in range(t):
        gemm_packed(xh[s, r0:r1], panels, hz[r0:r1])
        lstm_cell_forward_serial(hz[r0:r1], c[s, r0:r1], act_code, rec_code, gates[s, r0:r1],
                                 c[s + 1, r0:r1], act_c[s, r0:r1], h[s, r0:r1])
        if s + 1 < t:
            xh[s + 1, r0:r1, :u] = h[s, r0:r1]


def lstm_backward_sequence(dy, gates, panels, c, act_c, dh, dc, dz, act_code, rec_code,
                           r0, r1):
    """Backward through all T steps for batch rows r0:r1: the cell backward, then
    ``dh = dz_t · recurrentᵀ``.

    Shapes:
        dy: (T_y, N, U), ∂L/∂h of the last T_y steps (T_y = T or 1)
        gates: (T, N, 4U) activations   c: (T+1, N, U)   act_c: (T, N, U)
        panels: recurrent_kernelᵀ (4U, U), as :func:`pack_panels` packed it
        dh, dc: (N, U) scratch, zeroed first   dz: (T, N, 4U) written
    Math, for s = T−1..0 (step t = s+1; each array restricted to rows r0:r1):
        dz[s] = lstm_cell_backward(dh + dy_t, dc, gates[s], c[s], act_c[s])
                (dc becomes dc_{t−1} = dc_t·f in place)
        dh = dz[s] · recurrent_kernelᵀ   (skipped at s = 0: h_0 is a constant)
    """
    t = gates.shape[0]
    first_dy = t - dy.shape[0]
    zero = dh.dtype.type(0)
    dh[r0:r1] = zero
    dc[r0:r1] = zero
    for s in range(t - 1, -1, -1):
        has_dy = s >= first_dy
        lstm_cell_backward_serial(dh[r0:r1], dy[max(s - first_dy, 0), r0:r1], has_dy, dc[r0:r1],
                                  gates[s, r0:r1], c[s, r0:r1], act_c[s, r0:r1], act_code,
                                  rec_code, dz[s, r0:r1])
        if s > 0:
            gemm_packed(dz[s, r0:r1], panels, dh[r0:r1])


lstm_cell_forward_serial = lstm_cell_forward.serial
lstm_cell_backward_serial = lstm_cell_backward.serial
# nogil: the backend runs row blocks on several Python threads at once.
lstm_forward_sequence = numba.njit(cache=True, nogil=True,
                                   error_model="numpy")(lstm_forward_sequence)
lstm_backward_sequence = numba.njit(cache=True, nogil=True,
                                    error_model="numpy")(lstm_backward_sequence)


# ----------------------------------------------------------------------------------------------
# Row blocks on Numba's threads: the backend's split work while BLAS runs on one thread
#
# Each launcher runs one block per Numba thread (``prange`` over ``bounds``: block k is rows
# bounds[k]:bounds[k+1]). Numba's OpenMP threads spin for a while after a parallel region, so
# the next region of the same training step (forward walk, backward walk, weight gradients)
# starts at once; a Python thread pool's sleeping threads took 0.05-0.1 ms to start and as long
# to report back, ~0.6 ms of a 9 ms W6 batch. The backend calls them only while BLAS runs on one
# thread, so no BLAS thread competes with the spinning ones.
# ----------------------------------------------------------------------------------------------


@numba.njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def lstm_forward_blocks(xh, panels, gates, c, h, act_c, hz, act_code, rec_code, bounds):
    """:func:`lstm_forward_sequence` for each row block, one per thread."""
    for k in prange(bounds.size - 1):
        lstm_forward_sequence(xh, panels, gates, c, h, act_c, hz, act_code, rec_code,
                              bounds[k], bounds[k + 1])


@numba.njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def lstm_backward_blocks(dy, gates, panels, c, act_c, dh, dc, dz, act_code, rec_code,
                         bounds):
    """:func:`lstm_backward_sequence` for each row block, one per thread."""
    for k in prange(bounds.size - 1):
        lstm_backward_sequence(dy, gates, panels, c, act_c, dh, dc, dz, act_code, rec_code,
                               bounds[k], bounds[k + 1])


@numba.njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def matmul_row_blocks(a, b, out, bounds):
    """``out[i0:i1] = a[i0:i1] · b`` for each row block, one per thread (a, out C-contiguous)."""
    for k in prange(bounds.size - 1):
        np.dot(a[bounds[k]:bounds[k + 1]], b, out[bounds[k]:bounds[k + 1]])


@numba.njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def matmul_sum_blocks(a_t, b, parts, out, bounds):
    """``out = a_tᵀ · b`` summed in blocks of the inner dimension K, one per thread.

    Shapes:
        a_t: (K, M), b: (K, N), both C-contiguous   parts: (P, M, N) scratch   out: (M, N)
    Math:
        parts[k] = a_t[k0:k1]ᵀ · b[k0:k1]   (rows k0:k1 of both: contiguous blocks)
        out = Σ_k parts[k]                  (rows of out split over the threads)
    For a product whose left factor is a transposed view, such as Σ_t xh_tᵀ · dz_t.
    """
    for k in prange(bounds.size - 1):
        np.dot(a_t[bounds[k]:bounds[k + 1]].T, b[bounds[k]:bounds[k + 1]], parts[k])
    for i in prange(out.shape[0]):
        row = out[i]
        row[:] = parts[0, i]
        for k in range(1, parts.shape[0]):
            row += parts[k, i]
