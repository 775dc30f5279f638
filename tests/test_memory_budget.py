"""engine.max_memory that no photo can meet is a configuration error, said once; a photo too big for a
workable budget still fails alone.

Real processes (daemon, stylize, validate), random weights, tiny photos; the
budgets are worked out from what the engine itself reports, not assumed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_painting, synthetic_photo
from daemon_kit import Studio, photo, resident_bytes, wait_until
from nst_watch.config import Preset
from nst_watch.engine.memory import WORKSPACE_BYTES, least_tiled_bytes
from nst_watch.errors import PresetError

CASES = Path(__file__).resolve().parent / "field_cases"
SHALLOW = {"content_layers": ["relu3_1"], "style_layers": ["relu1_1", "relu2_1", "relu3_1"]}
DEEP = ["relu4_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]  # the default preset's layers
NEED = re.compile(r"raise engine\.max_memory \(--max-memory\) to ([\d.]+GB) or more")


def nst(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray((array * 255).round().astype(np.uint8)).save(path)
    return path


def test_the_field_case_refuses_to_start_and_leaves_every_photo_in_the_inbox(tmp_path):
    subprocess.run([sys.executable, str(CASES / "max-memory-below-resident.py"), str(tmp_path)], check=True,
                   capture_output=True)
    for name in ("small.jpg", "big.png"):
        (tmp_path / "incoming" / name).rename(tmp_path / "inbox" / name)
    for role in ("run", "work"):
        result = nst(role, "-c", "config.yaml", cwd=tmp_path)
        assert result.returncode == 78, result.stderr
        [line] = [line for line in result.stderr.splitlines() if "error:" in line]  # said once
        assert "config.yaml: engine.max_memory 1.10 GB is less than the" in line
        assert "that preset 'p1' needs before any photo" in line and "torch and VGG19" in line
        assert "relu5_1" in line and NEED.search(line)
        assert "ready" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "inbox").iterdir()) == ["big.png", "small.jpg"]
    assert not (tmp_path / "failed").exists() and not (tmp_path / "outbox").exists()
    assert not (tmp_path / "processed").exists()
    status = json.loads(nst("status", "-c", "config.yaml", "--json", cwd=tmp_path).stdout)
    assert not status["running"] and sum(status["counts"].values()) == 0  # no job was ever taken


def test_stylize_says_a_hopeless_budget_once_and_a_workable_one_fails_only_the_photo_too_big(tmp_path):
    save(synthetic_photo(64, 96), tmp_path / "small.jpg")
    save(synthetic_photo(1000, 1600, seed=2), tmp_path / "huge.png")  # 1.6 MP at size: full
    save(synthetic_painting(64, 64), tmp_path / "style.png")

    def stylize(budget):
        return nst("stylize", "small.jpg", "huge.png", "--style", "style.png", "--weights", "random",
                   "--size", "full", "--no-pyramid", "--iterations", 2, "--max-memory", budget, "--out-dir", "out",
                   "--json", cwd=tmp_path)

    hopeless = stylize("50MB")
    assert hopeless.returncode == 78, hopeless.stderr
    assert hopeless.stderr.count("max_memory") == 2  # one message: the budget given, and the fix
    assert "engine.max_memory 0.05 GB is less than the" in hopeless.stderr and "'custom'" in hopeless.stderr
    assert "stylised" not in hopeless.stderr and not (tmp_path / "out").exists()

    workable = stylize(NEED.search(hopeless.stderr).group(1))
    assert workable.returncode == 1, workable.stderr
    records = {Path(r["content"]).name: r for r in json.loads(workable.stdout)}
    assert records["small.jpg"]["error"] is None and (tmp_path / records["small.jpg"]["output"]).exists()
    error = records["huge.png"]["error"]
    assert "1600x1000 px does not fit engine.max_memory" in error and "even in tiles" in error
    assert "stylised small.jpg" in workable.stderr
    assert "stylised huge.png" not in workable.stderr  # item 5: never after its own error


@pytest.mark.parametrize("value", ["0", "1", "12", "0.5KB", "-1GB"])
def test_a_budget_that_is_no_size_is_a_usage_error_naming_the_flag(tmp_path, value):
    save(synthetic_photo(40, 60), tmp_path / "photo.jpg")
    save(synthetic_painting(48, 48), tmp_path / "style.png")
    result = nst("stylize", "photo.jpg", "--style", "style.png", "--weights", "random", "--max-memory", value,
                 cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--max-memory" in result.stderr and "Traceback" not in result.stderr
    assert "no memory budget" in result.stderr or "give a size such as" in result.stderr
    assert "GB" in result.stderr  # the form to give


@pytest.mark.parametrize("value, says", [("0", "0 bytes is no memory budget"), ("6", "6 bytes is no memory budget"),
                                         ("yes", "1 byte is no memory budget"),
                                         ("-1GB", "a size (e.g. 6GB, 1.5GiB) or null, not '-1GB'")])
def test_a_budget_that_is_no_size_is_a_config_error(tmp_path, value, says):
    (tmp_path / "config.yaml").write_text(f"engine:\n  weights: random\n  max_memory: {value}\n")
    result = nst("validate", "-c", "config.yaml", cwd=tmp_path)
    assert result.returncode == 78
    assert f"engine.max_memory (line 3): {says}" in result.stderr
    if "bytes" in says:
        assert "leave it out for the default" in result.stderr  # 0 is never read as "the default"


def test_the_engine_needs_the_smallest_tiles_of_each_presets_own_layers(random_engine):
    deep = Preset(name="deep", styles=["s.png"], size=64, iterations=1, pyramid=None)
    shallow = Preset(name="shallow", styles=["s.png"], size=64, iterations=1, pyramid=None, **SHALLOW)
    assert least_tiled_bytes(SHALLOW["style_layers"] + SHALLOW["content_layers"]) < least_tiled_bytes(DEEP)
    assert random_engine.least_max_memory(deep) == random_engine.reserved + least_tiled_bytes(DEEP)
    assert random_engine.reserved == random_engine.resident + WORKSPACE_BYTES  # a CPU engine
    work = random_engine.work_memory
    content, style = synthetic_photo(32, 48), synthetic_painting(32, 32)
    import torch

    tensors = [torch.from_numpy(a.transpose(2, 0, 1).copy()) for a in (content, style)]
    try:
        random_engine.work_memory = least_tiled_bytes(DEEP) - 1
        with pytest.raises(PresetError, match=r"preset 'deep' needs before any photo .* down to relu5_1"):
            random_engine.stylize([tensors[0]], deep, [tensors[1]])
        random_engine.check_budget(shallow)  # the same budget serves shallower layers
        [result] = random_engine.stylize([tensors[0]], shallow, [tensors[1]])
        assert result.image.shape == (3, 43, 64)
    finally:
        random_engine.work_memory = work


def test_a_preset_added_by_reload_that_the_budget_cannot_serve_holds_its_jobs(tmp_path):
    """The running engine's budget serves preset a's shallow layers, not b's deep ones: b's jobs wait."""
    # Room for a's smallest tiles and its tiny photos (with ~20 MB to spare for a daemon's own growth), not b's.
    budget = resident_bytes() + WORKSPACE_BYTES + (least_tiled_bytes(DEEP) + 20 * 10**6) // 2
    studio = Studio(tmp_path, presets=("a",), preset_settings=SHALLOW, service={"reconcile_seconds": 1})
    studio.write_config(engine={"weights": "random", "device": "cpu", "max_memory": budget})
    daemon = studio.start().wait_ready()
    try:
        style = Path(studio.presets["a"]["styles"][0])
        studio.presets["b"] = {**studio.presets["a"], "styles": [str(style)], "content_layers": ["relu4_2"],
                               "style_layers": ["relu1_1", "relu5_1"]}
        studio.watches[0]["presets"] = ["a", "b"]
        studio.write_config(engine={"weights": "random", "device": "cpu", "max_memory": budget})
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("config reloaded")
        photo(studio.inbox / "waiting.jpg", seed=4)
        daemon.wait_log("wait, their photos untouched")
        wait_until(lambda: studio.counts().get("done", 0) == 1, what="preset a's job")
        [held] = [j for j in studio.jobs() if j.preset == "b"]
        assert held.state == "pending" and held.attempts == 0
        assert "preset 'b' needs before any photo" in held.error and "raise engine.max_memory" in held.error
        status = json.loads(nst("status", "-c", studio.config, "--json").stdout)
        assert "preset 'b' needs before any photo" in json.dumps(status)
        assert (studio.inbox / "waiting.jpg").exists()  # moved only once every preset is done
        assert not studio.failed.exists() or not any(studio.failed.iterdir())
    finally:
        assert daemon.stop() == 0
    assert [p.name for p in studio.outputs()] == ["waiting-a.jpg"]
