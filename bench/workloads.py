"""The benchmark workloads: each one builds a workflow, drives it and returns one result row.

Run one workload in this process (the harness runs each repetition in its own subprocess)::

    python -m bench.workloads <workload> <backend> [<size>]

It prints one JSON line: the row. ``size`` is the number of runs (for ``depth-*``: runs driven
one after the other through the chain).

Every workflow here is a chain of async steps that do no I/O: step ``i`` adds one to a counter in
the run's object and returns status ``i + 1``; the last status is terminal, so the write that
reaches it completes the run. A *transition* is one record write: the trigger plus one write per
step, so a 3-step run makes 4.

Backends live in :data:`bench.backends.BACKENDS` (re-exported here): a name mapped to an async
context manager that yields the adapters and cleans them up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import itertools
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from statestream import Builder, CompositeObserver, NullObserver, Run, Workflow

from .backends import BACKENDS, Adapters, Cpu, CpuWindow, make_memory_adapters, unavailable

__all__ = [
    "BACKENDS",
    "WORKLOADS",
    "Adapters",
    "Result",
    "Cpu",
    "CpuWindow",
    "Workload",
    "make_memory_adapters",
    "unavailable",
    "run_workload",
]

WORKFLOW = "bench"
#: A workload that has not finished after this many seconds fails instead of hanging.
DEADLINE_S = 300.0
#: Triggers in flight at once in the fan-out workloads (throughput, parallel-N).
TRIGGER_CONCURRENCY = 64
#: The timeouts workload's poll interval: how late, at most, the poller sees the expiry.
POLL_S = 0.1


# ------------------------------------------------------------------------------------ results


@dataclass(slots=True)
class Result:
    """One repetition of one workload on one backend."""

    workload: str
    backend: str
    runs: int = 0
    transitions: int = 0
    elapsed_s: float | None = None
    transitions_per_s: float | None = None
    runs_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    per_step_ms: float | None = None
    peak_rss_mb: float | None = None
    #: CPU time (user + system) of this process in the measured window, per transition (for a
    #: multi-process workload: of every client process, the driver and the workers)
    cpu_us_per_transition: float | None = None
    #: CPU time of the database server's processes in the window, per transition (every
    #: session's, not only this workload's); None without a server, or not on this host
    server_cpu_us_per_transition: float | None = None
    #: The part of it in this workload's own sessions (their backends or threads): a lower
    #: bound, without the server's shared work (see :class:`bench.servers.ServerCpu`)
    server_own_cpu_us_per_transition: float | None = None
    #: CPU time of the message broker's process in the window, per transition (Kafka)
    broker_cpu_us_per_transition: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


# ------------------------------------------------------------------------------------ workflows


@dataclass
class Payload:
    """The run's object: a counter the steps bump, so every write encodes something."""

    n: int = 0


def chain(steps: int) -> type[enum.IntEnum]:
    """An IntEnum ``S1 .. S{steps+1}`` (values 1..steps+1): ``steps`` steps, last is terminal."""
    return enum.IntEnum("S", [f"S{i}" for i in range(1, steps + 2)])  # type: ignore[return-value]


StepFn = Callable[[Run[Payload, Any]], Awaitable[Any]]
HookFn = Callable[[Run[Payload, Any]], Awaitable[None]]


def _advance(to: enum.IntEnum) -> StepFn:
    async def step(run: Run[Payload, Any]) -> enum.IntEnum:
        run.object.n += 1
        return to

    return step


def build_chain(
    adapters: Adapters,
    steps: int,
    *,
    parallel_count: int = 1,
    on_complete: HookFn | None = None,
    advance: Callable[[enum.IntEnum], StepFn] = _advance,
) -> tuple[Workflow[Payload, Any], type[enum.IntEnum]]:
    """A workflow whose runs go ``S1 -> S2 -> ... -> S{steps+1}`` (terminal); ``advance(to)``
    makes the step that returns ``to``."""
    status = chain(steps)
    members = list(status)
    b: Builder[Payload, Any] = Builder(WORKFLOW, Payload, status)
    for src, dst in itertools.pairwise(members):
        b.add_step(src, advance(dst), dst, parallel_count=parallel_count)
    if on_complete is not None:
        b.on_complete(on_complete)
    wf = b.build(
        adapters.streamer,
        adapters.store,
        adapters.scheduler,
        timeout_store=adapters.timeout_store,
        observer=bench_observer(),
    )
    return wf, status


