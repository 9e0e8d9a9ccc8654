"""A topic deleted under a running receiver, then created again: ``python kafka_topic_deleted.py
BOOTSTRAP`` prints RECOVERED once the receiver reads the recreated topic.

Run in a process of its own by ``test_kafka_faults.py``: librdkafka 2.16 crashes (SIGSEGV in its
metadata cache) when Tansu 0.6 answers a fetch for a deleted topic, and that must not take the
test session with it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from datetime import UTC, datetime

from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from statestream._core.records import Message
from statestream.adapters.kafka import KafkaStreamer
from statestream.errors import AdapterError


async def main(bootstrap: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    streamer = KafkaStreamer(
        bootstrap,
        partitions=2,
        topic_prefix=f"d_{uuid.uuid4().hex[:8]}_",
        connect_timeout=5.0,
        producer_config={"message.timeout.ms": 5000},
    )
    at = datetime.now(UTC)
    try:
        await streamer.publish("t", [Message(f"k{i}", 1, {}, at) for i in range(3)])
        receiver = await streamer.receiver("t", "reader")
        events: list[object] = []
        async with asyncio.timeout(20):
            while len(events) < 3:
                events.extend(await receiver.recv())
        await receiver.ack(events[-1])  # type: ignore[arg-type]
        name = streamer.kafka_topic("t")
        admin = AdminClient({"bootstrap.servers": bootstrap})
        await asyncio.to_thread(admin.delete_topics([name])[name].result, 10)
        print("DELETED", flush=True)
        await asyncio.sleep(2)  # the receiver fetches from the missing topic meanwhile
        deadline = time.monotonic() + 30
        while True:  # the first publish may fail: the next recreates the topic
            try:
                await streamer.publish("t", [Message("after", 1, {}, at)])
                break
            except AdapterError:
                if time.monotonic() > deadline:
                    raise
        async with asyncio.timeout(30):
            got = await receiver.recv()
        assert [e.key for e in got] == ["after"], got
        print("RECOVERED", flush=True)
        await receiver.close()
    finally:
        await streamer.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
