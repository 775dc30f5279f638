"""The coordinator's side of the Ray backend: `nst-watch work --ray`.

One *lane* per GPU of the cluster. A lane is a local Worker (same ledger,
same claims, same crash-safe publishing, same retries) whose darkroom sends
the optimisation to its own Ray actor (nst_watch.cluster.actor.Stylist,
num_gpus=1, restarted by Ray when it dies). Photos are read, checked and
written here, on the machine with the folders; only pixels cross the
network: the photo's decoded RGB at the preset's output size (float32, 12
bytes per pixel) and the style images go to the actor through Ray's object
store, and the result comes back the same way.

Scheduling is pull-based: a lane claims a batch only when its actor is up
and has finished the last one, so a fast GPU simply comes back for work more
often. An actor that dies mid-batch (its process killed, its node lost)
loses nothing: its lane hands the batch back to the ledger at once, the
attempt counted, and whichever actor is free next takes it.

A cluster whose head stops answering for LOST_SECONDS ends this process
(exit 1) after its leases are handed back: Ray itself ends a driver that has
lost its head for a minute, so the daemon's intake runs in another process
(nst_watch.service.cluster restarts this one until the cluster is back).

Sources: FIELD_NOTES.md section 7; Ray's actor fault tolerance
(max_restarts, RayActorError).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import ray
import torch
from ray.exceptions import (ActorDiedError, GetTimeoutError, NodeDiedError, ObjectLostError, RayActorError,
                            RayTaskError, WorkerCrashedError)

from ..config import Config, EngineSettings, Preset
from ..darkroom import Darkroom, to_pixels, to_tensor
from ..engine import FromProof
from ..engine.pyramid import output_size, resize
from ..errors import NstWatchError
from ..jobs import Ledger
from ..logs import adopt
from ..service.worker import Cancelled, EngineLost, Worker
from .actor import Stylist

log = logging.getLogger("nst_watch.cluster")

PROGRESS_SECONDS = 0.5  # how often a lane asks its actor how far it is
PROBE_SECONDS = 2.0  # how often the cluster's GPUs are counted
PROBE_TIMEOUT = 5.0
LOST_SECONDS = 10.0  # the head silent this long: the cluster is gone
RECREATE_SECONDS = 10.0  # pause before replacing an actor whose engine failed to load
NAMESPACE = "nst-watch"
# What a dead actor process or node looks like to a caller: the batch was lost, not refused.
_LOST = (RayActorError, NodeDiedError, ObjectLostError, WorkerCrashedError)


class ClusterError(NstWatchError):
    """The Ray cluster cannot be reached or used (exit 1: the daemon tries again)."""


def connect(address: str) -> None:
    """Join the Ray cluster at `address` as a driver; ClusterError naming the address and the fix.

    `address`: "auto" (the cluster this machine joined with `ray start`),
    HOST:PORT of the head's GCS, or ray://HOST:PORT (Ray Client). Token
    authentication follows the cluster (_follow_auth). Ray's own log
    records go through nst-watch's handler, at warnings.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a studio daemon does not report usage
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # Ray's C++ retry chatter: errors only, even in its file
    adopt("ray")  # importing ray gave its logger a handler of its own, in Ray's format
    fix = ("check cluster.address (or --ray) for a typo; start the cluster with `ray start --head` on its head "
           "machine and `ray start --address=HEAD:6379` on this one (README \"Several machines\")")
    _reachable(address, fix)
    _follow_auth(address)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # log_to_driver off: the actors' output and Ray's own stay in Ray's log folder on each machine;
        # what matters to an operator (an engine that will not start, one lost) nst-watch logs itself.
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - whatever ray.init raises, the message names the cluster and a fix
        # Ray says so only deep in its chained errors, or (RAY_AUTH_MODE=token, no token) as AuthenticationError.
        if "InvalidAuthToken" in f"{exc} {exc.__cause__}" or type(exc).__name__ == "AuthenticationError":
            raise ClusterError(_refused(address)) from None
        raise ClusterError(f"cannot join the Ray cluster at {address}: {exc}. Fix: {fix}") from None
    finally:
        # ray.init installs its own SIGTERM handler (sys.exit at once): the daemon's let running
        # batches finish within service.grace_seconds, as a local worker's do.
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)


