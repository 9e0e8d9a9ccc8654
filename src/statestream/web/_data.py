"""What the pages show, read through the public API only (no SQL is ever built from input)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .._core.protocols import EventHistory, RunCounter, ScanLister, SnapshotStore
from .._core.records import (
    Event,
    Order,
    ParkedEvent,
    Record,
    RecordFilter,
    ScanPage,
    TimeoutRecord,
    delete_topic,
    run_state_change_topic,
    status_topic,
)
from .._core.runstate import RunState
from .._workflow import Workflow
from ..errors import InvalidInput, RecordNotFound

__all__ = [
    "AnyWorkflow",
    "Counts",
    "Listing",
    "RunQuery",
    "actions_for",
    "fmt_time",
    "graph_source",
    "list_runs",
    "object_text",
    "parse_query",
    "run_details",
    "status_name",
]

AnyWorkflow = Workflow[Any, Any]

MAX_VALUE = 256
MAX_QUERY = 4096
MAX_LIMIT = 200
#: The most retained events a run's page shows (the oldest ones).
MAX_EVENTS = 200
COUNT_CAP = 10_000
#: The most runs one page of a status filter examines (no index has the status: every
#: transition changes it). A page that examined this many without filling up is partial: it
#: shows what it found and a cursor to look further.
SCAN_ROWS = 50_000
#: The first chunk of such a scan (it doubles up to ``_SCAN_CHUNK_MAX``).
_SCAN_CHUNK = 200
_SCAN_CHUNK_MAX = 2_000
_ID = re.compile(r"^[\x21-\x7e]{1,200}$")  # run IDs and cursors: printable ASCII, no spaces

#: The run-state changes the UI offers, with the state each leads to.
ACTIONS: dict[str, RunState] = {
    "pause": RunState.PAUSED,
    "resume": RunState.RUNNING,
    "cancel": RunState.CANCELLED,
    "delete": RunState.REQUESTED_DATA_DELETED,
}


def actions_for(state: RunState) -> list[str]:
    """The actions the run-state table allows from ``state``: resume only a paused run, cancel
    only a running or paused one (an Initiated run must be paused first)."""
    out = [name for name, target in ACTIONS.items() if state.can_become(target)]
    if state is not RunState.PAUSED and "resume" in out:
        out.remove("resume")  # Initiated -> Running is the engine's move, not an operator's
    return out


def status_name(wf: AnyWorkflow, status: int) -> str:
    for member in wf.graph:
        if int(member) == status:
            return str(member.name)
    return str(status)


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def check_id(value: str, what: str) -> str:
    if not _ID.match(value):
        raise InvalidInput(f"{what} must be 1 to 200 printable characters without spaces")
    return value


def _time(value: str, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(
            f"{what} must be a date or time in ISO 8601 (2026-12-01 or 2026-12-01T13:15)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@dataclass(frozen=True)
class RunQuery:
    """The filters and the page of the runs list, checked."""

    workflow: AnyWorkflow
    statuses: tuple[int, ...] = ()
    states: tuple[RunState, ...] = ()
    foreign_id: str = ""
    created_from: datetime | None = None
    created_to: datetime | None = None
    after: str = ""
    before: str = ""
    limit: int = 50
    #: The query parameters as given (validated), to build links and the JSON URL.
    params: dict[str, str] = field(default_factory=dict)

    def record_filter(self) -> RecordFilter:
        return RecordFilter(
            foreign_ids=(self.foreign_id,) if self.foreign_id else (),
            statuses=self.statuses,
            run_states=self.states,
            created_after=self.created_from,
            created_before=self.created_to,
        )


def pick_workflow(workflows: Mapping[str, AnyWorkflow], name: str | None) -> AnyWorkflow:
    if not name:
        return next(iter(workflows.values()))
    if len(name) > MAX_VALUE or name not in workflows:
        raise RecordNotFound(f"no workflow {name[:80]!r} here")
    return workflows[name]


def parse_query(workflows: Mapping[str, AnyWorkflow], items: Sequence[tuple[str, str]]) -> RunQuery:
    """Check the runs list's query parameters; InvalidInput (or RecordNotFound) when wrong."""
    values: dict[str, str] = {}
    for key, value in items:
        if len(value) > MAX_VALUE:
            raise InvalidInput(f"query parameter {key[:40]!r} is longer than {MAX_VALUE}")
        if key in values and value != values[key]:
            raise InvalidInput(f"query parameter {key[:40]!r} is given twice")
        values[key] = value
    wf = pick_workflow(workflows, values.get("workflow"))
    statuses: tuple[int, ...] = ()
    if status := values.get("status", "").strip():
        for member in wf.graph:
            if status.upper() == member.name or status == str(int(member)):
                statuses = (int(member),)
                break
        else:
            raise InvalidInput(f"workflow {wf.name!r} has no status {status[:80]!r}")
    states: tuple[RunState, ...] = ()
    if state := values.get("state", "").strip():
        wanted = state.upper().replace(" ", "_").replace("-", "_")
        found = [s for s in RunState if s.valid and (s.name == wanted or str(int(s)) == wanted)]
        if not found:
            raise InvalidInput(f"no run state {state[:80]!r}")
        states = (found[0],)
    limit = 50
    if text := values.get("limit", "").strip():
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(text)
    after = values.get("after", "")
    before = values.get("before", "")
    if after and before:
        raise InvalidInput("give after= or before=, not both")
    for cursor, what in ((after, "after"), (before, "before")):
        if cursor:
            check_id(cursor, what)
    start = _time(values["from"], "from") if values.get("from", "").strip() else None
    end = _time(values["to"], "to") if values.get("to", "").strip() else None
    if start is not None and end is not None and start >= end:
        raise InvalidInput("from must be earlier than to")
    foreign_id = values.get("foreign_id", "")
    if foreign_id and not foreign_id.isprintable():
        raise InvalidInput("foreign_id must be printable text")
    keep = ("workflow", "status", "state", "foreign_id", "from", "to", "limit")
    params = {k: values[k] for k in keep if values.get(k)}
    return RunQuery(wf, statuses, states, foreign_id, start, end, after, before, limit, params)


