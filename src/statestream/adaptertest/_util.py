"""Helpers shared by the contract suites."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

#: How far apart two timestamps may be and still count as equal: backends may truncate them.
TOLERANCE = timedelta(seconds=1)


def unique(prefix: str) -> str:
    """A name no other test (or run of the suite) uses, so shared backends need no cleanup."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> datetime:
    """The current time in UTC, truncated to whole seconds so that no backend rounds it."""
    return datetime.now(UTC).replace(microsecond=0)


def assert_close(actual: datetime, expected: datetime, what: str) -> None:
    assert actual.tzinfo is not None, f"{what} came back naive: {actual!r}"
    assert abs(actual - expected) <= TOLERANCE, f"{what}: {actual} != {expected}"
