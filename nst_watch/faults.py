"""Fault injection for crash tests: die with SIGKILL at a named moment.

`NST_WATCH_FAULT=writing,published` makes the process kill itself the first
time it reaches any of those points; `bug:optimising` raises a RuntimeError
there instead (a fault that recurs identically), `oom:optimising` a
MemoryError (one the environment may get over), and an errno name such as
`ENOSPC:copying` an OSError with that errno (`ENOSPC:copying`: the disk
fills while an original is copied; `EXDEV:moving`: processed/ is on
another file system). Tests use them to prove that a daemon hit at that
exact moment loses nothing and retries only what a retry can fix; in normal
use the variable is unset and each call is one dictionary lookup.
"""

from __future__ import annotations

import errno
import logging
import os
import signal

ENV = "NST_WATCH_FAULT"

log = logging.getLogger("nst_watch.faults")


def fault(point: str) -> None:
    """SIGKILL this process (or raise) if `point` is listed in $NST_WATCH_FAULT."""
    listed = os.environ.get(ENV, "").split(",")
    if listed == [""]:
        return
    if point in listed:
        log.warning("fault injection: SIGKILL at %r", point)
        os.kill(os.getpid(), signal.SIGKILL)
    if f"bug:{point}" in listed:
        raise RuntimeError(f"injected bug at {point}")
    if f"oom:{point}" in listed:
        raise MemoryError(f"injected out-of-memory at {point}")
    for entry in listed:
        name, _, at = entry.partition(":")
        code = getattr(errno, name, None) if at == point and name.startswith("E") else None
        if isinstance(code, int):
            raise OSError(code, f"{os.strerror(code)} (injected at {point})")
