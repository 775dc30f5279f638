"""The resident style-transfer engine.

`Engine` loads VGG19 once and keeps it on its device; `stylize()` turns a
batch of content images plus a preset into stylised images. No files, no
printing: images come in and go out as tensors, progress goes out through a
callback.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import math
import os
import platform
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EngineSettings, Preset, deepest, min_edge
from ..errors import EngineError
from . import color
from .lbfgs import BatchedLBFGS
from .tiled import Geometry, TiledObjective, gram_matrices
from .losses import ContentLoss, LayerSum, Scale, StyleLoss, TVLoss, blend_grams, gram_matrix, layer_weights
from .vgg import FeatureExtractor, build_features
from .weights import load_weights

log = logging.getLogger("nst_watch.engine")


@dataclass(frozen=True)
class Progress:
    """One report from a running optimisation. Losses are summed over the batch."""

    preset: str
    images: int  # photos optimised together
    scale: int  # 1-based pyramid scale
    scales: int
    width: int
    height: int
    iteration: int  # 1-based, within this scale
    iterations: int  # at this scale
    step: int  # 1-based, across all scales
    steps: int
    loss: float
    content: float
    style: float
    tv: float
    elapsed: float  # seconds since stylize() began
    # Tiled scales report inside an iteration too: tile passes done of the
    # running iteration's total (two per tile: Grams, then gradient); at an
    # iteration's end 0 of that total; 0/0 on an untiled scale.
    tile: int = 0
    tiles: int = 0


ProgressCallback = Callable[[Progress], None]

CPU_BATCH_PIXELS = 8 * 128 * 96  # largest batch (in output pixels) a CPU optimises at once


@dataclass
class StylizeResult:
    image: torch.Tensor  # [3, H, W] float32 on the CPU, RGB in [0, 1]
    loss: float  # final weighted objective of the returned image
    content: float
    style: float
    tv: float
    iterations: int
    seconds: float  # wall time of the batch this image was part of
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Terms:
    content: torch.Tensor  # [N], weighted
    style: torch.Tensor
    tv: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.content + self.style + self.tv

    def where(self, chosen: torch.Tensor, other: "_Terms") -> "_Terms":
        """Per image: these terms where `chosen`, else `other`'s (detached)."""
        pairs = ((self.content, other.content), (self.style, other.style), (self.tv, other.tv))
        return _Terms(*(torch.where(chosen, mine.detach(), theirs) for mine, theirs in pairs))


