"""What the daemon is doing: ledger figures plus each live process's own report.

Every running daemon/worker writes `state_dir/live/<role>-<pid>.json` about
once a second; `nst-watch status` reads those and the ledger, so it works
while the daemon runs, from any shell, without talking to it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..jobs import Ledger


def live_dir(state_dir: Path) -> Path:
    return state_dir / "live"


def write_live(state_dir: Path, role: str, data: dict) -> Path:
    folder = live_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{role}-{os.getpid()}.json"
    tmp = folder / f".{path.name}.tmp"
    tmp.write_text(json.dumps({**data, "pid": os.getpid(), "role": role, "updated": time.time()}))
    os.replace(tmp, path)
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_live(state_dir: Path) -> list[dict]:
    processes = []
    folder = live_dir(state_dir)
    if not folder.is_dir():
        return processes
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data["alive"] = pid_alive(int(data.get("pid", 0)))
        data["age"] = round(time.time() - float(data.get("updated", 0)), 1)
        processes.append(data)
    return processes


def snapshot(state_dir: Path, ledger: Ledger, *, recent: int = 10, failures: int = 20) -> dict:
    return {
        "counts": ledger.counts(),
        "processes": read_live(state_dir),
        "recent": [_job_view(j) for j in ledger.recent(recent)],
        "failures": [_job_view(j) for j in ledger.failures(failures)],
    }


def _job_view(job) -> dict:
    return {
        "id": job.id, "state": job.state, "preset": job.preset, "source": job.source_path,
        "output": job.output_path, "attempts": job.attempts, "error": job.error, "updated": job.updated_at,
    }


def status_line(counts: dict, watches: int) -> str:
    """The one-line STATUS= for systemd."""
    return (f"{watches} watches, {counts.get('pending', 0)} pending, {counts.get('leased', 0)} running, "
            f"{counts.get('done', 0)} done, {counts.get('failed', 0) + counts.get('dead', 0)} failed")


def render(snap: dict):
    """A rich renderable of a snapshot: counts, processes, recent jobs, failures."""
    from rich.console import Group
    from rich.table import Table

    counts = Table(title="jobs", show_header=True)
    for state in ("pending", "leased", "done", "failed", "dead"):
        counts.add_column(state, justify="right")
    counts.add_row(*(str(snap["counts"].get(s, 0)) for s in ("pending", "leased", "done", "failed", "dead")))
    parts = [counts]
    if snap["processes"]:
        procs = Table(title="processes")
        for col in ("role", "pid", "state", "watches / job"):
            procs.add_column(col)
        for p in snap["processes"]:
            state = "running" if p["alive"] else "gone"
            detail = ", ".join(f"{w['name']} ({w['mode']})" for w in p.get("watches", []))
            worker = p.get("worker") or {}
            if worker.get("jobs"):
                detail += f" job {worker['jobs']} {worker.get('preset')} step {worker.get('step')}/{worker.get('steps')}"
            procs.add_row(p["role"], str(p["pid"]), state, detail)
        parts.append(procs)
    job_columns = ("id", "state", "preset", "photo")
    if snap["recent"]:
        parts.append(_table("recent", job_columns + ("output",),
                            [_job_row(j) + (j["output"] or "",) for j in snap["recent"]]))
    if snap["failures"]:
        parts.append(_table("failures", job_columns + ("reason",),
                            [_job_row(j) + (j["error"] or "",) for j in snap["failures"]]))
    return Group(*parts)


def _job_row(job: dict) -> tuple[str, ...]:
    return str(job["id"]), job["state"], job["preset"], Path(job["source"]).name


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]):
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table
