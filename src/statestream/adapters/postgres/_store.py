"""PostgreSQL record store: runs, outbox and parked events; set-based batched writes."""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
from ..sql._batch import WriteBatcher
from ..sql._dialect import ErrorKind
from ..sql._rows import (
    COUNT_RUNS,
    PARKED_COLUMNS,
    RECORD_COLUMNS,
    check_event,
    check_page,
    check_record,
    check_text,
    counts_from_rows,
    from_us,
    headers_json,
    key_hash,
    parked_from_row,
    printable,
    record_from_row,
    to_us,
)
from ._db import PostgresDatabase

if TYPE_CHECKING:
    from ._stream import PostgresStreamer

__all__ = ["PostgresRecordStore"]

# One statement writes a whole batch: the creates (INSERT ... ON CONFLICT DO NOTHING: a second
# unfinished run of a foreign ID, or an existing run ID, is simply not inserted), the updates
# (compare-and-set on the version), and the events of the rows that won, in input order; the
# notification of the topics written is sent when it commits. It returns, per input row,
# whether it won and the version stored before it (to tell a conflict from a missing run).
_INPUT = """WITH i AS (
    SELECT * FROM unnest($1::int[], $2::bool[], $3::text[], $4::text[], $5::text[],
        $6::smallint[], $7::bigint[], $8::bytea[], $9::bigint[], $10::bigint[], $11::bigint[],
        $12::text[], $13::text[], $14::int[], $15::bool[], $16::text[], $17::text[],
        $18::text[], $19::bigint[], $20::text[], $21::bytea[], $22::bigint[], $23::bigint[])
    AS t(ord, is_create, run_id, workflow_name, foreign_id, run_state, status, object,
        created_at, updated_at, version, run_state_reason, status_description, auto_resumes,
        active, e_id, e_topic, e_key, e_type, e_headers, e_data, e_created_at, e_key_hash)
), ins AS (
    INSERT INTO {prefix}records (run_id, workflow_name, foreign_id, run_state, status, object,
        created_at, updated_at, version, run_state_reason, status_description, auto_resumes,
        active)
    SELECT run_id, workflow_name, foreign_id, run_state, status, object, created_at,
        updated_at, version, run_state_reason, status_description, auto_resumes, active
    FROM i WHERE is_create ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING run_id
), upd AS (
    UPDATE {prefix}records r SET run_state = i.run_state, status = i.status,
        object = i.object, updated_at = i.updated_at, version = i.version,
        run_state_reason = i.run_state_reason, status_description = i.status_description,
        auto_resumes = i.auto_resumes, active = i.active
    FROM i WHERE NOT i.is_create AND r.run_id = i.run_id AND r.version = i.version - 1
    RETURNING r.run_id
), won AS (
    SELECT run_id FROM ins UNION ALL SELECT run_id FROM upd
)"""

_WRITE_EVENTS = (
    _INPUT
    + """, ev AS (
    INSERT INTO {prefix}events (topic, key, type, headers, data, created_at, key_hash)
    SELECT i.e_topic, i.e_key, i.e_type, i.e_headers, i.e_data, i.e_created_at, i.e_key_hash
    FROM i JOIN won ON won.run_id = i.run_id ORDER BY i.ord
    RETURNING topic
)
SELECT i.ord, w.run_id IS NOT NULL, r.version,
    (SELECT count(pg_notify($24, CASE WHEN octet_length(t.topic) < 4000 THEN t.topic
        ELSE '' END)) FROM (SELECT DISTINCT topic FROM ev) t), pg_backend_pid()
FROM i LEFT JOIN won w ON w.run_id = i.run_id LEFT JOIN {prefix}records r ON r.run_id = i.run_id
"""
)

_WRITE_OUTBOX = (
    _INPUT
    + """, ev AS (
    INSERT INTO {prefix}outbox (id, workflow_name, topic, key, type, headers, data, created_at)
    SELECT i.e_id, i.workflow_name, i.e_topic, i.e_key, i.e_type, i.e_headers, i.e_data,
        i.e_created_at
    FROM i JOIN won ON won.run_id = i.run_id ORDER BY i.ord
    RETURNING 1
)
SELECT i.ord, w.run_id IS NOT NULL, r.version, (SELECT count(*) FROM ev)
FROM i LEFT JOIN won w ON w.run_id = i.run_id LEFT JOIN {prefix}records r ON r.run_id = i.run_id
"""
)


@dataclass(frozen=True, slots=True, eq=False)
class _Write:
    create: bool
    record: Record
    event: OutboxEvent
    publish: bool  # the event goes into the events table (else the outbox)


