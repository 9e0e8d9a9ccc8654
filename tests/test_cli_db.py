"""``statestream db migrate|version --url URL``, on PostgreSQL and on an SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from servers import require_postgres, unique_prefix
from statestream.adapters.postgres import PostgresDatabase
from statestream.adapters.sql import SCHEMA_VERSION as SQL_SCHEMA_VERSION
from statestream.adapters.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from statestream.cli import main


def _drop(prefix: str) -> None:
    async def drop() -> None:
        database = PostgresDatabase(require_postgres(), prefix=prefix)
        try:
            await database.drop_tables()
        finally:
            await database.close()

    asyncio.run(drop())


def test_db_migrate_and_version_on_postgres(capsys: pytest.CaptureFixture[str]) -> None:
    url, prefix = require_postgres(), unique_prefix()
    try:
        assert main(["db", "version", "--url", url, "--prefix", prefix]) == 0
        assert capsys.readouterr().out.strip() == "0"
        assert main(["db", "migrate", "--url", url, "--prefix", prefix]) == 0
        assert (
            f"created the statestream schema version {SQL_SCHEMA_VERSION}"
            in capsys.readouterr().out
        )
        assert main(["db", "migrate", "--url", url, "--prefix", prefix]) == 0
        assert "up to date" in capsys.readouterr().out
        assert main(["db", "version", "--url", url, "--prefix", prefix]) == 0
        assert capsys.readouterr().out.strip() == str(SQL_SCHEMA_VERSION)
    finally:
        _drop(prefix)


def test_db_with_a_wrong_user_is_a_backend_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = require_postgres().replace("postgres@", "no_such_user_ss@", 1)
    if "no_such_user_ss@" not in url:
        pytest.skip("the URL names no user to replace")
    assert main(["db", "version", "--url", url]) == 5
    assert "refused user 'no_such_user_ss'" in capsys.readouterr().err


def test_db_on_an_sqlite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert main(["db", "version", "--url", url]) == 0
    assert capsys.readouterr().out.strip() == "0"
    assert main(["db", "migrate", "--url", url]) == 0
    assert main(["db", "version", "--url", url]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(SQLITE_SCHEMA_VERSION)
