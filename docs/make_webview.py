"""Make docs/webview.png: the web view of a darkroom at work, shot in headless Chromium.

    python docs/make_webview.py      # about two minutes on 2 CPU cores

Needs Chromium (Debian's `chromium`) and `pip install playwright`. The four
example photos, reduced to 320 px, are dropped one per style folder and
stylised at 160 px with the bundled VGG19 weights (real stylisations); a file
of random bytes stands in for a corrupt photo. The shot is taken while the
last photo runs, so the progress bar shows.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ["chelsea", "astronaut", "coffee", "rocket"]
STYLES = ["impasto", "stained-glass", "micrograph", "impasto"]


def config(folder: Path) -> Path:
    presets = {name: {"styles": [str(ROOT / "examples" / "styles" / f"{name}.jpg")], "size": 160}
               for name in set(STYLES)}
    data = {"state_dir": str(folder / "state"), "engine": {"device": "cpu"}, "service": {"batch": 1},
            "presets": presets,
            "watches": [{"name": "studio", "input": str(folder / "inbox"), "output": str(folder / "outbox"),
                         "route": "subfolders", "settle_seconds": 0.5, "failed": str(folder / "failed")}]}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="nst-webview-"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = folder / "daemon.log"
    with open(log, "w") as stderr:
        daemon = subprocess.Popen([sys.executable, "-m", "nst_watch", "run", "-c", str(config(folder)),
                                   "--http", f"127.0.0.1:{port}"], stderr=stderr)
    try:
        wait(lambda: "ready:" in log.read_text(), 300, "the daemon")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            # First, so that it has failed by the time of the shot (one job runs at a time, oldest first).
            (folder / "inbox" / "impasto").mkdir(parents=True, exist_ok=True)  # made by the daemon
            (folder / "inbox" / "impasto" / "IMG_0412.jpg").write_bytes(os.urandom(3000))
            for name, style in zip(PHOTOS, STYLES):
                target = folder / "inbox" / style / f"{name}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(ROOT / "examples" / "photos" / f"{name}.jpg") as image:
                    image.thumbnail((320, 320))
                    image.save(target, quality=92)
            # On the last scale: early stopping may end it any time after, so do not wait for much of it.
            last = "() => { const s = window.darkroom.snapshot; const w = s && s.processes[0].worker;" \
                   " return s && s.counts.done === 3 && w && w.jobs.length && w.scale === w.scales" \
                   " && w.iteration >= 15; }"
            page.wait_for_function(last, timeout=300_000, polling=200)
            page.screenshot(path=str(ROOT / "docs" / "webview.png"), full_page=True)
            browser.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        shutil.rmtree(folder)
    print(ROOT / "docs" / "webview.png")


if __name__ == "__main__":
    main()
