"""`nst-watch status` tells the truth: whether a daemon runs, no ghosts, no finished job shown running,
and no file name can break its table, its JSON, the live status file or the sd_notify STATUS= line.

Real daemon processes, real signals (SIGKILL included), the real ledger.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_kit import Studio, photo, wait_until
from nst_watch.service.status import printable, proc_start
from test_service import NotifySocket

pytestmark = pytest.mark.slow


def nst(*args, columns: int = 300):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True,
                          timeout=120, env={**os.environ, "COLUMNS": str(columns)})


def strict_json(raw: bytes):
    """Parse as a strict consumer would: UTF-8, no NaN/Infinity, no lone surrogates anywhere."""
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    data = json.loads(raw.decode("utf-8"), parse_constant=refuse)

    def walk(value):
        if isinstance(value, str):
            value.encode("utf-8")  # raises on a lone surrogate
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(data)
    return data


def status(studio) -> dict:
    result = nst("status", "-c", studio.config, "--json")
    assert result.returncode == 0, result.stderr
    return strict_json(result.stdout)


def table(studio) -> str:
    result = nst("status", "-c", studio.config)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode("utf-8")


def live_files(studio) -> list[Path]:
    return sorted((studio.root / "state" / "live").glob("*.json"))


def test_status_of_a_config_never_run_reports_and_creates_nothing(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    snap = status(studio)
    assert snap["running"] is False and snap["counts"]["pending"] == 0
    assert "No nst-watch daemon is running" in table(studio)
    assert not (studio.root / "state").exists()  # looking writes no ledger


def test_status_says_no_daemon_runs_and_forgets_killed_ones(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    snap = status(studio)
    assert snap["running"] is False and snap["processes"] == []
    assert "No nst-watch daemon is running" in table(studio)

    daemon = studio.start(role="watch").wait_ready()
    wait_until(lambda: status(studio)["running"], what="status to see the daemon")
    assert "No nst-watch daemon is running" not in table(studio)
    [process] = status(studio)["processes"]
    assert process["pid"] == daemon.proc.pid and process["state"] == "running"

    daemon.kill()  # SIGKILL: no chance to remove its live file
    [left] = live_files(studio)
    snap = status(studio)
    assert snap["running"] is False and snap["processes"] == []
    assert "No nst-watch daemon is running" in table(studio)

    # The pid reused by an unrelated process: still gone (its start time differs).
    stranger = subprocess.Popen(["sleep", "120"])
    try:
        record = json.loads(left.read_text())
        left.write_text(json.dumps({**record, "pid": stranger.pid}))
        assert status(studio)["running"] is False
        # Even the very same process, if it stopped updating its file long ago, is not listed as running.
        stale = tmp_path / "state" / "live" / f"watch-{stranger.pid}.json"
        stale.write_text(json.dumps({**record, "pid": stranger.pid, "start": proc_start(stranger.pid),
                                     "updated": record["updated"] - 3600}))
        assert status(studio)["running"] is False

        # The next daemon clears what dead ones left behind.
        daemon = studio.start(role="watch").wait_ready()
        try:
            wait_until(lambda: status(studio)["running"], what="status to see the new daemon")
            assert not left.exists()
            assert [p["pid"] for p in status(studio)["processes"]] == [daemon.proc.pid]
        finally:
            assert daemon.stop() == 0
    finally:
        stranger.kill()
        stranger.wait()
    assert live_files(studio) == [] or all("watch-" in p.name for p in live_files(studio))
    assert status(studio)["running"] is False


def test_a_finished_job_is_never_shown_running(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"batch": 1})
    daemon = studio.start().wait_ready()
    try:
        for i in range(4):
            photo(studio.inbox / f"shot{i}.jpg", seed=i)
        checked = set()
        while len(checked) < 4:
            finished = re.findall(r"done: (\S+) \[a\]", daemon.log)
            new = [f for f in finished if f not in checked]
            if not new:
                wait_until(lambda: len(re.findall(r"done: ", daemon.log)) > len(checked), what="next done: line")
                continue
            snap = status(studio)  # right after the `done:` line
            ids = {j.id for j in studio.jobs() if j.source_path in new}
            shown = {job for p in snap["processes"] for job in (p.get("worker") or {}).get("jobs", [])}
            assert not ids & shown, f"finished job(s) {ids & shown} shown as running"
            checked.update(new)
    finally:
        assert daemon.stop() == 0


HOSTILE = [
    "new\nline.jpg",
    "esc\x1b[31mred\x1b[0m.jpg",
    "[bold]markup[red]not red.jpg",  # rich markup, were it printed as markup
    "bidi\u202egpj.exe.jpg",
    "tab\tbell\x07cr\r.jpg",
]
NOT_UTF8 = os.fsdecode(b"caf\xe9-latin1.jpg")


def test_hostile_file_names_cannot_break_status(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"batch": 1})
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = studio.start(env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        notify.wait_for("READY=1")
        for i, name in enumerate(HOSTILE + [NOT_UTF8]):
            photo(studio.inbox / name, seed=i)
        seen_live = []

        def settled():
            seen_live.extend(p.read_bytes() for p in live_files(studio))
            return status(studio)["counts"]["done"] == len(HOSTILE) + 1

        wait_until(settled, timeout=120, what="every photo done")
        snap = status(studio)
        seen_live.extend(p.read_bytes() for p in live_files(studio))
    finally:
        assert daemon.stop() == 0

    # --json: one valid object; the real names survive for scripts (bytes that are not UTF-8 as \\xNN text).
    assert {Path(j["source"]).name for j in snap["recent"]} == set(HOSTILE) | {"caf\\xe9-latin1.jpg"}
    # The live status file: strict JSON every time it was read.
    assert seen_live
    for raw in seen_live:
        strict_json(raw)
    # The table: no control character reaches the terminal, each job is one row with its name escaped.
    text = table(studio)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202e]", text), repr(text)
    lines = text.splitlines()
    for name in HOSTILE:
        shown = printable(name)
        assert "\\" in shown or name.startswith("[")
        assert sum(shown in line for line in lines) == 1, (shown, text)
    assert sum("caf\\xe9-latin1.jpg" in line for line in lines) == 1, text
    # sd_notify: every datagram is KEY=VALUE lines, STATUS= numbers only.
    messages = notify.drain()
    assert any(m.startswith("STATUS=") for m in messages)
    for message in messages:
        for line in message.split("\n"):
            assert re.fullmatch(r"[A-Z_]+=[^\x00-\x1f]*", line), repr(message)
            if line.startswith("STATUS="):
                # Numbers and fixed words only: a running job's progress, never its file's name.
                assert re.fullmatch(r"STATUS=\d+ watches, \d+ pending, \d+ running, \d+ done, \d+ failed"
                                    r"(, \d+ not taken)?(; job \d+(, \d+)*: step \d+/~?\d+(, tile \d+/\d+)?"
                                    r"(, ETA \d+ s)?)*", line), line


def test_a_running_job_shows_early_stoppings_estimate_in_status_and_status_line():
    """step 40/~210 and the engine's ETA, in numbers only (STATUS= carries no file name)."""
    from nst_watch.service.status import status_line, step_progress

    worker = {"jobs": [3], "photos": ["a\nb.jpg"], "step": 40, "steps": 500, "expected_steps": 210, "eta": 35.2,
              "tile": 0, "tiles": 0}
    assert step_progress(worker) == "step 40/~210, ETA 35 s"
    line = status_line({"pending": 1, "leased": 1}, 1, running=[worker])
    assert line.endswith("; job 3: step 40/~210, ETA 35 s") and "\n" not in line
    # An event from before the estimate (or a run without early stopping): its most, no tilde.
    assert step_progress({**worker, "expected_steps": 0, "eta": None}) == "step 40/500"
    assert step_progress({**worker, "expected_steps": 500, "tiles": 50, "tile": 7}) == "step 40/500, tile 7/50, ETA 35 s"


