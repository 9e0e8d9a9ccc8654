"""Smoke test of the benchmark harness: every workload runs at a tiny size and reports sane rows.

No timing is asserted: this only proves that ``python -m bench`` would not crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a top-level package next to src/, not installed
    sys.path.insert(0, str(ROOT))

from bench import kafka, servers, workloads  # noqa: E402
from bench.__main__ import aggregate, main, select, table  # noqa: E402
from bench.peers.proc_cpu import ProcessTreeCpu, cpu_seconds  # noqa: E402

TINY = 20
TINY_DEPTH = 2


@pytest.mark.parametrize("name", list(workloads.WORKLOADS))
async def test_workload_reports_sane_fields(name: str) -> None:
    size = TINY_DEPTH if name.startswith("depth-") else TINY
    result = await workloads.run_workload(name, "memory", size)
    row = result.to_dict()

    assert row["workload"] == name
    assert row["backend"] == "memory"
    if row["note"] == "not implemented yet" or row["note"].startswith("not applicable"):
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


@pytest.fixture
def quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """workers-3 starts at once, without waiting for the roles to be divided."""
    monkeypatch.setenv("BENCH_SETTLE_S", "0")


@pytest.mark.usefixtures("quick_settle")
def test_workers_3_on_sqlite_runs_every_step() -> None:
    """Three worker processes on one SQLite file; the driver only triggers."""
    result = asyncio.run(workloads.run_workload("workers-3", "sqlite", TINY))
    row = result.to_dict()
    assert row["runs"] == TINY
    assert row["transitions"] == TINY * 4
    assert row["runs_per_s"] > 0
    assert row["p50_ms"] is not None
    assert row["cpu_us_per_transition"] > 0
    assert row["note"].startswith("3 worker processes, roles held at the start ")
    per_worker = row["note"].split("steps run per worker ")[1].split(",")[0]
    assert sum(int(n) for n in per_worker.split("/")) >= TINY * 3  # at least once each


def _server_or_skip(kind: str) -> None:
    reason = servers.unavailable(kind)
    if reason is None:
        return
    if "unreachable" in reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(f"{kind} backend not runnable here: {reason}")


@pytest.mark.usefixtures("quick_settle")
@pytest.mark.parametrize("kind", ["postgres", "mysql"])
@pytest.mark.parametrize("name", ["throughput", "latency", "workers-3"])
def test_server_rows_quick(kind: str, name: str) -> None:
    _server_or_skip(kind)
    size = 5 if name == "latency" else TINY
    row = asyncio.run(workloads.run_workload(name, kind, size)).to_dict()
    assert row["runs"] == size
    assert row["runs_per_s"] > 0
    assert row["cpu_us_per_transition"] > 0
    assert row["server_cpu_us_per_transition"] is not None  # the server runs on this host


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_server_backend_drops_its_tables(kind: str) -> None:
    _server_or_skip(kind)
    async with workloads.BACKENDS[kind]() as adapters:
        prefix = adapters.location
        assert prefix is not None
        await adapters.store.list(workloads.WORKFLOW, limit=1)
    assert prefix.startswith("b_")
    assert await servers.drop_prefixed(kind, prefix) == []  # nothing was left to drop


async def test_drop_refuses_a_prefix_it_did_not_make() -> None:
    for prefix in ("", "t_", "b_%_", "statestream_", "b_0123456789"):
        with pytest.raises(ValueError, match="refusing"):
            await servers.drop_prefixed("postgres", prefix)


def test_unavailable_backend_is_a_skipped_row(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import bench.__main__ as harness

    monkeypatch.setattr(
        harness, "unavailable", lambda b: f"no {b} here" if b == "postgres" else None
    )
    out = tmp_path / "rows.json"
    code = main(["--quick", "--only", "latency", "--backend", "postgres", "--output", str(out)])
    assert code == 0
    (row,) = json.loads(out.read_text(encoding="utf-8"))
    assert row["backend"] == "postgres"
    assert row["note"] == "skipped: no postgres here"
    assert row["reps"] == 0


def test_process_tree_cpu_counts_a_child_that_exited() -> None:
    tree = ProcessTreeCpu(os.getpid())
    before = tree.snapshot()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass",
        ],
        check=True,
        timeout=30,
    )
    assert tree.seconds(before, tree.snapshot()) > 0


# ------------------------------------------------------------------------------------ Kafka


@pytest.fixture
def session_broker(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The postgres-kafka rows on the test session's broker (skipped loudly without one, and
    failed under CI=true, by the fixture)."""
    monkeypatch.setenv(kafka.BOOTSTRAP_ENV, kafka_bootstrap)
    return kafka_bootstrap


