"""Nothing is stranded, against the real local broker: a spool chunk the pump has read when a
producer reset cancels it goes out with the next producer, and records in the spool while the sink
is in direct mode are replayed; flush leaves nothing behind. Every test checks the books: emitted
== delivered (+ dropped, failed, spooled: none)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kafka_fixtures import (
    KafkaBroker,
    make_records,
    read_topic,
    unique_topic,
    unused_port,
    wait_until,
)

from collector.config import KafkaConfig, RecordsConfig
from collector.io.kafka import KafkaSink, State
from collector.io.spool import Spool

JSON = RecordsConfig()


async def spool_while_away(config: KafkaConfig, topic: str, exporter: str, count: int) -> None:
    """``count`` records written to the topic's spool slot by a sink whose broker is away."""
    away = KafkaSink([f"127.0.0.1:{unused_port()}"], topic, config, JSON)
    await away.start()
    away.submit(make_records(count, exporter))
    await away.flush(5)
    await away.close()
    assert away.status().spool_bytes > 0


@pytest.mark.kafka
async def test_a_spool_chunk_read_when_a_reset_cancels_the_pump_is_not_stranded(
    kafka_broker: KafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pump is waiting for the spool thread's read of the next chunk when the producer is
    replaced (a reset cancels the pump): the chunk was read all the same (the spool moved past
    it), so it must go out with the next producer, not wait for the next process."""
    topic = unique_topic("stranded-chunk")
    exporter = "stranded/w0/1"
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5, connect_timeout_s=3.0)
    await spool_while_away(config, topic, exporter, 3000)

    reading = threading.Event()
    read = Spool.read

    def slow_read(self: Spool, limit: int) -> Any:
        if not reading.is_set():
            reading.set()
            time.sleep(1.0)  # a slow disk: the reset lands while this read runs
        return read(self, limit)

    monkeypatch.setattr(Spool, "read", slow_read)
    sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
    await sink.start()
    try:
        assert sink.state is State.REPLAYING
        await wait_until(reading.is_set, 30, "the replay's first read")
        sink._reset_producer("forced by the test", graceful=True)
        await wait_until(
            lambda: sink.status().delivered == 3000, 60, "the chunk read during the reset"
        )
        await sink.flush(30)
        status = sink.status()
    finally:
        await sink.close()
    # the books: emitted == delivered, nothing left in the spool or counted
    assert (status.delivered, status.dropped, status.failed, status.spool_bytes) == (3000, 0, 0, 0)
    messages = await read_topic(kafka_broker.bootstrap, topic, 3000)
    assert {int(dict(m.headers)["sequence"]) for m in messages} == set(range(1, 3001))


@pytest.mark.kafka
async def test_records_spilled_during_the_last_replay_read_are_replayed_too(
    kafka_broker: KafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay's last read (the one that finds nothing unread) is slow, and records arrive
    while it runs: they spill behind the spool after the read began, so the read does not see
    them. The sink must not go direct with them left on disk: after flush the spool is empty and
    everything is delivered."""
    topic = unique_topic("late-spill")
    exporter = "late/w0/1"
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5, connect_timeout_s=3.0)
    await spool_while_away(config, topic, exporter, 3000)
    last_read = threading.Event()
    read = Spool.read

    def slow_last_read(self: Spool, limit: int) -> Any:
        if not self.has_unread() and not last_read.is_set():
            last_read.set()
            time.sleep(1.0)  # a slow disk: records arrive meanwhile
        return read(self, limit)

    monkeypatch.setattr(Spool, "read", slow_last_read)
    sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
    await sink.start()
    try:
        assert sink.state is State.REPLAYING
        await wait_until(last_read.is_set, 60, "the replay's last read")
        sink.submit(make_records(500, exporter, start=3001))
        await wait_until(
            lambda: sink.state is State.DIRECT and sink.status().queue_records == 0,
            60,
            "the replay to finish",
        )
        await sink.flush(30)
        status = sink.status()
    finally:
        await sink.close()
    # the books: emitted == delivered, nothing left in the spool or counted
    assert (status.spool_bytes, status.dropped, status.failed) == (0, 0, 0)
    assert status.delivered == 3500
    messages = await read_topic(kafka_broker.bootstrap, topic, 3500)
    assert {int(dict(m.headers)["sequence"]) for m in messages} == set(range(1, 3501))
