"""The optimisation loop: one loop for every scale, tiled or whole, with L-BFGS or Adam.

An objective (objective.py, tiled.py) gives the terms and gradient at an
image; an optimiser steps the image from the gradient; the clock records,
reports and decides when the picture has settled. Nothing here knows
whether the image is a batch of whole photos on a GPU or one photo on the
host computed in tiles.
"""

from __future__ import annotations

import torch

from .clock import Clock
from .lbfgs import BatchedLBFGS


class BestIterate:
    """Each image's best evaluated iterate and its terms.

    Without a line search L-BFGS can overshoot late in a run, so the loop
    returns, per image, the evaluated iterate with the lowest objective.
    """

    def __init__(self, x: torch.Tensor):
        self.image = x.detach().clone()
        self.terms = torch.full((3, len(x)), float("inf"), device=x.device)
        self.total = torch.full((len(x),), float("inf"), device=x.device)

    def update(self, x: torch.Tensor, terms: torch.Tensor) -> None:
        """x [N, ...] evaluated to terms [3, N]."""
        total = terms.sum(0)
        better = total < self.total
        self.total = torch.where(better, total, self.total)
        self.terms = torch.where(better, terms, self.terms)
        self.image = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x, self.image)


class LBFGS:
    """BatchedLBFGS (lbfgs.py) as the loop's optimiser: the result is the best evaluated iterate."""

    def __init__(self, x: torch.Tensor, history: int):
        self.image = x
        self.optimiser = BatchedLBFGS(x, history=history)
        self.best = BestIterate(x)

    def step(self, terms: torch.Tensor, grad: torch.Tensor) -> None:
        self.best.update(self.image, terms)
        self.optimiser.step(grad)

    def current(self) -> torch.Tensor:
        return self.image

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The last step's result was never evaluated; judging it would cost a
        # whole forward pass, so the best evaluated iterate stands, and its
        # terms are already known.
        return self.best.image, self.best.terms


class AveragedAdam:
    """Adam on [0, 1] pixels with an exponential moving average of the iterate.

    Departure from the paper (which uses L-BFGS), as in style-transfer-pytorch:
    the average removes Adam's high-frequency jitter. Its window grows with
    the run, min(decay, (1 + t) / (10 + t)), so a short run is not dragged
    back towards its starting image. The result is the average, whose
    terms are unknown (None) until evaluated.
    """

    def __init__(self, x: torch.Tensor, learning_rate: float, decay: float | None):
        self.image = x
        self.optimiser = torch.optim.Adam([x], lr=learning_rate)
        self.decay = decay
        self.average: torch.Tensor | None = None
        self.t = 0

    def step(self, terms: torch.Tensor, grad: torch.Tensor) -> None:
        self.t += 1
        self.image.grad = grad
        self.optimiser.step()
        self.image.grad = None
        with torch.no_grad():
            self.image.clamp_(0, 1)
            if self.decay and self.average is None:
                self.average = self.image.detach().clone()
            elif self.decay:
                d = min(self.decay, (1 + self.t) / (10 + self.t))
                self.average.mul_(d).add_(self.image, alpha=1 - d)

    def current(self) -> torch.Tensor:
        return self.average if self.average is not None else self.image

    def result(self) -> tuple[torch.Tensor, None]:
        return self.current().detach(), None


def optimise(objective, optimiser, steps: int, clock: Clock) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run up to `steps` iterations of `optimiser` on `objective`; (image, its [3, N] terms or None).

    `objective.terms_and_gradient(image, on_tile, out)` gives the terms
    (written into the clock's record of the iteration) and gradient at the
    optimiser's image; the clock ends the scale early once the picture
    settles, and raises EngineError on a non-finite loss.
    """
    for i in range(1, steps + 1):
        terms, grad = objective.terms_and_gradient(optimiser.image, on_tile=clock.tile, out=clock.row(i))
        optimiser.step(terms, grad)
        if clock.tick(i, terms, optimiser.current()):
            break
    clock.finish_scale()
    return optimiser.result()
