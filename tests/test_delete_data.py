"""Data deletion (GDPR) of finished runs (issue "Time and the outside world").

A run goes START -> DONE by one step (Completed), or is cancelled at HELD. ``wf.delete_data``
marks it Requested Data Deleted; the delete process scrubs its object and marks it Data Deleted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import pytest

from helpers import eventually
from statestream import Builder, Run, RunState, Workflow, errors
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
from statestream.testing import FakeClock


class S(IntEnum):
    START = 1
    HELD = 2
    DONE = 3


@dataclass
class Customer:
    order_id: str = ""
    name: str = ""
    email: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class Strict:
    """An object type without a no-argument constructor."""

    order_id: str
    email: str


async def finish(run: Run[Any, S]) -> S:
    return S.HELD if getattr(run.object, "order_id", "") == "hold" else S.DONE


async def release(run: Run[Any, S]) -> S:
    return S.DONE


def builder(object_type: type[Any] = Customer, scrub: Any = None) -> Builder[Any, S]:
    b = Builder("orders", object_type, S)
    b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(S.START, finish, S.HELD, S.DONE)
    b.add_callback(S.HELD, lambda run, payload: S.DONE, S.DONE)
    if scrub is not None:
        b.on_delete_data(scrub)
    return b


def build(b: Builder[Any, S]) -> tuple[Workflow[Any, S], MemoryRecordStore]:
    store = MemoryRecordStore(keep_snapshots=True)
    wf = b.build(
        MemoryStreamer(), store, MemoryRoleScheduler(), clock=FakeClock(), pause_retry=None
    )
    return wf, store


async def in_state(wf: Workflow[Any, S], run_id: str, state: RunState) -> bool:
    return (await wf.get(run_id)).run_state is state


def states(store: MemoryRecordStore, run_id: str) -> list[RunState]:
    return [r.run_state for r in store.snapshots(run_id)]


PERSON = Customer("order-1", "Ann Example", "ann@example.com", ["vip"])


# ------------------------------------------------------------------------------ scrubbing


async def test_default_scrub_replaces_the_object_with_an_empty_one() -> None:
    # Given a completed run carrying personal data
    wf, store = build(builder())
    async with wf:
        run_id = await wf.trigger("order-1", initial=PERSON)
        await eventually(lambda: in_state(wf, run_id, RunState.COMPLETED), what="completed")

        # When its data deletion is requested
        requested = await wf.delete_data(run_id, "customer asked")

        # Then the call returns the run as Requested Data Deleted, still with its object
        assert requested.run_state is RunState.REQUESTED_DATA_DELETED
        assert requested.run_state_reason == "customer asked"

        # And the delete process scrubs it to an empty object and marks it Data Deleted
        await eventually(lambda: in_state(wf, run_id, RunState.DATA_DELETED), what="deleted")

    run = await wf.get(run_id)
    assert run.object == Customer()
    assert run.status is S.DONE
    assert states(store, run_id)[-3:] == [
        RunState.COMPLETED,
        RunState.REQUESTED_DATA_DELETED,
        RunState.DATA_DELETED,
    ]
    assert b"ann@example.com" not in store.snapshots(run_id)[-1].object


async def test_custom_scrub_keeps_non_personal_fields() -> None:
    # Given a scrub function that keeps the order ID and the tags
    def scrub(c: Customer) -> Customer:
        return replace(c, name="", email="")

    wf, _ = build(builder(scrub=scrub))
    async with wf:
        run_id = await wf.trigger("order-1", initial=PERSON)
        await eventually(lambda: in_state(wf, run_id, RunState.COMPLETED), what="completed")

        # When its data is deleted
        await wf.delete_data(run_id)
        await eventually(lambda: in_state(wf, run_id, RunState.DATA_DELETED), what="deleted")

    # Then only the personal fields are gone
    assert (await wf.get(run_id)).object == Customer("order-1", "", "", ["vip"])


async def test_custom_scrub_works_for_a_type_without_a_no_arg_constructor() -> None:
    wf, _ = build(builder(Strict, scrub=lambda s: Strict(s.order_id, email="")))
    async with wf:
        run_id = await wf.trigger("order-1", initial=Strict("order-1", "ann@example.com"))
        await eventually(lambda: in_state(wf, run_id, RunState.COMPLETED), what="completed")
        await wf.delete_data(run_id)
        await eventually(lambda: in_state(wf, run_id, RunState.DATA_DELETED), what="deleted")
    assert (await wf.get(run_id)).object == Strict("order-1", "")


async def test_failing_scrub_function_is_retried() -> None:
    # Given a scrub function that fails the first two times
    calls = 0

    def scrub(c: Customer) -> Customer:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError("vault unavailable")
        return Customer(c.order_id)

    wf, _ = build(builder(scrub=scrub))
    async with wf:
        run_id = await wf.trigger("order-1", initial=PERSON)
        await eventually(lambda: in_state(wf, run_id, RunState.COMPLETED), what="completed")

        # When its data is deleted
        await wf.delete_data(run_id)

        # Then the deleter retries until the scrub works
        await eventually(lambda: in_state(wf, run_id, RunState.DATA_DELETED), what="deleted")
    assert calls == 3
    assert (await wf.get(run_id)).object == Customer("order-1")


async def test_cancelled_run_can_have_its_data_deleted() -> None:
    # Given a run cancelled while held
    wf, store = build(builder())
    async with wf:
        run_id = await wf.trigger("order-1", initial=replace(PERSON, order_id="hold"))
        await wf.wait_for("order-1", run_id, S.HELD, timeout=2)
        await wf.cancel(run_id, "fraud")

        # When its data is deleted
        await wf.delete_data(run_id)
        await eventually(lambda: in_state(wf, run_id, RunState.DATA_DELETED), what="deleted")

    # Then it went Cancelled -> Requested Data Deleted -> Data Deleted, at the status it had
    run = await wf.get(run_id)
    assert (run.status, run.object) == (S.HELD, Customer())
    assert states(store, run_id)[-3:] == [
        RunState.CANCELLED,
        RunState.REQUESTED_DATA_DELETED,
        RunState.DATA_DELETED,
    ]


async def test_deletion_requested_while_stopped_happens_when_a_process_starts() -> None:
    # Given a completed run and no started process
    wf, _ = build(builder())
    async with wf:
        run_id = await wf.trigger("order-1", initial=PERSON)
        await eventually(lambda: in_state(wf, run_id, RunState.COMPLETED), what="completed")

    # When deletion is requested while nothing runs
    await wf.delete_data(run_id)
    await asyncio.sleep(0.02)
    assert (await wf.get(run_id)).run_state is RunState.REQUESTED_DATA_DELETED

    # Then the deleter does it once the workflow starts
    async with wf:
        await eventually(lambda: in_state(wf, run_id, RunState.DATA_DELETED), what="deleted")
    assert (await wf.get(run_id)).object == Customer()


async def test_a_new_run_may_start_once_data_deletion_is_requested() -> None:
    wf, _ = build(builder())
    async with wf:
        first = await wf.trigger("order-1", initial=PERSON)
        await eventually(lambda: in_state(wf, first, RunState.COMPLETED), what="completed")
        await wf.delete_data(first)
        second = await wf.trigger("order-1")
        await eventually(lambda: in_state(wf, first, RunState.DATA_DELETED), what="deleted")
        await eventually(lambda: in_state(wf, second, RunState.COMPLETED), what="second run")
    assert (await wf.latest("order-1")).run_id == second


# ------------------------------------------------------------------------------ refusals


async def test_deleting_the_data_of_an_unfinished_run_is_an_invalid_transition() -> None:
    # Given a run held at HELD (running) and one paused there
    wf, store = build(builder())
    async with wf:
        running = await wf.trigger("order-1", initial=replace(PERSON, order_id="hold"))
        await wf.wait_for("order-1", running, S.HELD, timeout=2)
        paused = await wf.trigger("order-2", initial=replace(PERSON, order_id="hold"))
        await wf.wait_for("order-2", paused, S.HELD, timeout=2)
        await wf.pause(paused)
        before = {r: len(store.snapshots(r)) for r in (running, paused)}

        # When deletion is requested, then it is refused and nothing is written
        for run_id in (running, paused):
            with pytest.raises(errors.InvalidTransition):
                await wf.delete_data(run_id)
        assert {r: len(store.snapshots(r)) for r in (running, paused)} == before
        assert (await wf.get(running)).object == replace(PERSON, order_id="hold")


async def test_deleting_an_initiated_run_is_an_invalid_transition() -> None:
    wf, store = build(builder())  # not started: the run stays Initiated
    run_id = await wf.trigger("order-1", initial=PERSON)
    with pytest.raises(errors.InvalidTransition):
        await wf.delete_data(run_id)
    assert states(store, run_id) == [RunState.INITIATED]


async def test_requesting_deletion_twice_is_an_invalid_transition() -> None:
    wf, store = build(builder())
    async with wf:
        run_id = await wf.trigger("order-1", initial=PERSON)
        await eventually(lambda: in_state(wf, run_id, RunState.COMPLETED), what="completed")
    await wf.delete_data(run_id)
    with pytest.raises(errors.InvalidTransition):
        await wf.delete_data(run_id)
    assert states(store, run_id)[-1] is RunState.REQUESTED_DATA_DELETED


async def test_without_a_scrub_function_an_object_type_needing_arguments_is_refused() -> None:
    # Given a completed run whose object type cannot be built without arguments, and no
    # on_delete_data function
    wf, store = build(builder(Strict))
    async with wf:
        run_id = await wf.trigger("order-1", initial=Strict("order-1", "ann@example.com"))
        await eventually(lambda: in_state(wf, run_id, RunState.COMPLETED), what="completed")
        before = states(store, run_id)

        # When deletion is requested, then the call says how to fix it and nothing is written
        with pytest.raises(errors.ConfigurationError, match="on_delete_data"):
            await wf.delete_data(run_id)
        await asyncio.sleep(0.02)
    assert states(store, run_id) == before
    assert (await wf.get(run_id)).object == Strict("order-1", "ann@example.com")


async def test_deleting_an_unknown_run_is_record_not_found() -> None:
    wf, _ = build(builder())
    with pytest.raises(errors.RecordNotFound):
        await wf.delete_data("no-such-run")


def test_on_delete_data_needs_a_callable() -> None:
    with pytest.raises(errors.ConfigurationError, match="callable"):
        builder().on_delete_data("blank it")  # type: ignore[arg-type]


def test_delete_process_is_listed() -> None:
    wf, _ = build(builder())
    assert "delete-consumer" in wf.states()
