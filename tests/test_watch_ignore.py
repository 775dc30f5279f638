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


def test_ignored_by_names_the_pattern_that_rejects(root):
    flt = PathFilter(root, include=["*.jpg"], ignore=DEFAULT_IGNORE + ["*-draft.*"], recursive=True)
    assert flt.ignored_by(root / "._IMG.JPG") == ".*"  # the first rule that matches, case-insensitive
    assert flt.ignored_by(root / "@EADIR" / "x.jpg") == "@eaDir"  # a folder's rule, for a file inside it
    assert flt.ignored_by(root / "beach-draft.jpg") == "*-draft.*"  # the watch's own pattern
    assert flt.ignored_by(root / "beach.jpg") is None
    assert flt.ignored_by(root.parent / "elsewhere" / ".x.jpg") is None  # outside the watch: not its business


def test_wants_name_and_reports_dir(root):
    flat = PathFilter(root, include=["*.jpg"], recursive=False)
    assert flat.wants_name(root / "y.JPG") and not flat.wants_name(root / "notes.txt")
    assert flat.reports_dir(root / "y.jpg")  # a folder named like a photo, never entered: worth reporting
    assert not flat.reports_dir(root / "holiday")  # an ordinary folder's name says nothing
    assert not flat.reports_dir(root)
    deep = PathFilter(root, include=["*.jpg"], recursive=True)
    assert not deep.reports_dir(root / "y.jpg")  # a recursive watch enters it and takes what is inside
    anything = PathFilter(root, recursive=False)
    assert not anything.wants_name(root / "2024")  # no include patterns: no name is a photo name


def test_passed_over_only_for_photo_names_the_watch_would_see(root):
    flat = PathFilter(root, include=["*.jpg"], ignore=DEFAULT_IGNORE, recursive=False)
    assert flat.passed_over(root / "._IMG.jpg") == ".*"
    assert flat.passed_over(root / "IMG.jpg") is None  # taken, not passed over
    assert flat.passed_over(root / ".DS_Store") is None  # litter: no photo name
    assert flat.passed_over(root / "sub" / "._IMG.jpg") is None  # a flat watch never looks in sub/
    deep = PathFilter(root, include=["*.jpg"], ignore=DEFAULT_IGNORE, recursive=True)
    assert deep.passed_over(root / "sub" / "._IMG.jpg") == ".*"
    assert deep.passed_over(root / "@eaDir" / "SYNOPHOTO_THUMB_M.jpg") is None  # inside an ignored folder
