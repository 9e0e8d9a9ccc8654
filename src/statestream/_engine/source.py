"""Connector sources over the library's own event streamers."""

from __future__ import annotations

from .._core.protocols import EventReceiver, EventStreamer

__all__ = ["StreamSource"]


class StreamSource:
    """A connector source reading one topic of any :class:`~statestream.EventStreamer`.

    With the in-memory streamer it is the test double for outside streams; with the Kafka, Redis
    or SQL streamers it reads their topics. Each connector shard reads under its own consumer name
    (its role), starting at the oldest retained event, or at the newest with ``from_latest``.
    """

    def __init__(
        self,
        streamer: EventStreamer,
        topic: str,
        *,
        from_latest: bool = False,
        poll_interval: float = 0.5,
    ) -> None:
        self.streamer = streamer
        self.topic = topic
        self.from_latest = from_latest
        self.poll_interval = poll_interval

    async def receiver(self, name: str) -> EventReceiver:
        return await self.streamer.receiver(
            self.topic, name, from_latest=self.from_latest, poll_interval=self.poll_interval
        )
