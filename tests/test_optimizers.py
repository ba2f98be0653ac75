"""Tests for nnlite.optimizers: golden single steps, multi-step trajectories and the API.

Golden steps are written out by hand with their numbers. Keras's exact hyperparameter rounding
(``nnlite.optimizers.base.keras_scalar``): SGD's momentum μ and Adam's β₁, β₂ inside the powers
βᵗ pass through float32 (``F32(0.9) = 0.89999997615814209``); the learning rate, the (1 − β)
factors, ρ and ε are exact in the parameters' dtype. The exact comparisons below reproduce that;
the hand-written decimals hold to ~1e-7, the size of that rounding.

Trajectories are checked against the independent float64 NumPy references in this file.
"""

import math

import numpy as np
import pytest

from nnlite import optimizers
from nnlite.optimizers import SGD, Adam, RMSprop, schedules


def F32(value):
    """A Python float rounded to float32 and widened back (what Keras's ops.cast feeds)."""
    return float(np.float32(value))


def _param(backend, values, dtype=np.float64):
    return backend.asarray(np.array(values, dtype=dtype))


def _np(backend, a):
    return np.asarray(backend.to_numpy(a))


def _step(opt, backend, param, grad):
    opt.apply_gradients([(backend.asarray(np.asarray(grad, dtype=param.dtype)), param)])


# ----------------------------------------------------------------------------------------------
# Golden single steps
# ----------------------------------------------------------------------------------------------


def test_sgd_golden_step(backend):
    p = _param(backend, [1.0, -2.0])
    _step(SGD(learning_rate=0.1), backend, p, [0.5, -1.0])
    # p − lr·g:  1.0 − 0.1·0.5 = 0.95 ;  −2.0 − 0.1·(−1.0) = −1.9
    np.testing.assert_allclose(_np(backend, p), [0.95, -1.9], rtol=1e-15)


def test_sgd_golden_step_float32(backend):
    p = _param(backend, [1.0], np.float32)
    _step(SGD(learning_rate=0.1), backend, p, [0.5])
    assert p.dtype == np.float32
    np.testing.assert_allclose(_np(backend, p), [np.float32(0.95)], rtol=1e-7)


def test_sgd_momentum_two_steps(backend):
    mu = F32(0.9)
    p = _param(backend, [1.0])
    opt = SGD(learning_rate=0.1, momentum=0.9)
    _step(opt, backend, p, [0.5])
    # v1 = μ·0 − 0.1·0.5 = −0.05 ;  p1 = 1.0 − 0.05 = 0.95
    np.testing.assert_allclose(_np(backend, p), [0.95], rtol=1e-15)
    _step(opt, backend, p, [0.25])
    # v2 = μ·(−0.05) − 0.1·0.25 = −0.045 − 0.025 = −0.07 ;  p2 = 0.95 − 0.07 = 0.88
    np.testing.assert_allclose(_np(backend, p), [0.88], rtol=1e-8)
    v2 = mu * -0.05 - 0.1 * 0.25
    np.testing.assert_allclose(_np(backend, p), [0.95 + v2], rtol=1e-15)


def test_sgd_nesterov_two_steps(backend):
    mu = F32(0.9)
    p = _param(backend, [1.0])
    opt = SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
    _step(opt, backend, p, [0.5])
    # v1 = −0.05 ;  p1 = 1.0 + μ·v1 − lr·g1 = 1.0 − 0.045 − 0.05 = 0.905
    np.testing.assert_allclose(_np(backend, p), [0.905], rtol=1e-8)
    p1 = 1.0 + mu * -0.05 - 0.1 * 0.5
    np.testing.assert_allclose(_np(backend, p), [p1], rtol=1e-15)
    _step(opt, backend, p, [0.25])
    # v2 = μ·(−0.05) − 0.025 = −0.07 ;  p2 = 0.905 + μ·(−0.07) − 0.025 = 0.905 − 0.063 − 0.025
    np.testing.assert_allclose(_np(backend, p), [0.817], rtol=1e-8)
    v2 = mu * -0.05 - 0.1 * 0.25
    np.testing.assert_allclose(_np(backend, p), [p1 + mu * v2 - 0.1 * 0.25], rtol=1e-15)


