"""KafkaSource: a connector (``Builder.add_connector``) on a Kafka topic anybody produces to.

>>> def translate(msg: KafkaMessage) -> Trigger[Order] | Callback | None:
...     data = json.loads(msg.value)                  # raising rejects the message
...     if data["type"] == "order.created":
...         return Trigger(data["id"], initial=Order(amount=data["amount"]))
...     if data["type"] == "order.paid":
...         return Callback(data["id"], Status.CREATED, msg.value)
...     return None                                   # not for this workflow: passed over
>>> source = KafkaSource(KafkaStreamer("kafka:9092", topic_prefix="shop."), "psp.orders", translate)
>>> b.add_connector("psp-orders", source, parallel_count=4)

The topic is read as it is: not prefixed, never created, never written to. Shard ``i`` of the
connector's ``parallel_count`` reads the partitions ``p`` with ``p % parallel_count == i`` (all the
records of one key are in one partition, so they are translated in order); the consumer group of
each shard (the streamer's ``topic_prefix`` + the shard's role) only keeps its committed offsets,
which move only up to the prefix of records handled, partition by partition. A new group starts
at the oldest retained record, or after the newest with ``from_latest=True``.

Records are translated by ``translate(message)`` (a plain or async function of the message
alone: keep input and output in the workflow, not in the translator), which returns a
:class:`~statestream.Trigger`, a :class:`~statestream.Callback`, a list of them, or None to pass
the record over (counted in :attr:`KafkaSource.ignored`). A translator that raises (the value does
not decode...) or returns anything else rejects the record: it is counted in
:attr:`KafkaSource.rejected` (and the process's ``skipped``, and reported to the observer),
logged (rate-limited) and skipped, never retried.

Delivery into the workflow is at least once: a record is redelivered after a crash, a restart or
a handover if its offset was not committed yet. The stored transitions happen once: a Trigger's
run ID is derived from the connector's name, the topic and the record's partition and offset,
and the store refuses a second run with that ID; a Callback is a compare-and-set write that a
redelivery finds already done.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException

from ..._core.actions import Callback, Trigger
from ..._core.records import Event
from ...errors import AdapterError, ConfigurationError, EventRejected, InvalidInput
from . import _wire
from ._message import KafkaEvent, KafkaMessage
from ._receiver import KafkaReceiver

if TYPE_CHECKING:
    from ._streamer import KafkaStreamer

__all__ = ["KafkaSource", "Translator"]

log = logging.getLogger("statestream.kafka")

#: ``translate(message)``: what a record means to the workflow.
Translator = Callable[[KafkaMessage], Any]


def _message_of(event: Event) -> KafkaMessage:
    if isinstance(event, KafkaEvent) and event.message is not None:
        return event.message
    # Not read by a KafkaSource (a test feeding events by hand): rebuild what the event has.
    partition, offset = _wire.position(event.id) if event.id >= 0 else (0, event.id)
    return KafkaMessage(
        event.topic,
        partition,
        offset,
        event.key.encode("utf-8", "surrogateescape"),
        event.data,
        tuple((k, v.encode()) for k, v in event.headers.items()),
        event.created_at,
    )


def _valid(result: object) -> bool:
    if isinstance(result, Trigger | Callback):
        return True
    return isinstance(result, list | tuple) and all(
        isinstance(item, Trigger | Callback) for item in result
    )


class KafkaSource:
    """A connector source reading the Kafka topic ``topic`` (see the module docs).

    Args:
        streamer: the :class:`KafkaStreamer` whose cluster settings (``bootstrap_servers``,
            ``consumer_config``, ``connect_timeout``), threads and ``topic_prefix`` (for the
            consumer groups) the source uses; it may be the workflow's own or one of its own
            for another cluster. Closing it closes the source's consumers.
        topic: the Kafka topic, exactly as named on the cluster.
        translate: ``translate(message)`` -> Trigger | Callback | list of them | None.
        from_latest: a new consumer group starts after the newest record instead of at the
            oldest retained one.

    Attributes:
        rejected: records the translator rejected (raised, or returned something else).
        ignored: records it passed over (returned None).
    """

    #: Each connector shard reads only its own partitions (see ``ConnectorSource``).
    shards_itself = True

    def __init__(
        self,
        streamer: KafkaStreamer,
        topic: str,
        translate: Translator,
        *,
        from_latest: bool = False,
    ) -> None:
        if not isinstance(topic, str) or not topic:
            raise ConfigurationError(f"KafkaSource needs a topic name, got {topic!r}")
        if not callable(translate):
            raise ConfigurationError(f"KafkaSource translate must be callable, got {translate!r}")
        self.streamer = streamer
        self.topic = topic
        self.translate = translate
        self.from_latest = from_latest
        self.rejected = 0
        self.ignored = 0

    def __repr__(self) -> str:
        return f"KafkaSource({self.topic!r}, {self.streamer.bootstrap_servers!r})"

    async def partitions(self) -> int:
        """The topic's partition count (it must exist: a source never creates its topic)."""
        streamer = self.streamer
        await streamer.connect()
        admin = streamer._admin
        assert admin is not None
        try:
            # All topics, not this one by name: asking for a missing topic by name may make
            # a broker that auto-creates topics create it.
            meta = await streamer._run(lambda: admin.list_topics(timeout=streamer.connect_timeout))
        except KafkaException as exc:
            raise streamer._unreachable(exc) from exc
        found = meta.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            raise AdapterError(
                f"Kafka topic {self.topic!r} does not exist at {streamer.bootstrap_servers} "
                f"({'no such topic' if found is None else found.error}); a KafkaSource reads "
                "the topic as it is and never creates it"
            )
        count = len(found.partitions)
        if count > _wire.MAX_PARTITIONS:
            raise ConfigurationError(
                f"Kafka topic {self.topic!r} has {count} partitions; a KafkaSource reads at "
                f"most {_wire.MAX_PARTITIONS}"
            )
        return count

    async def receiver(self, name: str, *, shard: int = 0, shards: int = 1) -> KafkaReceiver:
        """A receiver of this shard's partitions, under consumer group ``topic_prefix + name``."""
        streamer = self.streamer
        if streamer._closed:
            raise AdapterError("the KafkaStreamer of this KafkaSource is closed")
        if shards < 1 or not 0 <= shard < shards:
            raise InvalidInput(f"shard must be in [0, {shards}), got {shard} of {shards}")
        count = await self.partitions()
        mine = [p for p in range(count) if p % shards == shard]
        if not mine:
            log.warning(
                "statestream: Kafka topic %s has %d partitions, fewer than the %d shards of its "
                "connector: shard %d reads nothing (lower parallel_count)",
                self.topic,
                count,
                shards,
                shard,
            )
        receiver = KafkaReceiver(
            streamer,
            self.topic,
            self.topic,
            streamer.kafka_group(name),
            mine,
            streamer._consumer_settings(),
            keep=None,
            ephemeral=False,
            external=True,
        )
        streamer._receivers.add(receiver)
        try:
            await receiver.open(from_latest=self.from_latest)
        except BaseException:
            streamer._receivers.discard(receiver)
            await receiver.close()
            raise
        return receiver

    async def handle(self, workflow: object, event: Event) -> object:
        """The connector's handler: the translation of ``event``'s record, for the engine to
        apply (or :class:`~statestream.errors.EventRejected`)."""
        message = _message_of(event)
        try:
            result = self.translate(message)
            if inspect.isawaitable(result):
                result = await result
        except EventRejected:
            self.rejected += 1
            raise
        except Exception as exc:
            self.rejected += 1
            raise EventRejected(f"the translator raised {exc!r}") from exc
        if result is None:
            self.ignored += 1
            return None
        if not _valid(result):
            self.rejected += 1
            raise EventRejected(
                f"the translator must return a Trigger, a Callback, a list of them or None, "
                f"got {result!r}"
            )
        return result
