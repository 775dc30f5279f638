"""`nst-watch stylize` and `validate` on bad input: every problem named, nothing else lost.

Real processes, random weights (these are about mechanics), tiny images.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_painting, synthetic_photo

# Copies of the scripts in shared/cases that build the inputs found in the field.
CASES = Path(__file__).resolve().parent / "field_cases"
FAST = ("--weights", "random", "--iterations", "2", "--no-pyramid")


def nst(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=300)


def case(name: str, folder: Path) -> Path:
    """Build the field case `name` from shared/cases into `folder`."""
    script = CASES / f"{name}.py"
    subprocess.run([sys.executable, str(script), str(folder)], check=True, capture_output=True)
    return folder


def save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray((array * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture
def style(tmp_path) -> Path:
    return save(synthetic_painting(48, 48), tmp_path / "style.png")


# --- 1. photos of one output size, different pixel sizes -------------------------------------


def test_mixed_resolutions_in_one_batch_are_all_stylised(tmp_path):
    case("mixed-resolutions", tmp_path)
    result = nst("stylize", "a_400x300.jpg", "b_200x150.jpg", "--style", "style.png", "--out-dir", "out",
                 "--size", 48, "--json", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["error"] for r in records] == [None, None]
    for record in records:
        with Image.open(tmp_path / record["output"]) as im:
            assert im.size == (48, 36)


# --- 2. a style image too small for the deepest style layer -----------------------------------


@pytest.mark.parametrize("args", [["--style", "style_thin.png"],
                                  ["--style", "style_square.png", "--style-scale", "0.2"]])
def test_a_style_too_small_once_scaled_is_named_before_any_work(tmp_path, args):
    case("thin-style", tmp_path)
    result = nst("stylize", "content.jpg", *args, "--size", 64, "--out-dir", "out", *FAST, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    name = args[1]
    assert name in result.stderr and "relu5_1" in result.stderr and "16 px" in result.stderr
    assert "becomes 13x13" in result.stderr or "becomes 64x1" in result.stderr  # its scaled size
    assert not (tmp_path / "out").exists()


def test_validate_names_a_thin_style_with_key_and_line(tmp_path):
    case("thin-style", tmp_path)
    result = nst("validate", "-c", "config.yaml", cwd=tmp_path)
    assert result.returncode == 78
    assert "presets.thin.styles.0.path (line 15)" in result.stderr
    assert "style_thin.png is 2000x6" in result.stderr and "64x1" in result.stderr and "crop" in result.stderr
    run = nst("run", "-c", "config.yaml", cwd=tmp_path)  # the daemon refuses to start, photos untouched
    assert run.returncode == 78 and "presets.thin.styles.0.path" in run.stderr


def test_validate_reports_every_problem_in_the_file(tmp_path, style):
    (tmp_path / "thin.png").write_bytes(b"")
    save(synthetic_painting(6, 400), tmp_path / "strip.png")
    (tmp_path / "config.yaml").write_text(
        "presets:\n"
        "  typo:\n    styles: [style.png]\n    stlye_weight: 3\n"
        "  missing:\n    styles: [nowhere.png]\n"
        "  strip:\n    styles: [strip.png]\n    size: 64\n"
        "  broken:\n    styles: [thin.png]\n"
        "watches:\n"
        "  - name: in\n    input: in\n    output: in/out\n    presets: [typo, unknown]\n"
    )
    result = nst("validate", "-c", "config.yaml", cwd=tmp_path)
    assert result.returncode == 78
    expected = ["presets.typo.stlye_weight (line 4): unknown key; did you mean 'style_weight'",
                "presets.missing.styles.0.path (line 6)", "presets.strip.styles.0.path (line 8)",
                "presets.broken.styles.0.path (line 11)", "watches.0.presets (line 16): unknown preset 'unknown'",
                "watches.0.output (line 15)"]
    for line in expected:
        assert line in result.stderr, line
    assert "(6 problems)" in result.stderr


def test_the_error_line_carries_its_syslog_priority_off_a_terminal_and_none_on_one(tmp_path):
    # journald reads `<3>` as an error's priority; on a terminal the line stays plain text.
    (tmp_path / "config.yaml").write_text("presets:\n  a:\n    styles: [nowhere.png]\n    stlye_weight: 3\n")
    plain = nst("validate", "-c", "config.yaml", cwd=tmp_path)
    assert plain.returncode == 78
    lines = plain.stderr.splitlines()
    assert len(lines) > 1 and lines[0].startswith("<3>nst-watch: error: ") and all(
        line.startswith("<3>") for line in lines), plain.stderr
    primary, secondary = pty.openpty()
    with subprocess.Popen([sys.executable, "-m", "nst_watch", "validate", "-c", "config.yaml"], cwd=tmp_path,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary) as proc:
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(120) == 78
    os.close(primary)
    text = b"".join(chunks).decode()
    assert text.startswith("nst-watch: error: ") and "<3>" not in text and "stlye_weight" in text


# --- a style image so small it is enlarged into blur (issue 21, item 10) ---------------------------


def test_validate_warns_about_a_tiny_style_image_without_failing(tmp_path):
    Image.new("RGB", (8, 8), (180, 40, 30)).save(tmp_path / "tiny.png")
    save(synthetic_painting(300, 300), tmp_path / "fine.png")  # 1.7x at 512: sharp enough, no warning
    (tmp_path / "config.yaml").write_text(
        "presets:\n"
        "  big:\n    styles: [tiny.png]\n    size: 512\n"
        "  fine:\n    styles: [fine.png]\n    size: 512\n"
        "  full:\n    styles: [tiny.png]\n    size: full\n    style_scale: 0.5\n"
    )
    result = nst("validate", "-c", "config.yaml", cwd=tmp_path)
    assert result.returncode == 0 and "ok (3 presets)" in result.stdout
    tiny = tmp_path / "tiny.png"
    assert (f"preset 'big': style image {tiny} is 8x8 px: at size 512 x style_scale 1 it is enlarged 64x, to "
            "512x512, so it gives blur rather than its texture. It stops being blurry at 256 px on the long edge "
            "(512 px: not enlarged at all)") in result.stderr
    assert f"preset 'full': style image {tiny} is 8x8 px: at size: full (up to 1024 px" in result.stderr
    assert "fine.png" not in result.stderr and result.stderr.count("WARNING") == 2


def test_stylize_warns_once_about_a_tiny_style_image(tmp_path):
    Image.new("RGB", (8, 8), (180, 40, 30)).save(tmp_path / "tiny.png")
    for i in range(2):
        save(synthetic_photo(40, 48, seed=i), tmp_path / f"p{i}.jpg")
    result = nst("stylize", "p0.jpg", "p1.jpg", "--style", "tiny.png", "--size", 48, "--batch", 1, "--out-dir", "out",
                 *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("tiny.png is 8x8 px") == 1  # validation and the darkroom: said once
    assert "enlarged 6x, to 48x48" in result.stderr
    assert len(list((tmp_path / "out").iterdir())) == 2


# --- 3. a photo too thin for the output size among good ones ----------------------------------


def test_a_thin_photo_is_named_skipped_and_the_others_done(tmp_path):
    case("thin-photo", tmp_path)
    result = nst("stylize", "panorama.png", "normal.jpg", "--style", "style.png", "--out-dir", "out",
                 "--size", 64, "--json", *FAST, cwd=tmp_path)
    assert result.returncode == 1
    records = {Path(r["content"]).name: r for r in json.loads(result.stdout)}
    error = records["panorama.png"]["error"]
    assert "panorama.png" in error and "3000x8" in error and "64x1" in error
    assert "size 6000" in error  # the size at which it would fit, not a bare "raise size"
    assert "panorama.png" in result.stderr
    assert Path(tmp_path / records["normal.jpg"]["output"]).exists()


# --- 9. messages: checked before the engine loads, and true --------------------------------


def test_a_missing_style_is_a_usage_error_without_config_talk(tmp_path):
    photo = save(synthetic_photo(40, 60), tmp_path / "photo.jpg")
    result = nst("stylize", photo, "--style", tmp_path / "nowhere.png", *FAST, cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere.png" in result.stderr and "does not exist" in result.stderr
    assert "config" not in result.stderr


@pytest.mark.parametrize("flag, value", [("--size", "big"), ("--pyramid-iterations", "10,x"),
                                         ("--style-layer-weights", "1,heavy"), ("--max-memory", "lots")])
def test_an_unreadable_flag_value_is_a_usage_error_naming_the_flag(tmp_path, style, flag, value):
    photo = save(synthetic_photo(40, 60), tmp_path / "photo.jpg")
    result = nst("stylize", photo, "--style", style, flag, value, *FAST, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr and "Traceback" not in result.stderr


def test_missing_photos_are_reported_before_the_engine_is_loaded(tmp_path, style):
    # The weights file does not exist either: had the engine loaded first, its error would come first.
    result = nst("stylize", "gone.jpg", "--style", style, "--weights", tmp_path / "no-weights.pth",
                 "--out-dir", "out", cwd=tmp_path)
    assert result.returncode == 1
    assert "gone.jpg: no such file" in result.stderr
    assert "no-weights.pth" not in result.stderr


def test_output_folder_and_template_are_checked_before_work(tmp_path, style):
    photo = save(synthetic_photo(40, 60), tmp_path / "photo.jpg")
    no_folder = nst("stylize", photo, "--style", style, "-o", tmp_path / "nowhere" / "x.jpg", *FAST)
    assert no_folder.returncode == 2 and "nowhere" in no_folder.stderr
    bad_template = nst("stylize", photo, "--style", style, "--template", "{nonsense}.jpg", "--out-dir",
                       tmp_path / "out", *FAST)
    assert bad_template.returncode == 2 and "nonsense" in bad_template.stderr


# --- 11. every preset setting has a flag, with its help and default ---------------------------


def _leaves(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            yield from _leaves(type(default), f"{prefix}{name}.")
        else:
            yield prefix + name


def test_every_preset_setting_has_a_documented_flag():
    from nst_watch.config import Preset

    text = nst("stylize", "--help").stdout
    flat = " ".join(text.split())
    for setting in _leaves(Preset):
        if setting in ("name", "styles", "regions"):
            continue  # --preset / --style; regions name mask colours, a config's business (--mask gives the mask)
        flag = "--" + setting.replace("_", "-").replace(".", "-")
        if setting in ("output.strip_gps", "output.sidecar"):
            flag = flag.replace("output-", "")
        assert flag in text, setting
    for shown in ("--style-weight W The strength knob", "[default: 5.0]", "--seed N Random seed",
                  "--early-stop-min-change LEVELS", "[default: 4.0]", "--no-pyramid", "--no-early-stop"):
        assert shown in flat, shown


def test_flags_override_only_what_they_name(tmp_path, style):
    photo = save(synthetic_photo(40, 60), tmp_path / "photo.jpg")
    (tmp_path / "config.yaml").write_text(
        "engine:\n  weights: random\npresets:\n  p:\n    styles: [style.png]\n    size: 48\n"
        "    pyramid:\n      min_size: 24\n      factor: 3\n    output:\n      format: png\n")
    result = nst("stylize", photo, "-c", "config.yaml", "-p", "p", "--pyramid-factor", 1.5, "--no-early-stop",
                 "--iterations", 2, "--sidecar", "--style-layers", "relu1_1,relu2_1", "--out-dir", "out", "--json",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)
    assert record["output"].endswith(".png")  # the preset's format stands
    sidecar = json.loads(Path(tmp_path / (record["output"] + ".json")).read_text())
    parameters = sidecar["parameters"]
    assert parameters["pyramid"] == {"min_size": 24, "factor": 1.5, "iterations": None}
    assert parameters["early_stop"] is None and parameters["iterations"] == 2
    assert parameters["style_layers"] == ["relu1_1", "relu2_1"] and parameters["size"] == 48
