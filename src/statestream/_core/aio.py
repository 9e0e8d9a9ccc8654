"""Cancellation that cannot be lost.

Under Python 3.11, ``asyncio.wait_for`` returns the inner result (or raises the inner error)
instead of ``CancelledError`` when the task is cancelled just as the inner awaitable finishes,
and drivers built on it (asyncmy's connect, for one) then raise their own connection error in
place of the cancellation. A loop that retries on that error, or that waits again, would carry
on under a cancellation nobody sees: a consumer whose role was lost would never stop, and the
process holding it would keep the role in its books for ever. ``Task.cancelling()`` still
counts the request, so loops that catch errors or timeouts ask :func:`checkpoint` before they
go round again.
"""

from __future__ import annotations

import asyncio

__all__ = ["cancel_requested", "checkpoint", "wait_event"]


def cancel_requested() -> bool:
    """Whether the current task has been asked to cancel (and has not un-cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def checkpoint() -> None:
    """Raise :class:`asyncio.CancelledError` if the current task was asked to cancel, even if
    something on the way swallowed the error."""
    if cancel_requested():
        raise asyncio.CancelledError


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; whether it is set. Unlike
    ``asyncio.wait_for(event.wait(), timeout)`` under Python 3.11, a cancellation that
    arrives as the event is set is not lost."""
    if not event.is_set():
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
    checkpoint()
    return event.is_set()
