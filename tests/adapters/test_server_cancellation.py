"""Every public call of the server adapters may be cancelled mid-flight, and the adapters stay
usable afterwards (issue 9).

A statement cancelled half-way must not leave a broken connection in the pool: asyncmy 0.2.18
leaves a connection unusable after a query cancelled mid-way ("Cancelled during execution"), so
the MySQL pool discards it; asyncpg's pool, released from a cancelled task while the server is
away, can end in ``InternalClientError: PoolConnectionHolder.release() called on a free
connection holder``, so PostgreSQL statements run in a task the caller's cancellation does not
interrupt. The test cancels a mix of calls of every adapter (record store, streamer, timeout
store, role scheduler) at random moments, round after round, then uses each adapter again, with
more concurrent calls than the pool has connections.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

import backends
from apps import pipeline
from statestream._core.records import Message

SERVERS = [name for name in backends.NAMES if backends.BACKENDS[name].server]
#: and the server records with Kafka events (the Kafka streamer's calls cancelled too)
SETS = SERVERS + backends.KAFKA_NAMES
ROUNDS = 40
TOPIC = "cancel-topic"


def message(n: int) -> Message:
    return Message(f"key-{n}", 1, {"n": str(n)}, datetime.now(UTC))


@pytest.fixture(params=SETS)
async def adapters(request: pytest.FixtureRequest) -> AsyncIterator[backends.AdapterSet]:
    name: str = request.param
    backends.require(name)
    kafka = backends.kafka_for(name, request)
    location, prefix = backends.server_url(name), backends.new_prefix()
    try:
        async with backends.adapter_set(name, location, prefix, ttl=5.0, kafka=kafka) as adapters:
            yield adapters
    finally:
        await backends.drop_prefixed(name, location, prefix)


async def test_calls_cancelled_mid_flight_leave_the_adapters_usable(
    adapters: backends.AdapterSet,
) -> None:
    wf = pipeline.build(adapters)  # never started: it triggers
    run_ids = [await wf.trigger(f"seed-{i}") for i in range(3)]
    receiver = await adapters.streamer.receiver(TOPIC, "cancel-test")
    rng = random.Random(9)
    counter = 0

    async def acquire_and_release() -> None:
        lease = await adapters.scheduler.acquire(f"cancel-role-{rng.randrange(3)}")
        await lease.release()

    def calls() -> list[Callable[[], Awaitable[Any]]]:
        nonlocal counter
        counter += 1
        n = counter
        return [
            lambda: wf.trigger(f"job-{n}"),
            lambda: adapters.store.lookup(rng.choice(run_ids)),
            lambda: adapters.store.list(pipeline.WORKFLOW, limit=50),
            lambda: adapters.store.list_outbox(pipeline.WORKFLOW, 20),
            lambda: receiver.recv(10),
            lambda: adapters.streamer.publish(TOPIC, [message(n)]),
            lambda: adapters.timeouts.list(pipeline.WORKFLOW),
            acquire_and_release,
        ]

    cancelled = 0
    for _ in range(ROUNDS):
        tasks = [asyncio.ensure_future(call()) for call in calls()]
        await asyncio.sleep(rng.random() * 0.004)
        for task in tasks:
            cancelled += task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors, f"a call failed instead of being cancelled: {errors[0]!r}"
    assert cancelled > ROUNDS, "the calls ended before they could be cancelled"

    # Then every adapter works, with more calls at once than the pool has connections
    fresh = await asyncio.gather(*(wf.trigger(f"after-{i}") for i in range(25)))
    records = await asyncio.gather(*(adapters.store.lookup(r) for r in fresh))
    assert [r.run_id for r in records] == list(fresh)
    listed = await adapters.store.list(pipeline.WORKFLOW, limit=1000)
    assert {r.run_id for r in listed} >= set(fresh) | set(run_ids)
    await adapters.streamer.publish(TOPIC, [message(-1)])
    events: list[Any] = []
    async with asyncio.timeout(10):
        while not any(e.headers.get("n") == "-1" for e in events):
            events = await receiver.recv(100)
            for event in events:
                await receiver.ack(event)
    await adapters.timeouts.list(pipeline.WORKFLOW)
    lease = await asyncio.wait_for(adapters.scheduler.acquire("cancel-role-after"), 10)
    await lease.release()
    await receiver.close()


async def test_a_cancellation_a_driver_turned_into_a_connection_error_is_not_retried(
    adapters: backends.AdapterSet,
) -> None:
    """Under Python 3.11 ``asyncio.wait_for`` (inside asyncmy's connect, for one) can answer a
    cancellation with the inner connection error: the database layer must not take it for an
    outage and retry, or the cancelled call goes on for ``reconnect_timeout`` (seen: a consumer
    whose role was lost during a database restart never stopped, and its worker kept the role in
    its books, so nobody ran it)."""
    db = adapters.store.db
    started = asyncio.Event()
    calls = 0

    async def swallows_the_cancellation() -> None:
        nonlocal calls
        calls += 1
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise ConnectionRefusedError(111, "Connection refused") from None

    task = asyncio.ensure_future(db.retrying(swallows_the_cancellation, idempotent=True))
    await started.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the cancelled call was retried as if the server were away"
    assert task.cancelled()
    assert calls == 1


class _Watched:
    """A schema connection that says when the schema's third ``CREATE TABLE`` starts."""

    def __init__(self, inner: Any, creating: asyncio.Event) -> None:
        self._inner = inner
        self._creating = creating
        self._creates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def execute(self, sql: str, *args: Any) -> Any:
        if sql.lstrip().upper().startswith("CREATE TABLE"):
            self._creates += 1
            if self._creates == 3:
                self._creating.set()
        return await self._inner.execute(sql, *args)


@pytest.mark.parametrize("name", SERVERS)
async def test_a_first_use_cancelled_while_it_creates_the_schema_leaves_it_whole(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (MySQL's DDL is not transactional: the cancelled caller left half of the tables, and
    # every later start refused them, "not made by statestream", for good)
    from statestream.adapters.sql import _server

    backends.require(name)
    location, prefix = backends.server_url(name), backends.new_prefix()
    creating = asyncio.Event()
    real = _server.ensure_schema

    async def watched(conn: Any, *args: Any, **kwargs: Any) -> int:
        return await real(_Watched(conn, creating), *args, **kwargs)

    monkeypatch.setattr(_server, "ensure_schema", watched)
    try:
        # Given a first call that is cancelled in the middle of creating the schema
        first = backends.open_set(name, location, prefix)
        try:
            call = asyncio.ensure_future(first.store.list(pipeline.WORKFLOW, limit=1))
            await asyncio.wait_for(creating.wait(), 20)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            # Then the database still opens, and so does another one on the same tables
            assert await first.store.list(pipeline.WORKFLOW, limit=1) == []
        finally:
            await first.close()
        monkeypatch.setattr(_server, "ensure_schema", real)
        async with backends.adapter_set(name, location, prefix) as second:
            assert await second.store.list(pipeline.WORKFLOW, limit=1) == []
    finally:
        await backends.drop_prefixed(name, location, prefix)
