"""Broker errors outside the sink's lists, injected by code into real Produce responses (the fault
proxy rewrites them, tests/fault_proxy.py), so aiokafka's own code path raises them. Whatever the
code, publishing never stops for good: after a bounded number of attempts the batch goes to the
dead-letter spool (kept, counted per error, logged once per reason) and the rest keeps flowing.
Every test checks the books: emitted == delivered + dead-lettered + dropped + failed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy
from kafka_fixtures import (
    KafkaBroker,
    make_records,
    read_topic,
    unique_topic,
    unused_port,
    wait_until,
)

from collector.config import KafkaConfig, RecordsConfig
from collector.errors import ConfigError
from collector.io.kafka import KafkaSink
from collector.io.kafka.delivery import partitions_for
from collector.io.spool import Spool

JSON = RecordsConfig()
UNKNOWN_SERVER_ERROR = -1
INVALID_TOPIC_EXCEPTION = 17
UNSUPPORTED_VERSION = 35
NOT_LEADER_OR_FOLLOWER = 6


def dead_letters(spool_dir: Path, topic: str) -> list[int]:
    """Sequences kept in the sink's dead-letter spool, read with the spool's own reader."""
    slot = next((spool_dir / topic).iterdir())
    spool = Spool(slot / "dead-letter", max_bytes=1 << 30, segment_bytes=1 << 20)
    spool.open()
    out: list[int] = []
    while (chunk := spool.read(10_000)) is not None:
        out.extend(chunk.sequences)
    spool.close()
    return out


@pytest.mark.kafka
async def test_unknown_broker_errors_are_retried_a_bounded_number_of_times_then_dead_lettered(
    proxied_kafka_broker: tuple[KafkaBroker, FaultProxy],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker answers every batch for partition 0 with UNKNOWN_SERVER_ERROR, later with
    UNSUPPORTED_VERSION, then INVALID_TOPIC_EXCEPTION (none of them in the sink's lists): the
    records of partition 0 are dead-lettered after a bounded number of attempts, each reason is
    logged once, and the records of the other partitions (and of partition 0 once the broker
    answers properly again) are delivered meanwhile, in order."""
    broker, proxy = proxied_kafka_broker
    topic = unique_topic("unknown-errors")
    exporter = "errors/w0/1"
    spool_dir = tmp_path / "spool"
    config = KafkaConfig(
        spool_dir=str(spool_dir), linger_ms=5, topic_partitions=3, request_timeout_ms=5000
    )
    sink = KafkaSink([broker.bootstrap], topic, config, JSON)
    await sink.start()
    emitted = 0
    sent: list[Any] = []

    def submit(count: int) -> None:
        nonlocal emitted
        records = make_records(count, exporter, start=emitted + 1)
        sink.submit(records)
        sent.extend(records)
        emitted += count

    with caplog.at_level(logging.ERROR, logger="collector.io.kafka"):
        submit(1000)
        await wait_until(lambda: sink.status().delivered == 1000, 60, "first deliveries")
        for code in (UNKNOWN_SERVER_ERROR, UNSUPPORTED_VERSION, INVALID_TOPIC_EXCEPTION):
            proxy.rewrite_produce(code, partitions={0})
            before = sink.status()
            submit(2000)
            await wait_until(
                lambda b=before: (  # type: ignore[misc]
                    sink.status().delivered + sink.status().dead_lettered
                    == b.delivered + b.dead_lettered + 2000
                    and sink.status().dead_lettered > b.dead_lettered
                    and sink.status().delivered > b.delivered
                ),
                60,
                f"partition 0 dead-lettered and the rest delivered under error {code}",
            )
        proxy.stop_rewriting()
        before = sink.status()
        submit(1000)
        await wait_until(
            lambda: sink.status().delivered == before.delivered + 1000, 60, "delivery as usual"
        )
        await sink.flush(30)
        status = sink.status()
        await sink.close()
    assert proxy.rewritten > 0
    # the books: emitted == delivered + dead-lettered + dropped + failed
    assert (status.delivered + status.dead_lettered, status.dropped, status.failed) == (
        emitted,
        0,
        0,
    )
    assert status.spool_bytes == 0
    dead = dead_letters(spool_dir, topic)
    assert len(dead) == len(set(dead)) == status.dead_lettered
    # counted per error (collector_sink_records_dead_lettered_by_error_total)
    by_error = status.dead_lettered_by_error
    assert set(by_error) == {"UnknownError", "UnsupportedVersionError", "InvalidTopicError"}
    assert sum(by_error.values()) == status.dead_lettered
    assert set(dead) <= set(range(1001, 7001))
    for name in ("UnknownError", "UnsupportedVersion", "InvalidTopic"):  # once per reason
        logged = [r for r in caplog.records if "refuses records" in r.getMessage()]
        assert sum(name in r.getMessage() for r in logged) == 1, [r.getMessage() for r in logged]
    # the broker stored the dead-lettered batches (only its answer was rewritten), all on
    # partition 0; consumers see every record, in order per partition
    messages = await read_topic(broker.bootstrap, topic, emitted)
    last: dict[int, int] = {}
    seen: dict[int, int] = {}
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        sequence = int(dict(message.headers)["sequence"])
        if sequence not in seen:
            assert sequence > last.get(message.partition, 0), (message.partition, sequence)
            last[message.partition] = sequence
        seen[sequence] = message.partition
    assert set(seen) == set(range(1, emitted + 1))
    assert {seen[s] for s in dead} == {0}


