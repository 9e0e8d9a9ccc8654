"""Division of a workflow's roles among the instances that run it (``_engine/share.py``).

Several Supervisors sharing one MemoryRoleScheduler stand for worker processes; the SQLite
end-to-end test with real worker processes is in ``test_worker_roles.py``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from helpers import eventually
from statestream import Lease
from statestream._engine import supervisor as supervisor_module
from statestream._engine.share import Kind, Share, deal, kind_of, preference
from statestream._engine.supervisor import Process, ProcessState, Supervisor
from statestream.adapters.memory import MemoryRoleScheduler
from statestream.adapters.sqlite import SqliteDatabase, SqliteRoleScheduler
from statestream.errors import InvalidInput

ROLES = [f"wf-role-{i}" for i in range(8)]


class Holdings:
    """Who runs which role's body, and every change, across several supervisors."""

    def __init__(self) -> None:
        self.running: dict[str, list[str]] = {}
        self.changes = 0
        self.overlaps: list[str] = []

    def body(self, worker: str, role: str, *, work: float = 0.0) -> Body:
        async def body(stopping: asyncio.Event) -> None:
            holders = self.running.setdefault(role, [])
            if holders:
                self.overlaps.append(role)
            holders.append(worker)
            self.changes += 1
            try:
                await stopping.wait()
                if work:
                    await asyncio.sleep(work)  # the event in hand when the stop came
            finally:
                holders.remove(worker)

        return body

    def counts(self) -> Counter[str]:
        return Counter(w for holders in self.running.values() for w in holders)

    def held(self) -> int:
        return sum(len(h) for h in self.running.values())


Body = Callable[[asyncio.Event], Awaitable[None]]


def start(scheduler: object, holdings: Holdings, worker: str, *, work: float = 0.0) -> Supervisor:
    sup = Supervisor(scheduler, "wf")  # type: ignore[arg-type]
    sup.start(
        [
            Process(role, role, holdings.body(worker, role, work=work), error_backoff=0.01)
            for role in ROLES
        ]
    )
    return sup


def balanced(holdings: Holdings, workers: list[str]) -> bool:
    counts = holdings.counts()
    share = [counts.get(w, 0) for w in workers]
    return holdings.held() == len(ROLES) and max(share) - min(share) <= 1


# ------------------------------------------------------------------ the deal


def kinds(roles: list[str]) -> dict[str, Kind]:
    return {role: kind_of(role, role) for role in roles}


#: A workflow's roles as ``_engine/plan.py`` names them: (process name, role).
PLAN = [
    *((f"reserve-consumer-{i}-of-2", f"shop-1-consumer-{i}-of-2") for i in (1, 2)),
    ("charge-consumer-1-of-1", "shop-2-consumer-1-of-1"),
    ("ship-consumer-1-of-1", "shop-3-consumer-1-of-1"),
    ("outbox-consumer", "shop-outbox-consumer"),
    ("delete-consumer", "shop-delete-consumer"),
    ("done-run-state-change-hook-consumer", "shop-done-run-state-change-hook-consumer"),
    ("waiting-timeout-consumer", "shop-2-timeout-consumer"),
]


def plan_kinds() -> dict[str, Kind]:
    return {role: kind_of(name, role) for name, role in PLAN}


def test_kinds_tell_step_shards_from_the_rest() -> None:
    found = plan_kinds()
    assert found["shop-1-consumer-2-of-2"] == (0, "shop-1")
    assert found["shop-3-consumer-1-of-1"] == (0, "shop-3")
    assert found["shop-outbox-consumer"] == found["shop-delete-consumer"] == (2, "")
    assert (
        kind_of("x-connector-to-shop-consumer-1-of-2", "x-connector-to-shop-consumer-1-of-2")[0]
        == 1
    )


def test_the_deal_gives_every_role_once_and_counts_differ_by_at_most_one() -> None:
    for n_members, n_roles in itertools.product(range(1, 6), range(13)):
        members = [f"host/{i}/m" for i in range(n_members)]
        roles = kinds([f"wf-role-{i}" for i in range(n_roles)])
        dealt = deal(roles, members)
        assert set(dealt) == set(roles)
        counts = Counter(dealt.values())
        share = [counts.get(m, 0) for m in members]
        assert max(share) - min(share) <= 1


