"""The MySQL / MariaDB adapters against the shared contracts, on the real server
(``STATESTREAM_MYSQL_URL``, default ``mysql://root@127.0.0.1:3306/test``).

Every test has its own table prefix and drops its tables after. Without a reachable server the
tests skip with the reason, and fail when ``CI=true``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("asyncmy")

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
from statestream.errors import AdapterConnectionError

URL = os.environ.get("STATESTREAM_MYSQL_URL") or "mysql://root@127.0.0.1:3306/test"


def unique_prefix() -> str:
    return f"t_{uuid.uuid4().hex[:10]}_"


async def open_db(**options: object) -> MysqlDatabase:
    """A database under a fresh prefix; skips (fails on CI) when the server is unreachable."""
    database = MysqlDatabase(URL, prefix=unique_prefix(), **options)  # type: ignore[arg-type]
    try:
        await database.open()
    except AdapterConnectionError as exc:
        await database.close()
        reason = f"MariaDB/MySQL not reachable at {URL}: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return database


@pytest.fixture
async def db() -> AsyncIterator[MysqlDatabase]:
    database = await open_db()
    yield database
    await database.drop()
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
            return [MysqlRoleScheduler(db, ttl=1.0, poll_interval=0.02) for _ in range(n)]

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
