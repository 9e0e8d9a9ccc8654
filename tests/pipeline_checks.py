"""What the fault tests check after a batch of pipeline runs, through the adapters' public API
(so the same checks hold on every backend): every run completed, every stored transition applied
once (the record's version and the events the writes published), every step's side effect at
least once, and exactly once where no killed process touched it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from apps import pipeline
from statestream import Event, RunState, run_state_change_topic, status_topic
from statestream.errors import RecordNotFound

STEP_NAMES = [name for _, name, _ in pipeline.STEPS]


async def trigger_batch(wf: Any, count: int, chunk: int = 200) -> list[str]:
    """Trigger ``count`` runs (``chunk`` at a time) and return their run IDs."""
    run_ids: list[str] = []
    for start in range(0, count, chunk):
        ids = range(start, min(count, start + chunk))
        run_ids.extend(await asyncio.gather(*(wf.trigger(f"job-{i}") for i in ids)))
    return run_ids


async def pending_runs(store: Any, run_ids: Iterable[str]) -> list[str]:
    """The runs of ``run_ids`` not yet completed."""
    pending = []
    for run_id in run_ids:
        try:
            record = await store.lookup(run_id)
        except RecordNotFound:
            pending.append(run_id)
            continue
        if record.run_state is not RunState.COMPLETED:
            pending.append(run_id)
    return pending


class Completion:
    """Polls the store until every run completed, looking up only the ones still pending."""

    def __init__(self, store: Any, run_ids: list[str]) -> None:
        self.store = store
        self.pending = list(run_ids)

    async def done(self) -> bool:
        self.pending = await pending_runs(self.store, self.pending)
        return not self.pending

    async def describe(self, limit: int = 10) -> str:
        """The runs still pending (at most ``limit``): status, run state and version."""
        lines = [f"{len(self.pending)} runs pending; the first ones:"]
        for run_id in self.pending[:limit]:
            try:
                r = await self.store.lookup(run_id)
            except RecordNotFound:
                lines.append(f"  {run_id}: not found")
                continue
            lines.append(f"  {run_id} ({r.foreign_id}): {r.status!r} {r.run_state!r} v{r.version}")
        return "\n".join(lines)


async def check_records(store: Any, run_ids: list[str]) -> None:
    """Every run is Completed at DONE, at the version of one write per transition."""
    bad = []
    for run_id in run_ids:
        record = await store.lookup(run_id)
        state = (record.run_state, record.status, record.version)
        if state != (RunState.COMPLETED, pipeline.Status.DONE, pipeline.FINAL_VERSION):
            bad.append((run_id, *state))
    assert not bad, (
        f"{len(bad)} runs are not Completed at DONE, version {pipeline.FINAL_VERSION}: {bad[:5]}"
    )


async def read_all_events(
    streamer: Any, expected: dict[str, int], quiet: float = 0.5, timeout: float = 30.0
) -> list[Event]:
    """Every retained event of the topics in ``expected`` (topic -> how many to wait for), read
    by a fresh consumer name that never acknowledges; once the expected number has arrived, it
    goes on reading until nothing more comes for ``quiet`` seconds (to catch duplicates)."""
    events: list[Event] = []
    name = f"verify-{uuid.uuid4().hex[:8]}"
    for topic, want in expected.items():
        receiver = await streamer.receiver(topic, name, poll_interval=0.05)
        got: list[Event] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                wait = quiet if len(got) >= want else max(0.05, deadline - time.monotonic())
                try:
                    batch = await asyncio.wait_for(receiver.recv(1000), wait)
                except TimeoutError:
                    break
                got.extend(batch)
                if time.monotonic() > deadline and len(got) < want:
                    break
        finally:
            await receiver.close()
        events.extend(got)
    return events


def expected_topics(runs: int) -> dict[str, int]:
    """Where each write of a run publishes its event: one topic per status it waits at, then
    the run-state-change topic for the write that completes it."""
    topics = {status_topic(pipeline.WORKFLOW, status): runs for status, _, _ in pipeline.STEPS}
    topics[run_state_change_topic(pipeline.WORKFLOW)] = runs
    return topics


async def check_transitions(
    streamer: Any, run_ids: list[str], *, republished: bool = False
) -> dict[str, int]:
    """Each run's stored writes published exactly one event each: versions 1..FINAL_VERSION,
    none repeated, none missing (a transition applied twice would show as a repeated version
    or a later one).

    ``republished``: the events went through the store's outbox, whose relay publishes at least
    once (a relay killed between publishing a batch and deleting it publishes it again). An
    event may then be on its topic twice, but only as the same event, published again: same
    key, version, headers, time and data (two writes of one version would differ, in their time
    at least). Returns ``{"republished": n}``, the events seen more than once."""
    events = await read_all_events(streamer, expected_topics(len(run_ids)))
    wanted = set(run_ids)
    by_run: dict[str, list[int]] = {}
    seen: dict[tuple[str, str, int], tuple[Any, ...]] = {}
    differing: list[tuple[str, int]] = []
    repeats = 0
    for event in events:
        run_id = event.headers.get("run_id", event.key)
        if run_id not in wanted:
            continue
        version = int(event.headers["record_version"])
        if republished:
            identity = (event.key, event.type, dict(event.headers), event.created_at, event.data)
            first = seen.setdefault((event.topic, run_id, version), identity)
            if first is not identity:
                repeats += 1
                if first != identity:
                    differing.append((run_id, version))
                continue
        by_run.setdefault(run_id, []).append(version)
    full = list(range(1, pipeline.FINAL_VERSION + 1))
    bad = {r: sorted(v) for r, v in by_run.items() if sorted(v) != full}
    missing = wanted - set(by_run)
    assert not missing, f"{len(missing)} runs published no event at all: {sorted(missing)[:5]}"
    assert not differing, (
        f"{len(differing)} (run, version) pairs have two different events: {differing[:5]}"
    )
    assert not bad, (
        f"{len(bad)} runs' events are not one per version {full}: {list(bad.items())[:5]}"
    )
    return {"republished": repeats}


def check_effects(
    effects: list[tuple[str, str, int]], run_ids: list[str], killed: Iterable[int] = ()
) -> dict[str, Any]:
    """Each step's side effect (keyed by its visit's idempotency key) happened at least once;
    exactly once for the keys no killed process recorded. Returns figures for the report."""
    killed = set(killed)
    expected = {
        (f"{run_id}-{version}", step)
        for run_id in run_ids
        for version, step in enumerate(STEP_NAMES, start=1)
    }
    counts = Counter((key, step) for key, step, _ in effects)
    unexpected = set(counts) - expected
    assert not unexpected, (
        f"{len(unexpected)} effects at a key/step no transition has: {sorted(unexpected)[:5]}"
    )
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} step effects never happened: {sorted(missing)[:5]}"
    touched_by_killed = {(key, step) for key, step, pid in effects if pid in killed}
    repeated_elsewhere = {k: n for k, n in counts.items() if n > 1 and k not in touched_by_killed}
    assert not repeated_elsewhere, (
        f"{len(repeated_elsewhere)} effects no killed worker touched happened more than once: "
        f"{list(repeated_elsewhere.items())[:5]}"
    )
    by_pid = Counter(pid for _, _, pid in effects)
    return {
        "effects": len(effects),
        "effects_by_pid": dict(by_pid),
        "touched_by_killed": len(touched_by_killed),
        "repeated_after_kill": sum(1 for k in touched_by_killed if counts[k] > 1),
    }
