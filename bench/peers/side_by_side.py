"""statestream and DBOS on PostgreSQL in one session, alternating: ``make bench-peers``.

Each round runs statestream's workloads 1 (``throughput``) and 2 (``latency``) on each of its
backends (``postgres`` when the adapter and server are there, and ``sqlite``), each in a fresh
process of the project's venv (``python -m bench.workloads``), then the same two workloads on
DBOS with its PostgreSQL system database (:mod:`dbos_postgres`, in the peers' venv): ours,
DBOS, ours, DBOS... so that the machine's drift hits both. The rows are the medians over the
rounds; the ratios are statestream's runs/s over DBOS's (workload 1) and DBOS's p50 over
statestream's (workload 2), from those medians. Everything, with every repetition's raw row,
goes to ``bench/results/peers.json``.

Standalone (standard library only; it runs the two engines as subprocesses)::

    .venv-peers/bin/python bench/peers/side_by_side.py --ours-python .venv/bin/python
    make bench-peers ARGS="--rounds 5"
    make bench-peers ARGS="--quick"          # 200 + 20 runs, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dbos_postgres
import dbos_sqlite

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
WORKLOADS = ("throughput", "latency")
SIZES = {"throughput": 10_000, "latency": 500}
QUICK = {"throughput": 200, "latency": 20}
METRICS = (
    *dbos_sqlite.METRICS,
    "server_cpu_us_per_transition",
    "server_own_cpu_us_per_transition",
)


def ours_unavailable(python: str, backend: str) -> str | None:
    code = "import sys; from bench.workloads import unavailable as u; print(u(sys.argv[1]) or '')"
    proc = subprocess.run(
        [python, "-c", code, backend], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["cannot import bench"])[-1]
    return proc.stdout.strip() or None


def run_ours(python: str, workload: str, backend: str, size: int, timeout: float) -> dict[str, Any]:
    cmd = [python, "-m", "bench.workloads", workload, backend, str(size)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    row: dict[str, Any] = json.loads(lines[-1])
    return row


def median_row(engine: str, backend: str, workload: str, samples: list[dict[str, Any]]) -> dict:
    ok = [s for s in samples if "error" not in s]
    row: dict[str, Any] = {"engine": engine, "backend": backend, "workload": workload}
    row["reps"] = len(ok)
    row["runs"] = ok[0]["runs"] if ok else 0
    for key in METRICS:
        values = [s[key] for s in ok if s.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    rates = [s["runs_per_s"] for s in ok]
    row["runs_per_s_min"] = min(rates) if rates else None
    row["runs_per_s_max"] = max(rates) if rates else None
    row["errors"] = [s["error"] for s in samples if "error" in s]
    return row


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument(
        "--ours",
        action="append",
        metavar="BACKEND",
        help="statestream backend (repeatable; default postgres and sqlite)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="200 + 20 runs, 1 round")
    parser.add_argument(
        "--dbos-throughput-size",
        type=int,
        help="DBOS's workload-1 runs (default: the same as statestream's, 10,000)",
    )
    parser.add_argument("--database", default=dbos_postgres.DEFAULT_DATABASE)
    parser.add_argument("--output", type=Path, help="default bench/results/peers.json")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per repetition")
    args = parser.parse_args(argv)

    sizes = dict(QUICK if args.quick else SIZES)
    dbos_sizes = dict(sizes)
    if args.dbos_throughput_size:
        dbos_sizes["throughput"] = args.dbos_throughput_size
    rounds = 1 if args.quick else args.rounds
    output = args.output or RESULTS / ("peers-quick.json" if args.quick else "peers.json")

    skipped: dict[str, str] = {}
    ours: list[str] = []
    for backend in args.ours or ["postgres", "sqlite"]:
        reason = ours_unavailable(args.ours_python, backend)
        if reason:
            skipped[backend] = reason
            print(f"statestream {backend}: skipped: {reason}", file=sys.stderr)
        else:
            ours.append(backend)

    samples: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in range(rounds):
        for workload in WORKLOADS:
            for backend in ours:
                t0 = time.perf_counter()
                s = run_ours(args.ours_python, workload, backend, sizes[workload], args.timeout)
                samples.setdefault(("statestream", backend, workload), []).append(s)
                _progress(r, rounds, "statestream", backend, workload, s, t0)
            t0 = time.perf_counter()
            s = dbos_postgres.run_rep(workload, dbos_sizes[workload], args.database, args.timeout)
            samples.setdefault(("dbos", "postgres", workload), []).append(s)
            _progress(r, rounds, "dbos", "postgres", workload, s, t0)

    rows = [median_row(*key, group) for key, group in samples.items()]
    by = {(r["engine"], r["backend"], r["workload"]): r for r in rows}
    ratios = []
    dbos_tp = by.get(("dbos", "postgres", "throughput"), {}).get("runs_per_s")
    dbos_p50 = by.get(("dbos", "postgres", "latency"), {}).get("p50_ms")
    for backend in ours:
        tp = by.get(("statestream", backend, "throughput"), {}).get("runs_per_s")
        p50 = by.get(("statestream", backend, "latency"), {}).get("p50_ms")
        ratios.append(
            {
                "statestream_backend": backend,
                "peer": "dbos-postgres",
                "throughput_runs_per_s_ratio": tp / dbos_tp if tp and dbos_tp else None,
                "latency_p50_ratio_peer_over_ours": dbos_p50 / p50 if p50 and dbos_p50 else None,
            }
        )
    settings = {}
    dbos_ok = [s for s in samples.get(("dbos", "postgres", "throughput"), []) if "error" not in s]
    if dbos_ok:
        for key in ("fsync", "synchronous_commit", "wal_sync_method", "server_version"):
            settings[key] = dbos_ok[0].get(key)

    print(
        "| engine | backend | workload | runs | runs/s (min-max) | p50 ms | p99 ms | "
        "client CPU µs/transition | server CPU µs/transition (of it ours) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        spread = f"{fmt(row['runs_per_s_min'])}-{fmt(row['runs_per_s_max'])}"
        print(
            f"| {row['engine']} | {row['backend']} | {row['workload']} | {row['runs']:,} | "
            f"{fmt(row['runs_per_s'])} ({spread}) | {fmt(row['p50_ms'], 2)} | "
            f"{fmt(row['p99_ms'], 2)} | {fmt(row['cpu_us_per_transition'])} | "
            f"{fmt(row['server_cpu_us_per_transition'])} "
            f"({fmt(row['server_own_cpu_us_per_transition'])}) |"
            + (f" FAILED: {'; '.join(row['errors'])}" if row["errors"] else "")
        )
    for backend, reason in skipped.items():
        print(f"| statestream | {backend} | - | - | skipped: {reason} | | | | |")
    for ratio in ratios:
        print(
            f"\nstatestream {ratio['statestream_backend']} / DBOS on PostgreSQL: workload 1 "
            f"{fmt(ratio['throughput_runs_per_s_ratio'], 2)}x the runs/s; workload 2 p50 "
            f"DBOS {fmt(ratio['latency_p50_ratio_peer_over_ours'], 2)}x ours"
        )
    doc = {
        "rows": rows,
        "ratios": ratios,
        "skipped": skipped,
        "postgres_settings": settings,
        "rounds": rounds,
        "order": "per round and workload: statestream on each backend, then DBOS",
        "samples": [
            {"engine": k[0], "backend": k[1], "workload": k[2], "samples": v}
            for k, v in samples.items()
        ],
        "python": platform.python_version(),
        "dbos": dbos_sqlite.dbos_version(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {output}", file=sys.stderr)
    return 1 if any(row["errors"] for row in rows) else 0


def _progress(
    r: int, rounds: int, engine: str, backend: str, workload: str, sample: dict[str, Any], t0: float
) -> None:
    status = sample.get("error") or (
        f"{sample['runs_per_s']:,.0f} runs/s, p50 {sample['p50_ms']:.2f} ms"
    )
    print(
        f"[{r + 1}/{rounds}] {engine:<11} {backend:<8} {workload:<10} "
        f"{time.perf_counter() - t0:6.1f}s  {status}",
        file=sys.stderr,
    )


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


if __name__ == "__main__":
    raise SystemExit(main())
