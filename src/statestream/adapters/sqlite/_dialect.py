"""SQLite's part of the SQL layer: its placeholders, its schema files, its schema version.

The file's schema is checked and migrated by its writer thread when it opens
(:mod:`._db`, :mod:`._schema`), not through the servers' catalogue and schema lock, so the
server parts of :class:`~..sql._dialect.Dialect` stay unused here."""

from __future__ import annotations

from typing import ClassVar

from ..sql._dialect import Dialect

__all__ = ["SQLITE", "SqliteDialect"]


class SqliteDialect(Dialect):
    name: ClassVar[str] = "sqlite"
    title: ClassVar[str] = "SQLite"
    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    paramstyle: ClassVar[str] = "qmark"
    #: SQLite has no limit worth the name; the prefix is fixed ("statestream_") anyway.
    max_identifier: ClassVar[int] = 1_000
    #: 1: records, outbox, events, cursors, timeouts, leases. 2: the events' key hash, one
    #: timer per visit and its claim, the parked events. 3: the members. 4: the run indexes
    #: of the web UI's lists and counts.
    schema_version: ClassVar[int] = 4


SQLITE = SqliteDialect()
