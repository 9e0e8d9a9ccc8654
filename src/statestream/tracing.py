"""OpenTelemetry traces for statestream (``pip install 'statestream[tracing]'``).

:class:`TracingObserver` makes one span per unit of engine work (a step, a hook, a connector
event, a fired timeout, a callback) and links them through the runs' events: the W3C trace
context of the work that wrote an event travels in the event's headers (``traceparent``,
``tracestate``), across processes and streamers, and the work that handles the event is its
child. So one run is one trace::

    orders trigger            (the caller's span is its parent, when there is one)
    └─ orders created-consumer-1-of-1
       └─ orders paid-consumer-1-of-1
          └─ orders completed-run-state-change-hook-consumer

Each span is current while the work runs, so spans the user's code makes (an HTTP client's, a
database driver's) nest inside it. Only the OpenTelemetry API is needed here; configure the SDK
(a ``TracerProvider`` with an exporter) in the application, or pass ``tracer_provider=``.

A caller that has a ``traceparent`` but no current span (a message from an uninstrumented
system) continues its trace with :func:`continue_trace`::

    with statestream.tracing.continue_trace(message.headers["traceparent"]):
        await wf.trigger(order_id)
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from . import __version__
from ._core.protocols import Work
from ._core.records import Record
from ._engine.observe import NullObserver
from .errors import ConfigurationError

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        TraceState,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ConfigurationError(
        "statestream.tracing needs opentelemetry-api: pip install 'statestream[tracing]'"
    ) from exc

__all__ = ["TracingObserver", "continue_trace"]

_PROPAGATOR = TraceContextTextMapPropagator()
#: The context of a span that starts a new trace.
_ROOT = otel_context.Context()
_VERSION_HEADER = "record_version"
#: How many runs' last span contexts are kept for the timeouts (their timers carry no headers).
_KEEP_RUNS = 10_000


def _extract(headers: Mapping[str, str]) -> Any:
    """The context of the ``traceparent`` in ``headers`` (a new trace's if it is invalid).

    The W3C format parsed directly: the propagator's regular expressions cost more than the
    rest of a step."""
    parts = headers["traceparent"].split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or parts[0] != "00":
        return _PROPAGATOR.extract(headers, _ROOT)  # another version, or malformed
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return _ROOT
    if not trace_id or not span_id:
        return _ROOT
    state = headers.get("tracestate")
    parent = SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(flags & TraceFlags.SAMPLED),
        trace_state=TraceState.from_header([state]) if state else None,
    )
    return trace.set_span_in_context(NonRecordingSpan(parent), _ROOT)


def _inject(headers: dict[str, str], span: trace.Span) -> None:
    """Write ``span``'s context as ``traceparent`` (and ``tracestate``) into ``headers``."""
    ctx = span.get_span_context()
    if ctx.is_valid:
        headers["traceparent"] = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        if ctx.trace_state:
            headers["tracestate"] = ctx.trace_state.to_header()


@contextlib.contextmanager
def continue_trace(traceparent: str, tracestate: str = "") -> Iterator[None]:
    """Make the W3C trace context ``traceparent`` current for the block: a ``trigger``,
    ``callback`` or run control called inside joins that trace."""
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    token = otel_context.attach(_PROPAGATOR.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


class TracingObserver(NullObserver):
    """One span per unit of work, parented through the events' trace headers (see the module).

    Args:
        tracer_provider: the provider to take the tracer from (default: the global one that
            ``opentelemetry.trace.set_tracer_provider`` set; without an SDK, a no-op).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("statestream", __version__, tracer_provider)
        #: run ID and foreign ID -> the span context of the last work that wrote the run here:
        #: the parent of work whose event or timer carries no trace headers (a fired timeout,
        #: a consumer's catch-up events, read from the record store when it first starts)
        self._runs: OrderedDict[str, trace.SpanContext] = OrderedDict()

    def _parent(self, work: Work) -> tuple[Any, list[Link]]:
        """The context the work's span starts in, and its links.

        Background work takes its parent only from the event's headers or from what this
        process knows of the run, never from the task's current context (a task may have been
        started inside a caller's span); a callback is a child of its caller's span when there
        is one, linked to the run's trace."""
        headers = work.headers
        if "traceparent" in headers:
            return _extract(headers), []
        known = self._runs.get(work.run_id or work.foreign_id)
        if work.kind == "callback" and trace.get_current_span().get_span_context().is_valid:
            return None, [Link(known)] if known is not None else []
        if known is not None:
            return trace.set_span_in_context(trace.NonRecordingSpan(known)), []
        return _ROOT, []

    def work_started(self, work: Work) -> object:
        parent, links = self._parent(work)
        attributes: dict[str, str | int] = {
            "statestream.workflow": work.workflow,
            "statestream.process": work.process,
            "statestream.kind": work.kind,
            "statestream.status": work.status,
        }
        if work.run_id:
            attributes["statestream.run_id"] = work.run_id
        if work.foreign_id:
            attributes["statestream.foreign_id"] = work.foreign_id
        if work.event is not None:
            attributes["statestream.event_id"] = work.event.id
        span = self._tracer.start_span(
            f"{work.workflow} {work.process}",
            context=parent,
            kind=SpanKind.CONSUMER if work.kind == "event" else SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    def work_finished(
        self, work: Work, token: object, seconds: float, error: BaseException | None
    ) -> None:
        if not isinstance(token, tuple):
            return
        span, attached = token
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()
        otel_context.detach(attached)

    def propagate(self, headers: dict[str, str]) -> None:
        if headers.get(_VERSION_HEADER) == "1":
            # A new run: its trigger is the trace's first span (a child of the caller's).
            span = self._tracer.start_span(
                f"{headers.get('workflow_name', '')} trigger",
                kind=SpanKind.PRODUCER,
                attributes={
                    "statestream.workflow": headers.get("workflow_name", ""),
                    "statestream.run_id": headers.get("run_id", ""),
                    "statestream.foreign_id": headers.get("foreign_id", ""),
                },
            )
            _inject(headers, span)
            span.end()
            self._remember(headers.get("run_id", ""), headers.get("foreign_id", ""), span)
            return
        _inject(headers, trace.get_current_span())

    def record_written(self, previous: Record | None, record: Record) -> None:
        if previous is None:
            return  # a trigger: propagate remembered its span
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return
        runs = self._runs
        if record.run_state.finished:
            runs.pop(record.run_id, None)
            runs.pop(record.foreign_id, None)
            return
        runs[record.run_id] = context
        runs[record.foreign_id] = context
        if len(runs) > _KEEP_RUNS:
            runs.popitem(last=False)
            runs.popitem(last=False)

    def _remember(self, run_id: str, foreign_id: str, span: trace.Span) -> None:
        context = span.get_span_context()
        if context.is_valid:
            runs = self._runs
            runs[run_id] = runs[foreign_id] = context
            if len(runs) > _KEEP_RUNS:
                runs.popitem(last=False)
                runs.popitem(last=False)


def trace_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace context among ``headers`` (``traceparent``, ``tracestate``)."""
    return {k: headers[k] for k in ("traceparent", "tracestate") if k in headers}
