"""Decoding untrusted photos into upright sRGB float32 pixels.

The order of checks is the point: lstat before open (a FIFO would block, a
symlink could point anywhere), magic bytes before Pillow (clear messages and a
format allow-list), header dimensions before any pixel is decoded, and the
full decode inside error handling (Pillow opens lazily, so a truncated file
only fails at load()). Warnings Pillow raises meanwhile ("Possibly corrupt
EXIF data", "malformed MPO file"...) become notes on the Photo and log lines
naming the file, never raw stderr output.

Formats: JPEG, PNG, TIFF and WebP through Pillow (16-bit TIFF through
tifffile); HEIC/HEIF through pillow-heif, whose libheif applies the
container's rotation and mirroring and resets the EXIF orientation to 1, so
the picture is turned upright exactly once (10- and 12-bit HEIC keep their
precision: bit_depth 16); camera RAW (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2
and the rest of LibRaw's list) through rawpy. A RAW is recognised by content
(DNGVersion tag, the ORF/RW2/CR3/RAF/CR2 signatures) or, for the TIFF-like
and unknown content most RAW formats have, by its suffix; when LibRaw then
says "not a RAW file" and the content is an ordinary TIFF (no RAW marks), it
is read as that TIFF, with a note. Its bytes are read
once from the checked descriptor, hashed, and handed to LibRaw from memory;
its pixel count is checked from LibRaw's header parse before anything is
demosaiced. It is developed with the camera's white balance into 16-bit sRGB
(no auto-brightening: the camera's exposure, the same for every frame of a
shoot), turned upright by LibRaw from the camera's orientation, and its
camera, lens, exposure and date become an EXIF block like a JPEG's. What
LibRaw prints on stderr while it reads the file is captured and becomes part
of the error, or a note and a log line naming the photo.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import stat
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageCms, ImageOps, TiffImagePlugin

from nst_watch.errors import PhotoError

from . import color, metadata

log = logging.getLogger("nst_watch.photo")

# pillow-heif and rawpy are dependencies; a missing one (a hand-made
# environment) only costs its formats, with a PhotoError saying what to install.
try:
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:
    pillow_heif = None
    HEIF_AVAILABLE = False
try:
    import rawpy

    RAW_AVAILABLE = True
except ImportError:
    rawpy = None
    RAW_AVAILABLE = False

BASE_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP")
KNOWN_FORMATS = BASE_FORMATS + ("HEIF", "RAW")  # what load_photo can decode with every dependency installed
DEFAULT_FORMATS = BASE_FORMATS + (("HEIF",) if HEIF_AVAILABLE else ()) + (("RAW",) if RAW_AVAILABLE else ())
_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF"}
_RAW_SUFFIXES = {".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".iiq", ".k25", ".kdc",
                 ".mef", ".mos", ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".raw", ".rw2", ".rwl",
                 ".sr2", ".srf", ".srw", ".x3f"}
# RAW formats whose first bytes say so: Olympus ORF, Panasonic RW2 (TIFF with
# their own magic numbers) and Fujifilm RAF. CR3 is an ISO-BMFF "crx " file.
_RAW_SIGNATURES = (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00", b"FUJIFILMCCD-RAW")
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error, zlib.error)
_FILE_KINDS = [(stat.S_ISFIFO, "a FIFO/named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")]


@dataclass
class Photo:
    """A decoded photo: upright sRGB pixels plus what is needed to write it back."""

    path: Path
    pixels: np.ndarray  # float32 HxWx3, sRGB, [0, 1], upright
    alpha: np.ndarray | None  # float32 HxW in [0, 1], or None
    bit_depth: int  # 8 or 16 per channel, of the source (16 for RAW and 10/12-bit HEIF)
    format: str  # "JPEG", "PNG", "TIFF", "WEBP", "HEIF" or "RAW" (any camera RAW LibRaw reads)
    icc_profile: bytes | None  # the source profile as embedded (None for RAW: developed straight into sRGB)
    color_space: str  # e.g. "sRGB", "Adobe RGB (1998)", "CMYK (untagged)"
    exif: bytes | None  # EXIF as read, before our edits (TIFF: its descriptive tags; RAW: built, Orientation 1)
    xmp: bytes | None
    sha256: str  # of the file's bytes
    notes: list[str] = field(default_factory=list)  # conversions done, things to report

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]


def load_photo(path, *, max_pixels: int = 100_000_000, formats=DEFAULT_FORMATS) -> Photo:
    """Decode `path` safely into float32 HxWx3 sRGB pixels in [0, 1], upright.

    Every failure is a PhotoError naming the file, with a reason and a fix;
    `permanent` is False only where retrying can help (permission denied,
    out of memory). `max_pixels` bounds width x height (checked from the
    header, before decoding); `formats` is the allow-list of input formats,
    from JPEG, PNG, TIFF, WEBP, HEIF and RAW (ValueError for other names).
    What was converted, and any warning from the decoders, is listed in
    Photo.notes (warnings are also logged on the "nst_watch.photo" logger).
    """
    path = Path(path)
    allowed = normalise_formats(formats)
    _check_file(path)
    with _open_regular(path) as f:
        kind = sniff(path, f, allowed)
        if kind == "RAW":
            # LibRaw needs the whole file in memory anyway: read it once, so the
            # bytes hashed are exactly the bytes developed.
            data = _read_raw_bytes(path, f, max_pixels)
            digest = hashlib.sha256(data).hexdigest()
            fields = _decode(path, io.BytesIO(data), kind, max_pixels)
        else:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            f.seek(0)
            fields = _decode(path, f, kind, max_pixels)
    kind = fields.pop("format", kind)  # a RAW name on a plain TIFF is read as the TIFF it is
    _note_misnamed(path, kind, fields["notes"])
    return Photo(path=path, format=kind, sha256=digest, **fields)


def normalise_formats(formats) -> tuple[str, ...]:
    """Upper-case, de-aliased allow-list; ValueError for formats we cannot decode."""
    names = tuple(_ALIASES.get(str(f).upper(), str(f).upper()) for f in formats)
    unknown = [n for n in names if n not in KNOWN_FORMATS]
    if unknown:
        raise ValueError(f"unsupported input format(s) {unknown}; choose from {', '.join(KNOWN_FORMATS)}")
    return names


# --- file checks ----------------------------------------------------------------


def _check_file(path: Path) -> None:
    """lstat-based checks; nothing is opened, so a FIFO cannot block us."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise PhotoError(path, "no such file (the path is wrong, or it was moved or deleted)") from None
    except OSError as exc:
        raise PhotoError(path, f"cannot be examined: {exc.strerror}", permanent=False) from None
    if stat.S_ISLNK(st.st_mode):
        raise PhotoError(path, "is a symbolic link; nst-watch does not follow links",
                         "copy the photo itself into the folder")
    if not stat.S_ISREG(st.st_mode):
        what = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "a special file")
        raise PhotoError(path, f"not a regular file ({what})", "only ordinary photo files can be processed")
    if st.st_size == 0:
        raise PhotoError(path, "empty file (0 bytes)", "the copy probably failed; copy the photo again")


