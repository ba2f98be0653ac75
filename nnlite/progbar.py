"""A text progress bar with Keras 3's output format.

Two display styles, chosen by ``verbose``:

``verbose=1`` (live bar)::

    540/540 ━━━━━━━━━━━━━━━━━━━━ 1s 2ms/step - loss: 0.3206 - accuracy: 0.9105

The count is bold, the done part of the bar green and the rest grey (ANSI escapes, as Keras
writes them). While a step is in progress the elapsed time is replaced by the ETA. The line is
redrawn in place with backspaces and ``\\r`` only when the display is dynamic (stdout is a
terminal, or we run under a Jupyter kernel or PyCharm); otherwise, so that log files stay
readable, nothing is written until the final update, which prints the finished line once.

``verbose=2`` (one line per epoch, written at the final update)::

    540/540 - 1s - 2ms/step - loss: 0.3206 - accuracy: 0.9105 - val_loss: 0.1131

Values print as ``f"{v:.4f}"`` when ``abs(v) > 1e-3`` and as ``f"{v:.4e}"`` otherwise.

Unlike Keras's ``Progbar``, this one never averages: nnlite's training loop already passes the
epoch's running means, so every value is shown exactly as given (Keras's own ``ProgbarLogger``
makes the same choice by marking every metric stateful).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

_BAR_CHAR = "━"
_BOLD = "\x1b[1m"
_GREEN = "\x1b[32m"
_GREY = "\x1b[37m"
_RESET = "\x1b[0m"


def _format_value(value: Any) -> str:
    """Formats one metric value the way Keras's progress bar does.

    Args:
        value: A number (Python or NumPy scalar). Anything ``float()`` rejects is shown with
            ``str()``.

    Returns:
        ``f"{v:.4f}"`` when ``abs(v) > 1e-3``, else ``f"{v:.4e}"`` (so tiny losses stay readable).
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if abs(v) > 1e-3:
        return f"{v:.4f}"
    return f"{v:.4e}"


def _format_time_per_unit(time_per_unit: float, unit_name: str = "step") -> str:
    """Formats a duration per unit as Keras does, with a leading space.

    Args:
        time_per_unit: Seconds per unit.
        unit_name: Name of the unit, e.g. ``"step"``.

    Returns:
        ``" 3s/step"`` for one second or more (or exactly zero), ``" 12ms/step"`` for a
        millisecond or more, ``" 250us/step"`` below that.
    """
    if time_per_unit >= 1 or time_per_unit == 0:
        return f" {time_per_unit:.0f}s/{unit_name}"
    if time_per_unit >= 1e-3:
        return f" {time_per_unit * 1e3:.0f}ms/{unit_name}"
    return f" {time_per_unit * 1e6:.0f}us/{unit_name}"


