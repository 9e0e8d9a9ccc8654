"""Lease deadlines: a holder whose lease passed its local deadline starts and writes nothing more.

A role holder whose event loop stalls past its lease's time to live keeps running when it wakes,
while another process may already have taken the role over. The lease's ``valid_until`` (a
monotonic deadline, shorter than the time another process must wait) is checked before a
handler starts and before every write made under the role, so the late holder's step may
run (side effects are at least once) but its result is never stored after the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import Adapters, Order, Status, build, eventually, order_builder, settle
from statestream import ProcessState, Run
from statestream.adapters.memory import MemoryRecordStore, MemoryStreamer


class DeadlineLease:
    """A lease with a settable deadline: ``valid_until`` is what the engine reads."""

    def __init__(self, scheduler: DeadlineScheduler, role: str, valid_until: float) -> None:
        self._scheduler = scheduler
        self._role = role
        self.valid_until = valid_until
        self.released = False
        self._lost = asyncio.Event()

    @property
    def role(self) -> str:
        return self._role

    async def lost(self) -> None:
        await self._lost.wait()

    async def release(self) -> None:
        if not self.released:
            self.released = True
            self._lost.set()
            self._scheduler._free(self)


class DeadlineScheduler:
    """One holder per role, as any scheduler; :meth:`expire` simulates a holder whose lease ran
    out without it noticing (its loop stalled): its ``valid_until`` is in the past, and the role
    is free for another holder, while its own ``lost()`` stays quiet."""

    def __init__(self, ttl: float = 3600.0) -> None:
        self.ttl = ttl
        self.holders: dict[str, DeadlineLease] = {}
        self.grants: list[DeadlineLease] = []
        self._changed = asyncio.Event()

    async def acquire(self, role: str) -> DeadlineLease:
        while role in self.holders:
            self._changed.clear()
            await self._changed.wait()
        lease = DeadlineLease(self, role, time.monotonic() + self.ttl)
        self.holders[role] = lease
        self.grants.append(lease)
        return lease

    def expire(self, role: str) -> DeadlineLease:
        lease = self.holders.pop(role)
        lease.valid_until = time.monotonic() - 1.0
        self._changed.set()
        return lease

    def _free(self, lease: DeadlineLease) -> None:
        if self.holders.get(lease.role) is lease:
            del self.holders[lease.role]
            self._changed.set()


PAY_ROLE = "orders-1-consumer-1-of-1"


def adapters(scheduler: DeadlineScheduler) -> Adapters:
    store = MemoryRecordStore(keep_snapshots=True)
    return Adapters(MemoryStreamer(), store, scheduler)  # type: ignore[arg-type]


async def test_a_holder_past_its_deadline_does_not_write_the_step_result() -> None:
    # Given two instances on one set of adapters; A holds every role, and its pay step is
    # running (its side effect applied) when its lease runs out and B takes the role over
    scheduler = DeadlineScheduler()
    shared = adapters(scheduler)
    effects: list[str] = []
    gates = {"A": asyncio.Event(), "B": asyncio.Event()}

    def pay_in(name: str):  # type: ignore[no-untyped-def]
        async def pay(run: Run[Order, Status]) -> Status:
            effects.append(name)
            await gates[name].wait()
            run.object.id = f"paid by {name}"
            return Status.PAID

        return pay

    a, _ = build(order_builder(pay_in("A")), shared)
    b, _ = build(order_builder(pay_in("B")), shared)
    async with a:
        await eventually(lambda: a.states()["created-consumer-1-of-1"] is ProcessState.RUNNING)
        run_id = await a.trigger("order-1")
        await eventually(lambda: effects == ["A"])
        scheduler.expire(PAY_ROLE)
        async with b:
            await eventually(lambda: effects == ["A", "B"], what="B to run the step too")

            # When A's step returns after its deadline
            gates["A"].set()
            await settle()

            # Then A wrote nothing: the run is still at its first version
            assert (await shared.store.lookup(run_id)).version == 1

            # And B's write is the one stored, once
            gates["B"].set()
            done = await a.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)
    assert done.object.id == "paid by B"
    versions = [r.version for r in shared.store.snapshots(run_id)]
    assert versions == [1, 2, 3]
    # The step ran in both (at least once); its stored transition was applied once.
    assert effects == ["A", "B"]


async def test_no_handler_starts_after_the_deadline() -> None:
    # Given one instance whose pay consumer handles one run at a time, with run 1 in its step
    # and run 2 waiting behind it
    scheduler = DeadlineScheduler()
    calls: list[tuple[str, int]] = []  # (foreign ID, which lease of the role it ran under)
    gate = asyncio.Event()

    def holding() -> int:
        leases = [g for g in scheduler.grants if g.role == PAY_ROLE]
        return leases.index(scheduler.holders[PAY_ROLE]) + 1

    async def pay(run: Run[Order, Status]) -> Status:
        lease = holding()
        calls.append((run.foreign_id, lease))
        if lease == 1:
            await gate.wait()
        run.object.id = f"paid under lease {lease}"
        return Status.PAID

    wf, a = build(order_builder(pay, concurrency=1), adapters(scheduler))
    async with wf:
        first = await wf.trigger("order-1")
        second = await wf.trigger("order-2")
        await eventually(lambda: calls == [("order-1", 1)])

        # When the lease passes its deadline unnoticed (the watchdog has not run yet) and the
        # step of run 1 then returns
        lease = scheduler.holders[PAY_ROLE]
        lease.valid_until = time.monotonic() - 1.0
        gate.set()

        # Then the consumer gives the role up and takes it again: run 1's step runs again and
        # run 2's runs only under the new lease
        runs = []
        for foreign_id, run_id in (("order-1", first), ("order-2", second)):
            runs.append(await wf.wait_for(foreign_id, run_id, Status.SHIPPED, timeout=5))
    assert lease.released
    assert calls == [("order-1", 1), ("order-1", 2), ("order-2", 2)]
    # and run 1's result under the expired lease was never stored
    assert [r.object.id for r in runs] == ["paid under lease 2"] * 2
    assert [r.version for r in a.store.snapshots(first)] == [1, 2, 3]


async def test_the_watchdog_stops_the_work_when_the_deadline_passes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a scheduler whose leases are good for 0.2 s and never renewed
    scheduler = DeadlineScheduler(ttl=0.2)
    started = asyncio.Event()

    async def pay(run: Run[Order, Status]) -> Status:
        started.set()
        await asyncio.Event().wait()  # hangs: only the deadline ends it
        raise AssertionError("unreachable")

    wf, _ = build(order_builder(pay), adapters(scheduler))
    async with wf:
        await wf.trigger("order-1")
        await asyncio.wait_for(started.wait(), 5)
        first = scheduler.holders[PAY_ROLE]

        # When the deadline passes, Then the holder stops its work and releases the role
        await eventually(lambda: first.released, what="the expired lease to be released")
        await eventually(lambda: len([g for g in scheduler.grants if g.role == PAY_ROLE]) >= 2)
    assert "passed its deadline" in caplog.text


# ------------------------------------------------------------------ SQLite


async def test_sqlite_a_stalled_loop_past_the_ttl_does_not_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real case: a step blocks the event loop for longer than the SQLite lease's time to
    live; when it returns, its result is not stored; the step runs again (in whichever instance
    takes the role) and that result is stored once."""
    from statestream.adapters.sqlite import (
        SqliteDatabase,
        SqliteRecordStore,
        SqliteRoleScheduler,
        SqliteStreamer,
    )

    caplog.set_level(logging.INFO, "statestream")
    attempts: list[int] = []

    async def pay(run: Run[Order, Status]) -> Status:
        attempts.append(run.version)
        if len(attempts) == 1:
            time.sleep(1.0)  # noqa: ASYNC251 - the stall past the 0.3 s ttl is the point
        run.object.id = f"attempt {len(attempts)}"
        return Status.PAID

    dbs = [SqliteDatabase(tmp_path / "wf.db") for _ in range(2)]
    streamers = [SqliteStreamer(db) for db in dbs]
    workflows = [
        order_builder(pay).build(
            streamer,
            SqliteRecordStore(db),
            SqliteRoleScheduler(db, ttl=0.3, poll_interval=0.02),
        )
        for db, streamer in zip(dbs, streamers, strict=True)
    ]
    try:
        async with workflows[0], workflows[1]:
            run_id = await workflows[0].trigger("order-1")
            done = await workflows[0].wait_for("order-1", run_id, Status.SHIPPED, timeout=15)
        assert done.object.id == "attempt 2"
        assert attempts == [1, 1]
        assert done.version == 3
        assert "result discarded" not in caplog.text  # the late write was not even tried
    finally:
        for streamer in streamers:
            await streamer.close()
        for db in dbs:
            await db.close()


