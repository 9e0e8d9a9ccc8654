"""The base of a database on a server (PostgreSQL, MySQL): URL, prefix, lazy connection, pool,
reconnection with backoff, error translation and the count of round trips.

A subclass (``PostgresDatabase``) supplies its :class:`~._dialect.Dialect` and the driver calls:
:meth:`ServerDatabase._create_pool`, :meth:`ServerDatabase._close_pool` and
:meth:`ServerDatabase._schema_connection`. Everything else is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Self, TypeVar

from ..._core.aio import checkpoint
from ...errors import AdapterConnectionError, AdapterError, ConfigurationError, InvalidInput
from ._dialect import Dialect, ErrorKind
from ._schema import SCHEMA_VERSION, SchemaConnection, SchemaError, ensure_schema, validate_prefix

__all__ = ["ServerDatabase", "ServerURL", "parse_url"]

log = logging.getLogger("statestream.sql")

R = TypeVar("R")

#: While the server stays unreachable, how often the outage is reported again (seconds).
OUTAGE_REPORT_EVERY = 5.0
#: A loss this soon (seconds) after a reconnect continues the outage before it (a call that got
#: through on a connection not cut yet does not end an outage).
OUTAGE_RESUMED_WITHIN = 1.0


class _Outage:
    """The server has been unreachable since :attr:`since` (monotonic): one WARNING when it
    starts, one every :data:`OUTAGE_REPORT_EVERY` seconds while it lasts, one INFO at its end,
    whatever the number of calls that meet it."""

    __slots__ = ("attempts", "ended", "reported", "since")

    def __init__(self, now: float) -> None:
        self.since = now
        self.ended = now
        self.reported = now
        self.attempts = 1


@dataclass(frozen=True)
class ServerURL:
    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int
    database: str
    query: dict[str, str]

    def redacted(self) -> str:
        """The URL without its password, for messages."""
        user = urllib.parse.quote(self.user) + "@" if self.user else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}/{self.database}"


def parse_url(url: object, dialect: Dialect) -> ServerURL:
    """``scheme://user:password@host:port/database``, checked; :class:`ConfigurationError` for a
    malformed one (the message shows the expected form)."""
    form = f"{dialect.schemes[0]}://USER:PASSWORD@HOST:PORT/DATABASE"
    if not isinstance(url, str) or not url:
        raise ConfigurationError(
            f"no {dialect.title} URL: pass url='{form}' or set {dialect.env_var}"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"malformed {dialect.title} URL ({exc}): expected {form}") from exc
    if parts.scheme not in dialect.schemes:
        raise ConfigurationError(
            f"{dialect.title} URL with scheme {parts.scheme!r}: expected {form} (schemes: "
            f"{', '.join(dialect.schemes)})"
        )
    database = urllib.parse.unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ConfigurationError(f"{dialect.title} URL without a database name: expected {form}")
    return ServerURL(
        parts.scheme,
        urllib.parse.unquote(parts.username) if parts.username else None,
        urllib.parse.unquote(parts.password) if parts.password is not None else None,
        parts.hostname or "localhost",
        port or dialect.default_port,
        database,
        dict(urllib.parse.parse_qsl(parts.query)),
    )


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark the opening's outcome as seen (its callers may all have been cancelled)."""
    if not task.cancelled():
        task.exception()


