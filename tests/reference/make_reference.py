"""Regenerate the TensorFlow/Keras reference fixtures that ``tests/test_reference.py`` checks.

    python tests/reference/make_reference.py          # needs tensorflow-cpu (Keras 3) installed

writes, next to this script:

    shared.npz              MNIST indices of every batch and the MLPs' initial weights (float32
                            values, so they are exact in float64 too)
    float64/<group>.npz     Keras's results in a float64 run, one file per case group
    float32/<group>.npz     the same in a float32 run
    manifest.json           TF/Keras/NumPy versions, date, command, every case with its arrays'
                            shapes and dtypes, file sizes and SHA-256s

Groups (each case in float64 and float32):

    dense       Dense + each activation: x, kernel, bias, y and the gradients of sum(dy * y)
                with respect to x, kernel and bias (Keras's own tf.GradientTape)
    losses      each loss from logits and from probabilities (incl. clipped and unnormalised
                rows), sparse and one-hot targets: value and gradient w.r.t. y_pred
    optimizers  SGD, SGD momentum, SGD Nesterov, Adam, RMSprop (plain, momentum, centered),
                and each learning-rate schedule: 10 steps on fixed, per-step different
                gradients; the variables after each step (and a schedule's rate at each step)
    mlp         Sequential models trained with train_on_batch on real MNIST batches from
                stored initial weights: loss and accuracy at every step, weights at snapshots
    fit         fit(shuffle=False, validation_data=...) runs, some with ReduceLROnPlateau and
                LearningRateScheduler: History (learning_rate too), evaluate, weights
    metrics     accuracy with ties and -0.0 scores; EarlyStopping decisions on value sequences
    lstm        keras.layers.LSTM (last step, full sequence, ReLU without bias): x, kernel,
                recurrent_kernel, bias, y and the gradients of sum(dy * y) w.r.t. x and the
                weights; and Sequential [Input((T, D)), LSTM, Dense(softmax)] trained with
                train_on_batch and Adam on fixed random sequences: loss per step, final weights

How: Keras fixes its dtype policy when the first layer is created, so a process can only produce
one floatx (FINDINGS §0). This script therefore runs itself once per dtype as a worker subprocess
(``--worker float64``) that sets floatx before importing anything else; the parent only writes
the shared inputs and the manifest. The worker hides GPUs and turns XLA off, so the numbers are
TensorFlow's CPU kernels (oneDNN left as TensorFlow's default, recorded in the manifest).

A file whose arrays are bitwise those already on disk is left as it is (``savez_compressed``
stamps the time into the zip, so rewriting it would change its SHA-256 for nothing): regenerating
after adding a group rewrites only that group's files and the manifest.

``tests/test_reference_live.py`` imports this module to run the same workers on randomized
specs (``make_spec(seed)``) into a temporary directory: one code path for fixtures and live runs.
Importing this module needs NumPy only; TensorFlow is imported by the workers.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DTYPES = ("float64", "float32")
GROUPS = ("dense", "losses", "optimizers", "mlp", "fit", "metrics", "lstm")
ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax")
SPEC_KEY = "__spec__"

# The epoch schedules of the fit cases' LearningRateScheduler callbacks, by name (one definition
# for the Keras worker and the nnlite replay; "step" is Keras 2's one-argument form). The
# optimizers' own per-step schedules are keras.optimizers.schedules objects: make_optimizer.
EPOCH_SCHEDULES = {
    "exp_decay": lambda epoch, lr: lr * math.exp(-0.7 * epoch),
    "step": lambda epoch: 0.004 * 0.5 ** epoch,
}


def make_optimizer(module, spec: dict):
    """A case's optimizer from ``module.optimizers`` (``keras`` or ``nnlite``): ``{"class",
    "kwargs"}``, with ``"schedule": {"class", "kwargs"}`` for a learning-rate schedule."""
    kwargs = dict(spec["kwargs"])
    if spec.get("schedule"):
        schedule = spec["schedule"]
        kwargs["learning_rate"] = getattr(module.optimizers.schedules, schedule["class"])(
            **schedule["kwargs"])
    return getattr(module.optimizers, spec["class"])(**kwargs)


def make_callbacks(module, specs: list) -> list:
    """A fit case's callbacks from ``module.callbacks`` (``keras`` or ``nnlite``): each spec is
    ``{"class", "kwargs"}``, with ``"schedule"`` naming one of EPOCH_SCHEDULES."""
    made = []
    for spec in specs:
        kwargs = dict(spec.get("kwargs", {}))
        if "schedule" in spec:
            kwargs["schedule"] = EPOCH_SCHEDULES[spec["schedule"]]
        made.append(getattr(module.callbacks, spec["class"])(**kwargs))
    return made


# ----------------------------------------------------------------------------------------------
# The spec: every case's shapes, seeds and hyperparameters (JSON, shared by both sides)
# ----------------------------------------------------------------------------------------------


def _canonical_spec() -> dict:
    """The committed fixtures: fixed shapes and Keras's usual hyperparameters."""
    dense = [{"name": act, "activation": act, "n": 6, "d_in": 5, "units": 4, "scale": 2.0,
              "seed": 10 + i} for i, act in enumerate(ACTIVATIONS)]
    losses = []
    for i, (name, cls, kwargs, inputs, target) in enumerate([
        ("scce_logits", "SparseCategoricalCrossentropy", {"from_logits": True}, "logits", "sparse"),
        ("scce_probs", "SparseCategoricalCrossentropy", {}, "probs", "sparse"),
        ("scce_probs_extreme", "SparseCategoricalCrossentropy", {}, "extreme", "sparse"),
        ("cce_logits", "CategoricalCrossentropy", {"from_logits": True}, "logits", "onehot"),
        ("cce_logits_soft", "CategoricalCrossentropy", {"from_logits": True}, "logits", "soft"),
        ("cce_probs", "CategoricalCrossentropy", {}, "probs", "onehot"),
        ("cce_probs_extreme", "CategoricalCrossentropy", {}, "extreme", "onehot"),
        ("mse", "MeanSquaredError", {}, "regression", "regression"),
    ]):
        losses.append({"name": name, "class": cls, "kwargs": kwargs, "inputs": inputs,
                       "target": target, "n": 16, "c": 5, "scale": 3.0, "seed": 20 + i})
    optimizers = []
    for i, (name, cls, kwargs) in enumerate([
        ("sgd", "SGD", {}),
        ("sgd_momentum", "SGD", {"learning_rate": 0.01, "momentum": 0.9}),
        ("sgd_nesterov", "SGD", {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True}),
        ("adam", "Adam", {}),
        ("adam_custom", "Adam", {"learning_rate": 0.0123, "beta_1": 0.8, "beta_2": 0.95,
                                 "epsilon": 1e-5}),
        ("rmsprop", "RMSprop", {}),
        ("rmsprop_momentum", "RMSprop", {"rho": 0.8, "momentum": 0.9}),
        ("rmsprop_centered", "RMSprop", {"centered": True}),
        ("rmsprop_centered_momentum", "RMSprop", {"learning_rate": 0.01, "centered": True,
                                                  "momentum": 0.5}),
    ]):
        optimizers.append({"name": name, "class": cls, "kwargs": kwargs, "steps": 10,
                           "shapes": [[7, 5], [5]], "seed": 40 + i})
    # Learning-rate schedules (Keras evaluates them in float32 whatever floatx is), each over
    # its transitions within the 10 steps.
    for i, (name, cls, schedule, kwargs) in enumerate([
        ("sgd_exponential_decay_staircase", "SGD", ("ExponentialDecay", {
            "initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.7,
            "staircase": True}), {}),
        ("adam_exponential_decay", "Adam", ("ExponentialDecay", {
            "initial_learning_rate": 0.01, "decay_steps": 4, "decay_rate": 0.3}), {}),
        ("sgd_piecewise_constant", "SGD", ("PiecewiseConstantDecay", {
            "boundaries": [2, 5], "values": [0.1, 0.05, 0.01]}), {"momentum": 0.9}),
        ("rmsprop_polynomial_cycle", "RMSprop", ("PolynomialDecay", {
            "initial_learning_rate": 0.01, "decay_steps": 4, "end_learning_rate": 0.001,
            "power": 0.5, "cycle": True}), {}),
        ("sgd_polynomial", "SGD", ("PolynomialDecay", {
            "initial_learning_rate": 0.1, "decay_steps": 6, "power": 2.0}), {}),
        ("adam_inverse_time_decay", "Adam", ("InverseTimeDecay", {
            "initial_learning_rate": 0.01, "decay_steps": 2, "decay_rate": 0.5}), {}),
        ("sgd_cosine_decay", "SGD", ("CosineDecay", {
            "initial_learning_rate": 0.1, "decay_steps": 7, "alpha": 0.1}), {}),
        ("adam_cosine_warmup", "Adam", ("CosineDecay", {
            "initial_learning_rate": 0.0, "decay_steps": 5, "warmup_target": 0.01,
            "warmup_steps": 3}), {}),
    ]):
        optimizers.append({"name": name, "class": cls, "kwargs": kwargs,
                           "schedule": {"class": schedule[0], "kwargs": schedule[1]},
                           "steps": 10, "shapes": [[7, 5], [5]], "seed": 60 + i})
    big = {"units": [64, 32, 10], "activations": ["relu", "relu", "softmax"],
           "loss": {"class": "SparseCategoricalCrossentropy", "kwargs": {}}, "target": "sparse",
           "batch_size": 32, "steps": 50, "snapshots": [1, 10, 50], "init": "mlp",
           "batches": "mlp"}
    small = {"units": [8, 10], "batch_size": 32, "steps": 20, "snapshots": [20],
             "init": "small", "batches": "mlp"}
    mlp = [
        {**big, "name": "adam", "optimizer": {"class": "Adam", "kwargs": {}}},
        {**big, "name": "sgd", "optimizer": {"class": "SGD", "kwargs": {"learning_rate": 0.1}}},
        {**small, "name": "tanh_cce_rmsprop", "activations": ["tanh", "softmax"],
         "loss": {"class": "CategoricalCrossentropy", "kwargs": {}}, "target": "onehot",
         "optimizer": {"class": "RMSprop", "kwargs": {"momentum": 0.9, "centered": True}}},
        {**small, "name": "sigmoid_logits_nesterov", "activations": ["sigmoid", "linear"],
         "loss": {"class": "SparseCategoricalCrossentropy", "kwargs": {"from_logits": True}},
         "target": "sparse", "optimizer": {"class": "SGD", "kwargs": {
             "learning_rate": 0.05, "momentum": 0.9, "nesterov": True}}},
        {**small, "name": "softmax_mse_adam", "activations": ["relu", "softmax"],
         "loss": {"class": "MeanSquaredError", "kwargs": {}}, "target": "onehot",
         "optimizer": {"class": "Adam", "kwargs": {"learning_rate": 0.01}}},
        # Kernels x16: the softmax saturates (probabilities below 1e-7), where Keras's cached
        # logits (fused softmax + CE) and the clipped-probability formula differ by orders.
        {**small, "name": "saturated_scce_sgd", "activations": ["relu", "softmax"],
         "loss": {"class": "SparseCategoricalCrossentropy", "kwargs": {}}, "target": "sparse",
         "optimizer": {"class": "SGD", "kwargs": {"learning_rate": 0.001}}, "steps": 5,
         "snapshots": [5], "init": "saturated", "init_scale": 16.0},
        {**small, "name": "saturated_cce_adam", "activations": ["relu", "softmax"],
         "loss": {"class": "CategoricalCrossentropy", "kwargs": {}}, "target": "onehot",
         "optimizer": {"class": "Adam", "kwargs": {}}, "steps": 5, "snapshots": [5],
         "init": "saturated", "init_scale": 16.0},
    ]
    callback_case = {**small, "activations": ["relu", "softmax"],
                     "loss": {"class": "SparseCategoricalCrossentropy", "kwargs": {}},
                     "target": "sparse", "n_train": 1050, "n_val": 250, "batch_size": 100,
                     "batches": "fit"}
    fit = [{**big, "name": "adam", "optimizer": {"class": "Adam", "kwargs": {}},
            "n_train": 1050, "n_val": 250, "batch_size": 100, "epochs": 2,
            "batches": "fit"},
           # The learning-rate callbacks (on the small model): the rates in History and the
           # weights they lead to. A large min_delta makes most epochs a plateau: reductions,
           # a cooldown (2: Keras's counter rests one epoch) and the floor all happen.
           {**callback_case, "name": "sgd_reduce_lr_on_plateau", "epochs": 9,
            "optimizer": {"class": "SGD", "kwargs": {"learning_rate": 0.1, "momentum": 0.5}},
            "callbacks": [{"class": "ReduceLROnPlateau", "kwargs": {
                "monitor": "val_loss", "factor": 0.3, "patience": 1, "min_delta": 0.2,
                "cooldown": 2, "min_lr": 0.005}}]},
           {**callback_case, "name": "adam_scheduler_and_plateau", "epochs": 4,
            "optimizer": {"class": "Adam", "kwargs": {"learning_rate": 0.003}},
            "callbacks": [{"class": "LearningRateScheduler", "schedule": "exp_decay"},
                          {"class": "ReduceLROnPlateau", "kwargs": {
                              "monitor": "val_accuracy", "factor": 0.5, "patience": 0,
                              "min_delta": 0.5}}]},
           {**callback_case, "name": "rmsprop_step_schedule", "epochs": 3,
            "optimizer": {"class": "RMSprop", "kwargs": {}},
            "callbacks": [{"class": "LearningRateScheduler", "schedule": "step"}]}]
    for case in fit:
        for key in ("steps", "snapshots"):
            case.pop(key)
    metrics = {
        "accuracy": [{"name": "ties", "seed": 70}],
        "early_stopping": [
            {"name": "float32_resolution", "kwargs": {"patience": 1},
             "monitor": "val_loss", "values": [0.5, 0.5 - 1e-12, 0.5 - 2e-12, 0.4]},
            {"name": "min_delta", "kwargs": {"patience": 1, "min_delta": 0.01},
             "monitor": "val_loss", "values": [1.0, 0.995, 0.98, 0.975, 0.974, 0.95]},
            {"name": "max_mode", "kwargs": {"patience": 1, "mode": "max",
                                            "monitor": "val_accuracy"},
             "monitor": "val_accuracy", "values": [0.5, 0.6, 0.6, 0.30000001, 0.7]},
            {"name": "max_float32_tie", "kwargs": {"patience": 0, "mode": "max",
                                                   "monitor": "val_accuracy"},
             "monitor": "val_accuracy", "values": [0.3, 0.30000001, 0.30000002]},
            {"name": "baseline", "kwargs": {"patience": 2, "baseline": 0.85},
             "monitor": "val_loss", "values": [1.0, 0.9, 0.8, 0.86, 0.84, 0.83, 0.82]},
            {"name": "start_from_epoch", "kwargs": {"patience": 0, "start_from_epoch": 2},
             "monitor": "val_loss", "values": [1.0, 2.0, 3.0, 2.5, 2.6]},
        ],
    }
    lstm = [
        {"name": "last", "kind": "layer", "n": 4, "t": 5, "d": 3, "units": 6,
         "return_sequences": False, "activation": "tanh", "use_bias": True, "seed": 80},
        {"name": "sequences", "kind": "layer", "n": 4, "t": 5, "d": 3, "units": 6,
         "return_sequences": True, "activation": "tanh", "use_bias": True, "seed": 81},
        {"name": "relu_no_bias", "kind": "layer", "n": 4, "t": 5, "d": 3, "units": 6,
         "return_sequences": True, "activation": "relu", "use_bias": False, "seed": 82},
        {"name": "train_adam", "kind": "train", "n": 8, "t": 5, "d": 3, "units": 6,
         "classes": 4, "steps": 10, "optimizer": {"class": "Adam",
                                                  "kwargs": {"learning_rate": 0.01}},
         "seed": 83},
    ]
    return {"seed": None, "shared_seed": 0, "dense": dense, "losses": losses,
            "optimizers": optimizers, "mlp": mlp, "fit": fit, "metrics": metrics, "lstm": lstm}


