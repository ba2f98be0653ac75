"""Tests for nnlite.layers: gradient checks and the layer contract.

Gradient checks follow Chainer's recipe in float64: a random upstream gradient ``dy`` defines
``L = Σ layer(x) ⊙ dy``; ``backward(dy)`` must match central differences of L for the input and
every parameter to a relative error below 1e-6. The helper below perturbs the backend's own
arrays in place, so the same bodies run on every backend the ``backend`` fixture yields.
"""

import re

import numpy as np
import pytest

import nnlite
from nnlite import functional as F
from nnlite.gradcheck import check_layer, relative_error
from nnlite.layers import (
    Activation,
    Dense,
    Dropout,
    Flatten,
    Input,
    ReLU,
    Reshape,
    Softmax,
)

TOL = 1e-6
ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax"]


def _np(backend, a):
    return np.asarray(backend.to_numpy(a), dtype=np.float64)


def _numerical_grad(backend, f, a, h=1e-6):
    """Central differences of the scalar ``f()`` w.r.t. backend array ``a``, perturbed in place."""
    grad = np.zeros(a.shape, dtype=np.float64)
    flat = a.reshape(-1)
    assert flat.base is a or flat is a or backend.xp.shares_memory(flat, a)
    for i in range(flat.size):
        old = float(flat[i])
        flat[i] = old + h
        plus = f()
        flat[i] = old - h
        minus = f()
        flat[i] = old
        grad.reshape(-1)[i] = (plus - minus) / (2 * h)
    return grad


def gradient_errors(backend, layer, x, dy=None, seed=0, training=False):
    """Relative errors ``{"input": e, "kernel": e, ...}`` of ``layer.backward`` vs differences."""
    xb = backend.asarray(np.array(x, dtype=np.float64))
    y = layer(xb, training=training)
    if dy is None:
        dy = np.random.default_rng(seed).standard_normal(tuple(y.shape))
    dyb = backend.asarray(dy)
    layer(xb, training=training)
    dx = layer.backward(dyb)
    analytic = {"input": _np(backend, dx)}
    analytic.update({k: _np(backend, g) for k, g in layer.grads.items()})
    assert set(layer.grads) == set(layer.params)

    def loss():
        return float(np.sum(_np(backend, layer(xb, training=training)) * dy))

    errors = {"input": relative_error(analytic["input"], _numerical_grad(backend, loss, xb))}
    for key, param in layer.params.items():
        assert analytic[key].shape == tuple(param.shape)
        errors[key] = relative_error(analytic[key], _numerical_grad(backend, loss, param))
    return errors


def _assert_small(errors):
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


def _dense_inputs_away_from_kink(units, shape, margin=0.05, max_seed=200):
    """(seed, x, kernel, bias) with every pre-activation at least ``margin`` away from 0."""
    for seed in range(max_seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=shape)
        kernel = rng.normal(size=(shape[-1], units))
        bias = rng.normal(size=units) * 0.5
        z = x @ kernel + bias
        if np.abs(z).min() > margin:
            return x, kernel, bias
    raise AssertionError("no seed gives pre-activations away from 0")  # pragma: no cover


def _build_dense(backend, layer, x, kernel, bias=None):
    layer(backend.asarray(x))
    weights = [kernel] if bias is None else [kernel, bias]
    layer.set_weights(weights)
    return layer


# ----------------------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_gradients(backend, float64, activation):
    x, kernel, bias = _dense_inputs_away_from_kink(4, (5, 3))
    layer = _build_dense(backend, Dense(4, activation=activation), x, kernel, bias)
    assert layer.params["kernel"].dtype == np.float64
    errors = gradient_errors(backend, layer, x, seed=1)
    assert set(errors) == {"input", "kernel", "bias"}
    _assert_small(errors)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_dense_without_bias_gradients(backend, float64, activation):
    x, kernel, _ = _dense_inputs_away_from_kink(3, (4, 5))
    layer = _build_dense(backend, Dense(3, activation=activation, use_bias=False), x, kernel)
    assert set(layer.params) == {"kernel"}
    errors = gradient_errors(backend, layer, x, seed=2)
    assert set(errors) == {"input", "kernel"}
    _assert_small(errors)


@pytest.mark.parametrize("activation", ["linear", "sigmoid", "softmax"])
def test_dense_rank3_gradients(backend, float64, activation):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4))
    layer = Dense(5, activation=activation)
    y = layer(backend.asarray(x))
    assert tuple(y.shape) == (2, 3, 5)
    assert layer.compute_output_shape((None, 3, 4)) == (None, 3, 5)
    _assert_small(gradient_errors(backend, layer, x, seed=4))


