"""Mask files (issue 22): painted images read into region weights, checked, and used by `nst-watch stylize --mask`.

load_mask and check_regions on files written to disk, then the CLI as a
user runs it: real processes, random VGG19 weights (mechanics), tiny images.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import save_image as save, synthetic_painting, synthetic_photo
from nst_watch.config import Preset
from nst_watch.errors import MaskError
from nst_watch.photo import check_regions, load_mask

SKY, GROUND, SUN = (0x40, 0x80, 0xFF), (0, 255, 0), (255, 0, 0)
FAST = ("--weights", "random", "--iterations", "2", "--no-pyramid")


def nst(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ), timeout=300)


@pytest.fixture
def style(tmp_path) -> Path:
    return save(synthetic_painting(48, 48), tmp_path / "style.png")


@pytest.fixture
def plain(style) -> Preset:
    """A preset without regions: the simple case (white: its styles, black: the photo)."""
    return Preset(styles=[style], size=48)


@pytest.fixture
def named(style) -> Preset:
    """Three regions: sky and sun get the style, the ground keeps the photo."""
    return Preset(name="landscape", size=48, regions={
        "sky": {"color": "#4080ff", "styles": [style]}, "ground": {"color": "#00ff00", "styles": "photo"},
        "sun": {"color": "#ff0000", "styles": [style]}})


def painted(width: int, height: int, colours: np.ndarray | None = None) -> np.ndarray:
    """A uint8 HxWx3 mask: sky above a wavy horizon, ground below, a sun disc; `colours` [3, 3] in that order."""
    colours = np.array([SKY, GROUND, SUN], np.uint8) if colours is None else colours
    return colours[labels(width, height)]


def labels(width: int, height: int) -> np.ndarray:
    """Region index per pixel (0 sky, 1 ground, 2 sun) of `painted`, HxW."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    label = (y > 0.55 + 0.1 * np.sin(6 * x)).astype(int)
    label[(x - 0.7) ** 2 + (y - 0.25) ** 2 < 0.15 ** 2] = 2
    return label


# --- colours -> weights --------------------------------------------------------------------------


def test_a_soft_grey_mask_blends_style_and_photo_by_its_luminance(tmp_path, plain):
    grey = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (32, 1))
    Image.fromarray(grey).save(tmp_path / "soft.png")
    mask = load_mask(tmp_path / "soft.png", plain, (128, 64))
    assert mask.weights.dtype == np.float32 and mask.weights.shape == (2, 32, 64)
    style, photo = mask.weights
    np.testing.assert_allclose(style + photo, 1, atol=1e-6)
    assert np.all(np.diff(style[0]) >= 0)  # darker to lighter: more and more style
    assert style[0, 0] == 0 and style[0, -1] == 1  # pure ends, JPEG-proof
    level = np.flatnonzero(grey[0] >= 128)[0]
    assert abs(style[0, level] - (grey[0, level] / 255 - 12 / 255) / (1 - 24 / 255)) < 1e-5
    assert 0.45 < style[0, level] < 0.55  # mid grey: half and half
    assert mask.sha256 == hashlib.sha256((tmp_path / "soft.png").read_bytes()).hexdigest()


def test_transparent_pixels_of_a_simple_mask_keep_the_photo(tmp_path, plain):
    rgba = np.full((16, 24, 4), 255, np.uint8)
    rgba[:, :12, 3] = 0  # left half transparent (white underneath)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "layer.png")
    mask = load_mask(tmp_path / "layer.png", plain, (24, 16))
    assert np.all(mask.weights[0, :, :12] == 0) and np.all(mask.weights[0, :, 12:] == 1)
    assert any("transparent" in note for note in mask.notes)


def test_a_16_bit_grey_png_keeps_its_precision(tmp_path, plain):
    ramp = np.tile(np.linspace(0, 65535, 200).round().astype(np.uint16), (10, 1))
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    image.save(tmp_path / "deep.png")
    mask = load_mask(tmp_path / "deep.png", plain, (400, 20))
    expected = np.clip((ramp / 65535 - 12 / 255) / (1 - 24 / 255), 0, 1)
    np.testing.assert_allclose(mask.weights[0], expected, atol=2e-4)
    assert len(np.unique(mask.weights[0])) > 180  # finer than 8 bits would give over this ramp


