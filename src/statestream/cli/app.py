"""The Typer application of the ``statestream`` command (see :mod:`statestream.cli`)."""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from .. import __version__
from .clicklib import UsageError, current_context
from .commands import (
    cmd_demo,
    cmd_graph,
    cmd_runs_control,
    cmd_runs_list,
    cmd_runs_parked,
    cmd_runs_retry_parked,
    cmd_runs_show,
    cmd_schema,
    cmd_worker,
    run_state_of,
)
from .dbcmd import cmd_db
from .target import parse_target
from .top import cmd_top
from .web import cmd_web

__all__ = ["EPILOG", "app"]

EPILOG = """\
\b
TARGET is module:attribute (e.g. myapp.workflows:orders): a Workflow, a list of
Workflows, or a zero-argument callable returning either. The current directory
is put on sys.path.

\b
exit codes:
  0    success
  1    operation failed (e.g. invalid run-state transition)
  2    usage error
  3    not found (run, or a run of another workflow, or database file)
  4    cannot load the target (import error, missing attribute, not a Workflow)
  5    backend error (store unreachable, corrupt or foreign file, newer schema)
  130  interrupted

\b
--debug (anywhere on the line) prints the traceback of errors.
Colour only on a terminal; set NO_COLOR to turn it off.
"""

_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Level(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


class LogFormat(enum.StrEnum):
    text = "text"
    json = "json"


class Direction(enum.StrEnum):
    LR = "LR"
    RL = "RL"
    TB = "TB"
    BT = "BT"


Handler = Callable[[SimpleNamespace], Coroutine[Any, Any, int]]


def _typer(help: str, epilog: str | None = None) -> typer.Typer:
    return typer.Typer(
        help=help,
        epilog=epilog,
        rich_markup_mode=None,
        add_completion=False,
        no_args_is_help=False,
        pretty_exceptions_enable=False,
        context_settings=_SETTINGS,
    )


app = _typer("statestream: durable, event-driven, typed workflows for asyncio.", EPILOG)
runs_app = _typer("list, inspect and control runs")
schema_app = _typer("create, inspect or migrate a SQLite database file")
db_app = _typer("create, inspect or migrate the schema of a database by URL")
app.add_typer(runs_app, name="runs")
app.add_typer(schema_app, name="schema")
app.add_typer(db_app, name="db")


def _run(handler: Handler, **values: Any) -> None:
    """Run a command's coroutine; its exit code ends the command."""
    code = asyncio.run(handler(SimpleNamespace(**values)))
    if code:
        raise typer.Exit(code)


# ------------------------------------------------------------------ parameter checks


def _target(value: str) -> str:
    try:
        parse_target(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _targets(values: list[str]) -> list[str]:
    return [_target(v) for v in values]


def _states(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        try:
            run_state_of(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return values


def _non_negative(value: int) -> int:
    if value < 0:
        raise typer.BadParameter(f"must be >= 0, got {value}")
    return value


def _positive(value: int) -> int:
    if value < 1:
        raise typer.BadParameter(f"must be >= 1, got {value}")
    return value


def _port(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= 65535:
        raise typer.BadParameter(f"must be a port number 0..65535, got {value}")
    return value


def _seconds(value: float) -> float:
    if not value >= 0 or math.isinf(value):
        raise typer.BadParameter(f"must be a finite number >= 0, got {value}")
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"statestream {__version__}")
        raise typer.Exit()


TargetArg = Annotated[
    str,
    typer.Argument(
        metavar="TARGET",
        callback=_target,
        help="module:attribute naming a Workflow, a list of them, or a callable returning them",
        show_default=False,
    ),
]
TargetsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="TARGET", callback=_targets, help="module:attribute", show_default=False
    ),
]
WorkflowOpt = Annotated[
    str | None,
    typer.Option(
        "--workflow", metavar="NAME", help="the workflow to act on, when TARGET gives several"
    ),
]
RunIdArg = Annotated[str, typer.Argument(metavar="RUN_ID", show_default=False)]
ReasonArg = Annotated[
    str | None,
    typer.Argument(metavar="REASON", help="why (stored); or --reason", show_default=False),
]
ReasonOpt = Annotated[str | None, typer.Option("--reason", metavar="TEXT", help="why (stored)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="print the traceback of errors")] = False,
) -> None:
    """statestream: durable, event-driven, typed workflows for asyncio."""


# ------------------------------------------------------------------ worker


@app.command(
    "worker",
    short_help="run the background processes of workflows until SIGINT/SIGTERM",
    context_settings=_SETTINGS,
)
def worker(
    targets: TargetsArg,
    grace: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            callback=_seconds,
            help="how long in-flight steps may run on after the signal",
        ),
    ] = 10.0,
    log_level: Annotated[
        Level, typer.Option(case_sensitive=False, help="logging level")
    ] = Level.info,
    log_format: Annotated[
        LogFormat,
        typer.Option(help="text lines, or one JSON object per line with the run's fields"),
    ] = LogFormat.text,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT",
            callback=_port,
            help="serve Prometheus metrics on this port (needs statestream[metrics])",
        ),
    ] = None,
    metrics_addr: Annotated[
        str, typer.Option(metavar="ADDR", help="the address to serve metrics on")
    ] = "0.0.0.0",
    metrics_interval: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            callback=_seconds,
            help="how often the metrics read the stores (runs, outbox, timers)",
        ),
    ] = 15.0,
) -> None:
    """Start every workflow the targets give and run their background processes (step
    consumers, outbox relay, timeouts, hooks...) until SIGINT or SIGTERM; then stop, letting
    in-flight steps finish for up to --grace seconds. A second signal stops at once (exit 1)."""
    _run(
        cmd_worker,
        targets=[parse_target(t) for t in targets],
        grace=grace,
        log_level=log_level.value,
        log_format=log_format.value,
        metrics_port=metrics_port,
        metrics_addr=metrics_addr,
        metrics_interval=metrics_interval,
    )


