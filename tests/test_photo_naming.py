"""Output names (templates, sanitising, the jail) and atomic, no-clobber writes."""

from __future__ import annotations

import errno
import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_watch.errors import PhotoError
from nst_watch.photo import (
    TEMP_PREFIX,
    clean_temp_files,
    load_photo,
    output_path,
    photo_tokens,
    render_name,
    save_photo,
    validate_template,
)
from nst_watch.photo.naming import MAX_NAME_BYTES, derived_name, escape_name, numbered_name

TOKENS = {"stem": "IMG_0001", "ext": "jpg", "preset": "ink", "date": "2024-05-06", "time": "070809",
          "hash8": "0123abcd", "width": "640", "height": "480"}


def flat(colour: float, size=16) -> np.ndarray:
    return np.full((size, size, 3), colour, np.float32)


def leftovers(folder: Path) -> list[Path]:
    return list(folder.rglob(f"{TEMP_PREFIX}*"))


# --- templates ------------------------------------------------------------------


@pytest.mark.parametrize("template", ["{stem}_{preset}.{ext}", "{preset}/{date}/{stem}-{hash8}.{ext}",
                                      "{stem}_{width}x{height}_{counter}.jpg", "{time}.{ext}", "plain.jpg"])
def test_valid_templates(template):
    validate_template(template)


@pytest.mark.parametrize("template, words", [
    ("/etc/{stem}.jpg", "absolute"),
    ("~/{stem}.jpg", "absolute"),
    ("C:\\out\\{stem}.jpg", "absolute"),
    ("../{stem}.jpg", "'..'"),
    ("a/../../{stem}.jpg", "'..'"),
    ("{stem}_{camera}.jpg", "unknown token {camera}"),
    ("{stem.upper}.jpg", "unknown token"),
    ("{stem!r}.jpg", "not supported"),
    ("{counter:03d}.jpg", "not supported"),
    ("{}.jpg", "empty {}"),
    ("{stem.jpg", "unbalanced"),
    ("{preset}/", "ends with '/'"),
    ("", "empty"),
])
def test_invalid_templates_have_clear_reasons(template, words):
    with pytest.raises(ValueError) as info:
        validate_template(template)
    assert words in str(info.value)


def test_render_requires_every_token():
    with pytest.raises(ValueError, match=r"\{preset\}"):
        render_name("{stem}_{preset}.jpg", {"stem": "a"})


EVIL = ["../../etc/passwd", "a/b/c", "/abs", "x\x00y", "line\nbreak\r", "é" * 400, "..", ".hidden",
        "con", "tab\there", "a\\b", "{stem}", os.fsdecode(b"caf\xe9-\xff\xfe")]  # last: bytes that are not UTF-8


@pytest.mark.parametrize("value", EVIL)
@pytest.mark.parametrize("template", ["{stem}_{preset}.{ext}", "{preset}/{stem}.{ext}", "{stem}/{preset}/x.jpg"])
def test_hostile_values_give_legal_names_inside_root(tmp_path, value, template):
    path = output_path(tmp_path, template, {**TOKENS, "stem": value, "preset": value})
    root = tmp_path.resolve()
    assert path.resolve().is_relative_to(root)
    rel = path.relative_to(root)
    assert len(rel.parts) == template.count("/") + 1  # values never add folders
    for part in rel.parts:
        assert 0 < len(part.encode()) <= MAX_NAME_BYTES
        assert not any(c in part for c in "\x00\n\r\t/\\")
        assert not part.startswith(".")
    assert path.suffix == ".jpg"


def test_long_names_keep_their_extension_and_fit():
    name = render_name("{stem}_{preset}.{ext}", {**TOKENS, "stem": "日本" * 200, "preset": "p" * 300})
    assert name.endswith(".jpg") and len(name.encode()) <= MAX_NAME_BYTES
    numbered = numbered_name("x" * 300 + ".jpg", 12)
    assert numbered.endswith(" (12).jpg") and len(numbered.encode()) <= MAX_NAME_BYTES


def test_names_are_nfc_normalised():
    decomposed = "Cafe\u0301"  # macOS file names arrive decomposed
    assert render_name("{stem}.jpg", {"stem": decomposed}) == "Caf\u00e9.jpg"


def test_symlinked_subfolder_cannot_escape_root(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "ink").symlink_to(outside)
    with pytest.raises(PhotoError, match="outside the output folder"):
        output_path(root, "{preset}/{stem}.jpg", TOKENS)


