"""The contract between the service and every sink: the ``Sink`` protocol and ``SinkStatus``.

It sits below both the sink factory (``io/sinks.py``) and the sinks themselves (``io/kafka``), so
neither has to import the other to agree on it.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from collector.records import FlowRecord


class SinkStatus(msgspec.Struct, kw_only=True):
    """A sink's health and counters (counters are totals since start)."""

    state: Literal["ok", "degraded", "failed"] = "ok"
    detail: str = ""
    queue_records: int = 0
    spool_bytes: int = 0
    delivered: int = 0
    sent_unacknowledged: int = 0
    """Records written to the broker with acks = 0: sent, never acknowledged, so never counted
    delivered (the broker may not have them)."""
    retried: int = 0
    failed: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    """Records the broker refused for good (authorization, policy, timestamp), kept in the
    dead-letter spool directory instead of being retried forever."""
    dead_lettered_by_error: dict[str, int] = msgspec.field(default_factory=dict)
    """Of ``dead_lettered``: per broker error (its class name; a bounded set)."""
    quarantined_segments: int = 0
    """Spool segments found damaged and moved aside to quarantine/ (kept, not replayed)."""
    failures: int = 0
    task_restarts: int = 0
    topic_recreations: int = 0
    """Kafka: times this process created the topic again after it was deleted while the collector
    ran (only with kafka.create_topic on; records delivered before the deletion are gone)."""
    """Tasks of the sink found dead and replaced (Kafka: pump, watch, a partition's sender, the
    connect loop, aiokafka's sender task)."""
    unwritten_records: int = -1
    """Records held only in memory (neither acknowledged nor on disk): what a crash of the process
    would lose now; -1 when the sink cannot tell (then queue_records is the bound)."""
    latency_observations: list[float] = msgspec.field(default_factory=list)


class Sink(Protocol):
    """What the service needs from a sink."""

    name: str

    async def start(self) -> None:
        """Connect; raise SinkError/ConfigError on bad settings within a bounded time."""

    def submit(self, records: list[FlowRecord]) -> None:
        """Take ownership of records; never blocks, never raises."""

    async def flush(self, timeout_s: float) -> None:
        """Deliver (or safely park) everything submitted so far."""

    async def close(self) -> None:
        """Release resources after a flush."""

    def status(self) -> SinkStatus:
        """Current state and counters; drains latency observations."""
