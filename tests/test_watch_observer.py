"""FolderWatcher and scan() against real watchdog observers on tmp_path folders.

No fixed sleeps: `wait_until` polls a condition every 20 ms. To prove that an
ignored path *never* arrives, tests `flush()` the watcher: they drop a fresh
sentinel file and wait for it. Events are delivered in order (inotify's queue,
or a later polling snapshot), so once the sentinel is in, every event for
files made before it has been dispatched.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from nst_watch.watch import (
    DEFAULT_IGNORE,
    NOT_REGULAR,
    READY,
    SYMLINK,
    FolderWatcher,
    PathFilter,
    SettleTracker,
    scan,
)
from watchdog.observers.inotify import InotifyObserver

POLL = 0.05  # PollingObserver interval for tests
SETTLE = 0.3


def wait_until(cond, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll `cond` until it is truthy; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Collector:
    """Thread-safe on_path sink that remembers every call in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[Path] = []
        self._flush = itertools.count()

    def __call__(self, path: Path) -> None:
        with self.lock:
            self.calls.append(path)

    def seen(self) -> set[Path]:
        with self.lock:
            return set(self.calls)

    def names(self) -> set[str]:
        return {p.name for p in self.seen() if not p.name.startswith("zz-flush-")}

    def relnames(self, root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in self.seen() if not p.name.startswith("zz-flush-")}

    def flush(self, folder: Path) -> None:
        """Drop a sentinel and wait for it, so all earlier events have been dispatched."""
        sentinel = folder / f"zz-flush-{next(self._flush)}.jpg"
        sentinel.write_bytes(b"s")
        assert wait_until(lambda: sentinel in self.seen()), f"sentinel {sentinel.name} never arrived"


