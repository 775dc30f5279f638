"""EXIF and XMP carried from a source photo to its stylised output.

The output is a new picture of the same scene, so the descriptive metadata
(camera, lens, exposure, dates, copyright, GPS unless stripped) is kept while
everything describing the old pixels is rewritten or dropped:

* Orientation becomes 1: pixels are stored upright, and a stale 6 or 8 would
  make viewers rotate the picture a second time (also fixed in XMP).
* Pixel dimensions (ExifImageWidth/Height, XMP PixelX/YDimension) are set to
  the output size.
* IFD0 is rebuilt from an allow-list, so no IFD1 and no embedded thumbnail
  (it would still show the unstylised photo), and no TIFF structure tags
  (StripOffsets...) leak from a TIFF source into a JPEG.

A JPEG holds EXIF and XMP in one marker segment each (at most 65535 bytes with
its header), while PNG, WebP and TIFF hold megabytes. :func:`fit_exif` and
:func:`fit_xmp` shrink metadata for such a limit: first the bulky, least
useful parts (a huge MakerNote or UserComment; Photoshop's DocumentAncestors,
edit history, thumbnails of the old pixels), keeping camera, lens, exposure
and dates; the whole block only if that is not enough.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from PIL import ExifTags, Image

ORIENTATION = 0x0112
MAKE = 0x010F
EXIF_IFD = 0x8769
GPS_IFD = 0x8825
INTEROP_IFD = 0xA005
EXIF_WIDTH, EXIF_HEIGHT = 0xA002, 0xA003

# JPEG marker segments: 65535 bytes including the 2-byte length field (Pillow's
# MAX_BYTES_IN_MARKER). EXIF bytes carry their b"Exif\0\0" header already; XMP
# shares its segment with the 29-byte namespace b"http://ns.adobe.com/xap/1.0/\0".
JPEG_EXIF_MAX = 65533
JPEG_XMP_MAX = 65533 - 29
# Tags whose values are at most this many bytes are never trimmed one by one:
# camera, lens, exposure and date tags are all far smaller.
_TRIM_ABOVE = 64

# Descriptive IFD0 tags worth keeping. ASCII ones can also go into a TIFF IFD0.
IFD0_ASCII = {
    0x010E: "ImageDescription",
    0x010F: "Make",
    0x0110: "Model",
    0x0131: "Software",
    0x0132: "DateTime",
    0x013B: "Artist",
    0x013C: "HostComputer",
    0x8298: "Copyright",
}
IFD0_OTHER = {0x011A, 0x011B, 0x0128, 0x4746, 0x4749, 0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F}


@dataclass
class OutputExif:
    """The EXIF an output gets, as three tag dicts (IFD0, Exif IFD, GPS IFD)."""

    ifd0: dict[int, object] = field(default_factory=dict)
    exif: dict[int, object] = field(default_factory=dict)
    gps: dict[int, object] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """APP1-style b"Exif\\0\\0" + TIFF blob, for Pillow's exif= argument."""
        out = Image.Exif()
        for tag, value in self.ifd0.items():
            out[tag] = value
        if self.exif:
            out[EXIF_IFD] = self.exif
        if self.gps:
            out[GPS_IFD] = self.gps
        return out.tobytes()


def read_exif(raw: bytes | None) -> Image.Exif | None:
    """Parse EXIF bytes; None when absent or unreadable."""
    if not raw:
        return None
    exif = Image.Exif()
    try:
        exif.load(raw)
        exif.get_ifd(EXIF_IFD)  # parse now, so broken sub-IFDs fail here
    except Exception:  # Pillow raises a zoo of types on corrupt EXIF
        return None
    return exif


def reduce_exif(src: Image.Exif) -> OutputExif:
    """The descriptive part of `src`: allow-listed IFD0 tags, Exif and GPS IFDs."""
    out = OutputExif()
    out.ifd0 = {t: src[t] for t in (ORIENTATION, *IFD0_ASCII, *IFD0_OTHER) if t in src}
    out.exif = dict(_safe_ifd(src, EXIF_IFD))
    if INTEROP_IFD in out.exif:  # an offset into the old blob: copy it as a dict
        interop = _safe_ifd(src, INTEROP_IFD)
        if interop:
            out.exif[INTEROP_IFD] = interop
        else:
            del out.exif[INTEROP_IFD]
    out.gps = dict(_safe_ifd(src, GPS_IFD))
    return out


def output_exif(raw: bytes | None, width: int, height: int, strip_gps: bool) -> OutputExif:
    """The metadata for an upright output of width x height from source EXIF `raw`."""
    src = read_exif(raw)
    if src is None:
        return OutputExif()
    out = reduce_exif(src)
    out.ifd0[ORIENTATION] = 1
    out.exif[EXIF_WIDTH], out.exif[EXIF_HEIGHT] = width, height
    if strip_gps:
        out.gps = {}
    return out


