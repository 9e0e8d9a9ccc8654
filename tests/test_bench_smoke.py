"""Smoke test of the benchmark harness: every workload runs at a tiny size and reports sane rows.

No timing is asserted: this only proves that ``python -m bench`` would not crash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a top-level package next to src/, not installed
    sys.path.insert(0, str(ROOT))

from bench import workloads  # noqa: E402
from bench.__main__ import aggregate, select, table  # noqa: E402

TINY = 20
TINY_DEPTH = 2


@pytest.mark.parametrize("name", list(workloads.WORKLOADS))
async def test_workload_reports_sane_fields(name: str) -> None:
    size = TINY_DEPTH if name.startswith("depth-") else TINY
    result = await workloads.run_workload(name, "memory", size)
    row = result.to_dict()

    assert row["workload"] == name
    assert row["backend"] == "memory"
    if row["note"] == "not implemented yet":
        assert row["runs"] == 0
        return
    assert row["runs"] == size
    assert row["transitions"] >= size
    for key in ("elapsed_s", "transitions_per_s", "runs_per_s", "p50_ms", "p99_ms"):
        assert row[key] is not None, key
        assert row[key] > 0, key
    assert row["p50_ms"] <= row["p99_ms"]
    assert 0 < row["peak_rss_mb"] < 100_000
    if name == "latency" or name.startswith("depth-"):
        assert row["per_step_ms"] is not None
        assert row["per_step_ms"] > 0
    json.dumps(row)  # the subprocess prints it as JSON


def test_workload_cli_prints_one_json_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.workloads", "latency", "memory", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert row["workload"] == "latency"
    assert row["runs"] == 3


def test_select_expands_groups() -> None:
    assert select(["depth"]) == ["depth-5", "depth-10", "depth-100"]
    assert select(["parallel-4", "throughput"]) == ["throughput", "parallel-4"]
    assert select(None) == list(workloads.WORKLOADS)


def test_aggregate_takes_medians_and_keeps_failures() -> None:
    samples = [
        {"runs": 10, "transitions": 40, "runs_per_s": r, "p50_ms": 1.0, "note": "n"}
        for r in (3.0, 1.0, 2.0)
    ]
    samples.append({"error": "exit 1: boom"})
    row = aggregate("throughput", "memory", samples)
    assert row["reps"] == 3
    assert row["runs_per_s"] == 2.0
    assert (row["runs_per_s_min"], row["runs_per_s_max"]) == (1.0, 3.0)
    assert row["per_step_ms"] is None
    assert "FAILED: exit 1: boom" in row["note"]
    assert "| throughput |" in table([row])
