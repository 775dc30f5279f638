"""The GPU side of the Ray backend: one resident engine per GPU, as a Ray actor.

A `Stylist` never touches a file. It receives decoded pixels and style
images through Ray's object store, optimises them with the same
`stylize_batch` the local darkroom uses, and returns the results; the
coordinator reads and writes every photo (nst_watch.cluster.dispatcher).
Its engine keeps VGG19 and the style targets of the presets it has seen
(cached per preset, style images and size: Engine._style_targets) for the
actor's life.

The actor is threaded (max_concurrency 2): `progress` and `cancel` answer
while `stylize` runs.
"""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import torch

from ..config import EngineSettings, Preset
from ..darkroom import stylize_batch, to_tensor
from ..engine import Engine, Progress, StylizeResult
from ..errors import EngineError


class _Abandoned(Exception):
    """Raised from the progress callback once the coordinator cancels the running batch."""


class Stylist:
    """A resident engine on the GPU Ray gave this actor (CUDA_VISIBLE_DEVICES), or the CPU without one."""

    def __init__(self, settings: EngineSettings):
        if settings.device.startswith("cuda:"):
            # Ray shows the actor only its own GPU (CUDA_VISIBLE_DEVICES), as cuda:0:
            # a config's cuda:N names a GPU of the coordinator's machine, not this one.
            settings = settings.model_copy(update={"device": "cuda"})
        self.engine = Engine.from_settings(settings)
        self._latest: Progress | None = None
        self._cancel = threading.Event()

    def describe(self) -> dict:
        """Where this engine runs: {"device": "cuda:0", "host": name, "node": IP, "pid": int}."""
        import ray  # here, not at import: the module also loads where Ray is only a dependency

        return {"device": str(self.engine.device), "host": socket.gethostname(),
                "node": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def stylize(self, contents: list[np.ndarray], preset: Preset, *styles,
                masks: list[np.ndarray | None] | None = None, resume: list | None = None
                ) -> list[StylizeResult | EngineError] | None:
        """Stylise photos ([H, W, 3] float32 RGB in [0, 1]) with `preset` and its style images ([3, H, W] tensors).

        `masks`: one mask's region weights ([R, h, w] float32, see
        nst_watch.photo.mask) or None per photo; `resume`: a final's proof (engine.FromProof) or None per
        photo. Returns one StylizeResult or
        EngineError per photo, in order (darkroom.stylize_batch), or None
        when `cancel` abandoned the batch.
        """
        self._cancel.clear()
        self._latest = None
        extra = {} if resume is None else {"resume": resume}
        if masks is not None and any(m is not None for m in masks):
            extra["masks"] = [None if m is None else torch.from_numpy(np.ascontiguousarray(m)) for m in masks]
        try:
            return stylize_batch(self.engine, [to_tensor(c) for c in contents], preset, list(styles), self._report,
                                 **extra)
        except _Abandoned:
            return None
        finally:
            self._latest = None

    def progress(self) -> Progress | None:
        """The running batch's latest Progress event (None between batches)."""
        return self._latest

    def cancel(self) -> None:
        """Abandon the running batch at its next progress event (coordinator shutting down)."""
        self._cancel.set()

    def _report(self, event: Progress) -> None:
        self._latest = event
        if self._cancel.is_set():
            raise _Abandoned()
