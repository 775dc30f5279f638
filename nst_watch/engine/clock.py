"""Progress events, early stopping and the non-finite watchdog of a running optimisation.

The engine never prints: it hands `Progress` events to a callback, which
the CLI's bar, the daemon's status and the web view all render.
"""

from __future__ import annotations

import math
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
    iterations: int  # at this scale, at most
    step: int  # iterations run so far, across all scales
    steps: int  # iterations at most (every scale's cap)
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
    # What early stopping will likely leave of `steps`: the iterations the run is expected to take in all
    # (Clock.expected), equal to `step` once it has ended; and the seconds left at this pace (None before the first
    # iteration's pace is known).
    expected_steps: int = 0
    eta: float | None = None


ProgressCallback = Callable[[Progress], None]

# What a scale with early stopping is expected to run before any window has been read, as a fraction of its cap:
# the default preset on the bundled weights stopped after 150-250 of 500 iterations (mean 206-250 over the
# examples, benchmarks/RESULTS.md).
SETTLE_PRIOR = 0.45
# The decay is fitted over this many latest windows: it slows as the picture settles, and older windows would
# promise an early end.
FIT_WINDOWS = 4


class Clock:
    """Progress reports, early stopping, estimates and the non-finite watchdog, without a host read per iteration.

    Each iteration's terms ([3, N]) are written into a record on the device;
    the record is read (a host sync) only at reporting intervals,
    early-stop window ends and a scale's end. A non-finite loss is found
    there and named with the iteration where it first appeared.

    `schedule` lists each scale's (height, width) and most iterations. The
    estimate of what is left follows how the picture settles: early
    stopping ends a scale once a window's mean pixel change falls below
    `min_change`, and that change shrinks about geometrically from one
    window to the next under L-BFGS, so its rate of decay says how many
    windows remain. Before a scale has two readings it is expected
    to run SETTLE_PRIOR of its cap (all of it without early stopping, or
    when the cap is two windows or less); after, the decay fitted over all
    its windows (`_decay`) decides. Time follows pixels: a scale
    costs its expected iterations x its pixels x this scale's seconds per
    iteration and pixel.
    """

    def __init__(self, preset: str, images: int, schedule: list[tuple[tuple[int, int], int]], start: float,
                 callback: ProgressCallback | None, every: int, early_stop=None):
        self.preset, self.images, self.schedule = preset, images, list(schedule)
        self.scales, self.steps = len(self.schedule), sum(cap for _, cap in self.schedule)
        self.start, self.callback, self.every = start, callback, every
        self.early_stop = early_stop
        self.ran = 0  # iterations run, across scales

    def begin_scale(self, scale: int, hw: tuple[int, int], iterations: int, image: torch.Tensor) -> None:
        self.scale, self.hw, self.iterations = scale, hw, iterations
        self.first_step = self.ran  # iterations before this scale
        self.last_i = 0
        self.checked = 0  # iterations of this scale already checked for non-finite terms
        self.passes = 0  # tile passes per iteration, once a tiled scale has reported one
        self.moves: list[float] = []  # each early-stop window's mean pixel change (8-bit levels)
        self.scale_start = time.perf_counter()
        self.tiles_done = 0  # tile passes of the running iteration
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
        self.ran += 1
        self.last_i = i
        self.tiles_done = 0
        row = self._row if self._row is not None and self._row_index == i else self.record[i - 1]
        if terms.data_ptr() != row.data_ptr():  # written elsewhere than row(i)
            row.copy_(terms.detach())
        if self.early_stop is not None and i % self.early_stop.every == 0 and i < self.iterations:
            if self._settled(image):
                self.iterations = i  # the scale ends here: what was expected of it is now known
                self._check()
                self._report()
                return True
        if i % self.every == 0 or i == self.iterations:
            self._check()
            self._report()
        return False

    def _settled(self, image: torch.Tensor) -> bool:
        self._check()
        with torch.no_grad():
            moved = (image.detach() - self.anchor).abs().flatten(1).mean(1).max() * 255
            self.anchor.copy_(image.detach())
        self.moves.append(float(moved))
        return self.moves[-1] < self.early_stop.min_change

    def finish_scale(self) -> None:
        self._check()

    # --- estimates ---------------------------------------------------------------------

    def _prior(self, cap: int) -> int:
        """Iterations a scale of `cap` is expected to run before any reading of how it settles."""
        if self.early_stop is None or cap <= 2 * self.early_stop.every:
            return cap
        return max(2 * self.early_stop.every, min(cap, round(SETTLE_PRIOR * cap)))

    def _expected_here(self) -> int:
        """Iterations the running scale is expected to run in all (at least those it has run)."""
        i, cap, stop = self.last_i, self.iterations, self.early_stop
        if stop is None:
            return cap
        ratio = self._decay()
        if ratio is not None:
            last = self.moves[-1]
            windows = math.ceil(math.log(stop.min_change / last) / math.log(ratio)) if last >= stop.min_change else 0
            estimate = len(self.moves) * stop.every + windows * stop.every
        else:
            estimate = max(self._prior(cap), (i // stop.every + 1) * stop.every)
        return max(i, min(cap, estimate))

    def left_here(self) -> int:
        """Iterations the running scale is expected to run still (early stopping's estimate)."""
        return self._expected_here() - self.last_i

    def _decay(self) -> float | None:
        """How much a window's pixel change shrinks from one window to the next, fitted over this scale's windows.

        A least-squares line through log(change) per window: the changes
        wobble from window to window (5.7, 5.7, 5.1, 4.4, 4.9, 3.4 levels
        near the end of a 96 px run on the bundled weights), and the last
        two alone made the estimate jump by 100 iterations. None with fewer
        than two windows or no decay; at most 0.97, so a slow finish is a
        long one, not a never.
        """
        if len(self.moves) < 2 or min(self.moves) <= 0:
            return None
        logs = [math.log(m) for m in self.moves[-FIT_WINDOWS:]]
        k = len(logs)
        mean_x, mean_y = (k - 1) / 2, sum(logs) / k
        slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(logs)) / sum((x - mean_x) ** 2 for x in range(k))
        return min(math.exp(slope), 0.97) if slope < 0 else None

    def expected(self) -> tuple[int, float | None]:
        """(iterations the whole run is expected to take, seconds left at the current pace or None)."""
        here = self._expected_here()
        future = [(hw, self._prior(cap)) for hw, cap in self.schedule[self.scale:]]
        total = self.first_step + here + sum(n for _, n in future)
        # Iterations of this scale done so far, the running one's tile passes included.
        progress = self.last_i + (self.tiles_done / self.passes if self.passes else 0.0)
        if not progress:
            return total, None
        pace = (time.perf_counter() - self.scale_start) / progress  # seconds an iteration of this scale
        pixels = self.hw[0] * self.hw[1]
        left = (here - progress) * pace + sum(n * pace * hw[0] * hw[1] / pixels for hw, n in future)
        return total, max(left, 0.0)

    # --- non-finite watchdog and reports ------------------------------------------------

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
        self.tiles_done = done
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
        expected, eta = self.expected()
        self.callback(
            Progress(
                preset=self.preset, images=self.images, scale=self.scale, scales=self.scales,
                width=self.hw[1], height=self.hw[0], iteration=self.last_i + inside,
                iterations=self.iterations, step=self.ran, steps=self.steps, loss=content + style + tv,
                content=content, style=style, tv=tv, elapsed=time.perf_counter() - self.start,
                tile=tile, tiles=self.passes, expected_steps=expected, eta=eta,
            )
        )
