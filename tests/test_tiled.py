"""The tiled objective (issue 12): exactly the untiled objective and gradient.

Compared in float64 (`precision="fp64"`): in float32, rounding alone flips
max-pooling argmaxes and moves the untiled gradient by ~1e-3 relative when
only the memory layout changes, which would hide a real tiling error.
Random weights: this is arithmetic, not picture quality.
"""

from __future__ import annotations

import pytest
import torch

from nst_watch.config import Preset
from nst_watch.engine import Engine
from nst_watch.engine.memory import FORWARD_BYTES
from nst_watch.engine.tiled import Geometry, tiles

SHALLOW = dict(content_layers=["relu3_1"], style_layers=["relu1_1", "relu2_1", "relu3_1"])
TERMS = {"content": dict(content_weight=1, style_weight=0, tv_weight=0),
         "style": dict(content_weight=0, style_weight=5, tv_weight=0),
         "both": dict(content_weight=1, style_weight=5, tv_weight=5)}


@pytest.fixture(scope="module")
def fp64_engines():
    return {pooling: Engine(device="cpu", weights="random", precision="fp64", pooling=pooling)
            for pooling in ("max", "avg")}


def pictures(h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    content = torch.rand(3, h, w, generator=g)
    image = (content + 0.1 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
    return content, image, torch.rand(3, 64, 64, generator=g)


def compare(engine, preset, h, w, tile):
    content, image, style = pictures(h, w)
    untiled, g0 = engine.objective_gradient(image, content, preset, [style])
    tiled, g1 = engine.objective_gradient(image, content, preset, [style], tile=tile)
    return untiled, tiled, g0, g1


def assert_same(untiled, tiled, g0, g1, border: int):
    for a, b in zip(untiled, tiled):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-12)
    scale = g0.abs().max()
    error = (g1 - g0).abs() / scale
    edge = torch.ones_like(error, dtype=torch.bool)
    edge[:, border:-border, border:-border] = False
    assert float(error[edge].max()) <= 1e-4, "at the image's edge"
    assert float(error[~edge].max()) <= 1e-4, "in the interior"
    assert float(scale) > 0


def test_geometry_follows_the_layers_in_use():
    assert Geometry.of(["relu4_2", "relu5_1"]) == Geometry(halo=80, align=16)
    assert Geometry.of(["relu4_2"]) == Geometry(halo=40, align=8)  # a shallower preset needs less
    assert Geometry.of(["relu1_1", "relu2_1", "relu3_1"]) == Geometry(halo=12, align=4)
    assert Geometry.of(["relu1_1"]) == Geometry(halo=1, align=1)


def test_tiles_cover_the_image_once_on_the_pooling_grid():
    geometry = Geometry.of(["relu5_1"])
    grid = tiles(100, 70, 32, geometry)
    owned = torch.zeros(100, 70, dtype=torch.int32)
    for t in grid:
        top, bottom, left, right = t.own
        assert top % 16 == 0 and left % 16 == 0
        owned[top:bottom, left:right] += 1
        rtop, rbottom, rleft, rright = t.read
        assert rtop % 16 == 0 and rleft % 16 == 0
        assert rtop == max(0, top - 80) and rbottom == min(100, bottom + 80)
    assert bool((owned == 1).all())
    with pytest.raises(ValueError, match="multiple of 16"):
        tiles(100, 70, 24, geometry)


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("terms", TERMS)
def test_tiled_equals_untiled_with_many_tiles(fp64_engines, pooling, terms):
    # Shallow layers (halo 12, align 4): 16 px tiles give 6 x 5 tiles whose
    # halos end inside the image, at the edge and in the interior.
    preset = Preset(name="t", styles=["s.png"], size=96, **SHALLOW, **TERMS[terms])
    assert_same(*compare(fp64_engines[pooling], preset, 72, 96, tile=16), border=12)


def test_tiled_equals_untiled_with_the_default_layers(fp64_engines):
    # relu5_1: halo 80 px, tiles on a 16 px grid; 2 x 2 tiles of a 176 x 192
    # image still read regions that stop short of the far edges. Max pooling,
    # whose argmaxes make the gradient the touchier of the two.
    preset = Preset(name="t", styles=["s.png"], size=192, **TERMS["both"])
    assert_same(*compare(fp64_engines["max"], preset, 176, 192, tile=96), border=16)


def test_luminance_only_objective_is_tiled_exactly(fp64_engines):
    fp64_engine = fp64_engines["avg"]
    preset = Preset(name="t", styles=["s.png"], size=96, color="luminance", **SHALLOW, **TERMS["both"])
    content, image, style = pictures(64, 96, seed=3)
    gray = image.mean(0, keepdim=True)
    untiled, g0 = fp64_engine.objective_gradient(gray, content, preset, [style])
    tiled, g1 = fp64_engine.objective_gradient(gray, content, preset, [style], tile=32)
    assert g1.shape == (1, 64, 96)
    assert_same(untiled, tiled, g0, g1, border=12)


def test_a_run_too_big_for_its_memory_is_tiled_and_gives_the_same_picture(fp64_engines):
    """engine.max_memory: a scale that does not fit runs in tiles, with the same result as untiled."""
    engine = fp64_engines["max"]
    content, _, style = pictures(96, 128, seed=5)
    preset = Preset(name="t", styles=["s.png"], size=128, iterations=10, early_stop=None, pyramid=None, **SHALLOW)
    [untiled] = engine.stylize([content], preset, [style])
    assert "tiles" not in untiled.timings
    work = engine.work_memory
    events = []
    try:
        engine.work_memory = engine.untiled_bytes((96, 128), preset.history_size) // 2
        [tiled] = engine.stylize([content], preset, [style], progress=events.append)
    finally:
        engine.work_memory = work
    assert tiled.timings["tiles"] > 1
    # Progress inside each iteration: every tile pass of the first one is reported before it ends.
    passes = 2 * int(tiled.timings["tiles"])
    first = [(e.tile, e.tiles) for e in events if e.step == 0]
    assert first == [(k, passes) for k in range(1, passes + 1)]
    assert all(e.iteration == 1 for e in events if e.step == 0)
    assert float((tiled.image - untiled.image).abs().max()) <= 1 / 255
    assert tiled.loss == pytest.approx(untiled.loss, rel=1e-4)


@pytest.mark.parametrize("layers", [["relu1_1", "relu2_1", "relu3_1"], ["relu1_1", "relu3_1", "relu5_1"]])
def test_style_grams_in_tiles_equal_the_untiled_ones(fp64_engines, layers):
    """A style image too big for memory has its Gram targets summed over tiles, exactly."""
    from nst_watch.engine.losses import gram_matrix
    from nst_watch.engine.tiled import gram_matrices
    from nst_watch.engine.vgg import FeatureExtractor

    engine = fp64_engines["max"]
    style = torch.rand(1, 3, 200, 136, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    extractor = FeatureExtractor(engine.features, layers, engine.preprocess)
    with torch.no_grad():
        whole = extractor(style)
    tiled = gram_matrices(extractor, style, layers, 48 if "relu5_1" not in layers else 64,
                          device=engine.device, dtype=torch.float64)
    for name in layers:
        expected = gram_matrix(whole[name])
        assert tiled[name].shape == expected.shape
        assert float((tiled[name] - expected).abs().max() / expected.abs().max()) <= 1e-10


def test_a_style_image_too_big_for_memory_gives_the_same_picture(fp64_engines):
    """engine.max_memory bounds the style's Gram pass too: tiled, with the untiled result."""
    engine = fp64_engines["max"]
    content, _, _ = pictures(48, 64, seed=6)
    style = torch.rand(3, 160, 160, generator=torch.Generator().manual_seed(8))
    preset = Preset(name="big-style", styles=["s.png"], size=64, style_scale=2.5, iterations=5, early_stop=None,
                    pyramid=None, **SHALLOW)
    [untiled] = engine.stylize([content], preset, [style])
    work = engine.work_memory
    try:
        engine.cache_clear()
        # The style's pass (160 px) no longer fits; the photo's iterations still do.
        engine.work_memory = engine.untiled_bytes((48, 64), preset.history_size) + 1
        assert engine.work_memory < 160 * 160 * FORWARD_BYTES
        assert engine._style_tile((160, 160), preset) is not None
        [tiled] = engine.stylize([content], preset, [style])
    finally:
        engine.work_memory = work
        engine.cache_clear()
    assert "tiles" not in tiled.timings  # only the style's pass was tiled
    assert float((tiled.image - untiled.image).abs().max()) <= 1 / 255
    assert tiled.loss == pytest.approx(untiled.loss, rel=1e-6)


def test_max_memory_is_checked_and_a_hopeless_budget_says_what_would_do(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    Image.fromarray((pictures(48, 64)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "p.png")
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "s.png")

    def stylize(*flags):
        return subprocess.run([sys.executable, "-m", "nst_watch", "stylize", "p.png", "--style", "s.png",
                               "--weights", "random", "--size", "64", "--iterations", "2", "-o", "out.png", *flags],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    typo = stylize("--max-memory", "lots")
    assert typo.returncode == 2 and "--max-memory" in typo.stderr
    # A budget below the resident engine and the smallest tiles serves no photo: a config error, said once.
    tiny = stylize("--max-memory", "1MB")
    assert tiny.returncode == 78 and "engine.max_memory 0.00 GB is less than the" in tiny.stderr
    assert "needs before any photo" in tiny.stderr and "raise engine.max_memory (--max-memory) to" in tiny.stderr
    assert not (tmp_path / "out.png").exists()


def test_plain_progress_shows_tiles_and_survives_the_first_iteration(caplog):
    """Log lines (journald, pipes) during a tiled scale's first iteration: no loss yet, no steps done."""
    import io

    from nst_watch.engine import Progress
    from nst_watch.progress import ProgressDisplay

    def event(step, tile, tiles, loss):
        return Progress(preset="p", images=1, scale=1, scales=1, width=6000, height=4000, iteration=step + 1,
                        iterations=100, step=step, steps=100, loss=loss, content=loss / 2, style=loss / 2, tv=0.0,
                        elapsed=30.0, tile=tile, tiles=tiles)

    with caplog.at_level("INFO", logger="nst_watch.progress"), \
            ProgressDisplay("big.tif [p]", stream=io.StringIO(), plain_interval=0) as show:
        show(event(0, 3, 50, 0.0))
        show(event(1, 25, 50, 1.5))
    first, second = [r.getMessage() for r in caplog.records]
    assert "tile 3/50" in first and "it 1/100" in first and "eta" in first and "loss" not in first
    assert "tile 25/50" in second and "loss 1.5" in second
    assert "eta 1970s" in second  # 30 s for 1.5 steps: 98.5 steps to go