class ServerDatabase:
    """A statestream database on a server, shared by the adapters of one process.

    Connects on first use (or on an explicit ``await db.open()``, which also reports a wrong URL
    or schema at once), checks the schema under :attr:`prefix` (creating it in an empty
    database), and keeps a pool of connections. After the server was reached once, a lost
    connection is retried with exponential backoff (logged) for up to ``reconnect_timeout``
    seconds before the caller gets :class:`AdapterConnectionError`; the first connection fails
    fast, so that a wrong URL never hangs.

    :attr:`round_trips` counts the statements sent to the server (tests check the cost of a
    transition with it).
    """

    dialect: ClassVar[Dialect]

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
        dialect = self.dialect
        if url is None:
            url = os.environ.get(dialect.env_var)
        self.url = parse_url(url, dialect)
        self.prefix = validate_prefix(prefix, dialect)
        if pool_size < 1:
            raise ConfigurationError(f"pool_size must be >= 1, got {pool_size}")
        if connect_timeout <= 0 or reconnect_timeout < 0:
            raise ConfigurationError("connect_timeout must be > 0 and reconnect_timeout >= 0")
        self.migrate = migrate
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        #: Statements sent to the server so far.
        self.round_trips = 0
        self._opened = False  # the pool exists and the schema was checked
        self._reached = False  # the server was reached once: later losses are retried
        self._closed = False
        self._opening: asyncio.Future[None] | None = None  # the first connection, in flight
        self._failure: BaseException | None = None  # a schema error: not worth retrying
        self._outage: _Outage | None = None  # the server is unreachable since then
        self._last_outage: _Outage | None = None  # the one whose end is to be reported
        self._back: asyncio.TimerHandle | None = None  # reports that end
        #: The loop that owns the pool: the one running when this object was made, else the
        #: first to use it (see :meth:`retrying`).
        self._home: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._home = asyncio.get_running_loop()

    # ---------------------------------------------------------------- naming

    @property
    def where(self) -> str:
        """How messages name the server and database."""
        return (
            f"{self.dialect.title} at {self.url.host}:{self.url.port}, database "
            f"{self.url.database!r}"
        )

    def table(self, name: str) -> str:
        return self.prefix + name

    def sql(self, text: str) -> str:
        """A statement in this database's dialect, with the prefix put in."""
        return self.dialect.sql(text, self.prefix)

    # ---------------------------------------------------------------- lifecycle

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
        # The opening runs in a task of its own, which the callers share and whose cancellation
        # does not interrupt it: a caller cancelled while the schema is being created (MySQL's
        # DDL is not transactional) left half of the tables, and every later start refused
        # them as not statestream's.
        opening = self._opening
        if opening is None:
            opening = self._opening = asyncio.ensure_future(self._open_once())
            opening.add_done_callback(_retrieve)
        await asyncio.shield(opening)

    async def _open_once(self) -> None:
        try:
            await self._connect_and_check()
        except SchemaError as exc:
            self._failure = exc
            raise
        except BaseException:
            self._opening = None  # the next call tries again
            raise
        if self._closed:  # closed meanwhile: the pool opened after close() must not stay
            await self._close_pool()
            raise AdapterError(f"the database ({self.where}) is closed")
        self._opened = True
        self._reached = True

    @property
    def is_open(self) -> bool:
        """Whether the pool is open and the schema was checked."""
        return self._opened

    async def _connect_and_check(self) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout * 2):
                await self._create_pool()
        except TimeoutError as exc:
            await self._close_pool()
            raise AdapterConnectionError(
                f"cannot connect to {self.where}: no answer within {self.connect_timeout * 2:g} s; "
                f"check that the server runs and that {self.url.host}:{self.url.port} is "
                "reachable from this host"
            ) from exc
        except Exception as exc:
            await self._close_pool()
            raise self.translate(exc) from exc
        try:
            async with self._schema_connection() as conn:
                await ensure_schema(
                    conn,
                    self.dialect,
                    self.prefix,
                    where=self.where,
                    url_hint=self.url.redacted(),
                    migrate=self.migrate,
                )
        except BaseException as exc:
            await self._close_pool()
            if isinstance(exc, Exception) and not isinstance(exc, AdapterError | InvalidInput):
                raise self.translate(exc) from exc
            raise

    async def close(self) -> None:
        """Close the pool. Further calls raise :class:`AdapterError`."""
        self._closed = True
        back, self._back = self._back, None
        if back is not None:  # the end of an outage not reported yet: now
            back.cancel()
            self._report_back()
        if self._opened:
            self._opened = False
        await self._close_pool()

    async def schema_version(self) -> int:
        """The schema version in the database (0: none), without creating or migrating it."""
        await self._create_pool_once()
        async with self._schema_connection() as conn:
            from ._schema import _inspect

            return (await _inspect(conn, self.dialect, self.prefix)).version

    async def migrate_schema(self) -> tuple[int, int]:
        """Create or migrate the schema; returns (version before, version after)."""
        await self._create_pool_once()
        async with self._schema_connection() as conn:
            before = await ensure_schema(
                conn,
                self.dialect,
                self.prefix,
                where=self.where,
                url_hint=self.url.redacted(),
                migrate=True,
            )
        return before, SCHEMA_VERSION

    async def _create_pool_once(self) -> None:
        if not self._opened:
            try:
                async with asyncio.timeout(self.connect_timeout * 2):
                    await self._create_pool()
            except Exception as exc:
                await self._close_pool()
                raise self.translate(exc) from exc

    # ---------------------------------------------------------------- for subclasses

    async def _create_pool(self) -> None:
        raise NotImplementedError

    async def _close_pool(self) -> None:
        raise NotImplementedError

    def _schema_connection(self) -> contextlib.AbstractAsyncContextManager[SchemaConnection]:
        raise NotImplementedError

    # ---------------------------------------------------------------- errors and retries

    def translate(self, exc: BaseException) -> BaseException:
        """A driver exception as the caller should see it: :class:`AdapterConnectionError` or
        :class:`AdapterError` naming the server, the database and what to do; our own errors
        and non-driver exceptions pass."""
        if isinstance(exc, AdapterError | InvalidInput | ConfigurationError):
            return exc
        if isinstance(exc, UnicodeEncodeError):
            error: BaseException = InvalidInput(
                f"a text value contains a lone surrogate (at index {exc.start}), which is not "
                f"valid Unicode: {self.dialect.title} keeps text as UTF-8; pass valid text"
            )
            error.__cause__ = exc
            return error
        kind = self.dialect.classify(exc)
        text = str(exc).strip() or type(exc).__name__
        user = self.url.user or "(default user)"
        if kind is ErrorKind.CONNECTION:
            error = AdapterConnectionError(
                f"cannot reach {self.where} ({text}): check that the server runs and accepts "
                f"connections on {self.url.host}:{self.url.port}; statestream reconnects "
                "when it is back"
            )
        elif kind is ErrorKind.AUTH:
            error = AdapterConnectionError(
                f"{self.where} refused user {user!r} ({text}): check the user and password "
                f"in the URL ({self.url.redacted()}) and the server's access rules"
            )
        elif kind is ErrorKind.MISSING_DATABASE:
            error = AdapterConnectionError(
                f"{self.where}: the database {self.url.database!r} does not exist ({text}): "
                "create it (CREATE DATABASE), or fix the database name in the URL"
            )
        elif kind is ErrorKind.INVALID_VALUE:
            error = InvalidInput(f"{self.where} refused a value: {text}")
        else:
            error = AdapterError(f"{self.dialect.title} error on {self.where}: {text}")
        error.__cause__ = exc
        return error

    def kind(self, exc: BaseException) -> ErrorKind:
        """What ``exc`` means; for an error :meth:`translate` made, what its cause meant."""
        if isinstance(exc, AdapterConnectionError):
            return ErrorKind.CONNECTION
        cause = exc.__cause__
        if isinstance(exc, AdapterError | InvalidInput) and cause is not None:
            return self.dialect.classify(cause)
        return self.dialect.classify(exc)

    def is_connection_error(self, exc: BaseException) -> bool:
        return self.kind(exc) is ErrorKind.CONNECTION

    async def retrying(self, fn: Callable[[], Awaitable[R]], *, idempotent: bool) -> R:
        """Run ``fn`` (one round trip); on a lost connection, retry with backoff (logged) for
        up to ``reconnect_timeout`` when ``idempotent`` (a read, or a write that is safe to
        repeat); a non-idempotent write gets the translated error at once (its outcome is
        unknown: the engine's compare-and-set makes its retry safe).

        The pool belongs to the event loop that first used the database (its home); a call
        from another loop (a thread of its own) runs on the home loop and is awaited from
        there, so that one database object may serve several loops while its home runs."""
        loop = asyncio.get_running_loop()
        home = self._home
        if home is None:
            self._home = loop
        elif home is not loop:
            if home.is_closed():
                raise AdapterError(
                    f"the event loop that opened the database ({self.where}) is closed: open "
                    "a database object in each event loop"
                )
            return await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self.retrying(fn, idempotent=idempotent), home)
            )
        await self._ready()
        delay = 0.05
        deadline: float | None = None
        while True:
            try:
                self.round_trips += 1
                result = await fn()
            except Exception as exc:
                # A driver can turn our cancellation into its own connection error (asyncmy's
                # connect, through asyncio.wait_for under Python 3.11): never retry under it.
                checkpoint()
                if not self.is_connection_error(exc) or self._closed:
                    raise self.translate(exc) from exc
                self.connection_lost(exc)
                if not idempotent:
                    raise self.translate(exc) from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.reconnect_timeout
                if now >= deadline:
                    raise self.translate(exc) from exc
                await asyncio.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 2.0)
            else:
                if self._outage is not None:
                    self.connection_back()
                return result

    def connection_lost(self, exc: BaseException) -> None:
        """Note a call that found the server unreachable: the first one of an outage logs a
        WARNING naming the server and database; later ones only a summary every
        :data:`OUTAGE_REPORT_EVERY` seconds (the calls of a busy process meet an outage by
        the hundred)."""
        now = time.monotonic()
        outage = self._outage
        if outage is None and self._back is not None:
            # A call got through on a connection not cut yet, or the server went away again
            # at once: the same outage (its end was not reported yet).
            handle, self._back = self._back, None
            handle.cancel()
            outage = self._outage = self._last_outage
        if outage is None:
            self._outage = _Outage(now)
            log.warning(
                "statestream: lost the connection to %s (%s); reconnecting with backoff",
                self.where,
                str(exc).strip() or type(exc).__name__,
            )
            return
        outage.attempts += 1
        if now - outage.reported >= OUTAGE_REPORT_EVERY:
            outage.reported = now
            log.warning(
                "statestream: %s still unreachable after %.0f s, %d attempts",
                self.where,
                now - outage.since,
                outage.attempts,
            )

    def connection_back(self) -> None:
        """A call succeeded after an outage: one INFO line, once no call failed for
        :data:`OUTAGE_RESUMED_WITHIN` seconds."""
        outage, self._outage = self._outage, None
        if outage is None or self._back is not None:
            return
        self._last_outage = outage
        outage.ended = time.monotonic()
        self._back = asyncio.get_running_loop().call_later(OUTAGE_RESUMED_WITHIN, self._report_back)

    def _report_back(self) -> None:
        self._back = None
        outage = self._last_outage
        if outage is not None:
            log.info(
                "statestream: reconnected to %s after %.1f s (%d failed attempts)",
                self.where,
                outage.ended - outage.since,
                outage.attempts,
            )

    @property
    def unreachable(self) -> bool:
        """Whether the last call found the server unreachable (an outage is going on)."""
        return self._outage is not None
