"""The engine through its public API, on seeded random VGG19 weights."""

import math
import platform
import resource
from pathlib import Path

import pytest
import torch

from conftest import synthetic_painting, synthetic_photo, to_tensor
from nst_watch.config import EarlyStop, Preset
from nst_watch.engine import Engine, Interrupted, Progress, Stop, scale_sizes
from nst_watch.engine.memory import available_ram, default_max_memory
from nst_watch.engine.pyramid import scale_iterations
from nst_watch.engine.color import match_color, rgb_to_ycc
from nst_watch.errors import EngineError


def preset(**settings) -> Preset:
    return Preset(**{"styles": ["style.png"], "size": 64, "iterations": 20, **settings})


@pytest.fixture(scope="module")
def photo():
    return to_tensor(synthetic_photo(64, 64, seed=3))


@pytest.fixture(scope="module")
def painting():
    return to_tensor(synthetic_painting(64, 64, seed=4))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / float(((a - b) ** 2).mean()))


def test_copy_an_image_from_noise(random_engine, photo, painting):
    # Only a relu1_1 content loss, started from noise: the optimiser must
    # rebuild the photo itself.
    p = preset(content_layers=["relu1_1"], style_weight=0, init="noise", optimizer="lbfgs", iterations=120)
    [result] = random_engine.stylize([photo], p, [painting])
    assert psnr(result.image, photo) >= 25


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_style_loss_falls_to_a_tenth_within_100_iterations(random_engine, photo, painting, optimizer):
    events: list[Progress] = []
    # Pure style and content, no smoothing: this measures the optimiser.
    p = preset(optimizer=optimizer, iterations=100, early_stop=None, style_weight=10, tv_weight=0)
    [result] = random_engine.stylize([photo], p, [painting], progress=events.append)
    start = events[0].style
    assert start > 0
    assert result.style <= 0.10 * start
    assert [e.iteration for e in events] == list(range(1, 101))


def test_luminance_mode_keeps_the_content_chroma(random_engine, photo, painting):
    [result] = random_engine.stylize([photo], preset(color="luminance"), [painting])
    out8 = torch.round(result.image * 255) / 255  # as written to an 8-bit file
    chroma_out = rgb_to_ycc(out8[None])[:, 1:]
    chroma_in = rgb_to_ycc(photo[None])[:, 1:]
    assert float((chroma_out - chroma_in).abs().mean()) <= 2 / 255
    # ...while the luminance did change.
    assert float((rgb_to_ycc(out8[None])[:, 0] - rgb_to_ycc(photo[None])[:, 0]).abs().mean()) > 2 / 255


def test_histogram_matching_gives_the_style_the_content_colours(photo, painting):
    matched = match_color(painting[None], photo[None])[0]
    for c in range(3):
        assert float(matched[c].mean()) == pytest.approx(float(photo[c].mean()), abs=1e-3)
        assert float(matched[c].std()) == pytest.approx(float(photo[c].std()), rel=1e-2)
    assert abs(float(painting[0].mean()) - float(photo[0].mean())) > 0.05  # it was different before


def test_histogram_mode_runs_end_to_end(random_engine, photo, painting):
    [result] = random_engine.stylize([photo], preset(color="histogram", iterations=5), [painting])
    assert torch.isfinite(result.image).all() and result.image.shape == (3, 64, 64)


def test_same_seed_same_bytes_other_seed_differs(random_engine, photo, painting):
    def run(seed):
        [r] = random_engine.stylize([photo], preset(init="noise", seed=seed, iterations=10), [painting])
        return (r.image * 255).round().to(torch.uint8).numpy().tobytes()

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_style_targets_are_cached_per_preset_and_size(random_engine, photo, painting):
    p = preset(iterations=2, style_weight=3.5)  # a fingerprint no other test uses
    before = random_engine.style_passes
    random_engine.stylize([photo], p, [painting])
    assert random_engine.style_passes == before + 1
    random_engine.stylize([photo], p, [painting])
    assert random_engine.style_passes == before + 1  # second call: no style forward pass
    random_engine.stylize([photo], p.model_copy(update={"size": 48}), [painting])
    assert random_engine.style_passes == before + 2  # another size needs new targets


