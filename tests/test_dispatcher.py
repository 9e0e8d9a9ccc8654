"""KeyedDispatcher and Supervisor, driven by tiny fake receivers, leases and schedulers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from helpers import eventually
from statestream import Event, EventReceiver, Message, errors
from statestream._engine.dispatch import (
    KeyedDispatcher,
    Process,
    ProcessState,
    Supervisor,
    shard_of,
)
from statestream._engine.lease import HELD, Held
from statestream.adapters.memory import MemoryRoleScheduler, MemoryStreamer

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(event_id: int, key: str) -> Event:
    return Event(event_id, "topic", key, 1, {}, T0)


class FakeReceiver:
    """An EventReceiver over a list: ``push`` adds events, ``acks`` records what was acked."""

    def __init__(self, events: list[Event] | None = None) -> None:
        self.pending: list[Event] = list(events or [])
        self.acks: list[int] = []
        self.limits: list[int] = []
        self.on_ack: Callable[[Event], None] | None = None
        self._wake = asyncio.Event()

    def push(self, *events: Event) -> None:
        self.pending.extend(events)
        self._wake.set()

    async def recv(self, limit: int = 100) -> list[Event]:
        self.limits.append(limit)
        if limit < 1:  # as every real receiver does
            raise errors.InvalidInput(f"limit must be at least 1, got {limit}")
        while not self.pending:
            self._wake.clear()
            await self._wake.wait()
        batch, self.pending = self.pending[:limit], self.pending[limit:]
        return batch

    async def ack(self, event: Event) -> None:
        if self.on_ack is not None:
            self.on_ack(event)
        self.acks.append(event.id)

    async def close(self) -> None:
        pass


async def never_resolved(event: Event, exc: BaseException, attempt: int) -> bool:
    return False


class Running:
    """A dispatcher running in a task until ``stop``."""

    def __init__(self, dispatcher: KeyedDispatcher) -> None:
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(dispatcher.run(self.stopping))

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, 5)


def dispatcher(
    receiver: FakeReceiver,
    handle: Callable[[Event], Awaitable[None]],
    on_error: Callable[[Event, BaseException, int], Awaitable[bool]] = never_resolved,
    **kwargs: int | float,
) -> Running:
    opts: dict[str, int | float] = {"concurrency": 8, "error_backoff": 0.001}
    opts.update(kwargs)
    return Running(KeyedDispatcher(receiver, handle, on_error, **opts))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- dispatcher


async def test_events_of_one_key_are_handled_one_at_a_time_in_order() -> None:
    # Given interleaved events of two keys
    events = [ev(i, "a" if i % 2 else "b") for i in range(1, 13)]
    receiver = FakeReceiver(events)
    active: set[str] = set()
    overlaps: list[int] = []
    handled: list[Event] = []

    async def handle(event: Event) -> None:
        if event.key in active:
            overlaps.append(event.id)
        active.add(event.key)
        for _ in range(3):
            await asyncio.sleep(0)
        active.discard(event.key)
        handled.append(event)

    # When they are dispatched
    running = dispatcher(receiver, handle)
    await eventually(lambda: len(handled) == 12)
    await running.stop()

    # Then no key was handled twice at once, and each key's events came in ID order
    assert overlaps == []
    for key in "ab":
        ids = [e.id for e in handled if e.key == key]
        assert ids == sorted(ids)
        assert len(ids) == 6
    assert receiver.acks[-1] == 12


async def test_different_keys_run_concurrently_up_to_the_limit() -> None:
    # Given ten runs whose handlers block on a gate, and a concurrency of 3
    receiver = FakeReceiver([ev(i, f"key-{i}") for i in range(1, 11)])
    gate = asyncio.Event()
    active = 0
    most = 0
    done = 0

    async def handle(event: Event) -> None:
        nonlocal active, most, done
        active += 1
        most = max(most, active)
        await gate.wait()
        active -= 1
        done += 1

    running = dispatcher(receiver, handle, concurrency=3)

    # When the dispatcher has filled up
    await eventually(lambda: active == 3)
    for _ in range(20):
        await asyncio.sleep(0)

    # Then exactly three are in flight
    assert (active, most) == (3, 3)

    # And once the gate opens, everything is handled without exceeding the limit
    gate.set()
    await eventually(lambda: done == 10)
    await running.stop()
    assert most == 3
    assert receiver.acks[-1] == 10


async def test_acks_only_cover_a_finished_prefix() -> None:
    # Given five events of different keys, each released by its own gate
    receiver = FakeReceiver([ev(i, f"key-{i}") for i in range(1, 6)])
    gates = {i: asyncio.Event() for i in range(1, 6)}
    finished: set[int] = set()
    violations: list[int] = []

    def check(event: Event) -> None:
        if not all(i in finished for i in range(1, event.id + 1)):
            violations.append(event.id)

    receiver.on_ack = check

    async def handle(event: Event) -> None:
        await gates[event.id].wait()
        finished.add(event.id)

    running = dispatcher(receiver, handle)

    # When later events finish before the first one
    for i in (3, 5, 2):
        gates[i].set()
    await eventually(lambda: finished == {2, 3, 5})
    for _ in range(20):
        await asyncio.sleep(0)

    # Then nothing is acknowledged past the unfinished event 1
    assert receiver.acks == []

    # When event 1 finishes, Then the ack moves up to the next unfinished one
    gates[1].set()
    await eventually(lambda: bool(receiver.acks) and receiver.acks[-1] == 3)

    # When the last one finishes, Then everything is acknowledged
    gates[4].set()
    await eventually(lambda: receiver.acks[-1] == 5)
    await running.stop()
    assert violations == []
    assert receiver.acks == sorted(receiver.acks)


async def test_events_of_other_shards_are_skipped_but_acknowledged() -> None:
    keys = [f"run-{i}" for i in range(20)]
    assert {shard_of(k, 2) for k in keys} == {0, 1}
    receiver = FakeReceiver([ev(i + 1, k) for i, k in enumerate(keys)])
    handled: list[str] = []

    async def handle(event: Event) -> None:
        handled.append(event.key)

    running = dispatcher(receiver, handle, shard=0, shards=2)
    await eventually(lambda: bool(receiver.acks) and receiver.acks[-1] == 20)
    await running.stop()

    assert sorted(handled) == sorted(k for k in keys if shard_of(k, 2) == 0)


async def test_failed_events_are_retried_with_increasing_attempt_numbers() -> None:
    calls = 0
    attempts: list[int] = []

    async def handle(event: Event) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("not yet")

    async def on_error(event: Event, exc: BaseException, attempt: int) -> bool:
        assert isinstance(exc, RuntimeError)
        attempts.append(attempt)
        return False

    receiver = FakeReceiver([ev(1, "a")])
    running = dispatcher(receiver, handle, on_error)
    await eventually(lambda: receiver.acks == [1])
    await running.stop()

    assert calls == 3
    assert attempts == [1, 2]


async def test_an_error_policy_returning_true_counts_the_event_as_done() -> None:
    calls = 0
    attempts: list[int] = []

    async def handle(event: Event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("always")

    async def on_error(event: Event, exc: BaseException, attempt: int) -> bool:
        attempts.append(attempt)
        return attempt == 2

    receiver = FakeReceiver([ev(1, "a"), ev(2, "a")])
    running = dispatcher(receiver, handle, on_error)
    await eventually(lambda: bool(receiver.acks) and receiver.acks[-1] == 2)
    await running.stop()

    # each event: two failed attempts, the second resolved by the policy
    assert calls == 4
    assert attempts == [1, 2, 1, 2]


async def test_stopping_waits_for_in_flight_handlers_and_leaves_queued_ones() -> None:
    # Given a slow event in flight and a second event of the same key queued behind it
    started = asyncio.Event()
    handled: list[int] = []

    async def handle(event: Event) -> None:
        started.set()
        await asyncio.sleep(0.05)
        handled.append(event.id)

    receiver = FakeReceiver([ev(1, "a"), ev(2, "a")])
    running = dispatcher(receiver, handle)
    await asyncio.wait_for(started.wait(), 5)

    # When the dispatcher is stopped
    await running.stop()

    # Then the in-flight handler finished and was acknowledged; the queued one was left for later
    assert handled == [1]
    assert receiver.acks == [1]


async def test_a_handover_also_handles_the_queued_events_and_acknowledges_them_all() -> None:
    # Given a consumer holding its role (not a supervisor's stop: a handover), with a slow
    # event in flight, a second event of its run queued behind it, and a later run's finished
    handover = asyncio.Event()
    supervisor = Supervisor(FakeScheduler(), "wf")
    held = Held(Process("p", "wf-role", never_ends), FakeLease("wf-role"), supervisor, handover)
    gate = asyncio.Event()
    handled: list[int] = []

    async def handle(event: Event) -> None:
        if event.id == 1:
            await gate.wait()
        handled.append(event.id)

    receiver = FakeReceiver([ev(1, "a"), ev(2, "a"), ev(3, "b")])
    token = HELD.set(held)
    try:
        task = asyncio.create_task(
            KeyedDispatcher(receiver, handle, never_resolved, concurrency=8).run(handover)
        )
    finally:
        HELD.reset(token)
    await eventually(lambda: handled == [3])

    # When the role is handed over, and then the event in flight finishes
    handover.set()
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(task, 5)

    # Then the queued event was handled too, and everything received is acknowledged: the
    # next holder starts after it (a stopping supervisor leaves it, as the test above shows)
    assert handled == [3, 1, 2]
    assert receiver.acks[-1] == 3


async def never_ends(stopping: asyncio.Event) -> None:
    await stopping.wait()


class CountingReceiver:
    """Wraps a real receiver and records the limits asked for and the events returned."""

    def __init__(self, inner: EventReceiver) -> None:
        self.inner = inner
        self.limits: list[int] = []
        self.received = 0
        self.acked = 0

    async def recv(self, limit: int = 100) -> list[Event]:
        self.limits.append(limit)
        events = await self.inner.recv(limit)
        self.received += len(events)
        return events

    async def ack(self, event: Event) -> None:
        await self.inner.ack(event)
        self.acked = event.id

    async def close(self) -> None:
        await self.inner.close()


async def test_other_shard_events_behind_a_slow_event_do_not_break_the_dispatcher() -> None:
    # Given a real memory receiver, one slow event of our shard, then many of the other shard
    streamer = MemoryStreamer()
    ours = next(f"k{i}" for i in range(100) if shard_of(f"k{i}", 2) == 0)
    theirs = [f"x{i}" for i in range(2000) if shard_of(f"x{i}", 2) == 1][:300]
    await streamer.publish("topic", [Message(k, 1, {}, T0) for k in [ours, *theirs]])
    receiver = CountingReceiver(await streamer.receiver("topic", "consumer"))
    gate = asyncio.Event()

    async def handle(event: Event) -> None:
        await gate.wait()

    stopping = asyncio.Event()
    task = asyncio.create_task(
        KeyedDispatcher(
            receiver, handle, never_resolved, concurrency=2, shard=0, shards=2, error_backoff=0.001
        ).run(stopping)
    )
    try:
        # When the window (256 slots for concurrency 2) fills up while the first event is in
        # flight
        await eventually(lambda: receiver.received >= 256 or task.done(), timeout=2)
        for _ in range(50):
            await asyncio.sleep(0)

        # Then the dispatcher waits for room instead of asking for nothing and failing
        assert not task.done(), task.exception()
        assert min(receiver.limits) >= 1

        # And once the slow event is done, it goes on to the end
        gate.set()
        await eventually(lambda: receiver.acked == 301, timeout=2)
    finally:
        stopping.set()
        gate.set()
        await asyncio.gather(task, return_exceptions=True)
        await receiver.close()


# ------------------------------------------------------------------------------- supervisor


class FakeLease:
    def __init__(self, role: str) -> None:
        self._role = role
        self.lose = asyncio.Event()
        self.released = False

    @property
    def role(self) -> str:
        return self._role

    @property
    def valid_until(self) -> float:
        return math.inf

    async def lost(self) -> None:
        await self.lose.wait()

    async def release(self) -> None:
        self.released = True


class FakeScheduler:
    def __init__(self) -> None:
        self.leases: list[FakeLease] = []

    async def acquire(self, role: str) -> FakeLease:
        lease = FakeLease(role)
        self.leases.append(lease)
        return lease


async def test_only_one_of_two_supervisors_sharing_a_scheduler_runs_a_role() -> None:
    # Given two supervisors (two processes) sharing a role scheduler, each with the same role
    scheduler = MemoryRoleScheduler()
    running: list[str] = []

    def body_of(name: str) -> Callable[[asyncio.Event], Awaitable[None]]:
        async def body(stopping: asyncio.Event) -> None:
            running.append(name)
            try:
                await stopping.wait()
            finally:
                running.remove(name)

        return body

    one, two = Supervisor(scheduler, "wf"), Supervisor(scheduler, "wf")
    p1 = Process("p", "wf-role", body_of("one"), error_backoff=0.01)
    p2 = Process("p", "wf-role", body_of("two"), error_backoff=0.01)

    # When both start
    one.start([p1])
    two.start([p2])
    try:
        await eventually(lambda: running == ["one"])
        for _ in range(20):
            await asyncio.sleep(0)

        # Then only the first runs the body; the other waits for the role
        assert running == ["one"]
        assert (p1.state, p2.state) == (ProcessState.RUNNING, ProcessState.IDLE)

        # When the first stops, Then the second takes the role over
        await one.stop(grace=1)
        assert p1.state is ProcessState.SHUTDOWN
        await eventually(lambda: running == ["two"])
        assert p2.state is ProcessState.RUNNING
    finally:
        await one.stop(grace=1)
        await two.stop(grace=1)
    assert p2.state is ProcessState.SHUTDOWN


async def test_a_lost_lease_cancels_the_body_and_the_role_is_acquired_again() -> None:
    # Given a process holding a lease that can be lost
    scheduler = FakeScheduler()
    starts = 0
    cancelled = 0

    async def body(stopping: asyncio.Event) -> None:
        nonlocal starts, cancelled
        starts += 1
        try:
            await stopping.wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise

    sup = Supervisor(scheduler, "wf")
    proc = Process("p", "wf-role", body, error_backoff=0.01)
    sup.start([proc])
    try:
        await eventually(lambda: starts == 1)

        # When the lease is lost
        scheduler.leases[0].lose.set()

        # Then the body is cancelled, the lease released and the role acquired again
        await eventually(lambda: starts == 2)
        assert cancelled == 1
        assert scheduler.leases[0].released
        assert len(scheduler.leases) == 2
        assert proc.state is ProcessState.RUNNING
    finally:
        await sup.stop(grace=1)

    # and stopping ends the body normally and releases the new lease
    assert cancelled == 1
    assert scheduler.leases[1].released
    assert proc.state is ProcessState.SHUTDOWN


async def test_a_failing_body_is_restarted_after_a_backoff() -> None:
    scheduler = FakeScheduler()
    starts = 0

    async def body(stopping: asyncio.Event) -> None:
        nonlocal starts
        starts += 1
        if starts < 3:
            raise RuntimeError("crash")
        await stopping.wait()

    sup = Supervisor(scheduler, "wf")
    proc = Process("p", "wf-role", body, error_backoff=0.001, max_error_backoff=0.002)
    sup.start([proc])
    try:
        await eventually(lambda: starts == 3)
    finally:
        await sup.stop(grace=1)
    assert proc.errors == 2
    assert all(lease.released for lease in scheduler.leases)


async def test_stop_cancels_a_body_that_outlives_the_grace() -> None:
    scheduler = FakeScheduler()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def stubborn(stopping: asyncio.Event) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # ignores stopping
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sup = Supervisor(scheduler, "wf")
    proc = Process("p", "wf-role", stubborn)
    sup.start([proc])
    await asyncio.wait_for(started.wait(), 5)

    await sup.stop(grace=0.01)

    assert cancelled.is_set()
    assert scheduler.leases[0].released
    assert proc.state is ProcessState.SHUTDOWN
