"""``python -m statestream.demo``: an order pipeline, with progress and a summary.

It shows every part of a workflow: steps (async and a plain function run in a thread), a branch,
a callback standing in for a payment provider's webhook, a timeout for orders whose payment never
arrives, a schedule that triggers a subscription order every second, retries after errors, and a
hook. It runs on the embedded default, one SQLite file (``--memory`` for the in-memory adapters).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from . import Builder, RecordNotFound, RecordStore, Run, RunState, Workflow, after
from .adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from .adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
    SqliteTimeoutStore,
)


class OrderStatus(enum.IntEnum):
    CREATED = 1
    AWAITING_PAYMENT = 2
    PAID = 3
    PAYMENT_DECLINED = 4
    PAYMENT_EXPIRED = 5
    PACKED = 6
    SHIPPED = 7


@dataclass
class Order:
    id: str = ""
    amount: int = 0
    payment_ref: str = ""
    history: list[str] = field(default_factory=list)


@dataclass
class PaymentNotice:
    """What the payment provider's webhook posts (JSON)."""

    reference: str
    approved: bool


class GatewayTimeout(Exception):
    """Stands in for a flaky payment provider."""


provider_errors = 0


async def request_payment(run: Run[Order, OrderStatus]) -> OrderStatus:
    global provider_errors
    order = run.object
    await asyncio.sleep(0.002)  # the call to the provider
    if random.random() < 0.1:
        provider_errors += 1
        raise GatewayTimeout(f"provider timed out for {order.id}")  # retried with backoff
    order.payment_ref = f"pay-{order.id}"
    order.history.append("payment requested")
    return OrderStatus.AWAITING_PAYMENT


def on_payment(run: Run[Order, OrderStatus], notice: PaymentNotice) -> OrderStatus:
    run.object.history.append(f"webhook: approved={notice.approved}")
    return OrderStatus.PAID if notice.approved else OrderStatus.PAYMENT_DECLINED


async def payment_expired(run: Run[Order, OrderStatus], now: object) -> OrderStatus:
    run.object.history.append("no payment in time")
    return OrderStatus.PAYMENT_EXPIRED


def pack(run: Run[Order, OrderStatus]) -> OrderStatus:
    time.sleep(0.001)  # a plain function: it runs in a worker thread, off the event loop
    run.object.history.append("packed")
    return OrderStatus.PACKED


async def ship(run: Run[Order, OrderStatus]) -> OrderStatus:
    await asyncio.sleep(0.001)
    run.object.history.append("shipped")
    return OrderStatus.SHIPPED


def build_workflow(payment_window: float) -> Builder[Order, OrderStatus]:
    b = Builder("orders", Order, OrderStatus)
    b.defaults(error_backoff=0.05, max_error_backoff=0.5, polling_frequency=0.1)
    b.add_step(
        OrderStatus.CREATED,
        request_payment,
        OrderStatus.AWAITING_PAYMENT,
        parallel_count=2,
    )
    b.add_callback(
        OrderStatus.AWAITING_PAYMENT,
        on_payment,
        OrderStatus.PAID,
        OrderStatus.PAYMENT_DECLINED,
        payload_type=PaymentNotice,
    )
    b.add_timeout(
        OrderStatus.AWAITING_PAYMENT,
        after(timedelta(seconds=payment_window)),
        payment_expired,
        OrderStatus.PAYMENT_EXPIRED,
        polling_frequency=0.1,
    )
    b.add_step(OrderStatus.PAID, pack, OrderStatus.PACKED)
    b.add_step(OrderStatus.PACKED, ship, OrderStatus.SHIPPED)
    return b


async def payment_provider(wf: Workflow[Order, OrderStatus], orders: int) -> None:
    """Posts webhooks: most orders are approved, some declined, some never answered."""
    pending = {f"order-{i}" for i in range(orders)}
    while pending:
        for foreign_id in list(pending):
            try:
                run = await wf.latest(foreign_id)
            except RecordNotFound:
                continue  # not triggered yet
            if run.status is not OrderStatus.AWAITING_PAYMENT:
                if run.run_state.finished:
                    pending.discard(foreign_id)
                continue
            pending.discard(foreign_id)
            n = int(foreign_id.rsplit("-", 1)[1])
            if n % 17 == 5:
                continue  # the provider never answers: the timeout expires the order
            approved = "true" if n % 11 != 3 else "false"
            body = f'{{"reference": "{run.object.payment_ref}", "approved": {approved}}}'
            await wf.callback(foreign_id, OrderStatus.AWAITING_PAYMENT, body.encode())
        await asyncio.sleep(0.02)


