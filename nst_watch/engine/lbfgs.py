"""L-BFGS for a batch of independent images, stepping them all at once.

Each image has its own curvature history, step and scaling, exactly as if
it were optimised alone; only the tensor operations are shared. Without
bounds the iterates are those of one `torch.optim.LBFGS` per image (tested).

The direction comes from the compact representation of the inverse
Hessian (Byrd, Nocedal and Schnabel, "Representations of quasi-Newton
matrices and their use in limited memory methods", Math. Programming 63,
1994, eq. 3.1; Nocedal and Wright, *Numerical Optimization*, 2nd ed.,
section 7.2), not the two-loop recursion (Nocedal and Wright, algorithm
7.4). Both compute the same H g. The two-loop recursion is 4 dependent
vector operations per stored pair, about 600 small kernel launches per
step with the default 50 pairs: on a GPU, more time than VGG19's own
pass at 512 px. The compact form is a constant ~30 operations whatever
the history: three batched matrix products over the stored pairs
(`W [s; y]`, `W g`, `W^T c`), two m x m triangular solves and a few
vector operations. With S = [s_i], Y = [y_i] (oldest first),
R = triu(S^T Y), D = diag(S^T Y) and gamma = s.y / y.y of the newest pair:

    H g = gamma g + S p - gamma Y r,  where  R r = S^T g,
                                      R^T p = (D + gamma Y^T Y) r - gamma Y^T g.

The stored pairs live in slots of a ring buffer; the small matrices are
kept up to date one row and column per step (the new pair's inner
products with every stored vector come from one matrix product) and are
read in chronological order through a precomputed permutation of the
slots, so no stored vector is ever moved. Everything runs in the image's
precision, as the two-loop recursion did: at 128 px on the bundled
weights, 150 iterations with the m x m algebra in float64 instead ended
0.07% lower in loss, less than a change of memory layout moves it.

A pair that fails the curvature condition (y.s <= 1e-10) for an image is
stored as zeros for that image, and so is an empty slot: their rows and
columns of S^T Y and Y^T Y are exactly zero, a diagonal of 1e-30 (below
the last digit of any accepted y.s) keeps R invertible, and the solves
give them exactly zero weight: the image skips the pair, as the two-loop
recursion with rho = 0 does.

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

from .tensors import INDEX_LIMIT, flatten, like

_CURVATURE = 1e-10  # y.s at or below this: the pair is skipped (torch.optim.LBFGS's threshold)
_TINY = 1e-30  # on R's diagonal: invertible with skipped pairs, below the last digit of any accepted y.s


class _Block:
    """Pixels [start, stop) of every image and their share of the stored pairs.

    A GPU matrix product indexes each operand with int32 (PyTorch issue
    #17897: an illegal memory access past 2^31 elements), and the stored
    pairs of a 24 MP image with 50 pairs hold 7.2e9 values: they are kept
    in blocks of pixels small enough for it, and every product is summed
    over the blocks. Almost always there is one block.
    """

    def __init__(self, x: torch.Tensor, start: int, stop: int, history: int, whole: bool):
        n = len(x)
        self.whole = whole
        self.cols = slice(start, stop)
        self.x = x if whole else x[:, self.cols]
        self.x_prev = torch.empty_like(self.x)
        # W[:, i] = (s_i, y_i): slot i of the ring buffer; `rows` sees them as 2m rows.
        self.w = x.new_zeros(n, history, 2, stop - start)
        self.rows = self.w.view(n, 2 * history, stop - start)
        self.slots = [self.w[:, i] for i in range(history)]
        self.slots_t = [s.mT for s in self.slots]

    def part(self, g: torch.Tensor) -> torch.Tensor:
        return g if self.whole else g[:, self.cols]


class BatchedLBFGS:
    """Minimises N independent functions of x[n], n = 0..N-1, with box bounds.

    `x` is [N, ...] (contiguous or channels_last), updated in place by
    `step(grad)`, where `grad` is the gradient at the current `x` (any
    layout; a fresh tensor each step: the optimiser keeps it until the
    next step instead of copying it). `history` pairs are stored: 2 *
    history vectors of x[n]'s size per image, allocated at once (the
    engine passes at most the scale's iterations). Raises ValueError for a
    history below 1.
    """

    def __init__(self, x: torch.Tensor, history: int, lr: float = 1.0, bounds: tuple[float, float] = (0.0, 1.0)):
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        self.x = x
        self.lr = lr
        self.bounds = bounds
        self.history = m = history
        self.pairs = 0  # pairs seen
        self._started = False
        n = len(x)
        self._x = flatten(x)  # [N, P], a view of x
        p = self._x.shape[1]
        width = max(1, INDEX_LIMIT // (n * 2 * m))  # pixels a block may hold
        self._blocks = [_Block(self._x, a, min(a + width, p), m, whole=width >= p) for a in range(0, p, width)]
        small = dict(device=x.device, dtype=x.dtype)
        # Inner products of every stored vector with every other, in slot order
        # (rows/columns 2i and 2i+1 are s_i and y_i).
        self._k = torch.zeros(n, 2 * m, 2 * m, **small)
        # -gamma, minus the initial Hessian scale s.y / y.y of the newest accepted pair (negated: it
        # only ever multiplies what is subtracted).
        self._neg_gamma = -torch.ones(n, 1, 1, **small)
        self._zero = torch.zeros((), **small)
        self._g_prev: torch.Tensor | None = None
        self._upper = torch.ones(m, m, **small).triu()
        self._tiny = torch.eye(m, **small) * _TINY
        # Per slot, made once: views of its rows and columns of K, and the permutations
        # between slot order and chronological order (oldest first, newest = that slot).
        self._k_cols = [self._k[:, :, 2 * i:2 * i + 2] for i in range(m)]
        self._k_rows = [self._k[:, 2 * i:2 * i + 2, :] for i in range(m)]
        order = [torch.tensor([(i + 1 + j) % m for j in range(m)]) for i in range(m)]
        self._y_order = [(2 * o + 1).to(x.device) for o in order]  # y columns, oldest first
        self._sy_order = [torch.cat([2 * o, 2 * o + 1]).to(x.device) for o in order]  # s block, then y block
        self._unorder = [torch.argsort(o) for o in self._sy_order]

    @property
    def blocks(self) -> list[torch.Tensor]:
        """The stored pairs, one [N, history, 2, pixels] tensor per block of pixels (see _Block)."""
        return [block.w for block in self._blocks]

    def step(self, grad: torch.Tensor) -> None:
        g = flatten(like(grad, self.x))
        if not self._started:
            # First step: steepest descent, scaled so no pixel moves more than lr (as torch's LBFGS).
            self._started = True
            for block in self._blocks:
                block.x_prev.copy_(block.x)
            self._g_prev = g
            step = g.abs().sum(1, keepdim=True).clamp(min=1.0).reciprocal() * self.lr
            self._x.sub_(g * step).clamp_(*self.bounds)
            return
        slot = self.pairs % self.history
        self._remember(slot, g)
        self.pairs += 1
        self._step(slot, g)
        self._x.clamp_(*self.bounds)

    def _remember(self, slot: int, g: torch.Tensor) -> None:
        """Store (s, y) of the step just taken in `slot`, with its inner products."""
        products = None
        for block in self._blocks:
            pair = block.slots[slot]
            torch.sub(block.x, block.x_prev, out=pair[:, 0])
            torch.sub(block.part(g), block.part(self._g_prev), out=pair[:, 1])
            block.x_prev.copy_(block.x)
            # Every stored vector against the new s and y, the new pair included: [N, 2m, 2].
            part = torch.bmm(block.rows, block.slots_t[slot])
            products = part if products is None else products.add_(part)
        self._g_prev = g
        ys_yy = products[:, 2 * slot:2 * slot + 2, 1]  # s.y and y.y of the new pair
        ys = ys_yy[:, :1]
        # Curvature condition, per image: a pair with y.s <= 0 would make the
        # inverse Hessian indefinite, so that image stores zeros instead.
        accepted = (ys > _CURVATURE)[:, :, None]
        self._neg_gamma = torch.where(accepted, torch.addcdiv(self._zero, ys, ys_yy[:, 1:], value=-1)[:, :, None],
                                      self._neg_gamma)
        for block in self._blocks:
            block.slots[slot].mul_(accepted)
        products.mul_(accepted)
        self._k_cols[slot].copy_(products)
        self._k_rows[slot].copy_(products.mT)

    def _step(self, slot: int, g: torch.Tensor) -> None:
        """x += lr * (-H g), H g by the compact representation (module docstring)."""
        m = self.history
        order = self._sy_order[slot]
        sy_yy = self._k.index_select(2, self._y_order[slot]).index_select(1, order)  # [S^T Y; Y^T Y], chronological
        sy, yy = sy_yy.split(m, 1)
        ab = None
        for block in self._blocks:
            part = torch.bmm(block.rows, block.part(g).unsqueeze(-1))
            ab = part if ab is None else ab.add_(part)
        a, b = ab.index_select(1, order).split(m, 1)  # S^T g, Y^T g
        r_matrix = torch.addcmul(self._tiny, sy, self._upper)
        r = torch.linalg.solve_triangular(r_matrix, a, upper=True)
        # (D + gamma Y^T Y) r - gamma Y^T g, as D r + (-gamma)(Y^T g - Y^T Y r)
        rhs = torch.addcmul(r_matrix.diagonal(0, 1, 2).unsqueeze(-1) * r, self._neg_gamma,
                            torch.baddbmm(b, yy, r, alpha=-1))
        p = torch.linalg.solve_triangular(r_matrix.mT, rhs, upper=False)
        coefficients = torch.cat([p, r * self._neg_gamma], 1).index_select(1, self._unorder[slot]).mT
        for block in self._blocks:
            # -H g = -gamma g - (S p - gamma Y r), block by block
            g_part = block.part(g)
            direction = torch.baddbmm(g_part.unsqueeze(1) * self._neg_gamma, coefficients, block.rows, alpha=-1)
            block.x.add_(direction.view_as(g_part), alpha=self.lr)
