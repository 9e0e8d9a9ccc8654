"""What the commands of :mod:`statestream.cli` do, once their arguments are parsed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace as Args
from typing import Any

from .._core.records import Order, ParkedEvent, Record, RecordFilter
from .._core.run import Run
from .._core.runstate import RunState
from ..errors import AdapterError, RecordNotFound
from .output import (
    dumps,
    echo,
    format_time,
    record_dict,
    state_colour,
    styled,
    table,
)
from .target import (
    EXIT_BACKEND,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    AnyWorkflow,
    CliError,
    dedupe,
    load_workflows,
    pick_workflow,
)

__all__ = [
    "cmd_demo",
    "cmd_graph",
    "cmd_runs_control",
    "cmd_runs_parked",
    "cmd_runs_retry_parked",
    "cmd_runs_list",
    "cmd_runs_show",
    "cmd_schema",
    "cmd_worker",
]


async def _workflow(args: Args) -> AnyWorkflow:
    return pick_workflow(await load_workflows(args.target), args.workflow, args.target)


def _status_names(wf: AnyWorkflow) -> dict[int, str]:
    return {int(status): status.name for status in wf.graph}


def _status_value(wf: AnyWorkflow, text: str) -> int:
    names = _status_names(wf)
    wanted = text.strip()
    for value, name in names.items():
        if name.lower() == wanted.lower() or wanted == str(value):
            return value
    known = ", ".join(names.values())
    raise CliError(
        EXIT_USAGE, f"workflow {wf.name!r} has no status {text!r} (its statuses: {known})"
    )


def run_state_of(text: str) -> RunState:
    """``--state``: a RunState name or label, any case (or its number); ValueError if none."""
    wanted = text.strip().upper().replace(" ", "_").replace("-", "_")
    for state in RunState:
        if state.valid and (state.name == wanted or str(int(state)) == wanted):
            return state
    known = ", ".join(s.name.lower() for s in RunState if s.valid)
    raise ValueError(f"unknown run state {text!r} (choose from {known})")


async def _own_record(wf: AnyWorkflow, run_id: str) -> Record:
    record = await wf.store.lookup(run_id)
    if record.workflow_name != wf.name:
        raise RecordNotFound(
            f"run {run_id} belongs to workflow {record.workflow_name!r}, not {wf.name!r} "
            "(choose that workflow with --workflow, or use its target)"
        )
    return record


# ------------------------------------------------------------------ runs


async def cmd_runs_list(args: Args) -> int:
    wf = await _workflow(args)
    statuses = [_status_value(wf, s) for s in args.status or ()]
    flt = RecordFilter(
        foreign_ids=tuple(args.foreign_id or ()),
        statuses=tuple(statuses),
        run_states=tuple(args.state or ()),
    )
    records = await wf.store.list(
        wf.name,
        offset=args.offset,
        limit=args.limit,
        order=Order.DESC if args.desc else Order.ASC,
        filter=flt,
    )
    names = _status_names(wf)
    if args.json:
        for record in records:
            echo(dumps(record_dict(record, names)))
        return EXIT_OK
    if not records:
        echo(f"no runs of workflow {wf.name!r} match")
        return EXIT_OK
    headers = ("RUN ID", "FOREIGN ID", "STATUS", "RUN STATE", "VERSION", "UPDATED")
    rows = [
        (
            r.run_id,
            r.foreign_id,
            names.get(r.status, r.status_description or str(r.status)),
            r.run_state.label,
            str(r.version),
            format_time(r.updated_at),
        )
        for r in records
    ]
    colours = [("", "", "", state_colour(r.run_state), "", "dim") for r in records]
    table(headers, rows, colours)
    return EXIT_OK


async def cmd_runs_show(args: Args) -> int:
    wf = await _workflow(args)
    record = await _own_record(wf, args.run_id)
    data = record_dict(record, _status_names(wf), with_object=True)
    if args.json:
        echo(dumps(data, indent=2))
        return EXIT_OK
    obj = data.pop("object")
    encoding = data.pop("object_encoding")
    width = max(len(k) for k in data)
    for key, value in data.items():
        if key == "run_state":
            text = styled((record.run_state.label, state_colour(record.run_state)))
        else:
            text = styled(str(value))
        echo(styled((key.ljust(width), "bold"), "  ", text))
    label = "object" if encoding == "json" else "object (base64)"
    echo(styled((label, "bold"), ":"))
    rendered = dumps(obj, indent=2) if encoding == "json" else str(obj)
    for line in rendered.splitlines():
        echo("  " + line)
    return EXIT_OK


def _run_dict(run: Run[Any, Any]) -> dict[str, Any]:
    return {
        "workflow_name": run.workflow_name,
        "run_id": run.run_id,
        "foreign_id": run.foreign_id,
        "status": int(run.status),
        "status_name": run.status.name,
        "run_state": run.run_state.name,
        "version": run.version,
        "updated_at": run.updated_at.isoformat(),
        "run_state_reason": run.run_state_reason,
    }


async def cmd_runs_control(args: Args) -> int:
    wf = await _workflow(args)
    reason = getattr(args, "reason", "") or ""
    action = args.action
    if action == "pause":
        run = await wf.pause(args.run_id, reason)
    elif action == "resume":
        run = await wf.resume(args.run_id)
    elif action == "cancel":
        run = await wf.cancel(args.run_id, reason)
    else:
        run = await wf.delete_data(args.run_id, reason)
    if args.json:
        echo(dumps(_run_dict(run)))
        return EXIT_OK
    echo(
        styled(
            f"run {run.run_id} ({run.foreign_id}): ",
            (run.run_state.label, state_colour(run.run_state)),
            f" at {run.status.name}, version {run.version}",
        )
    )
    return EXIT_OK


def _parked_dict(entry: ParkedEvent) -> dict[str, Any]:
    return {
        "id": entry.id,
        "workflow_name": entry.workflow_name,
        "consumer": entry.consumer,
        "run_id": entry.event.key,
        "topic": entry.event.topic,
        "event_id": entry.event.id,
        "status": entry.event.type,
        "attempts": entry.attempts,
        "error": entry.error,
        "parked_at": entry.parked_at.isoformat(),
        "retry_requested": entry.retry_requested,
    }


def _one_line(text: str, width: int = 60) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= width else first[: width - 3] + "..."


async def cmd_runs_parked(args: Args) -> int:
    wf = await _workflow(args)
    entries = await wf.parked(consumer=args.consumer, limit=args.limit)
    if args.json:
        for entry in entries:
            echo(dumps(_parked_dict(entry)))
        return EXIT_OK
    if not entries:
        echo(f"no parked events in workflow {wf.name!r}")
        return EXIT_OK
    headers = ("PARKED ID", "RUN ID", "ATTEMPTS", "PARKED", "RETRY", "ERROR")
    rows = [
        (
            e.id,
            e.event.key,
            str(e.attempts),
            format_time(e.parked_at),
            "requested" if e.retry_requested else "",
            _one_line(e.error),
        )
        for e in entries
    ]
    colours = [("", "", "", "dim", "yellow", "red") for _ in entries]
    table(headers, rows, colours)
    return EXIT_OK


async def cmd_runs_retry_parked(args: Args) -> int:
    wf = await _workflow(args)
    await wf.retry_parked(args.parked_id)
    if args.json:
        echo(dumps({"id": args.parked_id, "retry_requested": True}))
        return EXIT_OK
    echo(
        f"retry of parked event {args.parked_id} requested: its consumer handles it again "
        "within a few seconds while a worker runs"
    )
    return EXIT_OK


# ------------------------------------------------------------------ graph


async def cmd_graph(args: Args) -> int:
    wf = await _workflow(args)
    echo(wf.mermaid(args.direction).rstrip("\n"))
    return EXIT_OK


# ------------------------------------------------------------------ schema


def _file_version(path: Path, *, allow_foreign: bool = False, hint: bool = False) -> int:
    """The statestream schema version stored in an existing file, read without changing it.

    0 means an SQLite file without statestream tables yet (an empty one, or with
    ``allow_foreign`` one that holds other tables only).
    """
    from ..adapters.sqlite import SCHEMA_VERSION

    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise AdapterError(f"cannot open SQLite database {path}: {exc}") from exc
    try:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        found = 0
        if "statestream_meta" in tables:
            row = conn.execute(
                "SELECT value FROM statestream_meta WHERE key = 'schema_version'"
            ).fetchone()
            found = int(row[0]) if row else 0
        elif tables - {"sqlite_sequence"} and not allow_foreign:
            raise AdapterError(
                f"{path} is an SQLite database of something else (tables: "
                f"{', '.join(sorted(tables)[:5])}), not a statestream database"
                + (" (--allow-foreign adds the statestream tables to it)" if hint else "")
            )
    except sqlite3.Error as exc:
        why = ""
        if "not a database" in str(exc):
            why = " (it is not an SQLite database, or is encrypted)"
        elif "malformed" in str(exc):
            why = " (the file is corrupted)"
        raise AdapterError(f"cannot read {path}: {exc}{why}") from exc
    except ValueError as exc:
        raise AdapterError(f"{path}: unreadable statestream schema version ({exc})") from exc
    finally:
        conn.close()
    if found > SCHEMA_VERSION:
        raise AdapterError(
            f"{path} has statestream schema version {found}, newer than this release "
            f"understands ({SCHEMA_VERSION}): upgrade statestream"
        )
    return found


async def _open_schema(path: Path, allow_foreign: bool) -> int:
    """Open ``path`` through SqliteDatabase: creates or migrates the schema; its version."""
    from ..adapters.sqlite import SqliteDatabase

    db = SqliteDatabase(path, allow_foreign=allow_foreign)
    version = await db.schema_version()
    # Only after success: when opening fails, the database thread has already ended (and
    # close() would wait for it for ever).
    await db.close()
    return version


def _existing_version(path: Path, action: str, allow_foreign: bool) -> int | None:
    """Checks before a schema command: the file's version, or None when it does not exist."""
    if path.is_dir():
        raise CliError(EXIT_BACKEND, f"{path} is a directory, not an SQLite file")
    if not path.exists():
        if action == "version":
            raise CliError(EXIT_NOT_FOUND, f"{path} does not exist")
        if action == "migrate":
            raise CliError(
                EXIT_NOT_FOUND,
                f"{path} does not exist (use 'statestream schema create' to create it)",
            )
        # Checked here, not left to SqliteDatabase: when opening fails that fast, its first
        # operation can be queued after the failed thread gave up, and then never answered.
        parent = path.absolute().parent
        if not parent.is_dir():
            raise CliError(EXIT_BACKEND, f"cannot create {path}: directory {parent} does not exist")
        return None
    return _file_version(path, allow_foreign=allow_foreign, hint=action != "version")


