"""The Kafka sink: batched, idempotent, at-least-once publishing with a disk spool.

How a record travels::

    submit() -> pending (memory, O(1) per call) -> pump: encode, partition, BatchBuilder per partition
             -> producer.send_batch() -> broker ack -> counted delivered, forgotten
    broker slow or away -> pending spills to the spool -> replayed in order when the broker
             acknowledges again -> spool segment deleted after its last ack

A record leaves memory only when the broker acknowledged it, when it is written to the spool, or
when it is counted (failed, dead-lettered, dropped). Memory holds at most ``kafka.queue_records``
records and ``kafka.queue_bytes`` bytes, spool hand-offs included (held_bytes); new records spill
to the spool beyond that and whenever the broker has not acknowledged anything for ``STALL_S``.
Partitions: partitioner.py (Kafka's own). README ("Delivery") states the guarantees.

Broker unreachable at start: with ``kafka.require_broker_at_start`` off (the default for ``run``),
the sink starts degraded and spools until a broker answers, so a fleet that boots during a Kafka
outage keeps taking mirrored traffic. Bad credentials, TLS failures, a missing codec and a topic that
may not be created fail start-up in both modes: waiting cannot fix them.

The sink is in exactly one ``State`` at a time (state.py says what each does with new records).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from functools import partial
from typing import Any

from aiokafka.errors import KafkaConnectionError

from collector.config import KafkaConfig, RecordsConfig
from collector.encoders import CONTENT_TYPES, encoder_for
from collector.errors import SinkError
from collector.io.kafka import client, outcomes, workarounds
from collector.io.kafka.delivery import Batch, Delivery, Parked, wall_ms
from collector.io.kafka.spooling import RateLimitedLog, SinkSpool
from collector.io.kafka.state import (
    CONNECTED,
    IN_FLIGHT_SHARE,
    MAX_PARKING_RECORDS,
    RECENT_S,
    SPILL_SLICE_RECORDS,
    SPOOLING,
    State,
)
from collector.io.kafka.watch import WATCH_INTERVAL_S, Watching
from collector.io.sink import SinkStatus
from collector.io.spool import SpoolChunk, SpoolReadError
from collector.records import FlowRecord

__all__ = ["CYCLE_RECORDS", "MAX_PARKING_RECORDS", "SPILL_SLICE_RECORDS", "KafkaSink"]
log = logging.getLogger(__name__)

CYCLE_RECORDS = 8192
"""Records encoded per pump cycle without yielding: bounds how long the receive path waits."""
LINGER_FULL_RECORDS = 4096
"""Pending records that make a cycle worth starting before linger_ms is up."""
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
LOG_EVERY_S = 10.0
"""Repeated warnings (drops, retries, reconnects) are logged at most this often, with a count."""
CLOSE_TIMEOUT_S = 5.0


class KafkaSink(Watching):
    """``kafka://HOST:PORT[,HOST:PORT]/TOPIC``; see the module docstring for the guarantees."""

    def __init__(
        self,
        bootstrap: list[str],
        topic: str,
        config: KafkaConfig,
        records: RecordsConfig,
        *,
        spool_name: str | None = None,
    ) -> None:
        """``spool_name``: subdirectory of ``kafka.spool_dir`` for this sink; by default each sink
        claims the first free ``TOPIC/wN`` (see SinkSpool.open)."""
        self.name = f"kafka://{','.join(bootstrap)}/{topic}"
        self._servers = list(bootstrap)
        self._topic = topic
        self._config = config
        self._records = records
        self.spool = SinkSpool(config, topic, spool_name)
        """The sink's spool slot: its counters (skipped, corrupt, quarantined, read errors)."""
        self._content_type = CONTENT_TYPES.get(records.format, "application/octet-stream")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delivery: Delivery | None = None

        self.state = State.OFFLINE
        self._producer: Any = None
        self._retiring: Any = None  # a producer being replaced, until it is stopped
        self._producer_kwargs: dict[str, Any] = {}
        self._client: dict[str, Any] = {}  # connection settings, built once (token provider)
        self.batch_bytes = config.max_batch_bytes
        """Largest batch built: kafka.max_batch_bytes, capped below the topic's limit."""
        self._flush_deadline: float | None = None  # while a flush runs: linger no longer waits
        self._spill_handle: asyncio.Handle | None = None
        self._busy_since = 0.0  # when batches last started waiting for acks after none did
        self._last_ack_s = 0.0
        self._backoff_s = BACKOFF_MIN_S
        self._retry_after = 0.0
        self._spool_retry_at = 0.0

        self._failures = 0
        self._connect_error = ""
        self._last_error = ""
        self._error = ""
        self._error_s = -RECENT_S
        self._problem = ""
        # a spool read the pump was cancelled in (or a chunk it failed on): replayed first
        self._kept_read: asyncio.Future[SpoolChunk | None] | None = None
        self._problem_s = -RECENT_S
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._queued: dict[int, deque[Batch]] = {}  # per partition, not handed over yet
        self._senders: dict[int, asyncio.Task[None]] = {}
        self._connect_task: asyncio.Task[None] | None = None
        self._end_marker_task: asyncio.Task[None] | None = None
        self._ratelimited = RateLimitedLog(log, LOG_EVERY_S)
        self._refresh_partitions = False  # an unknown error: partitions are read again
        self.task_restarts = 0
        """Tasks of the sink (pump, watch, connect loop, aiokafka's sender) found dead and
        replaced."""
        self.dead_lettered_by_reason: dict[str, int] = {}
        """Records dead-lettered, by the broker's error (a bounded set: error class names)."""

    def __repr__(self) -> str:
        return f"KafkaSink({self.name!r}, spool={str(self.spool.path)!r})"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Validate, open the spool, connect and check the topic.

        Raises ConfigError for setting mistakes, SinkError(retriable=False) for what waiting cannot
        fix (authentication, TLS, topic), and SinkError(retriable=True) for an unreachable broker
        when ``require_broker_at_start`` is on; otherwise an unreachable broker starts degraded.
        """
        self._loop = asyncio.get_running_loop()
        c = self._config
        outcomes.check_topic_name(self._topic)
        client.check_producer_settings(c, self._records.format, self._records.vpc_flow_log_format)
        if c.compression == "lz4":
            workarounds.use_fast_lz4()
        workarounds.quiet_aiokafka_repeats()
        self._client = client.client_kwargs(c)
        self._producer_kwargs = client.producer_kwargs(c, self._servers, self._client)
        encode = encoder_for(self._records.format, self._records.vpc_flow_log_format)
        self._delivery = Delivery(self._new_builder, encode, self._content_type)
        self._delivery.unacknowledged = c.acks == "0"
        spool = self.spool
        await spool.open()
        try:
            await self._connect()
        except SinkError as exc:
            if not exc.retriable or c.require_broker_at_start:
                await spool.forget()
                raise
            self._connect_error = str(exc)
            log.warning(
                "%s; starting degraded: records go to the spool %s until a broker answers",
                exc,
                spool.path,
            )
            self._connect_task = asyncio.create_task(self._connect_loop(), name="kafka-connect")
        except BaseException:
            await spool.forget()
            raise
        self._tasks = [
            asyncio.create_task(self._pump(), name="kafka-pump"),
            asyncio.create_task(self._watch(), name="kafka-watch"),
        ]

    def _new_builder(self) -> Any:
        return self._producer.create_batch()

    async def _connect(self) -> None:
        """One bounded attempt (see client.open_producer); then publish, the spool first."""
        c = self._config
        opened = await client.open_producer(
            self._servers, self._client, self._producer_kwargs, self._topic, c, self._stop_producer
        )
        self._producer = opened.producer
        self.batch_bytes = opened.batch_bytes
        self.delivery.max_record_bytes = opened.batch_bytes - client.RECORD_BATCH_HEADER_BYTES
        self.delivery.partitions = opened.partitions
        direct = self.spool.is_empty() and not c.wal and self._kept_read is None
        self.state = State.DIRECT if direct else State.REPLAYING
        self._last_ack_s = time.monotonic()
        self._connect_error = ""
        self._wake.set()
        log.info(
            "publishing to %s (%d partitions, acks=%s, %s)",
            self.name,
            len(opened.partitions),
            c.acks,
            c.compression,
        )

    async def _connect_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        outage = self._connect_error or "a producer reset"
        while self.state is State.OFFLINE:
            await asyncio.sleep(backoff)
            try:
                await self._connect()
            except Exception as exc:  # SinkError; anything else is a bug: retried all the same
                self._connect_error = str(exc)
                self._failures += 1
                if not isinstance(exc, SinkError):
                    log.exception("unexpected error connecting to Kafka; retrying")
                elif not exc.retriable:
                    self._set_error(str(exc))
                self._ratelimited("connect", logging.WARNING, "%s; retrying", exc)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            else:
                log.info("Kafka answers again after: %s", outage)

    async def _stop_producer(self, producer: Any, *, graceful: bool = True) -> None:
        await workarounds.stop_producer(producer, graceful=graceful, timeout_s=CLOSE_TIMEOUT_S)

    def _reset_producer(self, reason: str, *, graceful: bool = True) -> None:
        """Replace the producer: its session broke (fenced, sequence error; graceful) or the
        broker is gone (not graceful: aiokafka would retry its metadata in a tight loop, so the
        connect loop takes over, with a backoff)."""
        if self.state not in CONNECTED:
            return
        log.warning("restarting the Kafka producer: %s", reason)
        self.state = State.OFFLINE
        self._connect_error = reason
        producer, self._producer = self._producer, None
        self._retiring = producer

        async def reset() -> None:
            # the pump may be waiting inside send_batch of the old producer: restart it
            pump = self._tasks[0]
            pump.cancel()
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
                await self._stop_senders()
                await self._stop_producer(producer, graceful=graceful)
            except Exception:  # the old producer is dropped anyway: carry on with a new one
                log.exception("error stopping the old Kafka producer")
            finally:  # whatever happened above, its batches and the pump carry on
                self._retiring = None
                self.delivery.take_back_unacked()
                self._tasks[0] = asyncio.create_task(self._pump(), name="kafka-pump")
            await self._connect_loop()

        self._connect_task = asyncio.create_task(reset(), name="kafka-reset")

    async def flush(self, timeout_s: float) -> None:
        """Wait for acknowledgements up to ``timeout_s``, then spool whatever is still in memory.
        Returns early when the broker is away: waiting would only delay shutdown."""
        deadline = self._flush_deadline = time.monotonic() + timeout_s
        self._wake.set()
        delivery = self.delivery
        try:
            while self._undelivered() and self.state in (State.DIRECT, State.REPLAYING):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, WATCH_INTERVAL_S)):
                        await self._wake.wait()
            if delivery.memory_records():
                self._spool_memory()
            await self.spool.rotate()
        finally:
            self._flush_deadline = None

    async def close(self) -> None:
        """Spool what is left in memory, stop the tasks and the producer, release the spool."""
        if self.state is State.CLOSED:
            return
        if self._delivery is not None:
            self._spool_memory()
        graceful = self.state in (State.DIRECT, State.REPLAYING)
        self.state = State.CLOSED
        extra = (self._connect_task, self._end_marker_task)
        tasks = [*self._tasks, *(task for task in extra if task is not None)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_senders()
        if self._retiring is not None:  # close() interrupted a reset
            retiring, self._retiring = self._retiring, None
            await self._stop_producer(retiring, graceful=False)
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await self._stop_producer(producer, graceful=graceful)
        await self.spool.close()
        self.spool.shutdown()
        log.info(
            "closed %s: %d delivered, %d dropped, %d failed, %d bytes left in the spool",
            self.name,
            self._delivery.delivered if self._delivery else 0,
            self.spool.dropped,
            self._delivery.failed if self._delivery else 0,
            self.spool.size_bytes,
        )

    # -- intake --------------------------------------------------------------------------------

    def submit(self, records: list[FlowRecord]) -> None:
        """O(1) per call on the receive path: queue the list, wake the pump."""
        if not records:
            return
        if self.state is State.CLOSED or self._delivery is None:
            self.spool.drop_later(len(records), "the sink is closed")
            return
        delivery = self._delivery
        if self.held_bytes > self._config.queue_bytes:  # the spool thread is behind (disk)
            self.spool.drop_on_loop(
                len(records),
                f"memory full ({self.held_bytes} bytes held, kafka.queue_bytes"
                f" {self._config.queue_bytes}) while the spool thread is behind",
            )
            return
        delivery.add(records, time.monotonic())
        state = self.spool.exporter_state
        if state is not None:
            last = records[-1]
            try:
                state.note(last.exporter, last.sequence)
            except OSError as exc:  # only the end marker of a later crash depends on it
                self._ratelimited("exporter-state", logging.WARNING, "%s: %s", state.path, exc)
        if self.state in SPOOLING or self._memory_full() or self._config.wal:
            self._schedule_spill()
        if self._tasks and self._tasks[1].done():  # who watches the watcher: the receive path
            self._tasks[1] = self._restarted(self._tasks[1], self._watch)
        self._wake.set()

    def status(self) -> SinkStatus:
        status = super().status()
        status.topic_recreations = client.topic_recreations(self._topic)
        return status

    def _undelivered(self) -> bool:
        """Records wait for delivery: in memory, or (write-ahead) in the spool."""
        if self.delivery.memory_records() or self.spool.parking:
            return True
        replaying = self._config.wal or self.state is State.REPLAYING
        return replaying and not self.spool.is_empty()

    def _schedule_spill(self) -> None:
        if self._spill_handle is None and self._loop is not None:
            self._spill_handle = self._loop.call_soon(self._spill)

    def _spilled(self, _: object) -> None:
        """A slice reached the spool thread's disk: spill the next, and replay what was written
        (called from the spool thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._schedule_spill)
            self._loop.call_soon_threadsafe(self._wake.set)

    def _spill(self) -> None:
        """Move pending records to the spool, a slice per loop callback."""
        self._spill_handle = None
        delivery = self.delivery
        if not delivery.pending or self.state is State.CLOSED:
            return
        if self.state is State.DIRECT:  # memory is full: what follows queues behind the spool
            self.state = State.REPLAYING
        if self._spool_behind():
            return  # the spool thread is behind: the next slice follows when it caught up
        written = self.spool.park(delivery.encode_pending(self._slice_records()))
        if written is not None:
            written.add_done_callback(self._spilled)
        if delivery.pending and not self._spool_behind():
            self._schedule_spill()

    def _spool_memory(self) -> None:
        for parked in self.delivery.park_memory(SPILL_SLICE_RECORDS):
            self.spool.park(parked)

    # -- delivery ------------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            try:
                batches = await self._next_batches()
                if batches:
                    self._dispatch(batches)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop delivery for good; records taken for the
                # cycle went back where they came from (Delivery, _from_spool), nothing dropped
                log.exception("Kafka delivery loop error; records kept, trying again")
                self._failures += 1
                await asyncio.sleep(BACKOFF_MAX_S)

    async def _next_batches(self) -> list[Batch]:
        """Wait until sending makes sense, then build the next batches: retries first, then the
        spool (while replaying) or pending records."""
        delivery = self.delivery
        while True:
            self._wake.clear()
            wait_s: float | None = None
            now = time.monotonic()
            # retries held back count too: a partition in trouble holds at most this much
            room = self._config.queue_records - delivery.unacked_count - delivery.retry_count
            in_flight = self._config.queue_bytes * IN_FLIGHT_SHARE
            free_bytes = in_flight - delivery.unacked_bytes - delivery.retry_bytes
            room = min(room, int(free_bytes / delivery.record_bytes) + 1)
            if free_bytes <= 0:
                room = 0
            state = self.state
            if state not in CONNECTED or not delivery.partitions:
                wait_s = None
            elif delivery.retry and now >= self._retry_after:
                # retries go out even while stalled: they probe for the broker
                created_ms = wall_ms(delivery.retry[0].first_s)
                return self._built(delivery.rebuild_retries(max(room, 1), created_ms))
            elif state is State.STALLED or room <= 0:
                wait_s = WATCH_INTERVAL_S if state is State.STALLED else None
            elif state is State.REPLAYING and now < self._spool_retry_at:
                wait_s = self._spool_retry_at - now
            elif state is State.REPLAYING:
                batches = self._past_retries(await self._from_spool(room))
                if batches:
                    return batches
                if not (self._config.wal and self.state is State.REPLAYING):
                    continue  # drained (now DIRECT), held, or a read error (wait)
                # write-ahead: the log is drained; the next written slice wakes the pump
            elif delivery.pending:
                linger_s = self._config.linger_ms / 1000
                oldest = delivery.pending[0][0]
                if (
                    delivery.pending_count >= LINGER_FULL_RECORDS
                    or self._flush_deadline is not None
                    or now - oldest >= linger_s
                ):
                    created_ms = wall_ms(oldest)
                    batches = delivery.from_pending(min(room, CYCLE_RECORDS), created_ms)
                    batches = self._past_retries(self._built(batches))
                    if batches:
                        return batches
                    continue
                wait_s = oldest + linger_s - now
            if delivery.retry and self.state in CONNECTED and delivery.partitions:  # due then
                due_s = max(0.0, self._retry_after - now)
                wait_s = due_s if wait_s is None else min(wait_s, due_s)
            if wait_s is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()

    def _past_retries(self, batches: list[Batch]) -> list[Batch]:
        """Batches for partitions whose records wait for a retry queue behind them (per-partition
        order); the others go now: a partition in trouble holds only its own records."""
        delivery = self.delivery
        return delivery.hold_behind_retries(batches, delivery.held_partitions())

    async def _from_spool(self, room: int) -> list[Batch]:
        """The next spooled records, in order; leaves REPLAYING when the spool has nothing unread
        (what is in flight from it is acknowledged or retried as usual)."""
        delivery = self.delivery
        while delivery.pending:  # pending records are newer than the spool: they queue behind it
            self.spool.park(delivery.encode_pending(SPILL_SLICE_RECORDS))
        limit = min(room, CYCLE_RECORDS)
        parked_before = self.spool.parked_total
        try:
            chunk = await self._read_chunk(limit)
        except SpoolReadError as exc:  # transient: the same segment is read again, nothing skipped
            self._failures += 1
            self._spool_retry_at = time.monotonic() + BACKOFF_MAX_S
            self._ratelimited("spool-read", logging.WARNING, "%s; trying again", exc)
            return []
        if chunk is None:
            if self.spool.parked_total != parked_before:  # spilled during the read: read again
                return []
            if not self._config.wal:  # write-ahead: every record keeps going through the spool
                self.state = State.DIRECT
                log.info("spool replay done; publishing directly again")
            return []
        first_s = time.monotonic() - max(0.0, time.time() - chunk.created_s)
        records = Parked(
            chunk.content_type, chunk.keys, chunk.values, chunk.exporters, chunk.sequences
        )
        created_ms = int(chunk.created_s * 1000)
        try:
            batches = delivery.from_chunk(records, first_s, chunk.segment, created_ms)
        except Exception:  # a bug: the chunk is read (the spool moved on), keep it for later
            kept: asyncio.Future[SpoolChunk | None] = asyncio.get_running_loop().create_future()
            kept.set_result(chunk)
            self._kept_read = kept
            raise
        return self._built(batches)

    async def _read_chunk(self, limit: int) -> SpoolChunk | None:
        """The spool's next chunk. A producer reset or close that cancels the pump meanwhile
        does not lose it: the spool moves past it all the same, so the read is kept and the next
        pump takes its chunk first (its records stay on disk until acknowledged: a crash loses
        nothing either)."""
        read, self._kept_read = self._kept_read, None
        if read is None:
            read = asyncio.ensure_future(self.spool.next_chunk(limit))
        try:
            return await asyncio.shield(read)
        except asyncio.CancelledError:
            self._kept_read = read
            raise

    def _built(self, batches: list[Batch]) -> list[Batch]:
        """Account for the records the core refused to batch: too large for the topic, or the
        encoder raised for them (a bug; each counted as failed)."""
        unencodable, self.delivery.unencodable = self.delivery.unencodable, []
        for reason in unencodable:
            self._degrade(f"a record could not be encoded: {reason}")
            self._ratelimited(
                "unencodable", logging.ERROR, "dropped a record: cannot encode it (%s)", reason
            )
        oversized, self.delivery.oversized = self.delivery.oversized, []
        for segment, size in oversized:
            self.spool.ack(segment, 1)
            self._degrade(f"a record of {size} bytes is larger than the topic takes")
            self._ratelimited(
                "oversized",
                logging.ERROR,
                "dropped a record of %d bytes: larger than the largest batch %r takes (%d bytes,"
                " from its max.message.bytes); counted as failed",
                size,
                self._topic,
                self.batch_bytes,
            )
        return batches

    def _dispatch(self, batches: list[Batch]) -> None:
        """Queue batches per partition; one sender task per partition hands them to the producer
        in order. A partition the producer makes wait (no leader: aiokafka holds its next batch
        until the previous one is through) holds only its own records."""
        for batch in batches:
            self._queued.setdefault(batch.partition, deque()).append(batch)
        for partition in {batch.partition for batch in batches}:
            task = self._senders.get(partition)
            if task is None or task.done():
                self._senders[partition] = asyncio.create_task(
                    self._send_queued(partition), name=f"kafka-send-{partition}"
                )

    async def _send_queued(self, partition: int) -> None:
        queue = self._queued[partition]
        while queue and self._producer is not None:
            batch = queue.popleft()  # in neither queue nor retry while handed over
            if batch.abandoned or batch not in self.delivery.unacked:
                continue
            try:
                future = await self._producer.send_batch(
                    batch.builder, self._topic, partition=partition
                )
            except Exception as exc:  # not handed over: it and the queue behind it retry
                self._on_failure(batch, exc)
                continue
            batch.sent_s = time.monotonic()
            future.add_done_callback(partial(self._on_done, batch))

    def _hold_queued(self, partition: int) -> None:
        """A batch of ``partition`` failed: the batches queued behind it (not handed to the
        producer yet) wait for its retry, in order (Delivery keeps the retries sorted)."""
        queue = self._queued.get(partition)
        while queue:
            batch = queue.popleft()
            if not batch.abandoned and batch in self.delivery.unacked:
                self.delivery.to_retry(batch)

    def _on_done(self, batch: Batch, future: asyncio.Future[Any]) -> None:
        """The producer's verdict on ``batch``. An unexpected exception while handling it (a
        bug) must not strand the batch in ``unacked``: it is sent again (a consumer may see a
        duplicate, never a gap), counted in failures, logged."""
        try:
            self._handle_done(batch, future)
        except Exception:
            self._failures += 1
            log.exception("error handling a Kafka acknowledgement; sending the batch again")
            if batch in self.delivery.unacked:
                self.delivery.to_retry(batch)
            self._wake.set()

    def _handle_done(self, batch: Batch, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            exc: BaseException | None = KafkaConnectionError("delivery cancelled")
        else:
            exc = future.exception()
        if batch.abandoned or batch not in self.delivery.unacked:  # taken back meanwhile
            return
        if exc is not None:
            self._on_failure(batch, exc)
            return
        now = time.monotonic()
        count = self.delivery.acked(batch, now)
        self._last_ack_s = now
        if self.state is State.STALLED:
            self.state = State.REPLAYING
            log.info("Kafka acknowledges again")
        self.spool.ack(batch.segment, count)
        self._backoff_s = BACKOFF_MIN_S
        self._wake.set()

    def _on_failure(self, batch: Batch, exc: BaseException) -> None:
        delivery = self.delivery
        if batch.abandoned or batch not in delivery.unacked:  # taken back: retried already
            return
        self._failures += 1
        self._last_error = client.describe(exc)
        if isinstance(exc, client.TOO_LARGE_ERRORS) and delivery.split_for_retry(batch):
            self._hold_queued(batch.partition)
            self._ratelimited(
                "split",
                logging.WARNING,
                "the broker refused a batch of %d records as too large (%s); sending it in halves",
                len(batch.values),
                self._last_error,
            )
        elif isinstance(exc, client.PERMANENT_ERRORS):
            self._dead_letter(batch, exc)
        elif isinstance(exc, client.RECORD_ERRORS):
            count = delivery.rejected(batch)
            size = sum(map(len, batch.values)) + sum(map(len, batch.keys))
            self._degrade(f"the broker rejected {count} records: {self._last_error}")
            self._ratelimited(
                "rejected",
                logging.ERROR,
                "the broker rejected %d records (%d bytes of keys and values; batch limit %d)"
                " for good: %s",
                count,
                size,
                self.batch_bytes,
                self._last_error,
            )
            self.spool.ack(batch.segment, count)
        elif (
            not outcomes.known_retriable(exc)
            and batch.attempts + 1 >= outcomes.UNKNOWN_ERROR_ATTEMPTS
        ):
            self._dead_letter(batch, exc)
        else:
            self._hold_queued(batch.partition)
            if not outcomes.known_retriable(exc):  # unknown: retried a bounded number of times
                batch.attempts += 1
                self._refresh_partitions = True
            count = delivery.to_retry(batch)
            now = time.monotonic()
            self._retry_after = max(self._retry_after, now + self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            self._ratelimited(
                "retry",
                logging.WARNING,
                "Kafka did not take %d records (%s); retrying",
                count,
                self._last_error,
                count=count,
            )
            if isinstance(exc, client.TOPIC_GONE_ERRORS):  # the next connect recreates it
                self._reset_producer(f"topic {self._topic!r} is gone ({self._last_error})")
            elif isinstance(exc, client.PRODUCER_FATAL) or workarounds.producer_broken(
                self._producer
            ):
                self._reset_producer(self._last_error)
        if self._memory_full():
            self._schedule_spill()
        self._wake.set()

    def _dead_letter(self, batch: Batch, exc: BaseException) -> None:
        """Records the broker refuses for a reason waiting does not fix (authorization, policy,
        timestamp), or for one the sink does not know after outcomes.UNKNOWN_ERROR_ATTEMPTS, go to the
        dead-letter spool, so the rest keep flowing behind them; counted per reason."""
        reason = type(exc).__name__
        self.dead_lettered_by_reason[reason] = self.dead_lettered_by_reason.get(reason, 0) + len(
            batch.values
        )
        count = self.delivery.dead_letter(batch)
        self.spool.dead_letter(
            Parked(batch.content_type, batch.keys, batch.values, batch.exporters, batch.sequences),
            type(exc).__name__,
            self._last_error,
        )
        self.spool.ack(batch.segment, count)
        where = self.spool.dead_letter_path
        self._degrade(f"{count} records dead-lettered to {where}: {type(exc).__name__}")
