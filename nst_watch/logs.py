"""Logging to stderr: rich on a terminal, plain lines for journald otherwise.

When stderr is not a TTY each line starts with a syslog priority prefix
(`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which journald turns
into the entry's priority; no colour or markup ever reaches the journal.

One event, one record: messages are escaped (a file name holding a newline,
an escape sequence or bytes that are not UTF-8 shows as ``\n``, ``\x1b``,
``\xff``), so no name can forge a log line or reach the terminal raw. Python
warnings (Pillow's, for one) go through logging too, and so does the CLI's
last word, `nst-watch: error: ...` (fatal_line). Libraries that write to the
process's file descriptors themselves (Ray's C++ core) are kept out of the
log by divert_native_output.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .photo.naming import escape_name

CONSOLE = None  # the rich Console logging writes to on a TTY; live views share it
_VERBOSITY = 0  # setup_logging's, for a logger adopted or a stream changed later
DIVERTED_KEEP = 4 * 1024 * 1024  # a diverted-output file past this size is rotated to .1 at the next start

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
        return _with_priority(super().format(record), record.levelno)


def _with_priority(text: str, levelno: int) -> str:
    """`text` with the syslog priority of `levelno` before each of its lines (`<3>` for errors)."""
    level = _SYSLOG.get(levelno, 6)
    return "\n".join(f"<{level}>{line}" for line in text.splitlines())


def fatal_line(message: str, *, stream=None) -> str:
    """The CLI's last word, `nst-watch: error: MESSAGE`, as it goes to `stream` (default stderr).

    On a terminal it is the plain text; elsewhere (journald) each of its
    lines carries `<3>`, the priority of an error, like every logged line.
    """
    text = f"nst-watch: error: {message}"
    return text if (stream or sys.stderr).isatty() else _with_priority(text, logging.ERROR)


def adopt(name: str) -> None:
    """Route library logger `name` through nst-watch's handler (format, escaping, priorities) at warnings.

    For libraries that give their logger a handler of their own and stop
    it propagating (Ray does, when imported): their records would
    otherwise reach stderr in the library's format. Debug with -vv.
    """
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.DEBUG if _VERBOSITY > 1 else logging.WARNING)


def divert_native_output(path: Path) -> None:
    """Send what bypasses logging (writes to file descriptors 1 and 2) to the file `path`; logging stays on stderr.

    Ray's C++ core writes its own lines (`logging.cc:303 ...`) straight to
    fd 2, and a Ray driver prints the cluster's error messages
    (`(raylet) A worker died ...`, with colour codes) to stdout: in a
    journal they would be lines without a priority, in another format.
    Python's sys.stderr first moves to a duplicate of the real fd 2, so
    nst-watch's log lines, `fatal_line` and any traceback still reach the
    journal (or terminal); then fds 1 and 2 point at `path`, appended to.
    A file past DIVERTED_KEEP bytes is renamed to `<path>.1` first, so at
    most about twice that is kept. Call once, early; POSIX only.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    kept = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    path = Path(path)
    if path.exists() and path.stat().st_size > DIVERTED_KEEP:
        path.replace(path.with_name(path.name + ".1"))
    sink = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(sink, 1)
        os.dup2(sink, 2)
    finally:
        os.close(sink)
    sys.stderr = kept
    setup_logging(_VERBOSITY)  # handlers made again, on the kept stream


def setup_logging(verbosity: int = 0, *, stream=None) -> None:
    """Configure the root logger once; -v for debug, -q for warnings only."""
    global CONSOLE, _VERBOSITY
    stream = stream or sys.stderr
    CONSOLE = None
    _VERBOSITY = verbosity
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
