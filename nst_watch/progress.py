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
    """Seconds left at the pace so far (an upper bound: early stopping may end sooner); None before any step."""
    done = steps_done(event)
    return event.elapsed / done * (event.steps - done) if done else None


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
            self._bar.update(self._task, total=event.steps, completed=steps_done(event), detail=detail)
            return
        now = time.monotonic()
        if event.step == event.steps or now - self._last_log >= self.plain_interval or event.step == 1:
            self._last_log = now
            left = eta_seconds(event)
            eta = "unknown" if left is None else f"{left:.0f}s"
            log.info("%s: step %d/%d, %s, eta %s", self.label, event.step, event.steps, detail, eta)
