"""Spatial control in the engine (issue 22): guided Gram matrices per mask region, Gatys et al. 2017.

Random VGG19 weights: these tests check arithmetic and mechanics, not
pictures (docs/ and the benchmark judge pictures on the bundled weights).
Exactness checks run in float64, as tests/test_tiled.py explains.
"""

from __future__ import annotations

import math

import pytest
import torch

from nst_watch.config import Preset
from nst_watch.engine import Engine
from nst_watch.engine.guidance import at_layers, resize_weights
from nst_watch.engine.losses import GuidedStyleLoss, KeepLoss, StyleLoss
from nst_watch.engine.vgg import FeatureExtractor
from nst_watch.errors import EngineError

SHALLOW = dict(content_layers=["relu3_1"], style_layers=["relu1_1", "relu2_1", "relu3_1"])


@pytest.fixture(scope="module")
def fp64():
    return Engine(device="cpu", weights="random", precision="fp64")


def pictures(h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    content = torch.rand(3, h, w, generator=g)
    image = (content + 0.1 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
    return content, image, torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g)


def two_regions(h: int, w: int, soft: bool = True) -> torch.Tensor:
    """[2, h, w]: "style" on the left, "photo" on the right, with a soft ramp between them."""
    x = torch.linspace(-1, 1, w).expand(h, w)
    white = ((0.2 - x) / 0.4).clamp(0, 1) if soft else (x < 0).double()
    return torch.stack([white, 1 - white]).double()


def test_guided_gradient_is_the_autograd_gradient():
    g = torch.Generator().manual_seed(1)
    features = torch.rand(2, 8, 9, 11, generator=g, dtype=torch.float64)
    guide = torch.rand(2, 3, 9, 11, generator=g, dtype=torch.float64)
    guide = guide / guide.sum(dim=1, keepdim=True)
    style = torch.rand(2, 3, 8, 20, generator=g, dtype=torch.float64)
    targets = style @ style.mT / 20  # Gram targets are symmetric, as the closed form assumes
    loss = GuidedStyleLoss(targets, guide, weight=3.0)
    x = features.clone().requires_grad_(True)
    loss(x).sum().backward()
    roots, gradient = loss.root_and_gradient(features)
    assert torch.allclose(roots.pow(2), loss(features), rtol=1e-12)
    assert torch.allclose(gradient, x.grad, rtol=1e-10, atol=1e-14)


def test_keep_gradient_is_the_autograd_gradient():
    g = torch.Generator().manual_seed(4)
    image, photo = (torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64) for _ in range(2))
    keep = KeepLoss(photo, torch.rand(2, 1, 6, 7, generator=g, dtype=torch.float64), weight=30.0)
    x = image.clone().requires_grad_(True)
    keep(x).sum().backward()
    values, gradient = keep.value_and_gradient(image)
    assert torch.allclose(values, keep(image), rtol=1e-12)
    assert torch.allclose(gradient, x.grad, rtol=1e-12)


def test_one_region_covering_everything_is_the_plain_style_loss():
    g = torch.Generator().manual_seed(2)
    features = torch.rand(1, 6, 7, 5, generator=g, dtype=torch.float64)
    target = torch.rand(1, 6, 6, generator=g, dtype=torch.float64)
    guided = GuidedStyleLoss(target[:, None], torch.ones(1, 1, 7, 5, dtype=torch.float64), weight=2.0)
    plain = StyleLoss(target, weight=2.0)
    assert float(guided(features)) == pytest.approx(float(plain(features)), rel=1e-12)


def test_a_small_region_is_pulled_per_pixel_as_hard_as_a_large_one():
    # The region's Gram is normalised by its own mass and its term weighted by
    # its share, so on features with the same statistics everywhere (a 2-column
    # pattern repeated) a 2-column region pulls each of its pixels exactly as
    # hard as a region covering the whole map.
    g = torch.Generator().manual_seed(3)
    features = torch.rand(1, 4, 16, 2, generator=g, dtype=torch.float64).repeat(1, 1, 1, 8)
    target = torch.rand(1, 1, 4, 4, generator=g, dtype=torch.float64).expand(1, 2, 4, 4)
    pulls = []
    for width in (2, 16):
        x = features.clone().requires_grad_(True)
        GuidedStyleLoss(target, guide_for(width))(x).sum().backward()
        pulls.append(x.grad[..., :2])
    assert float(pulls[0].abs().max()) > 0
    assert torch.allclose(pulls[0], pulls[1], rtol=1e-9, atol=0)


