"""Encoding stylised pixels with the source's metadata, atomically."""

from __future__ import annotations

import json
import logging
import os
import struct
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageCms, PngImagePlugin, TiffImagePlugin

from nst_watch.errors import PhotoError

from . import atomic, color, metadata
from .naming import escape_name, sidecar_path

log = logging.getLogger("nst_watch.photo")

SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
ICC_MODES = ("srgb", "keep")
_ENCODE_ERRORS = (ValueError, TypeError, KeyError, struct.error)
# Per-segment limits on metadata, by output format (None: the format has none
# that matters; PNG chunks, WebP chunks and TIFF tags hold up to 2-4 GB).
_EXIF_LIMIT = {"JPEG": metadata.JPEG_EXIF_MAX}
_XMP_LIMIT = {"JPEG": metadata.JPEG_XMP_MAX}
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
               collision: str = "suffix", sidecar: dict | None = None,
               temp: str | None = None) -> SaveResult | None:
    """Write float32 HxWx3 sRGB `pixels` to `dest`; None when skipped (collision="skip").

    `source` (the decoded Photo) supplies EXIF, XMP, the ICC profile for
    icc="keep", alpha and the bit depth to compare against. Metadata a format
    cannot hold (over 64 KB of EXIF or XMP in a JPEG) is trimmed, or dropped,
    and reported in SaveResult.notes; the image is written regardless.
    `sidecar` is written as UTF-8 JSON to ``<output name>.json``, file names
    in it escaped where they are not valid UTF-8. ValueError for invalid
    arguments; PhotoError for everything that can go wrong per photo.
    `temp` names the temp files (see atomic.write_atomic) for a caller that
    must find them again after being killed.
    """
    dest = Path(dest)
    fmt = _output_format(dest, format, bit_depth)
    _check_options(quality, bit_depth, icc, collision, sidecar)
    rgb = as_rgb(pixels)
    h, w = rgb.shape[:2]
    notes: list[str] = []
    warned: list[str] = []  # notes worth a log warning, logged once the final name is known
    if source is not None and source.bit_depth > bit_depth:
        warned.append(f"the 16-bit source was written as {bit_depth}-bit {fmt} "
                      "(ask for a 16-bit TIFF to keep full precision)")
    alpha = _alpha_for(source, w, h)
    if alpha is not None and fmt not in ALPHA_FORMATS:
        rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])
        alpha = None
        notes.append(f"transparency was flattened onto white ({fmt} has no alpha channel)")
    data, profile, profile_name = _output_color(rgb, source, icc, bit_depth, notes)
    if alpha is not None:
        data = np.dstack([data, quantise(alpha, bit_depth)])
    with warnings.catch_warnings(record=True) as caught:
        # Pillow warns about corrupt EXIF again as it re-parses it here; the
        # decoder already reported that on the Photo, so only log it.
        warnings.simplefilter("always")
        exif = metadata.output_exif(source.exif if source else None, w, h, strip_gps)
    for warning in caught:
        log.debug("%s: while reading the source EXIF: %s", dest, warning.message)
    xmp = metadata.output_xmp(source.xmp if source else None, w, h, strip_gps)
    exif, xmp = _fit_metadata(fmt, exif, xmp, notes, warned)
    write = partial(_encode, dest, fmt, data, profile, exif, xmp, quality)
    final = atomic.write_atomic(dest, write, collision, temp=temp)
    if final is None:
        return None
    for message in warned:
        log.warning("%s: %s", final, message)
    notes = warned + notes
    side = None
    if sidecar is not None:
        info = dict(file=final.name, format=fmt, width=w, height=h, bit_depth=bit_depth,
                    color_profile=profile_name, notes=notes)
        side = _write_sidecar(final, sidecar, info, temp=f"{temp}-json" if temp else None)
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


def _encode(dest, fmt, data, profile, exif, xmp, quality, f) -> None:
    """Write the image into the open temp file `f` (called by write_atomic)."""
    try:
        if fmt == "TIFF":
            _encode_tiff(f, data, profile, exif, xmp)
        else:
            _encode_pillow(f, fmt, data, profile, exif, xmp, quality)
    except _ENCODE_ERRORS as exc:
        raise PhotoError(dest, f"could not encode the stylised image as {fmt} ({type(exc).__name__}: {exc})",
                         atomic.ENCODE_FIX) from exc


