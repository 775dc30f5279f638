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
    # The README names the list by the words `status` shows and by the key `status --json` gives it.
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert 'A mask without a photo waits for one, listed under "not taken" in `status` (`"skipped"` in ' \
           '`status --json`)' in readme


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
    # Named by its key path and line, as every other mistake is (not "(top level)").
    line = studio.config.read_text().splitlines().index("    missing: run") + 1
    assert f"watches.0.mask.missing (line {line}): run (watch 'inbox')" in result.stderr, result.stderr
    assert "top level" not in result.stderr


@pytest.mark.parametrize("styles", [True, False])
def test_a_photo_failed_without_its_mask_is_told_only_what_would_work(tmp_path, styles):
    from types import SimpleNamespace

    from nst_watch.config import load_config
    from nst_watch.service.worker import no_mask_reason

    studio = Studio(tmp_path, presets=("a",))
    with_regions(studio, styles=styles)
    config = load_config(studio.config)
    job = SimpleNamespace(source_path=str(studio.inbox / "shot.jpg"), preset="a")
    reason = no_mask_reason(job, config.presets["a"], config.watches[0])
    assert "put its mask beside it as shot.mask.png" in reason, reason
    if styles:
        assert "or set mask.missing: run in watch 'inbox'" in reason, reason
    else:  # mask.missing: run alone would be refused by validation: the preset needs styles first
        assert "or set mask.missing: run" not in reason, reason
        assert "give preset 'a' styles of its own" in reason and "then set mask.missing: run" in reason, reason
        studio.watches[0]["mask"]["missing"] = "run"
        studio.write_config()
        assert nst("validate", "-c", studio.config).returncode == 78


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
        assert ledger.pragmas()["user_version"] == SCHEMA_VERSION == len(MIGRATIONS)
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


# --- masks that cannot serve, masks that change ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["aspect", "colour"])
def test_a_mask_that_cannot_serve_fails_its_photo_and_loses_nothing(tmp_path, kind):
    studio = Studio(tmp_path, presets=("a",))
    staging = tmp_path / "staging"
    if kind == "aspect":  # a square mask for a 48x40 photo
        mask = paint(staging / "shot.mask.png", size=(40, 40))
        expected = "the mask is 40x40 px but the photo is 48x40"
    else:  # red, which no region of the preset names
        with_regions(studio)
        mask = paint(staging / "shot.mask.png", left=RED)
        expected = "#ff0000"
    drop(studio, photo(staging / "shot.jpg", seed=6), mask)
    daemon = studio.start().wait_ready()
    try:
        wait_until(lambda: studio.counts()["failed"] == 1, what="the job failed")
        wait_until(lambda: (studio.failed / "shot.mask.png").exists(), what="photo and mask in failed/")
    finally:
        assert daemon.stop() == 0
    [job] = studio.jobs()
    assert "shot.mask.png" in job.error and expected in job.error, job.error
    assert sorted(p.name for p in studio.failed.iterdir()) == ["shot.jpg", "shot.jpg.error.txt", "shot.mask.png"]
    assert list(studio.inbox.iterdir()) == [] and studio.outputs() == []
    assert sha(studio.failed / "shot.mask.png") == job.mask_sha256  # the very file, whole
    report = (studio.failed / "shot.jpg.error.txt").read_text()
    assert "with the mask shot.mask.png" in report and expected in report
    assert "move this photo (and its mask, beside it) back" in report
    with studio.ledger() as ledger:
        [job] = ledger.recent(1)
        assert Path(job.mask_path) == studio.failed / "shot.mask.png"  # the ledger follows the mask


