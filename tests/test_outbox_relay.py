"""How a record store's events reach the workflow's streamer: through the outbox relay, or
straight into the streamer a store names with ``publish_to`` (and only that one)."""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from statestream import Builder, Run, RunState
from statestream._core.records import Message, OutboxEvent, status_topic
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
)
from statestream.errors import ConfigurationError


class Stage(enum.IntEnum):
    STARTED = 1
    MIDDLE = 2
    DONE = 3


@dataclass
class Item:
    n: int = 0


def _builder(name: str) -> Builder[Item, Stage]:
    async def first(run: Run[Item, Stage]) -> Stage:
        return Stage.MIDDLE

    async def second(run: Run[Item, Stage]) -> Stage:
        return Stage.DONE

    b = Builder(name, Item, Stage)
    b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.05)
    b.outbox(polling_frequency=0.02, error_backoff=0.01)
    b.add_step(Stage.STARTED, first, Stage.MIDDLE)
    b.add_step(Stage.MIDDLE, second, Stage.DONE)
    return b


class _OneTopicFailsOnce:
    """A MemoryStreamer whose first publish to ``topic`` fails after it published (a broker
    that took the batch but whose acknowledgement was lost)."""

    def __init__(self, inner: MemoryStreamer, topic: str) -> None:
        self.inner = inner
        self.topic = topic
        self.failed = False
        self.published: Counter[str] = Counter()  # topic -> events published

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        await self.inner.publish(topic, messages)
        self.published[topic] += len(messages)
        if topic == self.topic and not self.failed:
            self.failed = True
            raise RuntimeError("acknowledgement lost (test)")

    async def receiver(self, topic: str, name: str, **kwargs: Any) -> Any:
        return await self.inner.receiver(topic, name, **kwargs)

    async def prune(self, topics: Sequence[str], before: datetime) -> int:
        return await self.inner.prune(topics, before)

    async def forget(self, topic: str, keep: Collection[str], before: datetime) -> list[str]:
        return await self.inner.forget(topic, keep, before)

    async def close(self) -> None:
        await self.inner.close()


async def test_the_relay_deletes_what_was_acknowledged_when_another_topic_fails() -> None:
    # Given runs waiting in the outbox on two topics, and a streamer that fails one of them once
    name = "relay-partial"
    started, middle = status_topic(name, Stage.STARTED), status_topic(name, Stage.MIDDLE)
    streamer = _OneTopicFailsOnce(MemoryStreamer(), middle)
    store = MemoryRecordStore()
    wf = _builder(name).build(streamer, store, MemoryRoleScheduler(), pause_retry=None)
    runs = [await wf.trigger(f"a-{i}") for i in range(5)]
    runs += [await wf.trigger(f"b-{i}", start_at=Stage.MIDDLE) for i in range(5)]
    assert len(await store.list_outbox(name, 100)) == 10

    # When the relay publishes that batch, and only the failed topic's publish goes again
    async with wf:
        for i, run_id in enumerate(runs):
            fid = f"a-{i}" if i < 5 else f"b-{i - 5}"
            run = await wf.wait_for(fid, run_id, Stage.DONE, timeout=10)
            assert run.run_state is RunState.COMPLETED

    # Then the topic that was acknowledged was published once: its events were deleted from
    # the outbox although the other topic of the batch failed (the old relay deleted nothing
    # and published both again)
    assert streamer.failed
    assert streamer.published[started] == 5
    assert streamer.published[middle] == 5 + 5 + 5  # the failed batch twice, then the steps'
    assert await store.list_outbox(name, 100) == []


async def test_a_store_publishing_into_another_streamer_is_refused_at_build(
    tmp_path: Path,
) -> None:
    # (a store left with publish_to=SqliteStreamer while the workflow reads from another
    # streamer, Kafka say: the events would go where no consumer reads, and every run hang)
    db = SqliteDatabase(tmp_path / "records.db")
    table = SqliteStreamer(db)
    try:
        store = SqliteRecordStore(db, publish_to=table)
        with pytest.raises(ConfigurationError, match="without publish_to"):
            _builder("mismatch").build(MemoryStreamer(), store, MemoryRoleScheduler())
        _builder("matching").build(table, store, MemoryRoleScheduler())  # the same one: fine
        _builder("outbox").build(MemoryStreamer(), SqliteRecordStore(db), MemoryRoleScheduler())
    finally:
        await table.close()
        await db.close()


def _server_stores() -> list[tuple[Any, Any]]:
    found: list[tuple[Any, Any]] = []
    try:
        from statestream.adapters.postgres import PostgresDatabase, PostgresRecordStore

        found.append((PostgresRecordStore, PostgresDatabase("postgresql://u@127.0.0.1:1/x")))
    except ImportError:  # pragma: no cover - depends on the extras installed
        pass
    try:
        from statestream.adapters.mysql import MysqlDatabase, MysqlRecordStore

        found.append((MysqlRecordStore, MysqlDatabase("mysql://u@127.0.0.1:1/x")))
    except ImportError:  # pragma: no cover - depends on the extras installed
        pass
    return found