def test_the_deal_spreads_the_shards_of_a_step_and_the_steps() -> None:
    # 8 roles over 3 workers: a division by count alone (3/3/2) may leave every step
    # consumer on one worker; the deal gives each worker one or two of the four
    for trial in range(50):
        members = [f"host/{trial}/{i}" for i in range(3)]
        dealt = deal(plan_kinds(), members)
        steps = Counter(m for r, m in dealt.items() if plan_kinds()[r][0] == 0)
        assert sorted(steps.get(m, 0) for m in members) == [1, 1, 2], dealt
        shards = {dealt["shop-1-consumer-1-of-2"], dealt["shop-1-consumer-2-of-2"]}
        assert len(shards) == 2  # the two shards of one step on two workers
        assert sorted(Counter(dealt.values()).values()) == [2, 3, 3]
    # six shards of one step over three workers: two each
    six = {f"wf-1-consumer-{i}-of-6": (0, "wf-1") for i in range(1, 7)}
    assert sorted(Counter(deal(six, ["a", "b", "c"]).values()).values()) == [2, 2, 2]


def test_the_deal_depends_only_on_the_membership_and_moves_little() -> None:
    roles = kinds([f"wf-role-{i}" for i in range(30)])
    members = ["a", "b", "c", "d"]
    dealt = deal(roles, members)
    # the same whatever the order members and roles come in
    assert deal(dict(reversed(list(roles.items()))), list(reversed(members))) == dealt
    # a member leaving: its roles move, and few of the others'
    after = deal(roles, ["a", "b", "c"])
    moved = [r for r in roles if dealt[r] != "d" and after[r] != dealt[r]]
    assert len(moved) <= len(roles) // 4


def test_preference_is_stable_and_differs_by_member() -> None:
    assert preference("role", "a") == preference("role", "a")
    ranked = {m: sorted(ROLES, key=lambda r: preference(r, m)) for m in ("a", "b", "c")}
    assert len({tuple(r) for r in ranked.values()}) == 3


# ------------------------------------------------------------------ supervisors


