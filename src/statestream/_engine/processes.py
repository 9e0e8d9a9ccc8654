"""Bodies of the event-driven background processes of a workflow.

Each factory returns ``body(stopping)``, run by the Supervisor while the process's role is held:
step consumers, run-state hooks, the data deleter and the pause-retry process. The outbox relay,
the timeout processes and connectors live in ``relay.py``, ``timeouts.py`` and ``connector.py``.

Every engine consumer reads from the newest event when its name is new, and step consumers and
the data deleter catch up from the record store instead (see ``catchup.py``). Step shards read
only their own shard's events: the streamer filters them (``receiver(shard=, shards=)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from .._core.protocols import EventReceiver
from .._core.records import Event, delete_topic, run_state_change_topic, status_topic
from .._core.runstate import RunState
from .._core.types import StatusT, T
from .._definition.options import ProcessOptions
from ..errors import RecordNotFound, VersionConflict
from .catchup import CatchingUp, CatchUp
from .dispatch import Body, ErrorPolicy, Handler, KeyedDispatcher, ParkEvent, Settled
from .logfields import of_event, of_record
from .runtime import H_PAUSED_BY, H_RUN_STATE, H_VERSION, Runtime
from .usercode import call_user

if TYPE_CHECKING:
    from .._definition.specs import HookSpec, StepSpec

__all__ = [
    "Body",
    "consumer_body",
    "delete_body",
    "hook_body",
    "pause_retry_body",
    "step_body",
]

log = logging.getLogger("statestream")


def consumer_body(
    open_receiver: Callable[[], Awaitable[EventReceiver]],
    handle: Handler,
    on_error: ErrorPolicy,
    opts: ProcessOptions,
    *,
    shard: int = 0,
    shards: int = 1,
    accept: Callable[[Event], bool] | None = None,
    catch_up: CatchUp | None = None,
    new_since: datetime | None = None,
) -> Body:
    """A process that feeds one receiver's events to ``handle`` through a KeyedDispatcher.

    Args:
        shard, shards: drop other shards' events here, for receivers that cannot filter by
            shard themselves (connector sources); engine receivers are opened per shard.
        accept: which events to handle; the others are passed over without a task.
        catch_up: the runs to pick up from the record store first, unless this consumer has
            caught up before (see ``catchup.py``).
        new_since: when the consumer name is new, pass over events created before this time
            (an outbox backlog published after the receiver opened): a new hook must not fire
            for runs that finished before it existed.
    """

    async def body(stopping: asyncio.Event) -> None:
        receiver: EventReceiver = await open_receiver()
        try:
            source, wanted = receiver, accept
            if new_since is not None and receiver.is_new:
                wanted = _created_since(new_since, accept)
            settle: Callable[[], Settled | None] | None = None
            if catch_up is not None:
                source = await catch_up.wrap(receiver)
                if isinstance(source, CatchingUp):
                    settle = _settler(source, wanted)
                    wanted = source.accepting(wanted)
            await KeyedDispatcher(
                source,
                handle,
                on_error,
                concurrency=opts.concurrency,
                shard=shard,
                shards=shards,
                error_backoff=opts.error_backoff,
                max_error_backoff=opts.max_error_backoff,
                accept=wanted,
                lag_alert=opts.lag_alert,
                settle=settle,
            ).run(stopping)
        finally:
            await source.close()

    return body


def _settler(
    source: CatchingUp, accept: Callable[[Event], bool] | None
) -> Callable[[], Settled | None]:
    """Once the catch-up is over, the dispatcher reads the receiver underneath with the
    consumer's own ``accept``: no wrapper call per receive, event and acknowledgement."""

    def settle() -> Settled | None:
        inner = source.through()
        return None if inner is None else (inner, accept)

    return settle


def _created_since(
    opened: datetime, accept: Callable[[Event], bool] | None
) -> Callable[[Event], bool]:
    def fresh(event: Event) -> bool:
        return event.created_at >= opened and (accept is None or accept(event))

    return fresh


def _retry_forever(what: str, opts: ProcessOptions) -> ErrorPolicy:
    """The error policy of consumers that do not pause runs (hooks, connectors, the data
    deleter, pause retry): retry with backoff (the dispatcher backs off per run), and after
    ``opts.park_after_errors`` attempts park the event and move on (0: retry for ever)."""
    limit = opts.park_after_errors

    async def on_error(event: Event, exc: BaseException, attempt: int) -> bool:
        log.warning(
            "statestream: %s failed for %s (attempt %d%s): %r",
            what,
            event.key,
            attempt,
            f" of {limit}" if limit else "",
            exc,
            exc_info=attempt == 1,
            extra=of_event(event),
        )
        if limit and attempt >= limit:
            raise ParkEvent(f"{what} failed {attempt} times", exc)
        return False

    return on_error


