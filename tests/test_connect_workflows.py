"""Connecting two workflows (``Builder.connect``): B's runs start or move when A's runs reach a
status, with A's object typed; over the memory and the SQLite adapters, and across processes.

The workflows (``orders`` = A, ``invoices`` = B) are defined in tests/connect_worker.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import IO, Any

import msgspec
import pytest

import connect_worker as cw
from connect_worker import Invoice, InvoiceStatus, Order, OrderStatus
from helpers import eventually, settle
from statestream import (
    Builder,
    Callback,
    ConfigurationError,
    Message,
    NullObserver,
    OutboxEvent,
    ProcessState,
    Record,
    RecordFilter,
    Run,
    RunState,
    Trigger,
    Work,
    Workflow,
    status_topic,
)
from statestream._core.records import shard_of
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
)

SHIPPED_TOPIC = status_topic("orders", OrderStatus.SHIPPED)
SHIPPED_PROCESS = "orders-shipped-connection-to-invoices-consumer-1-of-1"
DELIVERED_PROCESS = "orders-delivered-connection-to-invoices-consumer-1-of-1"


@dataclass
class Env:
    """One adapter set; the workflows built on it share it (as if in one database)."""

    streamer: Any
    store: Any
    scheduler: Any
    workflows: list[Workflow[Any, Any]] = field(default_factory=list)

    def build(self, b: Builder[Any, Any], **kwargs: Any) -> Workflow[Any, Any]:
        wf = b.build(self.streamer, self.store, self.scheduler, pause_retry=None, **kwargs)
        self.workflows.append(wf)
        return wf

    async def invoices(self) -> list[Record]:
        return await self.store.list("invoices", limit=1000)


@pytest.fixture(params=["memory", "sqlite", "sqlite-direct"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """Memory adapters; SQLite with the outbox relay; SQLite whose store writes each event in
    the record's transaction (``publish_to``)."""
    if request.param == "memory":
        e = Env(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler())
        yield e
        for wf in e.workflows:
            await wf.stop()
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "connect.db", synchronous="NORMAL")
        streamer = SqliteStreamer(db)
        direct = streamer if request.param == "sqlite-direct" else None
        scheduler = SqliteRoleScheduler(db, ttl=2.0, poll_interval=0.02)
        e = Env(streamer, SqliteRecordStore(db, publish_to=direct), scheduler)
        try:
            yield e
        finally:
            for wf in e.workflows:
                await wf.stop()
            await streamer.close()
            await db.close()


async def at_status(wf: Workflow[Any, Any], foreign_id: str, status: IntEnum) -> Run[Any, Any]:
    """Wait until the latest run of ``foreign_id`` in ``wf`` exists and is at ``status``."""
    found: list[Run[Any, Any]] = []

    async def check() -> bool:
        try:
            run = await wf.latest(foreign_id)
        except Exception:
            return False
        if run.status == status:
            found.append(run)
            return True
        return False

    await eventually(check, what=f"{wf.name} run of {foreign_id} at {status.name}")
    return found[-1]


# ------------------------------------------------------------------------------ the golden path


async def test_a_run_reaching_a_status_starts_a_b_run_and_its_completion_moves_it(
    env: Env,
) -> None:
    # Given orders (A) and invoices (B), connected at SHIPPED (trigger) and DELIVERED (callback)
    orders = env.build(cw.orders_builder())
    invoices = env.build(cw.invoices_builder(orders))
    async with orders, invoices:
        # When an order is shipped
        await orders.trigger("o-1", initial=Order("o-1", 250, ["book", "lamp"]))
        # Then an invoice is started for it, from the order's (typed) object, and billed
        billed = await at_status(invoices, "o-1", InvoiceStatus.BILLED)
        assert billed.object == Invoice("o-1", 250, [])
        # And when the order is delivered (A completes), the invoice gets the order and closes
        await orders.callback("o-1", OrderStatus.SHIPPED, b"")
        closed = await at_status(invoices, "o-1", InvoiceStatus.CLOSED)
        assert closed.object == Invoice("o-1", 250, ["book", "lamp"])
        assert closed.run_state is RunState.COMPLETED
        states = invoices.states()
        assert states[SHIPPED_PROCESS] is ProcessState.RUNNING
        assert states[DELIVERED_PROCESS] is ProcessState.RUNNING
        info = invoices.process_info()[SHIPPED_PROCESS]
        assert info.role == SHIPPED_PROCESS
        assert info.errors == 0
        assert info.skipped == 0
    assert set(invoices.states().values()) == {ProcessState.SHUTDOWN}


