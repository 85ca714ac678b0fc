"""The live service publishing to the real local broker: what consumers of the topic see."""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka_fixtures import KafkaBroker, unique_topic

from collector.config import KafkaConfig
from collector.io.spool import Spool
from collector.records import decode
from tests.service_harness import Collector, tcp, udp


def _flood(c: Collector, count: int) -> int:
    """``count`` datagrams of many flows, from sender sockets that reach every worker."""
    return c.send_spread(
        [
            (tcp if i % 3 else udp)(21, "10.5.0.1", f"10.6.{i % 200}.1", 1024 + i % 500, 443)
            for i in range(count)
        ]
    )


def _spooled_packets(spool_dir: Path) -> dict[str, list[int]]:
    """Read every spool the collector left (one directory per worker slot, each with its LOCK):
    the packets of the records in it, by exporter, in spool order."""
    config = KafkaConfig()
    out: dict[str, list[int]] = defaultdict(list)
    for lock in sorted(spool_dir.rglob("LOCK")):
        spool = Spool(
            lock.parent, max_bytes=config.spool_max_bytes, segment_bytes=config.spool_segment_bytes
        )
        spool.open()
        try:
            while (chunk := spool.read(1000)) is not None:
                for value in chunk.values:
                    record = decode(value)
                    out[record.exporter].append(record.packets)
        finally:
            spool.close()
    return dict(out)


async def _read_packets(
    bootstrap: str, topic: str, packets: int, deadline_s: float = 90
) -> list[object]:
    """Every message of the topic, read until the records account for ``packets`` packets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        deadline = time.monotonic() + deadline_s
        partitions: set[int] | None = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
        assert partitions, f"topic {topic} never appeared"
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        messages: list[object] = []
        unique: dict[tuple[str, int], int] = {}
        while sum(unique.values()) < packets and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for m in batch:
                    messages.append(m)
                    r = decode(m.value)
                    unique[r.exporter, r.sequence] = r.packets
        assert sum(unique.values()) == packets
        return messages
    finally:
        await consumer.stop()


def _check_gap_free(messages: list[object]) -> dict[str, int]:
    by_exporter: dict[str, set[int]] = defaultdict(set)
    for m in messages:
        record = decode(m.value)  # type: ignore[attr-defined]
        assert m.key == record.flow_id.encode()  # type: ignore[attr-defined]
        by_exporter[record.exporter].add(record.sequence)
    for exporter, seqs in by_exporter.items():
        assert seqs == set(range(1, max(seqs) + 1)), exporter
    return {e: len(s) for e, s in by_exporter.items()}


@pytest.mark.kafka
async def test_every_packet_reaches_the_topic_with_gap_free_sequences(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    topic = unique_topic("service")
    env = {"COLLECTOR_KAFKA_SPOOL_DIR": str(tmp_path / "spool")}
    sink = f"kafka://{kafka_broker.bootstrap}/{topic}"
    with Collector(tmp_path, workers=2, sink=sink, env=env) as c:
        sent = _flood(c, 4000)
        c.wait_received(sent)
        assert c.metric('collector_filter_packets_total{action="accept"}') == sent
        assert c.stop() == 0
        assert "Traceback" not in c.logs()
    messages = await _read_packets(kafka_broker.bootstrap, topic, sent)
    counts = _check_gap_free(messages)
    assert len(counts) == 2  # both workers published


@pytest.mark.kafka
async def test_records_spooled_while_the_broker_is_unreachable_are_delivered_by_the_next_start(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    # the first run's broker address is a closed port: everything goes to the spool, and the
    # target stays healthy (degraded) because nothing is lost while the spool has room
    topic = unique_topic("spooled")
    spool = tmp_path / "spool"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    env = {"COLLECTOR_KAFKA_SPOOL_DIR": str(spool), "COLLECTOR_KAFKA_FLUSH_TIMEOUT_S": "2"}
    first = tmp_path / "first"
    first.mkdir()
    with Collector(first, sink=f"kafka://{dead}/{topic}", env=env) as c:
        sent = _flood(c, 500)
        c.wait_received(sent)
        code, body = c.health()
        assert c.stop() == 0
    assert code == 200
    assert body["status"] == "degraded"
    spooled = _spooled_packets(spool)
    assert sum(sum(packets) for packets in spooled.values()) == sent  # records, not the LOCK file
    second = tmp_path / "second"
    second.mkdir()
    with Collector(second, sink=f"kafka://{kafka_broker.bootstrap}/{topic}", env=env) as c:
        messages = await _read_packets(kafka_broker.bootstrap, topic, sent)
        assert c.stop() == 0
    _check_gap_free(messages)
