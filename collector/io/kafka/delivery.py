"""The broker-free core of the Kafka sink: which records are where, and what was counted.

A record submitted to the sink is, until it leaves memory, in exactly one of three places::

    pending   submitted, not yet encoded (FIFO of the lists submit() was given)
    unacked   encoded into a Batch handed (or about to be handed) to the producer
    retry     in a Batch the producer failed to deliver, waiting for its turn again

``Delivery`` moves records between them and counts what leaves memory: ``delivered`` (acknowledged),
``failed`` (rejected by the broker for what they are) and, through the sink, spooled or dropped. It
builds batches with a BatchBuilder factory it is given and never talks to a broker, so it is tested
without one. The sink (``sink.py``) decides when to call what.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector.io.kafka.partitioner import kafka_hash, partitions_for
from collector.records import FlowRecord

RECORD_OVERHEAD_BYTES = 96
"""Bytes a record adds to a batch beyond its key and value: varint framing and the three headers
(their values are at most 64 bytes together for real exporters)."""
MAX_LATENCY_OBSERVATIONS = 10_000
"""One per delivered batch, drained by status(); bounded in case nobody asks."""


@dataclass(slots=True, eq=False)
class Batch:
    """Records bound for one partition, kept (encoded) until the broker acknowledges them."""

    partition: int
    content_type: str
    first_s: float
    """Monotonic time the oldest record was submitted (latency)."""
    segment: int | None
    """Spool segment the records came from; None for records only held in memory."""
    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    exporters: list[bytes] = field(default_factory=list)
    """Per record, for the ``exporter`` header; empty for records of an old spool segment."""
    sequences: list[int] = field(default_factory=list)
    size: int = 0
    """Bytes of keys and values (what the batch holds in memory, give or take)."""
    builder: Any = None
    sent_s: float = 0.0
    """When the producer took the batch; 0 while it is being built or handed over."""
    abandoned: bool = False
    """Taken back (spooled, or retried by another producer); a late callback no longer counts."""
    attempts: int = 0
    """Times the broker refused these records with an error the sink does not know (bounded:
    see UNKNOWN_ERROR_ATTEMPTS in sink.py)."""
    order: int = 0
    """Position of the batch's first record in the order records were submitted (kept by every
    rebuild): what is retried goes out oldest first, whatever took it back."""


@dataclass(slots=True)
class Parked:
    """Encoded records that must leave memory for the spool, in order."""

    content_type: str
    keys: list[bytes]
    values: list[bytes]
    exporters: list[bytes]
    sequences: list[int]


def key_hash(key: bytes) -> int:
    """The partitioning hash of a key: Kafka's own (partitioner.py), so the partition is this
    modulo the partition count, as the Java client's default partitioner picks it."""
    return kafka_hash(key)


