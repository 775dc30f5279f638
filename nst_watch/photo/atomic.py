"""Atomic, no-clobber file writes: the file-level half of nst-watch's one publish path.

Bytes go to a temp file in the target folder (same file system, so the final
step is a rename or link, never a copy), are fsynced, then put in place:

* ``suffix``/``skip``: ``os.link(temp, final)`` fails with EEXIST instead of
  replacing, so two workers racing for one name can never overwrite each
  other; under ``suffix`` the loser tries ``name (1).ext``, ``name (2).ext``...
  File systems without hard links (FAT, some FUSE/SMB mounts) get the same
  guarantee from reserving the name with O_CREAT|O_EXCL and renaming onto it.
* ``overwrite``: ``os.replace``.

The folder is fsynced once the name is given, and the temp file is removed
on success and on any error (a full disk, an I/O error, an encoder that
raises), so nothing partial ever carries a final name. :func:`place` is the
last step on its own, for a complete file already on the destination's file
system (a worker's staged result, an original moving to processed/);
:func:`copy_into` writes another file's bytes and dates into the temp file,
for a move across file systems. `plan` callbacks let a caller record the
name in its ledger before the name exists (nst_watch.service.publish builds
the daemon's crash-safe protocol on these).

The temp name ``.nst-tmp-<random>`` is a dotfile without a photo extension,
so neither nst-watch nor a photo tool mistakes it for a photo.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from nst_watch.errors import PhotoError
from nst_watch.faults import fault

from .naming import numbered_name

TEMP_PREFIX = ".nst-tmp-"
COLLISIONS = ("suffix", "skip", "overwrite")
# EXDEV is not among them: a link across file systems is a move that needs a copy (copy_into).
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}
_MAX_SUFFIX = 100_000
COPY_CHUNK = 1 << 20  # bytes per read while copying a photo across file systems
# An encoder that fails on good pixels is our bug, not the user's: say so, and
# give a way around it that exists (the preset's `output.format`, the watch's
# `format`, or the output name's extension on the command line).
ENCODE_FIX = ("the photo itself is fine; write another format (format: png or tiff in the preset's output "
              "or the watch, or a .png/.tif output name) and please report this as an nst-watch bug")


def write_atomic(dest: Path, write: Callable[[BinaryIO], None], collision: str = "suffix",
                 temp: str | None = None, plan: Callable[[Path], object] | None = None) -> Path | None:
    """Write `dest` through `write(fileobj)`; return the path used, None if skipped.

    On any failure neither the temp file nor anything under the final name is
    left behind. OSErrors become PhotoError (transient: the photo is fine, the
    disk or folder is not); other exceptions from `write` propagate unchanged.
    `temp` names the temp file (``TEMP_PREFIX`` + `temp`; default random): a
    caller that can be killed mid-write and retried, like the daemon's
    worker, passes a name it will know again, so its next attempt removes
    what the killed one left. `plan` is passed on to :func:`place`.
    """
    if collision not in COLLISIONS:
        raise ValueError(f"collision must be one of {COLLISIONS}, not {collision!r}")
    dest = Path(dest)
    folder = dest.parent
    tmp = folder / f"{TEMP_PREFIX}{temp or secrets.token_hex(8)}"
    if temp is not None:
        _unlink_quietly(tmp)  # a killed earlier attempt's
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if collision == "skip" and os.path.lexists(dest):
            return None
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        # open() with an opener keeps f.name a path, which tifffile needs.
        with open(tmp, "w+b", opener=lambda p, _: os.open(p, flags, 0o666)) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        fault("writing")  # crash tests: the temp file is whole, the final name not yet given
        return place(tmp, dest, collision, plan=plan)
    except OSError as exc:
        raise write_error(dest, exc) from exc
    finally:
        _unlink_quietly(tmp)


def place(stage: Path, dest: Path, collision: str = "suffix", *,
          plan: Callable[[Path], object] | None = None) -> Path | None:
    """Give the complete, fsynced file `stage` the name `dest` (or a free variant); None if skipped.

    `stage` must be on `dest`'s file system (OSError EXDEV otherwise).
    ``suffix`` tries `dest`, ``dest (1)``... and takes the first that is
    free at the moment of the link; ``skip`` returns None if `dest` is
    taken; ``overwrite`` replaces it. `plan(name)` is called before each
    name is given, so a ledger can know the name before it exists. Where
    hard links work `stage` keeps its name too (for os.path.samefile after a
    crash; the caller removes it); elsewhere it is renamed onto the name.
    The folder is fsynced once the name is given. OSError on failure.
    """
    stage, dest = Path(stage), Path(dest)
    if collision == "overwrite":
        if plan is not None:
            plan(dest)
        os.replace(stage, dest)
        fsync_dir(dest.parent)
        return dest
    for candidate in _candidates(dest):
        if os.path.lexists(candidate):  # taken: no need to plan it
            if collision == "skip":
                return None
            continue
        if plan is not None:
            plan(candidate)
        try:
            _link_no_clobber(stage, candidate)
        except FileExistsError:  # another writer took it between our look and our link
            if collision == "skip":
                return None
            continue
        fsync_dir(candidate.parent)
        return candidate
    raise OSError(errno.EEXIST, f"no free name after {_MAX_SUFFIX} tries", str(dest))


def copy_into(src: Path) -> Callable[[BinaryIO], None]:
    """A `write` for write_atomic that copies `src`: its bytes, then its dates and mode (as shutil.copy2).

    For moving a photo across file systems: the copy is whole and fsynced
    before it gets a name, and the original is removed only after that.
    """
    def write(f: BinaryIO) -> None:
        with open(src, "rb") as original:
            while chunk := original.read(COPY_CHUNK):
                f.write(chunk)
                fault("copying")  # crash and full-disk tests: part of the photo is in the temp file
        f.flush()  # before copystat: a later write would move the dates again
        shutil.copystat(src, f.name)

    return write


def _candidates(dest: Path) -> Iterator[Path]:
    yield dest
    for n in range(1, _MAX_SUFFIX):
        yield dest.with_name(numbered_name(dest.name, n))


def _link_no_clobber(tmp: Path, final: Path) -> None:
    """Make `final` name tmp's content, failing with FileExistsError if taken."""
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in _NO_HARDLINKS:
            raise
        # No hard links here: claim the name atomically, then rename onto it.
        os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
        try:
            os.replace(tmp, final)
        except OSError:
            _unlink_quietly(final)
            raise


