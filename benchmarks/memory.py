"""Peak memory and seconds per iteration, tiled under --max-memory against untiled (issue 12).

    python benchmarks/memory.py                      # 512, 1024 and 2048 px, ~15 minutes on 2 cores
    python benchmarks/memory.py --sizes 256 --iterations 2   # a quick check

Each case is one `nst-watch stylize` process (a photo enlarged to the size,
`--no-pyramid --no-early-stop`, random weights: memory and speed only), so its
peak RSS is the whole process's, measured by the kernel (os.wait4), as a user's
`/usr/bin/time` would. Seconds per iteration come from the sidecar's timings
(the optimisation only: total less style targets and tile set-up). For each
size it runs untiled (`--max-memory 20GB`, skipped where the estimate says it
would not fit in this machine's RAM) and with `--max-memory` (1.5GB), and
prints the ratios: tiled RSS / untiled RSS and tiled s/it / untiled s/it.
Where a size does not fit the budget even in tiles, the error is recorded
and the size is measured again at the budget the error names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "examples" / "photos" / "coffee.jpg"
STYLE = ROOT / "examples" / "styles" / "impasto.jpg"
ACTIVATION_BYTES = 3200  # nst_watch.engine.memory.ACTIVATION_BYTES, without importing torch here


def run_case(work: Path, size: int, max_memory: str, iterations: int) -> dict:
    """One stylize process: its peak RSS (bytes), wall seconds, and the sidecar's figures."""
    out = work / f"out-{size}-{max_memory}.png"
    cmd = [sys.executable, "-m", "nst_watch", "stylize", str(work / f"photo-{size}.png"), "--style", str(STYLE),
           "--size", str(size), "--weights", "random", "--iterations", str(iterations), "--no-pyramid",
           "--no-early-stop", "--max-memory", max_memory, "--sidecar", "-o", str(out)]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        errors = [line for line in stderr.splitlines() if "ERROR" in line] or stderr.strip().splitlines()[-1:]
        return {"size": size, "max_memory": max_memory, "error": errors}
    sidecar = json.loads(Path(f"{out}.json").read_text())
    timings = sidecar["timings"]
    optimise = timings["total"] - timings["style_targets"]
    return {
        "size": size,
        "max_memory": max_memory,
        "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3),
        "seconds_per_iteration": round(optimise / sidecar["iterations"], 2),
        "tiles": int(timings.get("tiles", 0)),
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024,2048", help="long edges, comma-separated")
    parser.add_argument("--max-memory", default="1.5GB", help="the tiled runs' --max-memory")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write memory.json here")
    args = parser.parse_args()
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in (int(s) for s in args.sizes.split(",")):
            with Image.open(PHOTO) as image:
                w, h = image.size
                scale = size / max(w, h)
                image.convert("RGB").resize((round(w * scale), round(h * scale)), Image.LANCZOS).save(
                    work / f"photo-{size}.png")
                pixels = round(w * scale) * round(h * scale)
            cases = [args.max_memory]
            if pixels * ACTIVATION_BYTES * 1.3 + 1.5e9 < ram * 0.8:
                cases.insert(0, "20GB")
            found = {}
            for budget in cases:
                row = run_case(work, size, budget, args.iterations)
                rows.append(row)
                found[budget] = row
                print(json.dumps(row), flush=True)
            tiled = found[args.max_memory]
            suggested = re.search(r"raise max_memory to ([\d.]+) GB", " ".join(tiled.get("error", [])))
            if suggested:  # does not fit even in tiles: measure at the budget the error names
                tiled = run_case(work, size, f"{suggested.group(1)}GB", args.iterations)
                rows.append(tiled)
                print(json.dumps(tiled), flush=True)
            untiled = found.get("20GB")
            if untiled and "error" not in untiled and "error" not in tiled:
                print(f"ratio.rss_tiled_over_untiled.{size} {tiled['peak_rss_gb'] / untiled['peak_rss_gb']:.3f}")
                print(f"ratio.seconds_per_iteration_tiled_over_untiled.{size} "
                      f"{tiled['seconds_per_iteration'] / untiled['seconds_per_iteration']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
