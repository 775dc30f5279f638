"""Encoding stylised pixels with the source's metadata, atomically."""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageCms, PngImagePlugin, TiffImagePlugin

from nst_watch.errors import PhotoError

from . import atomic, color, metadata
from .naming import cap_name

log = logging.getLogger("nst_watch.photo")

SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
ICC_MODES = ("srgb", "keep")
_ENCODE_ERRORS = (ValueError, TypeError, KeyError, struct.error)
# tifffile refuses to write the Exif/GPS IFD pointer tags, so they are written
# under a neighbouring private code (same sort position) and renamed after.
_PLACEHOLDER = {metadata.EXIF_IFD: 34664, metadata.GPS_IFD: 34852}


@dataclass(frozen=True)
class SaveResult:
    """Where the output went and what is worth reporting about it."""

    path: Path
    notes: list[str]
    sidecar: Path | None = None


def save_photo(pixels, dest, *, source=None, format: str | None = None, quality: int = 95,
               bit_depth: int = 8, icc: str = "srgb", strip_gps: bool = False,
               collision: str = "suffix", sidecar: dict | None = None) -> SaveResult | None:
    """Write float32 HxWx3 sRGB `pixels` to `dest`; None when skipped (collision="skip").

    `source` (the decoded Photo) supplies EXIF, XMP, the ICC profile for
    icc="keep", alpha and the bit depth to compare against. ValueError for
    invalid arguments; PhotoError for everything that can go wrong per photo.
    """
    dest = Path(dest)
    fmt = _output_format(dest, format, bit_depth)
    _check_options(quality, bit_depth, icc, collision, sidecar)
    rgb = as_rgb(pixels)
    h, w = rgb.shape[:2]
    notes: list[str] = []
    if source is not None and source.bit_depth > bit_depth:
        msg = f"the 16-bit source was written as {bit_depth}-bit {fmt} (ask for a 16-bit TIFF to keep full precision)"
        log.warning("%s: %s", dest, msg)
        notes.append(msg)
    alpha = _alpha_for(source, w, h)
    if alpha is not None and fmt not in ALPHA_FORMATS:
        rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])
        alpha = None
        notes.append(f"transparency was flattened onto white ({fmt} has no alpha channel)")
    data, profile, profile_name = _output_color(rgb, source, icc, bit_depth, notes)
    if alpha is not None:
        data = np.dstack([data, quantise(alpha, bit_depth)])
    exif = metadata.output_exif(source.exif if source else None, w, h, strip_gps)
    xmp = metadata.output_xmp(source.xmp if source else None, w, h, strip_gps)
    write = partial(_encode, dest, fmt, data, profile, exif, xmp, quality, notes)
    final = atomic.write_atomic(dest, write, collision)
    if final is None:
        return None
    side = None
    if sidecar is not None:
        info = dict(file=final.name, format=fmt, width=w, height=h, bit_depth=bit_depth,
                    color_profile=profile_name, notes=notes)
        side = _write_sidecar(final, sidecar, info)
    return SaveResult(final, notes, side)


def _output_format(dest: Path, fmt: str | None, bit_depth: int) -> str:
    if fmt is None:
        fmt = SUFFIX_FORMATS.get(dest.suffix.lower())
        if fmt is None:
            raise PhotoError(dest, f"cannot tell the output format from the suffix {dest.suffix!r}",
                             "end the output name with .jpg, .png, .webp or .tif")
    fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt.upper(), fmt.upper())
    if fmt not in ("JPEG", "PNG", "WEBP", "TIFF"):
        raise PhotoError(dest, f"cannot write {fmt} files", "use JPEG, PNG, WebP or TIFF")
    if bit_depth == 16 and fmt != "TIFF":
        raise PhotoError(dest, f"16-bit output is only available as TIFF, not {fmt}",
                         "use a .tif output name or bit_depth 8")
    return fmt


