"""Tests for nnlite.functional: every forward/backward pair against central differences.

Each analytic gradient is computed on the backend under test (``backend`` fixture) and compared
in float64 with central differences of ``L = Σ f(x) ⊙ dy`` taken with NumPy, for a random
upstream gradient ``dy`` (Chainer's recipe). Values are also checked against hand formulas, and
every function must keep float32 inputs float32.
"""

import numpy as np
import pytest

from nnlite import functional as F
from nnlite.gradcheck import numerical_gradient, relative_error

TOL = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


def _away_from_zero(x, margin=1e-2):
    """Move entries within ``margin`` of 0 out to ±margin·10, so ReLU's kink is never crossed."""
    x = np.array(x, dtype=np.float64)
    near = np.abs(x) < margin
    x[near] = np.where(x[near] >= 0, 10 * margin, -10 * margin)
    return x


def _fd_activation(fn, x, dy):
    """Central-difference gradient of ``Σ fn(x) ⊙ dy`` with respect to ``x`` (NumPy, float64)."""
    x = x.copy()
    return numerical_gradient(lambda: np.sum(fn(x) * dy), x)


def _to(backend, a):
    return backend.asarray(np.asarray(a))


def _np(backend, a):
    return np.asarray(backend.to_numpy(a))


# ----------------------------------------------------------------------------------------------
# get_array_module
# ----------------------------------------------------------------------------------------------


def test_get_array_module_numpy():
    assert F.get_array_module(np.zeros(2)) is np
    assert F.get_array_module(np.zeros(2), np.ones(3)) is np


def test_get_array_module_backend(backend):
    assert F.get_array_module(backend.asarray(np.zeros(2))) is backend.xp


# ----------------------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------------------


def test_dense_forward_values(backend):
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    w = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 1.0]])
    b = np.array([0.1, 0.2, 0.3])
    # row 0: [1 + 1, 0 - 2, 2 + 2] + b = [2.1, -1.8, 4.3]
    # row 1: [3 - 0.5, 0 + 1, 6 - 1] + b = [2.6, 1.2, 5.3]
    expected = np.array([[2.1, -1.8, 4.3], [2.6, 1.2, 5.3]])
    y = F.dense_forward(_to(backend, x), _to(backend, w), _to(backend, b))
    np.testing.assert_allclose(_np(backend, y), expected, rtol=1e-14)
    y_nobias = F.dense_forward(_to(backend, x), _to(backend, w))
    np.testing.assert_allclose(_np(backend, y_nobias), expected - b, rtol=1e-14, atol=1e-15)


def test_dense_forward_out_argument(backend):
    rng = _rng(1)
    x, w, b = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
    out = backend.xp.empty((4, 2))
    y = F.dense_forward(_to(backend, x), _to(backend, w), _to(backend, b), out=out)
    assert y is out
    np.testing.assert_allclose(_np(backend, out), x @ w + b, rtol=1e-13)


def test_dense_forward_keeps_float32(backend):
    rng = _rng(2)
    x = _to(backend, rng.normal(size=(4, 3)).astype(np.float32))
    w = _to(backend, rng.normal(size=(3, 2)).astype(np.float32))
    b = _to(backend, np.zeros(2, np.float32))
    assert F.dense_forward(x, w, b).dtype == np.float32
    dx, dw, db = F.dense_backward(_to(backend, np.ones((4, 2), np.float32)), x, w)
    assert dx.dtype == dw.dtype == db.dtype == np.float32


def test_dense_backward_matches_finite_differences(backend):
    rng = _rng(3)
    x, w, b = rng.normal(size=(5, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
    dy = rng.normal(size=(5, 3))
    dy_before = dy.copy()
    dx, dw, db = F.dense_backward(_to(backend, dy), _to(backend, x), _to(backend, w))
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape

    def loss():
        return np.sum(F.dense_forward(x, w, b) * dy)

    assert relative_error(_np(backend, dx), numerical_gradient(loss, x)) < TOL
    assert relative_error(_np(backend, dw), numerical_gradient(loss, w)) < TOL
    assert relative_error(_np(backend, db), numerical_gradient(loss, b)) < TOL
    np.testing.assert_array_equal(dy, dy_before)


def test_dense_backward_need_dx_false_returns_none(backend):
    rng = _rng(4)
    x, w, dy = rng.normal(size=(5, 4)), rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    dx, dw, db = F.dense_backward(_to(backend, dy), _to(backend, x), _to(backend, w),
                                  need_dx=False)
    assert dx is None
    np.testing.assert_allclose(_np(backend, dw), x.T @ dy, rtol=1e-13)
    np.testing.assert_allclose(_np(backend, db), dy.sum(axis=0), rtol=1e-13)


# ----------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------


def test_linear_pair_is_identity(backend):
    x = _to(backend, _rng(5).normal(size=(3, 4)))
    dy = _to(backend, _rng(6).normal(size=(3, 4)))
    assert F.linear(x) is x
    assert F.linear_backward(dy, x) is dy


def test_relu_values_and_dtype(backend):
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]], dtype=np.float32)
    y = F.relu(_to(backend, x))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(_np(backend, y), [[0.0, 0.0, 0.0, 0.5, 3.0]])
    dy = np.full_like(x, 2.0)
    dx = F.relu_backward(_to(backend, dy), _to(backend, x))
    assert dx.dtype == np.float32
    # the subgradient at exactly 0 is 0 (as TensorFlow)
    np.testing.assert_array_equal(_np(backend, dx), [[0.0, 0.0, 0.0, 2.0, 2.0]])


