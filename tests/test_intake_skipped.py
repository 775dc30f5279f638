"""Nothing in a hot folder is dropped silently, and nothing skipped for a passing reason stays skipped.

The real daemon (watcher role: no torch) with its watchdog observer, real
files of every awkward kind, and what an operator sees: `nst-watch status`
(table and --json) and the log.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_kit import DaemonProcess, Studio, photo, wait_until

pytestmark = pytest.mark.slow


def nst(*args, columns: int = 250):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": str(columns)})


def status(studio) -> dict:
    result = nst("status", "-c", studio.config, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def not_taken(studio) -> dict[str, str]:
    """{entry relative to the inbox: reason} as `status --json` lists it."""
    return {os.path.relpath(e["path"], studio.inbox): e["reason"] for e in status(studio)["skipped"]}


def scans(studio) -> int:
    snap = status(studio)
    return sum(w["scans"] for p in snap["processes"] for w in p.get("watches", []))


def sources(studio) -> set[str]:
    return {os.path.relpath(j.source_path, studio.inbox) for j in studio.jobs()}


def test_every_entry_not_taken_is_listed_until_it_is_fixed_or_removed(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"reconcile_seconds": 0.5})
    studio.inbox.mkdir()
    photo(studio.inbox / "._early.jpg", seed=1)  # found by the startup scan, not by an event
    daemon = studio.start(role="watch").wait_ready()
    served = []
    try:
        (studio.inbox / "y.jpg").mkdir()
        (studio.inbox / "z.jpg").write_bytes(b"")
        os.mkfifo(studio.inbox / "p.jpg")
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(studio.inbox / "s.jpg"))
        served.append(server)
        (studio.inbox / "l.jpg").symlink_to(photo(tmp_path / "elsewhere" / "secret.jpg", seed=2))
        photo(studio.inbox / "._IMG_1.jpg", seed=3)  # macOS AppleDouble name: ignored by the built-in list
        expected = {"y.jpg": "a directory", "z.jpg": "empty", "p.jpg": "a FIFO (named pipe)", "s.jpg": "a socket",
                    "l.jpg": "a symbolic link", "._IMG_1.jpg": "ignored by pattern '.*'",
                    "._early.jpg": "ignored by pattern '.*'"}
        try:
            os.mknod(studio.inbox / "d.jpg", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
            expected["d.jpg"] = "a device"
        except PermissionError:
            pass  # no CAP_MKNOD here: the other kinds still run
        (studio.inbox / "notes.txt").write_bytes(b"")  # matches no include pattern: not a photo, not listed
        (studio.inbox / "x.jpg.part").write_bytes(b"")  # a download in progress: not listed either
        photo(studio.inbox / "good.jpg", seed=4)
        wait_until(lambda: not_taken(studio) == expected, timeout=30, what="every entry listed with its reason")
        assert sources(studio) == {"good.jpg"}

        table = nst("status", "-c", studio.config)
        assert table.returncode == 0 and "not taken" in table.stdout
        for name, reason in expected.items():
            assert any(name in line and reason in line for line in table.stdout.splitlines()), name

        # Reconcile scans come and go: the list stays, and each entry was logged once, not once a scan.
        first = scans(studio)
        wait_until(lambda: scans(studio) >= first + 3, what="three more reconcile scans")
        assert not_taken(studio) == expected
        for name in ("y.jpg is a directory", "z.jpg is empty", "p.jpg is a FIFO", "s.jpg is a socket",
                     "l.jpg is a symbolic link", "._IMG_1.jpg: ignored"):
            assert daemon.log.count(name) == 1, name

        # Fix or remove each one: the list shrinks (well before the next reconcile would matter:
        # entries are re-checked every second), and fixed photos are queued.
        os.rmdir(studio.inbox / "y.jpg")
        photo(tmp_path / "staging" / "z.jpg", seed=5).replace(studio.inbox / "z.jpg")
        os.unlink(studio.inbox / "p.jpg")
        server.close()
        os.unlink(studio.inbox / "s.jpg")
        photo(tmp_path / "staging" / "l.jpg", seed=6).replace(studio.inbox / "l.jpg")  # the link replaced by a file
        os.rename(studio.inbox / "._IMG_1.jpg", studio.inbox / "IMG_1.jpg")
        os.unlink(studio.inbox / "._early.jpg")
        if "d.jpg" in expected:
            os.unlink(studio.inbox / "d.jpg")
        wait_until(lambda: not_taken(studio) == {}, timeout=30, what="the list to empty")
        wait_until(lambda: sources(studio) == {"good.jpg", "z.jpg", "l.jpg", "IMG_1.jpg"}, what="fixed photos queued")
        assert "not taken" not in nst("status", "-c", studio.config).stdout
    finally:
        for server in served:
            server.close()
        assert daemon.stop() == 0


def test_route_subfolders_lists_photos_no_preset_takes_until_they_move_or_the_preset_appears(tmp_path):
    studio = Studio(tmp_path, presets=("a",), watch={"presets": None, "route": "subfolders"})
    daemon = studio.start(role="watch").wait_ready()
    try:
        photo(studio.inbox / "top.jpg", seed=1)
        photo(studio.inbox / "b" / "street.jpg", seed=2)
        wait_until(lambda: not_taken(studio) == {
            "top.jpg": "outside a preset folder (route: subfolders; drop photos into a/)",
            "b/street.jpg": "in folder 'b', which names no preset (route: subfolders)",
        }, what="both photos listed")
        assert daemon.log.count("top.jpg: outside a preset folder") == 1

        os.rename(studio.inbox / "top.jpg", studio.inbox / "a" / "top.jpg")
        wait_until(lambda: sources(studio) == {"a/top.jpg"}, what="the moved photo queued")
        # Adding the missing preset (SIGHUP) makes the waiting photo valid: no need to drop it again.
        studio.presets["b"] = {**studio.presets["a"]}
        studio.write_config()
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("config reloaded")
        wait_until(lambda: sources(studio) == {"a/top.jpg", "b/street.jpg"}, what="photo taken after the reload")
        wait_until(lambda: not_taken(studio) == {}, what="the list to empty")  # the live file lags up to 1 s
    finally:
        assert daemon.stop() == 0


def test_thousands_of_junk_files_keep_the_status_small(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    studio.inbox.mkdir()
    for i in range(3000):
        (studio.inbox / f"._IMG_{i:04d}.jpg").write_bytes(b"x")
    daemon = studio.start(role="watch").wait_ready()
    try:
        snap = wait_until(lambda: (s := status(studio))["skipped_total"] == 3000 and s, what="3000 counted")
        assert len(snap["skipped"]) == 50  # listed: a bounded sample, with the total
        live = list((tmp_path / "state" / "live").glob("*.json"))
        assert live and all(p.stat().st_size < 32_000 for p in live)
        assert "and 2950 more" in nst("status", "-c", studio.config).stdout
        for path in studio.inbox.glob("._IMG_*.jpg"):
            path.unlink()
        wait_until(lambda: status(studio)["skipped_total"] == 0, what="the count back to zero")
    finally:
        assert daemon.stop() == 0


# --- unreadable, then readable --------------------------------------------------------------
#
# The tests run as root, and root reads mode-000 files. The daemon is started
# without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (dropped from its bounding
# set before exec), so the kernel checks permissions for it like for any user.

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _drop_read_anything() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


PREEXEC = _drop_read_anything if os.geteuid() == 0 else None


@pytest.fixture
def permissions_bite(tmp_path):
    """Skip unless a mode-000 file really is unreadable for the daemon we start."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        result = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}, 'rb')"], preexec_fn=PREEXEC,
                                capture_output=True, timeout=60)
    except OSError as exc:
        pytest.skip(f"cannot start a process without root's read-anything capabilities: {exc}")
    finally:
        probe.unlink()
    if result.returncode == 0:
        pytest.skip("mode 000 does not stop reads here (capabilities could not be dropped)")


