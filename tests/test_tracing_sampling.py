"""statestream.tracing and sampling: a run's sampling is decided once, at its trigger, and
travels in the trace flags of its events. An unsampled run makes no span object past the
trigger's decision and parses no header (its headers are carried on as they came), in this
process and in another one; its work still runs in the run's (unsampled) trace context, so
the user's own spans inside it are dropped too. A sampled run is still one trace, timeouts
included."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

import observe_app
import statestream.tracing as tracing
from helpers import eventually
from statestream import Builder, Run, after
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.tracing import TracingObserver, continue_trace
from test_tracing import EXPECTED, check_one_chain, of_run

S = observe_app.S


class T(enum.IntEnum):
    STARTED = 1
    WAITING = 2
    TIMED_OUT = 3


@dataclass
class Seen:
    n: int = 0


#: foreign ID -> what the user's code saw: (where, trace ID, sampled, its own span recorded)
SEEN: dict[str, list[tuple[str, int, bool, bool]]] = {}
USER_TRACER: list[trace.Tracer] = []


def _look(run: Run[Seen, T], where: str) -> None:
    ctx = trace.get_current_span().get_span_context()
    with USER_TRACER[0].start_as_current_span(f"user {where}") as own:
        recorded = own.is_recording()
    SEEN.setdefault(run.foreign_id, []).append(
        (where, ctx.trace_id, ctx.trace_flags.sampled, recorded)
    )


async def _start(run: Run[Seen, T]) -> T:
    _look(run, "step")
    return T.WAITING


async def _timed_out(run: Run[Seen, T], now: Any) -> T:
    _look(run, "timeout")
    return T.TIMED_OUT


def _waiting_workflow(tp: TracerProvider) -> tuple[Any, TracingObserver]:
    """A step, then a timeout due at once (its timer carries no trace headers)."""
    USER_TRACER[:] = [tp.get_tracer("the user's code")]
    b: Builder[Seen, T] = Builder("waits", Seen, T)
    b.defaults(polling_frequency=0.02, error_backoff=0.02, max_error_backoff=0.1)
    b.add_step(T.STARTED, _start, T.WAITING)
    b.add_timeout(
        T.WAITING, after(timedelta(milliseconds=1)), _timed_out, T.TIMED_OUT, polling_frequency=0.02
    )
    observer = TracingObserver(tp)
    wf = b.build(
        MemoryStreamer(),
        MemoryRecordStore(),
        MemoryRoleScheduler(),
        timeout_store=MemoryTimeoutStore(),
        observer=observer,
    )
    return wf, observer


class Counting:
    """The observer's tracer, counting the spans it is asked to start."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.names: list[str] = []

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        self.names.append(name)
        return self.tracer.start_span(name, *args, **kwargs)


