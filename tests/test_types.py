"""Static types of the public API: mypy checks the assert_type calls (``mypy tests/test_types.py``),
pytest runs them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import assert_type

from statestream import Builder, Run, Workflow
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer


class Status(IntEnum):
    CREATED = 1
    PAID = 2
    SHIPPED = 3


@dataclass
class Order:
    id: str = ""
    amount: int = 0
    paid: bool = False


async def pay(run: Run[Order, Status]) -> Status:
    assert_type(run.object, Order)
    assert_type(run.status, Status)
    run.object.paid = True
    return Status.PAID


def ship(run: Run[Order, Status]) -> Status:
    return Status.SHIPPED


async def test_public_api_types() -> None:
    b = Builder("typed-orders", Order, Status)
    assert_type(b, Builder[Order, Status])
    assert_type(b.add_step(Status.CREATED, pay, Status.PAID), Builder[Order, Status])
    b.add_step(Status.PAID, ship, Status.SHIPPED)
    b.defaults(error_backoff=0.01, polling_frequency=0.01).outbox(polling_frequency=0.01)

    wf = b.build(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler())
    assert_type(wf, Workflow[Order, Status])
    async with wf:
        run_id = await wf.trigger("order-1", initial=Order("order-1", 100))
        assert_type(run_id, str)
        run = await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)
        assert_type(run, Run[Order, Status])
        assert_type(run.object, Order)
        assert_type(run.status, Status)
        assert_type(await wf.get(run_id), Run[Order, Status])
        assert_type(await wf.latest("order-1"), Run[Order, Status])

    assert run.object == Order("order-1", 100, paid=True)
    assert run.status is Status.SHIPPED
