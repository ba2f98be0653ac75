"""Tests for nnlite.callbacks, driving the hooks by hand with a fake model."""

import math
import re

import numpy as np
import pytest

from nnlite.callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    EarlyStopping,
    History,
    LambdaCallback,
    LearningRateScheduler,
    ModelCheckpoint,
    ProgbarLogger,
    ReduceLROnPlateau,
    TerminateOnNaN,
)

HOOKS_WITH_INDEX = [
    "on_batch_begin",
    "on_batch_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
]
HOOKS_LOGS_ONLY = [
    "on_train_begin",
    "on_train_end",
    "on_test_begin",
    "on_test_end",
    "on_predict_begin",
    "on_predict_end",
]


class FakeModel:
    """The model interface callbacks rely on; weights are [kernel, bias]."""

    def __init__(self):
        self.weights = [np.zeros((2, 2)), np.zeros(2)]
        self.stop_training = False

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [np.array(w) for w in weights]

    def train_one_epoch(self, epoch):
        """Makes the weights identify the epoch that produced them."""
        self.weights = [np.full((2, 2), float(epoch)), np.full(2, float(epoch))]


def fit(callbacks, values, monitor="val_loss", model=None, verbose=0):
    """Runs a scripted training loop shaped like Keras's fit; returns (model, history)."""
    model = model or FakeModel()
    cbs = CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=len(values), steps=1,
    )
    cbs.on_train_begin()
    logs = None
    for epoch, value in enumerate(values):
        cbs.on_epoch_begin(epoch)
        cbs.on_train_batch_begin(0)
        model.train_one_epoch(epoch)
        cbs.on_train_batch_end(0, {"loss": 1.0})
        logs = {"loss": 1.0, monitor: value}
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end(logs)
    return model, cbs.history


def epoch_of(model):
    """Which scripted epoch produced the model's current weights."""
    value = model.weights[1][0]
    assert np.all(model.weights[0] == value) and np.all(model.weights[1] == value)
    return int(value)


# ---------------------------------------------------------------- Callback base


def test_base_hooks_exist_and_do_nothing():
    cb = Callback()
    assert cb.model is None and cb.params is None and cb.validation_data is None
    for name in HOOKS_WITH_INDEX:
        assert getattr(cb, name)(0, logs={"loss": 1.0}) is None
        assert getattr(cb, name)(0) is None
    for name in HOOKS_LOGS_ONLY:
        assert getattr(cb, name)({"loss": 1.0}) is None
        assert getattr(cb, name)() is None


def test_set_model_and_set_params():
    cb, model = Callback(), FakeModel()
    cb.set_model(model)
    cb.set_params({"epochs": 3})
    assert cb.model is model and cb.params == {"epochs": 3}


def test_train_batch_hooks_alias_batch_hooks():
    calls = []

    class Legacy(Callback):
        def on_batch_begin(self, batch, logs=None):
            calls.append(("begin", batch, logs))

        def on_batch_end(self, batch, logs=None):
            calls.append(("end", batch, logs))

    cb = Legacy()
    cb.on_train_batch_begin(3)
    cb.on_train_batch_end(3, {"loss": 0.5})
    cb.on_test_batch_end(3, {"loss": 0.5})  # test/predict hooks are not aliased
    cb.on_predict_batch_end(3, {"loss": 0.5})
    assert calls == [("begin", 3, None), ("end", 3, {"loss": 0.5})]


def test_overriding_train_batch_end_bypasses_the_alias():
    calls = []

    class Modern(Callback):
        def on_train_batch_end(self, batch, logs=None):
            calls.append("train_batch_end")

        def on_batch_end(self, batch, logs=None):
            calls.append("batch_end")

    Modern().on_train_batch_end(0, {})
    assert calls == ["train_batch_end"]


# ---------------------------------------------------------------- CallbackList


class Recorder(Callback):
    def __init__(self, tag, journal):
        super().__init__()
        self.tag, self.journal = tag, journal

    def __getattribute__(self, name):
        if name.startswith("on_") and name != "on_batch_begin" and name != "on_batch_end":
            journal, tag = object.__getattribute__(self, "journal"), object.__getattribute__(
                self, "tag"
            )

            def hook(*args, **kwargs):
                journal.append((tag, name, args, kwargs))

            return hook
        return object.__getattribute__(self, name)


def test_callback_list_forwards_every_hook_in_order():
    journal = []
    cbs = CallbackList([Recorder("a", journal), Recorder("b", journal)])
    for name in HOOKS_WITH_INDEX:
        getattr(cbs, name)(2, {"loss": 1})
    for name in HOOKS_LOGS_ONLY:
        getattr(cbs, name)({"loss": 1})
    names = [n for n in HOOKS_WITH_INDEX + HOOKS_LOGS_ONLY]
    # on_batch_begin/end go to the Recorder's inherited no-ops: not journaled.
    expected = [(tag, n) for n in names if n not in ("on_batch_begin", "on_batch_end")
                for tag in "ab"]
    assert [(tag, n) for tag, n, _, _ in journal] == expected
    for _, _, args, kwargs in journal:
        logs = kwargs.get("logs", args[-1])
        assert logs == {"loss": 1.0} and isinstance(logs["loss"], float)


