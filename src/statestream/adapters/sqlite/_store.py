"""SQLite record store, with its outbox and parked events."""

from __future__ import annotations

import builtins
import dataclasses
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ..._core.records import (
    Message,
    Order,
    OutboxEvent,
    ParkedEvent,
    Record,
    RecordFilter,
    RunCounts,
    ScanPage,
)
from ...errors import (
    ConfigurationError,
    InvalidInput,
    RecordNotFound,
    VersionConflict,
    WorkflowInProgress,
)
from ..sql._rows import (
    COUNT_RUNS,
    check_page,
    counts_from_rows,
    filter_clauses,
    from_us,
    headers_from_json,
    headers_json,
    key_hash,
    printable,
    to_us,
)
from ..sql._rows import PARKED_COLUMNS as _PARKED_COLUMNS
from ..sql._rows import RECORD_COLUMNS as _RECORD_COLUMNS
from ..sql._rows import parked_from_row as _parked
from ..sql._rows import record_from_row as _record
from ._db import SqliteDatabase
from ._stream import SqliteStreamer

__all__ = ["SqliteRecordStore"]


def _active_key(record: Record) -> str | None:
    if record.run_state.finished:
        return None
    return f"{record.workflow_name}\x00{record.foreign_id}"


def _insert_event(conn: sqlite3.Connection, event: OutboxEvent) -> None:
    """Publish directly: the event row is written in the record's own transaction."""
    _insert_event_row(conn, event)


def _insert_event_handed(conn: sqlite3.Connection, event: OutboxEvent) -> tuple[int, int]:
    """:func:`_insert_event`, returning the row's ID and the ID of the topic's event before it
    (0: none), read in the same transaction with the writer's warm cache, so that this
    process's receivers can take the event without reading the table back (see
    :meth:`SqliteStreamer.hand`, from the shared :class:`~..sql._local.LocalReceivers`)."""
    prev = conn.execute(_PREVIOUS, (event.topic,)).fetchone()[0] or 0
    return _insert_event_row(conn, event), int(prev)


def _insert_event_row(conn: sqlite3.Connection, event: OutboxEvent) -> int:
    m = event.message
    cursor = conn.execute(
        "INSERT INTO statestream_events (topic, key, type, headers, data, created_at, key_hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event.topic,
            m.key,
            m.type,
            headers_json(m.headers),
            m.data,
            to_us(m.created_at),
            key_hash(m.key),
        ),
    )
    return int(cursor.lastrowid or 0)


_PREVIOUS = "SELECT MAX(id) FROM statestream_events WHERE topic = ?"


def _insert_outbox(conn: sqlite3.Connection, event: OutboxEvent) -> None:
    m = event.message
    conn.execute(
        "INSERT INTO statestream_outbox (id, workflow_name, topic, key, type, headers, data, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.id,
            event.workflow_name,
            event.topic,
            m.key,
            m.type,
            headers_json(m.headers),
            m.data,
            to_us(m.created_at),
        ),
    )