def guide_for(width: int) -> torch.Tensor:
    guide = torch.zeros(1, 2, 16, 16, dtype=torch.float64)
    guide[:, 0, :, :width] = 1
    guide[:, 1] = 1 - guide[:, 0]
    return guide


@pytest.mark.parametrize("size", [(37, 53), (64, 48), (3, 200)])
def test_resized_weights_stay_a_soft_partition_of_unity(size):
    mask = two_regions(40, 60)[None]
    out = resize_weights(mask, size)
    assert out.shape == (1, 2, *size)
    assert torch.allclose(out.sum(dim=1), torch.ones(1, *size, dtype=out.dtype))
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    if size[1] >= 40:  # the ramp is wide enough to survive: soft stays soft
        assert bool(((out[0, 0] > 0.05) & (out[0, 0] < 0.95)).any())


def test_a_hard_edge_enlarged_gets_no_ringing_and_a_64x_shrink_works():
    hard = two_regions(8, 8, soft=False)[None]
    big = resize_weights(hard, (64, 64))
    assert float(big.min()) >= 0 and float(big.max()) <= 1  # bicubic would overshoot
    # shrinking ~64x in one call is what crashes an antialiased resize on CUDA;
    # area averaging has no such limit, and keeps the region's share
    huge = two_regions(8, 4096, soft=False)[None]
    small = resize_weights(huge, (8, 64))
    assert float(small[0, 0].mean()) == pytest.approx(float(huge[0, 0].mean()), abs=1e-9)


@pytest.mark.parametrize("hw", [(37, 53), (33, 65)])
def test_guidance_at_each_layer_has_the_layers_feature_shape(fp64, hw):
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    extractor = FeatureExtractor(fp64.features, layers, fp64.preprocess)
    with torch.no_grad():
        features = extractor(torch.rand(1, 3, *hw, dtype=torch.float64))
    guide = at_layers(resize_weights(two_regions(*hw)[None], hw), layers)
    for name in layers:
        assert guide[name].shape[-2:] == features[name].shape[-2:], name
        assert torch.allclose(guide[name].sum(dim=1), torch.ones_like(guide[name][:, 0]))


def test_a_mask_that_styles_everything_is_the_unmasked_objective(fp64):
    p = Preset(styles=["style.png"], size=64, **SHALLOW, content_weight=1, style_weight=5, tv_weight=5)
    content, image, style, _ = pictures(40, 56)
    white = torch.stack([torch.ones(20, 28), torch.zeros(20, 28)]).double()
    plain, g0 = fp64.objective_gradient(image, content, p, [style])
    masked, g1 = fp64.objective_gradient(image, content, p, [style], mask=white)
    assert masked == pytest.approx(plain, rel=1e-12)
    assert torch.allclose(g1, g0, rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("color", ["none", "luminance"])
def test_tiled_equals_untiled_with_a_soft_mask_and_a_kept_region(fp64, color):
    p = Preset(styles=["style.png"], size=96, **SHALLOW, content_weight=1, style_weight=5, tv_weight=5,
               color=color)
    content, image, style, _ = pictures(72, 88)
    mask = two_regions(36, 44)
    if color == "luminance":
        image = image.mean(dim=0, keepdim=True)
    untiled, g0 = fp64.objective_gradient(image, content, p, [style], mask=mask)
    tiled, g1 = fp64.objective_gradient(image, content, p, [style], mask=mask, tile=16)
    for a, b in zip(untiled, tiled):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-14)
    assert float((g1 - g0).abs().max() / g0.abs().max()) < 1e-9


