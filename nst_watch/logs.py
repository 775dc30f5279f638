"""Logging to stderr: rich on a terminal, plain lines for journald otherwise.

When stderr is not a TTY each line starts with a syslog priority prefix
(`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which journald turns
into the entry's priority; no colour or markup ever reaches the journal.
"""

from __future__ import annotations

import logging
import sys

CONSOLE = None  # the rich Console logging writes to on a TTY; live views share it

_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class SyslogPrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = _SYSLOG.get(record.levelno, 6)
        return f"<{level}>{super().format(record)}"


def setup_logging(verbosity: int = 0, *, stream=None) -> None:
    """Configure the root logger once; -v for debug, -q for warnings only."""
    global CONSOLE
    stream = stream or sys.stderr
    CONSOLE = None
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if stream.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        CONSOLE = Console(file=stream)
        handler: logging.Handler = RichHandler(
            console=CONSOLE, show_path=False, markup=False, rich_tracebacks=False
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(SyslogPrefixFormatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter stays at warnings unless -v.
    for noisy in ("PIL", "watchdog", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
