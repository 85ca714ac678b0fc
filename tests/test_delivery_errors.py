"""Broker errors outside the sink's lists, injected by code into real Produce responses (the fault
proxy rewrites them, tests/fault_proxy.py), so aiokafka's own code path raises them. Whatever the
code, publishing never stops for good: after a bounded number of attempts the batch goes to the
dead-letter spool (kept, counted per error, logged once per reason) and the rest keeps flowing.
Every test checks the books: emitted == delivered + dead-lettered + dropped + failed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy
from kafka_fixtures import KafkaBroker, make_records, read_topic, unique_topic, wait_until

from collector.config import KafkaConfig, RecordsConfig
from collector.io.kafka import KafkaSink
from collector.io.spool import Spool

JSON = RecordsConfig()
UNKNOWN_SERVER_ERROR = -1
INVALID_TOPIC_EXCEPTION = 17
UNSUPPORTED_VERSION = 35


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