def test_adam_first_step_is_lr_times_sign(backend):
    g = np.array([0.5, -4.0, 2e-3, -1e-3])
    p = _param(backend, [1.0, -2.0, 3.0, 0.0])
    _step(Adam(learning_rate=0.001), backend, p, g)
    # step 1: m = 0.1·g, v = 0.001·g², alpha = lr·√(1 − β₂)/(1 − β₁)
    #   -> alpha·m/(√v + ε) = lr·|g|·sign(g)/(|g| + ε/√0.001) ≈ lr·sign(g) when |g| ≫ 3e-6
    expected_approx = np.array([1.0, -2.0, 3.0, 0.0]) - 0.001 * np.sign(g)
    np.testing.assert_allclose(_np(backend, p), expected_approx, rtol=0, atol=0.001 * 5e-3)
    # exact, in float64: β's in the powers rounded to float32, (1 − β) exact
    b1, b2 = F32(0.9), F32(0.999)
    m = (1 - 0.9) * g
    v = (1 - 0.999) * g * g
    alpha = 0.001 * math.sqrt(1 - b2) / (1 - b1)
    exact = np.array([1.0, -2.0, 3.0, 0.0]) - alpha * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(_np(backend, p), exact, rtol=1e-14)


def test_adam_golden_first_step_by_hand(backend):
    p = _param(backend, [1.0])
    _step(Adam(learning_rate=0.001), backend, p, [0.5])
    # m = 0.05, v = 0.00025, √v = 0.0158113883, alpha = 0.001·√0.001/0.1 = 3.16227766e-4
    # step = 3.16227766e-4 · 0.05 / (0.0158113883 + 1e-7) = 9.99993675e-4 -> p = 0.9990000063
    # (β's rounded to float32 in the powers move alpha by 7e-6 relative: p = 0.9990000130)
    np.testing.assert_allclose(_np(backend, p), [0.9990000063], rtol=0, atol=1e-8)
    np.testing.assert_allclose(_np(backend, p), [0.9990000130], rtol=0, atol=1e-10)


def test_adam_second_step(backend):
    b1, b2 = F32(0.9), F32(0.999)
    p = _param(backend, [1.0])
    opt = Adam(learning_rate=0.01)
    _step(opt, backend, p, [0.5])
    _step(opt, backend, p, [-0.25])
    m1, v1 = 0.1 * 0.5, 0.001 * 0.25
    p1 = 1.0 - (0.01 * math.sqrt(1 - b2) / (1 - b1)) * m1 / (math.sqrt(v1) + 1e-7)
    m2 = m1 + (-0.25 - m1) * (1 - 0.9)
    v2 = v1 + (0.0625 - v1) * (1 - 0.999)
    alpha2 = 0.01 * math.sqrt(1 - b2**2) / (1 - b1**2)
    p2 = p1 - alpha2 * m2 / (math.sqrt(v2) + 1e-7)
    np.testing.assert_allclose(_np(backend, p), [p2], rtol=1e-14)


def test_rmsprop_first_step(backend):
    p = _param(backend, [1.0, 2.0])
    _step(RMSprop(learning_rate=0.001), backend, p, [0.5, -0.1])
    # v = 0.1·g² ;  p − lr·g/√(0.1·g² + ε)   (ε inside the square root, as Keras)
    # 0.5: 1.0 − 0.0005/√(0.025 + 1e-7) = 1.0 − 0.0031622713 = 0.9968377287
    np.testing.assert_allclose(_np(backend, p)[0], 0.9968377287, rtol=0, atol=1e-10)
    g = np.array([0.5, -0.1])
    exact = np.array([1.0, 2.0]) - 0.001 * g / np.sqrt(0.1 * g * g + 1e-7)
    np.testing.assert_allclose(_np(backend, p), exact, rtol=1e-15)


