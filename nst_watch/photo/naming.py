"""Output names from templates such as ``{preset}/{date}/{stem}_{hash8}.{ext}``.

Tokens (str.format fields, no format specs or conversions):

========== =================================================================
{stem}     source file name without its extension
{ext}      output extension without the dot (lower case), e.g. ``jpg``
{preset}   preset name
{date}     ``YYYY-MM-DD`` of processing time (local)
{time}     ``HHMMSS`` of processing time (no colons: illegal on Windows/SMB)
{hash8}    first 8 hex digits of the source file's SHA-256
{counter}  the smallest number, written with at least 4 digits (``0001``),
           for which the whole rendered path does not exist yet; chosen by
           output_path(). Two workers may pick the same number at once; the
           no-clobber write then adds `` (1)`` rather than overwrite.
{width}    output width in pixels
{height}   output height in pixels
========== =================================================================

Every substituted value is NFC-normalised, sanitised with pathvalidate (``/``,
``\\``, NUL, newlines, other illegal characters and bytes that are not UTF-8
become ``_``) and capped at 100 bytes, so a value can never add a folder or
escape the output root. ``/`` in the template itself makes subfolders. Each
path component is then sanitised again, stripped of leading dots (no hidden
files, no ``..``) and capped at 255 bytes of UTF-8 with its extension kept.

Names of files about a file (sidecars, error reports) come from
:func:`derived_name`; text that quotes a file name comes from
:func:`escape_name`, so no name can make a report or JSON invalid UTF-8.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
import unicodedata
from pathlib import Path

from pathvalidate import sanitize_filename

from nst_watch.errors import PhotoError

TOKENS = frozenset({"stem", "ext", "preset", "date", "time", "hash8", "counter", "width", "height"})
MAX_NAME_BYTES = 255  # NAME_MAX on ext4, XFS, btrfs, APFS, NTFS (UTF-16, but close)
MAX_VALUE_BYTES = 100
_MAX_EXT_BYTES = 16
_MAX_COUNTER = 1_000_000
# os.fsdecode turns bytes that are not UTF-8 into lone surrogates (U+DC80-DCFF);
# "surrogateescape" turns them back into the very bytes the file system holds.
_FS_ERRORS = "surrogateescape"
_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def validate_template(template: str) -> None:
    """Raise ValueError (with the reason) unless `template` is a usable name template."""
    if not isinstance(template, str) or not template.strip():
        raise ValueError("output template is empty")
    if "\x00" in template:
        raise ValueError("output template contains a NUL character")
    if template.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", template):
        raise ValueError(f"output template {template!r} is absolute; it must be relative to the output folder")
    parts = re.split(r"[/\\]", template)
    if any(part.strip() == ".." for part in parts):
        raise ValueError(f"output template {template!r} contains '..'; it must stay inside the output folder")
    if not parts[-1].strip():
        raise ValueError(f"output template {template!r} ends with '/'; it must end with a file name")
    for name in _fields(template):
        if name not in TOKENS:
            raise ValueError(
                f"output template {template!r} uses unknown token {{{name}}}; "
                f"known tokens: {', '.join('{' + t + '}' for t in sorted(TOKENS))}"
            )


def _fields(template: str) -> list[str]:
    """Field names used by `template`; ValueError for specs, conversions, bad braces."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"output template {template!r} has unbalanced braces ({exc}); "
                         "write {{ or }} for literal braces") from None
    names = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"output template {template!r}: format specs and conversions such as "
                             f"{{{name}:...}} or {{{name}!r}} are not supported")
        if name == "" or name.isdigit():
            raise ValueError(f"output template {template!r} has an empty {{}}; name a token such as {{stem}}")
        names.append(name)
    return names


def render_name(template: str, tokens: dict) -> str:
    """Render `template` into a safe relative path (components joined by '/')."""
    validate_template(template)
    values = {k: _clean_value(v) for k, v in tokens.items() if k in TOKENS}
    missing = sorted(set(_fields(template)) - set(values))
    if missing:
        hint = " (output_path() fills {counter})" if "counter" in missing else ""
        raise ValueError(f"output template {template!r} uses {', '.join('{' + m + '}' for m in missing)} "
                         f"but no value was given{hint}")
    text = template.format_map(values)
    parts = [p for p in re.split(r"[/\\]", text) if p.strip() not in ("", ".")]
    return "/".join(_clean_component(p) for p in parts)


