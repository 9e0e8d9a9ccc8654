"""Background processes: role supervision and the key-ordered event dispatcher.

The code lives in :mod:`.supervisor` (roles, leases, restarts, reports), :mod:`.dispatcher`
(consumers), :mod:`.lease` (the holding a task works under) and :mod:`.parking`; this module
keeps the names the process bodies import.
"""

from __future__ import annotations

from .._core.records import shard_of
from .dispatcher import ErrorPolicy, Handler, KeyedDispatcher, Settled
from .lease import Abandon, LeaseExpired
from .parking import ParkEvent
from .supervisor import (
    Body,
    Process,
    ProcessInfo,
    ProcessState,
    Supervisor,
    backoff,
    sleep_unless,
)

__all__ = [
    "Abandon",
    "Body",
    "ErrorPolicy",
    "Handler",
    "KeyedDispatcher",
    "LeaseExpired",
    "ParkEvent",
    "Process",
    "ProcessInfo",
    "ProcessState",
    "Settled",
    "Supervisor",
    "backoff",
    "shard_of",
    "sleep_unless",
]