async def test_a_workflow_on_other_adapters_is_read_through_its_own(tmp_path: Path) -> None:
    # Given A on its own SQLite file, and B in memory, connected to A's Workflow
    db = SqliteDatabase(tmp_path / "orders.db", synchronous="NORMAL")
    a_streamer = SqliteStreamer(db)
    orders = cw.orders_builder().build(
        a_streamer, SqliteRecordStore(db), SqliteRoleScheduler(db, ttl=2.0, poll_interval=0.02)
    )
    b_store = MemoryRecordStore()
    invoices = cw.invoices_builder(orders).build(
        MemoryStreamer(), b_store, MemoryRoleScheduler(), pause_retry=None
    )
    try:
        async with orders, invoices:
            await orders.trigger("o-1", initial=Order("o-1", 3, ["tea"]))
            await at_status(invoices, "o-1", InvoiceStatus.BILLED)
            await orders.callback("o-1", OrderStatus.SHIPPED, b"")
            closed = await at_status(invoices, "o-1", InvoiceStatus.CLOSED)
        # Then A's events and runs were read where A keeps them, and B's run lives in B's store
        assert closed.object == Invoice("o-1", 3, ["tea"])
        assert [r.foreign_id for r in await b_store.list("invoices")] == ["o-1"]
        assert await SqliteRecordStore(db).list("invoices") == []
    finally:
        await a_streamer.close()
        await db.close()


class ParcelStatus(IntEnum):
    LABELLED = 1
    POSTED = 2


class Parcel(msgspec.Struct):
    id: str
    weight_g: int
    posted_at: datetime | None = None


async def test_the_other_workflows_object_is_decoded_with_its_codec_typed(env: Env) -> None:
    # Given A whose object is a msgspec Struct, and B connected at A's terminal status
    a: Builder[Parcel, ParcelStatus] = Builder("parcels", Parcel, ParcelStatus)
    a.defaults(**cw.FAST).outbox(polling_frequency=0.01)

    async def post(run: Run[Parcel, ParcelStatus]) -> ParcelStatus:
        run.object.posted_at = datetime(2026, 5, 1, 12, tzinfo=UTC)
        return ParcelStatus.POSTED

    a.add_step(ParcelStatus.LABELLED, post, ParcelStatus.POSTED)
    seen: list[Run[Parcel, ParcelStatus]] = []

    def on_posted(run: Run[Parcel, ParcelStatus]) -> Trigger[Invoice]:  # a plain def: a thread
        seen.append(run)
        return Trigger(run.object.id, Invoice(run.object.id, run.object.weight_g))

    b = fast_invoices()
    b.connect(a, at=ParcelStatus.POSTED, to=on_posted)  # through A's Builder
    parcels, invoices = env.build(a), env.build(b)
    async with parcels, invoices:
        await parcels.trigger("p-1", initial=Parcel("p-1", 1200))
        await at_status(invoices, "p-1", InvoiceStatus.BILLED)
    # Then the function saw A's run as A stores it: a Parcel with its datetime, at POSTED
    (run,) = seen
    assert isinstance(run.object, Parcel)
    assert run.object == Parcel("p-1", 1200, datetime(2026, 5, 1, 12, tzinfo=UTC))
    assert run.status is ParcelStatus.POSTED
    assert run.run_state is RunState.COMPLETED
    assert run.workflow_name == "parcels"
    assert run.foreign_id == "p-1"


def fast_invoices() -> Builder[Invoice, InvoiceStatus]:
    b = Builder("invoices", Invoice, InvoiceStatus)
    b.defaults(**cw.FAST).outbox(polling_frequency=0.01)
    b.add_step(InvoiceStatus.OPEN, cw.bill, InvoiceStatus.BILLED)
    b.add_callback(InvoiceStatus.BILLED, cw.on_delivered, InvoiceStatus.CLOSED, payload_type=Order)
    return b


