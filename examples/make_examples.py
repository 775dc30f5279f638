"""Regenerates the example style images and copies the example photos.

    python examples/make_examples.py [--skimage-data DIR]

Styles (ours, CC0, made here so nothing needs a download):

- ``styles/impasto.jpg``: a painting in thick, short brush strokes that follow
  a swirling flow field, in a night-sky palette; each stroke has a lit and a
  shaded edge, as paint laid on with a loaded brush has.
- ``styles/stained-glass.jpg``: jewel-coloured glass panes with streaks and
  bubbles, held by dark lead lines.

Photos and the third style come from scikit-image's bundled sample data
(public domain or CC0, see SOURCES); with ``--skimage-data`` pointing at
``skimage/data`` (``pip download scikit-image`` and unzip the wheel) they are
re-exported at the sizes the repository keeps.

Masks (``masked/``, for spatial control and ``benchmarks/masks.py``; need
scipy, which scikit-image brings):

- ``masked/astronaut.mask.png``: the simple case, white background (styled)
  and black face and hair (kept), an ellipse feathered over ~10 px, as a
  retoucher paints it;
- ``masked/summer-palace.mask.png``: two regions, sky blue (#0000ff) and
  ground green (#00ff00), antialiased between them: the bright, smooth,
  bluish pixels connected to the top edge, cleaned up and grown into the
  bright pixels beside them, then blurred by 1.2 px.
  ``masked/summer-palace.jpg`` is scikit-learn's ``china.jpg`` (CC BY 2.0,
  see SOURCES); ``--sklearn-images`` points at ``sklearn/datasets/images``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent

NIGHT = [(18, 32, 84), (30, 60, 130), (52, 94, 170), (90, 140, 200), (220, 190, 60), (245, 220, 110),
         (200, 120, 30), (16, 40, 40), (60, 80, 60), (235, 235, 210)]


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Value noise: a coarse random grid, bicubically enlarged to size x size, in [-1, 1]."""
    coarse = rng.uniform(-1, 1, (scale, scale)).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(image)


def impasto(size: int = 512, seed: int = 11) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Colour layout: bands of sky, a glowing moon and swirls, darker ground.
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    swirl = _smooth_noise(rng, size, 6) + 0.5 * _smooth_noise(rng, size, 12)
    angle = np.pi * swirl + 2.0 * np.sin(3 * y + 2 * x)
    moon = np.exp(-(((x - 0.72) ** 2 + (y - 0.25) ** 2) / 0.012))
    for sx, sy in rng.uniform([0.05, 0.05], [0.95, 0.6], (7, 2)):  # stars
        moon += 0.8 * np.exp(-(((x - sx) ** 2 + (y - sy) ** 2) / 0.002))
    level = np.clip(0.35 + 0.25 * np.sin(6 * x + 4 * swirl) + 0.6 * moon - 0.5 * (y > 0.7 + 0.08 * swirl), 0, 0.999)
    canvas = Image.new("RGB", (size, size), NIGHT[1])
    draw = ImageDraw.Draw(canvas)
    for _ in range(9000):
        px, py = rng.uniform(0, size, 2)
        i, j = int(py) % size, int(px) % size
        band = int(level[i, j] * 6)
        base = np.array(NIGHT[[0, 1, 2, 3, 5, 4][band] if y[i, j] < 0.7 + 0.08 * swirl[i, j] else [7, 8, 6, 7, 8, 6][band]])
        colour = np.clip(base + rng.normal(0, 14, 3), 0, 255)
        points = [(px, py)]
        for _ in range(int(rng.integers(3, 7))):
            a = angle[int(points[-1][1]) % size, int(points[-1][0]) % size]
            points.append((points[-1][0] + 4 * np.cos(a), points[-1][1] + 4 * np.sin(a)))
        width = int(rng.integers(4, 8))
        shade = tuple(int(c) for c in colour * 0.6)
        light = tuple(int(c) for c in np.minimum(colour * 1.25 + 20, 255))
        draw.line([(p[0] + 1, p[1] + 1) for p in points], fill=shade, width=width, joint="curve")
        draw.line(points, fill=tuple(int(c) for c in colour), width=width - 1, joint="curve")
        draw.line([(p[0] - 1, p[1] - 1) for p in points], fill=light, width=1)
    return canvas.filter(ImageFilter.SMOOTH)


