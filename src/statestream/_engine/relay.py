"""The outbox relay: publishes events written with their records, then deletes them.

At least once: a relay stopped between publishing a batch and deleting it (killed, its lease
lost, the store unreachable) publishes the batch again, and the consumers' version checks drop
the copies."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from .._core.records import Message
from .runtime import Runtime

__all__ = ["relay_body"]


#: After a batch, the relay looks again this soon (or when a write in this process wakes it),
#: doubling while it finds nothing, up to the outbox's ``polling_frequency``: the other
#: processes' writes (which cannot wake it) wait milliseconds while they keep coming, and an
#: idle relay polls at ``polling_frequency``.
FIRST_IDLE_POLL = 0.01
#: Events published per batch at most.
BATCH = 1000


async def relay_body(rt: Runtime[Any, Any], stopping: asyncio.Event) -> None:
    wake = rt.outbox_wake
    interval = rt.d.outbox_options.polling_frequency
    idle = interval
    # Stopping wakes an idle relay too (else a stop waited for its poll, or the grace).
    forward = asyncio.ensure_future(_wake_on(stopping, wake))
    try:
        await _relay(rt, stopping, wake, interval, idle)
    finally:
        forward.cancel()


async def _wake_on(stopping: asyncio.Event, wake: asyncio.Event) -> None:
    await stopping.wait()
    wake.set()


async def _relay(
    rt: Runtime[Any, Any],
    stopping: asyncio.Event,
    wake: asyncio.Event,
    interval: float,
    idle: float,
) -> None:
    pause = 0.0  # how long to wait (unless woken) before looking at the outbox again
    while not stopping.is_set():
        if pause > 0 and not wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await wake.wait()
        wake.clear()
        events = await rt.store.list_outbox(rt.name, BATCH)
        if not events:
            idle = min(interval, idle * 2)
            pause = idle
            continue
        idle = min(interval, FIRST_IDLE_POLL)
        # A full batch: more wait, look again at once. Else only after FIRST_IDLE_POLL or a
        # write here (that wakes the relay), not at once: a query that finds nothing after each
        # batch cost a round trip per transition when runs go one at a time.
        pause = 0.0 if len(events) >= BATCH else idle
        started = time.monotonic()
        by_topic: dict[str, list[Message]] = {}
        for event in events:
            msgs = by_topic.get(event.topic)
            if msgs is None:
                by_topic[event.topic] = [event.message]
            else:
                msgs.append(event.message)
        # Every topic of the batch at once (a streamer that batches, Kafka's producer, sends
        # them together); then delete what the streamer acknowledged, even when another topic
        # failed: only the failed topics' events are published again.
        topics = list(by_topic)
        results = await asyncio.gather(
            *(rt.streamer.publish(topic, by_topic[topic]) for topic in topics),
            return_exceptions=True,
        )
        failed = {
            t: r for t, r in zip(topics, results, strict=True) if isinstance(r, BaseException)
        }
        if failed:
            done = [e.id for e in events if e.topic not in failed]
            if done:
                await rt.store.delete_outbox(done)
            raise next(iter(failed.values()))
        await rt.store.delete_outbox([e.id for e in events])
        if rt.observer is not None:
            lag = (rt.clock.now() - events[0].created_at).total_seconds()
            rt.observer.relay_batch(rt.name, len(events), time.monotonic() - started, lag)
