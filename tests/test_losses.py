"""Tests for nnlite.losses: values, gradients by central differences, stability and errors.

Every loss reduces as Keras's default "sum_over_batch_size" (mean over the batch). Gradients are
compared in float64 with central differences of an independent NumPy reference written here.
"""

import numpy as np
import pytest

from nnlite import config, losses
from nnlite.gradcheck import numerical_gradient, relative_error

TOL = 1e-6
EPS = 1e-7  # Keras's fuzz factor, nnlite.config.epsilon()


def _np(backend, a):
    return np.asarray(backend.to_numpy(a))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ref_ce_logits(z, onehot):
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -(onehot * logp).sum() / z.shape[0]


def _ref_ce_probs(p, onehot):
    q = np.clip(p / p.sum(axis=-1, keepdims=True), EPS, 1 - EPS)
    return -(onehot * np.log(q)).sum() / p.shape[0]


def _problem(seed=0, n=6, c=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n)
    labels[:c] = np.arange(c)  # every class present
    logits = rng.normal(size=(n, c)) * 2
    # probabilities well inside (eps, 1 - eps): at least ~0.02 each
    probs = 0.1 / c + 0.9 * _softmax(rng.normal(size=(n, c)))
    return labels, np.eye(c)[labels], logits, probs


LOSS_CASES = [
    pytest.param(losses.SparseCategoricalCrossentropy, True, True, id="sparse-logits"),
    pytest.param(losses.SparseCategoricalCrossentropy, True, False, id="sparse-probs"),
    pytest.param(losses.CategoricalCrossentropy, False, True, id="onehot-logits"),
    pytest.param(losses.CategoricalCrossentropy, False, False, id="onehot-probs"),
]


# ----------------------------------------------------------------------------------------------
# Cross-entropies: value and gradient
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, sparse, from_logits", LOSS_CASES)
def test_crossentropy_value_and_gradient(backend, cls, sparse, from_logits):
    labels, onehot, logits, probs = _problem(seed=1)
    y_pred = logits if from_logits else probs
    y_true = labels if sparse else onehot
    ref = _ref_ce_logits if from_logits else _ref_ce_probs
    loss = cls(from_logits=from_logits)
    value, grad = loss.value_and_grad(backend.asarray(y_true), backend.asarray(y_pred))
    assert float(value) == pytest.approx(ref(y_pred, onehot), rel=1e-12)
    assert grad.shape == y_pred.shape and grad.dtype == np.float64
    assert float(loss(backend.asarray(y_true), backend.asarray(y_pred))) == pytest.approx(
        float(value), rel=1e-15)
    yp = y_pred.copy()
    fd = numerical_gradient(lambda: ref(yp, onehot), yp)
    assert relative_error(_np(backend, grad), fd) < TOL


@pytest.mark.parametrize("cls, sparse", [(losses.SparseCategoricalCrossentropy, True),
                                         (losses.CategoricalCrossentropy, False)])
def test_crossentropy_of_unnormalised_probabilities(backend, cls, sparse):
    """Rows that do not sum to 1 are renormalised first, as Keras does; the gradient follows."""
    labels, onehot, _, probs = _problem(seed=2)
    scaled = probs * np.linspace(0.5, 1.5, probs.shape[0])[:, None]
    value, grad = cls().value_and_grad(backend.asarray(labels if sparse else onehot),
                                       backend.asarray(scaled))
    assert float(value) == pytest.approx(_ref_ce_probs(probs, onehot), rel=1e-12)
    yp = scaled.copy()
    fd = numerical_gradient(lambda: _ref_ce_probs(yp, onehot), yp)
    assert relative_error(_np(backend, grad), fd) < TOL


@pytest.mark.parametrize("cls, sparse", [(losses.SparseCategoricalCrossentropy, True),
                                         (losses.CategoricalCrossentropy, False)])
def test_value_and_grad_logits_is_fused_softmax_gradient(backend, cls, sparse):
    labels, onehot, logits, _ = _problem(seed=3)
    n = logits.shape[0]
    # from_logits=False: the model hands the pre-softmax logits of its last layer to this path
    value, dz = cls().value_and_grad_logits(backend.asarray(labels if sparse else onehot),
                                            backend.asarray(logits))
    np.testing.assert_allclose(_np(backend, dz), (_softmax(logits) - onehot) / n,
                               rtol=1e-12, atol=1e-17)
    assert float(value) == pytest.approx(_ref_ce_logits(logits, onehot), rel=1e-12)
    # the same value as the probability path on softmax(z)
    probs_value = cls()(backend.asarray(labels if sparse else onehot),
                        backend.asarray(_softmax(logits)))
    assert float(value) == pytest.approx(float(probs_value), rel=1e-9)


