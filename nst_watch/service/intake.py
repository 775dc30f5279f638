"""Intake: watched folders -> settled files -> routed jobs in the ledger.

Watchdog events are hints, not tasks: the truth is the ledger, fed by events,
a startup scan and a periodic reconcile scan (inotify overflows are silently
dropped by watchdog). Nothing here imports torch.

Nothing in a watched folder is dropped silently: every entry whose name
matches `include` and that was not taken (a directory, empty, a FIFO, a
symlink, unreadable, ignored by a pattern, outside a preset folder...) is
kept per watch with its reason, logged once (then at debug level), listed by
`nst-watch status`, and lstat-ed about once a second so the list shrinks as
soon as an entry is fixed or removed. What was skipped because of a passing
state (permissions, a lock, a read error) is looked at again on the next
event for it, as soon as it changes, and at every reconcile scan.

A settled file is sniffed as it is hashed: what is no image nst-watch reads
fails there and then (its jobs recorded failed, the file moved to failed/),
instead of waiting in the queue for a worker to find out. A name taken for
content that is still being processed under another name (a hard link, a
copy) is moved, as the watch says, once that content is finished.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, Watch
from ..errors import PhotoError
from ..jobs import DEAD, DONE, FAILED, LEASED, PENDING, Ledger
from ..photo import clean_temp_files
from ..photo.decode import sniff
from ..watch import (DEFAULT_IGNORE, EMPTY, SYMLINK, TOO_LONG, FolderWatcher, MaskNames, PathFilter,
                     SettleTracker, describe_os_error, path_too_long, scan)
from .originals import finish_original, recover_originals, retry_moves
from .proofs import FinalError, proofs_matching, rendering, request_final

log = logging.getLogger("nst_watch.intake")

# Per watch, `status` lists at most this many entries that were not taken
# (plus their total): the live status file is rewritten every second and must
# stay small whatever lands in a folder.
SKIPPED_SHOWN = 50
# Entries remembered one by one per watch; beyond this only a count is kept.
SKIPPED_TRACKED = 100_000
# Entries lstat-ed per recheck (about once a second), round robin.
RECHECK_BATCH = 500
RECHECK_SECONDS = 1.0

# What _ready did with a settled file: taken (queued, or a mask put to use), listed in status as not taken
# yet (a mask waiting for its photo), or left for later (a photo whose mask is still arriving).
TAKEN, LISTED, LATER = "taken", "listed", "later"

_HINTS = {
    "a symbolic link": "nst-watch does not follow links (copy the photo in instead)",
    "empty": "skipped (copy it again if the transfer failed)",
    "a directory": "only files are photos",
}


def _what(mode: int) -> str | None:
    """What a non-regular entry is, in words for status; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