@pytest.mark.usefixtures("quick_settle", "session_broker")
@pytest.mark.parametrize("name", ["throughput", "latency", "workers-4"])
def test_postgres_kafka_rows_quick(name: str) -> None:
    _server_or_skip("postgres")
    assert workloads.unavailable("postgres-kafka") is None
    size = 5 if name == "latency" else TINY
    row = asyncio.run(workloads.run_workload(name, "postgres-kafka", size)).to_dict()
    assert row["runs"] == size
    assert row["runs_per_s"] > 0
    assert row["p50_ms"] is not None
    assert row["cpu_us_per_transition"] > 0
    assert row["server_cpu_us_per_transition"] is not None
    assert row["broker_cpu_us_per_transition"] is None  # not our broker: not measured
    if name == "workers-4":
        per_worker = row["note"].split("steps run per worker ")[1].split(",")[0]
        assert sum(int(n) for n in per_worker.split("/")) >= TINY * 3


@pytest.mark.usefixtures("session_broker")
async def test_postgres_kafka_deletes_its_topics_on_a_broker_not_its_own(
    kafka_bootstrap: str,
) -> None:
    _server_or_skip("postgres")
    from confluent_kafka.admin import AdminClient

    async with workloads.BACKENDS["postgres-kafka"]() as adapters:
        assert adapters.location is not None
        prefix, _, bootstrap = adapters.location.partition("@")
        assert bootstrap == kafka_bootstrap
        assert adapters.broker is None
        await adapters.streamer.topic_partitions("bench-topic")  # type: ignore[attr-defined]
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        topics = await asyncio.to_thread(lambda: admin.list_topics(timeout=10).topics)
        assert [t for t in topics if t.startswith(prefix)]  # created
    topics = await asyncio.to_thread(lambda: admin.list_topics(timeout=10).topics)
    assert not [t for t in topics if t.startswith(prefix)]
    assert await servers.drop_prefixed("postgres", prefix) == []


def _own_broker_or_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kafka.BOOTSTRAP_ENV, raising=False)
    _server_or_skip("postgres")
    reason = kafka.unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the bench cannot start its own broker: {reason}")
        pytest.skip(f"KAFKA BENCH ROWS SKIPPED: {reason}")


async def test_postgres_kafka_starts_and_stops_its_own_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without STATESTREAM_KAFKA_BOOTSTRAP the backend starts Tansu, measures its CPU, and
    stops it (by its PID) when it closes."""
    _own_broker_or_skip(monkeypatch)
    async with workloads.BACKENDS["postgres-kafka"]() as adapters:
        pid = adapters.broker
        assert pid is not None
        assert cpu_seconds(pid) is not None  # running
        window = workloads.CpuWindow(adapters)
        await adapters.streamer.topic_partitions("bench-topic")  # type: ignore[attr-defined]
        cpu = await window.stop()
        assert cpu.broker is not None
        assert cpu.per_transition(1)["broker_cpu_us_per_transition"] is not None
    assert cpu_seconds(pid) is None  # stopped and reaped


def test_postgres_kafka_names_an_unreachable_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    _server_or_skip("postgres")
    pytest.importorskip("confluent_kafka")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(kafka.BOOTSTRAP_ENV, f"127.0.0.1:{port}")
    reason = workloads.unavailable("postgres-kafka")
    assert reason is not None
    assert f"127.0.0.1:{port} unreachable" in reason
