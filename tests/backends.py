"""The SQL adapter sets the fault tests run on, by name: ``sqlite``, ``postgres``, ``mysql``.

One registry builds the four adapters (streamer, record store, role scheduler, timeout store) of
a backend from a *location* (a file path for SQLite, a URL for the servers) and a table prefix,
so that a test written once runs on every backend. The server modules are imported lazily: a
test process (or a worker subprocess) that uses only SQLite never imports them.

Skips and failures (:func:`require`):

- a server that does not answer skips with a loud reason on a laptop and fails when ``CI=true``.

Every test on a shared server uses its own prefix (:func:`new_prefix`) and drops the tables
that start with it afterwards (:func:`drop_prefixed`), and only those.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

__all__ = [
    "BACKENDS",
    "NAMES",
    "AdapterSet",
    "Backend",
    "adapter_set",
    "drop_prefixed",
    "location_for",
    "new_prefix",
    "open_set",
    "require",
]

DEFAULT_URLS = {
    "postgres": "postgresql://postgres@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}
URL_ENV = {"postgres": "STATESTREAM_POSTGRES_URL", "mysql": "STATESTREAM_MYSQL_URL"}


@dataclass(frozen=True)
class Backend:
    """How to build one backend's adapters: the module and the class name prefix."""

    name: str
    module: str
    prefix: str  # class names: f"{prefix}Database", f"{prefix}RecordStore", ...
    server: bool

    def module_exists(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            return False

    def classes(self) -> dict[str, Any]:
        module = importlib.import_module(self.module)
        return {
            part: getattr(module, f"{self.prefix}{part}")
            for part in ("Database", "Streamer", "RecordStore", "RoleScheduler", "TimeoutStore")
        }


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend("sqlite", "statestream.adapters.sqlite", "Sqlite", server=False),
    "postgres": Backend("postgres", "statestream.adapters.postgres", "Postgres", server=True),
    "mysql": Backend("mysql", "statestream.adapters.mysql", "Mysql", server=True),
}
NAMES = list(BACKENDS)


def new_prefix() -> str:
    """A table prefix no other test (nor another helper's tests) uses: ``t_<10 hex>_``."""
    return f"t_{uuid.uuid4().hex[:10]}_"


def server_url(name: str) -> str:
    return os.environ.get(URL_ENV[name], DEFAULT_URLS[name])


def location_for(name: str, tmp_path: Path) -> str:
    """Where a test's data lives: a file in ``tmp_path`` for SQLite, the server's URL else."""
    if BACKENDS[name].server:
        return server_url(name)
    return str(tmp_path / "statestream.db")


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a server the suite needs must be up)")
    pytest.skip(f"!!! {reason} -- these tests did NOT run !!!")


def reachable(url: str, timeout: float = 2.0) -> str | None:
    """``None`` if a TCP connection to the URL's host and port opens, else why not."""
    parts = urlsplit(url)
    default_port = 5432 if parts.scheme.startswith("postgres") else 3306
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"


