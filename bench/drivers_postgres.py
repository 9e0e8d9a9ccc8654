"""asyncpg against psycopg 3 on the PostgreSQL adapters' real statements.

    .venv/bin/pip install 'psycopg[binary]>=3.1'   # not a dependency: only this comparison
    .venv/bin/python bench/drivers_postgres.py [--rounds 5] [--n 2000]

Each round runs, for each driver in turn (alternating which goes first), sequentially on one
connection: the single-write statement (a compare-and-set update with its event insert and
notification, as ``PostgresRecordStore.update`` sends alone), the same statement for a batch
of 64 writes, a lookup by run ID, and a receiver's fetch of 100 events. Both drivers use
prepared statements and binary parameters (psycopg: ``prepare=True``). Prints the median
operations per second of each, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from statestream._core.records import Message, OutboxEvent, Record
from statestream._core.runstate import RunState
from statestream.adapters.postgres import PostgresDatabase
from statestream.adapters.postgres._store import _WRITE_EVENTS, _arrays, _Write

URL = os.environ.get("STATESTREAM_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _write(run_id: str, version: int) -> _Write:
    now = datetime.now(UTC)
    record = Record("bench", run_id, run_id, RunState.RUNNING, 2, b"{}", now, now, version)
    event = OutboxEvent(uuid.uuid4().hex, "bench", "bench-2", Message(run_id, 2, {}, now))
    return _Write(False, record, event, True)


async def _time(n: int, op: Callable[[int], Awaitable[Any]]) -> tuple[float, float]:
    """Operations per second (wall clock) and client CPU microseconds per operation."""
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        await op(i)
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    import asyncpg
    import psycopg

    prefix = f"bench_{uuid.uuid4().hex[:8]}_"
    db = PostgresDatabase(URL, prefix=prefix)
    await db.open()
    try:
        runs = [f"run-{i}" for i in range(64)]
        await db.execute(
            db.sql(
                "INSERT INTO {prefix}records (run_id, workflow_name, foreign_id, run_state, "
                "status, object, created_at, updated_at, version, active) SELECT r, 'bench', r, "
                "2, 2, '\\x7b7d', 0, 0, 1, true FROM unnest($1::text[]) r"
            ),
            runs,
        )
        await db.execute(
            db.sql(
                "INSERT INTO {prefix}events (topic, key, type, headers, data, created_at, "
                "key_hash) SELECT 'fetch', 'k' || g, 1, '{}', '', 0, g FROM generate_series(1, "
                "1000) g"
            )
        )
        write_sql = db.sql(_WRITE_EVENTS)
        lookup_sql = db.sql(
            "SELECT workflow_name, foreign_id, run_id, run_state, status, object, created_at, "
            "updated_at, version, run_state_reason, status_description, auto_resumes "
            "FROM {prefix}records WHERE run_id = $1"
        )
        fetch_sql = db.sql(
            "SELECT id, key, type, headers, data, created_at, tx, "
            "pg_snapshot_xmin(pg_current_snapshot())::text::bigint FROM {prefix}events "
            "WHERE topic = $1 AND (tx, id) > ($2::bigint, $3::bigint) ORDER BY tx, id LIMIT $4"
        )
        pg_write = _pyformat(write_sql)
        pg_lookup = _pyformat(lookup_sql)
        pg_fetch = _pyformat(fetch_sql)
        version = {"v": 1}

        def next_single() -> list[Any]:
            version["v"] += 1
            # A compare-and-set that fails (the version moves on only in the first driver to
            # run): the same statement, plan and round trip whether it wins or not.
            return [*_arrays([(0, _write("run-0", version["v"]))]), db.channel]

        batch = [(i, _write(r, 2)) for i, r in enumerate(runs)]
        batch_args = [*_arrays(batch), db.channel]

        apg = await asyncpg.connect(URL)
        ppg = await psycopg.AsyncConnection.connect(_libpq(URL), autocommit=True)
        results: dict[str, dict[str, list[tuple[float, float]]]] = {"asyncpg": {}, "psycopg": {}}
        try:
            drivers: dict[str, dict[str, Callable[[int], Awaitable[Any]]]] = {
                "asyncpg": {
                    "single write": lambda i: apg.fetch(write_sql, *next_single()),
                    "batch of 64": lambda i: apg.fetch(write_sql, *batch_args),
                    "lookup": lambda i: apg.fetchrow(lookup_sql, f"run-{i % 64}"),
                    "fetch 100": lambda i: apg.fetch(fetch_sql, "fetch", 0, 0, 100),
                },
                "psycopg": {
                    "single write": lambda i: _pexec(ppg, pg_write, next_single()),
                    "batch of 64": lambda i: _pexec(ppg, pg_write, batch_args),
                    "lookup": lambda i: _pexec(ppg, pg_lookup, [f"run-{i % 64}"]),
                    "fetch 100": lambda i: _pexec(ppg, pg_fetch, ["fetch", 0, 0, 100]),
                },
            }
            for round_ in range(args.rounds):
                order = ["asyncpg", "psycopg"] if round_ % 2 == 0 else ["psycopg", "asyncpg"]
                for name in order:
                    for op, fn in drivers[name].items():
                        n = args.n // 8 if op == "batch of 64" else args.n
                        results[name].setdefault(op, []).append(await _time(n, fn))
        finally:
            await apg.close()
            await ppg.close()
    finally:
        await db.drop_tables()
        await db.close()
    table = {}
    for op in results["asyncpg"]:
        a = statistics.median(r[0] for r in results["asyncpg"][op])
        p = statistics.median(r[0] for r in results["psycopg"][op])
        ac = statistics.median(r[1] for r in results["asyncpg"][op])
        pc = statistics.median(r[1] for r in results["psycopg"][op])
        table[op] = {
            "asyncpg_ops_s": round(a),
            "psycopg_ops_s": round(p),
            "asyncpg_cpu_us": round(ac),
            "psycopg_cpu_us": round(pc),
        }
        print(
            f"{op:14s} asyncpg {a:8.0f}/s {ac:7.0f} us CPU   psycopg {p:8.0f}/s {pc:7.0f} us CPU"
            f"   psycopg/asyncpg CPU {pc / ac:.2f}"
        )
    json.dump(table, sys.stdout)
    print()


def _pyformat(sql: str) -> str:
    import re

    return re.sub(r"\$\d+", "%s", sql.replace("%", "%%"))


def _libpq(url: str) -> str:
    return url


async def _pexec(conn: Any, sql: str, params: list[Any]) -> Any:
    cur = await conn.execute(sql, params, prepare=True)
    return await cur.fetchall()


if __name__ == "__main__":
    asyncio.run(main())
