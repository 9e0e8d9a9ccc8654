"""MySQL / MariaDB adapters beyond the contracts: gap safety of the event IDs, round trips per
transition, indexes behind the hot queries, bad input and bad servers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

pytest.importorskip("asyncmy")

import asyncmy

from helpers import Order, Status, order_builder
from statestream._core.records import Message, OutboxEvent, ParkedEvent, Record
from statestream._core.runstate import RunState
from statestream.adapters.mysql import (
    MysqlDatabase,
    MysqlRecordStore,
    MysqlRoleScheduler,
    MysqlStreamer,
    MysqlTimeoutStore,
    SchemaError,
)
from statestream.errors import (
    AdapterConnectionError,
    ConfigurationError,
    InvalidInput,
    RecordNotFound,
    WorkflowInProgress,
)

from .test_mysql import URL, open_db, unique_prefix

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def db() -> AsyncIterator[MysqlDatabase]:
    database = await open_db()
    yield database
    await database.drop()
    await database.close()


async def raw(autocommit: bool = True) -> Any:
    """A plain driver connection to the test server (another process, as far as the adapters
    can tell)."""
    u = MysqlDatabase(URL).url
    return await asyncmy.connect(
        host=u.host,
        port=u.port,
        user=u.user,
        password=u.password,
        database=u.database,
        autocommit=autocommit,
    )


def message(key: str, status: int = 1, **headers: str) -> Message:
    return Message(key, status, headers, NOW)


def record(wf: str, fid: str, **changes: Any) -> Record:
    fields: dict[str, Any] = {
        "workflow_name": wf,
        "foreign_id": fid,
        "run_id": uuid.uuid4().hex,
        "run_state": RunState.RUNNING,
        "status": 1,
        "object": b"{}",
        "created_at": NOW,
        "updated_at": NOW,
    }
    fields.update(changes)
    return Record(**fields)


def outbox_event(r: Record, topic: str = "t", **headers: str) -> OutboxEvent:
    return OutboxEvent(
        uuid.uuid4().hex, r.workflow_name, topic, message(r.run_id, r.status, **headers)
    )


# ------------------------------------------------------------------------------ gap safety


async def test_a_lower_event_id_committing_later_is_not_skipped(db: MysqlDatabase) -> None:
    # Given a receiver at the end of a topic, and another process's transaction that has
    # taken the next event ID and written its event, but not committed yet
    streamer = MysqlStreamer(db)
    receiver = await streamer.receiver("gap", "reader", from_latest=True)
    p = db.prefix
    other = await raw(autocommit=False)
    try:
        cur = other.cursor()
        await cur.execute("START TRANSACTION")
        await cur.execute(f"UPDATE {p}event_seq SET n = LAST_INSERT_ID(n + 1) WHERE id = 1")
        await cur.execute(
            f"INSERT INTO {p}events (id, topic, `key`, type, headers, data, created_at, "
            "key_hash) VALUES (LAST_INSERT_ID(), 'gap', 'first', 1, '{}', '', 0, 0)"
        )
        # When this process publishes the next event meanwhile (it gets the higher ID)
        publish = asyncio.create_task(streamer.publish("gap", [message("second")]))
        received: list[Any] = []

        async def read() -> None:
            while len(received) < 2:
                received.extend(await receiver.recv())

        reading = asyncio.create_task(read())
        await asyncio.sleep(0.3)
        # Then the higher ID cannot commit, let alone be read, before the lower one
        assert not publish.done()
        assert received == []
        # And once the lower one commits, the reader gets both, in ID order
        await other.commit()
        await asyncio.wait_for(publish, 5)
        await asyncio.wait_for(reading, 5)
    finally:
        other.close()
        await streamer.close()
    assert [e.key for e in received] == ["first", "second"]
    assert received[0].id < received[1].id


async def test_racing_writers_on_two_databases_leave_no_event_unread(db: MysqlDatabase) -> None:
    # Given two processes (two databases objects on the same tables) publishing at once, and
    # a reader of a third that reads in small pages while they write
    other = MysqlDatabase(URL, prefix=db.prefix)
    third = MysqlDatabase(URL, prefix=db.prefix)
    writers = [MysqlStreamer(db), MysqlStreamer(other)]
    reader = MysqlStreamer(third)
    receiver = await reader.receiver("race", "reader")
    per_writer = 150
    try:

        async def write(n: int, streamer: MysqlStreamer) -> None:
            for i in range(per_writer):
                await streamer.publish("race", [message(f"{n}-{i}")])

        seen: list[str] = []

        async def read() -> None:
            while len(seen) < 2 * per_writer:
                events = await receiver.recv(limit=7)
                seen.extend(e.key for e in events)
                await receiver.ack(events[-1])

        reading = asyncio.create_task(read())
        await asyncio.gather(*(write(n, s) for n, s in enumerate(writers)))
        await asyncio.wait_for(reading, 20)
    finally:
        for s in [*writers, reader]:
            await s.close()
        await other.close()
        await third.close()
    # Then the reader saw every event once
    assert sorted(seen) == sorted(f"{n}-{i}" for n in range(2) for i in range(per_writer))


# ------------------------------------------------------------------------------ round trips


async def test_a_workflow_costs_at_most_two_round_trips_per_transition() -> None:
    # Given a workflow whose records and events are both on the server (direct publishing),
    # its background processes polling as they do by default
    db = await open_db()
    checker = MysqlDatabase(URL, prefix=db.prefix)
    streamer = MysqlStreamer(db)
    store = MysqlRecordStore(db, publish_to=streamer)
    b = order_builder(name="trips")
    b.defaults(polling_frequency=0.5)
    b.outbox(polling_frequency=0.5)
    wf = b.build(streamer, store, MysqlRoleScheduler(db), timeout_store=MysqlTimeoutStore(db))
    runs = 150
    try:
        async with wf:
            await asyncio.sleep(0.3)  # the processes have started and hold their roles
            trips = db.round_trips
            written = store._batcher.writes
            # When runs go through it (trigger, two steps)
            for i in range(runs):
                await wf.trigger(f"order-{i}", initial=Order(f"order-{i}"))
            checks = MysqlRecordStore(checker)
            deadline = time.monotonic() + 30
            while True:
                done = await checks.list("trips", limit=runs, filter=_shipped(), order=_asc())
                if len(done) == runs or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert len(done) == runs
            await asyncio.sleep(0.05)  # the last batch's task has counted its writes
            transitions = store._batcher.writes - written
            spent = db.round_trips - trips
    finally:
        await streamer.close()
        await checker.drop()
        await checker.close()
        await db.close()
    # Then each transition (a create or an update, with its event) cost at most two round
    # trips of this process, reads, writes and polling included
    assert transitions >= 3 * runs
    print(f"{spent} round trips for {transitions} transitions")
    assert spent / transitions <= 2, (spent, transitions)


def _shipped() -> Any:
    from statestream._core.records import RecordFilter

    return RecordFilter(statuses=(Status.SHIPPED,))


def _asc() -> Any:
    from statestream._core.records import Order as Ordering

    return Ordering.ASC


# ------------------------------------------------------------------------------ indexes


async def test_the_hot_queries_use_an_index(db: MysqlDatabase) -> None:
    # Given some runs, events, timers and parked events of two workflows
    streamer = MysqlStreamer(db)
    store = MysqlRecordStore(db, publish_to=streamer)
    timeouts = MysqlTimeoutStore(db)
    first: Record | None = None
    for i in range(300):
        r = record(f"wf{i % 2}", f"f{i}")
        first = first or r
        await store.create(r, outbox_event(r, topic=f"topic{i % 3}"))
        await timeouts.create(r.workflow_name, r.foreign_id, r.run_id, 1, 1, NOW)
    await streamer.close()
    assert first is not None
    p = db.prefix
    conn = await raw()
    try:
        cur = conn.cursor()
        await cur.execute(f"ANALYZE TABLE {p}records, {p}events, {p}timeouts, {p}parked")
        await cur.fetchall()
        queries = {
            "lookup": (
                f"SELECT * FROM {p}records WHERE run_id = %s",
                (first.run_id,),
                "PRIMARY",
            ),
            "latest": (
                f"SELECT * FROM {p}records WHERE workflow_name = %s AND foreign_id = %s "
                "ORDER BY seq DESC LIMIT 1",
                ("wf0", "f0"),
                f"{p}records_by_foreign_id",
            ),
            "list page": (
                f"SELECT * FROM {p}records WHERE workflow_name = %s AND seq > %s "
                "ORDER BY seq ASC LIMIT 25",
                ("wf1", 100),
                f"{p}records_by_workflow",
            ),
            "receiver fetch": (
                f"SELECT id, `key` FROM {p}events WHERE topic = %s AND id > %s "
                "ORDER BY id LIMIT 100",
                ("topic1", 10),
                f"{p}events_by_topic",
            ),
            "sharded fetch": (
                f"SELECT id, `key` FROM {p}events WHERE topic = %s AND id > %s AND id <= %s "
                "AND key_hash %% 4 = 1 ORDER BY id LIMIT 100",
                ("topic1", 10, 10_000),
                f"{p}events_by_topic",
            ),
            "list_due": (
                f"SELECT * FROM {p}timeouts WHERE workflow_name = %s AND status = %s AND "
                "state = 0 AND expire_at <= %s AND (claimed_until IS NULL OR claimed_until "
                "<= %s) ORDER BY expire_at, id LIMIT 100",
                ("wf0", 1, 2**60, 2**60),
                f"{p}timeouts_due",
            ),
            "list_parked": (
                f"SELECT * FROM {p}parked WHERE workflow_name = %s ORDER BY parked_at, seq "
                "LIMIT 100",
                ("wf0",),
                f"{p}parked_by_workflow",
            ),
        }
        for name, (sql, args, index) in queries.items():
            await cur.execute("EXPLAIN " + sql, args)
            rows = await cur.fetchall()
            columns = [d[0] for d in cur.description]
            plan = [dict(zip(columns, row, strict=True)) for row in rows]
            # Then each reads its table through the index meant for it, never a full scan
            assert plan[0]["type"] != "ALL", (name, plan)
            assert plan[0]["key"] == index, (name, plan)
    finally:
        conn.close()


# ------------------------------------------------------------------------------ bad servers


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://root:wrong-password@127.0.0.1:3306/test", ["refused user 'root'", "password"]),
        ("mysql://root@127.0.0.1:3306/statestream_no_such_db", ["does not exist", "CREATE"]),
        ("mysql://root@127.0.0.1:1/test", ["cannot reach", "127.0.0.1:1"]),
    ],
    ids=["wrong password", "missing database", "refused port"],
)
async def test_a_bad_server_or_url_fails_fast_and_says_what_to_do(
    db: MysqlDatabase, url: str, words: list[str]
) -> None:
    bad = MysqlDatabase(url, prefix=unique_prefix(), connect_timeout=3)
    started = time.monotonic()
    with pytest.raises(AdapterConnectionError) as caught:
        await MysqlRecordStore(bad).lookup("x")
    await bad.close()
    assert time.monotonic() - started < 3
    text = str(caught.value)
    assert "MySQL at 127.0.0.1" in text
    for word in words:
        assert word in text


def test_a_malformed_url_or_prefix_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="mysql://USER"):
        MysqlDatabase("postgresql://x@y/z")
    with pytest.raises(ConfigurationError, match="database name"):
        MysqlDatabase("mysql://root@127.0.0.1:3306")
    with pytest.raises(ConfigurationError, match="prefix"):
        MysqlDatabase(URL, prefix="bad-prefix; DROP")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("UPDATE {p}meta SET value = '99'", ["version 99", "newer", "upgrade statestream"]),
        ("UPDATE {p}meta SET value = '0'", ["no statestream schema version"]),
        ("ALTER TABLE {p}records ADD COLUMN extra INT", ["another shape", "extra"]),
        ("DROP TABLE {p}leases", ["is missing"]),
    ],
    ids=["newer", "no version", "other shape", "missing table"],
)
async def test_a_schema_of_another_version_or_shape_is_a_clear_error(
    db: MysqlDatabase, change: str, words: list[str]
) -> None:
    conn = await raw()
    try:
        await conn.cursor().execute(change.replace("{p}", db.prefix))
    finally:
        conn.close()
    again = MysqlDatabase(URL, prefix=db.prefix)
    with pytest.raises(SchemaError) as caught:
        await again.open()
    await again.close()
    for word in words:
        assert word in str(caught.value)
    assert "database 'test'" in str(caught.value)


async def test_a_lost_connection_is_taken_again_by_the_next_read(db: MysqlDatabase) -> None:
    store = MysqlRecordStore(db)
    r = record("wf", "f")
    await store.create(r, outbox_event(r))
    # When the server ends the connection the store holds
    [(thread,)] = await db.fetch("SELECT CONNECTION_ID()")
    conn = await raw()
    try:
        await conn.cursor().execute("KILL %s", (thread,))
    finally:
        conn.close()
    # Then the next read reconnects and answers
    assert (await store.lookup(r.run_id)).run_id == r.run_id


# ------------------------------------------------------------------------------ bad input

AWKWARD = 'o\'r "q" \\ back\\slash \x00 nul 😀 🧪 ünï'
BIG = "x" * (1 << 20)


async def test_awkward_text_and_big_values_round_trip_through_every_call(
    db: MysqlDatabase,
) -> None:
    streamer = MysqlStreamer(db)
    store = MysqlRecordStore(db)
    direct = MysqlRecordStore(db, publish_to=streamer)
    timeouts = MysqlTimeoutStore(db)
    wf, fid = f"wf {AWKWARD}", f"fid {AWKWARD}"
    blob = bytes(range(256)) * 4096  # 1 MB, every byte value
    r = record(wf, fid, object=blob, run_state_reason=BIG + AWKWARD, status_description=AWKWARD)
    e = outbox_event(r, topic=f"topic {AWKWARD}", big=BIG, awkward=AWKWARD)
    await store.create(r, e)
    assert await store.lookup(r.run_id) == r
    assert await store.latest(wf, fid) == r
    assert await store.list(wf, filter=None) == [r]
    [pending] = await store.list_outbox(wf, 10)
    assert pending == e
    await store.delete_outbox([e.id])
    r2 = record(wf, f"other {AWKWARD}", run_id=f"run {AWKWARD}", object=blob)
    e2 = outbox_event(r2, topic=f"topic {AWKWARD}", awkward=AWKWARD)
    await direct.create(r2, e2)
    # events
    receiver = await streamer.receiver(f"topic {AWKWARD}", f"name {AWKWARD}")
    await streamer.publish(f"topic {AWKWARD}", [Message(AWKWARD, 2, {AWKWARD: BIG}, NOW, blob)])
    events = await receiver.recv()
    assert [(x.key, x.data) for x in events] == [(r2.run_id, b""), (AWKWARD, blob)]
    assert events[1].headers == {AWKWARD: BIG}
    await receiver.ack(events[-1])
    await receiver.close()
    # parked
    parked = ParkedEvent(
        f"c:{AWKWARD}", wf, f"consumer {AWKWARD}", events[1], BIG + AWKWARD, 3, NOW
    )
    await store.park(parked)
    assert await store.list_parked(wf, consumer=f"consumer {AWKWARD}") == [parked]
    await store.retry_parked(parked.id)
    await store.delete_parked(parked.id)
    # timeouts
    t = await timeouts.create(wf, fid, r.run_id, 1, 1, NOW)
    assert (t.workflow_name, t.foreign_id, t.run_id) == (wf, fid, r.run_id)
    assert await timeouts.list_due(wf, 1, NOW + timedelta(seconds=1)) == [t]
    # roles
    lease = await MysqlRoleScheduler(db, ttl=2).acquire(f"role {AWKWARD}")
    await lease.release()
    await streamer.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("foreign_id", "f" * 513),
        ("workflow_name", "w" * 256),
        ("run_id", "r" * 256),
        ("foreign_id", "\ud800"),
        ("status_description", "lone \udc80"),
    ],
    ids=["long foreign ID", "long workflow", "long run ID", "surrogate key", "surrogate text"],
)
async def test_text_the_columns_cannot_hold_is_refused_at_the_call(
    db: MysqlDatabase, field: str, value: str
) -> None:
    store = MysqlRecordStore(db)
    r = record("wf", "f", **{field: value})
    with pytest.raises(InvalidInput):
        await store.create(r, outbox_event(r))
    assert await store.list() == []
    # And a lookup of such a value finds nothing
    with pytest.raises(RecordNotFound):
        await store.lookup("r" * 1000)


async def test_concurrent_writes_share_a_batch_and_a_lost_one_fails_alone(
    db: MysqlDatabase,
) -> None:
    store = MysqlRecordStore(db)
    runs = [record("wf", f"f{i}") for i in range(40)]
    await asyncio.gather(*(store.create(r, outbox_event(r)) for r in runs))
    batches = store._batcher.batches
    updates = [
        Record(**{**_fields(r), "version": 2 if i % 4 else 5, "status": 2})
        for i, r in enumerate(runs)
    ]
    results = await asyncio.gather(
        *(store.update(u, outbox_event(u)) for u in updates), return_exceptions=True
    )
    failed = [i for i, x in enumerate(results) if isinstance(x, Exception)]
    assert failed == list(range(0, 40, 4))
    assert store._batcher.batches - batches < 10
    dup = record("wf", "f1")
    with pytest.raises(WorkflowInProgress):
        await store.create(dup, outbox_event(dup))


def _fields(r: Record) -> dict[str, Any]:
    return {name: getattr(r, name) for name in Record.__dataclass_fields__}


def test_db_migrate_and_version_on_mysql(capsys: pytest.CaptureFixture[str]) -> None:
    from servers import require_mysql
    from statestream.adapters.sql import SCHEMA_VERSION as SQL_SCHEMA_VERSION
    from statestream.cli import main

    url, prefix = require_mysql(), unique_prefix()
    try:
        assert main(["db", "version", "--url", url, "--prefix", prefix]) == 0
        assert capsys.readouterr().out.strip() == "0"
        assert main(["db", "migrate", "--url", url, "--prefix", prefix]) == 0
        assert (
            f"created the statestream schema version {SQL_SCHEMA_VERSION}"
            in capsys.readouterr().out
        )
        assert main(["db", "migrate", "--url", url, "--prefix", prefix]) == 0
        assert "up to date" in capsys.readouterr().out
        assert main(["db", "version", "--url", url, "--prefix", prefix]) == 0
        assert capsys.readouterr().out.strip() == str(SQL_SCHEMA_VERSION)
    finally:

        async def drop() -> None:
            database = MysqlDatabase(url, prefix=prefix)
            try:
                await database.drop()
            finally:
                await database.close()

        asyncio.run(drop())


async def test_the_receivers_positions_are_written_in_one_statement(db: MysqlDatabase) -> None:
    # Given three receivers of three topics, each with an event acknowledged
    streamer = MysqlStreamer(db)
    streamer.ack_interval = 0.05
    topics = ["a", "b", "c"]
    for topic in topics:
        await streamer.publish(topic, [message("k")])
    receivers = [await streamer.receiver(topic, "consumer") for topic in topics]
    events = [(await r.recv())[0] for r in receivers]
    before = db.round_trips
    # When they acknowledge them together
    for receiver, event in zip(receivers, events, strict=True):
        await receiver.ack(event)
    await asyncio.sleep(0.3)
    # Then one statement wrote the three positions
    assert db.round_trips - before == 1
    rows = await db.fetch(
        f"SELECT topic, last_id FROM {db.prefix}cursors WHERE name = %s ORDER BY topic",
        (b"consumer",),
    )
    assert [(bytes(t).decode(), int(n)) for t, n in rows] == [
        (topic, event.id) for topic, event in zip(topics, events, strict=True)
    ]
    await streamer.close()
