"""Running the real daemon in tests: configs, processes, waits, ledger reads."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from conftest import synthetic_painting, synthetic_photo
from nst_watch.jobs import Ledger

TINY_PRESET = {"size": 32, "iterations": 2, "output": {"format": "jpeg"}}


def wait_until(condition, timeout: float = 60.0, interval: float = 0.05, what: str = "condition", detail=None):
    """Poll `condition` until it is truthy (returned) or `timeout` seconds pass (AssertionError naming `what`).

    `detail`, a callable, adds what the system said at that moment (status, a log's tail) to the failure.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    said = f"\n{detail()}" if detail is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{said}")


PRIORITY = re.compile(r"<[0-7]>")


def unprefixed(log: str) -> list[str]:
    """The lines of a plain (journald) log that lack a syslog `<N>` prefix or carry an escape sequence."""
    return [line for line in log.splitlines() if not PRIORITY.match(line) or "\x1b" in line]


def photo(path: Path, seed: int = 0, size=(48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = synthetic_photo(size[1], size[0], seed=seed)
    Image.fromarray((array * 255).round().astype(np.uint8)).save(path, format="JPEG", quality=90)
    return path


def resident_bytes() -> int:
    """What a daemon process holds before any image: torch, the service modules and VGG19 (random weights)."""
    probe = ("import nst_watch.service.daemon\nfrom nst_watch.engine import Engine\n"
             "print(Engine(weights='random', device='cpu').resident)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


class Studio:
    """A temp folder with a config, style images, inbox and outbox."""

    def __init__(self, root: Path, *, presets=("a", "b"), watch: dict | None = None, service: dict | None = None,
                 preset_settings: dict | None = None):
        self.root = root
        styles = root / "styles"
        styles.mkdir(parents=True, exist_ok=True)
        self.presets = {}
        for i, name in enumerate(presets):
            style = styles / f"{name}.png"
            Image.fromarray((synthetic_painting(32, 32, seed=10 + i) * 255).astype(np.uint8)).save(style)
            self.presets[name] = {"styles": [str(style)], **TINY_PRESET, **(preset_settings or {})}
        self.inbox, self.outbox = root / "inbox", root / "outbox"
        self.processed, self.failed = root / "processed", root / "failed"
        self.watches = [{"name": "inbox", "input": str(self.inbox), "output": str(self.outbox),
                         "presets": list(presets), "settle_seconds": 0.3, "processed": f"move:{self.processed}",
                         "failed": str(self.failed), **(watch or {})}]
        self.service = {"grace_seconds": 5, "lease_seconds": 30, **(service or {})}
        self.config = root / "config.yaml"
        self.write_config()

    def write_config(self, **extra) -> Path:
        data = {"state_dir": str(self.root / "state"), "engine": {"weights": "random", "device": "cpu"},
                "service": self.service, "presets": self.presets, "watches": self.watches, **extra}
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))
        return self.config

    def ledger(self) -> Ledger:
        return Ledger(self.root / "state" / "jobs.db")

    def jobs(self):
        with self.ledger() as ledger:
            return ledger.recent(10_000)

    def counts(self) -> dict:
        with self.ledger() as ledger:
            return ledger.counts()

    def outputs(self) -> list[Path]:
        if not self.outbox.exists():
            return []
        return sorted(p for p in self.outbox.rglob("*") if p.is_file() and not p.name.startswith("."))

    def leftovers(self) -> list[Path]:
        return sorted(p for p in self.outbox.rglob(".nst-*")) if self.outbox.exists() else []

    def start(self, *args, env: dict | None = None, role: str = "run") -> "DaemonProcess":
        return DaemonProcess(self, role, list(args), env or {})


def environment(changes: dict) -> dict:
    """This process's environment with `changes`: a value sets its variable, None removes it."""
    return {k: v for k, v in {**os.environ, **changes}.items() if v is not None}


class DaemonProcess:
    """`nst-watch ROLE -c CONFIG ARGS` with stdout and stderr in one log file, as journald takes both.

    `env` adds to this process's environment; a None value removes that variable.
    """

    def __init__(self, studio: Studio, role: str, args: list[str], env: dict):
        self.log_path = studio.root / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        full_env = environment({"OMP_NUM_THREADS": "1", **env})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nst_watch", role, "-c", str(studio.config), *args],
            stdout=self._log, stderr=self._log, env=full_env,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        def found():
            if text in self.log:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode} before logging {text!r}:\n{self.log}")
            return False

        wait_until(found, timeout, what=f"log line {text!r}")

    def wait_ready(self, timeout: float = 60.0) -> "DaemonProcess":
        self.wait_log("ready:", timeout)
        return self

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._log.close()
