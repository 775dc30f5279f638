"""SettleTracker with a fake clock: no waiting, exact control of the settle window."""

from __future__ import annotations

import os
import threading

import pytest
from conftest import FakeClock, nest_folders

from nst_watch.watch import EMPTY, NOT_REGULAR, READY, SYMLINK, TOO_LONG, SettleTracker

SETTLE = 2.0




@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def tracker(clock):
    return SettleTracker(SETTLE, clock=clock)


def write(path, data: bytes, *, append: bool = True, mtime_ns: int | None = None) -> None:
    """Write and give the file a distinct mtime (tmpfs mtime can repeat within a tick)."""
    with open(path, "ab" if append else "wb") as fh:
        fh.write(data)
    write.counter += 1
    stamp = mtime_ns if mtime_ns is not None else 1_700_000_000_000_000_000 + write.counter * 1_000_000
    os.utime(path, ns=(stamp, stamp))


write.counter = 0


def test_slow_writer_is_ready_once_only_after_last_write_plus_window(tmp_path, tracker, clock):
    photo = tmp_path / "a.jpg"
    write(photo, b"x" * 100)
    tracker.touch(photo)
    assert tracker.poll() == []
    # Chunks every 1.5 s (< 2 s window), no event in between: the stat signature must catch them.
    for _ in range(5):
        clock.advance(1.5)
        write(photo, b"y" * 100)
        assert tracker.poll() == [], "reported while still being written"
    clock.advance(SETTLE - 0.01)
    assert tracker.poll() == []
    clock.advance(0.01)
    (result,) = tracker.poll()
    assert result.kind == READY and result.ok
    assert result.path == photo
    assert result.size == 600
    st = os.lstat(photo)
    assert (result.mtime_ns, result.inode, result.dev) == (st.st_mtime_ns, st.st_ino, st.st_dev)
    clock.advance(100)
    assert tracker.poll() == []
    assert tracker.pending() == 0


def test_event_restarts_window_even_if_stat_unchanged(tmp_path, tracker, clock):
    """Coarse mtimes (FAT, SMB) can hide a write; the event itself must still delay readiness."""
    photo = tmp_path / "a.jpg"
    write(photo, b"x")
    tracker.touch(photo)
    tracker.poll()
    clock.advance(1.9)
    tracker.touch(photo)
    clock.advance(1.9)
    assert tracker.poll() == []
    clock.advance(0.1)
    assert [r.kind for r in tracker.poll()] == [READY]


def test_many_touches_one_result_and_late_events_do_not_duplicate(tmp_path, tracker, clock):
    photo = tmp_path / "a.jpg"
    write(photo, b"x" * 10)
    for _ in range(50):
        tracker.touch(photo)
        tracker.touch(str(photo))
    assert tracker.pending() == 1
    tracker.poll()
    clock.advance(SETTLE)
    assert len(tracker.poll()) == 1
    # A late on_closed or a reconcile scan touches the unchanged file again.
    tracker.touch(photo)
    assert tracker.poll() == [] and tracker.pending() == 0
    # New content under the same name is a new job.
    write(photo, b"new", append=False)
    tracker.touch(photo)
    tracker.poll()
    clock.advance(SETTLE)
    assert [r.size for r in tracker.poll()] == [3]
    # forget(): the daemon moved it away; the same file coming back counts again.
    tracker.forget(photo)
    tracker.touch(photo)
    tracker.poll()
    clock.advance(SETTLE)
    assert len(tracker.poll()) == 1


def test_symlink_rejected_once_never_followed(tmp_path, tracker, clock):
    target = tmp_path / "real.jpg"
    write(target, b"x" * 10)
    link = tmp_path / "link.jpg"
    link.symlink_to(target)
    tracker.touch(link)
    (result,) = tracker.poll()
    assert result.kind == SYMLINK and not result.ok
    assert result.path == link
    assert result.inode == os.lstat(link).st_ino != os.stat(target).st_ino
    tracker.touch(link)  # a rescan must not warn again
    clock.advance(SETTLE * 3)
    assert tracker.poll() == [] and tracker.pending() == 0