def test_a_16_bit_rgb_tiff_names_its_regions(tmp_path, named):
    deep = painted(60, 40).astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "deep.tif", deep, photometric="rgb")
    mask = load_mask(tmp_path / "deep.tif", named, (60, 40))
    assert np.array_equal(mask.weights.argmax(axis=0), labels(60, 40)) and set(np.unique(mask.weights)) == {0, 1}


def test_a_palette_png_names_its_regions(tmp_path, named):
    image = Image.fromarray(painted(60, 40)).quantize(colors=3, method=Image.Quantize.MAXCOVERAGE)
    assert image.mode == "P"
    image.save(tmp_path / "palette.png")
    mask = load_mask(tmp_path / "palette.png", named, (60, 40))
    assert np.array_equal(mask.weights.argmax(axis=0), labels(60, 40)) and set(np.unique(mask.weights)) == {0, 1}


@pytest.mark.parametrize("quality", [60, 90])
def test_a_jpeg_mask_with_compression_noise_maps_to_its_regions(tmp_path, named, quality):
    truth = labels(96, 64)
    Image.fromarray(painted(96, 64)).save(tmp_path / "mask.jpg", quality=quality)  # 4:2:0 chroma, ringing
    mask = load_mask(tmp_path / "mask.jpg", named, (96, 64))
    weights = mask.weights
    np.testing.assert_allclose(weights.sum(axis=0), 1, atol=1e-5)
    assert weights.min() >= 0 and weights.max() <= 1
    # away from the edges pixels are their region's alone (JPEG rings up to a block, 8 px, from an edge)
    edge = np.zeros_like(truth, bool)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            edge |= np.roll(truth, (dy, dx), axis=(0, 1)) != truth
    ys, xs = np.nonzero(~edge)
    own = weights[truth[ys, xs], ys, xs]
    assert own.min() > 0.85 and np.mean(own == 1) > 0.98
    assert np.mean(weights.argmax(axis=0) == truth) > 0.98


def test_an_antialiased_edge_between_two_regions_blends_them(tmp_path, named):
    ramp = np.array([np.array(SKY) + (np.array(GROUND) - SKY) * k / 9 for k in range(10)]).round().astype(np.uint8)
    Image.fromarray(np.repeat(ramp[None], 4, axis=0)).save(tmp_path / "edge.png")  # 10 columns, sky -> ground
    sky, ground, sun = load_mask(tmp_path / "edge.png", named, (20, 8)).weights[:, 0]
    assert sky[0] == 1 and ground[-1] == 1 and np.all(sun == 0)
    assert np.all(np.diff(ground) >= 0) and 0 < ground[4] < 0.5 < ground[5] < 1
    np.testing.assert_allclose(sky + ground, 1, atol=1e-6)


def test_where_three_regions_meet_an_antialiased_pixel_blends_all_three(tmp_path, named):
    image = painted(30, 20)
    image[5, 5] = np.mean([SKY, GROUND, SUN], axis=0).round()
    Image.fromarray(image).save(tmp_path / "junction.png")
    weights = load_mask(tmp_path / "junction.png", named, (30, 20)).weights
    np.testing.assert_allclose(weights[:, 5, 5], 1 / 3, atol=0.02)


# --- bad masks ------------------------------------------------------------------------------------


def test_a_colour_no_region_names_is_an_error_naming_file_colour_place_and_fix(tmp_path, named):
    image = painted(60, 40)
    image[20:25, 10:16] = (255, 0, 255)  # magenta: 30 px no region names, amid the sky and ground
    Image.fromarray(image).save(tmp_path / "odd.png")
    with pytest.raises(MaskError) as caught:
        load_mask(tmp_path / "odd.png", named, (60, 40))
    text = str(caught.value)
    assert str(tmp_path / "odd.png") in text and "#ff00ff" in text and "30 px" in text and "x=10, y=20" in text
    assert "sky #4080ff" in text and "ground #00ff00 (keeps the photo)" in text and "sun #ff0000" in text
    assert "add a region with color: '#ff00ff' to preset 'landscape'" in text
    assert caught.value.path == tmp_path / "odd.png" and caught.value.permanent