@pytest.fixture
def inbox(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    return folder


@pytest.fixture
def make_watcher():
    """Build and start watchers; stop them all at teardown."""
    watchers: list[FolderWatcher] = []

    def make(root, *, recursive=False, include=None, polling=False, on_path=None, **kwargs):
        flt = PathFilter(root, include=include, ignore=DEFAULT_IGNORE, recursive=recursive)
        sink = on_path or Collector()
        watcher = FolderWatcher(root, flt, sink, polling=polling, poll_interval=POLL, name="test", **kwargs)
        watcher.start()
        watchers.append(watcher)
        return watcher, sink

    yield make
    for watcher in watchers:
        watcher.stop()


MODES = [pytest.param(False, id="inotify"), pytest.param(True, id="polling")]


@pytest.mark.parametrize("polling", MODES)
def test_created_file_arrives(inbox, make_watcher, polling):
    watcher, got = make_watcher(inbox, polling=polling)
    assert watcher.mode == ("polling" if polling else "inotify")
    assert watcher.is_alive()
    (inbox / "a.jpg").write_bytes(b"x" * 100)
    assert wait_until(lambda: inbox / "a.jpg" in got.seen())


@pytest.mark.parametrize("polling", MODES)
def test_temp_name_renamed_arrives_under_final_name_only(inbox, make_watcher, polling):
    watcher, got = make_watcher(inbox, polling=polling)
    part = inbox / "x.jpg.part"
    part.write_bytes(b"x" * 1000)
    got.flush(inbox)  # make sure the .part really was seen by the observer first
    part.rename(inbox / "x.jpg")
    assert wait_until(lambda: inbox / "x.jpg" in got.seen())
    got.flush(inbox)
    assert got.names() == {"x.jpg"}


def test_file_moved_in_from_outside_arrives(tmp_path, inbox, make_watcher):
    watcher, got = make_watcher(inbox)
    outside = tmp_path / "staging.jpg"
    outside.write_bytes(b"x")
    outside.rename(inbox / "moved.jpg")
    assert wait_until(lambda: inbox / "moved.jpg" in got.seen())


@pytest.mark.parametrize("polling", MODES)
def test_ignored_names_never_arrive(inbox, make_watcher, polling):
    (inbox / "@eaDir").mkdir()
    (inbox / ".hidden").mkdir()
    watcher, got = make_watcher(inbox, recursive=True, polling=polling)
    for rel in [".DS_Store", "Thumbs.db", "a.tmp", "._a.jpg", "@eaDir/a.jpg", ".hidden/b.jpg", "c.jpg.crdownload"]:
        (inbox / rel).write_bytes(b"junk")
    (inbox / "good.jpg").write_bytes(b"x")
    assert wait_until(lambda: inbox / "good.jpg" in got.seen())
    got.flush(inbox)
    assert got.names() == {"good.jpg"}


def test_non_recursive_ignores_subfolders_recursive_gets_them(tmp_path, make_watcher):
    flat_root, deep_root = tmp_path / "flat", tmp_path / "deep"
    for root in (flat_root, deep_root):
        (root / "sub" / "subsub").mkdir(parents=True)
    flat, flat_got = make_watcher(flat_root, recursive=False)
    deep, deep_got = make_watcher(deep_root, recursive=True)
    for root in (flat_root, deep_root):
        (root / "sub" / "s.jpg").write_bytes(b"x")
        (root / "sub" / "subsub" / "t.jpg").write_bytes(b"x")
        (root / "top.jpg").write_bytes(b"x")
    assert wait_until(lambda: deep_got.relnames(deep_root) == {"top.jpg", "sub/s.jpg", "sub/subsub/t.jpg"})
    assert wait_until(lambda: flat_root / "top.jpg" in flat_got.seen())
    flat_got.flush(flat_root)
    assert flat_got.relnames(flat_root) == {"top.jpg"}


# watchdog itself warns about re-adding a callback when a new subfolder races its scan.
@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")
def test_recursive_folder_created_after_start(inbox, make_watcher):
    watcher, got = make_watcher(inbox, recursive=True)
    (inbox / "new" / "deeper").mkdir(parents=True)
    (inbox / "new" / "deeper" / "n.jpg").write_bytes(b"x")
    assert wait_until(lambda: inbox / "new" / "deeper" / "n.jpg" in got.seen())


def test_include_patterns_filter_events(inbox, make_watcher):
    watcher, got = make_watcher(inbox, include=["*.jpg"])
    (inbox / "notes.txt").write_bytes(b"x")
    (inbox / "IMG_1.JPG").write_bytes(b"x")
    assert wait_until(lambda: inbox / "IMG_1.JPG" in got.seen())
    got.flush(inbox)
    assert got.names() == {"IMG_1.JPG"}


def test_handler_exception_does_not_kill_observer(inbox, make_watcher, caplog):
    got = Collector()
    calls = {"n": 0}

    def flaky(path):
        calls["n"] += 1
        if path.name == "boom.jpg":
            raise RuntimeError("downstream bug")
        got(path)

    watcher, _ = make_watcher(inbox, on_path=flaky)
    with caplog.at_level(logging.ERROR, logger="nst_watch.watch"):
        (inbox / "boom.jpg").write_bytes(b"x")
        assert wait_until(lambda: "downstream bug" in caplog.text)
    (inbox / "after.jpg").write_bytes(b"x")
    assert wait_until(lambda: inbox / "after.jpg" in got.seen())
    assert watcher.is_alive()


def test_polling_fallback_when_inotify_limit_hit(inbox, make_watcher, caplog):
    attempts = []

    def exhausted():
        attempts.append(1)
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    with caplog.at_level(logging.WARNING, logger="nst_watch.watch"):
        watcher, got = make_watcher(inbox, polling="auto", observer_factory=exhausted)
    assert attempts, "the native factory was never tried"
    assert watcher.mode == "polling"
    assert watcher.is_alive()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "polling" in r.getMessage()]
    assert warnings and "ENOSPC" in warnings[0].getMessage()
    assert "max_user_watches" in warnings[0].getMessage()
    (inbox / "late.jpg").write_bytes(b"x")
    assert wait_until(lambda: inbox / "late.jpg" in got.seen())


