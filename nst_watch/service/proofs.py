"""Proofs, then finals: what a final needs of its proof, and the one way a final is asked for.

A watch with `proof: PX` (or `submit --proof PX`) renders every photo x
preset at PX into its proofs folder. Each finished proof keeps its result in
`state_dir/proofs/<job id>.png` (8-bit RGB, the look's fingerprint in a PNG
text chunk; through the publish path, so never half written). A final asked
for by the web view's Render button, a file dropped into the watch's
`finals` folder, or `nst-watch render` all go through `request_final`, so
they end in the same job; the worker starts it from the kept image
(nst_watch.engine.FromProof): only the scales above the proof run, and
only refine.

Eviction: the kept images take at most `service.proof_state` bytes (2 GB
by default: about 5000 proofs at 512 px). Beyond it the least recently used
go first (a file's mtime: written by its proof, touched when a final reads
it). A final whose proof's image is gone renders from scratch, and its
history says so.

Torch-free: the web view and the CLI (in the watcher's process) import it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from ..config import Config, Preset
from ..errors import NstWatchError
from ..jobs import DEAD, DONE, FAILED, Job, Ledger
from .identity import file_sha256, preset_hash, size_bucket
from .publish import write_file

log = logging.getLogger("nst_watch.proofs")

FINAL_PRIORITY = 1  # a keeper the photographer chose runs before the proofs still queued
_LOOK_KEY = "nst-watch-look"


class FinalError(NstWatchError):
    """A final that cannot be asked for (no such job, not a proof, not done yet, a size no larger than the proof)."""


@dataclass
class FinalRequest:
    """What request_final did: `job` is the final; `created` (a new job) or `requeued` (it had failed or died)."""

    job: Job
    created: bool
    requeued: bool = False

    @property
    def word(self) -> str:
        """"queued", "queued again" (it had failed) or "already <state>", for messages."""
        if self.created:
            return "queued"
        return "queued again" if self.requeued else f"already {self.job.shown_state}"


@dataclass
class KeptProof:
    """A proof's result as kept for its final: `pixels` [h, w, 3] uint8 RGB at the proof's size, and `look`
    (Preset.fingerprint(size=False) of the preset that made it)."""

    pixels: np.ndarray
    look: str


def state_dir_of(state_dir: Path) -> Path:
    return Path(state_dir) / "proofs"


def kept_path(state_dir: Path, job_id: int) -> Path:
    """Where proof job `job_id` keeps its result: built from the integer only."""
    return state_dir_of(state_dir) / f"{int(job_id)}.png"


def keep_proof(state_dir: Path, job_id: int, pixels: np.ndarray, look: str, budget: int) -> None:
    """Keep a finished proof's result ([h, w, 3] float in [0, 1] or uint8), then evict beyond `budget` bytes.

    PhotoError (a full disk, permissions) with no partial file left: the
    proof itself is published already, so the caller only warns.
    """
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.asarray(pixels, dtype=np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text(_LOOK_KEY, look)
    image = Image.fromarray(np.ascontiguousarray(pixels[..., :3]))
    path = kept_path(state_dir, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, lambda f: image.save(f, format="PNG", pnginfo=info, compress_level=1), "overwrite",
               temp=f"proof-{int(job_id)}")
    evict(state_dir, budget, keep=path)


def kept_proof(state_dir: Path, job_id: int) -> KeptProof | None:
    """The kept result of proof job `job_id`, marked as just used; None when it is gone or unreadable."""
    path = kept_path(state_dir, job_id)
    try:
        with Image.open(path) as image:
            look = image.text.get(_LOOK_KEY)  # type: ignore[attr-defined]
            pixels = np.asarray(image.convert("RGB"))
        os.utime(path)  # least recently used goes first
    except (OSError, ValueError) as exc:
        if path.exists():
            log.warning("proof job %d: its kept image %s is unreadable (%s)", job_id, path, exc)
        return None
    if not look:
        return None
    return KeptProof(pixels, look)


def evict(state_dir: Path, budget: int, *, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used kept proofs until they take at most `budget` bytes; the removed paths.

    `keep` (the one just written) is never removed, even alone over budget.
    """
    entries = []
    try:
        with os.scandir(state_dir_of(state_dir)) as scan:
            for entry in scan:
                if entry.name.endswith(".png") and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    entries.append((st.st_mtime_ns, entry.name, st.st_size, Path(entry.path)))
    except FileNotFoundError:
        return []
    total = sum(size for _, _, size, _ in entries)
    removed = []
    for _, _, size, path in sorted(entries):
        if total <= budget:
            break
        if keep is not None and path == keep:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        total -= size
        removed.append(path)
    if removed:
        log.info("dropped %d kept proof image(s) beyond service.proof_state (%d bytes); their finals render "
                 "from scratch", len(removed), budget)
    return removed


def parse_size(text: str | int | None) -> int | str | None:
    """A final's size as given (`--size`, the web view): None (the preset's), "full", or px >= 16; ValueError."""
    if text is None or text == "":
        return None
    if str(text).strip().lower() == "full":
        return "full"
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a size: give full or a long edge in pixels, e.g. 2048") from None
    if value < 16:
        raise ValueError(f"{value} px is too small for a final: give full or at least 16 px")
    return value


def job_size(job: Job) -> int | str | None:
    """The size a job renders at (Job.size as stored): None for its preset's own."""
    return None if job.size is None else "full" if job.size == "full" else int(job.size)


