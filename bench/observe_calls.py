"""The observer seam's own cost per transition, without the event loop's noise.

Per transition the engine takes an event (``Scope.taken``: the sampled lag, the ``Work``), calls
``work_started``/``work_finished`` around the handler, ``propagate`` and ``record_written``. This
times those calls around a bare coroutine, minus the bare coroutine, for a ``NullObserver``
and a ``PrometheusObserver``::

    PYTHONPATH=src .venv/bin/python -m bench.observe_calls
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from typing import Any

from prometheus_client import CollectorRegistry

from statestream import NullObserver
from statestream._core.clock import SystemClock
from statestream._core.records import Event, Record
from statestream._core.runstate import RunState
from statestream._engine import observe
from statestream.metrics import PrometheusObserver

N = 200_000
NOW = datetime.datetime.now(datetime.UTC)
EVENT = Event(id="1", key="run", type=2, topic="t", headers={"foreign_id": "f"}, created_at=NOW)
RECORD = Record(
    workflow_name="wf",
    foreign_id="f",
    run_id="run",
    run_state=RunState.RUNNING,
    status=3,
    object=b"{}",
    created_at=NOW,
    updated_at=NOW,
    version=2,
    status_description="x",
)


async def _handle(event: Event) -> None:
    pass


def _drive(coro: Any) -> None:
    with contextlib.suppress(StopIteration):
        coro.send(None)


def _bare() -> float:
    started = time.process_time()
    for _ in range(N):
        _drive(_handle(EVENT))
    return time.process_time() - started


def _observed(observer: object) -> float:
    g = observe.guard(observer)
    assert g is not None
    scope = observe.Scope(g, "wf", "p", SystemClock())
    mono = time.monotonic
    started = time.process_time()
    for _ in range(N):
        work = scope.taken(EVENT, 0.0)
        if work is not None:
            token = g.work_started(work)
            began = mono()
            _drive(_handle(EVENT))
            g.work_finished(work, token, mono() - began, None)
        else:
            _drive(_handle(EVENT))
        g.propagate({})
        g.record_written(RECORD, RECORD)
    return time.process_time() - started


def main() -> None:
    for name, make in (
        ("null", NullObserver),
        ("metrics", lambda: PrometheusObserver(CollectorRegistry())),
    ):
        bare = min(_bare() for _ in range(3))
        observed = min(_observed(make()) for _ in range(3))
        print(f"{name}: {(observed - bare) / N * 1e6:.2f} µs per transition")


if __name__ == "__main__":
    asyncio.run(asyncio.sleep(0))
    main()
