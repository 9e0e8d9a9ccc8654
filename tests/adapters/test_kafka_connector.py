"""A connector reading a Kafka topic the workflow does not own (``KafkaSource``), end to end.

Another producer writes the topic (JSON orders, and garbage); the workflow's own events and
records are in memory: what is tested is the source, its sharding by partition, its committed
offsets, and what the engine does with the translations.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from statestream import (
    Builder,
    Callback,
    Event,
    NullObserver,
    Record,
    Run,
    RunState,
    Trigger,
    Workflow,
)
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from statestream.adapters.kafka import KafkaMessage, KafkaSource, KafkaStreamer

PARTITIONS = 4


class Status(enum.IntEnum):
    CREATED = 1
    PAID = 2
    FAILED = 3


@dataclass
class Order:
    amount: int = 0


async def on_paid(run: Run[Order, Status], payload: bytes) -> Status:
    return Status.PAID if payload == b"ok" else Status.FAILED


def translate(msg: KafkaMessage) -> Trigger[Order] | Callback | None:
    data = json.loads(msg.value)  # type: ignore[arg-type]  # raises on garbage and on None
    if data["type"] == "created":
        return Trigger(data["id"], initial=Order(amount=data["amount"]))
    if data["type"] == "paid":
        return Callback(data["id"], Status.CREATED, b"ok")
    return None


class Skips(NullObserver):
    """What the engine says it skipped, and how many records it wrote."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self.writes = 0

    def event_skipped(self, workflow: str, process: str, event: Event | None, reason: str) -> None:
        self.reasons[reason.split(":")[0]] += 1

    def record_written(self, previous: Record | None, record: Record) -> None:
        self.writes += 1


async def until(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def topic(kafka_bootstrap: str) -> AsyncIterator[str]:
    """An outside topic of four partitions, created (and deleted) as its owner would."""
    name = f"ext_{uuid.uuid4().hex[:10]}_orders"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    await asyncio.to_thread(admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result, 10)
    yield name
    await asyncio.to_thread(admin.delete_topics([name])[name].result, 10)


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        producer.produce(topic, value, key, headers=[("source", b"psp")])
    assert producer.flush(10) == 0


def order(kind: str, fid: str, amount: int = 0) -> tuple[bytes, bytes]:
    body = {"type": kind, "id": fid, "amount": amount}
    return fid.encode(), json.dumps(body).encode()


GARBAGE: list[tuple[bytes | None, bytes | None]] = [
    (b"g1", b"not json at all"),  # does not decode: rejected by the translator
    (b"g2", b"\xff\xfe\x00"),  # not even text
    (b"g3", None),  # a tombstone
    (b"g4", b'{"type": "created"}'),  # no id: the translator raises KeyError
    (b"g5", b'{"type": "refund", "id": "x"}'),  # not for this workflow: ignored (None)
    (b"g6", b'{"type": "created", "id": "", "amount": 1}'),  # a Trigger the engine refuses
]


def connector_groups(streamer: KafkaStreamer, wf: Workflow[Any, Any]) -> list[str]:
    return [streamer.kafka_group(p) for p in wf.states() if "-connector-to-" in p]


async def test_a_kafka_topic_of_another_producer_starts_and_moves_runs(
    kafka_bootstrap: str, topic: str
) -> None:
    name = f"shop_{uuid.uuid4().hex[:8]}"
    streamer = KafkaStreamer(
        kafka_bootstrap, topic_prefix=f"g_{uuid.uuid4().hex[:8]}.", connect_timeout=10.0
    )
    store = MemoryRecordStore()
    events = MemoryStreamer()
    scheduler = MemoryRoleScheduler()

    def build(source: KafkaSource, observer: Skips) -> Workflow[Order, Status]:
        b = Builder(name, Order, Status)
        b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.02)
        b.outbox(polling_frequency=0.02, error_backoff=0.01)
        b.add_callback(Status.CREATED, on_paid, Status.PAID, Status.FAILED)
        b.add_connector("psp", source, parallel_count=2)
        return b.build(events, store, scheduler, pause_retry=None, observer=observer)

    async def runs() -> list[Any]:
        return await store.list(name, limit=1000)

    try:
        # Given twenty orders created and ten of them paid, with garbage among them
        created = [order("created", f"o{i}", i) for i in range(20)]
        paid = [order("paid", f"o{i}") for i in range(0, 20, 2)]
        await asyncio.to_thread(
            produce, kafka_bootstrap, topic, [*created[:10], *GARBAGE, *created[10:], *paid]
        )

        # When a workflow with a two-shard connector on the topic runs
        first = KafkaSource(streamer, topic, translate)
        skips = Skips()
        wf = build(first, skips)
        async with wf:

            async def all_moved() -> bool:
                found = await runs()
                paid_now = [r for r in found if r.status == Status.PAID]
                return len(found) == 20 and len(paid_now) == 10

            await until(all_moved, "twenty runs started and ten paid")
            await until(lambda: first.rejected + first.ignored == 5, "the garbage handled")
            await until(lambda: skips.reasons["rejected"] == 5, "the refused Trigger counted")
            receivers = [r for r in streamer._receivers if r.topic == topic]
            info = wf.process_info()

        # Then each shard read only its own partitions, and every run is there once
        assert sorted(p for r in receivers for p in r.partitions) == list(range(PARTITIONS))
        assert all(len(r.partitions) == 2 for r in receivers)
        found = await runs()
        assert Counter(r.foreign_id for r in found) == Counter(f"o{i}" for i in range(20))
        for record in found:
            want = Status.PAID if int(record.foreign_id[1:]) % 2 == 0 else Status.CREATED
            assert record.status == want, record
            if want is Status.PAID:
                assert record.run_state is RunState.COMPLETED
        assert skips.writes == 20 + 10
        # And the garbage was counted (on the source, the processes and the observer), not
        # retried: four rejected by the translator, one passed over, one refused by the engine
        assert (first.rejected, first.ignored) == (4, 1)
        assert sum(i.skipped for i in info.values()) == 5
        assert skips.reasons["rejected"] == 5
        assert sum(i.parked for i in info.values()) == 0

        # When the workflow restarts (a new process) and two more orders come
        second = KafkaSource(streamer, topic, translate)
        skips2 = Skips()
        wf = build(second, skips2)
        async with wf:
            more = [order("created", "o20"), order("created", "o21")]
            await asyncio.to_thread(produce, kafka_bootstrap, topic, more)
            await until(lambda: skips2.writes == 2, "the two new orders")
            groups = connector_groups(streamer, wf)

        # Then it resumed from the committed offsets: nothing old was read again
        assert (second.rejected, second.ignored) == (0, 0)
        assert skips2.reasons == Counter()
        assert len(await runs()) == 22

        # When the committed offsets are lost (the worst crash: nothing was committed) and
        # the workflow starts again, every record is delivered again
        await asyncio.to_thread(rewind, kafka_bootstrap, topic, groups)
        third = KafkaSource(streamer, topic, translate)
        skips3 = Skips()
        wf = build(third, skips3)
        async with wf:
            await until(lambda: (third.rejected, third.ignored) == (4, 1), "the garbage again")
            await until(
                lambda: (
                    skips3.reasons["already triggered"] == 22
                    and skips3.reasons["record finished"] == 10
                ),
                "every old record handled again",
            )

        # Then no run was triggered again and no transition applied twice (the connector's
        # own dedupe: a Trigger's run ID comes from the topic, partition and offset)
        assert skips3.writes == 0
        found = await runs()
        assert Counter(r.foreign_id for r in found) == Counter(f"o{i}" for i in range(22))
    finally:
        await streamer.close()


