"""Serving the web view from inside the daemon: uvicorn in a background thread.

The socket is bound in the calling (main) thread before the server starts,
so an address in use or not of this machine fails the daemon's start at
once with a message naming the address, instead of dying unseen in a
thread. uvicorn installs signal handlers only on the main thread, and its
thread is not that one: SIGTERM, SIGINT and SIGHUP stay the daemon's.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import uvicorn

from ...config import Config, parse_http
from ...errors import ConfigError, NstWatchError
from ...jobs import Ledger
from .app import create_app

log = logging.getLogger("nst_watch.web")

STOP_SECONDS = 5.0


class WebServer:
    """A running web view; `stop()` ends it."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, url: str):
        self.server, self.sock, self.url = server, sock, url
        self.thread = threading.Thread(target=self._run, name="web", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException:  # noqa: BLE001 - a thread's death is otherwise silent
            log.exception("the web view on %s stopped", self.url)

    def stop(self) -> None:
        """Let uvicorn close its connections (open requests get STOP_SECONDS), then release the socket."""
        self.server.should_exit = True
        self.thread.join(STOP_SECONDS + 1)
        if self.thread.is_alive():
            log.warning("the web view on %s did not stop within %.0fs; leaving it to exit with the process",
                        self.url, STOP_SECONDS + 1)
        self.sock.close()


def start_web(http: str, *, state_dir: Path, ledger: Ledger, token: str | None = None,
              config: Callable[[], Config] | None = None) -> WebServer:
    """Serve the web view of `state_dir` on `http` (HOST:PORT, already validated) in a background thread.

    `config` returns the daemon's current config (it changes on SIGHUP): the
    proof sheet's Render button needs it.

    Raises NstWatchError (exit 1) when the port is taken, ConfigError (exit
    78) when the address cannot be used on this machine at all.
    """
    host, port = parse_http(http)
    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    settings = uvicorn.Config(
        create_app(state_dir, ledger, token=token, config=config), lifespan="off", log_level="warning",
        access_log=False,
        log_config=None,  # keep our handlers: escaped lines, syslog prefixes for journald
        loop="asyncio", http="h11", ws="none", server_header=False, timeout_graceful_shutdown=int(STOP_SECONDS))
    web = WebServer(uvicorn.Server(settings), sock, url)
    web.thread.start()
    log.info("web view on %s", url)
    return web


def _bind(host: str, port: int) -> socket.socket:
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"web view: cannot resolve {host!r} ({exc.strerror}): set --http or service.http "
                          f"to an address of this machine, e.g. 127.0.0.1:{port}") from None
    sock = socket.socket(family, kind, proto)
    # A restart may rebind at once while the last connections linger in TIME_WAIT
    # (on Linux this never lets two servers listen on one port).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise _bind_error(where, port, exc) from None
    return sock


def _bind_error(where: str, port: int, exc: OSError) -> NstWatchError:
    if exc.errno == errno.EADDRINUSE:
        # Not a config error (exit 1, not 78): the holder may be an instance still stopping,
        # and systemd's restart then succeeds.
        return NstWatchError(f"web view: {where} is already in use (another nst-watch, or another program: "
                             f"`ss -ltnp 'sport = :{port}'` shows which); stop it, or choose another port with "
                             f"--http HOST:PORT or service.http")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"web view: {where} is not an address of this machine: set --http or service.http "
                           f"to one of its addresses, e.g. 127.0.0.1:{port}")
    if exc.errno == errno.EACCES:
        return ConfigError(f"web view: no permission to listen on {where} (ports below 1024 need privileges): "
                           f"choose a port of 1024 or above in --http or service.http")
    return NstWatchError(f"web view: cannot listen on {where}: {exc.strerror}; check --http or service.http")
