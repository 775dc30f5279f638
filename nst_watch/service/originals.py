"""What happens to a photo once all its presets are finished.

Originals are never deleted or overwritten: they stay (`processed: keep`), or
move with a no-clobber rename to `processed/` when every preset is done, or to
`failed/` with a `<name>.error.txt` when any preset failed for good.

Any name the file system allows is handled: names that fill the 255-byte
limit get shortened collision and report names (extension kept, see
nst_watch.photo.naming), and the report quotes names that are not UTF-8 or
hold control characters in escaped form, so it is always valid UTF-8 text.
"""

from __future__ import annotations

import errno
import logging
import os
from datetime import datetime
from pathlib import Path

from ..config import Watch
from ..errors import PhotoError
from ..jobs import DONE, LEASED, PENDING, Job, Ledger
from ..photo.atomic import write_atomic
from ..photo.naming import derived_name, escape_name, numbered_name

log = logging.getLogger("nst_watch.originals")


def move_no_clobber(src: Path, folder: Path, name: str) -> Path:
    """Move `src` into `folder` as `name` (or `name (n)`), never replacing a file.

    `name` is a single file name (any bytes the file system allows, as from
    os.fsdecode); numbered variants stay within 255 bytes. OSError if the
    move fails; `src` is then untouched.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(0, 100_000):
        dest = folder / (name if n == 0 else numbered_name(name, n))
        try:
            os.link(src, dest)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno != errno.EXDEV and exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            if dest.exists():
                continue
            os.rename(src, dest) if exc.errno != errno.EXDEV else _copy_then_remove(src, dest)
            return dest
        os.unlink(src)
        return dest
    raise OSError(errno.EEXIST, "no free name", str(folder / name))


def _copy_then_remove(src: Path, dest: Path) -> None:
    import shutil

    shutil.copy2(src, dest)
    os.unlink(src)


def finish_original(ledger: Ledger, watch: Watch, sha256: str, path: Path) -> Path | None:
    """Move `path` if every job of its content in this watch is finished; return the new path."""
    jobs = [j for j in ledger.jobs_for(sha256) if j.watch == watch.name]
    if not jobs or any(j.state in (PENDING, LEASED) for j in jobs):
        return None
    if not path.exists():
        return None
    if all(j.state == DONE for j in jobs):
        target = watch.processed_dir
        if target is None:
            if watch.failed is not None and path.is_relative_to(watch.failed):
                # A retried photo succeeded: back to the inbox it came from.
                return _move(ledger, jobs, path, watch.input, path.name, error_txt=True)
            return None
        return _move(ledger, jobs, path, target, _relative_name(watch, path), error_txt=True)
    if watch.failed is None or path.is_relative_to(watch.failed):
        return None
    new = _move(ledger, jobs, path, watch.failed, _relative_name(watch, path))
    if new is not None:
        _write_error_report(new, path, jobs)
    return new


def _relative_name(watch: Watch, path: Path) -> str:
    # Keep route subfolders apart: failed/waves/x.jpg vs failed/mosaic/x.jpg.
    try:
        rel = path.relative_to(watch.input)
    except ValueError:
        return path.name
    return str(rel)


def _move(ledger: Ledger, jobs: list[Job], path: Path, folder: Path, name: str, *, error_txt=False) -> Path | None:
    sub = Path(name)
    try:
        new = move_no_clobber(path, folder / sub.parent, sub.name)
    except OSError as exc:
        log.error("%s: could not move to %s: %s (the photo stays where it is)", path, folder, exc)
        return None
    if error_txt:
        _remove_quietly(path.with_name(report_name(path.name)))
    for job in jobs:
        ledger.relocate(job.id, new)
    log.info("%s -> %s", path, new)
    return new


def report_name(photo_name: str) -> str:
    """``photo.jpg`` -> ``photo.jpg.error.txt``, shortened to fit 255 bytes (see derived_name)."""
    return derived_name(photo_name, ".error.txt")


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _write_error_report(new: Path, old: Path, jobs: list[Job]) -> None:
    """`<name>.error.txt` beside the moved photo; a failure is logged (the photo is already safe)."""
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
        if job.state == DONE:
            lines.append(f"preset {q(job.preset)}: done -> {q(str(job.output_path))}")
        else:
            lines.append(f"preset {q(job.preset)}: {job.state} after {job.attempts} attempt(s) (job {job.id})")
            lines.append(f"    {q(str(job.error))}")
    ids = " ".join(str(j.id) for j in jobs if j.state != DONE)
    # Not every reason says what to do (an encoder bug has nothing to fix in
    # the photo), so the advice does not presume that one exists above.
    lines += [
        "",
        "To retry once the reason above is dealt with (where it gives advice in brackets, follow it),",
        f"either move this photo back into the watched folder {q(str(old.parent))} (it is queued again),",
        "or run:",
        f"    nst-watch retry -c CONFIG {ids}",
    ]
    text = "\n".join(lines) + "\n"
    report = new.with_name(report_name(new.name))
    try:  # temp file + fsync + rename: never a half-written report under the final name
        write_atomic(report, lambda f: f.write(text.encode("utf-8")), "overwrite")
    except PhotoError as exc:
        log.error("%s: could not write the error report: %s", new, exc)