@dataclass(frozen=True)
class Listing:
    records: list[Record]
    #: Cursor of the next (older) page, "" at the end; of the previous (newer) page, "" at top.
    older: str
    newer: str
    #: True when the page stopped after examining :data:`SCAN_ROWS` runs before it filled up:
    #: the runs past its cursor (``older``, or ``newer`` for a ``before=`` page) are unseen.
    partial: bool = False
    #: How many runs a status filter examined for this page (0: the store filtered alone).
    scanned: int = 0


async def list_runs(query: RunQuery) -> Listing:
    """One page, newest first, by key: ``after`` (older than) or ``before`` (newer than)."""
    try:
        if query.statuses:
            return await _scan_runs(query)
        return await _list_runs(query)
    except RecordNotFound:
        raise InvalidInput("the page cursor names no run of this workflow") from None


async def _list_runs(query: RunQuery) -> Listing:
    wf = query.workflow
    flt = query.record_filter()
    if query.before:
        rows = await wf.store.list(
            wf.name, limit=query.limit + 1, order=Order.ASC, filter=flt, after=query.before
        )
        more_newer = len(rows) > query.limit
        records = list(reversed(rows[: query.limit]))
        return Listing(
            records,
            records[-1].run_id if records else "",
            records[0].run_id if records and more_newer else "",
        )
    rows = await wf.store.list(
        wf.name,
        limit=query.limit + 1,
        order=Order.DESC,
        filter=flt,
        after=query.after or None,
    )
    records = rows[: query.limit]
    older = records[-1].run_id if len(rows) > query.limit else ""
    newer = records[0].run_id if query.after and records else ""
    return Listing(records, older, newer)


