"""nnlite against live TensorFlow/Keras on randomized cases: validation never rests on stale files.

Each run draws a fresh spec with ``make_reference.make_spec(seed)``: random shapes, input scales,
losses and targets, optimizers and their hyperparameters, MLP architectures (activations, heads,
losses, initial-weight scale), fit sizes, batch sizes and epochs, the fit's learning-rate
callbacks (ReduceLROnPlateau, LearningRateScheduler: either, both or neither, random settings),
EarlyStopping sequences, and LSTM layers (shapes, activation, bias, return_sequences) and a short
LSTM training run: 31 cases per dtype, 62 in all. Keras computes them with the fixture
generator's own workers (one subprocess per dtype, run in parallel: Keras fixes its dtype policy
when its first layer is created, so float64 and float32 cannot share a process, and this keeps
TensorFlow out of the test process), and every case is replayed and compared exactly as
``test_reference.py`` compares the committed fixtures (same tolerances and measures).

The seed is new at every run; a failure names it. Reproduce with
``NNLITE_LIVE_SEED=<seed> python -m pytest tests/test_reference_live.py``.

A known rare float32 failure (about 1 run in 40-50): a ReLU pre-activation that lies within
float32 rounding of zero, where the sign, and so whether a sample's gradient counts, is a coin
flip for any float32 GEMM. Seed 1297341437: z = 1.9e-8 in float64 against a rounding noise of
about 8e-8 for a sum of 784 terms; nnlite's float32 got −7e-8 and dropped the sample from that
unit's step-2 gradient, Keras's kept it, and RMSprop's normalised step turned the difference
into 1.4e-3 in the kernel by step 4, while nnlite's float64 run equals Keras's to print
precision. Tell it from a real fault by replaying the case in float64 (both must agree) and
looking for |z| near zero at the step where the float32 runs part.

Skipped when TensorFlow/Keras are not installed. About 30-40 s on two cores, most of it the two
TensorFlow imports and the Keras training loops.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
    pytest.skip("tensorflow/keras are not installed", allow_module_level=True)


def _load_test_reference():
    """tests/test_reference.py as a module, whatever pytest's import mode."""
    name = "nnlite_test_reference"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "test_reference.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


reference = _load_test_reference()
mr = reference.mr

SEED = int(os.environ.get("NNLITE_LIVE_SEED") or secrets.randbelow(2**31))
SPEC = mr.make_spec(SEED)
CASES = [(dtype, group, name) for dtype in mr.DTYPES for group in mr.GROUPS
         for name in mr.case_names(SPEC, group)]


@pytest.fixture(scope="module")
def live_keras(tmp_path_factory):
    """Directory with Keras's results for SPEC (both dtypes), computed once per module."""
    directory = tmp_path_factory.mktemp(f"keras_live_{SEED}")
    try:
        mr.generate(SPEC, directory)
    except ImportError as exc:           # installed but broken: skip, as importorskip would
        pytest.skip(str(exc))
    return directory


def test_spec_is_large_enough():
    assert len(CASES) >= 50
    assert {group for _, group, _ in CASES} == set(mr.GROUPS)


@pytest.mark.parametrize("dtype,group,name", CASES,
                         ids=[f"{d}-{g}-{n}" for d, g, n in CASES])
def test_matches_live_keras(live_keras, dtype, group, name):
    cmp = reference.replay_case(live_keras, dtype, group, name)
    spec = mr.case_specs(SPEC, group)[name]
    try:
        cmp.assert_ok()
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\ncase spec: {spec}\nreproduce with NNLITE_LIVE_SEED={SEED}") from None