async def cmd_schema(args: Args) -> int:
    from ..adapters.sqlite import SCHEMA_VERSION

    path = Path(args.path)
    allow_foreign = getattr(args, "allow_foreign", False)
    before = await asyncio.to_thread(_existing_version, path, args.action, allow_foreign)
    if args.action == "version":
        assert before is not None
        echo(str(before))
        if before == 0:
            echo(
                f"statestream: note: {path} has no statestream tables yet; "
                "'statestream schema create' adds them",
                err=True,
            )
        elif before < SCHEMA_VERSION:
            echo(
                f"statestream: note: {path} is older than this release's schema "
                f"({SCHEMA_VERSION}); 'statestream schema migrate' brings it up to date",
                err=True,
            )
        return EXIT_OK
    version = await _open_schema(path, allow_foreign)
    if before is None:
        echo(f"created {path} with statestream schema version {version}")
    elif before == version:
        echo(f"{path} is at statestream schema version {version} (up to date)")
    else:
        echo(f"migrated {path} from statestream schema version {before} to {version}")
    return EXIT_OK


# ------------------------------------------------------------------ demo


async def cmd_demo(args: Args) -> int:
    from .. import demo

    code: int = await demo.main(
        args.orders, args.payment_window, db_path=args.db, memory=args.memory
    )
    return code


