"""Config mistakes caught where they are made: keys given twice, YAML that is not YAML, values of the wrong kind.

`validate`, `run`, `stylize -c` and SIGHUP reloads all read a config through
one loader (nst_watch.config.load_config); real processes where a user would
run them, the Python API for the values the loader returns.
"""

from __future__ import annotations

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
from daemon_kit import Studio, photo, wait_until
from nst_watch.config import load_config
from nst_watch.errors import ConfigError

CASES = Path(__file__).resolve().parent / "field_cases"


def nst(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def case(name: str, folder: Path) -> Path:
    subprocess.run([sys.executable, str(CASES / f"{name}.py"), str(folder)], check=True, capture_output=True)
    return folder


def problems(stderr: str) -> list[str]:
    """The problem lines of a ConfigError as the CLI prints it (off a terminal each line has its <3> priority)."""
    lines = (re.sub(r"^<\d>", "", line).strip() for line in stderr.splitlines())
    return [line[2:] for line in lines if line.startswith("- ")]


@pytest.fixture
def style(tmp_path) -> Path:
    path = tmp_path / "style.png"
    Image.fromarray((synthetic_painting(48, 48) * 255).astype(np.uint8)).save(path)
    return path


# --- 2. a key given twice -------------------------------------------------------------------


def test_the_field_cases_duplicate_keys_are_refused_with_both_lines(tmp_path):
    case("yaml-duplicate-keys", tmp_path)
    expected = {"dup_key.yaml": "presets.p1.size (lines 12 and 14): given twice; keep one",
                "dup_preset.yaml": "presets.p1 (lines 10 and 14): given twice; keep one",
                "dup_state.yaml": "state_dir (lines 3 and 14): given twice; keep one"}
    for name, problem in expected.items():
        result = nst("validate", "-c", name, cwd=tmp_path)
        assert result.returncode == 78, result.stderr
        assert problems(result.stderr) == [problem]
        assert f"{name}: invalid config" in result.stderr and "Traceback" not in result.stderr
    # run refuses before it creates the second state_dir's empty ledger; stylize reads the config the same way.
    run = nst("run", "-c", "dup_state.yaml", cwd=tmp_path)
    assert run.returncode == 78 and "state_dir (lines 3 and 14)" in run.stderr
    assert not (tmp_path / "other_state").exists() and not (tmp_path / "state").exists()
    Image.fromarray((synthetic_photo(40, 60) * 255).astype(np.uint8)).save(tmp_path / "photo.jpg")
    stylize = nst("stylize", "photo.jpg", "-c", "dup_key.yaml", "-p", "p1", "--out-dir", "out", cwd=tmp_path)
    assert stylize.returncode == 78 and "presets.p1.size (lines 12 and 14)" in stylize.stderr
    assert not (tmp_path / "out").exists()


def test_duplicates_at_any_depth_are_all_reported_with_the_other_problems(tmp_path, style):
    (tmp_path / "config.yaml").write_text(
        "engine:\n"                       # 1
        "  weights: random\n"             # 2
        "  weights: caffe\n"              # 3
        "presets:\n"                      # 4
        "  p:\n"                          # 5
        "    styles: [style.png]\n"       # 6
        "    output:\n"                   # 7
        "      format: png\n"             # 8
        "      quality: 90\n"             # 9
        "      format: jpeg\n"            # 10
        "    stlye_weight: 3\n"           # 11
        "    'iterations': 5\n"           # 12
        "    iterations: 6\n"             # 13
        "    \"iterations\": 7\n"         # 14
        "watches:\n"                      # 15
        "  - name: in\n"                  # 16
        "    input: in\n"                 # 17
        "    output: out\n"               # 18
        "    input: elsewhere\n"          # 19
        "    presets: [p]\n"              # 20
    )
    result = nst("validate", "-c", "config.yaml", cwd=tmp_path)
    assert result.returncode == 78
    assert problems(result.stderr) == [
        "engine.weights (lines 2 and 3): given twice; keep one",
        "presets.p.output.format (lines 8 and 10): given twice; keep one",
        "presets.p.iterations (lines 12, 13 and 14): given 3 times; keep one",  # quoted or not, one key
        "watches.0.input (lines 17 and 19): given twice; keep one",
        "presets.p.stlye_weight (line 11): unknown key; did you mean 'style_weight'?",
    ]
    assert "(5 problems)" in result.stderr


def test_merge_keys_keep_working_and_an_override_is_no_duplicate(tmp_path, style):
    config = tmp_path / "config.yaml"
    config.write_text(
        "presets:\n"
        "  base: &base\n"
        "    styles: [style.png]\n"
        "    size: 64\n"
        "    iterations: 5\n"
        "  big:\n"
        "    <<: *base\n"
        "    size: 128\n"                  # overrides the merged size: legitimate
        "  tuned: &tuned\n"
        "    <<: *base\n"
        "    style_weight: 10\n"
        "  both:\n"
        "    <<: [*tuned, *base]\n"        # a list of anchors: the first one wins where both have a key
        "    iterations: 9\n"
        "  again: *tuned\n"                # a plain alias: checked once, where it is defined
    )
    result = nst("validate", "-c", config)
    assert result.returncode == 0, result.stderr
    loaded = load_config(config)
    sizes = {name: (p.size, p.iterations, p.style_weight) for name, p in loaded.presets.items()}
    assert sizes == {"base": (64, 5, 5.0), "big": (128, 5, 5.0), "tuned": (64, 5, 10.0), "both": (64, 9, 10.0),
                     "again": (64, 5, 10.0)}
    assert all(p.styles[0].path == style for p in loaded.presets.values())

    # A key given twice inside an anchored mapping is reported once, at its definition.
    config.write_text(config.read_text().replace("    style_weight: 10\n", "    style_weight: 10\n    size: 96\n"
                                                 "    style_weight: 3\n"))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert problems(str(caught.value)) == ["presets.tuned.style_weight (lines 11 and 13): given twice; keep one"]


def test_a_reload_with_a_duplicate_key_keeps_the_running_config(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    daemon = studio.start().wait_ready()
    try:
        good = studio.config.read_text()
        other = tmp_path / "other_state"
        studio.config.write_text(good + f"state_dir: {other}\n")  # a second state_dir at the end
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reload failed")
        assert re.search(r"state_dir \(lines 1 and \d+\): given twice", daemon.log), daemon.log
        photo(studio.inbox / "still.jpg", seed=1)
        wait_until(lambda: studio.counts().get("done", 0) == 1, what="a photo under the previous config")
    finally:
        assert daemon.stop() == 0
    assert [p.name for p in studio.outputs()] == ["still-a.jpg"]
    assert not other.exists()  # the ledger stayed where it was


# --- 10. messages -----------------------------------------------------------------------------


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "config.yaml").write_text("presets:\n  p:\n    styles: [a.png\n    size: 64\n")
    result = nst("validate", "-c", "config.yaml", cwd=tmp_path)
    assert result.returncode == 78
    assert '"config.yaml", line 3' in result.stderr and "<unicode string>" not in result.stderr
    (tmp_path / "control.yaml").write_text("state_dir: \x07\n")  # a character YAML does not allow
    result = nst("validate", "-c", "control.yaml", cwd=tmp_path)
    assert result.returncode == 78 and '"control.yaml", position 11' in result.stderr
    assert "Traceback" not in result.stderr


def test_a_wrong_value_is_one_problem_in_the_configs_own_words(tmp_path, style):
    (tmp_path / "config.yaml").write_text(
        "engine:\n"
        "  precision: fast\n"
        "  max_memory: lots\n"
        "max_pixels: many\n"
        "service:\n"
        "  batch: 0\n"
        "  bach: 2\n"
        "presets:\n"
        "  p:\n"
        "    styles: [style.png]\n"
        "    size: big\n"
        "    iterations: -1\n"
        "    average: 1\n"
        "    pyramid: 3\n"
        "    style_layer_weights: [1, x]\n"
        "    output:\n"
        "      bit_depth: 12\n"
        "      quality: 0\n"
        "watches:\n"
        "  - name: in\n"
        "    input: in\n"
        "    output: out\n"
        "    presets: [p]\n"
        "    polling: sometimes\n"
        "    settle_seconds: soon\n"
    )
    result = nst("validate", "-c", "config.yaml", cwd=tmp_path)
    assert result.returncode == 78
    assert sorted(problems(result.stderr)) == sorted([
        "engine.precision (line 2): auto, fp32, bf16 or fp64, not 'fast'",
        "engine.max_memory (line 3): a size (e.g. 6GB, 1.5GiB) or null, not 'lots'",
        "max_pixels (line 4): a number of pixels (1 or more), not 'many'",
        "service.batch (line 6): a whole number (1 or more), not 0",
        "service.bach (line 7): unknown key; did you mean 'batch'?",
        "presets.p.size (line 11): a number of pixels (16 or more) or full, not 'big'",
        "presets.p.iterations (line 12): a whole number (0 or more), not -1",
        "presets.p.average (line 13): a number (0 or more, less than 1), not 1",
        "presets.p.pyramid (line 14): a mapping (min_size, factor, iterations) or null, not 3",
        "presets.p.style_layer_weights.1 (line 15): a number (0 or more), not 'x'",
        "presets.p.output.bit_depth (line 17): 8 or 16, not 12",
        "presets.p.output.quality (line 18): a whole number (from 1 to 100), not 0",
        "watches.0.polling (line 24): true, false or auto, not 'sometimes'",
        "watches.0.settle_seconds (line 25): a number of seconds (0 or more), not 'soon'",
    ])
    assert "(14 problems)" in result.stderr
    for internal in ("constrained-int", "literal[", "Input should", "Value error"):
        assert internal not in result.stderr


def test_a_flag_that_makes_a_wrong_value_says_it_in_the_same_words(tmp_path, style):
    Image.fromarray((synthetic_photo(40, 60) * 255).astype(np.uint8)).save(tmp_path / "photo.jpg")
    result = nst("stylize", "photo.jpg", "--style", style, "--iterations", "-3", "--weights", "random", cwd=tmp_path)
    assert result.returncode == 2
    assert "iterations: a whole number (0 or more), not -3" in result.stderr


def test_empty_lists_names_and_missing_keys_say_what_is_needed(tmp_path):
    (tmp_path / "config.yaml").write_text("presets:\n  p:\n    styles: []\n  q:\n    styles: 5\n"
                                          "watches:\n  - name: ''\n    output: out\n    presets: [p]\n")
    result = nst("validate", "-c", "config.yaml", cwd=tmp_path)
    assert result.returncode == 78
    assert problems(result.stderr) == [
        "presets.p.styles (line 3): at least 1 entry, not []",
        "presets.q.styles (line 5): a list of style images (each a path, or path: and weight:), not 5",
        "watches.0.name (line 7): at least 1 character, not ''",
        "watches.0.input (line 7): required; add it",
    ]
