"""MySQL's / MariaDB's part of the SQL layer: schemes, catalogue, schema lock, error codes."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ..sql._dialect import Dialect, ErrorKind

__all__ = ["MysqlDialect"]

#: Client-side codes (2xxx) and server codes that mean the connection is gone or unusable:
#: 2002/2003 cannot connect, 2006 server has gone away, 2013 lost connection during a query,
#: 2055 lost connection (SSL), 1040 too many connections, 1053 server shutdown, 1927
#: connection killed (MariaDB), 4031 disconnected for inactivity (MySQL 8).
_CONNECTION = frozenset({2002, 2003, 2005, 2006, 2013, 2055, 1040, 1053, 1927, 4031})
_AUTH = frozenset({1044, 1045, 1698, 1251})
_MISSING_DATABASE = frozenset({1049})
_UNIQUE = frozenset({1062, 1586})
#: Data too long (1406), incorrect string value (1366), out of range (1264), packet too large
#: (1153, 1301).
_INVALID_VALUE = frozenset({1406, 1366, 1264, 1153, 1301})
#: The transaction was rolled back (deadlock, 1213) or a statement waited too long for a row
#: lock (1205): the whole transaction may be sent again.
_RETRYABLE = frozenset({1205, 1213})

#: ``key`` is a reserved word in MySQL: the shared statements' column ``key`` is quoted.
_KEY = re.compile(r"(?<![`\w])key(?![`\w])")


def code_of(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return int(args[0])
    return None


class MysqlDialect(Dialect):
    name: ClassVar[str] = "mysql"
    title: ClassVar[str] = "MySQL"
    schemes: ClassVar[tuple[str, ...]] = ("mysql", "mariadb", "mysql+asyncmy")
    default_port: ClassVar[int] = 3306
    env_var: ClassVar[str] = "STATESTREAM_MYSQL_URL"
    extra: ClassVar[str] = "mysql"
    paramstyle: ClassVar[str] = "format"
    max_identifier: ClassVar[int] = 64
    #: ``records.writer`` (the token of the batch that last wrote the row, see ``_batch``) and
    #: the event-ID counter ``event_seq`` (see ``_stream``).
    extra_columns: ClassVar[dict[str, tuple[str, ...]]] = {
        "records": ("writer",),
        "event_seq": ("id", "n"),
    }

    def sql(self, text: str, prefix: str) -> str:
        return super().sql(_KEY.sub("`key`", text), prefix)

    def columns_query(self) -> str:
        # A list parameter: the driver renders ('a', 'b', ...) for IN.
        return (
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name IN $1"
        )

    def lock_statement(self) -> str:
        return "SELECT GET_LOCK(CONCAT('{prefix}', 'schema', $1), 60)"

    def unlock_statement(self) -> str:
        return "SELECT RELEASE_LOCK(CONCAT('{prefix}', 'schema', $1))"

    def classify(self, exc: BaseException) -> ErrorKind:
        if isinstance(exc, OSError | TimeoutError | ConnectionError):
            return ErrorKind.CONNECTION
        import asyncmy.errors

        if isinstance(exc, asyncmy.errors.InterfaceError):
            return ErrorKind.CONNECTION  # "Not connected": the connection was closed
        code = code_of(exc)
        if code is None:
            return ErrorKind.OTHER
        if code in _CONNECTION:
            return ErrorKind.CONNECTION
        if code in _AUTH:
            return ErrorKind.AUTH
        if code in _MISSING_DATABASE:
            return ErrorKind.MISSING_DATABASE
        if code in _UNIQUE:
            return ErrorKind.UNIQUE
        if code in _INVALID_VALUE:
            return ErrorKind.INVALID_VALUE
        return ErrorKind.OTHER

    def server_error(self, exc: BaseException) -> bool:
        """The server refused a statement and the connection is still usable."""
        code = code_of(exc)
        return code is not None and 1000 <= code < 2000 and code not in _CONNECTION

    def retryable(self, exc: BaseException) -> bool:
        return code_of(exc) in _RETRYABLE

    def unique_violation(self, exc: BaseException) -> bool:
        return code_of(exc) in _UNIQUE

    def message(self, exc: BaseException) -> str:
        args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
        if len(args) >= 2 and isinstance(args[0], int):
            return f"error {args[0]}: {args[1]}"
        return str(exc).strip() or type(exc).__name__