# ------------------------------------------------------------------ worker


def _install_signals(on_signal: Callable[[int], None]) -> Callable[[], None]:
    """Call ``on_signal(signum)`` on SIGINT and SIGTERM; returns the function that undoes it."""
    loop = asyncio.get_running_loop()
    signals = [signal.SIGINT, signal.SIGTERM]
    installed: list[signal.Signals] = []
    previous: dict[signal.Signals, Any] = {}
    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal, int(sig))
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not main thread
            with contextlib.suppress(ValueError, OSError):
                previous[sig] = signal.signal(
                    sig, lambda n, _f: loop.call_soon_threadsafe(on_signal, n)
                )

    def undo() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)

    return undo


def _log_handlers(log_format: str) -> list[logging.Handler] | None:
    if log_format != "json":
        return None
    from ..logs import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    return [handler]


def _add_metrics(workflows: list[AnyWorkflow]) -> Any:
    """A PrometheusObserver for every workflow that has none (the first one found otherwise)."""
    from .. import metrics

    found = [o for wf in workflows for o in metrics.prometheus_observers(wf.observers)]
    observer = found[0] if found else metrics.PrometheusObserver()
    for wf in workflows:
        if not metrics.prometheus_observers(wf.observers):
            wf.add_observer(observer)
    return observer


