"""Decide when a file in a hot folder has finished arriving.

A watchdog event is only a hint that a path changed: `on_created` fires
before a copy finishes, and some writers give no usable event at all. The
tracker keeps the set of candidate paths and, when the caller polls it,
`os.lstat`s each one. A file is ready once its (size, mtime_ns, inode, dev,
ctime_ns) has stayed unchanged for `settle_seconds` and no new event arrived
for it in that window.

Files are never opened here: opening a FIFO blocks forever, and opening a
file that another client is writing on an SMB share can break that client.
Symlinks are never followed (a link could point anywhere, e.g. /etc/shadow).

Results: `poll()` returns one list of `Ready` records. `kind == "ready"` means
"hand it to the job table"; any other kind is a rejection the daemon should
log once as a warning: "symlink", "not-regular" (FIFO, socket, device,
directory), "empty" (zero bytes for a whole settle window) or "too-long"
(its path is longer than the system allows, so it can never be read). Each candidate
yields at most one record and is then dropped. Vanished files are dropped
silently.

A path that was already reported is not reported again while its signature
is unchanged, so late events and reconcile scans do not produce duplicate
jobs. A changed file (new content under the same name) is reported again,
and so is one whose metadata changed: the signature holds ctime, which
chmod/chown and a rename away and back (on Linux file systems) bump, so a
photo made readable, or moved back, counts as news.

"Reported" is not "taken": when the consumer could not use a report (the
file was unreadable, locked, a read failed) it must call `unreport(path)`, or
the next scan's touch would be dropped here as a late duplicate and the file
never looked at again while the daemon runs. Call `forget(path)` too when
the daemon moves a file away, so that the same file moved back is new.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

READY = "ready"
SYMLINK = "symlink"
NOT_REGULAR = "not-regular"
EMPTY = "empty"
TOO_LONG = "too-long"

# (size, mtime_ns, inode, dev, ctime_ns): what must stay still for a file to count as settled.
Signature = tuple[int, int, int, int, int]
_NO_SIGNATURE: Signature = (0, 0, 0, 0, 0)  # reported for a path lstat cannot reach (too long)


@dataclass(frozen=True, slots=True)
class Ready:
    """One outcome of `SettleTracker.poll`: a settled file, or a rejection.

    `kind` is "ready" for a file to process; otherwise the rejection reason
    ("symlink", "not-regular", "empty", "too-long"). size/mtime_ns/inode/dev come from the
    `os.lstat` that decided the outcome, so the daemon can later check that
    the file it opens is still the one that settled; `mode` (st_mode) says
    what a "not-regular" entry is (directory, FIFO, socket, device).
    """

    path: Path
    kind: str
    size: int
    mtime_ns: int
    inode: int
    dev: int
    mode: int = 0
    ctime_ns: int = 0

    @property
    def ok(self) -> bool:
        """True for a file ready to process, False for a rejection."""
        return self.kind == READY


class _Candidate:
    """Mutable per-path state, only touched under the tracker's lock."""

    __slots__ = ("sig", "stable_since")

    def __init__(self, now: float) -> None:
        self.sig: Signature | None = None
        self.stable_since = now


def _signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)


def _key(path: str | os.PathLike[str]) -> str:
    # abspath is string work plus getcwd(); it unifies event paths and scan paths.
    return os.path.abspath(os.fspath(path))


