"""The Ray backend (issue 14) on a real local Ray runtime.

`num_gpus` is a logical resource: GPU actors schedule on this CPU-only
machine and run their engines on the CPU. Every test drives the real
daemon (`nst-watch run --ray` / `cluster:` in the YAML), the real ledger
and real Ray processes; they share one pytest-xdist worker (xdist_group),
so one Ray runtime runs at a time on the two cores. Ray's session folders
go to a temp dir of this module's, removed whatever the outcome.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daemon_kit import Studio, photo, wait_until
from nst_watch.service.status import cluster_summary, snapshot
from test_service import NotifySocket

ray = pytest.importorskip("ray", reason="the Ray tests need Ray: pip install -e '.[test]' installs it")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.timeout(900)]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _snap(studio: Studio) -> dict:
    with studio.ledger() as ledger:
        return snapshot(studio.root / "state", ledger)


def _cluster(studio: Studio, role: str = "run") -> dict:
    """The cluster block of the `run` daemon's (or its `ray` dispatcher's) live status."""
    return next((p["cluster"] for p in _snap(studio)["processes"] if p["role"] == role and p.get("cluster")), {})


def _engines_up(studio: Studio) -> int:
    return sum(1 for a in _cluster(studio, "ray").get("actors") or [] if a.get("ready"))


def _lanes(snap: dict) -> list[dict]:
    return [w for p in snap["processes"] if p["role"] == "ray" for w in p.get("workers") or []]


def _owners(studio: Studio, job_id: int) -> list[str]:
    """Who claimed the job, attempt by attempt (from the ledger's history)."""
    with studio.ledger() as ledger:
        return [e.message.removeprefix("claimed by ") for e in ledger.history(job_id)
                if e.message and e.message.startswith("claimed by ")]


def _twelve_photos(studio: Studio) -> list[str]:
    return [photo(studio.inbox / f"p{i:02}.jpg", seed=i).stem for i in range(12)]


def _expect_24_outputs(studio: Studio, stems: list[str]) -> None:
    names = sorted(p.name for p in studio.outputs())
    assert names == sorted(f"{stem}-{preset}.jpg" for stem in stems for preset in ("a", "b"))
    for path in studio.outputs():
        with Image.open(path) as image:
            assert image.format == "JPEG" and max(image.size) == 32
    assert studio.leftovers() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_tmp():
    """A temp dir for Ray's session folders (sockets, logs: megabytes a runtime), removed even when a test failed.

    Not under tmp_path: Ray puts its Unix sockets in the session folder,
    and pytest's deep tmp_path names would pass the 107-byte limit on a
    socket's path.
    """
    path = Path(tempfile.mkdtemp(prefix="nst-ray-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_cluster_that_goes_away_keeps_intake_running_and_work_resumes_when_it_is_back(tmp_path, ray_tmp):
    # First in the file: its own head on a fixed port, started again on that port.
    port = _free_port()
    head_args = {"num_cpus": 1, "num_gpus": 1, "gcs_server_port": port, "temp_dir": str(ray_tmp)}
    head = Cluster(initialize_head=True, head_node_args=head_args)
    studio = Studio(tmp_path)
    studio.write_config(cluster={"backend": "ray", "address": head.address})
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = studio.start(env={"NOTIFY_SOCKET": str(notify.path)})
    again = None
    try:
        daemon.wait_ready(120)
        photo(studio.inbox / "before.jpg", seed=1)
        wait_until(lambda: studio.counts().get("done") == 2, 180, what="2 jobs done on the cluster")
        wait_until(lambda: any("Ray cluster up with 1 GPUs" in m for m in notify.drain()), 30, what="STATUS up")

        head.shutdown()
        photo(studio.inbox / "during.jpg", seed=2)
        wait_until(lambda: studio.counts().get("pending") == 2, 60, what="the intake to queue a photo")
        wait_until(lambda: _cluster(studio).get("state") in ("lost", "unreachable"), 120, what="cluster lost")
        wait_until(lambda: any("Ray cluster" in m and "jobs wait, photos still taken" in m for m in notify.drain()),
                   60, what="STATUS saying the cluster is away")
        photo(studio.inbox / "later.jpg", seed=3)  # still taken while the cluster is away
        wait_until(lambda: studio.counts().get("pending") == 4, 60, what="the intake to queue a second photo")
        assert daemon.proc.poll() is None
        assert "photos are still taken" in daemon.log

        again = Cluster(initialize_head=True, head_node_args=head_args)
        wait_until(lambda: studio.counts().get("done") == 6, 300, what="the waiting jobs done once it is back")
        wait_until(lambda: _cluster(studio).get("state") == "connected", 60, what="connected again")
    finally:
        code = daemon.stop(120)
        for cluster in (head, again):
            if cluster is not None:
                cluster.shutdown()
    assert code == 0
    assert sorted(p.name for p in studio.outputs()) == sorted(
        f"{stem}-{preset}.jpg" for stem in ("before", "during", "later") for preset in ("a", "b"))
    assert studio.leftovers() == []
    assert all(j.state == "done" for j in studio.jobs())


@pytest.fixture(scope="module")
def two_gpus(ray_tmp):
    """A real local Ray runtime with two logical GPUs; yields its address for `--ray`.

    address="local": always a new runtime. Without it ray.init joins the
    cluster named in /tmp/ray/ray_current_cluster (left by an earlier head,
    perhaps this fixture's own before xdist ran another module in between)
    and refuses num_cpus/num_gpus.
    """
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING",
             _temp_dir=str(ray_tmp))
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_twelve_photos_two_presets_through_two_actors_give_24_outputs_each_done_once(tmp_path, two_gpus):
    studio = Studio(tmp_path, service={"batch": 2})
    daemon = studio.start("--ray", two_gpus)
    try:
        daemon.wait_ready(120)
        wait_until(lambda: _engines_up(studio) == 2, 180, what="2 Ray engines up")
        stems = _twelve_photos(studio)
        wait_until(lambda: studio.counts().get("done") == 24, 300, what="24 jobs done")
        cluster = _cluster(studio)
        assert cluster["state"] == "connected" and cluster["gpus"] == 2 and cluster["backend"] == "ray"
    finally:
        assert daemon.stop(120) == 0
    _expect_24_outputs(studio, stems)
    jobs = studio.jobs()
    assert len(jobs) == 24 and {j.state for j in jobs} == {"done"} and {j.attempts for j in jobs} == {1}
    owners = {owner for j in jobs for owner in _owners(studio, j.id)}
    assert len(owners) == 2 and all(":ray-" in o for o in owners), owners  # both GPUs pulled work
    assert "Traceback" not in daemon.log


def test_watch_plus_work_ray_share_the_ledger_with_a_local_worker(tmp_path, two_gpus):
    # The two-process form (`watch` + `work --ray`) and a local `work` beside it: one ledger, each job once.
    studio = Studio(tmp_path, service={"batch": 1}, preset_settings={"iterations": 20})
    watcher = studio.start(role="watch")
    dispatcher = studio.start("--ray", two_gpus, role="work")
    local = None
    try:
        watcher.wait_ready()
        wait_until(lambda: _engines_up(studio) == 2, 180, what="2 Ray engines up")
        local = studio.start(role="work")
        local.wait_ready()
        stems = [photo(studio.inbox / f"s{i}.jpg", seed=20 + i).stem for i in range(6)]
        wait_until(lambda: studio.counts().get("done") == 12, 300, what="12 jobs done")
    finally:
        codes = [p.stop(120) for p in (watcher, dispatcher, local) if p is not None]
    assert codes == [0, 0, 0]
    assert sorted(p.name for p in studio.outputs()) == sorted(f"{s}-{p}.jpg" for s in stems for p in ("a", "b"))
    jobs = studio.jobs()
    assert {j.attempts for j in jobs} == {1} and {j.state for j in jobs} == {"done"}
    owners = [o for j in jobs for o in _owners(studio, j.id)]
    assert any(":ray-" in o for o in owners) and any(":ray-" not in o for o in owners), owners


def test_a_photo_stylised_on_the_cluster_is_the_picture_a_local_worker_makes(tmp_path, two_gpus):
    # 96x80 photos for 32 px outputs: the coordinator's resize stands in for the engine's.
    png = {"output": {"format": "png"}}
    pictures = []
    for name, args in (("local", ()), ("ray", ("--ray", two_gpus))):
        studio = Studio(tmp_path / name, presets=("a",), preset_settings=png)
        photo(studio.inbox / "big.jpg", seed=4, size=(96, 80))
        daemon = studio.start(*args)
        try:
            wait_until(lambda: studio.counts().get("done") == 1, 180, what=f"the {name} job")
        finally:
            assert daemon.stop(120) == 0
        [output] = studio.outputs()
        with Image.open(output) as image:
            pictures.append(np.asarray(image))
    assert pictures[0].shape == (27, 32, 3)
    assert np.array_equal(pictures[0], pictures[1])


def test_an_actor_killed_mid_job_loses_nothing_and_its_job_runs_again(tmp_path, two_gpus):
    # One photo per batch and long enough jobs to kill an actor in the middle of one.
    studio = Studio(tmp_path, service={"batch": 1}, preset_settings={"size": 32, "iterations": 80})
    daemon = studio.start("--ray", two_gpus)
    try:
        daemon.wait_ready(120)
        wait_until(lambda: _engines_up(studio) == 2, 180, what="2 Ray engines up")
        stems = _twelve_photos(studio)

        def mid_job():
            snap = _snap(studio)
            lane = next((w for w in _lanes(snap) if w.get("jobs") and w.get("step", 0) >= 3), None)
            return (lane, snap) if lane else None

        lane, snap = wait_until(mid_job, 180, what="an actor in the middle of a job")
        actors = next(p["cluster"]["actors"] for p in snap["processes"] if p["role"] == "ray")
        pid = next(a["pid"] for a in actors if a["owner"] == lane["owner"])
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: studio.counts().get("done") == 24, 400, what="24 jobs done after the kill")
    finally:
        assert daemon.stop(120) == 0
    _expect_24_outputs(studio, stems)
    jobs = studio.jobs()
    assert {j.state for j in jobs} == {"done"}
    lost = [j for j in jobs if j.attempts != 1]
    assert [j.attempts for j in lost] == [2], [(j.id, j.attempts) for j in lost]
    assert lost[0].id in lane["jobs"] and lost[0].lost_leases == 1
    assert _owners(studio, lost[0].id)[0] == lane["owner"]
    assert "was lost mid-batch" in daemon.log and "back to pending for the next free engine" in daemon.log


def test_sigterm_past_the_grace_period_hands_ray_jobs_back_uncounted_and_exits_0(tmp_path, two_gpus):
    studio = Studio(tmp_path, service={"batch": 1, "grace_seconds": 1},
                    preset_settings={"iterations": 3000, "early_stop": None})
    daemon = studio.start("--ray", two_gpus)
    try:
        daemon.wait_ready(120)
        wait_until(lambda: _engines_up(studio) == 2, 180, what="2 Ray engines up")
        photo(studio.inbox / "long.jpg")
        wait_until(lambda: sum(1 for w in _lanes(_snap(studio)) if w.get("step", 0) >= 2) == 2, 120,
                   what="both engines in the middle of a job")
    finally:
        code = daemon.stop(120)
    assert code == 0  # Ray's own SIGTERM handler (exit at once) must not replace the daemon's
    jobs = studio.jobs()
    assert [(j.state, j.attempts) for j in jobs] == [("pending", 0), ("pending", 0)]
    assert daemon.log.count("released 1 job(s) for the next start") == 2
    assert studio.outputs() == [] and studio.leftovers() == []


def test_an_engine_that_cannot_load_on_the_cluster_is_named_in_status_and_tried_again(tmp_path, two_gpus):
    from torchvision.models import vgg

    weights = tmp_path / "vgg19.pth"  # not there yet: every engine fails to start
    studio = Studio(tmp_path, presets=("a",))
    studio.write_config(engine={"weights": str(weights), "device": "cpu"})
    daemon = studio.start("--ray", two_gpus)
    try:
        daemon.wait_ready(120)
        photo(studio.inbox / "waits.jpg")

        def named():
            actors = _cluster(studio, "ray").get("actors") or []
            return [a["problem"] for a in actors if a.get("problem")]

        problems = wait_until(named, 180, what="status naming why the engines are not up")
        assert f"WeightsError: {weights}: no such file" in problems[0]
        wait_until(lambda: "an engine is not up: WeightsError" in cluster_summary(_cluster(studio)), 30,
                   what="the run daemon's status line about the cluster naming the error")
        wait_until(lambda: studio.counts().get("pending") == 1, 60, what="the job queued")
        [job] = studio.jobs()
        assert job.state == "pending" and job.attempts == 0  # never claimed without an engine

        torch.save({f"features.{k}": v for k, v in vgg.make_layers(vgg.cfgs["E"]).state_dict().items()}, weights)
        wait_until(lambda: studio.counts().get("done") == 1, 240, what="the job done once the weights are there")
    finally:
        assert daemon.stop(120) == 0
    assert "a Ray engine is not up: WeightsError" in daemon.log


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped by init
    except FileNotFoundError:
        return True


def test_the_dispatcher_does_not_outlive_a_killed_daemon_and_hands_its_job_back(tmp_path, two_gpus):
    studio = Studio(tmp_path, presets=("a",), preset_settings={"iterations": 3000, "early_stop": None})
    daemon = studio.start("--ray", two_gpus)
    daemon.wait_ready(120)
    wait_until(lambda: _engines_up(studio) == 2, 180, what="2 Ray engines up")
    child = _cluster(studio)["dispatcher"]
    photo(studio.inbox / "held.jpg")
    wait_until(lambda: studio.counts().get("leased") == 1, 120, what="the job running on the cluster")
    daemon.kill()  # SIGKILL: no chance to stop its child, so the kernel tells the child (PR_SET_PDEATHSIG)
    wait_until(lambda: _gone(child), 60, what="the dispatcher child to go with it")
    [job] = studio.jobs()
    assert (job.state, job.attempts) == ("pending", 0)  # its grace ran out: handed back, not counted
    assert "released 1 job(s) for the next start" in daemon.log
    assert studio.leftovers() == []


def test_single_machine_roles_never_load_ray_nor_the_watcher_torch(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    watcher = studio.start(role="watch")
    runner = None
    try:
        watcher.wait_ready()
        maps = open(f"/proc/{watcher.proc.pid}/maps").read()
        assert "libtorch" not in maps and "_raylet" not in maps
        watcher.stop()
        runner = studio.start()
        runner.wait_ready()
        photo(studio.inbox / "one.jpg")
        wait_until(lambda: studio.counts().get("done") == 1, 120, what="the local worker's job")
        maps = open(f"/proc/{runner.proc.pid}/maps").read()
        assert "libtorch" in maps and "_raylet" not in maps  # local engine, no Ray
    finally:
        watcher.stop()
        if runner is not None:
            assert runner.stop() == 0


def test_the_ray_backend_without_ray_installed_says_how_to_install_it(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.util, sys\n"
        "class _NoRay:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _NoRay())\n")
    daemon = studio.start("--ray", env={"PYTHONPATH": str(hide)})
    assert daemon.proc.wait(60) == 78
    assert "pip install -e '.[ray]'" in daemon.log and "cluster.backend: local" in daemon.log


def test_run_with_ray_fails_fast_naming_an_address_where_no_cluster_listens(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    studio.write_config(cluster={"backend": "ray", "address": f"127.0.0.1:{_free_port()}"})
    daemon = studio.start(role="work")
    assert daemon.proc.wait(60) == 1
    assert "no Ray cluster answers at 127.0.0.1:" in daemon.log and "ray start --head" in daemon.log
