"""Workload 1 with several worker processes sharing one database (``workers-3``, ``workers-4``).

The workload's own process (the *driver*) opens a fresh database (a SQLite file, or a table
prefix on a server), starts ``count`` worker processes on it, waits until each has started its
workflow, then triggers the runs (64 at a time, as ``throughput``) and measures runs/s from the
first trigger to the last completion. The driver never starts its workflow: it only triggers.
Each worker runs the whole workflow (``async with wf``), so the role scheduler decides which
process runs which step: the row's note says how many steps each worker ran. The ``on_complete``
hook counts completions in whichever worker holds its role (the role can move during the run,
when the division takes its last step): each worker reports its count, and the driver sums them.
Client CPU is the driver's own plus every worker's (read from
``/proc/<pid>/stat``); the server's, when there is one, as in the other rows.

A worker is ``python -m bench.multiproc <backend> <location> <size> <steps>``: it prints
``ready`` once started, ``completed N`` whenever its hook's count changes, and a JSON
summary after its standard input is closed (its signal to stop).

``BENCH_PARALLEL_COUNT`` (default 1, workload 1's) sets every step's ``parallel_count`` in the
workers, to see how the shards spread over the processes (the note says when it is not 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .peers.proc_cpu import cpu_seconds
from .workloads import (
    BACKENDS,
    DEADLINE_S,
    TRIGGER_CONCURRENCY,
    WORKFLOW,
    CpuWindow,
    Payload,
    Result,
    Run,
    StepFn,
    _ms,
    build_chain,
    peak_rss_mb,
    percentile,
)

__all__ = ["workers"]

from statestream import ProcessState

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a worker may take to import, open the database and start.
START_S = 120.0
#: The division of the roles is settled once the workers' counts of held roles are even (at
#: most one apart) and have not changed for EVEN_S; or, for a scheduler that does not divide,
#: once they have not changed for SETTLE_S (longer than the two membership beats,
#: ``member_ttl / 3`` = 3.3 s each by default, that a division waits for); SETTLE_MAX_S at most.
#: The environment variable ``BENCH_SETTLE_S`` overrides SETTLE_S (the smoke tests set 0).
EVEN_S = 1.0
SETTLE_S = 10.0
SETTLE_MAX_S = 45.0
#: States of a process that holds its role.
HOLDING = (ProcessState.RUNNING, ProcessState.LAGGING)


async def workers(backend: str, size: int, *, count: int, name: str, steps: int = 3) -> Result:
    """Drive ``size`` runs through ``count`` worker processes; see the module docstring."""
    if backend == "memory":
        return Result(
            workload=name, backend=backend, note="not applicable: memory lives in one process"
        )
    async with BACKENDS[backend]() as adapters:
        # The schema exists before any worker opens the database.
        await adapters.store.list(WORKFLOW, limit=1)
        wf, _ = build_chain(adapters, steps)  # never started: it only triggers
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.multiproc",
                backend,
                str(adapters.location),
                str(size),
                str(steps),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
                limit=1 << 26,  # the summary is one line with every latency in it
            )
            for _ in range(count)
        ]
        readers = [_Reader(p) for p in procs]
        try:
            await _first(
                [asyncio.gather(*(r.ready.wait() for r in readers))],
                readers,
                START_S,
                "workers did not start",
            )
            await _first([_settled(readers)], readers, SETTLE_MAX_S + 5, "roles did not settle")
            held = [r.held for r in readers]
            started = time.perf_counter()
            window = CpuWindow(adapters)
            worker_cpu = [cpu_seconds(p.pid) or 0.0 for p in procs]
            for start in range(0, size, TRIGGER_CONCURRENCY):
                await asyncio.gather(
                    *(
                        wf.trigger(f"run-{i}")
                        for i in range(start, min(size, start + TRIGGER_CONCURRENCY))
                    )
                )
            await _first(
                [_all_done(readers, size)], readers, DEADLINE_S, f"{name}: runs not complete"
            )
            elapsed = time.perf_counter() - started
            worker_cpu = [
                (cpu_seconds(p.pid) or c) - c for p, c in zip(procs, worker_cpu, strict=True)
            ]
            cpu = await window.stop(tuple(p.pid for p in procs))
            driver_cpu = cpu.client
        finally:
            summaries = await _stop(procs, readers)
    transitions = size * (steps + 1)
    latencies = [x for s in summaries for x in s.get("latencies", [])]
    handled = [s.get("steps", 0) for s in summaries]
    hooks = [i + 1 for i, s in enumerate(summaries) if s.get("completed")]
    return Result(
        workload=name,
        backend=backend,
        runs=size,
        transitions=transitions,
        elapsed_s=elapsed,
        transitions_per_s=transitions / elapsed,
        runs_per_s=size / elapsed,
        p50_ms=_ms(percentile(latencies, 50)) if latencies else None,
        p99_ms=_ms(percentile(latencies, 99)) if latencies else None,
        peak_rss_mb=peak_rss_mb(),  # the driver's
        cpu_us_per_transition=(driver_cpu + sum(worker_cpu)) / transitions * 1e6,
        **cpu.per_transition(transitions),
        note=(
            f"{count} worker processes, "
            + (f"parallel_count {_parallel_count()}, " if _parallel_count() != 1 else "")
            + f"roles held at the start {'/'.join(map(str, held))}, "
            f"steps run per worker {'/'.join(map(str, handled))}, "
            f"hook in worker {'/'.join(map(str, hooks)) or '-'}; client CPU µs/transition "
            f"driver {driver_cpu / transitions * 1e6:.0f} + workers "
            f"{'/'.join(f'{c / transitions * 1e6:.0f}' for c in worker_cpu)}"
        ),
    )


class _Reader:
    """Reads one worker's standard output: its ``ready`` line, its ``completed N`` lines, then
    its summary."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ready = asyncio.Event()
        #: Completions its hook counted, as it last reported (the hook's role can move).
        self.completed = 0
        self.moved = asyncio.Event()
        self.summary: dict[str, Any] = {}
        #: Roles the worker holds, as it last reported, and when that count last changed.
        self.held = 0
        self.changed = time.monotonic()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line == "ready":
                self.ready.set()
            elif line.startswith("completed "):
                self.completed = int(line.split()[1])
                self.moved.set()
            elif line.startswith("held "):
                self.held = int(line.split()[1])
                self.changed = time.monotonic()
            elif line.startswith("{"):
                self.summary = json.loads(line)


