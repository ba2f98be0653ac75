"""The Numba backend: NumPy arrays, BLAS GEMMs, and fused Numba kernels around them.

It overrides only what it speeds up (see :mod:`nnlite.backend.numba_kernels` for the loops):

- Dense forward: BLAS ``x · kernel`` into a preallocated buffer, then one fused pass for the bias
  and the activation;
- Dense backward: one fused pass for the activation gradient and the bias reduction, then BLAS;
- softmax cross-entropy: loss and ``dlogits`` in one pass over the logits;
- SGD / momentum / Adam / RMSprop: one element-wise pass over a whole parameter vector (the model
  packs all its parameters into one flat array, so a step is one kernel call);
- batch gather with the cast to the working dtype;
- a whole training step of a plain Dense stack (forward, fused loss, backward) as one compiled
  function calling BLAS through ``np.dot``, and an epoch's steps with their updates as one
  compiled loop (for a wide stack, its GEMMs split by columns over Numba's threads);
- the LSTM cell, and each walk through time as one compiled loop, its per-step GEMMs on
  weights packed once per walk (:func:`numba_kernels.gemm_packed`: BLAS repacks them at every
  step, and at such thin shapes took 75 µs where this takes 48); the Dense loops use the same
  kernel for batches of at most 256 rows.

Other GEMMs stay in BLAS unless ``gemm="blocked"`` selects the hand-written blocked kernel (for
the kernel benchmark and for teaching). While ``fit`` holds BLAS to one thread (small steps), work
that splits cleanly runs on Numba's threads instead (the launchers at the end of
:mod:`numba_kernels`): the LSTM's batch rows, and any single GEMM of at least
``SPLIT_GEMM_FLOPS`` as row blocks or as a sum over blocks of its inner dimension.

Kernels are compiled on first use and cached on disk (``cache=True``), so the compile cost is
paid once per machine; :meth:`NumbaBackend.warmup` compiles everything up front and reports the
time.
"""

from __future__ import annotations

import threading
import time

import numba
import numpy as np

# Numba's np.dot (in the compiled Dense step and LSTM loops) calls SciPy's BLAS, a second
# OpenBLAS that Numba would load only at its first compilation. Loading it with the backend
# lets thread limits reach it: set_threads applies to the libraries loaded when it is called,
# and fit's one-thread policy to those loaded when fit starts.
import scipy.linalg.cython_blas  # noqa: F401  (missing: the backend is unavailable)

from nnlite import config
from nnlite.backend import numba_kernels as K
from nnlite.backend.numpy_backend import Backend

# Fewest batch rows per thread when a batch is split into row blocks (the LSTM's time loops,
# _block_bounds, and the Dense-stack loop, NumbaBackend.dense_stack_train).
MIN_BLOCK_ROWS = 32
# While BLAS is held to one thread (fit's policy for small steps), a single GEMM of at least
# this many FLOPs (e.g. an LSTM's weight gradients over all time steps) is split into blocks of
# at least GEMM_MIN_BLOCK rows (of the product, or of both factors for a sum) across Numba's
# threads.
SPLIT_GEMM_FLOPS = 50e6
GEMM_MIN_BLOCK = 64
# Shapes of scratch a thread keeps (an LSTM layer's step needs three: its packed weights for
# each walk and the partial products of its weight gradients).
MAX_SCRATCH = 8

_TINY = {np.dtype(t): np.dtype(t).type(np.finfo(t).tiny) for t in (np.float32, np.float64)}


def _tiny(a):
    """The smallest normal number of ``a``'s dtype: optimizer state below it is flushed."""
    return _TINY[a.dtype]


def _flat(a):
    """A 1-D view of a C-contiguous array (never a copy)."""
    return a.reshape(-1) if a.flags.c_contiguous else None


