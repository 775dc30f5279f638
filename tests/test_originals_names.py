"""Moving originals to failed/ and processed/ whatever their names (issue 11, item 4).

Real files on disk, a real ledger, the public finish_original: a name at the
255-byte limit must still be moved and reported (the report and collision
names are shortened, extension kept), a report must be valid UTF-8 whatever
bytes the name holds, and nothing already in the folder is ever replaced.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from nst_watch.config import Watch
from nst_watch.jobs import Ledger
from nst_watch.photo.naming import MAX_NAME_BYTES, escape_name
from nst_watch.service.originals import finish_original

ERROR = "/x/out/.nst-stage-job1.jpg: could not encode the stylised image as JPEG (ValueError: boom)"
LONG = "é" * 122 + "xx.jpg"  # 250 bytes: "<name>.error.txt" and "<name> (1)" would not fit
NEWLINE = "forged\nphoto:   other.jpg\x01.jpg"  # a newline that would forge a report line


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "state" / "jobs.db") as led:
        yield led


def make_watch(tmp_path: Path, processed: str = "keep") -> Watch:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    return Watch(name="inbox", input=tmp_path / "inbox", output=tmp_path / "out", presets=["ink"],
                 failed=tmp_path / "failed", processed=processed)


def drop(watch: Watch, name: str, content: bytes = b"photo bytes") -> Path:
    path = watch.input / name
    path.write_bytes(content)
    return path


def finish(ledger: Ledger, watch: Watch, path: Path, *, ok: bool) -> Path | None:
    """Run one job for `path` to done or failed, then hand the original to finish_original."""
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    job = ledger.add(sha256=sha, preset="ink", preset_hash="h1", source_path=path, watch=watch.name).job
    [claimed] = ledger.claim("w1")
    assert claimed.id == job.id
    if ok:
        ledger.complete("w1", job.id, watch.output / "out.jpg")
    else:
        ledger.fail("w1", job.id, ERROR, permanent=True)
    return finish_original(ledger, watch, sha, path)


def names(folder: Path) -> list[bytes]:
    return sorted(os.fsencode(p.name) for p in folder.iterdir())


def report_of(moved: Path) -> Path:
    [report] = [p for p in moved.parent.iterdir() if p.name.endswith(".error.txt") and
                os.fsencode(p.name).startswith(os.fsencode(moved.stem)[:100])]
    return report


@pytest.mark.parametrize("name", [LONG, NEWLINE], ids=["250-bytes", "newline"])
def test_failed_photo_is_moved_and_reported_whatever_its_name(tmp_path, ledger, name):
    watch = make_watch(tmp_path)
    moved = finish(ledger, watch, drop(watch, name), ok=False)
    assert moved == watch.failed / name and moved.read_bytes() == b"photo bytes"
    assert names(watch.input) == []
    [report] = [p for p in watch.failed.iterdir() if p != moved]
    raw = os.fsencode(report.name)
    assert len(raw) <= MAX_NAME_BYTES and raw.endswith(b".jpg.error.txt")
    text = report.read_bytes().decode("utf-8")  # strict: the report is always valid UTF-8
    lines = text.splitlines()
    assert f"photo:   {escape_name(name)}" in lines
    assert sum(line.startswith("photo:") for line in lines) == 1  # no line forged by the name
    assert ERROR in text and "cause above" not in text
    # Retried and done: the photo goes back to the inbox and its report goes away.
    ledger.retry(failed=True)
    [job] = ledger.claim("w1")
    ledger.complete("w1", job.id, watch.output / "out.jpg")
    back = finish_original(ledger, watch, job.sha256, moved)
    assert back == watch.input / name and names(watch.failed) == []


def test_long_name_collisions_in_failed_never_replace_anything(tmp_path, ledger):
    watch = make_watch(tmp_path)
    first = finish(ledger, watch, drop(watch, LONG, b"first"), ok=False)
    first_report = report_of(first)
    before = first_report.read_bytes()
    second = finish(ledger, watch, drop(watch, LONG, b"second"), ok=False)  # same name, other photo
    assert second != first and second.name.endswith(" (1).jpg")
    assert len(os.fsencode(second.name)) <= MAX_NAME_BYTES
    assert first.read_bytes() == b"first" and second.read_bytes() == b"second"
    assert first_report.read_bytes() == before  # the first photo's report is untouched
    reports = [p for p in watch.failed.iterdir() if p.name.endswith(".error.txt")]
    assert len(reports) == 2 and all(len(os.fsencode(p.name)) <= MAX_NAME_BYTES for p in reports)
    assert not [p for p in watch.failed.iterdir() if p.name.startswith(".nst-tmp-")]


def test_long_name_moves_to_processed_with_a_short_enough_collision_name(tmp_path, ledger):
    watch = make_watch(tmp_path, processed=f"move:{tmp_path / 'done'}")
    done = tmp_path / "done"
    first = finish(ledger, watch, drop(watch, LONG, b"first"), ok=True)
    second = finish(ledger, watch, drop(watch, LONG, b"second"), ok=True)
    assert first == done / LONG and second.name.endswith(" (1).jpg") and second.parent == done
    assert first.read_bytes() == b"first" and second.read_bytes() == b"second"
    assert all(len(n) <= MAX_NAME_BYTES for n in names(done)) and names(watch.input) == []


def test_failed_photo_with_undecodable_name_is_moved_and_reported(tmp_path, ledger):
    watch = make_watch(tmp_path)
    name = os.fsdecode(b"caf\xe9 " + b"\xff" * 240 + b".jpg")  # 249 bytes, not UTF-8
    moved = finish(ledger, watch, drop(watch, name), ok=False)
    assert os.fsencode(moved.name) == os.fsencode(name)
    text = report_of(moved).read_bytes().decode("utf-8")
    assert f"photo:   {escape_name(name)}" in text.splitlines() and "caf\\xe9 \\xff" in text
