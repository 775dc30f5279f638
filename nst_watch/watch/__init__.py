"""Hot-folder watching: which paths count, when a file has settled, and the watchdog glue.

Never imports torch (nor nst_watch.engine / nst_watch.darkroom): the watcher
must start fast and stay usable in processes that never load the model.

Typical wiring in the daemon::

    tracker = SettleTracker(settle_seconds=2.0)
    flt = PathFilter(inbox, include=["*.jpg"], ignore=DEFAULT_IGNORE, recursive=False)
    watcher = FolderWatcher(inbox, flt, tracker.touch)
    watcher.start()
    for path in scan(inbox, flt):         # catch up on files that arrived while down
        tracker.touch(path)
    while running:                        # every ~0.5 s
        if watcher.check():               # watch re-established: events may be lost
            for path in scan(inbox, flt):
                tracker.touch(path)
        for result in tracker.poll():
            ...  # result.ok -> job table; else log a warning (result.kind)
"""

from .ignore import DEFAULT_IGNORE, PathFilter
from .masks import MaskNames
from .observer import FolderWatcher, describe_os_error, path_too_long, scan
from .settle import EMPTY, NOT_REGULAR, READY, SYMLINK, TOO_LONG, Ready, SettleTracker

__all__ = [
    "DEFAULT_IGNORE",
    "EMPTY",
    "NOT_REGULAR",
    "READY",
    "SYMLINK",
    "TOO_LONG",
    "FolderWatcher",
    "MaskNames",
    "PathFilter",
    "Ready",
    "SettleTracker",
    "describe_os_error",
    "path_too_long",
    "scan",
]
