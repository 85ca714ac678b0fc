"""Delivery under network faults, between the sink and the real local broker, through the
fault-injecting proxy (tests/fault_proxy.py). Every test checks the books: records emitted ==
delivered + spooled + dropped, and the sequences read back from the topic are gap-free (or exactly
the ones counted as dropped), in order per exporter per partition.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy
from kafka_fixtures import (
    KafkaBroker,
    make_records,
    read_topic,
    unique_topic,
    wait_until,
)

from collector.config import KafkaConfig, RecordsConfig
from collector.io.kafka import KafkaSink, State
from collector.io.kafka.sink import CYCLE_RECORDS

JSON = RecordsConfig()


def kafka_config(tmp_path: Path, **overrides: Any) -> KafkaConfig:
    settings: dict[str, Any] = {"spool_dir": str(tmp_path / "spool"), "linger_ms": 5}
    settings.update(overrides)
    return KafkaConfig(**settings)


def check_delivery(messages: list[Any], exporter: str, emitted: int) -> Counter[int]:
    """Every sequence 1..emitted arrived (repeats only as identical copies), headers name each
    record, and per partition the sequences of the exporter only grow: nothing overtook a retry
    or a replay."""
    seen: Counter[int] = Counter()
    last: dict[int, int] = {}
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        headers = dict(message.headers)
        assert headers["exporter"] == exporter.encode()
        sequence = int(headers["sequence"])
        if seen[sequence] == 0:  # a duplicate repeats an older one; first copies keep order
            assert sequence > last.get(message.partition, 0), (message.partition, sequence)
            last[message.partition] = sequence
        seen[sequence] += 1
    missing = sorted(set(range(1, emitted + 1)) - set(seen))
    assert not missing, f"{len(missing)} records lost, first {missing[:10]}"
    assert max(seen) == emitted
    return seen


@pytest.fixture
def hung_address() -> Iterator[FaultProxy]:
    """An address that accepts TCP connections and never answers."""
    proxy = FaultProxy(None, mode="hang").start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.kafka
async def test_a_hung_first_bootstrap_address_does_not_hide_the_live_broker(
    kafka_broker: KafkaBroker,
    hung_address: FaultProxy,
    tmp_path: Path,
) -> None:
    """``kafka://HUNG,LIVE/topic``: the addresses are probed at once, the live one is found well
    within connect_timeout_s, the topic is created and every record is delivered."""
    topic = unique_topic("hung-first")
    exporter = "hung/w0/1"
    config = kafka_config(tmp_path, connect_timeout_s=8.0, require_broker_at_start=True)
    sink = KafkaSink([hung_address.address, kafka_broker.bootstrap], topic, config, JSON)
    await sink.start()
    assert sink.state is State.DIRECT
    assert hung_address.accepted >= 1  # it was tried, and it hung
    sink.submit(make_records(3000, exporter))
    await sink.flush(30)
    status = sink.status()
    await sink.close()
    assert (status.delivered, status.dropped, status.failed, status.spool_bytes) == (3000, 0, 0, 0)
    messages = await read_topic(kafka_broker.bootstrap, topic, 3000)
    assert sum(check_delivery(messages, exporter, 3000).values()) == 3000


@pytest.mark.kafka
async def test_resets_delays_and_a_blackhole_mid_flood_lose_nothing_and_keep_order(
    proxied_kafka_broker: tuple[KafkaBroker, FaultProxy],
    tmp_path: Path,
) -> None:
    """Records keep coming while the network between the sink and the broker resets every
    connection (three times), delays everything by 1.5 s (more than kafka.queue_bytes piles up:
    memory stays bounded, the rest spills), then blackholes it until the sink has noticed (longer
    than the stall limit: the sink spools, finds the broker unreachable, replaces its producer).
    Afterwards every record is on the topic, repeats only as identical copies, and per partition
    the sequences only grow: a retried batch or the spool replay was never overtaken."""
    broker, proxy = proxied_kafka_broker
    topic = unique_topic("faults")
    exporter = "faults/w0/1"
    config = kafka_config(
        tmp_path, request_timeout_ms=5000, connect_timeout_s=5.0, queue_bytes=2 * 1024 * 1024
    )
    sink = KafkaSink([broker.bootstrap], topic, config, JSON)
    await sink.start()
    emitted = 0
    flooding = True
    peak_bytes = 0

    async def flood() -> None:
        nonlocal emitted, peak_bytes
        while flooding:
            sink.submit(make_records(100, exporter, start=emitted + 1))
            emitted += 100
            peak_bytes = max(peak_bytes, sink.delivery.memory_bytes())
            await asyncio.sleep(0.02)

    flood_task = asyncio.create_task(flood())
    try:
        await wait_until(lambda: sink.status().delivered > 3000, 60, "first deliveries")
        for _ in range(3):
            assert await asyncio.to_thread(proxy.reset_connections) > 0
            await asyncio.sleep(1.0)
        proxy.set_mode("delay", delay_s=1.5)
        await asyncio.sleep(4.0)
        proxy.set_mode("blackhole")
        await wait_until(lambda: sink.state is State.OFFLINE, 60, "the stalled producer replaced")
        assert sink.status().spool_bytes > 0
        await asyncio.sleep(2.0)
        proxy.set_mode("pass")
        delivered_before = sink.status().delivered
        await wait_until(
            lambda: sink.status().delivered > delivered_before + 1000, 120, "delivery to resume"
        )
    finally:
        flooding = False
        await flood_task
        proxy.set_mode("pass")
    await wait_until(
        lambda: sink.state is State.DIRECT and sink.status().queue_records == 0,
        120,
        "the spool to drain",
    )
    await sink.flush(30)
    status = sink.status()
    await sink.close()
    # memory stayed bounded in bytes (kafka.queue_bytes) while the broker was slow: beyond it,
    # at most the slice submitted since the last spill and one pump cycle being built
    assert peak_bytes <= config.queue_bytes + (CYCLE_RECORDS + 100) * sink.delivery.record_bytes
    # the books: emitted == delivered + spooled + dropped (+ failed), each acknowledged once
    assert (status.delivered, status.spool_bytes, status.dropped, status.failed) == (
        emitted,
        0,
        0,
        0,
    )
    messages = await read_topic(broker.bootstrap, topic, emitted, deadline_s=120)
    seen = check_delivery(messages, exporter, emitted)
    # a repeat is a batch the broker stored whose acknowledgement the faults swallowed: resent by
    # the next producer, visible to consumers as the same (exporter, sequence)
    assert len(seen) == emitted
