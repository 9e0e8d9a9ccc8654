"""PostgreSQL behaviour beyond the shared contracts: gaps between racing writers, round trips
per transition, the indexes of the hot queries, bad URLs and schemas, and hostile values."""

from __future__ import annotations

import asyncio
import enum
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from servers import require_postgres, unique_prefix
from statestream import Builder, Run, errors
from statestream._core.records import (
    Event,
    Message,
    OutboxEvent,
    ParkedEvent,
    Record,
    RecordFilter,
)
from statestream._core.runstate import RunState
from statestream.adapters.postgres import (
    PostgresDatabase,
    PostgresRecordStore,
    PostgresRoleScheduler,
    PostgresStreamer,
    PostgresTimeoutStore,
)
from statestream.adapters.sql import SCHEMA_VERSION, migrate, schema_version


@pytest.fixture
async def db() -> AsyncIterator[PostgresDatabase]:
    database = PostgresDatabase(require_postgres(), prefix=unique_prefix())
    try:
        yield database
    finally:
        await database.close()
        await _drop(database.prefix)


async def _drop(prefix: str) -> None:
    cleaner = PostgresDatabase(require_postgres(), prefix=prefix)
    try:
        await cleaner.drop_tables()
    finally:
        await cleaner.close()


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------- gaps


async def test_an_event_committed_late_with_a_lower_id_is_not_skipped(
    db: PostgresDatabase,
) -> None:
    # Given a consumer of a topic, and a transaction that has inserted an event (taking the
    # lower ID) but not committed
    streamer = PostgresStreamer(db)
    topic = "racing"
    receiver = await streamer.receiver(topic, "consumer", poll_interval=0.05)
    slow = await asyncpg.connect(require_postgres())
    try:
        tx = slow.transaction()
        await tx.start()
        low_id = await slow.fetchval(
            f"INSERT INTO {db.prefix}events (topic, key, type, headers, data, created_at, "
            "key_hash) VALUES ($1, 'slow', 1, '{}', '', 0, 0) RETURNING id",
            topic,
        )
        # When another writer commits an event with a higher ID first
        await streamer.publish(topic, [Message("fast", 1, {}, _now())])
        # Then the consumer is not handed the higher one while the lower may still come
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await receiver.recv()
        # And once the slow writer commits, it receives both, the lower ID first
        await tx.commit()
        events: list[Event] = []
        async with asyncio.timeout(10):
            while len(events) < 2:
                events += await receiver.recv()
        assert [e.key for e in events] == ["slow", "fast"]
        assert events[0].id == low_id < events[1].id
    finally:
        await slow.close()
        await receiver.close()
        await streamer.close()


async def test_a_transaction_open_in_another_database_does_not_hold_delivery(
    db: PostgresDatabase,
) -> None:
    # Given a transaction with an ID, left open in another database of the same server
    import urllib.parse

    parts = urllib.parse.urlsplit(require_postgres())
    if parts.path.lstrip("/") == "postgres":
        pytest.skip("the test database is 'postgres': no other database to hold a transaction")
    elsewhere = await asyncpg.connect(require_postgres(), database="postgres")
    streamer = PostgresStreamer(db)
    try:
        tx = elsewhere.transaction()
        await tx.start()
        await elsewhere.fetchval("SELECT pg_current_xact_id()")
        # When an event is published here, then a consumer receives it at once (not when the
        # other database's transaction ends): the safety poll is far away
        receiver = await streamer.receiver("topic", "consumer", poll_interval=60)
        await streamer.publish("topic", [Message("key", 1, {}, _now())])
        async with asyncio.timeout(10):
            [event] = await receiver.recv()
        assert event.key == "key"
        await receiver.close()
        await tx.rollback()
    finally:
        await elsewhere.close()
        await streamer.close()


