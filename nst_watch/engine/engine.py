"""The resident style-transfer engine.

`Engine` loads VGG19 once and keeps it on its device; `stylize()` turns a
batch of content images plus a preset into stylised images. No files, no
printing: images come in and go out as tensors, progress goes out through a
callback. The pieces it orchestrates, pystiche-style:

- vgg.py, weights.py: the encoder (VGG19 and its weights);
- losses.py, objective.py, tiled.py: the paper's terms, and the objective
  of one scale with its gradient, whole or in exact tiles;
- lbfgs.py, optimise.py, clock.py: the optimisers, the one loop that runs
  them, progress and early stopping;
- pyramid.py: sizes, iterations per scale, a resize safe on every device;
- memory.py: the budget, batches, when a scale runs in tiles;
- color.py: colour control.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import EngineSettings, Preset, deepest, min_edge, style_long_edge
from ..errors import EngineError, PresetError
from . import color, guidance, memory
from .clock import Clock, ProgressCallback
from .losses import (ContentLoss, GuidedStyleLoss, KeepLoss, PixelTerms, ProofLoss, StyleLoss, TVLoss, blend_grams,
                     gram_matrix, guided_gram_matrices, layer_weights)
from .objective import StyleTransferObjective, gray_to_rgb, identity
from .optimise import LBFGS, AveragedAdam, optimise
from .pyramid import fit_long_edge, fit_size, output_size, proof_schedule, resize, scale_iterations, scale_sizes
from .tiled import TiledObjective, gram_matrices, guided_gram_matrices_tiled
from .vgg import FeatureExtractor, build_features, fold_preprocessing
from .weights import load_weights

log = logging.getLogger("nst_watch.engine")

# precision: auto on a GPU runs a scale in bf16 from this many pixels per batch up, in fp32 below. Measured on
# an H200 through autocast (issue 20): bf16 was slower than fp32 at 512 px batch 1 (12.2 against 9.5 ms an
# iteration), faster at 1024 px batch 1 (12.8 against 14.6 ms) and at 512 px batch 8 (22.7 against 27.9 ms).
AUTO_BF16_PIXELS = 1024 * 1024
# losses.KeepLoss's weight: how hard a mask's kept regions are held to the photo's pixels.
KEEP_WEIGHT = 30.0
# losses.ProofLoss's weight: how hard a final is held to its proof's layout. Tuned on the bundled weights,
# 96 px proofs, 384 px finals (luminance SSIM to the proof, chelsea / astronaut x impasto): 0 -> 0.66 / 0.46,
# 30 -> 0.88 / 0.89, 300 -> 0.99 / 0.99 (the proof enlarged, little detail added); 100 leaves a margin.
PROOF_WEIGHT = 100.0


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


class Stop(Exception):
    """Raised by a progress callback to end a run now (a daemon's shutdown past its grace).

    A run whose last scale is expected to end within `finish_within` more
    iterations (Progress.expected_steps) ends there, as early stopping would
    soon have, and `stylize` returns as usual; any other raises Interrupted,
    saying where each photo was, so that a later call can resume it.
    """

    def __init__(self, finish_within: int = 0):
        super().__init__(f"stopped (finishing within {finish_within} iterations)")
        self.finish_within = finish_within


@dataclass
class Resume:
    """Where an interrupted optimisation of one photo was: enough to go on from there (Engine.stylize's `resume`).

    `image` is the optimised image at pyramid scale `scale` (1-based), [C, H, W]
    float32 on the CPU (C is 1 for colour: luminance), after `iteration`
    iterations of that scale and `ran` in all. `fingerprint` and
    `output_size` (height, width) tie it to the preset and the photo's
    output: a resume that no longer matches is ignored.
    """

    scale: int
    iteration: int
    ran: int
    image: torch.Tensor
    fingerprint: str
    output_size: tuple[int, int]


@dataclass
class FromProof:
    """A proof's result to start a larger render of the same photo and look from (Engine.stylize's `resume`).

    `image` is the proof's result, [3, h, w] RGB in [0, 1] (float or
    uint8 / 255) at the proof's output size, whose long edge is the proof's
    size. `look` is `preset.fingerprint(size=False)` of the preset that made
    it: a final of another look, a photo of another aspect, or a final no
    larger than the proof starts from scratch instead (with a log line).
    The final runs pyramid.proof_schedule: the proof's scale is done, the
    scales above it only refine, so the final looks like its proof.
    """

    image: torch.Tensor
    look: str


class Interrupted(Exception):
    """Engine.stylize ended by Stop: `done` maps content indices to finished results, `resumes` to Resume."""

    def __init__(self, done: dict[int, "StylizeResult"], resumes: dict[int, Resume]):
        super().__init__(f"interrupted: {len(done)} photo(s) done, {len(resumes)} resumable")
        self.done, self.resumes = done, resumes


@dataclass
class _ProofStart:
    image: torch.Tensor  # [C, h, w] float in [0, 1], as the run optimises it (luminance: C = 1)
    edge: int


class _Paused(Exception):
    def __init__(self, resumes: list[Resume]):
        self.resumes = resumes


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


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB"


def _gb_up(size: float, unit: str = " GB") -> str:
    """`size` bytes in GB, rounded up to a tenth: a budget suggested from it is never short."""
    return f"{math.ceil(size / 1e8) / 10:.1f}{unit}"


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
    (memory.WORKSPACE_BYTES) come off the top and the rest is `work_memory`,
    which may be set directly; on a GPU the device's. Batches are split to
    fit it, and a scale that does not fit even alone runs in exact tiles
    (nst_watch.engine.tiled); EngineError when a photo is too big for even
    the smallest tiles. A budget that leaves too little for those tiles at
    all serves no photo: `stylize` raises PresetError (`check_budget`).

    `precision`: fp32; bf16 (convolutions in bfloat16 with float32 Grams
    and losses); auto (on a GPU, bf16 for scales of AUTO_BF16_PIXELS a
    batch or more, where it is the faster, fp32 below; fp32 on a CPU); fp64
    (exactness checks only).
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
        self.max_memory = int(self.settings.max_memory or memory.default_max_memory(self.device))
        loaded = load_weights(weights, progress=download_progress)
        self.weights = loaded
        features = build_features(loaded.state_dict, pooling=pooling, padding=padding)
        # [0, 1] RGB straight in: the weights' preprocessing is folded into conv1_1.
        self.preprocess = fold_preprocessing(features, loaded.preprocess)
        # fp64 exists to check exactness (the tiled objective against the untiled one): float32
        # rounding flips max-pooling argmaxes and moves gradients by ~1e-3 either way.
        self.dtype = torch.float64 if precision == "fp64" else torch.float32
        self.precision = precision
        if self.device.type == "cuda":
            # The worker buckets photo sizes, so cuDNN's per-shape autotuning pays off.
            # Convolutions may use TF32; matrix products may not: TF32 keeps 10 bits of
            # mantissa, and the Grams (FIELD_NOTES section 1: bf16 Grams are too coarse)
            # and L-BFGS's curvature products (s.y loses its sign) need float32's 23.
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = False
        if self.device.type == "cpu":
            memory.keep_freed_memory()
        # channels_last is the native layout of cuDNN and oneDNN convolutions:
        # measured on 2 AVX2 cores at 256 px, 3% faster at batch 1, 12% at batch 8.
        self.channels_last = True if channels_last is None else channels_last
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.features = features.to(self.device, self.dtype).to(memory_format=layout)
        # bf16 convolutions only where the hardware runs them fast: on CPUs
        # without AVX512-BF16/AMX, PyTorch emulates them ~100x slower than fp32.
        # A resident bf16 copy (40 MB), where autocast would cast every weight every iteration.
        uses_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.features_bf16 = copy.deepcopy(self.features).to(torch.bfloat16) if uses_bf16 else None
        self.report_every = 1 if self.device.type == "cpu" else 10
        self.style_passes = 0  # style images run through VGG19 (cache misses cost one each)
        self._targets: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size
        # On a CPU, max_memory bounds the whole process: what is resident now (torch,
        # VGG19) and the workspace come off the top; the rest is for scales, tiles and history.
        cpu = self.device.type == "cpu"
        self.resident = memory.resident_bytes() if cpu else 0
        self.reserved = self.resident + memory.WORKSPACE_BYTES if cpu else 0
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
        resume: Sequence[Resume | FromProof | None] | None = None,
        masks: Sequence[torch.Tensor | None] | None = None,
    ) -> list[StylizeResult]:
        """Stylise each content image ([3, H, W], RGB in [0, 1]) with `preset`.

        `styles` holds the preset's style images as tensors, in the order of
        `preset.style_images()` (its own `styles`, then each region's).
        `masks` (one entry per content, None for none) gives spatial control
        (Gatys et al. 2017; engine.guidance, losses.GuidedStyleLoss): region
        weights [R, h, w], R = len(preset.region_list()), each pixel's in
        [0, 1] and summing to 1, at any size with the photo's aspect (it is
        resampled to every scale); nst_watch.photo.mask makes them from a
        painted file. A photo without a mask runs with the preset's own
        `styles` (ValueError where it has none). Images whose output sizes match are optimised
        together as one batch: each keeps its own optimiser state (Adam is
        elementwise; L-BFGS gets one optimiser per image), so batching changes
        speed, not results. `resume` (one entry per content, None for a
        fresh start) goes on from where an Interrupted run left a photo, or
        (FromProof) renders a proof's final from the proof: only the scales
        above the proof's size run, and only refine; such a photo runs in a
        batch of its own.
        Returns one result per content image, in order. PresetError when
        max_memory cannot serve the preset at all (`check_budget`);
        Interrupted when `progress` raised Stop; EngineError for a region of a
        mask too small for the deepest style layer at the output size.
        """
        self.check_budget(preset)
        if len(styles) != len(preset.style_images()):
            raise ValueError(f"preset {preset.name!r} lists {len(preset.style_images())} style images, "
                             f"got {len(styles)}")
        resume = list(resume) if resume is not None else [None] * len(contents)
        resume = [self._from_proof(r, c, preset) if isinstance(r, FromProof) else r for r, c in zip(resume, contents)]
        masks = self._checked_masks(masks, contents, preset)
        results: list[StylizeResult | None] = [None] * len(contents)
        for hw, indices in self._batches(contents, preset, resume, masks):
            # Photos of one output size may differ in pixel size (400x300 and
            # 200x150 both give 256x192): each is resized to the output size
            # first, and every coarser scale is taken from that.
            # size: full is this batch's long edge from here on.
            concrete = preset.model_copy(update={"size": max(hw)}) if preset.size == "full" else preset
            batch = torch.cat([resize(contents[i].to(self.device, self.dtype)[None], hw) for i in indices])
            weights = None if masks[indices[0]] is None else torch.cat(
                [guidance.resize_weights(masks[i].to(self.device, self.dtype)[None], hw) for i in indices])
            try:
                done = self._run(batch, concrete, styles, progress, resume[indices[0]] if len(indices) == 1 else None,
                                 preset.fingerprint(), weights)
            except _Paused as paused:
                finished = {i: r for i, r in enumerate(results) if r is not None}
                raise Interrupted(finished, dict(zip(indices, paused.resumes))) from None
            for i, result in zip(indices, done):
                results[i] = result
        return results  # type: ignore[return-value]

    def objective(self, images: Sequence[torch.Tensor], contents: Sequence[torch.Tensor], preset: Preset,
                  styles: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None] | None = None) -> list[float]:
        """The weighted objective of each image as a stylisation of its content, at the image's size.

        The same function the optimiser minimises (content + style + TV, as
        configured by `preset`), evaluated in the engine's own precision
        (fp32, or fp64), never bf16: benchmarks use it to compare runs of
        different optimisers, precisions and programs fairly.
        """
        return [sum(terms) for terms in self.objective_terms(images, contents, preset, styles, masks)]

    def objective_terms(self, images: Sequence[torch.Tensor], contents: Sequence[torch.Tensor], preset: Preset,
                        styles: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None] | None = None
                        ) -> list[tuple[float, float, float]]:
        """Per image, the weighted (content, style, TV) terms whose sum `objective` returns (masks as stylize's)."""
        values = []
        masks = self._checked_masks(masks, images, preset)
        for image, content, mask in zip(images, contents, masks):
            image = image.to(self.device, self.dtype)[None]
            content = resize(content.to(self.device, self.dtype)[None], tuple(image.shape[-2:]))
            extractor = self._extractor(preset, self.features)
            objective = self._objective(extractor, content, preset, styles, max(image.shape[-2:]),
                                        self._guide(None if mask is None else mask[None], tuple(image.shape[-2:]),
                                                    preset))
            x = color.luminance(image) if preset.color == "luminance" else image
            terms = objective.terms(x)
            values.append(tuple(float(t) for t in terms[:, 0]))
        return values

    def objective_gradient(self, image: torch.Tensor, content: torch.Tensor, preset: Preset,
                           styles: Sequence[torch.Tensor], *, tile: int | None = None,
                           mask: torch.Tensor | None = None) -> tuple[tuple[float, float, float], torch.Tensor]:
        """The weighted (content, style, TV) terms at `image` and the gradient of their sum.

        `image` is [3, H, W] (or [1, H, W] for colour: luminance), `content`
        the photo [3, h, w], resized to the image's size. With `tile` (px, a
        multiple of the deepest layer's stride: 16 for relu5_1) the objective
        is computed tile by tile (nst_watch.engine.tiled), exactly; without,
        in one pass. `mask`: region weights [R, h, w], as stylize's `masks`.
        Evaluated in the engine's own precision (fp32, or fp64).
        Returns the gradient on the CPU, shaped like `image`.
        """
        image = image.to(self.device, self.dtype)[None]
        content = resize(content.to(self.device, self.dtype)[None], tuple(image.shape[-2:]))
        extractor = self._extractor(preset, self.features)
        edge = max(image.shape[-2:])
        mask = self._checked_masks([mask], [image[0]], preset)[0]
        guide = self._guide(None if mask is None else mask[None], tuple(image.shape[-2:]), preset)
        if tile is None:
            objective = self._objective(extractor, content, preset, styles, edge, guide)
        else:
            objective = self._tiled_objective(extractor, content, preset, styles, edge, tile, guide)
        terms, gradient = objective.terms_and_gradient(image)
        return tuple(float(t) for t in terms[:, 0]), gradient[0].cpu()

    def untiled_bytes(self, hw: tuple[int, int], history: int) -> int:
        """Estimated peak bytes of one untiled image of hw pixels with an L-BFGS history of `history` pairs."""
        return memory.untiled_bytes(hw, history)

    def cache_clear(self) -> None:
        self._targets.clear()

    # --- memory ---------------------------------------------------------------

    def least_max_memory(self, preset: Preset) -> int:
        """The max_memory (bytes) below which no photo of `preset` could run but the smallest.

        What is reserved (on a CPU the resident engine and its workspace)
        plus the smallest tile of the preset's layers (memory.least_tiled_bytes).
        Above it, a photo too big for the budget fails alone, for its own size.
        """
        return self.reserved + memory.least_tiled_bytes([*preset.content_layers, *preset.style_layers])

    def check_budget(self, preset: Preset) -> None:
        """PresetError when work_memory cannot hold even the smallest tile of `preset`'s layers.

        Such a budget is the setting's fault, not the photos': the message
        names engine.max_memory, what the preset needs and of what, and a
        value to give instead, with room for tiles of a useful size
        (memory.ample_tiled_bytes).
        """
        layers = [*preset.content_layers, *preset.style_layers]
        least = memory.least_tiled_bytes(layers)
        if self.work_memory >= least:
            return
        parts = [f"{_gb(least)} for the smallest tile of its layers, down to {deepest(layers)}"]
        if self.reserved:
            parts[:0] = [f"{_gb(self.resident)} that torch and VGG19 hold",
                         f"{_gb(self.reserved - self.resident)} of workspace for photos"]
        needs = (f"{_gb(self.least_max_memory(preset))} that preset {preset.name!r} needs before any photo "
                 f"({', '.join(parts)})")
        give = _gb_up(self.reserved + memory.ample_tiled_bytes(layers), unit="GB")
        if self.settings.max_memory is None:
            default = "80% of the GPU's free memory" if self.device.type == "cuda" else "half the RAM available now"
            raise PresetError(f"the default engine.max_memory, {default} ({_gb(self.max_memory)}), is less than "
                              f"the {needs}: free memory, or set engine.max_memory (--max-memory) to {give} "
                              "if the machine has it")
        raise PresetError(f"engine.max_memory {_gb(self.max_memory)} is less than the {needs}, so no photo could "
                          f"run: raise engine.max_memory (--max-memory) to {give} or more")

    def _tile_for(self, hw: tuple[int, int], preset: Preset, steps: int, guided: bool = False
                  ) -> memory.TilePlan | None:
        """How a scale too big to run whole runs in tiles, None where it runs whole (memory.tile_for)."""
        try:
            return memory.tile_for(hw, [*preset.content_layers, *preset.style_layers], preset.history_size, steps,
                                   self.work_memory, spill_to_host=self.device.type != "cpu", guided=guided)
        except memory.DoesNotFit as too_big:
            raise EngineError(
                f"preset {preset.name!r}: {hw[1]}x{hw[0]} px does not fit engine.max_memory "
                f"({self.max_memory / 1e9:.2f} GB, {self.resident / 1e9:.2f} GB of it resident) even in tiles; "
                f"raise max_memory to {_gb_up(self.reserved + too_big.need)} or more, or lower size"
            ) from None

    def _style_tile(self, hw: tuple[int, int], preset: Preset) -> int | None:
        """Tile px for the Gram pass of a style image of hw pixels, None where it fits whole in work_memory."""
        return memory.style_tile(hw, preset.style_layers, self.work_memory)

    def _batches(self, contents: Sequence[torch.Tensor], preset: Preset, resume: Sequence[Resume | None],
                 masks: Sequence[torch.Tensor | None]) -> list[tuple[tuple[int, int], list[int]]]:
        """(output size, content indices) per batch: photos of one output size, as many as fit work_memory.

        A photo with a resume runs alone: its batch mates would be at other
        scales. Photos with masks and photos without are batched apart (their
        objectives differ in kind).
        """
        groups: dict[tuple, list[int]] = {}
        batches = []
        for i, image in enumerate(contents):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"content image {i} must be [3, H, W], got {tuple(image.shape)}")
            if resume[i] is not None:
                batches.append((output_size(*image.shape[-2:], preset), [i]))
            else:
                groups.setdefault((output_size(*image.shape[-2:], preset), masks[i] is None), []).append(i)
        for (hw, plain), members in groups.items():
            per_batch = memory.batch_size(hw, preset.history_size, self.work_memory, self.device.type == "cpu",
                                          guided=not plain)
            batches += [(hw, members[k:k + per_batch]) for k in range(0, len(members), per_batch)]
        return batches

    @staticmethod
    def _checked_masks(masks, contents, preset: Preset) -> list[torch.Tensor | None]:
        """One mask (or None) per content, each [R, h, w] with R the preset's regions; ValueError otherwise."""
        masks = list(masks) if masks is not None else [None] * len(contents)
        if len(masks) != len(contents):
            raise ValueError(f"{len(masks)} masks for {len(contents)} content images")
        regions = len(preset.region_list())
        for i, mask in enumerate(masks):
            if mask is None:
                if preset.regions is not None and not preset.styles:
                    raise ValueError(f"preset {preset.name!r} names regions and no styles of its own, so content "
                                     f"image {i} needs a mask")
                continue
            if mask.dim() != 3 or mask.shape[0] != regions:
                names = ", ".join(name for name, _, _ in preset.region_list())
                raise ValueError(f"mask {i} must be [{regions}, H, W] (regions: {names}), got {tuple(mask.shape)}")
        return masks

    def _guide(self, weights: torch.Tensor | None, hw: tuple[int, int], preset: Preset
               ) -> dict[str, torch.Tensor] | None:
        """Region weights [N, R, h, w] at `hw` px and at each style layer's resolution (guidance.at_layers)."""
        if weights is None:
            return None
        return guidance.at_layers(guidance.resize_weights(weights.to(self.device, self.dtype), hw),
                                  preset.style_layers)

    @staticmethod
    def _check_regions(masks: torch.Tensor, preset: Preset, final_hw: tuple[int, int]) -> None:
        """EngineError for a region with pixels in a mask but less than one position of the deepest style layer.

        `masks` are the batch's region weights at the output size. Such a
        region would carry no style term (GuidedStyleLoss's min_area); less
        than one pixel in all is taken for resampling dust, not a region.
        nst_watch.photo.mask.check_regions says the same about a mask file
        before the engine runs.
        """
        layer = deepest(preset.style_layers)
        stride = min_edge([layer])
        area = masks.sum(dim=(2, 3))  # [N, R], output pixels
        small = (area >= 1) & (area < stride * stride)
        if bool(small.any()):
            n, r = (int(i) for i in small.nonzero()[0])
            name = preset.region_list()[r][0]
            raise EngineError(
                f"preset {preset.name!r}: region {name!r} of mask {n} covers {float(area[n, r]):.0f} px of the "
                f"{final_hw[1]}x{final_hw[0]} output, less than one position of layer {layer} ({stride}x{stride} px), "
                f"so it cannot carry a style; paint it at least {stride}x{stride} px at the output size, raise size, "
                f"or leave {layer} out of style_layers")

    # --- precision ------------------------------------------------------------

    def _network(self, pixels: int) -> torch.nn.Sequential:
        """The resident network a scale of `pixels` (all images of the batch) runs on (see `precision`)."""
        if self.features_bf16 is None:
            return self.features
        if self.precision == "bf16" or pixels >= AUTO_BF16_PIXELS:
            return self.features_bf16
        return self.features

    def _extractor(self, preset: Preset, network: torch.nn.Sequential) -> FeatureExtractor:
        return FeatureExtractor(network, [*preset.content_layers, *preset.style_layers], self.preprocess)

    # --- one batch, scale by scale ---------------------------------------------

    def _run(self, batch: torch.Tensor, preset: Preset, styles, progress, resume: Resume | None = None,
             fingerprint: str = "", masks: torch.Tensor | None = None) -> list[StylizeResult]:
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
        shapes = [fit_long_edge(*batch.shape[-2:], edge) if edge != preset.size else final_hw for edge in sizes]
        if masks is not None:
            self._check_regions(masks, preset, final_hw)
        clock = Clock(preset.name, len(batch), list(zip(shapes, iterations)), start, progress, self.report_every,
                      preset.early_stop)
        timings = {"style_targets": 0.0}
        image = anchor = None
        if isinstance(resume, _ProofStart):
            sizes, iterations = proof_schedule(preset, resume.edge)
            shapes = [fit_long_edge(*batch.shape[-2:], edge) if edge != preset.size else final_hw for edge in sizes]
            clock = Clock(preset.name, len(batch), list(zip(shapes, iterations)), start, progress, self.report_every,
                          preset.early_stop)
            # The photo at its output size may round the proof's size a pixel otherwise than the photo did.
            image = resume.image if tuple(resume.image.shape[-2:]) == shapes[0] else resize(resume.image[None],
                                                                                             shapes[0])[0]
            resume = Resume(1, 0, 0, image, fingerprint, final_hw)
            anchor = ProofLoss(image[None].to(self.device, self.dtype), PROOF_WEIGHT)
        resume = self._usable(resume, fingerprint, final_hw, shapes, preset)
        for scale, (edge, hw, steps) in enumerate(zip(sizes, shapes, iterations), start=1):
            if resume is not None and scale < resume.scale:
                continue  # done before the interruption
            if resume is not None and scale == resume.scale:
                image, steps = resume.image.to(self.device, self.dtype)[None], max(0, steps - resume.iteration)
                clock.ran = resume.ran
                if steps == 0 and scale < len(sizes):
                    continue  # a proof's scale (or one finished before a shutdown): the next starts from it
            content = resize(batch, hw)
            guide = self._guide(masks, hw, preset)

            t0 = time.perf_counter()
            tile = self._tile_for(hw, preset, steps, masks is not None) if len(batch) == 1 else None
            extractor = self._extractor(preset, self._network(len(batch) * hw[0] * hw[1]))
            first = color.luminance(content) if preset.color == "luminance" else content
            with memory.return_freed_memory(tile is not None and self.device.type == "cpu"):
                if tile is None:
                    objective = self._objective(extractor, content, preset, styles, edge, guide, anchor)
                    x = self._initial(first, preset, image)
                    optimiser = self._optimiser(x, preset, steps)
                else:
                    # Too big for max_memory in one piece (or for a GPU kernel's int32 indexing):
                    # the exact tiled objective; the image and its L-BFGS history stay on the
                    # device where they fit beside the tiles, else on the host.
                    objective = self._tiled_objective(extractor, content, preset, styles, edge, tile.tile, guide,
                                                      anchor)
                    where = self.device if tile.on_device else torch.device("cpu")
                    x = self._initial(first, preset, image).to(where, memory_format=torch.contiguous_format)
                    optimiser = LBFGS(x, history=tile.history)
                    timings["tiles"] = float(len(objective.tiles))
                timings["style_targets"] += time.perf_counter() - t0
                clock.begin_scale(scale, hw, steps, x)
                try:
                    image, terms = optimise(objective, optimiser, steps, clock) if steps else (x, None)
                except Stop as stop:
                    image, terms = optimiser.result()
                    if scale < len(sizes) or clock.left_here() > stop.finish_within:
                        raise _Paused([Resume(scale, clock.last_i + (resume.iteration if resume is not None and
                                                                    scale == resume.scale else 0), clock.ran,
                                              image[i].detach().float().cpu(), fingerprint, final_hw)
                                       for i in range(len(batch))]) from None
                    clock.finish_scale()  # within sight of its early stop: it ends here
        image = image.to(self.device)
        with torch.no_grad():
            if terms is None:  # the returned image was never evaluated (Adam's average, or no iterations)
                terms = objective.terms(image)
            terms = terms.to(self.device)
            rgb = objective.render(image)
            if preset.color == "luminance":
                rgb = color.with_content_chroma(image, resize(batch, final_hw))
            rgb = rgb.clamp(0, 1)
        if not torch.isfinite(rgb).all() or not torch.isfinite(terms).all():
            raise EngineError(
                f"preset {preset.name!r}: the result is not finite after {sum(iterations)} iterations "
                "(lower learning_rate or style_weight)"
            )
        seconds = time.perf_counter() - start
        timings["total"] = seconds
        values = terms.double().cpu()
        return [
            StylizeResult(
                image=rgb[i].float().cpu(),
                loss=float(values[:, i].sum()),
                content=float(values[0, i]),
                style=float(values[1, i]),
                tv=float(values[2, i]),
                iterations=clock.ran,
                seconds=seconds,
                timings=dict(timings),
            )
            for i in range(len(batch))
        ]

    @staticmethod
    def _from_proof(proof: FromProof, content: torch.Tensor, preset: Preset) -> "_ProofStart | None":
        """The proof as the first scale of its final's run, or None (logged) when it cannot serve."""
        image = proof.image.float() / 255 if proof.image.dtype == torch.uint8 else proof.image.float()
        edge = max(image.shape[-2:])
        final_edge = preset.long_edge(*content.shape[-2:])
        why = None
        if proof.look != preset.fingerprint(size=False):
            why = "it was made with other settings or style weights than the preset has now"
        elif edge >= final_edge:
            why = f"it is {edge} px, not smaller than the final's {final_edge} px"
        else:
            # A photo sent pre-shrunk to its output size (Ray) may round one pixel otherwise.
            want = fit_long_edge(*content.shape[-2:], edge)
            if any(abs(a - b) > 1 for a, b in zip(image.shape[-2:], want)):
                why = "its shape is not the photo's at the proof's size"
            elif tuple(image.shape[-2:]) != want:
                image = resize(image[None], want)[0]
        if why is not None:
            log.info("preset %r: the final starts from scratch, not from its proof: %s", preset.name, why)
            return None
        if preset.color == "luminance":
            image = color.luminance(image[None])[0]  # what the proof optimised: its luminance
        return _ProofStart(image.clamp(0, 1), edge)

    @staticmethod
    def _usable(resume: Resume | None, fingerprint: str, final_hw, shapes, preset: Preset) -> Resume | None:
        """`resume` where it still fits this preset and photo, else None (with a log line: it starts afresh)."""
        if resume is None:
            return None
        channels = 1 if preset.color == "luminance" else 3
        fits = (resume.fingerprint == fingerprint and tuple(resume.output_size) == tuple(final_hw)
                and 1 <= resume.scale <= len(shapes)
                and tuple(resume.image.shape) == (channels, *shapes[resume.scale - 1]))
        if not fits:
            log.info("preset %r: a kept optimisation no longer matches the preset or photo; starting afresh",
                     preset.name)
            return None
        return resume

    def _optimiser(self, x: torch.Tensor, preset: Preset, steps: int):
        if preset.optimizer == "lbfgs":
            # The history grows with the run in the two-loop form; here it is allocated at once,
            # so a scale of few iterations gets no more than it can fill.
            return LBFGS(x, history=min(preset.history_size, max(1, steps)))
        return AveragedAdam(x, preset.learning_rate, preset.average)

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
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return image.detach().clone(memory_format=layout)

    # --- one scale's objective --------------------------------------------------

    def _objective(self, extractor: FeatureExtractor, content: torch.Tensor, preset: Preset, styles,
                   edge: int, guide: dict[str, torch.Tensor] | None = None, anchor: ProofLoss | None = None
                   ) -> StyleTransferObjective:
        """The objective of one scale, for a batch of photos `content` [N, 3, H, W] at that scale.

        `guide` maps each style layer to the batch's region weights at its
        resolution (guidance.at_layers), for photos with masks; `anchor`
        holds a final to its proof (losses.ProofLoss).
        """
        luminance = preset.color == "luminance"
        seen = gray_to_rgb(color.luminance(content)) if luminance else content
        with torch.no_grad():
            content_features = extractor(seen)
        own = None if guide is None else (
            lambda: {name: guided_gram_matrices(content_features[name], guide[name]) for name in preset.style_layers})
        first = color.luminance(content) if luminance else content
        return StyleTransferObjective(
            extractor,
            {name: ContentLoss(content_features[name], preset.content_weight) for name in preset.content_layers},
            self._style_losses(extractor, preset, styles, edge, content, guide, own),
            TVLoss(preset.tv_weight),
            gray_to_rgb if luminance else identity,
            self._pixel_terms(preset, guide, first, anchor),
        )

    def _tiled_objective(self, extractor: FeatureExtractor, content: torch.Tensor, preset: Preset, styles,
                         edge: int, tile: int, guide: dict[str, torch.Tensor] | None = None,
                         anchor: ProofLoss | None = None) -> TiledObjective:
        """The objective of `_objective` for one photo [1, 3, H, W], computed in tiles of `tile` px."""
        luminance = preset.color == "luminance"
        seen = color.luminance(content) if luminance else content
        render = gray_to_rgb if luminance else identity
        own = None if guide is None else (lambda: guided_gram_matrices_tiled(
            extractor, seen, guide, preset.style_layers, tile, device=self.device, dtype=self.dtype,
            channels_last=self.channels_last, render=render))
        return TiledObjective(
            extractor,
            seen,
            content_layers=preset.content_layers,
            content_weight=preset.content_weight,
            style=self._style_losses(extractor, preset, styles, edge, content, guide, own),
            tv=TVLoss(preset.tv_weight),
            render=render,
            tile=tile,
            device=self.device,
            dtype=self.dtype,
            channels_last=self.channels_last,
            keep=self._pixel_terms(preset, guide, seen, anchor),
        )

    @staticmethod
    def _pixel_terms(preset: Preset, guide: dict[str, torch.Tensor] | None, photo: torch.Tensor,
                     anchor: ProofLoss | None) -> nn.Module | None:
        """The pixel terms: a mask's kept regions held to `photo` (losses.KeepLoss), a final held to its proof
        (`anchor`), both (PixelTerms), or None."""
        keep = None if guide is None else guidance.keep_weights(preset, guide[guidance.PIXELS])
        terms = [t for t in (None if keep is None else KeepLoss(photo, keep.to(photo.dtype), KEEP_WEIGHT), anchor)
                 if t is not None]
        return None if not terms else terms[0] if len(terms) == 1 else PixelTerms(*terms)

    def _style_losses(self, extractor, preset: Preset, styles, edge: int, content,
                      guide: dict[str, torch.Tensor] | None = None, own=None) -> dict[str, nn.Module]:
        """Each style layer's loss: StyleLoss against the blended Grams, or GuidedStyleLoss per region of a mask.

        With `guide`, a region with styles is matched to the blend of its
        own style images, and a region that keeps the photo to the photo's
        own Grams over that region (`own()`: [N, R, C, C] per layer), so
        its texture stays the photo's and only its border is harmonised
        with its neighbours.
        """
        weights = layer_weights(preset.style_layers, preset.style_layer_weights)
        if guide is None:
            whole, blend = guidance.whole_styles(preset, styles) if preset.regions is not None else (styles, None)
            grams = self._style_targets(extractor, preset, whole, blend, edge, content)
            return {name: StyleLoss(grams[name], preset.style_weight * weights[name])
                    for name in preset.style_layers}
        n = len(content)
        groups = guidance.region_styles(preset, styles)
        photo = own() if any(group is None for group in groups) else None
        per_region = []
        for r, group in enumerate(groups):
            if group is None:
                per_region.append({name: photo[name][:, r] for name in preset.style_layers})
            else:
                grams = self._style_targets(extractor, preset, group[0], group[1], edge, content)
                per_region.append({name: grams[name].expand(n, -1, -1) for name in preset.style_layers})
        return {name: GuidedStyleLoss(torch.stack([g[name] for g in per_region], dim=1), guide[name],
                                      preset.style_weight * weights[name])
                for name in preset.style_layers}

    def _style_targets(self, extractor, preset: Preset, styles, blend: list[float] | None, edge: int, content
                       ) -> dict[str, torch.Tensor]:
        """Blended Gram targets per style layer, cached per (preset, styles, blend, size, precision).

        `blend` weighs `styles` (None: the preset's own `styles` weights).
        With colour matching the targets depend on each photo too, so they are
        per image ([N, C, C]) and the photo joins the cache key.
        """
        blend = [s.weight for s in preset.styles] if blend is None else list(blend)
        key = (
            preset.fingerprint(),
            _digest(styles),
            tuple(blend),
            self.settings.weights,
            edge,
            extractor.dtype,
            _digest([content]) if preset.color != "none" else None,
        )
        if key in self._targets:
            self._targets.move_to_end(key)
            return self._targets[key]
        per_image = [self._blended_grams(extractor, preset, styles, blend, edge, c[None]) for c in content] \
            if preset.color != "none" else [self._blended_grams(extractor, preset, styles, blend, edge, None)]
        grams = {name: torch.cat([g[name] for g in per_image]) for name in preset.style_layers}
        self._targets[key] = grams
        while len(self._targets) > self._cache_size:
            self._targets.popitem(last=False)
        return grams

    def _blended_grams(self, extractor, preset, styles, blend, edge, content) -> dict[str, torch.Tensor]:
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
                                               dtype=self.dtype, channels_last=self.channels_last))
                continue
            with torch.no_grad():
                features = extractor(style)
            per_style.append({name: gram_matrix(features[name]) for name in preset.style_layers})
        return {name: blend_grams([g[name] for g in per_style], blend) for name in preset.style_layers}

    @staticmethod
    def _style_size(hw, preset: Preset, edge: int) -> tuple[int, int]:
        """A style image's size at a scale whose long edge is `edge`: edge x style_scale.

        At a coarse pyramid scale the style may be too small for the deepest
        style layer although it fits at full size; there it is enlarged just
        enough (a blurrier style for a blurry scale), so the pyramid needs no
        style that the preset itself could not use.

        Above 1024 px a style is not enlarged past its own pixels nor past
        2048 px, nor made smaller than 1024 px (config.style_long_edge, which
        the warning about blurry style images shares); up to 1024 px the
        style scales with the photo.
        """
        long_edge = style_long_edge(edge, preset.style_scale, max(hw))
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
