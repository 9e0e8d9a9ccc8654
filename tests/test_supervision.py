"""Supervision: every failure of a background process is logged, reported and followed by a
restart; lag is measured; error counts stay bounded; plain ``def`` steps run on the workflow's own
daemon threads.
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helpers import Adapters, Order, Status, build, eventually, order_builder
from statestream import ConfigurationError, Event, EventReceiver, ProcessState, Run
from statestream._engine.dispatch import Process, Supervisor
from statestream._engine.runtime import ErrorCounts
from statestream.adapters.memory import MemoryStreamer
from statestream.testing import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PAY = "created-consumer-1-of-1"


# ------------------------------------------------------------------ faulty leases


class FaultyLease:
    def __init__(self, role: str, fail_release: bool) -> None:
        self._role = role
        self.fail_release = fail_release
        self.released = False
        self._lost = asyncio.Event()

    @property
    def role(self) -> str:
        return self._role

    @property
    def valid_until(self) -> float:
        return math.inf

    async def lost(self) -> None:
        await self._lost.wait()

    async def release(self) -> None:
        self.released = True
        if self.fail_release:
            raise ConnectionError("lease store unreachable")


class FaultyScheduler:
    """Grants every acquire at once; the first ``failing`` leases fail to release."""

    def __init__(self, failing: int = 0) -> None:
        self.failing = failing
        self.leases: list[FaultyLease] = []

    async def acquire(self, role: str) -> FaultyLease:
        lease = FaultyLease(role, len(self.leases) < self.failing)
        self.leases.append(lease)
        return lease


async def test_a_release_that_raises_is_reported_and_the_process_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a process whose body fails once and whose first lease cannot be released
    scheduler = FaultyScheduler(failing=1)
    starts = 0

    async def body(stopping: asyncio.Event) -> None:
        nonlocal starts
        starts += 1
        if starts == 1:
            raise RuntimeError("crash")
        await stopping.wait()

    sup = Supervisor(scheduler, "wf")
    proc = Process("p", "wf-role", body, error_backoff=0.001, max_error_backoff=0.002)
    sup.start([proc])
    try:
        # Then the supervisor logs both failures, reports them and runs the body again
        await eventually(lambda: starts == 2, what="the body to be restarted")
        assert proc.report() is ProcessState.RUNNING
        assert proc.errors == 2
        assert "releasing the role: ConnectionError: lease store unreachable" in proc.last_error
        assert "releasing role wf-role of wf failed" in caplog.text
    finally:
        await sup.stop(grace=1)
    assert proc.report() is ProcessState.SHUTDOWN
    assert scheduler.leases[-1].released


async def test_a_release_that_raises_at_stop_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheduler = FaultyScheduler(failing=1)

    async def body(stopping: asyncio.Event) -> None:
        await stopping.wait()

    sup = Supervisor(scheduler, "wf")
    proc = Process("p", "wf-role", body)
    sup.start([proc])
    await eventually(lambda: proc.report() is ProcessState.RUNNING)
    await sup.stop(grace=1)
    assert proc.errors == 1
    assert "lease store unreachable" in caplog.text
    assert proc.report() is ProcessState.SHUTDOWN


async def test_a_failed_process_reports_error_while_it_waits_to_restart() -> None:
    scheduler = FaultyScheduler()

    async def body(stopping: asyncio.Event) -> None:
        raise RuntimeError("crash")

    sup = Supervisor(scheduler, "wf")
    proc = Process("p", "wf-role", body, error_backoff=30, max_error_backoff=30)
    sup.start([proc])
    try:
        await eventually(lambda: proc.errors == 1)
        # Not RUNNING: its task is sleeping off the failure
        assert proc.report() is ProcessState.ERROR
        assert proc.info().last_error == "process: RuntimeError: crash"
    finally:
        await sup.stop(grace=1)
    assert proc.report() is ProcessState.SHUTDOWN


async def test_a_process_whose_task_ended_is_not_reported_running() -> None:
    proc = Process("p", "wf-role", lambda stopping: asyncio.sleep(0))
    proc.state = ProcessState.RUNNING

    async def died() -> None:
        raise RuntimeError("supervisor bug")

    proc.task = asyncio.ensure_future(died())
    await asyncio.gather(proc.task, return_exceptions=True)
    assert proc.report() is ProcessState.ERROR


async def test_a_supervising_task_that_dies_is_reported_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a supervisor whose own loop fails once (a bug, not a failure of the body)
    class Buggy(Supervisor):
        crashes = 0

        async def _supervise(self, proc: Process) -> None:
            if Buggy.crashes == 0:
                Buggy.crashes += 1
                raise RuntimeError("supervisor bug")
            await super()._supervise(proc)

    running = asyncio.Event()

    async def body(stopping: asyncio.Event) -> None:
        running.set()
        await stopping.wait()

    sup = Buggy(FaultyScheduler(), "wf")
    proc = Process("p", "wf-role", body, error_backoff=0.001, max_error_backoff=0.002)
    sup.start([proc])
    try:
        # Then the death is logged and reported, and the process runs after a restart
        await asyncio.wait_for(running.wait(), 5)
        assert proc.errors == 1
        assert proc.last_error == "supervisor: RuntimeError: supervisor bug"
        assert "supervisor of process p of wf died" in caplog.text
        assert proc.report() is ProcessState.RUNNING
    finally:
        await sup.stop(grace=1)
    assert proc.report() is ProcessState.SHUTDOWN


# ------------------------------------------------------------------ faulty receivers


class FaultyReceiver:
    def __init__(self, inner: EventReceiver, streamer: FaultyStreamer) -> None:
        self.inner = inner
        self.streamer = streamer

    @property
    def is_new(self) -> bool:
        return self.inner.is_new

    async def recv(self, limit: int = 100) -> list[Event]:
        return await self.inner.recv(limit)

    async def ack(self, event: Event) -> None:
        if self.streamer.ack_fails:
            self.streamer.failed_acks += 1
            raise ConnectionError("broker gone")
        await self.inner.ack(event)

    async def close(self) -> None:
        await self.inner.close()


class FaultyStreamer(MemoryStreamer):
    """A memory streamer whose receivers' ``ack`` fails while ``ack_fails`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.ack_fails = False
        self.failed_acks = 0
        self.opened = 0

    async def receiver(self, topic: str, name: str, **kwargs: Any) -> Any:
        self.opened += 1
        return FaultyReceiver(await super().receiver(topic, name, **kwargs), self)


