"""Three ``statestream worker`` processes on one database divide the workflow's roles, and the
roles of one killed with SIGKILL move to the other two within the lease and member ttls.

Parametrised over the adapter sets of ``tests/backends.py`` (SQLite, PostgreSQL, MariaDB, and
PostgreSQL or MariaDB records with Kafka events; a server that does not answer skips loudly, and
fails when ``CI=true``): each case has its own
file or table prefix, dropped afterwards. The workers run ``tests/fair_worker_app.py``, whose
observer keeps the roles each process holds in ``<pid>.json``; this process triggers runs with
a workflow on the same database that it never starts.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import pytest

import backends
import fair_worker_app
from statestream import RunState

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="needs POSIX signals (SIGKILL, SIGTERM)"
)

TESTS = Path(__file__).parent
#: Slack for a loaded machine on top of what the ttls promise.
SLACK = 5.0


class Worker:
    def __init__(self, tmp_path: Path, n: int, env: dict[str, str]) -> None:
        self.log_path = tmp_path / f"worker-{n}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "statestream.cli",
                "worker",
                "fair_worker_app:wf",
                "--grace",
                "2",
                "--log-level",
                "info",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return f"--- worker {self.pid} ---\n" + self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(params=backends.NAMES + backends.KAFKA_NAMES)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, str, str]]:
    """(backend name, location, table prefix) of this case; its tables dropped afterwards. A
    Kafka set's broker is in ``STATESTREAM_KAFKA_BOOTSTRAP`` (the workers inherit it)."""
    name: str = request.param
    backends.require(name)
    backends.kafka_for(name, request, monkeypatch)
    location, prefix = backends.location_for(name, tmp_path), backends.new_prefix()
    try:
        yield name, location, prefix
    finally:
        await backends.drop_prefixed(name, location, prefix)


@pytest.fixture
def workers(tmp_path: Path, backend: tuple[str, str, str]) -> Iterator[list[Worker]]:
    name, location, prefix = backend
    env = {
        **os.environ,
        "FAIR_BACKEND": name,
        "FAIR_DB": location,
        "FAIR_PREFIX": prefix,
        "FAIR_HOLDS": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "NO_COLOR": "1",
    }
    started = [Worker(tmp_path, n, env) for n in range(3)]
    try:
        yield started
    finally:
        for worker in started:
            worker.close()


def holdings(tmp_path: Path, pids: list[int]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for pid in pids:
        path = tmp_path / f"{pid}.json"
        found[pid] = set(json.loads(path.read_text())) if path.exists() else set()
    return found


def divided(held: dict[int, set[str]], roles: set[str], *, even: bool = False) -> bool:
    """Every role held once, each worker holding at least one and about its share (``even``:
    the counts differ by one at most)."""
    ceiling = math.ceil(len(roles) / len(held)) + 1
    every = [r for rs in held.values() for r in rs]
    counts = [len(rs) for rs in held.values()]
    if even and max(counts) - min(counts) > 1:
        return False
    return sorted(every) == sorted(roles) and all(1 <= n <= ceiling for n in counts)


async def wait_divided(
    tmp_path: Path,
    workers: list[Worker],
    roles: set[str],
    within: float,
    what: str,
    *,
    even: bool = False,
) -> float:
    started = time.monotonic()
    pids = [w.pid for w in workers]
    while not divided(held := holdings(tmp_path, pids), roles, even=even):
        if time.monotonic() - started > within:
            logs = "\n".join(w.log() for w in workers)
            pytest.fail(f"{what}: not divided within {within:g} s: {held}\n{logs}")
        for w in workers:
            assert w.proc.poll() is None, f"worker {w.pid} exited\n{w.log()}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_three_workers_divide_the_roles_and_a_killed_ones_move(
    tmp_path: Path, backend: tuple[str, str, str], workers: list[Worker]
) -> None:
    name, location, prefix = backend
    adapters = backends.open_set(name, location, prefix, **fair_worker_app.OPTIONS)
    wf = fair_worker_app.build_on(adapters)
    roles = {info.role for info in wf.process_info().values()}
    assert len(roles) >= 9
    try:
        # Given three workers on one file: they divide the roles among them evenly
        await wait_divided(tmp_path, workers, roles, 10 + SLACK, "three workers", even=True)

        # And, none of them coming or going, the division settles on the deal (roles
        # dealt to another worker move once) and then stays put for several beats
        pids = [w.pid for w in workers]
        settle_by = time.monotonic() + 10 + SLACK
        before = holdings(tmp_path, pids)
        while True:
            await asyncio.sleep(fair_worker_app.MEMBER_TTL)
            now = holdings(tmp_path, pids)
            if now == before and divided(now, roles, even=True):
                break
            assert time.monotonic() < settle_by, f"the division does not settle: {now}"
            before = now
        # And it is by kind: each worker runs two of the six step shards
        shards = [len([r for r in rs if "-consumer-" in r and "-of-6" in r]) for rs in now.values()]
        assert shards == [2, 2, 2], now

        # When runs are triggered and one worker is killed while they are in flight
        runs = [await wf.trigger(f"before-{i}") for i in range(20)]
        victim, survivors = workers[0], workers[1:]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        killed = time.monotonic()
        runs += [await wf.trigger(f"during-{i}") for i in range(20)]

        # Then its roles move to the other two within the lease and member ttls
        bound = fair_worker_app.LEASE_TTL + fair_worker_app.MEMBER_TTL
        took = await wait_divided(tmp_path, survivors, roles, bound + SLACK, "after the kill")
        print(f"the killed worker's roles moved in {took:.2f} s (ttls: {bound:g} s)")

        # And every run completes: the roles moved within the ttls, and a timer the killed
        # worker had claimed (between its claim and its write) is due again at the end of the
        # claim window, and then fired at the next poll
        app = fair_worker_app
        within = max(bound, app.TIMEOUT_CLAIM) + app.TIMER + app.POLL + 2 * SLACK
        deadline = killed + within
        pending = set(runs)
        while pending:
            for run_id in list(pending):
                if (await wf.store.lookup(run_id)).run_state is RunState.COMPLETED:
                    pending.discard(run_id)
            if pending and time.monotonic() > deadline:
                logs = "\n".join(w.log() for w in survivors)
                records = [await wf.store.lookup(r) for r in pending]
                timers = [t for t in await wf.timeout_store.list("fair") if t.run_id in pending]
                pytest.fail(
                    f"{len(pending)} runs did not complete within {within:g} s of the kill: "
                    f"{records} {timers}\n{logs}"
                )
            await asyncio.sleep(0.05)

        # And the survivors stop cleanly
        for w in survivors:
            w.proc.send_signal(signal.SIGTERM)
        for w in survivors:
            assert await asyncio.to_thread(w.proc.wait, 15) == 0, w.log()
    finally:
        await adapters.close()
