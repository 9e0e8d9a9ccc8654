"""Helpers for testing workflows and steps in users' own test suites.

* :class:`FakeClock`: time that moves only when the test says so.
* :func:`drive_to`: trigger a run (if needed) and wait until it has been at a status.
* :func:`require`: wait until the latest run of a foreign ID has been at a status, and check its
  object.
* :func:`wait_until`: wait until the latest run satisfies a predicate.
* :func:`callback_on`: wait until a run reaches a status, then deliver a callback to it.
* :func:`await_timeout`: wait until a run's timeout at a status is stored;
  :func:`fast_forward` moves a :class:`FakeClock` to the moment it fires.
* :func:`next_ticks`: the upcoming ticks of a schedule spec.
* :func:`fake_run` and :func:`call_step`: unit-test one step function without any adapter.

The waiting helpers see every version of the run that this process wrote from the moment the
helper was called (and every stored version, when the record store keeps them:
:class:`~statestream.SnapshotStore`, as ``MemoryRecordStore(keep_snapshots=True)`` does), so a run
that passes through a status while the helper waits is seen even if it moves on at once. Versions
written by other processes are seen when they are the latest at a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from ._core.clock import FakeClock, utcnow
from ._core.protocols import SnapshotStore
from ._core.records import Record, TimeoutRecord
from ._core.run import Control, Run, StepFn
from ._core.runstate import RunState
from ._core.types import StatusT, T
from ._engine.callbacks import CallbackResult
from ._engine.schedules import next_ticks
from ._workflow import Workflow
from .errors import (
    ConfigurationError,
    RecordNotFound,
    WaitTimeout,
    WorkflowInProgress,
)

__all__ = [
    "FakeClock",
    "await_timeout",
    "call_step",
    "callback_on",
    "fast_forward",
    "next_ticks",
    "drive_to",
    "require",
    "fake_run",
    "wait_until",
]


@contextlib.contextmanager
def _history(wf: Workflow[Any, Any], foreign_id: str) -> Iterator[list[Record]]:
    """Collect every record of ``foreign_id`` this process writes while the block runs."""
    seen: list[Record] = []
    listeners = wf._rt.listeners

    def listen(record: Record) -> None:
        if record.foreign_id == foreign_id and record.workflow_name == wf.name:
            seen.append(record)

    listeners.append(listen)
    try:
        yield seen
    finally:
        listeners.remove(listen)


async def _versions(
    wf: Workflow[T, StatusT], foreign_id: str, written: list[Record]
) -> list[Record]:
    try:
        latest = await wf.store.latest(wf.name, foreign_id)
    except RecordNotFound:
        return []
    by_version = {r.version: r for r in written if r.run_id == latest.run_id}
    if isinstance(wf.store, SnapshotStore):
        by_version.update((r.version, r) for r in wf.store.snapshots(latest.run_id))
    by_version[latest.version] = latest
    return [by_version[v] for v in sorted(by_version) if v <= latest.version]


async def wait_until(
    wf: Workflow[T, StatusT],
    foreign_id: str,
    predicate: Callable[[Run[T, StatusT]], bool],
    *,
    timeout: float = 5.0,
    interval: float = 0.005,
) -> Run[T, StatusT]:
    """Wait until some version of the latest run of ``foreign_id`` satisfies ``predicate``.

    Raises:
        WaitTimeout: no version did within ``timeout`` seconds.
    """
    with _history(wf, foreign_id) as written:
        return await _wait_until(wf, foreign_id, predicate, written, timeout, interval)


async def _wait_until(
    wf: Workflow[T, StatusT],
    foreign_id: str,
    predicate: Callable[[Run[T, StatusT]], bool],
    written: list[Record],
    timeout: float,
    interval: float,
) -> Run[T, StatusT]:
    deadline = time.monotonic() + timeout
    checked: set[tuple[str, int]] = set()
    while True:
        versions = await _versions(wf, foreign_id, written)
        for record in versions:
            key = (record.run_id, record.version)
            if key in checked:
                continue
            checked.add(key)
            run = wf.to_run(record)
            if predicate(run):
                return run
        if time.monotonic() >= deadline:
            last = versions[-1] if versions else None
            where = f"latest version: {wf.to_run(last)!r}" if last else "no run exists"
            raise WaitTimeout(f"{foreign_id!r} did not satisfy the condition in time ({where})")
        await asyncio.sleep(interval)


async def require(
    wf: Workflow[T, StatusT],
    foreign_id: str,
    status: StatusT,
    expected: T | None = None,
    *,
    timeout: float = 5.0,
) -> Run[T, StatusT]:
    """Wait until the latest run of ``foreign_id`` has been at ``status``; compare its object.

    Raises:
        WaitTimeout: it did not get there in time.
        AssertionError: it did, but its object differs from ``expected``.
    """
    run = await wait_until(wf, foreign_id, lambda r: r.status == status, timeout=timeout)
    if expected is not None:
        assert run.object == expected, f"object at {status.name}: {run.object!r} != {expected!r}"
    return run


async def drive_to(
    wf: Workflow[T, StatusT],
    foreign_id: str,
    status: StatusT,
    *,
    initial: T | None = None,
    timeout: float = 5.0,
) -> Run[T, StatusT]:
    """Trigger a run of ``foreign_id`` (unless one is unfinished) and wait until it reaches
    ``status``; something must be running the workflow's processes (``async with wf:`` here,
    or a worker elsewhere). Returns the run as it was at ``status``.

    Raises:
        WaitTimeout: the run did not get there within ``timeout`` seconds.
    """
    with _history(wf, foreign_id) as written:
        with contextlib.suppress(WorkflowInProgress):
            await wf.trigger(foreign_id, initial=initial)
        return await _wait_until(
            wf, foreign_id, lambda r: r.status == status, written, timeout, 0.005
        )


def fake_run(
    obj: T,
    status: StatusT,
    *,
    workflow_name: str = "test",
    foreign_id: str = "foreign-id",
    run_id: str | None = None,
    run_state: RunState = RunState.RUNNING,
    version: int = 1,
    now: datetime | None = None,
) -> Run[T, StatusT]:
    """A :class:`Run` for unit-testing a step function, with no workflow or adapter behind it."""
    at = now or utcnow()
    return Run(
        workflow_name=workflow_name,
        foreign_id=foreign_id,
        run_id=run_id or uuid.uuid4().hex,
        run_state=run_state,
        status=status,
        object=obj,
        created_at=at,
        updated_at=at,
        version=version,
    )


async def call_step(fn: StepFn[T, StatusT], run: Run[T, StatusT]) -> StatusT | Control:
    """Call a step function (sync or async) the way the engine does and return its result."""
    result: Any = fn(run)
    if inspect.isawaitable(result):
        result = await result
    return result  # type: ignore[no-any-return]


async def callback_on(
    wf: Workflow[T, StatusT],
    foreign_id: str,
    status: StatusT,
    payload: object = b"",
    *,
    timeout: float = 5.0,
) -> CallbackResult[T, StatusT]:
    """Wait until the latest run of ``foreign_id`` is at ``status``, then send it a callback."""
    run = await wait_until(wf, foreign_id, lambda r: r.status == status, timeout=timeout)
    await wf.wait_for(foreign_id, run.run_id, status, timeout=timeout)
    return await wf.callback(foreign_id, status, payload)


async def await_timeout(
    wf: Workflow[T, StatusT],
    foreign_id: str,
    status: StatusT,
    *,
    timeout: float = 5.0,
    interval: float = 0.005,
) -> TimeoutRecord:
    """Wait until a pending timeout of the latest run of ``foreign_id`` at ``status`` is stored."""
    store = wf.timeout_store
    if store is None:
        raise ConfigurationError(f"workflow {wf.name!r} has no timeout store")
    deadline = time.monotonic() + timeout
    while True:
        try:
            run_id: str | None = (await wf.store.latest(wf.name, foreign_id)).run_id
        except RecordNotFound:
            run_id = None
        for record in await store.list(wf.name):
            if record.run_id == run_id and record.status == int(status):
                return record
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"no timeout of {foreign_id!r} at {status.name} was stored in time")
        await asyncio.sleep(interval)


async def fast_forward(clock: FakeClock, timeout: TimeoutRecord) -> None:
    """Move ``clock`` to the moment ``timeout`` is due (never backwards), and let pollers run."""
    if timeout.expire_at > clock.now():
        clock.set(timeout.expire_at)
    for _ in range(3):
        await asyncio.sleep(0)