def test_soft_targets(backend):
    """CategoricalCrossentropy accepts soft (label-smoothed) targets: −Σ t log p."""
    t = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    z = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    value, dz = losses.CategoricalCrossentropy(from_logits=True).value_and_grad(
        backend.asarray(t), backend.asarray(z))
    assert float(value) == pytest.approx(_ref_ce_logits(z, t), rel=1e-13)
    np.testing.assert_allclose(_np(backend, dz), (_softmax(z) - t) / 2, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Known values
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [2, 3, 10])
def test_uniform_logits_give_log_c(backend, c):
    labels = np.arange(4) % c
    z = np.zeros((4, c))
    for loss, target in [(losses.SparseCategoricalCrossentropy(from_logits=True), labels),
                         (losses.CategoricalCrossentropy(from_logits=True), np.eye(c)[labels]),
                         (losses.SparseCategoricalCrossentropy(), labels)]:
        y_pred = z if loss.from_logits else np.full((4, c), 1.0 / c)
        assert float(loss(backend.asarray(target), backend.asarray(y_pred))) == pytest.approx(
            np.log(c), rel=1e-12)


def test_hand_values(backend):
    # −(log 0.7 + log 0.5) / 2
    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    expected = -(np.log(0.7) + np.log(0.5)) / 2
    got = losses.SparseCategoricalCrossentropy()(backend.asarray(np.array([0, 2])),
                                                  backend.asarray(p))
    assert float(got) == pytest.approx(expected, rel=1e-14)
    got = losses.CategoricalCrossentropy()(backend.asarray(np.array([[1, 0, 0], [0, 0, 1]])),
                                           backend.asarray(p))
    assert float(got) == pytest.approx(expected, rel=1e-14)


def test_probability_zero_is_clipped_to_epsilon(backend):
    p = np.array([[1.0, 0.0, 0.0]])
    eps = config.epsilon()
    # one-hot targets (Keras): renormalise, clip to [ε, 1 − ε], −log c[1] = −log ε
    got = losses.CategoricalCrossentropy()(backend.asarray(np.array([[0.0, 1.0, 0.0]])),
                                           backend.asarray(p))
    assert float(got) == pytest.approx(-np.log(eps), rel=1e-12)
    # integer labels (Keras): clip to [1 − ε, ε, ε], then log-softmax of log c renormalises:
    # −log(ε / (1 − ε + 2ε)) = −log ε + log(1 + ε)
    got = losses.SparseCategoricalCrossentropy()(backend.asarray(np.array([1])),
                                                 backend.asarray(p))
    assert float(got) == pytest.approx(-np.log(eps) + np.log1p(eps), rel=1e-12)


def test_mean_squared_error_value_and_gradient(backend):
    y_true = np.array([[1.0, 2.0], [3.0, 4.0]])
    y_pred = np.array([[1.0, 4.0], [0.0, 5.0]])
    # squared errors 0, 4, 9, 1 -> mean 14 / 4 = 3.5
    mse = losses.MeanSquaredError()
    value, grad = mse.value_and_grad(backend.asarray(y_true), backend.asarray(y_pred))
    assert float(value) == 3.5
    # 2 · (y_pred − y_true) / 4
    np.testing.assert_allclose(_np(backend, grad), [[0.0, 1.0], [-1.5, 0.5]], rtol=1e-15)
    rng = np.random.default_rng(4)
    t, yp = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    _, grad = mse.value_and_grad(backend.asarray(t), backend.asarray(yp))
    assert float(mse(backend.asarray(t), backend.asarray(yp))) == pytest.approx(
        np.mean((yp - t) ** 2), rel=1e-14)
    fd = numerical_gradient(lambda: np.mean((yp - t) ** 2), yp)
    assert relative_error(_np(backend, grad), fd) < TOL


def test_mean_squared_error_integer_targets(backend):
    value = losses.MeanSquaredError()(backend.asarray(np.array([[1], [3]])),
                                      backend.asarray(np.array([[0.0], [1.0]], np.float32)))
    assert float(value) == pytest.approx(2.5)  # (1 + 4) / 2


# ----------------------------------------------------------------------------------------------
# Reduction: batch mean
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, sparse, from_logits", LOSS_CASES)
def test_crossentropy_batch_mean(backend, cls, sparse, from_logits):
    labels, onehot, logits, probs = _problem(seed=5)
    y_pred = logits if from_logits else probs
    y_true = labels if sparse else onehot
    loss = cls(from_logits=from_logits)
    v1, g1 = loss.value_and_grad(backend.asarray(y_true), backend.asarray(y_pred))
    v2, g2 = loss.value_and_grad(backend.asarray(np.concatenate([y_true, y_true])),
                                 backend.asarray(np.concatenate([y_pred, y_pred])))
    assert float(v2) == pytest.approx(float(v1), rel=1e-13)
    # each sample's weight halves when the batch doubles
    np.testing.assert_allclose(_np(backend, g2)[: len(y_pred)], _np(backend, g1) / 2, rtol=1e-12)


