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

Sampling is decided once per run, by the provider's sampler, when the trigger's span starts;
the decision travels in the trace flags of the run's events. With the SDK's default
``ParentBased`` sampler the work of an unsampled run starts no span, makes no span context and
parses no header: it runs in the run's carried trace context (so the user's own spans inside it
are dropped too), and the events it writes carry the run's headers on unchanged.

A caller that has a ``traceparent`` but no current span (a message from an uninstrumented
system) continues its trace with :func:`continue_trace`::

    with statestream.tracing.continue_trace(message.headers["traceparent"]):
        await wf.trigger(order_id)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from . import __version__
from ._core.protocols import Work
from ._core.records import Record
from ._engine.observe import NullObserver
from .errors import ConfigurationError

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
    from opentelemetry.trace import (
        DEFAULT_TRACE_STATE,
        INVALID_SPAN_CONTEXT,
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
#: The last hex digit of a ``traceparent``'s flags when its sampled bit (0x01) is clear.
_UNSAMPLED = frozenset("02468ace")
#: The span kind of each kind of work.
_KINDS = {"event": SpanKind.CONSUMER, "timeout": SpanKind.INTERNAL, "callback": SpanKind.INTERNAL}


def _runtime() -> tuple[Callable[[], Any], Callable[[Any], Any], Callable[[Any], None]]:
    """How to read, set and reset the current OpenTelemetry context: with the default runtime
    context (``contextvars``), the ContextVar's own methods (the API wraps each in two or
    three Python calls, a good part of an unsampled step's cost); the API's functions with
    any other runtime context."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(var, contextvars.ContextVar):
        return var.get, var.set, var.reset
    return otel_context.get_current, otel_context.attach, otel_context.detach


_current, _attach, _detach = _runtime()
#: The key of the current span in a context (taken through the API, it is private).
_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, otel_context.Context())))


def _parse(traceparent: str, tracestate: str | None) -> SpanContext | None:
    """The span context of a version-00 W3C ``traceparent`` (invalid when it is malformed),
    ``None`` when it is another version (left to the propagator).

    Parsed directly: the propagator's regular expressions cost more than the rest of a step."""
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or parts[0] != "00":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return INVALID_SPAN_CONTEXT
    if not trace_id or not span_id:
        return INVALID_SPAN_CONTEXT
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(flags & TraceFlags.SAMPLED),
        trace_state=TraceState.from_header([tracestate]) if tracestate else None,
    )


def _extract(headers: Mapping[str, str]) -> Any:
    """The context of the ``traceparent`` in ``headers`` (a new trace's if it is invalid)."""
    parent = _parse(headers["traceparent"], headers.get("tracestate"))
    if parent is None:
        return _PROPAGATOR.extract(headers, _ROOT)  # another version, or malformed
    if not parent.is_valid:
        return _ROOT
    return trace.set_span_in_context(NonRecordingSpan(parent), _ROOT)


class _Carried(NonRecordingSpan):
    """The current span of work in an unsampled trace, where no span is started at all.

    It carries the trace headers of the event (or of the trigger) as they came, so that the
    events the work writes carry them on unchanged (an unsampled trace has no spans to
    parent: its ``traceparent`` is the same from the trigger to the completion hook). Its
    :class:`SpanContext` is parsed only when something asks for it (a span or a propagator of
    the user's code inside the work): it is the remote, unsampled parent the SDK's
    ``ParentBased`` sampler drops the children of."""

    def __init__(
        self, traceparent: str, tracestate: str | None, context: SpanContext | None = None
    ) -> None:
        self.traceparent = traceparent
        self.tracestate = tracestate
        self._parsed = context

    def get_span_context(self) -> SpanContext:
        context = self._parsed
        if context is None:
            context = self._parsed = (
                _parse(self.traceparent, self.tracestate) or INVALID_SPAN_CONTEXT
            )
        return context

    def __repr__(self) -> str:
        return f"_Carried({self.traceparent!r})"


def _drops_unsampled(provider: trace.TracerProvider | None) -> bool | None:
    """Whether ``provider`` samples like the SDK's default ``ParentBased``: it drops the child
    of every unsampled remote parent. The work of an unsampled trace then starts no span at
    all (no sampler call, no IDs, no attributes, no parsing): it runs in a :class:`_Carried`
    span, whose headers it passes on to the events it writes. ``None`` while the global
    provider is not set yet (asked again later)."""
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            return None
    sampler = getattr(provider, "sampler", None)
    if sampler is None:
        return False
    try:
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
    except ImportError:  # pragma: no cover - a provider with a sampler is the SDK's
        return False
    return (
        type(sampler) is ParentBased
        and getattr(sampler, "_remote_parent_not_sampled", None) is ALWAYS_OFF
    )


