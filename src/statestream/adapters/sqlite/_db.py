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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from ...errors import AdapterConnectionError, AdapterError
from ._errors import stopped_error as _stopped_error
from ._errors import translate as _translate
from ._schema import SCHEMA_VERSION, upgrade

__all__ = ["SCHEMA_VERSION", "SqliteDatabase", "from_us", "to_us"]

log = logging.getLogger("statestream.sqlite")

R = TypeVar("R")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_BATCH = 512


def to_us(when: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact, sortable)."""
    if when.tzinfo is None:
        raise AdapterError(f"naive datetime {when!r}: statestream stores timezone-aware times")
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


@dataclass(eq=False)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    rerunnable: bool = False
    result: Any = None
    error: BaseException | None = None
    answered: bool = False


@dataclass(eq=False)
class _Stop:
    """Queued by ``close()``: the thread finishes what was queued before it and exits."""


def _noop(conn: sqlite3.Connection) -> None:
    return None


def _answer(op: _Op) -> None:
    """Hand the result to the caller's loop, once; a caller whose loop has closed is gone."""
    if op.answered:
        return
    op.answered = True
    # RuntimeError: the event loop is closed, so nobody waits for this answer any more.
    with contextlib.suppress(RuntimeError):
        op.loop.call_soon_threadsafe(_resolve, op)


def _answer_all(batch: list[_Op]) -> None:
    """Hand a batch's results over with one wake-up per caller loop, not one per operation:
    each ``call_soon_threadsafe`` writes to the loop's self-pipe (a system call on both sides)."""
    ops = [op for op in batch if not op.answered]
    if not ops:
        return
    for op in ops:
        op.answered = True
    loop = ops[0].loop
    if all(op.loop is loop for op in ops):
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve_all, ops)
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
    for op in ops:
        by_loop.setdefault(op.loop, []).append(op)
    for each, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            each.call_soon_threadsafe(_resolve_all, mine)


def _resolve(op: _Op) -> None:
    if op.future.done():
        return
    if op.error is not None:
        op.future.set_exception(op.error)
    else:
        op.future.set_result(op.result)


def _resolve_all(ops: list[_Op]) -> None:
    for op in ops:
        _resolve(op)


class _QueryThread:
    """One thread with its own read connection, for :meth:`SqliteDatabase.query`."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"statestream-sqlite-query:{db.path.name}"
        )
        self._conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._db._read_connection()
        try:
            return fn(conn)
        except Exception as exc:
            raise _translate(exc, self._db.path) from exc

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """Close the connection on its thread once the queries queued before have run."""
        await asyncio.wrap_future(self._executor.submit(self._close))
        self._executor.shutdown(wait=False)


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

    async def write(self, fn: Callable[[sqlite3.Connection], R], *, rerunnable: bool = False) -> R:
        """Run ``fn(connection)`` inside a transaction; its changes are committed (possibly
        together with other writes) before this returns. If ``fn`` raises, its changes are
        rolled back and the exception is raised here.

        ``rerunnable``: ``fn`` acts only through the connection, so it may be run a second
        time after its first run was rolled back. A batch of such writes runs without a
        savepoint per write; if one fails, the batch is rolled back and run again with them.
        """
        return await self._submit(fn, write=True, rerunnable=rerunnable)

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
            row = conn.execute(
                "SELECT value FROM statestream_meta WHERE key = 'schema_version'"
            ).fetchone()
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
        result: R = await op.future
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
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _translate(exc, self.path) from exc
        except BaseException:
            conn.close()
            raise
        return conn

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
            row = conn.execute(
                "SELECT value FROM statestream_meta WHERE key = 'schema_version'"
            ).fetchone()
            found = int(row[0]) if row else 0
            if found > SCHEMA_VERSION:
                raise AdapterError(
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
                    self._execute(conn, batch)
                if stop is not None:
                    with self._lock:
                        self._thread = None
                        if not self._queue.empty():
                            self._start_locked()  # operations queued after close() began
                    return
        finally:
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
            conn.execute("BEGIN IMMEDIATE")
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
        writes = [op for op in batch if op.write]
        in_tx = False
        try:
            if writes:
                conn.execute("BEGIN IMMEDIATE")
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