def test_rmsprop_momentum_two_steps(backend):
    p = _param(backend, [1.0])
    opt = RMSprop(learning_rate=0.001, momentum=0.9)
    _step(opt, backend, p, [0.5])
    _step(opt, backend, p, [0.25])
    # v1 = 0.025 ; s1 = 0.001·0.5/√(0.025 + 1e-7) ; u1 = s1 ; p1 = 1 − s1
    # v2 = 0.9·0.025 + 0.1·0.0625 = 0.02875 ; s2 = 0.001·0.25/√(0.02875 + 1e-7)
    # u2 = 0.9·u1 + s2 ; p2 = p1 − u2
    s1 = 0.0005 / math.sqrt(0.025 + 1e-7)
    s2 = 0.00025 / math.sqrt(0.02875 + 1e-7)
    expected = 1.0 - s1 - (0.9 * s1 + s2)
    assert expected == pytest.approx(0.9925, abs=1e-4)
    np.testing.assert_allclose(_np(backend, p), [expected], rtol=1e-15)


def test_rmsprop_centered_first_steps(backend):
    p = _param(backend, [1.0])
    opt = RMSprop(learning_rate=0.001, centered=True)
    _step(opt, backend, p, [0.5])
    # v = 0.025, ḡ = 0.05, d = 0.025 − 0.0025 = 0.0225 ; step = 0.0005/√(0.0225 + 1e-7)
    s1 = 0.0005 / math.sqrt(0.0225 + 1e-7)
    assert s1 == pytest.approx(0.0033333259, rel=1e-7)
    np.testing.assert_allclose(_np(backend, p), [1.0 - s1], rtol=1e-15)
    _step(opt, backend, p, [0.25])
    v2, gbar2 = 0.9 * 0.025 + 0.1 * 0.0625, 0.9 * 0.05 + 0.1 * 0.25
    s2 = 0.00025 / math.sqrt(v2 - gbar2**2 + 1e-7)
    np.testing.assert_allclose(_np(backend, p), [1.0 - s1 - s2], rtol=1e-15)


def test_rmsprop_centered_with_momentum(backend):
    p = _param(backend, [1.0])
    opt = RMSprop(learning_rate=0.01, momentum=0.5, centered=True)
    _step(opt, backend, p, [0.5])
    _step(opt, backend, p, [0.25])
    s1 = 0.005 / math.sqrt(0.0225 + 1e-7)
    v2, gbar2 = 0.9 * 0.025 + 0.1 * 0.0625, 0.9 * 0.05 + 0.1 * 0.25
    s2 = 0.0025 / math.sqrt(v2 - gbar2**2 + 1e-7)
    np.testing.assert_allclose(_np(backend, p), [1.0 - s1 - (0.5 * s1 + s2)], rtol=1e-15)


# ----------------------------------------------------------------------------------------------
# Ten-step trajectories against independent references
# ----------------------------------------------------------------------------------------------


def _quadratic(seed=0, n=5):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    a = a @ a.T / n + np.eye(n)
    b = rng.normal(size=n)
    p0 = rng.normal(size=n)
    return a, b, p0


def _ref_sgd(p, grads_fn, steps, lr, momentum=0.0, nesterov=False):
    p, v, mu = p.copy(), np.zeros_like(p), F32(momentum)
    for _ in range(steps):
        g = grads_fn(p)
        if momentum == 0:
            p = p - lr * g
            continue
        v = mu * v - lr * g
        p = p + (mu * v - lr * g if nesterov else v)
    return p


def _ref_adam(p, grads_fn, steps, lr, beta_1=0.9, beta_2=0.999, eps=1e-7):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    b1, b2 = F32(beta_1), F32(beta_2)
    for t in range(1, steps + 1):
        g = grads_fn(p)
        m = m + (g - m) * (1 - beta_1)
        v = v + (g * g - v) * (1 - beta_2)
        alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        p = p - alpha * m / (np.sqrt(v) + eps)
    return p


def _ref_rmsprop(p, grads_fn, steps, lr, rho=0.9, momentum=0.0, eps=1e-7, centered=False):
    p, v, u, gbar = p.copy(), np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for _ in range(steps):
        g = grads_fn(p)
        v = rho * v + (1 - rho) * g * g
        d = v
        if centered:
            gbar = rho * gbar + (1 - rho) * g
            d = v - gbar * gbar
        s = lr * g / np.sqrt(d + eps)
        if momentum > 0:
            u = momentum * u + s
            s = u
        p = p - s
    return p