def _open_regular(path: Path):
    """Open without following links or blocking, then re-check what we opened."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        f = open(path, "rb", opener=lambda p, _: os.open(p, flags))
    except PermissionError:
        raise PhotoError(path, "permission denied reading the file",
                         "let the user running nst-watch read it", permanent=False) from None
    except OSError as exc:  # ELOOP: swapped for a symlink since lstat
        raise PhotoError(path, f"cannot be opened: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise PhotoError(path, "not a regular file (it changed while being checked)")
    return f


def _magic(head: bytes) -> str | None:
    """Format from the first bytes; also names a few formats we refuse."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return "HEIF" if head[8:12] in _HEIF_BRANDS else "AVIF" if head[8:12] in (b"avif", b"avis") else None
    for sig, name in ((b"GIF8", "GIF"), (b"BM", "BMP"), (b"8BPS", "PSD"), (b"%PDF", "PDF"),
                      (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x0a", "JPEG XL")):
        if head.startswith(sig):
            return name
    return None


def sniff(path, f, formats=DEFAULT_FORMATS) -> str:
    """The format `load_photo` would decode `f` as (open at offset 0, left there), from its first bytes.

    One of JPEG, PNG, TIFF, WEBP, HEIF or RAW. Reads a few bytes (a TIFF:
    its first IFD, to tell a DNG), never pixels, so the daemon can refuse
    what is no photo the moment it settles. PhotoError (permanent), naming
    `path`, with the fix: content that is no image at all, an image format
    nst-watch does not read (GIF, PSD, PDF...; with how to convert it), one
    outside `formats`, or one whose decoder (pillow-heif, rawpy) is missing.
    Content without a known signature under a camera RAW name passes as
    RAW: LibRaw judges it when it is developed.
    """
    return _sniff(Path(path), f, normalise_formats(formats))


def _sniff(path: Path, f, allowed: tuple[str, ...]) -> str:
    head = f.read(32)
    f.seek(0)
    kind = _content_kind(path, f, head)
    if kind is None:
        raise PhotoError(path, "not a JPEG/PNG/TIFF/WebP image, nor a HEIC or camera RAW (the content is "
                         "not a known image format)",
                         "check that this really is a photo; renaming a file does not convert it")
    if kind == "HEIF" and not HEIF_AVAILABLE:
        raise PhotoError(path, "HEIF/HEIC image, but the pillow-heif package is not installed",
                         "pip install pillow-heif, or export a JPEG")
    if kind == "RAW" and not RAW_AVAILABLE:
        raise PhotoError(path, "camera RAW file, but the rawpy package (LibRaw) is not installed",
                         "pip install rawpy, or develop it and export a TIFF or JPEG")
    if kind not in allowed:
        # There is no setting that admits other formats: say what to convert to
        # (nobody converts to RAW, so it is never suggested while another format is allowed).
        targets = [n for n in allowed if n != "RAW"] or ["DNG"]
        if kind == "RAW":
            raise PhotoError(path, f"camera RAW images are not accepted here (only {', '.join(allowed)})",
                             f"develop it and export {_or_list(targets)}")
        if kind in KNOWN_FORMATS:  # decodable, but this caller's allow-list excludes it
            raise PhotoError(path, f"{kind} images are not accepted here (only {', '.join(allowed)})",
                             f"convert it to {_or_list(targets)}")
        how = _CONVERT_HINTS.get(kind, "for example by saving a copy from an image editor")
        raise PhotoError(path, f"{kind} images are not supported", f"convert it to {_or_list(targets)}, {how}")
    return kind


def _content_kind(path: Path, f, head: bytes) -> str | None:
    """The format of `f` (open at offset 0; `head` its first 32 bytes): a `_magic` name, or "RAW".

    A RAW is recognised by content where it can be (a RAW signature, Canon's
    "CR" in a TIFF header, a DNGVersion tag: a DNG named .tif is developed,
    not shown as its thumbnail); most RAW formats are plain TIFF containers
    or have no signature we know, and those are taken by their suffix: LibRaw
    checks the content itself, and says so when it is not a RAW.
    """
    kind = _magic(head)
    if head.startswith(_RAW_SIGNATURES) or head[4:12] == b"ftypcrx ":
        return "RAW"
    if kind in ("TIFF", None) and path.suffix.lower() in _RAW_SUFFIXES:
        return "RAW"
    if kind == "TIFF" and (head[8:10] == b"CR" or _has_dng_version(f)):
        return "RAW"
    return kind


def _has_dng_version(f) -> bool:
    """True when the TIFF in `f` has DNGVersion (tag 50706) in its first IFD; `f` is left at offset 0."""
    try:
        with tifffile.TiffFile(f) as tif:  # a file object tifffile did not open stays open
            return 50706 in tif.pages[0].tags
    except _DECODE_ERRORS:  # unreadable here: the TIFF decoder reports why, in detail
        return False
    finally:
        f.seek(0)


# What a file's suffix promises; a content that says otherwise is read as
# what it is, with a note (the names of other RAW formats promise RAW too).
_SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
                   ".webp": "WEBP", ".heic": "HEIF", ".heif": "HEIF", ".hif": "HEIF"}
_FORMAT_WORDS = {"RAW": "a camera RAW", "WEBP": "a WebP", "HEIF": "a HEIF/HEIC"}


def _note_misnamed(path: Path, kind: str, notes: list[str]) -> None:
    """Note a photo whose name promises another format than its content ("named .dng but is a plain TIFF")."""
    suffix = path.suffix.lower()
    named = "RAW" if suffix in _RAW_SUFFIXES else _SUFFIX_FORMATS.get(suffix)
    if named is None or named == kind:
        return
    if kind == "TIFF" and named == "RAW":
        notes.append(f"named {path.suffix} but is a plain TIFF, not a camera RAW (LibRaw: not a RAW file); "
                     "read as TIFF")
        return
    what = _FORMAT_WORDS.get(kind, f"a {kind}")
    notes.append(f"named {path.suffix} but is {what}; read as {'RAW (developed by LibRaw)' if kind == 'RAW' else kind}")


_CONVERT_HINTS = {
    "GIF": "for example by saving a copy as PNG (an animation: save the frame you want)",
    "PSD": "for example by exporting a flattened copy as TIFF or JPEG from Photoshop",
    "PDF": "for example by exporting the page as PNG or JPEG",
}


def _or_list(names) -> str:
    names = [{"WEBP": "WebP"}.get(n, n) for n in names]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# --- decoding -------------------------------------------------------------------


def _too_big(path: Path, max_pixels: int, detail: str) -> PhotoError:
    return PhotoError(path, f"{detail}, over the max_pixels limit of {max_pixels} pixels",
                      "downscale the photo, or raise max_pixels in the config file")


def _check_size(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise PhotoError(path, f"header declares an empty image ({w}x{h})")
    if w * h > max_pixels:
        raise _too_big(path, max_pixels, f"{w}x{h} pixels ({w * h / 1e6:.1f} MP)")


def _decode(path: Path, f, kind: str, max_pixels: int) -> dict:
    notes: list[str] = []
    # Our own limit is authoritative; Pillow's may only be loosened up to it so
    # its bomb warning (now an error) never contradicts the user's setting.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings(record=True) as caught:
        # Record every warning (reported below, per photo); the bomb warning
        # stays an error: the pixel limit is a refusal, not a remark.
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            fields = _load(path, f, kind, max_pixels, notes)
            # Parse the EXIF the way the encoder will, so corrupt-EXIF warnings
            # surface here, on this photo, rather than while saving.
            metadata.output_exif(fields["exif"], 1, 1, strip_gps=False)
        except PhotoError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found.group(1))} pixels" if found else "the image"
            raise _too_big(path, max_pixels, size) from exc
        except MemoryError:
            raise PhotoError(path, "not enough memory to decode this photo",
                             "lower max_pixels or free memory", permanent=False) from None
        except _DECODE_ERRORS as exc:
            raise PhotoError(path, f"image data is truncated or corrupt ({exc})",
                             "copy the file again; if it opens elsewhere, re-export it") from exc
        finally:
            _report_warnings(path, caught, notes)
    return {**fields, "notes": notes}


