"""End-to-end workflows parametrised over every adapter set (backends join as they land)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
    SqliteTimeoutStore,
)
from statestream.adaptertest import AdapterSet, WorkflowContract


async def _memory() -> AsyncIterator[AdapterSet]:
    yield AdapterSet(
        MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler(), MemoryTimeoutStore()
    )


async def _sqlite(direct: bool = False) -> AsyncIterator[AdapterSet]:
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "acceptance.db", synchronous="NORMAL")
        streamer = SqliteStreamer(db)
        yield AdapterSet(
            streamer,
            SqliteRecordStore(db, publish_to=streamer if direct else None),
            SqliteRoleScheduler(db, ttl=2.0, poll_interval=0.02),
            SqliteTimeoutStore(db),
        )
        await streamer.close()
        await db.close()


ADAPTER_SETS: dict[str, Callable[[], AsyncIterator[AdapterSet]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "sqlite-direct": lambda: _sqlite(direct=True),
}


class TestAcceptance(WorkflowContract):
    @pytest.fixture(params=sorted(ADAPTER_SETS))
    async def adapters(self, request: pytest.FixtureRequest) -> AsyncIterator[AdapterSet]:
        async for adapters in ADAPTER_SETS[request.param]():
            yield adapters
