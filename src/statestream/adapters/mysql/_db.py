"""The MySQL / MariaDB database: URL, pool of asyncmy connections, reconnection, error
translation, the schema check and the count of round trips.

Every adapter of the MySQL set talks to the server through one :class:`MysqlDatabase`. A call is
one round trip: one statement, or several sent together as one multi-statement text (a
transaction of a batch of writes is ``START TRANSACTION; ...; COMMIT`` in one packet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Self, TypeVar

from ...errors import AdapterConnectionError, AdapterError, ConfigurationError, InvalidInput
from ._dialect import ErrorKind, MysqlDialect

try:
    import asyncmy
    from asyncmy.constants import CLIENT
except ImportError as exc:  # pragma: no cover - the driver is an extra
    raise ConfigurationError(
        "the MySQL / MariaDB adapters need the asyncmy driver: pip install 'statestream[mysql]'"
    ) from exc

__all__ = ["SCHEMA_VERSION", "Bind", "MysqlDatabase", "Result", "SchemaError"]

log = logging.getLogger("statestream.mysql")

R = TypeVar("R")

#: Renders a statement with ``%s`` placeholders and its values, as the driver binds them.
Bind = Callable[[str, Sequence[Any]], str]

#: The schema version this release writes (``schema/NNN_*.sql`` go up to it).
SCHEMA_VERSION = 1

#: Every table of the schema (without the prefix) and its columns: the PostgreSQL ones, plus
#: ``records.writer`` and the ``event_seq`` counter (see ``_batch`` and ``_stream``).
TABLES: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "records": (
        "run_id",
        "seq",
        "workflow_name",
        "foreign_id",
        "run_state",
        "status",
        "object",
        "created_at",
        "updated_at",
        "version",
        "run_state_reason",
        "status_description",
        "auto_resumes",
        "active",
        "writer",
    ),
    "outbox": (
        "seq",
        "id",
        "workflow_name",
        "topic",
        "key",
        "type",
        "headers",
        "data",
        "created_at",
    ),
    "events": ("id", "tx", "topic", "key", "type", "headers", "data", "created_at", "key_hash"),
    "event_seq": ("id", "n"),
    "cursors": ("topic", "name", "last_tx", "last_id", "updated_at"),
    "timeouts": (
        "id",
        "workflow_name",
        "foreign_id",
        "run_id",
        "status",
        "run_version",
        "expire_at",
        "created_at",
        "state",
        "claimed_until",
    ),
    "leases": ("role", "holder", "expires_at"),
    "parked": (
        "id",
        "seq",
        "workflow_name",
        "consumer",
        "event_id",
        "topic",
        "key",
        "type",
        "headers",
        "data",
        "created_at",
        "error",
        "attempts",
        "parked_at",
        "retry_requested",
    ),
}

DEFAULT_URL = "mysql://root@127.0.0.1:3306/test"
_DIALECT = MysqlDialect()


class SchemaError(AdapterError):
    """The database's schema is not the one this release uses (older, newer, another shape)."""


@dataclass(frozen=True, slots=True)
class Result:
    """One statement's result in a multi-statement call."""

    rowcount: int
    rows: tuple[tuple[Any, ...], ...] | None


@dataclass(frozen=True)
class _URL:
    user: str
    password: str
    host: str
    port: int
    database: str

    def redacted(self) -> str:
        return f"mysql://{urllib.parse.quote(self.user)}@{self.host}:{self.port}/{self.database}"


def _parse_url(url: object) -> _URL:
    form = "mysql://USER:PASSWORD@HOST:PORT/DATABASE"
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"no MySQL URL: pass url='{form}' or set STATESTREAM_MYSQL_URL")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"malformed MySQL URL ({exc}): expected {form}") from exc
    if parts.scheme not in _DIALECT.schemes:
        raise ConfigurationError(
            f"MySQL URL with scheme {parts.scheme!r}: expected {form} (schemes: "
            f"{', '.join(_DIALECT.schemes)})"
        )
    database = urllib.parse.unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ConfigurationError(f"MySQL URL without a database name: expected {form}")
    return _URL(
        urllib.parse.unquote(parts.username) if parts.username else "root",
        urllib.parse.unquote(parts.password) if parts.password else "",
        parts.hostname or "127.0.0.1",
        port or _DIALECT.default_port,
        database,
    )


