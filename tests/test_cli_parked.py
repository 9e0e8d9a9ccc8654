"""``statestream runs parked`` and ``statestream runs retry-parked``, in the style of test_cli.py:
a fresh workflow module in the test's tmp dir, ``main(argv)`` in-process, on the memory adapters
and on an SQLite file."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest

from statestream._core.records import Event, ParkedEvent
from statestream.cli import main

MODULE = """
import enum
from dataclasses import dataclass

from statestream import Builder

KIND = {kind!r}
DB = {db!r}
DATABASES = []


class Status(enum.IntEnum):
    CREATED = 1
    PAID = 2


@dataclass
class Order:
    id: str = ""


async def pay(run):
    return Status.PAID


def adapters():
    if KIND == "memory":
        from statestream.adapters.memory import (
            MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer,
        )
        return MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler()
    from statestream.adapters.sqlite import (
        SqliteDatabase, SqliteRecordStore, SqliteRoleScheduler, SqliteStreamer,
    )
    db = SqliteDatabase(DB, synchronous="NORMAL")
    DATABASES.append(db)
    return SqliteStreamer(db), SqliteRecordStore(db), SqliteRoleScheduler(db)


b = Builder("orders", Order, Status)
b.add_step(Status.CREATED, pay, Status.PAID)
orders = b.build(*adapters())


async def close_all():
    for db in DATABASES:
        await db.close()
"""

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class Env:
    name: str
    mod: ModuleType

    @property
    def target(self) -> str:
        return f"{self.name}:orders"

    def park(self, n: int, error: str = "RuntimeError: mailer down") -> ParkedEvent:
        consumer = "orders-completed-run-state-change-hook-consumer"
        event = Event(n, "orders-run-state-change", f"run-{n}", 2, {"run_id": f"run-{n}"}, T0)
        entry = ParkedEvent(
            id=f"{consumer}:{event.topic}:{event.id}",
            workflow_name="orders",
            consumer=consumer,
            event=event,
            error=error,
            attempts=10,
            parked_at=T0,
        )
        asyncio.run(self.mod.orders.store.park(entry))
        return entry

    def parked(self) -> list[ParkedEvent]:
        return list(asyncio.run(self.mod.orders.store.list_parked("orders")))


@pytest.fixture(params=["memory", "sqlite"])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Env]:
    monkeypatch.setenv("NO_COLOR", "1")
    name = f"ss_cli_parked_{uuid.uuid4().hex[:10]}"
    source = MODULE.format(kind=request.param, db=str(tmp_path / "runs.db"))
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(name)
    yield Env(name, mod)
    asyncio.run(mod.close_all())
    for key in [k for k in sys.modules if k.startswith(name)]:
        del sys.modules[key]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["parked", "retry-parked"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "runs", command, "--help")
    assert code == 0
    assert out.startswith(f"Usage: statestream runs {command}")


def test_runs_help_lists_the_new_actions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "runs", "--help")
    assert code == 0
    assert "parked" in out
    assert "retry-parked" in out


def test_no_parked_events(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "runs", "parked", env.target)
    assert (code, out.strip(), err) == (0, "no parked events in workflow 'orders'", "")


def test_parked_lists_them_as_a_table(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    first = env.park(1, "RuntimeError: mailer down\nsecond line")
    env.park(2, "ValueError: " + "x" * 200)
    code, out, err = cli(capsys, "runs", "parked", env.target)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["PARKED", "ID", "RUN", "ID", "ATTEMPTS", "PARKED", "RETRY", "ERROR"]
    assert lines[1].startswith(first.id)
    assert "run-1" in lines[1]
    assert "2026-01-02T03:04:05+00:00" in lines[1]
    assert lines[1].endswith("RuntimeError: mailer down")  # first line of the error only
    assert lines[2].endswith("...")  # long errors are cut
    assert len(lines) == 3


def test_parked_json_and_limit(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    first = env.park(1)
    env.park(2)
    code, out, _ = cli(capsys, "runs", "parked", env.target, "--json", "--limit", "1")
    assert code == 0
    (line,) = out.splitlines()
    assert json.loads(line) == {
        "id": first.id,
        "workflow_name": "orders",
        "consumer": first.consumer,
        "run_id": "run-1",
        "topic": "orders-run-state-change",
        "event_id": 1,
        "status": 2,
        "attempts": 10,
        "error": "RuntimeError: mailer down",
        "parked_at": "2026-01-02T03:04:05+00:00",
        "retry_requested": False,
    }


def test_parked_by_consumer(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.park(1)
    code, out, _ = cli(capsys, "runs", "parked", env.target, "--consumer", "someone-else")
    assert (code, out.strip()) == (0, "no parked events in workflow 'orders'")


def test_retry_parked_flags_the_entry(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    entry = env.park(1)
    code, out, err = cli(capsys, "runs", "retry-parked", env.target, entry.id)
    assert (code, err) == (0, "")
    assert f"retry of parked event {entry.id} requested" in out
    assert [e.retry_requested for e in env.parked()] == [True]

    code, out, _ = cli(capsys, "runs", "parked", env.target)
    assert "requested" in out.splitlines()[1]

    code, out, _ = cli(capsys, "runs", "retry-parked", env.target, entry.id, "--json")
    assert (code, json.loads(out)) == (0, {"id": entry.id, "retry_requested": True})


def test_retry_parked_of_an_unknown_id_exits_3(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "runs", "retry-parked", env.target, "nope:topic:1")
    assert (code, out) == (3, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("statestream: error: ")
    assert "nope:topic:1" in lines[0]


def test_limit_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "runs", "parked", "mod:wf", "--limit", "0")
    assert code == 2
    assert "must be >= 1" in err
