"""The proof sheet's figures (``GET /api/proofs``): each watch's proofs, each with its finals and their progress.

A proof (a job with ``proof`` set, nst_watch.service.proofs) is shown with
its photo's name, preset, size, state and whether its ``after`` thumbnail
is there; each of its finals with its state, size, the running worker's
progress (step, expected steps, ETA: what ``status`` shows for it) and
whether its output can be fetched (``/outputs/{id}``). Jobs put aside
(superseded) are left out. Names are plain JSON text; the page inserts them
with textContent only.

Torch-free, like the rest of the web view.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...config import Config
from ...jobs import DONE, LEASED, Job, Ledger
from ..status import jsonable, read_live, step_progress, workers_of
from ..thumbs import thumbs_dir

SHOWN = 5000  # proofs listed at most: the newest (Ledger.proofs)


def proof_sheet(state_dir: Path, ledger: Ledger, config: Config | None, *, limit: int = SHOWN) -> dict:
    """JSON-ready: ``{"renderable", "watches": [{"name", "proof", "configured", "proofs": [...]}], "total",
    "truncated"}``; watches with ``proof:`` in the config first (empty ones too), then other watches that have
    proofs, then submitted proofs (``name`` null)."""
    proofs = [p for p in ledger.proofs(limit=limit) if not p.put_aside]
    finals: dict[int, list[Job]] = {}
    for final in ledger.finals_of([p.id for p in proofs]):
        if not final.put_aside:
            finals.setdefault(final.proof_id, []).append(final)
    running = _running(state_dir)
    thumbs = _after_thumbs(state_dir)
    configured = {w.name: w.proof for w in config.watches if w.proof is not None} if config is not None else {}
    groups: dict[str | None, list[dict]] = {name: [] for name in configured}
    for proof in proofs:
        groups.setdefault(proof.watch, []).append(
            _proof_view(proof, finals.get(proof.id, []), running, proof.id in thumbs))
    places = {name: i for i, name in enumerate(configured)}  # the config's order, then by name, submitted last
    order = sorted(groups, key=lambda name: (places.get(name, len(places)), name is None, name or ""))
    watches = [{"name": name, "proof": configured.get(name), "configured": name in configured,
                "proofs": groups[name]} for name in order]
    return jsonable({"renderable": config is not None, "watches": watches, "total": len(proofs),
                     "truncated": len(proofs) >= limit})


def _proof_view(proof: Job, finals: list[Job], running: dict[int, dict], thumb: bool) -> dict:
    return {
        "id": proof.id, "photo": Path(proof.source_path).name, "preset": proof.preset, "proof": proof.proof,
        "state": proof.shown_state, "error": proof.error if proof.state != DONE else None,
        "thumb": thumb, "output": _has_output(proof),
        "finals": [_final_view(f, running) for f in finals],
    }


def _final_view(final: Job, running: dict[int, dict]) -> dict:
    worker = running.get(final.id)
    progress = None
    if final.state == LEASED and worker is not None and worker.get("owner") in (None, final.lease_owner):
        progress = {key: worker.get(key) for key in ("step", "steps", "expected_steps", "eta")}
        progress["text"] = step_progress(worker) if worker.get("steps") else "starting"
    return {
        "id": final.id, "state": final.shown_state, "size": final.size, "progress": progress,
        "error": final.error if final.state != DONE else None,
        "output": _has_output(final),
        "name": Path(final.output_path).name if final.output_path else None,
    }


def _has_output(job: Job) -> bool:
    """Whether `/outputs/{id}` would serve the job's output now."""
    return output_file(job) is not None


def output_file(job: Job | None) -> Path | None:
    """A done job's output as the ledger records it, if it is a regular file there now; else None."""
    if job is None or job.state != DONE or not job.output_path:
        return None
    path = Path(job.output_path)
    return path if path.is_file() else None


def _running(state_dir: Path) -> dict[int, dict]:
    """Job id -> the live report of the worker running it (a local worker, or a Ray dispatcher's GPU lane)."""
    running = {}
    for process in read_live(state_dir):
        for worker in workers_of(process):
            for job_id in worker.get("jobs") or []:
                try:
                    running[int(job_id)] = worker
                except (TypeError, ValueError):
                    continue
    return running


def _after_thumbs(state_dir: Path) -> set[int]:
    """The ids of the jobs whose ``after`` thumbnail is there (one listing, not a stat per proof)."""
    ids = set()
    try:
        with os.scandir(thumbs_dir(state_dir)) as scan:
            for entry in scan:
                job, _, kind = entry.name.partition("-")
                if kind == "after.jpg" and job.isdigit():
                    ids.add(int(job))
    except OSError:
        pass
    return ids
