"""End-to-end workflows parametrised over every adapter set (backends join as they land)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.adaptertest import AdapterSet, WorkflowContract


async def _memory() -> AsyncIterator[AdapterSet]:
    yield AdapterSet(
        MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler(), MemoryTimeoutStore()
    )


ADAPTER_SETS = {"memory": _memory}


class TestAcceptance(WorkflowContract):
    @pytest.fixture(params=sorted(ADAPTER_SETS))
    async def adapters(self, request: pytest.FixtureRequest) -> AsyncIterator[AdapterSet]:
        async for adapters in ADAPTER_SETS[request.param]():
            yield adapters