def rewind(bootstrap: str, topic: str, groups: list[str]) -> None:
    """Commit offset 0 of every partition for each group (as if nothing had been committed)."""
    for group in groups:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        try:
            parts = [TopicPartition(topic, p, 0) for p in range(PARTITIONS)]
            consumer.commit(offsets=parts, asynchronous=False)
        finally:
            consumer.close()


def test_the_readme_example_declares_a_connector_that_translates() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### A connector on any Kafka topic", 1)[1]
    section = section.split("\n## ", 1)[0].split("\n### ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    b = Builder("readme-orders", Order, Status)
    b.add_callback(Status.CREATED, on_paid, Status.PAID, Status.FAILED)
    namespace: dict[str, Any] = {"Order": Order, "Status": Status, "b": b}
    exec(compile(code, "README.md#a-connector-on-any-kafka-topic", "exec"), namespace)
    source = namespace["source"]
    assert isinstance(source, KafkaSource)
    assert source.topic == "psp.orders"

    def message(value: bytes) -> KafkaMessage:
        return KafkaMessage("psp.orders", 0, 7, b"o-1", value)

    readme_translate = namespace["translate"]
    created = readme_translate(message(b'{"type": "order.created", "id": "o-1", "amount": 3}'))
    assert created == Trigger("o-1", initial=Order(amount=3))
    paid = readme_translate(message(b'{"type": "order.paid", "id": "o-1"}'))
    assert paid == Callback("o-1", Status.CREATED, b'{"type": "order.paid", "id": "o-1"}')
    assert readme_translate(message(b'{"type": "other"}')) is None


async def test_a_missing_topic_is_named_and_extra_shards_read_nothing(
    kafka_bootstrap: str, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    from statestream import errors

    streamer = KafkaStreamer(kafka_bootstrap, topic_prefix=f"g_{uuid.uuid4().hex[:8]}.")
    try:
        missing = KafkaSource(streamer, f"{topic}_missing", translate)
        with pytest.raises(errors.AdapterError, match=r"does not exist.*never creates it"):
            await missing.receiver("reader")
        source = KafkaSource(streamer, topic, translate)
        with caplog.at_level(logging.WARNING, logger="statestream.kafka"):
            receiver = await source.receiver("reader", shard=4, shards=5)
        try:
            assert receiver.partitions == []
            assert "shard 4 reads nothing" in caplog.text
        finally:
            await receiver.close()
    finally:
        await streamer.close()