def _groups(items: Sequence[_Write]) -> list[list[tuple[int, _Write]]]:
    """Consecutive runs of writes of distinct run IDs and one destination: each is one
    statement (a statement sees the rows as they were before it, so two writes of one run, or
    a create and an update, must not share one)."""
    groups: list[list[tuple[int, _Write]]] = []
    current: list[tuple[int, _Write]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        run_id = item.record.run_id
        if current and (run_id in seen or item.publish != current[0][1].publish):
            groups.append(current)
            current, seen = [], set()
        current.append((index, item))
        seen.add(run_id)
    if current:
        groups.append(current)
    return groups


def _arrays(group: Sequence[tuple[int, _Write]]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(23)]
    for ord_, (_, w) in enumerate(group):
        r, e = w.record, w.event
        m = e.message
        values = (
            ord_,
            w.create,
            r.run_id,
            r.workflow_name,
            r.foreign_id,
            int(r.run_state),
            r.status,
            r.object,
            to_us(r.created_at),
            to_us(r.updated_at),
            r.version,
            r.run_state_reason,
            r.status_description,
            r.auto_resumes,
            not r.run_state.finished,
            e.id,
            e.topic,
            m.key,
            m.type,
            headers_json(m.headers),
            m.data,
            to_us(m.created_at),
            key_hash(m.key),
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _outcome(item: _Write, won: bool, stored: int | None) -> BaseException | None:
    if won:
        return None
    r = item.record
    if item.create:
        if stored is not None:
            return VersionConflict(r.run_id, 0, stored)
        return WorkflowInProgress(
            f"{r.foreign_id!r} has an unfinished run in workflow {r.workflow_name!r}"
        )
    if stored is None:
        return RecordNotFound(f"no run {r.run_id}")
    return VersionConflict(r.run_id, r.version - 1, stored)


class _RecordWriter:
    """The database's batching writer of record writes (one per database)."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self.events_sql = db.sql(_WRITE_EVENTS)
        self.outbox_sql = db.sql(_WRITE_OUTBOX)
        self.batcher: WriteBatcher[_Write, None] = WriteBatcher(self.write)
        #: Streamers to wake after a commit, by topic (this process's receivers).
        self.streamers: list[PostgresStreamer] = []
        #: The server processes of the connections of this write's events statements (their
        #: notifications are this process's own: see :meth:`PostgresStreamer.wrote`).
        self._backends: set[int] = set()

    async def write(self, items: Sequence[_Write]) -> list[BaseException | None]:
        results: list[BaseException | None] = [None] * len(items)
        backends = self._backends = set()
        for group in _groups(items):
            try:
                outcomes = await self._statement(group)
            except Exception as exc:
                if len(group) == 1 or self.db.is_connection_error(exc):
                    # Alone, or the connection is gone (its outcome unknown: the caller's
                    # retry finds out through the compare-and-set).
                    for index, item in group:
                        results[index] = self._error(item, exc)
                    continue
                # One write spoiled the statement (an update making a second unfinished run,
                # a value the server refuses): write each alone, so that only it fails.
                outcomes = []
                for entry in group:
                    try:
                        outcomes.extend(await self._statement([entry]))
                    except Exception as each:
                        outcomes.append(self._error(entry[1], each))
            for (index, _), outcome in zip(group, outcomes, strict=True):
                results[index] = outcome
        topics = {
            item.event.topic
            for item, result in zip(items, results, strict=True)
            if result is None and item.publish
        }
        if topics:
            for streamer in self.streamers:
                for topic in topics:
                    streamer.wrote(topic, backends)
        return results

    def _error(self, item: _Write, exc: BaseException) -> BaseException:
        if self.db.kind(exc) is ErrorKind.UNIQUE:
            return WorkflowInProgress(
                f"{item.record.foreign_id!r} has another unfinished run in workflow "
                f"{item.record.workflow_name!r}"
            )
        error = self.db.translate(exc)
        if isinstance(error, InvalidInput) and "index row" in str(exc):
            error = InvalidInput(
                f"{error} (PostgreSQL indexes at most about 2,700 bytes per entry: keep "
                "workflow names, foreign IDs, run IDs and topics short)"
            )
            error.__cause__ = exc
        return error

    async def _statement(self, group: Sequence[tuple[int, _Write]]) -> list[BaseException | None]:
        publish = group[0][1].publish
        arrays = _arrays(group)
        if publish:
            rows = await self.db.fetch(self.events_sql, *arrays, self.db.channel, idempotent=False)
        else:
            rows = await self.db.fetch(self.outbox_sql, *arrays, idempotent=False)
        if publish and rows:
            self._backends.add(rows[0][4])
        by_ord = {row[0]: (row[1], row[2]) for row in rows}
        return [_outcome(w, *by_ord[n]) for n, (_, w) in enumerate(group)]


def record_writer(db: PostgresDatabase) -> _RecordWriter:
    writer = db.record_writer
    if writer is None:
        writer = db.record_writer = _RecordWriter(db)
    assert isinstance(writer, _RecordWriter)
    return writer


class PostgresRecordStore:
    """Runs and their events on PostgreSQL.

    ``update`` is a compare-and-set on the version inside one statement; ``create`` inserts
    with ``ON CONFLICT DO NOTHING`` against a partial unique index on ``(workflow_name,
    foreign_id) WHERE active`` (the run is unfinished), so two concurrent triggers, from any
    number of processes, never both succeed.

    Concurrent writes of this process share one statement: while one batch is on its way, the
    next writes queue, and the writer sends them together as one set-based statement
    (``unnest`` of arrays) that does every compare-and-set, inserts the events of the writes
    that won and returns which won; a write alone goes at once.

    Args:
        db: the database.
        publish_to: a :class:`PostgresStreamer` on the same database. Each write then inserts
            its event into the events table in its own statement (and transaction), and
            notifies the receivers when it commits; the outbox stays empty.
    """

    #: The largest ``offset`` ``list`` accepts; deeper pages use ``after=``.
    max_offset = 10_000

    def __init__(self, db: PostgresDatabase, *, publish_to: PostgresStreamer | None = None) -> None:
        if publish_to is not None and getattr(publish_to, "db", None) is not db:
            # (a KafkaStreamer, say, has no database: without this check, an AttributeError)
            raise ConfigurationError(
                "publish_to must be a PostgresStreamer on the same PostgresDatabase as the store, "
                f"got {publish_to!r}; for events in another streamer (Kafka...) leave publish_to "
                "out: each write then puts its event in the outbox table, in the record's "
                "transaction, and the workflow's outbox relay publishes it"
            )
        self.db = db
        self._publish = publish_to is not None
        self.publishes_in_transaction = publish_to is not None
        #: The streamer each write's event goes into (``build`` refuses another one).
        self.publishes_into = publish_to
        self._writer = record_writer(db)
        if publish_to is not None and publish_to not in self._writer.streamers:
            self._writer.streamers.append(publish_to)
        sql = db.sql
        self._lookup = sql(f"SELECT {RECORD_COLUMNS} FROM {{prefix}}records WHERE run_id = $1")
        self._lookup_any = sql(
            f"SELECT {RECORD_COLUMNS} FROM {{prefix}}records WHERE run_id = ANY($1::text[])"
        )
        #: Concurrent lookups share one statement (a consumer's events in flight, each looking
        #: up its run: with several processes the record is rarely this process's own recent
        #: write). A lookup while none is in flight reads at once, alone, by run ID.
        self._reader: WriteBatcher[str, Record] = WriteBatcher(self._lookup_many)
        self._latest = sql(
            f"SELECT {RECORD_COLUMNS} FROM {{prefix}}records WHERE workflow_name = $1 "
            "AND foreign_id = $2 ORDER BY seq DESC LIMIT 1"
        )

    async def create(self, record: Record, event: OutboxEvent) -> None:
        check_record(record)
        check_event(event)
        await self._writer.batcher.submit(_Write(True, record, event, self._publish))

    async def update(self, record: Record, event: OutboxEvent) -> None:
        check_record(record)
        check_event(event)
        await self._writer.batcher.submit(_Write(False, record, event, self._publish))

    async def lookup(self, run_id: str) -> Record:
        return await self._reader.submit(run_id)

    async def _lookup_one(self, run_id: str) -> Record:
        row = await self.db.fetchrow(self._lookup, run_id)
        if row is None:
            raise RecordNotFound(f"no run {run_id}")
        return record_from_row(row)

    async def _lookup_many(self, run_ids: Sequence[str]) -> builtins.list[Record | BaseException]:
        if len(run_ids) == 1:
            try:
                return [await self._lookup_one(run_ids[0])]
            except RecordNotFound as exc:
                return [exc]
        rows = await self.db.fetch(self._lookup_any, builtins.list(set(run_ids)))
        found = {record.run_id: record for record in map(record_from_row, rows)}
        return [found.get(r) or RecordNotFound(f"no run {r}") for r in run_ids]

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        row = await self.db.fetchrow(self._latest, workflow_name, foreign_id)
        if row is None:
            raise RecordNotFound(f"no run of {foreign_id!r} in workflow {workflow_name!r}")
        return record_from_row(row)

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
        """Runs in creation order; ``after`` (a run ID) pages by key through the index on
        ``(workflow_name, seq)``; ``offset`` is bounded by :attr:`max_offset`."""
        check_page(offset, limit, self.max_offset)
        sql, args = await self._list_sql(RECORD_COLUMNS, workflow_name, order, filter, after)
        sql += f" LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}"
        return [record_from_row(row) for row in await self.db.fetch(sql, *args, limit, offset)]

    async def _list_sql(
        self,
        columns: str,
        workflow_name: str | None,
        order: Order,
        filter: RecordFilter | None,
        after: str | None,
    ) -> tuple[str, builtins.list[Any]]:
        """The statement of ``list`` without its LIMIT, and its arguments ($1..$n)."""
        where: builtins.list[str] = []
        args: builtins.list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if workflow_name is not None:
            where.append(f"workflow_name = {arg(workflow_name)}")
        if filter is not None:
            # One value is an equality, not "= ANY": PostgreSQL (before 17) reads an index in
            # its order (seq, for the keyset page) only for equalities on the columns before it.
            for column, kind, values in (
                ("foreign_id", "text", builtins.list(filter.foreign_ids)),
                ("status", "bigint", [int(s) for s in filter.statuses]),
                ("run_state", "smallint", [int(s) for s in filter.run_states]),
            ):
                if len(values) == 1:
                    where.append(f"{column} = {arg(values[0])}::{kind}")
                elif values:
                    where.append(f"{column} = ANY({arg(values)}::{kind}[])")
            if filter.created_after is not None:
                where.append(f"created_at > {arg(to_us(filter.created_after))}")
            if filter.created_before is not None:
                where.append(f"created_at < {arg(to_us(filter.created_before))}")
        descending = order is Order.DESC
        # With a time bound: (created_at, seq) order, one range of records_by_created
        timed = filter is not None and (
            filter.created_after is not None or filter.created_before is not None
        )
        sign = "<" if descending else ">"
        if after is not None:
            row = await self.db.fetchrow(
                self.db.sql("SELECT seq, created_at FROM {prefix}records WHERE run_id = $1"),
                after,
            )
            if row is None:
                raise RecordNotFound(f"no run {after} (the after= of list)")
            if timed:
                where.append(f"(created_at, seq) {sign} ({arg(row[1])}, {arg(row[0])})")
            else:
                where.append(f"seq {sign} {arg(row[0])}")
        sql = f"SELECT {columns} FROM {self.db.table('records')}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        direction = "DESC" if descending else "ASC"
        keys = f"created_at {direction}, seq {direction}" if timed else f"seq {direction}"
        return sql + f" ORDER BY {keys}", args

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
        (:class:`~statestream.ScanLister`): the ``list`` statement without the statuses,
        limited to ``scan_limit`` rows (one range of an index), filtered by status outside
        it; a second statement finds the last run examined when the page did not fill up;
        the runs picked are then read by ``seq``."""
        ScanPage.check(limit, scan_limit)
        wanted = sorted({int(s) for s in filter.statuses}) if filter is not None else []
        flt = dataclasses.replace(filter, statuses=()) if filter is not None else None
        timed = flt is not None and (
            flt.created_after is not None or flt.created_before is not None
        )
        direction = "DESC" if order is Order.DESC else "ASC"
        keys = f"s_at {direction}, s_seq {direction}" if timed else f"s_seq {direction}"
        inner, args = await self._list_sql(
            "seq AS s_seq, created_at AS s_at, status AS s_status, run_id AS s_id",
            workflow_name,
            order,
            flt,
            after,
        )
        n = len(args)
        sql = f"SELECT s_seq, s_id FROM ({inner} LIMIT ${n + 1}) AS scan"
        params: builtins.list[Any] = [*args, scan_limit]
        if wanted:
            sql += f" WHERE s_status = ANY(${n + 2}::bigint[])"
            params.append(wanted)
        sql += f" ORDER BY {keys} LIMIT ${len(params) + 1}"
        picked = await self.db.fetch(sql, *params, limit)
        if len(picked) >= limit:
            resume = str(picked[-1][1])
        else:
            last = await self.db.fetchrow(f"{inner} LIMIT 1 OFFSET ${n + 1}", *args, scan_limit - 1)
            resume = str(last[3]) if last is not None else ""
        if not picked:
            return ScanPage([], resume)
        rows = await self.db.fetch(
            f"SELECT seq, {RECORD_COLUMNS} FROM {self.db.table('records')} "
            "WHERE seq = ANY($1::bigint[])",
            [int(p[0]) for p in picked],
        )
        by_seq = {int(row[0]): record_from_row(row[1:]) for row in rows}
        # (a run deleted or moved on between the statements is left out)
        found = [by_seq.get(int(p[0])) for p in picked]
        return ScanPage(
            [r for r in found if r is not None and (not wanted or r.status in wanted)], resume
        )

    async def count_runs(self, workflow_name: str) -> RunCounts:
        """The workflow's runs by status and by run state (:class:`~statestream.RunCounter`):
        one statement (one snapshot), one pass over the workflow's runs (:data:`COUNT_RUNS`)."""
        sql = COUNT_RUNS.replace("{arg}", "$1").replace("{prefix}", self.db.prefix)
        return counts_from_rows(await self.db.fetch(sql, workflow_name))

    async def list_outbox(self, workflow_name: str, limit: int) -> builtins.list[OutboxEvent]:
        rows = await self.db.fetch(
            self.db.sql(
                "SELECT id, workflow_name, topic, key, type, headers, data, created_at "
                "FROM {prefix}outbox WHERE workflow_name = $1 ORDER BY seq LIMIT $2"
            ),
            workflow_name,
            limit,
        )
        import json

        return [
            OutboxEvent(
                row[0],
                row[1],
                row[2],
                Message(row[3], row[4], json.loads(row[5]), from_us(row[7]), bytes(row[6])),
            )
            for row in rows
        ]

    async def delete_outbox(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        await self.db.execute(
            self.db.sql("DELETE FROM {prefix}outbox WHERE id = ANY($1::text[])"), builtins.list(ids)
        )

    async def park(self, parked: ParkedEvent) -> None:
        """Store an event a consumer gave up on; an upsert on its ID. The error text is for
        people: NUL and lone surrogates in it are escaped rather than refused."""
        e = parked.event
        for name, value in (
            ("parked ID", parked.id),
            ("workflow_name", parked.workflow_name),
            ("consumer", parked.consumer),
            ("topic", e.topic),
            ("key", e.key),
        ):
            check_text(f"the parked event's {name}", value)
        await self.db.execute(
            self.db.sql(
                f"INSERT INTO {{prefix}}parked ({PARKED_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, "
                "$7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (id) DO UPDATE SET "
                "workflow_name = excluded.workflow_name, consumer = excluded.consumer, "
                "event_id = excluded.event_id, topic = excluded.topic, key = excluded.key, "
                "type = excluded.type, headers = excluded.headers, data = excluded.data, "
                "created_at = excluded.created_at, error = excluded.error, "
                "attempts = excluded.attempts, parked_at = excluded.parked_at, "
                "retry_requested = excluded.retry_requested"
            ),
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
            printable(parked.error),
            parked.attempts,
            to_us(parked.parked_at),
            bool(parked.retry_requested),
        )

    async def list_parked(
        self,
        workflow_name: str,
        *,
        consumer: str | None = None,
        retry_requested: bool | None = None,
        limit: int = 100,
    ) -> builtins.list[ParkedEvent]:
        if limit < 0:
            raise InvalidInput(f"limit must be >= 0, got {limit}")
        sql = f"SELECT {PARKED_COLUMNS} FROM {self.db.table('parked')} WHERE workflow_name = $1"
        args: builtins.list[Any] = [workflow_name]
        if consumer is not None:
            args.append(consumer)
            sql += f" AND consumer = ${len(args)}"
        if retry_requested is not None:
            args.append(bool(retry_requested))
            sql += f" AND retry_requested = ${len(args)}"
        args.append(limit)
        sql += f" ORDER BY parked_at, seq LIMIT ${len(args)}"
        return [parked_from_row(row) for row in await self.db.fetch(sql, *args)]

    async def retry_parked(self, parked_id: str) -> None:
        status = await self.db.execute(
            self.db.sql("UPDATE {prefix}parked SET retry_requested = true WHERE id = $1"),
            parked_id,
        )
        if status != "UPDATE 1":
            raise RecordNotFound(f"no parked event with ID {parked_id!r}")

    async def delete_parked(self, parked_id: str) -> None:
        await self.db.execute(self.db.sql("DELETE FROM {prefix}parked WHERE id = $1"), parked_id)
