"""The ``statestream`` command line: run workers, inspect and control runs, manage SQLite files.

Commands (``statestream COMMAND --help`` for each)::

    statestream worker TARGET [TARGET ...] [--grace S] [--log-level LEVEL]
                       [--log-format text|json] [--metrics-port PORT]
    statestream runs list TARGET [--status NAME] [--state NAME] [--foreign-id ID]
                                 [--limit N] [--offset N] [--desc] [--json]
    statestream runs show TARGET RUN_ID [--json]
    statestream runs pause|cancel|delete TARGET RUN_ID [--reason TEXT] [--json]
    statestream runs resume TARGET RUN_ID [--json]
    statestream runs parked TARGET [--consumer NAME] [--limit N] [--json]
    statestream runs retry-parked TARGET PARKED_ID [--json]
    statestream graph TARGET [--direction LR|RL|TB|BT]
    statestream web TARGET [TARGET ...] [--host H] [--port N] [--open-reads]
    statestream schema create|migrate PATH [--allow-foreign]
    statestream schema version PATH
    statestream db migrate|version --url URL [--prefix PREFIX]
    statestream demo [--orders N] [--payment-window S] [--db PATH | --memory]
    statestream --version

``TARGET`` is ``module:attribute`` (``myapp.workflows:orders``), imported with the current
directory on ``sys.path``. The attribute is a :class:`~statestream.Workflow`, a list of them, or a
zero-argument callable (sync or async) returning either. Commands that act on one workflow take
``--workflow NAME`` to choose among several.

Exit codes, for scripts:

    0  success
    1  the operation failed (an invalid run-state transition, a concurrent change, an error
       in the workflow's code)
    2  usage error (bad arguments, unknown status name, several workflows and no --workflow)
    3  not found (no such run, a run of another workflow, a missing database file)
    4  the target cannot be loaded (import error, missing attribute, not a Workflow)
    5  backend error (the store failed: unreachable, corrupt or foreign database, newer schema)
    130  interrupted (Ctrl+C outside the worker)

Errors are one line on stderr, ``statestream: error: ...``; ``--debug`` adds the traceback.
Output is coloured only on a terminal and when ``NO_COLOR`` is not set.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .. import __version__
from ..errors import (
    AdapterError,
    InvalidInput,
    InvalidTransition,
    RecordNotFound,
    VersionConflict,
    WorkflowError,
)
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
from .output import Style
from .target import (
    EXIT_BACKEND,
    EXIT_FAILED,
    EXIT_LOAD,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    parse_target,
)
from .web import add_web_arguments, cmd_web

__all__ = [
    "EXIT_BACKEND",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOAD",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EXIT_INTERRUPTED = 130

_EPILOG = """\
TARGET is module:attribute (e.g. myapp.workflows:orders): a Workflow, a list of
Workflows, or a zero-argument callable returning either. The current directory
is put on sys.path.

exit codes:
  0    success
  1    operation failed (e.g. invalid run-state transition)
  2    usage error
  3    not found (run, or a run of another workflow, or database file)
  4    cannot load the target (import error, missing attribute, not a Workflow)
  5    backend error (store unreachable, corrupt or foreign file, newer schema)
  130  interrupted