def test_a_mask_replaced_mid_run_makes_a_new_job_and_each_shows_its_mask(tmp_path):
    from test_daemon import re_step
    from test_web import request, web_view

    studio = Studio(tmp_path, presets=("a",), service={"batch": 1},
                    preset_settings={"iterations": 300, "pyramid": None, "early_stop": None})
    staging = tmp_path / "staging"
    drop(studio, photo(staging / "p.jpg", seed=7), paint(staging / "p.mask.png"))
    with web_view(studio) as (daemon, port):
        daemon.wait_ready()
        wait_until(lambda: re_step(studio) >= 2, interval=0.3, what="the first job optimising")
        first = studio.jobs()[0]
        os.rename(paint(staging / "p.mask.png", left=BLACK, right=WHITE), studio.inbox / "p.mask.png")
        wait_until(lambda: len(studio.jobs()) == 2, what="a new job for the new mask")
        assert {j.id: j.state for j in studio.jobs()}[first.id] in ("leased", "done")  # the first one ran on
        wait_until(lambda: studio.counts()["done"] == 2, timeout=120, what="both jobs done")
        wait_until(lambda: (studio.processed / "p.mask.png").exists(), what="photo and mask moved")
        old, new = sorted(studio.jobs(), key=lambda j: j.id)
        for job in (old, new):
            code, headers, body = request(port, f"/thumbs/{job.id}/mask")
            assert code == 200 and headers["Content-Type"] == "image/jpeg"
            with Image.open(io.BytesIO(body)) as image:
                left, right = np.asarray(image.convert("L"), np.float32)[:, [2, -3]].mean(axis=0)
            assert (left > 200 and right < 50) if job.id == first.id else (left < 50 and right > 200)
    assert old.id == first.id and old.mask_sha256 == first.mask_sha256 != new.mask_sha256
    assert new.mask_sha256 == sha(studio.processed / "p.mask.png")  # the mask that moved is the one in use
    assert sorted(p.name for p in studio.outputs()) == ["p-a (1).jpg", "p-a.jpg"]
    assert sorted(p.name for p in studio.processed.iterdir()) == ["p.jpg", "p.mask.png"]
    snap = status(studio)
    assert {(j["id"], j["mask_sha256"]) for j in snap["recent"]} == {(old.id, old.mask_sha256),
                                                                     (new.id, new.mask_sha256)}
    masks = {j["id"]: Path(j["mask"]) for j in snap["recent"]}
    # The mask in use went with the photo; the replaced one is recorded where it was when it was used.
    assert masks == {new.id: studio.processed / "p.mask.png", old.id: studio.inbox / "p.mask.png"}


def test_a_mask_that_comes_while_its_photo_waits_is_used(tmp_path):
    studio = Studio(tmp_path, presets=("a",), preset_settings={"output": {"format": "jpeg", "sidecar": True}})
    with_regions(studio, wait=60)
    daemon = studio.start().wait_ready()
    try:
        photo(studio.inbox / "later.jpg", seed=8)
        wait_until(lambda: status(studio)["waiting"], what="the photo waiting for its mask")
        drop(studio, paint(tmp_path / "staging" / "later.mask.png"))
        wait_until(lambda: studio.counts()["done"] == 2, what="the waiting job put aside, the masked one done")
        wait_until(lambda: (studio.processed / "later.mask.png").exists(), what="photo and mask moved")
    finally:
        assert daemon.stop() == 0
    waited, used = sorted(studio.jobs(), key=lambda j: j.id)
    assert waited.mask_sha256 is None and waited.output_path is None
    assert waited.error.startswith(f"superseded by job {used.id}") and waited.put_aside
    assert used.mask_sha256 == sha(studio.processed / "later.mask.png") and used.attempts == 1
    [output] = [p for p in studio.outputs() if p.suffix == ".jpg"]
    sidecar = json.loads(output.with_name(output.name + ".json").read_text())
    assert sidecar["mask"]["sha256"] == used.mask_sha256
    # One output: one job done, the one put aside counted apart (status, its JSON and the web view's).
    snap = status(studio)
    assert snap["counts"]["done"] == 1 and snap["counts"]["superseded"] == 1, snap["counts"]
    assert {j["id"]: j["state"] for j in snap["recent"]} == {waited.id: "superseded", used.id: "done"}
    table = nst("status", "-c", studio.config).stdout
    assert "superseded" in table, table