@pytest.mark.kafka
async def test_a_partition_without_a_leader_holds_only_its_own_records(
    proxied_kafka_broker: tuple[KafkaBroker, FaultProxy],
    tmp_path: Path,
) -> None:
    """The broker answers every batch for partition 0 with NOT_LEADER_OR_FOLLOWER (its leader is
    gone; aiokafka refreshes metadata and retries the batch for as long as it takes): the records
    of the other partitions keep being delivered meanwhile, cycle after cycle; when partition 0
    has a leader again its records follow, in order, and nothing is lost or counted."""
    broker, proxy = proxied_kafka_broker
    topic = unique_topic("leaderless")
    exporter = "leaderless/w0/1"
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5, topic_partitions=3)
    sink = KafkaSink([broker.bootstrap], topic, config, JSON)
    await sink.start()
    try:
        sink.submit(make_records(300, exporter))
        await wait_until(lambda: sink.status().delivered == 300, 60, "first deliveries")
        proxy.rewrite_produce(NOT_LEADER_OR_FOLLOWER, partitions={0})
        emitted, others = 300, 0
        for _ in range(20):  # twenty cycles, each with records for every partition
            records = make_records(300, exporter, start=emitted + 1)
            chosen = partitions_for([r.flow_id.encode() for r in records], [0, 1, 2])
            others += sum(1 for p in chosen if p != 0)
            sink.submit(records)
            emitted += 300
            await asyncio.sleep(0.05)
        await wait_until(
            lambda: sink.status().delivered >= 300 + others,
            20,  # well below the producer's own 30 s wait for partition 0's previous batch
            "the other partitions' records delivered while partition 0 has no leader",
        )
        assert proxy.rewritten > 0
        assert sink.status().delivered < emitted  # partition 0's records wait
        proxy.stop_rewriting()
        await wait_until(lambda: sink.status().delivered == emitted, 60, "partition 0 catches up")
        await sink.flush(30)
        status = sink.status()
    finally:
        proxy.stop_rewriting()
        await sink.close()
    assert (status.delivered, status.dropped, status.failed, status.dead_lettered) == (
        emitted,
        0,
        0,
        0,
    )
    assert status.spool_bytes == 0
    messages = await read_topic(broker.bootstrap, topic, emitted)
    last: dict[int, int] = {}
    seen: set[int] = set()
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        sequence = int(dict(message.headers)["sequence"])
        if sequence not in seen:
            assert sequence > last.get(message.partition, 0), (message.partition, sequence)
            last[message.partition] = sequence
        seen.add(sequence)
    assert seen == set(range(1, emitted + 1))


@pytest.mark.parametrize(
    "topic", ["__consumer_offsets", "__transaction_state", "flows log", "a" * 250, "..", "bad:"]
)
async def test_a_topic_kafka_refuses_by_name_is_a_config_error_at_start(
    topic: str, tmp_path: Path
) -> None:
    """A topic named so that every Produce would answer INVALID_TOPIC_EXCEPTION (Kafka's internal
    topics, characters or a length Kafka does not allow) is a config error naming the key at
    start (exit 2), not a sink that starts and then dead-letters everything."""
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), connect_timeout_s=1.0)
    sink = KafkaSink([f"127.0.0.1:{unused_port()}"], topic, config, JSON)
    with pytest.raises(ConfigError) as caught:
        await sink.start()
    assert caught.value.key == "sink"
    assert caught.value.exit_status == 2
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").rglob("*.seg"))
