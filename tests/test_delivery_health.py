"""Health is about the instance, never about a record: the live service publishes to a topic of the
real local broker that refuses every record as too large (max.message.bytes below any record), while
/healthz is polled the way the NLB polls it. Every record is counted (failed), /healthz stays 200
(degraded, saying why), and the books balance: emitted == delivered + failed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_fixtures import KafkaBroker, unique_topic

from tests.service_harness import Collector, tcp


def emitted(c: Collector) -> float:
    return sum(v for k, v in c.metrics().items() if k.startswith("collector_records_emitted"))


@pytest.mark.kafka
async def test_records_the_broker_refuses_as_too_large_never_make_healthz_fail(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = unique_topic("refused-health")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 2, 1, topic_configs={"max.message.bytes": "300"})]
        )
    finally:
        await admin.close()
    env = {
        "COLLECTOR_KAFKA_SPOOL_DIR": str(tmp_path / "spool"),
        "COLLECTOR_KAFKA_COMPRESSION": "none",  # the limit applies to the bytes on the wire
        "COLLECTOR_FLOWS_INACTIVE_TIMEOUT_S": "1",  # records while the service runs
    }
    sink = f"kafka://{kafka_broker.bootstrap}/{topic}"
    with Collector(tmp_path, workers=1, sink=sink, env=env) as c:
        c.wait_healthy()
        sent = c.send([tcp(21, "10.5.0.1", f"10.6.{i}.1", 1024 + i, 443) for i in range(100)])
        c.wait_received(sent)
        codes: list[int] = []
        details: list[str] = []
        deadline = time.monotonic() + 60
        counted = 0.0
        while time.monotonic() < deadline:  # polled like the NLB, faster
            code, body = c.health()
            codes.append(code)
            details.extend(w.get("sink", {}).get("detail", "") for w in body.get("workers", []))
            counted = c.metric("collector_sink_records_failed_total")
            if counted and counted == emitted(c):
                break
            await asyncio.sleep(0.1)
        for _ in range(20):  # and on, after the records were refused
            code, body = c.health()
            codes.append(code)
            await asyncio.sleep(0.1)
        records = emitted(c)
        delivered = c.metric("collector_records_delivered_total")
        assert c.stop() == 0
        assert "Traceback" not in c.logs()
    assert records > 0
    # the books: emitted == delivered + failed (each record refused for its size, counted)
    assert (delivered, counted) == (0, records)
    assert set(codes) == {200}, codes  # never 503 for a data problem
    assert body["status"] == "degraded"
    assert any("larger than the topic takes" in d or "rejected" in d for d in details), details
