"""Logging to stderr: rich on a terminal, plain lines for journald otherwise.

When stderr is not a TTY each line starts with a syslog priority prefix
(`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which journald turns
into the entry's priority; no colour or markup ever reaches the journal.

One event, one record: messages are escaped (a file name holding a newline,
an escape sequence or bytes that are not UTF-8 shows as ``\n``, ``\x1b``,
``\xff``), so no name can forge a log line or reach the terminal raw. Python
warnings (Pillow's, for one) go through logging too.
"""

from __future__ import annotations

import logging
import sys

from .photo.naming import escape_name

CONSOLE = None  # the rich Console logging writes to on a TTY; live views share it

_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class EscapingFormatter(logging.Formatter):
    """Formats the message with its control characters and undecodable bytes escaped."""

    def format(self, record: logging.LogRecord) -> str:
        original = record.msg, record.args
        record.msg, record.args = escape_name(record.getMessage()), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = original


class SyslogPrefixFormatter(EscapingFormatter):
    """Plain lines for journald, each with the record's syslog priority (tracebacks' lines too)."""

    def format(self, record: logging.LogRecord) -> str:
        level = _SYSLOG.get(record.levelno, 6)
        return "\n".join(f"<{level}>{line}" for line in super().format(record).splitlines())


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
        handler.setFormatter(EscapingFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(SyslogPrefixFormatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    # Third-party chatter stays at warnings unless -v.
    for noisy in ("PIL", "watchdog", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
