"""What happens to a photo once all its presets are finished.

Originals are never deleted or overwritten: they stay (`processed: keep`), or
move to `processed/` when every preset is done, or to `failed/` with a
`<name>.error.txt` when any preset failed for good. Every move goes through
nst_watch.service.publish.move_original: no clobbering, the photo leaves its
folder only once its copy is whole and durable where it went (across file
systems too), and the move and its record in the ledger are one recoverable
step. A move that cannot happen now (the disk holding processed/ is full)
leaves the photo where it is and nothing in the target folder; it waits in
the ledger and is tried again at every reconcile scan and every start
(retry_moves).

A photo's mask (a sidecar such as `IMG_1.mask.png`, see config.MaskSettings)
goes with it, through the same protocol, once every job that used it is
finished: to processed/ or failed/ beside the photo, named after the photo's
new name. A mask is never moved, nor reported, on its own account.

Any name the file system allows is handled: names that fill the 255-byte
limit get shortened collision and report names (extension kept, see
nst_watch.photo.naming), and the report quotes names that are not UTF-8 or
hold control characters in escaped form, so it is always valid UTF-8 text.
"""

from __future__ import annotations

import logging
import shlex
from datetime import datetime
from pathlib import Path

from ..config import Config, Watch
from ..errors import PhotoError
from ..jobs import DONE, LEASED, PENDING, Job, Ledger, Move
from ..photo.naming import derived_name, escape_name
from ..watch.masks import MaskNames
from .identity import file_sha256
from .publish import move_original, recover_moves, waiting_moves, write_file

log = logging.getLogger("nst_watch.originals")


def finish_original(ledger: Ledger, watch: Watch, sha256: str, path: Path, *,
                    config_path: Path | None = None) -> Path | None:
    """Move `path` if every job of its content in this watch is finished; return the new path.

    None when it stays: kept, not finished yet, or it cannot move now (the
    reason is logged, and the move is tried again by retry_moves).
    `config_path` is the daemon's config file, for the error report's
    `nst-watch retry -c` line.
    """
    target = _target(ledger, watch, sha256, path)
    if target is None:
        return None
    return _move(ledger, watch, sha256, path, *target, config_path=config_path)


def _jobs_of(ledger: Ledger, watch: Watch, sha256: str, *paths: Path) -> list[Job]:
    """The jobs (in this watch) that decide the fate of the photo file of content `sha256` at one of `paths`.

    The jobs whose source it is; else, for a second name of the content
    (taken while its jobs ran, or dropped again), the jobs of its pair: those
    with the mask beside it by name (or those without a mask when it has
    none); else every job of the content. So two copies of one photo, each
    with its own mask, are judged each by its own jobs: a bad mask fails its
    own photo only.
    """
    jobs = [j for j in ledger.jobs_for(sha256) if j.watch == watch.name]
    own = [j for j in jobs if Path(j.source_path) in paths]
    if own:
        return own
    masks = set()
    names = MaskNames(watch.mask.names)
    for path in paths:
        for candidate in names.candidates(path):
            try:
                masks.add(file_sha256(candidate))
            except OSError:
                continue
    paired = [j for j in jobs if (j.mask_sha256 in masks if masks else j.mask_sha256 is None)]
    return paired or jobs


def _target(ledger: Ledger, watch: Watch, sha256: str, path: Path) -> tuple[Path, str] | None:
    """(folder, name) where the photo (or mask) at `path` goes now, or None if it stays."""
    jobs = _jobs_of(ledger, watch, sha256, path)
    if not jobs:
        return _mask_target(ledger, watch, sha256, path)
    # The photo's proofs decide where it goes, not the finals asked of them later: a final that fails
    # never sends a photo whose proofs are done to failed/.
    jobs = [j for j in jobs if j.proof_id is None] or jobs
    if any(j.state in (PENDING, LEASED) for j in jobs):
        return None
    if not path.exists():
        return None
    if watch.finals_dir is not None and path.is_relative_to(watch.finals_dir):
        return None  # a copy dropped to ask for a final (its original was gone): it stays where it was dropped
    if all(j.state == DONE for j in jobs):
        if watch.processed_dir is not None and path.is_relative_to(watch.processed_dir):
            return None  # moved there when its proofs were done; a final read it from there
        if watch.processed_dir is not None:
            return watch.processed_dir, _relative_name(watch, path)
        if watch.failed is not None and path.is_relative_to(watch.failed):
            return watch.input, path.name  # a retried photo succeeded: back to the inbox it came from
        return None
    if watch.failed is None or path.is_relative_to(watch.failed):
        return None
    return watch.failed, _relative_name(watch, path)


