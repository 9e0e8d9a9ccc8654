"""Inputs that a store cannot hold are refused at the public call, and nothing is written.

Each of these once got through the call and failed later, in the SQLite driver or in the
standard library: text with a lone surrogate (not encodable as UTF-8), a status value beyond a
BIGINT column, an ``@every`` interval beyond ``timedelta``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest

from helpers import Order, Status, eventually, fast
from statestream import Builder, Run, RunState, Workflow, errors
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
)

LONE = "\ud800"  # a lone surrogate: a valid str, but no UTF-8 encoding exists


async def ship(run: Run[Order, Status], payload: Any) -> Status:
    return Status.SHIPPED


def texts_builder(payload_type: type[Any] = bytes) -> Builder[Order, Status]:
    b = Builder("texts", Order, Status)
    b.add_step(Status.CREATED, ship, Status.PAID)
    b.add_callback(Status.PAID, ship, Status.SHIPPED, payload_type=payload_type)
    return b


Make = Callable[[Builder[Order, Status]], Workflow[Order, Status]]


@pytest.fixture(params=["memory", "sqlite"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    if request.param == "memory":
        yield lambda b: b.build(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler())
        return
    db = SqliteDatabase(tmp_path / "texts.db")
    try:
        yield lambda b: b.build(SqliteStreamer(db), SqliteRecordStore(db), SqliteRoleScheduler(db))
    finally:
        await db.close()


async def test_a_foreign_id_with_a_lone_surrogate_is_refused_everywhere(make: Make) -> None:
    wf = make(texts_builder())
    bad = f"order-{LONE}"
    with pytest.raises(errors.InvalidInput, match="foreign_id"):
        await wf.trigger(bad)
    with pytest.raises(errors.InvalidInput, match="foreign_id"):
        await wf.latest(bad)
    with pytest.raises(errors.InvalidInput, match="foreign_id"):
        await wf.callback(bad, Status.PAID, b"")
    with pytest.raises(errors.InvalidInput, match="foreign_id"):
        await wf.wait_for(bad, "0" * 32, Status.PAID, timeout=0)
    with pytest.raises(errors.InvalidInput, match="foreign_id"):
        wf.schedule(bad, "@every 1h")
    with pytest.raises(errors.InvalidInput, match="run_id"):
        await wf.get(LONE)
    assert await wf.store.list() == []


async def test_an_object_with_a_lone_surrogate_is_refused_at_trigger(make: Make) -> None:
    wf = make(texts_builder())
    with pytest.raises(errors.InvalidObject):
        await wf.trigger("order-1", initial=Order(id=LONE))
    assert await wf.store.list() == []


@pytest.mark.parametrize("control", ["pause", "cancel", "delete_data"])
async def test_a_reason_with_a_lone_surrogate_is_refused(make: Make, control: str) -> None:
    wf = make(texts_builder())
    run_id = await wf.trigger("order-1", start_at=Status.PAID)
    if control == "cancel":
        await wf.pause(run_id)  # an Initiated run is paused before it is cancelled
    before = await wf.store.lookup(run_id)
    with pytest.raises(errors.InvalidInput, match="reason"):
        await getattr(wf, control)(run_id, reason=f"because {LONE}")
    assert await wf.store.lookup(run_id) == before


@pytest.mark.parametrize("payload_type", [bytes, dict])
async def test_a_callback_payload_with_a_lone_surrogate_is_refused(
    make: Make, payload_type: type[Any]
) -> None:
    wf = make(texts_builder(payload_type))
    run_id = await wf.trigger("order-1", start_at=Status.PAID)
    before = await wf.store.lookup(run_id)
    with pytest.raises(errors.InvalidInput, match="payload"):
        await wf.callback("order-1", Status.PAID, f'{{"note": "{LONE}"}}')
    assert await wf.store.lookup(run_id) == before


async def test_text_that_is_merely_unusual_is_kept(make: Make) -> None:
    # Astral characters, NUL and paired surrogates written as one character are all fine.
    wf = make(texts_builder())
    foreign_id = "ördér-😀-\x00-\U0010ffff"
    run_id = await wf.trigger(foreign_id, initial=Order(id="😀"), start_at=Status.PAID)
    run = await wf.pause(run_id, reason="wait ✓ 😀")
    assert (run.foreign_id, run.object.id, run.run_state_reason) == (foreign_id, "😀", "wait ✓ 😀")
    assert (await wf.latest(foreign_id)).run_id == run_id


# ------------------------------------------------------------------ status values


class Huge(IntEnum):
    CREATED = 1
    DONE = 2**63


class Tiny(IntEnum):
    CREATED = 1
    DONE = -(2**63) - 1


class Widest(IntEnum):
    CREATED = -(2**63)
    DONE = 2**63 - 1


@pytest.mark.parametrize("status_type", [Huge, Tiny])
def test_a_status_value_beyond_bigint_is_refused_by_the_builder(status_type: Any) -> None:
    with pytest.raises(errors.ConfigurationError, match="64-bit"):
        Builder("huge", Order, status_type)


async def test_the_widest_status_values_are_stored(make: Make) -> None:
    async def done(run: Run[Order, Widest]) -> Widest:
        return Widest.DONE

    b = Builder("widest", Order, Widest)
    b.add_step(Widest.CREATED, done, Widest.DONE)
    wf: Workflow[Order, Widest] = make(b)  # type: ignore[arg-type]
    run_id = await wf.trigger("w-1")
    assert (await wf.get(run_id)).status is Widest.CREATED
    assert (await wf.store.lookup(run_id)).status == -(2**63)


# ------------------------------------------------------------------ @every intervals


TOO_LONG = ["@every 99999999999h", "@every " + "9" * 400 + "d", "@every 36526d"]


@pytest.mark.parametrize("spec", TOO_LONG)
async def test_an_every_interval_beyond_a_century_is_refused(make: Make, spec: str) -> None:
    wf = make(texts_builder())
    with pytest.raises(errors.InvalidInput, match="@every"):
        wf.schedule("order-1", spec)


async def test_an_every_interval_that_rounds_to_nothing_is_refused(make: Make) -> None:
    wf = make(texts_builder())
    with pytest.raises(errors.InvalidInput, match="@every"):
        wf.schedule("order-1", "@every 0.0001ms")
    wf.schedule("order-1", "@every 36525d")  # a century is the longest interval


# ------------------------------------------------------------------ reasons written by the engine


async def test_an_error_message_with_a_lone_surrogate_still_pauses_the_run(make: Make) -> None:
    # The reason of an automatic pause quotes the error, whose text comes from anywhere.
    async def fails(run: Run[Order, Status]) -> Status:
        raise ValueError(f"bad input {LONE}")

    b = fast(Builder("texts", Order, Status))
    b.add_step(Status.CREATED, fails, Status.PAID, pause_after_errors=2)
    wf = make(b)
    async with wf:
        run_id = await wf.trigger("order-1")
        await eventually(lambda: paused(wf, run_id), what="the run is paused")
    reason = (await wf.get(run_id)).run_state_reason
    assert "bad input \\ud800" in reason


async def test_a_step_pausing_with_a_lone_surrogate_is_an_error_on_every_store(make: Make) -> None:
    async def pauses(run: Run[Order, Status]) -> Any:
        return run.pause(f"because {LONE}")

    b = fast(Builder("texts", Order, Status))
    b.add_step(Status.CREATED, pauses, Status.PAID, pause_after_errors=2)
    wf = make(b)
    async with wf:
        run_id = await wf.trigger("order-1")
        await eventually(lambda: paused(wf, run_id), what="the run is paused")
    reason = (await wf.get(run_id)).run_state_reason
    assert "2 consecutive errors" in reason
    assert "InvalidInput" in reason


async def paused(wf: Workflow[Order, Status], run_id: str) -> bool:
    return (await wf.get(run_id)).run_state is RunState.PAUSED
