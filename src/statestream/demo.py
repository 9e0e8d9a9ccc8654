"""``python -m statestream.demo``: an order pipeline, with progress and a summary.

It runs on the in-memory adapters for now; the embedded SQLite default replaces them when it
lands. Steps sleep a little, one in seven payments fails once (and is retried with backoff), and
one order in twenty is refused (a branch) to show every path.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from . import Builder, Run, RunState
from .adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer


class OrderStatus(enum.IntEnum):
    CREATED = 1
    PAYMENT_TAKEN = 2
    PAYMENT_REFUSED = 3
    PACKED = 4
    SHIPPED = 5


@dataclass
class Order:
    id: str = ""
    amount: int = 0
    attempts: int = 0
    events: list[str] = field(default_factory=list)


class FlakyGateway(Exception):
    """Stands in for a payment provider timing out."""


async def take_payment(run: Run[Order, OrderStatus]) -> OrderStatus:
    order = run.object
    await asyncio.sleep(0.002)
    order.attempts += 1
    if order.attempts == 1 and hash(order.id) % 7 == 0:
        raise FlakyGateway(f"gateway timed out for {order.id}")
    if order.amount % 20 == 13:
        order.events.append("refused")
        return OrderStatus.PAYMENT_REFUSED
    order.events.append("paid")
    return OrderStatus.PAYMENT_TAKEN


def pack(run: Run[Order, OrderStatus]) -> OrderStatus:
    time.sleep(0.001)  # a plain function: it runs in a worker thread, off the event loop
    run.object.events.append("packed")
    return OrderStatus.PACKED


async def ship(run: Run[Order, OrderStatus]) -> OrderStatus:
    await asyncio.sleep(0.001)
    run.object.events.append("shipped")
    return OrderStatus.SHIPPED


def build_workflow() -> Builder[Order, OrderStatus]:
    b = Builder("orders", Order, OrderStatus)
    b.defaults(error_backoff=0.05, max_error_backoff=0.5)
    b.add_step(
        OrderStatus.CREATED,
        take_payment,
        OrderStatus.PAYMENT_TAKEN,
        OrderStatus.PAYMENT_REFUSED,
        parallel_count=2,
    )
    b.add_step(OrderStatus.PAYMENT_TAKEN, pack, OrderStatus.PACKED)
    b.add_step(OrderStatus.PACKED, ship, OrderStatus.SHIPPED)
    return b


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


async def main(orders: int) -> int:
    store = MemoryRecordStore()
    completed = 0

    async def count_complete(run: Run[Order, OrderStatus]) -> None:
        nonlocal completed
        completed += 1

    builder = build_workflow()
    builder.on_complete(count_complete)
    wf = builder.build(MemoryStreamer(), store, MemoryRoleScheduler())
    tty = sys.stdout.isatty()
    print(f"statestream demo: {orders} orders through workflow {wf.name!r}\n")
    started = time.perf_counter()
    async with wf:
        for i in range(orders):
            await wf.trigger(f"order-{i}", initial=Order(id=f"order-{i}", amount=i))
        last = -1
        while completed < orders:
            if completed != last:
                line = _bar(completed, orders)
                print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
                last = completed
            if time.perf_counter() - started > 60:
                print("\ndemo did not finish within 60 s")
                return 1
            await asyncio.sleep(0.05)
        print(("\r" if tty else "") + _bar(completed, orders))
    elapsed = time.perf_counter() - started

    records = await store.list("orders", limit=orders + 1)
    by_status = Counter(OrderStatus(r.status).name for r in records)
    by_state = Counter(r.run_state.label for r in records)
    retried = sum(1 for r in records if wf.to_run(r).object.attempts > 1)
    print(f"\n{len(records)} runs in {elapsed:.2f}s ({len(records) / elapsed:.0f} runs/s)")
    print(f"{'status':<20}{'runs':>6}")
    for status in OrderStatus:
        print(f"{status.name:<20}{by_status.get(status.name, 0):>6}")
    print(f"\nrun states: {dict(by_state)}; payments retried after an error: {retried}")
    print("\n" + wf.mermaid())
    ok = by_state.get(RunState.COMPLETED.label, 0) == orders
    return 0 if ok else 1


def cli() -> None:
    parser = argparse.ArgumentParser(description="statestream demo: an order pipeline")
    parser.add_argument("--orders", type=int, default=200)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.orders)))


if __name__ == "__main__":
    cli()