def test_a_job_waiting_for_a_retry_shows_why_and_when(tmp_path):
    """Not plain `pending`: its reason and its next try, in the table and in --json (issue 21, item 5)."""
    from nst_watch.jobs import Ledger

    studio = Studio(tmp_path, presets=("a",))
    source = photo(studio.inbox / "p.jpg")
    with Ledger(tmp_path / "state" / "jobs.db") as ledger:
        job = ledger.add(sha256="0" * 64, preset="a", preset_hash="h", source_path=source, watch="inbox",
                         output_dir=studio.outbox).job
        [claimed] = ledger.claim("w", limit=1)
        assert claimed.id == job.id
        assert ledger.fail("w", job.id, "[Errno 28] No space left on device", permanent=False) == "pending"
    table = subprocess.run([sys.executable, "-m", "nst_watch", "status", "-c", str(studio.config)],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert "waiting" in table.stdout and "No space left on device" in table.stdout, table.stdout
    assert re.search(r"in \d+ s", table.stdout), table.stdout
    data = json.loads(subprocess.run([sys.executable, "-m", "nst_watch", "status", "-c", str(studio.config),
                                      "--json"], capture_output=True, text=True, timeout=60).stdout)
    [waiting] = data["waiting"]
    assert waiting["id"] == job.id and "No space" in waiting["error"] and waiting["next_try"] > time.time()