def test_callback_list_logs_keep_order_flattened_floats():
    seen = []
    cbs = CallbackList([LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs))])
    original = {"loss": np.float32(0.5), "accuracy": 0.75, "extra": {"val_loss": np.float64(1)},
                "name": "x"}
    cbs.on_epoch_end(0, original)
    logs = seen[0]
    # Given order kept (loss first, metrics in compile order); a nested dict merged in place.
    assert list(logs) == ["loss", "accuracy", "val_loss", "name"]
    assert logs == {"accuracy": 0.75, "loss": 0.5, "name": "x", "val_loss": 1.0}
    assert type(logs["loss"]) is float
    assert "val_loss" not in original  # the caller's dict is left alone


def test_callback_list_defaults_and_model_params():
    model = FakeModel()
    user = Callback()
    cbs = CallbackList([user], add_history=True, add_progbar=True, model=model,
                       verbose=2, epochs=4, steps=10)
    assert cbs.callbacks[0] is user
    assert isinstance(cbs.callbacks[1], History) and isinstance(cbs.callbacks[2], ProgbarLogger)
    assert cbs.history is cbs.callbacks[1] and model.history is cbs.history
    assert all(cb.model is model for cb in cbs.callbacks) and cbs.model is model
    params = {"verbose": 2, "epochs": 4, "steps": 10}
    assert cbs.params == params and all(cb.params == params for cb in cbs.callbacks)
    assert cbs.callbacks[2].epochs == 4 and cbs.callbacks[2].target == 10


def test_callback_list_keeps_given_history_and_progbar():
    history, logger = History(), ProgbarLogger()
    cbs = CallbackList([[history], (logger,)], add_history=True, add_progbar=True)
    assert cbs.callbacks == [history, logger] and cbs.history is history


def test_callback_list_without_defaults():
    cbs = CallbackList(add_history=False, add_progbar=False, model=None)
    assert cbs.callbacks == [] and cbs.history is None and cbs.model is None
    single = Callback()
    assert CallbackList(single).callbacks == [single]


def test_callback_list_empty_params_are_not_forwarded():
    cb = Callback()
    CallbackList([cb])
    assert cb.params is None


# ---------------------------------------------------------------- History


def test_history_accumulates_in_log_order():
    model = FakeModel()
    history = History()
    history.set_model(model)
    history.on_train_begin()
    history.on_epoch_end(0, {"loss": 0.5, "accuracy": 0.7})
    history.on_epoch_end(1, {"loss": 0.4, "accuracy": 0.8})
    assert history.history == {"loss": [0.5, 0.4], "accuracy": [0.7, 0.8]}
    assert list(history.history) == ["loss", "accuracy"]
    assert history.epoch == [0, 1]
    assert model.history is history


def test_history_second_fit_resets_epochs_and_keeps_values():
    history = History()
    history.on_train_begin()
    history.on_epoch_end(0, {"loss": 0.5})
    history.on_train_begin()
    history.on_epoch_end(0, {"loss": 0.3})
    assert history.epoch == [0]
    assert history.history == {"loss": [0.5, 0.3]}


def test_history_from_scripted_fit():
    _, history = fit([], [0.9, 0.8, 0.7])
    assert history.history == {"loss": [1.0] * 3, "val_loss": [0.9, 0.8, 0.7]}
    assert history.epoch == [0, 1, 2]


# ---------------------------------------------------------------- ProgbarLogger


@pytest.fixture
def ticking_clock(monkeypatch):
    """time.time advancing 10 ms per call, for deterministic progress lines."""
    import time

    state = {"now": 0.0}

    def fake():
        state["now"] += 0.01
        return state["now"]

    monkeypatch.setattr(time, "time", fake)


def run_fit_with_progbar(verbose, epochs, steps=3, known_steps=True, validate=True):
    model = FakeModel()
    cbs = CallbackList(add_history=True, add_progbar=verbose != 0, model=model, verbose=verbose,
                       epochs=epochs, steps=steps if known_steps else None)
    cbs.on_train_begin()
    for epoch in range(epochs):
        cbs.on_epoch_begin(epoch)
        for batch in range(steps):
            cbs.on_train_batch_begin(batch)
            cbs.on_train_batch_end(batch, {"loss": 1.0 / (batch + 1), "accuracy": 0.5})
        logs = {"loss": 0.25, "accuracy": 0.5}
        if validate:
            cbs.on_test_begin()
            cbs.on_test_batch_begin(0)
            cbs.on_test_batch_end(0, {"loss": 0.1})
            cbs.on_test_end({"loss": 0.1, "accuracy": 0.9})
            logs.update(val_loss=0.1, val_accuracy=0.9)
        cbs.on_epoch_end(epoch, logs)
    cbs.on_train_end(logs)
    return cbs


