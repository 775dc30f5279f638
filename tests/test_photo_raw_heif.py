"""Camera RAW (through LibRaw) and HEIC (through pillow-heif) in: upright, camera EXIF carried, 16 bits kept.

The DNGs and HEICs are made by tests/raw_kit.py; `layout_match` tells
whether a picture came out upright by where its red, blue and white are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from daemon_kit import Studio, wait_until
from nst_watch.config import Watch, style_image_size
from nst_watch.errors import PhotoError
from nst_watch.photo import load_photo, save_photo
from raw_kit import CAMERA_EXIF, layout_match, make_dng, make_heic, scene
from test_photo_io import ADOBE_RGB, adobe_to_srgb

MAKE, MODEL, ORIENTATION, EXIF_IFD = 0x010F, 0x0110, 0x0112, 0x8769
EXPOSURE_TIME, F_NUMBER, ISO, DATE_ORIGINAL, FOCAL_LENGTH, LENS_MODEL = (
    0x829A, 0x829D, 0x8827, 0x9003, 0x920A, 0xA434)


def nst(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def exif_of(path) -> tuple[dict, dict]:
    """(IFD0, Exif IFD) of an image file, as Pillow reads them."""
    with Image.open(path) as im:
        exif = im.getexif()
        return dict(exif), exif.get_ifd(EXIF_IFD)


def corrupt_raws(folder: Path) -> list[Path]:
    """A DNG cut in half, and random bytes behind a TIFF header named like a Nikon RAW."""
    whole = make_dng(folder / "whole.dng").read_bytes()
    cut = folder / "cut.dng"
    cut.write_bytes(whole[: len(whole) // 2])
    noise = folder / "DSC_0001.NEF"
    noise.write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(4000))
    return [cut, noise]


# --- RAW: load_photo and save_photo -----------------------------------------------------


@pytest.mark.parametrize("orientation, shape", [(1, (48, 64)), (6, (64, 48)), (8, (64, 48)), (3, (48, 64))])
def test_dng_is_developed_upright_in_16_bit_srgb(tmp_path, orientation, shape):
    photo = load_photo(make_dng(tmp_path / "shot.dng", orientation=orientation))
    assert photo.format == "RAW" and photo.bit_depth == 16 and photo.color_space == "sRGB"
    assert photo.pixels.dtype == np.float32 and photo.pixels.shape == (*shape, 3) and photo.alpha is None
    assert photo.icc_profile is None
    assert layout_match(photo.pixels, orientation) > 0.95
    if orientation == 1:  # the scene's red (0.8, 0.04, 0.04) linear is about (0.91, 0.22, 0.22) in sRGB
        red = photo.pixels[30, 10]
        assert red[0] > 0.85 and red[1] < 0.35 and red[2] < 0.35
    assert any("developed from RAW by LibRaw" in n and "camera white balance" in n for n in photo.notes)
    assert any("turned upright by LibRaw" in n for n in photo.notes) == (orientation != 1)


def test_raw_camera_exif_reaches_the_output_with_orientation_1(tmp_path):
    photo = load_photo(make_dng(tmp_path / "shot.dng", orientation=6))
    for suffix in ("jpg", "png", "webp", "tif"):
        out = save_photo(photo.pixels, tmp_path / f"out.{suffix}", source=photo).path
        ifd0, exif = exif_of(out)
        assert ifd0[MAKE] == "QA-Raw" and ifd0[MODEL] == "Sensor 1" and ifd0.get(ORIENTATION, 1) == 1, suffix
        assert float(exif[EXPOSURE_TIME]) == 1 / 250 and float(exif[F_NUMBER]) == 2.8 and exif[ISO] == 400
        assert exif[DATE_ORIGINAL] == "2024:05:06 07:08:09" and float(exif[FOCAL_LENGTH]) == 50
        assert exif[LENS_MODEL] == "QA 50mm F1.8"


def test_camera_settings_only_libraw_reads_are_filled_in(tmp_path):
    # Exposure tags in IFD0: LibRaw reads them there (as it reads makernotes), an EXIF reader does not;
    # LibRaw takes the capture time from IFD0's DateTime, which becomes DateTimeOriginal.
    settings = {k: CAMERA_EXIF[k] for k in (EXPOSURE_TIME, F_NUMBER, FOCAL_LENGTH, LENS_MODEL)}
    photo = load_photo(make_dng(tmp_path / "shot.dng", exif={**settings, 0x0132: "2024:05:06 07:08:09"},
                                exif_in_ifd0=True))
    out = save_photo(photo.pixels, tmp_path / "out.jpg", source=photo).path
    ifd0, exif = exif_of(out)
    assert ifd0[MAKE] == "QA-Raw"
    assert float(exif[EXPOSURE_TIME]) == 1 / 250 and exif[EXPOSURE_TIME].denominator == 250
    assert float(exif[F_NUMBER]) == 2.8 and float(exif[FOCAL_LENGTH]) == 50 and exif[LENS_MODEL] == "QA 50mm F1.8"
    assert exif[DATE_ORIGINAL] == "2024:05:06 07:08:09"


def test_raw_to_16_bit_tiff_keeps_16_bit_precision(tmp_path):
    ramp = np.linspace(0.02, 0.9, 96)[None, :, None] * np.linspace(0.3, 1.0, 64)[:, None, None]
    photo = load_photo(make_dng(tmp_path / "ramp.dng", np.repeat(ramp, 3, axis=-1)))
    levels = np.unique(np.round(photo.pixels * 65535).astype(np.uint16))
    assert len(levels) > 1000 and np.mean(levels % 257 != 0) > 0.9  # not 8-bit values stretched
    out = save_photo(photo.pixels, tmp_path / "out.tif", source=photo, bit_depth=16).path
    written = tifffile.imread(out)
    assert written.dtype == np.uint16
    assert np.array_equal(written, (photo.pixels * 65535 + 0.5).astype(np.uint16))


def test_a_dng_is_recognised_by_content_whatever_its_name(tmp_path):
    dng = make_dng(tmp_path / "shot.dng", orientation=6)
    renamed = tmp_path / "shot.tif"
    renamed.write_bytes(dng.read_bytes())
    photo = load_photo(renamed)
    assert photo.format == "RAW" and photo.pixels.shape == (64, 48, 3)
    assert style_image_size(renamed) == (48, 64)  # developed size, turned upright


def test_raw_pixel_limit_is_checked_before_developing(tmp_path):
    with pytest.raises(PhotoError) as info:
        load_photo(make_dng(tmp_path / "shot.dng"), max_pixels=1000)
    assert "64x48" in info.value.reason and "1000 pixels" in info.value.reason and "max_pixels" in info.value.fix


def test_raw_outside_a_callers_allow_list(tmp_path):
    with pytest.raises(PhotoError) as info:
        load_photo(make_dng(tmp_path / "shot.dng"), formats=("jpeg", "png"))
    assert info.value.reason == "camera RAW images are not accepted here (only JPEG, PNG)"
    assert info.value.fix == "develop it and export JPEG or PNG"
    assert load_photo(make_dng(tmp_path / "ok.dng"), formats=("raw", "heic")).format == "RAW"
    with pytest.raises(ValueError, match="RAW"):
        load_photo(tmp_path / "ok.dng", formats=("nef",))


def test_a_raw_libraw_cannot_read_is_a_permanent_photo_error(tmp_path):
    for path in corrupt_raws(tmp_path):
        with pytest.raises(PhotoError) as info:
            load_photo(path)
        error = info.value
        assert error.permanent and str(error).startswith(str(path))
        assert "LibRaw cannot read this camera RAW file" in error.reason
        assert "truncated" in error.fix and "LibRaw 0." in error.fix and "DNG Converter" in error.fix
        with pytest.raises(ValueError, match=f"{path.name}.*LibRaw cannot read it"):
            style_image_size(path)


def test_default_watch_include_takes_raw_and_heic_names_in_any_case():
    from nst_watch.watch.ignore import PathFilter

    include = Watch(name="w", input="in", output="out", presets=["a"]).include
    accepts = PathFilter("/in", include=include).wants_name
    names = ["IMG_0001.CR3", "a.cr2", "b.NEF", "c.arw", "DSCF1.RAF", "P1.ORF", "p.rw2", "x.dng", "y.HEIC", "z.heif"]
    assert all(accepts(name) for name in names), [n for n in names if not accepts(n)]


# --- HEIC -------------------------------------------------------------------------------


def test_heic_exif_icc_and_orientation_are_handled_like_jpegs(tmp_path):
    patches = np.repeat(np.repeat(np.array([[[0.8, 0.25, 0.2], [0.35, 0.45, 0.8]]]), 24, 0), 32, 1)  # 24 x 64
    path = make_heic(tmp_path / "phone.heic", patches, orientation=6, icc=ADOBE_RGB)
    photo = load_photo(path)
    assert photo.format == "HEIF" and photo.bit_depth == 8 and photo.pixels.shape == (64, 24, 3)  # turned once
    assert photo.icc_profile == ADOBE_RGB and photo.color_space == "Adobe RGB (1998) test"
    top, bottom = photo.pixels[16, 12], photo.pixels[48, 12]  # left patch -> top, right patch -> bottom
    assert np.abs(top - adobe_to_srgb(np.array([0.8, 0.25, 0.2]))).max() < 0.03
    assert np.abs(bottom - adobe_to_srgb(np.array([0.35, 0.45, 0.8]))).max() < 0.03
    assert any("converted from Adobe RGB" in n for n in photo.notes)
    assert any("EXIF orientation 6 was not applied again" in n for n in photo.notes)
    ifd0, _ = exif_of(save_photo(photo.pixels, tmp_path / "out.jpg", source=photo).path)
    assert ifd0[MAKE] == "QA-Phone" and ifd0[MODEL] == "Pocket 9" and ifd0[ORIENTATION] == 1
    kept = save_photo(photo.pixels, tmp_path / "kept.png", source=photo, icc="keep").path
    assert Image.open(kept).info["icc_profile"] == ADOBE_RGB


def test_ten_bit_heic_is_read_at_full_precision(tmp_path):
    ramp = np.repeat(np.linspace(0, 1, 64)[None, :, None] * np.linspace(0.5, 1, 48)[:, None, None], 3, axis=-1)
    photo = load_photo(make_heic(tmp_path / "hdr.heic", ramp, orientation=1, bit_depth=10))
    assert photo.bit_depth == 16 and photo.pixels.shape == (48, 64, 3)
    levels = np.unique(np.round(photo.pixels[..., 1] * 1023))
    assert len(levels) > 400  # 10-bit steps, where 8 bits would leave at most 256
    assert np.abs(photo.pixels - ramp).max() < 0.03
    out = save_photo(photo.pixels, tmp_path / "out.tif", source=photo, bit_depth=16).path
    assert tifffile.imread(out).dtype == np.uint16


# --- the CLI and the daemon ---------------------------------------------------------------


def test_stylize_a_dng(tmp_path):
    make_dng(tmp_path / "shot.dng", orientation=6)
    Image.fromarray((scene(32, 32)[..., ::-1] * 255).astype(np.uint8)).save(tmp_path / "style.png")
    done = nst("stylize", "shot.dng", "--style", "style.png", "--weights", "random", "--size", 48,
               "--iterations", 2, "-o", "out.jpg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (36, 48)  # portrait: the 64x48 DNG says orientation 6
        assert layout_match(np.asarray(out.convert("RGB")) / 255.0, 6) > 0.8
    ifd0, exif = exif_of(tmp_path / "out.jpg")
    assert ifd0[MAKE] == "QA-Raw" and ifd0[MODEL] == "Sensor 1" and ifd0.get(ORIENTATION, 1) == 1
    assert exif[ISO] == 400 and float(exif[EXPOSURE_TIME]) == 1 / 250 and exif[LENS_MODEL] == "QA 50mm F1.8"


def test_stylize_a_heic_with_a_raw_style_image(tmp_path):
    make_heic(tmp_path / "phone.heic", orientation=6)
    make_dng(tmp_path / "style.dng", orientation=8)  # RAW style images are read like RAW photos
    done = nst("stylize", "phone.heic", "--style", "style.dng", "--weights", "random", "--size", 48,
               "--iterations", 2, "-o", "out.jpg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (36, 48)
        assert layout_match(np.asarray(out.convert("RGB")) / 255.0, 6) > 0.8
    ifd0, _ = exif_of(tmp_path / "out.jpg")
    assert ifd0[MAKE] == "QA-Phone" and ifd0[MODEL] == "Pocket 9" and ifd0.get(ORIENTATION, 1) == 1


def test_stylize_a_corrupt_raw_exits_1_naming_the_file_and_libraw(tmp_path):
    [cut, noise] = corrupt_raws(tmp_path)
    Image.fromarray((scene(32, 32) * 255).astype(np.uint8)).save(tmp_path / "style.png")
    done = nst("stylize", cut.name, noise.name, "--style", "style.png", "--weights", "random", "--size", 48,
               "--out-dir", "out", "--json", cwd=tmp_path)
    assert done.returncode == 1
    records = {Path(r["content"]).name: r for r in json.loads(done.stdout)}
    for path in (cut, noise):
        error = records[path.name]["error"]
        assert path.name in error and "LibRaw cannot read this camera RAW file" in error
    assert "cut.dng" in done.stderr and "LibRaw" in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_daemon_takes_dng_and_heic_by_default_and_fails_a_corrupt_raw(tmp_path):
    studio = Studio(tmp_path, presets=("a",), preset_settings={"output": {"format": "tiff", "bit_depth": 16}})
    assert "include" not in studio.watches[0]  # the default include
    daemon = studio.start().wait_ready()
    try:
        make_dng(studio.inbox / "IMG_0001.DNG", orientation=6)
        make_heic(studio.inbox / "phone.heic", orientation=8)
        studio.inbox.joinpath("DSC_0002.NEF").write_bytes(b"II*\x00" + np.random.default_rng(1).bytes(4000))
        wait_until(lambda: (studio.failed / "DSC_0002.NEF.error.txt").exists() and len(studio.outputs()) == 2,
                   timeout=120, what="two outputs and one failure")
    finally:
        assert daemon.stop() == 0
    outputs = {p.name: p for p in studio.outputs()}
    assert set(outputs) == {"IMG_0001-a.tif", "phone-a.tif"}
    for name, orientation, make in (("IMG_0001-a.tif", 6, "QA-Raw"), ("phone-a.tif", 8, "QA-Phone")):
        with tifffile.TiffFile(outputs[name]) as tif:
            page = tif.pages[0]
            pixels = page.asarray()
            assert page.tags["Make"].value == make and page.tags["Orientation"].value == 1
        assert pixels.dtype == np.uint16 and pixels.shape == (32, 24, 3)  # 64x48 turned upright, long edge 32
        assert layout_match(pixels / 65535.0, orientation) > 0.8
    assert np.mean(tifffile.imread(outputs["IMG_0001-a.tif"]) % 257 != 0) > 0.5  # 16-bit values, not 8-bit ones
    report = (studio.failed / "DSC_0002.NEF.error.txt").read_text()
    assert "DSC_0002.NEF" in report and "LibRaw cannot read this camera RAW file" in report
    assert (studio.failed / "DSC_0002.NEF").exists()
    [failed] = [j for j in studio.jobs() if j.state == "failed"]
    assert failed.attempts == 1 and "LibRaw" in failed.error


# --- names that say RAW, content that says otherwise (issue 21, item 4) --------------------------


def plain_tiff(path: Path, bits: int = 8) -> Path:
    """An RGB TIFF of `scene()` with no RAW marks (no DNGVersion, no CFA, no SubIFDs), 8 or 16 bits."""
    dtype, top = (np.uint8, 255) if bits == 8 else (np.uint16, 65535)
    tifffile.imwrite(path, (scene() * top).round().astype(dtype), photometric="rgb")
    return path


@pytest.mark.parametrize("name, bits", [("scan.dng", 8), ("scan.NEF", 16), ("scan.cr2", 8), ("scan.arw", 8),
                                        ("scan.pef", 16)])
def test_a_plain_tiff_under_a_raw_name_is_read_as_the_tiff_it_is(tmp_path, name, bits):
    path = plain_tiff(tmp_path / name, bits)
    photo = load_photo(path)
    assert photo.format == "TIFF" and photo.bit_depth == bits and photo.pixels.shape == (48, 64, 3)
    assert layout_match(photo.pixels, 1) > 0.99
    assert f"named {path.suffix} but is a plain TIFF, not a camera RAW (LibRaw: not a RAW file); read as TIFF" \
        in photo.notes
    assert style_image_size(path) == (64, 48)  # the size probe (batching, style checks) agrees


@pytest.mark.parametrize("fmt, suffix, kind", [("JPEG", ".nef", "a JPEG"), ("PNG", ".cr2", "a PNG"),
                                               ("WEBP", ".dng", "a WebP"), ("TIFF", ".jpg", "a TIFF")])
def test_other_images_under_wrong_names_are_read_by_content_with_a_note(tmp_path, fmt, suffix, kind):
    path = tmp_path / f"shot{suffix}"
    Image.fromarray((scene() * 255).round().astype(np.uint8)).save(path, format=fmt, **(
        {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}))
    photo = load_photo(path)
    assert photo.format == fmt and layout_match(photo.pixels, 1) > 0.99
    assert f"named {suffix} but is {kind}; read as {fmt}" in photo.notes


def _preview_only(path: Path, preview: np.ndarray) -> None:
    tifffile.imwrite(path, preview, photometric="rgb", subfiletype=1)  # NewSubfileType: a reduced-size image


def _behind_subifds(path: Path, preview: np.ndarray) -> None:
    with tifffile.TiffWriter(path) as tif:
        tif.write(preview, photometric="rgb", subifds=1)
        tif.write(preview, photometric="rgb")


def _dng_without_data(path: Path, preview: np.ndarray) -> None:
    tifffile.imwrite(path, preview, photometric="rgb", extratags=[(50706, "B", 4, (1, 4, 0, 0), True)])


@pytest.mark.parametrize("write", [_preview_only, _behind_subifds, _dng_without_data])
def test_a_raw_libraw_cannot_read_keeps_its_error_even_when_tifffile_could_read_it(tmp_path, write):
    # A camera's RAW that LibRaw does not know has a RAW's marks around a preview tifffile reads: it is not
    # shown as that preview, and LibRaw's error and advice stay.
    path = tmp_path / "IMG_0001.pef"
    write(path, (scene(32, 24) * 255).astype(np.uint8))
    with pytest.raises(PhotoError) as info:
        load_photo(path)
    assert "LibRaw cannot read this camera RAW file" in info.value.reason and "DNG Converter" in info.value.fix


def test_field_case_tiff_named_dng_is_stylised(tmp_path):
    cases = Path(__file__).resolve().parent / "field_cases"
    subprocess.run([sys.executable, str(cases / "tiff-named-dng.py"), str(tmp_path)], check=True,
                   capture_output=True)
    done = nst("stylize", "scan.dng", "scan_copy.tif", "--style", "style.png", "--out-dir", "out", "--json",
               "--weights", "random", "--size", 64, "--iterations", 3, "--no-pyramid", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = {Path(r["content"]).name: r for r in json.loads(done.stdout)}
    assert records["scan.dng"]["error"] is None and (tmp_path / records["scan.dng"]["output"]).exists()
    assert any("named .dng but is a plain TIFF" in n for n in records["scan.dng"]["notes"])
    assert "LibRaw" not in done.stderr.replace("(LibRaw: not a RAW file)", "")


def test_the_daemon_takes_a_plain_tiff_named_dng(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    daemon = studio.start().wait_ready()
    try:
        plain_tiff(tmp_path / "scan.dng").rename(studio.inbox / "scan.dng")
        wait_until(lambda: (studio.processed / "scan.dng").exists(), what="the scan done and moved")
    finally:
        assert daemon.stop() == 0
    assert [p.name for p in studio.outputs()] == ["scan-a.jpg"] and not studio.failed.exists()
    [job] = studio.jobs()
    assert job.state == "done" and job.bucket == "32x24"


# --- what LibRaw prints (issue 21, item 5) ----------------------------------------------------------


def truncated_dng(path: Path) -> Path:
    """A DNG cut inside its sensor data (no Exif IFD after it): LibRaw reads past the end."""
    whole = make_dng(path.with_name("whole.dng"), exif=None).read_bytes()
    path.write_bytes(whole[:-100])
    return path


def test_libraws_end_of_file_line_goes_into_the_error_not_raw_onto_stderr(tmp_path):
    truncated_dng(tmp_path / "cut.dng")
    Image.fromarray((scene(32, 32) * 255).astype(np.uint8)).save(tmp_path / "style.png")
    done = nst("stylize", "cut.dng", "--style", "style.png", "--weights", "random", "--size", 48,
               "--out-dir", "out", "--json", cwd=tmp_path)
    assert done.returncode == 1
    [record] = json.loads(done.stdout)
    assert "LibRaw cannot read this camera RAW file: Input/output error (unexpected end of file)" in record["error"]
    assert "unknown file" not in done.stderr and "Unexpected end of file" not in done.stderr
    assert "cut.dng: LibRaw cannot read this camera RAW file" in done.stderr  # the log line names the file


def test_what_libraw_prints_is_kept_apart_from_other_threads_lines():
    # LibRaw's callbacks write "<name>: data corrupted at N" to fd 2 from C, with no hook rawpy exposes, so
    # the capture works at the fd level; it is tested there: a LibRaw line written inside the capture becomes
    # a message, and a log line another thread writes meanwhile still reaches stderr, whole.
    script = (
        "import os, threading\n"
        "from nst_watch.photo import decode\n"
        "said = []\n"
        "with decode._libraw_said(said):\n"
        "    os.write(2, b'unknown file: data corrupted at 1234\\n')\n"
        "    t = threading.Thread(target=os.write, args=(2, b'<6>INFO another thread\\n'))\n"
        "    t.start(); t.join()\n"
        "print(said)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['data corrupted at 1234']"
    assert done.stderr == "<6>INFO another thread\n"


# --- orientation: every EXIF value, every format, and the size used for batching (issue 21, item 5) ---


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def upright_match(rgb: np.ndarray, orientation: int) -> float:
    """layout_match for any EXIF orientation: the scene's colour classes turned as Pillow turns them."""
    from raw_kit import classes

    want = Image.fromarray(classes(scene()).astype(np.uint8))
    want = np.asarray(want.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else want)
    h, w = rgb.shape[:2]
    rows = ((np.arange(h) + 0.5) * want.shape[0] / h).astype(int)
    cols = ((np.arange(w) + 0.5) * want.shape[1] / w).astype(int)
    return float((classes(rgb) == want[rows][:, cols]).mean())