# (mode, size, mtime_ns, ctime_ns, inode): ctime moves on chmod/chown and on a
# rename away and back, so a fixed permission or a photo moved back is news.
def _sig(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (OSError, ValueError):
        return None


class _NotRegular(Exception):
    def __init__(self, st: os.stat_result):
        super().__init__(_what(st.st_mode))
        self.st = st


def _hash_regular(path: Path) -> tuple[os.stat_result, str, PhotoError | None]:
    """(fstat, sha256, why it is no photo or None) of a regular file, never following a link or blocking on a FIFO.

    The path settled as a regular file, but it may have been replaced since
    (by a symlink to /etc/shadow, by a FIFO that would block this loop
    forever): O_NOFOLLOW | O_NONBLOCK and an fstat of what was opened. The
    same descriptor is sniffed (its first bytes, as the decoder reads them),
    so a file that is no image is known before anything is queued.
    """
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _NotRegular(st)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with open(path, "rb", opener=lambda name, _: os.open(name, flags)) as f:  # named: tifffile wants a name
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular(st)
        try:
            sniff(path, f)
            problem = None
        except PhotoError as exc:
            problem = exc
        f.seek(0)
        return st, hashlib.file_digest(f, "sha256").hexdigest(), problem


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What stays the same while a file's content does (ctime moves when another hard link is removed)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class _MaskSeen:
    """A settled mask: its content and what must stay the same for that to hold."""

    sha256: str
    identity: tuple


@dataclass
class _Skip:
    """An entry that was not taken, and why."""

    reason: str
    sig: tuple | None  # when recorded; a change means "look again"
    since: float  # wall clock, for status
    retry: bool  # a passing state (read error): every reconcile scan tries it again


class _WatchState:
    def __init__(self, watch: Watch, config: Config, tracker: SettleTracker, on_path):
        self.watch = watch
        others = [d for d in (watch.output, watch.failed, watch.processed_dir) if d is not None]
        self.mask_names = MaskNames(watch.mask.names)
        self.filter = PathFilter(
            watch.input,
            include=watch.include + self.mask_names.globs(),  # a mask is seen whatever the include
            ignore=DEFAULT_IGNORE + list(watch.ignore),
            recursive=watch.walks_subfolders(),
            exclude_dirs=others,
        )
        self.tracker = tracker
        # Files taken, with their signature: a scan re-hashes only what changed.
        # Popped by watchdog's thread (events), so only ever changed in place.
        self.seen: dict[Path, tuple] = {}
        self.skipped: dict[Path, _Skip] = {}  # main thread only
        self.untracked = 0  # skipped entries beyond SKIPPED_TRACKED: counted, not listed
        # Ignored names reported by watchdog's thread, handled by the main loop.
        self.noticed: deque[tuple[Path, str]] = deque(maxlen=10_000)
        self.scans = 0
        self.scanned_at: float | None = None
        self.rechecked = 0.0
        self.recheck_from = 0
        self.rescan = False  # a folder that could not be listed changed: scan again soon
        # Names taken while their content's jobs were unfinished, by content:
        # {sha256: {path: _identity}}. The worker moves a job's own source
        # once the content is finished; any other name for the same content
        # (a hard link, a copy, the same photo in a second folder) is moved
        # here then, not at the next reconcile scan (a link's inode changes
        # give no event for its other names, and a copy none at all).
        self.waiting: dict[str, dict[Path, tuple]] = {}
        self.waited = 0.0
        # Masks that settled, and the photos taken, by (folder, photo stem): a mask finds the photos it
        # belongs to (a RAW+JPEG pair shares one) and a photo its mask, in whichever order they came.
        self.masks: dict[Path, _MaskSeen] = {}
        self.masks_by_stem: dict[tuple[Path, str], Path] = {}
        self.photos_by_stem: dict[tuple[Path, str], dict[Path, tuple[str, tuple]]] = {}
        self.watcher = FolderWatcher(watch.input, self.filter, on_path, polling=watch.polling, name=watch.name,
                                     on_ignored=lambda path, reason: self.noticed.append((path, reason)))
        self.finals: _FinalsDrop | None = None if watch.finals_dir is None else _FinalsDrop(watch)


class _FinalsDrop:
    """A watch's `finals` folder: a proof (or its original) dropped there asks for its final.

    Its own watchdog observer and settle tracker: a file is matched once it
    has settled, by content to the originals of the watch's proofs, else by
    name to the proofs' files (nst_watch.service.proofs.request_final).
    The file itself stays where it was dropped.
    """

    def __init__(self, watch: Watch):
        folder = watch.finals_dir
        self.folder = folder
        self.tracker = SettleTracker(watch.settle_seconds)
        self.filter = PathFilter(folder, include=watch.include, ignore=DEFAULT_IGNORE + list(watch.ignore))
        self.watcher = FolderWatcher(folder, self.filter, self.tracker.touch, polling=watch.polling,
                                     name=f"{watch.name} finals")
        self.skipped: dict[Path, _Skip] = {}  # drops that asked for no final, for status's "not taken"

    def scan(self) -> None:
        present = set()
        for path in scan(self.folder, self.filter):
            present.add(path)
            self.tracker.touch(path)
        for path in [p for p in self.skipped if p not in present]:
            del self.skipped[path]


class Intake:
    def __init__(self, config: Config, ledger: Ledger, *, clock=time.monotonic,
                 beat: Callable[[], None] | None = None):
        self.config = config
        self.ledger = ledger
        self.clock = clock
        # Called between files in long passes (a startup scan hashing thousands
        # of photos) so the daemon can keep its live status file fresh.
        self.beat = beat or (lambda: None)
        self.states: dict[str, _WatchState] = {}
        self._last_reconcile = clock()
        self.enqueued = 0

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Prepare folders, start every watch, and enqueue the photos already waiting."""
        # First the moves a killed process left: the scan must meet each photo where the ledger says it is.
        recover_originals(self.ledger, self.config)
        for watch in self.config.watches:
            self._start_watch(watch)

    def stop(self) -> None:
        for state in self.states.values():
            state.watcher.stop()
            if state.finals is not None:
                state.finals.watcher.stop()

    def _start_watch(self, watch: Watch) -> None:
        self._prepare_folders(watch)
        tracker = SettleTracker(watch.settle_seconds)
        # `state` is looked up when an event arrives, after it is assigned.
        state = _WatchState(watch, self.config, tracker, lambda path: self._on_event(state, path))
        self.states[watch.name] = state
        state.watcher.start()
        if state.finals is not None:
            state.finals.watcher.start()
            state.finals.scan()
            log.info("watch %s: proofs at %d px into %s; drop keepers into %s for their finals", watch.name,
                     watch.proof, watch.proofs_dir, watch.finals_dir)
        log.info("watching %s (%s) -> %s [%s]", watch.input, state.watcher.mode or "down", watch.output,
                 ", ".join(watch.presets or ["route: subfolders"]))
        self._scan(state, startup=True)

    def _prepare_folders(self, watch: Watch) -> None:
        for folder in (watch.input, watch.output, watch.proof and watch.proofs_dir, watch.finals_dir):
            if folder:
                folder.mkdir(parents=True, exist_ok=True)
        if watch.route == "subfolders":
            # Users see where to drop: one folder per preset.
            for name in self.config.presets:
                (watch.input / name).mkdir(exist_ok=True)
        for folder in (watch.output, watch.processed_dir, watch.failed, watch.proof and watch.proofs_dir):
            if not folder or not folder.is_dir():
                continue
            removed = clean_temp_files(folder, older_than=self.config.service.lease_seconds)
            if removed:
                log.info("removed %d temp file(s) left by an interrupted write in %s", len(removed), folder)

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config: stop removed or changed watches, start new ones."""
        old = {w.name: w for w in self.config.watches}
        new = {w.name: w for w in config.watches}
        self.config = config
        for name, watch in old.items():
            if new.get(name) != watch:
                stopped = self.states.pop(name)
                stopped.watcher.stop()
                if stopped.finals is not None:
                    stopped.finals.watcher.stop()
                log.info("watch %s stopped", name)
        for name, watch in new.items():
            if old.get(name) != watch:
                self._start_watch(watch)
        # Preset names may have changed: "names no preset" may be wrong now, so
        # the next recheck judges every listed entry afresh.
        for state in self.states.values():
            for skip in state.skipped.values():
                skip.sig = None

    # --- the loop ----------------------------------------------------------------------

    def step(self) -> int:
        """One pass: health checks, settled files to jobs, reconcile when due. Never raises."""
        before = self.enqueued
        reconcile = self.clock() - self._last_reconcile >= self.config.service.reconcile_seconds
        if reconcile:
            self._last_reconcile = self.clock()
            try:  # originals that could not move (a full disk): once there is room, they go
                retry_moves(self.ledger, self.config)
            except Exception:
                log.exception("could not try the waiting moves of originals again; continuing")
        for state in list(self.states.values()):
            try:
                if state.watcher.check() or reconcile or state.rescan:
                    state.rescan = False
                    self._scan(state)
                elif self.clock() - state.rechecked >= RECHECK_SECONDS:
                    self._recheck(state)
                if state.waiting and self.clock() - state.waited >= RECHECK_SECONDS:
                    self._finish_waiting(state)
                if state.finals is not None:
                    self._finals(state, reconcile)
                while state.noticed:
                    path, reason = state.noticed.popleft()
                    self._skip(state, path, reason, _lstat(path), level=logging.INFO)
                for result in state.tracker.poll():
                    # One file's trouble must not lose the others polled with it.
                    try:
                        self._settled(state, result)
                    except Exception as exc:
                        self._trouble(state, result.path, exc)
                    self.beat()
            except Exception:
                log.exception("watch %s: error while processing events; continuing", state.watch.name)
        return self.enqueued - before

    def healthy(self) -> bool:
        return all(s.watcher.is_alive() or s.watcher.down for s in self.states.values())

    def pending_settle(self) -> int:
        return sum(s.tracker.pending() for s in self.states.values())

    def info(self) -> list[dict]:
        """Per watch, for the live status file: mode, settling, scans, and what was not taken (bounded)."""
        return [
            {"name": s.watch.name, "input": str(s.watch.input), "output": str(s.watch.output),
             "mode": s.watcher.mode or "down", "settling": s.tracker.pending(),
             "scans": s.scans, "scanned": s.scanned_at,
             # The oldest first: a stable list, not one that jumps every second.
             "skipped": sorted(({"path": str(path), "reason": skip.reason, "since": skip.since}
                                for path, skip in itertools.islice(
                                    itertools.chain(s.skipped.items(), s.finals.skipped.items() if s.finals else ()),
                                    SKIPPED_SHOWN)),
                               key=lambda e: e["path"]),
             "skipped_total": len(s.skipped) + s.untracked + (len(s.finals.skipped) if s.finals else 0)}
            for s in self.states.values()
        ]

    def _on_event(self, state: _WatchState, path: Path) -> None:
        """Watchdog thread: a file appeared or changed. Cheap, never raises.

        An event is news even for a path seen before (a failed photo moved back
        keeps its inode and mtime), so it clears what scans deduplicate on.
        """
        state.seen.pop(Path(path), None)
        state.tracker.forget(path)
        state.tracker.touch(path)

    def _settled(self, state: _WatchState, result) -> None:
        if result.ok:
            self._ready(state, result.path)
        elif result.kind == EMPTY:
            self._skip(state, result.path, "empty", _lstat(result.path))
        elif result.kind == TOO_LONG:
            self._skip(state, result.path, f"cannot read: {path_too_long(result.path)}", None)
        else:
            what = _what(result.mode) or ("a symbolic link" if result.kind == SYMLINK else "not a regular file")
            self._skip(state, result.path, what, _lstat(result.path))

    # --- not taken ---------------------------------------------------------------------

    def _skip(self, state: _WatchState, path: Path, reason: str, st: os.stat_result | None, *,
              retry: bool = False, level: int = logging.WARNING) -> None:
        """Record an entry that was not taken; log it once (later repeats at debug level)."""
        old = state.skipped.get(path)
        said = old is not None and old.reason == reason
        if old is None and len(state.skipped) >= SKIPPED_TRACKED:
            if not state.untracked:
                log.warning("watch %s: more than %d entries not taken; status counts the rest, -v logs them",
                            state.watch.name, SKIPPED_TRACKED)
            state.untracked += 1
            level = logging.DEBUG
        else:
            state.skipped[path] = _Skip(reason, None if st is None else _sig(st),
                                        old.since if said else time.time(), retry)
        hint = _HINTS.get(reason, "will look again when it changes" if retry else "")
        if reason.startswith(("a ", "an ", "empty", "not ")):
            message = f"{path} is {reason}"
        else:
            message = f"{path}: {reason}"
        log.log(logging.DEBUG if said else level, "%s%s", message, f"; {hint}" if hint else "")

    def _trouble(self, state: _WatchState, path: Path, exc: Exception) -> None:
        """An unexpected error on one file: list it, try it at the next scan, traceback once."""
        if isinstance(exc, UnicodeEncodeError):  # sqlite3 stores text as UTF-8 only
            reason = "cannot queue: the name is not valid UTF-8 and the ledger cannot store it (rename it)"
        else:
            reason = f"cannot queue: {exc}"
        old = state.skipped.get(path)
        if old is None or old.reason != reason:
            log.error("%s: cannot queue it; will look again at the next scan", path,
                      exc_info=None if isinstance(exc, UnicodeEncodeError) else exc)
        state.tracker.unreport(path)
        self._skip(state, path, reason, _lstat(path), retry=True, level=logging.DEBUG)

    def _recheck(self, state: _WatchState) -> None:
        """lstat entries not taken: gone -> off the list; changed (fixed?) -> look again.

        Round robin over at most RECHECK_BATCH entries, so thousands of junk
        files cost a bounded amount of work per second.
        """
        state.rechecked = self.clock()
        paths = list(state.skipped)
        if not paths:
            return
        first = state.recheck_from % len(paths)
        batch = paths[first:first + RECHECK_BATCH]
        state.recheck_from = first + len(batch)
        for path in batch:
            skip = state.skipped.get(path)
            if skip is None:
                continue
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                del state.skipped[path]
                continue
            except OSError:
                continue  # cannot even lstat it now: keep it listed as it was
            if _sig(st) != skip.sig:
                self._look_again(state, path, st)

    def _look_again(self, state: _WatchState, path: Path, st: os.stat_result) -> None:
        """A listed entry changed: settle it afresh (it stays listed until the verdict)."""
        skip = state.skipped.get(path)
        if skip is not None and skip.reason.startswith("cannot list"):
            skip.sig = _sig(st)
            state.rescan = True  # the folder's permissions changed: list it again now
            return
        reason = self._static_reason(state, path, st)
        if reason is not None:
            self._skip(state, path, reason, st)  # same reason: updates the signature, logs at debug
            return
        if skip is not None:
            skip.sig = _sig(st)
        state.seen.pop(path, None)
        state.tracker.unreport(path)
        state.tracker.touch(path)

    def _static_reason(self, state: _WatchState, path: Path, st: os.stat_result | None) -> str | None:
        """Why `path` can never be taken as it is, judged from its name, place and type alone."""
        pattern = state.filter.ignored_by(path)
        if pattern is not None:
            return f"ignored by pattern {pattern!r}"
        if st is not None and stat.S_ISDIR(st.st_mode):
            return "a directory"
        return self._route(state.watch, path)[1]

    # --- scanning --------------------------------------------------------------------

    def _scan(self, state: _WatchState, *, startup: bool = False) -> None:
        """Catch up with files the events missed, and rebuild the list of what was not taken.

        At startup, a regular file untouched for the settle window is taken at
        once, so the photos already waiting are queued before READY=1; fresher
        files go through the settle tracker like any event. An entry skipped
        for a passing reason (unreadable) is tried again; entries that are
        gone drop off the status list and out of the taken-files memory.
        """
        now = time.time()
        visited: set[Path] = set()
        state.untracked = 0  # recounted by this scan

        def on_skip(path: Path, reason: str) -> None:
            visited.add(path)
            self._skip(state, path, reason, _lstat(path), retry=reason.startswith("cannot"),
                       level=logging.INFO if reason.startswith("ignored") else logging.WARNING)

        for path in scan(state.watch.input, state.filter, on_skip):
            visited.add(path)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._skip(state, path, f"cannot read: {describe_os_error(path, exc)}", None, retry=True)
                continue
            sig = _sig(st)
            if state.seen.get(path) == sig:
                continue  # taken, unchanged
            skip = state.skipped.get(path)
            if skip is not None and not skip.retry and skip.sig == sig:
                continue  # known, unchanged: nothing new to say
            if skip is not None:
                state.tracker.unreport(path)  # a passing state, or changed: judge it afresh
            route_problem = self._route(state.watch, path)[1]
            if route_problem is not None:
                self._skip(state, path, route_problem, st)  # no need to settle or hash it
                continue
            old_enough = now - st.st_mtime >= state.watch.settle_seconds
            if startup and stat.S_ISREG(st.st_mode) and st.st_size > 0 and old_enough:
                self._ready(state, path)
                self.beat()
            else:
                state.tracker.touch(path)
        # Whatever the scan did not meet is gone (or inside a folder it could
        # not list, which is listed itself).
        for path in [p for p in state.skipped if p not in visited]:
            del state.skipped[path]
        for path in [p for p in list(state.seen) if p not in visited]:
            state.seen.pop(path, None)
        for path in [p for p in state.masks if p not in visited]:
            del state.masks[path]
        for key, photos in list(state.photos_by_stem.items()):
            for path in [p for p in photos if p not in visited]:
                del photos[path]
            if not photos:
                del state.photos_by_stem[key]
        state.scans += 1
        state.scanned_at = time.time()

    # --- routing ---------------------------------------------------------------------

    def _route(self, watch: Watch, path: Path) -> tuple[list[str], str | None]:
        """(presets for `path`, None), or ([], why it fits no preset). Path work only."""
        if watch.presets is not None:
            return list(watch.presets), None
        parts = path.relative_to(watch.input).parts
        if len(parts) < 2:
            return [], ("outside a preset folder (route: subfolders; drop photos into "
                        f"{', '.join(f'{p}/' for p in sorted(self.config.presets))})")
        if parts[0] not in self.config.presets:
            return [], f"in folder {parts[0]!r}, which names no preset (route: subfolders)"
        return [parts[0]], None

    def _ready(self, state: _WatchState, path: Path) -> None:
        watch = state.watch
        presets, problem = self._route(watch, path)
        if problem is not None:
            self._skip(state, path, problem, _lstat(path))
            return
        try:
            st, sha, problem = _hash_regular(path)
        except _NotRegular as exc:
            self._skip(state, path, str(exc), exc.st)
            return
        except FileNotFoundError:
            state.skipped.pop(path, None)  # gone: nothing to take, nothing to list
            return
        except OSError as exc:
            # A passing state (permissions, a lock, an I/O error on a share): the
            # tracker must judge it afresh on the next event, change or scan.
            state.tracker.unreport(path)
            found = _lstat(path)
            what = None if found is None else _what(found.st_mode)
            if what is not None and not stat.S_ISDIR(found.st_mode):
                self._skip(state, path, what, found)  # replaced by a link or FIFO meanwhile
            else:
                self._skip(state, path, f"cannot read: {describe_os_error(path, exc)}", found, retry=True)
            return
        try:
            if state.mask_names.is_mask(path):
                outcome = self._mask_taken(state, path, sha, st)  # a mask sidecar is never a photo
            elif problem is not None:
                self._reject(state, path, sha, presets, problem)
                outcome = TAKEN
            else:
                outcome = self._photo_taken(state, path, sha, st, presets)
        except Exception as exc:
            # The ledger refused it (locked, disk full, a name it cannot store):
            # not taken, so listed, and tried again at the next scan.
            self._trouble(state, path, exc)
            return
        if outcome == LATER:
            return
        if outcome == TAKEN:
            state.skipped.pop(path, None)
        state.seen[path] = _sig(st)

    # --- masks -----------------------------------------------------------------------
    # A mask (a name that fits the watch's mask.names) settles like a photo and
    # is hashed, but is never a job of its own: it joins the jobs of the photo
    # of its stem beside it, whichever of the two came first, and goes where
    # that photo goes (nst_watch.service.originals). Its SHA-256 is part of
    # each job's identity: a mask that comes, or changes, after its photo was
    # queued makes a new job, and puts aside the jobs for the photo and preset
    # that had not run yet.

    def _photo_taken(self, state: _WatchState, path: Path, sha: str, st: os.stat_result,
                     presets: list[str]) -> str:
        """Queue a settled photo with its mask, if one is there; LATER while that mask is still arriving."""
        mask = self._mask_beside(state, path)
        if mask == LATER:
            # Photo and mask copied in together: the photo is judged again once the mask can have settled.
            log.debug("%s: its mask is still arriving; queued once the mask has settled", path)
            state.tracker.unreport(path)
            state.tracker.touch(path)
            return LATER
        self._enqueue(state, path, sha, presets, mask)
        self._wait_for_content(state, path, sha, st)
        state.photos_by_stem.setdefault((path.parent, path.stem), {})[path] = (sha, _identity(st))
        return TAKEN

    def _mask_beside(self, state: _WatchState, photo: Path) -> tuple[Path, str] | str | None:
        """(path, sha256) of `photo`'s mask; None without one; LATER while one is still being written.

        The first of the watch's mask names that is a non-empty regular file
        counts, else a mask of the photo's stem whose name differs in case.
        One that settled is known; one whose last change is older than the
        settle window is hashed here (a startup scan meets the photo first);
        a fresher one is still arriving. One that cannot be read is left
        out, with a warning: its next change makes a new job.
        """
        found = [c for c in state.mask_names.candidates(photo)]
        other = state.masks_by_stem.get((photo.parent, photo.stem))
        if other is not None and other not in found:
            found.append(other)
        for candidate in found:
            st = _lstat(candidate)
            if st is None or not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                continue  # its own settle says what it is
            known = state.masks.get(candidate)
            if known is not None and known.identity == _identity(st):
                state.skipped.pop(candidate, None)
                return candidate, known.sha256
            if time.time() - st.st_mtime < state.watch.settle_seconds:
                return LATER
            try:
                st, sha, _ = _hash_regular(candidate)
            except (OSError, _NotRegular) as exc:
                log.warning("%s: its mask %s cannot be read (%s); queued without it, and again with it once it "
                            "can be read", photo, candidate, exc)
                continue
            self._know_mask(state, candidate, sha, st)
            state.seen[candidate] = _sig(st)
            state.skipped.pop(candidate, None)
            return candidate, sha
        return None

    def _know_mask(self, state: _WatchState, path: Path, sha: str, st: os.stat_result) -> None:
        stem = state.mask_names.stem_of(path.name)
        state.masks[path] = _MaskSeen(sha, _identity(st))
        state.masks_by_stem[(path.parent, stem)] = path

    def _mask_taken(self, state: _WatchState, path: Path, sha: str, st: os.stat_result) -> str:
        """A settled mask: new jobs for the photos it belongs to; LISTED (status says so) while it has none.

        A mask whose photo is finished and gone (to processed/ or failed/)
        follows it there, as it would have with the photo (a process stopped
        between the two moves).
        """
        known = state.masks.get(path)
        self._know_mask(state, path, sha, st)
        stem = state.mask_names.stem_of(path.name)
        photos = self._photos_for(state, path.parent, stem)
        if known is None or known.sha256 != sha:
            for photo, photo_sha in photos:
                presets, problem = self._route(state.watch, photo)
                if problem is None:
                    log.info("%s: a mask for %s", path, photo)
                    self._enqueue(state, photo, photo_sha, presets, (path, sha))
        if photos or self._photo_arriving(state, path.parent, stem):
            return TAKEN
        if finish_original(self.ledger, state.watch, sha, path, config_path=self.config.path) is not None:
            return TAKEN
        self._skip(state, path, f"a mask waiting for its photo ({stem}.* beside it); it is used once the photo "
                   "comes", st, level=logging.INFO)
        return LISTED

    def _photos_for(self, state: _WatchState, folder: Path, stem: str) -> list[tuple[Path, str]]:
        """(path, sha256) of the photos of `stem` in `folder` that were taken and are still there, unchanged."""
        photos = state.photos_by_stem.get((folder, stem), {})
        found = []
        for photo, (sha, identity) in list(photos.items()):
            st = _lstat(photo)
            if st is None or _identity(st) != identity:
                del photos[photo]
            else:
                found.append((photo, sha))
        return found

    def _photo_arriving(self, state: _WatchState, folder: Path, stem: str) -> bool:
        """Whether a photo of `stem` lies in `folder`, not yet taken (settling): it finds the mask itself."""
        try:
            with os.scandir(folder) as entries:
                return any(Path(e.name).stem == stem and state.filter.accepts(folder / e.name)
                           and not state.mask_names.is_mask(e.name) for e in entries)
        except OSError:
            return False

    def _enqueue(self, state: _WatchState, path: Path, sha: str, presets: list[str],
                 mask: tuple[Path, str] | None = None) -> None:
        """One job per preset for the photo at `path`, with `mask` = (its path, sha256) when it has one.

        Without a mask, a preset that names regions gets a job that waits
        (watch.mask.wait_seconds, the reason shown by `status`) for the mask;
        the worker then runs or fails it as mask.missing says.
        """
        watch = state.watch
        created_any = False
        for name in presets:
            preset = self.config.presets[name]
            extra: dict = {}
            if mask is not None:
                extra = {"mask_path": mask[0], "mask_sha256": mask[1]}
            elif preset.needs_mask:
                extra = {"wait": (watch.mask.wait_seconds, self._mask_wait(state, path))}
            result = self.ledger.add(sha256=sha, preset=name, source_path=path, watch=watch.name,
                                     **rendering(preset, path, proof=watch.proof, output_dir=watch.output,
                                                proofs_dir=watch.proofs_dir), **extra)
            job = result.job
            with_mask = f" with mask {mask[0].name}" if mask is not None else ""
            if result.created:
                self.enqueued += 1
                created_any = True
                log.info("queued %s for preset %s%s (job %d)", path, name, with_mask, job.id)
                if "wait" in extra:
                    log.info("%s: %s", path, extra["wait"][1])
            elif job.put_aside:
                self.ledger.revive(job.id)  # put aside for another mask, and its own mask is back
                self.ledger.relocate(job.id, path)
                if mask is not None:
                    self.ledger.relocate_mask(job.id, mask[0])
                created_any = True
                log.info("%s: job %d for preset %s%s, put aside before, queued again", path, job.id, name, with_mask)
            elif job.state == DONE:
                log.info("%s: already done for preset %s%s (same content as job %d): %s", path, name, with_mask,
                         job.id, job.output_path)
            elif job.state in (FAILED, DEAD):
                self.ledger.retry([job.id])
                self.ledger.relocate(job.id, path)
                if mask is not None:
                    self.ledger.relocate_mask(job.id, mask[0])  # the pair dropped again: its mask is here now
                if "wait" in extra and watch.mask.wait_seconds:
                    self.ledger.postpone([job.id], watch.mask.wait_seconds, extra["wait"][1])
                created_any = True
                log.info("%s: dropped again after failing for preset %s%s; job %d queued again", path, name,
                         with_mask, job.id)
            else:
                log.info("%s: already queued for preset %s%s (job %d)", path, name, with_mask, job.id)
            if mask is not None:
                self._put_aside(state, job, path, mask[0])
        if presets and not created_any:
            finish_original(self.ledger, watch, sha, path, config_path=self.config.path)

    def _put_aside(self, state: _WatchState, job, photo: Path, mask: Path) -> None:
        """The jobs of the photo file at `photo` for the same preset with another mask (or none) that have not run:
        superseded by `job`.

        Only that file's own jobs: a copy of the same photo under another
        name, with a mask of its own, is another pair and keeps its job. A job
        that runs finishes as it began; one that is done keeps its output.
        """
        others = [j.id for j in self.ledger.jobs_for(job.sha256)
                  if j.watch == state.watch.name and j.preset == job.preset and j.id != job.id
                  and Path(j.source_path) == photo
                  and j.mask_sha256 != job.mask_sha256 and j.state in (PENDING, FAILED, DEAD)]
        count = self.ledger.supersede(others, f"superseded by job {job.id}, for the photo's mask {mask.name}")
        if count:
            log.info("job(s) %s put aside for job %d: the photo's mask %s came or changed",
                     ", ".join(map(str, others)), job.id, mask.name)

    def _mask_wait(self, state: _WatchState, path: Path) -> str:
        """Why a photo whose preset needs a mask waits, until when, and what happens then (status shows it)."""
        watch = state.watch
        names = [c.name for c in state.mask_names.candidates(path)]
        until = time.strftime("%H:%M:%S", time.localtime(time.time() + watch.mask.wait_seconds))
        then = ("then it fails (mask.missing: fail)" if watch.mask.missing == "fail"
                else "then it runs without one, with the preset's own styles (mask.missing: run)")
        return (f"waits for its mask {names[0]}" + (f" (or {', '.join(names[1:])})" if names[1:] else "")
                + f" until {until}; {then}")

    def _reject(self, state: _WatchState, path: Path, sha: str, presets: list[str], problem: PhotoError) -> None:
        """A file that is no photo nst-watch reads: failed at once, never queued behind real work.

        Each preset's job is recorded failed with the one reason (so `status`,
        the web view and `retry` see it as any failed photo), and the file
        goes where the watch puts failed photos (`failed/`, with its
        .error.txt), or stays where it is when `failed` is off.
        """
        watch = state.watch
        for name in presets:
            result = self.ledger.add(sha256=sha, preset=name, source_path=path, watch=watch.name,
                                     **rendering(self.config.presets[name], path, proof=watch.proof,
                                                output_dir=watch.output, proofs_dir=watch.proofs_dir), error=str(problem))
            if not result.created and result.job.state in (FAILED, DEAD):
                self.ledger.relocate(result.job.id, path)  # dropped again: the report names its new place
        log.error("%s; not queued", problem)
        finish_original(self.ledger, watch, sha, path, config_path=self.config.path)

    def _wait_for_content(self, state: _WatchState, path: Path, sha: str, st: os.stat_result) -> None:
        """Remember a name taken while its content's jobs in this watch are unfinished (see _WatchState.waiting)."""
        jobs = [j for j in self.ledger.jobs_for(sha) if j.watch == state.watch.name]
        if any(j.state in (PENDING, LEASED) for j in jobs):
            state.waiting.setdefault(sha, {})[path] = _identity(st)

    # --- finals asked for by a drop ------------------------------------------------------

    def _finals(self, state: _WatchState, reconcile: bool) -> None:
        finals = state.finals
        if finals.watcher.check() or reconcile:
            finals.scan()
        for result in finals.tracker.poll():
            if result.ok:
                try:
                    self._final_dropped(state, result.path)
                except Exception as exc:  # the ledger busy, a file gone: looked at again at the next scan
                    log.error("%s: could not ask for its final (%s); will look again at the next scan",
                              result.path, exc)
                    finals.tracker.unreport(result.path)

    def _final_dropped(self, state: _WatchState, path: Path) -> None:
        """A file settled in the finals folder: the finals of the proofs it is (or is the original of)."""
        watch, finals = state.watch, state.finals
        try:
            _, sha, _ = _hash_regular(path)
        except (_NotRegular, FileNotFoundError):
            return
        mine, how = proofs_matching(self.ledger, watch.name, path, sha)
        if not mine:
            reason = (f"asks for no final: neither a proof of watch {watch.name} (by content or name) nor the "
                      f"original of one; drop a file from {watch.proofs_dir} (or its original)")
            self._not_a_final(finals, path, reason)
            return
        waiting, refused = False, []
        for proof in mine:
            try:
                result = request_final(self.config, self.ledger, proof.id, source=path if how == "original" else None)
            except FinalError as exc:
                refused.append(str(exc))
                waiting = waiting or proof.state not in (DONE, FAILED, DEAD)
                continue
            log.info("%s: final of proof %d (%s, preset %s) %s (job %d)", path.name, proof.id,
                     Path(proof.source_path).name, proof.preset, result.word, result.job.id)
        if refused:
            self._not_a_final(finals, path, "; ".join(refused))
        else:
            finals.skipped.pop(path, None)
        if waiting:
            finals.tracker.unreport(path)  # a proof still running: asked again at the next scan

    @staticmethod
    def _not_a_final(finals: _FinalsDrop, path: Path, reason: str) -> None:
        """A drop that asked for no final (or not all): logged once, listed under "not taken" in status."""
        old = finals.skipped.get(path)
        if old is None or old.reason != reason:
            log.warning("%s: %s", path, reason)
        finals.skipped[path] = _Skip(reason, None, old.since if old is not None else time.time(), False)

    def _finish_waiting(self, state: _WatchState) -> None:
        """Names whose content is finished: moved (or kept) as the watch says, as its job's own source was.

        A name that is some job's source is the worker's to move; one whose
        file changed since it was taken (or is gone) is left to its own
        settle. Runs about once a second, on the main loop.
        """
        state.waited = self.clock()
        for sha in list(state.waiting):
            jobs = [j for j in self.ledger.jobs_for(sha) if j.watch == state.watch.name]
            if any(j.state in (PENDING, LEASED) for j in jobs):
                continue
            sources = {Path(j.source_path) for j in jobs}
            for path, identity in state.waiting.pop(sha).items():
                found = _lstat(path)
                if path in sources or found is None or _identity(found) != identity:
                    continue
                log.info("%s: same content as %s, which is finished", path,
                         ", ".join(sorted(str(p) for p in sources)))
                try:
                    finish_original(self.ledger, state.watch, sha, path, config_path=self.config.path)
                except Exception:
                    log.exception("%s: could not move the original", path)
