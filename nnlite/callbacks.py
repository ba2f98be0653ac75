"""Callbacks: hooks into ``fit``, ``evaluate`` and ``predict``, with Keras 3's names and behaviour.

A callback is an object whose ``on_*`` methods the training loop calls at fixed points::

    on_train_begin
        on_epoch_begin(epoch)
            on_train_batch_begin(batch)   -> on_batch_begin (alias, in the base class)
            on_train_batch_end(batch, logs)  -> on_batch_end (alias, in the base class)
            on_test_begin ... on_test_batch_begin/end ... on_test_end   (validation)
        on_epoch_end(epoch, logs)         logs hold the epoch's metrics and the val_ ones
    on_train_end

``fit`` wraps the user's callbacks in a `CallbackList`, which adds a `History` (returned by
``fit``) and, when ``verbose`` is not 0, a `ProgbarLogger` that prints the progress bar.

The model seen by callbacks needs only ``get_weights()``, ``set_weights(weights)`` and a
``stop_training`` attribute; setting ``model.stop_training = True`` ends training after the
current epoch. The learning-rate callbacks also use ``model.optimizer.learning_rate``, and
`ModelCheckpoint` ``model.save(path)`` or ``model.save_weights(path)``.
"""

from __future__ import annotations

import csv
import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from nnlite import config
from nnlite.progbar import Progbar

__all__ = [
    "Callback",
    "CallbackList",
    "CSVLogger",
    "EarlyStopping",
    "History",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ProgbarLogger",
    "ReduceLROnPlateau",
    "TerminateOnNaN",
]

Logs = dict[str, Any]


def _print_line(message: str) -> None:
    """Prints one line to the current ``sys.stdout`` and flushes it."""
    sys.stdout.write(f"{message}\n")
    sys.stdout.flush()


def _pythonify_logs(logs: Logs | None) -> Logs:
    """Returns a flat copy of ``logs`` with numbers turned into Python floats.

    The key order is kept: the loss first, then the metrics in compile order, then their
    ``val_`` twins, as the classic Keras notebooks print them. (Keras 3 sorts the keys
    alphabetically here; nnlite deliberately does not.) Nested dicts are merged into the top
    level; values ``float()`` rejects are kept as they are.
    """
    result: Logs = {}
    for key, value in (logs or {}).items():
        if isinstance(value, dict):
            result.update(_pythonify_logs(value))
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            pass
        result[key] = value
    return result


def _flatten(callbacks: Any) -> list[Callback]:
    """Flattens nested lists/tuples of callbacks into one list."""
    if isinstance(callbacks, (list, tuple)):
        return [cb for item in callbacks for cb in _flatten(item)]
    return [callbacks]