def test_mean_squared_error_batch_mean(backend):
    rng = np.random.default_rng(6)
    t, yp = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    mse = losses.MeanSquaredError()
    v1 = mse(backend.asarray(t), backend.asarray(yp))
    v2 = mse(backend.asarray(np.concatenate([t, t])), backend.asarray(np.concatenate([yp, yp])))
    assert float(v2) == pytest.approx(float(v1), rel=1e-14)


@pytest.mark.parametrize("from_logits", [True, False])
def test_categorical_crossentropy_rank3_is_mean_over_positions(from_logits):
    t = np.zeros((2, 3, 4))
    t[..., 0] = 1
    y_pred = np.zeros((2, 3, 4)) if from_logits else np.full((2, 3, 4), 0.25)
    value = losses.CategoricalCrossentropy(from_logits=from_logits)(t, y_pred)
    assert float(value) == pytest.approx(np.log(4))


# ----------------------------------------------------------------------------------------------
# Stability and dtypes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["fused", "sparse_from_logits", "onehot_from_logits"])
def test_extreme_logits_finite(backend, dtype, path):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 1e4]], dtype=dtype)
    labels = np.array([1, 1, 2])
    if path == "fused":
        value, dz = losses.SparseCategoricalCrossentropy().value_and_grad_logits(
            backend.asarray(labels), backend.asarray(z))
    elif path == "sparse_from_logits":
        value, dz = losses.SparseCategoricalCrossentropy(from_logits=True).value_and_grad(
            backend.asarray(labels), backend.asarray(z))
    else:
        value, dz = losses.CategoricalCrossentropy(from_logits=True).value_and_grad(
            backend.asarray(np.eye(3, dtype=dtype)[labels]), backend.asarray(z))
    assert dz.dtype == dtype
    # per-sample −log p: 2e4, 0, 0 -> mean 2e4 / 3
    assert np.isfinite(float(value))
    assert float(value) == pytest.approx(2e4 / 3, rel=1e-6)
    dz = _np(backend, dz)
    assert np.all(np.isfinite(dz))
    np.testing.assert_allclose(dz, [[1 / 3, -1 / 3, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                               atol=1e-7)


@pytest.mark.parametrize("cls, sparse, from_logits", LOSS_CASES)
def test_crossentropy_keeps_float32(backend, cls, sparse, from_logits):
    labels, onehot, logits, probs = _problem(seed=7)
    y_pred = (logits if from_logits else probs).astype(np.float32)
    value, grad = cls(from_logits=from_logits).value_and_grad(
        backend.asarray(labels if sparse else onehot), backend.asarray(y_pred))
    assert grad.dtype == np.float32
    assert value.dtype == np.float32
    ref = (_ref_ce_logits if from_logits else _ref_ce_probs)(y_pred.astype(np.float64), onehot)
    assert float(value) == pytest.approx(ref, rel=1e-5)


def test_probability_path_saturated_inputs_are_finite(backend):
    p = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    value, grad = losses.SparseCategoricalCrossentropy().value_and_grad(
        backend.asarray(np.array([1, 1])), backend.asarray(p))
    assert np.isfinite(float(value)) and np.all(np.isfinite(_np(backend, grad)))


# ----------------------------------------------------------------------------------------------
# Targets: accepted forms and errors
# ----------------------------------------------------------------------------------------------


def test_sparse_labels_accepted_forms(backend):
    _, _, logits, _ = _problem(seed=8)
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    labels = np.array([0, 1, 2, 3, 0, 1])
    ref = float(loss(backend.asarray(labels), backend.asarray(logits)))
    for form in (labels.astype(np.int32), labels.astype(np.uint8), labels.astype(np.float32),
                 labels.reshape(-1, 1)):
        assert float(loss(backend.asarray(form), backend.asarray(logits))) == ref


@pytest.mark.parametrize("labels, shown", [
    (np.array([0, 1, 4]), "4"),
    (np.array([0, 3, 1]), "3"),
    (np.array([-1, 0, 1]), "-1"),
])
@pytest.mark.parametrize("from_logits", [True, False])
def test_sparse_labels_out_of_range(backend, labels, shown, from_logits):
    loss = losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    with pytest.raises(ValueError, match=rf"\[0, 3\).*{shown}"):
        loss(backend.asarray(labels), backend.asarray(np.full((3, 3), 1 / 3)))
    with pytest.raises(ValueError, match=rf"\[0, 3\).*{shown}"):
        loss.value_and_grad_logits(backend.asarray(labels), backend.asarray(np.zeros((3, 3))))


def test_sparse_labels_non_integer_floats_raise(backend):
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match="whole numbers"):
        loss(backend.asarray(np.array([0.0, 1.5, 2.0])), backend.asarray(np.zeros((3, 3))))


def test_sparse_labels_non_integer_error_names_value():
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match="1.5"):
        loss(np.array([0.0, 1.5, 2.0]), np.zeros((3, 3)))


