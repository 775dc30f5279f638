"""Renders the engine's Progress events: a rich bar on a terminal, log lines otherwise.

Torch-free: it only reads the event's fields, so the daemon's status view and
the CLI share it.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("nst_watch.progress")


def steps_done(event) -> float:
    """Steps done, with the running iteration's share of tile passes on a tiled scale."""
    tiles = getattr(event, "tiles", 0)
    return event.step + (event.tile / tiles if tiles else 0)


def eta_seconds(event) -> float | None:
    """Seconds left; None before any step.

    The engine's own estimate (Progress.eta), which follows how the picture
    settles under early stopping and what each scale's pixels cost; for an
    event without one, the pace so far times every iteration left (an upper
    bound: early stopping may end sooner).
    """
    eta = getattr(event, "eta", None)
    if eta is not None:
        return eta
    done = steps_done(event)
    return event.elapsed / done * (event.steps - done) if done else None


def expected_steps(event) -> int:
    """The iterations the run is expected to take in all (the engine's estimate), or its most where it has none."""
    return getattr(event, "expected_steps", 0) or event.steps


def step_text(step: int, expected: int, steps: int) -> str:
    """'step 40/~210' while early stopping is expected to end the run before its most (`steps`), else 'step 40/500'."""
    return f"step {step}/~{expected}" if expected and expected < steps else f"step {step}/{steps}"


class ProgressDisplay:
    """Use as a context manager; call it with each Progress event."""

    def __init__(self, label: str, *, stream=None, plain_interval: float = 5.0):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.plain_interval = plain_interval
        self._bar = None
        self._task = None
        self._last_log = 0.0

    def __enter__(self) -> "ProgressDisplay":
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=None, detail="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def __call__(self, event) -> None:
        tiles = getattr(event, "tiles", 0)
        detail = (
            f"scale {event.scale}/{event.scales} {event.width}x{event.height} "
            f"it {event.iteration}/{event.iterations}" + (f" tile {event.tile}/{tiles}" if tiles else "")
            + (f" loss {event.loss:.4g} (content {event.content:.3g}, style {event.style:.3g})"
               if event.loss else "")
        )
        if self._bar is not None:
            self._bar.update(self._task, total=expected_steps(event), completed=steps_done(event), detail=detail)
            return
        now = time.monotonic()
        expected = expected_steps(event)
        if event.step == expected or now - self._last_log >= self.plain_interval or event.step == 1:
            self._last_log = now
            left = eta_seconds(event)
            eta = "unknown" if left is None else f"{left:.0f}s"
            log.info("%s: %s, %s, eta %s", self.label, step_text(event.step, expected, event.steps), detail, eta)