def test_dense_forward_values(backend, float64):
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    kernel = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 1.0]])
    bias = np.array([0.1, 0.2, 0.3])
    layer = _build_dense(backend, Dense(3, activation="relu"), x, kernel, bias)
    y = _np(backend, layer(backend.asarray(x)))
    # z = [[2.1, -1.8, 4.3], [2.6, 1.2, 5.3]] -> relu
    np.testing.assert_allclose(y, [[2.1, 0.0, 4.3], [2.6, 1.2, 5.3]], rtol=1e-14)
    np.testing.assert_allclose(_np(backend, layer.logits), [[2.1, -1.8, 4.3], [2.6, 1.2, 5.3]],
                               rtol=1e-14)


def test_dense_keeps_float32(backend):
    layer = Dense(3, activation="sigmoid")
    y = layer(backend.asarray(np.ones((2, 4), np.float32)))
    assert layer.params["kernel"].dtype == np.float32
    assert layer.params["bias"].dtype == np.float32
    assert y.dtype == np.float32
    dx = layer.backward(backend.asarray(np.ones((2, 3), np.float32)))
    assert dx.dtype == np.float32
    assert layer.grads["kernel"].dtype == np.float32 and layer.grads["bias"].dtype == np.float32


def test_dense_integer_input_is_cast_to_layer_dtype(backend):
    layer = Dense(2)
    y = layer(np.array([[1, 2, 3]]))
    assert y.dtype == np.float32


def test_dense_build_shapes_and_defaults(backend):
    layer = Dense(7)
    layer(backend.asarray(np.zeros((2, 5), np.float32)))
    assert layer.params["kernel"].shape == (5, 7)
    assert layer.params["bias"].shape == (7,)
    assert layer.activation.name == "linear"
    np.testing.assert_array_equal(_np(backend, layer.params["bias"]), np.zeros(7))
    limit = np.sqrt(6 / (5 + 7))  # glorot_uniform
    assert np.abs(_np(backend, layer.params["kernel"])).max() <= limit
    assert layer.count_params() == 5 * 7 + 7
    assert layer.output_shape == (None, 7)


def test_dense_backward_assigns_not_accumulates(backend, float64):
    rng = np.random.default_rng(5)
    x, dy = backend.asarray(rng.normal(size=(3, 4))), backend.asarray(rng.normal(size=(3, 2)))
    layer = Dense(2, activation="tanh")
    layer(x)
    layer.backward(dy)
    first = {k: _np(backend, v).copy() for k, v in layer.grads.items()}
    layer(x)
    layer.backward(dy)
    for k, v in layer.grads.items():
        np.testing.assert_allclose(_np(backend, v), first[k], rtol=1e-15)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_backward_does_not_modify_dy(backend, float64, activation):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 4))
    dy_host = rng.normal(size=(3, 2))
    dy = backend.asarray(dy_host.copy())
    layer = Dense(2, activation=activation)
    layer(backend.asarray(x))
    layer.backward(dy)
    np.testing.assert_array_equal(_np(backend, dy), dy_host)


def test_dense_input_grad_false_skips_dx(backend, float64):
    rng = np.random.default_rng(7)
    x, dy = rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    layer = Dense(2)
    layer(backend.asarray(x))
    layer.input_grad = False
    assert layer.backward(backend.asarray(dy)) is None
    kernel = _np(backend, layer.params["kernel"])
    np.testing.assert_allclose(_np(backend, layer.grads["kernel"]), x.T @ dy, rtol=1e-13)
    np.testing.assert_allclose(_np(backend, layer.grads["bias"]), dy.sum(axis=0), rtol=1e-13)
    assert kernel.shape == (4, 2)


def test_dense_backward_from_logits(backend, float64):
    rng = np.random.default_rng(8)
    x, dz = rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    layer = Dense(2, activation="softmax")
    layer(backend.asarray(x))
    kernel = _np(backend, layer.params["kernel"])
    dx = layer.backward_from_logits(backend.asarray(dz))
    np.testing.assert_allclose(_np(backend, dx), dz @ kernel.T, rtol=1e-13)
    np.testing.assert_allclose(_np(backend, layer.grads["kernel"]), x.T @ dz, rtol=1e-13)
    np.testing.assert_allclose(_np(backend, layer.grads["bias"]), dz.sum(axis=0), rtol=1e-13)


