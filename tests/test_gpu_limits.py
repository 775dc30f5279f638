"""GPU kernels have limits the CPU path lacks; each kind found is guarded here, on the CPU.

- The antialiased resize's CUDA kernel keeps its filter taps in 48 KB of
  shared memory: 6000x4000 -> 94x63 (the first pyramid scale of a 24 MP
  photo) crashed on an H200 with "Too much shared memory required: 66556
  vs 49152". The model below is PyTorch's own launch arithmetic
  (aten/src/ATen/native/cuda/UpSampleBilinear2d.cu, upsample_gen2d_aa),
  written out here independently of nst_watch's.
- cuDNN's convolutions and cuBLAS's matrix products index with int32: a
  tensor of 2^31 elements or more fails (PyTorch #17897, #80020), and a
  single image's widest activation (64 channels at full resolution)
  reaches that at 33.5 MP.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_painting, synthetic_photo, to_tensor
from nst_watch.config import Preset
from nst_watch.engine import memory
from nst_watch.engine.lbfgs import BatchedLBFGS
from nst_watch.engine.pyramid import resize
from nst_watch.engine.tiled import Geometry

LAYERS = ["relu4_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def cuda_aa_shared_bytes(source, target, itemsize, warp=32, shared=48 * 1024, max_threads=1024):
    """Shared memory PyTorch's CUDA upsample_gen2d_aa asks for, bicubic (interp size 4), as its launcher computes it."""
    def taps(inp, out):
        scale = inp / out
        return 1 + 2 * math.ceil(4 * 0.5 * scale if scale >= 1 else 4 * 0.5)

    interp_h, interp_w = taps(source[0], target[0]), taps(source[1], target[1])
    numer = shared // itemsize - interp_w * warp
    block_y = max(1, 2 ** int(math.log2(max(numer // (interp_h * (warp + 1)), 1))))
    block_y = min(max_threads // warp, block_y)
    return (interp_w * warp + interp_h * block_y + interp_h * block_y * warp) * itemsize


@pytest.fixture
def interpolate_calls(monkeypatch):
    calls = []
    original = F.interpolate

    def spy(image, size=None, **kwargs):
        calls.append((tuple(image.shape[-2:]), tuple(size), image.element_size()))
        return original(image, size=size, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    return calls


def assert_each_call_fits_the_gpu(calls):
    assert calls
    for source, target, itemsize in calls:
        need = cuda_aa_shared_bytes(source, target, itemsize)
        assert need <= 48 * 1024, f"{source} -> {target}: {need} bytes of shared memory on CUDA"


def test_the_model_reproduces_the_h200_crash():
    # The field failure's own numbers: 6000x4000 -> 94x63 asked for 66556 bytes.
    assert cuda_aa_shared_bytes((4000, 6000), (63, 94), 4) == 66556
    assert cuda_aa_shared_bytes((2160, 3840), (68, 120), 4) <= 49152  # 4K's first scale ran


@pytest.mark.parametrize("source, target", [
    ((1280, 1920), (20, 30)),  # 64x both ways, as 6000x4000 -> 94x63
    ((64, 19200), (64, 64)),  # 300x along one axis
    ((9000, 40), (30, 40)),
    ((2000, 3000), (600, 900)),  # small factors: one call, as before
    ((40, 60), (400, 600)),  # enlarging
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_resize_call_fits_the_gpu_kernel_and_the_picture_is_today_s(interpolate_calls, source, target, dtype):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, *source, generator=g, dtype=dtype)
    image = F.avg_pool2d(image, 3, 1, 1)  # a little photo-like correlation
    out = resize(image, target)
    assert out.shape[-2:] == target
    assert_each_call_fits_the_gpu(interpolate_calls)
    # The single call the CPU runs (what the engine did before): within 1/255.
    single = F.interpolate(image, size=target, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    assert float((out - single).abs().max()) <= 1 / 255


def test_a_resize_the_kernel_takes_whole_is_one_call_as_before(interpolate_calls):
    resize(torch.rand(1, 3, 400, 600), (100, 150))
    assert len(interpolate_calls) == 1


def test_stylize_of_a_photo_many_times_its_output_size_asks_no_kernel_too_much(random_engine, interpolate_calls):
    # The photo (and the style) shrink 64x to a 48 px output, as a 24 MP photo to its first pyramid scale.
    photo = to_tensor(synthetic_photo(2048, 3072, seed=1))
    style = to_tensor(synthetic_painting(3072, 3072, seed=2))
    preset = Preset(name="big", styles=["s.png"], size=48, iterations=2, pyramid=None, early_stop=None)
    [result] = random_engine.stylize([photo], preset, [style])
    assert result.image.shape == (3, 32, 48)
    assert_each_call_fits_the_gpu(interpolate_calls)


def test_an_image_whose_widest_activation_reaches_2_31_elements_runs_in_tiles():
    plenty = 10**14  # memory is no object: an H200 or bigger
    assert memory.tile_for((4000, 6000), LAYERS, 50, 100, plenty, spill_to_host=True) is None  # 24 MP: 1.5e9
    plan = memory.tile_for((5504, 8256), LAYERS, 50, 100, plenty, spill_to_host=True)  # 45 MP: 2.9e9
    halo = Geometry.of(LAYERS).halo
    assert (plan.tile + 2 * halo) ** 2 * memory.WIDEST_CHANNELS <= memory.INDEX_LIMIT
    assert plan.on_device and plan.history == 50
    assert memory.style_tile((6000, 6000), LAYERS, plenty) is not None


def test_a_tiled_image_keeps_its_state_on_the_gpu_where_it_fits_beside_the_tiles():
    # 4K under a 4 GB budget (the H200 run that cost 4.4x untiled with the state in the host's RAM).
    plan = memory.tile_for((2160, 3840), LAYERS, 50, 100, 4 * 10**9, spill_to_host=True)
    assert plan.on_device and memory.MIN_HISTORY <= plan.history < 50
    # 24 MP under 2 GB: not even three pairs fit beside a tile, so the state waits on the host.
    plan = memory.tile_for((4000, 6000), LAYERS, 50, 100, 2 * 10**9, spill_to_host=True)
    assert not plan.on_device and plan.history == 50
    with pytest.raises(memory.DoesNotFit):  # a CPU has no host to spill to
        memory.tile_for((4000, 6000), LAYERS, 50, 100, 2 * 10**9, spill_to_host=False)


def test_a_batch_never_holds_an_activation_of_2_31_elements():
    plenty = 10**14
    assert memory.batch_size((4000, 6000), 50, plenty, cpu=False) == 1
    size = memory.batch_size((2048, 2048), 1, plenty, cpu=False)
    assert size * 2048 * 2048 * memory.WIDEST_CHANNELS <= memory.INDEX_LIMIT
    assert memory.batch_size((512, 512), 1, plenty, cpu=False) >= 8


def test_lbfgs_keeps_its_pairs_in_blocks_a_gpu_matrix_product_can_index(monkeypatch):
    # With the limit at 1,000 elements, 2 images x 2 x 5 pairs x 300 pixels need 6 blocks: the iterates
    # must be those of one block, and no stored tensor may pass the limit.
    import nst_watch.engine.lbfgs as lbfgs

    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 3, 10, 10, generator=g, dtype=torch.float64)
    weight = torch.rand(2, 3, 10, 10, generator=g, dtype=torch.float64) + 0.5

    def path():
        x = torch.full_like(target, 0.5)
        optimiser = BatchedLBFGS(x, history=5)
        for _ in range(12):
            optimiser.step(weight * (x - target) + 0.3 * torch.sin(4 * x))
        return x, optimiser

    whole, one = path()
    assert len(one.blocks) == 1
    monkeypatch.setattr(lbfgs, "INDEX_LIMIT", 1000)
    blocked, many = path()
    assert len(many.blocks) > 1
    assert all(block.numel() <= 1000 for block in many.blocks)
    assert torch.allclose(blocked, whole, rtol=1e-12, atol=1e-12)
