"""A model's Dense layers seen as one unit, so that a training step is one backend call.

Most MNIST models are a plain stack: ``[Input | Flatten] -> Dense -> ... -> Dense(softmax)`` with
a cross-entropy loss. For them :meth:`Sequential.fit` does not walk the layers one by one: it
hands the whole step (forward, fused softmax cross-entropy, backward) to
``backend.dense_stack_step``, which the Numba backend runs as one compiled function. The NumPy
backend's version is the same per-layer kernels called in a loop, the specification the
compiled step is tested against; the layer-by-layer path stays for every other model.

When nothing reads the model between two steps (no callback with a per-batch hook but the
progress bar, no metric but accuracy), ``fit`` goes one level further: :meth:`DenseStack.train`
hands the full batches of an epoch (all at once, or a redraw interval's worth at a time under a
live bar), with the optimizer's per-step scalars (``Optimizer.compiled_updates``), to
``backend.dense_stack_train``: gather, step, accuracy count and update, step after step, in one
compiled loop on the Numba backend (a Python loop over the same kernels on NumPy). The same
numbers as Python steps, bit for bit, except where the Numba loop splits a batch into row
blocks on several threads (the same sums in another order).

Each layer keeps its contract after a step: ``grads`` hold this step's gradients (views into
the model's packed gradient vector, as on the layer path) and the layer's cache holds this
step's input and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nnlite import losses as losses_module
from nnlite import metrics as metrics_module
from nnlite.backend import get_backend
from nnlite.layers.core import Dense, InputLayer
from nnlite.layers.reshaping import Flatten

#: Batch sizes whose buffers a stack keeps (a fit needs two: the batch and the last one).
MAX_PLANS = 4

#: Activations the compiled step knows (the Numba kernels' codes, in that order).
ACTIVATION_CODES = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3, "softmax": 4}


@dataclass
class LayerViews:
    """One layer's arrays inside a :class:`StackPlan` (views into flat vectors)."""

    activation: object
    kernel: object
    bias: object
    dkernel: object
    dbias: object
    z: object
    y: object
    dz: object
    dx: object


@dataclass
class StackPlan:
    """Everything one step of batch size ``n`` reads and writes, in two forms: the flat vectors
    with an offset table (for compiled kernels) and per-layer views (for array code).

    Attributes:
        params, grads: the model's packed parameter and gradient vectors.
        work: z, y, dz and dx of every layer for this batch size, in one vector.
        layout: (L, 8) int64; row l = D_in, D_out and the offsets of kernel, bias, z, y, dz, dx
            (-1 where absent: no bias, no dx for the first layer).
        codes: (L,) int64 activation codes (:data:`ACTIVATION_CODES`).
        layers: per-layer :class:`LayerViews`.
        outputs: per-layer ``(z, y)`` views into ``work``.
        largest: the most elements of one layer's z (n × the widest D_out).
        x: (n, D_in) buffer for the batches of a compiled loop (``DenseStack.train``; made on
            its first use).
        blocks: what a backend keeps for running the batch in row blocks, by block count.
    """

    params: object
    grads: object
    work: object
    layout: np.ndarray
    codes: np.ndarray
    layers: list
    outputs: list
    largest: int
    x: object = None
    blocks: dict = field(default_factory=dict)


