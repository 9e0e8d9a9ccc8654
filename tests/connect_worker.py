"""Two connected workflows, and a worker running one of them (tests/test_connect_workflows.py).

``orders`` (A): a run is packed (CREATED -> SHIPPED, a step) and waits at SHIPPED until a
``delivered`` callback moves it to DELIVERED (terminal). ``invoices`` (B) is connected to it: a
run of ``orders`` arriving at SHIPPED triggers an invoice for the order, which is billed
(OPEN -> BILLED, a step) and waits at BILLED; the order's completion at DELIVERED is delivered to
that invoice as a callback carrying the order (typed), which closes it (BILLED -> CLOSED).

Run as ``python tests/connect_worker.py DBPATH orders|invoices``: builds that workflow on
``SqliteDatabase(DBPATH)`` (the invoices worker connects to ``orders`` through its Builder only:
it never runs orders' processes), starts it, prints ``started`` and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from statestream import Builder, Callback, Run, Trigger, Workflow


class OrderStatus(IntEnum):
    CREATED = 1
    SHIPPED = 2
    DELIVERED = 3


@dataclass
class Order:
    id: str = ""
    amount: int = 0
    items: list[str] = field(default_factory=list)


class InvoiceStatus(IntEnum):
    OPEN = 1
    BILLED = 2
    CLOSED = 3


@dataclass
class Invoice:
    order_id: str = ""
    amount: int = 0
    delivered_items: list[str] = field(default_factory=list)


FAST: dict[str, Any] = {"error_backoff": 0.01, "max_error_backoff": 0.05, "polling_frequency": 0.01}


async def pack(run: Run[Order, OrderStatus]) -> OrderStatus:
    return OrderStatus.SHIPPED


async def delivered(run: Run[Order, OrderStatus], payload: bytes) -> OrderStatus:
    return OrderStatus.DELIVERED


def orders_builder() -> Builder[Order, OrderStatus]:
    b = Builder("orders", Order, OrderStatus)
    b.defaults(**FAST)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(OrderStatus.CREATED, pack, OrderStatus.SHIPPED)
    b.add_callback(OrderStatus.SHIPPED, delivered, OrderStatus.DELIVERED)
    return b


def invoice_for(order: Run[Order, OrderStatus]) -> Trigger[Invoice]:
    """orders at SHIPPED -> a new invoice for the order."""
    return Trigger(order.foreign_id, Invoice(order.object.id, order.object.amount))


def close_invoice(order: Run[Order, OrderStatus]) -> Callback:
    """orders completed at DELIVERED -> the invoice waiting at BILLED gets the order."""
    return Callback(order.foreign_id, InvoiceStatus.BILLED, order.object)


async def bill(run: Run[Invoice, InvoiceStatus]) -> InvoiceStatus:
    return InvoiceStatus.BILLED


async def on_delivered(run: Run[Invoice, InvoiceStatus], order: Order) -> InvoiceStatus:
    run.object.delivered_items = list(order.items)
    return InvoiceStatus.CLOSED


def invoices_builder(
    orders: Builder[Order, OrderStatus] | Workflow[Order, OrderStatus],
    *,
    shipped: Any = invoice_for,
    delivered_fn: Any = close_invoice,
    **options: Any,
) -> Builder[Invoice, InvoiceStatus]:
    b = Builder("invoices", Invoice, InvoiceStatus)
    b.defaults(**FAST)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(InvoiceStatus.OPEN, bill, InvoiceStatus.BILLED)
    b.add_callback(InvoiceStatus.BILLED, on_delivered, InvoiceStatus.CLOSED, payload_type=Order)
    b.connect(orders, at=OrderStatus.SHIPPED, to=shipped, **options)
    b.connect(orders, at=OrderStatus.DELIVERED, to=delivered_fn, **options)
    return b


async def serve(db_path: Path, which: str) -> None:
    from statestream.adapters.sqlite import (
        SqliteDatabase,
        SqliteRecordStore,
        SqliteRoleScheduler,
        SqliteStreamer,
    )

    db = SqliteDatabase(db_path, synchronous="NORMAL")
    streamer = SqliteStreamer(db)
    b: Builder[Any, Any] = (
        orders_builder() if which == "orders" else invoices_builder(orders_builder())
    )
    wf = b.build(
        streamer,
        SqliteRecordStore(db),
        SqliteRoleScheduler(db, ttl=2.0, poll_interval=0.02),
        pause_retry=None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await wf.start()
        print(f"{which} worker {os.getpid()} started", flush=True)
        await stop.wait()
        await wf.stop(grace=5.0)
    finally:
        await streamer.close()
        await db.close()
    print(f"{which} worker {os.getpid()} stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("workflow", choices=("orders", "invoices"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d %(message)s")
    asyncio.run(serve(args.db, args.workflow))
    return 0


if __name__ == "__main__":
    sys.exit(main())
