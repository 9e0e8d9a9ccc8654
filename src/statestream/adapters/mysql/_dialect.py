"""What MySQL / MariaDB says differently: URL schemes, error codes, identifier limits."""

from __future__ import annotations

import enum
from typing import Any, ClassVar

__all__ = ["ErrorKind", "MysqlDialect"]


class ErrorKind(enum.Enum):
    """What a driver exception means, as the adapters report it."""

    CONNECTION = "connection"
    AUTH = "auth"
    MISSING_DATABASE = "missing_database"
    MISSING_TABLE = "missing_table"
    UNIQUE = "unique"
    INVALID_VALUE = "invalid_value"
    OTHER = "other"


#: Client-side codes (2xxx) and server codes that mean the connection is gone or unusable:
#: 2002/2003 cannot connect, 2006 server has gone away, 2013 lost connection during a query,
#: 2055 lost connection (SSL), 1040 too many connections, 1053 server shutdown, 1927
#: connection killed (MariaDB), 4031 disconnected for inactivity (MySQL 8).
_CONNECTION = frozenset({2002, 2003, 2005, 2006, 2013, 2055, 1040, 1053, 1927, 4031})
_AUTH = frozenset({1044, 1045, 1698, 1251})
_MISSING_DATABASE = frozenset({1049})
_MISSING_TABLE = frozenset({1146})
_UNIQUE = frozenset({1062, 1586})
#: Data too long (1406), incorrect string value (1366), out of range (1264), packet too large
#: (1153, 1301).
_INVALID_VALUE = frozenset({1406, 1366, 1264, 1153, 1301})
#: The transaction was rolled back (deadlock, 1213) or the statement waited too long for a row
#: lock (1205): the whole transaction may be sent again.
_RETRYABLE = frozenset({1205, 1213})


def _code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


class MysqlDialect:
    name: ClassVar[str] = "mysql"
    title: ClassVar[str] = "MySQL"
    schemes: ClassVar[tuple[str, ...]] = ("mysql", "mariadb", "mysql+asyncmy")
    default_port: ClassVar[int] = 3306
    env_var: ClassVar[str] = "STATESTREAM_MYSQL_URL"
    extra: ClassVar[str] = "mysql"
    paramstyle: ClassVar[str] = "format"
    max_identifier: ClassVar[int] = 64

    def classify(self, exc: BaseException) -> ErrorKind:
        if isinstance(exc, OSError | TimeoutError | ConnectionError):
            return ErrorKind.CONNECTION
        import asyncmy.errors

        if isinstance(exc, asyncmy.errors.InterfaceError):
            return ErrorKind.CONNECTION  # "Not connected": the connection was closed
        code = _code(exc)
        if code is None:
            return ErrorKind.OTHER
        if code in _CONNECTION:
            return ErrorKind.CONNECTION
        if code in _AUTH:
            return ErrorKind.AUTH
        if code in _MISSING_DATABASE:
            return ErrorKind.MISSING_DATABASE
        if code in _MISSING_TABLE:
            return ErrorKind.MISSING_TABLE
        if code in _UNIQUE:
            return ErrorKind.UNIQUE
        if code in _INVALID_VALUE:
            return ErrorKind.INVALID_VALUE
        return ErrorKind.OTHER

    def server_error(self, exc: BaseException) -> bool:
        """The server refused a statement and the connection is still usable."""
        code = _code(exc)
        return code is not None and 1000 <= code < 2000 and code not in _CONNECTION

    def retryable(self, exc: BaseException) -> bool:
        return _code(exc) in _RETRYABLE

    def unique_violation(self, exc: BaseException) -> bool:
        return _code(exc) in _UNIQUE

    def message(self, exc: BaseException) -> str:
        """The server's text with its code, without the driver's tuple repr."""
        args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
        if len(args) >= 2 and isinstance(args[0], int):
            return f"error {args[0]}: {args[1]}"
        return str(exc).strip() or type(exc).__name__
