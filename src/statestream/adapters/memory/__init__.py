"""In-memory adapters: a record store, an event streamer, a timeout store and a role scheduler.

They need no third-party packages and keep all state in the process, so they are what tests,
examples and single-process services use. Every one of them passes the conformance suite in
:mod:`statestream.adaptertest`.

Atomicity comes from asyncio itself: no method awaits between checking the state and changing
it, so two coroutines can never interleave inside one write. The adapters are therefore safe to
share between tasks of one event loop, but not between threads.
"""

from __future__ import annotations

from ._records import MemoryRecordStore
from ._roles import MemoryLease, MemoryRoleScheduler
from ._stream import MemoryReceiver, MemoryStreamer
from ._timeouts import MemoryTimeoutStore

__all__ = [
    "MemoryLease",
    "MemoryReceiver",
    "MemoryRecordStore",
    "MemoryRoleScheduler",
    "MemoryStreamer",
    "MemoryTimeoutStore",
]
