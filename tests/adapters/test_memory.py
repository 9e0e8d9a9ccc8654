"""The memory adapters: the shared contracts plus what only the memory adapters promise."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from statestream import errors
from statestream._core.clock import FakeClock
from statestream._core.protocols import (
    EventReceiver,
    EventStreamer,
    Lease,
    RecordStore,
    RoleScheduler,
    SnapshotStore,
    TimeoutStore,
)
from statestream._core.records import Message, Order, OutboxEvent, Record, topic_for
from statestream._core.runstate import RunState
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.adaptertest import (
    EventStreamerContract,
    RecordStoreContract,
    RoleSchedulerContract,
    SchedulerFactory,
    TimeoutStoreContract,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class TestMemoryRecordStore(RecordStoreContract):
    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[MemoryRecordStore]:
        yield MemoryRecordStore()


class TestMemoryStreamer(EventStreamerContract):
    @pytest_asyncio.fixture
    async def streamer(self) -> AsyncIterator[MemoryStreamer]:
        streamer = MemoryStreamer()
        yield streamer
        await streamer.close()


class TestMemoryTimeoutStore(TimeoutStoreContract):
    @pytest_asyncio.fixture
    async def timeout_store(self) -> AsyncIterator[MemoryTimeoutStore]:
        yield MemoryTimeoutStore()


class TestMemoryRoleScheduler(RoleSchedulerContract):
    lease_ttl = None  # memory leases never expire by time

    @pytest.fixture
    def make_schedulers(self) -> SchedulerFactory:
        scheduler = MemoryRoleScheduler()

        async def make(n: int) -> list[RoleScheduler]:
            return [scheduler] * n

        return make


def test_memory_adapters_satisfy_the_protocols() -> None:
    assert isinstance(MemoryRecordStore(), RecordStore)
    assert isinstance(MemoryRecordStore(), SnapshotStore)
    assert isinstance(MemoryStreamer(), EventStreamer)
    assert isinstance(MemoryTimeoutStore(), TimeoutStore)
    assert isinstance(MemoryRoleScheduler(), RoleScheduler)


# -- record store ----------------------------------------------------------------------------


def _record(run_state: RunState = RunState.INITIATED, version: int = 1) -> Record:
    return Record(
        workflow_name="wf",
        foreign_id="fid",
        run_id="run-1",
        run_state=run_state,
        status=1,
        object=b"{}",
        created_at=T0,
        updated_at=T0,
        version=version,
    )


def _event(record: Record) -> OutboxEvent:
    message = Message(key=record.run_id, type=record.status, headers={}, created_at=T0)
    return OutboxEvent(
        f"outbox-id-{uuid.uuid4()}", record.workflow_name, topic_for(record), message
    )


async def test_snapshots_keep_every_version_in_order() -> None:
    store = MemoryRecordStore(keep_snapshots=True)
    versions = [_record(RunState.RUNNING, version=v) for v in (1, 2, 3)]
    await store.create(versions[0], _event(versions[0]))
    for record in versions[1:]:
        await store.update(record, _event(record))
    with pytest.raises(errors.VersionConflict):
        await store.update(versions[1], _event(versions[1]))

    assert store.snapshots("run-1") == versions
    assert store.snapshots("missing") == []


async def test_snapshots_are_off_by_default() -> None:
    store = MemoryRecordStore()
    first, second = _record(version=1), _record(version=2)
    await store.create(first, _event(first))
    await store.update(second, _event(second))

    assert store.snapshots("run-1") == []
    assert await store.lookup("run-1") is second


async def test_create_of_an_existing_run_id_is_a_version_conflict() -> None:
    store = MemoryRecordStore()
    record = _record(RunState.COMPLETED, version=1)
    await store.create(record, _event(record))

    with pytest.raises(errors.VersionConflict) as info:
        await store.create(dataclasses.replace(record, foreign_id="other"), _event(record))

    assert (info.value.run_id, info.value.expected, info.value.actual) == ("run-1", 0, 1)
    assert len(await store.list_outbox("wf", 10)) == 1


async def test_list_rejects_a_negative_window() -> None:
    store = MemoryRecordStore()
    with pytest.raises(errors.InvalidInput):
        await store.list(offset=-1)
    with pytest.raises(errors.InvalidInput):
        await store.list(limit=-1)
    with pytest.raises(errors.InvalidInput):
        await store.list_parked("wf", limit=-1)


async def test_list_after_a_run_of_another_workflow_uses_its_place_in_creation_order() -> None:
    # Given runs of two workflows created alternately
    store = MemoryRecordStore()
    runs = [
        dataclasses.replace(
            _record(), workflow_name=f"wf-{i % 2}", foreign_id=f"fid-{i}", run_id=f"run-{i}"
        )
        for i in range(6)
    ]
    for record in runs:
        await store.create(record, _event(record))

    # Then a page of one workflow after a run of the other starts where that run was created
    assert [r.run_id for r in await store.list("wf-0", after="run-1")] == ["run-2", "run-4"]
    assert [r.run_id for r in await store.list("wf-0", after="run-3", order=Order.DESC)] == [
        "run-2",
        "run-0",
    ]


# -- streamer --------------------------------------------------------------------------------


def _messages(*keys: str) -> list[Message]:
    return [Message(key=k, type=1, headers={}, created_at=T0) for k in keys]


async def test_event_ids_count_from_one_per_topic() -> None:
    streamer = MemoryStreamer()
    await streamer.publish("a", _messages("x", "y"))
    await streamer.publish("b", _messages("z"))

    assert [e.id for e in await (await streamer.receiver("a", "n")).recv()] == [1, 2]
    assert [e.id for e in await (await streamer.receiver("b", "n")).recv()] == [1]


async def test_close_wakes_a_waiting_recv_and_later_recvs_fail() -> None:
    streamer = MemoryStreamer()
    receiver = await streamer.receiver("topic", "name")
    waiting = asyncio.create_task(receiver.recv())
    await asyncio.sleep(0)

    await receiver.close()

    with pytest.raises(errors.AdapterError):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(errors.AdapterError):
        await receiver.recv()
    await receiver.close()


async def test_streamer_close_closes_its_receivers_but_stays_usable() -> None:
    streamer = MemoryStreamer()
    receiver = await streamer.receiver("topic", "name")

    await streamer.close()

    with pytest.raises(errors.AdapterError):
        await receiver.recv()
    await streamer.publish("topic", _messages("x"))
    assert [e.key for e in await (await streamer.receiver("topic", "name")).recv()] == ["x"]


async def test_ack_after_close_still_commits() -> None:
    streamer = MemoryStreamer()
    await streamer.publish("topic", _messages("x", "y"))
    receiver = await streamer.receiver("topic", "name")
    events = await receiver.recv()
    await receiver.close()

    await receiver.ack(events[0])

    assert [e.key for e in await (await streamer.receiver("topic", "name")).recv()] == ["y"]


async def test_pruning_ten_thousand_events_frees_the_topic() -> None:
    # Given 10k events, a consumer that acknowledged them all, and shard receivers on them
    streamer = MemoryStreamer()
    await streamer.publish("topic", _messages(*(f"run-{i}" for i in range(10_000))))
    receiver = await streamer.receiver("topic", "name")
    events = [e for _ in range(100) for e in await receiver.recv(100)]
    await receiver.ack(events[-1])
    shard_receivers = [
        await streamer.receiver("topic", f"s{i}", shard=i, shards=4) for i in range(4)
    ]

    # When everything is pruned
    assert await streamer.prune(["topic"], T0 + timedelta(seconds=1)) == 10_000

    # Then the topic keeps no event, in its log or in any shard's
    state = streamer._topics["topic"]
    logs = [log for shard_logs in state.logs.values() for log in shard_logs]
    assert len(logs) == 5
    assert all(len(log) == 0 and log._events == [] for log in logs)
    # And publishing goes on with the next IDs, for every receiver
    await streamer.publish("topic", _messages("next"))
    assert [e.id for e in await receiver.recv()] == [10_001]
    received = [await r.recv() for r in shard_receivers if len(r._log)]
    assert [e.id for batch in received for e in batch] == [10_001]


async def test_prune_drops_a_prefix_and_compacts_as_it_goes() -> None:
    streamer = MemoryStreamer()
    await streamer.publish("topic", _messages(*(f"run-{i}" for i in range(10))))
    receiver = await streamer.receiver("topic", "name")
    events = await receiver.recv()
    log = streamer._topics["topic"].logs[1][0]

    for acked, expected in ((2, 3), (3, 1), (9, 6)):
        await receiver.ack(events[acked])
        assert await streamer.prune(["topic"], T0 + timedelta(seconds=1)) == expected
        assert [e.id for e in log.retained()] == list(range(acked + 2, 11))
        assert len(log._events) <= 2 * len(log) + 1

    assert await streamer.prune(["topic"], T0 + timedelta(seconds=1)) == 0


async def test_an_open_receiver_behind_a_prune_goes_on_from_the_oldest_event_kept() -> None:
    # Given a receiver with no committed position, which has not read anything yet
    streamer = MemoryStreamer()
    await streamer.publish("topic", _messages("a", "b", "c"))
    behind = await streamer.receiver("topic", "behind")

    # When another consumer's acknowledgement lets prune delete the first two
    ahead = await streamer.receiver("topic", "ahead")
    await ahead.ack((await ahead.recv(2))[-1])
    assert await streamer.prune(["topic"], T0 + timedelta(seconds=1)) == 2

    # Then the receiver behind goes on with what is left (no committed position, no protection)
    assert [e.key for e in await behind.recv()] == ["c"]


async def test_shard_arguments_are_checked() -> None:
    streamer = MemoryStreamer()
    for shard, shards in ((0, 0), (-1, 2), (2, 2)):
        with pytest.raises(errors.InvalidInput):
            await streamer.receiver("topic", "name", shard=shard, shards=shards)
    with pytest.raises(errors.InvalidInput):
        await streamer.prune(["topic"], T0.replace(tzinfo=None))


async def test_recv_and_ack_reject_bad_arguments() -> None:
    streamer = MemoryStreamer()
    await streamer.publish("other", _messages("x"))
    [event] = await (await streamer.receiver("other", "name")).recv()
    receiver: EventReceiver = await streamer.receiver("topic", "name")

    with pytest.raises(errors.InvalidInput):
        await receiver.recv(0)
    with pytest.raises(errors.InvalidInput):
        await receiver.ack(event)


# -- timeout store ---------------------------------------------------------------------------


async def test_timeout_ids_count_from_one_and_use_the_clock() -> None:
    clock = FakeClock(T0)
    store = MemoryTimeoutStore(clock)

    first = await store.create("wf", "fid", "run", 1, 1, T0 + timedelta(hours=1))
    clock.advance(5)
    second = await store.create("wf", "fid", "run", 1, 2, T0 + timedelta(hours=1))

    assert (first.id, second.id) == (1, 2)
    assert (first.created_at, second.created_at) == (T0, T0 + timedelta(seconds=5))


async def test_unknown_timeout_ids_raise_timeout_not_found() -> None:
    store = MemoryTimeoutStore()
    await store.create("wf", "fid", "run", 1, 1, T0)

    for missing in (0, 2, -1):
        with pytest.raises(errors.TimeoutNotFound):
            await store.complete(missing)
        with pytest.raises(errors.TimeoutNotFound):
            await store.cancel(missing)
        with pytest.raises(errors.TimeoutNotFound):
            await store.claim(missing, T0, T0)
        with pytest.raises(errors.TimeoutNotFound):
            await store.defer(missing, T0)


async def test_timeout_times_must_be_aware() -> None:
    store = MemoryTimeoutStore()
    timeout = await store.create("wf", "fid", "run", 1, 1, T0)
    naive = T0.replace(tzinfo=None)

    with pytest.raises(errors.InvalidInput):
        await store.claim(timeout.id, naive, T0)
    with pytest.raises(errors.InvalidInput):
        await store.claim(timeout.id, T0, naive)
    with pytest.raises(errors.InvalidInput):
        await store.defer(timeout.id, naive)
    with pytest.raises(errors.InvalidInput):
        await store.prune("wf", naive)
    assert (await store.list("wf"))[0].claimed_until is None


async def test_finished_timers_are_kept_until_pruned() -> None:
    # Given a completed and a cancelled timer, created at T0
    clock = FakeClock(T0)
    store = MemoryTimeoutStore(clock)
    done = await store.create("wf", "fid", "run", 1, 1, T0)
    gone = await store.create("wf", "fid", "run", 2, 2, T0)
    await store.complete(done.id)
    await store.cancel(gone.id)

    # Then they are kept (and remembered per visit) until a prune past T0
    assert await store.prune("wf", T0) == 0
    assert len(store._finished) == len(store._by_visit) == 2
    assert await store.prune("wf", T0 + timedelta(microseconds=1)) == 2
    assert store._finished == store._by_visit == {}


async def test_due_timers_come_in_order_among_many_cancelled_and_claimed() -> None:
    # Given 300 timers of two statuses, expiring in reverse order of creation, of which the runs
    # leave most (their timers cancelled long before they expire), and one claimed
    store = MemoryTimeoutStore(FakeClock(T0))
    made = [
        await store.create(
            "wf", f"fid-{i}", f"run-{i}", 1 + i % 2, 1, T0 + timedelta(seconds=300 - i)
        )
        for i in range(300)
    ]
    for t in made[:250]:
        await store.cancel_for("wf", t.run_id, t.status, 2)
    await store.cancel_for("wf", made[260].run_id, made[260].status + 1, 2)  # other status: kept
    late = T0 + timedelta(days=1)
    assert await store.claim(made[299].id, late, late + timedelta(seconds=1))

    # Then list_due skips the cancelled and the claimed ones, by (expire_at, id), up to limit
    due = await store.list_due("wf", 1, late, limit=10)
    expected = sorted(
        (t for t in made[250:299] if t.status == 1), key=lambda t: (t.expire_at, t.id)
    )
    assert [t.id for t in due] == [t.id for t in expected[:10]]
    assert len(await store.list_due("wf", 1, late)) == len(expected)
    assert [t.id for t in await store.list("wf")] == [t.id for t in made[250:]]
    # And cancelling or completing what is left empties the indexes
    for t in made[250:]:
        await store.complete(t.id)
    assert await store.list_due("wf", 1, late) == await store.list_due("wf", 2, late) == []
    assert store._by_run == {}


# -- role scheduler --------------------------------------------------------------------------


async def test_waiters_are_served_first_come_first_served() -> None:
    scheduler = MemoryRoleScheduler()
    holder = await scheduler.acquire("role")
    order: list[int] = []

    async def contender(i: int) -> None:
        lease = await scheduler.acquire("role")
        order.append(i)
        await asyncio.sleep(0)
        await lease.release()

    tasks = [asyncio.create_task(contender(i)) for i in range(5)]
    await asyncio.sleep(0)
    await holder.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)

    assert order == [0, 1, 2, 3, 4]
    assert scheduler._roles == {}


async def test_lost_returns_once_the_lease_is_released() -> None:
    lease: Lease = await MemoryRoleScheduler().acquire("role")
    watcher = asyncio.create_task(lease.lost())
    await asyncio.sleep(0)

    await lease.release()

    await asyncio.wait_for(watcher, 1)
    await asyncio.wait_for(lease.lost(), 1)


async def test_waiter_granted_and_cancelled_together_hands_the_role_on() -> None:
    # Given two waiters queued behind a holder
    scheduler = MemoryRoleScheduler()
    holder = await scheduler.acquire("role")
    cancelled = asyncio.create_task(scheduler.acquire("role"))
    successor = asyncio.create_task(scheduler.acquire("role"))
    await asyncio.sleep(0)

    # When the role is handed to the first waiter in the same step as it is cancelled
    await holder.release()
    cancelled.cancel()

    # Then the first waiter raises and the second gets the role
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    lease = await asyncio.wait_for(successor, 1)
    await lease.release()
    assert scheduler._roles == {}
