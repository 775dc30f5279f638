"""The durable job ledger: one SQLite file shared by the watcher, the workers and `status`.

A *job* is one (photo, preset) pair, with the photo's mask if it has one.
Its identity, and so the idempotency key, is (content sha256, preset name,
preset hash, mask sha256): dropping the same photo twice, or restarting the
watcher and rescanning a folder, never makes a second job; a mask that
arrives later, or changes, does (nst_watch.service.identity).

States::

    pending --claim--> leased --complete--> done
       ^                 |  \\--fail(permanent)--> failed
       |                 |---fail(transient) / lease expired---> pending (after backoff)
       |                 |                                   or  dead (attempts exhausted)
       |                 \\--release (graceful shutdown)--> pending (attempt not counted)
       \\------------------- retry (failed / dead) ---------------------/

Several processes use the file at once (one watcher enqueues, one worker per GPU
claims, `nst-watch status` reads), so:

* WAL mode: readers never wait for the writer and the writer never waits for
  readers; `synchronous=FULL` so a committed claim or completion survives a
  power cut, not only a process crash.
* Every read-modify-write runs in a short `BEGIN IMMEDIATE` transaction: the
  write lock is taken before reading, so two workers can never both see a job
  as pending and both lease it (a deferred transaction would read first and
  fail with SQLITE_BUSY when upgrading to a write).
* `busy_timeout` lets a writer wait for another writer's (short) transaction
  instead of failing with "database is locked".
* One connection per thread, opened lazily (and again after a fork): sqlite3
  connections must not be shared between threads or inherited across fork.

Delivery is at-least-once: a worker that crashes mid-job loses its lease, the
job is claimed again later, so producing an output must be harmless to repeat
(the photo layer writes a temp file and links it into place).

A second table, `moves`, holds the originals on their way to processed/ or
failed/: the move and its record are one recoverable step
(nst_watch.service.publish writes the row before the first byte moves and
removes it once the inbox copy is gone).

Only the standard library; no torch import.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import NstWatchError

PENDING = "pending"
LEASED = "leased"
DONE = "done"
FAILED = "failed"  # permanent error: retrying cannot help (corrupt, unsupported, too large)
DEAD = "dead"  # transient errors or lost leases used up max_attempts
STATES = (PENDING, LEASED, DONE, FAILED, DEAD)
# How the error of a job put aside for another begins (Ledger.supersede, Ledger.rekey): see Job.put_aside.
PUT_ASIDE = ("superseded by job", "put aside:")
# What `status`, its JSON and the web view call a job put aside: in the ledger it is done (its photo may move
# on), but it made nothing, so it is counted apart from the jobs that are done (Ledger.counts(superseded=True)).
SUPERSEDED = "superseded"
_PUT_ASIDE_SQL = ("(state = 'done' AND output_path IS NULL AND ("
                  + " OR ".join(f"substr(error, 1, {len(p)}) = '{p}'" for p in PUT_ASIDE) + "))")


class LedgerError(NstWatchError):
    """The job ledger cannot be opened or used as configured."""


@dataclass
class Job:
    """One row of the `jobs` table; every column is an attribute.

    Times are unix seconds (floats) from the ledger's clock.
    """

    id: int
    sha256: str
    preset: str
    preset_hash: str
    source_path: str  # where the photo was when it was enqueued
    watch: str | None  # watch name, or None for `submit`
    output_dir: str | None
    bucket: str | None  # size bucket such as "768x512": claim batches only within one bucket
    state: str
    attempts: int  # claims so far (counted at claim time; see Ledger.claim)
    max_attempts: int
    lease_owner: str | None
    lease_expires: float | None
    available_at: float  # not claimable before this (backoff)
    error: str | None  # last error text
    output_path: str | None
    created_at: float
    updated_at: float
    started_at: float | None  # start of the latest attempt
    finished_at: float | None  # when it became done / failed / dead
    priority: int
    lost_leases: int  # how many attempts ended with the lease expiring (worker crashed or hung)
    mask_path: str | None = None  # the photo's mask (Gatys et al. 2017 spatial control), where it is now
    mask_sha256: str | None = None  # its bytes' hash, part of the job's identity; None: no mask
    size: str | None = None  # the long edge it renders at when not its preset's ("512", "full"); None: the preset's
    proof: int | None = None  # a proof: its long edge in px (its final is rendered on request); None: not a proof
    proof_id: int | None = None  # a final rendered from that proof job (it starts from the proof's image)

    def to_dict(self) -> dict:
        """A JSON-ready dict of every column."""
        return dataclasses.asdict(self)

    @property
    def put_aside(self) -> bool:
        """Done without running: superseded by another job of its photo and preset (`Ledger.supersede`, `rekey`)."""
        return self.state == DONE and self.output_path is None and (self.error or "").startswith(PUT_ASIDE)

    @property
    def role(self) -> str:
        """"proof", "final" (of a proof: proof_id) or "" for a job rendered at once."""
        return "proof" if self.proof is not None else "final" if self.proof_id is not None else ""

    @property
    def shown_state(self) -> str:
        """The state as `status` and the web view show it: SUPERSEDED for a job put aside, else its state."""
        return SUPERSEDED if self.put_aside else self.state


@dataclass
class Event:
    """One state transition of a job, for `status` to show the attempt history."""

    job_id: int
    at: float
    state: str
    attempt: int
    message: str | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Move:
    """One row of the `moves` table: an original on its way to another folder.

    `dest_path` is the name being given (the last one planned) until
    `placed`; then the photo is whole there and its jobs point at it, and
    only the copy at `source_path` is left to remove. `owner` is the process
    (and thread) moving it; None while the move waits for another try, with
    `error` saying why the last one failed.
    """

    id: int
    sha256: str
    watch: str
    source_path: str
    dest_path: str
    placed: bool
    owner: str | None
    error: str | None
    created_at: float
    updated_at: float


@dataclass
class AddResult:
    """What `Ledger.add` did: `created` is False when the job already existed (in any state)."""

    job: Job
    created: bool


_JOB_COLUMNS = ", ".join(field.name for field in dataclasses.fields(Job))
_MOVE_COLUMNS = ", ".join(field.name for field in dataclasses.fields(Move))
_PATH_COLUMNS = ("source_path", "output_dir", "output_path", "mask_path")
NO_MASK = ""  # mask_sha256 as stored for a job without a mask: the UNIQUE key needs a value, not NULL


def _path_in(path: str | os.PathLike | None) -> str | bytes | None:
    """A path as stored: text, or its raw bytes when the name is not valid UTF-8.

    POSIX names are bytes; os.fsdecode turns undecodable ones into lone
    surrogates, which SQLite's UTF-8 text cannot hold. Storing those as a
    BLOB keeps every path exact (the column's TEXT affinity leaves blobs alone).
    """
    if path is None:
        return None
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def _path_out(value: str | bytes | None) -> str | None:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _text_in(message: str | None) -> str | None:
    """Free text (errors, event messages) as valid UTF-8: undecodable bytes of file names escaped."""
    if message is None:
        return None
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


# --- schema ---------------------------------------------------------------------------
#
# MIGRATIONS[i] takes the schema from version i to i + 1 (PRAGMA user_version).
# To change the schema, append a function; never edit one that has shipped.


def _schema_v1(conn: sqlite3.Connection) -> None:
    """Jobs, their event history, and a small key/value table for health checks."""
    conn.execute(
        f"""
        CREATE TABLE jobs (
            id            INTEGER PRIMARY KEY,
            sha256        TEXT NOT NULL,
            preset        TEXT NOT NULL,
            preset_hash   TEXT NOT NULL,
            source_path   TEXT NOT NULL,
            watch         TEXT,
            output_dir    TEXT,
            bucket        TEXT,
            state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN {STATES!r}),
            attempts      INTEGER NOT NULL DEFAULT 0,
            max_attempts  INTEGER NOT NULL,
            lease_owner   TEXT,
            lease_expires REAL,
            available_at  REAL NOT NULL,
            error         TEXT,
            output_path   TEXT,
            created_at    REAL NOT NULL,
            updated_at    REAL NOT NULL,
            started_at    REAL,
            finished_at   REAL,
            priority      INTEGER NOT NULL DEFAULT 0,
            lost_leases   INTEGER NOT NULL DEFAULT 0,
            UNIQUE (sha256, preset, preset_hash)
        )"""
    )
    # claim: the next pending job in priority order; reap: expired leases.
    conn.execute("CREATE INDEX jobs_queue ON jobs (state, priority DESC, id)")
    conn.execute("CREATE INDEX jobs_lease ON jobs (state, lease_expires)")
    conn.execute("CREATE INDEX jobs_source ON jobs (source_path)")
    conn.execute("CREATE INDEX jobs_updated ON jobs (updated_at)")
    conn.execute(
        """
        CREATE TABLE events (
            id      INTEGER PRIMARY KEY,
            job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            at      REAL NOT NULL,
            state   TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            message TEXT
        )"""
    )
    conn.execute("CREATE INDEX events_job ON events (job_id, id)")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")


def _schema_v2(conn: sqlite3.Connection) -> None:
    """Originals on the move, so a crash between moving one and recording it is recoverable."""
    conn.execute(
        """
        CREATE TABLE moves (
            id          INTEGER PRIMARY KEY,
            sha256      TEXT NOT NULL,
            watch       TEXT NOT NULL,
            source_path TEXT NOT NULL UNIQUE,
            dest_path   TEXT NOT NULL,
            placed      INTEGER NOT NULL DEFAULT 0,
            owner       TEXT,
            error       TEXT,
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL
        )"""
    )


def _schema_v3(conn: sqlite3.Connection) -> None:
    """Masks: each job's mask path and its bytes' SHA-256, which joins the job's identity.

    The identity is the table's UNIQUE key, which SQLite cannot alter, so
    the table is rebuilt in place (SQLite's documented procedure, "Making
    Other Kinds Of Table Schema Changes"): a new table with the key
    (sha256, preset, preset_hash, mask_sha256), every row copied with its
    id (the events keep pointing at their jobs), the old table dropped, the
    new one renamed, the indexes made again. Ledger._migrate runs it with
    foreign keys off (dropping `jobs` would otherwise delete every event)
    and checks them before it commits. A job from before has no mask
    (mask_sha256 NO_MASK), so its identity is what it was.
    """
    conn.execute(
        f"""
        CREATE TABLE jobs_v3 (
            id            INTEGER PRIMARY KEY,
            sha256        TEXT NOT NULL,
            preset        TEXT NOT NULL,
            preset_hash   TEXT NOT NULL,
            source_path   TEXT NOT NULL,
            watch         TEXT,
            output_dir    TEXT,
            bucket        TEXT,
            state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN {STATES!r}),
            attempts      INTEGER NOT NULL DEFAULT 0,
            max_attempts  INTEGER NOT NULL,
            lease_owner   TEXT,
            lease_expires REAL,
            available_at  REAL NOT NULL,
            error         TEXT,
            output_path   TEXT,
            created_at    REAL NOT NULL,
            updated_at    REAL NOT NULL,
            started_at    REAL,
            finished_at   REAL,
            priority      INTEGER NOT NULL DEFAULT 0,
            lost_leases   INTEGER NOT NULL DEFAULT 0,
            mask_path     TEXT,
            mask_sha256   TEXT NOT NULL DEFAULT '',
            UNIQUE (sha256, preset, preset_hash, mask_sha256)
        )"""
    )
    columns = ", ".join(name for name in _V2_JOB_COLUMNS)
    conn.execute(f"INSERT INTO jobs_v3 ({columns}) SELECT {columns} FROM jobs")
    conn.execute("DROP TABLE jobs")  # its indexes go with it
    conn.execute("ALTER TABLE jobs_v3 RENAME TO jobs")
    conn.execute("CREATE INDEX jobs_queue ON jobs (state, priority DESC, id)")
    conn.execute("CREATE INDEX jobs_lease ON jobs (state, lease_expires)")
    conn.execute("CREATE INDEX jobs_source ON jobs (source_path)")
    conn.execute("CREATE INDEX jobs_updated ON jobs (updated_at)")
    conn.execute("CREATE INDEX jobs_mask ON jobs (mask_sha256)")


# The columns of `jobs` up to schema v2, as _schema_v3 copies them (fixed: never follows the Job class).
_V2_JOB_COLUMNS = ("id", "sha256", "preset", "preset_hash", "source_path", "watch", "output_dir", "bucket", "state",
                   "attempts", "max_attempts", "lease_owner", "lease_expires", "available_at", "error",
                   "output_path", "created_at", "updated_at", "started_at", "finished_at", "priority",
                   "lost_leases")

def _schema_v4(conn: sqlite3.Connection) -> None:
    """Proofs and finals: a job's size override, its proof size when it is a proof, and the proof a final is of.

    Plain ADD COLUMNs: a proof's identity differs from its final's by the
    preset hash (the size is part of it), so the UNIQUE key stays.
    """
    conn.execute("ALTER TABLE jobs ADD COLUMN size TEXT")
    conn.execute("ALTER TABLE jobs ADD COLUMN proof INTEGER")
    conn.execute("ALTER TABLE jobs ADD COLUMN proof_id INTEGER REFERENCES jobs (id)")
    conn.execute("CREATE INDEX jobs_proof ON jobs (proof_id)")
    conn.execute("CREATE INDEX jobs_proofs ON jobs (watch, proof)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_schema_v1, _schema_v2, _schema_v3, _schema_v4]
SCHEMA_VERSION = len(MIGRATIONS)


class Ledger:
    """The job ledger in one SQLite file (normally `state_dir/jobs.db`).

    Safe to use from several threads (each gets its own connection) and from
    several processes (each opens its own Ledger on the same path).
    `clock` is injectable so tests can move time without sleeping.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        lease_seconds: float = 300,
        max_attempts: int = 3,
        backoff_base: float = 10.0,
        backoff_max: float = 600.0,
        busy_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ):
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        if backoff_base < 0 or backoff_max < backoff_base:
            raise ValueError(f"need 0 <= backoff_base <= backoff_max, not {backoff_base}, {backoff_max}")
        self.path = Path(path)
        self.lease_seconds = float(lease_seconds)
        self.max_attempts = int(max_attempts)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.busy_timeout = float(busy_timeout)
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()  # open now so a bad path or schema fails at startup

    # --- connections and transactions -------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again in a forked child)."""
        if self._closed:
            raise LedgerError(f"{self.path}: the job ledger is closed")
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        # A connection inherited across fork must not be used (or closed) in the child.
        conn = self._open()
        self._local.held = (os.getpid(), conn)
        with self._lock:
            self._connections.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
            # check_same_thread=False only so close() may close every thread's connection;
            # each connection is otherwise used by the thread that opened it.
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = self._wal(conn)
            if mode.lower() != "wal":
                conn.close()
                raise LedgerError(
                    f"{self.path}: SQLite could not switch to WAL mode (got {mode!r}); "
                    "put the state directory on a local filesystem, not a network share"
                )
            # Per connection. Under WAL, NORMAL (the usual advice) can lose the last commits on power loss.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            return conn
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot open the job ledger: {exc}") from exc

    def _wal(self, conn: sqlite3.Connection) -> str:
        """Switch a new ledger file to WAL; the journal mode it ends in.

        journal_mode is stored in the file, so only the first opener
        switches (it needs a lock). SQLite does not call the busy handler
        for that switch: processes that open a fresh ledger at the same
        moment (a watcher and its workers started together) get "database
        is locked" at once. They retry here, within busy_timeout.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if mode.lower() != "wal":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                return mode
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short BEGIN IMMEDIATE transaction: committed on success, rolled back on any error."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout for another writer
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:  # locked past busy_timeout, disk full, read-only, I/O error
            raise LedgerError(
                f"{self.path}: cannot write to the job ledger: {exc} (is the disk full, the file read-only, "
                f"or another process holding a write lock for over {self.busy_timeout:g} s?)"
            ) from exc

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION; the lock makes concurrent openers take turns.

        Foreign keys are off while the steps run (they can only be switched
        outside a transaction), so a step that rebuilds `jobs` (v3) keeps
        every event; before the commit they are checked, and a ledger they
        do not hold together in is left as it was (LedgerError).
        """
        conn = self._conn()
        conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self._write() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise LedgerError(
                        f"{self.path}: the job ledger has schema version {version}, newer than this "
                        f"nst-watch understands ({SCHEMA_VERSION}); upgrade nst-watch"
                    )
                for step in MIGRATIONS[version:]:
                    step(conn)
                if version != SCHEMA_VERSION:
                    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise LedgerError(
                            f"{self.path}: upgrading the job ledger from schema {version} to {SCHEMA_VERSION} "
                            f"would leave {len(broken)} row(s) pointing at no job; the file is left as it was. "
                            "Keep a copy of it and report this")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # transactional, like the DDL
        finally:
            conn.execute("PRAGMA foreign_keys = ON")

    def close(self) -> None:
        """Close every connection this Ledger opened (in any thread)."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- helpers ----------------------------------------------------------------------

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the given failed attempt: base * 2**(attempts-1), capped."""
        return min(self.backoff_max, self.backoff_base * 2 ** max(attempts - 1, 0))

    @staticmethod
    def _select(conn: sqlite3.Connection, where: str, params: Iterable = (), tail: str = "") -> list[Job]:
        rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where} {tail}", tuple(params))
        jobs = []
        for row in rows:
            data = dict(row)
            for column in _PATH_COLUMNS:
                data[column] = _path_out(data[column])
            data["mask_sha256"] = data["mask_sha256"] or None
            jobs.append(Job(**data))
        return jobs

    @staticmethod
    def _event(conn: sqlite3.Connection, job: Job | int, at: float, state: str, attempt: int, message=None):
        job_id = job if isinstance(job, int) else job.id
        conn.execute(
            "INSERT INTO events (job_id, at, state, attempt, message) VALUES (?, ?, ?, ?, ?)",
            (job_id, at, state, attempt, _text_in(message)),
        )

    @staticmethod
    def _marks(values: Collection) -> str:
        return ", ".join("?" * len(values))

    # --- the queue --------------------------------------------------------------------

    def add(
        self,
        *,
        sha256: str,
        preset: str,
        preset_hash: str,
        source_path: str | os.PathLike,
        watch: str | None = None,
        output_dir: str | os.PathLike | None = None,
        bucket: str | None = None,
        priority: int = 0,
        error: str | None = None,
        mask_path: str | os.PathLike | None = None,
        mask_sha256: str | None = None,
        wait: tuple[float, str] | None = None,
        size: int | str | None = None,
        proof: int | None = None,
        proof_id: int | None = None,
    ) -> AddResult:
        """Enqueue one (photo, preset) job, or return the existing one unchanged.

        The same (sha256, preset, preset_hash, mask_sha256) again gives
        created=False and the existing job whatever its state (done, failed
        and dead included): a changed preset hash, or another mask, is what
        makes a photo run again, not a rescan. `mask_path` is where the mask
        is (ValueError when only one of the two mask arguments is given).

        With `error` (a file the intake already knows no worker can read, such
        as one that is no image) the new job is recorded failed at once with
        that error, its one attempt spent, so it never waits in the queue;
        `retry` queues it like any failed job. With `wait` = (seconds,
        reason) a new job is pending but not claimable for that long, the
        reason as its error (status lists it as waiting: a photo waiting for
        its mask).

        `size` renders the job at that long edge (px or "full") instead of
        its preset's (`preset_hash` must be the sized preset's); `proof`
        (px) marks a proof, `proof_id` a final rendered from that proof.
        """
        for name, value in (("sha256", sha256), ("preset", preset), ("preset_hash", preset_hash)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, not {value!r}")
        if (mask_path is None) != (mask_sha256 is None) or mask_sha256 == NO_MASK:
            raise ValueError(f"give a mask's path and its sha256 together, not {mask_path!r} and {mask_sha256!r}")
        key = (sha256, preset, preset_hash, mask_sha256 or NO_MASK)
        state, attempts = (PENDING, 0) if error is None else (FAILED, 1)
        delay, note = (0.0, error) if wait is None or error is not None else (float(wait[0]), wait[1])
        with self._write() as conn:
            now = self._clock()
            cursor = conn.execute(
                """INSERT INTO jobs (sha256, preset, preset_hash, mask_sha256, source_path, mask_path, watch,
                                     output_dir, bucket, state, attempts, error, finished_at, max_attempts,
                                     available_at, created_at, updated_at, priority, size, proof, proof_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (sha256, preset, preset_hash, mask_sha256) DO NOTHING""",
                (*key, _path_in(source_path), _path_in(mask_path), watch, _path_in(output_dir), bucket, state,
                 attempts, _text_in(note), None if error is None else now, self.max_attempts, now + delay, now, now,
                 int(priority), None if size is None else str(size), proof, proof_id),
            )
            created = cursor.rowcount == 1
            (job,) = self._select(conn, "sha256 = ? AND preset = ? AND preset_hash = ? AND mask_sha256 = ?", key)
            if created:
                mask = f" with mask {job.mask_path}" if mask_path is not None else ""
                self._event(conn, job, now, PENDING, 0, f"added from {job.source_path}{mask}")
                if error is not None:
                    self._event(conn, job, now, FAILED, 1, f"permanent error: {error}")
                elif delay:
                    self._event(conn, job, now, PENDING, 0, note)
        return AddResult(job, created)

    def note(self, job_id: int, message: str) -> None:
        """Add `message` to a job's history (status, the web view) without changing its state."""
        with self._write() as conn:
            row = conn.execute("SELECT state, attempts FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is not None:
                self._event(conn, int(job_id), self._clock(), row[0], row[1], message)

    def postpone(self, job_ids: Iterable[int], delay: float, reason: str) -> int:
        """Pending jobs not claimable for `delay` seconds from now, `reason` as their error; returns how many."""
        ids = list(job_ids)
        if not ids:
            return 0
        with self._write() as conn:
            now = self._clock()
            where = f"state = 'pending' AND id IN ({self._marks(ids)})"
            jobs = self._select(conn, where, ids)
            conn.execute(f"UPDATE jobs SET available_at = ?, error = ?, updated_at = ? WHERE {where}",
                         (now + delay, _text_in(reason), now, *ids))
            for job in jobs:
                self._event(conn, job, now, PENDING, job.attempts, reason)
        return len(jobs)

    def revive(self, job_id: int) -> bool:
        """A job put aside (Job.put_aside) pending again, with a fresh set of attempts: its mask came back."""
        with self._write() as conn:
            now = self._clock()
            rows = self._select(conn, "id = ? AND state = 'done' AND output_path IS NULL", (int(job_id),))
            if not rows or not rows[0].put_aside:
                return False
            conn.execute("""UPDATE jobs SET state = 'pending', attempts = 0, lost_leases = 0, available_at = ?,
                                            error = NULL, finished_at = NULL, updated_at = ? WHERE id = ?""",
                         (now, now, int(job_id)))
            self._event(conn, rows[0], now, PENDING, 0, f"queued again (was {rows[0].error})")
        return True

    def supersede(self, job_ids: Iterable[int], note: str, *, owner: str | None = None) -> int:
        """Put jobs aside for another of the same photo and preset (a newer mask): done, no output, `note` as why.

        `note` begins with one of PUT_ASIDE ("superseded by job N", "put
        aside:"), so that `Job.put_aside` knows the job again.

        Without `owner`, jobs that are pending, failed or dead (a running one
        finishes as it began); with it, the jobs `owner` holds leased. Returns
        how many. Their photo's fate is then the other job's.
        """
        ids = list(job_ids)
        if not ids:
            return 0
        where = (f"id IN ({self._marks(ids)}) AND " +
                 ("state IN ('pending', 'failed', 'dead')" if owner is None else "state = 'leased' AND lease_owner = ?"))
        params = (*ids,) if owner is None else (*ids, owner)
        with self._write() as conn:
            now = self._clock()
            jobs = self._select(conn, where, params)
            conn.execute(
                f"""UPDATE jobs SET state = 'done', error = ?, output_path = NULL, lease_owner = NULL,
                                    lease_expires = NULL, finished_at = ?, updated_at = ?
                    WHERE {where}""",
                (_text_in(note), now, now, *params),
            )
            for job in jobs:
                self._event(conn, job, now, DONE, job.attempts, note)
        return len(jobs)

    def claim(self, owner: str, *, limit: int = 1, presets: Collection[str] | None = None) -> list[Job]:
        """Lease up to `limit` pending jobs to `owner`, all of one preset, preset hash and bucket.

        The first job is the best available one (priority, then age); the rest
        are companions a worker can stylise in one batch. Expired leases are
        reaped first, in the same transaction.

        attempts is incremented here, not on failure: a photo that kills its
        worker outright (OOM killer, segfault) never reaches fail(), and
        counting at claim is what lets it end dead instead of looping forever.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if presets is not None:
            presets = [presets] if isinstance(presets, str) else list(presets)
            if not presets:
                return []
        with self._write() as conn:
            now = self._clock()
            self._reap(conn, now)
            where = "state = 'pending' AND available_at <= ?"
            params: list = [now]
            if presets is not None:
                where += f" AND preset IN ({self._marks(presets)})"
                params += presets
            first = self._select(conn, where, params, "ORDER BY priority DESC, id LIMIT 1")
            if not first:
                return []
            head = first[0]
            ids = [head.id]
            if limit > 1:
                rows = conn.execute(
                    """SELECT id FROM jobs
                       WHERE state = 'pending' AND available_at <= ? AND id != ?
                         AND preset = ? AND preset_hash = ? AND bucket IS ?
                       ORDER BY priority DESC, id LIMIT ?""",
                    (now, head.id, head.preset, head.preset_hash, head.bucket, limit - 1),
                )
                ids += [row[0] for row in rows]
            marks = self._marks(ids)
            conn.execute(
                f"""UPDATE jobs SET state = 'leased', lease_owner = ?, lease_expires = ?,
                                    attempts = attempts + 1, started_at = ?, updated_at = ?
                    WHERE id IN ({marks})""",
                (owner, now + self.lease_seconds, now, now, *ids),
            )
            jobs = self._select(conn, f"id IN ({marks})", ids, "ORDER BY priority DESC, id")
            for job in jobs:
                self._event(conn, job, now, LEASED, job.attempts, f"claimed by {owner}")
        return jobs

    def heartbeat(self, owner: str, job_ids: Iterable[int]) -> set[int]:
        """Extend the leases `owner` still holds; the ids missing from the result were lost.

        A lease that has expired but not yet been reaped is still the owner's
        (nobody else has the job), so it is extended too.
        """
        ids = list(job_ids)
        if not ids:
            return set()
        with self._write() as conn:
            now = self._clock()
            where = f"state = 'leased' AND lease_owner = ? AND id IN ({self._marks(ids)})"
            held = {row[0] for row in conn.execute(f"SELECT id FROM jobs WHERE {where}", (owner, *ids))}
            # updated_at is left alone: a heartbeat is not a change anyone wants in `recent`.
            conn.execute(f"UPDATE jobs SET lease_expires = ? WHERE {where}", (now + self.lease_seconds, owner, *ids))
        return held

    def complete(self, owner: str, job_id: int, output_path: str | os.PathLike | None) -> bool:
        """Mark a job done with its output path. False if `owner` no longer holds the lease.

        Call only after the output is durably in place (written, fsynced, linked).
        """
        with self._write() as conn:
            now = self._clock()
            cursor = conn.execute(
                """UPDATE jobs SET state = 'done', output_path = ?, error = NULL, lease_owner = NULL,
                                   lease_expires = NULL, finished_at = ?, updated_at = ?
                   WHERE id = ? AND state = 'leased' AND lease_owner = ?""",
                (_path_in(output_path), now, now, job_id, owner),
            )
            if cursor.rowcount != 1:
                return False
            attempts = conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            self._event(conn, job_id, now, DONE, attempts, f"output {output_path}" if output_path else None)
        return True

    def rekey(self, owner: str, job_id: int, preset_hash: str) -> int | None:
        """Move a leased job to a new preset hash (the preset was edited while it waited).

        Returns None on success. If a job with the new key already exists, the
        leased one is superseded: marked done without an output, pointing at
        the other, whose id is returned. Either way the photo is processed once
        with the current preset.
        """
        with self._write() as conn:
            now = self._clock()
            row = conn.execute("SELECT sha256, preset, mask_sha256 FROM jobs WHERE id = ?", (job_id,)).fetchone()
            other = conn.execute(
                "SELECT id FROM jobs WHERE sha256 = ? AND preset = ? AND mask_sha256 = ? AND preset_hash = ?",
                (*row, preset_hash)
            ).fetchone()
            if other is None:
                conn.execute("UPDATE jobs SET preset_hash = ?, updated_at = ? WHERE id = ? AND lease_owner = ?",
                             (preset_hash, now, job_id, owner))
                return None
            note = f"superseded by job {other[0]} (the preset changed while this job waited)"
            conn.execute(
                """UPDATE jobs SET state = 'done', error = ?, output_path = NULL, lease_owner = NULL,
                                   lease_expires = NULL, finished_at = ?, updated_at = ?
                   WHERE id = ? AND lease_owner = ?""",
                (note, now, now, job_id, owner),
            )
            self._event(conn, job_id, now, DONE, 0, note)
            return int(other[0])

    def fail(self, owner: str, job_id: int, error: str, *, permanent: bool) -> str | None:
        """Record a failed attempt; return the new state, or None if the lease was lost.

        permanent (corrupt, unsupported, too large): failed at once.
        transient (disk full, out of memory, file still growing): pending again
        after an exponential backoff, or dead once max_attempts are used up.
        """
        with self._write() as conn:
            now = self._clock()
            rows = self._select(conn, "id = ? AND state = 'leased' AND lease_owner = ?", (job_id, owner))
            if not rows:
                return None
            job = rows[0]
            if permanent:
                state, available_at, finished_at = FAILED, job.available_at, now
            elif job.attempts < job.max_attempts:
                state, available_at, finished_at = PENDING, now + self.backoff(job.attempts), None
            else:
                state, available_at, finished_at = DEAD, job.available_at, now
            conn.execute(
                """UPDATE jobs SET state = ?, error = ?, available_at = ?, finished_at = ?, updated_at = ?,
                                   lease_owner = NULL, lease_expires = NULL
                   WHERE id = ?""",
                (state, _text_in(error), available_at, finished_at, now, job_id),
            )
            kind = "permanent" if permanent else "transient"
            self._event(conn, job, now, state, job.attempts, f"{kind} error: {error}")
        return state

    def release(self, owner: str, job_ids: Iterable[int], *, reason: str | None = None, delay: float = 0.0) -> int:
        """Give leases back, the attempt not counted: pending again after `delay` seconds.

        For a graceful shutdown (no reason), and for jobs that cannot run for a
        reason that is not theirs (`reason`, e.g. their preset's style image is
        broken): they wait, with the reason as their error, until it is fixed.
        """
        ids = list(job_ids)
        if not ids:
            return 0
        with self._write() as conn:
            now = self._clock()
            where = f"state = 'leased' AND lease_owner = ? AND id IN ({self._marks(ids)})"
            jobs = self._select(conn, where, (owner, *ids))
            conn.execute(
                f"""UPDATE jobs SET state = 'pending', attempts = MAX(attempts - 1, 0), available_at = ?,
                                    error = COALESCE(?, error), lease_owner = NULL, lease_expires = NULL,
                                    updated_at = ?
                    WHERE {where}""",
                (now + delay, _text_in(reason), now, owner, *ids),
            )
            for job in jobs:
                self._event(conn, job, now, PENDING, job.attempts - 1,
                            f"released by {owner}: {reason}" if reason else f"released by {owner} (shutdown)")
        return len(jobs)

    def reap(self) -> int:
        """Return expired leases to pending (with backoff) or dead; returns how many."""
        with self._write() as conn:
            return self._reap(conn, self._clock())

    def reclaim(self, owners: Iterable[str]) -> int:
        """Take back at once the leases of owners known to be dead (a crashed local worker).

        No backoff: the crash is already known, and waiting for lease expiry
        would only delay the restart. Attempts still count, so a photo that
        kills its worker every time ends dead after max_attempts.
        """
        owners = list(owners)
        if not owners:
            return 0
        with self._write() as conn:
            return self._reap(conn, self._clock(), f"state = 'leased' AND lease_owner IN ({self._marks(owners)})",
                              owners, backoff=False)

    def leased_owners(self) -> set[str]:
        """Owners currently holding leases."""
        rows = self._conn().execute("SELECT DISTINCT lease_owner FROM jobs WHERE state = 'leased'").fetchall()
        return {row[0] for row in rows if row[0]}

    def _reap(self, conn: sqlite3.Connection, now: float, where: str = "state = 'leased' AND lease_expires < ?",
              params: Iterable = (), *, backoff: bool = True) -> int:
        """reap() inside the caller's transaction (claim reaps before it picks)."""
        expired = self._select(conn, where, tuple(params) or (now,))
        for job in expired:
            lost = job.lost_leases + 1
            times = f"{lost} time{'s' if lost != 1 else ''}"
            if lost != job.attempts:
                times += f" in {job.attempts} attempts"
            if job.attempts >= job.max_attempts:
                state, available_at, finished_at = DEAD, job.available_at, now
                error = f"worker lost its lease (crashed or killed) {times}; last holder {job.lease_owner}"
            else:
                delay = self.backoff(job.attempts) if backoff else 0.0
                state, available_at, finished_at = PENDING, now + delay, None
                error = f"worker {job.lease_owner} lost its lease (crashed or killed) on attempt {job.attempts}"
            conn.execute(
                """UPDATE jobs SET state = ?, error = ?, available_at = ?, finished_at = ?, updated_at = ?,
                                   lost_leases = ?, lease_owner = NULL, lease_expires = NULL
                   WHERE id = ?""",
                (state, _text_in(error), available_at, finished_at, now, lost, job.id),
            )
            self._event(conn, job, now, state, job.attempts, error)
        return len(expired)

    def retry(self, job_ids: Iterable[int] | None = None, *, failed: bool = False, dead: bool = False) -> int:
        """Put failed/dead jobs back to pending with a fresh set of attempts; returns how many.

        Selects the given ids (if they are failed or dead), plus every failed
        job if `failed`, plus every dead job if `dead`. Jobs in other states are
        left alone and not counted. The old error stays in the event history.
        """
        ids = list(job_ids or ())
        if not ids and not failed and not dead:
            raise ValueError("retry needs job ids, failed=True or dead=True")
        clauses = []
        params: list = []
        if ids:
            clauses.append(f"(state IN ('failed', 'dead') AND id IN ({self._marks(ids)}))")
            params += ids
        if failed:
            clauses.append("state = 'failed'")
        if dead:
            clauses.append("state = 'dead'")
        where = " OR ".join(clauses)
        with self._write() as conn:
            now = self._clock()
            jobs = self._select(conn, where, params)
            conn.execute(
                f"""UPDATE jobs SET state = 'pending', attempts = 0, lost_leases = 0, available_at = ?,
                                    error = NULL, output_path = NULL, finished_at = NULL, updated_at = ?
                    WHERE {where}""",
                (now, now, *params),
            )
            for job in jobs:
                self._event(conn, job, now, PENDING, 0, f"retried (was {job.state}: {job.error})")
        return len(jobs)

    def plan_output(self, owner: str, job_id: int, output_path: str | os.PathLike | None) -> bool:
        """Record the name a leased job is about to publish, before it is linked.

        After a crash between publishing and complete(), the next attempt finds
        this name and recognises the file as its own instead of writing a second.
        """
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET output_path = ?, updated_at = ? WHERE id = ? AND state = 'leased' AND lease_owner = ?",
                (_path_in(output_path), self._clock(), int(job_id), owner),
            )
            return cursor.rowcount == 1

    def relocate(self, job_id: int, source_path: str | os.PathLike) -> None:
        """Record that a job's photo now lives at `source_path` (moved back, or dropped again)."""
        with self._write() as conn:
            conn.execute("UPDATE jobs SET source_path = ?, updated_at = ? WHERE id = ?",
                         (_path_in(source_path), self._clock(), int(job_id)))

    def relocate_mask(self, job_id: int, mask_path: str | os.PathLike) -> None:
        """Record that a job's mask now lives at `mask_path` (dropped again beside its photo)."""
        with self._write() as conn:
            conn.execute("UPDATE jobs SET mask_path = ?, updated_at = ? WHERE id = ?",
                         (_path_in(mask_path), self._clock(), int(job_id)))

    def follow(self, sha256: str, watch: str, old_path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        """The file of this content at `old_path` is at `new_path` now: its jobs (or its mask's) point there."""
        with self._write() as conn:
            self._follow(conn, sha256, watch, _path_in(old_path), _path_in(new_path), self._clock())

    @staticmethod
    def _follow(conn: sqlite3.Connection, sha256: str, watch: str, old, new, now: float) -> None:
        """Jobs follow the one file that moved, in the caller's transaction.

        A photo's jobs are those whose source it is: two copies of one photo,
        each with its own mask, are two jobs of two files, and each keeps
        its own (Ledger.add: the mask is part of the identity). A name that
        no job names (a second name for the same content, taken while its
        jobs ran) moves the maskless jobs of its content along, as it always
        has. A mask's jobs are those that name that file and use its bytes.
        """
        own = "sha256 = ? AND watch = ? AND source_path = ?"
        if conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {own}", (sha256, watch, old)).fetchone()[0]:
            conn.execute(f"UPDATE jobs SET source_path = ?, updated_at = ? WHERE {own}", (new, now, sha256, watch, old))
        else:
            conn.execute("UPDATE jobs SET source_path = ?, updated_at = ? WHERE sha256 = ? AND watch = ? "
                         "AND mask_sha256 = ?", (new, now, sha256, watch, NO_MASK))
        conn.execute("UPDATE jobs SET mask_path = ?, updated_at = ? WHERE mask_sha256 = ? AND watch = ? "
                     "AND mask_path = ?", (new, now, sha256, watch, old))

    # --- originals on the move ----------------------------------------------------------
    # The steps of nst_watch.service.publish.move_original, each one short
    # transaction; a process killed between any two leaves a row that says
    # how far it got.

    def take_move(self, *, sha256: str, watch: str, source_path: str | os.PathLike, dest_path: str | os.PathLike,
                  owner: str, gone: Callable[[str], bool]) -> tuple[Move, bool] | None:
        """Write down that `owner` moves the photo at `source_path` to `dest_path`: (the row, resumed), or None.

        An earlier move of the same file that waits for another try, or whose
        owner is gone (`gone(owner)` is True: the process was killed), is
        taken over and returned as that move left it (`placed`, `dest_path`)
        with resumed=True, for the new owner to finish or clear. None while
        another owner that is still there holds it.
        """
        with self._write() as conn:
            now = self._clock()
            source = _path_in(source_path)
            rows = self._moves(conn, "source_path = ?", (source,))
            if not rows:
                conn.execute(
                    """INSERT INTO moves (sha256, watch, source_path, dest_path, owner, created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?)""",
                    (sha256, watch, source, _path_in(dest_path), owner, now, now),
                )
                return self._moves(conn, "source_path = ?", (source,))[0], False
            move = rows[0]
            if move.owner is not None and move.owner != owner and not gone(move.owner):
                return None
            conn.execute("UPDATE moves SET owner = ?, sha256 = ?, watch = ?, updated_at = ? WHERE id = ?",
                         (owner, sha256, watch, now, move.id))
            return dataclasses.replace(move, owner=owner, sha256=sha256, watch=watch, updated_at=now), True

    def plan_move(self, move_id: int, dest_path: str | os.PathLike) -> None:
        """Record the name a move is about to give, before it exists (as plan_output does for outputs)."""
        with self._write() as conn:
            conn.execute("UPDATE moves SET dest_path = ?, placed = 0, updated_at = ? WHERE id = ?",
                         (_path_in(dest_path), self._clock(), int(move_id)))

    def placed_move(self, move_id: int, dest_path: str | os.PathLike) -> None:
        """The photo is whole at `dest_path`: its jobs (same content, same watch) point there from now on.

        One transaction, so `status`, the web view and `retry` never see a
        path where the photo is not: before it the photo is still at the
        source, after it at `dest_path` (the source copy is removed next).
        """
        with self._write() as conn:
            now = self._clock()
            row = conn.execute("SELECT sha256, watch FROM moves WHERE id = ?", (int(move_id),)).fetchone()
            if row is None:
                raise LedgerError(f"{self.path}: move {move_id} is not in the ledger")
            dest = _path_in(dest_path)
            source = conn.execute("SELECT source_path FROM moves WHERE id = ?", (int(move_id),)).fetchone()[0]
            self._follow(conn, row[0], row[1], source, dest, now)
            conn.execute("UPDATE moves SET dest_path = ?, placed = 1, updated_at = ? WHERE id = ?",
                         (dest, now, int(move_id)))

    def wait_move(self, move_id: int, error: str) -> None:
        """The move failed (a full disk...): it waits, owner-less, for another try, with `error` as its reason."""
        with self._write() as conn:
            conn.execute("UPDATE moves SET owner = NULL, error = ?, updated_at = ? WHERE id = ?",
                         (_text_in(error), self._clock(), int(move_id)))

    def end_move(self, move_id: int) -> None:
        """The move is over (or no longer wanted): forget it."""
        with self._write() as conn:
            conn.execute("DELETE FROM moves WHERE id = ?", (int(move_id),))

    def moves(self) -> list[Move]:
        """Every original on the move or waiting to move, oldest first."""
        return self._moves(self._conn(), "1", ())

    @staticmethod
    def _moves(conn: sqlite3.Connection, where: str, params: Iterable) -> list[Move]:
        rows = conn.execute(f"SELECT {_MOVE_COLUMNS} FROM moves WHERE {where} ORDER BY id", tuple(params))
        moves = []
        for row in rows:
            data = dict(row)
            data["source_path"], data["dest_path"] = _path_out(data["source_path"]), _path_out(data["dest_path"])
            data["placed"] = bool(data["placed"])
            moves.append(Move(**data))
        return moves

    # --- reading ----------------------------------------------------------------------
    # Single SELECTs outside an explicit transaction: each sees one consistent
    # snapshot and, in WAL mode, never waits for a writer.

    def get(self, job_id: int) -> Job | None:
        jobs = self._select(self._conn(), "id = ?", (job_id,))
        return jobs[0] if jobs else None

    def jobs_for(self, sha256: str) -> list[Job]:
        """Every job for one photo's content (one per preset, preset hash and mask), oldest first."""
        return self._select(self._conn(), "sha256 = ?", (sha256,), "ORDER BY id")

    def jobs_with_mask(self, mask_sha256: str) -> list[Job]:
        """Every job whose mask has this content, oldest first."""
        return self._select(self._conn(), "mask_sha256 = ?", (mask_sha256,), "ORDER BY id")

    def proofs(self, watch: str | None = None, limit: int = 5000) -> list[Job]:
        """The newest `limit` proof jobs (of one watch, or all), oldest first."""
        where, params = ("proof IS NOT NULL", [limit]) if watch is None else (
            "proof IS NOT NULL AND watch = ?", [watch, limit])
        return self._select(self._conn(), where, params, "ORDER BY id DESC LIMIT ?")[::-1]

    def finals_of(self, proof_ids: Iterable[int]) -> list[Job]:
        """Final jobs rendered from these proofs, oldest first."""
        ids = list(proof_ids)
        if not ids:
            return []
        return self._select(self._conn(), f"proof_id IN ({self._marks(ids)})", ids, "ORDER BY id")

    def counts(self, *, superseded: bool = False) -> dict[str, int]:
        """Jobs per state, every state present (zeros included).

        With `superseded`, the jobs put aside for another (Job.put_aside) are
        counted under SUPERSEDED, not under done: they made no output.
        """
        counts = dict.fromkeys(STATES, 0)
        label = f"CASE WHEN {_PUT_ASIDE_SQL} THEN '{SUPERSEDED}' ELSE state END" if superseded else "state"
        if superseded:
            counts[SUPERSEDED] = 0
        for state, count in self._conn().execute(f"SELECT {label} AS label, COUNT(*) FROM jobs GROUP BY label"):
            counts[state] = count
        return counts

    def recent(self, limit: int = 20) -> list[Job]:
        """The most recently changed jobs, newest first."""
        return self._select(self._conn(), "1", (limit,), "ORDER BY updated_at DESC, id DESC LIMIT ?")

    def failures(self, limit: int = 50) -> list[Job]:
        """Failed and dead jobs, newest first."""
        return self._select(
            self._conn(), "state IN ('failed', 'dead')", (limit,), "ORDER BY updated_at DESC, id DESC LIMIT ?"
        )

    def waiting(self, limit: int = 50) -> list[Job]:
        """Pending jobs held back with a reason (a retry after a transient failure, a broken preset), soonest first."""
        return self._select(self._conn(), "state = 'pending' AND error IS NOT NULL", (limit,),
                            "ORDER BY available_at, id LIMIT ?")

    def history(self, job_id: int) -> list[Event]:
        """Every transition of one job, oldest first (attempts, owners, errors)."""
        rows = self._conn().execute(
            "SELECT job_id, at, state, attempt, message FROM events WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [Event(**dict(row)) for row in rows]

    def pending_for_source(self, source_path: str | os.PathLike) -> list[Job]:
        """Jobs for this source file still to run (pending or leased)."""
        return self._select(
            self._conn(), "source_path = ? AND state IN ('pending', 'leased')", (_path_in(source_path),), "ORDER BY id"
        )

    def all_done_for(self, sha256: str) -> bool:
        """True when this content has jobs and every one is done (the original may move to processed/)."""
        total, done = self._conn().execute(
            "SELECT COUNT(*), COALESCE(SUM(state = 'done'), 0) FROM jobs WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return total > 0 and total == done

    # --- health -----------------------------------------------------------------------

    def writable(self) -> bool:
        """Health check: can a tiny write transaction commit (disk not full, not read-only, not locked)?"""
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('health_check', ?)", (str(self._clock()),)
                )
            return True
        except (sqlite3.Error, LedgerError):
            return False

    def pragmas(self) -> dict[str, object]:
        """The settings of this thread's connection, for `status` and tests."""
        conn = self._conn()
        names = ("journal_mode", "synchronous", "busy_timeout", "foreign_keys", "user_version")
        return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}
