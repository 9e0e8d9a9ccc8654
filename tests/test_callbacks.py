"""Callbacks: outside input that moves a run waiting at a status (issue "Time and the outside
world").

Most tests need no background process: ``wf.callback`` works whether or not the workflow is
started, so runs are triggered straight at WAITING and the callback is called directly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import pytest

from statestream import (
    Builder,
    CallbackOutcome,
    CallbackResult,
    Run,
    RunState,
    Workflow,
    errors,
)
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
from statestream.testing import FakeClock, callback_on


class S(IntEnum):
    START = 1
    WAITING = 2
    REVIEW = 3
    APPROVED = 4
    REJECTED = 5
    UNUSED = 6  # a member that is not part of the graph


class Other(IntEnum):
    WAITING = 2


@dataclass
class Doc:
    name: str = ""
    notes: str = ""


@dataclass
class Decision:
    approved: bool
    note: str = ""


async def to_waiting(run: Run[Doc, S]) -> S:
    return S.WAITING


async def triage(run: Run[Doc, S], payload: bytes) -> Any:
    """WAITING: b"review" -> REVIEW, b"approve" -> APPROVED, anything else is skipped."""
    run.object.notes += payload.decode()
    if payload == b"review":
        return S.REVIEW
    if payload == b"approve":
        return S.APPROVED
    return run.skip()


async def decide(run: Run[Doc, S], decision: Decision) -> S:
    """REVIEW: a typed decision."""
    run.object.notes = decision.note
    return S.APPROVED if decision.approved else S.REJECTED


def builder(*callbacks: tuple[S, Any, tuple[S, ...], type[Any]]) -> Builder[Doc, S]:
    """START -> WAITING by a step; the given callbacks, or the default triage and decide."""
    b = Builder("docs", Doc, S)
    b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(S.START, to_waiting, S.WAITING)
    if not callbacks:
        callbacks = (
            (S.WAITING, triage, (S.REVIEW, S.APPROVED), bytes),
            (S.REVIEW, decide, (S.APPROVED, S.REJECTED), Decision),
        )
    for status, fn, to, payload_type in callbacks:
        b.add_callback(status, fn, *to, payload_type=payload_type)
    return b


def build(b: Builder[Doc, S] | None = None) -> tuple[Workflow[Doc, S], MemoryRecordStore]:
    store = MemoryRecordStore(keep_snapshots=True)
    wf = (b or builder()).build(
        MemoryStreamer(), store, MemoryRoleScheduler(), clock=FakeClock(), pause_retry=None
    )
    return wf, store


async def waiting(wf: Workflow[Doc, S], foreign_id: str = "doc-1", name: str = "") -> str:
    """A run of ``foreign_id`` waiting at WAITING (triggered there; nothing is started)."""
    return await wf.trigger(foreign_id, initial=Doc(name), start_at=S.WAITING)


# ------------------------------------------------------------------------------ outcomes


async def test_applied_callback_moves_the_run_and_stores_the_object() -> None:
    # Given a run waiting at WAITING
    wf, _ = build()
    run_id = await waiting(wf, name="contract")

    # When a callback for WAITING arrives
    result = await wf.callback("doc-1", S.WAITING, b"review")

    # Then it was applied: the run moved to REVIEW with the object the callback changed
    assert isinstance(result, CallbackResult)
    assert result.outcome is CallbackOutcome.APPLIED
    assert result.applied
    assert result.run.run_id == run_id
    assert (result.run.status, result.run.run_state) == (S.REVIEW, RunState.RUNNING)
    assert result.run.object == Doc("contract", "review")
    stored = await wf.get(run_id)
    assert (stored.status, stored.version, stored.object) == (
        S.REVIEW,
        2,
        Doc("contract", "review"),
    )


async def test_callback_to_a_terminal_status_completes_the_run() -> None:
    wf, _ = build()
    run_id = await waiting(wf)

    result = await wf.callback("doc-1", S.WAITING, "approve")  # str payloads are encoded

    assert result.outcome is CallbackOutcome.APPLIED
    run = await wf.get(run_id)
    assert (run.status, run.run_state) == (S.APPROVED, RunState.COMPLETED)


async def test_callback_for_a_run_elsewhere_is_not_at_status_and_writes_nothing() -> None:
    # Given a run that already moved on to REVIEW
    wf, store = build()
    run_id = await waiting(wf)
    await wf.callback("doc-1", S.WAITING, b"review")
    versions = len(store.snapshots(run_id))

    # When a (late) callback for WAITING arrives
    result = await wf.callback("doc-1", S.WAITING, b"approve")

    # Then it reports that the run is elsewhere, with the run as it is, and writes nothing
    assert result.outcome is CallbackOutcome.NOT_AT_STATUS
    assert not result.applied
    assert result.run.status is S.REVIEW
    assert len(store.snapshots(run_id)) == versions


async def _pause(wf: Workflow[Doc, S], run_id: str) -> None:
    await wf.pause(run_id, "on hold")


async def _cancel(wf: Workflow[Doc, S], run_id: str) -> None:
    await wf.callback("doc-1", S.WAITING, b"review")
    await wf.cancel(run_id, "withdrawn")


async def _complete(wf: Workflow[Doc, S], run_id: str) -> None:
    await wf.callback("doc-1", S.WAITING, b"approve")


@pytest.mark.parametrize(
    ("stop", "at", "payload", "state"),
    [
        (_pause, S.WAITING, b"approve", RunState.PAUSED),
        (_cancel, S.REVIEW, b'{"approved": true}', RunState.CANCELLED),
        (_complete, S.APPROVED, b"approve", RunState.COMPLETED),
    ],
    ids=["paused", "cancelled", "completed"],
)
async def test_callback_for_a_stopped_run_reports_stopped_and_writes_nothing(
    stop: Any, at: S, payload: bytes, state: RunState
) -> None:
    # Given a run that is paused (at WAITING), cancelled (at REVIEW) or completed (at APPROVED)
    wf, store = build()
    run_id = await waiting(wf)
    await stop(wf, run_id)
    versions = len(store.snapshots(run_id))

    # When a callback arrives for the status it is at (WAITING for the completed one)
    result = await wf.callback("doc-1", S.WAITING if at is S.APPROVED else at, payload)

    # Then it is not applied and says the run is stopped (not the same as "elsewhere")
    assert result.outcome is CallbackOutcome.STOPPED
    assert (result.run.status, result.run.run_state) == (at, state)
    assert len(store.snapshots(run_id)) == versions


async def test_callback_that_skips_reports_skipped_and_writes_nothing() -> None:
    wf, store = build()
    run_id = await waiting(wf)

    result = await wf.callback("doc-1", S.WAITING, b"not for me")

    assert result.outcome is CallbackOutcome.SKIPPED
    assert result.run.status is S.WAITING
    assert len(store.snapshots(run_id)) == 1


async def test_callback_may_pause_or_cancel_the_run() -> None:
    async def hold(run: Run[Doc, S], payload: bytes) -> Any:
        return run.pause("fraud check") if payload == b"hold" else run.cancel("rejected")

    wf, _ = build(builder((S.WAITING, hold, (S.APPROVED,), bytes)))
    first = await waiting(wf, "doc-1")
    second = await waiting(wf, "doc-2")

    held = await wf.callback("doc-1", S.WAITING, b"hold")
    dropped = await wf.callback("doc-2", S.WAITING, b"drop")

    assert held.outcome is dropped.outcome is CallbackOutcome.APPLIED
    assert (held.run.run_state, held.run.run_state_reason) == (RunState.PAUSED, "fraud check")
    assert (await wf.get(first)).run_state is RunState.PAUSED
    assert (await wf.get(second)).run_state is RunState.CANCELLED


async def test_callback_goes_to_the_latest_run_of_the_foreign_id() -> None:
    # Given a finished run and a newer run of the same foreign ID, both having been at WAITING
    wf, _ = build()
    old = await waiting(wf)
    await wf.callback("doc-1", S.WAITING, b"approve")
    new = await waiting(wf)

    # When a callback arrives
    result = await wf.callback("doc-1", S.WAITING, b"review")

    # Then it moved the newer run
    assert result.run.run_id == new
    assert (await wf.get(new)).status is S.REVIEW
    assert (await wf.get(old)).status is S.APPROVED


async def test_callback_that_raises_propagates_and_writes_nothing() -> None:
    async def broken(run: Run[Doc, S], payload: bytes) -> S:
        run.object.notes = "half-done"
        raise LookupError("no such account")

    wf, store = build(builder((S.WAITING, broken, (S.APPROVED,), bytes)))
    run_id = await waiting(wf)

    with pytest.raises(LookupError, match="no such account"):
        await wf.callback("doc-1", S.WAITING, b"")

    assert len(store.snapshots(run_id)) == 1
    assert (await wf.get(run_id)).object == Doc()


async def test_callback_returning_an_undeclared_status_is_invalid_and_writes_nothing() -> None:
    async def wrong(run: Run[Doc, S], payload: bytes) -> S:
        return S.REJECTED

    wf, store = build(builder((S.WAITING, wrong, (S.APPROVED,), bytes)))
    run_id = await waiting(wf)

    with pytest.raises(errors.InvalidTransition, match="REJECTED"):
        await wf.callback("doc-1", S.WAITING)

    assert len(store.snapshots(run_id)) == 1


async def test_callback_when_the_run_changed_meanwhile_but_is_still_there_is_a_conflict() -> None:
    # Given a callback that, while it runs, sees another callback store the run at WAITING again
    wf: Workflow[Doc, S]

    async def outer(run: Run[Doc, S], payload: bytes) -> Any:
        if payload == b"inner":
            run.object.notes = "saved"
            return run.save_and_repeat()
        inner = await wf.callback("doc-1", S.WAITING, b"inner")
        assert inner.outcome is CallbackOutcome.APPLIED
        return S.APPROVED

    wf, _ = build(builder((S.WAITING, outer, (S.APPROVED,), bytes)))
    run_id = await waiting(wf)

    # When the outer callback returns, then its write conflicts: the caller may retry
    with pytest.raises(errors.VersionConflict):
        await wf.callback("doc-1", S.WAITING, b"outer")

    # And only the inner write was stored
    run = await wf.get(run_id)
    assert (run.status, run.version, run.object.notes) == (S.WAITING, 2, "saved")


async def test_sync_callback_runs_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    ran_in: list[int] = []

    def approve(run: Run[Doc, S], payload: bytes) -> S:
        ran_in.append(threading.get_ident())
        return S.APPROVED

    wf, _ = build(builder((S.WAITING, approve, (S.APPROVED,), bytes)))
    await waiting(wf)

    result = await wf.callback("doc-1", S.WAITING)

    assert result.applied
    assert len(ran_in) == 1
    assert ran_in[0] != loop_thread


# ------------------------------------------------------------------------------ payloads


async def _at_review(wf: Workflow[Doc, S]) -> str:
    run_id = await waiting(wf)
    await wf.callback("doc-1", S.WAITING, b"review")
    return run_id


@pytest.mark.parametrize(
    "payload",
    [
        b'{"approved": true, "note": "looks good"}',
        '{"approved": true, "note": "looks good"}',
        bytearray(b'{"approved": true, "note": "looks good"}'),
        Decision(True, "looks good"),
    ],
    ids=["bytes", "str", "bytearray", "instance"],
)
async def test_typed_payload_is_decoded_into_the_declared_type(payload: object) -> None:
    wf, _ = build()
    run_id = await _at_review(wf)

    result = await wf.callback("doc-1", S.REVIEW, payload)

    assert result.applied
    run = await wf.get(run_id)
    assert (run.status, run.object.notes) == (S.APPROVED, "looks good")


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'{"approved": "yes"}', b"{}", b"[]", b"", 42, Doc()],
    ids=["not-json", "wrong-field-type", "missing-field", "not-an-object", "empty", "int", "obj"],
)
async def test_payload_that_does_not_decode_is_invalid_input_and_writes_nothing(
    payload: object,
) -> None:
    # Given a run at REVIEW, whose callback takes a Decision
    called: list[Decision] = []

    async def record(run: Run[Doc, S], decision: Decision) -> S:
        called.append(decision)
        return S.APPROVED

    wf, store = build(
        builder(
            (S.WAITING, triage, (S.REVIEW, S.APPROVED), bytes),
            (S.REVIEW, record, (S.APPROVED, S.REJECTED), Decision),
        )
    )
    run_id = await _at_review(wf)
    versions = len(store.snapshots(run_id))

    # When a payload arrives that is not a Decision, then the call raises
    with pytest.raises(errors.InvalidInput, match="Decision"):
        await wf.callback("doc-1", S.REVIEW, payload)

    # And the callback was not called and nothing was written
    assert called == []
    assert len(store.snapshots(run_id)) == versions


async def test_bytes_callback_rejects_a_payload_that_is_not_bytes() -> None:
    wf, store = build()
    run_id = await waiting(wf)

    with pytest.raises(errors.InvalidInput, match="bytes"):
        await wf.callback("doc-1", S.WAITING, {"approve": True})

    assert len(store.snapshots(run_id)) == 1


async def test_bad_payload_is_rejected_before_the_run_is_looked_up() -> None:
    wf, _ = build()

    with pytest.raises(errors.InvalidInput):
        await wf.callback("nobody", S.REVIEW, b"not json")
    with pytest.raises(errors.RecordNotFound):
        await wf.callback("nobody", S.REVIEW, b'{"approved": false}')


async def test_several_callbacks_on_one_status_each_get_the_whole_payload() -> None:
    # Given three callbacks at WAITING, tried in the order declared: the first (bytes) and the
    # second (typed) skip, the third (typed) applies; a fourth is never reached
    seen: list[tuple[str, object]] = []
    raw = b'{"approved": true, "note": "all of it"}'

    async def audit(run: Run[Doc, S], payload: bytes) -> Any:
        seen.append(("audit", payload))
        return run.skip()

    async def only_rejections(run: Run[Doc, S], decision: Decision) -> Any:
        seen.append(("only_rejections", decision))
        return S.REJECTED if not decision.approved else run.skip()

    async def approvals(run: Run[Doc, S], decision: Decision) -> Any:
        seen.append(("approvals", decision))
        run.object.notes = decision.note
        return S.APPROVED

    async def never(run: Run[Doc, S], payload: bytes) -> Any:
        seen.append(("never", payload))
        return S.APPROVED

    wf, _ = build(
        builder(
            (S.WAITING, audit, (S.APPROVED,), bytes),
            (S.WAITING, only_rejections, (S.REJECTED,), Decision),
            (S.WAITING, approvals, (S.APPROVED,), Decision),
            (S.WAITING, never, (S.APPROVED,), bytes),
        )
    )
    run_id = await waiting(wf)

    # When one payload arrives
    result = await wf.callback("doc-1", S.WAITING, raw)

    # Then each callback got all of it, in its own type, until one applied
    assert result.outcome is CallbackOutcome.APPLIED
    decision = Decision(True, "all of it")
    assert seen == [("audit", raw), ("only_rejections", decision), ("approvals", decision)]
    run = await wf.get(run_id)
    assert (run.status, run.object.notes) == (S.APPROVED, "all of it")


async def test_several_callbacks_all_skipping_report_skipped() -> None:
    calls: list[str] = []

    async def first(run: Run[Doc, S], payload: bytes) -> Any:
        calls.append("first")
        return run.skip()

    def second(run: Run[Doc, S], payload: bytes) -> Any:
        calls.append("second")
        return run.skip()

    wf, store = build(
        builder((S.WAITING, first, (S.APPROVED,), bytes), (S.WAITING, second, (S.REJECTED,), bytes))
    )
    run_id = await waiting(wf)

    result = await wf.callback("doc-1", S.WAITING, b"?")

    assert result.outcome is CallbackOutcome.SKIPPED
    assert calls == ["first", "second"]
    assert len(store.snapshots(run_id)) == 1


# ------------------------------------------------------------------------------ bad calls


@pytest.mark.parametrize(
    "status",
    [S.APPROVED, S.START, S.UNUSED, Other.WAITING, 2, "WAITING"],
    ids=["terminal", "step-status", "not-in-graph", "other-enum", "int", "str"],
)
async def test_callback_for_a_status_without_callbacks_is_unknown_status(status: Any) -> None:
    wf, store = build()
    run_id = await waiting(wf)

    with pytest.raises(errors.UnknownStatus):
        await wf.callback("doc-1", status, b"approve")

    assert len(store.snapshots(run_id)) == 1


async def test_callback_for_an_unknown_foreign_id_is_record_not_found() -> None:
    wf, _ = build()
    with pytest.raises(errors.RecordNotFound):
        await wf.callback("nobody", S.WAITING, b"approve")
    with pytest.raises(errors.InvalidInput):
        await wf.callback("", S.WAITING, b"approve")


def test_callback_declarations_are_checked_at_the_builder() -> None:
    b = builder()
    with pytest.raises(errors.ConfigurationError, match="callable"):
        b.add_callback(S.REVIEW, "decide", S.APPROVED)  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigurationError, match="next status"):
        b.add_callback(S.REVIEW, decide)
    with pytest.raises(errors.ConfigurationError):
        b.add_callback(S.REVIEW, decide, S.APPROVED, payload_type=object)


# ------------------------------------------------------------------------------ with processes


async def test_callback_on_fires_once_the_run_reaches_the_status() -> None:
    # Given a started workflow; the run starts at START and a step moves it to WAITING
    wf, store = build()
    async with wf:
        run_id = await wf.trigger("doc-1")

        # When the test helper sends the callback as soon as the run waits at WAITING
        result = await callback_on(wf, "doc-1", S.WAITING, b"review", timeout=2)
        assert result.applied

        # And a typed one once it is at REVIEW
        result = await callback_on(wf, "doc-1", S.REVIEW, Decision(False, "too late"), timeout=2)

    # Then both applied, in order
    assert result.outcome is CallbackOutcome.APPLIED
    assert [s.status for s in store.snapshots(run_id)] == [
        S.START,
        S.WAITING,
        S.REVIEW,
        S.REJECTED,
    ]
    assert (await wf.get(run_id)).run_state is RunState.COMPLETED
