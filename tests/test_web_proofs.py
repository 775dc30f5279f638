"""The web view's proof sheet (issue 23): /api/proofs, Render, /outputs, and the page in a real browser.

The route tests serve the view with its real server (start_web: uvicorn in
a thread of this process, on a free port) over a real ledger and config (no
daemon, no torch) and speak plain HTTP to it; the browser test runs a real
daemon with a proofing watch (seeded random VGG19 weights: mechanics only)
and drives Debian's Chromium with Playwright, as tests/test_web.py does.
"""

from __future__ import annotations

import http.client
import io
import json
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon_kit import Studio, photo, wait_until
from nst_watch.config import load_config
from nst_watch.jobs import Ledger
from nst_watch.service.status import write_live
from nst_watch.service.thumbs import thumb_path
from nst_watch.service.web import start_web
from test_web import TOKEN, _browser, free_port, open_page, request, web_view

OWNER = "test:1:cpu"


class Answer:
    def __init__(self, status: int, headers, body: bytes):
        self.status_code, self.headers, self.content = status, headers, body
        self.text = body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


class Client:
    """Plain HTTP to the view on `port`; paths go out as given (http.client does not normalise `..`)."""

    def __init__(self, port: int, host: str | None = None):
        self.port, self.host = port, host
        self.origin = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, *, headers: dict | None = None, content: str | bytes | None = None,
                json_body=None) -> Answer:
        headers = dict(headers or {})
        if self.host is not None:
            headers.setdefault("Host", self.host)
        if json_body is not None:
            content, headers["Content-Type"] = json.dumps(json_body), "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=content, headers=headers)
            response = conn.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            conn.close()

    def get(self, path: str, **kwargs) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> Answer:
        return self.request("POST", path, **kwargs)


@contextmanager
def serving(state_dir: Path, ledger: Ledger, *, host: str | None = None, **options):
    """A Client of the web view of `state_dir` served in this process (start_web's `options`: token, config)."""
    web = start_web(f"127.0.0.1:{free_port()}", state_dir=state_dir, ledger=ledger, **options)
    try:
        port = web.sock.getsockname()[1]
        client = Client(port, host)
        wait_until(lambda: _answers(client), timeout=30, what="the web view to answer")
        yield client
    finally:
        web.stop()


def _answers(client: Client) -> bool:
    try:
        client.get("/favicon.svg")
        return True
    except OSError:
        return False


def proof_studio(tmp_path: Path, **settings) -> Studio:
    """A watch that proofs at 32 px a preset of 64 px (PNG outputs)."""
    return Studio(tmp_path, presets=("a",), watch={"proof": 32},
                  preset_settings={"size": 64, "output": {"format": "png"}, **settings})