def test_fallback_also_covers_failure_inside_start(inbox, make_watcher, caplog):
    """watchdog 7 adds inotify watches in start(); an EMFILE there must fall back too."""

    class BrokenStart(InotifyObserver):
        def start(self):
            raise OSError(errno.EMFILE, "Too many open files")

    with caplog.at_level(logging.WARNING, logger="nst_watch.watch"):
        watcher, got = make_watcher(inbox, polling="auto", observer_factory=BrokenStart)
    assert watcher.mode == "polling"
    assert "EMFILE" in caplog.text
    (inbox / "a.jpg").write_bytes(b"x")
    assert wait_until(lambda: inbox / "a.jpg" in got.seen())


def test_polling_false_propagates_native_error(inbox):
    def exhausted():
        raise OSError(errno.ENOSPC, "no watches left")

    watcher = FolderWatcher(
        inbox, PathFilter(inbox), lambda p: None, polling=False, observer_factory=exhausted
    )
    with pytest.raises(OSError):
        watcher.start()
    assert not watcher.is_alive() and watcher.check() is False  # not half-started


@pytest.mark.parametrize("polling", MODES)
def test_folder_deleted_and_recreated(inbox, make_watcher, caplog, polling):
    watcher, got = make_watcher(inbox, polling=polling)
    assert watcher.check() is False  # healthy: nothing to do
    with caplog.at_level(logging.WARNING, logger="nst_watch.watch"):
        shutil.rmtree(inbox)
        assert watcher.check() is False
        assert watcher.check() is False
        assert watcher.down and not watcher.is_alive()
        missing = [r for r in caplog.records if "missing" in r.getMessage()]
        assert len(missing) == 1, "the missing folder must be reported once, not on every check"
        inbox.mkdir()
        assert watcher.check() is True  # caller should scan now
        assert not watcher.down and watcher.is_alive()
    (inbox / "back.jpg").write_bytes(b"x")
    assert wait_until(lambda: inbox / "back.jpg" in got.seen())
    assert watcher.check() is False


@pytest.mark.parametrize("polling", MODES)
def test_folder_replaced_between_checks(inbox, make_watcher, polling):
    """Deleted and recreated with no check() in between; the inode may even be reused.

    Run the daemon's loop: check(), and scan when it says so. inotify's emitter
    stops on the deletion, so check() restarts it; a polling emitter may not even
    notice (it lists by path, so it keeps working). Either way the file arrives.
    """
    watcher, got = make_watcher(inbox, polling=polling)
    shutil.rmtree(inbox)
    inbox.mkdir()
    (inbox / "again.jpg").write_bytes(b"x")

    def daemon_loop_step():
        if watcher.check():
            for path in scan(inbox, watcher.path_filter):
                got(path)
        return inbox / "again.jpg" in got.seen()

    assert wait_until(daemon_loop_step)
    assert watcher.is_alive()
    (inbox / "later.jpg").write_bytes(b"x")  # and the live watch works, not just the scan
    assert wait_until(lambda: watcher.check() is False and inbox / "later.jpg" in got.seen())


def assert_check_restores_the_watch(watcher, got, new_photo):
    """check() reports a restart, and a photo dropped afterwards arrives."""
    assert watcher.check() is True
    new_photo.write_bytes(b"x")
    assert wait_until(lambda: new_photo in got.seen())


def test_folder_swapped_by_rename_is_detected(tmp_path, inbox, make_watcher):
    """inotify follows a renamed folder; the new folder at the path needs a new watch."""
    watcher, got = make_watcher(inbox)
    inbox.rename(tmp_path / "old")
    inbox.mkdir()
    assert_check_restores_the_watch(watcher, got, inbox / "new.jpg")


def test_dead_observer_is_restarted(inbox, make_watcher):
    watcher, got = make_watcher(inbox)
    watcher._observer.stop()  # simulate watchdog's thread dying
    assert wait_until(lambda: not watcher.is_alive())
    assert_check_restores_the_watch(watcher, got, inbox / "a.jpg")


