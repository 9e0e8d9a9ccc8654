"""Workflows with records (and the outbox) in SQLite, PostgreSQL or MariaDB and events in Kafka.

Every case runs on each record store (``records``): SQLite in the test's own file, PostgreSQL and
MariaDB on the shared servers under a table prefix of the test's own (skipped loudly when the
server is down, failed when ``CI=true``), with the store's outbox: the engine's relay publishes
each write's event to Kafka (topics prefixed uniquely per test on the session broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import backends
from statestream import Builder, Run, RunState, Workflow
from statestream._core.records import Message, status_topic
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteTimeoutStore,
)
from statestream.adaptertest import AdapterSet, WorkflowContract

pytest.importorskip("confluent_kafka")

from statestream.adapters.kafka import KafkaReceiver, KafkaStreamer


def _streamer(bootstrap: str, partitions: int) -> KafkaStreamer:
    return KafkaStreamer(
        bootstrap,
        partitions=partitions,
        topic_prefix=f"t_{uuid.uuid4().hex[:10]}_",
        consumer_config={"session.timeout.ms": 6000},
    )


@dataclass
class Records:
    """A record store with its outbox (no ``publish_to``), its timeouts, and role schedulers on
    the same database (one per workflow instance)."""

    name: str
    store: Any
    timeouts: Any
    scheduler: Callable[..., Any]  # (ttl=..., poll_interval=...) -> a new role scheduler


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
async def records(
    request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path: Path
) -> AsyncIterator[Records]:
    if request.param == "sqlite":
        db = SqliteDatabase(tmp_path / "records.db", synchronous="NORMAL")
        yield Records(
            "sqlite",
            SqliteRecordStore(db),
            SqliteTimeoutStore(db),
            lambda **options: SqliteRoleScheduler(db, **options),
        )
        await db.close()
        return
    name = f"{request.param}+kafka"  # tests/backends.py: the server store, without publish_to
    backends.require(name)
    location, prefix = backends.server_url(name), backends.new_prefix()
    adapters = backends.open_set(name, location, prefix, kafka=kafka_bootstrap)
    try:
        assert getattr(adapters.store, "publishes_in_transaction", False) is False
        yield Records(name, adapters.store, adapters.timeouts, adapters.new_scheduler)
    finally:
        await adapters.close()
        await backends.drop_prefixed(name, location, prefix)


class TestKafkaAcceptance(WorkflowContract):
    """Records and the outbox in SQLite, PostgreSQL or MariaDB (no ``publish_to``: the relay
    publishes to Kafka)."""

    @pytest.fixture
    async def adapters(self, kafka_bootstrap: str, records: Records) -> AsyncIterator[AdapterSet]:
        streamer = _streamer(kafka_bootstrap, partitions=10)  # the 5 shards map onto them
        yield AdapterSet(
            streamer,
            records.store,
            records.scheduler(ttl=2.0, poll_interval=0.02),
            records.timeouts,
        )
        await streamer.close()


class Stage(enum.IntEnum):
    STARTED = 1
    MIDDLE = 2
    DONE = 3


@dataclass
class Item:
    steps: list[str] = field(default_factory=list)


def _builder(
    name: str, calls: Counter[tuple[str, str]], delay: float = 0.0
) -> Builder[Item, Stage]:
    async def first(run: Run[Item, Stage]) -> Stage:
        calls[("first", run.foreign_id)] += 1
        if delay:
            await asyncio.sleep(delay)  # work in flight when a member leaves
        run.object.steps.append("first")
        return Stage.MIDDLE

    async def second(run: Run[Item, Stage]) -> Stage:
        calls[("second", run.foreign_id)] += 1
        run.object.steps.append("second")
        return Stage.DONE

    b = Builder(name, Item, Stage)
    b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.05)
    b.add_step(Stage.STARTED, first, Stage.MIDDLE, parallel_count=2)
    b.add_step(Stage.MIDDLE, second, Stage.DONE, parallel_count=2)
    return b


class _KilledAfterPublish:
    """A KafkaStreamer whose first ``publish`` fails once the broker has acknowledged it: the
    relay dies between publishing a batch and deleting it from the outbox."""

    def __init__(self, inner: KafkaStreamer) -> None:
        self.inner = inner
        self.kills = 0
        self.published: list[tuple[str, int]] = []
        self.republished = asyncio.Event()  # the killed batch's topic was published to again

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        await self.inner.publish(topic, messages)
        self.published.append((topic, len(messages)))
        if self.kills and topic == self.published[0][0]:
            self.republished.set()
        if self.kills == 0:
            self.kills += 1
            raise RuntimeError("relay killed between publish and delete (test)")

    async def receiver(self, topic: str, name: str, **kwargs: Any) -> KafkaReceiver:
        return await self.inner.receiver(topic, name, **kwargs)

    async def prune(self, topics: Sequence[str], before: datetime) -> int:
        return await self.inner.prune(topics, before)

    async def forget(self, topic: str, keep: Collection[str], before: datetime) -> list[str]:
        return await self.inner.forget(topic, keep, before)

    async def close(self) -> None:
        await self.inner.close()


def _build(b: Builder[Item, Stage], streamer: Any, records: Records) -> Workflow[Item, Stage]:
    return b.build(
        streamer,
        records.store,
        records.scheduler(ttl=1.0, poll_interval=0.02),
        pause_retry=None,
    )


async def _all_done(wf: Workflow[Item, Stage], runs: dict[str, str]) -> None:
    for fid, run_id in runs.items():
        run = await wf.wait_for(fid, run_id, Stage.DONE, timeout=20)
        assert run.run_state is RunState.COMPLETED
        assert run.object.steps == ["first", "second"], (fid, run.object.steps)


async def test_a_relay_killed_between_publish_and_delete_republishes_harmlessly(
    kafka_bootstrap: str, records: Records
) -> None:
    # Given twenty runs whose trigger events wait in the store's outbox
    inner = _streamer(kafka_bootstrap, partitions=4)
    streamer = _KilledAfterPublish(inner)
    calls: Counter[tuple[str, str]] = Counter()
    name = f"relay-{uuid.uuid4().hex[:8]}"
    wf = _build(_builder(name, calls), streamer, records)
    try:
        runs = {f"item-{i}": await wf.trigger(f"item-{i}", initial=Item()) for i in range(20)}

        # When the relay publishes them, dies before deleting them, and publishes them again
        started = status_topic(name, Stage.STARTED)
        async with wf:
            await _all_done(wf, runs)
            # (the runs may also have moved by the consumers' catch-up from the store: wait
            # for the relay to come back and publish the batch again)
            await asyncio.wait_for(streamer.republished.wait(), 20)
        assert streamer.kills == 1
        assert streamer.published[0] == (started, len(runs))

        # Then Kafka holds the first batch twice, yet every step moved every run once
        audit = await inner.receiver(started, "audit")
        try:
            seen: Counter[str] = Counter()
            async with asyncio.timeout(20):
                while sum(seen.values()) < 2 * len(runs):
                    seen.update(e.key for e in await audit.recv(1000))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):  # nothing more comes
                    seen.update(e.key for e in await audit.recv(1000))
        finally:
            await audit.close()
        assert set(seen) == set(runs.values())
        assert set(seen.values()) == {2}, streamer.published
        assert set(calls.values()) == {1}
        assert len(calls) == 2 * len(runs)
    finally:
        await inner.close()


@pytest.mark.parametrize("grace", [10.0, 0.0], ids=["leaving-cleanly", "leaving-abruptly"])
async def test_members_joining_and_leaving_under_load_lose_and_repeat_nothing(
    kafka_bootstrap: str, records: Records, grace: float
) -> None:
    # Given a member consuming two-shard steps on four partitions
    streamer = _streamer(kafka_bootstrap, partitions=4)
    calls: Counter[tuple[str, str]] = Counter()
    name = f"handover-{uuid.uuid4().hex[:8]}"
    members = [_build(_builder(name, calls, delay=0.02), streamer, records) for _ in range(3)]
    runs: dict[str, str] = {}
    try:
        await members[0].start()

        async def load() -> None:
            for i in range(80):
                fid = f"item-{i}"
                runs[fid] = await members[0].trigger(fid, initial=Item())
                await asyncio.sleep(0.01)

        loading = asyncio.create_task(load())
        # When a second member joins, the first leaves, a third joins and the second leaves,
        # all while runs keep coming (abruptly: steps in flight are cancelled, unacknowledged)
        await asyncio.sleep(0.2)
        await members[1].start()
        await asyncio.sleep(0.2)
        await members[0].stop(grace)
        await members[2].start()
        await asyncio.sleep(0.2)
        await members[1].stop(grace)
        await loading

        # Then every run reached the end with each transition applied once (its steps list)
        await _all_done(members[2], runs)
        assert len(runs) == 80
        assert len(calls) == 2 * len(runs)
        if grace:
            assert set(calls.values()) == {1}  # handed over cleanly: nothing even ran twice
    finally:
        for member in members:
            await member.stop()
        await streamer.close()


async def test_a_runs_trace_crosses_kafka_in_the_record_headers(
    kafka_bootstrap: str, records: Records
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from confluent_kafka import Consumer, TopicPartition
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import observe_app
    from statestream.tracing import TracingObserver, continue_trace

    # Given a traced workflow whose events go through Kafka (one partition per topic)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    streamer = _streamer(kafka_bootstrap, partitions=1)
    wf = observe_app.builder().build(
        streamer,
        records.store,
        records.scheduler(ttl=2.0, poll_interval=0.02),
        timeout_store=records.timeouts,
        observer=TracingObserver(provider),
        pause_retry=None,
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        # When a caller's trace starts a run that goes through three steps
        async with wf:
            with continue_trace(f"00-{trace_id}-00f067aa0ba902b7-01"):
                run_id = await wf.trigger("traced-1")
            await wf.wait_for("traced-1", run_id, observe_app.S.DONE, timeout=20)

        # Then every event on Kafka carries the foreign ID and the trace as record headers
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"audit-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        try:
            records: list[Any] = []
            for status in (observe_app.S.CREATED, observe_app.S.CHECKED, observe_app.S.PAID):
                name = streamer.kafka_topic(status_topic("orders", status))
                consumer.assign([TopicPartition(name, 0, 0)])
                async with asyncio.timeout(30):  # a new consumer's first fetch, under load
                    while len(records) < status:
                        msg = await asyncio.to_thread(consumer.poll, 0.2)
                        if msg is not None and msg.error() is None:
                            records.append(msg)
        finally:
            await asyncio.to_thread(consumer.close)
        parents = []
        for msg in records:
            headers = dict(msg.headers())
            assert headers["foreign_id"] == b"traced-1"
            version, trace, parent, flags = headers["traceparent"].decode().split("-")
            assert (version, trace, flags) == ("00", trace_id, "01")
            parents.append(int(parent, 16))

        # And the consumers got the trace back from them: each step's span is a child of the
        # span that wrote its event, all in the caller's trace
        spans = [
            s
            for s in exporter.get_finished_spans()
            if (s.attributes or {}).get("statestream.run_id") == run_id
        ]
        assert {format(s.context.trace_id, "032x") for s in spans} == {trace_id}
        by_span = {s.context.span_id: s.name for s in spans}
        assert [by_span[p] for p in parents] == [
            "orders trigger",
            "orders created-consumer-1-of-1",
            "orders checked-consumer-1-of-1",
        ]
    finally:
        await streamer.close()


# ------------------------------------------------------------------------------ the README


def _readme_examples() -> dict[str, str]:
    """The README's two code blocks for server records with Kafka events, by record store."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### PostgreSQL or MySQL/MariaDB records, Kafka events", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    assert len(blocks) == 2, "the README shows one block for PostgreSQL, one for MySQL"
    return {"postgres": blocks[0], "mysql": blocks[1]}