def _remove_database(path: str) -> None:
    """The demo starts from an empty file each time."""
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


class _Progress:
    """Rich's progress bar (the ``cli`` extra); without Rich, a plain line now and then."""

    def __init__(self) -> None:
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            self.progress = None
            self.last = -1
            return
        tty = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        self.progress = Progress(
            TextColumn("runs finished"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(force_terminal=tty or None, no_color=not tty, highlight=False),
        )
        self.task = self.progress.add_task("runs", total=None)

    def __enter__(self) -> _Progress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total)
        elif done != self.last:
            print(f"{done}/{total} runs finished", flush=True)
            self.last = done


async def main(
    orders: int, payment_window: float, db_path: str | None = None, memory: bool = False
) -> int:
    finished = 0

    async def count(run: Run[Order, OrderStatus]) -> None:
        nonlocal finished
        finished += 1

    builder = build_workflow(payment_window)
    builder.on_complete(count)
    db: SqliteDatabase | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if memory:
        store: RecordStore = MemoryRecordStore()
        wf = builder.build(
            MemoryStreamer(), store, MemoryRoleScheduler(), timeout_store=MemoryTimeoutStore()
        )
        where = "in-memory adapters"
    else:
        if db_path is None:
            tmp = tempfile.TemporaryDirectory(prefix="statestream-demo-")
            db_path = str(Path(tmp.name) / "demo.db")
        _remove_database(db_path)
        db = SqliteDatabase(db_path)
        streamer = SqliteStreamer(db)
        store = SqliteRecordStore(db, publish_to=streamer)
        wf = builder.build(
            streamer,
            store,
            SqliteRoleScheduler(db, poll_interval=0.1),
            timeout_store=SqliteTimeoutStore(db),
        )
        where = f"SQLite file {db_path} (WAL, synchronous=FULL)"
    logging.getLogger("statestream").setLevel(logging.ERROR)  # the summary counts the retries
    print(f"statestream demo: {orders} orders through workflow {wf.name!r}")
    print(f"on the {where}; a subscription order is also scheduled @every 1s\n")
    started = time.perf_counter()
    async with wf:
        schedule = wf.schedule("subscription", "@every 1s", initial=Order("subscription", 42))
        provider = asyncio.create_task(payment_provider(wf, orders))
        for i in range(orders):
            await wf.trigger(f"order-{i}", initial=Order(id=f"order-{i}", amount=10 + i))
        with _Progress() as bar:
            while (
                finished < orders + schedule.triggered
                or not provider.done()
                or schedule.triggered < 2
            ):
                bar.update(finished, orders + schedule.triggered)
                if time.perf_counter() - started > 50:
                    bar.update(finished, orders + schedule.triggered)
                    print("\ndemo did not finish within 50 s")
                    return 1
                await asyncio.sleep(0.05)
            await provider
            bar.update(finished, orders + schedule.triggered)
    elapsed = time.perf_counter() - started

    records = await store.list("orders", limit=orders + 1000)
    by_status = Counter(OrderStatus(r.status).name for r in records)
    by_state = Counter(r.run_state.label for r in records)
    print(f"\n{len(records)} runs in {elapsed:.1f}s, {schedule.triggered} of them by the schedule")
    print(f"\n{'status':<20}{'runs':>6}")
    for status in OrderStatus:
        print(f"{status.name:<20}{by_status.get(status.name, 0):>6}")
    print(f"\nrun states: {dict(by_state)}")
    print(f"provider errors retried with backoff: {provider_errors}")
    print("\n" + wf.mermaid())
    if db is not None:
        print(f"{db.writes} writes in {db.commits} commits (group commit)")
        await db.close()
    if tmp is not None:
        tmp.cleanup()
    return 0 if by_state.get(RunState.COMPLETED.label, 0) == len(records) else 1


def cli() -> None:
    parser = argparse.ArgumentParser(description="statestream demo: an order pipeline")
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--payment-window", type=float, default=1.0, help="seconds")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", help="SQLite file to use (replaced); default: a temporary file")
    where.add_argument("--memory", action="store_true", help="use the in-memory adapters")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.orders, args.payment_window, args.db, args.memory)))


if __name__ == "__main__":
    cli()
