"""Group commit of record writes: the creates and updates queued while a batch is on its way
go together in the next one, as one transaction sent in one round trip.

A batch is set-based, whatever its size (``_sql``): one ``INSERT IGNORE`` of the new runs, one
``UPDATE ... JOIN`` of the updates (each a compare-and-set on its version), and one
``INSERT ... SELECT`` of the events joined to the rows this batch wrote. Every row a batch writes
carries the batch's random token (``writer``), so that the batch tells, inside its transaction,
which of its compare-and-sets won: only their events are inserted, and the last statement
returns each run's version and whether the batch wrote it. A losing compare-and-set fails alone;
the others commit. A statement that fails (another unfinished run took the foreign ID) makes the
server skip the rest: the batch is rolled back and each write is sent alone.

When idle, a write goes at once, alone. Under load, at most :attr:`Batcher.concurrency` batches
are in flight and the writes queued meanwhile fill the next, up to :attr:`Batcher.max_writes`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..._core.records import Message, OutboxEvent, Record
from ...errors import (
    AdapterConnectionError,
    RecordNotFound,
    VersionConflict,
    WorkflowInProgress,
)
from ..sql._batch import WriteBatcher
from ._db import Bind, MysqlDatabase, Result
from ._dialect import MysqlDialect
from ._rows import encode, headers_json, key_hash, to_us

if TYPE_CHECKING:
    from ._stream import MysqlStreamer

__all__ = ["Batcher", "Write"]

_DIALECT = MysqlDialect()


@dataclass(eq=False)
class Write:
    """One create or update with its event, queued for a batch."""

    create: bool
    record: Record
    event: OutboxEvent
    run_id: bytes
    row: tuple[Any, ...]
    event_row: tuple[Any, ...]
    size: int
    #: Why the write failed (None: it was committed).
    error: BaseException | None = None


def make_write(create: bool, record: Record, event: OutboxEvent) -> Write:
    """Check and encode the values now, so that a bad one is refused at the call."""
    workflow = encode("workflow name", record.workflow_name)
    foreign = encode("foreign ID", record.foreign_id)
    run_id = encode("run ID", record.run_id)
    reason = encode("run state reason", record.run_state_reason)
    description = encode("status description", record.status_description)
    active = None if record.run_state.finished else 1
    if create:
        row: tuple[Any, ...] = (
            run_id,
            workflow,
            foreign,
            int(record.run_state),
            record.status,
            record.object,
            to_us(record.created_at),
            to_us(record.updated_at),
            record.version,
            reason,
            description,
            record.auto_resumes,
            active,
        )
    else:
        row = (
            run_id,
            record.version - 1,
            int(record.run_state),
            record.status,
            record.object,
            to_us(record.updated_at),
            record.version,
            reason,
            description,
            record.auto_resumes,
            active,
        )
    m: Message = event.message
    key = encode("event key", m.key)
    headers = headers_json(m.headers)
    event_row = (
        run_id,
        encode("topic", event.topic),
        key,
        m.type,
        headers,
        m.data,
        to_us(m.created_at),
        key_hash(m.key),
        encode("outbox event ID", event.id),
        workflow,
    )
    size = (
        len(record.object)
        + len(m.data)
        + len(headers)
        + len(key)
        + len(reason)
        + len(description)
        + len(workflow)
        + len(foreign)
        + 3 * len(run_id)
        + 200
    )
    return Write(create, record, event, run_id, row, event_row, size)


_CREATE_COLUMNS = (
    "run_id, workflow_name, foreign_id, run_state, status, object, created_at, updated_at, "
    "version, run_state_reason, status_description, auto_resumes, active"
)
_UPDATE_COLUMNS = (
    "run_id",
    "prev",
    "run_state",
    "status",
    "object",
    "updated_at",
    "version",
    "run_state_reason",
    "status_description",
    "auto_resumes",
    "active",
)
_EVENT_COLUMNS = (
    "i",
    "run_id",
    "topic",
    "k",
    "type",
    "headers",
    "data",
    "created_at",
    "key_hash",
    "oid",
    "wf",
)


def _derived(bind: Bind, columns: Sequence[str], rows: Sequence[Sequence[Any]], row: str) -> str:
    """A derived table of literal rows: the first a SELECT that names the columns, the rest a
    table value constructor (``VALUES (...)`` on MariaDB, ``VALUES ROW(...)`` on MySQL)."""
    first = bind("SELECT " + ", ".join(f"%s AS {c}" for c in columns), rows[0])
    if len(rows) == 1:
        return f"({first})"
    holes = row + "(" + ", ".join(["%s"] * len(columns)) + ")"
    rest = ", ".join(bind(holes, r) for r in rows[1:])
    return f"({first} UNION ALL VALUES {rest})"


class Batcher:
    """Sends the writes of one record store in batches (see the module), through the shared
    :class:`~statestream.adapters.sql._batch.WriteBatcher` (one writer while idle, up to
    :attr:`concurrency` under load)."""

    #: Writes in one batch at most.
    max_writes = 64
    #: Batches in flight at once: the next one fills while the server works on these.
    concurrency = 2

    def __init__(self, db: MysqlDatabase, streamer: MysqlStreamer | None) -> None:
        self.db = db
        self.streamer = streamer
        self._batcher: WriteBatcher[Write, None] = WriteBatcher(
            self._write, max_batch=self.max_writes, writers=self.concurrency
        )
        #: Batches sent (each one round trip), and writes in them.
        self.batches = 0
        self.writes = 0

    async def submit(self, write: Write) -> None:
        await self._batcher.submit(write)

    async def close(self) -> None:
        await self._batcher.close()

    def _split(self, items: Sequence[Write]) -> list[list[Write]]:
        """The items as batches of one write per run, within the size budget, in order."""
        budget = max(self.db.max_packet // 4, 1)
        batches: list[list[Write]] = []
        left = list(items)
        while left:
            batch: list[Write] = []
            runs: set[bytes] = set()
            later: list[Write] = []
            used = 0
            for write in left:
                if write.run_id in runs or (batch and used + write.size > budget):
                    later.append(write)
                    continue
                batch.append(write)
                runs.add(write.run_id)
                used += write.size
            batches.append(batch)
            left = later
        return batches

    async def _write(self, items: Sequence[Write]) -> list[BaseException | None]:
        for batch in self._split(items):
            try:
                await self._send(batch)
            except Exception as exc:
                cause = exc.__cause__
                if len(batch) > 1 and cause is not None and _DIALECT.server_error(cause):
                    # A statement of the batch failed (and the batch was rolled back): send
                    # each write alone, so that only the one at fault fails.
                    for write in batch:
                        await self._alone(write)
                else:
                    for write in batch:
                        _fail(write, exc)
        return [w.error for w in items]

    async def _alone(self, write: Write) -> None:
        try:
            await self._send([write])
        except Exception as exc:
            cause = exc.__cause__
            if cause is not None and _DIALECT.unique_violation(cause) and not write.create:
                exc = WorkflowInProgress(
                    f"{write.record.foreign_id!r} has another unfinished run in workflow "
                    f"{write.record.workflow_name!r}"
                )
            _fail(write, exc)

    async def _send(self, batch: list[Write]) -> None:
        db = self.db
        streamer = self.streamer
        token = random.getrandbits(62) + 1
        creates = [w for w in batch if w.create]
        updates = [w for w in batch if not w.create]
        hand = (
            sorted({w.event.topic for w in batch if streamer.receiving(w.event.topic)})
            if streamer is not None
            else []
        )
        p = db.prefix
        row = db.row_constructor
        k = len(batch)

        def build(bind: Bind) -> list[str]:
            statements: list[str] = []
            if streamer is not None:
                statements.append(
                    f"UPDATE {p}event_seq SET n = LAST_INSERT_ID(n + {k}) WHERE id = 1"
                )
                statements.append(f"SET @statestream_base = LAST_INSERT_ID() - {k}")
            if updates:
                v = _derived(bind, _UPDATE_COLUMNS, [w.row for w in updates], row)
                sets = ", ".join(f"r.{c} = v.{c}" for c in _UPDATE_COLUMNS[2:])
                statements.append(
                    f"UPDATE {p}records r JOIN {v} v ON r.run_id = v.run_id AND r.version = "
                    f"v.prev SET {sets}, r.writer = {token}"
                )
            if creates:
                values = ", ".join(
                    bind("(" + ", ".join(["%s"] * 13) + f", {token})", w.row) for w in creates
                )
                statements.append(
                    f"INSERT IGNORE INTO {p}records ({_CREATE_COLUMNS}, writer) VALUES {values}"
                )
            e = _derived(
                bind, _EVENT_COLUMNS, [(i + 1, *w.event_row) for i, w in enumerate(batch)], row
            )
            join = f"{e} e JOIN {p}records r ON r.run_id = e.run_id AND r.writer = {token}"
            if streamer is not None:
                statements.append(
                    f"INSERT INTO {p}events (id, topic, `key`, type, headers, data, created_at, "
                    "key_hash) SELECT @statestream_base + e.i, e.topic, e.k, e.type, e.headers, "
                    f"e.data, e.created_at, e.key_hash FROM {join}"
                )
                if hand:
                    statements.append(
                        bind(
                            f"SELECT topic, MAX(id) FROM {p}events WHERE topic IN "
                            f"({', '.join(['%s'] * len(hand))}) AND id <= @statestream_base "
                            "GROUP BY topic",
                            [t.encode() for t in hand],
                        )
                    )
            else:
                statements.append(
                    f"INSERT INTO {p}outbox (id, workflow_name, topic, `key`, type, headers, "
                    f"data, created_at) SELECT e.oid, e.wf, e.topic, e.k, e.type, e.headers, "
                    f"e.data, e.created_at FROM {join}"
                )
            statements.append(
                bind(
                    f"SELECT run_id, version, writer = {token}, "
                    f"{'@statestream_base' if streamer is not None else '0'} FROM {p}records "
                    f"WHERE run_id IN ({', '.join(['%s'] * k)})",
                    [w.run_id for w in batch],
                )
            )
            return statements

        results = await db.script(build)
        self.batches += 1
        self.writes += k
        self._answer(batch, results, hand)

    def _answer(self, batch: list[Write], results: list[Result], hand: list[str]) -> None:
        found: dict[bytes, tuple[int, bool, int]] = {
            bytes(r[0]): (int(r[1]), bool(r[2]), int(r[3] or 0)) for r in results[-1].rows or ()
        }
        previous: dict[str, int] = {}
        if hand:
            previous = {bytes(t).decode(): int(n) for t, n in results[-2].rows or ()}
        streamer = self.streamer
        published: list[tuple[int, Write]] = []
        for i, write in enumerate(batch):
            record = write.record
            state = found.get(write.run_id)
            if state is not None and state[1]:
                published.append((state[2] + i + 1, write))
                continue
            if write.create:
                if state is not None:
                    error: Exception = VersionConflict(record.run_id, 0, state[0])
                else:
                    error = WorkflowInProgress(
                        f"{record.foreign_id!r} has an unfinished run in workflow "
                        f"{record.workflow_name!r}"
                    )
            elif state is None:
                error = RecordNotFound(f"no run {record.run_id}")
            else:
                error = VersionConflict(record.run_id, record.version - 1, state[0])
            _fail(write, error)
        if streamer is not None and published:
            # The events go to this process's receivers after the writers are answered (the
            # batcher answers them when this batch returns, before this callback runs): each
            # writer resumes first and notes its record before a receiver takes the event.
            asyncio.get_running_loop().call_soon(_hand, streamer, published, previous, set(hand))


def _hand(
    streamer: MysqlStreamer,
    published: list[tuple[int, Write]],
    previous: dict[str, int],
    hand: set[str],
) -> None:
    for event_id, write in published:
        topic = write.event.topic
        if topic in hand:
            streamer.hand(topic, event_id, previous.get(topic, 0), write.event.message)
            previous[topic] = event_id
        else:
            streamer.wake(topic)


def _fail(write: Write, error: Exception) -> None:
    if isinstance(error, AdapterConnectionError):
        cause = error
        error = AdapterConnectionError(
            f"{cause} (the write of run {write.record.run_id} may or may not have been committed)"
        )
        error.__cause__ = cause
    write.error = error
