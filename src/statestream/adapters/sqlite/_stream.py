"""SQLite event-table streamer and lease-row role scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ..._record import Event, Message
from ...errors import AdapterError, InvalidInput
from ._db import SqliteDatabase, from_us, to_us
from ._schema import key_hash

__all__ = ["SqliteLease", "SqliteReceiver", "SqliteRoleScheduler", "SqliteStreamer"]


class SqliteStreamer:
    """Every topic in one append-only events table, each consumer's position in a cursors table.

    A receiver reads rows after its cursor. It is woken at once when this process publishes to
    its topic, and polls every ``poll_interval`` for events published by other processes. Event
    IDs are the table's row IDs: they grow across all topics, so within a topic they grow too.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self._wakers: dict[str, asyncio.Event] = {}
        self._receivers: set[SqliteReceiver] = set()

    def _waker(self, topic: str) -> asyncio.Event:
        waker = self._wakers.get(topic)
        if waker is None:
            waker = self._wakers[topic] = asyncio.Event()
        return waker

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        rows = [
            (
                topic,
                m.key,
                m.type,
                json.dumps(dict(m.headers), separators=(",", ":")),
                m.data,
                to_us(m.created_at),
                key_hash(m.key),
            )
            for m in messages
        ]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO statestream_events (topic, key, type, headers, data, created_at, "
                "key_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self.db.write(insert)
        self.wake(topic)

    def wake(self, topic: str) -> None:
        """Wake this process's receivers of ``topic``: new events were committed."""
        waker = self._wakers.get(topic)
        if waker is not None:
            waker.set()

    #: Acknowledged positions are written at most this often per receiver (and on close): a
    #: crash replays at most this much, which the engine's version check makes harmless, and
    #: the commits (each an fsync with synchronous=FULL) stay off the path of state changes.
    ack_interval = 0.1

    async def receiver(
        self, topic: str, name: str, *, from_latest: bool = False, poll_interval: float = 0.5
    ) -> SqliteReceiver:
        def position(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT last_id FROM statestream_cursors WHERE topic = ? AND name = ?",
                (topic, name),
            ).fetchone()
            if row is not None:
                return int(row[0])
            if not from_latest:
                return 0
            latest = conn.execute(
                "SELECT MAX(id) FROM statestream_events WHERE topic = ?", (topic,)
            ).fetchone()
            start = int(latest[0] or 0)
            # Saved at once, so that a receiver reopened before any ack starts here too.
            conn.execute(
                "INSERT INTO statestream_cursors (topic, name, last_id, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (topic, name) DO NOTHING",
                (topic, name, start, to_us_now()),
            )
            return start

        start = await (self.db.write(position) if from_latest else self.db.read(position))
        receiver = SqliteReceiver(self, topic, name, start, poll_interval)
        self._receivers.add(receiver)
        return receiver

    async def close(self) -> None:
        for receiver in list(self._receivers):
            await receiver.close()


def to_us_now() -> int:
    return int(time.time() * 1_000_000)


class SqliteReceiver:
    """Reads one topic under one consumer name; see :class:`SqliteStreamer`."""

    def __init__(
        self, streamer: SqliteStreamer, topic: str, name: str, position: int, poll: float
    ) -> None:
        self._streamer = streamer
        self._db = streamer.db
        self.topic = topic
        self.name = name
        self._position = position
        self._poll = max(0.001, poll)
        self._closed = False
        self._close_event = asyncio.Event()
        self._acked = 0  # highest acknowledged id not yet written
        self._written = 0
        self._flusher: asyncio.Task[None] | None = None

    async def recv(self, limit: int = 100) -> list[Event]:
        if limit < 1:
            raise InvalidInput(f"limit must be >= 1, got {limit}")
        waker = self._streamer._waker(self.topic)
        while True:
            if self._closed:
                raise AdapterError(f"receiver {self.name!r} on {self.topic!r} is closed")
            waker.clear()
            args = (self.topic, self._position, limit)

            def select(conn: sqlite3.Connection, args: tuple[Any, ...] = args) -> list[Any]:
                return conn.execute(
                    "SELECT id, key, type, headers, data, created_at FROM statestream_events "
                    "WHERE topic = ? AND id > ? ORDER BY id LIMIT ?",
                    args,
                ).fetchall()

            rows = await self._db.read(select)
            if rows:
                self._position = rows[-1][0]
                return [
                    Event(
                        row[0],
                        self.topic,
                        row[1],
                        row[2],
                        json.loads(row[3]),
                        from_us(row[5]),
                        row[4],
                    )
                    for row in rows
                ]
            wake = asyncio.ensure_future(waker.wait())
            closed = asyncio.ensure_future(self._close_event.wait())
            try:
                await asyncio.wait(
                    {wake, closed}, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                wake.cancel()
                closed.cancel()

    async def ack(self, event: Event) -> None:
        """Acknowledge ``event`` and every earlier one. The position is written within
        ``SqliteStreamer.ack_interval`` (at once when the receiver closes)."""
        if event.topic != self.topic:
            raise InvalidInput(f"event of topic {event.topic!r} acked on {self.topic!r}")
        if event.id <= self._acked:
            return
        self._acked = event.id
        if self._closed:
            await self._flush()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._streamer.ack_interval)
        await self._flush()

    async def _flush(self) -> None:
        position = self._acked
        if position <= self._written:
            return
        args = (self.topic, self.name, position, to_us_now())

        def commit(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO statestream_cursors (topic, name, last_id, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (topic, name) DO UPDATE SET "
                "last_id = MAX(last_id, excluded.last_id), updated_at = excluded.updated_at",
                args,
            )

        await self._db.write(commit)
        self._written = max(self._written, position)

    async def close(self) -> None:
        """Stop receiving; the acknowledged position is written before this returns."""
        self._closed = True
        self._close_event.set()
        self._streamer._receivers.discard(self)
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await self._flush()


class SqliteLease:
    """A role held through a lease row that the holder renews; lost if renewal fails."""

    def __init__(self, scheduler: SqliteRoleScheduler, role: str, holder: str) -> None:
        self._scheduler = scheduler
        self._role = role
        self.holder = holder
        self._lost = asyncio.Event()
        self._released = False
        self._renewer = asyncio.ensure_future(self._renew())

    @property
    def role(self) -> str:
        return self._role

    async def _renew(self) -> None:
        s = self._scheduler
        while True:
            await asyncio.sleep(s.ttl / 3)
            if self._released:
                return
            try:
                held = await s._extend(self._role, self.holder)
            except Exception:
                held = False
            if not held:
                self._lost.set()
                return

    async def lost(self) -> None:
        await self._lost.wait()

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        self._lost.set()
        await self._scheduler._release(self._role, self.holder)


class SqliteRoleScheduler:
    """At most one holder per role across every process using the file, through lease rows.

    A holder renews its lease every ``ttl / 3`` seconds; a process that dies loses its roles
    after at most ``ttl`` seconds, and another process takes them over.
    """

    def __init__(self, db: SqliteDatabase, *, ttl: float = 10.0, poll_interval: float = 0.5):
        if ttl <= 0 or poll_interval <= 0:
            raise InvalidInput("ttl and poll_interval must be > 0")
        self.db = db
        self.ttl = ttl
        self.poll_interval = poll_interval
        self._released = asyncio.Event()

    async def _try(self, role: str, holder: str) -> bool:
        def take(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cursor = conn.execute(
                "INSERT INTO statestream_leases (role, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at WHERE statestream_leases.expires_at < ?",
                (role, holder, now + self.ttl, now),
            )
            return cursor.rowcount == 1

        return await self.db.write(take)

    async def _extend(self, role: str, holder: str) -> bool:
        def extend(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE statestream_leases SET expires_at = ? WHERE role = ? AND holder = ?",
                (time.time() + self.ttl, role, holder),
            )
            return cursor.rowcount == 1

        return await self.db.write(extend)

    async def _release(self, role: str, holder: str) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM statestream_leases WHERE role = ? AND holder = ?", (role, holder)
            )

        await asyncio.shield(self.db.write(release))
        self._released.set()
        self._released = asyncio.Event()

    async def acquire(self, role: str) -> SqliteLease:
        holder = uuid.uuid4().hex
        while True:
            try:
                taken = await self._try(role, holder)
            except BaseException:
                # Cancelled (or failed) while the attempt was queued: it may still commit, so
                # remove any row under our holder ID rather than block the role for a ttl.
                await asyncio.shield(self._release(role, holder))
                raise
            if taken:
                return SqliteLease(self, role, holder)
            released = self._released
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), self.poll_interval)
