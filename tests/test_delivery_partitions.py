"""The topic's partitions are read from metadata on a period, not only at connect: partitions
added to the topic mid-run are used, against the real local broker. The books: emitted ==
delivered."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from kafka_fixtures import KafkaBroker, make_records, read_topic, unique_topic, wait_until

from collector.config import KafkaConfig, RecordsConfig
from collector.io.kafka import KafkaSink, watch


@pytest.mark.kafka
async def test_partitions_added_mid_run_are_used(
    kafka_broker: KafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "PARTITIONS_REFRESH_S", 1.0)  # 30 s in production
    topic = unique_topic("grown")
    exporter = "grown/w0/1"
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5, topic_partitions=2)
    sink = KafkaSink([kafka_broker.bootstrap], topic, config, RecordsConfig())
    await sink.start()
    try:
        sink.submit(make_records(1000, exporter))
        await wait_until(lambda: sink.status().delivered == 1000, 60, "first deliveries")
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({topic: NewPartitions(total_count=4)})
        finally:
            await admin.close()
        await wait_until(
            lambda: sink.delivery.partitions == [0, 1, 2, 3], 30, "the new partitions read"
        )
        sink.submit(make_records(1000, exporter, start=1001))
        await wait_until(lambda: sink.status().delivered == 2000, 60, "later deliveries")
        await sink.flush(30)
        status = sink.status()
    finally:
        await sink.close()
    assert (status.delivered, status.dropped, status.failed, status.spool_bytes) == (2000, 0, 0, 0)
    messages = await read_topic(kafka_broker.bootstrap, topic, 2000)
    by_partition: dict[int, set[int]] = {}
    for message in messages:
        sequence = int(dict(message.headers)["sequence"])
        by_partition.setdefault(message.partition, set()).add(sequence)
    assert set().union(*by_partition.values()) == set(range(1, 2001))
    assert set(by_partition) == {0, 1, 2, 3}
    assert all(s > 1000 for p in (2, 3) for s in by_partition[p])  # only after they existed
