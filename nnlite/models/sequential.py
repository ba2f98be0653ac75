"""``Sequential``: a stack of layers trained with hand-written backprop, with Keras's model API.

One training step, written out (``train_on_batch`` and ``fit`` run exactly this):

    y_pred = layers[-1](...layers[0](x))                  forward, caching what backward needs
    loss, dy = loss.value_and_grad(y_true, y_pred)        (fused softmax + CE: dz = (p − t)/N)
    for layer in reversed(layers): dy = layer.backward(dy)   each layer fills layer.grads
    optimizer.apply_gradients(zip(grads, params))         in place

The reported ``loss`` and metrics are those of the forward pass before the update, averaged over
the samples seen so far in the epoch (weighted by batch size), as Keras reports them.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from contextlib import contextmanager

import numpy as np

from nnlite import backend as backend_module
from nnlite import config
from nnlite import losses as losses_module
from nnlite import metrics as metrics_module
from nnlite import optimizers as optimizers_module
from nnlite._files import atomic_write
from nnlite.backend import get_backend
from nnlite.callbacks import CallbackList
from nnlite.layers.activation import Activation
from nnlite.layers.base import Layer, unique_name
from nnlite.layers.core import Dense, InputLayer
from nnlite.models.dense_stack import DenseStack
from nnlite.random import generator

#: Under a live progress bar, the compiled loop of a Dense stack returns to Python about this
#: often to redraw it (the bar's own redraw interval).
PROGRESS_SECONDS = 0.05


class NonFiniteLossWarning(UserWarning):
    """The training loss became NaN or infinite; ``fit`` stopped."""


class _RunningMeans:
    """Sample-weighted running means of the loss and metrics over one epoch, as Keras's Mean.

    Sums accumulate in the loss's dtype (Keras's metric variables are floatx) and, on a GPU
    backend, on the device: reading :meth:`result` is the only host synchronisation.
    """

    def __init__(self, metrics):
        self.metrics = metrics
        self.count = 0
        self.loss_sum = None
        self.metric_sums = [None] * len(metrics)

    def update(self, loss, y_true, y_pred) -> None:
        n = y_pred.shape[0]
        self.count += n
        self.loss_sum = _accumulate(self.loss_sum, loss * n)
        for i, metric in enumerate(self.metrics):
            self.metric_sums[i] = _accumulate(self.metric_sums[i],
                                              metric.values(y_true, y_pred).sum())

    def update_steps(self, losses, n: int, correct=None) -> None:
        """:meth:`update` for steps of ``n`` samples each, from their losses and, for accuracy
        metrics, their counts of right predictions (DenseStack.train)."""
        for step, loss in enumerate(losses):
            self.count += n
            self.loss_sum = _accumulate(self.loss_sum, loss * n)
            for i in range(len(self.metrics)):
                # The sum Keras's accuracy would give: ones and zeros in the loss's dtype.
                self.metric_sums[i] = _accumulate(self.metric_sums[i],
                                                  loss.dtype.type(correct[step]))

    def result(self) -> dict:
        count = max(self.count, 1)
        logs = {"loss": _mean(self.loss_sum, count)}
        for metric, total in zip(self.metrics, self.metric_sums):
            logs[metric.name] = _mean(total, count)
        return logs


def _out_of_memory(model, backend, batch_size, exc):
    """A clear error for an out-of-memory failure, with a batch size to try."""
    return backend_module.OutOfDeviceMemory(
        f"{model.name}.fit ran out of memory on the {backend.name!r} backend with "
        f"batch_size={batch_size} ({exc}). Try batch_size={max(1, batch_size // 2)} or a "
        "smaller model."
    )


def _accumulate(total, value):
    return value if total is None else total + value


def _mean(total, count) -> float:
    return 0.0 if total is None else float(total / count)


class Sequential:
    """A linear stack of layers, as ``keras.Sequential``.

    Args:
        layers: list of layers; the first may be ``nnlite.Input(shape)``, or the first layer may
            take ``input_shape=``.
        name: model name.
        seed: seed of a private random generator for this model's initial weights, shuffling and
            dropout (nnlite extension); without it the global generator is used, which
            ``nnlite.utils.set_random_seed`` reseeds.

    Example:
        >>> import nnlite as keras
        >>> model = keras.Sequential([
        ...     keras.Input(shape=(784,)),
        ...     keras.layers.Dense(50, activation="relu"),
        ...     keras.layers.Dense(10, activation="softmax"),
        ... ])
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
        ...               metrics=["accuracy"])
        >>> history = model.fit(x_train, y_train, batch_size=100, epochs=5, validation_split=0.1)
    """

    def __init__(self, layers=None, name: str | None = None, seed: int | None = None):
        self.name = name or unique_name("sequential")
        self.layers: list[Layer] = []
        self._input_shape: tuple | None = None
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self.optimizer = None
        self.loss = None
        self.metrics: list = []
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._fused = False
        self._packed_key = None
        self._packed: list = []
        self._batch_buffers: dict = {}
        # A plain Dense stack trains through one backend call per step (models/dense_stack.py);
        # False forces the layer-by-layer path (the tests compare the two).
        self._use_stack = True
        self._stack = self._stack_key = None
        for layer in layers or []:
            self.add(layer)

    # -- structure -----------------------------------------------------------------------------

    def add(self, layer) -> None:
        """Append a layer (or set the input shape with an ``Input``)."""
        if isinstance(layer, InputLayer):
            if self.layers:
                raise ValueError(f"{self.name}: an Input can only be the first element")
            self._input_shape = layer.shape
            return
        if not isinstance(layer, Layer):
            raise TypeError(
                f"{self.name}.add: expected an nnlite layer, received {type(layer).__name__}"
            )
        if not self.layers and self._input_shape is None and layer._input_shape_arg is not None:
            self._input_shape = layer._input_shape_arg
        if self._rng is not None and layer._rng is None:
            layer._rng = self._rng
        self.layers.append(layer)
        if self._input_shape is not None:
            self.build()

    def pop(self) -> Layer:
        """Remove and return the last layer."""
        if not self.layers:
            raise ValueError(f"{self.name}.pop: the model has no layers")
        layer = self.layers.pop()
        self._configure_loss()
        return layer

    @property
    def built(self) -> bool:
        """True when every layer has its parameters."""
        return bool(self.layers) and all(layer.built for layer in self.layers)

    def build(self, input_shape=None) -> None:
        """Build every layer for inputs of ``input_shape``, batch axis first, as Keras:
        ``build((None, 784))`` or ``build((32, 784))``.

        Raises:
            ValueError: naming the layer, when a layer built earlier expects another shape.
        """
        if input_shape is not None:
            input_shape = tuple(input_shape)
            if len(input_shape) < 2:
                raise ValueError(
                    f"{self.name}.build: expected a shape with a batch axis first, such as "
                    f"(None, 784), received {input_shape}"
                )
            self._input_shape = input_shape[1:]
        if self._input_shape is None:
            raise ValueError(f"{self.name}: the input shape is unknown; add an Input or call fit")
        shape = (None,) + tuple(self._input_shape)
        for layer in self.layers:
            if not layer.built:
                layer.build(shape)
            elif tuple(layer.input_shape[1:]) != tuple(shape[1:]):
                raise ValueError(
                    f"Layer {layer.name!r} expects inputs of shape {layer.input_shape}, "
                    f"received {shape}"
                )
            shape = layer.output_shape
        # Layers with nothing trainable upstream need not compute the gradient of their input.
        self._first_param_layer = next(
            (i for i, layer in enumerate(self.layers) if layer.params), len(self.layers)
        )
        for i, layer in enumerate(self.layers):
            layer.input_grad = i > self._first_param_layer

    @property
    def input_shape(self) -> tuple:
        """``(None,) + sample shape``."""
        return (None,) + tuple(self._input_shape) if self._input_shape is not None else None

    @property
    def output_shape(self) -> tuple:
        """Shape of the model output, batch axis as None."""
        return self.layers[-1].output_shape if self.built else None

    # -- compile -------------------------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, metrics=None) -> None:
        """Configure training, as ``keras.Model.compile``.

        Args:
            optimizer: name ("sgd", "adam", "rmsprop") or optimizer instance.
            loss: name ("sparse_categorical_crossentropy", "categorical_crossentropy",
                "mean_squared_error"/"mse") or loss instance.
            metrics: list of metric names ("accuracy", ...) or metric objects.
        """
        # Resolve everything first, so a bad argument leaves the model as it was.
        resolved_optimizer = optimizers_module.get(optimizer)
        resolved_loss = losses_module.get(loss) if loss is not None else None
        if metrics is None:
            metrics = []
        elif isinstance(metrics, (str, metrics_module.Metric)):
            metrics = [metrics]
        resolved_metrics = [metrics_module.get(m) for m in metrics]
        self.optimizer, self.loss = resolved_optimizer, resolved_loss
        self.metrics = resolved_metrics
        self.compiled = True
        self._configure_loss()

    def _configure_loss(self) -> None:
        """Decide whether the last softmax and the cross-entropy are fused (stable gradient)."""
        last = self.layers[-1] if self.layers else None
        self._fused = (
            isinstance(self.loss, losses_module._Crossentropy)
            and not self.loss.from_logits
            and isinstance(last, (Dense, Activation))
            and last.activation.name == "softmax"
        )

    def _require_compiled(self, what: str) -> None:
        if not self.compiled or self.loss is None:
            raise RuntimeError(
                f"{self.name}.{what}: the model must be compiled with a loss first: "
                "model.compile(optimizer=..., loss=...)"
            )

    # -- data checks ---------------------------------------------------------------------------

    def _check_x(self, x, what: str):
        if x is None:
            raise ValueError(f"{self.name}.{what}: expected input data `x`, received None")
        x = np.asarray(x) if not hasattr(x, "__cuda_array_interface__") else x
        if x.dtype.kind not in "biuf":
            raise TypeError(
                f"{self.name}.{what}: expected a numeric array for `x`, received dtype {x.dtype}"
            )
        if x.ndim < 2:
            raise ValueError(
                f"{self.name}.{what}: expected `x` with a batch axis, shape (N, ...), "
                f"received shape {tuple(x.shape)}"
            )
        if x.dtype.kind == "f" and not _all_finite(x):
            raise ValueError(f"{self.name}.{what}: `x` contains NaN or infinite values")
        if self._input_shape is None:
            self._input_shape = tuple(x.shape[1:])
        if not self.built:
            self.build()
        if tuple(x.shape[1:]) != tuple(self._input_shape):
            raise ValueError(
                f"{self.name}.{what}: the model expects inputs of shape "
                f"{self.input_shape}, received {(None,) + tuple(x.shape[1:])} "
                f"(first layer {self.layers[0].name!r})"
            )
        return x

    def _check_y(self, y, n: int, what: str):
        if y is None:
            raise ValueError(f"{self.name}.{what}: expected targets `y`, received None")
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise TypeError(
                f"{self.name}.{what}: expected a numeric array for `y`, received dtype {y.dtype}"
            )
        if y.shape[0] != n:
            raise ValueError(
                f"{self.name}.{what}: `x` has {n} samples but `y` has {y.shape[0]}"
            )
        if y.dtype.kind == "f" and not _all_finite(y):
            raise ValueError(f"{self.name}.{what}: `y` contains NaN or infinite values")
        probe = np.zeros((min(n, 1),) + tuple(self.output_shape[1:]), dtype=config.floatx())
        self.loss.check_target(y[: probe.shape[0]], probe)
        if getattr(self.loss, "sparse", False):
            # Every label once here, so the steps can skip the per-batch value checks.
            losses_module._check_labels(y, self.output_shape[-1])
        return y

    # -- one step ------------------------------------------------------------------------------

    def _forward(self, x, training: bool):
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    def _loss_and_backward(self, y_true, y_pred):
        """Loss of the batch and the backward pass through every layer that needs it."""
        layers = self.layers[self._first_param_layer:]
        if self._fused:
            last = self.layers[-1]
            loss, dz = self.loss.value_and_grad_logits(y_true, last.logits, validate=False)
            dy = last.backward_from_logits(dz)
            layers = layers[:-1]
        else:
            loss, dy = self.loss.value_and_grad(y_true, y_pred, validate=False)
        for layer in reversed(layers):
            dy = layer.backward(dy)
        return loss

    def _grads_and_vars(self):
        if self._packed:
            return self._packed
        return [(layer.grads[key], param) for layer in self.layers if layer.trainable
                for key, param in layer.params.items()]

    def _pack_parameters(self) -> None:
        """Move all trainable parameters into one flat array per dtype (and their gradients into
        another), leaving views in each layer's ``params``/``grads``: an optimizer step is then
        one element-wise pass over a single vector instead of one call per parameter."""
        backend = get_backend()
        # Keyed on the array module, not the backend name: NumPy and Numba share arrays, and
        # repacking would start the optimizer's state (keyed by the flat array) from zero.
        key = (backend.xp.__name__,
               tuple((id(layer), layer.trainable) for layer in self.layers))
        if key == self._packed_key:
            return
        packed = []
        for items in self._trainable_groups():
            dtype = items[0][2].dtype
            total = sum(int(param.size) for _, _, param in items)
            flat = backend.xp.empty(total, dtype=dtype)
            flat_grad = backend.xp.zeros(total, dtype=dtype)
            start = 0
            for layer, name, param in items:
                stop = start + int(param.size)
                view = flat[start:stop].reshape(param.shape)
                view[...] = backend.asarray(param)
                layer.params[name] = view
                layer.grads[name] = flat_grad[start:stop].reshape(param.shape)
                start = stop
            packed.append((flat_grad, flat))
        self._packed, self._packed_key = packed, key

    def _trainable_groups(self) -> list:
        """The trainable parameters as ``(layer, name, param)``, grouped by dtype, layer by
        layer: the order in which :meth:`_pack_parameters` packs each group into one vector."""
        groups: dict = {}
        for layer in self.layers:
            if layer.trainable:
                for name, param in layer.params.items():
                    groups.setdefault(np.dtype(param.dtype), []).append((layer, name, param))
        return list(groups.values())

    @contextmanager
    def _loop(self, training: bool, batch_size: int | None = None):
        """The model's own loops: layers reuse preallocated buffers, parameters are packed, and
        for a loop over batches of ``batch_size``, BLAS runs on one thread when its steps are
        small (``config.auto_threads``; not for single calls such as ``train_on_batch``, where
        setting the limit would cost more than the step)."""
        if training:
            self._pack_parameters()
            key = (self._packed_key, id(self.loss), self._fused)
            if not self._use_stack:
                self._stack = self._stack_key = None
            elif key != self._stack_key:
                self._stack, self._stack_key = DenseStack.of(self), key
        previous = [layer.reuse_buffers for layer in self.layers]
        for layer in self.layers:
            layer.reuse_buffers = True
        try:
            threads = (contextlib.nullcontext() if batch_size is None
                       else config.auto_threads(self._step_flops(batch_size, training)))
            with threads:
                yield
        finally:
            for layer, flag in zip(self.layers, previous):
                layer.reuse_buffers = flag

    def _train_step(self, x, y):
        if self._stack is not None:
            loss, y_pred = self._stack.step(x, y)
        else:
            y_pred = self._forward(x, training=True)
            loss = self._loss_and_backward(y, y_pred)
        self.optimizer.apply_gradients(self._grads_and_vars())
        return loss, y_pred

    def _test_step(self, x, y):
        y_pred = self._forward(x, training=False)
        if self._fused:
            loss, _ = self.loss.value_and_grad_logits(y, self.layers[-1].logits, validate=False)
        else:
            loss, _ = self.loss.value_and_grad(y, y_pred, validate=False)
        return loss, y_pred

    def _batch(self, data, index):
        """The input rows ``data[index]`` in floatx, gathered into a reused buffer in loops."""
        backend = get_backend()
        dtype = config.floatx()
        if isinstance(index, slice):
            index = np.arange(*index.indices(data.shape[0]))
        shape = (len(index),) + data.shape[1:]
        out = None
        if self.layers and self.layers[0].reuse_buffers:
            key = (shape, dtype, backend.xp.__name__)
            out = self._batch_buffers.get(key)
            if out is None:
                out = self._batch_buffers[key] = backend.xp.empty(shape, dtype=dtype)
        return backend.gather(data, index, np.dtype(dtype), out=out)

    def _targets(self, y, index):
        return get_backend().asarray(y[index])

    # -- training ------------------------------------------------------------------------------

    def fit(self, x=None, y=None, batch_size=None, epochs: int = 1, verbose="auto",
            callbacks=None, validation_split: float = 0.0, validation_data=None,
            shuffle: bool = True, initial_epoch: int = 0):
        """Train for ``epochs`` epochs, as ``keras.Model.fit``.

        Args:
            x, y: training inputs (N, ...) and targets (labels (N,) or one-hot (N, C)).
            batch_size: samples per step (default 32).
            epochs: index of the last epoch (training runs from ``initial_epoch``).
            verbose: "auto" or 1 (progress bar), 2 (one line per epoch), 0 (silent).
            callbacks: list of ``nnlite.callbacks.Callback``.
            validation_split: fraction in [0, 1) of the data, taken from the end before any
                shuffling, held out for validation (ignored when ``validation_data`` is given).
            validation_data: ``(x_val, y_val)``.
            shuffle: reshuffle the training samples before each epoch.

        Returns:
            the ``History`` callback; ``history.history`` maps "loss", each metric and their
            "val_" twins to per-epoch lists.
        """
        self._require_compiled("fit")
        x = self._check_x(x, "fit")
        y = self._check_y(y, x.shape[0], "fit")
        if not 0 <= validation_split < 1:
            raise ValueError(
                f"{self.name}.fit: expected `validation_split` in [0, 1), "
                f"received {validation_split!r}"
            )
        if validation_data is None and validation_split > 0:
            split = int(math.floor(x.shape[0] * (1.0 - validation_split)))
            validation_data = (x[split:], y[split:])
            x, y = x[:split], y[:split]
        x_val = y_val = None
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError(
                    f"{self.name}.fit: expected `validation_data` as (x_val, y_val), "
                    f"received a sequence of {len(validation_data)}"
                )
            x_val = self._check_x(validation_data[0], "fit")
            y_val = self._check_y(validation_data[1], x_val.shape[0], "fit")
        batch_size = self._check_batch_size(batch_size, "fit")
        n = x.shape[0]
        if n == 0:
            raise ValueError(f"{self.name}.fit: no training samples")
        steps = math.ceil(n / batch_size)
        cbs = CallbackList(callbacks, add_history=True, add_progbar=verbose != 0, model=self,
                           verbose=verbose, epochs=epochs, steps=steps)
        self.stop_training = False
        backend = get_backend()
        # On a GPU the data are uploaded once; on the CPU this changes nothing.
        x, y = backend.to_device(x), backend.to_device(y)
        if x_val is not None:
            x_val, y_val = backend.to_device(x_val), backend.to_device(y_val)
        cbs.on_train_begin()
        try:
            with self._loop(training=True, batch_size=batch_size):
                logs = self._fit_epochs(x, y, x_val, y_val, batch_size, epochs, initial_epoch,
                                        shuffle, steps, cbs)
        except backend.memory_errors as exc:
            raise _out_of_memory(self, backend, batch_size, exc) from exc
        cbs.on_train_end(logs)
        return self.history

    def _fit_epochs(self, x, y, x_val, y_val, batch_size, epochs, initial_epoch, shuffle,
                    steps, cbs) -> dict:
        n = x.shape[0]
        rng = generator(self)
        backend = get_backend()
        # Per-batch logs are computed only when a callback shows or reads them (on a GPU each
        # one is a host synchronisation); the loss is still checked every step on the CPU.
        batch_logs = cbs.runs_per_batch or cbs.live_progress
        check_each_step = backend.xp is np
        # One batch of every sample (full-batch gradient descent): its mean loss and gradient do
        # not depend on the order of the samples, so the step reads x itself instead of a
        # shuffled copy (rounding aside, the same numbers; one dataset-sized copy less).
        whole = (steps == 1 and x.dtype == np.dtype(config.floatx())
                 and x.flags.c_contiguous)
        # When nothing reads the model between two steps (no per-batch callback but a live
        # progress bar; no metric but accuracy, which the loop counts), a Dense stack runs its
        # full batches in compiled loops (DenseStack.train, see _compiled_steps).
        full = n // batch_size
        targets = None
        if (self._stack is not None and full and not whole and x.flags.c_contiguous
                and self._stack.counts(self.metrics) and not cbs.runs_per_batch):
            targets = self._stack.targets(y)
        logs = {}
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            order = backend.asarray(rng.permutation(n) if shuffle else np.arange(n))
            tracker = _RunningMeans(self.metrics)
            remaining = range(steps)
            if targets is not None and not self.stop_training:
                done = self._compiled_steps(x, targets, order, full, batch_size, epoch, tracker,
                                            cbs)
                if done is None:  # the optimizer has no compiled form
                    targets = None
                else:
                    # The partial last batch, if any, steps in Python (none after a NaN loss).
                    remaining = range(done, 0 if self.stop_training else steps)
            for step in remaining:
                cbs.on_train_batch_begin(step)
                if whole:
                    xb, yb = x, y
                else:
                    index = order[step * batch_size:(step + 1) * batch_size]
                    xb, yb = self._batch(x, index), self._targets(y, index)
                loss, y_pred = self._train_step(xb, yb)
                tracker.update(loss, yb, y_pred)
                logs = tracker.result() if batch_logs or step == steps - 1 else {}
                cbs.on_train_batch_end(step, logs)
                self._check_loss(loss if check_each_step else logs.get("loss", 0.0), epoch,
                                 step)
                if self.stop_training:
                    break
            logs = tracker.result()
            if x_val is not None:
                val = self._run_test(x_val, y_val, batch_size, None, 0)
                logs.update({f"val_{k}": v for k, v in val.items()})
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        return logs

    def _compiled_steps(self, x, targets, order, full, batch_size, epoch, tracker, cbs):
        """Run an epoch's ``full`` full batches through ``DenseStack.train``; returns how many
        steps ran (fewer after a non-finite loss), or None when the optimizer has no compiled
        form (nothing ran).

        One call runs them all, or, under a live progress bar, about one redraw interval
        (PROGRESS_SECONDS) of steps per call, each call ending with the bar's batch update.
        """
        chunk = 1 if cbs.live_progress else full  # a first step alone times the steps
        done = 0
        while done < full and not self.stop_training:
            steps = min(chunk, full - done)
            start = time.perf_counter()
            rows = order[done * batch_size:(done + steps) * batch_size]
            run = self._stack.train(x, targets, rows, batch_size, self.optimizer,
                                    count=bool(self.metrics))
            if run is None:
                return None
            losses, correct = run
            tracker.update_steps(losses, batch_size, correct)
            done += losses.size
            if cbs.live_progress:
                cbs.on_train_batch_end(done - 1, tracker.result())
                per_step = (time.perf_counter() - start) / losses.size
                chunk = max(1, int(PROGRESS_SECONDS / max(per_step, 1e-9)))
            self._check_loss(losses[-1], epoch, done - 1)
        return done

    def _check_loss(self, loss, epoch: int, step: int) -> None:
        """Stop training, with a warning, when a step's loss is NaN or infinite."""
        value = float(loss)
        if not math.isfinite(value):
            warnings.warn(
                f"Epoch {epoch + 1}, step {step + 1}: the loss became {value}; "
                "training stopped. Try a smaller learning rate.",
                NonFiniteLossWarning, stacklevel=3,
            )
            self.stop_training = True

    def _step_flops(self, batch_size: int, training: bool = True) -> float:
        """Approximate GEMM work of one step: 2·N·(parameters) forward, 6·N·(...) training."""
        return (6.0 if training else 2.0) * batch_size * self.count_params()

    def _check_batch_size(self, batch_size, what: str) -> int:
        """``batch_size`` validated (None means Keras's default, 32)."""
        if batch_size is None:
            return 32
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(
                f"{self.name}.{what}: expected `batch_size` to be a positive int, "
                f"received {batch_size!r}"
            )
        return int(batch_size)

    def _run_test(self, x, y, batch_size, callbacks, verbose) -> dict:
        n = x.shape[0]
        steps = math.ceil(n / batch_size)
        cbs = CallbackList(callbacks, add_progbar=verbose != 0, model=self, verbose=verbose,
                           epochs=1, steps=steps)
        cbs.on_test_begin()
        tracker = _RunningMeans(self.metrics)
        with self._loop(training=False, batch_size=batch_size):
            for step in range(steps):
                cbs.on_test_batch_begin(step)
                index = slice(step * batch_size, (step + 1) * batch_size)
                yb = self._targets(y, index)
                loss, y_pred = self._test_step(self._batch(x, index), yb)
                tracker.update(loss, yb, y_pred)
                cbs.on_test_batch_end(step, tracker.result())
        logs = tracker.result()
        cbs.on_test_end(logs)
        return logs

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", callbacks=None,
                 return_dict: bool = False):
        """Loss and metrics on ``(x, y)``, as ``keras.Model.evaluate``.

        Returns:
            ``[loss, metric...]``, the loss alone when there are no metrics, or a dict when
            ``return_dict`` is True.
        """
        self._require_compiled("evaluate")
        x = self._check_x(x, "evaluate")
        y = self._check_y(y, x.shape[0], "evaluate")
        batch_size = self._check_batch_size(batch_size, "evaluate")
        logs = self._run_test(x, y, batch_size, callbacks, verbose)
        return self._format_logs(logs, return_dict)

    def _format_logs(self, logs, return_dict):
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size=None, verbose="auto", callbacks=None) -> np.ndarray:
        """Model outputs for ``x`` as a NumPy array, computed in batches (inference mode)."""
        x = self._check_x(x, "predict")
        batch_size = self._check_batch_size(batch_size, "predict")
        n = x.shape[0]
        steps = math.ceil(n / batch_size)
        cbs = CallbackList(callbacks, add_progbar=verbose != 0, model=self, verbose=verbose,
                           epochs=1, steps=steps)
        cbs.on_predict_begin()
        backend = get_backend()
        out = []
        with self._loop(training=False, batch_size=batch_size):
            for step in range(steps):
                cbs.on_predict_batch_begin(step)
                index = slice(step * batch_size, (step + 1) * batch_size)
                y = self._forward(self._batch(x, index), training=False)
                # A copy: the layers' output buffers are reused by the next batch.
                out.append(np.array(backend.to_numpy(y)))
                cbs.on_predict_batch_end(step)
        cbs.on_predict_end()
        if not out:
            return np.zeros((0,) + tuple(self.output_shape[1:]), dtype=config.floatx())
        return np.concatenate(out)

    def __call__(self, x, training: bool = False):
        """Forward pass on one batch (backend array in, backend array out)."""
        x = self._check_x(x, "__call__")
        return self._forward(self._batch(x, slice(None)), training=training)

    def train_on_batch(self, x, y, return_dict: bool = False):
        """One gradient step on the batch; returns its loss (and metrics) before the update."""
        self._require_compiled("train_on_batch")
        x = self._check_x(x, "train_on_batch")
        y = self._check_y(y, x.shape[0], "train_on_batch")
        index = slice(None)
        yb = self._targets(y, index)
        with self._loop(training=True):
            loss, y_pred = self._train_step(self._batch(x, index), yb)
        tracker = _RunningMeans(self.metrics)
        tracker.update(loss, yb, y_pred)
        return self._format_logs(tracker.result(), return_dict)

    def test_on_batch(self, x, y, return_dict: bool = False):
        """Loss (and metrics) on one batch without updating."""
        self._require_compiled("test_on_batch")
        x = self._check_x(x, "test_on_batch")
        y = self._check_y(y, x.shape[0], "test_on_batch")
        yb = self._targets(y, slice(None))
        loss, y_pred = self._test_step(self._batch(x, slice(None)), yb)
        tracker = _RunningMeans(self.metrics)
        tracker.update(loss, yb, y_pred)
        return self._format_logs(tracker.result(), return_dict)

    def predict_on_batch(self, x) -> np.ndarray:
        """Outputs for one batch, as a NumPy array."""
        return get_backend().to_numpy(self(x))

    # -- weights -------------------------------------------------------------------------------

    @property
    def weights(self) -> list:
        """All parameter arrays, layer by layer, in Keras order."""
        return [w for layer in self.layers for w in layer.weights]

    @property
    def trainable_weights(self) -> list:
        """Parameters the optimizer updates."""
        return [w for layer in self.layers for w in layer.trainable_weights]

    def count_params(self) -> int:
        """Number of scalar parameters."""
        return sum(layer.count_params() for layer in self.layers)

    def get_weights(self) -> list[np.ndarray]:
        """Copies of all parameters as NumPy arrays (kernel, bias per layer, as Keras)."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights) -> None:
        """Assign all parameters from a list in :meth:`get_weights` order.

        Raises:
            ValueError: naming the layer, for a wrong count or shape; nothing is assigned then.
        """
        weights = list(weights)
        expected = sum(len(layer.params) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(
                f"{self.name}.set_weights: expected a list of {expected} arrays, "
                f"received {len(weights)}"
            )
        start = 0
        chunks = []
        for layer in self.layers:
            chunk = weights[start:start + len(layer.params)]
            for (key, param), value in zip(layer.params.items(), chunk):
                if tuple(np.shape(value)) != tuple(param.shape):
                    raise ValueError(
                        f"Layer {layer.name!r} weight {key!r}: expected shape "
                        f"{tuple(param.shape)}, received {tuple(np.shape(value))}"
                    )
            chunks.append((layer, chunk))
            start += len(layer.params)
        for layer, chunk in chunks:
            layer.set_weights(chunk)

    def save_weights(self, filepath, overwrite: bool = True) -> None:
        """Write all parameters to an ``.npz`` file, atomically (temporary file, then rename)."""
        filepath = os.fspath(filepath)
        if not overwrite and os.path.exists(filepath):
            raise FileExistsError(f"{self.name}.save_weights: {filepath!r} exists")
        arrays = self._weights_arrays()
        with atomic_write(filepath, "wb", suffix=".npz.tmp") as f:
            np.savez(f, **arrays)

    def _weights_arrays(self) -> dict:
        """The weights as named NumPy arrays whose keys sort into get_weights() order: layer
        index, then the weight's index in the layer."""
        arrays = {}
        for i, layer in enumerate(self.layers):
            for j, (key, value) in enumerate(zip(layer.params, layer.get_weights())):
                arrays[f"{i:03d}/{j:02d}/{layer.name}/{key}"] = value
        return arrays

    def save(self, filepath, overwrite: bool = True) -> None:
        """Write the whole model (architecture, weights, compile settings, optimizer state) to
        one archive, as Keras's ``model.save("model.keras")``; read it back with
        ``nnlite.models.load_model``. See :mod:`nnlite.models.saving` for the format (weights
        as ``.npz``: TensorFlow Keras cannot read these files)."""
        from nnlite.models.saving import save_model

        save_model(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath) -> None:
        """Load parameters written by :meth:`save_weights`.

        Raises:
            ValueError: naming the layer, when the file's arrays do not fit the model.
        """
        with np.load(os.fspath(filepath)) as data:
            keys = sorted(data.files)
            self.set_weights([data[k] for k in keys])

    # -- display -------------------------------------------------------------------------------

    def summary(self, print_fn=None) -> None:
        """Print a table of layers, output shapes and parameter counts, as Keras's summary."""
        print_fn = print_fn or print
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for layer in self.layers:
            shape = str(layer.output_shape) if layer.built else "?"
            rows.append((f"{layer.name} ({type(layer).__name__})", shape,
                         f"{layer.count_params():,}"))
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        widths = [max(widths[0], 30), max(widths[1], 24), max(widths[2], 14)]
        line = "━" * (sum(widths) + 2)
        print_fn(f'Model: "{self.name}"')
        print_fn(line)
        for j, row in enumerate(rows):
            print_fn(f"{row[0]:<{widths[0]}} {row[1]:<{widths[1]}} {row[2]:>{widths[2]}}")
            print_fn(line if j == 0 else "─" * (sum(widths) + 2))
        total = self.count_params()
        trainable = sum(layer.count_params() for layer in self.layers if layer.trainable)
        itemsize = np.dtype(config.floatx()).itemsize
        print_fn(f" Total params: {total:,} ({_bytes(total * itemsize)})")
        print_fn(f" Trainable params: {trainable:,} ({_bytes(trainable * itemsize)})")
        print_fn(f" Non-trainable params: {total - trainable:,} "
                 f"({_bytes((total - trainable) * itemsize)})")


def _all_finite(array, rows: int = 4096) -> bool:
    """``isfinite(array).all()`` in blocks of rows: no temporary the size of the dataset."""
    xp = np if isinstance(array, np.ndarray) else get_backend().xp
    return all(bool(xp.isfinite(array[i:i + rows]).all()) for i in range(0, len(array), rows))


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GB"  # pragma: no cover
