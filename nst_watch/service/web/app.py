"""The web view's routes and guard (a Starlette app).

Routes:

- ``GET /``: the page (index.html); it polls ``/api/status`` every second.
  With a token, ``/?token=TOKEN`` sets the token cookie and redirects (303)
  to ``/``, so the token leaves the address bar and the history.
- ``GET /proofs``: the same page showing the proof sheet (every proof of each
  watch as a grid, each with a Render button, its final's progress and,
  once done, its full-size link); it polls ``/api/proofs`` every second.
  ``/proofs?token=TOKEN`` works as ``/?token=`` does.
- ``GET /api/status``: what ``nst-watch status --json`` prints (200, JSON).
- ``GET /api/proofs``: the proof sheet's figures (200, JSON; see
  ``proofsheet.proof_sheet``): per watch with proofs (submitted proofs under
  the watch ``null``), each proof's id, photo name, preset, proof size,
  state and whether its thumbnail is there, with its finals' id, state,
  size, progress while running and whether the output can be fetched.
- ``GET /favicon.svg``: the tab's icon, a safelight (200, SVG).
- ``GET /thumbs/{job_id}/{kind}``: a job's ``before``, ``after`` or ``mask`` thumbnail
  (200, image/jpeg); 404 for anything else: another word, a job id that is
  not a number, a path with more segments, a thumbnail not (or no longer)
  there. The file name is built from the integer and the fixed word only.
- ``POST /api/jobs/{job_id}/retry``: queue a failed or dead job again;
  200 ``{"queued": n}`` (0 when the job is in another state), 404 for no
  such job, 403 without the page's CSRF token in ``X-CSRF-Token`` or when
  an ``Origin`` header names another site, 503 when the ledger is busy.
- ``POST /api/jobs/{job_id}/render``: queue the final of a done proof
  (nst_watch.service.proofs.request_final), at the preset's own size or at
  the optional JSON body's ``{"size": "full" | PX}``; 200 ``{"job": id,
  "created": bool, "state": ...}`` (the existing final when there is one; a
  failed or dead one is queued again), 404 for no such job, 409 ``{"error":
  why}`` for a job that is no proof or not done, or a size no larger than
  the proof, 400 for a body that is not such JSON; the same 403s as retry;
  503 when the ledger is busy or the view has no config (create_app
  without ``config``).
- ``GET /outputs/{job_id}``: a done job's output file (the final's full
  size), streamed with its image type (JPEG, PNG, WebP, TIFF by its
  extension) and its name in ``Content-Disposition: inline``; 404 for a job
  not done, without an output, or whose file is gone. The path comes from
  the job's ledger row only, never from the request.

Before any route, the guard:

- with ``service.http_token``: 401 unless the request carries the token,
  as ``Authorization: Bearer TOKEN``, the HttpOnly SameSite=Strict cookie
  ``nst_watch_token``, or ``?token=`` on the page;
- without one (loopback only, see config.http_problem): 400 unless the
  ``Host`` header names this machine's loopback, so a page on another site
  whose name was re-pointed at 127.0.0.1 (DNS rebinding) reads nothing.

Every response forbids sniffing, framing, referrers and use by other sites'
pages; the page's script runs under a CSP nonce. Names reach the page as
JSON and are inserted with textContent only.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ...config import Config, is_loopback
from ...jobs import Ledger, LedgerError
from ..proofs import FinalError, parse_size, request_final
from ..status import snapshot, to_json
from ..thumbs import KINDS, thumb_path
from .proofsheet import output_file, proof_sheet

log = logging.getLogger("nst_watch.web")

COOKIE = "nst_watch_token"
CSRF_HEADER = "X-CSRF-Token"
POLL_MS = 1000  # the page asks for /api/status this often
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",  # no <img> on another site shows a thumbnail
    "X-Frame-Options": "DENY",  # no page can frame the Retry button (clickjacking)
}
# A darkroom's red safelight; without an icon the browser asks for /favicon.ico and logs a 404.
ICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
        '<circle cx="8" cy="8" r="7" fill="#17171a"/><circle cx="8" cy="8" r="4" fill="#ff5b4a"/></svg>')
PAGES = {"/": "darkroom", "/proofs": "proofs"}  # the page's two views: the darkroom and the proof sheet
# What /outputs/{id} sends by an output's extension (the formats nst-watch writes); anything else: a download.
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".tif": "image/tiff", ".tiff": "image/tiff"}
# Only this page's own nonce-marked script and style, its own API and thumbnails.
CSP = ("default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class WebView:
    """The app's state (ledger, state_dir, token, CSRF token, the daemon's config) and its endpoints.

    `config` returns the daemon's current Config (it changes on SIGHUP); None:
    the proof sheet lists proofs, but Render answers 503.
    """

    def __init__(self, state_dir: Path, ledger: Ledger, *, token: str | None = None,
                 config: Callable[[], Config] | None = None):
        self.state_dir = Path(state_dir)
        self.ledger = ledger
        self.token = token
        self.config = config
        self.csrf = secrets.token_urlsafe(32)  # per process: a restart invalidates open pages' retries
        self.html = resources.files(__package__).joinpath("index.html").read_text(encoding="utf-8")

    def app(self) -> Starlette:
        routes = [
            *(Route(path, self.page, methods=["GET"]) for path in PAGES),
            Route("/api/status", self.status, methods=["GET"]),
            Route("/api/proofs", self.proofs, methods=["GET"]),
            Route("/favicon.svg", self.icon, methods=["GET"]),
            Route("/thumbs/{job_id:int}/{kind}", self.thumb, methods=["GET"]),
            Route("/outputs/{job_id:int}", self.output, methods=["GET"]),
            Route("/api/jobs/{job_id:int}/retry", self.retry, methods=["POST"]),
            Route("/api/jobs/{job_id:int}/render", self.render, methods=["POST"]),
        ]
        return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=self.guard)])

    # --- the guard ---------------------------------------------------------------------

    async def guard(self, request: Request, call_next) -> Response:
        refusal = self._refusal(request)
        response = refusal if refusal is not None else await call_next(request)
        response.headers.update(HEADERS)
        return response

    def _refusal(self, request: Request) -> Response | None:
        """The 400 or 401 a request gets before its route, or None."""
        if self.token is None:
            host = request.url.hostname
            if is_loopback(host):
                return None
            return PlainTextResponse(
                f"400 Bad Request: the Host header {host!r} is not a loopback name, and without "
                f"service.http_token this web view answers only to 127.0.0.1, localhost or [::1]: open it by one "
                f"of those, or set service.http_token to serve other names\n", status_code=400)
        if self._has_token(request):
            return None
        return PlainTextResponse(
            "401 Unauthorized: this web view needs the token set in service.http_token: open /?token=TOKEN "
            "once (a cookie keeps it), or send the header 'Authorization: Bearer TOKEN'\n",
            status_code=401, headers={"WWW-Authenticate": 'Bearer realm="nst-watch"'})

    def _has_token(self, request: Request) -> bool:
        given = [request.cookies.get(COOKIE)]
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given.append(value.strip())
        if request.url.path in PAGES:
            given.append(request.query_params.get("token"))
        expected = self.token.encode()
        # Bytes: compare_digest refuses non-ASCII text, which a request may well hold.
        return any(hmac.compare_digest(text.encode(), expected) for text in given if text is not None)

    def _cross_site(self, request: Request) -> Response | None:
        """403 for a state-changing request not sent by this view's own page, else None."""
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin is not None and origin != own:
            return _error(403, f"a request from {origin} (another site) may not change jobs; use the web view "
                               f"at {own}/")
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), self.csrf.encode()):
            return _error(403, f"missing or stale {CSRF_HEADER} header: reload the web view's page (the daemon "
                               "may have restarted) and press its button again, or use `nst-watch retry JOB_ID` "
                               "or `nst-watch render JOB_ID`")
        return None

    # --- routes ------------------------------------------------------------------------

    def page(self, request: Request) -> Response:
        if self.token is not None and "token" in request.query_params:  # the guard has checked it
            response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return response
        nonce = secrets.token_urlsafe(16)
        html = (self.html.replace("{{nonce}}", nonce).replace("{{csrf}}", self.csrf)
                .replace("{{poll_ms}}", str(POLL_MS)).replace("{{view}}", PAGES[request.url.path]))
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": CSP.format(nonce=nonce), "Cache-Control": "no-store"})

    def status(self, request: Request) -> Response:
        text = to_json(snapshot(self.state_dir, self.ledger))
        return Response(text, media_type="application/json", headers={"Cache-Control": "no-store"})

    def proofs(self, request: Request) -> Response:
        try:
            sheet = proof_sheet(self.state_dir, self.ledger, self.config() if self.config is not None else None)
        except LedgerError as exc:
            return _error(503, f"{exc}; try again in a moment")
        return Response(json.dumps(sheet, ensure_ascii=True, allow_nan=False), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    def icon(self, request: Request) -> Response:
        return Response(ICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    def thumb(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in KINDS:
            return _error(404, f"no thumbnail {kind!r}: use before, after or mask")
        try:  # read, not stream: a thumbnail is small, and pruning may remove it any moment
            data = thumb_path(self.state_dir, request.path_params["job_id"], kind).read_bytes()
        except OSError:
            return _error(404, "no thumbnail for this job (not done, made before thumbnails, or pruned)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-cache"})

    def output(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job = self.ledger.get(job_id)
        except LedgerError as exc:
            return _error(503, f"{exc}; try again in a moment")
        path = output_file(job)  # the ledger's path, and only for a done job
        if path is None:
            what = "no such job" if job is None else f"job {job_id} is {job.shown_state}"
            return _error(404, f"no output to show for job {job_id} ({what}, or its output is gone)")
        try:
            stat = path.stat()
        except OSError:
            return _error(404, f"the output of job {job_id} is gone from {path.parent}")
        return FileResponse(path, stat_result=stat, filename=path.name, content_disposition_type="inline",
                            media_type=IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                            headers={"Cache-Control": "private, no-cache"})

    def retry(self, request: Request) -> Response:
        refusal = self._cross_site(request)
        if refusal is not None:
            return refusal
        job_id = request.path_params["job_id"]
        try:
            if self.ledger.get(job_id) is None:
                return _error(404, f"no job {job_id} in the ledger")
            queued = self.ledger.retry([job_id])
        except LedgerError as exc:
            return _error(503, f"{exc}; try again in a moment")
        if queued:
            log.info("job %d queued again from the web view", job_id)
        return JSONResponse({"queued": queued})

    async def render(self, request: Request) -> Response:
        refusal = self._cross_site(request)
        if refusal is not None:
            return refusal
        if self.config is None:
            return _error(503, "this web view was started without the daemon's config, so it cannot queue finals; "
                               "use `nst-watch render JOB_ID`")
        job_id = request.path_params["job_id"]
        try:
            size = parse_size(_size_of(await request.body()))
        except ValueError as exc:
            return _error(400, str(exc))
        # The ledger blocks (its busy timeout): in a worker thread, as Starlette runs the other (sync) routes.
        return await run_in_threadpool(self._render, job_id, size)

    def _render(self, job_id: int, size: int | str | None) -> Response:
        try:
            if self.ledger.get(job_id) is None:
                return _error(404, f"no job {job_id} in the ledger")
            result = request_final(self.config(), self.ledger, job_id, size)
        except FinalError as exc:
            return _error(409, str(exc))
        except LedgerError as exc:
            return _error(503, f"{exc}; try again in a moment")
        if result.created or result.requeued:
            log.info("job %d: final of proof %d %s from the web view", result.job.id, job_id, result.word)
        return JSONResponse({"job": result.job.id, "created": result.created, "requeued": result.requeued,
                             "state": result.job.shown_state})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _size_of(body: bytes) -> str | int | None:
    """The ``size`` of a render request's body (empty: the preset's own); ValueError for anything else."""
    if not body.strip():
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError('the body must be JSON: {"size": "full"} or {"size": 2048}, or nothing') from None
    if not isinstance(data, dict) or set(data) - {"size"}:
        raise ValueError('the body may hold only "size": {"size": "full"} or {"size": 2048}')
    size = data.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (str, int))):
        raise ValueError(f"{size!r} is not a size: give full or a long edge in pixels, e.g. 2048")
    return size


def create_app(state_dir: Path, ledger: Ledger, *, token: str | None = None,
               config: Callable[[], Config] | None = None) -> Starlette:
    """The web view of `state_dir` and its ledger; every request needs `token` when one is given.

    `config` returns the daemon's current config (for Render); without it Render answers 503.
    """
    return WebView(state_dir, ledger, token=token, config=config).app()