def _valid_prefix(prefix: object) -> str:
    if (
        not isinstance(prefix, str)
        or not prefix
        or not (prefix[0].isascii() and (prefix[0].isalpha() or prefix[0] == "_"))
        or not all(c.isascii() and (c.isalnum() or c == "_") for c in prefix)
        or len(prefix) > _DIALECT.max_identifier - 24
    ):
        raise ConfigurationError(
            f"invalid table prefix {prefix!r}: use letters, digits and underscores only (not "
            f"starting with a digit), at most {_DIALECT.max_identifier - 24} characters, such "
            "as 'statestream_'"
        )
    return prefix


def migrations(prefix: str) -> list[tuple[int, list[str]]]:
    """The schema files, in version order: (version, statements), ``{prefix}`` put in."""
    folder = resources.files(__package__).joinpath("schema")
    found: list[tuple[int, list[str]]] = []
    for entry in folder.iterdir():
        name = entry.name
        if not (name.endswith(".sql") and name[:3].isdigit()):
            continue
        lines = [
            line
            for line in entry.read_text(encoding="utf-8").splitlines()
            if not line.lstrip().startswith("--")
        ]
        statements = [s.strip().replace("{prefix}", prefix) for s in "\n".join(lines).split(";\n")]
        found.append((int(name[:3]), [s.rstrip(";") for s in statements if s.strip()]))
    found.sort()
    return found


class _Pool:
    """Idle connections of one event loop, at most ``size`` in use at a time.

    Connections belong to the loop that opened them. The first loop that uses the database
    keeps its connections open between calls; another loop (a thread of its own, as the
    conformance suite's "other process") closes each connection after its call, so that none
    is left behind when that loop ends."""

    def __init__(self, db: MysqlDatabase, size: int, *, keep: bool) -> None:
        self._db = db
        self._keep = keep
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(size)
        self._all: set[Any] = set()
        self.opening = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._db._connect()
            self._all.add(conn)
            ok = False
            try:
                yield conn
                ok = True
            except Exception as exc:
                # A server's refusal (a unique key, a bad value) leaves the connection usable;
                # a lost one, a driver error or a cancellation mid-query does not.
                ok = _DIALECT.server_error(exc)
                raise
            finally:
                if ok and self._keep and not self._db._closed:
                    self._idle.append(conn)
                else:
                    self._all.discard(conn)
                    conn.close()

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()


