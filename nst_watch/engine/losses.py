"""Loss modules for Gatys et al. (2016), small and composable.

Every loss returns one value per image ([N]), so a batch of photos is just a
sum of independent problems (exact with Adam, whose update is elementwise).
Each module's `forward` is the plain differentiable definition. The
gradients the optimiser's objective uses (objective.py) come in closed
form: autograd would spend about 20 small operations per layer on what is
two matrix products and a norm, and on a GPU each is a kernel launch. The
content and style terms are squared norms, value = |r|^2, and their
`root_and_gradient` returns |r|, so the objective squares all its terms
at once; TV's `value_and_gradient` needs no backward pass at all.

Departure from the paper: each content and style term is divided by the
energy of its own target (mean of squares). The paper's raw sums of squares
make the right alpha/beta depend on image size, layer, and which VGG19
weights are loaded (Caffe activations are ~100x torchvision's); normalised
terms start near 1 for every layer, so one set of weights works everywhere.
The weights (content_weight, style_weight x the layer's w_l, tv_weight)
are folded into each module, so no separate scaling pass runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
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
        return _times_features(grad + grad.transpose(1, 2), flat)


def _times_features(matrix: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """matrix [N, C, C] @ flat [N, C, M], in flat's memory layout.

    channels_last features (stride 1 along C) get their gradient in the
    same layout (F^T S, transposed): otherwise the conv branch's gradient
    meets it in a strided add and the conv backward reorders its input.
    """
    return torch.bmm(flat.mT, matrix).mT if flat.stride(1) == 1 else torch.bmm(matrix, flat)


def wide(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32, or float64 if it already is (the engine's fp64 precision, for exactness checks)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def flat_features(features: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H*W], a view in both memory formats (channels_last merges H and W too)."""
    n, c, h, w = features.shape
    return features.reshape(n, c, h * w)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices of [N, C, H, W] features -> [N, C, C], normalised by H*W.

    Always float32 (or float64 for float64 features), whatever autocast says: fp16 Grams overflow and bf16 ones
    are too coarse near convergence (FIELD_NOTES section 1). Normalising by
    H*W (Gatys' own code) makes a Gram independent of image size, so a style
    target computed at one size serves content of another.
    """
    n, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        return _Gram.apply(flat_features(wide(features))) / (h * w)


def _energy(target: torch.Tensor) -> torch.Tensor:
    """Mean of squares over everything but the batch dimension, plus epsilon: [N]."""
    return target.pow(2).mean(dim=tuple(range(1, target.dim()))) + _EPS


class ContentLoss(nn.Module):
    """Feature reconstruction loss at one layer (paper eq. 1, normalised).

    weight * mean((F - P)^2) / mean(P^2), per image. `target` P is
    [N, C, H, W] (or [1, ...] shared by the batch).
    """

    def __init__(self, target: torch.Tensor, weight: float = 1.0):
        super().__init__()
        target = wide(target.detach())
        coefficient = weight / (_energy(target) * target[0].numel())  # [N]
        root = coefficient.sqrt().view(-1, 1, 1, 1)
        self.register_buffer("target", target)
        self.register_buffer("coefficient", coefficient)
        self.register_buffer("root", root)
        self.register_buffer("scaled_target", -root * target)
        self.register_buffer("root2", 2 * root)
        self.weight = float(weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        diff = wide(features) - self.target
        return diff.pow(2).sum(dim=(1, 2, 3)) * self.coefficient

    def root_and_gradient(self, features: torch.Tensor, out: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """([N] square roots of the values, d value / d features), without a graph; `out` receives the roots.

        With r = sqrt(k) (F - P), the value is |r|^2 and its gradient 2 sqrt(k) r.
        """
        diff = torch.addcmul(self.scaled_target, wide(features), self.root)
        return torch.linalg.vector_norm(diff, dim=(1, 2, 3), out=out), diff * self.root2


class StyleLoss(nn.Module):
    """Gram matrix loss at one layer (paper eq. 4, normalised).

    weight * mean((G - A)^2) / mean(A^2), per image, with G the Gram of the
    features (gram_matrix). `target` A is a [C, C] Gram (shared by the
    batch) or [N, C, C].
    """

    def __init__(self, target_gram: torch.Tensor, weight: float = 1.0):
        super().__init__()
        if target_gram.dim() == 2:
            target_gram = target_gram.unsqueeze(0)
        target = wide(target_gram.detach())
        c = target.shape[-1]
        energy = target.pow(2).mean(dim=(1, 2)) + _EPS
        # value = |sqrt(k) (G - A)|^2 with k = weight / (C^2 E_A): `root` is sqrt(k) per image, [N, 1, 1].
        root = (weight / (c * c * energy)).sqrt().view(-1, 1, 1)
        self.register_buffer("target", target)
        self.register_buffer("root", root)
        self.register_buffer("scaled_target", -root * target)  # -sqrt(k) A, baddbmm's addend
        self.register_buffer("zero", target.new_zeros(()))
        self.weight = float(weight)
        # One target for the whole batch: sqrt(k) is a number, read once here, and folds into the products.
        self._shared_root = float(root) if root.numel() == 1 else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        gram = gram_matrix(features)
        return (gram - self.target).mul(self.root).pow(2).sum(dim=(1, 2))

    def root_and_gradient(self, features: torch.Tensor, out: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """([N] square roots of the values, d value / d features), without a graph; `out` receives the roots.

        With D = sqrt(k) (G - A) and G = F F^T / M (M positions), the value is
        |D|^2 and its gradient 2 sqrt(k) (D + D^T) F / M = 4 sqrt(k) D F / M
        (D is symmetric): one product for G, one for the gradient.
        """
        n, c, h, w = features.shape
        flat = flat_features(wide(features))
        flat_t = flat.mT
        m = h * w
        root = self._shared_root
        if root is not None:
            diff = torch.baddbmm(self.scaled_target, flat, flat_t, alpha=root / m)
            scaled, alpha = diff, 4 * root / m
        else:
            diff = torch.baddbmm(self.scaled_target, flat * self.root, flat_t, alpha=1 / m)
            scaled, alpha = diff * self.root, 4 / m
        if flat.stride(1) == 1:  # channels_last: the gradient in the features' layout (see _times_features)
            gradient = torch.baddbmm(self.zero, flat_t, scaled, beta=0, alpha=alpha).mT
        else:
            gradient = torch.baddbmm(self.zero, scaled, flat, beta=0, alpha=alpha)
        return torch.linalg.vector_norm(diff, dim=(1, 2), out=out), gradient.view(features.shape)


class GuidedStyleLoss(nn.Module):
    """Guided Gram matrix loss at one layer: each region's Gram matched to its own target (Gatys et al. 2017).

    Spatial control, after Gatys, Ecker, Bethge, Hertzmann and Shechtman,
    *Controlling Perceptual Factors in Neural Style Transfer* (CVPR 2017),
    section 4: guidance channels T_r, one per region r, weight the feature
    map, F_r = T_r o F, and the region's Gram G_r = F_r F_r^T is matched to
    the region's target A_r.

    `targets` is [N, R, C, C] (or [1, R, C, C] shared by the batch), the
    Gram targets of the R regions; `guidance` is [N, R, H, W], the regions'
    weights at this layer's resolution, in [0, 1] and summing to 1 over R at
    every position (engine.guidance carries a mask there). Per image:

        value = weight * sum_r  a_r |G_r - A_r|^2 / (C^2 E_A_r),
        G_r = sum_p T_rp^2 F_p F_p^T / sum_p T_rp^2,   a_r = sum_p T_rp / M.

    Departures from the paper, and why:

    - G_r is normalised by the region's own mass sum_p T_rp^2 (the paper
      leaves it unnormalised): a region's Gram is then the mean over its own
      positions, so a small region is compared with its target on the same
      footing as a large one, and a target computed from a whole style image
      fits any region.
    - Each region's term is weighted by its share a_r of the positions.
      With G_r normalised by the region's mass, the pull on each of its
      pixels would grow as 1/a_r; the share undoes that, so every pixel of
      every region is pulled as hard as in an unmasked run, whatever the
      region's size. With one region covering everything the value is
      StyleLoss's exactly.
    - A region covering less than `min_area` positions at this layer (a
      coarse pyramid scale) gets no term there: its Gram would be a few
      positions' noise. The engine refuses such a region at the final size.
    """

    def __init__(self, targets: torch.Tensor, guidance: torch.Tensor, weight: float = 1.0, min_area: float = 1.0):
        super().__init__()
        t = wide(guidance.detach())
        n, r, h, w = t.shape
        targets = wide(targets.detach())
        c = targets.shape[-1]
        targets = targets.expand(n, r, c, c).contiguous()
        area = t.sum(dim=(2, 3))  # [N, R], in positions
        mass = t.pow(2).sum(dim=(2, 3))
        energy = targets.pow(2).mean(dim=(2, 3)) + _EPS
        k = torch.where(area >= min_area, weight * (area / (h * w)) / (c * c * energy), torch.zeros_like(area))
        root = k.sqrt()
        self.register_buffer("guidance", t)  # [N, R, H, W]
        self.register_buffer("target", targets)
        self.register_buffer("root", root)  # sqrt(k), [N, R]
        self.register_buffer("scale", (root / mass.clamp_min(_EPS)).reshape(n * r, 1, 1))  # sqrt(k) / mass
        self.register_buffer("scaled_target", (-root[..., None, None] * targets).reshape(n * r, c, c))
        self.register_buffer("area", area)
        self.register_buffer("mass", mass.clamp_min(_EPS))  # sum_p T_rp^2, [N, R]
        self.weight = float(weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        grams = guided_gram_matrices(features, self.guidance)
        return (grams - self.target).mul(self.root[..., None, None]).pow(2).sum(dim=(1, 2, 3))

    def root_and_gradient(self, features: torch.Tensor, out: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """([N] square roots of the values, d value / d features), without a graph; `out` receives the roots.

        With s_r = sqrt(k_r) / mass_r and D_r = sqrt(k_r) (G_r - A_r), the
        value is sum_r |D_r|^2 and its gradient sum_r 4 s_r T_r o (D_r F_r).
        One region at a time: no temporary is larger than the features
        themselves (memory, and GPU kernels' int32 indexing: memory.py).
        """
        n, c, h, w = features.shape
        flat = flat_features(wide(features))
        t = self.guidance.reshape(n, -1, 1, h * w)
        scale = self.scale.reshape(n, -1, 1, 1)
        target = self.scaled_target.reshape(n, -1, c, c)
        squares = flat.new_zeros(n)
        gradient = torch.zeros_like(flat, memory_format=torch.contiguous_format)
        for r in range(t.shape[1]):
            fr = flat * t[:, r]
            diff = torch.baddbmm(target[:, r], fr * scale[:, r], fr.mT)  # D_r
            squares += diff.pow(2).sum(dim=(1, 2))
            gradient += torch.bmm(diff * (4 * scale[:, r]), fr).mul_(t[:, r])
        roots = squares.sqrt()
        if out is not None:
            out.copy_(roots)
        return roots, gradient.view(features.shape)


def guided_gram_matrices(features: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """Each region's Gram of [N, C, H, W] features under [N, R, H, W] guidance: [N, R, C, C].

    sum_p T_rp^2 F_p F_p^T / sum_p T_rp^2 (GuidedStyleLoss's G_r), float32
    or float64 like gram_matrix; a region with no mass gets zeros.
    """
    n, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        flat = flat_features(wide(features))
        t = wide(guidance).to(flat.dtype).reshape(n, -1, 1, h * w)
        mass = t.pow(2).sum(dim=(2, 3)).clamp_min(_EPS)  # [N, R]
        grams = []
        for r in range(t.shape[1]):  # one region at a time: no temporary larger than the features
            fr = flat * t[:, r]
            grams.append(torch.bmm(fr, fr.mT) / mass[:, r, None, None])
        return torch.stack(grams, dim=1)


class KeepLoss(nn.Module):
    """Holds the pixels a mask keeps to the photo: weight * sum_p K_p |x_p - P_p|^2 / (C H W), per image.

    `photo` is the photo at this scale, [N, C, H, W] (C = 1 for colour:
    luminance, as the optimised image); `keep` is [N, 1, H, W], each
    pixel's total weight in the regions that keep the photo (0-1). Not in
    Gatys et al. 2017, whose regions all take a style: a region matched to
    the photo's own Grams keeps its texture statistics but not its pixels,
    because the content term at relu4_2 and Gram matrices both let fine
    detail drift where the styled neighbours' receptive fields pull on it
    (luminance SSIM 0.53 inside a kept face at 128 px without this term, 0.97
    with weight 30: benchmarks/masks.py).
    A pixel term holds what is kept, and its weight K falls off with a soft
    mask's edge, so the border is still harmonised. Pixel-space and cheap,
    like TV, it is computed on the whole image and reported in TV's row.
    """

    def __init__(self, photo: torch.Tensor, keep: torch.Tensor, weight: float):
        super().__init__()
        self.register_buffer("photo", photo.detach())
        self.register_buffer("keep", keep.detach())
        self.weight = float(weight)

    def _scaled(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x - P, weight K / (C H W)) on `image`'s device and dtype."""
        c, h, w = image.shape[1:]
        diff = image - self.photo.to(image.device, image.dtype)
        return diff, self.keep.to(image.device, image.dtype) * (self.weight / (c * h * w))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        diff, k = self._scaled(image)
        return (k * diff.pow(2)).sum(dim=(1, 2, 3))

    def value_and_gradient(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([N] values, d value / d image), without a graph."""
        diff, k = self._scaled(image)
        weighted = k * diff
        return (weighted * diff).sum(dim=(1, 2, 3)), weighted.mul_(2)


class ProofLoss(nn.Module):
    """Holds a final to its proof: weight * mean over C, h, w of |D(x) - proof|^2, per image.

    D shrinks the image to the proof's size with the pyramid's antialiased
    bicubic (pyramid.resize, unclamped, so the term is smooth): only what the
    proof shows, its layout at the proof's scale, is held, and the finer
    scales are free to add detail. Not in Gatys et al.: their pyramid
    (and ours from scratch) lets every scale move the picture, and a proof
    whose final drifts from it is no proof (benchmarks/RESULTS.md, "Proofs,
    then finals": luminance SSIM to the proof 0.66-0.77 without this term).
    `proof` is [N, C, h, w] (C = 1 for colour: luminance, as the optimised
    image). Pixel-space like TV and KeepLoss, and reported in TV's row.
    """

    def __init__(self, proof: torch.Tensor, weight: float):
        super().__init__()
        self.register_buffer("proof", proof.detach())
        self.weight = float(weight)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.value_and_gradient(image)[0]

    def value_and_gradient(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([N] values, d value / d image): D's adjoint by autograd through the resize alone (no VGG19)."""
        from .pyramid import resize  # pyramid imports config only; here to keep losses free of the pyramid

        proof = self.proof.to(image.device, image.dtype)
        scale = self.weight / proof[0].numel()
        with torch.enable_grad():
            leaf = image.detach().requires_grad_(True)
            diff = resize(leaf, tuple(proof.shape[-2:]), clamp=False) - proof
            value = diff.pow(2).sum(dim=(1, 2, 3)) * scale
            (gradient,) = torch.autograd.grad(value.sum(), leaf)
        return value.detach(), gradient


class PixelTerms(nn.Module):
    """The sum of pixel-space terms (KeepLoss, ProofLoss) as one, for the objective's `keep` slot."""

    def __init__(self, *terms: nn.Module):
        super().__init__()
        self.terms = nn.ModuleList(terms)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return sum(term(image) for term in self.terms)

    def value_and_gradient(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [term.value_and_gradient(image) for term in self.terms]
        return sum(v for v, _ in parts), sum(g for _, g in parts)


class TVLoss(nn.Module):
    """Total variation: weight * (mean squared difference of horizontal neighbours + of vertical ones).

    Per image, over channels: [N, C, H, W] -> [N]. `forward` takes the
    differences; `value_and_gradient` needs no backward pass: the term is
    the quadratic form x . L x of the image's graph Laplacian L (with the
    differences' own weights, and Neumann borders: a border pixel has no
    neighbour outside), so L x is one depthwise 3x3 convolution of the
    image padded by replication, the value the image's dot product with
    it, and the gradient 2 L x.
    """

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)
        self._kernels: dict[tuple, torch.Tensor] = {}

    def _weights(self, c: int, h: int, w: int) -> tuple[float, float]:
        """(horizontal, vertical) weight per squared difference: weight / number of differences."""
        return self.weight / (c * h * max(w - 1, 1)), self.weight / (c * max(h - 1, 1) * w)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        horizontal, vertical = self._weights(*image.shape[1:])
        dx = image[..., :, 1:] - image[..., :, :-1]
        dy = image[..., 1:, :] - image[..., :-1, :]
        return dx.pow(2).sum(dim=(1, 2, 3)) * horizontal + dy.pow(2).sum(dim=(1, 2, 3)) * vertical

    def laplacian(self, image: torch.Tensor) -> torch.Tensor:
        """L x, [N, C, H, W]: the value is x . L x and the gradient 2 L x (see the class docstring)."""
        n, c, h, w = image.shape
        padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
        return F.conv2d(padded, self._kernel(c, h, w, image.dtype, image.device), groups=c)

    def value_and_gradient(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([N] values, d value / d image), without a graph."""
        lx = self.laplacian(image)
        return torch.sum(image * lx, dim=(1, 2, 3)), lx * 2

    def _kernel(self, c: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (c, h, w, dtype, device)
        if key not in self._kernels:
            if len(self._kernels) >= 16:  # one per image shape: a pyramid and a few photo shapes
                self._kernels.clear()
            horizontal, vertical = self._weights(c, h, w)
            kernel = torch.zeros(c, 1, 3, 3, dtype=torch.float64)
            # L: each squared difference (x_a - x_b)^2 with weight u adds u(x_a - x_b) to (L x)_a.
            kernel[:, 0, 1, 0] = kernel[:, 0, 1, 2] = -horizontal
            kernel[:, 0, 0, 1] = kernel[:, 0, 2, 1] = -vertical
            kernel[:, 0, 1, 1] = 2 * (horizontal + vertical)
            self._kernels[key] = kernel.to(device, dtype)
        return self._kernels[key]


def layer_weights(layers: Sequence[str], weights: Sequence[float] | None) -> dict[str, float]:
    """Per-layer weights normalised to sum to 1 (the paper's w_l = 1/L by default)."""
    weights = list(weights) if weights is not None else [1.0] * len(layers)
    total = sum(weights)
    return {name: w / total for name, w in zip(layers, weights)}


def blend_grams(grams: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean of Gram targets: how several style images are blended."""
    total = float(sum(weights))
    return sum(g * (w / total) for g, w in zip(grams, weights))
