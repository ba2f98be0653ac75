"""Every Numba kernel, bound three ways, against the NumPy reference backend.

Each kernel in :mod:`nnlite.backend.numba_kernels` is a :class:`Bound` with ``.py_func`` (the
plain Python loop), ``.serial`` and ``.parallel`` (njit bindings). For each kernel and each dtype
the three run on copies of the same inputs and are compared with each other and with the NumPy
reference :class:`nnlite.backend.Backend` (or :mod:`nnlite.functional`):

- float64: norm-wise relative error ≤ 1e-12; float32: ≤ 1e-5;
- outputs are written into the arrays passed in (every output is pre-filled with NaN, so an
  element the kernel forgot, or an output it allocated instead, shows up), and the kernels
  return nothing but the scalar loss;
- read-only inputs are left untouched (compared with copies taken before the call).

Sizes are small (the ``.py_func`` loops run in the interpreter) and odd, so no shape is a
multiple of a block size or of a SIMD width.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest

pytest.importorskip("numba")

from nnlite import activations  # noqa: E402
from nnlite.backend import Backend  # noqa: E402
from nnlite.backend import numba_kernels as K  # noqa: E402

REF = Backend()
DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
VARIANTS = ("py_func", "serial", "parallel")
ACTIVATIONS = sorted(K.CODES.items(), key=lambda item: item[1])


def rng(seed=0):
    return np.random.default_rng(seed)


def rel_err(actual, expected, scale=None) -> float:
    """Norm-wise relative error ‖a − e‖ / ‖e‖ (or / scale), computed in float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    denom = np.linalg.norm(expected) if scale is None else scale
    return float(np.linalg.norm(actual - expected) / max(denom, np.finfo(np.float64).tiny))


def assert_close(actual, expected, dtype, what="", scale=None):
    """Norm-wise relative error within the dtype's tolerance; shape must match exactly."""
    assert np.shape(actual) == np.shape(expected), what
    assert np.all(np.isfinite(actual)), f"{what}: non-finite (an output left unwritten?)"
    err = rel_err(actual, expected, scale)
    assert err <= TOL[np.dtype(dtype)], f"{what}: relative error {err:.3g}"


def run_variants(kernel, make_args, outputs, inputs):
    """Run ``kernel`` three ways on fresh copies of ``make_args()``.

    Args:
        outputs: positions of the arguments the kernel writes.
        inputs: positions of the read-only arrays (checked unchanged).

    Returns:
        ``{variant: (return value, [written arrays])}``.
    """
    results = {}
    for variant in VARIANTS:
        args = list(make_args())
        before = {i: args[i].copy() for i in inputs}
        written = [args[i] for i in outputs]
        returned = getattr(kernel, variant)(*args)
        for i in inputs:
            np.testing.assert_array_equal(args[i], before[i],
                                          err_msg=f"{variant} modified input #{i}")
        # Results come back only through the arrays passed in (pre-filled with NaN by the
        # callers, so an output left unwritten fails the comparison): nothing array-valued is
        # returned.
        assert returned is None or np.ndim(returned) == 0, f"{variant} returned an array"
        assert not isinstance(returned, np.ndarray), f"{variant} returned an array"
        results[variant] = (returned, written)
    return results


def check_variants(results, expected, dtype, what, scales=None):
    """Each variant's written arrays against ``expected`` and against ``.py_func``'s."""
    scales = scales or [None] * len(expected)
    _, plain = results["py_func"]
    for variant, (_, arrays) in results.items():
        for k, (array, ref, scale) in enumerate(zip(arrays, expected, scales)):
            assert array.dtype == np.dtype(dtype), f"{what} {variant} output {k}: dtype"
            assert_close(array, ref, dtype, f"{what} {variant} output {k} vs reference", scale)
            assert_close(array, plain[k], dtype, f"{what} {variant} output {k} vs py_func", scale)


# Every kernel this module tests; a kernel added to numba_kernels without a test fails below.
TESTED = {
    "bias_activation_forward", "activation_backward_bias", "softmax_xent_sparse",
    "softmax_xent_dense", "sgd_update", "sgd_momentum_update", "adam_update", "rmsprop_update",
    "gather_rows", "matmul_blocked", "lstm_cell_forward", "lstm_cell_backward",
    "dense_stack_train",
}
REQUIRED = TESTED - {"lstm_cell_forward", "lstm_cell_backward"}


def test_every_kernel_is_bound_three_ways_and_tested_here():
    kernels = {name: k for name, k in vars(K).items() if isinstance(k, K.Bound)}
    assert REQUIRED <= set(kernels)
    assert set(kernels) <= TESTED, f"untested kernels: {sorted(set(kernels) - TESTED)}"
    for name, kernel in kernels.items():
        assert callable(kernel.py_func) and not hasattr(kernel.py_func, "py_func"), name
        assert kernel.serial.py_func is kernel.py_func, name
        # The same code under its own name, so the two bindings have their own disk-cache
        # entries (Numba keys the cache by name, not by compile options: sharing them, the
        # serial binding loaded the parallel machine code or the other way round).
        assert kernel.parallel.py_func.__code__ is kernel.py_func.__code__, name
        if kernel.parallel is not kernel.serial:  # bind(parallel=False): one binding
            files = {b._cache._cache_file._index_path for b in (kernel.serial, kernel.parallel)}
            assert len(files) == 2, name
        assert kernel.__name__ == name and kernel.__doc__, name


def test_bound_call_picks_the_binding_by_size(monkeypatch):
    calls = []

    class Spy:
        def __init__(self, name):
            self.name = name

        def __call__(self, *args):
            calls.append(self.name)

    bound = K.Bound.__new__(K.Bound)
    bound.serial, bound.parallel = Spy("serial"), Spy("parallel")
    monkeypatch.setattr(K, "PARALLEL_THRESHOLD", 100)
    bound(99)
    bound(100)
    assert calls == ["serial", "parallel"]


# ----------------------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name,code", ACTIVATIONS, ids=[n for n, _ in ACTIVATIONS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_activation_forward(dtype, name, code, has_bias):
    r = rng(1)
    x = r.standard_normal((37, 19)).astype(dtype)
    kernel = r.standard_normal((19, 23)).astype(dtype)
    bias = r.standard_normal(23).astype(dtype)
    z0 = x @ kernel
    z_ref, y_ref = REF.dense_forward(x, kernel, bias if has_bias else None, activations.get(name))

    def make_args():
        z = z0.copy()
        return z, (bias.copy() if has_bias else z[0]), has_bias, code, np.full_like(z0, np.nan)

    # Without a bias the kernel is given a dummy row of z: it must not read it as a bias.
    results = run_variants(K.bias_activation_forward, make_args, outputs=(0, 4),
                           inputs=(1,) if has_bias else ())
    for returned, _ in results.values():
        assert returned is None
    check_variants(results, [z_ref, y_ref], dtype, f"{name} forward")


