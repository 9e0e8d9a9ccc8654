"""The ``statestream`` command line, driven in-process through ``main(argv)``.

Every test gets a fresh workflow module in its tmp dir, on an SQLite file there. Two tests run
the command in a subprocess: ``--help`` (the console script and ``python -m statestream.cli``)
and the worker, which runs a triggered run to completion and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import statestream
from statestream import RunState
from statestream.adapters.sqlite import SCHEMA_VERSION
from statestream.cli import main
from statestream.errors import AdapterConnectionError

MODULE = """
import enum
from dataclasses import dataclass

from statestream import Builder
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
)

DB = {db!r}
JUNK = {junk!r}
DATABASES = []


class Status(enum.IntEnum):
    CREATED = 1
    PAID = 2
    SHIPPED = 3


@dataclass
class Order:
    id: str = ""
    amount: int = 0


async def pay(run):
    return Status.PAID


async def ship(run):
    return Status.SHIPPED


def build(name="orders", path=DB, keep=True):
    db = SqliteDatabase(path, synchronous="NORMAL")
    if keep:
        DATABASES.append(db)
    b = Builder(name, Order, Status)
    b.defaults(polling_frequency=0.02, error_backoff=0.05)
    b.add_step(Status.CREATED, pay, Status.PAID)
    b.add_step(Status.PAID, ship, Status.SHIPPED)
    return b.build(
        SqliteStreamer(db), SqliteRecordStore(db), SqliteRoleScheduler(db, poll_interval=0.05)
    )


orders = build()
not_a_workflow = 42


def pair():
    return [build("orders"), build("refunds")]


async def async_factory():
    return build()


def broken():
    raise RuntimeError("factory exploded")


def corrupt():
    return build(path=JUNK, keep=False)  # opening fails, so its thread ends by itself


async def close_all():
    for db in DATABASES:
        await db.close()
