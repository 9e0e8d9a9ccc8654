"""The SQLite schema: versioned DDL shipped as package data, run in turn when a file opens.

The files are ``adapters/sql/schema/sqlite/NNN_name.sql``, as every dialect's
(:func:`~..sql._schema.load_migrations` reads them): ``001`` creates version 1, ``NNN``
migrates version N - 1 to N. A new file runs them all, a file of an older version those after
its version, in one transaction (the caller's), so that it ends with the same tables, columns
and indexes as a new file (``tests/test_sqlite_schema.py`` compares the two) and keeps its data.
A file of a newer version is refused before anything changes (``SqliteDatabase``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from ..sql._rows import key_hash
from ..sql._schema import VERSION_QUERY as _VERSION_QUERY
from ..sql._schema import VERSION_STATEMENTS, Migration, load_migrations
from ._dialect import SQLITE

__all__ = ["PREFIX", "SCHEMA_VERSION", "VERSION_QUERY", "upgrade"]

log = logging.getLogger("statestream.sqlite")

#: Version of the schema this release writes; stored in ``statestream_meta``.
SCHEMA_VERSION = SQLITE.schema_version
#: The table-name prefix of a file.
PREFIX = "statestream_"

_FILES = load_migrations(SQLITE, PREFIX)
_VERSION_STATEMENTS = tuple(SQLITE.sql(s, PREFIX) for s in VERSION_STATEMENTS)
#: The file's stored schema version.
VERSION_QUERY = SQLITE.sql(_VERSION_QUERY, PREFIX)


def _runner(migration: Migration) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        for statement in migration.statements:
            conn.execute(statement)

    run.__name__ = f"migrate_{migration.version:03d}_{migration.name}"
    return run


#: The statements of a new file's version 1 (file ``001``).
_CREATE = _runner(_FILES[0])
#: ``_MIGRATIONS[v]`` brings a file from version ``v`` to ``v + 1`` (file ``v + 1``).
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    m.version - 1: _runner(m) for m in _FILES[1:]
}


def upgrade(conn: sqlite3.Connection, found: int) -> None:
    """Bring a file from version ``found`` (0: a new file) to :data:`SCHEMA_VERSION`, inside
    the caller's transaction."""
    # The key hash of the events already there (file 002) is computed in SQL by this function.
    conn.create_function("statestream_key_hash", 1, key_hash, deterministic=True)
    if not found:
        _CREATE(conn)
    for version in range(found or 1, SCHEMA_VERSION):
        _MIGRATIONS[version](conn)
        if found:
            log.info("statestream: SQLite schema version %d migrated to %d", version, version + 1)
    clear, insert = _VERSION_STATEMENTS
    conn.execute(clear)
    conn.execute(insert, (str(SCHEMA_VERSION),))