# ------------------------------------------------------------------------------ redelivery


def arrival(record: Record, topic: str) -> Message:
    """The event A published for the write of ``record`` (as the relay would publish it again)."""
    headers = {
        "workflow_name": record.workflow_name,
        "foreign_id": record.foreign_id,
        "run_id": record.run_id,
        "topic": topic,
        "run_state": str(int(record.run_state)),
        "record_version": str(record.version),
    }
    return Message(record.run_id, record.status, headers, record.updated_at)


class Skips(NullObserver):
    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self.work: list[Work] = []
        self.failed: list[BaseException] = []

    def event_skipped(self, workflow: str, process: str, event: Any, reason: str) -> None:
        self.reasons[reason.split(":")[0]] += 1

    def work_started(self, work: Work) -> object:
        self.work.append(work)
        return None

    def work_finished(
        self, work: Work, token: object, seconds: float, error: BaseException | None
    ) -> None:
        if error is not None:
            self.failed.append(error)


async def test_an_event_of_a_delivered_twice_moves_b_once(env: Env) -> None:
    # Given an order that went all the way, and its invoice closed
    calls: Counter[str] = Counter()

    def shipped(run: Run[Order, OrderStatus]) -> Trigger[Invoice]:
        calls["shipped"] += 1
        return cw.invoice_for(run)

    def delivered(run: Run[Order, OrderStatus]) -> Callback:
        calls["delivered"] += 1
        return cw.close_invoice(run)

    orders = env.build(cw.orders_builder())
    skips = Skips()
    invoices = env.build(
        cw.invoices_builder(orders, shipped=shipped, delivered_fn=delivered), observer=skips
    )
    async with orders, invoices:
        run_id = await orders.trigger("o-1", initial=Order("o-1", 10, ["pen"]))
        await at_status(invoices, "o-1", InvoiceStatus.BILLED)
        await orders.callback("o-1", OrderStatus.SHIPPED, b"")
        closed = await at_status(invoices, "o-1", InvoiceStatus.CLOSED)
        assert calls == {"shipped": 1, "delivered": 1}

        # When both of A's events are delivered again (a relay that published and died before
        # deleting its outbox rows; a consumer that handled and died before acknowledging)
        done = await env.store.lookup(run_id)  # version 3: created 1, shipped 2, delivered 3
        shipped_at = dataclasses.replace(
            done, status=OrderStatus.SHIPPED, run_state=RunState.RUNNING, version=2
        )
        await env.streamer.publish(SHIPPED_TOPIC, [arrival(shipped_at, SHIPPED_TOPIC)])
        await env.streamer.publish(
            "orders-run-state-change", [arrival(done, "orders-run-state-change")]
        )
        await eventually(lambda: calls == {"shipped": 2, "delivered": 2}, what="redelivered")
        await eventually(
            lambda: (
                skips.reasons["already triggered"] == 1 and skips.reasons["record finished"] == 1
            ),
            what="both redeliveries skipped",
        )

    # Then B moved once: one invoice (though its run finished, so a second trigger would be
    # accepted), closed once, at the same version
    records = await env.invoices()
    assert len(records) == 1
    assert (await invoices.latest("o-1")).version == closed.version == 3


async def test_a_callback_that_comes_before_its_run_waits_for_it(env: Env) -> None:
    # Given the SHIPPED connection is slow (the trigger comes late), the DELIVERED one is not
    slow = asyncio.Event()

    async def shipped(run: Run[Order, OrderStatus]) -> Trigger[Invoice]:
        await slow.wait()
        return cw.invoice_for(run)

    skips = Skips()
    orders = env.build(cw.orders_builder())
    invoices = env.build(cw.invoices_builder(orders, shipped=shipped), observer=skips)
    async with orders, invoices:
        # When the order is shipped and delivered before its invoice exists
        await orders.trigger("o-1", initial=Order("o-1", 7, ["cup"]))
        await at_status(orders, "o-1", OrderStatus.SHIPPED)
        await orders.callback("o-1", OrderStatus.SHIPPED, b"")
        await at_status(orders, "o-1", OrderStatus.DELIVERED)
        await eventually(lambda: bool(skips.failed), what="the callback waiting")
        slow.set()
        # Then the callback is retried until the invoice waits at BILLED, and applied there
        closed = await at_status(invoices, "o-1", InvoiceStatus.CLOSED)
    assert closed.object == Invoice("o-1", 7, ["cup"])
    assert invoices.process_info()[DELIVERED_PROCESS].parked == 0
    assert {type(e).__name__ for e in skips.failed} == {"NotYet"}