def test_relu_backward_matches_finite_differences(backend):
    rng = _rng(7)
    x = _away_from_zero(rng.normal(size=(6, 5)))
    dy = rng.normal(size=x.shape)
    dx = F.relu_backward(_to(backend, dy), _to(backend, x))
    assert relative_error(_np(backend, dx), _fd_activation(F.relu, x, dy)) < TOL


def test_sigmoid_values(backend):
    x = np.array([0.0, 2.0, -2.0, 100.0, -100.0])
    y = _np(backend, F.sigmoid(_to(backend, x)))
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x)), rtol=1e-14)
    assert y[0] == 0.5
    np.testing.assert_allclose(y[1] + y[2], 1.0, rtol=1e-15)


def test_sigmoid_extreme_float32_is_finite(backend):
    x = _to(backend, np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=np.float32))
    y = F.sigmoid(x)
    assert y.dtype == np.float32
    y = _np(backend, y)
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y[[0, 2, 4]], [0.0, 0.5, 1.0])


def test_sigmoid_backward_matches_finite_differences(backend):
    rng = _rng(8)
    x, dy = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5))
    y = F.sigmoid(_to(backend, x))
    dx = F.sigmoid_backward(_to(backend, dy), _to(backend, x), y)
    assert relative_error(_np(backend, dx), _fd_activation(F.sigmoid, x, dy)) < TOL


def test_tanh_backward_matches_finite_differences(backend):
    rng = _rng(9)
    x, dy = rng.normal(size=(6, 5)) * 2, rng.normal(size=(6, 5))
    y = F.tanh(_to(backend, x))
    np.testing.assert_allclose(_np(backend, y), np.tanh(x), rtol=1e-14)
    dx = F.tanh_backward(_to(backend, dy), _to(backend, x), y)
    assert relative_error(_np(backend, dx), _fd_activation(F.tanh, x, dy)) < TOL


def test_softmax_values(backend):
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = _np(backend, F.softmax(_to(backend, x)))
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(y[0], e / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(y[1], [1 / 3] * 3, rtol=1e-15)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-15)


def test_softmax_is_shift_invariant_and_stable(backend):
    x = np.array([[1e4, 0.0, -1e4], [1000.0, 1001.0, 1002.0]], dtype=np.float32)
    y = F.softmax(_to(backend, x))
    assert y.dtype == np.float32
    y = _np(backend, y)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[0], [1.0, 0.0, 0.0], atol=1e-7)
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(y[1], e / e.sum(), rtol=1e-6)


def test_softmax_backward_matches_finite_differences(backend):
    rng = _rng(10)
    x, dy = rng.normal(size=(5, 4)) * 2, rng.normal(size=(5, 4))
    y = F.softmax(_to(backend, x))
    dx = F.softmax_backward(_to(backend, dy), _to(backend, x), y)
    assert relative_error(_np(backend, dx), _fd_activation(F.softmax, x, dy)) < TOL


def test_softmax_rank3_backward_matches_finite_differences(backend):
    rng = _rng(11)
    x, dy = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    y = F.softmax(_to(backend, x))
    np.testing.assert_allclose(_np(backend, y).sum(axis=-1), 1.0, rtol=1e-14)
    dx = F.softmax_backward(_to(backend, dy), _to(backend, x), y)
    assert relative_error(_np(backend, dx), _fd_activation(F.softmax, x, dy)) < TOL


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax"])
def test_backward_does_not_modify_dy(backend, name):
    rng = _rng(12)
    x = _away_from_zero(rng.normal(size=(4, 3)))
    dy_host = rng.normal(size=(4, 3))
    dy = _to(backend, dy_host)
    xb = _to(backend, x)
    y = getattr(F, name)(xb)
    getattr(F, name + "_backward")(dy, xb, y)
    np.testing.assert_array_equal(_np(backend, dy), dy_host)


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax"])
def test_activation_pairs_keep_float32(backend, name):
    x = _to(backend, _away_from_zero(_rng(13).normal(size=(4, 3))).astype(np.float32))
    dy = _to(backend, np.ones((4, 3), np.float32))
    y = getattr(F, name)(x)
    assert y.dtype == np.float32
    assert getattr(F, name + "_backward")(dy, x, y).dtype == np.float32


