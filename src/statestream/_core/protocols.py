"""The adapter contracts. The core owns them; adapters implement them without subclassing.

Each contract has a conformance suite in :mod:`statestream.adaptertest` that every implementation
must pass: :class:`~statestream.adaptertest.RecordStoreContract`,
:class:`~statestream.adaptertest.EventStreamerContract`,
:class:`~statestream.adaptertest.TimeoutStoreContract` and
:class:`~statestream.adaptertest.RoleSchedulerContract`.

Every method is a coroutine and must be cancellable: cancelling the awaiting task must leave the
adapter usable and must not lose data that was acknowledged as written.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Protocol, TypeVar, runtime_checkable

from .records import (
    Event,
    Message,
    Order,
    OutboxEvent,
    ParkedEvent,
    Record,
    RecordFilter,
    RunCounts,
    ScanPage,
    TimeoutRecord,
)

__all__ = [
    "Clock",
    "Codec",
    "ConnectorSource",
    "EventHistory",
    "EventReceiver",
    "EventStreamer",
    "Lease",
    "Observer",
    "RecordStore",
    "RoleMembers",
    "RoleScheduler",
    "RunCounter",
    "ScanLister",
    "SnapshotStore",
    "TimeoutStore",
    "Work",
]

T = TypeVar("T")


@runtime_checkable
class RecordStore(Protocol):
    """Stores runs, each write together with its outbox event in one atomic transaction.

    Invariants (checked by ``RecordStoreContract``):

    * ``create`` inserts a run and its outbox event atomically, and refuses with
      :class:`~statestream.errors.WorkflowInProgress` when the latest run of the same
      ``(workflow_name, foreign_id)`` is not finished (``RunState.finished``). The check and the
      insert are one atomic step: two concurrent ``create`` calls never both succeed. A
      ``create`` whose run ID exists already raises
      :class:`~statestream.errors.VersionConflict` and writes nothing (connections derive run
      IDs to make their triggers idempotent).
    * ``update`` is a compare-and-set: it stores ``record`` only if the stored version is exactly
      ``record.version - 1``, together with ``event``, atomically; otherwise it raises
      :class:`~statestream.errors.VersionConflict` and writes nothing. A missing run raises
      :class:`~statestream.errors.RecordNotFound`.
    * ``list_outbox`` returns pending outbox events of one workflow oldest first;
      ``delete_outbox`` is idempotent.
    * ``list`` pages by key (``after``, the last run ID of the previous page) in O(page) work
      however deep the page; ``offset`` is kept for small offsets and may be bounded.
    * Parked events (events a consumer gave up on) are kept until deleted: ``park`` is an upsert
      on :attr:`ParkedEvent.id`; ``retry_parked`` sets ``retry_requested`` (``RecordNotFound``
      for an unknown ID); ``list_parked`` filters by consumer and flag, oldest first.

    Optional attribute (not part of the structural check): a store whose writes put their
    event straight into the streamer in the write's own transaction, leaving the outbox empty,
    may set ``publishes_in_transaction = True``. The engine then does not wake its outbox relay
    on every write; the relay still polls at its ``polling_frequency``, so outbox rows left by
    another configuration are still published. Such a store may also name that streamer,
    ``publishes_into``: ``build`` then refuses a different streamer (``ConfigurationError``),
    whose consumers would never see the events.

    Likewise, a store whose ``lookup`` is a read of this process's memory may set
    ``local_lookups = True``: the engine then keeps no cache of the records it wrote to spare
    lookups (which would cost more than it saves).
    """

    async def create(self, record: Record, event: OutboxEvent) -> None: ...

    async def update(self, record: Record, event: OutboxEvent) -> None: ...

    async def lookup(self, run_id: str) -> Record:
        """The run with this ID, or :class:`~statestream.errors.RecordNotFound`."""
        ...

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        """The most recently created run of the foreign ID, or ``RecordNotFound``."""
        ...

    async def list(
        self,
        workflow_name: str | None = None,
        *,
        offset: int = 0,
        limit: int = 25,
        order: Order = Order.ASC,
        filter: RecordFilter | None = None,
        after: str | None = None,
    ) -> list[Record]:
        """Runs in creation order; ``workflow_name=None`` means all.

        With a time bound in ``filter`` (``created_after``, ``created_before``), runs in order
        of ``created_at``, ties in creation order: the index on creation time serves the page
        however wide the range. That is creation order whenever ``created_at`` grows with it;
        runs stamped by clocks that disagree may come in another order than without the bound.

        ``after`` is a run ID: the page starts after that run in the requested ``order``
        (keyset paging, index-backed). ``offset`` counts rows from there and is meant for small
        values only. An unknown ``after`` raises :class:`~statestream.errors.RecordNotFound`.
        """
        ...

    async def list_outbox(self, workflow_name: str, limit: int) -> builtins.list[OutboxEvent]: ...

    async def delete_outbox(self, ids: Sequence[str]) -> None: ...

    async def park(self, parked: ParkedEvent) -> None: ...

    async def list_parked(
        self,
        workflow_name: str,
        *,
        consumer: str | None = None,
        retry_requested: bool | None = None,
        limit: int = 100,
    ) -> builtins.list[ParkedEvent]: ...

    async def retry_parked(self, parked_id: str) -> None: ...

    async def delete_parked(self, parked_id: str) -> None:
        """Idempotent: deleting an unknown ID does nothing."""
        ...


@runtime_checkable
class RunCounter(Protocol):
    """Optional capability of a :class:`RecordStore`: count a workflow's runs without reading
    them (the web UI's graph, ``statestream top``). Not part of the check that
    ``Builder.build`` makes of a store; callers test ``isinstance(store, RunCounter)`` and
    otherwise page through ``list``.

    A store implements it when it can count in one statement or from counters, without
    handing every run to the caller: the memory store keeps counters, the SQL stores group the
    workflow's runs in one pass on the server (no index has the status, which every transition
    changes, so the pass reads each of the workflow's rows: callers cache it). Conformance: the
    ``test_count_runs_*`` tests of :class:`~statestream.adaptertest.RecordStoreContract`
    (skipped for a store without the capability).
    """

    async def count_runs(self, workflow_name: str) -> RunCounts:
        """The workflow's runs by status and by run state, as of one moment (one snapshot).
        An unknown workflow has no runs: empty counts."""
        ...


@runtime_checkable
class ScanLister(Protocol):
    """Optional capability of a :class:`RecordStore`: a page of a filter no index serves (the
    status: every transition changes it, so no store indexes it) that reads a bounded number
    of runs. The web UI's run list uses it for a status filter, so that a status few or no
    runs have answers as fast as any page; without it the UI pages through ``list`` itself.
    Conformance: the ``test_list_scan_*`` tests of
    :class:`~statestream.adaptertest.RecordStoreContract` (skipped for a store without it).
    """

    async def list_scan(
        self,
        workflow_name: str,
        *,
        limit: int,
        scan_limit: int,
        order: Order = Order.DESC,
        filter: RecordFilter | None = None,
        after: str | None = None,
    ) -> ScanPage:
        """Examine at most ``scan_limit`` of the runs ``list(workflow_name, order=order,
        filter=<filter without its statuses>, after=after)`` returns, in that order, and
        return those at one of ``filter.statuses`` (every run when it has none), stopping at
        ``limit`` of them; ``ScanPage.resume`` is the last run examined ("" when the runs
        ended before ``scan_limit``). InvalidInput when ``limit`` or ``scan_limit`` < 1;
        RecordNotFound when ``after`` names no run."""
        ...


@runtime_checkable
class SnapshotStore(Protocol):
    """Optional: a store that keeps every version of a run (the in-memory store does, for tests)."""

    def snapshots(self, run_id: str) -> list[Record]: ...


@runtime_checkable
class EventReceiver(Protocol):
    """Reads one topic under a durable consumer name.

    ``recv`` waits (without spinning) until at least one event after the last one it returned is
    available and returns up to ``limit`` of them in ID order (for a partitioned backend such as
    Kafka: in ID order within each partition, hence within each key, interleaved across
    partitions). ``ack(e)`` commits the consumer's position: every event this receiver returned
    up to and including ``e``, in the order returned, is handled (a partitioned backend commits
    each partition's offset after the last of those events in it). A new receiver with the same
    name starts after the last acknowledged event, so unacknowledged events are delivered again
    (at-least-once).

    ``is_new`` is True when the consumer name had no committed position when the receiver was
    opened (the engine then catches up from the record store instead of replaying history).
    """

    @property
    def is_new(self) -> bool: ...

    async def recv(self, limit: int = 100) -> list[Event]: ...

    async def ack(self, event: Event) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class EventStreamer(Protocol):
    """Publishes events to topics and opens receivers on them.

    Events published in one call to ``publish`` keep their order. A receiver with no committed
    position starts at the oldest retained event, or, with ``from_latest=True``, after the last
    event published before ``receiver`` returned (events published after it returns are
    received, even before the first ``recv``). With ``from_latest`` and no committed position,
    the receiver commits that starting position when it is opened, so a restart before the first
    ``ack`` does not skip what was published in between.

    With ``shards > 1`` the receiver delivers only the events whose key belongs to ``shard``
    (:func:`~statestream._record.shard_of`), and should read only those from the backend (a
    stored hash column, partitions): N shards must not cost N times the reads. Positions are kept
    per consumer name, as without shards.

    An ``ephemeral`` receiver keeps no committed position anywhere: it starts after the latest
    event (as ``from_latest``), ``ack`` does nothing, and it never holds back ``prune``. The
    engine uses one per process to wake ``wait_for`` callers on other processes' writes.

    ``prune(topics, before)`` deletes events of those topics created before ``before`` that
    every consumer with a committed position on the topic has acknowledged, and returns how
    many it deleted. A backend with its own retention (Kafka) may do nothing and return 0.
    """

    async def publish(self, topic: str, messages: Sequence[Message]) -> None: ...

    async def receiver(
        self,
        topic: str,
        name: str,
        *,
        from_latest: bool = False,
        poll_interval: float = 0.5,
        shard: int = 0,
        shards: int = 1,
        ephemeral: bool = False,
    ) -> EventReceiver: ...

    async def prune(self, topics: Sequence[str], before: datetime) -> int: ...

    async def forget(
        self, topic: str, keep: Collection[str], before: datetime
    ) -> builtins.list[str]:
        """Delete the committed positions on ``topic`` of consumer names not in ``keep`` that
        were last committed before ``before``, and return those names.

        A name the engine no longer uses (the shards of an old ``parallel_count``, a removed
        hook) would otherwise hold back :meth:`prune` for ever. Positions committed since
        ``before`` are kept, so a process of the previous release still running during a deploy
        keeps its place. A backend without committed positions of its own returns ``[]``.
        """
        ...

    async def close(self) -> None: ...


@runtime_checkable
class EventHistory(Protocol):
    """Optional capability of an :class:`EventStreamer`: the events it still retains for one
    key (a run's events, for its page in the web UI when the record store keeps no history).
    Not part of the check that ``Builder.build`` makes; Kafka does not have it.

    The SQL streamers read the topic index, which holds the key's hash, and the table only
    for the matches: the cost grows with the events retained on those topics (``prune``
    bounds them), not with the table. Conformance: the ``test_events_for_key_*`` tests of
    :class:`~statestream.adaptertest.EventStreamerContract` (skipped without the capability).
    """

    async def events_for_key(
        self, topics: Sequence[str], key: str, limit: int = 100
    ) -> builtins.list[Event]:
        """The retained events of ``topics`` whose key is ``key``, oldest first (by
        ``created_at``, then ID), at most ``limit`` of them: the oldest ``limit``."""
        ...


@runtime_checkable
class ConnectorSource(Protocol):
    """An outside stream a connector consumes: opens a receiver under a durable consumer name.

    :class:`statestream.StreamSource` adapts any topic of an :class:`EventStreamer`;
    :class:`statestream.adapters.kafka.KafkaSource` reads any Kafka topic.

    A source that can read one shard's part of its stream itself (a Kafka topic's partitions)
    says so with a ``shards_itself = True`` attribute: each connector shard then opens its
    receiver with ``receiver(name, shard=i, shards=n)`` and gets only its part, and the engine
    drops nothing by key. Every event of one key must then fall in one shard, in order.
    A source may also offer ``async handle(workflow, event)``, the handler
    ``Builder.add_connector`` uses when given none.
    """

    async def receiver(self, name: str) -> EventReceiver: ...


@runtime_checkable
class TimeoutStore(Protocol):
    """Durable timers, each bound to a run and to the version at which it entered the status.

    Invariants (checked by ``TimeoutStoreContract``):

    * A visit has at most one timer: ``create`` for a ``(workflow_name, run_id, status,
      run_version)`` that already has a timer (pending, claimed, completed or cancelled) returns
      that timer and stores nothing (a unique key in SQL stores).
    * ``claim(id, now, until)`` returns ``True`` for exactly one caller while the timer is pending
      and not claimed by a claim still in force (``claimed_until > now``); it sets
      ``claimed_until = until``. The poller claims a due timer before running the user's
      function, so two pollers never both run it; a claimant that dies leaves the claim to lapse.
    * ``defer(id, until)`` sets ``claimed_until = until`` of a pending timer (a retry after
      backoff, seen by every poller).
    * ``list_due(now)`` returns pending timers with ``expire_at <= now`` that are not claimed
      (``claimed_until`` unset or ``<= now``).
    * ``complete`` returns ``True`` only for the one call that completed a pending timeout.
    * ``cancel_for(workflow_name, run_id, status, below_version)`` cancels that run's pending
      timers at ``status`` whose ``run_version`` is below ``below_version`` (the run left the
      status at that version; a later visit's timer, made meanwhile, is kept).
    * ``prune(workflow_name, before)`` deletes completed and cancelled timers created before
      ``before`` and returns how many.
    * ``list_for_run(workflow_name, run_id)`` returns exactly the timers of ``list`` whose
      ``run_id`` is ``run_id``.
    """

    async def create(
        self,
        workflow_name: str,
        foreign_id: str,
        run_id: str,
        status: int,
        run_version: int,
        expire_at: datetime,
    ) -> TimeoutRecord: ...

    async def claim(self, timeout_id: int, now: datetime, until: datetime) -> bool: ...

    async def defer(self, timeout_id: int, until: datetime) -> None: ...

    async def complete(self, timeout_id: int) -> bool: ...

    async def cancel(self, timeout_id: int) -> None: ...

    async def cancel_for(
        self, workflow_name: str, run_id: str, status: int, below_version: int
    ) -> None: ...

    async def prune(self, workflow_name: str, before: datetime) -> int: ...

    async def list(self, workflow_name: str) -> list[TimeoutRecord]:
        """Pending (not completed, not cancelled) timeouts of the workflow, by ID."""
        ...

    async def list_for_run(self, workflow_name: str, run_id: str) -> builtins.list[TimeoutRecord]:
        """Pending timeouts of one run, by ID: an index lookup (the unique key on the visit
        starts with the workflow and the run), however many timers the workflow has."""
        ...

    async def list_due(
        self, workflow_name: str, status: int, now: datetime, limit: int = 100
    ) -> builtins.list[TimeoutRecord]:
        """Pending, unclaimed timeouts at ``status`` with ``expire_at <= now``, earliest first."""
        ...


@runtime_checkable
class Lease(Protocol):
    """Exclusive hold on a role, from ``RoleScheduler.acquire`` until released or lost.

    ``valid_until`` is the local deadline (a ``time.monotonic()`` value) up to which this process
    may still act under the lease: the time of the last successful acquire or renewal plus the
    lease's time to live, minus a safety margin, so that it passes before any other process can
    acquire the role. A holder whose event loop stalls past it (so that it could not renew) sees
    it passed when it wakes, and stops: the engine starts no step and writes no result after it.
    A lease that cannot expire by time (in-process schedulers) reports ``math.inf``.
    """

    @property
    def role(self) -> str: ...

    @property
    def valid_until(self) -> float: ...

    async def lost(self) -> None:
        """Return when the lease is lost (the holder must stop the role's work at once).

        A lease that cannot be lost waits forever.
        """
        ...

    async def release(self) -> None: ...


@runtime_checkable
class RoleScheduler(Protocol):
    """Lets at most one holder at a time, across all processes that share it, hold a role.

    A scheduler that also implements :class:`RoleMembers` lets the workers sharing it divide
    the roles fairly; without it the first worker to start takes every role.
    """

    async def acquire(self, role: str) -> Lease:
        """Wait until the role is held exclusively; cancellable while waiting."""
        ...


@runtime_checkable
class RoleMembers(Protocol):
    """Optional capability of a :class:`RoleScheduler`: who is alive, to divide the roles.

    Not part of the check that ``Builder.build`` makes of a scheduler. Each running instance of
    a workflow is a *member* of the *group* named after the workflow: it calls :meth:`members`
    every ``member_ttl / 3`` seconds with the number of roles it holds, and from the live
    members computes the same deal as every other member: which member holds which role, as
    evenly as they go and spread by kind (README, "Several workers"). A member whose calls
    stop (its process was killed, or cut off) drops out of every answer ``member_ttl``
    seconds after its last call, and the others take its roles over as its leases expire.

    A lease-row backend keeps one row per member, ``(group, member, held, expires_at)`` with
    ``(group, member)`` as its key, ``expires_at`` on the clock that its lease rows use;
    :meth:`members` is one transaction: upsert this member's row, delete the group's expired
    rows, select the rest. Conformance: the ``test_members_*`` tests of
    :class:`~statestream.adaptertest.RoleSchedulerContract`.
    """

    @property
    def member_ttl(self) -> float | None:
        """Seconds a member stays alive after its last :meth:`members` call; ``None`` turns the
        division off (the scheduler then behaves as one without this capability)."""
        ...

    async def members(self, group: str, member: str, held: int) -> Mapping[str, int]:
        """Record that ``member`` of ``group`` is alive for ``member_ttl`` more seconds and
        holds ``held`` roles; forget the group's members whose time ran out. Returns every live
        member of the group (``member`` included) with the ``held`` it last reported."""
        ...

    async def leave(self, group: str, member: str) -> None:
        """Forget ``member`` at once (it stopped cleanly); idempotent."""
        ...


@runtime_checkable
class Clock(Protocol):
    """Source of time for records, timers and lags. ``now()`` is timezone-aware (UTC)."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


@runtime_checkable
class Codec(Protocol[T]):
    """Turns a workflow's object into bytes and back."""

    def encode(self, obj: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...


#: The headers of work that has none (read-only, shared).
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Work:
    """One unit of engine work an :class:`Observer` hears about: an event handled by a
    background process (a step, a hook, a timer being set, a connector...), a due timeout
    fired, or a callback delivered.

    Attributes:
        workflow: the workflow's name.
        process: the process's name, as in ``Workflow.states()`` (``"paid-consumer-1-of-1"``,
            ``"paid-timeout-consumer"``...); ``"callback"`` for a callback.
        kind: ``"event"``, ``"timeout"`` or ``"callback"``.
        status: the status the work is about (the event's type, the timer's or the callback's
            status).
        run_id: the run; the event's key for connectors; ``""`` for a callback (it finds the
            latest run of ``foreign_id`` itself). For a connection (``Builder.connect``),
            ``status``, ``run_id`` and ``foreign_id`` are those of the other workflow's run.
        foreign_id: the run's foreign ID when known, else ``""``.
        headers: the event's headers (with the trace context an observer's
            :meth:`Observer.propagate` put there when the event was written); empty otherwise.
        event: the event, for ``kind == "event"``.

    A plain class with slots (one is made per event an observer hears about, on the hot
    path): treat it as read-only.
    """

    __slots__ = (
        "event",
        "foreign_id",
        "headers",
        "kind",
        "process",
        "run_id",
        "status",
        "workflow",
    )

    def __init__(
        self,
        workflow: str,
        process: str,
        kind: str,
        status: int,
        run_id: str,
        foreign_id: str = "",
        headers: Mapping[str, str] = _NO_HEADERS,
        event: Event | None = None,
    ) -> None:
        self.workflow = workflow
        self.process = process
        self.kind = kind
        self.status = status
        self.run_id = run_id
        self.foreign_id = foreign_id
        self.headers = headers
        self.event = event

    def __repr__(self) -> str:
        return (
            f"Work(workflow={self.workflow!r}, process={self.process!r}, kind={self.kind!r}, "
            f"status={self.status!r}, run_id={self.run_id!r}, foreign_id={self.foreign_id!r})"
        )


@runtime_checkable
class Observer(Protocol):
    """Hears the engine's moments, for metrics, tracing and logs (``Builder.build(observer=)``).

    Every method is synchronous and called inline on the event loop, on the engine's path: it
    must be cheap (hand slow work to a queue or a thread). An exception an observer raises is
    logged (once per method) and otherwise ignored: it never reaches the engine. Subclass
    :class:`~statestream.NullObserver` to implement only some methods, and combine several with
    :class:`~statestream.CompositeObserver`. Without an observer the engine makes none of these
    calls.
    """

    def work_started(self, work: Work) -> object:
        """``work`` starts (one attempt: a retried event starts again). Called in the task that
        does the work, so a tracer may make a span current here: everything the work does until
        :meth:`work_finished`, the user's function and the writes, runs inside it. Returns a
        token handed back to :meth:`work_finished` (anything; ``None`` is fine)."""
        ...

    def work_finished(
        self, work: Work, token: object, seconds: float, error: BaseException | None
    ) -> None:
        """``work`` ended after ``seconds`` (monotonic), with ``error`` if the attempt failed
        (it is then retried, or the run paused, as the error policy says)."""
        ...

    def event_skipped(self, workflow: str, process: str, event: Event | None, reason: str) -> None:
        """A process took ``event`` and left it: ``"record not found"``, ``"event record
        version lower than latest record version"``, ``"record stopped"``, ``"record status
        not in expected state"``, ``"filtered out"``, or ``"next value specified skip"`` (the
        user's function skipped; ``event`` is None when that was a timeout or a callback).
        A connection to another workflow (``Builder.connect``) also reports ``"already
        triggered"`` and ``"run in progress for '<foreign ID>'"`` (a Trigger not made),
        ``"record finished"`` and ``"run of '<foreign ID>' not at <STATUS>"`` (a Callback not
        delivered), and, for messages that are not the other workflow's arrivals, ``"not a run
        of ..."``, ``"not at ..."``, ``"not an arrival ..."``, ``"no record version ..."`` and
        ``"unable to unmarshal object: ..."``."""
        ...

    def lag(self, workflow: str, process: str, seconds: float, alert: bool) -> None:
        """A process took an event ``seconds`` after it was written (on the workflow's clock);
        ``alert`` when that is more than the process's ``lag_alert`` option. Sampled: each
        process reports its first event and then every 16th (a gauge's worth, without reading
        the clock per event); not called at all when the observer leaves it to
        :class:`~statestream.NullObserver`."""
        ...

    def record_written(self, previous: Record | None, record: Record) -> None:
        """This process stored ``record`` (``previous`` is what it replaced, ``None`` for a new
        run): run-state changes and status transitions alike."""
        ...

    def propagate(self, headers: dict[str, str]) -> None:
        """The headers of an event about to be written, in the writer's context: add the trace
        context (``traceparent``...) to them, and the work that handles the event receives it in
        :attr:`Work.headers`."""
        ...

    def lease_changed(self, workflow: str, role: str, held: bool) -> None:
        """This process gained (``held``) or lost or released a role."""
        ...

    def relay_batch(self, workflow: str, count: int, seconds: float, lag: float) -> None:
        """The outbox relay published and deleted ``count`` events in ``seconds``; the oldest
        had waited ``lag`` seconds (a backlog shows as a growing lag, and ``count`` at the
        relay's batch size)."""
        ...

    def process_failed(self, workflow: str, process: str, error: BaseException) -> None:
        """A background process stopped on an error; it backs off and starts again."""
        ...
