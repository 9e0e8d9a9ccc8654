"""A private PostgreSQL cluster for tests that stop and restart the server.

The shared server at 127.0.0.1:5432 is never restarted by a test (other helpers use it at the
same time): a test that needs the server to go away under running workers gets a cluster of its
own, with :func:`private_cluster`:

- ``initdb`` into a fresh temporary directory (trust authentication, user ``postgres``), then
  ``pg_ctl start`` on a free port on 127.0.0.1 with its Unix socket in that directory and
  ``fsync`` on (the durability the engine promises is the one tested);
- PostgreSQL refuses to run as root: when the test runs as root, every command runs as the
  unprivileged ``postgres`` user (``runuser -u postgres --``), which owns the directory;
- :meth:`PgCluster.stop` is ``pg_ctl stop -m immediate`` (a crash, as far as the data is
  concerned: recovery replays the WAL at the next start); :meth:`PgCluster.start` starts it again
  on the same port;
- always cleaned up: the cluster is stopped, and if ``pg_ctl`` cannot stop it, the postmaster
  this fixture started (its PID read from ``postmaster.pid`` after each start) is killed by that
  PID, never by name; the directory is removed.

The binaries are looked up in /usr/local/bin, then on ``PATH``. Missing binaries, or root without
a ``postgres`` user, skip the test with a loud reason (fail when ``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["PgCluster", "private_cluster"]

BIN_DIRS = ("/usr/local/bin",)


def _binary(name: str) -> str | None:
    for directory in BIN_DIRS:
        path = Path(directory) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"private PostgreSQL cluster: {reason} (CI=true)")
    pytest.skip(f"!!! private PostgreSQL cluster: {reason} -- this test did NOT run !!!")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One private cluster: its directory, port and the postmaster it started."""

    def __init__(
        self,
        root: Path,
        initdb: str,
        pg_ctl: str,
        run_as: list[str],
        password: str | None = None,
    ) -> None:
        self.root = root
        #: The password of user postgres (scram-sha-256 authentication); None: trust.
        self.password = password
        self.data = root / "data"
        self.log_file = root / "server.log"
        self.port = free_port()
        self._initdb = initdb
        self._pg_ctl = pg_ctl
        self._run_as = run_as
        #: PID of the postmaster of the last successful start (None while stopped).
        self.pid: int | None = None

    @property
    def url(self) -> str:
        secret = f":{self.password}" if self.password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._run_as, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = (
                self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            )
            raise RuntimeError(
                f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"--- server log ---\n{log}"
            )

    def init(self) -> None:
        auth = ["-A", "trust"]
        if self.password is not None:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password)
            stat = self.root.stat()
            os.chown(pwfile, stat.st_uid, stat.st_gid)
            auth = ["-A", "scram-sha-256", f"--pwfile={pwfile}"]
        result = self._run(
            self._initdb,
            "-D",
            str(self.data),
            "-U",
            "postgres",
            *auth,
            "-E",
            "UTF8",
            "--no-sync",  # only initdb's own files: the server below runs with fsync on
        )
        self._check(result, "initdb")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c synchronous_commit=on -c max_connections=100"
        )
        result = self._run(
            self._pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.log_file),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self._check(result, "pg_ctl start")
        self.pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m MODE`` (default immediate: no checkpoint, connections cut)."""
        result = self._run(self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")
        self._check(result, f"pg_ctl stop -m {mode}")
        self.pid = None

    def server_log(self, tail: int = 3000) -> str:
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")[-tail:]

    def _alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def cleanup(self) -> None:
        """Stop the server if it runs (by pg_ctl, else by the PID this fixture started)."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(Exception):
            self.stop("immediate")
        if self.pid is not None and self._alive(pid):
            # SIGQUIT is PostgreSQL's immediate shutdown; SIGKILL if it does not go.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pid = None


@contextlib.contextmanager
def private_cluster(password: str | None = None) -> Iterator[PgCluster]:
    """A started private cluster; stopped and deleted afterwards, whatever happens. With a
    ``password``, user postgres must give it (scram-sha-256), else trust."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        _unavailable("initdb or pg_ctl not found in /usr/local/bin nor on PATH")
    run_as: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = None
        if runuser is None or owner is None:
            _unavailable("running as root, and no 'postgres' user or no runuser to drop to")
        run_as = [runuser, "-u", owner.pw_name, "--"]
    root = Path(tempfile.mkdtemp(prefix="statestream-pg-"))
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        cluster = PgCluster(root, initdb, pg_ctl, run_as, password)
        try:
            cluster.init()
            cluster.start()
            yield cluster
        finally:
            cluster.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)