def test_counter_is_smallest_unused_four_digit_number(tmp_path):
    template = "{preset}/{stem}_{counter}.{ext}"
    first = output_path(tmp_path, template, TOKENS)
    assert first.name == "IMG_0001_0001.jpg"
    first.parent.mkdir(parents=True)
    first.touch()
    (first.parent / "IMG_0001_0003.jpg").touch()
    assert output_path(tmp_path, template, TOKENS).name == "IMG_0001_0002.jpg"


def test_photo_tokens(tmp_path):
    src = tmp_path / "Holiday Pic.JPG"
    Image.new("RGB", (8, 8), "red").save(src, "JPEG")
    photo = load_photo(src)
    tokens = photo_tokens(photo, "ink", 640, 480, now=datetime(2024, 5, 6, 7, 8, 9))
    assert tokens == {"stem": "Holiday Pic", "ext": "jpg", "preset": "ink", "date": "2024-05-06",
                      "time": "070809", "hash8": photo.sha256[:8], "width": "640", "height": "480"}
    assert photo_tokens(photo, "ink", 1, 1, ext="png")["ext"] == "png"


# --- writes ---------------------------------------------------------------------


def test_same_name_never_overwrites(tmp_path):
    dest = tmp_path / "out" / "same.png"
    a = save_photo(flat(0.2), dest).path
    b = save_photo(flat(0.8), dest).path
    assert a == dest and b.name == "same (1).png"
    assert np.asarray(Image.open(a))[0, 0, 0] == 51 and np.asarray(Image.open(b))[0, 0, 0] == 204
    assert save_photo(flat(0.5), dest).path.name == "same (2).png"
    assert not leftovers(tmp_path)


def test_link_race_moves_on_to_next_suffix(tmp_path, monkeypatch):
    """Another writer takes the name between our check and our link."""
    dest = tmp_path / "race.png"
    real_link = os.link

    def racing_link(src, dst):
        if Path(dst) == dest and not dest.exists():
            dest.write_bytes(b"the other worker's photo")
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    result = save_photo(flat(0.3), dest)
    assert result.path.name == "race (1).png"
    assert dest.read_bytes() == b"the other worker's photo"


def test_no_clobber_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    dest = tmp_path / "fat.png"
    dest.write_bytes(b"existing")
    result = save_photo(flat(0.3), dest)
    assert result.path.name == "fat (1).png" and dest.read_bytes() == b"existing"
    assert Image.open(result.path).size == (16, 16)
    assert not leftovers(tmp_path)


def test_skip_and_overwrite(tmp_path):
    dest = tmp_path / "x.png"
    dest.write_bytes(b"keep me")
    assert save_photo(flat(0.3), dest, collision="skip", sidecar={"a": 1}) is None
    assert dest.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    result = save_photo(flat(0.3), dest, collision="overwrite")
    assert result.path == dest and Image.open(dest).size == (16, 16)
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("where", ["fsync", "encoder"])
def test_enospc_leaves_nothing_behind(tmp_path, monkeypatch, where):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "fsync":
        monkeypatch.setattr(os, "fsync", full)
    else:
        monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "out"
    with pytest.raises(PhotoError) as info:
        save_photo(flat(0.5), out / "full.jpg", sidecar={"a": 1})
    err = info.value
    assert err.permanent is False
    assert "no space left" in err.reason and f"free space on {out}" in err.fix
    assert list(out.iterdir()) == []


def test_permission_error_is_clear_and_clean(tmp_path, monkeypatch):
    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "link", denied)
    with pytest.raises(PhotoError, match="permission denied writing in"):
        save_photo(flat(0.5), tmp_path / "p.jpg")
    assert list(tmp_path.iterdir()) == []


def test_bad_output_suffix_and_depth(tmp_path):
    with pytest.raises(PhotoError, match="output format"):
        save_photo(flat(0.5), tmp_path / "x.bmp")
    with pytest.raises(PhotoError, match="only available as TIFF"):
        save_photo(flat(0.5), tmp_path / "x.png", bit_depth=16)
    with pytest.raises(ValueError, match="collision"):
        save_photo(flat(0.5), tmp_path / "x.png", collision="merge")


def test_sidecar_written_next_to_output(tmp_path):
    result = save_photo(flat(0.5), tmp_path / "s.webp", sidecar={"preset": "ink", "when": datetime(2024, 1, 2)})
    assert result.sidecar == tmp_path / "s.webp.json"
    data = json.loads(result.sidecar.read_text())
    assert data["preset"] == "ink" and data["when"] == "2024-01-02 00:00:00"
    assert data["output"]["file"] == "s.webp" and data["output"]["width"] == 16
    again = save_photo(flat(0.6), tmp_path / "s.webp", sidecar={"preset": "ink"})
    assert again.sidecar.name == "s (1).webp.json"  # each output gets its own
    assert not leftovers(tmp_path)