def test_dense_errors_name_the_argument():
    with pytest.raises(ValueError, match="units.*0"):
        Dense(0)
    with pytest.raises(ValueError, match="units"):
        Dense(2.5)
    with pytest.raises(ValueError, match=r"Unknown activation 'swishy'.*relu"):
        Dense(2, activation="swishy")
    layer = Dense(2)
    layer(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"last dimension 3.*\(1, 4\)"):
        layer(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="features"):
        Dense(2).build((None,))


def test_check_layer_helper_agrees(float64):
    """nnlite.gradcheck.check_layer itself reports small errors for a correct layer."""
    layer = Dense(3, activation="tanh")
    errors = check_layer(layer, np.random.default_rng(9).normal(size=(4, 5)))
    assert set(errors) == {"input", "kernel", "bias"}
    assert max(errors.values()) < TOL


# ----------------------------------------------------------------------------------------------
# Activation, ReLU, Softmax
# ----------------------------------------------------------------------------------------------


def _away_from(x, points, margin=0.05):
    """Push every entry of ``x`` at least ``margin`` away from each point in ``points``."""
    x = np.array(x, dtype=np.float64)
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + np.where(x[near] >= p, 2 * margin, -2 * margin)
    return x


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_layer_gradients(backend, float64, activation):
    x = _away_from(np.random.default_rng(10).normal(size=(4, 5)) * 2, [0.0])
    layer = Activation(activation)
    assert layer.params == {}
    errors = gradient_errors(backend, layer, x, seed=11)
    assert set(errors) == {"input"}
    _assert_small(errors)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_layer_matches_functional_and_dtype(backend, activation):
    x = np.random.default_rng(12).normal(size=(3, 4)).astype(np.float32)
    y = Activation(activation)(backend.asarray(x))
    assert y.dtype == np.float32
    expected = getattr(F, activation)(x.astype(np.float64))
    np.testing.assert_allclose(_np(backend, y), expected, rtol=1e-6, atol=1e-7)


def test_activation_accepts_functions():
    assert Activation(nnlite.activations.tanh).activation.name == "tanh"
    assert nnlite.activations.get(None).name == "linear"
    with pytest.raises(ValueError, match="expected one of"):
        Activation(np.sin)


RELU_CASES = [
    dict(),
    dict(max_value=1.5),
    dict(negative_slope=0.2),
    dict(threshold=0.5),
    dict(max_value=2.0, negative_slope=0.1, threshold=0.5),
]


def _relu_reference(x, max_value=None, negative_slope=0.0, threshold=0.0):
    y = np.where(x > threshold, x, negative_slope * (x - threshold))
    if max_value is not None:
        y = np.minimum(y, max_value)
    return y


@pytest.mark.parametrize("kwargs", RELU_CASES, ids=lambda k: ",".join(k) or "plain")
def test_relu_layer_values(backend, float64, kwargs):
    x = np.linspace(-3, 3, 25).reshape(5, 5)
    y = ReLU(**kwargs)(backend.asarray(x))
    np.testing.assert_allclose(_np(backend, y), _relu_reference(x, **kwargs), rtol=1e-15)


def test_relu_layer_hand_values(backend, float64):
    layer = ReLU(max_value=2.0, negative_slope=0.1, threshold=0.5)
    x = np.array([[-2.5, 0.0, 0.5, 1.0, 3.0]])
    # x <= threshold: 0.1·(x − 0.5) -> -0.3, -0.05, 0 ; above: x ; capped at 2
    expected = [[-0.3, -0.05, 0.0, 1.0, 2.0]]
    np.testing.assert_allclose(_np(backend, layer(backend.asarray(x))), expected, atol=1e-15)


@pytest.mark.parametrize("kwargs", RELU_CASES, ids=lambda k: ",".join(k) or "plain")
def test_relu_layer_gradients(backend, float64, kwargs):
    kinks = [0.0, kwargs.get("threshold", 0.0)]
    if kwargs.get("max_value") is not None:
        kinks.append(kwargs["max_value"])
    x = _away_from(np.random.default_rng(13).uniform(-3, 3, size=(6, 5)), kinks)
    layer = ReLU(**kwargs)
    _assert_small(gradient_errors(backend, layer, x, seed=14))


@pytest.mark.parametrize("kwargs", RELU_CASES, ids=lambda k: ",".join(k) or "plain")
def test_relu_layer_keeps_float32(backend, kwargs):
    x = np.random.default_rng(15).uniform(-3, 3, size=(4, 3)).astype(np.float32)
    layer = ReLU(**kwargs)
    y = layer(backend.asarray(x))
    assert y.dtype == np.float32
    assert layer.backward(backend.asarray(np.ones_like(x))).dtype == np.float32