def test_progbar_logger_epoch_headers_and_verbose2_lines(ticking_clock, capsys):
    run_fit_with_progbar(verbose=2, epochs=3)
    lines = capsys.readouterr().out.split("\n")
    assert lines[0] == "Epoch 1/3" and lines[2] == "Epoch 2/3" and lines[4] == "Epoch 3/3"
    assert lines[6] == "" and len(lines) == 7
    pattern = (
        r"3/3 - \d+s - \d+(ms|us|s)/step - loss: 0\.2500 - accuracy: 0\.5000"
        r" - val_loss: 0\.1000 - val_accuracy: 0\.9000"
    )
    for line in lines[1:6:2]:
        assert re.fullmatch(pattern, line), line


def test_progbar_logger_no_header_for_one_epoch(ticking_clock, capsys):
    run_fit_with_progbar(verbose=2, epochs=1)
    out = capsys.readouterr().out
    assert "Epoch" not in out and out.count("\n") == 1 and out.startswith("3/3 - ")


def test_progbar_logger_verbose1_not_a_tty(ticking_clock, capsys):
    run_fit_with_progbar(verbose=1, epochs=2)
    out = capsys.readouterr().out
    assert "\r" not in out and "\b" not in out
    lines = out.split("\n")
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 5
    assert lines[1].startswith("\x1b[1m3/3\x1b[0m \x1b[32m" + "━" * 20)
    assert lines[1].endswith(
        " - loss: 0.2500 - accuracy: 0.5000 - val_loss: 0.1000 - val_accuracy: 0.9000"
    )


def test_progbar_logger_verbose0_is_never_added(capsys):
    cbs = run_fit_with_progbar(verbose=0, epochs=2)
    assert capsys.readouterr().out == ""
    assert not any(isinstance(cb, ProgbarLogger) for cb in cbs.callbacks)


def test_progbar_logger_learns_unknown_steps(ticking_clock, capsys):
    run_fit_with_progbar(verbose=2, epochs=2, steps=4, known_steps=False, validate=False)
    lines = capsys.readouterr().out.split("\n")
    assert lines[1].startswith("4/4 - ") and lines[3].startswith("4/4 - ")


def test_progbar_logger_evaluate_prints_one_line(ticking_clock, capsys):
    cbs = CallbackList(add_progbar=True, model=FakeModel(), verbose=1, epochs=1, steps=5)
    cbs.on_test_begin()
    for batch in range(5):
        cbs.on_test_batch_begin(batch)
        cbs.on_test_batch_end(batch, {"loss": 0.5, "accuracy": 0.5})
    cbs.on_test_end({"loss": 0.4, "accuracy": 0.0005})
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "\r" not in out
    assert out.startswith("\x1b[1m5/5\x1b[0m ")
    assert out.endswith(" - loss: 0.4000 - accuracy: 5.0000e-04\n")


def test_progbar_logger_predict_verbose2(ticking_clock, capsys):
    cbs = CallbackList(add_progbar=True, model=FakeModel(), verbose=2, epochs=1, steps=2)
    cbs.on_predict_begin()
    for batch in range(2):
        cbs.on_predict_batch_begin(batch)
        cbs.on_predict_batch_end(batch, {"outputs": 1.0})
    cbs.on_predict_end()
    assert re.fullmatch(r"2/2 - \d+s - \d+(ms|us|s)/step\n", capsys.readouterr().out)


def test_progbar_logger_auto_verbose_means_1():
    logger = ProgbarLogger()
    logger.set_params({"verbose": "auto", "epochs": 2, "steps": 7})
    assert (logger.verbose, logger.epochs, logger.target) == (1, 2, 7)


# ---------------------------------------------------------------- EarlyStopping


def test_early_stopping_patience_and_restore(capsys):
    es = EarlyStopping(patience=2, restore_best_weights=True, verbose=1)
    model, history = fit([es], [1.0, 0.8, 0.9, 0.95, 0.7])
    assert model.stop_training and es.stopped_epoch == 3
    assert history.epoch == [0, 1, 2, 3]
    assert es.best == 0.8 and es.best_epoch == 1 and es.wait == 2
    assert epoch_of(model) == 1
    assert capsys.readouterr().out == (
        "Epoch 4: early stopping\n"
        "Restoring model weights from the end of the best epoch: 2.\n"
    )


def test_early_stopping_without_restore_keeps_last_weights(capsys):
    es = EarlyStopping(patience=2, verbose=1)
    model, _ = fit([es], [1.0, 0.8, 0.9, 0.95, 0.7])
    assert es.stopped_epoch == 3 and es.best_weights is None and epoch_of(model) == 3
    assert capsys.readouterr().out == "Epoch 4: early stopping\n"


def test_early_stopping_silent_by_default(capsys):
    fit([EarlyStopping(patience=0, restore_best_weights=True)], [1.0, 2.0])
    assert capsys.readouterr().out == ""