def fsync_dir(folder: Path) -> None:
    """Make the new directory entry durable; best effort where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # EINVAL on file systems that cannot sync directories
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_error(dest: Path, exc: OSError) -> PhotoError:
    """A clear, transient PhotoError for an OSError while writing `dest`."""
    folder = dest.parent
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return PhotoError(dest, f"no space left on the device holding {folder}",
                          f"free space on {folder} (or its quota)", permanent=False)
    if code in (errno.EACCES, errno.EPERM):
        return PhotoError(dest, f"permission denied writing in {folder}",
                          f"let the user running nst-watch write to {folder}", permanent=False)
    if code == errno.EROFS:
        return PhotoError(dest, f"{folder} is on a read-only file system",
                          "point the output at a writable folder", permanent=False)
    if code is None:  # encoders raise errno-less OSErrors for bad data
        return PhotoError(dest, f"could not encode the image: {exc}", ENCODE_FIX)
    return PhotoError(dest, f"could not write into {folder}: {exc.strerror or exc}", permanent=False)


def clean_temp_files(root: Path, older_than: float = 0.0) -> list[Path]:
    """Remove leftover `.nst-tmp-*` files under `root` (recursively); return them.

    Called at daemon start. With several workers sharing an output tree, pass
    `older_than` (seconds) so another worker's in-flight temp file survives.
    Symbolic links are neither followed nor removed.
    """
    removed: list[Path] = []
    cutoff = time.time() - older_than
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            path = Path(dirpath, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and (older_than <= 0 or st.st_mtime < cutoff):
                    os.unlink(path)
                    removed.append(path)
            except FileNotFoundError:
                continue
    return removed
