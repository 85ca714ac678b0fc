"""The real local Kafka broker for tests (deploy/kafka/kafkactl), and helpers to read topics back.

``kafka_broker`` is session-scoped: it starts the broker when none runs (and stops it again at the
end), or uses the running one (``make kafka``). Tests that stop the broker start it again before
they finish. Ports follow kafkactl's environment (KAFKA_PORT, KAFKA_SASL_PORT).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fault_proxy import FaultProxy

from collector.records import FlowRecord, address_text, flow_id

ROOT = Path(__file__).resolve().parent.parent
KAFKACTL = ROOT / "deploy" / "kafka" / "kafkactl"
START_TIMEOUT_S = 900  # the first start fetches the broker's jars with Maven


@dataclass(frozen=True)
class KafkaBroker:
    """A local broker: where it listens and how to stop and start it."""

    bootstrap: str
    sasl_bootstrap: str
    sasl_user: str
    sasl_password: str
    env: tuple[tuple[str, str], ...] = ()
    """kafkactl environment of a broker other than the shared one (ports, data directory)."""

    def _kafkactl(self, command: str, timeout_s: float) -> None:
        env = {**os.environ, **dict(self.env)}
        subprocess.run([str(KAFKACTL), command], check=True, timeout=timeout_s, env=env)

    def stop(self) -> None:
        self._kafkactl("stop", 120)

    def start(self) -> None:
        self._kafkactl("start", START_TIMEOUT_S)

    def reset(self) -> None:
        """Stop and delete the data directory."""
        self._kafkactl("reset", 120)


# what unique_topic names look like: only such topics, and only those a session made, are deleted
TEST_TOPIC = re.compile(r"[a-z0-9-]+-[0-9a-f]{12}")


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for first in range(0, len(topics), 100):
            await admin.delete_topics(topics[first : first + 100])
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """The shared broker (started if it is not running, stopped again then). The test topics a
    session creates are deleted at its end: the broker's data outlives the run, and a broker
    holding thousands of old topics starts and describes new ones slowly."""
    running = subprocess.run([str(KAFKACTL), "status"], capture_output=True, check=False)
    subprocess.run([str(KAFKACTL), "start"], check=True, timeout=START_TIMEOUT_S)
    broker = KafkaBroker(
        bootstrap=f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}",
        sasl_bootstrap=f"127.0.0.1:{os.environ.get('KAFKA_SASL_PORT', '9094')}",
        sasl_user=os.environ.get("KAFKA_SASL_USER", "collector"),
        sasl_password=os.environ.get("KAFKA_SASL_PASSWORD", "collector-secret"),
    )
    try:
        before: set[str] | None = asyncio.run(_topics(broker.bootstrap))
    except Exception as exc:  # the tests say what is wrong with the broker; no cleanup then
        print(f"could not list the broker's topics: {exc!r}")
        before = None
    yield broker
    if before is not None:
        try:
            made = asyncio.run(_topics(broker.bootstrap)) - before
            garbage = sorted(t for t in made if TEST_TOPIC.fullmatch(t))
            if garbage:
                asyncio.run(_delete_topics(broker.bootstrap, garbage))
        except Exception as exc:  # cleanup is best effort: the tests have run
            print(f"could not delete the session's test topics: {exc!r}")
    if running.returncode != 0:
        subprocess.run([str(KAFKACTL), "stop"], check=False, timeout=120)


@pytest.fixture
def own_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker of the test's own (free ports, its own data directory, no SASL listener), for
    tests that stop and start it: the shared broker keeps serving every other test (and anyone
    else using it meanwhile). Deleted, data and all, at the end."""
    port = unused_port()
    broker = KafkaBroker(
        bootstrap=f"127.0.0.1:{port}",
        sasl_bootstrap="",
        sasl_user="",
        sasl_password="",
        env=(
            ("KAFKA_PORT", str(port)),
            ("KAFKA_CONTROLLER_PORT", str(unused_port())),
            ("KAFKA_SASL_PORT", "off"),
            ("KAFKA_DATA_DIR", str(tmp_path_factory.mktemp("kafka"))),
            ("KAFKA_HEAP", "384m"),
        ),
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.reset()


@pytest.fixture
def proxied_kafka_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[KafkaBroker, FaultProxy]]:
    """A broker of the test's own that advertises a fault-injecting proxy (tests/fault_proxy.py)
    as its address: every client connection, bootstrap and after, goes through the proxy, which
    the test tells to hang, delay, reset or blackhole. ``bootstrap`` is the proxy's address."""
    broker_port, proxy_port = unused_port(), unused_port()
    proxy = FaultProxy(("127.0.0.1", broker_port), port=proxy_port).start()
    broker = KafkaBroker(
        bootstrap=proxy.address,
        sasl_bootstrap="",
        sasl_user="",
        sasl_password="",
        env=(
            ("KAFKA_PORT", str(broker_port)),
            ("KAFKA_ADVERTISED_PORT", str(proxy_port)),
            ("KAFKA_CONTROLLER_PORT", str(unused_port())),
            ("KAFKA_SASL_PORT", "off"),
            ("KAFKA_DATA_DIR", str(tmp_path_factory.mktemp("kafka"))),
            ("KAFKA_HEAP", "384m"),
        ),
    )
    try:
        broker.start()
        yield broker, proxy
    finally:
        proxy.set_mode("pass")
        try:
            broker.reset()
        finally:
            proxy.stop()


