"""The Ray backend (issue 14) on a real local Ray runtime.

`num_gpus` is a logical resource: GPU actors schedule on this CPU-only
machine and run their engines on the CPU. Every test drives the real
daemon (`nst-watch run --ray` / `cluster:` in the YAML), the real ledger
and real Ray processes; they share one pytest-xdist worker (xdist_group),
so one Ray runtime runs at a time on the two cores. Ray's session folders
go to a temp dir of this module's, removed whatever the outcome.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daemon_kit import Studio, environment, photo, unprefixed, wait_until
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
    # ray.cluster_utils.Cluster writes its address to <Ray's default temp dir>/ray_current_cluster
    # whatever temp_dir it is given, and creates no folder for it (Ray 2.60): on a machine where no
    # Ray ran before (a fresh CI box, or after /tmp was cleaned) the first head failed to start.
    from ray._common.utils import get_default_ray_temp_dir

    Path(get_default_ray_temp_dir()).mkdir(parents=True, exist_ok=True)
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


def _listening(pids: set[int]) -> list[str]:
    """The TCP addresses ("IP:PORT") on which processes `pids` listen (from /proc/net/tcp and tcp6)."""
    inodes = set()
    for pid in pids:
        try:
            inodes |= {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue  # gone, or a file descriptor closed meanwhile
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in open(table).read().splitlines()[1:]:
            fields = row.split()
            if fields[3] != "0A" or f"socket:[{fields[9]}]" not in inodes:  # 0A: LISTEN
                continue
            hexip, port = fields[1].split(":")
            raw = b"".join(bytes.fromhex(hexip[i:i + 8])[::-1] for i in range(0, len(hexip), 8))
            ip = ipaddress.ip_address(raw)
            found.append(f"{getattr(ip, 'ipv4_mapped', None) or ip}:{int(port, 16)}")
    return found


def _descendants(pid: int) -> set[int]:
    """`pid` and every process below it (Ray's GCS, raylet, agents and the engines' workers)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {pid}, {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _ray(*args: str, env: dict) -> subprocess.CompletedProcess:
    """The `ray` command line, run with this Python."""
    return subprocess.run([sys.executable, "-c", "from ray.scripts.scripts import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=120)


class RayHead:
    """`ray start --head --block ARGS`, as a user starts a cluster, in a session of its own.

    Stopped through its process group, never `ray stop`: that ends every
    Ray runtime of this user, this module's own included.
    """

    def __init__(self, root: Path, *args: str, env: dict):
        self.port = _free_port()
        self.log_path = root / "ray-head.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--head", "--block",
                 f"--port={self.port}", "--include-dashboard=false", *args],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: "Ray runtime started" in self.log_path.read_text() or self.proc.poll() is not None, 120,
                   what="`ray start --head`", detail=lambda: self.log_path.read_text()[-3000:])
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]

    def stop(self) -> None:
        """Kill the head's processes at once (`ray start --block` takes half a minute over SIGTERM)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)


@pytest.fixture
def ray_head(tmp_path, ray_tmp):
    """Start RayHead(*args, env=...) heads for a test; every one is stopped when it ends, passed or failed."""
    heads = []

    def start(*args: str, env: dict) -> RayHead:
        heads.append(RayHead(tmp_path, *args, env=env))
        return heads[-1]

    yield start
    for head in heads:
        head.stop()


def _alone(tmp_path: Path, ray_tmp: Path, **changes) -> dict:
    """An environment of its own for a head and its daemons: an empty HOME (no token), Ray's temp dir in
    `ray_tmp` (so `--ray` alone finds this head), no RAY_AUTH_* (pytest's own ray.init sets RAY_AUTH_MODE)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix="h", dir=ray_tmp))
    return environment({"HOME": str(home), "RAY_TMPDIR": str(temp), "RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None,
                        "RAY_AUTH_TOKEN_PATH": None, "RAY_ADDRESS": None, **changes})


def _readme_recipe() -> list[str]:
    """The commands of the README's one-machine Ray recipe, as written."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("To try it on one machine without a GPU", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_one_machine_recipe_listens_on_loopback_only_and_uses_the_users_token(tmp_path, ray_tmp,
                                                                                        ray_head):
    recipe = _readme_recipe()
    assert recipe == ["export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0",
                      "ray get-auth-token --generate >/dev/null && chmod 600 ~/.ray/auth_token",
                      "ray start --head --num-gpus=2", "nst-watch run -c config.yaml --ray", "ray stop"]
    env = _alone(tmp_path, ray_tmp, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    token = Path(env["HOME"]) / ".ray" / "auth_token"
    assert _ray("get-auth-token", "--generate", env=env).returncode == 0 and token.stat().st_size > 0
    head = ray_head("--num-gpus=2", env=env)  # the recipe's flags; the port, --block, no dashboard: the test's
    studio = Studio(tmp_path)
    daemon = studio.start("--ray", env=env)
    try:
        daemon.wait_ready(120)
        wait_until(lambda: _engines_up(studio) == 2, 180, what="2 Ray engines up", detail=lambda: daemon.log)
        photo(studio.inbox / "one.jpg")
        wait_until(lambda: studio.counts().get("done") == 2, 180, what="2 jobs done", detail=lambda: daemon.log)
        addresses = _listening(_descendants(head.proc.pid))
        assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), addresses
    finally:
        assert daemon.stop(120) == 0
    assert unprefixed(daemon.log) == []  # nst-watch's lines only: no Ray line, no colour code
    assert "logging.cc" not in daemon.log and "Token authentication" not in daemon.log
    assert (studio.root / "state" / "ray-driver.log").exists()  # where Ray's own lines went

    # An explicit address: Ray itself would use no token there; nst-watch asks the head and uses it.
    photo(tmp_path / "more.jpg", seed=5)
    assert subprocess.run([sys.executable, "-m", "nst_watch", "submit", "-c", str(studio.config),
                           str(tmp_path / "more.jpg"), "-p", "a", "--out-dir", str(studio.outbox)],
                          env=env, capture_output=True).returncode == 0
    work = studio.start("--ray", f"127.0.0.1:{head.port}", role="work", env=env)
    try:
        wait_until(lambda: studio.counts().get("done") == 3, 180, what="the submitted job done by `work --ray "
                   "127.0.0.1:PORT`", detail=lambda: work.log)
    finally:
        assert work.stop(120) == 0
    assert (studio.outbox / "more-a.jpg").exists() and unprefixed(work.log) == []

    # A user without the token, or with another one, is refused at once, told which file to fix.
    others = {"no token": "does not exist", "another token": "is not the one the cluster was started with"}
    for case, why in others.items():
        home = tmp_path / case
        (home / ".ray").mkdir(parents=True)
        if case == "another token":
            (home / ".ray" / "auth_token").write_text("f" * 32)
        refused = studio.start("--ray", f"127.0.0.1:{head.port}", role="work", env={**env, "HOME": str(home)})
        assert refused.proc.wait(60) == 1
        assert unprefixed(refused.log) == []
        [line] = [line for line in refused.log.splitlines() if "nst-watch: error:" in line]
        assert line.startswith("<3>nst-watch: error: the Ray cluster at 127.0.0.1:") and "wants its token" in line
        assert f"{home / '.ray' / 'auth_token'} {why}" in line


def test_a_cluster_without_token_auth_is_joined_though_the_user_has_a_token(tmp_path, ray_tmp, ray_head):
    # Ray's own driver would turn token mode on for --ray (auto) here, and its engines would never start.
    env = _alone(tmp_path, ray_tmp, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    assert _ray("get-auth-token", "--generate", env=env).returncode == 0
    ray_head("--num-gpus=1", env={**env, "RAY_AUTH_MODE": "disabled"})
    studio = Studio(tmp_path, presets=("a",))
    photo(studio.inbox / "one.jpg")
    daemon = studio.start("--ray", env=env)
    try:
        wait_until(lambda: studio.counts().get("done") == 1, 180, what="the job done", detail=lambda: daemon.log)
    finally:
        assert daemon.stop(120) == 0
    assert unprefixed(daemon.log) == []


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
    assert unprefixed(daemon.log) == []  # Ray's "(raylet) A worker died ..." went to state/ray-driver.log


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
    assert unprefixed(daemon.log) == [] and "<3>nst-watch: error: no Ray cluster answers" in daemon.log
    # The same line from the dispatcher child of `run`, in the daemon's log.
    daemon = studio.start()
    try:
        daemon.wait_log("<3>nst-watch: error: no Ray cluster answers at 127.0.0.1:", 60)
        daemon.wait_log("photos are still taken", 30)
    finally:
        assert daemon.stop() == 0
    assert unprefixed(daemon.log) == []