def test_dangling_symlink_is_rejected_not_dropped(tmp_path, tracker):
    link = tmp_path / "dangling.jpg"
    link.symlink_to(tmp_path / "nowhere")
    tracker.touch(link)
    assert [r.kind for r in tracker.poll()] == [SYMLINK]


def test_fifo_rejected_and_never_opened(tmp_path, tracker, clock):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    results = []

    def run():
        tracker.touch(fifo)
        results.extend(tracker.poll())
        clock.advance(SETTLE * 2)
        results.extend(tracker.poll())

    # Opening a FIFO with no writer blocks forever: run in a thread and bound the wait.
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "poll() blocked: it opened the FIFO"
    assert [r.kind for r in results] == [NOT_REGULAR]


def test_directory_is_not_regular(tmp_path, tracker):
    (tmp_path / "folder.jpg").mkdir()
    tracker.touch(tmp_path / "folder.jpg")
    assert [r.kind for r in tracker.poll()] == [NOT_REGULAR]


def test_zero_byte_file_waits_then_rejected_once(tmp_path, tracker, clock):
    empty = tmp_path / "e.jpg"
    empty.touch()
    tracker.touch(empty)
    assert tracker.poll() == []
    clock.advance(SETTLE - 0.5)
    assert tracker.poll() == [] and tracker.pending() == 1
    clock.advance(0.5)
    (result,) = tracker.poll()
    assert result.kind == EMPTY and result.size == 0
    tracker.touch(empty)  # still empty: not reported again
    clock.advance(SETTLE)
    assert tracker.poll() == []
    # The placeholder finally gets content: now it is a real job.
    write(empty, b"data")
    tracker.touch(empty)
    tracker.poll()
    clock.advance(SETTLE)
    assert [(r.kind, r.size) for r in tracker.poll()] == [(READY, 4)]


def test_zero_byte_file_that_fills_up_is_ready(tmp_path, tracker, clock):
    photo = tmp_path / "a.jpg"
    photo.touch()
    tracker.touch(photo)
    tracker.poll()
    clock.advance(1.0)
    write(photo, b"abc")
    assert tracker.poll() == []
    clock.advance(SETTLE)
    assert [(r.kind, r.size) for r in tracker.poll()] == [(READY, 3)]


def test_vanished_file_dropped_silently(tmp_path, tracker, clock):
    photo = tmp_path / "a.jpg"
    write(photo, b"x")
    tracker.touch(photo)
    tracker.touch(tmp_path / "never-existed.jpg")
    tracker.poll()
    photo.unlink()
    clock.advance(SETTLE)
    assert tracker.poll() == []
    assert tracker.pending() == 0


def test_replaced_file_inode_change_restarts_window(tmp_path, tracker, clock):
    """Same size and mtime but a new inode (rename over) is a different file: wait again."""
    photo = tmp_path / "a.jpg"
    write(photo, b"x" * 5, mtime_ns=10**18)
    tracker.touch(photo)
    tracker.poll()
    clock.advance(SETTLE - 0.1)
    other = tmp_path / "b.tmp"
    write(other, b"y" * 5, mtime_ns=10**18)
    os.replace(other, photo)
    assert tracker.poll() == []
    clock.advance(0.2)
    assert tracker.poll() == []
    clock.advance(SETTLE)
    assert len(tracker.poll()) == 1


def test_forget_removes_candidate(tmp_path, tracker, clock):
    photo = tmp_path / "a.jpg"
    write(photo, b"x")
    tracker.touch(photo)
    tracker.forget(photo)
    assert tracker.pending() == 0
    clock.advance(SETTLE)
    assert tracker.poll() == []


def test_touch_never_raises(tracker):
    tracker.touch(object())  # type: ignore[arg-type]
    tracker.touch("\x00bad")
    assert tracker.pending() <= 1
    tracker.poll()  # the NUL path gives ValueError from lstat... must not raise either