async def _all_done(readers: list[_Reader], size: int) -> None:
    """Until the workers' hooks counted ``size`` completions between them: the hook's role
    can move from one worker to another during the run (a late step of the division)."""
    while sum(r.completed for r in readers) < size:
        moved = [asyncio.ensure_future(r.moved.wait()) for r in readers]
        try:
            await asyncio.wait(moved, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in moved:
                wait.cancel()
        for r in readers:
            r.moved.clear()


async def _settled(readers: list[_Reader]) -> None:
    """Until the roles are divided evenly, or stopped moving (see SETTLE_S)."""
    settle = float(os.environ.get("BENCH_SETTLE_S", SETTLE_S))
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_MAX_S:
        still = time.monotonic() - max(r.changed for r in readers)
        counts = [r.held for r in readers]
        if still >= settle or (still >= min(EVEN_S, settle) and max(counts) - min(counts) <= 1):
            return
        await asyncio.sleep(0.1)


async def _first(waits: list[Any], readers: list[_Reader], timeout: float, what: str) -> None:
    """Wait until one of ``waits`` finishes; fail when a worker exits first or time runs out."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    exits = [r.task for r in readers]
    try:
        finished, _ = await asyncio.wait(
            [*tasks, *exits], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for t in tasks:
            t.cancel()
    if not finished:
        raise RuntimeError(f"{what} in {timeout:.0f}s")
    if not any(t in finished for t in tasks):
        codes = [r.proc.returncode for r in readers]
        raise RuntimeError(f"{what}: a worker exited early (exit codes {codes})")


async def _stop(procs: list[asyncio.subprocess.Process], readers: list[_Reader]) -> list[Any]:
    """Close every worker's standard input, wait for its summary, kill it (by its PID, which
    this process started) if it does not exit in time."""
    for p in procs:
        if p.stdin is not None:
            p.stdin.close()
    for p, r in zip(procs, readers, strict=True):
        try:
            await asyncio.wait_for(p.wait(), 60)
        except TimeoutError:
            p.kill()
            await p.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(r.task, 5)
    return [r.summary for r in readers]


# ------------------------------------------------------------------------------------ a worker


async def _worker(backend: str, location: str, size: int, steps: int) -> None:
    handled = 0
    completed = 0
    latencies: list[float] = []

    def advance(to: enum.IntEnum) -> StepFn:
        async def step(run: Run[Payload, Any]) -> enum.IntEnum:
            nonlocal handled
            handled += 1
            run.object.n += 1
            return to

        return step

    async def count(run: Run[Payload, Any]) -> None:
        nonlocal completed
        latencies.append((run.updated_at - run.created_at).total_seconds())
        completed += 1

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with BACKENDS[backend](location) as adapters:
        wf, _ = build_chain(
            adapters, steps, parallel_count=_parallel_count(), on_complete=count, advance=advance
        )
        async with wf:
            print("ready", flush=True)
            reporting = asyncio.ensure_future(_report_held(wf, lambda: completed))
            await stdin.read()  # until the driver closes it
            reporting.cancel()
    print(
        json.dumps({"steps": handled, "completed": completed, "latencies": latencies}), flush=True
    )


def _parallel_count() -> int:
    return int(os.environ.get("BENCH_PARALLEL_COUNT", "1"))


async def _report_held(wf: Any, completed: Callable[[], int]) -> None:
    """Print ``held N`` whenever the number of roles this worker holds changes (checked every
    second: ``wf.states()`` rebuilds the process specs, about 3 % of a worker's CPU at 20 Hz),
    and ``completed N`` whenever its hook's count does (every 50 ms)."""
    last = None
    last_completed = 0
    for turn in itertools.count():
        if turn % 20 == 0:
            held = sum(1 for state in wf.states().values() if state in HOLDING)
            if held != last:
                print(f"held {held}", flush=True)
                last = held
        if completed() != last_completed:
            last_completed = completed()
            print(f"completed {last_completed}", flush=True)
        await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    backend, location, size, steps = argv or sys.argv[1:]
    asyncio.run(_worker(backend, location, int(size), int(steps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
