"""The Kafka sink's watch: a stalled broker, the topic's partitions, and the sink's own tasks.

Every WATCH_INTERVAL_S the watch notices a broker that stopped acknowledging (and spools
meanwhile), reads the topic's partitions again when due, publishes a dead exporter's end marker
when due, and checks that the tasks delivery depends on are alive: the pump, each partition's
sender, the connect loop, aiokafka's sender task. One that died is logged, counted (``failures``,
``task_restarts``), replaced, and /healthz says 'degraded' for a while. The watch itself is
checked by the receive path (KafkaSink.submit). A part of KafkaSink, kept here to keep sink.py
about moving records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from aiokafka.errors import KafkaError

from collector.errors import SinkError
from collector.io.kafka import client, workarounds
from collector.io.kafka.delivery import Batch
from collector.io.kafka.spooling import RateLimitedLog
from collector.io.kafka.state import CONNECTED, Reporting, State

log = logging.getLogger("collector.io.kafka.sink")

STALL_S = 5.0
"""No acknowledgement for this long while batches are in flight: the broker is slow or away, so new
records go to the spool instead of piling up in memory."""
WATCH_INTERVAL_S = 0.5
PARTITIONS_REFRESH_S = 30.0
"""The topic's partitions are read from metadata this often (and after an unknown error), not
only at connect: partitions added mid-run are used."""


class Watching(Reporting):
    """The watch of KafkaSink (see the module docstring)."""

    _producer: Any
    _retiring: Any
    _topic: str
    _servers: list[str]
    _client: dict[str, Any]
    _busy_since: float
    _last_ack_s: float
    _refresh_partitions: bool
    _ratelimited: RateLimitedLog
    _tasks: list[asyncio.Task[None]]
    _queued: dict[int, deque[Batch]]
    _senders: dict[int, asyncio.Task[None]]
    _connect_task: asyncio.Task[None] | None
    _end_marker_task: asyncio.Task[None] | None
    task_restarts: int

    # provided by KafkaSink
    def _schedule_spill(self) -> None:
        raise NotImplementedError

    def _reset_producer(self, reason: str, *, graceful: bool = True) -> None:
        raise NotImplementedError

    async def _pump(self) -> None:
        raise NotImplementedError

    async def _connect_loop(self) -> None:
        raise NotImplementedError

    async def _send_queued(self, partition: int) -> None:
        raise NotImplementedError

    def _end_marker_due(self) -> bool:
        """The slot's previous exporter died (see exporter_end) and the records it left in the
        spool are delivered (so they are not taken for lost): time to say where it ended."""
        return (
            self._config.end_markers
            and self.spool.previous_end is not None
            and self.state in CONNECTED
            and (self._end_marker_task is None or self._end_marker_task.done())
            and not self.spool.holds_inherited()
        )

    async def _publish_end_marker(self) -> None:
        """Kept for a later try when the broker does not take it."""
        end = self.spool.previous_end
        if end is not None and await client.publish_end_marker(self._producer, self._topic, end):
            self.spool.previous_end = None

    async def _stop_senders(self) -> None:
        senders = list(self._senders.values())
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        self._senders.clear()
        self._queued.clear()

    async def _watch(self) -> None:
        """The watch loop; an unexpected error in one round is logged and counted, the next
        round runs all the same."""
        busy = [False]
        marks = {"probed": 0.0, "refreshed": time.monotonic()}
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                await self._watch_round(busy, marks)
            except Exception:
                self._failures += 1
                log.exception("Kafka watch error; watching on")

    async def _watch_round(self, busy: list[bool], marks: dict[str, float]) -> None:
        """Notice a broker that stopped acknowledging (aiokafka retries in-flight batches of an
        idempotent producer forever, silently) and route new records to the spool meanwhile.
        Stalled: batches wait for acknowledgement (or a retry) and nothing was acknowledged for
        STALL_S since they started waiting. Only an acknowledgement ends it."""
        self._supervise()
        if self._end_marker_due():
            self._end_marker_task = asyncio.create_task(self._publish_end_marker())
        now = time.monotonic()
        if self.state in CONNECTED and (
            self._refresh_partitions or now - marks["refreshed"] > PARTITIONS_REFRESH_S
        ):
            marks["refreshed"], self._refresh_partitions = now, False
            await self._read_partitions()
        if not self.delivery.waiting():
            busy[0] = False
            return
        if not busy[0]:
            busy[0], self._busy_since = True, now
        quiet_s = now - max(self._busy_since, self._last_ack_s)
        if quiet_s > STALL_S and self.state in (State.DIRECT, State.REPLAYING):
            self.state = State.STALLED
            self._schedule_spill()
            log.warning(
                "Kafka has not acknowledged anything for %.0f s; spooling new records to %s",
                quiet_s,
                self.spool.path,
            )
        if self.state is State.STALLED and now - marks["probed"] > STALL_S:
            marks["probed"] = now
            await self._probe_while_stalled()

    def _supervise(self) -> None:
        """Replace a dead pump or connect loop; a producer whose sender task ended (aiokafka
        takes batches then and never sends them) is replaced in every connected state."""
        if self.state is State.CLOSED or self._retiring is not None:  # closing, or a reset runs
            return
        if self._tasks and self._tasks[0].done():
            self._tasks[0] = self._restarted(self._tasks[0], self._pump)
        connecting = self._connect_task
        if self.state is State.OFFLINE and (connecting is None or connecting.done()):
            if connecting is not None:
                self._connect_task = self._restarted(connecting, self._connect_loop)
            else:
                self._connect_task = asyncio.create_task(self._connect_loop(), name="kafka-connect")
        for partition, queue in self._queued.items():
            sender = self._senders.get(partition)
            if queue and sender is not None and sender.done():
                self._senders[partition] = self._restarted(
                    sender, partial(self._send_queued, partition)
                )
        if self.state in CONNECTED and workarounds.producer_broken(self._producer):
            self._failures += 1
            self.task_restarts += 1
            self._degrade("aiokafka's sender task ended; the producer was replaced")
            self._reset_producer("aiokafka's sender task ended")

    def _restarted(
        self, dead: asyncio.Task[None], run: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None]:
        """A new task in place of ``dead``, which ended when it never should: logged, counted."""
        why = "it was cancelled" if dead.cancelled() else repr(dead.exception())
        name = dead.get_name()
        log.error("the Kafka sink's task %s ended (%s); restarting it", name, why)
        self._failures += 1
        self.task_restarts += 1
        self._degrade(f"restarted the task {name} ({why})")
        return asyncio.create_task(run(), name=name)

    async def _read_partitions(self) -> None:
        """Read the topic's partitions from fresh metadata; a changed list is used from the next
        batch on (a failure keeps the old one: the next period tries again)."""
        producer = self._producer
        try:
            async with asyncio.timeout(self._config.connect_timeout_s):
                await producer.client.force_metadata_update()
                partitions = sorted(await producer.partitions_for(self._topic))
        except (KafkaError, OSError, TimeoutError) as exc:
            self._ratelimited(
                "metadata",
                logging.WARNING,
                "cannot read the partitions of %r: %s",
                self._topic,
                exc,
            )
            return
        if partitions and partitions != self.delivery.partitions and producer is self._producer:
            log.warning(
                "topic %r now has %d partitions (was %d)",
                self._topic,
                len(partitions),
                len(self.delivery.partitions),
            )
            self.delivery.partitions = partitions

    async def _probe_while_stalled(self) -> None:
        """A stalled broker that refuses connections is gone: replace the producer (see
        _reset_producer). One that answers is only slow: keep waiting for its acks."""
        try:
            async with asyncio.timeout(self._config.connect_timeout_s):
                servers = await client.probe(self._servers, self._client, self._config)
                exists = await client.topic_exists(servers, self._client, self._topic)
        except (SinkError, TimeoutError, KafkaError, OSError) as exc:
            if self.state is State.STALLED:
                self._reset_producer(f"Kafka is unreachable ({exc})", graceful=False)
            return
        if not exists and self.state is State.STALLED:  # deleted: aiokafka retries forever
            self._reset_producer(f"topic {self._topic!r} was deleted", graceful=False)
