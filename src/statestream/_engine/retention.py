"""Retention: the process that keeps the stream and the timeout store bounded.

Every ``retention_interval`` it first forgets the committed positions of consumer names this
release no longer uses on the workflow's topics (the shards of an old ``parallel_count``, a
removed hook), once they are older than ``retention`` (``EventStreamer.forget``), so that they
do not hold pruning back for ever. Then it asks the streamer to delete this workflow's events
older than ``retention`` that every consumer has acknowledged (``EventStreamer.prune``), and the
timeout store to delete completed and cancelled timers older than that (``TimeoutStore.prune``).
Runs themselves are never deleted: they are the history users query. It runs under one role
per workflow, so one process in the cluster prunes.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from .._core.records import delete_topic, run_state_change_topic, status_topic
from .logfields import fields
from .runtime import Runtime

__all__ = ["retention_body", "workflow_topics"]

log = logging.getLogger("statestream")


def workflow_topics(rt: Runtime[Any, Any]) -> list[str]:
    """Every topic the engine publishes this workflow's events to (any status of the enum,
    so that a status dropped from the graph in a new release is still pruned)."""
    statuses = sorted(set(rt.statuses) | set(rt.d.graph.nodes))
    topics = [status_topic(rt.name, status) for status in statuses]
    topics.append(run_state_change_topic(rt.name))
    topics.append(delete_topic(rt.name))
    return topics


async def retention_body(rt: Runtime[Any, Any], stopping: asyncio.Event) -> None:
    """Prune at once, then every ``retention_interval`` (on the workflow's clock)."""
    keep = rt.d.retention
    assert keep is not None, "the plan runs retention only when it is set"
    window = timedelta(seconds=keep)
    topics = workflow_topics(rt)
    while not stopping.is_set():
        before = rt.clock.now() - window
        for topic in topics:
            gone = await rt.streamer.forget(topic, rt.consumers.get(topic, ()), before)
            if gone:
                log.info(
                    "statestream: forgot the positions of %s on %s, unused since before %s",
                    ", ".join(sorted(gone)),
                    topic,
                    before.isoformat(),
                    extra=fields(rt.name),
                )
        events = await rt.streamer.prune(topics, before)
        timers = 0
        if rt.timeout_store is not None:
            timers = await rt.timeout_store.prune(rt.name, before)
        if events or timers:
            log.info(
                "statestream: pruned %d events and %d timers of %s older than %s",
                events,
                timers,
                rt.name,
                before.isoformat(),
                extra=fields(rt.name),
            )
        await rt.sleep_clock(rt.d.retention_interval, stopping)
