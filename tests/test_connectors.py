"""Connectors: consuming an outside stream to trigger or move runs (issue "Time and the outside
world").

The outside stream is a topic of a separate :class:`MemoryStreamer`, read through
:class:`StreamSource`. luno/workflow's sharded connectors drop 25-40% of the events; the first
tests here count every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

import pytest

from helpers import eventually, settle
from statestream import (
    Builder,
    CallbackOutcome,
    ConnectorSource,
    Event,
    Message,
    NullObserver,
    Run,
    RunState,
    RunStopped,
    StreamSource,
    Trigger,
    Workflow,
    WorkflowInProgress,
    errors,
)
from statestream._engine.dispatch import shard_of
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
from statestream.testing import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOPIC = "psp-events"


class S(IntEnum):
    START = 1
    WAITING = 2
    PAID = 3
    FAILED = 4


@dataclass
class Payment:
    amount: int = 0


async def to_waiting(run: Run[Payment, S]) -> S:
    return S.WAITING


async def settle_payment(run: Run[Payment, S], payload: bytes) -> S:
    return S.PAID if payload == b"ok" else S.FAILED


Handler = Callable[[Workflow[Payment, S], Event], Any]


@dataclass
class Env:
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    outside: MemoryStreamer = field(default_factory=MemoryStreamer)  # the outside world
    streamer: MemoryStreamer = field(default_factory=MemoryStreamer)
    store: MemoryRecordStore = field(default_factory=MemoryRecordStore)
    scheduler: MemoryRoleScheduler = field(default_factory=MemoryRoleScheduler)

    def builder(self, handler: Handler, *, source: Any = None, **options: Any) -> Builder[Any, S]:
        b = Builder("payments", Payment, S)
        b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.01)
        b.outbox(polling_frequency=0.01, error_backoff=0.01)
        b.add_step(S.START, to_waiting, S.WAITING)
        b.add_callback(S.WAITING, settle_payment, S.PAID, S.FAILED)
        b.add_connector(
            "psp",
            source or StreamSource(self.outside, TOPIC, poll_interval=0.01),
            handler,
            **options,
        )
        return b

    def build(self, b: Builder[Any, S]) -> Workflow[Payment, S]:
        return b.build(
            self.streamer, self.store, self.scheduler, clock=self.clock, pause_retry=None
        )

    async def publish(self, *events: tuple[str, bytes]) -> None:
        messages = [
            Message(key, 0, {"source": "psp"}, self.clock.now(), data) for key, data in events
        ]
        await self.outside.publish(TOPIC, messages)


# ------------------------------------------------------------------------------ no event lost


@pytest.mark.parametrize("parallel_count", [1, 2, 5])
async def test_sharded_connector_handles_every_event_exactly_once(parallel_count: int) -> None:
    # Given 1000 outside events over 37 keys, and a handler that records each one; handling takes
    # a random few loop turns, so shards and keys interleave
    env = Env()
    handled: Counter[int] = Counter()
    by_key: defaultdict[str, list[int]] = defaultdict(list)
    rnd = random.Random(parallel_count)

    async def record(wf: Workflow[Payment, S], event: Event) -> None:
        for _ in range(rnd.randrange(3)):
            await asyncio.sleep(0)
        handled[event.id] += 1
        by_key[event.key].append(int(event.data))

    await env.publish(*((f"key-{i % 37}", str(i).encode()) for i in range(1000)))
    wf = env.build(env.builder(record, parallel_count=parallel_count, concurrency=8))

    # When the connector runs
    async with wf:
        await eventually(lambda: sum(handled.values()) >= 1000, what="1000 events handled")
        await settle()

    # Then every event was handled exactly once (none dropped, none repeated)...
    assert sorted(handled) == list(range(1, 1001))
    assert set(handled.values()) == {1}
    # ...and each key's events in the order they were published
    assert len(by_key) == 37
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), key
    # and the work was really spread over the shards
    shards = {shard_of(f"key-{k}", parallel_count) for k in range(37)}
    assert len(shards) == parallel_count


async def test_events_published_while_running_are_all_handled_by_five_shards() -> None:
    # Given a running connector with five shards
    env = Env()
    handled: Counter[int] = Counter()

    async def record(wf: Workflow[Payment, S], event: Event) -> None:
        handled[event.id] += 1

    wf = env.build(env.builder(record, parallel_count=5))
    async with wf:
        # When events arrive in small batches over time
        for batch in range(20):
            await env.publish(*((f"k{batch}-{i}", b"") for i in range(25)))
            await asyncio.sleep(0)
        await eventually(lambda: len(handled) == 500, what="500 events handled")
        await settle()

    # Then none was lost or repeated
    assert sorted(handled) == list(range(1, 501))
    assert set(handled.values()) == {1}


async def test_two_processes_share_the_shards_and_lose_nothing_when_one_stops() -> None:
    # Given two processes with a 5-shard connector on the same role scheduler
    env = Env()
    handled: Counter[int] = Counter()

    async def record(wf: Workflow[Payment, S], event: Event) -> None:
        await asyncio.sleep(0)
        handled[event.id] += 1

    b = env.builder(record, parallel_count=5)
    one, two = env.build(b), env.build(b)
    await one.start()
    await two.start()
    try:
        # When half the events are handled and then the first process stops
        await env.publish(*((f"key-{i % 11}", b"") for i in range(300)))
        await eventually(lambda: len(handled) >= 300, what="first 300 events")
        await one.stop()
        await env.publish(*((f"key-{i % 11}", b"") for i in range(300)))

        # Then the other process takes over every shard and handles the rest
        await eventually(lambda: len(handled) >= 600, what="all 600 events")
        await settle()
    finally:
        await one.stop()
        await two.stop()

    # And every event was handled (at least once; here exactly once: all were acknowledged)
    assert sorted(handled) == list(range(1, 601))
    assert set(handled.values()) == {1}


async def test_restarted_connector_resumes_after_the_last_handled_event() -> None:
    # Given a connector that handled 10 events and was stopped
    env = Env()
    handled: list[int] = []

    async def record(wf: Workflow[Payment, S], event: Event) -> None:
        handled.append(event.id)

    wf = env.build(env.builder(record, parallel_count=2))
    async with wf:
        await env.publish(*((f"key-{i}", b"") for i in range(10)))
        await eventually(lambda: len(handled) == 10, what="10 events")

    # When more events arrive while it is down, and it starts again
    await env.publish(*((f"key-{i}", b"") for i in range(10)))
    async with wf:
        await eventually(lambda: len(handled) == 20, what="20 events")
        await settle()

    # Then it handled only the new ones
    assert sorted(handled) == list(range(1, 21))


# ------------------------------------------------------------------------------ errors and order


async def test_failing_handler_is_retried_and_later_events_of_the_key_wait() -> None:
    # Given a handler that fails twice on the second event of key "a"
    env = Env()
    handled: list[tuple[str, int]] = []
    failures: Counter[int] = Counter()

    async def flaky(wf: Workflow[Payment, S], event: Event) -> None:
        seq = int(event.data)
        if event.key == "a" and seq == 2 and failures[seq] < 2:
            failures[seq] += 1
            raise ConnectionError("psp api down")
        handled.append((event.key, seq))

    wf = env.build(env.builder(flaky))

    # When events of "a" and "b" arrive
    await env.publish(("a", b"1"), ("a", b"2"), ("a", b"3"), ("b", b"1"), ("b", b"2"))
    async with wf:
        await eventually(lambda: len(handled) == 5, what="all events handled")

    # Then the failing event was retried until it worked, every event was handled once, and
    # "a" stayed in order while "b" did not wait for it
    assert failures[2] == 2
    assert sorted(handled) == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2)]
    a_events = [seq for key, seq in handled if key == "a"]
    assert a_events == [1, 2, 3]
    assert handled.index(("b", 2)) < handled.index(("a", 2))


# ------------------------------------------------------------------------------ moving runs


async def test_connector_triggers_runs_and_moves_them_with_callbacks() -> None:
    # Given a connector that triggers a run for a "created" event and sends a callback for a
    # "settled" event
    env = Env()
    outcomes: list[CallbackOutcome] = []

    async def psp(wf: Workflow[Payment, S], event: Event) -> None:
        kind, _, value = event.data.decode().partition(":")
        if kind == "created":
            with contextlib.suppress(WorkflowInProgress):  # handlers must be idempotent
                await wf.trigger(event.key, initial=Payment(int(value)))
        else:
            run = await wf.latest(event.key)
            with contextlib.suppress(RunStopped):  # a duplicate: it has finished already
                await wf.wait_for(event.key, run.run_id, S.WAITING, timeout=2)
            outcomes.append((await wf.callback(event.key, S.WAITING, value.encode())).outcome)

    wf = env.build(env.builder(psp, parallel_count=3))
    async with wf:
        # When the outside stream says three payments were created and then settled
        await env.publish(
            ("pay-1", b"created:100"),
            ("pay-2", b"created:250"),
            ("pay-3", b"created:75"),
            ("pay-1", b"settled:ok"),
            ("pay-2", b"settled:declined"),
            ("pay-3", b"settled:ok"),
            ("pay-1", b"settled:ok"),  # a duplicate: the run has moved on
        )
        await eventually(lambda: len(outcomes) == 4, what="all callbacks sent")

    # Then each payment ran and settled as told, and the duplicate changed nothing
    final = {fid: await wf.latest(fid) for fid in ("pay-1", "pay-2", "pay-3")}
    assert {fid: (r.status, r.object.amount) for fid, r in final.items()} == {
        "pay-1": (S.PAID, 100),
        "pay-2": (S.FAILED, 250),
        "pay-3": (S.PAID, 75),
    }
    assert all(r.run_state is RunState.COMPLETED for r in final.values())
    assert outcomes.count(CallbackOutcome.APPLIED) == 3
    assert outcomes[-1] is CallbackOutcome.STOPPED  # pay-1 already completed


# ------------------------------------------------------------------------------ options


async def test_from_latest_source_skips_events_published_before_it_started() -> None:
    env = Env()
    handled: list[bytes] = []

    async def record(wf: Workflow[Payment, S], event: Event) -> None:
        handled.append(event.data)

    await env.publish(("old", b"before"))
    source = StreamSource(env.outside, TOPIC, from_latest=True, poll_interval=0.01)
    wf = env.build(env.builder(record, source=source))
    async with wf:
        await settle()
        await env.publish(("new", b"after"))
        await eventually(lambda: handled == [b"after"], what="the new event")


async def test_connector_lag_waits_on_the_workflow_clock() -> None:
    # Given a connector that only handles events at least 60 s old
    env = Env()
    handled: list[int] = []

    async def record(wf: Workflow[Payment, S], event: Event) -> None:
        handled.append(event.id)

    wf = env.build(env.builder(record, lag=60))
    async with wf:
        await env.publish(("a", b""))

        # When 59 s pass, then it is not handled
        await settle()
        env.clock.advance(59)
        await settle()
        assert handled == []

        # When 60 s have passed, then it is
        env.clock.advance(1)
        await eventually(lambda: handled == [1], what="the event after its lag")


async def test_connector_processes_are_named_per_shard() -> None:
    env = Env()

    async def record(wf: Workflow[Payment, S], event: Event) -> None:
        return None

    wf = env.build(env.builder(record, parallel_count=3))
    names = [n for n in wf.states() if "connector" in n]
    assert names == [f"psp-connector-to-payments-consumer-{i}-of-3" for i in (1, 2, 3)]


def test_connector_declarations_are_checked_at_the_builder() -> None:
    env = Env()

    async def handler(wf: Workflow[Payment, S], event: Event) -> None:
        return None

    def sync_handler(wf: Workflow[Payment, S], event: Event) -> None:
        return None

    b = env.builder(handler)
    source = StreamSource(env.outside, TOPIC)
    assert isinstance(source, ConnectorSource)
    with pytest.raises(errors.ConfigurationError, match="already declared"):
        b.add_connector("psp", source, handler)
    with pytest.raises(errors.ConfigurationError, match="async"):
        b.add_connector("sync", source, sync_handler)  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigurationError, match="receiver"):
        b.add_connector("nothing", object(), handler)  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigurationError, match="non-empty"):
        b.add_connector(" ", source, handler)
    with pytest.raises(errors.ConfigurationError):
        b.add_connector("zero", source, handler, parallel_count=0)


async def test_lag_of_events_is_measured_from_their_creation_time() -> None:
    # Given events created 2 minutes ago (by the outside system's clock) and a lag of 60 s
    env = Env()
    handled: list[int] = []

    async def record(wf: Workflow[Payment, S], event: Event) -> None:
        handled.append(event.id)

    old = env.clock.now() - timedelta(minutes=2)
    await env.outside.publish(TOPIC, [Message("a", 0, {}, old, b"")])
    wf = env.build(env.builder(record, lag=60))

    # When the connector starts, then the event is handled at once
    async with wf:
        await eventually(lambda: handled == [1], what="old event handled without waiting")


# ------------------------------------------------------------------------------ returned actions


class _Twice:
    """A source that delivers every event twice (a redelivery after a lost acknowledgement)."""

    def __init__(self, inner: StreamSource) -> None:
        self.inner = inner

    async def receiver(self, name: str) -> Any:
        receiver = await self.inner.receiver(name)
        recv = receiver.recv

        async def twice(limit: int = 100) -> list[Event]:
            events = await recv(limit)
            return [*events, *events]

        receiver.recv = twice  # type: ignore[method-assign]
        return receiver


class _Skipped(NullObserver):
    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    def event_skipped(self, workflow: str, process: str, event: Event | None, reason: str) -> None:
        self.reasons[reason.split(":")[0]] += 1


async def test_returned_triggers_are_applied_once_and_rejected_events_counted() -> None:
    # Given a handler that returns a Trigger per event, refuses garbage, and sees each event
    # twice
    env = Env()
    calls: Counter[str] = Counter()

    async def translate(wf: Workflow[Payment, S], event: Event) -> Trigger[Payment] | None:
        calls[event.key] += 1
        if event.data == b"garbage":
            raise errors.EventRejected("not a payment")
        return Trigger(event.key, initial=Payment(amount=int(event.data)))

    source = _Twice(StreamSource(env.outside, TOPIC, poll_interval=0.01))
    observer = _Skipped()
    b = env.builder(translate, source=source)
    wf = b.build(
        env.streamer, env.store, env.scheduler, clock=env.clock, pause_retry=None, observer=observer
    )
    await env.publish(("p-1", b"5"), ("junk", b"garbage"), ("p-2", b"7"))

    # When the connector runs
    async with wf:
        await eventually(lambda: sum(calls.values()) == 6, what="every delivery handled")
        await eventually(lambda: observer.reasons["already triggered"] == 2, what="dedupe")
        info = wf.process_info()

    # Then each payment started one run, and the garbage was counted and skipped, not retried
    runs = await env.store.list("payments", limit=10)
    assert sorted((r.foreign_id, wf.to_run(r).object.amount) for r in runs) == [
        ("p-1", 5),
        ("p-2", 7),
    ]
    assert calls == Counter({"p-1": 2, "junk": 2, "p-2": 2})
    assert observer.reasons["rejected"] == 2
    assert sum(i.skipped for i in info.values()) == 2
    assert sum(i.parked for i in info.values()) == 0


def test_rejections_are_logged_a_few_then_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from statestream._engine import connector

    now = [1000.0]
    monkeypatch.setattr(connector, "monotonic", lambda: now[0])
    log_rejected = connector.Rejections("connector psp", first=2, every=60.0)
    event = Event(1, "t", "k", 0, {}, T0)
    with caplog.at_level("WARNING", logger="statestream"):
        for _ in range(10):
            log_rejected(event, "bad")
        assert len(caplog.records) == 2
        now[0] += 61
        log_rejected(event, "bad")
    assert len(caplog.records) == 3
    assert "(8 more since the last report)" in caplog.records[-1].getMessage()
    assert log_rejected.count == 11
