"""The coarse-to-fine pyramid: output sizes, scales, iterations per scale, and a resize safe on every device.

A preset's picture is laid out at small scales and refined at larger ones
(FIELD_NOTES section 1, "quality levers"): each scale starts from the
previous scale's result, enlarged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..config import Preset

REFINE_EDGE = 1024  # scales above it refine detail with fewer iterations (scale_iterations)
MIN_REFINE = 10


def fit_long_edge(height: int, width: int, long_edge: int) -> tuple[int, int]:
    """(height, width) scaled so the longer edge is `long_edge` px, each at least 1."""
    scale = long_edge / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def output_size(height: int, width: int, preset: Preset) -> tuple[int, int]:
    """(height, width) in pixels of a photo of `height` x `width` stylised with `preset` (its size, or full)."""
    return fit_long_edge(height, width, preset.long_edge(height, width))


def fit_size(height: int, width: int, need: int) -> str:
    """What to do about an image whose short edge is below `need` px at its size: a hint for messages."""
    size = -(-need * max(height, width) // min(height, width))  # ceil
    return f"it fits only at size {size} or more, or cropped to a less elongated shape"


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


def proof_schedule(preset: Preset, proof_edge: int) -> tuple[list[int], list[int]]:
    """(long edges, iterations) of a final that starts from a proof at `proof_edge` px (proof, then final).

    The proof is the first scale, already done (0 iterations); then every
    scale of the final's own pyramid (scale_sizes) above it. The picture was
    laid out at the proof's size, so those scales only refine, as the
    scales above REFINE_EDGE do in a run from scratch (scale_iterations):
    `iterations` x (proof_edge / edge)^2, at least MIN_REFINE, at most
    `iterations`, so each costs about what the proof's last scale did. What
    keeps them from laying the picture out anew is the engine's proof term
    (losses.ProofLoss), not fewer iterations: without it a 96 px proof's
    first refine scale fell from luminance SSIM 0.99 to the proof after 1
    iteration to 0.82-0.90 after 25 (benchmarks/RESULTS.md).
    `pyramid.iterations` does not apply: it lists a whole run's scales.
    """
    above = [edge for edge in scale_sizes(preset) if edge > proof_edge]
    steps = [min(preset.iterations, max(MIN_REFINE, round(preset.iterations * (proof_edge / edge) ** 2)))
             for edge in above]
    return [proof_edge, *above], [0, *steps]


# --- resizing ----------------------------------------------------------------------------
#
# The GPU kernel of an antialiased resize (PyTorch's upsample_gen2d_aa, CUDA
# and ROCm) keeps each output pixel's filter taps for a whole block of
# threads in shared memory, and refuses a call whose taps do not fit: "Too
# much shared memory required: 66556 vs 49152" for 6000x4000 -> 94x63, the
# first pyramid scale of a 24 MP photo, on an H200. The CPU has no such
# limit. A bicubic filter shrinking by a factor f has 2 ceil(2 f) + 1 taps
# per axis, and the kernel needs at least
#     (taps_w * warp + taps_h * (warp + 1)) * itemsize
# bytes (its block is one warp wide and at least one row high). Calls within
# that bound on both GPU families run as one call, exactly as before; others
# are split. The backward kernel (the proof term's gradient goes through a
# shrink) runs a fixed block, one warp by 256 / warp rows, and needs
#     (taps_w * warp + taps_h * 256 / warp) * itemsize
# bytes: never more than the forward's least, so a call that passes forward
# passes backward. It adds with atomics, so its sums are not bit-for-bit
# the same from run to run on a GPU (the CPU's are).

# (threads per warp, shared memory per block in bytes) of the GPU kernels: CUDA's default
# limit on every NVIDIA GPU since Kepler, and ROCm's wavefront and LDS.
GPU_BLOCKS = ((32, 48 * 1024), (64, 64 * 1024))
_BICUBIC_HALF_SUPPORT = 2.0  # the bicubic filter reaches 2 pixels either side at scale 1


def bicubic_taps(source: int, target: int) -> int:
    """Filter taps per output pixel of an antialiased bicubic resize of one axis from `source` to `target` px."""
    scale = source / target
    support = _BICUBIC_HALF_SUPPORT * scale if scale >= 1 else _BICUBIC_HALF_SUPPORT
    return 2 * math.ceil(support) + 1


def gpu_shared_bytes(source: tuple[int, int], target: tuple[int, int], itemsize: int, warp: int) -> int:
    """Least shared memory per block the GPU kernel asks for to resize `source` (h, w) to `target`, in bytes."""
    taps_h, taps_w = bicubic_taps(source[0], target[0]), bicubic_taps(source[1], target[1])
    return (taps_w * warp + taps_h * (warp + 1)) * itemsize


def fits_gpu_kernel(source: tuple[int, int], target: tuple[int, int], itemsize: int) -> bool:
    """Whether one antialiased bicubic call resizing `source` to `target` (h, w) runs on CUDA and ROCm."""
    return all(gpu_shared_bytes(source, target, itemsize, warp) <= shared for warp, shared in GPU_BLOCKS)


def resize(image: torch.Tensor, size: tuple[int, int], *, clamp: bool = True) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, *size], antialiased bicubic, clamped to [0, 1] (unless clamp=False: a smooth,
    linear map, for losses.ProofLoss); runs on every device.

    One call of `F.interpolate(mode="bicubic", antialias=True)` wherever the
    GPU kernel takes it (fits_gpu_kernel). Otherwise the width is resized
    first, then the height, each axis in as few calls as fit: the CPU
    kernel works the same way (width, then height) in one call, so this
    gives the same pixels as the single call (to float rounding). An axis
    shrunk by more than one call can take (about 60x in float32) is shrunk
    in steps, the last one as large as fits, so that the result stays
    within 1/255 of the single call's (tests/test_resize.py).
    """
    size = (int(size[0]), int(size[1]))
    source = tuple(image.shape[-2:])
    if source == size:
        return image
    itemsize = image.element_size()
    if fits_gpu_kernel(source, size, itemsize):
        out = _bicubic(image, size)
        return out.clamp(0, 1) if clamp else out
    out = image
    for axis in (1, 0):  # width, then height
        for step in _axis_steps(source[axis], size[axis], axis, itemsize):
            target = list(out.shape[-2:])
            target[axis] = step
            out = _bicubic(out, tuple(target))
    return out.clamp(0, 1) if clamp else out


def _bicubic(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)


def _axis_steps(source: int, target: int, axis: int, itemsize: int) -> list[int]:
    """Sizes along one axis (0: height, 1: width) that take `source` to `target`, each one call the GPU kernel runs.

    Built backwards from `target`: each step comes from the largest size
    that one call can shrink to it, so the last (finest) step does most of
    the shrinking and the earlier ones only pre-shrink.
    """
    if source == target:
        return []
    steps = [target]
    while source > _largest_source(steps[0], axis, itemsize):
        steps.insert(0, _largest_source(steps[0], axis, itemsize))
    return steps


def _largest_source(target: int, axis: int, itemsize: int) -> int:
    """The largest size one call can shrink to `target` along `axis`, the other axis unchanged (5 taps)."""
    ceilings = []
    for warp, shared in GPU_BLOCKS:
        budget = shared // itemsize
        taps = (budget - 5 * (warp + 1)) // warp if axis == 1 else (budget - 5 * warp) // (warp + 1)
        ceilings.append((taps - 1) // 2)  # ceil(2 * scale) may be at most this
    return min(ceilings) * target // 2
