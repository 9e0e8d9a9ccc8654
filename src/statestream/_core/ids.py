"""Time-ordered IDs for runs and outbox events: UUIDv7 (RFC 9562) as 32 lowercase hex digits.

A random ID (UUIDv4) lands anywhere in a B-tree index, so every insert dirties a random leaf page
and the indexes of the SQL stores grow sparse; an ID that starts with its creation time goes in
at the right-hand end, like an auto-increment key, and the index stays compact. The form is the
one run IDs always had (32 hex digits, no dashes): ``uuid.UUID(hex=run_id)`` reads it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable
from time import time_ns

__all__ = ["IdFactory", "derived_id", "new_id"]

IdFactory = Callable[[], str]

_COUNTER_MAX = (1 << 42) - 1

_POOL_WORDS = 512  # random 64-bit words drawn from the OS at a time: one system call per 512 IDs

_lock = threading.Lock()
_acquire, _release = _lock.acquire, _lock.release
_last_ms = 0
_last_counter = 0
_pool = memoryview(b"").cast("Q")
_pos = _POOL_WORDS  # the first call draws the pool


def _uuid7_hex() -> str:
    """A UUIDv7 with a 42-bit counter for the IDs made in the same millisecond.

    The layout is method 1 of RFC 9562 section 6.2, as in CPython 3.14's ``uuid.uuid7``:
    48 bits of Unix time in milliseconds, the version, 12 + 30 bits of counter around the variant,
    and 32 random bits. The counter starts at a random value in each millisecond and counts up
    within it, so the IDs of one process are unique and sort in the order they were made, even
    if the clock steps back (the last millisecond is kept until the clock passes it) or the
    counter runs out (the millisecond moves on by one). The random bits come from ``os.urandom``
    in blocks: one system call per ID would cost more than all the rest.
    """
    global _last_ms, _last_counter, _pool, _pos
    ms = time_ns() // 1_000_000
    # acquire/release rather than ``with``: a third cheaper on this path, and nothing between
    # them raises but ``os.urandom``, which the ``finally`` covers.
    _acquire()
    try:
        pos = _pos
        if pos >= _POOL_WORDS:
            _pool, pos = memoryview(os.urandom(8 * _POOL_WORDS)).cast("Q"), 0
        bits = _pool[pos]
        _pos = pos + 1
        if ms > _last_ms:
            counter = bits >> 23  # 41 bits: the counter's top bit starts clear, room to count
        else:
            ms = _last_ms
            counter = _last_counter + 1
            if counter > _COUNTER_MAX:
                ms += 1
                counter = bits >> 23
        _last_ms = ms
        _last_counter = counter
    finally:
        _release()
    # 48-bit time, version 7, counter's top 12 bits | variant 0b10, its low 30 bits, 32 random.
    return (
        (
            (ms & 0xFFFF_FFFF_FFFF) << 80
            | 0x7 << 76
            | (counter >> 30) << 64
            | (0x8000_0000 | counter & 0x3FFF_FFFF) << 32
            | bits & 0xFFFF_FFFF
        )
        .to_bytes(16)
        .hex()
    )


def _forget_after_fork() -> None:
    # A forked child must neither count on from the parent's millisecond nor reuse its random
    # bytes: the two would make the same IDs.
    global _last_ms, _pos, _lock, _acquire, _release
    _last_ms, _pos, _lock = 0, _POOL_WORDS, threading.Lock()
    _acquire, _release = _lock.acquire, _lock.release


os.register_at_fork(after_in_child=_forget_after_fork)

_stdlib_uuid7: Callable[[], uuid.UUID] | None = getattr(uuid, "uuid7", None)  # Python >= 3.14


def _stdlib_uuid7_hex() -> str:  # pragma: no cover - Python >= 3.14
    assert _stdlib_uuid7 is not None
    return _stdlib_uuid7().hex


#: A new run or event ID: ``uuid.uuid7()`` where the standard library has it, else our own.
new_id: IdFactory = _uuid7_hex if _stdlib_uuid7 is None else _stdlib_uuid7_hex


def derived_id(origin: str, key: str) -> str:
    """A run ID made from ``key`` alone: the same key always gives the same ID.

    It has the form of a UUIDv7 (32 hex digits, version 7, RFC 9562 variant). Its time is that of
    ``origin`` when ``origin`` is a UUIDv7 (the run that caused this one), so that derived IDs
    land near their cause in the stores' indexes; the rest are bits of a BLAKE2b hash of ``key``.
    """
    data = key.encode("utf-8", "surrogatepass")
    digest = int.from_bytes(hashlib.blake2b(data, digest_size=10).digest())
    try:
        value = uuid.UUID(hex=origin)
        ms = value.int >> 80 if value.version == 7 else digest >> 32
    except ValueError:
        ms = digest >> 32
    rand_a = (digest >> 62) & 0xFFF
    rand_b = digest & ((1 << 62) - 1)
    return (
        ((ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)
        .to_bytes(16)
        .hex()
    )
