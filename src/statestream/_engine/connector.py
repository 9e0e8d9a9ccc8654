"""Connectors: a workflow consumes an outside stream (``Builder.add_connector``).

Each of the connector's ``parallel_count`` shards is a role running one consumer of the source,
under the role's name (a durable consumer name). The handler, ``handler(workflow, event)``, may
act on the workflow itself or return what to do, as a connection's function does: a
:class:`~statestream.Trigger`, a :class:`~statestream.Callback`, a list of them or None (any
other value is ignored). What it returns is applied idempotently (see :mod:`.actions`): the
run ID of a returned Trigger is derived from the connector's name, the event's topic and the
event's ID, so a redelivered event (after a crash, a restart, a handover) triggers nothing new.

Sharding: a source whose ``shards_itself`` is True (the Kafka source: partitions) opens each
shard's receiver with ``receiver(name, shard=i, shards=n)`` and reads only that shard's part;
any other source is read whole by every shard, which drops the events whose key hashes to
another shard.

A message the handler refuses (it raises :class:`~statestream.errors.EventRejected`), or whose
returned actions are invalid (a foreign ID, a status, an object or a payload that cannot be
used: :class:`~statestream.errors.InvalidInput`), is counted in the process's
:attr:`~statestream.ProcessInfo.skipped`, reported to the observer (``event_skipped``, reason
``"rejected: ..."``), logged (the first few, then at most once a minute with a count) and passed
over: never retried, never a crash loop. Other errors are retried with backoff and parked after
``park_after_errors`` attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from time import monotonic
from typing import TYPE_CHECKING, Any

from .._core.actions import Callback, Trigger
from .._core.protocols import EventReceiver
from .._core.records import Event
from ..errors import EventRejected, InvalidInput
from .actions import Applier, actions_of, retry_policy
from .dispatch import Body
from .lease import HELD
from .processes import consumer_body
from .runtime import Runtime
from .usercode import call_user

if TYPE_CHECKING:
    from .._definition.specs import ConnectorSpec

__all__ = ["Rejections", "connector_body"]

log = logging.getLogger("statestream")


class Rejections:
    """Logs rejected messages: each of the first ``first``, then at most one line every
    ``every`` seconds, counting the ones in between."""

    def __init__(self, what: str, *, first: int = 3, every: float = 60.0) -> None:
        self.what = what
        self.first = first
        self.every = every
        self.count = 0
        self._unlogged = 0
        self._logged_at = 0.0

    def __call__(self, event: Event, reason: str) -> None:
        self.count += 1
        now = monotonic()
        if self.count > self.first and now - self._logged_at < self.every:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
        log.warning(
            "statestream: %s rejected event %s of %s (key %r): %s; skipped%s",
            self.what,
            event.id,
            event.topic,
            event.key,
            reason,
            more,
        )
        self._unlogged = 0
        self._logged_at = now


def _returned_actions(result: object) -> bool:
    if isinstance(result, Trigger | Callback):
        return True
    return (
        isinstance(result, list | tuple)
        and bool(result)
        and all(isinstance(item, Trigger | Callback) for item in result)
    )


def connector_body(
    rt: Runtime[Any, Any], spec: ConnectorSpec[Any, Any], shard: int, shards: int, role: str
) -> Body:
    opts = spec.options
    what = f"connector {spec.name}"
    source = spec.source
    itself = getattr(source, "shards_itself", False) is True
    log_rejected = Rejections(what)

    def skip(event: Event, reason: str) -> None:
        log.info("statestream: %s skipped event %s of %s: %s", what, event.id, event.topic, reason)
        if rt.observer is not None:
            rt.skipped(event, reason)

    def reject(event: Event, exc: BaseException) -> None:
        held = HELD.get()
        if held is not None:
            held.process.skipped += 1
        reason = f"rejected: {exc}"
        log_rejected(event, str(exc))
        if rt.observer is not None:
            rt.skipped(event, reason)

    applier = Applier(rt, skip)

    async def handle(event: Event) -> None:
        if opts.lag:
            await rt.wait_lag(event, opts.lag)
        try:
            result = await call_user(spec.fn, True, rt.facade, event)
        except EventRejected as exc:
            reject(event, exc)
            return
        if not _returned_actions(result):
            return
        try:
            await applier.apply(
                event,
                actions_of(result, "a connector's handler"),
                lambda i: f"connector\0{spec.name}\0{event.topic}\0{event.id}\0{i}",
            )
        except InvalidInput as exc:  # a foreign ID, status, object or payload that cannot be used
            reject(event, exc)

    def open_receiver() -> Awaitable[EventReceiver]:
        if itself:
            opened: Awaitable[EventReceiver] = source.receiver(  # type: ignore[call-arg]
                role, shard=shard, shards=shards
            )
            return opened
        return source.receiver(role)

    return consumer_body(
        open_receiver,
        handle,
        retry_policy(what, opts),
        opts,
        shard=0 if itself else shard,
        shards=1 if itself else shards,
    )