def test_early_stopping_patience_zero():
    es = EarlyStopping(patience=0)
    model, history = fit([es], [1.0, 0.9, 0.95, 0.5])
    assert es.stopped_epoch == 2 and len(history.epoch) == 3 and es.best_epoch == 1


def test_early_stopping_never_stops_on_first_epoch():
    es = EarlyStopping(patience=0)
    es.set_model(FakeModel())
    es.on_train_begin()
    es.best = 0.5  # as if an earlier value were better
    es.on_epoch_end(0, {"val_loss": 0.9})
    assert not es.model.stop_training and es.wait == 1
    es.on_epoch_end(1, {"val_loss": 0.9})
    assert es.model.stop_training and es.stopped_epoch == 1


@pytest.mark.parametrize("min_delta", [0.1, -0.1])
def test_early_stopping_min_delta(min_delta):
    values = [1.0, 0.95, 0.85, 0.84, 0.80]
    es = EarlyStopping(monitor="loss", min_delta=min_delta, patience=2, mode="min")
    fit([es], values, monitor="loss")
    assert es.stopped_epoch == 4 and es.best == 0.85 and es.best_epoch == 2
    plain = EarlyStopping(monitor="loss", patience=2)
    fit([plain], values, monitor="loss")
    assert plain.stopped_epoch == 0 and plain.best == 0.80


def test_early_stopping_min_delta_in_max_mode():
    es = EarlyStopping(monitor="val_accuracy", min_delta=0.05, patience=1)
    fit([es], [0.5, 0.54, 0.6], monitor="val_accuracy")
    assert es.stopped_epoch == 1 and es.best == 0.5


def test_early_stopping_max_mode_for_accuracy():
    es = EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True)
    model, _ = fit([es], [0.5, 0.6, 0.55, 0.58, 0.9], monitor="val_accuracy")
    assert es.stopped_epoch == 3 and es.best == 0.6 and epoch_of(model) == 1


@pytest.mark.parametrize(
    "monitor, maximize",
    [
        ("val_loss", False), ("loss", False), ("val_accuracy", True), ("acc", True),
        ("val_sparse_categorical_accuracy", True), ("auc", True), ("val_precision", True),
        ("recall", True), ("mae", False), ("val_mean_squared_error", False),
    ],
)
def test_early_stopping_auto_mode_direction(monitor, maximize):
    assert EarlyStopping(monitor=monitor).maximize is maximize


def test_early_stopping_explicit_mode_overrides_name():
    es = EarlyStopping(monitor="val_loss", mode="max", patience=0)
    fit([es], [1.0, 2.0, 1.5])
    assert es.stopped_epoch == 2 and es.best == 2.0


def test_early_stopping_baseline_not_beaten_stops_at_first_non_improvement():
    # Improvements that never beat the baseline do not reset the wait counter.
    es = EarlyStopping(baseline=0.5, patience=2)
    fit([es], [1.0, 0.9, 0.8, 0.85, 0.7])
    assert es.stopped_epoch == 3 and es.best == 0.8
    no_baseline = EarlyStopping(patience=2)
    fit([no_baseline], [1.0, 0.9, 0.8, 0.85, 0.7])
    assert no_baseline.stopped_epoch == 0


def test_early_stopping_baseline_runs_for_patience_epochs():
    es = EarlyStopping(baseline=0.5, patience=2, restore_best_weights=True)
    model, history = fit([es], [1.0, 1.1, 1.2, 1.3])
    assert es.stopped_epoch == 1 and len(history.epoch) == 2 and epoch_of(model) == 0


def test_early_stopping_baseline_beaten_resets_wait():
    es = EarlyStopping(baseline=0.5, patience=2)
    fit([es], [1.0, 0.4, 0.45, 0.46, 0.47])
    assert es.stopped_epoch == 3 and es.best == 0.4 and es.best_epoch == 1


def test_early_stopping_start_from_epoch():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    es = EarlyStopping(patience=0, start_from_epoch=2, restore_best_weights=True)
    model, _ = fit([es], values)
    assert es.stopped_epoch == 3 and es.best == 3.0 and epoch_of(model) == 2
    eager = EarlyStopping(patience=0)
    fit([eager], values)
    assert eager.stopped_epoch == 1


def test_early_stopping_restores_even_without_stopping(capsys):
    es = EarlyStopping(patience=5, restore_best_weights=True, verbose=1)
    model, history = fit([es], [1.0, 0.5, 0.7])
    assert not model.stop_training and es.stopped_epoch == 0 and len(history.epoch) == 3
    assert epoch_of(model) == 1
    assert capsys.readouterr().out == (
        "Restoring model weights from the end of the best epoch: 2.\n"
    )


def test_early_stopping_best_weights_are_copies():
    es = EarlyStopping(patience=5, restore_best_weights=True)
    model = FakeModel()
    es.set_model(model)
    es.on_train_begin()
    model.train_one_epoch(7)
    es.on_epoch_end(0, {"val_loss": 1.0})
    model.weights[0][...] = -1.0  # in-place update after the snapshot
    es.on_train_end()
    assert epoch_of(model) == 7


