"""The adapter sets the fault tests run on, by name: ``sqlite``, ``postgres``, ``mysql`` (records
and events in one database, the event row written in the record's transaction), and
``postgres+kafka``, ``mysql+kafka`` (records and their outbox in the server, events in Kafka,
published by the engine's outbox relay).

One registry builds the four adapters (streamer, record store, role scheduler, timeout store) of
a backend from a *location* (a file path for SQLite, a URL for the servers) and a table prefix,
so that a test written once runs on every backend. The server modules are imported lazily: a
test process (or a worker subprocess) that uses only SQLite never imports them.

The Kafka sets need a broker: ``open_set(..., kafka="host:port")``, else
``STATESTREAM_KAFKA_BOOTSTRAP`` (what a test hands to its worker subprocesses; the test itself
takes the session broker with :func:`kafka_for`). Their topics and consumer groups carry the
test's table prefix, so tests sharing the broker never see each other's events.

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
    "KAFKA_NAMES",
    "NAMES",
    "AdapterSet",
    "Backend",
    "adapter_set",
    "drop_prefixed",
    "kafka_for",
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


KAFKA_ENV = "STATESTREAM_KAFKA_BOOTSTRAP"
#: Partitions of the Kafka sets' topics: a multiple of every parallel_count the tests use
#: (1, 2, 3, 4, 6), so that each shard reads only its own partitions.
KAFKA_PARTITIONS = 12


@dataclass(frozen=True)
class Backend:
    """How to build one backend's adapters: the module and the class name prefix."""

    name: str
    module: str
    prefix: str  # class names: f"{prefix}Database", f"{prefix}RecordStore", ...
    server: bool
    #: events in Kafka (the record store has no ``publish_to``: the outbox relay publishes)
    kafka: bool = False

    @property
    def records(self) -> str:
        """The SQL backend holding the records (its URL, its tables): ``postgres`` for
        ``postgres+kafka``."""
        return self.name.split("+", 1)[0]

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
    "postgres+kafka": Backend(
        "postgres+kafka", "statestream.adapters.postgres", "Postgres", server=True, kafka=True
    ),
    "mysql+kafka": Backend(
        "mysql+kafka", "statestream.adapters.mysql", "Mysql", server=True, kafka=True
    ),
}
#: The SQL-only sets (records and events in one database).
NAMES = [name for name, backend in BACKENDS.items() if not backend.kafka]
#: The server records + Kafka events sets.
KAFKA_NAMES = [name for name, backend in BACKENDS.items() if backend.kafka]


def new_prefix() -> str:
    """A table prefix no other test (nor another helper's tests) uses: ``t_<10 hex>_``."""
    return f"t_{uuid.uuid4().hex[:10]}_"


def server_url(name: str) -> str:
    records = BACKENDS[name].records if name in BACKENDS else name
    return os.environ.get(URL_ENV[records], DEFAULT_URLS[records])


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


def kafka_for(
    name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch | None = None
) -> str | None:
    """The session broker's ``host:port`` for a Kafka set (starting it, or skipping the test
    when there is none: see tests/kafka_broker.py), ``None`` for the others. With
    ``monkeypatch``, also set ``STATESTREAM_KAFKA_BOOTSTRAP`` for the test (so that
    :func:`open_set` and the worker subprocesses the test starts find the broker)."""
    if not BACKENDS[name].kafka:
        return None
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    if monkeypatch is not None:
        monkeypatch.setenv(KAFKA_ENV, bootstrap)
    return bootstrap


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
    kafka: str | None = None

    def new_scheduler(self, **options: Any) -> Any:
        """One more role scheduler on this set's database (another instance of a workflow in
        this process, with its own membership)."""
        cls = BACKENDS[self.name].classes()["RoleScheduler"]
        return cls(self.db, **_accepted(cls, options))

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
    kafka: str | None = None,
) -> AdapterSet:
    """Build backend ``name``'s adapters on ``location`` (a path or a URL) with ``prefix``.

    SQLite keeps every test in a file of its own and takes no prefix. ``ttl``,
    ``poll_interval`` and ``member_ttl`` go to the role scheduler when it takes them (short
    leases move a dead process's roles fast). ``kafka``: the broker of a Kafka set (default:
    ``STATESTREAM_KAFKA_BOOTSTRAP``).
    """
    backend = BACKENDS[name]
    classes = backend.classes()
    if backend.server:
        db = classes["Database"](location, prefix=prefix)
    else:
        db = classes["Database"](location)
    if backend.kafka:
        kafka = kafka or os.environ.get(KAFKA_ENV)
        if not kafka:
            raise RuntimeError(f"the {name} set needs a broker: open_set(kafka=...) or {KAFKA_ENV}")
        from statestream.adapters.kafka import KafkaStreamer

        streamer: Any = KafkaStreamer(
            kafka,
            partitions=KAFKA_PARTITIONS,
            topic_prefix=prefix,
            consumer_config={"session.timeout.ms": 6000},
        )
        store = classes["RecordStore"](db)  # the outbox: the engine's relay publishes to Kafka
    else:
        kafka = None
        streamer = classes["Streamer"](db)
        store = classes["RecordStore"](db, publish_to=streamer)
    given = (("ttl", ttl), ("poll_interval", poll_interval), ("member_ttl", member_ttl))
    options = {k: v for k, v in given if v is not None}
    scheduler = classes["RoleScheduler"](db, **_accepted(classes["RoleScheduler"], options))
    timeouts = classes["TimeoutStore"](db)
    return AdapterSet(name, location, prefix, db, streamer, store, scheduler, timeouts, kafka)


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
    and only those; return their names. SQLite: nothing to do (the file is the test's own). The
    Kafka sets' topics stay: the test broker keeps them in memory only, under the test's prefix."""
    if not BACKENDS[name].server:
        return []
    if not prefix.startswith("t_") or len(prefix) < 8:
        raise ValueError(f"refusing to drop tables by the prefix {prefix!r}: not a test prefix")
    if BACKENDS[name].records == "postgres":
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
