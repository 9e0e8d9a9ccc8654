"""Applying what a connection's or a connector's function returns: Triggers and Callbacks.

Both are idempotent, so that a redelivered event changes nothing:

* :class:`~statestream.Trigger` starts a run whose run ID is derived from a key that names the
  event (:func:`derived_id`); the store refuses a second run with the same ID.
* :class:`~statestream.Callback` is a compare-and-set write that moves the run off the status,
  so a redelivered event finds it elsewhere. A run that is not there yet (not triggered yet, or
  before the status in the graph and not possibly past it) is waited for: :class:`NotYet` is
  retried with backoff like an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from .._codec import check_text
from .._core.actions import Callback, Trigger
from .._core.ids import derived_id
from .._core.records import Event
from .._definition.graph import Graph
from .._definition.options import ProcessOptions
from ..errors import (
    InvalidInput,
    RecordNotFound,
    UnknownStatus,
    VersionConflict,
    WorkflowInProgress,
)
from .callbacks import CallbackOutcome, run_callback
from .dispatch import ErrorPolicy, ParkEvent
from .runtime import Runtime

__all__ = ["Applier", "NotYet", "actions_of", "retry_policy"]

log = logging.getLogger("statestream")


class NotYet(Exception):
    """A Callback's run does not exist yet, or is at a status before the callback's: retried."""


def _reachable(graph: Graph, start: int) -> frozenset[int]:
    """The statuses a run at ``start`` can still reach (not ``start`` itself unless by a cycle)."""
    seen: set[int] = set()
    todo = list(graph.transitions(start))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.transitions(node))
    return frozenset(seen)


def retry_policy(what: str, opts: ProcessOptions) -> ErrorPolicy:
    """Retry with backoff (the dispatcher backs off per key) and park after
    ``park_after_errors`` attempts; a Callback waiting for its run is logged quietly."""
    limit = opts.park_after_errors

    async def on_error(event: Event, exc: BaseException, attempt: int) -> bool:
        quiet = isinstance(exc, NotYet)
        (log.info if quiet else log.warning)(
            "statestream: %s failed for %s (attempt %d%s): %r",
            what,
            event.key,
            attempt,
            f" of {limit}" if limit else "",
            exc,
            exc_info=attempt == 1 and not quiet,
        )
        if limit and attempt >= limit:
            raise ParkEvent(f"{what} failed {attempt} times", exc)
        return False

    return on_error


def actions_of(result: object, what: str) -> list[Trigger[Any] | Callback]:
    """The Triggers and Callbacks of ``result`` (one, a list of them or None)."""
    if result is None:
        return []
    if isinstance(result, Trigger | Callback):
        return [result]
    if isinstance(result, Iterable) and not isinstance(result, str | bytes):
        items = list(result)
        if all(isinstance(item, Trigger | Callback) for item in items):
            return items
    raise InvalidInput(
        f"{what} must return a Trigger, a Callback, a list of them or None, got {result!r}"
    )


class Applier:
    """Applies Triggers and Callbacks to ``rt``'s workflow; ``skip(event, reason)`` hears about
    the ones that change nothing (already triggered, a run not at the status...)."""

    def __init__(self, rt: Runtime[Any, Any], skip: Callable[[Event, str], None]) -> None:
        self.rt = rt
        self.skip = skip
        self._after: dict[int, frozenset[int]] = {}

    def after(self, status: int) -> frozenset[int]:
        found = self._after.get(status)
        if found is None:
            found = self._after[status] = _reachable(self.rt.d.graph, status)
        return found

    async def apply(
        self, event: Event, actions: list[Trigger[Any] | Callback], key: Callable[[int], str]
    ) -> None:
        """Apply ``actions`` in order; the ``i``-th Trigger's run ID is derived from ``key(i)``."""
        for i, action in enumerate(actions):
            if isinstance(action, Trigger):
                await self.trigger(event, action, key(i))
            else:
                await self.deliver(event, action)

    async def trigger(self, event: Event, action: Trigger[Any], key: str) -> None:
        rt = self.rt
        foreign_id = action.foreign_id
        if not isinstance(foreign_id, str) or not foreign_id:
            raise InvalidInput(f"Trigger needs a non-empty foreign_id, got {foreign_id!r}")
        check_text(foreign_id, "Trigger foreign_id")
        status = rt.d.start_status
        if action.start_at is not None:
            start = action.start_at
            graph = rt.d.graph
            if (
                not isinstance(start, rt.d.status_type)
                or int(start) not in graph
                or graph.is_terminal(int(start))
            ):
                raise UnknownStatus(f"Trigger start_at {start!r} is not a status runs start at")
            status = start
        run_id = derived_id(event.key, key)
        try:
            await rt.store.lookup(run_id)
        except RecordNotFound:
            pass
        else:
            self.skip(event, "already triggered")  # a redelivery of an event handled before
            return
        try:
            await rt.create(foreign_id, status, action.initial, run_id=run_id)
        except VersionConflict:
            self.skip(event, "already triggered")
        except WorkflowInProgress:
            self.skip(event, f"run in progress for {foreign_id!r}")

    async def deliver(self, event: Event, action: Callback) -> None:
        rt = self.rt
        if not isinstance(action.status, rt.d.status_type):
            raise UnknownStatus(
                f"Callback status must be a member of {rt.d.status_type.__name__}, "
                f"got {action.status!r}"
            )
        try:
            result = await run_callback(rt, action.foreign_id, action.status, action.payload)
        except RecordNotFound:
            # The run is not triggered yet (by another connection, say): wait for it.
            raise NotYet(f"no run of {action.foreign_id!r} yet") from None
        if result.outcome is CallbackOutcome.NOT_AT_STATUS:
            where, target = int(result.run.status), int(action.status)
            if target in self.after(where) and where not in self.after(target):
                # Before the status, and not a run that may have passed it: it gets there.
                raise NotYet(f"run of {action.foreign_id!r} is not at {action.status.name} yet")
            self.skip(event, f"run of {action.foreign_id!r} not at {action.status.name}")
        elif result.outcome is CallbackOutcome.STOPPED:
            self.skip(
                event, "record stopped" if result.run.run_state.stopped else "record finished"
            )
        elif result.outcome is CallbackOutcome.SKIPPED:
            self.skip(event, "next value specified skip")
