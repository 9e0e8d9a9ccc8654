"""Connections between workflows: this workflow reacts to another workflow's runs reaching a status.

``Builder.connect(other, at=Other.SHIPPED, to=fn)`` runs one consumer (per shard) of the other
workflow's events, on the other workflow's streamer, under a role of this workflow. It uses only
the :class:`~statestream.EventStreamer` and :class:`~statestream.RecordStore` contracts, so it
works over every streamer and across processes. For each event of a run of the other workflow
arriving at ``at`` it reads that run from the other workflow's record store, decodes it with the
other workflow's codec into a typed ``Run``, and calls ``fn(run)``, which returns what to do here:

* :class:`~statestream.Trigger`: start a run. Its run ID is derived from the other run's ID, the
  version of its visit of ``at`` and the connection's name (:func:`derived_id`), and the store
  refuses a second run with the same ID: a redelivered event starts no second run.
* :class:`~statestream.Callback`: deliver a payload to the run of a foreign ID waiting at a
  status, through its declared callbacks. The delivery is a compare-and-set write that moves the
  run off that status, so a redelivered event finds it elsewhere and changes nothing. A run
  that is not there yet (not triggered yet, or before the status in this workflow's graph and
  not possibly past it) is waited for: :class:`NotYet` is retried with backoff like an error.

Where ``at`` is not terminal, the events are those of the status topic (arrivals, but also a
resume or a save-and-repeat there: each is a new visit, with a new version). Where it is
terminal, the arrivals are the Completed run-state changes at ``at``.

A consumer name never seen before starts at the newest event: a connection deployed after the
other workflow has been running does not replay its history. For a non-terminal ``at`` it then
picks up the runs that are at ``at`` now (Initiated or Running) from the other workflow's record
store (``catch_up``, see :mod:`.catchup`); never for a terminal ``at`` (those runs are history).

Messages that are not the other workflow's (another workflow's name, another status, no version,
an unknown run) or whose run does not decode are skipped: logged, counted in the process's
:attr:`~statestream.ProcessInfo.skipped` and reported to the observer. Errors of ``fn`` and of
the write here are retried with backoff and parked after ``park_after_errors`` attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from .._core.protocols import EventReceiver
from .._core.records import Event, Record, run_state_change_topic, status_topic
from .._core.run import Run
from .._core.runstate import RunState
from .._definition.specs import ConnectionSpec
from ..errors import (
    RecordNotFound,
    StaleRead,
    UnknownStatus,
)
from .actions import Applier, actions_of, retry_policy
from .catchup import CatchUp
from .dispatch import Body
from .lease import HELD
from .processes import consumer_body
from .runtime import H_RUN_STATE, H_VERSION, Runtime
from .usercode import call_user

__all__ = ["connection_body", "connection_topic"]

log = logging.getLogger("statestream")

_ARRIVING = (str(int(RunState.INITIATED)), str(int(RunState.RUNNING)))
_COMPLETED = (str(int(RunState.COMPLETED)),)


def connection_topic(spec: ConnectionSpec) -> str:
    """Where the other workflow publishes its runs' arrivals at ``spec.at``."""
    if spec.terminal:
        return run_state_change_topic(spec.source)
    return status_topic(spec.source, int(spec.at))


def _foreign(spec: ConnectionSpec, event: Event) -> str | None:
    """Why ``event`` is not an arrival of a run of the other workflow at ``at`` (None if it is)."""
    headers = event.headers
    name = headers.get("workflow_name")
    if name is not None and name != spec.source:
        return f"not a run of {spec.source!r} (workflow_name {name!r})"
    if event.type != int(spec.at):
        return f"not at {spec.at.name} (status {event.type})"
    if headers.get(H_RUN_STATE) not in (_COMPLETED if spec.terminal else _ARRIVING):
        return f"not an arrival (run_state {headers.get(H_RUN_STATE)!r})"
    version = headers.get(H_VERSION, "")
    if not version.isdigit():
        return f"no record version ({version!r})"
    if not event.key:
        return "no run ID"
    return None


def _to_run(spec: ConnectionSpec, record: Record) -> Run[Any, Any]:
    status = spec.statuses.get(record.status)
    if status is None:
        raise UnknownStatus(f"status {record.status} is not a member of {type(spec.at).__name__}")
    return Run(
        workflow_name=record.workflow_name,
        foreign_id=record.foreign_id,
        run_id=record.run_id,
        run_state=record.run_state,
        status=status,
        object=spec.codec.decode(record.object),
        created_at=record.created_at,
        updated_at=record.updated_at,
        version=record.version,
        run_state_reason=record.run_state_reason,
    )


def connection_body(
    rt: Runtime[Any, Any], spec: ConnectionSpec, shard: int, shards: int, role: str
) -> Body:
    opts = spec.options
    topic = connection_topic(spec)
    streamer = spec.streamer or rt.streamer
    store = spec.store or rt.store
    what = f"connection {spec.name}"

    def skip(event: Event, reason: str, *, counted: bool = False, warn: bool = False) -> None:
        if counted:
            held = HELD.get()
            if held is not None:
                held.process.skipped += 1
        (log.warning if warn else log.info)(
            "statestream: %s skipped event %s of %s: %s", what, event.id, event.topic, reason
        )
        if rt.observer is not None:
            rt.skipped(event, reason)

    applier = Applier(rt, skip)

    async def handle(event: Event) -> None:
        if opts.lag:
            await rt.wait_lag(event, opts.lag)
        why = _foreign(spec, event)
        if why is not None:
            skip(event, why, counted=True, warn=True)
            return
        version = int(event.headers[H_VERSION])
        try:
            record = await store.lookup(event.key)
        except RecordNotFound:
            skip(event, "record not found", counted=True, warn=True)
            return
        if record.workflow_name != spec.source:
            skip(event, f"run {record.run_id} is not a run of {spec.source!r}", counted=True)
            return
        if record.version < version:
            raise StaleRead(
                f"store returned version {record.version} of run {record.run_id}, "
                f"older than the event's {version}"
            )
        try:
            run = _to_run(spec, record)
        except Exception as exc:  # the other workflow's codec, or a status it does not know
            skip(event, f"unable to unmarshal object: {exc}", counted=True, warn=True)
            return
        # The visit of ``at`` is the event's version (the run may have moved on since: ``run``
        # is as stored now).
        result = await call_user(spec.fn, spec.is_async, run)
        await applier.apply(
            event,
            actions_of(result, "a connection's function"),
            lambda i: f"{spec.name}\0{event.key}\0{version}\0{i}",
        )

    def open_receiver() -> Awaitable[EventReceiver]:
        return streamer.receiver(
            topic,
            role,
            from_latest=True,
            poll_interval=opts.polling_frequency,
            shard=shard,
            shards=shards,
        )

    pick_up = None
    if spec.catch_up and not spec.terminal:
        pick_up = CatchUp(
            rt,
            topic,
            role,
            statuses=(int(spec.at),),
            shard=shard,
            shards=shards,
            source=(spec.source, streamer, store),
        )
    return consumer_body(open_receiver, handle, retry_policy(what, opts), opts, catch_up=pick_up)