# ------------------------------------------------------------------ runs


@runs_app.command("list", short_help="list the runs of a workflow (oldest first)")
def runs_list(
    target: TargetArg,
    workflow: WorkflowOpt = None,
    status: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME", help="only runs at this status (name or number; repeatable)"),
    ] = None,
    state: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            callback=_states,
            help="only runs in this run state, e.g. running, paused (repeatable)",
        ),
    ] = None,
    foreign_id: Annotated[
        list[str] | None,
        typer.Option(metavar="ID", help="only runs of this foreign ID (repeatable)"),
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", callback=_non_negative, help="at most N runs")
    ] = 25,
    offset: Annotated[
        int, typer.Option(metavar="N", callback=_non_negative, help="skip the first N runs")
    ] = 0,
    desc: Annotated[bool, typer.Option("--desc", help="newest first")] = False,
    json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """List the runs of a workflow (oldest first), as a table or JSON lines."""
    _run(
        cmd_runs_list,
        target=parse_target(target),
        workflow=workflow,
        status=status,
        state=[run_state_of(s) for s in state or ()],
        foreign_id=foreign_id,
        limit=limit,
        offset=offset,
        desc=desc,
        json=json,
    )


@runs_app.command("show", short_help="show every field of a run and its object")
def runs_show(
    target: TargetArg,
    run_id: RunIdArg,
    workflow: WorkflowOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print one JSON document")] = False,
) -> None:
    """Show every field of a run and its object."""
    _run(cmd_runs_show, target=parse_target(target), run_id=run_id, workflow=workflow, json=json)


def _control(
    action: str,
    target: str,
    run_id: str,
    workflow: str | None,
    json: bool,
    reason: str | None = None,
    reason_option: str | None = None,
) -> None:
    if reason is not None and reason_option is not None and reason != reason_option:
        raise UsageError(
            "give the reason once: as REASON or as --reason, not both", current_context()
        )
    _run(
        cmd_runs_control,
        action=action,
        target=parse_target(target),
        run_id=run_id,
        workflow=workflow,
        json=json,
        reason=reason if reason is not None else reason_option or "",
    )