def test_start_on_missing_folder_waits_for_it(tmp_path, make_watcher):
    root = tmp_path / "later"
    watcher, got = make_watcher(root)
    assert watcher.down and watcher.mode is None
    root.mkdir()
    assert_check_restores_the_watch(watcher, got, root / "a.jpg")


def test_stop_is_idempotent_and_check_after_stop_is_noop(inbox, make_watcher):
    watcher, _ = make_watcher(inbox)
    watcher.stop()
    watcher.stop()
    assert not watcher.is_alive()
    assert watcher.check() is False


# -- scan ------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    for rel in ["a.jpg", "B.JPG", "notes.txt", ".DS_Store", "x.jpg.part",
                "sub/c.jpg", "sub/deeper/d.jpg", "@eaDir/thumb.jpg", ".cache/e.jpg"]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "z.jpg").write_bytes(b"x")
    (root / "linkdir").symlink_to(outside)  # must not be followed
    (root / "link.jpg").symlink_to(root / "a.jpg")  # yielded; the tracker rejects it
    return root


def rel(paths, root):
    return sorted(str(p.relative_to(root)) for p in paths)


def test_scan_non_recursive(tree):
    flt = PathFilter(tree, include=["*.jpg"], ignore=DEFAULT_IGNORE, recursive=False)
    assert rel(scan(tree, flt), tree) == ["B.JPG", "a.jpg", "link.jpg"]


def test_scan_recursive_prunes_ignored_and_does_not_follow_links(tree):
    flt = PathFilter(tree, include=["*.jpg"], ignore=DEFAULT_IGNORE, recursive=True)
    found = list(scan(tree, flt))
    assert rel(found, tree) == ["B.JPG", "a.jpg", "link.jpg", "sub/c.jpg", "sub/deeper/d.jpg"]
    assert all(p.is_absolute() for p in found)


def test_scan_without_include_yields_fifo_for_the_tracker(tree):
    os.mkfifo(tree / "pipe")
    flt = PathFilter(tree, ignore=DEFAULT_IGNORE, recursive=False)
    assert "pipe" in rel(scan(tree, flt), tree)


def test_scan_missing_root_yields_nothing(tmp_path):
    missing = tmp_path / "nope"
    assert list(scan(missing, PathFilter(missing, recursive=True))) == []


def deny_listing(monkeypatch, folder: Path) -> Path:
    """Make os.scandir(folder) fail as an unreadable folder does (chmod 0 does not stop root)."""
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return folder


def test_scan_skips_unreadable_folder(tree, caplog, monkeypatch):
    """An unreadable subfolder is logged and skipped; the rest of the scan goes on.

    Simulated with a patched scandir: CI may run as root.
    """
    locked = deny_listing(monkeypatch, tree / "sub" / "deeper")
    flt = PathFilter(tree, include=["*.jpg"], recursive=True)
    with caplog.at_level(logging.WARNING, logger="nst_watch.watch"):
        found = rel(scan(tree, flt), tree)
    assert "sub/c.jpg" in found and "sub/deeper/d.jpg" not in found
    assert "cannot list" in caplog.text


def test_scan_reports_what_it_passes_over(tree):
    """Entries whose name says photo but that the scan does not yield reach on_skip with a reason."""
    (tree / "y.jpg").mkdir()  # a folder named like a photo
    (tree / "holiday").mkdir()  # an ordinary folder: not a photo name, not reported
    (tree / "._IMG.jpg").write_bytes(b"x")
    skipped = {}
    flt = PathFilter(tree, include=["*.jpg"], ignore=DEFAULT_IGNORE, recursive=False)
    found = rel(scan(tree, flt, lambda path, reason: skipped.setdefault(str(path.relative_to(tree)), reason)), tree)
    assert found == ["B.JPG", "a.jpg", "link.jpg"]
    assert skipped == {"y.jpg": "a directory", "._IMG.jpg": "ignored by pattern '.*'"}
    # .DS_Store and x.jpg.part are ignored too, but their names match no include pattern: litter, not photos.