def _check_options(quality, bit_depth, icc, collision, sidecar) -> None:
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be 1-100, not {quality}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, not {bit_depth}")
    if icc not in ICC_MODES:
        raise ValueError(f"icc must be one of {ICC_MODES}, not {icc!r}")
    if collision not in atomic.COLLISIONS:
        raise ValueError(f"collision must be one of {atomic.COLLISIONS}, not {collision!r}")
    if sidecar is not None:
        json.dumps(sidecar, default=str)  # fail before writing anything


def as_rgb(pixels) -> np.ndarray:
    """float32 HxWx3 in [0, 1] from float or uint8/uint16 input."""
    arr = np.asarray(pixels)
    if arr.ndim != 3 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ValueError(f"pixels must be an HxWx3 array, not shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)


def quantise(values: np.ndarray, bit_depth: int) -> np.ndarray:
    top, dtype = (255, np.uint8) if bit_depth == 8 else (65535, np.uint16)
    return (np.clip(values, 0.0, 1.0) * top + 0.5).astype(dtype)


def _alpha_for(source, w: int, h: int) -> np.ndarray | None:
    """The source's alpha, resized to the output if stylisation changed the size."""
    if source is None or source.alpha is None:
        return None
    alpha = source.alpha
    if alpha.shape != (h, w):
        im = Image.fromarray(np.ascontiguousarray(alpha, dtype=np.float32))  # mode "F"
        alpha = np.asarray(im.resize((w, h), Image.Resampling.LANCZOS))
    return np.clip(alpha, 0.0, 1.0)


def _output_color(rgb, source, icc, bit_depth, notes):
    """-> (uint8/uint16 HxWx3 in the output space, ICC bytes to embed, profile name)."""
    srgb = (quantise(rgb, bit_depth), color.srgb_bytes(), "sRGB")
    if icc == "srgb" or source is None or not source.icc_profile:
        return srgb
    profile = color.open_profile(source.icc_profile)
    if profile is None:
        notes.append("icc='keep': the source profile is unreadable, so sRGB was embedded")
        return srgb
    name = color.describe(profile)
    if color.is_srgb(profile):
        return quantise(rgb, bit_depth), source.icc_profile, name
    if color.space_of(profile) != "RGB":
        notes.append(f"icc='keep' cannot re-create a {color.space_of(profile)} file, so sRGB was embedded")
        return srgb
    if bit_depth == 16:
        shaper = color.Shaper.parse(source.icc_profile)
        if shaper is None:
            notes.append(f"icc='keep': no 16-bit conversion to {name}, so sRGB was embedded")
            return srgb
        data = quantise(color.srgb_to_shaper(rgb, shaper), 16)
    else:
        try:
            data = np.asarray(color.from_srgb_image(Image.fromarray(quantise(rgb, 8)), profile))
        except ImageCms.PyCMSError as exc:
            notes.append(f"icc='keep': could not convert to {name} ({exc}), so sRGB was embedded")
            return srgb
    notes.append(f"converted back to {name}, which is embedded")
    return data, source.icc_profile, name


# --- encoders -------------------------------------------------------------------


def _encode(dest, fmt, data, profile, exif, xmp, quality, notes, f) -> None:
    """Write the image into the open temp file `f` (called by write_atomic)."""
    try:
        if fmt == "TIFF":
            _encode_tiff(f, data, profile, exif, xmp, notes)
        else:
            _encode_pillow(f, fmt, data, profile, _exif_bytes(exif, notes), xmp, quality)
    except _ENCODE_ERRORS as exc:
        raise PhotoError(dest, f"could not encode the image as {fmt}: {exc}") from exc


def _exif_bytes(exif: metadata.OutputExif, notes: list[str]) -> bytes | None:
    if not (exif.ifd0 or exif.exif or exif.gps):
        return None
    try:
        return exif.to_bytes()
    except Exception as exc:  # odd vendor values Pillow cannot re-serialise
        notes.append(f"the EXIF data could not be re-written and was dropped ({exc})")
        return None


def _encode_pillow(f, fmt, data, profile, exif_bytes, xmp, quality) -> None:
    """JPEG (4:4:4), PNG, WebP through Pillow, which drops metadata unless told."""
    options: dict = {"icc_profile": profile}
    if exif_bytes:
        options["exif"] = exif_bytes
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = int(quality)
        if xmp:
            options["xmp"] = xmp
    if fmt == "JPEG":
        options["subsampling"] = 0  # 4:4:4: stylised edges are all chroma detail
    if fmt == "PNG" and xmp:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
        options["pnginfo"] = info
    Image.fromarray(data).save(f, fmt, **options)


def _encode_tiff(f, data, profile, exif: metadata.OutputExif, xmp, notes) -> None:
    """8- or 16-bit TIFF through tifffile (ZIP compressed), with EXIF.

    Pillow can only write the Exif IFD into an uncompressed TIFF and cannot
    hold 16-bit RGB at all, so tifffile writes every TIFF.
    """
    tags = [(code, "s", 0, value, True) for code, value in exif.ifd0.items()
            if code in metadata.IFD0_ASCII and isinstance(value, str) and value.isascii()]
    tags.append((metadata.ORIENTATION, "H", 1, 1, True))
    if xmp:
        tags.append((700, "B", len(xmp), xmp, True))
    subifds = {code: ifd for code, ifd in ((metadata.EXIF_IFD, exif.exif), (metadata.GPS_IFD, exif.gps))
               if ifd and _serialisable(code, ifd, notes)}
    tags += [(_PLACEHOLDER[code], "I", 1, 0, True) for code in subifds]
    options = _tiff_resolution(exif.ifd0)
    tifffile.imwrite(f, data, photometric="rgb", extrasamples=("unassalpha",) if data.shape[-1] == 4 else None,
                     compression="zlib", predictor=True, iccprofile=profile, metadata=None, software=False,
                     extratags=tags, **options)
    if subifds:
        _append_subifds(f, subifds)


def _tiff_resolution(ifd0: dict) -> dict:
    x, y = ifd0.get(0x011A), ifd0.get(0x011B)
    try:
        return {"resolution": (float(x), float(y)), "resolutionunit": int(ifd0.get(0x0128, 2))}
    except (TypeError, ValueError, ZeroDivisionError):
        return {}


def _ifd_bytes(code: int, values: dict, start: int, order: str = "<") -> bytes:
    """An Exif/GPS IFD serialised by Pillow as if placed at file offset `start`."""
    header = (b"II*\x00" if order == "<" else b"MM\x00*") + b"\x08\x00\x00\x00"
    ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=header, group=code)
    for tag, value in values.items():
        ifd[tag] = value
    return ifd.tobytes(start)


