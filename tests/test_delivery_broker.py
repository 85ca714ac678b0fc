"""Delivery when the broker refuses records: batches above the topic's max.message.bytes, a
single record larger than any batch may be, permanent errors (dead-lettered) and a topic deleted
mid-run, against the real local broker. Every test checks the books: emitted == delivered +
failed + dead-lettered + dropped (each counted and logged)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from kafka_fixtures import (
    KafkaBroker,
    make_records,
    read_topic,
    unique_topic,
    unused_port,
    wait_until,
)

from collector.config import KafkaConfig, RecordsConfig
from collector.io.kafka import KafkaSink
from collector.io.kafka.sink import CYCLE_RECORDS
from collector.io.spool import Spool

JSON = RecordsConfig()


async def admin_for(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    return admin


def in_order(messages: list[Any], upto: int) -> list[int]:
    """Sequences up to ``upto`` per partition only grow; returns every sequence read."""
    last: dict[int, int] = {}
    out = []
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        sequence = int(dict(message.headers)["sequence"])
        if sequence <= upto:
            assert sequence > last.get(message.partition, 0)
            last[message.partition] = sequence
        out.append(sequence)
    return out


@pytest.mark.kafka
async def test_batches_stay_under_max_message_bytes_and_refused_ones_are_split(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The topic takes batches of at most 20000 bytes: the sink reads that at start and caps its
    batches below it (nothing refused); one record of 30 kB can never pass: it is dropped before
    sending, counted as failed and logged with its size. Then the limit drops to 6000 bytes behind
    the sink's back: refused batches are split in halves until they pass; nothing else is lost."""
    topic = unique_topic("oversized")
    exporter = "big/w0/1"
    admin = await admin_for(kafka_broker.bootstrap)
    try:
        await admin.create_topics(
            [NewTopic(topic, 2, 1, topic_configs={"max.message.bytes": "20000"})]
        )
        config = KafkaConfig(
            spool_dir=str(tmp_path / "spool"),
            compression="none",  # the limit applies to the bytes on the wire
            max_batch_bytes=1 << 20,
            linger_ms=5,
        )
        sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
        await sink.start()
        assert sink.batch_bytes < 20000
        records = make_records(3001, exporter)
        records[1500] = msgspec.structs.replace(records[1500], session="x" * 30000)
        states: list[str] = []

        def polled() -> bool:  # what /healthz would say, every 50 ms (wait_until's period)
            status = sink.status()
            states.append(status.state)
            return status.delivered + status.failed == 3001

        with caplog.at_level(logging.ERROR, logger="collector.io.kafka.sink"):
            sink.submit(records)
            await wait_until(polled, 120, "3001 records")
        first = sink.status()
        assert (first.delivered, first.failed, first.dropped, first.retried) == (3000, 1, 0, 0)
        # one bad record is a data problem, not this instance's: health never says "failed"
        # (503 takes the target out of the NLB, and a fleet where every target saw such a
        # record would fail open), it says what happened as "degraded" for a while
        states.append(first.state)
        assert "failed" not in states
        assert first.state == "degraded"
        assert "larger than the topic takes" in first.detail
        refused = [
            r.getMessage() for r in caplog.records if "dropped a record of" in r.getMessage()
        ]
        assert len(refused) == 1
        size = int(refused[0].split("dropped a record of ")[1].split(" bytes")[0])
        assert size > 30000

        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": "6000"})]
        )
        await asyncio.sleep(1.0)  # let the broker apply it
        sink.submit(make_records(2000, exporter, start=3002))
        await wait_until(lambda: sink.status().delivered == 5000, 180, "5000 delivered")
        await sink.flush(30)
        status = sink.status()
        await sink.close()
    finally:
        await admin.close()
    assert status.retried > first.retried  # refused batches went out again, in halves
    assert (status.delivered, status.failed, status.dropped, status.spool_bytes) == (5000, 1, 0, 0)
    messages = await read_topic(kafka_broker.bootstrap, topic, 5000)
    # a batch refused as too large can be overtaken by the partition's next batch, already in the
    # producer's hands (README, "Delivery"): order is checked where the limit was known
    sequences = in_order(messages, upto=3001)
    assert sorted(sequences) == [s for s in range(1, 5002) if s != 1501]


def dead_letters(directory: Path) -> list[int]:
    """Sequences kept in a dead-letter spool directory, read with the spool's own reader."""
    spool = Spool(directory, max_bytes=1 << 30, segment_bytes=1 << 20)
    spool.open()
    out: list[int] = []
    while (chunk := spool.read(10_000)) is not None:
        out.extend(chunk.sequences)
    spool.close()
    return out


