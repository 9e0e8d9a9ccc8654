"""The parked-events part of ``RecordStoreContract`` (see :mod:`.record_store`)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from .. import errors
from .._core.protocols import RecordStore
from .._core.records import Event, Header, ParkedEvent
from ._util import assert_close, now, unique

__all__ = ["ParkedEventsContract"]


def _parked(
    workflow_name: str,
    consumer: str,
    *,
    event_id: int = 1,
    parked_at: datetime | None = None,
    attempts: int = 3,
    error: str = "ValueError: boom",
) -> ParkedEvent:
    topic = f"{workflow_name}-1"
    event = Event(
        id=event_id,
        topic=topic,
        key=str(uuid.uuid4()),
        type=1,
        headers={Header.WORKFLOW_NAME.value: workflow_name, Header.RECORD_VERSION.value: "3"},
        created_at=now() - timedelta(minutes=5),
        data=b"\x00payload\xff",
    )
    return ParkedEvent(
        id=f"{consumer}:{topic}:{event_id}",
        workflow_name=workflow_name,
        consumer=consumer,
        event=event,
        error=error,
        attempts=attempts,
        parked_at=parked_at if parked_at is not None else now(),
    )


def _assert_same_parked(actual: ParkedEvent, expected: ParkedEvent) -> None:
    assert (actual.id, actual.workflow_name, actual.consumer) == (
        expected.id,
        expected.workflow_name,
        expected.consumer,
    )
    assert (actual.error, actual.attempts) == (expected.error, expected.attempts)
    assert actual.retry_requested is expected.retry_requested
    assert_close(actual.parked_at, expected.parked_at, "parked_at")
    got, want = actual.event, expected.event
    assert (got.id, got.topic, got.key, got.type) == (want.id, want.topic, want.key, want.type)
    assert dict(got.headers) == dict(want.headers)
    assert isinstance(got.data, bytes), f"event data is {type(got.data)}"
    assert got.data == want.data
    assert_close(got.created_at, want.created_at, "event created_at")


def _parked_ids(rows: Sequence[ParkedEvent]) -> list[str]:
    return [p.id for p in rows]


class ParkedEventsContract:
    """Parked events are kept until deleted: ``park`` is an upsert, ``retry_parked`` sets the
    flag, ``list_parked`` filters and is oldest first."""

    # -- parked events ---------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_park_keeps_every_field(self, store: RecordStore) -> None:
        wf = unique("wf")
        parked = _parked(wf, unique("consumer"))

        await store.park(parked)

        [listed] = await store.list_parked(wf)
        _assert_same_parked(listed, parked)

    @pytest.mark.asyncio
    async def test_parking_an_event_again_replaces_its_entry(self, store: RecordStore) -> None:
        # Given a parked event whose retry was requested
        wf = unique("wf")
        first = _parked(wf, unique("consumer"), parked_at=now() - timedelta(minutes=1))
        await store.park(first)
        await store.retry_parked(first.id)

        # When the retry fails and the consumer parks it again
        again = dataclasses.replace(first, attempts=7, error="still failing", parked_at=now())
        await store.park(again)

        # Then there is one entry, the new one, with no retry requested
        [listed] = await store.list_parked(wf)
        _assert_same_parked(listed, again)

    @pytest.mark.asyncio
    async def test_list_parked_is_oldest_first_filters_and_respects_limit(
        self, store: RecordStore
    ) -> None:
        # Given events parked by two consumers of a workflow, not in the order of their times,
        # and one parked for another workflow
        wf, one, two = unique("wf"), unique("consumer"), unique("consumer")
        base = now() - timedelta(hours=1)
        parked = [
            _parked(wf, consumer, event_id=i, parked_at=base + timedelta(seconds=s))
            for i, (consumer, s) in enumerate([(one, 3), (two, 1), (one, 4), (two, 0), (one, 2)])
        ]
        for p in parked:
            await store.park(p)
        await store.park(_parked(unique("wf"), one))
        await store.retry_parked(parked[2].id)
        await store.retry_parked(parked[3].id)

        async def listed(**kwargs: Any) -> list[str]:
            return _parked_ids(await store.list_parked(wf, **kwargs))

        # Then they are listed oldest first, at most `limit`, by consumer and by flag
        oldest_first = [parked[i].id for i in (3, 1, 4, 0, 2)]
        assert await listed() == oldest_first
        assert await listed(limit=2) == oldest_first[:2]
        assert await listed(consumer=one) == [parked[i].id for i in (4, 0, 2)]
        assert await listed(retry_requested=True) == [parked[3].id, parked[2].id]
        assert await listed(retry_requested=False) == [parked[i].id for i in (1, 4, 0)]
        assert await listed(consumer=one, retry_requested=True) == [parked[2].id]
        assert await listed(consumer=unique("consumer")) == []
        assert await store.list_parked(unique("wf")) == []

    @pytest.mark.asyncio
    async def test_retry_parked_sets_the_flag_and_refuses_unknown_ids(
        self, store: RecordStore
    ) -> None:
        wf = unique("wf")
        parked = _parked(wf, unique("consumer"))
        await store.park(parked)

        await store.retry_parked(parked.id)
        await store.retry_parked(parked.id)

        [listed] = await store.list_parked(wf)
        assert listed.retry_requested is True
        with pytest.raises(errors.RecordNotFound):
            await store.retry_parked(f"{unique('consumer')}:{wf}-1:1")

    @pytest.mark.asyncio
    async def test_delete_parked_is_idempotent(self, store: RecordStore) -> None:
        wf, consumer = unique("wf"), unique("consumer")
        gone, kept = _parked(wf, consumer, event_id=1), _parked(wf, consumer, event_id=2)
        await store.park(gone)
        await store.park(kept)

        await store.delete_parked(gone.id)
        await store.delete_parked(gone.id)
        await store.delete_parked(f"{unique('consumer')}:{wf}-1:1")

        assert _parked_ids(await store.list_parked(wf)) == [kept.id]
