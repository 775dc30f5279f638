"""size: full (issue 12): the photo's own pixels out, metadata kept, in the CLI and the daemon."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
from PIL import Image, ImageCms

from daemon_kit import Studio, photo, resident_bytes, wait_until
from nst_watch.engine.memory import WORKSPACE_BYTES


def camera_photo(path, size=(96, 64)):
    rng = np.random.default_rng(1)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "QA-Cam", "Model 7"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path, exif=exif,
                                                                                      icc_profile=icc)
    return path


def test_stylize_size_full_keeps_the_photos_pixels_exif_and_icc(tmp_path):
    camera_photo(tmp_path / "shot.jpg", (112, 80))
    Image.new("RGB", (64, 64), (30, 90, 200)).save(tmp_path / "style.png")
    done = subprocess.run([sys.executable, "-m", "nst_watch", "stylize", "shot.jpg", "--style", "style.png",
                           "--size", "full", "--weights", "random", "--iterations", "2", "-o", "out.jpg"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (112, 80)
        assert out.getexif()[0x010F] == "QA-Cam" and out.info.get("icc_profile")
    bad = subprocess.run([sys.executable, "-m", "nst_watch", "stylize", "shot.jpg", "--style", "style.png",
                          "--size", "fullest"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--size" in bad.stderr and "in pixels, or full" in bad.stderr


def test_daemon_size_full_gives_each_photo_its_own_size(tmp_path):
    studio = Studio(tmp_path, presets=("a",), preset_settings={"size": "full"})
    daemon = studio.start().wait_ready()
    try:
        photo(studio.inbox / "wide.jpg", seed=1, size=(80, 48))
        photo(studio.inbox / "small.jpg", seed=2, size=(48, 40))
        wait_until(lambda: len(studio.outputs()) == 2, what="two outputs")
    finally:
        assert daemon.stop() == 0
    sizes = {p.name: Image.open(p).size for p in studio.outputs()}
    assert sizes == {"wide-a.jpg": (80, 48), "small-a.jpg": (48, 40)}


def test_daemon_tiles_a_photo_over_max_memory_and_status_shows_the_tiles(tmp_path):
    """A size: full photo too big for engine.max_memory runs in tiles; `status` shows the tile passes."""
    # Shallow layers keep the halo small, so a 320x240 photo splits into a few tiles; its untiled
    # estimate is ~300 MB over the resident engine and its workspace, and the budget leaves ~100 MB.
    budget = resident_bytes() + WORKSPACE_BYTES + 100 * 10**6
    studio = Studio(tmp_path, presets=("a",), preset_settings={
        "size": "full", "iterations": 20, "early_stop": None, "pyramid": None,
        "content_layers": ["relu3_1"], "style_layers": ["relu1_1", "relu2_1", "relu3_1"]})
    studio.write_config(engine={"weights": "random", "device": "cpu", "max_memory": budget})
    daemon = studio.start().wait_ready()
    seen = []

    def tiles_in_status():
        snap = json.loads(subprocess.run([sys.executable, "-m", "nst_watch", "status", "-c", str(studio.config),
                                          "--json"], capture_output=True, text=True, timeout=60).stdout)
        workers = [p["worker"] for p in snap["processes"] if p.get("worker")]
        seen.extend((w["tile"], w["tiles"]) for w in workers if w.get("tiles"))
        return seen or studio.outputs()

    try:
        photo(studio.inbox / "wide.jpg", seed=3, size=(320, 240))
        wait_until(tiles_in_status, timeout=120, interval=0.2, what="tile progress in status")
        assert seen, "the photo finished without status ever showing a tile pass"
        tile, tiles = seen[0]
        assert tiles >= 4 and 0 < tile <= tiles  # two passes over at least two tiles
        plain = subprocess.run([sys.executable, "-m", "nst_watch", "status", "-c", str(studio.config)],
                               capture_output=True, text=True, timeout=60).stdout
        if not studio.outputs():  # still running when the table was drawn: it shows the tiles too
            assert re.search(r"tile \d+/\d+", plain), plain
        wait_until(lambda: len(studio.outputs()) == 1, timeout=180, what="the tiled output")
    finally:
        assert daemon.stop() == 0
    with Image.open(studio.outputs()[0]) as out:
        assert out.size == (320, 240)