def _mask_target(ledger: Ledger, watch: Watch, sha256: str, path: Path,
                 photo: Path | None = None) -> tuple[Path, str] | None:
    """(folder, name) beside its photo for the mask at `path`, once every job that uses it is finished and
    the photo has moved (to processed/ or failed/, or back to the inbox); None while it stays.

    Its photo is `photo` (the photo that just moved), else the latest
    photo of the mask's stem whose jobs used it. It stays while another
    photo of its stem beside it still uses it (a RAW+JPEG pair shares one).
    The name follows the photo's: a photo that took a free name
    ("IMG_1 (1).jpg") takes its mask along as "IMG_1 (1).mask.png".
    """
    jobs = [j for j in ledger.jobs_with_mask(sha256) if j.watch == watch.name]
    if not jobs or any(j.state in (PENDING, LEASED) for j in jobs) or not path.exists():
        return None
    names = MaskNames(watch.mask.names)
    stem = names.stem_of(path.name)
    sources = [Path(j.source_path) for j in jobs]
    if any(s.parent == path.parent and s.stem == stem and s != photo and s.exists() for s in sources):
        return None
    if photo is None:
        mine = [s for s in sources if s.stem == stem] or sources
        photo = mine[-1]
    if photo.parent == path.parent or not photo.exists():
        return None
    return photo.parent, names.renamed(path.name, photo.stem)


def _masks_follow(ledger: Ledger, watch: Watch, sha256: str, old: Path, new: Path, *,
                  config_path: Path | None) -> None:
    """The photo's mask, left where the photo was, goes where it went (the same protocol), keeping its name.

    Its mask is the one named after it beside it (or the one its jobs
    used, there), if it holds the bytes one of its jobs used: a mask
    replaced since is a new mask, the intake's to judge.
    """
    jobs = _jobs_of(ledger, watch, sha256, new, old)
    used = {j.mask_sha256 for j in jobs if j.mask_sha256}
    if not used:
        return
    masks = set(MaskNames(watch.mask.names).candidates(old))
    masks |= {Path(j.mask_path) for j in jobs if j.mask_path and Path(j.mask_path).parent == old.parent}
    for mask in sorted(masks):
        try:
            mask_sha = file_sha256(mask)
        except OSError:
            continue  # gone, or unreadable: nothing to take along
        if mask_sha not in used:
            continue  # replaced since: a new mask, the intake's to judge
        target = _mask_target(ledger, watch, mask_sha, mask, new)
        if target is not None:
            _move(ledger, watch, mask_sha, mask, *target, config_path=config_path)


def _relative_name(watch: Watch, path: Path) -> str:
    # Keep route subfolders apart: failed/waves/x.jpg vs failed/mosaic/x.jpg.
    try:
        rel = path.relative_to(watch.input)
    except ValueError:
        return path.name
    return str(rel)


def _move(ledger: Ledger, watch: Watch, sha256: str, path: Path, folder: Path, name: str, *,
          config_path: Path | None, said: str | None = None) -> Path | None:
    """Move the photo; a failure is logged (at info level when it says again what `said` said)."""
    sub = Path(name)
    def placed(old: Path, new: Path) -> None:
        _placed(ledger, watch, sha256, old, new, config_path)

    try:
        new = move_original(ledger, sha256=sha256, watch=watch.name, source=path, folder=folder / sub.parent,
                            name=sub.name, on_placed=placed)
    except PhotoError as exc:
        level = logging.INFO if str(exc) == said else logging.ERROR
        fix = f" ({exc.fix})" if exc.fix else ""
        log.log(level, "%s: could not move it into %s: %s%s. The photo stays where it is, whole; the move is "
                "tried again at every reconcile scan and at the next start", path, folder, exc.reason, fix)
        return None
    if new is not None:
        log.info("%s -> %s", path, new)
        _masks_follow(ledger, watch, sha256, path, new, config_path=config_path)
    return new


