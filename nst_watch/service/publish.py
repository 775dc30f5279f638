"""The one way nst-watch puts a file in place: outputs, moved originals and masks, error reports, sidecars, thumbnails.

Every file goes through the same steps (FIELD_NOTES section 5):

1. **stage** it beside its destination, in the same folder, so the last
   step is a link or a rename on one file system, never a copy: the bytes
   are written (or, for an original from another file system, copied)
   under a staging name, flushed and fsynced;
2. **plan**: where a crash must be recoverable, the ledger learns the name
   before it exists (a job's `output_path`, an original's `moves` row);
3. **place** it without clobbering: os.link fails rather than replace
   (``suffix``: the next free ``name (n)``; ``skip``: nothing), os.replace
   only where replacing is the rule (``overwrite``; a sidecar or an error
   report following its file; a thumbnail, named by job number);
4. **fsync** the folder;
5. **record** it: the job is done, or the original's jobs point at its new
   place;
6. **unstage**: the staging name is removed, on success and on any error
   (a full disk, an I/O error, an encoder that raises).

A process killed at any step leaves what the next one recognises by the
names it wrote down: a staged result (`.nst-stage-job<ID>.<ext>` and its
temp files) is published or removed when its job is claimed again
(`Outputs.recover`); an original's move is finished or undone at the next
start (`recover_moves`) and tried again by the intake. No step leaves a
partial file under a final name, and an original leaves its inbox only once
its copy is whole and durable where it went.

The file-level steps are nst_watch.photo.atomic's (shared with `nst-watch
stylize`); this module adds the ledger and the recovery. The worker and
nst_watch.service.originals decide what goes where and when, never how.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import PhotoError
from ..faults import fault
from ..jobs import Job, Ledger, Move
from ..photo.atomic import TEMP_PREFIX, clean_temp_files, copy_into, fsync_dir, place, write_atomic, write_error
from ..photo.naming import escape_name, sidecar_path
from .status import pid_alive, proc_start

log = logging.getLogger("nst_watch.publish")

STAGE_PREFIX = ".nst-stage-"


def write_file(dest: Path, write: Callable[[BinaryIO], None], collision: str = "suffix", *,
               temp: str | None = None) -> Path | None:
    """Put a file that no ledger row names (an error report, a thumbnail) in place: the path used, None if skipped.

    Steps 1, 3, 4 and 6: `write(fileobj)` fills the staging file, which is
    fsynced, then placed under `collision`. PhotoError (transient for a
    full disk, permissions...) with nothing left behind; see
    atomic.write_atomic for `temp`.
    """
    return write_atomic(dest, write, collision, temp=temp)


def clean_stages(folder: Path, older_than: float) -> list[Path]:
    """Remove the temp files a killed process left under `folder` (older than `older_than` seconds)."""
    return clean_temp_files(folder, older_than=older_than)


def _remove(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink()
        except OSError:
            pass


# --- outputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovered:
    """What an earlier attempt of a job had published: `final` (None: skipped), and how it was found."""

    final: Path | None
    how: str


class Outputs:
    """The publish protocol for one worker's results; `owner` is the worker's name in the ledger.

    A result is written whole under its job's staging name
    (`.nst-stage-job<ID>.<ext>`, through temp files named after the job, in
    the output folder), the final name is planned in the ledger, the staged
    file is hard-linked to it (no clobber), its sidecar follows, the staging
    name goes, and only then is the job marked done. A worker killed at any
    point leaves either no final file, or one the next attempt recognises as
    its own (same inode as the staged file, or the planned name with the
    staging name gone): every photo gets exactly one output per preset.
    """

    def __init__(self, ledger: Ledger, owner: str):
        self.ledger = ledger
        self.owner = owner

    @staticmethod
    def staged(job: Job, ext: str) -> Path:
        """Where an attempt of `job` writes its result before it has a name (`ext`: the format's, no dot)."""
        return Path(job.output_dir) / f"{STAGE_PREFIX}job{job.id}.{ext}"

    @staticmethod
    def _leftovers(job: Job, staged: Path) -> tuple[Path, ...]:
        """Files an attempt of `job` writes before publishing: the staged result, its sidecar, their temp files."""
        folder = staged.parent
        return (staged, sidecar_path(staged),
                folder / f"{TEMP_PREFIX}job{job.id}", folder / f"{TEMP_PREFIX}job{job.id}-json")

    def publish(self, job: Job, ext: str, write: Callable[[Path, str], object], dest: Path,
                collision: str) -> Path | None:
        """Stage `job`'s result, then give it `dest` (or a free variant); the name given, None if skipped.

        `write(staged, temp)` writes the result whole at `staged`, and its
        sidecar beside it, through temp files named `temp` (Darkroom.save
        with collision="overwrite"). `collision` is the watch's (suffix,
        skip, overwrite). PhotoError when it cannot be written or placed;
        then nothing of this attempt is left and the ledger plans no name.
        """
        staged = self.staged(job, ext)
        try:
            write(staged, f"job{job.id}")
            fault("staged")
            return self._place(job, staged, dest, collision)
        except Exception:
            _remove(*self._leftovers(job, staged))
            self.ledger.plan_output(self.owner, job.id, None)  # nothing of ours carries that name
            raise

    def _place(self, job: Job, staged: Path, dest: Path, collision: str) -> Path | None:
        """Plan, link (no clobber), move the sidecar, unstage."""
        try:
            final = place(staged, dest, collision, plan=lambda name: self.ledger.plan_output(self.owner, job.id, name))
        except OSError as exc:
            raise write_error(dest, exc) from exc
        if final is None:
            log.info("%s exists; skipped (collision: skip)", dest)
            _remove(staged, sidecar_path(staged))
            return None
        fault("published")
        try:
            self._unstage(staged, final)
        except Exception:
            _remove(final, sidecar_path(final))  # ours since the link: no output without its sidecar
            raise
        return final

    @staticmethod
    def _unstage(staged: Path, final: Path) -> None:
        """Put the staged sidecar beside `final`, then drop the staging name.

        Safe before complete(): with the name planned in the ledger and the
        staging name gone, a restarted attempt knows `final` is its own.
        """
        side = sidecar_path(staged)
        if side.exists():
            _place_sidecar(side, final)
        _remove(staged)

    def recover(self, job: Job, ext: str, collision: str) -> Recovered | None:
        """Finish what an earlier attempt of `job` left; None if there is nothing to finish (start over).

        Its output published under the planned name: found (its sidecar
        moved, the staging name dropped). Its result staged and a name
        planned: placed now. Anything else of it (temp files, a result
        staged but never named, whose name depends on the run) is removed.
        PhotoError if a staged result cannot be placed.
        """
        staged = self.staged(job, ext)
        planned = Path(job.output_path) if job.output_path else None
        _remove(*self._leftovers(job, staged)[2:])  # temp files of a write that was killed
        if planned is not None and planned.exists():
            if not staged.exists() or os.path.samefile(staged, planned):
                self._unstage(staged, planned)
                return Recovered(planned, f"found its output from an earlier attempt: {planned}")
            if _reserved(planned):
                _remove(planned)  # our name reservation (no hard links here); the rename never came
        if planned is not None and staged.exists():
            final = self._place(job, staged, planned, collision)
            return Recovered(final, "published the result staged by an earlier attempt")
        _remove(*self._leftovers(job, staged))
        return None

    def complete(self, job: Job, final: Path | None) -> bool:
        """Record the job done with its output (steps 5): False if the lease was lost to another worker."""
        if not self.ledger.complete(self.owner, job.id, final):
            return False
        fault("completed")
        return True


def _place_sidecar(staged: Path, final: Path) -> None:
    """The staged sidecar as `final`'s: it was written before the name was chosen, so its `output.file` is set now.

    Written through the publish path (a stale sidecar of a file no longer
    there is replaced: a sidecar follows its output); the staged one goes.
    """
    try:
        data = json.loads(staged.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("output"), dict):
        os.replace(staged, sidecar_path(final))  # not ours to edit: moved as it is
        fsync_dir(final.parent)
        return
    data["output"]["file"] = escape_name(final.name, controls=False)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    write_file(sidecar_path(final), lambda f: f.write(text.encode("utf-8")), "overwrite")
    _remove(staged)


def _reserved(path: Path) -> bool:
    """An empty regular file: a name reserved with O_EXCL on a file system without hard links, never a photo."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


# --- originals -------------------------------------------------------------------------
# A photo moves to processed/ or failed/ (or back to its inbox) in steps the
# ledger follows (jobs.Ledger.take_move ... end_move):
#
#   take_move    the move is written down: source, the name it is going to, owner
#   plan_move    each name is planned before it is given
#   place        same file system: os.link (no byte copied, the source keeps its name);
#                another one (EXDEV): copy into a staging file there, fsync, link, unstage
#   placed_move  one transaction: the photo's jobs point at the new place
#   unlink       only now is the source removed (its folder fsynced)
#   end_move     the row goes
#
# A kill between any two steps leaves a row with a dead owner; the next start
# (recover_moves) finishes the move if the photo is whole at its planned
# name (same inode, or same SHA-256), else removes what the try left and
# lets the move wait for another try. The source is never removed before the
# photo is whole, durable and recorded where it went.


def mover() -> str:
    """Who moves an original: host, pid, process start time and thread (one move per file at a time)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{proc_start(pid)}:{threading.get_ident()}"


def _gone(owner: str) -> bool:
    """True when the process that wrote `owner` (see mover) is no longer there: killed mid-move."""
    host, pid, start, _thread = (owner.split(":") + ["", "", "", ""])[:4]
    if host != socket.gethostname():
        return False  # the ledger lives on a local disk: another host's moves are not ours to judge
    if not pid.isdigit() or not pid_alive(int(pid)):
        return True
    current = proc_start(int(pid))
    return start.isdigit() and current is not None and current != int(start)  # the pid was reused


def _stage_of(move: Move) -> Path:
    """The staging file of a cross-device copy, in the folder the photo goes to."""
    return Path(move.dest_path).parent / f"{TEMP_PREFIX}move{move.id}"


def _holds(path: Path, sha256: str, *same: Path) -> bool:
    """Whether `path` is a whole copy of the photo: the same file as one of `same`, or the same SHA-256."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return False
    for other in same:
        try:
            if os.path.samefile(other, path):
                return True
        except OSError:
            continue
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == sha256
    except OSError:
        return False


def _remove_source(path: Path) -> None:
    """Remove the copy the photo left behind, durably (its folder fsynced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fsync_dir(path.parent)


def _back_to_source(ledger: Ledger, move: Move) -> None:
    """A placed move whose new copy is gone again (removed by hand): the jobs point back at the source.

    The jobs of the photo, or, for a mask on the move, the jobs that use it.
    """
    ledger.follow(move.sha256, move.watch, move.dest_path, move.source_path)


def _settle(ledger: Ledger, move: Move, on_placed: Callable[[Path, Path], None] | None) -> Path | None:
    """Finish or clear what an earlier try of `move` left; the photo's new path if the move is over.

    Finished when the photo is whole at the planned name (the try was
    killed after placing it): recorded, `on_placed` called, the source
    removed, the row ended. Otherwise its staging file and any empty name
    reservation are removed, the source stays, and None is returned.
    """
    source, dest = Path(move.source_path), Path(move.dest_path)
    stage = _stage_of(move)
    if _holds(dest, move.sha256, source, stage):
        if not move.placed:
            ledger.placed_move(move.id, dest)
        _remove(stage)
        if on_placed is not None:
            on_placed(source, dest)
        _remove_source(source)
        ledger.end_move(move.id)
        return dest
    _remove(stage)
    if move.placed:
        _back_to_source(ledger, move)
    elif source.exists() and _reserved(dest):
        _remove(dest)
    return None


def move_original(ledger: Ledger, *, sha256: str, watch: str, source: Path, folder: Path, name: str,
                  on_placed: Callable[[Path, Path], None] | None = None) -> Path | None:
    """Move the photo at `source` into `folder` as `name` (or `name (n)`), and record it, as one recoverable step.

    `name` is one file name (any bytes the file system allows, from
    os.fsdecode); `sha256` is the photo's content hash, `watch` its watch's
    name (the ledger's jobs of that content and watch follow the photo).
    `on_placed(source, new)` runs once the photo is whole and recorded at
    `new`, before `source` is removed (the error report of a failed photo);
    after a crash, recovery calls it again.

    Returns the new path; None while another process or thread moves this
    file. PhotoError (transient) when it cannot move now (a full disk,
    permissions): the photo is still whole at `source`, nothing of the try is
    left in `folder`, and the move waits in the ledger (`waiting_moves`).
    """
    dest = folder / name
    taken = ledger.take_move(sha256=sha256, watch=watch, source_path=source, dest_path=dest, owner=mover(), gone=_gone)
    if taken is None:
        log.info("%s: another nst-watch process is moving it", source)
        return None
    move, resumed = taken
    try:
        done = _settle(ledger, move, on_placed) if resumed else None
        if done is not None and done.parent != folder:  # an earlier move, bound elsewhere, finished first
            return move_original(ledger, sha256=sha256, watch=watch, source=done, folder=folder, name=name,
                                 on_placed=on_placed)
        if done is not None:
            return done
        if not source.exists():
            ledger.end_move(move.id)
            return None
        ledger.plan_move(move.id, dest)
        final = _place_original(ledger, move.id, source, dest)
        ledger.placed_move(move.id, final)
        fault("relocated")  # crash tests: recorded at its new place, the inbox copy not yet removed
        if on_placed is not None:
            on_placed(source, final)
        _remove_source(source)
        ledger.end_move(move.id)
        return final
    except Exception as exc:
        error = exc if isinstance(exc, PhotoError) else write_error(dest, exc) if isinstance(exc, OSError) else None
        try:
            ledger.wait_move(move.id, str(error or exc))
        except Exception:  # noqa: BLE001 - the ledger itself is down: the next start recovers the row
            log.exception("%s: could not record the failed move", source)
        if error is not None:
            raise error from exc
        raise


def _place_original(ledger: Ledger, move_id: int, source: Path, dest: Path) -> Path:
    """Give the photo its name in `dest`'s folder (no clobber): a link on one file system, else a staged copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    plan = lambda name: ledger.plan_move(move_id, name)  # noqa: E731
    try:
        fault("moving")  # tests: EXDEV here puts the folder on "another file system"
        final = place(source, dest, "suffix", plan=plan)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Another file system: copy into a staging file beside the destination
        # (fsynced), link it to the free name, remove the staging file.
        final = write_atomic(dest, copy_into(source), "suffix", temp=f"move{move_id}", plan=plan)
    fault("moved")  # crash tests: whole at its new name, not yet recorded
    return final


def recover_moves(ledger: Ledger, on_placed: Callable[[Move, Path], None] | None = None) -> int:
    """Finish or clear the moves of processes that were killed mid-move; how many were finished.

    Run at every start (worker and intake), before any job is claimed, so
    `status`, the web view and `retry` see where each photo really is.
    `on_placed(move, new)` runs for each move found whole at its new place,
    before its source is removed. A move found unfinished is cleared and
    waits for another try (its photo is still at its source); one whose
    photo is gone is forgotten.
    """
    finished = 0
    for found in ledger.moves():
        if found.owner is None or not _gone(found.owner):
            continue  # waiting for another try, or in the hands of a live process
        taken = ledger.take_move(sha256=found.sha256, watch=found.watch, source_path=found.source_path,
                                 dest_path=found.dest_path, owner=mover(), gone=_gone)
        if taken is None:
            continue
        move = taken[0]
        then = None if on_placed is None else lambda _source, new, move=move: on_placed(move, new)
        try:
            new = _settle(ledger, move, then)
        except OSError as exc:
            ledger.wait_move(move.id, str(write_error(Path(move.dest_path), exc)))
            continue
        if new is not None:
            log.info("%s: finished moving it to %s (nst-watch had stopped mid-move)", move.source_path, new)
            finished += 1
        elif Path(move.source_path).exists():
            ledger.wait_move(move.id, "nst-watch stopped while moving it; it is moved again")
        else:
            log.warning("%s: gone while nst-watch was stopped mid-move; nothing to move", move.source_path)
            ledger.end_move(move.id)
    return finished


def waiting_moves(ledger: Ledger) -> list[Move]:
    """The moves that failed (a full disk...) or were interrupted, waiting for another try, oldest first."""
    return [move for move in ledger.moves() if move.owner is None]