async def test_racing_store_writers_lose_no_event(db: PostgresDatabase) -> None:
    # Given two processes (databases) writing runs to one topic at once, and a consumer
    other = PostgresDatabase(require_postgres(), prefix=db.prefix)
    streamers = [PostgresStreamer(db), PostgresStreamer(other)]
    stores = [
        PostgresRecordStore(d, publish_to=s) for d, s in zip((db, other), streamers, strict=True)
    ]
    receiver = await streamers[0].receiver("wf-1", "consumer", poll_interval=0.05)
    try:
        n = 200

        async def write(i: int) -> None:
            now = _now()
            record = Record("wf", f"f{i}", f"run-{i}", RunState.RUNNING, 1, b"", now, now)
            event = OutboxEvent(f"e{i}", "wf", "wf-1", Message(f"run-{i}", 1, {}, now))
            await stores[i % 2].create(record, event)

        # When they write concurrently
        await asyncio.gather(*(write(i) for i in range(n)))
        # Then the consumer receives every event once
        keys: list[str] = []
        async with asyncio.timeout(20):
            while len(keys) < n:
                keys += [e.key for e in await receiver.recv(limit=1000)]
        assert sorted(keys) == sorted(f"run-{i}" for i in range(n))
    finally:
        await receiver.close()
        for s in streamers:
            await s.close()
        await other.close()


# ------------------------------------------------------------------------------ round trips


class Step(enum.IntEnum):
    S1 = 1
    S2 = 2
    S3 = 3
    S4 = 4
    S5 = 5
    S6 = 6
    S7 = 7


@dataclass
class Counter:
    n: int = 0


async def test_a_transition_costs_at_most_two_round_trips(db: PostgresDatabase) -> None:
    # Given a workflow of six steps on one PostgreSQL database (events in the records'
    # transactions)
    streamer = PostgresStreamer(db)
    store = PostgresRecordStore(db, publish_to=streamer)
    runs, done = 30, asyncio.Event()
    finished = Counter()

    async def forward(run: Run[Counter, Step]) -> Step:
        return Step(run.status + 1)

    async def last(run: Run[Counter, Step]) -> Step:
        finished.n += 1
        if finished.n == runs:
            done.set()
        return Step.S7

    b = Builder("trips", Counter, Step)
    for status in range(1, 6):
        b.add_step(Step(status), forward, Step(status + 1))
    b.add_step(Step.S6, last, Step.S7)
    wf = b.build(streamer, store, PostgresRoleScheduler(db, ttl=10.0))
    async with wf:
        await wf.trigger("warm-up")
        await asyncio.sleep(0.5)  # roles taken, receivers open
        finished.n = 0
        # When runs go through it
        before = db.round_trips
        for i in range(runs):
            await wf.trigger(f"order-{i}")
        async with asyncio.timeout(30):
            await done.wait()
        await asyncio.sleep(0.05)  # the last writes
        trips = db.round_trips - before
    await streamer.close()
    # Then each transition (trigger or step) cost at most two round trips
    transitions = runs * 7  # the trigger and six steps
    assert trips / transitions <= 2, (trips, transitions)


# --------------------------------------------------------------------------------- indexes


async def test_the_hot_queries_use_their_indexes(db: PostgresDatabase) -> None:
    streamer = PostgresStreamer(db)
    store = PostgresRecordStore(db, publish_to=streamer)
    timeouts = PostgresTimeoutStore(db)
    await db.open()
    p = db.prefix
    list_page = (
        f"SELECT run_id FROM {p}records WHERE workflow_name = $1 AND seq > $2 "
        "ORDER BY seq LIMIT $3 OFFSET $4"
    )
    cases = [
        (store._lookup, ("run",), f"{p}records_pkey"),
        (store._lookup_any, (["run", "other"],), f"{p}records_pkey"),
        (store._latest, ("wf", "fid"), f"{p}records_by_foreign_id"),
        (list_page, ("wf", 0, 25, 0), f"{p}records_by_workflow"),
        (streamer._select, ("topic", 0, 0, 100), f"{p}events_by_topic"),
        (streamer._select_shard, ("topic", 0, 0, 100, 4, 1), f"{p}events_by_topic"),
        (timeouts._list_due, ("wf", 1, 0, 100), f"{p}timeouts_due"),
        (timeouts._list, ("wf",), f"{p}timeouts_pending"),
    ]
    conn = await asyncpg.connect(require_postgres())
    try:
        # Tables this small would be scanned: forbid that, so that the plan shows whether an
        # index serves the query at all.
        await conn.execute("SET enable_seqscan = off")
        for sql, args, index in cases:
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))
            assert index in plan, (sql, plan)
            assert "Seq Scan" not in plan, (sql, plan)
    finally:
        await conn.close()
        await streamer.close()