async def test_a_consumer_whose_acks_keep_failing_is_restarted_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a workflow whose receivers cannot acknowledge
    streamer = FaultyStreamer()
    streamer.ack_fails = True
    wf, _ = build(order_builder(), Adapters(streamer=streamer))
    async with wf:
        opened = streamer.opened
        run_id = await wf.trigger("order-1")

        # Then the consumer gives up after a few attempts: the failures are reported and the
        # process restarts with a new receiver
        await eventually(lambda: wf.process_info()[PAY].errors >= 5, what="ack failures")
        await eventually(lambda: streamer.opened > opened, what="a new receiver")
        assert "ConnectionError: broker gone" in wf.process_info()[PAY].last_error
        assert "acknowledging events failed" in caplog.text

        # And once acks work again, the run completes (its events handled at least once)
        streamer.ack_fails = False
        await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)
        await eventually(lambda: wf.states()[PAY] is ProcessState.RUNNING)


# ------------------------------------------------------------------ lag


async def test_lag_above_lag_alert_is_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(T0)
    gate = asyncio.Event()

    async def pay(run: Run[Order, Status]) -> Status:
        await gate.wait()
        return Status.PAID

    wf, _ = build(order_builder(pay, lag_alert=60), clock=clock)
    async with wf:
        await wf.trigger("order-1")
        await eventually(lambda: wf.states()[PAY] is ProcessState.RUNNING)

        # When its event waits for two minutes of the workflow's clock
        clock.advance(120)

        # Then the consumer reports itself lagging, with its lag, and logs it
        await eventually(lambda: wf.states()[PAY] is ProcessState.LAGGING, what="lagging")
        assert wf.process_info()[PAY].lag >= 120
        assert "is lagging" in caplog.text
        assert wf.states()["paid-consumer-1-of-1"] is ProcessState.RUNNING

        # And once it catches up, it is running again
        gate.set()
        await eventually(lambda: wf.states()[PAY] is ProcessState.RUNNING, what="caught up")
        assert wf.process_info()[PAY].lag == 0


