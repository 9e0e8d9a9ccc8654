"""The SQL layer shared by the adapters of SQL databases (SQLite, PostgreSQL, MySQL/MariaDB).

What the dialects agree on lives here: the tables and their columns (:mod:`._schema`, with the
DDL of each dialect, SQLite's included, as versioned package data under ``schema/<dialect>/``),
the schema-version check at start, the table-name prefix, the row mapping (:mod:`._rows`) and
the lease and member logic (:mod:`._roles`; the expiry on the database's clock); for the
servers also the batching writer (:mod:`._batch`) and the base of a server database
(:mod:`._server`: URL, pool, reconnection with backoff, error messages, round-trip count). A
dialect (:class:`~._dialect.Dialect`) says only what differs. SQLite keeps its own machinery
where it really differs: one writer thread with group commit, quick lone writes on the loop's
thread, its schema checked and migrated by that thread when the file opens.

:func:`migrate` and :func:`schema_version` take a URL of any backend (``postgresql://``,
``mysql://``, ``sqlite:///path``) and are what ``statestream db migrate|version`` calls.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sqlite3
from typing import Any

from ...errors import ConfigurationError
from ._schema import SCHEMA_VERSION, TABLES, validate_prefix

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "database_for",
    "migrate",
    "schema_version",
    "validate_prefix",
]

#: URL scheme -> (module, class) of the backend's database.
_BACKENDS = {
    "postgresql": ("statestream.adapters.postgres", "PostgresDatabase"),
    "postgres": ("statestream.adapters.postgres", "PostgresDatabase"),
    "mysql": ("statestream.adapters.mysql", "MysqlDatabase"),
    "mariadb": ("statestream.adapters.mysql", "MysqlDatabase"),
}


def database_for(url: str, *, prefix: str = "statestream_", **options: Any) -> Any:
    """The database object of the backend ``url`` names (not opened)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        raise ConfigurationError("use SqliteDatabase for sqlite:/// URLs")
    if scheme not in _BACKENDS:
        raise ConfigurationError(
            f"unknown database URL scheme {scheme!r} in {url.split('@')[-1]!r}: use "
            "postgresql://, mysql:// or sqlite:///PATH"
        )
    module_name, class_name = _BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"no adapter for {scheme}:// URLs in this release ({exc})"
        ) from exc
    return getattr(module, class_name)(url, prefix=prefix, **options)


def _sqlite_path(url: str) -> str | None:
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :] or None
    if url.startswith("sqlite://"):
        raise ConfigurationError(f"malformed SQLite URL {url!r}: use sqlite:///PATH")
    return None


async def migrate(url: str, *, prefix: str = "statestream_") -> tuple[int, int]:
    """Create or migrate the statestream schema at ``url``; returns (version before, after)."""
    path = _sqlite_path(url)
    if path is not None:
        from ..sqlite import SCHEMA_VERSION as SQLITE_VERSION
        from ..sqlite import SqliteDatabase

        before = await schema_version(url)
        db = SqliteDatabase(path)
        try:
            await db.schema_version()  # opening the file creates or migrates its schema
        finally:
            await db.close()
        return before, SQLITE_VERSION
    server = database_for(url, prefix=prefix)
    try:
        result: tuple[int, int] = await server.migrate_schema()
        return result
    finally:
        await server.close()


async def schema_version(url: str, *, prefix: str = "statestream_") -> int:
    """The statestream schema version at ``url`` (0: none), changing nothing on a server."""
    path = _sqlite_path(url)
    if path is not None:
        return await asyncio.to_thread(_sqlite_version, path)
    server = database_for(url, prefix=prefix)
    try:
        version: int = await server.schema_version()
        return version
    finally:
        await server.close()


def _sqlite_version(path: str) -> int:
    if not os.path.exists(path):
        return 0
    from ..sqlite._schema import VERSION_QUERY

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(VERSION_QUERY).fetchone()
        return int(row[0]) if row else 0
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
