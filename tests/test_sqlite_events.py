"""SQLite event table: wake-ups, shard hashes and reads, positions, pruning.

Two ``SqliteDatabase`` objects on one file stand for two processes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from statestream import Event, Message, OutboxEvent, Record, RunState
from statestream._core.records import shard_of
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteReceiver,
    SqliteRecordStore,
    SqliteStreamer,
)
from statestream.errors import InvalidInput


def now() -> datetime:
    return datetime.now(UTC)


def messages(keys: list[str], at: datetime | None = None) -> list[Message]:
    at = at or now()
    return [Message(key, 1, {"n": str(i)}, at) for i, key in enumerate(keys)]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "events.db", synchronous="NORMAL")
    yield database
    await database.close()


@pytest.fixture
async def streamer(db: SqliteDatabase) -> AsyncIterator[SqliteStreamer]:
    s = SqliteStreamer(db)
    yield s
    await s.close()


async def consume(receiver: SqliteReceiver, count: int) -> list[Event]:
    got: list[Event] = []
    while len(got) < count:
        batch = await receiver.recv(3)
        got.extend(batch)
        await receiver.ack(batch[-1])
    return got


async def test_every_receiver_of_a_topic_is_woken_by_a_publish(
    streamer: SqliteStreamer,
) -> None:
    # Given several consumers of one topic that would poll only every 30 s
    receivers = [
        await streamer.receiver("topic", f"consumer-{i}", poll_interval=30) for i in range(5)
    ]
    try:
        consuming = [asyncio.ensure_future(consume(r, 60)) for r in receivers]

        # When events are published one at a time while they receive
        for i in range(60):
            await streamer.publish("topic", messages([f"k-{i}"]))
            await asyncio.sleep(0)

        # Then every one of them is woken for each, none waits for its poll
        results = await asyncio.wait_for(asyncio.gather(*consuming), 5)
        assert all(len(r) == 60 for r in results)
    finally:
        for r in receivers:
            await r.close()


async def test_after_a_read_that_returned_everything_the_next_waits_before_reading(
    db: SqliteDatabase, tmp_path: Path
) -> None:
    # Given a receiver that has just read all there was (fewer events than its limit)
    streamer = SqliteStreamer(db)
    receiver = await streamer.receiver("topic", "consumer", poll_interval=0.05)
    reads = 0
    read = db.read

    async def counting(fn: Any) -> Any:
        nonlocal reads
        reads += 1
        return await read(fn)

    db.read = counting  # type: ignore[method-assign]
    try:
        await streamer.publish("topic", messages(["a"]))
        assert len(await receiver.recv(10)) == 1
        assert reads == 1

        # When the next recv waits and this process publishes
        waiting = asyncio.ensure_future(receiver.recv(10))
        await asyncio.sleep(0.01)
        await streamer.publish("topic", messages(["b"]))
        got = await asyncio.wait_for(waiting, 5)

        # Then it read once, after the wake, not once before it (that read found nothing)
        assert [e.key for e in got] == ["b"]
        assert reads == 2

        # And another process's event still arrives, after the poll interval
        other_db = SqliteDatabase(tmp_path / "events.db", synchronous="NORMAL")
        other = SqliteStreamer(other_db)
        await other.publish("topic", messages(["c"]))
        got = await asyncio.wait_for(receiver.recv(10), 5)
        assert [e.key for e in got] == ["c"]
        await other_db.close()
    finally:
        await receiver.close()
        await streamer.close()


def _outbox_event(topic: str, key: str, version: int = 1) -> OutboxEvent:
    return OutboxEvent(
        f"o-{key}-{version}", "wf", topic, Message(key, 1, {"v": str(version)}, now())
    )


def _run(key: str, version: int = 1) -> Record:
    at = now()
    return Record("wf", f"f-{key}", key, RunState.RUNNING, 1, b"{}", at, at, version)


async def test_events_the_store_writes_in_this_process_are_handed_over_without_a_read(
    db: SqliteDatabase, tmp_path: Path
) -> None:
    # Given a receiver, and a store that publishes straight into the events table
    streamer = SqliteStreamer(db)
    store = SqliteRecordStore(db, publish_to=streamer)
    receiver = await streamer.receiver("topic", "consumer", poll_interval=0.05)
    reads = 0
    read = db.read

    async def counting(fn: Any) -> Any:
        nonlocal reads
        reads += 1
        return await read(fn)

    db.read = counting  # type: ignore[method-assign]
    try:
        # When this process writes runs
        for key in ("a", "b"):
            await store.create(_run(key), _outbox_event("topic", key))

        # Then the receiver gets their events in order without reading the table
        got = await asyncio.wait_for(receiver.recv(10), 5)
        assert [(e.key, e.headers["v"]) for e in got] == [("a", "1"), ("b", "1")]
        assert got[0].id < got[1].id
        assert reads == 0

        # When another process's event lands between two of ours
        other_db = SqliteDatabase(tmp_path / "events.db", synchronous="NORMAL")
        await SqliteStreamer(other_db).publish("topic", messages(["other"]))
        await other_db.close()
        await store.create(_run("c"), _outbox_event("topic", "c"))

        # Then the handed event does not follow: the receiver reads, and misses nothing
        got = await asyncio.wait_for(receiver.recv(10), 5)
        assert [e.key for e in got] == ["other", "c"]
        assert reads == 1
        await receiver.ack(got[-1])
    finally:
        await receiver.close()
        await streamer.close()


async def test_publish_and_the_stores_own_insert_fill_the_key_hash(
    db: SqliteDatabase, streamer: SqliteStreamer
) -> None:
    keys = ["run-1", "r\u00e9sum\u00e9", "\u904b\u884c\U0001f642", ""]
    await streamer.publish("topic", messages(keys))
    store = SqliteRecordStore(db, publish_to=streamer)
    record = Record("wf", "fid", "run-via-store", RunState.INITIATED, 1, b"{}", now(), now())
    await store.create(
        record, OutboxEvent("ob", "wf", "wf-1", Message("run-via-store", 1, {}, now()))
    )

    rows = await db.read(
        lambda c: c.execute("SELECT key, key_hash FROM statestream_events ORDER BY id").fetchall()
    )
    assert [key for key, _ in rows] == [*keys, "run-via-store"]
    for key, stored in rows:
        assert stored == zlib.crc32(key.encode("utf-8"))
        assert all(stored % n == shard_of(key, n) for n in (2, 3, 8, 64))


async def test_a_sparse_shard_skips_other_shards_in_bounded_reads_and_moves_its_position(
    db: SqliteDatabase, streamer: SqliteStreamer
) -> None:
    # Given 25,000 events of shard 0 of 2, then one of shard 1, then more of shard 0
    streamer.scan_window = 1_000
    keys = [f"k-{i}" for i in range(60_000)]
    zeros = [k for k in keys if shard_of(k, 2) == 0]
    one = next(k for k in keys if shard_of(k, 2) == 1)
    for start in range(0, 25_000, 5_000):
        await streamer.publish("topic", messages(zeros[start : start + 5_000]))
    await streamer.publish("topic", messages([one, *zeros[25_000:25_010]]))
    receiver = await streamer.receiver("topic", "shard-1", shard=1, shards=2, poll_interval=30)
    reads = 0
    read = db.read

    async def counting(fn: Any) -> Any:
        nonlocal reads
        reads += 1
        return await read(fn)

    db.read = counting  # type: ignore[method-assign]
    try:
        # When it receives
        [event] = await asyncio.wait_for(receiver.recv(), 5)

        # Then it gets its one event, after one read per window of IDs scanned
        assert event.key == one
        assert 25 <= reads <= 27
        await receiver.ack(event)
        # And once idle, its position moves past the other shard's later events too
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(receiver.recv(), 0.2)
    finally:
        db.read = read  # type: ignore[method-assign]
        await receiver.close()
    top = await db.read(lambda c: c.execute("SELECT MAX(id) FROM statestream_events").fetchone())
    cursor = await db.read(
        lambda c: c.execute(
            "SELECT last_id FROM statestream_cursors WHERE name = 'shard-1'"
        ).fetchone()
    )
    assert cursor == top


async def test_an_idle_shard_does_not_hold_prune_back(
    db: SqliteDatabase, streamer: SqliteStreamer
) -> None:
    # Given two shard receivers, and events of shard 0 only, all handled
    keys = [k for k in (f"k-{i}" for i in range(400)) if shard_of(k, 2) == 0][:100]
    old = now() - timedelta(hours=1)
    await streamer.publish("topic", messages(keys, at=old))
    zero = await streamer.receiver("topic", "c-0", shard=0, shards=2)
    one = await streamer.receiver("topic", "c-1", shard=1, shards=2, poll_interval=0.01)
    try:
        assert len(await consume(zero, 100)) == 100
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(one.recv(), 0.1)
    finally:
        await zero.close()
        await one.close()

    # Then a prune deletes them all: the idle shard has acknowledged what it scanned past
    assert await streamer.prune(["topic"], now()) == 100


async def test_prune_keeps_what_another_process_has_not_acknowledged(
    db: SqliteDatabase, streamer: SqliteStreamer, tmp_path: Path
) -> None:
    # Given a consumer in another process that acknowledged 30 of 100 old events
    old = now() - timedelta(hours=1)
    await streamer.publish("topic", messages([f"k-{i}" for i in range(100)], at=old))
    other_db = SqliteDatabase(tmp_path / "events.db", synchronous="NORMAL")
    other = SqliteStreamer(other_db)
    try:
        receiver = await other.receiver("topic", "elsewhere")
        events = await consume(receiver, 30)
        await receiver.ack(events[29])
        await receiver.close()  # writes its position

        # When this process prunes in chunks of 7
        streamer.prune_chunk = 7
        commits = db.commits
        assert await streamer.prune(["topic", "topic", "other-topic"], now()) == 30
        assert db.commits - commits >= 5

        # Then the consumer resumes where it was, and ids keep growing
        receiver = await other.receiver("topic", "elsewhere")
        rest = await consume(receiver, 70)
        assert [e.key for e in rest] == [f"k-{i}" for i in range(30, 100)]
        await receiver.close()
        await streamer.publish("topic", messages(["new"]))
        [(top,)] = await db.read(
            lambda c: c.execute("SELECT MAX(id) FROM statestream_events").fetchall()
        )
        assert top > rest[-1].id
    finally:
        await other.close()
        await other_db.close()


async def test_prune_keeps_events_created_after_before_and_other_topics(
    streamer: SqliteStreamer,
) -> None:
    old = now() - timedelta(hours=1)
    await streamer.publish("topic", messages(["old-1", "old-2"], at=old))
    await streamer.publish("topic", messages(["young"]))
    await streamer.publish("elsewhere", messages(["old-3"], at=old))

    assert await streamer.prune(["topic"], now() - timedelta(minutes=1)) == 2

    receiver = await streamer.receiver("topic", "late")
    assert [e.key for e in await receiver.recv()] == ["young"]
    await receiver.close()
    with pytest.raises(InvalidInput):
        await streamer.prune(["topic"], datetime.now())  # naive on purpose


async def test_shard_arguments_are_checked(streamer: SqliteStreamer) -> None:
    for shard, shards in ((0, 0), (2, 2), (-1, 3)):
        with pytest.raises(InvalidInput):
            await streamer.receiver("topic", "c", shard=shard, shards=shards)


async def test_the_shard_read_uses_the_topic_index(db: SqliteDatabase, tmp_path: Path) -> None:
    await db.schema_version()
    conn = sqlite3.connect(tmp_path / "events.db")
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id, key, type, headers, data, created_at "
            "FROM statestream_events WHERE topic = ? AND id > ? AND id <= ? "
            "AND key_hash % ? = ? ORDER BY id LIMIT ?",
            ("t", 0, 10, 2, 1, 100),
        ).fetchall()
    finally:
        conn.close()
    details = " ".join(row[-1] for row in plan)
    assert "USING INDEX statestream_events_by_topic (topic=? AND id>? AND id<?)" in details
    assert "TEMP B-TREE" not in details


async def test_pruning_keeps_the_file_from_growing(
    db: SqliteDatabase, streamer: SqliteStreamer, tmp_path: Path
) -> None:
    # Given a consumer that keeps up with 5 rounds of 10,000 events, pruned after each round
    receiver = await streamer.receiver("topic", "consumer")
    pages: list[int] = []
    try:
        for round_ in range(5):
            keys = [f"r{round_}-{i}" for i in range(10_000)]
            for start in range(0, 10_000, 1_000):
                await streamer.publish("topic", messages(keys[start : start + 1_000]))
            got = 0
            while got < 10_000:
                batch = await receiver.recv(1_000)
                got += len(batch)
                await receiver.ack(batch[-1])
            assert await streamer.prune(["topic"], now()) == 10_000
            pages.append(await db.read(lambda c: c.execute("PRAGMA page_count").fetchone()[0]))
    finally:
        await receiver.close()

    # Then the freed pages are reused: the file stays at the size of one round
    assert max(pages) <= pages[0] * 1.1, pages