def picture(path: Path, size=(32, 27), fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(path, format=fmt)
    return path


def made(ledger: Ledger, sha: str, source: Path, output: Path | None, **fields):
    """A job run to done by a pretend worker, `output` its result (None: done without one); its original is made."""
    if not source.exists():
        picture(source, fmt="JPEG")
    job = ledger.add(sha256=sha * 64, preset="a", preset_hash="h" + sha, source_path=source,
                     output_dir=source.parent, bucket="32x27", **fields).job
    [claimed] = ledger.claim(OWNER)
    assert claimed.id == job.id
    assert ledger.complete(OWNER, job.id, output)
    return ledger.get(job.id)


@pytest.fixture
def darkroom(tmp_path):
    """(studio, config, ledger, client) around the view's app, with the studio's config behind Render."""
    studio = proof_studio(tmp_path)
    config = load_config(studio.config)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with Ledger(config.ledger_path) as ledger:
        with serving(config.state_dir, ledger, config=lambda: config) as client:
            yield studio, config, ledger, client


def csrf_of(client: Client, path: str = "/") -> str:
    response = client.get(path)
    assert response.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', response.text)[1]


# --- the routes ----------------------------------------------------------------------------------


def test_render_needs_the_pages_csrf_token_and_origin_and_says_why_it_cannot(darkroom):
    studio, config, ledger, client = darkroom
    proof = made(ledger, "1", studio.inbox / "one.jpg", picture(studio.outbox / "proofs" / "one-a.png"),
                 watch="inbox", size=32, proof=32)
    plain = made(ledger, "2", studio.inbox / "plain.jpg", picture(studio.outbox / "plain-a.png"), watch="inbox")
    waiting = ledger.add(sha256="3" * 64, preset="a", preset_hash="h3", source_path=studio.inbox / "two.jpg",
                         watch="inbox", bucket="32x27", size=32, proof=32).job
    csrf = csrf_of(client)
    url = f"/api/jobs/{proof.id}/render"

    assert client.post(url).status_code == 403
    assert client.post(url, headers={"X-CSRF-Token": "guessed"}).status_code == 403
    crossed = client.post(url, headers={"X-CSRF-Token": csrf, "Origin": "https://attacker.example"})
    assert crossed.status_code == 403 and "attacker.example" in crossed.json()["error"]
    assert client.get(url).status_code == 405
    assert ledger.finals_of([proof.id]) == []

    own = {"X-CSRF-Token": csrf, "Origin": client.origin}
    for job_id, code, words in ((plain.id, 409, "not a proof"), (waiting.id, 409, "pending, not done"),
                                (999, 404, "no job 999")):
        refused = client.post(f"/api/jobs/{job_id}/render", headers=own)
        assert refused.status_code == code and words in refused.json()["error"], refused.text
    for body, code, words in (('{"size": 16}', 409, "must be larger"), ("big", 400, "must be JSON"),
                              ('{"size": "big"}', 400, "not a size"), ('{"size": true}', 400, "not a size"),
                              ('{"path": "/etc/passwd"}', 400, "only \"size\"")):
        refused = client.post(url, headers=own, content=body)
        assert refused.status_code == code and words in refused.json()["error"], (body, refused.text)
    assert ledger.finals_of([proof.id]) == []

    queued = client.post(url, headers=own)
    assert queued.status_code == 200
    final_id = queued.json()["job"]
    assert queued.json() == {"job": final_id, "created": True, "requeued": False, "state": "pending"}
    again = client.post(url, headers={"X-CSRF-Token": csrf}, json_body={})  # no Origin: allowed; the same final
    assert again.json() == {"job": final_id, "created": False, "requeued": False, "state": "pending"}
    [final] = ledger.finals_of([proof.id])
    assert final.id == final_id and final.size is None and final.output_dir == str(studio.outbox)
    full = client.post(url, headers=own, json_body={"size": "full"})
    assert full.status_code == 200 and full.json()["created"] and ledger.get(full.json()["job"]).size == "full"

    # Without the daemon's config (create_app's other callers) Render says so instead of guessing.
    with serving(config.state_dir, ledger) as bare:
        refused = bare.post(url, headers={"X-CSRF-Token": csrf_of(bare)})
        assert refused.status_code == 503 and "nst-watch render" in refused.json()["error"]
        assert bare.get("/api/proofs").json()["renderable"] is False


def test_the_proof_sheet_lists_each_watchs_proofs_with_their_finals_and_progress(darkroom):
    studio, config, ledger, client = darkroom
    assert client.get("/api/proofs").json() == {  # a watch with `proof:` shows before its first photo
        "renderable": True, "total": 0, "truncated": False,
        "watches": [{"name": "inbox", "proof": 32, "configured": True, "proofs": []}]}

    hostile = "<img src=x onerror=alert(1)>.jpg"
    one = made(ledger, "1", studio.inbox / hostile, picture(studio.outbox / "proofs" / "one-a.png"),
               watch="inbox", size=32, proof=32)
    picture(thumb_path(config.state_dir, one.id, "after"), fmt="JPEG")
    submitted = made(ledger, "2", studio.root / "elsewhere" / "s.jpg", None, size=32, proof=32)
    made(ledger, "4", studio.inbox / "plain.jpg", picture(studio.outbox / "plain-a.png"), watch="inbox")
    final = ledger.add(sha256="1" * 64, preset="a", preset_hash="final", source_path=one.source_path,
                       watch="inbox", output_dir=studio.outbox, bucket="64x54", proof_id=one.id, priority=1).job
    [claimed] = ledger.claim(OWNER)
    assert claimed.id == final.id
    # The worker's live report, as `status` reads it: 40 steps of an expected 210 done.
    write_live(config.state_dir, "run", {"worker": {"owner": OWNER, "jobs": [final.id], "photos": [hostile],
                                                    "step": 40, "steps": 300, "expected_steps": 210, "eta": 35.0}})

    sheet = client.get("/api/proofs")
    assert sheet.status_code == 200 and sheet.headers["Cache-Control"] == "no-store"
    data = sheet.json()
    assert data["renderable"] and data["total"] == 2 and not data["truncated"]
    assert [(w["name"], w["configured"], [p["id"] for p in w["proofs"]]) for w in data["watches"]] == [
        ("inbox", True, [one.id]), (None, False, [submitted.id])]
    [shown] = data["watches"][0]["proofs"]
    assert shown == {
        "id": one.id, "photo": hostile, "preset": "a", "proof": 32, "state": "done", "error": None, "thumb": True,
        "output": True,
        "finals": [{"id": final.id, "state": "leased", "size": None, "error": None, "output": False, "name": None,
                    "progress": {"step": 40, "steps": 300, "expected_steps": 210, "eta": 35.0,
                                 "text": "step 40/~210, ETA 35 s"}}]}
    [other] = data["watches"][1]["proofs"]
    assert other["photo"] == "s.jpg" and other["thumb"] is False and other["output"] is False

    output = picture(studio.outbox / "one-a.png", size=(64, 54))
    assert ledger.complete(OWNER, final.id, output)
    [done] = client.get("/api/proofs").json()["watches"][0]["proofs"][0]["finals"]
    assert done == {"id": final.id, "state": "done", "size": None, "error": None, "output": True,
                    "name": "one-a.png", "progress": None}


def test_outputs_serve_the_file_the_ledger_names_and_nothing_else(darkroom):
    studio, config, ledger, client = darkroom
    (config.state_dir / "secret").write_text("not for the web")
    png = made(ledger, "1", studio.inbox / "a.jpg", picture(studio.outbox / "a-a.png", size=(64, 54)))
    named = made(ledger, "2", studio.inbox / "b.jpg", picture(studio.outbox / "café \"b\".jpg", fmt="JPEG"))
    tiff = made(ledger, "3", studio.inbox / "c.jpg", picture(studio.outbox / "c-a.tif", fmt="TIFF"))
    gone = made(ledger, "4", studio.inbox / "d.jpg", picture(studio.outbox / "d-a.png"))
    Path(gone.output_path).unlink()
    skipped = made(ledger, "5", studio.inbox / "e.jpg", None)
    folder = made(ledger, "7", studio.inbox / "g.jpg", studio.outbox)  # a row naming a folder: never listed
    pending = ledger.add(sha256="6" * 64, preset="a", preset_hash="h6", source_path=studio.inbox / "f.jpg").job

    served = client.get(f"/outputs/{png.id}")
    assert served.status_code == 200 and served.headers["Content-Type"] == "image/png"
    assert served.headers["Content-Disposition"] == 'inline; filename="a-a.png"'
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.content == Path(png.output_path).read_bytes()
    assert Image.open(io.BytesIO(served.content)).size == (64, 54)
    served = client.get(f"/outputs/{named.id}")
    assert served.status_code == 200 and served.headers["Content-Type"] == "image/jpeg"
    assert "filename*=utf-8''caf%C3%A9%20%22b%22.jpg" in served.headers["Content-Disposition"]
    assert client.get(f"/outputs/{tiff.id}").headers["Content-Type"] == "image/tiff"

    for job_id in (gone.id, skipped.id, pending.id, folder.id, 999):
        refused = client.get(f"/outputs/{job_id}")
        assert refused.status_code == 404 and "error" in refused.json(), job_id
    for path in ("/outputs/abc", "/outputs/-1", f"/outputs/{png.id}/../../secret", "/outputs/../state/secret",
                 f"/outputs/{png.id}.png", "/outputs/%2e%2e/secret", "/outputs/"):
        refused = client.get(path)
        assert refused.status_code == 404 and b"not for the web" not in refused.content, path
    assert client.post(f"/outputs/{png.id}").status_code == 405


def test_the_token_guards_the_proof_sheet_and_its_routes(tmp_path):
    studio = proof_studio(tmp_path)
    config = load_config(studio.config)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with Ledger(config.ledger_path) as ledger:
        job = made(ledger, "1", studio.inbox / "a.jpg", picture(studio.outbox / "proofs" / "a-a.png"),
                   watch="inbox", size=32, proof=32)
        # Any name, with the token.
        with serving(config.state_dir, ledger, token=TOKEN, config=lambda: config, host="darkroom.example") as client:
            routes = (("GET", "/proofs"), ("GET", "/api/proofs"), ("GET", f"/outputs/{job.id}"),
                      ("POST", f"/api/jobs/{job.id}/render"))
            for method, path in routes:
                for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Cookie": "nst_watch_token=wrong"}):
                    refused = client.request(method, path, headers=headers)
                    assert refused.status_code == 401, (method, path, headers)
                    assert "service.http_token" in refused.text
            assert client.get(f"/api/proofs?token={TOKEN}").status_code == 401  # only a page takes ?token=

            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert client.get("/api/proofs", headers=bearer).json()["total"] == 1
            assert client.get(f"/outputs/{job.id}", headers=bearer).status_code == 200
            page = client.get("/proofs", headers=bearer)
            assert page.status_code == 200 and '<body data-view="proofs">' in page.text and "{{" not in page.text
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)[1]
            assert client.post(f"/api/jobs/{job.id}/render", headers=bearer).status_code == 403  # token, no CSRF
            queued = client.post(f"/api/jobs/{job.id}/render", headers={**bearer, "X-CSRF-Token": csrf})
            assert queued.status_code == 200 and queued.json()["created"]

            # /proofs?token= sets the cookie and leaves the address bar, back to the proof sheet.
            moved = client.get(f"/proofs?token={TOKEN}")
            assert moved.status_code == 303 and moved.headers["Location"] == "/proofs"
            assert "HttpOnly" in moved.headers["Set-Cookie"]
            cookie = {"Cookie": f"nst_watch_token={TOKEN}"}
            assert client.get("/api/proofs", headers=cookie).status_code == 200