class StyleTransferLoss(nn.Module):
    """alpha * content + beta * style + tv_weight * TV, per image (paper eq. 7)."""

    def __init__(self, extractor: FeatureExtractor, content: LayerSum, style: LayerSum, tv: Scale, render):
        super().__init__()
        self.extractor = extractor
        self.content = content
        self.style = style
        self.tv = tv
        self.render = render  # maps the optimised tensor to the RGB image VGG sees

    def forward(self, image: torch.Tensor, *, autocast: bool) -> _Terms:
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=autocast):
            features = self.extractor(self.render(image))
        return _Terms(self.content(features), self.style(features), self.tv(image))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EngineError(f"engine.device: {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"engine.device: {name} asked for, but no CUDA GPU is visible (use device: auto or cpu)")
    return device


def keep_freed_memory() -> bool:
    """Have glibc keep freed tensor memory for reuse instead of returning it to the OS.

    By default glibc serves every block above a few MB with a fresh mmap and
    unmaps it on free, so each iteration page-faults and zeroes its whole
    working set again (a 256 px batch of 8 is ~100 MB per activation). With
    the thresholds raised, the engine's steady state reuses its own memory:
    measured on 2 AVX2 cores, VGG19 forward+backward at 256 px batch 8 went
    from 0.522 to 0.447 s per image. Like PyTorch's CUDA caching allocator,
    the process keeps its peak footprint. Returns False where not glibc.
    """
    return _malloc_thresholds(1 << 30)


@contextlib.contextmanager
def return_freed_memory(active: bool = True):
    """While a scale runs in tiles under max_memory: glibc returns blocks over 1 MB as soon as they are freed.

    In keep_freed_memory's mode the heap also keeps what fragmentation
    strands: measured at 1024 px in 96 px tiles, the objective's set-up grew
    the process by 200 MB for 22 MB of content targets, and a tiled
    iteration peaked 0.5 GB over the resident engine against 0.32 GB with
    this mode. Restores keep_freed_memory's mode on exit.
    """
    if not (active and _malloc_thresholds(1 << 20)):
        yield
        return
    try:
        yield
    finally:
        keep_freed_memory()


def _malloc_thresholds(size: int) -> bool:
    """Set glibc's mmap and trim thresholds to `size` bytes; False where this is not glibc."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, size) and libc.mallopt(m_trim_threshold, size))


# Bytes per pixel of one untiled float32 iteration to relu5_1 (activations kept for
# the backward pass, Grams, gradients), and of one L-BFGS history vector (RGB
# float32): an image of P pixels with history m needs about
# P * (ACTIVATION_BYTES + (2m + 3) * VECTOR_BYTES). Measured on the CPU with
# benchmarks/memory.py: peak RSS of `stylize` over the resident engine grows by
# 3.2 KB per pixel from 512 to 2048 px, plus ~0.14 GB that does not grow with
# the scale (decoded photo and style, output buffers: WORKSPACE_BYTES, with a
# margin). bf16 on CUDA needs less.
# A tiled scale (under return_freed_memory) was measured at 1024 and 2048 px
# with 96 and 208 px tiles: 2.1 KB per pixel of the halo-padded tile
# (TILE_BYTES), and ~80 B per pixel of the whole image on the host (image,
# gradient, best iterate, content targets, the TV term's temporaries:
# TILED_HOST_BYTES) besides the L-BFGS history.
ACTIVATION_BYTES = 3200
TILE_BYTES = 2200
TILED_HOST_BYTES = 100
VECTOR_BYTES = 12
WORKSPACE_BYTES = 200 * 10**6  # on a CPU, kept out of work_memory
STYLE_EDGE = 1024  # see Engine._style_size
# A forward pass without a graph (style Grams, content targets) keeps ~0.75 KB per
# pixel at its peak (benchmarks/memory.py's machine, 512 and 1024 px).
FORWARD_BYTES = 800
REFINE_EDGE = 1024  # scales above it refine detail with fewer iterations (scale_iterations)
MIN_REFINE = 10
MIN_HISTORY = 3  # L-BFGS pairs kept at least, where memory is short (Engine._tile_for)


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc), or its peak so far elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def available_ram() -> int | None:
    """Bytes of RAM a new allocation can have now: free plus reclaimable page cache.

    Linux's MemAvailable (/proc/meminfo). Free pages alone (SC_AVPHYS_PAGES)
    understate it badly on a machine that has just read or written a lot
    (installing packages, copying photos): the page cache holds the rest and
    gives it back on demand. Elsewhere the free pages, or None if unknown.
    """
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_max_memory(device: torch.device) -> int:
    """80 % of the GPU's free memory, or half the RAM available now on a CPU (4 GB where unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    available = available_ram()
    return int(available * 0.5) if available is not None else 4 * 10**9


def fit_long_edge(height: int, width: int, long_edge: int) -> tuple[int, int]:
    scale = long_edge / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def output_size(height: int, width: int, preset: Preset) -> tuple[int, int]:
    """(height, width) in pixels of a photo of `height` x `width` stylised with `preset` (its size, or full)."""
    return fit_long_edge(height, width, preset.long_edge(height, width))


def fit_size(height: int, width: int, need: int) -> str:
    """What to do about an image whose short edge is below `need` px at its size: a hint for messages."""
    size = -(-need * max(height, width) // min(height, width))  # ceil
    return f"it fits only at size {size} or more, or cropped to a less elongated shape"


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def scale_sizes(preset: Preset) -> list[int]:
    """Long edges of the pyramid's scales, coarse to fine."""
    pyramid = preset.pyramid
    sizes = [preset.size]
    if pyramid is not None:
        edge = float(preset.size)
        while edge / pyramid.factor >= pyramid.min_size:
            edge /= pyramid.factor
            sizes.append(round(edge))
    return sizes[::-1]


def scale_iterations(preset: Preset, sizes: Sequence[int]) -> list[int]:
    """Iterations per scale of `sizes` (long edges, coarse to fine; see scale_sizes).

    `pyramid.iterations` when listed (the last value repeats). By default each
    coarse scale runs a tenth of `iterations` and the largest scale up to
    REFINE_EDGE (1024 px) all of them: the picture is laid out there. A
    scale above REFINE_EDGE only refines detail that the scale below already
    has, so it runs `iterations` x (REFINE_EDGE / edge)^2, at least
    MIN_REFINE: every such scale costs about what the 1024 px scale did,
    where a full run would cost 4x more per doubling. Measured on the bundled
    weights at 512 px from a 256 px start (benchmarks/RESULTS.md): after 25
    iterations the picture is the one of 100, a little softer (loss 1.14
    against 0.96): the refinement sharpens strokes and moves nothing.
    """
    listed = preset.pyramid.iterations if preset.pyramid is not None else None
    if listed:
        return [listed[min(i, len(listed) - 1)] for i in range(len(sizes))]
    coarse = max(1, preset.iterations // 10) if preset.iterations else 0
    steps = [coarse] * (len(sizes) - 1) + [preset.iterations]
    layout = max([i for i, edge in enumerate(sizes) if edge <= REFINE_EDGE], default=0)
    if layout < len(sizes) - 1:
        steps[layout] = preset.iterations
        for i in range(layout + 1, len(sizes)):
            steps[i] = min(preset.iterations, max(MIN_REFINE, round(preset.iterations * (REFINE_EDGE / sizes[i]) ** 2)))
    return steps


def _digest(tensors: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class Engine:
    """A resident VGG19 on one device, ready to stylise.

    >>> engine = Engine(device="auto")  # the bundled original VGG19 (weights="caffe")
    >>> [result] = engine.stylize([photo], preset, styles=[painting])

    `max_memory` (bytes, or a string such as "6GB") bounds the engine's peak
    memory: on a CPU the whole process's, so what is resident once VGG19 is
    loaded (`resident`, ~1 GB with torch) and a workspace for photos
    (WORKSPACE_BYTES) come off the top and the rest is `work_memory`, which
    may be set directly; on a GPU the device's. Batches
    are split to fit it, and a scale that does not fit even alone runs in
    exact tiles (nst_watch.engine.tiled); EngineError when not even tiles fit.
    """

    def __init__(
        self,
        device: str = "auto",
        weights: str = "caffe",
        precision: str = "auto",
        pooling: str = "max",
        padding: str = "replicate",
        *,
        max_memory: int | str | None = None,
        download_progress: bool = True,
        cache_size: int = 64,
        channels_last: bool | None = None,
    ):
        self.settings = EngineSettings(
            device=device, weights=weights, precision=precision, pooling=pooling, padding=padding,
            max_memory=max_memory,
        )
        self.device = resolve_device(device)
        self.max_memory = int(self.settings.max_memory or default_max_memory(self.device))
        loaded = load_weights(weights, progress=download_progress)
        self.weights = loaded
        self.preprocess = loaded.preprocess
        # fp64 exists to check exactness (the tiled objective against the untiled one): float32
        # rounding flips max-pooling argmaxes and moves gradients by ~1e-3 either way.
        self.dtype = torch.float64 if precision == "fp64" else torch.float32
        self.features = build_features(loaded.state_dict, pooling=pooling, padding=padding).to(self.device, self.dtype)
        # bf16 convolutions only where the hardware runs them fast: on CPUs
        # without AVX512-BF16/AMX, PyTorch emulates them ~100x slower than fp32.
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        if self.device.type == "cuda":
            # The worker buckets photo sizes, so cuDNN's per-shape autotuning pays off;
            # TF32 speeds the (float32) Gram matmuls.
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.device.type == "cpu":
            keep_freed_memory()
        # channels_last is the native layout of cuDNN and oneDNN convolutions:
        # measured on 2 AVX2 cores at 256 px, 3% faster at batch 1, 12% at batch 8.
        self.channels_last = True if channels_last is None else channels_last
        if self.channels_last:
            self.features = self.features.to(memory_format=torch.channels_last)
        self.report_every = 1 if self.device.type == "cpu" else 10
        self.style_passes = 0  # style images run through VGG19 (cache misses cost one each)
        self._targets: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size
        # On a CPU, max_memory bounds the whole process: what is resident now (torch,
        # VGG19) and the workspace come off the top; the rest is for scales, tiles and history.
        self.resident = resident_bytes() if self.device.type == "cpu" else 0
        self.reserved = self.resident + WORKSPACE_BYTES if self.device.type == "cpu" else 0
        self.work_memory = max(self.max_memory - self.reserved, 0)

    @classmethod
    def from_settings(cls, settings: EngineSettings, **kwargs) -> "Engine":
        return cls(**settings.model_dump(), **kwargs)

    # --- public API ------------------------------------------------------------

    def stylize(
        self,
        contents: Sequence[torch.Tensor],
        preset: Preset,
        styles: Sequence[torch.Tensor],
        progress: ProgressCallback | None = None,
    ) -> list[StylizeResult]:
        """Stylise each content image ([3, H, W], RGB in [0, 1]) with `preset`.

        `styles` holds the preset's style images as tensors, in the order of
        `preset.styles`. Images whose output sizes match are optimised
        together as one batch: each keeps its own optimiser state (Adam is
        elementwise; L-BFGS gets one optimiser per image), so batching changes
        speed, not results.
        Returns one result per content image, in order.
        """
        if len(styles) != len(preset.styles):
            raise ValueError(f"preset {preset.name!r} lists {len(preset.styles)} style images, got {len(styles)}")
        results: list[StylizeResult | None] = [None] * len(contents)
        for hw, indices in self._batches(contents, preset):
            # Photos of one output size may differ in pixel size (400x300 and
            # 200x150 both give 256x192): each is resized to the output size
            # first, and every coarser scale is taken from that.
            # size: full is this batch's long edge from here on.
            concrete = preset.model_copy(update={"size": max(hw)}) if preset.size == "full" else preset
            batch = torch.cat([resize(contents[i].to(self.device, self.dtype)[None], hw) for i in indices])
            for i, result in zip(indices, self._run(batch, concrete, styles, progress)):
                results[i] = result
        return results  # type: ignore[return-value]

    def objective(self, images: Sequence[torch.Tensor], contents: Sequence[torch.Tensor], preset: Preset,
                  styles: Sequence[torch.Tensor]) -> list[float]:
        """The weighted objective of each image as a stylisation of its content, at the image's size.

        The same function the optimiser minimises (content + style + TV, as
        configured by `preset`), evaluated without autocast: benchmarks use it
        to compare runs of different optimisers, precisions and programs fairly.
        """
        return [sum(terms) for terms in self.objective_terms(images, contents, preset, styles)]

    def objective_terms(self, images: Sequence[torch.Tensor], contents: Sequence[torch.Tensor], preset: Preset,
                        styles: Sequence[torch.Tensor]) -> list[tuple[float, float, float]]:
        """Per image, the weighted (content, style, TV) terms whose sum `objective` returns."""
        values = []
        for image, content in zip(images, contents):
            image = image.to(self.device, self.dtype)[None]
            content = resize(content.to(self.device, self.dtype)[None], tuple(image.shape[-2:]))
            objective, _ = self._setup_scale(content, preset, styles, max(image.shape[-2:]), None)
            x = color.luminance(image) if preset.color == "luminance" else image
            with torch.no_grad():
                terms = objective(x, autocast=False)
            values.append((float(terms.content[0]), float(terms.style[0]), float(terms.tv[0])))
        return values

    def objective_gradient(self, image: torch.Tensor, content: torch.Tensor, preset: Preset,
                           styles: Sequence[torch.Tensor], *, tile: int | None = None
                           ) -> tuple[tuple[float, float, float], torch.Tensor]:
        """The weighted (content, style, TV) terms at `image` and the gradient of their sum.

        `image` is [3, H, W] (or [1, H, W] for colour: luminance), `content`
        the photo [3, h, w], resized to the image's size. With `tile` (px, a
        multiple of the deepest layer's stride: 16 for relu5_1) the objective
        is computed tile by tile (nst_watch.engine.tiled), exactly; without,
        in one pass. Evaluated without autocast (float32, or float64 with
        precision="fp64"), for comparisons.
        Returns the gradient on the CPU, shaped like `image`.
        """
        image = image.to(self.device, self.dtype)[None]
        content = resize(content.to(self.device, self.dtype)[None], tuple(image.shape[-2:]))
        if tile is None:
            objective, _ = self._setup_scale(content, preset, styles, max(image.shape[-2:]), None)
            leaf = image.clone().requires_grad_(True)
            terms = objective(leaf, autocast=False)
            terms.total.sum().backward()
            values = tuple(float(t[0].detach()) for t in (terms.content, terms.style, terms.tv))
            return values, leaf.grad[0].cpu()
        tiled = self._tiled_objective(content, preset, styles, max(image.shape[-2:]), tile, autocast=False)
        terms, gradient = tiled.terms_and_gradient(image)
        return (terms.content, terms.style, terms.tv), gradient[0].cpu()

    def untiled_bytes(self, hw: tuple[int, int], history: int) -> int:
        """Estimated peak bytes of one untiled image of hw pixels with an L-BFGS history of `history` pairs."""
        return hw[0] * hw[1] * (ACTIVATION_BYTES + (2 * history + 3) * VECTOR_BYTES)

    def _tile_for(self, hw: tuple[int, int], preset: Preset, steps: int) -> tuple[int, int] | None:
        """(tile px, L-BFGS history) for a scale of `steps` iterations too big for max_memory in one piece.

        None where it fits untiled. The history never exceeds the scale's
        iterations (it grows with the run). On a CPU the image's own host state
        (TILED_HOST_BYTES a pixel) comes off the budget first, and the history
        shares the rest with the tiles: at most half, but never under MIN_HISTORY pairs (a
        shorter history at the finest scales, where the picture is refined
        rather than re-invented; benchmarks/RESULTS.md measures what that
        costs); on a GPU it lives in the host's RAM. The tile is the largest,
        on the pooling grid, whose halo-padded square fits what is left.
        """
        history = min(preset.history_size, max(1, steps))
        if self.untiled_bytes(hw, history) <= self.work_memory:
            return None
        pixels = hw[0] * hw[1]
        budget = self.work_memory
        if self.device.type == "cpu":
            half = (budget // 2 // pixels - TILED_HOST_BYTES) // (2 * VECTOR_BYTES)
            history = min(history, max(half, MIN_HISTORY))
            budget -= pixels * (TILED_HOST_BYTES + 2 * history * VECTOR_BYTES)
        geometry = Geometry.of([*preset.content_layers, *preset.style_layers])
        side = int(math.sqrt(max(budget, 0) / TILE_BYTES)) - 2 * geometry.halo
        tile = side // geometry.align * geometry.align
        if tile < 2 * geometry.align:
            tiles = self.untiled_bytes((2 * geometry.halo + 4 * geometry.align,) * 2, 0)
            host = pixels * (TILED_HOST_BYTES + 2 * MIN_HISTORY * VECTOR_BYTES) if self.device.type == "cpu" else 0
            need = self.reserved + 1.25 * (tiles + host)
            raise EngineError(
                f"preset {preset.name!r}: {hw[1]}x{hw[0]} px does not fit engine.max_memory "
                f"({self.max_memory / 1e9:.2f} GB, {self.resident / 1e9:.2f} GB of it resident) even in tiles; "
                f"raise max_memory to {need / 1e9:.1f} GB or more, or lower size")
        return tile, history

    def _style_tile(self, hw: tuple[int, int], preset: Preset) -> int | None:
        """Tile px for the Gram pass of a style image of hw pixels, None where it fits whole in work_memory."""
        if hw[0] * hw[1] * FORWARD_BYTES <= self.work_memory:
            return None
        geometry = Geometry.of(preset.style_layers)
        side = int(math.sqrt(self.work_memory / FORWARD_BYTES)) - 2 * geometry.halo
        return max(side // geometry.align, 2) * geometry.align

    def _lbfgs_tiled(self, objective: TiledObjective, x: torch.Tensor, history: int, steps: int,
                     clock: "_Clock") -> tuple[torch.Tensor, _Terms]:
        """`_lbfgs` for one image whose objective and gradient come from tiles (image on the host)."""
        x = x.detach().clone()
        optimiser = BatchedLBFGS(x, history=history)
        best, best_terms = x.clone(), None
        for i in range(1, steps + 1):
            values, gradient = objective.terms_and_gradient(x, on_tile=clock.tile)
            terms = _Terms(*(torch.tensor([v], dtype=torch.float64) for v in (values.content, values.style,
                                                                                 values.tv)))
            if best_terms is None or values.total < float(best_terms.total[0]):
                best.copy_(x)
                best_terms = terms
            optimiser.step(gradient)
            if clock.tick(i, terms, x):
                break
        clock.finish_scale()
        return best, best_terms

    def _tiled_objective(self, content: torch.Tensor, preset: Preset, styles, edge: int, tile: int, *,
                         autocast: bool) -> TiledObjective:
        """The objective of `_setup_scale` for one photo [1, 3, H, W], computed in tiles of `tile` px."""
        extractor = FeatureExtractor(self.features, [*preset.content_layers, *preset.style_layers], self.preprocess)
        luminance = preset.color == "luminance"
        return TiledObjective(
            extractor,
            color.luminance(content) if luminance else content,
            content_layers=preset.content_layers,
            style_layers=preset.style_layers,
            grams=self._style_targets(extractor, preset, styles, edge, content),
            layer_weights=layer_weights(preset.style_layers, preset.style_layer_weights),
            content_weight=preset.content_weight,
            style_weight=preset.style_weight,
            tv_weight=preset.tv_weight,
            render=_gray_to_rgb if luminance else _identity,
            tile=tile,
            device=self.device,
            dtype=self.dtype,
            autocast=autocast,
            channels_last=self.channels_last,
        )

    def cache_clear(self) -> None:
        self._targets.clear()

    # --- batching and schedule ------------------------------------------------

    def _batches(self, contents: Sequence[torch.Tensor], preset: Preset) -> list[tuple[tuple[int, int], list[int]]]:
        """(output size, content indices) per batch: photos of one output size, as many as fit work_memory."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(contents):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"content image {i} must be [3, H, W], got {tuple(image.shape)}")
            groups.setdefault(output_size(*image.shape[-2:], preset), []).append(i)
        batches = []
        for (h, w), members in groups.items():
            per_batch = max(1, self.work_memory // self.untiled_bytes((h, w), preset.history_size))
            if self.device.type == "cpu":
                # On a CPU, fp32 convolutions are compute-bound at any batch size, so
                # a batch only saves per-pass overheads: measured on 2 AVX2 cores,
                # 8 photos together ran 1.17-1.22x faster at 128 px, 0.99-1.10x at 256 px.
                per_batch = min(per_batch, max(1, CPU_BATCH_PIXELS // (h * w)))
            batches += [((h, w), members[k:k + per_batch]) for k in range(0, len(members), per_batch)]
        return batches

    def _run(self, batch: torch.Tensor, preset: Preset, styles, progress) -> list[StylizeResult]:
        start = time.perf_counter()
        final_hw = fit_long_edge(*batch.shape[-2:], preset.size)
        layers = [*preset.content_layers, *preset.style_layers]
        need = min_edge(layers)
        sizes = scale_sizes(preset)
        # Coarse scales too small for the deepest layer are skipped; only
        # the full size can be too small, which is the photo's or preset's fault.
        schedule = [
            (edge, steps) for edge, steps in zip(sizes, scale_iterations(preset, sizes))
            if edge == preset.size or min(fit_long_edge(*batch.shape[-2:], edge)) >= need
        ]
        sizes, iterations = [edge for edge, _ in schedule], [steps for _, steps in schedule]
        if min(final_hw) < need:
            h, w = batch.shape[-2:]
            raise EngineError(
                f"preset {preset.name!r}: the photo is {final_hw[1]}x{final_hw[0]} at size {preset.size}, too small "
                f"for layer {deepest(layers)}, which needs a short edge of at least {need} px; "
                f"{fit_size(h, w, need)}"
            )
        clock = _Clock(preset.name, len(batch), len(sizes), sum(iterations), start, progress, self.report_every,
                       preset.early_stop)
        timings = {"style_targets": 0.0}
        image = None
        for scale, (edge, steps) in enumerate(zip(sizes, iterations), start=1):
            hw = fit_long_edge(*batch.shape[-2:], edge) if edge != preset.size else final_hw
            content = resize(batch, hw)
            t0 = time.perf_counter()
            tile = self._tile_for(hw, preset, steps) if len(batch) == 1 else None
            with return_freed_memory(tile is not None and self.device.type == "cpu"):
                if tile is None:
                    objective, param = self._setup_scale(content, preset, styles, edge, image)
                else:
                    # Too big for max_memory in one piece: the exact tiled objective, with the
                    # image and the L-BFGS history on the host and only tiles on the device.
                    objective = self._tiled_objective(content, preset, styles, edge, tile[0], autocast=self.bf16)
                    first = color.luminance(content) if preset.color == "luminance" else content
                    param = self._initial(first, preset, image).detach()
                    param = param.to("cpu", memory_format=torch.contiguous_format)
                    timings["tiles"] = float(len(objective.tiles))
                timings["style_targets"] += time.perf_counter() - t0
                clock.begin_scale(scale, hw, steps, param)
                if tile is None:
                    image, terms = self._optimise(objective, param, preset, steps, clock)
                else:
                    image, terms = self._lbfgs_tiled(objective, param, tile[1], steps, clock)
        image = image.to(self.device)
        if terms is not None:
            terms = _Terms(*(t.to(self.device) for t in (terms.content, terms.style, terms.tv)))
        with torch.no_grad():
            if terms is None:  # the returned image was never evaluated (Adam's average)
                terms = objective(image, autocast=self.bf16)
            rgb = objective.render(image)
            if preset.color == "luminance":
                rgb = color.with_content_chroma(image, resize(batch, final_hw))
            rgb = rgb.clamp(0, 1)
        if not torch.isfinite(rgb).all() or not torch.isfinite(terms.total).all():
            raise EngineError(
                f"preset {preset.name!r}: the result is not finite after {sum(iterations)} iterations "
                "(lower learning_rate or style_weight)"
            )
        seconds = time.perf_counter() - start
        timings["total"] = seconds
        return [
            StylizeResult(
                image=rgb[i].float().cpu(),
                loss=float(terms.total[i]),
                content=float(terms.content[i]),
                style=float(terms.style[i]),
                tv=float(terms.tv[i]),
                iterations=clock.ran,
                seconds=seconds,
                timings=dict(timings),
            )
            for i in range(len(batch))
        ]

    # --- one scale --------------------------------------------------------------

    def _setup_scale(self, content, preset, styles, edge, previous):
        layers = list(preset.content_layers) + list(preset.style_layers)
        extractor = FeatureExtractor(self.features, layers, self.preprocess)
        luminance = preset.color == "luminance"
        if luminance:
            content_y = color.luminance(content)
            vgg_content = content_y.expand(-1, 3, -1, -1)
        else:
            vgg_content = content
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            content_features = extractor(vgg_content)
        content_loss = LayerSum(
            {name: ContentLoss(content_features[name]) for name in preset.content_layers}
        )
        grams = self._style_targets(extractor, preset, styles, edge, content)
        weights = layer_weights(preset.style_layers, preset.style_layer_weights)
        style_loss = LayerSum(
            {name: Scale(StyleLoss(grams[name]), weights[name]) for name in preset.style_layers}
        )
        render = _gray_to_rgb if luminance else _identity
        objective = StyleTransferLoss(
            extractor,
            Scale(content_loss, preset.content_weight),
            Scale(style_loss, preset.style_weight),
            Scale(TVLoss(), preset.tv_weight),
            render,
        )
        start = content_y if luminance else content
        return objective, self._initial(start, preset, previous)

    def _initial(self, content: torch.Tensor, preset: Preset, previous: torch.Tensor | None) -> torch.Tensor:
        if previous is not None:
            # Coarse-to-fine: start each scale from the previous scale's result.
            image = resize(previous.detach().to(content.device), tuple(content.shape[-2:]))
        elif preset.init == "content":
            image = content.clone()
        elif preset.init == "gray":
            image = torch.full_like(content, 0.5)
        else:
            # Drawn on the CPU so a seed gives the same start on every device.
            generator = torch.Generator().manual_seed(preset.seed)
            image = torch.rand(content.shape, generator=generator).to(content)
        image = image.detach().clone()
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image.requires_grad_(True)

    def _style_targets(self, extractor, preset: Preset, styles, edge: int, content) -> dict[str, torch.Tensor]:
        """Blended Gram targets per style layer, cached per (preset, styles, size).

        With colour matching the targets depend on each photo too, so they are
        per image ([N, C, C]) and the photo joins the cache key.
        """
        key = (
            preset.fingerprint(),
            _digest(styles),
            self.settings.weights,
            edge,
            _digest([content]) if preset.color != "none" else None,
        )
        if key in self._targets:
            self._targets.move_to_end(key)
            return self._targets[key]
        per_image = [self._blended_grams(extractor, preset, styles, edge, c[None]) for c in content] \
            if preset.color != "none" else [self._blended_grams(extractor, preset, styles, edge, None)]
        grams = {name: torch.cat([g[name] for g in per_image]) for name in preset.style_layers}
        self._targets[key] = grams
        while len(self._targets) > self._cache_size:
            self._targets.popitem(last=False)
        return grams

    def _blended_grams(self, extractor, preset, styles, edge, content) -> dict[str, torch.Tensor]:
        per_style = []
        for style in styles:
            style = style.to(self.device, self.dtype)[None]
            style = resize(style, self._style_size(style.shape[-2:], preset, edge))
            if preset.color == "histogram":
                style = color.match_color(style, content)
            elif preset.color == "luminance":
                y = color.match_luminance(color.luminance(style), color.luminance(content))
                style = y.expand(-1, 3, -1, -1)
            self.style_passes += 1
            tile = self._style_tile(tuple(style.shape[-2:]), preset)
            if tile is not None:  # a style image whose forward pass alone exceeds max_memory
                per_style.append(gram_matrices(extractor, style, preset.style_layers, tile, device=self.device,
                                               dtype=self.dtype, autocast=self.bf16,
                                               channels_last=self.channels_last))
                continue
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                features = extractor(style)
            per_style.append({name: gram_matrix(features[name]) for name in preset.style_layers})
        blend = [s.weight for s in preset.styles]
        return {name: blend_grams([g[name] for g in per_style], blend) for name in preset.style_layers}

    @staticmethod
    def _style_size(hw, preset: Preset, edge: int) -> tuple[int, int]:
        """A style image's size at a scale whose long edge is `edge`: edge x style_scale.

        At a coarse pyramid scale the style may be too small for the deepest
        style layer although it fits at full size; there it is enlarged just
        enough (a blurrier style for a blurry scale), so the pyramid needs no
        style that the preset itself could not use.

        Above STYLE_EDGE (1024 px) a style is not enlarged past its own pixels
        (a small painting blown up to a 6000 px photo's size is mush, and its
        Grams would describe the blur) nor past twice that (more pixels cost
        a longer Gram pass, tiled under max_memory, and add no texture); it
        never goes below STYLE_EDGE either. Up to 1024 px
        nothing changes: the style scales with the photo.
        """
        long_edge = max(1, round(edge * preset.style_scale))
        if long_edge > STYLE_EDGE:
            long_edge = max(STYLE_EDGE, min(long_edge, max(hw), 2 * STYLE_EDGE))
        target = fit_long_edge(*hw, long_edge)
        need = min_edge(preset.style_layers)
        if min(target) >= need:
            return target
        if edge == preset.size:
            raise EngineError(
                f"preset {preset.name!r}: a style image of {hw[1]}x{hw[0]} becomes {target[1]}x{target[0]} at size "
                f"{preset.size} x style_scale {preset.style_scale:g}, too small for layer "
                f"{deepest(preset.style_layers)}, which needs {need} px on the short edge; raise style_scale "
                "or use a less elongated style image"
            )
        grow = need / min(target)
        return tuple(max(need, round(e * grow)) for e in target)

    # --- optimisers -------------------------------------------------------------

    def _optimise(self, objective, image, preset: Preset, steps: int, clock: "_Clock"):
        """Returns (image, its loss terms, or None where they are unknown)."""
        if steps == 0:
            return image.detach(), None
        if preset.optimizer == "lbfgs":
            return self._lbfgs(objective, image, preset, steps, clock)
        return self._adam(objective, image, preset, steps, clock)

    def _adam(self, objective, image, preset, steps, clock) -> tuple[torch.Tensor, None]:
        optimiser = torch.optim.Adam([image], lr=preset.learning_rate)
        decay = preset.average
        # Departure from the paper (which uses L-BFGS): Adam on [0,1] pixels with
        # an exponential moving average of the iterate, as in
        # style-transfer-pytorch; the average removes Adam's high-frequency
        # jitter. Its window grows with the run, min(decay, (1+t)/(10+t)), so a
        # short run is not dragged back towards its starting image.
        average: torch.Tensor | None = None
        for i in range(1, steps + 1):
            optimiser.zero_grad(set_to_none=True)
            terms = objective(image, autocast=self.bf16)
            terms.total.sum().backward()
            optimiser.step()
            with torch.no_grad():
                image.clamp_(0, 1)
                if decay and average is None:
                    average = image.detach().clone()
                elif decay:
                    d = min(decay, (1 + i) / (10 + i))
                    average.mul_(d).add_(image, alpha=1 - d)
            if clock.tick(i, terms, average if average is not None else image):
                break
        clock.finish_scale()
        return (average if average is not None else image).detach(), None

    def _lbfgs(self, objective, image, preset, steps, clock) -> tuple[torch.Tensor, _Terms]:
        """L-BFGS with its own state per image, sharing each forward/backward pass.

        As neural-style: no line search, one function evaluation per step, so
        a step needs only the loss and gradient at the current point. One
        batched pass computes them for every image, then one batched
        L-BFGS update steps them all. The images never share curvature or
        step sizes, so a batch gives the results of one-at-a-time runs.
        Returns each image's best evaluated iterate: without a line search
        L-BFGS can overshoot late in a run.
        """
        x = image.detach().clone(memory_format=torch.contiguous_format)
        optimiser = BatchedLBFGS(x, history=preset.history_size)
        best = x.clone()
        inf = torch.full((len(x),), float("inf"), device=x.device)
        best_terms = _Terms(inf, inf, inf)
        for i in range(1, steps + 1):
            leaf = x.detach().requires_grad_(True)
            batch = leaf.contiguous(memory_format=torch.channels_last) if self.channels_last else leaf
            terms = objective(batch, autocast=self.bf16)
            terms.total.sum().backward()
            with torch.no_grad():
                better = terms.total.detach() < best_terms.total
                best = torch.where(better.view(-1, 1, 1, 1), x, best)
                best_terms = terms.where(better, best_terms)
                optimiser.step(leaf.grad)
            if clock.tick(i, terms, x):
                break
        clock.finish_scale()
        # The last step's result was never evaluated; judging it would cost a
        # whole forward pass, so the best evaluated iterate stands, and its
        # terms are already known.
        return best, best_terms


def _identity(image: torch.Tensor) -> torch.Tensor:
    return image


def _gray_to_rgb(luminance: torch.Tensor) -> torch.Tensor:
    return luminance.expand(-1, 3, -1, -1)


class _Clock:
    """Progress reports, early stopping and the non-finite watchdog, without a host sync per step.

    Loss sums and the first bad iteration live on the device; they are read
    (a sync) only at reporting intervals and early-stop window ends.
    """

    def __init__(self, preset, images, scales, steps, start, callback, every, early_stop=None):
        self.preset, self.images, self.scales, self.steps = preset, images, scales, steps
        self.start, self.callback, self.every = start, callback, every
        self.early_stop = early_stop
        self.done = 0
        self.ran = 0

    def begin_scale(self, scale: int, hw: tuple[int, int], iterations: int, image: torch.Tensor) -> None:
        self.scale, self.hw, self.iterations = scale, hw, iterations
        self.first_bad: torch.Tensor | None = None
        self.last_terms: _Terms | None = None
        self.last_i = 0
        self.passes = 0  # tile passes per iteration, once a tiled scale has reported one
        # The image at the start of the early-stop window.
        self.anchor = image.detach().clone() if self.early_stop is not None else None

    def tick(self, i: int, terms: _Terms, image: torch.Tensor) -> bool:
        """Record iteration i, after which the image is `image`; True means it has settled and the scale should end."""
        self.done += 1
        self.ran += 1
        self.last_terms, self.last_i = terms, i
        total = terms.total.detach().sum()
        bad = ~torch.isfinite(total)
        index = torch.full_like(total, float(self.done))
        if self.first_bad is None:
            self.first_bad = torch.where(bad, index, torch.full_like(total, -1.0))
        else:
            self.first_bad = torch.where((self.first_bad < 0) & bad, index, self.first_bad)
        if i % self.every == 0 or i == self.iterations:
            self._check()
            self._report()
        if self.early_stop is not None and i % self.early_stop.every == 0 and i < self.iterations:
            return self._settled(i, image)
        return False

    def _settled(self, i: int, image: torch.Tensor) -> bool:
        self._check()
        with torch.no_grad():
            moved = (image.detach() - self.anchor).abs().flatten(1).mean(1).max() * 255
            self.anchor.copy_(image.detach())
        if float(moved) >= self.early_stop.min_change:
            return False
        # Count the skipped iterations as done, so progress still ends at 100%.
        self.done += self.iterations - i
        self._report()
        return True

    def finish_scale(self) -> None:
        self._check()

    def _check(self) -> None:
        if self.first_bad is not None and float(self.first_bad) >= 0:
            raise EngineError(
                f"preset {self.preset!r}: the loss became non-finite at iteration {int(self.first_bad)} "
                f"(scale {self.scale} of {self.scales}); lower learning_rate or style_weight"
            )

    def tile(self, done: int, total: int) -> None:
        """A tiled iteration's progress: `done` of `total` tile passes (a 24 MP iteration must not look hung)."""
        self.passes = total
        self._report(tile=done, inside=True)

    def _report(self, tile: int = 0, inside: bool = False) -> None:
        # Inside an iteration there are tile passes but perhaps no terms yet. At an
        # iteration's end a tiled scale still says how many passes an iteration
        # takes (tile 0/n), so a status view does not flicker between the two.
        if self.callback is None or (not inside and self.last_terms is None):
            return
        if self.last_terms is None:  # inside a scale's first tiled iteration: no loss known yet
            content = style = tv = 0.0
        else:
            t = self.last_terms
            content, style, tv = (float(x.detach().sum()) for x in (t.content, t.style, t.tv))
        self.callback(
            Progress(
                preset=self.preset, images=self.images, scale=self.scale, scales=self.scales,
                width=self.hw[1], height=self.hw[0], iteration=self.last_i + inside,
                iterations=self.iterations, step=self.done, steps=self.steps, loss=content + style + tv,
                content=content, style=style, tv=tv, elapsed=time.perf_counter() - self.start,
                tile=tile, tiles=self.passes,
            )
        )
