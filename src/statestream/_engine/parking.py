"""Parking: events a consumer gave up on, kept in the record store for an operator.

A consumer whose handler keeps failing for one event backs off for that run only, and after
``park_after_errors`` attempts (or when a step's auto-pause itself fails) stores the event as a
:class:`~statestream._core.records.ParkedEvent` and moves on: its position is acknowledged past
it, so one bad run does not block every later event of the consumer, nor every restart.

``Workflow.parked()`` and ``statestream runs parked`` list them; ``Workflow.retry_parked(id)`` (or
``statestream runs retry-parked``) flags one, and the consumer that parked it, while it holds its
role, handles it again within a few seconds: deleted on success, parked again on failure. A
retried event is handled at least once more; steps check its version against the run, so one
that the run has moved past since is dropped without calling the step.
"""

from __future__ import annotations

import dataclasses
import logging

from .._core.protocols import Clock, RecordStore
from .._core.records import Event, ParkedEvent

__all__ = ["ParkEvent", "Parker", "describe_error", "parked_id"]

log = logging.getLogger("statestream")

#: A consumer counts its parked entries up to this many (for ``process_info``).
LIST_LIMIT = 1000
#: Entries flagged for a retry that a consumer takes at each check.
RETRY_BATCH = 100


class ParkEvent(Exception):
    """Raised by an error policy: stop retrying this event, park it, and move on.

    :attr:`error` is the handler's error, the one recorded in the parked entry.
    """

    def __init__(self, reason: str, error: BaseException | None = None) -> None:
        super().__init__(reason)
        self.error = error


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:4000]


def parked_id(consumer: str, event: Event) -> str:
    """The ID of a parked event (see :class:`ParkedEvent`): one entry per consumer and event."""
    return f"{consumer}:{event.topic}:{event.id}"


class Parker:
    """Parks, lists and clears the parked events of one workflow's consumers."""

    def __init__(self, store: RecordStore, clock: Clock, workflow_name: str) -> None:
        self.store = store
        self.clock = clock
        self.workflow_name = workflow_name

    async def park(self, consumer: str, event: Event, error: str, attempts: int) -> ParkedEvent:
        """Store ``event`` as parked by ``consumer`` (replacing an earlier entry for it)."""
        entry = ParkedEvent(
            id=parked_id(consumer, event),
            workflow_name=self.workflow_name,
            consumer=consumer,
            event=event,
            error=error,
            attempts=attempts,
            parked_at=self.clock.now(),
        )
        await self.store.park(entry)
        return entry

    async def park_again(self, entry: ParkedEvent, error: str) -> None:
        """A retry of ``entry`` failed: keep it parked, with the new error, not flagged."""
        await self.store.park(
            dataclasses.replace(
                entry,
                error=error,
                attempts=entry.attempts + 1,
                parked_at=self.clock.now(),
                retry_requested=False,
            )
        )

    async def requested(self, consumer: str) -> list[ParkedEvent]:
        """The entries of ``consumer`` flagged for a retry (up to RETRY_BATCH), oldest first."""
        return await self.store.list_parked(
            self.workflow_name, consumer=consumer, retry_requested=True, limit=RETRY_BATCH
        )

    async def count(self, consumer: str) -> int:
        """How many entries ``consumer`` has parked (up to LIST_LIMIT)."""
        entries = await self.store.list_parked(
            self.workflow_name, consumer=consumer, limit=LIST_LIMIT
        )
        return len(entries)

    async def done(self, entry: ParkedEvent) -> None:
        await self.store.delete_parked(entry.id)
