"""The classic tutorial approach, re-implemented faithfully as the baseline.

As in the PyTorch neural-style tutorial: loss modules are inserted into a
copy of VGG19 as an nn.Sequential (each stores `.loss` and passes its input
on), the network is cut after the last loss module, the input Gram is
recomputed in every forward pass, L-BFGS runs with its defaults (max_iter=20
evaluations per step, history 100) from a noise image clamped at the start
of every closure, in float32, one image at a time.

Two things are shared with nst-watch on purpose, so that only the method
differs: the same VGG19 weights (the engine's resident `features`), and the
same objective (relu4_2 content, relu1_1..relu5_1 style, each term divided by
its target's energy, with the preset's weights).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from nst_watch.engine.vgg import LAYER_NAMES

_EPS = 1e-8


def gram(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w)
    return flat @ flat.t() / (h * w)


class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor, weight: float):
        super().__init__()
        self.target = target.detach()
        self.weight = weight
        self.loss = torch.tensor(0.0)

    def forward(self, x):
        self.loss = self.weight * F.mse_loss(x, self.target) / (self.target.pow(2).mean() + _EPS)
        return x


class StyleLoss(nn.Module):
    def __init__(self, target_feature: torch.Tensor, weight: float):
        super().__init__()
        self.target = gram(target_feature).detach()
        self.weight = weight
        self.loss = torch.tensor(0.0)

    def forward(self, x):
        self.loss = self.weight * F.mse_loss(gram(x), self.target) / (self.target.pow(2).mean() + _EPS)
        return x


class Normalization(nn.Module):
    def __init__(self, preprocess):
        super().__init__()
        self.preprocess = preprocess

    def forward(self, x):
        return self.preprocess.apply(x)


def build(features: nn.Sequential, preprocess, content, style, preset):
    """The tutorial's get_style_model_and_losses, with this project's layer names."""
    model = nn.Sequential(Normalization(preprocess))
    content_losses, style_losses = [], []
    style_weight = preset.style_weight / len(preset.style_layers)
    wanted = set(preset.content_layers) | set(preset.style_layers)
    for name, layer in zip(LAYER_NAMES, features):
        if isinstance(layer, nn.ReLU):
            layer = nn.ReLU(inplace=False)
        model.add_module(name, layer)
        if name in preset.content_layers:
            loss = ContentLoss(model(content).detach(), preset.content_weight)
            model.add_module(f"content_loss_{name}", loss)
            content_losses.append(loss)
        if name in preset.style_layers:
            loss = StyleLoss(model(style).detach(), style_weight)
            model.add_module(f"style_loss_{name}", loss)
            style_losses.append(loss)
        wanted.discard(name)
        if not wanted:
            break
    model.eval().requires_grad_(False)
    return model, content_losses, style_losses


def run(features, preprocess, content, style, preset, *, evaluations: int, seed: int = 0):
    """Optimise from noise for `evaluations` closure calls; return (image, seconds)."""
    start = time.perf_counter()
    with torch.no_grad():
        model, content_losses, style_losses = build(features, preprocess, content, style, preset)
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(content.shape, generator=generator).to(content).requires_grad_(True)
    optimizer = torch.optim.LBFGS([image])
    count = [0]
    while count[0] < evaluations:
        def closure():
            with torch.no_grad():
                image.clamp_(0, 1)
            optimizer.zero_grad()
            model(image)
            loss = sum(l.loss for l in content_losses) + sum(l.loss for l in style_losses)
            loss.backward()
            count[0] += 1
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        image.clamp_(0, 1)
    return image.detach(), time.perf_counter() - start
