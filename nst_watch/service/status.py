"""What the daemon is doing: ledger figures plus each live process's own report.

Every running daemon/worker writes `state_dir/live/<role>-<pid>.json` about
once a second; `nst-watch status` reads those and the ledger, so it works
while the daemon runs, from any shell, without talking to it.

A live file only counts while its process is there: a daemon killed with
SIGKILL leaves its file behind, so a file whose pid is gone (or belongs to a
newer process: the start time is recorded) or whose `updated` is older than
the `stale_after` it promised is not listed, and `running` says whether any
process is left. The ledger is the truth about jobs: a worker's report of
the job it is on is shown only while the ledger still has that job leased.

File names are hostile input (newlines, ANSI escapes, bytes that are not
UTF-8): everything shown goes through `printable`, everything written as
JSON through `jsonable`, so one job is one table row and JSON stays valid.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import unicodedata
from functools import lru_cache
from pathlib import Path

from ..jobs import LEASED, Ledger
from ..progress import step_text

# The daemon rewrites its file about once a second; a file older than this
# (unless it promised otherwise, as while loading the model) is a dead one.
STALE_SECONDS = 15.0
RECENT = 10  # recent jobs listed by `status` and the web view

# A worker's job and progress fields while it holds no job (worker.Activity's
# defaults): a report whose jobs have all left the ledger's lease shows these.
IDLE_PROGRESS = {"preset": None, "started": None, "step": 0, "steps": 0, "expected_steps": 0, "tile": 0, "tiles": 0,
                 "loss": None,
                 "scale": 0, "scales": 0, "iteration": 0, "iterations": 0, "width": 0, "height": 0,
                 "elapsed": None, "eta": None}


def live_dir(state_dir: Path) -> Path:
    return state_dir / "live"


@lru_cache(maxsize=8)
def _own_start(pid: int) -> int | None:
    return proc_start(pid)


def proc_start(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, Linux /proc); tells a reused pid apart. None if unknown."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            data = f.read()
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def write_live(state_dir: Path, role: str, data: dict, *, stale_after: float = STALE_SECONDS) -> Path:
    """Atomically replace this process's live file (tmp + rename: readers never see half a file)."""
    folder = live_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path = folder / f"{role}-{pid}.json"
    tmp = folder / f".{path.name}.tmp"
    record = {**data, "pid": pid, "role": role, "host": socket.gethostname(), "start": _own_start(pid),
              "updated": time.time(), "stale_after": stale_after}
    tmp.write_text(json.dumps(jsonable(record)), encoding="utf-8")
    os.replace(tmp, path)
    return path


def pid_alive(pid: int) -> bool:
    if pid <= 0:  # kill(0) and kill(-1) signal process groups: never "alive" here
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone(data: dict, now: float) -> bool:
    """True when a live file's writer is dead, replaced by another process, or silent too long."""
    try:
        pid = int(data["pid"])
        updated = float(data["updated"])
        stale_after = float(data.get("stale_after") or STALE_SECONDS)
    except (KeyError, TypeError, ValueError):
        return True
    if not math.isfinite(updated) or now - updated > stale_after:
        return True
    if data.get("host", socket.gethostname()) != socket.gethostname():
        return False  # another machine sharing the state dir: only its freshness can be judged
    if not pid_alive(pid):
        return True
    start, current = data.get("start"), proc_start(pid)
    return start is not None and current is not None and current != start


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_live(state_dir: Path) -> list[dict]:
    """The live files of processes that are still there (see the module docstring)."""
    processes = []
    folder = live_dir(state_dir)
    if not folder.is_dir():
        return processes
    now = time.time()
    for path in sorted(folder.glob("*.json")):
        data = _load(path)
        if data is None or _gone(data, now):
            continue
        data["alive"] = True
        data["age"] = round(now - float(data["updated"]), 1)
        processes.append(data)
    return processes