async def settled(holdings: Holdings, quiet: float = 0.3, within: float = 5.0) -> None:
    """Wait until no role changed hands for ``quiet`` seconds (many beats at these ttls)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        changes = holdings.changes
        await asyncio.sleep(quiet)
        if holdings.changes == changes:
            return
        assert asyncio.get_running_loop().time() < deadline, "the roles never settled"


async def test_three_instances_divide_the_roles_and_stay_put() -> None:
    # Given three instances of a workflow with 8 roles, sharing a scheduler, started in turn
    scheduler = MemoryRoleScheduler(member_ttl=0.15)
    holdings = Holdings()
    workers = ["one", "two", "three"]
    sups = []
    try:
        for worker in workers:
            sups.append(start(scheduler, holdings, worker))
            await asyncio.sleep(0.05)

        # Then they divide the roles: 3, 3 and 2
        await eventually(lambda: balanced(holdings, workers), what="an even division")
        # (an even count may still be one hand-over short of the deal by kind: let it settle)
        await settled(holdings)
        assert sorted(holdings.counts().values()) == [2, 3, 3]

        # And, the membership steady, nothing moves over many beats
        changes = holdings.changes
        await asyncio.sleep(0.6)
        assert holdings.changes == changes
        assert sorted(holdings.counts().values()) == [2, 3, 3]
        # And no role ever ran in two instances at once
        assert holdings.overlaps == []
        for sup in sups:
            assert {p.report() for p in sup.processes} == {
                ProcessState.RUNNING,
                ProcessState.IDLE,
            }
    finally:
        for sup in sups:
            await sup.stop(grace=1)


async def test_the_roles_of_an_instance_that_stops_go_to_the_others() -> None:
    scheduler = MemoryRoleScheduler(member_ttl=0.15)
    holdings = Holdings()
    one, two, three = (start(scheduler, holdings, w) for w in ("one", "two", "three"))
    try:
        await eventually(lambda: balanced(holdings, ["one", "two", "three"]))

        # When one instance stops
        await three.stop(grace=1)

        # Then the other two hold all the roles, four each
        await eventually(lambda: balanced(holdings, ["one", "two"]), what="4 and 4")
        assert sorted(holdings.counts().values()) == [4, 4]
        assert holdings.overlaps == []
    finally:
        for sup in (one, two, three):
            await sup.stop(grace=1)


async def test_a_handover_finishes_the_work_in_hand_before_the_other_holds_the_role() -> None:
    # Given one instance holding every role, whose bodies take 50 ms to finish once stopped
    scheduler = MemoryRoleScheduler(member_ttl=0.15)
    holdings = Holdings()
    one = start(scheduler, holdings, "one", work=0.05)
    try:
        await eventually(lambda: holdings.counts() == Counter(one=len(ROLES)))

        # When a second one starts
        two = start(scheduler, holdings, "two", work=0.05)

        # Then half the roles move, each only once its first holder finished
        await eventually(lambda: balanced(holdings, ["one", "two"]), what="4 and 4")
        assert holdings.overlaps == []
        await two.stop(grace=1)
    finally:
        await one.stop(grace=1)


async def test_a_body_that_ignores_the_handover_is_cancelled_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an instance holding both roles of a workflow, with bodies that ignore their stop
    monkeypatch.setattr(supervisor_module, "HANDOVER_GRACE", 0.1)
    scheduler = MemoryRoleScheduler(member_ttl=0.15)
    roles = ["wf-a", "wf-b"]

    async def ignores_stop(stopping: asyncio.Event) -> None:
        await asyncio.Event().wait()

    one = Supervisor(scheduler, "wf")
    one.start([Process(r, r, ignores_stop, error_backoff=0.01) for r in roles])
    holdings = Holdings()
    two = Supervisor(scheduler, "wf")
    try:
        await eventually(lambda: one.share is not None and len(one.share.held) == 2)

        # When a second instance starts
        two.start([Process(r, r, holdings.body("two", r)) for r in roles])

        # Then one role is released after the grace, and the second instance takes it
        await eventually(lambda: holdings.counts() == Counter(two=1), what="the role moved")
        assert [p.errors for p in one.processes] == [0, 0]
    finally:
        await one.stop(grace=0.1)
        await two.stop(grace=1)


class PlainScheduler:
    """A scheduler without the RoleMembers capability."""

    def __init__(self) -> None:
        self._inner = MemoryRoleScheduler(member_ttl=None)

    async def acquire(self, role: str) -> Lease:
        return await self._inner.acquire(role)


@pytest.mark.parametrize(
    "scheduler",
    [PlainScheduler, lambda: MemoryRoleScheduler(member_ttl=None)],
    ids=["without RoleMembers", "member_ttl=None"],
)
async def test_without_division_the_first_instance_takes_every_role(
    scheduler: Callable[[], object],
) -> None:
    shared = scheduler()
    holdings = Holdings()
    one = start(shared, holdings, "one")
    await eventually(lambda: holdings.counts() == Counter(one=len(ROLES)))
    two = start(shared, holdings, "two")
    try:
        await asyncio.sleep(0.3)
        assert holdings.counts() == Counter(one=len(ROLES))
        assert one.share is None
        assert two.share is None
    finally:
        await one.stop(grace=1)
        await two.stop(grace=1)


class BrokenMembers(MemoryRoleScheduler):
    """Its membership fails (the database is down, say): leases still work."""

    async def members(self, group: str, member: str, held: int) -> dict[str, int]:
        raise OSError("membership table unreachable")


async def test_an_instance_whose_membership_fails_still_runs_every_role(
    caplog: pytest.LogCaptureFixture,
) -> None:
    holdings = Holdings()
    one = start(BrokenMembers(member_ttl=0.15), holdings, "one")
    try:
        await eventually(lambda: holdings.counts() == Counter(one=len(ROLES)))
        await asyncio.sleep(0.2)
        warnings = [r for r in caplog.records if "telling the other workers" in r.message]
        assert len(warnings) == 1
    finally:
        await one.stop(grace=1)


@pytest.mark.parametrize("ttl", [0, -1.0])
async def test_member_ttl_must_be_positive(ttl: float, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="member_ttl"):
        MemoryRoleScheduler(member_ttl=ttl)
    db = SqliteDatabase(tmp_path / "x.db")
    try:
        with pytest.raises(InvalidInput, match="member_ttl"):
            SqliteRoleScheduler(db, member_ttl=ttl)
    finally:
        await db.close()


class ScriptedMembers:
    """A membership whose answers a test sets: the other members and their counts."""

    member_ttl = 0.3

    def __init__(self) -> None:
        self.others: dict[str, int] = {}

    async def members(self, group: str, member: str, held: int) -> dict[str, int]:
        return {**self.others, member: held}

    async def leave(self, group: str, member: str) -> None:
        pass


async def test_a_surplus_seen_on_one_beat_only_moves_nothing() -> None:
    # Given a member holding 4 of 4 roles
    members = ScriptedMembers()
    share = Share(members, members.member_ttl, "wf", lambda: kinds(list("abcd")))
    handed: list[str] = []
    for role in ("a", "b", "c", "d"):
        share.took(role, functools.partial(handed.append, role))
    await share.beat()
    assert share.quota == 4
    await share.beat()
    assert handed == []

    # When another member shows up for one beat only
    members.others = {"other": 0}
    await share.beat()
    assert share.quota == 2
    members.others = {}
    await share.beat()

    # Then nothing was handed over
    assert handed == []

    # But when it stays for two beats, the two roles dealt to it are handed over
    members.others = {"other": 0}
    await share.beat()
    await share.beat()
    dealt = deal(kinds(list("abcd")), [share.member, "other"])
    assert sorted(handed) == sorted(r for r, m in dealt.items() if m == "other")
    assert len(handed) == 2
    assert share.yielding == set(handed)
    # And the roles it handed over are not taken again as spare while the membership stays
    assert not any(share.wants(r) for r in handed)
    # And not again while they are being handed over
    await share.beat()
    await share.beat()
    assert len(handed) == 2
