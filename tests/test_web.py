"""The web view (`--http`): same figures as `status --json`, safe by default, and a real browser sees it live.

Real daemon processes with real sockets; the browser test drives Debian's
Chromium with Playwright. Daemons that run jobs use seeded random VGG19
weights (mechanics only; the pictures mean nothing).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import threading
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from daemon_kit import Studio, photo, wait_until
from nst_watch.service import thumbs
from nst_watch.service.status import IDLE_PROGRESS
from test_status_live import nst, status, strict_json

TOKEN = "a-long-random-test-token-0123456789"
PROGRESS_KEYS = {"scale", "scales", "iteration", "iterations", "width", "height", "elapsed", "eta"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, path: str, *, method: str = "GET", headers: dict | None = None):
    """(status, headers, body); the path goes out as given (http.client does not normalise `..`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def answers(port: int) -> bool:
    try:
        request(port, "/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
        return True
    except OSError:
        return False


@contextmanager
def web_view(studio: Studio, *, role: str = "run", host: str = "127.0.0.1"):
    """(daemon, port) of a daemon serving the web view on a free port, once it answers; it must stop with 0."""
    port = free_port()
    daemon = studio.start("--http", f"{host}:{port}", role=role)
    try:
        daemon.wait_log(f"web view on http://{host}:{port}/")
        wait_until(lambda: answers(port), timeout=30, what="the web view to answer")
        yield daemon, port
    finally:
        assert daemon.stop() == 0


def comparable(snap: dict) -> dict:
    """A snapshot less what changes every second: each process's `updated` time and its `age`."""
    for process in snap["processes"]:
        process.pop("updated")
        process.pop("age")
    return snap


def csrf_token(port: int) -> str:
    code, _, body = request(port, "/")
    assert code == 200
    return re.search(rb'name="csrf-token" content="([^"]+)"', body)[1].decode()


def failed_job(studio: Studio) -> int:
    """A job in the ledger that failed for good, as a corrupt photo's does."""
    with studio.ledger() as ledger:
        job = ledger.add(sha256="0" * 64, preset="a", preset_hash="h", source_path=studio.inbox / "bad.jpg",
                         output_dir=studio.outbox, bucket="32x32").job
        [claimed] = ledger.claim("test:1:cpu")
        ledger.fail("test:1:cpu", claimed.id, "bad.jpg: not an image", permanent=True)
    return job.id


def no_torch_in(pid: int) -> bool:
    """The process never loaded libtorch (what `import torch` maps into it)."""
    with open(f"/proc/{pid}/maps") as f:
        return "libtorch" not in f.read()


# --- thumbnails and progress, without a daemon ---------------------------------------------------


def test_thumbnails_are_small_atomic_and_pruned(tmp_path):
    big = np.random.default_rng(0).random((3000, 2000, 3), dtype=np.float32)
    thumbs.write_thumbs(tmp_path, 7, big, big[:600, :900])
    with Image.open(thumbs.thumb_path(tmp_path, 7, "before")) as before:
        assert before.format == "JPEG" and before.size == (171, 256)
    with Image.open(thumbs.thumb_path(tmp_path, 7, "after")) as after:
        assert after.size == (256, 171)
    small = np.zeros((40, 48, 3), np.float32)
    thumbs.write_thumbs(tmp_path, 8, small, small)  # never enlarged
    with Image.open(thumbs.thumb_path(tmp_path, 8, "after")) as image:
        assert image.size == (48, 40)
    assert sorted(p.name for p in thumbs.thumbs_dir(tmp_path).iterdir()) == [
        "7-after.jpg", "7-before.jpg", "8-after.jpg", "8-before.jpg"]  # no temp file left

    # Only the newest jobs' thumbnails stay (by write time, so a retried old job counts as new).
    folder = thumbs.thumbs_dir(tmp_path)
    (folder / ".9-after.jpg.tmp").write_bytes(b"left by a kill")
    for name, when in (("7-before.jpg", 100), ("7-after.jpg", 100), ("8-before.jpg", 200), ("8-after.jpg", 200),
                       (".9-after.jpg.tmp", 50)):
        os.utime(folder / name, (when, when))
    for i in (3, 2, 1):
        thumbs.write_thumbs(tmp_path, i, small, small, keep=3)
    assert {p.name.split("-")[0] for p in folder.iterdir()} == {"1", "2", "3"}
    with pytest.raises(ValueError):
        thumbs.thumb_path(tmp_path, 1, "../secret")


def test_the_workers_activity_carries_the_engines_progress_and_an_eta():
    from nst_watch.engine import Progress
    from nst_watch.service.worker import Activity, Worker

    activity = Activity("owner", "cpu")
    assert {k: activity.to_dict()[k] for k in IDLE_PROGRESS} == IDLE_PROGRESS
    worker = SimpleNamespace(activity=activity, cancel=threading.Event(), heartbeat_at=0.0)
    # Iteration 2 of 100 on a tiled scale, 25 of its 50 tile passes done, 30 s in: 1.5 steps done, 98.5 to go.
    Worker._progress(worker, Progress(preset="p", images=1, scale=2, scales=3, width=600, height=400, iteration=2,
                                      iterations=100, step=1, steps=100, loss=1.5, content=1.0, style=0.5, tv=0.0,
                                      elapsed=30.0, tile=25, tiles=50))
    shown = activity.to_dict()
    assert {k: shown[k] for k in PROGRESS_KEYS} == {"scale": 2, "scales": 3, "iteration": 2, "iterations": 100,
                                                    "width": 600, "height": 400, "elapsed": 30.0, "eta": 1970.0}
    activity.jobs = [1]
    activity.idle()
    assert {k: activity.to_dict()[k] for k in IDLE_PROGRESS} == IDLE_PROGRESS and activity.jobs == []


def test_the_http_flag_takes_an_optional_address(monkeypatch):
    from click.testing import CliRunner

    from nst_watch import cli
    from nst_watch.service import daemon

    seen = []

    class Recorder:
        def __init__(self, config_path, **options):
            seen.append(options["http"])

        def serve(self) -> int:
            return 0

    monkeypatch.setattr(daemon, "Daemon", Recorder)
    runner = CliRunner()
    for command in ("run", "watch"):
        for args in (["--http", "-c", "x.yaml"], ["-c", "x.yaml", "--http"], ["--http", "[::1]:9000", "-c", "x.yaml"],
                     ["-c", "x.yaml"]):
            assert runner.invoke(cli.main, [command, *args]).exit_code == 0
    assert seen == ["127.0.0.1:8765", "127.0.0.1:8765", "[::1]:9000", None] * 2
    result = runner.invoke(cli.main, ["run", "--http", "8765", "-c", "x.yaml"])
    assert result.exit_code == 2 and "HOST:PORT" in result.output


# --- the daemon's web view ----------------------------------------------------------------------


@pytest.mark.slow
def test_api_status_is_status_json_and_signals_stay_the_daemons(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    with web_view(studio) as (daemon, port):
        daemon.wait_ready()
        photo(studio.inbox / "shot.jpg")
        wait_until(lambda: studio.counts()["done"] == 1, what="the photo done")
        [job] = studio.jobs()

        def same() -> bool:  # once idle, only the per-second fields differ
            code, headers, body = request(port, "/api/status")
            assert code == 200 and headers["Content-Type"] == "application/json"
            return comparable(strict_json(body)) == comparable(status(studio))

        wait_until(same, timeout=30, what="/api/status to equal status --json")
        api = strict_json(request(port, "/api/status")[2])
        assert api["counts"]["done"] == 1 and [j["id"] for j in api["recent"]] == [job.id]
        [worker] = [p["worker"] for p in api["processes"] if p["role"] == "run"]
        assert PROGRESS_KEYS <= set(worker) and worker["eta"] is None and worker["done"] == 1

        for kind, size in (("before", (48, 40)), ("after", (32, 27))):  # the photo; the 32 px result
            code, headers, body = request(port, f"/thumbs/{job.id}/{kind}")
            assert code == 200 and headers["Content-Type"] == "image/jpeg"
            assert Image.open(io.BytesIO(body)).size == size

        # uvicorn runs in a thread: SIGHUP and SIGTERM still reach the daemon.
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("config reloaded")
        assert answers(port)
    assert "stopped" in daemon.log and not answers(port)
    assert '"GET /api/status' not in daemon.log  # no access log


@pytest.mark.slow
def test_a_non_local_bind_needs_a_token_and_checks_it(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    refused = studio.start("--http", f"0.0.0.0:{free_port()}", role="watch")
    assert refused.proc.wait(60) == 78
    assert "service.http_token" in refused.log and "127.0.0.1" in refused.log
    studio.service["http"] = f"0.0.0.0:{free_port()}"
    studio.write_config()
    checked = nst("validate", "-c", studio.config)
    assert checked.returncode == 78 and b"service.http_token" in checked.stderr

    studio.service["http_token"] = TOKEN
    studio.write_config()
    with web_view(studio, role="watch", host="0.0.0.0") as (daemon, port):
        assert request(port, "/api/status")[0] == 401
        assert request(port, "/api/status", headers={"Authorization": "Bearer wrong-token"})[0] == 401
        assert request(port, "/api/status", headers={"Authorization": "Bearer caf\u00e9"})[0] == 401
        assert request(port, "/thumbs/1/before")[0] == 401  # refused before the route is looked at
        assert request(port, "/?token=wrong-token")[0] == 401
        code, headers, body = request(port, "/")
        assert code == 401 and b"service.http_token" in body
        bearer = {"Authorization": f"Bearer {TOKEN}", "Host": "darkroom.example:80"}  # any name, with the token
        assert request(port, "/api/status", headers=bearer)[0] == 200

        # The page's ?token= sets an HttpOnly, SameSite=Strict cookie and leaves the address bar.
        code, headers, _ = request(port, f"/?token={TOKEN}")
        assert code == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(f"nst_watch_token={TOKEN};") and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower()
        with_cookie = {"Cookie": f"nst_watch_token={TOKEN}"}
        assert request(port, "/", headers=with_cookie)[0] == 200
        assert request(port, "/api/status", headers=with_cookie)[0] == 200
        assert request(port, "/api/status", headers={"Cookie": "nst_watch_token=wrong"})[0] == 401
        assert no_torch_in(daemon.proc.pid)


@pytest.mark.slow
def test_thumbnails_only_by_job_id(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    with web_view(studio, role="watch") as (daemon, port):
        photo(thumbs.thumbs_dir(studio.root / "state") / "1-before.jpg")
        (studio.root / "state" / "secret").write_text("not for the web")
        code, headers, _ = request(port, "/thumbs/1/before")
        assert code == 200 and headers["Content-Type"] == "image/jpeg"
        for path in ("/thumbs/../../etc/passwd", "/thumbs/1/../../x", "/thumbs/abc/before", "/thumbs/1/secret",
                     "/thumbs/1/..%2F..%2Fsecret", "/thumbs/1/before/../../secret", "/thumbs/-1/before",
                     "/thumbs/1/after", "/thumbs/1/before.jpg", "/../secret", "/thumbs/1/%2e%2e"):
            code, _, body = request(port, path)
            assert code == 404, path
            assert b"not for the web" not in body and b"root:" not in body

        # Without a token only loopback names are answered: a rebinding site's name is not.
        code, _, body = request(port, "/api/status", headers={"Host": f"attacker.example:{port}"})
        assert code == 400 and b"service.http_token" in body
        code, headers, body = request(port, "/", headers={"Host": f"localhost:{port}"})
        assert code == 200 and headers["X-Frame-Options"] == "DENY"
        nonce = re.search(r"'nonce-([^']+)'", headers["Content-Security-Policy"])[1]
        assert f'<script nonce="{nonce}">'.encode() in body and b"{{" not in body
        assert no_torch_in(daemon.proc.pid)


@pytest.mark.slow
def test_retry_needs_the_pages_csrf_token_and_origin(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    with web_view(studio, role="watch") as (daemon, port):  # no worker: a retried job stays pending
        job_id = failed_job(studio)
        csrf = csrf_token(port)
        url = f"/api/jobs/{job_id}/retry"
        own = f"http://127.0.0.1:{port}"
        assert request(port, url, method="POST")[0] == 403
        assert request(port, url, method="POST", headers={"X-CSRF-Token": "guessed"})[0] == 403
        code, _, body = request(port, url, method="POST",
                                headers={"X-CSRF-Token": csrf, "Origin": "https://attacker.example"})
        assert code == 403 and b"attacker.example" in body
        assert request(port, url, method="GET")[0] == 405
        assert studio.counts()["failed"] == 1

        code, _, body = request(port, url, method="POST", headers={"X-CSRF-Token": csrf, "Origin": own})
        assert (code, json.loads(body)) == (200, {"queued": 1})
        assert studio.counts() == {"pending": 1, "leased": 0, "done": 0, "failed": 0, "dead": 0}
        code, _, body = request(port, url, method="POST", headers={"X-CSRF-Token": csrf})  # no Origin: allowed
        assert (code, json.loads(body)) == (200, {"queued": 0})  # pending now: nothing to retry
        assert request(port, "/api/jobs/999/retry", method="POST", headers={"X-CSRF-Token": csrf})[0] == 404


@pytest.mark.slow
def test_a_port_in_use_stops_the_start_with_the_address(tmp_path):
    studio = Studio(tmp_path, presets=("a",))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        daemon = studio.start("--http", f"127.0.0.1:{port}", role="watch")
        assert daemon.proc.wait(60) == 1
    assert f"127.0.0.1:{port} is already in use" in daemon.log and "--http" in daemon.log
    assert "ready:" not in daemon.log
    assert list((studio.root / "state" / "live").glob("*.json")) == []


# --- a real browser ----------------------------------------------------------------------------


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        missing = " and ".join(name for name, found in (("chromium", chromium), ("playwright", sync_playwright))
                               if found is None)
        pytest.skip(f"{missing} not found: `apt-get install chromium` and `pip install playwright` (.ci/run does)")
    return chromium, sync_playwright


DONE_2_FAILED_1 = """() => {
  const n = (state) => document.querySelector(`.count[data-state="${state}"] .n`)?.textContent;
  return n("done") === "2" && n("failed") === "1";
}"""
THUMBS_LOADED = """() => {
  const images = [...document.querySelectorAll(".result img")];
  return images.length === 4 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


def open_page(playwright, chromium: str, width: int):
    """(browser, page, errors): a Chromium page whose script errors and console errors collect in `errors`."""
    browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    return browser, page, errors


@pytest.mark.slow
def test_the_page_follows_the_darkroom_live_in_chromium(tmp_path):
    chromium, sync_playwright = _browser()
    # Jobs of a few seconds each, so a poll every second sees them run.
    studio = Studio(tmp_path, presets=("a",), preset_settings={"size": 48, "iterations": 150, "early_stop": None})
    with web_view(studio) as (daemon, port):
        daemon.wait_ready()
        with sync_playwright() as p:
            browser, page, errors = open_page(p, chromium, 1100)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("() => window.darkroom.polls > 0")
            page.evaluate("() => { window.notReloaded = true; }")

            photo(studio.inbox / "one.jpg", seed=1)
            photo(studio.inbox / "<img src=x onerror=alert(1)>.jpg", seed=2)  # a hostile name, shown as text
            (studio.inbox / "broken.jpg").write_bytes(np.random.default_rng(3).bytes(4000))

            page.wait_for_function(DONE_2_FAILED_1, timeout=90_000)
            page.wait_for_function(THUMBS_LOADED, timeout=10_000)
            assert page.evaluate("() => window.darkroom.sawProgress"), "no progress bar was drawn while jobs ran"
            assert page.locator(".result .photo", has_text="<img src=x onerror=alert(1)>.jpg").count() == 1
            assert page.locator(".failure .reason").inner_text().strip()
            page.screenshot(path=str(tmp_path / "webview.png"), full_page=True)

            [failed] = [j for j in studio.jobs() if j.state == "failed"]
            page.click(f'.failure[data-job="{failed.id}"] button.retry')
            page.wait_for_function("() => document.getElementById('notice').textContent.includes('queued again')")

            def failed_twice() -> bool:
                with studio.ledger() as ledger:
                    states = [e.state for e in ledger.history(failed.id)]
                    return states.count("failed") == 2 and ledger.get(failed.id).state == "failed"

            wait_until(failed_twice, timeout=60, what="the retried job to run and fail again")
            page.wait_for_function(DONE_2_FAILED_1, timeout=10_000)
            assert page.evaluate("() => window.notReloaded === true")
            assert errors == [], errors
            browser.close()