class Delivery:
    """Pending, unacknowledged and retried records, and the counts of what left memory."""

    def __init__(
        self,
        new_builder: Callable[[], Any],
        encode: Callable[[FlowRecord], bytes],
        content_type: str,
    ) -> None:
        """``new_builder``: returns an empty aiokafka BatchBuilder (``producer.create_batch``)."""
        self.new_builder = new_builder
        self.encode = encode
        self.content_type = content_type
        self.partitions: list[int] = []
        self.pending: deque[tuple[float, list[FlowRecord]]] = deque()
        self.pending_count = 0
        self.record_bytes = 512.0
        """Running average of an encoded record's key and value (pending records are not encoded
        yet: their bytes are estimated with it)."""
        self.unacked: dict[Batch, None] = {}  # insertion-ordered set: oldest first
        self.unacked_count = 0
        self.unacked_bytes = 0
        self.retry: deque[Batch] = deque()
        self.retry_count = 0
        self.retry_bytes = 0
        self.delivered = 0
        self.unacknowledged = False
        """acks = 0: the broker answers nothing, so "acked" batches were only sent."""
        self.sent_unacknowledged = 0
        self.retried = 0
        self.failed = 0
        self.dead_lettered = 0
        self.latencies: list[float] = []
        self.orders = 0
        """The last ``Batch.order`` given out."""
        self.max_record_bytes = 1 << 62
        """Largest record (key, value, headers) a batch may hold; the sink sets the topic's."""
        self.unencodable: list[str] = []
        """Why each record the encoder raised for since the sink last looked was left out;
        counted in ``failed`` already."""
        self.oversized: list[tuple[int | None, int]] = []
        """(spool segment, size) of records refused as too large since the sink last looked;
        counted in ``failed`` already."""

    # -- where records are ---------------------------------------------------------------------

    def memory_records(self) -> int:
        return self.pending_count + self.unacked_count + self.retry_count

    def memory_bytes(self) -> int:
        """Bytes of records in memory: exact for encoded ones, estimated for pending ones."""
        return int(self.pending_count * self.record_bytes) + self.unacked_bytes + self.retry_bytes

    def waiting(self) -> bool:
        """Batches wait for the broker: handed to the producer, or due for a retry."""
        return bool(self.retry) or any(b.sent_s for b in self.unacked)

    def add(self, records: list[FlowRecord], now: float) -> None:
        self.pending.append((now, records))
        self.pending_count += len(records)

    def take_pending(self, limit: int) -> tuple[float, list[FlowRecord]]:
        """The oldest ``limit`` pending records and when the first of them was submitted."""
        taken: list[FlowRecord] = []
        first_s = 0.0
        pending = self.pending
        while pending and len(taken) < limit:
            submitted, records = pending[0]
            if not taken:
                first_s = submitted
            need = limit - len(taken)
            if len(records) <= need:
                pending.popleft()
                taken.extend(records)
            else:
                taken.extend(records[:need])
                pending[0] = (submitted, records[need:])
        self.pending_count -= len(taken)
        return first_s, taken

    def encode_pending(self, limit: int) -> Parked | None:
        """The oldest ``limit`` pending records encoded, for the spool (a record that cannot be
        encoded is counted as failed: see encoded)."""
        _, records = self.take_pending(limit)
        if not records:
            return None
        records, values = self.encoded(records)
        return Parked(
            self.content_type,
            [r.flow_id.encode() for r in records],
            values,
            _exporter_bytes(records),
            [r.sequence for r in records],
        )

    def encoded(self, records: list[FlowRecord]) -> tuple[list[FlowRecord], list[bytes]]:
        """``records`` and their values, without those the encoder raised for: each is counted
        as failed and noted in ``unencodable`` (the sink logs the reason). An encoder bug costs
        the records it cannot encode, counted, never the rest of the cycle."""
        encode = self.encode
        with contextlib.suppress(Exception):  # else find the records it fails on, one by one
            return records, [encode(r) for r in records]
        kept, values = [], []
        for record in records:
            try:
                value = encode(record)
            except Exception as exc:  # counted and noted for the log
                self.failed += 1
                self.unencodable.append(f"{type(exc).__name__}: {exc}")
                continue
            kept.append(record)
            values.append(value)
        return kept, values

    # -- building batches ----------------------------------------------------------------------

    def from_pending(self, limit: int, timestamp_ms: int) -> list[Batch]:
        """Encode and partition the oldest ``limit`` pending records into tracked batches. When
        building fails unexpectedly (a bug), the records go back to the front of ``pending``
        before the exception goes on: none is lost with the cycle."""
        first_s, taken = self.take_pending(limit)
        records, values = self.encoded(taken)
        try:
            return self._from_encoded(records, values, first_s, timestamp_ms)
        except BaseException:
            if records:
                self.pending.appendleft((first_s, records))
                self.pending_count += len(records)
            raise

    def _from_encoded(
        self, records: list[FlowRecord], values: list[bytes], first_s: float, timestamp_ms: int
    ) -> list[Batch]:
        keys = [r.flow_id.encode() for r in records]
        if values:
            average = (sum(map(len, values)) + sum(map(len, keys))) / len(values)
            self.record_bytes += (average - self.record_bytes) * 0.25
        chosen = partitions_for(keys, self.partitions)
        batches = self.fill(
            Parked(
                self.content_type,
                keys,
                values,
                _exporter_bytes(records),
                [r.sequence for r in records],
            ),
            chosen,
            first_s,
            None,
            timestamp_ms,
        )
        return self.track(batches)

    def from_chunk(
        self,
        records: Parked,
        first_s: float,
        segment: int | None,
        timestamp_ms: int,
        *,
        partition: int | None = None,
        attempts: int = 0,
        order: int | None = None,
    ) -> list[Batch]:
        """Tracked batches of already encoded records (a spool chunk, a retried batch, which
        keeps its ``attempts`` and ``order``)."""
        if partition is not None:
            chosen = [partition] * len(records.keys)
        else:
            chosen = partitions_for(records.keys, self.partitions)
        batches = self.fill(records, chosen, first_s, segment, timestamp_ms)
        for batch in batches:
            batch.attempts = attempts
            if order is not None:
                batch.order = order
        return self.track(batches)

    def rebuild_retries(self, room: int, timestamp_ms: int) -> list[Batch]:
        """Fresh batches for the oldest retries, at least one, about ``room`` records in all;
        a batch keeps its partition while that partition exists (order within it is kept)."""
        out: list[Batch] = []
        taken = 0
        while self.retry and (taken < room or not out):
            old = self.retry[0]
            out.extend(  # a failure leaves ``old`` first in the queue (a bug: nothing lost)
                self.from_chunk(
                    _parked(old),
                    old.first_s,
                    old.segment,
                    timestamp_ms,
                    partition=old.partition if old.partition in self.partitions else None,
                    attempts=old.attempts,
                    order=old.order,
                )
            )
            self.retry.popleft()
            self.retry_count -= len(old.values)
            self.retry_bytes -= old.size
            taken += len(old.values)
        return out

    def fill(
        self,
        records: Parked,
        chosen: list[int],
        first_s: float,
        segment: int | None,
        timestamp_ms: int,
    ) -> list[Batch]:
        """Append records to one BatchBuilder per partition (a new one when it is full), in order
        within each partition. Every message carries ``content-type``, and ``exporter`` and
        ``sequence`` (decimal) when known: consumers spot duplicates and gaps whatever the value
        format. (Grouped by partition first: per-record work stays in comprehensions.)"""
        keys, values = records.keys, records.values
        type_header = ("content-type", records.content_type.encode())
        distinct = set(records.exporters)
        if len(distinct) == 1:  # the common case: one worker's records, one exporter tuple
            exporter = ("exporter", distinct.pop())
            headers = [
                [type_header, exporter, ("sequence", q)]
                for q in map(b"%d".__mod__, records.sequences)
            ]
        elif distinct:
            named = {e: ("exporter", e) for e in distinct}
            headers = [
                [type_header, named[e], ("sequence", b"%d" % q)]
                for e, q in zip(records.exporters, records.sequences, strict=True)
            ]
        else:
            headers = [[type_header]] * len(keys)
        sizes = [len(k) + len(v) for k, v in zip(keys, values, strict=True)]
        limit = self.max_record_bytes - RECORD_OVERHEAD_BYTES
        by_partition: dict[int, list[int]] = {}
        for i, partition in enumerate(chosen):
            if sizes[i] > limit:  # no batch the broker takes can hold it
                self.failed += 1
                self.oversized.append((segment, sizes[i] + RECORD_OVERHEAD_BYTES))
                continue
            by_partition.setdefault(partition, []).append(i)
        out: list[Batch] = []
        for partition, indices in by_partition.items():
            builder = self.new_builder()
            start = 0
            for j, i in enumerate(indices):
                key, value, header = keys[i], values[i], headers[i]
                appended = builder.append(
                    timestamp=timestamp_ms, key=key, value=value, headers=header
                )
                if appended is not None:
                    continue
                out.append(
                    self._batch(
                        records, partition, first_s, segment, builder, indices[start:j], sizes
                    )
                )
                builder = self.new_builder()
                builder.append(timestamp=timestamp_ms, key=key, value=value, headers=header)
                start = j
            out.append(
                self._batch(records, partition, first_s, segment, builder, indices[start:], sizes)
            )
        return out

    @staticmethod
    def _batch(
        records: Parked,
        partition: int,
        first_s: float,
        segment: int | None,
        builder: Any,
        indices: list[int],
        sizes: list[int],
    ) -> Batch:
        keys, values = records.keys, records.values
        exporters, sequences = records.exporters, records.sequences
        return Batch(
            partition,
            records.content_type,
            first_s,
            segment,
            keys=[keys[i] for i in indices],
            values=[values[i] for i in indices],
            exporters=[exporters[i] for i in indices] if exporters else [],
            sequences=[sequences[i] for i in indices] if exporters else [],
            size=sum([sizes[i] for i in indices]),
            builder=builder,
        )

    def track(self, batches: list[Batch]) -> list[Batch]:
        for batch in batches:
            if not batch.order:
                self.orders += 1
                batch.order = self.orders
            batch.builder.close()
            self.unacked[batch] = None
            self.unacked_count += len(batch.values)
            self.unacked_bytes += batch.size
        return batches

    # -- outcomes ------------------------------------------------------------------------------

    def _untrack(self, batch: Batch) -> int:
        count = len(batch.values)
        if batch in self.unacked:
            del self.unacked[batch]
            self.unacked_count -= count
            self.unacked_bytes -= batch.size
        return count

    def acked(self, batch: Batch, now: float) -> int:
        """The broker acknowledged ``batch``: its records are delivered; returns how many. With
        acks = 0 the producer reports a batch done once written to the socket: sent, not
        delivered."""
        count = self._untrack(batch)
        if self.unacknowledged:
            self.sent_unacknowledged += count
        else:
            self.delivered += count
        if len(self.latencies) < MAX_LATENCY_OBSERVATIONS:
            self.latencies.append(now - batch.first_s)
        return count

    def rejected(self, batch: Batch) -> int:
        """The broker refused ``batch`` for good: its records failed; returns how many."""
        count = self._untrack(batch)
        self.failed += count
        return count

    def dead_letter(self, batch: Batch) -> int:
        """The broker refused ``batch`` for a reason waiting does not fix: its records leave
        memory for the dead-letter spool (the caller writes them); returns how many."""
        count = self._untrack(batch)
        self.dead_lettered += count
        return count

    def to_retry(self, batch: Batch) -> int:
        """``batch`` goes out again later, in submission order among the retries waiting."""
        count = self._untrack(batch)
        self.retried += count
        bisect.insort(self.retry, batch, key=_submitted)
        self.retry_count += count
        self.retry_bytes += batch.size
        return count

    def split_for_retry(self, batch: Batch) -> bool:
        """The broker refused ``batch`` as too large: its records go out again first, as two
        halves in order (rebuilt under the current batch limit). False for a single record: nothing smaller
        can be sent, the caller rejects it."""
        count = len(batch.values)
        if count < 2:
            return False
        self._untrack(batch)
        half = count // 2
        # in submission order (the halves keep the batch's place): later batches of the
        # partition (failed behind this one, out of sequence) must not overtake it
        for part in (slice(0, half), slice(half, count)):
            piece = Batch(
                batch.partition,
                batch.content_type,
                batch.first_s,
                batch.segment,
                keys=batch.keys[part],
                values=batch.values[part],
                exporters=batch.exporters[part],
                sequences=batch.sequences[part],
                attempts=batch.attempts,
                order=batch.order,
            )
            piece.size = sum(map(len, piece.keys)) + sum(map(len, piece.values))
            bisect.insort(self.retry, piece, key=_submitted)
            self.retry_count += len(piece.values)
            self.retry_bytes += piece.size
        self.retried += count
        return True

    def take_back_unacked(self) -> None:
        """After a producer is gone, every batch it did not finish is retried by the next one
        (the old object is marked abandoned so a late callback cannot count it twice). The retry
        queue stays in submission order: a batch taken back goes out before anything newer for
        its partition that failed earlier."""
        for batch in list(self.unacked):
            if batch.abandoned:
                continue
            batch.abandoned = True
            self._untrack(batch)
            self.retried += len(batch.values)
            self._queue_retry(_copy(batch))
        self.retry = deque(sorted(self.retry, key=_submitted))

    def _queue_retry(self, batch: Batch) -> None:
        self.retry.append(batch)
        self.retry_count += len(batch.values)
        self.retry_bytes += batch.size

    def held_partitions(self) -> set[int]:
        """Partitions with records waiting for a retry: newer records for them wait behind."""
        return {batch.partition for batch in self.retry}

    def hold_behind_retries(self, batches: list[Batch], held: set[int]) -> list[Batch]:
        """New batches for a partition in ``held`` queue behind its retries (never sent ahead of
        them); returns the others, to send now: one partition's trouble holds only its own
        records."""
        if not held:
            return batches
        out = []
        for batch in batches:
            if batch.partition in held:
                self._untrack(batch)
                self._queue_retry(_copy(batch))
            else:
                out.append(batch)
        return out

    def park_memory(self, slice_records: int) -> list[Parked]:
        """Everything held only in memory, for the spool, oldest first: in-flight batches
        (abandoned: a late ack is not counted), retries, then pending. Batches read from the spool
        stay: their records are still on disk."""
        out: list[Parked] = []
        for batch in [b for b in self.unacked if b.segment is None and not b.abandoned]:
            batch.abandoned = True
            self._untrack(batch)
            out.append(_parked(batch))
        keep: deque[Batch] = deque()
        for batch in self.retry:
            if batch.segment is None:
                out.append(_parked(batch))
                self.retry_count -= len(batch.values)
                self.retry_bytes -= batch.size
            else:
                keep.append(batch)
        self.retry = keep
        while (parked := self.encode_pending(slice_records)) is not None:
            out.append(parked)
        return out


