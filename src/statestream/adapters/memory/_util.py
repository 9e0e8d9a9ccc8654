"""Checks shared by the memory adapters."""

from __future__ import annotations

from datetime import datetime

from ... import errors

__all__ = ["_check_window", "_require_aware"]


def _check_window(offset: int, limit: int) -> None:
    if offset < 0:
        raise errors.InvalidInput(f"offset must not be negative, got {offset}")
    if limit < 0:
        raise errors.InvalidInput(f"limit must not be negative, got {limit}")


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise errors.InvalidInput(f"{name} must be timezone-aware, got naive {value!r}")
