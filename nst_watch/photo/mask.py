"""Masks: a painted image beside a photo that says where each style goes (Gatys et al. 2017, spatial control).

A mask file is read with the photo decoder (:func:`load_photo`: orientation,
16 bits, greyscale, palette, alpha and ICC profiles as for photos) and turned
into region weights, float32 [R, h, w]: R regions in the order of
`Preset.region_list()`, each pixel's weights in [0, 1] summing to 1. The
engine resamples them to the output (nst_watch.engine.guidance), so a mask
may be any size with the photo's aspect ratio. No torch here: the watcher
imports this module.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import Preset, deepest, min_edge
from ..errors import MaskError, PhotoError
from .decode import load_photo

MASK_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP")
TOLERANCE = 40.0  # 8-bit RGB distance that counts as a region's colour (JPEG and antialiasing noise)
EDGE_RADIUS = 8  # px around a stray pixel searched for the regions that meet there (see _mend_edges)
RINGING = 0.5  # overshoot past an edge, as a share of the step between its regions' YCbCr values (JPEG q40+)
MAX_MENDED = 0.05  # more stray pixels than this share of the mask are a colour of its own, not artefacts
SIMPLE_SNAP = 12 / 255  # simple case: luminance this close to black or white counts as pure
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's convert("L")
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])  # JPEG's
_SIMPLE = [("style", (255, 255, 255)), ("photo", (0, 0, 0))]

RegionSpec = Sequence[tuple]  # (name, (r, g, b), ...) per region, as Preset.region_list() gives


@dataclass
class Mask:
    """A decoded mask: region weights for one photo.

    `weights`: float32 [R, h, w], upright, R regions in the order of
    `Preset.region_list()`, each pixel's weights in [0, 1] summing to 1.
    `sha256` is of the file's bytes; `notes` what the decoder converted.
    """

    path: Path
    weights: np.ndarray  # float32 [R, h, w]
    sha256: str
    notes: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return self.weights.shape[2]

    @property
    def height(self) -> int:
        return self.weights.shape[1]


def load_mask(path, preset_or_regions: Preset | RegionSpec, photo_size: tuple[int, int] | None = None,
              max_pixels: int = 100_000_000) -> Mask:
    """Read the mask file `path` into region weights for a photo of `photo_size` = (width, height) px.

    `preset_or_regions`: the preset (its `region_list()`), or such a list of
    (name, (r, g, b), ...) per region. Colours are compared as 8-bit sRGB,
    after the decoder's conversion (orientation applied, grey and palette
    expanded, 16 bits read and rounded, other ICC profiles converted).

    Colour rules:

    - Simple case (a preset without `regions`, or the regions
      [("style", white), ("photo", black)]): the weight of "style" is the
      mask's luminance (BT.601 luma of the sRGB values, 0-1), the rest is
      "photo"; greys blend. Luminance within 12/255 of black or white counts
      as pure (stretched linearly in between, so mid grey stays 0.5);
      transparent pixels count as black (keep the photo).
    - Named regions: a pixel within TOLERANCE (40 in 8-bit RGB distance, or
      half the distance between the two closest region colours if less) of a
      region's colour belongs to that region. A pixel lying within the
      tolerance of the segment between two region colours (a soft or
      antialiased edge) blends those two by its position on the segment
      (stretched past the two pure ends); one inside the triangle of three
      colours (where three regions meet) blends all three. A pixel of
      another colour where two regions meet, within their YCbCr range
      widened for ringing (JPEG and resampling artefacts; see
      `_mend_edges`), takes its nearest known pixels' weights (noted). Alpha
      is ignored. Any other colour is a MaskError naming the colour, how
      many pixels, an example position (x, y) in the upright mask, and the
      regions' colours.

    `photo_size`: when given, a mask whose aspect ratio differs from the
    photo's by more than 1 px of rounding at the mask's size is a MaskError
    (a different size with the same aspect is fine: the engine resamples).
    `max_pixels` bounds the mask as for photos.

    Returns a Mask whose weights are float32 [R, h, w] in [0, 1], summing to
    1 over R. Raises MaskError (naming the file, with a fix) for an
    unreadable file, a colour no region names, or the wrong aspect ratio.
    """
    path = Path(path)
    regions = _regions(preset_or_regions)
    try:
        image = load_photo(path, max_pixels=max_pixels, formats=MASK_FORMATS)
    except PhotoError as exc:
        raise MaskError(path, f"cannot be read as a mask: {exc.reason}", exc.fix or
                        "export the mask as PNG, TIFF or JPEG", permanent=exc.permanent) from None
    height, width = image.pixels.shape[:2]
    if photo_size is not None:
        _check_aspect(path, (width, height), photo_size)
    notes = list(image.notes)
    if [(name, tuple(colour)) for name, colour, *_ in regions] == _SIMPLE:
        luma = image.pixels @ _LUMA
        if image.alpha is not None:
            luma = luma * image.alpha
            notes.append("transparent pixels of the mask count as black (keep the photo)")
        style = np.clip((luma - SIMPLE_SNAP) / (1 - 2 * SIMPLE_SNAP), 0, 1).astype(np.float32)
        weights = np.stack([style, 1 - style])
    else:
        if image.alpha is not None:
            notes.append("the mask's alpha channel is ignored: only its colours name regions")
        weights = _region_weights(path, image.pixels, regions, preset_or_regions, notes)
    return Mask(path=path, weights=weights, sha256=image.sha256, notes=notes)


def check_regions(mask: Mask, preset: Preset, output_hw: tuple[int, int]) -> None:
    """MaskError for a region of `mask` with pixels but too few to carry a style at `output_hw` = (height, width).

    The engine's own check (Engine._check_regions), made before the engine
    loads: a region covering at least 1 output px but less than one position
    of the deepest style layer (its stride squared: 16x16 px for relu5_1)
    gets no style term there. Area is measured as the region's share of the
    mask times the output's pixels.
    """
    layer = deepest(preset.style_layers)
    stride = min_edge([layer])
    out_h, out_w = output_hw
    areas = mask.weights.mean(axis=(1, 2), dtype=np.float64) * out_h * out_w
    for (name, colour, _), area in zip(preset.region_list(), areas):
        if 1 <= area < stride * stride:
            side = max(1, round(stride * mask.width / out_w))
            raise MaskError(
                mask.path, f"region {name!r} ({_hex(colour)}) covers {area:.0f} px of the {out_w}x{out_h} output, "
                f"less than one position of layer {layer} ({stride}x{stride} px), so it cannot carry a style",
                f"paint it at least {stride}x{stride} px at the output size ({side}x{side} px in this "
                f"{mask.width}x{mask.height} mask) or not at all, raise size, or leave {layer} out of style_layers")


# --- colours -> weights ------------------------------------------------------------


def _regions(preset_or_regions) -> list[tuple]:
    if isinstance(preset_or_regions, Preset):
        return preset_or_regions.region_list()
    return [tuple(region) for region in preset_or_regions]


def _hex(colour) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in colour)


def _check_aspect(path: Path, mask_size: tuple[int, int], photo_size: tuple[int, int]) -> None:
    (w, h), (pw, ph) = mask_size, photo_size
    if abs(h - w * ph / pw) <= 1 or abs(w - h * pw / ph) <= 1:
        return
    same = f"{w}x{max(1, round(w * ph / pw))}"
    raise MaskError(
        path, f"the mask is {w}x{h} px but the photo is {pw}x{ph}: its aspect ratio ({w / h:.3f}) differs from "
        f"the photo's ({pw / ph:.3f}), so its regions would not lie over the photo",
        f"export the mask at the photo's shape, uncropped: {pw}x{ph}, or any size with that aspect such as {same}")


def _region_weights(path: Path, pixels: np.ndarray, regions: list[tuple], preset_or_regions,
                    notes: list[str]) -> np.ndarray:
    """float32 [R, h, w] from HxWx3 sRGB in [0, 1] by the named-region rules (see load_mask)."""
    rgb8 = np.rint(pixels * 255).astype(np.uint8)
    codes = (rgb8[..., 0].astype(np.uint32) << 16) | (rgb8[..., 1].astype(np.uint32) << 8) | rgb8[..., 2]
    present = np.flatnonzero(np.bincount(codes.ravel(), minlength=1 << 24))  # the colours used: O(pixels)
    colours = np.stack([present >> 16, (present >> 8) & 255, present & 255], axis=1).astype(np.float64)
    palette = np.array([colour for _, colour, *_ in regions], dtype=np.float64)
    table, known = _colour_weights(colours, palette)
    lookup = np.zeros(1 << 24, np.int32)
    lookup[present] = np.arange(len(present))
    index = lookup[codes]  # [h, w]: each pixel's colour among `present`
    weights = np.stack([column[index] for column in table.astype(np.float32).T])
    if not known.all():
        stray = ~known[index]
        left = _mend_edges(weights, stray, rgb8, palette)
        if left.any():
            _unknown(path, regions, preset_or_regions, codes, left)
        notes.append(f"{int(stray.sum())} px along region edges were no region's colour (compression or "
                     "resampling artefacts) and took their nearest neighbours' regions")
    return weights


def _mend_edges(weights: np.ndarray, stray: np.ndarray, rgb8: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Give each stray pixel lying where regions meet the mean weights of its nearest known pixels, in place.

    JPEG's halved colour resolution and resampling filters make colours
    along an edge between saturated regions that lie on no segment between
    them. A stray pixel is taken for such an artefact where pixels mostly
    (half or more) of one region and pixels mostly of another lie within
    EDGE_RADIUS px (a JPEG block), and its colour lies within their YCbCr
    bounds widened by TOLERANCE or RINGING times their span (JPEG keeps luma
    sharp, averages chroma and rings past a step in proportion to it;
    filters blend and overshoot). A speck amid one region, a colour far from those
    around it, or a pixel far from known ones is paint. `rgb8`: the mask,
    HxWx3 in 0-255; `palette`: region colours [R, 3]. Returns the stray
    pixels left unexplained ([h, w] bool).
    """
    ys, xs = np.nonzero(stray)
    if len(ys) > MAX_MENDED * stray.size:
        return stray  # too many to be edge artefacts: a colour of its own
    r, (height, width) = len(weights), stray.shape
    total, seen = np.zeros((r, len(ys)), np.float32), np.zeros((r, len(ys)), bool)
    mean = np.zeros((r, len(ys)), np.float32)  # over the nearest ring of known pixels, filled ring by ring
    for ring in range(1, EDGE_RADIUS + 1):
        for dy in range(-ring, ring + 1):
            for dx in range(-ring, ring + 1):
                if max(abs(dy), abs(dx)) != ring:
                    continue
                y, x = ys + dy, xs + dx
                inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
                y, x = np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)
                w = weights[:, y, x] * inside  # stray pixels' weights are 0 until mended
                total += w
                seen |= w >= 0.5
        first = (mean.sum(axis=0) == 0) & (total.sum(axis=0) > 0)
        mean[:, first] = total[:, first] / total[:, first].sum(axis=0)
    edge = seen.sum(axis=0) >= 2
    ycc, colour = palette @ _YCC.T, rgb8[ys, xs] @ _YCC.T  # [R, 3], [N, 3]
    low = np.where(seen[..., None], ycc[:, None], np.inf).min(axis=0)
    high = np.where(seen[..., None], ycc[:, None], -np.inf).max(axis=0)
    slack = np.maximum(TOLERANCE, RINGING * (high - low))  # ringing grows with the step between the regions
    edge &= ((colour >= low - slack) & (colour <= high + slack)).all(axis=1)
    weights[:, ys[edge], xs[edge]] = mean[:, edge]
    left = np.zeros_like(stray)
    left[ys[~edge], xs[~edge]] = True
    return left


