"""A worker: one resident engine, claiming jobs from the ledger and finishing them.

The worker orchestrates: it claims a batch, has the darkroom stylise it, and
hands each result to nst_watch.service.publish, whose crash-safe protocol
(stage, plan, link without clobbering, sidecar, recover, complete) puts
every output, thumbnail and moved original in place; nst_watch.service.
originals decides where each original goes. A worker killed at any point
leaves nothing the next attempt does not recognise as its own: every photo
gets exactly one output per preset.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, Preset, Watch
from ..darkroom import EXTENSIONS, Darkroom, to_pixels
from ..engine import FromProof, Interrupted, Resume, Stop
from ..engine.pyramid import output_size
from ..errors import EngineError, MaskError, PhotoError, PresetError
from ..faults import fault as _fault
from ..jobs import Job, Ledger
from ..photo import load_photo
from ..photo.mask import Mask, check_regions, load_mask
from ..progress import eta_seconds
from ..watch.masks import MaskNames
from .identity import file_sha256, preset_hash
from .originals import finish_original, recover_originals
from .proofs import job_size, keep_proof, kept_proof, sized
from .publish import Outputs, clean_stages, write_file
from .status import IDLE_PROGRESS, pid_alive, step_progress
from .thumbs import mask_picture, thumbs_dir, write_thumbs

log = logging.getLogger("nst_watch.worker")

# Past the grace period a batch stops; one whose last scale is this close to its early stop (one window of the
# default preset) finishes instead, and its photos are published.
FINISH_WITHIN = 25
WAIT_REPORT_SECONDS = 10  # while SIGTERM waits for a batch, a log line this often


class Cancelled(Stop):
    """Raised from the progress callback to stop a batch (shutdown past its grace).

    The engine (Stop) finishes a batch within FINISH_WITHIN iterations of its
    end, and otherwise raises Interrupted with where each photo was, which
    the worker keeps for the next start; the Ray lanes release the batch.
    """

    def __init__(self):
        super().__init__(finish_within=FINISH_WITHIN)


class EngineLost(Exception):
    """The engine went away mid-batch (a Ray actor's process or node died): not the photos' fault.

    The batch goes back to pending at once, the attempt counted (as for a
    crashed local worker), for whichever engine is free next.
    """


# The environment's faults: they may pass, so a job hit by one is retried.
# Anything else (a bad photo, a bad preset, a bug) recurs identically.
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EIO, errno.EAGAIN, errno.EBUSY,
                     errno.ETIMEDOUT, errno.EMFILE, errno.ENFILE, errno.ESTALE, errno.EINTR, errno.ENETDOWN,
                     errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNRESET}


def transient(exc: BaseException) -> bool:
    """True for faults of the environment that a retry may get past: memory, disk, network, a busy ledger."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():
        return True  # CUDA and CPU allocators say so in a plain RuntimeError
    if isinstance(exc, sqlite3.OperationalError):
        return True  # locked or busy
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def describe(exc: BaseException) -> str:
    """An error for the ledger and status: what it was, and whether retrying can help."""
    if transient(exc):
        return f"{type(exc).__name__}: {exc} (will be retried)"
    return (f"internal error, {type(exc).__name__}: {exc}. It would recur on retry: please report it with "
            "the log; `nst-watch retry` once nst-watch is fixed")


# Copied from each engine Progress event into the Activity, under the same names.
_PROGRESS_FIELDS = ("step", "steps", "expected_steps", "tile", "tiles", "loss", "scale", "scales", "iteration",
                    "iterations", "width", "height", "elapsed")


@dataclass
class Activity:
    """What a worker is doing now, for status views (`processes[].worker` in `status --json`).

    The progress fields are those of the engine's latest Progress event; all
    are back at their defaults (status.IDLE_PROGRESS) while no job is held.
    """

    owner: str
    device: str
    jobs: list[int] = field(default_factory=list)
    preset: str | None = None
    photos: list[str] = field(default_factory=list)
    step: int = 0  # iterations run, across all scales, of `expected_steps` (early stopping's estimate) or `steps`
    steps: int = 0  # at most
    expected_steps: int = 0
    tile: int = 0  # tile passes done in the running iteration of a tiled scale, of `tiles`
    tiles: int = 0
    loss: float | None = None
    scale: int = 0  # pyramid scale, 1-based, of `scales`, optimised at width x height
    scales: int = 0
    iteration: int = 0  # within the scale, of `iterations`
    iterations: int = 0
    width: int = 0
    height: int = 0
    elapsed: float | None = None  # seconds since the batch began
    eta: float | None = None  # seconds left (the engine's estimate, early stopping included); None until known
    started: float | None = None
    done: int = 0
    failed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def idle(self) -> None:
        """No job held: clear the job and its progress."""
        self.jobs, self.photos = [], []
        for name, value in IDLE_PROGRESS.items():
            setattr(self, name, value)


def owner_name(device: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{device}"


class Worker:
    def __init__(self, config: Config, ledger: Ledger, darkroom: Darkroom, *, owner: str | None = None):
        self.config = config  # replaced on reload; read once per batch
        self.ledger = ledger
        self.darkroom = darkroom
        device = darkroom.device
        self.owner = owner or owner_name(device)
        self.activity = Activity(self.owner, device)
        self.outputs = Outputs(ledger, self.owner)
        self.state_dir = config.state_dir  # fixed at start, like the ledger: a reload cannot move it
        self.stopping = threading.Event()  # finish the current batch, claim no more
        self.cancel = threading.Event()  # abandon the current batch now
        self.heartbeat_at = time.monotonic()
        self.on_change = None  # called (from the worker thread) when a job finishes, to refresh status at once
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._reclaim_crashed()
        # Before the first claim: a photo moved when a killed worker died is
        # recorded where it is, so a retried job finds it.
        recover_originals(self.ledger, self.config)
        lease = self.config.service.lease_seconds
        if removed := clean_stages(thumbs_dir(self.state_dir), older_than=lease):
            log.info("removed %d thumbnail temp file(s) left by an interrupted write", len(removed))
        self._thread = threading.Thread(target=self.run, name="worker", daemon=True)
        self._thread.start()

    def _reclaim_crashed(self) -> None:
        """Jobs leased by a worker on this host whose process is gone go back to pending now."""
        host = socket.gethostname()
        dead = []
        for owner in self.ledger.leased_owners():
            parts = owner.split(":", 2)
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not pid_alive(int(parts[1])):
                dead.append(owner)
        if dead and (count := self.ledger.reclaim(dead)):
            log.info("took back %d job(s) from crashed worker(s) %s", count, ", ".join(sorted(dead)))

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace: float) -> None:
        """Let the running batch finish within `grace` seconds, saying what it waits for; then stop it.

        Past the grace a batch close to its end finishes (Cancelled); any
        other keeps each photo's optimisation in the state folder and its
        jobs go back to pending: the next start resumes them from there.
        """
        self.stopping.set()
        if self._thread is None:
            return
        deadline = time.monotonic() + grace
        while self._thread.is_alive() and (left := deadline - time.monotonic()) > 0:
            if self.activity.jobs:
                log.info("stopping: waiting up to %.0f s for %s; past that its progress is kept for the next "
                         "start", left, self._running())
            self._thread.join(min(left, WAIT_REPORT_SECONDS))
        if self._thread.is_alive():
            log.warning("grace period of %.0f s over: stopping %s, its progress kept for the next start", grace,
                        self._running() if self.activity.jobs else "the running batch")
            self.cancel.set()
            self._thread.join()

    def _running(self) -> str:
        """'job 12 (photo.jpg [impasto], step 40/~210, ETA 35 s)': what a shutdown waits for."""
        a = self.activity
        jobs = ", ".join(str(j) for j in a.jobs)
        return (f"job{'s' if len(a.jobs) > 1 else ''} {jobs} ({', '.join(a.photos)} [{a.preset}], "
                f"{step_progress(a.to_dict())})")

    def ready(self) -> bool:
        """Whether the engine can take a batch now; a worker claims only when it can (pull-based)."""
        return True

    def run(self) -> None:
        while not self.stopping.is_set():
            self.heartbeat_at = time.monotonic()
            if not self.ready():
                self.stopping.wait(1.0)
                continue
            try:
                jobs = self.ledger.claim(self.owner, limit=self.config.service.batch)
            except Exception:
                log.exception("could not claim jobs; retrying")
                self.stopping.wait(2.0)
                continue
            if not jobs:
                self.stopping.wait(0.3)
                continue
            try:
                self.process(jobs)
            except Exception as exc:
                # Never let one batch kill the worker. Only the environment's
                # faults are retried: a bug would fail the same way again.
                log.exception("unexpected error in a batch of %d job(s)", len(jobs))
                for job in jobs:
                    self._fail(job, describe(exc), permanent=not transient(exc))
            finally:
                self.activity.idle()

    # --- one batch -------------------------------------------------------------------

    def process(self, jobs: list[Job]) -> None:
        config = self.config
        preset = config.presets.get(jobs[0].preset)
        if preset is None:
            for job in jobs:
                self._fail(job, f"preset {job.preset!r} is no longer in the config; restore it, then "
                                "run `nst-watch retry`", permanent=True)
            return
        # A proof, or a final at another size, renders its preset at its own size (all claimed
        # together share it: the size is part of the preset hash the ledger batches by).
        preset = sized(preset, job_size(jobs[0]))
        try:
            self.darkroom.style_images(preset)
        except PresetError as exc:
            self._hold(jobs, str(exc))
            return
        current = preset_hash(preset)
        todo = []
        for job in jobs:
            if job.preset_hash != current:
                other = self.ledger.rekey(self.owner, job.id, current)
                if other is not None:
                    log.info("job %d: superseded by job %d (preset %s changed)", job.id, other, job.preset)
                    continue
            watch = config.watch(job.watch) if job.watch else None
            effective = _with_watch_format(preset, watch)
            if self._recover(job, effective):
                continue
            photo = self._load(job, preset)
            if photo is None:
                continue
            mask = self._mask(job, photo, preset, watch)
            if mask is not _NOT_NOW:
                todo.append((job, photo, watch, effective, mask))
        if not todo:
            return
        self._stylize_and_publish(todo)

    def _hold(self, jobs: list[Job], reason: str) -> None:
        """The preset is broken, not the photos: the jobs wait, photos in place, until it is fixed."""
        # They look again at the pace of the reconcile scan, so a fixed preset needs no restart.
        every = self.config.service.reconcile_seconds
        released = self.ledger.release(self.owner, [j.id for j in jobs], reason=reason, delay=every)
        log.error("%s; %d job(s) wait, their photos untouched, and run once it is fixed (checked every %.0fs)",
                  reason, released, every)

    def _load(self, job: Job, preset: Preset):
        try:
            photo = load_photo(job.source_path, max_pixels=self.config.max_pixels)
            self.darkroom.check_fits(photo, preset)
        except PhotoError as exc:
            self._fail(job, str(exc), permanent=exc.permanent)
            return None
        if photo.sha256 != job.sha256:
            self._fail(job, f"{job.source_path} changed after it was queued; the new version is queued "
                            "separately when it settles", permanent=True)
            return None
        return photo

    # --- masks -----------------------------------------------------------------------

    def _mask(self, job: Job, photo, preset: Preset, watch: Watch | None):
        """The job's mask, read and checked for `photo`; None to run without one; _NOT_NOW when it is not stylised
        now (failed, put aside, or waiting for its new mask).

        A job without a mask whose preset names regions waited for one in
        vain (the intake held it for watch.mask.wait_seconds): it runs with
        the preset's own styles (mask.missing: run) or fails saying which mask
        to add (fail). A mask that cannot serve fails its job, with the
        mask's name and the fix (MaskError); one replaced since the job was
        queued gives way to the new mask's job (`_replaced`).
        """
        if job.mask_path is None:
            if not preset.needs_mask:
                return None
            if self._put_aside_for_newer(job, "its mask came meanwhile"):
                return _NOT_NOW
            if watch is not None and watch.mask.missing == "run" and preset.styles:
                log.info("job %d: no mask came for %s within %g s; it runs with preset %s's own styles "
                         "(mask.missing: run)", job.id, job.source_path, watch.mask.wait_seconds, preset.name)
                return None
            self._fail(job, no_mask_reason(job, preset, watch), permanent=True)
            return _NOT_NOW
        try:
            if _changed(job):
                raise _Replaced()
            mask = load_job_mask(job, photo, preset, max_pixels=self.config.max_pixels)
            if mask.sha256 != job.mask_sha256:
                raise _Replaced()
        except _Replaced:
            self._replaced(job, watch)
            return _NOT_NOW
        except MaskError as exc:
            self._fail(job, str(exc), permanent=exc.permanent)
            return _NOT_NOW
        return mask

    def _replaced(self, job: Job, watch: Watch | None) -> None:
        """The job's mask file holds other bytes than it was queued with: the new mask's job runs instead.

        Put aside for that job once the intake has queued it; until then the
        job waits (released, its attempt not counted, looked at again after
        twice the settle window): put aside now, its photo, all its jobs
        finished, would move to processed/ before the new mask could find it.
        A submitted job has no intake to queue the new mask: it fails.
        """
        name = Path(job.mask_path).name
        if self._put_aside_for_newer(job, f"its mask {name} changed after the job was queued"):
            return
        if watch is None:
            self._fail(job, f"{job.mask_path}: changed after the job was queued; submit the photo again with the "
                            "mask as it is now", permanent=True)
            return
        wait = max(2.0, 2 * watch.settle_seconds)
        reason = f"its mask {name} changed after the job was queued; waits for the new mask's own job"
        if self.ledger.release(self.owner, [job.id], reason=reason, delay=wait):
            log.info("job %d (%s): %s", job.id, job.source_path, reason)
            self._finished(job)

    def _put_aside_for_newer(self, job: Job, why: str) -> bool:
        """Supersede `job` when a newer job of its photo file and preset has another mask; True if it was put aside.

        Its photo's fate is then the newer job's. A copy of the photo under
        another name, with its own mask, is another pair: never a newer job of this one.
        """
        newer = [j.id for j in self.ledger.jobs_for(job.sha256)
                 if j.watch == job.watch and j.preset == job.preset and j.id > job.id
                 and j.source_path == job.source_path
                 and j.mask_sha256 is not None and j.mask_sha256 != job.mask_sha256]
        if not newer:
            return False
        note = f"superseded by job {newer[-1]}: {why}"
        if not self.ledger.supersede([job.id], note, owner=self.owner):
            return False
        log.info("job %d (%s, preset %s) %s", job.id, job.source_path, job.preset, note)
        self._finished(job)
        _forget(self._kept_path(job))
        self._finish_original(job)
        return True

    def _stylize_and_publish(self, todo) -> None:
        jobs = [t[0] for t in todo]
        preset = todo[0][3]
        masks = [t[4] for t in todo]
        self.activity.idle()
        self.activity.jobs = [j.id for j in jobs]
        self.activity.preset = preset.name
        self.activity.photos = [Path(j.source_path).name for j in jobs]
        self.activity.started = time.time()
        beat = _Heartbeat(self.ledger, self.owner, [j.id for j in jobs], self.config.service.lease_seconds)
        beat.start()
        resumes = [self._start(job, preset) for job in jobs]
        try:
            results = self.darkroom.stylize_photos([t[1] for t in todo], preset, progress=self._progress,
                                                   resume=resumes if any(resumes) else None,
                                                   masks=masks if any(m is not None for m in masks) else None)
        except Interrupted as stopped:
            self._keep(todo, stopped)
            return
        except Cancelled:
            released = self.ledger.release(self.owner, [j.id for j in jobs])
            log.info("released %d job(s) for the next start", released)
            return
        except PresetError as exc:  # a style image changed under us
            self._hold(jobs, str(exc))
            return
        except EngineLost as exc:
            self._engine_lost(jobs, exc)
            return
        except Exception as exc:  # noqa: BLE001 - sorted into retry / fail below
            log.error("the engine failed on %d photo(s): %s", len(jobs), exc, exc_info=not transient(exc))
            for job in jobs:
                self._fail(job, describe(exc), permanent=not transient(exc))
            return
        finally:
            beat.stop()
        self._settle(todo, results)

    def _settle(self, todo, results) -> None:
        """Each job's result published, or its engine error recorded; kept optimisations no longer needed go."""
        for (job, photo, watch, effective, mask), result in zip(todo, results):
            if isinstance(result, EngineError):
                self._fail(job, str(result), permanent=True)
            else:
                self._publish(job, photo, result, effective, watch, mask)
            _forget(self._kept_path(job))

    # --- optimisations kept across a shutdown -----------------------------------------

    def _kept_path(self, job: Job) -> Path:
        return self.state_dir / "resume" / f"job{job.id}.pt"

    def _start(self, job: Job, preset: Preset) -> Resume | FromProof | None:
        """Where the job's optimisation starts: its proof's image for a final of a proof (a final stopped past
        the grace starts from its proof again), the progress a shutdown kept, or None (from scratch)."""
        if job.proof_id is None:
            return self._kept(job, preset)
        kept = kept_proof(self.state_dir, job.proof_id)
        if kept is None:
            note = (f"the image kept of proof {job.proof_id} is gone (dropped beyond service.proof_state, or never "
                    "kept): this final renders from scratch")
            log.info("job %d: %s", job.id, note)
            self.ledger.note(job.id, note)
            return None
        return FromProof(torch.from_numpy(kept.pixels.copy()).permute(2, 0, 1), kept.look)

    def _kept(self, job: Job, preset: Preset) -> Resume | None:
        """The optimisation a shutdown kept for `job`, if any and readable (the engine checks it still fits)."""
        path = self._kept_path(job)
        if not path.is_file():
            return None
        try:
            resume = Resume(**torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - a damaged file only costs the head start
            log.warning("job %d: the progress kept at %s is unreadable (%s); starting afresh", job.id, path, exc)
            _forget(path)
            return None
        log.info("job %d: resuming from scale %d, iteration %d, as a shutdown left it", job.id, resume.scale,
                 resume.iteration)
        return resume

    def _keep(self, todo, stopped: Interrupted) -> None:
        """A batch stopped past the grace: finished photos published, the others' optimisations kept, released."""
        self._settle([todo[i] for i in stopped.done], [stopped.done[i] for i in stopped.done])
        for i, resume in stopped.resumes.items():
            job = todo[i][0]
            try:
                self._kept_path(job).parent.mkdir(parents=True, exist_ok=True)
                write_file(self._kept_path(job), lambda f, r=resume: torch.save(dataclasses.asdict(r), f),
                           collision="overwrite")
                log.info("job %d: kept its progress (scale %d, iteration %d) in %s; the next start resumes from it",
                         job.id, resume.scale, resume.iteration, self._kept_path(job))
            except (PhotoError, OSError) as exc:
                log.warning("job %d: could not keep its progress (%s); the next start begins afresh", job.id, exc)
        left = [t[0].id for i, t in enumerate(todo) if i not in stopped.done]
        released = self.ledger.release(self.owner, left)
        log.info("released %d job(s) for the next start", released)

    def _engine_lost(self, jobs: list[Job], exc: EngineLost) -> None:
        """The batch back to pending at once, the attempt counted, as for a crashed worker."""
        taken = self.ledger.reclaim([self.owner])
        log.warning("%s: %d job(s) back to pending for the next free engine", exc, taken)

    def _progress(self, event) -> None:
        self.heartbeat_at = time.monotonic()
        for name in _PROGRESS_FIELDS:
            setattr(self.activity, name, getattr(event, name, 0))
        self.activity.eta = eta_seconds(event)
        if event.step >= 2:
            _fault("optimising")
        if self.cancel.is_set():
            raise Cancelled()

    # --- publishing (the protocol itself is nst_watch.service.publish's) ---------------

    def _publish(self, job: Job, photo, result, preset: Preset, watch: Watch | None, mask: Mask | None = None
                 ) -> None:
        template = watch.template if watch else "{stem}-{preset}.{ext}"
        collision = watch.collision if watch else "suffix"
        dest = None
        try:
            dest = self.darkroom.dest_for(photo, preset, result, Path(job.output_dir), template)
            final = self.outputs.publish(
                job, EXTENSIONS[preset.output.format],
                lambda staged, temp: self.darkroom.save(photo, result, preset, dest=staged, collision="overwrite",
                                                        temp=temp, mask=mask),
                dest, collision)
        except PhotoError as exc:
            # The user knows the photo and the output name, not our staging name.
            target = dest.name if dest is not None else "its output"
            fix = f" ({exc.fix})" if exc.fix else ""
            self._fail(job, f"{photo.path}: writing {target} into {job.output_dir} failed: {exc.reason}{fix}",
                       permanent=exc.permanent)
            return
        self._thumbnails(job, photo, result, preset, mask)
        if job.proof is not None:
            self._keep_proof(job, result, preset)
        self._complete(job, final, f" ({result.iterations} iterations, {result.seconds:.0f} s)")

    def _keep_proof(self, job: Job, result, preset: Preset) -> None:
        """A proof's result kept for its final, before the proof shows as done. Best effort: without it the final
        renders from scratch."""
        try:
            keep_proof(self.state_dir, job.id, to_pixels(result.image), preset.fingerprint(size=False),
                       int(self.config.service.proof_state))
        except Exception as exc:  # noqa: BLE001 - the proof is published; its final only loses the head start
            log.warning("job %d: the proof's image could not be kept in %s (%s); its final will render from "
                        "scratch", job.id, self.state_dir, exc)

    def _thumbnails(self, job: Job, photo, result, preset: Preset, mask: Mask | None = None) -> None:
        """Before/after thumbnails (and the mask's, painted in its regions' colours) for the web view, in place
        before the job shows as done.

        Best effort: a thumbnail that cannot be written is a warning, never the job's failure.
        """
        try:
            painted = None if mask is None else mask_picture(mask.weights, [c for _, c, _ in preset.region_list()])
            write_thumbs(self.state_dir, job.id, photo.pixels, to_pixels(result.image), mask=painted)
        except Exception as exc:  # noqa: BLE001 - the photo is published; a missing preview is all we lose
            log.warning("job %d: no thumbnails for the web view: writing them in %s failed: %s (check that "
                        "folder's space and permissions)", job.id, thumbs_dir(self.state_dir), exc)

    def _recover(self, job: Job, preset: Preset) -> bool:
        """Finish a job whose previous attempt published (or staged) before dying; True if it is finished."""
        watch = self.config.watch(job.watch) if job.watch else None
        try:
            found = self.outputs.recover(job, EXTENSIONS[preset.output.format], watch.collision if watch else "suffix")
        except PhotoError as exc:
            self._fail(job, str(exc), permanent=exc.permanent)
            return True
        if found is None:
            return False
        log.info("job %d: %s", job.id, found.how)
        self._complete(job, found.final)
        return True

    def _complete(self, job: Job, final: Path | None, detail: str = "") -> None:
        if not self.outputs.complete(job, final):
            log.warning("job %d: lease lost before completion; another worker owns it now", job.id)
            return
        self._finished(job)
        self.activity.done += 1
        log.info("done: %s [%s] -> %s%s", job.source_path, job.preset, final or "(skipped: exists)", detail)
        self._finish_original(job)

    def _fail(self, job: Job, error: str, *, permanent: bool) -> None:
        state = self.ledger.fail(self.owner, job.id, error, permanent=permanent)
        if state is None:
            return
        self._finished(job)
        self.activity.failed += 1
        log.error("job %d (%s, preset %s) %s: %s", job.id, job.source_path, job.preset,
                  "failed" if state != "pending" else "will be retried", error)
        if state != "pending":
            _forget(self._kept_path(job))
        self._finish_original(job)

    def _finished(self, job: Job) -> None:
        """Take a job that is no longer ours off the activity shown in status."""
        if job.id in self.activity.jobs:
            index = self.activity.jobs.index(job.id)
            self.activity.jobs = self.activity.jobs[:index] + self.activity.jobs[index + 1:]
            self.activity.photos = self.activity.photos[:index] + self.activity.photos[index + 1:]
            if not self.activity.jobs:
                self.activity.idle()
        if self.on_change is not None:
            self.on_change()

    def _finish_original(self, job: Job) -> None:
        watch = self.config.watch(job.watch) if job.watch else None
        if watch is None:
            return  # submitted files belong to the tool that submitted them
        try:
            finish_original(self.ledger, watch, job.sha256, Path(job.source_path), config_path=self.config.path)
        except Exception:
            log.exception("%s: could not move the original", job.source_path)


class _Replaced(Exception):
    """A job's mask is not the one it was queued with (replaced on disk)."""


_NOT_NOW = object()  # Worker._mask: the job was failed, superseded or released: not to be stylised now


def _changed(job: Job) -> bool:
    """Whether the job's mask file now holds other bytes than it was queued with (False when it cannot be read:
    load_job_mask says why)."""
    try:
        return file_sha256(Path(job.mask_path)) != job.mask_sha256
    except OSError:
        return False


def load_job_mask(job: Job, photo, preset: Preset, *, max_pixels: int) -> Mask:
    """The mask of `job` for `photo`, checked for `preset` at its output size.

    MaskError (permanent, naming the mask and the fix) when it cannot be read,
    has a colour no region names, has another aspect ratio than the photo,
    or leaves a region too small for the style layers at the output size.
    """
    mask = load_mask(Path(job.mask_path), preset, photo_size=(photo.width, photo.height), max_pixels=max_pixels)
    check_regions(mask, preset, output_size(photo.height, photo.width, preset))
    return mask


def no_mask_reason(job: Job, preset: Preset, watch: Watch | None) -> str:
    """Why a photo whose preset names regions failed without a mask, and how to give it one."""
    if watch is None:
        return (f"{job.source_path}: preset {job.preset!r} names regions, so it needs a mask, and none was given: "
                "submit the photo again with --mask FILE")
    names = MaskNames(watch.mask.names).candidates(Path(job.source_path))
    also = f" (or {', '.join(n.name for n in names[1:])})" if names[1:] else ""
    # mask.missing: run is only valid for a preset with styles of its own (config.Config._watches_fit).
    run = (f"set mask.missing: run in watch {watch.name!r} to stylise such photos with the preset's own styles"
           if preset.styles else
           f"give preset {preset.name!r} styles of its own (`styles:`, for photos without a mask), then set "
           f"mask.missing: run in watch {watch.name!r}")
    return (f"{job.source_path}: no mask came within {watch.mask.wait_seconds:g} s, and preset {preset.name!r} names "
            f"regions, so it needs one (mask.missing: fail). Fix: put its mask beside it as {names[0].name}{also} "
            f"and move both into {watch.input}; or {run}")


def _forget(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _with_watch_format(preset: Preset, watch: Watch | None) -> Preset:
    if watch is None or watch.format is None or watch.format == preset.output.format:
        return preset
    fmt = watch.format
    output = preset.output.model_copy(update={"format": fmt, "bit_depth": preset.output.bit_depth if fmt == "tiff" else 8})
    return preset.model_copy(update={"output": output})


class _Heartbeat:
    """Extends the batch's leases while the engine works (a long job must not look dead)."""

    def __init__(self, ledger: Ledger, owner: str, ids: list[int], lease_seconds: float):
        self.ledger, self.owner, self.ids = ledger, owner, ids
        self.interval = max(0.5, lease_seconds / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.ledger.heartbeat(self.owner, self.ids)
            except Exception:
                log.exception("heartbeat failed")
