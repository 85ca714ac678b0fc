"""Per-key order across producer resets, without a broker: whatever takes records back (a reset,
a failure, a split), the retry queue sends them oldest first, so per partition nothing newer
overtakes them. Batches are aiokafka's own BatchBuilder; the records read back with its reader."""

from __future__ import annotations

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from kafka_fixtures import make_records

from collector.encoders import CONTENT_TYPES, encoder_for
from collector.io.kafka.delivery import Batch, Delivery
from collector.records import decode

JSON = CONTENT_TYPES["json"]
NOW_MS = 1_764_100_000_000


def delivery(partitions: int = 1) -> Delivery:
    core = Delivery(lambda: BatchBuilder(1 << 20, 0), encoder_for("json", ""), JSON)
    core.partitions = list(range(partitions))
    return core


def sent(batches: list[Batch]) -> dict[int, list[int]]:
    """Sequences per partition in the order the batches would be sent (built bytes)."""
    out: dict[int, list[int]] = {}
    for batch in batches:
        reader = DefaultRecordBatch(bytes(batch.builder._build()))
        out.setdefault(batch.partition, []).extend(decode(r.value).sequence for r in reader)
    return out


def test_batches_taken_back_from_a_replaced_producer_go_out_before_newer_retries() -> None:
    """Cycle 1 builds A (sequences 1-100), cycle 2 builds B (101-200), same partition. B fails
    first (retry queue); then the producer is replaced while A is still in flight: A is taken
    back. The next producer must send A before B."""
    core = delivery()
    records = make_records(200, "order/w0/1")
    core.add(records[:100], 1.0)
    (older,) = core.from_pending(1000, NOW_MS)
    core.add(records[100:], 2.0)
    (newer,) = core.from_pending(1000, NOW_MS)
    core.to_retry(newer)
    core.take_back_unacked()
    assert older.abandoned
    again = core.rebuild_retries(1000, NOW_MS)
    assert sent(again) == {0: list(range(1, 201))}
    assert core.memory_records() == 200  # nothing lost or doubled on the way


def test_failures_reported_out_of_order_are_retried_in_submission_order() -> None:
    """Three batches of one partition in flight; the broker fails the third, then the first
    (callbacks come in any order), the second is taken back by a reset, and a split of the
    first halves it: the retries still go out 1..300 in order, across two rebuilds."""
    core = delivery()
    records = make_records(300, "order/w0/1")
    built = []
    for first in (0, 100, 200):
        core.add(records[first : first + 100], 1.0)
        built.extend(core.from_pending(1000, NOW_MS))
    one, _, three = built
    core.to_retry(three)
    assert core.split_for_retry(one)
    core.take_back_unacked()
    again = core.rebuild_retries(150, NOW_MS)
    rest = core.rebuild_retries(1000, NOW_MS)
    assert sent(again + rest) == {0: list(range(1, 301))}
    for batch in again:  # a rebuild keeps the place: taken back again, still first
        batch.abandoned = False
    core.take_back_unacked()
    assert [b.sequences[0] for b in core.retry][:1] == [1]
    assert [b.sequences[0] for b in core.retry] == sorted(b.sequences[0] for b in core.retry)