@pytest.mark.parametrize("name,code", ACTIVATIONS, ids=[n for n, _ in ACTIVATIONS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_backward_bias(dtype, name, code):
    r = rng(2)
    act = activations.get(name)
    # ReLU inputs kept away from the kink: |z| ≥ 0.05.
    z = r.standard_normal((41, 17))
    z = (z + np.where(z >= 0, 0.05, -0.05)).astype(dtype)
    y = act.forward(z).astype(dtype)
    dy = r.standard_normal(z.shape).astype(dtype)
    x = r.standard_normal((41, 5)).astype(dtype)
    kernel = r.standard_normal((5, 17)).astype(dtype)
    dz_ref = act.backward(dy, z, y)
    _, _, dbias_ref = REF.dense_backward(dy, x, kernel, z, y, act)

    def make_args():
        return (dy.copy(), z.copy(), y.copy(), code, np.full_like(dy, np.nan),
                np.full(dy.shape[1], np.nan, dtype), True)

    results = run_variants(K.activation_backward_bias, make_args, outputs=(4, 5),
                           inputs=(0, 1, 2))
    for returned, _ in results.values():
        assert returned is None
    # A bias sum cancels: compare it relative to Σ|dz| (the size of what was added), not to |Σ dz|.
    scales = [None, float(np.linalg.norm(np.abs(np.asarray(dz_ref, np.float64)).sum(axis=0)))]
    check_variants(results, [dz_ref, dbias_ref], dtype, f"{name} backward", scales)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_forward_keeps_nan_like_the_reference(dtype):
    z0 = np.array([[np.nan, np.inf, -np.inf, 0.0, -1.0, 2.0]], dtype)
    expected = activations.get("relu").forward(z0)
    for variant in VARIANTS:
        z, y = z0.copy(), np.full_like(z0, -7)
        getattr(K.bias_activation_forward, variant)(z, z[0], False, K.RELU, y)
        np.testing.assert_array_equal(y, expected, err_msg=variant)


# ----------------------------------------------------------------------------------------------
# Softmax cross-entropy
# ----------------------------------------------------------------------------------------------


def _logits(dtype, shape=(53, 11), seed=3):
    r = rng(seed)
    logits = 3 * r.standard_normal(shape)
    logits[0] += 500  # a row far from 0: the max shift must keep exp finite
    return logits.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_sparse(dtype):
    logits = _logits(dtype)
    labels = rng(4).integers(0, logits.shape[1], logits.shape[0]).astype(np.int64)
    loss_ref, dlogits_ref = REF.softmax_cross_entropy(logits, labels)

    def make_args():
        return logits.copy(), labels.copy(), np.full_like(logits, np.nan)

    results = run_variants(K.softmax_xent_sparse, make_args, outputs=(2,), inputs=(0, 1))
    check_variants(results, [dlogits_ref], dtype, "sparse xent")
    for variant, (loss, _) in results.items():
        assert np.ndim(loss) == 0 and np.isfinite(loss), variant
        assert_close(loss, loss_ref, dtype, f"sparse xent {variant} loss")
        assert_close(loss, results["py_func"][0], dtype, f"sparse xent {variant} loss vs py_func")


@pytest.mark.parametrize("soft", [False, True], ids=["onehot", "soft"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_dense(dtype, soft):
    logits = _logits(dtype)
    n, c = logits.shape
    r = rng(5)
    if soft:
        target = r.random((n, c))
        target /= target.sum(axis=1, keepdims=True)
    else:
        target = np.eye(c)[r.integers(0, c, n)]
    target = target.astype(dtype)
    loss_ref, dlogits_ref = REF.softmax_cross_entropy(logits, target)

    def make_args():
        return logits.copy(), target.copy(), np.full_like(logits, np.nan)

    results = run_variants(K.softmax_xent_dense, make_args, outputs=(2,), inputs=(0, 1))
    check_variants(results, [dlogits_ref], dtype, "dense xent")
    for variant, (loss, _) in results.items():
        assert np.ndim(loss) == 0 and np.isfinite(loss), variant
        assert_close(loss, loss_ref, dtype, f"dense xent {variant} loss")
        assert_close(loss, results["py_func"][0], dtype, f"dense xent {variant} loss vs py_func")


# ----------------------------------------------------------------------------------------------
# Optimizer updates
# ----------------------------------------------------------------------------------------------

SIZE = 301


def flush(kernel, dtype) -> tuple:
    """The trailing ``tiny`` argument (state below it is flushed to zero) if the kernel has one:
    the smallest normal number of the dtype, as the backend passes it."""
    if "tiny" in inspect.signature(kernel.py_func).parameters:
        return (np.dtype(dtype).type(np.finfo(dtype).tiny),)
    return ()


def _vectors(dtype, count, seed=6):
    r = rng(seed)
    return [r.standard_normal(SIZE).astype(dtype) for _ in range(count)]


def check_update(results, expected, p0, dtype, what):
    """The parameter (index 0) and the state arrays; the parameter's step is also compared on
    its own, relative to the step, so a wrong step cannot hide under a large parameter."""
    check_variants(results, expected, dtype, what)
    step_ref = np.asarray(expected[0], np.float64) - p0
    _, plain = results["py_func"]
    for variant, (returned, arrays) in results.items():
        assert returned is None, variant
        step = np.asarray(arrays[0], np.float64) - p0
        # Rounding p itself costs ~eps·|p|: allow that on top of the relative tolerance.
        floor = 4 * np.finfo(dtype).eps * np.linalg.norm(p0) / TOL[np.dtype(dtype)]
        scale = np.linalg.norm(step_ref) + floor
        assert_close(step, step_ref, dtype, f"{what} {variant} step", scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update(dtype):
    p, g = _vectors(dtype, 2)
    lr = np.dtype(dtype).type(0.1)
    p_ref = p.copy()
    REF.sgd_update(p_ref, g.copy(), lr)
    results = run_variants(K.sgd_update, lambda: (p.copy(), g.copy(), lr), (0,), (1,))
    check_update(results, [p_ref], p, dtype, "sgd")


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_momentum_update(dtype, nesterov):
    p, g, v = _vectors(dtype, 3)
    t = np.dtype(dtype).type
    lr, momentum = t(0.1), t(np.float32(0.9))
    p_ref, v_ref = p.copy(), v.copy()
    REF.sgd_update(p_ref, g.copy(), lr, momentum, v_ref, nesterov)

    def make_args():
        return (p.copy(), g.copy(), v.copy(), lr, momentum, nesterov) + flush(K.sgd_momentum_update,
                                                                           dtype)

    results = run_variants(K.sgd_momentum_update, make_args, outputs=(0, 2), inputs=(1,))
    check_update(results, [p_ref, v_ref], p, dtype, "nesterov" if nesterov else "momentum")


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update(dtype):
    p, g, m = _vectors(dtype, 3)
    # A second moment is non-negative; spread over decades with a large ε̂ so that where ε̂
    # enters (outside the square root) matters.
    v = (10 ** rng(7).uniform(-6, 0, SIZE)).astype(dtype)
    t = np.dtype(dtype).type
    args = (t(0.05), t(0.1), t(0.001), t(1e-3))
    p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
    REF.adam_update(p_ref, g.copy(), m_ref, v_ref, *args)

    def make_args():
        return (p.copy(), g.copy(), m.copy(), v.copy()) + args + flush(K.adam_update, dtype)

    results = run_variants(K.adam_update, make_args, outputs=(0, 2, 3), inputs=(1,))
    check_update(results, [p_ref, m_ref, v_ref], p, dtype, "adam")


@pytest.mark.parametrize("momentum,centered", [(False, False), (True, False), (False, True),
                                               (True, True)],
                         ids=["plain", "momentum", "centered", "momentum-centered"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsprop_update(dtype, momentum, centered):
    p, g, u = _vectors(dtype, 3)
    r = rng(8)
    v = (1 + r.random(SIZE)).astype(dtype)
    mg = (0.1 * r.standard_normal(SIZE)).astype(dtype)  # keeps v − ḡ² positive
    t = np.dtype(dtype).type
    lr, rho, c, eps, mu = t(0.01), t(0.9), t(1 - 0.9), t(0.3), t(0.5)  # ε large: it matters
    empty = np.empty(0, dtype)
    p_ref, v_ref, u_ref, mg_ref = p.copy(), v.copy(), u.copy(), mg.copy()
    REF.rmsprop_update(p_ref, g.copy(), v_ref, lr, rho, c, eps,
                       momentum=mu if momentum else None, velocity=u_ref if momentum else None,
                       mean_grad=mg_ref if centered else None)

    def make_args():
        return (p.copy(), g.copy(), v.copy(), lr, rho, c, eps, mu if momentum else t(0),
                u.copy() if momentum else empty.copy(), momentum,
                mg.copy() if centered else empty.copy(), centered) + flush(K.rmsprop_update, dtype)

    outputs = (0, 2) + ((8,) if momentum else ()) + ((10,) if centered else ())
    expected = [p_ref, v_ref] + ([u_ref] if momentum else []) + ([mg_ref] if centered else [])
    results = run_variants(K.rmsprop_update, make_args, outputs=outputs, inputs=(1,))
    check_update(results, expected, p, dtype, "rmsprop")


def _subnormal_case(dtype, count, seed=14):
    """Parameters, gradients and ``count`` state vectors; in a third of the entries the gradient
    is 0 and the state subnormal (an input that is never active): the state decays further."""
    p, g, *state = _vectors(dtype, 2 + count, seed)
    idle = rng(seed + 1).random(SIZE) < 1 / 3
    tiny = np.finfo(dtype).tiny
    g[idle] = 0
    for s in state:
        s[idle] = (tiny * rng(seed + 2).uniform(-0.9, 0.9, idle.sum())).astype(dtype)
    return p, g, state, idle


@pytest.mark.parametrize("name", ["sgd_momentum_update", "adam_update", "rmsprop_update"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_state_is_flushed_below_the_smallest_normal(dtype, name):
    kernel = getattr(K, name)
    if not flush(kernel, dtype):
        pytest.skip(f"{name} does not flush subnormal state in this nnlite")
    t = np.dtype(dtype).type
    tiny = np.finfo(dtype).tiny
    count = {"sgd_momentum_update": 1, "adam_update": 2, "rmsprop_update": 3}[name]
    p, g, state, idle = _subnormal_case(dtype, count)
    refs = [p.copy()] + [s.copy() for s in state]
    if name == "sgd_momentum_update":
        hyper = (t(0.1), t(np.float32(0.9)), True)
        REF.sgd_update(refs[0], g, hyper[0], hyper[1], refs[1], True)
        outputs = (0, 2)
    elif name == "adam_update":
        state[1] = np.abs(state[1])
        refs[2] = state[1].copy()
        hyper = (t(0.05), t(0.1), t(0.001), t(1e-7))
        REF.adam_update(refs[0], g, refs[1], refs[2], *hyper)
        outputs = (0, 2, 3)
    else:
        state[0] = np.abs(state[0])
        state[0][~idle] += 1  # v ≥ 1 and |ḡ| ≤ 0.5 where active: v − ḡ² > 0
        state[2][~idle] = np.clip(state[2][~idle], -0.5, 0.5)
        refs[1], refs[3] = state[0].copy(), state[2].copy()
        lr, rho, c, eps, mu = t(0.01), t(0.9), t(1 - 0.9), t(1e-7), t(0.5)
        REF.rmsprop_update(refs[0], g, refs[1], lr, rho, c, eps, momentum=mu,
                           velocity=refs[2], mean_grad=refs[3])
        hyper = (lr, rho, c, eps, mu)
        outputs = (0, 2, 8, 10)

    def make_args():
        s = [a.copy() for a in state]
        if name == "rmsprop_update":
            return (p.copy(), g.copy(), s[0], *hyper, s[1], True, s[2], True, t(tiny))
        return (p.copy(), g.copy(), *s, *hyper, t(tiny))

    results = run_variants(kernel, make_args, outputs=outputs, inputs=(1,))
    for variant, (_, arrays) in results.items():
        # The parameter is what the reference makes of it (a subnormal step is below its ulp).
        assert_close(arrays[0], refs[0], dtype, f"{variant} parameter")
        for k, (array, ref) in enumerate(zip(arrays[1:], refs[1:])):
            assert np.all((array == 0) | (np.abs(array) >= tiny)), f"{variant} state {k}"
            assert np.all(array[idle] == 0), f"{variant} state {k}: idle entries not flushed"
            active = np.abs(ref) >= tiny
            assert_close(array[active], ref[active], dtype, f"{variant} state {k}")


# ----------------------------------------------------------------------------------------------
# Gather and the blocked GEMM
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source,dtype", [(np.uint8, np.float32), (np.uint8, np.float64),
                                          (np.float64, np.float64), (np.float32, np.float32)],
                         ids=["uint8-float32", "uint8-float64", "float64-float64",
                              "float32-float32"])
def test_gather_rows(source, dtype):
    r = rng(9)
    if source == np.uint8:
        data = r.integers(0, 256, (50, 29), dtype=np.uint8)
    else:
        data = r.standard_normal((50, 29)).astype(source)
    index = r.permutation(50)[:33].astype(np.int64)
    index[:3] = [49, 0, 49]  # first and last rows, and a repeat
    expected = REF.gather(data, index, dtype)

    def make_args():
        return data.copy(), index.copy(), np.full((index.size, data.shape[1]), np.nan, dtype)

    results = run_variants(K.gather_rows, make_args, outputs=(2,), inputs=(0, 1))
    for variant, (returned, (out,)) in results.items():
        assert returned is None
        assert out.dtype == np.dtype(dtype)
        # A copy and a cast: exact.
        np.testing.assert_array_equal(out, expected, err_msg=variant)


MATMUL_SHAPES = [(67, 300, 33), (1, 300, 1), (1, 1, 1), (130, 257, 5), (64, 256, 7)]


@pytest.mark.parametrize("n,k,m", MATMUL_SHAPES, ids=[f"{n}x{k}x{m}" for n, k, m in MATMUL_SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_blocked(dtype, n, k, m):
    r = rng(10)
    a = r.standard_normal((n, k)).astype(dtype)
    b = r.standard_normal((k, m)).astype(dtype)
    expected = REF.matmul(a, b)
    results = {}
    for variant in VARIANTS:
        args = [a.copy(), b.copy(), np.full((n, m), np.nan, dtype)]
        out = args[2]
        assert getattr(K.matmul_blocked, variant)(*args) is None
        np.testing.assert_array_equal(args[0], a)
        np.testing.assert_array_equal(args[1], b)
        results[variant] = out
        assert out.dtype == np.dtype(dtype)
        assert_close(out, expected, dtype, f"{variant} vs BLAS")
    for variant, out in results.items():
        # Same loops, same order: the bindings agree with each other (and with py_func) closely.
        assert_close(out, results["py_func"], dtype, f"{variant} vs py_func")


def test_matmul_blocked_overwrites_a_dirty_output():
    a = np.arange(6.0).reshape(2, 3)
    b = np.arange(12.0).reshape(3, 4)
    for variant in VARIANTS:
        out = np.full((2, 4), 7.0)
        getattr(K.matmul_blocked, variant)(a, b, out)
        np.testing.assert_array_equal(out, a @ b, err_msg=variant)


# ----------------------------------------------------------------------------------------------
# LSTM step
# ----------------------------------------------------------------------------------------------

needs_lstm = pytest.mark.skipif(
    not (hasattr(K, "lstm_cell_forward") and hasattr(REF, "lstm_cell_forward")),
    reason="no LSTM kernels in this nnlite",
)
LSTM_CODES = [("tanh", "sigmoid"), ("relu", "sigmoid"), ("linear", "tanh"), ("sigmoid", "relu")]
LSTM_IDS = [f"{a}-{r}" for a, r in LSTM_CODES]


def _lstm_inputs(dtype, n=9, u=7, seed=12):
    r = rng(seed)
    z = (2 * r.standard_normal((n, 4 * u))).astype(dtype)
    # Pre-activations kept away from ReLU's kink (|z| ≥ 0.05).
    z += (np.where(z >= 0, 0.05, -0.05)).astype(dtype)
    c_prev = r.standard_normal((n, u)).astype(dtype)
    return z, c_prev


@needs_lstm
@pytest.mark.parametrize("act,rec", LSTM_CODES, ids=LSTM_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_forward(dtype, act, rec):
    z, c_prev = _lstm_inputs(dtype)
    refs = REF.lstm_cell_forward(z.copy(), c_prev.copy(), activations.get(act),
                                 activations.get(rec))

    def make_args():
        nan = np.full_like(c_prev, np.nan)
        return (z.copy(), c_prev.copy(), K.CODES[act], K.CODES[rec], np.full_like(z, np.nan),
                nan.copy(), nan.copy(), nan.copy())

    results = run_variants(K.lstm_cell_forward, make_args, outputs=(4, 5, 6, 7), inputs=(0, 1))
    for returned, _ in results.values():
        assert returned is None
    check_variants(results, list(refs), dtype, f"lstm forward {act}/{rec}")


@needs_lstm
@pytest.mark.parametrize("has_dy", [True, False], ids=["dy", "nody"])
@pytest.mark.parametrize("act,rec", LSTM_CODES, ids=LSTM_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_backward(dtype, act, rec, has_dy):
    z, c_prev = _lstm_inputs(dtype)
    act_fn, rec_fn = activations.get(act), activations.get(rec)
    gates, _, act_c, _ = (np.array(a) for a in REF.lstm_cell_forward(z, c_prev, act_fn, rec_fn))
    r = rng(13)
    dh, dy, dc = (r.standard_normal(c_prev.shape).astype(dtype) for _ in range(3))
    dc_ref = dc.copy()
    dz_ref = REF.lstm_cell_backward(dh.copy(), dy.copy() if has_dy else None, dc_ref,
                                    gates.copy(), c_prev.copy(), act_c.copy(), act_fn, rec_fn)

    def make_args():
        dh_ = dh.copy()
        return (dh_, dy.copy() if has_dy else dh_, has_dy, dc.copy(), gates.copy(),
                c_prev.copy(), act_c.copy(), K.CODES[act], K.CODES[rec],
                np.full_like(gates, np.nan))

    results = run_variants(K.lstm_cell_backward, make_args, outputs=(3, 9),
                           inputs=(0, 1, 4, 5, 6))
    for returned, _ in results.values():
        assert returned is None
    check_variants(results, [dc_ref, dz_ref], dtype, f"lstm backward {act}/{rec}")


# ----------------------------------------------------------------------------------------------
# LSTM: the walks through time (compiled loops with np.dot), whole batch and row blocks
# ----------------------------------------------------------------------------------------------

needs_lstm_sequence = pytest.mark.skipif(
    not (hasattr(K, "lstm_forward_sequence") and hasattr(REF, "lstm_forward_sequence")),
    reason="no compiled LSTM time loops in this nnlite",
)


def _lstm_sequence_inputs(dtype, t=5, n=9, u=7, d=3, seed=21):
    """xh (T, N, U+D+1) with h_0 and every step's x and ones (the h columns of steps 1..T−1
    NaN: the walk must write them before it reads them), theta (U+D+1, 4U) and c (T+1, N, U)
    with c_0 (NaN after)."""
    r = rng(seed)
    xh = np.full((t, n, u + d + 1), np.nan, dtype)
    xh[0, :, :u] = r.standard_normal((n, u))  # h_0, c_0 need not be zero for the kernels
    xh[:, :, u:u + d] = r.standard_normal((t, n, d))
    xh[:, :, u + d] = 1
    theta = (0.5 * r.standard_normal((u + d + 1, 4 * u))).astype(dtype)
    c = np.full((t + 1, n, u), np.nan, dtype)
    c[0] = r.standard_normal((n, u))
    return xh, theta, c


def _lstm_sequence_outputs(xh, c):
    """NaN-filled gates (T, N, 4U), h and φ(c) (T, N, U), hz (N, 4U) for one forward walk."""
    (t, n, _), u = xh.shape, c.shape[2]
    full = functools.partial(np.full, fill_value=np.nan, dtype=xh.dtype)
    return full((t, n, 4 * u)), full((t, n, u)), full((t, n, u)), full((n, 4 * u))


def _packed(b):
    """``b`` packed for :func:`numba_kernels.gemm_packed` (as the backend packs θ and Rᵀ)."""
    panels = np.full(K.panel_shape(*b.shape, b.dtype), np.nan, b.dtype)
    K.pack_panels(b, panels)
    return panels


def _row_blocks(n):
    """The whole batch, and two uneven blocks (as two threads would split it)."""
    return [[(0, n)], [(0, 4), (4, n)]]


@needs_lstm_sequence
@pytest.mark.parametrize("act,rec", LSTM_CODES, ids=LSTM_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_forward_sequence(dtype, act, rec):
    xh0, theta, c0 = _lstm_sequence_inputs(dtype)
    act_fn, rec_fn = activations.get(act), activations.get(rec)
    xh_ref, c_ref = xh0.copy(), c0.copy()
    g_ref, h_ref, a_ref, hz = _lstm_sequence_outputs(xh0, c0)
    REF.lstm_forward_sequence(xh_ref, theta, g_ref, c_ref, h_ref, a_ref, hz, act_fn, rec_fn)
    assert np.all(np.isfinite(h_ref)) and np.all(np.isfinite(xh_ref))
    panels = _packed(theta)
    for variant in ("py_func", "compiled"):
        kernel = K.lstm_forward_sequence
        kernel = kernel.py_func if variant == "py_func" else kernel
        for blocks in _row_blocks(xh0.shape[1]):
            xh, c = xh0.copy(), c0.copy()
            g, h, a, hz = _lstm_sequence_outputs(xh0, c0)
            panels_before = panels.copy()
            for r0, r1 in blocks:
                assert kernel(xh, panels, g, c, h, a, hz, K.CODES[act], K.CODES[rec], r0,
                              r1) is None
            np.testing.assert_array_equal(panels, panels_before)
            what = f"lstm forward sequence {act}/{rec} {variant} blocks {blocks}"
            for got, want in zip((xh, g, c, h, a), (xh_ref, g_ref, c_ref, h_ref, a_ref)):
                assert got.dtype == np.dtype(dtype), what
                assert_close(got, want, dtype, what)


def _lstm_forward_reference(dtype, act_fn, rec_fn, **sizes):
    """One reference forward walk: (xh, theta, gates, c, h, act_c)."""
    xh, theta, c = _lstm_sequence_inputs(dtype, **sizes)
    gates, h, act_c, hz = _lstm_sequence_outputs(xh, c)
    REF.lstm_forward_sequence(xh, theta, gates, c, h, act_c, hz, act_fn, rec_fn)
    return xh, theta, gates, c, h, act_c


@needs_lstm_sequence
@pytest.mark.parametrize("sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("act,rec", LSTM_CODES, ids=LSTM_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_backward_sequence(dtype, act, rec, sequences):
    act_fn, rec_fn = activations.get(act), activations.get(rec)
    _, theta, gates, c, _, act_c = _lstm_forward_reference(dtype, act_fn, rec_fn)
    t, n, u4 = gates.shape
    u = u4 // 4
    recurrent = theta[:u]
    dy = rng(22).standard_normal((t if sequences else 1, n, u)).astype(dtype)
    nan = np.full((n, u), np.nan, dtype)
    dz_ref = np.full_like(gates, np.nan)
    dc_ref = nan.copy()
    REF.lstm_backward_sequence(dy, gates, recurrent, c, act_c, nan.copy(), dc_ref, dz_ref,
                               act_fn, rec_fn)
    assert np.all(np.isfinite(dz_ref))
    panels = _packed(recurrent.T)
    inputs = (dy, gates, panels, c, act_c)
    before = [a.copy() for a in inputs]
    for variant in ("py_func", "compiled"):
        kernel = K.lstm_backward_sequence
        kernel = kernel.py_func if variant == "py_func" else kernel
        for blocks in _row_blocks(n):
            dz, dc = np.full_like(gates, np.nan), nan.copy()
            for r0, r1 in blocks:
                assert kernel(dy, gates, panels, c, act_c, nan.copy(), dc, dz, K.CODES[act],
                              K.CODES[rec], r0, r1) is None
            what = f"lstm backward sequence {act}/{rec} {variant} blocks {blocks}"
            assert dz.dtype == np.dtype(dtype), what
            assert_close(dz, dz_ref, dtype, what)
            assert_close(dc, dc_ref, dtype, what + " dc_0")  # dc ends as ∂L/∂c_0
    for array, copy in zip(inputs, before):
        np.testing.assert_array_equal(array, copy)


LAUNCHERS = ("lstm_forward_blocks", "lstm_backward_blocks", "matmul_row_blocks",
             "matmul_sum_blocks")


def _record_launchers(monkeypatch):
    """Wrap the row-block launchers of numba_kernels; returns the list of (name, bounds) of
    every call the backend makes."""
    calls = []
    for name in LAUNCHERS:
        launcher = getattr(K, name)

        def record(*args, _name=name, _launcher=launcher):
            calls.append((_name, args[-1].tolist()))
            return _launcher(*args)

        monkeypatch.setattr(K, name, record)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bounds", [[0, 40], [0, 7, 19, 40]], ids=["one", "three-uneven"])
def test_matmul_block_launchers(dtype, bounds):
    """Row blocks and blocks of the inner dimension give the product of one BLAS call."""
    r = rng(8)
    a, b = r.standard_normal((40, 23)).astype(dtype), r.standard_normal((23, 17)).astype(dtype)
    bounds = np.array(bounds, np.int64)
    for variant in ("py_func", "compiled"):
        rows, summed = (getattr(k, "py_func") if variant == "py_func" else k
                        for k in (K.matmul_row_blocks, K.matmul_sum_blocks))
        out = np.full((40, 17), np.nan, dtype)
        rows(a, b, out, bounds)
        assert_close(out, a @ b, dtype, f"row blocks {variant}")
        # aᵀ·c over the 40 rows of a and c, in blocks of those rows
        c = r.standard_normal((40, 17)).astype(dtype)
        parts = np.full((bounds.size - 1, 23, 17), np.nan, dtype)
        out = np.full((23, 17), np.nan, dtype)
        summed(a, c, parts, out, bounds)
        assert_close(out, a.T @ c, dtype, f"sum blocks {variant}")


@needs_lstm_sequence
@pytest.mark.parametrize("min_rows", [1, 10 ** 9], ids=["row-blocks", "one-block"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_backend_lstm_sequences_on_threads(dtype, min_rows, monkeypatch):
    # The backend walks row blocks (and sums the weight gradients over blocks of rows) on
    # several threads when Numba has more than one; the result must not depend on the split.
    from nnlite import config
    from nnlite.backend import numba_backend

    monkeypatch.setattr(numba_backend, "MIN_BLOCK_ROWS", min_rows)
    monkeypatch.setattr(numba_backend, "GEMM_MIN_BLOCK", min_rows)
    monkeypatch.setattr(numba_backend, "SPLIT_GEMM_FLOPS", 0)
    # Blocks run only while BLAS is on one thread (as inside fit for small steps).
    monkeypatch.setattr(config, "blas_single_threaded", lambda: True)
    backend = numba_backend.NumbaBackend()
    launched = _record_launchers(monkeypatch)
    xh0, theta, c0 = _lstm_sequence_inputs(dtype, n=11)
    t, n, width = xh0.shape
    u = c0.shape[2]
    tanh, sigmoid = activations.get("tanh"), activations.get("sigmoid")
    results = []
    for impl in (REF, backend):
        xh, c = xh0.copy(), c0.copy()
        g, h, a, hz = _lstm_sequence_outputs(xh0, c0)
        impl.lstm_forward_sequence(xh, theta, g, c, h, a, hz, tanh, sigmoid)
        dz, dc = np.empty_like(g), np.empty((n, u), dtype)
        dy = rng(3).standard_normal((n, u)).astype(dtype)[None]
        impl.lstm_backward_sequence(dy, g, theta[:u], c, a, np.empty((n, u), dtype), dc, dz,
                                    tanh, sigmoid)
        # The layer's weight gradients: xh_tᵀ·dz_t summed over all steps (and row blocks).
        wgrad = np.full((width, 4 * u), np.nan, dtype)
        impl.matmul(xh.reshape(t * n, width).T, dz.reshape(t * n, 4 * u), out=wgrad)
        results.append((xh, g, c, h, a, dz, dc, wgrad))
    for k, (got, want) in enumerate(zip(results[1], results[0])):
        assert_close(got, want, dtype, f"output {k}")
    import numba

    if min_rows == 1 and numba.get_num_threads() > 1:
        assert {name for name, _ in launched} == {"lstm_forward_blocks", "lstm_backward_blocks",
                                                  "matmul_sum_blocks"}
    else:
        assert launched == []


@needs_lstm_sequence
def test_numba_lstm_row_blocks_wait_for_single_threaded_blas(monkeypatch):
    """With BLAS on several threads each GEMM is already split: no row blocks on top."""
    from nnlite import config
    from nnlite.backend import numba_backend

    monkeypatch.setattr(numba_backend, "MIN_BLOCK_ROWS", 1)
    backend = numba_backend.NumbaBackend()
    launched = _record_launchers(monkeypatch)
    monkeypatch.setattr(config, "blas_single_threaded", lambda: False)
    xh, theta, c = _lstm_sequence_inputs("float64", n=11)
    tanh, sigmoid = activations.get("tanh"), activations.get("sigmoid")
    gates, h, act_c, hz = _lstm_sequence_outputs(xh, c)
    backend.lstm_forward_sequence(xh, theta, gates, c, h, act_c, hz, tanh, sigmoid)
    assert np.all(np.isfinite(h))
    assert launched == []


@pytest.mark.parametrize("shape", [(300, 40, 70), (30, 200, 150)], ids=["tall", "wide"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_backend_splits_large_gemms_while_blas_is_single_threaded(dtype, shape,
                                                                        monkeypatch):
    """A GEMM over the size threshold runs on the backend's threads while BLAS is held to one
    thread: as row blocks, or (a transposed view on the left) as a sum over blocks of the inner
    dimension; the same products as one BLAS call."""
    import numba

    from nnlite import config
    from nnlite.backend import numba_backend

    if numba.get_num_threads() < 2:
        pytest.skip("needs two Numba threads")
    monkeypatch.setattr(numba_backend, "SPLIT_GEMM_FLOPS", 1e5)
    monkeypatch.setattr(numba_backend, "GEMM_MIN_BLOCK", 8)
    backend = numba_backend.NumbaBackend()
    launched = _record_launchers(monkeypatch)
    m, k, n = shape
    r = rng(5)
    a, b = r.standard_normal((m, k)).astype(dtype), r.standard_normal((k, n)).astype(dtype)
    for single in (False, True):
        monkeypatch.setattr(config, "blas_single_threaded", lambda: single)
        out = np.full((m, n), np.nan, dtype)
        assert backend.matmul(a, b, out=out) is out
        assert_close(out, np.matmul(a, b), dtype, f"split={single}")
        assert_close(backend.matmul(a.T.copy().T, b), np.matmul(a, b), dtype, "alloc")
        # A linear Dense layer over the split GEMM.
        bias = r.standard_normal(n).astype(dtype)
        z, y = backend.dense_forward(a, b, bias, activations.get("linear"))
        assert y is z
        assert_close(z, np.matmul(a, b) + bias, dtype, f"bias split={single}")
        names = [name for name, _ in launched]
        expected = ["matmul_row_blocks", "matmul_sum_blocks", "matmul_row_blocks"]
        assert names == (expected if single else []), names
        launched.clear()


def test_split_gemm_reuses_its_partial_products(monkeypatch):
    """The inner-dimension split keeps its scratch from call to call (no allocation per
    step), per shape, and still gives one BLAS call's product."""
    import numba

    from nnlite import config
    from nnlite.backend import numba_backend

    if numba.get_num_threads() < 2:
        pytest.skip("needs two Numba threads")
    monkeypatch.setattr(numba_backend, "SPLIT_GEMM_FLOPS", 1e5)
    monkeypatch.setattr(numba_backend, "GEMM_MIN_BLOCK", 8)
    monkeypatch.setattr(config, "blas_single_threaded", lambda: True)
    backend = numba_backend.NumbaBackend()
    r = rng(9)
    x, dz = r.standard_normal((200, 30)), r.standard_normal((200, 40))
    first = backend.matmul(x.T, dz)
    scratch = dict(backend._local.scratch)
    second = backend.matmul(x.T, dz)
    assert len(scratch) == 1
    assert all(backend._local.scratch[key] is buf for key, buf in scratch.items())
    np.testing.assert_array_equal(first, second)
    assert_close(second, x.T @ dz, "float64", "x·dz")


# ----------------------------------------------------------------------------------------------
# The Dense-stack training loop (models/dense_stack.py; whole fits in tests/test_dense_stack.py)
# ----------------------------------------------------------------------------------------------


def _stack_plan(dtype, batch, widths=((11, "tanh", True),), seed=5):
    """The plan of a 13 -> ... -> 4 softmax stack for ``batch`` rows; ``widths`` are the
    hidden layers' (units, activation, use_bias)."""
    import nnlite
    from nnlite.models.dense_stack import DenseStack

    nnlite.config.set_floatx(np.dtype(dtype).name)
    try:
        hidden = [nnlite.layers.Dense(units, activation=act, use_bias=bias)
                  for units, act, bias in widths]
        model = nnlite.Sequential([nnlite.Input((13,)), *hidden,
                                   nnlite.layers.Dense(4, activation="softmax")], seed=seed)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model._pack_parameters()
        stack = DenseStack.of(model)
    finally:
        nnlite.config.set_floatx("float32")
    plan = stack.plan(batch)
    plan.x = np.empty((batch, 13), dtype)
    return plan


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_stack_train(dtype):
    """Three Adam steps of batch 8 (losses, parameters, moments, right predictions): each
    binding against the NumPy backend's loop, and the parallel binding with two row blocks
    against one block."""
    from nnlite.backend import numba_backend

    r = rng(12)
    data = r.standard_normal((30, 13)).astype(dtype)
    labels = r.integers(0, 4, 30).astype(np.int64)
    order = r.permutation(30)[:24].astype(np.int64)
    plan = _stack_plan(dtype, 8)
    scalars = np.array([[0.01, 0.1, 0.001, 1e-7]] * 3, dtype)
    start = plan.params.copy()

    def run(blocks, call):
        plan.params[:] = start
        m, v = np.zeros_like(start), np.zeros_like(start)
        losses = np.full(3, np.nan, dtype)
        layouts, part_grads = numba_backend._row_blocks(plan, blocks)
        correct = np.full(3, -1, np.int64)
        done = call(data, labels, order, plan.x, np.empty(8, np.int64), plan.params, plan.grads,
                    plan.work, layouts, plan.codes, K.ADAM, m, v, scalars,
                    np.finfo(dtype).tiny, losses, part_grads, correct)
        assert done == 3
        return losses, plan.params.copy(), m, v, correct

    plan.params[:] = start
    m, v = np.zeros_like(start), np.zeros_like(start)
    losses, correct = np.full(3, np.nan, dtype), np.full(3, -1, np.int64)
    assert REF.dense_stack_train(data, labels, order, plan, ("adam", (m, v), scalars), losses,
                                 correct) == 3
    expected = (losses, plan.params.copy(), m, v, correct)
    for variant in VARIANTS:
        for got, want in zip(run(1, getattr(K.dense_stack_train, variant)), expected):
            assert_close(got, want, dtype, f"dense_stack_train {variant}")
    for got, want in zip(run(2, K.dense_stack_train.parallel), expected):
        assert_close(got, want, dtype, "dense_stack_train, two row blocks")


@pytest.mark.parametrize("batch", [2 * K.PACKED_MIN_ROWS - 1, 2 * K.PACKED_MAX_K + 1],
                         ids=["31-32", "256-257"])
def test_dense_stack_train_row_blocks_across_the_packing_thresholds(batch):
    """Two row blocks a row apart on both sides of a threshold (one packs, one does not): each
    gets the scratch it needs, and the step is the one-block step's."""
    from nnlite.backend import numba_backend

    dtype = np.float64
    r = rng(14)
    data = r.standard_normal((batch, 13)).astype(dtype)
    labels = r.integers(0, 4, batch).astype(np.int64)
    plan = _stack_plan(dtype, batch, widths=((37, "relu", True),))
    start = plan.params.copy()
    results = []
    for blocks, kernel in ((1, K.dense_stack_train.serial), (2, K.dense_stack_train.parallel)):
        plan.params[:] = start
        m, v = np.zeros_like(start), np.zeros_like(start)
        losses = np.full(1, np.nan, dtype)
        layouts, part_grads = numba_backend._row_blocks(plan, blocks)
        assert kernel(data, labels, np.arange(batch), plan.x, np.empty(batch, np.int64),
                      plan.params, plan.grads, plan.work, layouts, plan.codes, K.ADAM, m, v,
                      np.array([[0.01, 0.1, 0.001, 1e-7]], dtype), np.finfo(dtype).tiny,
                      losses, part_grads, np.empty(0, np.int64)) == 1
        results.append((losses.copy(), plan.params.copy()))
    for got, want in zip(*results):
        assert_close(got, want, dtype, f"batch {batch} in two blocks")


@pytest.mark.parametrize("batch", [7, K.PACKED_MIN_ROWS, K.PACKED_MAX_K, K.PACKED_MAX_K + 1],
                         ids=["packed-dW", "packed-kernels", "packed-largest", "blas"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_stack_step_packs_or_calls_blas(dtype, batch):
    """The compiled step packs dz for the weight gradients up to PACKED_MAX_K rows, and from
    PACKED_MIN_ROWS rows also the kernels of layers a panel wide or wider for the forward
    (here the 37-unit layer; the 11- and 4-unit ones stay on BLAS), and calls BLAS past
    PACKED_MAX_K (its scratch then empty): loss, gradients and the layers' z and y against the
    NumPy backend's step, for the compiled function and its plain Python form."""
    plan = _stack_plan(dtype, batch, widths=((37, "relu", True), (11, "tanh", False)))
    r = rng(13)
    x = r.standard_normal((batch, 13)).astype(dtype)
    labels = r.integers(0, 4, batch).astype(np.int64)
    size = K.step_scratch_size(batch, plan.layout)
    assert (size == 0) == (batch > K.PACKED_MAX_K)

    def matrices(plan):  # the gradients, and z and y of every layer from `work`
        views = [plan.grads.copy()]
        for d_out, *offsets in plan.layout[:, [K.D_OUT, K.Z, K.Y]]:
            views += [plan.work[at:at + batch * d_out].reshape(batch, d_out).copy()
                      for at in offsets]
        return views

    loss, outputs = REF.dense_stack_step(x, labels, plan)
    expected = [plan.grads.copy()] + [a.copy() for pair in outputs for a in pair]
    for name, step in (("compiled", K.dense_stack_step), ("py_func", K.dense_stack_step.py_func)):
        plan.grads[:], plan.work[:] = np.nan, np.nan
        got = step(x, labels, plan.params, plan.grads, plan.work, plan.layout, plan.codes,
                   np.full(size, np.nan, dtype))
        assert got == pytest.approx(loss, rel=TOL[np.dtype(dtype)]), name
        for k, (array, want) in enumerate(zip(matrices(plan), expected)):
            assert_close(array, want, dtype, f"{name} batch {batch} array {k}")


# ----------------------------------------------------------------------------------------------
# Wide stacks: GEMMs split by columns over Numba's threads (dense_stack_train_columns)
# ----------------------------------------------------------------------------------------------


@functools.cache
def _compiled_gemm():
    import numba

    @numba.njit
    def call(trans_a, trans_b, a, b, out):
        K.gemm(trans_a, trans_b, a, b, out)

    return call


@pytest.mark.parametrize("trans_b", [False, True], ids=["b", "bT"])
@pytest.mark.parametrize("trans_a", [False, True], ids=["a", "aT"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_writes_a_block_of_columns_in_place(dtype, trans_a, trans_b):
    """``gemm`` on column blocks of larger C-ordered matrices (strided rows): the product of
    the blocks, written into the output's block only; plain and compiled (one BLAS call)."""
    r = rng(3)
    m, k, n = 7, 9, 5
    big_a = r.standard_normal((k, m + 4) if trans_a else (m, k + 4)).astype(dtype)
    big_b = r.standard_normal((n, k + 3) if trans_b else (k, n + 3)).astype(dtype)
    a = big_a[:, 2:2 + m] if trans_a else big_a[:, 2:2 + k]
    b = big_b[:, 1:1 + k] if trans_b else big_b[:, 1:1 + n]
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b)
    for name, call in (("py_func", K.gemm), ("compiled", _compiled_gemm())):
        out = np.full((m, n + 6), np.nan, dtype)
        call(trans_a, trans_b, a, b, out[:, 3:3 + n])
        assert_close(out[:, 3:3 + n], expected, dtype, name)
        assert np.isnan(out[:, :3]).all() and np.isnan(out[:, 3 + n:]).all(), name
        # An empty inner dimension: zeros, as np.dot gives.
        out = np.full((m, n), np.nan, dtype)
        call(trans_a, trans_b, a[:0] if trans_a else a[:, :0], b[:, :0] if trans_b else b[:0],
             out)
        np.testing.assert_array_equal(out, 0, err_msg=name)


@functools.cache
def _compiled_gemm_packed():
    import numba

    @numba.njit
    def call(a, panels, out):
        K.gemm_packed(a, panels, out)

    return call


@pytest.mark.parametrize("transposed", [False, True], ids=["b", "bT"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_panels(dtype, transposed):
    """Panels of ``width`` columns, ``panels[p, k, j] = b[k, p·width + j]``, zeros past the
    last column (a C-ordered b, and a transposed view as the backend packs Rᵀ)."""
    width = K.panel_width(dtype)
    assert width * np.dtype(dtype).itemsize == 128  # two 64-byte vectors
    r = rng(4)
    for k, n in ((1, 1), (7, width), (5, width + 3), (3, 2 * width - 1), (0, 5)):
        b = r.standard_normal((n, k)).astype(dtype).T if transposed else \
            r.standard_normal((k, n)).astype(dtype)
        assert K.panel_shape(k, n, dtype) == (-(-n // width), k, width)
        count = K.panel_shape(k, n, dtype)[0]
        padded = np.zeros((k, count * width), dtype)
        padded[:, :n] = b
        expected = padded.reshape(k, count, width).transpose(1, 0, 2)
        for name, pack in (("py_func", K.pack_panels.py_func), ("compiled", K.pack_panels)):
            panels = np.full(K.panel_shape(k, n, dtype), np.nan, dtype)
            assert pack(b, panels) is None
            np.testing.assert_array_equal(panels, expected, err_msg=f"{name} {k}x{n}")
        # pack_rows repacks rows r0 … r1 − 1 only (what the column-split loop's update does)
        if k >= 3:
            for name, pack in (("py_func", K.pack_rows.py_func), ("compiled", K.pack_rows)):
                panels = np.full(K.panel_shape(k, n, dtype), np.nan, dtype)
                assert pack(b, panels, 1, k - 1) is None
                np.testing.assert_array_equal(panels[:, 1:k - 1], expected[:, 1:k - 1],
                                              err_msg=f"{name} {k}x{n} rows")
                assert np.isnan(panels[:, [0, k - 1]]).all(), f"{name}: wrote other rows"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [False, True], ids=["a", "aT"])
def test_gemm_packed_against_numpy(dtype, transposed):
    """``gemm_packed`` (the micro-kernel over tiles of 8, 4, 2 and 1 rows, the last panel
    masked) against NumPy's product for every row remainder and panel edge, with a left factor
    whose rows are strided or which is a transposed view: written into a block of a larger
    output (strided rows) and nowhere else; an empty inner dimension gives zeros."""
    r = rng(5)
    width = K.panel_width(dtype)
    shapes = [(m, k, n) for m in (1, 2, 7, 8, 15, 50) for k, n in ((1, 1), (9, width),
                                                                (17, width + 5), (4, 3))]
    for name, call in (("py_func", K.gemm_packed), ("compiled", _compiled_gemm_packed())):
        for m, k, n in shapes + [(0, 3, 4), (4, 0, 7)]:
            if transposed:
                a = r.standard_normal((k + 3, m)).astype(dtype)[3:].T
            else:
                a = r.standard_normal((m, k + 3)).astype(dtype)[:, 1:1 + k]
            b = r.standard_normal((k, n)).astype(dtype)
            panels = np.full(K.panel_shape(k, n, dtype), np.nan, dtype)
            K.pack_panels(b, panels)
            big = np.full((m + 2, n + 7), np.nan, dtype)
            out = big[1:1 + m, 3:3 + n]
            assert call(a, panels, out) is None
            what = f"{name} {m}x{k}x{n}"
            if k == 0:
                np.testing.assert_array_equal(out, 0, err_msg=what)
            elif m:
                assert_close(out, a.astype(np.float64) @ b, dtype, what)
            out[...] = 0
            assert np.isnan(big).sum() == big.size - out.size, f"{what}: wrote outside out"
        # An output whose rows are not contiguous (a transposed view) is refused.
        panels = np.zeros(K.panel_shape(3, 4, dtype), dtype)
        with pytest.raises(ValueError, match="contiguous rows"):
            call(np.ones((5, 3), dtype), panels, np.zeros((4, 5), dtype).T)


RULE_SCALARS = {"sgd": [0.05], "momentum": [0.05, 0.9], "nesterov": [0.05, 0.9],
                "adam": [0.01, 0.1, 0.001, 1e-7],
                "rmsprop": [0.01, 0.9, 0.1, 1e-7, 0.0],
                "rmsprop_momentum": [0.01, 0.8, 0.2, 1e-7, 0.5],
                "rmsprop_centered": [0.01, 0.9, 0.1, 1e-7, 0.0]}


# 13 -> 130 -> 129 (no bias) -> 4 softmax: two layers wide enough to split (MIN_COLUMNS = 64:
# blocks of 65/65 and 64/65 columns), one that is not. Every rule on one stack (the SGD and
# Adam rules with both label forms); every other activation (a hidden softmax and a linear
# layer, whose y is its z, included) with one of each.
COLUMN_STACKS = {"relu-tanh": ("relu", "tanh"), "sigmoid-linear": ("sigmoid", "linear"),
                 "softmax-relu": ("softmax", "relu")}
COLUMN_CASES = ([("relu-tanh", rule, onehot) for rule in ("adam", "momentum", "nesterov", "sgd")
                 for onehot in (False, True)]
                + [("relu-tanh", rule, False) for rule in ("rmsprop", "rmsprop_centered",
                                                           "rmsprop_momentum")]
                + [("sigmoid-linear", "adam", False), ("softmax-relu", "momentum", True)])


@pytest.mark.parametrize("stack, rule, onehot", COLUMN_CASES,
                         ids=[f"{s}-{r}-{'onehot' if o else 'labels'}"
                              for s, r, o in COLUMN_CASES])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [70, K.PACKED_MAX_K + 4])
def test_dense_stack_train_columns(stack, batch, dtype, rule, onehot):
    """Three steps of a batch on 1, 2 and 3 threads (at these sizes at most two blocks of
    columns or rows each, some uneven: the third thread finds nothing to split) against the
    NumPy backend's loop: losses, parameters, optimizer state, gradients, the layers' z, y,
    dz and dx, and the right predictions. At 70 rows the wide layers' forward GEMMs run on
    their packed kernels, whose scratch starts as NaN: the loop must pack every kernel it
    multiplies by, and repack it after each update; past PACKED_MAX_K rows they run in BLAS."""
    from nnlite.backend import numba_backend

    r = rng(21)
    data = r.standard_normal((batch + 30, 13)).astype(dtype)
    labels = r.integers(0, 4, batch + 30).astype(np.int64)
    targets = np.eye(4, dtype=dtype)[labels] if onehot else labels
    order = np.stack([r.permutation(batch + 30)[:batch] for _ in range(3)]).ravel()
    order = order.astype(np.int64)
    first, second = COLUMN_STACKS[stack]
    plan = _stack_plan(dtype, batch, ((130, first, True), (129, second, False)), seed=7)
    scalars = np.array([RULE_SCALARS[rule]] * 3, dtype)
    start = plan.params.copy()
    states = {"sgd": 0, "momentum": 1, "nesterov": 1, "rmsprop": 1}.get(rule, 2)

    def run(call):
        plan.params[:] = start
        plan.grads[:] = np.nan
        plan.work[:] = np.nan
        state = [np.zeros_like(start) for _ in range(states)]
        losses, correct = np.full(3, np.nan, dtype), np.full(3, -1, np.int64)
        assert call(state, losses, correct) == 3
        return (losses, plan.params.copy(), *state, plan.grads.copy(), plan.work.copy(),
                correct)

    expected = run(lambda state, losses, correct: REF.dense_stack_train(
        data, targets, order, plan, (rule, state, scalars), losses, correct))
    none = plan.params[:0]
    # The NumPy loop keeps some outputs in buffers of its own: z, y, dz and dx in ``work``
    # are checked against the compiled one-thread loop instead.
    layouts, part_grads = numba_backend._row_blocks(plan, 1)
    expected[-2][:] = run(lambda state, losses, correct: K.dense_stack_train.serial(
        data, targets, order, plan.x, np.empty((batch,) + targets.shape[1:], targets.dtype),
        plan.params, plan.grads, plan.work, layouts, plan.codes, K.RULES[rule],
        *(list(state) + [none, none])[:2], scalars, np.finfo(dtype).tiny, losses, part_grads,
        correct))[-2]
    for threads in (1, 2, 3):
        got = run(lambda state, losses, correct: K.dense_stack_train_columns(
            data, targets, order, plan.x, np.empty((batch,) + targets.shape[1:], targets.dtype),
            plan.params, plan.grads, plan.work, plan.layout, plan.codes, K.RULES[rule],
            *(list(state) + [none, none])[:2], scalars, np.finfo(dtype).tiny, losses, correct,
            threads, np.full(K.columns_panels_size(batch, plan.layout, plan.params.itemsize),
                             np.nan, dtype)))
        names = ["losses", "params", *(f"state{i}" for i in range(states)), "grads", "work",
                 "correct"]
        for name, g, w in zip(names, got, expected):
            assert_close(g, w, dtype, f"{rule} {threads} threads: {name}")


def test_numba_fit_splits_wide_stacks_by_columns_unless_blas_is_single_threaded(monkeypatch):
    """``fit`` of a wide stack runs the column-split loop with BLAS held to one thread and
    Numba's threads; with ``set_threads(1)`` (or small steps) it runs the row-block loop."""
    import numba

    import nnlite
    from nnlite import config

    if numba.get_num_threads() < 2:
        pytest.skip("needs two Numba threads")
    calls = []
    column_loop = K.dense_stack_train_columns

    def record(*args):
        calls.append((config.blas_single_threaded(), args[-2]))  # (…, threads, panels)
        return column_loop(*args)

    monkeypatch.setattr(K, "dense_stack_train_columns", record)
    monkeypatch.setattr(config, "SMALL_STEP_FLOPS", 0)  # this small model's steps count as big
    r = rng(4)
    x, y = r.standard_normal((140, 13)).astype(np.float32), r.integers(0, 4, 140)
    nnlite.set_backend("numba")
    try:
        model = nnlite.Sequential([nnlite.Input((13,)), nnlite.layers.Dense(130, "relu"),
                                   nnlite.layers.Dense(4, "softmax")], seed=1)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        history = model.fit(x, y, batch_size=70, epochs=2, verbose=0)
        assert calls == [(True, numba.get_num_threads())] * 2
        assert not config.blas_single_threaded()
        calls.clear()
        nnlite.config.set_threads(1)
        model.fit(x, y, batch_size=70, epochs=1, verbose=0)
        assert calls == []
    finally:
        nnlite.config.set_threads(None)
        nnlite.set_backend("numpy")
    assert np.all(np.isfinite(history.history["loss"]))
