"""MySQL event-table streamer: every topic in one events table, each consumer's position in a
cursors table.

Gap safety. An ``AUTO_INCREMENT`` ID is taken when a row is inserted, not when its transaction
commits, so a reader that has seen ID 8 may later find ID 7 committed: a reader that moved its
position past 8 would skip 7 for ever. MySQL has no view of running transactions to read below
(PostgreSQL's ``pg_snapshot_xmin``). So IDs are not taken from ``AUTO_INCREMENT``: every writing
transaction takes its IDs from the one row of ``event_seq`` (``UPDATE ... SET n =
LAST_INSERT_ID(n + k)``), which it holds locked until it commits. InnoDB makes a transaction's
rows visible before it releases its locks, so a transaction with higher IDs can only take the
row, let alone commit, after every transaction with lower IDs has committed: IDs become visible
in order, and a reader that has read up to an ID has seen every lower one that will ever exist.
The lock is held only while the server runs the batch's statements (sent in one packet), not
across a round trip, and InnoDB releases it before the log flush of the commit.

Wake-ups: a receiver is woken at once when this process writes to its topic (and handed the
event when nothing lies between, without a read); for other processes' writes it polls, with a
short interval that doubles while nothing comes (:attr:`MysqlStreamer.min_poll` up to the
receiver's ``poll_interval``, at most :attr:`MysqlStreamer.max_poll`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from ..._core.records import Event, Message
from ...errors import AdapterError, InvalidInput
from ..sql._local import LocalReceivers
from ..sql._rows import check_aware, check_shard
from ._db import Bind, MysqlDatabase
from ._rows import (
    EVENT_COLUMNS,
    encode,
    event_from_row,
    fits,
    headers_json,
    key_hash,
    text,
    to_us,
)

__all__ = ["MysqlReceiver", "MysqlStreamer"]

_MAX_ID = 2**63 - 1


def _now_us() -> int:
    return int(time.time() * 1_000_000)


class MysqlStreamer(LocalReceivers["MysqlReceiver"]):
    """Publishes to and reads from the events table of a :class:`MysqlDatabase` (see the
    module for how IDs are kept free of gaps).

    ``prune`` deletes what every consumer of a topic has acknowledged; without it the table
    keeps every event for ever.
    """

    #: Acknowledged positions are written at most this often per receiver (and on close): a
    #: crash replays at most this much, which the engine's version check makes harmless. Each
    #: write is a commit (a log flush), so this bounds what acknowledging costs the server.
    ack_interval = 0.5
    #: How often a receiver that has acknowledged everything it returned, and whose reads find
    #: nothing of its own, moves its position up to what it has scanned (past other topics'
    #: and shards' IDs), so that it does not hold ``prune`` back. Rarely: on a busy database
    #: every empty read moves it, and writing each move would be one commit per poll.
    idle_ack_interval = 10.0
    #: How many event IDs a sharded receiver's read scans at most.
    scan_window = 10_000
    #: Events ``prune`` deletes per statement.
    prune_chunk = 2_000
    #: The first poll interval after a read found nothing (it doubles from there).
    min_poll = 0.005
    #: The longest poll interval, whatever the receiver's ``poll_interval``.
    max_poll = 0.2

    def __init__(self, db: MysqlDatabase) -> None:
        self.db = db
        super().__init__()
        #: Receivers with an acknowledged position not yet written: one statement (one
        #: commit) writes them all, every ack_interval, whatever the number of receivers.
        self._dirty: set[MysqlReceiver] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._sleeping = False

    def _acked(self, receiver: MysqlReceiver) -> None:
        self._dirty.add(receiver)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        self._sleeping = True
        try:
            await asyncio.sleep(self.ack_interval)
        finally:
            self._sleeping = False
        await self._flush_dirty()

    def _clean(self, receiver: MysqlReceiver) -> None:
        """``receiver`` writes its own position (it closes): nothing left to write, the
        waiting flush is dropped."""
        self._dirty.discard(receiver)
        flusher = self._flusher
        if not self._dirty and self._sleeping and flusher is not None and not flusher.done():
            flusher.cancel()
            self._flusher = None

    async def _flush_dirty(self) -> None:
        """Write the acknowledged positions of the receivers that moved, in one statement."""
        dirty, self._dirty = self._dirty, set()
        due = [(r, r._acked) for r in dirty if r._acked > r._written and not r.ephemeral]
        if not due:
            return
        now = _now_us()
        rows = [(r._t, r._n, position, now) for r, position in due]

        def build(bind: Bind) -> list[str]:
            values = ", ".join(bind("(%s, %s, %s, %s)", row) for row in rows)
            return [
                f"INSERT INTO {self.db.prefix}cursors (topic, name, last_id, updated_at) "
                f"VALUES {values} ON DUPLICATE KEY UPDATE last_id = GREATEST(last_id, "
                "VALUES(last_id)), updated_at = VALUES(updated_at)"
            ]

        await self.db.script(build, transaction=False, idempotent=True)
        for r, position in due:
            r._written = max(r._written, position)

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        t = encode("topic", topic)
        rows = [
            (
                i + 1,
                t,
                encode("event key", m.key),
                m.type,
                headers_json(m.headers),
                m.data,
                to_us(m.created_at),
                key_hash(m.key),
            )
            for i, m in enumerate(messages)
        ]
        p = self.db.prefix
        k = len(rows)

        def build(bind: Bind) -> list[str]:
            values = ", ".join(
                bind("(@statestream_base + %s, %s, %s, %s, %s, %s, %s, %s)", row) for row in rows
            )
            return [
                f"UPDATE {p}event_seq SET n = LAST_INSERT_ID(n + {k}) WHERE id = 1",
                f"SET @statestream_base = LAST_INSERT_ID() - {k}",
                f"INSERT INTO {p}events (id, topic, `key`, type, headers, data, created_at, "
                f"key_hash) VALUES {values}",
            ]

        await self.db.script(build)
        self.wake(topic)

    async def _top(self) -> int:
        """The highest event ID taken: every ID up to it is committed or never will be."""
        rows = await self.db.fetch(f"SELECT n FROM {self.db.prefix}event_seq WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    async def events_for_key(
        self, topics: Sequence[str], key: str, limit: int = 100
    ) -> list[Event]:
        """The retained events of ``topics`` with this key, oldest first (an
        :class:`~statestream.EventHistory`): each topic's range of the topic key, whose key
        hash skips the other keys' events without reading them."""
        if limit < 0:
            raise InvalidInput(f"limit must be >= 0, got {limit}")
        names = [t for t in (fits("topic", n) for n in dict.fromkeys(topics)) if t is not None]
        try:
            wanted = key.encode("utf-8")
        except UnicodeEncodeError:
            return []
        if not names or not limit:
            return []
        rows = await self.db.fetch(
            f"SELECT {EVENT_COLUMNS}, topic FROM {self.db.prefix}events "
            f"WHERE topic IN ({', '.join(['%s'] * len(names))}) AND key_hash = %s "
            "AND `key` = %s ORDER BY created_at, id LIMIT %s",
            (*names, key_hash(key), wanted, limit),
        )
        return [event_from_row(text(row[6]), row) for row in rows]

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
    ) -> MysqlReceiver:
        """A receiver of ``topic`` under the consumer name ``name``, after its committed
        position; with none, at the oldest event, or after the latest with ``from_latest``
        (that start is committed at once). With ``shards > 1``, only the events whose key is
        in ``shard``. An ``ephemeral`` receiver has no cursor row: it starts after the latest
        event, ``ack`` does nothing and it never holds back :meth:`prune`."""
        check_shard(shard, shards)
        t = encode("topic", topic)
        n = encode("consumer name", name)
        if ephemeral:
            receiver = MysqlReceiver(
                self,
                topic,
                name,
                await self._top(),
                poll_interval,
                shard=shard,
                shards=shards,
                ephemeral=True,
            )
        else:
            p = self.db.prefix
            rows = await self.db.fetch(
                f"SELECT last_id FROM {p}cursors WHERE topic = %s AND name = %s", (t, n)
            )
            is_new = not rows
            if rows:
                start = int(rows[0][0])
            elif from_latest:
                start = await self._top()
                await self.db.execute(
                    f"INSERT IGNORE INTO {p}cursors (topic, name, last_id, updated_at) "
                    "VALUES (%s, %s, %s, %s)",
                    (t, n, start, _now_us()),
                    idempotent=True,
                )
                rows = await self.db.fetch(
                    f"SELECT last_id FROM {p}cursors WHERE topic = %s AND name = %s", (t, n)
                )
                start = int(rows[0][0]) if rows else start
            else:
                start = 0
            receiver = MysqlReceiver(
                self,
                topic,
                name,
                start,
                poll_interval,
                shard=shard,
                shards=shards,
                is_new=is_new,
            )
        self._opened(receiver)
        return receiver

    async def prune(self, topics: Sequence[str], before: datetime) -> int:
        """Delete the events of ``topics`` created before ``before`` that every consumer with
        a committed position on the topic has acknowledged (all of them, for a topic without
        one); returns how many. A receiver open in this process counts at the position it has
        acknowledged. Deletes :attr:`prune_chunk` rows per statement."""
        check_aware("before", before)
        at = to_us(before)
        p = self.db.prefix
        total = 0
        for topic in dict.fromkeys(topics):
            t = fits("topic", topic)
            if t is None:
                continue
            local = [r for r in self._receivers.get(topic, ()) if not r.ephemeral]
            await asyncio.gather(*(r._flush() for r in local))
            bound = min((r._acked for r in local), default=_MAX_ID)
            rows = await self.db.fetch(
                f"SELECT MIN(last_id) FROM {p}cursors WHERE topic = %s", (t,)
            )
            if rows and rows[0][0] is not None:
                bound = min(bound, int(rows[0][0]))
            while True:
                deleted = await self.db.execute(
                    f"DELETE FROM {p}events WHERE topic = %s AND id <= %s AND created_at < %s "
                    f"ORDER BY id LIMIT {int(self.prune_chunk)}",
                    (t, bound, at),
                    idempotent=True,
                )
                total += deleted
                if deleted < self.prune_chunk:
                    break
        return total

    async def forget(self, topic: str, keep: Collection[str], before: datetime) -> list[str]:
        """Delete the positions on ``topic`` of names not in ``keep`` committed before
        ``before``; returns the names. Receivers open in this process are kept."""
        check_aware("before", before)
        t = fits("topic", topic)
        if t is None:
            return []
        kept = set(keep) | {r.name for r in self._receivers.get(topic, ())}
        at = to_us(before)
        p = self.db.prefix
        rows = await self.db.fetch(
            f"SELECT name FROM {p}cursors WHERE topic = %s AND updated_at < %s", (t, at)
        )
        gone = [text(name) for (name,) in rows if text(name) not in kept]
        for name in gone:
            await self.db.execute(
                f"DELETE FROM {p}cursors WHERE topic = %s AND name = %s AND updated_at < %s",
                (t, name.encode(), at),
                idempotent=True,
            )
        return gone

    async def close(self) -> None:
        for receivers in list(self._receivers.values()):
            for receiver in list(receivers):
                await receiver.close()
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher


class MysqlReceiver:
    """Reads one topic (or one shard of it) under one consumer name; see
    :class:`MysqlStreamer`."""

    #: At most this many handed events are held; past it the receiver reads the table.
    hand_limit = 1_000

    def __init__(
        self,
        streamer: MysqlStreamer,
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
        self._db = streamer.db
        self.ephemeral = ephemeral
        self.topic = topic
        self.name = name
        self._t = topic.encode()
        self._n = name.encode()
        self.shard = shard
        self.shards = shards
        self.is_new = is_new
        self._position = position  # every event of ours up to here has been returned
        self._delivered = position  # the last event returned (or the start)
        self._max_poll = max(0.001, min(poll, streamer.max_poll))
        self._delay = min(streamer.min_poll, self._max_poll)
        self._closed = False
        self._wake = asyncio.Event()
        #: the last return held everything known: the next read waits for the poll interval
        self._drained = False
        self._handed: list[Event] = []
        self._stale = False
        self._acked = position
        self._written = position
        self._idle_acked = time.monotonic()

    async def recv(self, limit: int = 100) -> list[Event]:
        if limit < 1:
            raise InvalidInput(f"limit must be >= 1, got {limit}")
        while True:
            if self._closed:
                raise AdapterError(f"receiver {self.name!r} on {self.topic!r} is closed")
            handed = self._handed
            if handed:
                events, self._handed = handed[:limit], handed[limit:]
                self._position = self._delivered = events[-1].id
                self._drained = not self._handed
                if self._drained and not self._stale:
                    self._wake.clear()  # what woke it is returned here: nothing to read
                return events
            if self._drained:
                # The last return was everything known: unless this process writes to the
                # topic meanwhile, read again only after the poll interval.
                self._drained = False
                if not self._wake.is_set():
                    await self._pause()
                    continue
            self._wake.clear()
            self._stale = False
            if self.shards == 1:
                rows = await self._db.fetch(
                    f"SELECT {EVENT_COLUMNS} FROM {self._db.prefix}events WHERE topic = %s "
                    "AND id > %s ORDER BY id LIMIT %s",
                    (self._t, self._position, limit),
                )
                more = len(rows) == limit
                if rows:
                    self._position = max(self._position, int(rows[-1][0]))
            else:
                rows, more = await self._read_shard(limit)
            if self._closed:
                raise AdapterError(f"receiver {self.name!r} on {self.topic!r} is closed")
            if rows:
                self._delivered = int(rows[-1][0])
                self._delay = self._streamer.min_poll  # activity: poll closely again
                self._drop_handed()
                self._drained = not more and not self._handed
                return [event_from_row(self.topic, row) for row in rows]
            if self._acked >= self._delivered and self._position > self._delivered:
                # Everything returned is acknowledged and the IDs scanned since hold nothing
                # of ours: acknowledge them too (every idle_ack_interval), so that this shard
                # does not hold prune back.
                self._idle_ack()
            if more:
                await asyncio.sleep(0)
                continue
            await self._pause()

    async def _pause(self) -> None:
        """Wait for a write of this process to the topic, or the poll interval, which doubles
        while reads find nothing (from :attr:`MysqlStreamer.min_poll`)."""
        delay = self._delay
        self._delay = min(delay * 2, self._max_poll)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    def _drop_handed(self) -> None:
        """Events handed while a read was on its way: keep those after what it returned."""
        self._handed = [e for e in self._handed if e.id > self._position]

    async def _read_shard(self, limit: int) -> tuple[tuple[tuple[Any, ...], ...], bool]:
        """This shard's events in the next window of IDs, and whether more IDs wait beyond
        it; moves the position to what was scanned."""
        start = self._position
        window = self._streamer.scan_window
        p = self._db.prefix
        args = (self._t, start, start + window, self.shards, self.shard, limit)

        def build(bind: Bind) -> list[str]:
            return [
                f"SELECT @statestream_top := n FROM {p}event_seq WHERE id = 1",
                bind(
                    f"SELECT {EVENT_COLUMNS} FROM {p}events WHERE topic = %s AND id > %s "
                    "AND id <= LEAST(%s, @statestream_top) AND key_hash %% %s = %s "
                    "ORDER BY id LIMIT %s",
                    args,
                ),
            ]

        results = await self._db.script(build, transaction=False, idempotent=True)
        top = int(results[0].rows[0][0]) if results[0].rows else 0
        rows = results[1].rows or ()
        end = min(start + window, top)
        if len(rows) == limit:
            self._position = int(rows[-1][0])
            return rows, True
        self._position = max(start, end)
        return rows, end < top

    def _hand(self, event: Event, previous: int) -> None:
        if self._closed:
            return
        handed = self._handed
        last = handed[-1].id if handed else self._position
        if event.id <= last:
            return
        if self.shards == 1 and previous <= last and len(handed) < self.hand_limit:
            handed.append(event)
        else:
            handed.clear()
            self._stale = True
        self._wake.set()

    async def ack(self, event: Event) -> None:
        """Acknowledge ``event`` and every earlier one. The position is written within
        ``MysqlStreamer.ack_interval`` (at once when the receiver closes)."""
        if event.topic != self.topic:
            raise InvalidInput(f"event of topic {event.topic!r} acked on {self.topic!r}")
        if self.ephemeral:
            return
        self._ack_to(self._position if event.id >= self._delivered else event.id)
        if self._closed:
            await self._flush()

    def _idle_ack(self) -> None:
        now = time.monotonic()
        if now - self._idle_acked < self._streamer.idle_ack_interval:
            return
        self._idle_acked = now
        self._ack_to(self._position)

    def _ack_to(self, position: int) -> None:
        if position <= self._acked:
            return
        self._acked = position
        if not self._closed:
            self._streamer._acked(self)

    async def _flush(self) -> None:
        position = self._acked
        if position <= self._written or self.ephemeral:
            return
        await self._db.execute(
            f"INSERT INTO {self._db.prefix}cursors (topic, name, last_id, updated_at) "
            "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
            "last_id = GREATEST(last_id, VALUES(last_id)), updated_at = VALUES(updated_at)",
            (self._t, self._n, position, _now_us()),
            idempotent=True,
        )
        self._written = max(self._written, position)

    async def close(self) -> None:
        """Stop receiving; the acknowledged position is written before this returns."""
        self._closed = True
        self._wake.set()
        self._streamer._forget(self)
        self._streamer._clean(self)
        await self._flush()