def test_early_stopping_missing_monitor_warns():
    es = EarlyStopping(monitor="val_loss", patience=0)
    es.set_model(FakeModel())
    es.on_train_begin()
    message = (
        "Early stopping conditioned on metric `val_loss` which is not available. "
        "Available metrics are: loss,accuracy"
    )
    with pytest.warns(UserWarning, match=re.escape(message)):
        es.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})
    with pytest.warns(UserWarning, match=re.escape(message)):
        es.on_epoch_end(1, {"loss": 2.0, "accuracy": 0.5})
    assert es.best is None and es.wait == 0 and not es.model.stop_training


def test_early_stopping_bad_mode():
    with pytest.raises(ValueError, match=r"`mode`.*'auto', 'min', 'max'.*Received: mode='best'"):
        EarlyStopping(mode="best")


def test_early_stopping_is_reusable_across_fits():
    es = EarlyStopping(patience=0, restore_best_weights=True)
    fit([es], [1.0, 2.0])
    assert es.stopped_epoch == 1
    model, history = fit([es], [5.0, 4.0, 3.0])
    assert es.stopped_epoch == 0 and es.best == 3.0 and es.best_epoch == 2
    assert len(history.epoch) == 3 and epoch_of(model) == 2


# ---------------------------------------------------------------- TerminateOnNaN


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_terminate_on_nan_stops(bad, capsys):
    model = FakeModel()
    cbs = CallbackList([TerminateOnNaN()], model=model)
    cbs.on_train_batch_end(4, {"loss": 0.5})
    assert not model.stop_training
    cbs.on_train_batch_end(5, {"loss": bad})
    assert model.stop_training
    assert capsys.readouterr().out == "Batch 5: Invalid loss, terminating training\n"


def test_terminate_on_nan_ignores_missing_loss_and_finite_values(capsys):
    cb = TerminateOnNaN()
    cb.set_model(FakeModel())
    cb.on_train_batch_end(0, {"accuracy": math.nan})
    cb.on_train_batch_end(1, None)
    cb.on_train_batch_end(2, {"loss": 1e30})
    assert not cb.model.stop_training and capsys.readouterr().out == ""


def test_terminate_on_nan_raise_error():
    cb = TerminateOnNaN(raise_error=True)
    cb.set_model(FakeModel())
    with pytest.raises(RuntimeError, match="batch 2"):
        cb.on_train_batch_end(2, {"loss": math.nan})
    assert not cb.model.stop_training


# ---------------------------------------------------------------- LambdaCallback


def test_lambda_callback_hooks():
    events = []
    cb = LambdaCallback(
        on_epoch_begin=lambda epoch, logs: events.append(("epoch_begin", epoch)),
        on_epoch_end=lambda epoch, logs: events.append(("epoch_end", epoch, logs["loss"])),
        on_train_begin=lambda logs: events.append(("train_begin",)),
        on_train_end=lambda logs: events.append(("train_end",)),
        on_train_batch_begin=lambda batch, logs: events.append(("batch_begin", batch)),
        on_train_batch_end=lambda batch, logs: events.append(("batch_end", batch)),
        on_test_end=lambda logs: events.append(("test_end", logs)),
    )
    cbs = CallbackList([cb], model=FakeModel())
    cbs.on_train_begin()
    cbs.on_epoch_begin(0)
    cbs.on_train_batch_begin(0)
    cbs.on_train_batch_end(0, {"loss": 1.0})
    cbs.on_test_end({"loss": 2.0})
    cbs.on_epoch_end(0, {"loss": 0.5})
    cbs.on_train_end()
    cbs.on_predict_end()  # not given: the base no-op
    assert events == [
        ("train_begin",),
        ("epoch_begin", 0),
        ("batch_begin", 0),
        ("batch_end", 0),
        ("test_end", {"loss": 2.0}),
        ("epoch_end", 0, 0.5),
        ("train_end",),
    ]


def test_lambda_callback_defaults_are_no_ops():
    cb = LambdaCallback()
    assert cb.on_epoch_end(0, {}) is None and cb.on_train_batch_end(0) is None


# ---------------------------------------------------------------- learning-rate callbacks


class OptimizerModel(FakeModel):
    """A fake model with a real optimizer, as the learning-rate callbacks need."""

    def __init__(self, learning_rate=0.1):
        super().__init__()
        from nnlite.optimizers import SGD

        self.optimizer = SGD(learning_rate=learning_rate)


F32 = lambda value: float(np.float32(value))  # noqa: E731 - the rate as Keras reads it back