def test_log_softmax_matches_log_of_softmax(backend):
    x = _rng(14).normal(size=(4, 6)) * 3
    got = _np(backend, F.log_softmax(_to(backend, x)))
    np.testing.assert_allclose(got, np.log(_np(backend, F.softmax(_to(backend, x)))),
                               rtol=1e-12)


def test_log_softmax_extreme_logits_finite(backend):
    x = np.array([[1e4, -1e4, 0.0]], dtype=np.float32)
    got = _np(backend, F.log_softmax(_to(backend, x)))
    np.testing.assert_array_equal(got, [[0.0, -2e4, -1e4]])


# ----------------------------------------------------------------------------------------------
# Fused losses
# ----------------------------------------------------------------------------------------------


def _reference_ce(z, onehot):
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(onehot * logp).sum() / z.shape[0]


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "onehot"])
def test_softmax_cross_entropy_value_and_gradient(backend, sparse):
    rng = _rng(15)
    z = rng.normal(size=(6, 4)) * 2
    labels = np.array([0, 3, 1, 1, 2, 0])
    onehot = np.eye(4)[labels]
    target = labels if sparse else onehot
    loss, dz = F.softmax_cross_entropy(_to(backend, z), _to(backend, target))
    assert float(loss) == pytest.approx(_reference_ce(z, onehot), rel=1e-13)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_np(backend, dz), (p - onehot) / 6, rtol=1e-12, atol=1e-16)
    zc = z.copy()
    fd = numerical_gradient(lambda: _reference_ce(zc, onehot), zc)
    assert relative_error(_np(backend, dz), fd) < TOL


def test_softmax_cross_entropy_uniform_logits_is_log_c(backend):
    for c in (2, 10):
        loss, _ = F.softmax_cross_entropy(_to(backend, np.zeros((3, c))),
                                          _to(backend, np.array([0, 1, c - 1])))
        assert float(loss) == pytest.approx(np.log(c), rel=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_extreme_logits_finite(backend, dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], dtype=dtype)
    labels = np.array([1, 1])
    loss, dz = F.softmax_cross_entropy(_to(backend, z), _to(backend, labels))
    assert dz.dtype == dtype
    # sample 0: log p[1] = -2e4, sample 1: log p[1] = 0 -> mean 1e4
    assert float(loss) == pytest.approx(1e4, rel=1e-6)
    dz = _np(backend, dz)
    assert np.all(np.isfinite(dz))
    np.testing.assert_allclose(dz, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "onehot"])
def test_softmax_cross_entropy_saturated_rows_keep_float32_digits(backend, sparse):
    """A saturated float32 row (the true class's p within an ulp of 1): p − 1 is still right to
    float32 precision (computed as p − 1 in float32 it would be 0 or one ulp of 1, i.e. wrong
    by up to 100%; Adam's normalised step would make that a whole step). Both the functional
    form and the backend's fused kernel."""
    from nnlite.backend import get_backend

    z64 = np.array([[20.0, 0.0, 0.0], [3.0, 21.5, -4.0], [18.0, 1.0, 17.0]])
    labels = np.array([0, 1, 0])
    onehot = np.eye(3)[labels]
    p = np.exp(z64 - z64.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    exact = p - onehot
    # the true class's p − 1 without cancellation: −(Σ of the other classes' p)
    exact[np.arange(3), labels] = -(p.sum(axis=1) - p[np.arange(3), labels])
    exact /= 3
    z = z64.astype(np.float32)
    target = labels if sparse else onehot.astype(np.float32)
    for name, fn in (("functional", F.softmax_cross_entropy),
                     ("backend", get_backend().softmax_cross_entropy)):
        _, dz = fn(_to(backend, z), _to(backend, target))
        dz = _np(backend, dz)
        assert dz.dtype == np.float32
        np.testing.assert_allclose(dz, exact, rtol=1e-6, atol=1e-12, err_msg=name)


def test_mean_squared_error_value_and_gradient(backend):
    y_pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    y_true = np.array([[0.0, 2.0], [5.0, 1.0]])
    # squared errors 1, 0, 4, 9 -> mean 14 / 4 = 3.5
    loss, dy = F.mean_squared_error(_to(backend, y_pred), _to(backend, y_true))
    assert float(loss) == 3.5
    # 2 · diff / (N·D) = diff / 2
    np.testing.assert_allclose(_np(backend, dy), [[0.5, 0.0], [-1.0, 1.5]], rtol=1e-15)
    rng = _rng(16)
    yp, yt = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    _, dy = F.mean_squared_error(_to(backend, yp), _to(backend, yt))
    fd = numerical_gradient(lambda: np.mean((yp - yt) ** 2), yp)
    assert relative_error(_np(backend, dy), fd) < TOL


def test_mean_squared_error_keeps_float32(backend):
    a = _to(backend, np.ones((3, 2), np.float32))
    b = _to(backend, np.zeros((3, 2), np.float32))
    loss, dy = F.mean_squared_error(a, b)
    assert dy.dtype == np.float32
    assert float(loss) == 1.0
