"""Durable timeouts: the inserter that starts a timer when a run reaches a status, and the
poller that fires due timers.

Unlike luno/workflow, a timeout is bound to the run and to the visit that created it (the run's
version when it arrived): a newer run of the same foreign ID, or a later visit to the same status,
is never moved by an old timer. A visit has at most one timer (the store's unique key), so an
event delivered twice starts one timer. A due timer is claimed by one poller for a window
(``build(timeout_claim=...)``) before ``on_timeout`` runs, so pollers racing on it (two
processes that both believe they hold the role, say) run it once; a poller that dies lets the
claim lapse and another fires the timer after the window. The write that moves the run is a
compare-and-set, so the stored change is made once even if ``on_timeout`` ran twice (a claim
that lapsed while it was still running); side effects inside ``on_timeout`` are at least once.
Errors back off through the store (``defer``, seen by every poller) and count towards
auto-pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._core.protocols import EventReceiver, TimeoutStore
from .._core.records import Event, TimeoutRecord, status_topic
from .._core.runstate import RunState
from .._core.types import Seconds, StatusT, T, to_seconds
from ..errors import InvalidInput, RecordNotFound, VersionConflict
from .catchup import CatchUp
from .dispatch import backoff
from .logfields import fields
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
    """A timer that fires at a fixed, timezone-aware time; at once if that time has passed."""
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
    rt.reads(status_topic(rt.name, int(spec.status)), role)

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
        # A deadline that has already passed is due now: the timer fires at the next poll.
        when = max(when, now)
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
    """Fires due timeouts of one status, a batch at a time, concurrently across runs.

    Each due timer is claimed (``TimeoutStore.claim``) before ``on_timeout`` runs; a timer whose
    claim another poller holds is left to it. After an error the timer is deferred in the store
    by the backoff, so the retry schedule lives with the timer and not in this process.
    """
    opts = spec.options
    store = _timeouts(rt)
    what = f"timeout of {spec.status.name}"
    window = timedelta(seconds=rt.d.timeout_claim)

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
            rt.clear_errors(role, record.run_id)
            return
        run = rt.to_run(record)
        if run.run_state is RunState.INITIATED:
            run.run_state = RunState.RUNNING
        result = await call_user(spec.fn, spec.is_async, run, now)
        rt.firing.add(record.run_id)
        try:
            await rt.apply_result(what, spec.destinations, record, run, result)
        except VersionConflict:
            await store.cancel(timeout.id)  # another poller or a callback moved the run first
            rt.clear_errors(role, record.run_id)
            return
        finally:
            rt.firing.discard(record.run_id)
        await store.complete(timeout.id)
        rt.clear_errors(role, record.run_id)

    async def guarded(timeout: TimeoutRecord) -> None:
        now = rt.clock.now()
        if not await store.claim(timeout.id, now, now + window):
            return  # another poller holds it (or it was completed or cancelled meanwhile)
        try:
            await rt.observed_timeout(timeout, fire(timeout, now))
        except asyncio.CancelledError:
            # Stopping or the role was lost: hand the timer back instead of letting it wait
            # for the claim to lapse. Best effort; the claim lapses anyway.
            with contextlib.suppress(Exception):
                await asyncio.shield(store.defer(timeout.id, rt.clock.now()))
            raise
        except Exception as exc:
            try:
                if await rt.failed(what, role, timeout.run_id, exc, opts, status=timeout.status):
                    await store.cancel(timeout.id)  # paused, or the run moved on
                    return
                attempt = max(1, rt.errors.get(role, timeout.run_id))
                delay = backoff(attempt, opts.error_backoff, opts.max_error_backoff)
                await store.defer(timeout.id, rt.clock.now() + timedelta(seconds=delay))
            except Exception:
                log.exception(
                    "statestream: handling a %s error failed",
                    what,
                    extra=fields(
                        rt.name,
                        run_id=timeout.run_id,
                        foreign_id=timeout.foreign_id,
                        status=rt._names.get(timeout.status, str(timeout.status)),
                    ),
                )

    async def body(stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            wake = rt.timeout_wakes.setdefault(int(spec.status), asyncio.Event())
            wake.clear()
            now = rt.clock.now()
            due = await store.list_due(rt.name, int(spec.status), now, _BATCH)
            if due:
                await asyncio.gather(*(guarded(t) for t in due))
            if len(due) == _BATCH:
                continue
            # Sleep relative to the time read before polling: if the clock moved meanwhile
            # (a test's FakeClock, say), the next poll comes at once.
            left = (
                now + timedelta(seconds=opts.polling_frequency) - rt.clock.now()
            ).total_seconds()
            await rt.sleep_clock(max(0.0, left), stopping, wake)

    return body
