"""Kafka faults under running workflows: the broker lost mid-run and back, a topic deleted.

Each test has a broker of its own (``private_broker``): never the session's.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kafka_broker import FaultyBroker
from statestream import Builder, ProcessState, Run, RunState, Workflow
from statestream.adapters.sqlite import SqliteDatabase, SqliteRecordStore, SqliteRoleScheduler

pytest.importorskip("confluent_kafka")

from statestream import errors
from statestream._core.records import Message
from statestream.adapters.kafka import KafkaStreamer
from statestream.adapters.kafka._streamer import ClientLog


class Stage(enum.IntEnum):
    STARTED = 1
    MIDDLE = 2
    DONE = 3


@dataclass
class Item:
    steps: list[str] = field(default_factory=list)


def _builder(name: str, calls: Counter[tuple[str, str]]) -> Builder[Item, Stage]:
    async def first(run: Run[Item, Stage]) -> Stage:
        calls[("first", run.foreign_id)] += 1
        run.object.steps.append("first")
        return Stage.MIDDLE

    async def second(run: Run[Item, Stage]) -> Stage:
        calls[("second", run.foreign_id)] += 1
        run.object.steps.append("second")
        return Stage.DONE

    b = Builder(name, Item, Stage)
    b.defaults(error_backoff=0.05, max_error_backoff=0.5, polling_frequency=0.05)
    b.outbox(polling_frequency=0.05, error_backoff=0.05)
    b.add_step(Stage.STARTED, first, Stage.MIDDLE, parallel_count=2)
    b.add_step(Stage.MIDDLE, second, Stage.DONE, parallel_count=2)
    return b


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "records.db", synchronous="NORMAL")
    yield database
    await database.close()


async def until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.05)


async def test_a_broker_lost_mid_run_loses_nothing_when_it_returns(
    private_broker: FaultyBroker, db: SqliteDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    streamer = KafkaStreamer(
        private_broker.bootstrap,
        partitions=4,
        topic_prefix=f"t_{uuid.uuid4().hex[:8]}_",
        connect_timeout=5.0,
        producer_config={"message.timeout.ms": 5000},  # then the relay retries the batch
    )
    calls: Counter[tuple[str, str]] = Counter()
    wf: Workflow[Item, Stage] = _builder(f"faults-{uuid.uuid4().hex[:6]}", calls).build(
        streamer,
        SqliteRecordStore(db),
        SqliteRoleScheduler(db, ttl=2.0, poll_interval=0.05),
        pause_retry=None,
    )
    runs: dict[str, str] = {}

    async def done(fids: list[str]) -> None:
        for fid in fids:
            run = await wf.wait_for(fid, runs[fid], Stage.DONE, timeout=60)
            assert run.run_state is RunState.COMPLETED
            assert run.object.steps == ["first", "second"], (fid, run.object.steps)

    try:
        async with wf:
            # Given runs flowing through a two-step workflow on Kafka
            before = [f"before-{i}" for i in range(10)]
            for fid in before:
                runs[fid] = await wf.trigger(fid, initial=Item())
            await done(before)

            # When the broker goes away mid-run, while runs keep being triggered
            mark = len(caplog.records)
            private_broker.lose()
            during = [f"during-{i}" for i in range(10)]
            for fid in during:
                runs[fid] = await wf.trigger(fid, initial=Item())  # records and outbox only
            await until(
                lambda: (
                    any(r.name == "statestream" for r in caplog.records[mark:])
                    and wf.process_info()["outbox-consumer"].errors > 0
                ),
                "a publish that failed, and was logged",
            )
            assert all(s is not ProcessState.SHUTDOWN for s in wf.states().values())

            # And it comes back on the same port
            private_broker.restore()
            after = [f"after-{i}" for i in range(10)]
            for fid in after:
                runs[fid] = await wf.trigger(fid, initial=Item())

            # Then every run reaches the end, each transition stored once
            await done([*before, *during, *after])
        assert len(calls) == 2 * len(runs)
    finally:
        await streamer.close()


async def test_an_ack_while_the_broker_is_lost_fails_in_bounded_time_and_works_after(
    private_broker: FaultyBroker,
) -> None:
    # A synchronous commit used to wait for ever for a broker that is down, holding the
    # receiver's fetching thread (and so stopping the consumer) with it.
    streamer = KafkaStreamer(private_broker.bootstrap, partitions=2, connect_timeout=2.0)
    try:
        at = datetime.now(UTC)
        await streamer.publish("t", [Message(f"k{i}", 1, {}, at) for i in range(4)])
        receiver = await streamer.receiver("t", "reader")
        try:
            events: list[Any] = []
            async with asyncio.timeout(20):
                while len(events) < 4:
                    events.extend(await receiver.recv())
            private_broker.lose()
            async with asyncio.timeout(30):  # a bound, not a measurement
                with pytest.raises(errors.AdapterConnectionError, match="brokers are up"):
                    await receiver.ack(events[1])
            private_broker.restore()
            async with asyncio.timeout(30):
                while True:  # the client reconnects with its own backoff
                    try:
                        await receiver.ack(events[3])
                        break
                    except errors.AdapterConnectionError:
                        await asyncio.sleep(0.2)
        finally:
            await receiver.close()
        again = await streamer.receiver("t", "reader")
        try:
            await streamer.publish("t", [Message("after", 1, {}, at)])
            async with asyncio.timeout(20):
                assert [e.key for e in await again.recv()] == ["after"]
        finally:
            await again.close()
    finally:
        await streamer.close()


def test_librdkafka_lines_are_rate_limited_by_kind(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kafka-test")
    sink = ClientLog(logging.getLogger("kafka-test"), every=3600.0)
    for _ in range(50):  # a client reconnecting to a broker that is down
        sink.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect failed")
    sink.log(logging.WARNING, "%s [%s] %s", "REQTMOUT", "rdkafka#consumer-1", "Timed out")
    assert [r.getMessage() for r in caplog.records] == [
        "FAIL [rdkafka#consumer-1] Connect failed",
        "REQTMOUT [rdkafka#consumer-1] Timed out",
    ]
    sink.every = 0.0
    sink.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect failed")
    assert caplog.records[-1].getMessage().endswith("(and 49 such lines in the last 0s)")


async def test_a_topic_deleted_under_a_receiver_is_logged_and_read_again_once_recreated(
    private_broker: FaultyBroker,
) -> None:
    script = Path(__file__).parent.parent / "kafka_topic_deleted.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        private_broker.bootstrap,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()  # by its PID: the process this test started
            await proc.wait()
    if proc.returncode == -signal.SIGSEGV and b"DELETED" in out:
        pytest.xfail(
            "librdkafka 2.16 crashed (SIGSEGV in its metadata cache) on Tansu's answer to a "
            "fetch for the deleted topic: not testable against this broker"
        )
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    assert b"RECOVERED" in out
    assert b"does not exist" in err  # the receiver said clearly what is wrong


async def test_a_producer_whose_messages_timed_out_in_an_outage_publishes_again(
    private_broker: FaultyBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # The idempotent producer bumps its epoch after messages time out; a broker may then answer
    # that it is fenced, for good: the streamer must go on with a new producer.
    streamer = KafkaStreamer(
        private_broker.bootstrap,
        partitions=1,
        connect_timeout=2.0,
        producer_config={"message.timeout.ms": 1000},
    )
    try:
        at = datetime.now(UTC)
        await _publish_until_it_works(streamer, Message("before", 1, {}, at))
        private_broker.lose()
        with pytest.raises(errors.AdapterError, match="Message timed out"):
            await streamer.publish("t", [Message("during", 1, {}, at)])
        private_broker.restore()
        await _publish_until_it_works(streamer, Message("after", 1, {}, at))
        receiver = await streamer.receiver("t", "reader")
        try:
            keys: list[str] = []
            async with asyncio.timeout(20):
                while "after" not in keys:
                    keys.extend(e.key for e in await receiver.recv())
            assert keys[0] == "before"
        finally:
            await receiver.close()
    finally:
        await streamer.close()


async def _publish_until_it_works(streamer: KafkaStreamer, message: Message) -> None:
    """Publish as the relay does: again after a short backoff until it works."""
    async with asyncio.timeout(40):
        while True:
            try:
                await streamer.publish("t", [message])
                return
            except errors.AdapterError:
                await asyncio.sleep(0.2)
