"""The records this process has just written, so that its consumers need not read them back.

A consumer's first move on an event is to look up the run it is about and compare versions
(the freshness check, reference §3). Most events a process handles were written by that same
process a moment earlier, so the lookup (a read of the store, on SQLite a query on the loop)
mostly returns the record the process already holds. :class:`RecentWrites` keeps those records.
"""

from __future__ import annotations

import itertools
import math
import time

from .._core.records import Record

__all__ = ["RecentWrites"]


class RecentWrites:
    """A bounded map of run ID -> the last record this process wrote for it, with its age.

    :meth:`get` answers for an event at ``version`` of a run with the cached record when it is
    newer than ``version`` (of any age: the event is superseded) or at exactly ``version`` and
    written less than :attr:`max_age` seconds ago; otherwise (not cached, older, or too old)
    with ``None``, and the caller reads the store.

    Why this keeps the guarantees, also with several processes on one store:

    * Only records whose write returned (committed) are cached, and versions are written by a
      compare-and-set, so a run's version ``v`` has exactly one content ever: a cached record at
      ``v`` is what the store holds at ``v``, and one newer than ``v`` proves the stored run is
      newer than ``v`` too (versions only grow), so skipping the event is what a store read
      would do.
    * The cached record may be stale: another process may have written ``v + 1`` since. Then
      the consumer runs the step for a superseded event and its write of ``v + 1`` fails the
      compare-and-set (``VersionConflict``, result discarded): stored state never goes wrong.
      A store read has the same race (another write landing while the step runs); the cache
      widens its window by the time from this process's write to its consumer's handling of the
      event, which is why entries older than :attr:`max_age` are not used. In practice the
      other writers of a run that this process is stepping are rare (an operator's cancel or
      pause from another process, a callback, a process that took the role over after this
      one's lease ran out, and that one is not consuming any more), so the step side effects
      that may repeat (always at least once) are not made more frequent in any way that
      matters; a step that must not run after a cancel elsewhere needs its own check anyway.
    * A record at exactly the event's version proves nothing when it was written before the
      consumer's role was taken: the role's previous holder (another process) may have handled
      that event and written ``v + 1`` since, and a consumer that takes a role over reads
      again the events its predecessor finished but could not acknowledge (those after an
      unfinished one). So a consumer passes the start of its holding as ``since`` (see
      ``Runtime.fresh_record``), and an entry older than that is looked up in the store: the
      step of an event the previous holder finished is then passed over, not run again.
    * A miss, a version mismatch or an old entry falls back to the store, so a bounded,
      forgetful cache costs only lookups, never correctness.

    The map is bounded by :attr:`limit`: past it, the older half of the entries (by first
    insertion; an update in place keeps its slot, so a busy run may be dropped early) is
    dropped: a miss, nothing more.
    """

    __slots__ = ("_records", "limit", "max_age")

    def __init__(self, limit: int = 10_000, max_age: float = 1.0) -> None:
        self.limit = limit
        self.max_age = max_age
        self._records: dict[str, tuple[Record, float]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def put(self, record: Record) -> None:
        """Remember ``record``, whose write has just committed (nothing with ``limit`` 0)."""
        if not self.limit:
            return
        records = self._records
        records[record.run_id] = (record, time.monotonic())
        if len(records) > self.limit:
            # Drop the older half at once: deleting the first entry one at a time makes a
            # dict's iteration from the start scan its deleted slots (quadratic).
            keep = self.limit // 2
            self._records = dict(itertools.islice(records.items(), len(records) - keep, None))

    def get(self, run_id: str, version: int, since: float = -math.inf) -> Record | None:
        """The cached record of ``run_id`` if it can answer for an event at ``version``; one at
        exactly ``version`` only if it was written at ``since`` (monotonic) or later."""
        entry = self._records.get(run_id)
        if entry is None:
            return None
        record, at = entry
        if record.version > version or (
            record.version == version and at >= since and time.monotonic() - at < self.max_age
        ):
            return record
        return None

    def forget(self, run_id: str) -> None:
        self._records.pop(run_id, None)

    def clear(self) -> None:
        self._records.clear()
