"""The receivers open in this process, by topic, and what this process's writes do to them.

A streamer whose writes this process commits itself (SQLite, MySQL) wakes the local receivers
of a topic when it writes to it, and hands them the event it has just committed when nothing
lies between, so that they need not read the table back (:meth:`LocalReceivers.hand`); the
store asks :meth:`LocalReceivers.receiving` first, to read the topic's previous event ID only
when someone here may take the event. The rule by which a receiver takes a handed event is its
own (``_hand``): it depends on how the dialect's IDs become visible.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from ..._core.records import Event, Message

__all__ = ["LocalReceiver", "LocalReceivers"]


class _Wakeable(Protocol):
    def set(self) -> None: ...


class LocalReceiver(Protocol):
    """What :class:`LocalReceivers` needs of a receiver."""

    topic: str
    #: The table may hold events of the receiver's that were not handed to it.
    _stale: bool

    @property
    def _wake(self) -> _Wakeable: ...

    def _hand(self, event: Event, previous: int) -> None: ...


R = TypeVar("R", bound=LocalReceiver)


class LocalReceivers(Generic[R]):
    """A streamer's registry of its open receivers (a base class)."""

    def __init__(self) -> None:
        #: The open receivers, by topic (a topic without one has no entry).
        self._receivers: dict[str, set[R]] = {}

    def wake(self, topic: str) -> None:
        """Wake this process's receivers of ``topic``: new events were committed."""
        for receiver in self._receivers.get(topic, ()):
            receiver._stale = True
            receiver._wake.set()

    def receiving(self, topic: str) -> bool:
        """Whether a receiver of ``topic`` is open in this process."""
        return topic in self._receivers

    def hand(self, topic: str, event_id: int, previous: int, message: Message) -> None:
        """Hand this process's receivers of ``topic`` an event it has just committed as
        ``event_id``, ``previous`` being the ID of the topic's event before it (0: none).

        A receiver that has read or holds the events up to ``previous`` takes it without
        reading the table back (no event of the topic lies between); any other receiver is
        only woken, and reads."""
        receivers = self._receivers.get(topic)
        if not receivers:
            return
        event = Event(
            event_id,
            topic,
            message.key,
            message.type,
            message.headers,
            message.created_at,
            message.data,
        )
        for receiver in receivers:
            receiver._hand(event, previous)

    def _opened(self, receiver: R) -> None:
        self._receivers.setdefault(receiver.topic, set()).add(receiver)

    def _forget(self, receiver: R) -> None:
        receivers = self._receivers.get(receiver.topic)
        if receivers is not None:
            receivers.discard(receiver)
            if not receivers:
                del self._receivers[receiver.topic]
