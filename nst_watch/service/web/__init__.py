"""The web view of the darkroom: `nst-watch run --http` / `nst-watch watch --http` (config `service.http`).

One page (index.html: plain HTML, CSS and JS, no build step, nothing from
another site) with two views. The darkroom (`/`) polls `/api/status` every
second: counts per state, the running job with a progress bar, before/after
thumbnails of recent results, failures with their reasons and a Retry
button. The proof sheet (`/proofs`) polls `/api/proofs`: every proof of each
watch as a grid, each with a Render button for its final, the final's
progress and, once done, its full-size link (`proofsheet`). Routes and their
safety rules: see `app`; the thread that serves them: see `server`.

Starlette and uvicorn are imported only when the view is on, and nothing
here imports torch: the watcher serves it too.
"""

from .server import WebServer, start_web

__all__ = ["WebServer", "start_web"]
