"""`nst-watch run` with the Ray backend: the dispatcher as a child process, kept running.

The Ray driver (nst_watch.cluster.dispatcher, `nst-watch work --ray`) runs
in a child process, because Ray ends a driver whose cluster head has been
gone for a minute and the intake must outlive that. While the child is down
the intake keeps taking photos into the ledger; `status`, the web view and
the systemd STATUS line say the cluster is unreachable and that jobs wait;
the child is started again with a growing pause (RESTART_FIRST doubling up
to RESTART_MAX seconds) until it joins the cluster again. (A child may also
wait inside ray.init, which keeps retrying for about a minute; it joins as
soon as the cluster answers.)

States, as `status` shows them: connecting (first start, up to
CONNECT_SECONDS), then the child's own (connected, starting actors, waiting
for GPUs, unreachable, lost), or unreachable while no child has joined.

No torch, no Ray here: this module runs in the watcher's process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .status import read_live

log = logging.getLogger("nst_watch.cluster")

RESTART_FIRST = 2.0
RESTART_MAX = 60.0
STOP_MARGIN = 15.0  # beyond the grace period, for the child's own shutdown, before SIGKILL
CONNECT_SECONDS = 15.0  # a first connection taking longer than this counts as an unreachable cluster


PARENT_ENV = "NST_WATCH_DAEMON_PID"  # set for the child: the daemon it must not outlive


def follow_parent() -> None:
    """In the dispatcher child: get SIGTERM when the daemon dies, even by SIGKILL (Linux PR_SET_PDEATHSIG).

    Called by the child itself once started (a preexec_fn could deadlock a
    daemon with threads); a daemon already gone by then ends it at once.
    """
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: a killed daemon may leave its dispatcher running until the cluster goes
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


class ClusterLink:
    """Starts, watches and restarts the `nst-watch work --ray ADDRESS` child; reports the cluster's state."""

    def __init__(self, config_path: Path, address: str, state_dir: Path):
        self.config_path = Path(config_path)
        self.address = address
        self.state_dir = state_dir
        self.state = "connecting"
        self.message: str | None = None
        self._proc: subprocess.Popen | None = None
        self._pause = RESTART_FIRST
        self._restart_at = 0.0
        self._report: dict = {}  # the child's latest live file
        self._read_at = 0.0

    def start(self) -> None:
        self._spawn()

    def _spawn(self) -> None:
        level = logging.getLogger("nst_watch").getEffectiveLevel()
        verbosity = ["-q"] if level >= logging.WARNING else ["-v"] if level <= logging.DEBUG else []
        command = [sys.executable, "-m", "nst_watch", *verbosity, "work", "-c", str(self.config_path),
                   "--ray", self.address]
        # systemd hears from the daemon only: the child's READY/STATUS would contradict it.
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env[PARENT_ENV] = str(os.getpid())
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env)
        self._report, self._spawned_at = {}, time.monotonic()
        log.info("Ray dispatcher started (pid %d) for the cluster at %s", self._proc.pid, self.address)

    def step(self) -> None:
        """From the daemon's loop: notice a child that exited, restart it when due, read its report."""
        now = time.monotonic()
        if self._proc is not None and (code := self._proc.poll()) is not None:
            self._proc = None
            self.state = "unreachable"
            self.message = f"dispatcher exited with status {code}; trying again in {self._pause:.0f}s"
            log.warning("the Ray cluster at %s is unreachable (the dispatcher exited with status %d; see above): "
                        "photos are still taken and their jobs wait in the ledger; trying again in %.0fs",
                        self.address, code, self._pause)
            self._restart_at = now + self._pause
            self._pause = min(self._pause * 2, RESTART_MAX)
        if self._proc is None:
            if now >= self._restart_at:
                self._spawn()
            return
        if now - self._read_at >= 1.0:
            self._read_at = now
            self._read_child()

    def _read_child(self) -> None:
        pid = self._proc.pid if self._proc is not None else None
        report = next((p for p in read_live(self.state_dir) if p.get("pid") == pid and p.get("role") == "ray"), None)
        cluster = (report or {}).get("cluster")
        if report is not None:
            self._report = report
        if isinstance(cluster, dict):  # the child has joined the cluster and says how it is
            self.state, self.message = str(cluster.get("state")), cluster.get("message")
            if self.state == "connected":
                self._pause = RESTART_FIRST  # the next loss starts its pauses short again
            return
        # Still inside ray.init, which retries for about a minute before it gives up.
        waited = time.monotonic() - self._spawned_at
        if self.state == "connecting" and waited > CONNECT_SECONDS:
            self.state = "unreachable"
            self.message = f"no answer for {waited:.0f}s; still trying"

    def info(self) -> dict:
        """The `cluster` block of the daemon's live status file (the child's, once it has reported)."""
        cluster = dict(self._report.get("cluster") or {}) if self._proc is not None else {}
        cluster.update({"backend": "ray", "address": self.address, "state": self.state, "message": self.message,
                        "dispatcher": self._proc.pid if self._proc is not None else None})
        return cluster

    def workers(self) -> list[dict]:
        """The child's lanes, for the terminal panel."""
        workers = self._report.get("workers") if self._proc is not None else None
        return [w for w in workers or [] if isinstance(w, dict)]

    def reload(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    def stop(self, grace: float) -> None:
        """SIGTERM the child (its running batches get `grace` seconds), SIGKILL it if it outstays that."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace + STOP_MARGIN)
        except subprocess.TimeoutExpired:
            log.warning("the Ray dispatcher did not stop in %.0fs: killing it (its jobs return to pending)",
                        grace + STOP_MARGIN)
            proc.kill()
            proc.wait()
