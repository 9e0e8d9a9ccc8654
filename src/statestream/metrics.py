"""Prometheus metrics for statestream (``pip install 'statestream[metrics]'``).

Two parts:

* :class:`PrometheusObserver`, an :class:`~statestream.Observer` that counts what the engine
  does in this process (handled work and its duration, errors, skips, lag, writes, leases):
  ``Builder.build(..., observer=PrometheusObserver())`` or ``wf.add_observer(...)``.
* A sampler that reads the stores every ``interval`` seconds for what no single process sees:
  the unfinished runs by status and run state, the outbox backlog, the timers due, the parked
  events, and the state of each background process
  (``async with observer.sampling(wf): ...``).

Expose them with :func:`start_http_server` (what ``statestream worker --metrics-port`` does), or
mount :func:`asgi_app` / :func:`wsgi_app` in your own application.

The observer keeps plain Python counters, updated inline on the engine's path (one dict look-up
and an add per moment, no lock, no label dict), and turns them into metric families only when
Prometheus scrapes. Several observers on one registry share one set of metrics.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

from ._core.protocols import Observer, Work
from ._core.records import Event, Record, RecordFilter
from ._core.runstate import RunState
from ._engine.observe import NullObserver
from .errors import ConfigurationError, InvalidInput

try:
    import prometheus_client
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ConfigurationError(
        "statestream.metrics needs prometheus_client: pip install 'statestream[metrics]'"
    ) from exc

__all__ = [
    "LATENCY_BUCKETS",
    "STEP_BUCKETS",
    "MetricsServer",
    "PrometheusObserver",
    "asgi_app",
    "prometheus_observers",
    "start_http_server",
    "wsgi_app",
]

log = logging.getLogger("statestream")

#: luno/workflow's buckets of ``workflow_process_latency_seconds``.
LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.1, 1.0, 5.0, 10.0, 60.0, 300.0)
#: The buckets of ``workflow_step_duration_seconds``.
STEP_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

#: luno/workflow's names of the run states (``RunState.String()``).
_STATE_NAMES: dict[int, str] = {int(s): s.name.title().replace("_", "") for s in RunState}
_UNFINISHED = (RunState.INITIATED, RunState.RUNNING, RunState.PAUSED)
_WF_PROC = ["workflow_name", "process_name"]


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _Histogram:
    """A histogram's counts (per bucket, not cumulative) and sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        counts = list(self.counts)  # a snapshot: the loop thread may add meanwhile
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            total += count
            out.append((_bound(bound), float(total)))
        return out


