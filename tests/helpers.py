"""Shared workflow fixtures for the engine tests: the orders example, fast options, polling."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any, TypeVar

from statestream import Builder, Run, Workflow
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
    SqliteTimeoutStore,
)
from statestream.testing import FakeClock


class Status(IntEnum):
    CREATED = 1
    PAID = 2
    SHIPPED = 3
    REFUNDED = 4  # a member that is not part of the default graph


@dataclass
class Order:
    id: str = ""
    amount: int = 0
    paid: bool = False
    attempts: int = 0


@dataclass
class Adapters:
    """One set of memory adapters; two workflows sharing one simulate two processes."""

    streamer: MemoryStreamer = field(default_factory=MemoryStreamer)
    # The tests read runs' histories (store.snapshots), which the store keeps only when asked.
    store: MemoryRecordStore = field(default_factory=lambda: MemoryRecordStore(keep_snapshots=True))
    scheduler: MemoryRoleScheduler = field(default_factory=MemoryRoleScheduler)


@dataclass
class ClockedAdapters:
    """One memory or SQLite adapter set on one fake clock; workflows built on it share it (one
    per process). ``new_scheduler()`` gives roles held apart from the set's own scheduler (two
    processes that both believe they hold a role)."""

    streamer: Any
    store: Any
    timeouts: Any
    scheduler: Any
    clock: FakeClock
    new_scheduler: Callable[[], Any] = MemoryRoleScheduler


E = TypeVar("E", bound=ClockedAdapters)


@contextlib.asynccontextmanager
async def clocked_adapters(
    kind: str,
    cls: type[E],
    *,
    memory_timeouts: Callable[[FakeClock], Any] = MemoryTimeoutStore,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
) -> AsyncIterator[E]:
    """A ``kind`` ("memory" or "sqlite", on a temporary file) adapter set as ``cls``."""
    clock = FakeClock(start)
    if kind == "memory":
        yield cls(
            MemoryStreamer(clock),
            MemoryRecordStore(clock),
            memory_timeouts(clock),
            MemoryRoleScheduler(),
            clock,
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "adapters.db", synchronous="NORMAL")
        streamer = SqliteStreamer(db)
        try:
            yield cls(
                streamer,
                SqliteRecordStore(db),
                SqliteTimeoutStore(db),
                SqliteRoleScheduler(db, ttl=2.0, poll_interval=0.02),
                clock,
            )
        finally:
            await streamer.close()
            await db.close()


async def pay(run: Run[Order, Status]) -> Status:
    run.object.paid = True
    return Status.PAID


async def ship(run: Run[Order, Status]) -> Status:
    return Status.SHIPPED


def fast(b: Builder[Order, Status]) -> Builder[Order, Status]:
    """Options that keep retries, polling and the outbox relay in the millisecond range."""
    b.defaults(error_backoff=0.01, max_error_backoff=0.02, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    return b


def order_builder(
    pay_step: Any = pay,
    ship_step: Any = ship,
    *,
    name: str = "orders",
    **pay_options: Any,
) -> Builder[Order, Status]:
    """The orders example: CREATED -pay-> PAID -ship-> SHIPPED, with fast options."""
    b = fast(Builder(name, Order, Status))
    b.add_step(Status.CREATED, pay_step, Status.PAID, **pay_options)
    b.add_step(Status.PAID, ship_step, Status.SHIPPED)
    return b


def build(
    b: Builder[Order, Status], adapters: Adapters | None = None, **kwargs: Any
) -> tuple[Workflow[Order, Status], Adapters]:
    a = adapters or Adapters()
    return b.build(a.streamer, a.store, a.scheduler, **kwargs), a


async def eventually(
    condition: Callable[[], Any], *, timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``condition`` (sync, or returning an awaitable) every few ms until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.002)


async def advance_until(
    clock: FakeClock,
    condition: Callable[[], Any],
    *,
    step: float = 1.0,
    timeout: float = 5.0,
    what: str = "condition",
) -> None:
    """Move the fake clock by ``step`` every 5 ms of real time until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        clock.advance(step)
        await asyncio.sleep(0.005)


async def settle() -> None:
    """Give the background processes a moment of real time to react (and show nothing moved)."""
    await asyncio.sleep(0.05)


async def outbox_drained(store: MemoryRecordStore, workflow: str, *, timeout: float = 5.0) -> None:
    """Wait until the relay has published every pending outbox event of ``workflow``."""
    deadline = time.monotonic() + timeout
    while await store.list_outbox(workflow, 1):
        if time.monotonic() > deadline:
            raise AssertionError(f"outbox of {workflow!r} still not empty after {timeout} s")
        await asyncio.sleep(0.002)