def _fit_metadata(fmt: str, exif: metadata.OutputExif, xmp: bytes | None, notes: list[str],
                  warned: list[str]):
    """-> (EXIF for the encoder: OutputExif for TIFF, bytes or None otherwise; XMP bytes or None).

    Whatever cannot be carried is left out with a note in `warned` (the
    caller logs it), so metadata never costs the user the picture.
    """
    limit = _EXIF_LIMIT.get(fmt)
    dropped: list[str] = []
    if fmt == "TIFF":
        _check_tiff_ifds(exif, notes)
        out_exif = exif
    elif exif.ifd0 or exif.exif or exif.gps:
        try:
            out_exif, dropped = metadata.fit_exif(exif, limit)
        except Exception as exc:  # odd vendor values Pillow cannot re-serialise
            out_exif = None
            warned.append(f"the EXIF data could not be re-written and was dropped ({exc})")
    else:
        out_exif = None
    if dropped:
        warned.append(_trim_note("EXIF", fmt, limit, dropped))
    xmp, dropped = metadata.fit_xmp(xmp, _XMP_LIMIT.get(fmt))
    if dropped:
        warned.append(_trim_note("XMP", fmt, _XMP_LIMIT[fmt], dropped))
    return out_exif, xmp


def _trim_note(kind: str, fmt: str, limit: int, dropped: list[str]) -> str:
    """E.g. "the EXIF is too big for JPEG (at most 65533 bytes), so UserComment (100008 bytes) was dropped"."""
    head = f"the {kind} is too big for {fmt} (at most {limit} bytes), so "
    if dropped[-1] == f"all {kind}":
        tried = f" (dropping {', '.join(dropped[:-1])} was not enough)" if dropped[:-1] else ""
        return head + f"all of it was dropped{tried}"
    return head + f"{', '.join(dropped)} {'was' if len(dropped) == 1 else 'were'} dropped"



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


def _encode_tiff(f, data, profile, exif: metadata.OutputExif, xmp) -> None:
    """8- or 16-bit TIFF through tifffile (ZIP compressed), with EXIF.

    Pillow can only write the Exif IFD into an uncompressed TIFF and cannot
    hold 16-bit RGB at all, so tifffile writes every TIFF.
    """
    tags = [(code, "s", 0, value, True) for code, value in exif.ifd0.items()
            if code in metadata.IFD0_ASCII and isinstance(value, str) and value.isascii()]
    tags.append((metadata.ORIENTATION, "H", 1, 1, True))
    if xmp:
        tags.append((700, "B", len(xmp), xmp, True))
    subifds = {code: ifd for code, ifd in ((metadata.EXIF_IFD, exif.exif), (metadata.GPS_IFD, exif.gps)) if ifd}
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


def _check_tiff_ifds(exif: metadata.OutputExif, notes: list[str]) -> None:
    """Empty the Exif/GPS IFDs of `exif` that Pillow cannot serialise, with a note."""
    for code, name in ((metadata.EXIF_IFD, "exif"), (metadata.GPS_IFD, "gps")):
        values = getattr(exif, name)
        if not values:
            continue
        try:
            _ifd_bytes(code, values, 8)
        except Exception as exc:  # odd vendor values Pillow cannot re-serialise
            notes.append(f"EXIF IFD {code:#x} could not be re-written and was dropped ({exc})")
            setattr(exif, name, {})


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


def _write_sidecar(final: Path, payload: dict, info: dict, temp: str | None = None) -> Path:
    """`<output name>.json` beside the output; on failure the output is removed too."""
    path = sidecar_path(final)
    text = json.dumps(_jsonable({**payload, "output": info}), indent=2, ensure_ascii=False) + "\n"
    try:
        atomic.write_atomic(path, lambda f: f.write(text.encode("utf-8")), "overwrite", temp=temp)
    except PhotoError:
        try:
            os.unlink(final)
        except OSError:
            pass
        raise
    return path


def _jsonable(value):
    """`value` with every string valid UTF-8 (and anything else JSON cannot hold as its str()).

    File names from os.fsdecode carry undecodable bytes as lone surrogates,
    which json.dumps would pass on into text that cannot be encoded; they
    become ``\\xNN``. Control characters need nothing: JSON escapes them.
    """
    if isinstance(value, dict):
        return {_jsonable(str(k) if not isinstance(k, str) else k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return escape_name(value if isinstance(value, str) else str(value), controls=False)