def stained_glass(size: int = 512, seed: int = 5, panes: int = 220) -> Image.Image:
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, size, (panes, 2)).astype(np.float32)
    palette = np.array([(150, 20, 30), (20, 60, 150), (30, 120, 60), (210, 160, 30), (110, 30, 120),
                        (20, 130, 150), (200, 80, 20), (230, 210, 150)], dtype=np.float32)
    colours = palette[rng.integers(len(palette), size=panes)] * rng.uniform(0.75, 1.15, (panes, 1))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    wobble = 6 * _smooth_noise(rng, size, 16)
    points = np.stack([x + wobble, y - wobble], -1).reshape(-1, 1, 2)
    nearest = np.empty(size * size, np.int64)
    gap = np.empty(size * size, np.float32)
    for start in range(0, size * size, 16384):  # chunks keep the distance matrix small
        d = np.sqrt(((points[start:start + 16384] - seeds[None]) ** 2).sum(-1))
        two = np.partition(d, 1, axis=1)[:, :2]
        nearest[start:start + 16384] = d.argmin(1)
        gap[start:start + 16384] = two[:, 1] - two[:, 0]
    glass = colours[nearest].reshape(size, size, 3)
    streaks = 1 + 0.18 * _smooth_noise(rng, size, 40)[..., None] + rng.normal(0, 0.04, (size, size, 1))
    glass = glass * streaks
    lead = (gap.reshape(size, size) < 3.2)[..., None]
    image = np.where(lead, np.array([25, 22, 20], np.float32), glass)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)


SKIMAGE = {  # file in skimage/data -> (name here, long edge)
    "astronaut.png": ("photos/astronaut.jpg", 512),
    "coffee.png": ("photos/coffee.jpg", 512),
    "chelsea.png": ("photos/chelsea.jpg", 451),
    "rocket.jpg": ("photos/rocket.jpg", 512),
    "ihc.png": ("styles/micrograph.jpg", 512),
}


def copy_skimage(data: Path) -> None:
    for name, (target, edge) in SKIMAGE.items():
        with Image.open(data / name) as image:
            image = image.convert("RGB")
            image.thumbnail((edge, edge), Image.LANCZOS)
            dest = HERE / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.suffix == ".jpg":
                image.save(dest, quality=90, subsampling=0)
            else:
                image.save(dest, optimize=True)


def portrait_mask(photo: Path) -> Image.Image:
    """White everywhere but a feathered black ellipse over the astronaut's face and hair."""
    from scipy import ndimage

    with Image.open(photo) as image:
        w, h = image.size
    y, x = np.mgrid[0:h, 0:w]
    face = ((x - 226 * w / 512) / (74 * w / 512)) ** 2 + ((y - 92 * h / 512) / (84 * h / 512)) ** 2 <= 1
    white = 1 - ndimage.gaussian_filter(face.astype(np.float32), 5)
    return Image.fromarray((white * 255).round().astype(np.uint8), "L")


def sky_mask(photo: Path) -> Image.Image:
    """Sky blue (#0000ff) and ground green (#00ff00), antialiased between them (see the module docstring)."""
    from scipy import ndimage

    with Image.open(photo) as image:
        rgb = np.asarray(image.convert("RGB"), np.float32) / 255
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    std = np.sqrt(np.clip(ndimage.uniform_filter(lum**2, 5) - ndimage.uniform_filter(lum, 5) ** 2, 0, None))
    skyish = (lum > 0.55) & (rgb[..., 2] >= rgb[..., 0] - 0.02)
    labels, _ = ndimage.label(skyish & (std < 0.02))
    sky = np.isin(labels, list(set(np.unique(labels[0])) - {0}))
    pad = 6  # edge padding keeps the morphology from eating the frame's border
    sky = np.pad(sky, pad, mode="edge")
    sky = ndimage.binary_closing(sky, iterations=3)
    sky = ndimage.binary_opening(ndimage.binary_fill_holes(sky), iterations=2)[pad:-pad, pad:-pad]
    sky = ndimage.binary_dilation(sky, iterations=3, mask=skyish)
    soft = ndimage.gaussian_filter(sky.astype(np.float32), 1.2)
    out = np.zeros((*soft.shape, 3), np.float32)
    out[..., 2], out[..., 1] = soft, 1 - soft
    return Image.fromarray((out * 255).round().astype(np.uint8))


def masks(sklearn_images: Path | None) -> None:
    folder = HERE / "masked"
    folder.mkdir(exist_ok=True)
    if sklearn_images:
        with Image.open(sklearn_images / "china.jpg") as image:
            image = image.convert("RGB")
            image.thumbnail((512, 512), Image.LANCZOS)
            image.save(folder / "summer-palace.jpg", quality=90, subsampling=0)
    portrait_mask(HERE / "photos" / "astronaut.jpg").save(folder / "astronaut.mask.png", optimize=True)
    if (folder / "summer-palace.jpg").exists():
        sky_mask(folder / "summer-palace.jpg").save(folder / "summer-palace.mask.png", optimize=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skimage-data", type=Path, help="scikit-image's skimage/data folder")
    parser.add_argument("--sklearn-images", type=Path, help="scikit-learn's sklearn/datasets/images folder")
    args = parser.parse_args()
    (HERE / "styles").mkdir(exist_ok=True)
    impasto().save(HERE / "styles" / "impasto.jpg", quality=92, subsampling=0)
    stained_glass().save(HERE / "styles" / "stained-glass.jpg", quality=92, subsampling=0)
    if args.skimage_data:
        copy_skimage(args.skimage_data)
    masks(args.sklearn_images)
