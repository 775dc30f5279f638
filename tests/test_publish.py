"""One crash-safe publish path (issue 21, items 1 and 6): moved originals, error reports, sidecars, thumbnails.

A full disk, a crash or another file system never leaves a partial file
under a final name; an original leaves its inbox only once its copy is whole
and durable, and the ledger always points at where the photo really is.
Real files, a real ledger, real daemons killed with SIGKILL at the fault
points (nst_watch.faults), a real tmpfs where the machine lets a test mount
one; random weights and tiny photos.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon_kit import Studio, photo, wait_until
from nst_watch.config import load_config
from nst_watch.errors import PhotoError
from nst_watch.faults import ENV as FAULTS
from nst_watch.photo.atomic import TEMP_PREFIX
from nst_watch.service import thumbs
from nst_watch.service.originals import finish_original, recover_originals, retry_moves
from nst_watch.service.publish import clean_stages

CASES = Path(__file__).resolve().parent / "field_cases"
SPAWN = multiprocessing.get_context("spawn")


def nst(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entries(folder: Path) -> list[str]:
    """Every name in `folder`, hidden ones (temp files) included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def finished_job(ledger, config, path: Path, *, ok: bool) -> int:
    """One job for the photo at `path`, run to done or failed; its id."""
    job = ledger.add(sha256=sha(path), preset="a", preset_hash="h", source_path=path, watch="inbox").job
    [claimed] = ledger.claim("w1")
    if ok:
        ledger.complete("w1", claimed.id, config.watches[0].output / "out.jpg")
    else:
        ledger.fail("w1", claimed.id, f"{path}: cannot identify image file", permanent=True)
    return job.id


# --- originals, in process -----------------------------------------------------------------------


@pytest.mark.parametrize("ok", [True, False], ids=["to-processed", "to-failed"])
def test_a_full_disk_mid_copy_leaves_nothing_under_the_name_and_the_photo_moves_once_there_is_room(
        tmp_path, monkeypatch, caplog, ok):
    studio = Studio(tmp_path, presets=("a",))
    config = load_config(studio.config)
    target = studio.processed if ok else studio.failed
    studio.inbox.mkdir()
    original = studio.inbox / "n0.png"
    original.write_bytes(np.random.default_rng(5).bytes(3 << 20))  # three copy chunks: the disk fills after one
    os.utime(original, (1_600_000_000, 1_600_000_000))
    digest = sha(original)
    with studio.ledger() as ledger:
        job_id = finished_job(ledger, config, original, ok=ok)
        # processed/ and failed/ on another file system, whose disk fills after the first chunk
        monkeypatch.setenv(FAULTS, "EXDEV:moving,ENOSPC:copying")
        with caplog.at_level(logging.INFO, "nst_watch"):
            assert finish_original(ledger, config.watches[0], digest, original, config_path=config.path) is None
        assert entries(target) == []  # no n0.png, no "n0 (1).png", no temp file
        assert sha(original) == digest and ledger.get(job_id).source_path == str(original)
        [move] = ledger.moves()
        assert move.owner is None and "no space left on the device holding" in move.error
        assert f"{original}: could not move it into {target}: no space left" in caplog.text
        assert "stays where it is" in caplog.text

        monkeypatch.setenv(FAULTS, "EXDEV:moving")  # room again; still another file system
        assert retry_moves(ledger, config) == 1
        assert ledger.moves() == [] and not original.exists()
        moved = target / "n0.png"
        assert entries(target) == (["n0.png"] if ok else ["n0.png", "n0.png.error.txt"])
        assert sha(moved) == digest and moved.stat().st_mtime == 1_600_000_000  # bytes and dates, as copy2
        assert ledger.get(job_id).source_path == str(moved)


