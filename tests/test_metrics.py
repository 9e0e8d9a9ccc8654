"""statestream.metrics: the Prometheus metrics of a workflow that ran, scraped over HTTP from an
in-process server and from a ``statestream worker --metrics-port`` subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import observe_app
from helpers import eventually
from statestream import InvalidInput, RunState
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.metrics import (
    PrometheusObserver,
    asgi_app,
    start_http_server,
    wsgi_app,
)

TESTS = Path(__file__).parent


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the page at ``url``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def memory_workflow(observer: PrometheusObserver) -> Any:
    return observe_app.builder().build(
        MemoryStreamer(),
        MemoryRecordStore(),
        MemoryRoleScheduler(),
        timeout_store=MemoryTimeoutStore(),
        observer=observer,
    )


async def test_the_metrics_of_a_workflow_that_ran_over_http() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    wf = memory_workflow(observer)
    server = start_http_server(0, "127.0.0.1", registry)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        paused = await wf.trigger("held")
        await wf.pause(paused, "checking it")
        # "fail-1": its first step fails once, then it completes
        ids = {f: await wf.trigger(f) for f in ("order-0", "order-1", "order-2", "fail-1")}
        async with wf, observer.sampling(wf, interval=0.05):
            for foreign_id, run_id in ids.items():
                await wf.wait_for(foreign_id, run_id, observe_app.S.DONE, timeout=10)
            await eventually(
                lambda: (
                    observer._m.outbox.get("orders") == 0
                    and observer._m.states["orders"]["outbox-consumer"] == 2
                ),
                what="a sample after the runs",
                timeout=10,
            )
            samples = await asyncio.to_thread(scrape, url)
    finally:
        server.close()

    wf_ = {"workflow_name": "orders"}
    changes = "workflow_run_state_changes_total"
    created = "created-consumer-1-of-1"
    assert (
        value(samples, changes, **wf_, previous_run_state="Unknown", current_run_state="Initiated")
        == 5
    )
    assert (
        value(samples, changes, **wf_, previous_run_state="Initiated", current_run_state="Paused")
        == 1
    )
    assert (
        value(samples, changes, **wf_, previous_run_state="Initiated", current_run_state="Running")
        == 4
    )
    assert (
        value(samples, changes, **wf_, previous_run_state="Running", current_run_state="Running")
        == 4
    )
    assert (
        value(samples, changes, **wf_, previous_run_state="Running", current_run_state="Completed")
        == 4
    )
    # every event the first step's consumer took (the paused run's too), and the retry
    latency = value(samples, "workflow_process_latency_seconds_count", **wf_, process_name=created)
    assert latency is not None
    assert latency >= 6
    assert value(samples, "workflow_process_error_count_total", **wf_, process_name=created) == 1
    skipped = value(
        samples,
        "workflow_process_skipped_events_count_total",
        **wf_,
        process_name=created,
        reason="event record version lower than latest record version",
    )
    assert skipped == 1  # the paused run's first event: its record moved on (paused)
    assert value(samples, "workflow_process_lag_seconds", **wf_, process_name=created) is not None
    assert value(samples, "workflow_process_lag_alert", **wf_, process_name=created) == 0
    assert value(samples, "workflow_process_states", **wf_, process_name=created) == 2  # running
    steps = value(
        samples, "workflow_step_duration_seconds_count", **wf_, kind="event", status="CHECKED"
    )
    assert steps == 4
    bucket = value(
        samples,
        "workflow_step_duration_seconds_bucket",
        **wf_,
        kind="event",
        status="CHECKED",
        le="+Inf",
    )
    assert bucket == 4
    # sampled from the stores: the paused run is the only unfinished one
    assert value(samples, "workflow_runs", **wf_, status="CREATED", run_state="Paused") == 1
    assert not any(
        name == "workflow_runs" and dict(labels).get("run_state") != "Paused"
        for name, labels in samples
    )
    assert value(samples, "workflow_outbox_backlog", **wf_) == 0
    assert value(samples, "workflow_outbox_published_total", **wf_) is not None
    role = "orders-1-consumer-1-of-1"
    assert value(samples, "workflow_lease_changes_total", **wf_, role=role, change="gained") == 1
    assert value(samples, "workflow_roles_held", **wf_, role=role) == 1


async def test_timers_and_parked_events_are_sampled() -> None:
    from statestream import after

    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    b = observe_app.builder()

    async def later(run: Any, now: Any) -> observe_app.S:
        return observe_app.S.PAID

    b2 = type(b)("timers", observe_app.Order, observe_app.S)
    b2.add_step(
        observe_app.S.CREATED, observe_app._to(observe_app.S.CHECKED), observe_app.S.CHECKED
    )
    b2.add_timeout(observe_app.S.CHECKED, after(3600), later, observe_app.S.PAID)
    b2.add_step(observe_app.S.PAID, observe_app._to(observe_app.S.DONE), observe_app.S.DONE)
    wf = b2.build(
        MemoryStreamer(),
        MemoryRecordStore(),
        MemoryRoleScheduler(),
        timeout_store=MemoryTimeoutStore(),
        observer=observer,
    )
    async with wf:
        run_id = await wf.trigger("t-1")
        await wf.wait_for("t-1", run_id, observe_app.S.CHECKED, timeout=10)

        async def one_timer() -> bool:
            await observer.sample(wf)
            return observer._m.timers_pending["timers"] == {"CHECKED": 1}

        await eventually(one_timer, what="the timer in the sample", timeout=10)
    assert observer._m.timers_due["timers"] == {}
    assert observer._m.parked["timers"] == {}
    assert observer._m.runs["timers"] == {("CHECKED", int(RunState.RUNNING)): 1}


def test_observers_on_one_registry_share_their_metrics_and_apps_serve_them() -> None:
    registry = CollectorRegistry()
    a = PrometheusObserver(registry)
    b = PrometheusObserver(registry)  # no "Duplicated timeseries": the same metrics
    assert a._m is b._m
    with pytest.raises(InvalidInput):
        PrometheusObserver(CollectorRegistry(), step_buckets=(1.0, 0.5))
    assert callable(asgi_app(registry))
    app = wsgi_app(registry)
    out: list[Any] = []
    body = b"".join(
        app(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
            lambda status, headers: out.append(status),
        )
    )
    assert out == ["200 OK"]
    assert b"workflow_process_latency_seconds" in body


async def test_the_asgi_app_serves_the_metrics() -> None:
    registry = CollectorRegistry()
    PrometheusObserver(registry)
    app = asgi_app(registry)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "query_string": b"",
        "headers": [],
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert b"workflow_run_state_changes" in sent[1]["body"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_worker_serves_metrics_and_logs_json(tmp_path: Path) -> None:
    db = str(tmp_path / "orders.db")
    port = free_port()
    env = {
        **os.environ,
        "OBSERVE_DB": db,
        "PYTHONPATH": f"{TESTS}{os.pathsep}" + os.environ.get("PYTHONPATH", ""),
    }
    command = [
        sys.executable,
        "-m",
        "statestream.cli",
        "worker",
        "observe_app:wf",
        "--grace",
        "2",
        "--metrics-port",
        str(port),
        "--metrics-addr",
        "127.0.0.1",
        "--metrics-interval",
        "0.1",
        "--log-format",
        "json",
    ]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:

        async def drive() -> dict[Any, float]:
            wf, database = observe_app.build(db)
            try:
                ids = [await wf.trigger(f"order-{i}") for i in range(2)]
                ids.append(await wf.trigger("fail-1"))
                deadline = time.monotonic() + 20
                url = f"http://127.0.0.1:{port}/metrics"
                while time.monotonic() < deadline:
                    assert process.poll() is None, process.communicate()
                    records = [await wf.store.lookup(i) for i in ids]
                    if all(r.run_state is RunState.COMPLETED for r in records):
                        try:
                            samples = await asyncio.to_thread(scrape, url)
                        except OSError:
                            samples = {}
                        done = value(
                            samples,
                            "workflow_run_state_changes_total",
                            workflow_name="orders",
                            previous_run_state="Running",
                            current_run_state="Completed",
                        )
                        states = value(
                            samples,
                            "workflow_process_states",
                            workflow_name="orders",
                            process_name="outbox-consumer",
                        )
                        if done == 3 and states == 2:
                            return samples
                    await asyncio.sleep(0.05)
                raise AssertionError("the worker's metrics did not show the 3 runs in 20 s")
            finally:
                await database.close()

        samples = asyncio.run(drive())
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert f"metrics on http://127.0.0.1:{port}/metrics" in out
    assert (
        value(
            samples,
            "workflow_process_error_count_total",
            workflow_name="orders",
            process_name="created-consumer-1-of-1",
        )
        == 1
    )
    assert value(samples, "workflow_runs_truncated", workflow_name="orders") == 0
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    failed = [line for line in lines if "failed for run" in line["message"]]
    assert failed, err
    (line,) = failed
    assert line["level"] == "WARNING"
    assert line["workflow"] == "orders"
    assert line["foreign_id"] == "fail-1"
    assert line["status"] == "CREATED"
    assert line["role"] == "orders-1-consumer-1-of-1"
    assert line["run_id"]
