"""Bodies of the event-driven background processes of a workflow.

Each factory returns ``body(stopping)``, run by the Supervisor while the process's role is held:
step consumers, run-state hooks, the data deleter, the pause-retry process and connectors. The
outbox relay and the timeout processes live in ``_workflow.py`` and ``_timeout.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .._core.protocols import EventReceiver
from .._core.records import Event, delete_topic, run_state_change_topic, status_topic
from .._core.runstate import RunState
from .._core.types import StatusT, T, call_user
from .._definition.options import ProcessOptions
from ..errors import RecordNotFound, VersionConflict
from .dispatch import ErrorPolicy, Handler, KeyedDispatcher

if TYPE_CHECKING:
    from .._builder import ConnectorSpec, HookSpec, StepSpec
    from .._workflow import Workflow

__all__ = [
    "H_PAUSED_BY",
    "H_RUN_STATE",
    "H_VERSION",
    "Body",
    "connector_body",
    "consumer_body",
    "delete_body",
    "hook_body",
    "pause_retry_body",
    "step_body",
]

log = logging.getLogger("statestream")

H_RUN_STATE = "run_state"
H_VERSION = "record_version"
#: Set to "operator" on the event of a pause made through ``Workflow.pause``.
H_PAUSED_BY = "paused_by"

Body = Callable[[asyncio.Event], Awaitable[None]]


def consumer_body(
    open_receiver: Callable[[], Awaitable[EventReceiver]],
    handle: Handler,
    on_error: ErrorPolicy,
    opts: ProcessOptions,
    *,
    shard: int = 0,
    shards: int = 1,
    accept: Callable[[Event], bool] | None = None,
) -> Body:
    """A process that feeds one receiver's events to ``handle`` through a KeyedDispatcher."""

    async def body(stopping: asyncio.Event) -> None:
        receiver = await open_receiver()
        try:
            await KeyedDispatcher(
                receiver,
                handle,
                on_error,
                concurrency=opts.concurrency,
                shard=shard,
                shards=shards,
                error_backoff=opts.error_backoff,
                max_error_backoff=opts.max_error_backoff,
                accept=accept,
            ).run(stopping)
        finally:
            await receiver.close()

    return body


def _retry_forever(what: str) -> ErrorPolicy:
    async def on_error(event: Event, exc: BaseException, attempt: int) -> bool:
        log.warning(
            "statestream: %s failed for %s (attempt %d): %r",
            what,
            event.key,
            attempt,
            exc,
            exc_info=attempt == 1,
        )
        return False

    return on_error


def step_body(
    wf: Workflow[T, StatusT], spec: StepSpec[T, StatusT], shard: int, shards: int, role: str
) -> Body:
    topic = status_topic(wf.name, int(spec.status))
    opts = spec.options
    what = f"step {spec.status.name}"

    async def handle(event: Event) -> None:
        if opts.lag:
            await wf._wait_lag(event, opts.lag)
        record = await wf._fresh_record(event)
        if record is None:
            return
        run = wf.to_run(record)
        if run.run_state is RunState.INITIATED:
            run.run_state = RunState.RUNNING
        result = await call_user(spec.fn, spec.is_async, run)
        await wf._apply_result(what, spec.destinations, record, run, result)
        wf._clear_errors(role, record.run_id)

    async def on_error(event: Event, exc: BaseException, attempt: int) -> bool:
        return await wf._failed(what, role, event.key, exc, opts, event=event)

    def open_receiver() -> Awaitable[EventReceiver]:
        return wf.streamer.receiver(topic, role, poll_interval=opts.polling_frequency)

    return consumer_body(open_receiver, handle, on_error, opts, shard=shard, shards=shards)


def hook_body(wf: Workflow[T, StatusT], hook: HookSpec[T, StatusT], role: str) -> Body:
    wanted = str(int(hook.run_state))

    def accept(event: Event) -> bool:
        return event.headers.get(H_RUN_STATE) == wanted

    async def handle(event: Event) -> None:
        try:
            record = await wf.store.lookup(event.key)
        except RecordNotFound:
            return
        await call_user(hook.fn, hook.is_async, wf.to_run(record))

    def open_receiver() -> Awaitable[EventReceiver]:
        return wf.streamer.receiver(
            run_state_change_topic(wf.name), role, poll_interval=hook.options.polling_frequency
        )

    return consumer_body(
        open_receiver,
        handle,
        _retry_forever(f"{hook.run_state.label} hook"),
        hook.options,
        accept=accept,
    )


def delete_body(wf: Workflow[T, StatusT], role: str, opts: ProcessOptions) -> Body:
    """Scrubs the object of runs whose data deletion was requested, then marks them deleted."""

    async def handle(event: Event) -> None:
        record = await wf._fresh_record(event, allow_stopped=True)
        if record is None or record.run_state is not RunState.REQUESTED_DATA_DELETED:
            return
        scrubbed = wf._scrubbed_object(record)
        try:
            await wf._update(
                record,
                run_state=RunState.DATA_DELETED,
                object=scrubbed,
            )
        except VersionConflict:
            log.info("statestream: run %s changed while its data was deleted", record.run_id)

    def open_receiver() -> Awaitable[EventReceiver]:
        return wf.streamer.receiver(
            delete_topic(wf.name), role, poll_interval=opts.polling_frequency
        )

    return consumer_body(open_receiver, handle, _retry_forever("data deletion"), opts)


def pause_retry_body(wf: Workflow[T, StatusT], role: str, opts: ProcessOptions) -> Body:
    """Resumes runs that have been paused for ``pause_retry``, up to ``pause_retry_limit`` times."""
    delay = wf._def.pause_retry or 0.0
    limit = wf._def.pause_retry_limit
    wanted = str(int(RunState.PAUSED))

    def accept(event: Event) -> bool:
        # Not a pause, or an operator's pause (that one stays until resumed by hand).
        return event.headers.get(H_RUN_STATE) == wanted and not event.headers.get(H_PAUSED_BY)

    async def handle(event: Event) -> None:
        await wf._wait_lag(event, delay)
        record = await wf._fresh_record(event, allow_stopped=True)
        if record is None or record.run_state is not RunState.PAUSED:
            return
        if record.auto_resumes >= limit:
            log.warning(
                "statestream: run %s stays paused: it was resumed automatically %d times",
                record.run_id,
                record.auto_resumes,
            )
            return
        # A conflict means it was resumed, cancelled or paused again by someone else meanwhile.
        with contextlib.suppress(VersionConflict):
            await wf._update(
                record,
                run_state=RunState.RUNNING,
                run_state_reason=f"resumed automatically ({record.auto_resumes + 1} of {limit})",
                auto_resumes=record.auto_resumes + 1,
            )

    def open_receiver() -> Awaitable[EventReceiver]:
        return wf.streamer.receiver(
            run_state_change_topic(wf.name), role, poll_interval=opts.polling_frequency
        )

    return consumer_body(open_receiver, handle, _retry_forever("pause retry"), opts, accept=accept)


def connector_body(
    wf: Workflow[T, StatusT], spec: ConnectorSpec[T, StatusT], shard: int, shards: int, role: str
) -> Body:
    opts = spec.options

    async def handle(event: Event) -> None:
        if opts.lag:
            await wf._wait_lag(event, opts.lag)
        await spec.fn(wf, event)

    def open_receiver() -> Awaitable[EventReceiver]:
        return spec.source.receiver(role)

    return consumer_body(
        open_receiver,
        handle,
        _retry_forever(f"connector {spec.name}"),
        opts,
        shard=shard,
        shards=shards,
    )