# ------------------------------------------------------------------------------ late deployment


async def connection_listening(env: Env, invoices: Workflow[Any, Any], shards: int = 2) -> None:
    """Wait until every shard of the SHIPPED connection reads A's topic: a new consumer starts
    at the newest event, so an order shipped before it opened its receiver would be missed
    without catch-up. Probe messages (not arrivals), one per shard, are published until each
    shard has skipped one."""
    names = [
        f"orders-shipped-connection-to-invoices-consumer-{i + 1}-of-{shards}" for i in range(shards)
    ]
    keys = {shard_of(f"probe-{n}", shards): f"probe-{n}" for n in range(100)}
    before = {name: invoices.process_info()[name].skipped for name in names}

    async def every_shard_skipped_a_probe() -> bool:
        now = datetime.now(UTC)
        probes = [Message(keys[i], 0, {"workflow_name": "orders"}, now) for i in range(shards)]
        await env.streamer.publish(SHIPPED_TOPIC, probes)
        await asyncio.sleep(0.02)
        info = invoices.process_info()
        return all(info[name].skipped > before[name] for name in names)

    await eventually(every_shard_skipped_a_probe, what="the connection listening")


@pytest.mark.parametrize("catch_up", [True, False])
async def test_b_deployed_after_a_does_not_replay_as_history(env: Env, catch_up: bool) -> None:
    # Given A has been running alone: five orders delivered (history), three waiting at SHIPPED
    orders = env.build(cw.orders_builder())
    async with orders:
        for i in range(5):
            await orders.trigger(f"old-{i}")
            await at_status(orders, f"old-{i}", OrderStatus.SHIPPED)
            await orders.callback(f"old-{i}", OrderStatus.SHIPPED, b"")
            await at_status(orders, f"old-{i}", OrderStatus.DELIVERED)
        for i in range(3):
            await orders.trigger(f"waiting-{i}")
            await at_status(orders, f"waiting-{i}", OrderStatus.SHIPPED)

        # When B is deployed, then a new order is shipped
        # (in two shards: each catches up its own share of the runs at SHIPPED)
        invoices = env.build(cw.invoices_builder(orders, catch_up=catch_up, parallel_count=2))
        async with invoices:
            await connection_listening(env, invoices)
            await orders.trigger("new-0")
            await at_status(invoices, "new-0", InvoiceStatus.BILLED)
            if catch_up:
                for i in range(3):
                    await at_status(invoices, f"waiting-{i}", InvoiceStatus.BILLED)
            await settle()
            # Then B started invoices for the new order, and (with catch-up) for the orders at
            # SHIPPED now, but none for the orders whose history lies before B existed
            got = sorted(r.foreign_id for r in await env.invoices())
            waiting = [f"waiting-{i}" for i in range(3)] if catch_up else []
            assert got == sorted(["new-0", *waiting])
            # And a waiting order that is delivered now closes its invoice
            if catch_up:
                await orders.callback("waiting-1", OrderStatus.SHIPPED, b"")
                await at_status(invoices, "waiting-1", InvoiceStatus.CLOSED)

        # And a restarted B (its consumers known now) neither catches up nor replays again
        await orders.trigger("new-1")
        await at_status(orders, "new-1", OrderStatus.SHIPPED)
        again = env.build(cw.invoices_builder(orders, catch_up=catch_up, parallel_count=2))
        async with again:
            await at_status(again, "new-1", InvoiceStatus.BILLED)  # published while B was down
            await settle()
        assert len(await env.invoices()) == len(got) + 1


# ------------------------------------------------------------------------------ bad input