def _random_optimizer(rng, in_model: bool = False) -> dict:
    """One of the optimizer variants with random hyperparameters (plain Python floats).

    ``in_model``: tamer ranges (adaptive learning rates ≤ 3e-3, ε ≥ 1e-7) for training runs.
    Adam and RMSprop normalise each weight's step, g / (√v + ε), so a gradient that is itself
    a rounding-level cancellation (or smaller than ε) moves its weight by up to ~lr times its
    relative rounding error: with lr = 0.03 and ε = 1e-8, two implementations whose matmuls
    round differently see float32 weights drift apart by more than 1e-5 within a few steps
    (float64 ones by ~1e-10). Bare optimizer cases (fixed gradients) keep the wide ranges.
    """
    kind = int(rng.integers(8))
    lr = float(10 ** rng.uniform(-3.5, -2.5 if in_model else -1.5))
    eps_low = -7 if in_model else -8
    if kind == 0:
        return {"class": "SGD", "kwargs": {"learning_rate": lr * 10}}
    if kind in (1, 2):
        return {"class": "SGD", "kwargs": {"learning_rate": lr * 5,
                                           "momentum": float(rng.uniform(0.1, 0.95)),
                                           "nesterov": kind == 2}}
    if kind in (3, 4):
        return {"class": "Adam", "kwargs": {"learning_rate": lr,
                                            "beta_1": float(rng.uniform(0.5, 0.95)),
                                            "beta_2": float(rng.uniform(0.9, 0.9999)),
                                            "epsilon": float(10 ** rng.uniform(eps_low, -4))}}
    return {"class": "RMSprop", "kwargs": {"learning_rate": lr,
                                           "rho": float(rng.uniform(0.5, 0.99)),
                                           "momentum": float(rng.uniform(0.1, 0.9))
                                           if kind >= 6 else 0.0,
                                           "epsilon": float(10 ** rng.uniform(eps_low, -4)),
                                           "centered": kind in (5, 7)}}