# --- a real browser ----------------------------------------------------------------------------


CARDS_DONE = """() => {
  const cards = [...document.querySelectorAll(".proof")];
  return cards.length === 2 && cards.every((c) => c.dataset.state === "done" && c.querySelector("img")?.complete
                                                  && c.querySelector("img").naturalWidth > 0);
}"""


@pytest.mark.slow
def test_the_proof_sheet_renders_a_keeper_in_chromium(tmp_path):
    chromium, sync_playwright = _browser()
    studio = proof_studio(tmp_path, iterations=20, early_stop=None)
    hostile = "<img src=x onerror=alert(1)>.jpg"
    with web_view(studio) as (daemon, port):
        daemon.wait_ready()
        with sync_playwright() as p:
            browser, page, errors = open_page(p, chromium, 1200)
            page.goto(f"http://127.0.0.1:{port}/proofs")
            page.wait_for_function("() => window.darkroom.polls > 0")
            assert page.locator('nav.views a[aria-current="page"]').inner_text() == "Proofs"
            page.evaluate("() => { window.notReloaded = true; }")

            photo(studio.inbox / "keeper.jpg", seed=1, size=(96, 80))
            photo(studio.inbox / hostile, seed=2, size=(96, 80))  # a hostile name, shown as text
            page.wait_for_function(CARDS_DONE, timeout=90_000)
            proofs = {Path(j.source_path).name: j for j in studio.jobs() if j.role == "proof"}
            keeper, other = proofs["keeper.jpg"], proofs[hostile]
            assert page.locator(".proof .photo", has_text=hostile).count() == 1
            assert page.locator(f'.proof[data-job="{keeper.id}"] img').get_attribute("loading") == "lazy"
            # The other card's button stays the same element across polls (no rebuilt card, no flicker).
            page.evaluate(f"""() => {{ document.querySelector('.proof[data-job="{other.id}"] button.render')
                                         .dataset.kept = "1"; }}""")

            page.click(f'.proof[data-job="{keeper.id}"] button.render')
            full = page.locator(f'.proof[data-job="{keeper.id}"] a.full')
            full.wait_for(timeout=90_000)
            assert full.inner_text() == "Full size"
            href = full.get_attribute("href")
            page.screenshot(path=str(tmp_path / "proofsheet.png"), full_page=True)
            polls = page.evaluate("() => window.darkroom.polls")
            page.wait_for_function(f"() => window.darkroom.polls > {polls + 1}")
            kept = page.locator(f'.proof[data-job="{other.id}"] button.render')
            assert kept.get_attribute("data-kept") == "1" and kept.is_enabled() and kept.inner_text() == "Render"
            assert page.evaluate("() => window.notReloaded === true")
            assert errors == [], errors
            browser.close()

        [final] = [j for j in studio.jobs() if j.role == "final"]
        assert final.proof_id == keeper.id and href == f"/outputs/{final.id}"
        code, headers, body = request(port, href)
        assert code == 200 and headers["Content-Type"] == "image/png"
        assert max(Image.open(io.BytesIO(body)).size) == 64  # the preset's size
        assert body == Path(final.output_path).read_bytes()
        code, _, body = request(port, f"/outputs/{keeper.id}")
        assert code == 200 and max(Image.open(io.BytesIO(body)).size) == 32  # the proof
        sheet = json.loads(request(port, "/api/proofs")[2])
        [watch] = sheet["watches"]
        assert {p["id"]: [f["state"] for f in p["finals"]] for p in watch["proofs"]} == {
            keeper.id: ["done"], other.id: []}
