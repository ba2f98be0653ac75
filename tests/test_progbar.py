"""Tests for nnlite.progbar: Keras 3's line formats, driven with a fake clock."""

import re
import time

import pytest

from nnlite import progbar as progbar_module
from nnlite.progbar import Progbar

BOLD, GREEN, GREY, RESET = "\x1b[1m", "\x1b[32m", "\x1b[37m", "\x1b[0m"


class FakeClock:
    """A settable replacement for time.time."""

    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(time, "time", fake)
    return fake


def run_epoch(bar, clock, steps, seconds, values_at):
    """Updates `bar` for steps 1..steps, spreading `seconds` evenly; values_at(step) -> pairs."""
    for step in range(1, steps + 1):
        clock.now = seconds * step / steps
        bar.update(step, values_at(step))


# ---------------------------------------------------------------- verbose=2


def test_verbose2_line_exact(clock, capsys):
    bar = Progbar(540, verbose=2)
    logs = [("loss", 0.3206), ("accuracy", 0.9105), ("val_loss", 0.1131), ("val_accuracy", 0.968)]
    run_epoch(bar, clock, 540, 1.2, lambda step: logs)
    out = capsys.readouterr().out
    assert out == (
        "540/540 - 1s - 2ms/step - loss: 0.3206 - accuracy: 0.9105"
        " - val_loss: 0.1131 - val_accuracy: 0.9680\n"
    )


def test_verbose2_prints_only_at_finalize(clock, capsys):
    bar = Progbar(10, verbose=2)
    for step in range(1, 10):
        clock.now += 0.1
        bar.update(step, [("loss", 1.0)])
    assert capsys.readouterr().out == ""
    clock.now += 0.1
    bar.update(10, [("loss", 0.5)])
    assert capsys.readouterr().out.count("\n") == 1


def test_verbose2_regex_with_real_clock(capsys):
    bar = Progbar(540, verbose=2)
    for step in range(1, 541):
        bar.update(step, [("loss", 0.3206), ("accuracy", 0.9105)])
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1
    assert re.fullmatch(
        r"540/540 - \d+s - \d+(ms|us|s)/step - loss: 0\.3206 - accuracy: 0\.9105\n", out
    )


def test_values_are_displayed_as_given_not_averaged(clock, capsys):
    # nnlite passes running means already: the bar must not average them again.
    bar = Progbar(3, verbose=2)
    bar.update(1, [("loss", 3.0)])
    bar.update(2, [("loss", 2.0)])
    bar.update(3, [("loss", 1.25)])
    assert capsys.readouterr().out.endswith(" - loss: 1.2500\n")


def test_count_is_padded_to_target_digits(clock, capsys):
    bar = Progbar(100, verbose=2)
    bar.update(7, [("loss", 0.25)], finalize=True)
    assert capsys.readouterr().out.startswith("  7/100 - 0s - 0s/step")


def test_metric_order_is_first_appearance(clock, capsys):
    bar = Progbar(2, verbose=2)
    bar.update(1, [("b", 1.0)])
    bar.update(2, [("a", 2.0), ("b", 3.0)])
    assert capsys.readouterr().out.endswith(" - b: 3.0000 - a: 2.0000\n")


def test_small_values_use_4e_format(clock, capsys):
    bar = Progbar(1, verbose=2)
    bar.update(1, [("loss", 5e-4), ("edge", 1e-3), ("zero", 0.0), ("neg", -0.25), ("big", 12.5)])
    out = capsys.readouterr().out
    assert (
        " - loss: 5.0000e-04 - edge: 1.0000e-03 - zero: 0.0000e+00 - neg: -0.2500 - big: 12.5000\n"
    ) in out


@pytest.mark.parametrize(
    "seconds, expected",
    [(0.0, " 0s/step"), (2.6, " 3s/step"), (1.0, " 1s/step"), (0.0123, " 12ms/step"),
     (0.001, " 1ms/step"), (0.00025, " 250us/step")],
)
def test_time_per_step_format(seconds, expected):
    assert progbar_module._format_time_per_unit(seconds, "step") == expected


@pytest.mark.parametrize(
    "eta, expected", [(5.7, "5s"), (60, "60s"), (125, "2:05"), (3700, "1:01:40")]
)
def test_eta_format(eta, expected):
    assert progbar_module._format_eta(eta) == expected


def test_first_step_is_left_out_of_the_step_time(clock, capsys):
    bar = Progbar(3, verbose=2)
    clock.now = 5.0  # slow first step (warm-up)
    bar.update(1)
    clock.now = 5.02
    bar.update(2)
    clock.now = 5.04
    bar.update(3)
    assert capsys.readouterr().out == "3/3 - 5s - 20ms/step\n"


