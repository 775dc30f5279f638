"""Colour management: whatever comes in becomes sRGB for the network.

8-bit images are converted by LittleCMS through Pillow's ImageCms. Pillow has no
16-bit RGB image mode, so ImageCms cannot touch 16-bit pixels; for those we
evaluate matrix/TRC profiles (Adobe RGB, ProPhoto, Display P3 and nearly every
RGB working space are of this kind) in float32 with numpy. That needs the
colorants and tone curves, which Pillow does not expose, so `_Shaper` reads
those few tags. LUT-based RGB profiles and CMYK at 16 bits fall back to an
8-bit ImageCms conversion, and the caller is told (never silently).
"""

from __future__ import annotations

import functools
import io
import struct

import numpy as np
from PIL import Image, ImageCms



@functools.cache
def srgb_profile() -> ImageCms.ImageCmsProfile:
    """LittleCMS's built-in sRGB, the space the network works in."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.cache
def srgb_bytes() -> bytes:
    """The sRGB profile as embedded in outputs."""
    return srgb_profile().tobytes()


def open_profile(icc: bytes | None) -> ImageCms.ImageCmsProfile | None:
    """Parse embedded ICC bytes; None when absent or unreadable."""
    if not icc:
        return None
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, OSError, TypeError, ValueError):
        return None


def describe(profile: ImageCms.ImageCmsProfile) -> str:
    """Human-readable profile name, e.g. "Adobe RGB (1998)"."""
    try:
        text = ImageCms.getProfileDescription(profile).strip()
    except ImageCms.PyCMSError:
        text = ""
    return text or "unnamed ICC profile"


def space_of(profile: ImageCms.ImageCmsProfile) -> str:
    """The profile's device colour space: "RGB", "CMYK", "GRAY", ..."""
    return profile.profile.xcolor_space.strip()


def is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    """Every sRGB variant in the wild says so in its description."""
    return space_of(profile) == "RGB" and "srgb" in describe(profile).lower()


def to_srgb_image(im: Image.Image, profile: ImageCms.ImageCmsProfile) -> Image.Image:
    """8-bit L/RGB/CMYK image in `profile` -> 8-bit RGB sRGB image (LittleCMS)."""
    return ImageCms.profileToProfile(im, profile, srgb_profile(), outputMode="RGB")


def from_srgb_image(im: Image.Image, profile: ImageCms.ImageCmsProfile) -> Image.Image:
    """8-bit sRGB RGB image -> the same picture in an RGB `profile`."""
    return ImageCms.profileToProfile(im, srgb_profile(), profile, outputMode="RGB")


# --- 16-bit matrix/TRC profiles in float --------------------------------------

# Tone curves become lookup tables with linear interpolation (np.interp's
# binary search is ten times slower on photos). Forward tables are uniform in
# the encoded value; inverse tables are uniform in cbrt(linear), which keeps
# the steep start of a gamma curve's inverse accurate in the deep shadows.
_SIZE = 65536
_UNIFORM = np.linspace(0.0, 1.0, _SIZE)
_DENSE = np.linspace(0.0, 1.0, 4 * _SIZE + 1) ** 3  # dense near 0, to invert by interpolation
_PARA_COUNTS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}


def _tag_table(icc: bytes) -> dict[bytes, bytes]:
    count = struct.unpack_from(">I", icc, 128)[0]
    tags = {}
    for i in range(count):
        sig, off, size = struct.unpack_from(">4sII", icc, 132 + 12 * i)
        tags[sig] = icc[off : off + size]
    return tags


def _xyz(data: bytes) -> np.ndarray:
    return np.array(struct.unpack_from(">3i", data, 8), dtype=np.float64) / 65536.0


def _curve(data: bytes, x: np.ndarray) -> np.ndarray:
    """A tone curve ('curv' or 'para' tag) evaluated at x, made monotonic."""
    kind = data[:4]
    if kind == b"curv":
        n = struct.unpack_from(">I", data, 8)[0]
        if n == 0:
            y = x
        elif n == 1:
            y = x ** (struct.unpack_from(">H", data, 12)[0] / 256.0)
        else:
            table = np.frombuffer(data, ">u2", n, 12) / 65535.0
            y = np.interp(x, np.linspace(0.0, 1.0, n), table)
    elif kind == b"para":
        ftype = struct.unpack_from(">H", data, 8)[0]
        p = [v / 65536.0 for v in struct.unpack_from(f">{_PARA_COUNTS[ftype]}i", data, 12)]
        y = _parametric(x, ftype, *p, *([0.0] * (7 - len(p))))
    else:
        raise ValueError(f"unsupported curve type {kind!r}")
    return np.maximum.accumulate(np.clip(y, 0.0, None))


