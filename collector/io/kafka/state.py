"""The Kafka sink's one state (what it does with records right now, see ``State``), the bound on
what it holds in memory (kafka.queue_bytes and its shares) and what it says of itself (status,
health: 'failed' only for what makes this instance unable to work, see Reporting._degrade)."""

from __future__ import annotations

import enum
import time
from typing import Literal

from collector.config import KafkaConfig
from collector.io.kafka.delivery import Delivery
from collector.io.kafka.spooling import SinkSpool
from collector.io.sink import SinkStatus

SPILL_SLICE_RECORDS = 8192
"""Records encoded for the spool per event-loop callback while spilling."""
MAX_PARKING_RECORDS = 4 * SPILL_SLICE_RECORDS
"""Encoded records waiting for the spool thread: bounds memory while the disk is slow."""
IN_FLIGHT_SHARE = 0.5
"""Of kafka.queue_bytes: batches in flight or waiting for a retry (the pump waits beyond)."""
SPILL_AT = 0.75
"""Of kafka.queue_bytes: records in memory beyond which new ones spill to the spool."""
PARKING_SHARE = 0.125
"""Of kafka.queue_bytes: encoded records handed to the spool thread, not yet written; beyond it
the spill waits for the thread, and records pile up (pending) until held_bytes reaches
kafka.queue_bytes, then new ones are dropped and counted."""
RECENT_S = 60.0
"""A drop or a data problem stays in status() for this long ('failed' or 'degraded')."""


class State(enum.Enum):
    """What the sink does with records right now.

    ========= ============================================== ==========================
    state     meaning                                        new records go
    ========= ============================================== ==========================
    OFFLINE   no producer: not started, reconnecting         to the spool
    REPLAYING connected; the spool holds records             to the spool, behind them
    DIRECT    connected; the spool is drained                to the broker from memory
    STALLED   connected; no ack for STALL_S while waiting    to the spool
    CLOSED    close() ran                                    dropped and counted
    ========= ============================================== ==========================

    Retries of batches already built go out in every state but OFFLINE and CLOSED (they also
    probe a stalled broker). An acknowledgement ends STALLED (to REPLAYING); a drained spool ends
    REPLAYING; a producer reset or a failed connect means OFFLINE.
    """

    OFFLINE = "offline"
    REPLAYING = "replaying"
    DIRECT = "direct"
    STALLED = "stalled"
    CLOSED = "closed"


CONNECTED = (State.REPLAYING, State.DIRECT, State.STALLED)
"""A producer exists (it may be stalled)."""
SPOOLING = (State.OFFLINE, State.REPLAYING, State.STALLED)
"""New records go to the spool, not to the broker."""


Health = Literal["ok", "degraded", "failed"]


def health(
    state: State, spool_bytes: int, connect_error: str, retrying: int, last_error: str
) -> tuple[Health, str]:
    """What /healthz says of a sink in ``state`` that lost nothing lately."""
    if state is State.OFFLINE:
        return "degraded", f"{connect_error or 'not connected'}; spooling ({spool_bytes} bytes)"
    if state is State.STALLED:
        return "degraded", f"Kafka is not acknowledging; spooling ({spool_bytes} bytes)"
    if state is State.REPLAYING or spool_bytes:
        return "degraded", f"replaying the spool ({spool_bytes} bytes)"
    if retrying:
        return "degraded", f"retrying {retrying} records: {last_error}"
    return "ok", ""


