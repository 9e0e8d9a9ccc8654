"""``python -m bench``: run every workload in its own subprocess, print a table, write JSON.

Each repetition of each workload is a fresh ``python -m bench.workloads <name> <backend> <size>``
process, so one workload's garbage, caches and peak RSS never leak into another's. The table and
``bench/results/latest.json`` report the median of the repetitions for every figure.
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

from .workloads import BACKENDS, WORKLOADS, unavailable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

#: Figures that are medians over the repetitions.
METRICS = (
    "elapsed_s",
    "transitions_per_s",
    "runs_per_s",
    "p50_ms",
    "p99_ms",
    "per_step_ms",
    "peak_rss_mb",
    "cpu_us_per_transition",
    "server_cpu_us_per_transition",
    "server_own_cpu_us_per_transition",
    "broker_cpu_us_per_transition",
)


# ------------------------------------------------------------------------------------ metadata


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def metadata() -> dict[str, Any]:
    """Where and on what the numbers were measured.

    The commit is that of the checkout the measured ``statestream`` was imported from, and
    ``git_dirty`` says whether that package's sources had uncommitted changes.
    """
    import statestream

    pkg = Path(statestream.__file__).resolve().parent
    commit = _git("rev-parse", "--short", "HEAD", cwd=pkg)
    status = _git("status", "--porcelain", "--", ".", cwd=pkg)
    return {
        "python": platform.python_version(),
        "statestream": statestream.__version__,
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
        },
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------ running


def select(only: list[str] | None) -> list[str]:
    """Workload names to run: all, or those named by ``--only`` (a name or its prefix group:
    ``depth`` selects ``depth-5``, ``depth-10`` and ``depth-100``)."""
    if not only:
        return list(WORKLOADS)
    chosen: list[str] = []
    for want in only:
        matches = [n for n in WORKLOADS if n == want or n.startswith(f"{want}-")]
        if not matches:
            raise SystemExit(f"unknown workload {want!r}; known: {', '.join(WORKLOADS)}")
        chosen.extend(m for m in matches if m not in chosen)
    return [n for n in WORKLOADS if n in chosen]


def run_once(name: str, backend: str, size: int, timeout: float) -> dict[str, Any]:
    """One repetition in a fresh interpreter; returns its row or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "bench.workloads", name, backend, str(size)]
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


