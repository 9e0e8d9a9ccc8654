"""statestream.tracing: one trace per run, from the trigger to the completion hook, with each
span the child of the work that wrote the event it handled; also across two workflow instances
sharing one SQLite file, and continuing a caller's trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import observe_app
from helpers import eventually
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.tracing import TracingObserver, continue_trace

S = observe_app.S


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


def of_run(spans: tuple[ReadableSpan, ...], run_id: str) -> list[ReadableSpan]:
    return [s for s in spans if (s.attributes or {}).get("statestream.run_id") == run_id]


def check_one_chain(spans: list[ReadableSpan], root_parent: Any = None) -> list[str]:
    """One trace; trigger -> step 1 -> step 2 -> step 3 -> hook, each the parent of the next.
    Returns the span names in order."""
    assert len({s.context.trace_id for s in spans}) == 1, [s.name for s in spans]
    by_id = {s.context.span_id: s for s in spans}
    (trigger,) = [s for s in spans if s.name == "orders trigger"]
    if root_parent is None:
        assert trigger.parent is None
    else:
        assert trigger.parent is not None
        assert trigger.parent.span_id == root_parent
    children: dict[int, list[ReadableSpan]] = {}
    for s in spans:
        if s is not trigger:
            assert s.parent is not None, s.name
            assert s.parent.span_id in by_id, f"{s.name}: parent outside the run"
            children.setdefault(s.parent.span_id, []).append(s)
    chain = [trigger]
    while children.get(chain[-1].context.span_id):
        (child,) = children[chain[-1].context.span_id]
        chain.append(child)
    assert len(chain) == len(spans)
    return [s.name for s in chain]


EXPECTED = [
    "orders trigger",
    "orders created-consumer-1-of-1",
    "orders checked-consumer-1-of-1",
    "orders paid-consumer-1-of-1",
    "orders completed-run-state-change-hook-consumer",
]


async def test_a_run_is_one_trace_with_each_span_the_child_of_the_last() -> None:
    tp, exporter = provider()
    wf = observe_app.builder().build(
        MemoryStreamer(),
        MemoryRecordStore(),
        MemoryRoleScheduler(),
        timeout_store=MemoryTimeoutStore(),
        observer=TracingObserver(tp),
    )
    async with wf:
        a = await wf.trigger("a")
        b = await wf.trigger("b")
        await wf.wait_for("a", a, S.DONE, timeout=10)
        await wf.wait_for("b", b, S.DONE, timeout=10)
        await eventually(lambda: len(of_run(exporter.get_finished_spans(), b)) == 5, timeout=10)
    spans = exporter.get_finished_spans()
    assert check_one_chain(of_run(spans, a)) == EXPECTED
    assert check_one_chain(of_run(spans, b)) == EXPECTED
    assert of_run(spans, a)[0].context.trace_id != of_run(spans, b)[0].context.trace_id
    step = next(s for s in of_run(spans, a) if s.name == "orders checked-consumer-1-of-1")
    assert step.attributes is not None
    assert step.attributes["statestream.foreign_id"] == "a"
    assert step.attributes["statestream.kind"] == "event"
    assert step.attributes["statestream.status"] == int(S.CHECKED)


async def test_a_failed_attempt_is_a_span_with_the_error() -> None:
    tp, exporter = provider()
    wf = observe_app.builder().build(
        MemoryStreamer(),
        MemoryRecordStore(),
        MemoryRoleScheduler(),
        timeout_store=MemoryTimeoutStore(),
        observer=TracingObserver(tp),
    )
    async with wf:
        run_id = await wf.trigger("fail-trace")
        await wf.wait_for("fail-trace", run_id, S.DONE, timeout=10)
        await eventually(lambda: len(of_run(exporter.get_finished_spans(), run_id)) == 6)
    spans = of_run(exporter.get_finished_spans(), run_id)
    assert len({s.context.trace_id for s in spans}) == 1
    failed = [s for s in spans if not s.status.is_ok]
    (attempt,) = failed
    assert attempt.name == "orders created-consumer-1-of-1"
    assert attempt.events[0].name == "exception"
    assert "first attempt of fail-trace fails" in str(attempt.status.description)


async def test_one_trace_across_two_instances_on_one_sqlite_file(tmp_path: Path) -> None:
    """The caller's instance only triggers (it is not started); the worker's instance, with its
    own observer and tracer, relays the events and runs every step from the file."""
    path = str(tmp_path / "orders.db")
    caller_tp, caller_spans = provider()
    worker_tp, worker_spans = provider()
    caller, caller_db = observe_app.build(path, TracingObserver(caller_tp))
    worker, worker_db = observe_app.build(path, TracingObserver(worker_tp))
    tracer = caller_tp.get_tracer("the caller's service")
    try:
        async with worker:
            # A first run, so that every consumer of the worker is past its catch-up (runs
            # found in the store when a consumer first starts carry no trace headers).
            warm_up = await caller.trigger("warm-up")
            await caller.wait_for("warm-up", warm_up, S.DONE, timeout=20)
            with tracer.start_as_current_span("POST /orders") as request:
                run_id = await caller.trigger("x-1")
            await caller.wait_for("x-1", run_id, S.DONE, timeout=20)
            await eventually(
                lambda: len(of_run(worker_spans.get_finished_spans(), run_id)) == 4, timeout=10
            )
    finally:
        await caller_db.close()
        await worker_db.close()
    in_caller = of_run(caller_spans.get_finished_spans(), run_id)
    in_worker = of_run(worker_spans.get_finished_spans(), run_id)
    assert [s.name for s in in_caller] == ["orders trigger"]
    assert len(in_worker) == 4
    names = check_one_chain(in_caller + in_worker, root_parent=request.get_span_context().span_id)
    assert names == EXPECTED
    assert in_worker[0].context.trace_id == request.get_span_context().trace_id


async def test_continue_trace_joins_a_callers_traceparent() -> None:
    tp, exporter = provider()
    wf = observe_app.builder().build(
        MemoryStreamer(),
        MemoryRecordStore(),
        MemoryRoleScheduler(),
        timeout_store=MemoryTimeoutStore(),
        observer=TracingObserver(tp),
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with wf:
        with continue_trace(f"00-{trace_id}-00f067aa0ba902b7-01", "vendor=x"):
            run_id = await wf.trigger("c-1")
        await wf.wait_for("c-1", run_id, S.DONE, timeout=10)
        await eventually(lambda: len(of_run(exporter.get_finished_spans(), run_id)) == 5)
    spans = of_run(exporter.get_finished_spans(), run_id)
    assert {format(s.context.trace_id, "032x") for s in spans} == {trace_id}
    assert {s.context.trace_state.get("vendor") for s in spans} == {"x"}  # tracestate travels
    assert check_one_chain(spans, root_parent=0x00F067AA0BA902B7) == EXPECTED
