"""``EventStreamerContract``: the conformance suite for :class:`~statestream.EventStreamer`.

Mirrors luno/workflow's ``adaptertest.RunEventStreamerTest`` (including the ``from_latest`` race of
luno PR #190) and adds ordering, redelivery, blocking and cancellation cases, sharded receivers,
``is_new``, the position a ``from_latest`` receiver commits when it opens, and ``prune``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from .._core.protocols import EventReceiver, EventStreamer
from .._core.records import Event, Message, shard_of
from ._history import EventHistoryContract
from ._util import assert_close, now, unique

__all__ = ["EventStreamerContract"]

#: How long a ``recv`` may take to return once an event is there.
_PROMPT = 1.0
#: How long to watch a receiver to conclude that nothing more arrives.
_QUIET = 0.1


def _messages(count: int, start: int = 0, *, at: datetime | None = None) -> list[Message]:
    """``count`` messages keyed ``run-<start>`` onwards, created ``at`` (default: now)."""
    return _keyed([f"run-{i}" for i in range(start, start + count)], at=at)


def _keyed(keys: Sequence[str], *, at: datetime | None = None) -> list[Message]:
    created_at = at if at is not None else now()
    return [
        Message(
            key=key,
            type=i % 7 + 1,
            headers={"n": str(i), "workflow_name": "contract", "empty": ""},
            created_at=created_at,
        )
        for i, key in enumerate(keys)
    ]


def _keys(events: Sequence[Event]) -> list[str]:
    return [e.key for e in events]


async def _collect(receiver: EventReceiver, count: int, within: float = 2.0) -> list[Event]:
    """Receive exactly ``count`` events, over as many ``recv`` calls as the backend needs."""
    events: list[Event] = []
    async with asyncio.timeout(within):
        while len(events) < count:
            batch = await receiver.recv(count - len(events))
            assert batch, "recv returned no events"
            events.extend(batch)
    return events


async def _assert_nothing_more(receiver: EventReceiver) -> None:
    try:
        async with asyncio.timeout(_QUIET):
            got = await receiver.recv()
    except TimeoutError:
        return
    pytest.fail(f"unexpected events: {got}")


def _is_new(receiver: EventReceiver) -> bool:
    """``receiver.is_new``, read by name because the ``EventReceiver`` protocol lacks it."""
    is_new = getattr(receiver, "is_new", None)
    assert isinstance(is_new, bool), f"{type(receiver).__name__}.is_new is missing or not a bool"
    return is_new


@contextlib.asynccontextmanager
async def _opened(
    streamer: EventStreamer,
    topic: str,
    name: str,
    *,
    from_latest: bool = False,
    shard: int = 0,
    shards: int = 1,
) -> AsyncIterator[EventReceiver]:
    if shards == 1:  # leave the shard arguments to the tests of shards
        receiver = await streamer.receiver(topic, name, from_latest=from_latest)
    else:
        receiver = await streamer.receiver(
            topic, name, from_latest=from_latest, shard=shard, shards=shards
        )
    try:
        yield receiver
    finally:
        await receiver.close()


class EventStreamerContract(EventHistoryContract):
    """Conformance tests for an :class:`~statestream.EventStreamer`.

    Subclass it as ``TestXxxStreamer`` and define a ``streamer`` fixture that gives the streamer
    under test. A backend with its own retention (Kafka), whose ``prune`` and ``forget`` do
    nothing, sets ``supports_prune = False``: the cases of deletion are skipped, and the no-op
    is checked instead.
    """

    #: Whether ``prune`` deletes events and ``forget`` drops positions.
    supports_prune: bool = True

    def _requires_prune(self) -> None:
        if not self.supports_prune:
            pytest.skip("the backend has its own retention: prune and forget do nothing")

    @pytest.mark.asyncio
    async def test_receives_published_events_in_order_with_every_field(
        self, streamer: EventStreamer
    ) -> None:
        topic = unique("topic")
        sent = _messages(3)
        await streamer.publish(topic, sent)

        async with _opened(streamer, topic, unique("consumer")) as receiver:
            events = await _collect(receiver, 3)

        for event, message in zip(events, sent, strict=True):
            assert isinstance(event.id, int)
            assert event.topic == topic
            assert event.key == message.key
            assert event.type == message.type
            assert dict(event.headers) == dict(message.headers)
            assert_close(event.created_at, message.created_at, "created_at")
        ids = [e.id for e in events]
        assert ids == sorted(set(ids)), ids

    @pytest.mark.asyncio
    async def test_ids_increase_across_publishes(self, streamer: EventStreamer) -> None:
        topic = unique("topic")
        for i in range(5):
            await streamer.publish(topic, _messages(1, start=i))

        async with _opened(streamer, topic, unique("consumer")) as receiver:
            events = await _collect(receiver, 5)

        assert _keys(events) == [f"run-{i}" for i in range(5)]
        ids = [e.id for e in events]
        assert ids == sorted(set(ids)), ids

    @pytest.mark.asyncio
    async def test_batch_publish_keeps_order(self, streamer: EventStreamer) -> None:
        topic = unique("topic")
        await streamer.publish(topic, _messages(50))

        async with _opened(streamer, topic, unique("consumer")) as receiver:
            events = await _collect(receiver, 50)

        assert _keys(events) == [f"run-{i}" for i in range(50)]

    @pytest.mark.asyncio
    async def test_topics_are_independent(self, streamer: EventStreamer) -> None:
        first, second = unique("topic"), unique("topic")
        await streamer.publish(first, _messages(2))
        await streamer.publish(second, _messages(3, start=100))

        async with _opened(streamer, first, unique("consumer")) as receiver:
            events = await _collect(receiver, 2)
            assert _keys(events) == ["run-0", "run-1"]
            assert {e.topic for e in events} == {first}
            await _assert_nothing_more(receiver)

    @pytest.mark.asyncio
    async def test_each_consumer_name_gets_every_event(self, streamer: EventStreamer) -> None:
        topic = unique("topic")
        await streamer.publish(topic, _messages(4))

        async with (
            _opened(streamer, topic, unique("consumer")) as one,
            _opened(streamer, topic, unique("consumer")) as two,
        ):
            first = await _collect(one, 4)
            for event in first:
                await one.ack(event)
            second = await _collect(two, 4)

        assert _keys(first) == _keys(second) == [f"run-{i}" for i in range(4)]

    @pytest.mark.asyncio
    async def test_new_receiver_resumes_after_the_last_ack(self, streamer: EventStreamer) -> None:
        # Given five events of which the first three were acknowledged
        topic, name = unique("topic"), unique("consumer")
        await streamer.publish(topic, _messages(5))
        async with _opened(streamer, topic, name) as receiver:
            events = await _collect(receiver, 5)
            await receiver.ack(events[2])

        # When a receiver with the same name opens, then it starts after the acknowledged one
        async with _opened(streamer, topic, name) as receiver:
            assert _keys(await _collect(receiver, 2)) == ["run-3", "run-4"]
            await _assert_nothing_more(receiver)

    @pytest.mark.asyncio
    async def test_unacknowledged_events_are_delivered_again(self, streamer: EventStreamer) -> None:
        topic, name = unique("topic"), unique("consumer")
        await streamer.publish(topic, _messages(2))
        async with _opened(streamer, topic, name) as receiver:
            await _collect(receiver, 2)

        async with _opened(streamer, topic, name) as receiver:
            events = await _collect(receiver, 2)
            assert _keys(events) == ["run-0", "run-1"]
            await receiver.ack(events[-1])

        await streamer.publish(topic, _messages(1, start=2))
        async with _opened(streamer, topic, name) as receiver:
            assert _keys(await _collect(receiver, 1)) == ["run-2"]

    @pytest.mark.asyncio
    async def test_from_latest_receives_only_events_published_after_receiver(
        self, streamer: EventStreamer
    ) -> None:
        # Given events published before the receiver is opened (luno PR #190)
        topic, name = unique("topic"), unique("consumer")
        await streamer.publish(topic, _messages(2))
        async with _opened(streamer, topic, name, from_latest=True) as receiver:
            # When one is published after receiver() returned but before the first recv
            await streamer.publish(topic, _messages(1, start=2))

            # Then only that one is received
            events = await _collect(receiver, 1)
            assert _keys(events) == ["run-2"]
            await _assert_nothing_more(receiver)
            await receiver.ack(events[0])

        # And a later receiver with the same name resumes from its committed position
        await streamer.publish(topic, _messages(1, start=3))
        async with _opened(streamer, topic, name, from_latest=True) as receiver:
            assert _keys(await _collect(receiver, 1)) == ["run-3"]

    @pytest.mark.asyncio
    async def test_committed_position_wins_over_from_latest(self, streamer: EventStreamer) -> None:
        topic, name = unique("topic"), unique("consumer")
        await streamer.publish(topic, _messages(2))
        async with _opened(streamer, topic, name) as receiver:
            events = await _collect(receiver, 2)
            await receiver.ack(events[0])
        await streamer.publish(topic, _messages(1, start=2))

        async with _opened(streamer, topic, name, from_latest=True) as receiver:
            assert _keys(await _collect(receiver, 2)) == ["run-1", "run-2"]

    @pytest.mark.asyncio
    async def test_recv_returns_at_most_limit(self, streamer: EventStreamer) -> None:
        topic = unique("topic")
        await streamer.publish(topic, _messages(5))

        async with _opened(streamer, topic, unique("consumer")) as receiver:
            async with asyncio.timeout(_PROMPT):
                first = await receiver.recv(2)
            assert 1 <= len(first) <= 2
            rest = await _collect(receiver, 5 - len(first))

        assert _keys(first + rest) == [f"run-{i}" for i in range(5)]

    @pytest.mark.asyncio
    async def test_recv_waits_for_a_publish_without_polling(self, streamer: EventStreamer) -> None:
        topic = unique("topic")
        # A long poll interval: a receiver that polled would miss the deadline below.
        receiver = await streamer.receiver(topic, unique("consumer"), poll_interval=5.0)
        try:
            waiting = asyncio.create_task(receiver.recv())
            await asyncio.sleep(_QUIET)
            assert not waiting.done()

            await streamer.publish(topic, _messages(1))

            events = await asyncio.wait_for(waiting, _PROMPT)
            assert _keys(events) == ["run-0"]
        finally:
            await receiver.close()

    @pytest.mark.asyncio
    async def test_recv_is_cancellable_and_the_receiver_stays_usable(
        self, streamer: EventStreamer
    ) -> None:
        topic = unique("topic")
        async with _opened(streamer, topic, unique("consumer")) as receiver:
            waiting = asyncio.create_task(receiver.recv())
            await asyncio.sleep(_QUIET)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

            await streamer.publish(topic, _messages(2))

            assert _keys(await _collect(receiver, 2)) == ["run-0", "run-1"]

    @pytest.mark.asyncio
    async def test_many_events_arrive_without_loss_or_duplicates(
        self, streamer: EventStreamer
    ) -> None:
        topic = unique("topic")
        async with _opened(streamer, topic, unique("consumer")) as receiver:
            for start in range(0, 1000, 100):
                await streamer.publish(topic, _messages(100, start=start))

            events = await _collect(receiver, 1000, within=10.0)
            await receiver.ack(events[-1])
            await _assert_nothing_more(receiver)

        assert _keys(events) == [f"run-{i}" for i in range(1000)]
        ids = [e.id for e in events]
        assert ids == sorted(set(ids))

    # -- shards --------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_shard_receivers_together_receive_every_event_exactly_once(
        self, streamer: EventStreamer
    ) -> None:
        # Given 300 events with ASCII and non-ASCII keys, half published before three shard
        # receivers open and half while they receive
        topic = unique("topic")
        keys = [f"{prefix}-{i}" for i in range(100) for prefix in ("run", "ünï", "運行🙂")]
        await streamer.publish(topic, _keyed(keys[:150]))
        receivers = [
            await streamer.receiver(topic, unique("consumer"), shard=shard, shards=3)
            for shard in range(3)
        ]
        try:
            expected = [[k for k in keys if shard_of(k, 3) == shard] for shard in range(3)]
            assert all(expected), "the keys should fall into every shard"
            collecting = [
                asyncio.create_task(_collect(r, len(e), within=5.0))
                for r, e in zip(receivers, expected, strict=True)
            ]
            for start in range(150, 300, 30):
                await streamer.publish(topic, _keyed(keys[start : start + 30]))
            received = await asyncio.gather(*collecting)

            # Then each receives exactly its shard's events, in order, and nothing more
            for receiver, events, mine in zip(receivers, received, expected, strict=True):
                assert _keys(events) == mine
                ids = [e.id for e in events]
                assert ids == sorted(set(ids)), ids
                await _assert_nothing_more(receiver)
            assert Counter(k for events in received for k in _keys(events)) == Counter(keys)
        finally:
            for receiver in receivers:
                await receiver.close()

    @pytest.mark.asyncio
    async def test_shard_receiver_resumes_after_its_last_ack(self, streamer: EventStreamer) -> None:
        # Given a shard receiver that acknowledged the fifth event of its shard
        topic, name = unique("topic"), unique("consumer")
        await streamer.publish(topic, _messages(60))
        mine = [f"run-{i}" for i in range(60) if shard_of(f"run-{i}", 2) == 1]
        async with _opened(streamer, topic, name, shard=1, shards=2) as receiver:
            events = await _collect(receiver, len(mine))
            assert _keys(events) == mine
            await receiver.ack(events[4])

        # When it opens again, then it resumes after that event, still within its shard
        async with _opened(streamer, topic, name, shard=1, shards=2) as receiver:
            assert _keys(await _collect(receiver, len(mine) - 5)) == mine[5:]
            await _assert_nothing_more(receiver)

    # -- is_new and the position from_latest commits ---------------------------------------------

    @pytest.mark.asyncio
    async def test_is_new_until_the_consumer_name_has_a_committed_position(
        self, streamer: EventStreamer
    ) -> None:
        # Given a consumer name that never committed anything
        topic, name = unique("topic"), unique("consumer")
        await streamer.publish(topic, _messages(2))
        async with _opened(streamer, topic, name) as receiver:
            assert _is_new(receiver) is True
            await _collect(receiver, 2)

        # When it opens again without having acknowledged, then it is still new
        async with _opened(streamer, topic, name) as receiver:
            assert _is_new(receiver) is True
            events = await _collect(receiver, 2)
            await receiver.ack(events[0])

        # And once it acknowledged an event, it is not
        async with _opened(streamer, topic, name) as receiver:
            assert _is_new(receiver) is False
        async with _opened(streamer, topic, unique("consumer")) as receiver:
            assert _is_new(receiver) is True

    @pytest.mark.asyncio
    @pytest.mark.parametrize("history", [0, 2], ids=["empty-topic", "topic-with-history"])
    async def test_from_latest_commits_its_start_when_it_opens(
        self, streamer: EventStreamer, history: int
    ) -> None:
        # Given a from_latest receiver that closes before it acknowledges anything
        topic, name = unique("topic"), unique("consumer")
        if history:
            await streamer.publish(topic, _messages(history))
        async with _opened(streamer, topic, name, from_latest=True) as receiver:
            assert _is_new(receiver) is True

        # When events are published while it is away and it opens again
        await streamer.publish(topic, _messages(2, start=history))
        async with _opened(streamer, topic, name, from_latest=True) as receiver:
            # Then it is not new, and it gets what was published in between
            assert _is_new(receiver) is False
            expected = [f"run-{i}" for i in range(history, history + 2)]
            assert _keys(await _collect(receiver, 2)) == expected
            await _assert_nothing_more(receiver)

    # -- prune ---------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_prune_and_forget_do_nothing_without_pruning(
        self, streamer: EventStreamer
    ) -> None:
        if self.supports_prune:
            pytest.skip("the backend prunes: the cases below check it")
        topic, name = unique("topic"), unique("consumer")
        await streamer.publish(topic, _messages(3, at=now() - timedelta(hours=2)))
        assert await streamer.prune([topic], now()) == 0
        assert await streamer.forget(topic, [], now() + timedelta(hours=1)) == []
        async with _opened(streamer, topic, name) as receiver:
            assert _keys(await _collect(receiver, 3)) == ["run-0", "run-1", "run-2"]

    @pytest.mark.asyncio
    async def test_prune_of_topics_without_consumers_deletes_old_events(
        self, streamer: EventStreamer
    ) -> None:
        self._requires_prune()
        # Given three topics with ten old and five recent events each, and no consumers
        pruned, other = [unique("topic"), unique("topic")], unique("topic")
        old, recent = now() - timedelta(hours=2), now()
        for topic in (*pruned, other):
            await streamer.publish(topic, _messages(10, at=old))
            await streamer.publish(topic, _messages(5, start=10, at=recent))

        # When two of them are pruned of what was created more than an hour ago
        deleted = await streamer.prune(pruned, now() - timedelta(hours=1))

        # Then their old events are gone and the rest is still there
        assert deleted == 20
        for topic in pruned:
            async with _opened(streamer, topic, unique("consumer")) as receiver:
                assert _keys(await _collect(receiver, 5)) == [f"run-{i}" for i in range(10, 15)]
                await _assert_nothing_more(receiver)
        async with _opened(streamer, other, unique("consumer")) as receiver:
            assert _keys(await _collect(receiver, 15)) == [f"run-{i}" for i in range(15)]
        assert await streamer.prune(pruned, now() - timedelta(hours=1)) == 0
        assert await streamer.prune([unique("topic")], now()) == 0
        assert await streamer.prune([], now()) == 0

    @pytest.mark.asyncio
    async def test_prune_keeps_every_event_a_consumer_has_not_acknowledged(
        self, streamer: EventStreamer
    ) -> None:
        self._requires_prune()
        # Given ten old events, acknowledged up to the sixth by one consumer, the third by another
        topic, fast, slow = unique("topic"), unique("consumer"), unique("consumer")
        await streamer.publish(topic, _messages(10, at=now() - timedelta(hours=2)))
        for name, last in ((fast, 5), (slow, 2)):
            async with _opened(streamer, topic, name) as receiver:
                events = await _collect(receiver, 10)
                await receiver.ack(events[last])

        # When everything created before now is pruned
        # Then only what both acknowledged goes, and the slow consumer resumes where it was
        assert await streamer.prune([topic], now()) == 3
        async with _opened(streamer, topic, slow) as receiver:
            events = await _collect(receiver, 7)
            assert _keys(events) == [f"run-{i}" for i in range(3, 10)]
            await receiver.ack(events[-1])

        # And when the slow one has caught up, the fast one's position is what holds the rest
        assert await streamer.prune([topic], now()) == 3
        async with _opened(streamer, topic, fast) as receiver:
            assert _keys(await _collect(receiver, 4)) == [f"run-{i}" for i in range(6, 10)]
            await _assert_nothing_more(receiver)
        # And a consumer with no position starts at the oldest event kept
        async with _opened(streamer, topic, unique("consumer")) as receiver:
            assert _keys(await _collect(receiver, 4)) == [f"run-{i}" for i in range(6, 10)]

    @pytest.mark.asyncio
    async def test_forget_drops_unused_stale_positions_so_that_prune_goes_on(
        self, streamer: EventStreamer
    ) -> None:
        self._requires_prune()
        # Given old events acknowledged in full by a current consumer, and only in part by a
        # consumer name no longer in use (an old shard) and by a kept one
        topic = unique("topic")
        current, unused, kept = unique("consumer"), unique("consumer"), unique("consumer")
        await streamer.publish(topic, _messages(6, at=now() - timedelta(hours=2)))
        for name, last in ((current, 5), (unused, 1), (kept, 3)):
            async with _opened(streamer, topic, name) as receiver:
                events = await _collect(receiver, 6)
                await receiver.ack(events[last])
        assert await streamer.prune([topic], now()) == 2

        # When positions committed before an hour ago are forgotten: none of them is that old
        assert await streamer.forget(topic, [current, kept], now() - timedelta(hours=1)) == []
        assert await streamer.prune([topic], now()) == 0

        # When positions committed before a moment from now are forgotten, but for the names
        # in use
        await asyncio.sleep(0.01)
        gone = await streamer.forget(topic, [current, kept], now() + timedelta(seconds=1))

        # Then only the unused name went, and prune goes on up to the kept consumer's position
        assert gone == [unused]
        assert await streamer.prune([topic], now()) == 2
        async with _opened(streamer, topic, kept) as receiver:
            assert _keys(await _collect(receiver, 2)) == ["run-4", "run-5"]
        assert await streamer.forget(topic, [current, kept], now() + timedelta(seconds=1)) == []
        assert await streamer.forget(unique("topic"), [], now()) == []

    @pytest.mark.asyncio
    async def test_prune_keeps_acknowledged_events_created_at_or_after_before(
        self, streamer: EventStreamer
    ) -> None:
        self._requires_prune()
        # Given three old and two recent events, all acknowledged
        topic, name = unique("topic"), unique("consumer")
        cutoff = now() - timedelta(hours=1)
        await streamer.publish(topic, _messages(3, at=cutoff - timedelta(hours=1)))
        await streamer.publish(topic, _messages(1, start=3, at=cutoff))
        await streamer.publish(topic, _messages(1, start=4))
        async with _opened(streamer, topic, name) as receiver:
            events = await _collect(receiver, 5)
            await receiver.ack(events[-1])

        # When pruned of what was created before the cutoff, then the others stay
        assert await streamer.prune([topic], cutoff) == 3
        async with _opened(streamer, topic, unique("consumer")) as receiver:
            assert _keys(await _collect(receiver, 2)) == ["run-3", "run-4"]

    @pytest.mark.asyncio
    async def test_prune_keeps_what_a_from_latest_consumer_has_not_read(
        self, streamer: EventStreamer
    ) -> None:
        self._requires_prune()
        # Given a from_latest consumer that opened after five events and closed without an ack
        topic, name = unique("topic"), unique("consumer")
        old = now() - timedelta(hours=2)
        await streamer.publish(topic, _messages(5, at=old))
        async with _opened(streamer, topic, name, from_latest=True):
            pass
        await streamer.publish(topic, _messages(5, start=5, at=old))

        # When the topic is pruned, then only the events before its start position go
        assert await streamer.prune([topic], now()) == 5
        async with _opened(streamer, topic, name, from_latest=True) as receiver:
            assert _keys(await _collect(receiver, 5)) == [f"run-{i}" for i in range(5, 10)]

    @pytest.mark.asyncio
    async def test_ids_keep_increasing_after_a_prune(self, streamer: EventStreamer) -> None:
        self._requires_prune()
        # Given a topic whose every event was acknowledged and pruned
        topic, name = unique("topic"), unique("consumer")
        await streamer.publish(topic, _messages(3, at=now() - timedelta(hours=1)))
        async with _opened(streamer, topic, name) as receiver:
            events = await _collect(receiver, 3)
            await receiver.ack(events[-1])
        assert await streamer.prune([topic], now()) == 3

        # When another event is published, then it gets a higher ID and the consumer gets it
        await streamer.publish(topic, _messages(1, start=3))
        async with _opened(streamer, topic, name) as receiver:
            [event] = await _collect(receiver, 1)
            assert event.key == "run-3"
            assert event.id > events[-1].id
            await _assert_nothing_more(receiver)

    @pytest.mark.asyncio
    async def test_prune_racing_consumers_loses_nothing(self, streamer: EventStreamer) -> None:
        self._requires_prune()
        # Given three consumers with committed positions on a topic (acknowledged, and closed so
        # that a backend that buffers acknowledgements has written them)
        topic = unique("topic")
        old = now() - timedelta(hours=1)
        await streamer.publish(topic, _messages(1, at=old))
        names = [unique("consumer") for _ in range(3)]
        for name in names:
            async with _opened(streamer, topic, name) as receiver:
                [first] = await _collect(receiver, 1)
                await receiver.ack(first)
        receivers = [await streamer.receiver(topic, name) for name in names]
        pruned: list[int] = []

        async def consume(receiver: EventReceiver) -> list[str]:
            keys: list[str] = []
            async with asyncio.timeout(10.0):
                while len(keys) < 200:
                    events = await receiver.recv(7)
                    keys.extend(_keys(events))
                    await receiver.ack(events[-1])
            return keys

        async def prune_until(done: asyncio.Future[Any]) -> None:
            while not done.done():
                pruned.append(await streamer.prune([topic], now()))
                await asyncio.sleep(0.001)

        try:
            # When 200 more are published while they receive and acknowledge in small batches
            # and the topic is pruned over and over
            consuming = asyncio.gather(*(consume(r) for r in receivers))
            pruner = asyncio.create_task(prune_until(consuming))
            for start in range(1, 201, 20):
                await streamer.publish(topic, _messages(20, start=start, at=old))
                await asyncio.sleep(0.001)
            received = await consuming
            await pruner
        finally:
            for receiver in receivers:
                await receiver.close()

        # Then every consumer received every event, in order, and everything goes in the end
        for keys in received:
            assert keys == [f"run-{i}" for i in range(1, 201)]
        pruned.append(await streamer.prune([topic], now()))
        assert sum(pruned) == 201