class _Metrics(Collector):
    """One registry's statestream metrics: the values, and their families at scrape time."""

    def __init__(self, latency_buckets: tuple[float, ...], step_buckets: tuple[float, ...]):
        self.latency_buckets = latency_buckets
        self.step_buckets = step_buckets
        # what the observers count, by label values
        self.lag: dict[tuple[str, str], float] = {}
        self.lag_alert: dict[tuple[str, str], int] = {}
        self.latency: dict[tuple[str, str], _Histogram] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.skipped: dict[tuple[str, str, str], int] = {}
        self.state_changes: dict[tuple[str, int, int], int] = {}
        self.steps: dict[tuple[str, str, int], _Histogram] = {}
        self.lease_changes: dict[tuple[str, str, str], int] = {}
        self.roles_held: dict[tuple[str, str], int] = {}
        self.relayed: dict[str, int] = {}
        # what the sampler reads, per workflow (replaced whole at each sample)
        self.states: dict[str, dict[str, int]] = {}
        self.runs: dict[str, dict[tuple[str, int], int]] = {}
        self.runs_truncated: dict[str, int] = {}
        self.outbox: dict[str, int] = {}
        self.timers_pending: dict[str, dict[str, int]] = {}
        self.timers_due: dict[str, dict[str, int]] = {}
        self.parked: dict[str, dict[str, int]] = {}
        #: status value -> name, per workflow (from the watched workflows and the writes)
        self.names: dict[str, dict[int, str]] = {}

    def status_name(self, workflow: str, status: int) -> str:
        names = self.names.get(workflow)
        name = names.get(status) if names is not None else None
        return name if name is not None else str(status)

    def collect(self) -> Iterator[Metric]:
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        f: Any = gauge(
            "workflow_process_lag_seconds",
            "How long ago the last event a process took was written (outbox: the oldest row "
            "of the last batch)",
            labels=_WF_PROC,
        )
        for key, value in list(self.lag.items()):
            f.add_metric(key, value)
        yield f
        f = gauge(
            "workflow_process_lag_alert",
            "1 while the process's lag is above its lag_alert option, else 0",
            labels=_WF_PROC,
        )
        for key, flag in list(self.lag_alert.items()):
            f.add_metric(key, flag)
        yield f
        f = gauge(
            "workflow_process_states",
            "Each process's state: 0 unknown, 1 shutdown, 2 running, 3 idle, 4 lagging, 5 error",
            labels=_WF_PROC,
        )
        for workflow, states in list(self.states.items()):
            for process, state in states.items():
                f.add_metric((workflow, process), state)
        yield f
        f = HistogramMetricFamily(
            "workflow_process_latency_seconds",
            "How long a process took per handled event, fired timeout, callback or outbox batch",
            labels=_WF_PROC,
        )
        for key, hist in list(self.latency.items()):
            f.add_metric(key, hist.buckets(), hist.sum)
        yield f
        f = counter(
            "workflow_process_error_count",
            "Errors of a process: failed attempts at work (retried, or the run paused) and "
            "failures of the process itself",
            labels=_WF_PROC,
        )
        for key, count in list(self.errors.items()):
            f.add_metric(key, count)
        yield f
        f = counter(
            "workflow_process_skipped_events_count",
            "Events a process took and left, by reason",
            labels=[*_WF_PROC, "reason"],
        )
        for key3, count in list(self.skipped.items()):
            f.add_metric(key3, count)
        yield f
        f = counter(
            "workflow_run_state_changes",
            "Records written by this process, by previous and new run state",
            labels=["workflow_name", "previous_run_state", "current_run_state"],
        )
        for (workflow, was, now), count in list(self.state_changes.items()):
            f.add_metric((workflow, _STATE_NAMES[was], _STATE_NAMES[now]), count)
        yield f
        f = HistogramMetricFamily(
            "workflow_step_duration_seconds",
            "How long the user's work took, by kind (event, timeout, callback) and status",
            labels=["workflow_name", "kind", "status"],
        )
        for (workflow, kind, status), hist in list(self.steps.items()):
            f.add_metric(
                (workflow, kind, self.status_name(workflow, status)), hist.buckets(), hist.sum
            )
        yield f
        f = counter(
            "workflow_lease_changes",
            "Roles this process gained or lost (or released)",
            labels=["workflow_name", "role", "change"],
        )
        for key3, count in list(self.lease_changes.items()):
            f.add_metric(key3, count)
        yield f
        f = gauge(
            "workflow_roles_held",
            "1 while this process holds the role",
            labels=["workflow_name", "role"],
        )
        for key, held in list(self.roles_held.items()):
            f.add_metric(key, held)
        yield f
        f = counter(
            "workflow_outbox_published",
            "Outbox events the relay of this process published",
            labels=["workflow_name"],
        )
        for workflow, count in list(self.relayed.items()):
            f.add_metric((workflow,), count)
        yield f
        # sampled from the stores
        f = gauge(
            "workflow_runs",
            "Unfinished runs (initiated, running, paused) by status and run state, read from "
            "the record store at each sample",
            labels=["workflow_name", "status", "run_state"],
        )
        for workflow, runs in list(self.runs.items()):
            for (label, state), count in runs.items():
                f.add_metric((workflow, label, _STATE_NAMES[state]), count)
        yield f
        f = gauge(
            "workflow_runs_truncated",
            "1 when the last sample stopped at max_runs (workflow_runs counts only those)",
            labels=["workflow_name"],
        )
        for workflow, flag in list(self.runs_truncated.items()):
            f.add_metric((workflow,), flag)
        yield f
        f = gauge(
            "workflow_outbox_backlog",
            "Outbox events not yet published (counted up to max_rows)",
            labels=["workflow_name"],
        )
        for workflow, count in list(self.outbox.items()):
            f.add_metric((workflow,), count)
        yield f
        for name, text, table in (
            ("workflow_timeouts_pending", "Timers not yet fired, by status", self.timers_pending),
            ("workflow_timeouts_due", "Timers past their expiry, not fired yet", self.timers_due),
        ):
            f = gauge(name, text, labels=["workflow_name", "status"])
            for workflow, per in list(table.items()):
                for status_name, count in per.items():
                    f.add_metric((workflow, status_name), count)
            yield f
        f = gauge(
            "workflow_parked_events",
            "Events a consumer gave up on, by consumer (role); counted up to max_rows",
            labels=["workflow_name", "consumer"],
        )
        for workflow, per in list(self.parked.items()):
            for consumer, count in per.items():
                f.add_metric((workflow, consumer), count)
        yield f


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _metrics_of(
    registry: CollectorRegistry, latency: tuple[float, ...], steps: tuple[float, ...]
) -> _Metrics:
    with _LOCK:
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _BY_REGISTRY[registry] = _Metrics(latency, steps)
            registry.register(metrics)
        return metrics