def test_relu_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_value.*-1"):
        ReLU(max_value=-1.0)
    with pytest.raises(ValueError, match="negative_slope.*-0.5"):
        ReLU(negative_slope=-0.5)


def test_softmax_layer_gradients(backend, float64):
    x = np.random.default_rng(16).normal(size=(4, 6)) * 2
    layer = Softmax()
    y = _np(backend, layer(backend.asarray(x)))
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-14)
    _assert_small(gradient_errors(backend, layer, x, seed=17))


def test_softmax_layer_rank3_gradients(backend, float64):
    x = np.random.default_rng(18).normal(size=(2, 3, 4))
    _assert_small(gradient_errors(backend, Softmax(), x, seed=19))


def test_softmax_layer_axis_error():
    with pytest.raises(ValueError, match="axis.*1"):
        Softmax(axis=1)


# ----------------------------------------------------------------------------------------------
# Flatten and Reshape
# ----------------------------------------------------------------------------------------------


def test_flatten_shapes_and_gradients(backend, float64):
    x = np.random.default_rng(20).normal(size=(3, 2, 4, 2))
    layer = Flatten()
    y = layer(backend.asarray(x))
    assert tuple(y.shape) == (3, 16)
    np.testing.assert_array_equal(_np(backend, y), x.reshape(3, 16))
    assert layer.compute_output_shape((None, 2, 4, 2)) == (None, 16)
    assert layer.compute_output_shape((None, None, 4)) == (None, None)
    dy = np.random.default_rng(21).normal(size=(3, 16))
    dx = layer.backward(backend.asarray(dy))
    np.testing.assert_array_equal(_np(backend, dx), dy.reshape(3, 2, 4, 2))
    _assert_small(gradient_errors(backend, Flatten(), x, seed=22))


@pytest.mark.parametrize(
    "target, expected",
    [((4, 3), (4, 3)), ((-1, 4), (3, 4)), ((2, -1), (2, 6)), ((12,), (12,)), ((-1,), (12,))],
)
def test_reshape_shapes_and_gradients(backend, float64, target, expected):
    x = np.random.default_rng(23).normal(size=(2, 2, 6))
    layer = Reshape(target)
    y = layer(backend.asarray(x))
    assert tuple(y.shape) == (2,) + expected
    np.testing.assert_array_equal(_np(backend, y), x.reshape((2,) + expected))
    assert layer.compute_output_shape((None, 2, 6)) == (None,) + expected
    _assert_small(gradient_errors(backend, Reshape(target), x, seed=24))


def test_reshape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"at most one -1.*\(-1, -1\)"):
        Reshape((-1, -1))
    with pytest.raises(ValueError, match=r"\(None, 10\).*\(3, 4\)"):
        Reshape((3, 4)).compute_output_shape((None, 10))
    with pytest.raises(ValueError, match=r"\(None, 10\).*\(-1, 3\)"):
        Reshape((-1, 3)).compute_output_shape((None, 10))


# ----------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------


def test_dropout_identity_when_not_training(backend, float64):
    x = backend.asarray(np.random.default_rng(25).normal(size=(4, 5)))
    dy = backend.asarray(np.random.default_rng(26).normal(size=(4, 5)))
    layer = Dropout(0.5, seed=0)
    y = layer(x)
    np.testing.assert_array_equal(_np(backend, y), _np(backend, x))
    np.testing.assert_array_equal(_np(backend, layer.backward(dy)), _np(backend, dy))
    y = layer(x, training=False)
    np.testing.assert_array_equal(_np(backend, y), _np(backend, x))


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_dropout_training_mask_and_gradient(backend, float64, rate):
    rng = np.random.default_rng(27)
    x = rng.uniform(0.5, 2.0, size=(40, 30)) * rng.choice([-1, 1], size=(40, 30))
    dy = rng.normal(size=x.shape)
    dy_copy = dy.copy()
    layer = Dropout(rate, seed=123)
    y = _np(backend, layer(backend.asarray(x), training=True))
    keep = y != 0  # x has no zeros, so a zero output means a dropped entry
    scale = keep / (1 - rate)
    np.testing.assert_allclose(y, x * scale, rtol=1e-15)
    dyb = backend.asarray(dy)
    dx = _np(backend, layer.backward(dyb))
    np.testing.assert_allclose(dx, dy * scale, rtol=1e-15)
    np.testing.assert_array_equal(_np(backend, dyb), dy_copy)
    # the kept fraction is near 1 - rate (1,200 Bernoulli draws: 5 sigma ≈ 0.07)
    assert abs(keep.mean() - (1 - rate)) < 0.07


