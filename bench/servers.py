"""The server backends of the benchmarks: PostgreSQL and MySQL/MariaDB.

Records and events both live in the server's database (``*RecordStore(db, publish_to=
streamer)``, as on SQLite: the event row is written in the record's own transaction). Each
backend is opened lazily: its adapter module (``statestream.adapters.postgres`` /
``.mysql``) is imported only when the backend is used, so a tree without it, or a machine
without the server, still runs every other row; :func:`unavailable` says why a backend cannot
run, and the harness prints that as a "skipped" row.

Every run takes its own table prefix (``b_<10 hex>_``) and drops the tables with that prefix
afterwards (and only those). The server's address comes from the environment:

* ``STATESTREAM_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``
* ``STATESTREAM_MYSQL_URL``, default ``mysql://root@127.0.0.1:3306/test``

The server's CPU time is read from ``/proc`` (see :mod:`bench.peers.proc_cpu`): the postmaster
and all its children for PostgreSQL (found as the parent of this session's backend), the
``mariadbd`` process for MariaDB (from ``@@pid_file``). It includes every other session's load
on that server. Reading it needs the server on this host; otherwise the figure is left out.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .peers.proc_cpu import (
    ProcessTreeCpu,
    Snapshot,
    find_process,
    local_tcp_ports,
    parent_of,
    thread_cpu,
)

__all__ = [
    "SERVERS",
    "Server",
    "ServerCpu",
    "drop_prefixed",
    "new_prefix",
    "server_cpu",
    "server_settings",
    "unavailable",
]

_PREFIX = re.compile(r"^b_[0-9a-f]{10}_$")


@dataclass(frozen=True, slots=True)
class Server:
    kind: str  # "postgres" or "mysql"
    module: str  # the adapter module
    classes: str  # the class-name prefix: PostgresDatabase, MysqlDatabase...
    env: str
    default_url: str
    default_port: int

    @property
    def url(self) -> str:
        return os.environ.get(self.env) or self.default_url

    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or self.default_port

    def adapter(self) -> Any:
        """The adapter module (imports it; raises what its import raises)."""
        return importlib.import_module(self.module)

    def cls(self, name: str) -> Any:
        return getattr(self.adapter(), f"{self.classes}{name}")


SERVERS: dict[str, Server] = {
    "postgres": Server(
        "postgres",
        "statestream.adapters.postgres",
        "Postgres",
        "STATESTREAM_POSTGRES_URL",
        "postgresql://postgres@127.0.0.1:5432/test",
        5432,
    ),
    "mysql": Server(
        "mysql",
        "statestream.adapters.mysql",
        "Mysql",
        "STATESTREAM_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
        3306,
    ),
}


def new_prefix() -> str:
    return f"b_{uuid.uuid4().hex[:10]}_"


def unavailable(kind: str) -> str | None:
    """Why this server backend cannot run here (adapter not importable, server unreachable),
    or None when it can."""
    server = SERVERS[kind]
    try:
        server.adapter()
    except ImportError as exc:
        return f"adapter {server.module} not importable ({exc})"
    except Exception as exc:  # e.g. ConfigurationError: its driver is not installed
        return f"adapter {server.module} not usable: {exc}"
    host, port = server.address()
    try:
        with socket.create_connection((host, port), timeout=2.0):
            pass
    except OSError as exc:
        return f"{kind} server at {host}:{port} unreachable ({exc}; set {server.env})"
    return None


# ------------------------------------------------------------------------------------ sessions
# A plain driver session for what the benchmark does besides the workload: find the server's
# PID, read its durability settings, drop the run's tables. The driver is the one the adapter
# uses (so it is installed wherever the backend can run); all values are bound parameters, and
# the only identifiers spliced in are table names read back from the catalog, quoted.


class _Session:
    def __init__(self, kind: str, conn: Any, driver: str) -> None:
        self.kind = kind
        self.conn = conn
        self.driver = driver

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.driver == "asyncpg":  # $1 placeholders
            return [tuple(r) for r in await self.conn.fetch(sql, *args)]
        sql = re.sub(r"\$\d+", "%s", sql)
        if self.driver == "psycopg":
            cur = await self.conn.execute(sql, args)
            return list(await cur.fetchall()) if cur.description else []
        async with self.conn.cursor() as cur:  # asyncmy / aiomysql
            await cur.execute(sql, args)
            return list(await cur.fetchall()) if cur.description else []

    async def close(self) -> None:
        result = self.conn.close()
        if hasattr(result, "__await__"):
            await result
        if self.driver in ("asyncmy", "aiomysql") and hasattr(self.conn, "ensure_closed"):
            await self.conn.ensure_closed()


@contextlib.asynccontextmanager
async def _session(kind: str) -> AsyncIterator[_Session]:
    url = SERVERS[kind].url
    if kind == "postgres":
        try:
            import asyncpg

            conn = await asyncpg.connect(url)
            session = _Session(kind, conn, "asyncpg")
        except ImportError:
            import psycopg

            conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            session = _Session(kind, conn, "psycopg")
    else:
        parts = urlsplit(url)
        params = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "db": parts.path.lstrip("/") or None,
            "autocommit": True,
        }
        try:
            import asyncmy

            session = _Session(kind, await asyncmy.connect(**params), "asyncmy")
        except ImportError:
            import aiomysql

            session = _Session(kind, await aiomysql.connect(**params), "aiomysql")
    try:
        yield session
    finally:
        await session.close()


@dataclass(frozen=True, slots=True)
class ServerSample:
    tree: Snapshot
    threads: dict[int, float]  # MariaDB: CPU seconds per thread; PostgreSQL: empty


class ServerCpu:
    """The server's CPU over a window: all of it (:meth:`total`), and the part spent in the
    sessions of given client processes (:meth:`own`).

    ``own`` finds the sessions whose client port is a TCP socket one of those processes has
    open at the end of the window (``pg_stat_activity.client_port``; MariaDB's
    ``information_schema.PROCESSLIST``, whose ``TID`` is the connection's thread), and adds up
    their backends' (threads') CPU over the window. It leaves out the server's shared work
    (WAL writer, checkpointer; InnoDB's log and purge threads) and sessions closed before the
    end, so it is a lower bound; ``total`` includes every other session's load.
    """

    def __init__(self, kind: str, root: int) -> None:
        self.kind = kind
        self.tree = ProcessTreeCpu(root, children=kind == "postgres")

    def snapshot(self) -> ServerSample:
        threads = thread_cpu(self.tree.root) if self.kind == "mysql" else {}
        return ServerSample(self.tree.snapshot(), threads)

    def total(self, before: ServerSample, after: ServerSample) -> float:
        return self.tree.seconds(before.tree, after.tree)

    async def own(
        self, before: ServerSample, after: ServerSample, clients: list[int]
    ) -> float | None:
        ports = set().union(*(local_tcp_ports(pid) for pid in clients))
        if not ports:
            return None
        async with _session(self.kind) as s:
            if self.kind == "postgres":
                rows = await s.rows("SELECT pid, client_port FROM pg_stat_activity")
                pids = {int(pid) for pid, port in rows if port in ports}
                return sum(
                    now.own - (then.own if (then := before.tree.get(key)) else 0.0)
                    for key, now in after.tree.items()
                    if key[0] in pids
                )
            rows = await s.rows("SELECT TID, HOST FROM information_schema.PROCESSLIST")
        tids = {int(tid) for tid, host in rows if _port(host) in ports}
        return sum(
            after.threads[t] - before.threads.get(t, 0.0) for t in tids if t in after.threads
        )


def _port(host: object) -> int | None:
    tail = str(host or "").rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


async def server_cpu(kind: str) -> ServerCpu | None:
    """A sampler of the server's CPU, or None when its processes are not on this host."""
    host, _ = SERVERS[kind].address()
    if not _on_this_host(host):
        return None
    async with _session(kind) as s:
        if kind == "postgres":
            ((backend,),) = await s.rows("SELECT pg_backend_pid()")
            root = parent_of(int(backend))
            return ServerCpu(kind, root) if root else None
        ((pid_file,),) = await s.rows("SELECT @@pid_file")
    root = _read_pid(str(pid_file)) or find_process("mariadbd", "mysqld")
    return ServerCpu(kind, root) if root else None


def _on_this_host(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") and Path("/proc/self/stat").exists()


def _read_pid(path: str) -> int | None:
    try:
        return int(Path(path).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


async def server_settings(kind: str) -> dict[str, str]:
    """The durability settings in effect, as the server reports them."""
    async with _session(kind) as s:
        if kind == "postgres":
            names = ("fsync", "synchronous_commit", "wal_sync_method", "server_version")
            return {n: str((await s.rows(f"SHOW {n}"))[0][0]) for n in names}
        (row,) = await s.rows(
            "SELECT @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin, @@version"
        )
    names = ("innodb_flush_log_at_trx_commit", "sync_binlog", "log_bin", "version")
    return dict(zip(names, (str(v) for v in row), strict=True))


async def drop_prefixed(kind: str, prefix: str) -> list[str]:
    """Drop the tables (and PostgreSQL functions) whose names start with ``prefix``, which
    must be one of :func:`new_prefix`'s; returns what was dropped."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"refusing to drop by prefix {prefix!r}: not a benchmark prefix")
    dropped: list[str] = []
    async with _session(kind) as s:
        if kind == "postgres":
            tables = await s.rows(
                "SELECT schemaname, tablename FROM pg_tables "
                "WHERE schemaname = current_schema() AND left(tablename, length($1)) = $2",
                prefix,
                prefix,
            )
            for schema, name in tables:
                await s.rows(f"DROP TABLE IF EXISTS {_pg_ident(schema)}.{_pg_ident(name)} CASCADE")
                dropped.append(name)
            funcs = await s.rows(
                "SELECT p.oid::regprocedure::text FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = current_schema() AND left(p.proname, length($1)) = $2",
                prefix,
                prefix,
            )
            for (signature,) in funcs:
                # regprocedure's text is already a quoted, schema-qualified signature.
                await s.rows(f"DROP FUNCTION IF EXISTS {signature} CASCADE")
                dropped.append(signature)
        else:
            tables = await s.rows(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND LEFT(table_name, CHAR_LENGTH($1)) = $2",
                prefix,
                prefix,
            )
            for (name,) in tables:
                await s.rows(f"DROP TABLE IF EXISTS `{str(name).replace('`', '``')}`")
                dropped.append(str(name))
    return dropped


def _pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ------------------------------------------------------------------------------------ adapters


def open_adapters(kind: str, prefix: str) -> tuple[Any, Any, Any, Any, Any]:
    """``(db, streamer, store, scheduler, timeout_store)`` on the server, under ``prefix``."""
    server = SERVERS[kind]
    db = server.cls("Database")(server.url, prefix=prefix)
    streamer = server.cls("Streamer")(db)
    store = server.cls("RecordStore")(db, publish_to=streamer)
    return db, streamer, store, server.cls("RoleScheduler")(db), server.cls("TimeoutStore")(db)


async def close_all(*closers: Callable[[], Any]) -> None:
    """Call each ``close`` in order, awaiting what returns an awaitable."""
    for close in closers:
        result = close()
        if hasattr(result, "__await__"):
            await result
