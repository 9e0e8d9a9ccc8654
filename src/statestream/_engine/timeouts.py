"""Durable timeouts: the inserter that starts a timer when a run reaches a status, and the
poller that fires due timers.

Unlike luno/workflow, a timeout is bound to the run and to the visit that created it (the run's
version when it arrived): a newer run of the same foreign ID, or a later visit to the same status,
is never moved by an old timer. Firing is a compare-and-set on the run, so two pollers racing on
one timeout move the run once; errors are logged, backed off and count towards auto-pause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._core.protocols import EventReceiver, TimeoutStore
from .._core.records import Event, TimeoutRecord, status_topic
from .._core.runstate import RunState
from .._core.types import Seconds, StatusT, T, to_seconds
from ..errors import InvalidInput, RecordNotFound, VersionConflict
from .catchup import CatchUp
from .processes import Body, consumer_body
from .usercode import call_user

if TYPE_CHECKING:
    from .._core.run import Run
    from .._definition.specs import TimeoutSpec
    from .runtime import Runtime

__all__ = ["after", "at", "inserter_body", "poller_body"]

log = logging.getLogger("statestream")

_BATCH = 200


def after(delay: Seconds) -> Any:
    """A timer that fires ``delay`` after the run reaches the status."""
    seconds = to_seconds(delay, "delay")

    def timer(run: Run[Any, Any], now: datetime) -> datetime:
        return now + timedelta(seconds=seconds)

    return timer


def at(when: datetime) -> Any:
    """A timer that fires at a fixed, timezone-aware time."""
    if when.tzinfo is None:
        raise InvalidInput(f"at() needs a timezone-aware datetime, got {when!r}")

    def timer(run: Run[Any, Any], now: datetime) -> datetime:
        return when

    return timer


def _timeouts(rt: Runtime[Any, Any]) -> TimeoutStore:
    store = rt.timeout_store
    assert store is not None, "build() checks that timeouts have a store"
    return store


def inserter_body(rt: Runtime[T, StatusT], spec: TimeoutSpec[T, StatusT], role: str) -> Body:
    """Consumes the status topic and creates a timer for each run that arrives there."""
    opts = spec.options
    store = _timeouts(rt)

    async def handle(event: Event) -> None:
        record = await rt.fresh_record(event)
        if record is None:
            return
        run = rt.to_run(record)
        now = rt.clock.now()
        when = await call_user(spec.timer, spec.timer_is_async, run, now)
        if when is None:
            return
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise InvalidInput(
                f"timer of {spec.status.name} must return a timezone-aware datetime or None, "
                f"got {when!r}"
            )
        if when < now:
            raise InvalidInput(f"timer of {spec.status.name} returned {when}, before now ({now})")
        await store.create(
            rt.name, record.foreign_id, record.run_id, record.status, record.version, when
        )
        wake = rt.timeout_wakes.get(int(spec.status))
        if wake is not None:
            wake.set()

    async def on_error(event: Event, exc: BaseException, attempt: int) -> bool:
        return await rt.failed(
            f"timer of {spec.status.name}", role, event.key, exc, opts, event=event
        )

    topic = status_topic(rt.name, int(spec.status))

    def open_receiver() -> Awaitable[EventReceiver]:
        return rt.streamer.receiver(
            topic, role, from_latest=True, poll_interval=opts.polling_frequency
        )

    # A new inserter (a timeout added in a new release) starts timers for the runs already
    # waiting at the status, from the record store, instead of replaying the topic's history.
    pick_up = CatchUp(rt, topic, role, statuses=(int(spec.status),))
    return consumer_body(open_receiver, handle, on_error, opts, catch_up=pick_up)


def poller_body(rt: Runtime[T, StatusT], spec: TimeoutSpec[T, StatusT], role: str) -> Body:
    """Fires due timeouts of one status, a batch at a time, concurrently across runs."""
    opts = spec.options
    store = _timeouts(rt)
    what = f"timeout of {spec.status.name}"
    retry_at: dict[int, float] = {}  # timeout id -> monotonic time before which it is not retried
    attempts: dict[int, int] = {}

    async def fire(timeout: TimeoutRecord, now: datetime) -> None:
        try:
            record = await rt.store.lookup(timeout.run_id)
        except RecordNotFound:
            await store.cancel(timeout.id)
            return
        if (
            record.version != timeout.run_version
            or record.status != timeout.status
            or record.run_state.stopped
            or record.run_state.finished
        ):
            await store.cancel(timeout.id)  # the run moved on: this visit's timer is void
            return
        run = rt.to_run(record)
        if run.run_state is RunState.INITIATED:
            run.run_state = RunState.RUNNING
        result = await call_user(spec.fn, spec.is_async, run, now)
        try:
            await rt.apply_result(what, spec.destinations, record, run, result)
        except VersionConflict:
            await store.cancel(timeout.id)  # another poller or a callback moved the run first
            return
        await store.complete(timeout.id)
        rt.clear_errors(role, record.run_id)

    async def guarded(timeout: TimeoutRecord, now: datetime) -> None:
        try:
            await fire(timeout, now)
        except Exception as exc:
            count = attempts.get(timeout.id, 0) + 1
            attempts[timeout.id] = count
            from .dispatch import backoff

            retry_at[timeout.id] = time.monotonic() + backoff(
                count, opts.error_backoff, opts.max_error_backoff
            )
            try:
                if await rt.failed(what, role, timeout.run_id, exc, opts, status=timeout.status):
                    attempts.pop(timeout.id, None)
                    retry_at.pop(timeout.id, None)
                    await store.cancel(timeout.id)
            except Exception:
                log.exception("statestream: handling a %s error failed", what)
        else:
            attempts.pop(timeout.id, None)
            retry_at.pop(timeout.id, None)

    async def body(stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            wake = rt.timeout_wakes.setdefault(int(spec.status), asyncio.Event())
            wake.clear()
            now = rt.clock.now()
            due = await store.list_due(rt.name, int(spec.status), now, _BATCH)
            mono = time.monotonic()
            ready = [t for t in due if retry_at.get(t.id, 0.0) <= mono]
            if ready:
                await asyncio.gather(*(guarded(t, now) for t in ready))
            if len(due) == _BATCH and ready:
                continue
            # Sleep relative to the time read before polling: if the clock moved meanwhile
            # (a test's FakeClock, say), the next poll comes at once.
            left = (
                now + timedelta(seconds=opts.polling_frequency) - rt.clock.now()
            ).total_seconds()
            await rt.sleep_clock(max(0.0, left), stopping, wake)

    return body