class PlainUserDaemon(DaemonProcess):
    """DaemonProcess, but subject to file permissions even when the tests run as root."""

    def __init__(self, studio: Studio, role: str = "watch"):
        self.log_path = studio.root / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "nst_watch", role, "-c", str(studio.config)],
                                     stdout=subprocess.DEVNULL, stderr=self._log, preexec_fn=PREEXEC,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_unreadable_photo_is_taken_once_readable_without_a_restart(tmp_path, permissions_bite):
    studio = Studio(tmp_path, presets=("a",), service={"reconcile_seconds": 0.5})
    early = photo(studio.inbox / "early.jpg", seed=1)  # waiting before the start: the startup scan's path
    early.chmod(0)
    os.utime(early, (time.time() - 60, time.time() - 60))
    daemon = PlainUserDaemon(studio).wait_ready()
    try:
        late = photo(tmp_path / "staging" / "late.jpg", seed=2)  # arrives later: the settle tracker's path
        late.chmod(0)
        late = late.rename(studio.inbox / "late.jpg")
        unreadable = {"early.jpg": "cannot read: Permission denied", "late.jpg": "cannot read: Permission denied"}
        wait_until(lambda: not_taken(studio) == unreadable, what="both listed as unreadable")
        first = scans(studio)
        wait_until(lambda: scans(studio) >= first + 3, what="three more reconcile scans")
        assert not_taken(studio) == unreadable and studio.jobs() == []
        for name in ("early.jpg", "late.jpg"):  # retried at every scan, warned about once
            assert daemon.log.count(f"{name}: cannot read") == 1, daemon.log

        early.chmod(0o644)
        late.chmod(0o644)
        wait_until(lambda: sources(studio) == {"early.jpg", "late.jpg"}, what="both queued without a restart")
        wait_until(lambda: not_taken(studio) == {}, what="the list to empty")
    finally:
        assert daemon.stop() == 0


def test_folder_that_cannot_be_listed_is_listed_and_scanned_once_it_can(tmp_path, permissions_bite):
    """route: subfolders with a preset folder locked (chmod 000): its photos appear once it opens."""
    studio = Studio(tmp_path, presets=("a",), watch={"presets": None, "route": "subfolders"},
                    service={"reconcile_seconds": 0.5})
    locked = studio.inbox / "a"
    photo(locked / "inside.jpg", seed=1)
    locked.chmod(0)
    daemon = PlainUserDaemon(studio).wait_ready()
    try:
        wait_until(lambda: not_taken(studio) == {"a": "cannot list: Permission denied"}, what="the folder listed")
        first = scans(studio)
        wait_until(lambda: scans(studio) >= first + 3, what="three more reconcile scans")
        assert daemon.log.count("cannot list") == 1
        locked.chmod(0o755)
        wait_until(lambda: sources(studio) == {"a/inside.jpg"}, what="the photo inside queued")
        wait_until(lambda: not_taken(studio) == {}, what="the list to empty")
    finally:
        locked.chmod(0o755)
        assert daemon.stop() == 0
