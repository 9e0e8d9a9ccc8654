"""What one SQL dialect says differently from the others.

The shared layer (:mod:`statestream.adapters.sql`) holds everything the dialects agree on:
the table and column names, the versioned DDL files and their loading, the schema-version
check, the batching writer, the row mapping, the lease logic and the shape of the error
messages. A :class:`Dialect` says only what differs: the URL schemes, the placeholder style,
its schema version, and for a server the queries of the catalogue, the lock that serialises
schema creation, and how the driver's exceptions are classified. (SQLite, a file opened by
one process's writer thread, checks and migrates its schema there: it needs none of the
server parts.)
"""

from __future__ import annotations

import enum
import re
from typing import ClassVar

__all__ = ["Dialect", "ErrorKind"]


class ErrorKind(enum.Enum):
    """What a driver exception means, as the shared layer reports it."""

    #: The server cannot be reached, or the connection broke.
    CONNECTION = "connection"
    #: The server refused the user or the password.
    AUTH = "auth"
    #: The database in the URL does not exist.
    MISSING_DATABASE = "missing_database"
    #: A unique key refused a row.
    UNIQUE = "unique"
    #: The server refused a value (text it cannot store, a number out of range).
    INVALID_VALUE = "invalid_value"
    #: Anything else the server or the driver raised.
    OTHER = "other"


_DOLLAR = re.compile(r"\$(\d+)")


class Dialect:
    """The dialect-specific part of the SQL layer. Subclasses set the class attributes and
    override the methods; shared statements are written with ``$1, $2, ...`` placeholders (each
    used once, in order) and ``{prefix}`` for the table-name prefix, and :meth:`sql` turns them
    into the driver's own style."""

    #: The folder of ``adapters/sql/schema/`` with this dialect's DDL files.
    name: ClassVar[str] = ""
    #: How messages name the server kind ("PostgreSQL").
    title: ClassVar[str] = ""
    #: URL schemes accepted (the first is the one messages show).
    schemes: ClassVar[tuple[str, ...]] = ()
    default_port: ClassVar[int] = 0
    #: The environment variable with the default URL.
    env_var: ClassVar[str] = ""
    #: The pip extra that installs the driver.
    extra: ClassVar[str] = ""
    #: The placeholder style of the driver: "dollar" ($1), "format" (%s) or "qmark" (?).
    paramstyle: ClassVar[str] = "dollar"
    #: The schema version of this release in this dialect (its DDL files go up to it); 0: the
    #: servers' shared :data:`~._schema.SCHEMA_VERSION`.
    schema_version: ClassVar[int] = 0
    #: Longest identifier the server accepts.
    max_identifier: ClassVar[int] = 63
    #: Columns (by table, without the prefix) and whole tables this dialect's schema has
    #: beyond the shared ones (:data:`~._schema.TABLES`); the schema check expects them too.
    extra_columns: ClassVar[dict[str, tuple[str, ...]]] = {}

    def sql(self, text: str, prefix: str) -> str:
        """A shared statement in this dialect: the prefix put in, the placeholders converted."""
        text = text.replace("{prefix}", prefix)
        if self.paramstyle == "format":
            text = _DOLLAR.sub("%s", text.replace("%", "%%"))
        elif self.paramstyle == "qmark":
            text = _DOLLAR.sub("?", text)
        return text

    def columns_query(self) -> str:
        """``(table_name, column_name)`` of the tables whose names are in parameter 1 (a list),
        in the connection's current schema/database. Shared-placeholder style."""
        raise NotImplementedError

    def lock_statement(self) -> str:
        """Takes the schema lock named by parameter 1 (an integer key), waiting for it."""
        raise NotImplementedError

    def unlock_statement(self) -> str:
        raise NotImplementedError

    def classify(self, exc: BaseException) -> ErrorKind:
        raise NotImplementedError
