"""SQLite event-table streamer."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from ..._core.records import Event, Message
from ...errors import AdapterError, InvalidInput
from ..sql._local import LocalReceivers
from ..sql._rows import check_aware, check_shard, event_from_row, headers_json, key_hash, to_us
from ._db import SqliteDatabase

__all__ = ["SqliteReceiver", "SqliteStreamer"]


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Wake:
    """What :class:`asyncio.Event` is to a receiver, with a wait bounded by the poll interval:
    one future and one timer per wait. ``asyncio.timeout`` around ``Event.wait`` cost several
    times that per event received one at a time (a Timeout object, the current task, and under
    Python 3.11 a ``getpid`` system call per look-up of the running loop, four per wait)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Return once set, or after ``timeout`` seconds."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiters = self._waiters
        waiters.append(waiter)
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            waiters.remove(waiter)


class SqliteStreamer(LocalReceivers["SqliteReceiver"]):
    """Every topic in one append-only events table, each consumer's position in a cursors table.

    A receiver reads rows after its cursor. It is woken at once when this process publishes to
    its topic, and polls every ``poll_interval`` for events published by other processes. Event
    IDs are the table's row IDs: they grow across all topics, so within a topic they grow too,
    and since writes to the file are serialised, a row is visible before any row with a higher
    ID can be.

    Each row stores ``key_hash`` (crc32 of the key, as :func:`~statestream._core.records.shard_of`):
    a receiver with ``shards > 1`` selects its shard's rows in SQL, through the topic index,
    which also holds the hash, so other shards' rows are skipped without being read. It scans
    at most :attr:`scan_window` IDs per read, so that a shard whose events are sparse never
    makes one long read on the event loop, and it commits the position it has scanned past
    (when it has nothing unacknowledged), so that an idle shard does not hold ``prune`` back.

    ``prune`` deletes what every consumer of a topic has acknowledged; without it the table
    keeps every event for ever.
    """

    #: Acknowledged positions are written at most this often per receiver (and on close): a
    #: crash replays at most this much, which the engine's version check makes harmless, and
    #: the commits (each an fsync with synchronous=FULL) stay off the path of state changes.
    ack_interval = 0.1
    #: How many event IDs a sharded receiver's read scans at most.
    scan_window = 10_000
    #: Events ``prune`` examines per transaction.
    prune_chunk = 2_000

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        super().__init__()

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        rows = [
            (
                topic,
                m.key,
                m.type,
                headers_json(m.headers),
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

    async def events_for_key(
        self, topics: Sequence[str], key: str, limit: int = 100
    ) -> list[Event]:
        """The retained events of ``topics`` with this key, oldest first (an
        :class:`~statestream.EventHistory`), on the query thread: each topic's range of the
        topic index, whose key hash skips the other keys' events without reading them."""
        if limit < 0:
            raise InvalidInput(f"limit must be >= 0, got {limit}")
        names = list(dict.fromkeys(topics))
        if not names or not limit:
            return []
        sql = (
            "SELECT id, key, type, headers, data, created_at, topic FROM statestream_events "
            f"WHERE topic IN ({', '.join('?' * len(names))}) AND key_hash = ? AND key = ? "
            "ORDER BY created_at, id LIMIT ?"
        )
        args = (*names, key_hash(key), key, limit)

        def select(conn: sqlite3.Connection) -> list[Event]:
            return [event_from_row(row[6], row) for row in conn.execute(sql, args)]

        return await self.db.query(select)

    async def receiver(
        self,
        topic: str,
        name: str,
        *,
        from_latest: bool = False,
        poll_interval: float = 0.5,
        shard: int = 0,
        shards: int = 1,
        ephemeral: bool = False,
    ) -> SqliteReceiver:
        """A receiver of ``topic`` under the consumer name ``name``, after its committed
        position; with none, at the oldest event, or after the latest with ``from_latest``
        (that start is committed at once, so that reopening before any ack starts there too).
        With ``shards > 1``, only the events whose key is in ``shard``. An ``ephemeral``
        receiver has no cursor row: it starts after the latest event, keeps its position in
        memory only, ``ack`` does nothing and it never holds back :meth:`prune`."""
        check_shard(shard, shards)
        if ephemeral:

            def latest(conn: sqlite3.Connection) -> int:
                row = conn.execute(
                    "SELECT MAX(id) FROM statestream_events WHERE topic = ?", (topic,)
                ).fetchone()
                return int(row[0] or 0)

            at = await self.db.read(latest)
            receiver = SqliteReceiver(
                self, topic, name, at, poll_interval, shard=shard, shards=shards, ephemeral=True
            )
            self._opened(receiver)
            return receiver

        def position(conn: sqlite3.Connection) -> tuple[int, bool]:
            row = conn.execute(
                "SELECT last_id FROM statestream_cursors WHERE topic = ? AND name = ?",
                (topic, name),
            ).fetchone()
            if row is not None:
                return int(row[0]), False
            if not from_latest:
                return 0, True
            latest = conn.execute(
                "SELECT MAX(id) FROM statestream_events WHERE topic = ?", (topic,)
            ).fetchone()
            start = int(latest[0] or 0)
            conn.execute(
                "INSERT INTO statestream_cursors (topic, name, last_id, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (topic, name) DO NOTHING",
                (topic, name, start, to_us_now()),
            )
            return start, True

        start, is_new = await (self.db.write(position) if from_latest else self.db.read(position))
        receiver = SqliteReceiver(
            self, topic, name, start, poll_interval, shard=shard, shards=shards, is_new=is_new
        )
        self._opened(receiver)
        return receiver

    async def prune(self, topics: Sequence[str], before: datetime) -> int:
        """Delete the events of ``topics`` created before ``before`` that every consumer with a
        committed position on the topic has acknowledged (all of them, for a topic without
        one); returns how many. A receiver open in this process counts as such a consumer at
        the position it has acknowledged, even before that position is written.

        Works through each topic's acknowledged events in ID order, :attr:`prune_chunk` per
        transaction, each bounded by the consumers' positions as they are in that transaction,
        so that state changes go on in between. The file does not shrink: SQLite reuses the
        freed pages for new rows (``VACUUM`` gives them back to the file system).
        """
        check_aware("before", before)
        at = to_us(before)
        total = 0
        for topic in dict.fromkeys(topics):
            # Ephemeral receivers (wait_for's) keep no position and never hold prune back.
            local = [r for r in self._receivers.get(topic, ()) if not r.ephemeral]
            # This process's receivers write their positions lazily: bring their rows up to
            # date first, so that a row behind its receiver's acks does not hold prune back.
            await asyncio.gather(*(r._flush() for r in local))
            bound = min((r._acked for r in local), default=_MAX_ID)
            total += await self.db.delete_in_chunks(
                "statestream_events",
                scope="topic = ? AND id <= ? AND id <= COALESCE((SELECT MIN(last_id) "
                f"FROM statestream_cursors WHERE topic = ?), {_MAX_ID})",
                scope_args=(topic, bound, topic),
                condition="created_at < ?",
                condition_args=(at,),
                chunk=self.prune_chunk,
            )
        return total

    async def forget(self, topic: str, keep: Collection[str], before: datetime) -> list[str]:
        """Delete the positions on ``topic`` of names not in ``keep`` committed before
        ``before`` (wall-clock time of the commit); returns the names. Receivers open in this
        process are kept whatever their name."""
        check_aware("before", before)
        kept = set(keep) | {r.name for r in self._receivers.get(topic, ())}
        at = to_us(before)

        def delete(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT name FROM statestream_cursors WHERE topic = ? AND updated_at < ?",
                (topic, at),
            ).fetchall()
            gone = [str(name) for (name,) in rows if name not in kept]
            conn.executemany(
                "DELETE FROM statestream_cursors WHERE topic = ? AND name = ? AND updated_at < ?",
                [(topic, name, at) for name in gone],
            )
            return gone

        return await self.db.write(delete)

    async def close(self) -> None:
        for receivers in list(self._receivers.values()):
            for receiver in list(receivers):
                await receiver.close()


_MAX_ID = 2**63 - 1


def to_us_now() -> int:
    return int(time.time() * 1_000_000)


_SELECT = "SELECT id, key, type, headers, data, created_at FROM statestream_events"


class SqliteReceiver:
    """Reads one topic (or one shard of it) under one consumer name; see
    :class:`SqliteStreamer`.

    ``is_new`` is true when the consumer name had no committed position when the receiver
    opened (it started at the oldest event, or at the latest with ``from_latest``).
    """

    #: At most this many handed events are held; past it the receiver reads the table.
    hand_limit = 1_000

    def __init__(
        self,
        streamer: SqliteStreamer,
        topic: str,
        name: str,
        position: int,
        poll: float,
        *,
        shard: int = 0,
        shards: int = 1,
        is_new: bool = False,
        ephemeral: bool = False,
    ) -> None:
        self._streamer = streamer
        self.ephemeral = ephemeral
        self._db = streamer.db
        self.topic = topic
        self.name = name
        self.shard = shard
        self.shards = shards
        self.is_new = is_new
        self._position = position  # every event of ours up to here has been returned
        self._delivered = position  # the last event returned (or the start)
        self._poll = max(0.001, poll)
        self._closed = False
        self._wake = _Wake()  # set by a publish to the topic in this process, and close
        #: the last read returned fewer rows than asked and nothing waits beyond its window
        self._drained = False
        #: events handed over by this process's writes, in ID order, following the position
        self._handed: list[Event] = []
        #: the table may hold events of ours that are not handed: read it before waiting
        self._stale = False
        self._acked = position  # highest acknowledged id, written or not
        self._written = position
        self._flusher: asyncio.Task[None] | None = None

    async def recv(self, limit: int = 100) -> list[Event]:
        if limit < 1:
            raise InvalidInput(f"limit must be >= 1, got {limit}")
        while True:
            if self._closed:
                raise AdapterError(f"receiver {self.name!r} on {self.topic!r} is closed")
            handed = self._handed
            if handed:
                if len(handed) <= limit:
                    events, self._handed = handed, []
                else:
                    events, self._handed = handed[:limit], handed[limit:]
                self._position = self._delivered = events[-1].id
                self._drained = not self._handed
                if self._drained and not self._stale:
                    self._wake.clear()  # what woke it is returned here: nothing to read
                return events
            if self._drained:
                # The last read returned everything there was: unless this process published
                # since, read again only after the poll interval, as after an empty read.
                self._drained = False
                if not self._wake.is_set():
                    await self._wake.wait(self._poll)
                    continue
            self._wake.clear()
            self._stale = False
            if self.shards == 1:
                rows = await self._db.read(self._select_all(limit))
                more = False
                if rows:
                    self._position = rows[-1][0]
            else:
                rows, self._position, more = await self._db.read(self._select_shard(limit))
            if rows:
                self._delivered = rows[-1][0]
                self._drained = not more and len(rows) < limit
                topic = self.topic
                return [event_from_row(topic, row) for row in rows]
            if self._acked >= self._delivered and self._position > self._delivered:
                # Everything returned is acknowledged, and the IDs scanned since hold nothing
                # of ours: acknowledge them too, so that this shard does not hold prune back.
                self._ack_to(self._position)
            if more:
                await asyncio.sleep(0)  # the next window at once, letting others run first
                continue
            await self._wake.wait(self._poll)

    def _hand(self, event: Event, previous: int) -> None:
        """Take ``event`` (see :meth:`~..sql._local.LocalReceivers.hand`) if it follows what
        this receiver has read or holds, ``previous`` being exactly that: no other event of
        the topic lies between, since the file's writes are serialised and IDs are assigned in
        commit order. Otherwise drop what it holds and read the table next time."""
        if self._closed:
            return
        handed = self._handed
        last = handed[-1].id if handed else self._position
        if event.id <= last:
            return  # already read (its commit came before this receiver's last read)
        if self.shards == 1 and previous == last and len(handed) < self.hand_limit:
            handed.append(event)
        else:
            handed.clear()
            self._stale = True
        self._wake.set()

    def _select_all(self, limit: int) -> Callable[[sqlite3.Connection], list[Any]]:
        args = (self.topic, self._position, limit)

        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                f"{_SELECT} WHERE topic = ? AND id > ? ORDER BY id LIMIT ?", args
            ).fetchall()

        return select

    def _select_shard(
        self, limit: int
    ) -> Callable[[sqlite3.Connection], tuple[list[Any], int, bool]]:
        """Read this shard's events in the next window of IDs: the rows, the position scanned
        up to, and whether more IDs wait beyond it."""
        start = self._position
        window = self._streamer.scan_window
        topic, shards, shard = self.topic, self.shards, self.shard

        def select(conn: sqlite3.Connection) -> tuple[list[Any], int, bool]:
            # Every ID up to the table's maximum is committed (writes are serialised, and an ID
            # is never reused), so the range up to it can be scanned once and for all.
            top = conn.execute("SELECT MAX(id) FROM statestream_events").fetchone()[0] or 0
            end = min(start + window, top)
            if end <= start:
                return [], start, False
            rows = conn.execute(
                f"{_SELECT} WHERE topic = ? AND id > ? AND id <= ? AND key_hash % ? = ? "
                "ORDER BY id LIMIT ?",
                (topic, start, end, shards, shard, limit),
            ).fetchall()
            if len(rows) == limit:
                return rows, rows[-1][0], True
            return rows, end, end < top

        return select

    async def ack(self, event: Event) -> None:
        """Acknowledge ``event`` and every earlier one. The position is written within
        ``SqliteStreamer.ack_interval`` (at once when the receiver closes)."""
        if event.topic != self.topic:
            raise InvalidInput(f"event of topic {event.topic!r} acked on {self.topic!r}")
        if self.ephemeral:
            return
        # Acking the last event returned acks the rest of what was scanned: none of it is ours.
        self._ack_to(self._position if event.id >= self._delivered else event.id)
        if self._closed:
            await self._flush()

    def _ack_to(self, position: int) -> None:
        if position <= self._acked:
            return
        self._acked = position
        if not self._closed and (self._flusher is None or self._flusher.done()):
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
        self._wake.set()
        self._streamer._forget(self)
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await self._flush()