def test_sparse_labels_one_hot_shape_raises(backend):
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match=r"received shape \(3, 3\).*CategoricalCrossentropy"):
        loss(backend.asarray(np.eye(3)), backend.asarray(np.zeros((3, 3))))


def test_sparse_labels_batch_size_mismatch_raises_value_error():
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match=r"\(3,\).*\(4, 3\)|4.*3"):
        loss(np.array([0, 1, 2]), np.zeros((4, 3)))


@pytest.mark.parametrize("from_logits", [True, False])
def test_onehot_wrong_shape_raises(backend, from_logits):
    loss = losses.CategoricalCrossentropy(from_logits=from_logits)
    with pytest.raises(ValueError, match=r"expected targets of shape \(4, 3\).*received \(4, 2\)"):
        loss(backend.asarray(np.zeros((4, 2))), backend.asarray(np.full((4, 3), 1 / 3)))
    with pytest.raises(ValueError, match=r"received \(4,\)"):
        loss.check_target(backend.asarray(np.zeros(4)), backend.asarray(np.zeros((4, 3))))


def test_mse_wrong_shape_raises(backend):
    with pytest.raises(ValueError, match=r"\(4, 3\).*received \(4, 2\)"):
        losses.MeanSquaredError()(backend.asarray(np.zeros((4, 2))),
                                  backend.asarray(np.zeros((4, 3))))


# ----------------------------------------------------------------------------------------------
# losses.get and functional forms
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("identifier, cls", [
    ("sparse_categorical_crossentropy", losses.SparseCategoricalCrossentropy),
    ("categorical_crossentropy", losses.CategoricalCrossentropy),
    ("mean_squared_error", losses.MeanSquaredError),
    ("mse", losses.MeanSquaredError),
    ("SparseCategoricalCrossentropy", losses.SparseCategoricalCrossentropy),
    ("CategoricalCrossentropy", losses.CategoricalCrossentropy),
    ("MeanSquaredError", losses.MeanSquaredError),
    (losses.SparseCategoricalCrossentropy, losses.SparseCategoricalCrossentropy),
    (losses.MeanSquaredError, losses.MeanSquaredError),
    (losses.sparse_categorical_crossentropy, losses.SparseCategoricalCrossentropy),
    (losses.categorical_crossentropy, losses.CategoricalCrossentropy),
    (losses.mean_squared_error, losses.MeanSquaredError),
])
def test_get_resolves(identifier, cls):
    loss = losses.get(identifier)
    assert type(loss) is cls
    if isinstance(loss, losses.SparseCategoricalCrossentropy | losses.CategoricalCrossentropy):
        assert loss.from_logits is False


def test_get_returns_instances_unchanged():
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    assert losses.get(loss) is loss
    assert loss.get_config() == {"name": "sparse_categorical_crossentropy", "from_logits": True}


@pytest.mark.parametrize("bad", ["hinge", "Sparse_categorical_crossentropy", 3, None])
def test_get_unknown_lists_choices(bad):
    with pytest.raises(ValueError) as info:
        losses.get(bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in ("sparse_categorical_crossentropy", "categorical_crossentropy",
                 "mean_squared_error"):
        assert name in message


def test_functional_forms_are_batch_means():
    labels, onehot, logits, probs = _problem(seed=9)
    assert losses.sparse_categorical_crossentropy(labels, probs) == pytest.approx(
        _ref_ce_probs(probs, onehot), rel=1e-12)
    assert losses.sparse_categorical_crossentropy(labels, logits, from_logits=True) == \
        pytest.approx(_ref_ce_logits(logits, onehot), rel=1e-12)
    assert losses.categorical_crossentropy(onehot, logits, from_logits=True) == pytest.approx(
        _ref_ce_logits(logits, onehot), rel=1e-12)
    assert losses.mean_squared_error(onehot, probs) == pytest.approx(
        np.mean((probs - onehot) ** 2), rel=1e-14)


def test_custom_name():
    assert losses.CategoricalCrossentropy(name="ce").name == "ce"
    assert losses.MeanSquaredError(name="l2").get_config() == {"name": "l2"}