def test_a_real_move_to_another_file_system_copies_then_removes(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is not a separate file system here")
    elsewhere = Path(shm / f"nst-watch-test-{os.getpid()}-{tmp_path.name}")
    try:
        studio = Studio(tmp_path, presets=("a",), watch={"processed": f"move:{elsewhere}"})
        config = load_config(studio.config)
        original = photo(studio.inbox / "IMG_1.jpg", seed=3)
        digest = sha(original)
        with studio.ledger() as ledger:
            job_id = finished_job(ledger, config, original, ok=True)
            new = finish_original(ledger, config.watches[0], digest, original)
            assert new == elsewhere / "IMG_1.jpg" and sha(new) == digest and not original.exists()
            assert entries(elsewhere) == ["IMG_1.jpg"] and ledger.get(job_id).source_path == str(new)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_without_hard_links_a_move_still_never_replaces_a_photo(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")  # EPERM: FAT, some SMB/FUSE mounts

    studio = Studio(tmp_path, presets=("a",))
    config = load_config(studio.config)
    studio.processed.mkdir()
    (studio.processed / "IMG_2.jpg").write_bytes(b"an earlier photo of the same name")
    original = photo(studio.inbox / "IMG_2.jpg", seed=6)
    digest = sha(original)
    monkeypatch.setattr(os, "link", no_links)
    with studio.ledger() as ledger:
        finished_job(ledger, config, original, ok=True)
        new = finish_original(ledger, config.watches[0], digest, original)
        assert ledger.moves() == []
    assert new == studio.processed / "IMG_2 (1).jpg" and sha(new) == digest and not original.exists()
    assert (studio.processed / "IMG_2.jpg").read_bytes() == b"an earlier photo of the same name"
    assert entries(studio.processed) == ["IMG_2 (1).jpg", "IMG_2.jpg"]


def test_a_ledger_from_before_moves_were_recorded_is_upgraded_in_place(tmp_path):
    import sqlite3

    from nst_watch.jobs import MIGRATIONS, Ledger

    db = tmp_path / "jobs.db"
    old = sqlite3.connect(db, isolation_level=None)
    MIGRATIONS[0](old)  # the schema as nst-watch shipped it before the `moves` table
    old.execute("PRAGMA user_version = 1")
    old.execute("INSERT INTO jobs (sha256, preset, preset_hash, source_path, max_attempts, available_at, created_at,"
                " updated_at) VALUES ('s', 'a', 'h', '/in/x.jpg', 3, 0, 0, 0)")
    old.close()
    with Ledger(db) as ledger:
        assert [j.source_path for j in ledger.recent()] == ["/in/x.jpg"] and ledger.moves() == []
        taken, resumed = ledger.take_move(sha256="s", watch="w", source_path="/in/x.jpg", dest_path="/done/x.jpg",
                                          owner="me", gone=lambda owner: True)
        assert not resumed and ledger.moves()[0].dest_path == "/done/x.jpg"


def test_the_error_reports_retry_line_names_the_config_and_works(tmp_path):
    studio = Studio(tmp_path / "my studio", presets=("a",))  # a space: the line must be quoted
    config = load_config(studio.config)
    bad = studio.inbox / "bad.jpg"
    studio.inbox.mkdir(parents=True)
    bad.write_bytes(b"not a photo")
    with studio.ledger() as ledger:
        job_id = finished_job(ledger, config, bad, ok=False)
        new = finish_original(ledger, config.watches[0], sha(bad), bad, config_path=config.path)
    report = (new.parent / "bad.jpg.error.txt").read_text()
    [line] = [x.strip() for x in report.splitlines() if x.strip().startswith("nst-watch retry")]
    assert "CONFIG" not in line and str(studio.config) in line
    argv = shlex.split(line)
    assert argv == ["nst-watch", "retry", "-c", str(studio.config), str(job_id)]
    result = nst(*argv[1:])
    assert result.returncode == 0 and "1 job(s) queued again" in result.stdout, result.stderr


def _finish_in_a_child(config_file: str, source: str, digest: str, fault: str) -> None:
    os.environ[FAULTS] = fault
    from nst_watch.jobs import Ledger

    config = load_config(config_file)
    with Ledger(config.ledger_path) as ledger:
        finish_original(ledger, config.watches[0], digest, Path(source), config_path=config.path)


def test_a_kill_while_the_error_report_is_written_is_finished_at_the_next_start(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    config = load_config(studio.config)
    studio.inbox.mkdir()
    bad = studio.inbox / "bad.jpg"
    bad.write_bytes(b"not a photo")
    digest = sha(bad)
    with studio.ledger() as ledger:
        finished_job(ledger, config, bad, ok=False)
    # The photo is in failed/ and recorded there; the report's temp file is whole, not yet named.
    child = SPAWN.Process(target=_finish_in_a_child, args=(str(studio.config), str(bad), digest, "writing"))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert "bad.jpg.error.txt" not in entries(studio.failed) and (studio.failed / "bad.jpg").exists()
    with studio.ledger() as ledger:
        assert ledger.jobs_for(digest)[0].source_path == str(studio.failed / "bad.jpg")  # true already
        recover_originals(ledger, config)  # what every start does
        assert ledger.moves() == []
    assert clean_stages(studio.failed, older_than=0)  # the killed write's temp file, removed at start
    assert entries(studio.failed) == ["bad.jpg", "bad.jpg.error.txt"] and entries(studio.inbox) == []
    report = (studio.failed / "bad.jpg.error.txt").read_text()
    assert report.endswith(f"nst-watch retry -c {studio.config} 1\n")


# --- thumbnails ------------------------------------------------------------------------------------


def test_a_thumbnail_that_cannot_be_written_leaves_no_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    pixels = np.zeros((40, 48, 3), np.float32)
    with pytest.raises(PhotoError, match="no space left"):
        thumbs.write_thumbs(tmp_path, 7, pixels, pixels)
    assert entries(thumbs.thumbs_dir(tmp_path)) == []


def _thumbs_in_a_child(state_dir: str) -> None:
    os.environ[FAULTS] = "writing"
    pixels = np.zeros((40, 48, 3), np.float32)
    thumbs.write_thumbs(Path(state_dir), 7, pixels, pixels)


def test_a_kill_mid_thumbnail_leaves_only_a_temp_file_the_next_start_removes(tmp_path):
    child = SPAWN.Process(target=_thumbs_in_a_child, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    folder = thumbs.thumbs_dir(tmp_path)
    assert entries(folder) == [f"{TEMP_PREFIX}thumb-7-before"]  # never a half JPEG the web view could serve
    assert clean_stages(folder, older_than=0) and entries(folder) == []


# --- the daemon, killed at each step of a move ------------------------------------------------------


def assert_ledger_true(studio: Studio) -> None:
    """Every job points at a file that exists: what status, the web view and retry read."""
    for job in studio.jobs():
        assert Path(job.source_path).exists(), f"job {job.id} points at {job.source_path}, which is gone"


@pytest.mark.parametrize("faults", [
    "moving",  # written down, nothing placed
    "EXDEV:moving,copying",  # mid-copy to another file system
    "moved",  # linked under its name, not recorded
    "EXDEV:moving,moved",  # copied and named on another file system, not recorded
    "relocated",  # recorded at its new place, the inbox copy still there
])
def test_sigkill_while_an_original_moves_then_restart(tmp_path, faults):
    studio = Studio(tmp_path, presets=("a",))
    original = photo(studio.inbox / "one.jpg", seed=1)
    digest = sha(original)
    crashed = studio.start(env={FAULTS: faults})
    assert crashed.proc.wait(120) == -signal.SIGKILL
    crashed.kill()
    assert_ledger_true(studio)  # even before any restart
    daemon = studio.start().wait_ready()
    try:
        wait_until(lambda: entries(studio.inbox) == [], what="the original gone from the inbox")
        status = json.loads(nst("status", "-c", studio.config, "--json").stdout)
    finally:
        assert daemon.stop() == 0
    moved = studio.processed / "one.jpg"
    assert entries(studio.processed) == ["one.jpg"] and sha(moved) == digest  # no "(1)", no temp file
    [job] = studio.jobs()
    assert job.state == "done" and job.source_path == str(moved)
    assert [r["source"] for r in status["recent"]] == [str(moved)]
    with studio.ledger() as ledger:
        assert ledger.moves() == []
    assert [p.name for p in studio.outputs()] == ["one-a.jpg"] and studio.leftovers() == []


def test_a_dead_photo_moved_by_a_killed_daemon_is_retried_from_where_it_is(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"max_attempts": 1})
    photo(studio.inbox / "one.jpg", seed=2)
    # Out of memory once (dead after one attempt), then killed between recording
    # the move to failed/ and removing the inbox copy.
    crashed = studio.start(env={FAULTS: "oom:optimising,relocated"})
    assert crashed.proc.wait(120) == -signal.SIGKILL
    crashed.kill()
    [job] = studio.jobs()
    assert job.state == "dead" and job.source_path == str(studio.failed / "one.jpg")
    daemon = studio.start().wait_ready()
    try:
        report = studio.failed / "one.jpg.error.txt"
        wait_until(report.exists, what="the error report, written by the recovery")
        assert entries(studio.inbox) == [] and entries(studio.failed) == ["one.jpg", "one.jpg.error.txt"]
        assert f"nst-watch retry -c {studio.config} {job.id}" in report.read_text()
        result = nst("retry", "-c", studio.config, "--dead")
        assert result.returncode == 0, result.stderr
        wait_until(lambda: (studio.processed / "one.jpg").exists(), what="the retried photo in processed/")
    finally:
        assert daemon.stop() == 0
    [job] = studio.jobs()
    assert job.state == "done" and job.attempts == 1 and job.source_path == str(studio.processed / "one.jpg")
    assert entries(studio.failed) == []  # the report went with the photo
    assert [p.name for p in studio.outputs()] == ["one-a.jpg"]


def test_a_full_disk_in_processed_keeps_the_photo_in_the_inbox_until_there_is_room(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    original = photo(studio.inbox / "one.jpg", seed=4)
    digest = sha(original)
    full = studio.start(env={FAULTS: "EXDEV:moving,ENOSPC:copying"}).wait_ready()
    try:
        full.wait_log("could not move it into")
        assert entries(studio.processed) == [] and sha(original) == digest
        assert_ledger_true(studio)
        [unmoved] = json.loads(nst("status", "-c", studio.config, "--json").stdout)["unmoved"]
        assert unmoved["path"] == str(original) and unmoved["to"] == str(studio.processed)
        assert "no space left on the device holding" in unmoved["reason"]
        table = nst("status", "-c", studio.config).stdout
        assert "originals not moved" in table
    finally:
        assert full.stop() == 0
    assert "no space left on the device holding" in full.log
    daemon = studio.start().wait_ready()  # room again
    try:
        wait_until(lambda: entries(studio.inbox) == [], what="the original moved")
    finally:
        assert daemon.stop() == 0
    assert entries(studio.processed) == ["one.jpg"] and sha(studio.processed / "one.jpg") == digest
    assert studio.jobs()[0].source_path == str(studio.processed / "one.jpg")


def test_a_sidecar_survives_a_kill_and_names_its_output(tmp_path):
    studio = Studio(tmp_path, presets=("a",), preset_settings={"output": {"format": "jpeg", "sidecar": True}})
    photo(studio.inbox / "one.jpg", seed=5)
    crashed = studio.start(env={FAULTS: "published"})  # linked under its name, sidecar still staged
    assert crashed.proc.wait(120) == -signal.SIGKILL
    crashed.kill()
    daemon = studio.start().wait_ready()
    try:
        wait_until(lambda: studio.counts()["done"] == 1, what="the job done")
    finally:
        assert daemon.stop() == 0
    assert entries(studio.outbox) == ["one-a.jpg", "one-a.jpg.json"]  # no staging or temp file
    sidecar = json.loads((studio.outbox / "one-a.jpg.json").read_text())
    assert sidecar["output"]["file"] == "one-a.jpg" and sidecar["preset"] == "a"


# --- the field case on a real, full file system -------------------------------------------------------


def _can_mount_tmpfs(folder: Path) -> str | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare(1) is not installed"
    folder.mkdir()
    probe = subprocess.run([unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(folder))}"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}"


def test_field_case_a_full_tmpfs_under_processed_never_holds_a_partial_photo(tmp_path):
    """enospc-original-move.py on a real 256 KB tmpfs (in a private mount namespace: nothing leaks)."""
    why = _can_mount_tmpfs(tmp_path / "probe")
    if why:
        pytest.skip(why)
    subprocess.run([sys.executable, str(CASES / "enospc-original-move.py"), str(tmp_path)], check=True,
                   capture_output=True)
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text().replace("reconcile_seconds: 120", "reconcile_seconds: 2"))
    kept = (tmp_path / "incoming" / "n0.png").read_bytes()
    script = ("mount -t tmpfs -o size=256k tmpfs out && mkdir -p out/outbox out/processed out/failed && "
              'exec "$0" -m nst_watch run -c config.yaml')
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([shutil.which("unshare"), "-rm", "sh", "-c", script, sys.executable], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = lambda: (tmp_path / "run.log").read_text()  # noqa: E731
    out = Path(f"/proc/{proc.pid}/root") / tmp_path.relative_to("/") / "out"  # the tmpfs, seen from outside
    try:
        wait_until(lambda: "ready:" in text() or proc.poll() is not None, what="the daemon ready")
        assert proc.poll() is None, text()
        room = os.statvfs(out)
        (out / "filler").write_bytes(bytes(room.f_bavail * room.f_frsize - 12 * 1024))  # room for the output only
        os.rename(tmp_path / "incoming" / "n0.png", tmp_path / "inbox" / "n0.png")
        wait_until(lambda: "could not move it into" in text(), timeout=120, what="the failed move")
        assert "no space left on the device holding" in text()
        assert entries(out / "processed") == []  # no 0-byte or partial n0.png, no temp file
        assert (tmp_path / "inbox" / "n0.png").read_bytes() == kept
        assert [p.name for p in (out / "outbox").iterdir()] == ["n0-p1.jpg"]
        (out / "filler").unlink()
        # Across file systems the copy is published before the inbox file goes: wait for both.
        wait_until(lambda: entries(out / "processed") == ["n0.png"] and entries(tmp_path / "inbox") == [],
                   timeout=60, what="the move at the reconcile")
        assert (out / "processed" / "n0.png").read_bytes() == kept
        status = json.loads(nst("status", "-c", config, "--json").stdout)
        assert [r["source"] for r in status["recent"]] == [str(tmp_path / "out" / "processed" / "n0.png")]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        log.close()
    assert code == 0, text()