async def test_a_consumer_lag_and_pause_retry_delay_are_not_alerts() -> None:
    # A step with lag=300 holds each event five minutes on purpose; pause retry holds each
    # paused run for pause_retry: neither is lagging because of that
    clock = FakeClock(T0)

    async def pay(run: Run[Order, Status]) -> Status:
        return run.pause("wait")

    wf, _ = build(order_builder(pay, lag=300, lag_alert=60), clock=clock, pause_retry=7200)
    async with wf:
        await wf.trigger("order-1")
        await eventually(lambda: wf.states()[PAY] is ProcessState.RUNNING)
        clock.advance(200)
        await asyncio.sleep(0.3)
        assert wf.states()[PAY] is ProcessState.RUNNING
        clock.advance(200)  # the step runs and pauses the run

        async def paused() -> bool:
            return (await wf.latest("order-1")).run_state.name == "PAUSED"

        await eventually(paused)
        clock.advance(3600)  # more than lag_alert (1800 s by default) into the pause retry
        await asyncio.sleep(0.3)
        assert wf.states()["paused-records-retry-consumer"] is ProcessState.RUNNING


# ------------------------------------------------------------------ error counts


def test_error_counts_are_bounded_least_recently_failed_first() -> None:
    counts = ErrorCounts(limit=3)
    for run in ("a", "b", "c"):
        counts.add("p", run)
    counts.add("p", "a")  # a failed most recently
    counts.add("p", "d")
    assert len(counts) == 3
    assert counts.get("p", "b") == 0  # forgotten
    assert (counts.get("p", "a"), counts.get("p", "c"), counts.get("p", "d")) == (2, 1, 1)


def test_error_counts_restart_when_the_run_moved_on() -> None:
    counts = ErrorCounts()
    assert counts.add("p", "run", version=1) == 1
    assert counts.add("p", "run", version=1) == 2
    assert counts.add("p", "run", version=3) == 1  # another visit: a fresh count
    counts.add("q", "run")
    counts.clear_run("run")
    assert not counts


async def test_error_counts_are_cleared_when_this_process_moves_the_run() -> None:
    fails = 0

    async def pay(run: Run[Order, Status]) -> Status:
        nonlocal fails
        fails += 1
        raise RuntimeError("declined")

    wf, _ = build(order_builder(pay, pause_after_errors=100))
    async with wf:
        run_id = await wf.trigger("order-1")
        await eventually(lambda: fails >= 2)
        assert wf._rt.errors
        await wf.pause(run_id)  # a write by this process: the run moved on
        assert not wf._rt.errors


# ------------------------------------------------------------------ sync steps


async def test_def_steps_run_on_the_workflows_bounded_daemon_pool() -> None:
    lock = threading.Lock()
    active = 0
    most = 0
    names: set[str] = set()
    daemon: set[bool] = set()

    def pay(run: Run[Order, Status]) -> Status:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        names.add(threading.current_thread().name)
        daemon.add(threading.current_thread().daemon)
        time.sleep(0.05)
        with lock:
            active -= 1
        return Status.PAID

    wf, _ = build(order_builder(pay), sync_workers=2)
    async with wf:
        ids = [await wf.trigger(f"order-{i}") for i in range(6)]
        for i, run_id in enumerate(ids):
            await wf.wait_for(f"order-{i}", run_id, Status.SHIPPED, timeout=10)
    assert most == 2
    assert daemon == {True}
    assert all(name.startswith("statestream-orders-") for name in names), names


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_sync_workers_must_be_a_positive_int(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="sync_workers"):
        build(order_builder(), sync_workers=value)


HUNG_MODULE = """
import threading
from dataclasses import dataclass
from enum import IntEnum

from statestream import Builder
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer


class Status(IntEnum):
    CREATED = 1
    PAID = 2


@dataclass
class Order:
    id: str = ""


def pay(run):
    print("step started", flush=True)
    threading.Event().wait()  # hangs for ever, in a worker thread


async def make():
    b = Builder("hung", Order, Status)
    b.defaults(polling_frequency=0.01)
    b.add_step(Status.CREATED, pay, Status.PAID)
    wf = b.build(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler())
    await wf.trigger("order-1")
    return wf
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGTERM")
def test_a_hung_def_step_does_not_keep_the_worker_alive_after_sigterm(tmp_path: Path) -> None:
    (tmp_path / "hung_wf.py").write_text(textwrap.dedent(HUNG_MODULE))
    log = (tmp_path / "worker.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "statestream.cli", "worker", "hung_wf:make", "--grace", "0.5"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while "step started" not in (tmp_path / "worker.log").read_text():
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "the step never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(10)  # grace 0.5 s, plus a generous bound
        except subprocess.TimeoutExpired:
            pytest.fail("the worker did not exit after SIGTERM:\n" + log_text(tmp_path))
        assert code == 0, log_text(tmp_path)
        assert "statestream worker: stopped" in log_text(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "worker.log").read_text()


def test_the_pool_starts_threads_on_demand() -> None:
    wf, _ = build(order_builder())
    assert wf._rt.executor.threads == 0
