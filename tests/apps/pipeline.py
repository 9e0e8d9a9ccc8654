"""The fault tests' workflow, run by real workers: ``statestream worker apps.pipeline:workflow``.

A three-step pipeline (``reserve``, ``charge``, ``ship``), two shards per step, on the backend the
environment names (``tests/backends.py``):

- ``PIPELINE_BACKEND``: ``sqlite``, ``postgres``, ``mysql``, ``postgres+kafka`` or ``mysql+kafka``
  (the Kafka sets find the broker in ``STATESTREAM_KAFKA_BOOTSTRAP``);
- ``PIPELINE_LOCATION``: the SQLite file or the server URL;
- ``PIPELINE_PREFIX``: the table prefix (server backends);
- ``PIPELINE_EFFECTS``: a directory; each process appends its side effects to a file of its own
  there, ``effects-<pid>.log``;
- ``PIPELINE_TTL`` (default 1.0 s): the role scheduler's lease ttl, short so that a killed
  worker's roles move fast; ``PIPELINE_STEP_DELAY`` (default 0.002 s): how long a step goes on
  after its side effect (a kill in that window loses the step's store write, not its effect);
  ``PIPELINE_MEMBER_TTL`` (default: the scheduler's): the ttl of a worker's member row, by
  which the workers divide the roles.

Every step records its side effect *before* it returns (so before the engine stores its result):
one line ``"<idempotency_key> <step> <pid>\\n"`` written with a single ``write`` to a file opened
with ``O_APPEND``, which survives a SIGKILL the moment the call returns. A test reads every
process's file to see which effect happened how many times, and by whom.

The test process imports :func:`build` to trigger runs with a workflow it never starts.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import backends  # tests/backends.py: tests/ is on the path (pytest; PYTHONPATH for workers)
from statestream import Builder, Run, Workflow

WORKFLOW = "pipeline"


def _dump_tasks(signum: int, frame: object) -> None:
    """SIGUSR1: write every asyncio task's stack to stderr (the worker's log), so that a test
    that timed out can show where each worker's tasks wait."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    out = io.StringIO()
    tasks = asyncio.all_tasks(loop)
    out.write(f"=== {len(tasks)} asyncio tasks of pid {os.getpid()} ===\n")
    for task in tasks:
        task.print_stack(limit=12, file=out)
    out.write("=== end of tasks ===\n")
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()


if hasattr(signal, "SIGUSR1"):
    signal.signal(signal.SIGUSR1, _dump_tasks)


class Status(IntEnum):
    STARTED = 1
    RESERVED = 2
    CHARGED = 3
    DONE = 4


#: (status a step consumes, the step's name, the status it moves to)
STEPS = (
    (Status.STARTED, "reserve", Status.RESERVED),
    (Status.RESERVED, "charge", Status.CHARGED),
    (Status.CHARGED, "ship", Status.DONE),
)
#: The trigger writes version 1, each step one more.
FINAL_VERSION = 1 + len(STEPS)


@dataclass
class Job:
    n: int = 0


class Effects:
    """This process's side-effect log: one ``O_APPEND`` file in the effects directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.pid = os.getpid()
        self.path = Path(directory) / f"effects-{self.pid}.log"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(self, key: str, step: str) -> None:
        os.write(self.fd, f"{key} {step} {self.pid}\n".encode())

    def close(self) -> None:
        os.close(self.fd)


def read_effects(directory: str | os.PathLike[str]) -> list[tuple[str, str, int]]:
    """Every effect every process recorded: ``(idempotency_key, step, pid)``."""
    effects = []
    for path in sorted(Path(directory).glob("effects-*.log")):
        text = path.read_text()
        # A line that crosses a page boundary is appended in two steps, and a read between them
        # sees its first part: leave an unfinished last line to the next read.
        for line in text[: text.rfind("\n") + 1].splitlines():
            key, step, pid = line.split(" ")
            effects.append((key, step, int(pid)))
    return effects


def build(
    adapters: backends.AdapterSet,
    *,
    effects: Effects | None = None,
    step_delay: float = 0.002,
    parallel: int = 2,
) -> Workflow[Job, Status]:
    """The pipeline on ``adapters``; ``effects=None`` for a process that only triggers runs."""
    b: Builder[Job, Status] = Builder(WORKFLOW, Job, Status)
    b.defaults(
        polling_frequency=0.05,
        error_backoff=0.05,
        max_error_backoff=0.5,
        parallel_count=parallel,
    )
    b.outbox(polling_frequency=0.05, error_backoff=0.05)

    def make_step(name: str, to: Status) -> Any:
        async def step(run: Run[Job, Status]) -> Status:
            if effects is None:
                raise RuntimeError("this workflow instance only triggers runs")
            effects.record(run.idempotency_key, name)
            # The step goes on after its effect: a kill now loses the store write, not the effect.
            await asyncio.sleep(step_delay)
            run.object.n += 1
            return to

        step.__name__ = name
        return step

    for status, name, to in STEPS:
        b.add_step(status, make_step(name, to), to)
    return b.build(
        adapters.streamer, adapters.store, adapters.scheduler, timeout_store=adapters.timeouts
    )


def adapters_from_env() -> backends.AdapterSet:
    env = os.environ
    return backends.open_set(
        env["PIPELINE_BACKEND"],
        env["PIPELINE_LOCATION"],
        env.get("PIPELINE_PREFIX", ""),
        ttl=float(env.get("PIPELINE_TTL", "1.0")),
        poll_interval=0.05,
        member_ttl=float(env["PIPELINE_MEMBER_TTL"]) if "PIPELINE_MEMBER_TTL" in env else None,
    )


def workflow() -> Workflow[Job, Status]:
    """The CLI target: the pipeline on the environment's backend, with this process's effects.

    The adapters stay open until the process exits (``statestream worker`` stops the workflow,
    and the process ends right after).
    """
    return build(
        adapters_from_env(),
        effects=Effects(os.environ["PIPELINE_EFFECTS"]),
        step_delay=float(os.environ.get("PIPELINE_STEP_DELAY", "0.002")),
    )
