"""Workers on a PostgreSQL server that restarts under them reconnect and lose nothing.

The shared server is never restarted: the test starts a private cluster (initdb + pg_ctl, as the
unprivileged ``postgres`` user when run as root) on a free port, stops it with ``-m immediate``
(a crash, as far as the data is concerned) and starts it again. Only the postmaster this test
started is ever stopped, by ``pg_ctl`` on its own directory or by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from statestream import Builder, Run
from statestream.adapters.postgres import (
    PostgresDatabase,
    PostgresRecordStore,
    PostgresRoleScheduler,
    PostgresStreamer,
)


def _binary(name: str) -> str:
    for candidate in (f"/usr/local/bin/{name}", shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = f"!!! SKIPPED: {name} not found (install PostgreSQL's server binaries)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class _Cluster:
    directory: Path
    port: int
    run_as: list[str]
    pg_ctl: str

    password: str | None = None

    @property
    def url(self) -> str:
        secret = f":{self.password}" if self.password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, self.pg_ctl, "-D", str(self.directory / "data"), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._ctl("-o", options, "-l", str(self.directory / "log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        return None


@pytest.fixture(scope="module")
def cluster() -> Iterator[_Cluster]:
    """One private cluster for the module (initdb takes seconds), with password auth."""
    yield from _cluster(password=PASSWORD)


PASSWORD = "right-password"


def _cluster(password: str | None) -> Iterator[_Cluster]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    run_as: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="statestream-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(directory)
            pytest.skip("!!! SKIPPED: running as root and there is no 'postgres' user")
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    c = _Cluster(directory, port, run_as, pg_ctl, password)
    auth = ["-A", "trust"]
    if password is not None:
        pwfile = directory / "pwfile"
        pwfile.write_text(password)
        if run_as:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        auth = ["-A", "scram-sha-256", f"--pwfile={pwfile}"]
    subprocess.run(
        [*run_as, initdb, "-D", str(directory / "data"), *auth, "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    c.start()
    try:
        yield c
    finally:
        pid = c.pid()
        try:
            c.stop()
        except (subprocess.SubprocessError, OSError):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # the postmaster this fixture started
        shutil.rmtree(directory, ignore_errors=True)


class Step(enum.IntEnum):
    A = 1
    B = 2
    C = 3
    D = 4


@dataclass
class Item:
    n: int = 0


async def test_workers_reconnect_after_a_restart_and_lose_nothing(
    cluster: _Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a workflow of three steps on the private server
    db = PostgresDatabase(cluster.url, reconnect_timeout=60, connect_timeout=2)
    streamer = PostgresStreamer(db)
    seen: set[str] = set()
    runs = [f"item-{i}" for i in range(40)]
    all_seen = asyncio.Event()

    async def step(run: Run[Item, Step]) -> Step:
        if run.status == Step.C:
            seen.add(run.foreign_id)
            if seen == set(runs):
                all_seen.set()
        return Step(run.status + 1)

    b = Builder("restart", Item, Step)
    b.defaults(error_backoff=0.05, max_error_backoff=0.5, polling_frequency=0.2)
    for status in (Step.A, Step.B, Step.C):
        b.add_step(status, step, Step(status + 1))
    wf = b.build(
        streamer,
        PostgresRecordStore(db, publish_to=streamer),
        PostgresRoleScheduler(db, ttl=3.0, poll_interval=0.1),
    )
    caplog.set_level(logging.WARNING)
    try:
        async with wf:
            for fid in runs[:20]:
                await wf.trigger(fid)
            # When the server crashes and comes back under the running workers
            await asyncio.to_thread(cluster.stop)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(cluster.start)
            for fid in runs[20:]:
                for _ in range(100):  # the trigger of the first moments may find it starting
                    try:
                        await wf.trigger(fid)
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
            # Then every run completes
            async with asyncio.timeout(45):
                await all_seen.wait()
    finally:
        await streamer.close()
        await db.close()
    # And the loss of the connection was logged
    assert any("connection" in r.getMessage().lower() for r in caplog.records)


async def test_a_wrong_password_is_a_clear_error(cluster: _Cluster) -> None:
    from statestream import errors

    url = cluster.url.replace(f"postgres:{PASSWORD}@", "postgres:wrong@")
    database = PostgresDatabase(url, connect_timeout=5)
    try:
        async with asyncio.timeout(20):
            with pytest.raises(errors.AdapterConnectionError, match="refused user 'postgres'"):
                await database.open()
    finally:
        await database.close()
    right = PostgresDatabase(cluster.url)
    try:
        await right.open()
    finally:
        await right.close()
