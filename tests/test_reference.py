"""nnlite against TensorFlow/Keras reference fixtures (tests/reference/, see make_reference.py).

Every fixture case is replayed with nnlite in the same dtype and compared quantity by quantity
(forward values, gradients, every optimizer step, every training step's loss and accuracy, the
weights at each snapshot, the History of a fit run, EarlyStopping's decisions, the LSTM's outputs
and gradients and its training steps). Shapes and
dtypes must be equal; values must agree within (see :func:`deviation`)

    float64  1e-9   elementwise, relative with a floor:
                    max over elements of |nnlite − keras| / max(|keras|, 1e-3 · max|keras|)
    float32  1e-5   norm-wise: ‖nnlite − keras‖₂ / ‖keras‖₂ (per array, per step)

The floor in float64 makes an element that is tiny compared with the largest of its array count
absolutely (relative to the array's scale): a weight that passes near zero, or a gradient entry
that is the cancellation p − 1 of a saturated softmax, is right in both libraries only to a few
ulps of the array's scale (FINDINGS §0). In float32 the same floored measure reaches 1e-4: a
float32 sum that cancels (dx of a saturated tanh, a weight near zero after 50 Adam steps whose
normalised update amplifies the gradient's rounding) differs by a few float32 ulps of the array's
scale, i.e. ~1e-4 of a 1e-3 floor. Norm-wise, float32 deviations are ≤ 6e-7; a single element off
by more than ~1e-5 · √size of the array's RMS still fails. Integer quantities (iterations,
epochs, EarlyStopping counters), accuracies and History keys must be equal.

Bitwise equality is not reachable: TensorFlow's exp/log/tanh kernels differ from NumPy's by an ulp
in a fraction of elements, and its matmuls sum in another order (FINDINGS §0). Measured worst
deviations are 2e-13 in float64 and 6e-7 in float32 (an LSTM's recurrent-kernel gradient; the
optimizers are bitwise equal);
``python tests/test_reference.py [backend]`` prints them per group.

Regenerate the fixtures with ``python tests/reference/make_reference.py`` (needs tensorflow-cpu).
``tests/test_reference_live.py`` runs the same replays against live Keras on randomized cases.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import nnlite
from nnlite import config
from nnlite.backend import get_backend

REFERENCE = Path(__file__).resolve().parent / "reference"
TOLERANCE = {"float64": 1e-9, "float32": 1e-5}
FLOOR = 1e-3


def _load_make_reference():
    """Import tests/reference/make_reference.py (NumPy only; it imports TF in its workers)."""
    name = "nnlite_make_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REFERENCE / "make_reference.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


mr = _load_make_reference()


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def deviation(actual, expected, dtype: str = "float64") -> float:
    """The deviation the tolerance of ``dtype`` applies to (0.0 when equal).

    float64: the largest ``|a − e| / max(|e|, FLOOR · max|e|)`` over the elements.
    float32: ``‖a − e‖₂ / ‖e‖₂`` (absolute ``‖a − e‖₂`` when ``e`` is all zeros).
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    diff = np.abs(a - e)
    if not diff.size or not diff.max() > 0:
        return 0.0 if np.array_equal(a, e) else float("inf")
    if dtype == "float32":
        norm = np.linalg.norm(e.ravel())
        return float(np.linalg.norm(diff.ravel()) / (norm if norm > 0 else 1.0))
    scale = np.maximum(np.abs(e), FLOOR * np.abs(e).max())
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.max(np.where(diff == 0, 0.0, diff / scale)))


