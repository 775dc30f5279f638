"""Pure optimisation: VGG19 features, losses, optimisers, pyramid, colour.

No files, no printing, no YAML. Import cost is torch's; the watcher never
imports this package.
"""

from .engine import Engine, Progress, StylizeResult, fit_long_edge, output_size, scale_sizes
from .losses import ContentLoss, StyleLoss, TVLoss, gram_matrix
from .vgg import CONTENT_LAYERS, LAYER_NAMES, STYLE_LAYERS, FeatureExtractor, layer_index

__all__ = [
    "CONTENT_LAYERS",
    "ContentLoss",
    "Engine",
    "FeatureExtractor",
    "LAYER_NAMES",
    "Progress",
    "STYLE_LAYERS",
    "StyleLoss",
    "StylizeResult",
    "TVLoss",
    "fit_long_edge",
    "gram_matrix",
    "output_size",
    "layer_index",
    "scale_sizes",
]
