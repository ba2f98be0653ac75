"""The benchmark workloads (MNIST, float32), their FLOP counts, and the data they train on.

Workloads (784 inputs, 10 softmax outputs, sparse categorical cross-entropy):

    W1  seed baseline    784-50-50-10 relu        Adam 1e-3   batch 100
    W2  seed TF1         784-1024-10 relu         SGD 0.1     batch 128
    W3  wide             784-1024-1024-10 relu    Adam 1e-3   batch 128
    W4  per-step cost    784-50-50-10 relu        Adam 1e-3   batch 1      first 5,000 samples
    W5  full batch       784-50-50-10 relu        Adam 1e-2   batch 54,000
    W6  LSTM             28 rows of 28, LSTM(128) Adam 1e-3   batch 100

Data: the MNIST training set scaled to [0, 1] in float32, its first 54,000 images for training
and its last 6,000 for validation (Keras's ``validation_split=0.1``), and the 10,000 test images.

FLOPs counted (only the multiply-adds that are needed, 2 per multiply-add; element-wise work is
not counted):

    Dense D_in -> D_out, N samples     forward 2·N·D_in·D_out   dW 2·N·D_in·D_out
                                        dX 2·N·D_in·D_out, except for the first layer
    LSTM D -> U over T steps            input GEMMs T·2·N·D·4U (forward and dW; no dX: first layer)
                                        recurrent GEMMs (T−1)·2·N·U·4U each for forward, dR and
                                        dh (h₀ = 0, so step 1 needs none)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

INPUTS, CLASSES, TRAIN, VALIDATION = 784, 10, 54_000, 6_000
ROWS = COLS = 28


@dataclass(frozen=True)
class Workload:
    """One training configuration.

    Attributes:
        name: "W1" ... "W6" (or a scaling point's label).
        title: what it stands for.
        hidden: Dense widths (ReLU), empty for the LSTM.
        lstm: LSTM units (0: an MLP).
        optimizer: "adam" or "sgd".
        lr: learning rate.
        batch_size: samples per step.
        samples: training samples per epoch (the first ``samples`` of the 54,000).
        epochs: default epoch count (the first is reported apart; the rest give the median).
    """

    name: str
    title: str
    hidden: tuple = ()
    lstm: int = 0
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 100
    samples: int = TRAIN
    epochs: int = 3

    @property
    def arch(self) -> str:
        """"784-50-50-10" or "LSTM(128)-10"."""
        if self.lstm:
            return f"{ROWS}x{COLS}-LSTM({self.lstm})-{CLASSES}"
        return "-".join(str(w) for w in (INPUTS, *self.hidden, CLASSES))

    def flops_per_sample(self) -> float:
        """FLOPs of one training step per sample (forward + backward, needed GEMMs only)."""
        if self.lstm:
            u, t, d = self.lstm, ROWS, COLS
            flops = 2 * t * 2 * d * 4 * u          # input projection: forward and dkernel
            flops += 3 * (t - 1) * 2 * u * 4 * u   # recurrent: forward, drecurrent, dh
            dims = [u, CLASSES]
            first = False
        else:
            flops = 0
            dims = [INPUTS, *self.hidden, CLASSES]
            first = True
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            passes = 2 if (first and i == 0) else 3
            flops += passes * 2 * d_in * d_out
        return float(flops)

    def flops_per_epoch(self) -> float:
        return self.flops_per_sample() * self.samples

    def gemm_shapes(self) -> list[tuple[str, int, int, int]]:
        """The GEMMs of one training step as ``(label, M, K, N)`` for ``(M, K) · (K, N)``."""
        b = self.batch_size
        shapes = []
        if self.lstm:
            u = self.lstm
            w = u + COLS + 1  # xh_t = [h_{t−1}, x_t, 1]
            shapes.append((f"{self.name} LSTM step xh·θ", b, w, 4 * u))
            shapes.append((f"{self.name} LSTM dh dz·Rᵀ", b, 4 * u, u))
            # backward's weight gradients, one GEMM over all steps: Σ_t xh_tᵀ · dz_t
            shapes.append((f"{self.name} LSTM dθ xhᵀ·dz", w, b * ROWS, 4 * u))
            return shapes
        dims = [INPUTS, *self.hidden, CLASSES]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            shapes.append((f"{self.name} L{i + 1} fwd x·W", b, d_in, d_out))
            shapes.append((f"{self.name} L{i + 1} dW xᵀ·dz", d_in, b, d_out))
            if i > 0:
                shapes.append((f"{self.name} L{i + 1} dX dz·Wᵀ", b, d_out, d_in))
        return shapes

    def quick(self) -> Workload:
        """A tiny version for smoke tests: at most 600 samples (W4: 100), widths ≤ 32."""
        samples = 100 if self.batch_size == 1 else min(self.samples, QUICK_TRAIN)
        return dataclasses.replace(
            self,
            hidden=tuple(min(w, 32) for w in self.hidden),
            lstm=min(self.lstm, 8),
            samples=samples,
            batch_size=min(self.batch_size, samples),
            epochs=2,
        )

    def describe(self) -> str:
        opt = f"{'Adam' if self.optimizer == 'adam' else 'SGD'} {self.lr:g}"
        return (f"{self.arch} {opt} batch {self.batch_size}"
                + (f" ({self.samples} samples)" if self.samples != TRAIN else ""))


WORKLOADS = {
    "W1": Workload("W1", "seed baseline", hidden=(50, 50), lr=1e-3, batch_size=100),
    "W2": Workload("W2", "seed TF1", hidden=(1024,), optimizer="sgd", lr=0.1, batch_size=128),
    "W3": Workload("W3", "wide", hidden=(1024, 1024), lr=1e-3, batch_size=128),
    "W4": Workload("W4", "per-step overhead", hidden=(50, 50), lr=1e-3, batch_size=1,
                   samples=5_000),
    "W5": Workload("W5", "full batch", hidden=(50, 50), lr=1e-2, batch_size=TRAIN, epochs=10),
    "W6": Workload("W6", "LSTM over rows", lstm=128, lr=1e-3, batch_size=100, epochs=2),
}

QUICK_TRAIN, QUICK_VALIDATION, QUICK_TEST = 600, 100, 200


def lstm_available() -> bool:
    """Whether this nnlite has ``nnlite.layers.LSTM`` (W6 is skipped, with a note, without)."""
    import nnlite

    return hasattr(nnlite.layers, "LSTM")


# -- data ---------------------------------------------------------------------------------------

DATA_FILES = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _scale(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1], with one float32 allocation."""
    out = np.empty((images.shape[0], INPUTS), dtype=np.float32)
    np.divide(images.reshape(images.shape[0], INPUTS), np.float32(255), out=out)
    return out


def prepare_data(directory: str, quick: bool = False) -> str:
    """Write the scaled MNIST arrays as ``.npy`` files under ``directory`` (once) and return it.

    The workers then read plain float32 arrays (no decompression, no checksum, no float64
    intermediate), so their peak RSS is the data plus the system's own memory.
    """
    directory = os.path.join(directory, "quick" if quick else "full")
    if all(os.path.exists(os.path.join(directory, f"{k}.npy")) for k in DATA_FILES):
        return directory
    from nnlite.datasets import mnist

    (x, y), (xt, yt) = mnist.load_data()
    if quick:
        n, nv, nt = QUICK_TRAIN, QUICK_VALIDATION, QUICK_TEST
        arrays = {"x_train": x[:n], "y_train": y[:n], "x_val": x[-nv:], "y_val": y[-nv:],
                  "x_test": xt[:nt], "y_test": yt[:nt]}
    else:
        arrays = {"x_train": x[:TRAIN], "y_train": y[:TRAIN], "x_val": x[TRAIN:],
                  "y_val": y[TRAIN:], "x_test": xt, "y_test": yt}
    os.makedirs(directory, exist_ok=True)
    for key, value in arrays.items():
        value = _scale(value) if key.startswith("x") else value.astype(np.int64)
        tmp = os.path.join(directory, f".{key}.tmp.npy")
        np.save(tmp, value)
        os.replace(tmp, os.path.join(directory, f"{key}.npy"))
    return directory


def load(directory: str, *keys: str, mmap: bool = False):
    """The arrays ``keys`` from :func:`prepare_data`'s folder (read into memory unless mmap)."""
    mode = "r" if mmap else None
    return tuple(np.load(os.path.join(directory, f"{k}.npy"), mmap_mode=mode) for k in keys)
