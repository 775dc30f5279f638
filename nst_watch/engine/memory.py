"""The memory budget: what a scale needs, how many photos share a batch, when a scale runs in tiles.

Also the limits GPU kernels have and the CPU lacks: no tensor of the
optimisation may hold 2^31 elements or more (int32 indexing in cuDNN's
convolutions and cuBLAS's matrix products: PyTorch issues #17897, #80020;
a batch is split for them, one image is not), so an image whose widest
activation would reach it runs in tiles whatever the memory says, and
batches and tiles are sized below it.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import sys
from dataclasses import dataclass

import torch

from .tensors import INDEX_LIMIT
from .tiled import Geometry

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
# What a mask (spatial control) adds a pixel: GuidedStyleLoss's temporaries at the widest style layer
# (one region's weighted features, its gradient share and the summed gradient: three float32 maps of
# 64 channels, 768 B), rounded up. Estimated from the tensors' sizes, not measured.
GUIDED_BYTES = 800
TILED_HOST_BYTES = 100
VECTOR_BYTES = 12
WORKSPACE_BYTES = 200 * 10**6  # on a CPU, kept out of work_memory
# A forward pass without a graph (style Grams, content targets) keeps ~0.75 KB per
# pixel at its peak (benchmarks/memory.py's machine, 512 and 1024 px).
FORWARD_BYTES = 800
MIN_HISTORY = 3  # L-BFGS pairs kept at least, where memory is short (tile_for)
MARGIN = 1.25  # on the estimates, where a budget that would do is suggested (DoesNotFit, ample_tiled_bytes)
CPU_BATCH_PIXELS = 8 * 128 * 96  # largest batch (in output pixels) a CPU optimises at once

WIDEST_CHANNELS = 64  # VGG19's conv1 block: the widest activation, at full resolution


class DoesNotFit(Exception):
    """Not even the smallest tiles fit; `need` is the work_memory (bytes) that would (what is resident comes on top)."""

    def __init__(self, need: float):
        super().__init__(need)
        self.need = need


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


def untiled_bytes(hw: tuple[int, int], history: int, guided: bool = False) -> int:
    """Estimated peak bytes of one untiled image of hw pixels with an L-BFGS history of `history` pairs.

    `guided`: with a mask (GUIDED_BYTES more a pixel).
    """
    return hw[0] * hw[1] * (ACTIVATION_BYTES + (2 * history + 3) * VECTOR_BYTES + (GUIDED_BYTES if guided else 0))


def indexable(pixels: int) -> bool:
    """Whether an image (or batch) of `pixels` keeps every activation under INDEX_LIMIT elements."""
    return pixels * WIDEST_CHANNELS <= INDEX_LIMIT


def batch_size(hw: tuple[int, int], history: int, work_memory: int, cpu: bool, guided: bool = False) -> int:
    """How many images of hw pixels one batch optimises: what work_memory holds, at least 1.

    Never so many that an activation of the batch reaches INDEX_LIMIT
    elements. On a CPU at most CPU_BATCH_PIXELS: fp32 convolutions are
    compute-bound at any batch size there, so a batch only saves per-pass
    overheads (measured on 2 AVX2 cores, 8 photos together ran 1.17-1.22x
    faster at 128 px, 0.99-1.10x at 256 px).
    """
    pixels = hw[0] * hw[1]
    size = max(1, work_memory // untiled_bytes(hw, history, guided))
    size = min(size, max(1, INDEX_LIMIT // (WIDEST_CHANNELS * pixels)))
    if cpu:
        size = min(size, max(1, CPU_BATCH_PIXELS // pixels))
    return size


@dataclass(frozen=True)
class TilePlan:
    """How a scale too big to run whole runs: tiles of `tile` px, an L-BFGS history of `history` pairs, and
    whether the image's own state (image, gradient, best iterate, content targets, history) stays on the
    compute device (`on_device`) or waits in the host's RAM while the tiles run on the device."""

    tile: int
    history: int
    on_device: bool