async def _scan_runs(query: RunQuery) -> Listing:
    """A status filter, bounded: no index has the status (every transition changes it), so a
    page examines at most :data:`SCAN_ROWS` runs (by key, with the other, indexed filters) and
    keeps those at the status. A page that examined that many before it filled up is partial:
    its cursor goes on from the last run examined. The store does it where it can
    (:class:`~statestream.ScanLister`); else the runs are listed here in chunks."""
    wf = query.workflow
    budget = SCAN_ROWS
    order = Order.ASC if query.before else Order.DESC
    cursor = query.before or query.after or None
    if isinstance(wf.store, ScanLister):
        page = await wf.store.list_scan(
            wf.name,
            limit=query.limit + 1,
            scan_limit=budget,
            order=order,
            filter=query.record_filter(),
            after=cursor,
        )
    else:
        page = await _scan_by_list(query, budget, order, cursor)
    found = list(page.records)
    more = len(found) > query.limit
    # Stopped by the budget before the page filled: the runs past the cursor are unseen.
    partial = bool(page.resume) and len(found) < query.limit
    go_on = "" if more else page.resume
    records = found[: query.limit]
    scanned = budget if partial else 0
    if query.before:
        records.reverse()
        newer = records[0].run_id if more and records else go_on
        return Listing(records, records[-1].run_id if records else "", newer, partial, scanned)
    older = records[-1].run_id if more else go_on
    newer = records[0].run_id if query.after and records else ""
    return Listing(records, older, newer, partial, scanned)


async def _scan_by_list(query: RunQuery, budget: int, order: Order, cursor: str | None) -> ScanPage:
    """``ScanLister.list_scan`` through ``RecordStore.list``: chunks that double in size."""
    wf = query.workflow
    flt = replace(query.record_filter(), statuses=())
    wanted = set(query.statuses)
    found: list[Record] = []
    scanned, chunk = 0, _SCAN_CHUNK
    while scanned < budget:
        size = min(chunk, budget - scanned)
        rows = await wf.store.list(wf.name, limit=size, order=order, filter=flt, after=cursor)
        for row in rows:
            scanned += 1
            cursor = row.run_id
            if row.status in wanted:
                found.append(row)
                if len(found) > query.limit:
                    return ScanPage(found, cursor)
        if len(rows) < size:
            return ScanPage(found, "")
        chunk = min(2 * chunk, _SCAN_CHUNK_MAX)
    return ScanPage(found, cursor or "")


def object_text(data: bytes, limit: int = 200_000) -> tuple[str, bool]:
    """The object as pretty JSON (or a hex dump when it is not JSON); True when JSON."""
    try:
        text = json.dumps(json.loads(data), indent=2, ensure_ascii=False, sort_keys=False)
        ok = True
    except (ValueError, UnicodeDecodeError):
        text = f"({len(data)} bytes, not JSON)\n" + data[:4096].hex(" ", 16)
        ok = False
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit} more characters not shown)"
    return text, ok


@dataclass
class Details:
    record: Record
    history: list[Record] | None  # None: the store keeps no history
    timeouts: list[TimeoutRecord]
    parked: list[ParkedEvent]
    #: Without a history: the run's events the streamer still retains (None: it cannot say)
    events: list[Event] | None = None


async def find_run(workflows: Mapping[str, AnyWorkflow], run_id: str) -> tuple[AnyWorkflow, Record]:
    check_id(run_id, "run ID")
    seen: set[int] = set()
    for wf in workflows.values():
        if id(wf.store) in seen:
            continue
        seen.add(id(wf.store))
        try:
            record = await wf.store.lookup(run_id)
        except RecordNotFound:
            continue
        owner = workflows.get(record.workflow_name)
        if owner is not None:
            return owner, record
    raise RecordNotFound(f"no run {run_id} in the workflows shown here")


async def run_details(wf: AnyWorkflow, record: Record) -> Details:
    history: list[Record] | None = None
    if isinstance(wf.store, SnapshotStore):
        # (an empty history: a store that could keep one but does not, as MemoryRecordStore
        # without keep_snapshots)
        history = [
            r for r in wf.store.snapshots(record.run_id) if r.run_id == record.run_id
        ] or None
    timeouts: list[TimeoutRecord] = []
    if wf.timeout_store is not None:
        timeouts = await wf.timeout_store.list_for_run(wf.name, record.run_id)
    parked = [p for p in await wf.parked(limit=1000) if p.event.key == record.run_id]
    events: list[Event] | None = None
    if history is None and isinstance(wf.streamer, EventHistory):
        events = await wf.streamer.events_for_key(run_topics(wf), record.run_id, MAX_EVENTS)
    return Details(record, history, timeouts, parked, events)