def _serialisable(code: int, values: dict, notes: list[str]) -> bool:
    try:
        _ifd_bytes(code, values, 8)
    except Exception as exc:  # odd vendor values Pillow cannot re-serialise
        notes.append(f"EXIF IFD {code:#x} could not be re-written and was dropped ({exc})")
        return False
    return True


def _append_subifds(f, subifds: dict[int, dict]) -> None:
    """Append Exif/GPS IFDs and point IFD0's placeholder entries at them."""
    f.flush()
    f.seek(0)
    with tifffile.TiffFile(f) as tif:
        order = tif.byteorder
        entries = {code: tif.pages[0].tags[_PLACEHOLDER[code]].offset for code in subifds}
    for code, values in subifds.items():
        start = f.seek(0, os.SEEK_END)
        if start % 2:  # IFDs start on a word boundary
            start += f.write(b"\x00")
        f.write(_ifd_bytes(code, values, start, order))
        f.seek(entries[code])
        f.write(struct.pack(order + "HHII", code, 4, 1, start))  # tag, LONG, count 1, offset


def _write_sidecar(final: Path, payload: dict, info: dict) -> Path:
    """`<output name>.json` beside the output; on failure the output is removed too."""
    path = final.with_name(cap_name(final.name + ".json"))
    text = json.dumps({**payload, "output": info}, indent=2, ensure_ascii=False, default=str) + "\n"
    try:
        atomic.write_atomic(path, lambda f: f.write(text.encode("utf-8")), "overwrite")
    except PhotoError:
        try:
            os.unlink(final)
        except OSError:
            pass
        raise
    return path
