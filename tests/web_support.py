"""A small order workflow for the web UI's tests (its runs stay where they are put: the tests
do not start the workflow, so nothing moves them but the UI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import IntEnum
from typing import Any

from statestream import Builder, Run, after
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)

TOKEN = "operator-token-for-tests"
READ_TOKEN = "reader-token-for-tests"


class Status(IntEnum):
    CREATED = 1
    PAID = 2
    SHIPPED = 3
    CANCELLED_UNPAID = 4


@dataclass
class Order:
    id: str = ""
    amount: int = 0
    note: str = ""
    items: list[str] = field(default_factory=list)


async def pay(run: Run[Order, Status]) -> Status:
    return Status.PAID


async def ship(run: Run[Order, Status]) -> Status:
    return Status.SHIPPED


async def give_up(run: Run[Order, Status], now: Any) -> Status:
    return Status.CANCELLED_UNPAID


def make_workflow(store: Any = None, name: str = "orders") -> Any:
    b = Builder(name, Order, Status)
    b.add_step(Status.CREATED, pay, Status.PAID)
    b.add_step(Status.PAID, ship, Status.SHIPPED)
    b.add_timeout(Status.CREATED, after(timedelta(days=3)), give_up, Status.CANCELLED_UNPAID)
    return b.build(
        MemoryStreamer(),
        store if store is not None else MemoryRecordStore(keep_snapshots=True),
        MemoryRoleScheduler(),
        timeout_store=MemoryTimeoutStore(),
    )
