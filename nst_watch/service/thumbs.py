"""Before/after thumbnails of finished jobs, and their masks, for the web view.

`state_dir/thumbs/<job id>-before.jpg` (the decoded photo: upright sRGB),
`<job id>-after.jpg` (the result) and, for a job with a mask,
`<job id>-mask.jpg` (the mask as its regions' colours paint it, soft edges
blended: `mask_picture`): JPEGs of at most EDGE px on the long side,
written by the worker when a job completes, each through the publish path
(nst_watch.service.publish: staged, fsynced, then renamed over an older one
of the same job: the web view never serves half a file). Only the newest
KEEP jobs' thumbnails are kept. The file name is built from the job's number
and a fixed word only, so no text from a web request reaches the filesystem.

Torch-free: pixels arrive as numpy arrays (HxWx3 float in [0, 1]); the web
view (in the torch-free watcher too) imports this module for the paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .publish import write_file

EDGE = 256  # long edge: sharp on a high-density screen at the page's 128 CSS px
QUALITY = 85
KEEP = 500  # jobs whose thumbnails are kept (about 20 KB each): ~20 MB at most
KINDS = ("before", "after", "mask")
_NAME = re.compile(r"\.?(\d+)-(?:before|after|mask)\.jpg(?:\.tmp)?")


def thumbs_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "thumbs"


def thumb_path(state_dir: Path, job_id: int, kind: str) -> Path:
    """The thumbnail file of one job: from the integer and one of KINDS only (ValueError otherwise)."""
    if kind not in KINDS:
        raise ValueError(f"thumbnail kind {kind!r} is not one of {', '.join(KINDS)}")
    return thumbs_dir(state_dir) / f"{int(job_id)}-{kind}.jpg"


def write_thumbs(state_dir: Path, job_id: int, before: np.ndarray, after: np.ndarray, *,
                 mask: np.ndarray | None = None, keep: int = KEEP) -> None:
    """Write a job's thumbnails (the mask's too when `mask` is given), then drop those of all but the newest
    `keep` jobs.

    PhotoError (a full disk, permissions) with no partial file left; OSError from pruning.
    """
    for kind, pixels in zip(KINDS, (before, after, mask)):
        if pixels is None:
            continue
        image = _small(pixels)
        # The temp name carries the job: a killed write's file is the worker's to clean at its next start.
        write_file(thumb_path(state_dir, job_id, kind), lambda f: image.save(f, format="JPEG", quality=QUALITY),
                   "overwrite", temp=f"thumb-{int(job_id)}-{kind}")
    prune(state_dir, keep)


def mask_picture(weights: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """A mask's region weights ([R, h, w], summing to 1 per pixel) as an HxWx3 picture in [0, 1]: each pixel the
    blend of its regions' colours (0-255 RGB, one per region, in the same order), as the mask was painted."""
    palette = np.asarray(colours, dtype=np.float32) / 255.0
    return np.einsum("rhw,rc->hwc", np.asarray(weights, dtype=np.float32), palette)


def _small(pixels: np.ndarray) -> Image.Image:
    """An 8-bit RGB image of at most EDGE px on the long side."""
    # Decimate first, keeping twice the final size for the filter: a 24 MP
    # photo never becomes a full-size 8-bit copy just to be shrunk.
    step = max(1, max(pixels.shape[:2]) // (2 * EDGE))
    small = np.asarray(pixels[::step, ::step, :3], dtype=np.float32)
    image = Image.fromarray(np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8))
    image.thumbnail((EDGE, EDGE), Image.Resampling.LANCZOS)  # never enlarges
    return image


def prune(state_dir: Path, keep: int = KEEP) -> int:
    """Remove the thumbnails (and leftover temp files) of all but the `keep` jobs written last; how many files."""
    newest: dict[int, float] = {}
    files: dict[int, list[str]] = {}
    try:
        entries = list(os.scandir(thumbs_dir(state_dir)))
    except FileNotFoundError:
        return 0
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None:
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:  # another worker pruned it
            continue
        job = int(match[1])
        files.setdefault(job, []).append(entry.path)
        newest[job] = max(newest.get(job, mtime), mtime)
    removed = 0
    for job in sorted(newest, key=newest.__getitem__, reverse=True)[keep:]:
        for path in files[job]:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
