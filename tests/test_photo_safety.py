"""Hostile and broken inputs: each is refused quickly with its own clear reason."""

from __future__ import annotations

import io
import os
import signal
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from nst_watch.errors import PhotoError
from nst_watch.photo import load_photo, save_photo


@pytest.fixture(autouse=True)
def no_hang():
    """Fail (instead of hanging the suite) if any check blocks, e.g. on a FIFO."""
    def timeout(*_):
        raise TimeoutError("load_photo hung")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def reason(path, **kwargs) -> PhotoError:
    with pytest.raises(PhotoError) as info:
        load_photo(path, **kwargs)
    return info.value


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR declaring width x height, with a tiny IDAT."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg(path, size=(64, 64)):
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    return path


def test_huge_png_header_rejected_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(60000, 60000))
    err = reason(path)
    assert "60000x60000" in err.reason and "100000000" in err.reason and "max_pixels" in err.fix
    assert err.permanent


def test_pixel_limit_checked_from_header_without_decoding(tmp_path, monkeypatch):
    path = jpeg(tmp_path / "small.jpg", (32, 32))

    def no_decoding(self):
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    err = reason(path, max_pixels=1000)
    assert "32x32" in err.reason and "1000 pixels" in err.reason and "max_pixels" in err.fix


def test_decompression_bomb_warning_is_an_error(tmp_path, monkeypatch):
    path = jpeg(tmp_path / "big.jpg", (40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns above this
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        err = reason(path, max_pixels=500)
    assert "500 pixels" in err.reason and "max_pixels" in err.fix


def test_truncated_jpeg(tmp_path):
    whole = jpeg(tmp_path / "whole.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[: len(whole) * 6 // 10])
    assert "truncated or corrupt" in reason(path).reason


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("just some text, not a photo\n" * 3)
    assert "not a JPEG/PNG/TIFF/WebP image" in reason(path).reason


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    assert "empty file" in reason(path).reason


def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    assert "not a regular file (a FIFO" in reason(path).reason


def test_directory_is_refused(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    assert "not a regular file (a directory)" in reason(tmp_path / "dir.jpg").reason


def test_symlink_is_not_followed(tmp_path):
    target = jpeg(tmp_path / "real.jpg")
    link = tmp_path / "link.jpg"
    link.symlink_to(target)
    assert "is a symbolic link; nst-watch does not follow links" in reason(link).reason


def _unsupported(tmp_path, kind: str):
    path = tmp_path / f"pic.{kind.lower()}"
    if kind == "PSD":  # Pillow cannot write PSD; the signature and version are what is sniffed
        path.write_bytes(b"8BPS\x00\x01" + b"\x00" * 64)
    else:
        Image.new("P" if kind == "GIF" else "RGB", (8, 8)).save(path, kind)
    return path


@pytest.mark.parametrize("kind", ["GIF", "BMP", "PSD"])
def test_unsupported_formats_say_what_to_convert_to(tmp_path, kind):
    # There is no setting that admits these formats, so no message may suggest one.
    error = reason(_unsupported(tmp_path, kind))
    assert error.reason == f"{kind} images are not supported"
    assert error.fix.startswith("convert it to JPEG, PNG, TIFF") and "WebP" in error.fix
    assert "config" not in str(error) and "allow" not in str(error)
    assert str(error).startswith(str(tmp_path / f"pic.{kind.lower()}"))


def test_format_outside_a_callers_allow_list(tmp_path):
    png = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(png)
    error = reason(png, formats=("jpg",))
    assert error.reason == "PNG images are not accepted here (only JPEG)"
    assert error.fix == "convert it to JPEG" and "config" not in str(error)


def test_a_raw_name_on_content_libraw_cannot_read_is_refused(tmp_path):
    path = tmp_path / "DSC_0001.NEF"
    path.write_bytes(b"II*\x00" + b"\0" * 64)  # RAW files are TIFF-like: the suffix sends it to LibRaw
    error = reason(path)
    assert "LibRaw cannot read this camera RAW file" in error.reason and error.permanent


def test_every_refusal_has_its_own_message(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(png_header_only(60000, 60000))
    whole = jpeg(tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "empty.jpg").touch()
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "whole.jpg")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "BMP")
    (tmp_path / "pic.bmp").write_bytes(buf.getvalue())
    names = ["bomb.png", "cut.jpg", "text.jpg", "empty.jpg", "fifo.jpg", "link.jpg", "pic.bmp"]
    reasons = [reason(tmp_path / n).reason.split("(")[0] for n in names]
    assert len(set(reasons)) == len(names), reasons


def test_unreadable_icc_profile_is_noted_not_fatal(tmp_path):
    path = tmp_path / "bad-icc.jpg"
    Image.new("RGB", (8, 8), "red").save(path, icc_profile=b"not really a profile" * 10)
    photo = load_photo(path)
    assert photo.color_space == "sRGB" and any("unreadable" in n for n in photo.notes)


# --- decoder warnings (issue 11, item 2) --------------------------------------------


def with_segment(jpg: bytes, marker: bytes, payload: bytes) -> bytes:
    """`jpg` with one more marker segment right after SOI."""
    return jpg[:2] + marker + struct.pack(">H", len(payload) + 2) + payload + jpg[2:]


def corrupt_exif() -> bytes:
    """A TIFF blob whose one tag (Make, 40 bytes) points far past its end."""
    return (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
            + struct.pack("<HHII", 0x010F, 2, 40, 5000) + struct.pack("<I", 0))


def warning_source(tmp_path, kind: str):
    if kind == "png-corrupt-exif":  # eXIf chunk: Pillow warns while parsing it
        def chunk(tag, body):
            return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

        buf = io.BytesIO()
        Image.new("RGB", (32, 32), "red").save(buf, "PNG")
        png = buf.getvalue()
        path = tmp_path / "exif.png"
        path.write_bytes(png[:33] + chunk(b"eXIf", corrupt_exif()) + png[33:])  # after IHDR
        return path
    jpg = jpeg(tmp_path / "plain.jpg", (32, 32)).read_bytes()
    if kind == "jpeg-corrupt-exif":
        data = with_segment(jpg, b"\xff\xe1", b"Exif\x00\x00" + corrupt_exif())
    else:  # an MPF (multi-picture) segment whose TIFF header is garbage
        data = with_segment(jpg, b"\xff\xe2", b"MPF\x00" + b"XX*\x00\x08\x00\x00\x00")
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind, words", [
    ("jpeg-corrupt-exif", "Tag data larger than file"),
    ("png-corrupt-exif", "Tag data larger than file"),
    ("malformed-mpo", "malformed MPO file"),
])
def test_decoder_warnings_become_notes_and_log_records(tmp_path, caplog, kind, words):
    path = warning_source(tmp_path, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping to the warnings module fails the test
        photo = load_photo(path)
        # Saving re-reads the source EXIF; that must not print the warning again either.
        save_photo(photo.pixels, tmp_path / "out.jpg", source=photo)
    assert photo.pixels.shape == (32, 32, 3)
    assert sum(n.startswith("the decoder warned: ") and words in n for n in photo.notes) == 1
    records = [r for r in caplog.records if r.name == "nst_watch.photo" and words in r.getMessage()]
    assert records and all(str(path) in r.getMessage() and r.levelname == "WARNING" for r in records)
