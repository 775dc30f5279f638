"""Decoding and encoding: orientation, metadata, colour, 16 bits, alpha, round trips.

Every input is generated here: EXIF (with an IFD1 thumbnail) and ICC profiles
(an Adobe-RGB-like matrix profile, a small CMYK LUT profile) are built by hand.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import ExifTags, Image, ImageCms, JpegImagePlugin, TiffImagePlugin

from nst_watch.photo import load_photo, save_photo
from nst_watch.photo.decode import apply_orientation

# --- builders -------------------------------------------------------------------


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz_tag(x, y, z) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _desc_tag(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">IIHB", 0, 0, 0, 0) + b"\0" * 67


def icc_profile(space: bytes, pcs: bytes, cls: bytes, desc: str, tags: dict[bytes, bytes]) -> bytes:
    """A minimal ICC v2.1 profile (header, tag table, tags)."""
    entries = [(b"desc", _desc_tag(desc)), (b"wtpt", _xyz_tag(0.9642, 1.0, 0.8249)),
               (b"cprt", b"text\0\0\0\0none\0"), *tags.items()]
    offset = 128 + 4 + 12 * len(entries)
    table, data = b"", b""
    for sig, body in entries:
        table += struct.pack(">4sII", sig, offset + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    header = (struct.pack(">I4sI4s4s4s", offset + len(data), b"none", 0x02100000, cls, space, pcs)
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(entries)) + table + data


ADOBE_GAMMA = 563 / 256
_GAMMA = b"curv\0\0\0\0" + struct.pack(">IH", 1, 563)
ADOBE_RGB = icc_profile(b"RGB ", b"XYZ ", b"mntr", "Adobe RGB (1998) test", {
    b"rXYZ": _xyz_tag(0.60974, 0.31111, 0.01947), b"gXYZ": _xyz_tag(0.20528, 0.62567, 0.06087),
    b"bXYZ": _xyz_tag(0.14919, 0.06322, 0.74457), b"rTRC": _GAMMA, b"gTRC": _GAMMA, b"bTRC": _GAMMA})


def cmyk_profile() -> bytes:
    """A CMYK printer profile whose A2B0 (lut8, Lab PCS) has a 2-point CLUT.

    Corner colours are the naive CMYK->RGB ones, turned into Lab by LittleCMS
    (Pillow stores a*/b* as signed bytes; ICC lut8 wants them offset by 128).
    """
    corners = [((1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k))
               for c in (0, 1) for m in (0, 1) for y in (0, 1) for k in (0, 1)]
    rgb = Image.new("RGB", (16, 1))
    rgb.putdata([tuple(round(255 * v) for v in corner) for corner in corners])
    lab = ImageCms.profileToProfile(rgb, ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                    outputMode="LAB")
    lab = np.asarray(lab).reshape(16, 3)
    lab = np.column_stack([lab[:, 0], lab[:, 1:].view(np.int8).astype(int) + 128]).astype(np.uint8)  # ICC: a+128
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ramp = bytes(range(256))
    lut = (b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + identity + ramp * 4
           + lab.tobytes() + ramp * 3)
    return icc_profile(b"CMYK", b"Lab ", b"prtr", "Test CMYK", {b"A2B0": lut})


def exif_with_thumbnail(orientation: int, thumbnail: bytes) -> bytes:
    """EXIF with camera tags, GPS and an IFD1 JPEG thumbnail (Pillow cannot write IFD1)."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "TestCam", "Model X", orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 31.0, 0.0)
    tiff = exif.tobytes()[6:]
    order = "<" if tiff[:2] == b"II" else ">"
    next_ifd = 10 + 12 * struct.unpack_from(order + "H", tiff, 8)[0]
    start = len(tiff) + len(tiff) % 2
    tiff = tiff.ljust(start, b"\0")
    ifd1 = TiffImagePlugin.ImageFileDirectory_v2(ifh=tiff[:8])
    ifd1[0x0103], ifd1[0x0201], ifd1[0x0202] = 6, 0, len(thumbnail)
    ifd1[0x0201] = start + len(ifd1.tobytes(start))
    tiff = tiff[:next_ifd] + struct.pack(order + "I", start) + tiff[next_ifd + 4:] + ifd1.tobytes(start) + thumbnail
    return b"Exif\x00\x00" + tiff


def jpeg_bytes(im: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **options)
    return buf.getvalue()


XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/"'
       b' xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" exif:GPSLatitude="52,31.0N">'
       b'<dc:creator><rdf:Seq><rdf:li>Ansel Tester</rdf:li></rdf:Seq></dc:creator>'
       b'</rdf:Description></rdf:RDF></x:xmpmeta>')


@pytest.fixture
def thumbnail() -> bytes:
    return jpeg_bytes(Image.new("RGB", (16, 16), (255, 0, 255)))


def marked_image(w=48, h=24) -> Image.Image:
    """White, with a red block in the stored top-left corner."""
    im = Image.new("RGB", (w, h), "white")
    im.paste((255, 0, 0), (0, 0, 8, 8))
    return im


def is_red(px) -> bool:
    return px[0] > 0.8 and px[1] < 0.2 and px[2] < 0.2


# --- orientation and EXIF -------------------------------------------------------


@pytest.mark.parametrize("orientation, corner", [(6, (0, -1)), (8, (-1, 0))])
def test_exif_orientation_upright_and_metadata_carried(tmp_path, thumbnail, orientation, corner):
    src = tmp_path / "in.jpg"
    marked_image().save(src, exif=exif_with_thumbnail(orientation, thumbnail), xmp=XMP, quality=95)
    stored = Image.open(src).getexif()
    assert stored.get_ifd(ExifTags.IFD.IFD1)[0x0201] > 0  # the input really has a thumbnail
    assert thumbnail in Image.open(src).info["exif"]

    photo = load_photo(src)
    assert photo.pixels.shape == (48, 24, 3)  # 48x24 stored, 24 wide x 48 high upright
    assert is_red(photo.pixels[corner[0] * 7, corner[1] * 7])  # rotated once, the right way
    assert any("orientation" in n for n in photo.notes)

    out = save_photo(photo.pixels, tmp_path / "out.jpg", source=photo).path
    result = Image.open(out)
    assert result.size == (24, 48)
    exif = result.getexif()
    assert exif[0x0112] == 1
    assert (exif[0x010F], exif[0x0110]) == ("TestCam", "Model X")
    assert exif.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"
    assert (exif.get_ifd(0x8769)[0xA002], exif.get_ifd(0x8769)[0xA003]) == (24, 48)
    assert exif.get_ifd(ExifTags.IFD.IFD1) == {}
    assert thumbnail not in result.info["exif"]
    assert exif.get_ifd(0x8825)[1] == "N"  # GPS kept unless asked
    xmp = result.info["xmp"]
    assert b"Ansel Tester" in xmp and b'tiff:Orientation="1"' in xmp
    # Re-reading the output must not rotate it again.
    assert load_photo(out).pixels.shape == (48, 24, 3)


def test_strip_gps_removes_exif_and_xmp_gps(tmp_path, thumbnail):
    src = tmp_path / "in.jpg"
    marked_image().save(src, exif=exif_with_thumbnail(1, thumbnail), xmp=XMP)
    photo = load_photo(src)
    out = Image.open(save_photo(photo.pixels, tmp_path / "o.jpg", source=photo, strip_gps=True).path)
    exif = out.getexif()
    assert 0x8825 not in exif and exif.get_ifd(0x8825) == {}
    assert exif[0x010F] == "TestCam"
    assert b"GPS" not in out.info["xmp"] and b"Ansel Tester" in out.info["xmp"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_orientation_matches_pillow(tmp_path, orientation):
    """The 16-bit path rotates with numpy; it must agree with exif_transpose."""
    rng = np.random.default_rng(orientation)
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(load_photo(tmp_path / "o.png").pixels)
    assert np.allclose(apply_orientation(arr, orientation) / 255.0, expected)


# --- colour ---------------------------------------------------------------------


def adobe_to_srgb(values: np.ndarray) -> np.ndarray:
    """Independent reference: published D65 matrices and transfer functions."""
    to_xyz = np.array([[0.5767309, 0.1855540, 0.1881852], [0.2973769, 0.6273491, 0.0752741],
                       [0.0270343, 0.0706872, 0.9911085]])
    to_srgb = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])
    lin = np.clip((values ** ADOBE_GAMMA) @ to_xyz.T @ to_srgb.T, 0, 1)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


PATCHES = np.array([[200, 60, 50], [60, 170, 80], [90, 110, 200], [128, 128, 128]], dtype=np.uint8)


def patch_image(size=16) -> np.ndarray:
    return np.repeat(np.repeat(PATCHES[None], size, axis=0), size, axis=1)  # 16 x 64 x 3


def test_adobe_rgb_is_converted_and_output_is_srgb(tmp_path):
    src = tmp_path / "adobe.png"
    Image.fromarray(patch_image()).save(src, icc_profile=ADOBE_RGB)
    photo = load_photo(src)
    assert photo.color_space == "Adobe RGB (1998) test"
    assert photo.icc_profile == ADOBE_RGB
    got = photo.pixels[8, 8::16]
    raw = PATCHES / 255.0
    want = adobe_to_srgb(raw)
    assert np.abs(got - want).max() < 0.02
    assert got[0, 0] > raw[0, 0] + 0.03  # Adobe red is more saturated in sRGB numbers
    assert got[1, 0] < raw[1, 0] - 0.1  # ... and so is Adobe green
    out = Image.open(save_photo(photo.pixels, tmp_path / "o.jpg", source=photo).path)
    profile = ImageCms.ImageCmsProfile(io.BytesIO(out.info["icc_profile"]))
    assert "sRGB" in ImageCms.getProfileDescription(profile)


def test_icc_keep_reembeds_source_profile(tmp_path):
    src = tmp_path / "adobe.tif"
    Image.fromarray(patch_image()).save(src, icc_profile=ADOBE_RGB)
    photo = load_photo(src)
    result = save_photo(photo.pixels, tmp_path / "o.png", source=photo, icc="keep")
    out = Image.open(result.path)
    assert out.info["icc_profile"] == ADOBE_RGB
    back = np.asarray(out, dtype=np.int16)[8, 8::16]
    in_gamut = [0, 2, 3]  # Adobe green (patch 1) lies outside sRGB and was clipped
    assert np.abs(back - PATCHES)[in_gamut].max() <= 3  # converted back to Adobe RGB values
    assert any("converted back" in n for n in result.notes)


def test_cmyk_jpeg_without_profile_is_processed(tmp_path):
    src = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (255, 0, 0, 0)).save(src, quality=95)
    photo = load_photo(src)
    assert photo.color_space == "CMYK (untagged)"
    r, g, b = photo.pixels[16, 16]
    assert r < 0.1 and g > 0.9 and b > 0.9  # cyan
    assert any("CMYK" in n for n in photo.notes)


def test_cmyk_jpeg_with_profile_is_converted_with_it(tmp_path):
    src = tmp_path / "cmyk.jpg"
    im = Image.new("CMYK", (32, 32), (0, 0, 0, 0))
    im.paste((255, 0, 0, 0), (0, 0, 10, 32))  # cyan | 50% CMY | white
    im.paste((128, 128, 128, 0), (10, 0, 22, 32))
    im.save(src, quality=95, icc_profile=cmyk_profile())
    photo = load_photo(src)
    assert photo.color_space == "Test CMYK"
    assert any("converted from Test CMYK" in n for n in photo.notes)
    cyan, mid, white = photo.pixels[16, 4], photo.pixels[16, 16], photo.pixels[16, 28]
    assert cyan[0] < 0.2 and cyan[1] > 0.7 and cyan[2] > 0.8
    assert white.min() > 0.9
    naive = np.asarray(Image.new("CMYK", (1, 1), (128, 128, 128, 0)).convert("RGB"))[0, 0] / 255
    assert abs(mid[0] - naive[0]) > 0.08  # the profile, not the naive formula, was used


# --- 16 bits --------------------------------------------------------------------


def ramp16(h=20, w=30) -> np.ndarray:
    """Values whose low byte matters (an 8-bit round trip would lose them)."""
    rng = np.random.default_rng(7)
    return rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)


def test_16bit_tiff_roundtrip_keeps_precision(tmp_path):
    data = ramp16()
    tifffile.imwrite(tmp_path / "in.tif", data, photometric="rgb", compression="zlib")
    photo = load_photo(tmp_path / "in.tif")
    assert photo.bit_depth == 16 and photo.pixels.dtype == np.float32
    assert np.array_equal(np.round(photo.pixels * 65535).astype(np.uint16), data)
    result = save_photo(photo.pixels, tmp_path / "out.tif", source=photo, bit_depth=16)
    out = tifffile.imread(result.path)
    assert out.dtype == np.uint16
    assert np.array_equal(out, data)
    assert np.any(out % 256 != 0) and not any("16-bit source" in n for n in result.notes)