def test_submit_takes_a_mask_and_checks_it_first(tmp_path):
    studio = Studio(tmp_path, presets=("a", "b"))
    with_regions(studio)  # a needs a mask, b takes one
    staging = tmp_path / "lightroom"
    shot = photo(staging / "export.jpg", seed=9)
    square = paint(staging / "square.png", size=(40, 40))
    good = paint(staging / "good.png")
    refused = nst("submit", "-c", studio.config, shot, "-p", "a", "--mask", square, "--json")
    assert refused.returncode == 1 and "square.png" in refused.stderr and "aspect" in refused.stderr
    missing = nst("submit", "-c", studio.config, shot, "-p", "a")
    assert missing.returncode == 1 and "give --mask FILE" in missing.stderr
    twice = nst("submit", "-c", studio.config, shot, shot, "-p", "b", "--mask", good)
    assert twice.returncode == 2 and "one --mask per FILE" in twice.stderr
    assert studio.jobs() == []  # nothing queued by a refusal
    daemon = studio.start().wait_ready()
    try:
        queued = nst("submit", "-c", studio.config, shot, "-p", "a", "-p", "b", "--mask", good,
                     "--out-dir", tmp_path / "finished", "--json")
        assert queued.returncode == 0, queued.stderr
        records = json.loads(queued.stdout)
        assert {r["preset"] for r in records} == {"a", "b"} and {r["mask"] for r in records} == {str(good)}
        wait_until(lambda: studio.counts()["done"] == 2, what="both submitted jobs done")
    finally:
        assert daemon.stop() == 0
    assert sorted(p.name for p in (tmp_path / "finished").iterdir()) == ["export-a.jpg", "export-b.jpg"]
    assert shot.exists() and good.exists()  # submitted files are never moved
    assert {j.mask_sha256 for j in studio.jobs()} == {sha(good)}


@pytest.mark.xdist_group("ray")  # one Ray runtime at a time (tests/test_ray.py)
@pytest.mark.timeout(600)
def test_a_masked_photo_on_the_ray_cluster_is_the_picture_a_local_worker_makes(tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray tests need Ray: pip install -e '.[test]' installs it")
    import shutil
    import tempfile

    png = {"output": {"format": "png"}}
    pictures = []
    sessions = Path(tempfile.mkdtemp(prefix="nst-ray-"))  # short: Ray's socket paths must stay under 107 bytes
    # ray.init sets RAY_AUTH_MODE=token (and more) in this process's environment and leaves it after
    # shutdown: the Ray tests run next on this worker (xdist group "ray") would inherit it.
    saved = dict(os.environ)
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING",
             _temp_dir=str(sessions))
    try:
        address = ray.get_runtime_context().gcs_address
        for name, args in (("local", ()), ("ray", ("--ray", address))):
            studio = Studio(tmp_path / name, presets=("a",), preset_settings=png)
            staging = tmp_path / name / "staging"
            # 96x80 photo and mask for 32 px outputs: the mask travels at the output size.
            drop(studio, photo(staging / "big.jpg", seed=4, size=(96, 80)),
                 paint(staging / "big.mask.png", size=(96, 80)))
            daemon = studio.start(*args)
            try:
                wait_until(lambda: studio.counts().get("done") == 1, 180, what=f"the {name} job")
            finally:
                assert daemon.stop(120) == 0
            [job] = studio.jobs()
            assert job.mask_sha256 is not None
            [output] = studio.outputs()
            with Image.open(output) as image:
                pictures.append(np.asarray(image))
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(sessions, ignore_errors=True)
    assert pictures[0].shape == (27, 32, 3)
    assert np.array_equal(pictures[0], pictures[1])


MASKED_RESULT = """() => {
  const images = [...document.querySelectorAll(".result img")];
  return images.length === 3 && images.every((img) => img.complete && img.naturalWidth > 0)
    && images.map((img) => img.className).join(" ");
}"""


def test_the_web_page_shows_the_mask_between_before_and_after(tmp_path):
    from test_web import _browser, web_view

    chromium, sync_playwright = _browser()
    studio = Studio(tmp_path, presets=("a",))
    staging = tmp_path / "staging"
    drop(studio, photo(staging / "duo.jpg", seed=3), paint(staging / "duo.mask.png"))
    with web_view(studio) as (daemon, port):
        daemon.wait_ready()
        wait_until(lambda: studio.counts()["done"] == 1, what="the masked photo done")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 900, "height": 600})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}/")
            order = page.wait_for_function(MASKED_RESULT, timeout=30_000).json_value()
            captions = page.locator(".result figcaption").all_inner_texts()
            page.screenshot(path=str(tmp_path / "masked-result.png"), full_page=True)
            browser.close()
    assert order == "before mask after" and [c.lower() for c in captions] == ["before", "mask", "after"]
    assert errors == [], errors


# --- one photo, several copies, each with its own mask ---------------------------------------------------------