async def wait_until(predicate: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``deadline_s`` (a guard
    against hanging, not an assertion about time)."""
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def unique_topic(prefix: str) -> str:
    """A topic name no earlier run used (the broker's data survives between runs)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def unused_port() -> int:
    """A loopback TCP port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def describe_topic(bootstrap: str, topic: str) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
        return dict(description)
    finally:
        await admin.close()


async def read_topic(
    bootstrap: str, topic: str, count: int, deadline_s: float = 120.0
) -> list[Any]:
    """Every message of ``topic`` from the beginning, until ``count`` arrived (or the deadline;
    the caller's assertion on the count then tells what is missing). No consumer group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap, topic, deadline_s)
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        messages: list[Any] = []
        deadline = time.monotonic() + deadline_s
        while len(messages) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for records in batch.values():
                messages.extend(records)
        # anything beyond count (duplicates) that is already there is read too
        batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
        for records in batch.values():
            messages.extend(records)
        return messages
    finally:
        await consumer.stop()


async def _partitions(bootstrap: str, topic: str, deadline_s: float) -> list[int]:
    deadline = time.monotonic() + deadline_s
    while True:
        description = await describe_topic(bootstrap, topic)
        partitions = [p["partition"] for p in description.get("partitions", [])]
        if partitions and description.get("error_code") == 0:
            return partitions
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic} has no partitions: {description}")
        await asyncio.sleep(0.1)


def make_records(count: int, exporter: str, start: int = 1) -> list[FlowRecord]:
    """``count`` records of distinct TCP flows, sequences ``start``, ``start + 1``, ..."""
    out = []
    for sequence in range(start, start + count):
        src = (0x0A000000 + sequence).to_bytes(4, "big")
        dst = bytes((172, 31, 16, 21))
        sport = 1024 + sequence % 60000
        out.append(
            FlowRecord(
                flow_id=flow_id(6, src, sport, dst, 443),
                exporter=exporter,
                sequence=sequence,
                vni=7001,
                session="web-1",
                interface_id="eni-1235b8ca123456789",
                direction="ingress",
                ip_version=4,
                protocol=6,
                src_addr=address_text(src),
                dst_addr=address_text(dst),
                src_port=sport,
                dst_port=443,
                packets=3,
                bytes=180,
                tcp_flags=0x13,
                start_ms=1_764_100_000_000 + sequence,
                end_ms=1_764_100_000_500 + sequence,
                end_reason="tcp_fin",
                vpc_id="vpc-0fedcba9876543210",
                az_id="use1-az4",
            )
        )
    return out