def recording(sampler: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(sampler=sampler)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


async def test_an_unsampled_run_starts_no_span_past_its_trigger_even_for_its_timeout() -> None:
    tp, exporter = recording(ParentBased(ALWAYS_OFF))
    wf, observer = _waiting_workflow(tp)
    counting = Counting(observer._tracer)
    observer._tracer = counting  # type: ignore[assignment]
    SEEN.pop("w-unsampled", None)
    async with wf:
        run_id = await wf.trigger("w-unsampled")
        await wf.wait_for("w-unsampled", run_id, T.TIMED_OUT, timeout=10)
    assert exporter.get_finished_spans() == ()
    # The trigger's span is the sampling decision; no span object after it, not even for the
    # fired timeout (its timer has no headers: the observer knows the run is unsampled).
    assert counting.names == ["waits trigger"]
    # The user's code ran in the run's trace context, unsampled, and its own spans were dropped.
    seen = SEEN["w-unsampled"]
    assert [where for where, *_ in seen] == ["step", "timeout"]
    assert len({trace_id for _, trace_id, _, _ in seen}) == 1
    assert all(
        trace_id != 0 and not sampled and not recorded for _, trace_id, sampled, recorded in seen
    )


async def test_a_sampled_run_with_a_timeout_is_one_trace() -> None:
    tp, exporter = recording(ParentBased(TraceIdRatioBased(1.0)))
    wf, _ = _waiting_workflow(tp)
    SEEN.pop("w-sampled", None)
    async with wf:
        run_id = await wf.trigger("w-sampled")
        await wf.wait_for("w-sampled", run_id, T.TIMED_OUT, timeout=10)
        await eventually(
            lambda: any(
                (s.attributes or {}).get("statestream.kind") == "timeout"
                for s in of_run(exporter.get_finished_spans(), run_id)
            )
        )
    spans = of_run(exporter.get_finished_spans(), run_id)
    assert len({s.context.trace_id for s in spans}) == 1
    by_id = {s.context.span_id: s for s in spans}
    (trigger,) = [s for s in spans if s.name == "waits trigger"]
    assert trigger.parent is None
    for s in spans:
        if s is not trigger:
            assert s.parent is not None, s.name
            assert s.parent.span_id in by_id, s.name
    (timeout,) = [s for s in spans if (s.attributes or {}).get("statestream.kind") == "timeout"]
    step = by_id[timeout.parent.span_id]  # type: ignore[union-attr]
    assert step.attributes is not None
    assert step.attributes["statestream.kind"] == "event"
    # The user's spans are children of the work's.
    user = [s for s in exporter.get_finished_spans() if s.name.startswith("user ")]
    assert {s.context.trace_id for s in user} == {trigger.context.trace_id}
    assert all(s.parent is not None and s.parent.span_id in by_id for s in user)


async def test_each_run_is_sampled_whole_or_not_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision is the trigger's: every run has all its five spans or none; and the work
    of the unsampled ones parses no trace header."""
    parsed: list[str] = []
    parse = tracing._parse

    def counting_parse(traceparent: str, tracestate: str | None) -> Any:
        parsed.append(traceparent)
        return parse(traceparent, tracestate)

    monkeypatch.setattr(tracing, "_parse", counting_parse)
    tp, exporter = recording(ParentBased(TraceIdRatioBased(0.5)))
    wf = observe_app.builder().build(
        MemoryStreamer(),
        MemoryRecordStore(),
        MemoryRoleScheduler(),
        timeout_store=MemoryTimeoutStore(),
        observer=TracingObserver(tp),
    )
    async with wf:
        runs = [await wf.trigger(f"r-{i}") for i in range(40)]
        for i, run_id in enumerate(runs):
            await wf.wait_for(f"r-{i}", run_id, S.DONE, timeout=10)
        spans = exporter.get_finished_spans()
        sampled = [r for r in runs if of_run(spans, r)]
        await eventually(
            lambda: all(len(of_run(exporter.get_finished_spans(), r)) == 5 for r in sampled)
        )
    spans = exporter.get_finished_spans()
    counts = {r: len(of_run(spans, r)) for r in runs}
    assert set(counts.values()) <= {0, 5}, counts
    assert 0 < len(sampled) < len(runs)  # 40 runs at 1/2: all or none is 2 in 2**40
    for r in sampled:
        assert check_one_chain(of_run(spans, r)) == EXPECTED
    # Only the sampled runs' work parsed its parent: at most four works each (a first step
    # may come from the consumer's catch-up, without headers: its parent is the trigger's).
    assert 0 < len(parsed) <= 4 * len(sampled)
    assert all(tp.endswith(("-01", "-03")) for tp in parsed)


async def test_an_unsampled_trigger_stays_unsampled_in_another_process(tmp_path: Path) -> None:
    """The caller samples nothing of its own; the worker's sampler would record every new
    trace, but the run's events say it is not sampled: the worker makes no span for it. A run
    triggered inside a sampled caller's trace is one trace across both."""
    path = str(tmp_path / "orders.db")
    caller_tp, caller_spans = recording(ParentBased(ALWAYS_OFF))
    worker_tp, worker_spans = recording(ParentBased(TraceIdRatioBased(1.0)))
    caller, caller_db = observe_app.build(path, TracingObserver(caller_tp))
    worker_observer = TracingObserver(worker_tp)
    worker, worker_db = observe_app.build(path, worker_observer)
    counting = Counting(worker_observer._tracer)
    try:
        async with worker:
            warm_up = await caller.trigger("warm-up-u")  # past the consumers' catch-up
            await caller.wait_for("warm-up-u", warm_up, S.DONE, timeout=20)
            worker_observer._tracer = counting  # type: ignore[assignment]
            unsampled = await caller.trigger("u-1")
            with continue_trace("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"):
                sampled = await caller.trigger("s-1")
            await caller.wait_for("u-1", unsampled, S.DONE, timeout=20)
            await caller.wait_for("s-1", sampled, S.DONE, timeout=20)
            await eventually(
                lambda: len(of_run(worker_spans.get_finished_spans(), sampled)) == 4, timeout=10
            )
    finally:
        await caller_db.close()
        await worker_db.close()
    assert of_run(worker_spans.get_finished_spans(), unsampled) == []
    assert of_run(caller_spans.get_finished_spans(), unsampled) == []
    # The worker started spans only for the sampled run's four works.
    assert len(counting.names) == 4
    spans = of_run(caller_spans.get_finished_spans(), sampled) + of_run(
        worker_spans.get_finished_spans(), sampled
    )
    assert check_one_chain(spans, root_parent=0xB7AD6B7169203331) == EXPECTED


async def test_a_sampler_that_ignores_the_parent_still_decides_each_span() -> None:
    """The shortcut is only for samplers that drop the children of unsampled parents: with
    ALWAYS_ON, a run whose caller's trace is unsampled is recorded (the general path)."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    tp, exporter = recording(ALWAYS_ON)
    observer = TracingObserver(tp)
    assert not observer._drops_unsampled
    wf = observe_app.builder().build(
        MemoryStreamer(),
        MemoryRecordStore(),
        MemoryRoleScheduler(),
        timeout_store=MemoryTimeoutStore(),
        observer=observer,
    )
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    async with wf:
        with continue_trace(f"00-{trace_id}-b7ad6b7169203331-00"):
            run_id = await wf.trigger("on-1")
        await wf.wait_for("on-1", run_id, S.DONE, timeout=10)
        await eventually(lambda: len(of_run(exporter.get_finished_spans(), run_id)) == 5)
    spans = of_run(exporter.get_finished_spans(), run_id)
    assert {format(s.context.trace_id, "032x") for s in spans} == {trace_id}
    assert check_one_chain(spans, root_parent=0xB7AD6B7169203331) == EXPECTED


def test_the_fast_context_access_is_the_apis() -> None:
    """The observer reads and sets the current context through the runtime's ContextVar when
    it is the default one: the same context the API sees."""
    span = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
    ctx = trace.set_span_in_context(span, otel_context.Context())
    token = tracing._attach(ctx)
    try:
        assert otel_context.get_current() is ctx
        assert trace.get_current_span() is span
        assert tracing._current().get(tracing._SPAN_KEY) is span
    finally:
        tracing._detach(token)
    assert trace.get_current_span() is not span