def copies_with_masks(tmp_path, seed: int, **masks) -> tuple[Studio, dict[str, str]]:
    """Copies of one photo dropped as {name}.jpg, each with its mask {name}.mask.png painted (left, right);
    preset a names regions. Returns the studio and {name: the SHA-256 of its mask}."""
    studio = Studio(tmp_path, presets=("a",))
    with_regions(studio)
    staging = tmp_path / "staging"
    original = photo(staging / "original.jpg", seed=seed).read_bytes()
    shas, files = {}, []
    for name, (left, right) in masks.items():
        (staging / f"{name}.jpg").write_bytes(original)
        mask = paint(staging / f"{name}.mask.png", left=left, right=right)
        shas[name] = sha(mask)
        files += [staging / f"{name}.jpg", mask]
    drop(studio, *files)
    return studio, shas


def test_copies_of_one_photo_with_their_own_masks_are_their_own_jobs(tmp_path):
    studio, shas = copies_with_masks(tmp_path, seed=11, top=(WHITE, BLACK), left=(BLACK, WHITE))
    daemon = studio.start().wait_ready()
    try:
        wait_until(lambda: studio.counts()["done"] == 2, what="both pairs done")
        wait_until(lambda: len(list(studio.processed.glob("*"))) == 4 if studio.processed.exists() else False,
                   what="photos and masks moved")
    finally:
        assert daemon.stop() == 0
    assert "put aside" not in daemon.log, daemon.log
    assert sorted(p.name for p in studio.outputs()) == ["left-a.jpg", "top-a.jpg"]
    assert sorted(p.name for p in studio.processed.iterdir()) == ["left.jpg", "left.mask.png", "top.jpg",
                                                                  "top.mask.png"]
    for name in ("top", "left"):  # each mask went with its own photo, under its own name
        assert sha(studio.processed / f"{name}.mask.png") == shas[name]
    jobs = {Path(j.source_path).name: j for j in studio.jobs()}
    assert sorted(jobs) == ["left.jpg", "top.jpg"]
    for name, job in jobs.items():
        stem = Path(name).stem
        assert not job.put_aside and job.mask_sha256 == shas[stem]
        assert Path(job.mask_path) == studio.processed / f"{stem}.mask.png"
        assert Path(job.output_path).name == f"{stem}-a.jpg"
    table = nst("status", "-c", studio.config).stdout
    assert "top.jpg + top.mask.png" in table and "left.jpg + left.mask.png" in table, table


def test_a_copy_with_a_bad_mask_fails_only_that_photo(tmp_path):
    # palace2's mask is painted red, a colour no region names.
    studio, shas = copies_with_masks(tmp_path, seed=12, palace=(WHITE, BLACK), palace2=(RED, BLACK))
    daemon = studio.start().wait_ready()
    try:
        wait_until(lambda: (studio.failed / "palace2.mask.png").exists(), what="the bad pair in failed/")
        wait_until(lambda: (studio.processed / "palace.mask.png").exists(), what="the good pair in processed/")
        assert sorted(p.name for p in studio.failed.iterdir()) == ["palace2.jpg", "palace2.jpg.error.txt",
                                                                   "palace2.mask.png"]
        assert sorted(p.name for p in studio.processed.iterdir()) == ["palace.jpg", "palace.mask.png"]
        assert sha(studio.processed / "palace.mask.png") == shas["palace"]
        assert sha(studio.failed / "palace2.mask.png") == shas["palace2"]
        report = (studio.failed / "palace2.jpg.error.txt").read_text()
        assert "#ff0000" in report and "palace.mask.png" not in report.replace("palace2.mask.png", ""), report
        assert [p.name for p in studio.outputs()] == ["palace-a.jpg"]
        # The good pair dropped again: already done; both go to processed/, side by side.
        again = tmp_path / "again"
        drop(studio, photo(again / "palace.jpg", seed=12), paint(again / "palace.mask.png"))
        wait_until(lambda: not any(studio.inbox.iterdir()), what="the pair dropped again moved")
    finally:
        assert daemon.stop() == 0
    assert sorted(p.name for p in studio.processed.iterdir()) == ["palace (1).jpg", "palace (1).mask.png",
                                                                  "palace.jpg", "palace.mask.png"]
    jobs = {Path(j.source_path).name: j for j in studio.jobs()}
    assert jobs["palace.jpg"].state == "done" and jobs["palace2.jpg"].state == "failed"
    assert "palace2.mask.png" in jobs["palace2.jpg"].error
