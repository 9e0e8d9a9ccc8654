"""The outbox relay: publishes events written with their records, then deletes them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from .._core.records import Message
from .runtime import Runtime

__all__ = ["relay_body"]


async def relay_body(rt: Runtime[Any, Any], stopping: asyncio.Event) -> None:
    wake = rt.outbox_wake
    interval = rt.d.outbox_options.polling_frequency
    while not stopping.is_set():
        wake.clear()
        events = await rt.store.list_outbox(rt.name, 1000)
        if not events:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await wake.wait()
            continue
        started = time.monotonic()
        by_topic: dict[str, list[Message]] = {}
        for event in events:
            msgs = by_topic.get(event.topic)
            if msgs is None:
                by_topic[event.topic] = [event.message]
            else:
                msgs.append(event.message)
        for topic, messages in by_topic.items():
            await rt.streamer.publish(topic, messages)
        await rt.store.delete_outbox([e.id for e in events])
        if rt.observer is not None:
            lag = (rt.clock.now() - events[0].created_at).total_seconds()
            rt.observer.relay_batch(rt.name, len(events), time.monotonic() - started, lag)
