"""What makes a job unique: the photo's bytes, the preset, the preset's hash, and the mask's bytes.

The ledger's key (nst_watch.jobs) is (photo sha256, preset name,
`preset_hash`, mask sha256): a mask is part of what the output looks like,
so a mask that arrives after its photo was queued, or is replaced by
another, makes a job of its own; the same mask dropped again does not. A
photo without a mask has none in its key, as before masks existed. Both
contents are hashed with `file_sha256` (the intake hashes from a descriptor
it checked, the same way).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from ..config import Preset
from ..photo.decode import displayed_size


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the intake's `_hash_regular` hashes the same way, from an fd it checked)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
    for style in preset.style_images():
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
        width, height, _ = displayed_size(path)
    except Exception:
        return None
    if long_edge == "full":  # size: full keeps the photo's own pixels
        return f"{width}x{height}"
    scale = long_edge / max(width, height)
    return f"{max(1, round(width * scale))}x{max(1, round(height * scale))}"
