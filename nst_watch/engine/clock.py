"""Progress events, early stopping and the non-finite watchdog of a running optimisation.

The engine never prints: it hands `Progress` events to a callback, which
the CLI's bar, the daemon's status and the web view all render.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import EngineError
from .objective import CONTENT, STYLE, TV


@dataclass(frozen=True)
class Progress:
    """One report from a running optimisation. Losses are summed over the batch."""

    preset: str
    images: int  # photos optimised together
    scale: int  # 1-based pyramid scale
    scales: int
    width: int
    height: int
    iteration: int  # 1-based, within this scale
    iterations: int  # at this scale
    step: int  # 1-based, across all scales
    steps: int
    loss: float
    content: float
    style: float
    tv: float
    elapsed: float  # seconds since stylize() began
    # Tiled scales report inside an iteration too: tile passes done of the
    # running iteration's total (two per tile: Grams, then gradient); at an
    # iteration's end 0 of that total; 0/0 on an untiled scale.
    tile: int = 0
    tiles: int = 0


ProgressCallback = Callable[[Progress], None]


class Clock:
    """Progress reports, early stopping and the non-finite watchdog, without a host read per iteration.

    Each iteration's terms ([3, N]) are copied into a record on the device
    (two operations); the record is read (a host sync) only at reporting
    intervals, early-stop window ends and a scale's end. A non-finite loss
    is found there and named with the iteration where it first appeared.
    """

    def __init__(self, preset: str, images: int, scales: int, steps: int, start: float,
                 callback: ProgressCallback | None, every: int, early_stop=None):
        self.preset, self.images, self.scales, self.steps = preset, images, scales, steps
        self.start, self.callback, self.every = start, callback, every
        self.early_stop = early_stop
        self.done = 0  # steps counted, skipped ones included (progress ends at 100%)
        self.ran = 0  # iterations run

    def begin_scale(self, scale: int, hw: tuple[int, int], iterations: int, image: torch.Tensor) -> None:
        self.scale, self.hw, self.iterations = scale, hw, iterations
        self.first_step = self.done  # steps before this scale
        self.last_i = 0
        self.checked = 0  # iterations of this scale already checked for non-finite terms
        self.passes = 0  # tile passes per iteration, once a tiled scale has reported one
        self.record = torch.zeros(max(iterations, 1), 3, len(image), dtype=torch.float64 if image.dtype ==
                                  torch.float64 else torch.float32, device=image.device)
        self._row: torch.Tensor | None = None
        self._row_index = 0
        # The image at the start of the early-stop window.
        self.anchor = image.detach().clone() if self.early_stop is not None else None

    def row(self, i: int) -> torch.Tensor:
        """Where iteration i's terms ([3, N]) go: objectives write them there (out=)."""
        self._row, self._row_index = self.record[i - 1], i
        return self._row

    def tick(self, i: int, terms: torch.Tensor, image: torch.Tensor) -> bool:
        """Iteration i ran, to `terms` ([3, N]), after which the image is `image`; True: it has settled, end the scale."""
        self.done += 1
        self.ran += 1
        self.last_i = i
        row = self._row if self._row is not None and self._row_index == i else self.record[i - 1]
        if terms.data_ptr() != row.data_ptr():  # written elsewhere than row(i)
            row.copy_(terms.detach())
        if i % self.every == 0 or i == self.iterations:
            self._check()
            self._report()
        if self.early_stop is not None and i % self.early_stop.every == 0 and i < self.iterations:
            return self._settled(i, image)
        return False

    def _settled(self, i: int, image: torch.Tensor) -> bool:
        self._check()
        with torch.no_grad():
            moved = (image.detach() - self.anchor).abs().flatten(1).mean(1).max() * 255
            self.anchor.copy_(image.detach())
        if float(moved) >= self.early_stop.min_change:
            return False
        # Count the skipped iterations as done, so progress still ends at 100%.
        self.done += self.iterations - i
        self._report()
        return True

    def finish_scale(self) -> None:
        self._check()

    def _check(self) -> None:
        if self.last_i <= self.checked:
            return
        totals = self.record[self.checked:self.last_i].sum((1, 2))
        bad = ~torch.isfinite(totals)
        if bool(bad.any()):
            first = self.first_step + self.checked + int(bad.nonzero()[0, 0]) + 1
            raise EngineError(
                f"preset {self.preset!r}: the loss became non-finite at iteration {first} "
                f"(scale {self.scale} of {self.scales}); lower learning_rate or style_weight"
            )
        self.checked = self.last_i

    def tile(self, done: int, total: int) -> None:
        """A tiled iteration's progress: `done` of `total` tile passes (a 24 MP iteration must not look hung)."""
        self.passes = total
        self._report(tile=done, inside=True)

    def _report(self, tile: int = 0, inside: bool = False) -> None:
        # Inside an iteration there are tile passes but perhaps no terms yet. At an
        # iteration's end a tiled scale still says how many passes an iteration
        # takes (tile 0/n), so a status view does not flicker between the two.
        if self.callback is None or (not inside and self.last_i == 0):
            return
        if self.last_i == 0:  # inside a scale's first tiled iteration: no loss known yet
            content = style = tv = 0.0
        else:
            sums = self.record[self.last_i - 1].sum(1).tolist()
            content, style, tv = sums[CONTENT], sums[STYLE], sums[TV]
        self.callback(
            Progress(
                preset=self.preset, images=self.images, scale=self.scale, scales=self.scales,
                width=self.hw[1], height=self.hw[0], iteration=self.last_i + inside,
                iterations=self.iterations, step=self.done, steps=self.steps, loss=content + style + tv,
                content=content, style=style, tv=tv, elapsed=time.perf_counter() - self.start,
                tile=tile, tiles=self.passes,
            )
        )
