"""The SQLite job ledger: idempotency, leases, backoff, and safety across processes.

Real SQLite files in tmp_path. Time moves through an injected clock, never by
sleeping; the only real waits are the few hundred milliseconds another process
holds a lock on purpose.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from contextlib import closing

import pytest
from conftest import FakeClock

from nst_watch.jobs import DEAD, DONE, FAILED, LEASED, PENDING, SCHEMA_VERSION, STATES, Ledger, LedgerError

LEASE = 60.0
SPAWN = multiprocessing.get_context("spawn")  # what a fresh `nst-watch work` process looks like: nothing inherited




@pytest.fixture
def clock():
    return FakeClock(1_000_000.0)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "state" / "jobs.db"


@pytest.fixture
def ledger(db, clock):
    with Ledger(db, lease_seconds=LEASE, max_attempts=3, backoff_base=10, backoff_max=600, clock=clock) as led:
        yield led


def add(ledger, photo="a", preset="oil", preset_hash="h1", bucket="768x512", **extra):
    """Enqueue a job for a fake photo whose sha256 is derived from its name."""
    return ledger.add(sha256=photo * 64 if len(photo) == 1 else photo, preset=preset, preset_hash=preset_hash,
                      source_path=f"/in/{photo}.jpg", bucket=bucket, **extra)


# --- the file ---------------------------------------------------------------------------


def test_fresh_connections_use_wal_and_full_sync(ledger, db):
    """Every connection the ledger makes (one per thread) carries the durability settings."""
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(ledger.pragmas()))
    thread.start()
    thread.join()
    for pragmas in (ledger.pragmas(), seen):
        assert pragmas["journal_mode"] == "wal"
        assert pragmas["synchronous"] == 2  # FULL
        assert pragmas["foreign_keys"] == 1
        assert pragmas["busy_timeout"] == 30_000
        assert pragmas["user_version"] == SCHEMA_VERSION
    # WAL is a property of the file: a plain connection sees it too.
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopen_keeps_jobs_and_refuses_a_newer_schema(db, clock):
    with Ledger(db, clock=clock) as first:
        job = add(first).job
    with Ledger(db, clock=clock) as again:  # migrations are not re-run on an up-to-date file
        assert again.get(job.id) == job
    with closing(sqlite3.connect(db, isolation_level=None)) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match="newer"):
        Ledger(db, clock=clock)


def test_writable_health_check(db):
    ledger = Ledger(db, busy_timeout=0.05)
    assert ledger.writable()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a stuck writer: the health check must say so, not hang
    assert not ledger.writable()
    other.execute("COMMIT")
    assert ledger.writable()
    other.close()
    ledger.close()
    assert not ledger.writable()


# --- add ----------------------------------------------------------------------------------


def test_add_is_idempotent_per_sha_preset_and_hash(ledger, clock):
    first = add(ledger)
    assert first.created and first.job.state == PENDING and first.job.attempts == 0
    clock.advance(5)
    again = add(ledger, priority=9)
    assert not again.created
    assert again.job == first.job  # nothing changed, not even updated_at or priority
    assert ledger.counts()[PENDING] == 1

    # A finished job is returned as it is, so the daemon can say "already done, output at ...".
    (job,) = ledger.claim("w1")
    ledger.complete("w1", job.id, "/out/a-oil.jpg")
    done = add(ledger)
    assert not done.created and done.job.state == DONE and done.job.output_path == "/out/a-oil.jpg"

    # An edited preset (new hash) or another preset is new work.
    assert add(ledger, preset_hash="h2").created
    assert add(ledger, preset="ink").created
    assert len(ledger.jobs_for("a" * 64)) == 3


def test_add_keeps_failed_jobs_failed(ledger):
    job = add(ledger).job
    ledger.claim("w1")
    ledger.fail("w1", job.id, "corrupt JPEG", permanent=True)
    again = add(ledger)
    assert not again.created and again.job.state == FAILED


# --- claim, heartbeat, complete -------------------------------------------------------------


def test_claim_leases_and_counts_the_attempt(ledger, clock):
    job = add(ledger).job
    (claimed,) = ledger.claim("w1")
    assert claimed.id == job.id
    assert claimed.state == LEASED and claimed.lease_owner == "w1"
    assert claimed.attempts == 1
    assert claimed.lease_expires == clock.now + LEASE
    assert claimed.started_at == clock.now
    assert ledger.claim("w1") == []  # nothing else pending


def test_claim_batches_only_same_preset_hash_and_bucket(ledger):
    same = [add(ledger, p).job.id for p in "abc"]
    add(ledger, "d", preset_hash="h2")
    add(ledger, "e", bucket="512x512")
    add(ledger, "f", preset="ink")
    add(ledger, "g", bucket=None)
    batch = ledger.claim("w1", limit=10)
    assert [job.id for job in batch] == same
    # The rest come one group at a time, each a batch of one.
    groups = [ledger.claim("w1", limit=10) for _ in range(4)]
    assert [len(group) for group in groups] == [1, 1, 1, 1]
    assert ledger.claim("w1", limit=10) == []


def test_claim_order_priority_then_age_and_preset_filter(ledger):
    old = add(ledger, "a").job
    urgent = add(ledger, "b", priority=5).job
    ink = add(ledger, "c", preset="ink").job
    assert [j.id for j in ledger.claim("w1", presets=["ink"])] == [ink.id]
    assert ledger.claim("w1", presets=[]) == []
    assert [j.id for j in ledger.claim("w1")] == [urgent.id]
    assert [j.id for j in ledger.claim("w1")] == [old.id]


def test_a_leased_job_belongs_to_its_owner(ledger, clock):
    job = add(ledger).job
    ledger.claim("w1")
    assert ledger.claim("w2") == []
    assert ledger.heartbeat("w2", [job.id]) == set()
    assert ledger.complete("w2", job.id, "/out/x.jpg") is False
    assert ledger.fail("w2", job.id, "boom", permanent=True) is None
    assert ledger.release("w2", [job.id]) == 0
    assert ledger.get(job.id).state == LEASED

    clock.advance(LEASE - 1)
    assert ledger.heartbeat("w1", [job.id, 999]) == {job.id}
    assert ledger.get(job.id).lease_expires == clock.now + LEASE
    assert ledger.complete("w1", job.id, "/out/a-oil.jpg") is True
    done = ledger.get(job.id)
    assert (done.state, done.output_path, done.error, done.lease_owner) == (DONE, "/out/a-oil.jpg", None, None)
    assert done.finished_at == clock.now
    assert ledger.complete("w1", job.id, "/out/a-oil.jpg") is False  # done once only


def test_heartbeat_keeps_a_long_job_from_being_reaped(ledger, clock):
    job = add(ledger).job
    ledger.claim("w1")
    for _ in range(5):  # five lease lengths of work, a heartbeat every half lease
        clock.advance(LEASE / 2)
        assert ledger.heartbeat("w1", [job.id]) == {job.id}
        clock.advance(LEASE / 2)
        assert ledger.reap() == 0
    assert ledger.complete("w1", job.id, None)


# --- leases that expire ------------------------------------------------------------------


def test_expired_lease_returns_with_backoff_then_dies(ledger, clock):
    job = add(ledger).job
    waits = []
    for attempt in (1, 2):
        (claimed,) = ledger.claim(f"w{attempt}")
        assert claimed.attempts == attempt
        clock.advance(LEASE + 1)  # the worker died silently: no heartbeat
        assert ledger.reap() == 1
        reaped = ledger.get(job.id)
        assert reaped.state == PENDING and reaped.lease_owner is None
        assert "lost its lease" in reaped.error
        waits.append(reaped.available_at - clock.now)
        clock.advance(waits[-1] - 1)
        assert ledger.claim("w9") == []  # still backing off
        clock.advance(1)
    assert waits == [10, 20]  # backoff_base * 2**(attempts-1)

    (last,) = ledger.claim("w3")
    assert last.attempts == 3
    assert ledger.complete("w2", job.id, None) is False  # the long-gone worker cannot finish it
    clock.advance(LEASE + 1)
    assert ledger.claim("w4") == []  # claim reaps first, and the job is out of attempts
    dead = ledger.get(job.id)
    assert dead.state == DEAD
    assert dead.error == "worker lost its lease (crashed or killed) 3 times; last holder w3"
    assert dead.finished_at == clock.now


def test_lost_lease_message_counts_only_lost_leases(ledger, clock):
    job = add(ledger).job
    ledger.claim("w1")
    ledger.fail("w1", job.id, "out of memory", permanent=False)
    clock.advance(10)
    ledger.claim("w1")
    ledger.fail("w1", job.id, "out of memory", permanent=False)
    clock.advance(20)
    ledger.claim("w1")
    clock.advance(LEASE + 1)
    assert ledger.reap() == 1
    assert ledger.get(job.id).error == "worker lost its lease (crashed or killed) 1 time in 3 attempts; last holder w1"


# --- fail, release, retry ------------------------------------------------------------------


def test_permanent_failure_fails_at_once(ledger, clock):
    job = add(ledger).job
    ledger.claim("w1")
    assert ledger.fail("w1", job.id, "not an image", permanent=True) == FAILED
    failed = ledger.get(job.id)
    assert (failed.state, failed.error, failed.attempts, failed.lease_owner) == (FAILED, "not an image", 1, None)
    clock.advance(10_000)
    assert ledger.claim("w1") == []


def test_transient_failures_back_off_exponentially_then_die(db, clock):
    ledger = Ledger(db, max_attempts=5, backoff_base=10, backoff_max=50, clock=clock)
    job = add(ledger).job
    waits = []
    for _ in range(4):
        ledger.claim("w1")
        assert ledger.fail("w1", job.id, "disk full", permanent=False) == PENDING
        waits.append(ledger.get(job.id).available_at - clock.now)
        assert ledger.claim("w1") == []  # not before its backoff
        clock.advance(waits[-1])
    assert waits == [10, 20, 40, 50]  # doubling, capped at backoff_max
    ledger.claim("w1")
    assert ledger.fail("w1", job.id, "disk full", permanent=False) == DEAD
    dead = ledger.get(job.id)
    assert (dead.state, dead.attempts, dead.error) == (DEAD, 5, "disk full")
    ledger.close()


def test_release_returns_jobs_without_using_an_attempt(ledger):
    jobs = [add(ledger, p).job for p in "ab"]
    ledger.claim("w1", limit=2)
    assert ledger.release("w1", [j.id for j in jobs]) == 2
    for job in jobs:
        back = ledger.get(job.id)
        assert (back.state, back.attempts, back.lease_owner, back.lease_expires) == (PENDING, 0, None, None)
    assert len(ledger.claim("w2", limit=2)) == 2  # at once: no backoff


def test_retry_by_state_and_by_id(ledger, clock):
    failed, dead, done, pending = (add(ledger, p).job for p in "abcd")
    (job,) = ledger.claim("w1")
    ledger.fail("w1", failed.id, "boom", permanent=True)
    for _ in range(3):  # three transient failures use up max_attempts
        (job,) = ledger.claim("w1")
        assert job.id == dead.id
        ledger.fail("w1", dead.id, "out of memory", permanent=False)
        clock.advance(600)
    (job,) = ledger.claim("w1")
    ledger.complete("w1", done.id, "/out/c.jpg")
    assert [ledger.get(j.id).state for j in (failed, dead, done, pending)] == [FAILED, DEAD, DONE, PENDING]

    with pytest.raises(ValueError):
        ledger.retry()
    assert ledger.retry([done.id, pending.id]) == 0  # other states are left alone
    assert ledger.get(done.id).state == DONE
    assert ledger.retry(failed=True) == 1
    again = ledger.get(failed.id)
    assert (again.state, again.attempts, again.error, again.available_at) == (PENDING, 0, None, clock.now)
    assert ledger.get(dead.id).state == DEAD
    assert ledger.retry(dead=True) == 1
    assert (ledger.get(dead.id).state, ledger.get(dead.id).attempts) == (PENDING, 0)

    (job,) = ledger.claim("w1")
    ledger.fail("w1", failed.id, "still boom", permanent=True)
    assert ledger.retry([failed.id, dead.id]) == 1  # dead.id is pending now: not counted
    assert ledger.get(failed.id).state == PENDING
    # The row's error is cleared, but the old errors remain in the history.
    assert [e.message for e in ledger.history(failed.id) if e.state == FAILED] == [
        "permanent error: boom", "permanent error: still boom"]


# --- reading ------------------------------------------------------------------------------


def test_counts_recent_failures_and_source_queries(ledger, clock):
    assert ledger.counts() == dict.fromkeys(STATES, 0)
    a_oil = add(ledger, "a").job
    a_ink = add(ledger, "a", preset="ink").job
    b_oil = add(ledger, "b").job
    assert not ledger.all_done_for("a" * 64)
    assert [j.id for j in ledger.pending_for_source("/in/a.jpg")] == [a_oil.id, a_ink.id]

    for job in (a_oil, a_ink):
        clock.advance(1)
        (claimed,) = ledger.claim("w1", presets=[job.preset])
        ledger.complete("w1", claimed.id, f"/out/{job.preset}.jpg")
    clock.advance(1)
    ledger.claim("w1")
    ledger.fail("w1", b_oil.id, "corrupt", permanent=True)

    assert ledger.all_done_for("a" * 64)
    assert not ledger.all_done_for("b" * 64) and not ledger.all_done_for("z" * 64)
    assert ledger.pending_for_source("/in/a.jpg") == []
    assert ledger.counts() == {PENDING: 0, LEASED: 0, DONE: 2, FAILED: 1, DEAD: 0}
    assert [j.id for j in ledger.recent(2)] == [b_oil.id, a_ink.id]
    assert [j.id for j in ledger.failures()] == [b_oil.id]
    assert ledger.get(b_oil.id).to_dict()["error"] == "corrupt"
    assert ledger.get(12345) is None


def test_one_ledger_shared_by_threads(ledger):
    """Each thread gets its own connection; no job is handed out twice."""
    for n in range(40):
        add(ledger, f"{n:064d}")
    claimed: list[int] = []

    def work(owner):
        while jobs := ledger.claim(owner):
            claimed.extend(j.id for j in jobs)
            assert ledger.complete(owner, jobs[0].id, None)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40
    assert ledger.counts()[DONE] == 40


# --- several processes ---------------------------------------------------------------------
# The child functions live at module level so the spawn context can import them.


def _claim_until_empty(path, owner, barrier, results):
    """A worker process: claim one job at a time and complete it until none are left."""
    ledger = Ledger(path)
    claimed, errors = [], []
    barrier.wait()  # start together so the processes really contend
    while True:
        try:
            jobs = ledger.claim(owner)
            if not jobs:
                break
            claimed.append(jobs[0].id)
            time.sleep(0.002)  # "stylising", outside any transaction: lets the others get the lock
            if not ledger.complete(owner, jobs[0].id, f"/out/{jobs[0].id}.jpg"):
                errors.append(f"lost lease on {jobs[0].id}")
        except (sqlite3.Error, LedgerError) as exc:  # "database is locked" would land here
            errors.append(repr(exc))
    ledger.close()
    results.put((owner, claimed, errors))


def test_processes_claim_each_job_exactly_once(db):
    ledger = Ledger(db)
    for n in range(200):
        add(ledger, f"{n:064d}")
    barrier, results = SPAWN.Barrier(4), SPAWN.Queue()
    procs = [SPAWN.Process(target=_claim_until_empty, args=(db, f"p{i}", barrier, results)) for i in range(4)]
    for proc in procs:
        proc.start()
    reports = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
        assert proc.exitcode == 0

    all_claims = [job_id for _, claimed, _ in reports for job_id in claimed]
    assert [errors for _, _, errors in reports] == [[], [], [], []]
    assert len(all_claims) == len(set(all_claims)) == 200  # no job claimed twice, none missed
    assert sum(1 for _, claimed, _ in reports if claimed) >= 2  # they did share the work
    assert ledger.counts() == {PENDING: 0, LEASED: 0, DONE: 200, FAILED: 0, DEAD: 0}
    assert all(job.attempts == 1 for job in ledger.recent(200))
    ledger.close()


def _open_fresh_ledgers(folder, rounds, barrier, errors):
    """Open a new ledger file each round, at the same moment as the other processes."""
    for i in range(rounds):
        barrier.wait(timeout=30)
        try:
            Ledger(f"{folder}/round{i}.db").close()
        except LedgerError as exc:
            errors.put(str(exc))


def test_processes_that_open_a_fresh_ledger_together_all_open_it(tmp_path):
    # A watcher and its workers started at once on an empty state_dir: the WAL switch
    # used to fail at once with "database is locked" (about one round in eight).
    barrier, errors = SPAWN.Barrier(3), SPAWN.Queue()
    openers = [SPAWN.Process(target=_open_fresh_ledgers, args=(str(tmp_path), 40, barrier, errors))
               for _ in range(3)]
    for p in openers:
        p.start()
    for p in openers:
        p.join(timeout=120)
    assert [p.exitcode for p in openers] == [0, 0, 0]
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
    for i in range(40):
        with closing(sqlite3.connect(tmp_path / f"round{i}.db")) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _claim_and_hang(path, ready):
    """Claim a job, start another write and never finish it: the parent SIGKILLs us."""
    ledger = Ledger(path)
    (job,) = ledger.claim("doomed")
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (job.id,))  # never committed
    ready.set()
    time.sleep(60)


def test_a_killed_worker_leaves_a_reapable_lease_and_a_sound_file(db):
    # The child uses the real clock; ours starts at the real time and then jumps.
    clock = FakeClock(time.time())
    ledger = Ledger(db, clock=clock)
    job = add(ledger).job
    ready = SPAWN.Event()
    child = SPAWN.Process(target=_claim_and_hang, args=(db, ready))
    child.start()
    assert ready.wait(timeout=30)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    assert child.exitcode == -signal.SIGKILL
    ledger.close()

    fresh = Ledger(db, clock=clock, busy_timeout=5)
    held = fresh.get(job.id)
    # The committed claim survived; the uncommitted write was rolled back.
    assert (held.state, held.lease_owner, held.attempts) == (LEASED, "doomed", 1)
    assert fresh.claim("w2") == []  # the write lock died with the child, and the lease still stands
    clock.advance(300 + 1)  # past the child's default lease
    assert fresh.reap() == 1
    assert fresh.get(job.id).state == PENDING
    clock.advance(10)
    (again,) = fresh.claim("w2")
    assert again.id == job.id and again.attempts == 2
    assert fresh._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    fresh.close()


def _hold_write_lock(path, ready, seconds):
    """Hold an uncommitted write transaction for a moment, then commit it."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute(
        "INSERT INTO jobs (sha256, preset, preset_hash, source_path, max_attempts,"
        " available_at, created_at, updated_at) VALUES ('held', 'oil', 'h1', '/in/held.jpg', 3, 0, 0, 0)"
    )
    ready.set()
    time.sleep(seconds)
    raw.execute("COMMIT")
    raw.close()


