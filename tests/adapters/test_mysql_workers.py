"""Three worker processes on one MariaDB database, one killed with SIGKILL midway: every run
completes, every stored transition is applied once, and each step's side effect at least once,
and exactly once where the worker that ran it was not killed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import pytest

pytest.importorskip("asyncmy")

import mysql_worker
from crash_worker import STEPS, WORKFLOW, Status
from servers import require_mysql, unique_prefix
from statestream._core.runstate import RunState
from statestream.adapters.mysql import MysqlDatabase, MysqlStreamer

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")

WORKER = Path(__file__).parent.parent / "mysql_worker.py"
RUNS = 1000
NAMES = [name for _, name, _ in STEPS]
FINAL_VERSION = 1 + len(STEPS)


class Worker:
    def __init__(self, tmp_path: Path, name: str, url: str, prefix: str) -> None:
        self.name = name
        self.log_path = tmp_path / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), url, prefix, "--step-delay", "0.01"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=WORKER.parent,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return f"--- {self.name} ---\n" + self.log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
async def db() -> AsyncIterator[MysqlDatabase]:
    database = MysqlDatabase(require_mysql(), prefix=unique_prefix())
    await database.open()
    for statement in mysql_worker.EFFECTS:
        await database.execute(statement.format(p=database.prefix))
    yield database
    p = database.prefix
    await database.execute(f"DROP TABLE IF EXISTS {p}effects, {p}attempts")
    await database.drop()
    await database.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.close()


async def completed(db: MysqlDatabase) -> int:
    rows = await db.fetch(
        f"SELECT COUNT(*) FROM {db.prefix}records WHERE workflow_name = %s AND run_state = %s",
        (WORKFLOW.encode(), int(RunState.COMPLETED)),
    )
    return int(rows[0][0])


async def wait_until(db: MysqlDatabase, n: int, timeout: float, running: list[Worker]) -> None:
    deadline = time.monotonic() + timeout
    while await completed(db) < n:
        for worker in running:
            if not worker.alive():
                pytest.fail(f"{worker.name} exited ({worker.proc.returncode})\n{worker.log()}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"{n} runs not completed in {timeout} s\n" + "".join(w.log() for w in running)
            )
        await asyncio.sleep(0.02)


@pytest.mark.timeout(180)
async def test_three_workers_one_killed_complete_every_run_once(
    db: MysqlDatabase, tmp_path: Path, workers: list[Worker]
) -> None:
    url = require_mysql()
    # Given 1,000 runs triggered, and three worker processes on the database
    streamer = MysqlStreamer(db)
    wf = mysql_worker.build(db, streamer)
    run_ids = list(await asyncio.gather(*(wf.trigger(f"order-{i}") for i in range(RUNS))))
    await streamer.close()
    workers.extend(Worker(tmp_path, f"worker-{n}", url, db.prefix) for n in range(3))
    # When one of them (one that holds roles: the one that did the most so far) is killed with
    # SIGKILL once 30 % of the runs completed
    await wait_until(db, RUNS * 3 // 10, 60, workers)
    busiest = await db.fetch(
        f"SELECT pid FROM {db.prefix}effects GROUP BY pid ORDER BY COUNT(*) DESC LIMIT 1"
    )
    [killed] = [w for w in workers if w.proc.pid == busiest[0][0]]
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(10)
    assert await completed(db) < RUNS, "the kill did not land in the middle of the batch"
    # Then the other two complete every run (taking the dead one's roles once its leases end)
    survivors = [w for w in workers if w is not killed]
    await wait_until(db, RUNS, 60, survivors)
    for worker in survivors:
        worker.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.proc.wait, 15) == 0, worker.log()

    p = db.prefix
    rows = await db.fetch(
        f"SELECT run_id, run_state, status, version FROM {p}records WHERE workflow_name = %s",
        (WORKFLOW.encode(),),
    )
    assert sorted(bytes(r[0]).decode() for r in rows) == sorted(run_ids)
    bad = [r for r in rows if (r[1], r[2], r[3]) != (5, Status.DONE, FINAL_VERSION)]
    assert not bad, f"{len(bad)} runs not Completed at DONE, version {FINAL_VERSION}"
    # And each step's effect was applied once, at the version the step ran at
    applied = await db.fetch(f"SELECT run_id, version, step, pid FROM {p}effects")
    attempts = await db.fetch(f"SELECT run_id, version, step, n FROM {p}attempts")
    expected = {(rid, v, step) for rid in run_ids for v, step in enumerate(NAMES, start=1)}
    assert {(r[0], r[1], r[2]) for r in applied} == expected
    assert len(applied) == len(expected)
    assert {(r[0], r[1], r[2]) for r in attempts} == expected
    # And a step ran more than once only where the killed worker had run it first
    first_by = {(r[0], r[1], r[2]): r[3] for r in applied}
    again = [(r[0], r[1], r[2]) for r in attempts if r[3] > 1]
    assert all(first_by[key] == killed.proc.pid for key in again), again[:5]
    # And the killed worker had done part of the work, a survivor the rest
    pids = {r[3] for r in applied}
    assert killed.proc.pid in pids
    assert len(pids) >= 2