def bench_observer() -> Any:
    """The observers ``STATESTREAM_BENCH_OBSERVE`` names, to measure what they cost (none by
    default): ``null`` (the seam's own cost), ``metrics``, ``tracing`` (every run sampled),
    ``tracing-sampled`` (1 % of the runs), ``tracing@R`` (a fraction ``R`` of the runs:
    ``tracing@0.1``), or several (``metrics,tracing``).

    ``tracing`` uses the OpenTelemetry SDK's ``TracerProvider`` with one batch span processor
    whose exporter drops the spans: every span is made, recorded, queued and handed over, as
    with a real exporter, without the export's own I/O."""
    names = [n for n in os.environ.get("STATESTREAM_BENCH_OBSERVE", "").split(",") if n]
    observers: list[Any] = []
    for name in names:
        if name == "null":  # the seam's own cost: an observer that does nothing
            observers.append(NullObserver())
        elif name == "metrics":
            from prometheus_client import CollectorRegistry

            from statestream.metrics import PrometheusObserver

            observers.append(PrometheusObserver(CollectorRegistry()))
        elif name in ("tracing", "tracing-sampled") or name.startswith("tracing@"):
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                SpanExporter,
                SpanExportResult,
            )

            class Drop(SpanExporter):
                def export(self, spans: Any) -> SpanExportResult:
                    return SpanExportResult.SUCCESS

            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

            from statestream.tracing import TracingObserver

            # tracing-sampled: 1 % of the runs, as a busy service would sample
            if name.startswith("tracing@"):
                ratio = float(name.partition("@")[2])
            else:
                ratio = 0.01 if name == "tracing-sampled" else 1.0
            sampler = ParentBased(TraceIdRatioBased(ratio))
            provider = TracerProvider(sampler=sampler)
            provider.add_span_processor(BatchSpanProcessor(Drop()))
            observers.append(TracingObserver(provider))
        else:
            raise SystemExit(f"STATESTREAM_BENCH_OBSERVE: unknown observer {name!r}")
    if not observers:
        return None
    return observers[0] if len(observers) == 1 else CompositeObserver(*observers)


# ------------------------------------------------------------------------------------ workloads


async def _fan_out(
    backend: str, size: int, *, name: str, parallel_count: int, steps: int = 3
) -> Result:
    """Trigger ``size`` runs back to back, then wait until the last one completes.

    Completion is counted by an ``on_complete`` hook (one asyncio.Event set at the last one), so
    the measurement adds one hook consumer and no polling. The run latency is the completed
    record's ``updated_at - created_at``: trigger to completing write, under full load.
    """
    completed = 0
    all_done = asyncio.Event()
    latencies: list[float] = []

    async def count(run: Run[Payload, Any]) -> None:
        nonlocal completed
        latencies.append((run.updated_at - run.created_at).total_seconds())
        completed += 1
        if completed >= size:
            all_done.set()

    async with BACKENDS[backend]() as adapters:
        wf, _ = build_chain(adapters, steps, parallel_count=parallel_count, on_complete=count)
        async with wf:
            started = time.perf_counter()
            window = CpuWindow(adapters)
            # As fast as the API allows: up to TRIGGER_CONCURRENCY triggers in flight at once
            # (as many request handlers of a service would), so a store may commit them together.
            for start in range(0, size, TRIGGER_CONCURRENCY):
                await asyncio.gather(
                    *(
                        wf.trigger(f"run-{i}")
                        for i in range(start, min(size, start + TRIGGER_CONCURRENCY))
                    )
                )
            try:
                await asyncio.wait_for(all_done.wait(), DEADLINE_S)
            except TimeoutError:
                raise RuntimeError(
                    f"{name}: only {completed} of {size} runs completed in {DEADLINE_S:.0f}s"
                ) from None
            elapsed = time.perf_counter() - started
            cpu = await window.stop()
    transitions = size * (steps + 1)
    return Result(
        workload=name,
        backend=backend,
        runs=size,
        transitions=transitions,
        elapsed_s=elapsed,
        transitions_per_s=transitions / elapsed,
        runs_per_s=size / elapsed,
        p50_ms=_ms(percentile(latencies, 50)),
        p99_ms=_ms(percentile(latencies, 99)),
        peak_rss_mb=peak_rss_mb(),
        cpu_us_per_transition=cpu.client / transitions * 1e6,
        **cpu.per_transition(transitions),
        note="latency under load (all runs triggered at once)",
    )


