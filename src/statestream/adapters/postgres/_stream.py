"""PostgreSQL event-table streamer: LISTEN/NOTIFY wake-ups, gap-free reads."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from ..._core.records import Event, Message
from ...errors import AdapterError, InvalidInput
from ..sql._rows import (
    check_aware,
    check_shard,
    check_text,
    event_from_row,
    headers_json,
    key_hash,
    to_us,
)
from ._db import PostgresDatabase

__all__ = ["PostgresReceiver", "PostgresStreamer"]

log = logging.getLogger("statestream.postgres")

_MAX = 2**63 - 1
_HORIZON = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


def _read_statement(shard: str) -> str:
    """A receiver's read: the rows after its position, each with the horizon below which it may
    deliver them.

    The horizon is the oldest transaction running at the statement's snapshot
    (``pg_snapshot_xmin``). Only when a row lies at or above it, it is refined, in the same
    snapshot: a running transaction of *another database* of the cluster can never write our
    table, so it does not hold delivery back. A transaction is known to be another database's
    only when the server's activity list says so (its ID matched to a backend of another
    database); any other (one that ended meanwhile, a prepared one, an unreadable entry) still
    counts, so that the refinement never lets a row of ours be passed."""
    return (
        "WITH s AS (SELECT pg_current_snapshot() AS snap), r AS ("
        "SELECT id, key, type, headers, data, created_at, tx FROM {prefix}events "
        f"WHERE topic = $1 AND (tx, id) > ($2::bigint, $3::bigint){shard} "
        "ORDER BY tx, id LIMIT $4) "
        "SELECT r.id, r.key, r.type, r.headers, r.data, r.created_at, r.tx, "
        "CASE WHEN coalesce((SELECT max(tx) FROM r), 0) < pg_snapshot_xmin(s.snap)::text::bigint "
        "THEN pg_snapshot_xmin(s.snap)::text::bigint "
        "ELSE (SELECT coalesce(min(x::text::bigint), pg_snapshot_xmax(s.snap)::text::bigint) "
        "FROM pg_snapshot_xip(s.snap) AS x WHERE NOT EXISTS (SELECT 1 FROM "
        "pg_stat_get_activity(NULL) a WHERE a.backend_xid::text::bigint = "
        "(x::text::bigint & 4294967295) AND a.datid IS NOT NULL AND a.datid <> "
        "(SELECT oid FROM pg_database WHERE datname = current_database()))) END "
        # Always one row at least (an empty read still gives the horizon: r's fields NULL).
        "FROM s LEFT JOIN r ON true ORDER BY r.tx, r.id"
    )


def _now_us() -> int:
    return int(time.time() * 1_000_000)


class PostgresStreamer:
    """Every topic in one events table, each consumer's position in a cursors table.

    **No event is skipped when transactions commit out of order.** Event IDs come from an
    identity column, so a transaction may take ID 7, another take ID 8 and commit first: a
    reader that moved its position to 8 would never see 7. Each row therefore also stores its
    writing transaction's ID (``tx``, 64-bit ``pg_current_xact_id()``), and a receiver reads in
    ``(tx, id)`` order only the rows below the *horizon*: the oldest transaction still running
    when its read's snapshot was taken (``pg_snapshot_xmin``). Every transaction below the
    horizon has ended, so no row below it can appear later, and the position ``(tx, id)`` never
    passes a row still to come. The price: a transaction of this database that stays open
    holds back delivery of every event written after it began until it ends; keep
    transactions short (``idle_in_transaction_session_timeout`` bounds forgotten ones).
    Transactions of other databases of the server are recognised (through the server's
    activity list, in the read's own snapshot) and do not hold delivery back. Within one
    writer's transactions delivery is in ID order; across concurrent writers it is in ``(tx,
    id)`` order, so IDs are unique and grow with each writer, but are not sorted across
    writers.

    **Wake-ups.** Writes notify ``<prefix>events`` (payload: the topic) in their own
    transaction; a receiver is woken by that notification (one LISTEN connection per
    streamer), at once by a write of this process, and polls every ``poll_interval`` as a
    safety net (a lost LISTEN connection is reopened with backoff). A read that finds rows
    above the horizon (a concurrent transaction not yet ended) reads again after a few
    milliseconds, doubling up to ``poll_interval``.

    Sharded receivers select ``key_hash % shards = shard`` in SQL. ``prune`` deletes what
    every consumer of a topic has acknowledged; a receiver that has acknowledged everything it
    returned commits the position it has read up to (the horizon) every
    :attr:`idle_ack_interval`, so that an idle shard does not hold it back.
    """

    #: Acknowledged positions are written at most this often per receiver (and on close): a
    #: crash replays at most this much, which the engine's version check makes harmless.
    ack_interval = 0.5
    #: Events ``prune`` deletes per statement.
    prune_chunk = 2_000
    #: How often an idle receiver (everything it returned acknowledged) commits the position
    #: it has read up to, so that it does not hold ``prune`` back.
    idle_ack_interval = 10.0
    #: How long a ``from_latest`` receiver waits, when it opens, for the transactions older
    #: than the topic's latest event to end (see :meth:`_latest_position`).
    start_wait = 2.0

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self._receivers: dict[str, set[PostgresReceiver]] = {}
        self._listener: Any = None  # the LISTEN connection
        self._listening: asyncio.Task[None] | None = None
        self._listen_lock: asyncio.Lock | None = None
        self._closed = False
        #: Server process IDs of this process's connections that wrote events (their
        #: notifications are left out: the writes woke the receivers at once).
        self._own: set[int] = set()
        sql = db.sql
        self._publish = sql(
            "WITH ev AS (INSERT INTO {prefix}events (topic, key, type, headers, data, "
            "created_at, key_hash) SELECT $1, k, t, h, d, c, kh FROM unnest($2::text[], "
            "$3::bigint[], $4::text[], $5::bytea[], $6::bigint[], $7::bigint[]) WITH ORDINALITY "
            "AS u(k, t, h, d, c, kh, n) ORDER BY n RETURNING 1) "
            "SELECT (SELECT count(*) FROM ev), pg_notify($8, $9), pg_backend_pid()"
        )
        self._select = sql(_read_statement(""))
        self._select_shard = sql(_read_statement(" AND key_hash % $5 = $6"))
        self._start = sql(
            f"SELECT {_HORIZON}, (SELECT tx FROM {{prefix}}events WHERE topic = $1 "
            "ORDER BY tx DESC, id DESC LIMIT 1), (SELECT id FROM {prefix}events "
            "WHERE topic = $1 ORDER BY tx DESC, id DESC LIMIT 1)"
        )
        self._horizon = f"SELECT {_HORIZON}"
        self._above = sql(
            "SELECT ARRAY(SELECT id FROM {prefix}events WHERE topic = $1 AND tx >= $2)"
        )
        self._cursor = sql(
            "SELECT last_tx, last_id FROM {prefix}cursors WHERE topic = $1 AND name = $2"
        )
        self._insert_cursor = sql(
            "INSERT INTO {prefix}cursors (topic, name, last_tx, last_id, updated_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (topic, name) DO NOTHING RETURNING 1"
        )
        self._commit = sql(
            "INSERT INTO {prefix}cursors AS c (topic, name, last_tx, last_id, updated_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (topic, name) DO UPDATE SET "
            "last_tx = CASE WHEN (c.last_tx, c.last_id) < (excluded.last_tx, excluded.last_id) "
            "THEN excluded.last_tx ELSE c.last_tx END, "
            "last_id = CASE WHEN (c.last_tx, c.last_id) < (excluded.last_tx, excluded.last_id) "
            "THEN excluded.last_id ELSE c.last_id END, updated_at = excluded.updated_at"
        )
        db.streamers.add(self)

    # ------------------------------------------------------------ publishing

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        check_text("the topic", topic)
        for m in messages:
            check_text("an event's key", m.key)
        payload = topic if len(topic.encode("utf-8", "surrogatepass")) < 4000 else ""
        rows = await self.db.fetch(
            self._publish,
            topic,
            [m.key for m in messages],
            [m.type for m in messages],
            [headers_json(m.headers) for m in messages],
            [m.data for m in messages],
            [to_us(m.created_at) for m in messages],
            [key_hash(m.key) for m in messages],
            self.db.channel,
            payload,
            idempotent=False,
        )
        self.wrote(topic, (rows[0][2],))

    def wrote(self, topic: str, backends: Collection[int]) -> None:
        """This process committed events to ``topic`` on the server processes ``backends``: wake
        its receivers now, without waiting for the notification.

        The notifications of this process's own connections are then left out (see
        :meth:`_notified`): a receiver is woken once per write either way, never twice (a
        second wake-up would cost it a read that finds nothing)."""
        self._own.update(backends)
        self.wake(topic)

    def wake(self, topic: str) -> None:
        """Wake this process's receivers of ``topic`` ("": all): new events were committed."""
        if topic:
            for receiver in self._receivers.get(topic, ()):
                receiver._wake.set()
        else:
            for receivers in self._receivers.values():
                for receiver in receivers:
                    receiver._wake.set()

    def receiving(self, topic: str) -> bool:
        return topic in self._receivers

    # ------------------------------------------------------------ LISTEN

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if pid in self._own:
            # A write of this process, which woke its receivers when it returned. (Were its
            # outcome lost with the connection, the safety poll finds its events; a server
            # process ID reused by another client after ours closed costs it the same.)
            return
        self.wake(payload)

    async def _listen(self) -> None:
        """Open the LISTEN connection if it is not open; on failure, receivers poll."""
        if self._closed or (self._listener is not None and not self._listener.is_closed()):
            return
        if self._listen_lock is None:
            self._listen_lock = asyncio.Lock()
        async with self._listen_lock:
            if self._closed or (self._listener is not None and not self._listener.is_closed()):
                return
            await self.db.open()
            conn = await self.db.connect()
            try:
                await conn.add_listener(self.db.channel, self._notified)
                conn.add_termination_listener(self._lost_listener)
            except BaseException:
                await conn.close()
                raise
            self._listener = conn
            self.wake("")  # notifications may have been missed while it was closed

    def _lost_listener(self, conn: Any) -> None:
        if self._closed or conn is not self._listener:
            return
        log.warning("statestream: lost the LISTEN connection to %s; reconnecting", self.db.where)
        if self._listening is None or self._listening.done():
            self._listening = asyncio.ensure_future(self._relisten())

    async def _relisten(self) -> None:
        delay = 0.05
        since = time.monotonic()
        while not self._closed and self._receivers:
            try:
                await self._listen()
                log.info(
                    "statestream: LISTEN on %s again after %.1f s",
                    self.db.where,
                    time.monotonic() - since,
                )
                return
            except Exception as exc:
                # Once per attempt: at DEBUG (the database logs the outage, rate-limited).
                log.debug(
                    "statestream: LISTEN on %s failed (%s); retrying in %.2f s",
                    self.db.where,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------ receivers

    async def events_for_key(
        self, topics: Sequence[str], key: str, limit: int = 100
    ) -> list[Event]:
        """The retained events of ``topics`` with this key, oldest first (an
        :class:`~statestream.EventHistory`): each topic's range of the topic index, whose
        key hash (included in it) skips the other keys' events without reading them."""
        if limit < 0:
            raise InvalidInput(f"limit must be >= 0, got {limit}")
        names = list(dict.fromkeys(topics))
        if not names or not limit:
            return []
        rows = await self.db.fetch(
            self.db.sql(
                "SELECT id, key, type, headers, data, created_at, topic FROM {prefix}events "
                "WHERE topic = ANY($1::text[]) AND key_hash = $2 AND key = $3 "
                "ORDER BY created_at, id LIMIT $4"
            ),
            names,
            key_hash(key),
            key,
            limit,
        )
        return [event_from_row(row[6], row) for row in rows]

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
    ) -> PostgresReceiver:
        check_shard(shard, shards)
        check_text("the topic", topic)
        check_text("the consumer name", name)
        if self._closed:
            raise AdapterError("the PostgresStreamer is closed")
        try:
            await self._listen()
        except Exception as exc:
            log.warning(
                "statestream: LISTEN on %s failed (%s): receivers poll until it is back",
                self.db.where,
                exc,
            )
            self._lost_listener(self._listener)
        is_new = False
        skip: set[int] = set()
        position = (0, 0)
        row = None if ephemeral else await self.db.fetchrow(self._cursor, topic, name)
        if row is not None:
            position = (row[0], row[1])
        elif from_latest or ephemeral:
            position, skip = await self._latest_position(topic)
            is_new = True
            if not ephemeral:
                inserted = await self.db.fetchval(
                    self._insert_cursor, topic, name, position[0], position[1], _now_us()
                )
                if inserted is None:  # another process committed a position meanwhile
                    row = await self.db.fetchrow(self._cursor, topic, name)
                    position, skip, is_new = (row[0], row[1]), set(), False
        else:
            is_new = True
        receiver = PostgresReceiver(
            self,
            topic,
            name,
            position,
            poll_interval,
            shard=shard,
            shards=shards,
            is_new=is_new,
            ephemeral=ephemeral,
            skip=skip,
        )
        self._receivers.setdefault(topic, set()).add(receiver)
        return receiver

    async def _latest_position(self, topic: str) -> tuple[tuple[int, int], set[int]]:
        """The position after the topic's latest event, and event IDs to skip past it.

        The latest visible row ``(tx, id)`` is the start once every transaction older than
        ``tx`` has ended (the horizon has passed it): a row of such a transaction that commits
        meanwhile was published before this receiver returned, and may be skipped; rows of
        later transactions are all above the start. That wait is usually a few milliseconds;
        if it lasts :attr:`start_wait` (a long transaction is open), the receiver starts below
        the horizon instead and skips, by ID, the rows above it that are already visible."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_wait
        delay = 0.001
        horizon, latest_tx, latest_id = await self.db.fetchrow(self._start, topic)
        if latest_tx is None:
            return (horizon - 1, _MAX), set()
        while horizon <= latest_tx:
            if loop.time() >= deadline:
                visible = await self.db.fetchval(self._above, topic, horizon)
                return (horizon - 1, _MAX), set(visible)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            horizon = await self.db.fetchval(self._horizon)
        return (latest_tx, latest_id), set()

    def _forget(self, receiver: PostgresReceiver) -> None:
        receivers = self._receivers.get(receiver.topic)
        if receivers is not None:
            receivers.discard(receiver)
            if not receivers:
                del self._receivers[receiver.topic]

    # ------------------------------------------------------------ retention

    async def prune(self, topics: Sequence[str], before: datetime) -> int:
        """Delete the events of ``topics`` created before ``before`` that every consumer with
        a committed position on the topic has passed (all of them, for a topic without one),
        :attr:`prune_chunk` per statement; returns how many. A receiver open in this process
        counts at the position it has acknowledged, even before that is written."""
        check_aware("before", before)
        at = to_us(before)
        delete = self.db.sql(
            "DELETE FROM {prefix}events WHERE id IN (SELECT e.id FROM {prefix}events e "
            "WHERE e.topic = $1 AND e.created_at < $2 AND (e.tx, e.id) <= ($3::bigint, "
            "$4::bigint) AND NOT EXISTS (SELECT 1 FROM {prefix}cursors c WHERE c.topic = $1 "
            "AND (c.last_tx, c.last_id) < (e.tx, e.id)) ORDER BY e.tx, e.id LIMIT $5)"
        )
        total = 0
        for topic in dict.fromkeys(topics):
            local = [r for r in self._receivers.get(topic, ()) if not r.ephemeral]
            await asyncio.gather(*(r._flush() for r in local))
            bound = min((r._acked for r in local), default=(_MAX, _MAX))
            while True:
                status = await self.db.execute(
                    delete, topic, at, bound[0], bound[1], self.prune_chunk
                )
                deleted = int(status.split()[-1])
                total += deleted
                if deleted < self.prune_chunk:
                    break
        return total

    async def forget(self, topic: str, keep: Collection[str], before: datetime) -> list[str]:
        check_aware("before", before)
        kept = list(set(keep) | {r.name for r in self._receivers.get(topic, ())})
        rows = await self.db.fetch(
            self.db.sql(
                "DELETE FROM {prefix}cursors WHERE topic = $1 AND updated_at < $2 "
                "AND NOT (name = ANY($3::text[])) RETURNING name"
            ),
            topic,
            to_us(before),
            kept,
        )
        return [str(row[0]) for row in rows]

    async def close(self) -> None:
        self._closed = True
        for receivers in list(self._receivers.values()):
            for receiver in list(receivers):
                await receiver.close()
        task, self._listening = self._listening, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        self.db.streamers.discard(self)


class PostgresReceiver:
    """Reads one topic (or one shard of it) under one consumer name; see
    :class:`PostgresStreamer`."""

    def __init__(
        self,
        streamer: PostgresStreamer,
        topic: str,
        name: str,
        position: tuple[int, int],
        poll: float,
        *,
        shard: int = 0,
        shards: int = 1,
        is_new: bool = False,
        ephemeral: bool = False,
        skip: set[int] | None = None,
    ) -> None:
        self._streamer = streamer
        self._db = streamer.db
        self.topic = topic
        self.name = name
        self.shard = shard
        self.shards = shards
        self.is_new = is_new
        self.ephemeral = ephemeral
        self._position = position  # (tx, id) of the last row read
        self._poll = max(0.001, poll)
        self._skip = skip or set()
        self._closed = False
        self._wake = asyncio.Event()
        self._more = True  # read before waiting
        #: (tx, id) of the events returned and not yet acknowledged, in order
        self._unacked: collections.deque[tuple[int, int]] = collections.deque()
        self._acked = position
        self._written = position
        self._flusher: asyncio.Task[None] | None = None
        self._idle_acked = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._closed

    async def recv(self, limit: int = 100) -> list[Event]:
        if limit < 1:
            raise InvalidInput(f"limit must be >= 1, got {limit}")
        backoff = 0.002
        while True:
            if self._closed:
                raise AdapterError(f"receiver {self.name!r} on {self.topic!r} is closed")
            if not self._more and not self._wake.is_set():
                # Nothing known to wait: until a notification, a write of this process, or the
                # safety poll.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await self._wake.wait()
                if self.closed:
                    continue
            self._wake.clear()
            events, pending, full = await self._read(limit)
            self._more = full
            if events:
                return events
            if pending:
                # Rows above the horizon: a transaction that began before them is still open.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._wake.wait()
                backoff = min(backoff * 2, self._poll)
                self._more = True

    async def _read(self, limit: int) -> tuple[list[Event], bool, bool]:
        """One read: the events below the horizon, whether rows above it were seen, and
        whether the read was full (more may wait)."""
        tx, id_ = self._position
        if self.shards == 1:
            rows = await self._db.fetch(self._streamer._select, self.topic, tx, id_, limit)
        else:
            rows = await self._db.fetch(
                self._streamer._select_shard, self.topic, tx, id_, limit, self.shards, self.shard
            )
        events: list[Event] = []
        pending = False
        position = self._position
        skip = self._skip
        found = 0
        horizon = None
        for row in rows:
            horizon = row[7]
            if row[0] is None:
                break  # the read found nothing: this row only carries the horizon
            found += 1
            row_tx = row[6]
            if row_tx >= horizon:
                pending = True
                break
            position = (row_tx, row[0])
            if skip and row[0] in skip:
                skip.discard(row[0])
                continue
            events.append(event_from_row(self.topic, row))
            if not self.ephemeral:
                self._unacked.append(position)
        full = found == limit and not pending
        if not full and not pending and horizon is not None and (horizon - 1, _MAX) > position:
            # Every row of ours below the horizon has been read, and none can come below it:
            # the position moves up to it (past other shards' rows, and past the rows of
            # other topics' transactions), so that an idle consumer does not hold prune back.
            position = (horizon - 1, _MAX)
        self._position = position
        if not events and not self.ephemeral and not self._unacked:
            self._idle_ack()
        return events, pending, full

    def _idle_ack(self) -> None:
        """Everything returned is acknowledged and the read found nothing new: acknowledge the
        position read up to, at most every :attr:`PostgresStreamer.idle_ack_interval`."""
        if self._position <= self._acked:
            return
        now = time.monotonic()
        if now - self._idle_acked < self._streamer.idle_ack_interval:
            return
        self._idle_acked = now
        self._acked = self._position
        if not self._closed and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.ensure_future(self._flush_later())

    async def ack(self, event: Event) -> None:
        """Acknowledge ``event`` and every earlier one; the position is written within
        ``PostgresStreamer.ack_interval`` (at once when the receiver closes)."""
        if event.topic != self.topic:
            raise InvalidInput(f"event of topic {event.topic!r} acked on {self.topic!r}")
        if self.ephemeral:
            return
        unacked = self._unacked
        position = None
        for entry in unacked:
            if entry[1] == event.id:
                position = entry
                break
        if position is None:
            return  # acknowledged already
        while unacked and unacked[0] <= position:
            unacked.popleft()
        if position > self._acked:
            self._acked = position
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
        await self._db.execute(
            self._streamer._commit, self.topic, self.name, position[0], position[1], _now_us()
        )
        self._written = max(self._written, position)

    async def close(self) -> None:
        """Stop receiving; the acknowledged position is written before this returns."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._streamer._forget(self)
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await self._flush()