"""


@dataclass
class Env:
    name: str
    dir: Path
    db: Path
    junk: Path
    mod: ModuleType

    def target(self, attr: str = "orders") -> str:
        return f"{self.name}:{attr}"

    def trigger(self, *foreign_ids: str) -> list[str]:
        async def go() -> list[str]:
            return [
                await self.mod.orders.trigger(f, initial=self.mod.Order(f, i))
                for i, f in enumerate(foreign_ids)
            ]

        return asyncio.run(go())

    def lookup(self, run_id: str) -> Any:
        return asyncio.run(self.mod.orders.store.lookup(run_id))


def write_module(directory: Path) -> tuple[str, Path, Path]:
    name = f"ss_cli_wf_{uuid.uuid4().hex[:10]}"
    db, junk = directory / "runs.db", directory / "junk.db"
    (directory / f"{name}.py").write_text(MODULE.format(db=str(db), junk=str(junk)))
    junk.write_bytes(b"this is not an SQLite database, just some bytes " * 4)
    return name, db, junk


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.delenv("NO_COLOR", raising=False)
    name, db, junk = write_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(name)
    yield Env(name, tmp_path, db, junk, mod)
    asyncio.run(mod.close_all())
    for key in [k for k in sys.modules if k.startswith(name)]:
        del sys.modules[key]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("statestream: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in err


# ------------------------------------------------------------------ help, version, usage

COMMANDS = [
    [],
    ["worker"],
    ["runs"],
    ["runs", "list"],
    ["runs", "show"],
    ["runs", "pause"],
    ["runs", "resume"],
    ["runs", "cancel"],
    ["runs", "delete"],
    ["runs", "parked"],
    ["runs", "retry-parked"],
    ["top"],
    ["graph"],
    ["web"],
    ["db"],
    ["db", "migrate"],
    ["db", "version"],
    ["schema"],
    ["schema", "create"],
    ["schema", "version"],
    ["schema", "migrate"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "statestream")
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, _ = cli(capsys, *command, "--help")
    assert code == 0
    assert out.startswith(f"Usage: statestream {' '.join(command)}".rstrip())
    assert "\x1b[" not in out


def test_top_level_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    assert "exit codes:" in out
    for line in ("0    success", "1    operation failed", "2    usage error", "3    not found"):
        assert line in out
    assert "4    cannot load the target" in out
    assert "5    backend error" in out
    for command in ("worker", "runs", "top", "graph", "schema", "demo"):
        assert command in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--version")
    assert (code, out.strip()) == (0, f"statestream {statestream.__version__}")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["runs"],
        ["frobnicate"],
        ["runs", "list"],
        ["runs", "list", "no-colon"],
        ["runs", "list", "mod:attr", "--limit", "-1"],
        ["runs", "list", "mod:attr", "--state", "sleepy"],
        ["runs", "resume", "mod:attr", "run", "--reason", "resume takes no reason"],
        ["worker", "mod:attr", "--grace", "soon"],
        ["demo", "--db", "x.db", "--memory"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "Usage: statestream" in err


# ------------------------------------------------------------------ runs list


def test_list_prints_a_plain_table_when_piped(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    ids = env.trigger("order-1", "order-2", "order-3")
    code, out, err = cli(capsys, "runs", "list", env.target())
    assert (code, err) == (0, "")
    lines = out.splitlines()
    header = "RUN ID                            FOREIGN ID  STATUS   RUN STATE  VERSION  UPDATED"
    assert lines[0] == header
    assert [line.split()[0] for line in lines[1:]] == ids
    assert lines[1].split()[1:5] == ["order-1", "CREATED", "Initiated", "1"]
    assert "\x1b" not in out


def test_list_colours_only_on_a_terminal_without_no_color(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env.trigger("order-1")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    assert main(["runs", "list", env.target()]) == 0
    assert "\x1b[" in screen.getvalue()

    monkeypatch.setenv("NO_COLOR", "1")
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    assert main(["runs", "list", env.target()]) == 0
    assert "\x1b" not in screen.getvalue()
    assert "order-1" in screen.getvalue()


def test_list_json_lines_order_and_paging(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    ids = env.trigger("a", "b", "c", "d")
    code, out, _ = cli(capsys, "runs", "list", env.target(), "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [r["run_id"] for r in rows] == ids
    assert rows[0] == {
        "workflow_name": "orders",
        "run_id": ids[0],
        "foreign_id": "a",
        "status": 1,
        "status_name": "CREATED",
        "run_state": "INITIATED",
        "version": 1,
        "created_at": rows[0]["created_at"],
        "updated_at": rows[0]["updated_at"],
        "run_state_reason": "",
    }
    _, out, _ = cli(capsys, "runs", "list", env.target(), "--json", "--desc", "--limit", "2")
    assert [json.loads(line)["run_id"] for line in out.splitlines()] == [ids[3], ids[2]]
    _, out, _ = cli(capsys, "runs", "list", env.target(), "--json", "--offset", "3")
    assert [json.loads(line)["run_id"] for line in out.splitlines()] == [ids[3]]


def test_list_filters(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    ids = env.trigger("a", "b", "c")
    assert cli(capsys, "runs", "pause", env.target(), ids[1])[0] == 0

    def listed(*options: str) -> list[str]:
        code, out, _ = cli(capsys, "runs", "list", env.target(), "--json", *options)
        assert code == 0
        return [json.loads(line)["run_id"] for line in out.splitlines()]

    assert listed("--foreign-id", "c") == [ids[2]]
    assert listed("--foreign-id", "a", "--foreign-id", "c") == [ids[0], ids[2]]
    assert listed("--state", "paused") == [ids[1]]
    assert listed("--state", "Initiated") == [ids[0], ids[2]]
    assert listed("--status", "created", "--state", "PAUSED") == [ids[1]]
    assert listed("--status", "1", "--foreign-id", "a") == [ids[0]]
    assert listed("--status", "SHIPPED") == []
    code, out, _ = cli(capsys, "runs", "list", env.target(), "--status", "SHIPPED")
    assert (code, out.strip()) == (0, "no runs of workflow 'orders' match")


def test_list_unknown_status_is_a_usage_error(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "runs", "list", env.target(), "--status", "LOST")
    assert code == 2
    assert_one_error_line(err, "no status 'LOST'", "CREATED, PAID, SHIPPED")


# ------------------------------------------------------------------ runs show


def test_show_prints_fields_and_object(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    (run_id,) = env.trigger("order-7")
    code, out, _ = cli(capsys, "runs", "show", env.target(), run_id)
    assert code == 0
    assert f"run_id              {run_id}" in out
    assert "run_state           Initiated" in out
    assert "object:" in out
    assert '"id": "order-7"' in out
    assert "\x1b" not in out

    code, out, _ = cli(capsys, "runs", "show", env.target(), run_id, "--json")
    data = json.loads(out)
    assert code == 0
    assert data["run_id"] == run_id
    assert data["foreign_id"] == "order-7"
    assert data["status_name"] == "CREATED"
    assert data["run_state"] == "INITIATED"
    assert data["object_encoding"] == "json"
    assert data["object"] == {"id": "order-7", "amount": 0}
    assert {"created_at", "updated_at", "version", "auto_resumes", "status_description"} <= set(
        data
    )


# ------------------------------------------------------------------ run controls


def test_pause_resume_cancel_delete(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    (run_id,) = env.trigger("order-1")
    target = env.target()

    code, out, _ = cli(capsys, "runs", "pause", target, run_id, "--reason", "checking stock")
    assert code == 0
    assert out.strip() == f"run {run_id} (order-1): Paused at CREATED, version 2"
    record = env.lookup(run_id)
    assert (record.run_state, record.run_state_reason) == (RunState.PAUSED, "checking stock")

    code, out, _ = cli(capsys, "runs", "resume", target, run_id, "--json")
    assert code == 0
    assert json.loads(out)["run_state"] == "RUNNING"
    assert env.lookup(run_id).run_state is RunState.RUNNING

    assert cli(capsys, "runs", "cancel", target, run_id, "--reason", "customer left")[0] == 0
    record = env.lookup(run_id)
    assert (record.run_state, record.run_state_reason) == (RunState.CANCELLED, "customer left")

    code, out, _ = cli(capsys, "runs", "delete", target, run_id)
    assert code == 0
    assert "Requested Data Deleted" in out
    assert env.lookup(run_id).run_state is RunState.REQUESTED_DATA_DELETED


@pytest.mark.parametrize(
    ("before", "action", "fragment", "state"),
    [
        ((), "cancel", "pause it before cancelling it", RunState.INITIATED),
        ((), "delete", "cannot go from Initiated to Requested Data Deleted", RunState.INITIATED),
        (("pause",), "pause", "cannot go from Paused to Paused", RunState.PAUSED),
        (("pause", "cancel"), "resume", "cannot go from Cancelled to Running", RunState.CANCELLED),
    ],
)
def test_invalid_transition_exits_1(
    env: Env,
    capsys: pytest.CaptureFixture[str],
    before: tuple[str, ...],
    action: str,
    fragment: str,
    state: RunState,
) -> None:
    (run_id,) = env.trigger("order-1")
    for step in before:
        assert cli(capsys, "runs", step, env.target(), run_id)[0] == 0
    code, out, err = cli(capsys, "runs", action, env.target(), run_id)
    assert (code, out) == (1, "")
    assert_one_error_line(err, fragment)
    assert env.lookup(run_id).run_state is state


@pytest.mark.parametrize("command", ["show", "pause", "resume", "cancel", "delete"])
def test_unknown_run_exits_3(env: Env, capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, err = cli(capsys, "runs", command, env.target(), "no-such-run")
    assert (code, out) == (3, "")
    assert_one_error_line(err, "no-such-run")


def test_run_of_another_workflow_is_not_found(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    (run_id,) = env.trigger("order-1")
    for command in ("show", "pause"):
        code, _, err = cli(
            capsys, "runs", command, env.target("pair"), run_id, "--workflow", "refunds"
        )
        assert code == 3
        assert_one_error_line(err, "belongs to workflow 'orders'")
    assert env.lookup(run_id).run_state is RunState.INITIATED


def test_target_with_several_workflows_needs_workflow_option(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.trigger("order-1")
    code, out, err = cli(capsys, "runs", "list", env.target("pair"))
    assert (code, out) == (2, "")
    assert_one_error_line(err, "2 workflows ('orders', 'refunds')", "--workflow")
    code, out, _ = cli(capsys, "runs", "list", env.target("pair"), "--workflow", "orders")
    assert code == 0
    assert "order-1" in out
    code, _, err = cli(capsys, "runs", "list", env.target("pair"), "--workflow", "nope")
    assert code == 2
    assert_one_error_line(err, "no workflow 'nope'")


def test_async_factory_target(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.trigger("order-1")
    code, out, _ = cli(capsys, "runs", "list", env.target("async_factory"))
    assert code == 0
    assert "order-1" in out


# ------------------------------------------------------------------ load and backend errors


@pytest.mark.parametrize(
    ("attr", "fragment"),
    [
        ("nope", "has no attribute 'nope'"),
        ("not_a_workflow", "is an int, not a Workflow"),
        ("broken", "factory exploded"),
        ("Order", "is a type, not a Workflow"),
    ],
)
def test_target_that_cannot_be_loaded_exits_4(
    env: Env, capsys: pytest.CaptureFixture[str], attr: str, fragment: str
) -> None:
    code, out, err = cli(capsys, "runs", "list", env.target(attr))
    assert (code, out) == (4, "")
    assert_one_error_line(err, fragment)


def test_module_that_cannot_be_imported_exits_4(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "graph", "ss_cli_no_such_module:wf")
    assert code == 4
    assert_one_error_line(err, "cannot import module 'ss_cli_no_such_module'")

    (env.dir / f"{env.name}_boom.py").write_text("raise ValueError('bad config')\n")
    importlib.invalidate_caches()
    code, _, err = cli(capsys, "graph", f"{env.name}_boom:wf")
    assert code == 4
    assert_one_error_line(err, "ValueError: bad config")


def test_target_is_imported_from_the_current_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, _, _ = write_module(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    try:
        code, out, _ = cli(capsys, "graph", f"{name}:orders")
        assert code == 0
        assert "```mermaid" in out
    finally:
        asyncio.run(sys.modules[name].close_all())
        del sys.modules[name]


@pytest.mark.parametrize("command", ["list", "show", "pause"])
def test_backend_error_exits_5(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    async def unreachable(*args: object, **kwargs: object) -> object:
        raise AdapterConnectionError("cannot reach the database: connection refused")

    monkeypatch.setattr(env.mod.orders.store, "list", unreachable)
    monkeypatch.setattr(env.mod.orders.store, "lookup", unreachable)
    args = [env.target()] if command == "list" else [env.target(), "some-run"]
    code, out, err = cli(capsys, "runs", command, *args)
    assert (code, out) == (5, "")
    assert_one_error_line(err, "cannot reach the database: connection refused")


def test_corrupt_database_file_exits_5(env: Env) -> None:
    # In a subprocess: SqliteDatabase's first operation on a file that fails to open can wait
    # for ever (see the xfailed test_first_operation_on_a_bad_file_never_hangs).
    command = [sys.executable, "-m", "statestream.cli", "runs", "list", env.target("corrupt")]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=env.dir)
    except subprocess.TimeoutExpired:
        pytest.xfail("SqliteDatabase: the first operation on a bad file hung (known race)")
    assert (done.returncode, done.stdout) == (5, "")
    assert_one_error_line(done.stderr, "not a database")


def test_unexpected_error_exits_1_and_debug_shows_the_traceback(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_list(*args: object, **kwargs: object) -> list[object]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(env.mod.orders.store, "list", failing_list)
    code, _, err = cli(capsys, "runs", "list", env.target())
    assert code == 1
    assert_one_error_line(err, "unexpected RuntimeError: disk on fire", "--debug")

    for argv in (
        ["--debug", "runs", "list", env.target()],
        ["runs", "list", env.target(), "--debug"],
    ):
        code, _, err = cli(capsys, *argv)
        assert code == 1
        assert "Traceback (most recent call last)" in err
        assert (
            err.strip().splitlines()[-1]
            == "statestream: error: unexpected RuntimeError: disk on fire"
        )


# ------------------------------------------------------------------ graph


def test_graph_prints_mermaid(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "graph", env.target())
    assert code == 0
    assert out == env.mod.orders.mermaid().rstrip("\n") + "\n"
    assert "direction LR" in out
    code, out, _ = cli(
        capsys, "graph", env.target("pair"), "--workflow", "refunds", "--direction", "tb"
    )
    assert code == 0
    assert "direction TB" in out
    assert "title: Workflow diagram of refunds" in out


# ------------------------------------------------------------------ schema


def test_schema_create_version_migrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new.db"
    code, out, _ = cli(capsys, "schema", "create", str(path))
    assert code == 0
    assert out.strip() == f"created {path} with statestream schema version {SCHEMA_VERSION}"
    assert path.exists()
    code, out, err = cli(capsys, "schema", "version", str(path))
    assert (code, out, err) == (0, f"{SCHEMA_VERSION}\n", "")
    code, out, _ = cli(capsys, "schema", "migrate", str(path))
    assert code == 0
    assert "(up to date)" in out
    code, out, _ = cli(capsys, "schema", "create", str(path))
    assert code == 0
    assert "(up to date)" in out


def test_schema_of_a_missing_file_is_not_found_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing.db"
    for action in ("version", "migrate"):
        code, out, err = cli(capsys, "schema", action, str(path))
        assert (code, out) == (3, "")
        assert_one_error_line(err, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_schema_migrate_brings_an_older_file_up_to_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.db"
    path.touch()  # an empty file is an SQLite database without tables: version 0
    code, out, err = cli(capsys, "schema", "version", str(path))
    assert (code, out) == (0, "0\n")
    assert "schema create" in err
    code, out, _ = cli(capsys, "schema", "migrate", str(path))
    assert code == 0
    assert out.strip() == f"migrated {path} from statestream schema version 0 to {SCHEMA_VERSION}"


@pytest.mark.parametrize("action", ["create", "version", "migrate"])
def test_schema_of_a_corrupt_file_exits_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    path = tmp_path / "corrupt.db"
    content = b"definitely not SQLite " * 20
    path.write_bytes(content)
    code, out, err = cli(capsys, "schema", action, str(path))
    assert (code, out) == (5, "")
    assert_one_error_line(err, "not a database")
    assert path.read_bytes() == content


@pytest.mark.parametrize("action", ["create", "version", "migrate"])
def test_schema_of_a_foreign_database_exits_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    code, _, err = cli(capsys, "schema", action, str(path))
    assert code == 5
    assert_one_error_line(err, "database of something else", "users")
    if action != "version":
        code, out, _ = cli(capsys, "schema", action, str(path), "--allow-foreign")
        assert code == 0
        assert "migrated" in out


@pytest.mark.parametrize("action", ["create", "version", "migrate"])
def test_schema_newer_than_this_release_exits_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    path = tmp_path / "future.db"
    assert main(["schema", "create", str(path)]) == 0
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE statestream_meta SET value = '999' WHERE key = 'schema_version'")
    conn.close()
    capsys.readouterr()
    code, out, err = cli(capsys, "schema", action, str(path))
    assert (code, out) == (5, "")
    assert_one_error_line(err, "schema version 999", "newer than this release")


def test_schema_in_a_missing_directory_exits_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "schema", "create", str(tmp_path / "no" / "such" / "x.db"))
    assert code == 5
    assert_one_error_line(err, "does not exist")
    assert not (tmp_path / "no").exists()


# ------------------------------------------------------------------ demo


def test_demo_passes_its_options_to_the_demo(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from statestream import demo

    calls: list[tuple[Any, ...]] = []

    async def fake_main(
        orders: int, payment_window: float, db_path: str | None = None, memory: bool = False
    ) -> int:
        calls.append((orders, payment_window, db_path, memory))
        return 0 if orders else 1

    monkeypatch.setattr(demo, "main", fake_main)
    assert main(["demo"]) == 0
    assert main(["demo", "--orders", "0", "--payment-window", "0.5", "--memory"]) == 1
    assert main(["demo", "--db", "x.db"]) == 0
    assert calls == [(200, 1.0, None, False), (0, 0.5, None, True), (200, 1.0, "x.db", False)]


# ------------------------------------------------------------------ subprocesses


def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "statestream"
    if not script.exists():
        pytest.skip("the statestream console script is not installed next to the interpreter")
    return [str(script)]


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_help_in_a_subprocess(how: str, tmp_path: Path) -> None:
    command = (
        _console_script() if how == "console script" else [sys.executable, "-m", "statestream.cli"]
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: statestream")
    assert "exit codes:" in done.stdout
    assert "\x1b" not in done.stdout
    done = subprocess.run(
        [*command, "runs", "show", "nomodule_here:wf", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 4
    assert done.stderr.startswith("statestream: error: cannot import module 'nomodule_here'")


def test_worker_runs_workflows_until_sigterm(env: Env) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "statestream.cli", "worker", env.target(), "--grace", "2"],
        cwd=env.dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        (run_id,) = env.trigger("order-1")  # the worker need not be up: the outbox keeps it

        async def completed() -> bool:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and process.poll() is None:
                record = await env.mod.orders.store.lookup(run_id)
                if record.run_state is RunState.COMPLETED:
                    return True
                await asyncio.sleep(0.05)
            return False

        assert asyncio.run(completed()), "the worker did not complete the run within 10 s"
        assert env.lookup(run_id).status == env.mod.Status.SHIPPED
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=8)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "created-consumer-1-of-1" in out
    assert "outbox-consumer" in out
    assert "SIGTERM received" in out
    assert out.rstrip().endswith("statestream worker: stopped")
    assert "\x1b" not in out


def test_worker_reports_a_target_that_cannot_be_loaded(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "worker", env.target(), env.target("not_a_workflow"))
    assert (code, out) == (4, "")
    assert_one_error_line(err, "not_a_workflow")


def test_module_docstring_documents_exit_codes() -> None:
    from statestream import cli as module

    doc = textwrap.dedent(module.__doc__ or "")
    for code in ("0  success", "1  the operation failed", "2  usage error", "3  not found"):
        assert code in doc
    assert "4  the target cannot be loaded" in doc
    assert "5  backend error" in doc