class Comparison:
    """Collects the comparisons of one case; ``assert_ok`` fails listing every offender."""

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.tolerance = TOLERANCE[dtype]
        self.rows: list[tuple[str, float, str]] = []

    def values(self, what: str, actual, expected, dtype=None) -> float:
        """Compare shape, dtype (``expected``'s unless given) and values."""
        actual = np.asarray(actual)
        expected = np.asarray(expected)
        problem = ""
        want = np.dtype(dtype) if dtype is not None else expected.dtype
        if actual.shape != expected.shape:
            problem = f"shape {actual.shape} != {expected.shape}"
        elif actual.dtype != want:
            problem = f"dtype {actual.dtype} != {want}"
        dev = (deviation(actual, expected, self.dtype) if actual.shape == expected.shape
               else float("inf"))
        if not problem and not dev <= self.tolerance:
            problem = f"deviation {dev:.3g} > {self.tolerance:g}"
        self.rows.append((what, dev, problem))
        return dev

    def equal(self, what: str, actual, expected) -> None:
        """Exact equality (integers, counters, accuracies, decisions)."""
        ok = np.array_equal(np.asarray(actual), np.asarray(expected))
        self.rows.append((what, 0.0 if ok else float("inf"),
                          "" if ok else f"{actual!r} != {expected!r}"))

    @property
    def worst(self) -> tuple[str, float]:
        what, dev, _ = max(self.rows, key=lambda row: row[1])
        return what, dev

    def assert_ok(self) -> None:
        bad = [f"{what}: {problem}" for what, _, problem in self.rows if problem]
        assert not bad, f"{len(bad)} of {len(self.rows)} comparisons failed:\n  " + "\n  ".join(
            bad[:20])


@contextmanager
def floatx(dtype: str):
    """nnlite's floatx for the block (set before any nnlite object is created)."""
    previous = config.floatx()
    config.set_floatx(dtype)
    try:
        yield np.dtype(dtype).type
    finally:
        config.set_floatx(previous)


# ----------------------------------------------------------------------------------------------
# Replaying each group with nnlite
# ----------------------------------------------------------------------------------------------


# Arrays go to the current backend (NumPy, Numba or CuPy) and come back with ``host``.


def _device(array):
    return get_backend().asarray(np.array(array))


def host(array):
    return np.asarray(get_backend().to_numpy(array))


def replay_dense(case, dtype, directory, cmp: Comparison) -> None:
    spec = case["spec"]
    layer = nnlite.layers.Dense(spec["units"], activation=spec["activation"])
    layer.build((None, spec["d_in"]))
    layer.set_weights([case["kernel"], case["bias"]])
    y = layer.forward(_device(case["x"]))
    cmp.values("y", host(y), case["y"])
    dx = layer.backward(_device(case["dy"]))     # loss = sum(dy * y), so dL/dy = dy
    cmp.values("dx", host(dx), case["dx"])
    cmp.values("dkernel", host(layer.grads["kernel"]), case["dkernel"])
    cmp.values("dbias", host(layer.grads["bias"]), case["dbias"])


def replay_losses(case, dtype, directory, cmp: Comparison) -> None:
    spec = case["spec"]
    loss = getattr(nnlite.losses, spec["class"])(**spec["kwargs"])
    y_true, y_pred = _device(case["y_true"]), _device(case["y_pred"])
    value, grad = loss.value_and_grad(y_true, y_pred)
    cmp.values("value", host(value), case["value"])
    cmp.values("grad", host(grad), case["grad"])
    cmp.equal("__call__ == value_and_grad", host(loss(y_true, y_pred)), host(value))


#: Keras evaluates learning-rate schedules in float32 with TensorFlow's pow and cos, which are
#: not correctly rounded (TF's float32 pow matches a correctly rounded one for ~74% of
#: arguments, NumPy's for ~79%; the two agree on ~68%), and 1 + cos(πt) cancels near the end
#: of a cosine decay: a schedule's rate is compared within 4 float32 ulps of the schedule's
#: largest rate, and the trajectory is replayed on Keras's own rates, so it stays exact.
SCHEDULE_ULPS = 4 * float(np.finfo(np.float32).eps)


