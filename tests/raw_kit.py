"""Camera RAW (DNG) and HEIC files made by the tests, and a check that a picture came out upright.

`make_dng` writes a Bayer (RGGB) DNG with tifffile that LibRaw develops: a
"camera" whose sensor sees linear sRGB (ColorMatrix1 = XYZ -> linear sRGB,
neutral AsShotNeutral), so the developed colours are the scene's. `make_heic`
writes a HEIC with pillow-heif, EXIF and ICC included. Both draw `scene()` by
default: red left half, blue right half, a white strip along the top, which
`layout_match` recognises in any output to tell whether it is upright.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, TiffImagePlugin

# XYZ (D65) -> linear sRGB, row by row: DNG's ColorMatrix maps XYZ to camera RGB.
XYZ_TO_SRGB = ((3.2404542, -1.5371385, -0.4985314), (-0.9692660, 1.8760108, 0.0415560),
               (0.0556434, -0.2040259, 1.0572252))
BLACK, WHITE = 256, 4095  # a 12-bit sensor with a black level
EXIF_IFD = 0x8769
_EXIF_PLACEHOLDER = 34664  # tifffile refuses to write 34665 itself; renamed once the Exif IFD is appended

R = TiffImagePlugin.IFDRational
# What a camera writes in the Exif IFD: exposure, aperture, ISO, date, focal length, lens.
CAMERA_EXIF = {0x829A: R(1, 250), 0x829D: R(28, 10), 0x8827: 400, 0x9003: "2024:05:06 07:08:09",
               0x920A: R(50, 1), 0xA434: "QA 50mm F1.8"}


def scene(width: int = 64, height: int = 48) -> np.ndarray:
    """Linear-light RGB float64 HxWx3: red left half, blue right half, white strip along the top."""
    rgb = np.zeros((height, width, 3))
    rgb[:, : width // 2] = (0.8, 0.04, 0.04)
    rgb[:, width // 2 :] = (0.04, 0.04, 0.8)
    rgb[: max(2, height // 6)] = 0.95
    return rgb


def shown(array: np.ndarray, orientation: int) -> np.ndarray:
    """`array` (stored pixels) as a viewer shows it for EXIF orientation 1, 3, 6 or 8."""
    turns = {1: 0, 3: 2, 6: -1, 8: 1}[orientation]  # np.rot90 counts counter-clockwise
    return np.rot90(array, turns)


def classes(rgb: np.ndarray) -> np.ndarray:
    """Per pixel of an sRGB [0, 1] picture: 0 red, 1 blue, 2 white (the colours of `scene`)."""
    white = rgb.min(axis=-1) > 0.7
    return np.where(white, 2, np.where(rgb[..., 0] > rgb[..., 2], 0, 1))


def layout_match(rgb: np.ndarray, orientation: int) -> float:
    """Share of `rgb`'s pixels whose colour class is the one `scene()`, shown upright, has there.

    `rgb` is any size (the scene is sampled at its resolution); 1.0 means
    every pixel agrees, a picture turned the wrong way scores about half.
    """
    want = classes(shown(scene(), orientation))
    h, w = rgb.shape[:2]
    rows = (np.arange(h) + 0.5) * want.shape[0] / h
    cols = (np.arange(w) + 0.5) * want.shape[1] / w
    want = want[rows.astype(int)][:, cols.astype(int)]
    return float((classes(rgb) == want).mean())


def _srational(values) -> tuple[int, ...]:
    return tuple(v for x in values for v in (round(x * 10000), 10000))


def make_dng(path, linear: np.ndarray | None = None, *, orientation: int = 1, make: str = "QA-Raw",
             model: str = "Sensor 1", exif: dict | None = CAMERA_EXIF, exif_in_ifd0: bool = False) -> Path:
    """Write a 16-bit RGGB DNG of `linear` (float HxWx3 in [0, 1], even sides; default `scene()`).

    `exif` tags go into an Exif IFD, as cameras write them, or, with
    `exif_in_ifd0`, into IFD0 where LibRaw reads them but an EXIF reader
    does not look. Returns `path`.
    """
    path = Path(path)
    linear = scene() if linear is None else linear
    cfa = np.empty(linear.shape[:2])
    cfa[0::2, 0::2] = linear[0::2, 0::2, 0]  # R G
    cfa[0::2, 1::2] = linear[0::2, 1::2, 1]  # G B
    cfa[1::2, 0::2] = linear[1::2, 0::2, 1]
    cfa[1::2, 1::2] = linear[1::2, 1::2, 2]
    mosaic = (BLACK + np.clip(cfa, 0, 1) * (WHITE - BLACK)).round().astype(np.uint16)
    tags = [
        (271, "s", 0, make, True), (272, "s", 0, model, True), (274, "H", 1, orientation, True),
        (33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True),  # CFARepeatPatternDim, CFAPattern
        (50706, "B", 4, (1, 4, 0, 0), True), (50707, "B", 4, (1, 1, 0, 0), True),  # DNG(Backward)Version
        (50708, "s", 0, f"{make} {model}", True),  # UniqueCameraModel
        (50714, "H", 1, BLACK, True), (50717, "H", 1, WHITE, True),  # BlackLevel, WhiteLevel
        (50721, "2i", 9, _srational(np.ravel(XYZ_TO_SRGB)), True),  # ColorMatrix1
        (50728, "2I", 3, (1, 1) * 3, True), (50778, "H", 1, 21, True),  # AsShotNeutral, CalibrationIlluminant1 D65
    ]
    if exif and exif_in_ifd0:
        tags += [_ifd0_tag(tag, value) for tag, value in exif.items()]
    elif exif:
        tags.append((_EXIF_PLACEHOLDER, "I", 1, 0, True))
    tifffile.imwrite(path, mosaic, photometric=32803, extratags=tags, metadata=None, software=False)  # 32803: CFA
    if exif and not exif_in_ifd0:
        _append_exif_ifd(path, exif)
    return path


def _ifd0_tag(tag: int, value) -> tuple:
    if isinstance(value, str):
        return (tag, "s", 0, value, True)
    if isinstance(value, TiffImagePlugin.IFDRational):
        return (tag, "2I", 1, (value.numerator, value.denominator), True)
    return (tag, "H", 1, value, True)


def _append_exif_ifd(path: Path, exif: dict) -> None:
    """Append an Exif IFD serialised by Pillow and point IFD0's placeholder entry at it."""
    with tifffile.TiffFile(path) as tif:
        order = tif.byteorder
        entry = tif.pages[0].tags[_EXIF_PLACEHOLDER].offset
    header = (b"II*\x00" if order == "<" else b"MM\x00*") + b"\x08\x00\x00\x00"
    ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=header, group=EXIF_IFD)
    for tag, value in exif.items():
        ifd[tag] = value
    with open(path, "r+b") as f:
        start = f.seek(0, 2)
        start += f.write(b"\x00" * (start % 2))  # IFDs start on a word boundary
        f.write(ifd.tobytes(start))
        f.seek(entry)
        f.write(struct.pack(order + "HHII", EXIF_IFD, 4, 1, start))  # tag, LONG, count 1, offset


