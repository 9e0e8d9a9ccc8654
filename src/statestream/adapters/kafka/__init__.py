"""Events in Kafka: :class:`KafkaStreamer` (``pip install 'statestream[kafka]'``).

>>> streamer = KafkaStreamer("kafka-1:9092,kafka-2:9092", partitions=12, replication_factor=3)
>>> wf = builder.build(streamer, PostgresRecordStore(db), PostgresRoleScheduler(db),
...                    timeout_store=PostgresTimeoutStore(db))

Records and their outbox stay in the record store (PostgreSQL, MySQL/MariaDB, SQLite: built
without ``publish_to``); the engine's outbox relay publishes each write's event to the topic of
the run's status, one topic per ``(workflow, status)``, and deletes what the brokers
acknowledged. Delivery is
at least once: a consumer commits a partition's offset only after the step's write, and only up
to the events it has finished; a redelivered event is dropped by the engine's version check.

Shards map onto partitions: an event goes to partition ``shard_of(key, partitions)`` (crc32 of
the run ID), and shard ``i`` of ``parallel_count`` reads the partitions ``p`` with
``p % parallel_count == i``, when ``partitions`` is a multiple of ``parallel_count``. Otherwise
each shard reads every partition and drops the other shards' events (correct, but the reads grow
with the shard count; a warning says so). See the README's Kafka section.

:class:`KafkaSource` reads a topic of any producer into a connector (``Builder.add_connector``),
translating each record into a Trigger or a Callback.
"""

from __future__ import annotations

from ...errors import ConfigurationError

try:
    import confluent_kafka  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigurationError(
        "the Kafka adapter needs confluent-kafka: pip install 'statestream[kafka]'"
    ) from exc

from ._message import KafkaEvent, KafkaMessage
from ._receiver import KafkaReceiver
from ._source import KafkaSource, Translator
from ._streamer import PRODUCER_DEFAULTS, KafkaStreamer

__all__ = [
    "PRODUCER_DEFAULTS",
    "KafkaEvent",
    "KafkaMessage",
    "KafkaReceiver",
    "KafkaSource",
    "KafkaStreamer",
    "Translator",
]