class _SwallowingReceiver:
    """A receiver whose ``recv`` answers our cancellation with an empty batch (as a driver
    behind Python 3.11's ``asyncio.wait_for`` can) instead of raising it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.swallowed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def recv(self, limit: int = 100) -> Any:
        try:
            return await self._inner.recv(limit)
        except asyncio.CancelledError:
            if self.swallowed:
                raise  # once is enough to show it
            self.swallowed += 1
            return []


class _SwallowingStreamer(MemoryStreamer):
    def __init__(self) -> None:
        super().__init__()
        self.receivers: list[_SwallowingReceiver] = []

    async def receiver(self, topic: str, name: str, **kwargs: Any) -> Any:
        receiver = _SwallowingReceiver(await super().receiver(topic, name, **kwargs))
        self.receivers.append(receiver)
        return receiver


async def test_a_lost_role_stops_its_consumer_even_if_the_receiver_swallows_the_cancellation() -> (
    None
):
    """Regression (a MariaDB restart under two workers): the consumer of a lost role is
    cancelled while its receiver is reading; the read swallowed the cancellation, the consumer
    went on waiting, and the worker kept the role in its books for ever, so nobody ran it."""
    scheduler = DeadlineScheduler()
    streamer = _SwallowingStreamer()
    a = Adapters(streamer, MemoryRecordStore(keep_snapshots=True), scheduler)  # type: ignore[arg-type]
    wf, _ = build(order_builder(), a)
    async with wf:
        await eventually(lambda: PAY_ROLE in scheduler.holders, what="the pay role to be held")
        first = scheduler.holders[PAY_ROLE]
        await settle()  # the consumer is waiting in recv
        scheduler.holders.pop(PAY_ROLE)
        first._lost.set()  # the lease is lost (a renewal failed)
        await eventually(
            lambda: sum(r.swallowed for r in streamer.receivers) > 0,
            what="the receiver to swallow the cancellation",
        )
        await eventually(
            lambda: sum(1 for g in scheduler.grants if g.role == PAY_ROLE) >= 2,
            timeout=3.0,
            what="the role to be acquired again after the loss",
        )
        run_id = await wf.trigger("after-the-loss", initial=Order(amount=1))
        run = await wf.wait_for("after-the-loss", run_id, Status.SHIPPED, timeout=5)
        assert run.status is Status.SHIPPED
