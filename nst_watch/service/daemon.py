"""The daemon's main loop: wiring, signals, health, readiness and status.

Roles: `run` (intake + one worker in this process), `watch` (intake only; no
torch), `work` (one worker on one device), `ray` (the Ray backend's
dispatcher: one lane per GPU of a cluster, nst_watch.cluster). All share the
ledger. With `cluster.backend: ray`, `run` is intake plus a `ray` child
process it restarts while the cluster is away (nst_watch.service.cluster):
Ray ends a driver whose cluster is gone, and the intake must not go with it.

Signals: SIGTERM/SIGINT stop intake, give the running job `grace_seconds` to
finish (else release its lease) and exit 0. SIGHUP re-reads the config: an
invalid one is logged and the old one kept; a valid one applies watch and
preset changes without touching queued jobs.

With `service.http` (or `--http`, which overrides it) the `run` and `watch`
roles also serve the web view (nst_watch.service.web) from a thread, from
just after the ledger opens until just before it closes.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from ..config import Config, load_config, with_http, with_ray
from ..errors import ConfigError, PresetError
from ..jobs import Ledger
from .intake import Intake
from .notify import Notifier
from .status import (cluster_summary, live_dir, printable, prune_live, status_line, step_progress, workers_of,
                     write_live)

log = logging.getLogger("nst_watch.daemon")

LOOP_SECONDS = 0.2
# Loading the engine (torch import, weights, a CUDA context) can take minutes on
# a cold machine; the "starting" live file promises no update for that long.
STARTING_STALE_SECONDS = 600.0
RAY_OUTPUT = "ray-driver.log"  # in state_dir: what Ray itself writes in the dispatcher's process


def _need_ray() -> None:
    """ConfigError when the config asks for Ray and it is not installed (found without importing it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("ray")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ConfigError("cluster.backend is ray (or --ray was given) but Ray is not installed: install the "
                          "[ray] extra (pip install -e '.[ray]' in the nst-watch checkout) on this machine and on "
                          "every GPU machine, or set cluster.backend: local")


class Daemon:
    def __init__(self, config_path: Path, *, role: str = "run", device: str | None = None,
                 notifier: Notifier | None = None, live_view: bool = False, http: str | None = None,
                 ray: str | None = None):
        self.config_path = Path(config_path)
        self.role = role
        self.device = device
        self.http = http  # --http HOST:PORT: overrides service.http
        self.ray = ray  # --ray ADDRESS: overrides `cluster:`
        self.cluster = None  # run with the Ray backend: the dispatcher child (ClusterLink)
        self.exit_code = 0
        self.web = None
        self.notifier = notifier or Notifier()
        self.live_view = live_view
        # Plain flags, not threading.Events: a signal handler that calls
        # Event.set() while the main thread sits in Event.wait() on the same
        # event can deadlock on the Event's internal lock.
        self.stop_requested = False
        self.reload_requested = False
        self.intake: Intake | None = None
        self.worker = None
        self._live_file: Path | None = None
        self._live_state = "starting"
        self._last_status = ""
        self._last_tick = 0.0
        self._refresh_due = False
        self._view = None

    # --- setup -------------------------------------------------------------------------

    def _signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, *_) -> None:
        self.stop_requested = True

    def _on_reload(self, *_) -> None:
        self.reload_requested = True

    def _load(self) -> Config:
        config = load_config(self.config_path)
        config = with_ray(config, self.ray) if self.ray else config
        return with_http(config, self.http) if self.http else config

    def _open(self) -> None:
        config = self.config = self._load()
        if self.role == "work" and config.cluster.backend == "ray":
            self.role = "ray"  # `work` with `cluster.backend: ray` dispatches to the cluster's GPUs
        if self.role in ("run", "ray") and config.cluster.backend == "ray":
            _need_ray()
        if self.role in ("run", "watch") and not config.watches:
            raise ConfigError(f"{self.config_path}: no watches defined; add a `watches:` list (see config.example.yaml)")
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(config.ledger_path, lease_seconds=config.service.lease_seconds,
                             max_attempts=config.service.max_attempts)
        # Before the engine loads: a port in use fails the start in a second, not after minutes.
        self._start_web(config)
        # Files of daemons killed with SIGKILL would otherwise stay forever.
        prune_live(config.state_dir)
        self._write_live(stale_after=STARTING_STALE_SECONDS)  # `status` sees it starting
        if self.role == "run" and config.cluster.backend == "ray":
            self._start_cluster(config)
        elif self.role in ("run", "work"):
            self._start_worker(config)
        elif self.role == "ray":
            self._start_dispatcher(config)
        if self.role in ("run", "watch"):
            self.intake = Intake(config, self.ledger, beat=self._beat)
            self.intake.start()

    def _start_web(self, config: Config) -> None:
        if config.service.http is None or self.role in ("work", "ray"):
            return
        from .web import start_web  # starlette and uvicorn: only with the web view on

        token = config.service.http_token
        self.web = start_web(config.service.http, state_dir=config.state_dir, ledger=self.ledger,
                             token=token.get_secret_value() if token is not None else None,
                             config=lambda: self.config)  # the current one: SIGHUP replaces it

    def _start_worker(self, config: Config) -> None:
        from ..darkroom import Darkroom  # torch is imported here, and only here
        from .worker import Worker

        settings = config.engine
        if self.device:
            settings = settings.model_copy(update={"device": self.device})
        darkroom = Darkroom(settings, max_pixels=config.max_pixels)
        self._check_budget(darkroom.engine, config)  # loads the engine
        self.worker = Worker(config, self.ledger, darkroom)
        self.worker.on_change = self._refresh_soon  # a finished job leaves status within one loop
        self.worker.start()
        log.info("worker %s ready on %s", self.worker.owner, darkroom.engine.device)

    def _check_budget(self, engine, config: Config) -> None:
        """ConfigError (exit 78) before any job is taken when engine.max_memory cannot serve every preset.

        Otherwise each photo would fail on its own, one by one, for a setting
        (Engine.check_budget). The preset needing most decides: the budget
        that serves it serves them all. A preset added by a reload that the
        running engine cannot serve has its jobs held instead (Worker._hold).
        """
        if not config.presets:
            return
        try:
            engine.check_budget(max(config.presets.values(), key=engine.least_max_memory))
        except PresetError as exc:
            raise ConfigError(f"{self.config_path}: {exc}") from None

    def _start_cluster(self, config: Config) -> None:
        from .cluster import ClusterLink  # no torch, no ray: those live in the child

        self.cluster = ClusterLink(self.config_path, config.cluster.address, config.state_dir)
        self.cluster.start()

    def _start_dispatcher(self, config: Config) -> None:
        from ..logs import divert_native_output

        # Before Ray loads: its C++ core's lines and the cluster's error prints go to this file, not the log.
        divert_native_output(config.state_dir / RAY_OUTPUT)
        from ..cluster.dispatcher import Dispatcher  # ray and torch are imported here, and only here
        from .cluster import follow_parent

        follow_parent()  # a child of `run`: it goes when the daemon goes

        self.worker = Dispatcher(config, self.ledger, config.cluster.address)
        self.worker.on_change = self._refresh_soon
        self.worker.start()

    # --- main loop -----------------------------------------------------------------------

    def serve(self) -> int:
        self._signals()
        try:
            self._open()
        except BaseException:
            # A daemon that never got going leaves no "starting" file behind, nor a port taken.
            if self._live_file is not None:
                self._live_file.unlink(missing_ok=True)
            if self.web is not None:
                self.web.stop()
            raise
        line = status_line(self.ledger.counts(superseded=True), len(self.config.watches) if self.role in ("run", "watch") else 0)
        self.notifier.ready(line)
        log.info("ready: %s%s", "Ray dispatcher, " if self.role == "ray" else "", line)
        self._live_state = "running"
        view = self._view = self._live_view()
        try:
            while not self.stop_requested:
                if self.worker is not None and getattr(self.worker, "lost", None):
                    log.error("%s: handing its jobs back and exiting, to be started again", self.worker.lost)
                    self.exit_code = 1
                    break
                if self.reload_requested:
                    self.reload_requested = False
                    self._reload()
                if self.intake is not None:
                    self.intake.step()
                if self.cluster is not None:
                    self.cluster.step()
                self._tick(view)
                if not self.stop_requested:
                    time.sleep(LOOP_SECONDS)
        finally:
            if view is not None:
                view.stop()
            self._shutdown()
        return self.exit_code

    def _tick(self, view) -> None:
        now = time.monotonic()
        if self.notifier.watchdog_due() and self.healthy():
            self.notifier.watchdog()
        if now - self._last_tick < 1.0 and not self._refresh_due:
            return
        self._last_tick, self._refresh_due = now, False
        data = self._write_live()
        watches = data["watches"]
        running = workers_of(data) + (self.cluster.workers() if self.cluster is not None else [])
        line = status_line(data["counts"], len(self.config.watches) if self.role in ("run", "watch") else 0,
                           sum(w["skipped_total"] for w in watches), data.get("cluster"), running)
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)
        if view is not None:
            view.update(self._panel(data))

    def _refresh_soon(self) -> None:
        """From the worker thread: rewrite the live status file at the next loop, not within the second."""
        self._refresh_due = True

    def _beat(self) -> None:
        """From inside a long intake pass: keep the live file fresh (no watchdog ping, no panel)."""
        now = time.monotonic()
        if now - self._last_tick >= 1.0:
            self._last_tick = now
            self._write_live(stale_after=STARTING_STALE_SECONDS if self._live_state == "starting" else None)

    def _write_live(self, *, stale_after: float | None = None) -> dict:
        """Write this process's live status file; return what was written (before its envelope)."""
        data = {"state": self._live_state,
                "watches": self.intake.info() if self.intake else [],
                "worker": self.worker.activity.to_dict() if self.worker and self.role != "ray" else None,
                "counts": self.ledger.counts(superseded=True), "config": str(self.config_path)}
        if self.role == "ray" and self.worker is not None:
            data["workers"] = self.worker.activities()  # one per GPU lane
            data["cluster"] = self.worker.info()
        elif self.cluster is not None:
            data["cluster"] = self.cluster.info()
        try:
            kwargs = {} if stale_after is None else {"stale_after": stale_after}
            self._live_file = write_live(self.config.state_dir, self.role, data, **kwargs)
        except OSError as exc:
            log.warning("cannot write the status file in %s: %s", live_dir(self.config.state_dir), exc)
        return data

    def healthy(self) -> bool:
        """Observers alive, ledger writable, worker heartbeat fresh: only then ping the watchdog."""
        if self.intake is not None and not self.intake.healthy():
            log.warning("health: a folder observer is not running")
            return False
        if not self.ledger.writable():
            log.warning("health: the ledger %s is not writable", self.config.ledger_path)
            return False
        if self.worker is not None:
            stale = time.monotonic() - self.worker.heartbeat_at
            if not self.worker.is_alive() or stale > max(60.0, self.config.service.lease_seconds):
                log.warning("health: worker silent for %.0fs", stale)
                return False
        return True

    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            config = self._load()
        except ConfigError as exc:
            log.error("reload failed; still running the previous config. %s", exc)
            self.notifier.ready()
            return
        fixed = [name for name, old, new in (
            ("engine", self.config.engine, config.engine), ("state_dir", self.config.state_dir, config.state_dir),
            ("service.http", self.config.service.http, config.service.http),
            ("service.http_token", self.config.service.http_token, config.service.http_token),
            ("cluster", self.config.cluster, config.cluster)) if old != new]
        if fixed:
            log.warning("%s changed: restart nst-watch to apply (other changes applied)", ", ".join(fixed))
        if self.intake is not None:
            self.intake.reconfigure(config)
        if self.worker is not None:
            self.worker.config = config
        if self.cluster is not None:
            self.cluster.reload()  # the dispatcher child reads the file again too
        self.config = config
        log.info("config reloaded from %s", self.config_path)
        self.notifier.ready()

    def _shutdown(self) -> None:
        self.notifier.stopping()
        who = "Ray dispatcher " if self.role == "ray" else ""
        log.info("%sstopping: %s", who, "no new photos taken" if self.intake is not None else "no new jobs claimed")
        if self.intake is not None:
            self.intake.stop()
        if self._live_file is not None:
            # The grace period may outlast the usual freshness promise.
            self._live_state = "stopping"
            self._write_live(stale_after=self.config.service.grace_seconds + 30)
        if self.worker is not None:
            self.worker.stop(self.config.service.grace_seconds)
        if self.cluster is not None:
            self.cluster.stop(self.config.service.grace_seconds)
        if self.web is not None:  # up to here: the page shows the last job finishing
            self.web.stop()
        if self._live_file is not None:
            self._live_file.unlink(missing_ok=True)
        self.ledger.close()
        log.info("%sstopped", who)

    # --- terminal view -----------------------------------------------------------------

    def _live_view(self):
        if not self.live_view:
            return None
        from rich.live import Live

        from .. import logs

        live = Live(console=logs.CONSOLE, refresh_per_second=2, transient=True)
        live.start()
        return live

    def _panel(self, data: dict):
        from rich.table import Table
        from rich.text import Text

        # Text, not str: no rich markup in a path, and printable(): no control characters.
        table = Table(title=f"nst-watch {self.role}", show_header=False, box=None)
        for w in data["watches"]:
            skipped = f", {w['skipped_total']} not taken (nst-watch status)" if w["skipped_total"] else ""
            table.add_row(Text(printable(f"watch {w['name']}")),
                          Text(printable(f"{w['input']} -> {w['output']} ({w['mode']}, {w['settling']} settling"
                                         f"{skipped})")))
        c = data["counts"]
        table.add_row("jobs", ", ".join(f"{k} {v}" for k, v in c.items()))
        if data.get("cluster"):
            table.add_row("cluster", Text(printable(cluster_summary(data["cluster"]))))
        workers = workers_of(data) + (self.cluster.workers() if self.cluster is not None else [])
        for worker in (w for w in workers if w.get("jobs")):
            table.add_row("now", Text(printable(f"{', '.join(worker['photos'])} [{worker['preset']}] "
                                                f"{step_progress(worker)}, loss {worker['loss'] or 0:.4g}")))
        return table
