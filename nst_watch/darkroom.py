"""Where photos meet the engine: load through nst_watch.photo, stylise, write.

Shared by `nst-watch stylize` and the daemon's worker. The engine sees only
tensors; every read and write goes through the photo module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, photo as photo_io
from .config import EngineSettings, Preset
from .engine import Engine, StylizeResult
from .errors import NstWatchError, PhotoError
from .progress import ProgressDisplay

log = logging.getLogger("nst_watch.darkroom")

EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "tiff": "tif"}
FORMAT_OF_SUFFIX = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff"}


@dataclass
class FileResult:
    """What happened to one content file."""

    content: Path
    output: Path | None = None
    error: str | None = None
    loss: float | None = None
    content_loss: float | None = None
    style_loss: float | None = None
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["content"] = str(self.content)
        data["output"] = str(self.output) if self.output else None
        return data


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float()


def to_pixels(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32))


class Darkroom:
    """A resident engine plus the photo I/O around it."""

    def __init__(self, settings: EngineSettings, *, max_pixels: int = 100_000_000, engine: Engine | None = None):
        self.settings = settings
        self.max_pixels = max_pixels
        self.engine = engine or Engine.from_settings(settings)
        self._styles: dict[tuple, torch.Tensor] = {}

    def style_images(self, preset: Preset) -> list[torch.Tensor]:
        """The preset's style images as tensors, cached by path, size and mtime."""
        images = []
        for style in preset.styles:
            stat = style.path.stat() if style.path.exists() else None
            key = (str(style.path), stat.st_mtime_ns if stat else None, stat.st_size if stat else None)
            if key not in self._styles:
                try:
                    loaded = photo_io.load_photo(style.path, max_pixels=self.max_pixels)
                except PhotoError as exc:
                    raise NstWatchError(f"preset {preset.name!r}: style image {exc}") from None
                self._styles[key] = to_tensor(loaded.pixels)
            images.append(self._styles[key])
        return images

    def stylize_photos(self, photos: list[photo_io.Photo], preset: Preset, progress=None) -> list[StylizeResult]:
        styles = self.style_images(preset)
        return self.engine.stylize([to_tensor(p.pixels) for p in photos], preset, styles, progress=progress)

    def save(self, source: photo_io.Photo, result: StylizeResult, preset: Preset, *, dest: Path,
             collision: str = "suffix") -> photo_io.SaveResult | None:
        out = preset.output
        fmt = FORMAT_OF_SUFFIX.get(dest.suffix.lower(), out.format)
        sidecar = self.sidecar(source, result, preset) if out.sidecar else None
        return photo_io.save_photo(
            to_pixels(result.image), dest, source=source, format=fmt, quality=out.quality,
            bit_depth=out.bit_depth, icc=out.icc, strip_gps=out.strip_gps, collision=collision, sidecar=sidecar,
        )

    def sidecar(self, source: photo_io.Photo, result: StylizeResult, preset: Preset) -> dict[str, Any]:
        return {
            "nst_watch_version": __version__,
            "preset": preset.name,
            "preset_hash": preset.fingerprint(),
            "parameters": preset.model_dump(mode="json"),
            "engine": self.settings.model_dump(mode="json"),
            "device": str(self.engine.device),
            "content": str(source.path),
            "content_sha256": source.sha256,
            "losses": {"total": result.loss, "content": result.content, "style": result.style, "tv": result.tv},
            "iterations": result.iterations,
            "timings": result.timings,
            "notes": list(source.notes),
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        }

    def dest_for(self, source: photo_io.Photo, preset: Preset, result: StylizeResult, out_dir: Path,
                 template: str) -> Path:
        _, height, width = result.image.shape
        tokens = photo_io.photo_tokens(source, preset.name, width, height)
        tokens["ext"] = EXTENSIONS[preset.output.format]
        return photo_io.output_path(out_dir, template, tokens)

    def stylize_files(self, contents: list[Path], preset: Preset, *, output: Path | None, out_dir: Path,
                      template: str, collision: str = "suffix", batch: int = 4) -> list[FileResult]:
        """Stylise files; a bad photo is reported and skipped, the rest go on."""
        results: dict[Path, FileResult] = {}
        loaded: list[photo_io.Photo] = []
        for path in contents:
            try:
                loaded.append(photo_io.load_photo(path, max_pixels=self.max_pixels))
            except PhotoError as exc:
                log.error("%s", exc)
                results[path] = FileResult(path, error=str(exc))
        self.style_images(preset)  # fail early on a bad style image
        for start in range(0, len(loaded), max(1, batch)):
            group = loaded[start:start + max(1, batch)]
            label = group[0].path.name if len(group) == 1 else f"{len(group)} photos"
            t0 = time.perf_counter()
            with ProgressDisplay(f"{label} [{preset.name}]") as display:
                stylized = self.stylize_photos(group, preset, progress=display)
            for source, result in zip(group, stylized):
                results[source.path] = self._write(source, result, preset, output, out_dir, template, collision)
            log.info("stylised %s in %.1fs", label, time.perf_counter() - t0)
        return [results[p] for p in contents]

    def _write(self, source, result, preset, output, out_dir, template, collision) -> FileResult:
        record = FileResult(source.path, loss=result.loss, content_loss=result.content,
                            style_loss=result.style, seconds=result.seconds, notes=list(source.notes))
        try:
            dest = output if output else self.dest_for(source, preset, result, out_dir, template)
            saved = self.save(source, result, preset, dest=dest, collision=collision)
        except PhotoError as exc:
            log.error("%s", exc)
            record.error = str(exc)
            return record
        if saved is None:
            log.info("%s: output exists, skipped", source.path)
            return record
        record.output = saved.path
        record.notes += list(saved.notes)
        log.info("%s -> %s", source.path, saved.path)
        return record