@runs_app.command("pause", short_help="pause a run (consumers leave it alone until resumed)")
def runs_pause(
    target: TargetArg,
    run_id: RunIdArg,
    reason: ReasonArg = None,
    reason_option: ReasonOpt = None,
    workflow: WorkflowOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the run as JSON")] = False,
) -> None:
    """Pause a run: consumers leave it alone until it is resumed. The reason is stored."""
    _control("pause", target, run_id, workflow, json, reason, reason_option)


@runs_app.command("resume", short_help="resume a paused run")
def runs_resume(
    target: TargetArg,
    run_id: RunIdArg,
    workflow: WorkflowOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the run as JSON")] = False,
) -> None:
    """Resume a paused run."""
    _control("resume", target, run_id, workflow, json)


@runs_app.command("cancel", short_help="cancel a running or paused run for good")
def runs_cancel(
    target: TargetArg,
    run_id: RunIdArg,
    reason: ReasonArg = None,
    reason_option: ReasonOpt = None,
    workflow: WorkflowOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the run as JSON")] = False,
) -> None:
    """Cancel a running or paused run for good. The reason is stored."""
    _control("cancel", target, run_id, workflow, json, reason, reason_option)


@runs_app.command("delete", short_help="request deletion of a finished run's data")
def runs_delete(
    target: TargetArg,
    run_id: RunIdArg,
    reason: ReasonArg = None,
    reason_option: ReasonOpt = None,
    workflow: WorkflowOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the run as JSON")] = False,
) -> None:
    """Request deletion of a finished run's data. The reason is stored."""
    _control("delete", target, run_id, workflow, json, reason, reason_option)


@runs_app.command("parked", short_help="list events a consumer gave up on after repeated errors")
def runs_parked(
    target: TargetArg,
    workflow: WorkflowOpt = None,
    consumer: Annotated[
        str | None, typer.Option(metavar="NAME", help="only those of this consumer (role)")
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", callback=_positive, help="at most N events")
    ] = 100,
    json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """List the parked events of a workflow (oldest first): events a hook, connector, data
    deleter or pause retry kept failing on (park_after_errors times), or a step whose automatic
    pause failed. The consumer moved past them; 'retry-parked' handles one again."""
    _run(
        cmd_runs_parked,
        target=parse_target(target),
        workflow=workflow,
        consumer=consumer,
        limit=limit,
        json=json,
    )


@runs_app.command("retry-parked", short_help="ask for a parked event to be handled again")
def runs_retry_parked(
    target: TargetArg,
    parked_id: Annotated[
        str,
        typer.Argument(metavar="PARKED_ID", help="the ID 'runs parked' shows", show_default=False),
    ],
    workflow: WorkflowOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Flag a parked event for a retry. The consumer that parked it, in the worker that holds
    its role, handles it again within a few seconds: the entry is deleted if that succeeds and
    parked again, with the new error, if it fails."""
    _run(
        cmd_runs_retry_parked,
        target=parse_target(target),
        parked_id=parked_id,
        workflow=workflow,
        json=json,
    )


# ------------------------------------------------------------------ top, graph, web


@app.command("top", short_help="live view of a workflow's processes, lag and rates")
def top(
    target: TargetArg,
    workflow: WorkflowOpt = None,
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", callback=_seconds, help="refresh every SECONDS")
    ] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
    max_runs: Annotated[
        int,
        typer.Option(
            metavar="N",
            callback=_positive,
            help="read at most N (newest) runs per frame for the rates",
        ),
    ] = 10_000,
) -> None:
    """Run the workflow's background processes in this process (like a worker, sharing the
    roles with the others) and show them live: each process with its role, state, lag,
    errors and parked events, the runs by run state and the transitions per second. Ctrl+C
    stops. --once waits for the processes to start, prints one frame and stops."""
    _run(
        cmd_top,
        target=parse_target(target),
        workflow=workflow,
        interval=interval or 1.0,
        once=once,
        max_runs=max_runs,
    )


@app.command("graph", short_help="print the workflow's graph as a Mermaid diagram")
def graph(
    target: TargetArg,
    workflow: WorkflowOpt = None,
    direction: Annotated[
        Direction, typer.Option(case_sensitive=False, help="the diagram's direction")
    ] = Direction.LR,
) -> None:
    """Print the workflow's graph as a Mermaid diagram."""
    _run(cmd_graph, target=parse_target(target), workflow=workflow, direction=direction.value)


@app.command("web", short_help="serve the web UI: list, inspect and control runs in a browser")
def web(
    targets: TargetsArg,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(callback=_port, help="port to listen on")] = 8080,
    open_reads: Annotated[
        bool,
        typer.Option(
            "--open-reads",
            help="let anyone who can reach the server read runs (writes still need the token)",
        ),
    ] = False,
    title: Annotated[str, typer.Option(help="shown in the page header")] = "statestream",
    log_level: Annotated[
        Level, typer.Option(case_sensitive=False, help="uvicorn's logging level")
    ] = Level.warning,
) -> None:
    """Serve the web UI of the workflows the targets give (it does not start them: run a
    worker for that). Writes need the token in STATESTREAM_WEB_TOKEN, reads that or
    STATESTREAM_WEB_READ_TOKEN, unless --open-reads. Needs pip install 'statestream[web]'."""
    _run(
        cmd_web,
        targets=[parse_target(t) for t in targets],
        host=host,
        port=port,
        open_reads=open_reads,
        title=title,
        log_level=log_level.value,
    )


