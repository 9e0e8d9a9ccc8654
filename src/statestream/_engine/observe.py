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
from collections.abc import Awaitable
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


#: The methods an observer may leave to :class:`NullObserver` (the engine then skips the work
#: of preparing their arguments).
_OPTIONAL = ("work_started", "work_finished", "lag")


def _wants(observer: object, method: str) -> bool:
    """Whether ``observer`` does something in ``method`` (not :class:`NullObserver`'s)."""
    if isinstance(observer, Guarded):
        return observer.wants_work if method != "lag" else observer.wants_lag
    return getattr(type(observer), method, None) is not getattr(NullObserver, method)


class Guarded:
    """Calls an observer for the engine; an exception it raises is logged once per method and
    ignored. Also fans out to several observers, each guarded on its own.

    With one observer (the common case) each method calls the observer's bound method directly
    inside one ``try`` (no loop, no token list). ``wants_work`` and ``wants_lag`` say whether
    any observer overrides :class:`NullObserver`'s ``work_started``/``work_finished`` and
    ``lag``: when none does, the engine builds no :class:`Work` and reads no clock for them."""

    __slots__ = (
        "_observers",
        "_one",
        "_propagate",
        "_record_written",
        "_skipped",
        "_warned",
        "_work_finished",
        "_work_started",
        "wants_lag",
        "wants_work",
    )

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers
        self._warned: set[tuple[int, str]] = set()
        one = observers[0] if len(observers) == 1 else None
        self._one = one
        if one is not None:  # bound once: no bound method made per call
            self._work_started = one.work_started
            self._work_finished = one.work_finished
            self._record_written = one.record_written
            self._propagate = one.propagate
            self._skipped = one.event_skipped
        self.wants_work = any(
            _wants(o, "work_started") or _wants(o, "work_finished") for o in observers
        )
        self.wants_lag = any(_wants(o, "lag") for o in observers)

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
        if self._one is not None:
            try:
                return self._work_started(work)
            except Exception as exc:
                self._failed(0, "work_started", exc)
                return None
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
        if self._one is not None:
            try:
                self._work_finished(work, token, seconds, error)
            except Exception as exc:
                self._failed(0, "work_finished", exc)
            return
        tokens = token if isinstance(token, list) else [None] * len(self._observers)
        # In reverse, so that observers that made a context current unwind it in order.
        for i in reversed(range(len(self._observers))):
            try:
                self._observers[i].work_finished(work, tokens[i], seconds, error)
            except Exception as exc:
                self._failed(i, "work_finished", exc)

    def event_skipped(self, workflow: str, process: str, event: Event | None, reason: str) -> None:
        if self._one is not None:
            try:
                self._skipped(workflow, process, event, reason)
            except Exception as exc:
                self._failed(0, "event_skipped", exc)
            return
        self._each("event_skipped", workflow, process, event, reason)

    def lag(self, workflow: str, process: str, seconds: float, alert: bool) -> None:
        self._each("lag", workflow, process, seconds, alert)

    def record_written(self, previous: Record | None, record: Record) -> None:
        if self._one is not None:
            try:
                self._record_written(previous, record)
            except Exception as exc:
                self._failed(0, "record_written", exc)
            return
        self._each("record_written", previous, record)

    def propagate(self, headers: dict[str, str]) -> None:
        if self._one is not None:
            try:
                self._propagate(headers)
            except Exception as exc:
                self._failed(0, "propagate", exc)
            return
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


#: A process reports its lag for its first event and then for every LAG_EVERY-th one: the lag
#: is a gauge, and reading the clock and subtracting datetimes per event cost more than the
#: rest of the observer's calls.
LAG_EVERY = 16


class Scope:
    """The observer and the process that the current task works for."""

    __slots__ = ("_lag_alert", "_lag_due", "clock", "observer", "process", "workflow")

    def __init__(self, observer: Guarded, workflow: str, process: str, clock: Clock) -> None:
        self.observer = observer
        self.workflow = workflow
        self.process = process
        self.clock = clock
        self._lag_due = 0
        self._lag_alert = 0.0

    def skipped(self, event: Event | None, reason: str) -> None:
        self.observer.event_skipped(self.workflow, self.process, event, reason)

    def taken(self, event: Event, lag_alert: float) -> Work | None:
        """The process took ``event``: report its lag (sampled, see :data:`LAG_EVERY`) and
        return the :class:`Work` to report its attempts as (``None`` when no observer wants
        work reported)."""
        observer = self.observer
        if observer.wants_lag:
            due = self._lag_due
            if due <= 0:
                self._lag_due = LAG_EVERY - 1
                lag = (self.clock.now() - event.created_at).total_seconds()
                observer.lag(self.workflow, self.process, lag, 0 < lag_alert < lag)
            else:
                self._lag_due = due - 1
        if not observer.wants_work:
            return None
        headers = event.headers
        return Work(
            self.workflow,
            self.process,
            "event",
            event.type,
            event.key,
            headers.get("foreign_id", ""),
            headers,
            event,
        )


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


def timed(observer: Guarded, work: Work, body: Awaitable[Any]) -> Awaitable[Any]:
    """``body`` awaited as one unit of ``work`` (a timeout, a callback); ``body`` itself when
    no observer wants work reported."""
    if not observer.wants_work:
        return body
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
