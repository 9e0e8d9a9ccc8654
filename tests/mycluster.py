"""A private MariaDB instance for tests that stop and restart the server (the MySQL twin of
tests/pgcluster.py; the shared server at 127.0.0.1:3306 is never restarted by a test).

- ``mariadb-install-db`` into a fresh temporary directory (``root`` without a password, as on the
  shared server), then ``mariadbd`` on a free port on 127.0.0.1, its socket, pid file and error
  log in that directory, ``innodb_flush_log_at_trx_commit=1``; an init file creates the
  ``test`` database;
- as root, ``mariadbd --user=mysql`` drops to the unprivileged ``mysql`` user itself, so the
  process this fixture starts is the server: :meth:`MyCluster.stop` SIGKILLs that PID (a crash:
  InnoDB recovers at the next start) and :meth:`MyCluster.start` starts it again on the same
  port;
- always cleaned up: the server it started is killed by its PID, the directory removed.

Missing binaries skip the test with a loud reason (fail when ``CI=true``).
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
from typing import IO, NoReturn

import pytest

from pgcluster import free_port

__all__ = ["MyCluster", "private_mariadb"]


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"private MariaDB instance: {reason} (CI=true)")
    pytest.skip(f"!!! private MariaDB instance: {reason} -- this test did NOT run !!!")


def _binary(*names: str) -> str | None:
    for name in names:
        for directory in ("/usr/local/bin", "/usr/sbin", "/usr/bin"):
            path = Path(directory) / name
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
        found = shutil.which(name)
        if found:
            return found
    return None


class MyCluster:
    """One private MariaDB server: its directory, port and the process it started."""

    def __init__(self, root: Path, install_db: str, server: str, user: str | None) -> None:
        self.root = root
        self.data = root / "data"
        self.error_log = root / "error.log"
        self.port = free_port()
        self._install_db = install_db
        self._server = server
        self._user = user
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/test"

    def init(self) -> None:
        args = [
            self._install_db,
            "--no-defaults",
            f"--datadir={self.data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ]
        if self._user:
            args.append(f"--user={self._user}")
        result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{result.stdout}\n{result.stderr}")
        (self.root / "init.sql").write_text("CREATE DATABASE IF NOT EXISTS test;\n")

    def start(self, timeout: float = 60.0) -> None:
        args = [
            self._server,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.root / 'mysqld.sock'}",
            f"--pid-file={self.root / 'mysqld.pid'}",
            f"--log-error={self.error_log}",
            f"--init-file={self.root / 'init.sql'}",
            "--skip-name-resolve",
            "--innodb-flush-log-at-trx-commit=1",
            "--max-connections=200",
        ]
        if self._user:
            args.append(f"--user={self._user}")
        self._out = (self.root / "stdout.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mariadbd exited ({self.proc.returncode}):\n{self.server_log()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0),
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mariadbd did not listen within {timeout}s\n{self.server_log()}"
                )
            time.sleep(0.05)

    def stop(self, mode: str = "kill") -> None:
        """SIGKILL the server this fixture started (``mode="term"``: SIGTERM, a clean stop)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if mode == "term" else signal.SIGKILL)
        proc.wait(30)
        self.proc = None
        if self._out is not None:
            self._out.close()
            self._out = None

    def server_log(self, tail: int = 3000) -> str:
        if not self.error_log.exists():
            return ""
        return self.error_log.read_text(errors="replace")[-tail:]

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("kill")


@contextlib.contextmanager
def private_mariadb() -> Iterator[MyCluster]:
    """A started private MariaDB server; killed and deleted afterwards, whatever happens."""
    install_db = _binary("mariadb-install-db", "mysql_install_db")
    server = _binary("mariadbd", "mysqld")
    if install_db is None or server is None:
        _unavailable("mariadb-install-db or mariadbd not found")
    user: str | None = None
    root = Path(tempfile.mkdtemp(prefix="statestream-my-"))
    try:
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("mysql")
            except KeyError:
                _unavailable("running as root and there is no 'mysql' user to run mariadbd as")
            os.chown(root, owner.pw_uid, owner.pw_gid)
            user = owner.pw_name
        cluster = MyCluster(root, install_db, server, user)
        try:
            cluster.init()
            cluster.start()
            yield cluster
        finally:
            cluster.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)