class Callback:
    """Base class for callbacks; every hook is a no-op to override.

    Attributes:
        model: The model being trained, set by `set_model`.
        params: Dict of training parameters (``verbose``, ``epochs``, ``steps``), set by
            `set_params`.
        validation_data: Kept for compatibility with older Keras code; always ``None`` here.

    Example:
        >>> class PrintEpoch(Callback):
        ...     def on_epoch_end(self, epoch, logs=None):
        ...         print(epoch, logs)
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.params: dict[str, Any] | None = None
        self.validation_data: Any = None

    def set_params(self, params: dict[str, Any]) -> None:
        """Stores the training parameters.

        Args:
            params: Dict such as ``{"verbose": 1, "epochs": 10, "steps": 540}``.
        """
        self.params = params

    def set_model(self, model: Any) -> None:
        """Stores the model the callback acts on.

        Args:
            model: The model being trained, evaluated or used for prediction.
        """
        self.model = model

    def on_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Backwards-compatible alias of `on_train_batch_begin`, called by its default body.

        Args:
            batch: Index of the batch within the epoch.
            logs: Currently unused (``None`` or empty).
        """

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Backwards-compatible alias of `on_train_batch_end`, called by its default body.

        Args:
            batch: Index of the batch within the epoch.
            logs: Running means of the epoch's metrics up to this batch.
        """

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Called at the start of every training epoch.

        Args:
            epoch: Zero-based index of the epoch.
            logs: Currently unused (``None`` or empty).
        """

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Called at the end of every training epoch.

        Args:
            epoch: Zero-based index of the epoch.
            logs: The epoch's metrics, plus ``val_``-prefixed ones when validating, e.g.
                ``{"loss": 0.2, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.88}``.
        """

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Called before every training batch; by default calls `on_batch_begin`.

        Args:
            batch: Index of the batch within the epoch.
            logs: Currently unused (``None`` or empty).
        """
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Called after every training batch; by default calls `on_batch_end`.

        Args:
            batch: Index of the batch within the epoch.
            logs: Running means of the epoch's metrics up to this batch.
        """
        self.on_batch_end(batch, logs=logs)

    def on_test_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Called before every batch of ``evaluate`` (and of validation inside ``fit``).

        Args:
            batch: Index of the batch.
            logs: Currently unused (``None`` or empty).
        """

    def on_test_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Called after every batch of ``evaluate`` (and of validation inside ``fit``).

        Args:
            batch: Index of the batch.
            logs: Running means of the metrics up to this batch.
        """

    def on_predict_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Called before every batch of ``predict``.

        Args:
            batch: Index of the batch.
            logs: Currently unused (``None`` or empty).
        """

    def on_predict_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Called after every batch of ``predict``.

        Args:
            batch: Index of the batch.
            logs: May hold the batch's outputs.
        """

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Called once at the start of ``fit``.

        Args:
            logs: Currently unused (``None`` or empty).
        """

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Called once at the end of ``fit``.

        Args:
            logs: The logs of the last epoch.
        """

    def on_test_begin(self, logs: Logs | None = None) -> None:
        """Called at the start of ``evaluate`` (and of validation inside ``fit``).

        Args:
            logs: Currently unused (``None`` or empty).
        """

    def on_test_end(self, logs: Logs | None = None) -> None:
        """Called at the end of ``evaluate`` (and of validation inside ``fit``).

        Args:
            logs: The final evaluation metrics.
        """

    def on_predict_begin(self, logs: Logs | None = None) -> None:
        """Called at the start of ``predict``.

        Args:
            logs: Currently unused (``None`` or empty).
        """

    def on_predict_end(self, logs: Logs | None = None) -> None:
        """Called at the end of ``predict``.

        Args:
            logs: Currently unused (``None`` or empty).
        """


class History(Callback):
    """Records the logs of every epoch; ``fit`` returns this object.

    Attributes:
        history: Dict mapping each metric name to its list of per-epoch values, e.g.
            ``{"loss": [0.5, 0.3], "val_loss": [0.6, 0.4]}``. It is kept (and appended to) if the
            same object is used for several ``fit`` calls.
        epoch: Indices of the epochs recorded during the latest ``fit`` call.

    Example:
        >>> history = model.fit(x, y, epochs=3)  # doctest: +SKIP
        >>> history.history["loss"]  # doctest: +SKIP
        [0.52, 0.31, 0.24]
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[Any]] = {}
        self.epoch: list[int] = []

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Starts a new list of epoch indices (the ``history`` dict is kept).

        Args:
            logs: Unused.
        """
        self.epoch = []

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Appends the epoch's logs and sets ``model.history`` to this object.

        Args:
            epoch: Zero-based index of the epoch.
            logs: The epoch's metrics.
        """
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
        if self.model is not None:
            self.model.history = self


