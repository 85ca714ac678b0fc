"""The Kafka sink's delivery core without a broker: where every record is, and what is counted.

Batches are built with aiokafka's own BatchBuilder (what ``producer.create_batch`` returns), and the
records it holds are read back with aiokafka's own record-batch reader, so the bytes checked are
the bytes a broker would get.
"""

from __future__ import annotations

import msgspec
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from kafka_fixtures import make_records

from collector.encoders import CONTENT_TYPES, encoder_for
from collector.io.kafka.delivery import Batch, Delivery, Parked, key_hash
from collector.records import decode

JSON = CONTENT_TYPES["json"]
NOW_MS = 1_764_100_000_000


def delivery(partitions: int = 3, batch_bytes: int = 1 << 20) -> Delivery:
    core = Delivery(lambda: BatchBuilder(batch_bytes, 0), encoder_for("json", ""), JSON)
    core.partitions = list(range(partitions))
    return core


def sequences(batch: Batch) -> list[int]:
    """The sequences inside the batch's built bytes (aiokafka's reader, not our lists)."""
    buffer = batch.builder._build()  # the bytes the producer sends (what send_batch calls)
    reader = DefaultRecordBatch(bytes(buffer))
    out = []
    for record in reader:
        headers = dict(record.headers)
        decoded = decode(record.value)
        assert headers == {
            "content-type": JSON.encode(),
            "exporter": decoded.exporter.encode(),
            "sequence": str(decoded.sequence).encode(),
        }
        out.append(decoded.sequence)
    return out


def accounted(core: Delivery, submitted: int, spooled: int = 0) -> None:
    """The identity every state keeps: submitted == in memory + delivered + failed + spooled."""
    assert core.memory_records() + core.delivered + core.failed + spooled == submitted
    assert core.unacked_count == sum(len(b.values) for b in core.unacked)
    assert core.retry_count == sum(len(b.values) for b in core.retry)
    assert core.pending_count == sum(len(r) for _, r in core.pending)
    assert core.unacked_bytes == sum(b.size for b in core.unacked)
    assert core.retry_bytes == sum(b.size for b in core.retry)
    for batch in (*core.unacked, *core.retry):
        assert batch.size == sum(map(len, batch.keys)) + sum(map(len, batch.values))


def test_pending_records_become_one_batch_per_partition_in_order() -> None:
    core = delivery()
    records = make_records(300, "unit/w0/1")
    core.add(records[:100], 1.0)
    core.add(records[100:], 2.0)
    accounted(core, 300)
    batches = core.from_pending(1000, NOW_MS)
    assert {b.partition for b in batches} == {0, 1, 2}
    assert all(b.first_s == 1.0 for b in batches)
    for batch in batches:
        inside = sequences(batch)
        assert inside == sorted(inside)  # per partition, submission order
        for sequence in inside:
            record = records[sequence - 1]
            assert key_hash(record.flow_id.encode()) % 3 == batch.partition
    assert sorted(s for b in batches for s in sequences(b)) == list(range(1, 301))
    assert (core.pending_count, core.unacked_count) == (0, 300)
    accounted(core, 300)


def test_take_pending_splits_a_submitted_list_and_keeps_the_rest_first() -> None:
    core = delivery()
    records = make_records(10, "unit/w0/1")
    core.add(records, 5.0)
    first_s, taken = core.take_pending(4)
    assert (first_s, [r.sequence for r in taken]) == (5.0, [1, 2, 3, 4])
    _, rest = core.take_pending(100)
    assert [r.sequence for r in rest] == list(range(5, 11))
    assert core.pending_count == 0


def test_a_full_builder_starts_a_new_batch_for_the_same_partition() -> None:
    core = delivery(partitions=1, batch_bytes=4096)
    core.add(make_records(200, "unit/w0/1"), 0.0)
    batches = core.from_pending(1000, NOW_MS)
    assert len(batches) > 1
    assert all(b.partition == 0 for b in batches)
    assert [s for b in batches for s in sequences(b)] == list(range(1, 201))


def test_acks_failures_and_retries_keep_the_books_balanced() -> None:
    core = delivery()
    core.add(make_records(500, "unit/w0/1"), 0.0)
    first, second, third, *rest = core.from_pending(1000, NOW_MS)
    assert core.acked(first, 1.5) == len(first.values)
    assert core.latencies == [1.5]
    core.rejected(second)
    core.to_retry(third)
    assert core.failed == len(second.values)
    assert core.retried == len(third.values)
    accounted(core, 500)
    assert core.waiting()
    # a retried batch keeps its partition and its order, and goes out before anything new
    (again,) = core.rebuild_retries(1, NOW_MS)
    assert again.partition == third.partition
    assert sequences(again) == sequences(third)
    for batch in (again, *rest):
        core.acked(batch, 2.0)
    accounted(core, 500)
    assert core.delivered + core.failed == 500
    assert core.memory_records() == 0


