"""Spatial control on real photos (issue 22): what a mask keeps, what it styles, and what it costs.

    pip install -e '.[bench]'
    python benchmarks/masks.py --out out/masks                 # 256 px, the figures
    python benchmarks/masks.py --size 512 --out out/masks512   # the gallery's size

Two photos, each with a painted mask from examples/masked/ (made by
examples/make_examples.py), on the bundled weights with the default preset:

- portrait: astronaut.jpg, the simple case (white: impasto; black, the face
  and hair: the photo itself; a feathered edge between them);
- landscape: summer-palace.jpg, two named regions: sky (blue) in impasto,
  ground (green) in stained glass, with an antialiased edge.

Each is also run without a mask (the whole photo in each style), and the
script reports, per photo:

- **keep SSIM**: luminance SSIM (scikit-image, Wang et al. 2004) of the
  result against the photo, averaged over the pixels a mask keeps fully
  (weight >= 0.99), next to the same figure for the unmasked run;
- **style ratio**: in each styled region, the paper's style term (Gatys et
  al. 2016 eq. 5, with each Gram taken over the region's positions only,
  Gatys et al. 2017, and normalised by their number) of the masked result,
  divided by the same term of the unmasked run in that style on the same
  pixels: 1.0 is as stylised as an unmasked run, 1.2 is 20 % short of it;
- **time ratio**: the masked run's seconds per iteration over the unmasked
  run's (the same photo, size and iterations: `--timing-iterations` with
  early stop off, each timed twice, alternating, the faster kept), and the
  default runs' total seconds.

Writes ``masks.md`` and ``masks.json``, the results at full size, and
``sheet.png``: photo | mask | style(s) | unmasked | masked per photo
(``docs/masks.png`` is one).
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

from nst_watch.config import Preset  # noqa: E402
from nst_watch.darkroom import to_tensor  # noqa: E402
from nst_watch.engine import Engine, FeatureExtractor  # noqa: E402
from nst_watch.engine.guidance import at_layers, resize_weights  # noqa: E402
from nst_watch.engine.pyramid import fit_long_edge, resize  # noqa: E402
from nst_watch.photo import load_mask, load_photo  # noqa: E402

PAPER_STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
STYLES = ROOT / "examples" / "styles"
MASKED = ROOT / "examples" / "masked"


def cases(size: int) -> list[dict]:
    impasto, glass = str(STYLES / "impasto.jpg"), str(STYLES / "stained-glass.jpg")
    return [
        {"name": "portrait", "photo": ROOT / "examples/photos/astronaut.jpg", "mask": MASKED / "astronaut.mask.png",
         "preset": Preset(name="portrait", styles=[impasto], size=size)},
        {"name": "landscape", "photo": MASKED / "summer-palace.jpg", "mask": MASKED / "summer-palace.mask.png",
         "preset": Preset(name="landscape", size=size, regions={
             "sky": {"color": "#0000ff", "styles": [impasto]},
             "ground": {"color": "#00ff00", "styles": [glass]}})},
    ]


def region_style_term(extractor: FeatureExtractor, image: torch.Tensor, style: torch.Tensor,
                      weights: torch.Tensor) -> float:
    """The paper's style term (eq. 5, mean-normalised Grams) over the positions `weights` [h, w] selects."""
    with torch.no_grad():
        x = extractor(image[None])
        a = extractor(style[None])
    guide = at_layers(resize_weights(torch.stack([weights, 1 - weights])[None].to(image), image.shape[-2:]),
                      PAPER_STYLE)
    total = 0.0
    for layer in PAPER_STYLE:
        t = guide[layer][0, 0].flatten().double()
        f, s = x[layer][0].flatten(1).double(), a[layer][0].flatten(1).double()
        gram = (f * t) @ (f * t).T / float((t * t).sum())
        target = s @ s.T / s.shape[1]
        total += float(((gram - target) ** 2).sum()) / (4 * f.shape[0] ** 2) / len(PAPER_STYLE)
    return total


def region_ssim(image: torch.Tensor, photo: torch.Tensor, keep: torch.Tensor) -> float:
    """Luminance SSIM of `image` against `photo`, averaged over the pixels where `keep` >= 0.99."""
    from skimage.metrics import structural_similarity

    reference = resize(photo[None], tuple(image.shape[-2:]))[0]
    a, b = ((t * LUMA).sum(0).numpy() for t in (image, reference))
    _, full = structural_similarity(a, b, data_range=1.0, full=True)
    inside = resize(keep[None, None], tuple(image.shape[-2:]))[0, 0].numpy() >= 0.99
    return float(full[inside].mean())


def timed(engine: Engine, photo, preset, styles, mask, iterations: int) -> float:
    """Seconds per iteration of one run of `iterations` at the full size only, early stop off."""
    fixed = preset.model_copy(update={"iterations": iterations, "pyramid": None, "early_stop": None})
    t = time.perf_counter()
    [result] = engine.stylize([photo], fixed, styles, masks=[mask])
    return (time.perf_counter() - t) / max(1, result.iterations)


