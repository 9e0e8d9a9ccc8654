"""The workflow that ``tests/test_web_browser.py`` serves with ``statestream web
web_browser_app:wf``: the order workflow of ``web_support`` on the SQLite file ``WEB_TEST_DB``.
The test seeds the same file from its own process."""

from __future__ import annotations

import os
from typing import Any

from statestream.adapters.sqlite import SqliteDatabase, SqliteRecordStore
from web_support import Order, Status, make_workflow

__all__ = ["Order", "Status", "build", "wf"]


def build(path: str) -> tuple[Any, SqliteDatabase]:
    db = SqliteDatabase(path)
    return make_workflow(SqliteRecordStore(db)), db


def _wf() -> Any:
    path = os.environ.get("WEB_TEST_DB")
    return build(path)[0] if path else None


wf = _wf()