def test_a_speck_of_another_colour_inside_one_region_is_no_edge_artefact(tmp_path, named):
    image = painted(60, 40)
    image[3:5, 3:5] = 255
    Image.fromarray(image).save(tmp_path / "speck.jpg", quality=90)  # JPEG smears it; still no region's colour
    with pytest.raises(MaskError, match="a colour no region names") as caught:
        load_mask(tmp_path / "speck.jpg", named, (60, 40))
    x, y = (int(v) for v in str(caught.value).split("e.g. at x=")[1].split(")")[0].split(", y="))
    assert max(abs(x - 3.5), abs(y - 3.5)) < 4  # where the speck is


def test_a_mask_of_another_aspect_is_an_error_and_any_size_of_the_same_aspect_is_fine(tmp_path, plain):
    Image.new("L", (48, 48), 255).save(tmp_path / "square.png")
    with pytest.raises(MaskError) as caught:
        load_mask(tmp_path / "square.png", plain, (48, 32))
    text = str(caught.value)
    assert "square.png" in text and "48x48" in text and "48x32" in text and "aspect" in text
    assert "48x32" in caught.value.fix
    for size in [(96, 64), (24, 16), (97, 64), (47, 32)]:  # twice, half, one pixel of rounding either way
        Image.new("L", size, 255).save(tmp_path / "ok.png")
        assert load_mask(tmp_path / "ok.png", plain, (48, 32)).weights.shape == (2, size[1], size[0])


@pytest.mark.parametrize("content, said", [(b"", "empty file"), (b"not an image at all", "mask"), (None, "no such")])
def test_an_unreadable_mask_is_an_error_naming_it(tmp_path, plain, content, said):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MaskError) as caught:
        load_mask(path, plain, (48, 32))
    assert str(path) in str(caught.value) and said in str(caught.value)


def test_a_region_too_small_for_the_deepest_style_layer_is_an_error_saying_how_small(tmp_path, named):
    image = painted(96, 64)
    image[labels(96, 64) == 2] = SKY
    image[4:12, 8:16] = SUN  # 8x8 px: 4x4 at the 48x32 output, less than relu5_1's 16x16
    Image.fromarray(image).save(tmp_path / "sun.png")
    mask = load_mask(tmp_path / "sun.png", named, (48, 32))
    with pytest.raises(MaskError) as caught:
        check_regions(mask, named, (32, 48))
    text = str(caught.value)
    assert "sun.png" in text and "region 'sun' (#ff0000) covers 16 px of the 48x32 output" in text
    assert "relu5_1 (16x16 px)" in text and "32x32 px in this 96x64 mask" in text
    check_regions(mask, named.model_copy(update={"size": 192}), (128, 192))  # 16x16 at 192 px: enough
    check_regions(mask, named.model_copy(update={"style_layers": ["relu1_1", "relu3_1"]}), (32, 48))


# --- the command line -----------------------------------------------------------------------------


def _config(tmp_path: Path, **output) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        "engine:\n  weights: random\npresets:\n  landscape:\n    size: 48\n    output:\n      format: png\n"
        + "".join(f"      {k}: {v}\n" for k, v in output.items())
        + "    regions:\n      sky:\n        color: '#4080ff'\n        styles: [style.png]\n"
        "      ground:\n        color: '#00ff00'\n        styles: photo\n      sun:\n        color: '#ff0000'\n"
        "        styles: [style.png]\n")
    return config