def _reachable(address: str, fix: str) -> None:
    """Fail in seconds when nothing listens at HOST:PORT (ray.init would wait about a minute)."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise ClusterError(f"cluster.address {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address} ({exc}). Fix: {fix}") from None


def _token_source() -> str:
    """Where Ray reads this user's cluster token, in Ray's own order of precedence (docs: "Token Authentication")."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    return str(Path.home() / ".ray" / "auth_token")


def _refused(address: str) -> str:
    """The message for a cluster that refuses this driver's token (or its lack of one), with the fix."""
    source = _token_source()
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        held = "RAY_AUTH_MODE=disabled is set for nst-watch"
        fix = "unset RAY_AUTH_MODE (or set it to token)"
    elif source == "RAY_AUTH_TOKEN" or Path(source).is_file():
        held = f"the token in {source} is not the one the cluster was started with"
        fix = f"put the cluster's token (`ray get-auth-token` on the head prints it) in {source} and chmod 600 it"
    else:
        held = f"this user has no token ({source} does not exist)"
        fix = (f"copy the head's ~/.ray/auth_token (`ray get-auth-token` there prints it) to {source} and chmod 600 "
               "it, or point RAY_AUTH_TOKEN_PATH at a copy")
    return (f"the Ray cluster at {address} wants its token and refused nst-watch: {held}. Fix: {fix}; "
            "see README \"Several machines\"")


def _follow_auth(address: str) -> None:
    """Speak the cluster's authentication: its token when it wants one, none when it does not.

    Ray 2.60 (authentication_token_setup.py): `ray start --head` turns
    token authentication on by itself once the user has a token (any
    earlier `ray.init()` writes ~/.ray/auth_token); a driver does the same
    only for address "auto" and whether or not the cluster wants it (a
    driver in token mode joins a cluster without authentication, but its
    actors never start); with HOST:PORT it stays off and is refused. So
    unless RAY_AUTH_MODE is set (the user's choice stands), the head is
    asked first, with a GCS handshake that takes milliseconds, and
    RAY_AUTH_MODE is set for this process to what it answered. A refusal
    that no token of this user's can fix is a ClusterError at once; a Ray
    without token authentication (before 2.52), or a head that does not
    answer, is left to ray.init.
    """
    if os.environ.get("RAY_AUTH_MODE") or "://" in address:
        return
    try:
        from ray._private.services import canonicalize_bootstrap_address
        from ray._raylet import AuthenticationTokenLoader, Config, GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:
        return
    try:
        gcs = canonicalize_bootstrap_address(address)
        host, _, port = gcs.rpartition(":")
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()  # else the handshake waits 40 s
    except Exception:  # noqa: BLE001 - no head found or listening: ray.init says why
        return

    def admitted() -> bool | None:
        """Whether the head lets this process in, as its auth mode now stands (None: no answer either way)."""
        try:
            GcsClient(address=gcs)
        except AuthenticationError:
            return False
        except Exception:  # noqa: BLE001 - a head that does not answer: ray.init says why
            return None
        return True

    answer = admitted()
    if answer is None:
        return
    if not answer and not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        raise ClusterError(_refused(address))
    os.environ["RAY_AUTH_MODE"] = "disabled" if answer else "token"  # as Ray turns it on: the variable,
    Config.initialize("")  # then its config read again
    if not answer and admitted() is False:
        raise ClusterError(_refused(address))


def gpus_in_cluster() -> int:
    """GPUs of the cluster's live nodes (whole ones: one actor each). Asks the head; may block while it is gone."""
    return int(sum(node.get("Resources", {}).get("GPU", 0) for node in ray.nodes() if node.get("Alive")))


