"""The systems a workload is trained on: nnlite's backends, PyTorch and Keras, the same way.

Each trainer builds the same network (Glorot-uniform kernels, zero biases; the LSTM with an
orthogonal recurrent kernel and a forget-gate bias of 1, as Keras), trains it with the same
optimizer, batch size and a fresh shuffle of the training samples each epoch, and times every
epoch:

    epoch 1   from the call that starts training (data upload, compilation, tracing, first
              allocations) to the end of the first epoch
    epoch k   one pass over the training samples (forward, backward, update); no validation

The GPU is synchronized before each clock read. No system computes metrics while training (the
loss only); accuracies come from a prediction pass afterwards.

Systems:
    numpy, numba, cupy    nnlite with that backend (``model.fit``)
    torch                 PyTorch on the CPU, a plain loop; Adam(fused=True) where supported
    torch-cuda            the same on the GPU (when torch.cuda works)
    keras, keras-xla      Keras 3 on TensorFlow with jit_compile False / True
"""

from __future__ import annotations

import importlib.util
import math
import os
import time

import numpy as np

from nnlite.bench.workloads import CLASSES, COLS, INPUTS, ROWS, Workload

NNLITE = ("numpy", "numba", "cupy")
PEERS = ("torch", "torch-cuda", "keras", "keras-xla")
ALL = NNLITE + PEERS


def family(system: str) -> str:
    """"nnlite", "torch" or "keras"."""
    if system in NNLITE:
        return "nnlite"
    return system.split("-")[0]


def installed(system: str) -> tuple[bool, str]:
    """(True, "") when the system's package is importable here, else (False, why)."""
    module = {"nnlite": "numpy", "torch": "torch", "keras": "tensorflow"}[family(system)]
    if system == "numba" and importlib.util.find_spec("numba") is None:
        return False, "Numba is not installed"
    if system == "cupy" and importlib.util.find_spec("cupy") is None:
        return False, "CuPy is not installed"
    if importlib.util.find_spec(module) is None:
        hint = {"torch": "pip install torch==2.13.0 (CPU build)",
                "tensorflow": "pip install tensorflow-cpu"}.get(module, "")
        return False, f"{module} is not installed ({hint})"
    if family(system) == "keras" and importlib.util.find_spec("keras") is None:
        return False, "keras is not installed"
    return True, ""


def accuracy(probabilities, labels) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def train(system: str, wl: Workload, data: dict, epochs: int, seed: int = 0,
          threads: int | None = None):
    """Train ``wl`` on ``system``; returns ``(result, predict)``.

    Args:
        data: ``x_train`` (N, 784) float32 and ``y_train`` (N,) int64; the first ``wl.samples``
            rows are used.
        epochs: epochs to run (the first reported apart).

    Returns:
        ``result``: ``epoch_seconds`` (list), ``final_loss``, ``device``, ``details``;
        ``predict(x) -> probabilities`` (NumPy) for accuracies afterwards.
    """
    trainer = {"nnlite": _nnlite, "torch": _torch, "keras": _keras}[family(system)]
    x = data["x_train"][:wl.samples]
    y = data["y_train"][:wl.samples]
    return trainer(system, wl, x, y, epochs, seed, threads)


# -- nnlite -------------------------------------------------------------------------------------


def build_sequential(lib, wl: Workload, **kwargs):
    """The workload's network with ``lib``, nnlite or keras: the same code builds both."""
    layers = [lib.Input(shape=(INPUTS,))]
    if wl.lstm:
        layers += [lib.layers.Reshape((ROWS, COLS)), lib.layers.LSTM(wl.lstm)]
    else:
        layers += [lib.layers.Dense(w, activation="relu") for w in wl.hidden]
    layers.append(lib.layers.Dense(CLASSES, activation="softmax"))
    return lib.Sequential(layers, **kwargs)


def build_nnlite(wl: Workload, seed: int):
    """The workload's network as an nnlite ``Sequential`` (weights from ``seed``)."""
    import nnlite

    return build_sequential(nnlite, wl, seed=seed)


def nnlite_optimizer(wl: Workload):
    import nnlite

    if wl.optimizer == "sgd":
        return nnlite.optimizers.SGD(learning_rate=wl.lr)
    return nnlite.optimizers.Adam(learning_rate=wl.lr)


