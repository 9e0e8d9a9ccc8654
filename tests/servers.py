"""The database servers the tests use: addresses from the environment, with defaults.

A test that needs a server takes the fixture of this module's helpers; when the server is not
reachable it is skipped with a loud reason on a laptop, and fails when ``CI=true`` (CI must run
every backend).
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import uuid

import pytest

POSTGRES_URL = os.environ.get(
    "STATESTREAM_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("STATESTREAM_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")

_reachable: dict[str, str | None] = {}


def _check(url: str, default_port: int) -> str | None:
    """None if something listens at the URL's host and port, else why not."""
    if url not in _reachable:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port or default_port
        try:
            with socket.create_connection((host, port), timeout=2):
                _reachable[url] = None
        except OSError as exc:
            _reachable[url] = f"nothing answers at {host}:{port} ({exc})"
    return _reachable[url]


def require(url: str, default_port: int, what: str, env_var: str) -> str:
    """``url`` if its server is reachable; else skip (fail when CI=true)."""
    problem = _check(url, default_port)
    if problem is not None:
        message = (
            f"{what} is not reachable: {problem}. Start it, or point {env_var} at one (now {url!r})"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}")
        pytest.skip(f"!!! SKIPPED: {message}")
    return url


def require_postgres() -> str:
    return require(POSTGRES_URL, 5432, "PostgreSQL", "STATESTREAM_POSTGRES_URL")


def require_mysql() -> str:
    return require(MYSQL_URL, 3306, "MySQL/MariaDB", "STATESTREAM_MYSQL_URL")


def unique_prefix() -> str:
    """A table prefix no other test (or helper sharing the server) uses."""
    return f"t_{uuid.uuid4().hex[:10]}_"
