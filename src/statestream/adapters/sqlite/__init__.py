"""The embedded default: records, outbox, timeouts, events and role leases in one SQLite file.

>>> db = SqliteDatabase("orders.db")
>>> wf = builder.build(SqliteStreamer(db), SqliteRecordStore(db), SqliteRoleScheduler(db),
...                    timeout_store=SqliteTimeoutStore(db))

Only the standard library's ``sqlite3`` is needed. The file is in WAL mode; its schema is created
on first use and carries a version (:data:`SCHEMA_VERSION`): a file written by an older release is
migrated, keeping its data, when it is opened (or by ``statestream schema migrate PATH``). Several
processes may share one file: writes take SQLite's write lock in turn, role leases keep each
background process to one holder, and receivers poll for events other processes publish.

The events table keeps every event until ``SqliteStreamer.prune`` deletes those every consumer
has acknowledged, and finished timers stay until ``SqliteTimeoutStore.prune``; SQLite reuses the
freed pages, so a pruned file stops growing with its events (it keeps the runs).
"""

from __future__ import annotations

from ._db import SCHEMA_VERSION, SqliteDatabase
from ._roles import SqliteLease, SqliteRoleScheduler
from ._store import SqliteRecordStore
from ._stream import SqliteReceiver, SqliteStreamer
from ._timeouts import SqliteTimeoutStore

__all__ = [
    "SCHEMA_VERSION",
    "SqliteDatabase",
    "SqliteLease",
    "SqliteReceiver",
    "SqliteRecordStore",
    "SqliteRoleScheduler",
    "SqliteStreamer",
    "SqliteTimeoutStore",
]