def test_masked_photos_run_a_bad_mask_is_reported_and_the_sidecar_records_the_mask(tmp_path, style):
    _config(tmp_path, sidecar="true")
    for name in ("harbour", "field"):
        save(synthetic_photo(32, 48, seed=len(name)), tmp_path / f"{name}.png")
    sky_and_ground = painted(96, 64)
    sky_and_ground[labels(96, 64) == 2] = SKY  # the sun would be too small at 48 px
    Image.fromarray(sky_and_ground).save(tmp_path / "harbour-mask.png")  # twice the photo's size
    odd = painted(48, 32)
    odd[:4, :4] = (255, 0, 255)
    Image.fromarray(odd).save(tmp_path / "field-mask.png")
    result = nst("stylize", "harbour.png", "field.png", "--mask", "harbour-mask.png", "--mask", "field-mask.png",
                 "-c", "config.yaml", "-p", "landscape", "--out-dir", "out", "--json", *FAST, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    good, bad = json.loads(result.stdout)
    assert good["error"] is None and good["mask"] == "harbour-mask.png"
    with Image.open(tmp_path / good["output"]) as im:
        assert im.size == (48, 32)
    sidecar = json.loads(Path(tmp_path / (good["output"] + ".json")).read_text())
    assert sidecar["mask"] == {"path": "harbour-mask.png",
                               "sha256": hashlib.sha256((tmp_path / "harbour-mask.png").read_bytes()).hexdigest()}
    assert bad["output"] is None and "field-mask.png" in bad["error"] and "#ff00ff" in bad["error"]
    assert "field-mask.png" in result.stderr and "add a region with color" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_all_black_mask_keeps_the_photo_and_an_all_white_one_does_not(tmp_path, style):
    photo = save(synthetic_photo(32, 48, seed=3), tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(photo.read_bytes())
    Image.new("L", (48, 32), 0).save(tmp_path / "black.png")
    Image.new("L", (96, 64), 255).save(tmp_path / "white.png")
    result = nst("stylize", "a.png", "b.png", "--mask", "black.png", "--mask", "white.png", "--style", "style.png",
                 "--size", 48, "--tv-weight", 0, "--output-format", "png", "--out-dir", "out", "--json",
                 "--weights", "random", "--iterations", "5", "--no-pyramid", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    kept, styled = (np.asarray(Image.open(tmp_path / r["output"]), np.float64) for r in json.loads(result.stdout))
    original = np.asarray(Image.open(photo), np.float64)
    assert np.abs(kept - original).mean() < 0.5  # 8-bit levels: the photo itself
    assert np.abs(styled - original).mean() > 5


def test_mask_count_and_a_preset_that_needs_a_mask_are_usage_errors(tmp_path, style):
    _config(tmp_path)
    for name in ("a", "b"):
        save(synthetic_photo(32, 48), tmp_path / f"{name}.png")
    Image.new("L", (48, 32), 255).save(tmp_path / "m.png")
    mismatch = nst("stylize", "a.png", "b.png", "--mask", "m.png", "--style", "style.png", *FAST, cwd=tmp_path)
    assert mismatch.returncode == 2 and "1 --mask for 2 photos" in mismatch.stderr
    unmasked = nst("stylize", "a.png", "-c", "config.yaml", "-p", "landscape", *FAST, cwd=tmp_path)
    assert unmasked.returncode == 2 and "preset 'landscape'" in unmasked.stderr
    assert "--mask" in unmasked.stderr and "Traceback" not in unmasked.stderr
    assert "--mask" in nst("stylize", "--help").stdout


def test_a_region_too_small_is_reported_before_the_engine_loads(tmp_path, style):
    _config(tmp_path)
    save(synthetic_photo(32, 48), tmp_path / "a.png")
    image = painted(48, 32)
    image[labels(48, 32) == 2] = SKY
    image[2:8, 2:8] = SUN
    Image.fromarray(image).save(tmp_path / "a-mask.png")
    # The weights file does not exist: had the engine loaded first, its error would come first.
    result = nst("stylize", "a.png", "--mask", "a-mask.png", "-c", "config.yaml", "-p", "landscape",
                 "--weights", tmp_path / "no-weights.pth", "--out-dir", "out", cwd=tmp_path)
    assert result.returncode == 1
    assert "a-mask.png" in result.stderr and "region 'sun'" in result.stderr and "16x16" in result.stderr
    assert "no-weights.pth" not in result.stderr