async def throughput(backend: str, size: int) -> Result:
    """Workload 1: trigger ``size`` runs of a 3-step workflow at once; runs/s to completion."""
    return await _fan_out(backend, size, name="throughput", parallel_count=1)


async def awaited(backend: str, size: int) -> Result:
    """Workload 1 with completion observed by ``size`` concurrent ``wait_for`` calls.

    Each run is awaited from the moment it is triggered: ``wait_for`` of the terminal status in
    its own task (as one request handler per run would), so about ``size`` waiters are pending
    at once. Reported beside ``throughput``, whose completion is observed by a hook: the gap
    between the two is what waiting costs.
    """
    steps = 3
    async with BACKENDS[backend]() as adapters:
        wf, status = build_chain(adapters, steps)
        last = list(status)[-1]
        async with wf:
            started = time.perf_counter()
            window = CpuWindow(adapters)
            waiters: list[asyncio.Task[Run[Payload, Any]]] = []
            for start in range(0, size, TRIGGER_CONCURRENCY):
                ids = range(start, min(size, start + TRIGGER_CONCURRENCY))
                run_ids = await asyncio.gather(*(wf.trigger(f"run-{i}") for i in ids))
                waiters.extend(
                    asyncio.create_task(wf.wait_for(f"run-{i}", run_id, last, timeout=DEADLINE_S))
                    for i, run_id in zip(ids, run_ids, strict=True)
                )
            runs = await asyncio.gather(*waiters)
            elapsed = time.perf_counter() - started
            cpu = await window.stop()
    latencies = [(run.updated_at - run.created_at).total_seconds() for run in runs]
    transitions = size * (steps + 1)
    return Result(
        workload="awaited",
        backend=backend,
        runs=size,
        transitions=transitions,
        elapsed_s=elapsed,
        transitions_per_s=transitions / elapsed,
        runs_per_s=size / elapsed,
        p50_ms=_ms(percentile(latencies, 50)),
        p99_ms=_ms(percentile(latencies, 99)),
        peak_rss_mb=peak_rss_mb(),
        cpu_us_per_transition=cpu.client / transitions * 1e6,
        **cpu.per_transition(transitions),
        note=f"completion seen by {size} concurrent wait_for calls",
    )


def _workers(count: int) -> Callable[[str, int], Awaitable[Result]]:
    async def workers(backend: str, size: int) -> Result:
        from .multiproc import workers  # it imports this module

        return await workers(backend, size, count=count, name=f"workers-{count}")

    workers.__doc__ = (
        f"Workload 1 with {count} worker processes on one database; this process only triggers."
    )
    return workers


workers_3 = _workers(3)


async def parallel_1(backend: str, size: int) -> Result:
    """Workload 5a: workload 1 with ``parallel_count=1`` on every step."""
    return await _fan_out(backend, size, name="parallel-1", parallel_count=1)


async def parallel_4(backend: str, size: int) -> Result:
    """Workload 5b: workload 1 with ``parallel_count=4`` on every step."""
    return await _fan_out(backend, size, name="parallel-4", parallel_count=4)


