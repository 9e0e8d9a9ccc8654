"""CPU time of other processes, read from ``/proc/<pid>/stat`` (Linux; read-only).

Standard library only, so that both statestream's harness and the standalone peer scripts use
it. A *process tree* is one root process and its direct children: a PostgreSQL postmaster and
its backends (one per connection, plus the checkpointer, WAL writer...), or a MariaDB server
(one process whose threads are all counted in its own ``stat``). The CPU of the tree over a
window is the sum of its members' user + system time then minus now; a member that exited in
the window was reaped by the root, so its time is in the root's ``cutime + cstime``.

It is the whole server's CPU: every session's, not only the benchmark's (other work on a shared
server shows up in it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcessTreeCpu",
    "Snapshot",
    "cpu_seconds",
    "find_process",
    "local_tcp_ports",
    "parent_of",
    "thread_cpu",
]

_PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def cpu_seconds(pid: int) -> float | None:
    """User + system time of this process (all its threads), in seconds."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK if fields else None


def find_process(*names: str) -> int | None:
    """The PID of the only process whose command name is one of ``names``, else None."""
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if comm in names:
            found.append(int(entry.name))
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True, slots=True)
class _Member:
    own: float  # utime + stime
    reaped: float  # cutime + cstime: children that exited and were waited for


Snapshot = dict[tuple[int, str], _Member]  # keyed by (pid, start time): PIDs are reused


class ProcessTreeCpu:
    """CPU seconds of the process ``root`` and its direct children, sampled at two moments."""

    def __init__(self, root: int, *, children: bool = True) -> None:
        self.root = root
        self.children = children

    def snapshot(self) -> Snapshot:
        members: Snapshot = {}
        pids = [int(e.name) for e in _PROC.iterdir() if e.name.isdigit()] if self.children else []
        for pid in [self.root, *pids]:
            fields = _stat(pid)
            if fields is None or (pid != self.root and int(fields[1]) != self.root):
                continue
            own = (int(fields[11]) + int(fields[12])) / _TICK
            reaped = (int(fields[13]) + int(fields[14])) / _TICK
            members[(pid, fields[19])] = _Member(own, reaped)
        return members

    def seconds(self, before: Snapshot, after: Snapshot) -> float:
        """CPU seconds the tree used between two snapshots.

        A member that exited in between is in the root's ``reaped`` time with its whole
        lifetime; the part it had used before the window is taken back out.
        """
        total = 0.0
        for key, now in after.items():
            then = before.get(key)
            total += now.own - (then.own if then else 0.0)
            if key[0] == self.root and then:
                total += now.reaped - then.reaped
        total -= sum(m.own for key, m in before.items() if key not in after and key[0] != self.root)
        return max(total, 0.0)


def thread_cpu(pid: int) -> dict[int, float]:
    """User + system seconds of each thread of ``pid``, by thread ID."""
    out: dict[int, float] = {}
    try:
        tids = [int(t.name) for t in (_PROC / str(pid) / "task").iterdir()]
    except OSError:
        return out
    for tid in tids:
        try:
            raw = (_PROC / str(pid) / "task" / str(tid) / "stat").read_text(encoding="ascii")
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def local_tcp_ports(pid: int) -> set[int]:
    """The local ports of the TCP sockets process ``pid`` (one of ours) has open."""
    inodes = set()
    try:
        for fd in (_PROC / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / str(pid) / "net" / table).read_text(encoding="ascii").splitlines()
        except OSError:
            continue
        for line in lines[1:]:
            cols = line.split()
            if len(cols) > 9 and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports
