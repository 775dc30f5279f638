"""Metadata bigger than an output format allows (issue 11, item 1).

A JPEG holds EXIF and XMP in one marker segment each (65535 bytes with the
header); PNG, WebP and TIFF hold far more. Big source metadata must never cost
the picture: JPEG output trims the bulky parts (or drops the block) with a
note, the other formats keep everything. Every source file is built here.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, PngImagePlugin
from PIL.TiffImagePlugin import IFDRational

from nst_watch.errors import PhotoError
from nst_watch.photo import load_photo, save_photo
from nst_watch.photo import metadata
from test_photo_io import ADOBE_RGB, icc_profile  # the tests' hand-built ICC profiles

EXIF_IFD, USER_COMMENT, MAKER_NOTE = 0x8769, 0x9286, 0x927C
SIZE = (48, 32)


def pixels(w=SIZE[0], h=SIZE[1]) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / w, y / h, 0.5 + 0.4 * np.sin(x / 5 + y / 7)], -1).astype(np.float32)


def image() -> Image.Image:
    return Image.fromarray((pixels() * 255).astype(np.uint8))


def camera_exif(user_comment: int = 0, maker_note: int = 0, extra: dict | None = None) -> Image.Exif:
    """Camera, lens, exposure and date tags, plus optional bulky UserComment/MakerNote and `extra` tags."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "QA-Cam", "Model 7"
    ifd = {0x829A: IFDRational(1, 250), 0x829D: IFDRational(28, 10), 0x8827: 200,
           0x9003: "2024:05:06 07:08:09", 0xA434: "QA 35mm F1.4"}
    if user_comment:
        ifd[USER_COMMENT] = b"ASCII\x00\x00\x00" + b"x" * user_comment
    if maker_note:
        ifd[MAKER_NOTE] = b"QA\x00" + b"m" * (maker_note - 3)
    exif[EXIF_IFD] = {**ifd, **(extra or {})}
    return exif


def assert_camera_kept(exif: Image.Exif) -> None:
    ifd = exif.get_ifd(EXIF_IFD)
    assert (exif[0x010F], exif[0x0110]) == ("QA-Cam", "Model 7")
    assert ifd[0x9003] == "2024:05:06 07:08:09" and ifd[0xA434] == "QA 35mm F1.4"
    assert float(ifd[0x829A]) == pytest.approx(1 / 250) and float(ifd[0x829D]) == pytest.approx(2.8)
    assert ifd[0x8827] == 200


def xmp_packet(ancestors: int, fill: str = "", padding: int = 0) -> bytes:
    """A Photoshop-style packet: PixelXDimension=1, DocumentAncestors bloat, a title, padding."""
    items = "".join(f"<rdf:li>xmp.did:{i:032x}</rdf:li>" for i in range(ancestors))
    return ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
            'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" exif:PixelXDimension="1" photoshop:City="Lyon">'
            f'<dc:title>Harbour{fill}</dc:title>'
            f'<photoshop:DocumentAncestors><rdf:Bag>{items}</rdf:Bag></photoshop:DocumentAncestors>'
            '</rdf:Description></rdf:RDF></x:xmpmeta>' + " " * padding + '<?xpacket end="w"?>').encode()


def jpeg_xmp_at_limit(padding: bool) -> bytes:
    """A packet exactly as long as a JPEG holds, filled up with title text or with whitespace padding."""
    extra = metadata.JPEG_XMP_MAX - len(xmp_packet(1000))
    packet = xmp_packet(1000, padding=extra) if padding else xmp_packet(1000, fill="t" * extra)
    assert len(packet) == metadata.JPEG_XMP_MAX
    return packet


# --- sources --------------------------------------------------------------------


def png_with(path: Path, exif: Image.Exif | None = None, xmp: bytes | None = None) -> Path:
    info = PngImagePlugin.PngInfo()
    if xmp:
        info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    image().save(path, pnginfo=info, **({"exif": exif.tobytes()} if exif else {}))
    return path


def source_file(tmp_path: Path, kind: str) -> Path:
    """The source named `kind`: <format>-<what>."""
    big_exif, big_xmp = camera_exif(user_comment=100_000), xmp_packet(2500)
    if kind == "png-exif":
        return png_with(tmp_path / "src.png", exif=big_exif)
    if kind == "png-xmp":
        return png_with(tmp_path / "src.png", xmp=big_xmp)
    if kind == "webp-exif":
        image().save(tmp_path / "src.webp", lossless=True, exif=big_exif.tobytes())
        return tmp_path / "src.webp"
    if kind == "tiff-exif":  # written by nst-watch itself (a TIFF keeps the whole EXIF; see below)
        photo = load_photo(png_with(tmp_path / "first.png", exif=big_exif))
        return save_photo(photo.pixels, tmp_path / "src.tif", source=photo).path
    if kind == "tiff-xmp":
        arr = (pixels() * 255).astype(np.uint8)
        tifffile.imwrite(tmp_path / "src.tif", arr, photometric="rgb",
                         extratags=[(700, "B", len(big_xmp), big_xmp, True)])
        return tmp_path / "src.tif"
    if kind == "jpeg-exif":  # fits a JPEG as shot; the output's new tags push it over the limit
        probe = len(camera_exif(maker_note=1000).tobytes())
        exif = camera_exif(maker_note=1000 + metadata.JPEG_EXIF_MAX - 8 - probe)
        assert metadata.JPEG_EXIF_MAX - 8 <= len(exif.tobytes()) <= metadata.JPEG_EXIF_MAX
        image().save(tmp_path / "src.jpg", exif=exif.tobytes(), quality=95)
        return tmp_path / "src.jpg"
    if kind == "jpeg-xmp":  # exactly at the limit; PixelXDimension 1 -> 48 makes it one byte longer
        image().save(tmp_path / "src.jpg", xmp=jpeg_xmp_at_limit(padding=False), quality=95)
        return tmp_path / "src.jpg"
    raise AssertionError(kind)


EXIF_SOURCES = ["png-exif", "webp-exif", "tiff-exif", "jpeg-exif"]
XMP_SOURCES = ["png-xmp", "tiff-xmp", "jpeg-xmp"]


@pytest.mark.parametrize("kind", EXIF_SOURCES)
def test_oversized_exif_is_trimmed_for_jpeg_keeping_camera_tags(tmp_path, kind):
    photo = load_photo(source_file(tmp_path, kind))
    bulky = "MakerNote" if kind == "jpeg-exif" else "UserComment"
    result = save_photo(photo.pixels, tmp_path / "out.jpg", source=photo, sidecar={})
    out = Image.open(result.path)
    assert_camera_kept(out.getexif())
    assert out.getexif().get_ifd(EXIF_IFD).keys().isdisjoint({USER_COMMENT, MAKER_NOTE})
    [note] = [n for n in result.notes if "EXIF" in n]
    assert note.startswith("the EXIF is too big for JPEG") and f"{bulky} (" in note and "dropped" in note
    assert json.loads(result.sidecar.read_text())["output"]["notes"] == result.notes


@pytest.mark.parametrize("kind", XMP_SOURCES)
def test_oversized_xmp_is_trimmed_for_jpeg_keeping_the_rest(tmp_path, kind):
    photo = load_photo(source_file(tmp_path, kind))
    result = save_photo(photo.pixels, tmp_path / "out.jpg", source=photo)
    xmp = Image.open(result.path).info["xmp"]
    assert b"DocumentAncestors" not in xmp
    assert b'photoshop:City="Lyon"' in xmp and b"<dc:title>Harbour" in xmp
    assert b'exif:PixelXDimension="48"' in xmp  # still brought up to date
    [note] = [n for n in result.notes if "XMP" in n]
    assert note.startswith("the XMP is too big for JPEG") and "photoshop:DocumentAncestors" in note


def test_trim_warning_names_the_file_actually_written(tmp_path, caplog):
    # With collision="suffix" the second output is "out (1).jpg": the log must say so.
    photo = load_photo(source_file(tmp_path, "png-xmp"))
    save_photo(photo.pixels, tmp_path / "out.jpg", source=photo)
    caplog.clear()
    with caplog.at_level("WARNING", logger="nst_watch.photo"):
        result = save_photo(photo.pixels, tmp_path / "out.jpg", source=photo)
    assert result.path.name == "out (1).jpg"
    [record] = [r for r in caplog.records if "XMP is too big" in r.getMessage()]
    assert record.getMessage().startswith(f"{result.path}: ")


def test_xmp_padding_is_dropped_silently_before_anything_else(tmp_path):
    # Whitespace padding carries nothing: shedding it must not cost a property or a note.
    path = tmp_path / "padded.jpg"
    image().save(path, xmp=jpeg_xmp_at_limit(padding=True))
    photo = load_photo(path)
    result = save_photo(photo.pixels, tmp_path / "out.jpg", source=photo)
    assert b"DocumentAncestors" in Image.open(result.path).info["xmp"]
    assert result.notes == []


def test_exif_still_too_big_after_trimming_is_dropped_whole(tmp_path):
    # 1200 small tags: none is bulky enough to trim, together they overflow the segment.
    exif = camera_exif(extra={0xC000 + i: f"v{i:058d}" for i in range(1200)})
    photo = load_photo(png_with(tmp_path / "many.png", exif=exif))
    result = save_photo(photo.pixels, tmp_path / "out.jpg", source=photo)
    assert not Image.open(result.path).getexif()
    assert any(n.startswith("the EXIF is too big for JPEG") and "all of it was dropped" in n for n in result.notes)


def test_xmp_still_too_big_after_trimming_is_dropped_whole(tmp_path):
    xmp = xmp_packet(10, fill="t" * 80_000)  # a huge title: not ours to cut
    photo = load_photo(png_with(tmp_path / "title.png", xmp=xmp))
    result = save_photo(photo.pixels, tmp_path / "out.jpg", source=photo)
    assert "xmp" not in Image.open(result.path).info
    [note] = [n for n in result.notes if "XMP" in n]
    assert "all of it was dropped" in note and "photoshop:DocumentAncestors" in note  # tried that first


def read_back(path: Path) -> tuple[Image.Exif, bytes]:
    im = Image.open(path)
    if path.suffix == ".tif":
        with tifffile.TiffFile(path) as tif:
            return im.getexif(), bytes(tif.pages[0].tags[700].value)
    return im.getexif(), (im.info.get("xmp") or im.info["XML:com.adobe.xmp"].encode())


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_formats_without_the_limit_keep_big_metadata(tmp_path, suffix):
    src = png_with(tmp_path / "big.png", exif=camera_exif(user_comment=100_000), xmp=xmp_packet(2500))
    photo = load_photo(src)
    result = save_photo(photo.pixels, tmp_path / f"out{suffix}", source=photo)
    assert result.notes == []
    exif, xmp = read_back(result.path)
    assert_camera_kept(exif)
    assert len(exif.get_ifd(EXIF_IFD)[USER_COMMENT]) == 100_008
    assert xmp.count(b"<rdf:li>") == 2500 and len(xmp) > 140_000


def big_icc() -> bytes:
    """The Adobe-RGB-like test profile plus a 100 KB private tag: two JPEG APP2 segments."""
    (count,) = struct.unpack(">I", ADOBE_RGB[128:132])
    table = [struct.unpack(">4sII", ADOBE_RGB[132 + 12 * i:144 + 12 * i]) for i in range(count)]
    tags = {sig: ADOBE_RGB[offset:offset + size] for sig, offset, size in table
            if sig not in (b"desc", b"wtpt", b"cprt")}  # the builder adds these three itself
    tags[b"zzzz"] = b"data" + bytes(100_004)  # private tags are ignored by colour engines
    return icc_profile(b"RGB ", b"XYZ ", b"mntr", "Adobe RGB (1998) test", tags)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_icc_profile_over_64k_is_kept(tmp_path, suffix):
    profile = big_icc()
    assert len(profile) > 65_535
    src = tmp_path / "wide.png"
    image().save(src, icc_profile=profile)
    photo = load_photo(src)
    assert photo.color_space == "Adobe RGB (1998) test"
    result = save_photo(photo.pixels, tmp_path / f"out{suffix}", source=photo, icc="keep")
    assert any("converted back to Adobe RGB" in n for n in result.notes)
    if suffix == ".tif":
        with tifffile.TiffFile(result.path) as tif:
            embedded = bytes(tif.pages[0].tags[34675].value)
    else:
        embedded = Image.open(result.path).info["icc_profile"]
    assert embedded == profile


@pytest.mark.parametrize("error", [ValueError("boom"), OSError("encoder error -2")])
def test_encoder_failure_names_its_cause_and_a_way_out(tmp_path, monkeypatch, error):
    # Good pixels that an encoder rejects: our bug. The message must not send the
    # user looking for a cause in the photo; it must say what else to do.
    def failing_save(self, fp, format=None, **params):
        raise error

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(PhotoError) as info:
        save_photo(pixels(), tmp_path / "x.jpg")
    text = str(info.value)
    assert str(error) in text and "the photo itself is fine" in text and "format" in text
    assert "cause above" not in text
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cli_writes_jpegs_for_oversized_metadata(tmp_path):
    """The field report end to end: three photos, three JPEGs, exit 0, notes in --json."""
    png_with(tmp_path / "exif100k.png", exif=camera_exif(user_comment=100_000))
    png_with(tmp_path / "xmp_big.png", xmp=xmp_packet(2500))
    source_file(tmp_path, "tiff-xmp").rename(tmp_path / "xmp_big.tif")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "style.png")
    run = subprocess.run([sys.executable, "-m", "nst_watch", "stylize", "exif100k.png", "xmp_big.png", "xmp_big.tif",
                          "--style", "style.png", "--out-dir", "out", "--weights", "random", "--size", "32",
                          "--iterations", "2", "--json"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TORCH_HOME": str(tmp_path / "torch")})
    assert run.returncode == 0, run.stderr
    records = json.loads(run.stdout)
    assert [r["error"] for r in records] == [None] * 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "exif100k-custom.jpg", "xmp_big-custom (1).jpg", "xmp_big-custom.jpg"]
    for record, kind in zip(records, ["EXIF", "XMP", "XMP"]):
        assert Image.open(record["output"]).format == "JPEG"
        assert any(n.startswith(f"the {kind} is too big for JPEG") for n in record["notes"]), record
