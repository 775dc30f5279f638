"""L-BFGS for a batch of independent images, stepping them all at once.

Each image has its own curvature history, step and scaling, exactly as if
it were optimised alone; only the tensor operations are shared. Without
bounds the iterates are exactly those of one `torch.optim.LBFGS` per image
(tested), which would pay ~4 * history small kernel launches per image per
step: on a GPU, as much as the VGG19 pass of a small batch.

Like neural-style (and unlike the paper's Caffe/L-BFGS-B setup) there is no
line search: one function evaluation per step, so every image in the batch
needs exactly one forward and backward pass per step. Pixels are kept in
[0, 1] by projection after each step.

The curvature pair records the step actually taken, after projection.
`torch.optim.LBFGS` with the pixels clamped between its steps (the engine's
first version) records the unprojected step; the mismatch between that step
and the gradient change makes the loss jump about, and on a
box-constrained quadratic it settles on the wrong corner
(see tests/test_lbfgs.py). That variant reaches a rough objective sooner
from a full-size start (256 px, random weights: 62 iterations to the
classic run's objective against 180), so the default preset starts from a
coarse-to-fine pyramid instead, where this one needs ~25 full-size steps.
"""

from __future__ import annotations

import torch


class BatchedLBFGS:
    """Minimises N independent functions of x[n], n = 0..N-1, with box bounds.

    Call `step(grad)` with the gradient at the current `x` ([N, ...]); `x` is
    updated in place.
    """

    def __init__(self, x: torch.Tensor, history: int, lr: float = 1.0, bounds: tuple[float, float] = (0.0, 1.0)):
        self.x = x
        self.lr = lr
        self.bounds = bounds
        self.history = history
        # Curvature pairs, each [N, P], grown as they come (a short or early
        # stopped run never holds the whole history), then a ring buffer.
        self.s: list[torch.Tensor] = []  # step taken
        self.y: list[torch.Tensor] = []  # change in gradient
        self.rho: list[torch.Tensor] = []  # [N] 1 / (y.s); 0 marks a pair that image skipped
        self.pairs = 0  # pairs seen
        self.gamma = x.new_ones(len(x))  # initial Hessian scale, s.y / y.y of the newest accepted pair
        self._x: torch.Tensor | None = None  # the previous point
        self._g: torch.Tensor | None = None  # the gradient there

    def step(self, grad: torch.Tensor) -> None:
        g = grad.reshape(len(self.x), -1)
        flat = self.x.view(len(self.x), -1)
        if self._g is None:
            # First step: steepest descent, scaled so no pixel moves more than lr (as torch's LBFGS).
            step = g.abs().sum(1).clamp(min=1.0).reciprocal()[:, None] * self.lr
            direction = -g
        else:
            self._remember(flat - self._x, g - self._g)
            step = self.lr
            direction = -self._two_loop(g)
        self._x, self._g = flat.clone(), g.clone()
        flat.add_(direction * step).clamp_(*self.bounds)

    def _remember(self, s: torch.Tensor, y: torch.Tensor) -> None:
        ys = torch.linalg.vecdot(y, s)
        # Curvature condition, per image: a pair with y.s <= 0 would make the
        # inverse Hessian indefinite, so that image skips it (rho = 0).
        accepted = ys > 1e-10
        rho = torch.where(accepted, 1 / ys.clamp(min=1e-10), torch.zeros_like(ys))
        if len(self.s) < self.history:
            self.s.append(s)
            self.y.append(y)
            self.rho.append(rho)
        else:
            slot = self.pairs % self.history
            self.s[slot], self.y[slot], self.rho[slot] = s, y, rho
        self.gamma = torch.where(accepted, ys / torch.linalg.vecdot(y, y).clamp(min=1e-30), self.gamma)
        self.pairs += 1

    def _two_loop(self, g: torch.Tensor) -> torch.Tensor:
        """H g by the two-loop recursion (Nocedal & Wright, algorithm 7.4), per image."""
        newest_first = [(self.pairs - 1 - k) % self.history for k in range(len(self.s))]
        q = g.clone()
        alphas = {}
        for i in newest_first:
            alphas[i] = self.rho[i] * torch.linalg.vecdot(self.s[i], q)
            q.addcmul_(self.y[i], alphas[i][:, None], value=-1)
        r = q * self.gamma[:, None]
        for i in reversed(newest_first):
            beta = self.rho[i] * torch.linalg.vecdot(self.y[i], r)
            r.addcmul_(self.s[i], (alphas[i] - beta)[:, None])
        return r
