"""The workflow of the metrics, tracing and logs tests: three steps and a completion hook on a
SQLite file. ``statestream worker observe_app:wf`` runs it on the file ``OBSERVE_DB`` names."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any

from statestream import Builder, Run, Workflow
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
    SqliteTimeoutStore,
)


class S(enum.IntEnum):
    CREATED = 1
    CHECKED = 2
    PAID = 3
    DONE = 4


@dataclass
class Order:
    n: int = 0


#: foreign IDs whose first step has failed once already (a run "fail-..." fails once)
FAILED: set[str] = set()


def _to(status: S) -> Any:
    async def step(run: Run[Order, S]) -> S:
        if run.foreign_id.startswith("fail-") and run.foreign_id not in FAILED:
            FAILED.add(run.foreign_id)
            raise RuntimeError(f"first attempt of {run.foreign_id} fails")
        run.object.n += 1
        return status

    return step


async def completed(run: Run[Order, S]) -> None:
    pass


def builder() -> Builder[Order, S]:
    b: Builder[Order, S] = Builder("orders", Order, S)
    b.defaults(polling_frequency=0.02, error_backoff=0.02, max_error_backoff=0.1)
    b.outbox(polling_frequency=0.02, error_backoff=0.02)
    b.add_step(S.CREATED, _to(S.CHECKED), S.CHECKED)
    b.add_step(S.CHECKED, _to(S.PAID), S.PAID)
    b.add_step(S.PAID, _to(S.DONE), S.DONE)
    b.on_complete(completed)
    return b


def build(path: str, observer: Any = None) -> tuple[Workflow[Order, S], SqliteDatabase]:
    db = SqliteDatabase(path, synchronous="NORMAL")
    wf = builder().build(
        SqliteStreamer(db),
        SqliteRecordStore(db),
        SqliteRoleScheduler(db, poll_interval=0.02),
        timeout_store=SqliteTimeoutStore(db),
        observer=observer,
    )
    return wf, db


wf = build(os.environ["OBSERVE_DB"])[0] if "OBSERVE_DB" in os.environ else None