class SqliteRecordStore:
    """Runs and their outbox events in one SQLite file; every write is one transaction.

    ``create`` relies on a unique column that holds ``(workflow, foreign ID)`` while a run is
    unfinished, so two concurrent triggers (even from two processes) cannot both succeed;
    ``update`` is ``UPDATE ... WHERE version = ?``.

    Args:
        db: the database file.
        publish_to: a :class:`SqliteStreamer` on the same file. Each write then inserts its event
            straight into the streamer's events table in the same transaction, as luno's Reflex
            streamer does, instead of an outbox row that the relay moves later: one commit per
            state change instead of three, and no relay on the path. The outbox stays empty.
    """

    #: The largest ``offset`` ``list`` accepts; deeper pages use ``after=``.
    max_offset = 10_000

    def __init__(self, db: SqliteDatabase, *, publish_to: SqliteStreamer | None = None) -> None:
        if publish_to is not None and getattr(publish_to, "db", None) is not db:
            # (a KafkaStreamer, say, has no database: without this check, an AttributeError)
            raise ConfigurationError(
                "publish_to must be a SqliteStreamer on the same SqliteDatabase as the store, "
                f"got {publish_to!r}; for events in another streamer (Kafka...) leave publish_to "
                "out: each write then puts its event in the outbox table, in the record's "
                "transaction, and the workflow's outbox relay publishes it"
            )
        self.db = db
        self._streamer = publish_to
        #: True with ``publish_to``: the outbox stays empty, so the engine's relay is not woken
        #: by every write (it still polls, for rows another configuration left).
        self.publishes_in_transaction = publish_to is not None
        #: The streamer each write's event goes into (``build`` refuses another one).
        self.publishes_into = publish_to

    def _emitter(
        self, topic: str
    ) -> Callable[[sqlite3.Connection, OutboxEvent], tuple[int, int] | None]:
        """How a write emits its event: to the outbox, or into the events table, reading the
        topic's previous event ID only when a receiver of this process may take it."""
        streamer = self._streamer
        if streamer is None:
            return _insert_outbox
        return _insert_event_handed if streamer.receiving(topic) else _insert_event

    def _published(self, event: OutboxEvent, ids: tuple[int, int] | None) -> None:
        streamer = self._streamer
        if streamer is None:
            return
        if ids is not None:
            streamer.hand(event.topic, ids[0], ids[1], event.message)
        else:
            streamer.wake(event.topic)  # a receiver opened meanwhile reads it

    async def create(self, record: Record, event: OutboxEvent) -> None:
        values = (
            record.workflow_name,
            record.foreign_id,
            record.run_id,
            int(record.run_state),
            record.status,
            record.object,
            to_us(record.created_at),
            to_us(record.updated_at),
            record.version,
            record.run_state_reason,
            record.status_description,
            record.auto_resumes,
            _active_key(record),
        )

        def create(conn: sqlite3.Connection) -> tuple[int, int] | None:
            try:
                conn.execute(
                    f"INSERT INTO statestream_records ({_RECORD_COLUMNS}, active_key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
            except sqlite3.IntegrityError as exc:
                row = conn.execute(
                    "SELECT version FROM statestream_records WHERE run_id = ?", (record.run_id,)
                ).fetchone()
                if row is not None:
                    raise VersionConflict(record.run_id, 0, row[0]) from exc
                raise WorkflowInProgress(
                    f"{record.foreign_id!r} has an unfinished run in workflow "
                    f"{record.workflow_name!r}"
                ) from exc
            return emit(conn, event)

        emit = self._emitter(event.topic)
        self._published(event, await self.db.write(create, rerunnable=True, quick=True))

    async def update(self, record: Record, event: OutboxEvent) -> None:
        values = (
            int(record.run_state),
            record.status,
            record.object,
            to_us(record.updated_at),
            record.version,
            record.run_state_reason,
            record.status_description,
            record.auto_resumes,
            _active_key(record),
            record.run_id,
            record.version - 1,
        )

        def update(conn: sqlite3.Connection) -> tuple[int, int] | None:
            try:
                cursor = conn.execute(
                    "UPDATE statestream_records SET run_state = ?, status = ?, object = ?, "
                    "updated_at = ?, version = ?, run_state_reason = ?, status_description = ?, "
                    "auto_resumes = ?, active_key = ? WHERE run_id = ? AND version = ?",
                    values,
                )
            except sqlite3.IntegrityError as exc:
                raise WorkflowInProgress(
                    f"{record.foreign_id!r} has another unfinished run"
                ) from exc
            if cursor.rowcount != 1:
                row = conn.execute(
                    "SELECT version FROM statestream_records WHERE run_id = ?", (record.run_id,)
                ).fetchone()
                if row is None:
                    raise RecordNotFound(f"no run {record.run_id}")
                raise VersionConflict(record.run_id, record.version - 1, row[0])
            return emit(conn, event)

        emit = self._emitter(event.topic)
        self._published(event, await self.db.write(update, rerunnable=True, quick=True))

    async def lookup(self, run_id: str) -> Record:
        def lookup(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM statestream_records WHERE run_id = ?", (run_id,)
            ).fetchone()

        row = await self.db.read(lookup)
        if row is None:
            raise RecordNotFound(f"no run {run_id}")
        return _record(row)

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        def latest(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM statestream_records "
                "WHERE workflow_name = ? AND foreign_id = ? ORDER BY rowid DESC LIMIT 1",
                (workflow_name, foreign_id),
            ).fetchone()

        row = await self.db.read(latest)
        if row is None:
            raise RecordNotFound(f"no run of {foreign_id!r} in workflow {workflow_name!r}")
        return _record(row)

    async def list(
        self,
        workflow_name: str | None = None,
        *,
        offset: int = 0,
        limit: int = 25,
        order: Order = Order.ASC,
        filter: RecordFilter | None = None,
        after: str | None = None,
    ) -> builtins.list[Record]:
        """Runs in creation order (row ID), on the query thread: a page never blocks the loop.
        With a time bound in ``filter``: in order of ``(created_at, row ID)`` (the contract's
        "creation time" order), one range of ``statestream_records_by_created``.

        ``after`` (a run ID) starts the page after that run: one index seek, however deep the
        page. ``offset`` skips rows one by one, so it is bounded by :attr:`max_offset`.
        """
        check_page(offset, limit, self.max_offset)
        sql, needs_row = self._list_sql(_RECORD_COLUMNS, workflow_name, order, filter, after)

        def select(conn: sqlite3.Connection) -> builtins.list[Record]:
            values = needs_row(conn)
            return [_record(row) for row in conn.execute(sql, [*values, limit, offset])]

        return await self.db.query(select)

    def _list_sql(
        self,
        columns: str,
        workflow_name: str | None,
        order: Order,
        filter: RecordFilter | None,
        after: str | None,
    ) -> tuple[str, Callable[[sqlite3.Connection], builtins.list[Any]]]:
        """The statement of ``list`` (``LIMIT ? OFFSET ?`` last) and the function that gives
        its arguments on the query thread (it looks ``after`` up)."""
        where, args = filter_clauses(workflow_name, filter, "?")
        timed = filter is not None and (
            filter.created_after is not None or filter.created_before is not None
        )
        descending = order is Order.DESC
        direction = "DESC" if descending else "ASC"
        if timed and after is not None:
            # With a cursor in a time range, the cursor's time bounds the range of the index;
            # the range's own bound on that side is kept as a filter only (+created_at), so
            # that SQLite does not take it for the range instead.
            own = "created_at < " if descending else "created_at > "
            where = [f"+{w}" if w.startswith(own) else w for w in where]
        if after is not None:
            if not timed:
                where.append("rowid < ?" if descending else "rowid > ?")
            elif descending:
                where.append("created_at <= ? AND (created_at < ? OR rowid < ?)")
            else:
                where.append("created_at >= ? AND (created_at > ? OR rowid > ?)")
        sql = f"SELECT {columns} FROM statestream_records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if timed:
            sql += f" ORDER BY created_at {direction}, rowid {direction} LIMIT ? OFFSET ?"
        else:
            sql += f" ORDER BY rowid {direction} LIMIT ? OFFSET ?"

        def values(conn: sqlite3.Connection) -> builtins.list[Any]:
            if after is None:
                return args
            row = conn.execute(
                "SELECT rowid, created_at FROM statestream_records WHERE run_id = ?", (after,)
            ).fetchone()
            if row is None:
                raise RecordNotFound(f"no run {after} (the after= of list)")
            return [*args, row[1], row[1], row[0]] if timed else [*args, row[0]]

        return sql, values

    async def list_scan(
        self,
        workflow_name: str,
        *,
        limit: int,
        scan_limit: int,
        order: Order = Order.DESC,
        filter: RecordFilter | None = None,
        after: str | None = None,
    ) -> ScanPage:
        """A page of a status filter that reads at most ``scan_limit`` runs
        (:class:`~statestream.ScanLister`), on the query thread. SQLite does it: the ``list``
        statement without the statuses, limited to ``scan_limit`` rows (one range of an
        index), filtered by status outside it; a second statement finds the last run examined
        when the page did not fill up; the runs picked are then read by row ID."""
        ScanPage.check(limit, scan_limit)
        wanted = list(dict.fromkeys(filter.statuses)) if filter is not None else []
        flt = dataclasses.replace(filter, statuses=()) if filter is not None else None
        inner, needs_row = self._list_sql(
            "rowid AS r, run_id AS i, status AS s",
            workflow_name,
            order,
            flt,
            after,
        )
        # (the row ID alone: the index has it, no row is read)
        last, _ = self._list_sql("rowid", workflow_name, order, flt, after)
        sql = f"SELECT r, i FROM ({inner})"
        if wanted:
            sql += f" WHERE s IN ({', '.join('?' * len(wanted))})"
        # No ORDER BY outside: SQLite runs the inner statement (it has a LIMIT, the outer one
        # a WHERE: it is not flattened) as a co-routine whose rows come in its own order, so
        # the outer LIMIT stops the scan at the limit-th match (an ORDER BY here would read
        # all scan_limit rows and sort them). The conformance tests check the order.
        sql += " LIMIT ?"

        def select(conn: sqlite3.Connection) -> ScanPage:
            values = needs_row(conn)
            picked = conn.execute(sql, [*values, scan_limit, 0, *wanted, limit]).fetchall()
            if len(picked) >= limit:
                resume = picked[-1][1]
            else:
                row = conn.execute(
                    f"SELECT run_id FROM statestream_records WHERE rowid = ({last})",
                    [*values, 1, scan_limit - 1],
                ).fetchone()
                resume = row[0] if row is not None else ""
            if not picked:
                return ScanPage([], resume)
            marks = ", ".join("?" * len(picked))
            rows = conn.execute(
                f"SELECT rowid, {_RECORD_COLUMNS} FROM statestream_records "
                f"WHERE rowid IN ({marks})",
                [r for r, _ in picked],
            ).fetchall()
            by_id = {row[0]: _record(row[1:]) for row in rows}
            # (a run deleted or moved on between the statements is left out)
            return ScanPage(
                [
                    by_id[r]
                    for r, _ in picked
                    if r in by_id and (not wanted or by_id[r].status in wanted)
                ],
                resume,
            )

        return await self.db.query(select)

    async def count_runs(self, workflow_name: str) -> RunCounts:
        """The workflow's runs by status and by run state (:class:`~statestream.RunCounter`):
        one statement (one snapshot), one pass over the workflow's runs (``COUNT_RUNS``), on the
        query thread."""

        def select(conn: sqlite3.Connection) -> RunCounts:
            return counts_from_rows(conn.execute(_COUNT_RUNS, (workflow_name,)))

        return await self.db.query(select)

    async def list_outbox(self, workflow_name: str, limit: int) -> builtins.list[OutboxEvent]:
        def select(conn: sqlite3.Connection) -> builtins.list[Any]:
            return conn.execute(
                "SELECT id, workflow_name, topic, key, type, headers, data, created_at "
                "FROM statestream_outbox WHERE workflow_name = ? ORDER BY seq LIMIT ?",
                (workflow_name, limit),
            ).fetchall()

        return [
            OutboxEvent(
                row[0],
                row[1],
                row[2],
                Message(row[3], row[4], headers_from_json(row[5]), from_us(row[7]), row[6]),
            )
            for row in await self.db.read(select)
        ]

    async def delete_outbox(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        rows = [(i,) for i in ids]

        def delete(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM statestream_outbox WHERE id = ?", rows)

        await self.db.write(delete)

    async def park(self, parked: ParkedEvent) -> None:
        """Store an event a consumer gave up on; an upsert on its ID (every field replaced).

        The error text comes from user code, so a lone surrogate in it is escaped
        (``\\udc80``) rather than refused: it is for people to read."""
        e = parked.event
        values = (
            parked.id,
            parked.workflow_name,
            parked.consumer,
            e.id,
            e.topic,
            e.key,
            e.type,
            headers_json(e.headers),
            e.data,
            to_us(e.created_at),
            printable(parked.error, nul=False),
            parked.attempts,
            to_us(parked.parked_at),
            int(parked.retry_requested),
        )

        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO statestream_parked ({_PARKED_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "workflow_name = excluded.workflow_name, consumer = excluded.consumer, "
                "event_id = excluded.event_id, topic = excluded.topic, key = excluded.key, "
                "type = excluded.type, headers = excluded.headers, data = excluded.data, "
                "created_at = excluded.created_at, error = excluded.error, "
                "attempts = excluded.attempts, parked_at = excluded.parked_at, "
                "retry_requested = excluded.retry_requested",
                values,
            )

        await self.db.write(upsert)

    async def list_parked(
        self,
        workflow_name: str,
        *,
        consumer: str | None = None,
        retry_requested: bool | None = None,
        limit: int = 100,
    ) -> builtins.list[ParkedEvent]:
        """The workflow's parked events, oldest ``parked_at`` first (ties: first parked
        first), at most ``limit``; on the query thread."""
        if limit < 0:
            raise InvalidInput(f"limit must be >= 0, got {limit}")
        sql = f"SELECT {_PARKED_COLUMNS} FROM statestream_parked WHERE workflow_name = ?"
        args: builtins.list[Any] = [workflow_name]
        if consumer is not None:
            sql += " AND consumer = ?"
            args.append(consumer)
        if retry_requested is not None:
            sql += " AND retry_requested = ?"
            args.append(int(retry_requested))
        sql += " ORDER BY parked_at, rowid LIMIT ?"
        args.append(limit)

        def select(conn: sqlite3.Connection) -> builtins.list[ParkedEvent]:
            return [_parked(row) for row in conn.execute(sql, args)]

        return await self.db.query(select)

    async def retry_parked(self, parked_id: str) -> None:
        def flag(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE statestream_parked SET retry_requested = 1 WHERE id = ?", (parked_id,)
            )
            if cursor.rowcount != 1:
                raise RecordNotFound(f"no parked event with ID {parked_id!r}")

        await self.db.write(flag)

    async def delete_parked(self, parked_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM statestream_parked WHERE id = ?", (parked_id,))

        await self.db.write(delete)


_COUNT_RUNS = COUNT_RUNS.format(prefix="statestream_", arg="?")
