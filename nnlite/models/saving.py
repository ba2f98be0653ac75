"""Whole-model saving: ``model.save(path)`` and ``load_model(path)``, as Keras's ``.keras`` files.

A saved model is a zip archive laid out like Keras 3's ``.keras`` format:

    metadata.json        {"format": "nnlite-model", "format_version": 1, "nnlite_version": ...,
                          "floatx": ...}
    config.json          {"class_name": "Sequential", "config": {"name", "input_shape",
                          "layers": [{"class_name", "config"}, ...]},
                          "compile_config": {"optimizer", "loss", "metrics"} or null}
    model.weights.npz    the weights, as ``save_weights`` writes them
    optimizer.npz        the optimizer's step count and state (moments), in weight order

The architecture and compile settings are each object's ``get_config()``, rebuilt with
``cls(**config)``, so a loaded model predicts the same numbers and, compiled, goes on training
exactly where the saved one stopped (same learning rate, step count and moments). The weights
are NumPy ``.npz`` archives, not HDF5: real Keras cannot read these files, nor nnlite Keras's.
The archive is written to a temporary file and renamed, so a crash leaves no half-written model.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile

import numpy as np

from nnlite import config as config_module
from nnlite import layers as layers_module
from nnlite import losses as losses_module
from nnlite import metrics as metrics_module
from nnlite import optimizers as optimizers_module
from nnlite._files import atomic_write
from nnlite.backend import get_backend
from nnlite.optimizers import schedules

FORMAT = "nnlite-model"
FORMAT_VERSION = 1
# Metrics rebuilt from their config alone (a MeanMetricWrapper's function is not saved).
_SAVABLE_METRICS = {"Accuracy", "SparseCategoricalAccuracy", "CategoricalAccuracy",
                    "BinaryAccuracy"}


def save_model(model, filepath, overwrite: bool = True) -> None:
    """Write ``model`` (architecture, weights, compile settings, optimizer state) to ``filepath``.

    Args:
        model: a built ``Sequential``.
        filepath: path of the archive (Keras's convention is a ``.keras`` name).
        overwrite: when False, an existing file is an error.

    Raises:
        ValueError: when the model is not built, or a layer, loss or metric has no config.
        FileExistsError: when ``overwrite`` is False and ``filepath`` exists.
    """
    filepath = os.fspath(filepath)
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"{model.name}.save: {filepath!r} exists")
    if not model.built:
        raise ValueError(f"{model.name}.save: the model is not built; fit it, call build(), "
                         "or give it an Input first")
    config = {
        "class_name": type(model).__name__,
        "config": {"name": model.name, "input_shape": list(model.input_shape[1:]),
                   "layers": [_serialize(layer, "layer") for layer in model.layers]},
        "compile_config": _compile_config(model) if model.compiled else None,
    }
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "nnlite_version": _version(), "floatx": config_module.floatx()}
    files = {
        "metadata.json": json.dumps(metadata, indent=2).encode(),
        "config.json": json.dumps(config, indent=2).encode(),
        "model.weights.npz": _npz(model._weights_arrays()),
    }
    if model.compiled:
        files["optimizer.npz"] = _npz(_optimizer_arrays(model))
    with (atomic_write(filepath, "wb", suffix=".keras.tmp") as f,
          zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive):
        for name, data in files.items():
            archive.writestr(name, data)


def load_model(filepath, compile: bool = True):  # noqa: A002 - Keras's argument name
    """Rebuild a model written by ``model.save`` / :func:`save_model`.

    Args:
        filepath: path of the archive.
        compile: compile the model as it was saved (optimizer with its state, loss, metrics);
            when False, or when it was saved uncompiled, it is returned uncompiled.

    Returns:
        The ``Sequential``, built, with the saved weights.

    Raises:
        ValueError: when the file is not an nnlite model archive (a Keras ``.keras`` file
            included), naming the file and what was found.
    """
    from nnlite.models.sequential import Sequential

    filepath = os.fspath(filepath)
    try:
        archive = zipfile.ZipFile(filepath)
    except zipfile.BadZipFile:
        raise ValueError(f"load_model: {filepath!r} is not an nnlite model archive (not a zip "
                         "file); weights written by save_weights load with load_weights"
                         ) from None
    with archive:
        names = set(archive.namelist())
        metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
        if metadata.get("format") != FORMAT or "model.weights.npz" not in names:
            raise ValueError(
                f"load_model: {filepath!r} is not an nnlite model archive (found "
                f"{sorted(names)}; metadata {metadata}). Files saved by TensorFlow Keras hold "
                "HDF5 weights, which nnlite does not read")
        if metadata.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"load_model: {filepath!r} has format version "
                             f"{metadata['format_version']}; this nnlite reads up to "
                             f"{FORMAT_VERSION}")
        config = json.loads(archive.read("config.json"))
        weights = _load_npz(archive.read("model.weights.npz"))
        optimizer_state = (_load_npz(archive.read("optimizer.npz"))
                           if "optimizer.npz" in names else None)
    spec = config["config"]
    model = Sequential(name=spec["name"])
    model.add(layers_module.Input(tuple(spec["input_shape"])))
    for entry in spec["layers"]:
        model.add(_deserialize(entry, layers_module, "layer"))
    model.set_weights([weights[k] for k in sorted(weights)])
    compile_config = config.get("compile_config")
    if compile and compile_config is not None:
        optimizer = compile_config["optimizer"]
        lr = optimizer["config"].get("learning_rate")
        if isinstance(lr, dict):
            optimizer = {**optimizer, "config": {
                **optimizer["config"],
                "learning_rate": _deserialize(lr, schedules, "learning-rate schedule")}}
        model.compile(
            optimizer=_deserialize(optimizer, optimizers_module, "optimizer"),
            loss=_deserialize(compile_config["loss"], losses_module, "loss"),
            metrics=[_deserialize(m, metrics_module, "metric")
                     for m in compile_config["metrics"]],
        )
        if optimizer_state is not None:
            _restore_optimizer(model, optimizer_state)
    return model


# -- helpers ------------------------------------------------------------------------------------


def _serialize(obj, what: str) -> dict:
    get_config = getattr(obj, "get_config", None)
    if get_config is None:
        raise ValueError(f"save: the {what} {obj!r} has no get_config(), so it cannot be saved")
    return {"class_name": type(obj).__name__, "config": get_config()}


def _deserialize(entry: dict, module, what: str):
    cls = getattr(module, entry["class_name"], None)
    if not isinstance(cls, type):
        raise ValueError(f"load_model: unknown {what} class {entry['class_name']!r}")
    return cls(**entry["config"])


def _compile_config(model) -> dict:
    optimizer = _serialize(model.optimizer, "optimizer")
    lr = model.optimizer.learning_rate
    if isinstance(lr, schedules.LearningRateSchedule):
        optimizer["config"]["learning_rate"] = _serialize(lr, "learning-rate schedule")
    elif callable(lr):
        warnings.warn(
            f"{model.name}.save: the optimizer's learning rate is a schedule (a callable), "
            "which cannot be saved; the archive keeps its current value "
            f"{model.optimizer.current_learning_rate()}", stacklevel=3)
        optimizer["config"]["learning_rate"] = model.optimizer.current_learning_rate()
    for metric in model.metrics:
        if type(metric).__name__ not in _SAVABLE_METRICS:
            raise ValueError(f"{model.name}.save: the metric {metric.name!r} is not one of "
                             f"nnlite.metrics' classes, so it cannot be saved")
    return {"optimizer": optimizer, "loss": _serialize(model.loss, "loss"),
            "metrics": [_serialize(m, "metric") for m in model.metrics]}


def _packing_groups(model) -> list:
    """The weight indices (``model.weights`` order) of each packed parameter vector, in the
    order ``Sequential._pack_parameters`` packs them."""
    index = {id(w): i for i, w in enumerate(model.weights)}
    return [[index[id(param)] for _, _, param in group] for group in model._trainable_groups()]


def _optimizer_arrays(model) -> dict:
    """``iterations`` and each weight's optimizer state as ``{i:03d}/{slot}`` arrays of the
    weight's shape (``i`` in ``model.weights`` order). The state lives on the packed vectors
    once the model has trained (``Sequential._pack_parameters``), else on each weight."""
    optimizer, weights = model.optimizer, model.weights
    arrays = {"iterations": np.array(optimizer.iterations, dtype=np.int64)}
    owners = ([(flat, group) for (_, flat), group in zip(model._packed, _packing_groups(model))]
              if model._packed else [(weights[i], [i]) for i in range(len(weights))])
    for owner, group in owners:
        slot = optimizer._slots.get(id(owner))
        if slot is None or slot[0] is not owner:
            continue
        for name, value in slot[1].items():
            value, start = _host(value).reshape(-1), 0
            for i in group:
                size = int(np.prod(weights[i].shape))
                arrays[f"{i:03d}/{name}"] = value[start:start + size].reshape(weights[i].shape)
                start += size
    return arrays


def _restore_optimizer(model, arrays: dict) -> None:
    """Set the optimizer's step count and state from :func:`_optimizer_arrays`' arrays, on the
    packed vectors the training loops will use (packing them now)."""
    optimizer = model.optimizer
    optimizer.iterations = int(arrays["iterations"])
    model._pack_parameters()
    for (_, flat), group in zip(model._packed, _packing_groups(model)):
        names = {key.split("/", 1)[1] for key in arrays if key.startswith(f"{group[0]:03d}/")}
        if not names:
            continue  # saved before the first step: the state starts from zero, as it was
        state = optimizer._state(flat)
        for name in names:
            state[name][...] = get_backend().asarray(np.concatenate(
                [arrays[f"{i:03d}/{name}"].reshape(-1) for i in group]))


def _host(array) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.asarray(array)


def _npz(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: _host(v) for k, v in arrays.items()})
    return buffer.getvalue()


def _load_npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data)) as archive:
        return {k: archive[k] for k in archive.files}


def _version() -> str:
    from nnlite import __version__

    return __version__