def tile_for(hw: tuple[int, int], layers, history: int, steps: int, work_memory: int,
             spill_to_host: bool, guided: bool = False) -> TilePlan | None:
    """How a scale of `steps` iterations runs in tiles (TilePlan); None where it runs whole.

    A scale runs whole when its untiled estimate fits work_memory and its
    widest activation stays under INDEX_LIMIT elements. The history never
    exceeds the scale's iterations. Otherwise the image's own state
    (TILED_HOST_BYTES a pixel) and its history stay where the tiles run
    and share the budget with them: the history takes at most half, but
    never under MIN_HISTORY pairs (a shorter history at the finest scales,
    where the picture is refined rather than re-invented;
    benchmarks/RESULTS.md measures what that costs), and the tile is the
    largest, on the pooling grid, whose halo-padded square fits what is
    left and stays indexable. Keeping the state there matters on a GPU:
    with it in the host's RAM, the host's L-BFGS and the copies of every
    tile cost more than the tiles (4.4x an untiled iteration at 4K on an
    H200). Only where not even that fits, and `spill_to_host` (a GPU with
    the host's RAM beside it), the state moves to the host and the whole
    budget goes to the tiles. Raises DoesNotFit where not even the
    smallest tiles fit.
    """
    history = min(history, max(1, steps))
    pixels = hw[0] * hw[1]
    if untiled_bytes(hw, history, guided) <= work_memory and indexable(pixels):
        return None
    geometry = Geometry.of(layers)
    per_tile_pixel = TILE_BYTES + (GUIDED_BYTES if guided else 0)
    half = (work_memory // 2 // pixels - TILED_HOST_BYTES) // (2 * VECTOR_BYTES)
    kept = min(history, max(half, MIN_HISTORY))
    tile = _largest_tile(work_memory - pixels * (TILED_HOST_BYTES + 2 * kept * VECTOR_BYTES), geometry,
                         per_tile_pixel)
    if tile is not None:
        return TilePlan(tile, kept, on_device=True)
    if spill_to_host:
        tile = _largest_tile(work_memory, geometry, per_tile_pixel)
        if tile is not None:
            return TilePlan(tile, history, on_device=False)
    state = 0 if spill_to_host else pixels * (TILED_HOST_BYTES + 2 * MIN_HISTORY * VECTOR_BYTES)
    raise DoesNotFit(ample_tiled_bytes(layers) + MARGIN * state)


def least_tiled_bytes(layers) -> int:
    """The work_memory (bytes) below which tile_for makes no tile at all for these VGG19 layers.

    Its smallest tile, two grid steps square, read with its halo on every
    side (Geometry.of(layers): 192 px squares for relu5_1, 32 for relu3_1).
    The image's own state (TILED_HOST_BYTES and the L-BFGS history a pixel)
    comes on top, so any real photo needs more; a budget under it serves
    only photos small enough to run whole.
    """
    geometry = Geometry.of(layers)
    return (2 * geometry.halo + 2 * geometry.align) ** 2 * TILE_BYTES


def ample_tiled_bytes(layers) -> int:
    """The work_memory (bytes) to suggest where tiles do not fit, the image's own state aside.

    Tiles of four grid steps with their halo (224 px squares for relu5_1),
    estimated untiled, with MARGIN: tiles of a useful size, not the least.
    """
    geometry = Geometry.of(layers)
    return math.ceil(MARGIN * untiled_bytes((2 * geometry.halo + 4 * geometry.align,) * 2, 0))


def _largest_tile(budget: int, geometry: Geometry, per_pixel: int = TILE_BYTES) -> int | None:
    """The largest tile on the pooling grid whose halo-padded square fits `budget` bytes and stays indexable."""
    side = min(int(math.sqrt(max(budget, 0) / per_pixel)), math.isqrt(INDEX_LIMIT // WIDEST_CHANNELS))
    tile = (side - 2 * geometry.halo) // geometry.align * geometry.align
    return tile if tile >= 2 * geometry.align else None


def style_tile(hw: tuple[int, int], layers, work_memory: int) -> int | None:
    """Tile px for the Gram pass of a style image of hw pixels, None where it fits whole in work_memory."""
    if hw[0] * hw[1] * FORWARD_BYTES <= work_memory and indexable(hw[0] * hw[1]):
        return None
    geometry = Geometry.of(layers)
    side = min(int(math.sqrt(work_memory / FORWARD_BYTES)), math.isqrt(INDEX_LIMIT // WIDEST_CHANNELS))
    return max((side - 2 * geometry.halo) // geometry.align, 2) * geometry.align
