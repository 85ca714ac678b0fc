"""The Kafka sink replaying a spool whose middle segment sits on a failed disk (EIO, for real:
ext4 on a loop device, shut down): the segment is set aside after a bounded number of reads, the
segments behind it are delivered to the real local broker, and every record is accounted for:
appended == delivered + in the set-aside segment."""

from __future__ import annotations

from pathlib import Path

from disk_faults import ext4_loop, shut_down
from kafka_fixtures import (
    KafkaBroker,
    create_topic,
    make_records,
    read_topic,
    unique_topic,
    wait_until,
)

from collector.config import KafkaConfig, RecordsConfig
from collector.encoders import CONTENT_TYPES, encoder_for
from collector.io.kafka import KafkaSink
from collector.io.spool import MAX_READ_ATTEMPTS, QUARANTINE, Spool
from collector.records import decode

PER_SEGMENT = 500
EXPORTER = "spool-faults/w0/1"
REPLAY_DEADLINE_S = 90.0
"""Bounds the wait (the sink tries a failing segment every 5 s, MAX_READ_ATTEMPTS times)."""


def spool_three_segments(directory: Path) -> None:
    """Records 1..3*PER_SEGMENT, encoded as the sink spools them, in three closed segments."""
    encode = encoder_for("json", "")
    records = make_records(3 * PER_SEGMENT, EXPORTER)
    spool = Spool(directory, max_bytes=1 << 30, segment_bytes=1 << 24)
    spool.open()
    for first in range(0, len(records), PER_SEGMENT):
        part = records[first : first + PER_SEGMENT]
        written = spool.append(
            CONTENT_TYPES["json"],
            [r.flow_id.encode() for r in part],
            [encode(r) for r in part],
            [r.exporter.encode() for r in part],
            [r.sequence for r in part],
        )
        assert written == PER_SEGMENT
        assert spool.rotate()
    spool.close()


async def test_a_segment_on_a_failed_disk_does_not_stop_the_replay(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = unique_topic("spool-eio")
    await create_topic(kafka_broker.bootstrap, topic, 3)
    slot = tmp_path / "spool" / topic / "w0"
    spool_three_segments(slot)
    second = slot / f"{2:020d}.seg"
    with ext4_loop(tmp_path / "disk") as disk:
        (disk / second.name).write_bytes(second.read_bytes())
        second.unlink()
        second.symlink_to(disk / second.name)  # only this segment is on the failing disk
        shut_down(disk)
        config = KafkaConfig(spool_dir=str(tmp_path / "spool"), linger_ms=5, create_topic=False)
        sink = KafkaSink([kafka_broker.bootstrap], topic, config, RecordsConfig())
        await sink.start()
        try:
            await wait_until(
                lambda: sink.delivery.delivered >= 2 * PER_SEGMENT and sink.spool.is_empty(),
                REPLAY_DEADLINE_S,
                "the replay past the unreadable segment",
            )
            status = sink.status()
        finally:
            await sink.close()
    assert status.delivered == 2 * PER_SEGMENT
    assert status.quarantined_segments == 1
    assert status.spool_bytes == 0
    assert sink.spool.read_errors == MAX_READ_ATTEMPTS
    assert (slot / QUARANTINE / second.name).is_symlink()  # kept for an operator, not deleted
    messages = await read_topic(kafka_broker.bootstrap, topic, 2 * PER_SEGMENT)
    sequences = sorted(decode(m.value).sequence for m in messages)
    # appended == delivered + set aside: the first and third segments, each record once
    assert sequences == [
        *range(1, PER_SEGMENT + 1),
        *range(2 * PER_SEGMENT + 1, 3 * PER_SEGMENT + 1),
    ]