def test_learning_rate_scheduler_two_argument_form_reads_the_float32_rate(capsys):
    seen = []

    def schedule(epoch, lr):
        seen.append((epoch, lr))
        return lr * 0.5 if epoch else lr

    model = OptimizerModel(0.1)
    _, history = fit([LearningRateScheduler(schedule, verbose=1)], [1.0, 0.9, 0.8],
                     model=model)
    # Keras keeps the rate in a floatx variable: the schedule sees 0.1 rounded to float32.
    assert seen == [(0, F32(0.1)), (1, F32(0.1)), (2, F32(F32(0.1) * 0.5))]
    assert model.optimizer.learning_rate == F32(F32(0.1) * 0.5) * 0.5
    assert history.history["learning_rate"] == [F32(0.1), F32(F32(0.1) * 0.5),
                                                F32(F32(F32(0.1) * 0.5) * 0.5)]
    out = capsys.readouterr().out
    assert f"\nEpoch 1: LearningRateScheduler setting learning rate to {F32(0.1)}.\n" in out
    assert out.count("LearningRateScheduler setting") == 3


def test_learning_rate_scheduler_one_argument_form():
    model = OptimizerModel(0.1)
    _, history = fit([LearningRateScheduler(lambda epoch: 0.02 / (epoch + 1))], [1.0, 1.0],
                     model=model)
    assert history.history["learning_rate"] == [F32(0.02), F32(0.01)]
    assert model.optimizer.learning_rate == 0.01


@pytest.mark.parametrize("bad", [1, -0.1, float("nan"), "0.1", None])
def test_learning_rate_scheduler_refuses_a_bad_rate(bad):
    model = OptimizerModel(0.1)
    with pytest.raises(ValueError, match=r"LearningRateScheduler: expected a learning rate "
                                         r"that is a float >= 0\. Received: "):
        fit([LearningRateScheduler(lambda epoch, lr: bad)], [1.0], model=model)
    assert model.optimizer.learning_rate == 0.1


def test_learning_rate_scheduler_accepts_numpy_floats():
    model = OptimizerModel(0.1)
    fit([LearningRateScheduler(lambda epoch, lr: np.float32(0.25))], [1.0], model=model)
    assert model.optimizer.learning_rate == 0.25 and type(model.optimizer.learning_rate) is float


def test_learning_rate_scheduler_refuses_an_optimizer_with_a_schedule():
    model = OptimizerModel(lambda iterations: 0.1)
    with pytest.raises(TypeError, match=r"LearningRateScheduler: the optimizer was created "
                                        r"with a schedule"):
        fit([LearningRateScheduler(lambda epoch, lr: lr)], [1.0], model=model)


def test_learning_rate_scheduler_needs_a_function():
    with pytest.raises(TypeError, match=r"`schedule`.*Received: 0\.1"):
        LearningRateScheduler(0.1)


def plateau(values, model=None, **kwargs):
    """Runs ReduceLROnPlateau over scripted val_loss values; returns (callback, lr history)."""
    model = model or OptimizerModel(1.0)
    callback = ReduceLROnPlateau(**kwargs)
    _, history = fit([callback], values, model=model)
    return callback, history.history["learning_rate"], model


def test_reduce_lr_on_plateau_patience_factor_and_floor():
    # Improves, then two epochs without (patience 2): reduced at the end of epoch 3; again
    # two epochs later; the floor stops the third reduction at min_lr.
    callback, rates, model = plateau([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], factor=0.5,
                                     patience=2, min_lr=0.2)
    # learning_rate in the logs is the rate the epoch trained with, before any reduction.
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, F32(0.2)]
    assert model.optimizer.learning_rate == 0.2
    assert callback.best == 1.0 and callback.wait == 1  # at the floor: no reduction, counting


def test_reduce_lr_on_plateau_min_delta_and_improvements():
    # min_delta 0.1: 0.95 is no improvement on 1.0; 0.85 is; patience 1 reduces at once.
    _, rates, _ = plateau([1.0, 0.95, 0.85, 0.8, 0.5], factor=0.1, patience=1, min_delta=0.1)
    assert rates == [1.0, 1.0, F32(0.1), F32(0.1), F32(F32(0.1) * 0.1)]


def test_reduce_lr_on_plateau_cooldown():
    # patience 0: every non-improving epoch reduces, except in cooldown. As in Keras, the
    # counter is decremented before the check, so cooldown=2 rests one epoch, not two:
    # reductions at the ends of epochs 2, 4 and 6 (one-based), the last epoch then resting.
    callback, rates, _ = plateau([1.0] * 7, factor=0.5, patience=0, cooldown=2)
    assert rates == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert callback.cooldown_counter == 1


def test_reduce_lr_on_plateau_max_mode_for_accuracy():
    model = OptimizerModel(1.0)
    callback = ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=0)
    assert callback.maximize
    _, history = fit([callback], [0.5, 0.6, 0.55], monitor="val_accuracy", model=model)
    assert history.history["learning_rate"] == [1.0, 1.0, 1.0]
    assert model.optimizer.learning_rate == 0.5


def test_reduce_lr_on_plateau_verbose_line(capsys):
    plateau([1.0, 1.0], factor=0.3, patience=1, verbose=1, model=OptimizerModel(0.1))
    assert (f"\nEpoch 2: ReduceLROnPlateau reducing learning rate to {F32(0.1) * 0.3}.\n"
            in capsys.readouterr().out)