def run_topics(wf: AnyWorkflow) -> list[str]:
    """Every topic the events of a run of ``wf`` go to (``topic_for``): one per status, the
    run-state changes, the data deletions."""
    return [
        *(status_topic(wf.name, int(s)) for s in wf.graph),
        run_state_change_topic(wf.name),
        delete_topic(wf.name),
    ]


def run_json(wf: AnyWorkflow, record: Record) -> dict[str, Any]:
    return {
        "workflow": record.workflow_name,
        "run_id": record.run_id,
        "foreign_id": record.foreign_id,
        "status": record.status,
        "status_name": status_name(wf, record.status),
        "run_state": record.run_state.label,
        "run_state_key": record.run_state.name.lower(),
        "reason": record.run_state_reason,
        "version": record.version,
        "created_at": fmt_time(record.created_at),
        "updated_at": fmt_time(record.updated_at),
        "actions": actions_for(record.run_state),
    }


class Counts:
    """Runs at each status: ``RunCounter.count_runs`` where the store has it (exact, one pass
    over the workflow's runs in the store), else counted through ``RecordStore.list`` up to
    :data:`COUNT_CAP` per status; cached for a few seconds, or ten times as long as counting
    took, so that polling pages do not repeat the work."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        #: workflow -> (valid until, counts)
        self._cache: dict[str, tuple[float, dict[int, int]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: workflow -> whether its counts are exact (from the store) or capped
        self.exact: dict[str, bool] = {}

    async def get(self, wf: AnyWorkflow) -> dict[int, int]:
        lock = self._locks.setdefault(wf.name, asyncio.Lock())
        async with lock:
            hit = self._cache.get(wf.name)
            if hit is not None and time.monotonic() < hit[0]:
                return hit[1]
            started = time.monotonic()
            store = wf.store
            exact = isinstance(store, RunCounter)
            if isinstance(store, RunCounter):
                found = (await store.count_runs(wf.name)).statuses
                counts = {int(s): found.get(int(s), 0) for s in wf.graph}
            else:
                counts = {int(s): await self._count(wf, int(s)) for s in wf.graph}
            self.exact[wf.name] = exact
            took = time.monotonic() - started
            # A slow count (a big store) is repeated at most once per ten times its duration.
            self._cache[wf.name] = (time.monotonic() + max(self.ttl, 10 * took), counts)
            return counts

    @staticmethod
    async def _count(wf: AnyWorkflow, status: int) -> int:
        flt = RecordFilter(statuses=(status,))
        total, after = 0, None
        while total <= COUNT_CAP:
            rows = await wf.store.list(wf.name, limit=1000, filter=flt, after=after)
            total += len(rows)
            if len(rows) < 1000:
                break
            after = rows[-1].run_id
        return total


def count_text(count: int, exact: bool = False) -> str:
    return f"{COUNT_CAP:,}+" if count > COUNT_CAP and not exact else f"{count:,}"


_NODE = re.compile(r"^\t(s_?\d+): (.*)$")


def graph_source(wf: AnyWorkflow, counts: Mapping[int, int], exact: bool = False) -> str:
    """``Workflow.mermaid()`` without its fence, each status labelled with its count of runs."""
    lines = wf.mermaid().strip().splitlines()
    if lines and lines[0].startswith("```"):
        lines = lines[1:]
    if lines and lines[-1].startswith("```"):
        lines = lines[:-1]
    out = []
    for line in lines:
        match = _NODE.match(line)
        if match:
            node = match.group(1)
            value = int(node[1:].replace("_", "-"))
            label = re.sub(r"[^A-Za-z0-9_ .-]", "", match.group(2)) or node
            line = f"\t{node}: {label} ({count_text(counts.get(value, 0), exact)})"
        out.append(line)
    return "\n".join(out) + "\n"
