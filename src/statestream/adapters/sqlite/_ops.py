"""The SQLite worker's operations and how their callers are answered, and the query thread."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import translate as _translate

if TYPE_CHECKING:
    from ._db import SqliteDatabase

R = TypeVar("R")


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


def _busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLITE_BUSY: another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(exc) or "busy" in str(exc)
    return bool(code & 0xFF == sqlite3.SQLITE_BUSY)


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