def test_reduce_lr_on_plateau_missing_monitor_warns():
    callback = ReduceLROnPlateau(patience=0)
    callback.set_model(OptimizerModel(0.1))
    with pytest.warns(UserWarning, match=re.escape(
            "Learning rate reduction is conditioned on metric `val_loss` which is not "
            "available. Available metrics are: loss,learning_rate")):
        callback.on_epoch_end(0, {"loss": 1.0})
    assert callback.model.optimizer.learning_rate == 0.1


@pytest.mark.parametrize("kwargs, match", [
    ({"factor": 1.0}, r"factor >= 1\.0\. Received factor=1\.0"),
    ({"mode": "best"}, r"`mode` of ReduceLROnPlateau.*Received: mode='best'"),
])
def test_reduce_lr_on_plateau_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReduceLROnPlateau(**kwargs)


def test_reduce_lr_on_plateau_is_reusable_across_fits():
    model = OptimizerModel(1.0)
    callback = ReduceLROnPlateau(factor=0.5, patience=1)
    fit([callback], [1.0, 2.0], model=model)
    assert model.optimizer.learning_rate == 0.5 and callback.best == 1.0
    fit([callback], [3.0], model=model)  # a new fit: 3.0 is its first value, so the best
    assert callback.best == 3.0 and callback.wait == 0
    assert model.optimizer.learning_rate == 0.5


# ---------------------------------------------------------------- ModelCheckpoint


class SavingModel(FakeModel):
    """A fake model whose save_weights writes a file naming the epoch of its weights."""

    def __init__(self):
        super().__init__()
        self.saved = []

    def save_weights(self, filepath, overwrite=True):
        self.saved.append(filepath)
        with open(filepath, "w") as f:
            f.write(str(epoch_of(self)))


def test_model_checkpoint_every_epoch_formats_the_path(tmp_path, capsys):
    model = SavingModel()
    pattern = str(tmp_path / "ckpt" / "{epoch:02d}-{val_loss:.2f}.weights.npz")
    fit([ModelCheckpoint(pattern, save_weights_only=True, verbose=1)], [0.5, 0.25], model=model)
    expected = [str(tmp_path / "ckpt" / "01-0.50.weights.npz"),
                str(tmp_path / "ckpt" / "02-0.25.weights.npz")]
    assert model.saved == expected  # the missing directory was created
    assert [open(p).read() for p in expected] == ["0", "1"]
    out = capsys.readouterr().out
    assert f"\nEpoch 2: saving model to {expected[1]}\n" in out
    assert f"\nEpoch 2: finished saving model to {expected[1]}\n" in out


def test_model_checkpoint_save_best_only(tmp_path, capsys):
    model = SavingModel()
    path = str(tmp_path / "best.weights.npz")
    callback = ModelCheckpoint(path, save_weights_only=True, save_best_only=True, verbose=1)
    fit([callback], [0.5, 0.7, 0.3, 0.3, 0.4], model=model)
    # Saved at epochs 1 and 3 (one-based) only: an equal value is no improvement.
    assert len(model.saved) == 2 and open(path).read() == "2" and callback.best == 0.3
    out = capsys.readouterr().out
    assert "\nEpoch 1: val_loss improved from None to 0.50000, saving model to" in out
    assert "\nEpoch 2: val_loss did not improve from 0.50000\n" in out
    assert "\nEpoch 3: val_loss improved from 0.50000 to 0.30000, saving model to" in out


def test_model_checkpoint_max_mode_and_initial_threshold(tmp_path):
    model = SavingModel()
    callback = ModelCheckpoint(str(tmp_path / "w.npz"), monitor="val_accuracy",
                               save_weights_only=True, save_best_only=True,
                               initial_value_threshold=0.6)
    fit([callback], [0.5, 0.65, 0.6, 0.9], monitor="val_accuracy", model=model)
    assert [open(p).read() for p in model.saved] == ["3", "3"]  # the same file, rewritten
    assert len(model.saved) == 2 and callback.best == 0.9


def test_model_checkpoint_every_n_batches(tmp_path):
    model = SavingModel()
    callback = ModelCheckpoint(str(tmp_path / "{epoch}-{batch}.npz"), save_weights_only=True,
                               save_freq=3)
    cbs = CallbackList([callback], model=model, epochs=2, steps=2)
    assert cbs.runs_per_batch  # a batch hook only with a number of batches
    assert not CallbackList([ModelCheckpoint("x.npz", save_weights_only=True)]).runs_per_batch
    for epoch in range(2):
        cbs.on_epoch_begin(epoch)
        for batch in range(2):
            model.train_one_epoch(epoch)
            cbs.on_train_batch_end(batch, {"loss": 1.0})
        cbs.on_epoch_end(epoch, {"loss": 1.0})
    # Batches counted across epochs: the third is epoch 2's first.
    assert model.saved == [str(tmp_path / "2-1.npz")]