def _traceparent(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def _tracestate(ctx: SpanContext) -> str | None:
    state = ctx.trace_state
    if state is DEFAULT_TRACE_STATE or not state:  # the identity first: len() is Python's
        return None
    return state.to_header()


def _inject(headers: dict[str, str], span: trace.Span) -> None:
    """Write ``span``'s context as ``traceparent`` (and ``tracestate``) into ``headers``."""
    if type(span) is _Carried:  # an unsampled trace: its headers travel on as they came
        headers["traceparent"] = span.traceparent
        if span.tracestate:
            headers["tracestate"] = span.tracestate
        return
    ctx = span.get_span_context()
    if ctx.is_valid:
        headers["traceparent"] = _traceparent(ctx)
        tracestate = _tracestate(ctx)
        if tracestate:
            headers["tracestate"] = tracestate


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


class _Unsampled:
    """What this process knows of an unsampled run: the span its work runs in and the context
    that holds it, made once per run and process (not per work)."""

    __slots__ = ("context", "span")

    def __init__(self, span: _Carried) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span, _ROOT)


#: What a run's later work is parented to when its event or timer carries no trace headers:
#: the span context of the work that wrote the run last (sampled), or the run's carried trace
#: headers (unsampled).
_Known = SpanContext | _Unsampled