def make_spec(seed: int | None = None) -> dict:
    """The spec of every case: the canonical fixtures (``seed=None``) or a randomized one.

    A randomized spec draws shapes, scales, hyperparameters, losses, targets, optimizers,
    architectures and EarlyStopping sequences from ``numpy.random.default_rng(seed)``; it has
    the same groups and keys as the canonical one (31 cases per dtype), sized to run fast.
    """
    if seed is None:
        return _canonical_spec()
    rng = np.random.default_rng(seed)

    def sub_seed() -> int:
        return int(rng.integers(2**31))

    # Float32 limits what can be drawn: the gradient of a saturated tanh/sigmoid/softmax is
    # computed from an output within a few float32 ulps of ±1 (TF's float32 kernels are
    # rational approximations), so its relative error grows as 1/(1 − y²). Pre-activations
    # therefore stay mostly below ~2 (std ≤ 2.3) here, and initial weights are scaled up (to
    # saturate the softmax) only behind ReLU hidden layers and before a cross-entropy (MSE
    # through a saturated softmax has vanishing, rounding-dominated gradients). The committed
    # fixtures cover deeper saturation, where float32 happens to stay within 1e-5.
    dense = []
    for act in ACTIVATIONS:
        d_in = int(rng.integers(1, 9))
        dense.append({"name": act, "activation": act, "n": int(rng.integers(2, 9)),
                      "d_in": d_in, "units": int(rng.integers(3, 9)),
                      "scale": float(rng.uniform(0.5, 2.0) / np.sqrt(d_in)), "seed": sub_seed()})
    losses = []
    choices = [("SparseCategoricalCrossentropy", "sparse"), ("CategoricalCrossentropy", "onehot"),
               ("CategoricalCrossentropy", "soft")]
    for i in range(7):
        if i == 6:
            cls, target, kwargs, inputs = "MeanSquaredError", "regression", {}, "regression"
        else:
            cls, target = choices[int(rng.integers(len(choices)))]
            inputs = ("logits", "probs", "extreme")[i % 3]
            if target == "soft" and inputs == "extreme":
                target = "onehot"
            kwargs = {"from_logits": True} if inputs == "logits" else {}
        losses.append({"name": f"{i}_{cls}_{inputs}_{target}", "class": cls, "kwargs": kwargs,
                       "inputs": inputs, "target": target, "n": int(rng.integers(5, 33)),
                       "c": int(rng.integers(5, 12)), "scale": float(rng.uniform(0.5, 6)),
                       "seed": sub_seed()})
    optimizers = []
    for i in range(8):
        opt = _random_optimizer(rng)
        shapes = [[int(rng.integers(1, 9)), int(rng.integers(1, 9))], [int(rng.integers(1, 9))]]
        optimizers.append({"name": f"{i}_{opt['class']}", **opt, "steps": int(rng.integers(3, 13)),
                           "shapes": shapes, "seed": sub_seed()})
    mlp = []
    for i in range(3):
        depth = int(rng.integers(1, 3))
        hidden = [int(rng.integers(4, 33)) for _ in range(depth)]
        acts = [str(rng.choice(["relu", "tanh", "sigmoid"])) for _ in range(depth)]
        head = int(rng.integers(4))
        if head == 0:
            out, loss, target = "softmax", {"class": "SparseCategoricalCrossentropy",
                                            "kwargs": {}}, "sparse"
        elif head == 1:
            out, loss, target = "softmax", {"class": "CategoricalCrossentropy",
                                            "kwargs": {}}, "onehot"
        elif head == 2:
            out, loss, target = "linear", {"class": "SparseCategoricalCrossentropy",
                                           "kwargs": {"from_logits": True}}, "sparse"
        else:
            out = str(rng.choice(["softmax", "sigmoid", "linear"]))
            loss, target = {"class": "MeanSquaredError", "kwargs": {}}, "onehot"
        steps = int(rng.integers(3, 9))
        mlp.append({"name": f"{i}_{'-'.join(acts)}-{out}", "units": hidden + [10],
                    "activations": acts + [out], "loss": loss, "target": target,
                    "optimizer": _random_optimizer(rng, in_model=True),
                    "batch_size": int(rng.integers(4, 65)), "steps": steps,
                    "snapshots": sorted({1, steps}), "init": f"mlp{i}",
                    "init_scale": float(rng.choice([1.0, 8.0]))
                    if set(acts) == {"relu"} and head < 3 else 1.0, "batches": f"mlp{i}"})
    fit = [{"name": "random", "units": [int(rng.integers(4, 33)), 10],
            "activations": [str(rng.choice(["relu", "tanh"])), "softmax"],
            "loss": {"class": "SparseCategoricalCrossentropy", "kwargs": {}}, "target": "sparse",
            "optimizer": _random_optimizer(rng, in_model=True),
            "n_train": int(rng.integers(50, 301)),
            "n_val": int(rng.integers(10, 101)), "batch_size": int(rng.integers(8, 65)),
            "epochs": int(rng.integers(1, 4)), "init": "fit", "batches": "fit"}]
    early = []
    for i in range(3):
        maximize = bool(rng.integers(2))
        monitor = "val_accuracy" if maximize else "val_loss"
        kwargs = {"patience": int(rng.integers(0, 3)), "monitor": monitor,
                  "mode": "max" if maximize else str(rng.choice(["auto", "min"]))}
        if rng.integers(2):
            kwargs["min_delta"] = float(rng.choice([1e-9, 1e-3, 0.02]))
        values = [float(rng.uniform(0.2, 1.0))]
        for _ in range(int(rng.integers(3, 9))):
            step = float(rng.choice([0.0, 1e-12, 1e-9, 1e-8, 1e-3, 0.05]))
            values.append(values[-1] + step * float(rng.choice([-1, 1])))
        early.append({"name": f"{i}_{monitor}", "kwargs": kwargs, "monitor": monitor,
                      "values": values})
    metrics = {"accuracy": [{"name": "ties", "seed": sub_seed()}], "early_stopping": early}
    spec = {"seed": int(seed), "shared_seed": sub_seed(), "dense": dense, "losses": losses,
            "optimizers": optimizers, "mlp": mlp, "fit": fit, "metrics": metrics}
    # LSTM cases are drawn last, so the other groups of a seed are those drawn before they existed.
    lstm = []
    for i in range(2):
        act = str(rng.choice(["tanh", "relu"])) if i else "tanh"
        lstm.append({"name": f"{i}_{act}", "kind": "layer", "n": int(rng.integers(1, 7)),
                     "t": int(rng.integers(1, 8)), "d": int(rng.integers(1, 7)),
                     "units": int(rng.integers(1, 9)),
                     "return_sequences": bool(rng.integers(2)), "activation": act,
                     "use_bias": bool(rng.integers(2)) if i else True, "seed": sub_seed()})
    lstm.append({"name": "2_train", "kind": "train", "n": int(rng.integers(2, 17)),
                 "t": int(rng.integers(2, 8)), "d": int(rng.integers(1, 6)),
                 "units": int(rng.integers(2, 9)), "classes": int(rng.integers(2, 6)),
                 "steps": int(rng.integers(3, 9)),
                 "optimizer": _random_optimizer(rng, in_model=True), "seed": sub_seed()})
    # The fit case's learning-rate callbacks, drawn after everything else for the same reason.
    callbacks = []
    if rng.integers(2):
        maximize = bool(rng.integers(2))
        callbacks.append({"class": "ReduceLROnPlateau", "kwargs": {
            "monitor": "val_accuracy" if maximize else str(rng.choice(["val_loss", "loss"])),
            "factor": float(rng.choice([0.1, 0.3, 0.5])), "patience": int(rng.integers(0, 2)),
            "min_delta": float(rng.choice([1e-4, 0.05, 0.5])),
            "cooldown": int(rng.integers(0, 3)), "min_lr": float(rng.choice([0.0, 1e-4]))}})
    if rng.integers(2):
        callbacks.insert(int(rng.integers(len(callbacks) + 1)),
                         {"class": "LearningRateScheduler",
                          "schedule": str(rng.choice(sorted(EPOCH_SCHEDULES)))})
    fit[0]["callbacks"] = callbacks
    fit[0]["epochs"] += len(callbacks)  # time for the rates to change
    # Learning-rate schedules, drawn last too: two optimizer cases each driven by a random
    # schedule (replayed on Keras's rates, every rate compared), and for a fit without
    # callbacks (which cannot set a schedule's rate) sometimes a piecewise-constant one, whose
    # rates are exact (the others' float32 pow and cos round apart from TensorFlow's by ulps).
    for i in range(2):
        opt = _random_optimizer(rng)
        opt["schedule"] = _random_schedule(rng, opt["kwargs"]["learning_rate"])
        optimizers.append({"name": f"{8 + i}_{opt['class']}_{opt['schedule']['class']}", **opt,
                           "steps": int(rng.integers(3, 13)), "shapes": [[3, 4], [4]],
                           "seed": sub_seed()})
    if not callbacks and rng.integers(2):
        lr = fit[0]["optimizer"]["kwargs"]["learning_rate"]
        fit[0]["optimizer"]["schedule"] = _random_schedule(rng, lr, "PiecewiseConstantDecay")
    return {**spec, "lstm": lstm}


