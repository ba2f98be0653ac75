"""Tests for nnlite.metrics (accuracies, confusion matrix) and nnlite.utils.to_categorical.

The per-sample accuracy functions run on each backend's arrays (``backend`` fixture); the
evaluation helpers (``accuracy_score``, ``confusion_matrix``, metric objects) work on host NumPy
arrays, as they do in the training loop.
"""

import numpy as np
import pytest

from nnlite import metrics
from nnlite.utils import to_categorical

# A known 3-class case: 8 samples, 5 correct.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 1, 0, 1, 2, 2, 2, 0])
CM = np.array([
    [2, 1, 0],  # class 0: 3 samples, 2 right, 1 called "1"
    [0, 1, 1],  # class 1: 2 samples, 1 right, 1 called "2"
    [1, 0, 2],  # class 2: 3 samples, 2 right, 1 called "0"
])


def _np(backend, a):
    return np.asarray(backend.to_numpy(a))


def _scores_for(labels, c=3, seed=0):
    """Random scores whose argmax is ``labels`` (a clear winner per row)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0, 0.5, size=(len(labels), c))
    s[np.arange(len(labels)), labels] = 1.0
    return s


# ----------------------------------------------------------------------------------------------
# confusion_matrix and accuracy_score
# ----------------------------------------------------------------------------------------------


def test_confusion_matrix_known_case():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED)
    np.testing.assert_array_equal(cm, CM)
    assert cm.dtype == np.int64
    assert cm.sum() == len(Y_TRUE)
    assert np.trace(cm) == int((Y_TRUE == Y_PRED).sum()) == 5
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(Y_TRUE))  # rows: class counts
    np.testing.assert_array_equal(cm.sum(axis=0), np.bincount(Y_PRED))  # columns: predictions


def test_confusion_matrix_one_hot_and_scores():
    one_hot_true = np.eye(3)[Y_TRUE]
    scores = _scores_for(Y_PRED)
    np.testing.assert_array_equal(metrics.confusion_matrix(one_hot_true, scores), CM)
    np.testing.assert_array_equal(metrics.confusion_matrix(Y_TRUE, scores), CM)
    np.testing.assert_array_equal(metrics.confusion_matrix(one_hot_true, Y_PRED), CM)
    np.testing.assert_array_equal(metrics.confusion_matrix(list(Y_TRUE), list(Y_PRED)), CM)
    np.testing.assert_array_equal(metrics.confusion_matrix(Y_TRUE.reshape(-1, 1), Y_PRED), CM)


def test_confusion_matrix_num_classes():
    cm = metrics.confusion_matrix([0, 1], [1, 1], num_classes=4)
    assert cm.shape == (4, 4)
    assert cm[0, 1] == 1 and cm[1, 1] == 1 and cm.sum() == 2
    # without num_classes the size is 1 + the largest label seen in either argument
    assert metrics.confusion_matrix([0, 0], [0, 2]).shape == (3, 3)


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.confusion_matrix([0, 1, 3], [0, 1, 1], num_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.confusion_matrix([0, 1, -1], [0, 1, 1], num_classes=3)
    with pytest.raises(ValueError, match="3 and 2"):
        metrics.confusion_matrix([0, 1, 2], [0, 1])


def test_argmax_tie_takes_first_index():
    scores = np.array([[0.5, 0.5, 0.0], [0.1, 0.4, 0.4], [0.3, 0.3, 0.3]])
    cm = metrics.confusion_matrix([0, 1, 0], scores, num_classes=3)
    # ties resolve to the first maximum: predictions 0, 1, 0 -> all correct
    assert np.trace(cm) == 3
    assert metrics.accuracy_score([0, 1, 0], scores) == 1.0
    assert metrics.accuracy_score([1, 2, 2], scores) == 0.0


def test_accuracy_score():
    assert metrics.accuracy_score([0, 1, 2, 2], [0, 2, 2, 2]) == 0.75
    assert metrics.accuracy_score(Y_TRUE, Y_PRED) == 5 / 8
    assert metrics.accuracy_score(np.eye(3)[Y_TRUE], _scores_for(Y_PRED)) == 5 / 8
    assert isinstance(metrics.accuracy_score(Y_TRUE, Y_PRED), float)
    assert metrics.accuracy_score([], []) == 0.0
    with pytest.raises(ValueError, match="4 and 3"):
        metrics.accuracy_score([0, 1, 2, 2], [0, 1, 2])


def test_accuracy_score_single_column_scores_are_not_truncated():
    scores = np.array([[0.2], [0.7], [0.9]])
    assert metrics.accuracy_score([0, 1, 1], scores) == 1.0


# ----------------------------------------------------------------------------------------------
# Per-sample accuracy functions (on each backend)
# ----------------------------------------------------------------------------------------------


def test_sparse_categorical_accuracy(backend):
    scores = backend.asarray(_scores_for(Y_PRED).astype(np.float32))
    got = metrics.sparse_categorical_accuracy(backend.asarray(Y_TRUE), scores)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(_np(backend, got), (Y_TRUE == Y_PRED).astype(np.float32))
    got = metrics.sparse_categorical_accuracy(backend.asarray(Y_TRUE.reshape(-1, 1)), scores)
    assert _np(backend, got).mean() == 5 / 8


def test_categorical_accuracy(backend):
    got = metrics.categorical_accuracy(backend.asarray(np.eye(3)[Y_TRUE]),
                                       backend.asarray(_scores_for(Y_PRED)))
    np.testing.assert_array_equal(_np(backend, got), (Y_TRUE == Y_PRED).astype(np.float64))


def test_binary_accuracy(backend):
    y_true = np.array([[1.0], [0.0], [1.0], [0.0]])
    y_pred = np.array([[0.9], [0.4], [0.2], [0.6]])
    got = metrics.binary_accuracy(backend.asarray(y_true), backend.asarray(y_pred))
    np.testing.assert_array_equal(_np(backend, got), [1.0, 1.0, 0.0, 0.0])
    got = metrics.binary_accuracy(backend.asarray(y_true), backend.asarray(y_pred), threshold=0.1)
    np.testing.assert_array_equal(_np(backend, got), [1.0, 0.0, 1.0, 0.0])


def test_accuracy_ties_first_index(backend):
    scores = backend.asarray(np.array([[0.5, 0.5], [0.5, 0.5]]))
    got = metrics.sparse_categorical_accuracy(backend.asarray(np.array([0, 1])), scores)
    np.testing.assert_array_equal(_np(backend, got), [1.0, 0.0])


# ----------------------------------------------------------------------------------------------
# metrics.get and the "accuracy" dispatch
# ----------------------------------------------------------------------------------------------


def test_get_accuracy_dispatches_on_shapes():
    acc = metrics.get("accuracy")
    assert acc.name == "accuracy"
    scores = _scores_for(Y_PRED)
    # integer labels (N,) against (N, C) scores -> sparse categorical
    assert acc(Y_TRUE, scores) == 5 / 8
    # labels (N, 1) against (N, C) -> sparse categorical
    assert acc(Y_TRUE.reshape(-1, 1), scores) == 5 / 8
    # one-hot (N, C) -> categorical
    assert acc(np.eye(3)[Y_TRUE], scores) == 5 / 8
    # a single output column -> binary, thresholded at 0.5
    y_true = np.array([1, 0, 1, 0])
    y_pred = np.array([[0.9], [0.4], [0.2], [0.6]])
    assert acc(y_true, y_pred) == 0.5
    assert acc(y_true.reshape(-1, 1), y_pred) == 0.5


def test_get_accuracy_sparse_labels_equal_to_c_columns_not_mistaken():
    """Labels (N,) with N == C must still be read as labels, not as one-hot rows."""
    labels = np.array([2, 0, 1])
    scores = _scores_for(np.array([2, 0, 0]))
    assert metrics.get("accuracy")(labels, scores) == pytest.approx(2 / 3)


@pytest.mark.parametrize("name, cls", [
    ("accuracy", metrics.Accuracy), ("acc", metrics.Accuracy),
    ("sparse_categorical_accuracy", metrics.SparseCategoricalAccuracy),
    ("categorical_accuracy", metrics.CategoricalAccuracy),
    ("binary_accuracy", metrics.BinaryAccuracy),
])
def test_get_keeps_given_name(name, cls):
    metric = metrics.get(name)
    assert type(metric) is cls
    assert metric.name == name


def test_get_instance_and_unknown():
    metric = metrics.SparseCategoricalAccuracy(name="sca")
    assert metrics.get(metric) is metric
    with pytest.raises(ValueError) as info:
        metrics.get("f1")
    message = str(info.value)
    assert "'f1'" in message
    for name in ("accuracy", "sparse_categorical_accuracy", "binary_accuracy"):
        assert name in message


def test_mean_metric_wrapper():
    metric = metrics.MeanMetricWrapper(lambda t, p: (t == p).astype(float), "eq")
    assert metric([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    assert metric.name == "eq"


# ----------------------------------------------------------------------------------------------
# nnlite.utils.to_categorical
# ----------------------------------------------------------------------------------------------


def test_to_categorical_basic():
    out = to_categorical([0, 2, 1], 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])


def test_to_categorical_infers_classes_and_drops_trailing_axis():
    np.testing.assert_array_equal(to_categorical(np.array([1, 3])), np.eye(4)[[1, 3]])
    assert to_categorical(np.array([[0], [2]]), 3).shape == (2, 3)
    assert to_categorical(np.array([[0, 1], [2, 1]]), 3).shape == (2, 2, 3)
    np.testing.assert_array_equal(to_categorical(np.array([0.0, 2.0]), 3), np.eye(3)[[0, 2]])
    assert to_categorical(np.array([], dtype=int), 3).shape == (0, 3)


def test_to_categorical_round_trip():
    labels = np.random.default_rng(0).integers(0, 10, size=50)
    np.testing.assert_array_equal(to_categorical(labels, 10).argmax(axis=1), labels)
    np.testing.assert_array_equal(to_categorical(labels, 10).sum(axis=1), np.ones(50))


def test_to_categorical_errors():
    with pytest.raises(ValueError, match=r"\[0, 3\).*max 3"):
        to_categorical([0, 3], 3)
    with pytest.raises(ValueError, match=r"min -1"):
        to_categorical([-1, 0], 3)
    with pytest.raises(ValueError, match="integer"):
        to_categorical([0.5, 1.0], 3)
