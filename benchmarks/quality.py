"""What nst-watch makes: the default preset on real photos and styles, with the bundled weights.

    pip install -e '.[bench]'
    python benchmarks/quality.py --out out/quality            # 4 photos x 3 styles at 256 px
    python benchmarks/quality.py --set style_weight=3 --out out/sw3  # any preset setting, to compare

Stylises every photo in examples/photos with every style in examples/styles
using the default preset (--set overrides any of its settings), then writes
under --out:

- ``sheet.png``: one row per result, photo | style | result;
- ``grid.png``: the same results as a compact grid, the styles across the
  top and one row per photo (``docs/gallery.png`` is one);
- ``quality.md`` and ``quality.json``: per result, the paper's content and
  style terms, the luminance SSIM against the photo, iterations and seconds.

The terms are the paper's own (Gatys et al. 2016, eqs. 1, 4 and 5), on the
bundled VGG19 and unnormalised: content ``1/2 sum (F - P)^2`` at relu4_2;
style ``sum_l w_l / (4 N_l^2 M_l^2) sum (G_l - A_l)^2`` over relu1_1 ...
relu5_1 with ``w_l = 1/5`` and ``G = F F^T``. They are independent of the
engine's normalised loss, so settings that reweight it are judged alike.
SSIM (scikit-image, Wang et al. 2004) compares luminance: 1 is the photo
unchanged, near 0 nothing of its structure left.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nst_watch.config import Preset, with_overrides  # noqa: E402
from nst_watch.darkroom import to_tensor  # noqa: E402
from nst_watch.engine import Engine, FeatureExtractor  # noqa: E402
from nst_watch.engine.pyramid import fit_long_edge, resize  # noqa: E402
from nst_watch.photo import load_photo  # noqa: E402

PAPER_CONTENT = "relu4_2"
PAPER_STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def paper_terms(extractor: FeatureExtractor, image: torch.Tensor, photo: torch.Tensor,
                style: torch.Tensor) -> tuple[float, float]:
    """(content, style) terms of Gatys et al. eqs. 1 and 5 for [3, H, W] images in [0, 1]."""
    with torch.no_grad():
        x = extractor(image[None])
        p = extractor(resize(photo[None], tuple(image.shape[-2:])))
        a = extractor(style[None])
    content = 0.5 * float(((x[PAPER_CONTENT] - p[PAPER_CONTENT]) ** 2).sum())
    total = 0.0
    for layer in PAPER_STYLE:
        f, s = x[layer][0].flatten(1).double(), a[layer][0].flatten(1).double()
        n, m = f.shape
        gram, target = f @ f.T, (s @ s.T) * (m / s.shape[1])  # the style's Gram at the output's size
        total += float(((gram - target) ** 2).sum()) / (4 * n**2 * m**2) / len(PAPER_STYLE)
    return content, total


def luminance_ssim(image: torch.Tensor, photo: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    reference = resize(photo[None], tuple(image.shape[-2:]))[0]
    a, b = ((t * LUMA).sum(0).numpy() for t in (image, reference))
    return float(structural_similarity(a, b, data_range=1.0))


def contact_sheet(rows: list[tuple[Image.Image, Image.Image, Image.Image, str]], height: int) -> Image.Image:
    """photo | style | result per row, scaled to `height`, with a caption under each row."""
    caption = 14
    scaled = [[im.resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS)
               for im in row[:3]] + [row[3]] for row in rows]
    width = max(sum(im.width for im in row[:3]) + 8 for row in scaled)
    sheet = Image.new("RGB", (width, len(rows) * (height + caption + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(scaled):
        x, y = 0, r * (height + caption + 4)
        for im in row[:3]:
            sheet.paste(im.convert("RGB"), (x, y))
            x += im.width + 4
        draw.text((2, y + height + 1), row[3], fill=(40, 40, 40))
    return sheet


def grid(photos: list[Image.Image], styles: list[Image.Image], results: list[list[Image.Image]],
         cell: int) -> Image.Image:
    """Styles across the top, then one row per photo: the photo, then its result with each style."""
    def fit(im: Image.Image) -> Image.Image:
        im = im.convert("RGB")
        im.thumbnail((cell, cell), Image.LANCZOS)
        return im

    gap = 3
    rows = [[None, *map(fit, styles)]]
    rows += [[fit(im) for im in (photo, *row)] for photo, row in zip(photos, results)]
    heights = [max(t.height for t in row if t is not None) for row in rows]
    sheet = Image.new("RGB", ((len(styles) + 1) * (cell + gap), sum(heights) + gap * len(rows)), "white")
    y = 0
    for row, height in zip(rows, heights):
        for c, tile in enumerate(row):
            if tile is not None:
                sheet.paste(tile, (c * (cell + gap) + (cell - tile.width) // 2, y + (height - tile.height) // 2))
        y += height + gap
    return sheet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, nargs="*", default=sorted((ROOT / "examples/photos").glob("*.jpg")))
    parser.add_argument("--styles", type=Path, nargs="*", default=sorted((ROOT / "examples/styles").glob("*.jpg")))
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "quality")
    parser.add_argument("--size", type=int, default=256, help="output long edge (the preset default is 512)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sheet-height", type=int, default=160, help="row height of sheet.png")
    parser.add_argument("--grid-cell", type=int, default=160, help="cell size of grid.png")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset setting, e.g. --set style_weight=3 (YAML value syntax)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    engine = Engine(device=args.device)  # the default: the bundled original VGG19
    extractor = FeatureExtractor(engine.features, [PAPER_CONTENT, *PAPER_STYLE], engine.preprocess)
    photos = {p: to_tensor(load_photo(p).pixels) for p in args.photos}
    args.out.mkdir(parents=True, exist_ok=True)

    records, rows = [], []
    by_photo: dict[Path, list[Image.Image]] = {p: [] for p in photos}
    for style_path in args.styles:
        style = to_tensor(load_photo(style_path).pixels)
        preset = with_overrides(Preset(name=style_path.stem, styles=[str(style_path)], size=args.size), **overrides)
        t = time.perf_counter()
        results = engine.stylize(list(photos.values()), preset, [style])
        batch_seconds = time.perf_counter() - t
        for (photo_path, photo), result in zip(photos.items(), results):
            hw = fit_long_edge(*result.image.shape[-2:], max(1, round(args.size * preset.style_scale)))
            scaled_style = resize(style[None].to(torch.float32), hw)[0]
            content, style_term = paper_terms(extractor, result.image.to(engine.device), photo.to(engine.device),
                                              scaled_style.to(engine.device))
            ssim = luminance_ssim(result.image, photo)
            record = {"photo": photo_path.name, "style": style_path.name, "size": list(result.image.shape[-2:]),
                      "paper_content": content, "paper_style": style_term, "luminance_ssim": ssim,
                      "iterations": result.iterations, "seconds": result.seconds}
            records.append(record)
            name = f"{photo_path.stem}-{style_path.stem}.png"
            pixels = (result.image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(args.out / name)
            by_photo[photo_path].append(Image.fromarray(pixels))
            rows.append((Image.open(photo_path), Image.open(style_path), Image.fromarray(pixels),
                         f"{photo_path.stem} x {style_path.stem}: SSIM {ssim:.2f}, {result.iterations} it"))
            print(f"{photo_path.name:16} {style_path.name:18} content {content:10.4g} style {style_term:10.4g} "
                  f"SSIM {ssim:.3f}  {result.iterations} it  {result.seconds:.0f}s", flush=True)
        print(f"# {style_path.name}: {len(photos)} photos in {batch_seconds:.0f}s", flush=True)

    contact_sheet(rows, args.sheet_height).save(args.out / "sheet.png")
    grid([Image.open(p) for p in photos], [Image.open(s) for s in args.styles], list(by_photo.values()),
         args.grid_cell).save(args.out / "grid.png")
    summary = {"preset": with_overrides(Preset(name="default", styles=["x"], size=args.size), **overrides)
               .model_dump(mode="json", exclude={"styles", "output", "name"}),
               "weights": engine.weights.source, "device": str(engine.device), "results": records}
    (args.out / "quality.json").write_text(json.dumps(summary, indent=2))
    lines = ["| photo | style | paper content | paper style | luminance SSIM | iterations | seconds |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['photo']} | {r['style']} | {r['paper_content']:.4g} | {r['paper_style']:.4g} | "
              f"{r['luminance_ssim']:.3f} | {r['iterations']} | {r['seconds']:.0f} |" for r in records]
    mean = {k: float(np.mean([r[k] for r in records])) for k in ("luminance_ssim", "iterations", "seconds")}
    lines.append(f"| **mean** | | | | {mean['luminance_ssim']:.3f} | {mean['iterations']:.0f} | "
                 f"{mean['seconds']:.0f} |")
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out / 'sheet.png'}, grid.png, quality.md and quality.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
