"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET.

A leading '@' names an abstract socket (Linux), sent as a leading NUL byte.
Without $NOTIFY_SOCKET (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("nst_watch.notify")


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address = None
        if address:
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        enabled = usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
        # systemd asks for a ping at least every WATCHDOG_USEC; ping at half of it.
        self.watchdog_interval = int(usec) / 2e6 if enabled else None
        self._last_watchdog = 0.0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog_due(self) -> bool:
        return self.watchdog_interval is not None and time.monotonic() - self._last_watchdog >= self.watchdog_interval

    def watchdog(self) -> None:
        self._last_watchdog = time.monotonic()
        self.send("WATCHDOG=1")
