"""Structured logs: the engine's log lines carry workflow, run_id, foreign_id, status and role,
and statestream.logs.JsonFormatter writes them as JSON."""

from __future__ import annotations

import json
import logging

import pytest

import observe_app
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.logs import FIELDS, JsonFormatter


async def test_a_failed_step_logs_the_runs_fields(caplog: pytest.LogCaptureFixture) -> None:
    wf = observe_app.builder().build(
        MemoryStreamer(),
        MemoryRecordStore(),
        MemoryRoleScheduler(),
        timeout_store=MemoryTimeoutStore(),
    )
    caplog.set_level(logging.INFO, "statestream")
    async with wf:
        run_id = await wf.trigger("fail-logs")
        await wf.wait_for("fail-logs", run_id, observe_app.S.DONE, timeout=10)
    records = [r for r in caplog.records if r.name == "statestream"]
    assert records
    for record in records:  # every line has the five fields, "" when it is about no run
        for name in FIELDS:
            assert isinstance(getattr(record, name), str), (name, record.getMessage())
    (failed,) = [r for r in records if "failed for run" in r.getMessage()]
    assert failed.__dict__["workflow"] == "orders"
    assert failed.__dict__["run_id"] == run_id
    assert failed.__dict__["foreign_id"] == "fail-logs"
    assert failed.__dict__["status"] == "CREATED"
    assert failed.__dict__["role"] == "orders-1-consumer-1-of-1"

    line = json.loads(JsonFormatter().format(failed))
    assert line["level"] == "WARNING"
    assert line["logger"] == "statestream"
    assert line["message"] == failed.getMessage()
    assert {name: line[name] for name in FIELDS} == {
        "workflow": "orders",
        "run_id": run_id,
        "foreign_id": "fail-logs",
        "status": "CREATED",
        "role": "orders-1-consumer-1-of-1",
    }


def test_the_json_formatter_keeps_other_extras_and_the_traceback() -> None:
    logger = logging.getLogger("statestream.test-json")
    try:
        raise ValueError("boom <script>")
    except ValueError:
        record = logger.makeRecord(
            logger.name,
            logging.ERROR,
            __file__,
            1,
            "it failed: %s",
            ("x",),
            exc_info=__import__("sys").exc_info(),
            extra={"order": 7, "where": object()},
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "it failed: x"
    assert line["order"] == 7
    assert line["where"].startswith("<object object")
    assert "ValueError: boom <script>" in line["exception"]
    assert line["workflow"] == ""  # not from the engine's logger: no fields, still the keys
    assert line["time"].endswith("+00:00")
