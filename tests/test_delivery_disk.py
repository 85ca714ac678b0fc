"""Delivery when the spool's disk misbehaves: a real full file system (a small tmpfs) and real
transient read errors, with the books checked against the real broker: records emitted ==
delivered + dropped, and exactly the dropped ones are missing from the topic."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from disk_faults import no_free_descriptors, resize, small_tmpfs
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

JSON = RecordsConfig()


def sequences_of(messages: list[Any]) -> list[int]:
    return [int(dict(m.headers)["sequence"]) for m in messages]


@pytest.mark.kafka
async def test_a_full_disk_while_spooling_loses_exactly_what_it_counts(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    """The broker is away and the spool's file system fills up: the records that did not reach
    the disk are counted as dropped, nothing written is lost or torn, and after space returns
    every later record is spooled and, with the broker back, delivered."""
    topic = unique_topic("disk-full")
    exporter = "disk/w0/1"
    with small_tmpfs(tmp_path / "fs", "256k") as fs:
        config = KafkaConfig(
            spool_dir=str(fs / "spool"),
            spool_max_bytes=1 << 30,  # far above the disk: the disk is the limit
            spool_segment_bytes=16 * 1024,
            connect_timeout_s=2.0,
            linger_ms=5,
        )
        away = KafkaSink([f"127.0.0.1:{unused_port()}"], topic, config, JSON)
        await away.start()
        emitted = 0
        while away.status().dropped < 500:  # fill the disk, and then some
            away.submit(make_records(100, exporter, start=emitted + 1))
            emitted += 100
            await wait_until(lambda: away.status().queue_records == 0, 30, "records spooled")
        full = away.status()
        assert full.state == "failed"
        assert "No space left on device" in full.detail
        resize(fs, "16m")
        space_back_at = emitted
        away.submit(make_records(2000, exporter, start=emitted + 1))
        emitted += 2000
        await away.flush(5)
        await away.close()
        dropped = away.status().dropped
        assert dropped == full.dropped  # nothing dropped once space returned

        sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
        await sink.start()
        await wait_until(
            lambda: sink.status().delivered >= emitted - dropped, 120, "the spool delivered"
        )
        await sink.flush(30)
        await sink.close()
        status = sink.status()
    assert status.delivered == emitted - dropped  # the books: emitted == delivered + dropped
    assert (status.failed, status.dropped, status.spool_bytes) == (0, 0, 0)
    assert sink.spool.corrupt_segments == 0  # no torn entry was left behind
    messages = await read_topic(kafka_broker.bootstrap, topic, emitted - dropped)
    delivered = sequences_of(messages)
    assert len(delivered) == len(set(delivered)) == emitted - dropped
    missing = set(range(1, emitted + 1)) - set(delivered)
    assert len(missing) == dropped
    assert max(missing) <= space_back_at  # every record after space returned arrived


_SEGMENT_OPENS: list[tuple[str, str]] | None = None


def _watch_segment_opens(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook (``open`` events, raised by CPython itself): who opens which spool file."""
    if _SEGMENT_OPENS is not None and event == "open" and str(args[0]).endswith(".seg"):
        _SEGMENT_OPENS.append((threading.current_thread().name, str(args[0])))


sys.addaudithook(_watch_segment_opens)  # inert unless a test collects (hooks cannot be removed)


@pytest.mark.kafka
async def test_spool_files_are_written_and_read_off_the_event_loop(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    """Spilling, fsyncing and replaying touch segment files only from the spool thread, never
    from the event loop's thread (which receives datagrams in the collector)."""
    global _SEGMENT_OPENS  # noqa: PLW0603 - the audit hook's collection switch
    topic = unique_topic("off-loop")
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), connect_timeout_s=2.0, linger_ms=5)
    _SEGMENT_OPENS = []
    try:
        away = KafkaSink([f"127.0.0.1:{unused_port()}"], topic, config, JSON)
        await away.start()
        away.submit(make_records(20_000, "off-loop/w0/1"))
        await away.flush(5)
        await away.close()
        sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
        await sink.start()
        await wait_until(lambda: sink.status().delivered >= 20_000, 120, "the spool replayed")
        await sink.close()
        opens = list(_SEGMENT_OPENS)
    finally:
        _SEGMENT_OPENS = None
    loop_thread = threading.current_thread().name
    assert opens, "no segment file was opened at all"
    writes_and_reads = {name for name, _ in opens}
    assert loop_thread not in writes_and_reads
    assert all(name.startswith("kafka-spool") for name in writes_and_reads), writes_and_reads
    assert sink.status().spool_bytes == 0


@pytest.mark.kafka
async def test_read_errors_while_replaying_delay_the_spool_and_lose_nothing(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    """The replay hits EMFILE (every descriptor taken) for a while: the segment is kept, read
    again later, and every record is delivered; nothing is counted as damaged or dropped."""
    topic = unique_topic("read-errors")
    config = KafkaConfig(spool_dir=str(tmp_path / "spool"), connect_timeout_s=2.0, linger_ms=5)
    away = KafkaSink([f"127.0.0.1:{unused_port()}"], topic, config, JSON)
    await away.start()
    away.submit(make_records(1000, "read-errors/w0/1"))
    await away.flush(5)
    await away.close()

    sink = KafkaSink([kafka_broker.bootstrap], topic, config, JSON)
    await sink.start()  # connected; the pump has not read the spool yet
    with no_free_descriptors():
        await wait_until(lambda: sink.spool.read_errors > 0, 30, "a failed segment read")
        assert sink.status().delivered == 0
    await wait_until(lambda: sink.status().delivered >= 1000, 60, "the spool read again")
    await sink.close()
    status = sink.status()
    assert (status.delivered, status.dropped, status.failed, status.spool_bytes) == (1000, 0, 0, 0)
    assert sink.spool.corrupt_segments == 0
    messages = await read_topic(kafka_broker.bootstrap, topic, 1000)
    assert sorted(sequences_of(messages)) == list(range(1, 1001))
