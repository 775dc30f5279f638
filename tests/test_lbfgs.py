"""The batched L-BFGS against torch.optim.LBFGS, on problems with known answers."""

import math

import pytest
import torch

from nst_watch.engine.lbfgs import BatchedLBFGS

UNBOUNDED = (-math.inf, math.inf)


def quadratics(n: int, p: int, seed: int = 0):
    """n independent convex quadratics 0.5 x'Ax - b'x, each with its own A and b."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, p, p, generator=g, dtype=torch.float64))[0]
    eigen = torch.logspace(0, 2, p, dtype=torch.float64).expand(n, p) * torch.rand(n, 1, generator=g, dtype=torch.float64).add(0.5)
    a = q @ torch.diag_embed(eigen) @ q.transpose(1, 2)
    b = torch.randn(n, p, generator=g, dtype=torch.float64)
    return a, b


def gradient(a, b, x):
    return torch.einsum("npq,nq->np", a, x) - b


def torch_lbfgs_path(a, b, x0, steps, history):
    """One torch.optim.LBFGS per problem, one evaluation per step, as the engine used to run it."""
    paths = []
    for k in range(len(x0)):
        x = x0[k].clone().requires_grad_(True)
        opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=history, tolerance_grad=0.0, tolerance_change=0.0)
        for _ in range(steps):
            def closure():
                opt.zero_grad()
                loss = 0.5 * x @ a[k] @ x - b[k] @ x
                loss.backward()
                return loss
            opt.step(closure)
        paths.append(x.detach())
    return torch.stack(paths)


def batched_path(a, b, x0, steps, history, bounds=UNBOUNDED):
    x = x0.clone()
    optimiser = BatchedLBFGS(x, history=history, bounds=bounds)
    for _ in range(steps):
        optimiser.step(gradient(a, b, x))
    return x


def test_unbounded_steps_are_exactly_torch_lbfgs_per_problem():
    a, b = quadratics(3, 12)
    x0 = torch.zeros(3, 12, dtype=torch.float64)
    for history in (3, 20):  # a full ring buffer and a partly filled one
        ours = batched_path(a, b, x0, 15, history)
        reference = torch_lbfgs_path(a, b, x0, 15, history)
        assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-9)


def test_each_problem_converges_as_if_alone():
    a, b = quadratics(4, 10, seed=1)
    x0 = torch.zeros(4, 10, dtype=torch.float64)
    together = batched_path(a, b, x0, 40, 10)
    alone = torch.cat([batched_path(a[k:k + 1], b[k:k + 1], x0[k:k + 1], 40, 10) for k in range(4)])
    assert torch.allclose(together, alone, rtol=1e-12, atol=1e-12)
    solution = torch.linalg.solve(a, b)
    assert torch.allclose(together, solution, atol=1e-4)


def test_bounds_hold_and_the_box_constrained_minimum_is_reached():
    # Separable quadratic pulling half of the pixels outside [0, 1]: the
    # constrained minimiser is the unconstrained one clipped to the box.
    target = torch.tensor([[-0.5, 0.2, 0.7, 1.6, 0.4, 2.0]], dtype=torch.float64)
    weight = torch.tensor([[1.0, 3.0, 0.5, 2.0, 1.5, 1.0]], dtype=torch.float64)
    x = torch.full_like(target, 0.5)
    optimiser = BatchedLBFGS(x, history=5)
    for _ in range(60):
        optimiser.step(weight * (x - target))
        assert x.min() >= 0 and x.max() <= 1
    assert torch.allclose(x, target.clamp(0, 1), atol=1e-6)


def test_torch_lbfgs_clamped_between_steps_misses_that_minimum():
    # Why the engine has its own L-BFGS: recording the unprojected step
    # drives pixels to the wrong bound on the same problem.
    target = torch.tensor([-0.5, 0.2, 0.7, 1.6, 0.4, 2.0], dtype=torch.float64)
    weight = torch.tensor([1.0, 3.0, 0.5, 2.0, 1.5, 1.0], dtype=torch.float64)
    x = torch.full_like(target, 0.5).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=5, tolerance_grad=0.0, tolerance_change=0.0)
    for _ in range(60):
        def closure():
            opt.zero_grad()
            loss = 0.5 * (weight * (x - target) ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            x.clamp_(0, 1)
    assert (x.detach() - target.clamp(0, 1)).abs().max() > 0.1


def test_a_pair_without_positive_curvature_is_skipped_for_that_problem_only():
    # Problem 0 is concave along its only axis (y.s < 0): its pairs must be
    # dropped, as torch.optim.LBFGS drops them, without touching problem 1's
    # history; problem 1 must step as if alone.
    a = torch.tensor([[[-1.0]], [[2.0]]], dtype=torch.float64)
    b = torch.tensor([[0.1], [0.3]], dtype=torch.float64)
    x0 = torch.tensor([[0.5], [0.2]], dtype=torch.float64)
    ours = batched_path(a, b, x0, 3, 4)
    reference = torch_lbfgs_path(a, b, x0, 3, 4)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, reference, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ours[1:], batched_path(a[1:], b[1:], x0[1:], 3, 4), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 3, 8, 8)])
def test_images_of_any_shape_are_flattened_per_image(shape):
    target = torch.rand(shape, dtype=torch.float64)
    x = torch.zeros(shape, dtype=torch.float64)
    optimiser = BatchedLBFGS(x, history=5)
    for _ in range(30):
        optimiser.step(x - target)
    assert torch.allclose(x, target, atol=1e-8)
