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
from .config import EngineSettings, Preset, deepest, min_edge, style_size_problem, warn_enlarged_style
from .engine import Engine, StylizeResult, output_size
from .engine.pyramid import fit_size
from .errors import EngineError, PhotoError, PresetError
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
    mask: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["content"] = str(self.content)
        data["output"] = str(self.output) if self.output else None
        data["mask"] = str(self.mask) if self.mask else None
        return data


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float()


def to_pixels(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32))


def stylize_batch(engine: Engine, contents: list[torch.Tensor], preset: Preset, styles: list[torch.Tensor],
                  progress=None, resume=None, masks=None) -> list[StylizeResult | EngineError]:
    """`engine.stylize` on [3, H, W] tensors in [0, 1]: one result per content, in order.

    A photo the engine could not stylise gets its EngineError in its place. A
    batch that fails is run again one photo at a time, so one bad photo (say,
    a loss that turns non-finite, or a mask region too small) costs the
    others nothing. `resume` and `masks` are Engine.stylize's (one entry per
    content; masks: None or region weights [R, h, w]). Interrupted (from a
    progress callback's Stop) passes through. Shared by the local darkroom
    and the Ray actors (nst_watch.cluster).
    """
    resume = list(resume) if resume is not None else [None] * len(contents)
    masks = list(masks) if masks is not None else [None] * len(contents)
    try:
        return list(engine.stylize(contents, preset, styles, progress=progress, resume=resume, masks=masks))
    except EngineError as exc:
        if len(contents) == 1:
            return [exc]
        log.warning("a batch of %d photos failed (%s); running them one at a time", len(contents), exc)
    results: list[StylizeResult | EngineError] = []
    for i, tensor in enumerate(contents):
        try:
            results += engine.stylize([tensor], preset, styles, progress=progress, resume=[resume[i]],
                                      masks=[masks[i]])
        except EngineError as exc:
            results.append(exc)
    return results


