"""DBOS Transact on its SQLite system database: statestream's workloads 1 and 2, side by side.

A standalone script: it does not import statestream (or the ``bench`` package), so it runs under
any interpreter with ``pip install dbos``, kept out of the project's venv::

    python -m venv /tmp/dbosvenv && /tmp/dbosvenv/bin/pip install 'dbos==3.4.0'
    /tmp/dbosvenv/bin/python bench/peers/dbos_sqlite.py                 # both workloads, 3 reps
    /tmp/dbosvenv/bin/python bench/peers/dbos_sqlite.py --only latency --reps 5
    /tmp/dbosvenv/bin/python bench/peers/dbos_sqlite.py --journal wal   # see below

It prints one JSON line per workload, with the field names of statestream's rows
(``bench/results/latest.json``): the medians over the repetitions, each repetition in a fresh
process on a fresh database file.

The workflow is a chain of three trivial async ``@DBOS.step`` calls, each returning the next status
value (1 -> 2 -> 3 -> 4), so a run makes 4 transitions as statestream counts them (the start plus
one per step). DBOS commits 5 write transactions per run: the start (status and input rows),
one checkpoint row per step, and the completion (status and output).

- ``throughput`` (workload 1): start 10,000 workflows with ``DBOS.start_workflow_async``, up to
  64 starts in flight at once (statestream's ``TRIGGER_CONCURRENCY``), each handle awaited by
  its own task from the moment it is returned; runs/s from the first start to the last result.
  p50/p99 are each workflow's time from its ``start_workflow_async`` call to its ``get_result()``
  returning, under the full load. (The status rows' ``created_at``/``updated_at`` would be the
  analogue of statestream's figure, but on SQLite under Python < 3.12 DBOS stamps them to the
  second.)
- ``latency`` (workload 2): one workflow at a time, ``start_workflow_async`` then ``get_result``,
  500 runs after 10 warm-ups; p50/p99 of start-to-result.

Durability: DBOS 3.4.0 sets only ``busy_timeout=30000``, ``foreign_keys=ON`` and IMMEDIATE
transactions on its SQLite connections; it sets neither ``journal_mode`` nor ``synchronous``, so
they are the SQLite library's compile-time defaults, with the usual builds (3.40.1 measured) a
rollback journal (``journal_mode=DELETE``) with ``synchronous=FULL``: a committed write
survives a power cut. ``--journal wal`` switches the
database file to WAL before DBOS opens it (the journal mode is stored in the file, so DBOS's
connections inherit it; ``synchronous`` stays FULL): the same settings as statestream's
``sqlite`` backend. The settings in effect are read back and reported in every row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: Starts in flight at once in workload 1, as statestream's harness (bench/workloads.py).
TRIGGER_CONCURRENCY = 64
#: Steps per workflow; a run is STEPS + 1 transitions (the start and one per step).
STEPS = 3
#: One-at-a-time runs dropped before measuring (workload 2).
WARMUP = 10
#: A workload that has not finished after this many seconds fails instead of hanging.
DEADLINE_S = 900.0

WORKLOADS = {"throughput": 10_000, "latency": 500}
QUICK_SIZES = {"throughput": 200, "latency": 20}
#: Figures that are medians over the repetitions (the same as statestream's harness).
METRICS = (
    "elapsed_s",
    "transitions_per_s",
    "runs_per_s",
    "p50_ms",
    "p99_ms",
    "per_step_ms",
    "peak_rss_mb",
    "cpu_us_per_transition",
)


def backend_name(journal: str) -> str:
    return "dbos-sqlite" if journal == "delete" else f"dbos-sqlite-{journal}"


def dbos_version() -> str:
    try:
        return version("dbos")
    except PackageNotFoundError:
        return "not installed"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), interpolated as in statestream's harness."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def sqlite_settings(path: Path) -> dict[str, str]:
    """The journal mode stored in the file and the ``synchronous`` level a connection gets when
    nobody sets it (DBOS doesn't), read with a connection of our own."""
    conn = sqlite3.connect(path)
    try:
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        conn.close()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return {
        "journal_mode": str(journal).upper(),
        "synchronous": names.get(level, str(level)),
        "sqlite": sqlite3.sqlite_version,
    }


# ------------------------------------------------------------------------------ one repetition


class Window:
    """Marks the measured window; a subclass measures more inside it (the server's CPU)."""

    def start(self) -> None:
        pass

    def stop(self, row: dict[str, Any]) -> None:
        pass


async def _run(
    workload: str, size: int, db: Path | str, window: Window | None = None
) -> dict[str, Any]:
    """One repetition in this process: launch DBOS on ``db`` (a SQLite file, or a database URL),
    drive the workload, destroy DBOS."""
    window = window or Window()
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    from dbos import DBOS

    @DBOS.step()
    async def advance(status: int) -> int:
        return status + 1

    @DBOS.workflow()
    async def chain(foreign_id: str) -> int:
        status = 1
        for _ in range(STEPS):
            status = await advance(status)
        return status

    DBOS(
        config={
            "name": "statestream-bench-peer",
            "system_database_url": url,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    try:
        if workload == "throughput":
            row = await _throughput(DBOS, chain, size, window)
        else:
            row = await _latency(DBOS, chain, size, window)
    finally:
        DBOS.destroy(destroy_registry=True)
    return row


async def _throughput(dbos: Any, chain: Any, size: int, window: Window) -> dict[str, Any]:
    latencies: list[float] = []

    async def finish(handle: Any, t0: float) -> int:
        result: int = await handle.get_result()
        latencies.append(time.perf_counter() - t0)
        return result

    async def start(i: int) -> asyncio.Task[int]:
        t0 = time.perf_counter()
        handle = await dbos.start_workflow_async(chain, f"run-{i}")
        return asyncio.create_task(finish(handle, t0))

    started = time.perf_counter()
    cpu = time.process_time()
    window.start()
    waiters: list[asyncio.Task[int]] = []
    for first in range(0, size, TRIGGER_CONCURRENCY):
        waiters.extend(
            await asyncio.gather(
                *(start(i) for i in range(first, min(size, first + TRIGGER_CONCURRENCY)))
            )
        )
    results = await asyncio.wait_for(asyncio.gather(*waiters), DEADLINE_S)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    stopped: dict[str, Any] = {}
    window.stop(stopped)
    if len(results) != size or any(r != STEPS + 1 for r in results):
        raise RuntimeError("a workflow returned the wrong status")
    transitions = size * (STEPS + 1)
    return {
        "workload": "throughput",
        "runs": size,
        "transitions": transitions,
        "elapsed_s": elapsed,
        "transitions_per_s": transitions / elapsed,
        "runs_per_s": size / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000.0,
        "p99_ms": percentile(latencies, 99) * 1000.0,
        "per_step_ms": None,
        "peak_rss_mb": peak_rss_mb(),
        "cpu_us_per_transition": cpu / transitions * 1e6,
        **_per_transition(stopped, transitions),
        "note": "latency under load (all runs started at once)",
    }


def _per_transition(measured: dict[str, Any], transitions: int) -> dict[str, Any]:
    """A window's extra CPU seconds (``server_cpu_s``, ``server_own_cpu_s``) as µs per
    transition."""
    out = {}
    for key in ("server_cpu", "server_own_cpu"):
        if f"{key}_s" in measured:
            seconds = measured[f"{key}_s"]
            per = None if seconds is None else seconds / transitions * 1e6
            out[f"{key}_us_per_transition"] = per
    return out


async def _latency(dbos: Any, chain: Any, size: int, window: Window) -> dict[str, Any]:
    warmup = min(WARMUP, max(1, size // 10))
    latencies: list[float] = []
    started = time.perf_counter()
    cpu = time.process_time()
    for i in range(warmup + size):
        if i == warmup:
            started = time.perf_counter()
            cpu = time.process_time()
            window.start()
        t0 = time.perf_counter()
        handle = await dbos.start_workflow_async(chain, f"run-{i}")
        result = await asyncio.wait_for(handle.get_result(), DEADLINE_S)
        if i >= warmup:
            latencies.append(time.perf_counter() - t0)
        if result != STEPS + 1:
            raise RuntimeError("a workflow returned the wrong status")
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    stopped: dict[str, Any] = {}
    window.stop(stopped)
    transitions = size * (STEPS + 1)
    p50 = percentile(latencies, 50)
    return {
        "workload": "latency",
        "runs": size,
        "transitions": transitions,
        "elapsed_s": elapsed,
        "transitions_per_s": transitions / elapsed,
        "runs_per_s": size / elapsed,
        "p50_ms": p50 * 1000.0,
        "p99_ms": percentile(latencies, 99) * 1000.0,
        "per_step_ms": p50 / STEPS * 1000.0,
        "peak_rss_mb": peak_rss_mb(),
        "cpu_us_per_transition": cpu / transitions * 1e6,
        **_per_transition(stopped, transitions),
        "note": f"after {warmup} warm-up runs",
    }


def run_one(workload: str, size: int, journal: str) -> dict[str, Any]:
    """One repetition on a fresh database file in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="dbos-bench-") as tmp:
        db = Path(tmp) / "dbos.sqlite"
        if journal != "delete":
            conn = sqlite3.connect(db)
            conn.execute(f"PRAGMA journal_mode = {journal.upper()}")
            conn.close()
        row = asyncio.run(_run(workload, size, db))
        row.update(sqlite_settings(db))
    return {"backend": backend_name(journal), **row}


# ------------------------------------------------------------------------------ repetitions


def run_rep(workload: str, size: int, journal: str, timeout: float) -> dict[str, Any]:
    """One repetition in a fresh interpreter (DBOS is a process-wide singleton)."""
    cmd = [sys.executable, __file__, "--one", workload, "--size", str(size), "--journal", journal]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    row: dict[str, Any] = json.loads(lines[-1])
    # DBOS logs a warning and retries when SQLite's busy timeout (30 s) runs out.
    row["db_retries"] = proc.stderr.count("database is locked")
    return row


def aggregate(workload: str, journal: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the successful repetitions, their spread, and where they were measured."""
    ok = [s for s in samples if "error" not in s]
    errors = [s["error"] for s in samples if "error" in s]
    row: dict[str, Any] = {"workload": workload, "backend": backend_name(journal), "reps": len(ok)}
    row["runs"] = ok[0]["runs"] if ok else 0
    row["transitions"] = ok[0]["transitions"] if ok else 0
    for key in METRICS:
        values = [s[key] for s in ok if s.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    rates = [s["runs_per_s"] for s in ok]
    row["runs_per_s_min"] = min(rates) if rates else None
    row["runs_per_s_max"] = max(rates) if rates else None
    notes = [ok[0]["note"]] if ok else []
    retries = sum(s.get("db_retries", 0) for s in ok)
    if retries:
        notes.append(f"{retries} 'database is locked' retries")
    notes.extend(f"FAILED: {e}" for e in dict.fromkeys(errors))
    row["note"] = "; ".join(notes)
    for key in ("journal_mode", "synchronous", "sqlite"):
        row[key] = ok[0].get(key) if ok else None
    row["python"] = platform.python_version()
    row["dbos"] = dbos_version()
    row["machine"] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }
    row["timestamp"] = datetime.now(UTC).isoformat(timespec="seconds")
    return row


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="DBOS on SQLite: statestream's workloads 1 and 2 (see bench/peers/README.md)"
    )
    parser.add_argument(
        "--only", action="append", choices=list(WORKLOADS), help="run only this workload"
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions per workload (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 repetition")
    parser.add_argument(
        "--journal",
        choices=("delete", "wal"),
        default="delete",
        help="the database file's journal mode: delete (DBOS's default) or wal",
    )
    parser.add_argument("--output", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per repetition")
    parser.add_argument("--one", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:  # a single repetition, in this process: the row of one sample
        row = run_one(args.one, args.size or WORKLOADS[args.one], args.journal)
        print(json.dumps(row), flush=True)
        return 0
    if args.reps < 1:
        parser.error("--reps must be at least 1")

    names = [n for n in WORKLOADS if not args.only or n in args.only]
    reps = 1 if args.quick else args.reps
    sizes = QUICK_SIZES if args.quick else WORKLOADS
    samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    print(
        f"dbos {dbos_version()}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"journal {args.journal}; {reps} rep(s) each",
        file=sys.stderr,
    )
    for rep in range(reps):  # repetition-major, as statestream's harness
        for name in names:
            t0 = time.perf_counter()
            sample = run_rep(name, sizes[name], args.journal, args.timeout)
            samples[name].append(sample)
            status = sample.get("error") or f"{sample['runs_per_s']:,.0f} runs/s"
            print(
                f"[{rep + 1}/{reps}] {name:<11} {backend_name(args.journal)} "
                f"{time.perf_counter() - t0:6.1f}s  {status}",
                file=sys.stderr,
            )
    rows = [aggregate(n, args.journal, samples[n]) for n in names]
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 1 if any("FAILED" in r["note"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
