"""Loss modules for Gatys et al. (2016), small and composable.

Every loss returns one value per image ([N]), so a batch of photos is just a
sum of independent problems (exact with Adam, whose update is elementwise).

Departure from the paper: each content and style term is divided by the
energy of its own target (mean of squares). The paper's raw sums of squares
make the right alpha/beta depend on image size, layer, and which VGG19
weights are loaded (Caffe activations are ~100x torchvision's); normalised
terms start near 1 for every layer, so one set of weights works everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

_EPS = 1e-8


class _Gram(torch.autograd.Function):
    """F F^T with a one-matmul backward.

    Autograd sees bmm(F, F^T) as a product of two tensors and spends two
    matmuls on its backward, one per operand; both are the same tensor, so
    dF = (dG + dG^T) F needs one. This cuts the Gram's share of an iteration
    by a third (each matmul costs C*C*H*W).
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat)
        return torch.bmm(flat, flat.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (flat,) = ctx.saved_tensors
        symmetric = grad + grad.transpose(1, 2)
        if flat.stride(1) == 1:
            # channels_last features: return the gradient in their layout
            # (F^T S, transposed), or the conv branch's gradient meets it in
            # a strided add and the conv backward reorders its input.
            return torch.bmm(flat.transpose(1, 2), symmetric).transpose(1, 2)
        return torch.bmm(symmetric, flat)


def wide(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32, or float64 if it already is (the engine's fp64 precision, for exactness checks)."""
    return t if t.dtype == torch.float64 else t.float()


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices of [N, C, H, W] features -> [N, C, C], normalised by H*W.

    Always float32 (or float64 for float64 features), whatever autocast says: fp16 Grams overflow and bf16 ones
    are too coarse near convergence (FIELD_NOTES section 1). Normalising by
    H*W (Gatys' own code) makes a Gram independent of image size, so a style
    target computed at one size serves content of another.
    """
    n, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        # A view for both memory formats: channels_last merges H and W too.
        flat = wide(features).reshape(n, c, h * w)
        return _Gram.apply(flat) / (h * w)


def _normalised_mse(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, input.dim()))
    energy = target.pow(2).mean(dim=tuple(range(1, target.dim()))) + _EPS
    return (input - target).pow(2).mean(dim=dims) / energy


class ContentLoss(nn.Module):
    """Feature reconstruction loss at one layer (paper eq. 1, normalised)."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.register_buffer("target", wide(target.detach()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return _normalised_mse(wide(features), self.target)


class StyleLoss(nn.Module):
    """Gram matrix loss at one layer (paper eq. 4, normalised).

    `target` is a [C, C] Gram (shared by the batch) or [N, C, C].
    """

    def __init__(self, target_gram: torch.Tensor):
        super().__init__()
        if target_gram.dim() == 2:
            target_gram = target_gram.unsqueeze(0)
        self.register_buffer("target", wide(target_gram.detach()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        gram = gram_matrix(features)
        return _normalised_mse(gram, self.target.expand_as(gram))


class TVLoss(nn.Module):
    """Total variation: mean squared difference of neighbouring pixels."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dx = image[..., :, 1:] - image[..., :, :-1]
        dy = image[..., 1:, :] - image[..., :-1, :]
        return dx.pow(2).mean(dim=(1, 2, 3)) + dy.pow(2).mean(dim=(1, 2, 3))


class Scale(nn.Module):
    """Multiplies a loss module's output by a fixed weight."""

    def __init__(self, module: nn.Module, scale: float):
        super().__init__()
        self.module = module
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.module(*args, **kwargs) * self.scale


class LayerSum(nn.Module):
    """Sum of per-layer losses, each reading its own layer's features."""

    def __init__(self, losses: Mapping[str, nn.Module]):
        super().__init__()
        self.losses = nn.ModuleDict(dict(losses))

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(loss(features[name]) for name, loss in self.losses.items())


def layer_weights(layers: Sequence[str], weights: Sequence[float] | None) -> dict[str, float]:
    """Per-layer weights normalised to sum to 1 (the paper's w_l = 1/L by default)."""
    weights = list(weights) if weights is not None else [1.0] * len(layers)
    total = sum(weights)
    return {name: w / total for name, w in zip(layers, weights)}


def blend_grams(grams: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean of Gram targets: how several style images are blended."""
    total = float(sum(weights))
    return sum(g * (w / total) for g, w in zip(grams, weights))
