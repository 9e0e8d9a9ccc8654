"""MySQL record store, with its outbox and parked events."""

from __future__ import annotations

import builtins
import dataclasses
import json
from collections.abc import Sequence
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
from ...errors import ConfigurationError, InvalidInput, RecordNotFound
from ..sql._rows import COUNT_RUNS, RECORD_COLUMNS, check_page, counts_from_rows, filter_clauses
from ._batch import Batcher, make_write
from ._db import MysqlDatabase
from ._rows import (
    PARKED_COLUMNS,
    encode,
    fits,
    from_us,
    headers_json,
    parked_from_row,
    printable,
    record_from_row,
    text,
    to_us,
)
from ._stream import MysqlStreamer

__all__ = ["MysqlRecordStore"]


def _text(value: Any) -> str:
    """A run ID as the driver gives it (text, or bytes for a binary collation)."""
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def _utf8(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


class MysqlRecordStore:
    """Runs and their events on a MySQL / MariaDB server; every write is one transaction.

    ``create`` relies on a unique key on ``(workflow, foreign ID, active)``, where ``active`` is
    1 while a run is unfinished and NULL after, so two concurrent triggers (even on two hosts)
    cannot both succeed; ``update`` is a compare-and-set on the version, never read-then-write.
    Concurrent writes share one transaction and one round trip (see ``_batch``).

    Args:
        db: the database.
        publish_to: a :class:`MysqlStreamer` on the same database. Each write then inserts its
            event straight into the streamer's events table in the same transaction, instead of
            an outbox row that the relay moves later: one commit per state change, and no relay
            on the path. The outbox stays empty.
    """

    #: The largest ``offset`` ``list`` accepts; deeper pages use ``after=``.
    max_offset = 10_000

    def __init__(self, db: MysqlDatabase, *, publish_to: MysqlStreamer | None = None) -> None:
        if publish_to is not None and getattr(publish_to, "db", None) is not db:
            # (a KafkaStreamer, say, has no database: without this check, an AttributeError)
            raise ConfigurationError(
                "publish_to must be a MysqlStreamer on the same MysqlDatabase as the store, "
                f"got {publish_to!r}; for events in another streamer (Kafka...) leave publish_to "
                "out: each write then puts its event in the outbox table, in the record's "
                "transaction, and the workflow's outbox relay publishes it"
            )
        self.db = db
        self._streamer = publish_to
        self._batcher = Batcher(db, publish_to)
        #: True with ``publish_to``: the outbox stays empty, so the engine's relay is not woken
        #: by every write (it still polls, for rows another configuration left).
        self.publishes_in_transaction = publish_to is not None
        #: The streamer each write's event goes into (``build`` refuses another one).
        self.publishes_into = publish_to

    async def create(self, record: Record, event: OutboxEvent) -> None:
        await self._batcher.submit(make_write(True, record, event))

    async def update(self, record: Record, event: OutboxEvent) -> None:
        await self._batcher.submit(make_write(False, record, event))

    async def lookup(self, run_id: str) -> Record:
        key = fits("run ID", run_id)
        rows = (
            await self.db.fetch(
                f"SELECT {RECORD_COLUMNS} FROM {self.db.prefix}records WHERE run_id = %s", (key,)
            )
            if key is not None
            else ()
        )
        if not rows:
            raise RecordNotFound(f"no run {run_id}")
        return record_from_row(rows[0])

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        workflow = fits("workflow name", workflow_name)
        foreign = fits("foreign ID", foreign_id)
        rows: Sequence[Any] = ()
        if workflow is not None and foreign is not None:
            rows = await self.db.fetch(
                f"SELECT {RECORD_COLUMNS} FROM {self.db.prefix}records "
                "WHERE workflow_name = %s AND foreign_id = %s ORDER BY seq DESC LIMIT 1",
                (workflow, foreign),
            )
        if not rows:
            raise RecordNotFound(f"no run of {foreign_id!r} in workflow {workflow_name!r}")
        return record_from_row(rows[0])

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
        """Runs in creation order (``seq``). ``after`` (a run ID) starts the page after that
        run: one index seek, however deep the page. ``offset`` is bounded by
        :attr:`max_offset`."""
        check_page(offset, limit, self.max_offset)
        sql, args = await self._list_sql(RECORD_COLUMNS, workflow_name, order, filter, after)
        rows = await self.db.fetch(sql + " LIMIT %s OFFSET %s", [*args, limit, offset])
        return [record_from_row(row) for row in rows]

    async def _list_sql(
        self,
        columns: str,
        workflow_name: str | None,
        order: Order,
        filter: RecordFilter | None,
        after: str | None,
    ) -> tuple[str, builtins.list[Any]]:
        """The statement of ``list`` without its LIMIT, and its arguments."""
        p = self.db.prefix
        where, args = filter_clauses(workflow_name, filter, "%s", _utf8)
        descending = order is Order.DESC
        # With a time bound: (created_at, seq) order, one range of records_by_created
        timed = filter is not None and (
            filter.created_after is not None or filter.created_before is not None
        )
        sign = "<" if descending else ">"
        if after is not None:
            key = fits("run ID", after)
            found = (
                await self.db.fetch(
                    f"SELECT seq, created_at FROM {p}records WHERE run_id = %s", (key,)
                )
                if key is not None
                else ()
            )
            if not found:
                raise RecordNotFound(f"no run {after} (the after= of list)")
            seq, at = int(found[0][0]), int(found[0][1])
            if timed:
                # (the expanded form: MariaDB reads a range of the key for it, not for a row
                # comparison)
                where.append(f"created_at {sign}= %s AND (created_at {sign} %s OR seq {sign} %s)")
                args.extend((at, at, seq))
            else:
                where.append(f"seq {sign} %s")
                args.append(seq)
        sql = f"SELECT {columns} FROM {p}records"
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
        sql = f"SELECT s_seq, s_id FROM ({inner} LIMIT %s) AS scan"
        params: builtins.list[Any] = [*args, scan_limit]
        if wanted:
            sql += f" WHERE s_status IN ({', '.join(['%s'] * len(wanted))})"
            params.extend(wanted)
        sql += f" ORDER BY {keys} LIMIT %s"
        picked = await self.db.fetch(sql, [*params, limit])
        if len(picked) >= limit:
            resume = _text(picked[-1][1])
        else:
            last = await self.db.fetch(f"{inner} LIMIT 1 OFFSET %s", [*args, scan_limit - 1])
            resume = _text(last[0][3]) if last else ""
        if not picked:
            return ScanPage([], resume)
        seqs = [int(p[0]) for p in picked]
        rows = await self.db.fetch(
            f"SELECT seq, {RECORD_COLUMNS} FROM {self.db.prefix}records "
            f"WHERE seq IN ({', '.join(['%s'] * len(seqs))})",
            seqs,
        )
        by_seq = {int(row[0]): record_from_row(row[1:]) for row in rows}
        # (a run deleted or moved on between the statements is left out)
        found = [by_seq.get(s) for s in seqs]
        return ScanPage(
            [r for r in found if r is not None and (not wanted or r.status in wanted)], resume
        )

    async def count_runs(self, workflow_name: str) -> RunCounts:
        """The workflow's runs by status and by run state (:class:`~statestream.RunCounter`):
        one statement (one read view), one pass over the workflow's runs (:data:`COUNT_RUNS`)."""
        workflow = fits("workflow name", workflow_name)
        if workflow is None:
            return RunCounts()
        sql = COUNT_RUNS.replace("{arg}", "%s").replace("{prefix}", self.db.prefix)
        return counts_from_rows(await self.db.fetch(sql, (workflow,)))

    async def list_outbox(self, workflow_name: str, limit: int) -> builtins.list[OutboxEvent]:
        workflow = fits("workflow name", workflow_name)
        if workflow is None:
            return []
        rows = await self.db.fetch(
            "SELECT id, workflow_name, topic, `key`, type, headers, data, created_at "
            f"FROM {self.db.prefix}outbox WHERE workflow_name = %s ORDER BY seq LIMIT %s",
            (workflow, limit),
        )
        return [
            OutboxEvent(
                text(row[0]),
                text(row[1]),
                text(row[2]),
                Message(
                    text(row[3]), int(row[4]), json.loads(row[5]), from_us(row[7]), bytes(row[6])
                ),
            )
            for row in rows
        ]

    async def delete_outbox(self, ids: Sequence[str]) -> None:
        keys = [k for k in (fits("outbox event ID", i) for i in ids) if k is not None]
        if not keys:
            return
        await self.db.execute(
            f"DELETE FROM {self.db.prefix}outbox WHERE id IN ({', '.join(['%s'] * len(keys))})",
            keys,
            idempotent=True,
        )

    async def park(self, parked: ParkedEvent) -> None:
        """Store an event a consumer gave up on; an upsert on its ID (every field replaced).
        The error text comes from user code, so a lone surrogate in it is escaped rather than
        refused: it is for people to read."""
        e = parked.event
        values = (
            encode("parked event ID", parked.id),
            encode("workflow name", parked.workflow_name),
            encode("consumer name", parked.consumer),
            e.id,
            encode("topic", e.topic),
            encode("event key", e.key),
            e.type,
            headers_json(e.headers),
            e.data,
            to_us(e.created_at),
            printable(parked.error),
            parked.attempts,
            to_us(parked.parked_at),
            int(parked.retry_requested),
        )
        updates = ", ".join(f"{c} = VALUES({c})" for c in PARKED_COLUMNS.split(", ")[1:])
        await self.db.execute(
            f"INSERT INTO {self.db.prefix}parked ({PARKED_COLUMNS}) VALUES "
            f"({', '.join(['%s'] * 14)}) ON DUPLICATE KEY UPDATE {updates}",
            values,
            idempotent=True,
        )

    async def list_parked(
        self,
        workflow_name: str,
        *,
        consumer: str | None = None,
        retry_requested: bool | None = None,
        limit: int = 100,
    ) -> builtins.list[ParkedEvent]:
        """The workflow's parked events, oldest ``parked_at`` first (ties: first parked
        first), at most ``limit``."""
        if limit < 0:
            raise InvalidInput(f"limit must be >= 0, got {limit}")
        workflow = fits("workflow name", workflow_name)
        if workflow is None:
            return []
        sql = f"SELECT {PARKED_COLUMNS} FROM {self.db.prefix}parked WHERE workflow_name = %s"
        args: builtins.list[Any] = [workflow]
        if consumer is not None:
            sql += " AND consumer = %s"
            args.append(consumer.encode("utf-8", "surrogatepass"))
        if retry_requested is not None:
            sql += " AND retry_requested = %s"
            args.append(int(retry_requested))
        sql += " ORDER BY parked_at, seq LIMIT %s"
        args.append(limit)
        return [parked_from_row(row) for row in await self.db.fetch(sql, args)]

    async def retry_parked(self, parked_id: str) -> None:
        key = fits("parked event ID", parked_id)
        if key is not None:
            p = self.db.prefix
            changed = await self.db.execute(
                f"UPDATE {p}parked SET retry_requested = 1 WHERE id = %s",
                (key,),
                idempotent=True,
            )
            if changed == 1 or await self.db.fetch(
                f"SELECT 1 FROM {p}parked WHERE id = %s", (key,)
            ):
                return
        raise RecordNotFound(f"no parked event with ID {parked_id!r}")

    async def delete_parked(self, parked_id: str) -> None:
        key = fits("parked event ID", parked_id)
        if key is not None:
            await self.db.execute(
                f"DELETE FROM {self.db.prefix}parked WHERE id = %s", (key,), idempotent=True
            )