def fit_exif(exif: OutputExif, limit: int | None) -> tuple[bytes | None, list[str]]:
    """Serialise `exif` into at most `limit` bytes -> (bytes or None, names of what was dropped).

    The largest tag values over 64 bytes go first (MakerNote, UserComment...),
    one at a time, until the rest fits; if even that is too big, the whole
    EXIF is dropped (None, ["all EXIF"]). `limit` None means no limit. The
    tags left in `exif` after the call are those written. Exceptions from
    Pillow's serialiser propagate (the caller reports them).
    """
    raw = exif.to_bytes()
    dropped: list[str] = []
    while limit is not None and len(raw) > limit:
        sizes = [(_value_size(v), name, ifd, tag) for name, ifd in (("", exif.ifd0), ("", exif.exif), ("GPS", exif.gps))
                 for tag, v in ifd.items() if tag != INTEROP_IFD]
        sizes = [entry for entry in sizes if entry[0] > _TRIM_ABOVE]
        if not sizes:
            exif.ifd0, exif.exif, exif.gps = {}, {}, {}
            return None, dropped + ["all EXIF"]
        size, group, ifd, tag = max(sizes, key=lambda entry: entry[0])
        del ifd[tag]
        names = ExifTags.GPSTAGS if group == "GPS" else ExifTags.TAGS
        dropped.append(f"{group}{names.get(tag, f'tag {tag:#06x}')} ({size} bytes)")
        raw = exif.to_bytes()
    return raw, dropped


def _value_size(value) -> int:
    """Roughly the bytes `value` takes in an IFD (only the order matters)."""
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace"))
    if isinstance(value, (tuple, list)):
        return sum(_value_size(v) for v in value)
    if isinstance(value, dict):
        return sum(_value_size(v) for v in value.values())
    return 8


def _safe_ifd(exif: Image.Exif, tag: int) -> dict:
    try:
        return exif.get_ifd(tag)
    except Exception:
        return {}


# --- XMP ----------------------------------------------------------------------


def _xmp_set(xmp: bytes, name: bytes, value: int) -> bytes:
    """Set an XMP property written as attribute (a="v") or element (<a>v</a>)."""
    val = str(value).encode()
    xmp = re.sub(rb"(" + name + rb"""=["'])[^"']*(["'])""", rb"\g<1>" + val + rb"\g<2>", xmp)
    return re.sub(rb"(<" + name + rb">)[^<]*(</" + name + rb">)", rb"\g<1>" + val + rb"\g<2>", xmp)


def _xmp_drop_gps(xmp: bytes) -> bytes:
    xmp = re.sub(rb"""\s(exif:GPS\w+)=(["'])[^"']*\2""", b"", xmp)
    return re.sub(rb"<(exif:GPS\w+)\b[^>]*?(/>|>.*?</\1>)", b"", xmp, flags=re.S)


def output_xmp(xmp: bytes | None, width: int, height: int, strip_gps: bool) -> bytes | None:
    """Source XMP with orientation, pixel dimensions (and GPS) brought up to date."""
    if not xmp:
        return None
    xmp = _xmp_set(xmp, rb"tiff:Orientation", 1)
    for name, value in ((rb"exif:PixelXDimension", width), (rb"exif:PixelYDimension", height),
                        (rb"tiff:ImageWidth", width), (rb"tiff:ImageLength", height)):
        xmp = _xmp_set(xmp, name, value)
    return _xmp_drop_gps(xmp) if strip_gps else xmp


# Bulky XMP properties that say nothing about the new picture, most useless first:
# ids of every document ever pasted in, thumbnails of the old pixels, edit logs.
XMP_BULK = (rb"photoshop:DocumentAncestors", rb"xmp:Thumbnails", rb"xap:Thumbnails", rb"xmpMM:Pantry",
            rb"xmpMM:History", rb"xmpMM:Ingredients", rb"xmpMM:Manifest", rb"xmpMM:DerivedFrom")


def _xmp_drop(xmp: bytes, name: bytes) -> bytes:
    """Remove property `name`, written as element (<a>...</a>, <a/>) or attribute (a="v")."""
    xmp = re.sub(rb"<(" + name + rb")\b[^>]*?(/>|>.*?</\1\s*>)", b"", xmp, flags=re.S)
    return re.sub(rb"""\s""" + name + rb"""=(["'])[^"']*\1""", b"", xmp)


def fit_xmp(xmp: bytes | None, limit: int | None) -> tuple[bytes | None, list[str]]:
    """`xmp` shrunk to at most `limit` bytes -> (packet or None, names of what was dropped).

    The packet's whitespace padding goes first (it only exists for in-place
    editing, and losing it loses nothing), then the XMP_BULK properties in
    order until it fits; if still too big, the whole packet (None, ["all XMP"]).
    """
    if not xmp or limit is None or len(xmp) <= limit:
        return xmp, []
    xmp = re.sub(rb"\s+(<\?xpacket end=)", rb"\1", xmp)
    dropped: list[str] = []
    for name in XMP_BULK:
        if len(xmp) <= limit:
            break
        smaller = _xmp_drop(xmp, name)
        if len(smaller) < len(xmp):
            dropped.append(f"{name.decode()} ({len(xmp) - len(smaller)} bytes)")
            xmp = smaller
    if len(xmp) > limit:
        return None, dropped + ["all XMP"]
    return xmp, dropped