def _clean_value(value) -> str:
    # Bytes that are not UTF-8 (a Latin-1 name from an old archive) cannot be
    # written on Windows/SMB shares nor encoded as UTF-8: they become "_".
    text = unicodedata.normalize("NFC", _SURROGATES.sub("_", str(value)))
    text = sanitize_filename(text, replacement_text="_", platform="universal")
    if text and not text.strip("."):  # "." or "..": would eat the extension's dot
        text = "_"
    return _cut_bytes(text, MAX_VALUE_BYTES)


def _clean_component(part: str) -> str:
    part = unicodedata.normalize("NFC", _SURROGATES.sub("_", part))
    part = sanitize_filename(part, replacement_text="_", platform="universal").lstrip(". ")
    return cap_name(part or "_")


def name_bytes(text: str) -> int:
    """Length of `text` in bytes as the file system stores it (UTF-8, undecodable bytes as they were)."""
    return len(text.encode("utf-8", _FS_ERRORS))


def _cut_bytes(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` bytes (see name_bytes) without splitting a character."""
    if name_bytes(text) <= limit:
        return text
    used = 0
    for i, char in enumerate(text):
        used += name_bytes(char)
        if used > limit:
            return text[:i]
    return text


def _split_ext(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or name_bytes(ext) > _MAX_EXT_BYTES:
        return name, ""
    return stem, "." + ext


def cap_name(name: str, extra: str = "", limit: int = MAX_NAME_BYTES) -> str:
    """`name` with `extra` added before the extension, at most `limit` bytes, extension kept.

    `name` may hold undecodable bytes (str from os.fsdecode); they count as one
    byte each and are kept, so the result still names a file in the same folder.
    """
    stem, ext = _split_ext(name)
    budget = limit - name_bytes(extra + ext)
    stem = _cut_bytes(stem, budget).rstrip(" ") or "_"
    return stem + extra + ext


def numbered_name(name: str, n: int) -> str:
    """``photo.jpg`` -> ``photo (n).jpg``, still within the length limit."""
    return cap_name(name, f" ({n})")


def sidecar_path(path: Path) -> Path:
    """Where the JSON sidecar of the file at `path` goes: ``photo.jpg`` -> ``photo.jpg.json`` (see derived_name)."""
    return path.with_name(derived_name(path.name, ".json"))


def derived_name(name: str, suffix: str) -> str:
    """The name of a file about `name`: ``photo.jpg`` -> ``photo.jpg.error.txt``, within 255 bytes.

    When `name` + `suffix` is too long, `name`'s stem is shortened and marked
    with ``~`` and 8 hex digits of its hash (extension and `suffix` kept), so
    two long names that differ only in their tails (``x… (1).jpg`` and
    ``x… (2).jpg``) still get different files.
    """
    if name_bytes(name + suffix) <= MAX_NAME_BYTES:
        return name + suffix
    tag = "~" + hashlib.sha256(name.encode("utf-8", _FS_ERRORS)).hexdigest()[:8]
    return cap_name(name, tag, MAX_NAME_BYTES - name_bytes(suffix)) + suffix


def _escape_char(match: re.Match) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_name(text: str, *, controls: bool = True) -> str:
    """`text` made safe for UTF-8 reports and JSON, still recognisable.

    Undecodable bytes (surrogates from os.fsdecode) become ``\\xNN``; with
    `controls`, so do newlines and other control characters, which would
    otherwise break a line-based report or a terminal.
    """
    try:
        data = text.encode("utf-8", _FS_ERRORS)
    except UnicodeEncodeError:  # a surrogate that no file name can hold
        data = text.encode("utf-8", "backslashreplace")
    text = data.decode("utf-8", "backslashreplace")
    if controls:
        text = _CONTROLS.sub(_escape_char, text)
    return text


def output_path(root: Path, template: str, tokens: dict) -> Path:
    """The output path for `tokens` under `root`: sanitised, and jailed to `root`.

    Raises ValueError for a bad template and PhotoError if the path would
    leave `root` (possible only through a symlinked subfolder).
    """
    root = Path(root).resolve()
    uses_counter = "counter" in _fields(template)
    for n in range(1, _MAX_COUNTER if uses_counter else 2):
        values = {**tokens, "counter": f"{n:04d}"} if uses_counter else tokens
        path = root / render_name(template, values)
        if not uses_counter or not os.path.lexists(path):
            break
    else:
        raise PhotoError(path, f"no free {{counter}} value below {_MAX_COUNTER}")
    if not path.resolve().is_relative_to(root):
        raise PhotoError(path, f"resolves outside the output folder {root} (through a symbolic link)",
                         "remove the link or change the output template")
    return path
