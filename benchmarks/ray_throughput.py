"""Throughput of the Ray backend: two actors over one, and one actor over a local worker (issue 14).

    python benchmarks/ray_throughput.py                  # 16 photos, 64 px, 40 iterations: ~4 min on 2 cores
    python benchmarks/ray_throughput.py --photos 8 --iterations 10  # a quick check

Each case is the real daemon on a fresh studio: `nst-watch run` with a
local worker, then `nst-watch run --ray` against a local Ray runtime
started here with one and with two logical GPUs (`num_gpus` is a logical
resource, so the actors run on this CPU). The clock runs from the moment
the photos are dropped in (all engines already up) until the ledger has
them all done; images per hour are photos / that time.

Printed ratios: `ratio.two_actors_over_one` (images/hour with two actors
over one), `ratio.ray_one_actor_over_local` (one actor against a local
worker on every core) and `ratio.ray_one_actor_over_local_one_thread` (the
Ray path's own cost: one actor against a local worker held to one thread
too). Caveat: on a CPU machine the actors share its cores. Ray runs each
actor with one thread (OMP_NUM_THREADS=1), so two actors on two cores are
two engines on one core each, not two GPUs; on a cluster each actor has its
own GPU. Random weights: speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "examples" / "photos").glob("*.jpg"))
STYLE = ROOT / "examples" / "styles" / "impasto.jpg"


def studio(root: Path, args) -> Path:
    """A config with one preset and an empty inbox under `root`."""
    for name in ("inbox", "outbox", "state"):
        (root / name).mkdir(parents=True)
    config = {
        "state_dir": str(root / "state"),
        "engine": {"weights": "random", "device": "cpu"},
        "service": {"batch": 1},
        "presets": {"p": {"styles": [str(STYLE)], "size": args.size, "iterations": args.iterations,
                          "early_stop": None, "output": {"format": "png"}}},
        "watches": [{"name": "in", "input": str(root / "inbox"), "output": str(root / "outbox"), "presets": ["p"],
                     "settle_seconds": 0.2}],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ledger_counts(root: Path) -> dict:
    from nst_watch.jobs import Ledger

    db = root / "state" / "jobs.db"
    if not db.exists():
        return {}
    with Ledger(db) as ledger:
        return ledger.counts()


def engines_up(root: Path, want: int) -> bool:
    from nst_watch.jobs import Ledger
    from nst_watch.service.status import snapshot

    with Ledger(root / "state" / "jobs.db") as ledger:
        snap = snapshot(root / "state", ledger)
    if want == 0:  # a local worker: its process is up
        return any(p["role"] == "run" and p.get("state") == "running" for p in snap["processes"])
    actors = [a for p in snap["processes"] if p["role"] == "ray" for a in (p.get("cluster") or {}).get("actors", [])]
    return sum(1 for a in actors if a.get("ready")) >= want


def wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def run_case(work: Path, label: str, args, ray_address: str | None, actors: int, env: dict | None = None) -> dict:
    root = work / label
    config = studio(root, args)
    command = [sys.executable, "-m", "nst_watch", "-q", "run", "-c", str(config)]
    command += ["--ray", ray_address] if ray_address else []
    log = open(root / "daemon.log", "w")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **(env or {})})
    try:
        wait(lambda: (root / "state" / "jobs.db").exists() and engines_up(root, actors), 300, f"{label} ready")
        # One photo each, decoded and re-saved so every job is a different photo (different hashes).
        start = time.perf_counter()
        for i in range(args.photos):
            source = PHOTOS[i % len(PHOTOS)]
            with Image.open(source) as image:
                image.convert("RGB").rotate(i * 7, expand=False).save(root / "inbox" / f"{i:03}-{source.name}")
        wait(lambda: ledger_counts(root).get("done", 0) >= args.photos, 3600, f"{label}: all photos done")
        seconds = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(120)
        log.close()
    counts = ledger_counts(root)
    return {"case": label, "photos": args.photos, "seconds": round(seconds, 2),
            "images_per_hour": round(args.photos * 3600 / seconds, 1), "counts": counts}


def ray_case(work: Path, args, gpus: int) -> dict:
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=gpus, include_dashboard=False, logging_level="WARNING")
    try:
        return run_case(work, f"ray-{gpus}-actor{'s' if gpus > 1 else ''}", args,
                        ray.get_runtime_context().gcs_address, gpus)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="nst-ray-bench-"))
    try:
        results = [run_case(work, "local", args, None, 0),
                   run_case(work, "local-1-thread", args, None, 0, env={"OMP_NUM_THREADS": "1"}),
                   ray_case(work, args, 1), ray_case(work, args, 2)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    local, local_one, one, two = results
    print(f"{'case':<14} {'photos':>6} {'seconds':>8} {'images/hour':>12}")
    for r in results:
        print(f"{r['case']:<14} {r['photos']:>6} {r['seconds']:>8.1f} {r['images_per_hour']:>12.1f}")
    ratios = {"two_actors_over_one": round(two["images_per_hour"] / one["images_per_hour"], 3),
              "ray_one_actor_over_local": round(one["images_per_hour"] / local["images_per_hour"], 3),
              "ray_one_actor_over_local_one_thread": round(one["images_per_hour"] / local_one["images_per_hour"], 3)}
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratios": ratios}, indent=2))
    for name, value in ratios.items():
        print(f"ratio.{name} {value}")


if __name__ == "__main__":
    main()
