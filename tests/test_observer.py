"""The observer seam: every kind of moment reaches a recording observer with the right values,
and an observer that raises never breaks the workflow."""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from helpers import eventually
from statestream import (
    Builder,
    CompositeObserver,
    ConfigurationError,
    Event,
    EventReceiver,
    NullObserver,
    Observer,
    Record,
    Run,
    RunState,
    Work,
    after,
)
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)


class S(enum.IntEnum):
    START = 1
    WAITING = 2
    PAID = 3
    SHIPPED = 4


@dataclass
class Doc:
    n: int = 0


#: The "trace" a test tracer keeps current: set by work_started, written by propagate.
TRACE: contextvars.ContextVar[str] = contextvars.ContextVar("trace", default="")


class Recorder(NullObserver):
    """Records every moment; behaves as a tracer would with its current span (TRACE)."""

    def __init__(self) -> None:
        self.moments: list[tuple[str, tuple[Any, ...]]] = []

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.moments if name == kind]

    def work_started(self, work: Work) -> object:
        self.moments.append(("work_started", (work,)))
        # The parent: the event's trace, else the caller's current one, else a new trace
        trace = work.headers.get("trace") or TRACE.get() or f"trace-of-{work.kind}-{work.status}"
        return TRACE.set(trace)  # made current for the work, like a span

    def work_finished(
        self, work: Work, token: object, seconds: float, error: BaseException | None
    ) -> None:
        self.moments.append(("work_finished", (work, seconds, error)))
        assert isinstance(token, contextvars.Token)
        TRACE.reset(token)  # raises if not called in the context work_started ran in

    def event_skipped(self, workflow: str, process: str, event: Event | None, reason: str) -> None:
        self.moments.append(("event_skipped", (workflow, process, event, reason)))

    def lag(self, workflow: str, process: str, seconds: float, alert: bool) -> None:
        self.moments.append(("lag", (workflow, process, seconds, alert)))

    def record_written(self, previous: Record | None, record: Record) -> None:
        self.moments.append(("record_written", (previous, record)))

    def propagate(self, headers: dict[str, str]) -> None:
        if TRACE.get():
            headers["trace"] = TRACE.get()

    def lease_changed(self, workflow: str, role: str, held: bool) -> None:
        self.moments.append(("lease_changed", (workflow, role, held)))

    def relay_batch(self, workflow: str, count: int, seconds: float, lag: float) -> None:
        self.moments.append(("relay_batch", (workflow, count, seconds, lag)))

    def process_failed(self, workflow: str, process: str, error: BaseException) -> None:
        self.moments.append(("process_failed", (workflow, process, error)))


class BrokenSource:
    """A connector source that cannot open a receiver."""

    async def receiver(self, name: str) -> EventReceiver:
        raise RuntimeError("source down")


