"""`nst-watch stylize`, `validate` and `weights` as a user runs them: real processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_painting, synthetic_photo


def nst(*args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


def save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray((array * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    photo = save(synthetic_photo(60, 90, seed=2), tmp_path / "harbour.jpg")
    style = save(synthetic_painting(64, 64), tmp_path / "waves.png")
    return photo, style


def test_stylize_writes_an_image_with_the_requested_long_edge(tmp_path, images):
    photo, style = images
    out = tmp_path / "out"
    result = nst("stylize", photo, "--style", style, "--weights", "random", "--size", 48, "--iterations", 3,
                 "--out-dir", out, "--json")
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)
    written = Path(record["output"])
    assert written.parent == out and written.name == "harbour-custom.jpg"
    with Image.open(written) as im:
        im.load()
        assert im.format == "JPEG" and max(im.size) == 48 and im.size == (48, 32)
    # random weights always say so
    assert "random" in result.stderr and "NOT real" in result.stderr or "meaningless" in result.stderr


def test_stylize_with_preset_from_config_and_explicit_output(tmp_path, images):
    photo, style = images
    config = tmp_path / "config.yaml"
    config.write_text(f"engine:\n  weights: random\npresets:\n  waves:\n    styles: [{style.name}]\n"
                      "    size: 40\n    iterations: 2\n    output:\n      format: png\n")
    target = tmp_path / "final.png"
    result = nst("stylize", photo, "-c", config, "--preset", "waves", "-o", target)
    assert result.returncode == 0, result.stderr
    with Image.open(target) as im:
        assert im.format == "PNG" and max(im.size) == 40
    # never overwrite: a second run gets a new name
    again = nst("stylize", photo, "-c", config, "--preset", "waves", "-o", target)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "final (1).png").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchvision_weights_offline_explain_the_fix(tmp_path, images):
    photo, style = images
    env = {"TORCH_HOME": str(tmp_path / "torch"),
           "NST_WATCH_VGG19_URL": f"http://127.0.0.1:{_closed_port()}/vgg19-dcbb9e9d.pth"}
    result = nst("stylize", photo, "--style", style, "--weights", "torchvision", "--size", 32,
                 "--out-dir", tmp_path / "out", env=env)
    assert result.returncode == 1
    assert "nst-watch weights download" in result.stderr
    assert "engine.weights" in result.stderr
    assert str(tmp_path / "torch") in result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_misspelt_preset_key_exits_78_naming_the_key(tmp_path, images):
    photo, style = images
    config = tmp_path / "config.yaml"
    config.write_text(f"presets:\n  waves:\n    styles: [{style.name}]\n    stlye_weight: 5\n")
    result = nst("stylize", photo, "-c", config, "--preset", "waves")
    assert result.returncode == 78
    assert "presets.waves.stlye_weight" in result.stderr and "style_weight" in result.stderr
    assert "line 4" in result.stderr
    assert nst("validate", "-c", config).returncode == 78


def test_missing_style_image_exits_78_naming_the_file(tmp_path, images):
    photo, _ = images
    config = tmp_path / "config.yaml"
    config.write_text("presets:\n  waves:\n    styles: [nowhere.png]\n")
    result = nst("validate", "-c", config)
    assert result.returncode == 78
    assert "nowhere.png" in result.stderr and "presets.waves.styles.0" in result.stderr


def test_usage_errors_exit_2_and_help_works():
    assert nst("stylize", "x.jpg").returncode == 2  # neither --preset nor --style
    for args in ([], ["stylize"], ["weights"], ["weights", "download"], ["validate"]):
        result = nst(*args, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout
    version = nst("--version")
    assert version.returncode == 0 and "nst-watch" in version.stdout


def test_a_corrupt_photo_is_reported_and_the_others_still_processed(tmp_path, images):
    photo, style = images
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    result = nst("stylize", broken, photo, "--style", style, "--weights", "random", "--size", 32,
                 "--iterations", 1, "--out-dir", tmp_path / "out", "--json")
    assert result.returncode == 1
    records = {Path(r["content"]).name: r for r in json.loads(result.stdout)}
    assert records["broken.jpg"]["error"] and "broken.jpg" in records["broken.jpg"]["error"]
    assert Path(records["harbour.jpg"]["output"]).exists()
    assert broken.read_bytes() == b"not a jpeg at all"  # never touched


def test_weights_where_and_verify_torchvision(tmp_path):
    env = {"TORCH_HOME": str(tmp_path)}
    where = nst("weights", "where", "torchvision", env=env)
    assert where.returncode == 0 and where.stdout.strip().endswith("vgg19-dcbb9e9d.pth")
    assert where.stdout.strip().startswith(str(tmp_path))
    verify = nst("weights", "verify", "torchvision", "--json", env=env)
    assert verify.returncode == 1 and json.loads(verify.stdout)["ok"] is False


def test_sixteen_bit_tiff_in_gives_sixteen_bit_tiff_out(tmp_path, images):
    import tifffile

    _, style = images
    photo = tmp_path / "deep.tif"
    pixels = (np.linspace(0, 65535, 48 * 32 * 3) % 65536).astype(np.uint16).reshape(32, 48, 3)
    tifffile.imwrite(photo, pixels, photometric="rgb")
    config = tmp_path / "config.yaml"
    config.write_text(f"engine:\n  weights: random\npresets:\n  deep:\n    styles: [{style.name}]\n"
                      "    size: 48\n    iterations: 1\n    output:\n      format: tiff\n      bit_depth: 16\n"
                      "      sidecar: true\n")
    result = nst("stylize", photo, "-c", config, "--preset", "deep", "--out-dir", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)
    written = tifffile.imread(record["output"])
    assert written.dtype == np.uint16 and written.shape == (32, 48, 3)
    sidecar = json.loads(Path(record["output"] + ".json").read_text())
    assert sidecar["preset"] == "deep" and len(sidecar["content_sha256"]) == 64