def test_readers_and_writers_wait_out_another_process_write(db):
    ledger = Ledger(db)
    add(ledger, "a")
    ready = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_write_lock, args=(db, ready, 0.5))
    holder.start()
    assert ready.wait(timeout=30)

    # Reads never wait in WAL mode and see the last committed state.
    assert ledger.counts()[PENDING] == 1
    # A writer without patience fails ...
    impatient = sqlite3.connect(db, timeout=0.05, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        impatient.execute("BEGIN IMMEDIATE")
    impatient.close()
    # ... while the ledger's busy_timeout waits for the commit and then succeeds.
    started = time.monotonic()
    assert add(ledger, "b").created
    assert time.monotonic() - started > 0.1
    holder.join(timeout=10)
    assert ledger.counts()[PENDING] == 3
    ledger.close()


def test_rekey_moves_a_waiting_job_to_the_edited_preset_or_supersedes_it(tmp_path):
    ledger = Ledger(tmp_path / "jobs.db")
    old = ledger.add(sha256="s1", preset="p", preset_hash="old", source_path="/in/a.jpg").job
    [claimed] = ledger.claim("w")
    assert ledger.rekey("w", claimed.id, "new") is None
    assert ledger.get(old.id).preset_hash == "new"
    # a second stale job whose new key is taken is superseded, not run twice
    stale = ledger.add(sha256="s2", preset="p", preset_hash="old", source_path="/in/b.jpg").job
    fresh = ledger.add(sha256="s2", preset="p", preset_hash="new", source_path="/in/b.jpg").job
    ledger.complete("w", claimed.id, "/out/a.jpg")
    [again] = ledger.claim("w")
    assert again.id == stale.id
    assert ledger.rekey("w", stale.id, "new") == fresh.id
    job = ledger.get(stale.id)
    assert job.state == "done" and job.output_path is None and "superseded" in job.error
