"""The daemon against the failure kinds found in the field: every photo gets through or gets a clear reason.

Real daemon processes on a real ledger and the real observer; random weights, tiny photos.
"""

from __future__ import annotations

import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import synthetic_painting
from daemon_kit import Studio, photo, wait_until


def all_done(studio: Studio, n: int):
    return lambda: studio.counts().get("done", 0) == n


def test_mixed_pixel_sizes_of_one_output_size_share_a_batch(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"batch": 4})
    daemon = studio.start().wait_ready()
    try:
        photo(studio.inbox / "big.jpg", seed=1, size=(80, 60))
        photo(studio.inbox / "small.jpg", seed=2, size=(40, 30))  # same 4:3 shape, half the pixels
        wait_until(all_done(studio, 2), what="both photos done")
    finally:
        assert daemon.stop() == 0
    assert "stack expects" not in daemon.log
    assert sorted(p.name for p in studio.outputs()) == ["big-a.jpg", "small-a.jpg"]
    assert [j.attempts for j in studio.jobs()] == [1, 1]
    assert sorted(p.name for p in studio.processed.iterdir()) == ["big.jpg", "small.jpg"]


def test_a_thin_photo_fails_alone_with_the_size_it_needs(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"batch": 4})
    thin = tmp_path / "thin.png"
    Image.fromarray(np.full((4, 600, 3), 128, np.uint8)).save(thin)
    daemon = studio.start().wait_ready()
    try:
        shutil.copy(thin, studio.inbox / "panorama.png")
        photo(studio.inbox / "good.jpg", seed=3)
        wait_until(lambda: studio.counts().get("done", 0) == 1 and studio.counts().get("failed", 0) == 1,
                   what="one done, one failed")
    finally:
        assert daemon.stop() == 0
    [failed] = [j for j in studio.jobs() if j.state == "failed"]
    assert failed.attempts == 1 and "600x4" in failed.error and "size 2400" in failed.error
    assert (studio.failed / "panorama.png").exists() and (studio.failed / "panorama.png.error.txt").exists()
    assert [p.name for p in studio.outputs()] == ["good-a.jpg"]


def test_a_style_broken_while_running_holds_its_jobs_and_the_photos_stay(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"reconcile_seconds": 1})
    style = Path(studio.presets["a"]["styles"][0])
    good_style = style.read_bytes()
    daemon = studio.start().wait_ready()
    try:
        # The style image becomes a thin strip after the config was checked.
        Image.fromarray((synthetic_painting(2, 300) * 255).astype(np.uint8)).save(style)
        photo(studio.inbox / "waiting.jpg", seed=4)
        daemon.wait_log("wait, their photos untouched")
        [job] = studio.jobs()
        assert job.state == "pending" and job.attempts == 0 and "style image" in job.error and "300x2" in job.error
        assert (studio.inbox / "waiting.jpg").exists()  # not blamed, not moved to failed/
        assert not studio.failed.exists() or not any(studio.failed.iterdir())
        style.write_bytes(good_style)  # fixed: the job runs by itself
        wait_until(all_done(studio, 1), what="job done once the style is fixed")
    finally:
        assert daemon.stop() == 0
    assert [p.name for p in studio.outputs()] == ["waiting-a.jpg"]
    assert studio.jobs()[0].attempts == 1


def test_a_bug_is_not_retried_but_running_out_of_memory_is(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"max_attempts": 3})
    photo(studio.inbox / "one.jpg", seed=5)
    daemon = studio.start(env={"NST_WATCH_FAULT": "bug:optimising"}).wait_ready()
    try:
        wait_until(lambda: studio.counts().get("failed", 0) == 1, what="the job failed")
    finally:
        assert daemon.stop() == 0
    [job] = studio.jobs()
    assert job.attempts == 1 and "internal error" in job.error and "injected bug" in job.error

    other = Studio(tmp_path / "oom", presets=("a",), service={"max_attempts": 2})
    photo(other.inbox / "two.jpg", seed=6)
    daemon = other.start(env={"NST_WATCH_FAULT": "oom:optimising"}).wait_ready()
    try:
        # Retried after the ledger's backoff (10 s), then dead: out of memory twice.
        wait_until(lambda: other.counts().get("dead", 0) == 1, timeout=90, what="dead after two attempts")
    finally:
        assert daemon.stop() == 0
    [job] = other.jobs()
    assert job.attempts == 2 and "MemoryError" in job.error


def test_soak_random_sigkills_lose_and_duplicate_nothing(tmp_path):
    """Kill the daemon at random moments, and once while it publishes; every photo ends with one output per preset."""
    rng = random.Random(11)
    studio = Studio(tmp_path, presets=("a", "b"), service={"batch": 2, "lease_seconds": 30})
    names = [f"p{i}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        photo(studio.inbox / name, seed=20 + i)
    kills = 0
    # The first run dies exactly between writing an output's temp file and linking it.
    crashed = studio.start(env={"NST_WATCH_FAULT": "writing"})
    assert crashed.proc.wait(120) == -signal.SIGKILL
    crashed.kill()
    kills += 1
    for _ in range(4):  # then at random moments of a busy daemon
        daemon = studio.start()
        time.sleep(rng.uniform(1.0, 4.0))  # a random moment is the point here
        daemon.signal(signal.SIGKILL)
        daemon.kill()
        kills += 1
    daemon = studio.start().wait_ready()
    try:
        wait_until(all_done(studio, 12), timeout=240, what="12 done jobs")
        wait_until(lambda: sorted(p.name for p in studio.processed.iterdir()) == names, what="originals moved")
    finally:
        assert daemon.stop() == 0
    assert kills == 5
    expected = sorted(f"{Path(n).stem}-{p}.jpg" for n in names for p in ("a", "b"))
    assert sorted(p.name for p in studio.outputs()) == expected
    assert studio.leftovers() == []  # no .nst-tmp-* or .nst-stage-* anywhere in the output folder
    assert not list(studio.inbox.glob("*.jpg"))  # every original accounted for: all in processed/
    assert len(studio.jobs()) == 12


def test_a_tiny_style_image_is_warned_about_once_and_still_used(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"batch": 1}, preset_settings={"size": 48})
    style = Path(studio.presets["a"]["styles"][0])
    Image.new("RGB", (8, 8), (180, 40, 30)).save(style)  # enlarged 6x at size 48
    daemon = studio.start().wait_ready()
    try:
        photo(studio.inbox / "one.jpg", seed=1)
        wait_until(all_done(studio, 1), what="the first photo done")
        daemon.signal(signal.SIGHUP)  # validated again: not said again
        daemon.wait_log("config reloaded")
        photo(studio.inbox / "two.jpg", seed=2)
        wait_until(all_done(studio, 2), what="the second photo done")
    finally:
        assert daemon.stop() == 0
    assert daemon.log.count(f"preset 'a': style image {style} is 8x8 px") == 1
    assert "enlarged 6x, to 48x48" in daemon.log and "It stops being blurry at 24 px" in daemon.log