Colour only on a terminal; set NO_COLOR to turn it off.
"""

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _port(text: str) -> int:
    value = _non_negative(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {value}")
    return value


def _direction(text: str) -> str:
    value = text.upper()
    if value not in ("LR", "RL", "TB", "BT"):
        raise argparse.ArgumentTypeError(f"must be LR, RL, TB or BT, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``statestream`` command (every command has ``--help``)."""
    # --debug is accepted before or after the command: a parent parser whose default is
    # SUPPRESS, so the sub-parser does not overwrite a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of errors",
    )

    target = argparse.ArgumentParser(add_help=False)
    target.add_argument(
        "target",
        metavar="TARGET",
        type=parse_target,
        help="module:attribute naming a Workflow, a list of them, or a callable returning them",
    )
    target.add_argument(
        "--workflow",
        metavar="NAME",
        help="the workflow to act on, when TARGET gives several",
    )

    parser = argparse.ArgumentParser(
        prog="statestream",
        description="statestream: durable, event-driven, typed workflows for asyncio.",
        epilog=_EPILOG,
        formatter_class=_Formatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"statestream {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        help: str,
        handler: Handler | None,
        parents: Sequence[argparse.ArgumentParser] = (),
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(
            name,
            help=help,
            description=description or help,
            parents=[common, *parents],
            formatter_class=_Formatter,
        )
        if handler is not None:
            sub.set_defaults(handler=handler)
        return sub

    # worker
    worker = add(
        commands,
        "worker",
        "run the background processes of workflows until SIGINT/SIGTERM",
        cmd_worker,
        description=(
            "Start every workflow the targets give and run their background processes (step\n"
            "consumers, outbox relay, timeouts, hooks...) until SIGINT or SIGTERM; then stop,\n"
            "letting in-flight steps finish for up to --grace seconds. A second signal stops\n"
            "at once (exit code 1)."
        ),
    )
    worker.add_argument(
        "targets", metavar="TARGET", nargs="+", type=parse_target, help="module:attribute"
    )
    worker.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long in-flight steps may run on after the signal (default: 10)",
    )
    worker.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=("debug", "info", "warning", "error", "critical"),
        help="logging level (default: info)",
    )
    worker.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="text lines, or one JSON object per line with the run's fields (default: text)",
    )
    worker.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics on this port (needs statestream[metrics])",
    )
    worker.add_argument(
        "--metrics-addr",
        default="0.0.0.0",
        metavar="ADDR",
        help="the address to serve metrics on (default: 0.0.0.0)",
    )
    worker.add_argument(
        "--metrics-interval",
        type=_seconds,
        default=15.0,
        metavar="SECONDS",
        help="how often the metrics read the stores (runs, outbox, timers; default: 15)",
    )

    # runs
    runs = add(commands, "runs", "list, inspect and control runs", None)
    run_commands = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    listing = add(
        run_commands, "list", "list the runs of a workflow (oldest first)", cmd_runs_list, [target]
    )
    listing.add_argument(
        "--status",
        action="append",
        metavar="NAME",
        help="only runs at this status (name or number; repeatable)",
    )
    listing.add_argument(
        "--state",
        action="append",
        type=run_state_of,
        metavar="NAME",
        help="only runs in this run state, e.g. running, paused (repeatable)",
    )
    listing.add_argument(
        "--foreign-id",
        action="append",
        metavar="ID",
        help="only runs of this foreign ID (repeatable)",
    )
    listing.add_argument(
        "--limit", type=_non_negative, default=25, metavar="N", help="at most N runs (25)"
    )
    listing.add_argument(
        "--offset", type=_non_negative, default=0, metavar="N", help="skip the first N runs"
    )
    listing.add_argument("--desc", action="store_true", help="newest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    show = add(
        run_commands,
        "show",
        "show every field of a run and its object",
        cmd_runs_show,
        [target],
    )
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--json", action="store_true", help="print one JSON document")

    controls = {
        "pause": "pause a run (consumers leave it alone until it is resumed)",
        "resume": "resume a paused run",
        "cancel": "cancel a running or paused run for good",
        "delete": "request deletion of a finished run's data",
    }
    for action, text in controls.items():
        sub = add(run_commands, action, text, cmd_runs_control, [target])
        sub.add_argument("run_id", metavar="RUN_ID")
        if action != "resume":
            sub.add_argument("--reason", default="", metavar="TEXT", help="why (stored)")
        sub.add_argument("--json", action="store_true", help="print the run as JSON")
        sub.set_defaults(action=action)

    parked = add(
        run_commands,
        "parked",
        "list events that a consumer gave up on after repeated errors (oldest first)",
        cmd_runs_parked,
        [target],
        description=(
            "List the parked events of a workflow: events a hook, connector, data deleter or\n"
            "pause retry kept failing on (park_after_errors times), or a step whose automatic\n"
            "pause failed. The consumer moved past them; 'retry-parked' handles one again."
        ),
    )
    parked.add_argument("--consumer", metavar="NAME", help="only those of this consumer (role)")
    parked.add_argument(
        "--limit", type=_positive, default=100, metavar="N", help="at most N events (100)"
    )
    parked.add_argument("--json", action="store_true", help="one JSON object per line")

    retry = add(
        run_commands,
        "retry-parked",
        "ask for a parked event to be handled again",
        cmd_runs_retry_parked,
        [target],
        description=(
            "Flag a parked event for a retry. The consumer that parked it, in the worker that\n"
            "holds its role, handles it again within a few seconds: the entry is deleted if\n"
            "that succeeds and parked again, with the new error, if it fails."
        ),
    )
    retry.add_argument("parked_id", metavar="PARKED_ID", help="the ID 'runs parked' shows")
    retry.add_argument("--json", action="store_true", help="print the result as JSON")

    # graph
    graph = add(
        commands, "graph", "print the workflow's graph as a Mermaid diagram", cmd_graph, [target]
    )
    graph.add_argument(
        "--direction",
        type=_direction,
        default="LR",
        metavar="DIR",
        help="LR, RL, TB or BT (default: LR)",
    )

    # web
    web = add(
        commands,
        "web",
        "serve the web UI: list, inspect and control runs in a browser",
        cmd_web,
        description=(
            "Serve the web UI of the workflows the targets give (it does not start them: run a\n"
            "worker for that). Writes need the token in STATESTREAM_WEB_TOKEN, reads that or\n"
            "STATESTREAM_WEB_READ_TOKEN, unless --open-reads. Needs pip install 'statestream[web]'."
        ),
    )
    web.add_argument(
        "targets", metavar="TARGET", nargs="+", type=parse_target, help="module:attribute"
    )
    add_web_arguments(web)

    # schema
    schema = add(commands, "schema", "create, inspect or migrate a SQLite database file", None)
    schema_commands = schema.add_subparsers(dest="schema_command", metavar="ACTION", required=True)
    for action, text in (
        ("create", "create the file with the statestream schema (or bring it up to date)"),
        ("version", "print the schema version of an existing file (it is not changed)"),
        ("migrate", "migrate an existing file to this release's schema"),
    ):
        sub = add(schema_commands, action, text, cmd_schema)
        sub.add_argument("path", metavar="PATH", help="the SQLite file")
        if action != "version":
            sub.add_argument(
                "--allow-foreign",
                action="store_true",
                help="add the statestream tables to a database that holds other tables",
            )
        sub.set_defaults(action=action)

    # db (servers by URL, and SQLite as sqlite:///PATH)
    db = add(commands, "db", "create, inspect or migrate the schema of a database by URL", None)
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for action, text in (
        ("migrate", "create the statestream schema, or migrate it to this release's"),
        ("version", "print the statestream schema version (nothing is changed)"),
    ):
        sub = add(db_commands, action, text, cmd_db)
        sub.add_argument(
            "--url",
            required=True,
            help="postgresql://USER:PASSWORD@HOST:PORT/DB, mysql://..., or sqlite:///PATH",
        )
        sub.add_argument(
            "--prefix", default="statestream_", help="table-name prefix (default: statestream_)"
        )
        sub.set_defaults(action=action)

    # demo
    demo = add(
        commands, "demo", "run the order-pipeline demo (python -m statestream.demo)", cmd_demo
    )
    demo.add_argument("--orders", type=_non_negative, default=200, help="orders (default: 200)")
    demo.add_argument(
        "--payment-window",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="how long an order waits for payment (default: 1)",
    )
    where = demo.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", help="SQLite file to use (replaced)")
    where.add_argument("--memory", action="store_true", help="use the in-memory adapters")
    return parser


