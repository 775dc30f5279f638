"""Intake: watched folders -> settled files -> routed jobs in the ledger.

Watchdog events are hints, not tasks: the truth is the ledger, fed by events,
a startup scan and a periodic reconcile scan (inotify overflows are silently
dropped by watchdog). Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, Watch
from ..jobs import DEAD, DONE, FAILED, Ledger
from ..photo import clean_temp_files
from ..watch import DEFAULT_IGNORE, EMPTY, NOT_REGULAR, SYMLINK, FolderWatcher, PathFilter, SettleTracker, scan
from .identity import file_sha256, preset_hash, size_bucket
from .originals import finish_original

log = logging.getLogger("nst_watch.intake")

_REJECTED = {
    SYMLINK: "is a symbolic link; nst-watch does not follow links (copy the photo in instead)",
    NOT_REGULAR: "is not a regular file (FIFO, device or socket); skipped",
    EMPTY: "is empty and stayed empty; skipped (copy it again if the transfer failed)",
}


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    inode: int


class _WatchState:
    def __init__(self, watch: Watch, config: Config, tracker: SettleTracker, on_path):
        self.watch = watch
        others = [d for d in (watch.output, watch.failed, watch.processed_dir) if d is not None]
        self.filter = PathFilter(
            watch.input,
            include=watch.include,
            ignore=DEFAULT_IGNORE + list(watch.ignore),
            recursive=watch.walks_subfolders(),
            exclude_dirs=others,
        )
        self.tracker = tracker
        self.watcher = FolderWatcher(watch.input, self.filter, on_path, polling=watch.polling, name=watch.name)


class Intake:
    def __init__(self, config: Config, ledger: Ledger, *, clock=time.monotonic):
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.states: dict[str, _WatchState] = {}
        self._seen: dict[Path, _Seen] = {}
        self._last_reconcile = clock()
        self.enqueued = 0

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Prepare folders, start every watch, and enqueue the photos already waiting."""
        for watch in self.config.watches:
            self._start_watch(watch)

    def stop(self) -> None:
        for state in self.states.values():
            state.watcher.stop()

    def _start_watch(self, watch: Watch) -> None:
        self._prepare_folders(watch)
        tracker = SettleTracker(watch.settle_seconds)
        state = _WatchState(watch, self.config, tracker, lambda path: self._on_event(tracker, path))
        self.states[watch.name] = state
        state.watcher.start()
        log.info("watching %s (%s) -> %s [%s]", watch.input, state.watcher.mode or "down", watch.output,
                 ", ".join(watch.presets or ["route: subfolders"]))
        self._scan(state, startup=True)

    def _prepare_folders(self, watch: Watch) -> None:
        for folder in (watch.input, watch.output):
            folder.mkdir(parents=True, exist_ok=True)
        if watch.route == "subfolders":
            # Users see where to drop: one folder per preset.
            for name in self.config.presets:
                (watch.input / name).mkdir(exist_ok=True)
        removed = clean_temp_files(watch.output, older_than=self.config.service.lease_seconds)
        if removed:
            log.info("removed %d temp file(s) left by an interrupted write in %s", len(removed), watch.output)

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config: stop removed or changed watches, start new ones."""
        old = {w.name: w for w in self.config.watches}
        new = {w.name: w for w in config.watches}
        self.config = config
        for name, watch in old.items():
            if new.get(name) != watch:
                self.states.pop(name).watcher.stop()
                log.info("watch %s stopped", name)
        for name, watch in new.items():
            if old.get(name) != watch:
                self._start_watch(watch)

    # --- the loop ----------------------------------------------------------------------

    def step(self) -> int:
        """One pass: health checks, settled files to jobs, reconcile when due. Never raises."""
        before = self.enqueued
        reconcile = self.clock() - self._last_reconcile >= self.config.service.reconcile_seconds
        if reconcile:
            self._last_reconcile = self.clock()
        for state in list(self.states.values()):
            try:
                if state.watcher.check() or reconcile:
                    self._scan(state)
                for result in state.tracker.poll():
                    if result.ok:
                        self._ready(state, result.path)
                    else:
                        log.warning("%s %s", result.path, _REJECTED.get(result.kind, result.kind))
            except Exception:
                log.exception("watch %s: error while processing events; continuing", state.watch.name)
        return self.enqueued - before

    def healthy(self) -> bool:
        return all(s.watcher.is_alive() or s.watcher.down for s in self.states.values())

    def pending_settle(self) -> int:
        return sum(s.tracker.pending() for s in self.states.values())

    def info(self) -> list[dict]:
        return [
            {"name": s.watch.name, "input": str(s.watch.input), "output": str(s.watch.output),
             "mode": s.watcher.mode or "down", "settling": s.tracker.pending()}
            for s in self.states.values()
        ]

    def _on_event(self, tracker: SettleTracker, path: Path) -> None:
        """Watchdog thread: a file appeared or changed. Cheap, never raises.

        An event is news even for a path seen before (a failed photo moved back
        keeps its inode and mtime), so it clears what scans deduplicate on.
        """
        self._seen.pop(Path(path), None)
        tracker.forget(path)
        tracker.touch(path)

    # --- scanning --------------------------------------------------------------------

    def _scan(self, state: _WatchState, *, startup: bool = False) -> None:
        """Catch up with files the events missed.

        At startup, a regular file untouched for the settle window is taken at
        once, so the photos already waiting are queued before READY=1; fresher
        files go through the settle tracker like any event.
        """
        now = time.time()
        for path in scan(state.watch.input, state.filter):
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if self._unchanged(path, st):
                continue
            old_enough = now - st.st_mtime >= state.watch.settle_seconds
            if startup and stat.S_ISREG(st.st_mode) and st.st_size > 0 and old_enough:
                self._ready(state, path)
            else:
                state.tracker.touch(path)

    def _unchanged(self, path: Path, st: os.stat_result) -> bool:
        seen = self._seen.get(path)
        return seen is not None and (seen.size, seen.mtime_ns, seen.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)

    # --- routing ---------------------------------------------------------------------

    def _presets_for(self, watch: Watch, path: Path) -> list[str]:
        if watch.presets is not None:
            return list(watch.presets)
        parts = path.relative_to(watch.input).parts
        if len(parts) < 2:
            log.warning("%s: with route: subfolders, drop photos into a preset folder (%s)", path,
                        ", ".join(f"{watch.input}/{p}/" for p in sorted(self.config.presets)))
            return []
        if parts[0] not in self.config.presets:
            log.warning("%s: no preset named %r (folder %s); skipped", path, parts[0], parts[0])
            return []
        return [parts[0]]

    def _ready(self, state: _WatchState, path: Path) -> None:
        watch = state.watch
        try:
            st = os.lstat(path)
            sha = file_sha256(path)
        except OSError as exc:
            log.warning("%s: cannot read (%s); will look again at the next scan", path, exc)
            return
        self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, st.st_ino)
        presets = self._presets_for(watch, path)
        created_any = False
        for name in presets:
            preset = self.config.presets[name]
            result = self.ledger.add(
                sha256=sha, preset=name, preset_hash=preset_hash(preset), source_path=path, watch=watch.name,
                output_dir=watch.output, bucket=size_bucket(path, preset.size),
            )
            job = result.job
            if result.created:
                self.enqueued += 1
                created_any = True
                log.info("queued %s for preset %s (job %d)", path, name, job.id)
            elif job.state == DONE:
                log.info("%s: already done for preset %s (same content as job %d): %s", path, name, job.id,
                         job.output_path)
            elif job.state in (FAILED, DEAD):
                self.ledger.retry([job.id])
                self.ledger.relocate(job.id, path)
                created_any = True
                log.info("%s: dropped again after failing for preset %s; job %d queued again", path, name, job.id)
            else:
                log.info("%s: already queued for preset %s (job %d)", path, name, job.id)
        if presets and not created_any:
            finish_original(self.ledger, watch, sha, path)
