"""PathFilter: ignore patterns, include patterns, recursion, jail to root. No disk access needed."""

from __future__ import annotations

import pytest

from nst_watch.watch import DEFAULT_IGNORE, PathFilter


@pytest.fixture
def root(tmp_path):
    return tmp_path / "in"


@pytest.mark.parametrize(
    "name",
    [
        ".DS_Store",
        "Thumbs.db",
        "THUMBS.DB",  # case-insensitive
        "desktop.ini",
        "a.tmp",
        "a.TMP",
        "x.jpg.part",
        "x.jpg.crdownload",
        "x.jpg.download",
        "~$report.docx",
        "photo.jpg~",
        "._a.jpg",
        ".hidden.jpg",
        ".goutputstream-ABC123",
        ".syncthing.x.jpg.tmp",
    ],
)
def test_default_ignore_rejects_temp_and_litter_names(root, name):
    assert not PathFilter(root, ignore=DEFAULT_IGNORE, recursive=True).accepts(root / name)


@pytest.mark.parametrize("folder", ["@eaDir", "#recycle", ".git", ".Trash-1000", "@EADIR"])
def test_any_ignored_component_rejects_files_inside(root, folder):
    flt = PathFilter(root, ignore=DEFAULT_IGNORE, recursive=True)
    assert not flt.accepts(root / folder / "x.jpg")
    assert not flt.accepts(root / "sub" / folder / "deeper" / "x.jpg")
    assert not flt.accepts_dir(root / folder)
    assert flt.accepts(root / "sub" / "x.jpg")


def test_ignore_none_means_defaults(root):
    assert PathFilter(root).ignore == DEFAULT_IGNORE
    assert not PathFilter(root).accepts(root / ".DS_Store")
    assert PathFilter(root, ignore=[]).accepts(root / ".DS_Store")


def test_include_matches_file_name_case_insensitively(root):
    flt = PathFilter(root, include=["*.jpg", "*.tif"], ignore=DEFAULT_IGNORE, recursive=True)
    assert flt.accepts(root / "a.jpg")
    assert flt.accepts(root / "B.JPG")
    assert flt.accepts(root / "sub.jpg.d" / "c.tif")
    assert not flt.accepts(root / "a.png")
    assert not flt.accepts(root / "a.jpg.part")  # ignore wins over include
    assert not flt.accepts(root / "._a.jpg")


def test_non_recursive_rejects_subfolders(root):
    flat = PathFilter(root, ignore=DEFAULT_IGNORE, recursive=False)
    deep = PathFilter(root, ignore=DEFAULT_IGNORE, recursive=True)
    assert flat.accepts(root / "a.jpg")
    assert not flat.accepts(root / "sub" / "a.jpg")
    assert not flat.accepts_dir(root / "sub")
    assert deep.accepts(root / "sub" / "a.jpg")
    assert deep.accepts_dir(root / "sub")


def test_outside_root_and_root_itself_rejected(root):
    flt = PathFilter(root, ignore=[], recursive=True)
    assert not flt.accepts(root)
    assert not flt.accepts(root.parent / "a.jpg")
    assert not flt.accepts(root.parent / "inbox" / "a.jpg")  # '/x/in' is not a prefix of '/x/inbox'
    assert not flt.accepts(root / ".." / "a.jpg")
    assert not flt.accepts("relative/a.jpg")
    assert not flt.accepts(b"not-a-str-path")  # never raises


def test_exclude_dirs_reject_everything_below(root):
    flt = PathFilter(root, ignore=[], recursive=True, exclude_dirs=[root / "out", root / "failed"])
    assert not flt.accepts(root / "out" / "a.jpg")
    assert not flt.accepts(root / "failed" / "x" / "a.jpg")
    assert not flt.accepts_dir(root / "out")
    assert flt.accepts(root / "outbox" / "a.jpg")
    assert flt.accepts(root / "a.jpg")