def _nnlite(system, wl, x, y, epochs, seed, threads):
    import nnlite

    backend = nnlite.set_backend(system)
    if threads is not None:
        nnlite.config.set_threads(threads)
    nnlite.config.set_floatx("float32")
    start = time.perf_counter()
    model = build_nnlite(wl, seed)
    model.compile(optimizer=nnlite_optimizer(wl), loss="sparse_categorical_crossentropy")

    class EpochTimer(nnlite.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch > 0:
                self.begin = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            backend.synchronize()
            times.append(time.perf_counter() - self.begin)

    times = []
    timer = EpochTimer()
    timer.begin = start
    model.fit(x, y, batch_size=wl.batch_size, epochs=epochs, verbose=0, shuffle=True,
              callbacks=[timer])
    history = model.history.history

    def predict(x_eval):
        return model.predict(x_eval, batch_size=1000, verbose=0)

    device = "cpu"
    if system == "cupy":
        import cupy

        device = str(cupy.cuda.runtime.getDeviceProperties(0)["name"])
    return {"epoch_seconds": times, "final_loss": float(history["loss"][-1]), "device": device,
            "details": {"backend": backend.name, "gemm": getattr(backend, "gemm", "blas")}
            }, predict


# -- PyTorch ------------------------------------------------------------------------------------


def build_torch(wl: Workload):
    """The workload's network in PyTorch, initialized as Keras initializes it (logits out)."""
    import torch
    from torch import nn

    if wl.lstm:
        class LSTMNet(nn.Module):
            def __init__(self, units):
                super().__init__()
                self.lstm = nn.LSTM(COLS, units, batch_first=True)
                self.fc = nn.Linear(units, CLASSES)

            def forward(self, x):
                out, _ = self.lstm(x.view(-1, ROWS, COLS))
                return self.fc(out[:, -1])

        net = LSTMNet(wl.lstm)
        u = wl.lstm
        with torch.no_grad():
            nn.init.xavier_uniform_(net.lstm.weight_ih_l0)  # fan_in D, fan_out 4U as Keras
            # Keras's orthogonal initializer on (U, 4U); PyTorch stores its transpose.
            nn.init.orthogonal_(net.lstm.weight_hh_l0)
            net.lstm.bias_ih_l0.zero_()
            net.lstm.bias_hh_l0.zero_()
            net.lstm.bias_ih_l0[u:2 * u] = 1.0  # unit_forget_bias
    else:
        layers, d = [], INPUTS
        for w in wl.hidden:
            layers += [nn.Linear(d, w), nn.ReLU()]
            d = w
        layers.append(nn.Linear(d, CLASSES))
        net = nn.Sequential(*layers)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
    return net


def _torch(system, wl, x, y, epochs, seed, threads):
    import torch
    import torch.nn.functional as F

    device = "cuda" if system == "torch-cuda" else "cpu"
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    start = time.perf_counter()
    net = build_torch(wl).to(device)
    params = list(net.parameters())
    fused = False
    if wl.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=wl.lr)
    else:
        try:
            opt = torch.optim.Adam(params, lr=wl.lr, eps=1e-7, fused=True)
            fused = True
        except (RuntimeError, TypeError, ValueError):
            opt = torch.optim.Adam(params, lr=wl.lr, eps=1e-7)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
    xt, yt = xt.to(device), yt.to(device)
    n, b = xt.shape[0], wl.batch_size
    steps = math.ceil(n / b)
    times, total = [], None
    for epoch in range(epochs):
        if epoch > 0:
            start = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros((), device=device)
        for s in range(steps):
            index = perm[s * b:(s + 1) * b]
            loss = F.cross_entropy(net(xt[index]), yt[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * index.shape[0]
        sync()
        times.append(time.perf_counter() - start)

    def predict(x_eval):
        with torch.no_grad():
            out = [torch.softmax(net(torch.from_numpy(x_eval[i:i + 1000]).to(device)), 1).cpu()
                   for i in range(0, len(x_eval), 1000)]
        return torch.cat(out).numpy()

    name = torch.cuda.get_device_name() if cuda else "cpu"
    return {"epoch_seconds": times, "final_loss": float(total) / n, "device": name,
            "details": {"adam_fused": fused, "torch_threads": torch.get_num_threads()}}, predict


# -- Keras --------------------------------------------------------------------------------------


def build_keras(wl: Workload):
    """The workload's network as a Keras ``Sequential``."""
    import keras

    return build_sequential(keras, wl)


def _keras(system, wl, x, y, epochs, seed, threads):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    keras.utils.set_random_seed(seed)
    jit = system == "keras-xla"
    start = time.perf_counter()
    model = build_keras(wl)
    opt = (keras.optimizers.SGD(learning_rate=wl.lr) if wl.optimizer == "sgd"
           else keras.optimizers.Adam(learning_rate=wl.lr))
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", jit_compile=jit)
    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch > 0:
                self.begin = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.begin)

    timer = EpochTimer()
    timer.begin = start
    history = model.fit(x, y, batch_size=wl.batch_size, epochs=epochs, verbose=0, shuffle=True,
                        callbacks=[timer])

    def predict(x_eval):
        return np.asarray(model.predict(x_eval, batch_size=1000, verbose=0))

    gpus = tf.config.list_physical_devices("GPU")
    return {"epoch_seconds": times, "final_loss": float(history.history["loss"][-1]),
            "device": "gpu" if gpus else "cpu",
            "details": {"jit_compile": jit, "keras_backend": keras.backend.backend()}}, predict
