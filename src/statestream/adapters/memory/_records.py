"""The in-memory record store."""

from __future__ import annotations

import bisect
import builtins  # the stores' ``list`` methods shadow ``list`` in their class bodies
import dataclasses
import itertools
from collections.abc import Sequence

from ... import errors
from ..._core.clock import SystemClock
from ..._core.protocols import Clock
from ..._core.records import (
    Order,
    OutboxEvent,
    ParkedEvent,
    Record,
    RecordFilter,
    RunCounts,
    ScanPage,
)
from ..._core.runstate import RunState
from ._util import _check_window

__all__ = ["MemoryRecordStore"]


class MemoryRecordStore:
    """A :class:`~statestream.RecordStore` and :class:`~statestream.SnapshotStore` in dicts.

    Records, outbox events and parked events are stored as given (they are frozen), so
    timestamps are whatever the engine's clock put on them. Runs are listed in creation order
    (the order of the ``create`` calls); ``list(after=...)`` finds its starting point by
    bisection, so a page costs O(log n + page) however deep it is (plus the runs a filter skips).
    Nothing is ever deleted but outbox and parked events: the store grows with the runs.

    Args:
        clock: Kept for symmetry with the other memory adapters; the store itself never reads
            the time because every record already carries its timestamps.
        keep_snapshots: Keep every stored version of every run for :meth:`snapshots` (tests that
            look at a run's history want it). Off by default: it multiplies the memory a run
            costs by its number of writes.

    >>> store = MemoryRecordStore()
    """

    #: A lookup is a dict read in this process: the engine keeps no copies of the records it
    #: wrote to spare it (see ``RecordStore``).
    local_lookups = True

    def __init__(self, clock: Clock | None = None, keep_snapshots: bool = False) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._keep_snapshots = keep_snapshots
        self._records: dict[str, Record] = {}
        # Creation order: _order[seq] is the run created seq-th; _seq maps back. Each workflow's
        # runs are an ascending list of seqs, so "after this run" is a bisection.
        self._order: list[str] = []
        self._seq: dict[str, int] = {}
        self._by_workflow: dict[str, list[int]] = {}
        self._latest: dict[tuple[str, str], str] = {}
        # One dict per workflow, used as an ordered set: oldest first, O(1) delete.
        self._outbox: dict[str, dict[str, OutboxEvent]] = {}
        self._parked: dict[str, ParkedEvent] = {}
        self._snapshots: dict[str, list[Record]] = {}
        # Per workflow: runs at each status, runs in each run state (for count_runs).
        self._statuses: dict[str, dict[int, int]] = {}
        self._run_states: dict[str, dict[RunState, int]] = {}

    async def create(self, record: Record, event: OutboxEvent) -> None:
        """Insert a new run together with its outbox event.

        Args:
            record: The run's first version.
            event: The outbox event announcing it.

        Raises:
            WorkflowInProgress: The latest run of ``(workflow_name, foreign_id)`` is not finished.
            VersionConflict: A run with this run ID already exists (expected version 0).
        """
        run_id = record.run_id
        records = self._records
        existing = records.get(run_id)
        if existing is not None:
            raise errors.VersionConflict(run_id, 0, existing.version)
        key = (record.workflow_name, record.foreign_id)
        latest_id = self._latest.get(key)
        if latest_id is not None:
            latest = records[latest_id]
            if not latest.run_state.finished:
                raise errors.WorkflowInProgress(
                    f"workflow {record.workflow_name!r} already has run {latest_id} "
                    f"for foreign ID {record.foreign_id!r} in state {latest.run_state.label}"
                )
        # No await from the checks above to the end: this is the atomic part.
        records[run_id] = record
        self._latest[key] = run_id
        seq = self._seq[run_id] = len(self._order)
        self._order.append(run_id)
        seqs = self._by_workflow.get(record.workflow_name)
        if seqs is None:
            self._by_workflow[record.workflow_name] = [seq]
        else:
            seqs.append(seq)
        self._add_outbox(event)
        self._count(record, 1)
        if self._keep_snapshots:
            self._snapshots[run_id] = [record]

    async def update(self, record: Record, event: OutboxEvent) -> None:
        """Store a new version of a run together with its outbox event (compare-and-set).

        Args:
            record: The new version; its ``version`` must be the stored version plus one.
            event: The outbox event announcing it.

        Raises:
            RecordNotFound: No run with ``record.run_id``.
            VersionConflict: The stored version is not ``record.version - 1``; nothing is written.
        """
        run_id = record.run_id
        stored = self._records.get(run_id)
        if stored is None:
            raise errors.RecordNotFound(f"no run with ID {run_id!r}")
        if stored.version != record.version - 1:
            raise errors.VersionConflict(run_id, record.version - 1, stored.version)
        self._records[run_id] = record
        self._add_outbox(event)
        if stored.status != record.status or stored.run_state is not record.run_state:
            self._count(stored, -1)
            self._count(record, 1)
        if self._keep_snapshots:
            self._snapshots[run_id].append(record)

    def _count(self, record: Record, delta: int) -> None:
        name = record.workflow_name
        statuses = self._statuses.get(name)
        if statuses is None:
            statuses = self._statuses[name] = {}
            self._run_states[name] = {}
        run_states = self._run_states[name]
        status, state = record.status, record.run_state
        n = statuses.get(status, 0) + delta
        if n:
            statuses[status] = n
        else:
            del statuses[status]
        n = run_states.get(state, 0) + delta
        if n:
            run_states[state] = n
        else:
            del run_states[state]

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
        """A page of a status filter that examines at most ``scan_limit`` runs
        (:class:`~statestream.ScanLister`): ``list`` without the statuses, picked here."""
        ScanPage.check(limit, scan_limit)
        flt = dataclasses.replace(filter or RecordFilter(), statuses=())
        rows = await self.list(
            workflow_name, limit=scan_limit, order=order, filter=flt, after=after
        )
        statuses = filter.statuses if filter is not None else ()
        return ScanPage.of(rows, statuses, limit, scan_limit)

    async def count_runs(self, workflow_name: str) -> RunCounts:
        """The workflow's runs by status and by run state (:class:`~statestream.RunCounter`):
        kept as counters by every write, so O(statuses) to read."""
        return RunCounts(
            dict(self._statuses.get(workflow_name, {})),
            dict(self._run_states.get(workflow_name, {})),
        )

    def _add_outbox(self, event: OutboxEvent) -> None:
        box = self._outbox.get(event.workflow_name)
        if box is None:
            self._outbox[event.workflow_name] = {event.id: event}
        else:
            box[event.id] = event

    async def lookup(self, run_id: str) -> Record:
        """The run with this ID.

        Raises:
            RecordNotFound: No run with this ID.
        """
        record = self._records.get(run_id)
        if record is None:
            raise errors.RecordNotFound(f"no run with ID {run_id!r}")
        return record

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        """The most recently created run of the foreign ID.

        Raises:
            RecordNotFound: The workflow has no run for this foreign ID.
        """
        run_id = self._latest.get((workflow_name, foreign_id))
        if run_id is None:
            raise errors.RecordNotFound(
                f"workflow {workflow_name!r} has no run for foreign ID {foreign_id!r}"
            )
        return self._records[run_id]

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
        """Runs in creation order.

        Args:
            workflow_name: Only runs of this workflow; ``None`` lists every workflow.
            offset: Rows to skip, counted after filtering and ordering, from ``after``.
            limit: At most this many rows.
            order: ``Order.DESC`` lists the newest run first.
            filter: Only runs that match it.
            after: A run ID: start after that run in ``order`` (the run is only a position: it
                need not match the filter or the workflow).

        Raises:
            InvalidInput: ``offset`` or ``limit`` is negative.
            RecordNotFound: ``after`` is not the ID of a run.
        """
        _check_window(offset, limit)
        seqs: Sequence[int] = (
            range(len(self._order))
            if workflow_name is None
            else self._by_workflow.get(workflow_name, [])
        )
        ascending = order is Order.ASC
        if filter is not None and (
            filter.created_after is not None or filter.created_before is not None
        ):
            return self._list_timed(seqs, offset, limit, ascending, filter, after)
        if after is None:
            start = 0 if ascending else len(seqs)
        else:
            seq = self._seq.get(after)
            if seq is None:
                raise errors.RecordNotFound(f"no run with ID {after!r} to list after")
            start = bisect.bisect_right(seqs, seq) if ascending else bisect.bisect_left(seqs, seq)
        positions = range(start, len(seqs)) if ascending else range(start - 1, -1, -1)
        records, run_ids = self._records, self._order
        rows = (records[run_ids[seqs[i]]] for i in positions)
        if filter is not None:
            rows = (r for r in rows if filter.matches(r))
        return list(itertools.islice(rows, offset, offset + limit))

    def _list_timed(
        self,
        seqs: Sequence[int],
        offset: int,
        limit: int,
        ascending: bool,
        filter: RecordFilter,
        after: str | None,
    ) -> builtins.list[Record]:
        """A time-bounded list: in order of ``(created_at, creation)``, as the SQL stores read
        their index on creation time; O(n log n) in the workflow's runs."""
        records, run_ids = self._records, self._order
        keyed = sorted(
            ((r.created_at, seq), r) for seq in seqs if filter.matches(r := records[run_ids[seq]])
        )
        if not ascending:
            keyed.reverse()
        if after is not None:
            seq = self._seq.get(after)
            if seq is None:
                raise errors.RecordNotFound(f"no run with ID {after!r} to list after")
            cursor = (records[after].created_at, seq)
            keyed = [kr for kr in keyed if (kr[0] > cursor if ascending else kr[0] < cursor)]
        return [r for _, r in keyed[offset : offset + limit]]

    async def list_outbox(self, workflow_name: str, limit: int) -> builtins.list[OutboxEvent]:
        """Pending outbox events of the workflow, oldest first, at most ``limit``."""
        _check_window(0, limit)
        box = self._outbox.get(workflow_name)
        if not box:
            return []
        return list(itertools.islice(box.values(), limit))

    async def delete_outbox(self, ids: Sequence[str]) -> None:
        """Delete outbox events; unknown or already deleted IDs are ignored."""
        boxes = self._outbox.values()
        for event_id in ids:
            for box in boxes:
                if box.pop(event_id, None) is not None:
                    break

    async def park(self, parked: ParkedEvent) -> None:
        """Store a parked event, replacing the entry with the same ID (all of its fields)."""
        self._parked[parked.id] = parked

    async def list_parked(
        self,
        workflow_name: str,
        *,
        consumer: str | None = None,
        retry_requested: bool | None = None,
        limit: int = 100,
    ) -> builtins.list[ParkedEvent]:
        """Parked events of the workflow by ``parked_at``, oldest first, at most ``limit``.

        Args:
            workflow_name: The workflow whose consumers parked them.
            consumer: Only those of this consumer.
            retry_requested: Only those whose flag has this value.
            limit: At most this many.

        Raises:
            InvalidInput: ``limit`` is negative.
        """
        _check_window(0, limit)
        rows = [
            p
            for p in self._parked.values()
            if p.workflow_name == workflow_name
            and (consumer is None or p.consumer == consumer)
            and (retry_requested is None or p.retry_requested is retry_requested)
        ]
        rows.sort(key=lambda p: p.parked_at)  # stable: ties stay in the order first parked
        return rows[:limit]

    async def retry_parked(self, parked_id: str) -> None:
        """Set ``retry_requested`` of a parked event.

        Raises:
            RecordNotFound: No parked event has this ID.
        """
        parked = self._parked.get(parked_id)
        if parked is None:
            raise errors.RecordNotFound(f"no parked event with ID {parked_id!r}")
        self._parked[parked_id] = dataclasses.replace(parked, retry_requested=True)

    async def delete_parked(self, parked_id: str) -> None:
        """Delete a parked event; an unknown ID is ignored."""
        self._parked.pop(parked_id, None)

    def snapshots(self, run_id: str) -> builtins.list[Record]:
        """Every stored version of the run, oldest first (empty if ``keep_snapshots=False``)."""
        return list(self._snapshots.get(run_id, ()))