def test_batch_returns_one_result_per_image_at_the_preset_size(random_engine, painting):
    wide = to_tensor(synthetic_photo(40, 80, seed=1))
    tall = to_tensor(synthetic_photo(90, 45, seed=2))
    results = random_engine.stylize([wide, tall, wide], preset(size=48, iterations=3), [painting])
    assert [tuple(r.image.shape) for r in results] == [(3, 24, 48), (3, 48, 24), (3, 24, 48)]


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_batching_is_exact(random_engine, painting, optimizer):
    a = to_tensor(synthetic_photo(64, 64, seed=5))
    b = to_tensor(synthetic_photo(64, 64, seed=6))
    p = preset(iterations=5, optimizer=optimizer)
    together = random_engine.stylize([a, b], p, [painting])
    twins = random_engine.stylize([b, b], p, [painting])
    alone = random_engine.stylize([b], p, [painting])
    # Independent: b's result does not depend on which photo shares its batch.
    assert torch.allclose(together[1].image, twins[1].image, atol=1e-6)
    # Against a batch of one only float noise differs (convolutions sum in a
    # batch-size dependent order, and the optimisers amplify the last bits).
    assert float((together[1].image - alone[0].image).abs().mean()) < 2e-2
    assert together[1].loss == pytest.approx(alone[0].loss, rel=1e-2)


def test_pyramid_runs_each_scale_from_the_previous_one(random_engine, photo, painting):
    events: list[Progress] = []
    p = preset(size=64, pyramid={"min_size": 32, "factor": 2, "iterations": [4, 2]})
    [result] = random_engine.stylize([photo], p, [painting], progress=events.append)
    scales = sorted({(e.scale, e.width) for e in events})
    assert scales == [(1, 32), (2, 64)]
    assert result.iterations == 6 and events[-1].step == 6
    assert result.image.shape == (3, 64, 64)


def test_default_pyramid_lays_out_at_a_quarter_size_with_a_tenth_of_the_iterations():
    p = Preset(styles=["style.png"], size=256, iterations=500)
    assert scale_sizes(p) == [64, 128, 256]
    assert scale_iterations(p, [64, 128, 256]) == [50, 50, 500]
    assert scale_sizes(p.model_copy(update={"pyramid": None})) == [256]


def test_scales_above_1024_px_refine_with_fewer_iterations():
    """A 24 MP pyramid lays the picture out at 750 px, then refines: each larger scale costs about the same."""
    p = Preset(styles=["style.png"], size="full", iterations=500)
    sizes = scale_sizes(p.model_copy(update={"size": 6000}))
    assert sizes == [94, 188, 375, 750, 1500, 3000, 6000]
    assert scale_iterations(p, sizes) == [50, 50, 50, 500, 233, 58, 15]
    assert scale_iterations(p, [512, 2048]) == [500, 125]
    assert scale_iterations(p.model_copy(update={"iterations": 20}), [512, 4096]) == [20, 10]
    listed = Preset(styles=["style.png"], iterations=500, pyramid={"iterations": [30, 5]})
    assert scale_iterations(listed, [512, 1024, 2048]) == [30, 5, 5]


def test_a_coarse_scale_too_small_for_the_network_is_skipped(random_engine, painting):
    # A 4:1 panorama at 96 px is 96x24; its 48 px scale would be 48x12,
    # below the 16 px relu5_1 needs, so only the full size runs.
    panorama = to_tensor(synthetic_photo(30, 120, seed=3))
    events: list[Progress] = []
    p = preset(size=96, iterations=4, pyramid={"min_size": 32, "factor": 2})
    [result] = random_engine.stylize([panorama], p, [painting], progress=events.append)
    assert {(e.scale, e.scales, e.width) for e in events} == {(1, 1, 96)}
    assert result.image.shape == (3, 24, 96)