def test_model_checkpoint_missing_monitor_warns_and_saves(tmp_path):
    model = SavingModel()
    callback = ModelCheckpoint(str(tmp_path / "w.npz"), save_weights_only=True,
                               save_best_only=True)
    with pytest.warns(UserWarning, match="Can save best model only with val_loss available"):
        fit([callback], [1.0], monitor="val_accuracy", model=model)
    assert len(model.saved) == 1


def test_model_checkpoint_unknown_path_field(tmp_path):
    callback = ModelCheckpoint(str(tmp_path / "{val_acc:.2f}.npz"), save_weights_only=True)
    with pytest.raises(KeyError, match=r"Failed to format this callback filepath.*val_acc.*"
                                       r"Available fields: epoch, loss, val_loss"):
        fit([callback], [1.0], model=SavingModel())


def test_model_checkpoint_refuses_a_directory_path(tmp_path):
    with pytest.raises(IsADirectoryError, match="existing directory"):
        fit([ModelCheckpoint(str(tmp_path), save_weights_only=True)], [1.0],
            model=SavingModel())


@pytest.mark.parametrize("kwargs, match", [
    ({"save_weights_only": True, "save_freq": "batch"},
     r"`save_freq`.*Received: save_freq='batch'"),
    ({"save_weights_only": True, "save_freq": 0}, r"Received: save_freq=0"),
    ({"save_weights_only": True, "mode": "best"}, r"`mode` of ModelCheckpoint"),
])
def test_model_checkpoint_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint("w.npz", **kwargs)


def test_model_checkpoint_best_weights_are_early_stoppings_best(tmp_path):
    """A real fit: the checkpoint saved on the best val_loss holds the weights EarlyStopping
    restores (same monitor, same float32 comparison)."""
    import nnlite

    r = np.random.default_rng(3)
    x = r.standard_normal((200, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = nnlite.Sequential([nnlite.Input((6,)), nnlite.layers.Dense(8, activation="relu"),
                               nnlite.layers.Dense(2, activation="softmax")], seed=1)
    model.compile(optimizer=nnlite.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    path = str(tmp_path / "best.weights.npz")
    stop = EarlyStopping(patience=100, restore_best_weights=True)
    history = model.fit(x[:150], y[:150], validation_data=(x[150:], y[150:]), epochs=12,
                        batch_size=16, verbose=0, callbacks=[
                            ModelCheckpoint(path, save_weights_only=True, save_best_only=True),
                            stop])
    val = history.history["val_loss"]
    assert stop.best_epoch != len(val) - 1, f"the last epoch is the best: {val}"
    restored = model.get_weights()
    model.load_weights(path)
    for a, b in zip(model.get_weights(), restored):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- CSVLogger


def test_csv_logger_rows_as_keras_writes_them(tmp_path):
    path = tmp_path / "log.csv"
    fit([CSVLogger(path)], [0.5, 0.25])
    # Keras's layout: epoch, then the keys sorted; excel-dialect rows end with \r\n.
    assert path.read_bytes() == b"epoch,loss,val_loss\r\n0,1.0,0.5\r\n1,1.0,0.25\r\n"


def test_csv_logger_adds_val_columns_when_there_are_none(tmp_path):
    path = tmp_path / "log.csv"
    fit([CSVLogger(path, separator=";")], [0.9], monitor="accuracy")
    assert path.read_bytes().decode() == ("epoch;accuracy;loss;val_accuracy;val_loss\r\n"
                                          "0;0.9;1.0;NA;NA\r\n")


def test_csv_logger_append(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("")  # an empty file still gets the header
    logger = CSVLogger(path, append=True)
    fit([logger], [0.5])
    fit([logger], [0.4, 0.3])
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,1.0,0.5", "0,1.0,0.4",
                                             "1,1.0,0.3"]
    fit([CSVLogger(path)], [0.2])  # without append: overwritten
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,1.0,0.2"]


def test_csv_logger_flushes_each_row_and_closes(tmp_path):
    path = tmp_path / "log.csv"
    logger = CSVLogger(path)
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 2.0, "val_loss": 3.0, "lengths": [1, 2]})
    # Sequences become a quoted "[1, 2]" string (then quoted again by the csv module).
    assert path.read_bytes().decode() == ('epoch,lengths,loss,val_loss\r\n'
                                          '0,"""[1, 2]""",2.0,3.0\r\n')
    logger.on_train_end()
    assert logger.csv_file.closed


def test_csv_logger_in_a_real_fit_matches_history(tmp_path):
    import csv

    import nnlite

    r = np.random.default_rng(4)
    x = r.standard_normal((120, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nnlite.Sequential([nnlite.Input((5,)), nnlite.layers.Dense(2, activation="softmax")],
                              seed=2)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    path = tmp_path / "fit.csv"
    history = model.fit(x, y, epochs=3, batch_size=32, validation_split=0.25, verbose=0,
                        callbacks=[CSVLogger(path)])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    for key, values in history.history.items():
        assert [float(row[key]) for row in rows] == values  # repr round-trips exactly