TRAJECTORIES = [
    ("sgd", lambda: SGD(0.05), lambda p, f: _ref_sgd(p, f, 10, 0.05)),
    ("sgd_momentum", lambda: SGD(0.05, momentum=0.9),
     lambda p, f: _ref_sgd(p, f, 10, 0.05, 0.9)),
    ("sgd_nesterov", lambda: SGD(0.05, momentum=0.8, nesterov=True),
     lambda p, f: _ref_sgd(p, f, 10, 0.05, 0.8, True)),
    ("adam", lambda: Adam(0.02), lambda p, f: _ref_adam(p, f, 10, 0.02)),
    ("adam_betas", lambda: Adam(0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-4),
     lambda p, f: _ref_adam(p, f, 10, 0.05, 0.8, 0.99, 1e-4)),
    ("rmsprop", lambda: RMSprop(0.01), lambda p, f: _ref_rmsprop(p, f, 10, 0.01)),
    ("rmsprop_momentum", lambda: RMSprop(0.01, rho=0.8, momentum=0.7),
     lambda p, f: _ref_rmsprop(p, f, 10, 0.01, 0.8, 0.7)),
    ("rmsprop_centered", lambda: RMSprop(0.01, momentum=0.5, centered=True),
     lambda p, f: _ref_rmsprop(p, f, 10, 0.01, momentum=0.5, centered=True)),
]


@pytest.mark.parametrize("name, make, reference", TRAJECTORIES, ids=[t[0] for t in TRAJECTORIES])
def test_ten_step_trajectory(backend, name, make, reference):
    a, b, p0 = _quadratic(seed=1)

    def grad_of(p):  # gradient of ½ pᵀAp − bᵀp
        return a @ p - b

    expected = reference(p0, grad_of)
    assert not np.allclose(expected, p0)  # the trajectory moves
    p = backend.asarray(p0.copy())
    opt = make()
    for _ in range(10):
        g = grad_of(_np(backend, p))
        opt.apply_gradients([(backend.asarray(g), p)])
    assert opt.iterations == 10
    np.testing.assert_allclose(_np(backend, p), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name, make, reference", TRAJECTORIES, ids=[t[0] for t in TRAJECTORIES])
def test_ten_step_trajectory_float32(backend, name, make, reference):
    a, b, p0 = _quadratic(seed=2)

    def grad_of(p):
        return a @ p - b

    expected = reference(p0, grad_of)
    p = backend.asarray(p0.astype(np.float32))
    opt = make()
    for _ in range(10):
        g = grad_of(_np(backend, p).astype(np.float64)).astype(np.float32)
        opt.apply_gradients([(backend.asarray(g), p)])
    assert p.dtype == np.float32
    np.testing.assert_allclose(_np(backend, p), expected, rtol=1e-4, atol=1e-5)


def test_matrix_parameter_trajectory(backend):
    """Two-dimensional parameters (a kernel) update element-wise like vectors."""
    rng = np.random.default_rng(3)
    k0, target = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    k = backend.asarray(k0.copy())
    opt = Adam(0.05)
    for _ in range(10):
        opt.apply_gradients([(backend.asarray(2 * (_np(backend, k) - target)), k)])
    expected = _ref_adam(k0.reshape(-1), lambda p: 2 * (p - target.reshape(-1)), 10, 0.05)
    np.testing.assert_allclose(_np(backend, k), expected.reshape(3, 4), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# In place, state, API
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: SGD(0.1), lambda: SGD(0.1, momentum=0.9),
                                  lambda: Adam(0.1), lambda: RMSprop(0.1, centered=True)],
                         ids=["sgd", "momentum", "adam", "rmsprop"])