def test_failed_sidecar_removes_the_output_too(tmp_path, monkeypatch):
    real_fsync, calls = os.fsync, []

    def fsync_fails_second_time(fd):
        calls.append(fd)
        if len(calls) == 3:  # image file, image folder, then the sidecar file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_second_time)
    with pytest.raises(PhotoError, match="no space left"):
        save_photo(flat(0.5), tmp_path / "s.png", sidecar={"preset": "ink"})
    assert list(tmp_path.iterdir()) == []


def test_clean_temp_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    stale = [tmp_path / f"{TEMP_PREFIX}1", tmp_path / "a" / "b" / f"{TEMP_PREFIX}2"]
    for p in stale:
        p.write_bytes(b"half a photo")
    keep = tmp_path / "a" / "photo.jpg"
    keep.write_bytes(b"x")
    (tmp_path / f"{TEMP_PREFIX}link").symlink_to(keep)
    fresh = tmp_path / f"{TEMP_PREFIX}3"
    fresh.write_bytes(b"in flight")
    old = os.stat(fresh).st_mtime - 3600
    for p in stale:
        os.utime(p, (old, old))
    assert sorted(clean_temp_files(tmp_path, older_than=60)) == sorted(stale)
    assert fresh.exists() and keep.exists() and (tmp_path / f"{TEMP_PREFIX}link").is_symlink()
    assert clean_temp_files(tmp_path) == [fresh]
    assert clean_temp_files(tmp_path / "missing") == []


# --- hostile source names (issue 11, item 4) ---------------------------------------

# Names Linux allows: bytes that are not UTF-8, newlines and control characters,
# and names near the 255-byte limit (253 bytes here, non-UTF-8 bytes included).
HOSTILE = [b"caf\xe9 latin-1.jpg", b"line\nbreak\x01\x7f.jpg", b"\xff\xfe" + "é".encode() * 123 + b"x.jpg"]


@pytest.mark.parametrize("raw", HOSTILE, ids=["latin1", "controls", "253-bytes"])
def test_sidecar_is_valid_utf8_json_whatever_the_name(tmp_path, raw):
    dest = tmp_path / os.fsdecode(raw)
    source = tmp_path / os.fsdecode(b"in-" + raw)
    result = save_photo(flat(0.5), dest, sidecar={"content": source, "names": [str(source)]})
    assert os.fsencode(result.path.name) == raw  # the output keeps the name it was given
    side = os.fsencode(result.sidecar.name)
    assert side.endswith(b".jpg.json") and len(side) <= MAX_NAME_BYTES
    data = json.loads(result.sidecar.read_bytes().decode("utf-8"))  # strict UTF-8, valid JSON
    assert data["output"]["file"] == escape_name(dest.name, controls=False)
    assert data["content"] == data["names"][0] == escape_name(str(source), controls=False)
    if b"\n" in raw:  # valid UTF-8 comes back exactly: JSON escapes control characters itself
        assert data["output"]["file"] == dest.name
    else:
        assert "\\xff" in data["output"]["file"] or "\\xe9" in data["output"]["file"]


def test_long_names_that_differ_in_their_tails_get_their_own_sidecars(tmp_path):
    dest = tmp_path / os.fsdecode(HOSTILE[2])
    first = save_photo(flat(0.5), dest, sidecar={})
    second = save_photo(flat(0.6), dest, sidecar={})  # "... (1).jpg": the tail is what differs
    assert first.path != second.path and first.sidecar != second.sidecar
    assert json.loads(first.sidecar.read_text())["output"]["file"] == escape_name(first.path.name, controls=False)
    assert json.loads(second.sidecar.read_text())["output"]["file"] == escape_name(second.path.name, controls=False)


def test_derived_and_numbered_names_of_long_undecodable_names_fit(tmp_path):
    name = os.fsdecode(HOSTILE[2])
    twin = numbered_name(name, 1)  # differs from `name` only in the tail
    for made in (numbered_name(name, 12), derived_name(name, ".error.txt"), derived_name(twin, ".error.txt")):
        raw = os.fsencode(made)
        assert len(raw) <= MAX_NAME_BYTES and raw.startswith(b"\xff\xfe\xc3\xa9")  # bytes kept, cut whole
        (tmp_path / made).write_bytes(b"")  # the file system accepts it
    assert numbered_name(name, 12).endswith(" (12).jpg")
    assert derived_name(name, ".error.txt").endswith(".jpg.error.txt")
    assert derived_name(name, ".error.txt") != derived_name(twin, ".error.txt")
    assert derived_name("photo.jpg", ".json") == "photo.jpg.json"  # short names are left alone