def _random_schedule(rng, lr: float, cls: str | None = None) -> dict:
    """One of the learning-rate schedules, starting near ``lr``, with random settings that
    make it change within a few steps."""
    cls = cls or str(rng.choice(["ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay",
                                 "InverseTimeDecay", "CosineDecay"]))
    steps = int(rng.integers(1, 7))
    if cls == "ExponentialDecay":
        kwargs = {"initial_learning_rate": lr, "decay_steps": steps,
                  "decay_rate": float(rng.uniform(0.2, 0.95)), "staircase": bool(rng.integers(2))}
    elif cls == "PiecewiseConstantDecay":
        boundaries = sorted({int(b) for b in rng.integers(1, 10, size=int(rng.integers(1, 4)))})
        values = [lr * float(rng.uniform(0.2, 1.5)) for _ in range(len(boundaries) + 1)]
        kwargs = {"boundaries": boundaries, "values": values}
    elif cls == "PolynomialDecay":
        kwargs = {"initial_learning_rate": lr, "decay_steps": steps,
                  "end_learning_rate": lr * float(rng.uniform(0, 0.3)),
                  "power": float(rng.choice([0.5, 1.0, 2.0, 3.0])),
                  "cycle": bool(rng.integers(2))}
    elif cls == "InverseTimeDecay":
        kwargs = {"initial_learning_rate": lr, "decay_steps": steps,
                  "decay_rate": float(rng.uniform(0.1, 2.0)), "staircase": bool(rng.integers(2))}
    else:
        kwargs = {"initial_learning_rate": lr, "decay_steps": steps,
                  "alpha": float(rng.uniform(0, 0.5))}
        if rng.integers(2):
            kwargs.update(initial_learning_rate=lr * float(rng.choice([0.0, 0.1])),
                          warmup_target=lr, warmup_steps=int(rng.integers(1, 5)))
    return {"class": cls, "kwargs": kwargs}