class Darkroom:
    """A resident engine plus the photo I/O around it.

    The engine (VGG19 on its device) is loaded on first use, so photos and
    style images are checked before the seconds a load costs.
    """

    def __init__(self, settings: EngineSettings, *, max_pixels: int = 100_000_000, engine: Engine | None = None):
        self.settings = settings
        self.max_pixels = max_pixels
        self._engine = engine
        self._styles: dict[tuple, torch.Tensor] = {}

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine.from_settings(self.settings)
        return self._engine

    def style_images(self, preset: Preset) -> list[torch.Tensor]:
        """The preset's style images as tensors, cached by path, size and mtime.

        PresetError (naming the preset and the file) when one is missing,
        unreadable, or too small for the style layers at the preset's size;
        a warning (logged once) when one is enlarged so much that it blurs.
        """
        images = []
        for i, style in enumerate(preset.style_images()):
            stat = style.path.stat() if style.path.exists() else None
            key = (str(style.path), stat.st_mtime_ns if stat else None, stat.st_size if stat else None)
            if key not in self._styles:
                try:
                    loaded = photo_io.load_photo(style.path, max_pixels=self.max_pixels)
                except PhotoError as exc:
                    raise PresetError(f"preset {preset.name!r}: style image {exc}") from None
                self._styles[key] = to_tensor(loaded.pixels)
            image = self._styles[key]
            size = (image.shape[-1], image.shape[-2])
            problem = style_size_problem(preset, size)
            if problem:
                raise PresetError(f"preset {preset.name!r}: style image {style.path} {problem}")
            warn_enlarged_style(preset, style.path, size)  # once per process, as validation may have
            images.append(image)
        return images

    def check_fits(self, photo: photo_io.Photo, preset: Preset) -> None:
        """PhotoError (permanent) when `photo` is too thin for the preset's layers at its size."""
        layers = [*preset.content_layers, *preset.style_layers]
        need = min_edge(layers)
        out_h, out_w = output_size(photo.height, photo.width, preset)
        if min(out_h, out_w) < need:
            raise PhotoError(
                photo.path, f"{photo.width}x{photo.height} is {out_w}x{out_h} at size {preset.size}, too small for "
                f"layer {deepest(layers)}, which needs {need} px on the short edge",
                f"{fit_size(photo.height, photo.width, need)}",
            )

    def stylize_photos(self, photos: list[photo_io.Photo], preset: Preset, progress=None, resume=None,
                       masks: list[photo_io.Mask | None] | None = None) -> list[StylizeResult | EngineError]:
        """One result per photo, in order; a photo the engine could not stylise gets its EngineError.

        `resume`: one engine Resume (or None) per photo, to go on from an interrupted run.
        `masks`: one `photo.Mask` (from `photo.load_mask`) or None per photo;
        a region too small at the output size is that photo's EngineError.
        ValueError for a photo without a mask when the preset has regions
        and no styles of its own (stylize_files says so per photo instead).
        """
        tensors = None if masks is None else [None if m is None else torch.from_numpy(m.weights) for m in masks]
        return stylize_batch(self.engine, [to_tensor(p.pixels) for p in photos], preset, self.style_images(preset),
                             progress, resume, tensors)

    @property
    def device(self) -> str:
        """Where the optimisation runs, as the sidecar and status name it (loads the engine)."""
        return str(self.engine.device)

    def save(self, source: photo_io.Photo, result: StylizeResult, preset: Preset, *, dest: Path,
             collision: str = "suffix", temp: str | None = None,
             mask: photo_io.Mask | None = None) -> photo_io.SaveResult | None:
        out = preset.output
        fmt = FORMAT_OF_SUFFIX.get(dest.suffix.lower(), out.format)
        sidecar = self.sidecar(source, result, preset, mask=mask) if out.sidecar else None
        return photo_io.save_photo(
            to_pixels(result.image), dest, source=source, format=fmt, quality=out.quality,
            bit_depth=out.bit_depth, icc=out.icc, strip_gps=out.strip_gps, collision=collision, sidecar=sidecar,
            temp=temp,
        )

    def sidecar(self, source: photo_io.Photo, result: StylizeResult, preset: Preset,
                mask: photo_io.Mask | None = None) -> dict[str, Any]:
        """What the <output>.json holds; "mask": {"path", "sha256"} when `mask` shaped the result."""
        data = {
            "nst_watch_version": __version__,
            "preset": preset.name,
            "preset_hash": preset.fingerprint(),
            "parameters": preset.model_dump(mode="json"),
            "engine": self.settings.model_dump(mode="json"),
            "device": self.device,
            "content": str(source.path),
            "content_sha256": source.sha256,
            "losses": {"total": result.loss, "content": result.content, "style": result.style, "tv": result.tv},
            "iterations": result.iterations,
            "timings": result.timings,
            "notes": list(source.notes),
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        if mask is not None:
            data["mask"] = {"path": str(mask.path), "sha256": mask.sha256}
            data["notes"] += [f"mask: {note}" for note in mask.notes]
        return data

    def dest_for(self, source: photo_io.Photo, preset: Preset, result: StylizeResult, out_dir: Path,
                 template: str) -> Path:
        _, height, width = result.image.shape
        tokens = photo_io.photo_tokens(source, preset.name, width, height)
        tokens["ext"] = EXTENSIONS[preset.output.format]
        return photo_io.output_path(out_dir, template, tokens)

    def stylize_files(self, contents: list[Path], preset: Preset, *, output: Path | None, out_dir: Path,
                      template: str, collision: str = "suffix", batch: int = 4,
                      masks: list[Path | None] | None = None) -> list[FileResult]:
        """Stylise files; a bad photo is reported and skipped, the rest go on.

        Every photo is read and checked, and the style images too
        (PresetError), before the engine is loaded; then the engine's memory
        budget, once for all photos (PresetError: Engine.check_budget).
        `masks`: one mask file (or None) per photo, in order (ValueError for
        another count), read with `photo.load_mask` and checked against its
        photo (`photo.check_regions`) before the engine loads; a bad mask, or
        none where the preset has regions and no styles of its own, is that
        photo's error.
        """
        masks = list(masks) if masks is not None else [None] * len(contents)
        if len(masks) != len(contents):
            raise ValueError(f"{len(masks)} masks for {len(contents)} photos: give one per photo, in order")
        results: dict[Path, FileResult] = {}
        loaded: list[photo_io.Photo] = []
        mask_of: dict[Path, photo_io.Mask | None] = {}
        for path, mask_path in zip(contents, masks):
            try:
                photo = photo_io.load_photo(path, max_pixels=self.max_pixels)
                self.check_fits(photo, preset)
                mask_of[photo.path] = self._mask_for(photo, mask_path, preset)
                loaded.append(photo)
            except PhotoError as exc:  # MaskError too: it names the mask
                log.error("%s", exc)
                results[path] = FileResult(path, error=str(exc), mask=mask_path)
        self.style_images(preset)  # fail early on a bad style image
        if loaded:
            self.engine.check_budget(preset)  # a budget no photo can meet is said once, not once per photo
        for start in range(0, len(loaded), max(1, batch)):
            group = loaded[start:start + max(1, batch)]
            label = group[0].path.name if len(group) == 1 else f"{len(group)} photos"
            t0 = time.perf_counter()
            with ProgressDisplay(f"{label} [{preset.name}]") as display:
                stylized = self.stylize_photos(group, preset, progress=display,
                                               masks=[mask_of[p.path] for p in group])
            for source, result in zip(group, stylized):
                mask = mask_of[source.path]
                if isinstance(result, EngineError):
                    log.error("%s: %s", source.path, result)
                    results[source.path] = FileResult(source.path, error=f"{source.path}: {result}",
                                                      mask=mask.path if mask else None)
                else:
                    results[source.path] = self._write(source, result, preset, output, out_dir, template, collision,
                                                       mask)
            done = [source for source in group if results[source.path].error is None]
            if done:  # never "stylised" for a photo whose error was just logged
                label = (done[0].path.name if len(done) == 1 else
                         f"{len(done)} photos" if len(done) == len(group) else f"{len(done)} of {len(group)} photos")
                log.info("stylised %s in %.1fs", label, time.perf_counter() - t0)
        return [results[p] for p in contents]

    def _mask_for(self, photo: photo_io.Photo, path: Path | None, preset: Preset) -> photo_io.Mask | None:
        """The mask file `path` read and checked for `photo` (MaskError), or None where the preset can do without.

        PhotoError (naming the photo) for no mask where the preset has regions and no styles of its own.
        """
        if path is None:
            if preset.regions is not None and not preset.styles:
                names = ", ".join(f"{name} #{'%02x%02x%02x' % colour}" for name, colour, _ in preset.region_list())
                raise PhotoError(photo.path, f"preset {preset.name!r} names regions ({names}) and no styles of its "
                                 "own, so this photo needs a mask",
                                 "paint a mask in those colours and give it with the photo (stylize --mask FILE)")
            return None
        mask = photo_io.load_mask(path, preset, (photo.width, photo.height), max_pixels=self.max_pixels)
        photo_io.check_regions(mask, preset, output_size(photo.height, photo.width, preset))
        for note in mask.notes:
            log.info("%s: %s", mask.path, note)
        return mask

    def _write(self, source, result, preset, output, out_dir, template, collision, mask=None) -> FileResult:
        record = FileResult(source.path, loss=result.loss, content_loss=result.content, style_loss=result.style,
                            seconds=result.seconds, notes=list(source.notes), mask=mask.path if mask else None)
        if mask is not None:
            record.notes += [f"mask: {note}" for note in mask.notes]
        try:
            dest = output if output else self.dest_for(source, preset, result, out_dir, template)
            saved = self.save(source, result, preset, dest=dest, collision=collision, mask=mask)
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
