"""``statestream top TARGET``: a live view of a workflow's processes, lag and rates."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace as Args

from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .. import ProcessInfo, ProcessState
from .._core.protocols import RunCounter
from .._core.records import Order
from .._core.runstate import RunState
from .commands import _install_signals
from .output import console, echo, render, state_colour, wants_colour
from .target import EXIT_OK, AnyWorkflow, load_workflows, pick_workflow

__all__ = ["Sample", "cmd_top", "frame", "sample"]

_PROCESS_COLOURS = {
    ProcessState.RUNNING: "green",
    ProcessState.LAGGING: "yellow",
    ProcessState.ERROR: "red",
    ProcessState.IDLE: "dim",
    ProcessState.SHUTDOWN: "dim",
    ProcessState.UNKNOWN: "dim",
}


@dataclass(frozen=True, slots=True)
class Sample:
    """What one frame shows: the processes of this instance and the runs in the store."""

    at: float
    processes: dict[str, ProcessInfo]
    runs: Counter[RunState]
    transitions: int  # the sum of the runs' versions: one more per transition
    capped: bool  # the transitions (and, unless exact, the runs) are of the newest max_runs
    exact: bool = False  # the runs were counted by the store (RunCounter), all of them


async def sample(wf: AnyWorkflow, max_runs: int) -> Sample:
    # The newest runs: where the transitions happen
    records = await wf.store.list(wf.name, limit=max_runs, order=Order.DESC)
    runs = Counter(r.run_state for r in records)
    store = wf.store
    exact = isinstance(store, RunCounter)
    if isinstance(store, RunCounter):
        runs = Counter((await store.count_runs(wf.name)).run_states)
    return Sample(
        at=time.monotonic(),
        processes=wf.process_info(),
        runs=runs,
        transitions=sum(r.version for r in records),
        capped=len(records) >= max_runs,
        exact=exact,
    )


def _rate(now: Sample, before: Sample | None) -> str:
    if before is None or now.at <= before.at:
        return "-"
    per_second = max(0, now.transitions - before.transitions) / (now.at - before.at)
    return f"{per_second:.1f}/s"


def _finished_rate(now: Sample, before: Sample | None) -> str:
    if before is None or now.at <= before.at:
        return "-"

    def done(s: Sample) -> int:
        return sum(n for state, n in s.runs.items() if state.finished)

    return f"{max(0, done(now) - done(before)) / (now.at - before.at):.1f}/s"


def frame(wf: AnyWorkflow, now: Sample, before: Sample | None) -> RenderableType:
    """One screen of ``top``: a header, the runs and rates, the processes' table."""
    total = sum(now.runs.values())
    header = Text.assemble(
        ("statestream top", "bold"),
        f"  workflow {wf.name!r}  pid {os.getpid()}  ",
        (datetime.now().isoformat(timespec="seconds"), "dim"),
    )
    runs = Text.assemble(
        f"runs: {total}{'+' if now.capped and not now.exact else ''}",
        *(
            part
            for state in RunState
            if state.valid and now.runs.get(state)
            for part in ("  ", (f"{state.label} {now.runs[state]}", state_colour(state)))
        ),
    )
    rates = Text(
        f"transitions: {_rate(now, before)}  finished: {_finished_rate(now, before)}"
        + ("  (of the newest runs only: --max-runs)" if now.capped else "")
    )
    grid = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), header_style="bold")
    for name in ("PROCESS", "ROLE"):
        grid.add_column(name, overflow="fold")
    for name in ("STATE", "LAG", "ERRORS", "PARKED"):
        grid.add_column(name, no_wrap=True, min_width=max(len(name), 7 if name == "STATE" else 0))
    grid.add_column("LAST ERROR", no_wrap=True, overflow="ellipsis")
    for name, info in now.processes.items():
        grid.add_row(
            name,
            info.role,
            Text(info.state.name, style=_PROCESS_COLOURS.get(info.state, "")),
            f"{info.lag:.1f}s" if info.lag else "0s",
            str(info.errors),
            Text(str(info.parked), style="yellow" if info.parked else ""),
            Text(_first_line(info.last_error), style="red"),
        )
    return Group(header, runs, rates, Text(""), grid)


def _first_line(text: str, width: int = 50) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= width else first[: width - 3] + "..."


async def _started(wf: AnyWorkflow, wait: float) -> None:
    """Wait (at most ``wait`` seconds) until every process reports a state."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if all(s is not ProcessState.UNKNOWN for s in wf.states().values()):
            return
        await asyncio.sleep(0.05)


async def cmd_top(args: Args) -> int:
    wf = pick_workflow(await load_workflows(args.target), args.workflow, args.target)
    stop = asyncio.Event()
    undo = _install_signals(lambda _signum: stop.set())
    await wf.start()
    try:
        await _started(wf, 5.0)
        before = await sample(wf, args.max_runs)
        if args.once:
            await _sleep(stop, min(args.interval, 1.0))
            echo(render(frame(wf, await sample(wf, args.max_runs), before)))
            return EXIT_OK
        if not wants_colour(sys.stdout):  # a pipe: one plain frame per interval
            while not stop.is_set():
                await _sleep(stop, args.interval)
                now = await sample(wf, args.max_runs)
                echo(render(frame(wf, now, before)) + "\n")
                before = now
            return EXIT_OK
        with Live(frame(wf, before, None), console=console(), auto_refresh=False) as live:
            while not stop.is_set():
                await _sleep(stop, args.interval)
                now = await sample(wf, args.max_runs)
                live.update(frame(wf, now, before), refresh=True)
                before = now
        return EXIT_OK
    finally:
        undo()
        await wf.stop(5.0)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