def test_concurrent_touches_while_polling(tmp_path, clock):
    tracker = SettleTracker(0.0, clock=clock)
    paths = []
    for i in range(200):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(b"x")
        paths.append(p)

    def toucher():
        for p in paths:
            tracker.touch(p)

    threads = [threading.Thread(target=toucher) for _ in range(4)]
    for t in threads:
        t.start()
    ready = []
    while any(t.is_alive() for t in threads) or tracker.pending():
        ready.extend(tracker.poll())
    for t in threads:
        t.join()
    assert sorted(r.path for r in ready) == sorted(paths)


def test_negative_settle_rejected():
    with pytest.raises(ValueError):
        SettleTracker(-1)


def settle_once(tracker, clock, path) -> list:
    """Touch `path`, let the settle time pass, and return the kinds of the reports that follow."""
    tracker.touch(path)
    tracker.poll()
    clock.advance(SETTLE)
    return [r.kind for r in tracker.poll()]


def test_unreport_lets_an_unchanged_file_be_judged_again(tmp_path, tracker, clock):
    """The consumer could not take a report (unreadable, locked): without unreport, scans never retry it."""
    photo = tmp_path / "a.jpg"
    write(photo, b"x")
    assert settle_once(tracker, clock, photo) == [READY]
    tracker.touch(photo)  # a reconcile scan: unchanged, so dropped as a late duplicate
    clock.advance(SETTLE)
    assert tracker.poll() == []
    tracker.unreport(photo)
    assert settle_once(tracker, clock, photo) == [READY]


def test_unreport_keeps_a_waiting_candidate(tmp_path, tracker, clock):
    photo = tmp_path / "a.jpg"
    write(photo, b"x")
    tracker.touch(photo)
    tracker.poll()
    tracker.unreport(photo)
    assert tracker.pending() == 1
    clock.advance(SETTLE)
    assert [r.kind for r in tracker.poll()] == [READY]


def test_chmod_counts_as_news(tmp_path, tracker, clock):
    """Same bytes, same mtime, new permissions: ctime moved, so the file is reported again."""
    photo = tmp_path / "a.jpg"
    write(photo, b"x")
    os.chmod(photo, 0)
    tracker.touch(photo)
    tracker.poll()
    clock.advance(SETTLE)
    (first,) = tracker.poll()
    before = os.lstat(photo).st_ctime_ns
    while os.lstat(photo).st_ctime_ns == before:  # the kernel stamps ctime at clock-tick granularity
        os.chmod(photo, 0o644)
    tracker.touch(photo)
    tracker.poll()
    clock.advance(SETTLE)
    (second,) = tracker.poll()
    assert second.ok and second.ctime_ns != first.ctime_ns and second.mtime_ns == first.mtime_ns


def test_rejections_say_what_the_entry_is(tmp_path, tracker):
    import stat

    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "folder.jpg")
    for name in ("folder.jpg", "pipe.jpg", "link.jpg"):
        tracker.touch(tmp_path / name)
    kinds = {r.path.name: (r.kind, stat.S_IFMT(r.mode)) for r in tracker.poll()}
    assert kinds == {"folder.jpg": (NOT_REGULAR, stat.S_IFDIR), "pipe.jpg": (NOT_REGULAR, stat.S_IFIFO),
                     "link.jpg": (SYMLINK, stat.S_IFLNK)}


def test_a_path_longer_than_the_system_allows_is_rejected_once_not_left_settling(tmp_path, tracker, clock):
    # An event can name a file whose path is past PATH_MAX (a 255-byte name in a folder 3900 bytes deep):
    # lstat fails with ENAMETOOLONG for ever, so waiting would keep it "settling" with no reason given.
    folder, fd = nest_folders(tmp_path, 3900)
    name = "x" * 251 + ".jpg"
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    path = f"{folder}/{name}"
    tracker.touch(path)
    clock.advance(SETTLE + 1)
    (result,) = tracker.poll()
    assert result.kind == TOO_LONG and not result.ok and str(result.path) == path
    assert tracker.pending() == 0
    tracker.touch(path)  # a later event or scan: already said
    assert tracker.poll() == [] and tracker.pending() == 0