def test_a_lost_producer_hands_every_unfinished_batch_to_the_next_in_order() -> None:
    core = delivery()
    core.add(make_records(300, "unit/w0/1"), 0.0)
    batches = core.from_pending(1000, NOW_MS)
    core.acked(batches[0], 1.0)
    core.take_back_unacked()
    assert all(b.abandoned for b in batches[1:])
    assert [b.values for b in core.retry] == [b.values for b in batches[1:]]
    core.acked(batches[1], 1.0)  # a late callback of the old producer: the caller ignores it
    accounted(core, 300 + len(batches[1].values))  # counted twice: why callers skip abandoned
    rebuilt = core.rebuild_retries(1000, NOW_MS)
    assert [b.partition for b in rebuilt] == [b.partition for b in batches[1:]]


def test_parking_memory_takes_in_flight_then_retries_then_pending() -> None:
    core = delivery(partitions=1)
    records = make_records(30, "unit/w0/1")
    core.add(records[:10], 0.0)
    (in_flight,) = core.from_pending(10, NOW_MS)
    core.add(records[10:20], 0.0)
    (retried,) = core.from_pending(10, NOW_MS)
    core.to_retry(retried)
    core.add(records[20:], 0.0)
    on_disk = Parked(JSON, [b"k"], [b"v"], [], [])  # from an old segment: no exporter/sequence
    replayed = core.from_chunk(on_disk, 0.0, 7, NOW_MS)
    parked = core.park_memory(4)
    order = [decode(v).sequence for p in parked for v in p.values]
    assert order == list(range(1, 31))
    assert in_flight.abandoned
    assert core.memory_records() == 1  # only the batch read from spool segment 7
    assert list(core.unacked) == replayed


def test_a_refused_batch_goes_out_again_first_in_two_halves() -> None:
    core = delivery(partitions=1, batch_bytes=4096)
    core.add(make_records(100, "unit/w0/1"), 0.0)
    first, second, *rest = core.from_pending(1000, NOW_MS)
    core.to_retry(second)  # failed behind the refused one, out of sequence
    assert core.split_for_retry(first)
    assert [len(b.values) for b in core.retry][:2] == [
        len(first.values) // 2,
        len(first.values) - len(first.values) // 2,
    ]
    again = core.rebuild_retries(1000, NOW_MS)
    assert [s for b in again for s in sequences(b)] == sequences(first) + sequences(second)
    single = Batch(0, JSON, 0.0, None, keys=[b"k"], values=[b"v"])
    assert not core.split_for_retry(single)  # nothing smaller to send: the caller rejects it
    for batch in (*again, *rest):
        core.acked(batch, 1.0)
    accounted(core, 100)


def test_a_record_no_batch_can_hold_is_refused_before_sending_and_counted() -> None:
    core = delivery(partitions=1)
    core.max_record_bytes = 2000
    records = make_records(5, "unit/w0/1")
    records[2] = msgspec.structs.replace(records[2], session="x" * 3000)
    core.add(records, 0.0)
    (batch,) = core.from_pending(100, NOW_MS)
    assert sequences(batch) == [1, 2, 4, 5]
    assert core.failed == 1
    ((segment, size),) = core.oversized
    assert segment is None
    assert size > 3000
    core.acked(batch, 1.0)
    accounted(core, 5)


def test_memory_is_counted_in_bytes_too() -> None:
    core = delivery()
    records = make_records(1000, "unit/w0/1")
    core.add(records[:500], 0.0)
    batches = core.from_pending(500, NOW_MS)
    exact = sum(b.size for b in batches)
    assert core.memory_bytes() == exact
    assert abs(core.record_bytes - exact / 500) < exact / 500  # learned from what was encoded
    core.add(records[500:], 0.0)
    estimate = core.memory_bytes() - exact
    assert 0.5 * exact < estimate < 2 * exact  # 500 more of the same kind
    core.to_retry(batches[0])
    assert core.memory_bytes() == exact + estimate
    core.acked(batches[1], 1.0)
    assert core.memory_bytes() == exact - batches[1].size + estimate
