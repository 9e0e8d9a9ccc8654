"""``EventStreamerContract``: the conformance suite for :class:`~statestream.EventStreamer`.

Mirrors luno/workflow's ``adaptertest.RunEventStreamerTest`` (including the ``from_latest`` race of
luno PR #190) and adds ordering, redelivery, blocking and cancellation cases.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from .._core.protocols import EventReceiver, EventStreamer
from .._core.records import Event, Message
from ._util import assert_close, now, unique

__all__ = ["EventStreamerContract"]

#: How long a ``recv`` may take to return once an event is there.
_PROMPT = 1.0
#: How long to watch a receiver to conclude that nothing more arrives.
_QUIET = 0.1


def _messages(count: int, start: int = 0) -> list[Message]:
    at = now()
    return [
        Message(
            key=f"run-{i}",
            type=i % 7 + 1,
            headers={"n": str(i), "workflow_name": "contract", "empty": ""},
            created_at=at,
        )
        for i in range(start, start + count)
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


@contextlib.asynccontextmanager
async def _opened(
    streamer: EventStreamer, topic: str, name: str, *, from_latest: bool = False
) -> AsyncIterator[EventReceiver]:
    receiver = await streamer.receiver(topic, name, from_latest=from_latest)
    try:
        yield receiver
    finally:
        await receiver.close()


class EventStreamerContract:
    """Conformance tests for an :class:`~statestream.EventStreamer`.

    Subclass it as ``TestXxxStreamer`` and define a ``streamer`` fixture that gives the streamer
    under test.
    """

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
