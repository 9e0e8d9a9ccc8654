"""The benchmarks' backends: a name mapped to the adapters it opens, and their CPU windows.

A backend is an async context manager that yields the :class:`Adapters` and cleans them up;
adding one is one factory and one line in :data:`BACKENDS`. :class:`CpuWindow` reads the CPU
time of this process, of the database server and of the broker over a measured window.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from statestream import EventStreamer, RecordStore, RoleScheduler, TimeoutStore
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
    SqliteTimeoutStore,
)

from . import servers
from .peers.proc_cpu import cpu_seconds

__all__ = [
    "BACKENDS",
    "Adapters",
    "BackendFactory",
    "Cpu",
    "CpuWindow",
    "make_memory_adapters",
    "unavailable",
]


@dataclass(frozen=True, slots=True)
class Adapters:
    streamer: EventStreamer
    store: RecordStore
    scheduler: RoleScheduler
    timeout_store: TimeoutStore | None = None
    #: Where another process finds the same data (a SQLite file, a server's table prefix), for
    #: the multi-process workloads; None for a backend that lives in one process.
    location: str | None = None
    #: The database server's processes, whose CPU time a workload reports beside its own.
    server: servers.ServerCpu | None = None
    #: The PID of a message broker on this host (Kafka), whose CPU time is reported too.
    broker: int | None = None


class BackendFactory(Protocol):
    """Opens a backend: a fresh one that is removed afterwards, or (``location``, from another
    process's :attr:`Adapters.location`) an existing one that is left in place."""

    def __call__(
        self, location: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[Adapters]: ...


@contextlib.asynccontextmanager
async def make_memory_adapters(location: str | None = None) -> AsyncIterator[Adapters]:
    """The in-memory adapters, configured as a long-running service would use them.

    ``keep_snapshots=False``: the store's debugging history of every version of every run is
    off, as its docstring recommends for long-running processes.
    """
    if location is not None:
        raise ValueError("the memory backend lives in one process: it has no location to share")
    streamer = MemoryStreamer()
    try:
        yield Adapters(
            streamer=streamer,
            store=MemoryRecordStore(keep_snapshots=False),
            scheduler=MemoryRoleScheduler(),
            timeout_store=MemoryTimeoutStore(),
        )
    finally:
        await streamer.close()


def make_sqlite_adapters(synchronous: Literal["FULL", "NORMAL"]) -> BackendFactory:
    """The embedded default: every adapter on one SQLite file in a temporary directory, the
    store publishing straight into the event table (no outbox relay on the path)."""

    @contextlib.asynccontextmanager
    async def make(location: str | None = None) -> AsyncIterator[Adapters]:
        with contextlib.ExitStack() as stack:
            if location is None:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="statestream-bench-"))
                location = str(Path(tmp) / "bench.db")
            db = SqliteDatabase(Path(location), synchronous=synchronous)
            streamer = SqliteStreamer(db)
            try:
                yield Adapters(
                    streamer=streamer,
                    store=SqliteRecordStore(db, publish_to=streamer),
                    scheduler=SqliteRoleScheduler(db),
                    timeout_store=SqliteTimeoutStore(db),
                    location=location,
                )
            finally:
                await streamer.close()
                await db.close()

    return make


def make_server_adapters(kind: str) -> BackendFactory:
    """Every adapter on a database server (``kind``: ``postgres`` or ``mysql``, see
    :mod:`bench.servers`), records and events in the same database, under a table prefix of
    the run's own; a fresh prefix's tables are dropped afterwards."""

    @contextlib.asynccontextmanager
    async def make(location: str | None = None) -> AsyncIterator[Adapters]:
        prefix = location or servers.new_prefix()
        try:
            db, streamer, store, scheduler, timeout_store = servers.open_adapters(kind, prefix)
            try:
                yield Adapters(
                    streamer=streamer,
                    store=store,
                    scheduler=scheduler,
                    timeout_store=timeout_store,
                    location=prefix,
                    server=await servers.server_cpu(kind),
                )
            finally:
                await servers.close_all(streamer.close, db.close)
        finally:
            if location is None:
                await servers.drop_prefixed(kind, prefix)

    return make


def _postgres_kafka(
    location: str | None = None,
) -> contextlib.AbstractAsyncContextManager[Adapters]:
    from . import kafka  # imports confluent-kafka: only when the backend is used

    return kafka.postgres_kafka_adapters(location)


BACKENDS: dict[str, BackendFactory] = {
    "memory": make_memory_adapters,
    # WAL + synchronous=FULL: a committed write survives a power cut.
    "sqlite": make_sqlite_adapters("FULL"),
    # WAL + synchronous=NORMAL: a power cut may lose the last commits (never corrupts).
    "sqlite-normal": make_sqlite_adapters("NORMAL"),
    # Records and events in the server's database; fsync and synchronous_commit as the server
    # has them (on by default), innodb_flush_log_at_trx_commit likewise (1 by default).
    "postgres": make_server_adapters("postgres"),
    "mysql": make_server_adapters("mysql"),
    # Records and the outbox in PostgreSQL, events in Kafka (a broker the bench starts, or
    # STATESTREAM_KAFKA_BOOTSTRAP's): see bench/kafka.py.
    "postgres-kafka": _postgres_kafka,
}


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or None: the harness prints a "skipped" row for it."""
    if backend == "postgres-kafka":
        from . import kafka

        return kafka.unavailable()
    return servers.unavailable(backend) if backend in servers.SERVERS else None


# ------------------------------------------------------------------------------------ CPU


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU seconds in a window: this process's, the server's, the server's in our sessions,
    the broker's."""

    client: float
    server: float | None = None
    server_own: float | None = None
    broker: float | None = None

    def per_transition(self, transitions: int) -> dict[str, float | None]:
        """The server and broker figures in µs per transition, as ``Result`` fields."""
        return {
            "server_cpu_us_per_transition": _per(self.server, transitions),
            "server_own_cpu_us_per_transition": _per(self.server_own, transitions),
            "broker_cpu_us_per_transition": _per(self.broker, transitions),
        }


class CpuWindow:
    """CPU time of this process, and of the database server and the broker when there are
    ones, over a window opened by :meth:`start` and read by :meth:`stop`."""

    def __init__(self, adapters: Adapters) -> None:
        self._server = adapters.server
        self._broker = adapters.broker
        self.start()

    def start(self) -> None:
        self._client = time.process_time()
        self._snapshot = self._server.snapshot() if self._server else None
        self._broker_cpu = cpu_seconds(self._broker) if self._broker else None

    async def stop(self, clients: tuple[int, ...] = ()) -> Cpu:
        """Close the window; ``clients``: other processes whose server sessions are ours."""
        client = time.process_time() - self._client
        broker = None
        if self._broker and self._broker_cpu is not None:
            now = cpu_seconds(self._broker)
            broker = None if now is None else now - self._broker_cpu
        if self._server is None or self._snapshot is None:
            return Cpu(client, broker=broker)
        after = self._server.snapshot()
        total = self._server.total(self._snapshot, after)
        own = await self._server.own(self._snapshot, after, [os.getpid(), *clients])
        return Cpu(client, total, own, broker)


def _per(seconds: float | None, transitions: int) -> float | None:
    return None if seconds is None else seconds / transitions * 1e6
