"""The web view's routes and guard (a Starlette app).

Routes:

- ``GET /``: the page (index.html); it polls ``/api/status`` every second.
  With a token, ``/?token=TOKEN`` sets the token cookie and redirects (303)
  to ``/``, so the token leaves the address bar and the history.
- ``GET /api/status``: what ``nst-watch status --json`` prints (200, JSON).
- ``GET /favicon.svg``: the tab's icon, a safelight (200, SVG).
- ``GET /thumbs/{job_id}/{kind}``: a job's ``before``, ``after`` or ``mask`` thumbnail
  (200, image/jpeg); 404 for anything else: another word, a job id that is
  not a number, a path with more segments, a thumbnail not (or no longer)
  there. The file name is built from the integer and the fixed word only.
- ``POST /api/jobs/{job_id}/retry``: queue a failed or dead job again;
  200 ``{"queued": n}`` (0 when the job is in another state), 404 for no
  such job, 403 without the page's CSRF token in ``X-CSRF-Token`` or when
  an ``Origin`` header names another site, 503 when the ledger is busy.

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
import logging
import secrets
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ...config import is_loopback
from ...jobs import Ledger, LedgerError
from ..status import snapshot, to_json
from ..thumbs import KINDS, thumb_path

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
# Only this page's own nonce-marked script and style, its own API and thumbnails.
CSP = ("default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class WebView:
    """The app's state (ledger, state_dir, token, CSRF token) and its endpoints."""

    def __init__(self, state_dir: Path, ledger: Ledger, *, token: str | None = None):
        self.state_dir = Path(state_dir)
        self.ledger = ledger
        self.token = token
        self.csrf = secrets.token_urlsafe(32)  # per process: a restart invalidates open pages' retries
        self.html = resources.files(__package__).joinpath("index.html").read_text(encoding="utf-8")

    def app(self) -> Starlette:
        routes = [
            Route("/", self.page, methods=["GET"]),
            Route("/api/status", self.status, methods=["GET"]),
            Route("/favicon.svg", self.icon, methods=["GET"]),
            Route("/thumbs/{job_id:int}/{kind}", self.thumb, methods=["GET"]),
            Route("/api/jobs/{job_id:int}/retry", self.retry, methods=["POST"]),
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
        if request.url.path == "/":
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
                               "may have restarted) and press Retry there, or use `nst-watch retry JOB_ID`")
        return None

    # --- routes ------------------------------------------------------------------------

    def page(self, request: Request) -> Response:
        if self.token is not None and "token" in request.query_params:  # the guard has checked it
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return response
        nonce = secrets.token_urlsafe(16)
        html = (self.html.replace("{{nonce}}", nonce).replace("{{csrf}}", self.csrf)
                .replace("{{poll_ms}}", str(POLL_MS)))
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": CSP.format(nonce=nonce), "Cache-Control": "no-store"})

    def status(self, request: Request) -> Response:
        text = to_json(snapshot(self.state_dir, self.ledger))
        return Response(text, media_type="application/json", headers={"Cache-Control": "no-store"})

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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(state_dir: Path, ledger: Ledger, *, token: str | None = None) -> Starlette:
    """The web view of `state_dir` and its ledger; every request needs `token` when one is given."""
    return WebView(state_dir, ledger, token=token).app()