class NumbaBackend(Backend):
    """CPU backend with fused Numba kernels.

    Optimizer state (momenta, Adam's m and v) below the dtype's smallest normal number is
    flushed to zero, as TensorFlow's CPU threads do: subnormal arithmetic is ~100x slower.

    Args:
        gemm: "blas" (default: NumPy's BLAS) or "blocked" (the Numba blocked kernel).
    """

    name = "numba"

    def __init__(self, gemm: str = "blas"):
        super().__init__()
        if gemm not in ("blas", "blocked"):
            raise ValueError(
                f"NumbaBackend: expected `gemm` to be 'blas' or 'blocked', received {gemm!r}"
            )
        self.gemm = gemm
        self._local = threading.local()  # per Python thread: scratch (see _scratch)
        # SciPy's BLAS is loaded (module imports): re-apply set_threads so its limit reaches it.
        config.set_threads(config.threads())

    def gather(self, data, index, dtype, out=None):
        if out is None:
            out = np.empty((len(index),) + data.shape[1:], dtype=dtype)
        index = np.asarray(index)
        if (index.dtype.kind not in "iu" or data.ndim < 2 or not data.flags.c_contiguous
                or not out.flags.c_contiguous):
            return super().gather(data, index, dtype, out)
        rows, flat_out = data.reshape(data.shape[0], -1), out.reshape(out.shape[0], -1)
        K.gather_rows(flat_out.size, rows, index, flat_out)
        return out

    def matmul(self, a, b, out=None):
        if a.ndim != 2 or b.ndim != 2:
            return np.matmul(a, b, out=out)
        (m, k), n = a.shape, b.shape[1]
        if self.gemm == "blas" and 2 * m * k * n < SPLIT_GEMM_FLOPS:
            return np.matmul(a, b, out=out)
        if out is None:
            out = np.empty((m, n), dtype=np.result_type(a, b))
        if self.gemm != "blas":
            K.matmul_blocked(out.size, np.ascontiguousarray(a), np.ascontiguousarray(b), out)
            return out
        # Split over Numba's threads (while BLAS runs on one): row blocks of a C-ordered a, or
        # blocks of the inner dimension when a is a transposed view (aᵀ C-ordered, as in a
        # weight gradient xᵀ·dz); otherwise, or with one block, one BLAS call.
        blocks = None
        if (a.dtype == b.dtype == out.dtype and a.dtype in _TINY and out.flags.c_contiguous
                and (b.flags.c_contiguous or b.flags.f_contiguous)):
            if a.flags.c_contiguous:
                blocks = _block_bounds(m, GEMM_MIN_BLOCK)
                if blocks is not None:
                    K.matmul_row_blocks(a, b, out, blocks)
            elif a.T.flags.c_contiguous and b.flags.c_contiguous:
                blocks = _block_bounds(k, GEMM_MIN_BLOCK)
                if blocks is not None:
                    parts = self._scratch((blocks.size - 1, m, n), out.dtype)
                    K.matmul_sum_blocks(a.T, b, parts, out, blocks)
        if blocks is None:
            np.matmul(a, b, out=out)
        return out

    def _scratch(self, shape, dtype):
        """Scratch (a split GEMM's partial products, an LSTM walk's packed weights, a wide
        stack's packed kernels) reused from step to step (at most MAX_SCRATCH shapes kept), one
        set per Python thread so that two never share one."""
        cache = getattr(self._local, "scratch", None)
        if cache is None:
            cache = self._local.scratch = {}
        key = (shape, np.dtype(dtype))
        buf = cache.get(key)
        if buf is None:
            if len(cache) >= MAX_SCRATCH:
                del cache[next(iter(cache))]
            buf = cache[key] = np.empty(shape, dtype=dtype)
        return buf

    def dense_forward(self, x, kernel, bias, activation, out=None):
        z_out, y_out = out if out is not None else (None, None)
        code = K.CODES.get(activation.name)
        if code is None or (z_out is not None and not z_out.flags.c_contiguous):
            return super().dense_forward(x, kernel, bias, activation, out)
        z = self.matmul(x, kernel, out=z_out)
        if code == K.LINEAR:
            if bias is not None:
                z += bias
            return z, z
        y = y_out if y_out is not None else np.empty_like(z)
        has_bias = bias is not None
        K.bias_activation_forward(z.size, z, bias if has_bias else z[0], has_bias, code, y)
        return z, y

    def dense_backward(self, dy, x, kernel, z, y, activation, need_dx=True, out=None):
        dkernel_out, dbias_out, dx_out, dz_out = out or (None, None, None, None)
        code = K.CODES.get(activation.name)
        if code is None or not dy.flags.c_contiguous:
            return super().dense_backward(dy, x, kernel, z, y, activation, need_dx, out)
        dbias = dbias_out if dbias_out is not None else np.empty(dy.shape[1], dtype=dy.dtype)
        if code == K.LINEAR:
            dz = dy
            dy.sum(axis=0, out=dbias)
        else:
            dz = dz_out if dz_out is not None else np.empty_like(dy)
            K.activation_backward_bias(dy.size, dy, z, y, code, dz, dbias, True)
        dkernel = self.matmul(x.T, dz, out=dkernel_out)
        dx = self.matmul(dz, kernel.T, out=dx_out) if need_dx else None
        return dx, dkernel, dbias

    def softmax_cross_entropy(self, logits, target):
        if not logits.flags.c_contiguous or logits.ndim != 2:
            return super().softmax_cross_entropy(logits, target)
        dlogits = np.empty_like(logits)
        if target.ndim == 1:
            loss = K.softmax_xent_sparse(logits.size, logits, target, dlogits)
        else:
            target = np.ascontiguousarray(target, dtype=logits.dtype)
            loss = K.softmax_xent_dense(logits.size, logits, target, dlogits)
        return logits.dtype.type(loss), dlogits

    def dense_stack_step(self, x, target, plan):
        """The whole step compiled as one function (:func:`numba_kernels.dense_stack_step`).

        Used while every element-wise pass stays under :data:`numba_kernels.PARALLEL_THRESHOLD`
        (the compiled step runs the serial kernels); larger steps and ``gemm="blocked"`` take
        the per-layer kernels, which run in parallel.
        """
        if (self.gemm != "blas" or plan.largest >= K.PARALLEL_THRESHOLD
                or not x.flags.c_contiguous or x.dtype != plan.work.dtype):
            return super().dense_stack_step(x, target, plan)
        if target.ndim == 2:
            target = np.ascontiguousarray(target, dtype=x.dtype)
        scratch = self._scratch((K.step_scratch_size(x.shape[0], plan.layout),), x.dtype)
        loss = K.dense_stack_step(x, target, plan.params, plan.grads, plan.work, plan.layout,
                                  plan.codes, scratch)
        return x.dtype.type(loss), plan.outputs

    def dense_stack_train(self, data, targets, order, plan, updates, losses, correct=None):
        """The steps as one compiled loop, under the same conditions as
        :meth:`dense_stack_step` (the base class's loop otherwise, as for an update rule the
        loop does not know or data that is not a C-ordered matrix).

        - A stack with a wide layer whose GEMMs BLAS would split over its threads runs
          :func:`numba_kernels.dense_stack_train_columns` on Numba's threads with BLAS held to
          one thread: each GEMM split by columns, the element-wise work by rows, and the
          update on all threads (beside BLAS's threads it ran on one core). The same sums in
          the same order; a narrow block's GEMM may round differently from BLAS's whole one.
          W3 (784-1024-1024-10, batch 128): 7.1-7.4 → 6.4-6.7 ms a step; then its forward
          GEMMs on kernels kept packed (in ``_scratch``): 2.71-2.84 → 2.57-2.76 s an epoch.
        - Otherwise :func:`numba_kernels.dense_stack_train`; while BLAS runs on one thread
          (fit's policy for small steps), a batch of at least 2 × MIN_BLOCK_ROWS rows is split
          into row blocks, one per Numba thread, each with its own forward, backward and
          gradient (summed before the update): the same step, summed in another order
          (float64 results agree to ~1e-15).
        """
        rule, state, scalars = updates
        if (self.gemm != "blas" or plan.largest >= K.PARALLEL_THRESHOLD or rule not in K.RULES
                or data.ndim != 2 or not data.flags.c_contiguous
                or not targets.flags.c_contiguous):
            return super().dense_stack_train(data, targets, order, plan, updates, losses,
                                             correct)
        none = plan.params[:0]
        state1, state2 = (tuple(state) + (none, none))[:2]
        batch = plan.x.shape[0]
        target_buffer = np.empty((batch,) + targets.shape[1:], dtype=targets.dtype)
        correct = np.empty(0, np.int64) if correct is None else correct
        threads = _column_threads(plan)
        if threads > 1:
            size = K.columns_panels_size(batch, plan.layout, plan.params.itemsize)
            panels = self._scratch((size,), plan.params.dtype)
            with config.one_blas_thread():
                return K.dense_stack_train_columns(
                    data, targets, order, plan.x, target_buffer, plan.params, plan.grads,
                    plan.work, plan.layout, plan.codes, K.RULES[rule], state1, state2, scalars,
                    _tiny(plan.params), losses, correct, threads, panels)
        layouts, part_grads = _row_blocks(plan, _block_count(batch))
        kernel = K.dense_stack_train.serial if len(layouts) == 1 else K.dense_stack_train.parallel
        return kernel(data, targets, order, plan.x, target_buffer, plan.params, plan.grads,
                      plan.work, layouts, plan.codes, K.RULES[rule], state1, state2, scalars,
                      _tiny(plan.params), losses, part_grads, correct)

    def sgd_update(self, param, grad, lr, momentum=None, velocity=None, nesterov=False):
        p, g = _flat(param), _flat(grad)
        v = None if velocity is None else _flat(velocity)
        if p is None or g is None or (velocity is not None and v is None):
            return super().sgd_update(param, grad, lr, momentum, velocity, nesterov)
        if v is None:
            K.sgd_update(p.size, p, g, lr)
        else:
            K.sgd_momentum_update(p.size, p, g, v, lr, momentum, bool(nesterov), _tiny(p))

    def adam_update(self, param, grad, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
        flats = [_flat(a) for a in (param, grad, m, v)]
        if any(f is None for f in flats):
            return super().adam_update(param, grad, m, v, alpha, one_minus_beta_1,
                                       one_minus_beta_2, epsilon)
        K.adam_update(flats[0].size, *flats, alpha, one_minus_beta_1, one_minus_beta_2, epsilon,
                      _tiny(param))

    def rmsprop_update(self, param, grad, v, lr, rho, one_minus_rho, epsilon,
                       momentum=None, velocity=None, mean_grad=None):
        arrays = [param, grad, v, velocity, mean_grad]
        flats = [None if a is None else _flat(a) for a in arrays]
        if any(a is not None and f is None for a, f in zip(arrays, flats)):
            return super().rmsprop_update(param, grad, v, lr, rho, one_minus_rho, epsilon,
                                          momentum, velocity, mean_grad)
        p, g, vv, u, mg = flats
        dummy = p[:0]
        K.rmsprop_update(
            p.size, p, g, vv, lr, rho, one_minus_rho, epsilon,
            p.dtype.type(0 if momentum is None else momentum), dummy if u is None else u,
            u is not None, dummy if mg is None else mg, mg is not None, _tiny(p),
        )

    def warmup(self, dtypes=("float32", "float64")) -> float:
        """Compile (or load from the disk cache) every kernel for ``dtypes``; returns seconds."""
        start = time.perf_counter()
        saved = K.PARALLEL_THRESHOLD
        try:
            for threshold in (0, 1 << 62):  # the parallel bindings, then the serial ones
                K.PARALLEL_THRESHOLD = threshold
                self._exercise(dtypes)
        finally:
            K.PARALLEL_THRESHOLD = saved
        return time.perf_counter() - start

    def _exercise(self, dtypes):
        from nnlite import activations

        for name in dtypes:
            dt = np.dtype(name)
            x = np.ones((2, 3), dt)
            w = np.ones((3, 4), dt)
            b = np.zeros(4, dt)
            for act in ("relu", "sigmoid", "tanh", "softmax"):
                z, y = self.dense_forward(x, w, b, activations.get(act))
                self.dense_backward(y, x, w, z, y, activations.get(act))
            self.softmax_cross_entropy(y, np.zeros(2, np.int64))
            self.softmax_cross_entropy(y, np.ones((2, 4), dt))
            p, g, s1, s2 = (np.zeros(4, dt) for _ in range(4))
            one = dt.type(0.5)
            self.sgd_update(p, g, one)
            self.sgd_update(p, g, one, one, s1, True)
            self.adam_update(p, g, s1, s2, one, one, one, one)
            self.rmsprop_update(p, g, s1, one, one, one, one)
            self.rmsprop_update(p, g, s1, one, one, one, one, one, s2, np.zeros(4, dt))
            for data in (np.zeros((3, 4), np.uint8), np.zeros((3, 4), dt)):
                self.gather(data, np.arange(2), dt)
            # The compiled Dense-stack step: one layer 3 -> 4 (softmax), labels and one-hot.
            layout = np.array([[3, 4, 0, 12, 0, 8, 16, -1]], np.int64)
            params, work = np.zeros(16, dt), np.zeros(24, dt)
            codes = np.array([K.SOFTMAX], np.int64)
            for target in (np.zeros(2, np.int64), np.ones((2, 4), dt)):
                K.dense_stack_step(x[:, :3], target, params, np.zeros(16, dt), work, layout,
                                   codes, np.zeros(K.step_scratch_size(2, layout), dt))
                # ... and the loop over steps (Adam; the SGD rules share its signature).
                m, v = np.zeros(16, dt), np.zeros(16, dt)
                grads = np.zeros(16, dt)
                K.dense_stack_train(1, x, target, np.arange(2), x.copy(), target.copy(), params,
                                    grads, work, layout[None], codes, K.ADAM, m, v,
                                    np.zeros((1, 4), dt), one, np.zeros(1, dt), grads[None],
                                    np.zeros(1, np.int64))
                # ... and the loop with its GEMMs split by columns (wide stacks).
                K.dense_stack_train_columns(x, target, np.arange(2), x.copy(), target.copy(),
                                            params, grads, work, layout, codes, K.ADAM, m, v,
                                            np.zeros((1, 4), dt), one, np.zeros(1, dt),
                                            np.zeros(1, np.int64), 1,
                                            np.zeros(K.columns_panels_size(2, layout, dt.itemsize),
                                                     dt))
            # The LSTM cell with Keras's default activations (tanh, sigmoid).
            tanh, sigmoid = activations.get("tanh"), activations.get("sigmoid")
            hz, c_prev = np.zeros((2, 8), dt), np.zeros((2, 2), dt)
            gates, c, act_c, h = self.lstm_cell_forward(hz, c_prev, tanh, sigmoid)
            self.lstm_cell_backward(h, h, np.zeros_like(c), gates, c_prev, act_c, tanh, sigmoid)
            # The compiled time loops (two steps of the same cell; xh_s = [h_s, x_{s+1}, 1]).
            gates, c, h = np.zeros((2, 2, 8), dt), np.zeros((3, 2, 2), dt), np.zeros((2, 2, 2), dt)
            act_c, recurrent = np.zeros((2, 2, 2), dt), np.zeros((2, 8), dt)
            xh, theta = np.zeros((2, 2, 4), dt), np.zeros((4, 8), dt)
            self.lstm_forward_sequence(xh, theta, gates, c, h, act_c, hz, tanh, sigmoid)
            self.lstm_backward_sequence(h, gates, recurrent, c, act_c, c_prev,
                                        np.zeros_like(c_prev), np.zeros_like(gates), tanh, sigmoid)
            # ... and on Numba's threads, one row each, with the layer's split GEMMs (xh·theta
            # and dz·kernelᵀ as row blocks, xhᵀ·dz summed over blocks of rows).
            rows = np.array([0, 1, 2], np.int64)
            K.lstm_forward_blocks(xh, self._packed(theta), gates, c, h, act_c, hz, K.TANH,
                                  K.SIGMOID, rows)
            K.lstm_backward_blocks(h, gates, self._packed(recurrent.T), c, act_c, c_prev,
                                   np.zeros_like(c_prev), np.zeros_like(gates), K.TANH,
                                   K.SIGMOID, rows)
            xh2, dz2 = xh.reshape(4, 4), gates.reshape(4, 8)
            K.matmul_row_blocks(xh2, theta, np.zeros((4, 8), dt), rows)
            K.matmul_row_blocks(dz2, theta.T, np.zeros((4, 4), dt), rows)
            K.matmul_sum_blocks(xh2, dz2, np.zeros((2, 4, 8), dt), np.zeros((4, 8), dt), rows)

    # -- LSTM ----------------------------------------------------------------------------------

    def _lstm_codes(self, activation, recurrent_activation, *arrays):
        """Kernel codes of the two activations, or None when the fused kernel cannot run."""
        codes = (K.CODES.get(activation.name), K.CODES.get(recurrent_activation.name))
        if None in codes or K.SOFTMAX in codes:
            return None
        if not all(a.flags.c_contiguous for a in arrays):
            return None
        return codes

    def lstm_cell_forward(self, z, c_prev, activation, recurrent_activation, out=None):
        outs = out if out is not None else (None, None, None, None)
        given = tuple(o for o in outs if o is not None)
        codes = self._lstm_codes(activation, recurrent_activation, z, c_prev, *given)
        if codes is None:
            return super().lstm_cell_forward(z, c_prev, activation, recurrent_activation, out)
        gates, c, act_c, h = (o if o is not None else np.empty_like(like)
                              for o, like in zip(outs, (z, c_prev, c_prev, c_prev)))
        K.lstm_cell_forward(z.size, z, c_prev, *codes, gates, c, act_c, h)
        return gates, c, act_c, h

    def lstm_cell_backward(self, dh, dy, dc, gates, c_prev, act_c, activation,
                           recurrent_activation, out=None):
        if dy is not None:
            dy = np.ascontiguousarray(dy, dtype=dh.dtype)
        codes = self._lstm_codes(activation, recurrent_activation, dh, dc, gates, c_prev, act_c)
        if codes is None:
            return super().lstm_cell_backward(dh, dy, dc, gates, c_prev, act_c, activation,
                                              recurrent_activation, out)
        dz = out if out is not None else np.empty_like(gates)
        K.lstm_cell_backward(gates.size, dh, dh if dy is None else dy, dy is not None, dc, gates,
                             c_prev, act_c, *codes, dz)
        return dz

    def _lstm_sequence_codes(self, activation, recurrent_activation, gates, *arrays):
        """Codes for the compiled time loops, or None where the per-step loop should run:
        the blocked GEMM, a batch large enough for the parallel cell kernel, a dtype BLAS
        lacks, or mixed dtypes."""
        if (self.gemm != "blas" or gates[0].size >= K.PARALLEL_THRESHOLD
                or gates.dtype not in _TINY or any(a.dtype != gates.dtype for a in arrays)):
            return None
        return self._lstm_codes(activation, recurrent_activation, gates, *arrays)

    def lstm_forward_sequence(self, xh, theta, gates, c, h, act_c, hz, activation,
                              recurrent_activation):
        codes = self._lstm_sequence_codes(activation, recurrent_activation, gates, xh, theta,
                                          c, h, act_c, hz)
        if codes is None:
            return super().lstm_forward_sequence(xh, theta, gates, c, h, act_c, hz, activation,
                                                 recurrent_activation)
        _walk(K.lstm_forward_sequence, K.lstm_forward_blocks, gates.shape[1],
              xh, self._packed(theta), gates, c, h, act_c, hz, *codes)

    def lstm_backward_sequence(self, dy, gates, recurrent_kernel, c, act_c, dh, dc, dz,
                               activation, recurrent_activation):
        dy = np.ascontiguousarray(dy, dtype=gates.dtype)
        codes = self._lstm_sequence_codes(activation, recurrent_activation, gates, dy,
                                          recurrent_kernel, c, act_c, dh, dc, dz)
        if codes is None:
            return super().lstm_backward_sequence(dy, gates, recurrent_kernel, c, act_c, dh, dc,
                                                  dz, activation, recurrent_activation)
        _walk(K.lstm_backward_sequence, K.lstm_backward_blocks, gates.shape[1],
              dy, gates, self._packed(recurrent_kernel.T), c, act_c, dh, dc, dz, *codes)

    def _packed(self, b):
        """``b`` (K, N) packed for :func:`numba_kernels.gemm_packed`, in reused scratch."""
        panels = self._scratch(K.panel_shape(*b.shape, b.dtype), b.dtype)
        K.pack_panels(b, panels)
        return panels


def _walk(serial, blocked, n, *args):
    """An LSTM walk over the n batch rows: the rows never mix in the recurrence, so each
    Numba thread walks all T steps for its row block (its own small GEMMs on the weights packed
    once, its own cells) through ``blocked(*args, bounds)``; ``serial(*args, 0, n)`` when the
    batch is one block."""
    blocks = _block_bounds(n)
    if blocks is None:
        serial(*args, 0, n)
    else:
        blocked(*args, blocks)


def _block_count(n, min_rows=None):
    """Row blocks for n rows: one per Numba thread, each of at least ``min_rows`` rows
    (default MIN_BLOCK_ROWS: a thinner GEMM wastes more than another core gives), and only
    while BLAS runs on one thread (``config.blas_single_threaded``): each block calls BLAS, so
    otherwise the cores would be oversold."""
    min_rows = MIN_BLOCK_ROWS if min_rows is None else min_rows
    threads = numba.get_num_threads() if config.blas_single_threaded() else 1
    return K.split(n, min_rows, threads)


def _column_threads(plan):
    """Threads for :func:`numba_kernels.dense_stack_train_columns`: Numba's, for a stack with a
    layer wide enough to split (≥ 2 × MIN_COLUMNS) whose steps BLAS would run on several
    threads (not under ``set_threads(1)`` or fit's one-thread policy for small steps, where the
    row blocks of :func:`_row_blocks` split the batch instead); 1 otherwise."""
    threads = numba.get_num_threads()
    widest = int(plan.layout[:, K.D_OUT].max())
    if config.blas_single_threaded() or threads == 1 or widest < 2 * K.MIN_COLUMNS:
        return 1
    return threads


def _block_bounds(n, min_rows=None):
    """Bounds of the row blocks of n rows, ``[0, …, n]`` (int64), for the launchers in
    :mod:`numba_kernels`; None for a single block (then the caller runs the serial kernel: a
    parallel region would wake threads that spin next to a threaded BLAS)."""
    blocks = _block_count(n, min_rows)
    if blocks == 1:
        return None
    return np.array([n * k // blocks for k in range(blocks + 1)], dtype=np.int64)


def _row_blocks(plan, blocks):
    """The Dense-stack layout moved to each of ``blocks`` row blocks, (blocks, L, 8), and a
    gradient vector per block (the model's own when there is one block); kept on the plan."""
    cached = plan.blocks.get(blocks)
    if cached is None:
        batch = plan.x.shape[0]
        layouts = np.repeat(plan.layout[None], blocks, axis=0)
        for h in range(1, blocks):
            first = h * batch // blocks
            for column, width in ((K.Z, K.D_OUT), (K.Y, K.D_OUT), (K.DZ, K.D_OUT),
                                  (K.DX, K.D_IN)):
                at = layouts[h, :, column]
                layouts[h, :, column] = np.where(at >= 0, at + first * plan.layout[:, width], at)
        grads = (plan.grads[None] if blocks == 1
                 else np.empty((blocks, plan.grads.size), dtype=plan.grads.dtype))
        cached = plan.blocks[blocks] = (layouts, grads)
    return cached