class TracingObserver(NullObserver):
    """One span per unit of work, parented through the events' trace headers (see the module).

    Whether a run is traced is decided once, at its trigger, by the provider's sampler; the
    decision travels in the trace flags of the run's events, to every process. With the SDK's
    default ``ParentBased`` sampler the work of an unsampled run makes no span object and
    parses no header: its trace headers are carried on as they came.

    Args:
        tracer_provider: the provider to take the tracer from (default: the global one that
            ``opentelemetry.trace.set_tracer_provider`` set; without an SDK, a no-op).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("statestream", __version__, tracer_provider)
        self._provider = tracer_provider
        #: run ID and foreign ID -> what the last work that wrote the run here ran in: the
        #: parent of work whose event or timer carries no trace headers (a fired timeout, a
        #: consumer's catch-up events, read from the record store when it first starts)
        self._runs: OrderedDict[str, _Known] = OrderedDict()
        self._drops: bool | None = _drops_unsampled(tracer_provider)
        #: (workflow, process, kind, status) -> the span name, kind and fixed attributes
        self._shapes: dict[tuple[str, str, str, int], tuple[str, SpanKind, dict[str, Any]]] = {}

    @property
    def _drops_unsampled(self) -> bool:
        drops = self._drops
        if drops is None:
            drops = self._drops = _drops_unsampled(self._provider)
        return bool(drops)

    def _shape(self, work: Work) -> tuple[str, SpanKind, dict[str, Any]]:
        key = (work.workflow, work.process, work.kind, work.status)
        shape = self._shapes[key] = (
            f"{work.workflow} {work.process}",
            _KINDS.get(work.kind, SpanKind.INTERNAL),
            {
                "statestream.workflow": work.workflow,
                "statestream.process": work.process,
                "statestream.kind": work.kind,
                "statestream.status": work.status,
            },
        )
        return shape

    def work_started(self, work: Work) -> object:
        headers = work.headers
        links: list[Link] | None = None
        traceparent = headers.get("traceparent")
        if traceparent is not None:
            # "00-<trace>-<span>-<flags>" with the sampled bit clear (_is_unsampled, inline)
            if (
                len(traceparent) == 55
                and traceparent[54] in _UNSAMPLED
                and traceparent[2] == "-"
                and traceparent[35] == "-"
                and traceparent[52] == "-"
                and (self._drops or self._drops_unsampled)
            ):
                # The sampler would drop its span: run in the carried headers instead.
                known = self._runs.get(work.run_id)
                if type(known) is not _Unsampled or known.span.traceparent != traceparent:
                    known = _Unsampled(_Carried(traceparent, headers.get("tracestate")))
                return _attach(known.context)
            parent = _extract(headers)
        else:
            # Background work takes its parent only from the event's headers or from what
            # this process knows of the run, never from the task's current context (a task
            # may have been started inside a caller's span); a callback is a child of its
            # caller's span when there is one, linked to the run's trace.
            found = self._runs.get(work.run_id or work.foreign_id)
            if work.kind == "callback" and trace.get_current_span().get_span_context().is_valid:
                parent = None
                if found is not None:
                    linked = found.span.get_span_context() if type(found) is _Unsampled else found
                    links = [Link(linked)]  # type: ignore[arg-type]
            elif found is None:
                parent = _ROOT
            elif isinstance(found, _Unsampled):
                if self._drops_unsampled:
                    return _attach(found.context)
                parent = found.context
            else:
                parent = trace.set_span_in_context(NonRecordingSpan(found), _ROOT)
        shape = self._shapes.get((work.workflow, work.process, work.kind, work.status))
        if shape is None:
            shape = self._shape(work)
        name, kind, fixed = shape
        attributes = fixed.copy()
        if work.run_id:
            attributes["statestream.run_id"] = work.run_id
        if work.foreign_id:
            attributes["statestream.foreign_id"] = work.foreign_id
        if work.event is not None:
            attributes["statestream.event_id"] = work.event.id
        span = self._tracer.start_span(
            name, context=parent, kind=kind, attributes=attributes, links=links
        )
        return span, otel_context.attach(trace.set_span_in_context(span))

    def work_finished(
        self, work: Work, token: object, seconds: float, error: BaseException | None
    ) -> None:
        if type(token) is not tuple:
            if token is not None:  # an unsampled trace: no span was made
                _detach(token)
            return
        span, attached = token
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()
        otel_context.detach(attached)

    def propagate(self, headers: dict[str, str]) -> None:
        if headers.get(_VERSION_HEADER) == "1":
            self._trigger(headers)
            return
        span = _current().get(_SPAN_KEY)
        if type(span) is _Carried:  # an unsampled trace: its headers travel on as they came
            headers["traceparent"] = span.traceparent
            if span.tracestate:
                headers["tracestate"] = span.tracestate
        else:
            _inject(headers, trace.get_current_span())

    def _trigger(self, headers: dict[str, str]) -> None:
        """A new run: its trigger is the trace's first span (a child of the caller's), and
        the sampler's decision on it is the run's."""
        workflow = headers.get("workflow_name", "")
        run_id = headers.get("run_id", "")
        foreign_id = headers.get("foreign_id", "")
        span = self._tracer.start_span(
            f"{workflow} trigger",
            context=_current(),  # the caller's (the SDK would look it up three times)
            kind=SpanKind.PRODUCER,
            attributes={
                "statestream.workflow": workflow,
                "statestream.run_id": run_id,
                "statestream.foreign_id": foreign_id,
            },
        )
        span.end()
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return
        traceparent = headers["traceparent"] = _traceparent(ctx)
        tracestate = _tracestate(ctx)
        if tracestate:
            headers["tracestate"] = tracestate
        known: _Known = ctx
        if not ctx.trace_flags.sampled and self._drops_unsampled:
            known = _Unsampled(_Carried(traceparent, tracestate, ctx))
        self._remember(run_id, foreign_id, known)

    def record_written(self, previous: Record | None, record: Record) -> None:
        if previous is None:
            return  # a trigger: propagate remembered its span
        span = _current().get(_SPAN_KEY)
        if type(span) is _Carried:
            if record.run_state.finished:
                self._forget(record)
                return
            found = self._runs.get(record.run_id)
            if type(found) is not _Unsampled or found.span is not span:
                self._remember(record.run_id, record.foreign_id, _Unsampled(span))
            return
        ctx = trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return
        if record.run_state.finished:
            self._forget(record)
            return
        self._remember(record.run_id, record.foreign_id, ctx)

    def _remember(self, run_id: str, foreign_id: str, known: _Known) -> None:
        runs = self._runs
        runs[run_id] = runs[foreign_id] = known
        if len(runs) > _KEEP_RUNS:
            runs.popitem(last=False)
            runs.popitem(last=False)

    def _forget(self, record: Record) -> None:
        runs = self._runs
        runs.pop(record.run_id, None)
        runs.pop(record.foreign_id, None)


def trace_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace context among ``headers`` (``traceparent``, ``tracestate``)."""
    return {k: headers[k] for k in ("traceparent", "tracestate") if k in headers}
