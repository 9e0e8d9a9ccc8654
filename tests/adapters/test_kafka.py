"""The Kafka streamer against a Kafka-protocol broker (Tansu, started by ``kafka_bootstrap``)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from statestream import errors
from statestream._core.records import Event, Message, shard_of
from statestream.adaptertest import EventStreamerContract

pytest.importorskip("confluent_kafka")

from statestream.adapters.kafka import KafkaStreamer

#: A short session timeout, as a test broker wants (the streamer itself never joins a group).
CONSUMER = {"session.timeout.ms": 6000}


def _prefix() -> str:
    return f"t_{uuid.uuid4().hex[:10]}_"


def make_streamer(bootstrap: str, **kwargs: Any) -> KafkaStreamer:
    kwargs.setdefault("topic_prefix", _prefix())
    kwargs.setdefault("consumer_config", CONSUMER)
    return KafkaStreamer(bootstrap, **kwargs)


def _messages(keys: Sequence[str]) -> list[Message]:
    at = datetime.now(UTC)
    return [Message(key, 1, {"n": str(i)}, at) for i, key in enumerate(keys)]


async def _collect(receiver: Any, count: int, within: float = 5.0) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(within):
        while len(events) < count:
            events.extend(await receiver.recv(count - len(events)))
    return events


async def _nothing_more(receiver: Any) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await receiver.recv()


class TestKafkaStreamer(EventStreamerContract):
    """The whole contract on one partition per topic, where IDs follow publication order
    across keys (with several partitions they do so only per key: see the tests below)."""

    supports_prune = False

    @pytest.fixture
    async def streamer(self, kafka_bootstrap: str) -> AsyncIterator[KafkaStreamer]:
        streamer = make_streamer(kafka_bootstrap, partitions=1)
        yield streamer
        await streamer.close()


@pytest.fixture
async def kafka(kafka_bootstrap: str) -> AsyncIterator[KafkaStreamer]:
    streamer = make_streamer(kafka_bootstrap, partitions=4)
    yield streamer
    await streamer.close()


KEYS = [f"run-{i}" for i in range(40)]


async def test_each_key_keeps_its_order_across_partitions(kafka: KafkaStreamer) -> None:
    # Given five events for each of forty runs, interleaved, on a topic of four partitions
    topic = "orders-1"
    sent = [key for _ in range(5) for key in KEYS]
    messages = _messages(sent)
    for start in range(0, len(sent), 50):
        await kafka.publish(topic, messages[start : start + 50])

    # When one receiver reads them all
    receiver = await kafka.receiver(topic, "all")
    try:
        events = await _collect(receiver, len(sent))
        await _nothing_more(receiver)
    finally:
        await receiver.close()

    # Then every run's events came in the order published, each from one partition
    assert Counter(e.key for e in events) == Counter(sent)
    by_key: dict[str, list[Event]] = {}
    for event in events:
        by_key.setdefault(event.key, []).append(event)
    for key, mine in by_key.items():
        assert [e.headers["n"] for e in mine] == sorted((e.headers["n"] for e in mine), key=int)
        assert len({e.id & 0xFFF for e in mine}) == 1, key
        assert [e.id for e in mine] == sorted(e.id for e in mine)
    assert len({e.id for e in events}) == len(events)


async def test_shards_read_only_their_partitions(kafka: KafkaStreamer) -> None:
    topic = "orders-2"
    await kafka.publish(topic, _messages(KEYS))
    receivers = [await kafka.receiver(topic, f"shard-{s}", shard=s, shards=2) for s in range(2)]
    try:
        assert [r.partitions for r in receivers] == [[0, 2], [1, 3]]
        for shard, receiver in enumerate(receivers):
            mine = {k for k in KEYS if shard_of(k, 2) == shard}
            assert {e.key for e in await _collect(receiver, len(mine))} == mine
            await _nothing_more(receiver)
    finally:
        for receiver in receivers:
            await receiver.close()


async def test_shards_that_do_not_divide_the_partitions_still_get_only_their_events(
    kafka: KafkaStreamer,
) -> None:
    topic = "orders-3"
    await kafka.publish(topic, _messages(KEYS))
    receivers = [await kafka.receiver(topic, f"shard-{s}", shard=s, shards=3) for s in range(3)]
    try:
        for shard, receiver in enumerate(receivers):
            assert receiver.partitions == [0, 1, 2, 3]
            mine = {k for k in KEYS if shard_of(k, 3) == shard}
            assert {e.key for e in await _collect(receiver, len(mine))} == mine
            await _nothing_more(receiver)
    finally:
        for receiver in receivers:
            await receiver.close()


async def test_ack_commits_the_delivered_prefix_of_every_partition(kafka: KafkaStreamer) -> None:
    # Given events in four partitions, received by one consumer
    topic, name = "orders-4", "prefix"
    await kafka.publish(topic, _messages(KEYS))
    receiver = await kafka.receiver(topic, name)
    try:
        events = await _collect(receiver, len(KEYS))
        # When it acknowledges the 25th, then (late, out of order) the 10th
        await receiver.ack(events[24])
        await receiver.ack(events[9])
    finally:
        await receiver.close()

    # Then a new receiver of the name gets exactly what came after the 25th
    receiver = await kafka.receiver(topic, name)
    try:
        assert not receiver.is_new
        again = await _collect(receiver, len(KEYS) - 25)
        assert {e.key for e in again} == {e.key for e in events[25:]}
        await _nothing_more(receiver)
    finally:
        await receiver.close()


async def test_ack_of_an_event_from_another_receiver_commits_its_partition(
    kafka: KafkaStreamer,
) -> None:
    topic, name = "orders-5", "handed-over"
    await kafka.publish(topic, _messages(["a", "a", "a"]))
    reader = await kafka.receiver(topic, "reader")
    try:
        events = await _collect(reader, 3)
    finally:
        await reader.close()
    receiver = await kafka.receiver(topic, name)
    try:
        await receiver.ack(events[1])
    finally:
        await receiver.close()
    receiver = await kafka.receiver(topic, name)
    try:
        assert [e.id for e in await _collect(receiver, 1)] == [events[2].id]
        await _nothing_more(receiver)
    finally:
        await receiver.close()


async def test_records_that_are_not_ours_are_skipped_and_counted(
    kafka: KafkaStreamer,
) -> None:
    from confluent_kafka import Producer

    # Given a topic with another producer's records around ours
    topic = "orders-6"
    await kafka.publish(topic, _messages(["a"]))
    other = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for value in (b"not ours", b"\x93\xa1x\x01\x02", b""):
        other.produce(kafka.kafka_topic(topic), value, b"a")
    other.produce(kafka.kafka_topic(topic), None, b"a")
    assert other.flush(10) == 0
    await kafka.publish(topic, _messages(["a"]))

    # When a receiver reads the topic, then it gets our two events and counts the others
    receiver = await kafka.receiver(topic, "reader")
    try:
        assert [e.key for e in await _collect(receiver, 2)] == ["a", "a"]
        await _nothing_more(receiver)
        assert receiver.skipped == 4
        assert kafka.skipped == 4
    finally:
        await receiver.close()


async def test_from_latest_skips_the_whole_last_batch(kafka: KafkaStreamer) -> None:
    # The broker's high watermark may point into the last batch: the rest must not come back.
    topic = "orders-7"
    await kafka.publish(topic, _messages(KEYS))
    receiver = await kafka.receiver(topic, "latest", from_latest=True)
    try:
        await kafka.publish(topic, _messages(["new"]))
        assert [e.key for e in await _collect(receiver, 1)] == ["new"]
        await _nothing_more(receiver)
    finally:
        await receiver.close()
    ephemeral = await kafka.receiver(topic, "wake", ephemeral=True)
    try:
        await kafka.publish(topic, _messages(["newer"]))
        [event] = await _collect(ephemeral, 1)
        await ephemeral.ack(event)
        await _nothing_more(ephemeral)
    finally:
        await ephemeral.close()


async def test_an_oversized_event_is_refused_and_nothing_of_its_batch_is_sent(
    kafka_bootstrap: str,
) -> None:
    streamer = make_streamer(kafka_bootstrap, partitions=1, max_message_bytes=10_000)
    try:
        at = datetime.now(UTC)
        batch = [Message("small", 1, {}, at), Message("big", 1, {}, at, b"x" * 20_000)]
        with pytest.raises(errors.InvalidInput, match="over the Kafka message limit"):
            await streamer.publish("big", batch)
        await streamer.publish("big", [Message("after", 1, {}, at)])
        receiver = await streamer.receiver("big", "reader")
        try:
            assert [e.key for e in await _collect(receiver, 1)] == ["after"]
            await _nothing_more(receiver)
        finally:
            await receiver.close()
    finally:
        await streamer.close()


async def test_unreachable_brokers_raise_a_connection_error_naming_them() -> None:
    streamer = KafkaStreamer("127.0.0.1:1", connect_timeout=1.0)
    try:
        async with asyncio.timeout(30):  # a bound, not a measurement
            with pytest.raises(errors.AdapterConnectionError, match=r"127\.0\.0\.1:1"):
                await streamer.publish("t", _messages(["a"]))
            with pytest.raises(errors.AdapterConnectionError, match="bootstrap_servers"):
                await streamer.receiver("t", "c")
    finally:
        await streamer.close()


async def test_an_existing_topic_keeps_its_partition_count(kafka_bootstrap: str) -> None:
    prefix = _prefix()
    first = make_streamer(kafka_bootstrap, topic_prefix=prefix, partitions=2)
    second = make_streamer(kafka_bootstrap, topic_prefix=prefix, partitions=4)
    try:
        await first.publish("kept", _messages(KEYS))
        receiver = await second.receiver("kept", "reader", shard=1, shards=2)
        try:
            assert receiver.partitions == [1]
            mine = [k for k in KEYS if shard_of(k, 2) == 1]
            assert [e.key for e in await _collect(receiver, len(mine))] == mine
        finally:
            await receiver.close()
    finally:
        await first.close()
        await second.close()


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_the_runs_origin_travels_as_kafka_record_headers(kafka: KafkaStreamer) -> None:
    from confluent_kafka import Consumer, TopicPartition

    # Given an event of a run started under a W3C trace context, and one without any
    topic = "orders-8"
    at = datetime.now(UTC)
    traced = {"foreign_id": "order-7", "traceparent": TRACEPARENT, "tracestate": "k=v", "x": "1"}
    await kafka.publish(
        topic, [Message("run-a", 1, traced, at), Message("run-a", 1, {"foreign_id": "o-8"}, at)]
    )

    # When any Kafka consumer reads the records, then their Kafka headers name the origin
    raw = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": _prefix()})
    try:
        partition = shard_of("run-a", kafka.partitions)
        raw.assign([TopicPartition(kafka.kafka_topic(topic), partition, 0)])
        got: list[Any] = []
        async with asyncio.timeout(10):
            while len(got) < 2:
                msg = await asyncio.to_thread(raw.poll, 0.2)
                if msg is not None and msg.error() is None:
                    got.append(msg)
    finally:
        await asyncio.to_thread(raw.close)
    assert got[0].headers() == [
        ("foreign_id", b"order-7"),
        ("traceparent", TRACEPARENT.encode()),
        ("tracestate", b"k=v"),
    ]
    assert got[1].headers() == [("foreign_id", b"o-8")]
    assert TRACEPARENT.encode() not in got[0].value()  # sent once, as a header

    # And a statestream consumer gets them back among the event's headers
    receiver = await kafka.receiver(topic, "origin")
    try:
        first, second = await _collect(receiver, 2)
        assert dict(first.headers) == traced
        assert dict(second.headers) == {"foreign_id": "o-8"}
    finally:
        await receiver.close()


def _event_at(topic: str, partition: int, offset: int, key: str) -> Event:
    from statestream.adapters.kafka import _wire

    value, headers = _wire.encode(_messages([key])[0])
    event = _wire.decode(topic, partition, offset, key.encode(), value, headers)
    assert event is not None
    return event


def test_a_receiver_takes_its_own_producers_records_only_in_order_and_once() -> None:
    # Given a receiver whose next record in partition 0 is at offset 5 (none known in 1)
    from statestream.adapters.kafka._receiver import KafkaReceiver

    streamer = KafkaStreamer("127.0.0.1:1")
    receiver = KafkaReceiver(streamer, "t", "t", "g", [0, 1], {}, keep=None, ephemeral=False)
    receiver._next = {0: 5}
    at = {o: _event_at("t", 0, o, f"k{o}") for o in range(4, 9)}

    # When this process's producer hands over offsets 4 to 6 and 8 of partition 0, and one
    # of partition 1 (whose position it does not know)
    receiver.offer(
        [
            (0, 4, at[4]),
            (0, 5, at[5]),
            (0, 6, at[6]),
            (0, 8, at[8]),
            (1, 0, _event_at("t", 1, 0, "x")),
        ]
    )
    # Then it takes 5 and 6 only: 4 is behind it, 8 would skip 7, partition 1 is unknown
    assert list(receiver._buffer) == [at[5], at[6]]

    # And the fetch then delivers 7 and 8 but not the copies of 5 and 6 (the old receiver
    # took nothing but its fetches)
    receiver._deliver([at[5], at[6], at[7], at[8]], 0)
    assert list(receiver._buffer) == [at[5], at[6], at[7], at[8]]
    assert receiver._next == {0: 9}


async def test_a_streamer_hands_what_it_publishes_to_its_receivers_once(
    kafka: KafkaStreamer,
) -> None:
    # Given a receiver of a topic this streamer publishes to
    topic = "handed-over"
    receiver = await kafka.receiver(topic, "mine", from_latest=True)
    try:
        # When it publishes events, twice
        await kafka.publish(topic, _messages(KEYS[:10]))
        first = await _collect(receiver, 10)
        await kafka.publish(topic, _messages(KEYS[10:20]))
        second = await _collect(receiver, 10)
        # Then each arrives once (handed over, and its fetched copy dropped), each key's in order
        assert sorted(e.key for e in first + second) == sorted(KEYS[:20])
        await _nothing_more(receiver)
        await receiver.ack(second[-1])
    finally:
        await receiver.close()
