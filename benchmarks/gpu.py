"""The whole GPU benchmark in one run (under 8 minutes), for a lent H100/H200.

    python benchmarks/gpu.py --out "$OUT"          # or: bash benchmarks/gpu.sh

Writes gpu.json and gpu.txt under --out: at 512 and 1024 px, batch 1 and 8,
fp32 and bf16: time per full-size iteration, images per hour (at 500 full-size
iterations per image, the default preset's most before early stop, without the
pyramid's cheap coarse scales), peak memory per batch; then the largest square size
that fits one image (bf16); then `size: full` photos of 4K (3840x2160) and 24 MP
(6000x4000), the default preset, tiled wherever max_memory says so: time to the
finished photo, per full-size iteration, peak memory; then compare.py's ratios at 512 px. Seeded random
weights: speed and memory only. `--smoke` runs a tiny version on the CPU to
check the script itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import compare  # noqa: E402
from conftest import synthetic_painting, synthetic_photo, to_tensor  # noqa: E402

from nst_watch.config import Preset  # noqa: E402
from nst_watch.engine import Engine  # noqa: E402
from nst_watch.errors import EngineError  # noqa: E402

DEFAULT_ITERATIONS = 500


def oom_errors():
    errors = [MemoryError]
    if torch.cuda.is_available():
        errors.append(torch.cuda.OutOfMemoryError)
    return tuple(errors)


def reset_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def square(size: int, seed: int = 0):
    return to_tensor(synthetic_photo(size, size, seed=seed))


def one(engine: Engine, size: int, batch: int, iterations: int) -> dict:
    style = to_tensor(synthetic_painting(size, size, seed=99))
    contents = [square(size, seed=i) for i in range(batch)]
    preset = Preset(name="gpu", styles=["s.png"], size=size, iterations=iterations, early_stop=None, pyramid=None)
    engine.stylize(contents, preset.model_copy(update={"iterations": 3}), [style])  # cuDNN autotune, targets
    reset_memory()
    per_iteration = compare.seconds_per_iteration(engine, contents, preset.model_copy(update={"iterations": 2 * iterations}),
                                                  style)
    return {"size": size, "batch": batch, "seconds_per_iteration": per_iteration,
            "images_per_hour": batch / (per_iteration * DEFAULT_ITERATIONS) * 3600, "peak_mb": peak_mb()}


def largest(engine: Engine, low: int, high: int, step: int, deadline: float) -> int | None:
    """Largest square size (multiple of `step`) whose one-image optimisation fits."""
    style = to_tensor(synthetic_painting(256, 256, seed=99))
    best = None
    while low <= high and time.monotonic() < deadline:
        mid = (low + high) // (2 * step) * step
        preset = Preset(name="fit", styles=["s.png"], size=mid, iterations=2, early_stop=None, pyramid=None)
        try:
            reset_memory()
            engine.stylize([square(mid)], preset, [style])
            best, low = mid, mid + step
        except oom_errors():
            high = mid - step
        finally:
            engine.cache_clear()
            reset_memory()
    return best


def full_resolution(engine: Engine, width: int, height: int, *, iterations: int | None = None,
                    force_tiles: bool = False) -> dict:
    """One photo at its own size (`size: full`): time to the finished photo, per full-size iteration, memory.

    On a GPU, 4K fits untiled and 24 MP may not: the engine tiles whatever
    exceeds max_memory by itself. `force_tiles` sets the budget just below
    the untiled need, so the smoke run on a CPU goes through the tiled path.
    """
    photo = to_tensor(synthetic_photo(height, width, seed=7))
    side = min(1024, max(width, height))
    style = to_tensor(synthetic_painting(side, side, seed=99))
    preset = Preset(name="full", styles=["s.png"], size="full", **({"iterations": iterations} if iterations else {}))
    work = engine.work_memory
    if force_tiles:
        engine.work_memory = engine.untiled_bytes((height, width), 1) - 1  # below any history's need
    events: list = []
    try:
        reset_memory()
        t = time.perf_counter()
        [result] = engine.stylize([photo], preset, [style], progress=events.append)
        seconds = time.perf_counter() - t
    finally:
        engine.work_memory = work
        engine.cache_clear()
    ends = [e for e in events if e.scale == e.scales and not e.tile]  # iteration ends at full size
    per_iteration = None
    if len(ends) > 1 and ends[-1].step > ends[0].step:
        per_iteration = (ends[-1].elapsed - ends[0].elapsed) / (ends[-1].step - ends[0].step)
    return {"width": width, "height": height, "seconds_to_photo": seconds, "iterations": result.iterations,
            "tiles": int(result.timings.get("tiles", 0)), "seconds_per_full_iteration": per_iteration,
            "peak_mb": peak_mb()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for checking the script on a CPU")
    parser.add_argument("--budget", type=float, default=450, help="seconds before optional parts are skipped")
    args = parser.parse_args(argv)
    logging.getLogger("nst_watch.engine").setLevel(logging.ERROR)
    start = time.monotonic()
    deadline = start + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    sizes, batches, iterations = ((64, 96), (1, 2), 2) if args.smoke else ((512, 1024), (1, 8), 20)
    report: dict = {"machine": compare.machine(), "runs": [], "skipped": []}
    lines = [f"nst-watch GPU benchmark on {report['machine']} (random weights: speed and memory only)"]
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) \
                and not args.smoke:
            report["skipped"].append("bf16: not supported here")
            continue
        engine = Engine(weights="random", precision=precision)
        for size in sizes:
            for batch in batches:
                if time.monotonic() > deadline:
                    report["skipped"].append(f"{precision} {size}px batch {batch}: out of time")
                    continue
                try:
                    run = {"precision": precision, **one(engine, size, batch, iterations)}
                except oom_errors() as exc:
                    run = {"precision": precision, "size": size, "batch": batch, "error": f"out of memory: {exc}"}
                report["runs"].append(run)
                lines.append(_line(run))
                print(lines[-1], flush=True)
        del engine
        reset_memory()
    engine = Engine(weights="random", precision="auto")
    top = 128 if args.smoke else 16384
    fit = largest(engine, 64 if args.smoke else 1024, top, 32 if args.smoke else 256, deadline)
    report["largest_square"] = fit
    lines.append(f"largest square that fits (one image, precision auto): {fit} px")
    print(lines[-1], flush=True)
    # Full resolution (issue 12 targets on one H100/H200: 4K in <= 30 s, 24 MP in <= 2 min).
    report["full_resolution"] = []
    for width, height in ((256, 160), (320, 192)) if args.smoke else ((3840, 2160), (6000, 4000)):
        if time.monotonic() > deadline:
            report["skipped"].append(f"full resolution {width}x{height}: out of time")
            continue
        try:
            run = full_resolution(engine, width, height, iterations=3 if args.smoke else None,
                                  force_tiles=args.smoke)
        except (*oom_errors(), EngineError) as exc:
            run = {"width": width, "height": height, "error": str(exc)}
        report["full_resolution"].append(run)
        lines.append(_full_line(run))
        print(lines[-1], flush=True)
    if time.monotonic() < deadline and not args.smoke:
        ratios_json = args.out / "compare.json"
        compare.main(["--size", "512", "--also", "256", "--classic-evaluations", "300", "--json", str(ratios_json)])
        report["compare"] = json.loads(ratios_json.read_text())
    report["seconds"] = time.monotonic() - start
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu.txt").write_text("\n".join(lines) + "\n")
    return 0


def _full_line(run: dict) -> str:
    head = f"size full {run['width']}x{run['height']}"
    if "error" in run:
        return f"{head}: {run['error']}"
    per = run["seconds_per_full_iteration"]
    mem = f", peak {run['peak_mb']:.0f} MB" if run["peak_mb"] is not None else ""
    return (f"{head}: finished in {run['seconds_to_photo']:.1f} s ({run['iterations']} iterations, "
            f"{run['tiles']} tiles at full size" + (f", {per * 1000:.0f} ms per full-size iteration" if per else "")
            + f"{mem})")


def _line(run: dict) -> str:
    head = f"{run['precision']} {run['size']}px batch {run['batch']}"
    if "error" in run:
        return f"{head}: {run['error']}"
    mem = f", peak {run['peak_mb']:.0f} MB" if run["peak_mb"] is not None else ""
    return (f"{head}: {run['seconds_per_iteration'] * 1000:.1f} ms/iteration, "
            f"{run['images_per_hour']:.0f} images/hour at {DEFAULT_ITERATIONS} iterations{mem}")


if __name__ == "__main__":
    sys.exit(main())