def _load(path: Path, f, kind: str, max_pixels: int, notes: list[str]) -> dict:
    """The Photo fields of `f`, from the decoder for `kind` and its bit depth."""
    if kind == "RAW":
        try:
            return _load_raw(path, f, max_pixels, notes)
        except _PlainTiff:
            f.seek(0)
            return {**_load(path, f, "TIFF", max_pixels, notes), "format": "TIFF"}
    im = _open_image(path, f, kind, max_pixels)
    if kind == "TIFF" and (im is None or max(_tiff_bits(im)) > 8):
        return _load_tiff16(path, f, im, max_pixels, notes)
    if kind == "PNG" and _png_is_16bit(im):
        return _load_pillow16(path, f, im, notes)
    if kind == "HEIF" and int(im.info.get("bit_depth") or 8) > 8:
        return _load_heif16(f, im, notes)
    return _load_8bit(path, im, kind, notes)


def _report_warnings(path: Path, caught: list, notes: list[str]) -> None:
    """Each distinct warning -> a note and a log record naming `path`."""
    for category, message in dict.fromkeys((w.category, str(w.message).strip()) for w in caught):
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning)):
            log.debug("%s: %s: %s", path, category.__name__, message)  # about code, not this photo
            continue
        log.warning("%s: the decoder warned: %s", path, message)
        notes.append(f"the decoder warned: {message}")


def _open_image(path: Path, f, kind: str, max_pixels: int):
    """Parse the header only (Pillow is lazy) and enforce the pixel limit."""
    if kind == "PNG":  # IHDR is at a fixed place: check before Pillow parses anything
        head = f.read(24)
        f.seek(0)
        if len(head) == 24 and head[12:16] == b"IHDR":
            _check_size(path, struct.unpack(">II", head[16:24]), max_pixels)
    try:
        im = Image.open(f, formats=[kind])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except _DECODE_ERRORS as exc:
        if kind == "TIFF":
            return None  # e.g. 16-bit grey+alpha: tifffile may still read it
        raise PhotoError(path, f"not a valid {kind} image: its header cannot be read ({exc})") from exc
    _check_size(path, im.size, max_pixels)
    return im


def _load_8bit(path: Path, im, kind: str, notes: list[str]) -> dict:
    im.load()
    _note_frames(im, kind, notes)
    icc = im.info.get("icc_profile") or None
    exif, xmp = _exif_bytes(im, kind), _xmp_bytes(im)
    orientation = _orientation(im)
    try:
        im = ImageOps.exif_transpose(im)  # the one and only place orientation is applied (HEIF: see below)
    except _DECODE_ERRORS as exc:
        notes.append(f"EXIF orientation could not be applied ({exc})")
    else:
        if orientation != 1:
            notes.append(f"rotated upright (EXIF orientation {orientation})")
    if kind == "HEIF":
        _note_heif_turn(im, notes)
    base, alpha = _split_alpha(path, im)
    rgb, space = _srgb_8bit(base, icc, notes)
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    return dict(pixels=pixels, alpha=alpha, bit_depth=8, icc_profile=icc, color_space=space, exif=exif, xmp=xmp)


