"""One SQLite file, one worker thread, group commit.

Every adapter of the SQLite set talks to the file through a :class:`SqliteDatabase`. Cheap reads
(lookups by key, short index ranges) run at once on the event loop's thread with a connection of
their own: in WAL mode a read never waits for a writer and takes microseconds, far less than a
hand-off to another thread (5 us against 70 us, measured). Reads that may be slow (lists, scans)
run on a query thread with another connection, so that they never hold up the loop. Writes are
functions run on the worker thread with its connection. The thread takes every write
queued at that moment and runs the writes in one transaction, each inside its own savepoint (so
one failing compare-and-set does not undo the others), commits once, and only then answers every
caller. Under load many writes share one commit (and one fsync); when idle a write commits alone
at once.

A quick write (a few rows by key: the record store's creates and updates) that finds the
database idle (nothing handed to the worker and not yet answered) runs at once on the caller's
thread instead, on the worker's connection held under a lock, and commits there: it would have
committed alone anyway, and the two thread hops it spares (to the worker and back to the loop,
with their wake-ups) cost about as much CPU as the commit. That holds up the event loop for the
commit (an fsync with ``synchronous=FULL``), so it is done at most once per turn of the loop,
only while most lone commits take under ``_INLINE_MAX_S`` (measured as they run), and never
while another process holds the write lock (the connection does not wait for it; the worker
does). Under load something is nearly always in flight, so the writes still share commits on
the worker thread while the loop goes on (measured: 5-9 of 12,000 writes ran at once in the
``throughput`` benchmark, with as many commits as before).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from ...errors import AdapterConnectionError, AdapterError
from ..sql._schema import SchemaError
from ._errors import stopped_error as _stopped_error
from ._errors import translate as _translate
from ._ops import _answer, _answer_all, _busy, _noop, _Op, _QueryThread, _Stop
from ._schema import SCHEMA_VERSION, VERSION_QUERY, upgrade

__all__ = ["SCHEMA_VERSION", "SqliteDatabase"]

log = logging.getLogger("statestream.sqlite")

R = TypeVar("R")

_MAX_BATCH = 512
#: How long the worker sleeps between attempts to take the write lock that another process
#: holds (the schedule of SQLite's own busy handler), until ``busy_timeout`` has passed.
_BUSY_SLEEPS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)
#: A quick write runs on the caller's thread only while most lone commits (a moving average
#: over the last few dozen) take at most this long: beyond it, the event loop would stall.
_INLINE_MAX_S = 0.002


class SqliteDatabase:
    """A statestream SQLite database file (WAL mode), shared by the adapters of one process.

    Args:
        path: the database file; created with its schema on first use.
        synchronous: ``"FULL"`` (default: a committed write survives a power cut) or
            ``"NORMAL"`` (faster; in WAL mode a power cut may lose the last transactions, but
            never corrupts the file; a crash of the process loses nothing either way).
        busy_timeout: seconds to wait for another process's write lock before failing.
        allow_foreign: create the statestream tables in a database that already holds other
            tables (for example the application's own); refused by default, to catch a wrong
            path.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout: float = 30.0,
        allow_foreign: bool = False,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise AdapterError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.allow_foreign = allow_foreign
        self._queue: queue.SimpleQueue[_Op | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._queries: _QueryThread | None = None
        #: Why the database thread stopped unexpectedly; every call fails until ``close()``.
        self._died: BaseException | None = None
        self.commits = 0
        self.writes = 0
        #: The worker's connection while open, and the lock held by whoever uses it (the worker
        #: for a batch, a caller's thread for a quick write run at once).
        self._writer: sqlite3.Connection | None = None
        self._writer_lock = threading.Lock()
        #: Operations handed to the worker and not yet answered on their caller's loop.
        self._outstanding = 0
        #: The share of recent lone writes (a moving average) whose write and commit took
        #: longer than _INLINE_MAX_S: quick writes run at once only while it is under a half.
        self._slow = 0.0
        #: A quick write ran at once in this turn of the loop (reset by the next turn).
        self._spent = False

    # -------------------------------------------------------------- public

    async def read(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn(connection)`` with the read connection (on the caller's thread) and return
        its result. It sees every write that has returned.

        For cheap, bounded reads only (a primary-key or index lookup, a page of a few hundred
        rows of an index range): they block the event loop while they run. Anything that can
        take longer goes through :meth:`query`."""
        conn = self._reader
        if conn is None or self._died is not None:
            conn = await self._open_reader()
        try:
            return fn(conn)
        except Exception as exc:
            raise _translate(exc, self.path) from exc

    async def query(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn(connection)`` on the query thread, with a read connection of its own, and
        return its result: for reads that may be slow (lists, filters that scan), so that the
        event loop keeps running meanwhile. It sees every write that has returned."""
        if self._reader is None or self._died is not None:
            await self._open_reader()
        queries = self._queries
        if queries is None:
            queries = self._queries = _QueryThread(self)
        return await queries.run(fn)

    async def _open_reader(self) -> sqlite3.Connection:
        # The worker creates or migrates the schema first (and a dead thread fails this).
        await self._submit(_noop, write=False)
        if self._reader is None:
            self._reader = self._read_connection()
        return self._reader

    def _read_connection(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=1.0
            )
            conn.execute("PRAGMA busy_timeout = 1000")
            conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        return conn

    async def write(
        self,
        fn: Callable[[sqlite3.Connection], R],
        *,
        rerunnable: bool = False,
        quick: bool = False,
    ) -> R:
        """Run ``fn(connection)`` inside a transaction; its changes are committed (possibly
        together with other writes) before this returns. If ``fn`` raises, its changes are
        rolled back and the exception is raised here.

        ``rerunnable``: ``fn`` acts only through the connection, so it may be run a second
        time after its first run was rolled back. A batch of such writes runs without a
        savepoint per write; if one fails, the batch is rolled back and run again with them.

        ``quick``: ``fn`` touches a few rows by key; when the database is idle it runs and
        commits at once on this thread (see the module's docstring).
        """
        if (
            quick
            and not self._outstanding
            and not self._spent
            and self._slow < 0.5
            and self._writer is not None
        ):
            loop = asyncio.get_running_loop()
            if self._writer_lock.acquire(blocking=False):
                try:
                    done, result = self._write_here(loop, fn)
                finally:
                    self._writer_lock.release()
                if done:
                    return result  # type: ignore[no-any-return]
        return await self._submit(fn, write=True, rerunnable=rerunnable)

    def _write_here(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[[sqlite3.Connection], Any]
    ) -> tuple[bool, Any]:
        """Run ``fn`` in a transaction of its own on this thread and commit it, the writer lock
        being held; ``(False, None)`` if it is for the worker after all (the worker was handed
        work or closed meanwhile, or another process holds the write lock)."""
        conn = self._writer
        if conn is None or self._outstanding or self._died is not None:
            return False, None
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return False, None  # another process writes: the worker waits for it
            raise _translate(exc, self.path) from exc
        except Exception as exc:
            raise _translate(exc, self.path) from exc
        self._spent = True
        loop.call_soon(self._unspend)
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            # Whatever it was (KeyboardInterrupt included), nothing of the write stays.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("statestream: rollback failed on %s", self.path)
            if isinstance(exc, Exception):
                raise _translate(exc, self.path) from None
            raise
        self.commits += 1
        self.writes += 1
        self._timed(time.perf_counter() - started)
        return True, result

    def _unspend(self) -> None:
        self._spent = False

    def _timed(self, lone: float) -> None:
        """Count a lone write that took ``lone`` seconds, with its commit."""
        self._slow += ((lone > _INLINE_MAX_S) - self._slow) * 0.0625

    async def delete_in_chunks(
        self,
        table: str,
        *,
        scope: str = "",
        scope_args: tuple[Any, ...] = (),
        condition: str,
        condition_args: tuple[Any, ...] = (),
        chunk: int = 2_000,
    ) -> int:
        """Delete the rows of ``table`` in ``scope`` that match ``condition``; how many.

        Walks the rows of ``scope`` in row ID order, ``chunk`` of them per transaction, so that
        other writes are not held up behind one long delete, and each row is examined once
        (rows it keeps are not scanned again by the next chunk). ``scope`` should be an index
        range ordered by row ID (equality on an index's columns, then a row ID bound; empty:
        the whole table); it is evaluated again in every chunk's transaction. The SQL texts are
        the caller's constants; values go in the ``*_args``.
        """
        where = f"{scope} AND " if scope else ""
        step = (
            f"SELECT MAX(rowid), COUNT(*) FROM (SELECT rowid FROM {table} WHERE {where}"
            f"rowid > ? ORDER BY rowid LIMIT {int(chunk)})"
        )
        delete = f"DELETE FROM {table} WHERE {where}rowid > ? AND rowid <= ? AND ({condition})"
        after = 0
        total = 0
        while True:

            def run(conn: sqlite3.Connection, after: int = after) -> tuple[int, int, int]:
                top, seen = conn.execute(step, (*scope_args, after)).fetchone()
                if not seen:
                    return 0, after, 0
                deleted = conn.execute(delete, (*scope_args, after, top, *condition_args))
                return int(deleted.rowcount), int(top), int(seen)

            deleted, after, seen = await self.write(run)
            total += deleted
            if seen < chunk:
                return total

    async def close(self) -> None:
        """Finish queued work, close the connections and stop the thread.

        After the thread stopped on an unexpected error, ``close()`` clears that state: the next
        call opens the file again."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        queries, self._queries = self._queries, None
        if queries is not None:
            await queries.close()
        with self._lock:
            self._died = None
            thread = self._thread
            if thread is None:
                return  # never opened, or the open failed
            self._queue.put(_Stop())
        await asyncio.to_thread(thread.join)

    async def schema_version(self) -> int:
        def get(conn: sqlite3.Connection) -> int:
            row = conn.execute(VERSION_QUERY).fetchone()
            return int(row[0]) if row else 0

        return await self.read(get)

    # -------------------------------------------------------------- thread

    async def _submit(
        self, fn: Callable[[sqlite3.Connection], R], *, write: bool, rerunnable: bool = False
    ) -> R:
        loop = asyncio.get_running_loop()
        op = _Op(fn, write, loop, loop.create_future(), rerunnable)
        # Under the lock, a queued operation always has a live thread that will answer it: a
        # thread that fails to open, or stops, drops its claim under the same lock.
        with self._lock:
            if self._died is not None:
                raise _stopped_error(self.path, self._died)
            if self._thread is None:
                self._start_locked()
            self._queue.put(op)
            self._outstanding += 1
        try:
            result: R = await op.future
        finally:
            with self._lock:
                self._outstanding -= 1
        return result

    def _start_locked(self) -> None:
        thread = threading.Thread(
            target=self._run, name=f"statestream-sqlite:{self.path.name}", daemon=True
        )
        self._thread = thread
        thread.start()

    def _connect(self) -> sqlite3.Connection:
        where = str(self.path)
        try:
            if self.path.parent and not self.path.parent.exists():
                raise AdapterConnectionError(
                    f"cannot open {where}: directory {self.path.parent} does not exist"
                )
            conn = sqlite3.connect(
                where, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
            )
        except sqlite3.Error as exc:
            raise AdapterConnectionError(f"cannot open SQLite database {where}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            current = self._check(conn)  # before anything changes the file
            mode = self._switch_to_wal(conn)
            if str(mode).lower() != "wal":
                log.warning("statestream: %s could not switch to WAL (mode %s)", where, mode)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            if current < SCHEMA_VERSION:
                self._migrate(conn)
            # From here the connection never waits inside SQLite for another process's lock,
            # so that a write run on the loop's thread cannot stall it: the worker waits in
            # _begin instead, up to busy_timeout.
            conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _translate(exc, self.path) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE`` on the worker, waiting for up to ``busy_timeout`` while another
        process holds the write lock, as SQLite's busy handler would."""
        deadline = 0.0
        tries = 0
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                now = time.monotonic()
                if not deadline:
                    deadline = now + self.busy_timeout
                if now >= deadline:
                    raise
                time.sleep(min(_BUSY_SLEEPS[min(tries, len(_BUSY_SLEEPS) - 1)], deadline - now))
                tries += 1

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode = WAL``, retried while another connection holds the lock.

        On a new file, the switch answers SQLITE_BUSY at once, without the busy handler, while
        another connection (another process opening the file at the same moment) is switching
        it or creating the schema; it is retried for up to ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                    raise
            time.sleep(0.005)

    def _check(self, conn: sqlite3.Connection) -> int:
        """The file's statestream schema version (0 for a new file); refuses a file that is not
        ours or is newer than this release, without changing it."""
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "statestream_meta" in tables:
            row = conn.execute(VERSION_QUERY).fetchone()
            found = int(row[0]) if row else 0
            if found > SCHEMA_VERSION:
                raise SchemaError(
                    f"{self.path} has statestream schema version {found}, newer than this "
                    f"release understands ({SCHEMA_VERSION}): upgrade statestream, or use "
                    "another file"
                )
            return found
        if tables - {"sqlite_sequence"} and not self.allow_foreign:
            raise AdapterError(
                f"{self.path} is an SQLite database of something else (tables: "
                f"{', '.join(sorted(tables)[:5])}): choose another path, or pass "
                "allow_foreign=True to add the statestream tables to it"
            )
        return 0

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Create the schema of a new file, or migrate an older one, in one transaction."""
        conn.execute("BEGIN IMMEDIATE")
        found = self._check(conn)
        if found >= SCHEMA_VERSION:  # another process migrated it meanwhile
            conn.execute("ROLLBACK")
            return
        try:
            upgrade(conn, found)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run(self) -> None:
        batch: list[_Op] = []  # the batch being executed, filled by _serve
        try:
            self._serve(batch)
        except BaseException as exc:
            # A bug, or a BaseException from a write: the thread cannot go on. Nobody may be
            # left waiting: the batch in hand (its transaction is rolled back when the
            # connection closes) and everything queued fail, and so does every later call
            # until close().
            log.exception("statestream: SQLite thread for %s stopped", self.path)
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                self._died = cause = exc
                for op in batch:
                    if not op.answered:
                        op.error = _stopped_error(self.path, cause)
                        _answer(op)
                self._fail_all(lambda: _stopped_error(self.path, cause))

    def _serve(self, batch: list[_Op]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            failure = exc
            with self._lock:
                self._thread = None  # the next operation tries to open the file again
                self._fail_all(lambda: failure)
            return
        self._writer = conn
        try:
            while True:
                item = self._queue.get()
                batch.clear()
                stop: _Stop | None = None
                while True:
                    if isinstance(item, _Stop):
                        stop = item
                        break
                    batch.append(item)
                    if len(batch) >= _MAX_BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    started = time.perf_counter()
                    self._execute(conn, batch)
                    if len(batch) == 1:
                        self._timed(time.perf_counter() - started)
                if stop is not None:
                    with self._lock:
                        self._thread = None
                        if not self._queue.empty():
                            self._start_locked()  # operations queued after close() began
                    return
        finally:
            with self._writer_lock:
                if self._writer is conn:
                    self._writer = None
                conn.close()

    def _fail_all(self, error: Callable[[], BaseException]) -> None:
        """Answer every queued operation with ``error()``."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if not isinstance(item, _Stop):
                item.error = error()
                _answer(item)

    def _write_alone(self, conn: sqlite3.Connection, op: _Op) -> bool:
        """Run a write that is alone in its transaction: no savepoint, since rolling the
        transaction back undoes exactly it (two statements fewer per write when idle).
        Returns whether the transaction is still open (to commit)."""
        try:
            op.result = op.fn(conn)
        except Exception as exc:
            op.error = _translate(exc, self.path)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return False
        return True

    def _run_optimistic(self, conn: sqlite3.Connection, batch: list[_Op]) -> bool:
        """Run a batch of rerunnable operations without savepoints; True if all succeeded.
        On a failure, the transaction is rolled back and begun again, every result is
        dropped, and the caller runs the batch with savepoints (:meth:`_run_batch`)."""
        if not all(op.rerunnable or not op.write for op in batch):
            return False
        try:
            for op in batch:
                op.result = op.fn(conn)
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._begin(conn)
            for op in batch:
                op.result = None
            return False
        return True

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        """Run the batch's operations in the open transaction (if any), each write inside its
        own savepoint, so that one failing does not undo the others."""
        for op in batch:
            if op.write:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn)
                    conn.execute("RELEASE op")
                except Exception as exc:
                    if not conn.in_transaction:
                        raise  # SQLite rolled the whole batch back (a full disk, say)
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    op.error = _translate(exc, self.path)
            else:
                try:
                    op.result = op.fn(conn)
                except Exception as exc:
                    op.error = _translate(exc, self.path)

    def _execute(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        """Run the batch in one transaction under the writer lock, then answer its callers
        (after releasing the lock, so that an answered caller finds the connection free)."""
        writes = [op for op in batch if op.write]
        in_tx = False
        with self._writer_lock:
            try:
                if writes:
                    self._begin(conn)
                    in_tx = True
                if len(batch) == 1 and in_tx:
                    in_tx = self._write_alone(conn, batch[0])
                elif not (in_tx and self._run_optimistic(conn, batch)):
                    self._run_batch(conn, batch)
                if in_tx:
                    conn.execute("COMMIT")
                    in_tx = False
                    self.commits += 1
                    self.writes += len(writes)
            except Exception as exc:
                error = _translate(exc, self.path)
                if in_tx and conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.exception("statestream: rollback failed on %s", self.path)
                for op in batch:
                    op.error = error  # nothing of the batch was committed; reads may have seen it
        _answer_all(batch)
