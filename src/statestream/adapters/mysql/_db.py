"""The MySQL / MariaDB database: a pool of asyncmy connections under the shared
:class:`~statestream.adapters.sql._server.ServerDatabase` (URL, prefix, schema check,
reconnection, error messages, round-trip count).

A call is one round trip: one statement, or several sent together as one multi-statement text
(a batch of writes is ``START TRANSACTION; ...; COMMIT`` in one packet).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ...errors import AdapterConnectionError, AdapterError, ConfigurationError, InvalidInput
from ..sql._dialect import Dialect
from ..sql._schema import SCHEMA_VERSION, SchemaError, drop_statements
from ..sql._server import ServerDatabase
from ._dialect import MysqlDialect

try:
    import asyncmy
    from asyncmy.constants import CLIENT
except ImportError as exc:  # pragma: no cover - the driver is an extra
    raise ConfigurationError(
        "the MySQL / MariaDB adapters need the asyncmy driver: pip install 'statestream[mysql]'"
    ) from exc

__all__ = ["SCHEMA_VERSION", "Bind", "MysqlDatabase", "Result", "SchemaError"]

R = TypeVar("R")

#: Renders a statement with ``%s`` placeholders and its values, as the driver binds them.
Bind = Callable[[str, Sequence[Any]], str]

DEFAULT_URL = "mysql://root@127.0.0.1:3306/test"
DIALECT = MysqlDialect()


@dataclass(frozen=True, slots=True)
class Result:
    """One statement's result in a multi-statement call."""

    rowcount: int
    rows: tuple[tuple[Any, ...], ...] | None


class _SchemaConn:
    """The schema check's view of one connection (statements rendered as text: the catalogue
    query has a list parameter)."""

    def __init__(self, db: MysqlDatabase, conn: Any) -> None:
        self._db = db
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        self._db.round_trips += 1
        cur = self._conn.cursor()
        values = tuple(tuple(a) if isinstance(a, list) else a for a in args)
        await cur.execute(cur.mogrify(sql, values) if values else sql)
        return [tuple(row) for row in await cur.fetchall()]

    async def execute(self, sql: str, *args: Any) -> None:
        await self.fetch(sql, *args)

    async def begin(self) -> None:
        await self._conn.begin()

    async def commit(self) -> None:
        await self._conn.commit()

    async def rollback(self) -> None:
        await self._conn.rollback()


class _Pool:
    """Idle connections of one event loop, at most ``size`` in use at a time.

    Connections belong to the database's home loop: calls from other loops are run there by
    :meth:`ServerDatabase.retrying`."""

    def __init__(self, db: MysqlDatabase, size: int) -> None:
        self._db = db
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(size)
        self._all: set[Any] = set()

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
                ok = DIALECT.server_error(exc)
                raise
            finally:
                if ok and not self._db._closed:
                    self._idle.append(conn)
                else:
                    self._all.discard(conn)
                    conn.close()

    def put(self, conn: Any) -> None:
        self._all.add(conn)
        self._idle.append(conn)

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()


class MysqlDatabase(ServerDatabase):
    """A statestream database on a MySQL or MariaDB server, shared by the adapters of one
    process: ``MysqlDatabase("mysql://user:password@host:3306/dbname")``.

    Args:
        url: ``mysql://USER:PASSWORD@HOST:PORT/DATABASE``; default: the environment variable
            ``STATESTREAM_MYSQL_URL``, else ``mysql://root@127.0.0.1:3306/test``.
        prefix: the prefix of every table name (letters, digits, underscores), so that several
            statestream deployments (or tests) can share one database.
        migrate: migrate a schema of an older release at start (else that is an error that
            says to run ``statestream db migrate --url ...``).
        pool_size: connections at most.
        connect_timeout: how long one connection attempt may take.
        reconnect_timeout: after the server was reached once, how long a read retries a lost
            connection (with backoff, logged) before it fails.

    Connects on first use (``await db.open()`` connects at once and reports a wrong URL,
    password, database or schema there) and creates the schema in a database that has none
    under the prefix. Durability is the server's: with ``innodb_flush_log_at_trx_commit=1``
    (the default) a write that returned survives a crash of the server host.
    :attr:`round_trips` counts the calls sent to the server.
    """

    dialect: ClassVar[Dialect] = DIALECT

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "statestream_",
        migrate: bool = False,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        reconnect_timeout: float = 30.0,
    ) -> None:
        if url is None:
            url = os.environ.get(DIALECT.env_var) or DEFAULT_URL
        super().__init__(
            url,
            prefix=prefix,
            migrate=migrate,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            reconnect_timeout=reconnect_timeout,
        )
        #: The server's ``max_allowed_packet``: a batch of writes is kept well below it.
        self.max_packet = 16 * 1024 * 1024
        #: How a row of a table value constructor starts: "" on MariaDB, "ROW" on MySQL 8.
        self.row_constructor = ""
        self._pool = _Pool(self, pool_size)

    async def _connect(self) -> Any:
        u = self.url
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await asyncmy.connect(
                    host=u.host,
                    port=u.port,
                    user=u.user or "root",
                    password=u.password or "",
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

    async def _create_pool(self) -> None:
        if not self._pool._all:
            self._pool.put(await self._connect())  # a wrong URL fails here, at once

    async def _close_pool(self) -> None:
        self._pool.close()

    @contextlib.asynccontextmanager
    async def _schema_connection(self) -> AsyncIterator[_SchemaConn]:
        async with self._pool.connection() as conn:
            yield _SchemaConn(self, conn)

    async def drop_tables(self) -> None:
        """Drop every statestream table under the prefix (tests; irreversible)."""
        await self.drop()

    async def drop(self) -> None:
        """Drop every statestream table under the prefix (tests; irreversible)."""
        await self._create_pool_once()
        async with self._pool.connection() as conn:
            cur = conn.cursor()
            for statement in drop_statements(self.prefix, DIALECT):
                await cur.execute(statement)

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

        return await self._call(fetch, idempotent=idempotent)

    async def execute(
        self, sql: str, args: Sequence[Any] | None = None, *, idempotent: bool = False
    ) -> int:
        """Run one statement in its own transaction (autocommit); the rows it changed."""

        async def execute(conn: Any) -> int:
            cur = conn.cursor()
            await cur.execute(sql, args)
            return int(cur.rowcount)

        return await self._call(execute, idempotent=idempotent)

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
                if transaction and DIALECT.server_error(exc):
                    await conn.rollback()  # the server skipped the statements after the error
                raise
            if transaction:
                return results[1:-1]
            return results

        attempt = 0
        while True:
            try:
                return await self._call(run, idempotent=idempotent)
            except AdapterError as exc:
                cause = exc.__cause__
                if attempt < 4 and cause is not None and DIALECT.retryable(cause):
                    attempt += 1
                    await asyncio.sleep(0.005 * attempt)
                    continue
                raise

    async def _call(self, fn: Callable[[Any], Awaitable[R]], *, idempotent: bool) -> R:
        """``fn(connection)`` on a pooled connection, one round trip, through
        :meth:`retrying` (reconnection, errors, calls from other event loops)."""

        async def once() -> R:
            async with self._pool.connection() as conn:
                return await fn(conn)

        return await self.retrying(once, idempotent=idempotent)
