"""VGG19 feature extraction with the paper's layer names.

The network is frozen and in eval mode: only the input pixels receive
gradients, which saves the ~50% of backward work that weight gradients would
cost (FIELD_NOTES section 2).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from .weights import IDENTITY_PREPROCESS, Preprocess

_BLOCKS = (2, 2, 4, 4, 4)  # convolutions per block in VGG19


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for block, convs in enumerate(_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return tuple(names)


LAYER_NAMES: tuple[str, ...] = _layer_names()
"""Names of torchvision's `vgg19().features` modules, in order (relu4_2 is index 22)."""

CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def layer_index(name: str) -> int:
    try:
        return LAYER_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown VGG19 layer {name!r}; valid names are conv1_1 ... relu5_4, pool1 ... pool5") from None


class ScaledAvgPool2d(nn.AvgPool2d):
    """Average pooling rescaled so activations keep max pooling's magnitude.

    Departure from the paper's suggestion of plain average pooling: plain
    averaging shrinks activations layer after layer (roughly by 2 per pool on
    ReLU features), which silently reweights deep layers against shallow ones.
    """

    def __init__(self, scale: float = 2.0):
        super().__init__(kernel_size=2, stride=2)
        self.scale = scale

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input) * self.scale


def build_features(
    state_dict: dict[str, torch.Tensor] | None,
    *,
    pooling: str = "max",
    padding: str = "replicate",
) -> nn.Sequential:
    """The full VGG19 `features` stack, frozen, with the chosen pooling and padding."""
    # make_layers builds just the convolutional stack: building all of
    # vgg19() would also allocate its 500 MB classifier only to discard it.
    features = make_layers(cfgs["E"], batch_norm=False)
    if state_dict is not None:
        prefix = "features."
        features.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
    for i, module in enumerate(features):
        if isinstance(module, nn.ReLU):
            # torchvision's ReLUs are in place: they would overwrite a captured
            # conv output (e.g. a conv4_2 content layer) before the loss reads it.
            features[i] = nn.ReLU(inplace=False)
        elif isinstance(module, nn.MaxPool2d) and pooling == "avg":
            features[i] = ScaledAvgPool2d()
    if padding == "replicate":
        # Replicate padding on the first conv reduces border artefacts; deeper
        # layers see feature maps where zero padding matters much less.
        features[0].padding_mode = "replicate"
    features.eval().requires_grad_(False)
    return features


def fold_preprocessing(features: nn.Sequential, preprocess: Preprocess) -> Preprocess:
    """Fold the input preprocessing into the first convolution, in place; returns what is left to apply.

    Caffe's VGG19 reads BGR, 0-255, minus the mean pixel; torchvision's
    reads RGB normalised by mean and std. Both are a per-channel affine map
    (and a channel order), so conv1_1 can take them into its weights and
    bias: no iteration spends a flip and a multiply-add of the image and
    of its gradient. Exact with replicate padding (the default), which
    commutes with a per-channel affine map: the function is the same and
    only the order of floating-point sums changes. With zero padding the
    borders would change, so only the channel order is folded and the
    affine map stays in the returned preprocessing. The identity
    (IDENTITY_PREPROCESS) where everything was folded.
    """
    first = features[0]
    with torch.no_grad():
        if preprocess.bgr:
            first.weight.copy_(first.weight.flip(1))
            preprocess = Preprocess(mean=preprocess.mean[::-1], std=preprocess.std[::-1], scale=preprocess.scale,
                                    bgr=False)
        if first.padding_mode != "replicate":
            return preprocess
        std = torch.tensor(preprocess.std, dtype=torch.float64)
        gain = (preprocess.scale / std).view(1, 3, 1, 1)
        offset = (-torch.tensor(preprocess.mean, dtype=torch.float64) / std).view(1, 3, 1, 1)
        weight = first.weight.double()
        first.bias.copy_(first.bias.double() + (weight * offset).sum((1, 2, 3)))
        first.weight.copy_(weight * gain)
    return IDENTITY_PREPROCESS


class FeatureExtractor(nn.Module):
    """Runs VGG19 up to the deepest requested layer and returns named activations.

    Holds only the modules up to that layer (the convolutions are shared with
    the resident network, so building one costs no memory). A bfloat16
    network gets its input preprocessed in the image's precision, then
    rounded to bfloat16 (where autocast would round it too); its features
    come out in bfloat16 (losses.wide widens them for the Grams).
    """

    def __init__(self, features: nn.Sequential, layers: Iterable[str], preprocess: Preprocess):
        super().__init__()
        self.layers = tuple(dict.fromkeys(layers))
        if not self.layers:
            raise ValueError("at least one layer is required")
        self.indices = {layer_index(name): name for name in self.layers}
        deepest = max(self.indices)
        modules = list(features)[: deepest + 1]
        for i, module in enumerate(modules):
            if isinstance(module, nn.ReLU) and i - 1 not in self.indices:
                # In place where nobody reads the conv output: saves one
                # activation-sized buffer per layer (the conv's backward
                # needs its input, never its output).
                modules[i] = nn.ReLU(inplace=True)
        self.net = nn.Sequential(*modules)
        self.preprocess = preprocess
        self.dtype = next(self.net.parameters()).dtype

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """`image` is [N, 3, H, W] RGB in [0, 1]."""
        x = self.preprocess.apply(image).to(self.dtype)
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.net):
            x = module(x)
            if i in self.indices:
                out[self.indices[i]] = x
        return out