def case_specs(spec: dict, group: str) -> dict:
    """``{case name: case spec}`` of ``group``, in order."""
    if group == "metrics":
        return {**{f"accuracy_{c['name']}": c for c in spec["metrics"]["accuracy"]},
                **{f"early_stopping_{c['name']}": c for c in spec["metrics"]["early_stopping"]}}
    return {case["name"]: case for case in spec[group]}


def case_names(spec: dict, group: str) -> list[str]:
    """Names of the cases of ``group`` in ``spec``, in order."""
    return list(case_specs(spec, group))


@functools.lru_cache(maxsize=32)
def load_group(directory, dtype: str, group: str) -> dict:
    """``{case name: {"spec": case spec, key: array, ...}}`` from ``<dtype>/<group>.npz``.

    Weights stored with :func:`encode_weights` (keys ending ".xor") come back decoded, under
    the key without the suffix. Cached: treat the arrays as read-only.
    """
    directory = Path(directory)
    with np.load(directory / "shared.npz") as f:
        shared = dict(f)
    with np.load(directory / dtype / f"{group}.npz") as f:
        data = dict(f)
    specs = case_specs({group: json.loads(str(data.pop(SPEC_KEY)))} if group != "metrics"
                       else {"metrics": json.loads(str(data.pop(SPEC_KEY)))}, group)
    cases = {name: {"spec": case} for name, case in specs.items()}
    for key, value in data.items():
        name, rest = key.split("/", 1)
        if rest.endswith(".xor"):
            rest = rest[: -len(".xor")]
            init = shared[f"init/{specs[name]['init']}/{rest.rsplit('/', 1)[1]}"]
            value = decode_weights(value, init, dtype)
        value.flags.writeable = False
        cases[name][rest] = value
    return cases


@functools.lru_cache(maxsize=8)
def load_shared(directory) -> dict:
    """The arrays of ``shared.npz`` (MNIST indices, initial weights), read-only."""
    with np.load(Path(directory) / "shared.npz") as f:
        arrays = dict(f)
    for value in arrays.values():
        value.flags.writeable = False
    return arrays


# ----------------------------------------------------------------------------------------------
# Inputs shared by both dtypes and both sides: MNIST batches and initial weights
# ----------------------------------------------------------------------------------------------


