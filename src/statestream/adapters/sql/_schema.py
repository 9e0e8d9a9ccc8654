"""The schema: its tables, the versioned DDL shipped as package data, and the check at start.

Every server dialect has the same tables with the same column names (:data:`TABLES`). The DDL
of every dialect, SQLite's included, lives in ``adapters/sql/schema/<dialect>/NNN_name.sql``
(:func:`load_migrations`). File ``001`` creates version 1; file ``NNN`` (N > 1) migrates
version N - 1 to N. A new database runs every file in turn. Statements are separated by a line
that ends with ``;`` and ``{prefix}`` stands for the table-name prefix. (SQLite runs its files
on its writer thread when a file opens: :mod:`statestream.adapters.sqlite._schema`.)

At start (:func:`ensure_schema`) the database is read without locking: the current version and
the right columns is the common case and costs one query. An empty database (none of our tables
under the prefix) is created under the dialect's schema lock, so that two workers starting at
once do not race; an older version is an error that says how to migrate (``statestream db
migrate --url ...`` or ``migrate=True``), a newer one is an error that says to upgrade, and a
table under our name with other columns is an error that names it.

History: 1, the tables; 2, indexes on the runs by ``(workflow_name, run_state, seq)`` and
``(workflow_name, created_at, seq)``, for the web UI's filtered keyset pages (none by status,
which every transition changes).
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from ...errors import AdapterError, ConfigurationError
from ._dialect import Dialect

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "Migration",
    "SchemaConnection",
    "SchemaError",
    "VERSION_QUERY",
    "VERSION_STATEMENTS",
    "ensure_schema",
    "latest_version",
    "load_migrations",
    "lock_key",
    "validate_prefix",
]

log = logging.getLogger("statestream.sql")

#: The schema version this release writes on the servers (their files go up to it; SQLite,
#: whose files are older, has its own: :attr:`Dialect.schema_version`).
SCHEMA_VERSION = 2

#: The stored schema version, in ``{prefix}meta`` (every dialect).
VERSION_QUERY = "SELECT value FROM {prefix}meta WHERE key = 'schema_version'"
#: What sets it (parameter 1: the version, as text), in one transaction with the DDL.
VERSION_STATEMENTS = (
    "DELETE FROM {prefix}meta WHERE key = 'schema_version'",
    "INSERT INTO {prefix}meta (key, value) VALUES ('schema_version', $1)",
)

#: Every table (without the prefix) and its columns, the same in every dialect.
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
    "members": ("group_name", "member", "held", "expires_at"),
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

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: The longest table-derived name is the prefix plus this many characters
#: ("records_by_foreign_id"), and the notification channel adds a few more.
_LONGEST_SUFFIX = 24


def validate_prefix(prefix: object, dialect: Dialect | None = None) -> str:
    """The table-name prefix, checked: letters, digits and underscores, not starting with a
    digit, short enough for the server's identifiers. Else :class:`ConfigurationError`."""
    limit = (dialect.max_identifier if dialect is not None else 63) - _LONGEST_SUFFIX
    if not isinstance(prefix, str) or not _PREFIX.match(prefix) or len(prefix) > limit:
        raise ConfigurationError(
            f"invalid table prefix {prefix!r}: use letters, digits and underscores only (not "
            f"starting with a digit), at most {limit} characters, such as 'statestream_'"
        )
    return prefix


def lock_key(prefix: str) -> int:
    """The schema lock's key for ``prefix``: a signed 63-bit integer derived from it."""
    return zlib.crc32(f"statestream-schema:{prefix}".encode()) & 0x7FFF_FFFF


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def latest_version(dialect: Dialect) -> int:
    """The schema version this release writes in ``dialect``."""
    return dialect.schema_version or SCHEMA_VERSION


def load_migrations(dialect: Dialect, prefix: str) -> list[Migration]:
    """The dialect's DDL files, in version order, with ``prefix`` put in."""
    latest = latest_version(dialect)
    folder = resources.files(__package__).joinpath("schema", dialect.name)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = re.match(r"(\d{3})_(\w+)\.sql\Z", entry.name)
        if match is None:
            continue
        text = entry.read_text(encoding="utf-8")
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
        statements = tuple(
            s.strip().replace("{prefix}", prefix)
            for s in re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
            if s.strip()
        )
        found.append(Migration(int(match.group(1)), match.group(2), statements))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, latest + 1)):
        raise AdapterError(
            f"statestream's {dialect.title} schema files are incomplete (found versions "
            f"{[m.version for m in found]}, expected 1..{latest}): reinstall statestream"
        )
    return found


