"""Watch one hot folder with watchdog, plus the scan that backs it up.

Events are hints, not tasks (FIELD_NOTES section 3): inotify drops events
when its queue overflows, network shares give no events for other clients'
writes, and the watch itself can die. So the daemon feeds its settle tracker
from three sources: `FolderWatcher` events, `scan()` at startup, and
`scan()` again periodically and whenever `FolderWatcher.check()` says the
watch was re-established.

Deletions are never acted on. That also makes PollingObserver's bursts of
"deleted" events harmless: when a network share drops for a moment the
snapshot diff looks like a mass delete, and we simply ignore it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from .ignore import PathFilter

logger = logging.getLogger(__name__)

ObserverFactory = Callable[[], BaseObserver]


def scan(
    root: str | os.PathLike[str],
    path_filter: PathFilter,
    on_skip: Callable[[Path, str], None] | None = None,
) -> Iterator[Path]:
    """Yield every non-directory entry under `root` that `path_filter` accepts.

    Uses os.scandir (one syscall per directory, no per-file stat on Linux),
    descends only if the filter is recursive, prunes ignored/excluded folders
    and never follows symlinked directories (a link loop or a link to / would
    otherwise make the scan endless). Symlinked files, FIFOs etc. ARE yielded:
    the settle tracker rejects them with a warning the user can act on.

    Never raises OSError: an unreadable folder is logged and skipped, a
    missing root yields nothing (FolderWatcher.check() reports that once).
    Names are sorted per folder so files are queued in a predictable order.

    `on_skip(path, reason)` hears about what the scan passes over although
    its name matches `include`, so the daemon can show it in `status`
    instead of dropping it silently: "ignored by pattern '._*'", "a
    directory" (one not descended into, e.g. `y.jpg/`) and, for any folder,
    "cannot list: <reason>". With `on_skip` the caller reports unlistable
    folders (once), so the scan logs them at debug level only.
    """
    stack = [Path(os.path.abspath(root))]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            logger.debug("scan: %s is missing", directory)
            continue
        except OSError as exc:
            if on_skip is None:
                logger.warning("scan: cannot list %s: %s", directory, describe_os_error(directory, exc))
            else:
                logger.debug("scan: cannot list %s: %s", directory, exc)
                on_skip(directory, f"cannot list: {describe_os_error(directory, exc)}")
            continue
        subdirs: list[Path] = []
        for entry in entries:
            path = directory / entry.name
            if _is_real_dir(entry):
                if path_filter.accepts_dir(path):
                    subdirs.append(path)
                elif on_skip is not None and path_filter.reports_dir(path):
                    pattern = path_filter.ignored_by(path)
                    on_skip(path, f"ignored by pattern {pattern!r}" if pattern else "a directory")
            elif path_filter.accepts(path):
                yield path
            elif on_skip is not None and (pattern := path_filter.passed_over(path)) is not None:
                on_skip(path, f"ignored by pattern {pattern!r}")
        stack.extend(reversed(subdirs))  # depth-first, alphabetical


def describe_os_error(path: str | os.PathLike[str], exc: OSError) -> str:
    """Why `path` cannot be listed or read, in words, with the fix where there is one.

    ENAMETOOLONG ("File name too long") says which limit the path breaks
    (PATH_MAX for the whole path, NAME_MAX for one name; read with pathconf
    from its nearest folder that can be reached) and how to get under it;
    other errors are the system's own words ("Permission denied").
    """
    if exc.errno == errno.ENAMETOOLONG:
        return path_too_long(path)
    return exc.strerror or str(exc)


def path_too_long(path: str | os.PathLike[str]) -> str:
    """What makes `path` too long for the system (ENAMETOOLONG), and the fix."""
    raw = os.fsencode(path)
    path_max, name_max = _limits(Path(os.fsdecode(raw)))
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > name_max:
        return (f"one of its names is {longest} bytes, more than the {name_max} the file system allows "
                "(rename it shorter)")
    return (f"the path is {len(raw)} bytes, longer than the {path_max - 1} the system allows (shorten the "
            "names of the folders on the way to it, or move it up, nearer to the watched folder)")


def _limits(path: Path) -> tuple[int, int]:
    """(PATH_MAX, NAME_MAX) where `path` lies, from its nearest folder pathconf can reach (Linux: 4096, 255)."""
    for folder in path.parents:
        try:
            return os.pathconf(folder, "PC_PATH_MAX"), os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 4096, 255


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


class _Handler(FileSystemEventHandler):
    """Turns watchdog events into `on_path` calls. Tiny on purpose.

    Runs on watchdog's single dispatcher thread: an exception here kills that
    thread (and with it every later event), and blocking here stalls it. So
    each method only filters a string and calls `on_path` (which should be
    `SettleTracker.touch`), inside a try/except that logs and never raises.
    """

    def __init__(self, path_filter: PathFilter, on_path: Callable[[Path], None], name: str,
                 on_ignored: Callable[[Path, str], None] | None = None) -> None:
        super().__init__()
        self._filter = path_filter
        self._on_path = on_path
        self._on_ignored = on_ignored
        self._name = name

    def _forward(self, event: FileSystemEvent, raw_path: bytes | str) -> None:
        try:
            # Directory events are ignored: a recursive watch reports the files
            # inside a folder moved in as their own created events, and the
            # reconcile scan covers anything that slips through. The exception
            # is a folder named like a photo (`y.jpg/`) that no scan enters:
            # the settle tracker rejects it, so status can say what it is.
            if not raw_path:
                return
            path = os.fsdecode(raw_path)
            if event.is_directory:
                if self._filter.reports_dir(path) and self._filter.accepts(path):
                    self._on_path(Path(path))
            elif self._filter.accepts(path):
                self._on_path(Path(path))
            elif self._on_ignored is not None and (pattern := self._filter.passed_over(path)) is not None:
                self._on_ignored(Path(path), f"ignored by pattern {pattern!r}")
        except Exception:  # noqa: BLE001 - see class docstring
            logger.exception("watch %s: handler failed on %r", self._name, event)

    def on_created(self, event: FileSystemEvent) -> None:
        self._forward(event, event.src_path)

    def on_modified(self, event: FileSystemEvent) -> None:
        self._forward(event, event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        # FileClosedEvent: close after write (inotify only). Never fires for a
        # file renamed into place, hence on_moved below.
        self._forward(event, event.src_path)

    def on_attrib(self, event: FileSystemEvent) -> None:
        # chmod, chown, touch (inotify IN_ATTRIB): a photo that could not be
        # read may be readable now. Content is unchanged, so nothing else fires.
        self._forward(event, event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        # Browsers, rsync and GNOME write "x.jpg.part" and rename it to "x.jpg":
        # the destination is the file we want; the source is an ignored temp name.
        self._forward(event, event.dest_path)

    # on_deleted is deliberately not handled: we never act on deletions.


class FolderWatcher:
    """A watchdog observer for one hot folder that can heal itself.

    `polling`: True forces PollingObserver (needed on NFS/SMB/CIFS, where
    other clients' writes give no inotify events); "auto" uses the native
    observer and falls back to polling, with a WARNING, when creating or
    scheduling it raises OSError (ENOSPC: inotify watch limit, EMFILE/ENFILE:
    instance or descriptor limit); False uses the native observer and lets
    such errors propagate.

    `observer_factory` builds the native observer (default watchdog's
    `Observer`, inotify on Linux); tests pass one that raises to exercise the
    fallback.

    `on_ignored(path, reason)`, if given, hears about files whose name
    matches `include` but an ignore pattern rejects (`._IMG.jpg`), on the
    watchdog thread like `on_path`, so they can be reported without waiting
    for the next scan.

    Call `check()` from the daemon's loop every few seconds: it restarts a
    dead observer and re-establishes the watch after the folder was deleted
    and recreated (or replaced), returning True when the caller should run a
    `scan()` to pick up files that arrived while nobody was watching.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        path_filter: PathFilter,
        on_path: Callable[[Path], None],
        *,
        polling: bool | Literal["auto"] = "auto",
        poll_interval: float = 1.0,
        name: str = "",
        observer_factory: ObserverFactory | None = None,
        on_ignored: Callable[[Path, str], None] | None = None,
    ) -> None:
        if polling not in (True, False, "auto"):
            raise ValueError(f"polling must be True, False or 'auto', got {polling!r}")
        self.root = Path(os.path.abspath(root))
        if path_filter.root != self.root:
            raise ValueError(f"filter root {path_filter.root} differs from watched folder {self.root}")
        self.path_filter = path_filter
        self.polling = polling
        self.poll_interval = poll_interval
        self.name = name or str(self.root)
        self._observer_factory = observer_factory or Observer
        self._handler = _Handler(path_filter, on_path, self.name, on_ignored)
        self._lock = threading.RLock()
        self._observer: BaseObserver | None = None
        self._mode: Literal["inotify", "polling"] | None = None
        self._root_id: tuple[int, int] | None = None
        self._started = False
        self._down = False  # root missing; warned once
        self._restart_failed = False  # a restart raised; warned once

    # -- public API -----------------------------------------------------

    @property
    def mode(self) -> Literal["inotify", "polling"] | None:
        """ "inotify" (the native observer), "polling", or None while not watching."""
        return self._mode

    @property
    def down(self) -> bool:
        """True while the watched folder is missing."""
        return self._down

    def start(self) -> None:
        """Start watching. A missing folder is not an error: it is logged and
        `check()` starts the watch once the folder appears (a share mounted late).
        """
        with self._lock:
            if self._started:
                return
            self._started = True
            try:
                launched = self._launch()
            except BaseException:
                self._started = False
                raise
            if not launched:
                self._mark_down()

    def stop(self) -> None:
        """Stop watching and wait briefly for watchdog's threads to end."""
        with self._lock:
            self._started = False
            self._halt()

    def is_alive(self) -> bool:
        """True if the observer thread and all its emitters are running."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        # An emitter stops itself when the watched folder is deleted while the
        # observer thread carries on, so the observer alone is not enough.
        return all(emitter.is_alive() for emitter in list(observer.emitters))

    def check(self) -> bool:
        """Health check; True when the watch was (re)established and a scan is due.

        Never raises for a missing folder or a failed restart: both are logged
        once and retried on the next call.
        """
        with self._lock:
            if not self._started:
                return False
            root_id = self._stat_root()
            if root_id is None:
                self._mark_down()
                return False
            if not self._down and root_id == self._root_id and self.is_alive():
                return False
            reason = self._restart_reason(root_id)
            self._halt()
            try:
                launched = self._launch()
            except OSError as exc:
                # Not fatal for the daemon: keep calling check() and it retries.
                log = logger.debug if self._restart_failed else logger.warning
                log("watch %s: %s but the watch cannot be restarted: %s", self.name, reason, exc)
                self._restart_failed = True
                return False
            if not launched:
                self._mark_down()
                return False
            self._restart_failed = False
            logger.warning("watch %s: %s; watching again (%s)", self.name, reason, self._mode)
            return True

    # -- internals --------------------------------------------------------

    def _restart_reason(self, root_id: tuple[int, int]) -> str:
        if self._down:
            return "folder is back"
        if root_id != self._root_id:
            return "folder was replaced"
        return "observer died"

    def _stat_root(self) -> tuple[int, int] | None:
        """(dev, inode) of the watched folder, or None if it is missing or not a folder."""
        try:
            st = os.stat(self.root)  # follows a symlinked root on purpose
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        return (st.st_dev, st.st_ino)

    def _mark_down(self) -> None:
        if not self._down:
            logger.warning("watch %s: folder %s is missing; will resume when it is back", self.name, self.root)
        self._down = True
        self._halt()

    def _launch(self) -> bool:
        """Start an observer (native or polling); False if the folder is missing."""
        root_id = self._stat_root()
        if root_id is None:
            return False
        try:
            self._observer, self._mode = self._start_observer()
        except (FileNotFoundError, NotADirectoryError):
            return False  # vanished between stat and schedule
        self._root_id = root_id
        self._down = False
        return True

    def _start_observer(self) -> tuple[BaseObserver, Literal["inotify", "polling"]]:
        if self.polling is True:
            return self._run(self._polling_factory), "polling"
        try:
            return self._run(self._observer_factory), "inotify"
        except (FileNotFoundError, NotADirectoryError):
            raise
        except OSError as exc:
            if self.polling is False:
                raise
            logger.warning(
                "watch %s: native watch failed (%s: %s); falling back to polling every %.1f s.%s",
                self.name,
                errno.errorcode.get(exc.errno or 0, "OSError"),
                exc.strerror or exc,
                self.poll_interval,
                _limit_hint(exc),
            )
            return self._run(self._polling_factory), "polling"

    def _polling_factory(self) -> BaseObserver:
        return PollingObserver(timeout=self.poll_interval)

    def _run(self, factory: ObserverFactory) -> BaseObserver:
        """Create, schedule and start an observer; clean up if any step fails.

        In watchdog 7 the inotify instance is made in the constructor (EMFILE)
        and the watches are added in start() (ENOSPC), so all three steps are
        inside the try.
        """
        observer = None
        try:
            observer = factory()
            observer.name = f"watch:{self.name}"
            observer.schedule(self._handler, str(self.root), recursive=self.path_filter.recursive)
            observer.start()
        except BaseException:
            if observer is not None:
                _stop_quietly(observer)
            raise
        return observer

    def _halt(self) -> None:
        observer, self._observer, self._mode = self._observer, None, None
        if observer is not None:
            _stop_quietly(observer)


def _stop_quietly(observer: BaseObserver) -> None:
    """Stop an observer without raising; never wait long (a hung NFS stat can stall it)."""
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=2.0)
    except Exception:  # noqa: BLE001 - shutting down a broken observer must not crash the daemon
        logger.debug("watch: error stopping observer", exc_info=True)


def _limit_hint(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return " Raise fs.inotify.max_user_watches (sysctl) to use inotify."
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return " Raise fs.inotify.max_user_instances (sysctl) or the open-file limit to use inotify."
    return ""
