"""The PostgreSQL adapters against the shared contracts, on the real server.

Every test gets its own table prefix (the server is shared with other test runs) and drops its
tables afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from servers import require_postgres, unique_prefix
from statestream.adapters.postgres import (
    PostgresDatabase,
    PostgresRecordStore,
    PostgresRoleScheduler,
    PostgresStreamer,
    PostgresTimeoutStore,
)
from statestream.adaptertest import (
    AdapterSet,
    EventStreamerContract,
    RecordStoreContract,
    RoleSchedulerContract,
    TimeoutStoreContract,
    WorkflowContract,
)


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    """One schema for the module's tests (they isolate themselves by unique names), under a
    prefix of its own, dropped at the end."""
    url = require_postgres()
    name = unique_prefix()
    asyncio.run(_create(url, name))
    try:
        yield name
    finally:
        asyncio.run(_drop(url, name))


async def _create(url: str, name: str) -> None:
    database = PostgresDatabase(url, prefix=name)
    try:
        await database.open()
    finally:
        await database.close()


async def _drop(url: str, name: str) -> None:
    database = PostgresDatabase(url, prefix=name)
    try:
        await database.drop_tables()
    finally:
        await database.close()


@pytest.fixture
async def db(prefix: str) -> AsyncIterator[PostgresDatabase]:
    database = PostgresDatabase(require_postgres(), prefix=prefix)
    try:
        yield database
    finally:
        await database.close()


class TestPostgresRecordStore(RecordStoreContract):
    @pytest.fixture
    async def store(self, db: PostgresDatabase) -> PostgresRecordStore:
        return PostgresRecordStore(db)


class TestPostgresStreamer(EventStreamerContract):
    @pytest.fixture
    async def streamer(self, db: PostgresDatabase) -> AsyncIterator[PostgresStreamer]:
        streamer = PostgresStreamer(db)
        yield streamer
        await streamer.close()


class TestPostgresTimeoutStore(TimeoutStoreContract):
    @pytest.fixture
    async def timeout_store(self, db: PostgresDatabase) -> PostgresTimeoutStore:
        return PostgresTimeoutStore(db)


class TestPostgresRoleScheduler(RoleSchedulerContract):
    lease_ttl = 1.0

    @pytest.fixture
    def make_schedulers(self, db: PostgresDatabase):  # type: ignore[no-untyped-def]
        async def make(n: int) -> list[PostgresRoleScheduler]:
            return [
                PostgresRoleScheduler(db, ttl=1.0, poll_interval=0.02, member_ttl=1.0)
                for _ in range(n)
            ]

        return make


class TestPostgresWorkflow(WorkflowContract):
    @pytest.fixture(params=["outbox", "direct"])
    async def adapters(
        self, db: PostgresDatabase, request: pytest.FixtureRequest
    ) -> AsyncIterator[AdapterSet]:
        streamer = PostgresStreamer(db)
        yield AdapterSet(
            streamer,
            PostgresRecordStore(db, publish_to=streamer if request.param == "direct" else None),
            # A long lease: under a loaded machine a 2 s one can pass its deadline in a stall,
            # and the next holder then runs a step again (at least once, not the "once" the
            # case checks).
            PostgresRoleScheduler(db, ttl=5.0, poll_interval=0.02),
            PostgresTimeoutStore(db),
        )
        await streamer.close()