@pytest.mark.kafka
async def test_records_refused_for_good_are_dead_lettered_and_the_rest_keep_flowing(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The topic refuses records whose timestamp is more than 4 s old (a permanent error: sending
    them again cannot help). Records spooled 5 s before the broker was reachable carry their
    spooling time and are refused: they go to the dead-letter directory, counted, logged once,
    while the records submitted meanwhile are delivered instead of waiting behind them forever."""
    topic = unique_topic("dead-letter")
    exporter = "dead/w0/1"
    admin = await admin_for(kafka_broker.bootstrap)
    try:
        await admin.create_topics(
            [NewTopic(topic, 2, 1, topic_configs={"message.timestamp.before.max.ms": "4000"})]
        )
    finally:
        await admin.close()
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5, connect_timeout_s=5.0)
    away = KafkaSink([f"127.0.0.1:{unused_port()}"], topic, config, JSON)
    await away.start()
    away.submit(make_records(1000, exporter))
    await away.flush(5)
    await away.close()
    await asyncio.sleep(5.0)  # the spooled records are now older than the topic takes

    sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
    with caplog.at_level(logging.ERROR, logger="collector.io.kafka.sink"):
        await sink.start()
        sink.submit(make_records(1000, exporter, start=1001))
        await wait_until(
            lambda: sink.status().delivered + sink.status().dead_lettered >= 2000,
            120,
            "every record delivered or dead-lettered",
        )
    status = sink.status()
    assert status.state == "degraded"  # records refused for what they are: a data problem
    assert "dead-lettered" in status.detail
    await sink.flush(30)
    await sink.close()
    # the books: emitted == delivered + dead-lettered (+ dropped, failed: none)
    assert (status.delivered, status.dead_lettered, status.dropped, status.failed) == (
        1000,
        1000,
        0,
        0,
    )
    logged = [r for r in caplog.records if "refuses records for good" in r.getMessage()]
    assert len(logged) == 1
    assert "InvalidTimestamp" in logged[0].getMessage()
    slot = next((tmp_path / "spool" / topic).iterdir())
    assert sorted(dead_letters(slot / "dead-letter")) == list(range(1, 1001))
    messages = await read_topic(kafka_broker.bootstrap, topic, 1000)
    assert sorted(in_order(messages, upto=2000)) == list(range(1001, 2001))


@pytest.mark.kafka
async def test_a_topic_deleted_mid_run_is_recreated_and_delivery_resumes(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    """Someone deletes the topic while records flow: aiokafka would retry into the void forever;
    the sink notices, recreates the topic (kafka.create_topic is on) and delivers everything that
    was not acknowledged before the deletion: the new topic holds a gap-free tail of sequences."""
    topic = unique_topic("deleted")
    exporter = "deleted/w0/1"
    config = KafkaConfig(
        spool_dir=str(tmp_path / "spool"),
        linger_ms=5,
        connect_timeout_s=5.0,
        request_timeout_ms=5000,
        topic_partitions=2,
    )
    sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
    await sink.start()
    emitted = 0
    flooding = True

    async def flood() -> None:
        nonlocal emitted
        while flooding:
            sink.submit(make_records(50, exporter, start=emitted + 1))
            emitted += 50
            await asyncio.sleep(0.02)

    flood_task = asyncio.create_task(flood())
    try:
        await wait_until(lambda: sink.status().delivered > 2000, 60, "first deliveries")
        admin = await admin_for(kafka_broker.bootstrap)
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
        acked_before = sink.status().delivered  # acknowledged into the old topic, at most
        await wait_until(
            lambda: sink.status().delivered > acked_before + 2000, 120, "delivery to resume"
        )
    finally:
        flooding = False
        await flood_task
    await wait_until(lambda: sink.status().queue_records == 0, 120, "memory drained")
    await sink.flush(30)
    status = sink.status()
    await sink.close()
    assert (status.dropped, status.failed, status.dead_lettered, status.spool_bytes) == (0, 0, 0, 0)
    assert status.topic_recreations == 1  # logged, and counted for /metrics
    messages = await read_topic(kafka_broker.bootstrap, topic, emitted - acked_before)
    sequences = set(in_order(messages, upto=emitted))
    tail = set(range(min(sequences), emitted + 1))
    assert sequences == tail  # nothing missing after the first record of the new topic
    # an acknowledgement already on its way when the deletion returned is the only slack: at
    # most the batches of one pump cycle
    assert min(sequences) <= acked_before + 1 + CYCLE_RECORDS