def test_blending_two_styles_and_style_scale(random_engine, photo, painting):
    other = to_tensor(synthetic_painting(48, 48, seed=9))
    p = preset(styles=[{"path": "a.png", "weight": 3}, {"path": "b.png", "weight": 1}], style_scale=0.5, iterations=3)
    [result] = random_engine.stylize([photo], p, [painting, other])
    assert torch.isfinite(result.image).all()
    with pytest.raises(ValueError, match="2 style images"):
        random_engine.stylize([photo], p, [painting])


def test_non_finite_loss_stops_with_preset_and_iteration(random_engine, photo, painting):
    p = preset(name="exploding", style_weight=float("inf"), iterations=5)
    with pytest.raises(EngineError, match=r"exploding.*iteration 1"):
        random_engine.stylize([photo], p, [painting])


def test_too_small_an_image_is_a_clear_error(random_engine, painting):
    sliver = to_tensor(synthetic_photo(8, 64, seed=1))
    with pytest.raises(EngineError, match=r"too small for layer relu5_1.*at least 16 px"):
        random_engine.stylize([sliver], preset(size=64, iterations=1), [painting])


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_early_stop_ends_a_scale_once_the_picture_settles(random_engine, photo, painting, optimizer):
    events: list[Progress] = []
    settle = EarlyStop(every=10, min_change=5.0)
    p = preset(iterations=150, pyramid=None, optimizer=optimizer, early_stop=settle)
    [result] = random_engine.stylize([photo], p, [painting], progress=events.append)
    assert 10 <= result.iterations < 150 and result.iterations % 10 == 0
    # Progress ends complete: the run's expected length is what it ran, below its most.
    assert events[-1].step == events[-1].expected_steps == result.iterations and events[-1].steps == 150
    assert events[-1].eta == 0
    # It stopped because the picture had settled: ten more iterations move its
    # pixels by about as little as the last window did. A threshold no window
    # can meet runs every iteration.
    never = p.model_copy(update={"iterations": result.iterations + 10, "early_stop": EarlyStop(every=10, min_change=0)})
    [longer] = random_engine.stylize([photo], never, [painting])
    assert longer.iterations == result.iterations + 10
    assert float((longer.image - result.image).abs().mean()) * 255 < 2 * settle.min_change


def test_objective_judges_any_image_with_the_optimised_function(random_engine, photo, painting):
    p = preset(iterations=30)
    [result] = random_engine.stylize([photo], p, [painting])
    [mine] = random_engine.objective([result.image], [photo], p, [painting])
    [untouched] = random_engine.objective([photo], [photo], p, [painting])
    assert mine == pytest.approx(result.loss, rel=1e-4)
    assert mine < untouched


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_memory_format_changes_speed_not_results(random_engine, photo, painting, optimizer):
    # channels_last is the fast layout for cuDNN and oneDNN; it must not
    # change what the optimisers compute (L-BFGS needs contiguous leaves).
    other = Engine(device="cpu", weights="random", precision="fp32", channels_last=not random_engine.channels_last)
    p = preset(iterations=6, optimizer=optimizer)
    [a] = random_engine.stylize([photo], p, [painting])
    [b] = other.stylize([photo], p, [painting])
    assert float((a.image - b.image).abs().mean()) < 1e-2
    assert a.loss == pytest.approx(b.loss, rel=1e-2)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")
def test_cpu_engine_reuses_freed_memory_instead_of_faulting_it_in_again(random_engine):
    # Without keep_freed_memory every 64 MB activation is a fresh mmap:
    # 16384 page faults each time it is allocated.
    size = 64 * 2**20 // 4
    for _ in range(4):  # until the heap has grown to hold it
        torch.ones(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        torch.ones(size)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="Linux /proc/meminfo only")
def test_the_default_cpu_budget_counts_reclaimable_page_cache_as_available():
    # Free pages alone fell to ~2.5 GB on a 24 GB machine after a fresh install filled the
    # page cache, and a 96 px photo was refused as not fitting a 1.25 GB budget.
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in meminfo}
    assert abs(available_ram() - fields["MemAvailable"]) < 256 * 2**20  # the kernel's estimate, not MemFree
    assert default_max_memory(torch.device("cpu")) == pytest.approx(available_ram() / 2, rel=0.05)