class SchemaConnection(Protocol):
    """What the check needs of a connection: statements in the dialect's own style."""

    async def fetch(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def begin(self) -> None: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


class SchemaError(AdapterError):
    """The database's schema is not the one this release uses (older, newer, another shape)."""


@dataclass(frozen=True)
class _Found:
    version: int
    columns: dict[str, set[str]]  # by table name without the prefix


def tables_of(dialect: Dialect | None) -> dict[str, tuple[str, ...]]:
    """:data:`TABLES` with the columns and tables that ``dialect`` adds
    (:attr:`Dialect.extra_columns`)."""
    extra = dialect.extra_columns if dialect is not None else {}
    if not extra:
        return TABLES
    merged = dict(TABLES)
    for table, columns in extra.items():
        merged[table] = merged.get(table, ()) + columns
    return merged


async def _inspect(conn: SchemaConnection, dialect: Dialect, prefix: str) -> _Found:
    names = [prefix + table for table in tables_of(dialect)]
    rows = await conn.fetch(dialect.sql(dialect.columns_query(), prefix), names)
    columns: dict[str, set[str]] = {}
    for table_name, column_name in rows:
        columns.setdefault(str(table_name)[len(prefix) :], set()).add(str(column_name).lower())
    version = 0
    if "meta" in columns:
        meta = await conn.fetch(dialect.sql(VERSION_QUERY, prefix))
        if meta:
            try:
                version = int(meta[0][0])
            except ValueError:
                version = -1
    return _Found(version, columns)


def _judge(
    found: _Found,
    where: str,
    prefix: str,
    url_hint: str,
    *,
    migrate: bool,
    expected_tables: dict[str, tuple[str, ...]] = TABLES,
) -> str:
    """What to do: "ok", "create" or "migrate"; raises SchemaError when neither will do."""
    if not found.columns:
        return "create"
    if found.version == 0 or found.version < 0:
        tables = ", ".join(sorted(prefix + t for t in found.columns))
        raise SchemaError(
            f"{where} has tables named like statestream's ({tables}) but no statestream schema "
            f"version in {prefix}meta: they were not made by statestream, or with another "
            "shape. Choose another table prefix (prefix=...), or drop those tables"
        )
    if found.version > SCHEMA_VERSION:
        raise SchemaError(
            f"{where} has statestream schema version {found.version} (prefix {prefix!r}), "
            f"newer than this release understands ({SCHEMA_VERSION}): upgrade statestream on "
            "this host, or use another database or prefix"
        )
    if found.version < SCHEMA_VERSION:
        if migrate:
            return "migrate"
        raise SchemaError(
            f"{where} has statestream schema version {found.version} (prefix {prefix!r}), "
            f"older than this release's {SCHEMA_VERSION}: run `statestream db migrate --url "
            f"{url_hint} --prefix {prefix}` (or pass migrate=True) once, then start again"
        )
    for table, expected in expected_tables.items():
        have = found.columns.get(table)
        if have is None:
            raise SchemaError(
                f"{where}: table {prefix}{table} is missing although the schema version is "
                f"{found.version}: restore it from a backup, or use another prefix"
            )
        if have != set(expected):
            missing = sorted(set(expected) - have)
            extra = sorted(have - set(expected))
            raise SchemaError(
                f"{where}: table {prefix}{table} exists with another shape (missing columns: "
                f"{', '.join(missing) or 'none'}; unexpected columns: {', '.join(extra) or 'none'})"
                ": it was changed by hand or by another program; use another prefix, or restore "
                "the table"
            )
    return "ok"


async def ensure_schema(
    conn: SchemaConnection,
    dialect: Dialect,
    prefix: str,
    *,
    where: str,
    url_hint: str,
    migrate: bool = False,
    create: bool = True,
) -> int:
    """Check the schema under ``prefix``; create it in an empty database, migrate an older one
    when ``migrate`` is set. Returns the version found before (0: created)."""
    found = await _inspect(conn, dialect, prefix)
    try:
        action = _judge(
            found, where, prefix, url_hint, migrate=migrate, expected_tables=tables_of(dialect)
        )
    except SchemaError:
        # Half-made tables may be another worker creating them right now (MySQL's DDL is not
        # transactional): judge again under the schema lock, which that worker holds until done.
        action = "locked"
    if action == "ok" or (action == "create" and not create):
        return found.version
    key = lock_key(prefix)
    await conn.execute(dialect.sql(dialect.lock_statement(), prefix), key)
    try:
        found = await _inspect(conn, dialect, prefix)  # another worker may have done it
        action = _judge(
            found, where, prefix, url_hint, migrate=migrate, expected_tables=tables_of(dialect)
        )
        if action == "ok" or (action == "create" and not create):
            return found.version
        migrations = load_migrations(dialect, prefix)
        await conn.begin()
        try:
            for migration in migrations:
                if migration.version <= found.version:
                    continue
                for statement in migration.statements:
                    await conn.execute(statement)
                if found.version:
                    log.info(
                        "statestream: %s schema (prefix %s) migrated to version %d",
                        where,
                        prefix,
                        migration.version,
                    )
            clear, insert = VERSION_STATEMENTS
            await conn.execute(dialect.sql(clear, prefix))
            await conn.execute(dialect.sql(insert, prefix), str(SCHEMA_VERSION))
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
        if not found.version:
            log.info("statestream: created schema (prefix %s) on %s", prefix, where)
        return found.version
    finally:
        await conn.execute(dialect.sql(dialect.unlock_statement(), prefix), key)


def drop_statements(prefix: str, dialect: Dialect | None = None) -> list[str]:
    """``DROP TABLE`` of every table under ``prefix`` (tests; ``statestream db drop``)."""
    return [
        f"DROP TABLE IF EXISTS {validate_prefix(prefix, dialect)}{table}"
        for table in tables_of(dialect)
    ]