def step_body(
    rt: Runtime[T, StatusT], spec: StepSpec[T, StatusT], shard: int, shards: int, role: str
) -> Body:
    topic = status_topic(rt.name, int(spec.status))
    opts = spec.options
    what = f"step {spec.status.name}"

    async def handle(event: Event) -> None:
        if opts.lag:
            await rt.wait_lag(event, opts.lag)
        record = await rt.fresh_record(event)
        if record is None:
            return
        run = rt.to_run(record)
        if run.run_state is RunState.INITIATED:
            run.run_state = RunState.RUNNING
        result = await call_user(spec.fn, spec.is_async, run)
        await rt.apply_result(what, spec.destinations, record, run, result)
        rt.clear_errors(role, record.run_id)

    async def on_error(event: Event, exc: BaseException, attempt: int) -> bool:
        return await rt.failed(what, role, event.key, exc, opts, event=event)

    def open_receiver() -> Awaitable[EventReceiver]:
        return rt.streamer.receiver(
            topic,
            role,
            from_latest=True,
            poll_interval=opts.polling_frequency,
            shard=shard,
            shards=shards,
        )

    rt.reads(topic, role)
    pick_up = CatchUp(rt, topic, role, statuses=(int(spec.status),), shard=shard, shards=shards)
    return consumer_body(open_receiver, handle, on_error, opts, catch_up=pick_up)


def hook_body(rt: Runtime[T, StatusT], hook: HookSpec[T, StatusT], role: str) -> Body:
    wanted = str(int(hook.run_state))
    rt.reads(run_state_change_topic(rt.name), role)

    def accept(event: Event) -> bool:
        return event.headers.get(H_RUN_STATE) == wanted

    async def handle(event: Event) -> None:
        # The record this process wrote, when it is that version or newer (see recent.py).
        recent = rt.recent
        record = (
            recent.get(event.key, int(event.headers.get(H_VERSION, 0)))
            if recent is not None
            else None
        )
        if record is None:
            try:
                record = await rt.store.lookup(event.key)
            except RecordNotFound:
                return
        await call_user(hook.fn, hook.is_async, rt.to_run(record))

    def open_receiver() -> Awaitable[EventReceiver]:
        # A new hook starts at the newest event: it never fires for runs finished before it.
        return rt.streamer.receiver(
            run_state_change_topic(rt.name),
            role,
            from_latest=True,
            poll_interval=hook.options.polling_frequency,
        )

    return consumer_body(
        open_receiver,
        handle,
        _retry_forever(f"{hook.run_state.label} hook", hook.options),
        hook.options,
        accept=accept,
        new_since=rt.clock.now(),  # built when the workflow starts
    )


def delete_body(rt: Runtime[T, StatusT], role: str, opts: ProcessOptions) -> Body:
    """Scrubs the object of runs whose data deletion was requested, then marks them deleted."""
    rt.reads(delete_topic(rt.name), role)

    async def handle(event: Event) -> None:
        record = await rt.fresh_record(event, allow_stopped=True)
        if record is None or record.run_state is not RunState.REQUESTED_DATA_DELETED:
            return
        scrubbed = rt.scrubbed_object(record)
        try:
            await rt.update(
                record,
                run_state=RunState.DATA_DELETED,
                object=scrubbed,
            )
        except VersionConflict:
            log.info(
                "statestream: run %s changed while its data was deleted",
                record.run_id,
                extra=of_record(record),
            )

    topic = delete_topic(rt.name)

    def open_receiver() -> Awaitable[EventReceiver]:
        return rt.streamer.receiver(
            topic, role, from_latest=True, poll_interval=opts.polling_frequency
        )

    pick_up = CatchUp(rt, topic, role, run_states=(RunState.REQUESTED_DATA_DELETED,))
    return consumer_body(
        open_receiver, handle, _retry_forever("data deletion", opts), opts, catch_up=pick_up
    )


def pause_retry_body(rt: Runtime[T, StatusT], role: str, opts: ProcessOptions) -> Body:
    """Resumes runs that have been paused for ``pause_retry``, up to ``pause_retry_limit`` times."""
    delay = rt.d.pause_retry or 0.0
    limit = rt.d.pause_retry_limit
    wanted = str(int(RunState.PAUSED))
    rt.reads(run_state_change_topic(rt.name), role)

    def accept(event: Event) -> bool:
        # Not a pause, or an operator's pause (that one stays until resumed by hand).
        return event.headers.get(H_RUN_STATE) == wanted and not event.headers.get(H_PAUSED_BY)

    async def handle(event: Event) -> None:
        await rt.wait_lag(event, delay)
        record = await rt.fresh_record(event, allow_stopped=True)
        if record is None or record.run_state is not RunState.PAUSED:
            return
        if record.auto_resumes >= limit:
            log.warning(
                "statestream: run %s stays paused: it was resumed automatically %d times",
                record.run_id,
                record.auto_resumes,
                extra=of_record(record),
            )
            return
        # A conflict means it was resumed, cancelled or paused again by someone else meanwhile.
        with contextlib.suppress(VersionConflict):
            await rt.update(
                record,
                run_state=RunState.RUNNING,
                run_state_reason=f"resumed automatically ({record.auto_resumes + 1} of {limit})",
                auto_resumes=record.auto_resumes + 1,
            )

    def open_receiver() -> Awaitable[EventReceiver]:
        return rt.streamer.receiver(
            run_state_change_topic(rt.name),
            role,
            from_latest=True,
            poll_interval=opts.polling_frequency,
        )

    return consumer_body(
        open_receiver, handle, _retry_forever("pause retry", opts), opts, accept=accept
    )