def _buckets(values: Sequence[float], what: str) -> tuple[float, ...]:
    bounds = tuple(float(v) for v in values)
    if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
        raise InvalidInput(f"{what} must be a non-empty, increasing sequence, got {values!r}")
    return bounds


class PrometheusObserver(NullObserver):
    """Counts the engine's moments as Prometheus metrics (see the README's "Metrics").

    Args:
        registry: where the metrics are registered (default: prometheus_client's global
            ``REGISTRY``). Observers on the same registry share one set of metrics; the first
            one's buckets apply.
        latency_buckets: of ``workflow_process_latency_seconds`` (luno/workflow's by default).
        step_buckets: of ``workflow_step_duration_seconds``.
        max_runs: how many unfinished runs one sample reads per workflow at most.
        max_rows: how many outbox rows and parked events one sample counts at most.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
        step_buckets: Sequence[float] = STEP_BUCKETS,
        max_runs: int = 100_000,
        max_rows: int = 10_000,
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.max_runs = max_runs
        self.max_rows = max_rows
        m = self._m = _metrics_of(
            self.registry,
            _buckets(latency_buckets, "latency_buckets"),
            _buckets(step_buckets, "step_buckets"),
        )
        # bound once: the per-moment methods touch only these
        self._lag, self._alert, self._latency = m.lag, m.lag_alert, m.latency
        self._errors, self._skipped, self._steps = m.errors, m.skipped, m.steps
        self._changes, self._names = m.state_changes, m.names

    # ------------------------------------------------------------------ the engine's moments

    def work_finished(
        self, work: Work, token: object, seconds: float, error: BaseException | None
    ) -> None:
        key = (work.workflow, work.process)
        hist = self._latency.get(key)
        if hist is None:
            hist = self._latency[key] = _Histogram(self._m.latency_buckets)
        hist.observe(seconds)
        step_key = (work.workflow, work.kind, work.status)
        step = self._steps.get(step_key)
        if step is None:
            step = self._steps[step_key] = _Histogram(self._m.step_buckets)
        step.observe(seconds)
        if error is not None and isinstance(error, Exception):
            self._errors[key] = self._errors.get(key, 0) + 1

    def event_skipped(self, workflow: str, process: str, event: Event | None, reason: str) -> None:
        key = (workflow, process, reason)
        self._skipped[key] = self._skipped.get(key, 0) + 1

    def lag(self, workflow: str, process: str, seconds: float, alert: bool) -> None:
        key = (workflow, process)
        self._lag[key] = seconds
        self._alert[key] = 1 if alert else 0

    def record_written(self, previous: Record | None, record: Record) -> None:
        key = (
            record.workflow_name,
            0 if previous is None else previous.run_state,
            record.run_state,
        )
        self._changes[key] = self._changes.get(key, 0) + 1

    def lease_changed(self, workflow: str, role: str, held: bool) -> None:
        m = self._m
        key = (workflow, role, "gained" if held else "lost")
        m.lease_changes[key] = m.lease_changes.get(key, 0) + 1
        m.roles_held[(workflow, role)] = 1 if held else 0

    def relay_batch(self, workflow: str, count: int, seconds: float, lag: float) -> None:
        m = self._m
        key = (workflow, "outbox-consumer")
        m.lag[key] = lag
        hist = m.latency.get(key)
        if hist is None:
            hist = m.latency[key] = _Histogram(m.latency_buckets)
        hist.observe(seconds)
        m.relayed[workflow] = m.relayed.get(workflow, 0) + count

    def process_failed(self, workflow: str, process: str, error: BaseException) -> None:
        key = (workflow, process)
        self._errors[key] = self._errors.get(key, 0) + 1

    # ------------------------------------------------------------------ the sampler

    def watch(self, workflow: Any) -> None:
        """Name ``workflow``'s statuses in the labels (``status="PAID"``, not ``"3"``). The
        sampler and the worker call it; call it yourself when you do not sample."""
        self._names[workflow.name] = {int(s): s.name for s in workflow.graph}

    async def sample(self, *workflows: Any) -> None:
        """Read the stores of ``workflows`` once and set the sampled gauges."""
        for wf in workflows:
            self.watch(wf)
            await self._sample_one(wf)

    async def _sample_one(self, wf: Any) -> None:
        m, name = self._m, wf.name
        m.states[name] = {process: int(state) for process, state in wf.states().items()}
        runs: dict[tuple[str, int], int] = {}
        seen = 0
        after: str | None = None
        only = RecordFilter(run_states=_UNFINISHED)
        while seen < self.max_runs:
            page = await wf.store.list(
                name, limit=min(1000, self.max_runs - seen), filter=only, after=after
            )
            for record in page:
                key = (m.status_name(name, record.status), int(record.run_state))
                runs[key] = runs.get(key, 0) + 1
            seen += len(page)
            if len(page) < 1000:
                break
            after = page[-1].run_id
        m.runs[name] = runs
        m.runs_truncated[name] = 1 if seen >= self.max_runs else 0
        if wf.store is not None:
            m.outbox[name] = len(await wf.store.list_outbox(name, self.max_rows))
            parked: dict[str, int] = {}
            for entry in await wf.store.list_parked(name, limit=self.max_rows):
                parked[entry.consumer] = parked.get(entry.consumer, 0) + 1
            m.parked[name] = parked
        if wf.timeout_store is not None:
            now = wf.clock.now()
            pending: dict[str, int] = {}
            due: dict[str, int] = {}
            for timer in await wf.timeout_store.list(name):
                label = m.status_name(name, timer.status)
                pending[label] = pending.get(label, 0) + 1
                if timer.expire_at <= now:
                    due[label] = due.get(label, 0) + 1
            m.timers_pending[name] = pending
            m.timers_due[name] = due

    @contextlib.asynccontextmanager
    async def sampling(self, *workflows: Any, interval: float = 15.0) -> AsyncIterator[None]:
        """Sample ``workflows`` now and then every ``interval`` seconds until the block ends.

        A failed sample is logged (once until one succeeds again) and tried at the next
        interval."""
        if not interval > 0:
            raise InvalidInput(f"interval must be > 0, got {interval!r}")
        for wf in workflows:
            self.watch(wf)
        task = asyncio.create_task(self._sample_forever(workflows, interval))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await self.sample(*workflows)  # the processes' final states

    async def _sample_forever(self, workflows: Sequence[Any], interval: float) -> None:
        failing = False
        while True:
            try:
                await self.sample(*workflows)
            except Exception as exc:
                if not failing:
                    log.warning(
                        "statestream: sampling metrics failed (logged once until it works "
                        "again): %r",
                        exc,
                        exc_info=True,
                    )
                failing = True
            else:
                failing = False
            await asyncio.sleep(interval)


def prometheus_observers(observers: Iterable[Observer]) -> list[PrometheusObserver]:
    """The :class:`PrometheusObserver` among ``observers`` (``Workflow.observers``)."""
    return [o for o in observers if isinstance(o, PrometheusObserver)]


# ------------------------------------------------------------------ exposing them


class MetricsServer:
    """The HTTP server of :func:`start_http_server`; :meth:`close` stops it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_http_server(
    port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve ``/metrics`` (any path, in fact) on ``addr:port`` from a daemon thread
    (``port=0``: a free port, see :attr:`MetricsServer.port`)."""
    try:
        server, thread = prometheus_client.start_http_server(
            port, addr, registry=REGISTRY if registry is None else registry
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}; choose another "
            "--metrics-port"
        ) from exc
    return MetricsServer(server, thread)


def asgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app serving the metrics, to mount in Starlette or FastAPI
    (``app.mount("/metrics", asgi_app())``)."""
    return prometheus_client.make_asgi_app(REGISTRY if registry is None else registry)


def wsgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """A WSGI app serving the metrics, for Flask or Django
    (``DispatcherMiddleware(app, {"/metrics": wsgi_app()})``)."""
    return prometheus_client.make_wsgi_app(REGISTRY if registry is None else registry)