def sized(preset: Preset, size: int | str | None) -> Preset:
    """`preset` at `size` (px or "full"; None: its own)."""
    return preset if size is None or size == preset.size else preset.model_copy(update={"size": size})


def rendering(preset: Preset, path: Path, *, proof: int | None, output_dir: Path, proofs_dir: Path) -> dict:
    """Ledger.add's arguments for rendering `preset` for the photo at `path`: at once, or as a `proof` px proof.

    A preset larger than the proof (or full) is proofed into `proofs_dir`;
    one no larger is rendered at once into `output_dir`, as its proof would
    be its final. The watch's intake and `submit --proof` both ask here.
    """
    if proof is not None and (preset.size == "full" or preset.size > proof):
        return {"preset_hash": preset_hash(sized(preset, proof)), "output_dir": proofs_dir,
                "bucket": size_bucket(path, proof), "size": proof, "proof": proof}
    return {"preset_hash": preset_hash(preset), "output_dir": output_dir, "bucket": size_bucket(path, preset.size)}


def request_final(config: Config, ledger: Ledger, proof_id: int, size: int | str | None = None, *,
                  source: Path | None = None) -> FinalRequest:
    """Queue the final of proof job `proof_id` at `size` (None: the preset's own size), or return it if queued.

    The same proof and size always give the same job (the ledger's
    identity); asking again for a final that failed or died queues it
    again. The final renders from the proof's original (wherever the
    ledger followed it), with its mask, into the watch's output folder
    (for a submitted proof: the folder above its proofs folder). `source`
    is a copy of that original (one dropped into the finals folder), read
    instead where the original is gone. FinalError naming the job and the
    fix otherwise.
    """
    job = ledger.get(int(proof_id))
    if job is None:
        raise FinalError(f"there is no job {proof_id} (nst-watch status lists the jobs)")
    if job.proof is None:
        what = f"a final of proof {job.proof_id}" if job.proof_id is not None else "not a proof"
        raise FinalError(f"job {job.id} is {what}: give the job number of a proof (status --json: role \"proof\")")
    if job.state != DONE or job.put_aside:
        fix = ("retry it (a proof size the photo cannot take needs a larger proof)" if job.state in (FAILED, DEAD)
               else "its final can be asked for once the proof is made")
        raise FinalError(f"proof {job.id} ({Path(job.source_path).name}, preset {job.preset}) is "
                         f"{job.shown_state}, not done: {fix}")
    preset = config.presets.get(job.preset)
    if preset is None:
        raise FinalError(f"proof {job.id}: preset {job.preset!r} is no longer in the config; restore it to render "
                         "its final")
    final = sized(preset, size)
    if final.size != "full" and final.size <= job.proof:
        raise FinalError(f"proof {job.id} is {job.proof} px: its final must be larger (size full, or more than "
                         f"{job.proof} px; the preset's own size is {preset.size})")
    original = Path(job.source_path)
    if not original.is_file():
        if source is None:
            watch = config.watch(job.watch) if job.watch else None
            where = f"drop a copy into {watch.finals_dir}" if watch is not None and watch.finals_dir else \
                "put it back"
            raise FinalError(f"proof {job.id}: its original {original} is gone; {where} to render its final")
        original = source
    result = ledger.add(
        sha256=job.sha256, preset=job.preset, preset_hash=preset_hash(final), source_path=original,
        watch=job.watch, output_dir=_final_dir(config, job),
        bucket=size_bucket(original, final.size), priority=FINAL_PRIORITY,
        mask_path=job.mask_path, mask_sha256=job.mask_sha256,
        size=None if final.size == preset.size else final.size, proof_id=job.id,
    )
    if result.created or result.job.state not in (FAILED, DEAD):
        return FinalRequest(result.job, result.created)
    if source is not None:
        original = source  # a copy that holds the photo (matched by content): the original may have changed
    if Path(result.job.source_path) != original:
        ledger.relocate(result.job.id, original)
    ledger.retry([result.job.id])
    return FinalRequest(ledger.get(result.job.id), False, requeued=True)  # type: ignore[arg-type]


def proofs_matching(ledger: Ledger, watch: str, path: Path, sha256: str) -> tuple[list[Job], str]:
    """(proofs of `watch` that the file at `path` asks finals for, how it matched: "original" | "proof" | "name").

    By content first: the original of one or more proofs (each preset's),
    or a proof's own file under any name (its output file, compared where
    the sizes agree); else by the proof's file name, for a proof whose bytes
    a photo tool changed (a rating written into it). Jobs put aside are no proofs.
    """
    proofs = [j for j in ledger.proofs(watch) if not j.put_aside]
    originals = [j for j in proofs if j.sha256 == sha256]
    if originals:
        return originals, "original"
    size = path.stat().st_size
    same = []
    for job in proofs:
        if job.output_path is None:
            continue
        try:
            if os.stat(job.output_path).st_size == size and file_sha256(Path(job.output_path)) == sha256:
                same.append(job)
        except OSError:
            continue
    if same:
        return same, "proof"
    return [j for j in proofs if j.output_path is not None and Path(j.output_path).name == path.name], "name"


def _final_dir(config: Config, proof: Job) -> Path:
    watch = config.watch(proof.watch) if proof.watch else None
    if watch is not None:
        return watch.output
    return Path(proof.output_dir).parent  # submit --proof wrote into OUT/proofs
