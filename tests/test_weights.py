"""Tests for nst_watch.engine.weights: specs, checkpoint validation, downloads, presets.

Nothing here touches the internet: downloads go to a loopback HTTP server (or a
closed loopback port) and TORCH_HOME points into tmp_path.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torchvision.models import vgg, vgg19

from nst_watch.engine import weights
from nst_watch.errors import WeightsError

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def source_features() -> torch.nn.Sequential:
    """A randomly initialised VGG19 `features` stack: the "truth" checkpoints are made from."""
    gen_state = torch.get_rng_state()
    torch.manual_seed(1234)
    features = vgg.make_layers(vgg.cfgs["E"]).eval()
    torch.set_rng_state(gen_state)
    return features


@pytest.fixture(scope="module")
def source_state(source_features) -> dict[str, torch.Tensor]:
    return {f"features.{k}": v.clone() for k, v in source_features.state_dict().items()}


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory, source_state) -> Iterator[Path]:
    """A torchvision-keyed checkpoint, with a classifier key that must be ignored (80 MB: removed after the module,
    even when a test failed)."""
    path = tmp_path_factory.mktemp("ckpt") / "vgg19-good.pth"
    torch.save({**source_state, "classifier.6.bias": torch.zeros(1000)}, path)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch cache, so nothing from the real ~/.cache/torch leaks in."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


class _Server:
    """A loopback HTTP server that serves `body` for every GET and records paths."""

    def __init__(self, body: bytes):
        self.body = body
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                outer.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/models/{weights.VGG19_FILENAME}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[_Server] = []

    def start(body: bytes) -> _Server:
        servers.append(_Server(body))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _closed_port_url() -> str:
    # Bind then close: the kernel refuses connections to the port right away.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{weights.VGG19_FILENAME}"


def _checkpoints_dir(home: Path) -> Path:
    return home / "hub" / "checkpoints"


# --------------------------------------------------------------------------- path specs


def test_path_spec_loads_exact_tensors_and_same_features(good_ckpt, source_state, source_features):
    loaded = weights.load_weights(str(good_ckpt))
    # Only the 32 conv tensors come back (classifier dropped), bit-identical, float32 CPU.
    assert set(loaded.state_dict) == set(weights.expected_shapes()) == set(source_state)
    for key, tensor in loaded.state_dict.items():
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
        assert torch.equal(tensor, source_state[key]), key
    assert loaded.real and loaded.source == str(good_ckpt)
    assert loaded.preprocess == weights.TORCHVISION_PREPROCESS

    # Loading into torchvision's own VGG19 gives the same activations as the source.
    # (meta + assign=True: torchvision's architecture without initialising 548 MB.)
    with torch.device("meta"):
        model = vgg19(weights=None)
    prefix = "features."
    model.features.load_state_dict({k[len(prefix) :]: v for k, v in loaded.state_dict.items()}, assign=True)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.features.eval()(x), source_features(x))


def test_tilde_is_expanded(good_ckpt, monkeypatch):
    # `~/...` in YAML must mean the user's home, not a directory called "~".
    monkeypatch.setenv("HOME", str(good_ckpt.parent))
    loaded = weights.load_weights(f"~/{good_ckpt.name}")
    assert loaded.source == str(good_ckpt)


def test_truncated_checkpoint_names_file(good_ckpt, tmp_path):
    cut = tmp_path / "cut.pth"
    data = good_ckpt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as info:
        weights.load_weights(str(cut))
    msg = str(info.value)
    assert str(cut) in msg and "truncated" in msg and "Fix:" in msg


def test_not_a_torch_file(tmp_path):
    junk = tmp_path / "notes.pth"
    junk.write_text("definitely not a checkpoint\n")
    with pytest.raises(WeightsError, match="truncated or not a PyTorch weights file"):
        weights.load_weights(str(junk))


def test_missing_keys_are_named(source_state, tmp_path):
    partial = {k: v for k, v in source_state.items() if not k.startswith("features.34.")}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(WeightsError) as info:
        weights.load_weights(str(path))
    msg = str(info.value)
    assert str(path) in msg
    assert "features.34.weight" in msg and "features.34.bias" in msg


def test_wrong_shape_is_named(source_state, tmp_path):
    bad = dict(source_state)
    bad["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(WeightsError, match=r"features\.0\.weight has shape \(64, 3, 5, 5\), expected \(64, 3, 3, 3\)"):
        weights.load_weights(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        weights.load_weights(str(tmp_path / "nope.pth"))


def test_bad_specs_are_explained():
    # Syntax errors are caught before any disk access, each saying what to write.
    with pytest.raises(WeightsError, match="caffe:PATH"):
        weights.parse_spec("caffe:")
    with pytest.raises(WeightsError, match="random:SEED"):
        weights.parse_spec("random:abc")
    with pytest.raises(WeightsError, match="empty"):
        weights.parse_spec("  ")


# --------------------------------------------------------------------------- torchvision spec


def test_hash_mismatch_download_is_rejected_and_not_cached(torch_home, monkeypatch, serve):
    server = serve(b"these bytes are not vgg19" * 1000)
    monkeypatch.setenv("NST_WATCH_VGG19_URL", server.url)
    with pytest.raises(WeightsError, match="corrupt and was rejected"):
        weights.load_weights("torchvision", progress=False)
    # The override URL was really used ...
    assert server.paths == [f"/models/{weights.VGG19_FILENAME}"]
    # ... and neither the final name nor a stray temp file is left in the cache.
    assert not weights.cache_path().exists()
    assert list(_checkpoints_dir(torch_home).iterdir()) == []


def test_good_download_lands_in_cache_and_loads(torch_home, monkeypatch, serve, good_ckpt, source_state):
    # We cannot serve bytes matching dcbb9e9d, so rename the expected file to carry
    # the hash prefix of the bytes we do serve: same code path as the real file.
    body = good_ckpt.read_bytes()
    prefix = hashlib.sha256(body).hexdigest()[:8]
    monkeypatch.setattr(weights, "VGG19_FILENAME", f"vgg19-{prefix}.pth")
    server = serve(body)
    monkeypatch.setenv("NST_WATCH_VGG19_URL", server.url)
    loaded = weights.load_weights("torchvision", progress=False)
    assert weights.cache_path() == _checkpoints_dir(torch_home) / f"vgg19-{prefix}.pth"
    assert weights.cache_path().read_bytes() == body
    assert torch.equal(loaded.state_dict["features.34.bias"], source_state["features.34.bias"])
    # A second call uses the cache: the server sees no second request.
    assert weights.download(progress=False) == weights.cache_path()
    assert len(server.paths) == 1


def test_offline_without_cache_explains_both_fixes(torch_home, monkeypatch):
    monkeypatch.setenv("NST_WATCH_VGG19_URL", _closed_port_url())
    with pytest.raises(WeightsError) as info:
        weights.load_weights("torchvision", progress=False)
    msg = str(info.value)
    assert str(weights.cache_path()) in msg
    assert str(torch_home) in msg  # cache_path() honours TORCH_HOME
    assert "nst-watch weights download" in msg
    assert "engine.weights" in msg and "--weights" in msg
    assert not weights.cache_path().exists()


def test_cached_file_is_used_without_network(torch_home, monkeypatch, good_ckpt, source_state):
    target = weights.cache_path()
    target.parent.mkdir(parents=True)
    shutil.copyfile(good_ckpt, target)

    # Any download attempt would fail loudly (closed port, and the function is booby-trapped).
    def no_network(*args, **kwargs):
        raise AssertionError("download attempted although the file is cached")

    monkeypatch.setenv("NST_WATCH_VGG19_URL", _closed_port_url())
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    loaded = weights.load_weights("torchvision")
    assert loaded.real and str(target) in loaded.source
    assert torch.equal(loaded.state_dict["features.0.weight"], source_state["features.0.weight"])
    assert loaded.preprocess == weights.TORCHVISION_PREPROCESS


def test_corrupt_cached_file_says_delete_and_redownload(torch_home):
    target = weights.cache_path()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError) as info:
        weights.load_weights("torchvision")
    msg = str(info.value)
    assert str(target) in msg and "delete" in msg and "nst-watch weights download" in msg


# --------------------------------------------------------------------------- verify


def test_verify_reports_good_and_bad_files(good_ckpt, tmp_path, torch_home):
    assert weights.verify(good_ckpt).ok
    assert weights.verify(f"caffe:{good_ckpt}").ok

    cut = tmp_path / "cut.pth"
    cut.write_bytes(good_ckpt.read_bytes()[:1000])
    report = weights.verify(str(cut))
    assert not report.ok and str(cut) in report.problems[0]

    # A file under the official name with the wrong bytes fails the sha256 prefix
    # check even though its keys and shapes are fine.
    target = weights.cache_path()
    target.parent.mkdir(parents=True)
    shutil.copyfile(good_ckpt, target)
    report = weights.verify("torchvision")
    assert not report.ok and report.path == target
    assert any("does not start with dcbb9e9d" in p for p in report.problems)


def test_verify_missing_torchvision_file(torch_home):
    report = weights.verify("torchvision")
    assert not report.ok and "nst-watch weights download" in report.problems[0]


# --------------------------------------------------------------------------- preprocessing


def test_caffe_preprocess_known_pixel(good_ckpt):
    loaded = weights.load_weights(f"caffe:{good_ckpt}")
    pre = loaded.preprocess
    assert pre.bgr and pre.scale == 255.0 and pre.std == (1.0, 1.0, 1.0)
    pixel = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)  # RGB
    # Hand computed: BGR = (0, 0.5, 1) * 255 = (0, 127.5, 255) minus BGR mean pixel.
    expected = torch.tensor([0.0 - 103.939, 127.5 - 116.779, 255.0 - 123.68]).view(1, 3, 1, 1)
    torch.testing.assert_close(pre.apply(pixel), expected, rtol=0, atol=1e-4)


def test_torchvision_preprocess_known_pixel_and_gradient():
    pre = weights.TORCHVISION_PREPROCESS
    pixel = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1).requires_grad_(True)
    out = pre.apply(pixel)
    expected = torch.tensor([(1 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0 - 0.406) / 0.225])
    torch.testing.assert_close(out.flatten(), expected, rtol=0, atol=1e-6)
    # The optimiser needs gradients w.r.t. pixels: d out / d x = 1 / std.
    out.sum().backward()
    torch.testing.assert_close(pixel.grad.flatten(), 1 / torch.tensor([0.229, 0.224, 0.225]))


def test_caffe_preprocess_gradient_follows_channel_flip():
    # A wrong flip would send the red pixel's gradient to the blue slot.
    pixel = torch.zeros(1, 3, 1, 1, requires_grad=True)
    weights.CAFFE_PREPROCESS.apply(pixel)[0, 2].sum().backward()  # network's channel 2 = R
    assert pixel.grad.flatten().tolist() == [255.0, 0.0, 0.0]


# --------------------------------------------------------------------------- random


def test_random_is_seeded_warns_and_leaves_global_rng(caplog):
    rng_before = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="nst_watch.engine"):
        a = weights.load_weights("random")
        b = weights.load_weights("random:0")
        c = weights.load_weights("random:1")
    assert torch.equal(rng_before, torch.get_rng_state())

    assert not a.real and a.source == "random (seed 0)"
    assert set(a.state_dict) == set(weights.expected_shapes())
    for key in a.state_dict:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key
    assert not torch.equal(a.state_dict["features.0.weight"], c.state_dict["features.0.weight"])

    # torchvision's VGG init: kaiming normal (fan_out, relu) weights, zero biases.
    w = a.state_dict["features.28.weight"]  # 512 x 512 x 3 x 3: enough samples
    assert abs(w.std().item() - (2 / (512 * 9)) ** 0.5) < 1e-3
    assert not a.state_dict["features.28.bias"].any()

    # One warning per load, each saying the results are not real stylisations.
    warnings = [r for r in caplog.records if r.name == "nst_watch.engine" and r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all("NOT real stylisations" in r.getMessage() for r in warnings)