class ProgbarLogger(Callback):
    """Prints the progress bar (`nnlite.progbar.Progbar`) during ``fit``/``evaluate``/``predict``.

    Reads ``verbose`` (``"auto"`` means 1), ``epochs`` and ``steps`` from the params. During
    ``fit`` it prints ``Epoch i/N`` before each epoch when ``epochs > 1``, then one bar per epoch
    that ends with the epoch logs (``val_`` metrics included); validation runs are not shown.
    ``evaluate`` and ``predict`` print one bar each. When ``steps`` is unknown it is learnt from
    the first epoch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.progbar: Progbar | None = None
        self.target: int | None = None
        self.verbose: int = 1
        self.epochs: int = 1
        self._called_in_fit = False

    def set_params(self, params: dict[str, Any]) -> None:
        """Reads ``verbose``, ``epochs`` and ``steps``.

        Args:
            params: Training parameters.
        """
        super().set_params(params)
        verbose = params.get("verbose", 1)
        self.verbose = 1 if verbose == "auto" else verbose
        self.epochs = params.get("epochs", 1)
        self.target = params.get("steps")

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Marks that we are inside ``fit``, where validation runs silently.

        Args:
            logs: Unused.
        """
        self._called_in_fit = True

    def on_test_begin(self, logs: Logs | None = None) -> None:
        """Starts a bar for ``evaluate`` (not for validation inside ``fit``).

        Args:
            logs: Unused.
        """
        if not self._called_in_fit:
            self._reset_progbar()
            self._maybe_init_progbar()

    def on_predict_begin(self, logs: Logs | None = None) -> None:
        """Starts a bar for ``predict``.

        Args:
            logs: Unused.
        """
        self._reset_progbar()
        self._maybe_init_progbar()

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Starts the epoch's bar and prints ``Epoch i/N`` when there are several epochs.

        Args:
            epoch: Zero-based index of the epoch.
            logs: Unused.
        """
        self._reset_progbar()
        self._maybe_init_progbar()
        if self.verbose and self.epochs > 1:
            _print_line(f"Epoch {epoch + 1}/{self.epochs}")

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Redraws the bar with the running means.

        Args:
            batch: Index of the batch within the epoch.
            logs: Running means of the epoch's metrics.
        """
        self._update_progbar(batch, logs)

    def on_test_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Redraws the ``evaluate`` bar.

        Args:
            batch: Index of the batch.
            logs: Running means of the metrics.
        """
        if not self._called_in_fit:
            self._update_progbar(batch, logs)

    def on_predict_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Redraws the ``predict`` bar (outputs are not shown).

        Args:
            batch: Index of the batch.
            logs: Ignored.
        """
        self._update_progbar(batch, None)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Finishes the epoch's bar with the epoch logs.

        Args:
            epoch: Zero-based index of the epoch.
            logs: The epoch's metrics, ``val_`` ones included.
        """
        self._finalize_progbar(logs)

    def on_test_end(self, logs: Logs | None = None) -> None:
        """Finishes the ``evaluate`` bar.

        Args:
            logs: The final evaluation metrics.
        """
        if not self._called_in_fit:
            self._finalize_progbar(logs)

    def on_predict_end(self, logs: Logs | None = None) -> None:
        """Finishes the ``predict`` bar.

        Args:
            logs: Usually ``None``.
        """
        self._finalize_progbar(logs)

    def _reset_progbar(self) -> None:
        self.seen = 0
        self.progbar = None

    def _maybe_init_progbar(self) -> None:
        if self.progbar is None:
            self.progbar = Progbar(target=self.target, verbose=self.verbose, unit_name="step")

    def _update_progbar(self, batch: int, logs: Logs | None) -> None:
        self._maybe_init_progbar()
        self.seen = batch + 1  # batches are zero-based, the bar counts steps done
        if self.verbose == 1:
            self.progbar.update(self.seen, list((logs or {}).items()), finalize=False)

    def _finalize_progbar(self, logs: Logs | None) -> None:
        self._maybe_init_progbar()
        if self.target is None:
            self.target = self.seen
            self.progbar.target = self.target
        self.progbar.update(self.target, list((logs or {}).items()), finalize=True)


class CallbackList(Callback):
    """Calls a list of callbacks together; this is what ``fit``/``evaluate``/``predict`` use.

    Every hook is forwarded to each callback in order. Before forwarding, ``logs`` is copied,
    flattened and its numbers turned into Python floats, keeping the key order (Keras 3 sorts,
    hence its alphabetical metric order in the progress bar and in ``History``).

    Args:
        callbacks: Callbacks (a list, possibly nested) or ``None``.
        add_history: Append a `History` if ``callbacks`` holds none.
        add_progbar: Append a `ProgbarLogger` if ``callbacks`` holds none.
        model: The model; passed to every callback with `set_model`, and given
            ``model.history`` when a `History` is present.
        **params: Training parameters (``verbose``, ``epochs``, ``steps``) passed to every
            callback with `set_params`.

    Attributes:
        callbacks: The callbacks, defaults included.
        history: The `History` callback, or ``None``.

    Example:
        >>> cbs = CallbackList([], add_history=True, model=None, verbose=0, epochs=1, steps=3)
        >>> cbs.on_train_begin()
        >>> cbs.on_epoch_end(0, {"loss": 0.5})
        >>> cbs.history.history
        {'loss': [0.5]}
    """

    def __init__(
        self,
        callbacks: Iterable[Callback] | Callback | None = None,
        add_history: bool = False,
        add_progbar: bool = False,
        model: Any = None,
        **params: Any,
    ) -> None:
        super().__init__()
        if callbacks is None:
            self.callbacks: list[Callback] = []
        elif isinstance(callbacks, Callback):
            self.callbacks = [callbacks]
        else:
            self.callbacks = _flatten(list(callbacks))
        self._history: History | None = None
        self._progbar: ProgbarLogger | None = None
        self._add_default_callbacks(add_history, add_progbar)
        self.set_model(model)
        self.set_params(params)

    @property
    def history(self) -> History | None:
        """The `History` callback in the list, or ``None``."""
        return self._history

    @property
    def runs_per_batch(self) -> bool:
        """Whether any callback other than nnlite's progress bar acts on training batches:
        overrides a train-batch hook, in its class or on the instance (as LambdaCallback does).

        When none does, ``fit`` may run many batches in one compiled call, and skips computing
        per-batch logs unless a bar is live (:attr:`live_progress`): on a GPU each is a host
        synchronisation (the last batch of each epoch always gets its logs).
        """
        hooks = ("on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end")
        for cb in self.callbacks:
            if isinstance(cb, History) or type(cb) is ProgbarLogger:
                continue
            if any(getattr(getattr(cb, hook), "__func__", None) is not getattr(Callback, hook)
                   for hook in hooks):
                return True
        return False

    @property
    def live_progress(self) -> bool:
        """Whether a progress bar redraws during each epoch (``verbose=1``). It only displays
        the running means, so ``fit`` may update it every few steps instead of at each."""
        return any(type(cb) is ProgbarLogger and cb.verbose == 1 for cb in self.callbacks)

    def _add_default_callbacks(self, add_history: bool, add_progbar: bool) -> None:
        for cb in self.callbacks:
            if isinstance(cb, ProgbarLogger):
                self._progbar = cb
            elif isinstance(cb, History):
                self._history = cb
        if self._history is None and add_history:
            self._history = History()
            self.callbacks.append(self._history)
        if self._progbar is None and add_progbar:
            self._progbar = ProgbarLogger()
            self.callbacks.append(self._progbar)

    def set_params(self, params: dict[str, Any]) -> None:
        """Stores ``params`` and, when not empty, passes them to every callback.

        Args:
            params: Training parameters.
        """
        self.params = params
        if params:
            for cb in self.callbacks:
                cb.set_params(params)

    def set_model(self, model: Any) -> None:
        """Passes ``model`` to every callback (``None`` is ignored) and sets ``model.history``.

        Args:
            model: The model.
        """
        if model is None:
            return
        super().set_model(model)
        if self._history is not None:
            model.history = self._history
        for cb in self.callbacks:
            cb.set_model(model)

    def _call_batch_hook(self, hook: str, batch: int, logs: Logs | None) -> None:
        logs = _pythonify_logs(logs)
        for cb in self.callbacks:
            getattr(cb, hook)(batch, logs=logs)

    def _call_epoch_hook(self, hook: str, epoch: int, logs: Logs | None) -> None:
        logs = _pythonify_logs(logs)
        for cb in self.callbacks:
            getattr(cb, hook)(epoch, logs)

    def _call_hook(self, hook: str, logs: Logs | None) -> None:
        logs = _pythonify_logs(logs)
        for cb in self.callbacks:
            getattr(cb, hook)(logs)

    def on_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_batch_begin`."""
        self._call_batch_hook("on_batch_begin", batch, logs)

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_batch_end`."""
        self._call_batch_hook("on_batch_end", batch, logs)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_epoch_begin`."""
        self._call_epoch_hook("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_epoch_end`."""
        self._call_epoch_hook("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_train_batch_begin`."""
        self._call_batch_hook("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_train_batch_end`."""
        self._call_batch_hook("on_train_batch_end", batch, logs)

    def on_test_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_test_batch_begin`."""
        self._call_batch_hook("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_test_batch_end`."""
        self._call_batch_hook("on_test_batch_end", batch, logs)

    def on_predict_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_predict_batch_begin`."""
        self._call_batch_hook("on_predict_batch_begin", batch, logs)

    def on_predict_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_predict_batch_end`."""
        self._call_batch_hook("on_predict_batch_end", batch, logs)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_train_begin`."""
        self._call_hook("on_train_begin", logs)

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_train_end`."""
        self._call_hook("on_train_end", logs)

    def on_test_begin(self, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_test_begin`."""
        self._call_hook("on_test_begin", logs)

    def on_test_end(self, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_test_end`."""
        self._call_hook("on_test_end", logs)

    def on_predict_begin(self, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_predict_begin`."""
        self._call_hook("on_predict_begin", logs)

    def on_predict_end(self, logs: Logs | None = None) -> None:
        """Forwards `Callback.on_predict_end`."""
        self._call_hook("on_predict_end", logs)


# Name fragments of metrics that improve upwards (Keras 3 marks these metrics
# `_direction = "up"`); any other monitored quantity is minimised in mode "auto".
_MAXIMIZED_FRAGMENTS = (
    "acc",
    "auc",
    "precision",
    "recall",
    "f1_score",
    "fbeta_score",
    "iou",
    "r2_score",
    "cosine_similarity",
    "correlation",
    "sensitivity",
    "specificity",
)


class _MonitorCallback(Callback):
    """Base of the callbacks that watch one quantity of the epoch logs (Keras 3's
    ``MonitorCallback``): the direction it improves in and what counts as an improvement.

    ``improved = v − min_delta > best`` in mode "max", ``v + min_delta < best`` in mode "min"
    (``min_delta`` taken as ``|min_delta|``), compared in float32 as Keras's ``ops.greater`` /
    ``ops.less`` do with two Python floats; the first value always improves on ``None``.
    """

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                f"Argument `mode` of {type(self).__name__} must be one of 'auto', 'min', "
                f"'max'. Received: mode={mode!r}"
            )
        self.monitor = monitor
        self.mode = mode
        self.maximize = self._infer_maximize()
        # Stored signed, as Keras does: improvement is always `op(current - min_delta, ref)`.
        self.min_delta = abs(min_delta) if self.maximize else -abs(min_delta)

    def _infer_maximize(self) -> bool:
        if self.mode != "auto":
            return self.mode == "max"
        name = self.monitor.removeprefix("val_")
        if name.endswith("loss"):
            return False
        return any(fragment in name for fragment in _MAXIMIZED_FRAGMENTS)

    def _is_improvement(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        # Keras compares with ``ops.less``/``ops.greater``, which turn the two Python floats
        # into float32 tensors: an improvement smaller than float32 resolution does not count.
        current, reference = np.float32(value - self.min_delta), np.float32(reference)
        return bool(current > reference) if self.maximize else bool(current < reference)

    def _monitored(self, logs: Logs | None, what: str) -> Any:
        """``logs[monitor]``, or ``None`` with a warning naming the available keys."""
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(
                f"{what} conditioned on metric `{self.monitor}` which is not available. "
                f"Available metrics are: {','.join(logs.keys())}",
                stacklevel=3,
            )
        return value


class EarlyStopping(_MonitorCallback):
    """Stops training when a monitored quantity has stopped improving.

    At the end of each epoch (from ``start_from_epoch`` on) the value ``v`` of ``monitor`` is
    compared with the best so far::

        improved = v - min_delta > best        mode "max"
        improved = v + min_delta < best        mode "min"    (min_delta taken as |min_delta|)

    An improvement records ``best``, ``best_epoch`` (and the weights when
    ``restore_best_weights``) and resets the wait counter, but only if ``v`` also improves on
    ``baseline`` when one is given. Otherwise the counter grows by one; once it reaches
    ``patience`` (and the epoch is not the first) ``model.stop_training`` is set. At the end of
    training the best weights are restored when ``restore_best_weights`` is set, whether or not
    training stopped early.

    Args:
        monitor: Key of ``logs`` to watch.
        min_delta: Smallest change that counts as an improvement (its sign is ignored).
        patience: Number of epochs without improvement after which training stops.
        verbose: ``1`` prints a line when stopping and when restoring weights.
        mode: ``"min"``, ``"max"`` or ``"auto"``; ``"auto"`` maximises quantities named like
            accuracy, AUC, precision, recall, F-scores, IoU, R² or correlations, and minimises
            everything else (losses, errors).
        baseline: Value the monitored quantity must beat for the wait counter to reset.
        restore_best_weights: Restore the weights of the best epoch at the end of training.
        start_from_epoch: Number of warm-up epochs during which nothing is monitored.

    Raises:
        ValueError: If ``mode`` is not one of ``"auto"``, ``"min"``, ``"max"``.

    Example:
        >>> stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
        >>> model.fit(x, y, validation_split=0.1, epochs=100, callbacks=[stop])  # doctest: +SKIP
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.on_train_begin()

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Resets the state, so one instance can serve several ``fit`` calls.

        Args:
            logs: Unused.
        """
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_weights: list[Any] | None = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Compares the monitored value with the best so far and stops training if needed.

        Args:
            epoch: Zero-based index of the epoch.
            logs: The epoch's metrics; must contain ``monitor``.
        """
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # Nothing saved yet: the current weights are the best we know.
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch

        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return

        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Reports the stop and restores the best weights when asked to.

        Args:
            logs: Unused.
        """
        if self.stopped_epoch > 0 and self.verbose > 0:
            _print_line(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                _print_line(
                    "Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}."
                )
            self.model.set_weights(self.best_weights)

    def get_monitor_value(self, logs: Logs | None) -> Any:
        """Returns ``logs[monitor]``, warning (and returning ``None``) when it is missing.

        Args:
            logs: The epoch's metrics.

        Returns:
            The monitored value, or ``None``.
        """
        return self._monitored(logs, "Early stopping")


def _learning_rate(optimizer: Any) -> float:
    """The optimizer's learning rate as Keras reads it back: rounded to ``floatx`` (Keras keeps
    it in a variable of that dtype); a schedule's value for the coming step."""
    if not hasattr(optimizer, "learning_rate"):
        raise ValueError(
            f'Optimizer must have a "learning_rate" attribute. Received: {optimizer!r}'
        )
    lr = optimizer.learning_rate
    if callable(lr):
        lr = optimizer.current_learning_rate()
    return float(np.asarray(lr, dtype=config.floatx()))


def _set_learning_rate(optimizer: Any, value: Any, source: str) -> None:
    """Sets a constant learning rate, refusing a schedule and values that are not ≥ 0."""
    if callable(optimizer.learning_rate):
        raise TypeError(
            f"{source}: the optimizer was created with a schedule as its `learning_rate` "
            "(a callable), so its learning rate cannot be set. Received: "
            f"learning_rate={optimizer.learning_rate!r}"
        )
    if not isinstance(value, (float, np.floating)) or not value >= 0:
        raise ValueError(
            f"{source}: expected a learning rate that is a float >= 0. Received: {value!r}"
        )
    optimizer.learning_rate = float(value)


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate at the start of every epoch from ``schedule``.

    ``lr = schedule(epoch, lr)`` with the zero-based epoch and the current rate (as Keras
    reads it: rounded to ``floatx``), or ``schedule(epoch)`` for a function of one argument
    (Keras 2's form). At the end of each epoch the rate is added to the logs as
    ``learning_rate`` (so ``History`` records it and the progress line shows it).

    Args:
        schedule: Function of ``(epoch, lr)`` or ``(epoch)`` returning a float ≥ 0.
        verbose: ``1`` prints the new rate at the start of each epoch.

    Raises:
        ValueError: when ``schedule`` returns anything but a float ≥ 0 (an int too, as Keras).
        TypeError: when the optimizer's learning rate is itself a schedule.

    Example:
        >>> def schedule(epoch, lr):
        ...     return lr if epoch < 10 else lr * math.exp(-0.1)
        >>> scheduler = LearningRateScheduler(schedule)
        >>> model.fit(x, y, epochs=15, callbacks=[scheduler])  # doctest: +SKIP
    """

    def __init__(self, schedule: Callable[..., Any], verbose: int = 0) -> None:
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"LearningRateScheduler: expected `schedule` to be a function of (epoch, lr). "
                f"Received: {schedule!r}"
            )
        self.schedule = schedule
        self.verbose = verbose
        self._takes_lr = _positional_arguments(schedule) >= 2

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Sets the epoch's learning rate.

        Args:
            epoch: Zero-based index of the epoch.
            logs: Unused.
        """
        optimizer = self.model.optimizer
        if self._takes_lr:
            lr = self.schedule(epoch, _learning_rate(optimizer))
        else:
            lr = self.schedule(epoch)
        _set_learning_rate(optimizer, lr, "LearningRateScheduler")
        if self.verbose > 0:
            _print_line(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate "
                        f"to {lr}.")

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Adds ``learning_rate`` to the epoch's logs.

        Args:
            epoch: Zero-based index of the epoch.
            logs: The epoch's metrics (updated in place).
        """
        if logs is not None:
            logs["learning_rate"] = _learning_rate(self.model.optimizer)


def _positional_arguments(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` accepts (a large number for ``*args``)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # e.g. some builtins: assume the two-argument form
        return 2
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return 1 << 30
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


class ReduceLROnPlateau(_MonitorCallback):
    """Multiplies the learning rate by ``factor`` when a monitored quantity stops improving.

    At the end of each epoch, with ``v`` the value of ``monitor`` and improvements as in
    `EarlyStopping` (``min_delta`` in float32)::

        in cooldown (cooldown_counter > 0):  cooldown_counter −= 1, wait = 0
        v improves on best:                  best = v, wait = 0
        otherwise, not in cooldown:          wait += 1; when wait ≥ patience and lr > min_lr:
                                                 lr = max(lr · factor, min_lr)
                                                 cooldown_counter = cooldown, wait = 0

    ``lr`` is read back rounded to ``floatx``, as Keras keeps it. The rate before any change is
    added to the logs as ``learning_rate``.

    Args:
        monitor: Key of ``logs`` to watch.
        factor: Multiplier of the learning rate, < 1.
        patience: Epochs without improvement after which the rate is reduced.
        verbose: ``1`` prints a line at each reduction.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (as in `EarlyStopping`).
        min_delta: Smallest change that counts as an improvement (its sign is ignored).
        cooldown: Epochs to wait after a reduction before counting again.
        min_lr: Lower bound of the learning rate.

    Raises:
        ValueError: If ``factor`` ≥ 1 or ``mode`` is not one of ``"auto"``, ``"min"``, ``"max"``.

    Example:
        >>> reduce = ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=3, min_lr=1e-5)
        >>> model.fit(x, y, validation_split=0.1, epochs=50, callbacks=[reduce])  # doctest: +SKIP
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        super().__init__(monitor, mode, min_delta)
        if not factor < 1.0:
            raise ValueError(
                f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}"
            )
        self.factor = factor
        self.min_lr = min_lr
        self.patience = patience
        self.verbose = verbose
        self.cooldown = cooldown
        self.on_train_begin()

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Resets the best value and the counters, so one instance can serve several fits.

        Args:
            logs: Unused.
        """
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def in_cooldown(self) -> bool:
        """Whether the epochs of rest after a reduction are still running."""
        return self.cooldown_counter > 0

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Records the rate, compares the monitored value and reduces the rate if needed.

        Args:
            epoch: Zero-based index of the epoch.
            logs: The epoch's metrics (``learning_rate`` is added in place).
        """
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = _learning_rate(optimizer)
        current = self._monitored(logs, "Learning rate reduction is")
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = current
            self.wait = 0
            return
        if self.in_cooldown():
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        old = _learning_rate(optimizer)
        if old > np.float32(self.min_lr):
            new = max(old * self.factor, self.min_lr)
            _set_learning_rate(optimizer, float(new), "ReduceLROnPlateau")
            if self.verbose > 0:
                _print_line(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                            f"to {new}.")
            self.cooldown_counter = self.cooldown
            self.wait = 0


class ModelCheckpoint(_MonitorCallback):
    """Saves the model (or only its weights) during training: every epoch, every
    ``save_freq`` batches, or only when a monitored quantity improves.

    The path may hold ``str.format`` fields filled from the epoch (one-based) and the logs,
    e.g. ``"ckpt/{epoch:02d}-{val_loss:.2f}.keras"``; missing directories are created. Each
    file is written by ``model.save`` (read back with ``nnlite.models.load_model``) or, with
    ``save_weights_only``, by ``model.save_weights`` (read back with ``model.load_weights``),
    both to a temporary file then renamed, so a checkpoint is never half-written. With
    ``save_best_only`` a save happens only when the monitored value improves on the best so
    far, as in `EarlyStopping` (float32 comparison, here with no ``min_delta``), starting from
    ``initial_value_threshold`` when given.

    Args:
        filepath: Path (or format string) of the checkpoint file.
        monitor: Key of ``logs`` compared when ``save_best_only``.
        verbose: ``1`` prints a line at each decision and save.
        save_best_only: Save only when ``monitor`` improves.
        save_weights_only: Save the weights (an ``.npz`` archive) instead of the whole model.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (as in `EarlyStopping`).
        save_freq: ``"epoch"``, or a number of batches between saves.
        initial_value_threshold: The value the first save must improve on.

    Raises:
        ValueError: If ``save_freq`` is neither ``"epoch"`` nor a positive integer, or
            ``mode`` is unknown.
        KeyError: When ``filepath`` names a field the logs do not hold.

    Example:
        >>> best = ModelCheckpoint("best.keras", save_best_only=True)  # doctest: +SKIP
        >>> model.fit(x, y, validation_split=0.1, epochs=20, callbacks=[best])  # doctest: +SKIP
        >>> model = nnlite.models.load_model("best.keras")  # doctest: +SKIP
    """

    def __init__(
        self,
        filepath: Any,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
    ) -> None:
        super().__init__(monitor, mode, 0)
        if save_freq != "epoch" and (not isinstance(save_freq, int)
                                     or isinstance(save_freq, bool) or save_freq < 1):
            raise ValueError(
                "ModelCheckpoint: expected `save_freq` to be 'epoch' or a positive integer "
                f"(batches). Received: save_freq={save_freq!r}"
            )
        self.filepath = os.fspath(filepath)
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self.initial_value_threshold = initial_value_threshold
        self.best = initial_value_threshold
        self._epoch = 0
        self._batches_since_save = 0
        if save_freq != "epoch":
            # Only then a batch hook: without one, fit may run whole epochs in compiled loops.
            self.on_train_batch_end = self._count_batch

    def _count_batch(self, batch: int, logs: Logs | None = None) -> None:
        """Saves every ``save_freq`` batches, counted across epochs."""
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._epoch, logs, batch)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Records the epoch, for the file name.

        Args:
            epoch: Zero-based index of the epoch.
            logs: Unused.
        """
        self._epoch = epoch

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Saves (or considers saving) at the end of the epoch when ``save_freq="epoch"``.

        Args:
            epoch: Zero-based index of the epoch.
            logs: The epoch's metrics.
        """
        if self.save_freq == "epoch":
            self._save(epoch, logs, None)

    def _path(self, epoch: int, logs: Logs, batch: int | None) -> str:
        fields = dict(logs)
        if batch is not None and "batch" not in fields:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(epoch=epoch + 1, **fields)
        except KeyError as exc:
            raise KeyError(
                f'Failed to format this callback filepath: "{self.filepath}". Reason: {exc}. '
                f"Available fields: epoch, {', '.join(fields)}"
            ) from None

    def _save(self, epoch: int, logs: Logs | None, batch: int | None) -> None:
        logs = logs or {}
        path = self._path(epoch, logs, batch)
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                warnings.warn(f"Can save best model only with {self.monitor} available.",
                              stacklevel=3)
            else:
                best = "None" if self.best is None else f"{self.best:.5f}"
                if not self._is_improvement(current, self.best):
                    if self.verbose > 0:
                        _print_line(f"\nEpoch {epoch + 1}: {self.monitor} did not improve "
                                    f"from {best}")
                    return
                if self.verbose > 0:
                    _print_line(f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} "
                                f"to {current:.5f}, saving model to {path}")
                self.best = current
        elif self.verbose > 0:
            _print_line(f"\nEpoch {epoch + 1}: saving model to {path}")
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if os.path.isdir(path):
            raise IsADirectoryError(
                f"ModelCheckpoint: the checkpoint path is an existing directory: {path!r}; "
                "give a file path"
            )
        if self.save_weights_only:
            self.model.save_weights(path, overwrite=True)
        else:
            self.model.save(path, overwrite=True)
        if self.verbose > 0:
            _print_line(f"\nEpoch {epoch + 1}: finished saving model to {path}")


class CSVLogger(Callback):
    """Writes one CSV row per epoch: the epoch (zero-based) and every value of the logs.

    As Keras's: the columns are ``epoch`` and the log keys sorted alphabetically, fixed at the
    first epoch; when no ``val_`` key is among them, a ``val_`` twin of each key is added (its
    cells ``NA``). The file is opened when training begins (truncated, or appended to with
    ``append=True``, the header then written only into an empty file), each row is flushed as it
    is written, so a log of an interrupted run ends with a whole row, and it is closed when
    training ends. Rows end with ``\\r\\n`` (the csv module's excel dialect), as Keras's do.

    Args:
        filename: Path of the CSV file.
        separator: Column separator.
        append: Append to an existing file instead of overwriting it.

    Example:
        >>> model.fit(x, y, epochs=5, callbacks=[CSVLogger("training.csv")])  # doctest: +SKIP
    """

    def __init__(self, filename: Any, separator: str = ",", append: bool = False) -> None:
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = append
        self.keys: list[str] | None = None
        self.writer: Any = None
        self.csv_file: Any = None

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Opens the file (closing one left open by an interrupted fit).

        Args:
            logs: Unused.
        """
        self.append_header = True
        if self.append and os.path.exists(self.filename):
            with open(self.filename, encoding="utf-8") as f:
                self.append_header = not f.readline()
        self._close()
        self.csv_file = open(self.filename, "a" if self.append else "w",  # noqa: SIM115
                             encoding="utf-8", newline="")
        self.keys = None

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Writes the epoch's row (and, at the first epoch, the header).

        Args:
            epoch: Zero-based index of the epoch.
            logs: The epoch's metrics.
        """
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(key.startswith("val_") for key in self.keys):
                self.keys += [f"val_{key}" for key in self.keys]
            self.writer = csv.writer(self.csv_file, delimiter=self.sep)
            if self.append_header:
                self.writer.writerow(["epoch", *self.keys])
        self.writer.writerow([epoch, *(_csv_cell(logs.get(key, "NA")) for key in self.keys)])
        self.csv_file.flush()

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Closes the file.

        Args:
            logs: Unused.
        """
        self._close()

    def _close(self) -> None:
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None


def _csv_cell(value: Any) -> Any:
    """A log value as Keras's CSVLogger writes it: sequences as a quoted ``[a, b]`` string."""
    if isinstance(value, str) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value
    if isinstance(value, Iterable):
        return f'"[{", ".join(map(str, value))}]"'
    return value


class TerminateOnNaN(Callback):
    """Stops training as soon as a batch's loss is NaN or infinite.

    Args:
        raise_error: If ``True``, raise ``RuntimeError`` at once instead of setting
            ``model.stop_training`` (so ``on_train_end`` of other callbacks does not run).
    """

    def __init__(self, raise_error: bool = False) -> None:
        super().__init__()
        self.raise_error = raise_error

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Checks ``logs["loss"]``.

        Args:
            batch: Index of the batch within the epoch.
            logs: Running means of the epoch's metrics.

        Raises:
            RuntimeError: If the loss is not finite and ``raise_error`` is set.
        """
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        if self.raise_error:
            raise RuntimeError(
                f"NaN or Inf loss encountered at batch {batch}. "
                f"Loss value: {loss}. Terminating training immediately."
            )
        _print_line(f"Batch {batch}: Invalid loss, terminating training")
        self.model.stop_training = True


class LambdaCallback(Callback):
    """Builds a callback from plain functions.

    Functions are called with the same arguments as the hooks they replace: ``(epoch, logs)``
    for epoch hooks, ``(logs)`` for begin/end hooks, ``(batch, logs=...)`` for batch hooks.

    Args:
        on_epoch_begin: Called at the start of every epoch.
        on_epoch_end: Called at the end of every epoch.
        on_train_begin: Called at the start of training.
        on_train_end: Called at the end of training.
        on_train_batch_begin: Called before every training batch.
        on_train_batch_end: Called after every training batch.
        **kwargs: Any other hook, by name, e.g. ``on_test_end=fn``.

    Example:
        >>> losses = []
        >>> cb = LambdaCallback(on_epoch_end=lambda epoch, logs: losses.append(logs["loss"]))
    """

    def __init__(
        self,
        on_epoch_begin: Callable[..., Any] | None = None,
        on_epoch_end: Callable[..., Any] | None = None,
        on_train_begin: Callable[..., Any] | None = None,
        on_train_end: Callable[..., Any] | None = None,
        on_train_batch_begin: Callable[..., Any] | None = None,
        on_train_batch_end: Callable[..., Any] | None = None,
        **kwargs: Callable[..., Any],
    ) -> None:
        super().__init__()
        self.__dict__.update(kwargs)
        hooks = {
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
        }
        for name, fn in hooks.items():
            if fn is not None:
                setattr(self, name, fn)
