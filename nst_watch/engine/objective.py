"""The objective one pyramid scale minimises, and its gradient (Gatys et al. 2016, eq. 7).

    L(x) = content_weight * L_content + style_weight * sum_l w_l L_style,l + tv_weight * TV

Every objective here answers `terms_and_gradient(image)` with the three
weighted terms of each image as one tensor ([3, N]: content, style, TV;
see CONTENT, STYLE, TV) and the gradient of their sum, shaped like the
image. The optimisers (optimise.py) see nothing else, so the same loop
serves an image optimised whole (`StyleTransferObjective`, here) and one
optimised in exact tiles (tiled.TiledObjective).

Autograd runs VGG19's backward pass only. The losses' own gradients with
respect to the features are closed forms (losses.py: two matrix products
and a norm per style layer), handed to `torch.autograd.backward` as the
gradients of the captured feature maps; TV's gradient is one convolution
of the image, added after. The content and style terms are squared
norms, so the losses give their roots and the objective squares both at
once. Autograd through the same
losses dispatched ~100 more small operations per iteration for the same
numbers (tests/test_objective.py compares the two), and on a GPU each
operation is at least one kernel launch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .losses import ContentLoss, KeepLoss, StyleLoss, TVLoss, wide
from .vgg import FeatureExtractor

CONTENT, STYLE, TV = 0, 1, 2  # rows of a terms tensor (TV last: the other two are squared norms)
TERM_NAMES = ("content", "style", "tv")


def identity(image: torch.Tensor) -> torch.Tensor:
    return image


def gray_to_rgb(luminance: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] -> [N, 3, H, W], a view: what VGG19 sees of a luminance-only image (color: luminance)."""
    return luminance.expand(-1, 3, -1, -1)


class StyleTransferObjective:
    """Content, style and TV terms of whole images against one scale's targets.

    `extractor` runs VGG19 (fp32, fp64 or bf16) to the layers the losses
    read; `content` and `style` map layer names to their losses (weights
    folded in); `render` maps the optimised tensor to the RGB image VGG19
    sees (identity, or gray_to_rgb for colour: luminance). Images are
    [N, C, H, W] on the extractor's device. `keep` (a mask's regions that
    keep the photo, losses.KeepLoss) is added to the TV row.
    """

    def __init__(self, extractor: FeatureExtractor, content: Mapping[str, ContentLoss],
                 style: Mapping[str, StyleLoss], tv: TVLoss,
                 render: Callable[[torch.Tensor], torch.Tensor] = identity, keep: KeepLoss | None = None):
        self.extractor = extractor
        self.content = dict(content)
        self.style = dict(style)
        self.tv = tv
        self.keep = keep
        self.render = render
        self._roots_buffer: _Roots | None = None

    def terms(self, image: torch.Tensor) -> torch.Tensor:
        """[3, N] weighted terms at `image`, without a graph."""
        with torch.no_grad():
            features = self.extractor(self.render(image))
            content = _total([loss(features[name]) for name, loss in self.content.items()])
            style = _total([loss(features[name]) for name, loss in self.style.items()])
            pixels = self.tv(image) if self.keep is None else self.tv(image) + self.keep(image)
            return torch.stack([content, style, pixels])

    def terms_and_gradient(self, image: torch.Tensor, on_tile=None, out: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """([3, N] weighted terms at `image`, the gradient of their sum shaped like `image`).

        `out` ([3, N], optional) receives the terms, as torch's out=
        arguments (the clock's record of this iteration). `on_tile` is
        accepted for the tiled objective's sake and never called.
        """
        leaf = image.detach().requires_grad_(True)
        features = {name: wide(f) for name, f in self.extractor(self.render(leaf)).items()}
        buffers = self._buffers(len(image), image)
        terms = out if out is not None else torch.empty_like(buffers.terms)
        gradients: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            self._roots(self.content, features, gradients, buffers.content, buffers.content_layers)
            self._roots(self.style, features, gradients, buffers.style, buffers.style_layers)
            lx = self.tv.laplacian(image)  # TV = x . L x, its gradient 2 L x
            torch.sum(image * lx, dim=(1, 2, 3), out=terms[TV])
            torch.autograd.backward([features[name] for name in gradients], list(gradients.values()))
            torch.square(buffers.roots, out=terms[:TV])
            gradient = leaf.grad.add_(lx, alpha=2)
            if self.keep is not None:
                value, keep_gradient = self.keep.value_and_gradient(image)
                terms[TV] += value
                gradient += keep_gradient
            return terms, gradient

    def _buffers(self, n: int, like: torch.Tensor) -> "_Roots":
        if self._roots_buffer is None or self._roots_buffer.roots.shape[1] != n:
            dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
            self._roots_buffer = _Roots(n, len(self.content), len(self.style), dtype, like.device)
        return self._roots_buffer

    @staticmethod
    def _roots(losses, features, gradients, out: torch.Tensor, layers: "_Rows") -> None:
        """The root of the summed term into `out`; each layer's gradient into `gradients`."""
        if len(losses) == 1:
            [(name, loss)] = losses.items()
            _, gradient = loss.root_and_gradient(features[name], out=out)
            gradients[name] = gradients[name] + gradient if name in gradients else gradient
            return
        for (name, loss), row in zip(losses.items(), layers.rows):
            _, gradient = loss.root_and_gradient(features[name], out=row)
            gradients[name] = gradients[name] + gradient if name in gradients else gradient
        torch.linalg.vector_norm(layers.table, dim=0, out=out)


class _Rows:
    """A [layers, N] table and a view of each row, made once."""

    def __init__(self, layers: int, n: int, dtype: torch.dtype, device: torch.device):
        self.table = torch.zeros(layers, n, dtype=dtype, device=device)
        self.rows = list(self.table)


class _Roots:
    """Where the norms are written (torch's out=), made once per batch size: no stacking per iteration.

    `roots` is [2, N] (content, style), with views of its rows; each term
    of several layers has a table of per-layer roots. `terms` is a [3, N]
    tensor of the objective's precision, for empty_like.
    """

    def __init__(self, n: int, content_layers: int, style_layers: int, dtype: torch.dtype, device: torch.device):
        self.roots = torch.zeros(2, n, dtype=dtype, device=device)
        self.terms = torch.zeros(3, n, dtype=dtype, device=device)
        self.content, self.style = self.roots[CONTENT], self.roots[STYLE]
        self.content_layers = _Rows(content_layers, n, dtype, device)
        self.style_layers = _Rows(style_layers, n, dtype, device)


def _total(values: list[torch.Tensor]) -> torch.Tensor:
    """Sum of per-layer [N] values."""
    return values[0] if len(values) == 1 else torch.stack(values).sum(0)