def replay_optimizers(case, dtype, directory, cmp: Comparison) -> None:
    spec = case["spec"]
    optimizer = mr.make_optimizer(nnlite, spec)
    if "schedule" in spec:
        rates = case["learning_rate"]
        scale = float(np.abs(rates).max())
        for step, keras_rate in enumerate(rates):
            optimizer.iterations = step
            rate = optimizer.current_learning_rate()
            ok = abs(rate - keras_rate) <= SCHEDULE_ULPS * scale
            cmp.rows.append((f"step {step + 1} learning rate", 0.0 if ok else float("inf"),
                             "" if ok else f"{rate!r} != {float(keras_rate)!r} (4 float32 "
                             f"ulps of {scale:g})"))
        optimizer = mr.make_optimizer(nnlite, {**spec, "schedule": None})
        optimizer.learning_rate = lambda step: float(rates[step])
    n_vars = len(spec["shapes"])
    params = [_device(case[f"initial/{i}"]) for i in range(n_vars)]
    for step in range(spec["steps"]):
        grads = [_device(case[f"grads/{i}"][step]) for i in range(n_vars)]
        optimizer.apply_gradients(zip(grads, params))
        for i, param in enumerate(params):
            cmp.values(f"step {step + 1} var {i}", host(param), case[f"trajectory/{i}"][step])
    cmp.equal("iterations", optimizer.iterations, int(case["iterations"]))


def _model(spec, directory, dtype):
    layers = [nnlite.Input((784,))]
    layers += [nnlite.layers.Dense(u, activation=a)
               for u, a in zip(spec["units"], spec["activations"])]
    model = nnlite.Sequential(layers)
    optimizer = mr.make_optimizer(nnlite, spec["optimizer"])
    loss = getattr(nnlite.losses, spec["loss"]["class"])(**spec["loss"]["kwargs"])
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    shared = mr.load_shared(str(directory))
    model.set_weights([shared[f"init/{spec['init']}/{i}"].astype(dtype)
                       for i in range(2 * len(spec["units"]))])
    return model


def replay_mlp(case, dtype, directory, cmp: Comparison) -> None:
    spec = case["spec"]
    model = _model(spec, directory, dtype)
    shared = mr.load_shared(str(directory))
    bs = spec["batch_size"]
    x, labels = mr.mnist_batch(shared[f"idx/{spec['batches']}"][:spec["steps"] * bs], dtype)
    y = mr.targets(labels, spec["target"], dtype)
    losses, accuracies = [], []
    for step in range(spec["steps"]):
        logs = model.train_on_batch(x[step * bs:(step + 1) * bs], y[step * bs:(step + 1) * bs],
                                    return_dict=True)
        losses.append(logs["loss"])
        accuracies.append(logs["accuracy"])
        cmp.values(f"step {step + 1} loss", np.asarray(logs["loss"], dtype),
                   case["loss"][step])
        cmp.equal(f"step {step + 1} accuracy", np.asarray(logs["accuracy"], dtype),
                  case["accuracy"][step])
        if step + 1 in spec["snapshots"]:
            for i, w in enumerate(model.get_weights()):
                cmp.values(f"step {step + 1} weight {i}", w, case[f"weights_{step + 1}/{i}"])
    cmp.equal("iterations", model.optimizer.iterations, spec["steps"])


def replay_fit(case, dtype, directory, cmp: Comparison) -> None:
    spec = case["spec"]
    model = _model(spec, directory, dtype)
    shared = mr.load_shared(str(directory))
    x, labels = mr.mnist_batch(shared[f"idx/{spec['batches']}"][:spec["n_train"]], dtype)
    xv, labels_v = mr.mnist_batch(shared[f"val/{spec['batches']}"], dtype, test=True)
    y = mr.targets(labels, spec["target"], dtype)
    yv = mr.targets(labels_v, spec["target"], dtype)
    history = model.fit(x, y, batch_size=spec["batch_size"], epochs=spec["epochs"],
                        shuffle=False, verbose=0, validation_data=(xv, yv),
                        callbacks=mr.make_callbacks(nnlite, spec.get("callbacks", [])))
    keras_keys = sorted(k[len("history/"):] for k in case if k.startswith("history/"))
    cmp.equal("History keys", sorted(history.history), keras_keys)
    for key in keras_keys:
        actual = np.array(history.history.get(key, []), dtype=np.float64)
        if "accuracy" in key:
            cmp.equal(f"history {key}", actual, case[f"history/{key}"])
        else:
            cmp.values(f"history {key}", actual, case[f"history/{key}"])
    for i, w in enumerate(model.get_weights()):
        cmp.values(f"final weight {i}", w, case[f"weights/{i}"])
    cmp.equal("iterations", model.optimizer.iterations, int(case["iterations"]))
    evaluated = model.evaluate(xv, yv, batch_size=spec["batch_size"], verbose=0,
                               return_dict=True)
    cmp.values("evaluate loss", np.float64(evaluated["loss"]), case["evaluate/loss"])
    cmp.equal("evaluate accuracy", np.float64(evaluated["accuracy"]), case["evaluate/accuracy"])