def require(name: str, location: str | None = None) -> None:
    """Skip (or, in CI, fail) unless backend ``name`` can run here; see the module docstring."""
    backend = BACKENDS[name]
    if backend.server:
        url = location or server_url(name)
        why = reachable(url)
        if why is not None:
            _unavailable(f"{name} server at {_safe(url)} is unreachable: {why}")


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _accepted(cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The keyword options ``cls`` takes (the server schedulers may not take all of them)."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}


@dataclass
class AdapterSet:
    """The adapters of one backend in one process, sharing one database handle."""

    name: str
    location: str
    prefix: str
    db: Any
    streamer: Any
    store: Any
    scheduler: Any
    timeouts: Any

    async def close(self) -> None:
        try:
            await self.streamer.close()
        finally:
            await self.db.close()


def open_set(
    name: str,
    location: str,
    prefix: str,
    *,
    ttl: float | None = None,
    poll_interval: float | None = None,
    member_ttl: float | None = None,
) -> AdapterSet:
    """Build backend ``name``'s adapters on ``location`` (a path or a URL) with ``prefix``.

    SQLite keeps every test in a file of its own and takes no prefix. ``ttl``,
    ``poll_interval`` and ``member_ttl`` go to the role scheduler when it takes them (short
    leases move a dead process's roles fast).
    """
    classes = BACKENDS[name].classes()
    if BACKENDS[name].server:
        db = classes["Database"](location, prefix=prefix)
    else:
        db = classes["Database"](location)
    streamer = classes["Streamer"](db)
    store = classes["RecordStore"](db, publish_to=streamer)
    given = (("ttl", ttl), ("poll_interval", poll_interval), ("member_ttl", member_ttl))
    options = {k: v for k, v in given if v is not None}
    scheduler = classes["RoleScheduler"](db, **_accepted(classes["RoleScheduler"], options))
    timeouts = classes["TimeoutStore"](db)
    return AdapterSet(name, location, prefix, db, streamer, store, scheduler, timeouts)


@contextlib.asynccontextmanager
async def adapter_set(
    name: str, location: str, prefix: str, **options: Any
) -> AsyncIterator[AdapterSet]:
    """:func:`open_set`, closed afterwards (the tables stay: see :func:`drop_prefixed`)."""
    adapters = open_set(name, location, prefix, **options)
    try:
        yield adapters
    finally:
        await adapters.close()


# ------------------------------------------------------------------ dropping a test's tables


async def drop_prefixed(name: str, location: str, prefix: str) -> list[str]:
    """Drop the tables (and, on PostgreSQL, the functions) whose names start with ``prefix``,
    and only those; return their names. SQLite: nothing to do (the file is the test's own)."""
    if not BACKENDS[name].server:
        return []
    if not prefix.startswith("t_") or len(prefix) < 8:
        raise ValueError(f"refusing to drop tables by the prefix {prefix!r}: not a test prefix")
    if name == "postgres":
        return await _drop_postgres(location, prefix)
    return await _drop_mysql(location, prefix)


def _quote_pg(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _quote_my(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


_PG_TABLES = (
    "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = current_schema() AND left(table_name, length($1)) = $1"
)
_PG_FUNCTIONS = (
    "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
    "WHERE n.nspname = current_schema() AND left(p.proname, length($1)) = $1"
)


async def _drop_postgres(url: str, prefix: str) -> list[str]:
    try:
        import asyncpg
    except ImportError:
        return _drop_postgres_psycopg(url, prefix)
    conn = await asyncpg.connect(url)
    try:
        tables = [r[0] for r in await conn.fetch(_PG_TABLES, prefix)]
        if tables:
            await conn.execute(
                "DROP TABLE IF EXISTS " + ", ".join(_quote_pg(t) for t in tables) + " CASCADE"
            )
        # Trigger functions (NOTIFY), if the adapter names them with the prefix.
        for signature in [r[0] for r in await conn.fetch(_PG_FUNCTIONS, prefix)]:
            await conn.execute(f"DROP FUNCTION IF EXISTS {signature} CASCADE")
        return tables
    finally:
        await conn.close()


def _drop_postgres_psycopg(url: str, prefix: str) -> list[str]:
    import psycopg  # the adapter may have chosen psycopg 3 over asyncpg

    query = _PG_TABLES.replace("$1", "%(p)s")
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(query, {"p": prefix}).fetchall()]
        if tables:
            conn.execute(
                "DROP TABLE IF EXISTS " + ", ".join(_quote_pg(t) for t in tables) + " CASCADE"
            )
        functions = conn.execute(_PG_FUNCTIONS.replace("$1", "%(p)s"), {"p": prefix})
        for (signature,) in functions.fetchall():
            conn.execute(f"DROP FUNCTION IF EXISTS {signature} CASCADE")
        return tables


def _mysql_params(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
        "db": parts.path.lstrip("/") or "test",
    }


async def _drop_mysql(url: str, prefix: str) -> list[str]:
    import asyncmy

    conn = await asyncmy.connect(**_mysql_params(url), autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                "DATABASE() AND LEFT(table_name, CHAR_LENGTH(%s)) = %s",
                (prefix, prefix),
            )
            tables = [row[0] for row in await cur.fetchall()]
            if tables:
                await cur.execute("DROP TABLE IF EXISTS " + ", ".join(_quote_my(t) for t in tables))
        return tables
    finally:
        await conn.ensure_closed()
