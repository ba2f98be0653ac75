"""The ``nnlite`` command: ``train`` and ``evaluate``, run in-process (and once as a subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import nnlite
from nnlite import cli

QUICK = ["--limit", "1000", "--epochs", "1"]
TRAIN_OPTIONS = ["--hidden", "--activation", "--optimizer", "--lr", "--epochs", "--batch-size",
                 "--validation-split", "--seed", "--dtype", "--save", "--limit", "--verbose"]
TEST_LINE = re.compile(r"^Test loss: (\d+\.\d{4}) - Test accuracy: (\d+\.\d{4})$", re.M)


def run(argv, capsys):
    """Run ``nnlite argv`` in-process; returns (exit status, stdout)."""
    status = cli.main(argv)
    return status, capsys.readouterr().out


def metric_part(line):
    """An epoch line without its timing fields: 'loss: ... - val_accuracy: ...'."""
    return line[line.index("loss: "):]


def test_train_quick_run(capsys):
    status, out = run(["train", *QUICK], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("nnlite ") and "784-50-50-10" in lines[0]
    assert "adam lr=0.001" in lines[0] and "batch 100" in lines[0]
    # Keras 3's ProgbarLogger prints no "Epoch 1/1" header when epochs == 1.
    assert "Epoch 1/1" not in out
    epoch_lines = [line for line in lines if " - loss: " in line]
    assert len(epoch_lines) == 1
    # --limit 1000 with the default 10% validation split: 900 samples, batches of 100.
    assert epoch_lines[0].startswith("9/9 - ")
    assert re.search(r"loss: \d\.\d{4} - accuracy: \d\.\d{4} - val_loss: \d\.\d{4} - "
                     r"val_accuracy: \d\.\d{4}$", epoch_lines[0])
    match = TEST_LINE.search(out)
    assert match, out
    assert 0.1 < float(match.group(2)) <= 1.0
    assert "Test accuracy: " in out


def test_train_prints_epoch_headers_for_several_epochs(capsys):
    status, out = run(["train", "--limit", "500", "--epochs", "2", "--hidden", "16"], capsys)
    assert status == 0
    assert [line for line in out.splitlines() if line.startswith("Epoch ")] == [
        "Epoch 1/2", "Epoch 2/2"]
    assert "784-16-10" in out
    assert len([line for line in out.splitlines() if " - loss: " in line]) == 2


def test_train_is_reproducible_with_a_seed(capsys):
    argv = ["train", "--limit", "500", "--epochs", "1", "--seed", "3", "--hidden", "20"]
    _, first = run(argv, capsys)
    _, second = run(argv, capsys)
    _, other = run(argv[:-4] + ["--seed", "4", "--hidden", "20"], capsys)

    def figures(out):
        epochs = [metric_part(line) for line in out.splitlines() if " - loss: " in line]
        return epochs, TEST_LINE.findall(out)

    assert figures(first) == figures(second)
    assert figures(first) != figures(other)


def test_train_options_change_the_model(capsys):
    status, out = run(["train", "--limit", "300", "--epochs", "1", "--hidden", "8,6",
                       "--activation", "tanh", "--optimizer", "sgd", "--lr", "0.05",
                       "--batch-size", "30", "--validation-split", "0", "--verbose", "0",
                       "--dtype", "float64"], capsys)
    assert status == 0
    first = out.splitlines()[0]
    assert "784-8-6-10 (tanh, softmax)" in first
    assert "sgd lr=0.05" in first and "batch 30" in first and "float64" in first
    assert " - loss: " not in out  # --verbose 0
    assert TEST_LINE.search(out)


@pytest.mark.parametrize("name, saved, flag", [("mlp.npz", "Weights", "--weights"),
                                               ("mlp.keras", "Model", "--model")])
def test_save_then_evaluate_reproduces_the_test_line(tmp_path, capsys, name, saved, flag):
    path = tmp_path / name
    status, out = run(["train", *QUICK, "--hidden", "32", "--save", str(path)], capsys)
    assert status == 0
    assert f"{saved} saved to {path}" in out
    trained = TEST_LINE.search(out).group(0)
    if flag == "--model":
        assert nnlite.models.load_model(path).optimizer.iterations > 0  # the whole model
    status, out = run(["evaluate", flag, str(path), "--limit", "1000", "--batch-size", "1000"],
                      capsys)
    assert status == 0
    assert TEST_LINE.search(out).group(0) == trained


def test_evaluate_model_rejects_unreadable_and_foreign_models(tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", "--model", str(tmp_path / "missing.keras")])
    assert "cannot read model" in str(info.value.code)
    foreign = tmp_path / "foreign.keras"
    nnlite.Sequential([nnlite.Input((20,)), nnlite.layers.Dense(3)]).save(foreign)
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", "--model", str(foreign)])
    assert "does not map MNIST images to 10 classes" in str(info.value.code)


def test_save_writes_the_trained_architecture(tmp_path, capsys):
    path = tmp_path / "mlp.npz"
    status, _ = run(["train", "--limit", "300", "--epochs", "1", "--hidden", "32,16",
                     "--verbose", "0", "--save", str(path)], capsys)
    assert status == 0
    with np.load(path) as data:
        shapes = sorted(tuple(data[k].shape) for k in data.files)
    assert shapes == sorted([(784, 32), (32,), (32, 16), (16,), (16, 10), (10,)])


def test_evaluate_rejects_unreadable_and_foreign_files(tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", "--weights", str(tmp_path / "missing.npz")])
    assert "cannot read weights" in str(info.value.code)
    foreign = tmp_path / "foreign.npz"
    model = nnlite.Sequential([nnlite.Input((20,)), nnlite.layers.Dense(3)])
    model.save_weights(foreign)
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", "--weights", str(foreign)])
    assert "784-...-10" in str(info.value.code)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_subcommand_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nnlite {command}")
    options = TRAIN_OPTIONS if command == "train" else ["--weights", "--activation", "--dtype",
                                                        "--batch-size", "--limit"]
    for option in options:
        assert option in out, option


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "evaluate" in out


@pytest.mark.parametrize("argv, complaint", [
    (["train", "--hidden", "0"], "--hidden"),
    (["train", "--hidden", "50,x"], "--hidden"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--batch-size", "-5"], "--batch-size"),
    (["train", "--limit", "zero"], "--limit"),
    (["train", "--optimizer", "adamw"], "--optimizer"),
    (["train", "--activation", "gelu"], "--activation"),
    (["train", "--dtype", "float16"], "--dtype"),
    (["evaluate"], "--weights"),
    (["evaluate", "--weights", "w.npz", "--model", "m.keras"], "not allowed with"),
    ([], "command"),
])
def test_bad_arguments_exit_with_code_2(argv, complaint, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert complaint in capsys.readouterr().err


def test_bad_validation_split_exits_with_a_message():
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--limit", "100", "--validation-split", "1.5"])
    assert "--validation-split must lie in [0, 1)" in str(info.value.code)


@pytest.mark.parametrize("lr", ["-1", "nan"])
def test_bad_learning_rate_is_rejected(lr, capsys):
    # Regression: --lr used to be assigned to the optimizer unchecked (gradient ascent, exit 0).
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--limit", "100", "--epochs", "1", "--lr", lr, "--verbose", "0"])
    assert info.value.code not in (0, None)
    assert "--lr" in str(info.value.code)
    assert "Test accuracy" not in capsys.readouterr().out


def test_python_dash_m_nnlite_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nnlite", "train", "--limit", "500", "--epochs", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert TEST_LINE.search(result.stdout), result.stdout
    assert "Epoch 1/1" not in result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written without --save