def test_scan_reports_a_folder_it_cannot_list_once_to_the_caller(tree, caplog, monkeypatch):
    locked = deny_listing(monkeypatch, tree / "sub")
    skipped = {}
    flt = PathFilter(tree, include=["*.jpg"], recursive=True)
    with caplog.at_level(logging.WARNING, logger="nst_watch.watch"):
        found = rel(scan(tree, flt, lambda path, reason: skipped.setdefault(path, reason)), tree)
    assert "sub/c.jpg" not in found and "a.jpg" in found
    assert skipped == {locked: "cannot list: Permission denied"}
    assert "cannot list" not in caplog.text  # the caller logs it (once), not every scan


def test_chmod_arrives_as_an_event(inbox, make_watcher):
    """A photo made readable changes no byte: only the attribute event tells."""
    photo = inbox / "a.jpg"
    photo.write_bytes(b"x")
    watcher, got = make_watcher(inbox)
    got.flush(inbox)
    got.calls.clear()
    os.chmod(photo, 0o600)
    assert wait_until(lambda: photo in got.seen())


@pytest.mark.parametrize("polling", MODES)
def test_folder_named_like_a_photo_is_reported_not_entered(inbox, make_watcher, polling):
    watcher, got = make_watcher(inbox, include=["*.jpg"], polling=polling)
    (inbox / "y.jpg").mkdir()
    (inbox / "holiday").mkdir()
    (inbox / "y.jpg" / "inside.jpg").write_bytes(b"x")  # a flat watch: never taken
    assert wait_until(lambda: inbox / "y.jpg" in got.seen())
    got.flush(inbox)
    assert got.names() == {"y.jpg"}


def test_ignored_photo_names_reach_on_ignored(inbox, make_watcher):
    ignored = []
    watcher, got = make_watcher(inbox, include=["*.jpg"],
                                on_ignored=lambda path, reason: ignored.append((path.name, reason)))
    (inbox / "._IMG.jpg").write_bytes(b"x")
    (inbox / ".DS_Store").write_bytes(b"x")  # matches no include pattern: litter, not reported
    assert wait_until(lambda: ("._IMG.jpg", "ignored by pattern '.*'") in ignored)
    got.flush(inbox)
    assert {name for name, _ in ignored} == {"._IMG.jpg"} and got.names() == set()


# -- end to end: watcher + tracker -------------------------------------------


def drain(tracker: SettleTracker, until, timeout: float = 10.0) -> list:
    """Poll the tracker every 20 ms (as the daemon would) until `until(results)`."""
    results: list = []
    wait_until(lambda: results.extend(tracker.poll()) or until(results), timeout=timeout)
    return results


def test_slow_copy_is_ready_once_after_last_write(inbox, make_watcher):
    tracker = SettleTracker(SETTLE)
    make_watcher(inbox, on_path=tracker.touch)
    target = inbox / "slow.jpg"
    chunk, chunks, pause = b"x" * 4096, 6, SETTLE / 2
    done = threading.Event()
    last_write = [0.0]

    def writer():
        with open(target, "wb") as fh:
            for _ in range(chunks):
                fh.write(chunk)
                fh.flush()
                last_write[0] = time.monotonic()
                time.sleep(pause)  # the slow copier itself, not a test wait
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    results: list = []
    ready_at = []

    def step():
        new = tracker.poll()
        if new:
            ready_at.append(time.monotonic())
        results.extend(new)
        return done.is_set() and tracker.pending() == 0 and results

    assert wait_until(step, timeout=10)
    assert [(r.kind, r.size) for r in results] == [(READY, len(chunk) * chunks)]
    assert ready_at[0] - last_write[0] >= SETTLE
    # Nothing else trickles in later (late close events are deduplicated).
    assert drain(tracker, lambda r: tracker.pending() == 0, timeout=1) == []


