"""A statestream database on PostgreSQL, through asyncpg."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import ConfigurationError
from ..sql._dialect import Dialect
from ..sql._server import ServerDatabase
from ._dialect import PostgresDialect

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PostgresDatabase"]


def _driver() -> Any:
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - the extra is installed in development
        raise ConfigurationError(
            "the PostgreSQL adapters need asyncpg: pip install 'statestream[postgres]'"
        ) from exc
    return asyncpg


async def _no_reset(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing. statestream leaves no session state on a pooled
    connection (the schema lock is taken and released on one connection, explicitly), and
    asyncpg's default reset is one more round trip per statement."""


class _SchemaConn:
    """The schema check's view of one asyncpg connection."""

    def __init__(self, db: PostgresDatabase, conn: asyncpg.Connection) -> None:
        self._db = db
        self._conn = conn
        self._tx: Any = None

    async def fetch(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
        self._db.round_trips += 1
        return [tuple(r) for r in await self._conn.fetch(sql, *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        self._db.round_trips += 1
        await self._conn.execute(sql, *args)

    async def begin(self) -> None:
        self._tx = self._conn.transaction()
        await self._tx.start()

    async def commit(self) -> None:
        await self._tx.commit()

    async def rollback(self) -> None:
        if self._tx is not None:
            await self._tx.rollback()


class PostgresDatabase(ServerDatabase):
    """A statestream database on a PostgreSQL server (13 or newer), shared by the adapters of
    one process: ``PostgresDatabase("postgresql://user:password@host:5432/dbname")``.

    Args:
        url: the server and database; default: the environment variable
            ``STATESTREAM_POSTGRES_URL``.
        prefix: the prefix of every table name (letters, digits, underscores), so that several
            statestream deployments can share one database.
        migrate: migrate a schema of an older release at start (else that is an error that
            says to run ``statestream db migrate --url ...``).
        pool_size: the most connections the pool opens (plus one for LISTEN when a receiver
            is open).
        connect_timeout: how long one connection attempt may take.
        reconnect_timeout: after the server was reached once, how long a lost connection is
            retried (with backoff, logged) before the caller gets ``AdapterConnectionError``.

    The connection opens on first use; ``await db.open()`` opens it at once and reports a
    wrong URL, password, database or schema there. Durability is the server's: with its
    defaults (``fsync = on``, ``synchronous_commit = on``) a write acknowledged by an adapter
    survives a crash of the server host.
    """

    dialect: ClassVar[Dialect] = PostgresDialect()

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "statestream_",
        migrate: bool = False,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        reconnect_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            url,
            prefix=prefix,
            migrate=migrate,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            reconnect_timeout=reconnect_timeout,
        )
        self._raw_url = url if url is not None else None
        self._pool: asyncpg.Pool | None = None
        #: The batching writer of record writes (one per database), made by the record store.
        self.record_writer: Any = None
        #: The channel of the events table's notifications.
        self.channel = f"{self.prefix}events"
        #: The streamers on this database (closed with it).
        self.streamers: set[Any] = set()

    async def close(self) -> None:
        """Close the streamers' LISTEN connections and the pool."""
        for streamer in list(self.streamers):
            await streamer.close()
        writer = self.record_writer
        if writer is not None:
            await writer.batcher.close()
        await super().close()

    def _dsn(self) -> str:
        u = self.url
        import urllib.parse

        user = urllib.parse.quote(u.user, safe="") if u.user else ""
        password = ":" + urllib.parse.quote(u.password, safe="") if u.password else ""
        auth = f"{user}{password}@" if user or password else ""
        query = "?" + urllib.parse.urlencode(u.query) if u.query else ""
        host = f"[{u.host}]" if ":" in u.host else u.host
        return f"postgresql://{auth}{host}:{u.port}/{urllib.parse.quote(u.database)}{query}"

    async def connect(self) -> asyncpg.Connection:
        """A new connection of its own (not from the pool): the listener uses one."""
        asyncpg = _driver()
        return await asyncpg.connect(
            self._dsn(), timeout=self.connect_timeout, statement_cache_size=0
        )

    async def _create_pool(self) -> None:
        if self._pool is not None:
            return
        asyncpg = _driver()
        pool = await asyncpg.create_pool(
            self._dsn(),
            # No floor of idle connections: during an outage asyncpg would log a traceback
            # every second trying to restore it; our own reconnect loop reports the outage.
            min_size=0,
            max_size=self.pool_size,
            timeout=self.connect_timeout,
            reset=_no_reset,
            server_settings={"application_name": "statestream"},
        )
        try:
            async with pool.acquire():  # a wrong URL, user or database fails here, at open
                pass
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def _schema_connection(self) -> AsyncIterator[_SchemaConn]:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            yield _SchemaConn(self, conn)

    @property
    def pool(self) -> asyncpg.Pool:
        pool = self._pool
        if pool is None:
            raise ConfigurationError("the PostgresDatabase is not open")
        return pool

    # ------------------------------------------------------------ one round trip each

    async def fetch(self, sql: str, *args: Any, idempotent: bool = True) -> list[Any]:
        return await self.retrying(lambda: self._run("fetch", sql, args), idempotent=idempotent)

    async def fetchrow(self, sql: str, *args: Any, idempotent: bool = True) -> Any:
        return await self.retrying(lambda: self._run("fetchrow", sql, args), idempotent=idempotent)

    async def fetchval(self, sql: str, *args: Any, idempotent: bool = True) -> Any:
        return await self.retrying(lambda: self._run("fetchval", sql, args), idempotent=idempotent)

    async def execute(self, sql: str, *args: Any, idempotent: bool = True) -> str:
        return await self.retrying(lambda: self._run("execute", sql, args), idempotent=idempotent)

    async def _run(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        """One statement on a pooled connection, acquired and released by a task of its own
        that the caller's cancellation does not interrupt: a cancelled caller waits for the
        statement to end (statements are short; on a lost connection they end at once), then
        gets its ``CancelledError``. So a cancelled call's statement is over when the call
        returns (a role scheduler that deletes the row a cancelled take may have written
        relies on that), and the connection goes back to the pool from a task that was never
        cancelled.

        Cancelling asyncpg mid-statement and releasing the connection from the cancelled
        task leaves its pool racing a background release against the next user of the same
        holder; during an outage that ends in ``InternalClientError:
        PoolConnectionHolder.release() called on a free connection holder``."""
        task = asyncio.ensure_future(self._on_connection(self.pool, method, sql, args))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            while not task.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: the caller was cancelled, the outcome is moot
            raise

    @staticmethod
    async def _on_connection(
        pool: asyncpg.Pool, method: str, sql: str, args: tuple[Any, ...]
    ) -> Any:
        async with pool.acquire() as conn:
            return await getattr(conn, method)(sql, *args)

    async def drop_tables(self) -> None:
        """Drop every table under this database's prefix (tests, and ``statestream db``)."""
        from ..sql._schema import drop_statements

        await self._create_pool_once()
        async with self.pool.acquire() as conn:
            for statement in drop_statements(self.prefix):
                await conn.execute(statement)
