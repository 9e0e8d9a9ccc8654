"""Calling user code: steps, callbacks, timers, hooks."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["call_user"]


async def call_user(fn: Callable[..., Any], is_async: bool, *args: Any) -> Any:
    """Call a user function: coroutine functions on the loop, plain ones in a worker thread."""
    if is_async:
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result
