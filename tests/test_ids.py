"""Run and event IDs: UUIDv7 (RFC 9562) as 32 hex digits, so that they sort by creation time."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from helpers import build, order_builder
from statestream._core import ids as _ids

HEX32 = re.compile(r"^[0-9a-f]{32}$")
GENERATORS = [pytest.param(_ids.new_id, id="new_id"), pytest.param(_ids._uuid7_hex, id="own")]


def next_millisecond() -> None:
    """Wait until the wall clock is in a later millisecond than when called."""
    start = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 == start:
        time.sleep(0.0002)


@pytest.mark.parametrize("new_id", GENERATORS)
def test_ids_are_uuid7_as_32_hex_digits(new_id: _ids.IdFactory) -> None:
    for _ in range(1000):
        value = new_id()
        assert HEX32.match(value), value
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize("new_id", GENERATORS)
def test_ids_carry_their_creation_millisecond(new_id: _ids.IdFactory) -> None:
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= int(value[:12], 16) <= after


@pytest.mark.parametrize("new_id", GENERATORS)
def test_ids_sort_by_creation_across_milliseconds(new_id: _ids.IdFactory) -> None:
    made = []
    for _ in range(5):
        made.append(new_id())
        next_millisecond()
    assert sorted(made) == made
    assert len({value[:12] for value in made}) == 5  # five different milliseconds


@pytest.mark.parametrize("new_id", GENERATORS)
def test_ids_are_unique_and_ordered_within_a_millisecond(new_id: _ids.IdFactory) -> None:
    made = [new_id() for _ in range(100_000)]
    assert len(set(made)) == len(made)
    assert sorted(made) == made  # a counter orders the IDs made in the same millisecond


def test_own_ids_stay_ordered_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = _ids._uuid7_hex()
    earlier = time.time_ns() - 10_000_000_000  # 10 s back, as after an NTP correction
    monkeypatch.setattr(_ids, "time_ns", lambda: earlier)
    second = _ids._uuid7_hex()
    assert second > first
    assert second[:12] == first[:12]  # the last millisecond is kept until the clock passes it


def test_own_ids_stay_ordered_when_the_counter_runs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = time.time_ns()
    monkeypatch.setattr(_ids, "time_ns", lambda: frozen)
    first = _ids._uuid7_hex()
    monkeypatch.setattr(_ids, "_last_counter", _ids._COUNTER_MAX)
    second = _ids._uuid7_hex()
    assert second > first
    assert int(second[:12], 16) == int(first[:12], 16) + 1  # the millisecond moved on


def test_a_forked_child_draws_new_random_bits() -> None:
    _ids._uuid7_hex()
    pool = _ids._pool
    _ids._forget_after_fork()  # what os.fork runs in the child
    _ids._uuid7_hex()
    assert _ids._pool is not pool


async def test_run_ids_of_a_workflow_are_time_ordered() -> None:
    wf, a = build(order_builder())
    run_ids = []
    for n in range(3):
        run_ids.append(await wf.trigger(f"order-{n}"))
        next_millisecond()
    assert sorted(run_ids) == run_ids
    assert all(uuid.UUID(hex=run_id).version == 7 for run_id in run_ids)
    outbox = await a.store.list_outbox(wf.name, 10)
    assert len(outbox) == 3
    assert all(uuid.UUID(hex=event.id).version == 7 for event in outbox)
