"""Atomic, no-clobber file writes.

Bytes go to a temp file in the target folder (same file system, so the final
step is a rename or link, never a copy), are fsynced, then put in place:

* ``suffix``/``skip``: ``os.link(temp, final)`` fails with EEXIST instead of
  replacing, so two workers racing for one name can never overwrite each
  other; under ``suffix`` the loser tries ``name (1).ext``, ``name (2).ext``...
  File systems without hard links (FAT, some FUSE/SMB mounts) get the same
  guarantee from reserving the name with O_CREAT|O_EXCL and renaming onto it.
* ``overwrite``: ``os.replace``.

The temp name ``.nst-tmp-<random>`` is a dotfile without a photo extension,
so neither nst-watch nor a photo tool mistakes it for a photo.
"""

from __future__ import annotations

import errno
import os
import secrets
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
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
_MAX_SUFFIX = 100_000
# An encoder that fails on good pixels is our bug, not the user's: say so, and
# give a way around it that exists (the preset's `output.format`, the watch's
# `format`, or the output name's extension on the command line).
ENCODE_FIX = ("the photo itself is fine; write another format (format: png or tiff in the preset's output "
              "or the watch, or a .png/.tif output name) and please report this as an nst-watch bug")


def write_atomic(dest: Path, write: Callable[[BinaryIO], None], collision: str = "suffix",
                 temp: str | None = None) -> Path | None:
    """Write `dest` through `write(fileobj)`; return the path used, None if skipped.

    On any failure neither the temp file nor anything under the final name is
    left behind. OSErrors become PhotoError (transient: the photo is fine, the
    disk or folder is not); other exceptions from `write` propagate unchanged.
    `temp` names the temp file (``TEMP_PREFIX`` + `temp`; default random): a
    caller that can be killed mid-write and retried, like the daemon's
    worker, passes a name it will know again, so its next attempt removes
    what the killed one left.
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
        final = _place(tmp, dest, collision)
        if final is not None:
            fsync_dir(folder)
        return final
    except OSError as exc:
        raise write_error(dest, exc) from exc
    finally:
        _unlink_quietly(tmp)


def _place(tmp: Path, dest: Path, collision: str) -> Path | None:
    if collision == "overwrite":
        os.replace(tmp, dest)
        return dest
    for candidate in _candidates(dest):
        try:
            _link_no_clobber(tmp, candidate)
            return candidate
        except FileExistsError:
            if collision == "skip":
                return None
    raise OSError(errno.EEXIST, f"no free name after {_MAX_SUFFIX} tries", str(dest))


def publish(staged: Path, final: Path) -> None:
    """Give the complete file `staged` a second name `final`, never replacing a file.

    Raises FileExistsError if `final` is taken. `staged` keeps its name (where
    hard links work), so a worker that crashes right after this call can
    still recognise `final` as its own output with os.path.samefile.
    """
    _link_no_clobber(Path(staged), Path(final))
    fsync_dir(Path(final).parent)


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
                          f"free space on {folder} (or its quota), then retry", permanent=False)
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