def test_bf16_convolutions_reach_about_the_fp32_objective(random_engine, painting):
    """precision: bf16 runs a resident bf16 copy of VGG19 (float32 Grams and losses), judged by the fp32 objective."""
    bf16 = Engine(device="cpu", weights="random", precision="bf16")
    photo = to_tensor(synthetic_photo(32, 48, seed=3))
    p = preset(size=48, iterations=8, pyramid=None, early_stop=None)
    [a] = random_engine.stylize([photo], p, [painting])
    [b] = bf16.stylize([photo], p, [painting])
    judged, untouched = random_engine.objective([b.image, photo], [photo, photo], p, [painting])
    assert judged < 0.7 * untouched  # it optimised
    assert judged == pytest.approx(random_engine.objective([a.image], [photo], p, [painting])[0], rel=0.05)
    assert b.loss == pytest.approx(judged, rel=0.05)  # its own (bf16) reading of the loss agrees


def test_the_estimate_of_a_run_follows_how_its_picture_settles(random_engine, photo, painting):
    """Progress.expected_steps and .eta count what early stopping will likely leave, not the cap (issue 21, item 8)."""
    events: list[Progress] = []
    p = preset(iterations=300, pyramid=None, early_stop=EarlyStop(every=10, min_change=1.0))
    [result] = random_engine.stylize([photo], p, [painting], progress=events.append)
    final = result.iterations
    assert final <= 200  # the picture settled well before the cap
    late = [e for e in events if final // 2 <= e.step < final]
    assert late
    for e in late:
        assert abs(e.expected_steps - final) <= 0.35 * final, (e.step, e.expected_steps, final)
        cap_based = e.elapsed / e.step * (e.steps - e.step)  # what the ETA used to be
        assert e.eta is not None and e.eta < 0.6 * cap_based
    assert events[-1].step == events[-1].expected_steps == final and events[-1].eta == 0


def _stop_at(step: int, finish_within: int = 0):
    def progress(event):
        if event.step >= step:
            raise Stop(finish_within)
    return progress


def test_a_stopped_run_says_where_it_was_and_resumes_from_there(random_engine, photo, painting):
    """Stop from the progress callback (a shutdown past its grace): Interrupted, then resume (issue 21, item 9)."""
    p = preset(iterations=40, pyramid={"min_size": 32, "factor": 2, "iterations": [10, 40]}, early_stop=None)
    [whole] = random_engine.stylize([photo], p, [painting])
    with pytest.raises(Interrupted) as stopped:
        random_engine.stylize([photo], p, [painting], progress=_stop_at(25))
    resume = stopped.value.resumes[0]
    assert (resume.scale, resume.iteration, resume.ran) == (2, 15, 25) and resume.image.shape == (3, 64, 64)
    events: list[Progress] = []
    [resumed] = random_engine.stylize([photo], p, [painting], progress=events.append, resume=[resume])
    assert [e.step for e in events] == list(range(26, 51))  # only what was left, at the finest scale
    assert resumed.iterations == 50 and resumed.loss <= 1.2 * whole.loss
    # A resume that no longer fits (another preset) is ignored: the photo starts afresh.
    other = p.model_copy(update={"style_weight": 7.0})
    events.clear()
    random_engine.stylize([photo], other, [painting], progress=events.append, resume=[resume])
    assert len(events) == 50


def test_a_run_stopped_within_sight_of_its_end_finishes(random_engine, photo, painting):
    p = preset(iterations=40, pyramid=None, early_stop=None)
    [result] = random_engine.stylize([photo], p, [painting], progress=_stop_at(30, finish_within=10))
    assert result.iterations == 30 and torch.isfinite(result.image).all()
    with pytest.raises(Interrupted):  # ten short of its end, with five allowed
        random_engine.stylize([photo], p, [painting], progress=_stop_at(30, finish_within=5))
