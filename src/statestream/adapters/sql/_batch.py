"""Batching under load, no delay when idle: one writer task per database.

Callers :meth:`WriteBatcher.submit` an item and wait for its result. When nothing is being
written, the writer starts at once and writes that item alone. While a batch is on its way to
the server, new items queue up; the writer takes everything queued (up to ``max_batch``) as the
next batch, in one call of ``write`` (a dialect writes it in one round trip where it can). So
an idle service pays one round trip per write, and a loaded one shares each round trip (and
each commit) among many.

``write(items)`` returns one result per item: a value, or an exception for that item alone (a
failed compare-and-set of one item must not fail the others). If ``write`` itself raises, every
item of the batch gets that exception.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["WriteBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class WriteBatcher(Generic[T, R]):
    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch: int = 256,
        writers: int = 1,
    ) -> None:
        self._write = write
        self.max_batch = max_batch
        self.writers = writers
        self._queue: collections.deque[tuple[T, asyncio.Future[R]]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = 0
        #: Batches written, and items written in them (tests and benchmarks read these).
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if self._running < self.writers:
            # Counted at once (the task starts on the next loop turn), and uncounted by the
            # task itself in the same step in which it sees the queue empty.
            self._running += 1
            task = loop.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _run(self) -> None:
        try:
            await self._drain()
        finally:
            self._running -= 1

    async def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch: list[tuple[T, asyncio.Future[R]]] = []
            while queue and len(batch) < self.max_batch:
                entry = queue.popleft()
                if not entry[1].done():  # a caller cancelled before the write began
                    batch.append(entry)
            if not batch:
                continue
            try:
                results = await self._write([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.cancel()
                self._fail_queued()
                raise
            except BaseException as exc:
                results = [exc] * len(batch)
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # its caller was cancelled; the write stands
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _fail_queued(self) -> None:
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.cancel()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
