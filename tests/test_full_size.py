"""size: full (issue 12): the photo's own pixels out, metadata kept, in the CLI and the daemon."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image, ImageCms

from daemon_kit import Studio, photo, wait_until


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
