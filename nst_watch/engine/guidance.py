"""Guidance channels: a mask's regions carried to each pyramid scale and each VGG19 layer (Gatys et al. 2017).

A mask reaches the engine as region weights, [R, H, W] per photo: R
regions in the order of `Preset.region_list()`, each pixel's weights in
[0, 1] summing to 1 (nst_watch.photo.mask makes them from a painted file).
The engine needs them at every pyramid scale and, within a scale, at the
resolution of every style layer, where GuidedStyleLoss weights the features.

How a channel reaches a layer. The paper (section 4.1) propagates guidance
either by plain resampling to each layer's size or by restricting a region
to the positions whose receptive field lies inside it (eroding it). Here
each feature position gets the mean of the pixel weights under its pooling
footprint: the channel is average-pooled on VGG19's own pooling grid, one
2x2 pool per pooling before the layer. Why:

- the regions stay a partition of unity at every layer, so every feature
  position is matched exactly once across regions (erosion leaves the
  positions along an edge in no region, free of any style: a seam), and a
  mask painting everything with one style gives the unmasked objective
  exactly;
- soft edges stay soft, without the ringing (negative weights) of a
  bicubic resample;
- the grid is the one tiles are aligned to (nst_watch.engine.tiled), so a
  tile's guidance is a slice of the whole image's and the tiled objective
  stays exact.

Between pyramid scales the weights are resampled with convex filters only
(box averaging to shrink, bilinear to enlarge), which keep them in [0, 1]
and summing to 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..config import Preset, min_edge


def resize_weights(weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, R, H, W] region weights -> [N, R, *size], still in [0, 1] and summing to 1 over R.

    One axis at a time: box averaging (`interpolate(mode="area")`, adaptive
    average pooling, which has no factor limit on any device) where it
    shrinks, bilinear where it grows; both are convex combinations.
    """
    x = weights
    for axis, target in ((2, size[0]), (3, size[1])):
        source = x.shape[axis]
        if source == target:
            continue
        shape = (target, x.shape[3]) if axis == 2 else (x.shape[2], target)
        mode = "area" if target < source else "bilinear"
        x = F.interpolate(x, size=shape, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    x = x.clamp_min(0)
    return x / x.sum(dim=1, keepdim=True).clamp_min(1e-12)


PIXELS = "pixels"  # at_layers' key for the weights at the image's own resolution


def at_layers(weights: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The weights [N, R, H, W] at each layer's resolution: average-pooled once per pooling before it.

    Floor pooling, as VGG19's, so each map has its layer's feature shape.
    The weights themselves are kept under PIXELS (for losses.KeepLoss).
    """
    out = {PIXELS: weights}
    by_pools: dict[int, torch.Tensor] = {0: weights}
    for name in layers:
        pools = int(math.log2(min_edge([name])))  # a layer's stride is its min_edge
        for k in range(1, pools + 1):
            if k not in by_pools:
                by_pools[k] = F.avg_pool2d(by_pools[k - 1], 2, 2)
        out[name] = by_pools[pools]
    return out


def region_styles(preset: Preset, styles: Sequence[torch.Tensor]
                  ) -> list[tuple[list[torch.Tensor], list[float]] | None]:
    """Per region of `preset.region_list()`: (its style tensors, their blend weights), or None (keeps the photo).

    `styles` are the tensors of `preset.style_images()`, in that order.
    """
    own = len(preset.styles)
    groups: list[tuple[list[torch.Tensor], list[float]] | None] = []
    offset = 0 if preset.regions is None else own
    for _, _, images in preset.region_list():
        if images is None:
            groups.append(None)
            continue
        groups.append((list(styles[offset:offset + len(images)]), [s.weight for s in images]))
        if preset.regions is not None:
            offset += len(images)
    return groups


def keep_weights(preset: Preset, weights: torch.Tensor) -> torch.Tensor | None:
    """[N, 1, H, W]: each pixel's weight in the regions that keep the photo; None where no region does."""
    kept = [r for r, (_, _, images) in enumerate(preset.region_list()) if images is None]
    return weights[:, kept].sum(dim=1, keepdim=True) if kept else None


def whole_styles(preset: Preset, styles: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[float]]:
    """The style tensors and weights for a photo run without a mask: the preset's own `styles`.

    ValueError for a preset whose styles are all in its regions.
    """
    if not preset.styles:
        raise ValueError(f"preset {preset.name!r} names regions and no styles of its own, so it needs a mask")
    return list(styles[:len(preset.styles)]), [s.weight for s in preset.styles]
