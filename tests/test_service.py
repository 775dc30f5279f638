"""Running as a system service: unit files, sd_notify, several workers, exit codes."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_kit import Studio, photo, wait_until
from nst_watch.service.notify import Notifier

REPO = Path(__file__).resolve().parent.parent
UNITS = sorted((REPO / "systemd").glob("*.service"))


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run should have installed systemd")
        pytest.skip("systemd-analyze not installed")
    return tool


@pytest.fixture(scope="module")
def installed_units(tmp_path_factory):
    """The unit files as the install guide deploys them: nst-watch at this machine's path."""
    folder = tmp_path_factory.mktemp("units")
    binary = shutil.which("nst-watch") or pytest.fail("nst-watch is not on PATH: pip install -e .")
    for unit in UNITS:
        (folder / unit.name).write_text(unit.read_text().replace("/usr/local/bin/nst-watch", binary))
    # A template is verified as an instance.
    shutil.copy(folder / "nst-watch-worker@.service", folder / "nst-watch-worker@0.service")
    return folder


def test_every_unit_passes_systemd_analyze_verify(installed_units):
    tool = systemd_analyze()
    assert {u.name for u in UNITS} == {"nst-watch.service", "nst-watch-watcher.service", "nst-watch-worker@.service"}
    for name in ("nst-watch.service", "nst-watch-watcher.service", "nst-watch-worker@0.service"):
        result = subprocess.run([tool, "verify", name], cwd=installed_units, capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert "nst-watch" not in result.stderr, result.stderr  # no warnings about our units either


@pytest.mark.parametrize("unit, ceiling", [
    ("nst-watch-watcher.service", 3.0),  # CPU only
    ("nst-watch-worker@0.service", 5.0),  # GPU worker
    ("nst-watch.service", 5.0),  # single-unit default: also a GPU worker
])
def test_security_exposure_ceilings(installed_units, unit, ceiling):
    tool = systemd_analyze()
    result = subprocess.run([tool, "security", "--offline=yes", "--no-pager", unit], cwd=installed_units,
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= ceiling


def test_units_carry_the_required_settings():
    main = (REPO / "systemd" / "nst-watch.service").read_text()
    for line in ("Type=notify", "RestartPreventExitStatus=78", "Restart=on-failure", "WatchdogSec=",
                 "ExecReload=/bin/kill -HUP $MAINPID", "User=nst-watch", "StateDirectory=nst-watch",
                 "ConfigurationDirectory=nst-watch", "CacheDirectory=nst-watch", "TORCH_HOME=/var/cache/nst-watch",
                 "PrivateDevices=no", "DevicePolicy=closed", "DeviceAllow=/dev/nvidiactl rw",
                 "DeviceAllow=/dev/nvidia-uvm rw", "DeviceAllow=/dev/nvidia-uvm-tools rw", "CapabilityBoundingSet=\n"):
        assert line in main, line
    worker = (REPO / "systemd" / "nst-watch-worker@.service").read_text()
    assert "PartOf=nst-watch-watcher.service" in worker and "DeviceAllow=/dev/nvidia%i rw" in worker
    assert "nst-watch work" in worker


class NotifySocket:
    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, BlockingIOError):
                return [m for _, m in self.messages]
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, field: str, after: int = 0, timeout: float = 60) -> int:
        def seen():
            self.drain()
            for i, (_, msg) in enumerate(self.messages[after:], start=after):
                if field in msg.split("\n"):
                    return i + 1
            return 0

        return wait_until(seen, timeout, what=f"sd_notify {field}") - 1