class MysqlDatabase:
    """A statestream database on a MySQL or MariaDB server, shared by the adapters of one
    process.

    Args:
        url: ``mysql://USER:PASSWORD@HOST:PORT/DATABASE``; default: the environment variable
            ``STATESTREAM_MYSQL_URL``, else ``mysql://root@127.0.0.1:3306/test``.
        prefix: put before every table name (letters, digits, underscores), so that several
            applications (or tests) can share a database.
        pool_size: connections at most.
        connect_timeout: seconds to wait for the server at connect.
        reconnect_timeout: after the server was reached once, how long a read retries a lost
            connection (with backoff, logged) before it fails.
        migrate: bring an older schema up to date at start (else an older schema is an error).

    Connects on first use (or on ``await db.open()``, which reports a wrong URL or schema at
    once) and creates the schema in a database that has none under the prefix. Durability is the
    server's: with ``innodb_flush_log_at_trx_commit=1`` (the default) a write that returned is on
    disk. :attr:`round_trips` counts the calls sent to the server.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "statestream_",
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        reconnect_timeout: float = 30.0,
        migrate: bool = False,
    ) -> None:
        if url is None:
            url = os.environ.get(_DIALECT.env_var) or DEFAULT_URL
        self.url = _parse_url(url)
        self.prefix = _valid_prefix(prefix)
        if pool_size < 1:
            raise ConfigurationError(f"pool_size must be >= 1, got {pool_size}")
        if connect_timeout <= 0 or reconnect_timeout < 0:
            raise ConfigurationError("connect_timeout must be > 0 and reconnect_timeout >= 0")
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self.migrate = migrate
        #: Calls sent to the server so far (a multi-statement call counts once).
        self.round_trips = 0
        #: The server's ``max_allowed_packet``: a batch of writes is kept well below it.
        self.max_packet = 16 * 1024 * 1024
        #: How a row of a table value constructor starts: "" on MariaDB, "ROW" on MySQL 8.
        self.row_constructor = ""
        self._pools: dict[asyncio.AbstractEventLoop, _Pool] = {}
        self._opened = False
        self._closed = False
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ naming

    @property
    def where(self) -> str:
        return f"MySQL at {self.url.host}:{self.url.port}, database {self.url.database!r}"

    def table(self, name: str) -> str:
        return self.prefix + name

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> Self:
        """Connect and check the schema now (else it happens on first use). Idempotent."""
        await self._ready()
        return self

    async def _ready(self) -> None:
        if self._opened:
            return
        if self._closed:
            raise AdapterError(f"the database ({self.where}) is closed")
        if self._failure is not None:
            raise self._failure
        async with self._pool.opening:
            if self._is_open():  # another caller opened it meanwhile
                return
            try:
                async with self._pool.connection() as conn:
                    await self._ensure_schema(conn)
            except SchemaError as exc:
                self._failure = exc
                raise
            except Exception as exc:
                raise self.translate(exc) from exc
            self._opened = True

    @property
    def _pool(self) -> _Pool:
        """The pool of the running event loop."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            for other in [o for o in self._pools if o.is_closed()]:
                del self._pools[other]
            pool = self._pools[loop] = _Pool(self, self.pool_size, keep=not self._pools)
        return pool

    def _is_open(self) -> bool:
        return self._opened

    async def _connect(self) -> Any:
        u = self.url
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await asyncmy.connect(
                    host=u.host,
                    port=u.port,
                    user=u.user,
                    password=u.password,
                    database=u.database,
                    charset="utf8mb4",
                    autocommit=True,
                    client_flag=CLIENT.MULTI_STATEMENTS,
                    connect_timeout=self.connect_timeout,
                    stmt_cache_size=128,
                )
        except TimeoutError as exc:
            raise AdapterConnectionError(
                f"cannot connect to {self.where}: no answer within {self.connect_timeout:g} s; "
                f"check that the server runs and that {u.host}:{u.port} is reachable from "
                "this host"
            ) from exc
        except Exception as exc:
            raise self.translate(exc) from exc
        try:
            cur = conn.cursor()
            await cur.execute("SELECT @@max_allowed_packet, VERSION()")
            packet, version = (await cur.fetchall())[0]
            self.max_packet = int(packet)
            self.row_constructor = "" if "mariadb" in str(version).lower() else "ROW"
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close every connection. Further calls raise :class:`AdapterError`."""
        self._closed = True
        self._opened = False
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()

    # ------------------------------------------------------------------ calls

    async def fetch(
        self, sql: str, args: Sequence[Any] | None = None, *, idempotent: bool = True
    ) -> tuple[tuple[Any, ...], ...]:
        """The rows of one statement (``%s`` placeholders, bound by the driver)."""

        async def fetch(conn: Any) -> tuple[tuple[Any, ...], ...]:
            cur = conn.cursor()
            await cur.execute(sql, args)
            rows: tuple[tuple[Any, ...], ...] = tuple(await cur.fetchall())
            return rows

        return await self.retrying(fetch, idempotent=idempotent)

    async def execute(
        self, sql: str, args: Sequence[Any] | None = None, *, idempotent: bool = False
    ) -> int:
        """Run one statement in its own transaction (autocommit); the rows it changed."""

        async def execute(conn: Any) -> int:
            cur = conn.cursor()
            await cur.execute(sql, args)
            return int(cur.rowcount)

        return await self.retrying(execute, idempotent=idempotent)

    async def script(
        self,
        build: Callable[[Bind], list[str]],
        *,
        transaction: bool = True,
        idempotent: bool = False,
    ) -> list[Result]:
        """Send the statements ``build(bind)`` returns in one round trip, inside
        ``START TRANSACTION ... COMMIT`` with ``transaction``; each statement's result.

        ``bind(sql, args)`` renders a statement with ``%s`` placeholders and its values as the
        driver does (escaped, with the connection's character set). If a statement fails, the
        server skips the rest: the transaction is rolled back and the error raised. A deadlock
        or lock wait timeout (the transaction was rolled back) is retried a few times.
        """

        async def run(conn: Any) -> list[Result]:
            cur = conn.cursor()

            def bind(sql: str, args: Sequence[Any]) -> str:
                return str(cur.mogrify(sql, tuple(args)))

            statements = build(bind)
            if transaction:
                statements = ["START TRANSACTION", *statements, "COMMIT"]
            text = ";\n".join(statements)
            if len(text) >= self.max_packet:
                raise InvalidInput(
                    f"a write of {len(text)} bytes is larger than the server's "
                    f"max_allowed_packet ({self.max_packet}) on {self.where}: store less, or "
                    "raise max_allowed_packet"
                )
            results: list[Result] = []
            try:
                await cur.execute(text)
                while True:
                    rows = tuple(await cur.fetchall()) if cur.description else None
                    results.append(Result(int(cur.rowcount), rows))
                    if not await cur.nextset():
                        break
            except Exception as exc:
                if transaction and _DIALECT.server_error(exc):
                    await conn.rollback()  # the server skipped the statements after the error
                raise
            if transaction:
                return results[1:-1]
            return results

        attempt = 0
        while True:
            try:
                return await self.retrying(run, idempotent=idempotent)
            except AdapterError as exc:
                cause = exc.__cause__
                if attempt < 4 and cause is not None and _DIALECT.retryable(cause):
                    attempt += 1
                    await asyncio.sleep(0.005 * attempt)
                    continue
                raise

    async def retrying(self, fn: Callable[[Any], Awaitable[R]], *, idempotent: bool) -> R:
        """Run ``fn(connection)`` (one round trip); on a lost connection, retry with backoff
        (logged) for up to ``reconnect_timeout`` when ``idempotent``; otherwise the translated
        error at once (the outcome of a write is then unknown: the engine's compare-and-set
        makes its retry safe)."""
        await self._ready()
        delay = 0.05
        deadline: float | None = None
        attempt = 0
        while True:
            try:
                async with self._pool.connection() as conn:
                    self.round_trips += 1
                    return await fn(conn)
            except Exception as exc:
                if (
                    not idempotent
                    or self._closed
                    or _DIALECT.classify(exc) is not ErrorKind.CONNECTION
                ):
                    raise self.translate(exc) from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.reconnect_timeout
                if now >= deadline:
                    raise self.translate(exc) from exc
                attempt += 1
                log.warning(
                    "statestream: lost the connection to %s (%s); retrying in %.2f s (attempt %d)",
                    self.where,
                    exc,
                    delay,
                    attempt,
                )
                await asyncio.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------------ errors

    def translate(self, exc: BaseException) -> BaseException:
        """A driver exception as the caller should see it: naming the server, the database
        and what to do; our own errors and non-driver exceptions pass."""
        if isinstance(exc, AdapterError | InvalidInput | ConfigurationError):
            return exc
        if isinstance(exc, UnicodeEncodeError):
            error: BaseException = InvalidInput(
                f"a text value contains a lone surrogate (at index {exc.start}), which is not "
                "valid Unicode: MySQL keeps text as UTF-8; pass valid text"
            )
            error.__cause__ = exc
            return error
        kind = _DIALECT.classify(exc)
        text = _DIALECT.message(exc)
        if kind is ErrorKind.CONNECTION:
            error = AdapterConnectionError(
                f"cannot reach {self.where} ({text}): check that the server runs and accepts "
                f"connections on {self.url.host}:{self.url.port}"
            )
        elif kind is ErrorKind.AUTH:
            error = AdapterConnectionError(
                f"{self.where} refused user {self.url.user!r} ({text}): check the user and "
                f"password in the URL ({self.url.redacted()}) and the server's grants"
            )
        elif kind is ErrorKind.MISSING_DATABASE:
            error = AdapterConnectionError(
                f"{self.where}: the database {self.url.database!r} does not exist ({text}): "
                "create it (CREATE DATABASE), or fix the database name in the URL"
            )
        elif kind is ErrorKind.INVALID_VALUE:
            error = InvalidInput(f"{self.where} refused a value: {text}")
        elif kind is ErrorKind.MISSING_TABLE:
            error = SchemaError(
                f"{self.where}: a statestream table (prefix {self.prefix!r}) is missing "
                f"({text}): it was dropped after start; restart to create the schema again, "
                "or restore it"
            )
        else:
            error = AdapterError(f"MySQL error on {self.where}: {text}")
        error.__cause__ = exc
        return error

    # ------------------------------------------------------------------ schema

    async def schema_version(self) -> int:
        """The schema version under the prefix (0: none), without creating anything."""
        async with self._pool.connection() as conn:
            return (await self._inspect(conn))[0]

    async def _inspect(self, conn: Any) -> tuple[int, dict[str, set[str]]]:
        cur = conn.cursor()
        names = [self.prefix + t for t in TABLES]
        await cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            f"WHERE table_schema = DATABASE() AND table_name IN ({', '.join(['%s'] * len(names))})",
            names,
        )
        columns: dict[str, set[str]] = {}
        for table, column in await cur.fetchall():
            table = table.decode() if isinstance(table, bytes) else str(table)
            column = column.decode() if isinstance(column, bytes) else str(column)
            columns.setdefault(table[len(self.prefix) :], set()).add(column.lower())
        version = 0
        if "meta" in columns:
            await cur.execute(f"SELECT value FROM {self.prefix}meta WHERE `key` = 'schema_version'")
            rows = await cur.fetchall()
            if rows:
                try:
                    version = int(bytes(rows[0][0]).decode())
                except ValueError:
                    version = -1
        return version, columns

    def _judge(self, version: int, columns: dict[str, set[str]]) -> str:
        if not columns:
            return "create"
        prefix = self.prefix
        if version <= 0:
            tables = ", ".join(sorted(prefix + t for t in columns))
            raise SchemaError(
                f"{self.where} has tables named like statestream's ({tables}) but no "
                f"statestream schema version in {prefix}meta: they were not made by "
                "statestream, or with another shape. Choose another table prefix "
                "(prefix=...), or drop those tables"
            )
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.where} has statestream schema version {version} (prefix {prefix!r}), "
                f"newer than this release understands ({SCHEMA_VERSION}): upgrade statestream "
                "on this host, or use another database or prefix"
            )
        if version < SCHEMA_VERSION:
            if self.migrate:
                return "migrate"
            raise SchemaError(
                f"{self.where} has statestream schema version {version} (prefix {prefix!r}), "
                f"older than this release's {SCHEMA_VERSION}: migrate it once with "
                "MysqlDatabase(url, prefix=..., migrate=True), then start again"
            )
        for table, expected in TABLES.items():
            have = columns.get(table)
            if have is None:
                raise SchemaError(
                    f"{self.where}: table {prefix}{table} is missing although the schema "
                    f"version is {version}: restore it from a backup, or use another prefix"
                )
            if have != set(expected):
                missing = ", ".join(sorted(set(expected) - have)) or "none"
                extra = ", ".join(sorted(have - set(expected))) or "none"
                raise SchemaError(
                    f"{self.where}: table {prefix}{table} exists with another shape (missing "
                    f"columns: {missing}; unexpected columns: {extra}): it was changed by hand "
                    "or by another program; use another prefix, or restore the table"
                )
        return "ok"

    async def _ensure_schema(self, conn: Any) -> None:
        version, columns = await self._inspect(conn)
        if self._judge(version, columns) == "ok":
            return
        cur = conn.cursor()
        lock = f"{self.prefix}statestream_schema"
        await cur.execute("SELECT GET_LOCK(%s, %s)", (lock, 60))
        if (await cur.fetchall())[0][0] != 1:
            raise AdapterError(
                f"{self.where}: another process holds the schema lock {lock!r} for over 60 s"
            )
        try:
            version, columns = await self._inspect(conn)
            if self._judge(version, columns) == "ok":
                return
            for number, statements in migrations(self.prefix):
                if number <= version:
                    continue
                for statement in statements:
                    await cur.execute(statement)
            await cur.execute(
                f"REPLACE INTO {self.prefix}meta (`key`, value) VALUES ('schema_version', %s)",
                (str(SCHEMA_VERSION),),
            )
            log.info(
                "statestream: schema (prefix %s) at version %d on %s",
                self.prefix,
                SCHEMA_VERSION,
                self.where,
            )
        finally:
            await cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))
            await cur.fetchall()

    async def drop(self) -> None:
        """Drop every statestream table under the prefix (tests; irreversible)."""
        tables = ", ".join(self.prefix + t for t in TABLES)
        async with self._pool.connection() as conn:
            cur = conn.cursor()
            await cur.execute(f"DROP TABLE IF EXISTS {tables}")
