"""The backend registry, the Numba backend against the NumPy reference, and the flat packing.

- selection: names, ``auto``, ``NNLITE_BACKEND``, missing packages, lazy imports;
- every public kernel method of each installed backend (the ``backend`` fixture) against the
  reference :class:`nnlite.backend.Backend`: float64 relative error ≤ 1e-12, float32 ≤ 1e-5,
  with and without ``out=`` buffers, on contiguous and non-contiguous arrays (the fallback path);
  the Numba backend also with its parallel bindings forced (``PARALLEL_THRESHOLD = 0``); the
  LSTM cell for every pair of the activations an LSTM accepts, with and without ``dy``;
- the CuPy LSTM kernels' CUDA sources, checked as text without a GPU (a stand-in ``cupy``);
- the model's flat parameter packing and whole trainings that must agree across backends.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import nnlite
from nnlite import activations, config
from nnlite.backend import Backend, BackendUnavailable
from nnlite.layers import Dense, Input

REF = Backend()
DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax"]
HAS_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")


def rel_err(actual, expected) -> float:
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected)
                 / max(np.linalg.norm(expected), np.finfo(np.float64).tiny))


def assert_close(backend, actual, expected, dtype, what="", tol=None):
    """Backend array ``actual`` against NumPy ``expected``: shape, dtype and relative error."""
    actual = np.asarray(backend.to_numpy(actual))
    assert actual.shape == np.shape(expected), what
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}"
    err = rel_err(actual, expected)
    assert err <= (tol or TOL[np.dtype(dtype)]), f"{what}: relative error {err:.3g}"


def _np(backend, a):
    return np.array(backend.to_numpy(a))


needs_cupy = pytest.mark.skipif(importlib.util.find_spec("cupy") is None,
                                reason="cupy is not installed")
# The conftest's ``backend`` fixture, plus the Numba backend with every kernel forced onto its
# parallel binding (PARALLEL_THRESHOLD = 0).
on_every_binding = pytest.mark.parametrize("backend,parallel", [
    pytest.param("numpy", False, id="numpy"),
    pytest.param("numba", False, id="numba", marks=needs_numba),
    pytest.param("numba", True, id="numba-parallel", marks=needs_numba),
    pytest.param("cupy", False, id="cupy", marks=[pytest.mark.gpu, needs_cupy]),
], indirect=["backend"])


@pytest.fixture
def binding(backend, parallel, monkeypatch):
    """The selected backend; for ``numba-parallel`` every kernel call takes the parallel binding."""
    if parallel:
        kernels = importlib.import_module("nnlite.backend.numba_kernels")
        monkeypatch.setattr(kernels, "PARALLEL_THRESHOLD", 0)
    return backend


@pytest.fixture
def fresh_registry(monkeypatch):
    """No backend chosen yet (the state before the first ``get_backend``)."""
    monkeypatch.setattr(nnlite.backend, "_CURRENT", None)
    monkeypatch.delenv("NNLITE_BACKEND", raising=False)


def _cuda_works() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------


def test_available_backends_lists_every_name():
    assert nnlite.backend.available_backends() == ["numpy", "numba", "cupy", "auto"]


def test_set_backend_numpy_is_the_reference():
    backend = nnlite.set_backend("numpy")
    assert type(backend) is Backend
    assert backend.name == "numpy" and backend.xp is np
    assert nnlite.backend.get_backend() is backend


@needs_numba
def test_set_backend_numba():
    from nnlite.backend.numba_backend import NumbaBackend

    backend = nnlite.set_backend("NumBa")  # names are case-insensitive
    assert isinstance(backend, NumbaBackend) and isinstance(backend, Backend)
    assert backend.name == "numba" and backend.xp is np and backend.gemm == "blas"
    assert nnlite.backend.get_backend() is backend
    assert nnlite.set_backend("numba", gemm="blocked").gemm == "blocked"


@needs_numba
def test_numba_backend_rejects_an_unknown_gemm():
    with pytest.raises(ValueError, match="gemm.*'blas' or 'blocked'.*'cublas'"):
        nnlite.set_backend("numba", gemm="cublas")


def test_unknown_backend_raises_listing_the_choices():
    nnlite.set_backend("numpy")
    before = nnlite.backend.get_backend()
    with pytest.raises(ValueError) as info:
        nnlite.set_backend("tensorflow")
    message = str(info.value)
    assert "'tensorflow'" in message
    for name in ("numpy", "numba", "cupy", "auto"):
        assert f"'{name}'" in message
    assert nnlite.backend.get_backend() is before


def test_cupy_without_a_gpu_is_unavailable():
    if _cuda_works():
        pytest.skip("CuPy and a CUDA device work here")
    before = nnlite.set_backend("numpy")
    with pytest.raises(BackendUnavailable, match="cupy"):
        nnlite.set_backend("cupy")
    assert issubclass(BackendUnavailable, RuntimeError)
    assert nnlite.backend.get_backend() is before


def test_numba_without_scipy_is_unavailable(monkeypatch):
    """Numba's np.dot needs SciPy's BLAS: without SciPy the backend is unavailable (and auto
    moves on), not a crash at the first training step."""
    pytest.importorskip("numba")
    monkeypatch.setitem(sys.modules, "scipy.linalg.cython_blas", None)  # import -> ImportError
    monkeypatch.delitem(sys.modules, "nnlite.backend.numba_backend", raising=False)
    with pytest.raises(BackendUnavailable, match="SciPy"):
        nnlite.set_backend("numba")


def test_auto_prints_one_line_naming_the_choice_and_why(capsys):
    backend = nnlite.set_backend("auto")
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"'{backend.name}'" in lines[0] and "auto" in lines[0]
    expected = "cupy" if _cuda_works() else ("numba" if HAS_NUMBA else "numpy")
    assert backend.name == expected
    if expected != "cupy":
        assert "cupy:" in lines[0]  # why the GPU backend was passed over
    assert nnlite.backend.get_backend() is backend


def test_auto_falls_back_to_numpy_giving_each_reason(capsys, monkeypatch):
    def unavailable(name):
        def factory(**options):
            raise BackendUnavailable(f"no {name} in this test")
        return factory

    monkeypatch.setitem(nnlite.backend._FACTORIES, "cupy", unavailable("cupy"))
    monkeypatch.setitem(nnlite.backend._FACTORIES, "numba", unavailable("numba"))
    backend = nnlite.set_backend("auto")
    assert type(backend) is Backend
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "'numpy'" in lines[0]
    assert "no cupy in this test" in lines[0] and "no numba in this test" in lines[0]


@pytest.mark.parametrize("name", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_environment_variable_is_read_on_first_use(fresh_registry, monkeypatch, name):
    monkeypatch.setenv("NNLITE_BACKEND", name)
    backend = nnlite.backend.get_backend()
    assert backend.name == name
    # Read once: later changes of the variable do not switch the backend under a running model.
    monkeypatch.setenv("NNLITE_BACKEND", "numpy" if name != "numpy" else "auto")
    assert nnlite.backend.get_backend() is backend


def test_without_environment_variable_the_default_is_numpy(fresh_registry):
    assert type(nnlite.backend.get_backend()) is Backend


def test_unknown_environment_variable_raises(fresh_registry, monkeypatch):
    monkeypatch.setenv("NNLITE_BACKEND", "nope")
    with pytest.raises(ValueError, match="'nope'"):
        nnlite.backend.get_backend()


def test_importing_nnlite_imports_neither_numba_nor_cupy():
    env = {k: v for k, v in os.environ.items() if k != "NNLITE_BACKEND"}
    code = ("import nnlite, sys; nnlite.Sequential([nnlite.Input((3,)), nnlite.layers.Dense(2)]);"
            " assert 'numba' not in sys.modules and 'cupy' not in sys.modules,"
            " sorted(m for m in sys.modules if m.startswith(('numba', 'cupy')))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------
# Kernel methods against the reference
# ----------------------------------------------------------------------------------------------


def _dense_inputs(dtype, n=29, d=13, m=11, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d)).astype(dtype)
    kernel = r.standard_normal((d, m)).astype(dtype)
    bias = r.standard_normal(m).astype(dtype)
    dy = r.standard_normal((n, m)).astype(dtype)
    return x, kernel, bias, dy


@pytest.mark.parametrize("use_out", [False, True], ids=["alloc", "out"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_dense_forward_matches_reference(binding, dtype, act, use_bias, use_out):
    backend = binding
    x, kernel, bias, _ = _dense_inputs(dtype)
    bias = bias if use_bias else None
    z_ref, y_ref = REF.dense_forward(x, kernel, bias, activations.get(act))
    xb, kb = backend.asarray(x), backend.asarray(kernel)
    bb = None if bias is None else backend.asarray(bias)
    out = None
    if use_out:
        out = (backend.xp.full(z_ref.shape, np.nan, dtype), backend.xp.full(z_ref.shape, np.nan,
                                                                            dtype))
    z, y = backend.dense_forward(xb, kb, bb, activations.get(act), out=out)
    assert_close(backend, z, z_ref, dtype, "z")
    assert_close(backend, y, y_ref, dtype, "y")
    np.testing.assert_array_equal(_np(backend, xb), x)
    np.testing.assert_array_equal(_np(backend, kb), kernel)
    if bias is not None:
        np.testing.assert_array_equal(_np(backend, bb), bias)
    if use_out:
        assert z is out[0]
        if backend.name == "numba" and act != "linear":
            assert y is out[1]
    if act == "linear":
        assert backend.xp.shares_memory(y, z) or np.array_equal(_np(backend, y), _np(backend, z))


@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "nodx"])
@pytest.mark.parametrize("use_out", [False, True], ids=["alloc", "out"])
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_dense_backward_matches_reference(binding, dtype, act, use_out, need_dx):
    backend = binding
    x, kernel, bias, dy = _dense_inputs(dtype, seed=1)
    fn = activations.get(act)
    z_ref, y_ref = REF.dense_forward(x, kernel, bias, fn)
    z_ref, y_ref = z_ref.copy(), np.array(y_ref)
    dx_ref, dk_ref, db_ref = REF.dense_backward(dy, x, kernel, z_ref, y_ref, fn)
    args = [backend.asarray(a) for a in (dy, x, kernel, z_ref, y_ref)]
    out = None
    if use_out:
        full = backend.xp.full
        out = (full(kernel.shape, np.nan, dtype), full(bias.shape, np.nan, dtype),
               full(x.shape, np.nan, dtype) if need_dx else None, full(dy.shape, np.nan, dtype))
    dx, dkernel, dbias = backend.dense_backward(*args, fn, need_dx=need_dx, out=out)
    assert_close(backend, dkernel, dk_ref, dtype, "dkernel")
    assert_close(backend, dbias, db_ref, dtype, "dbias")
    if need_dx:
        assert_close(backend, dx, dx_ref, dtype, "dx")
    else:
        assert dx is None
    for arg, ref in zip(args, (dy, x, kernel, z_ref, y_ref)):
        np.testing.assert_array_equal(_np(backend, arg), ref)  # dy, x, kernel, z, y unchanged
    if use_out:
        assert dkernel is out[0] and dbias is out[1]
        if need_dx:
            assert dx is out[2]


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_dense_on_non_contiguous_arrays(binding, dtype, act):
    """Transposed inputs, gradients and output buffers: the fallback path, same numbers."""
    backend = binding
    x, kernel, bias, dy = _dense_inputs(dtype, seed=2)
    fn = activations.get(act)
    z_ref, y_ref = REF.dense_forward(x, kernel, bias, fn)
    z_ref, y_ref = z_ref.copy(), np.array(y_ref)
    dx_ref, dk_ref, db_ref = REF.dense_backward(dy, x, kernel, z_ref, y_ref, fn)
    xt = backend.asarray(np.ascontiguousarray(x.T)).T
    dyt = backend.asarray(np.ascontiguousarray(dy.T)).T
    zbuf = backend.xp.empty(z_ref.shape[::-1], dtype).T
    ybuf = backend.xp.empty(z_ref.shape[::-1], dtype).T
    z, y = backend.dense_forward(xt, backend.asarray(kernel), backend.asarray(bias), fn,
                                 out=(zbuf, ybuf))
    assert_close(backend, z, z_ref, dtype, "z")
    assert_close(backend, y, y_ref, dtype, "y")
    assert backend.xp.shares_memory(z, zbuf)
    dkbuf = backend.xp.empty(kernel.shape[::-1], dtype).T
    dx, dkernel, dbias = backend.dense_backward(
        dyt, xt, backend.asarray(kernel), backend.asarray(z_ref), backend.asarray(y_ref), fn,
        out=(dkbuf, None, None, None))
    assert_close(backend, dx, dx_ref, dtype, "dx")
    assert_close(backend, dkernel, dk_ref, dtype, "dkernel")
    assert_close(backend, dbias, db_ref, dtype, "dbias")
    assert backend.xp.shares_memory(dkernel, dkbuf)
    np.testing.assert_array_equal(_np(backend, dyt), dy)


@pytest.mark.parametrize("act", ACTIVATIONS)
@on_every_binding
def test_dense_forward_non_finite_values_like_reference(binding, act, request):
    """NaN and ±inf pre-activations give what the reference gives (NaN is never hidden)."""
    backend = binding
    x = np.array([[np.nan], [np.inf], [-np.inf], [0.0], [-1.0], [3.0]])
    kernel = np.array([[1.0, 2.0]])  # z = x · kernel is exact, NaN stays in its own row
    fn = activations.get(act)
    with np.errstate(invalid="ignore"):
        z_ref, y_ref = REF.dense_forward(x, kernel, None, fn)
        z, y = backend.dense_forward(backend.asarray(x), backend.asarray(kernel), None, fn)
    np.testing.assert_array_equal(_np(backend, z), z_ref)
    np.testing.assert_array_equal(_np(backend, y), y_ref)


def _logits(dtype, n=43, c=10, seed=3):
    r = np.random.default_rng(seed)
    logits = 4 * r.standard_normal((n, c))
    logits[1] -= 1000  # far from zero: the max shift keeps exp finite
    return logits.astype(dtype), r.integers(0, c, n)


@pytest.mark.parametrize("target", ["int64", "uint8", "int32", "onehot", "soft"])
@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_softmax_cross_entropy_matches_reference(binding, dtype, target):
    backend = binding
    logits, labels = _logits(dtype)
    c = logits.shape[1]
    if target == "onehot":
        t = np.eye(c, dtype=dtype)[labels]
    elif target == "soft":
        t = np.random.default_rng(4).random(logits.shape)
        t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        t = labels.astype(target)
    loss_ref, d_ref = REF.softmax_cross_entropy(logits, t)
    lb, tb = backend.asarray(logits), backend.asarray(t)
    loss, dlogits = backend.softmax_cross_entropy(lb, tb)
    assert np.asarray(backend.to_numpy(loss)).shape == ()
    assert_close(backend, loss, loss_ref, dtype, "loss")
    assert_close(backend, dlogits, d_ref, dtype, "dlogits")
    np.testing.assert_array_equal(_np(backend, lb), logits)
    np.testing.assert_array_equal(_np(backend, tb), t)
    if target in ("int64", "onehot"):
        # The gradient is exactly (softmax − t)/N: each row sums to 0.
        row_sums = _np(backend, dlogits).astype(np.float64).sum(axis=1)
        assert np.abs(row_sums).max() <= 10 * np.finfo(dtype).eps / logits.shape[0]


@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_softmax_cross_entropy_on_transposed_logits(binding, dtype):
    backend = binding
    logits, labels = _logits(dtype, seed=5)
    loss_ref, d_ref = REF.softmax_cross_entropy(logits, labels)
    lt = backend.asarray(np.ascontiguousarray(logits.T)).T
    loss, dlogits = backend.softmax_cross_entropy(lt, backend.asarray(labels))
    assert_close(backend, loss, loss_ref, dtype, "loss")
    assert_close(backend, dlogits, d_ref, dtype, "dlogits")


# -- optimizers --------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "transposed", "strided", "mixed"]


def _arrays(backend, layout, dtype, values):
    """Backend arrays holding ``values`` (each (7, 13)) in ``layout``; returns (views, owners).

    transposed: each array is the transpose of a C-contiguous (13, 7) owner (F-ordered);
    strided: every other column of a (7, 26) owner; mixed: the parameter C-contiguous, the
    gradient and the state transposed.
    """
    views, owners = [], []
    for k, value in enumerate(values):
        kind = layout
        if layout == "mixed":
            kind = "contiguous" if k == 0 else "transposed"
        if kind == "contiguous":
            owner = backend.asarray(value.astype(dtype))
            view = owner
        elif kind == "transposed":
            owner = backend.asarray(np.ascontiguousarray(value.T, dtype=dtype))
            view = owner.T
        else:
            wide = np.zeros((value.shape[0], 2 * value.shape[1]), dtype)
            wide[:, ::2] = value
            owner = backend.asarray(wide)
            view = owner[:, ::2]
        views.append(view)
        owners.append(owner)
    return views, owners


def _state(count, seed):
    r = np.random.default_rng(seed)
    p, g = r.standard_normal((7, 13)), r.standard_normal((7, 13))
    rest = [r.standard_normal((7, 13)) for _ in range(count)]
    return p, g, rest


def _check_update(backend, views, owners, refs, dtype, layout):
    for k, (view, owner, ref) in enumerate(zip(views, owners, refs)):
        assert_close(backend, view, ref, dtype, f"array {k} ({layout})")
        # In place: the owner of the view holds the new values.
        assert backend.xp.shares_memory(view, owner)
    if layout == "strided":
        for owner in owners:
            assert not np.any(_np(backend, owner)[:, 1::2]), "wrote outside the view"


OPTIMIZER_CASES = {
    "sgd": (0, dict()),
    "momentum": (1, dict(momentum=0.9)),
    "nesterov": (1, dict(momentum=0.9, nesterov=True)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_sgd_update_matches_reference(binding, dtype, case, layout):
    backend = binding
    slots, options = OPTIMIZER_CASES[case]
    p, g, state = _state(slots, seed=6)
    t = np.dtype(dtype).type
    refs = [p.astype(dtype)] + [s.astype(dtype) for s in state]
    views, owners = _arrays(backend, layout, dtype, [p, g] + state)
    views, owners = [views[0]] + views[2:], [owners[0]] + owners[2:]
    grad = _arrays(backend, layout if layout != "mixed" else "transposed", dtype, [g])[0][0]
    lr = t(0.1)
    for _ in range(3):
        if slots:
            m = t(np.float32(options["momentum"]))
            nesterov = options.get("nesterov", False)
            REF.sgd_update(refs[0], g.astype(dtype), lr, m, refs[1], nesterov)
            backend.sgd_update(views[0], grad, lr, m, views[1], nesterov)
        else:
            REF.sgd_update(refs[0], g.astype(dtype), lr)
            backend.sgd_update(views[0], grad, lr)
    _check_update(backend, views, owners, refs, dtype, layout)
    np.testing.assert_array_equal(_np(backend, grad), g.astype(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_adam_update_matches_reference(binding, dtype, layout):
    backend = binding
    p, g, (m, v) = _state(2, seed=7)
    v = 1e-4 * np.abs(v)  # √v comparable with ε̂ below: where ε̂ enters matters
    t = np.dtype(dtype).type
    refs = [a.astype(dtype) for a in (p, m, v)]
    views, owners = _arrays(backend, layout, dtype, [p, g, m, v])
    grad = views.pop(1)
    owners.pop(1)
    for step in range(1, 4):
        args = (t(0.01 * step), t(0.1), t(0.001), t(1e-3))
        REF.adam_update(refs[0], g.astype(dtype), refs[1], refs[2], *args)
        backend.adam_update(views[0], grad, views[1], views[2], *args)
    _check_update(backend, views, owners, refs, dtype, layout)
    np.testing.assert_array_equal(_np(backend, grad), g.astype(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("momentum,centered", [(False, False), (True, False), (False, True),
                                               (True, True)],
                         ids=["plain", "momentum", "centered", "momentum-centered"])
@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_rmsprop_update_matches_reference(binding, dtype, momentum, centered, layout):
    backend = binding
    p, g, (v, u, mg) = _state(3, seed=8)
    v, mg = 1 + np.abs(v), 0.1 * mg  # v − ḡ² stays positive
    t = np.dtype(dtype).type
    values = [p, v] + ([u] if momentum else []) + ([mg] if centered else [])
    refs = [a.astype(dtype) for a in values]
    views, owners = _arrays(backend, layout, dtype, values)
    grad = _arrays(backend, layout if layout != "mixed" else "transposed", dtype, [g])[0][0]
    hyper = (t(0.01), t(0.9), t(1 - 0.9), t(0.3))
    mu = t(0.5) if momentum else None

    def slots(arrays):
        rest = arrays[2:]
        vel = rest.pop(0) if momentum else None
        mean = rest.pop(0) if centered else None
        return dict(momentum=mu, velocity=vel, mean_grad=mean)

    for _ in range(3):
        REF.rmsprop_update(refs[0], g.astype(dtype), refs[1], *hyper, **slots(refs))
        backend.rmsprop_update(views[0], grad, views[1], *hyper, **slots(views))
    _check_update(backend, views, owners, refs, dtype, layout)


# -- the LSTM cell (one time step) -------------------------------------------------------------

LSTM_ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh"]  # what an LSTM layer accepts
LSTM_PAIRS = [pytest.param(act, rec, id=f"{act}-{rec}")
              for act in LSTM_ACTIVATIONS for rec in LSTM_ACTIVATIONS]


def _lstm_inputs(dtype, n=33, u=17, seed=12):
    """One step's gate pre-activations z (N, 4U), c_{t−1} (N, U) and backward's dh, dy, dc
    (N, U). N·U = 561 spans several GPU thread blocks."""
    r = np.random.default_rng(seed)
    z = 2 * r.standard_normal((n, 4 * u)) + r.standard_normal((n, 4 * u))
    rest = [r.standard_normal((n, u)) for _ in range(4)]
    return [a.astype(dtype) for a in [z] + rest]


def _copies(backend, *arrays):
    """Backend copies (the methods update some arguments in place)."""
    return [None if a is None else backend.xp.array(a) for a in arrays]


@pytest.mark.parametrize("use_out", [False, True, "partial"], ids=["alloc", "out", "partial"])
@pytest.mark.parametrize("act,rec", LSTM_PAIRS)
@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_lstm_cell_forward_matches_reference(binding, dtype, act, rec, use_out):
    backend = binding
    z, c_prev, *_ = _lstm_inputs(dtype)
    fns = activations.get(act), activations.get(rec)
    refs = [np.array(a) for a in REF.lstm_cell_forward(z, c_prev, *fns)]
    z_b, c_prev_b = _copies(backend, z, c_prev)
    out = None
    if use_out:
        out = (backend.xp.full(z.shape, np.nan, dtype),
               *(backend.xp.full(c_prev.shape, np.nan, dtype) for _ in range(3)))
    if use_out == "partial":  # None entries are allocated, given ones written
        out = (out[0], None, out[2], None)
    got = backend.lstm_cell_forward(z_b, c_prev_b, *fns, out=out)
    assert len(got) == 4
    for what, array, ref in zip(["gates", "c", "act_c", "h"], got, refs):
        assert_close(backend, array, ref, dtype, what)
    np.testing.assert_array_equal(_np(backend, z_b), z)
    np.testing.assert_array_equal(_np(backend, c_prev_b), c_prev)
    if use_out:
        assert all(array is buf for array, buf in zip(got, out) if buf is not None)


@pytest.mark.parametrize("use_out", [False, True], ids=["alloc", "out"])
@pytest.mark.parametrize("with_dy", [True, False], ids=["dy", "nody"])
@pytest.mark.parametrize("act,rec", LSTM_PAIRS)
@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_lstm_cell_backward_matches_reference(binding, dtype, act, rec, with_dy, use_out):
    backend = binding
    z, c_prev, dh, dy, dc = _lstm_inputs(dtype, seed=13)
    fns = activations.get(act), activations.get(rec)
    gates, _, act_c, _ = (np.array(a) for a in REF.lstm_cell_forward(z, c_prev, *fns))
    dy = dy if with_dy else None
    dc_ref = dc.copy()
    dz_ref = REF.lstm_cell_backward(dh, dy, dc_ref, gates, c_prev, act_c, *fns)
    args = _copies(backend, dh, dy, dc, gates, c_prev, act_c)
    out = backend.xp.full(gates.shape, np.nan, dtype) if use_out else None
    dz = backend.lstm_cell_backward(*args, *fns, out=out)
    assert_close(backend, dz, dz_ref, dtype, "dz")
    assert_close(backend, args[2], dc_ref, dtype, "dc (dc_{t-1}, in place)")
    for what, array, ref in zip(["dh", "dy", "gates", "c_prev", "act_c"],
                                [args[0], args[1]] + args[3:], [dh, dy, gates, c_prev, act_c]):
        if ref is not None:
            np.testing.assert_array_equal(_np(backend, array), ref, err_msg=what)
    if use_out:
        assert dz is out


@pytest.mark.parametrize("act,rec,transposed", [
    pytest.param("tanh", "sigmoid", True, id="transposed"),
    pytest.param("softmax", "sigmoid", False, id="softmax-activation"),
    pytest.param("relu", "softmax", False, id="softmax-recurrent"),
])
@pytest.mark.parametrize("dtype", DTYPES)
@on_every_binding
def test_lstm_cell_fallback_matches_reference(binding, dtype, act, rec, transposed):
    """What the fused kernels leave to the base class (F-ordered arrays, softmax): same numbers,
    same in-place updates."""
    backend = binding
    z, c_prev, dh, dy, dc = _lstm_inputs(dtype, seed=14)
    fns = activations.get(act), activations.get(rec)

    def put(a):
        if not transposed:
            return backend.xp.array(a)
        return backend.asarray(np.ascontiguousarray(a.T)).T

    refs = [np.array(a) for a in REF.lstm_cell_forward(z, c_prev, *fns)]
    gates_ref = refs[0]
    z_b, c_prev_b = put(z), put(c_prev)
    out = (put(np.full(z.shape, np.nan, dtype)),
           *(put(np.full(c_prev.shape, np.nan, dtype)) for _ in range(3)))
    got = backend.lstm_cell_forward(z_b, c_prev_b, *fns, out=out)
    for what, array, ref, buf in zip(["gates", "c", "act_c", "h"], got, refs, out):
        assert_close(backend, array, ref, dtype, what)
        assert array is buf
    np.testing.assert_array_equal(_np(backend, z_b), z)
    gates_b = got[0]
    dc_ref = dc.copy()
    dz_ref = REF.lstm_cell_backward(dh, dy, dc_ref, gates_ref, c_prev, refs[2], *fns)
    dc_b, dz_buf = put(dc), put(np.full(z.shape, np.nan, dtype))
    dz = backend.lstm_cell_backward(put(dh), put(dy), dc_b, gates_b, c_prev_b, got[2], *fns,
                                    out=dz_buf)
    assert dz is dz_buf
    assert_close(backend, dz, dz_ref, dtype, "dz")
    assert_close(backend, dc_b, dc_ref, dtype, "dc")


def test_cupy_lstm_kernel_sources_for_every_activation_pair(monkeypatch):
    """Runs without a GPU: the CUDA sources the CuPy backend hands to ``ElementwiseKernel`` for
    the LSTM cell, built against a stand-in ``cupy`` module, checked as text (names declared,
    in-place arrays are outputs, no double-precision literals, gates indexed [n·4U + k·U + j])."""
    built = []
    fake = types.ModuleType("cupy")
    fake.ElementwiseKernel = lambda *args, **kwargs: built.append(args) or args
    fake.cuda = types.SimpleNamespace(memory=types.SimpleNamespace(OutOfMemoryError=MemoryError))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delitem(sys.modules, "nnlite.backend.cupy_backend", raising=False)
    monkeypatch.setattr(nnlite.backend, "cupy_backend", None, raising=False)
    module = importlib.import_module("nnlite.backend.cupy_backend")

    def names(params):
        return [p.split()[-1] for p in params.split(",")]

    expected_params = {
        "forward": (["z", "c_prev", "u"], ["gates", "c", "act_c", "h"], "gates"),
        "backward": (["dh", "dy", "has_dy", "gates", "c_prev", "act_c", "u"], ["dc", "dz"], "dz"),
    }
    for act in LSTM_ACTIVATIONS:
        for rec in LSTM_ACTIVATIONS:
            for direction, (ins, outs, raw_out) in expected_params.items():
                in_params, out_params, op, name = module._lstm_kernel(direction, act, rec)
                assert name == f"nnlite_lstm_{direction}_{act}_{rec}" and name.isidentifier()
                assert (names(in_params), names(out_params)) == (ins, outs)
                assert f"raw T {raw_out}" in out_params  # written in place: an output
                assert "{" not in op and "}" not in op  # every template filled
                assert op.count("(") == op.count(")") and op.count("[") == op.count("]")
                assert not re.search(r"\d\.|\.\d", op), "a double literal: (T)1 keeps float32"
                # Integer literals only as (T)0, (T)1 and gate offsets k·u.
                rest = re.sub(r"\(T\)[01]|\b[234] \* u\b", "", op)
                assert not re.search(r"\b\d", rest), rest
                declared = re.findall(r"const (?:T|ptrdiff_t) (\w+) =", op)
                assert len(declared) == len(set(declared))
                known = set(ins + outs + declared) | {"i", "T", "const", "ptrdiff_t", "exp",
                                                      "tanh", "has_dy"}
                assert set(re.findall(r"[A-Za-z_]\w*", op)) <= known
                for param in ins:  # inputs are const in CuPy's generated code
                    assert not re.search(rf"\b{param}(\[[^\]]*\])? =[^=]", op), param
                for k in ("", " + u", " + 2 * u", " + 3 * u"):
                    assert f"{raw_out}[at{k}] = " in op
                assert "at = row * 4 * u + (i - row * u)" in op and "row = i / u" in op
                pair = {act, rec}
                assert ("exp(" in op) == ("sigmoid" in pair and direction == "forward")
                assert ("tanh(" in op) == ("tanh" in pair and direction == "forward")
    assert len({args[3] for args in built}) == len(built) == 2 * len(LSTM_ACTIVATIONS) ** 2
    with pytest.raises(KeyError):
        module._lstm_kernel("sideways", "tanh", "sigmoid")


# -- gather and matmul -------------------------------------------------------------------------


@pytest.mark.parametrize("use_out", [False, True], ids=["alloc", "out"])
@pytest.mark.parametrize("source,dtype,shape", [
    (np.uint8, np.float32, (60, 4, 5)), (np.uint8, np.float64, (60, 20)),
    (np.float64, np.float64, (60, 20)), (np.float64, np.float32, (60, 3, 7)),
    (np.float32, np.float32, (60,)),
], ids=["uint8-float32-3d", "uint8-float64", "float64-float64", "float64-float32-3d",
        "float32-1d"])
@on_every_binding
def test_gather_matches_reference(binding, source, dtype, shape, use_out):
    backend = binding
    r = np.random.default_rng(9)
    data = (r.integers(0, 256, shape) if source == np.uint8 else r.standard_normal(shape))
    data = data.astype(source)
    for index in (r.permutation(60)[:25], np.array([59, 0, 59, 3], np.int32), np.arange(60)):
        expected = REF.gather(data, index, dtype)
        out = backend.xp.full(expected.shape, np.nan, dtype) if use_out else None
        rows = backend.gather(data, index, dtype, out=out)
        assert_close(backend, rows, expected, dtype, "rows", tol=1e-300)
        if use_out:
            assert rows is out
    # Non-contiguous data takes the fallback.
    if data.ndim > 1:
        view = data[::2]
        index = np.array([1, 29, 0])
        assert_close(backend, backend.gather(view, index, dtype), REF.gather(view, index, dtype),
                     dtype, "strided rows", tol=1e-300)


@on_every_binding
def test_gather_into_a_non_contiguous_out(binding, request):
    """``out`` may be any writable array of the right shape (the reference assigns into it)."""
    backend = binding
    data = np.arange(5 * 3 * 4, dtype=np.uint8).reshape(5, 3, 4)
    index = np.array([4, 0, 2])
    out = backend.xp.full((3, 4, 3), np.nan).transpose(0, 2, 1)  # (3, 3, 4), not C-ordered
    rows = backend.gather(data, index, np.float64, out=out)
    assert rows is out
    np.testing.assert_array_equal(_np(backend, out), data[index].astype(np.float64))


@on_every_binding
def test_gather_negative_indices_match_numpy(binding):
    backend = binding
    data = np.arange(24, dtype=np.uint8).reshape(6, 4)
    index = np.array([-1, 0, -6])
    np.testing.assert_array_equal(_np(backend, backend.gather(data, index, np.float64)),
                                  data[index].astype(np.float64))


@needs_numba
@pytest.mark.parametrize("n,k,m", [(67, 300, 33), (1, 300, 1), (65, 257, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_matmul_matches_blas(dtype, n, k, m):
    backend = nnlite.set_backend("numba", gemm="blocked")
    r = np.random.default_rng(10)
    a, b = r.standard_normal((n, k)).astype(dtype), r.standard_normal((k, m)).astype(dtype)
    assert_close(backend, backend.matmul(a, b), a @ b, dtype, "alloc")
    out = np.full((n, m), np.nan, dtype)
    assert backend.matmul(a, b, out=out) is out
    assert_close(backend, out, a @ b, dtype, "out")
    at = np.ascontiguousarray(a.T).T  # transposed operand: copied to C order first
    assert_close(backend, backend.matmul(at, b), a @ b, dtype, "transposed a")
    np.testing.assert_array_equal(at, a)


# ----------------------------------------------------------------------------------------------
# Models on each backend
# ----------------------------------------------------------------------------------------------


def _tiny_data(n=96, d=12, classes=4, seed=11):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d))
    y = r.integers(0, classes, n)
    return x, y


def _tiny_model(optimizer="adam", hidden=("relu", "tanh"), seed=0, d=12, classes=4):
    layers = [Input((d,))]
    for act in hidden:
        layers.append(Dense(9, activation=act))
    layers.append(Dense(classes, activation="softmax"))
    model = nnlite.Sequential(layers, seed=seed)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _assert_history_close(a, b, tol, what=""):
    assert a.keys() == b.keys()
    for key in a:
        assert len(a[key]) == len(b[key]), key
        for u, v in zip(a[key], b[key]):
            assert abs(u - v) <= tol * max(abs(v), 1e-300), f"{what} {key}: {u} vs {v}"


@needs_numba
@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "sgd"])
def test_blocked_gemm_trains_like_blas(float64, optimizer):
    x, y = _tiny_data()
    runs = {}
    for gemm in ("blas", "blocked"):
        nnlite.set_backend("numba", gemm=gemm)
        model = _tiny_model(optimizer)
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
        runs[gemm] = (history.history, model.get_weights())
    _assert_history_close(runs["blocked"][0], runs["blas"][0], 1e-10)
    for w_blocked, w_blas in zip(runs["blocked"][1], runs["blas"][1]):
        assert w_blocked.dtype == np.float64
        assert rel_err(w_blocked, w_blas) <= 1e-10


def test_parameters_are_packed_into_one_flat_array(backend):
    x, y = _tiny_data()
    model = _tiny_model()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert len(model._packed) == 1  # one dtype, one flat array
    flat_grad, flat = model._packed[0]
    assert flat.ndim == 1 and flat.size == model.count_params()
    xp = backend.xp
    for layer in model.layers:
        for key, param in layer.params.items():
            assert xp.shares_memory(param, flat), (layer.name, key)
            assert xp.shares_memory(layer.grads[key], flat_grad), (layer.name, key)
            assert not xp.shares_memory(param, flat_grad)
    # The views tile the flat array in get_weights order, without gaps or overlaps.
    np.testing.assert_array_equal(
        np.concatenate([w.ravel() for w in model.get_weights()]), _np(backend, flat))


def test_weights_round_trip_after_packing(backend):
    x, y = _tiny_data()
    model = _tiny_model()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    flat = model._packed[0][1]
    weights = model.get_weights()
    weights[0][...] = 123.0  # get_weights returns copies
    assert not np.any(_np(backend, model.layers[0].params["kernel"]) == 123.0)
    new = [np.full_like(w, 0.01 * (k + 1)) for k, w in enumerate(model.get_weights())]
    model.set_weights(new)
    for got, expected in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, expected)
    # set_weights writes through the views: the flat array the optimizer updates sees them.
    np.testing.assert_array_equal(_np(backend, flat), np.concatenate([w.ravel() for w in new]))
    assert backend.xp.shares_memory(model.layers[0].params["kernel"], flat)
    # ...and training goes on from them.
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert model._packed[0][1] is flat
    assert all(not np.array_equal(a, b) for a, b in zip(model.get_weights(), new))


def test_one_step_updates_every_layer(backend):
    x, y = _tiny_data()
    model = _tiny_model(optimizer="sgd")
    before = model.get_weights()
    model.train_on_batch(x[:32], y[:32])
    after = model.get_weights()
    for k, (a, b) in enumerate(zip(before, after)):
        assert not np.array_equal(a, b), f"weight {k} was not updated"
    # Plain SGD: the step is exactly −lr · grad (grads are the views into the flat gradient).
    grads = [_np(backend, g) for layer in model.layers for g in layer.grads.values()]
    for a, b, g in zip(before, after, grads):
        np.testing.assert_allclose(b, a - np.float32(0.01) * g, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "sgd"])
def test_two_fits_of_one_epoch_equal_one_fit_of_two(backend, float64, optimizer):
    x, y = _tiny_data()
    if optimizer == "sgd":
        optimizer = nnlite.optimizers.SGD(0.05, momentum=0.9)
    elif optimizer == "rmsprop":
        optimizer = nnlite.optimizers.RMSprop(momentum=0.5, centered=True)
    else:
        optimizer = nnlite.optimizers.Adam()
    split = _tiny_model(optimizer)
    first = split.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    second = split.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    whole = _tiny_model(type(optimizer)(**optimizer.get_config()))
    both = whole.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    assert split.optimizer.iterations == whole.optimizer.iterations == 12
    pieces = {k: first[k] + second[k] for k in both}
    tol = 0.0 if backend.name == "numpy" else 1e-12
    if tol == 0.0:
        assert pieces == both
        for a, b in zip(split.get_weights(), whole.get_weights()):
            np.testing.assert_array_equal(a, b)
    else:
        _assert_history_close(pieces, both, tol)
        for a, b in zip(split.get_weights(), whole.get_weights()):
            assert rel_err(a, b) <= tol


@needs_numba
def test_switching_backend_between_fits_keeps_the_optimizer_state(float64):
    x, y = _tiny_data()
    nnlite.set_backend("numpy")
    whole = _tiny_model()
    whole.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    split = _tiny_model()
    split.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    nnlite.set_backend("numba")
    split.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(split.get_weights(), whole.get_weights()):
        assert rel_err(a, b) <= 1e-12
    assert len(split.optimizer._slots) == 1  # no state left behind for a dropped array


def _mnist_run(name, dtype, mnist_small, parallel=False, monkeypatch=None):
    config.set_floatx(dtype)
    nnlite.set_backend(name)
    if parallel:
        kernels = importlib.import_module("nnlite.backend.numba_kernels")
        monkeypatch.setattr(kernels, "PARALLEL_THRESHOLD", 0)
    (x, y), (xt, yt) = mnist_small
    model = nnlite.Sequential([Input((784,)), Dense(32, activation="relu"),
                               Dense(10, activation="softmax")], seed=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=100, epochs=3, verbose=0, validation_data=(xt, yt))
    if parallel:
        monkeypatch.undo()
    return history.history, model.get_weights()


@needs_numba
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-4)])
def test_mnist_training_agrees_on_numpy_and_numba(mnist_small, dtype, tol):
    ref_history, ref_weights = _mnist_run("numpy", dtype, mnist_small)
    history, weights = _mnist_run("numba", dtype, mnist_small)
    assert len(history["loss"]) == 3 and ref_history["accuracy"][-1] > 0.8
    _assert_history_close(history, ref_history, tol, "numba vs numpy")
    for w, w_ref in zip(weights, ref_weights):
        assert w.dtype == np.dtype(dtype)
        assert rel_err(w, w_ref) <= tol


@needs_numba
def test_mnist_training_with_parallel_kernels_agrees(mnist_small, monkeypatch):
    ref_history, ref_weights = _mnist_run("numpy", "float64", mnist_small)
    history, weights = _mnist_run("numba", "float64", mnist_small, True, monkeypatch)
    _assert_history_close(history, ref_history, 1e-9, "parallel numba vs numpy")
    for w, w_ref in zip(weights, ref_weights):
        assert rel_err(w, w_ref) <= 1e-9


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_both_float_types_run_on_every_backend(backend, dtype):
    config.set_floatx(dtype)
    x, y = _tiny_data()
    model = _tiny_model(hidden=("relu", "sigmoid", "tanh"))
    for layer in model.layers:
        for param in layer.params.values():
            assert param.dtype == np.dtype(dtype)
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert all(np.isfinite(v) for values in history.history.values() for v in values)
    assert model._packed[0][1].dtype == np.dtype(dtype)
    for layer in model.layers:
        for key, param in layer.params.items():
            assert param.dtype == np.dtype(dtype) and layer.grads[key].dtype == np.dtype(dtype)
    pred = model.predict(x, verbose=0)
    assert pred.dtype == np.dtype(dtype) and pred.shape == (len(x), 4)
    np.testing.assert_allclose(pred.sum(axis=1), 1, rtol=1e-5 if dtype == "float32" else 1e-12)
    out = model(x[:5])
    assert out.dtype == np.dtype(dtype)
    assert isinstance(model.evaluate(x, y, verbose=0)[0], float)


@needs_numba
def test_warmup_reports_seconds_and_compiles_nothing_the_second_time():
    from nnlite.backend.numba_backend import NumbaBackend

    kernels = importlib.import_module("nnlite.backend.numba_kernels")
    threshold = kernels.PARALLEL_THRESHOLD
    backend = NumbaBackend()

    def compiled():  # every signature of every dispatcher in the kernels module
        dispatchers = []
        for value in vars(kernels).values():
            if isinstance(value, kernels.Bound):
                dispatchers += [value.serial, value.parallel]
            elif hasattr(value, "signatures"):
                dispatchers.append(value)
        return sum(len(d.signatures) for d in dispatchers)

    first = backend.warmup()
    assert isinstance(first, float) and first > 0
    after_first = compiled()
    assert after_first > 0
    second = backend.warmup()
    assert isinstance(second, float) and second > 0
    assert compiled() == after_first  # everything was compiled (or loaded) by the first call
    assert kernels.PARALLEL_THRESHOLD == threshold  # restored
