"""Records, outbox, timeouts, events and role leases on a MySQL or MariaDB server.

>>> db = MysqlDatabase("mysql://user:password@db.example:3306/orders")
>>> streamer = MysqlStreamer(db)
>>> wf = builder.build(streamer, MysqlRecordStore(db, publish_to=streamer),
...                    MysqlRoleScheduler(db), timeout_store=MysqlTimeoutStore(db))

Needs the asyncmy driver (``pip install 'statestream[mysql]'``). Several processes on several
hosts may share one database: role leases keep each background process to one holder, and the
writes of concurrent steps share one transaction (and one round trip). The schema is created on
first use in a database that has none under the table prefix, and carries a version
(:data:`SCHEMA_VERSION`) checked at every start.
"""

from __future__ import annotations

from ._db import SCHEMA_VERSION, MysqlDatabase, SchemaError
from ._roles import MysqlLease, MysqlRoleScheduler
from ._store import MysqlRecordStore
from ._stream import MysqlReceiver, MysqlStreamer
from ._timeouts import MysqlTimeoutStore

__all__ = [
    "SCHEMA_VERSION",
    "MysqlDatabase",
    "MysqlLease",
    "MysqlReceiver",
    "MysqlRecordStore",
    "MysqlRoleScheduler",
    "MysqlStreamer",
    "MysqlTimeoutStore",
    "SchemaError",
]