def _note_frames(im, kind: str, notes: list[str]) -> None:
    """Say which of several images/pages was used: the first, or a HEIF's primary image.

    A HEIF's primary image is the one its maker chose to show (a burst's
    pick, a photo beside its depth map or thumbnails), so pillow-heif opens
    that one, and it need not be the first stored.
    """
    frames = getattr(im, "n_frames", 1)
    if frames <= 1:
        return
    if kind == "HEIF":
        notes.append(f"the HEIF holds {frames} images; its primary image (image {im.tell() + 1}, {im.width}x"
                     f"{im.height}) was used, as viewers show it")
    else:
        notes.append(f"only the first of {frames} frames/pages was used")


def displayed_size(path) -> tuple[int, int, str | None]:
    """(width, height, format) of the image at `path` as shown: EXIF orientation applied, a RAW as developed.

    Reads headers only (a RAW: LibRaw's parse, nothing unpacked). The format
    is Pillow's name ("JPEG", "HEIF"...) or "RAW". Raises what PIL.Image.open
    raises (UnidentifiedImageError, OSError) for a file that is not an image,
    and OSError, saying why, for a RAW that LibRaw cannot read.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(32)
        f.seek(0)
        is_raw = _content_kind(path, f, head) == "RAW"
    if is_raw:
        size = _raw_displayed_size(path)
        if size is not None:  # else an ordinary TIFF under a RAW name, read as one
            return (*size, "RAW")
    with Image.open(path) as im:
        width, height = im.size
        # Pillow's TIFF plugin reports the upright size already (it turns
        # the pixels itself when they load); other formats are turned by
        # exif_transpose, after opening.
        if im.format != "TIFF" and _orientation(im) in (5, 6, 7, 8):  # turned by 90 degrees
            width, height = height, width
        return width, height, im.format


def _orientation(im) -> int:
    try:
        value = im.getexif().get(metadata.ORIENTATION, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _exif_bytes(im, kind: str) -> bytes | None:
    raw = im.info.get("exif")
    if kind != "TIFF" and isinstance(raw, bytes) and raw:
        return raw
    try:  # TIFF: the EXIF tags live in the file's own IFD0, among structure tags
        reduced = metadata.reduce_exif(im.getexif())
    except _DECODE_ERRORS:
        return None
    return reduced.to_bytes() if reduced.ifd0 or reduced.exif or reduced.gps else None


def _xmp_bytes(im) -> bytes | None:
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = im.info.get(key)
        if value:
            return value.encode("utf-8") if isinstance(value, str) else bytes(value)
    value = getattr(im, "tag_v2", {}).get(700)  # TIFF XMLPacket
    return bytes(value) if isinstance(value, (bytes, bytearray)) and value else None


def _split_alpha(path: Path, im):
    """-> (L/RGB/CMYK image, alpha float32 HxW or None)."""
    if im.mode in ("P", "RGB", "L") and "transparency" in im.info:  # palette or tRNS colour key
        im = im.convert("RGBA" if im.mode != "L" else "LA")
    elif im.mode == "P":
        im = im.convert("RGB")
    elif im.mode in ("PA", "RGBa", "La"):
        im = im.convert("RGBA" if im.mode != "La" else "LA")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("RGBX", "YCbCr"):
        im = im.convert("RGB")
    if im.mode in ("RGBA", "LA"):
        alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
        return im.convert(im.mode[:-1]), alpha
    if im.mode not in ("RGB", "L", "CMYK"):
        raise PhotoError(path, f"unsupported colour mode {im.mode}", "export an 8- or 16-bit RGB, grey or CMYK file")
    return im, None


def _srgb_8bit(im, icc: bytes | None, notes: list[str]):
    """8-bit L/RGB/CMYK image -> (RGB sRGB image, description of the source space)."""
    profile = color.open_profile(icc)
    if icc and profile is None:
        notes.append("the embedded ICC profile is unreadable; the pixels were taken as sRGB")
    if profile is None:
        if im.mode == "CMYK":
            notes.append("CMYK without an ICC profile: converted with a simple formula, colours are approximate")
            return im.convert("RGB"), "CMYK (untagged)"
        return im.convert("RGB"), "sRGB"
    name = color.describe(profile)
    if im.mode == "RGB" and color.is_srgb(profile):
        return im, name
    try:
        out = color.to_srgb_image(im, profile)
    except ImageCms.PyCMSError as exc:
        notes.append(f"could not convert from {name} ({exc}); the pixels were taken as sRGB")
        return im.convert("RGB"), name
    notes.append(f"converted from {name} to sRGB")
    return out, name


# --- 16 bits per channel --------------------------------------------------------


def _tiff_bits(im) -> tuple[int, ...]:
    bits = im.tag_v2.get(258, (8,))
    return bits if isinstance(bits, tuple) else (bits,)


def _png_is_16bit(im) -> bool:
    return im.mode.startswith("I") or any(";16" in str(_rawmode(t)) for t in im.tile)


def _rawmode(tile):
    args = tile[3]
    return args[0] if isinstance(args, tuple) else args


def _with_rawmode(tile, raw: str):
    args = tile[3]
    args = (raw, *args[1:]) if isinstance(args, tuple) else raw
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)


def _swap_endian(raw: str) -> str:
    end = raw[-1]
    if end == "N":
        end = "L" if sys.byteorder == "little" else "B"
    return raw[:-1] + ("L" if end == "B" else "B")


def _decode_as(f, kind: str, raw: str):
    """Re-open and decode with another rawmode -> (uint8 array, loaded image)."""
    f.seek(0)
    im = Image.open(f, formats=[kind])
    im.tile = [_with_rawmode(t, raw) for t in im.tile]
    im.load()
    return np.asarray(im), im


def _load_pillow16(path: Path, f, im, notes: list[str], kind: str = "PNG") -> dict:
    """16-bit PNG (or TIFF tifffile cannot decompress) through Pillow's decoders.

    Pillow has no 16-bit RGB mode and keeps only the high byte of each sample.
    Decoding twice, once with the opposite byte order, yields the low bytes
    too; Pillow's own decoder does the decompression and PNG unfiltering.
    """
    raw = _rawmode(im.tile[0])
    if im.mode.startswith("I"):  # 16-bit grey: Pillow keeps it whole
        im.load()
        arr, meta, channels = np.asarray(im).astype(np.uint16)[..., None], im, "gray"
    elif raw.startswith("LA;16"):  # 32-bit pixels: the RGBA unpacker copies all four bytes
        four, meta = _decode_as(f, kind, "RGBA")
        arr, channels = (four[..., 0::2].astype(np.uint16) << 8) | four[..., 1::2], "gray"
    elif im.mode in ("RGB", "RGBA") and raw.split(";")[0] == im.mode:
        hi, meta = _decode_as(f, kind, raw)
        lo, _ = _decode_as(f, kind, _swap_endian(raw))
        arr, channels = (hi.astype(np.uint16) << 8) | lo, "rgb"
    else:
        raise PhotoError(path, f"unsupported 16-bit layout ({im.mode}, {raw})", "export an 8-bit or 16-bit RGB file")
    has_alpha = arr.shape[-1] in (2, 4)
    icc = meta.info.get("icc_profile") or None
    exif, xmp = _exif_bytes(meta, kind), _xmp_bytes(meta)
    return _finish16(arr, channels, has_alpha, _orientation(meta), icc, exif, xmp, notes)


def _load_tiff16(path: Path, f, im, max_pixels: int, notes: list[str]) -> dict:
    """16-bit TIFF through tifffile (Pillow would silently drop to 8 bits)."""
    f.seek(0)
    with tifffile.TiffFile(f) as tif:
        page = tif.pages[0]
        _check_size(path, (page.imagewidth, page.imagelength), max_pixels)
        if page.sampleformat == 3 or page.bitspersample > 16:
            kind = "floating-point" if page.sampleformat == 3 else "integer"
            raise PhotoError(path, f"{page.bitspersample}-bit {kind} TIFFs are not supported", "export a 16-bit TIFF")
        if len(tif.pages) > 1:
            notes.append(f"only the first of {len(tif.pages)} pages was used")
        try:
            arr = page.asarray()
        except (KeyError, ValueError) as exc:
            if "imagecodecs" not in str(exc):
                raise
            if im is not None and (im.mode in ("RGB", "RGBA") or im.mode.startswith("I;16")):
                return _load_pillow16(path, f, im, notes, kind="TIFF")
            raise PhotoError(path, f"this TIFF's {page.compression.name} compression needs the imagecodecs package",
                             "pip install imagecodecs, or save the TIFF uncompressed or with ZIP") from None
        arr, channels, has_alpha = _tiff_layout(path, page, arr, notes)
        tags = {t.code: t.value for t in page.tags}
        depth = 16 if page.bitspersample > 8 else 8
    icc = bytes(tags[34675]) if 34675 in tags else None
    xmp = bytes(tags[700]) if isinstance(tags.get(700), (bytes, bytearray)) else None
    orientation = int(tags.get(274, 1)) if 1 <= int(tags.get(274, 1)) <= 8 else 1
    exif = _exif_bytes(im, "TIFF") if im is not None else None
    return _finish16(arr, channels, has_alpha, orientation, icc, exif, xmp, notes, depth)


def _tiff_layout(path: Path, page, arr: np.ndarray, notes: list[str]):
    """tifffile array -> (uint16 HxWxC, "gray"|"rgb"|"cmyk", has_alpha)."""
    if page.axes == "SYX":
        arr = np.moveaxis(arr, 0, -1)
    elif page.axes == "YX":
        arr = arr[..., None]
    elif page.axes != "YXS":
        raise PhotoError(path, f"unsupported TIFF layout {page.axes}", "export a plain RGB or grey TIFF")
    photometric = int(page.photometric)
    channels = {0: "gray", 1: "gray", 2: "rgb", 5: "cmyk"}.get(photometric)
    if channels is None or (channels == "cmyk" and arr.shape[-1] < 4):
        raise PhotoError(path, f"unsupported TIFF colour model ({page.photometric.name})", "export an RGB TIFF")
    arr = _stretch16(arr, page.bitspersample)
    if photometric == 0:  # MinIsWhite
        arr = 65535 - arr
    base = {"gray": 1, "rgb": 3, "cmyk": 4}[channels]
    extras = tuple(int(e) for e in page.extrasamples)
    has_alpha = arr.shape[-1] > base and extras[:1] in ((1,), (2,))
    if has_alpha and extras[0] == 1:  # associated (premultiplied) alpha
        a = arr[..., base : base + 1].astype(np.float64)
        col = np.where(a > 0, arr[..., :base] * 65535.0 / np.maximum(a, 1), 0)
        arr = np.concatenate([np.clip(col, 0, 65535).round().astype(np.uint16), arr[..., base : base + 1]], -1)
        notes.append("premultiplied alpha was un-premultiplied")
    return arr[..., : base + has_alpha], channels, has_alpha


def _stretch16(arr: np.ndarray, bits: int) -> np.ndarray:
    """uint16 from samples of `bits` bits (12-bit TIFF, 10-bit HEIF...), stretched to the full 16-bit range."""
    if bits != 16:
        arr = (arr.astype(np.float64) * (65535 / (2**bits - 1))).round()
    return arr.astype(np.uint16)


def _load_heif16(f, im, notes: list[str]) -> dict:
    """10- or 12-bit HEIF at full precision (pillow-heif's Pillow plugin hands out 8 bits).

    libheif applies the container's rotation and mirroring while decoding;
    metadata comes from the Pillow image `im`, whose EXIF orientation the
    plugin has already reset to 1, so the picture is turned exactly once.
    """
    f.seek(0)
    heif = pillow_heif.open_heif(f, convert_hdr_to_8bit=False, hdr_to_16bit=False)
    arr = np.asarray(heif)  # the primary image, as `im`: uint16, values up to 2**bit_depth - 1
    _note_frames(im, "HEIF", notes)
    arr = arr[..., None] if arr.ndim == 2 else arr
    has_alpha = arr.shape[-1] in (2, 4)
    channels = "rgb" if arr.shape[-1] >= 3 else "gray"
    arr = _stretch16(arr, int(heif.info.get("bit_depth") or 16))
    _note_heif_turn(im, notes)
    icc = im.info.get("icc_profile") or None
    return _finish16(arr, channels, has_alpha, 1, icc, _exif_bytes(im, "HEIF"), _xmp_bytes(im), notes)


def _note_heif_turn(im, notes: list[str]) -> None:
    """Say that a HEIF's EXIF orientation was not applied (pillow-heif keeps the value it reset to 1).

    In HEIF the container's rotation and mirror boxes are authoritative and
    libheif applies them; the EXIF tag only mirrors them (an iPhone writes
    both), so applying it as well would turn the picture twice.
    """
    exif_value = im.info.get("original_orientation")
    if isinstance(exif_value, int) and 2 <= exif_value <= 8:
        notes.append(f"turned upright by libheif from the HEIF container's rotation (EXIF orientation "
                     f"{exif_value} was not applied again: in HEIF the container's rotation is authoritative)")


_NUMPY_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """numpy twin of ImageOps.exif_transpose for arrays Pillow cannot hold."""
    fn = _NUMPY_ORIENT.get(orientation)
    return np.ascontiguousarray(fn(arr)) if fn else arr


def _finish16(arr, channels, has_alpha, orientation, icc, exif, xmp, notes, depth=16) -> dict:
    arr = apply_orientation(arr, orientation)
    if orientation != 1:
        notes.append(f"rotated upright (EXIF orientation {orientation})")
    values = arr.astype(np.float32) / 65535.0  # float32 holds 16-bit values exactly
    alpha = np.ascontiguousarray(values[..., -1]) if has_alpha else None
    values = values[..., :-1] if has_alpha else values
    rgb, space = _srgb_16(values, channels, icc, notes)
    return dict(pixels=np.ascontiguousarray(rgb, dtype=np.float32), alpha=alpha, bit_depth=depth,
                icc_profile=icc, color_space=space, exif=exif, xmp=xmp)


def _srgb_16(values: np.ndarray, channels: str, icc: bytes | None, notes: list[str]):
    """Float 16-bit data -> (float32 sRGB HxWx3, source space description)."""
    profile = color.open_profile(icc)
    if channels != "cmyk":
        rgb = np.repeat(values, 3, axis=-1) if values.shape[-1] == 1 else values
        if profile is None or color.is_srgb(profile):
            if icc and profile is None:
                notes.append("the embedded ICC profile is unreadable; the pixels were taken as sRGB")
            return rgb, color.describe(profile) if profile else "sRGB"
        shaper = color.Shaper.parse(icc)
        if shaper is not None:
            name = color.describe(profile)
            notes.append(f"converted from {name} to sRGB at full 16-bit precision")
            return color.shaper_to_srgb(rgb, shaper), name
    # LUT-based profiles and CMYK: only LittleCMS can, and only at 8 bits.
    mode = {"gray": "L", "rgb": "RGB", "cmyk": "CMYK"}[channels]
    q = np.ascontiguousarray(np.round(values * 255.0).astype(np.uint8))
    im8 = Image.frombytes(mode, (q.shape[1], q.shape[0]), q.tobytes())
    rgb8, name = _srgb_8bit(im8, icc, notes)
    msg = f"16-bit {name} input was converted to sRGB at 8-bit precision (no 16-bit path for this profile)"
    log.warning("%s", msg)
    notes.append(msg)
    return np.asarray(rgb8, dtype=np.float32) / 255.0, name


# --- camera RAW -----------------------------------------------------------------

# A RAW is read whole into memory; refuse files larger than any RAW within
# max_pixels can be before reading them. 8 bytes a pixel is generous: a 16-bit
# mosaic takes 2, previews and makernotes add a little, and Foveon or
# pixel-shift files hold a few mosaics.
_RAW_BYTES_PER_PIXEL = 8
_RAW_SLACK = 64 << 20
# ORF and RW2 are TIFF structures with their own magic numbers: with the
# standard one, Pillow reads their IFD0 and Exif IFD like any TIFF's.
_TIFF_MAGIC_FOR = {b"IIRO": b"II*\x00", b"IIRS": b"II*\x00", b"IIU\x00": b"II*\x00", b"MMOR": b"MM\x00*",
                   b"II*\x00": b"II*\x00", b"MM\x00*": b"MM\x00*"}
# How LibRaw turns the picture upright (sizes.flip, from the camera's EXIF
# orientation: bit 4 swaps the axes, bits 1 and 2 mirror), for the notes.
_FLIP_NAMES = {1: "mirrored left to right", 2: "mirrored top to bottom", 3: "turned 180 degrees",
               4: "mirrored across its diagonal (EXIF orientation 5)", 5: "turned 90 degrees counter-clockwise",
               6: "turned 90 degrees clockwise", 7: "mirrored across its anti-diagonal (EXIF orientation 7)"}
_FLIP_TRANSPOSES = 4
# IFD0 tags that only a camera RAW's TIFF structure has: DNGVersion, and
# SubIFDs (where NEF, ARW, PEF... keep the sensor data behind a preview).
_RAW_TAGS = (50706, 330)
_RAW_PHOTOMETRIC = (32803, 34892)  # CFA (a mosaic), LinearRaw (a DNG's demosaiced data)
_ARTIST = 0x013B
_EXPOSURE_TIME, _F_NUMBER, _ISO, _DATE_ORIGINAL, _FOCAL_LENGTH, _LENS_MAKE, _LENS_MODEL = (
    0x829A, 0x829D, 0x8827, 0x9003, 0x920A, 0xA433, 0xA434)
# LibRaw's default data and memory error callbacks print these to file
# descriptor 2, as "<file name or 'unknown file'>: <what>" (rawpy exposes no
# way to replace them).
_LIBRAW_LINE = re.compile(r"^(?:.*): (Unexpected end of file|data corrupted at -?\d+|Out of memory in .*)$")
_LIBRAW_STDERR = threading.Lock()


class _PlainTiff(Exception):
    """LibRaw says "not a RAW file", and the content is an ordinary TIFF: read it as one."""


@contextmanager
def _libraw_said(said: list[str]):
    """Collect what LibRaw prints on stderr while the block runs into `said`, one message a line.

    LibRaw (C++) writes its data errors ("Unexpected end of file", "data
    corrupted at N") straight to file descriptor 2, with no file name for a
    file read from memory, so fd 2 points at a temporary file meanwhile and
    the caller turns each line into a note or its error, naming the photo.
    fd 2 belongs to the whole process: one block runs at a time, and any
    other line written meanwhile (another thread's log record) is written
    back to the real stderr afterwards, delayed but never lost.
    """
    with _LIBRAW_STDERR:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing could be printed anyway
            yield
            return
        with tempfile.TemporaryFile() as sink:
            try:
                sys.stderr.flush()
            except (AttributeError, OSError, ValueError):
                pass
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:  # LibRaw's error is raised here too: what it printed belongs in the message
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                _sort_printed(sink.read(), said)


def _sort_printed(printed: bytes, said: list[str]) -> None:
    """LibRaw's lines into `said` ("unexpected end of file"); any other line back to the real stderr."""
    others = []
    for line in printed.decode("utf-8", "replace").splitlines(keepends=True):
        found = _LIBRAW_LINE.match(line.rstrip("\n"))
        if found:
            said.append(found.group(1)[0].lower() + found.group(1)[1:])
        else:
            others.append(line)
    if others:
        os.write(2, "".join(others).encode("utf-8", "replace"))


def _read_raw_bytes(path: Path, f, max_pixels: int) -> bytes:
    """All of the RAW file `f`; PhotoError when it is larger than a RAW within `max_pixels` can be."""
    size = os.fstat(f.fileno()).st_size
    limit = max_pixels * _RAW_BYTES_PER_PIXEL + _RAW_SLACK
    if size > limit:
        raise _too_big(path, max_pixels, f"{size / 1e6:.0f} MB, more than a camera RAW within the limit takes "
                                         f"({limit / 1e6:.0f} MB)")
    try:
        return f.read()
    except MemoryError:
        raise PhotoError(path, "not enough memory to read this RAW file",
                         "lower max_pixels or free memory", permanent=False) from None
    except OSError as exc:
        raise PhotoError(path, f"cannot be read: {exc.strerror}", "check the disk or share it lies on",
                         permanent=False) from None


def _load_raw(path: Path, f, max_pixels: int, notes: list[str]) -> dict:
    """Develop the camera RAW in `f` (an io.BytesIO over the whole file) with LibRaw.

    Camera white balance, AHD demosaicing, 16-bit output in sRGB primaries
    with the sRGB tone curve, and no auto-brightening: LibRaw's default
    stretches each frame until 1 % of its pixels clip, so a shoot's frames
    would come out at different exposures and every highlight would be
    clipped; without it the camera's exposure is kept (the result looks
    darker than the camera's own JPEG, which adds a tone curve). LibRaw
    turns the picture upright from the camera's orientation. The pixel count
    is checked from LibRaw's header parse, before anything is unpacked.
    What LibRaw prints about the data becomes a note (or part of the error).
    PhotoError (permanent) when LibRaw cannot read the file; _PlainTiff when
    it is no RAW but an ordinary TIFF under a RAW name.
    """
    exif, xmp = _container_metadata(f.getvalue())
    said: list[str] = []
    try:
        with ExitStack() as closing:
            # Reading the file (header, preview, sensor data) is where LibRaw
            # prints; demosaicing, the long part, runs outside that block, so
            # several threads still develop RAWs side by side.
            with _libraw_said(said):
                raw = closing.enter_context(rawpy.imread(f))
                sizes = raw.sizes
                _check_size(path, (sizes.width, sizes.height), max_pixels)
                if metadata.MAKE not in exif.ifd0:  # e.g. CR3 and RAF, which are not TIFF structures
                    _merge_exif(exif, _preview_exif(raw))  # before unpack(), which lets go of the file's bytes
                raw.unpack()
            # gamma: sRGB's curve (LibRaw's default is BT.709's), as the sRGB the
            # network works in and the outputs embed expects.
            rgb = raw.postprocess(use_camera_wb=True, output_bps=16, output_color=rawpy.ColorSpace.sRGB,
                                  no_auto_bright=True, gamma=(2.4, 12.92))
            _fill_from_libraw(exif, raw)
    except rawpy.LibRawFileUnsupportedError as exc:
        if _ordinary_tiff(f):
            raise _PlainTiff() from None
        raise _libraw_failure(path, exc, said) from None
    except rawpy.LibRawError as exc:
        raise _libraw_failure(path, exc, said) from None
    version = ".".join(map(str, rawpy.libraw_version))
    notes.append(f"developed from RAW by LibRaw {version} (camera white balance, sRGB, 16-bit)")
    for message in dict.fromkeys(said):
        log.warning("%s: LibRaw warned: %s", path, message)
        notes.append(f"LibRaw warned: {message} (parts of the picture may be damaged)")
    if sizes.flip:
        notes.append(f"turned upright by LibRaw: {_FLIP_NAMES.get(sizes.flip, f'flip {sizes.flip}')}, "
                     "as the camera recorded")
    exif.ifd0[metadata.ORIENTATION] = 1  # the pixels are upright now
    pixels = rgb.astype(np.float32)
    del rgb
    pixels /= 65535.0  # float32 holds 16-bit values exactly
    return dict(pixels=pixels, alpha=None, bit_depth=16, icc_profile=None, color_space="sRGB",
                exif=exif.to_bytes(), xmp=xmp)


def _ordinary_tiff(f) -> bool:
    """True when `f` is a TIFF with none of a camera RAW's marks; `f` is left at offset 0.

    The marks: DNGVersion or SubIFDs in the first IFD, a first IFD that is
    only a reduced-resolution preview (NewSubfileType bit 0), a CFA or
    LinearRaw page. A RAW LibRaw does not know (a newer camera) has them,
    and keeps LibRaw's error rather than being shown as its preview.
    """
    f.seek(0)
    try:
        with tifffile.TiffFile(f) as tif:
            tags = tif.pages[0].tags
            if any(code in tags for code in _RAW_TAGS) or int(tags.valueof(254, 0)) & 1:
                return False
            return all(int(page.photometric) not in _RAW_PHOTOMETRIC for page in tif.pages)
    except (*_DECODE_ERRORS, TypeError, tifffile.TiffFileError):
        return False
    finally:
        f.seek(0)


def _raw_displayed_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of the RAW at `path` once developed and turned upright.

    None when LibRaw says it is no RAW and it is an ordinary TIFF (read as
    one); OSError when LibRaw cannot read it.
    """
    if rawpy is None:
        raise OSError("a camera RAW file, but the rawpy package (LibRaw) is not installed (pip install rawpy)")
    said: list[str] = []
    try:
        with _libraw_said(said):
            try:
                raw = rawpy.imread(os.fsdecode(path))  # from a path LibRaw reads only the headers it needs
            except UnicodeEncodeError:  # rawpy hands LibRaw UTF-8 paths only; other names go in whole, from memory
                with open(path, "rb") as f:
                    raw = rawpy.imread(f)
            with raw:
                sizes = raw.sizes
    except rawpy.LibRawFileUnsupportedError as exc:
        with open(path, "rb") as f:
            if _ordinary_tiff(f):
                return None
        raise OSError(f"LibRaw cannot read it: {_libraw_reason(exc, said)}") from None
    except rawpy.LibRawError as exc:
        raise OSError(f"LibRaw cannot read it: {_libraw_reason(exc, said)}") from None
    for message in said:  # the size is all we need here; the worker reports the data's trouble
        log.debug("%s: LibRaw warned while reading the header: %s", path, message)
    if sizes.flip & _FLIP_TRANSPOSES:  # turned by 90 degrees, or mirrored across a diagonal (EXIF 5 to 8)
        return sizes.height, sizes.width
    return sizes.width, sizes.height


def _libraw_message(exc: Exception) -> str:
    message = exc.args[0] if exc.args else type(exc).__name__
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)


def _libraw_reason(exc: Exception, said: list[str]) -> str:
    """LibRaw's error, with what it printed meanwhile ("Input/output error (unexpected end of file)")."""
    message = _libraw_message(exc)
    printed = [line for line in dict.fromkeys(said) if line.lower() not in message.lower()]
    return f"{message} ({'; '.join(printed)})" if printed else message


def _libraw_failure(path: Path, exc: Exception, said: list[str]) -> PhotoError:
    message = _libraw_reason(exc, said)
    if isinstance(exc, rawpy.LibRawUnsufficientMemoryError):
        return PhotoError(path, f"not enough memory for LibRaw to develop this RAW ({message})",
                          "lower max_pixels or free memory", permanent=False)
    version = ".".join(map(str, rawpy.libraw_version))
    return PhotoError(path, f"LibRaw cannot read this camera RAW file: {message}",
                      f"the file may be truncated, or from a camera LibRaw {version} does not know; copy it again, "
                      "or convert it to DNG with Adobe DNG Converter")


def _container_metadata(data: bytes) -> tuple[metadata.OutputExif, bytes | None]:
    """(descriptive EXIF, XMP packet) of a RAW that is a TIFF structure (DNG, CR2, NEF, ARW, PEF, ORF, RW2...).

    Read by Pillow like a TIFF's: allow-listed IFD0 tags, the Exif IFD
    (makernote included) and GPS IFD, and IFD0's XMP (rating, keywords,
    title...). Empty for other containers (CR3, RAF...) or when unreadable.
    """
    magic = _TIFF_MAGIC_FOR.get(data[:4])
    src = None if magic is None else metadata.read_exif(data if magic == data[:4] else magic + data[4:])
    if src is None:
        return metadata.OutputExif(), None
    xmp = src.get(700)
    return metadata.reduce_exif(src), bytes(xmp) if isinstance(xmp, (bytes, bytearray)) and xmp else None


def _preview_exif(raw) -> metadata.OutputExif:
    """The EXIF of the RAW's embedded preview JPEG (where Fujifilm's RAF keeps it); empty when there is none."""
    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:  # no preview, or one LibRaw cannot extract: nothing to learn there
        return metadata.OutputExif()
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return metadata.OutputExif()
    try:
        with Image.open(io.BytesIO(thumb.data), formats=["JPEG"]) as preview:  # the header only
            src = metadata.read_exif(preview.info.get("exif"))
    except (*_DECODE_ERRORS, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return metadata.OutputExif()  # a preview we cannot parse costs only its EXIF
    return metadata.reduce_exif(src) if src is not None else metadata.OutputExif()


def _merge_exif(into: metadata.OutputExif, more: metadata.OutputExif) -> None:
    """Add the tags of `more` that `into` lacks."""
    for mine, theirs in ((into.ifd0, more.ifd0), (into.exif, more.exif), (into.gps, more.gps)):
        for tag, value in theirs.items():
            mine.setdefault(tag, value)


def _fill_from_libraw(exif: metadata.OutputExif, raw) -> None:
    """Add the camera settings LibRaw parsed (from makernotes too) where the RAW's EXIF lacks them.

    rawpy does not expose the camera's make and model; those come from the
    file's own EXIF (_container_metadata, _preview_exif).
    """
    try:
        other = getattr(raw, "other", None)  # RawPy.other and .lens are recent additions to rawpy
        lens = getattr(raw, "lens", None)
    except (OverflowError, OSError, ValueError):  # a timestamp datetime cannot hold
        other = lens = None
    found: dict[int, object] = {}
    if other is not None:
        iso = round(other.iso_speed)
        found = {_EXPOSURE_TIME: _rational(other.shutter_speed), _F_NUMBER: _rational(other.aperture),
                 _FOCAL_LENGTH: _rational(other.focal_length), _ISO: iso if 0 < iso < 65536 else None,
                 _DATE_ORIGINAL: _exif_date(other.timestamp)}
        if other.artist.strip():
            exif.ifd0.setdefault(_ARTIST, other.artist.strip())
    if lens is not None:
        found |= {_LENS_MAKE: lens.make.strip(), _LENS_MODEL: lens.model.strip()}
    for tag, value in found.items():
        if value:
            exif.exif.setdefault(tag, value)


def _rational(value: float):
    """A positive float from LibRaw as an EXIF rational (0.004 -> 1/250), or None when unknown (0)."""
    if not (value > 0 and math.isfinite(value)):
        return None
    # LibRaw keeps float32s: round to their precision first, so 1/250 comes back as 1/250.
    return TiffImagePlugin.IFDRational(Fraction(f"{value:.6g}").limit_denominator(10000))


def _exif_date(when) -> str | None:
    """EXIF's "YYYY:MM:DD HH:MM:SS" from LibRaw's timestamp (local time, as the camera's clock); None when unset."""
    try:
        return when.strftime("%Y:%m:%d %H:%M:%S") if when.timestamp() > 0 else None
    except (OverflowError, OSError, ValueError):
        return None