def make_heic(path, rgb: np.ndarray | None = None, *, orientation: int = 6, make: str = "QA-Phone",
              model: str = "Pocket 9", icc: bytes | None = None, bit_depth: int = 8) -> Path:
    """Write a lossless HEIC of `rgb` (sRGB float HxWx3 in [0, 1]; default `scene()` in 8-bit sRGB).

    EXIF carries Make, Model and `orientation`; pillow-heif turns the
    orientation into the container's rotation box, as an iPhone's files have
    it. `bit_depth` 10 writes a 10-bit HEIC. Returns `path`.
    """
    import pillow_heif

    pillow_heif.register_heif_opener()  # Image.save(format="HEIF"), whether or not nst_watch was imported
    path = Path(path)
    rgb = np.clip(scene(), 0, 1) if rgb is None else rgb
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = make, model, orientation
    options = {"exif": exif.tobytes(), "quality": -1}  # -1: lossless
    if icc:
        options["icc_profile"] = icc
    if bit_depth == 8:
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path, format="HEIF", **options)
    else:
        data = (rgb * 65535).round().astype(np.uint16)
        heif = pillow_heif.from_bytes(mode="RGB;16", size=(rgb.shape[1], rgb.shape[0]), data=data.tobytes())
        heif.save(path, **options)  # 16-bit input is written with 10 bits (pillow-heif's default)
    return path
