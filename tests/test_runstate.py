"""The run-state table of the reference, pair by pair."""

from __future__ import annotations

import itertools

import pytest

from statestream import RunState

I = RunState.INITIATED  # noqa: E741
R = RunState.RUNNING
P = RunState.PAUSED
C = RunState.COMPLETED
X = RunState.CANCELLED
RDD = RunState.REQUESTED_DATA_DELETED
DD = RunState.DATA_DELETED

TABLE: dict[RunState, set[RunState]] = {
    RunState.UNKNOWN: set(),
    I: {R, P},
    R: {C, P, X},
    P: {R, X},
    C: {RDD},
    X: {RDD},
    RDD: {DD},
    DD: {RDD},
}


@pytest.mark.parametrize(
    ("src", "dst"),
    list(itertools.product(RunState, RunState)),
    ids=lambda s: s.name,
)
def test_can_become_matches_the_table(src: RunState, dst: RunState) -> None:
    assert src.can_become(dst) is (dst in TABLE[src])


def test_the_table_covers_every_state() -> None:
    assert set(TABLE) == set(RunState)


def test_values_match_luno_workflow() -> None:
    assert {s.name: int(s) for s in RunState} == {
        "UNKNOWN": 0,
        "INITIATED": 1,
        "RUNNING": 2,
        "PAUSED": 3,
        "CANCELLED": 4,
        "COMPLETED": 5,
        "DATA_DELETED": 6,
        "REQUESTED_DATA_DELETED": 7,
    }


def test_finished_states() -> None:
    assert {s for s in RunState if s.finished} == {C, X, RDD, DD}


def test_stopped_states() -> None:
    # Completed is finished but not stopped; Paused is stopped but not finished
    assert {s for s in RunState if s.stopped} == {P, X, RDD, DD}


def test_valid_and_label() -> None:
    assert [s for s in RunState if not s.valid] == [RunState.UNKNOWN]
    assert RDD.label == "Requested Data Deleted"
    assert I.label == "Initiated"
