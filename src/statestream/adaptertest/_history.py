"""The key-history part of ``EventStreamerContract`` (see :mod:`.event_streamer`), for
streamers with the optional :class:`~statestream.EventHistory` capability; skipped for the
others."""

from __future__ import annotations

from datetime import timedelta

import pytest

from .._core.protocols import EventHistory, EventStreamer
from .._core.records import Message
from ._util import assert_close, now, unique

__all__ = ["EventHistoryContract"]


def _history(streamer: EventStreamer) -> EventHistory:
    if not isinstance(streamer, EventHistory):
        pytest.skip("the streamer keeps no history by key (EventHistory is optional)")
    return streamer


class EventHistoryContract:
    """``events_for_key``: the retained events of some topics with one key, oldest first."""

    @pytest.mark.asyncio
    async def test_events_for_key_returns_that_keys_events_of_the_topics_oldest_first(
        self, streamer: EventStreamer
    ) -> None:
        history = _history(streamer)
        # Given a run's events on three topics, interleaved with other keys' events, and its
        # key on a topic not asked for
        first, second, third, elsewhere = (unique("topic") for _ in range(4))
        run, other = unique("run"), unique("run")
        base = now() - timedelta(minutes=10)

        def message(key: str, status: int, minute: int) -> Message:
            headers = {"record_version": str(minute), "quote": 'it\'s "x"'}
            return Message(key, status, headers, base + timedelta(minutes=minute), b"\x00d")

        await streamer.publish(first, [message(other, 1, 0), message(run, 1, 1)])
        await streamer.publish(second, [message(run, 2, 2), message(other, 2, 3)])
        await streamer.publish(first, [message(run, 1, 4)])
        await streamer.publish(third, [message(other, 3, 5), message(run, 3, 6)])
        await streamer.publish(elsewhere, [message(run, 9, 7)])

        found = await history.events_for_key([first, second, third], run)

        # Then only its events of those topics, in creation order, with every field
        assert [(e.topic, e.type) for e in found] == [
            (first, 1),
            (second, 2),
            (first, 1),
            (third, 3),
        ]
        assert [e.headers["record_version"] for e in found] == ["1", "2", "4", "6"]
        assert all(e.key == run for e in found)
        assert dict(found[0].headers) == {"record_version": "1", "quote": 'it\'s "x"'}
        assert found[0].data == b"\x00d"
        assert_close(found[3].created_at, base + timedelta(minutes=6), "created_at")
        # at most limit, the oldest
        assert [e.type for e in await history.events_for_key([first, second], run, 2)] == [1, 2]
        assert await history.events_for_key([first, second, third], unique("run")) == []
        assert await history.events_for_key([], run) == []
        assert await history.events_for_key([unique("topic")], run) == []

    @pytest.mark.asyncio
    async def test_events_for_key_leaves_out_pruned_events(self, streamer: EventStreamer) -> None:
        history = _history(streamer)
        topic, run = unique("topic"), unique("run")
        old, recent = now() - timedelta(hours=2), now()
        await streamer.publish(topic, [Message(run, 1, {}, old), Message(run, 2, {}, recent)])
        pruned = await streamer.prune([topic], now() - timedelta(hours=1))
        found = await history.events_for_key([topic], run)
        assert [e.type for e in found] == ([2] if pruned else [1, 2])