def _format_eta(eta: float) -> str:
    """Formats a remaining time as ``H:MM:SS``, ``M:SS`` or ``Ns`` (Keras's ETA style)."""
    if eta > 3600:
        return "%d:%02d:%02d" % (eta // 3600, (eta % 3600) // 60, eta % 60)
    if eta > 60:
        return "%d:%02d" % (eta // 60, eta % 60)
    return "%ds" % eta


def _write(message: str) -> None:
    """Writes to the *current* ``sys.stdout`` (so capture tools see it) and flushes."""
    stream = sys.stdout
    try:
        stream.write(message)
    except UnicodeEncodeError:
        # A non-UTF-8 console cannot show "━"; fall back to "=" like Keras does.
        encoding = getattr(stream, "encoding", None) or "utf-8"
        message = message.replace(_BAR_CHAR, "=")
        stream.write(message.encode(encoding, errors="ignore").decode(encoding))
    stream.flush()


def _stdout_is_dynamic() -> bool:
    """True when the output can be redrawn in place with ``\\r``."""
    stream = sys.stdout
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # isatty() on a closed stream raises
        tty = False
    return tty or "ipykernel" in sys.modules or "PYCHARM_HOSTED" in os.environ


class Progbar:
    """Displays a progress bar, in Keras 3's format.

    Args:
        target: Total number of steps expected, or ``None`` if unknown.
        width: Width of the bar, in characters.
        verbose: ``0`` silent, ``1`` live bar, ``2`` one line at the final update.
        interval: Minimum time, in seconds, between two redraws of the live bar.
        stateful_metrics: Accepted for Keras compatibility and ignored: nnlite passes running
            means, so every metric is displayed as given (as if all were stateful).
        unit_name: Name of a step in the ``time/unit`` field, e.g. ``"step"`` or ``"sample"``.

    Example:
        >>> bar = Progbar(target=3, verbose=2)
        >>> for step in range(1, 4):
        ...     bar.update(step, [("loss", 1.0 / step)])  # doctest: +SKIP
        3/3 - 0s - 3us/step - loss: 0.3333
    """

    def __init__(
        self,
        target: int | None,
        width: int = 20,
        verbose: int = 1,
        interval: float = 0.05,
        stateful_metrics: Iterable[str] | None = None,
        unit_name: str = "step",
    ) -> None:
        self.target = target
        self.width = width
        self.verbose = verbose
        self.interval = interval
        self.stateful_metrics = set(stateful_metrics) if stateful_metrics else set()
        self.unit_name = unit_name

        self._dynamic_display = _stdout_is_dynamic()
        self._seen_so_far = 0
        self._values: dict[str, Any] = {}
        self._values_order: list[str] = []
        self._start = time.time()
        self._last_update = 0.0
        self._time_after_first_step: float | None = None
        self._prev_total_width = 0

    def update(
        self,
        current: int,
        values: Sequence[tuple[str, Any]] | None = None,
        finalize: bool | None = None,
    ) -> None:
        """Updates the progress bar.

        Args:
            current: Number of steps done so far (one-based).
            values: ``(name, value)`` pairs. Each value is displayed as given; a name keeps the
                position of its first appearance.
            finalize: Whether this is the last update. Defaults to ``current >= target``
                (``False`` when the target is unknown).
        """
        if finalize is None:
            finalize = False if self.target is None else current >= self.target

        for name, value in values or ():
            if name not in self._values_order:
                self._values_order.append(name)
            self._values[name] = value
        self._seen_so_far = current

        now = time.time()
        time_per_unit = self._estimate_step_duration(current, now)

        if self.verbose == 1:
            if not finalize:
                if not self._dynamic_display:
                    return  # a log file gets the finished line only
                if now - self._last_update < self.interval:
                    return
            self._draw_live(current, now, time_per_unit, finalize)
        elif self.verbose == 2:
            if finalize and self.target is not None and self.target > 0:
                self._draw_summary(current, now, time_per_unit)

        self._last_update = now

    def add(self, n: int, values: Sequence[tuple[str, Any]] | None = None) -> None:
        """Advances the bar by ``n`` steps.

        Args:
            n: Number of steps done since the last update.
            values: ``(name, value)`` pairs, as in `update`.
        """
        self.update(self._seen_so_far + n, values)

    def _metrics_text(self) -> str:
        return "".join(f" - {k}: {_format_value(self._values[k])}" for k in self._values_order)

    def _count_text(self, current: int) -> str:
        digits = int(math.log10(self.target)) + 1
        return "%*d/%d" % (digits, current, self.target)

    def _draw_live(self, current: int, now: float, time_per_unit: float, finalize: bool) -> None:
        """Writes the verbose=1 line; ``hidden`` counts escape characters that take no width."""
        hidden = 0
        if self.target is not None and self.target > 0:
            bar = f"{_BOLD}{self._count_text(current)}{_RESET} "
            hidden += len(_BOLD) + len(_RESET)
            done = int(self.width * current / self.target)
            if done > 0:
                bar += f"{_GREEN}{_BAR_CHAR * done}{_RESET}"
                hidden += len(_GREEN) + len(_RESET)
            bar += f"{_GREY}{_BAR_CHAR * (self.width - done)}{_RESET}"
            hidden += len(_GREY) + len(_RESET)
        else:
            bar = f"{current:7d}/Unknown"

        if self.target is not None and self.target > 0 and not finalize:
            clock = _format_eta(time_per_unit * (self.target - current))
        else:
            clock = f"{now - self._start:.0f}s"
        info = f" {_BOLD}{clock}{_RESET}"
        hidden += len(_BOLD) + len(_RESET)
        info += _format_time_per_unit(time_per_unit, self.unit_name)
        info += self._metrics_text()

        total_width = len(bar) + len(info) - hidden
        message = ""
        if self._dynamic_display:
            # Move back over the previous line, then pad so a shorter line hides a longer one.
            message = "\b" * self._prev_total_width + "\r"
        message += bar + info
        if self._dynamic_display and self._prev_total_width > total_width:
            message += " " * (self._prev_total_width - total_width)
        if finalize:
            message += "\n"
        _write(message)
        self._prev_total_width = total_width

    def _draw_summary(self, current: int, now: float, time_per_unit: float) -> None:
        """Writes the verbose=2 line."""
        line = f"{self._count_text(current)} - {now - self._start:.0f}s"
        line += " -" + _format_time_per_unit(time_per_unit, self.unit_name)
        line += self._metrics_text()
        _write(line + "\n")

    def _estimate_step_duration(self, current: int, now: float) -> float:
        """Estimates seconds per step, leaving out the first (warm-up) step when possible.

        Args:
            current: Steps done so far.
            now: The current time.

        Returns:
            ``0`` before any step is done; ``(now - start) / current`` until a time after the
            first step is known; after that ``(now - t1) / (current - 1)``.
        """
        if not current:
            return 0.0
        if self._time_after_first_step is not None and current > 1:
            time_per_unit = (now - self._time_after_first_step) / (current - 1)
        else:
            time_per_unit = (now - self._start) / current
        if current == 1:
            self._time_after_first_step = now
        return time_per_unit
