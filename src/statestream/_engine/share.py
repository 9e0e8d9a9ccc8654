"""Fair division of a workflow's roles among the instances that run it.

With a scheduler that implements :class:`~statestream.RoleMembers`, each running instance of a
workflow (one :class:`~.supervisor.Supervisor`) is a member of the group named after the
workflow. Every ``member_ttl / 3`` seconds it tells the scheduler it is alive and how many roles
it holds, and hears who else is alive. From the live members and the workflow's roles every
member computes the same deal (:func:`deal`): which member should hold which role, as evenly as
the roles go, with the roles of one kind (the shards of one step; the step consumers in
general) spread over the members rather than piled on one, so that the division is by work
and not only by count. The deal depends on nothing but the membership and the roles, so a
steady membership moves nothing.

A member's idle processes try at once for the roles dealt to it. It hands over (the process
finishes the event in hand and releases its lease) the roles dealt to another member, once the
view has been the same on two beats in a row, so that a transient view moves nothing; the
member they were dealt to is already waiting for them. A role nobody takes (instances of
different versions that run different roles compute different deals) is taken by a member that
has been below its share for two beats, unless it handed that role over itself since the
membership last changed: so a role moves at most once per member and membership, and cannot
flap. A member that stops beating
(killed, or cut off) drops out of the others' view after ``member_ttl``: the deal changes, and
they take its roles as its leases expire.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Collection, Mapping

from .._core.protocols import RoleMembers
from .logfields import fields

__all__ = ["Kind", "Share", "deal", "kind_of", "preference"]

log = logging.getLogger("statestream")

#: Beats in a row with the same view before a member hands roles over (or takes roles dealt to
#: others that nobody took).
SURPLUS_BEATS = 2

#: What a role is, for the deal: (class, kind). Class 0: the shards of a step (kind: the step);
#: class 1: the shards of another event consumer (a connector, a connection); class 2: the
#: rest (the outbox relay, timeouts, hooks, ...), all of one kind.
Kind = tuple[int, str]

_SHARD = re.compile(r"^(?P<kind>.+)-consumer-\d+-of-\d+$")
_STEP_PROCESS = re.compile(r"^[^-]+-consumer-\d+-of-\d+$")


def kind_of(process: str, role: str) -> Kind:
    """The kind of a role, from its process's name and the role (``_engine/plan.py`` names
    step shards ``<status>-consumer-<i>-of-<n>``, other sharded consumers by their role)."""
    match = _SHARD.match(role)
    if match is None:
        return (2, "")
    return (0 if _STEP_PROCESS.match(process) else 1, match["kind"])


def preference(role: str, member: str) -> int:
    """How much ``member`` wants ``role`` (a rendezvous hash): stable, and different for each
    member, so that which member gets which role does not depend on timing."""
    digest = hashlib.blake2b(f"{role}\x00{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def deal(roles: Mapping[str, Kind], members: Collection[str]) -> dict[str, str]:
    """Which member should hold each role: every member computes the same from the same view.

    The kinds are dealt in turn (steps first, then the other consumers, then the rest). Each
    member gets ``len(kind) // len(members)`` roles of a kind, and the odd ones go to the
    members that have the fewest roles so far (ties: a rendezvous hash of the kind), so that
    the counts of every kind and the totals differ by one at most. Which roles of a kind go to
    which member: the highest rendezvous hash first, within those counts, so that a member
    joining or leaving moves few roles of the others.
    """
    names = sorted(set(members))
    if not names:
        return {}
    totals = dict.fromkeys(names, 0)
    kinds: dict[Kind, list[str]] = {}
    for role, kind in roles.items():
        kinds.setdefault(kind, []).append(role)
    dealt: dict[str, str] = {}
    for kind in sorted(kinds):
        group = kinds[kind]
        base, odd = divmod(len(group), len(names))
        order = sorted(names, key=lambda m: (totals[m], -preference(kind[1], m), m))
        room = {m: base + (1 if i < odd else 0) for i, m in enumerate(order)}
        pairs = sorted(((preference(r, m), r, m) for r in group for m in names), reverse=True)
        for _, role, member in pairs:
            if role not in dealt and room[member] > 0:
                dealt[role] = member
                room[member] -= 1
                totals[member] += 1
    return dealt


def member_name() -> str:
    """A new member's name: host, process ID and a random suffix (readable in the table)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class Share:
    """One member's side of the division of one workflow's roles.

    Args:
        members: the scheduler's membership.
        ttl: its ``member_ttl``.
        group: the workflow's name.
        roles: the distinct roles this instance runs, with their kinds (they can grow, with
            schedules).
    """

    def __init__(
        self,
        members: RoleMembers,
        ttl: float,
        group: str,
        roles: Callable[[], Mapping[str, Kind]],
    ) -> None:
        self._members = members
        self.ttl = ttl
        self.interval = ttl / 3
        self.group = group
        self.member = member_name()
        self._roles = roles
        #: role -> how to ask its process to hand it over
        self.held: dict[str, Callable[[], None]] = {}
        self.yielding: set[str] = set()
        #: The roles dealt to this member; None until the first beat answered (or failed).
        self.mine: set[str] | None = None
        #: How many roles this member should hold (``len(mine)``).
        self.quota: int | None = None
        #: Below its share on two beats in a row: it may take roles dealt to others.
        self.spare = False
        #: Roles handed over since the membership last changed: not taken again as spare.
        self.handed: set[str] = set()
        self.view: dict[str, int] = {}
        self._signature: object = None
        self._steady = 0
        self._room_beats = 0
        self._last_ok = time.monotonic()
        self._failing = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the supervisor's side

    def start(self, stopping: asyncio.Event) -> None:
        self._task = asyncio.ensure_future(self._run(stopping))

    async def close(self) -> None:
        """Stop beating and leave the group (after the roles were released)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self._members.leave(self.group, self.member)
        except Exception:
            log.warning(
                "statestream: %s: leaving the workers' group failed (the others see this "
                "worker gone within %g s)",
                self.group,
                self.ttl,
                exc_info=True,
            )

    def room(self) -> bool:
        """Whether this member holds fewer roles than its share."""
        return self.quota is not None and len(self.held) < self.quota

    def wants(self, role: str) -> bool:
        """Whether the idle process of ``role`` should try for it now: the role is dealt to
        this member, or this member has been below its share for two beats (and has not
        handed the role over since the membership changed)."""
        if self.mine is None:
            return False
        if role in self.mine:
            return True
        return self.spare and self.room() and role not in self.handed

    async def wait_wanted(self, role: str, stopping: asyncio.Event) -> bool:
        """Wait until the process of ``role`` should try for it; False if ``stopping`` came
        first."""
        while not stopping.is_set():
            if self.wants(role):
                return True
            await _first(self._changed, stopping)
        return False

    async def wait_unwanted(self, role: str) -> None:
        """Return once the process of ``role`` should no longer try (an acquire in flight is
        then dropped)."""
        while self.wants(role):
            await self._changed.wait()

    def took(self, role: str, handover: Callable[[], None]) -> None:
        self.held[role] = handover
        self._notify()

    def gave_up(self, role: str) -> None:
        self.held.pop(role, None)
        self.yielding.discard(role)
        self._notify()

    # ------------------------------------------------------------------ beating

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.beat()
            await _first(stopping, timeout=self.interval)

    async def beat(self) -> None:
        """Tell the others we are alive, recompute the deal, hand over what is not ours."""
        roles = dict(self._roles())
        try:
            view = dict(await self._members.members(self.group, self.member, len(self.held)))
        except Exception:
            if not self._failing:
                log.warning(
                    "statestream: %s: telling the other workers this one is alive failed; "
                    "retrying every %g s",
                    self.group,
                    self.interval,
                    exc_info=True,
                )
            self._failing = True
            if self.mine is None or time.monotonic() - self._last_ok >= self.ttl:
                # The others no longer count us: take whatever roles are free, as a worker
                # without division would, rather than leave roles nobody runs.
                self._signature = None
                self._steady = 0
                self._set_mine(set(roles), 1)
            return
        if self._failing:
            log.info("statestream: %s: the workers' group answers again", self.group)
        self._failing = False
        self._last_ok = time.monotonic()
        view[self.member] = len(self.held)
        self.view = view
        signature = (frozenset(view), frozenset(roles.items()))
        if signature == self._signature:
            self._steady += 1
        else:
            self._signature = signature
            self._steady = 1
            self.handed.clear()  # the membership changed: the deal decides again
        dealt = deal(roles, view)
        self._set_mine({r for r, m in dealt.items() if m == self.member}, len(view))
        assert self.mine is not None
        assert self.quota is not None
        self._room_beats = self._room_beats + 1 if self.room() else 0
        spare = self._room_beats >= SURPLUS_BEATS
        if spare != self.spare:
            self.spare = spare
            self._notify()
        if self._steady < SURPLUS_BEATS:
            return
        active = [r for r in self.held if r not in self.yielding]
        # The roles dealt to another member: it is waiting for them.
        give = sorted(
            (r for r in active if r not in self.mine), key=lambda r: preference(r, self.member)
        )
        for role in give:
            log.info(
                "statestream: %s: handing role %s over to %s (this worker holds %d roles, its "
                "share is %d)",
                self.group,
                role,
                dealt.get(role, "another worker"),
                len(active),
                self.quota,
                extra=fields(role=role),
            )
            self.yielding.add(role)
            self.handed.add(role)
            self.held[role]()

    def _set_mine(self, mine: set[str], workers: int) -> None:
        if mine != self.mine:
            if len(mine) != self.quota:
                log.info(
                    "statestream: %s: %d worker(s) share its %d roles; this one's share is %d",
                    self.group,
                    workers,
                    len(self._roles()),
                    len(mine),
                )
            self.mine = mine
            self.quota = len(mine)
            self._notify()


async def _first(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until one of ``events`` is set (or ``timeout`` passed)."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
