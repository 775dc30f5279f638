"""Proofs, then finals (issue 23): the engine's start from a proof, the ledger's roles, the hot folder's proofs and
finals folders, `submit --proof`, `render`, `stylize --proof`, the kept images' bound, and status."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daemon_kit import Studio, photo, wait_until
from nst_watch.config import Preset, load_config
from nst_watch.engine import Engine, FromProof
import nst_watch.engine.engine as engine_module
from nst_watch.engine.losses import ProofLoss
from nst_watch.engine.pyramid import fit_long_edge, proof_schedule, resize
from nst_watch.errors import ConfigError
from nst_watch.jobs import SCHEMA_VERSION, Ledger
from nst_watch.service.proofs import FinalError, evict, keep_proof, kept_path, kept_proof, request_final

SHALLOW = dict(content_layers=["relu3_1"], style_layers=["relu1_1", "relu2_1", "relu3_1"])


def nst(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "nst_watch", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "250"}, **kwargs)


def status(studio) -> dict:
    result = nst("status", "-c", studio.config, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- the engine ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    return Engine(device="cpu", weights="random")


def _pictures():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 72, 96, generator=g), torch.rand(3, 64, 64, generator=g)


def test_the_schedule_above_a_proof_only_refines():
    preset = Preset(styles=["s.png"], size=2048, iterations=400)
    sizes, steps = proof_schedule(preset, 512)
    assert sizes == [512, 1024, 2048]
    assert steps == [0, 100, 25]  # iterations x (512 / edge)^2: each scale costs about what the proof's did
    sizes, steps = proof_schedule(preset.model_copy(update={"pyramid": None}), 400)
    assert sizes == [400, 2048] and steps == [0, 15]


@pytest.mark.parametrize("color", ["none", "luminance"])
def test_a_final_from_its_proof_runs_only_the_scales_above_it(engine, color):
    content, style = _pictures()
    proof_preset = Preset(styles=["s.png"], size=32, iterations=30, early_stop=None, color=color, **SHALLOW)
    final_preset = proof_preset.model_copy(update={"size": 96})
    proof = engine.stylize([content], proof_preset, [style])[0]
    scales = set()
    final = engine.stylize([content], final_preset, [style], progress=lambda e: scales.add((e.height, e.width)),
                           resume=[FromProof(proof.image, proof_preset.fingerprint(size=False))])[0]
    assert tuple(final.image.shape) == (3, 72, 96)
    sizes, steps = proof_schedule(final_preset, 32)
    assert scales == {fit_long_edge(72, 96, edge) for edge in sizes[1:]}  # never the proof's scale, nor below
    assert final.iterations == sum(steps) and steps[0] == 0
    scratch = engine.stylize([content], final_preset, [style])[0]
    assert scratch.iterations > final.iterations
    # As 8-bit pixels, as the worker keeps them: the same start.
    pixels = (proof.image * 255).round().to(torch.uint8)
    kept = engine.stylize([content], final_preset, [style],
                          resume=[FromProof(pixels, proof_preset.fingerprint(size=False))])[0]
    assert kept.iterations == final.iterations


def _gap(proof: torch.Tensor, final: torch.Tensor) -> float:
    """Mean absolute difference of the proof and the final shrunk to its size."""
    return float((resize(final[None], tuple(proof.shape[-2:]))[0] - proof).abs().mean())


def test_the_proof_term_holds_the_final_to_its_proof(engine, monkeypatch):
    content, style = _pictures()
    proof_preset = Preset(styles=["s.png"], size=32, iterations=360, early_stop=None, pyramid=None, style_weight=30,
                          **SHALLOW)
    final_preset = proof_preset.model_copy(update={"size": 96})  # 40 refine iterations at 96 px
    proof = engine.stylize([content], proof_preset, [style])[0]
    start = FromProof(proof.image, proof_preset.fingerprint(size=False))
    held = engine.stylize([content], final_preset, [style], resume=[start])[0]
    monkeypatch.setattr(engine_module, "PROOF_WEIGHT", 0.0)
    free = engine.stylize([content], final_preset, [style], resume=[start])[0]
    assert _gap(proof.image, held.image) < 0.5 * _gap(proof.image, free.image)
    assert held.tv > free.tv  # the term is reported in the pixel terms' row


def test_the_proof_term_and_its_gradient_are_exact_and_tiled_alike(monkeypatch):
    """losses.ProofLoss against autograd through its own forward (fp64), and a tiled final equals the untiled."""
    image = torch.rand(2, 3, 40, 52, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    proof = torch.rand(2, 3, 10, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    term = ProofLoss(proof, 7.0)
    value, gradient = term.value_and_gradient(image)
    leaf = image.clone().requires_grad_(True)
    expected = 7.0 * ((torch.nn.functional.interpolate(leaf, size=(10, 13), mode="bicubic", antialias=True)
                       - proof) ** 2).mean(dim=(1, 2, 3))
    (grad,) = torch.autograd.grad(expected.sum(), leaf)
    assert torch.allclose(value, expected.detach()) and torch.allclose(gradient, grad)
    engine = Engine(device="cpu", weights="random", precision="fp64")
    content, style = _pictures()
    proof_preset = Preset(styles=["s.png"], size=32, iterations=8, early_stop=None, pyramid=None, **SHALLOW)
    final_preset = proof_preset.model_copy(update={"size": 96})
    start = FromProof(engine.stylize([content], proof_preset, [style])[0].image, proof_preset.fingerprint(size=False))
    [untiled] = engine.stylize([content], final_preset, [style], resume=[start])
    monkeypatch.setattr(engine, "work_memory", engine.untiled_bytes((72, 96), final_preset.history_size) // 2)
    [tiled] = engine.stylize([content], final_preset, [style], resume=[start])
    assert tiled.timings["tiles"] > 1 and "tiles" not in untiled.timings
    assert float((tiled.image - untiled.image).abs().max()) <= 1 / 255
    assert tiled.loss == pytest.approx(untiled.loss, rel=1e-4)


def test_a_proof_a_pixel_off_the_final_s_rounding_still_starts_it(engine, caplog):
    """A 41x24 photo is 32x19 at 32 px, but its 64 px output (64x37) is 32x18 at 32 px: the proof still serves."""
    g = torch.Generator().manual_seed(1)
    content, style = torch.rand(3, 24, 41, generator=g), torch.rand(3, 64, 64, generator=g)
    proof_preset = Preset(styles=["s.png"], size=32, iterations=10, early_stop=None, **SHALLOW)
    proof = engine.stylize([content], proof_preset, [style])[0]
    assert tuple(proof.image.shape[-2:]) == (19, 32) and fit_long_edge(37, 64, 32) == (18, 32)
    final_preset = proof_preset.model_copy(update={"size": 64})
    with caplog.at_level(logging.INFO, logger="nst_watch.engine"):
        final = engine.stylize([content], final_preset, [style],
                               resume=[FromProof(proof.image, proof_preset.fingerprint(size=False))])[0]
    assert "afresh" not in caplog.text and "from scratch" not in caplog.text
    assert final.iterations == sum(proof_schedule(final_preset, 32)[1])


def test_a_proof_that_cannot_serve_starts_the_final_from_scratch(engine, caplog):
    content, style = _pictures()
    proof_preset = Preset(styles=["s.png"], size=32, iterations=10, early_stop=None, **SHALLOW)
    proof = engine.stylize([content], proof_preset, [style])[0]
    look = proof_preset.fingerprint(size=False)
    final = proof_preset.model_copy(update={"size": 64})
    scratch_steps = engine.stylize([content], final, [style])[0].iterations
    cases = {
        "other settings": (final.model_copy(update={"style_weight": 9.0}), FromProof(proof.image, look)),
        "not smaller": (proof_preset, FromProof(proof.image, look)),
        "shape": (final, FromProof(proof.image[:, :, :20], look)),
    }
    for why, (preset, start) in cases.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nst_watch.engine"):
            result = engine.stylize([content], preset, [style], resume=[start])[0]
        assert "starts from scratch" in caplog.text, why
        if preset is final:
            assert result.iterations == scratch_steps, why


# --- the kept images -----------------------------------------------------------------------------------------


def test_kept_proofs_are_bounded_least_recently_used_first(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    for job in (1, 2, 3):
        keep_proof(tmp_path, job, pixels, "look", budget=10**9)
        os.utime(kept_path(tmp_path, job), (1000 + job, 1000 + job))
    one = kept_path(tmp_path, 1).stat().st_size
    assert kept_proof(tmp_path, 1).look == "look"  # read: now the most recently used
    np.testing.assert_array_equal(kept_proof(tmp_path, 2).pixels, pixels)  # lossless
    os.utime(kept_path(tmp_path, 3), (900, 900))
    removed = evict(tmp_path, budget=2 * one + one // 2)
    assert [p.name for p in removed] == ["3.png"]
    assert kept_proof(tmp_path, 3) is None and kept_proof(tmp_path, 1) is not None
    # The one just written is kept even alone over the budget.
    keep_proof(tmp_path, 4, pixels, "look", budget=1)
    assert sorted(p.name for p in (tmp_path / "proofs").iterdir()) == ["4.png"]


# --- config --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folders, key", [
    ({"proofs": "p", "finals": "p"}, "finals"),
    ({"finals": "outbox"}, "finals"),
    ({"finals": "processed"}, "finals"),  # each original moved there would ask for its finals
    ({"finals": "failed/keepers"}, "finals"),
    ({"proofs": "outbox"}, "proofs"),
])
def test_proof_folders_apart_from_every_folder_nst_watch_writes(tmp_path, folders, key):
    studio = Studio(tmp_path, presets=("a",), watch={"proof": 16, **{k: str(tmp_path / v) for k, v in folders.items()}})
    with pytest.raises(ConfigError) as caught:
        load_config(studio.config)
    assert f"watches.0.{key}" in str(caught.value) and "a folder of its own" in str(caught.value)
    result = nst("validate", "-c", studio.config)
    assert result.returncode == 78 and f"watches.0.{key} (line" in result.stderr


# --- the hot folder ------------------------------------------------------------------------------------------


def _proof_studio(tmp_path, **watch):
    return Studio(tmp_path, presets=("a",), watch={"proof": 20, **watch},
                  preset_settings={"size": 40, "iterations": 4, "output": {"format": "png"}})


def _done(studio, role):
    return [j for j in studio.jobs() if j.role == role and j.state == "done"]


def test_a_watch_proofs_every_photo_and_a_dropped_proof_gets_its_final(tmp_path):
    studio = _proof_studio(tmp_path)
    daemon = studio.start().wait_ready()
    try:
        photo(studio.inbox / "one.jpg", seed=1, size=(48, 40))
        photo(studio.inbox / "two.jpg", seed=2, size=(48, 40))
        wait_until(lambda: len(_done(studio, "proof")) == 2, timeout=90, what="two proofs")
        proofs_dir = studio.outbox / "proofs"
        made = sorted(proofs_dir.glob("*.png"))
        assert [p.name for p in made] == ["one-a.png", "two-a.png"]
        assert all(max(Image.open(p).size) == 20 for p in made)  # the proof's size, not the preset's 40
        assert not list(studio.outbox.glob("*.png"))  # no final yet
        proofs = {Path(j.source_path).name: j for j in _done(studio, "proof")}
        assert kept_path(studio.root / "state", proofs["one.jpg"].id).is_file()
        # The photographer copies one proof into finals/ under a name of their own: it is known by its content.
        (studio.outbox / "proofs" / "finals" / "pick.png").write_bytes(made[0].read_bytes())
        wait_until(lambda: _done(studio, "final"), timeout=90, what="the final")
        [final] = _done(studio, "final")
        assert final.proof_id == proofs["one.jpg"].id and final.priority == 1
        out = Path(final.output_path)
        assert out.parent == studio.outbox and max(Image.open(out).size) == 40
        # A stranger asks for nothing, and says so in status.
        finals_dir = studio.outbox / "proofs" / "finals"
        stranger = photo(tmp_path / "stranger.jpg", seed=5)
        os.rename(stranger, finals_dir / "stranger.jpg")
        wait_until(lambda: any(e["path"].endswith("stranger.jpg") for e in status(studio)["skipped"]), timeout=60,
                   what="the stranger listed as not taken")
        [listed] = [e for e in status(studio)["skipped"] if e["path"].endswith("stranger.jpg")]
        assert "neither a proof of watch inbox" in listed["reason"]
        # The original of the other, dropped into finals/, asks for its final too; asking again is the same job.
        (studio.outbox / "proofs" / "finals" / "two.jpg").write_bytes((studio.processed / "two.jpg").read_bytes())
        wait_until(lambda: len(_done(studio, "final")) == 2, timeout=90, what="the second final")
        again = nst("render", "-c", studio.config, proofs["two.jpg"].id, "--json")
        assert again.returncode == 0, again.stderr
        [record] = json.loads(again.stdout)
        assert record["created"] is False and record["state"] == "done"
        snap = status(studio)
    finally:
        assert daemon.stop() == 0
    roles = {(j["role"], Path(j["source"]).name) for j in snap["recent"]}
    assert roles == {("proof", "one.jpg"), ("proof", "two.jpg"), ("final", "one.jpg"), ("final", "two.jpg")}
    assert {j["size"] for j in snap["recent"] if j["role"] == "proof"} == {20}  # a number, as proof is
    finals = [j for j in snap["recent"] if j["role"] == "final"]
    assert {j["proof_id"] for j in finals} == {p.id for p in proofs.values()}
    table = nst("status", "-c", studio.config).stdout
    assert "a (proof 20 px)" in table and f"a (final of {proofs['one.jpg'].id})" in table
    assert sorted(p.name for p in studio.processed.iterdir()) == ["one.jpg", "two.jpg"]  # moved once, by proofs


def test_render_asks_for_finals_at_a_size_and_says_what_it_cannot(tmp_path):
    studio = _proof_studio(tmp_path)
    daemon = studio.start().wait_ready()
    try:
        photo(studio.inbox / "one.jpg", seed=1, size=(48, 40))
        wait_until(lambda: len(_done(studio, "proof")) == 1, timeout=90, what="the proof")
        [proof] = _done(studio, "proof")
        refused = nst("render", "-c", studio.config, proof.id, "--size", "18")
        assert refused.returncode == 1 and "must be larger" in refused.stderr
        bad = nst("render", "-c", studio.config, proof.id, "--size", "big")
        assert bad.returncode == 2 and "--size" in bad.stderr
        missing = nst("render", "-c", studio.config, 999)
        assert missing.returncode == 1 and "there is no job 999" in missing.stderr
        made = nst("render", "-c", studio.config, proof.id, "--size", "full")
        assert made.returncode == 0 and "final queued" in made.stdout, made.stderr
        wait_until(lambda: _done(studio, "final"), timeout=90, what="the full-size final")
        [final] = _done(studio, "final")
        not_a_proof = nst("render", "-c", studio.config, final.id)
        assert not_a_proof.returncode == 1 and f"job {final.id} is a final of proof {proof.id}" in not_a_proof.stderr
    finally:
        assert daemon.stop() == 0
    assert final.size == "full" and Image.open(final.output_path).size == (48, 40)


def test_an_evicted_proof_renders_from_scratch_with_a_note_and_a_failed_final_leaves_its_proof(tmp_path):
    studio = _proof_studio(tmp_path, processed="keep")
    daemon = studio.start().wait_ready()
    try:
        photo(studio.inbox / "one.jpg", seed=1, size=(48, 40))
        photo(studio.inbox / "two.jpg", seed=2, size=(48, 40))
        wait_until(lambda: len(_done(studio, "proof")) == 2, timeout=90, what="two proofs")
        proofs = {Path(j.source_path).name: j for j in _done(studio, "proof")}
        kept_path(studio.root / "state", proofs["one.jpg"].id).unlink()  # as eviction leaves it
        dragged = Path(proofs["one.jpg"].output_path)  # moved into finals/ keeping its name: known by it
        os.rename(dragged, studio.outbox / "proofs" / "finals" / dragged.name)
        wait_until(lambda: _done(studio, "final"), timeout=90, what="the final from scratch")
        [final] = _done(studio, "final")
        with studio.ledger() as ledger:
            notes = [e.message or "" for e in ledger.history(final.id)]
        assert any("renders from scratch" in n for n in notes), notes
    finally:
        assert daemon.stop() == 0
    # The other's original changes after its final was asked for: the final fails; the proof is untouched.
    two = studio.inbox / "two.jpg"
    kept = two.read_bytes()
    assert nst("render", "-c", studio.config, proofs["two.jpg"].id).returncode == 0
    photo(two, seed=9, size=(48, 40))
    daemon = studio.start().wait_ready()
    try:
        wait_until(lambda: any(j.role == "final" and j.state == "failed" for j in studio.jobs()), timeout=90,
                   what="the failed final")
        with studio.ledger() as ledger:
            proof = ledger.get(proofs["two.jpg"].id)
        assert proof.state == "done" and Path(proof.output_path).is_file()
        assert not studio.failed.exists() or not list(studio.failed.iterdir())
        # An original gone: render says where to drop a copy; a copy dropped there renders the final.
        Path(proofs["one.jpg"].source_path).unlink()
        gone = nst("render", "-c", studio.config, proofs["one.jpg"].id, "--size", "30")
        assert gone.returncode == 1 and "is gone; drop a copy into" in gone.stderr and "finals" in gone.stderr
        # The failed final, its original changed: a copy of the photo as it was, dropped, renders it.
        copy = studio.root / "copy.jpg"
        copy.write_bytes(kept)
        os.rename(copy, studio.outbox / "proofs" / "finals" / "copy.jpg")
        wait_until(lambda: len(_done(studio, "final")) == 2, timeout=90, what="the final from the dropped copy")
        assert "copy.jpg: final of proof" in daemon.log and "queued again" in daemon.log
    finally:
        assert daemon.stop() == 0
    assert (studio.outbox / "proofs" / "finals" / "copy.jpg").is_file()  # the drop stays where it was dropped


def test_submit_proof_then_render(tmp_path):
    studio = _proof_studio(tmp_path)
    source = photo(tmp_path / "shoot" / "one.jpg", seed=1, size=(48, 40))
    daemon = studio.start(role="run").wait_ready()
    try:
        out = tmp_path / "delivered"
        queued = nst("submit", "-c", studio.config, source, "-p", "a", "--proof", "20", "--out-dir", out, "--json")
        assert queued.returncode == 0, queued.stderr
        [record] = json.loads(queued.stdout)
        assert record["role"] == "proof"
        wait_until(lambda: len(_done(studio, "proof")) == 1, timeout=90, what="the proof")
        assert [p.name for p in (out / "proofs").iterdir() if not p.name.startswith(".")] == ["one-a.png"]
        assert nst("render", "-c", studio.config, record["job"]).returncode == 0
        wait_until(lambda: _done(studio, "final"), timeout=90, what="the final")
    finally:
        assert daemon.stop() == 0
    [final] = _done(studio, "final")
    assert Path(final.output_path).parent == out and max(Image.open(final.output_path).size) == 40
    assert source.exists()  # submitted originals are never moved


def test_submit_refuses_a_proof_size_the_photo_cannot_take(tmp_path):
    studio = _proof_studio(tmp_path)
    thin = photo(tmp_path / "thin.jpg", seed=1, size=(100, 60))
    refused = nst("submit", "-c", studio.config, thin, "-p", "a", "--proof", "24", "--json")
    assert refused.returncode == 1
    assert "--proof 24 makes it 24x14, too small for layer relu5_1" in refused.stderr
    assert "fits at --proof 27 or more" in refused.stderr
    assert not studio.jobs()


def test_stylize_proof_writes_proofs_at_the_proof_size(tmp_path):
    source = photo(tmp_path / "one.jpg", seed=1, size=(48, 40))
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "s.png")
    run = nst("stylize", source, "--style", tmp_path / "s.png", "--weights", "random", "--iterations", "2",
              "--proof", "20", "--out-dir", tmp_path / "out", "--json")
    assert run.returncode == 0, run.stderr
    [record] = json.loads(run.stdout)
    assert Path(record["output"]).parent == tmp_path / "out" / "proofs"
    assert max(Image.open(record["output"]).size) == 20
    both = nst("stylize", source, "--style", tmp_path / "s.png", "--proof", "20", "--size", "30")
    assert both.returncode == 2 and "--proof or --size" in both.stderr


def test_a_v3_ledger_gains_the_proof_columns_in_place(tmp_path):
    path = tmp_path / "jobs.db"
    with Ledger(path) as ledger:
        job = ledger.add(sha256="a" * 64, preset="p", preset_hash="h", source_path="/x.jpg").job
    conn = sqlite3.connect(path)
    for column in ("size", "proof", "proof_id"):  # back to the v3 shape
        conn.execute("DROP INDEX IF EXISTS jobs_proof")
        conn.execute("DROP INDEX IF EXISTS jobs_proofs")
        conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with Ledger(path) as ledger:
        again = ledger.get(job.id)
        assert ledger.pragmas()["user_version"] == SCHEMA_VERSION == 4
        assert again.role == "" and again.sha256 == "a" * 64
        final = ledger.add(sha256="a" * 64, preset="p", preset_hash="h2", source_path="/x.jpg", proof_id=job.id)
        assert final.job.role == "final" and ledger.finals_of([job.id])[0].id == final.job.id


def test_request_final_refuses_what_is_no_done_proof(tmp_path):
    studio = _proof_studio(tmp_path)
    config = load_config(studio.config)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with Ledger(config.ledger_path) as ledger:
        plain = ledger.add(sha256="b" * 64, preset="a", preset_hash="h", source_path="/x.jpg").job
        pending = ledger.add(sha256="c" * 64, preset="a", preset_hash="h", source_path="/y.jpg", size=16,
                             proof=16).job
        for job_id, words in ((plain.id, "not a proof"), (pending.id, "pending, not done"), (77, "no job 77")):
            with pytest.raises(FinalError, match=words):
                request_final(config, ledger, job_id)
