"""PostgreSQL adapters: records, outbox, timeouts, events and role leases in one database.

>>> db = PostgresDatabase("postgresql://user:password@db-host:5432/orders")
>>> streamer = PostgresStreamer(db)
>>> wf = builder.build(streamer, PostgresRecordStore(db, publish_to=streamer),
...                    PostgresRoleScheduler(db), timeout_store=PostgresTimeoutStore(db))

Needs the ``postgres`` extra (``pip install 'statestream[postgres]'``: asyncpg). The schema is
created on first use under a table prefix (default ``statestream_``) and carries a version; an
older one is migrated by ``statestream db migrate --url ...`` (or ``migrate=True``). Several
worker processes on several hosts may share the database: writes are compare-and-sets, a
foreign ID has at most one unfinished run (a unique index), role leases keep each background
process to one holder, and receivers are woken by LISTEN/NOTIFY.
"""

from __future__ import annotations

from ..sql._schema import SCHEMA_VERSION
from ._db import PostgresDatabase
from ._roles import PostgresLease, PostgresRoleScheduler
from ._store import PostgresRecordStore
from ._stream import PostgresReceiver, PostgresStreamer
from ._timeouts import PostgresTimeoutStore

__all__ = [
    "SCHEMA_VERSION",
    "PostgresDatabase",
    "PostgresLease",
    "PostgresReceiver",
    "PostgresRecordStore",
    "PostgresRoleScheduler",
    "PostgresStreamer",
    "PostgresTimeoutStore",
]