def _glorot_uniform(rng, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


def make_shared(spec: dict) -> dict:
    """MNIST indices (uint16) of every batch and initial weights (float32) of every model.

    Kernels are Glorot-uniform times the case's ``init_scale`` (default 1), biases uniform in
    ±0.05 (not zero, so that their gradients matter from the first step).

    Keys: ``idx/<batches>`` (training images, in batch order), ``val/<batches>`` (test images
    used as validation data by fit cases) and ``init/<init>/<i>`` (kernel, bias, kernel, ...).
    Initial weights are float32 values, exactly representable in float64, so both dtypes start
    from the same numbers.
    """
    rng = np.random.default_rng(spec["shared_seed"])
    arrays: dict = {}
    for case in spec["mlp"] + spec["fit"]:
        if f"init/{case['init']}/0" not in arrays:
            fan_in = 784
            scale = np.float32(case.get("init_scale", 1.0))   # a power of two: exact
            for i, units in enumerate(case["units"]):
                arrays[f"init/{case['init']}/{2 * i}"] = _glorot_uniform(rng, fan_in, units) * scale
                arrays[f"init/{case['init']}/{2 * i + 1}"] = rng.uniform(
                    -0.05, 0.05, size=units).astype(np.float32)
                fan_in = units
        key = f"idx/{case['batches']}"
        n = case["n_train"] if "n_train" in case else case["steps"] * case["batch_size"]
        if key not in arrays or arrays[key].size < n:
            arrays[key] = rng.choice(60000, size=n, replace=False).astype(np.uint16)
        key = f"val/{case['batches']}"
        if "n_val" in case and (key not in arrays or arrays[key].size != case["n_val"]):
            arrays[key] = rng.choice(10000, size=case["n_val"], replace=False).astype(np.uint16)
    return arrays


_MNIST = None


def mnist_batch(indices, dtype, test: bool = False):
    """MNIST images ``indices`` as (n, 784) ``dtype`` in [0, 1] and their int64 labels.

    Both sides call this, so the inputs are bitwise identical: pixels / 255 in float64, then
    rounded once to ``dtype``.
    """
    global _MNIST
    if _MNIST is None:
        from nnlite.datasets import mnist

        _MNIST = mnist.load_data()
    x, y = _MNIST[1] if test else _MNIST[0]
    indices = np.asarray(indices, dtype=np.int64)
    images = (x[indices].reshape(len(indices), 784).astype(np.float64) / 255.0).astype(dtype)
    return images, y[indices].astype(np.int64)


def targets(labels, kind: str, dtype, classes: int = 10):
    """Labels as the case's target kind: int64 labels ("sparse") or one-hot rows ``dtype``."""
    return labels if kind == "sparse" else np.eye(classes, dtype=dtype)[labels]


# ----------------------------------------------------------------------------------------------
# The worker: Keras's numbers for one dtype (runs in its own process)
# ----------------------------------------------------------------------------------------------


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def loss_inputs(case: dict, dtype) -> dict:
    """Targets and predictions of a loss case, drawn from its seed (float64, then cast)."""
    rng = np.random.default_rng(case["seed"])
    n, c = case["n"], case["c"]
    labels = rng.integers(0, c, size=n)
    z = rng.normal(size=(n, c)) * case["scale"]
    kind = case["inputs"]
    if kind == "logits":
        y_pred = z
    elif kind == "regression":
        y_pred = z
    else:
        y_pred = _softmax(z)
    if kind == "extreme":
        # Rows that hit every branch of Keras's clipping: an exact one-hot prediction, a
        # probability far below epsilon, an unnormalised row, a zero probability on the true
        # class, entries equal to epsilon (the clip passes their gradient) and saturated rows.
        eps = 1e-7
        y_pred[0] = 0.0
        y_pred[0, 0] = 1.0
        y_pred[1] = 0.0
        y_pred[1, :2] = [1e-9, 1 - 1e-9]
        y_pred[2] = 0.3
        y_pred[3, labels[3]] = 0.0
        y_pred[4] = 0.0
        y_pred[4, :3] = [eps, eps, 1 - 2 * eps]
        y_pred[5:] = _softmax(z[5:] * 8)
    if case["target"] == "sparse":
        y_true = labels.astype(np.int64)
    elif case["target"] == "onehot":
        y_true = np.eye(c)[labels].astype(dtype)
    elif case["target"] == "soft":
        y_true = rng.dirichlet(np.ones(c), size=n).astype(dtype)
    else:
        y_true = rng.normal(size=(n, c)).astype(dtype)
    return {"y_true": y_true, "y_pred": y_pred.astype(dtype)}


def accuracy_inputs(case: dict, dtype) -> dict:
    """Scores with exact ties, all-equal rows and signed zeros, plus random rows."""
    rng = np.random.default_rng(case["seed"])
    crafted = np.array([
        [0.2, 0.4, 0.4, 0.0],       # tie: the first maximum wins
        [0.25, 0.25, 0.25, 0.25],   # all equal
        [-0.0, 0.0, -1.0, -2.0],    # Keras's argmax ranks -0.0 below +0.0
        [0.0, -0.0, -1.0, -2.0],
        [-0.0, -0.0, -1.0, -2.0],
        [-1.0, -0.0, -3.0, -0.0],
        [0.1, 0.7, 0.1, 0.1],
    ])
    labels = np.array([2, 1, 1, 0, 1, 3, 1])
    random = rng.integers(0, 3, size=(9, 4)) / 2.0      # few distinct values: many ties
    y_pred = np.concatenate([crafted, random]).astype(dtype)
    labels = np.concatenate([labels, rng.integers(0, 4, size=9)])
    return {"y_pred": y_pred, "labels": labels.astype(np.int64)}


def lstm_inputs(case: dict, dtype) -> dict:
    """Inputs and weights of an LSTM case, drawn from its seed as float32 values, then cast.

    Float32 values are exact in float64, so both dtypes start from the same numbers. Layer
    cases: x (N, T, D) ~ N(0, 1); kernel, recurrent_kernel and bias ~ N(0, 0.5²) (gates mostly
    away from saturation); dy ~ N(0, 1), the weights of the summed outputs. Training cases: x,
    integer labels and initial weights [kernel, recurrent_kernel, bias, dense kernel, dense bias]
    (uniform, Glorot-like scales; the forget-gate bias starts at 1, as Keras's unit_forget_bias).
    """
    rng = np.random.default_rng(case["seed"])
    n, t, d, u = case["n"], case["t"], case["d"], case["units"]

    def draw(shape, scale=1.0):
        return (rng.normal(size=shape) * scale).astype(np.float32).astype(dtype)

    if case["kind"] == "layer":
        weights = [draw((d, 4 * u), 0.5), draw((u, 4 * u), 0.5)]
        if case["use_bias"]:
            weights.append(draw((4 * u,), 0.5))
        x = draw((n, t, d))
        dy = draw((n, t, u) if case["return_sequences"] else (n, u))
        return {"x": x, "weights": weights, "dy": dy}

    def uniform(shape, limit):
        return rng.uniform(-limit, limit, size=shape).astype(np.float32).astype(dtype)

    c = case["classes"]
    bias = uniform((4 * u,), 0.05)
    bias[u:2 * u] += 1
    weights = [uniform((d, 4 * u), np.sqrt(6 / (d + 4 * u))),
               uniform((u, 4 * u), np.sqrt(6 / (5 * u))), bias,
               uniform((u, c), np.sqrt(6 / (u + c))), uniform((c,), 0.05)]
    return {"x": draw((case["steps"] * n, t, d)),
            "labels": rng.integers(0, c, size=case["steps"] * n).astype(np.int64),
            "weights": weights}


def encode_weights(w, w0) -> np.ndarray:
    """Trained weights ``w``, stored losslessly and compactly relative to the initial ``w0``.

    The bits of ``w`` XOR those of ``w0`` are zero where a weight did not move (a pixel that was
    0 in every batch so far) and start with zero bytes where it moved little; grouping the bytes
    by significance (Blosc's "shuffle") lets ``savez_compressed`` find those zeros. This halves
    the float32 snapshots and saves a third of the float64 ones. Returns (itemsize, size) uint8.
    """
    w = np.asarray(w)
    little = w.dtype.newbyteorder("<")
    uint = np.dtype(f"<u{w.itemsize}")
    bits = w.astype(little).view(uint) ^ np.asarray(w0).astype(little).view(uint)
    return bits.reshape(-1).view(np.uint8).reshape(-1, w.itemsize).T.copy()


def decode_weights(encoded, w0, dtype) -> np.ndarray:
    """Inverse of :func:`encode_weights`: the exact weights, shaped like ``w0``, of ``dtype``."""
    little = np.dtype(dtype).newbyteorder("<")
    uint = np.dtype(f"<u{little.itemsize}")
    bits = np.ascontiguousarray(encoded.T).reshape(-1).view(uint).reshape(np.shape(w0))
    weights = bits ^ np.asarray(w0).astype(little).view(uint)
    return weights.view(little).astype(np.dtype(dtype))


def write_npz(path, arrays: dict) -> bool:
    """``savez_compressed(path, **arrays)`` unless ``path`` holds bitwise these arrays already.

    Returns whether the file was written. Keeps regenerated fixtures byte-identical (the zip
    format records the time of writing) when their contents did not change.
    """
    path = Path(path)
    if path.exists():
        try:
            with np.load(path) as f:
                same = set(f.files) == set(arrays) and all(
                    f[k].dtype == np.asarray(v).dtype and f[k].shape == np.shape(v)
                    and f[k].tobytes() == np.asarray(v).tobytes() for k, v in arrays.items())
        except (OSError, ValueError):
            same = False
        if same:
            return False
    np.savez_compressed(path, **arrays)
    return True


def _worker(dtype: str, spec: dict, shared_path: str, out_dir: str) -> None:
    """Compute every case with Keras in ``dtype`` and write ``out_dir/<group>.npz``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""         # TF's CPU kernels, whatever the machine
    import keras  # noqa: E402  (floatx must be set before any Keras object exists)

    keras.config.set_floatx(dtype)
    import tensorflow as tf

    dt = np.dtype(dtype).type
    shared = dict(np.load(shared_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def save(group: str, arrays: dict) -> None:
        arrays[SPEC_KEY] = np.array(json.dumps(spec[group] if group != "metrics"
                                               else spec["metrics"]))
        write_npz(out / f"{group}.npz", arrays)

    def build_optimizer(opt: dict):
        return make_optimizer(keras, opt)

    # -- Dense with each activation: GradientTape of sum(dy * y) -------------------------------
    arrays = {}
    for case in spec["dense"]:
        rng = np.random.default_rng(case["seed"])
        n, d, m = case["n"], case["d_in"], case["units"]
        x = (rng.normal(size=(n, d)) * case["scale"]).astype(dt)
        kernel = rng.normal(size=(d, m)).astype(dt)
        bias = rng.normal(size=m).astype(dt)
        dy = rng.normal(size=(n, m)).astype(dt)
        layer = keras.layers.Dense(m, activation=case["activation"])
        layer.build((None, d))
        layer.set_weights([kernel, bias])
        xv = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xv)
            y = layer(xv)
            total = tf.reduce_sum(y * tf.constant(dy))
        dx, dkernel, dbias = tape.gradient(total, [xv, *layer.trainable_weights])
        for key, value in {"x": x, "kernel": kernel, "bias": bias, "dy": dy, "y": y,
                           "dx": dx, "dkernel": dkernel, "dbias": dbias}.items():
            arrays[f"{case['name']}/{key}"] = np.asarray(value)
    save("dense", arrays)

    # -- losses: value and gradient w.r.t. y_pred ----------------------------------------------
    arrays = {}
    for case in spec["losses"]:
        data = loss_inputs(case, dt)
        loss = getattr(keras.losses, case["class"])(**case["kwargs"])
        y_pred = tf.Variable(data["y_pred"])
        with tf.GradientTape() as tape:
            value = loss(tf.constant(data["y_true"]), y_pred)
        grad = tape.gradient(value, y_pred)
        for key, array in {**data, "value": value, "grad": grad}.items():
            arrays[f"{case['name']}/{key}"] = np.asarray(array)
    save("losses", arrays)

    # -- optimizers: a fixed, different gradient at each step ----------------------------------
    arrays = {}
    for case in spec["optimizers"]:
        rng = np.random.default_rng(case["seed"])
        initial = [rng.normal(size=s).astype(dt) for s in case["shapes"]]
        # Gradients spanning 1e-3 .. 10 in magnitude, with both signs, new at every step.
        grads = [[(rng.normal(size=s) * 10 ** rng.uniform(-3, 1, size=s)).astype(dt)
                  for s in case["shapes"]] for _ in range(case["steps"])]
        variables = [keras.Variable(w) for w in initial]
        optimizer = build_optimizer(case)
        trajectory = [[] for _ in variables]
        rates = []
        for step_grads in grads:
            rates.append(float(optimizer.learning_rate))  # a schedule's value at this step
            optimizer.apply_gradients(zip([tf.constant(g) for g in step_grads], variables))
            for history, variable in zip(trajectory, variables):
                history.append(np.array(variable.numpy()))
        if "schedule" in case:
            arrays[f"{case['name']}/learning_rate"] = np.array(rates, dtype=np.float64)
        for i, (w, history) in enumerate(zip(initial, trajectory)):
            arrays[f"{case['name']}/initial/{i}"] = w
            arrays[f"{case['name']}/grads/{i}"] = np.stack([g[i] for g in grads])
            arrays[f"{case['name']}/trajectory/{i}"] = np.stack(history)
        arrays[f"{case['name']}/iterations"] = np.array(int(optimizer.iterations.numpy()))
    save("optimizers", arrays)

    def build_model(case: dict):
        layers = [keras.Input((784,))]
        layers += [keras.layers.Dense(u, activation=a)
                   for u, a in zip(case["units"], case["activations"])]
        model = keras.Sequential(layers)
        loss = getattr(keras.losses, case["loss"]["class"])(**case["loss"]["kwargs"])
        model.compile(optimizer=build_optimizer(case["optimizer"]), loss=loss,
                      metrics=["accuracy"], jit_compile=False)
        model.set_weights([shared[f"init/{case['init']}/{i}"].astype(dt)
                           for i in range(2 * len(case["units"]))])
        return model

    # -- MLPs: train_on_batch on MNIST batches -------------------------------------------------
    arrays = {}
    for case in spec["mlp"]:
        model = build_model(case)
        bs = case["batch_size"]
        x, labels = mnist_batch(shared[f"idx/{case['batches']}"][:case["steps"] * bs], dt)
        y = targets(labels, case["target"], dt)
        loss_steps, accuracy_steps = [], []
        for step in range(case["steps"]):
            logs = model.train_on_batch(x[step * bs:(step + 1) * bs], y[step * bs:(step + 1) * bs],
                                        return_dict=True)
            loss_steps.append(logs["loss"])
            accuracy_steps.append(logs["accuracy"])
            if step + 1 in case["snapshots"]:
                for i, w in enumerate(model.get_weights()):
                    arrays[f"{case['name']}/weights_{step + 1}/{i}.xor"] = encode_weights(
                        w, shared[f"init/{case['init']}/{i}"])
        arrays[f"{case['name']}/loss"] = np.array(loss_steps, dtype=dt)
        arrays[f"{case['name']}/accuracy"] = np.array(accuracy_steps, dtype=dt)
    save("mlp", arrays)

    # -- fit: History with validation_data, no shuffling ---------------------------------------
    arrays = {}
    for case in spec["fit"]:
        model = build_model(case)
        x, labels = mnist_batch(shared[f"idx/{case['batches']}"][:case["n_train"]], dt)
        xv, labels_v = mnist_batch(shared[f"val/{case['batches']}"], dt, test=True)
        history = model.fit(x, targets(labels, case["target"], dt), batch_size=case["batch_size"],
                            epochs=case["epochs"], shuffle=False, verbose=0,
                            validation_data=(xv, targets(labels_v, case["target"], dt)),
                            callbacks=make_callbacks(keras, case.get("callbacks", [])))
        for key, values in history.history.items():
            arrays[f"{case['name']}/history/{key}"] = np.array(values, dtype=np.float64)
        evaluated = model.evaluate(xv, targets(labels_v, case["target"], dt),
                                   batch_size=case["batch_size"], verbose=0, return_dict=True)
        for key, value in evaluated.items():
            arrays[f"{case['name']}/evaluate/{key}"] = np.array(value, dtype=np.float64)
        for i, w in enumerate(model.get_weights()):
            arrays[f"{case['name']}/weights/{i}.xor"] = encode_weights(
                w, shared[f"init/{case['init']}/{i}"])
        arrays[f"{case['name']}/iterations"] = np.array(int(model.optimizer.iterations.numpy()))
    save("fit", arrays)

    # -- metrics: accuracy tie-breaking, EarlyStopping decisions -------------------------------
    arrays = {}
    for case in spec["metrics"]["accuracy"]:
        data = accuracy_inputs(case, dt)
        onehot = np.eye(data["y_pred"].shape[1], dtype=dt)[data["labels"]]
        name = f"accuracy_{case['name']}"
        arrays[f"{name}/y_pred"] = data["y_pred"]
        arrays[f"{name}/labels"] = data["labels"]
        arrays[f"{name}/sparse"] = np.asarray(
            keras.metrics.sparse_categorical_accuracy(data["labels"], data["y_pred"]))
        arrays[f"{name}/categorical"] = np.asarray(
            keras.metrics.categorical_accuracy(onehot, data["y_pred"]))

    class _Model:
        """Just what EarlyStopping touches."""

        stop_training = False
        metrics: list = []

        def get_weights(self):
            return []

    for case in spec["metrics"]["early_stopping"]:
        model = _Model()
        callback = keras.callbacks.EarlyStopping(**case["kwargs"])
        callback.set_model(model)
        callback.on_train_begin()
        epochs_run = 0
        for epoch, value in enumerate(case["values"]):
            callback.on_epoch_end(epoch, {case["monitor"]: value})
            epochs_run += 1
            if model.stop_training:
                break
        name = f"early_stopping_{case['name']}"
        arrays[f"{name}/epochs_run"] = np.array(epochs_run)
        arrays[f"{name}/stopped_epoch"] = np.array(callback.stopped_epoch)
        arrays[f"{name}/best"] = np.array(callback.best, dtype=np.float64)
        arrays[f"{name}/best_epoch"] = np.array(callback.best_epoch)
        arrays[f"{name}/wait"] = np.array(callback.wait)
    save("metrics", arrays)

    # -- LSTM: layer forward/backward (GradientTape), and a short train_on_batch run -----------
    arrays = {}
    for case in spec["lstm"]:
        data = lstm_inputs(case, dt)
        name = case["name"]
        if case["kind"] == "layer":
            layer = keras.layers.LSTM(case["units"], activation=case["activation"],
                                      use_bias=case["use_bias"],
                                      return_sequences=case["return_sequences"])
            layer.build((None, case["t"], case["d"]))
            layer.set_weights(data["weights"])
            xv = tf.constant(data["x"])
            with tf.GradientTape() as tape:
                tape.watch(xv)
                y = layer(xv)
                total = tf.reduce_sum(y * tf.constant(data["dy"]))
            grads = tape.gradient(total, [xv, *layer.trainable_weights])
            keys = ["kernel", "recurrent_kernel", "bias"][:len(data["weights"])]
            arrays[f"{name}/x"] = data["x"]
            arrays[f"{name}/dy"] = data["dy"]
            arrays[f"{name}/y"] = np.asarray(y)
            arrays[f"{name}/dx"] = np.asarray(grads[0])
            for key, w, g, var in zip(keys, data["weights"], grads[1:],
                                      layer.trainable_weights):
                assert var.path.endswith(key), (var.path, key)
                arrays[f"{name}/{key}"] = w
                arrays[f"{name}/d{key}"] = np.asarray(g)
            continue
        model = keras.Sequential([keras.Input((case["t"], case["d"])),
                                  keras.layers.LSTM(case["units"]),
                                  keras.layers.Dense(case["classes"], activation="softmax")])
        model.compile(optimizer=build_optimizer(case["optimizer"]),
                      loss=keras.losses.SparseCategoricalCrossentropy(), jit_compile=False)
        model.set_weights(data["weights"])
        n, losses_ = case["n"], []
        for step in range(case["steps"]):
            logs = model.train_on_batch(data["x"][step * n:(step + 1) * n],
                                        data["labels"][step * n:(step + 1) * n],
                                        return_dict=True)
            losses_.append(logs["loss"])
        arrays[f"{name}/x"] = data["x"]
        arrays[f"{name}/labels"] = data["labels"]
        arrays[f"{name}/loss"] = np.array(losses_, dtype=dt)
        for i, (w0, w) in enumerate(zip(data["weights"], model.get_weights())):
            arrays[f"{name}/initial/{i}"] = w0
            arrays[f"{name}/weights/{i}"] = np.asarray(w)
        arrays[f"{name}/iterations"] = np.array(int(model.optimizer.iterations.numpy()))
    save("lstm", arrays)


# ----------------------------------------------------------------------------------------------
# The parent: shared inputs, one worker per dtype, manifest
# ----------------------------------------------------------------------------------------------


def generate(spec: dict, out_dir, dtypes=DTYPES) -> dict:
    """Write ``shared.npz`` and ``<dtype>/<group>.npz`` for ``spec`` under ``out_dir``.

    The workers for the dtypes run in parallel subprocesses. Returns ``{"tensorflow": version,
    "keras": version, "onednn": ...}`` as reported by the workers.

    Raises:
        ImportError: when TensorFlow or Keras cannot be imported by the worker.
        RuntimeError: when a worker fails otherwise (its stderr is included).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_npz(out / "shared.npz", make_shared(spec))
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        procs = {}
        for dtype in dtypes:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", dtype,
                   "--spec", str(spec_path), "--shared", str(out / "shared.npz"),
                   "--out", str(out / dtype)]
            procs[dtype] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
        versions = {}
        for dtype, proc in procs.items():
            stdout, stderr = proc.communicate()
            if proc.returncode == 3:
                raise ImportError(f"the {dtype} worker cannot import TensorFlow/Keras: "
                                  f"{stderr.strip().splitlines()[-1]}")
            if proc.returncode != 0:
                raise RuntimeError(f"the {dtype} worker failed ({proc.returncode}):\n{stderr}")
            versions = json.loads(stdout.strip().splitlines()[-1])
    return versions


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(spec: dict, out_dir, versions: dict) -> dict:
    """Describe every file and case under ``out_dir`` in ``manifest.json``; returns it."""
    out = Path(out_dir)
    files, cases = {}, []
    for path in sorted(out.rglob("*.npz")):
        rel = path.relative_to(out).as_posix()
        files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    for dtype in DTYPES:
        for group in GROUPS:
            rel = f"{dtype}/{group}.npz"
            if rel not in files:
                continue
            for name, arrays in load_group(str(out), dtype, group).items():
                cases.append({
                    "group": group, "name": name, "dtype": dtype, "file": rel,
                    "arrays": {k: [list(v.shape), str(v.dtype)]
                               for k, v in sorted(arrays.items()) if k != "spec"},
                })
    manifest = {
        "description": "TensorFlow/Keras reference results checked by tests/test_reference.py",
        "command": "python tests/reference/make_reference.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **versions,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dtypes": list(DTYPES),
        "groups": list(GROUPS),
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "files": files,
        "cases": cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE), help="output directory (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None,
                        help="write a randomized spec instead of the canonical fixtures")
    parser.add_argument("--worker", choices=DTYPES, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--shared", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        try:
            import keras  # noqa: F401
            import tensorflow as tf  # noqa: F401
        except ImportError as exc:
            print(f"ImportError: {exc}", file=sys.stderr)
            return 3
        spec = json.loads(Path(args.spec).read_text())
        _worker(args.worker, spec, args.shared, args.out)
        print(json.dumps({
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
            "device": "CPU (CUDA_VISIBLE_DEVICES='')", "jit_compile": False,
        }))
        return 0
    spec = make_spec(args.seed)
    versions = generate(spec, args.out)
    manifest = write_manifest(spec, args.out, versions)
    print(f"wrote {len(manifest['cases'])} cases, {len(manifest['files'])} files, "
          f"{manifest['total_bytes'] / 1e6:.2f} MB under {args.out} "
          f"(TensorFlow {versions['tensorflow']}, Keras {versions['keras']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