# ------------------------------------------------------------------------------- bad input


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _url(**parts: str) -> str:
    import urllib.parse

    u = urllib.parse.urlsplit(require_postgres())
    user = parts.get("user", u.username or "postgres")
    host = parts.get("host", f"{u.hostname}:{u.port or 5432}")
    return f"postgresql://{user}@{host}/{parts.get('database', u.path.lstrip('/'))}"


@pytest.mark.parametrize(
    "url",
    ["mysql://root@127.0.0.1/test", "http://x/y", "postgresql://127.0.0.1:5432", "", "x"],
)
def test_a_malformed_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(errors.ConfigurationError, match="postgresql://"):
        PostgresDatabase(url)


@pytest.mark.parametrize("prefix", ["", "1abc", "a-b", "a;drop", "x" * 60, "ta ble"])
def test_a_bad_prefix_is_a_configuration_error(prefix: str) -> None:
    with pytest.raises(errors.ConfigurationError, match="prefix"):
        PostgresDatabase(require_postgres(), prefix=prefix)


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ({"user": "no_such_user_ss"}, "refused user 'no_such_user_ss'"),
        ({"database": "no_such_database_ss"}, "'no_such_database_ss' does not exist"),
        ({"host": "127.0.0.1:{port}"}, "cannot reach PostgreSQL at 127.0.0.1"),
    ],
    ids=["user", "database", "port"],
)
async def test_connection_problems_are_clear_errors_at_once(
    parts: dict[str, str], match: str
) -> None:
    parts = {k: v.format(port=_free_port()) for k, v in parts.items()}
    database = PostgresDatabase(_url(**parts), prefix=unique_prefix(), connect_timeout=2)
    try:
        async with asyncio.timeout(15):
            with pytest.raises(errors.AdapterConnectionError, match=match) as caught:
                await database.open()
        assert "asyncpg" not in str(caught.value)
        # and the first use says the same, without hanging
        store = PostgresRecordStore(database)
        async with asyncio.timeout(15):
            with pytest.raises(errors.AdapterConnectionError, match=match):
                await store.lookup("run")
    finally:
        await database.close()


async def test_an_unroutable_host_times_out_with_a_clear_error() -> None:
    # 192.0.2.0/24 is reserved for documentation: nothing answers there.
    database = PostgresDatabase(_url(host="192.0.2.1:5432"), connect_timeout=0.5)
    try:
        async with asyncio.timeout(15):
            with pytest.raises(errors.AdapterConnectionError, match=r"192\.0\.2\.1:5432"):
                await database.open()
    finally:
        await database.close()


async def test_an_empty_database_gets_the_schema_once_when_workers_start_together() -> None:
    prefix = unique_prefix()
    workers = [PostgresDatabase(require_postgres(), prefix=prefix) for _ in range(4)]
    try:
        await asyncio.gather(*(w.open() for w in workers))
        assert await schema_version(require_postgres(), prefix=prefix) == SCHEMA_VERSION
    finally:
        for w in workers:
            await w.close()
        await _drop(prefix)


async def test_migrate_creates_the_schema_and_version_reads_it() -> None:
    prefix = unique_prefix()
    try:
        assert await schema_version(require_postgres(), prefix=prefix) == 0
        assert await migrate(require_postgres(), prefix=prefix) == (0, SCHEMA_VERSION)
        assert await schema_version(require_postgres(), prefix=prefix) == SCHEMA_VERSION
        assert await migrate(require_postgres(), prefix=prefix) == (SCHEMA_VERSION, SCHEMA_VERSION)
    finally:
        await _drop(prefix)


