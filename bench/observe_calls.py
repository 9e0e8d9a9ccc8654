"""The observer seam's own cost per transition, without the event loop's noise.

Per transition the engine takes an event (``Scope.taken``: the sampled lag, the ``Work``), calls
``work_started``/``work_finished`` around the handler, ``propagate`` and ``record_written``. This
times those calls around a bare coroutine, minus the bare coroutine, for a ``NullObserver``
and a ``PrometheusObserver``; then a ``TracingObserver`` (the SDK, a batch processor whose
exporter drops the spans) through whole runs as workload 1 makes them (a trigger, three steps
and a completion hook, each event carrying the trace headers the last work wrote), at several
sampling ratios, per transition (four per run)::

    PYTHONPATH=src .venv/bin/python -m bench.observe_calls
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import time
from typing import Any

from prometheus_client import CollectorRegistry

from statestream import NullObserver
from statestream._core.clock import SystemClock
from statestream._core.protocols import Work
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


RUNS = 20_000
DONE = dataclasses.replace(RECORD, run_state=RunState.COMPLETED, status=4, version=5)


def _headers(version: int) -> dict[str, str]:
    return {
        "workflow_name": "wf",
        "foreign_id": "f",
        "run_id": "run",
        "topic": "t",
        "run_state": "2",
        "record_version": str(version),
    }


def _runs(g: observe.Guarded | None) -> float:
    """CPU seconds for RUNS runs' observer calls (``g`` None: only the headers and works)."""
    started = time.process_time()
    for _ in range(RUNS):
        headers = _headers(1)
        if g is not None:
            g.propagate(headers)
            g.record_written(None, RECORD)
        for step in range(4):  # three steps and the completion hook
            event = Event(
                id="1", key="run", type=step + 1, topic="t", headers=headers, created_at=NOW
            )
            work = Work("wf", f"p{step}", "event", step + 1, "run", "f", headers, event)
            headers = _headers(step + 2)
            if g is None:
                continue
            token = g.work_started(work)
            if step < 3:
                g.propagate(headers)
                g.record_written(RECORD, DONE if step == 2 else RECORD)
            g.work_finished(work, token, 0.001, None)
    return time.process_time() - started


def _tracing(ratio: float) -> object:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from statestream.tracing import TracingObserver

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return TracingObserver(provider)


def main() -> None:
    for name, make in (
        ("null", NullObserver),
        ("metrics", lambda: PrometheusObserver(CollectorRegistry())),
    ):
        bare = min(_bare() for _ in range(3))
        observed = min(_observed(make()) for _ in range(3))
        print(f"{name}: {(observed - bare) / N * 1e6:.2f} µs per transition")
    for ratio in (0.0, 0.01, 0.1, 1.0):
        bare = min(_runs(None) for _ in range(3))
        g = observe.guard(_tracing(ratio))
        observed = min(_runs(g) for _ in range(3))
        per = (observed - bare) / RUNS / 4 * 1e6
        print(f"tracing, {ratio:.0%} of the runs sampled: {per:.2f} µs per transition")


if __name__ == "__main__":
    asyncio.run(asyncio.sleep(0))
    main()
