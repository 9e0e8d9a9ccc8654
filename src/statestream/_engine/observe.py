"""The observer seam: a no-op default, a composite, the guard the engine calls through, and the
per-process scope that lets deep code (the freshness check, the dispatcher) know which process
it works for.

The engine holds ``Guarded | None``: ``None`` when no observer is configured, so that every hook
on the hot path is one attribute check and no call. A configured observer is always wrapped in
:class:`Guarded`, which catches and logs (once per method) whatever it raises.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .._core.protocols import Clock, Observer, Work
from .._core.records import Event, Record

__all__ = [
    "CompositeObserver",
    "Guarded",
    "NullObserver",
    "Scope",
    "Seam",
    "current",
    "guard",
    "timed",
]

log = logging.getLogger("statestream")


class NullObserver:
    """An :class:`~statestream.Observer` that does nothing: subclass it and override the moments
    you need."""

    def work_started(self, work: Work) -> object:
        return None

    def work_finished(
        self, work: Work, token: object, seconds: float, error: BaseException | None
    ) -> None:
        pass

    def event_skipped(self, workflow: str, process: str, event: Event | None, reason: str) -> None:
        pass

    def lag(self, workflow: str, process: str, seconds: float, alert: bool) -> None:
        pass

    def record_written(self, previous: Record | None, record: Record) -> None:
        pass

    def propagate(self, headers: dict[str, str]) -> None:
        pass

    def lease_changed(self, workflow: str, role: str, held: bool) -> None:
        pass

    def relay_batch(self, workflow: str, count: int, seconds: float, lag: float) -> None:
        pass

    def process_failed(self, workflow: str, process: str, error: BaseException) -> None:
        pass


class Guarded:
    """Calls an observer for the engine; an exception it raises is logged once per method and
    ignored. Also fans out to several observers, each guarded on its own."""

    __slots__ = ("_observers", "_warned")

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers
        self._warned: set[tuple[int, str]] = set()

    @property
    def observers(self) -> tuple[Observer, ...]:
        """The observers this one calls, in order."""
        return self._observers

    def _failed(self, i: int, method: str, exc: BaseException) -> None:
        key = (i, method)
        if key not in self._warned:
            self._warned.add(key)
            log.warning(
                "statestream: observer %r raised in %s (ignored; logged once): %r",
                self._observers[i],
                method,
                exc,
                exc_info=exc,
            )

    def _each(self, method: str, *args: Any) -> None:
        for i, observer in enumerate(self._observers):
            try:
                getattr(observer, method)(*args)
            except Exception as exc:
                self._failed(i, method, exc)

    def work_started(self, work: Work) -> object:
        tokens: list[object] = []
        for i, observer in enumerate(self._observers):
            try:
                tokens.append(observer.work_started(work))
            except Exception as exc:
                tokens.append(None)
                self._failed(i, "work_started", exc)
        return tokens

    def work_finished(
        self, work: Work, token: object, seconds: float, error: BaseException | None
    ) -> None:
        tokens = token if isinstance(token, list) else [None] * len(self._observers)
        # In reverse, so that observers that made a context current unwind it in order.
        for i in reversed(range(len(self._observers))):
            try:
                self._observers[i].work_finished(work, tokens[i], seconds, error)
            except Exception as exc:
                self._failed(i, "work_finished", exc)

    def event_skipped(self, workflow: str, process: str, event: Event | None, reason: str) -> None:
        self._each("event_skipped", workflow, process, event, reason)

    def lag(self, workflow: str, process: str, seconds: float, alert: bool) -> None:
        self._each("lag", workflow, process, seconds, alert)

    def record_written(self, previous: Record | None, record: Record) -> None:
        self._each("record_written", previous, record)

    def propagate(self, headers: dict[str, str]) -> None:
        self._each("propagate", headers)

    def lease_changed(self, workflow: str, role: str, held: bool) -> None:
        self._each("lease_changed", workflow, role, held)

    def relay_batch(self, workflow: str, count: int, seconds: float, lag: float) -> None:
        self._each("relay_batch", workflow, count, seconds, lag)

    def process_failed(self, workflow: str, process: str, error: BaseException) -> None:
        self._each("process_failed", workflow, process, error)


class CompositeObserver(Guarded):
    """Several observers as one (``Builder.build(observer=CompositeObserver(metrics, traces))``):
    each hears every moment, in order, and one that raises does not keep the others from it."""

    __slots__ = ()


def guard(observer: object) -> Guarded | None:
    """What the engine holds for a configured observer (``None`` when there is none)."""
    if observer is None:
        return None
    if isinstance(observer, Guarded):
        return observer
    return Guarded(observer)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the process's scope


class Scope:
    """The observer and the process that the current task works for."""

    __slots__ = ("clock", "observer", "process", "workflow")

    def __init__(self, observer: Guarded, workflow: str, process: str, clock: Clock) -> None:
        self.observer = observer
        self.workflow = workflow
        self.process = process
        self.clock = clock

    def skipped(self, event: Event | None, reason: str) -> None:
        self.observer.event_skipped(self.workflow, self.process, event, reason)

    def wrap(
        self, handle: Callable[[Event], Awaitable[None]], lag_alert: float = 0.0
    ) -> Callable[[Event], Coroutine[Any, Any, None]]:
        """``handle`` with every attempt reported as work, and each event's lag."""
        observer, workflow, process, clock = self.observer, self.workflow, self.process, self.clock

        async def observed(event: Event) -> None:
            lag = (clock.now() - event.created_at).total_seconds()
            observer.lag(workflow, process, lag, 0 < lag_alert < lag)
            headers = event.headers
            work = Work(
                workflow,
                process,
                "event",
                event.type,
                event.key,
                headers.get("foreign_id", ""),
                headers,
                event,
            )
            await _timed(observer, work, handle(event))

        return observed


async def _timed(observer: Guarded, work: Work, body: Awaitable[Any]) -> Any:
    token = observer.work_started(work)
    started = time.monotonic()
    try:
        result = await body
    except BaseException as exc:
        observer.work_finished(work, token, time.monotonic() - started, exc)
        raise
    observer.work_finished(work, token, time.monotonic() - started, None)
    return result


def timed(observer: Guarded, work: Work, body: Awaitable[Any]) -> Coroutine[Any, Any, Any]:
    """``body`` awaited as one unit of ``work`` (a timeout, a callback)."""
    return _timed(observer, work, body)


_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "statestream_scope", default=None
)


class Seam:
    """One workflow's observer, as the supervisor and the runtime call it."""

    __slots__ = ("clock", "observer", "workflow")

    def __init__(self, observer: Guarded, workflow: str, clock: Clock) -> None:
        self.observer = observer
        self.workflow = workflow
        self.clock = clock

    def enter(self, process: str) -> None:
        """Make the current task (and the tasks it starts) work for ``process``."""
        _SCOPE.set(Scope(self.observer, self.workflow, process, self.clock))

    def lease_changed(self, role: str, held: bool) -> None:
        self.observer.lease_changed(self.workflow, role, held)

    def process_failed(self, process: str, error: BaseException) -> None:
        self.observer.process_failed(self.workflow, process, error)


def current() -> Scope | None:
    """The scope of the current task: ``None`` without an observer or outside a process."""
    return _SCOPE.get()