async def test_a_newer_schema_is_refused(db: PostgresDatabase) -> None:
    await db.execute(db.sql("UPDATE {prefix}meta SET value = '99'"))
    again = PostgresDatabase(require_postgres(), prefix=db.prefix)
    try:
        with pytest.raises(errors.AdapterError, match=r"version 99.*newer.*upgrade statestream"):
            await again.open()
    finally:
        await again.close()


async def test_an_older_schema_asks_for_a_migration(
    db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    await db.open()
    from statestream.adapters.sql import _schema

    monkeypatch.setattr(_schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    again = PostgresDatabase(require_postgres(), prefix=db.prefix)
    try:
        with pytest.raises(
            errors.AdapterError, match=rf"version {SCHEMA_VERSION} .*older.*statestream db migrate"
        ):
            await again.open()
    finally:
        await again.close()


async def test_a_table_of_another_shape_is_refused(db: PostgresDatabase) -> None:
    await db.open()
    await db.execute(db.sql("ALTER TABLE {prefix}events DROP COLUMN key_hash"))
    again = PostgresDatabase(require_postgres(), prefix=db.prefix)
    try:
        with pytest.raises(
            errors.AdapterError, match=r"events exists with another shape.*key_hash"
        ):
            await again.open()
    finally:
        await again.close()


async def test_tables_not_made_by_statestream_are_refused() -> None:
    prefix = unique_prefix()
    conn = await asyncpg.connect(require_postgres())
    try:
        await conn.execute(f"CREATE TABLE {prefix}records (x int)")
        database = PostgresDatabase(require_postgres(), prefix=prefix)
        try:
            with pytest.raises(errors.AdapterError, match="not made by statestream"):
                await database.open()
        finally:
            await database.close()
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {prefix}records")
        await conn.close()


# -------------------------------------------------------------------------- hostile values

HOSTILE = "it's \\ \"quoted\" '; DROP TABLE x; -- \\x00 $1 %s ?"
BIG = "x" * (1 << 20)


async def test_quotes_and_backslashes_go_through_every_call(db: PostgresDatabase) -> None:
    streamer = PostgresStreamer(db)
    store = PostgresRecordStore(db)
    timeouts = PostgresTimeoutStore(db)
    scheduler = PostgresRoleScheduler(db, ttl=2, poll_interval=0.02)
    try:
        now = _now()
        wf, fid, run_id = f"wf{HOSTILE}", f"fid{HOSTILE}", f"run{HOSTILE}"
        headers = {HOSTILE: HOSTILE + "\x00"}
        record = Record(
            wf,
            fid,
            run_id,
            RunState.RUNNING,
            1,
            HOSTILE.encode() + b"\x00",
            now,
            now,
            1,
            HOSTILE,
            HOSTILE,
        )
        event = OutboxEvent(f"e{HOSTILE}", wf, f"t{HOSTILE}", Message(run_id, 1, headers, now))
        await store.create(record, event)
        updated = Record(wf, fid, run_id, RunState.RUNNING, 2, b"\x00", now, now, 2, BIG, BIG)
        await store.update(updated, event.__class__(f"e2{HOSTILE}", wf, event.topic, event.message))
        got = await store.lookup(run_id)
        assert (got.run_state_reason, got.status_description) == (BIG, BIG)
        assert (await store.latest(wf, fid)).run_id == run_id
        page = await store.list(wf, filter=RecordFilter(foreign_ids=[fid]), after=None)
        assert [r.run_id for r in page] == [run_id]
        [out, _] = await store.list_outbox(wf, 10)
        assert out.message.headers == headers
        assert out.id == event.id
        await store.delete_outbox([out.id])
        parked = ParkedEvent(
            f"p{HOSTILE}",
            wf,
            f"c{HOSTILE}",
            Event(1, event.topic, run_id, 1, headers, now, HOSTILE.encode()),
            BIG + "\x00" + HOSTILE,
            3,
            now,
        )
        await store.park(parked)
        [back] = await store.list_parked(wf, consumer=parked.consumer)
        assert back.error.startswith(BIG)
        assert back.event.headers == headers
        await store.retry_parked(parked.id)
        await store.delete_parked(parked.id)

        await streamer.publish(event.topic, [Message(HOSTILE, 2, headers, now, BIG.encode())])
        receiver = await streamer.receiver(event.topic, f"c{HOSTILE}")
        [received] = await receiver.recv()
        assert (received.key, received.headers, received.data) == (HOSTILE, headers, BIG.encode())
        await receiver.ack(received)
        await receiver.close()
        assert await streamer.forget(event.topic, [HOSTILE], now + timedelta(hours=1)) == [
            f"c{HOSTILE}"
        ]
        assert await streamer.prune([event.topic], now + timedelta(hours=1)) == 1

        timer = await timeouts.create(wf, fid, run_id, 1, 1, now)
        assert [t.id for t in await timeouts.list_due(wf, 1, now + timedelta(seconds=1))] == [
            timer.id
        ]
        await timeouts.cancel_for(wf, run_id, 1, 2)
        assert await timeouts.prune(wf, now + timedelta(hours=1)) == 1

        lease = await scheduler.acquire(f"role{HOSTILE}")
        await lease.release()
    finally:
        await streamer.close()


@pytest.mark.parametrize("field", ["workflow_name", "foreign_id", "run_id", "reason", "topic"])
async def test_nul_in_text_is_invalid_input_and_writes_nothing(
    db: PostgresDatabase, field: str
) -> None:
    store = PostgresRecordStore(db)
    now = _now()
    values = {
        "workflow_name": "wf",
        "foreign_id": "fid",
        "run_id": "run",
        "reason": "",
        "topic": "wf-1",
    }
    values[field] += "a\x00b"
    record = Record(
        values["workflow_name"],
        values["foreign_id"],
        values["run_id"],
        RunState.RUNNING,
        1,
        b"",
        now,
        now,
        1,
        values["reason"],
    )
    event = OutboxEvent("e", "wf", values["topic"], Message("run", 1, {}, now))
    with pytest.raises(errors.InvalidInput, match="NUL"):
        await store.create(record, event)
    with pytest.raises(errors.InvalidInput, match="NUL"):
        await PostgresStreamer(db).receiver("t\x00", "c")
    with pytest.raises(errors.InvalidInput):
        await store.lookup("run\x00")
    assert await store.list() == []


async def test_a_key_too_long_for_an_index_is_invalid_input(db: PostgresDatabase) -> None:
    import random

    store = PostgresRecordStore(db)
    now = _now()
    long_id = "".join(random.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=1 << 20))
    record = Record("wf", long_id, "run", RunState.RUNNING, 1, b"", now, now)
    with pytest.raises(errors.InvalidInput, match="index"):
        await store.create(record, OutboxEvent("e", "wf", "wf-1", Message("run", 1, {}, now)))
    with pytest.raises(errors.RecordNotFound):
        await store.lookup(long_id)


# -------------------------------------------------------------------------------- batching


def _record(fid: str, run_id: str, state: RunState = RunState.RUNNING, version: int = 1) -> Record:
    now = _now()
    return Record("wf", fid, run_id, state, 1, b"", now, now, version)


def _event(run_id: str) -> OutboxEvent:
    return OutboxEvent(
        f"e-{run_id}-{_now().timestamp()}", "wf", "wf-1", Message(run_id, 1, {}, _now())
    )


async def test_concurrent_writes_share_statements_and_fail_alone(db: PostgresDatabase) -> None:
    store = PostgresRecordStore(db)
    # Given runs to update, and a finished run next to an unfinished one of the same foreign ID
    for i in range(10):
        await store.create(_record(f"f{i}", f"run-{i}"), _event(f"run-{i}"))
    await store.create(_record("dup", "old", RunState.COMPLETED), _event("old"))
    await store.create(_record("dup", "new"), _event("new"))
    batches = db.record_writer.batcher.batches

    # When many writes go at once: good updates, creates racing for one foreign ID, a stale
    # update, an update of a missing run, and one that would make a second unfinished run
    writes = [
        store.update(_record(f"f{i}", f"run-{i}", version=2), _event(f"run-{i}")) for i in range(10)
    ]
    writes += [store.create(_record("race", f"racer-{i}"), _event(f"racer-{i}")) for i in range(5)]
    writes.append(store.update(_record("f0", "run-0", version=5), _event("run-0")))
    writes.append(store.update(_record("x", "missing", version=2), _event("missing")))
    writes.append(store.update(_record("dup", "old", version=2), _event("old")))
    results = await asyncio.gather(*writes, return_exceptions=True)

    # Then they shared few statements, and each failure is its own
    assert db.record_writer.batcher.batches - batches < len(writes)
    assert results[:10] == [None] * 10
    racers = results[10:15]
    assert racers.count(None) == 1
    assert all(isinstance(r, errors.WorkflowInProgress) for r in racers if r is not None)
    assert isinstance(results[15], errors.VersionConflict)
    assert isinstance(results[16], errors.RecordNotFound)
    assert isinstance(results[17], errors.WorkflowInProgress)
    assert (await store.lookup("run-3")).version == 2
    assert (await store.lookup("old")).run_state is RunState.COMPLETED


async def test_concurrent_lookups_share_statements_and_miss_alone(db: PostgresDatabase) -> None:
    store = PostgresRecordStore(db)
    # Given some runs
    for i in range(10):
        await store.create(_record(f"f{i}", f"run-{i}"), _event(f"run-{i}"))
    trips = db.round_trips

    # When many lookups go at once, one of a missing run and one run twice
    ids = [f"run-{i}" for i in range(10)] + ["missing", "run-3"]
    results = await asyncio.gather(*(store.lookup(r) for r in ids), return_exceptions=True)

    # Then they shared statements (fewer round trips than lookups), each got its own run, and
    # only the missing one failed
    assert db.round_trips - trips < len(ids)
    assert [r.run_id for r in results if isinstance(r, Record)] == [*ids[:10], "run-3"]
    assert isinstance(results[10], errors.RecordNotFound)
    # And a lookup alone still works, and still misses
    assert (await store.lookup("run-7")).foreign_id == "f7"
    with pytest.raises(errors.RecordNotFound):
        await store.lookup("nope")


async def test_an_idle_shard_does_not_hold_prune_back(db: PostgresDatabase) -> None:
    from statestream._core.records import shard_of

    # Given a topic whose old events all belong to shard 0, and a consumer of shard 1 that
    # has read (nothing of its own) and closed
    streamer = PostgresStreamer(db)
    streamer.idle_ack_interval = 0
    keys = [k for k in (f"key-{i}" for i in range(40)) if shard_of(k, 2) == 0][:5]
    old = _now() - timedelta(hours=1)
    await streamer.publish("topic", [Message(k, 1, {}, old) for k in keys])
    try:
        receiver = await streamer.receiver("topic", "consumer", shard=1, shards=2)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await receiver.recv()
        await receiver.close()
        # When the topic is pruned, then the shard's position does not keep the events
        assert await streamer.prune(["topic"], _now()) == 5
    finally:
        await streamer.close()


async def test_a_wrong_password_is_a_clear_error() -> None:
    """The shared server trusts every local user: a private cluster with scram-sha-256
    authentication (tests/pgcluster.py) tells a wrong password from the right one."""
    from pgcluster import private_cluster

    with private_cluster(password="right-password") as cluster:
        wrong = PostgresDatabase(cluster.url.replace(":right-password@", ":wrong@"))
        try:
            async with asyncio.timeout(20):
                with pytest.raises(errors.AdapterConnectionError, match="refused user 'postgres'"):
                    await wrong.open()
        finally:
            await wrong.close()
        right = PostgresDatabase(cluster.url, prefix=unique_prefix())
        try:
            await right.open()
            await right.drop_tables()
        finally:
            await right.close()
