"""Calling user code: steps, callbacks, timers, hooks, connector handlers, filters.

User code cannot take the worker down. ``asyncio.CancelledError`` raised by the user's own code
(not the cancellation of the engine's task, which is let through), ``GeneratorExit``,
``KeyboardInterrupt`` and ``SystemExit`` become a :class:`~statestream.errors.UserCodeError`: an
error of that run, counted, backed off and paused or parked like any other.

Plain ``def`` functions run on the workflow's own bounded pool of daemon threads
(:class:`DaemonExecutor`, ``build(..., sync_workers=N)``), not on the loop's default executor:
its threads are joined when the interpreter exits, so a hung ``def`` step would keep the worker
alive after SIGTERM; these are abandoned when the process exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import itertools
import queue
import threading
from collections.abc import Callable
from contextvars import ContextVar
from time import monotonic
from typing import Any

from ..errors import UserCodeError
from .lease import HELD, check_lease

__all__ = [
    "SYNC_EXECUTOR",
    "DaemonExecutor",
    "call_user",
    "call_user_sync",
    "user_error",
]

#: Not Exception subclasses, so ``except Exception`` in the engine would let them through.
_FATAL = (GeneratorExit, KeyboardInterrupt, SystemExit)
_INF = float("inf")


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def user_error(fn: Callable[..., Any], exc: BaseException) -> UserCodeError:
    """The UserCodeError that stands for ``exc`` raised by ``fn``."""
    detail = str(exc)
    message = f"{_name(fn)} raised {type(exc).__name__}" + (f": {detail}" if detail else "")
    error = UserCodeError(message, exc)
    error.__cause__ = exc
    return error


def _ours(exc: asyncio.CancelledError) -> bool:
    """Whether a CancelledError comes from cancelling the current task (the engine's stop, a
    lost role) rather than from the user's code raising or leaking one."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


_Work = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonExecutor(concurrent.futures.Executor):
    """A bounded thread pool of daemon threads, started on demand.

    Unlike :class:`concurrent.futures.ThreadPoolExecutor`, whose threads are joined at
    interpreter exit (``concurrent.futures.thread._python_exit``), a call that never returns
    does not keep the process alive. :meth:`shutdown` lets idle threads end at once and busy ones
    after their call; the executor stays usable (new calls start new threads).

    Args:
        max_workers: the most threads running at once; further calls queue.
        name: the prefix of the threads' names.
    """

    def __init__(self, max_workers: int, name: str = "statestream-sync") -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        self.max_workers = max_workers
        self._name = name
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        # One generation of queue, idle count and threads; shutdown starts a new one, so that a
        # call submitted after it is never queued behind the old threads' stop sentinels.
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: set[threading.Thread] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        call = functools.partial(fn, **kwargs) if kwargs else fn
        with self._lock:
            self._queue.put((future, call, args))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._work,
                    args=(self._queue, self._idle, self._threads),
                    name=f"{self._name}-{next(self._counter)}",
                    daemon=True,
                )
                self._threads.add(thread)
                thread.start()
        return future

    @property
    def threads(self) -> int:
        """Threads of the current generation (running a call or idle)."""
        return len(self._threads)

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = False) -> None:
        """Let the current threads end (idle ones at once); never waits for a hung call."""
        with self._lock:
            work, threads = self._queue, self._threads
            self._queue = queue.SimpleQueue()
            self._idle = threading.Semaphore(0)
            self._threads = set()
        if cancel_futures:
            while True:
                try:
                    item = work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in range(len(threads)):
            work.put(None)

    def _work(
        self,
        work: queue.SimpleQueue[_Work | None],
        idle: threading.Semaphore,
        threads: set[threading.Thread],
    ) -> None:
        try:
            while True:
                item = work.get()
                if item is None:
                    return
                future, fn, args = item
                del item
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn(*args)
                    except BaseException as exc:
                        future.set_exception(exc)
                        del exc
                    else:
                        future.set_result(result)
                        del result
                del future, fn, args
                idle.release()
        finally:
            with self._lock:
                threads.discard(threading.current_thread())


#: The executor plain ``def`` user functions run on; set by the Supervisor for process bodies and
#: by the workflow around public calls. Outside both, a shared default pool is used.
SYNC_EXECUTOR: ContextVar[concurrent.futures.Executor | None] = ContextVar(
    "statestream_sync_executor", default=None
)
_default: DaemonExecutor | None = None


def _default_executor() -> DaemonExecutor:
    global _default
    if _default is None:
        _default = DaemonExecutor(32, "statestream-sync")
    return _default


async def call_user(fn: Callable[..., Any], is_async: bool, *args: Any) -> Any:
    """Call a user function: coroutine functions on the loop, plain ones on the sync pool.

    Raises:
        UserCodeError: the function raised CancelledError (not the engine's own cancellation),
            GeneratorExit, KeyboardInterrupt or SystemExit.
        LeaseExpired: the current role's lease is past its deadline; the function is not called.
        Exception: whatever the function raised.
    """
    current = HELD.get()
    if current is not None:
        until = current.lease.valid_until
        if until < _INF and monotonic() >= until:
            check_lease("user code")  # raises LeaseExpired
    try:
        if is_async:
            return await fn(*args)
        executor = SYNC_EXECUTOR.get() or _default_executor()
        context = contextvars.copy_context()
        result = await asyncio.get_running_loop().run_in_executor(
            executor, functools.partial(context.run, fn, *args)
        )
        if inspect.isawaitable(result):
            result = await result
        return result
    except asyncio.CancelledError as exc:
        if _ours(exc):
            raise
        raise user_error(fn, exc) from exc
    except _FATAL as exc:
        raise user_error(fn, exc) from exc


def call_user_sync(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a plain user function on the loop's thread (a quick one: ``on_delete_data``)."""
    try:
        return fn(*args)
    except (asyncio.CancelledError, *_FATAL) as exc:
        raise user_error(fn, exc) from exc