def _parametric(x, ftype, g, a, b, c, d, e, f):
    """ICC parametricCurveType, functions 0-4 (ICC.1:2010 table 65)."""

    def power(v):
        return np.clip(v, 0.0, None) ** g

    if ftype == 0:
        return x**g
    if ftype == 1:
        return np.where(x >= -b / a, power(a * x + b), 0.0)
    if ftype == 2:
        return np.where(x >= -b / a, power(a * x + b) + c, c)
    if ftype == 3:
        return np.where(x >= d, power(a * x + b), c * x)
    return np.where(x >= d, power(a * x + b) + e, c * x + f)


def _lerp(table: np.ndarray, v: np.ndarray) -> np.ndarray:
    """table sampled uniformly on [0, 1], linearly interpolated at v."""
    pos = np.clip(v, 0.0, 1.0).astype(np.float32) * np.float32(len(table) - 1)
    i = np.minimum(pos.astype(np.int32), len(table) - 2)
    lo = table[i]
    return lo + (pos - i) * (table[i + 1] - lo)


class _Trc:
    """One channel's tone curve as forward and inverse lookup tables."""

    def __init__(self, data: bytes):
        self.forward = _curve(data, _UNIFORM).astype(np.float32)
        inverse = np.interp(_UNIFORM**3, _curve(data, _DENSE), _DENSE)
        self.inverse = inverse.astype(np.float32)

    def decode(self, v: np.ndarray) -> np.ndarray:
        return _lerp(self.forward, v)

    def encode(self, linear: np.ndarray) -> np.ndarray:
        return _lerp(self.inverse, np.cbrt(linear))


class Shaper:
    """A matrix/TRC profile: device RGB <-> PCS XYZ (D50), in float."""

    def __init__(self, matrix: np.ndarray, curves: list[_Trc]):
        self.matrix = matrix.astype(np.float32)  # columns are the D50 colorants
        self.inverse = np.linalg.inv(matrix).astype(np.float32)
        self.curves = curves

    @classmethod
    def parse(cls, icc: bytes | None) -> Shaper | None:
        """A Shaper for an RGB matrix/TRC or gray TRC profile, else None.

        Profiles with an A2B0 LUT are left to LittleCMS: it prefers the LUT.
        """
        try:
            tags = _tag_table(icc)
            space = icc[16:20]
            if b"A2B0" in tags:
                return None
            if space == b"GRAY":
                # Neutral grey maps to R=G=B in sRGB: reuse sRGB's primaries.
                return cls(srgb_shaper().matrix.astype(np.float64), [_Trc(tags[b"kTRC"])] * 3)
            if space != b"RGB ":
                return None
            return cls._from_tags(tags)
        except (KeyError, ValueError, TypeError, IndexError, struct.error, np.linalg.LinAlgError):
            return None

    @classmethod
    def _from_tags(cls, tags: dict[bytes, bytes]) -> Shaper:
        matrix = np.stack([_xyz(tags[s]) for s in (b"rXYZ", b"gXYZ", b"bXYZ")], axis=1)
        return cls(matrix, [_Trc(tags[s]) for s in (b"rTRC", b"gTRC", b"bTRC")])

    def to_xyz(self, rgb: np.ndarray) -> np.ndarray:
        lin = np.stack([c.decode(rgb[..., i]) for i, c in enumerate(self.curves)], -1)
        return lin @ self.matrix.T

    def from_xyz(self, xyz: np.ndarray) -> np.ndarray:
        lin = np.clip(xyz @ self.inverse.T, 0.0, 1.0)
        return np.stack([c.encode(lin[..., i]) for i, c in enumerate(self.curves)], -1)


@functools.cache
def srgb_shaper() -> Shaper:
    """sRGB read from LittleCMS's own profile, so both paths agree."""
    return Shaper._from_tags(_tag_table(srgb_bytes()))


def _blockwise(fn, rgb: np.ndarray) -> np.ndarray:
    """Apply `fn` a band of rows at a time, so temporaries stay small."""
    out = np.empty(rgb.shape, np.float32)
    step = max(1, 1_000_000 // max(1, rgb.shape[1]))
    for y in range(0, rgb.shape[0], step):
        out[y : y + step] = fn(rgb[y : y + step])
    return out


def shaper_to_srgb(rgb: np.ndarray, src: Shaper) -> np.ndarray:
    """Float HxWx3 in `src` -> float32 sRGB, clipped like LittleCMS does."""
    return _blockwise(lambda band: srgb_shaper().from_xyz(src.to_xyz(band)), rgb)


def srgb_to_shaper(rgb: np.ndarray, dst: Shaper) -> np.ndarray:
    """Float32 sRGB HxWx3 -> the same picture in `dst`, float32."""
    return _blockwise(lambda band: dst.from_xyz(srgb_shaper().to_xyz(band)), rgb)
