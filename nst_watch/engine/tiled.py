"""The exact Gatys objective and its gradient, computed one tile at a time.

An image too large for the device's memory is cut into tiles, and the
objective and its gradient come out the same as the untiled ones (up to
float rounding), not an approximation blended at seams.

Derivation (Gatys et al. 2016, eqs. 1, 3-5, 7; this project's normalised
terms, see losses.py). At a layer l with feature map F (C x M positions):

- the content term  L_c = sum_p |F_p - P_p|^2 / (C M E_P)  is a sum over
  positions p, so each tile contributes the positions it owns;
- the style term  L_s = |G - A|^2 / (C^2 E_A), with the Gram
  G = (1/M) sum_p F_p F_p^T, depends on the whole image only through G, a
  sum over positions. Its gradient is
      dL_s/dx = sum_p (dL_s/dG) : (dG_p/dx),   dL_s/dG = 2 (G - A) / (C^2 E_A),
  and dL_s/dG is one C x C matrix for the whole image.

So pass 1 runs every tile forward without a graph and sums the Grams of the
positions each tile owns into the global G; dL_s/dG follows. Pass 2 runs
each tile forward and backward on the surrogate
    S_tile = sum_l <dL_s/dG_l, G_l,tile> + L_c,tile,
whose gradient on the tile's pixels is exactly that tile's share of the
untiled gradient; the shares are added into one gradient image (a tile's
halo pixels receive gradient too: owned features depend on them).

Exactness needs three things, all derived from the layers in use:

- a halo around each tile covering how far a tile edge's padding reaches
  into the features (`Geometry.halo`: 80 px for relu5_1, 40 px for relu4_2);
- tile origins on the pooling grid (`Geometry.align`: 16 px once four
  poolings precede the deepest layer), so every pooling window of a tile is
  a pooling window of the whole image;
- the same padding as untiled at the image's own border: a tile touching the
  border is read up to it, so its convolutions pad exactly there.

Positions of the halo are computed but masked out of Grams and content terms.
The total variation term is computed on the whole image (it is cheap and
local). The price of exactness is one extra forward pass per tile: a tiled
iteration costs about 1.5x an untiled one of the same pixels.

Three passes read owned features tile by tile without a graph: a style
image's Gram targets, the content targets, and each iteration's pass 1.
`tile_features` is that pass, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..config import min_edge
from .losses import _EPS, GuidedStyleLoss, KeepLoss, StyleLoss, TVLoss, gram_matrix, wide
from .vgg import LAYER_NAMES, FeatureExtractor, layer_index


@dataclass(frozen=True)
class Geometry:
    """Halo and alignment, in input pixels, for a set of VGG19 layers.

    `halo`: how far the padding at a tile's edge contaminates the features
    of the deepest layer, rounded up to `align`. `align`: the stride of the
    deepest layer (2 ** poolings before it), the grid tile origins sit on.
    """

    halo: int
    align: int

    @classmethod
    def of(cls, layers: Sequence[str]) -> "Geometry":
        deepest = max(layer_index(name) for name in layers)
        reach, stride = 0, 1  # contamination depth and stride, in input pixels
        for name in LAYER_NAMES[: deepest + 1]:
            if name.startswith("conv"):
                reach += stride  # a 3x3 convolution reads one position further
            elif name.startswith("pool"):
                # A pooled position is contaminated when any of its inputs is.
                reach = math.ceil(reach / (2 * stride)) * 2 * stride
                stride *= 2
        return cls(halo=math.ceil(reach / stride) * stride, align=stride)


@dataclass(frozen=True)
class Tile:
    """One tile: the pixels it owns and the (larger) region it reads, as (top, bottom, left, right)."""

    own: tuple[int, int, int, int]
    read: tuple[int, int, int, int]

    def owned_positions(self, stride: int, shape: tuple[int, int]) -> tuple[slice, slice]:
        """The owned part of this tile's feature map at `stride`, whose local shape is `shape`."""
        top, bottom, left, right = self.own
        rtop, rbottom, rleft, rright = self.read
        # A tile ending at the image's edge owns whatever floor-pooling kept there.
        y1 = shape[0] if bottom == rbottom else (bottom - rtop) // stride
        x1 = shape[1] if right == rright else (right - rleft) // stride
        return slice((top - rtop) // stride, y1), slice((left - rleft) // stride, x1)


def tiles(height: int, width: int, tile: int, geometry: Geometry) -> list[Tile]:
    """Cover a height x width image with tiles owning `tile` px (a multiple of geometry.align) each way.

    The last row and column own what is left. Raises ValueError for a tile
    size that is not a positive multiple of the alignment.
    """
    if tile <= 0 or tile % geometry.align:
        raise ValueError(f"tile must be a positive multiple of {geometry.align} px, not {tile}")
    out = []
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(height, top + tile), min(width, left + tile)
            read = (max(0, top - geometry.halo), min(height, bottom + geometry.halo),
                    max(0, left - geometry.halo), min(width, right + geometry.halo))
            out.append(Tile((top, bottom, left, right), read))
    return out


def gram_sum(features: torch.Tensor) -> torch.Tensor | float:
    """sum_p F_p F_p^T over the positions of [1, C, h, w] features, [C, C] (0 where a tile owns none)."""
    positions = features.shape[-2] * features.shape[-1]
    return gram_matrix(features)[0] * positions if positions else 0.0


def crop(tile: Tile, image: torch.Tensor, device: torch.device, dtype: torch.dtype,
         channels_last: bool) -> torch.Tensor:
    """The region `tile` reads from `image` [1, C, H, W], on the compute device."""
    top, bottom, left, right = tile.read
    x = image[..., top:bottom, left:right].to(device, dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def owned(tile: Tile, features: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """The positions of layer `name`'s features that `tile` owns (float32, or float64)."""
    f = features[name]
    ys, xs = tile.owned_positions(min_edge([name]), tuple(f.shape[-2:]))  # a layer's stride is its min_edge
    return wide(f[..., ys, xs])


def tile_features(extractor: FeatureExtractor, image: torch.Tensor, grid: Sequence[Tile], layers: Sequence[str], *,
                  device: torch.device, dtype: torch.dtype, channels_last: bool,
                  render: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
                  ) -> Iterator[tuple[int, Tile, dict[str, torch.Tensor]]]:
    """Per tile of `grid`, without a graph: (index, tile, {layer: the features it owns}).

    `image` is [1, C, H, W] anywhere (the host, for a photo too big for the
    device); each tile is cropped, moved to `device`, rendered to RGB and
    run through `extractor`.
    """
    with torch.no_grad():
        for i, tile in enumerate(grid):
            features = extractor(render(crop(tile, image, device, dtype, channels_last)))
            yield i, tile, {name: owned(tile, features, name) for name in layers}


def add_grams(kept: Mapping[str, torch.Tensor], sums: dict, counts: dict) -> None:
    """Add one tile's Gram sums and position counts of its owned features into `sums` and `counts`."""
    for name, f in kept.items():
        sums[name] = sums.get(name, 0.0) + gram_sum(f)
        counts[name] = counts.get(name, 0) + f.shape[-2] * f.shape[-1]


def owned_guidance(tile: Tile, guidance: torch.Tensor, name: str, owned_shape: tuple[int, int]) -> torch.Tensor:
    """The part of the whole image's guidance [N, R, H_l, W_l] at layer `name` under `tile`'s owned features.

    Tile origins sit on the pooling grid, so the owned features of a tile
    whose top-left owned pixel is (top, left) start at (top, left) / stride
    in the whole image's feature map.
    """
    stride = min_edge([name])
    top, _, left, _ = tile.own
    y, x = top // stride, left // stride
    return guidance[..., y:y + owned_shape[0], x:x + owned_shape[1]]


def guided_sums(features: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """sum_p T_rp^2 F_p F_p^T per region of [1, C, h, w] features under [1, R, h, w] guidance: [R, C, C]."""
    c = features.shape[1]
    m = features.shape[-2] * features.shape[-1]
    flat, t = features.reshape(c, m), guidance.to(features.dtype).reshape(-1, 1, m)
    return torch.stack([(flat * t[r]) @ (flat * t[r]).T for r in range(len(t))])  # a region at a time


def guided_gram_matrices_tiled(extractor: FeatureExtractor, image: torch.Tensor, guide: Mapping[str, torch.Tensor],
                               layers: Sequence[str], tile: int, *, device: torch.device,
                               dtype: torch.dtype = torch.float32, channels_last: bool = True,
                               render: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
                               ) -> dict[str, torch.Tensor]:
    """losses.guided_gram_matrices of `image` [1, C, H, W] under `guide` (layer -> [1, R, H_l, W_l]), by tiles.

    Each region's Gram is a sum over positions divided by the region's
    mass, so tiles add their owned positions' sums exactly. [1, R, C, C] per layer.
    """
    grid = tiles(*image.shape[-2:], tile, Geometry.of(layers))
    sums: dict = {}
    for _, t, kept in tile_features(extractor, image, grid, layers, device=device, dtype=dtype,
                                    channels_last=channels_last, render=render):
        for name, f in kept.items():
            g = owned_guidance(t, guide[name], name, tuple(f.shape[-2:]))
            sums[name] = sums.get(name, 0.0) + guided_sums(f, g)
    out = {}
    for name in layers:
        mass = wide(guide[name]).pow(2).sum(dim=(2, 3)).clamp_min(_EPS).to(sums[name].dtype)  # [1, R]
        out[name] = (sums[name] / mass.reshape(-1, 1, 1))[None]
    return out


def gram_matrices(extractor: FeatureExtractor, image: torch.Tensor, layers: Sequence[str], tile: int, *,
                  device: torch.device, dtype: torch.dtype = torch.float32,
                  channels_last: bool = True) -> dict[str, torch.Tensor]:
    """Gram matrices [1, C, C] of `image` [1, 3, H, W] at `layers`, computed `tile` px at a time.

    Equal to losses.gram_matrix of the untiled features (a Gram is a sum
    over positions, divided by their number), for a style image whose
    forward pass does not fit in memory whole. No graph is kept.
    """
    grid = tiles(*image.shape[-2:], tile, Geometry.of(layers))
    sums: dict = {}
    counts: dict = {}
    for _, _, kept in tile_features(extractor, image, grid, layers, device=device, dtype=dtype,
                                    channels_last=channels_last):
        add_grams(kept, sums, counts)
    return {name: (sums[name] / counts[name])[None] for name in layers}


class TiledObjective:
    """content_weight * L_c + sum_l style loss_l + TV, by tiles: objective.StyleTransferObjective's terms, exactly.

    `extractor` runs VGG19 to the layers in use; `content` is the content
    image [1, 3, H, W] (RGB in [0, 1], on any device) whose features at
    `content_layers` are the targets; `style` maps each style layer to its
    StyleLoss (target Gram and weight, style_weight x w_l, folded in);
    `tv` is the TVLoss (weight folded in), `keep` a mask's KeepLoss
    (added to TV's row) or None. `render` maps the optimised
    tensor to the RGB image VGG19 sees (identity, or grey to RGB for
    colour: luminance). Tiles run on `device`; images and gradients stay
    where the caller keeps them (the host, for a photo too big for the
    device).
    """

    def __init__(self, extractor: FeatureExtractor, content: torch.Tensor, *,
                 content_layers: Sequence[str], content_weight: float, style: Mapping[str, StyleLoss],
                 tv: TVLoss, render: Callable[[torch.Tensor], torch.Tensor], tile: int,
                 device: torch.device, dtype: torch.dtype = torch.float32, channels_last: bool = True,
                 keep: KeepLoss | None = None):
        if content.dim() != 4 or len(content) != 1:
            raise ValueError(f"content must be [1, C, H, W], got {tuple(content.shape)}")
        self.extractor = extractor
        self.content_layers, self.style_layers = tuple(content_layers), tuple(style)
        self.geometry = Geometry.of([*self.content_layers, *self.style_layers])
        self.tiles = tiles(*content.shape[-2:], tile, self.geometry)
        self.shape = tuple(content.shape)
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.render = render
        self.content_weight = content_weight
        self.style = {name: loss.to(device) for name, loss in style.items()}
        self.tv = tv
        self.keep = keep
        self.positions = {}  # layer -> (H_l * W_l) of the whole image
        self.targets: list[dict[str, torch.Tensor]] = []  # per tile, owned content features (on content's device)
        self._content_targets(content)

    def _tile_features(self, image: torch.Tensor, layers: Sequence[str]):
        return tile_features(self.extractor, image, self.tiles, layers, device=self.device, dtype=self.dtype,
                             channels_last=self.channels_last, render=self.render)

    def _content_targets(self, content: torch.Tensor) -> None:
        counts: dict = {}
        energy = {name: 0.0 for name in self.content_layers}
        layers = tuple(dict.fromkeys((*self.content_layers, *self.style_layers)))
        for _, _, kept in self._tile_features(content, layers):
            for name, f in kept.items():
                counts[name] = counts.get(name, 0) + f.shape[-2] * f.shape[-1]
            for name in self.content_layers:
                energy[name] += float(kept[name].double().pow(2).sum())
            # A copy, not the view: a view would keep the tile's whole feature map, halo included, alive.
            self.targets.append({name: kept[name].to(content.device, copy=True) for name in self.content_layers})
        self.positions = counts
        channels = {name: self.targets[0][name].shape[1] for name in self.content_layers}
        # mean of the target's squares over channels and positions, as ContentLoss
        self.content_energy = {name: energy[name] / (channels[name] * counts[name]) + _EPS
                               for name in self.content_layers}

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extractor(self.render(x))

    def _content_sum(self, tile_index: int, tile: Tile, features) -> torch.Tensor:
        """This tile's share of the weighted content term."""
        total = torch.zeros((), device=self.device, dtype=self.dtype)
        for name in self.content_layers:
            f = owned(tile, features, name)
            target = self.targets[tile_index][name].to(self.device)
            share = (f - target).pow(2).sum() / (f.shape[1] * self.positions[name] * self.content_energy[name])
            total = total + share
        return total * self.content_weight

    def _gram_sum(self, tile: Tile, name: str, f: torch.Tensor):
        """The owned positions' Gram sum at layer `name`: [C, C], or [R, C, C] per region under a guided loss."""
        loss = self.style[name]
        if not isinstance(loss, GuidedStyleLoss):
            return gram_sum(f)
        return guided_sums(f, owned_guidance(tile, loss.guidance, name, tuple(f.shape[-2:])))

    def terms(self, image: torch.Tensor) -> torch.Tensor:
        """[3, 1] weighted terms at `image` (by a whole terms_and_gradient: a tiled scale keeps no cheaper way)."""
        return self.terms_and_gradient(image)[0]

    def terms_and_gradient(self, image: torch.Tensor, on_tile: Callable[[int, int], None] | None = None,
                           out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """([3, 1] weighted terms at `image` [1, C, H, W], float64 on the host; the gradient of their sum).

        The gradient is shaped like `image`, in the objective's dtype
        (float32, or float64) on `image`'s device. `on_tile(done, total)` is
        called after each of the 2 x len(tiles) tile passes. `out` ([3, 1],
        optional) receives a copy of the terms.
        """
        passes = 2 * len(self.tiles)
        report = on_tile or (lambda done, total: None)
        if image.dim() != 4 or len(image) != 1 or tuple(image.shape[-2:]) != self.shape[-2:]:
            raise ValueError(f"image must be {self.shape[-2:]} like the content, got {tuple(image.shape)}")
        image = image.detach()
        # Pass 1: global Grams, no graph kept.
        sums: dict = {}
        for i, tile, kept in self._tile_features(image, self.style_layers):
            for name, f in kept.items():
                sums[name] = sums.get(name, 0.0) + self._gram_sum(tile, name, f)
            report(i + 1, passes)
        style = 0.0
        coefficients = {}
        for name, loss in self.style.items():
            if isinstance(loss, GuidedStyleLoss):  # per region r: D_r = sqrt(k_r) (G_r - A_r)
                root = loss.root[0].reshape(-1, 1, 1)
                diff = (sums[name] / loss.mass[0].reshape(-1, 1, 1) - loss.target[0]) * root
            else:
                root = loss.root[0]
                diff = (sums[name] / self.positions[name] - loss.target[0]) * root
            style += float(diff.pow(2).sum())
            coefficients[name] = 2 * root * diff  # d style_l / d G (per region)
        # Pass 2: each tile's share of the gradient, added into one image, and of the
        # content term (a sum over positions, so its value needs no first pass).
        gradient = torch.zeros(image.shape, dtype=self.dtype, device=image.device)
        content = 0.0
        for i, tile in enumerate(self.tiles):
            leaf = crop(tile, image, self.device, self.dtype, self.channels_last).requires_grad_(True)
            features = self._run(leaf)
            surrogate = self._content_sum(i, tile, features)
            content += float(surrogate.detach())
            for name in self.style_layers:
                f = owned(tile, features, name)
                loss = self.style[name]
                norm = loss.mass[0].reshape(-1, 1, 1) if isinstance(loss, GuidedStyleLoss) else self.positions[name]
                tile_gram = self._gram_sum(tile, name, f) / norm
                surrogate = surrogate + (coefficients[name] * tile_gram).sum()
            surrogate.backward()
            top, bottom, left, right = tile.read
            gradient[..., top:bottom, left:right] += leaf.grad.to(image.device, self.dtype)
            report(len(self.tiles) + i + 1, passes)
        # TV is local and cheap: on the whole image, where it lives.
        tv, tv_gradient = self.tv.value_and_gradient(image.to(self.dtype))
        gradient += tv_gradient
        tv = float(tv)
        if self.keep is not None:  # pixel-wise like TV, and reported with it
            value, keep_gradient = self.keep.value_and_gradient(image.to(self.dtype))
            gradient += keep_gradient
            tv += float(value)
        terms = torch.tensor([[content], [style], [tv]], dtype=torch.float64)
        if out is not None:
            out.copy_(terms)
        return terms, gradient