async def _one_at_a_time(backend: str, size: int, *, name: str, steps: int) -> Result:
    """Trigger one run, ``wait_for`` its terminal status, repeat; a few warm-up runs first."""
    warmup = min(10, max(1, size // 10))
    latencies: list[float] = []
    async with BACKENDS[backend]() as adapters:
        wf, status = build_chain(adapters, steps)
        last = list(status)[-1]
        async with wf:
            started = time.perf_counter()
            window = CpuWindow(adapters)
            for i in range(warmup + size):
                if i == warmup:
                    started = time.perf_counter()
                    window.start()
                t0 = time.perf_counter()
                foreign_id = f"run-{i}"
                run_id = await wf.trigger(foreign_id)
                await wf.wait_for(foreign_id, run_id, last, timeout=DEADLINE_S)
                if i >= warmup:
                    latencies.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - started
            cpu = await window.stop()
    transitions = size * (steps + 1)
    p50 = percentile(latencies, 50)
    return Result(
        workload=name,
        backend=backend,
        runs=size,
        transitions=transitions,
        elapsed_s=elapsed,
        transitions_per_s=transitions / elapsed,
        runs_per_s=size / elapsed,
        p50_ms=_ms(p50),
        p99_ms=_ms(percentile(latencies, 99)),
        per_step_ms=_ms(p50 / steps),
        peak_rss_mb=peak_rss_mb(),
        cpu_us_per_transition=cpu.client / transitions * 1e6,
        **cpu.per_transition(transitions),
        note=f"after {warmup} warm-up run{'s' if warmup > 1 else ''}",
    )


async def latency(backend: str, size: int) -> Result:
    """Workload 2: one 3-step run at a time; trigger-to-completed latency."""
    return await _one_at_a_time(backend, size, name="latency", steps=3)


def _depth(steps: int) -> Callable[[str, int], Awaitable[Result]]:
    async def depth(backend: str, size: int) -> Result:
        return await _one_at_a_time(backend, size, name=f"depth-{steps}", steps=steps)

    depth.__doc__ = f"Workload 3: one run at a time through {steps} steps; ms per step."
    return depth


async def timeouts(backend: str, size: int) -> Result:
    """Workload 4: ``size`` runs wait at S1 for timers that all expire at the same instant.

    Every run is triggered into S1, whose only way out is a timeout to S2 (terminal); every timer
    returns the same instant, far enough ahead for all of them to be stored first. Measured: the
    expiry instant to the last completion (runs/s), and per run expiry to completing write
    (p50/p99). The timeout's ``polling_frequency`` is ``POLL_S`` (0.1 s), so the poller notices
    the expiry within 0.1 s. Runs only when ``Builder.add_timeout(status, timer, on_timeout,
    *to)`` exists; otherwise the row says "not implemented yet".
    """
    if not hasattr(Builder, "add_timeout"):
        return Result(workload="timeouts", backend=backend, note="not implemented yet")
    completed = 0
    timers = 0
    all_done = asyncio.Event()
    all_set = asyncio.Event()
    latencies: list[float] = []
    lead = 0.5 + size / 2000  # seconds from the start to the common expiry instant
    started_wall = datetime.now(UTC)
    started = time.perf_counter()
    fire_at = started_wall + timedelta(seconds=lead)

    async def timer(run: Run[Payload, Any], now: datetime) -> datetime:
        nonlocal timers
        timers += 1
        if timers >= size:
            all_set.set()
        return fire_at

    async def expired(run: Run[Payload, Any], now: datetime) -> enum.IntEnum:
        run.object.n += 1
        return s2

    async def count(run: Run[Payload, Any]) -> None:
        nonlocal completed
        latencies.append((run.updated_at - fire_at).total_seconds())
        completed += 1
        if completed >= size:
            all_done.set()

    status = chain(1)
    s1, s2 = list(status)
    async with BACKENDS[backend]() as adapters:
        b: Builder[Payload, Any] = Builder(WORKFLOW, Payload, status)
        b.add_timeout(s1, timer, expired, s2, polling_frequency=POLL_S)
        b.on_complete(count)
        wf = b.build(
            adapters.streamer,
            adapters.store,
            adapters.scheduler,
            timeout_store=adapters.timeout_store,
        )
        async with wf:
            for i in range(size):
                await wf.trigger(f"run-{i}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_set.wait(), lead - (time.perf_counter() - started))
            if timers < size:
                raise RuntimeError(
                    f"timeouts: only {timers} of {size} timers were set before they expired; "
                    "raise the lead time"
                )
            window = CpuWindow(adapters)  # nearly idle until the expiry instant
            try:
                await asyncio.wait_for(all_done.wait(), lead + DEADLINE_S)
            except TimeoutError:
                raise RuntimeError(
                    f"timeouts: only {completed} of {size} runs completed in time"
                ) from None
            elapsed = time.perf_counter() - (started + lead)
            cpu = await window.stop()
    return Result(
        workload="timeouts",
        backend=backend,
        runs=size,
        transitions=size,  # the firing writes; the triggers happen before the window
        elapsed_s=elapsed,
        transitions_per_s=size / elapsed,
        runs_per_s=size / elapsed,
        p50_ms=_ms(percentile(latencies, 50)),
        p99_ms=_ms(percentile(latencies, 99)),
        peak_rss_mb=peak_rss_mb(),
        cpu_us_per_transition=cpu.client / size * 1e6,
        **cpu.per_transition(size),
        note=f"from the common expiry instant (poller interval {POLL_S:g}s)",
    )


@dataclass(frozen=True, slots=True)
class Workload:
    fn: Callable[[str, int], Awaitable[Result]]
    #: runs per repetition in a full run and in a ``--quick`` smoke run
    size: int
    quick_size: int
    #: the issue's numbering, shown in the README
    number: int
    #: backends a plain ``make bench`` runs it on (``--backend`` runs any)
    backends: tuple[str, ...] = ("memory",)


SERVER_ROWS = ("postgres", "mysql", "postgres-kafka")
WORKLOADS: dict[str, Workload] = {
    "throughput": Workload(
        throughput, 10_000, 200, 1, ("memory", "sqlite", "sqlite-normal", *SERVER_ROWS)
    ),
    "awaited": Workload(awaited, 10_000, 200, 1, ("memory", "sqlite")),
    "latency": Workload(latency, 500, 20, 2, ("memory", "sqlite", "sqlite-normal", *SERVER_ROWS)),
    "workers-3": Workload(workers_3, 10_000, 200, 1, ("sqlite", "postgres", "mysql")),
    "workers-4": Workload(_workers(4), 10_000, 200, 1, ("postgres", "postgres-kafka")),
    "depth-5": Workload(_depth(5), 100, 3, 3),
    "depth-10": Workload(_depth(10), 100, 3, 3),
    "depth-100": Workload(_depth(100), 30, 2, 3),
    "timeouts": Workload(timeouts, 10_000, 200, 4),
    "parallel-1": Workload(parallel_1, 10_000, 200, 5),
    "parallel-4": Workload(parallel_4, 10_000, 200, 5),
}


async def run_workload(name: str, backend: str, size: int | None = None) -> Result:
    """Run one workload in this process (``size`` defaults to the full-run size)."""
    if name not in WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    if backend not in BACKENDS:
        raise KeyError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    workload = WORKLOADS[name]
    return await workload.fn(backend, workload.size if size is None else size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.workloads", description="Run one benchmark workload once."
    )
    parser.add_argument("workload", choices=list(WORKLOADS))
    parser.add_argument("backend", choices=list(BACKENDS))
    parser.add_argument("size", type=int, nargs="?", default=None)
    args = parser.parse_args(argv)
    result = asyncio.run(run_workload(args.workload, args.backend, args.size))
    print(json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