async def put_order(env: Env, foreign_id: str, data: bytes) -> Record:
    """Store a run of A at SHIPPED directly (object bytes as given), and publish its event."""
    now = datetime.now(UTC)
    record = Record(
        "orders", foreign_id, f"run-{foreign_id}", RunState.RUNNING, 2, data, now, now, 1
    )
    message = arrival(record, SHIPPED_TOPIC)
    await env.store.create(
        record, OutboxEvent(f"ob-{foreign_id}", "orders", SHIPPED_TOPIC, message)
    )
    if not getattr(env.store, "publishes_in_transaction", False):  # else the store did
        await env.streamer.publish(SHIPPED_TOPIC, [message])
    return record


async def test_messages_that_are_not_as_or_do_not_decode_are_counted_logged_and_skipped(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # Given B connected to A (A itself is not running here)
    skips = Skips()
    invoices = env.build(cw.invoices_builder(cw.orders_builder()), observer=skips)
    now = datetime.now(UTC)
    good = Record("orders", "x", "run-x", RunState.RUNNING, 2, b"{}", now, now, 1)
    async with invoices:
        # (past its catch-up, which would find the runs written below a second time)
        await connection_listening(env, invoices, shards=1)
        before = invoices.process_info()[SHIPPED_PROCESS].skipped
        caplog.clear()
        skips.reasons.clear()
        # When A's topic carries a message of another workflow, one without a version, one
        # about an unknown run, one at another status, and a run of A whose object is not an
        # Order; then a good one
        await env.streamer.publish(
            SHIPPED_TOPIC,
            [
                Message("k1", 2, {**arrival(good, "t").headers, "workflow_name": "other"}, now),
                Message("k2", 2, {"workflow_name": "orders", "run_state": "2"}, now),
                Message("no-such-run", 2, arrival(good, "t").headers, now),
                Message("k4", 7, arrival(good, "t").headers, now),
            ],
        )
        await put_order(env, "garbled", b'{"amount": "not a number"}')
        await put_order(env, "ok", msgspec.json.encode(Order("ok", 5)))
        # Then the good one is handled...
        await at_status(invoices, "ok", InvoiceStatus.BILLED)
        info = invoices.process_info()[SHIPPED_PROCESS]
    # ...and the others were skipped, counted and logged, and never failed the process
    assert info.skipped - before == 5
    assert info.errors == 0
    assert info.parked == 0
    assert skips.reasons["unable to unmarshal object"] == 1
    assert skips.reasons["record not found"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("connection orders-shipped skipped" in w for w in warnings) == 5
    assert [r.foreign_id for r in await env.invoices()] == ["ok"]


async def test_a_failing_function_is_retried_then_parked_not_a_crash_loop(env: Env) -> None:
    attempts: Counter[str] = Counter()

    def shipped(run: Run[Order, OrderStatus]) -> Trigger[Invoice]:
        attempts[run.foreign_id] += 1
        if run.foreign_id == "bad":
            raise RuntimeError("boom")
        return cw.invoice_for(run)

    orders = env.build(cw.orders_builder())
    invoices = env.build(cw.invoices_builder(orders, shipped=shipped, park_after_errors=3))
    async with orders, invoices:
        await orders.trigger("bad")
        await orders.trigger("good")
        await at_status(invoices, "good", InvoiceStatus.BILLED)
        await eventually(lambda: invoices.process_info()[SHIPPED_PROCESS].parked == 1)
        (parked,) = await invoices.parked()
    assert attempts["bad"] == 3
    assert parked.consumer == SHIPPED_PROCESS
    assert "boom" in parked.error


# ------------------------------------------------------------------------------ B's run states


async def test_paused_or_cancelled_b_runs_are_left_alone(env: Env) -> None:
    skips = Skips()
    orders = env.build(cw.orders_builder())
    invoices = env.build(cw.invoices_builder(orders), observer=skips)
    async with orders, invoices:
        for fid in ("paused", "cancelled"):
            await orders.trigger(fid)
            await at_status(invoices, fid, InvoiceStatus.BILLED)
        paused = await invoices.pause((await invoices.latest("paused")).run_id, "hold")
        cancelled = await invoices.cancel((await invoices.latest("cancelled")).run_id, "no")
        # When both orders are delivered
        for fid in ("paused", "cancelled"):
            await orders.callback(fid, OrderStatus.SHIPPED, b"")
            await at_status(orders, fid, OrderStatus.DELIVERED)
        await eventually(lambda: skips.reasons["record stopped"] == 2, what="two skips")
        # Then neither invoice moved
        now_paused = await invoices.latest("paused")
        now_cancelled = await invoices.latest("cancelled")
        assert (now_paused.version, now_paused.run_state) == (paused.version, RunState.PAUSED)
        assert (now_cancelled.version, now_cancelled.status) == (
            cancelled.version,
            InvoiceStatus.BILLED,
        )
        # And an order shipped while its foreign ID's invoice is paused starts no second one
        await orders.trigger("paused")  # the first order run is finished
        await eventually(lambda: skips.reasons["run in progress for 'paused'"] == 1)
    assert len([r for r in await env.invoices() if r.foreign_id == "paused"]) == 1


# ------------------------------------------------------------------------------ shards, observer


async def test_connection_shards_take_a_role_each_and_are_observed(env: Env) -> None:
    skips = Skips()
    orders = env.build(cw.orders_builder())
    invoices = env.build(cw.invoices_builder(orders, parallel_count=2), observer=skips)
    names = [f"orders-shipped-connection-to-invoices-consumer-{i}-of-2" for i in (1, 2)]
    assert set(names) <= set(invoices.states())
    async with orders, invoices:
        await eventually(lambda: all(invoices.states()[n] is ProcessState.RUNNING for n in names))
        for i in range(20):
            await orders.trigger(f"o-{i}")
        for i in range(20):
            await at_status(invoices, f"o-{i}", InvoiceStatus.BILLED)
        roles = {invoices.process_info()[n].role for n in names}
    assert roles == set(names)
    by_process = Counter(w.process for w in skips.work if w.process in names)
    assert set(by_process) == set(names), by_process  # both shards did work
    assert sum(by_process.values()) == 20
    assert {w.workflow for w in skips.work} == {"invoices"}
    assert all(
        w.kind == "event" and w.foreign_id.startswith("o-")
        for w in skips.work
        if w.process in names
    )


# ------------------------------------------------------------------------------ definition


def test_connect_refuses_mistakes_at_the_call() -> None:
    orders = cw.orders_builder()
    b = fast_invoices()
    with pytest.raises(ConfigurationError, match="member of OrderStatus"):
        b.connect(orders, at=InvoiceStatus.OPEN, to=cw.invoice_for)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="callable"):
        b.connect(orders, at=OrderStatus.SHIPPED, to="nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Workflow or a Builder"):
        b.connect("orders", at=OrderStatus.SHIPPED, to=cw.invoice_for)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="does not take the option"):
        b.connect(orders, at=OrderStatus.SHIPPED, to=cw.invoice_for, pause_after_errors=1)  # type: ignore[call-arg]
    b.connect(orders, at=OrderStatus.SHIPPED, to=cw.invoice_for)
    with pytest.raises(ConfigurationError, match="already declared"):
        b.connect(orders, at=OrderStatus.SHIPPED, to=cw.invoice_for)
    b.connect(orders, at=OrderStatus.SHIPPED, to=cw.invoice_for, name="second")

    class More(IntEnum):
        CREATED = 1
        SHIPPED = 2
        DELIVERED = 3
        LOST = 4

    c = fast_invoices()
    lossy: Builder[Order, More] = Builder("lossy", Order, More)
    lossy.add_step(More.CREATED, cw.pack, More.SHIPPED)  # type: ignore[arg-type]
    c.connect(lossy, at=More.LOST, to=cw.invoice_for)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not a status of workflow 'lossy'"):
        c.build(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler())


