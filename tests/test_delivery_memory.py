"""Memory is bounded in bytes, always: while the spool thread is stuck in a write (a disk that
hangs), records keep coming and the broker is away, everything the sink holds (records not yet
encoded, batches, retries, slices handed to the spool thread, dead letters waiting for it) stays
under kafka.queue_bytes plus one submitted list; past it new records are dropped and counted.
When the disk answers again, what was taken is on disk: emitted == spooled + dropped."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from kafka_fixtures import make_records, unused_port, wait_until

from collector.config import KafkaConfig, RecordsConfig
from collector.io.kafka import KafkaSink, State
from collector.io.spool import Spool

JSON = RecordsConfig()
QUEUE_BYTES = 4 * 1024 * 1024
LIST = 500  # records per submit(), as a worker hands them over
TOTAL = 60_000  # about 40 MB of encoded records: ten times the bound


def spooled_sequences(directory: Path) -> list[int]:
    spool = Spool(directory, max_bytes=1 << 34, segment_bytes=1 << 24)
    spool.open()
    out: list[int] = []
    while (chunk := spool.read(10_000)) is not None:
        out.extend(chunk.sequences)
    spool.close()
    return out


async def test_a_stuck_spool_write_keeps_memory_under_queue_bytes_and_counts_the_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = threading.Event()
    release = threading.Event()
    append = Spool.append

    def hanging_append(self: Spool, *args: Any) -> int:
        stuck.set()
        assert release.wait(120), "the test never released the disk"
        return append(self, *args)

    monkeypatch.setattr(Spool, "append", hanging_append)
    config = KafkaConfig(
        spool_dir=str(tmp_path / "spool"),
        queue_bytes=QUEUE_BYTES,
        connect_timeout_s=1.0,
        spool_segment_bytes=1 << 24,
    )
    exporter = "memory/w0/1"
    sink = KafkaSink([f"127.0.0.1:{unused_port()}"], "memory", config, JSON)
    await sink.start()  # the broker is away: records go to the spool
    assert sink.state is State.OFFLINE
    peak = 0
    list_bytes = 0
    try:
        sink.submit(make_records(LIST, exporter))  # the spool thread takes it, and hangs
        await wait_until(stuck.is_set, 30, "the spool thread's first write")
        peak = held_bytes(sink)
        for start in range(LIST + 1, TOTAL + 1, LIST):
            records = make_records(LIST, exporter, start=start)
            sink.submit(records)
            list_bytes = max(list_bytes, int(LIST * sink.delivery.record_bytes))
            peak = max(peak, held_bytes(sink))
            await asyncio.sleep(0)  # the loop turns between lists (spills run), as in a worker
        assert stuck.is_set()
        dropped_while_stuck = sink.status().dropped
    finally:
        release.set()
    await sink.flush(30)
    status = sink.status()
    await sink.close()
    # the bound: kafka.queue_bytes, plus the list being submitted
    assert peak <= QUEUE_BYTES + list_bytes, (peak, QUEUE_BYTES, list_bytes)
    assert dropped_while_stuck > 0  # back-pressure: counted drops, not growth
    # the books: emitted == spooled + dropped (nothing delivered: no broker)
    spooled = spooled_sequences(next((tmp_path / "spool" / "memory").iterdir()))
    assert len(spooled) == len(set(spooled))
    assert (status.delivered, status.failed) == (0, 0)
    assert len(spooled) + status.dropped == TOTAL
    assert spooled == sorted(spooled)  # order kept through the spill


def held_bytes(sink: KafkaSink) -> int:
    """What the sink holds in memory: its records (encoded or estimated) and the records handed
    to the spool thread, not yet written (estimated with the same average)."""
    delivery = sink.delivery
    return delivery.memory_bytes() + int(sink.spool.parking * delivery.record_bytes)