# ------------------------------------------------------------------ schema, db, demo

PathArg = Annotated[str, typer.Argument(metavar="PATH", help="the SQLite file", show_default=False)]
ForeignOpt = Annotated[
    bool,
    typer.Option(
        "--allow-foreign", help="add the statestream tables to a database that holds other tables"
    ),
]


@schema_app.command("create", short_help="create the file with the statestream schema")
def schema_create(path: PathArg, allow_foreign: ForeignOpt = False) -> None:
    """Create the file with the statestream schema (or bring it up to date)."""
    _run(cmd_schema, action="create", path=path, allow_foreign=allow_foreign)


@schema_app.command("version", short_help="print the schema version of an existing file")
def schema_version(path: PathArg) -> None:
    """Print the schema version of an existing file (it is not changed)."""
    _run(cmd_schema, action="version", path=path, allow_foreign=False)


@schema_app.command("migrate", short_help="migrate an existing file to this release's schema")
def schema_migrate(path: PathArg, allow_foreign: ForeignOpt = False) -> None:
    """Migrate an existing file to this release's schema."""
    _run(cmd_schema, action="migrate", path=path, allow_foreign=allow_foreign)


UrlOpt = Annotated[
    str,
    typer.Option(
        "--url", help="postgresql://USER:PASSWORD@HOST:PORT/DB, mysql://..., or sqlite:///PATH"
    ),
]
PrefixOpt = Annotated[str, typer.Option("--prefix", help="table-name prefix")]


@db_app.command("migrate", short_help="create the statestream schema, or migrate it")
def db_migrate(url: UrlOpt, prefix: PrefixOpt = "statestream_") -> None:
    """Create the statestream schema, or migrate it to this release's."""
    _run(cmd_db, action="migrate", url=url, prefix=prefix)


@db_app.command("version", short_help="print the statestream schema version")
def db_version(url: UrlOpt, prefix: PrefixOpt = "statestream_") -> None:
    """Print the statestream schema version (nothing is changed)."""
    _run(cmd_db, action="version", url=url, prefix=prefix)


@app.command("demo", short_help="run the order-pipeline demo (python -m statestream.demo)")
def demo(
    orders: Annotated[int, typer.Option(callback=_non_negative, help="orders")] = 200,
    payment_window: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", callback=_seconds, help="how long an order waits for payment"
        ),
    ] = 1.0,
    db: Annotated[
        str | None, typer.Option(metavar="PATH", help="SQLite file to use (replaced)")
    ] = None,
    memory: Annotated[bool, typer.Option("--memory", help="use the in-memory adapters")] = False,
) -> None:
    """Run the order-pipeline demo (python -m statestream.demo)."""
    if db is not None and memory:
        raise UsageError("--db and --memory cannot be used together", current_context())
    _run(cmd_demo, orders=orders, payment_window=payment_window, db=db, memory=memory)
