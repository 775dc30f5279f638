"""The web view of the darkroom: `nst-watch run --http` / `nst-watch watch --http` (config `service.http`).

One page (index.html: plain HTML, CSS and JS, no build step, nothing from
another site) that polls `/api/status` every second: counts per state, the
running job with a progress bar, before/after thumbnails of recent results,
failures with their reasons and a Retry button. Routes and their safety
rules: see `app`; the thread that serves them: see `server`.

Starlette and uvicorn are imported only when the view is on, and nothing
here imports torch: the watcher serves it too.
"""

from .server import WebServer, start_web

__all__ = ["WebServer", "start_web"]