def _submitted(batch: Batch) -> int:
    return batch.order


def _copy(batch: Batch) -> Batch:
    """The records of ``batch`` without its builder (rebuilt for the next send)."""
    return Batch(
        batch.partition,
        batch.content_type,
        batch.first_s,
        batch.segment,
        keys=batch.keys,
        values=batch.values,
        exporters=batch.exporters,
        sequences=batch.sequences,
        size=batch.size,
        attempts=batch.attempts,
        order=batch.order,
    )


def _parked(batch: Batch) -> Parked:
    return Parked(batch.content_type, batch.keys, batch.values, batch.exporters, batch.sequences)


def wall_ms(monotonic_s: float) -> int:
    """The wall-clock time (Unix ms) of a monotonic instant: a record's Kafka timestamp is when it
    was submitted (for spooled records: when their segment was started), not when it was sent."""
    return int((time.time() - (time.monotonic() - monotonic_s)) * 1000)


def _exporter_bytes(records: list[FlowRecord]) -> list[bytes]:
    """Each record's exporter, encoded once per distinct name (a worker has one)."""
    encoded: dict[str, bytes] = {}
    out = []
    for record in records:
        name = record.exporter
        value = encoded.get(name)
        if value is None:
            value = encoded[name] = name.encode()
        out.append(value)
    return out
