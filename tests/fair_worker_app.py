"""The workflow of ``tests/test_worker_roles.py``, run by ``statestream worker fair_worker_app:wf``.

``FAIR_BACKEND`` names the backend (``sqlite``, ``postgres``, ``mysql``, ``postgres+kafka`` or
``mysql+kafka``, as in ``tests/backends.py``; default sqlite; the Kafka sets find the broker in
``STATESTREAM_KAFKA_BOOTSTRAP``), ``FAIR_DB`` its location (the SQLite file or the server
URL), ``FAIR_PREFIX`` the table prefix on a server, ``FAIR_HOLDS`` a directory: each worker
process keeps ``<pid>.json`` there, the roles it holds (rewritten by an observer at every
change), so that the test sees how the roles are divided. Short ttls, so that a killed
worker's roles move fast.

The roles: six step shards, the timeout's consumer and poller, the completion hook and the
engine's own processes.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass
from pathlib import Path

import backends
from statestream import Builder, NullObserver, Run, after

LEASE_TTL = 1.5
MEMBER_TTL = 1.5
#: How long a timeout poller holds a due timer while it fires it (``build(timeout_claim=)``):
#: a worker killed between the claim and the write leaves the timer to wait this long before
#: another fires it. Short here (the default is 60 s), as the test waits for that.
TIMEOUT_CLAIM = 3.0
TIMER = 0.1
POLL = 0.05


class Status(enum.IntEnum):
    STARTED = 1
    WAITING = 2
    DONE = 3


@dataclass
class Job:
    n: int = 0


class Holds(NullObserver):
    """Writes the roles this process holds to ``<dir>/<pid>.json`` at every change."""

    def __init__(self, directory: str) -> None:
        self.path = Path(directory) / f"{os.getpid()}.json"
        self.roles: set[str] = set()

    def lease_changed(self, workflow: str, role: str, held: bool) -> None:
        if held:
            self.roles.add(role)
        else:
            self.roles.discard(role)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.roles)))
        os.replace(tmp, self.path)


async def start(run: Run[Job, Status]) -> Status:
    run.object.n += 1
    return Status.WAITING


async def finish(run: Run[Job, Status], now: object) -> Status:
    return Status.DONE


async def completed(run: Run[Job, Status]) -> None:
    pass


#: The role scheduler's options (``backends.open_set``).
OPTIONS = {"ttl": LEASE_TTL, "poll_interval": 0.05, "member_ttl": MEMBER_TTL}


def build(  # type: ignore[no-untyped-def]
    location: str, observer: Holds | None = None, *, backend: str = "sqlite", prefix: str = ""
):
    return build_on(backends.open_set(backend, location, prefix, **OPTIONS), observer)


def build_on(adapters: backends.AdapterSet, observer: Holds | None = None):  # type: ignore[no-untyped-def]
    b: Builder[Job, Status] = Builder("fair", Job, Status)
    b.defaults(polling_frequency=0.05, error_backoff=0.05, max_error_backoff=0.5)
    b.outbox(polling_frequency=0.05, error_backoff=0.05)
    b.add_step(Status.STARTED, start, Status.WAITING, parallel_count=6)
    b.add_timeout(Status.WAITING, after(TIMER), finish, Status.DONE, polling_frequency=POLL)
    b.on_complete(completed)
    return b.build(
        adapters.streamer,
        adapters.store,
        adapters.scheduler,
        timeout_store=adapters.timeouts,
        observer=observer,
        timeout_claim=TIMEOUT_CLAIM,
    )


wf = (
    build(
        os.environ["FAIR_DB"],
        Holds(os.environ["FAIR_HOLDS"]),
        backend=os.environ.get("FAIR_BACKEND", "sqlite"),
        prefix=os.environ.get("FAIR_PREFIX", ""),
    )
    if "FAIR_DB" in os.environ
    else None
)
