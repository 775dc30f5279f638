"""nst_watch.logs in a real process: what reaches stderr (the journal) and what is diverted from it."""

from __future__ import annotations

import subprocess
import sys

from nst_watch.logs import DIVERTED_KEEP

# A process that logs, then writes to its file descriptors as a C++ library (Ray's core) and a print would.
NATIVE = """
import logging, os, sys
from pathlib import Path
from nst_watch.logs import divert_native_output, setup_logging
setup_logging(0)
divert_native_output(Path(sys.argv[1]))
logging.getLogger("nst_watch.test").warning("kept in the log")
os.write(2, b"[2026-01-01 I 1 1] logging.cc:303: native line\\n")
os.write(1, b"\\x1b[33m(raylet)\\x1b[0m A worker died\\n")
print("a print to stdout")
raise SystemExit("nst-watch: error: the last word")
"""


def test_diverted_native_output_leaves_the_log_to_nst_watchs_lines(tmp_path):
    diverted = tmp_path / "ray-driver.log"
    diverted.write_bytes(b"x" * (DIVERTED_KEEP + 1))  # a full file from an earlier start
    result = subprocess.run([sys.executable, "-c", NATIVE, str(diverted)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["<4>WARNING nst_watch.test: kept in the log",
                                          "nst-watch: error: the last word"]
    text = diverted.read_text()
    assert "logging.cc:303: native line" in text and "(raylet)" in text and "a print to stdout" in text
    assert (tmp_path / "ray-driver.log.1").stat().st_size == DIVERTED_KEEP + 1  # rotated, not appended to