def prune_live(state_dir: Path) -> int:
    """Remove live files left by dead processes of this machine (SIGKILL, power cut); how many."""
    folder = live_dir(state_dir)
    removed = 0
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.glob("*.json"):
        data = _load(path)
        if data is None or data.get("host", socket.gethostname()) != socket.gethostname():
            continue
        try:
            pid = int(data.get("pid", 0))
        except (TypeError, ValueError):
            continue
        if pid == os.getpid() or not _gone({**data, "updated": now}, now):
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def jsonable(value):
    """`value` made safe for strict JSON: text as valid Unicode, no NaN/Infinity.

    Names that are not UTF-8 arrive as lone surrogates (os.fsdecode); strict
    parsers reject those even as \\u escapes, so each undecodable byte
    becomes the text \\xNN. Non-finite floats (a NaN loss) become null.
    """
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_valid_text(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return _valid_text(os.fsdecode(value))
    if isinstance(value, os.PathLike):
        return _valid_text(os.fspath(value))
    return value


def _valid_text(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from undecodable bytes
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Bidirectional overrides and isolates can make "gpj.exe" read as "exe.jpg".
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def tile_progress(worker: dict) -> str:
    """", tile 7/50" while a worker is inside an iteration of a tiled scale, else ""."""
    return f", tile {worker.get('tile')}/{worker['tiles']}" if worker.get("tiles") else ""


def step_progress(worker: dict) -> str:
    """A running worker's progress in numbers only: "step 40/~210, tile 7/50, ETA 35 s".

    `~` marks early stopping's estimate of the run's length (the engine's
    Progress.expected_steps); the ETA is the engine's too, and follows it.
    """
    text = step_text(worker.get("step") or 0, worker.get("expected_steps") or 0, worker.get("steps") or 0)
    eta = worker.get("eta")
    return text + tile_progress(worker) + (f", ETA {eta:.0f} s" if isinstance(eta, (int, float)) else "")


def printable(value) -> str:
    """`value` as one line of inert text for a terminal: control characters escaped.

    A newline would split a table row, an ANSI escape would recolour or move
    the cursor of whoever runs `status`; they are shown as \\n, \\x1b.
    Bytes that are not UTF-8 show as \\xNN. Other text is left alone.
    """
    text = _valid_text(value if isinstance(value, str) else str(value))
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def snapshot(state_dir: Path, ledger: Ledger, *, recent: int = RECENT, failures: int = 20) -> dict:
    """Everything `status` shows, JSON-ready (see `jsonable`)."""
    processes = read_live(state_dir)
    for process in processes:
        _trust_the_ledger(process, ledger)
    watches = [w for p in processes for w in (p.get("watches") or []) if isinstance(w, dict)]
    skipped = [{"watch": w.get("name"), **entry} for w in watches for entry in (w.get("skipped") or [])
               if isinstance(entry, dict)]
    # The daemon's view of the Ray cluster (`run`'s, else a `work --ray` dispatcher's), where scripts look first.
    clusters = sorted((p for p in processes if isinstance(p.get("cluster"), dict)),
                      key=lambda p: p.get("role") == "ray")
    return jsonable({
        "running": bool(processes),
        "state_dir": str(state_dir),
        "counts": ledger.counts(superseded=True),
        "cluster": clusters[0]["cluster"] if clusters else None,
        "processes": processes,
        "skipped": skipped,
        "skipped_total": sum(int(w.get("skipped_total") or 0) for w in watches),
        # Originals whose move failed (a full disk...): where they are, where they go, why; tried again by the intake.
        "unmoved": [{"path": m.source_path, "to": str(Path(m.dest_path).parent), "reason": m.error,
                     "since": m.updated_at} for m in ledger.moves() if m.owner is None],
        # Pending jobs that wait with a reason: a retry after a transient failure, or a broken preset.
        "waiting": [{**_job_view(j), "next_try": j.available_at}
                    for j in ledger.waiting(failures)],
        "recent": [_job_view(j) for j in ledger.recent(recent)],
        "failures": [_job_view(j) for j in ledger.failures(failures)],
    })


def workers_of(process: dict) -> list[dict]:
    """A process's workers: its one local worker, or one per GPU lane of the Ray dispatcher (`workers`)."""
    workers = process.get("workers") if isinstance(process.get("workers"), list) else [process.get("worker")]
    return [w for w in workers if isinstance(w, dict)]


def _trust_the_ledger(process: dict, ledger: Ledger) -> None:
    for worker in workers_of(process):
        _trust_for_worker(worker, ledger)


def _trust_for_worker(worker: dict, ledger: Ledger) -> None:
    """Drop from a worker's report the jobs the ledger no longer has leased to it.

    The report is up to a second old: a job finished since (`done:` in the
    log) must not show as running.
    """
    if not worker.get("jobs"):
        return
    owner, jobs, photos = worker.get("owner"), list(worker["jobs"]), list(worker.get("photos") or [])
    held = []
    for i, job_id in enumerate(jobs):
        try:
            job = ledger.get(int(job_id))
        except (TypeError, ValueError):
            job = None
        if job is not None and job.state == LEASED and (owner is None or job.lease_owner == owner):
            held.append(i)
    if len(held) == len(jobs):
        return
    worker["jobs"] = [jobs[i] for i in held]
    worker["photos"] = [photos[i] for i in held if i < len(photos)]
    if not held:
        worker.update(IDLE_PROGRESS)


def to_json(snap: dict) -> str:
    """A snapshot as `status --json` prints it and the web view's /api/status returns it.

    ASCII with \\u escapes is valid in any locale; snapshot() already made all text valid Unicode.
    """
    return json.dumps(snap, indent=2, ensure_ascii=True, allow_nan=False)


def _job_view(job) -> dict:
    return {
        "id": job.id, "state": job.shown_state, "preset": job.preset, "source": job.source_path,
        "mask": job.mask_path, "mask_sha256": job.mask_sha256,
        "output": job.output_path, "attempts": job.attempts, "error": job.error, "updated": job.updated_at,
        # Proofs, then finals: "proof" (proof: its px), "final" (proof_id: the proof it is of), or "".
        "role": job.role, "size": _size(job.size), "proof": job.proof, "proof_id": job.proof_id,
    }


def _size(size: str | None) -> int | str | None:
    """A job's size override as JSON: pixels as a number, "full", or None (its preset's own)."""
    return int(size) if size is not None and size.isdigit() else size


def status_line(counts: dict, watches: int, skipped: int = 0, cluster: dict | None = None,
                running: list[dict] | None = None) -> str:
    """The one-line STATUS= for systemd (numbers and fixed words only: no file name can break the datagram).

    `running` (workers' activity dicts) adds each running job's progress
    and ETA. With the Ray backend (`cluster`, a live file's cluster block)
    it ends with the cluster's GPUs, or with the cluster's state and "jobs
    wait" while it cannot take work.
    """
    line = (f"{watches} watches, {counts.get('pending', 0)} pending, {counts.get('leased', 0)} running, "
            f"{counts.get('done', 0)} done, {counts.get('failed', 0) + counts.get('dead', 0)} failed")
    line += f", {counts['superseded']} superseded" if counts.get("superseded") else ""
    line += f", {skipped} not taken" if skipped else ""
    for worker in (w for w in running or [] if w.get("jobs") and w.get("steps")):
        line += f"; job {', '.join(str(int(j)) for j in worker['jobs'])}: {step_progress(worker)}"
    if cluster:
        state = str(cluster.get("state"))
        if state == "connected":
            line += f", Ray cluster up with {int(cluster.get('gpus') or 0)} GPUs"
        else:
            line += f", Ray cluster {CLUSTER_STATES.get(state, 'unknown')}: jobs wait, photos still taken"
    return line


# The cluster states a live file may report (Dispatcher.state, ClusterLink), as words for people.
CLUSTER_STATES = {"connected": "connected", "connecting": "connecting", "starting actors": "starting actors",
                  "waiting for GPUs": "has no GPUs", "lost": "lost", "unreachable": "unreachable"}


def cluster_summary(cluster: dict) -> str:
    """One line about the Ray cluster for `status` and the terminal panel."""
    state = CLUSTER_STATES.get(str(cluster.get("state")), "unknown")
    text = f"Ray cluster {cluster.get('address')}: {state}"
    actors = [a for a in cluster.get("actors") or [] if isinstance(a, dict)]
    if cluster.get("state") == "connected" or actors:
        text += f", {int(cluster.get('gpus') or 0)} GPUs, {sum(1 for a in actors if a.get('ready'))}/{len(actors)} " \
                "engines up"
    problem = next((a["problem"] for a in actors if a.get("problem") and not a.get("ready")), None)
    if problem:
        text += f"; an engine is not up: {problem}"
    if cluster.get("state") != "connected":
        text += "; jobs wait in the ledger, photos are still taken"
    if cluster.get("message"):
        text += f" ({cluster['message']})"
    return text


def render(snap: dict):
    """A rich renderable of a snapshot: daemon, counts, processes, entries not taken, originals not moved,
    recent jobs, failures.

    Every cell is a `Text` of `printable(...)`: neither rich markup nor
    control characters in a file name reach the terminal.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts = []
    if not snap.get("running"):
        parts.append(Text(f"No nst-watch daemon is running (no live status in "
                          f"{printable(live_dir(Path(snap.get('state_dir', '.'))))}); "
                          f"jobs below are from the ledger.", style="bold yellow"))
    counts = Table(title="jobs", show_header=True)
    states = ("pending", "leased", "done", "superseded", "failed", "dead")
    for state in states:
        counts.add_column(state, justify="right")
    counts.add_row(*(str(snap["counts"].get(s, 0)) for s in states))
    parts.append(counts)
    cluster = snap.get("cluster")
    if isinstance(cluster, dict):
        parts.append(Text(printable(cluster_summary(cluster)),
                          style=None if cluster.get("state") == "connected" else "bold yellow"))
    if snap["processes"]:
        procs = Table(title="processes")
        for col in ("role", "pid", "state", "watches / job"):
            procs.add_column(col, overflow="fold")
        for p in snap["processes"]:
            detail = ", ".join(f"{w.get('name')} ({w.get('mode')})" for w in p.get("watches") or [])
            workers = workers_of(p)
            busy = [w for w in workers if w.get("jobs")]
            for worker in busy:
                where = f" on {worker.get('device')}" if p.get("role") == "ray" else ""
                detail += (f"{'; ' if detail else ''}job {', '.join(map(str, worker['jobs']))}{where} "
                           f"{worker.get('preset')} {step_progress(worker)}: {', '.join(worker.get('photos') or [])}")
            if not busy and workers:
                detail += " idle" if detail else "idle"
            procs.add_row(*(Text(printable(v)) for v in (p.get("role"), p.get("pid"), p.get("state", "running"),
                                                         detail)))
        parts.append(procs)
    if snap.get("skipped"):
        rows = [(e.get("watch"), e.get("path"), e.get("reason")) for e in snap["skipped"]]
        more = int(snap.get("skipped_total") or 0) - len(rows)
        parts.append(_table("not taken", ("watch", "entry", "reason"), rows,
                            caption=f"and {more} more (see the log)" if more > 0 else None))
    if snap.get("unmoved"):
        parts.append(_table("originals not moved (tried again at each reconcile scan)", ("photo", "to", "reason"),
                            [(e.get("path"), e.get("to"), e.get("reason")) for e in snap["unmoved"]]))
    job_columns = ("id", "state", "preset", "photo")
    if snap.get("waiting"):
        parts.append(_table("waiting", ("id", "preset", "photo", "attempts", "next try", "reason"),
                            [(str(j["id"]), _preset_label(j), _photo(j), str(j["attempts"]),
                              _next_try(j["next_try"]), j["error"] or "") for j in snap["waiting"]]))
    if snap["recent"]:
        parts.append(_table("recent", job_columns + ("output",),
                            [_job_row(j) + (j["output"] or "",) for j in snap["recent"]]))
    if snap["failures"]:
        parts.append(_table("failures", job_columns + ("reason",),
                            [_job_row(j) + (j["error"] or "",) for j in snap["failures"]]))
    return Group(*parts)


def _next_try(at: float) -> str:
    """When a waiting job may run again (`at`: time.time() seconds), as 'now' or 'in 40 s'."""
    seconds = at - time.time()
    return "now" if seconds < 1 else f"in {seconds:.0f} s"


def _job_row(job: dict) -> tuple[str, ...]:
    return str(job["id"]), job["state"], _preset_label(job), _photo(job)


def _preset_label(job: dict) -> str:
    """The preset, and what the job is of the proof workflow: "impasto (proof 512 px)", "impasto (final of 12)"."""
    if job.get("role") == "proof":
        return f"{job['preset']} (proof {job.get('proof')} px)"
    if job.get("role") == "final":
        return f"{job['preset']} (final of {job.get('proof_id')})"
    return job["preset"]


def _photo(job: dict) -> str:
    """The photo's name, and its mask's after a '+' when it has one: "IMG_1.jpg + IMG_1.mask.png"."""
    name = Path(job["source"]).name
    return f"{name} + {Path(job['mask']).name}" if job.get("mask") else name


def _table(title: str, columns: tuple[str, ...], rows: list[tuple], caption: str | None = None):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(printable("" if cell is None else cell)) for cell in row))
    return table
