"""The web UI's run list against a SQLite store holding 1,000,000 runs (a benchmark, not a test).

    .venv/bin/python -m bench.web_list                  # 1,000,000 runs in a temporary file
    .venv/bin/python -m bench.web_list --runs 100000 --db /tmp/runs.db --keep

The file is filled in bulk with ``sqlite3`` in the adapter's own schema (``SqliteRecordStore``
creates it first): one workflow, runs in creation order, 90 % Completed, 8 % Running, 2 % Paused,
over its four statuses. Triggering a million runs through the engine would take many minutes and
measures the engine, not the list. Every request then goes through the ASGI app
(``statestream.web.create_app``) with httpx, in process: query parsing, the store's keyset
``list``, rendering and the security middleware. Each case runs ``--requests`` times after a
warm-up; the medians and 95th percentiles are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from statestream.adapters.sqlite import SqliteDatabase, SqliteRecordStore  # noqa: E402
from statestream.web import create_app  # noqa: E402
from web_support import TOKEN, Order, make_workflow  # noqa: E402

BATCH = 50_000


def fill(path: str, runs: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    start = int(time.time() * 1_000_000) - runs * 1000
    obj = b'{"id":"o","amount":100,"note":"","items":["book"]}'
    for first in range(0, runs, BATCH):
        rows = []
        for i in range(first, min(runs, first + BATCH)):
            kind = i % 50
            state, status = (5, 3) if kind < 45 else ((2, 2) if kind < 49 else (3, 1))
            if i % 997 == 0:
                status = 4  # a rare status
            foreign = f"order-{i}"
            active = None if state == 5 else f"orders\x00{foreign}"
            at = start + i * 1000
            rows.append(
                (
                    "orders",
                    foreign,
                    f"{i:032x}",
                    state,
                    status,
                    obj,
                    at,
                    at,
                    3,
                    "",
                    "",
                    0,
                    active,
                )
            )
        conn.executemany(
            "INSERT INTO statestream_records (workflow_name, foreign_id, run_id, run_state, "
            "status, object, created_at, updated_at, version, run_state_reason, "
            "status_description, auto_resumes, active_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()


async def measure(client: httpx.AsyncClient, url: str, n: int) -> tuple[float, float, int, bool]:
    for _ in range(3):
        r = await client.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text[:200])
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200
    rows = r.text.count("<tr><td") if "api" not in url else len(r.json()["runs"])
    partial = "Partial page" in r.text if "api" not in url else r.json().get("partial", False)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], rows, partial


def _prepare(path: str, keep: bool) -> bool:
    """Whether the file must be filled (removing an old one unless ``keep``)."""
    if keep and os.path.exists(path):
        return False
    if os.path.exists(path):
        os.remove(path)
    return True


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--db", help="SQLite file (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep --db filled between runs")
    args = parser.parse_args(argv)
    tmp = None
    path = args.db
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = os.path.join(tmp.name, "runs.db")
    fresh = _prepare(path, args.keep)
    db = SqliteDatabase(path)
    wf = make_workflow(SqliteRecordStore(db))
    if fresh:
        await wf.trigger("schema", initial=Order())  # creates the file's schema
        t0 = time.perf_counter()
        fill(path, args.runs)
        print(f"filled {args.runs:,} runs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    app = create_app(wf, token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=app)
    deep = f"{args.runs // 2:032x}"
    deep_in = f"{args.runs // 2 + 20_000:032x}"  # 20 s after the middle run
    # the runs were created 1 ms apart, ending about when the file was filled
    middle = await wf.store.lookup(deep)

    def at(seconds: int) -> str:
        return (middle.created_at + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")

    window = [at(0), at(60)]
    cases = [
        ("first page (HTML, 50 newest)", "/"),
        ("first page (JSON)", "/api/runs"),
        ("deep page: after= the middle run", f"/?after={deep}"),
        ("page before= the middle run", f"/?before={deep}"),
        ("filter: foreign ID", f"/?foreign_id=order-{args.runs // 3}"),
        ("filter: run state Paused (2 %)", "/?state=paused"),
        ("filter: status SHIPPED, Completed", "/?status=SHIPPED&state=completed"),
        ("filter: created in a 1-minute window", f"/?from={window[0]}&to={window[1]}"),
        ("filter: created in a 5-minute window (30 %)", f"/?from={window[0]}&to={at(300)}"),
        ("filter: created before the middle run", f"/?to={window[0]}"),
        ("filter: created after the middle run", f"/?from={window[0]}"),
        (
            "filter: 1-minute window, after= inside it",
            f"/?from={window[0]}&to={window[1]}&after={deep_in}",
        ),
        ("filter: rare status (0.1 %), 50 per page", "/?status=CANCELLED_UNPAID"),
        (
            "filter: rare status, the page after= the middle run",
            f"/?status=CANCELLED_UNPAID&after={deep}",
        ),
        ("filter: status CREATED (2 %)", "/?status=CREATED"),
        (
            "filter: status CREATED, Completed (no run), JSON",
            "/api/runs?status=CREATED&state=completed",
        ),
        (
            "filter: status CREATED, Completed (no run), after= the middle run",
            f"/?status=CREATED&state=completed&after={deep}",
        ),
        (
            "filter: status CREATED, Completed (no run), before= the middle run",
            f"/?status=CREATED&state=completed&before={deep}",
        ),
        # No index has the status: a page examines at most 50,000 runs (a partial page)
        ("filter: status CREATED, Completed (no run)", "/?status=CREATED&state=completed"),
        ("filter: run state Cancelled (no run)", "/?state=cancelled"),
    ]
    print(f"| request ({args.runs:,} runs, SQLite) | rows | partial | median ms | p95 ms |")
    print("|---|---:|---|---:|---:|")
    async with httpx.AsyncClient(transport=transport, base_url="http://b", headers=headers) as c:
        for name, url in cases:
            median, p95, rows, partial = await measure(c, url, args.requests)
            mark = "yes" if partial else ""
            print(f"| {name} | {rows} | {mark} | {median:.1f} | {p95:.1f} |", flush=True)
        # The graph's counts (capped at 10,000 per status, cached 5 s): one uncached call.
        t0 = time.perf_counter()
        r = await c.get("/api/graph")
        assert r.status_code == 200
        took = (time.perf_counter() - t0) * 1000
        print(f"| graph counts, uncached (`/api/graph`) | - | {took:.0f} | - |", flush=True)
    # RecordStore.count_runs alone (what the graph and `statestream top` call), 5 times
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        counts = await wf.store.count_runs(wf.name)
        times.append((time.perf_counter() - t0) * 1000)
    print(
        f"| `count_runs` ({counts.total:,} runs) | - | {statistics.median(times):.0f} "
        f"| {max(times):.0f} (max) |",
        flush=True,
    )
    await db.close()
    if tmp is not None:
        tmp.cleanup()


def run(argv: Any = None) -> None:
    asyncio.run(main(argv))


if __name__ == "__main__":
    run()