def test_regions_with_their_own_styles_tile_exactly(fp64):
    p = Preset(size=96, **SHALLOW, style_weight=5, regions={
        "sky": {"color": "#0000ff", "styles": ["a.png"]},
        "ground": {"color": "#00ff00", "styles": [{"path": "b.png", "weight": 2}, "a.png"]},
        "subject": {"color": "#ff0000", "styles": "photo"}})
    content, image, a, b = pictures(64, 80)
    mask = torch.zeros(3, 64, 80, dtype=torch.float64)
    mask[0, :24] = 1
    mask[2, 24:, 30:60] = 1
    mask[1] = 1 - mask[0] - mask[2]
    styles = [a, b, a]  # preset.style_images(): sky's, then ground's two
    assert len(p.style_images()) == 3
    untiled, g0 = fp64.objective_gradient(image, content, p, styles, mask=mask)
    tiled, g1 = fp64.objective_gradient(image, content, p, styles, mask=mask, tile=32)
    for x, y in zip(untiled, tiled):
        assert y == pytest.approx(x, rel=1e-9, abs=1e-14)
    assert float((g1 - g0).abs().max() / g0.abs().max()) < 1e-9


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / max(float(((a - b) ** 2).mean()), 1e-20))


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_black_keeps_the_photo_and_white_styles_it(random_engine, optimizer):
    content, _, style, _ = pictures(48, 64, seed=5)
    p = Preset(styles=["style.png"], size=64, iterations=15, pyramid=None, early_stop=None, tv_weight=0,
               optimizer=optimizer)
    black = torch.stack([torch.zeros(48, 64), torch.ones(48, 64)])
    white = black.flip(0)
    kept, styled = random_engine.stylize([content, content], p, [style], masks=[black, white])
    # The kept region's targets are the photo's own Grams and its pixels are
    # held by the keep term: at the photo, no pull at all. (Without the keep
    # term, Adam's normalised steps turned rounding-level gradients into
    # visible moves: PSNR 28.)
    assert psnr(kept.image, content) > (40 if optimizer == "lbfgs" else 35)
    assert psnr(kept.image, content) > psnr(styled.image, content) + 10


def test_masked_and_unmasked_photos_in_one_call_match_separate_runs(random_engine):
    content, _, style, _ = pictures(48, 64, seed=6)
    other = content.flip(-1)
    p = Preset(styles=["style.png"], size=64, iterations=6, pyramid=None, early_stop=None)
    mask = two_regions(24, 32).float()
    together = random_engine.stylize([content, other], p, [style], masks=[mask, None])
    [alone_masked] = random_engine.stylize([content], p, [style], masks=[mask])
    [alone_plain] = random_engine.stylize([other], p, [style])
    assert torch.allclose(together[0].image, alone_masked.image, atol=1e-5)
    assert torch.allclose(together[1].image, alone_plain.image, atol=1e-5)
    assert not torch.allclose(together[0].image, alone_plain.image, atol=1e-2)


def test_masks_run_through_the_pyramid_and_bf16():
    bf16 = Engine(device="cpu", weights="random", precision="bf16")
    content, _, style, _ = pictures(48, 64, seed=7)
    p = Preset(styles=["style.png"], size=64, iterations=4, pyramid={"min_size": 32, "factor": 2})
    [result] = bf16.stylize([content], p, [style], masks=[two_regions(12, 16).float()])
    assert result.image.shape == (3, 48, 64)
    assert torch.isfinite(result.image).all()


def test_a_region_too_small_for_the_deepest_layer_is_refused(random_engine):
    content, _, style, _ = pictures(64, 64, seed=8)
    p = Preset(styles=["style.png"], size=64, iterations=2, pyramid=None)
    mask = torch.zeros(2, 64, 64)
    mask[1, :4, :4] = 1  # 16 px of "photo": less than one relu5_1 position (16x16 px)
    mask[0] = 1 - mask[1]
    with pytest.raises(EngineError, match=r"region 'photo'.*16x16 px"):
        random_engine.stylize([content], p, [style], masks=[mask])


def test_masks_that_do_not_fit_the_preset_are_refused(random_engine):
    content, _, style, _ = pictures(48, 64, seed=9)
    named = Preset(size=64, iterations=2, regions={"a": {"color": "red", "styles": ["s.png"]},
                                                   "b": {"color": "blue", "styles": "photo"}})
    with pytest.raises(ValueError, match="needs a mask"):
        random_engine.stylize([content], named, [style])
    plain = Preset(styles=["style.png"], size=64, iterations=2)
    with pytest.raises(ValueError, match=r"\[2, H, W\]"):
        random_engine.stylize([content], plain, [style], masks=[torch.ones(3, 48, 64) / 3])