def to_image(t: torch.Tensor) -> Image.Image:
    return Image.fromarray((t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def sheet(rows: list[tuple[list[Image.Image], str]], height: int) -> Image.Image:
    """Per row: the images scaled to `height`, side by side, with a caption under them."""
    caption, gap = 14, 4
    scaled = [[im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS)
               for im in images] for images, _ in rows]
    width = max(sum(im.width + gap for im in row) for row in scaled)
    out = Image.new("RGB", (width, len(rows) * (height + caption + gap)), "white")
    draw = ImageDraw.Draw(out)
    for r, (row, (_, text)) in enumerate(zip(scaled, rows)):
        x, y = 0, r * (height + caption + gap)
        for im in row:
            out.paste(im, (x, y))
            draw.rectangle((x, y, x + im.width - 1, y + height - 1), outline=(160, 160, 160))  # a white mask's edge
            x += im.width + gap
        draw.text((2, y + height + 1), text, fill=(40, 40, 40))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "masks")
    parser.add_argument("--size", type=int, default=256, help="output long edge")
    parser.add_argument("--timing-iterations", type=int, default=30, help="0: skip the timing runs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sheet-height", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    engine = Engine(device=args.device)  # the bundled original VGG19
    extractor = FeatureExtractor(engine.features, PAPER_STYLE, engine.preprocess)
    args.out.mkdir(parents=True, exist_ok=True)
    records, rows = [], []
    for case in cases(args.size):
        preset: Preset = case["preset"]
        loaded = load_photo(case["photo"])
        photo = to_tensor(loaded.pixels)
        mask = load_mask(case["mask"], preset, (loaded.width, loaded.height))
        weights = torch.from_numpy(mask.weights)
        images = [Image.open(s.path) for s in preset.style_images()]
        styles = [to_tensor(load_photo(s.path).pixels) for s in preset.style_images()]
        t = time.perf_counter()
        [masked] = engine.stylize([photo], preset, styles, masks=[weights])
        masked_seconds = time.perf_counter() - t
        record = {"photo": case["photo"].name, "size": list(masked.image.shape[-2:]), "regions": {},
                  "masked": {"seconds": masked_seconds, "iterations": masked.iterations}, "unmasked": {}}
        unmasked = {}
        for r, (name, _, group) in enumerate(preset.region_list()):
            if group is None:
                continue
            # One unmasked run per styled region, in that region's style(s), on the whole photo.
            plain = Preset(name=f"{case['name']}-{name}", styles=[{"path": str(s.path), "weight": s.weight}
                                                                  for s in group], size=args.size)
            own = [to_tensor(load_photo(s.path).pixels) for s in group]
            t = time.perf_counter()
            [unmasked[name]] = engine.stylize([photo], plain, own)
            record["unmasked"][name] = {"seconds": time.perf_counter() - t, "iterations": unmasked[name].iterations}
            region = weights[r]
            scaled_style = own[0]  # style_scale 1: the style at the output's long edge, as the engine sees it
            scaled_style = resize(scaled_style[None], fit_long_edge(*scaled_style.shape[-2:], args.size))[0]
            ours = region_style_term(extractor, masked.image, scaled_style, region)
            theirs = region_style_term(extractor, unmasked[name].image, scaled_style, region)
            record["regions"][name] = {"style_masked": ours, "style_unmasked": theirs, "style_ratio": ours / theirs}
        for r, (name, _, group) in enumerate(preset.region_list()):
            if group is None and float(weights[r].max()) >= 0.99:
                first = next(iter(unmasked.values()))
                record["regions"][name] = {"keep_ssim": region_ssim(masked.image, photo, weights[r]),
                                           "unmasked_ssim": region_ssim(first.image, photo, weights[r])}
        if args.timing_iterations:
            first_style = next(name for name, _, g in preset.region_list() if g is not None)
            plain_preset = Preset(name="plain", styles=[str(preset.region_list()[0][2][0].path)], size=args.size)
            plain_style = [styles[0]]
            plain, guided = [], []
            for _ in range(2):
                plain.append(timed(engine, photo, plain_preset, plain_style, None, args.timing_iterations))
                guided.append(timed(engine, photo, preset, styles, weights, args.timing_iterations))
            record["timing"] = {"iterations": args.timing_iterations, "plain_s_per_it": min(plain),
                                "masked_s_per_it": min(guided), "ratio": min(guided) / min(plain),
                                "plain_region": first_style}
        records.append(record)
        to_image(masked.image).save(args.out / f"{case['name']}-masked.png")
        for name, result in unmasked.items():
            to_image(result.image).save(args.out / f"{case['name']}-{name}-unmasked.png")
        shown = Image.open(case["mask"])
        text = f"{case['name']}: photo | mask | style(s) | unmasked ({next(iter(unmasked))}) | masked"
        rows.append(([Image.open(case["photo"]), shown, *images, to_image(next(iter(unmasked.values())).image),
                      to_image(masked.image)], text))
        print(json.dumps(record, indent=1), flush=True)
    sheet(rows, args.sheet_height).save(args.out / "sheet.png")
    (args.out / "masks.json").write_text(json.dumps({"device": str(engine.device), "size": args.size,
                                                    "weights": engine.weights.source, "results": records}, indent=2))
    lines = ["| photo | region | keep SSIM (unmasked) | style ratio masked/unmasked | s/it ratio masked/plain |",
             "|---|---|---|---|---|"]
    for record in records:
        ratio = record.get("timing", {}).get("ratio")
        for name, region in record["regions"].items():
            keep = f"{region['keep_ssim']:.3f} ({region['unmasked_ssim']:.3f})" if "keep_ssim" in region else ""
            style = f"{region['style_ratio']:.3f}" if "style_ratio" in region else ""
            lines.append(f"| {record['photo']} | {name} | {keep} | {style} | "
                         f"{'' if ratio is None else f'{ratio:.2f}'} |")
    (args.out / "masks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
