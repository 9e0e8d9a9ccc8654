"""The MySQL / MariaDB adapters against the shared contracts, on the real server
(``STATESTREAM_MYSQL_URL``, default ``mysql://root@127.0.0.1:3306/test``).

The conformance suites share one schema per module under a prefix of their own (the tests
isolate themselves by unique names), dropped at the end. Without a reachable server the tests
skip with the reason, and fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

pytest.importorskip("asyncmy")

from servers import MYSQL_URL, require_mysql, unique_prefix
from statestream.adapters.mysql import (
    MysqlDatabase,
    MysqlRecordStore,
    MysqlRoleScheduler,
    MysqlStreamer,
    MysqlTimeoutStore,
)
from statestream.adaptertest import (
    AdapterSet,
    EventStreamerContract,
    RecordStoreContract,
    RoleSchedulerContract,
    TimeoutStoreContract,
    WorkflowContract,
)

URL = MYSQL_URL


async def open_db(**options: object) -> MysqlDatabase:
    """A database under a fresh prefix of its own (the caller drops it); skips (fails on CI)
    when the server is unreachable."""
    database = MysqlDatabase(require_mysql(), prefix=unique_prefix(), **options)  # type: ignore[arg-type]
    await database.open()
    return database


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    url = require_mysql()
    name = unique_prefix()
    asyncio.run(_with(url, name, drop=False))
    try:
        yield name
    finally:
        asyncio.run(_with(url, name, drop=True))


async def _with(url: str, name: str, *, drop: bool) -> None:
    database = MysqlDatabase(url, prefix=name)
    try:
        await (database.drop() if drop else database.open())
    finally:
        await database.close()


@pytest.fixture
async def db(prefix: str) -> AsyncIterator[MysqlDatabase]:
    database = MysqlDatabase(URL, prefix=prefix)
    yield database
    await database.close()


class TestMysqlRecordStore(RecordStoreContract):
    @pytest.fixture
    async def store(self, db: MysqlDatabase) -> MysqlRecordStore:
        return MysqlRecordStore(db)


class TestMysqlStreamer(EventStreamerContract):
    @pytest.fixture
    async def streamer(self, db: MysqlDatabase) -> AsyncIterator[MysqlStreamer]:
        streamer = MysqlStreamer(db)
        yield streamer
        await streamer.close()


class TestMysqlTimeoutStore(TimeoutStoreContract):
    @pytest.fixture
    async def timeout_store(self, db: MysqlDatabase) -> MysqlTimeoutStore:
        return MysqlTimeoutStore(db)


class TestMysqlRoleScheduler(RoleSchedulerContract):
    lease_ttl = 1.0

    @pytest.fixture
    def make_schedulers(self, db: MysqlDatabase):  # type: ignore[no-untyped-def]
        async def make(n: int) -> list[MysqlRoleScheduler]:
            return [
                MysqlRoleScheduler(db, ttl=1.0, poll_interval=0.02, member_ttl=1.0)
                for _ in range(n)
            ]

        return make


class TestMysqlAcceptance(WorkflowContract):
    @pytest.fixture(params=["outbox", "direct"])
    async def adapters(
        self, db: MysqlDatabase, request: pytest.FixtureRequest
    ) -> AsyncIterator[AdapterSet]:
        streamer = MysqlStreamer(db)
        yield AdapterSet(
            streamer,
            MysqlRecordStore(db, publish_to=streamer if request.param == "direct" else None),
            MysqlRoleScheduler(db, ttl=2.0, poll_interval=0.02),
            MysqlTimeoutStore(db),
        )
        await streamer.close()