@pytest.mark.parametrize("name", ["postgres", "mysql"])
async def test_the_readme_kafka_examples_run(name: str, kafka_bootstrap: str) -> None:
    # Given the README's code, pointed at the test servers under a prefix of this test's own
    backends.require(name)
    prefix = backends.new_prefix()
    url = backends.server_url(name)
    code = _readme_examples()[name]
    for shown, actual in (
        ("postgresql://app:secret@db-host:5432/orders", url),
        ("mysql://user:password@db.internal:3306/orders", url),
        ('prefix="statestream_"', f'prefix="{prefix}"'),
        ("kafka-1:9092,kafka-2:9092", kafka_bootstrap),
        ('topic_prefix="orders-prod."', f'topic_prefix="{prefix}"'),
    ):
        code = code.replace(shown, actual)
    assert url in code
    assert kafka_bootstrap in code
    assert f'prefix="{prefix}"' in code
    calls: Counter[tuple[str, str]] = Counter()
    namespace: dict[str, Any] = {"b": _builder("orders", calls)}
    exec(compile(code, f"README.md ({name} + Kafka)", "exec"), namespace)
    wf: Workflow[Item, Stage] = namespace["orders"]
    try:
        # When a run is triggered and a worker (this process) runs the workflow
        assert getattr(wf.store, "publishes_in_transaction", False) is False  # the outbox
        async with wf:
            await _all_done(wf, {"order-1": await wf.trigger("order-1", initial=Item())})
        # Then each step ran once
        assert calls == {("first", "order-1"): 1, ("second", "order-1"): 1}
    finally:
        await wf.streamer.close()
        await namespace["db"].close()
        await backends.drop_prefixed(name, url, prefix)