class _Model:
    """Just what EarlyStopping touches."""

    stop_training = False

    def get_weights(self):
        return []

    def set_weights(self, weights):
        pass


def replay_metrics(case, dtype, directory, cmp: Comparison) -> None:
    spec = case["spec"]
    if "y_pred" in case:       # accuracy: first maximum wins; -0.0 ranks below +0.0
        y_pred, labels = case["y_pred"], case["labels"]
        onehot = np.eye(y_pred.shape[1], dtype=dtype)[labels]
        cmp.equal("sparse_categorical_accuracy",
                  nnlite.metrics.sparse_categorical_accuracy(labels, y_pred), case["sparse"])
        cmp.equal("categorical_accuracy",
                  nnlite.metrics.categorical_accuracy(onehot, y_pred), case["categorical"])
        accuracy = nnlite.metrics.get("accuracy")
        cmp.equal("'accuracy' (labels)", accuracy.values(labels, y_pred), case["sparse"])
        cmp.equal("'accuracy' (one-hot)", accuracy.values(onehot, y_pred), case["categorical"])
        return
    model = _Model()
    callback = nnlite.callbacks.EarlyStopping(**spec["kwargs"])
    callback.set_model(model)
    callback.on_train_begin()
    epochs_run = 0
    for epoch, value in enumerate(spec["values"]):
        callback.on_epoch_end(epoch, {spec["monitor"]: value})
        epochs_run += 1
        if model.stop_training:
            break
    for key, actual in (("epochs_run", epochs_run), ("stopped_epoch", callback.stopped_epoch),
                        ("best", callback.best), ("best_epoch", callback.best_epoch),
                        ("wait", callback.wait)):
        cmp.equal(key, np.asarray(actual, dtype=case[key].dtype), case[key])


def replay_lstm(case, dtype, directory, cmp: Comparison) -> None:
    spec = case["spec"]
    if spec["kind"] == "layer":
        keys = ["kernel", "recurrent_kernel", "bias"][:3 if spec["use_bias"] else 2]
        layer = nnlite.layers.LSTM(spec["units"], activation=spec["activation"],
                                   use_bias=spec["use_bias"],
                                   return_sequences=spec["return_sequences"])
        layer.build((None, spec["t"], spec["d"]))
        layer.set_weights([case[key] for key in keys])
        y = layer.forward(_device(case["x"]))
        cmp.values("y", host(y), case["y"])
        dx = layer.backward(_device(case["dy"]))     # loss = sum(dy * y), so dL/dy = dy
        cmp.values("dx", host(dx), case["dx"])
        for key in keys:
            cmp.values(f"d{key}", host(layer.grads[key]), case[f"d{key}"])
        cmp.equal("no bias stored iff use_bias=False", "bias" in case, spec["use_bias"])
        return
    model = nnlite.Sequential([nnlite.Input((spec["t"], spec["d"])),
                               nnlite.layers.LSTM(spec["units"]),
                               nnlite.layers.Dense(spec["classes"], activation="softmax")])
    optimizer = mr.make_optimizer(nnlite, spec["optimizer"])
    model.compile(optimizer=optimizer, loss=nnlite.losses.SparseCategoricalCrossentropy())
    n_weights = len(model.get_weights())
    model.set_weights([case[f"initial/{i}"] for i in range(n_weights)])
    n = spec["n"]
    for step in range(spec["steps"]):
        logs = model.train_on_batch(case["x"][step * n:(step + 1) * n],
                                    case["labels"][step * n:(step + 1) * n], return_dict=True)
        cmp.values(f"step {step + 1} loss", np.asarray(logs["loss"], dtype), case["loss"][step])
    for i, w in enumerate(model.get_weights()):
        cmp.values(f"final weight {i}", w, case[f"weights/{i}"])
    cmp.equal("number of weights", n_weights, sum(k.startswith("weights/") for k in case))
    cmp.equal("iterations", model.optimizer.iterations, int(case["iterations"]))