# ------------------------------------------------------------------------------ two processes

WORKER = Path(__file__).with_name("connect_worker.py")


class Worker:
    def __init__(self, tmp_path: Path, db: Path, workflow: str) -> None:
        self.name = workflow
        self.log_path = tmp_path / f"{workflow}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(db), workflow],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )

    def log(self) -> str:
        self._log.flush()
        return f"--- {self.name} ---\n" + self.log_path.read_text(errors="replace")[-3000:]

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 15)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[str], Worker]]:
    workers: list[Worker] = []

    def start(workflow: str) -> Worker:
        worker = Worker(tmp_path, tmp_path / "two.db", workflow)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.close()


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
@pytest.mark.timeout(90)
async def test_two_workflows_in_two_processes_on_one_sqlite_file(
    tmp_path: Path, spawn: Callable[[str], Worker]
) -> None:
    db = SqliteDatabase(tmp_path / "two.db", synchronous="NORMAL")
    streamer = SqliteStreamer(db)
    store = SqliteRecordStore(db)
    scheduler = SqliteRoleScheduler(db)
    # The test process triggers and delivers orders with workflows it never starts.
    orders = cw.orders_builder().build(streamer, store, scheduler)
    invoices = cw.invoices_builder(cw.orders_builder()).build(streamer, store, scheduler)
    workers: list[Worker] = []

    async def wait(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            for w in workers:
                if w.proc.poll() is not None:
                    pytest.fail(f"{w.name} exited\n{w.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n" + "\n".join(w.log() for w in workers))
            await asyncio.sleep(0.02)

    async def count(workflow: str, status: int, state: RunState | None = None) -> int:
        flt = RecordFilter(statuses=(status,), run_states=(state,) if state else ())
        return len(await store.list(workflow, limit=1000, filter=flt))

    try:
        # Given orders running in one process: ten orders shipped, four of them delivered
        workers.append(spawn("orders"))
        for i in range(10):
            await orders.trigger(f"early-{i}", initial=Order(f"early-{i}", i, [f"item-{i}"]))
        await wait(lambda: _ge(count("orders", OrderStatus.SHIPPED), 10), "ten orders at SHIPPED")
        for i in range(4):
            await orders.callback(f"early-{i}", OrderStatus.SHIPPED, b"")

        # When invoices is deployed in another process, and more orders come
        workers.append(spawn("invoices"))
        for i in range(10):
            await orders.trigger(f"late-{i}", initial=Order(f"late-{i}", 100 + i, ["x"]))
        expected = [f"early-{i}" for i in range(4, 10)] + [f"late-{i}" for i in range(10)]
        await wait(
            lambda: _ge(count("invoices", InvoiceStatus.BILLED), len(expected)),
            "an invoice billed for every order at SHIPPED",
        )
        # And orders are delivered: their invoices close with the order's items
        for fid in ("early-5", "late-3"):
            await orders.callback(fid, OrderStatus.SHIPPED, b"")
        await wait(
            lambda: _ge(count("invoices", InvoiceStatus.CLOSED, RunState.COMPLETED), 2),
            "two invoices closed",
        )

        # Then the invoices are those of the orders at SHIPPED when it started and after: not
        # the four delivered before it existed
        records = await store.list("invoices", limit=1000)
        assert sorted(r.foreign_id for r in records) == sorted(expected)
        assert (await invoices.latest("early-5")).object == Invoice("early-5", 5, ["item-5"])
        assert (await invoices.latest("late-3")).object == Invoice("late-3", 103, ["x"])
        for w in workers:
            assert await w.terminate() == 0, w.log()
    finally:
        await streamer.close()
        await db.close()


async def _ge(value: Any, n: int) -> bool:
    return bool(await value >= n)


# ------------------------------------------------------------------------------ the README


def test_the_readme_example_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Connecting two workflows", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    module = types.ModuleType("readme_connect")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "README.md#connecting-two-workflows", "exec"), module.__dict__)
    out = capsys.readouterr().out
    assert "Invoice(order_id='order-1', amount=100, delivered=['book'])" in out


def test_derived_run_ids_are_stable_uuid7_shaped_and_near_their_cause() -> None:
    from statestream._core.ids import derived_id, new_id

    origin = new_id()
    first = derived_id(origin, "invoices\0run\x002\x000")
    assert first == derived_id(origin, "invoices\0run\x002\x000")  # the same visit, the same ID
    assert first != derived_id(origin, "invoices\0run\x003\x000")  # the next visit, another
    value = uuid.UUID(hex=first)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert first[:12] == origin[:12]  # the time of the run that caused it
    assert len(derived_id("not-a-uuid", "k")) == 32
