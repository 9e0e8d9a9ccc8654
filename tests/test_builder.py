"""Builder: every mistake in a definition is a ConfigurationError raised at the call."""

from __future__ import annotations

import math
from datetime import timedelta
from enum import Enum, IntEnum
from typing import Any

import pytest

from helpers import Adapters, Order, Status, build, order_builder, pay, ship
from statestream import Builder, ConfigurationError, ProcessState, Run
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer


class WithZero(IntEnum):
    UNKNOWN = 0
    CREATED = 1
    DONE = 2


class Other(IntEnum):
    CREATED = 1
    PAID = 2


class Plain(Enum):
    A = 1


def builder() -> Builder[Order, Status]:
    return Builder("orders", Order, Status)


# ------------------------------------------------------------------------------- constructor


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_name_must_be_a_non_empty_string(name: Any) -> None:
    with pytest.raises(ConfigurationError):
        Builder(name, Order, Status)


@pytest.mark.parametrize("status_type", [Plain, int, Status.CREATED, None])
def test_status_type_must_be_an_int_enum(status_type: Any) -> None:
    with pytest.raises(ConfigurationError):
        Builder("orders", Order, status_type)


@pytest.mark.parametrize("object_type", [Order(), None, "Order"])
def test_object_type_must_be_a_class(object_type: Any) -> None:
    with pytest.raises(ConfigurationError):
        Builder("orders", object_type, Status)


def test_unsupported_object_type_is_rejected_at_the_call() -> None:
    with pytest.raises(ConfigurationError):
        Builder("numbers", int, Status)


# ------------------------------------------------------------------------------- add_step


def test_duplicate_step_for_a_status() -> None:
    b = builder().add_step(Status.CREATED, pay, Status.PAID)
    with pytest.raises(ConfigurationError, match="already"):
        b.add_step(Status.CREATED, ship, Status.SHIPPED)


def test_status_value_zero_is_reserved() -> None:
    b = Builder("z", Order, WithZero)
    with pytest.raises(ConfigurationError, match="0"):
        b.add_step(WithZero.UNKNOWN, pay, WithZero.DONE)
    with pytest.raises(ConfigurationError, match="0"):
        b.add_step(WithZero.CREATED, pay, WithZero.UNKNOWN)


@pytest.mark.parametrize("bad", [Other.CREATED, 1, "CREATED", None])
def test_step_status_must_be_a_member_of_the_enum(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        builder().add_step(bad, pay, Status.PAID)


@pytest.mark.parametrize("bad", [Other.PAID, 2, None])
def test_destinations_must_be_members_of_the_enum(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        builder().add_step(Status.CREATED, pay, Status.PAID, bad)


def test_a_step_needs_a_destination() -> None:
    with pytest.raises(ConfigurationError, match="next status"):
        builder().add_step(Status.CREATED, pay)


@pytest.mark.parametrize("fn", [None, 42, "pay"])
def test_step_must_be_callable(fn: Any) -> None:
    with pytest.raises(ConfigurationError, match="callable"):
        builder().add_step(Status.CREATED, fn, Status.PAID)


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2"])
@pytest.mark.parametrize("option", ["parallel_count", "concurrency"])
def test_counts_must_be_positive_ints(option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=option):
        builder().add_step(Status.CREATED, pay, Status.PAID, **{option: value})
    with pytest.raises(ConfigurationError, match=option):
        builder().defaults(**{option: value})


@pytest.mark.parametrize("value", [-1, True, 1.5])
def test_pause_after_errors_must_be_a_non_negative_int(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="pause_after_errors"):
        builder().add_step(Status.CREATED, pay, Status.PAID, pause_after_errors=value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("error_backoff", -0.5),
        ("error_backoff", 0),
        ("error_backoff", math.nan),
        ("max_error_backoff", math.inf),
        ("polling_frequency", 0),
        ("polling_frequency", timedelta(0)),
        ("polling_frequency", -timedelta(seconds=1)),
        ("polling_frequency", "1s"),
        ("lag", -1),
        ("lag_alert", True),
    ],
)
def test_durations_are_validated(option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=option):
        builder().add_step(Status.CREATED, pay, Status.PAID, **{option: value})
    with pytest.raises(ConfigurationError, match=option):
        builder().defaults(**{option: value})


def test_outbox_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="polling_frequency"):
        builder().outbox(polling_frequency=0)
    with pytest.raises(ConfigurationError, match="error_backoff"):
        builder().outbox(error_backoff=-1)


def test_a_rejected_add_step_leaves_nothing_behind() -> None:
    b = builder()
    with pytest.raises(ConfigurationError):
        b.add_step(Status.CREATED, pay, Status.PAID, parallel_count=0)
    # the status is still free, and its graph edge was not added
    b.add_step(Status.CREATED, pay, Status.SHIPPED)
    wf, _ = build(b)
    assert wf.graph == {Status.CREATED: [Status.SHIPPED], Status.SHIPPED: []}