async def cmd_worker(args: Args) -> int:
    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-8s %(name)s: %(message)s",
        handlers=_log_handlers(args.log_format),
        force=False,
    )
    logging.getLogger("statestream").setLevel(level)
    workflows: list[AnyWorkflow] = []
    for target in args.targets:
        workflows.extend(await load_workflows(target))
    workflows = dedupe(workflows)
    names = [wf.name for wf in workflows]
    for name in sorted({n for n in names if names.count(n) > 1}):
        echo(
            f"statestream: warning: workflow {name!r} is given {names.count(name)} times; "
            "its instances share the work like separate processes would",
            err=True,
        )
    stop = asyncio.Event()
    task = asyncio.current_task()
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        name = signal.Signals(signum).name
        if len(signals_seen) == 1:
            echo(f"statestream worker: {name} received, stopping (grace {args.grace:g}s)...")
            stop.set()
        elif task is not None:
            echo(f"statestream worker: {name} received again, stopping now", err=True)
            task.cancel()

    observer = _add_metrics(workflows) if args.metrics_port is not None else None
    undo = _install_signals(on_signal)
    started: list[AnyWorkflow] = []
    forced = False
    server: Any = None
    sampling = contextlib.AsyncExitStack()
    try:
        for wf in workflows:
            await wf.start()
            started.append(wf)
        if observer is not None:
            from ..metrics import start_http_server

            server = start_http_server(args.metrics_port, args.metrics_addr, observer.registry)
            await sampling.enter_async_context(
                observer.sampling(*started, interval=args.metrics_interval or 15.0)
            )
            echo(f"statestream worker: metrics on http://{args.metrics_addr}:{server.port}/metrics")
        echo(f"statestream worker: pid {os.getpid()}, {len(started)} workflow(s)")
        for wf in started:
            processes = list(wf.states())
            echo(styled("  ", (wf.name, "bold"), f": {len(processes)} processes"))
            for name in processes:
                echo(f"    {name}")
        echo("statestream worker: ready; stop with Ctrl+C or SIGTERM")
        await stop.wait()
    except asyncio.CancelledError:
        forced = True
    finally:
        try:
            grace = 0.0 if forced else args.grace  # both signals came before the first stop
            await asyncio.gather(*(wf.stop(grace) for wf in started))
            await sampling.aclose()
        except asyncio.CancelledError:
            forced = True
        finally:
            undo()
            if server is not None:
                server.close()
    if forced:
        raise CliError(EXIT_FAILED, "worker stopped forcibly, without waiting for in-flight work")
    echo("statestream worker: stopped")
    return EXIT_OK