class SettleTracker:
    """Candidate files waiting to settle. Thread-safe; has no threads of its own.

    `touch` is called from watchdog handler threads and scans; `poll` from the
    daemon's loop (about every 0.5 s). `clock` is injectable so tests can run
    without waiting. `remember` bounds how many reported signatures are kept
    for de-duplication (oldest forgotten first).
    """

    def __init__(
        self,
        settle_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        remember: int = 100_000,
    ) -> None:
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must be >= 0, got {settle_seconds}")
        self.settle_seconds = float(settle_seconds)
        self._clock = clock
        self._remember = remember
        self._lock = threading.Lock()
        self._candidates: dict[str, _Candidate] = {}
        self._reported: OrderedDict[str, Signature] = OrderedDict()

    def touch(self, path: str | os.PathLike[str]) -> None:
        """Record `path` as a candidate, or restart its settle window. O(1), never raises.

        Restarting the window on every event makes a file that is still being
        written wait even where mtime granularity is coarse (FAT, some SMB).
        """
        try:
            key = _key(path)
            now = self._clock()
            with self._lock:
                candidate = self._candidates.get(key)
                if candidate is None:
                    self._candidates[key] = _Candidate(now)
                else:
                    candidate.stable_since = max(candidate.stable_since, now)
        except Exception:  # noqa: BLE001 - called from watchdog threads, must not raise
            logger.exception("settle: could not record %r", path)

    def forget(self, path: str | os.PathLike[str]) -> None:
        """Drop `path` from candidates and from the reported memory."""
        key = _key(path)
        with self._lock:
            self._candidates.pop(key, None)
            self._reported.pop(key, None)

    def unreport(self, path: str | os.PathLike[str]) -> None:
        """Forget only that `path` was reported: the consumer could not take it.

        The next touch then judges it afresh even if nothing about it changed
        (a lock released, a share back). A candidate already waiting again
        (an event raced in) keeps its settle window.
        """
        with self._lock:
            self._reported.pop(_key(path), None)

    def pending(self) -> int:
        """How many paths are still waiting to settle."""
        with self._lock:
            return len(self._candidates)

    def poll(self) -> list[Ready]:
        """lstat every candidate once; return the files that settled and the rejections."""
        now = self._clock()
        with self._lock:
            keys = list(self._candidates)
        # lstat outside the lock: on a stalled network share it can block, and
        # touch() from watchdog threads must never wait for that.
        observations = [(key, self._lstat(key)) for key in keys]
        results: list[Ready] = []
        with self._lock:
            for key, st in observations:
                outcome = self._judge(key, st, now)
                if outcome is not None:
                    results.append(outcome)
        return results

    @staticmethod
    def _lstat(key: str) -> os.stat_result | OSError:
        try:
            return os.lstat(key)
        except OSError as exc:
            return exc
        except ValueError:  # embedded NUL: no such file can exist
            return FileNotFoundError(key)

    def _judge(self, key: str, st: os.stat_result | OSError, now: float) -> Ready | None:
        """Update one candidate from its lstat; return an outcome once it is decided."""
        candidate = self._candidates.get(key)
        if candidate is None:  # forgotten while we were stat-ing
            return None
        if isinstance(st, (FileNotFoundError, NotADirectoryError)):
            del self._candidates[key]
            self._reported.pop(key, None)
            return None
        if isinstance(st, OSError) and st.errno == errno.ENAMETOOLONG:
            # Never passes: waiting would keep it "settling" for ever. Said once.
            if self._reported.get(key) == _NO_SIGNATURE:
                del self._candidates[key]
                return None
            return self._finish(key, _NO_SIGNATURE, TOO_LONG, 0)
        if isinstance(st, OSError):
            # EACCES, ESTALE, EIO...: maybe temporary (a share reconnecting). Keep waiting.
            logger.debug("settle: cannot lstat %s: %s", key, st)
            candidate.sig = None
            candidate.stable_since = max(candidate.stable_since, now)
            return None
        sig = _signature(st)
        if self._reported.get(key) == sig:
            del self._candidates[key]  # already reported and unchanged: a late event
            return None
        if stat.S_ISLNK(st.st_mode):
            return self._finish(key, sig, SYMLINK, st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            return self._finish(key, sig, NOT_REGULAR, st.st_mode)
        if sig != candidate.sig:
            candidate.sig = sig
            candidate.stable_since = max(candidate.stable_since, now)
            return None
        if now - candidate.stable_since < self.settle_seconds:
            return None
        return self._finish(key, sig, EMPTY if st.st_size == 0 else READY, st.st_mode)

    def _finish(self, key: str, sig: Signature, kind: str, mode: int) -> Ready:
        """Drop the candidate, remember what was reported, build the record."""
        del self._candidates[key]
        self._reported[key] = sig
        self._reported.move_to_end(key)
        while len(self._reported) > self._remember:
            self._reported.popitem(last=False)
        size, mtime_ns, inode, dev, ctime_ns = sig
        return Ready(Path(key), kind, size, mtime_ns, inode, dev, mode, ctime_ns)