class DenseStack:
    """The Dense layers of an eligible model and the flat layout of their arrays.

    Build it with :meth:`of`, which returns None for models that are not a plain Dense stack.
    """

    def __init__(self, layers, flat, flat_grad, loss):
        self.layers = layers
        self.loss = loss
        self.params, self.grads = flat, flat_grad
        self.codes = np.array([ACTIVATION_CODES[layer.activation.name] for layer in layers],
                              dtype=np.int64)
        self._param_offsets = self._offsets()
        self._plans: dict = {}

    @classmethod
    def of(cls, model) -> DenseStack | None:
        """The stack of ``model`` (compiled, parameters packed), or None when it is not one.

        Eligible: leading ``Input``/``Flatten`` layers, then only trainable Dense layers whose
        activations are linear, relu, sigmoid, tanh or softmax, all parameters in one packed
        vector, and a cross-entropy that is either fused with a final softmax or reads the
        logits of a final linear layer (``from_logits=True``). NumPy arrays only: on the GPU
        the layers run one by one.
        """
        layers = list(model.layers)
        while layers and isinstance(layers[0], (InputLayer, Flatten)):
            layers.pop(0)
        if not layers or not all(type(layer) is Dense for layer in layers):
            return None
        if not all(layer.trainable and layer.activation.name in ACTIVATION_CODES
                   for layer in layers):
            return None
        if len(layers[0].input_shape) != 2:
            return None
        loss, last = model.loss, layers[-1].activation.name
        logits_mode = (isinstance(loss, losses_module._Crossentropy) and loss.from_logits
                       and last == "linear")
        if not (model._fused or logits_mode):
            return None
        packed = model._packed
        if len(packed) != 1:
            return None
        flat_grad, flat = packed[0]
        if not isinstance(flat, np.ndarray):
            return None
        stack = cls(layers, flat, flat_grad, loss)
        return stack if stack._param_offsets is not None else None

    def _offsets(self):
        """Offsets of every kernel and bias in the packed vector (None if one is not in it)."""
        offsets = []
        for layer in self.layers:
            row = []
            for key in ("kernel", "bias"):
                param = layer.params.get(key)
                if param is None:
                    row.append(-1)
                    continue
                start = (param.ctypes.data - self.params.ctypes.data) // param.itemsize
                grad = layer.grads.get(key)
                if (not param.flags.c_contiguous or param.dtype != self.params.dtype
                        or not 0 <= start <= self.params.size - param.size or grad is None
                        or grad.ctypes.data != self.grads.ctypes.data + start * grad.itemsize):
                    return None
                row.append(start)
            offsets.append(row)
        return offsets

    def plan(self, n: int) -> StackPlan:
        """The :class:`StackPlan` for batch size ``n`` (allocated once per size)."""
        plan = self._plans.get(n)
        if plan is not None:
            return plan
        if len(self._plans) >= MAX_PLANS:  # e.g. train_on_batch with ever new batch sizes
            del self._plans[next(iter(self._plans))]
        layout, size = [], 0
        for index, (layer, (kernel_at, bias_at)) in enumerate(zip(self.layers,
                                                                  self._param_offsets)):
            d_in, d_out = layer.params["kernel"].shape
            # Linear layers write y over z (dense_forward returns (z, z) for them); the first
            # layer has no dx; the last layer's dz is the loss's dlogits.
            sizes = (n * d_out, 0 if layer.activation.name == "linear" else n * d_out,
                     n * d_out, n * d_in if index > 0 else 0)
            z_at, y_at, dz_at, dx_at = (size + sum(sizes[:k]) for k in range(4))
            size += sum(sizes)
            layout.append((d_in, d_out, kernel_at, bias_at, z_at, y_at if sizes[1] else z_at,
                           dz_at, dx_at if index > 0 else -1))
        work = get_backend().xp.empty(size, dtype=self.params.dtype)
        layout = np.array(layout, dtype=np.int64)
        views = []
        for layer, (d_in, d_out, _, _, z_at, y_at, dz_at, dx_at) in zip(self.layers,
                                                                        layout.tolist()):
            views.append(LayerViews(
                activation=layer.activation,
                kernel=layer.params["kernel"], bias=layer.params.get("bias"),
                dkernel=layer.grads["kernel"], dbias=layer.grads.get("bias"),
                z=_matrix(work, z_at, n, d_out), y=_matrix(work, y_at, n, d_out),
                dz=_matrix(work, dz_at, n, d_out), dx=_matrix(work, dx_at, n, d_in),
            ))
        plan = self._plans[n] = StackPlan(
            self.params, self.grads, work, layout, self.codes, views,
            outputs=[(v.z, v.y) for v in views], largest=n * int(layout[:, 1].max()),
        )
        return plan

    def step(self, x, y):
        """Forward, loss and backward of one batch; returns ``(loss, y_pred)``.

        Gradients land in the layers' ``grads`` (the packed gradient vector); the optimizer
        step is the model's, as on the layer path.
        """
        n = x.shape[0]
        x2 = x.reshape(n, -1)
        plan = self.plan(n)
        target, _ = self.loss._rows(y, plan.layers[-1].z, validate=False)
        loss, outputs = get_backend().dense_stack_step(x2, target, plan)
        return loss, self._keep(x2, outputs)

    def targets(self, y):
        """All of ``y`` as the loops read it: (N,) int64 labels or (N, C) one-hot in the
        parameters' dtype; None when ``y`` does not have that form (the per-step path then
        reports the problem)."""
        n, classes = y.shape[0], self.layers[-1].params["kernel"].shape[1]
        if getattr(self.loss, "sparse", False):
            if y.size != n:
                return None
            return np.ascontiguousarray(y.reshape(n), dtype=np.int64)
        if y.size != n * classes:
            return None
        return np.ascontiguousarray(y.reshape(n, classes), dtype=self.params.dtype)

    def counts(self, metrics) -> bool:
        """Whether a compiled loop can keep ``metrics``: each is Keras's accuracy of a
        categorical output ("accuracy", or the sparse or categorical one that fits the loss),
        which the loop counts as the number of right predictions per step."""
        sparse = getattr(self.loss, "sparse", False)
        kinds = (metrics_module.Accuracy,
                 metrics_module.SparseCategoricalAccuracy if sparse
                 else metrics_module.CategoricalAccuracy)
        classes = self.layers[-1].params["kernel"].shape[1]
        return classes > 1 and all(type(metric) in kinds for metric in metrics)

    def train(self, x, targets, order, batch_size: int, optimizer, count: bool = False):
        """Steps over full batches, ``order[s·B:(s+1)·B]`` for step s, with the optimizer's
        updates, in one backend call (``backend.dense_stack_train``).

        Args:
            x: all the inputs (N, ...), C-ordered.   targets: from :meth:`targets`.
            order: row indices, a multiple of ``batch_size`` long.
            count: also count each step's right predictions (see :meth:`counts`).
        Returns:
            ``(losses, correct)`` of the steps run (fewer than asked when a loss was not
            finite; ``correct`` None unless counted), or None when the optimizer has no
            compiled form (nothing was run).
        """
        steps = order.size // batch_size
        updates = optimizer.compiled_updates(self.params, steps)
        if updates is None:
            return None
        plan = self.plan(batch_size)
        if plan.x is None:
            plan.x = np.empty((batch_size, self.layers[0].params["kernel"].shape[0]),
                              dtype=self.params.dtype)
        losses = np.empty(steps, dtype=self.params.dtype)
        correct = np.zeros(steps, dtype=np.int64) if count else None
        done = get_backend().dense_stack_train(x.reshape(x.shape[0], -1), targets, order, plan,
                                               updates, losses, correct)
        optimizer.iterations += done
        if done:
            self._keep(plan.x, plan.outputs)
        return losses[:done], None if correct is None else correct[:done]

    def _keep(self, x, outputs):
        """Leave each layer's cache as its own forward pass does; returns the last output."""
        lead, a = (x.shape[0],), x
        for layer, (z, y_out) in zip(self.layers, outputs):
            layer._cache = (a, z, y_out, lead)
            a = y_out
        return a



def _matrix(flat, at: int, rows: int, cols: int):
    """The (rows, cols) view of ``flat`` from offset ``at``; None for an absent array (-1)."""
    return None if at < 0 else flat[at:at + rows * cols].reshape(rows, cols)