def test_sd_notify_readiness_status_watchdog_reload_and_stop(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    # Photos already waiting, older than the settle window: READY must come after they are queued.
    for i in range(3):
        path = photo(studio.inbox / f"early{i}.jpg", seed=i)
        os.utime(path, (time.time() - 60, time.time() - 60))
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = studio.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
    try:
        ready = notify.wait_for("READY=1")
        queued = len(studio.jobs())
        assert queued == 3  # the startup scan had enqueued them before READY=1
        assert not any(m.startswith("WATCHDOG=1") for m in notify.drain()[:ready])
        wait_until(lambda: any(m.startswith("STATUS=") and "done" in m for m in notify.drain()), what="STATUS=")
        wait_until(lambda: sum(m == "WATCHDOG=1" for m in notify.drain()) >= 5, what="5 watchdog pings")
        pings = [t for t, m in notify.messages if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert all(0.3 <= g <= 0.9 for g in gaps[1:]), gaps  # half of WATCHDOG_USEC
        statuses = [m for _, m in notify.messages if m.startswith("STATUS=")]
        assert any(re.match(r"STATUS=1 watches, \d+ pending, \d+ running, \d+ done, \d+ failed", s) for s in statuses)

        mark = len(notify.messages)
        daemon.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", after=mark)
        assert re.search(r"MONOTONIC_USEC=\d+", notify.messages[reloading][1])
        notify.wait_for("READY=1", after=reloading + 1)

        mark = len(notify.messages)
        daemon.signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", after=mark)
        assert daemon.proc.wait(60) == 0
    finally:
        daemon.kill()


def test_notifier_speaks_to_abstract_sockets():
    name = f"nst-watch-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    Notifier("@" + name).ready("2 watches")
    assert sock.recv(1024).decode() == "READY=1\nSTATUS=2 watches"
    assert Notifier(None).enabled is False or os.environ.get("NOTIFY_SOCKET")


def test_watch_and_two_workers_share_the_ledger(tmp_path):
    studio = Studio(tmp_path, presets=("a",), service={"lease_seconds": 3, "batch": 1},
                    preset_settings={"iterations": 40})
    watcher = studio.start(role="watch").wait_ready()
    workers = [studio.start(role="work"), studio.start(role="work")]
    try:
        for w in workers:
            w.wait_ready()
        # The watcher never loads torch.
        maps = Path(f"/proc/{watcher.proc.pid}/maps").read_text()
        assert "libtorch" not in maps
        for i in range(20):
            photo(studio.inbox / f"shot{i:02d}.jpg", seed=i)
        victim = workers[0]
        owner_prefix = f":{victim.proc.pid}:"

        def victim_busy():
            if "done: " not in victim.log:  # let it finish one first: both must take part
                return []
            with studio.ledger() as ledger:
                return [j for j in ledger.recent(100) if j.state == "leased" and owner_prefix in (j.lease_owner or "")]

        [held] = wait_until(victim_busy, what="first worker holding a job")
        victim.kill()  # SIGKILL mid-job: its lease must expire and the other worker finish the job
        wait_until(lambda: studio.counts()["done"] == 20, timeout=180, what="20 done")
    finally:
        for w in workers[1:]:
            assert w.stop() == 0
        assert watcher.stop() == 0
    jobs = studio.jobs()
    assert len(jobs) == 20 and all(j.state == "done" for j in jobs)
    assert len(studio.outputs()) == 20 and studio.leftovers() == []
    redone = next(j for j in jobs if j.id == held.id)
    assert redone.attempts == 2
    assert all(w.log.count("done: ") >= 1 for w in workers)  # both took part


@pytest.mark.parametrize("role", ["run", "watch", "work"])
def test_bad_config_exits_78(tmp_path, role):
    config = tmp_path / "config.yaml"
    config.write_text("watches:\n  - name: x\n    input: in\n    output: in/out\n    presets: [nope]\n")
    result = subprocess.run([sys.executable, "-m", "nst_watch", role, "-c", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 78, result.stderr
    assert str(config) in result.stderr and "watches" in result.stderr


def test_logs_are_plain_with_syslog_priorities_when_not_a_tty(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    daemon = studio.start().wait_ready()
    assert daemon.stop() == 0
    log = daemon.log
    assert "\x1b[" not in log
    lines = [line for line in log.splitlines() if line]
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines)
    assert "<4>WARNING" in log and "<6>INFO" in log
