"""The role a piece of engine work runs under, and the check that its lease is still in force.

The Supervisor runs each process body in a context whose :data:`HELD` names the process and its
lease; every task the body creates inherits it. The dispatcher (before it starts a handler), user
calls and the runtime's write path (before ``store.create``/``store.update``) call
:func:`check_lease`, so that once the lease's local deadline (:attr:`Lease.valid_until`) has
passed nothing more is started or written under it, even when the event loop stalled past the
deadline and the Supervisor's own watchdog has not run yet.

Work outside any role (a public ``trigger``, ``callback`` or ``pause`` call) has no lease and is
never refused.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._core.protocols import Lease

if TYPE_CHECKING:
    from .supervisor import Process, Supervisor

__all__ = ["HELD", "Abandon", "Held", "LeaseExpired", "check_lease", "held", "lease_expired"]


class Abandon(Exception):
    """Raised by a handler to give up on an event without acknowledging it (we are stopping)."""


class LeaseExpired(Abandon):
    """The role's lease passed its local deadline: the work is abandoned, nothing is written.

    Another process may hold the role by now; the event stays unacknowledged and is handled
    again by the next holder (at least once).
    """


@dataclass(frozen=True, slots=True)
class Held:
    """One holding of a role: the process, the lease it holds, its supervisor, and the event
    that tells the work to stop (the supervisor stops, or the role is handed over)."""

    process: Process
    lease: Lease
    supervisor: Supervisor
    stopping: asyncio.Event
    #: When the holding began (``time.monotonic()``, before its body started): whatever this
    #: process wrote earlier, an earlier holder of the role may have acted on since.
    since: float = field(default_factory=time.monotonic)


#: The holding the current task works under (None outside background processes).
HELD: ContextVar[Held | None] = ContextVar("statestream_held", default=None)


def held() -> Held | None:
    """The holding of the current task, if it runs inside a background process."""
    return HELD.get()


def lease_expired(lease: Lease) -> bool:
    """Whether ``lease``'s local deadline has passed."""
    return time.monotonic() >= lease.valid_until


def check_lease(what: str = "work") -> None:
    """Raise :class:`LeaseExpired` if the current task's lease is past its deadline."""
    current = HELD.get()
    if current is not None and time.monotonic() >= current.lease.valid_until:
        raise LeaseExpired(
            f"the lease of role {current.lease.role} passed its deadline; {what} abandoned"
        )
