"""A worker process for the MariaDB crash test (tests/adapters/test_mysql_workers.py).

Run as ``python tests/mysql_worker.py URL PREFIX [options]``: it builds the three-step ``crash``
workflow of ``crash_worker`` on ``MysqlDatabase(URL, prefix=PREFIX)`` (records and events both
on the server), starts it, and runs until SIGTERM, which stops it cleanly and exits 0. A test may
also SIGKILL it at any moment.

Every step records its side effect in the table ``{PREFIX}effects`` on its own connection,
before the engine stores the step's result, so the effect survives a kill that loses the
result: ``INSERT IGNORE`` under ``UNIQUE (run_id, version, step)`` (the effect is idempotent),
while ``{PREFIX}attempts`` counts every attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

import asyncmy
from asyncmy.constants import CLIENT

from crash_worker import STEPS, WORKFLOW, Job, Status
from statestream import Builder, Run, Workflow
from statestream.adapters.mysql import (
    MysqlDatabase,
    MysqlRecordStore,
    MysqlRoleScheduler,
    MysqlStreamer,
)

EFFECTS = (
    "CREATE TABLE IF NOT EXISTS {p}effects (run_id VARCHAR(64) NOT NULL, version INT NOT NULL, "
    "step VARCHAR(16) NOT NULL, pid INT NOT NULL, UNIQUE KEY (run_id, version, step))",
    "CREATE TABLE IF NOT EXISTS {p}attempts (run_id VARCHAR(64) NOT NULL, version INT NOT NULL, "
    "step VARCHAR(16) NOT NULL, n INT NOT NULL, PRIMARY KEY (run_id, version, step))",
)


async def connect(db: MysqlDatabase) -> Any:
    u = db.url
    return await asyncmy.connect(
        host=u.host,
        port=u.port,
        user=u.user or "root",
        password=u.password or "",
        database=u.database,
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
    )


class Effects:
    """The outside world the steps act on: a few connections of its own, each effect one
    transaction (its row and its attempt count) in one round trip."""

    connections = 8

    def __init__(self, db: MysqlDatabase, prefix: str) -> None:
        self.db = db
        self.prefix = prefix
        self.pid = os.getpid()
        self.idle: list[Any] = []
        self.slots = asyncio.Semaphore(self.connections)

    async def apply(self, run_id: str, version: int, step: str) -> None:
        p = self.prefix
        async with self.slots:
            conn = self.idle.pop() if self.idle else await connect(self.db)
            try:
                cur = conn.cursor()
                values = (run_id, version, step)
                await cur.execute(
                    "START TRANSACTION; "
                    + cur.mogrify(
                        f"INSERT IGNORE INTO {p}effects (run_id, version, step, pid) "
                        "VALUES (%s, %s, %s, %s)",
                        (*values, self.pid),
                    )
                    + "; "
                    + cur.mogrify(
                        f"INSERT INTO {p}attempts (run_id, version, step, n) "
                        "VALUES (%s, %s, %s, 1) ON DUPLICATE KEY UPDATE n = n + 1",
                        values,
                    )
                    + "; COMMIT"
                )
                while await cur.nextset():
                    pass
            except BaseException:
                # A step cancelled mid-statement (its lease ended) leaves the connection unusable.
                conn.close()
                raise
            self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def build(
    db: MysqlDatabase,
    streamer: MysqlStreamer,
    *,
    effects: Effects | None = None,
    step_delay: float = 0.005,
    ttl: float = 3.0,
    parallel: int = 2,
) -> Workflow[Job, Status]:
    """The three-step workflow; ``effects=None`` for a process that only triggers runs."""
    b: Builder[Job, Status] = Builder(WORKFLOW, Job, Status)
    b.defaults(
        polling_frequency=0.05, error_backoff=0.05, max_error_backoff=0.5, parallel_count=parallel
    )
    b.outbox(polling_frequency=0.5, error_backoff=0.05)

    def make_step(name: str, to: Status):  # type: ignore[no-untyped-def]
        async def step(run: Run[Job, Status]) -> Status:
            if effects is None:
                raise RuntimeError("this workflow instance only triggers runs")
            await effects.apply(run.run_id, run.version, name)
            await asyncio.sleep(step_delay)  # a kill now loses the store write, not the effect
            run.object.n += 1
            return to

        step.__name__ = name
        return step

    for status, name, to in STEPS:
        b.add_step(status, make_step(name, to), to)
    return b.build(
        streamer,
        MysqlRecordStore(db, publish_to=streamer),
        MysqlRoleScheduler(db, ttl=ttl, poll_interval=0.05),
    )


async def serve(args: argparse.Namespace) -> None:
    db = MysqlDatabase(args.url, prefix=args.prefix)
    streamer = MysqlStreamer(db)
    effects = Effects(db, args.prefix)
    wf = build(
        db,
        streamer,
        effects=effects,
        step_delay=args.step_delay,
        ttl=args.ttl,
        parallel=args.parallel,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await wf.start()
        print(f"worker {os.getpid()} started", flush=True)
        await stop.wait()
        await wf.stop(grace=5.0)
    finally:
        await streamer.close()
        await db.close()
        effects.close()
    print(f"worker {os.getpid()} stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("--step-delay", type=float, default=0.005)
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(process)d %(levelname)s %(message)s"
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