async def test_publish_to_a_kafka_streamer_is_a_configuration_error_that_says_what_to_do(
    tmp_path: Path,
) -> None:
    # (it was an AttributeError: "'KafkaStreamer' object has no attribute 'db'")
    pytest.importorskip("confluent_kafka")
    from statestream.adapters.kafka import KafkaStreamer

    kafka = KafkaStreamer("127.0.0.1:1")  # never connects: nothing is published
    sqlite = SqliteDatabase(tmp_path / "records.db")
    stores = [(SqliteRecordStore, sqlite), *_server_stores()]
    try:
        for cls, db in stores:
            with pytest.raises(ConfigurationError, match="leave publish_to out"):
                cls(db, publish_to=kafka)
            assert cls(db).publishes_in_transaction is False  # the outbox: the relay publishes
    finally:
        await kafka.close()
        for _, db in stores:
            await db.close()
        await asyncio.sleep(0)


async def test_the_relay_soon_publishes_what_another_process_writes_while_busy(
    tmp_path: Path,
) -> None:
    # Given a worker holding the relay, polling the outbox only every 30 s when idle, and
    # another process (its own handle on the file, no relay) whose writes cannot wake it
    b = _builder("relay-poll")
    b.outbox(polling_frequency=30.0, error_backoff=0.01)
    mine, theirs = SqliteDatabase(tmp_path / "r.db"), SqliteDatabase(tmp_path / "r.db")
    streamers = [SqliteStreamer(mine), SqliteStreamer(theirs)]
    worker = b.build(
        streamers[0], SqliteRecordStore(mine), SqliteRoleScheduler(mine), pause_retry=None
    )
    other = b.build(
        streamers[1],
        SqliteRecordStore(theirs),
        SqliteRoleScheduler(theirs),
        pause_retry=None,
        outbox=False,
    )
    try:
        async with worker:
            first = await worker.trigger("first")  # the worker's own write wakes its relay
            await worker.wait_for("first", first, Stage.DONE, timeout=10)
            await asyncio.sleep(0.2)  # the relay published the last event and found no more

            # When the other process triggers runs while the relay is busy
            # Then they are published long before the idle poll (the old relay waited 30 s:
            # only the events of these runs' later steps are the worker's own writes)
            for i in range(5):
                run_id = await other.trigger(f"other-{i}")
                run = await worker.wait_for(f"other-{i}", run_id, Stage.DONE, timeout=10)
                assert run.run_state is RunState.COMPLETED
    finally:
        for streamer in streamers:
            await streamer.close()
        await mine.close()
        await theirs.close()


async def test_an_idle_relay_stops_at_once() -> None:
    # (it waited out its poll, 30 s here, or the stop's grace)
    b = _builder("relay-stop")
    b.outbox(polling_frequency=30.0, error_backoff=0.01)
    wf = b.build(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler(), pause_retry=None)
    await wf.start()
    await asyncio.sleep(0.1)  # the relay found the outbox empty: it waits for its poll
    async with asyncio.timeout(10):  # a bound, far below the poll and the grace
        await wf.stop(grace=20)


class _CountingStore(MemoryRecordStore):
    """Counts the relay's looks at the outbox that found nothing."""

    empty_looks = 0

    async def list_outbox(self, workflow_name: str, limit: int) -> list[OutboxEvent]:
        events = await super().list_outbox(workflow_name, limit)
        if not events:
            self.empty_looks += 1
        return events


async def test_after_a_batch_the_relay_waits_for_a_write_before_looking_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a relay whose first look after a batch, and idle poll, are far off (30 s)
    from statestream._engine import relay

    monkeypatch.setattr(relay, "FIRST_IDLE_POLL", 30.0)
    b = _builder("relay-after-batch")
    b.outbox(polling_frequency=30.0, error_backoff=0.01)
    store = _CountingStore()
    wf = b.build(MemoryStreamer(), store, MemoryRoleScheduler(), pause_retry=None)
    async with wf:
        await asyncio.sleep(0.1)  # its first look, at start, found the outbox empty
        looks = store.empty_looks
        # When runs go through one at a time, each write waking the relay
        for i in range(3):
            run_id = await wf.trigger(f"r-{i}")
            run = await wf.wait_for(f"r-{i}", run_id, Stage.DONE, timeout=10)
            assert run.run_state is RunState.COMPLETED
        await asyncio.sleep(0.1)
        # Then it looked only when woken, and each look found the write's event (the old relay
        # looked again at once after every batch: a query that found nothing each time)
        assert store.empty_looks == looks