class _StyleRefs:
    """Style images put in Ray's object store once, shared by every lane (and so every actor fetches each once)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._refs: dict[int, tuple[object, ray.ObjectRef]] = {}

    def ref(self, tensor) -> ray.ObjectRef:
        with self._lock:
            held = self._refs.get(id(tensor))
            if held is None or held[0] is not tensor:
                held = self._refs[id(tensor)] = (tensor, ray.put(tensor))  # the tensor kept: its id stays unique
            return held[1]


class RemoteDarkroom(Darkroom):
    """A Darkroom whose engine is a Ray actor: photos are read and written here, optimised there."""

    def __init__(self, settings: EngineSettings, *, max_pixels: int, make_actor, styles: dict, refs: _StyleRefs):
        super().__init__(settings, max_pixels=max_pixels)
        self._make_actor = make_actor
        self.actor = make_actor()
        self._again_at: float | None = None  # when to replace an actor that died for good
        self._styles = styles  # style images read once for every lane (Darkroom.style_images caches here)
        self._refs = refs
        self.info: dict | None = None  # Stylist.describe(), once the actor is up
        self._asking = None
        self.problem: str | None = None  # why the actor is not up, for status

    @property
    def engine(self):
        raise RuntimeError("a RemoteDarkroom's engine is its Ray actor")

    @property
    def device(self) -> str:
        if self.info is None:
            return "ray actor (starting)"
        return f"{self.info['device']} on {self.info['host']}"

    def ready(self) -> bool:
        """Whether the actor is up (placed on a GPU, engine loaded); never blocks."""
        if self.info is not None:
            return True
        if self._again_at is not None:
            if time.monotonic() < self._again_at:
                return False
            self._again_at, self.actor = None, self._make_actor()
        if self._asking is None:
            self._asking = self.actor.describe.remote()
        done, _ = ray.wait([self._asking], timeout=0)
        if not done:
            return False
        asking, self._asking = self._asking, None
        try:
            self.info = ray.get(asking)
        except RayActorError as exc:
            reason = _reason(exc)
            if self.problem is None:  # once per outage: while a node is away its lane asks every second
                log.warning("a Ray engine is not up: %s; its jobs wait for another, and it is tried again", reason)
            self.problem = reason
            if isinstance(exc, ActorDiedError):
                # Ray does not restart an actor whose engine failed to load (say, engine.weights
                # missing on its machine): a new one tries again, in case it has been fixed since.
                self._again_at = time.monotonic() + RECREATE_SECONDS
        else:
            self.problem = None
        return self.info is not None

    def stylize_photos(self, photos, preset: Preset, progress=None, resume=None, masks=None) -> list:
        """Darkroom.stylize_photos on the actor. EngineLost when the actor dies; Cancelled from `progress`.

        Of `resume`, a final's proof (FromProof) is carried to the actor; a photo kept from a local engine's
        interrupted run starts afresh.
        Each mask (nst_watch.photo.mask.Mask, or None) travels with its photo as region weights at the
        photo's output size.
        """
        styles = [self._refs.ref(image) for image in self.style_images(preset)]
        where = self.device
        extra = {}
        if masks is not None and any(m is not None for m in masks):
            extra["masks"] = [None if m is None else _mask_at_output_size(m.weights, p.pixels.shape[:2], preset)
                              for p, m in zip(photos, masks)]
        if resume is not None and any(isinstance(r, FromProof) for r in resume):
            extra["resume"] = [r if isinstance(r, FromProof) else None for r in resume]
        call = self.actor.stylize.remote([_at_output_size(p.pixels, preset) for p in photos], preset, *styles,
                                         **extra)
        try:
            while not ray.wait([call], timeout=PROGRESS_SECONDS)[0]:
                self._poll(progress)
            results = ray.get(call)
        except Cancelled:
            self.actor.cancel.remote()
            raise
        except RayTaskError as exc:
            # The engine's own exception (out of memory, a preset problem): the worker sorts it as it would
            # a local one, without Ray's remote traceback in the ledger.
            if isinstance(exc.cause, Exception):
                raise exc.cause from None
            raise
        except _LOST as exc:
            self.info = None  # a restarted actor describes itself again before its lane claims
            raise EngineLost(f"the Ray actor on {where} was lost mid-batch ({_first_line(exc)})") from None
        if results is None:
            raise Cancelled()
        return results

    def _poll(self, progress) -> None:
        try:
            event = ray.get(self.actor.progress.remote(), timeout=PROBE_TIMEOUT)
        except GetTimeoutError:
            return
        if event is not None and progress is not None:
            progress(event)


class Lane(Worker):
    """A Worker whose engine is one Ray actor; claims only while that actor is up and the cluster answers."""

    def __init__(self, *args, dispatcher: "Dispatcher", **kwargs):
        super().__init__(*args, **kwargs)
        self.dispatcher = dispatcher

    def ready(self) -> bool:
        if not self.dispatcher.answering():
            return False
        up = self.darkroom.ready()
        self.activity.device = self.darkroom.device
        return up

    def _engine_lost(self, jobs, exc) -> None:
        """An actor lost while the cluster answers costs its batch an attempt; a lost cluster does not.

        A dead actor or node may be the photo's doing (say, a crash in the
        engine), so its attempts count as a crashed worker's. A cluster
        that stopped answering is nobody's photo: its batch waits, attempts
        as they were, until the cluster is back.
        """
        if self.dispatcher.answering(fresh=True):
            super()._engine_lost(jobs, exc)
            return
        released = self.ledger.release(self.owner, [j.id for j in jobs],
                                       reason=f"the Ray cluster at {self.dispatcher.address} stopped answering")
        log.warning("%s, and the cluster stopped answering: %d job(s) wait for it, their attempts not counted",
                    exc, released)

    def describe(self) -> dict:
        info = self.darkroom.info or {}
        return {"owner": self.owner, "ready": self.darkroom.info is not None, "device": info.get("device"),
                "host": info.get("host"), "node": info.get("node"), "pid": info.get("pid"),
                "problem": self.darkroom.problem}


class Dispatcher:
    """One lane per GPU of the Ray cluster at `address`; stands in the Daemon where a local Worker would.

    Lanes are added as GPUs join the cluster (one actor per whole GPU) and
    kept when they leave: Ray restarts their actors when a GPU is free again.
    """

    def __init__(self, config: Config, ledger: Ledger, address: str):
        self._config = config
        self.ledger = ledger
        self.address = address
        self.lanes: list[Lane] = []
        self.gpus = 0
        self.lost: str | None = None  # why the cluster counts as gone; the daemon then exits 1
        self.on_change = None
        self.heartbeat_at = time.monotonic()
        self._styles: dict = {}
        self._refs = _StyleRefs()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._probe = ThreadPoolExecutor(1, thread_name_prefix="ray-probe")  # one: a hung probe blocks the next
        self._answered_at = time.monotonic()
        self._silent = False  # the last count of GPUs went unanswered

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:  # a reload: each lane reads it at its next batch
        self._config = config
        for lane in self.lanes:
            lane.config = config

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        connect(self.address)
        self._count()
        log.info("joined the Ray cluster at %s: %d GPU(s)", self.address, self.gpus)
        if not self.gpus:
            log.warning("the Ray cluster at %s has no GPUs: jobs wait until a GPU node joins (`ray start "
                        "--address=... --num-gpus=N` on it)", self.address)
        self._grow()
        self._thread = threading.Thread(target=self._watch, name="ray-cluster", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace: float) -> None:
        """Stop every lane (running batches get `grace` seconds, then go back to the ledger)."""
        self._stopping.set()
        for lane in self.lanes:
            lane.stopping.set()
        deadline = time.monotonic() + grace
        for lane in self.lanes:
            lane.stop(max(0.0, deadline - time.monotonic()))
        self._probe.shutdown(wait=False, cancel_futures=True)

    def _grow(self) -> None:
        # One GPU each; restarted without end (a node that comes back gets its engine back); a call
        # in flight when the actor dies is not retried: its lane hands the batch back instead.
        stylist = ray.remote(Stylist).options(num_gpus=1, max_restarts=-1, max_task_retries=0, max_concurrency=2)
        while len(self.lanes) < self.gpus:
            engine = self.config.engine
            darkroom = RemoteDarkroom(engine, max_pixels=self.config.max_pixels,
                                      make_actor=lambda: stylist.remote(engine), styles=self._styles, refs=self._refs)
            owner = f"{socket.gethostname()}:{os.getpid()}:ray-{len(self.lanes) + 1}"
            lane = Lane(self.config, self.ledger, darkroom, owner=owner, dispatcher=self)
            lane.on_change = self._changed
            lane.start()
            self.lanes.append(lane)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def answering(self, *, fresh: bool = False) -> bool:
        """Whether the cluster's head answered the last count of GPUs (`fresh`: ask it now, up to PROBE_TIMEOUT)."""
        if fresh:
            self._count()
        return self._answered_at >= time.monotonic() - 2 * PROBE_SECONDS - PROBE_TIMEOUT and not self.lost

    def _count(self) -> bool:
        """Count the cluster's GPUs; False when the head does not answer within PROBE_TIMEOUT."""
        try:
            self.gpus = self._probe.submit(gpus_in_cluster).result(timeout=PROBE_TIMEOUT)
        except (FutureTimeout, Exception):  # noqa: BLE001 - any failure to answer counts as silence
            self._silent = True
            return False
        self._answered_at, self._silent = time.monotonic(), False
        return True

    def _watch(self) -> None:
        """Count the cluster's GPUs every PROBE_SECONDS; declare it lost after LOST_SECONDS of silence."""
        while not self._stopping.wait(PROBE_SECONDS):
            self.heartbeat_at = time.monotonic()
            if self._count():
                self._grow()
                continue
            silent = time.monotonic() - self._answered_at
            if silent >= LOST_SECONDS:
                self.lost = f"the Ray cluster at {self.address} has not answered for {silent:.0f}s"
                return

    # --- status ----------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.lost:
            return "lost"
        if self._silent:
            return "unreachable"  # for up to LOST_SECONDS, then lost
        if not self.gpus:
            return "waiting for GPUs"
        if not any(lane.darkroom.info for lane in self.lanes):
            return "starting actors"
        return "connected"

    def info(self) -> dict:
        """The `cluster` block of this process's live status file."""
        return {"backend": "ray", "address": self.address, "state": self.state, "gpus": self.gpus,
                "actors": [lane.describe() for lane in self.lanes], "message": self.lost}

    def activities(self) -> list[dict]:
        return [lane.activity.to_dict() for lane in self.lanes]