def test_dropout_same_seed_same_mask(backend, float64):
    x = backend.asarray(np.ones((20, 20)))
    a = _np(backend, Dropout(0.3, seed=7)(x, training=True))
    b = _np(backend, Dropout(0.3, seed=7)(x, training=True))
    c = _np(backend, Dropout(0.3, seed=8)(x, training=True))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dropout_new_mask_each_call(backend, float64):
    layer = Dropout(0.5, seed=1)
    x = backend.asarray(np.ones((10, 10)))
    a = _np(backend, layer(x, training=True))
    b = _np(backend, layer(x, training=True))
    assert not np.array_equal(a, b)


def test_dropout_expectation_is_identity(backend, float64):
    rate = 0.3
    x = np.full((400, 500), 2.0)
    y = _np(backend, Dropout(rate, seed=2)(backend.asarray(x), training=True))
    # per-entry std of y is 2·sqrt(rate/(1 - rate)) ≈ 1.31; the mean of 2e5 entries has std 3e-3
    assert abs(y.mean() - 2.0) < 0.015
    assert set(np.unique(y)) == {0.0, 2.0 / (1 - rate)}


def test_dropout_keeps_float32(backend):
    x = backend.asarray(np.ones((8, 8), np.float32))
    layer = Dropout(0.25, seed=3)
    y = layer(x, training=True)
    assert y.dtype == np.float32
    assert layer.backward(x).dtype == np.float32


def test_dropout_rate_zero_is_identity_in_training(backend, float64):
    x = backend.asarray(np.random.default_rng(28).normal(size=(3, 3)))
    np.testing.assert_array_equal(_np(backend, Dropout(0.0)(x, training=True)), _np(backend, x))


def test_dropout_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"rate.*1\.0"):
        Dropout(1.0)
    with pytest.raises(ValueError, match=r"rate.*-0\.1"):
        Dropout(-0.1)
    with pytest.raises(ValueError, match="noise_shape"):
        Dropout(0.5, noise_shape=(1, 3))


# ----------------------------------------------------------------------------------------------
# Weights, Input, naming
# ----------------------------------------------------------------------------------------------


def test_get_set_weights_roundtrip_and_errors(backend, float64):
    layer = Dense(3)
    layer(backend.asarray(np.zeros((1, 2))))
    kernel, bias = np.arange(6.0).reshape(2, 3), np.array([1.0, 2.0, 3.0])
    layer.set_weights([kernel, bias])
    got = layer.get_weights()
    assert all(isinstance(w, np.ndarray) for w in got)
    np.testing.assert_array_equal(got[0], kernel)
    np.testing.assert_array_equal(got[1], bias)
    got[0][0, 0] = 99.0  # copies, not views
    assert layer.get_weights()[0][0, 0] == 0.0
    with pytest.raises(ValueError, match="expects 2 weights.*received 1"):
        layer.set_weights([kernel])
    with pytest.raises(ValueError, match=r"'kernel'.*\(2, 3\).*\(3, 2\)"):
        layer.set_weights([kernel.T, bias])


def test_input_layer_shape():
    inp = Input((28, 28))
    assert inp.shape == (28, 28)
    assert inp.output_shape == (None, 28, 28)
    x = np.ones((2, 28, 28))
    assert inp.forward(x) is x
    with pytest.raises(ValueError, match="shape"):
        Input()


def test_unique_layer_names():
    a, b = Dense(1), Dense(1)
    assert a.name != b.name
    assert Dense(1, name="head").name == "head"
    assert Dense(1).name.startswith("dense_")
    assert Flatten().name.startswith("flatten")


def test_auto_names_of_acronym_classes():
    from nnlite.layers import Layer

    class LSTM(Layer):
        pass

    assert re.fullmatch(r"(relu|re_lu)(_\d+)?", ReLU().name)
    assert re.fullmatch(r"lstm(_\d+)?", LSTM().name)


def test_relative_error_is_sensitive():
    """The checker itself can fail: a wrong gradient gives a large error."""
    a = np.array([1.0, 2.0, 3.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, a * 1.01) > 1e-3
    assert relative_error(a, -a) == pytest.approx(1.0)