def _placed(ledger: Ledger, watch: Watch, sha256: str, old: Path, new: Path, config_path: Path | None) -> None:
    """The photo is whole and recorded at `new`: write its error report, or drop the one it leaves behind."""
    failed = watch.failed
    if failed is None:
        return
    if new.is_relative_to(failed) and not old.is_relative_to(failed):
        jobs = _jobs_of(ledger, watch, sha256, new, old)  # its own: not those of a copy with another mask
        if any(j.state != DONE for j in jobs):
            _write_error_report(new, old, jobs, config_path)
    elif old.is_relative_to(failed):
        _remove_quietly(old.with_name(report_name(old.name)))  # a retried photo succeeded: its report goes


def recover_originals(ledger: Ledger, config: Config) -> None:
    """At a start: finish or clear the moves a killed process left, then try again the moves that wait."""
    def placed(move: Move, new: Path) -> None:
        watch = config.watch(move.watch)
        if watch is not None:
            _placed(ledger, watch, move.sha256, Path(move.source_path), new, config.path)

    recover_moves(ledger, placed)
    retry_moves(ledger, config)


def retry_moves(ledger: Ledger, config: Config) -> int:
    """Try again every move that waits (a full disk, an interrupted move); how many moved now.

    A move no longer wanted (the photo gone, its jobs retried, its watch
    removed or set to keep) is forgotten.
    """
    moved = 0
    for move in waiting_moves(ledger):
        watch = config.watch(move.watch)
        path = Path(move.source_path)
        target = None if watch is None else _target(ledger, watch, move.sha256, path)
        if target is None:
            ledger.end_move(move.id)
            continue
        if _move(ledger, watch, move.sha256, path, *target, config_path=config.path, said=move.error):
            moved += 1
    return moved


def report_name(photo_name: str) -> str:
    """``photo.jpg`` -> ``photo.jpg.error.txt``, shortened to fit 255 bytes (see derived_name)."""
    return derived_name(photo_name, ".error.txt")


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _write_error_report(new: Path, old: Path, jobs: list[Job], config_path: Path | None = None) -> None:
    """`<name>.error.txt` beside the moved photo; a failure is logged (the photo is already safe).

    The retry line names `config_path` (shell-quoted) when it is known, else the placeholder CONFIG.
    """
    # Names and errors are quoted escaped: a newline in a name would forge a
    # line, and bytes that are not UTF-8 would make the file unreadable as text.
    q = escape_name
    lines = [
        "nst-watch could not finish this photo.",
        "",
        f"photo:   {q(new.name)}",
        f"was at:  {q(str(old))}",
        f"sha256:  {jobs[0].sha256}",
        f"when:    {datetime.now().astimezone().isoformat(timespec='seconds')}",
        "",
    ]
    for job in sorted(jobs, key=lambda j: j.preset):
        if job.state == DONE and job.output_path is None and job.error:
            lines.append(f"preset {q(job.preset)}: job {job.id} {q(job.error)}")  # put aside for another job
        elif job.state == DONE:
            lines.append(f"preset {q(job.preset)}: done -> {q(str(job.output_path))}")
        else:
            mask = f", with the mask {q(Path(job.mask_path).name)}" if job.mask_path else ""
            lines.append(f"preset {q(job.preset)}: {job.state} after {job.attempts} attempt(s) (job {job.id}{mask})")
            lines.append(f"    {q(str(job.error))}")
    ids = " ".join(str(j.id) for j in jobs if j.state != DONE)
    what = "this photo (and its mask, beside it)" if any(j.mask_path for j in jobs) else "this photo"
    config = shlex.quote(q(str(config_path))) if config_path is not None else "CONFIG"
    # Not every reason says what to do (an encoder bug has nothing to fix in
    # the photo), so the advice does not presume that one exists above.
    lines += [
        "",
        "To retry once the reason above is dealt with (where it gives advice in brackets, follow it),",
        f"either move {what} back into the watched folder {q(str(old.parent))} (it is queued again),",
        "or run:",
        f"    nst-watch retry -c {config} {ids}",
    ]
    text = "\n".join(lines) + "\n"
    report = new.with_name(report_name(new.name))
    try:  # staged, fsynced, renamed: never a half-written report under its name; a stale one is replaced
        write_file(report, lambda f: f.write(text.encode("utf-8")), "overwrite")
    except PhotoError as exc:
        log.error("%s: could not write the error report: %s", new, exc)
