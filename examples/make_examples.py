"""Regenerates the procedural example images shipped with nst-watch.

They exist so the README's commands work offline on a fresh clone; they are
not art. Run: python examples/make_examples.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent


def waves(size: int = 256) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    swirl = np.sin(14 * x + 6 * np.sin(9 * y)) * np.cos(11 * y + 4 * np.sin(7 * x))
    rgb = np.stack([0.15 + 0.2 * swirl, 0.35 + 0.3 * swirl, 0.65 + 0.3 * np.abs(swirl)], axis=-1)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def mosaic(size: int = 256, seed: int = 7) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), (30, 20, 10))
    draw = ImageDraw.Draw(image)
    palette = [(220, 160, 40), (180, 50, 30), (240, 220, 180), (60, 90, 140), (30, 120, 80)]
    for _ in range(400):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(4, 14))
        draw.rectangle([x - r, y - r, x + r, y + r], fill=palette[rng.integers(len(palette))], outline=(20, 15, 10))
    return image.filter(ImageFilter.SMOOTH)


def harbour(width: int = 320, height: int = 213, seed: int = 3) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([0.55 + 0.3 * y / height, 0.7 + 0.15 * y / height, 0.95 - 0.05 * y / height], axis=-1)
    sea = y > height * 0.6
    ripple = 0.04 * np.sin(x / 3 + rng.uniform(0, 6)) * np.sin(y / 2)
    sky[sea] = np.stack([0.1 + ripple, 0.3 + ripple, 0.5 + ripple], axis=-1)[sea]
    image = Image.fromarray((np.clip(sky, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for i in range(5):  # boats
        bx = 30 + i * 60
        by = int(height * 0.6) + 8
        draw.polygon([(bx, by), (bx + 40, by), (bx + 32, by + 10), (bx + 8, by + 10)], fill=(120, 40, 30))
        draw.line([(bx + 20, by), (bx + 20, by - 45)], fill=(40, 30, 20), width=2)
        draw.polygon([(bx + 21, by - 44), (bx + 21, by - 8), (bx + 40, by - 8)], fill=(240, 235, 220))
    return image


if __name__ == "__main__":
    waves().save(HERE / "styles" / "waves.png", optimize=True)
    mosaic().save(HERE / "styles" / "mosaic.png", optimize=True)
    harbour().save(HERE / "photos" / "harbour.jpg", quality=92)
