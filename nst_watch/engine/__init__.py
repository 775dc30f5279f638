"""Pure optimisation: VGG19 features, losses, optimisers, pyramid, colour.

No files, no printing, no YAML. Import cost is torch's; the watcher never
imports this package.
"""

from .clock import Progress
from .engine import Engine, FromProof, Interrupted, Resume, Stop, StylizeResult
from .pyramid import fit_long_edge, output_size, resize, scale_sizes
from .losses import ContentLoss, StyleLoss, TVLoss, gram_matrix
from .vgg import CONTENT_LAYERS, LAYER_NAMES, STYLE_LAYERS, FeatureExtractor, layer_index

__all__ = [
    "CONTENT_LAYERS",
    "ContentLoss",
    "Engine",
    "Interrupted",
    "FromProof",
    "Resume",
    "Stop",
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
    "resize",
    "layer_index",
    "scale_sizes",
]