def oriented(folder: Path, fmt: str, orientation: int) -> Path:
    srgb = (scene() * 255).round().astype(np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    if fmt == "dng":
        return make_dng(folder / "shot.dng", orientation=orientation)
    if fmt == "heic":
        return make_heic(folder / "shot.heic", orientation=orientation)
    if fmt == "tiff16":
        path = folder / "shot.tif"
        tifffile.imwrite(path, (scene() * 65535).astype(np.uint16), photometric="rgb",
                         extratags=[(ORIENTATION, "H", 1, orientation, True)])
        return path
    path = folder / f"shot.{fmt}"
    Image.fromarray(srgb).save(path, exif=exif.tobytes(), **({"quality": 95} if fmt == "jpg" else {}))
    return path


@pytest.mark.parametrize("fmt", ["dng", "heic", "jpg", "tif", "tiff16"])
def test_every_orientation_is_upright_and_batched_under_its_upright_size(tmp_path, fmt):
    from nst_watch.service.identity import size_bucket

    for orientation in range(1, 9):
        path = oriented(tmp_path, fmt, orientation)
        photo = load_photo(path)
        assert upright_match(photo.pixels, orientation) > 0.95, (fmt, orientation)
        assert size_bucket(path, "full") == f"{photo.width}x{photo.height}", (fmt, orientation)
        assert size_bucket(path, 32) == ("32x24" if orientation < 5 else "24x32"), (fmt, orientation)
        if fmt == "dng" and orientation != 1:
            assert not any("flip" in n for n in photo.notes), photo.notes  # said in words
        path.unlink()


# --- HEIF with several images (issue 21, item 5) ---------------------------------------------------


@pytest.mark.parametrize("bit_depth", [8, 10])
def test_a_multi_image_heic_uses_its_primary_image_and_says_so(tmp_path, bit_depth):
    import pillow_heif

    sizes, colours = [(64, 48), (32, 40), (16, 16)], [(1, 0, 0), (0, 0, 1), (0, 1, 0)]
    heif = pillow_heif.HeifFile()
    for size, colour in zip(sizes, colours):
        pixels = np.broadcast_to(np.array(colour) * (65535 if bit_depth == 10 else 255), (size[1], size[0], 3))
        mode = "RGB;16" if bit_depth == 10 else "RGB"
        data = pixels.astype(np.uint16 if bit_depth == 10 else np.uint8).tobytes()
        heif.add_frombytes(mode, size, data)
    heif.save(tmp_path / "burst.heic", quality=-1, primary_index=1)
    photo = load_photo(tmp_path / "burst.heic")
    assert photo.pixels.shape == (40, 32, 3) and photo.pixels[..., 2].min() > 0.95  # the blue, primary one
    assert "the HEIF holds 3 images; its primary image (image 2, 32x40) was used, as viewers show it" in photo.notes
    assert not any("first" in n for n in photo.notes)
    assert style_image_size(tmp_path / "burst.heic") == (32, 40)
