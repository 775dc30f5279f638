"""What makes a job unique: the photo's bytes, the preset, and the preset's hash."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from PIL import Image

from ..config import Preset

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=256)
def _style_digest(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(Path(path))


def preset_hash(preset: Preset) -> str:
    """Hash of everything that shapes a preset's output, style images' bytes included.

    Editing a preset (or replacing a style image under the same name) gives a
    new hash, so photos are processed again with the new look; a rescan of an
    unchanged preset never reprocesses anything.
    """
    styles = []
    for style in preset.styles:
        st = style.path.stat()
        styles.append(_style_digest(str(style.path), st.st_mtime_ns, st.st_size))
    data = {
        "settings": preset.fingerprint(),
        "styles": styles,
        "output": preset.output.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def size_bucket(path: Path, long_edge: int | str) -> str | None:
    """The output size a photo will have ("WxH"), read from its header only.

    Workers batch jobs of one bucket, since only same-size images share an
    optimisation. None when the header cannot be read (the worker reports why).
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if long_edge == "full":  # size: full keeps the photo's own pixels
        return f"{width}x{height}"
    scale = long_edge / max(width, height)
    return f"{max(1, round(width * scale))}x{max(1, round(height * scale))}"