def test_unit_name(clock, capsys):
    bar = Progbar(2, verbose=2, unit_name="sample")
    clock.now = 4.0
    bar.update(2)
    assert capsys.readouterr().out == "2/2 - 4s - 2s/sample\n"


def test_verbose0_is_silent(clock, capsys):
    bar = Progbar(5, verbose=0)
    run_epoch(bar, clock, 5, 1.0, lambda step: [("loss", 1.0)])
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- verbose=1


def test_verbose1_not_a_tty_prints_final_line_only(clock, capsys):
    bar = Progbar(10, verbose=1)
    assert not bar._dynamic_display  # capsys's stdout is not a terminal
    for step in range(1, 10):
        clock.now = 0.2 * step
        bar.update(step, [("loss", 1.0 / step)])
        assert capsys.readouterr().out == ""
    clock.now = 2.0
    bar.update(10, [("loss", 0.5)])
    out = capsys.readouterr().out
    assert "\r" not in out and "\b" not in out
    assert out == (
        f"{BOLD}10/10{RESET} {GREEN}{'━' * 20}{RESET}{GREY}{RESET}"
        f" {BOLD}2s{RESET} 200ms/step - loss: 0.5000\n"
    )


def test_verbose1_dynamic_redraws_with_carriage_return(clock, capsys):
    bar = Progbar(4, verbose=1, width=4)
    bar._dynamic_display = True
    clock.now = 1.0
    bar.update(1, [("loss", 0.123456)])
    first = capsys.readouterr().out
    assert first == (
        f"\r{BOLD}1/4{RESET} {GREEN}━{RESET}{GREY}━━━{RESET} {BOLD}3s{RESET} 1s/step"
        " - loss: 0.1235"
    )
    width = len("1/4 ━━━━ 3s 1s/step - loss: 0.1235")
    clock.now = 1.01  # within `interval`: skipped
    bar.update(2, [("loss", 0.2)])
    assert capsys.readouterr().out == ""
    clock.now = 2.0
    bar.update(3, [("l", 0.2)], finalize=True)
    last = capsys.readouterr().out
    assert last.startswith("\b" * width + "\r")
    assert last.endswith("\n")


def test_verbose1_dynamic_pads_a_shorter_line(clock, capsys):
    bar = Progbar(None, verbose=1)
    bar._dynamic_display = True
    clock.now = 1.0
    bar.update(1, [("a_long_metric_name", 1.0)])
    long_width = len(capsys.readouterr().out) - 1 - 4 * 2  # minus "\r" and two bold escapes
    bar._values_order.clear()  # a shorter line next time
    clock.now = 2.0
    bar.update(2)
    out = capsys.readouterr().out
    visible = f"      2/Unknown {BOLD}2s{RESET} 1s/step"
    pad = long_width - len("      2/Unknown 2s 1s/step")
    assert out == "\b" * long_width + "\r" + visible + " " * pad


def test_unknown_target_shows_unknown(clock, capsys):
    bar = Progbar(None, verbose=1)
    bar._dynamic_display = True
    clock.now = 0.5
    bar.update(3, [("loss", 2.0)])
    assert capsys.readouterr().out.startswith("\r      3/Unknown ")


def test_add_advances_by_n(clock, capsys):
    bar = Progbar(6, verbose=2)
    bar.add(2)
    bar.add(2)
    assert capsys.readouterr().out == ""
    clock.now = 3.0
    bar.add(2, [("loss", 0.75)])
    assert capsys.readouterr().out == "6/6 - 3s - 500ms/step - loss: 0.7500\n"


# ---------------------------------------------------------------- live comparison with Keras 3


def _keras_progbar():
    try:
        from keras.src.utils.progbar import Progbar as KerasProgbar
    except Exception:  # keras or its backend missing/broken
        pytest.skip("Keras 3 is not installed")
    return KerasProgbar


@pytest.mark.parametrize("verbose", [1, 2])
def test_output_matches_keras(clock, capsys, verbose):
    keras_progbar = _keras_progbar()
    names = ["loss", "accuracy", "val_loss"]

    def drive(bar):
        clock.now = 0.0
        bar._start = 0.0
        bar._dynamic_display = True
        for step in range(1, 31):
            clock.now = 0.37 * step + (2.0 if step == 1 else 0.0)
            values = [("loss", 1.0 / step), ("accuracy", step / 31), ("val_loss", 1e-4 * step)]
            bar.update(step, values[:2] if step < 30 else values)
        return capsys.readouterr().out

    ours = drive(Progbar(30, verbose=verbose))
    theirs = drive(keras_progbar(30, verbose=verbose, stateful_metrics=names))
    assert ours == theirs
