"""Nothing in a hot folder is dropped silently, and nothing skipped for a passing reason stays skipped.

The real daemon (watcher role: no torch) with its watchdog observer, real
files of every awkward kind, and what an operator sees: `nst-watch status`
(table and --json) and the log.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import nest_folders
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


# --- folders nested past the path limit (issue 21, item 5) -------------------------------------------


def test_a_folder_nested_past_the_path_limit_is_listed_with_the_fix(tmp_path):
    studio = Studio(tmp_path, presets=("a",), watch={"recursive": True})
    photo(studio.inbox / "shallow.jpg", seed=1)
    # A tree nested past PATH_MAX (4096 bytes with its NUL): its first folder past it cannot be listed.
    deep, fd = nest_folders(studio.inbox / "deep", 4300)
    os.close(fd)
    parts = deep.split("/")
    blocked = next(p for p in ("/".join(parts[:i]) for i in range(2, len(parts) + 1)) if len(os.fsencode(p)) > 4095)
    # A folder that can be listed, holding a file whose own path is one byte too long to be read.
    near, fd = nest_folders(studio.inbox / "long", 3850)
    name = "x" * (4096 - len(os.fsencode(near)) - 4) + ".jpg"  # near + "/" + name: 4097 bytes
    try:
        out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, photo(tmp_path / "staging" / "p.jpg", seed=2).read_bytes())
        os.close(out)
    finally:
        os.close(fd)
    daemon = studio.start(role="watch").wait_ready()
    try:
        listed = wait_until(lambda: len(found := not_taken(studio)) == 2 and found,
                            what="the deep folder and the long file listed")
    finally:
        assert daemon.stop() == 0
    size = len(os.fsencode(blocked))
    assert listed[os.path.relpath(blocked, studio.inbox)] == (
        f"cannot list: the path is {size} bytes, longer than the 4095 the system allows (shorten the names of the "
        "folders on the way to it, or move it up, nearer to the watched folder)")
    long_file = listed[os.path.relpath(f"{near}/{name}", studio.inbox)]
    assert long_file == ("cannot read: the path is 4097 bytes, longer than the 4095 the system allows (shorten "
                         "the names of the folders on the way to it, or move it up, nearer to the watched folder)")
    assert "File name too long" not in daemon.log and daemon.log.count("cannot list: the path is") == 1
    assert sources(studio) == {"shallow.jpg"}


# --- what is no image fails the moment it settles (issue 21, item 10) ---------------------------------


def test_a_file_that_is_no_image_fails_at_intake_with_one_reason_while_photos_queue(tmp_path):
    """The watcher alone (no worker): a queued job would wait for ever; what is no image must not wait."""
    from raw_kit import make_dng, make_heic

    studio = Studio(tmp_path, presets=("a", "b"))
    daemon = studio.start(role="watch").wait_ready()
    try:
        (studio.inbox / "notes.jpg").write_text("shopping list: film, fixer\n")
        Image.new("RGB", (8, 8)).save(studio.inbox / "clip.png", format="GIF")
        photos = {"p.jpg", "p.png", "p.tif", "p.webp", "p.heic", "p.dng", "DSC_1.NEF"}
        for name in ("p.jpg", "p.png", "p.tif", "p.webp"):  # each in the format its name says
            Image.open(photo(tmp_path / "staging" / "p.jpg", seed=3)).save(tmp_path / "staging" / name)
            os.rename(tmp_path / "staging" / name, studio.inbox / name)
        make_heic(studio.inbox / "p.heic")
        make_dng(studio.inbox / "p.dng")
        (studio.inbox / "DSC_1.NEF").write_bytes(b"II*\x00" + os.urandom(3000))  # a RAW's name: LibRaw decides
        wait_until(lambda: (studio.failed / "notes.jpg.error.txt").exists()
                   and (studio.failed / "clip.png.error.txt").exists(), what="both failed at once")
        names = photos | {"notes.jpg", "clip.png"}
        wait_until(lambda: {os.path.basename(j.source_path) for j in studio.jobs()} >= names, timeout=30,
                   what="every file recorded")
    finally:
        assert daemon.stop() == 0
    jobs = studio.jobs()
    for job in jobs:
        name = os.path.basename(job.source_path)
        if name in photos:
            assert job.state == "pending", name
            continue
        assert job.state == "failed" and job.attempts == 1, name
        with studio.ledger() as ledger:
            assert "leased" not in [e.state for e in ledger.history(job.id)]  # never queued for a worker
    notes = [j for j in jobs if j.source_path.endswith("notes.jpg")]
    assert len(notes) == 2 and all("not a JPEG/PNG/TIFF/WebP image" in j.error for j in notes)
    assert all("GIF images are not supported" in j.error for j in jobs if j.source_path.endswith("clip.png"))
    report = (studio.failed / "notes.jpg.error.txt").read_text()
    assert "not a JPEG/PNG/TIFF/WebP image" in report and "renaming a file does not convert it" in report
    assert daemon.log.count("notes.jpg: not a JPEG/PNG/TIFF/WebP image") == 1  # one line, not one per preset
    assert not (studio.inbox / "notes.jpg").exists() and (studio.failed / "notes.jpg").exists()


def test_submit_refuses_what_is_no_image_at_once(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    junk = tmp_path / "export.jpg"
    junk.write_bytes(b"%PDF-1.7 not a photo")
    good = photo(tmp_path / "good.jpg", seed=4)
    result = nst("submit", "-c", studio.config, junk, good, "-p", "a", "--json")
    assert result.returncode == 1
    records = json.loads(result.stdout)
    assert records[0]["file"] == str(junk) and "PDF images are not supported" in records[0]["error"]
    assert "export.jpg: PDF images are not supported" in result.stderr and "not queued" in result.stderr
    assert [os.path.basename(j.source_path) for j in studio.jobs()] == ["good.jpg"]
    assert junk.exists()  # submitted files are never moved


# --- a second name for the same photo (issue 21, item 5) ------------------------------------------------


def test_other_names_for_a_photo_are_moved_when_it_is_done_not_at_the_next_rescan(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"reconcile_seconds": 3600})
    daemon = studio.start().wait_ready()
    try:
        original = photo(tmp_path / "staging" / "a.jpg", seed=5)
        os.link(original, tmp_path / "staging" / "b.jpg")  # a hard link: one inode, two names
        shutil.copy(original, tmp_path / "staging" / "c.jpg")  # a copy: same content, its own inode
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            os.rename(tmp_path / "staging" / name, studio.inbox / name)
        wait_until(lambda: {p.name for p in studio.processed.iterdir()} == {"a.jpg", "b.jpg", "c.jpg"}
                   if studio.processed.exists() else False, timeout=60, what="all three names moved")
    finally:
        assert daemon.stop() == 0
    assert list(studio.inbox.iterdir()) == []
    assert len(studio.jobs()) == 1 and [p.name for p in studio.outputs()] == ["a-a.jpg"]  # processed once
    assert daemon.log.count("same content as") == 2  # b and c, each said once