def _at_output_size(pixels: np.ndarray, preset: Preset) -> np.ndarray:
    """The photo ([H, W, 3] float32) resized as the engine would resize it first (Engine.stylize).

    Sent instead of the whole photo: at 1024 px a 24 MP photo crosses the
    network as 8 MB instead of 288 MB. The engine's own resize then has
    nothing left to do, so the picture is the same up to float rounding.
    """
    height, width = pixels.shape[:2]
    size = output_size(height, width, preset)
    if size == (height, width):
        return pixels
    return to_pixels(resize(to_tensor(pixels)[None], size)[0])


def _mask_at_output_size(weights: np.ndarray, photo_hw: tuple[int, int], preset: Preset) -> np.ndarray:
    """A mask's region weights ([R, h, w] float32) at the photo's output size, as the engine would resample them.

    Sent instead of the mask as painted (a full-size mask of three regions
    is 36 bytes a pixel); convex resampling (engine.guidance.resize_weights)
    keeps the weights in [0, 1], summing to 1, soft edges soft.
    """
    from ..engine.guidance import resize_weights

    size = output_size(*photo_hw, preset)
    if tuple(weights.shape[1:]) == size:
        return weights
    return resize_weights(torch.from_numpy(np.ascontiguousarray(weights))[None], size)[0].numpy()


def _reason(exc: BaseException) -> str:
    """What went wrong in an actor, in one line: for a failed start, the engine's own error."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if lines and "creation task" in lines[0]:
        # The message ends with the exception raised in Stylist.__init__, module path first.
        kind, _, message = lines[-1].partition(": ")
        return f"{kind.rsplit('.', 1)[-1]}: {message}" if message else lines[-1]
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

