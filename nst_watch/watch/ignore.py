"""Which paths under a hot folder are candidates for processing.

Pure string work: `PathFilter.accepts` never touches the disk, so watchdog
handler threads can call it for every event without blocking.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from pathlib import Path

# Names that are never photos: temp names that downloaders, sync tools and
# editors write before renaming into place, and OS/NAS metadata litter.
DEFAULT_IGNORE: list[str] = [
    ".*",
    "*.part",
    "*.crdownload",
    "*.download",
    "*.tmp",
    "~$*",
    "*~",
    "._*",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "@eaDir",
    "#recycle",
    ".goutputstream-*",
    ".syncthing.*",
]


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive regex for a list of fnmatch patterns (None if empty)."""
    parts = [fnmatch.translate(p) for p in patterns]
    if not parts:
        return None
    return re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE)


class PathFilter:
    """Decides whether a path under `root` may become a job.

    A path is rejected when:
      * it is `root` itself or lies outside `root` (or inside an `exclude_dirs` entry);
      * any component of its path relative to `root` matches an `ignore`
        pattern, so everything inside `@eaDir/` or a dot-folder is skipped too;
      * the watch is not recursive and the path is inside a subfolder;
      * `include` patterns are given and the file name matches none of them.

    Matching is fnmatch, case-insensitive (`*.jpg` matches `IMG.JPG`), on
    names only. Paths are compared lexically after `os.path.abspath`; nothing
    is resolved, so a symlinked file keeps its own name and is rejected later
    by the settle tracker rather than silently followed.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        include: list[str] | None = None,
        ignore: list[str] | None = None,
        recursive: bool = False,
        exclude_dirs: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.root = Path(os.path.abspath(root))
        self.include = list(include or [])
        self.ignore = list(DEFAULT_IGNORE if ignore is None else ignore)
        self.recursive = recursive
        self.exclude_dirs = [Path(os.path.abspath(d)) for d in exclude_dirs]
        self._include_re = _compile(self.include)
        self._ignore_re = _compile(self.ignore)
        self._root_str = str(self.root)

    def __repr__(self) -> str:
        return (
            f"PathFilter({self._root_str!r}, include={self.include!r}, "
            f"recursive={self.recursive}, exclude_dirs={[str(d) for d in self.exclude_dirs]!r})"
        )

    def _relative_parts(self, path: str | os.PathLike[str]) -> tuple[str, ...] | None:
        """Components of `path` relative to root; None if outside, excluded or root itself."""
        absolute = os.path.abspath(os.fspath(path))
        # commonpath is lexical and avoids the '/data/in' vs '/data/inbox' prefix trap.
        try:
            if os.path.commonpath([self._root_str, absolute]) != self._root_str:
                return None
        except ValueError:  # different drives / mixed absolute and relative
            return None
        for excluded in self.exclude_dirs:
            if os.path.commonpath([str(excluded), absolute]) == str(excluded):
                return None
        rel = os.path.relpath(absolute, self._root_str)
        if rel == os.curdir:
            return None
        return tuple(Path(rel).parts)

    def _is_ignored_name(self, name: str) -> bool:
        return self._ignore_re is not None and self._ignore_re.match(name) is not None

    def _parts(self, path: str | os.PathLike[str]):
        """Relative path components, or None for anything outside root or unparsable."""
        try:
            return self._relative_parts(path)
        except (TypeError, ValueError):
            return None

    def accepts(self, path: str | os.PathLike[str]) -> bool:
        """True if `path` (a file) may become a job. Never touches the disk, never raises."""
        parts = self._parts(path)
        if parts is None:
            return False
        if not self.recursive and len(parts) > 1:
            return False
        if any(self._is_ignored_name(part) for part in parts):
            return False
        if self._include_re is not None and self._include_re.match(parts[-1]) is None:
            return False
        return True

    def ignored_by(self, path: str | os.PathLike[str]) -> str | None:
        """The first ignore pattern that rejects `path` (any component), or None.

        For status: "ignored by pattern '._*'" tells the operator which rule
        to change; the combined regex in `accepts` cannot say which one matched.
        """
        parts = self._parts(path)
        if not parts or self._ignore_re is None:
            return None
        for part in parts:
            if self._is_ignored_name(part):
                return next((p for p in self.ignore if re.match(fnmatch.translate(p), part, re.IGNORECASE)), None)
        return None

    def passed_over(self, path: str | os.PathLike[str]) -> str | None:
        """The ignore pattern that turns a would-be photo away by its own name (`._IMG.jpg`), else None.

        Only for a file whose name matches `include` and that the watch would
        otherwise see: files inside an ignored folder (`@eaDir/`) or below a
        flat watch are litter the scan never visits, so they are not reported.
        """
        parts = self._parts(path)
        if not parts or not self.wants_name(path) or not self._is_ignored_name(parts[-1]):
            return None
        if len(parts) > 1 and (not self.recursive or any(self._is_ignored_name(p) for p in parts[:-1])):
            return None
        return self.ignored_by(path)

    def wants_name(self, path: str | os.PathLike[str]) -> bool:
        """True if the last component matches an explicit `include` pattern (disk untouched).

        With no include patterns every name would match, so nothing is "wanted"
        by name alone: a folder called `2024` must not be reported as a photo.
        """
        if self._include_re is None:
            return False
        try:
            name = os.path.basename(os.fspath(path))
        except TypeError:
            return False
        return self._include_re.match(name) is not None

    def reports_dir(self, path: str | os.PathLike[str]) -> bool:
        """True for a directory the scan will not enter but whose name says photo (`y.jpg/`).

        Such a folder can never become a job, and it is not silently dropped
        either: the daemon lists it in `status` as "a directory".
        """
        return self.wants_name(path) and self._parts(path) is not None and not self.accepts_dir(path)

    def accepts_dir(self, path: str | os.PathLike[str]) -> bool:
        """True if a scan should descend into directory `path` (recursive watches only).

        Lets `scan` prune `@eaDir/`, dot-folders and excluded output folders
        instead of listing thousands of thumbnails only to reject each one.
        """
        if not self.recursive:
            return False
        parts = self._parts(path)
        if parts is None:
            return False
        return not any(self._is_ignored_name(part) for part in parts)