def test_symlink_fifo_and_empty_file_are_rejected_end_to_end(tmp_path, inbox, make_watcher):
    tracker = SettleTracker(SETTLE)
    watcher, _ = make_watcher(inbox, on_path=tracker.touch)
    real = tmp_path / "real.jpg"
    real.write_bytes(b"x" * 10)
    (inbox / "link.jpg").symlink_to(real)
    os.mkfifo(inbox / "pipe.jpg")
    (inbox / "empty.jpg").touch()
    (inbox / "good.jpg").write_bytes(b"data")
    results: list = []

    def run():
        results.extend(drain(tracker, lambda r: len(r) >= 4 and tracker.pending() == 0))

    worker = threading.Thread(target=run, daemon=True)  # a FIFO open would hang: bound it
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "tracker blocked, probably opening the FIFO"
    kinds = {r.path.name: r.kind for r in results}
    assert kinds == {"link.jpg": SYMLINK, "pipe.jpg": NOT_REGULAR, "empty.jpg": "empty", "good.jpg": READY}
    assert len(results) == 4


@pytest.mark.parametrize("polling", MODES)
def test_300_files_at_once_arrive_and_dedupe_to_300_ready(inbox, make_watcher, polling):
    tracker = SettleTracker(SETTLE)
    got = Collector()

    def on_path(path):
        got(path)
        tracker.touch(path)

    make_watcher(inbox, polling=polling, on_path=on_path)
    expected = set()
    for i in range(300):
        path = inbox / f"img_{i:03d}.jpg"
        path.write_bytes(os.urandom(64))
        expected.add(path)
    # The catch-up scan races the events on purpose: both feed the same tracker.
    scanned = set(scan(inbox, PathFilter(inbox, recursive=False)))
    for path in scanned:
        tracker.touch(path)
    # Events should bring every file; if the kernel queue overflowed, the scan covers it.
    wait_until(lambda: expected <= got.seen(), timeout=5)
    assert expected <= got.seen() | scanned
    ready = drain(tracker, lambda r: len(r) >= 300 and tracker.pending() == 0)
    assert len(got.calls) + len(scanned) >= 600, "each path should have been touched several times"
    assert [r.kind for r in ready] == [READY] * 300
    assert {r.path for r in ready} == expected  # exactly once each
    # A reconcile scan afterwards produces no duplicates.
    for path in scan(inbox, PathFilter(inbox, recursive=False)):
        tracker.touch(path)
    assert tracker.poll() == [] and tracker.pending() == 0


def test_package_never_imports_torch():
    """Neither the watcher nor its web view (`nst-watch watch --http`) loads torch."""
    import subprocess

    code = (
        "import sys, tempfile, pathlib, nst_watch.watch, nst_watch.watch.observer, nst_watch.watch.settle;"
        "import nst_watch.service.daemon; from nst_watch.service.web.app import create_app;"
        "from nst_watch.jobs import Ledger; state = pathlib.Path(tempfile.mkdtemp());"
        "create_app(state, Ledger(state / 'jobs.db'));"
        "bad = [m for m in ('torch', 'torchvision', 'nst_watch.engine', 'nst_watch.darkroom') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_failed_restart_is_logged_not_raised(inbox, make_watcher, caplog):
    """check() runs in the daemon's loop: a restart that fails must not crash it."""
    state = {"fail": False}

    def factory():
        if state["fail"]:
            raise OSError(errno.EACCES, "denied")
        return InotifyObserver()

    watcher, got = make_watcher(inbox, polling=False, observer_factory=factory)
    state["fail"] = True
    watcher._observer.stop()
    assert wait_until(lambda: not watcher.is_alive())
    with caplog.at_level(logging.WARNING, logger="nst_watch.watch"):
        assert watcher.check() is False
        assert watcher.check() is False
    assert len([r for r in caplog.records if "cannot be restarted" in r.getMessage()]) == 1
    state["fail"] = False
    assert watcher.check() is True
    (inbox / "a.jpg").write_bytes(b"x")
    assert wait_until(lambda: inbox / "a.jpg" in got.seen())