def test_16bit_written_as_8bit_is_reported(tmp_path, caplog):
    tifffile.imwrite(tmp_path / "in.tif", ramp16(), photometric="rgb")
    photo = load_photo(tmp_path / "in.tif")
    with caplog.at_level(logging.WARNING, logger="nst_watch.photo"):
        result = save_photo(photo.pixels, tmp_path / "out.jpg", source=photo, sidecar={"preset": "ink"})
    assert any("16-bit" in r.getMessage() and r.name == "nst_watch.photo" for r in caplog.records)
    assert any("16-bit" in n for n in result.notes)
    side = json.loads(result.sidecar.read_text())
    assert side["preset"] == "ink"
    assert any("16-bit" in n for n in side["output"]["notes"])


def png16(data: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot), rows filtered Sub and Up."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w, channels = data.shape
    bpp = 2 * channels
    raw = data.astype(">u2").view(np.uint8).reshape(h, w * bpp)
    rows = []
    for y in range(h):
        row = raw[y].astype(np.int16)
        if y % 2:  # Up
            rows.append(b"\x02" + ((row - raw[y - 1]) % 256).astype(np.uint8).tobytes())
        else:  # Sub
            prev = np.concatenate([np.zeros(bpp, np.int16), row[:-bpp]])
            rows.append(b"\x01" + ((row - prev) % 256).astype(np.uint8).tobytes())
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])  # grey, grey+alpha, RGB, RGBA
def test_16bit_png_is_read_at_full_precision(tmp_path, channels):
    data = np.random.default_rng(channels).integers(0, 65536, (20, 30, channels), dtype=np.uint16)
    (tmp_path / "in.png").write_bytes(png16(data))
    photo = load_photo(tmp_path / "in.png")
    assert photo.bit_depth == 16
    colour = data[..., : 3 if channels >= 3 else 1]
    assert np.array_equal(np.round(photo.pixels * 65535).astype(np.uint16), np.broadcast_to(colour, (20, 30, 3)))
    if channels in (2, 4):
        assert np.array_equal(np.round(photo.alpha * 65535).astype(np.uint16), data[..., -1])
    else:
        assert photo.alpha is None


