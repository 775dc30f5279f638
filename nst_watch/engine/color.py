"""Colour control (Gatys, Bethge, Hertzmann, Shechtman 2016, "Preserving
Color in Neural Artistic Style Transfer").

- luminance: transfer style on luminance only, keep the content's chroma.
- histogram: recolour the style image so its colour mean and covariance
  match the content's, then transfer as usual.
"""

from __future__ import annotations

import torch

# BT.601 full-range YCbCr (JPEG's): luminance from the same weights cameras use.
_RGB_TO_YCC = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
_YCC_TO_RGB = torch.linalg.inv(_RGB_TO_YCC)


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(image), image)


def rgb_to_ycc(image: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB in [0,1] -> Y in [0,1], Cb/Cr centred on 0."""
    return _apply(_RGB_TO_YCC, image)


def ycc_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return _apply(_YCC_TO_RGB, image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luminance."""
    return rgb_to_ycc(image)[:, :1]


def match_luminance(style_y: torch.Tensor, content_y: torch.Tensor) -> torch.Tensor:
    """Shift and scale the style's luminance to the content's mean and std.

    The paper does this so the transferred luminance stays in the content's
    tonal range; otherwise a dark painting darkens the photo.
    """
    s_mean, s_std = style_y.mean(), style_y.std()
    c_mean, c_std = content_y.mean(), content_y.std()
    return (style_y - s_mean) * (c_std / (s_std + 1e-8)) + c_mean


def with_content_chroma(output_y: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Recombine an optimised luminance with the content's chroma, as RGB."""
    ycc = rgb_to_ycc(content)
    ycc = torch.cat([output_y, ycc[:, 1:]], dim=1)
    return ycc_to_rgb(ycc)


def _sym_sqrt(cov: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp_min(1e-8).pow(power)
    return vectors @ torch.diag(values) @ vectors.T


def match_color(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Linear colour transfer: give `style` the colour mean and covariance of `content`.

    Uses the symmetric ("PCA") square root, which of the linear maps that
    match covariance rotates colours least. Both are [1, 3, H, W] (sizes may
    differ). The result is not clamped: clamping would break the match, and
    VGG accepts values slightly outside [0, 1].
    """
    s = style[0].reshape(3, -1).double()
    c = content[0].reshape(3, -1).double()
    s_mean, c_mean = s.mean(1, keepdim=True), c.mean(1, keepdim=True)
    s_cov = torch.cov(s) + 1e-6 * torch.eye(3, dtype=s.dtype)
    c_cov = torch.cov(c) + 1e-6 * torch.eye(3, dtype=c.dtype)
    transform = _sym_sqrt(c_cov, 0.5) @ _sym_sqrt(s_cov, -0.5)
    matched = transform @ (s - s_mean) + c_mean
    return matched.reshape_as(style[0]).unsqueeze(0).to(style.dtype)