def builder(fail_first_step: bool = False) -> Builder[Doc, S]:
    attempts = 0

    async def start(run: Run[Doc, S]) -> S:
        nonlocal attempts
        attempts += 1
        if fail_first_step and attempts == 1:
            raise ValueError("first attempt fails")
        return S.WAITING

    async def pay(run: Run[Doc, S], payload: bytes) -> S:
        return S.PAID

    async def ship(run: Run[Doc, S], now: datetime) -> S:
        return S.SHIPPED

    async def done(run: Run[Doc, S]) -> None:
        pass

    async def never(wf: Any, event: Event) -> None:
        pass

    b = Builder("docs", Doc, S)
    b.defaults(error_backoff=0.01, max_error_backoff=0.02, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(S.START, start, S.WAITING)
    b.add_callback(S.WAITING, pay, S.PAID)
    b.add_timeout(S.PAID, after(0.01), ship, S.SHIPPED, polling_frequency=0.01)
    b.on_complete(done)
    b.add_connector("broken", BrokenSource(), never)
    return b


@dataclass
class Shared:
    streamer: MemoryStreamer
    store: MemoryRecordStore
    scheduler: MemoryRoleScheduler
    timeouts: MemoryTimeoutStore

    def build(self, b: Builder[Doc, S], observer: Any) -> Any:
        return b.build(
            self.streamer,
            self.store,
            self.scheduler,
            timeout_store=self.timeouts,
            observer=observer,
        )


def shared() -> Shared:
    return Shared(
        MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler(), MemoryTimeoutStore()
    )


def works(rec: Recorder, kind: str, process: str) -> list[Work]:
    return [w for (w,) in rec.of("work_started") if (w.kind, w.process) == (kind, process)]


async def test_every_kind_of_moment_is_reported_with_its_values() -> None:
    # Given a workflow with a step (failing once), a callback, a timeout, a hook, a connector
    # whose source is down, and a recording observer
    rec = Recorder()
    wf = shared().build(builder(fail_first_step=True), rec)
    async with wf:
        # (a run already waiting when a consumer first starts reaches it through the catch-up
        # from the record store, with no event headers: let the consumers start first)
        await asyncio.sleep(0.2)
        # When a run goes through all of it, triggered inside the caller's "trace"
        token = TRACE.set("trace-of-caller")
        try:
            run_id = await wf.trigger("doc-1")
            await wf.wait_for("doc-1", run_id, S.WAITING, timeout=5)
            result = await wf.callback("doc-1", S.WAITING, b"")
        finally:
            TRACE.reset(token)
        assert result.applied
        await wf.wait_for("doc-1", run_id, S.SHIPPED, timeout=5)
        await eventually(lambda: works(rec, "event", "completed-run-state-change-hook-consumer"))
        await eventually(lambda: rec.of("process_failed"))
    # Then:
    # the step: two attempts of its event, the first with the error, both in the caller's trace
    step = works(rec, "event", "start-consumer-1-of-1")
    assert len(step) == 2
    assert {(w.workflow, w.status, w.run_id, w.foreign_id) for w in step} == {
        ("docs", S.START, run_id, "doc-1")
    }
    assert {w.headers.get("trace") for w in step} == {"trace-of-caller"}
    assert all(w.event is not None and w.event.key == run_id for w in step)
    finished = [(w, s, e) for w, s, e in rec.of("work_finished") if w in step]
    assert [type(e).__name__ if e else None for _, _, e in finished] == ["ValueError", None]
    assert all(s >= 0 for _, s, _ in finished)

    # the callback: one unit of work, by foreign ID
    (cb,) = works(rec, "callback", "callback")
    assert (cb.status, cb.foreign_id, cb.run_id) == (S.WAITING, "doc-1", "")

    # the timeout: its timer was set by the inserter for the event the callback wrote (in the
    # caller's trace), then fired once by the poller
    (inserter,) = works(rec, "event", "paid-timeout-auto-inserter-consumer")
    assert inserter.headers.get("trace") == "trace-of-caller"
    (fired,) = works(rec, "timeout", "paid-timeout-consumer")
    assert (fired.status, fired.run_id, fired.foreign_id) == (S.PAID, run_id, "doc-1")

    # the hook, on the completion the timeout wrote (so in the timeout's trace)
    (hook,) = works(rec, "event", "completed-run-state-change-hook-consumer")
    assert hook.status == S.SHIPPED
    assert hook.headers.get("trace") == f"trace-of-timeout-{int(S.PAID)}"

    # every work that started finished
    assert len(rec.of("work_started")) == len(rec.of("work_finished"))

    # every write, with what it replaced: trigger, step, callback, timeout
    writes = [
        (p.version if p else None, r.version, r.run_state, r.status)
        for p, r in rec.of("record_written")
    ]
    assert writes == [
        (None, 1, RunState.INITIATED, S.START),
        (1, 2, RunState.RUNNING, S.WAITING),
        (2, 3, RunState.RUNNING, S.PAID),
        (3, 4, RunState.COMPLETED, S.SHIPPED),
    ]

    # lag for each event taken, not alerting (lag_alert is 30 minutes by default)
    lags = rec.of("lag")
    assert ("docs", "start-consumer-1-of-1") in {(w, p) for w, p, _, _ in lags}
    assert all(s >= 0 and alert is False for _, _, s, alert in lags)

    # the pause-retry consumer leaves the completion event: it only wants pauses
    assert (
        "docs",
        "paused-records-retry-consumer",
        "filtered out",
    ) in {(w, p, r) for w, p, _, r in rec.of("event_skipped")}

    # the relay published the four events (in one batch or more)
    batches = rec.of("relay_batch")
    assert sum(count for _, count, _, _ in batches) == 4
    assert all(w == "docs" and s >= 0 and lag >= 0 for w, _, s, lag in batches)

    # every role was gained and, at stop, released
    leases = rec.of("lease_changed")
    gained = {role for _, role, held in leases if held}
    released = {role for _, role, held in leases if not held}
    assert "docs-1-consumer-1-of-1" in gained
    assert gained == released

    # the connector whose source is down failed as a process
    workflow, process, error = rec.of("process_failed")[0]
    assert (workflow, process, str(error)) == (
        "docs",
        "broken-connector-to-docs-consumer-1-of-1",
        "source down",
    )


async def test_a_skipped_stale_event_and_a_skip_are_reported() -> None:
    rec = Recorder()

    async def skipping(run: Run[Doc, S]) -> Any:
        return run.skip()

    b = Builder("docs", Doc, S)
    b.defaults(error_backoff=0.01, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01)
    b.add_step(S.START, skipping, S.WAITING)
    wf = shared().build(b, rec)
    run_id = await wf.trigger("doc-1")
    await wf.pause(run_id)  # the START event is now stale: the run moved on to version 2
    async with wf:
        await eventually(lambda: len(rec.of("event_skipped")) >= 1)
    reasons = {(p, r) for _, p, _, r in rec.of("event_skipped")}
    assert (
        "start-consumer-1-of-1",
        "event record version lower than latest record version",
    ) in reasons

    rec2 = Recorder()
    wf2 = shared().build(b, rec2)
    async with wf2:
        await wf2.trigger("doc-1")
        await eventually(lambda: rec2.of("event_skipped"))
    assert ("docs", "start-consumer-1-of-1", None, "next value specified skip") in rec2.of(
        "event_skipped"
    )


async def test_a_lease_moving_between_two_instances_is_reported_by_both() -> None:
    # Given two instances sharing one role scheduler, the first holding every role
    env = shared()
    first, second = Recorder(), Recorder()
    wf1 = env.build(builder(), first)
    wf2 = env.build(builder(), second)
    role = "docs-1-consumer-1-of-1"
    await wf1.start()
    await eventually(lambda: ("docs", role, True) in first.of("lease_changed"))
    await wf2.start()
    try:
        await asyncio.sleep(0.05)
        assert ("docs", role, True) not in second.of("lease_changed")

        # When the first stops
        await wf1.stop()

        # Then it reports the role released, and the second reports it gained
        assert ("docs", role, False) in first.of("lease_changed")
        await eventually(lambda: ("docs", role, True) in second.of("lease_changed"))
    finally:
        await wf2.stop()


class Raising:
    """An observer every method of which raises."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def boom(*args: Any) -> Any:
            self.calls += 1
            raise RuntimeError(f"{name} is broken")

        return boom


async def test_an_observer_that_raises_does_not_break_the_workflow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an observer that raises in every method, beside one that records
    raising, rec = Raising(), Recorder()
    wf = shared().build(builder(), CompositeObserver(raising, rec))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="statestream"):
        async with wf:
            # When two runs go all the way
            for i in range(2):
                run_id = await wf.trigger(f"doc-{i}")
                await wf.wait_for(f"doc-{i}", run_id, S.WAITING, timeout=5)
                await wf.callback(f"doc-{i}", S.WAITING, b"")
                run = await wf.wait_for(f"doc-{i}", run_id, S.SHIPPED, timeout=5)
                assert run.run_state is RunState.COMPLETED
    # Then the other observer heard everything, and each broken method was logged once
    assert len(rec.of("record_written")) == 8
    assert raising.calls > 8
    messages = [r.getMessage() for r in caplog.records if "observer" in r.getMessage()]
    assert messages
    assert len(messages) == len(set(messages))
    assert any("in work_started" in m for m in messages)


def test_build_refuses_an_object_that_is_not_an_observer() -> None:
    env = shared()
    with pytest.raises(ConfigurationError, match="observer"):
        env.build(builder(), object())


def test_the_no_op_observer_and_the_composite_are_observers() -> None:
    assert isinstance(NullObserver(), Observer)
    assert isinstance(CompositeObserver(NullObserver(), Recorder()), Observer)


async def test_without_an_observer_the_engine_holds_none() -> None:
    wf = shared().build(builder(), None)
    assert wf._rt.observer is None
    assert wf._rt.supervisor.seam is None
