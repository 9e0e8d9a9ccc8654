"""A worker process for the SQLite crash tests (tests/test_sqlite_durability.py).

Run as ``python tests/crash_worker.py DBPATH EFFECTSPATH [options]``: it builds the three-step
``crash`` workflow on ``SqliteDatabase(DBPATH)`` with the SQLite streamer, record store and role
scheduler, starts it, and runs until SIGTERM (or SIGINT), which stops the workflow cleanly and
exits 0. A test may also SIGKILL it at any moment.

Every step records its side effect in a SEPARATE SQLite file (EFFECTSPATH), through a plain
``sqlite3`` connection, before the engine stores the step's result: so the effect survives even
when the step's write to the workflow store is lost with the process. The effect is idempotent,
``INSERT OR IGNORE`` under ``UNIQUE (run_id, version, step)``, while ``attempts`` counts every
attempt, so a test sees both the at-least-once execution and the exactly-once effect.

The test process imports :func:`build` too, to trigger runs with a workflow that it never starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from statestream import Builder, Run, Workflow
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
)

WORKFLOW = "crash"
EFFECTS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS effects (
        run_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        step TEXT NOT NULL,
        pid INTEGER NOT NULL,
        UNIQUE (run_id, version, step)
    )""",
    """CREATE TABLE IF NOT EXISTS attempts (
        run_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        step TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (run_id, version, step)
    )""",
)


class Status(IntEnum):
    STARTED = 1
    RESERVED = 2
    CHARGED = 3
    DONE = 4


#: (status a step consumes, name of its effect, status it moves to)
STEPS = (
    (Status.STARTED, "reserve", Status.RESERVED),
    (Status.RESERVED, "charge", Status.CHARGED),
    (Status.CHARGED, "ship", Status.DONE),
)


@dataclass
class Job:
    n: int = 0


def init_effects(path: str | os.PathLike[str]) -> None:
    """Create the effects file (WAL, so that two workers and the test can share it)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in EFFECTS_SCHEMA:
            conn.execute(statement)
    finally:
        conn.close()


class Effects:
    """The outside world the steps act on: one plain sqlite3 connection to the effects file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.pid = os.getpid()
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        # WAL survives a killed process with NORMAL: only a power cut could lose a commit.
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.attempts = 0

    def apply(self, run_id: str, version: int, step: str) -> None:
        """Apply the effect of ``step`` for this visit of the run, once; count the attempt."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT OR IGNORE INTO effects (run_id, version, step, pid) VALUES (?, ?, ?, ?)",
                (run_id, version, step, self.pid),
            )
            conn.execute(
                "INSERT INTO attempts (run_id, version, step, n) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (run_id, version, step) DO UPDATE SET n = n + 1",
                (run_id, version, step),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.attempts += 1

    def close(self) -> None:
        self.conn.close()


def build(
    db: SqliteDatabase,
    streamer: SqliteStreamer,
    *,
    effects: Effects | None = None,
    step_delay: float = 0.005,
    ttl: float = 1.0,
    parallel: int = 2,
    stall_at: int = 0,
    stall_for: float = 0.0,
) -> Workflow[Job, Status]:
    """The three-step workflow on ``db``; ``effects=None`` for a process that only triggers.

    ``stall_at``: after this process's ``stall_at``-th effect, block the event loop for
    ``stall_for`` seconds (a long GC pause, a starved CPU): the leases are not renewed meanwhile,
    while SQLite's locks are free, so another process takes the roles over.
    """
    b: Builder[Job, Status] = Builder(WORKFLOW, Job, Status)
    b.defaults(
        polling_frequency=0.05,
        error_backoff=0.05,
        max_error_backoff=0.5,
        parallel_count=parallel,
    )
    b.outbox(polling_frequency=0.05, error_backoff=0.05)

    def make_step(name: str, to: Status):  # type: ignore[no-untyped-def]
        async def step(run: Run[Job, Status]) -> Status:
            if effects is None:
                raise RuntimeError("this workflow instance only triggers runs")
            effects.apply(run.run_id, run.version, name)
            if stall_at and effects.attempts == stall_at:
                print(f"worker {os.getpid()} stalls for {stall_for}s", flush=True)
                time.sleep(stall_for)  # noqa: ASYNC251 - blocking the loop is the point
                print(f"worker {os.getpid()} resumes", flush=True)
            # The step goes on after its effect: a kill now loses the store write, not the effect.
            await asyncio.sleep(step_delay)
            run.object.n += 1
            return to

        step.__name__ = name
        return step

    for status, name, to in STEPS:
        b.add_step(status, make_step(name, to), to)
    return b.build(
        streamer,
        SqliteRecordStore(db),
        SqliteRoleScheduler(db, ttl=ttl, poll_interval=0.05),
    )


async def serve(args: argparse.Namespace) -> None:
    db = SqliteDatabase(args.db, synchronous=args.synchronous)
    streamer = SqliteStreamer(db)
    effects = Effects(args.effects)
    wf = build(
        db,
        streamer,
        effects=effects,
        step_delay=args.step_delay,
        ttl=args.ttl,
        parallel=args.parallel,
        stall_at=args.stall_at,
        stall_for=args.stall_for,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await wf.start()
        print(f"worker {os.getpid()} started", flush=True)
        await stop.wait()
        print(f"worker {os.getpid()} stopping", flush=True)
        await wf.stop(grace=5.0)
    finally:
        await streamer.close()
        await db.close()
        effects.close()
    print(f"worker {os.getpid()} stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("db", type=Path)
    parser.add_argument("effects", type=Path)
    parser.add_argument("--step-delay", type=float, default=0.005)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--stall-at", type=int, default=0, help="stall after this effect")
    parser.add_argument("--stall-for", type=float, default=2.5, help="seconds to stall")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(process)d %(levelname)s %(message)s"
    )
    # INFO shows the compare-and-set refusals ("result discarded") that tests count.
    logging.getLogger("statestream").setLevel(logging.INFO)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
