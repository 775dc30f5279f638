"""Masks in the hot folder and through `submit`: one test per field kind (issue 22, item 3).

Real daemons (watchdog observer, SQLite file, processes), tiny images, seeded
random VGG19 weights: the mechanics of masks as sidecars, never their pictures.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon_kit import Studio, photo, wait_until
from nst_watch.jobs import MIGRATIONS, SCHEMA_VERSION, Ledger
from nst_watch.service import thumbs

pytestmark = pytest.mark.slow

WHITE, BLACK, RED = (255, 255, 255), (0, 0, 0), (255, 0, 0)


def nst(*args):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "250"})


def status(studio) -> dict:
    result = nst("status", "-c", studio.config, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def paint(path: Path, size=(48, 40), left=WHITE, right=BLACK) -> Path:
    """A mask of `size` (width, height): its left half painted `left`, its right half `right`."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = left
    pixels[:, width // 2:] = right
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def drop(studio, *files: Path) -> None:
    """Files made elsewhere renamed into the inbox at once, as a copy tool finishing them would."""
    studio.inbox.mkdir(parents=True, exist_ok=True)
    for path in files:
        os.rename(path, studio.inbox / path.name)


def with_regions(studio, *, missing: str = "fail", wait: float = 120, styles: bool = True) -> None:
    """Preset a names two regions (white keeps the photo, black gets its style): its photos need a mask."""
    preset = studio.presets["a"]
    preset["regions"] = {"subject": {"color": "white", "styles": "photo"},
                         "background": {"color": "black", "styles": list(preset["styles"])}}
    if not styles:
        del preset["styles"]
    studio.watches[0]["mask"] = {"wait_seconds": wait, "missing": missing}
    studio.write_config()


def by_name(studio) -> dict[str, list]:
    """{photo file name: its jobs, oldest first}."""
    jobs: dict[str, list] = {}
    for job in sorted(studio.jobs(), key=lambda j: j.id):
        jobs.setdefault(Path(job.source_path).name, []).append(job)
    return jobs


# --- masks are sidecars ----------------------------------------------------------------------------------------


def test_mask_files_never_become_photos(tmp_path):
    # include names JPEGs only: the mask names still reach the intake, as masks.
    studio = Studio(tmp_path, presets=("a",), watch={"include": ["*.jpg"]})
    staging = tmp_path / "staging"
    drop(studio, photo(staging / "IMG_1.jpg", seed=1), paint(staging / "IMG_1.mask.png"),
         photo(staging / "IMG_2.jpg", seed=2), paint(staging / "IMG_2.MASK.TIF", right=(20, 20, 20)))
    daemon = studio.start(role="watch").wait_ready()
    try:
        wait_until(lambda: len(studio.jobs()) == 2, what="one job per photo")
        time.sleep(1.0)  # every chance for a mask to be (wrongly) queued as a photo
    finally:
        assert daemon.stop() == 0
    jobs = by_name(studio)
    assert sorted(jobs) == ["IMG_1.jpg", "IMG_2.jpg"]  # masks never source a job
    [one], [two] = jobs["IMG_1.jpg"], jobs["IMG_2.jpg"]
    assert Path(one.mask_path).name == "IMG_1.mask.png" and one.mask_sha256 == sha(studio.inbox / "IMG_1.mask.png")
    assert Path(two.mask_path).name == "IMG_2.MASK.TIF"  # any case, as include patterns
    # A restart rescans everything: nothing new, nothing queued twice.
    daemon = studio.start(role="watch").wait_ready()
    try:
        wait_until(lambda: sum(w["scans"] for p in status(studio)["processes"] for w in p.get("watches", [])) >= 1,
                   what="the startup scan")
    finally:
        assert daemon.stop() == 0
    assert len(studio.jobs()) == 2 and "a mask waiting" not in daemon.log
    assert sorted(p.name for p in studio.inbox.iterdir()) == ["IMG_1.jpg", "IMG_1.mask.png", "IMG_2.MASK.TIF",
                                                              "IMG_2.jpg"]
    snap = status(studio)
    assert {Path(j["mask"]).name for j in snap["recent"]} == {"IMG_1.mask.png", "IMG_2.MASK.TIF"}
    table = nst("status", "-c", studio.config).stdout
    assert "IMG_1.jpg + IMG_1.mask.png" in table


def test_a_mask_without_a_photo_waits_and_says_so_once(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"reconcile_seconds": 0.5})
    drop(studio, paint(tmp_path / "staging" / "lonely.mask.png"))
    daemon = studio.start(role="watch").wait_ready()
    try:
        def listed() -> dict:
            return {Path(e["path"]).name: e["reason"] for e in status(studio)["skipped"]}

        wait_until(lambda: "lonely.mask.png" in listed(), what="the mask listed as waiting")
        assert "waiting for its photo" in listed()["lonely.mask.png"]
        time.sleep(1.5)  # three reconcile scans: it is said once
        assert daemon.log.count("lonely.mask.png is a mask waiting for its photo") == 1, daemon.log
        assert studio.jobs() == []
        drop(studio, photo(tmp_path / "staging" / "lonely.jpg", seed=4))
        wait_until(lambda: len(studio.jobs()) == 1, what="the photo queued")
        wait_until(lambda: "lonely.mask.png" not in listed(), what="the mask off the list")
    finally:
        assert daemon.stop() == 0
    [job] = studio.jobs()
    assert Path(job.source_path).name == "lonely.jpg" and Path(job.mask_path).name == "lonely.mask.png"