def _classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message of an error."""
    if isinstance(exc, CliError):
        return exc.code, exc.message
    if isinstance(exc, InvalidTransition):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, RecordNotFound):
        return EXIT_NOT_FOUND, str(exc) or "not found"
    if isinstance(exc, AdapterError):
        return EXIT_BACKEND, str(exc)
    if isinstance(exc, VersionConflict):
        return EXIT_FAILED, f"{exc}; try again"
    if isinstance(exc, InvalidInput):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, WorkflowError):
        return EXIT_FAILED, str(exc)
    return EXIT_FAILED, f"unexpected {type(exc).__name__}: {exc}"


def _report(exc: BaseException, debug: bool) -> int:
    code, message = _classify(exc)
    style = Style(sys.stderr)
    first = message.splitlines()[0] if message else type(exc).__name__
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    elif code == EXIT_FAILED and not isinstance(exc, WorkflowError | CliError):
        first += " (--debug shows the traceback)"
    print(f"statestream: {style('error:', 'bold', 'red')} {first}", file=sys.stderr, flush=True)
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return EXIT_OK
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    The console script calls ``sys.exit(main())``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_code(exc.code)
    debug = bool(getattr(args, "debug", False))
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except KeyboardInterrupt:
        print("statestream: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILED
    except Exception as exc:
        return _report(exc, debug)


def _silence_stdout() -> None:
    """After the reader of stdout went away (``| head``): no second error when Python flushes."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