def test_updates_in_place(backend, make):
    p = _param(backend, [[1.0, 2.0], [3.0, 4.0]])
    view = p[...]
    opt = make()
    opt.apply_gradients([(backend.asarray(np.full((2, 2), 0.5)), p)])
    after = _np(backend, p)
    assert not np.allclose(after, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(_np(backend, view), after)
    if backend.xp is np:
        assert np.shares_memory(view, p)


@pytest.mark.parametrize("make", [lambda: SGD(0.1), lambda: SGD(0.1, momentum=0.9),
                                  lambda: Adam(0.1), lambda: RMSprop(0.1, momentum=0.5)],
                         ids=["sgd", "momentum", "adam", "rmsprop"])
def test_non_contiguous_parameter_updated_in_place(backend, make):
    """A transposed view is updated through the view (no silent copy)."""
    base = _param(backend, np.arange(6.0).reshape(2, 3))
    p = base.T
    ref = backend.asarray(np.arange(6.0).reshape(2, 3).T.copy())
    g = np.arange(1.0, 7.0).reshape(3, 2) / 10
    opt, opt_ref = make(), make()
    for _ in range(2):
        opt.apply_gradients([(backend.asarray(g), p)])
        opt_ref.apply_gradients([(backend.asarray(g), ref)])
    np.testing.assert_allclose(_np(backend, base).T, _np(backend, ref), rtol=1e-15)
    assert not np.allclose(_np(backend, ref), np.arange(6.0).reshape(2, 3).T)


def test_state_is_per_parameter(backend):
    """Two parameters get independent moments: the same as two separate optimizers."""
    p1, p2 = _param(backend, [1.0, 2.0]), _param(backend, [1.0, 2.0])
    q1, q2 = _param(backend, [1.0, 2.0]), _param(backend, [1.0, 2.0])
    opt, opt1, opt2 = Adam(0.1), Adam(0.1), Adam(0.1)
    grads = [([0.5, -1.0], [0.5, -1.0]), ([2.0, 0.1], [-3.0, 0.2]), ([0.3, 0.3], [1.0, -1.0])]
    for g1, g2 in grads:
        opt.apply_gradients([(backend.asarray(np.array(g1)), p1),
                             (backend.asarray(np.array(g2)), p2)])
        opt1.apply_gradients([(backend.asarray(np.array(g1)), q1)])
        opt2.apply_gradients([(backend.asarray(np.array(g2)), q2)])
    np.testing.assert_allclose(_np(backend, p1), _np(backend, q1), rtol=1e-15)
    np.testing.assert_allclose(_np(backend, p2), _np(backend, q2), rtol=1e-15)
    assert not np.allclose(_np(backend, p1), _np(backend, p2))


def test_equal_valued_parameters_do_not_share_state(backend):
    """State is keyed by identity, not by value or shape."""
    p1, p2 = _param(backend, [0.0]), _param(backend, [0.0])
    opt = SGD(0.1, momentum=0.9)
    opt.apply_gradients([(backend.asarray(np.array([1.0])), p1)])
    opt.apply_gradients([(backend.asarray(np.array([1.0])), p2)])
    # p2's velocity starts at 0, so its first step equals p1's first step
    np.testing.assert_allclose(_np(backend, p2), _np(backend, p1), rtol=1e-15)


def test_raw_numpy_arrays_and_apply_alias():
    w = np.array([1.0, 2.0])
    b = np.array([0.5])
    opt = SGD(0.5)
    opt.apply_gradients(zip([np.array([1.0, 1.0]), np.array([1.0])], [w, b]))
    np.testing.assert_allclose(w, [0.5, 1.5])
    np.testing.assert_allclose(b, [0.0])
    opt.apply([np.array([1.0, 0.0]), np.array([-2.0])], [w, b])
    np.testing.assert_allclose(w, [0.0, 1.5])
    np.testing.assert_allclose(b, [1.0])
    assert opt.iterations == 2


def test_none_gradient_skips_its_parameter(backend):
    p1, p2 = _param(backend, [1.0]), _param(backend, [1.0])
    opt = Adam(0.1)
    opt.apply_gradients([(None, p1), (backend.asarray(np.array([1.0])), p2)])
    np.testing.assert_array_equal(_np(backend, p1), [1.0])
    assert _np(backend, p2)[0] < 1.0
    assert opt.iterations == 1


def test_shape_mismatch_raises_before_any_update(backend):
    p1, p2 = _param(backend, [1.0, 2.0]), _param(backend, [[1.0, 2.0]])
    opt = SGD(0.1)
    with pytest.raises(ValueError, match=r"\(2,\).*\(1, 2\)"):
        opt.apply_gradients([(backend.asarray(np.ones(2)), p1),
                             (backend.asarray(np.ones(2)), p2)])
    np.testing.assert_array_equal(_np(backend, p1), [1.0, 2.0])
    assert opt.iterations == 0


def test_iterations_counts_calls(backend):
    p = _param(backend, [1.0])
    opt = RMSprop()
    assert opt.iterations == 0
    for i in range(1, 4):
        opt.apply_gradients([(backend.asarray(np.array([0.1])), p)])
        assert opt.iterations == i


def test_learning_rate_schedule(backend):
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.1 * 0.5**step

    p = _param(backend, [1.0])
    opt = SGD(learning_rate=schedule)
    for _ in range(3):
        _step(opt, backend, p, [1.0])
    assert seen == [0, 1, 2]
    # 1.0 − 0.1 − 0.05 − 0.025 = 0.825
    np.testing.assert_allclose(_np(backend, p), [0.825], rtol=1e-15)
    assert opt.current_learning_rate() == pytest.approx(0.0125)


def test_learning_rate_schedule_adam(backend):
    p = _param(backend, [1.0])
    opt = Adam(learning_rate=lambda step: 0.0 if step == 0 else 0.01)
    _step(opt, backend, p, [1.0])
    np.testing.assert_array_equal(_np(backend, p), [1.0])  # lr 0 on the first step
    _step(opt, backend, p, [1.0])
    assert _np(backend, p)[0] < 1.0


@pytest.mark.parametrize("make", [lambda: SGD(0.1, momentum=0.9), lambda: Adam(),
                                  lambda: RMSprop(momentum=0.9, centered=True)],
                         ids=["sgd", "adam", "rmsprop"])
def test_float32_preserved(backend, make):
    p = _param(backend, [[1.0, -1.0]], np.float32)
    opt = make()
    for _ in range(2):
        opt.apply_gradients([(backend.asarray(np.array([[0.5, 0.25]], np.float32)), p)])
    assert p.dtype == np.float32
    state = opt._state(p)
    assert state and all(s.dtype == np.float32 for s in state.values())


def test_keras_defaults():
    sgd, adam, rms = SGD(), Adam(), RMSprop()
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (0.01, 0.0, False)
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (
        0.001, 0.9, 0.999, 1e-7)
    assert (rms.learning_rate, rms.rho, rms.momentum, rms.epsilon, rms.centered) == (
        0.001, 0.9, 0.0, 1e-7, False)


@pytest.mark.parametrize("name, cls", [("sgd", SGD), ("SGD", SGD), ("adam", Adam),
                                       ("Adam", Adam), ("ADAM", Adam), ("rmsprop", RMSprop),
                                       ("RMSprop", RMSprop), ("RMSProp", RMSprop)])
def test_get_by_name(name, cls):
    assert type(optimizers.get(name)) is cls


def test_get_class_and_instance():
    opt = Adam(0.5)
    assert optimizers.get(opt) is opt
    assert type(optimizers.get(RMSprop)) is RMSprop


@pytest.mark.parametrize("bad", ["adamw", "sdg", 1.0])
def test_get_unknown_lists_choices(bad):
    with pytest.raises(ValueError) as info:
        optimizers.get(bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in ("adam", "rmsprop", "sgd"):
        assert name in message


@pytest.mark.parametrize("make, arg, value", [
    (lambda: SGD(learning_rate=-0.1), "learning_rate", "-0.1"),
    (lambda: Adam(learning_rate=-1e-3), "learning_rate", "-0.001"),
    (lambda: RMSprop(learning_rate=-1.0), "learning_rate", "-1.0"),
    (lambda: SGD(learning_rate=float("nan")), "learning_rate", "nan"),
    (lambda: SGD(momentum=-0.5), "momentum", "-0.5"),
    (lambda: Adam(beta_1=1.0), "beta_1", "1.0"),
    (lambda: Adam(beta_1=-0.1), "beta_1", "-0.1"),
    (lambda: Adam(beta_2=1.5), "beta_2", "1.5"),
    (lambda: RMSprop(rho=1.0), "rho", "1.0"),
    (lambda: RMSprop(momentum=-0.1), "momentum", "-0.1"),
])
def test_invalid_hyperparameters(make, arg, value):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert f"`{arg}`" in message and value in message


def test_unsupported_options():
    with pytest.raises(ValueError, match="clipnorm"):
        SGD(clipnorm=1.0)
    with pytest.raises(ValueError, match="amsgrad"):
        Adam(amsgrad=True)
    with pytest.raises(TypeError, match="lr_decay"):
        Adam(lr_decay=0.1)
    SGD(clipnorm=None)  # None means "not used", as Keras


def test_get_config_round_trip():
    opt = RMSprop(learning_rate=0.01, rho=0.8, momentum=0.5, centered=True)
    config = opt.get_config()
    assert config["learning_rate"] == 0.01 and config["rho"] == 0.8
    assert config["momentum"] == 0.5 and config["centered"] is True
    clone = RMSprop(**config)
    assert clone.get_config() == config


# ---------------------------------------------------------------- learning-rate schedules
# (values against Keras: tests/reference, group "optimizers", the *_decay / *_constant cases)

SCHEDULES = [
    schedules.ExponentialDecay(0.1, 3, 0.7, staircase=True),
    schedules.PiecewiseConstantDecay([2, 5], [0.1, 0.05, 0.01]),
    schedules.PolynomialDecay(0.01, 4, 0.001, power=0.5, cycle=True),
    schedules.InverseTimeDecay(0.01, 2, 0.5),
    schedules.CosineDecay(0.0, 5, warmup_target=0.01, warmup_steps=3),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_schedule_config_round_trip_and_float32_values(schedule):
    clone = type(schedule)(**schedule.get_config())
    assert clone.get_config() == schedule.get_config()
    assert repr(clone) == repr(schedule)
    for step in range(12):
        value = schedule(step)
        assert type(value) is float and value == clone(step)
        assert float(np.float32(value)) == value  # evaluated in float32, as Keras does


def test_schedule_values_by_hand():
    s = schedules
    assert [s.ExponentialDecay(1.0, 2, 0.5, staircase=True)(k) for k in range(5)] == [
        1.0, 1.0, 0.5, 0.5, 0.25]
    assert [s.PiecewiseConstantDecay([2, 5], [3.0, 2.0, 1.0])(k) for k in (0, 2, 3, 5, 6)] == [
        3.0, 3.0, 2.0, 2.0, 1.0]
    assert [s.PolynomialDecay(1.0, 4, 0.0)(k) for k in (0, 2, 4, 9)] == [1.0, 0.5, 0.0, 0.0]
    assert s.PolynomialDecay(1.0, 4, 0.0, cycle=True)(6) == 0.25  # decay_steps stretched to 8
    assert s.InverseTimeDecay(1.0, 1, 1.0)(3) == 0.25
    cosine = s.CosineDecay(1.0, 4, alpha=0.5)
    assert [cosine(k) for k in (0, 2, 4, 10)] == [1.0, 0.75, 0.5, 0.5]
    warm = s.CosineDecay(0.0, 2, warmup_target=1.0, warmup_steps=2)
    assert [warm(k) for k in (0, 1, 2, 4)] == [0.0, 0.5, 1.0, 0.0]


@pytest.mark.parametrize("make, match", [
    (lambda s: s.ExponentialDecay(0.1, 0, 0.5), r"ExponentialDecay: expected `decay_steps` > 0"),
    (lambda s: s.PolynomialDecay(0.1, -1), r"PolynomialDecay: expected `decay_steps` > 0"),
    (lambda s: s.PiecewiseConstantDecay([1, 2], [0.1, 0.2]),
     r"boundaries should be 1 less than the length of values"),
])
def test_schedule_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(schedules)


def test_an_optimizer_steps_with_its_schedule():
    schedule = schedules.PiecewiseConstantDecay([1], [1.0, 0.5])
    opt = SGD(learning_rate=schedule)
    p = np.zeros(2)
    for _ in range(3):
        opt.apply_gradients([(np.ones(2), p)])
    np.testing.assert_array_equal(p, [-2.5, -2.5])  # rates 1.0, 1.0, 0.5: step ≤ 1 is the first
