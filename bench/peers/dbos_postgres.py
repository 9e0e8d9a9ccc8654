"""DBOS Transact on a PostgreSQL system database: statestream's workloads 1 and 2, side by side.

The workload is :mod:`dbos_sqlite`'s (three trivial async ``@DBOS.step`` calls per workflow,
4 transitions per run as statestream counts them); only the system database differs: a
database of this script's own, ``statestream_bench_dbos`` by default, on the PostgreSQL server
of ``STATESTREAM_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``). Each
repetition drops that database (only that one: the name must start with ``statestream_bench_``)
and lets DBOS create it afresh, so every repetition starts on empty tables as statestream's do.

Each row also reports the server's durability settings (``fsync``, ``synchronous_commit``,
read with ``SHOW``) and the PostgreSQL server's CPU time per transition in the measured
window (``server_cpu_us_per_transition``: the postmaster and all its backends, from
``/proc/<pid>/stat``, so it includes other sessions' load on the same server).

Standalone like :mod:`dbos_sqlite` (it imports only that script and :mod:`proc_cpu` from this
directory), run under the peers' venv::

    .venv-peers/bin/python bench/peers/dbos_postgres.py --reps 3
    .venv-peers/bin/python bench/peers/dbos_postgres.py --one latency --size 100

``make bench-peers`` runs it alternated with statestream's rows (``side_by_side.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dbos_sqlite
from proc_cpu import ProcessTreeCpu, local_tcp_ports, parent_of

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_DATABASE = "statestream_bench_dbos"
BACKEND = "dbos-postgres"
_OURS = re.compile(r"^statestream_bench_[a-z0-9_]{1,40}$")


def server_url() -> str:
    return os.environ.get("STATESTREAM_POSTGRES_URL") or DEFAULT_URL


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def reset_database(database: str) -> None:
    """Drop this script's own system database, so that DBOS creates it afresh."""
    if not _OURS.match(database):
        raise SystemExit(f"refusing to drop {database!r}: not a statestream_bench_* database")
    from psycopg import sql

    with _connect(server_url()) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


def settings_and_server() -> tuple[dict[str, str], ProcessTreeCpu | None]:
    """The server's durability settings, and a sampler of its processes' CPU (the parent of
    this session's backend is the postmaster; None when it is not on this host)."""
    with _connect(server_url()) as conn:
        names = ("fsync", "synchronous_commit", "wal_sync_method", "server_version")
        found = {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}
        backend = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
    host = urlsplit(server_url()).hostname or "127.0.0.1"
    root = parent_of(backend) if host in ("127.0.0.1", "localhost", "::1") else None
    return found, (ProcessTreeCpu(root) if root else None)


class ServerWindow(dbos_sqlite.Window):
    def __init__(self, server: ProcessTreeCpu | None) -> None:
        self.server = server
        self.before: Any = None

    def start(self) -> None:
        self.before = self.server.snapshot() if self.server else None

    def stop(self, row: dict[str, Any]) -> None:
        if self.server is None:
            row["server_cpu_s"] = row["server_own_cpu_s"] = None
            return
        after = self.server.snapshot()
        row["server_cpu_s"] = self.server.seconds(self.before, after)
        # DBOS's own sessions: those whose client port is one of this process's sockets (as
        # bench/servers.py does for statestream): a lower bound, without the WAL writer etc.
        ports = local_tcp_ports(os.getpid())
        with _connect(server_url()) as conn:
            rows = conn.execute("SELECT pid, client_port FROM pg_stat_activity").fetchall()
        pids = {int(pid) for pid, port in rows if port in ports}
        row["server_own_cpu_s"] = sum(
            now.own - (then.own if (then := self.before.get(key)) else 0.0)
            for key, now in after.items()
            if key[0] in pids
        )


def run_one(workload: str, size: int, database: str) -> dict[str, Any]:
    reset_database(database)
    settings, server = settings_and_server()
    url = with_database(server_url(), database)
    row = asyncio.run(dbos_sqlite._run(workload, size, url, ServerWindow(server)))
    return {"backend": BACKEND, **row, **settings}


def run_rep(workload: str, size: int, database: str, timeout: float) -> dict[str, Any]:
    """One repetition in a fresh interpreter (DBOS is a process-wide singleton)."""
    cmd = [sys.executable, __file__, "--one", workload, "--size", str(size)]
    cmd += ["--database", database]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    row: dict[str, Any] = json.loads(lines[-1])
    return row


def aggregate(workload: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [s for s in samples if "error" not in s]
    errors = [s["error"] for s in samples if "error" in s]
    row: dict[str, Any] = {"workload": workload, "backend": BACKEND, "reps": len(ok)}
    row["runs"] = ok[0]["runs"] if ok else 0
    row["transitions"] = ok[0]["transitions"] if ok else 0
    for key in (
        *dbos_sqlite.METRICS,
        "server_cpu_us_per_transition",
        "server_own_cpu_us_per_transition",
    ):
        values = [s[key] for s in ok if s.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    rates = [s["runs_per_s"] for s in ok]
    row["runs_per_s_min"] = min(rates) if rates else None
    row["runs_per_s_max"] = max(rates) if rates else None
    notes = [ok[0]["note"]] if ok else []
    notes.extend(f"FAILED: {e}" for e in dict.fromkeys(errors))
    row["note"] = "; ".join(notes)
    for key in ("fsync", "synchronous_commit", "wal_sync_method", "server_version"):
        row[key] = ok[0].get(key) if ok else None
    row["python"] = platform.python_version()
    row["dbos"] = dbos_sqlite.dbos_version()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="DBOS on PostgreSQL: statestream's workloads 1 and 2 "
        "(see bench/peers/README.md)"
    )
    parser.add_argument("--only", action="append", choices=list(dbos_sqlite.WORKLOADS))
    parser.add_argument("--reps", type=int, default=3, help="repetitions per workload (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 repetition")
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"DBOS's system database, dropped and recreated per repetition "
        f"(default {DEFAULT_DATABASE}; must start with statestream_bench_)",
    )
    parser.add_argument("--output", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per repetition")
    parser.add_argument("--one", choices=list(dbos_sqlite.WORKLOADS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not _OURS.match(args.database):
        parser.error("--database must start with statestream_bench_")

    if args.one:
        row = run_one(args.one, args.size or dbos_sqlite.WORKLOADS[args.one], args.database)
        print(json.dumps(row), flush=True)
        return 0
    names = [n for n in dbos_sqlite.WORKLOADS if not args.only or n in args.only]
    reps = 1 if args.quick else args.reps
    sizes = dbos_sqlite.QUICK_SIZES if args.quick else dbos_sqlite.WORKLOADS
    samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(reps):
        for name in names:
            t0 = time.perf_counter()
            sample = run_rep(name, sizes[name], args.database, args.timeout)
            samples[name].append(sample)
            status = sample.get("error") or f"{sample['runs_per_s']:,.0f} runs/s"
            print(
                f"[{rep + 1}/{reps}] {name:<11} {BACKEND} {time.perf_counter() - t0:6.1f}s  "
                f"{status}",
                file=sys.stderr,
            )
    rows = [aggregate(n, samples[n]) for n in names]
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 1 if any("FAILED" in r["note"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
