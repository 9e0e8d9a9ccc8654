"""KafkaReceiver: one consumer on a shard's partitions, polled on a thread of its own.

The receiver assigns itself its partitions (no group membership, so no rebalance protocol and no
join delay): the engine's role leases already give each consumer name to one process at a time.
The consumer group of the name only stores the committed offsets.

Acknowledgements follow the receiver's delivery order, as the contract says: ``ack(e)`` means
that every event this receiver returned up to ``e`` is handled, so it commits, for each partition,
the offset after the last of those events in that partition, and never moves an offset back. An
ack of an event this receiver did not return commits that event's own partition only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from ..._core.records import Event, shard_of
from ...errors import AdapterConnectionError, AdapterError
from . import _message, _wire

if TYPE_CHECKING:
    from ._streamer import KafkaStreamer

__all__ = ["KafkaReceiver"]

log = logging.getLogger("statestream.kafka")

#: Events buffered per receiver before its thread stops fetching until ``recv`` drains them.
_BUFFER = 5_000
#: How long the thread waits for a record in one poll (also how long a commit or ``close``
#: may wait for the thread: confluent-kafka serialises calls on a consumer, so a commit from
#: another thread would wait for the poll anyway, and the thread makes every call itself).
_POLL = 0.05
#: The same fetch error is logged at most once in this many seconds.
_WARN_EVERY = 60.0
#: Fetch errors that mean the topic is gone.
_MISSING = (
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
)
#: How long opening a ``from_latest`` receiver waits to find the true end of a partition.
_PROBE = 5.0


class KafkaReceiver:
    """Reads a topic's partitions under one consumer name; see the module docs."""

    def __init__(
        self,
        streamer: KafkaStreamer,
        topic: str,
        kafka_topic: str,
        group: str,
        partitions: list[int],
        config: dict[str, Any],
        *,
        keep: tuple[int, int] | None,
        ephemeral: bool,
        external: bool = False,
    ) -> None:
        self._streamer = streamer
        self.topic = topic
        self._kafka_topic = kafka_topic
        self.group = group
        self.partitions = partitions
        self._keep = keep
        self._ephemeral = ephemeral
        self._external = external  # any producer's records, as KafkaEvents (KafkaSource)
        if ephemeral:
            import uuid

            config = {**config, "group.id": f"{group}.ephemeral.{uuid.uuid4().hex}"}
        else:
            config = {**config, "group.id": group}
        self._config = {**config, "on_commit": self._on_commit}
        self._commits: deque[asyncio.Future[None]] = deque()  # asynchronous commits in flight
        self._consumer: Consumer | None = None
        self._is_new = True
        self._buffer: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._room = threading.Event()
        self._room.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._calls: queue.SimpleQueue[tuple[Any, asyncio.Future[Any]]] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._delivered: deque[tuple[int, int, int]] = deque()  # (event ID, partition, offset)
        self._pending: set[int] = set()
        self._committed: dict[int, int] = {}
        #: Per partition, the offset of the next record this receiver has not delivered yet,
        #: when known: records handed over by this process's producer (``offer``) are taken
        #: only at this offset, so that nothing is skipped, and fetched copies are dropped.
        self._next: dict[int, int] = {}
        self._ack_lock = asyncio.Lock()
        self._closed = False
        self._warned: dict[int, float] = {}  # error code -> when it was last logged
        #: Records on the topic that were not statestream events (skipped).
        self.skipped = 0

    @property
    def is_new(self) -> bool:
        return self._is_new

    def __repr__(self) -> str:
        return f"KafkaReceiver({self.topic!r}, {self.group!r}, partitions={self.partitions})"

    # ------------------------------------------------------------------ opening

    async def open(self, *, from_latest: bool) -> None:
        streamer = self._streamer
        self._loop = asyncio.get_running_loop()
        try:
            self._consumer = await streamer._run(Consumer, self._config)
        except KafkaException as exc:
            raise AdapterError(f"invalid Kafka consumer settings: {exc}") from exc
        tps = [TopicPartition(self._kafka_topic, p) for p in self.partitions]
        timeout = streamer.connect_timeout
        consumer = self._consumer
        if self._ephemeral or not tps:
            committed: dict[int, int] = {}
        else:
            try:
                got = await streamer._run(lambda: consumer.committed(tps, timeout=timeout))
            except KafkaException as exc:
                raise self._failed("reading the committed offsets", exc) from exc
            committed = {tp.partition: tp.offset for tp in got if tp.offset >= 0}
        self._is_new = not committed
        self._committed = dict(committed)
        start: dict[int, int] = {}
        if self._is_new and from_latest:
            start = await streamer._run(self._find_ends, timeout)
            if not self._ephemeral:
                await self._commit(start)
        else:
            start = {p: committed.get(p, OFFSET_BEGINNING) for p in self.partitions}
        self._next = {p: o for p, o in start.items() if o >= 0}
        consumer.assign([TopicPartition(self._kafka_topic, p, o) for p, o in start.items()])
        self._thread = threading.Thread(
            target=self._fetch, name=f"statestream-kafka-{self.topic}", daemon=True
        )
        self._thread.start()

    def _failed(self, what: str, exc: BaseException) -> AdapterError:
        servers = self._streamer.bootstrap_servers
        message = (
            f"{what} of consumer {self.group!r} on Kafka topic {self._kafka_topic!r} at "
            f"{servers} failed: {exc}"
        )
        if isinstance(exc, KafkaException) and exc.args[0].code() in (
            KafkaError._TRANSPORT,
            KafkaError._TIMED_OUT,
            KafkaError._ALL_BROKERS_DOWN,
        ):
            return AdapterConnectionError(message + "; check that the brokers are up")
        return AdapterError(message)

    def _find_ends(self, timeout: float) -> dict[int, int]:
        """The offset after the last record of each partition (on this thread: it blocks).

        The broker's high watermark alone is not trusted: some brokers (Tansu 0.6) report the
        base offset of the last batch plus one, leaving the rest of that batch behind it. So
        the consumer reads from the last record the watermark admits up to the end of the
        partition, whose offset the fetch reports correctly.
        """
        consumer = self._consumer
        assert consumer is not None
        ends: dict[int, int] = {}
        probe: list[TopicPartition] = []
        for p in self.partitions:
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(self._kafka_topic, p), timeout=timeout, cached=False
                )
            except KafkaException as exc:
                raise self._failed("finding the end", exc) from exc
            ends[p] = high
            if high > 0:
                probe.append(TopicPartition(self._kafka_topic, p, high - 1))
        if not probe:
            return ends
        consumer.assign(probe)
        waiting = {tp.partition for tp in probe}
        deadline = time.monotonic() + max(timeout, _PROBE)
        while waiting and time.monotonic() < deadline:
            msg = consumer.poll(_POLL)
            if msg is None:
                continue
            err = msg.error()
            partition, offset = msg.partition(), msg.offset()
            if partition is None or offset is None:
                continue
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    ends[partition] = max(ends[partition], offset)
                    waiting.discard(partition)
                continue
            ends[partition] = max(ends[partition], offset + 1)
        if waiting:
            log.warning(
                "statestream: could not confirm the end of %s partitions %s; starting at the "
                "high watermark (a few old events may be delivered again)",
                self._kafka_topic,
                sorted(waiting),
            )
        consumer.unassign()
        return ends

    # ------------------------------------------------------------------ the fetching thread

    def _fetch(self) -> None:
        consumer = self._consumer
        loop = self._loop
        assert consumer is not None
        assert loop is not None
        try:
            while not self._stop.is_set():
                self._serve(loop)
                if not self._room.wait(_POLL):
                    continue
                first = consumer.poll(_POLL)
                if first is None:
                    continue
                batch = [first, *consumer.consume(499, 0)]
                events, skipped = self._decode(batch)
                if events or skipped:
                    loop.call_soon_threadsafe(self._deliver, events, skipped)
        except Exception as exc:
            if not self._stop.is_set():
                self._error = exc
                loop.call_soon_threadsafe(self._ready.set)
        finally:
            self._serve(loop)
            try:
                consumer.close()
            except Exception:
                log.debug("statestream: closing a Kafka consumer failed", exc_info=True)

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make the calls the event loop asked for (on the fetching thread)."""
        calls = self._calls
        while not calls.empty():
            fn, future = calls.get_nowait()
            try:
                result = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    async def _call(self, fn: Any) -> Any:
        """Run ``fn`` (a blocking consumer call) on the fetching thread, or on the streamer's
        threads before it starts."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return await self._streamer._run(fn)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.put((fn, future))
        return await future

    def _decode(self, batch: list[Any]) -> tuple[list[Event], int]:
        events: list[Event] = []
        skipped = 0
        keep = self._keep
        for msg in batch:
            err = msg.error()
            if err is not None:
                code = err.code()
                if code != KafkaError._PARTITION_EOF:
                    at = time.monotonic()
                    if at - self._warned.get(code, -_WARN_EVERY) >= _WARN_EVERY:
                        self._warned[code] = at  # once a minute per kind: no flood of logs
                        if code in _MISSING:
                            log.error(
                                "statestream: Kafka topic %s does not exist at %s (deleted?): "
                                "consumer %s keeps retrying and reads it again once it is "
                                "created (%s)",
                                self._kafka_topic,
                                self._streamer.bootstrap_servers,
                                self.group,
                                err,
                            )
                        else:
                            log.warning(
                                "statestream: Kafka consumer %s on %s: %s (it keeps retrying)",
                                self.group,
                                self._kafka_topic,
                                err,
                            )
                continue
            if self._external:
                events.append(_message.external(msg))
                continue
            if msg.offset() < self._next.get(msg.partition(), -1):
                # Handed over already (``offer``): no decoding, no wake-up of the loop. The
                # offsets only grow, so a stale read here only lets ``_deliver`` drop it.
                continue
            event = _wire.decode(
                self.topic, msg.partition(), msg.offset(), msg.key(), msg.value(), msg.headers()
            )
            if event is None:
                skipped += 1
                if self.skipped + skipped <= 3:
                    log.warning(
                        "statestream: skipped a record that is not a statestream event on Kafka "
                        "topic %s (partition %s, offset %s)",
                        self._kafka_topic,
                        msg.partition(),
                        msg.offset(),
                    )
                continue
            if keep is not None and shard_of(event.key, keep[1]) != keep[0]:
                continue  # another shard's event in a partition this shard shares
            events.append(event)
        return events, skipped

    def _deliver(self, events: list[Event], skipped: int) -> None:
        if skipped:
            self.skipped += skipped
            self._streamer.skipped += skipped
        if events and not self._external:
            fresh = []
            following = self._next
            for event in events:
                partition, offset = _wire.position(event.id)
                if offset < following.get(partition, -1):
                    continue  # handed over by this process's producer already (offer)
                following[partition] = offset + 1
                fresh.append(event)
            events = fresh
        if events:
            self._buffer.extend(events)
            self._ready.set()
            if len(self._buffer) >= _BUFFER:
                self._room.clear()

    @property
    def takes_offers(self) -> bool:
        thread = self._thread
        return (
            not self._external
            and not self._closed
            and self._error is None
            and thread is not None
            and self._room.is_set()
        )

    def offer(self, events: list[tuple[int, int, Event]]) -> None:
        """Records this process's producer just wrote to the topic, by partition and offset
        (on the event loop). Each one that is the next record of one of this receiver's
        partitions is delivered now, instead of after the next fetch; the fetched copy is then
        dropped. The others (a gap: records of other processes not fetched yet) come by fetch.
        """
        following = self._next
        keep = self._keep
        took = False
        for partition, offset, event in events:
            if following.get(partition) != offset or partition not in self.partitions:
                continue
            following[partition] = offset + 1
            if keep is not None and shard_of(event.key, keep[1]) != keep[0]:
                continue
            self._buffer.append(event)
            took = True
        if took:
            self._ready.set()
            if len(self._buffer) >= _BUFFER:
                self._room.clear()

    # ------------------------------------------------------------------ EventReceiver

    async def recv(self, limit: int = 100) -> list[Event]:
        buffer = self._buffer
        while not buffer:
            if self._error is not None:
                raise self._failed("fetching", self._error)
            if self._closed:
                raise AdapterError(f"{self!r} is closed")
            self._ready.clear()
            await self._ready.wait()
        count = min(max(limit, 1), len(buffer))
        events = [buffer.popleft() for _ in range(count)]
        if not self._ephemeral:
            for event in events:
                partition, offset = _wire.position(event.id)
                self._delivered.append((event.id, partition, offset))
                self._pending.add(event.id)
        if len(buffer) < _BUFFER // 2:
            self._room.set()
        return events

    async def ack(self, event: Event) -> None:
        if self._ephemeral or self._closed:
            return
        upto: dict[int, int] = {}
        if event.id in self._pending:
            delivered = self._delivered
            while delivered:
                event_id, partition, offset = delivered.popleft()
                self._pending.discard(event_id)
                upto[partition] = offset + 1
                if event_id == event.id:
                    break
        else:
            partition, offset = _wire.position(event.id)
            if partition in self.partitions:
                upto[partition] = offset + 1
        async with self._ack_lock:
            await self._commit(upto)

    async def _commit(self, upto: dict[int, int]) -> None:
        """Commit the offsets of ``upto`` that move a committed offset forward."""
        forward = {p: o for p, o in upto.items() if o > self._committed.get(p, -1)}
        if not forward:
            return
        consumer = self._consumer
        assert consumer is not None
        tps = [TopicPartition(self._kafka_topic, p, o) for p, o in forward.items()]
        thread = self._thread
        try:
            if thread is None or not thread.is_alive():  # opening: nothing polls for results
                await self._call(lambda: consumer.commit(offsets=tps, asynchronous=False))
            else:
                await self._commit_async(consumer, tps)
        except KafkaException as exc:
            raise self._failed("committing offsets", exc) from exc
        for p, o in forward.items():
            self._committed[p] = max(o, self._committed.get(p, -1))

    async def _commit_async(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        """Commit on the fetching thread without blocking it, and wait for the broker's answer
        (its ``on_commit`` report, in order) at most ``connect_timeout``: a commit to a broker
        that is down must not stop the fetching, nor hold the ack for ever."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def start() -> None:
            consumer.commit(offsets=tps, asynchronous=True)
            self._commits.append(future)  # reported by _on_commit, on this same thread

        await self._call(start)
        timeout = self._streamer.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(future)
        except TimeoutError:
            raise AdapterConnectionError(
                f"committing offsets of consumer {self.group!r} on Kafka topic "
                f"{self._kafka_topic!r} at {self._streamer.bootstrap_servers} got no answer "
                f"within {timeout:g}s; check that the brokers are up"
            ) from None

    def _on_commit(self, err: KafkaError | None, _partitions: object) -> None:
        """The broker answered the oldest commit in flight (on the fetching thread)."""
        if not self._commits:
            return
        future = self._commits.popleft()
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        ok = err is None or err.code() == KafkaError._NO_OFFSET
        error = None if ok else KafkaException(err)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(_settle, future, None, error)

    async def close(self) -> None:
        if self._closed:
            return
        async with self._ack_lock:  # no commit may be under way when the consumer closes
            self._closed = True
        self._stop.set()
        self._room.set()
        self._ready.set()
        thread = self._thread
        if thread is not None:
            await self._streamer._run(thread.join)
        elif self._consumer is not None:
            await self._streamer._run(self._consumer.close)
        self._streamer._forget_receiver(self)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
