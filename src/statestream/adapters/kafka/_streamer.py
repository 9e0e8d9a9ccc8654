"""KafkaStreamer: events in Kafka topics, published by one idempotent, batching producer.

confluent-kafka (librdkafka) is a blocking client: nothing here calls it on the event loop in a
way that can wait. ``produce`` only enqueues (it never blocks: a full local queue is retried after
a short sleep); a thread per streamer polls the producer and hands delivery reports back to the
loop; admin calls and commits run on the streamer's own small thread pool; each receiver polls its
consumer on a thread of its own (see :mod:`._receiver`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from ..._core.records import Message, shard_of
from ...errors import AdapterConnectionError, AdapterError, ConfigurationError, InvalidInput
from . import _wire
from ._receiver import KafkaReceiver

__all__ = ["KafkaStreamer"]

log = logging.getLogger("statestream.kafka")

#: Producer settings: idempotent (no duplicates or reordering from its own retries), every
#: in-sync replica acknowledges, and batches of up to 1 MB collected for at most 1 ms (2 ms
#: doubled the latency of a run here: see bench/README.md).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 1,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "message.timeout.ms": 30_000,
    # Topics are created by the streamer, with its partition count; a broker must never
    # create one with its own default when the producer asks about a missing (deleted) one.
    "allow.auto.create.topics": False,
}

#: How long a consumer's fetch may wait on the broker for records. Kafka answers as soon as a
#: record arrives, so this only paces idle fetches: each receiver sends one per wait, and an
#: engine has a receiver per step, shard, hook and waiter (at 10 ms, idle fetches were most of
#: the broker's and much of the client's CPU). Some brokers (Tansu 0.6) hold every fetch for
#: its whole wait: there an event published by another process waits up to this long, while
#: one published by this streamer reaches its receivers here at once (see ``_hand_over``).
FETCH_WAIT_MS = 100

#: Producer errors after which the producer cannot be used again.
_FATAL = (
    KafkaError._FATAL,
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
)


class ClientLog:
    """Where librdkafka's own log lines go (its ``logger`` setting): to ``logger``, each kind of
    line (level and facility) at most once every ``every`` seconds, with a count of the ones
    left out. A broker that is down makes every client log each reconnection attempt."""

    def __init__(self, logger: logging.Logger, every: float = 30.0) -> None:
        self.logger = logger
        self.every = every
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}

    def log(self, level: int, fmt: str, *args: Any) -> None:  # on librdkafka's threads
        key = (level, str(args[0]) if args else fmt)
        now = time.monotonic()
        last, left_out = self._seen.get(key, (-self.every, 0))
        if now - last < self.every:
            self._seen[key] = (last, left_out + 1)
            return
        self._seen[key] = (now, 0)
        if left_out:
            fmt += " (and %d such lines in the last %gs)"
            args = (*args, left_out, self.every)
        self.logger.log(level, fmt, *args)


class _Batch:
    """The delivery reports of one ``publish`` call, counted down on the producer's thread."""

    __slots__ = ("error", "future", "left", "lock", "loop", "offsets")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.left = count
        self.error: KafkaError | None = None
        self.lock = threading.Lock()
        #: The offset each record was written at (by its index in the batch), when known.
        self.offsets: list[int] = [-1] * count

    def reporter(self, index: int) -> Any:
        def report(err: KafkaError | None, msg: Any) -> None:
            if err is None and msg is not None:
                offset = msg.offset()
                if offset is not None:
                    self.offsets[index] = offset
            self.report(err, msg)

        return report

    def report(self, err: KafkaError | None, _msg: object) -> None:  # on the producer's thread
        with self.lock:
            if err is not None and self.error is None:
                self.error = err
            self.left -= 1
            last = self.left == 0
        if last and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class KafkaStreamer:
    """An :class:`~statestream.EventStreamer` on Kafka (any broker that speaks its protocol).

    Args:
        bootstrap_servers: ``"host:port,host:port"``.
        partitions: partitions of every topic this streamer creates. Choose a multiple of the
            largest ``parallel_count`` of the workflows on it, so that each shard reads only its
            own partitions (see the README's Kafka section).
        replication_factor: replicas of every topic it creates.
        topic_prefix: prepended to every topic and consumer group name (several deployments or
            tests on one cluster).
        producer_config, consumer_config: librdkafka settings that override the defaults
            (``{"linger.ms": 5}``, ``{"session.timeout.ms": 6000}``, security settings...).
        connect_timeout: seconds to wait for the brokers when the streamer first talks to them;
            unreachable brokers then raise :class:`~statestream.errors.AdapterConnectionError`.
        max_message_bytes: the largest record accepted by ``publish`` (the broker's
            ``message.max.bytes``, 1 MB by default): a larger one is refused before anything of
            its batch is sent.

    Topics are created when first published to or read from, with ``partitions`` partitions;
    a topic that already exists keeps its own count. Kafka has its own retention: ``prune``
    and ``forget`` do nothing.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        partitions: int = 12,
        replication_factor: int = 1,
        topic_prefix: str = "",
        producer_config: Mapping[str, Any] | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
        max_message_bytes: int = 1_000_000,
    ) -> None:
        if not bootstrap_servers:
            raise ConfigurationError("KafkaStreamer needs bootstrap_servers ('host:port,...')")
        if not 1 <= partitions <= _wire.MAX_PARTITIONS:
            raise ConfigurationError(
                f"partitions must be between 1 and {_wire.MAX_PARTITIONS}, got {partitions}"
            )
        if replication_factor < 1:
            raise ConfigurationError(f"replication_factor must be >= 1, got {replication_factor}")
        self.bootstrap_servers = bootstrap_servers
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.topic_prefix = topic_prefix
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self._common: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "logger": ClientLog(log),
        }
        self._producer_config = {
            **self._common,
            **PRODUCER_DEFAULTS,
            "message.max.bytes": max(max_message_bytes + 1024, 1_000_000),
            **(producer_config or {}),
        }
        self._consumer_config = dict(consumer_config or {})
        self._executor = ThreadPoolExecutor(16, thread_name_prefix="statestream-kafka")
        self._admin: AdminClient | None = None
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._retired: list[Producer] = []  # replaced producers with reports still to come
        self._stop = threading.Event()
        self._topics: dict[str, int] = {}  # logical topic -> partition count
        self._creating: dict[str, asyncio.Future[int]] = {}
        self._connecting: asyncio.Future[None] | None = None
        self._receivers: set[KafkaReceiver] = set()
        self._closed = False
        #: Records that were not statestream events, skipped by this streamer's receivers.
        self.skipped = 0

    def __repr__(self) -> str:
        return f"KafkaStreamer({self.bootstrap_servers!r}, partitions={self.partitions})"

    # ------------------------------------------------------------------ plumbing

    async def _run(self, fn: Any, *args: Any) -> Any:
        """Run a blocking client call on the streamer's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _unreachable(self, exc: BaseException) -> AdapterConnectionError:
        return AdapterConnectionError(
            f"cannot reach the Kafka brokers at {self.bootstrap_servers} within "
            f"{self.connect_timeout:g}s ({exc}); check bootstrap_servers and that the brokers "
            "are up and reachable from here"
        )

    async def connect(self) -> None:
        """Check that the brokers answer (done by the first publish or receiver otherwise)."""
        if self._closed:
            raise AdapterError("the KafkaStreamer is closed")
        if self._producer is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            await asyncio.shield(self._connecting)
        except BaseException:
            if self._connecting.done():
                self._connecting = None
            raise

    async def _connect(self) -> None:
        # Creating a client starts librdkafka's threads: that too is done off the loop.
        config = {**self._common, "socket.connection.setup.timeout.ms": self._timeout_ms()}
        try:
            admin: AdminClient = await self._run(AdminClient, config)
        except KafkaException as exc:
            raise ConfigurationError(f"invalid Kafka settings: {exc}") from exc
        try:
            await self._run(lambda: admin.list_topics(timeout=self.connect_timeout))
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        self._admin = admin
        try:
            producer: Producer = await self._run(Producer, self._producer_config)
        except KafkaException as exc:
            raise ConfigurationError(f"invalid Kafka producer settings: {exc}") from exc
        self._producer = producer
        self._poller = threading.Thread(
            target=self._poll_producer, name="statestream-kafka-producer", daemon=True
        )
        self._poller.start()

    def _consumer_settings(self) -> dict[str, Any]:
        """The settings of a receiver's consumer: commits only by hand, and no group
        membership (receivers assign their partitions themselves)."""
        return {
            **self._common,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": FETCH_WAIT_MS,
            "socket.connection.setup.timeout.ms": self._timeout_ms(),
            **self._consumer_config,
        }

    def _timeout_ms(self) -> int:
        return max(1000, int(self.connect_timeout * 1000))

    def _poll_producer(self) -> None:
        while not self._stop.is_set():
            try:
                for old in list(self._retired):  # replaced: deliver what they still hold
                    old.poll(0)
                    if len(old) == 0:
                        self._retired.remove(old)
                producer = self._producer
                if producer is None:
                    return
                producer.poll(0.05)
            except Exception:  # a failing callback must not end delivery reports
                log.exception("statestream: Kafka producer poll failed")

    async def _replace_producer(self, failed: Producer, err: KafkaError) -> None:
        """A fatal error (a fenced idempotent producer, after timeouts during an outage) makes
        a producer useless for good: publish with a new one from now on."""
        if self._producer is not failed or self._closed:
            return  # replaced already
        log.warning(
            "statestream: the Kafka producer for %s failed for good (%s); starting a new one",
            self.bootstrap_servers,
            err.str(),
        )
        producer: Producer = await self._run(Producer, self._producer_config)
        if self._producer is failed and not self._closed:
            self._retired.append(failed)
            self._producer = producer

    async def topic_partitions(self, topic: str) -> int:
        """The partition count of ``topic``, creating the topic if it does not exist."""
        count = self._topics.get(topic)
        if count is not None:
            return count
        await self.connect()
        pending = self._creating.get(topic)
        if pending is None:
            pending = self._creating[topic] = asyncio.ensure_future(self._create(topic))
        try:
            count = await asyncio.shield(pending)
        finally:
            if pending.done():
                self._creating.pop(topic, None)
        self._topics[topic] = count
        return count

    async def _create(self, topic: str) -> int:
        # Create first: asking the broker about a missing topic may auto-create it with the
        # broker's default partition count.
        admin = self._admin
        assert admin is not None
        name = self.kafka_topic(topic)

        def create() -> int:
            futures = admin.create_topics(
                [NewTopic(name, self.partitions, self.replication_factor)],
                request_timeout=self.connect_timeout,
            )
            try:
                futures[name].result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            meta = admin.list_topics(name, timeout=self.connect_timeout).topics[name]
            if meta.error is not None:
                raise KafkaException(meta.error)
            return len(meta.partitions)

        try:
            count: int = await self._run(create)
        except KafkaException as exc:
            raise AdapterError(
                f"cannot create or describe Kafka topic {name!r} at {self.bootstrap_servers}: {exc}"
            ) from exc
        if not 1 <= count <= _wire.MAX_PARTITIONS:
            raise ConfigurationError(
                f"Kafka topic {name!r} has {count} partitions; statestream supports 1 to "
                f"{_wire.MAX_PARTITIONS}"
            )
        return count

    def kafka_topic(self, topic: str) -> str:
        """The Kafka topic that holds the events of ``topic``."""
        return _wire.kafka_name(self.topic_prefix, topic)

    def kafka_group(self, name: str) -> str:
        """The consumer group that keeps the committed offsets of consumer ``name``."""
        return _wire.kafka_name(self.topic_prefix, name)

    # ------------------------------------------------------------------ EventStreamer

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Send ``messages`` and return once the brokers acknowledged every one of them.

        Each goes to partition ``shard_of(key, partitions)``, so a key's events stay in one
        partition in order. Records over ``max_message_bytes`` are refused (``InvalidInput``)
        before any of the batch is sent.
        """
        if self._closed:
            raise AdapterError("the KafkaStreamer is closed")
        if not messages:
            return
        count = await self.topic_partitions(topic)
        producer = self._producer
        assert producer is not None
        records = []
        for message in messages:
            key = message.key.encode("utf-8", "surrogatepass")
            value, headers = _wire.encode(message)
            size = len(key) + len(value) + sum(len(n) + len(v or b"") for n, v in headers)
            if size > self.max_message_bytes:
                raise InvalidInput(
                    f"event of key {message.key!r} for topic {topic!r} is {size} bytes, over the "
                    f"Kafka message limit of {self.max_message_bytes} bytes (max_message_bytes); "
                    "nothing of this batch was published"
                )
            records.append((key, value, headers, shard_of(message.key, count)))
        name = self.kafka_topic(topic)
        batch = _Batch(asyncio.get_running_loop(), len(records))
        for index, (key, value, headers, partition) in enumerate(records):
            while True:
                try:
                    producer.produce(
                        name,
                        value,
                        key,
                        partition,
                        on_delivery=batch.reporter(index),
                        headers=headers or None,
                    )
                    break
                except BufferError:
                    await asyncio.sleep(0.005)  # the local queue is full: let it drain
                except KafkaException as exc:  # refused locally: reported with its error
                    batch.report(exc.args[0], None)
                    break
        await batch.future
        if batch.error is not None:
            err = batch.error
            if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                raise InvalidInput(
                    f"Kafka at {self.bootstrap_servers} refused an event for topic {topic!r} as "
                    f"too large ({err.str()}); lower max_message_bytes to the broker's limit"
                )
            if err.fatal() or err.code() in _FATAL:
                await self._replace_producer(producer, err)
            if err.code() in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError._UNKNOWN_TOPIC,
                KafkaError._UNKNOWN_PARTITION,
                KafkaError._MSG_TIMED_OUT,  # perhaps a topic deleted: check it, recreate it
            ):
                self._topics.pop(topic, None)  # deleted meanwhile: the next publish recreates it
            raise AdapterError(
                f"publishing to Kafka topic {name!r} at {self.bootstrap_servers} failed: "
                f"{err.str()} (the events may have been written in part; publishing them again "
                "is harmless)"
            )
        self._hand_over(topic, records, batch.offsets)

    def _hand_over(
        self,
        topic: str,
        records: list[tuple[bytes, bytes, Any, int]],
        offsets: list[int],
    ) -> None:
        """Give the records just written to this streamer's own receivers of ``topic``.

        Tansu (and a broker under load) answers a waiting fetch only when its
        ``fetch.wait.max.ms`` runs out, so a receiver in this process would wait for its
        next fetch; each receiver takes a record at once only when it is the very next record
        of its partition (see ``KafkaReceiver.offer``), and drops the fetched copy later."""
        receivers = [r for r in self._receivers if r.topic == topic and r.takes_offers]
        if not receivers:
            return
        events = []
        for (key, value, headers, partition), offset in zip(records, offsets, strict=True):
            if offset < 0:
                continue
            event = _wire.decode(topic, partition, offset, key, value, headers)
            if event is not None:
                events.append((partition, offset, event))
        if not events:
            return
        events.sort(key=lambda e: (e[0], e[1]))
        for receiver in receivers:
            receiver.offer(events)

    async def receiver(
        self,
        topic: str,
        name: str,
        *,
        from_latest: bool = False,
        poll_interval: float = 0.5,
        shard: int = 0,
        shards: int = 1,
        ephemeral: bool = False,
    ) -> KafkaReceiver:
        """A receiver reading this shard's partitions of ``topic`` (``poll_interval`` is unused:
        the consumer's fetches wait on the broker)."""
        if self._closed:
            raise AdapterError("the KafkaStreamer is closed")
        if shards < 1 or not 0 <= shard < shards:
            raise InvalidInput(f"shard must be in [0, {shards}), got {shard} of {shards}")
        count = await self.topic_partitions(topic)
        if shards == 1:
            partitions, keep = list(range(count)), None
        elif count % shards == 0:
            partitions, keep = [p for p in range(count) if p % shards == shard], None
        else:
            log.warning(
                "statestream: topic %s has %d partitions, not a multiple of %d shards: each shard "
                "reads every partition and drops the other shards' events; create the topic "
                "with a multiple of parallel_count partitions",
                topic,
                count,
                shards,
            )
            partitions, keep = list(range(count)), (shard, shards)
        receiver = KafkaReceiver(
            self,
            topic,
            self.kafka_topic(topic),
            self.kafka_group(name),
            partitions,
            self._consumer_settings(),
            keep=keep,
            ephemeral=ephemeral,
        )
        self._receivers.add(receiver)
        try:
            await receiver.open(from_latest=from_latest or ephemeral)
        except BaseException:
            self._receivers.discard(receiver)
            await receiver.close()
            raise
        return receiver

    async def prune(self, topics: Sequence[str], before: datetime) -> int:
        """Nothing: Kafka deletes old records by the topic's own retention settings."""
        return 0

    async def forget(
        self, topic: str, keep: Collection[str], before: datetime
    ) -> builtins.list[str]:
        """Nothing: Kafka expires the offsets of idle consumer groups itself
        (``offsets.retention.minutes``)."""
        return []

    async def close(self) -> None:
        """Close every receiver, deliver what is queued, and stop the producer's thread."""
        if self._closed:
            return
        self._closed = True
        for receiver in list(self._receivers):
            await receiver.close()
        producer = self._producer
        if producer is not None:
            left = await self._run(lambda: producer.flush(self.connect_timeout))
            if left:
                log.warning("statestream: %d Kafka messages were not delivered at close", left)
        self._stop.set()
        if self._poller is not None:
            await self._run(self._poller.join)
        # Drop the clients so that librdkafka's own threads end now, not at some later GC.
        self._producer = self._admin = None
        self._executor.shutdown(wait=False)

    def _forget_receiver(self, receiver: KafkaReceiver) -> None:
        self._receivers.discard(receiver)