def aggregate(name: str, backend: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of the successful repetitions, with their spread and any failures."""
    ok = [s for s in samples if "error" not in s]
    errors = [s["error"] for s in samples if "error" in s]
    row: dict[str, Any] = {"workload": name, "backend": backend, "reps": len(ok)}
    row["runs"] = ok[0]["runs"] if ok else 0
    row["transitions"] = ok[0]["transitions"] if ok else 0
    for key in METRICS:
        values = [s[key] for s in ok if s.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    rates = [s["runs_per_s"] for s in ok if s.get("runs_per_s") is not None]
    row["runs_per_s_min"] = min(rates) if rates else None
    row["runs_per_s_max"] = max(rates) if rates else None
    notes = [ok[0]["note"]] if ok and ok[0].get("note") else []
    notes.extend(f"FAILED: {e}" for e in dict.fromkeys(errors))
    row["note"] = "; ".join(notes)
    return row


# ------------------------------------------------------------------------------------ output

COLUMNS = (
    ("workload", "workload"),
    ("backend", "backend"),
    ("runs", "runs"),
    ("transitions_per_s", "transitions/s"),
    ("runs_per_s", "runs/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("per_step_ms", "per-step ms"),
    ("peak_rss_mb", "peak RSS MB"),
    ("cpu_us_per_transition", "client CPU µs/tr"),
    ("server_cpu_us_per_transition", "server CPU µs/tr"),
    ("server_own_cpu_us_per_transition", "of it ours"),
    ("broker_cpu_us_per_transition", "broker CPU µs/tr"),
    ("note", "note"),
)


def fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("transitions_per_s", "runs_per_s"):
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if key.endswith("_ms"):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.1f}" if value >= 10 else f"{value:.3f}"
    if key == "peak_rss_mb":
        return f"{value:.1f}"
    if key.endswith("cpu_us_per_transition"):
        return f"{value:,.0f}"
    if key == "runs":
        return f"{value:,}" if value else "-"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, aligned for reading in a terminal too."""
    cells = [[fmt(k, r.get(k)) for k, _ in COLUMNS] for r in rows]
    heads = [h for _, h in COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    text = [k not in ("workload", "backend", "note") for k, _ in COLUMNS]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if t else v.ljust(w) for v, w, t in zip(values, widths, text, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if t else "-" * (w + 2) for w, t in zip(widths, text, strict=True)
        )
        + "|"
    )
    return "\n".join([line(heads), rule, *(line(c) for c in cells)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="statestream benchmarks (see bench/README.md)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="WORKLOAD",
        help="run only this workload or group (repeatable): " + ", ".join(WORKLOADS),
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=list(BACKENDS),
        help="backend to run on (repeatable; default: each workload's own list: memory, "
        "plus sqlite and sqlite-normal for throughput and latency, postgres and mysql for "
        "throughput, latency and workers-3, postgres-kafka for throughput and latency, "
        "postgres and postgres-kafka for workers-4; a server backend whose adapter, server "
        "or broker is missing is reported as skipped)",
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions per workload (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 repetition")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the JSON rows (default bench/results/latest.json, "
        "or bench/results/quick.json with --quick)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds allowed per repetition"
    )
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(argv)

    if args.list:
        for name, w in WORKLOADS.items():
            doc = (w.fn.__doc__ or "").strip().splitlines()[0]
            print(f"{name:<12} size {w.size:>6}  {doc}")
        return 0
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    names = select(args.only)
    backends = args.backend or list(BACKENDS)

    def wanted(name: str, backend: str) -> bool:
        return bool(args.backend) or backend in WORKLOADS[name].backends

    reps = 1 if args.quick else args.reps
    output = args.output or RESULTS / ("quick.json" if args.quick else "latest.json")
    skipped = {
        b: reason
        for b in backends
        if any(wanted(n, b) for n in names) and (reason := unavailable(b)) is not None
    }
    for backend, reason in skipped.items():
        print(f"{backend}: skipped: {reason}", file=sys.stderr)

    meta = metadata()
    print(
        f"statestream {meta['statestream']} @ {meta['git_commit']}"
        f"{' (dirty)' if meta['git_dirty'] else ''}, Python {meta['python']}, "
        f"{meta['machine']['cpu_count']} CPUs ({meta['machine']['cpu_model']}); "
        f"{reps} rep(s) each",
        file=sys.stderr,
    )
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    started = time.perf_counter()
    # Repetition-major order, so slow drift of the machine spreads over every workload.
    for rep in range(reps):
        for backend in backends:
            for name in names:
                if not wanted(name, backend) or backend in skipped:
                    continue
                w = WORKLOADS[name]
                size = w.quick_size if args.quick else w.size
                t0 = time.perf_counter()
                sample = run_once(name, backend, size, args.timeout)
                samples.setdefault((name, backend), []).append(sample)
                if "error" in sample:
                    status = sample["error"]
                elif sample.get("runs_per_s") is not None:
                    status = f"{sample['runs_per_s']:,.0f} runs/s"
                else:
                    status = sample.get("note") or "ok"
                print(
                    f"[{rep + 1}/{reps}] {name:<11} {backend:<8} {time.perf_counter() - t0:6.1f}s"
                    f"  {status}",
                    file=sys.stderr,
                )

    rows = []
    for backend in backends:
        for name in names:
            if not wanted(name, backend):
                continue
            if backend in skipped:
                row = {"workload": name, "backend": backend, "reps": 0, "runs": 0}
                row["note"] = f"skipped: {skipped[backend]}"
                rows.append(row)
                continue
            row = aggregate(name, backend, samples[(name, backend)])
            row.update(meta)
            rows.append(row)
    print(table(rows))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(
        f"\nwrote {output} ({time.perf_counter() - started:.0f}s in total)",
        file=sys.stderr,
    )
    failed = any(r["note"].count("FAILED") for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