def test_16bit_lzw_tiff_falls_back_to_pillow(tmp_path):
    """tifffile needs imagecodecs for LZW; Pillow's libtiff decodes it instead."""
    data = np.random.default_rng(3).integers(0, 65536, (10, 12), dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    photo = load_photo(tmp_path / "lzw.tif")
    assert photo.bit_depth == 16
    assert np.array_equal(np.round(photo.pixels[..., 1] * 65535).astype(np.uint16), data)


def test_16bit_tiff_orientation_applied_once(tmp_path):
    data = np.zeros((10, 20, 3), np.uint16)
    data[:3, :3] = 65535  # stored top-left corner
    tifffile.imwrite(tmp_path / "o.tif", data, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    photo = load_photo(tmp_path / "o.tif")
    assert photo.pixels.shape == (20, 10, 3)
    assert photo.pixels[0, -1].min() == 1.0  # orientation 6: stored top-left is shown top-right


def test_16bit_adobe_tiff_converted_at_full_precision(tmp_path):
    data = (patch_image().astype(np.uint16) * 257) + 3
    tifffile.imwrite(tmp_path / "in.tif", data, photometric="rgb", iccprofile=ADOBE_RGB)
    photo = load_photo(tmp_path / "in.tif")
    assert photo.bit_depth == 16 and any("16-bit precision" in n for n in photo.notes)
    reference = load_photo(_save_png(tmp_path / "ref.png", patch_image(), ADOBE_RGB))  # LittleCMS, 8-bit
    assert np.abs(photo.pixels - reference.pixels).max() < 1.5 / 255
    out = tifffile.TiffFile(save_photo(photo.pixels, tmp_path / "o.tif", source=photo, bit_depth=16,
                                       icc="keep").path)
    assert out.pages[0].tags[34675].value == ADOBE_RGB
    diff = np.abs(out.asarray().astype(int) - data)
    assert np.delete(diff, np.s_[16:32], axis=1).max() < 40  # back to Adobe values (but the clipped green)


def _save_png(path, arr, icc):
    Image.fromarray(arr).save(path, icc_profile=icc)
    return path


def test_16bit_tiff_output_carries_exif(tmp_path, thumbnail):
    src = tmp_path / "in.jpg"
    marked_image().save(src, exif=exif_with_thumbnail(6, thumbnail))
    photo = load_photo(src)
    out = Image.open(save_photo(photo.pixels, tmp_path / "o.tif", source=photo, bit_depth=16).path)
    exif = out.getexif()
    assert exif[0x0112] == 1 and exif[0x010F] == "TestCam"
    assert exif.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"
    assert exif.get_ifd(0x8825)[1] == "N"
    assert tifffile.imread(out.filename).dtype == np.uint16


# --- alpha and round trips ------------------------------------------------------


def rgba_source(tmp_path):
    arr = np.zeros((24, 32, 4), np.uint8)
    arr[..., :3] = (40, 90, 200)
    arr[..., 3] = 255
    arr[:, 16:, 3] = 0  # right half transparent
    Image.fromarray(arr).save(tmp_path / "rgba.png")
    return load_photo(tmp_path / "rgba.png")


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_alpha_reattached_and_resized(tmp_path, suffix):
    photo = rgba_source(tmp_path)
    assert photo.alpha is not None and photo.alpha[0, 0] == 1.0 and photo.alpha[0, -1] == 0.0
    bigger = np.repeat(np.repeat(photo.pixels, 2, 0), 2, 1)  # stylised at twice the size
    out = Image.open(save_photo(bigger, tmp_path / f"o{suffix}", source=photo).path)
    assert out.mode == "RGBA" and out.size == (64, 48)
    alpha = np.asarray(out.getchannel("A"))
    assert alpha[24, 5] == 255 and alpha[24, 60] == 0


def test_png_colour_key_transparency_becomes_alpha(tmp_path):
    im = Image.new("RGB", (8, 8), (10, 20, 30))
    im.paste((255, 255, 255), (4, 0, 8, 8))
    im.save(tmp_path / "trns.png", transparency=(255, 255, 255))
    alpha = load_photo(tmp_path / "trns.png").alpha
    assert alpha[0, 0] == 1.0 and alpha[0, 7] == 0.0


def test_jpeg_flattens_alpha_onto_white(tmp_path):
    photo = rgba_source(tmp_path)
    result = save_photo(photo.pixels, tmp_path / "o.jpg", source=photo)
    out = np.asarray(Image.open(result.path))
    assert out[12, 28].min() > 245 and out[12, 4][2] > 150 > out[12, 4][0]
    assert any("white" in n for n in result.notes)


@pytest.mark.parametrize("suffix, tolerance", [(".jpg", 0.02), (".png", 0.0), (".webp", 0.03), (".tif", 0.0)])
def test_roundtrip_each_format(tmp_path, suffix, tolerance):
    y, x = np.mgrid[0:32, 0:48] / 48.0
    pixels = np.stack([x, y, 0.5 + 0.3 * np.sin(6 * x)], -1).astype(np.float32)  # smooth, 32x48
    result = save_photo(pixels, tmp_path / f"x{suffix}")
    back = load_photo(result.path)
    assert back.format == result.path.suffix.upper().strip(".").replace("JPG", "JPEG").replace("TIF", "TIFF")
    assert back.pixels.shape == pixels.shape
    assert np.abs(back.pixels - pixels).mean() <= tolerance / 2 + 0.51 / 255
    assert np.abs(back.pixels - pixels).max() <= 5 * tolerance + 0.51 / 255
    assert "sRGB" in back.color_space  # an sRGB profile is embedded
    assert not list(tmp_path.glob(".nst-tmp-*"))


def test_jpeg_is_444_and_high_quality(tmp_path):
    pixels = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    out = Image.open(save_photo(pixels, tmp_path / "q.jpg").path)
    assert JpegImagePlugin.get_sampling(out) == 0  # 4:4:4
    assert max(out.quantization[0]) <= 16  # quality 95 tables (quality 75 has entries > 40)


def test_photo_module_does_not_import_torch():
    code = "import sys, nst_watch.photo; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
