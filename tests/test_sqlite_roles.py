"""SQLite lease rows: the deadline a holder acts under, against the expiry in the row.

Two ``SqliteDatabase`` objects on one file stand for two processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statestream.adapters.sqlite import SqliteDatabase, SqliteRoleScheduler


@pytest.fixture
async def dbs(tmp_path: Path) -> AsyncIterator[list[SqliteDatabase]]:
    opened = [SqliteDatabase(tmp_path / "roles.db", synchronous="NORMAL") for _ in range(2)]
    yield opened
    for db in opened:
        await db.close()


@pytest.mark.parametrize(
    ("ttl", "margin", "renew"), [(0.5, 0.25, 0.125), (2.0, 1.0, 0.5), (10.0, 2.0, 4.0)]
)
def test_margin_and_renewal_interval(ttl: float, margin: float, renew: float) -> None:
    scheduler = SqliteRoleScheduler(SqliteDatabase("unused.db"), ttl=ttl)
    assert scheduler.margin == pytest.approx(margin)
    assert scheduler.renew_interval == pytest.approx(renew)


async def test_the_deadline_passes_a_margin_before_the_row_expires(
    dbs: list[SqliteDatabase],
) -> None:
    scheduler = SqliteRoleScheduler(dbs[0], ttl=2.0)
    started = time.monotonic()
    lease = await scheduler.acquire("role")
    try:
        [(expires_at,)] = await dbs[0].read(
            lambda c: c.execute("SELECT expires_at FROM statestream_leases").fetchall()
        )
        # On one host both clocks advance together: compare how far ahead each one is.
        row_ahead = expires_at - time.time()
        lease_ahead = lease.valid_until - time.monotonic()
        assert lease.valid_until >= started + 2.0 - scheduler.margin
        assert row_ahead - lease_ahead >= scheduler.margin - 0.05
    finally:
        await lease.release()


async def test_a_holder_blocked_past_its_deadline_gives_the_role_up_when_it_wakes(
    dbs: list[SqliteDatabase],
) -> None:
    # Given a role held with a 2 s ttl (deadline 1 s after the acquire started)
    holder = SqliteRoleScheduler(dbs[0], ttl=2.0, poll_interval=0.02)
    other = SqliteRoleScheduler(dbs[1], ttl=2.0, poll_interval=0.02)
    lease = await holder.acquire("role")
    contender = asyncio.ensure_future(other.acquire("role"))
    try:
        await asyncio.sleep(0.05)
        assert not contender.done()

        # When its event loop is blocked past the deadline, though not past the row's expiry
        time.sleep(lease.valid_until - time.monotonic() + 0.2)  # noqa: ASYNC251 -- on purpose
        woke = time.monotonic()
        assert woke >= lease.valid_until

        # Then it finds the lease lost, deletes its row, and the other process takes over
        # without waiting for the row to expire
        await asyncio.wait_for(lease.lost(), 1.0)
        taken = await asyncio.wait_for(contender, 1.0)
        assert time.monotonic() - woke < 0.7  # the row would have expired 0.8 s after waking
        assert taken.valid_until > time.monotonic()
        await taken.release()
    finally:
        contender.cancel()
        await asyncio.gather(contender, return_exceptions=True)
        await lease.release()
