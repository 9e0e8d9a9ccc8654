"""Worker subprocesses for the fault tests: ``statestream worker apps.pipeline:workflow``."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

import pytest

TESTS = Path(__file__).resolve().parent
LEASE_LOSS = re.compile(r"lost role|lease of role .* passed its deadline")


class Worker:
    """One ``statestream worker`` process on the pipeline app, its output in a log file."""

    def __init__(self, tmp_path: Path, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = tmp_path / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        full_env = dict(os.environ)
        full_env.update(env)
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "statestream",
                "worker",
                "apps.pipeline:workflow",
                "--grace",
                "5",
                "--log-level",
                "info",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=full_env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log(self, tail: int = 4000) -> str:
        return f"--- {self.name} (pid {self.pid}) log ---\n" + self.output()[-tail:]

    def lease_losses(self) -> list[str]:
        """The engine's log lines saying this worker lost a role or let its lease deadline pass
        (a stalled event loop on a loaded machine): it stopped that role's work, possibly between
        a step's side effect and its write, so another holder may run that step again."""
        return [line for line in self.output().splitlines() if LEASE_LOSS.search(line)]

    def sigkill(self) -> None:
        """SIGKILL this worker, by its PID, and reap it."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (the worker stops its workflows and exits 0) and wait for the exit code."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.sigkill()
            pytest.fail(f"{self.name} did not exit within {timeout}s of SIGTERM\n{self.log()}")

    def close(self) -> None:
        if self.alive():
            self.sigkill()
        self._log.close()


async def poll(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    workers: list[Worker],
    what: str,
    interval: float = 0.05,
) -> None:
    """Wait until ``check()``; fail early (with the logs) if a worker dies on its own."""
    deadline = time.monotonic() + timeout
    while not await check():
        for worker in workers:
            if not worker.alive():
                pytest.fail(f"{worker.name} exited ({worker.proc.returncode})\n{worker.log()}")
        if time.monotonic() > deadline:
            for worker in workers:  # the pipeline app dumps its asyncio tasks on SIGUSR1
                if worker.alive() and hasattr(signal, "SIGUSR1"):
                    os.kill(worker.pid, signal.SIGUSR1)
            await asyncio.sleep(1.0)
            logs = "\n".join(w.log() for w in workers)
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{logs}")
        await asyncio.sleep(interval)