def test_valid_options_are_accepted() -> None:
    b = builder().defaults(
        parallel_count=2,
        concurrency=4,
        polling_frequency=timedelta(milliseconds=10),
        error_backoff=0.01,
        max_error_backoff=1,
        pause_after_errors=0,
        lag=0,
        lag_alert=60,
    )
    b.add_step(Status.CREATED, pay, Status.PAID, parallel_count=3, lag=timedelta(seconds=1))
    wf, _ = build(b)
    assert [n for n in wf.states() if "consumer-" in n and "-of-" in n] == [
        "created-consumer-1-of-3",
        "created-consumer-2-of-3",
        "created-consumer-3-of-3",
    ]


def test_step_decorator() -> None:
    b = builder()

    @b.step(Status.CREATED, to=(Status.PAID, Status.REFUNDED))
    async def decide(run: Run[Order, Status]) -> Status:
        return Status.PAID

    @b.step(Status.PAID, to=Status.SHIPPED)
    def ship_sync(run: Run[Order, Status]) -> Status:
        return Status.SHIPPED

    wf, _ = build(b)
    assert wf.graph[Status.CREATED] == [Status.PAID, Status.REFUNDED]
    assert wf.graph[Status.PAID] == [Status.SHIPPED]
    with pytest.raises(ConfigurationError):
        b.step(Status.CREATED, to=Status.PAID)(decide)


# ------------------------------------------------------------------------------- hooks


@pytest.mark.parametrize("hook", ["on_pause", "on_cancel", "on_complete"])
def test_hooks_must_be_callable_and_unique(hook: str) -> None:
    b = builder()
    with pytest.raises(ConfigurationError, match="callable"):
        getattr(b, hook)(None)
    getattr(b, hook)(lambda run: None)
    with pytest.raises(ConfigurationError, match="already"):
        getattr(b, hook)(lambda run: None)


# ------------------------------------------------------------------------------- build


def test_build_without_steps() -> None:
    a = Adapters()
    with pytest.raises(ConfigurationError, match="no steps"):
        builder().build(a.streamer, a.store, a.scheduler)


def test_build_a_graph_without_a_starting_status() -> None:
    b = builder()
    b.add_step(Status.CREATED, pay, Status.PAID)
    b.add_step(Status.PAID, ship, Status.CREATED)
    a = Adapters()
    with pytest.raises(ConfigurationError, match="starting status"):
        b.build(a.streamer, a.store, a.scheduler)


@pytest.mark.parametrize(
    "start_at",
    [Status.SHIPPED, Status.REFUNDED, Other.CREATED],
    ids=["terminal", "not-in-graph", "other-enum"],
)
def test_build_with_an_unusable_start_at(start_at: Any) -> None:
    a = Adapters()
    with pytest.raises(ConfigurationError):
        order_builder().build(a.streamer, a.store, a.scheduler, start_at=start_at)


@pytest.mark.parametrize("slot", ["streamer", "store", "scheduler", "timeout_store"])
def test_build_rejects_adapters_that_do_not_implement_the_protocols(slot: str) -> None:
    adapters: dict[str, Any] = {
        "streamer": MemoryStreamer(),
        "store": MemoryRecordStore(),
        "scheduler": MemoryRoleScheduler(),
    }
    adapters[slot] = object()
    streamer, store, scheduler = adapters["streamer"], adapters["store"], adapters["scheduler"]
    kwargs = {"timeout_store": adapters["timeout_store"]} if slot == "timeout_store" else {}
    with pytest.raises(ConfigurationError, match=slot):
        order_builder().build(streamer, store, scheduler, **kwargs)


def test_build_swapped_adapters_are_rejected() -> None:
    a = Adapters()
    with pytest.raises(ConfigurationError):
        order_builder().build(a.store, a.streamer, a.scheduler)  # type: ignore[arg-type]


def test_one_builder_builds_independent_workflows() -> None:
    b = order_builder()
    wf1, _ = build(b)
    # a step added after the first build does not change the workflow already built
    b.add_step(Status.SHIPPED, ship, Status.REFUNDED)
    wf2, _ = build(b)
    assert Status.SHIPPED not in wf1.graph or wf1.graph[Status.SHIPPED] == []
    assert wf2.graph[Status.SHIPPED] == [Status.REFUNDED]
    assert set(wf1.states().values()) == {ProcessState.UNKNOWN}


def test_an_option_a_call_does_not_take_is_refused_at_the_call() -> None:
    b = Builder("orders", Order, Status)
    options: dict[str, Any] = {"parallel_count": 2}
    lag: dict[str, Any] = {"lag": 1}
    # A timeout has one poller per status: it cannot be sharded (as in luno/workflow).
    with pytest.raises(ConfigurationError, match=r"add_timeout\(\) does not take .*parallel_count"):
        b.add_timeout(
            Status.PAID,
            lambda run, now: None,
            lambda run, now: Status.SHIPPED,
            Status.SHIPPED,
            **options,
        )
    with pytest.raises(ConfigurationError, match="does not take the option 'paralel_count'"):
        b.add_step(Status.CREATED, pay, Status.PAID, **{"paralel_count": 2})  # noqa: PIE804
    with pytest.raises(ConfigurationError, match=r"outbox\(\) does not take .*lag"):
        b.outbox(**lag)
    # and nothing was declared by the refused calls
    assert b.add_step(Status.CREATED, pay, Status.PAID) is b
