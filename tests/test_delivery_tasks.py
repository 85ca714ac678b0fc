"""Dead tasks are replaced: aiokafka's sender task, the sink's pump, its watch and its connect loop
are killed (cancelled) one at a time mid-run, against the real local broker. Each is noticed within
a bound, logged, counted (task_restarts) and replaced, /healthz says 'degraded' meanwhile, and every
record is delivered: emitted == delivered (+ dropped, failed: none)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from kafka_fixtures import KafkaBroker, make_records, read_topic, unique_topic, wait_until

from collector.config import KafkaConfig, RecordsConfig
from collector.io.kafka import KafkaSink, State, workarounds

JSON = RecordsConfig()
BOUND_S = 30  # a dead task is noticed within WATCH_INTERVAL_S; delivery then takes seconds


def sequences(messages: list[object]) -> set[int]:
    return {int(dict(m.headers)["sequence"]) for m in messages}  # type: ignore[attr-defined]


@pytest.mark.kafka
async def test_a_dead_sender_pump_or_watch_is_replaced_and_nothing_is_lost(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = unique_topic("dead-tasks")
    exporter = "tasks/w0/1"
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5)
    sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
    await sink.start()
    emitted = 0

    async def deliver(count: int, what: str) -> None:
        nonlocal emitted
        sink.submit(make_records(count, exporter, start=emitted + 1))
        emitted += count
        await wait_until(lambda: sink.status().delivered == emitted, BOUND_S, what)

    try:
        await deliver(1000, "first deliveries")
        restarts = getattr(sink, "task_restarts", 0)  # (absent before tasks were watched)

        # aiokafka's sender task dies: the producer takes batches and never sends them
        sender = workarounds.sender_task(sink._producer)
        assert sender is not None
        sender.cancel()
        await deliver(1000, "delivery after the sender task died")
        assert sink.task_restarts == restarts + 1
        status = sink.status()
        assert status.state == "degraded", status
        assert "sender task" in status.detail

        # the pump dies (not through its own catch-all: cancelled)
        sink._tasks[0].cancel()
        await asyncio.sleep(0)
        await deliver(1000, "delivery after the pump died")
        assert sink.task_restarts == restarts + 2
        assert "kafka-pump" in sink.status().detail

        # the watch dies; then the sender again: the receive path restarts the watch, which
        # replaces the producer
        sink._tasks[1].cancel()
        await asyncio.sleep(0)
        sink.submit(make_records(10, exporter, start=emitted + 1))
        emitted += 10
        await wait_until(lambda: not sink._tasks[1].done(), BOUND_S, "the watch restarted")
        sender = workarounds.sender_task(sink._producer)
        assert sender is not None
        sender.cancel()
        await deliver(1000, "delivery after the watch and the sender died")
        assert sink.task_restarts == restarts + 4
        await sink.flush(30)
        status = sink.status()
    finally:
        await sink.close()
    assert status.failures >= 4
    assert status.task_restarts == sink.task_restarts  # collector_sink_task_restarts_total
    # the books: emitted == delivered (+ dropped, failed, spooled: none)
    assert (status.delivered, status.dropped, status.failed, status.spool_bytes) == (
        emitted,
        0,
        0,
        0,
    )
    messages = await read_topic(kafka_broker.bootstrap, topic, emitted)
    assert sequences(messages) == set(range(1, emitted + 1))


@pytest.fixture
def refusing_proxy(kafka_broker: KafkaBroker) -> Iterator[FaultProxy]:
    """A proxy in front of the shared broker that resets every connection until told to pass.
    (The broker advertises its own address: only the bootstrap goes through the proxy.)"""
    host, port = kafka_broker.bootstrap.split(":")
    proxy = FaultProxy((host, int(port)), mode="reset").start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.kafka
async def test_a_dead_connect_loop_is_replaced(
    kafka_broker: KafkaBroker, refusing_proxy: FaultProxy, tmp_path: Path
) -> None:
    """The sink starts degraded (every connection reset), its connect loop dies; once the broker
    answers, a new connect loop connects and the spooled records are delivered."""
    topic = unique_topic("dead-connect")
    exporter = "connect/w0/1"
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5, connect_timeout_s=3.0)
    sink = KafkaSink([refusing_proxy.address], topic, config, JSON)
    await sink.start()
    try:
        assert sink.state is State.OFFLINE
        sink.submit(make_records(2000, exporter))
        connect = sink._connect_task
        assert connect is not None
        connect.cancel()
        await asyncio.sleep(0)
        refusing_proxy.set_mode("pass")
        await wait_until(lambda: sink.status().delivered == 2000, 60, "delivery after reconnect")
        assert sink.task_restarts >= 1
        await sink.flush(30)
        status = sink.status()
    finally:
        await sink.close()
    assert (status.delivered, status.dropped, status.failed, status.spool_bytes) == (2000, 0, 0, 0)
    messages = await read_topic(kafka_broker.bootstrap, topic, 2000)
    assert sequences(messages) == set(range(1, 2001))