def _colour_weights(colours: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per colour ([K, 3], 0-255) its weights over the palette ([R, 3]) -> ([K, R], known [K] bool)."""
    k, r = len(colours), len(palette)
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(palette, 2)]
    tol = min([TOLERANCE, *(g / 2 for g in gaps)])
    table = np.zeros((k, r))
    distance = np.linalg.norm(colours[:, None, :] - palette[None], axis=2)  # [K, R]
    nearest = distance.argmin(axis=1)
    known = distance[np.arange(k), nearest] <= tol
    table[np.flatnonzero(known), nearest[known]] = 1
    best = np.full(k, np.inf)  # a soft edge: near the segment between two region colours
    for i, j in itertools.combinations(range(r), 2):
        a, b = palette[i], palette[j]
        span = np.linalg.norm(b - a)
        t = np.clip((colours - a) @ (b - a) / span**2, 0, 1)
        off = np.linalg.norm(colours - (a + t[:, None] * (b - a)), axis=1)
        take = ~known & (off <= tol) & (off < best)
        s = np.clip((t * span - tol) / (span - 2 * tol), 0, 1) if span > 2 * tol + 1e-9 else t
        table[take] = 0
        table[take, i], table[take, j] = 1 - s[take], s[take]
        best[take] = off[take]
    known |= np.isfinite(best)
    for i, j, m in itertools.combinations(range(r), 3):  # where three regions meet
        a, edges = palette[i], np.stack([palette[j] - palette[i], palette[m] - palette[i]], axis=1)  # [3, 2]
        gram = edges.T @ edges
        if abs(np.linalg.det(gram)) < 1e-6:
            continue  # three colours on one line: the segments cover it
        uv = np.linalg.solve(gram, edges.T @ (colours - a).T).T  # [K, 2]
        bary = np.column_stack([1 - uv.sum(axis=1), uv])
        off = np.linalg.norm(colours - a - uv @ edges.T, axis=1)
        take = ~known & (bary >= 0).all(axis=1) & (off <= tol)
        table[take] = 0
        table[np.ix_(take, [i, j, m])] = bary[take]
        known |= take
    return table, known


def _unknown(path, regions, preset_or_regions, codes: np.ndarray, left: np.ndarray) -> None:
    """MaskError for the stray pixels `left` ([h, w] bool): the commonest colour, where, and the fix."""
    colours, counts = np.unique(codes[left], return_counts=True)
    worst = int(colours[counts.argmax()])
    colour = _hex((worst >> 16, (worst >> 8) & 255, worst & 255))
    y, x = (int(v[0]) for v in np.nonzero(left & (codes == worst)))
    total, others = int(counts.sum()), len(colours) - 1
    named = ", ".join(f"{name} {_hex(c)}" + (" (keeps the photo)" if rest and rest[0] is None else "")
                      for name, c, *rest in regions)
    where = f"preset {preset_or_regions.name!r}" if isinstance(preset_or_regions, Preset) else "the preset"
    more = f", and {others} other such colour{'s' if others > 1 else ''}" if others else ""
    raise MaskError(
        path, f"{total} px are a colour no region names: {colour} ({int(counts.max())} px, e.g. at x={x}, y={y})"
        f"{more}. The regions of {where}: {named}",
        f"paint every pixel with one of these colours (soft edges between two of them blend), or add a region "
        f"with color: '{colour}' to {where}")
