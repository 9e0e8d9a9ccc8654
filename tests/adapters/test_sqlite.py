"""The SQLite adapters against the shared contracts, plus file-level behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
    SqliteTimeoutStore,
)
from statestream.adaptertest import (
    EventStreamerContract,
    RecordStoreContract,
    RoleSchedulerContract,
    TimeoutStoreContract,
)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "statestream.db", synchronous="NORMAL")
    yield database
    await database.close()


class TestSqliteRecordStore(RecordStoreContract):
    @pytest.fixture
    async def store(self, db: SqliteDatabase) -> SqliteRecordStore:
        return SqliteRecordStore(db)


class TestSqliteStreamer(EventStreamerContract):
    @pytest.fixture
    async def streamer(self, db: SqliteDatabase) -> AsyncIterator[SqliteStreamer]:
        streamer = SqliteStreamer(db)
        yield streamer
        await streamer.close()


class TestSqliteTimeoutStore(TimeoutStoreContract):
    @pytest.fixture
    async def timeout_store(self, db: SqliteDatabase) -> SqliteTimeoutStore:
        return SqliteTimeoutStore(db)


class TestSqliteRoleScheduler(RoleSchedulerContract):
    lease_ttl = 1.0

    @pytest.fixture
    def make_schedulers(self, db: SqliteDatabase):  # type: ignore[no-untyped-def]
        async def make(n: int) -> list[SqliteRoleScheduler]:
            return [
                SqliteRoleScheduler(db, ttl=1.0, poll_interval=0.02, member_ttl=1.0)
                for _ in range(n)
            ]

        return make