class Reporting:
    """What the Kafka sink holds (the memory bound) and says of itself: status() for /healthz and
    /metrics, and the crash window (a part of KafkaSink, kept here to keep sink.py about moving
    records)."""

    spool: SinkSpool
    state: State
    _config: KafkaConfig
    _delivery: Delivery | None
    _connect_error: str
    _last_error: str
    _error: str
    _error_s: float
    _problem: str
    _problem_s: float
    _failures: int
    task_restarts: int
    dead_lettered_by_reason: dict[str, int]

    @property
    def delivery(self) -> Delivery:
        assert self._delivery is not None, "start() builds the delivery core"
        return self._delivery

    def _memory_full(self) -> bool:
        """Time to spill: more than kafka.queue_records records, or more than SPILL_AT of
        kafka.queue_bytes, are in memory (see held_bytes for the whole bound)."""
        delivery = self.delivery
        return (
            delivery.memory_records() > self._config.queue_records
            or delivery.memory_bytes() > self._config.queue_bytes * SPILL_AT
        )

    @property
    def held_bytes(self) -> int:
        """Every byte of records the sink holds in memory: pending (estimated), in flight,
        waiting for a retry, and handed to the spool thread (spill, dead letters) but not
        written. Bounded by kafka.queue_bytes (plus the list being submitted): in flight at most
        IN_FLIGHT_SHARE of it, spilling from SPILL_AT, the spool thread given at most
        PARKING_SHARE; what would go beyond is dropped and counted (submit)."""
        return self.delivery.memory_bytes() + self.spool.parking_bytes

    def _slice_records(self) -> int:
        """Records per spill slice: SPILL_SLICE_RECORDS, fewer when records are large."""
        share = self._config.queue_bytes * PARKING_SHARE / 2
        return max(1, min(SPILL_SLICE_RECORDS, int(share / self.delivery.record_bytes)))

    def _spool_behind(self) -> bool:
        spool = self.spool
        return (
            spool.parking >= MAX_PARKING_RECORDS
            or spool.parking_bytes >= self._config.queue_bytes * PARKING_SHARE
        )

    def _set_error(self, message: str) -> None:
        self._error = message
        self._error_s = time.monotonic()

    def _degrade(self, message: str) -> None:
        """Something went wrong that costs no traffic on this instance: records refused for what
        they are (too large, not encodable, rejected, dead-lettered; counted and logged) or a
        task of the sink replaced. /healthz says 'degraded' for RECENT_S, never 'failed': the
        same record would fail on every collector, 503 would take them all out of the NLB, and an
        NLB whose targets are all unhealthy fails open. 'failed' means this instance cannot
        work."""
        self._problem, self._problem_s = message, time.monotonic()

    def status(self) -> SinkStatus:
        """State, detail and counters; hands over (and forgets) the latency observations."""
        now = time.monotonic()
        spool_bytes = self.spool.size_bytes
        delivery = self._delivery
        recent = now - RECENT_S
        state: Health
        if self.spool.write_error_s > recent:
            state, detail = "failed", f"dropping records: {self.spool.write_error}"
        elif self.spool.dropped_s > recent:
            state, detail = "failed", f"dropping records: {self.spool.drop_reason}"
        elif self._error and self._error_s > recent:
            state, detail = "failed", self._error
        else:
            retrying = delivery.retry_count if delivery is not None else 0
            state, detail = health(
                self.state, spool_bytes, self._connect_error, retrying, self._last_error
            )
            if self._problem_s > recent:  # see _degrade: said first, never 'failed'
                state = "degraded"
                detail = f"{self._problem}; {detail}" if detail else self._problem
        if delivery is None:
            return SinkStatus(state=state, detail=detail, dropped=self.spool.dropped)
        observations, delivery.latencies = delivery.latencies, []
        return SinkStatus(
            state=state,
            detail=detail,
            queue_records=delivery.memory_records() + self.spool.parking,
            spool_bytes=spool_bytes,
            delivered=delivery.delivered,
            sent_unacknowledged=delivery.sent_unacknowledged,
            retried=delivery.retried,
            failed=delivery.failed,
            dropped=self.spool.dropped,
            dead_lettered=self.spool.dead_lettered,
            dead_lettered_by_error=dict(self.dead_lettered_by_reason),
            quarantined_segments=self.spool.quarantined_segments,
            failures=self._failures,
            task_restarts=self.task_restarts,
            unwritten_records=self.unwritten_records,
            latency_observations=observations,
        )

    @property
    def unwritten_records(self) -> int:
        """Records submitted that are neither acknowledged nor on disk: what a crash of this
        process would lose now (with kafka.wal, only those not yet handed to the spool thread's
        write; what the spool thread wrote is in the kernel's page cache)."""
        delivery = self.delivery
        in_memory_only = delivery.pending_count + self.spool.parking
        if self._config.wal:
            return in_memory_only
        spooled = sum(len(b.values) for b in delivery.unacked if b.segment is not None)
        spooled += sum(len(b.values) for b in delivery.retry if b.segment is not None)
        return delivery.memory_records() + self.spool.parking - spooled
