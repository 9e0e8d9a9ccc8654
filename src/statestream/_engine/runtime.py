"""The engine's runtime: what every background process and public call shares.

One :class:`Runtime` per :class:`~statestream.Workflow`. It holds the definition and the adapters
and owns the write path (compare-and-set update with its outbox event), the freshness check of an
event against its record, the error policy (count, back off, pause), and the wakes that let this
process's writes reach its own waiters and pollers at once. Process bodies take the runtime, not
the facade, so the engine imports nothing above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NoReturn, TypeVar

from .._codec import check_instance, check_text, scrub_text
from .._core.ids import new_id
from .._core.protocols import (
    Clock,
    EventStreamer,
    Observer,
    RecordStore,
    RoleScheduler,
    TimeoutStore,
    Work,
)
from .._core.records import Event, Message, OutboxEvent, Record, TimeoutRecord, topic_for
from .._core.run import Cancel, Control, Pause, Run, SaveAndRepeat, Skip
from .._core.runstate import RunState
from .._core.types import StatusT, T
from .._definition.graph import describe_status
from .._definition.options import ProcessOptions
from .._definition.specs import Definition
from ..errors import (
    AdapterConnectionError,
    InvalidInput,
    InvalidTransition,
    RecordNotFound,
    StaleRead,
    UnknownStatus,
    VersionConflict,
)
from . import observe
from .lease import HELD, Abandon, Held, LeaseExpired
from .logfields import fields, of_event, of_record
from .parking import Parker
from .recent import RecentWrites
from .supervisor import Supervisor
from .usercode import DaemonExecutor, call_user_sync
from .waiters import Waiters

__all__ = ["H_PAUSED_BY", "H_RUN_STATE", "H_VERSION", "ErrorCounts", "Runtime"]

log = logging.getLogger("statestream")

H_RUN_STATE = "run_state"
H_VERSION = "record_version"
#: Set to "operator" on the event of a pause made through ``Workflow.pause``.
H_PAUSED_BY = "paused_by"

R = TypeVar("R")

_STOPPED = "record stopped"
_ELSEWHERE = "record status not in expected state"

_AUTO_PAUSE_REASON = "paused after {n} consecutive errors in {what}: {err}"


def _lease_expired(held: Held) -> NoReturn:
    """Refuse a write under a role whose lease is past its deadline (see :mod:`.lease`).

    The write path tests the deadline inline (a call less per write) and calls this only
    when it has passed.
    """
    raise LeaseExpired(
        f"the lease of role {held.lease.role} passed its deadline; the write was not made"
    )


class ErrorCounts:
    """Consecutive errors per (process, run), for the auto-pause threshold.

    A count is cleared when this process writes the run (any write: it moved on), reset when
    the run is seen at another version than at its last error (it moved on elsewhere), and the
    table is bounded: past ``limit`` runs, the one that failed least recently is forgotten.
    """

    __slots__ = ("_runs", "limit")

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        #: run ID -> process -> (count, version of the run at the last error, or -1)
        self._runs: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._runs)

    @property
    def runs(self) -> OrderedDict[str, dict[str, tuple[int, int]]]:
        """The table itself, empty when no count is held: the write path tests it (a C-level
        truth test) and keeps the reference, instead of calling :meth:`__bool__` per write."""
        return self._runs

    def __len__(self) -> int:
        return sum(len(per) for per in self._runs.values())

    def get(self, process: str, run_id: str) -> int:
        per = self._runs.get(run_id)
        return per[process][0] if per is not None and process in per else 0

    def add(self, process: str, run_id: str, version: int = -1) -> int:
        """Count one more error; returns the count."""
        runs = self._runs
        per = runs.get(run_id)
        if per is None:
            per = runs[run_id] = {}
            if len(runs) > self.limit:
                runs.popitem(last=False)
        else:
            runs.move_to_end(run_id)
        count, seen = per.get(process, (0, -1))
        if version != -1 and seen != -1 and seen != version:
            count = 0
        count += 1
        per[process] = (count, version if version != -1 else seen)
        return count

    def clear(self, process: str, run_id: str) -> None:
        per = self._runs.get(run_id)
        if per is not None:
            per.pop(process, None)
            if not per:
                del self._runs[run_id]

    def clear_run(self, run_id: str) -> None:
        self._runs.pop(run_id, None)


class Runtime(Generic[T, StatusT]):
    """The shared state and the write path of one workflow in this process."""

    def __init__(
        self,
        definition: Definition[T, StatusT],
        *,
        streamer: EventStreamer,
        store: RecordStore,
        scheduler: RoleScheduler,
        timeout_store: TimeoutStore | None,
        clock: Clock,
        observer: Observer | None = None,
        sync_workers: int = 32,
    ) -> None:
        self.d = definition
        self.name = definition.name
        self.streamer = streamer
        self.store = store
        self.scheduler = scheduler
        self.timeout_store = timeout_store
        self.clock = clock
        self.codec = definition.codec
        self.statuses = definition.statuses
        #: Where plain ``def`` user functions run (daemon threads: see usercode).
        self.executor = DaemonExecutor(sync_workers, f"statestream-{definition.name}")
        self.parker = Parker(store, clock, definition.name)
        self.supervisor = Supervisor(
            scheduler, definition.name, clock=clock, parker=self.parker, executor=self.executor
        )
        #: the configured observer, guarded; None without one (every hook checks just that)
        self.observer = observe.guard(observer)
        if self.observer is not None:
            self.supervisor.seam = observe.Seam(self.observer, definition.name, clock)
        #: What connector handlers receive as their first argument (the public Workflow).
        self.facade: Any = None
        self.outbox_wake = asyncio.Event()
        #: the store puts each write's event in the streamer itself: the outbox stays empty
        self.publishes_in_transaction = bool(getattr(store, "publishes_in_transaction", False))
        #: the records this process wrote last, answering its consumers' lookups (none for a
        #: store whose lookups are reads of this process's memory: None, two calls less per
        #: transition)
        self.recent: RecentWrites | None = (
            None if getattr(store, "local_lookups", False) else RecentWrites(limit=10_000)
        )
        #: per status with a timeout: set when this process stores a new timer there
        self.timeout_wakes: dict[int, asyncio.Event] = {}
        #: the pending ``wait_for`` calls of this workflow in this process
        self.waiters = Waiters(
            streamer, definition.name, frozenset(definition.graph.terminal_nodes)
        )
        self.errors = ErrorCounts()
        self._error_runs = self.errors.runs
        #: topic -> the consumer names this release reads it under (retention forgets others)
        self.consumers: dict[str, set[str]] = {}
        #: Called with every record this process writes (``statestream.testing`` keeps history
        #: with them, so its helpers need no store that keeps every version).
        self.listeners: list[Callable[[Record], None]] = []
        #: (run state, status) -> (topic, run-state header), computed once per pair
        self._topics: dict[tuple[RunState, int], tuple[str, str]] = {}
        self._names = {value: member.name for value, member in definition.statuses.items()}
        #: statuses with a timeout: a write leaving one cancels the visit's timer
        self._timed = frozenset(definition.timeouts)
        #: runs whose timer this process's poller is firing: it completes the timer itself
        self.firing: set[str] = set()

    # ------------------------------------------------------------------ reading

    def reads(self, topic: str, name: str) -> str:
        """Note that this release consumes ``topic`` as ``name`` (retention keeps its position)."""
        self.consumers.setdefault(topic, set()).add(name)
        return topic

    def describe(self, status: int) -> str:
        member = self.statuses.get(status)
        return describe_status(member.name) if member is not None else str(status)

    def to_run(self, record: Record) -> Run[T, StatusT]:
        """Decode a stored record into a typed :class:`Run`."""
        status = self.statuses.get(record.status)
        if status is None:
            raise UnknownStatus(f"record {record.run_id} has unknown status {record.status}")
        return Run(
            workflow_name=record.workflow_name,
            foreign_id=record.foreign_id,
            run_id=record.run_id,
            run_state=record.run_state,
            status=status,
            object=self.codec.decode(record.object),
            created_at=record.created_at,
            updated_at=record.updated_at,
            version=record.version,
            run_state_reason=record.run_state_reason,
        )

    async def fresh_record(self, event: Event, *, allow_stopped: bool = False) -> Record | None:
        """The record an event is about, if the event is still current (reference §3)."""
        version = int(event.headers.get(H_VERSION, 0))
        # Mostly the record this process has just written: no store read (see recent.py).
        recent = self.recent
        record = None
        if recent is not None:
            # Not a record written before this role's holding began: the previous holder may
            # have handled this event since (a handover re-delivers what it could not ack).
            current = HELD.get()
            record = recent.get(event.key, version, -math.inf if current is None else current.since)
        if record is None:
            try:
                record = await self.store.lookup(event.key)
            except RecordNotFound:
                log.debug(
                    "statestream: skipping event for unknown run %s",
                    event.key,
                    extra=of_event(event, self._names),
                )
                if self.observer is not None:
                    self.skipped(event, "record not found")
                return None
        if record.version > version:
            if self.observer is not None:
                self.skipped(event, "event record version lower than latest record version")
            return None  # superseded or already handled
        if record.version < version:
            raise StaleRead(
                f"store returned version {record.version} of run {record.run_id}, "
                f"older than the event's {version}"
            )
        if not allow_stopped and (record.run_state.stopped or record.status != event.type):
            if self.observer is not None:
                stopped = record.run_state.stopped
                self.skipped(
                    event, "record stopped" if stopped else "record status not in expected state"
                )
            return None
        return record

    def skipped(self, event: Event | None, reason: str) -> None:
        """Tell the observer that the current process left ``event`` (only with one)."""
        scope = observe.current()
        if scope is not None:
            scope.skipped(event, reason)
        elif self.observer is not None:
            self.observer.event_skipped(self.name, "", event, reason)

    def observed_timeout(self, timeout: TimeoutRecord, body: Awaitable[R]) -> Awaitable[R]:
        """``body`` (firing ``timeout``), reported as work when there is an observer."""
        if self.observer is None:
            return body
        scope = observe.current()
        process = scope.process if scope is not None else ""
        work = Work(
            self.name, process, "timeout", timeout.status, timeout.run_id, timeout.foreign_id
        )
        return observe.timed(self.observer, work, body)

    def observed_callback(self, foreign_id: str, status: int, body: Awaitable[R]) -> Awaitable[R]:
        """``body`` (a callback), reported as work when there is an observer."""
        if self.observer is None:
            return body
        work = Work(self.name, "callback", "callback", status, "", foreign_id)
        return observe.timed(self.observer, work, body)

    # ------------------------------------------------------------------ writing

    def event_for(self, record: Record, extra: dict[str, str] | None = None) -> OutboxEvent:
        key = (record.run_state, record.status)
        cached = self._topics.get(key)
        if cached is None:
            cached = self._topics[key] = (topic_for(record), str(int(record.run_state)))
        topic, state = cached
        headers = {
            "workflow_name": record.workflow_name,
            "foreign_id": record.foreign_id,
            "run_id": record.run_id,
            "topic": topic,
            "run_state": state,
            H_VERSION: str(record.version),
        }
        if extra:
            headers.update(extra)
        if self.observer is not None:
            self.observer.propagate(headers)
        message = Message(record.run_id, record.status, headers, record.updated_at)
        return OutboxEvent(new_id(), record.workflow_name, topic, message)

    def written(self, record: Record) -> None:
        """This process wrote ``record``: remember it, wake the relay (unless the store
        publishes in the write's transaction) and the run's waiters, and forget the run's error
        counts (it moved on)."""
        if self.recent is not None:
            self.recent.put(record)
        if not self.publishes_in_transaction:
            self.outbox_wake.set()
        if self._error_runs:
            self.errors.clear_run(record.run_id)
        if self.listeners:
            for listener in self.listeners:
                listener(record)
        if self.waiters.by_run:
            self.waiters.written(record)

    async def create(
        self, foreign_id: str, status: StatusT, initial: T | None, run_id: str | None = None
    ) -> Record:
        """Store a new run at ``status`` with its first event (refused while one is unfinished;
        a given ``run_id`` that exists already is refused with VersionConflict)."""
        if initial is None:
            try:
                initial = self.d.object_type()
            except Exception as exc:
                raise InvalidInput(
                    f"{self.d.object_type.__name__}() failed ({exc}); pass initial="
                ) from exc
        else:
            check_instance(self.d.object_type, initial)
        data = self.codec.encode(initial)
        now = self.clock.now()
        record = Record(
            workflow_name=self.name,
            foreign_id=foreign_id,
            run_id=run_id or new_id(),
            run_state=RunState.INITIATED,
            status=int(status),
            object=data,
            created_at=now,
            updated_at=now,
            version=1,
            status_description=status.name,
        )
        held = HELD.get()
        if held is not None and time.monotonic() >= held.lease.valid_until:
            _lease_expired(held)
        await self.store.create(record, self.event_for(record))
        self.written(record)
        if self.observer is not None:
            self.observer.record_written(None, record)
        return record

    async def update(
        self, current: Record, *, headers: dict[str, str] | None = None, **changes: Any
    ) -> Record:
        """Compare-and-set write of ``current`` with ``changes``; raises VersionConflict.

        Inside a background process whose lease is past its deadline nothing is written and
        :class:`LeaseExpired` is raised (another process may hold the role by now).
        """
        status = changes.get("status", current.status)
        state = changes.get("run_state", current.run_state)
        reason = changes.get("run_state_reason", current.run_state_reason)
        resumes = changes.get("auto_resumes", current.auto_resumes)
        if (
            state is RunState.PAUSED
            and self.d.pause_retry is not None
            and resumes >= self.d.pause_retry_limit
        ):
            reason = (
                f"{reason} (stays paused: already resumed automatically {resumes} times; "
                "resume it by hand)"
            )
        record = Record(
            workflow_name=current.workflow_name,
            foreign_id=current.foreign_id,
            run_id=current.run_id,
            run_state=state,
            status=status,
            object=changes.get("object", current.object),
            created_at=current.created_at,
            updated_at=self.clock.now(),
            version=current.version + 1,
            run_state_reason=reason,
            status_description=self._names.get(status) or str(status),
            auto_resumes=resumes,
        )
        event = self.event_for(record, headers)
        held = HELD.get()
        if held is not None and time.monotonic() >= held.lease.valid_until:
            _lease_expired(held)
        await self.store.update(record, event)
        self.written(record)
        if self._timed and current.status in self._timed:
            await self._left_timeout_status(current, record)
        if self.observer is not None:
            self.observer.record_written(current, record)
        return record

    async def _left_timeout_status(self, current: Record, record: Record) -> None:
        """Cancel the timer of a visit that ``record`` ended (bounded timeout stores).

        Best effort: the write is already stored, and the poller cancels a void timer when it
        comes due anyway, so a failure here is logged, not raised.
        """
        was = current.run_state
        becomes = record.run_state
        if was.stopped or was.finished or current.run_id in self.firing:
            return  # cancelled when it stopped, or the poller completes it
        if record.status == current.status and not (becomes.stopped or becomes.finished):
            return  # still on a visit here (a new one after save-and-repeat; its timer follows)
        assert self.timeout_store is not None
        try:
            await self.timeout_store.cancel_for(
                self.name, current.run_id, current.status, record.version
            )
        except Exception:
            log.warning(
                "statestream: cancelling the timers of run %s at %s failed; the poller cancels "
                "them when they come due",
                current.run_id,
                self.describe(current.status),
                exc_info=True,
                extra=of_record(current),
            )

    async def apply_result(
        self,
        what: str,
        destinations: tuple[StatusT, ...],
        record: Record,
        run: Run[T, StatusT],
        result: object,
    ) -> Record | None:
        """Store what a step, callback or timeout returned (a status or a Control)."""
        if isinstance(result, Control):
            if isinstance(result, Skip):
                if self.observer is not None:
                    self.skipped(None, "next value specified skip")
                return None
            # Pausing or cancelling keeps what the function wrote to the object (say, why).
            if isinstance(result, Pause):
                return await self.update(
                    record,
                    run_state=RunState.PAUSED,
                    run_state_reason=check_text(result.reason, "reason"),
                    object=self.codec.encode(run.object),
                )
            if isinstance(result, Cancel):
                return await self.update(
                    record,
                    run_state=RunState.CANCELLED,
                    run_state_reason=check_text(result.reason, "reason"),
                    object=self.codec.encode(run.object),
                )
            if isinstance(result, SaveAndRepeat):
                return await self.update(
                    record, run_state=RunState.RUNNING, object=self.codec.encode(run.object)
                )
        if not isinstance(result, self.d.status_type) or result not in destinations:
            allowed = ", ".join(d.name for d in destinations)
            raise InvalidTransition(f"{what} returned {result!r}; it may only return: {allowed}")
        terminal = self.d.graph.is_terminal(int(result))
        return await self.update(
            record,
            status=int(result),
            run_state=RunState.COMPLETED if terminal else RunState.RUNNING,
            object=self.codec.encode(run.object),
        )

    def scrubbed_object(self, record: Record) -> bytes:
        if self.d.delete_fn is not None:
            obj = self.codec.decode(record.object)
            return self.codec.encode(call_user_sync(self.d.delete_fn, obj))
        return self.codec.encode(self.d.object_type())

    # ------------------------------------------------------------------ errors

    def clear_errors(self, process: str, run_id: str) -> None:
        if self._error_runs:
            self.errors.clear(process, run_id)

    async def failed(
        self,
        what: str,
        process: str,
        run_id: str,
        exc: BaseException,
        opts: ProcessOptions,
        *,
        event: Event | None = None,
        status: int | None = None,
    ) -> bool:
        """Count an error of ``process`` for a run; pause the run at the limit.

        Returns True when the run was paused (or has moved on), so the work item is done, and
        False to retry it. Raises what pausing raised when the pause itself fails (a consumer
        then parks the event rather than retry it for ever).
        """
        where = (
            of_event(event, self._names)
            if event is not None
            else fields(
                self.name,
                run_id=run_id,
                status="" if status is None else self._names.get(status, str(status)),
            )
        )
        if isinstance(exc, VersionConflict):
            log.info(
                "statestream: run %s changed while %s ran; result discarded",
                run_id,
                what,
                extra=where,
            )
            return True
        if isinstance(exc, Abandon):
            log.info(
                "statestream: %s for run %s abandoned: %s",
                what,
                run_id,
                exc,
                extra=where,
            )
            return False
        # The backend unreachable is expected and transient, and its adapter logs the outage
        # (once, rate-limited): one line per run and attempt would drown that out. It is not
        # the run's fault either: it does not count towards ``pause_after_errors``, so that an
        # outage longer than the retries does not leave every run in flight paused.
        if isinstance(exc, AdapterConnectionError):
            log.debug(
                "statestream: %s of %s for run %s waits for the backend: %r",
                what,
                self.name,
                run_id,
                exc,
                extra=where,
            )
            return False
        version = int(event.headers.get(H_VERSION, -1)) if event is not None else -1
        count = self.errors.add(process, run_id, version)
        limit = opts.pause_after_errors
        log.warning(
            "statestream: %s of %s failed for run %s (error %d%s): %r",
            what,
            self.name,
            run_id,
            count,
            f" of {limit}" if limit else "",
            exc,
            # The exception itself: callers are often past their except block, where
            # exc_info=True would find no current exception (and log "NoneType: None").
            exc_info=None if isinstance(exc, StaleRead) else exc,
            extra=where,
        )
        if not limit or count < limit:
            return False
        if event is not None:
            record = await self.fresh_record(event)
        else:
            record = await self.store.lookup(run_id)
            if (
                record.run_state.stopped
                or record.run_state.finished
                or (status is not None and record.status != status)
            ):
                record = None  # it moved on: there is nothing of this work left to pause
        if record is not None:
            reason = _AUTO_PAUSE_REASON.format(
                n=count, what=what, err=f"{type(exc).__name__}: {exc}"
            )
            with contextlib.suppress(VersionConflict):  # someone else moved the run on meanwhile
                await self.update(
                    record, run_state=RunState.PAUSED, run_state_reason=scrub_text(reason)[:2000]
                )
        self.errors.clear(process, run_id)  # only once paused: a failed pause is tried again
        return True

    # ------------------------------------------------------------------ time

    async def sleep_clock(
        self, seconds: float, stopping: asyncio.Event, wake: asyncio.Event | None = None
    ) -> None:
        """Sleep on the workflow's clock, returning early on ``stopping`` or ``wake``."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.clock.sleep(seconds))]
        waits.append(asyncio.ensure_future(stopping.wait()))
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def wait_lag(self, event: Event, lag: float) -> None:
        """Wait until ``event`` is ``lag`` seconds old on the workflow's clock."""
        current = HELD.get()
        stopping = self.supervisor.stopping if current is None else current.stopping
        while True:
            left = event.created_at.timestamp() + lag - self.clock.now().timestamp()
            if left <= 0:
                return
            if stopping.is_set():
                raise Abandon
            await self.sleep_clock(left, stopping)