REPLAY = {"dense": replay_dense, "losses": replay_losses, "optimizers": replay_optimizers,
          "mlp": replay_mlp, "fit": replay_fit, "metrics": replay_metrics, "lstm": replay_lstm}


def replay_case(directory, dtype: str, group: str, name: str) -> Comparison:
    """Replay one case of ``directory`` with nnlite in ``dtype``; returns the comparisons."""
    case = mr.load_group(str(directory), dtype, group)[name]
    cmp = Comparison(dtype)
    with floatx(dtype) as dt:
        REPLAY[group](case, dt, directory, cmp)
    return cmp


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def _manifest() -> dict:
    path = REFERENCE / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"cases": [], "files": {}}


MANIFEST = _manifest()


def test_manifest_lists_every_case_in_both_dtypes():
    assert MANIFEST["cases"], "tests/reference/manifest.json is missing: run make_reference.py"
    spec = mr.make_spec(None)
    listed = {(c["dtype"], c["group"], c["name"]) for c in MANIFEST["cases"]}
    expected = {(dtype, group, name) for dtype in mr.DTYPES for group in mr.GROUPS
                for name in mr.case_names(spec, group)}
    assert listed == expected
    assert MANIFEST["total_bytes"] < 5_000_000
    for key in ("tensorflow", "keras", "date", "command"):
        assert MANIFEST[key]


@pytest.mark.parametrize("path", sorted(MANIFEST["files"]))
def test_fixture_file_is_intact(path):
    data = (REFERENCE / path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == MANIFEST["files"][path]["sha256"]


@pytest.mark.parametrize(
    "case", MANIFEST["cases"], ids=[f"{c['dtype']}-{c['group']}-{c['name']}"
                                    for c in MANIFEST["cases"]])
def test_matches_keras(backend, case):
    # One body for every backend (conftest's `backend` fixture: NumPy, Numba, CuPy when present).
    # The manifest's shapes and dtypes are those of the stored arrays: check they are the
    # dtype under test (integers aside), then replay and compare every quantity.
    for key, (_, dtype) in case["arrays"].items():
        if np.dtype(dtype).kind == "f" and not key.startswith(
                ("history/", "evaluate/", "best", "learning_rate")):
            assert dtype == case["dtype"], f"{key} stored as {dtype}"
    replay_case(REFERENCE, case["dtype"], case["group"], case["name"]).assert_ok()


# ----------------------------------------------------------------------------------------------
# `python tests/test_reference.py [backend]`: the worst deviation per group and dtype
# ----------------------------------------------------------------------------------------------


def report(directory=REFERENCE, cases=None) -> dict:
    """``{(group, dtype): (worst deviation, "case: quantity")}`` over ``cases``."""
    cases = MANIFEST["cases"] if cases is None else cases
    worst: dict = {}
    for case in cases:
        cmp = replay_case(directory, case["dtype"], case["group"], case["name"])
        what, dev = cmp.worst
        key = (case["group"], case["dtype"])
        if key not in worst or dev > worst[key][0]:
            worst[key] = (dev, f"{case['name']}: {what}")
    return worst


if __name__ == "__main__":
    if len(sys.argv) > 1:
        nnlite.set_backend(sys.argv[1])          # e.g. `python tests/test_reference.py numba`
    table = report()
    print(f"{'group':12s} {'dtype':8s} {'worst deviation':>16s}  where")
    for (group, dtype), (dev, where) in sorted(table.items()):
        print(f"{group:12s} {dtype:8s} {dev:16.2e}  {where}")