# --- a photo whose preset needs a mask -------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["fail", "run"])
def test_a_photo_without_its_mask_waits_then_fails_or_runs(tmp_path, missing):
    studio = Studio(tmp_path, presets=("a",))
    with_regions(studio, missing=missing, wait=2)
    daemon = studio.start().wait_ready()
    try:
        photo(studio.inbox / "portrait.jpg", seed=5)
        waiting = wait_until(lambda: status(studio)["waiting"], what="the photo waiting for its mask")
        [entry] = waiting
        assert "waits for its mask portrait.mask.png (or portrait.mask.tif, portrait.mask.tiff)" in entry["error"]
        assert f"then it {'fails' if missing == 'fail' else 'runs without one'}" in entry["error"]
        assert entry["next_try"] > time.time() and studio.counts()["pending"] == 1
        if missing == "fail":
            wait_until(lambda: studio.counts()["failed"] == 1, what="the photo failed without a mask")
            wait_until(lambda: (studio.failed / "portrait.jpg.error.txt").exists(), what="the error report")
        else:
            wait_until(lambda: studio.counts()["done"] == 1, what="the photo run without a mask")
            wait_until(lambda: (studio.processed / "portrait.jpg").exists(), what="the photo moved")
    finally:
        assert daemon.stop() == 0
    [job] = studio.jobs()
    if missing == "fail":
        assert "no mask came within 2 s" in job.error and "portrait.mask.png" in job.error, job.error
        assert "mask.missing: run" in job.error  # the other way out, named
        report = (studio.failed / "portrait.jpg.error.txt").read_text()
        assert "portrait.mask.png" in report and studio.outputs() == []
    else:
        assert job.mask_path is None and [p.name for p in studio.outputs()] == ["portrait-a.jpg"]
        assert "no mask came for" in daemon.log and "mask.missing: run" in daemon.log


def test_missing_run_needs_styles_for_photos_without_a_mask(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    with_regions(studio, missing="run", styles=False)
    result = nst("validate", "-c", studio.config)
    assert result.returncode == 78
    assert "watches.0.mask.missing" in result.stderr and "give the preset styles" in result.stderr, result.stderr


# --- the ledger --------------------------------------------------------------------------------------------------


def test_a_v2_ledger_is_upgraded_in_place_keeping_every_job(tmp_path):
    db = tmp_path / "jobs.db"
    old = sqlite3.connect(db, isolation_level=None)
    for step in MIGRATIONS[:2]:  # the schema as nst-watch shipped it before masks
        step(old)
    old.execute("PRAGMA user_version = 2")
    rows = [(i, f"{i:064x}", "a", "h", f"/in/p{i}.jpg", state) for i, state in
            enumerate(["pending", "leased", "done", "failed", "dead"], start=1)]
    for row in rows:
        old.execute("INSERT INTO jobs (id, sha256, preset, preset_hash, source_path, state, max_attempts, "
                    "available_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 3, 0, 0, 0)", row)
        old.execute("INSERT INTO events (job_id, at, state, attempt, message) VALUES (?, 0, ?, 0, 'then')",
                    (row[0], row[5]))
    old.execute("INSERT INTO moves (sha256, watch, source_path, dest_path, created_at, updated_at) "
                "VALUES ('s', 'w', '/in/p4.jpg', '/failed/p4.jpg', 0, 0)")
    old.close()
    with Ledger(db) as ledger:
        assert ledger.pragmas()["user_version"] == SCHEMA_VERSION == 3
        jobs = sorted(ledger.recent(100), key=lambda j: j.id)
        assert [(j.id, j.sha256, j.preset, j.preset_hash, j.source_path, j.state) for j in jobs] == rows
        assert all(j.mask_path is None and j.mask_sha256 is None for j in jobs)
        assert all([e.message for e in ledger.history(j.id)] == ["then"] for j in jobs)  # events kept
        assert [m.dest_path for m in ledger.moves()] == ["/failed/p4.jpg"]
        # Identity: the same photo again is the same job; with a mask it is a new one, once.
        again = ledger.add(sha256=rows[2][1], preset="a", preset_hash="h", source_path="/in/p3.jpg")
        assert not again.created and again.job.id == 3
        masked = ledger.add(sha256=rows[2][1], preset="a", preset_hash="h", source_path="/in/p3.jpg",
                            mask_path="/in/p3.mask.png", mask_sha256="m" * 64)
        assert masked.created and masked.job.mask_path == "/in/p3.mask.png"
        assert not ledger.add(sha256=rows[2][1], preset="a", preset_hash="h", source_path="/in/p3.jpg",
                              mask_path="/in/p3.mask.png", mask_sha256="m" * 64).created
        with pytest.raises(ValueError, match="together"):
            ledger.add(sha256="x", preset="a", preset_hash="h", source_path="/x.jpg", mask_sha256="m" * 64)
    with Ledger(db) as ledger:  # opened again: nothing migrated twice
        assert len(ledger.recent(100)) == 6
